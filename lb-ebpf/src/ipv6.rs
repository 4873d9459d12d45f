//! The IPv6 pipeline's entry: the director's program hands IPv6 frames to `xdplb_v6`, a program
//! of its own (with a stack of its own), through a program array the agent fills.

use aya_ebpf::{macros::map, maps::ProgramArray, programs::XdpContext};
use lb_common::{IPV6_PROG_PIPELINE, IPV6_PROG_SLOTS, IPV6_PROG_TOO_BIG};

/// `xdplb_v6`, and `xdplb_v6_too_big` (ICMPv6 Packet Too Big).
#[map]
static IPV6_PROGS: ProgramArray = ProgramArray::with_max_entries(IPV6_PROG_SLOTS, 0);

/// Continues with the IPv6 pipeline; returns only if it is not there.
#[inline(always)]
pub fn to_ipv6_path(ctx: &XdpContext) {
    // SAFETY: a tail call does not return when it succeeds; the context is the kernel's.
    unsafe { IPV6_PROGS.tail_call(ctx, IPV6_PROG_PIPELINE) };
}

/// Continues with the Packet Too Big answer; returns only if it is not there.
#[inline(always)]
pub fn to_too_big(ctx: &XdpContext) {
    // SAFETY: as above.
    unsafe { IPV6_PROGS.tail_call(ctx, IPV6_PROG_TOO_BIG) };
}
