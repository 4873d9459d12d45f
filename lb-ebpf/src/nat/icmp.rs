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

use lb_common::{addr_from_v4, csum, FlowKey, NatReply, RealServer, Reason, FWD_NAT, IPPROTO_UDP};

use super::{forward_ip, l4_check, may_be_real, reply_of, words, IP_CSUM, IP_DST, IP_SRC};
use crate::{
    conntrack, lookup,
    parse::{ptr_at, IcmpError},
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
    if lookup::may_be_vip(&addr_from_v4(q.src)) {
        if let Some((service, real_id)) = conntrack::binding(&key) {
            let real = schedule::real(service, real_id)?;
            return (real.method == FWD_NAT).then_some(About::Reply {
                service,
                real_id,
                real,
            });
        }
    }
    if may_be_real(&lb_common::addr_from_v4(q.dst)) {
        return reply_of(&key).map(About::Request);
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
    let mut ip = unsafe { ip_at.read_unaligned() };
    let check = u16::from_be_bytes([ip[IP_CSUM], ip[IP_CSUM + 1]]);
    let ip_check = csum::update(check, csum::sum(&old_addr), csum::sum(&addr));
    ip[addr_off..addr_off + 4].copy_from_slice(&addr);
    ip[IP_CSUM..IP_CSUM + 2].copy_from_slice(&ip_check.to_be_bytes());
    unsafe { ip_at.write_unaligned(ip) };
    old += check as u32;
    new += ip_check as u32;

    let (pseudo_old, pseudo_new) = (words(&old_addr, old_port), words(&addr, port));
    let l4_at = ptr_at::<[u8; 8]>(ctx, q.l4_off).ok_or(Reason::DropMalformed)?;
    let mut l4 = unsafe { l4_at.read_unaligned() };
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
        let at = ptr_at::<[u8; 2]>(ctx, q.l4_off + TCP_CHECK).ok_or(Reason::DropMalformed)?;
        let check = u16::from_be_bytes(unsafe { at.read_unaligned() });
        let tcp_check = l4_check(check, false, pseudo_old, pseudo_new);
        unsafe { at.write_unaligned(tcp_check.to_be_bytes()) };
        old += check as u32;
        new += tcp_check as u32;
    }

    let icmp_at = ptr_at::<[u8; 4]>(ctx, o.l4_off).ok_or(Reason::DropMalformed)?;
    let mut icmp = unsafe { icmp_at.read_unaligned() };
    let check = csum::update(u16::from_be_bytes([icmp[2], icmp[3]]), old, new);
    icmp[2..4].copy_from_slice(&check.to_be_bytes());
    unsafe { icmp_at.write_unaligned(icmp) };
    Ok(())
}

/// Where the TCP checksum is in its header.
const TCP_CHECK: usize = 16;
