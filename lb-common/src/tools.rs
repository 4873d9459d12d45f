//! Map types of the tools that share the datapath's object but not its job: the benchmark
//! wrapper (`xdp_bench`) and the packet generator and counting sink (`xdplb pktgen`). The
//! director's own maps are in `maps.rs`.

use bytemuck::{Pod, Zeroable};

use crate::IPPROTO_UDP;

// ---- Benchmark wrapper ---------------------------------------------------------------------------

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
    /// is a new flow; `u32::MAX` for none. Its first byte keeps the template's.
    pub vary_at: u32,
    /// Where the IPv4 header checksum is, to keep it right when `vary_at` is in the header;
    /// `u32::MAX` for none.
    pub csum_at: u32,
    pub bytes: [u8; BENCH_FRAME_MAX],
}

// ---- Packet generator (`xdplb pktgen`) and counting sink -----------------------------------------

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
mod pod {
    // SAFETY: #[repr(C)] plain data without padding holes (bytemuck::Pod).
    unsafe impl aya::Pod for super::BenchFrame {}
    unsafe impl aya::Pod for super::PktgenConfig {}
    unsafe impl aya::Pod for super::PktgenState {}
}
