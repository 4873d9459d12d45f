//! IPv6 parsing: the fixed header, then the extension headers that may come before TCP/UDP
//! (hop-by-hop options, routing, destination options; at most [`MAX_EXT`] of them) to the
//! transport header. Fragments, longer chains and anything else it cannot classify are the
//! kernel's, as for IPv4.

use aya_ebpf::programs::XdpContext;
use lb_common::{Addr, FlowKey, Reason, IPPROTO_TCP, IPPROTO_UDP};

use crate::parse::{be16, l3, l4_min, read, transport_is_whole, ETH_P_IPV6};

const IPV6_HLEN: usize = 40;
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_DEST: u8 = 60;
/// Extension headers walked at most: a hop-by-hop, a routing and two destination options
/// headers is the longest order RFC 8200 recommends before the transport header.
pub const MAX_EXT: usize = 4;

/// What the later stages need to know about an IPv6 TCP/UDP packet.
pub struct Packet6 {
    /// Offset of the IPv6 header in the frame.
    pub l3_off: usize,
    /// Offset of the TCP/UDP header, after any extension headers.
    pub l4_off: usize,
    pub src: Addr,
    pub dst: Addr,
    pub proto: u8,
    /// Ports, host byte order.
    pub sport: u16,
    pub dport: u16,
    /// The payload length: every byte after the fixed header.
    pub payload_len: u16,
}

impl Packet6 {
    /// The connection table's key.
    #[inline(always)]
    pub fn flow(&self) -> FlowKey {
        FlowKey {
            src: self.src,
            dst: self.dst,
            sport: self.sport,
            dport: self.dport,
            proto: self.proto,
            _pad: [0; 3],
        }
    }
}

/// What the fixed IPv6 header at `l3_off` says, without the extension headers' walk: for
/// stages that only route or hand the packet on.
pub struct Fixed6 {
    /// The next header (TCP or UDP only when no extension header comes first).
    pub next: u8,
    pub src: Addr,
    pub dst: Addr,
    /// The packet's length with the fixed header, as the FIB lookup's MTU check wants it.
    pub tot_len: u16,
}

/// The fixed IPv6 header at `l3_off` (None if the frame is too short for it). Field by field,
/// small reads: the director's program, at the verifier's limits, takes these where one
/// 40-byte copy left it a register it could not follow.
#[inline(always)]
pub fn fixed6(ctx: &XdpContext, l3_off: usize) -> Option<Fixed6> {
    let payload_len: [u8; 2] = read(ctx, l3_off + 4)?;
    Some(Fixed6 {
        next: read(ctx, l3_off + 6)?,
        src: read(ctx, l3_off + 8)?,
        dst: read(ctx, l3_off + 24)?,
        tot_len: be16(payload_len).saturating_add(IPV6_HLEN as u16),
    })
}

/// The IPv6 TCP/UDP packet in the frame, or why it is the kernel's.
#[inline(always)]
pub fn parse6(ctx: &XdpContext) -> Result<Packet6, Reason> {
    let (l3_off, ethertype) = l3(ctx)?;
    if ethertype != ETH_P_IPV6 {
        return Err(Reason::PassNotIpv4);
    }
    let ip: [u8; IPV6_HLEN] = read(ctx, l3_off).ok_or(Reason::PassUnparsed)?;
    if ip[0] >> 4 != 6 {
        return Err(Reason::PassUnparsed);
    }
    let mut next = ip[6];
    let mut l4_off = l3_off + IPV6_HLEN;
    // Bounded, for the verifier: each step reads the next header's type and length.
    let mut i = 0;
    while i < MAX_EXT {
        match next {
            IPPROTO_TCP | IPPROTO_UDP => break,
            // Hop-by-hop options only right after the fixed header (RFC 8200; the kernel
            // drops it anywhere else).
            NEXTHDR_HOP if i != 0 => return Err(Reason::PassUnparsed),
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST => {
                let h: [u8; 2] = read(ctx, l4_off).ok_or(Reason::PassUnparsed)?;
                next = h[0];
                l4_off += (h[1] as usize + 1) * 8;
            }
            NEXTHDR_FRAGMENT => return Err(Reason::PassFragment),
            _ => return Err(Reason::PassNotTcpUdp),
        }
        i += 1;
    }
    match next {
        IPPROTO_TCP | IPPROTO_UDP => {}
        NEXTHDR_FRAGMENT => return Err(Reason::PassFragment),
        // A chain longer than the walk: nothing the director should act on.
        NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST => return Err(Reason::PassUnparsed),
        _ => return Err(Reason::PassNotTcpUdp),
    }
    let ports: [u8; 4] = read(ctx, l4_off).ok_or(Reason::PassUnparsed)?;
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(&ip[8..24]);
    dst.copy_from_slice(&ip[24..40]);
    Ok(Packet6 {
        l3_off,
        l4_off,
        src,
        dst,
        proto: next,
        sport: be16([ports[0], ports[1]]),
        dport: be16([ports[2], ports[3]]),
        payload_len: be16([ip[4], ip[5]]),
    })
}

/// Whether a packet for a service is complete and self-consistent (as `parse::check` for
/// IPv4): the payload length covers the extension headers and the transport header and fits
/// in the frame, and the transport header agrees.
#[inline(always)]
pub fn is_whole6(ctx: &XdpContext, pkt: &Packet6) -> bool {
    let frame_len = ctx.data_end() - ctx.data();
    let payload = pkt.payload_len as usize;
    let ext = pkt.l4_off - pkt.l3_off - IPV6_HLEN;
    let l4_min = l4_min(pkt.proto);
    if pkt.l4_off + l4_min > frame_len
        || payload < ext + l4_min
        || pkt.l3_off + IPV6_HLEN + payload > frame_len
    {
        return false;
    }
    transport_is_whole(ctx, pkt.proto, pkt.l4_off, payload - ext)
}

/// The hop limit's offset in the IPv6 header.
const IPV6_HOP_LIMIT: usize = 7;

/// What the kernel checks of an IPv6 header before IPVS sees the packet (ipv6_rcv): a source
/// that is not unspecified, loopback, multicast or IPv4-mapped; and, as for IPv4's TTL, a hop
/// limit above 0. The reason to drop it if not.
#[inline(always)]
pub fn insane6(ctx: &XdpContext, pkt: &Packet6) -> Option<Reason> {
    if is_martian6(&pkt.src) {
        return Some(Reason::DropBadSource);
    }
    match read::<u8>(ctx, pkt.l3_off + IPV6_HOP_LIMIT) {
        Some(0) => Some(Reason::DropTtlZero),
        _ => None,
    }
}

/// A source no client can have: ::, ::1, multicast (ff00::/8), IPv4-mapped (::ffff:0:0/96).
/// Byte by byte: the IPv6 programs' stacks are full.
#[inline(always)]
fn is_martian6(a: &Addr) -> bool {
    if a[0] == 0xff {
        return true;
    }
    let head = a[0] | a[1] | a[2] | a[3] | a[4] | a[5] | a[6] | a[7] | a[8] | a[9];
    if head != 0 {
        return false;
    }
    let mapped = a[10] == 0xff && a[11] == 0xff;
    let low = a[10] | a[11] | a[12] | a[13] | a[14] == 0 && a[15] <= 1;
    mapped || low
}

/// ICMPv6's next header, and the errors IPVS translates for NAT flows.
const NEXTHDR_ICMP: u8 = 58;
const ICMPV6_DEST_UNREACH: u8 = 1;
const ICMPV6_PKT_TOOBIG: u8 = 2;
const ICMPV6_TIME_EXCEED: u8 = 3;
const ICMPV6_HLEN: usize = 8;

/// An ICMPv6 error about a TCP/UDP packet.
pub struct IcmpError6 {
    /// The error's own IPv6 header; `l4_off` is where the ICMPv6 header is, the ports are zero.
    pub outer: Packet6,
    /// The quoted packet's headers, inside the ICMPv6 message.
    pub quoted: Packet6,
}

/// The ICMPv6 error in the frame (destination unreachable, packet too big, time exceeded)
/// about a TCP/UDP packet, if it is one: ICMPv6 right after the fixed header, the quoted
/// packet's transport header right after its own (errors about packets with extension headers
/// go to the kernel), the quote's ports inside the packet and the packet inside the frame.
#[inline(always)]
pub fn icmp_error6(ctx: &XdpContext) -> Option<IcmpError6> {
    let (l3_off, ethertype) = l3(ctx).ok()?;
    if ethertype != ETH_P_IPV6 {
        return None;
    }
    let outer = read::<[u8; IPV6_HLEN]>(ctx, l3_off)?;
    let l4_off = l3_off + IPV6_HLEN;
    // Type and code: a two-byte read (see parse::icmp_error).
    let kind = read::<[u8; 2]>(ctx, l4_off)?;
    if outer[0] >> 4 != 6
        || outer[6] != NEXTHDR_ICMP
        || !matches!(
            kind[0],
            ICMPV6_DEST_UNREACH | ICMPV6_PKT_TOOBIG | ICMPV6_TIME_EXCEED
        )
    {
        return None;
    }
    let q_l3 = l4_off + ICMPV6_HLEN;
    let quoted = read::<[u8; IPV6_HLEN]>(ctx, q_l3)?;
    let ports = read::<[u8; 4]>(ctx, q_l3 + IPV6_HLEN)?;
    let payload_len = be16([outer[4], outer[5]]);
    let end = l3_off + IPV6_HLEN + payload_len as usize;
    if quoted[0] >> 4 != 6
        || (quoted[6] != IPPROTO_TCP && quoted[6] != IPPROTO_UDP)
        || q_l3 + IPV6_HLEN + 8 > end
        || end > ctx.data_end() - ctx.data()
    {
        return None;
    }
    let addr = |h: &[u8; IPV6_HLEN], at: usize| {
        let mut a = [0u8; 16];
        a.copy_from_slice(&h[at..at + 16]);
        a
    };
    Some(IcmpError6 {
        outer: Packet6 {
            l3_off,
            l4_off,
            src: addr(&outer, 8),
            dst: addr(&outer, 24),
            proto: NEXTHDR_ICMP,
            sport: 0,
            dport: 0,
            payload_len,
        },
        quoted: Packet6 {
            l3_off: q_l3,
            l4_off: q_l3 + IPV6_HLEN,
            src: addr(&quoted, 8),
            dst: addr(&quoted, 24),
            proto: quoted[6],
            sport: be16([ports[0], ports[1]]),
            dport: be16([ports[2], ports[3]]),
            payload_len: be16([quoted[4], quoted[5]]),
        },
    })
}
