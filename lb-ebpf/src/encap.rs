//! IPIP: LVS/TUN encapsulation on the director (IPv4 in IPv4, IPv6 in IPv6), and decapsulation
//! on real servers (`xdplb decap`), so real servers need no ipip kernel module.

use aya_ebpf::{
    bindings::xdp_action::XDP_PASS,
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
    programs::XdpContext,
};
use lb_common::{
    addr_from_v4,
    ipv4::{self, DF, HEADER_LEN as IPV4_HLEN},
    ipv6, Addr, Counters, DirectorConfig, RealServer, Reason, IPPROTO_IPIP,
};

use crate::{
    ether::{adjust_head, EthHeader},
    parse::{be16, ipv4_offset, l3, ptr_at, read, Packet, ETH_P_IPV4, ETH_P_IPV6},
    parse6::Packet6,
};
/// TTL of the outer header: a fresh hop budget for the path to the real server.
const OUTER_TTL: u8 = 64;

/// Makes room for an outer header of `len` bytes in front of the packet and writes the frame's
/// ethertype (and VLAN tag) before it; its addresses are the caller's route::send's to write.
/// False without headroom.
#[inline(always)]
fn grow(ctx: &XdpContext, eth: &EthHeader, len: usize) -> bool {
    adjust_head(ctx, -(len as i32)) && eth.write_type(ctx)
}

/// Wraps the packet in an outer IPv4 header to `real`, leaving the Ethernet addresses to the
/// caller's route::send. The inner packet is kept byte for byte. Err says why it could not be sent:
/// too big for the interface (with DF: the caller answers with ICMP), or no headroom.
#[inline(always)]
pub fn ipip(
    ctx: &XdpContext,
    pkt: &Packet,
    cfg: &DirectorConfig,
    real: &RealServer,
) -> Result<(), Reason> {
    let l3 = pkt.l3_off;
    let (tos, df) = fits(ctx, pkt, IPV4_HLEN, cfg)?;
    let eth = EthHeader::read(ctx, l3).ok_or(Reason::DropMalformed)?;
    if !grow(ctx, &eth, IPV4_HLEN) {
        return Err(Reason::DropNoRoom);
    }
    let outer = ipv4::header_words(
        tos,
        pkt.tot_len + IPV4_HLEN as u16,
        df,
        OUTER_TTL,
        IPPROTO_IPIP,
        v4_word(&cfg.tunnel_src),
        v4_word(&real.addr),
    );
    let Some(at) = ptr_at::<[u32; IPV4_HLEN / 4]>(ctx, l3) else {
        return Err(Reason::DropNoRoom);
    };
    // SAFETY: bounds-checked by ptr_at.
    unsafe { crate::frame::store(at, outer) };
    Ok(())
}

/// Whether the IPv4 packet still fits the interface with an outer header of `outer` bytes, and
/// then its TOS and DF flag, which the outer header carries on; if not, a DF packet is answered
/// (the caller sends ICMP fragmentation needed), any other dropped: XDP cannot fragment.
#[inline(always)]
fn fits(
    ctx: &XdpContext,
    pkt: &Packet,
    outer: usize,
    cfg: &DirectorConfig,
) -> Result<(u8, u16), Reason> {
    let inner: [u8; 8] = read(ctx, pkt.l3_off).ok_or(Reason::DropMalformed)?;
    let df = be16([inner[6], inner[7]]) & DF;
    if pkt.tot_len as u32 + outer as u32 <= cfg.mtu {
        Ok((inner[1], df))
    } else if df != 0 {
        Err(Reason::TxFragNeeded)
    } else {
        Err(Reason::DropTooBig)
    }
}

/// Index 0: the source address of the outer header of LVS/TUN packets to IPv6 real servers
/// (IPv6-in-IPv6, IPv4-in-IPv6), written by the agent: IPv4 ones take
/// [`DirectorConfig::tunnel_src`].
#[map]
static TUNNEL_SRC6: Array<Addr> = Array::with_max_entries(1, 0);

pub const IPV6_HLEN: usize = 40;

/// The outer source address of tunnels to IPv6 real servers, as words.
#[inline(always)]
fn tunnel_src6() -> Option<[u32; 4]> {
    TUNNEL_SRC6.get(0).map(addr_words)
}

/// An IPv4-mapped address's IPv4 part as a word (its bytes in memory order), as [`addr_words`].
#[inline(always)]
fn v4_word(a: &Addr) -> u32 {
    addr_words(a)[3]
}

/// An address's four words, read a word at a time: `a` is 4-aligned (a map value's start,
/// which the kernel aligns to 8: TUNNEL_SRC6's, a RealServer's; or the director's config's
/// tunnel source, checked below). Typed as bytes, it is read one byte at a time.
#[inline(always)]
fn addr_words(a: &Addr) -> [u32; 4] {
    const {
        assert!(core::mem::offset_of!(RealServer, addr) == 0);
        assert!(core::mem::offset_of!(DirectorConfig, tunnel_src) % 4 == 0);
        assert!(core::mem::align_of::<DirectorConfig>() >= 4);
    };
    // SAFETY: 16 plain bytes, aligned to at least 4 (above).
    unsafe { (a as *const Addr).cast::<[u32; 4]>().read() }
}
/// IPv6-in-IPv6's next header.
const NEXTHDR_IPV6: u8 = 41;

/// Wraps an IPv6 packet in an outer IPv6 header to `real` (IPv6-in-IPv6), as [`ipip`] does for
/// IPv4: the inner packet byte for byte, the traffic class and flow label copied. A packet
/// that no longer fits is too big (IPv6 routers never fragment: the caller answers).
#[inline(always)]
pub fn ip6ip6(
    ctx: &XdpContext,
    pkt: &Packet6,
    cfg: &DirectorConfig,
    real: &RealServer,
) -> Result<(), Reason> {
    let l3 = pkt.l3_off;
    let inner_len = IPV6_HLEN + pkt.payload_len as usize;
    if (inner_len + IPV6_HLEN) as u32 > cfg.mtu {
        return Err(Reason::TxFragNeeded);
    }
    let first: [u8; 4] = read(ctx, l3).ok_or(Reason::DropMalformed)?;
    let eth = EthHeader::read(ctx, l3).ok_or(Reason::DropMalformed)?;
    if !grow(ctx, &eth, IPV6_HLEN) {
        return Err(Reason::DropNoRoom);
    }
    // Read after the helper's call: kept across it, its words took four stack slots.
    let src = tunnel_src6().ok_or(Reason::DropNoRoom)?;
    let outer = ipv6::header_words(
        first,
        inner_len as u16,
        NEXTHDR_IPV6,
        OUTER_TTL,
        src,
        addr_words(&real.addr),
    );
    let Some(at) = ptr_at::<[u32; IPV6_HLEN / 4]>(ctx, l3) else {
        return Err(Reason::DropNoRoom);
    };
    // SAFETY: bounds-checked by ptr_at.
    unsafe { crate::frame::store(at, outer) };
    Ok(())
}

/// Wraps an IPv4 packet in an outer IPv6 header to an IPv6 real server (IPv4-in-IPv6, next
/// header 4, as Katran does), the ethertype becoming IPv6's; the traffic class is the inner
/// TOS. As [`ipip`], a packet that no longer fits is answered (DF) or dropped.
// Its tail (grow the head, the Ethernet header back, the outer header) is ip6ip6's; one helper
// for both changed xdplb_v6's code enough for the verifier to give up (1M instructions).
#[inline(always)]
pub fn ip4in6(
    ctx: &XdpContext,
    pkt: &Packet,
    cfg: &DirectorConfig,
    real: &RealServer,
) -> Result<(), Reason> {
    let l3 = pkt.l3_off;
    let (tos, _) = fits(ctx, pkt, IPV6_HLEN, cfg)?;
    let mut eth = EthHeader::read(ctx, l3).ok_or(Reason::DropMalformed)?;
    eth.set_type(ETH_P_IPV6);
    if !grow(ctx, &eth, IPV6_HLEN) {
        return Err(Reason::DropNoRoom);
    }
    // Read after the helper's call: kept across it, its words took four stack slots.
    let src = tunnel_src6().ok_or(Reason::DropNoRoom)?;
    let first = ipv6::first_word(tos);
    let outer = ipv6::header_words(
        first,
        pkt.tot_len,
        IPPROTO_IPIP,
        OUTER_TTL,
        src,
        addr_words(&real.addr),
    );
    let Some(at) = ptr_at::<[u32; IPV6_HLEN / 4]>(ctx, l3) else {
        return Err(Reason::DropNoRoom);
    };
    // SAFETY: bounds-checked by ptr_at.
    unsafe { crate::frame::store(at, outer) };
    Ok(())
}

/// The host's VIPs: IPIP packets to other inner destinations are not ours to open.
#[map]
static DECAP_VIPS: HashMap<Addr, u8> = HashMap::with_max_entries(1024, 0);

/// 0: decapsulated, 1: passed untouched.
#[map]
static DECAP_STATS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(2, 0);

#[inline(always)]
fn count(index: u32, bytes: u64) {
    if let Some(c) = DECAP_STATS.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot, touched only by this CPU.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
        }
    }
}

/// Real-server side: strips the outer header of an IPIP (or IPv6-in-IPv6) packet whose inner
/// destination is one of the host's VIPs, so it goes up the stack as if it had arrived
/// directly; passes everything else untouched.
#[inline(always)]
pub fn decap(ctx: &XdpContext) -> u32 {
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    match strip(ctx) {
        true => count(0, bytes),
        false => count(1, bytes),
    }
    XDP_PASS
}

#[inline(always)]
fn strip(ctx: &XdpContext) -> bool {
    match l3(ctx) {
        Ok((l3, ETH_P_IPV6)) => strip6(ctx, l3),
        Ok(_) => strip4(ctx),
        Err(_) => false,
    }
}

/// IPv6-in-IPv6 or IPv4-in-IPv6 whose inner destination is one of the host's VIPs: the outer
/// header goes (and, for IPv4 inside, the ethertype becomes IPv4's).
#[inline(always)]
fn strip6(ctx: &XdpContext, l3: usize) -> bool {
    let Some(outer) = read::<[u8; IPV6_HLEN]>(ctx, l3) else {
        return false;
    };
    // A packet cut short stays whole for the kernel to drop, never opened into a damaged one.
    let payload = be16([outer[4], outer[5]]) as usize;
    if outer[0] >> 4 != 6 || l3 + IPV6_HLEN + payload > ctx.data_end() - ctx.data() {
        return false;
    }
    let (vip, ethertype) = match outer[6] {
        NEXTHDR_IPV6 => {
            let Some(inner) = read::<[u8; IPV6_HLEN]>(ctx, l3 + IPV6_HLEN) else {
                return false;
            };
            let mut vip = [0u8; 16];
            vip.copy_from_slice(&inner[24..40]);
            (Some(vip).filter(|_| inner[0] >> 4 == 6), ETH_P_IPV6)
        }
        IPPROTO_IPIP => {
            let Some(inner) = read::<[u8; 20]>(ctx, l3 + IPV6_HLEN) else {
                return false;
            };
            let vip = addr_from_v4([inner[16], inner[17], inner[18], inner[19]]);
            (Some(vip).filter(|_| inner[0] >> 4 == 4), ETH_P_IPV4)
        }
        _ => (None, 0),
    };
    // SAFETY: read-only lookup.
    if vip.is_none_or(|v| unsafe { DECAP_VIPS.get(v) }.is_none()) {
        return false;
    }
    let Some(mut eth) = EthHeader::read(ctx, l3) else {
        return false;
    };
    eth.set_type(ethertype);
    adjust_head(ctx, IPV6_HLEN as i32) && eth.write(ctx)
}

#[inline(always)]
fn strip4(ctx: &XdpContext) -> bool {
    let Ok(l3) = ipv4_offset(ctx) else {
        return false;
    };
    let Some(outer) = read::<[u8; 20]>(ctx, l3) else {
        return false;
    };
    let ihl = (outer[0] & 0x0f) as usize * 4;
    // A fragment of a tunnelled packet cannot be opened on its own; the stack reassembles it.
    if outer[0] >> 4 != 4
        || ihl < IPV4_HLEN
        || outer[9] != IPPROTO_IPIP
        || be16([outer[6], outer[7]]) & 0x3fff != 0
    {
        return false;
    }
    let Some(inner) = read::<[u8; 20]>(ctx, l3 + ihl) else {
        return false;
    };
    if inner[0] >> 4 != 4 {
        return false;
    }
    let vip = addr_from_v4([inner[16], inner[17], inner[18], inner[19]]);
    // SAFETY: read-only lookup.
    if unsafe { DECAP_VIPS.get(vip) }.is_none() {
        return false;
    }
    // Drop the outer header and put the Ethernet header back in front of the inner packet.
    let Some(eth) = EthHeader::read(ctx, l3) else {
        return false;
    };
    adjust_head(ctx, ihl as i32) && eth.write(ctx)
}
