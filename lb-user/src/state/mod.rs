//! The agent's desired state: services, their real servers and weights, and each service's
//! lookup table. Every change is computed on a copy and validated as a whole, so a rejected change
//! leaves nothing behind; [`apply`] then writes the difference to the datapath.

mod apply;
pub mod model;
pub mod persist;

use std::{collections::BTreeMap, net::IpAddr, sync::Arc};

use anyhow::{anyhow, bail, Result};
use lb_common::{
    maglev,
    sched::{
        self, DH_TABLE_SIZE, MAX_SCAN, MH_DEFAULT_SIZE, MH_SIZES, MH_SLOTS_PER_REAL, NO_REAL,
        SH_TABLE_SIZE,
    },
    table::{rebalance, Member},
    FlowKey, ServiceInfo, LOCALITY_SET,
};

mod ids;
pub use ids::{check_limits, Ids, Limits};

pub use apply::{apply, resync};

use crate::health::{Health, HealthCheck};
pub use model::{
    addr_of, ip_of, Forward, Hash, Mac, Netmask, Persistence, Protocol, Scheduler, SchedulerSpec,
    ServiceAddr,
};

/// Largest weight, as in IPVS.
pub const MAX_WEIGHT: u32 = 65535;

/// Longest `wrr` sequence (its table: 4 MiB).
pub const WRR_MAX_LEN: u64 = 1 << 20;

/// A real server of a service, as saved with the state (persist.rs) for a restart: a server
/// known down stays down until its check says otherwise.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Real {
    pub addr: IpAddr,
    pub port: u16,
    pub weight: u32,
    pub forward: Forward,
    /// Where frames for it go: the real server (DR) or the next hop toward it (TUN).
    pub mac: Mac,
    /// Given with --mac; otherwise learned from the kernel and kept current by the agent.
    pub pinned_mac: bool,
    /// Index in the datapath's REALS array and real-server counters.
    pub id: u32,
    /// The health check, if any (config file); without one a real server is always up.
    pub check: Option<HealthCheck>,
    /// Connection thresholds (ipvsadm -x, -y): at `upper` connections no new ones until under
    /// `lower` (0: three quarters of `upper`); 0 for none.
    #[serde(default)]
    pub upper: u32,
    #[serde(default)]
    pub lower: u32,
    /// What the check says; a server that is down gets no new flows, as with weight 0.
    #[serde(default = "up")]
    pub health: Health,
    #[serde(skip)]
    pub last_error: Option<String>,
    /// The weight before it was set to 0 (drained), for a restore; none while above 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_weight: Option<u32>,
}

fn up() -> Health {
    Health::Up
}

impl Real {
    /// The weight the table is built with.
    pub fn effective_weight(&self) -> u32 {
        if self.health == Health::Down {
            0
        } else {
            self.weight
        }
    }
}

/// A service before and after a change; None where absent.
pub(crate) type ServiceChange<'a> = (Option<&'a Arc<Service>>, Option<&'a Arc<Service>>);

/// The services that differ between two states, in order of address: (before, after), None
/// where absent. A service both share (one Arc) is left out unless `all`. One walk over both
/// ordered maps: no lookup per service.
pub(crate) fn service_changes<'a>(
    old: &'a State,
    new: &'a State,
    all: bool,
) -> Vec<ServiceChange<'a>> {
    let (mut a, mut b) = (
        old.services.iter().peekable(),
        new.services.iter().peekable(),
    );
    let mut out = Vec::new();
    loop {
        let pair = match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some((ka, _)), Some((kb, _))) if ka == kb => {
                let (_, sa) = a.next().expect("peeked");
                let (_, sb) = b.next().expect("peeked");
                if !all && Arc::ptr_eq(sa, sb) {
                    continue;
                }
                (Some(sa), Some(sb))
            }
            (Some((ka, _)), Some((kb, _))) if ka < kb => (a.next().map(|x| x.1), None),
            (Some(_), None) => (a.next().map(|x| x.1), None),
            _ => (None, b.next().map(|x| x.1)),
        };
        out.push(pair);
    }
    out
}

#[derive(Clone, Debug, PartialEq)]
pub struct Service {
    pub addr: ServiceAddr,
    pub scheduler: Scheduler,
    /// What the scheduler hashes (always the source for `sh`).
    pub hash: Hash,
    /// Index in the datapath's per-service arrays.
    pub id: u32,
    pub reals: Vec<Real>,
    /// Lookup table: slot -> real server id ([`NO_REAL`] when empty). Its length is the table
    /// size: 4096 for `sh`, the Maglev prime for `mh`. Shared by the states that did not
    /// rebuild it, so copying a state copies no table and comparing two finds them equal at once.
    pub table: Arc<Vec<u32>>,
    /// Persistence (ipvsadm -p), if the service has it.
    pub persistence: Option<Persistence>,
}

impl Service {
    pub fn real(&self, addr: IpAddr) -> Option<&Real> {
        self.reals.iter().find(|r| r.addr == addr)
    }

    /// Whether any of its real servers forwards by LVS/NAT.
    pub fn masquerades(&self) -> bool {
        self.reals.iter().any(|r| r.forward == Forward::Masq)
    }

    /// The service's entry in the datapath's SERVICES map.
    pub fn info(&self) -> ServiceInfo {
        ServiceInfo {
            id: self.id,
            table_size: self.table.len() as u32,
            scheduler: self.scheduler.id(),
            hash: self.hash.id(),
            flags: if self.persistence.is_some() {
                lb_common::SVC_PERSISTENT
            } else {
                0
            } | if self.masquerades() {
                lb_common::SVC_NAT
            } else {
                0
            },
            _pad: 0,
        }
    }

    /// Rebuilds the lookup table from the real servers and their weights (0 while down):
    /// - `sh`, `mh`: hash slots; `dh`: IPVS's 256 buckets, dealt to the real servers in turn
    ///   (an unavailable server's buckets stay empty, as IPVS gives them no server);
    /// - `rr`: the available real servers in order; `wrr`: IPVS's whole weighted sequence;
    /// - `lc`, `wlc`, `sed`, `nq`, `fo`, `ovf`: the available real servers, which the datapath
    ///   compares by load.
    pub(crate) fn rebuild_table(&mut self) {
        let available = || {
            self.reals
                .iter()
                .filter(|r| r.effective_weight() > 0)
                .map(|r| r.id)
                .collect::<Vec<u32>>()
        };
        match self.scheduler {
            Scheduler::Rr => self.table = Arc::new(available()),
            Scheduler::Wrr => {
                let weights: Vec<(u32, u32)> = self
                    .reals
                    .iter()
                    .map(|r| (r.id, r.effective_weight()))
                    .collect();
                self.table = Arc::new(sched::wrr_sequence(&weights));
            }
            Scheduler::Lc
            | Scheduler::Wlc
            | Scheduler::Sed
            | Scheduler::Nq
            | Scheduler::Lblc
            | Scheduler::Lblcr
            | Scheduler::Fo
            | Scheduler::Ovf => self.table = Arc::new(available()),
            Scheduler::Dh => {
                // IPVS's buckets: the servers dealt in turn. The buckets of a server at weight 0
                // or down are dealt to the available ones in turn (IPVS would drop their flows),
                // so weight 0 and health work as for every other scheduler, and the
                // destinations of the available servers stay where they are.
                let up = available();
                let mut spare = up.iter().cycle();
                self.table = Arc::new(
                    (0..DH_TABLE_SIZE as usize)
                        .map(|b| match self.reals.get(b % self.reals.len().max(1)) {
                            Some(r) if r.effective_weight() > 0 => r.id,
                            _ => spare.next().copied().unwrap_or(NO_REAL),
                        })
                        .collect(),
                );
            }
            Scheduler::Sh => {
                let members: Vec<Member> = self
                    .reals
                    .iter()
                    .map(|r| Member {
                        id: r.id,
                        weight: r.effective_weight(),
                    })
                    .collect();
                // Moves as few slots as it can from the table it had (copied if shared).
                let table = Arc::make_mut(&mut self.table);
                table.resize(SH_TABLE_SIZE as usize, NO_REAL);
                rebalance(table, &members);
            }
            Scheduler::Mh => {
                let backends: Vec<maglev::Backend> = self
                    .reals
                    .iter()
                    .map(|r| maglev::Backend {
                        addr: addr_of(r.addr),
                        weight: r.effective_weight(),
                        id: r.id,
                    })
                    .collect();
                self.table = Arc::new(maglev::build(&backends, self.table.len() as u32));
            }
        }
    }

    /// The flow a client's packet to this service forms, as the datapath keys it.
    pub fn flow(&self, client: IpAddr, sport: u16) -> FlowKey {
        FlowKey {
            src: addr_of(client),
            dst: addr_of(self.addr.vip),
            sport,
            dport: self.addr.port,
            proto: self.addr.protocol.number(),
            _pad: [0; 3],
        }
    }

    /// The real server the datapath gives a new flow: the same lb-common slot function over the
    /// same table.
    pub fn pick(&self, flow: &FlowKey) -> Option<&Real> {
        let slot = sched::slot(&self.info(), flow)?;
        let id = self.table[slot as usize];
        self.reals.iter().find(|r| r.id == id)
    }

    /// The real server the datapath gives the next new flow, for every scheduler: by hash as
    /// [`Service::pick`]; `rr`/`wrr` at `loads.position` (which moves on); the schedulers that
    /// choose by load from `loads.conns` (to which the new flow is added, a handshake: inactive),
    /// with the same lb-common code the datapath runs.
    pub fn choose(&self, flow: &FlowKey, loads: &mut Loads) -> Option<&Real> {
        let id = match self.scheduler {
            s if s.deterministic() => {
                let real = self.pick(flow)?;
                return (!loads.candidate(real).overloaded).then_some(real);
            }
            Scheduler::Rr | Scheduler::Wrr => {
                if self.table.is_empty() {
                    return None;
                }
                // Past overloaded servers, a few positions at most, as the datapath.
                let mut tries = 0;
                loop {
                    let id = self.table[(loads.position % self.table.len() as u64) as usize];
                    loads.position += 1;
                    let real = self.reals.iter().find(|r| r.id == id)?;
                    if !loads.candidate(real).overloaded {
                        break id;
                    }
                    tries += 1;
                    if tries == sched::RR_TRIES {
                        return None;
                    }
                }
            }
            s => {
                let reals: Vec<&Real> = self
                    .table
                    .iter()
                    .filter_map(|id| self.reals.iter().find(|r| r.id == *id))
                    .collect();
                let candidates: Vec<sched::Candidate> =
                    reals.iter().map(|r| loads.candidate(r)).collect();
                let best = sched::choose(s.id(), candidates.iter().copied());
                let id = if sched::by_locality(s.id()) {
                    // As the datapath: the destination's members first.
                    let underloaded = candidates
                        .iter()
                        .any(|c| sched::eligible(s.id(), c) && sched::underloaded(c));
                    let members: Vec<sched::Candidate> = loads
                        .locality
                        .clone()
                        .iter()
                        .filter_map(|id| self.reals.iter().find(|r| r.id == *id))
                        .map(|r| loads.candidate(r))
                        .collect();
                    let member = sched::choose(s.id(), members)
                        .filter(|m| !sched::locality_overloaded(m, underloaded));
                    match (member, best) {
                        (Some(m), _) => m.id,
                        (None, Some(b)) => {
                            if s == Scheduler::Lblcr && loads.locality.len() < LOCALITY_SET {
                                loads.locality.push(b.id);
                            } else {
                                loads.locality = vec![b.id];
                            }
                            b.id
                        }
                        (None, None) => return None,
                    }
                } else {
                    best?.id
                };
                loads.conns.entry(id).or_default().inactive += 1;
                id
            }
        };
        self.reals.iter().find(|r| r.id == id)
    }

    /// Maglev needs about 100 slots per real server to stay balanced; the schedulers that
    /// choose by load look at most at [`MAX_SCAN`] real servers; `wrr`'s sequence must fit its
    /// table. `weights` are the configured weights the service would have.
    fn check_capacity(&self, weights: &[u32]) -> Result<()> {
        let (size, reals) = (self.table.len(), weights.len());
        match self.scheduler {
            Scheduler::Mh if reals * MH_SLOTS_PER_REAL as usize > size => bail!(
                "service {} has a Maglev table of {size} slots: {reals} real servers need at least {} (100 per real server); choose a larger --mh-size",
                self.addr,
                reals * MH_SLOTS_PER_REAL as usize
            ),
            s if sched::by_load(s.id()) && reals > MAX_SCAN as usize => bail!(
                "service {} uses {s}, which compares at most {MAX_SCAN} real servers; {reals} is too many",
                self.addr
            ),
            Scheduler::Wrr if sched::wrr_len(weights.iter().copied()) > WRR_MAX_LEN => bail!(
                "service {}: wrr's sequence for weights {} would have {} steps (at most {WRR_MAX_LEN}): use weights with a larger common divisor, or smaller ones",
                self.addr,
                weights.iter().map(u32::to_string).collect::<Vec<_>>().join(":"),
                sched::wrr_len(weights.iter().copied())
            ),
            _ => Ok(()),
        }
    }

    /// The configured weights of the real servers, with `change` applied (id, new weight; a new
    /// real server has an id not yet used).
    fn weights_with(&self, change: Option<(u32, u32)>) -> Vec<u32> {
        let mut w: Vec<u32> = self
            .reals
            .iter()
            .map(|r| match change {
                Some((id, w)) if id == r.id => w,
                _ => r.weight,
            })
            .collect();
        if let Some((_, weight)) = change.filter(|(id, _)| !self.reals.iter().any(|r| r.id == *id))
        {
            w.push(weight);
        }
        w
    }
}

/// Resolves a scheduler request against the current settings (`None` for a new service).
fn resolve_scheduler(
    spec: &SchedulerSpec,
    current: Option<&Service>,
) -> Result<(Scheduler, Hash, usize)> {
    let scheduler = spec
        .scheduler
        .or(current.map(|s| s.scheduler))
        .unwrap_or_default();
    let same = current.filter(|c| c.scheduler == scheduler);
    if scheduler != Scheduler::Mh && (spec.mh_size.is_some() || spec.hash.is_some()) {
        bail!("--mh-size and --hash apply to the mh scheduler only");
    }
    match scheduler {
        Scheduler::Sh => Ok((Scheduler::Sh, Hash::Src, SH_TABLE_SIZE as usize)),
        Scheduler::Mh => {
            let size = spec
                .mh_size
                .or(same.map(|c| c.table.len() as u32))
                .unwrap_or(MH_DEFAULT_SIZE);
            if !MH_SIZES.contains(&size) {
                let list: Vec<String> = MH_SIZES.iter().map(u32::to_string).collect();
                bail!("Maglev table size {size} is not one of {}", list.join(", "));
            }
            let hash = spec.hash.or(same.map(|c| c.hash)).unwrap_or(Hash::Flow);
            Ok((Scheduler::Mh, hash, size as usize))
        }
        // Their tables follow from the real servers (the size here is a placeholder).
        other => Ok((other, Hash::Flow, 0)),
    }
}

/// What `real add` / `real edit` asks for. `None` keeps the current value (edit) or takes the
/// default (add).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RealSpec {
    pub addr: Option<IpAddr>,
    pub port: Option<u16>,
    pub weight: Option<u32>,
    pub forward: Option<Forward>,
    pub mac: Option<Mac>,
    /// A change of health check.
    #[serde(default)]
    pub check: Option<CheckChange>,
    /// Connection thresholds (ipvsadm -x upper, -y lower).
    #[serde(default)]
    pub upper: Option<u32>,
    #[serde(default)]
    pub lower: Option<u32>,
}

/// Setting or removing a real server's health check (an explicit enum: a nested Option would not
/// survive the JSON of the control socket).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckChange {
    Set(HealthCheck),
    Remove,
}

impl CheckChange {
    pub fn from_option(check: Option<HealthCheck>) -> Self {
        check.map_or(CheckChange::Remove, CheckChange::Set)
    }

    fn into_option(self) -> Option<HealthCheck> {
        match self {
            CheckChange::Set(c) => Some(c),
            CheckChange::Remove => None,
        }
    }
}

/// What the schedulers that do not hash choose by: each real server's connections (and
/// overloaded flag) by id, and the round-robin position.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Loads {
    pub conns: std::collections::HashMap<u32, lb_common::RealConns>,
    pub position: u64,
    /// `lblc`, `lblcr`: the real servers the service's VIP goes to now.
    pub locality: Vec<u32>,
}

impl Loads {
    /// `real` as the schedulers see it, with the datapath's overloaded flag brought up to date.
    fn candidate(&mut self, real: &Real) -> sched::Candidate {
        let c = self.conns.entry(real.id).or_default();
        let overloaded = sched::overloaded(
            c.overloaded != 0,
            c.active + c.inactive,
            real.upper,
            real.lower,
        );
        c.overloaded = overloaded as i64;
        sched::Candidate {
            id: real.id,
            weight: real.effective_weight(),
            active: c.active,
            inactive: c.inactive,
            overloaded,
        }
    }
}

/// Services are shared between a state and the next one until a change copies the one it
/// touches: a change costs what it changes, not what the director holds, and [`apply`] skips
/// every service the two states still share.
#[derive(Clone, Debug, Default)]
pub struct State {
    pub services: BTreeMap<ServiceAddr, Arc<Service>>,
    /// The interface (ifindex) toward each real-server address, when the director is attached
    /// to several: learned from the kernel's routes by the agent. Absent: frames leave where the
    /// request came in.
    pub egress: BTreeMap<IpAddr, u32>,
    /// How many services and real servers the datapath has room for (set at start).
    pub limits: Limits,
    /// The service and real-server ids in use (the datapath's array indexes).
    service_ids: Ids,
    real_ids: Ids,
}

/// Equal when they describe the same director: the id sets follow from the services.
impl PartialEq for State {
    fn eq(&self, other: &Self) -> bool {
        (&self.services, &self.egress, self.limits)
            == (&other.services, &other.egress, other.limits)
    }
}

/// The real server's port: the one given, else the service's. Only LVS/NAT maps ports: direct
/// routing and tunnelling deliver the packet as the client sent it.
fn check_real_port(
    service: &ServiceAddr,
    addr: IpAddr,
    port: Option<u16>,
    forward: Forward,
) -> Result<u16> {
    check_family(service, addr, forward)?;
    let port = port.unwrap_or(service.port);
    if service.port != 0 {
        check_port("real server", port)?;
    }
    if forward.keeps_destination() && port != service.port {
        bail!(
            "real server port {port} differs from the service port {}: direct routing and tunnelling cannot change the port (masquerading, -m, can)",
            service.port
        );
    }
    Ok(port)
}

/// A real server is of its service's family, except an IPv6 real server of an IPv4 service
/// reached by tunnelling (IPv4-in-IPv6, as IPVS and Katran allow).
fn check_family(service: &ServiceAddr, addr: IpAddr, forward: Forward) -> Result<()> {
    let tunnel_4in6 = service.vip.is_ipv4() && addr.is_ipv6() && forward == Forward::Tunnel;
    if service.vip.is_ipv4() != addr.is_ipv4() && !tunnel_4in6 {
        bail!("real server {addr} is not of the same address family as service {service} (an IPv4 service reaches an IPv6 real server by tunnelling only, -i)");
    }
    Ok(())
}

fn check_port(what: &str, port: u16) -> Result<()> {
    if port == 0 {
        bail!("port 0 is not a valid {what} port");
    }
    Ok(())
}

/// Persistence settings from a request for a service of the family (`v6`), keeping what is not
/// given (an edit).
fn resolve_persistence(
    spec: &SchedulerSpec,
    current: Option<&Service>,
    v6: bool,
) -> Result<Option<Persistence>> {
    let was = current.and_then(|c| c.persistence);
    let timeout = match spec.persistent {
        Some(0) => None,
        Some(t) => Some(t),
        None => was.map(|p| p.timeout),
    };
    let netmask = spec
        .netmask
        .or(was.map(|p| p.netmask))
        .unwrap_or(Netmask::single(v6))
        .for_family(v6)
        .map_err(|e| anyhow!(e))?;
    match timeout {
        None if spec.netmask.is_some() => bail!("a netmask (-M) needs persistence (-p)"),
        None => Ok(None),
        Some(t) if t > 31 * 24 * 3600 => {
            bail!("a persistence timeout of {t} s is more than a month")
        }
        Some(timeout) => Ok(Some(Persistence { timeout, netmask })),
    }
}

/// Port 0 means every port of the VIP, which only a persistent service may take (as ipvsadm).
fn check_service_port(addr: ServiceAddr, persistence: Option<Persistence>) -> Result<()> {
    if addr.port == 0 && persistence.is_none() {
        bail!("port 0 (every port of the VIP) is only for a persistent service (-p)");
    }
    Ok(())
}

fn check_thresholds(upper: u32, lower: u32) -> Result<()> {
    if lower > 0 && (upper == 0 || lower > upper) {
        bail!("lower connection threshold {lower} needs an upper one above it (upper: {upper})");
    }
    Ok(())
}

fn check_weight(weight: u32) -> Result<()> {
    if weight > MAX_WEIGHT {
        bail!("weight {weight} is out of range 0..={MAX_WEIGHT}");
    }
    Ok(())
}

/// A service or real server that is not there (the HTTP API answers 404).
#[derive(Debug)]
pub struct NotFound(pub String);

/// A service or real server that is there already (the HTTP API answers 409).
#[derive(Debug)]
pub struct Exists(pub String);

impl std::fmt::Display for NotFound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::fmt::Display for Exists {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotFound {}
impl std::error::Error for Exists {}

pub fn no_such_service(addr: &ServiceAddr) -> anyhow::Error {
    NotFound(format!("no such service: {addr}")).into()
}

/// `real` is the real server's address, with the port given if one was.
pub fn no_such_real(real: impl std::fmt::Display, service: &ServiceAddr) -> anyhow::Error {
    NotFound(format!("no such real server {real} in service {service}")).into()
}

impl State {
    pub fn service(&self, addr: &ServiceAddr) -> Result<&Service> {
        self.services
            .get(addr)
            .map(|s| &**s)
            .ok_or_else(|| no_such_service(addr))
    }

    /// The service to change: this state's own copy (made now if the previous state shares it).
    fn service_mut(&mut self, addr: &ServiceAddr) -> Result<&mut Service> {
        self.services
            .get_mut(addr)
            .map(Arc::make_mut)
            .ok_or_else(|| no_such_service(addr))
    }

    /// An empty state for a datapath with room for `limits`.
    pub fn with_limits(limits: Limits) -> State {
        State {
            limits,
            ..State::default()
        }
    }

    /// Builds the id sets from the services (a state read back from a file).
    fn index_ids(&mut self) {
        let (mut services, mut reals) = (Ids::default(), Ids::default());
        for s in self.services.values() {
            services.take(s.id);
            for r in &s.reals {
                reals.take(r.id);
            }
        }
        (self.service_ids, self.real_ids) = (services, reals);
    }

    /// Finishes in-place changes to one service: if it ends as it was (`before`), the old shared
    /// service is put back, so applying the state touches nothing of it; otherwise its table is
    /// rebuilt from its real servers.
    pub(crate) fn settle(&mut self, addr: &ServiceAddr, before: Option<&Arc<Service>>) {
        let Some(now) = self.services.get_mut(addr) else {
            return;
        };
        match before {
            Some(b) if Arc::ptr_eq(b, now) => {}
            // Unchanged but copied: the table is the one it had.
            Some(b) if **b == **now => *now = Arc::clone(b),
            _ => Arc::make_mut(now).rebuild_table(),
        }
    }

    /// The room a director needs for this state: the defaults, or more where it holds more.
    pub fn room_needed(&self) -> Limits {
        let default = Limits::default();
        let reals = self.services.values().map(|s| s.reals.len()).sum::<usize>() as u32;
        Limits {
            services: default.services.max(self.services.len() as u32),
            reals: default.reals.max(reals),
        }
    }

    /// Whether the id sets hold exactly the ids of the services and real servers (tests).
    pub fn ids_consistent(&self) -> bool {
        let mut copy = self.clone();
        copy.index_ids();
        copy.service_ids == self.service_ids && copy.real_ids == self.real_ids
    }

    fn free_service_id(&self) -> Result<u32> {
        let max = self.limits.services;
        self.service_ids.first_free(max).ok_or_else(|| {
            anyhow!("too many services: at most {max} (the director's services_max)")
        })
    }

    fn free_real_id(&self) -> Result<u32> {
        let max = self.limits.reals;
        self.real_ids.first_free(max).ok_or_else(|| {
            anyhow!(
                "too many real servers: at most {max} over all services (the director's reals_max)"
            )
        })
    }

    /// The state after `change`, made on a copy: a change that fails leaves `self` as it was.
    /// The copy shares every service the change does not touch.
    fn changed(&self, change: impl FnOnce(&mut State) -> Result<()>) -> Result<State> {
        let mut next = self.clone();
        change(&mut next)?;
        Ok(next)
    }

    /// [`State::changed`] for a change to `service`'s real servers, its table rebuilt once after.
    fn real_changed(
        &self,
        service: ServiceAddr,
        change: impl FnOnce(&mut State) -> Result<()>,
    ) -> Result<State> {
        self.changed(|next| {
            change(next)?;
            next.service_mut(&service)?.rebuild_table();
            Ok(())
        })
    }

    pub fn add_service(&self, addr: ServiceAddr, spec: &SchedulerSpec) -> Result<State> {
        self.changed(|next| next.add_service_in(addr, spec))
    }

    /// [`State::add_service`] in place (a failure may leave `self` half changed).
    pub(crate) fn add_service_in(&mut self, addr: ServiceAddr, spec: &SchedulerSpec) -> Result<()> {
        if self.services.contains_key(&addr) {
            return Err(Exists(format!("service {addr} already exists")).into());
        }
        let (scheduler, hash, size) = resolve_scheduler(spec, None)?;
        let persistence = resolve_persistence(spec, None, addr.vip.is_ipv6())?;
        check_service_port(addr, persistence)?;
        let id = self.free_service_id()?;
        let mut service = Service {
            addr,
            scheduler,
            hash,
            id,
            reals: Vec::new(),
            table: Arc::new(vec![NO_REAL; size]),
            persistence,
        };
        service.rebuild_table();
        self.service_ids.take(id);
        self.services.insert(addr, Arc::new(service));
        Ok(())
    }

    pub fn edit_service(&self, addr: ServiceAddr, spec: &SchedulerSpec) -> Result<State> {
        self.changed(|next| next.edit_service_in(addr, spec))
    }

    /// [`State::edit_service`] in place. A service whose settings stay as they are is not
    /// copied.
    pub(crate) fn edit_service_in(
        &mut self,
        addr: ServiceAddr,
        spec: &SchedulerSpec,
    ) -> Result<()> {
        let current = self.service(&addr)?;
        let (scheduler, hash, size) = resolve_scheduler(spec, Some(current))?;
        let persistence = resolve_persistence(spec, Some(current), addr.vip.is_ipv6())?;
        check_service_port(addr, persistence)?;
        if (
            current.scheduler,
            current.hash,
            current.table.len(),
            current.persistence,
        ) == (scheduler, hash, size, persistence)
        {
            return Ok(());
        }
        let svc = self.service_mut(&addr)?;
        svc.persistence = persistence;
        if (svc.scheduler, svc.hash, svc.table.len()) != (scheduler, hash, size) {
            if svc.scheduler != scheduler || svc.table.len() != size {
                svc.table = Arc::new(vec![NO_REAL; size]);
            }
            svc.scheduler = scheduler;
            svc.hash = hash;
            svc.check_capacity(&svc.weights_with(None))?;
            svc.rebuild_table();
        }
        Ok(())
    }

    /// The real server a new flow from `client:sport` would get (`xdplb simulate`).
    pub fn simulate(
        &self,
        addr: &ServiceAddr,
        client: IpAddr,
        sport: u16,
        loads: &mut Loads,
    ) -> Result<Option<&Real>> {
        let svc = self.service(addr)?;
        Ok(svc.choose(&svc.flow(client, sport), loads))
    }

    pub fn del_service(&self, addr: ServiceAddr) -> Result<State> {
        self.changed(|next| next.del_service_in(addr))
    }

    pub(crate) fn del_service_in(&mut self, addr: ServiceAddr) -> Result<()> {
        let gone = self
            .services
            .remove(&addr)
            .ok_or_else(|| no_such_service(&addr))?;
        self.service_ids.release(gone.id);
        for r in &gone.reals {
            self.real_ids.release(r.id);
        }
        Ok(())
    }

    /// Adds a real server whose MAC is given in `spec` (--mac).
    pub fn add_real(&self, service: ServiceAddr, spec: &RealSpec) -> Result<State> {
        self.add_real_learned(service, spec, None)
    }

    /// Adds a real server; without `spec.mac`, `learned` is the MAC the agent got from the kernel.
    pub fn add_real_learned(
        &self,
        service: ServiceAddr,
        spec: &RealSpec,
        learned: Option<Mac>,
    ) -> Result<State> {
        self.real_changed(service, |next| next.add_real_in(service, spec, learned))
    }

    /// [`State::add_real_learned`] in place, leaving the service's table to rebuild.
    pub(crate) fn add_real_in(
        &mut self,
        service: ServiceAddr,
        spec: &RealSpec,
        learned: Option<Mac>,
    ) -> Result<()> {
        let (addr, port) = self.check_new_real(service, spec)?;
        let weight = spec.weight.unwrap_or(1);
        check_weight(weight)?;
        let id = self.free_real_id()?;
        self.real_ids.take(id);
        let svc = self.service_mut(&service)?;
        svc.reals.push(Real {
            addr,
            port,
            weight,
            forward: spec.forward.unwrap_or_default(),
            mac: spec.mac.or(learned).unwrap_or_default(),
            pinned_mac: spec.mac.is_some(),
            id,
            check: spec.check.clone().and_then(CheckChange::into_option),
            health: Health::Up,
            last_error: None,
            previous_weight: None,
            upper: spec.upper.unwrap_or(0),
            lower: spec.lower.unwrap_or(0),
        });
        Ok(())
    }

    /// Records a health transition; a server that goes down leaves the table (as weight 0).
    pub fn set_health(
        &self,
        service: ServiceAddr,
        addr: IpAddr,
        health: Health,
        error: Option<String>,
    ) -> Result<State> {
        let mut next = self.clone();
        let real = next.real_mut(&service, addr)?;
        real.health = health;
        real.last_error = error;
        next.service_mut(&service)?.rebuild_table();
        Ok(next)
    }

    /// Lets the agent learn a real server's MAC again (the file gives none); `learned` is the
    /// MAC it just learned, if it had to.
    pub fn unpin_mac(
        &self,
        service: ServiceAddr,
        addr: IpAddr,
        learned: Option<Mac>,
    ) -> Result<State> {
        self.changed(|next| next.unpin_mac_in(service, addr, learned))
    }

    /// [`State::unpin_mac`] in place; a real server already unpinned with that MAC is not
    /// copied.
    pub(crate) fn unpin_mac_in(
        &mut self,
        service: ServiceAddr,
        addr: IpAddr,
        learned: Option<Mac>,
    ) -> Result<()> {
        let current = self
            .service(&service)?
            .real(addr)
            .ok_or_else(|| no_such_real(addr, &service))?;
        if !current.pinned_mac && learned.is_none_or(|m| m == current.mac) {
            return Ok(());
        }
        let real = self.real_mut(&service, addr)?;
        real.pinned_mac = false;
        if let Some(m) = learned {
            real.mac = m;
        }
        Ok(())
    }

    fn real_mut(&mut self, service: &ServiceAddr, addr: IpAddr) -> Result<&mut Real> {
        let svc = self.service_mut(service)?;
        svc.reals
            .iter_mut()
            .find(|r| r.addr == addr)
            .ok_or_else(|| no_such_real(addr, service))
    }

    /// The state with the interfaces toward real servers replaced by `egress` (only those of
    /// real servers it has are kept).
    pub fn with_egress(&self, egress: BTreeMap<IpAddr, u32>) -> State {
        let mut next = self.clone();
        next.egress = egress;
        let addrs: std::collections::BTreeSet<IpAddr> = next
            .services
            .values()
            .flat_map(|s| s.reals.iter().map(|r| r.addr))
            .collect();
        next.egress.retain(|a, _| addrs.contains(a));
        next
    }

    /// The state with kernel-learned MACs updated (the agent re-resolves them periodically).
    pub fn with_learned_macs(&self, learned: &[(ServiceAddr, IpAddr, Mac)]) -> State {
        let mut next = self.clone();
        for (svc, addr, mac) in learned {
            // Only a real server whose MAC changes is copied.
            let changes = next
                .service(svc)
                .ok()
                .and_then(|s| s.real(*addr))
                .is_some_and(|r| !r.pinned_mac && r.mac != *mac);
            if changes {
                if let Ok(r) = next.real_mut(svc, *addr) {
                    r.mac = *mac;
                }
            }
        }
        next
    }

    /// Validates everything of a `real add` that does not need the kernel: the agent calls this
    /// before it resolves the real server's MAC address.
    pub fn check_new_real(&self, service: ServiceAddr, spec: &RealSpec) -> Result<(IpAddr, u16)> {
        let svc = self.service(&service)?;
        let Some(addr) = spec.addr else {
            bail!("a real server address (-r RIP) is required")
        };
        let port = check_real_port(&service, addr, spec.port, spec.forward.unwrap_or_default())?;
        if let Some(existing) = svc.real(addr) {
            let message = if existing.port == port {
                format!(
                    "real server {} already exists in service {service}",
                    std::net::SocketAddr::new(addr, port)
                )
            } else {
                format!(
                    "real server {addr} is already in service {service} as {addr}:{} (one port \
                     per real server address and service)",
                    existing.port
                )
            };
            return Err(Exists(message).into());
        }
        if let Some(w) = spec.weight {
            check_weight(w)?;
        }
        check_thresholds(spec.upper.unwrap_or(0), spec.lower.unwrap_or(0))?;
        if let Some(CheckChange::Set(c)) = &spec.check {
            c.validate()?;
        }
        svc.check_capacity(&svc.weights_with(Some((u32::MAX, spec.weight.unwrap_or(1)))))?;
        Ok((addr, port))
    }

    pub fn edit_real(&self, service: ServiceAddr, spec: &RealSpec) -> Result<State> {
        self.edit_real_learned(service, spec, None)
    }

    /// Edits a real server; `learned` replaces a kernel-learned MAC (after a change of method).
    pub fn edit_real_learned(
        &self,
        service: ServiceAddr,
        spec: &RealSpec,
        learned: Option<Mac>,
    ) -> Result<State> {
        self.real_changed(service, |next| next.edit_real_in(service, spec, learned))
    }

    /// [`State::edit_real_learned`] in place, leaving the service's table to rebuild.
    pub(crate) fn edit_real_in(
        &mut self,
        service: ServiceAddr,
        spec: &RealSpec,
        learned: Option<Mac>,
    ) -> Result<()> {
        let Some(addr) = spec.addr else {
            bail!("a real server address (-r RIP) is required")
        };
        let svc = self.service_mut(&service)?;
        let Some(real) = svc.reals.iter_mut().find(|r| r.addr == addr) else {
            return Err(no_such_real(addr, &service));
        };
        let forward = spec.forward.unwrap_or(real.forward);
        // A port given is the real server's new one (LVS/NAT); none keeps it, unless the
        // method no longer maps ports.
        let port = match spec.port {
            Some(p) => Some(p),
            None if forward.keeps_destination() => None,
            None => Some(real.port),
        };
        real.port = check_real_port(&service, addr, port, forward)?;
        if let Some(w) = spec.weight {
            check_weight(w)?;
            // Drained: remember the weight a restore gives back.
            real.previous_weight = match (real.weight, w) {
                (_, 1..) => None,
                (0, 0) => real.previous_weight,
                (before, 0) => Some(before),
            };
            real.weight = w;
        }
        let (upper, lower) = (
            spec.upper.unwrap_or(real.upper),
            spec.lower.unwrap_or(real.lower),
        );
        check_thresholds(upper, lower)?;
        (real.upper, real.lower) = (upper, lower);
        let id = real.id;
        if let Some(f) = spec.forward {
            real.forward = f;
        }
        if let Some(m) = spec.mac {
            real.mac = m;
            real.pinned_mac = true;
        } else if let Some(m) = learned.filter(|_| !real.pinned_mac) {
            real.mac = m;
        }
        // A changed check starts from up again.
        let check = spec.check.clone().map(CheckChange::into_option);
        if let Some(check) = check.filter(|c| *c != real.check) {
            if let Some(c) = &check {
                c.validate()?;
            }
            real.check = check;
            real.health = Health::Up;
            real.last_error = None;
        }
        if let Some(w) = spec.weight {
            svc.check_capacity(&svc.weights_with(Some((id, w))))?;
        }
        Ok(())
    }

    pub fn del_real(&self, service: ServiceAddr, addr: IpAddr) -> Result<State> {
        self.real_changed(service, |next| next.del_real_in(service, addr))
    }

    /// [`State::del_real`] in place, leaving the service's table to rebuild.
    pub(crate) fn del_real_in(&mut self, service: ServiceAddr, addr: IpAddr) -> Result<()> {
        let svc = self.service_mut(&service)?;
        let Some(at) = svc.reals.iter().position(|r| r.addr == addr) else {
            return Err(no_such_real(addr, &service));
        };
        let gone = svc.reals.remove(at);
        self.real_ids.release(gone.id);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
