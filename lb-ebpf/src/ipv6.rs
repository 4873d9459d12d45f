//! The IPv6 pipeline's entry: the director's program hands IPv6 frames to `xdplb_v6`, a program
//! of its own (with a stack of its own), through a program array the agent fills.

use aya_ebpf::{
    macros::map,
    maps::{PerCpuArray, ProgramArray},
    programs::XdpContext,
};
use lb_common::{
    FlowHandoff, IPPROTO_TCP, IPPROTO_UDP, IPV6_PROG_4IN6, IPV6_PROG_NAT, IPV6_PROG_NAT_ICMP,
    IPV6_PROG_NAT_OUT, IPV6_PROG_NAT_REPLY, IPV6_PROG_PIPELINE, IPV6_PROG_SLOTS, IPV6_PROG_TOO_BIG,
};

use crate::{lookup, nat, parse, parse6};

/// `xdplb_v6`, `xdplb_v6_too_big` (ICMPv6 Packet Too Big), `xdplb_4in6` (IPv4-in-IPv6),
/// `xdplb_nat6`, `xdplb_nat6_reply`, `xdplb_nat6_icmp` and `xdplb_nat6_out` (LVS/NAT over
/// IPv6).
#[map]
static IPV6_PROGS: ProgramArray = ProgramArray::with_max_entries(IPV6_PROG_SLOTS, 0);

/// What a pipeline hands `xdplb_4in6` or `xdplb_nat6`: per CPU, read right after the tail call
/// on the same CPU.
#[map]
static FLOW_HANDOFF: PerCpuArray<FlowHandoff> = PerCpuArray::with_max_entries(1, 0);

/// Hands an IPv6 frame on: a TCP or UDP packet (no extension header) from a NAT real server's
/// address to no VIP goes straight to the reply path, where `xdplb_v6` would send it after a
/// parse of its own (one tail call and one parse less per IPv6 NAT reply); anything else to
/// the IPv6 pipeline. Returns only if neither program is there.
#[inline(always)]
pub fn to_ipv6(ctx: &XdpContext) {
    if nat6_reply_ahead(ctx) {
        to_nat6_reply(ctx);
    }
    to_ipv6_path(ctx);
}

/// Whether an IPv6 frame is for the reply path, by its fixed header.
#[inline(always)]
fn nat6_reply_ahead(ctx: &XdpContext) -> bool {
    let Some(ip) = parse::l3(ctx)
        .ok()
        .and_then(|(l3, _)| parse6::fixed6(ctx, l3))
    else {
        return false;
    };
    (ip.next == IPPROTO_TCP || ip.next == IPPROTO_UDP)
        && !lookup::may_be_vip(&ip.dst)
        && nat::may_be_real(&ip.src)
}

/// Continues with the IPv6 pipeline; returns only if it is not there.
#[inline(always)]
fn to_ipv6_path(ctx: &XdpContext) {
    // SAFETY: a tail call does not return when it succeeds; the context is the kernel's.
    unsafe { IPV6_PROGS.tail_call(ctx, IPV6_PROG_PIPELINE) };
}

/// Continues with the Packet Too Big answer; returns only if it is not there.
#[inline(always)]
pub fn to_too_big(ctx: &XdpContext) {
    // SAFETY: as above.
    unsafe { IPV6_PROGS.tail_call(ctx, IPV6_PROG_TOO_BIG) };
}

/// Continues with IPv4-in-IPv6 tunnelling of this flow's packet; returns only if that program
/// is not there.
#[inline(always)]
pub fn to_4in6(ctx: &XdpContext, handoff: FlowHandoff) {
    hand_over(ctx, IPV6_PROG_4IN6, handoff);
}

/// Continues with the LVS/NAT rewrite of this IPv6 flow's request; returns only if that
/// program is not there.
#[inline(always)]
pub fn to_nat6(ctx: &XdpContext, handoff: FlowHandoff) {
    hand_over(ctx, IPV6_PROG_NAT, handoff);
}

/// Continues with the LVS/NAT reply path over IPv6; returns only if it is not there.
#[inline(always)]
pub fn to_nat6_reply(ctx: &XdpContext) {
    // SAFETY: as in `to_ipv6_path`.
    unsafe { IPV6_PROGS.tail_call(ctx, IPV6_PROG_NAT_REPLY) };
}

/// Continues with ICMPv6 errors about NAT flows; returns only if that program is not there.
#[inline(always)]
pub fn to_nat6_icmp(ctx: &XdpContext) {
    // SAFETY: as in `to_ipv6_path`.
    unsafe { IPV6_PROGS.tail_call(ctx, IPV6_PROG_NAT_ICMP) };
}

/// Continues with the way to the client of a translated packet of this flow; returns only if
/// that program is not there.
#[inline(always)]
pub fn to_nat6_out(ctx: &XdpContext, handoff: FlowHandoff) {
    hand_over(ctx, IPV6_PROG_NAT_OUT, handoff);
}

#[inline(always)]
fn hand_over(ctx: &XdpContext, prog: u32, handoff: FlowHandoff) {
    let Some(slot) = FLOW_HANDOFF.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: a per-CPU slot, read by the program tail-called next on this CPU.
    unsafe {
        *slot = handoff;
        IPV6_PROGS.tail_call(ctx, prog)
    };
}

/// What the pipeline handed over before its tail call.
#[inline(always)]
pub fn handoff() -> Option<FlowHandoff> {
    FLOW_HANDOFF.get(0).copied()
}
