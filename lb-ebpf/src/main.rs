//! The xdplb datapath: an XDP program that forwards packets for virtual services to real servers.
//!
//! One module per stage, in the order a packet goes through them:
//! parse (with `ipv4_options`, a program of its own for packets with options) -> lookup
//! (service; `host`: is the frame for this host?) -> conntrack (established
//! flow?) -> schedule (new flow: real server) -> forward (LVS/DR; LVS/TUN by `encap`, with `icmp`
//! when it does not fit; LVS/NAT by `nat`; out of the right interface by `route`) -> stats.
//! A packet for no service may be an LVS/NAT reply: `nat` turns it back into the service's and
//! `route` sends it to the client. An ICMP error about a NAT flow is translated the same way.
//! Those paths are programs of their own, in `nat::paths`. `sync` hands new and closing flows
//! to the agent, which tells the other directors.
//! IPv6 frames go to `xdplb_v6`, the same stages over IPv6 (`parse6`; LVS/DR and LVS/TUN, with
//! `icmp6` when a tunnelled packet does not fit). An IPv4 service's IPv6 real servers are
//! tunnelled to by `xdplb_4in6` (IPv4-in-IPv6).
//! `xdp_decap` is the real-server side of LVS/TUN.
// Built for bpfel-unknown-none by lb-user's build script; on the host (cargo clippy --workspace)
// it is an ordinary empty program so the same sources are still checked.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// Atomic adds (connection counts): the BPF target has no atomic types.
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]
// The frame's word-wide loads and stores (see `frame`).
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

mod bench;
mod config;
mod conntrack;
mod counts;
mod encap;
mod ether;
mod flood;
mod frame;
mod host;
mod icmp;
mod icmp6;
mod ipv4_options;
mod ipv6;
mod lookup;
mod nat;
mod parse;
mod parse6;
mod persist;
mod pktgen;
mod route;
mod schedule;
mod slots;
mod stats;
mod sync;

use aya_ebpf::{
    bindings::xdp_action::{XDP_PASS, XDP_TX},
    macros::xdp,
    programs::XdpContext,
};
use aya_log_ebpf::debug;
use lb_common::{
    addr_from_v4, ipv4::HEADER_LEN as IPV4_HLEN, is_v4, DirectorConfig, FlowHandoff, FlowKey,
    RealServer, Reason, ServiceInfo, FWD_DR, FWD_NAT, FWD_TUN, HANDOFF_ESTABLISHED,
    HANDOFF_NEW_FLOW, HANDOFF_REPLY, SVC_NAT, SVC_PERSISTENT,
};

use crate::parse::{Packet, Parsed, TCP_FLAG_ACK, TCP_FLAG_RST, TCP_FLAG_SYN};

// Inlined into the program's entry point (the macro's wrapper), where LLVM would otherwise make
// the pipeline a subprogram of its own: a call per packet.
#[xdp]
#[inline(always)]
pub fn xdplb(ctx: XdpContext) -> u32 {
    let frame_len = (ctx.data_end() - ctx.data()) as u64;
    let pkt = match parse::parse(&ctx) {
        Parsed::Packet(p) => p,
        Parsed::Icmp => {
            nat::to_icmp_path(&ctx);
            return stats::pass(Reason::PassNotTcpUdp, frame_len);
        }
        Parsed::Ipv6 => {
            ipv6::to_ipv6(&ctx);
            return stats::pass(Reason::PassNotIpv4, frame_len);
        }
        Parsed::Pass(reason) => return stats::pass(reason, frame_len),
    };
    if !lookup::may_be_vip(&lb_common::addr_from_v4(pkt.dst)) {
        return no_service(&ctx, &pkt, frame_len);
    }
    // Options first: the checker comes back here, so the pipeline runs once for such a packet.
    if !ipv4_options::check_first(&ctx, &pkt) {
        return stats::drop(Reason::DropBadOptions, frame_len);
    }
    let Some(config) = config::get() else {
        return stats::pass(Reason::PassNoService, frame_len);
    };
    if let Some(verdict) = not_ours(&ctx, config, frame_len, || lookup::service(&pkt).is_some()) {
        return verdict;
    }
    let flow = conntrack::flow(&pkt);
    let flags = parse::tcp_flags(&ctx, &pkt);
    let now = conntrack::now();
    // An established flow goes straight to its real server: the flow already names the service,
    // so the service lookup is only for new flows and SYNs (first, see `syn_lookup`). A SYN
    // of a flood skips the table.
    let (syn, syn_service) = syn_lookup(flags, &flow, || lookup::service(&pkt));
    let service_of = || match syn {
        true => syn_service,
        false => lookup::service(&pkt),
    };
    let flooding = flood::syn_service(flags, now, service_of);
    let known = known_flow(&flow, flags, now, config, flooding.is_some());
    // A new flow's service. Only with a service at stake is a damaged packet worth a drop, not
    // a pass; checked once for both kinds of flow (the verifier walks each copy), and before
    // either writes its entry: a damaged FIN must not close a connection.
    let Some(service) = new_flow_service(&known, flooding, service_of) else {
        return no_service(&ctx, &pkt, frame_len);
    };
    if let Err(reason) = parse::check(&ctx, &pkt) {
        return stats::drop(reason, frame_len);
    }
    let (service_id, real_id, real, new_flow) = match (known, service) {
        (Some((entry, real)), _) => {
            conntrack::refresh(&entry, &flow, now, config);
            let reply = entry.reply_bits();
            if reply != 0 && real.method == FWD_NAT {
                let established = reply & HANDOFF_ESTABLISHED != 0;
                nat::remember(&flow, &real.addr, entry.real, entry.service, established);
            }
            (entry.service, entry.real, real, false)
        }
        // Not a case: a flow that is not established has a service, or returned above.
        (None, None) => return stats::drop(Reason::DropNoReal, frame_len),
        (None, Some(service)) => {
            let Some(id) = choose(service, &flow, now) else {
                debug!(
                    &ctx,
                    "no real server for {:i}:{}",
                    u32::from_be_bytes(pkt.src),
                    flow.sport
                );
                return stats::drop(Reason::DropNoReal, frame_len);
            };
            let Some(real) = schedule::real(service.id, id) else {
                return stats::drop(Reason::DropNoReal, frame_len);
            };
            // Under a flood, past the guard's rate, a new flow is forwarded but not remembered.
            if flags & TCP_FLAG_RST == 0 && flood::may_remember(real, now) {
                conntrack::insert(&flow, service.id, id, flags, now, config);
                persist::remember(service, &flow, id, now);
                if real.method == FWD_NAT {
                    let established = conntrack::starts_established(&flow, flags);
                    nat::remember(&flow, &real.addr, id, service.id, established);
                }
            }
            debug!(
                &ctx,
                "new flow {:i}:{} -> real server {}",
                u32::from_be_bytes(pkt.src),
                flow.sport,
                id
            );
            (service.id, id, real, true)
        }
    };
    if flags & TCP_FLAG_RST != 0 {
        conntrack::close(&flow, service_id, real_id, !new_flow, config);
        if real.method == FWD_NAT {
            nat::forget(&nat::reply_key(&flow, &real.addr, real_id));
        }
    }
    let flow_of = FlowHandoff {
        service: service_id,
        real: real_id,
        new_flow: new_flow.into(),
    };
    let verdict = match forward(&ctx, &pkt, config, flow_of, real) {
        Ok(verdict) => verdict,
        Err(Reason::TxFragNeeded) if icmp::frag_needed(&ctx, &pkt, config, IPV4_HLEN) => {
            return stats::tx(Reason::TxFragNeeded, frame_len);
        }
        Err(Reason::TxFragNeeded) => return stats::drop(Reason::DropNoRoom, frame_len),
        Err(reason) => return untranslated(reason, frame_len),
    };
    stats::forwarded(service_id, real_id, frame_len, new_flow);
    verdict
}

/// The conntrack stage, for either family: the entry and real server of an established flow
/// whose real server is still in its service; None for a new flow, and for a SYN of a flood
/// (`flooding`), which goes without the table. The caller refreshes the entry once the packet
/// has passed its checks.
#[inline(always)]
fn known_flow(
    flow: &FlowKey,
    tcp_flags: u8,
    now: u32,
    config: &DirectorConfig,
    flooding: bool,
) -> Option<(conntrack::Entry, &'static RealServer)> {
    if flooding {
        return None;
    }
    let entry = conntrack::lookup(flow, tcp_flags, now, config)?;
    let real = schedule::real(entry.service, entry.real)?;
    Some((entry, real))
}

/// The service of a new flow: Some(None) for a known flow (its entry names the service),
/// Some(service) for a new one, None for a packet of no service. `flooding` is a flood's SYN's,
/// already looked up.
#[inline(always)]
fn new_flow_service<K>(
    known: &Option<K>,
    flooding: Option<&'static ServiceInfo>,
    service_of: impl FnOnce() -> Option<&'static ServiceInfo>,
) -> Option<Option<&'static ServiceInfo>> {
    match known {
        Some(_) => Some(None),
        None => flooding.or_else(service_of).map(Some),
    }
}

/// The schedule stage for a new flow: a persistent client goes where its template says; else
/// the scheduler decides.
#[inline(always)]
fn choose(service: &ServiceInfo, flow: &FlowKey, now: u32) -> Option<u32> {
    match persist::template(service, flow, now) {
        Some(id) => Some(id),
        None => schedule::pick(service, flow),
    }
}

/// Whether the packet is a SYN, and its service if so, looked up before the connection table:
/// the buckets its new flow will need beside the table's, its reply's (LVS/NAT) and its client's
/// template (persistence), start coming in while the table's does, where each would otherwise
/// be waited for on its own after it. Each pipeline then wraps the result in a lookup of its
/// own (SYN: this service; else a lookup): returned from here as a closure, it made LLVM spill
/// a register it never set, which the verifier refused.
#[inline(always)]
fn syn_lookup(
    tcp_flags: u8,
    flow: &FlowKey,
    service_of: impl FnOnce() -> Option<&'static ServiceInfo>,
) -> (bool, Option<&'static ServiceInfo>) {
    if tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) != TCP_FLAG_SYN {
        return (false, None);
    }
    let service = service_of();
    if let Some(s) = service {
        if s.flags & SVC_NAT != 0 {
            nat::xdplb_reply_fetch(flow);
        }
        if s.flags & SVC_PERSISTENT != 0 {
            persist::xdplb_template_fetch(flow, s.id);
        }
    }
    (true, service)
}

/// The host stage: the verdict for a frame that is not this director's to act on (another
/// host's MAC, or a VRRP backup's virtual MAC), None for one that is. `for_service` says
/// whether it is for a service.
#[inline(always)]
fn not_ours(
    ctx: &XdpContext,
    config: &DirectorConfig,
    frame_len: u64,
    for_service: impl FnOnce() -> bool,
) -> Option<u32> {
    match host::owner(ctx, config) {
        host::Owner::Local => None,
        host::Owner::Other => Some(stats::pass(Reason::PassOtherHost, frame_len)),
        // A backup's virtual MAC: dropped if it is for a service, so the kernel (which may just
        // have been given the VIP) never resets a connection this director is about to take.
        host::Owner::Standby => Some(if for_service() {
            stats::drop(Reason::DropStandby, frame_len)
        } else {
            stats::pass(Reason::PassOtherHost, frame_len)
        }),
    }
}

/// The forward stage: the frame becomes what the real server's forwarding method sends
/// (LVS/DR: the frame as it is; LVS/TUN: IPIP, or IPv4-in-IPv6 to an IPv6 real server by a
/// program of its own; LVS/NAT: the real server's address and port), addressed to the real
/// server (or the next hop toward it) out of its interface.
#[inline(always)]
fn forward(
    ctx: &XdpContext,
    pkt: &Packet,
    config: &DirectorConfig,
    flow_of: FlowHandoff,
    real: &RealServer,
) -> Result<u32, Reason> {
    let real_id = flow_of.real;
    // The MAC this frame was sent to: the director's own on the link it came in on.
    let here = ether::dst_mac(ctx).ok_or(Reason::DropMalformed)?;
    let egress = route::real_egress(real_id);
    if real.method == FWD_TUN {
        if !is_v4(&real.addr) {
            // This program's stack is full: xdplb_4in6 takes the packet on.
            ipv6::to_4in6(ctx, flow_of);
            return Err(Reason::DropNoReal);
        }
        encap::ipip(ctx, pkt, config, real)?;
    } else if real.method == FWD_NAT {
        let addr = [real.addr[12], real.addr[13], real.addr[14], real.addr[15]];
        nat::rewrite(ctx, pkt, true, addr, nat::port(&egress, pkt.dport))?;
    }
    let hop = route::toward(ctx, here, real, egress.ifindex);
    Ok(route::send(ctx, &hop))
}

/// A packet for no service: one from an LVS/NAT real server's address may be a reply, which
/// the reply path's program takes over; everything else (the real servers' own traffic
/// included) goes to the kernel.
#[inline(always)]
fn no_service(ctx: &XdpContext, pkt: &Packet, frame_len: u64) -> u32 {
    if nat::may_be_real(&addr_from_v4(pkt.src)) {
        nat::to_reply_path(ctx);
    }
    stats::pass(Reason::PassNoService, frame_len)
}

/// [`no_service`] for IPv6: a reply of an LVS/NAT flow goes to `xdplb_nat6_reply`.
#[inline(always)]
fn no_service6(ctx: &XdpContext, src: &lb_common::Addr, frame_len: u64) -> u32 {
    if nat::may_be_real(src) {
        ipv6::to_nat6_reply(ctx);
    }
    stats::pass(Reason::PassNoService, frame_len)
}

/// The IPv4 options of a packet that may be for a service (or about a NAT flow), tail-called
/// from the start of `xdplb` (`ipv4_options::check_first`) and from the check stage of
/// `xdplb_nat_reply` and `xdplb_nat_icmp`: every packet goes back to `xdplb` marked with the
/// verdict, which takes it from the start again; its check stage drops a refused one where a
/// service is at stake, and one for no service goes to the kernel as it is. Dropped here only
/// if the options cannot be read, or the director's program is not there.
#[xdp]
pub fn xdplb_ip_options(ctx: XdpContext) -> u32 {
    let frame_len = (ctx.data_end() - ctx.data()) as u64;
    match ipv4_options::check(&ctx) {
        Ok(()) => ipv4_options::back_to_director(&ctx, false),
        Err(Reason::DropBadOptions) => ipv4_options::back_to_director(&ctx, true),
        Err(reason) => return stats::drop(reason, frame_len),
    }
    // Only without the director's program.
    stats::drop(Reason::DropBadOptions, frame_len)
}

/// The IPv6 pipeline, tail-called for every IPv6 frame:
/// parse6 -> lookup -> conntrack -> schedule -> forward (LVS/DR, LVS/TUN) -> stats.
/// LVS/NAT over IPv6 is not in it yet.
#[xdp]
pub fn xdplb_v6(ctx: XdpContext) -> u32 {
    let frame_len = (ctx.data_end() - ctx.data()) as u64;
    let pkt = match parse6::parse6(&ctx) {
        Ok(p) => p,
        Err(Reason::PassNotTcpUdp) => {
            // ICMPv6 among them: an error about a NAT flow is translated.
            ipv6::to_nat6_icmp(&ctx);
            return stats::pass(Reason::PassNotTcpUdp, frame_len);
        }
        Err(reason) => return stats::pass(reason, frame_len),
    };
    if !lookup::may_be_vip(&pkt.dst) {
        return no_service6(&ctx, &pkt.src, frame_len);
    }
    let Some(config) = config::get() else {
        return stats::pass(Reason::PassNoService, frame_len);
    };
    let service_of = || lookup::service_at(pkt.dst, pkt.dport, pkt.proto);
    if let Some(verdict) = not_ours(&ctx, config, frame_len, || service_of().is_some()) {
        return verdict;
    }
    // What the kernel would have refused IPVS, for a service; the lookup only for such a packet.
    if let Some(reason) = parse6::insane6(&ctx, &pkt) {
        if service_of().is_some() {
            return stats::drop(reason, frame_len);
        }
    }
    // Everything that reads past the network header, first: the extension headers give each
    // packet its own transport offset, and the verifier explores every stage after its last
    // use once per offset.
    let whole = parse6::is_whole6(&ctx, &pkt);
    let flags = parse::tcp_flags_at(&ctx, pkt.proto, pkt.l4_off);
    let flow = pkt.flow();
    let now = conntrack::now();
    let (syn, syn_service) = syn_lookup(flags, &flow, service_of);
    let service_of = || match syn {
        true => syn_service,
        false => service_of(),
    };
    // A SYN of a flood skips the connection table, as in xdplb's.
    let flooding = flood::syn_service(flags, now, service_of);
    let known = known_flow(&flow, flags, now, config, flooding.is_some());
    // As in xdplb's: a damaged packet is dropped if a flow or a service is at stake, before
    // it can change an entry.
    let Some(service) = new_flow_service(&known, flooding, service_of) else {
        return no_service6(&ctx, &pkt.src, frame_len);
    };
    if !whole {
        return stats::drop(Reason::DropMalformed, frame_len);
    }
    // The hand-off's bits: for LVS/NAT, whether (and how) xdplb_nat6 writes the reply entry.
    let (service_id, real_id, real, handoff) = match (known, service) {
        (Some((entry, real)), _) => {
            conntrack::refresh(&entry, &flow, now, config);
            (entry.service, entry.real, real, entry.reply_bits())
        }
        (None, None) => return stats::drop(Reason::DropNoReal, frame_len),
        (None, Some(service)) => {
            let Some((id, real)) = choose(service, &flow, now)
                .and_then(|id| Some((id, schedule::real(service.id, id)?)))
            else {
                return stats::drop(Reason::DropNoReal, frame_len);
            };
            if flags & TCP_FLAG_RST == 0 && flood::may_remember(real, now) {
                conntrack::insert(&flow, service.id, id, flags, now, config);
                persist::remember(service, &flow, id, now);
            }
            let established = if conntrack::starts_established(&flow, flags) {
                HANDOFF_ESTABLISHED
            } else {
                0
            };
            (
                service.id,
                id,
                real,
                HANDOFF_NEW_FLOW | HANDOFF_REPLY | established,
            )
        }
    };
    let new_flow = handoff & HANDOFF_NEW_FLOW != 0;
    if flags & TCP_FLAG_RST != 0 {
        conntrack::close(&flow, service_id, real_id, !new_flow, config);
    }
    let Some(here) = ether::dst_mac(&ctx) else {
        return stats::drop(Reason::DropMalformed, frame_len);
    };
    if real.method == FWD_NAT {
        // This program's stack is full: xdplb_nat6 rewrites and sends the packet.
        ipv6::to_nat6(
            &ctx,
            FlowHandoff {
                service: service_id,
                real: real_id,
                new_flow: handoff,
            },
        );
        return stats::drop(Reason::DropNoReal, frame_len);
    }
    if real.method == FWD_TUN {
        match encap::ip6ip6(&ctx, &pkt, config, real) {
            Ok(()) => {}
            // Answered by a program of its own (this one's stack is full); dropped without it.
            Err(Reason::TxFragNeeded) => {
                ipv6::to_too_big(&ctx);
                return stats::drop(Reason::DropTooBig, frame_len);
            }
            Err(reason) => return stats::drop(reason, frame_len),
        }
    } else if real.method != FWD_DR {
        return stats::drop(Reason::DropNoReal, frame_len);
    }
    let hop = route::toward(&ctx, here, real, route::real_egress(real_id).ifindex);
    stats::forwarded(service_id, real_id, frame_len, new_flow);
    route::send(&ctx, &hop)
}

/// The verdict for a packet the forward stage (a rewrite, a translation) failed on: a TTL (hop
/// limit) that ran out is the kernel's to answer; anything else is dropped, never sent damaged.
#[inline(always)]
fn untranslated(reason: Reason, frame_len: u64) -> u32 {
    match reason {
        Reason::PassTtl => stats::pass(reason, frame_len),
        _ => stats::drop(reason, frame_len),
    }
}

/// ICMPv6 Packet Too Big for an IPv6 packet that no longer fits once tunnelled, tail-called by
/// `xdplb_v6`: parse6 -> answer -> stats.
#[xdp]
pub fn xdplb_v6_too_big(ctx: XdpContext) -> u32 {
    let frame_len = (ctx.data_end() - ctx.data()) as u64;
    let (Ok(pkt), Some(config)) = (parse6::parse6(&ctx), config::get()) else {
        return stats::drop(Reason::DropTooBig, frame_len);
    };
    if icmp6::packet_too_big(&ctx, &pkt, config) {
        return stats::tx(Reason::TxFragNeeded, frame_len);
    }
    stats::drop(Reason::DropTooBig, frame_len)
}

/// LVS/TUN to an IPv4 service's IPv6 real server (IPv4-in-IPv6), tail-called by `xdplb` with
/// the flow's service and real server: parse -> encapsulate -> route -> stats.
#[xdp]
pub fn xdplb_4in6(ctx: XdpContext) -> u32 {
    let frame_len = (ctx.data_end() - ctx.data()) as u64;
    let (Parsed::Packet(pkt), Some(config), Some(to)) =
        (parse::parse(&ctx), config::get(), ipv6::handoff())
    else {
        return stats::drop(Reason::DropMalformed, frame_len);
    };
    let (Some(real), Some(here)) = (schedule::real(to.service, to.real), ether::dst_mac(&ctx))
    else {
        return stats::drop(Reason::DropNoReal, frame_len);
    };
    match encap::ip4in6(&ctx, &pkt, config, real) {
        Ok(()) => {}
        Err(Reason::TxFragNeeded) if icmp::frag_needed(&ctx, &pkt, config, encap::IPV6_HLEN) => {
            return stats::tx(Reason::TxFragNeeded, frame_len);
        }
        Err(Reason::TxFragNeeded) => return stats::drop(Reason::DropNoRoom, frame_len),
        Err(reason) => return stats::drop(reason, frame_len),
    }
    let hop = route::toward(&ctx, here, real, route::real_egress(to.real).ifindex);
    stats::forwarded(
        to.service,
        to.real,
        frame_len,
        to.new_flow & HANDOFF_NEW_FLOW != 0,
    );
    route::send(&ctx, &hop)
}

/// Benchmarks only: restores a template frame each iteration, then tail-calls the program under
/// test (see bench.rs).
#[xdp]
pub fn xdp_bench(ctx: XdpContext) -> u32 {
    bench::run(&ctx)
}

/// The real-server side of LVS/TUN (`xdplb decap`): opens IPIP packets for this host's VIPs.
#[xdp]
pub fn xdp_decap(ctx: XdpContext) -> u32 {
    encap::decap(&ctx)
}

/// Hands every frame to the kernel. A veth only delivers frames another XDP program sent into it
/// with XDP_TX when its own end has an XDP program too; this is that program.
#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

/// Sends every frame back out unchanged: the "bare XDP_TX" baseline benchmarks compare against.
#[xdp]
pub fn xdp_tx(_ctx: XdpContext) -> u32 {
    XDP_TX
}

/// Benchmarks only: the kernel's FIB lookup toward a client, alone (see bench.rs).
#[xdp]
pub fn xdp_fib(ctx: XdpContext) -> u32 {
    bench::fib(&ctx)
}

/// Benchmarks only: the bare forwarder the director is compared with (see bench.rs).
#[xdp]
pub fn xdp_fwd(ctx: XdpContext) -> u32 {
    bench::forward(&ctx)
}

/// Packet generator (`xdplb pktgen`), run in BPF_PROG_TEST_RUN live-frames mode: gives each
/// frame the source address and port of the next flow and sends it with XDP_TX (see pktgen.rs).
#[xdp]
pub fn xdp_pktgen(ctx: XdpContext) -> u32 {
    pktgen::generate(&ctx)
}

/// Counting sink: counts packets and bytes per CPU, then drops them (passes them with SINK_PASS).
#[xdp]
pub fn xdp_count(ctx: XdpContext) -> u32 {
    pktgen::count(&ctx)
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(all(not(test), target_arch = "bpf"))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
