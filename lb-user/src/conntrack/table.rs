//! The connection table behind a narrow interface: sync writes the entries peers report and reads
//! the table whole for a peer that asks; the counts are checked against it. Tested without the
//! kernel against [`MemoryTable`].

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use anyhow::{Context as _, Result};
use aya::maps::{Map, MapData};
use lb_common::{Conn, FlowKey};

pub trait ConnTable: Send {
    /// Inserts or replaces a flow's entry.
    fn upsert(&mut self, flow: &FlowKey, conn: &Conn) -> Result<()>;
    /// Removes a flow's entry, if there is one.
    fn remove(&mut self, flow: &FlowKey) -> Result<()>;
    /// Every entry (a snapshot; the datapath goes on changing the table meanwhile).
    fn entries(&self) -> Result<Vec<(FlowKey, Conn)>>;
}

/// Opens handles on the table: one for the receiver's writes, one per full-table transfer, so a
/// long read never holds up the writes.
pub trait ConnTables: Send + Sync {
    fn open(&self) -> Result<Box<dyn ConnTable>>;
}

/// The datapath's pinned connection table.
pub struct PinnedTable(pub PathBuf);

impl ConnTables for PinnedTable {
    fn open(&self) -> Result<Box<dyn ConnTable>> {
        let data = MapData::from_pin(&self.0)
            .with_context(|| format!("cannot open the connection table {}", self.0.display()))?;
        let map = aya::maps::HashMap::<MapData, FlowKey, Conn>::try_from(Map::LruHashMap(data))?;
        Ok(Box::new(map))
    }
}

impl ConnTable for aya::maps::HashMap<MapData, FlowKey, Conn> {
    fn upsert(&mut self, flow: &FlowKey, conn: &Conn) -> Result<()> {
        Ok(self.insert(flow, conn, 0)?)
    }

    fn remove(&mut self, flow: &FlowKey) -> Result<()> {
        match aya::maps::HashMap::remove(self, flow) {
            Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
            {
                Ok(())
            }
            other => Ok(other?),
        }
    }

    fn entries(&self) -> Result<Vec<(FlowKey, Conn)>> {
        // A key deleted between two steps of the walk ends it early at worst; what is missing
        // was going away anyway.
        Ok(self.iter().filter_map(Result::ok).collect())
    }
}

/// A table in memory, shared by every handle opened on it: for tests of the protocol.
#[derive(Clone, Default)]
pub struct MemoryTable(pub Arc<Mutex<HashMap<FlowKey, Conn>>>);

impl ConnTables for MemoryTable {
    fn open(&self) -> Result<Box<dyn ConnTable>> {
        Ok(Box::new(self.clone()))
    }
}

impl ConnTable for MemoryTable {
    fn upsert(&mut self, flow: &FlowKey, conn: &Conn) -> Result<()> {
        self.0.lock().unwrap().insert(*flow, *conn);
        Ok(())
    }

    fn remove(&mut self, flow: &FlowKey) -> Result<()> {
        self.0.lock().unwrap().remove(flow);
        Ok(())
    }

    fn entries(&self) -> Result<Vec<(FlowKey, Conn)>> {
        Ok(self
            .0
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect())
    }
}
