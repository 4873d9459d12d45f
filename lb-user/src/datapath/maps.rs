//! Typed access to the datapath's maps. [`MapWriter`] is the narrow interface the agent's state
//! writes through, so the policy layer can be tested without root against an in-memory fake.

use anyhow::{anyhow, Context as _, Result};
use aya::{
    maps::{
        Array, ArrayOfMaps, DevMapHash, HashMap, IterableMap as _, MapData, PerCpuArray,
        PerCpuValues,
    },
    util::nr_cpus,
    Ebpf,
};
pub use lb_common::Counters;
use std::net::IpAddr;
use std::os::fd::{AsFd as _, AsRawFd as _};
use std::sync::atomic::{AtomicI64, Ordering};

use super::mmap::Mapped;

use lb_common::{
    map_names, Addr, Conn, DirectorConfig, FloodGuard, FlowKey, Iface, LocalMacs, LocalityEntry,
    LocalityKey, NatReply, NeighMiss, Persistence, RealConns, RealEgress, RealLimits, RealServer,
    Reason, ReplyEntry, ServiceInfo, ServiceKey, TemplateKey, MAX_LOCAL_MACS, SYNC_STAT_EVENTS,
    SYNC_STAT_LOST, TABLE_MAP_FLAGS,
};

/// What the agent needs from the datapath's maps.
pub trait MapWriter: Send + Sync {
    fn set_config(&mut self, config: &DirectorConfig) -> Result<()>;
    fn set_service(&mut self, key: &ServiceKey, info: &ServiceInfo) -> Result<()>;
    fn remove_service(&mut self, key: &ServiceKey) -> Result<()>;
    /// Marks (or clears) a VIP prefilter entry.
    fn set_vip_filter(&mut self, index: u32, on: bool) -> Result<()>;
    /// Replaces a service's lookup table (slot -> real server id): each slot names a real
    /// server of the old table or of the new one at any moment.
    fn set_table(&mut self, service_id: u32, table: &[u32]) -> Result<()>;
    /// Several services' tables at once (the writer may batch them).
    fn set_tables(&mut self, tables: &[(u32, &[u32])]) -> Result<()> {
        for (id, table) in tables {
            self.set_table(*id, table)?;
        }
        Ok(())
    }
    fn set_real(&mut self, id: u32, real: &RealServer) -> Result<()>;
    /// Real servers' limits, egress and entries, in that order (each kind may be batched).
    fn set_real_parts(
        &mut self,
        limits: &[(u32, RealLimits)],
        egress: &[(u32, RealEgress)],
        entries: &[(u32, RealServer)],
    ) -> Result<()> {
        for (id, l) in limits {
            self.set_limits(*id, l)?;
        }
        for (id, e) in egress {
            self.set_egress(*id, e)?;
        }
        for (id, r) in entries {
            self.set_real(*id, r)?;
        }
        Ok(())
    }
    fn counters(&self) -> Result<DatapathCounters>;
    /// Zeroes the counters of a service id and of real server ids (before they are reused).
    fn reset_counters(&mut self, services: &[u32], reals: &[u32]) -> Result<()>;
    /// Zeroes every counter (`xdplb zero`).
    fn reset_all_counters(&mut self) -> Result<()>;
    /// The services the datapath has (an adopted datapath may have some the state does not).
    fn service_keys(&self) -> Result<Vec<ServiceKey>>;
    /// The MAC addresses of devices stacked on the interface whose frames are this host's too,
    /// each with whether it holds an address (active) or not (standby).
    fn set_local_macs(&mut self, macs: &[([u8; 6], bool)]) -> Result<()>;
    /// Connection sync's rings: (events written, events lost because a ring was full).
    fn sync_counters(&self) -> Result<(u64, u64)>;
    /// A real server's weight and thresholds, for the schedulers that choose by load.
    fn set_limits(&mut self, id: u32, limits: &RealLimits) -> Result<()>;
    /// Starts a service's round-robin sequence over (every CPU's position back to 0).
    fn reset_position(&mut self, service_id: u32) -> Result<()>;
    /// Each CPU's round-robin position of a service.
    fn positions(&self, service_id: u32) -> Result<Vec<u64>>;
    /// The real servers (`lblc`, `lblcr`) a service gives destination `addr`.
    fn locality(&self, service_id: u32, addr: Addr) -> Result<Vec<u32>>;
    /// A service's persistence settings (None: not persistent).
    fn set_persistence(
        &mut self,
        service_id: u32,
        persistence: Option<&crate::state::Persistence>,
    ) -> Result<()>;
    /// The template of a persistent service's client, if the datapath has one: (real server id,
    /// ticks since it was last used).
    fn template(&self, service_id: u32, client: IpAddr) -> Result<Option<(u32, u32)>>;
    /// Forgets the templates that send a service's clients to a real server of these (service
    /// id, real server id) pairs (deleted or failed), so those clients are scheduled afresh, as
    /// IPVS expires them. One walk of the template table, however many pairs.
    fn release_templates(&mut self, released: &[(u32, u32)]) -> Result<()>;
    /// The live templates per real server id (ipvsadm's PersistConn).
    fn persistent_conns(&self) -> Result<std::collections::HashMap<u32, u64>>;
    /// Every entry of the connection table (a snapshot).
    fn connections(&self) -> Result<Vec<(FlowKey, Conn)>>;
    /// A real server's egress interface (0: where the request came in) and LVS/NAT port.
    fn set_egress(&mut self, id: u32, egress: &RealEgress) -> Result<()>;
    /// Marks (or clears) an LVS/NAT reply prefilter entry (a NAT real server's last 16 bits).
    fn set_nat_source(&mut self, index: u32, on: bool) -> Result<()>;
    /// The interfaces the director is attached to (ifindex, MAC, MTU): frames to their MACs are
    /// its own, and it redirects frames out of them. Replaces what was there.
    fn set_interfaces(&mut self, ifaces: &[(u32, Iface)]) -> Result<()>;
    /// Next hops an LVS/NAT reply found no neighbour entry for (address, ifindex), removed as
    /// they are read: the agent has the kernel resolve them.
    fn take_neigh_misses(&mut self) -> Vec<(Addr, u32)>;
    /// The outer source address of IPv6 LVS/TUN packets (zero: none).
    fn set_tunnel_src6(&mut self, addr: Addr) -> Result<()>;
    /// New flows each CPU remembers per second (the new-flow guard; 0: no limit).
    fn set_new_flow_limit(&mut self, limit: u32) -> Result<()>;
}

/// Counters summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DatapathCounters {
    pub services: Vec<Counters>,
    pub reals: Vec<Counters>,
    pub reasons: Vec<(Reason, Counters)>,
    /// LVS/NAT replies per service and real server id (the outbound direction).
    pub services_out: Vec<Counters>,
    pub reals_out: Vec<Counters>,
    /// Active and inactive connections per real server id.
    pub conns: Vec<RealConns>,
}

impl DatapathCounters {
    /// Packets counted for a pass/drop reason.
    pub fn packets(&self, reason: Reason) -> u64 {
        self.reasons
            .iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, c)| c.packets)
    }
}

/// The real maps of a loaded object.
pub struct Maps {
    services: HashMap<MapData, ServiceKey, ServiceInfo>,
    /// Bumped after every change to `services` (see lb_common::CachedService); None in an object
    /// built before the datapath cached services.
    services_gen: Option<Array<MapData, u64>>,
    vip_filter: Array<MapData, u8>,
    tables: ArrayOfMaps<MapData, Array<MapData, u32>>,
    /// None in an object built before the table (`cargo xtask bench --compare` loads those).
    conns: Option<super::conn_table::SlotTable>,
    reals: Array<MapData, RealServer>,
    config: Array<MapData, DirectorConfig>,
    service_stats: PerCpuArray<MapData, Counters>,
    real_stats: PerCpuArray<MapData, Counters>,
    reasons: PerCpuArray<MapData, Counters>,
    local_macs: Array<MapData, LocalMacs>,
    sync_stats: PerCpuArray<MapData, u64>,
    conn_counts: ConnCounts,
    real_limits: Array<MapData, RealLimits>,
    sched_pos: PerCpuArray<MapData, u64>,
    locality: HashMap<MapData, LocalityKey, LocalityEntry>,
    persistence: Array<MapData, Persistence>,
    templates: Option<super::conn_table::SlotTable>,
    real_egress: Array<MapData, RealEgress>,
    nat_sources: Array<MapData, u8>,
    tunnel_src6: Array<MapData, Addr>,
    flood_guard: PerCpuArray<MapData, FloodGuard>,
    /// The LVS/NAT reply index; None in an object built before it.
    replies: Option<super::conn_table::SlotTable<ReplyEntry>>,
    service_out: PerCpuArray<MapData, Counters>,
    real_out: PerCpuArray<MapData, Counters>,
    ifaces: HashMap<MapData, u32, Iface>,
    tx_ports: DevMapHash<MapData>,
    neigh_misses: HashMap<MapData, NeighMiss, u8>,
    /// The lookup tables this writer made, mapped, by service id (see [`Maps::set_tables`]).
    held: std::collections::HashMap<u32, Mapped>,
    /// TABLES' own descriptor, for the batch updates aya does not offer.
    tables_fd: std::os::fd::OwnedFd,
}

fn take<T>(ebpf: &mut Ebpf, name: &str) -> Result<T>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| anyhow!("the XDP object has no map {name}"))?;
    T::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
}

/// A table of [`lb_common::conn_table`]'s layout; None in an object built before it (an older
/// build's, timed by `cargo xtask bench --compare`).
fn slot_table_in<E: lb_common::conn_table::Entry>(
    ebpf: &Ebpf,
    name: &str,
) -> Result<Option<super::conn_table::SlotTable<E>>> {
    match ebpf.map(name) {
        Some(aya::maps::Map::Array(d)) => Ok(Some(super::conn_table::SlotTable::new(d)?)),
        None => Ok(None),
        Some(_) => anyhow::bail!("map {name} has an unexpected type"),
    }
}

fn slot_table<'a, E>(
    table: &'a Option<super::conn_table::SlotTable<E>>,
    name: &str,
) -> Result<&'a super::conn_table::SlotTable<E>> {
    table
        .as_ref()
        .ok_or_else(|| anyhow!("the XDP object has no {name} (built before it)"))
}

fn sum(values: &[Counters]) -> Counters {
    let mut total = Counters::default();
    for v in values {
        total.add(v);
    }
    total
}

fn zero_per_cpu(map: &mut PerCpuArray<MapData, Counters>, index: u32) -> Result<()> {
    let cpus = nr_cpus().map_err(|(_, e)| e)?;
    let zeros = PerCpuValues::try_from(vec![Counters::default(); cpus])?;
    map.set(index, zeros, 0)?;
    Ok(())
}

/// Lookup tables kept mapped for in-place rewrites, at most.
const HELD_TABLES_MAX: usize = 16_384;

/// Writes an array map of u32 through a shared mapping of it (BPF_F_MMAPABLE), each slot with
/// one atomic store: the datapath may be reading it.
fn write_slots(mapped: &Mapped, values: &[u32]) {
    for (i, v) in values.iter().enumerate() {
        // SAFETY: an aligned u32 slot of the mapping (the kernel aligns array values to 8 bytes).
        let slot = unsafe { &*mapped.at(i).cast::<std::sync::atomic::AtomicU32>() };
        slot.store(*v, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Each real server's connection counts (REAL_CONNS), mapped: read, zeroed and corrected in
/// place while the datapath adds to them atomically.
pub struct ConnCounts {
    mapped: Mapped,
}

impl ConnCounts {
    pub fn new(map: &MapData) -> Result<Self> {
        let entries = map.info()?.max_entries() as usize;
        Ok(Self {
            mapped: Mapped::new(map, entries, std::mem::size_of::<RealConns>())?,
        })
    }

    /// Opens the pinned REAL_CONNS of a datapath.
    pub fn from_pin(path: &std::path::Path) -> Result<Self> {
        let data = MapData::from_pin(path)
            .with_context(|| format!("cannot open the connection counts {}", path.display()))?;
        Self::new(&data)
    }

    /// Field `field` (0 active, 1 inactive, 2 overloaded) of real server `id`'s counts.
    fn field(&self, id: u32, field: usize) -> Option<&AtomicI64> {
        let i = id as usize;
        if i >= self.mapped.entries() {
            return None;
        }
        let p = self.mapped.at(i).cast::<i64>();
        // SAFETY: 8-byte aligned i64s inside the mapping, which outlives the reference; the
        // datapath changes them only atomically (or, the flag, with a plain store of 0 or 1).
        Some(unsafe { AtomicI64::from_ptr(p.add(field)) })
    }

    /// Real server `id`'s counts.
    pub fn get(&self, id: u32) -> RealConns {
        let load = |f| self.field(id, f).map_or(0, |a| a.load(Ordering::Relaxed));
        RealConns {
            active: load(0),
            inactive: load(1),
            overloaded: load(2),
        }
    }

    /// Adds to real server `id`'s counts, atomically with the datapath's own adds.
    pub fn add(&self, id: u32, active: i64, inactive: i64) {
        for (f, d) in [(0, active), (1, inactive)] {
            if let (Some(a), true) = (self.field(id, f), d != 0) {
                a.fetch_add(d, Ordering::Relaxed);
            }
        }
    }

    /// Sets real server `id`'s counts to zero (a new real server on a reused id).
    pub fn zero(&self, id: u32) {
        let now = self.get(id);
        self.add(id, -now.active, -now.inactive);
        if let Some(a) = self.field(id, 2) {
            a.store(0, Ordering::Relaxed);
        }
    }

    pub fn entries(&self) -> usize {
        self.mapped.entries()
    }
}

/// Entries of a counter array as the kernel made it: a map pinned by an older version may be
/// smaller than this version declares (aya goes by the declaration), and reading or writing past
/// its end fails.
fn entries(map: &PerCpuArray<MapData, Counters>) -> Result<u32> {
    Ok(map.len().min(map.map().info()?.max_entries()))
}

/// Every counter of the array, summed over the CPUs: one system call for the whole array.
fn read_all(map: &PerCpuArray<MapData, Counters>) -> Result<Vec<Counters>> {
    let cpus = nr_cpus().map_err(|(_, e)| e)?;
    let all =
        super::batch::lookup_per_cpu::<Counters>(map.map().fd().as_fd(), entries(map)?, cpus)?;
    Ok(all.iter().map(|per_cpu| sum(per_cpu)).collect())
}

impl Maps {
    /// Tells the datapath's per-CPU service caches that SERVICES changed: each CPU reads a
    /// service from the map again on its next packet for it. Right after the change itself, so
    /// the cached entries outlive it by one system call.
    fn services_changed(&mut self) -> Result<()> {
        if let Some(gen) = &mut self.services_gen {
            let next = gen.get(&0, 0)?.wrapping_add(1);
            gen.set(0, next, 0)?;
        }
        Ok(())
    }

    pub fn take(ebpf: &mut Ebpf) -> Result<Self> {
        Ok(Self {
            services: take(ebpf, map_names::SERVICES)?,
            services_gen: match ebpf.map(map_names::SERVICES_GEN) {
                Some(_) => Some(take(ebpf, map_names::SERVICES_GEN)?),
                None => None,
            },
            vip_filter: take(ebpf, map_names::VIP_FILTER)?,
            tables_fd: match ebpf.map(map_names::TABLES) {
                Some(aya::maps::Map::ArrayOfMaps(d)) => d.fd().as_fd().try_clone_to_owned()?,
                _ => anyhow::bail!("the XDP object has no array of maps TABLES"),
            },
            tables: take(ebpf, map_names::TABLES)?,
            conns: slot_table_in(ebpf, map_names::CONN_TABLE)?,
            reals: take(ebpf, map_names::REALS)?,
            config: take(ebpf, map_names::CONFIG)?,
            service_stats: take(ebpf, map_names::SERVICE_STATS)?,
            real_stats: take(ebpf, map_names::REAL_STATS)?,
            reasons: take(ebpf, map_names::REASONS)?,
            local_macs: take(ebpf, map_names::LOCAL_MACS)?,
            sync_stats: take(ebpf, map_names::SYNC_STATS)?,
            conn_counts: {
                let map = ebpf
                    .map(map_names::REAL_CONNS)
                    .ok_or_else(|| anyhow!("the XDP object has no map REAL_CONNS"))?;
                let data: &MapData = match map {
                    aya::maps::Map::Array(d) => d,
                    _ => anyhow::bail!("map REAL_CONNS has an unexpected type"),
                };
                ConnCounts::new(data)?
            },
            real_limits: take(ebpf, map_names::REAL_LIMITS)?,
            sched_pos: take(ebpf, map_names::SCHED_POS)?,
            locality: take(ebpf, map_names::LOCALITY)?,
            persistence: take(ebpf, map_names::PERSISTENCE)?,
            templates: slot_table_in(ebpf, map_names::TEMPLATE_TABLE)?,
            real_egress: take(ebpf, map_names::REAL_EGRESS)?,
            nat_sources: take(ebpf, map_names::NAT_SOURCES)?,
            tunnel_src6: take(ebpf, map_names::TUNNEL_SRC6)?,
            flood_guard: take(ebpf, map_names::FLOOD_GUARD)?,
            replies: slot_table_in(ebpf, map_names::NAT_REPLY_INDEX)?,
            service_out: take(ebpf, map_names::SERVICE_OUT)?,
            real_out: take(ebpf, map_names::REAL_OUT)?,
            ifaces: take(ebpf, map_names::IFACES)?,
            tx_ports: take(ebpf, map_names::TX_PORTS)?,
            neigh_misses: take(ebpf, map_names::NEIGH_MISSES)?,
            held: Default::default(),
        })
    }

    /// The reply translation of an LVS/NAT flow, if the datapath has one.
    pub fn nat_reply(&self, reply: &FlowKey) -> Option<NatReply> {
        let entry = self.replies.as_ref()?.get(reply).ok().flatten()?;
        Some(entry.reply)
    }
    /// The connection-table entry of a flow, if any.
    pub fn conn(&self, flow: &FlowKey) -> Option<Conn> {
        self.conns.as_ref()?.get(flow).ok().flatten()
    }

    /// Writes a connection-table entry (tests set one up as a peer's sync would).
    pub fn set_conn(&mut self, flow: &FlowKey, conn: &Conn) -> Result<()> {
        use crate::conntrack::table::ConnTable as _;
        self.conn_table()?.upsert(flow, conn)
    }

    /// The connection counts, mapped (tests set them as if connections were open).
    pub fn conn_counts(&self) -> &ConnCounts {
        &self.conn_counts
    }

    /// The connection table with the LVS/NAT reply index, as sync writes them.
    pub fn conn_table(
        &mut self,
    ) -> Result<
        crate::conntrack::table::MapConns<
            &super::conn_table::SlotTable,
            &super::conn_table::SlotTable<ReplyEntry>,
        >,
    > {
        // The timeouts the datapath applies now (the last configuration written).
        let timeouts = self
            .config
            .get(&0, 0)
            .map(|c| crate::conntrack::IdleTimeouts::of(&c))
            .unwrap_or_default();
        Ok(crate::conntrack::table::MapConns {
            conns: slot_table(&self.conns, map_names::CONN_TABLE)?,
            replies: slot_table(&self.replies, map_names::NAT_REPLY_INDEX)?,
            templates: self.template_table()?,
            timeouts: std::sync::Arc::new(std::sync::Mutex::new(timeouts)),
        })
    }

    /// The persistence templates' table.
    pub fn template_table(&self) -> Result<&super::conn_table::SlotTable> {
        slot_table(&self.templates, map_names::TEMPLATE_TABLE)
    }

    /// The LVS/NAT reply index.
    pub fn reply_table(&self) -> Result<&super::conn_table::SlotTable<ReplyEntry>> {
        slot_table(&self.replies, map_names::NAT_REPLY_INDEX)
    }

    /// Whether the reply index was made for LVS/NAT connections (`nat_max` above 0).
    pub fn translates_replies(&self) -> Result<bool> {
        let buckets = self.reply_table()?.shape().buckets();
        Ok(lb_common::conn_table::translates_replies(buckets))
    }

    /// The connection table's bucket mask and hash seed.
    pub fn conn_shape(&self) -> Result<super::conn_table::Shape> {
        Ok(slot_table(&self.conns, map_names::CONN_TABLE)?.shape())
    }

    /// How many flows the connection table has slots for.
    pub fn conn_capacity(&self) -> Result<u32> {
        Ok(slot_table(&self.conns, map_names::CONN_TABLE)?.capacity())
    }

    /// A service's lookup table as the datapath sees it.
    pub fn table(&self, service_id: u32) -> Result<Vec<u32>> {
        let inner = self.tables.get(&service_id, 0)?;
        inner.iter().map(|v| Ok(v?)).collect()
    }
}

impl MapWriter for Maps {
    fn set_interfaces(&mut self, ifaces: &[(u32, Iface)]) -> Result<()> {
        let stale: Vec<u32> = self
            .ifaces
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| !ifaces.iter().any(|(i, _)| i == k))
            .collect();
        for (index, iface) in ifaces {
            self.tx_ports
                .insert(*index, *index, None, 0)
                .with_context(|| format!("cannot add interface {index} to the device map"))?;
            self.ifaces.insert(*index, *iface, 0)?;
        }
        for k in stale {
            let _ = self.ifaces.remove(&k);
            let _ = self.tx_ports.remove(k);
        }
        Ok(())
    }

    fn take_neigh_misses(&mut self) -> Vec<(Addr, u32)> {
        let misses: Vec<NeighMiss> = self.neigh_misses.keys().filter_map(|k| k.ok()).collect();
        misses
            .into_iter()
            .map(|m| {
                let _ = self.neigh_misses.remove(&m);
                (m.addr, m.ifindex)
            })
            .collect()
    }

    fn set_tunnel_src6(&mut self, addr: Addr) -> Result<()> {
        Ok(self.tunnel_src6.set(0, addr, 0)?)
    }

    fn set_new_flow_limit(&mut self, limit: u32) -> Result<()> {
        // Each CPU's count keeps going; only the limit (and the second it counts in) changes.
        let second = super::clock::ticks_per_second()?;
        let mut guards = self.flood_guard.get(&0, 0)?.to_vec();
        for g in &mut guards {
            g.limit = limit;
            g.second = second;
        }
        Ok(self
            .flood_guard
            .set(0, PerCpuValues::try_from(guards)?, 0)?)
    }

    fn set_config(&mut self, config: &DirectorConfig) -> Result<()> {
        Ok(self.config.set(0, config, 0)?)
    }

    fn set_service(&mut self, key: &ServiceKey, info: &ServiceInfo) -> Result<()> {
        self.services.insert(key, info, 0)?;
        self.services_changed()
    }

    fn set_vip_filter(&mut self, index: u32, on: bool) -> Result<()> {
        Ok(self.vip_filter.set(index, on as u8, 0)?)
    }

    fn remove_service(&mut self, key: &ServiceKey) -> Result<()> {
        self.services.remove(key)?;
        self.services_changed()
    }

    fn set_table(&mut self, service_id: u32, table: &[u32]) -> Result<()> {
        self.set_tables(&[(service_id, table)])
    }

    /// A table of the size the service's current one has (one this writer made) is rewritten
    /// in place, slot by slot, as Katran rewrites its rings: each slot names a real server of the
    /// old table or of the new one, and the service entry's size stays true. Any other table is
    /// filled while nobody sees it and swapped in by an update of the outer map; every update of
    /// an array of maps makes the kernel wait for an RCU grace period (milliseconds), so the new
    /// tables of one change go in together, in one batch: one wait.
    fn set_tables(&mut self, tables: &[(u32, &[u32])]) -> Result<()> {
        let mut fresh = Vec::new();
        for &(id, table) in tables {
            // An empty table (a service without available real servers) still needs an array;
            // the service entry says it has no slots, so the datapath never reads this one.
            let table = if table.is_empty() {
                &[lb_common::sched::NO_REAL][..]
            } else {
                table
            };
            if let Some(held) = self.held.get(&id).filter(|m| m.entries() == table.len()) {
                write_slots(held, table);
                continue;
            }
            let inner = Array::<MapData, u32>::create(table.len() as u32, TABLE_MAP_FLAGS)
                .context("cannot create a lookup table")?;
            let mapped = Mapped::new(inner.map(), table.len(), 4)?;
            write_slots(&mapped, table);
            fresh.push((id, inner, mapped));
        }
        let keys: Vec<u32> = fresh.iter().map(|(id, _, _)| *id).collect();
        let fds: Vec<u32> = fresh
            .iter()
            .map(|(_, inner, _)| inner.map().fd().as_fd().as_raw_fd() as u32)
            .collect();
        if fresh.len() > 1 {
            super::batch::update(self.tables_fd.as_fd(), &keys, &fds)
                .context("cannot swap in the lookup tables")?;
        } else if let Some((id, inner, _)) = fresh.first() {
            self.tables.set(*id, inner, 0)?;
        }
        for (id, _, mapped) in fresh {
            // The outer map holds the table now; the mapping stays for in-place rewrites (up to
            // a bound: every mapping counts against the process's vm.max_map_count).
            if self.held.len() < HELD_TABLES_MAX || self.held.contains_key(&id) {
                self.held.insert(id, mapped);
            }
        }
        Ok(())
    }

    fn set_real(&mut self, id: u32, real: &RealServer) -> Result<()> {
        Ok(self.reals.set(id, real, 0)?)
    }

    fn counters(&self) -> Result<DatapathCounters> {
        let reasons = read_all(&self.reasons)?;
        let unremembered = self
            .flood_guard
            .get(&0, 0)?
            .iter()
            .map(|g| g.unremembered)
            .sum();
        // A datapath pinned by an older version may have fewer slots; newer reasons read as 0.
        debug_assert!(reasons.len() <= lb_common::REASON_SLOTS as usize);
        Ok(DatapathCounters {
            services: read_all(&self.service_stats)?,
            reals: read_all(&self.real_stats)?,
            conns: (0..self.conn_counts.entries() as u32)
                .map(|i| self.conn_counts.get(i))
                .collect(),
            reasons: Reason::ALL
                .iter()
                .map(|&r| match r {
                    // Counted by the new-flow guard itself (packets only).
                    Reason::TxNotRemembered => (
                        r,
                        Counters {
                            packets: unremembered,
                            ..Default::default()
                        },
                    ),
                    _ => (r, reasons.get(r as usize).copied().unwrap_or_default()),
                })
                .collect(),
            services_out: read_all(&self.service_out)?,
            reals_out: read_all(&self.real_out)?,
        })
    }

    fn reset_all_counters(&mut self) -> Result<()> {
        let services: Vec<u32> = (0..entries(&self.service_stats)?).collect();
        let reals: Vec<u32> = (0..entries(&self.real_stats)?).collect();
        self.reset_counters(&services, &reals)?;
        for r in 0..entries(&self.reasons)? {
            zero_per_cpu(&mut self.reasons, r)?;
        }
        let cpus = nr_cpus().map_err(|(_, e)| e)?;
        for i in [SYNC_STAT_EVENTS, SYNC_STAT_LOST] {
            self.sync_stats
                .set(i, PerCpuValues::try_from(vec![0u64; cpus])?, 0)?;
        }
        // tx_not_remembered is the new-flow guard's own count; its limit and the current
        // second's count stay as they are.
        let mut guards = self.flood_guard.get(&0, 0)?.to_vec();
        for g in &mut guards {
            g.unremembered = 0;
        }
        self.flood_guard
            .set(0, PerCpuValues::try_from(guards)?, 0)?;
        Ok(())
    }

    fn service_keys(&self) -> Result<Vec<ServiceKey>> {
        Ok(self.services.keys().collect::<Result<_, _>>()?)
    }

    fn set_local_macs(&mut self, macs: &[([u8; 6], bool)]) -> Result<()> {
        let mut local = LocalMacs::default();
        for (i, (slot, (mac, active))) in local.macs.iter_mut().zip(macs).enumerate() {
            *slot = *mac;
            local.active |= u32::from(*active) << i;
        }
        local.count = macs.len().min(MAX_LOCAL_MACS) as u32;
        Ok(self.local_macs.set(0, local, 0)?)
    }

    fn set_limits(&mut self, id: u32, limits: &RealLimits) -> Result<()> {
        Ok(self.real_limits.set(id, limits, 0)?)
    }

    fn reset_position(&mut self, service_id: u32) -> Result<()> {
        let cpus = nr_cpus().map_err(|(_, e)| e)?;
        Ok(self
            .sched_pos
            .set(service_id, PerCpuValues::try_from(vec![0u64; cpus])?, 0)?)
    }

    /// Each CPU's round-robin position of a service (for `xdplb simulate`).
    fn positions(&self, service_id: u32) -> Result<Vec<u64>> {
        Ok(self
            .sched_pos
            .get(&service_id, 0)?
            .iter()
            .copied()
            .collect())
    }

    fn locality(&self, service_id: u32, addr: Addr) -> Result<Vec<u32>> {
        let key = LocalityKey {
            service: service_id,
            addr,
        };
        Ok(match self.locality.get(&key, 0) {
            Ok(e) => e.members[..(e.count as usize).min(e.members.len())].to_vec(),
            Err(_) => Vec::new(),
        })
    }

    fn set_persistence(
        &mut self,
        service_id: u32,
        persistence: Option<&crate::state::Persistence>,
    ) -> Result<()> {
        let value = match persistence {
            Some(p) => {
                let hz = super::clock::ticks_per_second()?;
                Persistence {
                    timeout: p.timeout.saturating_mul(hz),
                    _pad: 0,
                    mask: p.mask(),
                }
            }
            None => Persistence::default(),
        };
        Ok(self.persistence.set(service_id, value, 0)?)
    }

    fn template(&self, service_id: u32, client: IpAddr) -> Result<Option<(u32, u32)>> {
        let p = self.persistence.get(&service_id, 0)?;
        let key = TemplateKey::of(service_id, &crate::state::addr_of(client), &p.mask);
        let now = super::clock::jiffies_now()?;
        Ok(self
            .template_table()?
            .get(&key.flow_key())?
            .map(|t| (t.real, crate::conntrack::idle(now, t.last_seen)))
            .filter(|(_, idle)| *idle <= p.timeout))
    }

    fn persistent_conns(&self) -> Result<std::collections::HashMap<u32, u64>> {
        let now = super::clock::jiffies_now()?;
        let mut timeouts = std::collections::HashMap::new();
        let mut counts = std::collections::HashMap::new();
        for (_, t) in self.template_table()?.entries()? {
            let timeout = *timeouts
                .entry(t.service)
                .or_insert_with(|| self.persistence.get(&t.service, 0).map_or(0, |p| p.timeout));
            if crate::conntrack::idle(now, t.last_seen) <= timeout {
                *counts.entry(t.real).or_insert(0) += 1;
            }
        }
        Ok(counts)
    }

    fn connections(&self) -> Result<Vec<(FlowKey, Conn)>> {
        slot_table(&self.conns, map_names::CONN_TABLE)?.entries()
    }

    fn release_templates(&mut self, released: &[(u32, u32)]) -> Result<()> {
        let released: std::collections::HashSet<&(u32, u32)> = released.iter().collect();
        let table = self.template_table()?;
        for (key, t) in table.entries()? {
            if released.contains(&(t.service, t.real)) {
                table.remove(&key)?;
            }
        }
        Ok(())
    }

    fn sync_counters(&self) -> Result<(u64, u64)> {
        let get = |i: u32| -> Result<u64> { Ok(self.sync_stats.get(&i, 0)?.iter().sum()) };
        Ok((get(SYNC_STAT_EVENTS)?, get(SYNC_STAT_LOST)?))
    }

    fn reset_counters(&mut self, services: &[u32], reals: &[u32]) -> Result<()> {
        let cpus = nr_cpus().map_err(|(_, e)| e)?;
        for (map, ids) in [
            (&self.service_stats, services),
            (&self.service_out, services),
            (&self.real_stats, reals),
            (&self.real_out, reals),
        ] {
            super::batch::zero_per_cpu::<Counters>(map.map().fd().as_fd(), ids, cpus)?;
        }
        for &r in reals {
            self.conn_counts.zero(r);
        }
        Ok(())
    }

    fn set_real_parts(
        &mut self,
        limits: &[(u32, RealLimits)],
        egress: &[(u32, RealEgress)],
        entries: &[(u32, RealServer)],
    ) -> Result<()> {
        fn split<T: Copy>(v: &[(u32, T)]) -> (Vec<u32>, Vec<T>) {
            v.iter().copied().unzip()
        }
        let (ids, values) = split(limits);
        super::batch::update(self.real_limits.map().fd().as_fd(), &ids, &values)?;
        let (ids, values) = split(egress);
        super::batch::update(self.real_egress.map().fd().as_fd(), &ids, &values)?;
        let (ids, values) = split(entries);
        super::batch::update(self.reals.map().fd().as_fd(), &ids, &values)
    }

    fn set_egress(&mut self, id: u32, egress: &RealEgress) -> Result<()> {
        Ok(self.real_egress.set(id, egress, 0)?)
    }

    fn set_nat_source(&mut self, index: u32, on: bool) -> Result<()> {
        Ok(self.nat_sources.set(index, on as u8, 0)?)
    }
}

/// The maps of the decapsulation program: which inner destinations to open, and its counters.
pub struct DecapMaps {
    vips: HashMap<MapData, Addr, u8>,
    stats: PerCpuArray<MapData, Counters>,
}

impl DecapMaps {
    pub fn take(ebpf: &mut Ebpf) -> Result<Self> {
        Ok(Self {
            vips: take(ebpf, map_names::DECAP_VIPS)?,
            stats: take(ebpf, map_names::DECAP_STATS)?,
        })
    }

    /// Makes `vips` the set of decapsulated destinations (adds the new, removes the gone).
    pub fn set_vips(&mut self, vips: &[std::net::IpAddr]) -> Result<()> {
        let wanted: Vec<Addr> = vips.iter().map(|v| crate::state::addr_of(*v)).collect();
        let present: Vec<Addr> = self.vips.keys().collect::<Result<_, _>>()?;
        for gone in present.iter().filter(|a| !wanted.contains(a)) {
            self.vips.remove(gone)?;
        }
        for new in wanted.iter().filter(|a| !present.contains(a)) {
            self.vips.insert(new, 1, 0)?;
        }
        Ok(())
    }

    /// (decapsulated, passed untouched), summed over CPUs.
    pub fn counters(&self) -> Result<(Counters, Counters)> {
        let all = read_all(&self.stats)?;
        Ok((all[0], all[1]))
    }
}
