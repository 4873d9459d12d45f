//! What `xdplb list` shows, as the agent sends it and as `--json` prints it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    datapath::{AttachMode, Counters, DatapathCounters},
    state::{Forward, Hash, Mac, Protocol, Scheduler, State},
};

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StatsView {
    pub conns: u64,
    pub packets: u64,
    pub bytes: u64,
}

impl From<Counters> for StatsView {
    fn from(c: Counters) -> Self {
        Self {
            conns: c.conns,
            packets: c.packets,
            bytes: c.bytes,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RealView {
    /// RIP:PORT
    pub address: String,
    pub forward: Forward,
    pub weight: u32,
    pub mac: Mac,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub stats: Option<StatsView>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceView {
    pub protocol: Protocol,
    /// VIP:PORT
    pub address: String,
    pub scheduler: Scheduler,
    /// Maglev table size and what it hashes (`mh` only).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub mh_size: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub hash: Option<Hash>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub stats: Option<StatsView>,
    pub reals: Vec<RealView>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Listing {
    pub interface: String,
    pub mode: AttachMode,
    pub services: Vec<ServiceView>,
    /// Packets passed to the kernel or dropped, by reason (present with stats).
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub reasons: BTreeMap<String, u64>,
}

impl Listing {
    pub fn new(interface: &str, mode: AttachMode, state: &State, c: &DatapathCounters) -> Self {
        let at = |v: &[Counters], i: u32| {
            Some(StatsView::from(
                v.get(i as usize).copied().unwrap_or_default(),
            ))
        };
        let services = state
            .services
            .values()
            .map(|s| ServiceView {
                protocol: s.addr.protocol,
                address: format!("{}:{}", s.addr.vip, s.addr.port),
                scheduler: s.scheduler,
                mh_size: (s.scheduler == Scheduler::Mh).then_some(s.table.len() as u32),
                hash: (s.scheduler == Scheduler::Mh).then_some(s.hash),
                stats: at(&c.services, s.id),
                reals: s
                    .reals
                    .iter()
                    .map(|r| RealView {
                        address: format!("{}:{}", r.addr, r.port),
                        forward: r.forward,
                        weight: r.weight,
                        mac: r.mac,
                        stats: at(&c.reals, r.id),
                    })
                    .collect(),
            })
            .collect();
        let reasons = c
            .reasons
            .iter()
            .map(|(r, c)| (r.name().to_owned(), c.packets))
            .collect();
        Self {
            interface: interface.to_owned(),
            mode,
            services,
            reasons,
        }
    }

    /// The listing without counters, for `list` without `--stats`.
    pub fn without_stats(mut self) -> Self {
        self.reasons.clear();
        for s in &mut self.services {
            s.stats = None;
            for r in &mut s.reals {
                r.stats = None;
            }
        }
        self
    }
}
