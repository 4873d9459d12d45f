//! Keys and values of the datapath's BPF maps.

use bytemuck::{Pod, Zeroable};

/// Services (VIP:port:proto) a director has room for unless started with more
/// (`services_max`): the size the object gives the per-service maps, which the loader changes.
pub const MAX_SERVICES: u32 = 256;
/// Real servers over all services (one entry per service/real-server pair, as IPVS's
/// destinations) a director has room for unless started with more (`reals_max`).
pub const MAX_REALS: u32 = 4096;

/// How many services and real servers a datapath has room for: the size of every map indexed
/// by a service id or a real-server id, set when it is loaded. A running datapath keeps the room
/// it was made with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub services: u32,
    pub reals: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            services: MAX_SERVICES,
            reals: MAX_REALS,
        }
    }
}

impl Limits {
    /// The most services a director can be started with.
    pub const SERVICES_CEILING: u32 = 1 << 16;
    /// The most real servers (over all services).
    pub const REALS_CEILING: u32 = 1 << 20;
}

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_IPIP: u8 = 4;

/// An IP address in 16 bytes: IPv6 as is, IPv4 as the IPv4-mapped IPv6 address (::ffff:a.b.c.d),
/// so IPv6 support needs no change of any map layout.
pub type Addr = [u8; 16];

/// The IPv4-mapped form of an IPv4 address given as its 4 network-order bytes.
#[inline(always)]
pub const fn addr_from_v4(v4: [u8; 4]) -> Addr {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3],
    ]
}

/// Whether an address is an IPv4 one ([`addr_from_v4`]'s IPv4-mapped form).
#[inline(always)]
pub fn is_v4(addr: &Addr) -> bool {
    // Whole words, no slice compare: the BPF target has no memcmp.
    let a = u64::from_ne_bytes([
        addr[0], addr[1], addr[2], addr[3], addr[4], addr[5], addr[6], addr[7],
    ]);
    let b = u32::from_be_bytes([addr[8], addr[9], addr[10], addr[11]]);
    a == 0 && b == 0xffff
}

/// Entries of the VIP prefilter: a packet whose destination's last 16 bits have no VIP is passed
/// after one array read, without the service hash lookup (most of what reaches a director that
/// is not for a service: its own traffic, other hosts').
pub const VIP_FILTER_SIZE: u32 = 1 << 16;

/// The prefilter entry of an address (IPv4 or IPv6: its last 16 bits).
#[inline(always)]
pub const fn vip_filter_index(addr: &Addr) -> u32 {
    ((addr[14] as u32) << 8) | addr[15] as u32
}

/// SERVICES map key: the virtual service a packet is addressed to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct ServiceKey {
    pub vip: Addr,
    /// Destination port in host byte order.
    pub port: u16,
    /// IPPROTO_TCP or IPPROTO_UDP.
    pub proto: u8,
    pub _pad: u8,
}

/// Scheduler identifiers stored in [`ServiceInfo::scheduler`].
pub const SCHED_SH: u8 = 1;
pub const SCHED_MH: u8 = 2;
/// IPVS's schedulers, as ipvsadm(8) defines them: round robin, weighted round robin, least
/// connections, weighted least connections, shortest expected delay, never queue, destination
/// hashing, locality-based least connections (with replication), weighted failover, weighted
/// overflow.
pub const SCHED_RR: u8 = 3;
pub const SCHED_WRR: u8 = 4;
pub const SCHED_LC: u8 = 5;
pub const SCHED_WLC: u8 = 6;
pub const SCHED_SED: u8 = 7;
pub const SCHED_NQ: u8 = 8;
pub const SCHED_DH: u8 = 9;
pub const SCHED_LBLC: u8 = 10;
pub const SCHED_LBLCR: u8 = 11;
pub const SCHED_FO: u8 = 12;
pub const SCHED_OVF: u8 = 13;

/// What the scheduler hashes, [`ServiceInfo::hash`]: the client address only (client affinity),
/// or the whole flow (addresses, ports, protocol).
pub const HASH_SRC: u8 = 1;
pub const HASH_FLOW: u8 = 2;

/// SERVICES map value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct ServiceInfo {
    /// Index of the service in the per-service arrays (lookup table, counters).
    pub id: u32,
    /// Slots in the service's lookup table (TABLES[id]).
    pub table_size: u32,
    /// One of the `SCHED_*` constants.
    pub scheduler: u8,
    /// One of the `HASH_*` constants.
    pub hash: u8,
    /// `SVC_*` flags.
    pub flags: u8,
    pub _pad: u8,
}

/// SERVICE_CACHE value: one (VIP, port, protocol) key's service as a CPU last found it in
/// SERVICES, valid while SERVICES_GEN still holds `gen` (the agent bumps it after every change to
/// SERVICES). The key is kept as words so that comparing it is three loads, not a byte walk.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct CachedService {
    /// First, so that the pointer the datapath hands on is the slot's own (the verifier refuses
    /// an offset added to a pointer not yet checked for null, which the compiler may hoist).
    pub info: ServiceInfo,
    /// `port | proto << 16`; 0 for a slot never filled (no packet has protocol 0 here).
    pub port_proto: u32,
    pub gen: u64,
    /// The VIP's 16 bytes as two little-endian words.
    pub vip: [u64; 2],
}

/// Slots of each CPU's SERVICE_CACHE (a power of two).
pub const SERVICE_CACHE_SLOTS: u32 = 64;

/// [`ServiceInfo::flags`]: persistent (ipvsadm -p): a client's new connections go to the real
/// server its earlier ones went to (a template per client, PERSISTENCE has the settings).
pub const SVC_PERSISTENT: u8 = 1;
/// [`ServiceInfo::flags`]: at least one real server forwards by LVS/NAT, so a new flow may need
/// a reply entry: the datapath starts fetching that entry's bucket before it schedules.
pub const SVC_NAT: u8 = 2;

/// PERSISTENCE array value, by service id. Aligned to 8 (as the map's values are) so the
/// datapath reads the mask as two words ([`TemplateKey::flow_key_of`]).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Persistence {
    /// How long a template outlives its client's last connection, in kernel ticks.
    pub timeout: u32,
    pub _pad: u32,
    /// The client address is masked with this (ipvsadm -M) before it keys the template.
    pub mask: Addr,
}

/// A persistence template's key: a persistent service and a (masked) client address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct TemplateKey {
    pub service: u32,
    pub client: Addr,
}

impl TemplateKey {
    /// The template of `client` for `service`, whose clients are grouped by `mask` (ipvsadm
    /// -M): one rule for the datapath, the agent's lookups and the templates sync writes.
    #[inline(always)]
    pub fn of(service: u32, client: &Addr, mask: &Addr) -> Self {
        Self {
            service,
            client: mask_addr(client, mask),
        }
    }

    /// `Self::of(service, &flow.src, &p.mask).flow_key()`, built a word at a time: the
    /// datapath's way to its template key. Built from the bytes, the mask and the copies took
    /// some 60 instructions a key, three keys a persistent client's SYN.
    #[inline(always)]
    pub fn flow_key_of(service: u32, flow: &FlowKey, p: &Persistence) -> FlowKey {
        let src = crate::conn_table::words(flow);
        // SAFETY: the mask is 16 plain bytes at offset 8 of an 8-aligned struct.
        let mask = unsafe { &*(&raw const p.mask).cast::<[u64; 2]>() };
        // The service id's native bytes first in `dst`, the rest zero (as `flow_key`).
        let id = match cfg!(target_endian = "little") {
            true => service as u64,
            false => (service as u64) << 32,
        };
        bytemuck::cast([src[0] & mask[0], src[1] & mask[1], id, 0, 0])
    }

    /// Its key in the template table, which has the connection table's layout
    /// ([`crate::conn_table`]): the client as the source, the service id in the destination's
    /// first word, no ports, protocol 0 (the entry's [`Conn`] is the template: real server,
    /// service, last use).
    #[inline(always)]
    pub fn flow_key(&self) -> FlowKey {
        let mut dst = [0u8; 16];
        let id = self.service.to_ne_bytes();
        dst[0] = id[0];
        dst[1] = id[1];
        dst[2] = id[2];
        dst[3] = id[3];
        FlowKey {
            src: self.client,
            dst,
            sport: 0,
            dport: 0,
            proto: 0,
            _pad: [0; 3],
        }
    }
}

/// A template of the versions whose template table was a kernel LRU hash
/// ([`map_names::LRU_TEMPLATES`], keyed by [`TemplateKey`]): where the client's connections go,
/// and when one was last seen.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Template {
    pub real: u32,
    pub last_seen: u32,
}

/// Persistence templates the datapath has slots for (four to a bucket; a new client whose
/// bucket is full pushes out its longest unused template).
pub const TEMPLATES_MAX: u32 = 262_144;

/// `addr` masked with `mask`, byte by byte.
#[inline(always)]
pub fn mask_addr(addr: &Addr, mask: &Addr) -> Addr {
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 16 {
        out[i] = addr[i] & mask[i];
        i += 1;
    }
    out
}

/// Forwarding methods stored in [`RealServer::method`]: LVS/DR (rewrite the MACs), LVS/TUN
/// (IPIP encapsulation toward the real server) and LVS/NAT (rewrite the destination address and
/// port; the replies come back through the director, which rewrites their source).
pub const FWD_DR: u8 = 1;
pub const FWD_TUN: u8 = 2;
pub const FWD_NAT: u8 = 3;

/// REAL_EGRESS array value, indexed by real-server id: where frames to the real server leave
/// (0: the interface the packet came in on) and, for LVS/NAT, its port. Apart from
/// [`RealServer`], whose layout a pinned datapath of an earlier version still has.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct RealEgress {
    pub ifindex: u32,
    /// LVS/NAT: the real server's port, host byte order (0: the service's).
    pub port: u16,
    pub _pad: u16,
}

/// The LVS/NAT reply index's value ([`ReplyEntry`]), keyed by the [`FlowKey`] of a reply as the
/// real server sends it (from RIP:RPORT to the client): what its source becomes, and whose
/// counters it counts in.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct NatReply {
    pub vip: Addr,
    /// The service's port as the client sent to it, host byte order.
    pub vport: u16,
    pub _pad: u16,
    pub service: u32,
    pub real: u32,
}

/// NAT_REPLY_INDEX's entry ([`crate::conn_table::ReplySlot`]): a reply's translation, and the
/// kernel's clock (jiffies) when a reply last used it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct ReplyEntry {
    pub reply: NatReply,
    pub last_seen: u32,
}

/// IFACES map value, keyed by ifindex: an interface the director is attached to (or sends out
/// of), its MAC (the source of frames it sends, the destination of frames it acts on) and MTU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Iface {
    pub mac: [u8; 6],
    pub _pad: u16,
    pub mtu: u32,
}

/// NEIGH_MISSES key: a next hop (address, ifindex) an LVS/NAT reply found no neighbour entry
/// for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct NeighMiss {
    pub addr: Addr,
    pub ifindex: u32,
}

/// Most interfaces one director is attached to.
pub const MAX_IFACES: u32 = 64;

/// NAT_PROGS' slots: the LVS/NAT reply path's program, and the ICMP path's.
pub const NAT_PROG_REPLY: u32 = 0;
pub const NAT_PROG_ICMP: u32 = 1;
pub const NAT_PROG_SLOTS: u32 = 2;

/// IPV6_PROGS' slots: the IPv6 pipeline's program, its Packet Too Big answer's, the
/// IPv4-in-IPv6 tunnel's (IPv4 services' IPv6 real servers), and LVS/NAT over IPv6's request,
/// reply and ICMPv6 programs, and the last one's way to the client.
pub const IPV6_PROG_PIPELINE: u32 = 0;
pub const IPV6_PROG_TOO_BIG: u32 = 1;
pub const IPV6_PROG_4IN6: u32 = 2;
pub const IPV6_PROG_NAT: u32 = 3;
pub const IPV6_PROG_NAT_REPLY: u32 = 4;
pub const IPV6_PROG_NAT_ICMP: u32 = 5;
pub const IPV6_PROG_NAT_OUT: u32 = 6;
pub const IPV6_PROG_SLOTS: u32 = 7;

/// IPV4_PROGS' slots: the IPv4 options' checker, and the director's program it hands a
/// checked packet back to.
pub const IPV4_PROG_OPTIONS: u32 = 0;
pub const IPV4_PROG_DIRECTOR: u32 = 1;
pub const IPV4_PROG_SLOTS: u32 = 2;

/// FLOW_HANDOFF value: the flow a pipeline hands a program of its own with its tail call (a
/// program's locals do not survive one): IPv4-in-IPv6 tunnelling, LVS/NAT over IPv6.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct FlowHandoff {
    pub service: u32,
    pub real: u32,
    /// `HANDOFF_*` bits ([`HANDOFF_NEW_FLOW`] alone before the others were added).
    pub new_flow: u32,
}

/// [`FlowHandoff::new_flow`]: the flow is new.
pub const HANDOFF_NEW_FLOW: u32 = 1;
/// LVS/NAT: write the flow's reply entry (a new flow's, or one whose entry was refreshed or
/// whose handshake ended), established ([`HANDOFF_ESTABLISHED`]) or not.
pub const HANDOFF_REPLY: u32 = 2;
/// With [`HANDOFF_REPLY`]: the connection is established (its reply ranks above others').
pub const HANDOFF_ESTABLISHED: u32 = 4;

/// FLOOD_GUARD value (per CPU): the new-flow guard. Above `limit` new flows in a second on a
/// CPU, new flows are still forwarded (scheduled by hash as usual) but no longer remembered in
/// the connection table, so a flood cannot push out the entries of established connections
/// (Katran's answer to the same problem). LVS/NAT flows are always remembered: their replies
/// need the translation.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct FloodGuard {
    /// New flows a CPU remembers per second; 0: no limit. Written by the agent.
    pub limit: u32,
    /// Kernel ticks in a second. Written by the agent with the limit.
    pub second: u32,
    /// The current second's start (kernel ticks), and the flows remembered in it.
    pub start: u32,
    pub count: u32,
    /// New flows forwarded but not remembered, the limit reached.
    pub unremembered: u64,
}

/// [`RealServer::flags`]: the entry describes a configured real server. A table slot that points
/// at an entry without it (a real server being deleted) is treated as "no real server".
pub const REAL_ACTIVE: u8 = 1;
/// [`RealServer::flags`]: the real server fails its health check. Its persistence templates no
/// longer hold (a drained one's do, as in IPVS).
pub const REAL_DOWN: u8 = 2;

/// REALS array value, indexed by real-server id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct RealServer {
    pub addr: Addr,
    /// Ethernet address the frame is sent to: the real server itself for LVS/DR, the next hop
    /// toward it for LVS/TUN.
    pub mac: [u8; 6],
    /// One of the `FWD_*` constants.
    pub method: u8,
    pub flags: u8,
    /// The service this real server belongs to: a connection-table entry is only followed to a
    /// real server of the packet's own service (ids are reused after a delete).
    pub service: u32,
}

/// The connection table's key: one direction of a connection, as the client sent it. Aligned to 8 so the
/// connection table's hash and compare read it as five words ([`crate::conn_table::words`]);
/// 40 bytes either way.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct FlowKey {
    pub src: Addr,
    pub dst: Addr,
    /// Ports in host byte order.
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

impl FlowKey {
    /// LVS/NAT: the key of this (client) flow's replies as the real server at `real`:`port`
    /// sends them (port 0: the port the client sent to, a port-0 service's).
    #[inline(always)]
    pub fn nat_reply(&self, real: &Addr, port: u16) -> FlowKey {
        FlowKey {
            src: *real,
            dst: self.src,
            sport: if port == 0 { self.dport } else { port },
            dport: self.sport,
            proto: self.proto,
            _pad: [0; 3],
        }
    }
}

/// [`Conn::flags`]: a FIN was seen; the entry then ages out after the shorter FIN timeout.
pub const CONN_FIN: u32 = 1;
/// [`Conn::flags`]: the TCP connection was established (an ACK after the SYN, or a flow first
/// seen mid-connection): it counts as active (IPVS's ActiveConn) until its FIN; every other entry
/// (SYN seen only, after a FIN, UDP) counts as inactive (InActConn).
pub const CONN_ESTABLISHED: u32 = 2;

/// REAL_CONNS array value, indexed by real-server id: its connections as IPVS counts them. The
/// datapath adds and subtracts atomically as flows open, establish and close; the agent corrects
/// the counts against the connection table itself (entries that timed out or were evicted go
/// without a packet to tell). Memory-mappable, so the agent corrects them in place.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct RealConns {
    pub active: i64,
    pub inactive: i64,
    /// 1 while the real server is over its upper connection threshold, until it is back under
    /// the lower one (IPVS's overloaded flag); written by the datapath as it schedules.
    pub overloaded: i64,
}

/// BPF_F_MMAPABLE.
pub const MAP_MMAPABLE: u32 = 1 << 10;

/// Map flag of the LRU maps written on new flows (connections, templates, localities): each CPU
/// keeps its own LRU lists, so an insert takes no lock shared by all CPUs (a common LRU's
/// costs about a microsecond per insert once the map is full).
pub const BPF_F_NO_COMMON_LRU: u32 = 1 << 1;

/// The connection table's value: where an established flow goes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Conn {
    pub real: u32,
    pub service: u32,
    /// Kernel clock ticks (jiffies) at the last refresh.
    pub last_seen: u32,
    pub flags: u32,
}

impl Conn {
    /// How long this entry of `flow` may stay idle (ticks), by protocol and state: UDP's timeout,
    /// TCP's after a FIN, or established TCP's. One rule for the datapath and the agent.
    #[inline(always)]
    pub fn idle_timeout(&self, flow: &FlowKey, tcp: u32, tcp_fin: u32, udp: u32) -> u32 {
        if flow.proto == IPPROTO_UDP {
            udp
        } else if self.flags & CONN_FIN != 0 {
            tcp_fin
        } else {
            tcp
        }
    }
}

/// Default size of the connection table (flows).
pub const DEFAULT_CONN_MAX: u32 = 1_000_000;
/// The new-flow guard's default ([`FloodGuard`]): the connection table may turn over no faster
/// than once in this many seconds, all CPUs at their limit together.
pub const NEW_FLOW_TURNOVER_SECS: u32 = 8;

/// The new-flow guard's default limit (new flows remembered per second per CPU) for a table
/// of `conn_max` flows on `cpus` CPUs: 62,500 for the default 1,000,000 on 2 CPUs.
pub fn default_new_flow_limit(conn_max: u32, cpus: u32) -> u32 {
    (conn_max / cpus.max(1) / NEW_FLOW_TURNOVER_SECS).max(1)
}

/// Flag of the lookup-table inner maps (and of their template in the datapath): inner arrays of
/// different sizes may stand in the same outer map.
pub const BPF_F_INNER_MAP: u32 = 1 << 12;

/// Flags of every lookup table (and of the datapath's template for them): any size
/// (BPF_F_INNER_MAP), and memory-mappable (BPF_F_MMAPABLE) so user space fills 65537 slots with
/// one copy instead of one system call each.
pub const TABLE_MAP_FLAGS: u32 = BPF_F_INNER_MAP | MAP_MMAPABLE;

/// REAL_LIMITS array value, indexed by real-server id: what the schedulers that choose by load
/// need besides the counts.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct RealLimits {
    /// The weight new flows are scheduled with (0 while down or drained).
    pub weight: u32,
    /// Connection thresholds (ipvsadm -x, -y): 0 for none.
    pub upper: u32,
    pub lower: u32,
    pub _pad: u32,
}

/// LOCALITY map key (`lblc`, `lblcr`): a service and a destination address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct LocalityKey {
    pub service: u32,
    pub addr: Addr,
}

/// Most real servers an `lblcr` destination's set holds.
pub const LOCALITY_SET: usize = 8;

/// LOCALITY map value: the real servers a destination is served by (`lblc`: one; `lblcr`: a
/// set, grown when its least loaded member is overloaded).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct LocalityEntry {
    pub members: [u32; LOCALITY_SET],
    pub count: u32,
}

/// Destinations the locality map remembers (least recently used ones are forgotten).
pub const LOCALITY_MAX: u32 = 65536;

/// Counters kept per CPU, per service and per real server.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Counters {
    pub packets: u64,
    pub bytes: u64,
    /// New flows: connection-table entries created.
    pub conns: u64,
}

impl Counters {
    pub fn add(&mut self, other: &Counters) {
        self.packets += other.packets;
        self.bytes += other.bytes;
        self.conns += other.conns;
    }
}

/// Map names, as declared in the datapath (`#[map]` takes the static's name).
pub mod map_names {
    pub const SERVICES: &str = "SERVICES";
    /// Bumped by the agent after every change to SERVICES: the datapath's per-CPU cache of it
    /// (SERVICE_CACHE) holds only entries read under the current value.
    pub const SERVICES_GEN: &str = "SERVICES_GEN";
    pub const SERVICE_CACHE: &str = "SERVICE_CACHE";
    pub const VIP_FILTER: &str = "VIP_FILTER";
    /// Array of maps: service id -> that service's lookup table (slot -> real server id).
    pub const TABLES: &str = "TABLES";
    /// The connection table ([`crate::conn_table`]).
    pub const CONN_TABLE: &str = "CONN_TABLE";
    /// The connection table of versions before it, a kernel LRU hash (FlowKey -> Conn): an
    /// agent that finds one pinned moves its entries into CONN_TABLE.
    pub const LRU_CONNS: &str = "CONNS";
    pub const REALS: &str = "REALS";
    pub const CONFIG: &str = "CONFIG";
    pub const SERVICE_STATS: &str = "SERVICE_STATS";
    pub const REAL_STATS: &str = "REAL_STATS";
    pub const REASONS: &str = "REASONS";
    /// Each real server's active and inactive connections ([`RealConns`]).
    pub const REAL_CONNS: &str = "REAL_CONNS";
    /// Per CPU: the new-flow guard ([`super::FloodGuard`]).
    pub const FLOOD_GUARD: &str = "FLOOD_GUARD";
    /// Each real server's weight and thresholds, for the schedulers ([`RealLimits`]).
    pub const REAL_LIMITS: &str = "REAL_LIMITS";
    /// Per service: the round-robin position of `rr` and `wrr`.
    pub const SCHED_POS: &str = "SCHED_POS";
    /// `lblc` and `lblcr`: destination address -> its real servers.
    pub const LOCALITY: &str = "LOCALITY";
    /// Persistent services: their settings by service id, and the templates (a table of
    /// [`crate::conn_table`]'s layout, [`super::TemplateKey::flow_key`] -> Conn).
    pub const PERSISTENCE: &str = "PERSISTENCE";
    pub const TEMPLATE_TABLE: &str = "TEMPLATE_TABLE";
    /// The templates of versions before it, a kernel LRU hash (TemplateKey -> Template): an
    /// agent that finds one pinned moves its entries into TEMPLATE_TABLE.
    pub const LRU_TEMPLATES: &str = "TEMPLATES";
    /// LVS/NAT: each real server's egress interface and port ([`RealEgress`]); the replies'
    /// index (a table of [`crate::conn_table`]'s layout, reply flow -> [`ReplyEntry`]); the
    /// prefilter of real-server source addresses (last 16 bits, as VIP_FILTER); outbound
    /// counters per service and real server.
    pub const REAL_EGRESS: &str = "REAL_EGRESS";
    pub const NAT_REPLY_INDEX: &str = "NAT_REPLY_INDEX";
    /// The reply index of the versions before it: a table of the same layout whose replies were
    /// placed by their whole flow, not by the client's side ([`crate::conn_table::reply_place`]).
    /// An agent that finds one pinned moves its entries into NAT_REPLY_INDEX.
    pub const PLACED_NAT_REPLIES: &str = "NAT_REPLY_TABLE";
    /// The reply index of versions before that, a kernel LRU hash (FlowKey -> NatReply): an
    /// agent that finds one pinned moves its entries into NAT_REPLY_INDEX.
    pub const LRU_NAT_REPLIES: &str = "NAT_REPLIES";
    pub const NAT_SOURCES: &str = "NAT_SOURCES";
    pub const SERVICE_OUT: &str = "SERVICE_OUT";
    pub const REAL_OUT: &str = "REAL_OUT";
    /// The interfaces the director is attached to ([`Iface`]), and the device map frames are
    /// redirected through to another of them.
    pub const IFACES: &str = "IFACES";
    pub const TX_PORTS: &str = "TX_PORTS";
    /// Next hops a NAT reply found no neighbour entry for: the agent has the kernel resolve them.
    pub const NEIGH_MISSES: &str = "NEIGH_MISSES";
    /// The program array [`super::program_names::NAT_REPLY`] and
    /// [`super::program_names::NAT_ICMP`] are tail-called through.
    pub const NAT_PROGS: &str = "NAT_PROGS";
    /// The outer source address of IPv6 LVS/TUN packets (index 0).
    pub const TUNNEL_SRC6: &str = "TUNNEL_SRC6";
    pub const FLOW_HANDOFF: &str = "FLOW_HANDOFF";
    /// The program array [`super::program_names::IPV6`] is tail-called through.
    pub const IPV6_PROGS: &str = "IPV6_PROGS";
    /// The program array [`super::program_names::IP_OPTIONS`] is tail-called through, and the
    /// director's program called back from it; the per-CPU mark of the packet it checked.
    pub const IPV4_PROGS: &str = "IPV4_PROGS";
    pub const OPTIONS_CHECKED: &str = "OPTIONS_CHECKED";
    /// MAC addresses of devices stacked on the interface (macvlan, such as keepalived's
    /// `use_vmac`) whose frames the director acts on besides the interface's own.
    pub const LOCAL_MACS: &str = "LOCAL_MACS";
    /// Connection synchronisation: the flow events the datapath hands the agent (a ring of its
    /// own per CPU, [`super::SyncEvent`]s in one memory-mapped array, with each ring's
    /// [`super::SyncCursor`]), and its per-CPU counters (events written, events lost because the
    /// ring was full).
    pub const SYNC_RING: &str = "SYNC_RING";
    pub const SYNC_CURSORS: &str = "SYNC_CURSORS";
    pub const SYNC_STATS: &str = "SYNC_STATS";
    /// The ring buffer (BPF_MAP_TYPE_RINGBUF) older versions wrote their events into: an agent
    /// adopting such a datapath reads what is left in it once; `--compare` reads it from older
    /// objects.
    pub const SYNC_EVENTS: &str = "SYNC_EVENTS";
    /// Real-server side (`xdplb decap`): the addresses whose IPIP packets are decapsulated, and
    /// counters (index 0: decapsulated, 1: passed untouched).
    pub const DECAP_VIPS: &str = "DECAP_VIPS";
    pub const DECAP_STATS: &str = "DECAP_STATS";
    /// Benchmark wrapper: the frame to restore, and the program it tail-calls (index 0).
    pub const BENCH_FRAME: &str = "BENCH_FRAME";
    pub const BENCH_PROGS: &str = "BENCH_PROGS";
    pub const BENCH_SEQ: &str = "BENCH_SEQ";
    /// Benchmarks only: the MAC addresses the bare forwarder writes (destination, source).
    pub const BENCH_FWD: &str = "BENCH_FWD";
    /// Packet generator (`xdplb pktgen`): its settings, its per-CPU flow walk, and the per-CPU
    /// counters of the counting sink.
    pub const PKTGEN_CONFIG: &str = "PKTGEN_CONFIG";
    pub const PKTGEN_STATE: &str = "PKTGEN_STATE";
    pub const SINK_STATS: &str = "SINK_STATS";
}

/// Program names in the object file.
pub mod program_names {
    /// The director's program.
    pub const LB: &str = "xdplb";
    /// The director's LVS/NAT reply path, tail-called by [`LB`] through NAT_PROGS (a program of
    /// its own, so it has a stack of its own).
    pub const NAT_REPLY: &str = "xdplb_nat_reply";
    /// The director's LVS/NAT ICMP path (errors about NAT flows), tail-called the same way.
    pub const NAT_ICMP: &str = "xdplb_nat_icmp";
    /// The director's IPv6 pipeline, tail-called by [`LB`] through IPV6_PROGS.
    pub const IPV6: &str = "xdplb_v6";
    /// ICMPv6 Packet Too Big for tunnelled IPv6 packets that no longer fit, tail-called by
    /// [`IPV6`] through IPV6_PROGS.
    pub const IPV6_TOO_BIG: &str = "xdplb_v6_too_big";
    /// IPv4-in-IPv6 tunnelling to an IPv4 service's IPv6 real servers, tail-called by [`LB`]
    /// through IPV6_PROGS.
    pub const TUN_4IN6: &str = "xdplb_4in6";
    /// LVS/NAT over IPv6: the request's rewrite, tail-called by [`IPV6`] through IPV6_PROGS.
    pub const NAT6: &str = "xdplb_nat6";
    /// LVS/NAT over IPv6: the reply path, tail-called by [`IPV6`] through IPV6_PROGS.
    pub const NAT6_REPLY: &str = "xdplb_nat6_reply";
    /// LVS/NAT over IPv6: ICMPv6 errors about NAT flows, tail-called by [`IPV6`] through
    /// IPV6_PROGS.
    pub const NAT6_ICMP: &str = "xdplb_nat6_icmp";
    /// LVS/NAT over IPv6: a translated ICMPv6 error on its way to the client, tail-called by
    /// [`NAT6_ICMP`] through IPV6_PROGS.
    pub const NAT6_OUT: &str = "xdplb_nat6_out";
    /// The IPv4 options of a packet for a service, checked by a program of their own,
    /// tail-called by [`LB`], [`NAT_REPLY`] and [`NAT_ICMP`] through IPV4_PROGS; it calls
    /// [`LB`] back with the packet marked.
    pub const IP_OPTIONS: &str = "xdplb_ip_options";
    /// Passes everything: for veth peers that must have an XDP program to receive XDP_TX frames.
    pub const PASS: &str = "xdp_pass";
    /// Bounces everything back: the bare XDP_TX baseline of the benchmarks.
    pub const TX: &str = "xdp_tx";
    /// Benchmarks only: the kernel's FIB lookup toward a client, alone.
    pub const FIB: &str = "xdp_fib";
    /// Real-server side of LVS/TUN: strips the outer header of IPIP packets for local VIPs.
    pub const DECAP: &str = "xdp_decap";
    /// Benchmarks only: restores a template frame, then tail-calls the program under test.
    pub const BENCH: &str = "xdp_bench";
    /// Benchmarks only: the least a forwarder does (two MAC addresses, XDP_TX), the director's
    /// baseline in the throughput benchmark.
    pub const FWD: &str = "xdp_fwd";
    /// Packet generator, run in BPF_PROG_TEST_RUN live-frames mode: rewrites the source of each
    /// frame and sends it with XDP_TX.
    pub const PKTGEN: &str = "xdp_pktgen";
    /// Counting sink: counts packets and bytes per CPU, then drops (or passes) them.
    pub const COUNT: &str = "xdp_count";
}

/// Director-wide settings, CONFIG array index 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct DirectorConfig {
    /// The attached interface's MAC: the source MAC of every forwarded frame, and the one
    /// destination MAC (with [`LocalMacs`]) whose frames the director acts on.
    pub mac: [u8; 6],
    /// Connection synchronisation: 0 when off; otherwise a flow that stays active is announced
    /// to the peers again each time its refreshed timestamp crosses a multiple of
    /// `1 << sync_shift` ticks (a quarter of the shortest timeout, so a peer's copy never ages
    /// out while the flow lives).
    pub sync_shift: u8,
    pub _pad: u8,
    /// Idle timeouts of connection-table entries in kernel clock ticks (jiffies, which the
    /// datapath reads for almost nothing): established TCP, TCP after a FIN, UDP.
    pub tcp_timeout: u32,
    pub tcp_fin_timeout: u32,
    pub udp_timeout: u32,
    /// MTU of the attached interface: an encapsulated packet must fit.
    pub mtu: u32,
    /// Source address of the outer header of LVS/TUN packets.
    pub tunnel_src: Addr,
    /// How stale (in ticks) an entry's timestamp may get before a packet refreshes it: keeps
    /// writes off the established path.
    pub refresh: u32,
}

impl DirectorConfig {
    /// Seconds between timestamp refreshes of an established flow.
    pub const REFRESH_SECS: u32 = 4;
    /// Defaults as IPVS has them (ipvsadm --set 900 120 300), in seconds.
    pub const DEFAULT_TCP_TIMEOUT: u32 = 900;
    pub const DEFAULT_TCP_FIN_TIMEOUT: u32 = 120;
    pub const DEFAULT_UDP_TIMEOUT: u32 = 300;
}

/// Why a packet was passed to the kernel or dropped instead of forwarded; index of the REASONS
/// per-CPU array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Not IPv4 (ARP, IPv6, ...).
    PassNotIpv4 = 0,
    /// IPv4, but neither TCP nor UDP.
    PassNotTcpUdp = 1,
    /// No service for this destination address, port and protocol.
    PassNoService = 2,
    /// An IPv4 fragment other than the first (it carries no ports).
    PassFragment = 3,
    /// Too short or too malformed to read the headers that classify it; the kernel deals with it.
    PassUnparsed = 4,
    /// For a service, but its lengths are inconsistent: never forwarded damaged.
    DropMalformed = 5,
    /// For a service that has no usable real server.
    DropNoReal = 6,
    /// Too big to encapsulate with DF set: answered with ICMP "fragmentation needed".
    TxFragNeeded = 7,
    /// Too big to encapsulate, DF clear: dropped (XDP cannot fragment).
    DropTooBig = 8,
    /// The frame could not be grown or shrunk (no headroom).
    DropNoRoom = 9,
    /// Addressed to a MAC address this host does not own on the link (a frame a switch flooded
    /// to every port): the kernel drops it as PACKET_OTHERHOST; a backup director must never
    /// forward what the master forwards.
    PassOtherHost = 10,
    /// For a service, but addressed to a stacked device that holds no address (keepalived's
    /// `use_vmac` interface on a backup director, or on one that became master a moment ago):
    /// the kernel would drop it too, and must never answer it with a RST.
    DropStandby = 11,
    /// LVS/NAT: a reply (or an ICMP error about a NAT flow) whose next hop has no neighbour entry
    /// yet: dropped, and the agent has the kernel resolve it for the retransmission.
    DropNoNeigh = 12,
    /// LVS/NAT: a packet for a NAT flow with its TTL run out: the kernel answers it.
    PassTtl = 13,
    /// LVS/NAT: a reply (or an ICMP error about a NAT flow) with no route to its client out of
    /// an interface the director is attached to: dropped, never leaked with the real server's
    /// address.
    DropNoRoute = 14,
    /// For a service, but the IPv4 header checksum is wrong: the kernel would have dropped it
    /// before IPVS saw it.
    DropBadChecksum = 15,
    /// For a service, from an address no client can have (the kernel's martian sources):
    /// IPv4 0/8, 127/8, multicast, broadcast or the VIP itself; IPv6 ::, ::1, multicast or
    /// IPv4-mapped.
    DropBadSource = 16,
    /// For a service, with a TTL (hop limit) of 0.
    DropTtlZero = 17,
    /// A new flow forwarded but not remembered in the connection table: its CPU reached the
    /// new-flow guard's rate (a flood). Counted in FLOOD_GUARD (per CPU), not in REASONS.
    TxNotRemembered = 18,
    /// For a service, with IPv4 options the kernel would refuse: malformed (as
    /// ip_options_compile checks them) or a source route (refused unless accept_source_route).
    DropBadOptions = 19,
}

pub const REASON_COUNT: u32 = 20;
/// Entries of the REASONS map: room for reasons added later, so a datapath pinned by one
/// version is adopted by the next without resizing it.
pub const REASON_SLOTS: u32 = 32;

impl Reason {
    pub const ALL: [Reason; REASON_COUNT as usize] = [
        Reason::PassNotIpv4,
        Reason::PassNotTcpUdp,
        Reason::PassNoService,
        Reason::PassFragment,
        Reason::PassUnparsed,
        Reason::DropMalformed,
        Reason::DropNoReal,
        Reason::TxFragNeeded,
        Reason::DropTooBig,
        Reason::DropNoRoom,
        Reason::PassOtherHost,
        Reason::DropStandby,
        Reason::DropNoNeigh,
        Reason::PassTtl,
        Reason::DropNoRoute,
        Reason::DropBadChecksum,
        Reason::DropBadSource,
        Reason::DropTtlZero,
        Reason::TxNotRemembered,
        Reason::DropBadOptions,
    ];

    /// Stable snake_case name for CLI, JSON and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::PassNotIpv4 => "pass_not_ipv4",
            Reason::PassNotTcpUdp => "pass_not_tcp_udp",
            Reason::PassNoService => "pass_no_service",
            Reason::PassFragment => "pass_fragment",
            Reason::PassUnparsed => "pass_unparsed",
            Reason::DropMalformed => "drop_malformed",
            Reason::DropNoReal => "drop_no_real",
            Reason::TxFragNeeded => "tx_frag_needed",
            Reason::DropTooBig => "drop_too_big",
            Reason::DropNoRoom => "drop_no_room",
            Reason::PassOtherHost => "pass_other_host",
            Reason::DropStandby => "drop_standby",
            Reason::DropNoNeigh => "drop_no_neigh",
            Reason::PassTtl => "pass_ttl",
            Reason::DropNoRoute => "drop_no_route",
            Reason::DropBadChecksum => "drop_bad_checksum",
            Reason::DropBadSource => "drop_bad_source",
            Reason::DropTtlZero => "drop_ttl_zero",
            Reason::TxNotRemembered => "tx_not_remembered",
            Reason::DropBadOptions => "drop_bad_options",
        }
    }
}

/// Most stacked devices' MAC addresses [`LocalMacs`] holds.
pub const MAX_LOCAL_MACS: usize = 8;

/// LOCAL_MACS array value (index 0): destination MACs besides [`DirectorConfig::mac`] that
/// belong to this host on the attached link: devices stacked on the interface that are up.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct LocalMacs {
    pub macs: [[u8; 6]; MAX_LOCAL_MACS],
    /// How many of `macs` are in use.
    pub count: u32,
    /// Bit i: device i holds an IPv4 address. keepalived's `use_vmac` device is up on the
    /// master and the backups alike, but holds the VIP on the master only: frames for a device
    /// without an address are never forwarded, nor handed to a kernel that might answer a RST.
    pub active: u32,
}

/// [`SyncEvent::kind`]: a flow was bound to a real server (new, or announced again while it
/// lives, or its FIN was seen: see the flags).
pub const SYNC_BIND: u8 = 1;
/// [`SyncEvent::kind`]: a flow was closed by a RST; peers forget it.
pub const SYNC_CLOSE: u8 = 2;

/// The record the datapath writes for the agent's connection synchronisation, only on new
/// flows, a flow's first FIN, a RST, and a periodic refresh of a live flow (never per packet).
/// 64 bytes: one cache line of [`map_names::SYNC_RING`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct SyncEvent {
    pub flow: FlowKey,
    pub service: u32,
    pub real: u32,
    /// `SYNC_BIND` or `SYNC_CLOSE`.
    pub kind: u8,
    pub _pad: [u8; 3],
    /// [`Conn::flags`] at the time (CONN_FIN).
    pub flags: u32,
    /// When it happened, for the sync delay: the kernel's clock ticks (jiffies, which the
    /// datapath reads for free, where bpf_ktime_get_ns() is a call that cost the event about 40
    /// ns); the agent narrows it down to when it read the event. bpf_ktime_get_ns() in the ring
    /// buffer of older versions.
    pub time: u64,
}

/// One CPU's ring in [`map_names::SYNC_RING`]: its slots are `cpu * (mask + 1) ..` and the event
/// number `n` is in slot `n & mask` of them. Only that CPU's datapath writes `head` (events
/// written, ever: the next one's number), only the agent `tail` (events read), each in its own
/// cache line so the two sides do not take it from each other. A CPU's XDP programs never run
/// two at a time, so a ring has one writer and needs no lock: the event is written, then
/// `head` (in that order on x86, whose stores are not reordered); the agent reads `head`, the
/// events below it, then moves `tail`, and the datapath writes only where `head - tail` leaves
/// room. A full ring loses the event, counted; the datapath never waits.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct SyncCursor {
    pub head: u64,
    /// Slots per CPU - 1 (a power of two less one), written when the map is made.
    pub mask: u64,
    pub _pad: [u64; 6],
    pub tail: u64,
    pub _pad2: [u64; 7],
}

/// Events the rings hold in all, spread over the CPUs: 8 MiB of events, some 130,000, a couple
/// of seconds of new flows at the rates one director binds them (the agent reads them every
/// millisecond).
pub const SYNC_RING_EVENTS: u32 = 1 << 17;

/// Slots of each CPU's ring, for `cpus` CPUs: [`SYNC_RING_EVENTS`] shared out, at most 65,536
/// (the flows one CPU binds in well over the agent's read interval) and at least 8,192.
pub fn sync_ring_slots(cpus: u32) -> u32 {
    (SYNC_RING_EVENTS / cpus.max(1))
        .next_power_of_two()
        .clamp(1 << 13, 1 << 16)
}

/// SYNC_STATS indices.
pub const SYNC_STAT_EVENTS: u32 = 0;
pub const SYNC_STAT_LOST: u32 = 1;

#[cfg(feature = "user")]
mod pod {
    unsafe impl aya::Pod for super::LocalMacs {}
    unsafe impl aya::Pod for super::FloodGuard {}
    unsafe impl aya::Pod for super::RealEgress {}
    unsafe impl aya::Pod for super::NatReply {}
    unsafe impl aya::Pod for super::ReplyEntry {}
    unsafe impl aya::Pod for super::Iface {}
    unsafe impl aya::Pod for super::NeighMiss {}
    unsafe impl aya::Pod for super::RealConns {}
    unsafe impl aya::Pod for super::RealLimits {}
    unsafe impl aya::Pod for super::LocalityKey {}
    unsafe impl aya::Pod for super::Persistence {}
    unsafe impl aya::Pod for super::TemplateKey {}
    unsafe impl aya::Pod for super::Template {}
    unsafe impl aya::Pod for super::LocalityEntry {}
    unsafe impl aya::Pod for super::SyncEvent {}
    unsafe impl aya::Pod for super::SyncCursor {}
    // SAFETY: all of these are #[repr(C)] plain data without padding holes (bytemuck::Pod).
    unsafe impl aya::Pod for super::ServiceKey {}
    unsafe impl aya::Pod for super::ServiceInfo {}
    unsafe impl aya::Pod for super::CachedService {}
    unsafe impl aya::Pod for super::RealServer {}
    unsafe impl aya::Pod for super::Counters {}
    unsafe impl aya::Pod for super::DirectorConfig {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::Conn {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::XorShift64;

    /// The datapath's word-wise template key is the one the agent and sync build from bytes,
    /// for any client, mask (contiguous or not) and service, and whatever the flow's other
    /// fields hold.
    #[test]
    fn template_key_by_words_is_by_bytes() {
        let mut rng = XorShift64::new(0x7e3a_11c5);
        let mut bytes = |out: &mut [u8]| out.iter_mut().for_each(|b| *b = rng.next() as u8);
        for round in 0..10_000 {
            let (mut flow, mut p, mut id) = (FlowKey::default(), Persistence::default(), [0u8; 4]);
            bytes(bytemuck::bytes_of_mut(&mut flow));
            bytes(bytemuck::bytes_of_mut(&mut p));
            bytes(&mut id);
            if round % 2 == 0 {
                let prefix = id[0] as u32 % 129;
                p.mask = (u128::MAX.checked_shl(128 - prefix).unwrap_or(0)).to_be_bytes();
            }
            let service = u32::from_ne_bytes(id);
            let want = TemplateKey::of(service, &flow.src, &p.mask).flow_key();
            assert_eq!(
                TemplateKey::flow_key_of(service, &flow, &p),
                want,
                "{flow:?} {p:?}"
            );
        }
    }

    /// An event fills one cache line, and a ring's two cursors each have their own: the
    /// datapath writing `head` and the agent `tail` never take a line from each other.
    #[test]
    fn sync_ring_layout() {
        assert_eq!(core::mem::size_of::<SyncEvent>(), 64);
        assert_eq!(core::mem::size_of::<SyncCursor>(), 128);
        assert_eq!(core::mem::offset_of!(SyncCursor, head) / 64, 0);
        assert_eq!(core::mem::offset_of!(SyncCursor, mask) / 64, 0);
        assert_eq!(core::mem::offset_of!(SyncCursor, tail), 64);
    }

    /// Each CPU's ring is a power of two of slots, within its bounds, and together they hold
    /// the events asked for while the CPUs are few enough for the floor not to matter.
    #[test]
    fn sync_ring_slots_per_cpu() {
        for cpus in [1, 2, 3, 4, 6, 16, 64, 256, 1024] {
            let slots = sync_ring_slots(cpus);
            assert!(slots.is_power_of_two(), "{cpus} CPUs: {slots}");
            assert!((1 << 13..=1 << 16).contains(&slots), "{cpus} CPUs: {slots}");
            if (2..=16).contains(&cpus) {
                assert!(slots * cpus >= SYNC_RING_EVENTS, "{cpus} CPUs: {slots}");
                assert!(slots * cpus < 2 * SYNC_RING_EVENTS, "{cpus} CPUs: {slots}");
            }
        }
        assert_eq!(sync_ring_slots(2), 1 << 16);
        assert_eq!(sync_ring_slots(0), 1 << 16);
    }
}
