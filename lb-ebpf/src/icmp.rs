//! ICMP "fragmentation needed" (type 3, code 4), built from the packet that did not fit: the
//! client's TCP learns the path MTU through the director and lowers its segment size.

use aya_ebpf::{helpers::bpf_xdp_adjust_tail, programs::XdpContext};
use lb_common::{
    csum,
    ipv4::{self, HEADER_LEN as IPV4_HLEN},
    DirectorConfig, IPPROTO_ICMP,
};

use crate::{
    ether::{self, adjust_head, EthHeader},
    parse::{ptr_at, read, Packet, ICMP_DEST_UNREACH, ICMP_HLEN},
};

const ICMP_FRAG_NEEDED: u8 = 4;
/// What an ICMP error quotes: the offending IP header (up to 60 bytes) and 8 bytes after it.
const MAX_QUOTE: usize = 60 + 8;
const TTL: u8 = 64;

/// Turns the frame into the ICMP error for the client, from the VIP (the address the client
/// sent to), to be sent back with XDP_TX; the MTU it gives leaves room for a tunnel's outer
/// header of `outer` bytes (IPv4's 20, IPv6's 40). False if the frame could not be resized.
#[inline(always)]
pub fn frag_needed(ctx: &XdpContext, pkt: &Packet, cfg: &DirectorConfig, outer: usize) -> bool {
    let l3 = pkt.l3_off;
    let quote = pkt.l4_off - l3 + 8;
    // Room for the new IP and ICMP headers in front of the quoted original IP header.
    let grow = IPV4_HLEN + ICMP_HLEN;
    if !answer_frame(ctx, l3, cfg.mac, grow, quote) {
        return false;
    }
    let ip = ipv4::header(
        0,
        (grow + quote) as u16,
        0,
        TTL,
        IPPROTO_ICMP,
        pkt.dst,
        pkt.src,
    );
    let next_hop_mtu = cfg.mtu.saturating_sub(outer as u32) as u16;
    let mut icmp = [ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, 0, 0, 0, 0, 0, 0];
    icmp[6..8].copy_from_slice(&next_hop_mtu.to_be_bytes());
    // Checksum over the ICMP header and the quote.
    let Some(quoted) = sum_quote::<MAX_QUOTE>(ctx, l3 + grow, quote) else {
        return false;
    };
    let sum = csum::sum(&icmp) + quoted;
    icmp[2..4].copy_from_slice(&csum::fold(sum).to_be_bytes());
    let (Some(ip_at), Some(icmp_at)) = (
        ptr_at::<[u8; 20]>(ctx, l3),
        ptr_at::<[u8; 8]>(ctx, l3 + IPV4_HLEN),
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

/// Makes the frame an answer to its sender, from `mac`: the Ethernet addresses swapped, `grow`
/// bytes of room in front of the packet at `l3` for the new headers, and everything after the
/// packet's first `quote` bytes cut. False if the frame could not be resized.
#[inline(always)]
pub fn answer_frame(ctx: &XdpContext, l3: usize, mac: [u8; 6], grow: usize, quote: usize) -> bool {
    let Some(mut eth) = EthHeader::read(ctx, l3) else {
        return false;
    };
    (eth.dst, eth.src) = (eth.src, ether::mac(mac));
    if !adjust_head(ctx, -(grow as i32)) || !eth.write(ctx) {
        return false;
    }
    let len = ctx.data_end() - ctx.data();
    let keep = l3 + grow + quote;
    // SAFETY: the helper checks the new length itself.
    keep <= len && unsafe { bpf_xdp_adjust_tail(ctx.ctx, keep as i32 - len as i32) } == 0
}

/// The one's-complement sum (not folded) of the `len` bytes at `start` (an even number, at most
/// `MAX`), two at a time in a loop bounded for the verifier; None if they are not all there.
#[inline(always)]
pub fn sum_quote<const MAX: usize>(ctx: &XdpContext, start: usize, len: usize) -> Option<u32> {
    let mut sum = 0u32;
    let mut i = 0;
    while i < MAX {
        if i >= len {
            break;
        }
        let w = read::<[u8; 2]>(ctx, start + i)?;
        sum += u16::from_be_bytes(w) as u32;
        i += 2;
    }
    Some(sum)
}
