//! Keys and values of the datapath's BPF maps.

use bytemuck::{Pod, Zeroable};

/// Most services (VIP:port:proto) one director serves; also the size of the per-service arrays.
pub const MAX_SERVICES: u32 = 256;
/// Most real servers over all services (one entry per service/real-server pair, as IPVS's
/// destinations).
pub const MAX_REALS: u32 = 4096;

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
    pub _pad: [u8; 2],
}

/// Forwarding methods stored in [`RealServer::method`]: LVS/DR (rewrite the MACs) and LVS/TUN
/// (IPIP encapsulation toward the real server).
pub const FWD_DR: u8 = 1;
pub const FWD_TUN: u8 = 2;

/// [`RealServer::flags`]: the entry describes a configured real server. A table slot that points
/// at an entry without it (a real server being deleted) is treated as "no real server".
pub const REAL_ACTIVE: u8 = 1;

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

/// CONNS map key: one direction of a connection, as the client sent it.
#[repr(C)]
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

/// [`Conn::flags`]: a FIN was seen; the entry then ages out after the shorter FIN timeout.
pub const CONN_FIN: u32 = 1;

/// CONNS map value: where an established flow goes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Conn {
    pub real: u32,
    pub service: u32,
    /// Kernel clock ticks (jiffies) at the last refresh.
    pub last_seen: u32,
    pub flags: u32,
}

/// Default size of the connection table (flows).
pub const DEFAULT_CONN_MAX: u32 = 1_000_000;

/// Flag of the lookup-table inner maps (and of their template in the datapath): inner arrays of
/// different sizes may stand in the same outer map.
pub const BPF_F_INNER_MAP: u32 = 1 << 12;

/// Flags of every lookup table (and of the datapath's template for them): any size
/// (BPF_F_INNER_MAP), and memory-mappable (BPF_F_MMAPABLE) so user space fills 65537 slots with
/// one copy instead of one system call each.
pub const TABLE_MAP_FLAGS: u32 = BPF_F_INNER_MAP | (1 << 10);

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

/// Longest frame the benchmark wrapper can restore.
pub const BENCH_FRAME_MAX: usize = 256;

/// BENCH_FRAME value: the frame the benchmark wrapper (`xdp_bench`) restores before every
/// iteration of BPF_PROG_TEST_RUN, so the program under test sees the same input each time even
/// when it changes the packet (encapsulation) or must see a new flow (connection-table insert).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct BenchFrame {
    pub len: u32,
    /// Where to write a 32-bit per-iteration counter (e.g. the source address) so every iteration
    /// is a new flow; `u32::MAX` for none.
    pub vary_at: u32,
    pub bytes: [u8; BENCH_FRAME_MAX],
}

/// Map names, as declared in the datapath (`#[map]` takes the static's name).
pub mod map_names {
    pub const SERVICES: &str = "SERVICES";
    pub const VIP_FILTER: &str = "VIP_FILTER";
    /// Array of maps: service id -> that service's lookup table (slot -> real server id).
    pub const TABLES: &str = "TABLES";
    pub const CONNS: &str = "CONNS";
    pub const REALS: &str = "REALS";
    pub const CONFIG: &str = "CONFIG";
    pub const SERVICE_STATS: &str = "SERVICE_STATS";
    pub const REAL_STATS: &str = "REAL_STATS";
    pub const REASONS: &str = "REASONS";
    /// Real-server side (`xdplb decap`): the addresses whose IPIP packets are decapsulated, and
    /// counters (index 0: decapsulated, 1: passed untouched).
    pub const DECAP_VIPS: &str = "DECAP_VIPS";
    pub const DECAP_STATS: &str = "DECAP_STATS";
    /// Benchmark wrapper: the frame to restore, and the program it tail-calls (index 0).
    pub const BENCH_FRAME: &str = "BENCH_FRAME";
    pub const BENCH_PROGS: &str = "BENCH_PROGS";
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
    /// Passes everything: for veth peers that must have an XDP program to receive XDP_TX frames.
    pub const PASS: &str = "xdp_pass";
    /// Bounces everything back: the bare XDP_TX baseline of the benchmarks.
    pub const TX: &str = "xdp_tx";
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
    /// The attached interface's MAC: the source MAC of every forwarded frame.
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
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
}

pub const REASON_COUNT: u32 = 10;

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
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)] plain data without padding holes (bytemuck::Pod).
    unsafe impl aya::Pod for super::ServiceKey {}
    unsafe impl aya::Pod for super::ServiceInfo {}
    unsafe impl aya::Pod for super::RealServer {}
    unsafe impl aya::Pod for super::Counters {}
    unsafe impl aya::Pod for super::DirectorConfig {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::Conn {}
    unsafe impl aya::Pod for super::BenchFrame {}
}

// ---- Packet generator (`xdplb pktgen`) and counting sink -------------------------------------

/// Where the generator writes into its Ethernet/IPv4 (no options)/TCP-or-UDP frames.
pub const PKTGEN_L3_OFF: usize = 14;
pub const PKTGEN_L4_OFF: usize = PKTGEN_L3_OFF + 20;

/// Name of the counting sink's global (a `u8`, set at load time): non-zero makes it pass the
/// frames to the kernel (XDP_PASS) after counting them instead of dropping them.
pub const SINK_PASS_GLOBAL: &str = "SINK_PASS";

/// PKTGEN_CONFIG value: what the generator (`xdp_pktgen`) writes into every frame. The frame
/// given to BPF_PROG_TEST_RUN is the template, built for `tmpl_src`:`tmpl_sport` with valid
/// checksums; the program writes the source address and port of the frame's flow and derives
/// both checksums from the template's (RFC 1624), so it never depends on what a recycled frame
/// still holds.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct PktgenConfig {
    /// First source address (host byte order) and the offset of the last one: the range is
    /// `src_first ..= src_first + src_last`.
    pub src_first: u32,
    pub src_last: u32,
    /// The template's source address (host byte order).
    pub tmpl_src: u32,
    /// First source port and the offset of the last one.
    pub sport_first: u16,
    pub sport_last: u16,
    /// The template's source port and its IPv4 header and TCP/UDP checksums.
    pub tmpl_sport: u16,
    pub tmpl_ip_csum: u16,
    pub tmpl_l4_csum: u16,
    /// IPPROTO_TCP or IPPROTO_UDP.
    pub proto: u8,
    pub _pad: u8,
}

/// RFC 1624, eqn. 3: HC' = ~(~HC + ~m + m'), for the 16-bit words `old` replaced by `new`.
#[inline(always)]
fn csum_replace<const N: usize>(hc: u16, old: [u16; N], new: [u16; N]) -> u16 {
    let mut s = (!hc) as u32;
    let mut i = 0;
    while i < N {
        s += (!old[i]) as u32 + new[i] as u32;
        i += 1;
    }
    crate::csum::fold(s)
}

impl PktgenConfig {
    /// The IPv4 header and TCP/UDP checksums of the template with source `src`:`sport` instead
    /// of its own: the template's, updated incrementally (RFC 1624). The source port is not in
    /// the IPv4 header, and UDP's "no checksum" zero is sent as 0xffff.
    #[inline(always)]
    pub fn checksums(&self, src: u32, sport: u16) -> (u16, u16) {
        let (old_hi, old_lo) = ((self.tmpl_src >> 16) as u16, self.tmpl_src as u16);
        let (new_hi, new_lo) = ((src >> 16) as u16, src as u16);
        let ip = csum_replace(self.tmpl_ip_csum, [old_hi, old_lo], [new_hi, new_lo]);
        let mut l4 = csum_replace(
            self.tmpl_l4_csum,
            [old_hi, old_lo, self.tmpl_sport],
            [new_hi, new_lo, sport],
        );
        if l4 == 0 && self.proto == IPPROTO_UDP {
            l4 = 0xffff;
        }
        (ip, l4)
    }

    /// Source addresses in the range (1 ..= 2^32).
    pub fn src_count(&self) -> u64 {
        self.src_last as u64 + 1
    }

    /// Source ports in the range (1 ..= 65536).
    pub fn sport_count(&self) -> u64 {
        self.sport_last as u64 + 1
    }

    /// Distinct flows (source address and port pairs) the generator walks through.
    pub fn flows(&self) -> u64 {
        self.src_count() * self.sport_count()
    }
}

/// PKTGEN_STATE value, one per CPU: where that CPU's generator is in the walk over the flows,
/// how many frames it has produced and may produce, and its pacing.
///
/// Flow `n` (0 <= n < A*P for A addresses and P ports) is address offset `a = n mod A` with port
/// offset `(a + n / A) mod P`: a bijection onto all A*P pairs, in which consecutive frames differ
/// in both address and port. The datapath steps with compares and adds only, no division.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct PktgenState {
    /// Offset of the current source address and port in their ranges.
    pub addr_off: u32,
    pub port_off: u32,
    /// Port offset at the start of the current pass over the addresses (`n / A mod P`).
    pub block: u32,
    pub _pad: u32,
    /// Frames generated by this CPU.
    pub sent: u64,
    /// `sent` stops here: later frames are dropped, not sent (`u64::MAX`: no limit).
    pub limit: u64,
    /// Pacing: nanoseconds between frames, plus a fraction in 1/2^32 ns (both 0: no pacing),
    /// the fraction accumulated so far, and when the next frame is due (bpf_ktime_get_ns).
    pub interval_ns: u64,
    pub interval_frac: u32,
    pub frac: u32,
    pub next_ns: u64,
}

/// How far a paced generator may fall behind its schedule and then catch up with a burst at
/// full speed; beyond that the schedule restarts from now. Long enough to ride out losing the
/// CPU for a scheduler time slice (the average rate holds on a shared CPU), short enough to
/// bound the burst.
pub const PKTGEN_MAX_LAG_NS: u64 = 10_000_000;

impl PktgenState {
    /// The walk positioned at flow `n` (taken modulo the number of flows), no limit, no pacing.
    pub fn at(n: u64, cfg: &PktgenConfig) -> Self {
        let (a, p) = (cfg.src_count(), cfg.sport_count());
        let n = n % (a * p);
        let block = (n / a) % p;
        let addr_off = n % a;
        Self {
            addr_off: addr_off as u32,
            port_off: ((addr_off + block) % p) as u32,
            block: block as u32,
            limit: u64::MAX,
            ..Self::default()
        }
    }

    /// The current flow's source address (host byte order) and port.
    #[inline(always)]
    pub fn source(&self, cfg: &PktgenConfig) -> (u32, u16) {
        (
            cfg.src_first.wrapping_add(self.addr_off),
            cfg.sport_first.wrapping_add(self.port_off as u16),
        )
    }

    /// Moves to the next flow.
    #[inline(always)]
    pub fn step(&mut self, cfg: &PktgenConfig) {
        let last_port = cfg.sport_last as u32;
        if self.addr_off >= cfg.src_last {
            self.addr_off = 0;
            self.block = if self.block >= last_port {
                0
            } else {
                self.block + 1
            };
            self.port_off = self.block;
        } else {
            self.addr_off += 1;
            self.port_off = if self.port_off >= last_port {
                0
            } else {
                self.port_off + 1
            };
        }
    }

    /// Paces this CPU at `pps` frames per second (0: as fast as it goes), starting now.
    pub fn set_rate(&mut self, pps: u64) {
        const NS: u64 = 1_000_000_000;
        (self.interval_ns, self.interval_frac) = match pps {
            0 => (0, 0),
            // NS % r < 2^30, so the shifted remainder fits.
            r => (NS / r, (((NS % r) << 32) / r) as u32),
        };
        self.frac = 0;
        self.next_ns = 0;
    }

    /// Whether this CPU is paced at all.
    #[inline(always)]
    pub fn paced(&self) -> bool {
        self.interval_ns != 0 || self.interval_frac != 0
    }

    /// Whether a frame may leave at `now` (ns); if so, books the next one's time. A generator
    /// more than [`PKTGEN_MAX_LAG_NS`] late starts its schedule again from `now`.
    #[inline(always)]
    pub fn pace(&mut self, now: u64) -> bool {
        if !self.paced() {
            return true;
        }
        if now < self.next_ns {
            return false;
        }
        if now - self.next_ns > PKTGEN_MAX_LAG_NS {
            self.next_ns = now;
        }
        let (frac, carry) = self.frac.overflowing_add(self.interval_frac);
        self.frac = frac;
        self.next_ns += self.interval_ns + carry as u64;
        true
    }
}

#[cfg(feature = "user")]
mod pktgen_pod {
    // SAFETY: #[repr(C)] plain data without padding holes (bytemuck::Pod).
    unsafe impl aya::Pod for super::PktgenConfig {}
    unsafe impl aya::Pod for super::PktgenState {}
}
