//! The tables of versions before the set-associative ones: kernel LRU hashes pinned as CONNS
//! (the connection table), TEMPLATES (persistence templates) and NAT_REPLIES (the LVS/NAT reply
//! index). An agent that adopts such a datapath moves their entries into the new tables once the
//! new program runs, then unpins them (the kernel frees them with the old program).

use std::path::Path;

use anyhow::{Context as _, Result};
use aya::maps::{HashMap, Map, MapData};
use lb_common::{Conn, FlowKey, NatReply, ReplyEntry, Template, TemplateKey};

use super::table::ConnTable;
use crate::datapath::conn_table::SlotTable;

/// Moves the entries of the old connection table pinned at `path` into `table` and removes the
/// pin; the number moved, or None when there is no old table.
pub fn from_lru(path: &Path, table: &mut dyn ConnTable) -> Result<Option<usize>> {
    move_lru::<FlowKey, Conn>(path, "connection table", |flow, conn| {
        table.upsert(flow, conn)
    })
}

/// Likewise for the old templates pinned at `path`, into the template table (`now`: the
/// kernel's clock, which a full bucket's choice goes by).
pub fn templates_from_lru(path: &Path, table: &SlotTable, now: u32) -> Result<Option<usize>> {
    move_lru::<TemplateKey, Template>(path, "template table", |key, t| {
        let template = Conn {
            real: t.real,
            service: key.service,
            last_seen: t.last_seen,
            flags: 0,
        };
        table.upsert_template(&key.flow_key(), &template, now)
    })
}

/// Likewise for the old LVS/NAT reply index pinned at `path`, into the reply table.
pub fn replies_from_lru(
    path: &Path,
    table: &SlotTable<ReplyEntry>,
    now: u32,
) -> Result<Option<usize>> {
    // Ranked as not established: the connection's next refresh ranks it again.
    move_lru::<FlowKey, NatReply>(path, "LVS/NAT reply index", |key, reply| {
        table.upsert_reply(key, reply, now, false)
    })
}

/// Reads the LRU hash pinned at `path` (an older `what`), writes each entry with `put`, and
/// removes the pin.
fn move_lru<K: aya::Pod, V: aya::Pod>(
    path: &Path,
    what: &str,
    mut put: impl FnMut(&K, &V) -> Result<()>,
) -> Result<Option<usize>> {
    if !path.exists() {
        return Ok(None);
    }
    let map = MapData::from_pin(path)
        .with_context(|| format!("cannot open the old {what} {}", path.display()))?;
    let old: HashMap<MapData, K, V> = HashMap::try_from(Map::LruHashMap(map))
        .with_context(|| format!("{} is not an older {what}", path.display()))?;
    let entries: Vec<(K, V)> = old.iter().filter_map(Result::ok).collect();
    for (key, value) in &entries {
        put(key, value)?;
    }
    std::fs::remove_file(path).with_context(|| format!("cannot remove {}", path.display()))?;
    Ok(Some(entries.len()))
}
