//! Building Ethernet/IPv4-or-IPv6/TCP-or-UDP frames byte by byte: for datapath tests, benchmarks and the
//! packet generator, which all need exact frames rather than what a socket would send.

use std::net::{Ipv4Addr, Ipv6Addr};

use lb_common::ipv4;

pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// A frame to build; every field has a sensible default (a TCP SYN).
#[derive(Clone, Debug)]
pub struct FrameSpec {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    /// 802.1Q VLAN id, if tagged.
    pub vlan: Option<u16>,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// IPv4 options, whole 32-bit words (at most 40 bytes).
    pub ip_options: Vec<u8>,
    /// IPv4 flags and fragment offset field (host order), e.g. 0x4000 for DF.
    pub frag: u16,
    pub ttl: u8,
    /// IPPROTO_TCP or IPPROTO_UDP.
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: u8,
    pub payload: Vec<u8>,
}

impl Default for FrameSpec {
    fn default() -> Self {
        Self {
            dst_mac: [0x02, 0, 0, 0, 0, 0x01],
            src_mac: [0x02, 0, 0, 0, 0, 0x02],
            vlan: None,
            src: Ipv4Addr::new(10, 0, 0, 2),
            dst: Ipv4Addr::new(10, 0, 0, 100),
            ip_options: Vec::new(),
            frag: 0x4000,
            ttl: 64,
            proto: lb_common::IPPROTO_TCP,
            sport: 40000,
            dport: 80,
            tcp_flags: TCP_SYN,
            payload: Vec::new(),
        }
    }
}

impl FrameSpec {
    pub fn build(&self) -> Vec<u8> {
        self.frame(self.proto, &self.l4())
    }

    /// An ICMP error in this frame's Ethernet and IPv4 headers (its ports, flags and payload are
    /// not used): ICMP `kind` and `code`, then `rest` (the next-hop MTU of "fragmentation
    /// needed", else zero), quoting `quote` (an IP packet, or its start).
    pub fn icmp_error(&self, kind: u8, code: u8, rest: [u8; 4], quote: &[u8]) -> Vec<u8> {
        let mut icmp = vec![kind, code, 0, 0];
        icmp.extend_from_slice(&rest);
        icmp.extend_from_slice(quote);
        let csum = lb_common::csum::fold(lb_common::csum::sum(&icmp));
        icmp[2..4].copy_from_slice(&csum.to_be_bytes());
        self.frame(lb_common::IPPROTO_ICMP, &icmp)
    }

    /// The Ethernet and IPv4 headers (protocol `proto`) around `l4`.
    fn frame(&self, proto: u8, l4: &[u8]) -> Vec<u8> {
        assert!(self.ip_options.len().is_multiple_of(4) && self.ip_options.len() <= 40);
        let mut f = Vec::with_capacity(128 + self.payload.len());
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        if let Some(vid) = self.vlan {
            f.extend_from_slice(&ETH_P_8021Q.to_be_bytes());
            f.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
        }
        f.extend_from_slice(&ETH_P_IPV4.to_be_bytes());

        let ihl = 20 + self.ip_options.len();
        let tot_len = (ihl + l4.len()) as u16;
        let ip_start = f.len();
        f.push(0x40 | (ihl / 4) as u8);
        f.push(0);
        f.extend_from_slice(&tot_len.to_be_bytes());
        f.extend_from_slice(&0x1234u16.to_be_bytes());
        f.extend_from_slice(&self.frag.to_be_bytes());
        f.push(self.ttl);
        f.push(proto);
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(&self.src.octets());
        f.extend_from_slice(&self.dst.octets());
        f.extend_from_slice(&self.ip_options);
        let csum = lb_common::csum::fold(lb_common::csum::sum(&f[ip_start..]));
        f[ip_start + 10..ip_start + 12].copy_from_slice(&csum.to_be_bytes());
        f.extend_from_slice(l4);
        f
    }

    fn l4(&self) -> Vec<u8> {
        let segment = Segment {
            proto: self.proto,
            sport: self.sport,
            dport: self.dport,
            tcp_flags: self.tcp_flags,
            payload: &self.payload,
        };
        let mut l4 = segment.unchecked();
        // The IPv4 pseudo-header.
        let mut pseudo = Vec::with_capacity(12);
        pseudo.extend_from_slice(&self.src.octets());
        pseudo.extend_from_slice(&self.dst.octets());
        pseudo.extend_from_slice(&[0, self.proto]);
        pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
        segment.check(&mut l4, &pseudo);
        l4
    }
}

/// A TCP or UDP segment, either family's.
struct Segment<'a> {
    proto: u8,
    sport: u16,
    dport: u16,
    tcp_flags: u8,
    payload: &'a [u8],
}

impl Segment<'_> {
    /// The header and payload, checksum zero.
    fn unchecked(&self) -> Vec<u8> {
        let mut l4 = Vec::new();
        l4.extend_from_slice(&self.sport.to_be_bytes());
        l4.extend_from_slice(&self.dport.to_be_bytes());
        if self.proto == lb_common::IPPROTO_TCP {
            l4.extend_from_slice(&1u32.to_be_bytes()); // seq
            l4.extend_from_slice(&0u32.to_be_bytes()); // ack
            l4.push(5 << 4);
            l4.push(self.tcp_flags);
            l4.extend_from_slice(&64240u16.to_be_bytes());
            l4.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent
        } else {
            l4.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
            l4.extend_from_slice(&[0, 0]);
        }
        l4.extend_from_slice(self.payload);
        l4
    }

    /// Writes the checksum over `pseudo` (the family's pseudo-header) and the segment.
    fn check(&self, l4: &mut [u8], pseudo: &[u8]) {
        let csum = lb_common::csum::fold(lb_common::csum::sum(pseudo) + lb_common::csum::sum(l4));
        let at = if self.proto == lb_common::IPPROTO_TCP {
            16
        } else {
            6
        };
        l4[at..at + 2].copy_from_slice(&csum.to_be_bytes());
    }
}

pub const ETH_P_IPV6: u16 = 0x86dd;
/// IPv6 extension header types ([`Frame6Spec::ext`]).
pub const NEXTHDR_HOP: u8 = 0;
pub const NEXTHDR_ROUTING: u8 = 43;
pub const NEXTHDR_FRAGMENT: u8 = 44;
pub const NEXTHDR_DEST: u8 = 60;

/// An IPv6 frame to build; every field has a sensible default (a TCP SYN).
#[derive(Clone, Debug)]
pub struct Frame6Spec {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    /// 802.1Q VLAN id, if tagged.
    pub vlan: Option<u16>,
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub hop_limit: u8,
    /// Extension headers before the transport header, in order: (type, length in bytes, a
    /// multiple of 8). A fragment header is 8 bytes: offset 0, no more fragments.
    pub ext: Vec<(u8, usize)>,
    /// The transport protocol (TCP or UDP), or any other next header with no transport header.
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: u8,
    pub payload: Vec<u8>,
}

impl Default for Frame6Spec {
    fn default() -> Self {
        let v4 = FrameSpec::default();
        Self {
            dst_mac: v4.dst_mac,
            src_mac: v4.src_mac,
            vlan: None,
            src: "2001:db8::2".parse().expect("an address"),
            dst: "2001:db8::100".parse().expect("an address"),
            hop_limit: 64,
            ext: Vec::new(),
            proto: v4.proto,
            sport: v4.sport,
            dport: v4.dport,
            tcp_flags: v4.tcp_flags,
            payload: Vec::new(),
        }
    }
}

impl Frame6Spec {
    /// An ICMPv6 error in this frame's Ethernet and IPv6 headers (its ports, flags, extension
    /// headers and payload are not used): `kind` and `code`, then `rest` (the MTU of "packet too
    /// big", else zero), quoting `quote` (an IPv6 packet, or its start); the checksum over the
    /// pseudo-header computed whole.
    pub fn icmp_error(&self, kind: u8, code: u8, rest: [u8; 4], quote: &[u8]) -> Vec<u8> {
        let mut icmp = vec![kind, code, 0, 0];
        icmp.extend_from_slice(&rest);
        icmp.extend_from_slice(quote);
        let mut pseudo = Vec::with_capacity(40);
        pseudo.extend_from_slice(&self.src.octets());
        pseudo.extend_from_slice(&self.dst.octets());
        pseudo.extend_from_slice(&(icmp.len() as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, 58]);
        let sum = lb_common::csum::sum(&pseudo) + lb_common::csum::sum(&icmp);
        icmp[2..4].copy_from_slice(&lb_common::csum::fold(sum).to_be_bytes());
        Frame6Spec {
            ext: Vec::new(),
            proto: 58,
            payload: icmp,
            ..self.clone()
        }
        .build()
    }

    pub fn build(&self) -> Vec<u8> {
        let mut f = Vec::with_capacity(128 + self.payload.len());
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        if let Some(vid) = self.vlan {
            f.extend_from_slice(&ETH_P_8021Q.to_be_bytes());
            f.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
        }
        f.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
        let l4 = self.l4();
        let mut ext = Vec::new();
        for (i, &(kind, len)) in self.ext.iter().enumerate() {
            assert!(
                len >= 8 && len.is_multiple_of(8),
                "extension header length {len}"
            );
            let next = self.ext.get(i + 1).map_or(self.proto, |e| e.0);
            let mut h = vec![0u8; len];
            h[0] = next;
            if kind == NEXTHDR_FRAGMENT {
                assert_eq!(len, 8, "a fragment header is 8 bytes");
                h[4..8].copy_from_slice(&0x1234u32.to_be_bytes());
            } else {
                h[1] = (len / 8 - 1) as u8;
            }
            ext.extend_from_slice(&h);
        }
        f.extend_from_slice(&lb_common::ipv6::header(
            lb_common::ipv6::first_word(0),
            (ext.len() + l4.len()) as u16,
            self.ext.first().map_or(self.proto, |e| e.0),
            self.hop_limit,
            &self.src.octets(),
            &self.dst.octets(),
        ));
        f.extend_from_slice(&ext);
        f.extend_from_slice(&l4);
        f
    }

    fn l4(&self) -> Vec<u8> {
        if self.proto != lb_common::IPPROTO_TCP && self.proto != lb_common::IPPROTO_UDP {
            return self.payload.clone();
        }
        let segment = Segment {
            proto: self.proto,
            sport: self.sport,
            dport: self.dport,
            tcp_flags: self.tcp_flags,
            payload: &self.payload,
        };
        let mut l4 = segment.unchecked();
        // The IPv6 pseudo-header (RFC 8200, 8.1).
        let mut pseudo = Vec::with_capacity(40);
        pseudo.extend_from_slice(&self.src.octets());
        pseudo.extend_from_slice(&self.dst.octets());
        pseudo.extend_from_slice(&(l4.len() as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, self.proto]);
        segment.check(&mut l4, &pseudo);
        l4
    }
}

/// An IPIP frame: `frame`'s Ethernet header (with any VLAN tag) and IPv4 packet, the packet
/// wrapped in an outer IPv4 header from `src` to `dst` (TTL 64, DF as the inner packet's).
pub fn encapsulate(frame: &[u8], src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let l3 = if frame[12..14] == ETH_P_8021Q.to_be_bytes() {
        18
    } else {
        14
    };
    let inner = &frame[l3..];
    let tot_len = (inner.len() + ipv4::HEADER_LEN) as u16;
    let df = u16::from_be_bytes([inner[6], inner[7]]) & ipv4::DF;
    let outer = ipv4::header(
        inner[1],
        tot_len,
        df,
        64,
        lb_common::IPPROTO_IPIP,
        src.octets(),
        dst.octets(),
    );
    [&frame[..l3], &outer[..], inner].concat()
}

/// An IPv6 tunnel frame: `frame`'s Ethernet header (with any VLAN tag, the ethertype IPv6's)
/// and IP packet, the packet wrapped in an outer IPv6 header from `src` to `dst` with hop
/// limit 64, as the director's LVS/TUN sends it: IPv6-in-IPv6 (next header 41, the inner
/// traffic class and flow label) or IPv4-in-IPv6 (next header 4, the inner TOS as the traffic
/// class).
pub fn encapsulate6(frame: &[u8], src: Ipv6Addr, dst: Ipv6Addr) -> Vec<u8> {
    let l3 = if frame[12..14] == ETH_P_8021Q.to_be_bytes() {
        18
    } else {
        14
    };
    let inner = &frame[l3..];
    let (first, next_header) = if inner[0] >> 4 == 4 {
        (lb_common::ipv6::first_word(inner[1]), 4)
    } else {
        ([inner[0], inner[1], inner[2], inner[3]], 41)
    };
    let outer = lb_common::ipv6::header(
        first,
        inner.len() as u16,
        next_header,
        64,
        &src.octets(),
        &dst.octets(),
    );
    let mut eth = frame[..l3].to_vec();
    eth[l3 - 2..].copy_from_slice(&ETH_P_IPV6.to_be_bytes());
    [&eth[..], &outer[..], inner].concat()
}
