//! ICMPv6 Packet Too Big (type 2), built from a packet that no longer fits once tunnelled: IPv6
//! routers never fragment, so the client's TCP must learn the smaller MTU, from the VIP it sent
//! to, and lower its segment size.

use aya_ebpf::programs::XdpContext;
use lb_common::{csum, ipv6, DirectorConfig};

use crate::{
    icmp::{answer_frame, sum_quote},
    parse::ptr_at,
    parse6::Packet6,
};

const IPV6_HLEN: usize = 40;
const ICMP6_HLEN: usize = 8;
const NEXTHDR_ICMPV6: u8 = 58;
const PACKET_TOO_BIG: u8 = 2;
const HOP_LIMIT: u8 = 64;
/// The quote: the packet's start, through its transport header's first bytes (what the client
/// needs to find its connection), at most this many bytes and an even number of them.
const MAX_QUOTE: usize = 128;
/// What the tunnel's outer header takes of the MTU.
const TUNNEL_OVERHEAD: u32 = IPV6_HLEN as u32;

/// Turns the frame into the Packet Too Big for the client, to be sent back with XDP_TX; false
/// if it could not (no room, or a quote that would not reach the ports).
#[inline(always)]
pub fn packet_too_big(ctx: &XdpContext, pkt: &Packet6, cfg: &DirectorConfig) -> bool {
    let l3 = pkt.l3_off;
    let whole = IPV6_HLEN + pkt.payload_len as usize;
    let quote = if whole < MAX_QUOTE { whole } else { MAX_QUOTE } & !1;
    if pkt.l4_off + 8 > l3 + quote {
        return false;
    }
    let grow = IPV6_HLEN + ICMP6_HLEN;
    if !answer_frame(ctx, l3, cfg.mac, grow, quote) {
        return false;
    }
    let payload = (ICMP6_HLEN + quote) as u16;
    let mut icmp = [PACKET_TOO_BIG, 0, 0, 0, 0, 0, 0, 0];
    icmp[4..8].copy_from_slice(&(cfg.mtu - TUNNEL_OVERHEAD).to_be_bytes());
    // From the VIP to the client: the pseudo-header, the ICMPv6 header and the quote.
    let Some(quoted) = sum_quote::<MAX_QUOTE>(ctx, l3 + grow, quote) else {
        return false;
    };
    let sum = csum::sum(&pkt.dst)
        + csum::sum(&pkt.src)
        + payload as u32
        + NEXTHDR_ICMPV6 as u32
        + csum::sum(&icmp)
        + quoted;
    icmp[2..4].copy_from_slice(&csum::fold(sum).to_be_bytes());
    let first = ipv6::first_word(0);
    let ip = ipv6::header(
        first,
        payload,
        NEXTHDR_ICMPV6,
        HOP_LIMIT,
        &pkt.dst,
        &pkt.src,
    );
    let (Some(ip_at), Some(icmp_at)) = (
        ptr_at::<[u8; IPV6_HLEN]>(ctx, l3),
        ptr_at::<[u8; ICMP6_HLEN]>(ctx, l3 + IPV6_HLEN),
    ) else {
        return false;
    };
    // SAFETY: bounds-checked by ptr_at.
    unsafe {
        crate::frame::store(ip_at, ip);
        crate::frame::store(icmp_at, icmp);
    }
    true
}
