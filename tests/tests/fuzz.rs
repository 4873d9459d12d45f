//! Datapath fuzzing (issue 15, part 1): the director's program, configured with every
//! forwarding method (LVS/DR, LVS/TUN over IPIP, IPv6-in-IPv6 and IPv4-in-IPv6, LVS/NAT both
//! ways), every scheduler and both address families, runs through BPF_PROG_TEST_RUN on frames
//! made from valid templates (TCP, UDP, ICMP errors, IPIP, VLAN tags, IPv4 options, IPv6
//! extension headers) and mutated with a fixed seed: cut at every length, bytes flipped, header
//! lengths, total and payload lengths, fragment fields, options and next headers rewritten.
//! Every verdict must be PASS, DROP, TX or REDIRECT; a PASS leaves the frame as it came; every
//! frame sent on is read by an independent decoder (etherparse, not the project's builder):
//! its lengths agree, every IPv4 header checksum is right, the transport checksum is right
//! wherever the input's was, and the payload is the input's.
//! `XDPLB_FUZZ_FRAMES` sets the number of frames (CI: 100,000), `XDPLB_FUZZ_SEED` the seed;
//! `cargo xtask fuzz --frames N` runs it with N.

use std::net::{Ipv4Addr, Ipv6Addr};

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use lb_common::{rng::XorShift64, IPPROTO_TCP, IPPROTO_UDP};
use lb_tests::fixture::{over_ipv6, Fixture, RoutedNet, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX};
use lb_tests::require_root;
use lb_user::{
    datapath::MapWriter as _,
    packet::{encapsulate, Frame6Spec, FrameSpec, NEXTHDR_DEST, NEXTHDR_HOP, NEXTHDR_ROUTING},
    state::{Forward, Mac, Protocol, RealSpec, Scheduler, SchedulerSpec, ServiceAddr},
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);
const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x100);
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 7);
const RIP_NAT: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 11);
const RIP_NAT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 0, 0x11);
const REAL_PORT: u16 = 8080;
const ROUTER_MAC: [u8; 6] = [0x02, 0x77, 0, 0, 0, 0xfe];
const REAL_MAC: [u8; 6] = [0x02, 0xee, 0, 0, 0, 0x11];
/// Service ports: one per forwarding method, then one per scheduler from SCHED_PORT.
const DR_PORT: u16 = 80;
const TUN_PORT: u16 = 81;
const NAT_PORT: u16 = 82;
const TUN46_PORT: u16 = 83;
const PERSIST_PORT: u16 = 84;
const SCHED_PORT: u16 = 1000;

fn service(protocol: Protocol, vip: impl Into<std::net::IpAddr>, port: u16) -> ServiceAddr {
    ServiceAddr {
        protocol,
        vip: vip.into(),
        port,
    }
}

fn real(addr: impl Into<std::net::IpAddr>, forward: Forward, weight: u32) -> RealSpec {
    RealSpec {
        addr: Some(addr.into()),
        forward: Some(forward),
        weight: Some(weight),
        mac: Some(Mac(REAL_MAC)),
        port: (forward == Forward::Masq).then_some(REAL_PORT),
        ..Default::default()
    }
}

/// Every forwarding method and scheduler, TCP and UDP, IPv4 and IPv6.
fn fixture(net: &RoutedNet) -> Fixture {
    let mut fx = Fixture::new();
    fx.maps.set_interfaces(&net.ifaces()).unwrap();
    fx.maps
        .set_tunnel_src6("2001:db8:ff::1".parse::<Ipv6Addr>().unwrap().octets())
        .unwrap();
    let v4 = |n: u8| Ipv4Addr::new(10, 0, 0, n);
    let v6 = |n: u16| Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, n);
    for protocol in [Protocol::Tcp, Protocol::Udp] {
        let methods: [(std::net::IpAddr, u16, Vec<RealSpec>); 7] = [
            (
                VIP.into(),
                DR_PORT,
                vec![
                    real(v4(11), Forward::Route, 1),
                    real(v4(12), Forward::Route, 2),
                ],
            ),
            (VIP.into(), TUN_PORT, vec![real(v4(21), Forward::Tunnel, 1)]),
            (VIP.into(), NAT_PORT, vec![real(RIP_NAT, Forward::Masq, 1)]),
            (
                VIP.into(),
                TUN46_PORT,
                vec![real(v6(31), Forward::Tunnel, 1)],
            ),
            (VIP6.into(), DR_PORT, vec![real(v6(11), Forward::Route, 1)]),
            (
                VIP6.into(),
                TUN_PORT,
                vec![real(v6(21), Forward::Tunnel, 1)],
            ),
            (
                VIP6.into(),
                NAT_PORT,
                vec![real(RIP_NAT6, Forward::Masq, 1)],
            ),
        ];
        for (vip, port, reals) in methods {
            let svc = service(protocol, vip, port);
            fx.add_service(svc, SchedulerSpec::default());
            for r in reals {
                fx.add_real_spec(svc, r);
            }
        }
        let persistent = service(protocol, VIP, PERSIST_PORT);
        fx.add_service(
            persistent,
            SchedulerSpec {
                scheduler: Some(Scheduler::Wlc),
                persistent: Some(300),
                ..Default::default()
            },
        );
        for (i, scheduler) in Scheduler::ALL.iter().enumerate() {
            for (vip, reals) in [
                (
                    std::net::IpAddr::from(VIP),
                    [v4(11), v4(12)].map(std::net::IpAddr::from),
                ),
                (VIP6.into(), [v6(11), v6(12)].map(std::net::IpAddr::from)),
            ] {
                let svc = service(protocol, vip, SCHED_PORT + i as u16);
                fx.add_service(
                    svc,
                    SchedulerSpec {
                        scheduler: Some(*scheduler),
                        ..Default::default()
                    },
                );
                for (w, addr) in reals.into_iter().enumerate() {
                    fx.add_real_spec(svc, real(addr, Forward::Route, w as u32 + 1));
                }
            }
            fx.add_real_spec(persistent, real(v4(11 + i as u8), Forward::Route, 1));
        }
    }
    fx
}

/// A valid frame and the interface it arrives on.
struct Template {
    ingress: u32,
    frame: Vec<u8>,
}

/// Valid frames of every kind the director meets: requests to every service and port range,
/// LVS/NAT replies, ICMP errors both ways, IPIP, VLAN tags, IPv4 options, IPv6 extension
/// headers, and traffic for no service.
fn templates(net: &RoutedNet) -> Vec<Template> {
    let out = |frame| Template {
        ingress: net.out0.0,
        frame,
    };
    let inside = |frame| Template {
        ingress: net.in0.0,
        frame,
    };
    let mut t = Vec::new();
    let ports = [DR_PORT, TUN_PORT, NAT_PORT, TUN46_PORT, PERSIST_PORT]
        .into_iter()
        .chain((0..Scheduler::ALL.len() as u16).map(|i| SCHED_PORT + i))
        .chain([9999]);
    for dport in ports {
        for proto in [IPPROTO_TCP, IPPROTO_UDP] {
            let v4 = FrameSpec {
                dst_mac: net.out0.1,
                src_mac: ROUTER_MAC,
                src: CLIENT,
                dst: VIP,
                proto,
                sport: 40000,
                dport,
                payload: b"GET / HTTP/1.0\r\n\r\n".to_vec(),
                ..Default::default()
            };
            t.push(out(v4.build()));
            t.push(out(FrameSpec {
                vlan: Some(7),
                ip_options: vec![1, 1, 1, 0],
                tcp_flags: 0x10,
                ..v4.clone()
            }
            .build()));
            let v6 = over_ipv6(v4.clone(), CLIENT6, VIP6);
            t.push(out(v6.build()));
            t.push(out(Frame6Spec {
                ext: vec![(NEXTHDR_HOP, 8), (NEXTHDR_ROUTING, 16), (NEXTHDR_DEST, 8)],
                ..v6.clone()
            }
            .build()));
        }
    }
    for proto in [IPPROTO_TCP, IPPROTO_UDP] {
        // LVS/NAT replies, and ICMP errors about NAT flows both ways.
        let reply = FrameSpec {
            dst_mac: net.in0.1,
            src_mac: REAL_MAC,
            src: RIP_NAT,
            dst: CLIENT,
            proto,
            sport: REAL_PORT,
            dport: 40000,
            tcp_flags: 0x12,
            payload: b"HTTP/1.0 200 OK\r\n\r\nhello".to_vec(),
            ..Default::default()
        };
        let reply_bytes = reply.build();
        t.push(inside(reply_bytes.clone()));
        let reply6 = over_ipv6(reply.clone(), RIP_NAT6, CLIENT6);
        t.push(inside(reply6.build()));
        let request = FrameSpec {
            dst_mac: net.out0.1,
            src_mac: ROUTER_MAC,
            src: CLIENT,
            dst: VIP,
            proto,
            sport: 40000,
            dport: NAT_PORT,
            ..Default::default()
        };
        let router = FrameSpec {
            src: Ipv4Addr::new(198, 51, 100, 254),
            dst: VIP,
            ..request.clone()
        };
        // A router's "fragmentation needed" about the translated reply, and the real server's
        // "port unreachable" about a translated request.
        let translated_reply = FrameSpec {
            src: VIP,
            dst: CLIENT,
            sport: NAT_PORT,
            ..reply.clone()
        }
        .build();
        t.push(out(router.icmp_error(
            3,
            4,
            [0, 0, 5, 0],
            &translated_reply[14..],
        )));
        let translated_request = FrameSpec {
            dst: RIP_NAT,
            dport: REAL_PORT,
            ..request.clone()
        }
        .build();
        t.push(inside(
            FrameSpec {
                dst_mac: net.in0.1,
                src_mac: REAL_MAC,
                src: RIP_NAT,
                dst: CLIENT,
                ..request.clone()
            }
            .icmp_error(3, 3, [0; 4], &translated_request[14..]),
        ));
        // An IPIP packet to the director, and one to a VIP.
        t.push(out(encapsulate(&request.build(), CLIENT, VIP)));
    }
    t
}

/// One IP layer of a decoded frame, outermost first.
struct Layer {
    /// The IP packet, exactly as long as its header says.
    packet: Vec<u8>,
    /// For IPv4: whether the header checksum is right.
    header_ok: bool,
}

/// What the independent decoder read of a frame.
struct Decoded {
    layers: Vec<Layer>,
    /// The innermost transport: whether its checksum is right, and its payload (None for
    /// ICMP, whose quotes a translation rewrites).
    transport: Option<(bool, Option<Vec<u8>>)>,
}

/// Reads a frame with etherparse, IP in IP included; Err says what it could not read.
fn decode(frame: &[u8]) -> Result<Decoded, String> {
    let sliced = SlicedPacket::from_ethernet(frame).map_err(|e| format!("{e}"))?;
    let mut layers = Vec::new();
    let mut current = sliced;
    loop {
        let (packet, header_ok, next, inner) = match &current.net {
            Some(NetSlice::Ipv4(ip)) => {
                let h = ip.header();
                // Summed over the header as it is (etherparse's Ipv4Header has no reserved
                // flag bit to recompute it from): all ones when right.
                let header_ok = etherparse::checksum::Sum16BitWords::new()
                    .add_slice(h.slice())
                    .ones_complement()
                    == 0;
                let len = h.total_len() as usize;
                let start = h.slice().as_ptr();
                // SAFETY: the header slice and its payload lie in the same frame buffer.
                let packet = unsafe { std::slice::from_raw_parts(start, len) }.to_vec();
                let p = ip.payload();
                (packet, header_ok, p.ip_number.0, p.payload)
            }
            Some(NetSlice::Ipv6(ip)) => {
                let h = ip.header();
                let len = 40 + h.payload_length() as usize;
                // SAFETY: as above.
                let packet =
                    unsafe { std::slice::from_raw_parts(h.slice().as_ptr(), len) }.to_vec();
                let p = ip.payload();
                (packet, true, p.ip_number.0, p.payload)
            }
            _ => return Err("no IP header".into()),
        };
        layers.push(Layer { packet, header_ok });
        // IPIP (4) and IPv6 in IP (41): the tunnelled packet is decoded in turn.
        if (next == 4 || next == 41) && !current.is_ip_payload_fragmented() {
            current = SlicedPacket::from_ip(inner).map_err(|e| format!("inner: {e}"))?;
            continue;
        }
        let transport = transport_of(&current);
        return Ok(Decoded { layers, transport });
    }
}

fn transport_of(p: &SlicedPacket) -> Option<(bool, Option<Vec<u8>>)> {
    let src = match p.net.as_ref()? {
        NetSlice::Ipv4(ip) => Addrs::V4(ip.header().source(), ip.header().destination()),
        NetSlice::Ipv6(ip) => Addrs::V6(ip.header().source(), ip.header().destination()),
        _ => return None,
    };
    match p.transport.as_ref()? {
        TransportSlice::Tcp(tcp) => {
            let sum = match src {
                Addrs::V4(s, d) => tcp.calc_checksum_ipv4(s, d).ok(),
                Addrs::V6(s, d) => tcp.calc_checksum_ipv6(s, d).ok(),
            };
            Some((sum == Some(tcp.checksum()), Some(tcp.payload().to_vec())))
        }
        TransportSlice::Udp(udp) => {
            let h = udp.to_header();
            let ok = match src {
                // Zero: no checksum (IPv4 only).
                Addrs::V4(_, _) if h.checksum == 0 => true,
                Addrs::V4(s, d) => {
                    h.calc_checksum_ipv4_raw(s, d, udp.payload()).ok() == Some(h.checksum)
                }
                Addrs::V6(s, d) => {
                    h.calc_checksum_ipv6_raw(s, d, udp.payload()).ok() == Some(h.checksum)
                }
            };
            Some((ok, Some(udp.payload().to_vec())))
        }
        TransportSlice::Icmpv4(icmp) => Some((
            icmp.icmp_type().calc_checksum(icmp.payload()) == icmp.checksum(),
            None,
        )),
        TransportSlice::Icmpv6(icmp) => {
            let Addrs::V6(s, d) = src else { return None };
            let ok =
                icmp.icmp_type().calc_checksum(s, d, icmp.payload()).ok() == Some(icmp.checksum());
            Some((ok, None))
        }
        _ => None,
    }
}

enum Addrs {
    V4([u8; 4], [u8; 4]),
    V6([u8; 16], [u8; 16]),
}

/// Where the IP header starts: after Ethernet and any 802.1Q tags.
fn l3_offset(frame: &[u8]) -> Option<usize> {
    let mut off = 12;
    loop {
        let ethertype = u16::from_be_bytes(frame.get(off..off + 2)?.try_into().ok()?);
        if ethertype == 0x8100 || ethertype == 0x88a8 {
            off += 4;
        } else {
            return Some(off + 2);
        }
    }
}

/// Rewrites the IPv4 header checksum of `frame` (if it has a readable IPv4 header), so a
/// mutation reaches past the checksum check.
fn fix_ipv4_checksum(frame: &mut [u8]) {
    let Some(l3) = l3_offset(frame) else { return };
    let Some(first) = frame.get(l3) else { return };
    let ihl = (first & 0x0f) as usize * 4;
    if first >> 4 != 4 || ihl < 20 || frame.len() < l3 + ihl {
        return;
    }
    frame[l3 + 10..l3 + 12].fill(0);
    let mut sum: u32 = frame[l3..l3 + ihl]
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    frame[l3 + 10..l3 + 12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
}

/// One to three random mutations of `frame`.
fn mutate(rng: &mut XorShift64, frame: &[u8]) -> Vec<u8> {
    let mut f = frame.to_vec();
    let l3 = l3_offset(&f).unwrap_or(14);
    let v4 = f.get(l3).is_some_and(|b| b >> 4 == 4);
    let n = 1 + rng.next() % 3;
    for _ in 0..n {
        let r = rng.next();
        match r % 10 {
            0 if f.len() > 15 => f.truncate(14 + (r >> 8) as usize % (f.len() - 14)),
            1 | 2 => {
                for _ in 0..1 + (r >> 8) % 4 {
                    let i = 12 + (rng.next() as usize) % (f.len() - 12);
                    f[i] ^= 1 << (rng.next() % 8);
                }
            }
            3 if v4 && f.len() > l3 => f[l3] = 0x40 | (r >> 8) as u8 & 0x0f,
            4 if f.len() > l3 + 6 => {
                // IPv4 total length or IPv6 payload length: near the truth or anything.
                let at = if v4 { l3 + 2 } else { l3 + 4 };
                let now = u16::from_be_bytes([f[at], f[at + 1]]);
                let len = if r & 0x100 != 0 {
                    now.wrapping_add(((r >> 16) % 17) as u16).wrapping_sub(8)
                } else {
                    (r >> 16) as u16
                };
                f[at..at + 2].copy_from_slice(&len.to_be_bytes());
            }
            5 if v4 && f.len() > l3 + 8 => {
                // More fragments, an offset, or DF.
                let frag = [0x2000u16, 0x0001, 0x4000, 0x3fff][(r >> 8) as usize % 4];
                f[l3 + 6..l3 + 8].copy_from_slice(&frag.to_be_bytes());
            }
            6 if v4 && f.len() > l3 + 20 && f[l3] == 0x45 => {
                // Options inserted (random bytes, or well-formed padding), lengths kept right.
                let words = 1 + (r >> 8) as usize % 10;
                let opts: Vec<u8> = (0..words * 4)
                    .map(|_| {
                        if r & 0x10000 != 0 {
                            1
                        } else {
                            rng.next() as u8
                        }
                    })
                    .collect();
                f.splice(l3 + 20..l3 + 20, opts);
                f[l3] = 0x45 + words as u8;
                let tot = u16::from_be_bytes([f[l3 + 2], f[l3 + 3]]).wrapping_add(words as u16 * 4);
                f[l3 + 2..l3 + 4].copy_from_slice(&tot.to_be_bytes());
            }
            7 if !v4 && f.len() > l3 + 7 => {
                // A next header the director does not expect.
                f[l3 + 6] = [0, 43, 44, 60, 59, 50, 51, 135, 4, 41][(r >> 8) as usize % 10];
            }
            8 if f.len() > l3 + 20 => {
                // TTL (hop limit) 0 or 1, or a source no client can have.
                if v4 {
                    match (r >> 8) % 3 {
                        0 => f[l3 + 8] = ((r >> 16) % 2) as u8,
                        1 => f[l3 + 12] = [0, 127, 224, 255][(r >> 16) as usize % 4],
                        _ => f.copy_within(l3 + 16..l3 + 20, l3 + 12),
                    }
                } else {
                    f[l3 + 7] = ((r >> 16) % 2) as u8;
                }
            }
            _ => {
                // Trailing bytes after the packet (Ethernet padding, or junk).
                f.extend((0..(r >> 8) % 24).map(|_| rng.next() as u8));
            }
        }
    }
    // Most mutated headers get their checksum back, so the mutation is what is tested.
    if rng.next() % 10 < 7 {
        fix_ipv4_checksum(&mut f);
    }
    f
}

#[derive(Default, Debug)]
struct Tally {
    frames: u64,
    pass: u64,
    drop: u64,
    tx: u64,
    redirect: u64,
    refused: u64,
    checked: u64,
}

/// Runs `frame` and checks what came out; panics with the frame on a failure.
fn run_one(fx: &mut Fixture, ingress: u32, frame: &[u8], tally: &mut Tally) {
    tally.frames += 1;
    let (verdict, out) = match fx.run_on(ingress, frame) {
        Ok(r) => r,
        // The kernel runs nothing on less than an Ethernet header.
        Err(e) if frame.len() < 14 && e.raw_os_error() == Some(libc::EINVAL) => {
            tally.refused += 1;
            return;
        }
        Err(e) => panic!("test run failed: {e} for {frame:02x?}"),
    };
    match verdict {
        XDP_DROP => tally.drop += 1,
        XDP_PASS => {
            tally.pass += 1;
            assert_eq!(out, frame, "a passed frame was changed");
        }
        XDP_TX | XDP_REDIRECT => {
            if verdict == XDP_TX {
                tally.tx += 1;
            } else {
                tally.redirect += 1;
            }
            check_sent(frame, &out);
            tally.checked += 1;
        }
        other => panic!("verdict {other} for {frame:02x?}"),
    }
}

/// The checks on a frame the director sent on: readable, lengths agreeing, every IPv4 header
/// checksum right, the transport checksum right if the input's was, the payload the input's.
fn check_sent(input: &[u8], out: &[u8]) {
    let what = || format!("input {input:02x?}\noutput {out:02x?}");
    let sent = decode(out).unwrap_or_else(|e| panic!("sent frame unreadable ({e}): {}", what()));
    for layer in &sent.layers {
        assert!(layer.header_ok, "IPv4 header checksum wrong: {}", what());
    }
    // A director forwards only what it could read itself, so the input reads too.
    let got =
        decode(input).unwrap_or_else(|e| panic!("input unreadable ({e}), yet sent: {}", what()));
    let innermost_in = &got.layers.last().unwrap().packet;
    // Tunnelled: the inner packet is the input's IP packet, byte for byte.
    if sent.layers.len() > got.layers.len() {
        let inner = &sent.layers[sent.layers.len() - got.layers.len()..];
        assert_eq!(
            &inner.last().unwrap().packet,
            innermost_in,
            "tunnelled packet changed: {}",
            what()
        );
    }
    if let (Some((in_ok, in_payload)), Some((out_ok, out_payload))) =
        (&got.transport, &sent.transport)
    {
        if *in_ok {
            assert!(out_ok, "transport checksum made wrong: {}", what());
        }
        assert_eq!(in_payload, out_payload, "payload changed: {}", what());
    } else {
        assert_eq!(
            got.transport.is_some(),
            sent.transport.is_some(),
            "transport header lost or made up: {}",
            what()
        );
    }
}

#[test]
fn mutated_frames_never_abort_leak_or_leave_damaged() {
    if !require_root() {
        return;
    }
    let frames: u64 = std::env::var("XDPLB_FUZZ_FRAMES")
        .ok()
        .map(|v| v.parse().expect("XDPLB_FUZZ_FRAMES: a number"))
        .unwrap_or(100_000);
    let seed: u64 = std::env::var("XDPLB_FUZZ_SEED")
        .ok()
        .map(|v| v.parse().expect("XDPLB_FUZZ_SEED: a number"))
        .unwrap_or(15);
    let net = RoutedNet::new("fuzz").with_ipv6();
    let start = std::time::Instant::now();
    let (tally, n_templates) = net.ns.run_in(|| {
        let mut fx = fixture(&net);
        let templates = templates(&net);
        let mut tally = Tally::default();
        // Every template whole (the NAT flows' state for the replies and errors), then cut at
        // every length.
        for t in &templates {
            run_one(&mut fx, t.ingress, &t.frame, &mut tally);
        }
        for t in &templates {
            for len in 1..t.frame.len() {
                run_one(&mut fx, t.ingress, &t.frame[..len], &mut tally);
            }
        }
        let mut rng = XorShift64::new(seed);
        while tally.frames < frames {
            let t = &templates[rng.next() as usize % templates.len()];
            let frame = mutate(&mut rng, &t.frame);
            run_one(&mut fx, t.ingress, &frame, &mut tally);
        }
        (tally, templates.len())
    });
    println!(
        "fuzz: {} frames (seed {seed}, {} templates' every cut included) in {:.1} s: \
         {} passed unchanged, {} dropped, {} XDP_TX, {} XDP_REDIRECT, {} refused by the kernel \
         (under 14 bytes); {} sent frames checked by etherparse; 0 aborted",
        tally.frames,
        n_templates,
        start.elapsed().as_secs_f64(),
        tally.pass,
        tally.drop,
        tally.tx,
        tally.redirect,
        tally.refused,
        tally.checked,
    );
    assert!(
        tally.tx + tally.redirect > tally.frames / 100,
        "too little was forwarded to tell: {tally:?}"
    );
    assert!(tally.drop > 0 && tally.pass > 0, "{tally:?}");
}

/// Defects the fuzzing found, one frame each: an ICMP error about an LVS/NAT flow whose own
/// IPv4 header checksum is wrong was translated and sent on (the checksum updated
/// incrementally, so still wrong); an IPv6 hop-by-hop header after another extension header
/// (which the kernel drops) was forwarded.
#[test]
fn frames_the_fuzzing_found_are_not_sent_on() {
    if !require_root() {
        return;
    }
    let net = RoutedNet::new("fuzz").with_ipv6();
    net.ns.run_in(|| {
        let mut fx = fixture(&net);
        let templates = templates(&net);
        let mut tally = Tally::default();
        for t in &templates {
            run_one(&mut fx, t.ingress, &t.frame, &mut tally);
        }
        // The real server's "port unreachable" about a translated request (a template), its
        // outer header's checksum then made wrong.
        let error = templates
            .iter()
            .find(|t| t.ingress == net.in0.0 && t.frame.get(14 + 9) == Some(&1))
            .expect("an ICMP error template");
        let (verdict, _) = fx.run_on(error.ingress, &error.frame).unwrap();
        assert_eq!(verdict, XDP_REDIRECT, "the ICMP error itself is translated");
        let mut bad = error.frame.clone();
        bad[14 + 10] ^= 0x40;
        let before = fx.reason(lb_common::Reason::DropBadChecksum);
        assert_eq!(fx.run_on(error.ingress, &bad).unwrap().0, XDP_DROP);
        assert_eq!(fx.reason(lb_common::Reason::DropBadChecksum), before + 1);
        // Hop-by-hop options second: the kernel's to drop, untouched.
        let late_hop = Frame6Spec {
            dst_mac: net.out0.1,
            src_mac: ROUTER_MAC,
            src: CLIENT6,
            dst: VIP6,
            dport: DR_PORT,
            ext: vec![(NEXTHDR_DEST, 8), (NEXTHDR_HOP, 8)],
            ..Default::default()
        }
        .build();
        assert_eq!(
            fx.run_on(net.out0.0, &late_hop).unwrap(),
            (XDP_PASS, late_hop)
        );
    });
}
