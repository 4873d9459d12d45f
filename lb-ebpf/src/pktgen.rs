//! The packet generator of `xdplb pktgen` and the counting sink that receives its frames.
//!
//! `xdp_pktgen` runs under BPF_PROG_TEST_RUN in live-frames mode (as xdp-tools' xdp-trafficgen
//! does): the kernel hands it copies of a template frame from a page pool and transmits what it
//! returns with XDP_TX out of the interface given as the context's ingress_ifindex. Pages are
//! recycled without being rewritten, so a frame holds either the template or an earlier output:
//! the program writes every field that varies (source address and port, both checksums) and
//! derives them from the template's values in the config, never from the frame.
//!
//! Each CPU stops at its share of a count (`limit`), and when paced, drops the frames it runs
//! ahead of its schedule: a live-frames system call costs a fixed ~25 ms here (the XDP
//! dispatcher is switched twice, each time waiting for RCU), so calls must be long and the
//! pacing happens inside them.
//!
//! `xdp_count` counts what arrives on an interface, per CPU, and drops it (or passes it on when
//! loaded with the SINK_PASS global set).

use aya_ebpf::{
    bindings::xdp_action::{XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX},
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{Array, PerCpuArray},
    programs::XdpContext,
    Global,
};
use lb_common::{Counters, PktgenConfig, PktgenState, IPPROTO_TCP, PKTGEN_L3_OFF, PKTGEN_L4_OFF};

use crate::parse::ptr_at;

#[map]
static PKTGEN_CONFIG: Array<PktgenConfig> = Array::with_max_entries(1, 0);

#[map]
static PKTGEN_STATE: PerCpuArray<PktgenState> = PerCpuArray::with_max_entries(1, 0);

#[map]
static SINK_STATS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(1, 0);

/// Non-zero: the sink passes frames to the kernel instead of dropping them. Set at load time.
#[unsafe(no_mangle)]
static SINK_PASS: Global<u8> = Global::new(0);

/// Offsets inside the IPv4 header and the TCP/UDP header.
const IP_CSUM: usize = PKTGEN_L3_OFF + 10;
const IP_SRC: usize = PKTGEN_L3_OFF + 12;
const L4_SPORT: usize = PKTGEN_L4_OFF;
const TCP_CSUM: usize = PKTGEN_L4_OFF + 16;
const UDP_CSUM: usize = PKTGEN_L4_OFF + 6;

#[inline(always)]
fn write<const N: usize>(ctx: &XdpContext, off: usize, bytes: [u8; N]) -> bool {
    match ptr_at::<[u8; N]>(ctx, off) {
        // SAFETY: ptr_at checked that the N bytes lie inside the frame.
        Some(p) => {
            unsafe { p.write_unaligned(bytes) };
            true
        }
        None => false,
    }
}

#[inline(always)]
pub fn generate(ctx: &XdpContext) -> u32 {
    let (Some(cfg), Some(state)) = (PKTGEN_CONFIG.get(0), PKTGEN_STATE.get_ptr_mut(0)) else {
        return XDP_ABORTED;
    };
    // SAFETY: this CPU's own slot; XDP does not preempt itself.
    let state = unsafe { &mut *state };
    // Past this CPU's share, or ahead of its schedule: the frame goes back to the page pool and
    // the kernel runs the program again (live-frames runs are as long as user space says).
    if state.sent >= state.limit {
        return XDP_DROP;
    }
    // SAFETY: a helper without arguments (called only when paced: it costs at full speed).
    if state.paced() && !state.pace(unsafe { bpf_ktime_get_ns() }) {
        return XDP_DROP;
    }
    let (src, sport) = state.source(cfg);
    let (ip_csum, l4_csum) = cfg.checksums(src, sport);
    let l4_csum_at = if cfg.proto == IPPROTO_TCP {
        TCP_CSUM
    } else {
        UDP_CSUM
    };
    if !(write(ctx, IP_SRC, src.to_be_bytes())
        && write(ctx, IP_CSUM, ip_csum.to_be_bytes())
        && write(ctx, L4_SPORT, sport.to_be_bytes())
        && write(ctx, l4_csum_at, l4_csum.to_be_bytes()))
    {
        return XDP_ABORTED;
    }
    state.step(cfg);
    state.sent += 1;
    XDP_TX
}

#[inline(always)]
pub fn count(ctx: &XdpContext) -> u32 {
    if let Some(c) = SINK_STATS.get_ptr_mut(0) {
        // SAFETY: this CPU's own slot; XDP does not preempt itself.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += (ctx.data_end() - ctx.data()) as u64;
        }
    }
    if SINK_PASS.load() != 0 {
        XDP_PASS
    } else {
        XDP_DROP
    }
}
