//! Parsing: Ethernet (with at most one 802.1Q tag), IPv4 with any header length, TCP/UDP ports;
//! and ICMP errors, with the headers of the packet they quote.
//! Every read is bounds-checked against `data_end`, which is also what the verifier demands.

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use lb_common::{Reason, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP};

use crate::{frame, ipv4_options};

const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 4;
pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const IPV4_MIN_HLEN: usize = 20;
const TCP_MIN_HLEN: usize = 20;
const UDP_HLEN: usize = 8;
pub const TCP_FLAG_FIN: u8 = 0x01;
pub const TCP_FLAG_SYN: u8 = 0x02;
pub const TCP_FLAG_RST: u8 = 0x04;
pub const TCP_FLAG_ACK: u8 = 0x10;
pub const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_SOURCE_QUENCH: u8 = 4;
const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMP_HLEN: usize = 8;

/// What the later stages need to know about an IPv4 TCP/UDP packet.
pub struct Packet {
    /// Offset of the IPv4 header in the frame.
    pub l3_off: usize,
    /// Offset of the TCP/UDP header in the frame.
    pub l4_off: usize,
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub proto: u8,
    /// Ports, host byte order.
    pub sport: u16,
    pub dport: u16,
    /// IPv4 total length.
    pub tot_len: u16,
}

pub enum Parsed {
    Packet(Packet),
    /// ICMP: maybe an error about an LVS/NAT flow (see [`icmp_error`]).
    Icmp,
    /// IPv6: the IPv6 pipeline's (see `parse6`).
    Ipv6,
    Pass(Reason),
}

/// An ICMP error and the packet it is about, as it quotes it: the IP header and at least the 8
/// bytes after it (the ports, and UDP's checksum).
pub struct IcmpError {
    /// The error's own IP header; `l4_off` is where the ICMP header is, the ports are zero.
    pub outer: Packet,
    /// The quoted packet's headers, inside the ICMP message.
    pub quoted: Packet,
}

/// A pointer to a `T` at `off` in the frame, if the frame is long enough to hold it.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Option<*mut T> {
    let start = ctx.data();
    if start + off + size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some((start + off) as *mut T)
}

#[inline(always)]
pub fn read<T: Copy>(ctx: &XdpContext, off: usize) -> Option<T> {
    // SAFETY: ptr_at checked that the T lies inside the frame; `load` reads at any alignment.
    ptr_at::<T>(ctx, off).map(|p| unsafe { frame::load(p) })
}

#[inline(always)]
pub fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Parsed {
    let l3_off = match l3(ctx) {
        Ok((l3_off, ETH_P_IPV4)) => l3_off,
        Ok((_, ETH_P_IPV6)) => return Parsed::Ipv6,
        Ok(_) => return Parsed::Pass(Reason::PassNotIpv4),
        Err(reason) => return Parsed::Pass(reason),
    };
    match ipv4(ctx, l3_off) {
        Ok(ip) if ip.proto == IPPROTO_ICMP => Parsed::Icmp,
        Ok(ip) => match ports(ctx, ip) {
            Ok(pkt) => Parsed::Packet(pkt),
            Err(reason) => Parsed::Pass(reason),
        },
        Err(reason) => Parsed::Pass(reason),
    }
}

/// Offset of the network header and its ethertype: after Ethernet and at most one 802.1Q tag.
#[inline(always)]
pub fn l3(ctx: &XdpContext) -> Result<(usize, u16), Reason> {
    let mut l3_off = ETH_HLEN;
    let mut ethertype = be16(read(ctx, 12).ok_or(Reason::PassUnparsed)?);
    if ethertype == ETH_P_8021Q {
        ethertype = be16(read(ctx, ETH_HLEN + 2).ok_or(Reason::PassUnparsed)?);
        l3_off += VLAN_HLEN;
    }
    Ok((l3_off, ethertype))
}

/// Offset of the IPv4 header.
#[inline(always)]
pub fn ipv4_offset(ctx: &XdpContext) -> Result<usize, Reason> {
    match l3(ctx)? {
        (l3_off, ETH_P_IPV4) => Ok(l3_off),
        _ => Err(Reason::PassNotIpv4),
    }
}

/// The IPv4 header at `l3_off`, as a [`Packet`] whose ports are not read yet. Non-first
/// fragments are not: only the first carries the ports.
#[inline(always)]
fn ipv4(ctx: &XdpContext, l3_off: usize) -> Result<Packet, Reason> {
    let ip: [u8; IPV4_MIN_HLEN] = read(ctx, l3_off).ok_or(Reason::PassUnparsed)?;
    let ihl = (ip[0] & 0x0f) as usize * 4;
    if ip[0] >> 4 != 4 || ihl < IPV4_MIN_HLEN {
        return Err(Reason::PassUnparsed);
    }
    if be16([ip[6], ip[7]]) & 0x1fff != 0 {
        return Err(Reason::PassFragment);
    }
    Ok(Packet {
        l3_off,
        l4_off: l3_off + ihl,
        src: [ip[12], ip[13], ip[14], ip[15]],
        dst: [ip[16], ip[17], ip[18], ip[19]],
        proto: ip[9],
        sport: 0,
        dport: 0,
        tot_len: be16([ip[2], ip[3]]),
    })
}

/// The TCP/UDP ports of a packet from [`ipv4`].
#[inline(always)]
fn ports(ctx: &XdpContext, pkt: Packet) -> Result<Packet, Reason> {
    if pkt.proto != IPPROTO_TCP && pkt.proto != IPPROTO_UDP {
        return Err(Reason::PassNotTcpUdp);
    }
    let ports: [u8; 4] = read(ctx, pkt.l4_off).ok_or(Reason::PassUnparsed)?;
    Ok(Packet {
        sport: be16([ports[0], ports[1]]),
        dport: be16([ports[2], ports[3]]),
        ..pkt
    })
}

/// The ICMP error in the frame (destination unreachable, source quench, time exceeded: those
/// IPVS translates too) about a TCP/UDP packet, if it is one, with its quote inside the packet
/// and the packet inside the frame.
#[inline(always)]
pub fn icmp_error(ctx: &XdpContext) -> Option<IcmpError> {
    let outer = ipv4(ctx, ipv4_offset(ctx).ok()?).ok()?;
    // Type and code (a one-byte read's bounds check is one LLVM turns into a form the
    // verifier cannot follow).
    let kind = read::<[u8; 2]>(ctx, outer.l4_off)?;
    if outer.proto != IPPROTO_ICMP
        || !matches!(
            kind[0],
            ICMP_DEST_UNREACH | ICMP_SOURCE_QUENCH | ICMP_TIME_EXCEEDED
        )
    {
        return None;
    }
    let quoted = ports(ctx, ipv4(ctx, outer.l4_off + ICMP_HLEN).ok()?).ok()?;
    let end = outer.l3_off + outer.tot_len as usize;
    if quoted.l4_off + UDP_HLEN > end || end > ctx.data_end() - ctx.data() {
        return None;
    }
    Some(IcmpError { outer, quoted })
}

/// Whether a packet for a service may be forwarded: complete and self-consistent, so a real
/// server is never handed a damaged packet (the L4 header is all there, and the IPv4 total
/// length covers the headers and fits in the frame; Ethernet padding after it is fine), and one
/// the kernel would have accepted for IPVS (see [`ipv4_sane`]). The error is the drop's reason.
#[inline(always)]
pub fn check(ctx: &XdpContext, pkt: &Packet) -> Result<(), Reason> {
    let l4_min = l4_min(pkt.proto);
    let frame_len = ctx.data_end() - ctx.data();
    let ip_len = pkt.tot_len as usize;
    if pkt.l4_off + l4_min > frame_len
        || ip_len < pkt.l4_off - pkt.l3_off + l4_min
        || pkt.l3_off + ip_len > frame_len
    {
        return Err(Reason::DropMalformed);
    }
    let l4_len = ip_len - (pkt.l4_off - pkt.l3_off);
    if !transport_is_whole(ctx, pkt.proto, pkt.l4_off, l4_len) {
        return Err(Reason::DropMalformed);
    }
    ipv4_sane(ctx, pkt)
}

/// Longest IPv4 header, in 32-bit words.
const IPV4_MAX_WORDS: usize = 15;
/// The TTL's offset in the IPv4 header.
const IPV4_TTL: usize = 8;

/// What the kernel checks of an IPv4 header before IPVS sees the packet (ip_rcv, the route
/// lookup's martian test, ip_options_compile), so the director forwards nothing a kernel
/// director would have dropped: the header checksum (over the options too), the source (not
/// 0/8, 127/8, multicast, broadcast or the destination itself), a TTL above 0, and the options
/// (by a program of their own: see `ipv4_options`).
/// Read a word at a time: this runs on every packet for a service, and the stack is full.
#[inline(always)]
fn ipv4_sane(ctx: &XdpContext, pkt: &Packet) -> Result<(), Reason> {
    if !checksum_ok(ctx, pkt) {
        return Err(Reason::DropBadChecksum);
    }
    if is_martian(pkt.src) || pkt.src == pkt.dst {
        return Err(Reason::DropBadSource);
    }
    if read::<u8>(ctx, pkt.l3_off + IPV4_TTL).ok_or(Reason::DropMalformed)? == 0 {
        return Err(Reason::DropTtlZero);
    }
    ipv4_options::checked(ctx, pkt)
}

/// Whether the IPv4 header of `pkt` (options included) has the right checksum.
#[inline(always)]
pub fn checksum_ok(ctx: &XdpContext, pkt: &Packet) -> bool {
    let words = (pkt.l4_off - pkt.l3_off) / 4;
    let mut sum: u32 = 0;
    if words == IPV4_MIN_HLEN / 4 {
        // The header nearly every packet has (no options): one bounds check and three loads,
        // not a loop of five.
        let Some(header) = read::<[u32; IPV4_MIN_HLEN / 4]>(ctx, pkt.l3_off) else {
            return false;
        };
        for w in header {
            sum += (w & 0xffff) + (w >> 16);
        }
    } else {
        let mut i = 0;
        while i < IPV4_MAX_WORDS {
            if i >= words {
                break;
            }
            let Some(w) = read::<u32>(ctx, pkt.l3_off + i * 4) else {
                return false;
            };
            sum += (w & 0xffff) + (w >> 16);
            i += 1;
        }
    }
    // Folded, a header with a right checksum sums to all ones (in either byte order).
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum == 0xffff
}

/// A source no client can have: 0.0.0.0/8, 127.0.0.0/8, multicast, 255.255.255.255.
#[inline(always)]
fn is_martian(src: [u8; 4]) -> bool {
    src[0] == 0 || src[0] == 127 || src[0] & 0xf0 == 0xe0 || u32::from_ne_bytes(src) == u32::MAX
}

/// The TCP flags byte (0 for UDP). Call after [`check`].
#[inline(always)]
pub fn tcp_flags(ctx: &XdpContext, pkt: &Packet) -> u8 {
    tcp_flags_at(ctx, pkt.proto, pkt.l4_off)
}

/// The flags byte of the TCP header at `l4_off` (0 for UDP), of either family.
#[inline(always)]
pub fn tcp_flags_at(ctx: &XdpContext, proto: u8, l4_off: usize) -> u8 {
    if proto != IPPROTO_TCP {
        return 0;
    }
    read::<u8>(ctx, l4_off + 13).unwrap_or(0)
}

/// Whether a transport header of `l4_len` bytes (as the IP header says) is whole and
/// consistent: TCP's data offset, UDP's length within it. `l4_len` covers at least the fixed
/// header, checked by the caller.
#[inline(always)]
pub fn transport_is_whole(ctx: &XdpContext, proto: u8, l4_off: usize, l4_len: usize) -> bool {
    if proto == IPPROTO_TCP {
        let Some(off) = read::<u8>(ctx, l4_off + 12) else {
            return false;
        };
        let doff = (off >> 4) as usize * 4;
        doff >= TCP_MIN_HLEN && doff <= l4_len
    } else {
        let Some(len) = read::<[u8; 2]>(ctx, l4_off + 4) else {
            return false;
        };
        let udp_len = be16(len) as usize;
        udp_len >= UDP_HLEN && udp_len <= l4_len
    }
}

/// The smallest transport header of `proto`.
#[inline(always)]
pub fn l4_min(proto: u8) -> usize {
    if proto == IPPROTO_TCP {
        TCP_MIN_HLEN
    } else {
        UDP_HLEN
    }
}
