//! The connection table of versions before the set-associative one: a kernel LRU hash pinned as
//! CONNS. An agent that adopts such a datapath moves its flows into the new table once the new
//! program runs, then unpins it (the kernel frees it with the old program).

use std::path::Path;

use anyhow::{Context as _, Result};
use aya::maps::{HashMap, Map, MapData};
use lb_common::{Conn, FlowKey};

use super::table::ConnTable;

/// Moves the entries of the old table pinned at `path` into `table` and removes the pin;
/// the number moved, or None when there is no old table.
pub fn from_lru(path: &Path, table: &mut dyn ConnTable) -> Result<Option<usize>> {
    if !path.exists() {
        return Ok(None);
    }
    let map = MapData::from_pin(path)
        .with_context(|| format!("cannot open the old connection table {}", path.display()))?;
    let old: HashMap<MapData, FlowKey, Conn> = HashMap::try_from(Map::LruHashMap(map))
        .with_context(|| format!("{} is not an older connection table", path.display()))?;
    let entries: Vec<(FlowKey, Conn)> = old.iter().filter_map(Result::ok).collect();
    for (flow, conn) in &entries {
        table.upsert(flow, conn)?;
    }
    std::fs::remove_file(path).with_context(|| format!("cannot remove {}", path.display()))?;
    Ok(Some(entries.len()))
}
