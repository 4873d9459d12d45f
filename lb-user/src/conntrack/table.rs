//! The connection table behind a narrow interface: sync writes the entries peers report and reads
//! the table whole for a peer that asks; the counts are checked against it. Tested without the
//! kernel against [`MemoryTable`].

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use anyhow::{Context as _, Result};
use aya::maps::MapData;
use lb_common::{map_names, Conn, FlowKey, NatReply, ReplyEntry};

use super::IdleTimeouts;
use crate::datapath::{clock::jiffies_now, conn_table::SlotTable};

pub trait ConnTable: Send {
    /// Inserts or replaces a flow's entry.
    fn upsert(&mut self, flow: &FlowKey, conn: &Conn) -> Result<()>;
    /// Inserts or replaces an LVS/NAT connection's reply translation (keyed by the reply's own
    /// flow), which the datapath writes beside the entry of a flow it binds itself; ranked as
    /// an `established` connection's or not.
    fn upsert_nat_reply(
        &mut self,
        reply: &FlowKey,
        value: &NatReply,
        established: bool,
    ) -> Result<()>;
    /// Inserts or replaces a persistence template (keyed by [`lb_common::TemplateKey`]), as
    /// the datapath writes one beside the entry of a persistent service's flow it binds.
    fn upsert_template(&mut self, key: &FlowKey, template: &Conn) -> Result<()>;
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

/// The datapath's pinned connection table (the path of its pin; the LVS/NAT reply index and the
/// persistence templates are pinned beside it), and the idle timeouts the agent applies now: an
/// entry written into a full bucket pushes out the one the datapath would.
pub struct PinnedTable {
    pub path: PathBuf,
    pub timeouts: Arc<Mutex<IdleTimeouts>>,
}

/// The datapath's connection table, LVS/NAT reply index and persistence templates, owned
/// (pinned handles) or borrowed (from [`crate::datapath::Maps::conn_table`]).
pub struct MapConns<C, R> {
    pub conns: C,
    pub replies: R,
    pub templates: C,
    pub timeouts: Arc<Mutex<IdleTimeouts>>,
}

impl ConnTables for PinnedTable {
    fn open(&self) -> Result<Box<dyn ConnTable>> {
        let open = |path: &std::path::Path| {
            MapData::from_pin(path)
                .with_context(|| format!("cannot open the pinned map {}", path.display()))
        };
        let beside = |name| open(&self.path.with_file_name(name));
        let conns = SlotTable::new(&open(&self.path)?)?;
        let replies = SlotTable::new(&beside(map_names::NAT_REPLY_INDEX)?)?;
        let templates = SlotTable::new(&beside(map_names::TEMPLATE_TABLE)?)?;
        Ok(Box::new(MapConns::<SlotTable, SlotTable<ReplyEntry>> {
            conns,
            replies,
            templates,
            timeouts: self.timeouts.clone(),
        }))
    }
}

impl<C, R> ConnTable for MapConns<C, R>
where
    C: std::borrow::Borrow<SlotTable> + Send,
    R: std::borrow::Borrow<SlotTable<ReplyEntry>> + Send,
{
    fn upsert(&mut self, flow: &FlowKey, conn: &Conn) -> Result<()> {
        let timeouts = *self.timeouts.lock().unwrap();
        self.conns
            .borrow()
            .upsert(flow, conn, jiffies_now()?, &timeouts)
    }

    fn upsert_nat_reply(
        &mut self,
        reply: &FlowKey,
        value: &NatReply,
        established: bool,
    ) -> Result<()> {
        self.replies
            .borrow()
            .upsert_reply(reply, value, jiffies_now()?, established)
    }

    fn upsert_template(&mut self, key: &FlowKey, template: &Conn) -> Result<()> {
        self.templates
            .borrow()
            .upsert_template(key, template, jiffies_now()?)
    }

    fn remove(&mut self, flow: &FlowKey) -> Result<()> {
        self.conns.borrow().remove(flow)
    }

    fn entries(&self) -> Result<Vec<(FlowKey, Conn)>> {
        self.conns.borrow().entries()
    }
}

/// A table in memory (and its NAT reply index and templates), shared by every handle opened on
/// it: for tests of the protocol.
#[derive(Clone, Default)]
pub struct MemoryTable(
    pub Arc<Mutex<HashMap<FlowKey, Conn>>>,
    pub Arc<Mutex<HashMap<FlowKey, NatReply>>>,
    pub Arc<Mutex<HashMap<FlowKey, Conn>>>,
);

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

    fn upsert_nat_reply(&mut self, reply: &FlowKey, value: &NatReply, _: bool) -> Result<()> {
        self.1.lock().unwrap().insert(*reply, *value);
        Ok(())
    }

    fn upsert_template(&mut self, key: &FlowKey, template: &Conn) -> Result<()> {
        self.2.lock().unwrap().insert(*key, *template);
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
