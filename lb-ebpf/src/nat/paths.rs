//! The LVS/NAT programs the director's pipelines hand packets to by tail calls: the reply path
//! (`xdplb_nat_reply`, `xdplb_nat6_reply`), ICMP errors about NAT flows (`xdplb_nat_icmp`,
//! `xdplb_nat6_icmp`), IPv6's request rewrite (`xdplb_nat6`: `xdplb_v6`'s stack is full) and a
//! translated ICMPv6 error's way to the client (`xdplb_nat6_out`).

use aya_ebpf::{macros::xdp, programs::XdpContext};
use lb_common::{
    addr_from_v4, Addr, DirectorConfig, FlowHandoff, FlowKey, NatReply, RealServer, Reason,
    HANDOFF_ESTABLISHED, HANDOFF_NEW_FLOW, HANDOFF_REPLY,
};

use crate::{
    config, conntrack, ether, host, ipv4_options, ipv6, nat, parse,
    parse::{Parsed, TCP_FLAG_FIN, TCP_FLAG_RST, TCP_FLAG_SYN},
    parse6, route, schedule, stats, untranslated,
};

/// The LVS/NAT reply path: a packet from RIP:RPORT to a client of a NAT flow leaves as the
/// service's (from VIP:port) toward the client's next hop.
/// parse -> reply lookup -> conntrack (the server's FIN/RST) -> rewrite -> route -> stats.
#[xdp]
pub fn xdplb_nat_reply(ctx: XdpContext) -> u32 {
    let frame_len = (ctx.data_end() - ctx.data()) as u64;
    let pkt = match parse::parse(&ctx) {
        Parsed::Packet(p) => p,
        Parsed::Icmp => return stats::pass(Reason::PassNotTcpUdp, frame_len),
        Parsed::Ipv6 => return stats::pass(Reason::PassNotIpv4, frame_len),
        Parsed::Pass(reason) => return stats::pass(reason, frame_len),
    };
    let mut flow = conntrack::flow(&pkt);
    let (found, config) = match nat_reply_of(&ctx, &flow, frame_len) {
        Ok(found) => found,
        Err(verdict) => return verdict,
    };
    if let Err(reason) = parse::check(&ctx, &pkt) {
        return stats::drop(reason, frame_len);
    }
    let flags = parse::tcp_flags(&ctx, &pkt);
    nat_reply_conntrack(&mut flow, &found, flags, config);
    let reply = found.reply;
    let vip = [reply.vip[12], reply.vip[13], reply.vip[14], reply.vip[15]];
    if let Err(reason) = nat::rewrite(&ctx, &pkt, false, vip, reply.vport) {
        return untranslated(reason, frame_len);
    }
    to_client(
        &ctx,
        &reply.vip,
        &addr_from_v4(pkt.dst),
        pkt.tot_len,
        &reply,
    )
}

/// Sends a translated reply (or ICMP error) from `src` on to its client at `dst`, by the
/// kernel's FIB, counted as the NAT flow's outbound traffic.
#[inline(always)]
fn to_client(ctx: &XdpContext, src: &Addr, dst: &Addr, tot_len: u16, reply: &NatReply) -> u32 {
    // A translation keeps the frame's length.
    let frame_len = (ctx.data_end() - ctx.data()) as u64;
    match route::fib(ctx, src, dst, tot_len) {
        Ok(hop) => {
            stats::replied(reply.service, reply.real, frame_len);
            route::send(ctx, &hop)
        }
        // Never passed: the kernel would forward it with the real server's address.
        Err(route::NoHop::NoNeigh) => stats::drop(Reason::DropNoNeigh, frame_len),
        Err(route::NoHop::NoRoute) => stats::drop(Reason::DropNoRoute, frame_len),
    }
}

/// The LVS/NAT ICMP path: an ICMP error about a NAT flow (fragmentation needed, port
/// unreachable, ...) is translated as the flow's packets are and sent on, to the real server or
/// to the client; any other ICMP goes to the kernel.
/// parse -> flow lookup -> translate -> route -> stats.
#[xdp]
pub fn xdplb_nat_icmp(ctx: XdpContext) -> u32 {
    let frame_len = (ctx.data_end() - ctx.data()) as u64;
    let Some(err) = parse::icmp_error(&ctx) else {
        return stats::pass(Reason::PassNotTcpUdp, frame_len);
    };
    if let Err(verdict) = local_config(&ctx, frame_len) {
        return verdict;
    }
    let about = nat::icmp::about(&err);
    // About a NAT flow: never translated and sent on with a damaged header.
    if about.is_some() {
        if !parse::checksum_ok(&ctx, &err.outer) {
            return stats::drop(Reason::DropBadChecksum, frame_len);
        }
        if let Err(reason) = ipv4_options::checked(&ctx, &err.outer) {
            return stats::drop(reason, frame_len);
        }
    }
    let translated = match about {
        // To the real server, about its reply: as a request is.
        Some(nat::icmp::About::Reply {
            service,
            real_id,
            real,
        }) => {
            let Some(here) = ether::dst_mac(&ctx) else {
                return stats::drop(Reason::DropMalformed, frame_len);
            };
            let egress = route::real_egress(real_id);
            let rip = [real.addr[12], real.addr[13], real.addr[14], real.addr[15]];
            let port = nat::port(&egress, err.quoted.sport);
            nat::icmp::translate(&ctx, &err, true, rip, true, rip, port).map(|()| {
                stats::forwarded(service, real_id, frame_len, false);
                route::send(&ctx, &route::toward(&ctx, here, real, egress.ifindex))
            })
        }
        // To the client, about its request: as a reply is.
        Some(nat::icmp::About::Request(reply)) => {
            let vip = [reply.vip[12], reply.vip[13], reply.vip[14], reply.vip[15]];
            let from = if err.outer.src == err.quoted.dst {
                vip
            } else {
                err.outer.src
            };
            nat::icmp::translate(&ctx, &err, false, from, false, vip, reply.vport).map(|()| {
                to_client(
                    &ctx,
                    &addr_from_v4(from),
                    &addr_from_v4(err.outer.dst),
                    err.outer.tot_len,
                    &reply,
                )
            })
        }
        None => return stats::pass(Reason::PassNotTcpUdp, frame_len),
    };
    translated.unwrap_or_else(|reason| untranslated(reason, frame_len))
}

/// LVS/NAT over IPv6, a request: tail-called by `xdplb_v6` with the flow's service and real
/// server: parse6 -> reply index -> rewrite (RIP:RPORT) -> route -> stats.
#[xdp]
pub fn xdplb_nat6(ctx: XdpContext) -> u32 {
    let frame_len = (ctx.data_end() - ctx.data()) as u64;
    let (Ok(pkt), Some(to)) = (parse6::parse6(&ctx), ipv6::handoff()) else {
        return stats::drop(Reason::DropMalformed, frame_len);
    };
    let (Some(real), Some(here)) = (schedule::real(to.service, to.real), ether::dst_mac(&ctx))
    else {
        return stats::drop(Reason::DropNoReal, frame_len);
    };
    let flags = parse::tcp_flags_at(&ctx, pkt.proto, pkt.l4_off);
    let flow = pkt.flow();
    let egress = route::real_egress(to.real);
    let port = nat::port(&egress, pkt.dport);
    if flags & TCP_FLAG_RST != 0 {
        nat::forget(&flow.nat_reply(&real.addr, port));
    } else if to.new_flow & HANDOFF_REPLY != 0 {
        let established = to.new_flow & HANDOFF_ESTABLISHED != 0;
        nat::remember(&flow, &real.addr, to.real, to.service, established);
    }
    if let Err(reason) = nat::rewrite6(&ctx, &pkt, true, real.addr, port) {
        return untranslated(reason, frame_len);
    }
    let hop = route::toward(&ctx, here, real, egress.ifindex);
    stats::forwarded(
        to.service,
        to.real,
        frame_len,
        to.new_flow & HANDOFF_NEW_FLOW != 0,
    );
    route::send(&ctx, &hop)
}

/// LVS/NAT over IPv6, a reply: a packet from RIP:RPORT to a client of a NAT flow leaves as the
/// service's (from [VIP]:port) toward the client's next hop, as `xdplb_nat_reply` does for
/// IPv4. parse6 -> reply lookup -> conntrack -> rewrite -> route -> stats.
#[xdp]
pub fn xdplb_nat6_reply(ctx: XdpContext) -> u32 {
    let frame_len = (ctx.data_end() - ctx.data()) as u64;
    let pkt = match parse6::parse6(&ctx) {
        Ok(p) => p,
        Err(reason) => return stats::pass(reason, frame_len),
    };
    // One key, the reply's and then the client's: this stack has no room for two.
    let mut flow = pkt.flow();
    let (found, config) = match nat_reply_of(&ctx, &flow, frame_len) {
        Ok(found) => found,
        Err(verdict) => return verdict,
    };
    if !parse6::is_whole6(&ctx, &pkt) {
        return stats::drop(Reason::DropMalformed, frame_len);
    }
    let flags = parse::tcp_flags_at(&ctx, pkt.proto, pkt.l4_off);
    nat_reply_conntrack_apart(&mut flow, &found, flags, config);
    let reply = found.reply;
    if let Err(reason) = reply6_rewrite(&ctx, &pkt, &reply) {
        return untranslated(reason, frame_len);
    }
    reply6_out(&ctx, &reply.vip, &pkt, &reply)
}

// The IPv6 reply path's stages below each take a frame of their own (not inlined): inlined
// together, the path's stack would outgrow BPF's 512 bytes.

/// The IPv6 reply's rewrite: from [VIP]:port.
#[inline(never)]
fn reply6_rewrite(ctx: &XdpContext, pkt: &parse6::Packet6, reply: &NatReply) -> Result<(), Reason> {
    nat::rewrite6(ctx, pkt, false, reply.vip, reply.vport)
}

/// The way to the client of an IPv6 reply (or ICMPv6 error) `pkt`, from `src`.
#[inline(never)]
fn reply6_out(ctx: &XdpContext, src: &Addr, pkt: &parse6::Packet6, reply: &NatReply) -> u32 {
    let tot_len = pkt.payload_len.saturating_add(40);
    to_client(ctx, src, &pkt.dst, tot_len, reply)
}

/// LVS/NAT over IPv6, ICMPv6 errors (destination unreachable, packet too big, time exceeded)
/// about NAT flows, translated both ways as `xdplb_nat_icmp` does for IPv4; any other ICMPv6
/// goes to the kernel. parse -> flow lookup -> translate -> route -> stats.
#[xdp]
pub fn xdplb_nat6_icmp(ctx: XdpContext) -> u32 {
    let frame_len = (ctx.data_end() - ctx.data()) as u64;
    let Some(err) = parse6::icmp_error6(&ctx) else {
        return stats::pass(Reason::PassNotTcpUdp, frame_len);
    };
    if let Err(verdict) = local_config(&ctx, frame_len) {
        return verdict;
    }
    match nat::icmp::about6(&err) {
        Some(nat::icmp::About::Reply {
            service,
            real_id,
            real,
        }) => icmp6_to_real(&ctx, &err, service, real_id, real),
        Some(nat::icmp::About::Request(reply)) => icmp6_to_client(&ctx, &err, &reply),
        None => stats::pass(Reason::PassNotTcpUdp, frame_len),
    }
}

/// An ICMPv6 error about a reply, on to the real server: as a request is.
#[inline(always)]
fn icmp6_to_real(
    ctx: &XdpContext,
    err: &parse6::IcmpError6,
    service: u32,
    real_id: u32,
    real: &RealServer,
) -> u32 {
    let frame_len = (ctx.data_end() - ctx.data()) as u64;
    let Some(here) = ether::dst_mac(ctx) else {
        return stats::drop(Reason::DropMalformed, frame_len);
    };
    let egress = route::real_egress(real_id);
    let port = nat::port(&egress, err.quoted.sport);
    // The real server's end, in a reply entry's shape.
    let to = NatReply {
        vip: real.addr,
        vport: port,
        _pad: 0,
        service,
        real: real_id,
    };
    if let Err(reason) = nat::icmp::translate6(ctx, err, true, &real.addr, &to) {
        return untranslated(reason, frame_len);
    }
    stats::forwarded(service, real_id, frame_len, false);
    route::send(ctx, &route::toward(ctx, here, real, egress.ifindex))
}

/// An ICMPv6 error about a request, on to the client: as a reply is, from the VIP when the
/// real server sent it. The way to the client is a program of its own, `xdplb_nat6_out` (the
/// FIB lookup's stack and the translation's do not fit one program's).
#[inline(always)]
fn icmp6_to_client(ctx: &XdpContext, err: &parse6::IcmpError6, reply: &NatReply) -> u32 {
    let frame_len = (ctx.data_end() - ctx.data()) as u64;
    let from = if err.outer.src == err.quoted.dst {
        reply.vip
    } else {
        err.outer.src
    };
    if let Err(reason) = nat::icmp::translate6(ctx, err, false, &from, reply) {
        return untranslated(reason, frame_len);
    }
    ipv6::to_nat6_out(
        ctx,
        FlowHandoff {
            service: reply.service,
            real: reply.real,
            new_flow: 0,
        },
    );
    stats::drop(Reason::DropNoRoute, frame_len)
}

/// A translated IPv6 packet of a NAT flow on its way to the client, by the kernel's FIB,
/// tail-called with the flow's service and real server: l3 -> route -> stats.
#[xdp]
pub fn xdplb_nat6_out(ctx: XdpContext) -> u32 {
    let frame_len = (ctx.data_end() - ctx.data()) as u64;
    let (Ok((l3, _)), Some(to)) = (parse::l3(&ctx), ipv6::handoff()) else {
        return stats::drop(Reason::DropMalformed, frame_len);
    };
    let Some(ip) = parse6::fixed6(&ctx, l3) else {
        return stats::drop(Reason::DropMalformed, frame_len);
    };
    let flow_of = NatReply {
        vip: ip.src,
        vport: 0,
        _pad: 0,
        service: to.service,
        real: to.real,
    };
    to_client(&ctx, &ip.src, &ip.dst, ip.tot_len, &flow_of)
}

/// The reply lookup of an LVS/NAT reply path, either family: the NAT flow `flow` (the reply's
/// key) belongs to and the director's settings, or the verdict for a packet that is not this
/// director's to translate.
#[inline(always)]
fn nat_reply_of(
    ctx: &XdpContext,
    flow: &FlowKey,
    frame_len: u64,
) -> Result<(nat::Found, &'static DirectorConfig), u32> {
    let Some(found) = nat::reply_of(flow) else {
        return Err(stats::pass(Reason::PassNoService, frame_len));
    };
    Ok((found, local_config(ctx, frame_len)?))
}

/// The director's settings for a frame sent to this director's own MAC, or the verdict for
/// one that is not its to act on (no settings yet, another host's MAC, a backup's).
#[inline(always)]
fn local_config(ctx: &XdpContext, frame_len: u64) -> Result<&'static DirectorConfig, u32> {
    let Some(config) = config::get() else {
        return Err(stats::pass(Reason::PassNoService, frame_len));
    };
    if host::owner(ctx, config) != host::Owner::Local {
        return Err(stats::pass(Reason::PassOtherHost, frame_len));
    }
    Ok(config)
}

/// The conntrack stage of an LVS/NAT reply, `flow` the reply's key (made the client's): the
/// server's RST ends the flow (and its reply index entry), anything else refreshes it; a
/// handshake the server's packet ends, or a FIN, ranks the reply entry again. A busy
/// established connection's other replies in the same tick ([`nat::Found::busy`]) leave the
/// connection table alone unless they carry a SYN, FIN or RST: the first of the tick did what
/// a plain reply does there (the refresh every few seconds, the second-chance mark).
#[inline(always)]
fn nat_reply_conntrack(flow: &mut FlowKey, found: &nat::Found, flags: u8, config: &DirectorConfig) {
    if found.busy && flags & (TCP_FLAG_SYN | TCP_FLAG_FIN | TCP_FLAG_RST) == 0 {
        return;
    }
    let reply = &found.reply;
    let rst = flags & TCP_FLAG_RST != 0;
    if rst {
        nat::forget(flow);
    }
    nat::to_client_flow(flow, reply);
    if rst {
        conntrack::close(flow, reply.service, reply.real, true, config);
    } else {
        let bits = conntrack::track(flow, flags, conntrack::now(), config);
        if bits != 0 {
            nat::rank(found.slot, bits & HANDOFF_ESTABLISHED != 0);
        }
    }
}

/// [`nat_reply_conntrack`] in a frame of its own, not inlined: the IPv6 reply path's stack has
/// no room for it (the IPv4 one keeps it inline, without a call).
#[inline(never)]
fn nat_reply_conntrack_apart(
    flow: &mut FlowKey,
    found: &nat::Found,
    flags: u8,
    config: &DirectorConfig,
) {
    nat_reply_conntrack(flow, found, flags, config)
}
