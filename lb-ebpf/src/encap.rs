//! IPIP: LVS/TUN encapsulation on the director, and decapsulation on real servers (`xdplb decap`),
//! so real servers need no ipip kernel module.

use aya_ebpf::{
    bindings::xdp_action::XDP_PASS,
    helpers::bpf_xdp_adjust_head,
    macros::map,
    maps::{HashMap, PerCpuArray},
    programs::XdpContext,
};
use lb_common::{
    addr_from_v4, csum, Addr, Counters, DirectorConfig, RealServer, Reason, IPPROTO_IPIP,
};

use crate::parse::{be16, ipv4_offset, ptr_at, read, Packet};

const IPV4_HLEN: usize = 20;
const IPV4_DF: u16 = 0x4000;
/// TTL of the outer header: a fresh hop budget for the path to the real server.
const OUTER_TTL: u8 = 64;

/// Grows (negative) or shrinks (positive) the frame at its head; false without headroom.
#[inline(always)]
pub fn adjust_head(ctx: &XdpContext, delta: i32) -> bool {
    // SAFETY: the helper checks the bounds itself; packet pointers are re-read afterwards.
    unsafe { bpf_xdp_adjust_head(ctx.ctx, delta) == 0 }
}

/// Writes the Ethernet header of a frame whose head moved: the MACs `dst` and `src` at offset 0,
/// then the ethertype (and VLAN tag) of the old header, which now starts at `old`.
#[inline(always)]
pub fn rewrite_l2(
    ctx: &XdpContext,
    old: usize,
    l3_off: usize,
    dst: &[u8; 6],
    src: &[u8; 6],
) -> bool {
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(dst);
    macs[6..].copy_from_slice(src);
    let Some(eth) = ptr_at::<[u8; 12]>(ctx, 0) else {
        return false;
    };
    if l3_off == 18 {
        let (Some(tag), Some(to)) = (read::<[u8; 6]>(ctx, old + 12), ptr_at::<[u8; 6]>(ctx, 12))
        else {
            return false;
        };
        // SAFETY: both ranges were bounds-checked by ptr_at/read.
        unsafe { to.write_unaligned(tag) };
    } else {
        let (Some(ty), Some(to)) = (read::<[u8; 2]>(ctx, old + 12), ptr_at::<[u8; 2]>(ctx, 12))
        else {
            return false;
        };
        // SAFETY: as above.
        unsafe { to.write_unaligned(ty) };
    }
    // SAFETY: bounds-checked by ptr_at.
    unsafe { eth.write_unaligned(macs) };
    true
}

/// A complete IPv4 header without options, checksum filled in.
#[inline(always)]
pub fn ipv4_header(
    tos: u8,
    tot_len: u16,
    frag: u16,
    ttl: u8,
    proto: u8,
    src: &[u8],
    dst: &[u8],
) -> [u8; 20] {
    let mut h = [0u8; 20];
    h[0] = 0x45;
    h[1] = tos;
    h[2..4].copy_from_slice(&tot_len.to_be_bytes());
    h[6..8].copy_from_slice(&frag.to_be_bytes());
    h[8] = ttl;
    h[9] = proto;
    h[12..16].copy_from_slice(&src[..4]);
    h[16..20].copy_from_slice(&dst[..4]);
    let c = csum::ipv4_header(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h
}

/// Wraps the packet in an outer IPv4 header to `real` and addresses the frame to the next hop
/// toward it. The inner packet is kept byte for byte. Err says why it could not be sent:
/// too big for the interface (with DF: the caller answers with ICMP), or no headroom.
#[inline(always)]
pub fn ipip(
    ctx: &XdpContext,
    pkt: &Packet,
    cfg: &DirectorConfig,
    real: &RealServer,
) -> Result<(), Reason> {
    let l3 = pkt.l3_off;
    let inner: [u8; 8] = read(ctx, l3).ok_or(Reason::DropMalformed)?;
    let df = be16([inner[6], inner[7]]) & IPV4_DF;
    if pkt.tot_len as u32 + IPV4_HLEN as u32 > cfg.mtu {
        return Err(if df != 0 {
            Reason::TxFragNeeded
        } else {
            Reason::DropTooBig
        });
    }
    if !adjust_head(ctx, -(IPV4_HLEN as i32)) {
        return Err(Reason::DropNoRoom);
    }
    // The old Ethernet header now starts at IPV4_HLEN; the inner packet at IPV4_HLEN + l3.
    if !rewrite_l2(ctx, IPV4_HLEN, l3, &real.mac, &cfg.mac) {
        return Err(Reason::DropNoRoom);
    }
    let src = &cfg.tunnel_src[12..16];
    let dst = &real.addr[12..16];
    let outer = ipv4_header(
        inner[1],
        pkt.tot_len + IPV4_HLEN as u16,
        df,
        OUTER_TTL,
        IPPROTO_IPIP,
        src,
        dst,
    );
    let Some(at) = ptr_at::<[u8; 20]>(ctx, l3) else {
        return Err(Reason::DropNoRoom);
    };
    // SAFETY: bounds-checked by ptr_at.
    unsafe { at.write_unaligned(outer) };
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

/// Real-server side: strips the outer header of an IPIP packet whose inner destination is one
/// of the host's VIPs, so it goes up the stack as if it had arrived directly; passes everything
/// else untouched.
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
    let Some(macs) = read::<[u8; 12]>(ctx, 0) else {
        return false;
    };
    let (dst, src) = (
        [macs[0], macs[1], macs[2], macs[3], macs[4], macs[5]],
        [macs[6], macs[7], macs[8], macs[9], macs[10], macs[11]],
    );
    // Move the Ethernet header up against the inner packet, then drop what is before it. The
    // header is rewritten from a copy: source and destination may overlap.
    let mut tail = [0u8; 6];
    let tail_len = l3 - 12;
    if tail_len == 6 {
        let Some(t) = read::<[u8; 6]>(ctx, 12) else {
            return false;
        };
        tail = t;
    } else {
        let Some(t) = read::<[u8; 2]>(ctx, 12) else {
            return false;
        };
        tail[..2].copy_from_slice(&t);
    }
    if !adjust_head(ctx, ihl as i32) {
        return false;
    }
    let Some(eth) = ptr_at::<[u8; 12]>(ctx, 0) else {
        return false;
    };
    let mut m = [0u8; 12];
    m[..6].copy_from_slice(&dst);
    m[6..].copy_from_slice(&src);
    // SAFETY: bounds-checked by ptr_at.
    unsafe { eth.write_unaligned(m) };
    if tail_len == 6 {
        let Some(to) = ptr_at::<[u8; 6]>(ctx, 12) else {
            return false;
        };
        // SAFETY: as above.
        unsafe { to.write_unaligned(tail) };
    } else {
        let Some(to) = ptr_at::<[u8; 2]>(ctx, 12) else {
            return false;
        };
        // SAFETY: as above.
        unsafe { to.write_unaligned([tail[0], tail[1]]) };
    }
    true
}
