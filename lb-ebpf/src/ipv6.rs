//! The IPv6 pipeline's entry: the director's program hands IPv6 frames to `xdplb_v6`, a program
//! of its own (with a stack of its own), through a program array the agent fills.

use aya_ebpf::{macros::map, maps::ProgramArray, programs::XdpContext};

/// Index 0: `xdplb_v6`.
#[map]
static IPV6_PROGS: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// Continues with the IPv6 pipeline; returns only if it is not there.
#[inline(always)]
pub fn to_ipv6_path(ctx: &XdpContext) {
    // SAFETY: a tail call does not return when it succeeds; the context is the kernel's.
    unsafe { IPV6_PROGS.tail_call(ctx, 0) };
}
