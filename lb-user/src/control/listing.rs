//! What `xdplb list` shows, as the agent sends it and as `--json` prints it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    datapath::{AttachMode, Counters, DatapathCounters},
    health::Health,
    state::{Forward, Hash, Mac, Protocol, Scheduler, State},
};

fn is_zero(v: &u32) -> bool {
    *v == 0
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StatsView {
    pub conns: u64,
    pub packets: u64,
    pub bytes: u64,
    /// LVS/NAT replies (the only outbound traffic the director sees).
    #[serde(default)]
    pub out_packets: u64,
    #[serde(default)]
    pub out_bytes: u64,
}

impl StatsView {
    /// Every one added up (totals over services).
    pub fn sum(all: impl IntoIterator<Item = StatsView>) -> StatsView {
        all.into_iter()
            .fold(StatsView::default(), |a, b| StatsView {
                conns: a.conns + b.conns,
                packets: a.packets + b.packets,
                bytes: a.bytes + b.bytes,
                out_packets: a.out_packets + b.out_packets,
                out_bytes: a.out_bytes + b.out_bytes,
            })
    }

    /// Inbound counters, and outbound ones (LVS/NAT replies).
    pub fn of(inbound: Counters, outbound: Counters) -> Self {
        Self {
            conns: inbound.conns,
            packets: inbound.packets,
            bytes: inbound.bytes,
            out_packets: outbound.packets,
            out_bytes: outbound.bytes,
        }
    }
}

/// A checked real server's health.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HealthView {
    pub state: Health,
    /// The last failure (also while still up).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub last_error: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RealView {
    /// RIP:PORT
    pub address: String,
    pub forward: Forward,
    pub weight: u32,
    pub mac: Mac,
    /// Present when the real server has a health check.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub health: Option<HealthView>,
    /// Connections now, as IPVS counts them: TCP established (ActiveConn), and every other entry
    /// of the connection table (InActConn).
    #[serde(default)]
    pub active_conns: u64,
    #[serde(default)]
    pub inactive_conns: u64,
    /// Connection thresholds (0: none), and whether the server is over them now.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub u_threshold: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub l_threshold: u32,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub overloaded: bool,
    /// Clients whose persistence template sends them here (ipvsadm's PersistConn).
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub persistent_conns: u64,
    /// While drained (weight 0): the weight it had before, which a restore gives back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_weight: Option<u32>,
    /// The health check, as configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<crate::health::HealthCheck>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub stats: Option<StatsView>,
    /// The counters' growth per second over the last few seconds (the HTTP API).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub rates: Option<StatsView>,
}

fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}

/// One entry of the connection table, as `ipvsadm -Lnc` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConnView {
    pub protocol: Protocol,
    /// CIP:CPORT
    pub client: String,
    /// VIP:VPORT (the port the client connected to, also for a port-0 service)
    pub virtual_address: String,
    /// RIP:RPORT
    pub real: String,
    /// IPVS's name for the state: ESTABLISHED, SYN_RECV, FIN_WAIT (TCP) or UDP.
    pub state: String,
    /// Seconds until the entry expires unless a packet refreshes it.
    pub expires: u32,
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
    /// Persistence timeout in seconds and netmask (persistent services only).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub persistent: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub netmask: Option<crate::state::Netmask>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub stats: Option<StatsView>,
    /// The counters' growth per second over the last few seconds (the HTTP API).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub rates: Option<StatsView>,
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
    /// Drained for maintenance (`xdplb drain`): no VIP announced, `check` fails.
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub drained: bool,
    /// Connection synchronisation, when configured.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub sync: Option<crate::sync::SyncView>,
    /// VIP announcement, when configured.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub announce: Option<AnnounceView>,
    /// Connection-table idle timeouts and size.
    #[serde(default)]
    pub timeouts: crate::config::Timeouts,
    #[serde(default)]
    pub conn_max: u32,
    /// The LVS/NAT connections whose replies the director translates (the reply index's
    /// size): 0 where it has no reply index and refuses LVS/NAT.
    #[serde(default)]
    pub nat_max: u32,
    /// The agent itself.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub agent: Option<AgentView>,
    /// `reasons` per second over the last few seconds (the HTTP API).
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub reason_rates: BTreeMap<String, u64>,
}

/// The agent: its version, when it started, its reloads, the program it attached.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentView {
    pub version: String,
    /// Seconds since the Unix epoch.
    pub started: f64,
    pub reloads: u64,
    pub reload_failures: u64,
    /// The kernel's id of the XDP program on the director's interface.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub program_id: Option<u32>,
    /// Whether the datapath's pins outlive the agent (false: its bpffs is in a private mount
    /// namespace, and a restart starts empty); none if unknown.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub pins_outlive_agent: Option<bool>,
}

/// The routing table VIPs are announced in, and which are.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AnnounceView {
    pub table: u32,
    pub announced: Vec<String>,
}

impl Listing {
    pub fn new(interface: &str, mode: AttachMode, state: &State, c: &DatapathCounters) -> Self {
        let conns = |id: u32| c.conns.get(id as usize).copied().unwrap_or_default();
        let at = |inbound: &[Counters], outbound: &[Counters], i: u32| {
            let get = |v: &[Counters]| v.get(i as usize).copied().unwrap_or_default();
            Some(StatsView::of(get(inbound), get(outbound)))
        };
        let services = state
            .services
            .values()
            .map(|s| ServiceView {
                protocol: s.addr.protocol,
                address: std::net::SocketAddr::new(s.addr.vip, s.addr.port).to_string(),
                scheduler: s.scheduler,
                mh_size: (s.scheduler == Scheduler::Mh).then_some(s.table.len() as u32),
                hash: (s.scheduler == Scheduler::Mh).then_some(s.hash),
                persistent: s.persistence.map(|p| p.timeout),
                netmask: s.persistence.map(|p| p.netmask),
                stats: at(&c.services, &c.services_out, s.id),
                rates: None,
                reals: s
                    .reals
                    .iter()
                    .map(|r| RealView {
                        address: std::net::SocketAddr::new(r.addr, r.port).to_string(),
                        forward: r.forward,
                        weight: r.weight,
                        mac: r.mac,
                        health: r.check.as_ref().map(|_| HealthView {
                            state: r.health,
                            last_error: r.last_error.clone(),
                        }),
                        active_conns: conns(r.id).active.max(0) as u64,
                        inactive_conns: conns(r.id).inactive.max(0) as u64,
                        u_threshold: r.upper,
                        l_threshold: r.lower,
                        overloaded: conns(r.id).overloaded != 0,
                        persistent_conns: 0,
                        previous_weight: r.previous_weight.filter(|_| r.weight == 0),
                        check: r.check.clone(),
                        stats: at(&c.reals, &c.reals_out, r.id),
                        rates: None,
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
            drained: false,
            sync: None,
            announce: None,
            timeouts: Default::default(),
            conn_max: 0,
            nat_max: 0,
            agent: None,
            reason_rates: BTreeMap::new(),
        }
    }

    /// Counters turned into rates: what grew since `earlier`, per second (`list --rate`).
    pub fn per_second(mut self, earlier: &Listing, secs: f64) -> Self {
        let rate = |now: &mut Option<StatsView>, then: Option<&StatsView>| {
            if let (Some(n), Some(t)) = (now.as_mut(), then) {
                let per = |a: u64, b: u64| (a.saturating_sub(b) as f64 / secs).round() as u64;
                *n = StatsView {
                    conns: per(n.conns, t.conns),
                    packets: per(n.packets, t.packets),
                    bytes: per(n.bytes, t.bytes),
                    out_packets: per(n.out_packets, t.out_packets),
                    out_bytes: per(n.out_bytes, t.out_bytes),
                };
            }
        };
        // Indexed: thousands of services must not cost millions of comparisons.
        let earlier_services = earlier.service_index();
        for s in &mut self.services {
            let then = earlier_services
                .get(&(s.protocol, s.address.as_str()))
                .copied();
            rate(&mut s.stats, then.and_then(|t| t.stats.as_ref()));
            for r in &mut s.reals {
                let then_r = then.and_then(|t| t.reals.iter().find(|e| e.address == r.address));
                rate(&mut r.stats, then_r.and_then(|t| t.stats.as_ref()));
            }
        }
        for (name, n) in &mut self.reasons {
            let then = earlier.reasons.get(name).copied().unwrap_or(0);
            *n = (n.saturating_sub(then) as f64 / secs).round() as u64;
        }
        self
    }

    /// The services by protocol and address.
    pub fn service_index(&self) -> std::collections::HashMap<(Protocol, &str), &ServiceView> {
        self.services
            .iter()
            .map(|s| ((s.protocol, s.address.as_str()), s))
            .collect()
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
