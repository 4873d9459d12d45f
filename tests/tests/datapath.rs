//! The XDP program itself, run by the kernel through BPF_PROG_TEST_RUN on frames built byte by
//! byte, with maps written by the same agent state and map writer `xdplb run` uses. Asserts the
//! bytes that come out and the verdict.

use std::net::Ipv4Addr;

use lb_common::{rng::XorShift64, Reason, IPPROTO_UDP};
use lb_tests::fixture::{
    random_client, real_mac, Fixture, DIRECTOR_MAC, XDP_DROP, XDP_PASS, XDP_TX,
};
use lb_tests::require_root;
use lb_user::{
    datapath::MapWriter as _,
    packet::{FrameSpec, TCP_ACK, TCP_SYN},
    state::{Protocol, Scheduler, SchedulerSpec, ServiceAddr},
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);

fn tcp_service() -> ServiceAddr {
    ServiceAddr {
        protocol: Protocol::Tcp,
        vip: VIP.into(),
        port: 80,
    }
}

fn udp_service() -> ServiceAddr {
    ServiceAddr {
        protocol: Protocol::Udp,
        vip: VIP.into(),
        port: 53,
    }
}

/// A TCP and a UDP `sh` service on the VIP, each over real servers 10.0.0.11.. with `weights`.
fn fixture(weights: &[u32]) -> Fixture {
    let mut fx = Fixture::new();
    for svc in [tcp_service(), udp_service()] {
        fx.add_service(svc, SchedulerSpec::default());
        for (i, &w) in weights.iter().enumerate() {
            fx.add_real(svc, 11 + i as u8, w);
        }
    }
    fx
}

/// Asserts the frame was forwarded by LVS/DR: XDP_TX, destination MAC = the predicted real
/// server, source MAC = the director, every other byte unchanged. Returns the real's MAC.
fn assert_direct_routed(fx: &mut Fixture, svc: &ServiceAddr, spec: &FrameSpec) -> [u8; 6] {
    let frame = spec.build();
    let (verdict, out) = fx.run(&frame).unwrap();
    assert_eq!(verdict, XDP_TX, "verdict for {spec:?}");
    assert_eq!(out.len(), frame.len());
    let expected = fx.predicted_mac(svc, spec);
    assert_eq!(out[0..6], expected, "destination MAC");
    assert_eq!(out[6..12], DIRECTOR_MAC, "source MAC");
    assert_eq!(
        out[12..],
        frame[12..],
        "the packet after the MAC addresses changed"
    );
    expected
}

#[test]
fn tcp_and_udp_to_a_vip_leave_with_only_the_macs_changed() {
    if !require_root() {
        return;
    }
    let mut fx = fixture(&[1, 1, 1]);
    assert_direct_routed(
        &mut fx,
        &tcp_service(),
        &FrameSpec {
            payload: b"hello".to_vec(),
            ..Default::default()
        },
    );
    let udp = FrameSpec {
        proto: IPPROTO_UDP,
        dport: 53,
        payload: vec![7; 40],
        ..Default::default()
    };
    assert_direct_routed(&mut fx, &udp_service(), &udp);
}

#[test]
fn packets_not_for_a_service_pass_unchanged() {
    if !require_root() {
        return;
    }
    let mut fx = fixture(&[1, 1]);
    let cases = [
        (
            FrameSpec {
                dst: Ipv4Addr::new(10, 0, 0, 1),
                ..Default::default()
            },
            Reason::PassNoService,
        ),
        (
            FrameSpec {
                dport: 81,
                ..Default::default()
            },
            Reason::PassNoService,
        ),
        // UDP to the TCP service's port, TCP to the UDP service's port.
        (
            FrameSpec {
                proto: IPPROTO_UDP,
                ..Default::default()
            },
            Reason::PassNoService,
        ),
        (
            FrameSpec {
                dport: 53,
                ..Default::default()
            },
            Reason::PassNoService,
        ),
        (
            FrameSpec {
                proto: 1,
                ..Default::default()
            },
            Reason::PassNotTcpUdp,
        ),
        // A fragment other than the first carries no ports.
        (
            FrameSpec {
                frag: 0x2000 | 185,
                ..Default::default()
            },
            Reason::PassFragment,
        ),
    ];
    for (spec, reason) in cases {
        let before = fx.reason(reason);
        let frame = spec.build();
        let (verdict, out) = fx.run(&frame).unwrap();
        assert_eq!(verdict, XDP_PASS, "{spec:?}");
        assert_eq!(out, frame, "a passed frame must be untouched");
        assert_eq!(fx.reason(reason), before + 1, "{reason:?} counted");
    }
    // Not IPv4 at all: ARP and IPv6.
    for ethertype in [[0x08, 0x06], [0x86, 0xdd]] {
        let mut frame = FrameSpec::default().build();
        frame[12..14].copy_from_slice(&ethertype);
        let (verdict, out) = fx.run(&frame).unwrap();
        assert_eq!((verdict, &out), (XDP_PASS, &frame));
    }
}

#[test]
fn a_first_fragment_is_forwarded() {
    if !require_root() {
        return;
    }
    let mut fx = fixture(&[1, 1]);
    // More-fragments set, offset 0: it has the ports, so it is scheduled like any packet.
    let spec = FrameSpec {
        frag: 0x2000,
        payload: vec![1; 64],
        ..Default::default()
    };
    assert_direct_routed(&mut fx, &tcp_service(), &spec);
}

#[test]
fn ip_options_and_a_vlan_tag_are_handled() {
    if !require_root() {
        return;
    }
    let mut fx = fixture(&[1, 2]);
    let options = FrameSpec {
        ip_options: vec![1; 40],
        payload: b"x".to_vec(),
        ..Default::default()
    };
    assert_direct_routed(&mut fx, &tcp_service(), &options);
    let vlan = FrameSpec {
        vlan: Some(42),
        ..Default::default()
    };
    assert_direct_routed(&mut fx, &tcp_service(), &vlan);
    let both = FrameSpec {
        vlan: Some(7),
        ip_options: vec![1; 8],
        proto: IPPROTO_UDP,
        dport: 53,
        ..Default::default()
    };
    assert_direct_routed(&mut fx, &udp_service(), &both);
}

#[test]
fn a_vip_packet_cut_short_is_never_sent_out() {
    if !require_root() {
        return;
    }
    let mut fx = fixture(&[1, 1]);
    for spec in [
        FrameSpec {
            payload: b"0123456789".to_vec(),
            ..Default::default()
        },
        FrameSpec {
            proto: IPPROTO_UDP,
            dport: 53,
            payload: vec![9; 12],
            ..Default::default()
        },
        FrameSpec {
            vlan: Some(3),
            ip_options: vec![1; 12],
            ..Default::default()
        },
    ] {
        let frame = spec.build();
        assert_eq!(
            fx.run(&frame).unwrap().0,
            XDP_TX,
            "the whole frame is forwarded"
        );
        let mut tested = 0;
        for len in 0..frame.len() {
            match fx.run(&frame[..len]) {
                Ok((verdict, _)) => {
                    assert!(
                        verdict == XDP_PASS || verdict == XDP_DROP,
                        "{len} bytes: verdict {verdict}"
                    );
                    tested += 1;
                }
                // The kernel refuses to run XDP on less than an Ethernet header.
                Err(e) if len < 14 => {
                    assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{len} bytes")
                }
                Err(e) => panic!("{len} bytes: {e}"),
            }
        }
        assert!(tested >= frame.len() - 14);
    }
    // Headers complete but the IPv4 length claims more than the frame holds: dropped, counted.
    let before = fx.reason(Reason::DropMalformed);
    let mut frame = FrameSpec {
        payload: vec![0; 20],
        ..Default::default()
    }
    .build();
    frame.truncate(frame.len() - 10);
    assert_eq!(fx.run(&frame).unwrap().0, XDP_DROP);
    assert_eq!(fx.reason(Reason::DropMalformed), before + 1);
}

#[test]
fn ethernet_padding_after_the_ip_packet_is_fine() {
    if !require_root() {
        return;
    }
    let mut fx = fixture(&[1]);
    let mut frame = FrameSpec::default().build();
    frame.extend_from_slice(&[0; 6]);
    let (verdict, out) = fx.run(&frame).unwrap();
    assert_eq!(verdict, XDP_TX);
    assert_eq!(out[12..], frame[12..]);
}

#[test]
fn a_source_always_picks_the_same_real_server() {
    if !require_root() {
        return;
    }
    let mut fx = fixture(&[1, 1, 1]);
    for client in 1..=20u8 {
        let src = Ipv4Addr::new(192, 168, 0, client);
        let first = assert_direct_routed(
            &mut fx,
            &tcp_service(),
            &FrameSpec {
                src,
                ..Default::default()
            },
        );
        for sport in [1024, 33333, 65535] {
            let spec = FrameSpec {
                src,
                sport,
                tcp_flags: TCP_ACK,
                ..Default::default()
            };
            assert_eq!(assert_direct_routed(&mut fx, &tcp_service(), &spec), first);
        }
    }
}

#[test]
fn weights_1_2_3_share_30000_random_sources() {
    if !require_root() {
        return;
    }
    let mut fx = fixture(&[1, 2, 3]);
    let mut seen = [0u32; 3];
    let mut sources = std::collections::HashSet::new();
    let mut rng = XorShift64::new(1);
    const N: u32 = 30_000;
    for _ in 0..N {
        let src = random_client(&mut rng);
        sources.insert(src);
        let mac = assert_direct_routed(
            &mut fx,
            &tcp_service(),
            &FrameSpec {
                src,
                ..Default::default()
            },
        );
        seen[(mac[5] - 11) as usize] += 1;
    }
    for (i, n) in seen.iter().enumerate() {
        let share = *n as f64 / N as f64;
        let want = (i + 1) as f64 / 6.0;
        assert!(
            (share - want).abs() <= 0.03,
            "real {i}: {share:.3} of sources, want {want:.3} ± 0.03 ({seen:?})"
        );
    }
    let c = fx.maps.counters().unwrap();
    let svc = fx.state.service(&tcp_service()).unwrap();
    assert_eq!(c.services[svc.id as usize].packets, N as u64);
    assert_eq!(
        c.services[svc.id as usize].conns,
        sources.len() as u64,
        "every new flow is a new connection, a repeated one is not"
    );
    for (r, n) in svc.reals.iter().zip(seen) {
        assert_eq!(
            c.reals[r.id as usize].packets, n as u64,
            "per-real counter of {}",
            r.addr
        );
    }
}

#[test]
fn a_service_without_real_servers_drops() {
    if !require_root() {
        return;
    }
    let mut fx = fixture(&[]);
    let before = fx.reason(Reason::DropNoReal);
    assert_eq!(fx.run(&FrameSpec::default().build()).unwrap().0, XDP_DROP);
    assert_eq!(fx.reason(Reason::DropNoReal), before + 1);
    // All weights 0: the same.
    let mut fx = fixture(&[0, 0]);
    assert_eq!(fx.run(&FrameSpec::default().build()).unwrap().0, XDP_DROP);
}

#[test]
fn deleting_a_real_server_moves_only_its_clients() {
    if !require_root() {
        return;
    }
    let mut fx = fixture(&[1, 1, 1]);
    let clients: Vec<Ipv4Addr> = (0..300u32)
        .map(|i| Ipv4Addr::from(0xac10_0000 + i * 7))
        .collect();
    let before: Vec<[u8; 6]> = clients
        .iter()
        .map(|&src| {
            assert_direct_routed(
                &mut fx,
                &tcp_service(),
                &FrameSpec {
                    src,
                    ..Default::default()
                },
            )
        })
        .collect();
    fx.change(|s| s.del_real(tcp_service(), Ipv4Addr::new(10, 0, 0, 12).into()));
    for (&src, old) in clients.iter().zip(before) {
        let new = assert_direct_routed(
            &mut fx,
            &tcp_service(),
            &FrameSpec {
                src,
                ..Default::default()
            },
        );
        if old == real_mac(12) {
            assert_ne!(new, real_mac(12));
        } else {
            assert_eq!(new, old, "client {src} of a remaining real server moved");
        }
    }
}

/// The director acts only on frames for its own MAC (and its stacked devices'): a frame for a
/// VIP that a switch flooded to it goes to the kernel untouched.
#[test]
fn frames_for_another_hosts_mac_pass_untouched() {
    if !require_root() {
        return;
    }
    let mut fx = fixture(&[1, 1]);
    let other = FrameSpec {
        dst_mac: [0x02, 0x99, 0, 0, 0, 0x01],
        ..Default::default()
    };
    let frame = other.build();
    let (verdict, out) = fx.run(&frame).unwrap();
    assert_eq!((verdict, out), (XDP_PASS, frame), "flooded frame");
    assert_eq!(fx.reason(Reason::PassOtherHost), 1);
    assert_eq!(fx.maps.counters().unwrap().services[0].packets, 0);
    // Broadcast and multicast destinations are not this host's unicast address either.
    for dst_mac in [[0xff; 6], [0x01, 0x00, 0x5e, 0, 0, 0x12]] {
        let f = FrameSpec {
            dst_mac,
            ..Default::default()
        }
        .build();
        assert_eq!(fx.run(&f).unwrap(), (XDP_PASS, f));
    }
    assert_eq!(fx.reason(Reason::PassOtherHost), 3);
}

/// keepalived's `use_vmac`: frames for the virtual MAC are forwarded while the device holds the
/// VIP (master), and dropped, never passed, while it holds none (backup): the kernel must not
/// reset connections it does not know.
#[test]
fn a_stacked_devices_mac_is_forwarded_while_it_holds_an_address() {
    if !require_root() {
        return;
    }
    let mut fx = fixture(&[1, 1]);
    let vmac = [0x00, 0x00, 0x5e, 0x00, 0x01, 0x33];
    let to_vmac = FrameSpec {
        dst_mac: vmac,
        ..Default::default()
    };
    fx.maps
        .set_local_macs(&[([0x02, 0xaa, 0, 0, 0, 1], true), (vmac, true)])
        .unwrap();
    let (verdict, out) = fx.run(&to_vmac.build()).unwrap();
    assert_eq!(verdict, XDP_TX, "master's virtual MAC");
    // From the MAC the frame came to: the master's on that link, whichever interface it is.
    assert_eq!(out[6..12], vmac, "sent from the virtual MAC it came to");
    fx.maps.set_local_macs(&[(vmac, false)]).unwrap();
    assert_eq!(
        fx.run(&to_vmac.build()).unwrap().0,
        XDP_DROP,
        "backup's virtual MAC"
    );
    assert_eq!(fx.reason(Reason::DropStandby), 1);
    // Not for a service: the kernel's business.
    let not_service = FrameSpec {
        dst_mac: vmac,
        dport: 22,
        ..Default::default()
    }
    .build();
    assert_eq!(fx.run(&not_service).unwrap(), (XDP_PASS, not_service));
    fx.maps.set_local_macs(&[]).unwrap();
    let frame = to_vmac.build();
    assert_eq!(fx.run(&frame).unwrap(), (XDP_PASS, frame), "device gone");
}

/// What the kernel would have dropped before IPVS saw it is dropped, and counted, when it is
/// for a service (new flow or established): a wrong header checksum, a source no client can
/// have, a TTL of 0. The same frames for no service go to the kernel as they are.
#[test]
fn packets_the_kernel_would_refuse_are_dropped_with_a_reason() {
    if !require_root() {
        return;
    }
    let mut fx = fixture(&[1, 1]);
    let bad_checksum = |spec: &FrameSpec| {
        let mut frame = spec.build();
        frame[14 + 10] ^= 0x5a;
        frame
    };
    let established = FrameSpec {
        sport: 41000,
        ..Default::default()
    };
    assert_direct_routed(&mut fx, &tcp_service(), &established);
    let ack = FrameSpec {
        tcp_flags: TCP_ACK,
        ..established.clone()
    };
    let mut cases: Vec<(Vec<u8>, Reason)> = vec![
        (bad_checksum(&FrameSpec::default()), Reason::DropBadChecksum),
        (bad_checksum(&ack), Reason::DropBadChecksum),
        (
            bad_checksum(&FrameSpec {
                ip_options: vec![1, 1, 1, 0],
                ..Default::default()
            }),
            Reason::DropBadChecksum,
        ),
        (
            FrameSpec {
                ttl: 0,
                ..Default::default()
            }
            .build(),
            Reason::DropTtlZero,
        ),
        (
            FrameSpec {
                ttl: 0,
                ..ack.clone()
            }
            .build(),
            Reason::DropTtlZero,
        ),
    ];
    for src in [
        "0.0.0.0",
        "0.1.2.3",
        "127.0.0.1",
        "127.200.1.1",
        "224.0.0.5",
        "239.255.255.250",
        "255.255.255.255",
        "10.0.0.100",
    ] {
        let spec = FrameSpec {
            src: src.parse().unwrap(),
            ..Default::default()
        };
        cases.push((spec.build(), Reason::DropBadSource));
    }
    for (frame, reason) in &cases {
        let before = fx.reason(*reason);
        let (verdict, _) = fx.run(frame).unwrap();
        assert_eq!(verdict, XDP_DROP, "{reason:?}: {frame:02x?}");
        assert_eq!(fx.reason(*reason), before + 1, "{reason:?} counted");
    }
    // For no service (another port of the VIP): the kernel's, untouched.
    for (frame, reason) in &cases {
        let mut other = frame.clone();
        other[14 + 20 + 2..14 + 20 + 4].copy_from_slice(&8080u16.to_be_bytes());
        if other[14] != 0x45 {
            continue;
        }
        let (verdict, out) = fx.run(&other).unwrap();
        assert_eq!(
            (verdict, &out),
            (XDP_PASS, &other),
            "{reason:?} for no service"
        );
    }
    // Still forwarded: TTL 1, a source from the 240/4 block the kernel accepts, and the
    // established flow's next packet.
    for spec in [
        FrameSpec {
            ttl: 1,
            ..Default::default()
        },
        FrameSpec {
            src: Ipv4Addr::new(240, 0, 0, 1),
            ..Default::default()
        },
        ack,
    ] {
        assert_direct_routed(&mut fx, &tcp_service(), &spec);
    }
}

/// IPv4 options the kernel accepts: padding, record route (room left, and full), timestamps
/// (times; addresses and times; overflowed), router alert, a kind it does not know, and
/// anything after the end of the list.
const ACCEPTED_OPTIONS: [&[u8]; 9] = [
    &[1, 1, 1, 0],
    &[7, 7, 4, 0, 0, 0, 0, 0],
    &[1, 7, 3, 4],
    &[68, 12, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    &[68, 12, 5, 1, 0, 0, 0, 0, 0, 0, 0, 0],
    &[68, 4, 5, 0x10],
    &[148, 4, 0, 0],
    &[30, 6, 1, 2, 3, 4, 0, 0],
    &[0, 9, 9, 9],
];

/// IPv4 options the kernel refuses (ip_options_compile, and source routes, which Linux
/// refuses unless accept_source_route is set), with why.
const REFUSED_OPTIONS: [(&str, &[u8]); 14] = [
    ("a length under 2", &[7, 1, 4, 0]),
    ("a length past the options", &[1, 7, 9, 4]),
    ("no room for the length", &[1, 1, 1, 7]),
    ("record route too short", &[7, 2, 1, 0]),
    ("record route pointer under 4", &[7, 7, 3, 0, 0, 0, 0, 0]),
    (
        "record route with no room for an address",
        &[7, 6, 4, 0, 0, 0, 1, 0],
    ),
    ("record route twice", &[7, 3, 4, 7, 3, 4, 0, 0]),
    ("timestamp too short", &[68, 3, 5, 0]),
    (
        "timestamp with no room for its address",
        &[68, 8, 5, 1, 0, 0, 0, 0],
    ),
    ("timestamp overflow count run out", &[68, 4, 5, 0xf0]),
    ("router alert too short", &[148, 2, 1, 0]),
    ("loose source route", &[131, 7, 4, 192, 0, 2, 1, 0]),
    ("strict source route", &[137, 7, 4, 192, 0, 2, 1, 0]),
    ("CIPSO too short", &[134, 6, 0, 0, 0, 1, 0, 0]),
];

/// The options' checker is a program of its own, which calls the director's program back: a
/// packet for a service with options the kernel would refuse is dropped and counted (new flow
/// or established), one with options it accepts is forwarded untouched, and the same
/// packets for no service go to the kernel as they are.
#[test]
fn ip_options_the_kernel_refuses_are_dropped_with_a_reason() {
    if !require_root() {
        return;
    }
    let mut fx = fixture(&[1, 1]);
    let established = FrameSpec {
        sport: 41000,
        ..Default::default()
    };
    assert_direct_routed(&mut fx, &tcp_service(), &established);
    let with = |options: &[u8], spec: &FrameSpec| FrameSpec {
        ip_options: options.to_vec(),
        payload: b"payload".to_vec(),
        ..spec.clone()
    };
    let ack = FrameSpec {
        tcp_flags: TCP_ACK,
        ..established
    };
    for (why, options) in REFUSED_OPTIONS {
        for spec in [with(options, &FrameSpec::default()), with(options, &ack)] {
            let before = fx.reason(Reason::DropBadOptions);
            let frame = spec.build();
            assert_eq!(fx.run(&frame).unwrap().0, XDP_DROP, "{why}: {spec:?}");
            assert_eq!(
                fx.reason(Reason::DropBadOptions),
                before + 1,
                "{why} counted"
            );
            let other = FrameSpec {
                dport: 8080,
                ..spec
            }
            .build();
            assert_eq!(
                fx.run(&other).unwrap(),
                (XDP_PASS, other),
                "{why}, no service"
            );
        }
    }
    let svc = fx.state.service(&tcp_service()).unwrap().id as usize;
    let conns_before = fx.maps.counters().unwrap().services[svc].conns;
    for (i, options) in ACCEPTED_OPTIONS.into_iter().enumerate() {
        let new_flow = FrameSpec {
            sport: 42000 + i as u16,
            ..FrameSpec::default()
        };
        assert_direct_routed(&mut fx, &tcp_service(), &with(options, &new_flow));
        assert_direct_routed(&mut fx, &tcp_service(), &with(options, &ack));
        let udp = FrameSpec {
            proto: IPPROTO_UDP,
            dport: 53,
            vlan: Some(5),
            ..new_flow
        };
        assert_direct_routed(&mut fx, &udp_service(), &with(options, &udp));
    }
    // The round trip through the checker counts each new flow once.
    assert_eq!(
        fx.maps.counters().unwrap().services[svc].conns,
        conns_before + ACCEPTED_OPTIONS.len() as u64
    );
}

/// The new-flow guard: past its limit of new flows per second on a CPU, new flows are still
/// forwarded to the real server the scheduler picks, but not remembered (counted as
/// tx_not_remembered); the flows remembered before keep their entries.
#[test]
fn past_the_new_flow_limit_flows_are_forwarded_but_not_remembered() {
    if !require_root() {
        return;
    }
    let mut fx = fixture(&[1, 1, 1]);
    fx.maps.set_new_flow_limit(3).unwrap();
    let flow = |i: u8| FrameSpec {
        src: Ipv4Addr::new(192, 0, 2, i),
        ..Default::default()
    };
    for i in 1..=5 {
        assert_direct_routed(&mut fx, &tcp_service(), &flow(i));
    }
    assert_eq!(fx.reason(Reason::TxNotRemembered), 2, "flows 4 and 5");
    // Remembered flows are established: their next packet is not a new flow (an ACK with no
    // entry would be one too, and counted as a new connection).
    let conns = |fx: &Fixture| {
        let c = fx.maps.counters().unwrap();
        let svc = fx.state.service(&tcp_service()).unwrap();
        c.services[svc.id as usize].conns
    };
    let before = conns(&fx);
    for i in 1..=3 {
        let ack = FrameSpec {
            tcp_flags: TCP_ACK,
            ..flow(i)
        };
        assert_direct_routed(&mut fx, &tcp_service(), &ack);
    }
    assert_eq!(conns(&fx), before, "flows 1-3 are in the table");
    assert_eq!(
        fx.reason(Reason::TxNotRemembered),
        2,
        "within the same second"
    );
    // Zeroing the counters (`xdplb zero`) zeroes this one too, and keeps the limit.
    fx.maps.reset_all_counters().unwrap();
    assert_eq!(fx.reason(Reason::TxNotRemembered), 0);
    assert_direct_routed(&mut fx, &tcp_service(), &flow(6));
    assert_eq!(
        fx.reason(Reason::TxNotRemembered),
        1,
        "still past the limit"
    );
    // No limit: every new flow is remembered.
    fx.maps.set_new_flow_limit(0).unwrap();
    assert_direct_routed(&mut fx, &tcp_service(), &flow(9));
    assert_eq!(fx.reason(Reason::TxNotRemembered), 1);
}

/// Past the limit a SYN flood is on. A SYN to a service that schedules by hash (`sh` here) goes
/// to the real server the hash picks without the connection table (it would not be remembered,
/// and the hash picks a remembered flow's server anyway): a SYN sent again for a remembered flow
/// counts as a new flow, not remembered, to the same server; its ACK still finds its entry. A
/// service that schedules by position (`rr`) still looks its SYNs up: sent again, a SYN keeps
/// its remembered server instead of the next one in turn.
#[test]
fn past_the_new_flow_limit_syns_of_hash_scheduled_services_skip_the_connection_table() {
    if !require_root() {
        return;
    }
    let mut fx = fixture(&[1, 1, 1]);
    let rr = ServiceAddr {
        port: 81,
        ..tcp_service()
    };
    fx.add_service(
        rr,
        SchedulerSpec {
            scheduler: Some(Scheduler::Rr),
            ..Default::default()
        },
    );
    for i in 0..3 {
        fx.add_real(rr, 11 + i, 1);
    }
    fx.maps.set_new_flow_limit(2).unwrap();
    let syn = |i: u8, dport: u16| FrameSpec {
        src: Ipv4Addr::new(192, 0, 2, i),
        dport,
        ..Default::default()
    };
    let counts = |fx: &Fixture, svc: &ServiceAddr| {
        let c = fx.maps.counters().unwrap();
        let id = fx.state.service(svc).unwrap().id as usize;
        (c.services[id].conns, fx.reason(Reason::TxNotRemembered))
    };
    let sent_to = |fx: &mut Fixture, spec: &FrameSpec| {
        let (verdict, out) = fx.run(&spec.build()).unwrap();
        assert_eq!(verdict, XDP_TX, "{spec:?}");
        <[u8; 6]>::try_from(&out[..6]).unwrap()
    };
    // Two flows remembered (one per service), then the limit is reached.
    let first_sh = assert_direct_routed(&mut fx, &tcp_service(), &syn(1, 80));
    let first_rr = sent_to(&mut fx, &syn(1, 81));
    assert_direct_routed(&mut fx, &tcp_service(), &syn(2, 80));
    assert_eq!(fx.reason(Reason::TxNotRemembered), 1, "the third flow");

    // rr: the SYN sent again finds its entry (no new connection, nothing unremembered).
    let before = counts(&fx, &rr);
    assert_eq!(sent_to(&mut fx, &syn(1, 81)), first_rr);
    assert_eq!(counts(&fx, &rr), before);

    // sh: the SYN sent again skips the table: a new flow, not remembered, to the same server.
    let (conns, unremembered) = counts(&fx, &tcp_service());
    let again = assert_direct_routed(&mut fx, &tcp_service(), &syn(1, 80));
    assert_eq!(again, first_sh);
    assert_eq!(counts(&fx, &tcp_service()), (conns + 1, unremembered + 1));
    // Its ACK is not a SYN: the entry is found, the flow established.
    let ack = FrameSpec {
        tcp_flags: TCP_ACK,
        ..syn(1, 80)
    };
    assert_direct_routed(&mut fx, &tcp_service(), &ack);
    assert_eq!(counts(&fx, &tcp_service()), (conns + 1, unremembered + 1));
}

/// Each CPU keeps the services it found last (lookup's SERVICE_CACHE): a change to the services
/// still reaches the very next packet on that CPU (the fixture keeps this thread on one). A
/// (persistent) port-0 service answers for port 80 until port 80 gets a service of its own, and
/// again once that one is deleted; with neither, the kernel gets the packet. Both a SYN and a packet taken
/// up mid-stream look their service up.
#[test]
fn a_change_to_the_services_reaches_the_next_packet() {
    if !require_root() {
        return;
    }
    let mut fx = Fixture::new();
    let any_port = ServiceAddr {
        port: 0,
        ..tcp_service()
    };
    // Port 0 is for persistent services only, as ipvsadm has it.
    let persistent = SchedulerSpec {
        persistent: Some(300),
        ..Default::default()
    };
    fx.add_service(any_port, persistent);
    fx.add_real(any_port, 11, 1);
    let mut rng = XorShift64::new(5);
    let mut send = |fx: &mut Fixture, tcp_flags: u8| {
        fx.send(&FrameSpec {
            src: random_client(&mut rng),
            tcp_flags,
            ..Default::default()
        })
    };
    for flags in [TCP_SYN, TCP_ACK] {
        assert_eq!(send(&mut fx, flags), Some(11), "the port-0 service");
    }
    fx.add_service(tcp_service(), SchedulerSpec::default());
    fx.add_real(tcp_service(), 21, 1);
    for flags in [TCP_SYN, TCP_ACK] {
        assert_eq!(send(&mut fx, flags), Some(21), "port 80's own service");
    }
    fx.change(|s| s.del_service(tcp_service()));
    for flags in [TCP_SYN, TCP_ACK] {
        assert_eq!(send(&mut fx, flags), Some(11), "the port-0 service again");
    }
    fx.change(|s| s.del_service(any_port));
    let passed = fx.reason(Reason::PassNoService);
    for flags in [TCP_SYN, TCP_ACK] {
        assert_eq!(send(&mut fx, flags), None, "no service");
    }
    assert_eq!(fx.reason(Reason::PassNoService), passed + 2);
}

/// More services than a CPU keeps (lookup's SERVICE_CACHE has 64 slots per CPU), taken in turn
/// twice: each packet still reaches its own service's real server, whichever service held its
/// slot before.
#[test]
fn services_that_share_a_cache_slot_are_told_apart() {
    if !require_root() {
        return;
    }
    let mut fx = Fixture::new();
    let services: Vec<(ServiceAddr, u8)> = (0..100u16)
        .map(|i| {
            let svc = ServiceAddr {
                port: 1000 + i,
                ..tcp_service()
            };
            (svc, 11 + i as u8)
        })
        .collect();
    for &(svc, real) in &services {
        fx.add_service(svc, SchedulerSpec::default());
        fx.add_real(svc, real, 1);
    }
    let mut rng = XorShift64::new(9);
    for round in 0..2 {
        for &(svc, real) in &services {
            let spec = FrameSpec {
                src: random_client(&mut rng),
                dport: svc.port,
                ..Default::default()
            };
            assert_eq!(
                fx.send(&spec),
                Some(real),
                "port {} in round {round}",
                svc.port
            );
        }
    }
}
