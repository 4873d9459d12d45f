//! What sync needs to know of the agent's state: real servers by id (for what the datapath
//! reports) and by address (for what peers report), and a digest of the configuration that
//! peers compare. The agent hands sync a new one after every change it commits.

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    net::IpAddr,
};

use lb_common::{Conn, DirectorConfig, FlowKey};
use sha2::{Digest as _, Sha256};

use crate::{
    conntrack::IdleTimeouts,
    state::{ServiceAddr, State},
};

/// A real server of a service, as peers name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RealName {
    pub service: ServiceAddr,
    pub addr: IpAddr,
    pub port: u16,
}

/// The datapath ids of a service's real server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RealIds {
    pub service: u32,
    pub real: u32,
    /// LVS/NAT: the real server's address and port, for its replies' translation.
    pub nat: Option<(IpAddr, u16)>,
    /// A persistent service: the netmask its clients' templates are keyed by.
    pub template_mask: Option<[u8; 16]>,
}

#[derive(Clone, Debug, Default)]
pub struct Directory {
    by_id: HashMap<u32, (u32, RealName)>,
    by_name: HashMap<(ServiceAddr, IpAddr), RealIds>,
    digest: [u8; 32],
    /// Only live flows are sent in a full table.
    timeouts: IdleTimeouts,
}

impl Directory {
    pub fn new(state: &State, config: &DirectorConfig) -> Self {
        let mut by_id = HashMap::new();
        let mut by_name = HashMap::new();
        for s in state.services.values() {
            for r in &s.reals {
                let name = RealName {
                    service: s.addr,
                    addr: r.addr,
                    port: r.port,
                };
                by_id.insert(r.id, (s.id, name));
                by_name.insert(
                    (s.addr, name.addr),
                    RealIds {
                        service: s.id,
                        real: r.id,
                        nat: (r.forward == crate::state::Forward::Masq).then_some((r.addr, r.port)),
                        template_mask: s.persistence.map(|p| p.mask()),
                    },
                );
            }
        }
        Self {
            by_id,
            by_name,
            digest: digest(state),
            timeouts: IdleTimeouts::of(config),
        }
    }

    /// The real server behind datapath ids, if it is still configured in that service.
    pub fn name(&self, service: u32, real: u32) -> Option<RealName> {
        self.by_id
            .get(&real)
            .filter(|(s, _)| *s == service)
            .map(|(_, n)| *n)
    }

    /// The datapath ids of a peer's real server, if this director has it in that service (or
    /// in the port-0 service of the VIP, which takes every port).
    pub fn ids(&self, service: &ServiceAddr, real: IpAddr) -> Option<RealIds> {
        let any_port = ServiceAddr {
            port: 0,
            ..*service
        };
        self.by_name
            .get(&(*service, real))
            .or_else(|| self.by_name.get(&(any_port, real)))
            .copied()
    }

    pub fn digest(&self) -> [u8; 32] {
        self.digest
    }

    /// Whether a connection-table entry is still alive at `now` (ticks).
    pub fn alive(&self, flow: &FlowKey, conn: &Conn, now: u32) -> bool {
        self.timeouts.alive(flow, conn, now)
    }
}

/// SHA-256 of what decides where a flow goes: services with their schedulers and real servers
/// with their configured weights and forwarding methods (not their health, which each director
/// checks for itself). Equal digests: equal tables for equal health.
fn digest(state: &State) -> [u8; 32] {
    let mut text = String::new();
    for s in state.services.values() {
        let _ = writeln!(
            text,
            "service {} {} {} {} {}",
            s.addr,
            s.scheduler,
            s.hash,
            s.table.len(),
            s.reals.len()
        );
        let reals: BTreeMap<_, _> = s.reals.iter().map(|r| (r.addr, r)).collect();
        for r in reals.values() {
            let _ = writeln!(
                text,
                "real {} {} {} {}",
                r.addr, r.port, r.weight, r.forward
            );
        }
    }
    Sha256::digest(text.as_bytes()).into()
}

/// The first bytes of a digest in hex, as `list --sync` shows it.
pub fn short(digest: &[u8; 32]) -> String {
    digest[..4].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::health::Health;
    use crate::state::{Mac, Protocol, RealSpec, Scheduler, SchedulerSpec};

    fn svc() -> ServiceAddr {
        ServiceAddr {
            protocol: Protocol::Tcp,
            vip: Ipv4Addr::new(10, 0, 0, 100).into(),
            port: 80,
        }
    }

    fn state(reals: &[(u8, u32)]) -> State {
        let spec = SchedulerSpec {
            scheduler: Some(Scheduler::Mh),
            ..Default::default()
        };
        let mut s = State::default().add_service(svc(), &spec).unwrap();
        for &(n, w) in reals {
            let real = RealSpec {
                addr: Some(Ipv4Addr::new(10, 0, 0, n).into()),
                weight: Some(w),
                mac: Some(Mac([2, 0, 0, 0, 0, n])),
                ..Default::default()
            };
            s = s.add_real(svc(), &real).unwrap();
        }
        s
    }

    #[test]
    fn ids_and_names_map_both_ways() {
        let st = state(&[(11, 1), (12, 2)]);
        let d = Directory::new(&st, &DirectorConfig::default());
        let ids = d.ids(&svc(), "10.0.0.12".parse().unwrap()).unwrap();
        let name = d.name(ids.service, ids.real).unwrap();
        assert_eq!(name.addr, "10.0.0.12".parse::<IpAddr>().unwrap());
        assert_eq!(name.service, svc());
        assert_eq!(d.name(ids.service + 1, ids.real), None, "another service");
        assert_eq!(d.ids(&svc(), "10.0.0.13".parse().unwrap()), None);
    }

    #[test]
    fn the_digest_follows_configuration_not_order_or_health() {
        let a = state(&[(11, 1), (12, 2)]);
        let b = state(&[(12, 2), (11, 1)]);
        let d = |s: &State| Directory::new(s, &DirectorConfig::default()).digest();
        assert_eq!(d(&a), d(&b), "same servers, other order");
        let down = a
            .set_health(
                svc(),
                Ipv4Addr::new(10, 0, 0, 11).into(),
                Health::Down,
                None,
            )
            .unwrap();
        assert_eq!(d(&a), d(&down), "health is each director's own view");
        assert_ne!(d(&a), d(&state(&[(11, 1), (12, 3)])), "another weight");
        assert_ne!(d(&a), d(&state(&[(11, 1)])), "a server less");
    }
}
