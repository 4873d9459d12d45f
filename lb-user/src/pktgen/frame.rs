//! What the generator sends: the traffic description, the template frame handed to the kernel,
//! and the program's settings derived from it.

use std::net::{Ipv4Addr, SocketAddrV4};

use anyhow::{bail, Result};
use lb_common::{PktgenConfig, PktgenState, IPPROTO_TCP, IPPROTO_UDP, PKTGEN_L4_OFF};

use super::range::{AddrRange, PortRange};
use crate::net::Interface;
use crate::packet::{FrameSpec, TCP_SYN};
use crate::state::Protocol;

/// Ethernet header length: the frame size is the IPv4 packet plus this (no FCS).
pub const ETH_HLEN: usize = 14;
/// The default frame size: the 64-byte minimum Ethernet frame without its 4-byte FCS.
pub const DEFAULT_SIZE: usize = 60;

/// The traffic to generate: TCP segments (SYNs, or ACKs as of connections already open) or UDP
/// datagrams to `dst`, from every source address and port of the ranges, in frames of `size`
/// bytes (Ethernet header included, FCS not).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Traffic {
    /// The interface the frames leave through (of the calling thread's network namespace).
    pub ifindex: u32,
    pub ifname: String,
    /// The interface's MTU: the IPv4 packet must fit.
    pub mtu: u32,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub dst: SocketAddrV4,
    pub protocol: Protocol,
    pub src: AddrRange,
    pub sport: PortRange,
    pub size: usize,
    /// The TCP flags: SYN (new flows) or ACK (a director's established path).
    pub tcp_flags: u8,
}

impl Traffic {
    /// TCP SYNs of [`DEFAULT_SIZE`] bytes out of `iface` (from its MAC) to `dst_mac` and `dst`,
    /// from the addresses of `src` and ports 1024-65535. Change the fields as needed.
    pub fn new(iface: &Interface, dst_mac: [u8; 6], dst: SocketAddrV4, src: AddrRange) -> Self {
        Traffic {
            ifindex: iface.index,
            ifname: iface.name.clone(),
            mtu: iface.mtu,
            src_mac: iface.mac,
            dst_mac,
            dst,
            protocol: Protocol::Tcp,
            src,
            sport: PortRange::EPHEMERAL,
            size: DEFAULT_SIZE,
            tcp_flags: TCP_SYN,
        }
    }

    /// Frame bytes of the headers alone: Ethernet, IPv4 (no options), TCP (no options) or UDP.
    pub fn header_len(protocol: Protocol) -> usize {
        PKTGEN_L4_OFF
            + match protocol {
                Protocol::Tcp => 20,
                Protocol::Udp => 8,
            }
    }

    /// Rejects what cannot be sent, with one line naming the problem.
    pub fn validate(&self) -> Result<()> {
        let min = Self::header_len(self.protocol);
        let what = match self.protocol {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        };
        if self.size < min {
            bail!(
                "frame size {} is below the {min} bytes of the Ethernet, IPv4 and {what} headers",
                self.size
            );
        }
        let max = self.mtu as usize + ETH_HLEN;
        if self.size > max {
            bail!(
                "frame size {} is above what {} carries: MTU {} + {ETH_HLEN}-byte Ethernet header = {max}",
                self.size,
                self.ifname,
                self.mtu
            );
        }
        if self.dst.port() == 0 {
            bail!("destination port 0 is not a valid port");
        }
        Ok(())
    }

    /// The template frame, from the first source address and port, with valid checksums.
    pub fn template(&self) -> Vec<u8> {
        let proto = self.protocol.number();
        let headers = Self::header_len(self.protocol);
        let mut frame = FrameSpec {
            dst_mac: self.dst_mac,
            src_mac: self.src_mac,
            vlan: None,
            src: self.src.first,
            dst: *self.dst.ip(),
            ip_options: Vec::new(),
            frag: 0x4000,
            ttl: 64,
            proto,
            sport: self.sport.first,
            dport: self.dst.port(),
            tcp_flags: self.tcp_flags,
            payload: vec![0; self.size.saturating_sub(headers)],
        }
        .build();
        // A computed UDP checksum of zero is sent as 0xffff (zero means "none").
        let at = l4_csum_offset(proto);
        if proto == IPPROTO_UDP && frame[at..at + 2] == [0, 0] {
            frame[at..at + 2].copy_from_slice(&[0xff, 0xff]);
        }
        frame
    }

    /// The program's settings for `template` (which must come from [`Traffic::template`]).
    pub fn config(&self, template: &[u8]) -> PktgenConfig {
        let proto = self.protocol.number();
        let word = |at: usize| u16::from_be_bytes([template[at], template[at + 1]]);
        let at = l4_csum_offset(proto);
        PktgenConfig {
            src_first: self.src.first.into(),
            src_last: (self.src.len() - 1) as u32,
            tmpl_src: self.src.first.into(),
            sport_first: self.sport.first,
            sport_last: (self.sport.len() - 1) as u16,
            tmpl_sport: self.sport.first,
            tmpl_ip_csum: word(ETH_HLEN + 10),
            tmpl_l4_csum: word(at),
            proto,
            _pad: 0,
        }
    }
}

/// Offset of the TCP or UDP checksum in the frame.
pub fn l4_csum_offset(proto: u8) -> usize {
    PKTGEN_L4_OFF + if proto == IPPROTO_TCP { 16 } else { 6 }
}

/// The source of a generated frame (address, port).
pub fn source_of(frame: &[u8]) -> (Ipv4Addr, u16) {
    let ip = ETH_HLEN + 12;
    let src = Ipv4Addr::new(frame[ip], frame[ip + 1], frame[ip + 2], frame[ip + 3]);
    let sport = u16::from_be_bytes([frame[PKTGEN_L4_OFF], frame[PKTGEN_L4_OFF + 1]]);
    (src, sport)
}

/// Whether a frame's IPv4 header checksum and TCP/UDP checksum (over the pseudo-header) are
/// valid, recomputed from scratch with lb_common::csum.
pub fn checksums_valid(frame: &[u8]) -> bool {
    use lb_common::csum::{fold, sum};
    let ip = &frame[ETH_HLEN..];
    let ihl = (ip[0] & 0x0f) as usize * 4;
    let tot_len = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    if ip.len() < tot_len || tot_len < ihl {
        return false;
    }
    let l4 = &ip[ihl..tot_len];
    let proto = ip[9];
    let mut pseudo = [0u8; 12];
    pseudo[..8].copy_from_slice(&ip[12..20]);
    pseudo[9] = proto;
    pseudo[10..12].copy_from_slice(&(l4.len() as u16).to_be_bytes());
    let l4_ok = if proto == IPPROTO_UDP && l4[6..8] == [0, 0] {
        false // the generator always fills the UDP checksum in
    } else {
        fold(sum(&pseudo) + sum(l4)) == 0
    };
    fold(sum(&ip[..ihl])) == 0 && l4_ok
}

/// The first `n` sources the walk of a CPU starting at flow `start` produces (what the program
/// computes, replayed in user space).
pub fn walk(cfg: &PktgenConfig, start: u64, n: usize) -> Vec<(Ipv4Addr, u16)> {
    let mut state = PktgenState::at(start, cfg);
    (0..n)
        .map(|_| {
            let (src, sport) = state.source(cfg);
            state.step(cfg);
            (Ipv4Addr::from(src), sport)
        })
        .collect()
}

#[cfg(test)]
pub(super) mod tests {
    use std::collections::HashSet;

    use super::*;

    /// Traffic out of a made-up eth0 (index 3, MTU 1500) to 10.0.0.100:80.
    pub(in crate::pktgen) fn traffic(
        protocol: Protocol,
        src: &str,
        sport: &str,
        size: usize,
    ) -> Traffic {
        let eth0 = Interface {
            index: 3,
            name: "eth0".into(),
            mac: [2, 0, 0, 0, 0, 1],
            mtu: 1500,
        };
        let dst = "10.0.0.100:80".parse().unwrap();
        Traffic {
            protocol,
            sport: sport.parse().unwrap(),
            size,
            ..Traffic::new(&eth0, [2, 0, 0, 0, 0, 0xaa], dst, src.parse().unwrap())
        }
    }

    /// The template with source `src`:`sport` written in and the checksums the program computes.
    fn as_program_writes(t: &Traffic, src: Ipv4Addr, sport: u16) -> Vec<u8> {
        let mut f = t.template();
        let cfg = t.config(&f);
        let (ip, l4) = cfg.checksums(src.into(), sport);
        f[26..30].copy_from_slice(&src.octets());
        f[24..26].copy_from_slice(&ip.to_be_bytes());
        f[34..36].copy_from_slice(&sport.to_be_bytes());
        let at = l4_csum_offset(cfg.proto);
        f[at..at + 2].copy_from_slice(&l4.to_be_bytes());
        f
    }

    #[test]
    fn template_has_the_size_and_valid_checksums() {
        for (proto, size) in [
            (Protocol::Tcp, 54),
            (Protocol::Tcp, 60),
            (Protocol::Udp, 42),
            (Protocol::Udp, 1514),
        ] {
            let t = traffic(proto, "10.1.0.0/16", "1024-65535", size);
            t.validate().unwrap();
            let f = t.template();
            assert_eq!(f.len(), size);
            assert!(checksums_valid(&f), "{proto:?} {size}");
            assert_eq!(source_of(&f), (Ipv4Addr::new(10, 1, 0, 0), 1024));
        }
    }

    #[test]
    fn incremental_checksums_match_a_full_recomputation() {
        let mut rng = lb_common::rng::XorShift64::new(7);
        for proto in [Protocol::Tcp, Protocol::Udp] {
            let t = traffic(proto, "0.0.0.0/0", "1-65535", 77);
            for _ in 0..5000 {
                let src = Ipv4Addr::from(rng.next() as u32);
                let sport = 1 + rng.below(65535) as u16;
                let f = as_program_writes(&t, src, sport);
                assert!(checksums_valid(&f), "{proto:?} {src}:{sport}");
            }
            // Extremes of the one's-complement arithmetic.
            for (src, sport) in [(Ipv4Addr::new(0, 0, 0, 0), 1), (Ipv4Addr::BROADCAST, 65535)] {
                assert!(checksums_valid(&as_program_writes(&t, src, sport)));
            }
        }
    }

    #[test]
    fn bad_sizes_are_one_line_errors() {
        let small = traffic(Protocol::Tcp, "10.0.0.1", "1024", 50);
        assert_eq!(
            small.validate().unwrap_err().to_string(),
            "frame size 50 is below the 54 bytes of the Ethernet, IPv4 and TCP headers"
        );
        let udp = traffic(Protocol::Udp, "10.0.0.1", "1024", 42);
        udp.validate().unwrap();
        let big = traffic(Protocol::Udp, "10.0.0.1", "1024", 1515);
        assert_eq!(
            big.validate().unwrap_err().to_string(),
            "frame size 1515 is above what eth0 carries: MTU 1500 + 14-byte Ethernet header = 1514"
        );
    }

    #[test]
    fn walk_covers_every_flow_once_per_period_and_varies_both_fields() {
        for (src, sport) in [
            ("10.0.0.0-10.0.0.5", "1000-1003"),
            ("10.0.0.0/30", "1000-1003"),
            ("10.0.0.1", "1000-1009"),
            ("10.0.0.0/29", "7"),
            ("10.0.0.0-10.0.0.2", "5000-5005"),
        ] {
            let t = traffic(Protocol::Udp, src, sport, 60);
            let cfg = t.config(&t.template());
            let flows = cfg.flows() as usize;
            let seen = walk(&cfg, 0, flows);
            let unique: HashSet<_> = seen.iter().copied().collect();
            assert_eq!(unique.len(), flows, "{src} {sport}");
            assert!(seen
                .iter()
                .all(|(a, p)| t.src.contains(*a) && t.sport.contains(*p)));
            // The next period repeats the first.
            assert_eq!(walk(&cfg, flows as u64, 3), seen[..3]);
            // Within a pass over the addresses, both fields change from frame to frame.
            if t.src.len() > 1 && t.sport.len() > 1 {
                let pass = &seen[..t.src.len() as usize];
                assert!(pass
                    .windows(2)
                    .all(|w| w[0].0 != w[1].0 && w[0].1 != w[1].1));
            }
        }
    }

    #[test]
    fn walk_steps_agree_with_positions() {
        let t = traffic(Protocol::Tcp, "10.1.0.0/16", "1024-65535", 60);
        let cfg = t.config(&t.template());
        let mut state = PktgenState::at(0, &cfg);
        for n in 0..200_000u64 {
            let jump = PktgenState::at(n, &cfg);
            assert_eq!(
                (state.addr_off, state.port_off, state.block),
                (jump.addr_off, jump.port_off, jump.block),
                "flow {n}"
            );
            state.step(&cfg);
        }
        // Huge ranges: the positions still fit (2^32 addresses x 65535 ports).
        let all = traffic(Protocol::Tcp, "0.0.0.0/0", "1-65535", 60);
        let cfg = all.config(&all.template());
        assert_eq!(cfg.flows(), (1u64 << 32) * 65535);
        let s = PktgenState::at(cfg.flows() - 1, &cfg);
        assert_eq!(s.addr_off, u32::MAX);
    }
}
