//! The tables of versions before the set-associative ones: kernel LRU hashes pinned as CONNS
//! (the connection table), TEMPLATES (persistence templates) and NAT_REPLIES (the LVS/NAT reply
//! index). An agent that adopts such a datapath moves their entries into the new tables once the
//! new program runs, then unpins them (the kernel frees them with the old program). Likewise
//! the reply index of the versions after those, pinned as NAT_REPLY_TABLE, whose replies were
//! placed by their whole flow where this version places them by the client's side. (The
//! sync events' ring buffer of older versions is read and unpinned by the sync ring's reader,
//! `datapath::SyncRing::previous`.)

use std::path::Path;

use anyhow::{Context as _, Result};
use aya::maps::{HashMap, Map, MapData};
use lb_common::{map_names, Conn, FlowKey, NatReply, ReplyEntry, Template, TemplateKey};
use tracing::info;

use super::table::ConnTable;
use crate::datapath::{conn_table::SlotTable, pin::Pins, Maps};

/// What [`before_swap`] moved, for [`after_swap`].
pub struct Adoption {
    /// Replies copied from the previous version's reply index, if it was pinned.
    placed_replies: Option<usize>,
    /// The kernel's clock when the adoption began, which a full bucket's choice goes by.
    now: u32,
}

/// An agent adopting a datapath, before it swaps its program in: the previous version's LVS/NAT
/// replies are copied where this version's program will look for them, so they are there when
/// it starts (the old program reads its own index until the swap).
pub fn before_swap(pins: &Pins, maps: &Maps) -> Result<Adoption> {
    let now = crate::datapath::clock::jiffies_now()?;
    let old = pins.map(map_names::PLACED_NAT_REPLIES);
    let placed_replies = replies_from_table(&old, maps.reply_table()?, now, false)?;
    Ok(Adoption {
        placed_replies,
        now,
    })
}

/// After the swap, once the old program no longer runs: the older versions' tables' entries
/// move into this one's (the previous reply index's again, for the connections the old program
/// bound since [`before_swap`]), and their pins go.
pub fn after_swap(pins: &Pins, maps: &mut Maps, before: Adoption) -> Result<()> {
    let now = before.now;
    let old = pins.map(map_names::LRU_CONNS);
    if let Some(moved) = from_lru(&old, &mut maps.conn_table()?)? {
        info!(
            flows = moved,
            "moved the connection table of the previous version into this one"
        );
    }
    let old = pins.map(map_names::LRU_TEMPLATES);
    if let Some(moved) = templates_from_lru(&old, maps.template_table()?, now)? {
        info!(
            templates = moved,
            "moved the persistence templates of the previous version into this one"
        );
    }
    if let Some(early) = before.placed_replies {
        let old = pins.map(map_names::PLACED_NAT_REPLIES);
        let late = replies_from_table(&old, maps.reply_table()?, now, true)?;
        info!(
            replies = early + late.unwrap_or(0),
            "placed the LVS/NAT replies of the previous version where this one looks for them"
        );
    }
    let old = pins.map(map_names::LRU_NAT_REPLIES);
    if let Some(moved) = replies_from_lru(&old, maps.reply_table()?, now)? {
        info!(
            replies = moved,
            "moved the LVS/NAT reply index of the previous version into this one"
        );
    }
    Ok(())
}

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

/// Copies the replies of the previous version's reply index pinned at `path` that `table` does
/// not hold yet into it (placed as this version places them, ranked as not established: the
/// connection's next refresh ranks it again); with `unpin`, then removes the pin. Called before
/// the new program is swapped in, so replies are in place when it starts, and again after it
/// (`unpin`), for the connections the old program bound in between. The number copied, or None
/// when there is no old index.
pub fn replies_from_table(
    path: &Path,
    table: &SlotTable<ReplyEntry>,
    now: u32,
    unpin: bool,
) -> Result<Option<usize>> {
    if !path.exists() {
        return Ok(None);
    }
    let what = "LVS/NAT reply index";
    let map = MapData::from_pin(path)
        .with_context(|| format!("cannot open the old {what} {}", path.display()))?;
    let old = SlotTable::<ReplyEntry>::new(&map)
        .with_context(|| format!("{} is not an older {what}", path.display()))?;
    let mut copied = 0;
    for (key, entry) in old.entries()? {
        if table.get(&key)?.is_none() {
            table.upsert_reply(&key, &entry.reply, now, false)?;
            copied += 1;
        }
    }
    if unpin {
        std::fs::remove_file(path).with_context(|| format!("cannot remove {}", path.display()))?;
    }
    Ok(Some(copied))
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
