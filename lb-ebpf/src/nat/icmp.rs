//! ICMP errors about LVS/NAT flows, translated as the flows' own packets are, so path MTU
//! discovery and "port unreachable" work through the director (as IPVS does):
//! - about a reply (sent to the VIP by a router on the clients' side, or by a client): on to the
//!   real server, the outer destination becoming its address and the quoted source RIP:RPORT;
//! - about a request (sent to the client by the real server, or by a router on the inside): on
//!   to the client, the quoted destination becoming VIP:port, and the outer source the VIP when
//!   it was the real server's address.
//!
//! Either way the key is the quoted packet's flow reversed: the connection table's key of the
//! client's flow, or NAT_REPLIES' key of the reply's.

use lb_common::{
    addr_from_v4, csum, Addr, FlowKey, NatReply, RealServer, Reason, FWD_NAT, IPPROTO_UDP,
};

use super::{
    forward_ip, forward_ip6, l4_check, may_be_real, reply_of, words, IP6_DST, IP6_SRC, IP_CSUM,
    IP_DST, IP_SRC,
};
use crate::{
    conntrack, lookup,
    parse::{ptr_at, IcmpError},
    parse6::IcmpError6,
    schedule,
};
use aya_ebpf::programs::XdpContext;

/// Which NAT flow an ICMP error is about.
pub enum About {
    /// A reply of the client's flow, which the connection table binds to this real server.
    Reply {
        service: u32,
        real_id: u32,
        real: &'static RealServer,
    },
    /// A request, whose reply is translated this way.
    Request(NatReply),
}

/// The NAT flow the error is about, if any. An error goes to the source of the packet it
/// quotes; any other is not one the director has a part in.
#[inline(always)]
pub fn about(err: &IcmpError) -> Option<About> {
    let q = &err.quoted;
    if err.outer.dst != q.src {
        return None;
    }
    let key = FlowKey {
        src: addr_from_v4(q.dst),
        dst: addr_from_v4(q.src),
        sport: q.dport,
        dport: q.sport,
        proto: q.proto,
        _pad: [0; 3],
    };
    about_flow(&key)
}

/// [`about`] for an ICMPv6 error.
#[inline(always)]
pub fn about6(err: &IcmpError6) -> Option<About> {
    let q = &err.quoted;
    if err.outer.dst != q.src {
        return None;
    }
    let key = FlowKey {
        src: q.dst,
        dst: q.src,
        sport: q.dport,
        dport: q.sport,
        proto: q.proto,
        _pad: [0; 3],
    };
    about_flow(&key)
}

/// The NAT flow of `key`, the quoted packet's flow reversed: a client's (the quote was a reply)
/// or a reply's (the quote was a request).
#[inline(always)]
fn about_flow(key: &FlowKey) -> Option<About> {
    if lookup::may_be_vip(&key.dst) {
        if let Some((service, real_id)) = conntrack::binding(key) {
            let real = schedule::real(service, real_id)?;
            return (real.method == FWD_NAT).then_some(About::Reply {
                service,
                real_id,
                real,
            });
        }
    }
    if may_be_real(&key.src) {
        return reply_of(key).map(|found| About::Request(found.reply));
    }
    None
}

/// One end of the quoted packet: its source (a reply's: `src`) or destination becomes
/// `addr`:`port`, and the outer header's destination (`outer_dst`) or source becomes
/// `outer_addr` (the same address: unchanged but for the TTL). The quoted IP checksum, the
/// quoted transport checksum where the quote holds it (UDP's always; TCP's in longer quotes,
/// as Linux sends), and the ICMP checksum follow.
#[inline(always)]
pub fn translate(
    ctx: &XdpContext,
    err: &IcmpError,
    outer_dst: bool,
    outer_addr: [u8; 4],
    src: bool,
    addr: [u8; 4],
    port: u16,
) -> Result<(), Reason> {
    let (o, q) = (&err.outer, &err.quoted);
    let (outer_off, outer_old) = if outer_dst {
        (IP_DST, o.dst)
    } else {
        (IP_SRC, o.src)
    };
    forward_ip(ctx, o.l3_off, outer_off, outer_old, outer_addr)?;
    let (addr_off, port_off, old_addr, old_port) = if src {
        (IP_SRC, 0, q.src, q.sport)
    } else {
        (IP_DST, 2, q.dst, q.dport)
    };
    // What the ICMP checksum covers changes by these words: the quoted address and IP
    // checksum, port and transport checksum.
    let mut old = csum::sum(&old_addr) + old_port as u32;
    let mut new = csum::sum(&addr) + port as u32;

    let ip_at = ptr_at::<[u8; 20]>(ctx, q.l3_off).ok_or(Reason::DropMalformed)?;
    // SAFETY: bounds-checked by ptr_at; unaligned-safe (as every access below).
    let mut ip = unsafe { crate::frame::load(ip_at) };
    let check = u16::from_be_bytes([ip[IP_CSUM], ip[IP_CSUM + 1]]);
    let ip_check = csum::update(check, csum::sum(&old_addr), csum::sum(&addr));
    ip[addr_off..addr_off + 4].copy_from_slice(&addr);
    ip[IP_CSUM..IP_CSUM + 2].copy_from_slice(&ip_check.to_be_bytes());
    unsafe { ip_at.write_unaligned(ip) };
    old += check as u32;
    new += ip_check as u32;

    let (pseudo_old, pseudo_new) = (words(&old_addr, old_port), words(&addr, port));
    let l4_at = ptr_at::<[u8; 8]>(ctx, q.l4_off).ok_or(Reason::DropMalformed)?;
    let mut l4 = unsafe { crate::frame::load(l4_at) };
    l4[port_off..port_off + 2].copy_from_slice(&port.to_be_bytes());
    if q.proto == IPPROTO_UDP {
        let check = u16::from_be_bytes([l4[6], l4[7]]);
        let udp_check = l4_check(check, true, pseudo_old, pseudo_new);
        l4[6..8].copy_from_slice(&udp_check.to_be_bytes());
        old += check as u32;
        new += udp_check as u32;
    }
    unsafe { l4_at.write_unaligned(l4) };
    // TCP's checksum, 16 bytes in, if the ICMP message quotes that far.
    if q.proto != IPPROTO_UDP && q.l4_off + TCP_CHECK + 2 <= o.l3_off + o.tot_len as usize {
        let (was, now) = quoted_check(ctx, q.l4_off + TCP_CHECK, false, pseudo_old, pseudo_new)?;
        old += was;
        new += now;
    }
    icmp_check(ctx, o.l4_off, old, new)
}

/// Updates the quoted transport checksum at `off` for words summing to `old` now summing to
/// `new`; returns the old and new checksum, which the ICMP checksum covers.
#[inline(always)]
fn quoted_check(
    ctx: &XdpContext,
    off: usize,
    udp: bool,
    old: u32,
    new: u32,
) -> Result<(u32, u32), Reason> {
    let at = ptr_at::<[u8; 2]>(ctx, off).ok_or(Reason::DropMalformed)?;
    // SAFETY: bounds-checked by ptr_at; unaligned-safe.
    let check = u16::from_be_bytes(unsafe { crate::frame::load(at) });
    let updated = l4_check(check, udp, old, new);
    // SAFETY: as above.
    unsafe { at.write_unaligned(updated.to_be_bytes()) };
    Ok((check as u32, updated as u32))
}

/// Updates the ICMP (or ICMPv6) checksum of the header at `off` for words summing to `old`
/// now summing to `new`.
#[inline(always)]
fn icmp_check(ctx: &XdpContext, off: usize, old: u32, new: u32) -> Result<(), Reason> {
    let icmp_at = ptr_at::<[u8; 4]>(ctx, off).ok_or(Reason::DropMalformed)?;
    // SAFETY: bounds-checked by ptr_at; unaligned-safe.
    let mut icmp = unsafe { crate::frame::load(icmp_at) };
    let check = csum::update(u16::from_be_bytes([icmp[2], icmp[3]]), old, new);
    icmp[2..4].copy_from_slice(&check.to_be_bytes());
    // SAFETY: as above.
    unsafe { icmp_at.write_unaligned(icmp) };
    Ok(())
}

/// Where the TCP checksum is in its header.
const TCP_CHECK: usize = 16;

/// [`translate`] for an ICMPv6 error, toward the real server (`to_real`: the outer
/// destination and the quoted source become `addr`, with `port`) or the client (the outer
/// source becomes `outer_addr`, the quoted destination `addr`:`port`): the outer address (in
/// the ICMPv6 checksum's pseudo-header) and hop limit, the quoted address and port, the quoted
/// transport checksum where the quote holds it, and the ICMPv6 checksum. IPv6 headers have no
/// checksum of their own. Written in place, field by field, in a frame of its own (not
/// inlined): the program's stack has no room for header copies.
#[inline(never)]
pub fn translate6(
    ctx: &XdpContext,
    err: &IcmpError6,
    to_real: bool,
    outer_addr: &Addr,
    to: &NatReply,
) -> Result<(), Reason> {
    let (outer_dst, src, addr, port) = (to_real, to_real, &to.vip, to.vport);
    let (o, q) = (&err.outer, &err.quoted);
    let (outer_off, outer_old) = if outer_dst {
        (IP6_DST, &o.dst)
    } else {
        (IP6_SRC, &o.src)
    };
    forward_ip6(ctx, o.l3_off, outer_off, outer_addr)?;
    let (addr_off, port_off, old_addr, old_port) = if src {
        (IP6_SRC, 0, &q.src, q.sport)
    } else {
        (IP6_DST, 2, &q.dst, q.dport)
    };
    // What the ICMPv6 checksum covers changes by these words: the outer address (pseudo-header),
    // the quoted address, port and transport checksum.
    let (pseudo_old, pseudo_new) = (words(old_addr, old_port), words(addr, port));
    let mut old = csum::sum(outer_old) + pseudo_old;
    let mut new = csum::sum(outer_addr) + pseudo_new;
    let (Some(q_addr_at), Some(port_at)) = (
        ptr_at::<Addr>(ctx, q.l3_off + addr_off),
        ptr_at::<[u8; 2]>(ctx, q.l4_off + port_off),
    ) else {
        return Err(Reason::DropMalformed);
    };
    // SAFETY: bounds-checked by ptr_at; unaligned-safe (as every access below).
    unsafe {
        crate::frame::store(q_addr_at, *addr);
        crate::frame::store(port_at, port.to_be_bytes());
    }
    // UDP's checksum is always quoted (the quote holds 8 bytes of it at least); TCP's where the
    // message quotes 18 bytes of its header.
    let (check_off, udp) = if q.proto == IPPROTO_UDP {
        (6, true)
    } else {
        (TCP_CHECK, false)
    };
    let end = o.l3_off + 40 + o.payload_len as usize;
    if q.l4_off + check_off + 2 <= end {
        let (was, now) = quoted_check(ctx, q.l4_off + check_off, udp, pseudo_old, pseudo_new)?;
        old += was;
        new += now;
    }
    icmp_check(ctx, o.l4_off, old, new)
}
