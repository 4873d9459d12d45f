//! LVS/TUN in the datapath (BPF_PROG_TEST_RUN), asserting bytes: the IPIP encapsulation on the
//! director, the ICMP "fragmentation needed" answer for packets that no longer fit, and the
//! decapsulation program of real servers.

use std::net::Ipv4Addr;

use lb_common::{csum, program_names, Reason, IPPROTO_ICMP, IPPROTO_IPIP};
use lb_tests::fixture::{
    test_run, Fixture, DIRECTOR_MAC, MTU, TUNNEL_SRC, XDP_DROP, XDP_PASS, XDP_TX,
};
use lb_tests::require_root;
use lb_user::{
    datapath::{Datapath, LoadOptions},
    packet::{encapsulate, encapsulate6, FrameSpec},
    state::{Forward, Mac, Protocol, RealSpec, SchedulerSpec, ServiceAddr},
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);
const RIP: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 11);
/// The router toward the real server: encapsulated frames go to it.
const NEXT_HOP_MAC: [u8; 6] = [0x02, 0x77, 0, 0, 0, 0xfe];
const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const DF: u16 = 0x4000;

fn service() -> ServiceAddr {
    ServiceAddr {
        protocol: Protocol::Tcp,
        vip: VIP.into(),
        port: 80,
    }
}

/// A service whose only real server is reached by IPIP.
fn tunnel_fixture() -> Fixture {
    let mut fx = Fixture::new();
    fx.add_service(service(), SchedulerSpec::default());
    fx.add_real_spec(
        service(),
        RealSpec {
            addr: Some(RIP.into()),
            forward: Some(Forward::Tunnel),
            mac: Some(Mac(NEXT_HOP_MAC)),
            ..Default::default()
        },
    );
    fx
}

/// Asserts `frame` left encapsulated: returns the offset of the outer header.
fn assert_encapsulated(input: &[u8], out: &[u8], l3: usize) {
    assert_eq!(out.len(), input.len() + 20);
    assert_eq!(out[0..6], NEXT_HOP_MAC, "to the next hop");
    assert_eq!(out[6..12], DIRECTOR_MAC, "from the director");
    assert_eq!(out[12..l3], input[12..l3], "ethertype (and VLAN tag) kept");
    let outer = &out[l3..l3 + 20];
    let inner = &input[l3..];
    assert_eq!(outer[0], 0x45, "IPv4, 20-byte header");
    assert_eq!(outer[1], inner[1], "TOS copied");
    assert_eq!(
        u16::from_be_bytes([outer[2], outer[3]]) as usize,
        inner.len() + 20,
        "total length"
    );
    assert_eq!(outer[4..6], [0, 0], "id");
    let inner_df = u16::from_be_bytes([inner[6], inner[7]]) & DF;
    assert_eq!(
        u16::from_be_bytes([outer[6], outer[7]]),
        inner_df,
        "DF copied, no fragment offset"
    );
    assert_eq!(outer[8], 64, "TTL");
    assert_eq!(outer[9], IPPROTO_IPIP);
    assert_eq!(
        outer[12..16],
        TUNNEL_SRC.octets(),
        "source: the tunnel source"
    );
    assert_eq!(outer[16..20], RIP.octets(), "destination: the real server");
    assert_eq!(csum::fold(csum::sum(outer)), 0, "header checksum");
    assert_eq!(&out[l3 + 20..], inner, "inner packet byte for byte");
}

#[test]
fn a_packet_for_a_tunnel_real_server_is_wrapped_in_ipip() {
    if !require_root() {
        return;
    }
    let mut fx = tunnel_fixture();
    for spec in [
        FrameSpec {
            payload: b"hello".to_vec(),
            ..Default::default()
        },
        FrameSpec {
            frag: 0,
            payload: vec![3; 100],
            ..Default::default()
        },
        FrameSpec {
            vlan: Some(9),
            ip_options: vec![1; 8],
            ..Default::default()
        },
    ] {
        let input = spec.build();
        let (verdict, out) = fx.run(&input).unwrap();
        assert_eq!(verdict, XDP_TX, "{spec:?}");
        assert_encapsulated(&input, &out, if spec.vlan.is_some() { 18 } else { 14 });
    }
}

#[test]
fn one_service_mixes_direct_routing_and_tunnelling() {
    if !require_root() {
        return;
    }
    let mut fx = tunnel_fixture();
    fx.add_real(service(), 12, 1);
    let mut seen = (0, 0);
    for i in 0..200u32 {
        let input = FrameSpec {
            src: Ipv4Addr::from(0xc000_0000 + i),
            ..Default::default()
        }
        .build();
        let (verdict, out) = fx.run(&input).unwrap();
        assert_eq!(verdict, XDP_TX);
        if out.len() == input.len() {
            assert_eq!(out[12..], input[12..], "DR leaves the packet alone");
            seen.0 += 1;
        } else {
            assert_encapsulated(&input, &out, 14);
            seen.1 += 1;
        }
    }
    assert!(seen.0 > 50 && seen.1 > 50, "{seen:?}");
}

/// A TCP packet of IP total length `tot_len`.
fn sized(tot_len: usize, frag: u16, ip_options: usize) -> FrameSpec {
    FrameSpec {
        frag,
        ip_options: vec![1; ip_options],
        payload: vec![0x5a; tot_len - 40 - ip_options],
        ..Default::default()
    }
}

#[test]
fn too_big_with_df_is_answered_with_icmp_fragmentation_needed() {
    if !require_root() {
        return;
    }
    let mut fx = tunnel_fixture();
    // 1480 + 20 fits exactly.
    let fits = sized(MTU as usize - 20, DF, 0).build();
    assert_eq!(fx.run(&fits).unwrap().0, XDP_TX);
    for options in [0, 12] {
        let before = fx.reason(Reason::TxFragNeeded);
        let input = sized(MTU as usize - 19, DF, options).build();
        let (verdict, out) = fx.run(&input).unwrap();
        assert_eq!(verdict, XDP_TX);
        assert_eq!(fx.reason(Reason::TxFragNeeded), before + 1, "counted");
        let quote = 20 + options + 8;
        assert_eq!(out.len(), 14 + 20 + 8 + quote);
        assert_eq!(out[0..6], CLIENT_MAC, "back to the client");
        assert_eq!(out[6..12], DIRECTOR_MAC);
        assert_eq!(out[12..14], [0x08, 0x00]);
        let ip = &out[14..34];
        assert_eq!(ip[0], 0x45);
        assert_eq!(
            u16::from_be_bytes([ip[2], ip[3]]) as usize,
            28 + quote,
            "total length"
        );
        assert_eq!(ip[8], 64, "TTL");
        assert_eq!(ip[9], IPPROTO_ICMP);
        assert_eq!(
            ip[12..16],
            VIP.octets(),
            "from the address the client sent to"
        );
        assert_eq!(
            ip[16..20],
            FrameSpec::default().src.octets(),
            "to the client"
        );
        assert_eq!(csum::fold(csum::sum(ip)), 0, "IP header checksum");
        let icmp = &out[34..];
        assert_eq!(
            (icmp[0], icmp[1]),
            (3, 4),
            "destination unreachable, fragmentation needed"
        );
        assert_eq!(icmp[4..6], [0, 0]);
        assert_eq!(
            u16::from_be_bytes([icmp[6], icmp[7]]),
            MTU as u16 - 20,
            "next-hop MTU"
        );
        assert_eq!(csum::fold(csum::sum(icmp)), 0, "ICMP checksum");
        assert_eq!(
            icmp[8..],
            input[14..14 + quote],
            "quotes the IP header and 8 bytes"
        );
    }
}

#[test]
fn too_big_without_df_is_dropped() {
    if !require_root() {
        return;
    }
    let mut fx = tunnel_fixture();
    let before = fx.reason(Reason::DropTooBig);
    assert_eq!(
        fx.run(&sized(MTU as usize, 0, 0).build()).unwrap().0,
        XDP_DROP
    );
    assert_eq!(fx.reason(Reason::DropTooBig), before + 1);
}

/// The decapsulation program, with [`VIP`] as this host's.
fn decap_datapath() -> Datapath {
    let mut datapath = Datapath::load(program_names::DECAP, LoadOptions::flows(1)).unwrap();
    datapath
        .decap_maps()
        .unwrap()
        .set_vips(&[VIP.into()])
        .unwrap();
    datapath
}

/// Asserts that `run` (the decapsulation program) opens frames to [`VIP`] that `wrap` tunnels
/// into exactly the inner frame (any VLAN tag kept); returns one to another address, for the
/// caller to check it is left whole.
fn assert_opens_for_vips(
    run: &mut impl FnMut(&[u8]) -> (u32, Vec<u8>),
    wrap: impl Fn(&[u8]) -> Vec<u8>,
) -> Vec<u8> {
    for spec in [
        FrameSpec::default(),
        FrameSpec {
            vlan: Some(5),
            payload: b"data".to_vec(),
            ..Default::default()
        },
    ] {
        let inner = spec.build();
        let (verdict, out) = run(&wrap(&inner));
        assert_eq!(verdict, XDP_PASS);
        assert_eq!(
            out, inner,
            "exactly the inner frame, as if it had arrived directly"
        );
    }
    wrap(
        &FrameSpec {
            dst: Ipv4Addr::new(10, 0, 0, 99),
            ..Default::default()
        }
        .build(),
    )
}

#[test]
fn decap_opens_ipip_for_local_vips_and_passes_the_rest() {
    if !require_root() {
        return;
    }
    let mut datapath = decap_datapath();
    let mut run = |frame: &[u8]| test_run(&mut datapath, program_names::DECAP, frame).unwrap();
    let other = assert_opens_for_vips(&mut run, |inner| encapsulate(inner, TUNNEL_SRC, RIP));
    // Not ours to open, or not IPIP at all: untouched.
    let plain = FrameSpec::default().build();
    for frame in [other, plain] {
        assert_eq!(run(&frame), (XDP_PASS, frame.clone()));
    }
    // A cut-short tunnelled frame is never damaged further.
    let tunnelled = encapsulate(&FrameSpec::default().build(), TUNNEL_SRC, RIP);
    for len in 14..tunnelled.len() {
        let (verdict, out) = run(&tunnelled[..len]);
        assert_eq!(verdict, XDP_PASS);
        if len < 14 + 20 + 20 {
            assert_eq!(
                out,
                &tunnelled[..len],
                "{len} bytes: too short to open, untouched"
            );
        }
    }
}

/// An IPv4 service's IPv6 real server (IPv4-in-IPv6, `xdplb_4in6`): the IPv4 packet byte for
/// byte behind an outer IPv6 header (next header 4, the TOS as traffic class, hop limit 64,
/// from the IPv6 tunnel source), the ethertype IPv6's and any VLAN tag kept, counted for the
/// real server; a packet that no longer fits is answered with fragmentation needed giving the
/// MTU less IPv6's 40 bytes (DF), or dropped.
#[test]
fn an_ipv6_real_server_of_an_ipv4_service_is_reached_by_ipv4_in_ipv6() {
    if !require_root() {
        return;
    }
    use lb_user::datapath::MapWriter as _;
    use std::net::Ipv6Addr;
    let rip6: Ipv6Addr = "2001:db8:1::11".parse().unwrap();
    let src6: Ipv6Addr = "2001:db8::1".parse().unwrap();
    let mut fx = Fixture::new();
    fx.maps.set_tunnel_src6(src6.octets()).unwrap();
    fx.add_service(service(), SchedulerSpec::default());
    fx.add_real_spec(
        service(),
        RealSpec {
            addr: Some(rip6.into()),
            forward: Some(Forward::Tunnel),
            mac: Some(Mac(NEXT_HOP_MAC)),
            ..Default::default()
        },
    );
    for spec in [
        FrameSpec {
            payload: b"over IPv6".to_vec(),
            ..Default::default()
        },
        FrameSpec {
            vlan: Some(7),
            frag: 0,
            sport: 4000,
            ..Default::default()
        },
        sized(MTU as usize - 40, DF, 0),
    ] {
        let mut input = spec.build();
        let l3 = if spec.vlan.is_some() { 18 } else { 14 };
        input[l3 + 1] = 0xb8; // TOS: DSCP EF
                              // The header checksum again (the datapath drops a header whose checksum is wrong).
        input[l3 + 10..l3 + 12].fill(0);
        let header: [u8; 20] = input[l3..l3 + 20].try_into().unwrap();
        let check = lb_common::csum::ipv4_header(&header);
        input[l3 + 10..l3 + 12].copy_from_slice(&check.to_be_bytes());
        let (verdict, out) = fx.run(&input).unwrap();
        assert_eq!(verdict, XDP_TX);
        let mut want = encapsulate6(&input, src6, rip6);
        want[..6].copy_from_slice(&NEXT_HOP_MAC);
        want[6..12].copy_from_slice(&DIRECTOR_MAC);
        assert_eq!(out, want, "{spec:?}");
        assert_eq!(out[l3 + 6], 4, "next header: IPv4");
        assert_eq!(
            (out[l3] << 4) | (out[l3 + 1] >> 4),
            0xb8,
            "TOS as traffic class"
        );
    }
    let stats = fx.maps.counters().unwrap();
    assert_eq!(stats.reals.iter().map(|c| c.packets).sum::<u64>(), 3);

    // One byte more: fragmentation needed, MTU 1460, from the VIP; without DF: dropped.
    let before = fx.reason(Reason::TxFragNeeded);
    let (verdict, out) = fx.run(&sized(MTU as usize - 39, DF, 0).build()).unwrap();
    assert_eq!(verdict, XDP_TX);
    assert_eq!(fx.reason(Reason::TxFragNeeded), before + 1);
    assert_eq!(out[0..6], CLIENT_MAC, "back to the client");
    assert_eq!(out[14 + 9], IPPROTO_ICMP);
    assert_eq!(out[26..30], VIP.octets(), "from the VIP");
    assert_eq!(
        out[34..36],
        [3, 4],
        "destination unreachable, fragmentation needed"
    );
    assert_eq!(
        u16::from_be_bytes([out[40], out[41]]) as u32,
        MTU - 40,
        "the MTU left inside an IPv6 tunnel"
    );
    let dropped = fx.reason(Reason::DropTooBig);
    let (verdict, _) = fx.run(&sized(MTU as usize - 39, 0, 0).build()).unwrap();
    assert_eq!(verdict, XDP_DROP);
    assert_eq!(fx.reason(Reason::DropTooBig), dropped + 1);
}

/// `xdplb decap` opens IPv4-in-IPv6 for its IPv4 VIPs into exactly the inner frame (the
/// ethertype IPv4's again, any VLAN tag kept); not its VIP, or cut short: untouched.
#[test]
fn decap_opens_ipv4_in_ipv6_for_local_vips() {
    if !require_root() {
        return;
    }
    use std::net::Ipv6Addr;
    let (src6, rip6): (Ipv6Addr, Ipv6Addr) = (
        "2001:db8::1".parse().unwrap(),
        "2001:db8:1::11".parse().unwrap(),
    );
    let mut datapath = decap_datapath();
    let mut run = |frame: &[u8]| test_run(&mut datapath, program_names::DECAP, frame).unwrap();
    let other = assert_opens_for_vips(&mut run, |inner| encapsulate6(inner, src6, rip6));
    assert_eq!(run(&other), (XDP_PASS, other.clone()));
    let tunnelled = encapsulate6(&FrameSpec::default().build(), src6, rip6);
    for len in 14..tunnelled.len() {
        assert_eq!(
            run(&tunnelled[..len]),
            (XDP_PASS, tunnelled[..len].to_vec()),
            "{len} bytes: never opened"
        );
    }
}
