//! The datapath's IPv6 pipeline (BPF_PROG_TEST_RUN), asserting bytes: an IPv6 TCP or UDP packet
//! for a service leaves for the real server its scheduler picks, by LVS/DR (the frame as it came,
//! to the real server's MAC), through any extension headers before the transport header; what
//! it cannot classify (fragments, longer chains, other protocols, damaged packets) goes to the
//! kernel untouched, or is dropped when it is for a service and damaged.
//!
//! The service is written into the maps directly, as the agent's map writer would (e2e_ipv6.rs
//! goes through the agent).

use std::net::Ipv6Addr;

use lb_common::{
    sched, vip_filter_index, FlowKey, RealServer, Reason, ServiceInfo, ServiceKey,
    CONN_ESTABLISHED, CONN_FIN, FWD_DR, IPPROTO_TCP, IPPROTO_UDP, REAL_ACTIVE, SCHED_SH,
};
use lb_tests::fixture::{real_mac, Fixture, XDP_DROP, XDP_PASS, XDP_TX};
use lb_tests::require_root;
use lb_user::{
    datapath::MapWriter as _,
    packet::{
        encapsulate6, Frame6Spec, NEXTHDR_DEST, NEXTHDR_FRAGMENT, NEXTHDR_HOP, NEXTHDR_ROUTING,
        TCP_ACK, TCP_FIN, TCP_SYN,
    },
    state::{Forward, Mac, Protocol, RealSpec, SchedulerSpec, ServiceAddr},
};

const SERVICE_ID: u32 = 7;
const REAL_IDS: [u32; 3] = [20, 21, 22];

fn vip() -> Ipv6Addr {
    Frame6Spec::default().dst
}

fn info(proto: u8) -> ServiceInfo {
    ServiceInfo {
        id: SERVICE_ID + u32::from(proto == IPPROTO_UDP),
        table_size: REAL_IDS.len() as u32,
        scheduler: SCHED_SH,
        hash: 0,
        flags: 0,
        _pad: 0,
    }
}

/// A director with a `sh` service on [2001:db8::100]:80, TCP and UDP, over three LVS/DR real
/// servers 2001:db8::11..13.
fn fixture() -> Fixture {
    let mut fx = Fixture::new();
    for proto in [IPPROTO_TCP, IPPROTO_UDP] {
        let info = info(proto);
        for (n, id) in REAL_IDS.iter().enumerate() {
            let real = RealServer {
                addr: format!("2001:db8::{}", 11 + n)
                    .parse::<Ipv6Addr>()
                    .unwrap()
                    .octets(),
                mac: real_mac(11 + n as u8),
                method: FWD_DR,
                flags: REAL_ACTIVE,
                service: info.id,
            };
            // Each protocol's service has its own ids.
            fx.maps
                .set_real(id + 10 * (info.id - SERVICE_ID), &real)
                .unwrap();
        }
        let table: Vec<u32> = REAL_IDS
            .iter()
            .map(|id| id + 10 * (info.id - SERVICE_ID))
            .collect();
        fx.maps.set_table(info.id, &table).unwrap();
        let key = ServiceKey {
            vip: vip().octets(),
            port: 80,
            proto,
            _pad: 0,
        };
        fx.maps.set_service(&key, &info).unwrap();
    }
    fx.maps
        .set_vip_filter(vip_filter_index(&vip().octets()), true)
        .unwrap();
    fx
}

fn flow(spec: &Frame6Spec) -> FlowKey {
    FlowKey {
        src: spec.src.octets(),
        dst: spec.dst.octets(),
        sport: spec.sport,
        dport: spec.dport,
        proto: spec.proto,
        _pad: [0; 3],
    }
}

/// The MAC of the real server lb-common's scheduler gives `spec`'s flow.
fn predicted_mac(spec: &Frame6Spec) -> [u8; 6] {
    let slot = sched::slot(&info(spec.proto), &flow(spec)).expect("a slot");
    real_mac(11 + slot as u8)
}

/// The extension-header chains a packet may carry before its transport header.
fn chains() -> Vec<Vec<(u8, usize)>> {
    vec![
        vec![],
        vec![(NEXTHDR_HOP, 8)],
        vec![(NEXTHDR_HOP, 16), (NEXTHDR_ROUTING, 24), (NEXTHDR_DEST, 8)],
        vec![
            (NEXTHDR_HOP, 8),
            (NEXTHDR_DEST, 8),
            (NEXTHDR_ROUTING, 8),
            (NEXTHDR_DEST, 2048),
        ],
    ]
}

#[test]
fn an_ipv6_packet_for_a_service_leaves_for_its_real_server_by_direct_routing() {
    if !require_root() {
        return;
    }
    let mut fx = fixture();
    for proto in [IPPROTO_TCP, IPPROTO_UDP] {
        for (i, ext) in chains().into_iter().enumerate() {
            for vlan in [None, Some(42)] {
                let input = Frame6Spec {
                    proto,
                    ext: ext.clone(),
                    vlan,
                    // A flow of its own per case, so the scheduler decides each.
                    sport: 40000 + i as u16,
                    payload: b"hello".to_vec(),
                    ..Default::default()
                };
                let (verdict, out) = fx.run(&input.build()).unwrap();
                let case = format!("proto {proto}, chain {i}, vlan {vlan:?}");
                assert_eq!(verdict, XDP_TX, "{case}");
                let expected = Frame6Spec {
                    dst_mac: predicted_mac(&input),
                    src_mac: input.dst_mac,
                    ..input.clone()
                }
                .build();
                assert_eq!(out, expected, "{case}: only the MACs change");
                assert!(fx.maps.conn(&flow(&input)).is_some(), "{case}: remembered");
            }
        }
    }
    let c = fx.maps.counters().unwrap();
    assert_eq!(
        c.services[SERVICE_ID as usize].packets,
        (chains().len() * 2) as u64
    );
}

/// The new-flow guard on IPv6 as on IPv4: past its limit, new flows are forwarded but not
/// remembered, and a SYN to a service that schedules by hash (`sh` here) skips the connection
/// table, so a SYN sent again for a remembered flow counts as an unremembered new flow, sent to
/// the same real server; its ACK still finds the entry.
#[test]
fn past_the_new_flow_limit_ipv6_syns_skip_the_connection_table() {
    if !require_root() {
        return;
    }
    let mut fx = fixture();
    fx.maps.set_new_flow_limit(1).unwrap();
    let syn = |sport: u16| Frame6Spec {
        sport,
        tcp_flags: TCP_SYN,
        ..Default::default()
    };
    let send = |fx: &mut Fixture, spec: &Frame6Spec| {
        let (verdict, out) = fx.run(&spec.build()).unwrap();
        assert_eq!(verdict, XDP_TX, "{spec:?}");
        assert_eq!(out[..6], predicted_mac(spec), "{spec:?}");
        fx.reason(Reason::TxNotRemembered)
    };
    assert_eq!(send(&mut fx, &syn(41000)), 0);
    assert!(fx.maps.conn(&flow(&syn(41000))).is_some());
    assert_eq!(send(&mut fx, &syn(41001)), 1);
    assert!(fx.maps.conn(&flow(&syn(41001))).is_none());
    // The remembered flow's SYN again: past the limit, without the table.
    assert_eq!(send(&mut fx, &syn(41000)), 2);
    let ack = Frame6Spec {
        tcp_flags: TCP_ACK,
        ..syn(41000)
    };
    assert_eq!(send(&mut fx, &ack), 2, "the ACK finds the entry");
}

#[test]
fn ipv6_the_director_cannot_classify_goes_to_the_kernel_untouched() {
    if !require_root() {
        return;
    }
    let mut fx = fixture();
    let cases = [
        (
            "not a VIP",
            Frame6Spec {
                dst: "2001:db8::1".parse().unwrap(),
                ..Default::default()
            },
            Reason::PassNoService,
        ),
        (
            "no service on the port",
            Frame6Spec {
                dport: 81,
                ..Default::default()
            },
            Reason::PassNoService,
        ),
        (
            "a fragment",
            Frame6Spec {
                ext: vec![(NEXTHDR_FRAGMENT, 8)],
                ..Default::default()
            },
            Reason::PassFragment,
        ),
        (
            "a fragment after a hop-by-hop header",
            Frame6Spec {
                ext: vec![(NEXTHDR_HOP, 8), (NEXTHDR_FRAGMENT, 8)],
                ..Default::default()
            },
            Reason::PassFragment,
        ),
        (
            "a chain longer than the walk",
            Frame6Spec {
                ext: vec![(NEXTHDR_DEST, 8); 5],
                ..Default::default()
            },
            Reason::PassUnparsed,
        ),
        (
            "ICMPv6 to the VIP",
            Frame6Spec {
                proto: 58,
                payload: vec![128, 0, 0, 0, 0, 1, 0, 1],
                ..Default::default()
            },
            Reason::PassNotTcpUdp,
        ),
    ];
    for (what, spec, reason) in cases {
        let frame = spec.build();
        let before = fx.reason(reason);
        assert_eq!(fx.run(&frame).unwrap(), (XDP_PASS, frame), "{what}");
        assert_eq!(
            fx.reason(reason),
            before + 1,
            "{what}: counted as {reason:?}"
        );
    }
    // A payload length that promises more than the frame holds: damaged, for a service.
    let mut short = Frame6Spec::default().build();
    let len = u16::from_be_bytes([short[18], short[19]]) + 8;
    short[18..20].copy_from_slice(&len.to_be_bytes());
    assert_eq!(fx.run(&short).unwrap().0, XDP_DROP);
    assert_eq!(fx.reason(Reason::DropMalformed), 1);
}

#[test]
fn an_ipv6_packet_cut_short_is_never_sent() {
    if !require_root() {
        return;
    }
    let mut fx = fixture();
    for proto in [IPPROTO_TCP, IPPROTO_UDP] {
        for ext in chains() {
            let frame = Frame6Spec {
                proto,
                ext,
                payload: b"hello".to_vec(),
                ..Default::default()
            }
            .build();
            for len in 1..frame.len() {
                // Frames this short the kernel refuses to run at all.
                let Ok((verdict, _)) = fx.run(&frame[..len]) else {
                    continue;
                };
                assert!(
                    verdict == XDP_PASS || verdict == XDP_DROP,
                    "proto {proto}, cut at {len} of {}: verdict {verdict}",
                    frame.len()
                );
            }
        }
    }
}

/// An IPv6 packet of an established flow cut short (the payload length says more than came) is
/// dropped before it touches the flow's entry: a damaged ACK does not complete the handshake, a
/// damaged FIN does not close the connection.
#[test]
fn a_damaged_ipv6_packet_leaves_its_flows_entry_as_it_was() {
    if !require_root() {
        return;
    }
    let mut fx = fixture();
    let spec = |tcp_flags: u8| Frame6Spec {
        sport: 41006,
        tcp_flags,
        payload: b"hello".to_vec(),
        ..Default::default()
    };
    let flags = |fx: &Fixture| fx.maps.conn(&flow(&spec(0))).expect("an entry").flags;
    let mac = |out: &[u8]| <[u8; 6]>::try_from(&out[..6]).unwrap();
    let send = |fx: &mut Fixture, tcp_flags: u8| {
        let (verdict, out) = fx.run(&spec(tcp_flags).build()).unwrap();
        assert_eq!((verdict, mac(&out)), (XDP_TX, predicted_mac(&spec(0))));
    };
    let damaged = |fx: &mut Fixture, tcp_flags: u8| {
        let frame = spec(tcp_flags).build();
        let before = fx.reason(Reason::DropMalformed);
        let (verdict, _) = fx.run(&frame[..frame.len() - 1]).unwrap();
        assert_eq!(verdict, XDP_DROP);
        assert_eq!(fx.reason(Reason::DropMalformed), before + 1);
    };
    send(&mut fx, TCP_SYN);
    damaged(&mut fx, TCP_ACK);
    assert_eq!(flags(&fx), 0, "a damaged ACK: still a handshake");
    send(&mut fx, TCP_ACK);
    assert_eq!(flags(&fx), CONN_ESTABLISHED, "the ACK completes it");
    damaged(&mut fx, TCP_ACK | TCP_FIN);
    assert_eq!(flags(&fx), CONN_ESTABLISHED, "a damaged FIN: still open");
    send(&mut fx, TCP_ACK | TCP_FIN);
    assert_eq!(flags(&fx), CONN_ESTABLISHED | CONN_FIN, "the FIN closes it");
}

/// LVS/TUN over IPv6, configured through the agent's state: the packet leaves wrapped in an
/// outer IPv6 header (next header 41, hop limit 64, the inner traffic class and flow label) from
/// the director's IPv6 tunnel source to the real server, addressed to the next hop's MAC, the
/// inner packet byte for byte; one that would no longer fit the MTU is answered with ICMPv6
/// Packet Too Big.
#[test]
fn an_ipv6_packet_for_a_tunnelled_real_server_leaves_in_ipv6_in_ipv6() {
    if !require_root() {
        return;
    }
    let mut fx = Fixture::new();
    let svc = ServiceAddr {
        protocol: Protocol::Tcp,
        vip: vip().into(),
        port: 443,
    };
    let real: Ipv6Addr = "2001:db8:2::21".parse().unwrap();
    const ROUTER_MAC: [u8; 6] = [0x02, 0x77, 0, 0, 0, 0x01];
    fx.add_service(svc, SchedulerSpec::default());
    fx.add_real_spec(
        svc,
        RealSpec {
            addr: Some(real.into()),
            forward: Some(Forward::Tunnel),
            mac: Some(Mac(ROUTER_MAC)),
            ..Default::default()
        },
    );
    let source: Ipv6Addr = "2001:db8::1".parse().unwrap();
    fx.maps.set_tunnel_src6(source.octets()).unwrap();
    let frame = |payload: usize, vlan| {
        Frame6Spec {
            dport: 443,
            vlan,
            ext: vec![(NEXTHDR_DEST, 8)],
            payload: vec![0x5a; payload],
            ..Default::default()
        }
        .build()
    };
    for vlan in [None, Some(7)] {
        let input = frame(5, vlan);
        let (verdict, out) = fx.run(&input).unwrap();
        assert_eq!(verdict, XDP_TX, "vlan {vlan:?}");
        let l3 = if vlan.is_some() { 18 } else { 14 };
        let inner = &input[l3..];
        // Independently of encapsulate6: the frame as the real server must get it.
        let mut expected = Vec::new();
        expected.extend_from_slice(&ROUTER_MAC);
        expected.extend_from_slice(&input[0..6]);
        expected.extend_from_slice(&input[12..l3]);
        expected.extend_from_slice(&inner[..4]);
        expected.extend_from_slice(&(inner.len() as u16).to_be_bytes());
        expected.extend_from_slice(&[41, 64]);
        expected.extend_from_slice(&source.octets());
        expected.extend_from_slice(&real.octets());
        expected.extend_from_slice(inner);
        let mut readdressed = input.clone();
        readdressed[0..6].copy_from_slice(&ROUTER_MAC);
        readdressed[6..12].copy_from_slice(&input[0..6]);
        assert_eq!(
            encapsulate6(&readdressed, source, real),
            expected,
            "the helper agrees"
        );
        assert_eq!(
            out, expected,
            "vlan {vlan:?}: outer header, then the packet as it came"
        );
    }
    // The MTU (1500) with the outer header: fits exactly; one byte more is answered with
    // ICMPv6 Packet Too Big, from the VIP to the client, next-hop MTU 1460.
    let fits = 1500 - 40 - 40 - 8 - 20;
    assert_eq!(fx.run(&frame(fits, None)).unwrap().0, XDP_TX);
    let input = frame(fits + 1, None);
    let (verdict, out) = fx.run(&input).unwrap();
    assert_eq!(verdict, XDP_TX);
    assert_eq!(fx.reason(Reason::TxFragNeeded), 1, "counted as answered");
    assert_eq!(fx.reason(Reason::DropTooBig), 0);
    let spec = Frame6Spec::default();
    assert_eq!(out[0..6], spec.src_mac, "back to the client's router");
    assert_eq!(out[6..12], input[0..6], "from the director");
    assert_eq!(out[12..14], [0x86, 0xdd]);
    let quote = 128;
    assert_eq!(
        out.len(),
        14 + 40 + 8 + quote,
        "the packet's first 128 bytes quoted"
    );
    let ip = &out[14..54];
    assert_eq!(ip[0], 0x60);
    assert_eq!(u16::from_be_bytes([ip[4], ip[5]]) as usize, 8 + quote);
    assert_eq!((ip[6], ip[7]), (58, 64), "ICMPv6, hop limit 64");
    assert_eq!(ip[8..24], vip().octets(), "from the VIP");
    assert_eq!(ip[24..40], spec.src.octets(), "to the client");
    let icmp = &out[54..];
    assert_eq!((icmp[0], icmp[1]), (2, 0), "Packet Too Big");
    assert_eq!(
        u32::from_be_bytes([icmp[4], icmp[5], icmp[6], icmp[7]]),
        1460
    );
    assert_eq!(icmp[8..], input[14..14 + quote]);
    // The checksum, over the pseudo-header and the message, summed here from scratch.
    let mut words: Vec<u8> = Vec::new();
    words.extend_from_slice(&ip[8..40]);
    words.extend_from_slice(&((8 + quote) as u32).to_be_bytes());
    words.extend_from_slice(&[0, 0, 0, 58]);
    words.extend_from_slice(icmp);
    let mut sum: u32 = words
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    assert_eq!(sum, 0xffff, "ICMPv6 checksum");
}

/// The real-server side (`xdplb decap`): IPv6-in-IPv6 for one of the host's IPv6 VIPs is opened
/// to exactly the inner frame; for another address, or cut short, it is left as it is.
#[test]
fn decap_opens_ipv6_in_ipv6_for_local_vips() {
    if !require_root() {
        return;
    }
    use lb_common::program_names;
    use lb_tests::fixture::test_run;
    use lb_user::datapath::{Datapath, LoadOptions};
    let mut datapath = Datapath::load(program_names::DECAP, LoadOptions::flows(1)).unwrap();
    datapath
        .decap_maps()
        .unwrap()
        .set_vips(&[vip().into()])
        .unwrap();
    let mut run = |frame: &[u8]| test_run(&mut datapath, program_names::DECAP, frame).unwrap();
    let (src, rip): (Ipv6Addr, Ipv6Addr) = (
        "2001:db8::1".parse().unwrap(),
        "2001:db8:2::21".parse().unwrap(),
    );
    for spec in [
        Frame6Spec::default(),
        Frame6Spec {
            vlan: Some(5),
            ext: vec![(NEXTHDR_HOP, 8)],
            payload: b"data".to_vec(),
            ..Default::default()
        },
    ] {
        let inner = spec.build();
        let (verdict, out) = run(&encapsulate6(&inner, src, rip));
        assert_eq!((verdict, out), (XDP_PASS, inner), "exactly the inner frame");
    }
    let other = encapsulate6(
        &Frame6Spec {
            dst: "2001:db8::99".parse().unwrap(),
            ..Default::default()
        }
        .build(),
        src,
        rip,
    );
    assert_eq!(run(&other), (XDP_PASS, other.clone()), "not ours to open");
    let tunnelled = encapsulate6(&Frame6Spec::default().build(), src, rip);
    for len in 14..tunnelled.len() {
        let cut = &tunnelled[..len];
        assert_eq!(
            run(cut),
            (XDP_PASS, cut.to_vec()),
            "cut at {len}: untouched"
        );
    }
}

/// As for IPv4: what ipv6_rcv would have dropped before IPVS saw it (sources no client can
/// have), and a hop limit of 0, is dropped and counted when it is for a service; for no
/// service it goes to the kernel as it is.
#[test]
fn ipv6_packets_the_kernel_would_refuse_are_dropped_with_a_reason() {
    if !require_root() {
        return;
    }
    let mut fx = fixture();
    let mut cases: Vec<(Frame6Spec, Reason)> =
        ["::", "::1", "ff02::1", "ff0e::5", "::ffff:10.0.0.1"]
            .iter()
            .map(|src| {
                let spec = Frame6Spec {
                    src: src.parse().unwrap(),
                    ..Default::default()
                };
                (spec, Reason::DropBadSource)
            })
            .collect();
    cases.push((
        Frame6Spec {
            hop_limit: 0,
            ..Default::default()
        },
        Reason::DropTtlZero,
    ));
    for (spec, reason) in &cases {
        let before = fx.reason(*reason);
        assert_eq!(fx.run(&spec.build()).unwrap().0, XDP_DROP, "{spec:?}");
        assert_eq!(fx.reason(*reason), before + 1, "{reason:?} counted");
        let other = Frame6Spec {
            dport: 8080,
            ..spec.clone()
        }
        .build();
        assert_eq!(
            fx.run(&other).unwrap(),
            (XDP_PASS, other),
            "{spec:?} for no service"
        );
    }
    let fine = Frame6Spec {
        hop_limit: 1,
        ..Default::default()
    };
    assert_eq!(fx.run(&fine.build()).unwrap().0, XDP_TX);
}

/// Two IPv6 VIPs that differ only in bytes 4 to 7, which do not pick a slot of each CPU's
/// service cache (lookup's SERVICE_CACHE), with a service on the same port: taken in turn, each
/// packet still reaches its own VIP's service, whichever held the slot before.
#[test]
fn ipv6_vips_that_share_a_cache_slot_are_told_apart() {
    if !require_root() {
        return;
    }
    let mut fx = Fixture::new();
    let vips: [Ipv6Addr; 2] = [
        "2001:db8::100".parse().unwrap(),
        "2001:db8:1::100".parse().unwrap(),
    ];
    for (i, vip) in vips.iter().enumerate() {
        let svc = ServiceAddr {
            protocol: Protocol::Tcp,
            vip: (*vip).into(),
            port: 80,
        };
        fx.add_service(svc, SchedulerSpec::default());
        let real: Ipv6Addr = format!("2001:db8::{}", 11 + i).parse().unwrap();
        fx.add_real_spec(
            svc,
            RealSpec {
                addr: Some(real.into()),
                mac: Some(Mac(real_mac(11 + i as u8))),
                ..Default::default()
            },
        );
    }
    for round in 0..3u16 {
        for (i, vip) in vips.iter().enumerate() {
            let spec = Frame6Spec {
                dst: *vip,
                sport: 1000 + round,
                tcp_flags: TCP_SYN,
                ..Default::default()
            };
            let (verdict, out) = fx.run(&spec.build()).unwrap();
            assert_eq!(
                (verdict, out[5]),
                (XDP_TX, 11 + i as u8),
                "{vip} in round {round}"
            );
        }
    }
}
