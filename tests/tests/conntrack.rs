//! The connection table in the datapath (BPF_PROG_TEST_RUN): established flows keep their real
//! server across table changes, drains, deletions; RST, FIN and idle timeouts end an entry.

use std::net::Ipv4Addr;

use lb_common::{DirectorConfig, Reason, CONN_ESTABLISHED, CONN_FIN, IPPROTO_UDP};
use lb_tests::fixture::{config_with, default_config, real_addr, real_mac, Fixture, XDP_DROP};
use lb_tests::require_root;
use lb_user::datapath::MapWriter as _;
use lb_user::{
    config::Timeouts,
    datapath::LoadOptions,
    packet::{FrameSpec, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    state::{Mac, Protocol, RealSpec, Scheduler, SchedulerSpec, ServiceAddr, State},
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);

fn service(protocol: Protocol) -> ServiceAddr {
    let port = if protocol == Protocol::Tcp { 80 } else { 53 };
    ServiceAddr {
        protocol,
        vip: VIP.into(),
        port,
    }
}

fn mh() -> SchedulerSpec {
    SchedulerSpec {
        scheduler: Some(Scheduler::Mh),
        mh_size: Some(4093),
        hash: None,
        ..Default::default()
    }
}

/// An mh service (TCP, or UDP) over real servers 10.0.0.11..=13, weight 1.
fn fixture_with(config: DirectorConfig, protocol: Protocol) -> Fixture {
    with_service(Fixture::with_config(config), protocol)
}

/// The TCP service of [`fixture_with`], in a connection table for `conn_max` connections.
fn fixture_sized(conn_max: u32) -> Fixture {
    with_service(
        Fixture::with_options(default_config(), LoadOptions::flows(conn_max)),
        Protocol::Tcp,
    )
}

fn with_service(mut fx: Fixture, protocol: Protocol) -> Fixture {
    fx.add_service(service(protocol), mh());
    for n in 11..=13 {
        fx.add_real(service(protocol), n, 1);
    }
    fx
}

fn fixture() -> Fixture {
    fixture_with(default_config(), Protocol::Tcp)
}

/// Flow number `i`: a distinct client address and port.
fn packet(i: u32, flags: u8) -> FrameSpec {
    FrameSpec {
        src: Ipv4Addr::from(0xc0a8_0000 + i),
        sport: 10000 + (i % 50000) as u16,
        tcp_flags: flags,
        ..Default::default()
    }
}

/// The connection-table key of flow number `i`.
fn flow_key(fx: &Fixture, i: u32) -> lb_common::FlowKey {
    let p = packet(i, 0);
    fx.state
        .service(&service(Protocol::Tcp))
        .unwrap()
        .flow(p.src.into(), p.sport)
}

/// Opens `n` flows with a SYN; returns the real server (last MAC byte) of each.
fn open(fx: &mut Fixture, n: u32) -> Vec<u8> {
    (0..n)
        .map(|i| fx.send(&packet(i, TCP_SYN)).expect("forwarded"))
        .collect()
}

/// The connections (active, inactive) of the real server the table gives flows like `p`.
fn conns(fx: &Fixture, p: &FrameSpec) -> (i64, i64) {
    let svc = fx.state.service(&service(Protocol::Tcp)).unwrap();
    let id = svc.pick(&svc.flow(p.src.into(), p.sport)).unwrap().id;
    let c = fx.maps.counters().unwrap().conns[id as usize];
    (c.active, c.inactive)
}

/// The real server the current table gives a new flow like `spec`.
fn predicted(fx: &Fixture, spec: &FrameSpec) -> u8 {
    fx.predicted_mac(&service(Protocol::Tcp), spec)[5]
}

#[test]
fn established_flows_keep_their_real_server_when_the_table_changes() {
    if !require_root() {
        return;
    }
    let mut fx = fixture();
    let svc = service(Protocol::Tcp);
    let before = open(&mut fx, 300);
    fx.add_real(svc, 14, 1);
    fx.set_weight(svc, 11, 3);
    let mut moved_in_table = 0;
    for (i, &real) in before.iter().enumerate() {
        let ack = packet(i as u32, TCP_ACK);
        moved_in_table += (predicted(&fx, &ack) != real) as u32;
        assert_eq!(fx.send(&ack), Some(real), "flow {i} moved");
    }
    assert!(
        moved_in_table > 30,
        "the change moved only {moved_in_table} of 300 flows in the table"
    );
    // New flows follow the new table.
    for i in 1000..1300 {
        let syn = packet(i, TCP_SYN);
        assert_eq!(fx.send(&syn), Some(predicted(&fx, &syn)));
    }
}

#[test]
fn a_drained_real_server_keeps_its_flows_and_gets_no_new_ones() {
    if !require_root() {
        return;
    }
    let mut fx = fixture();
    let before = open(&mut fx, 300);
    assert!(before.contains(&12));
    fx.set_weight(service(Protocol::Tcp), 12, 0);
    for (i, &real) in before.iter().enumerate() {
        assert_eq!(fx.send(&packet(i as u32, TCP_ACK)), Some(real), "flow {i}");
    }
    for i in 1000..1500 {
        assert_ne!(
            fx.send(&packet(i, TCP_SYN)),
            Some(12),
            "a new flow went to the drained server"
        );
    }
}

#[test]
fn deleting_a_real_server_reschedules_only_its_flows() {
    if !require_root() {
        return;
    }
    let mut fx = fixture();
    let before = open(&mut fx, 300);
    fx.change(|s| s.del_real(service(Protocol::Tcp), real_addr(13).into()));
    for (i, &real) in before.iter().enumerate() {
        let ack = packet(i as u32, TCP_ACK);
        let now = fx.send(&ack).expect("forwarded");
        if real == 13 {
            assert_eq!(
                now,
                predicted(&fx, &ack),
                "flow {i} of the deleted server is rescheduled"
            );
        } else {
            assert_eq!(now, real, "flow {i} moved");
        }
    }
}

/// A flow number whose real server changes when real server 14 is added, and its server now.
fn flow_that_moves(fx: &mut Fixture, from: u32) -> (u32, u8) {
    let svc = service(Protocol::Tcp);
    let spec = RealSpec {
        addr: Some(real_addr(14).into()),
        weight: Some(1),
        mac: Some(Mac(real_mac(14))),
        ..Default::default()
    };
    let with_14 = fx.state.add_real(svc, &spec).unwrap();
    let pick = |state: &State, p: &FrameSpec| {
        let s = state.service(&svc).unwrap();
        s.pick(&s.flow(p.src.into(), p.sport)).unwrap().mac.0[5]
    };
    (from..from + 10_000)
        .find_map(|i| {
            let p = packet(i, TCP_SYN);
            let old = pick(&fx.state, &p);
            (old != pick(&with_14, &p)).then_some((i, old))
        })
        .expect("some flow moves")
}

/// A flow opened with a SYN, then real server 14 added so the table now gives that flow another
/// server: (fixture, flow number, the server it was opened on).
fn opened_then_table_moved() -> (Fixture, u32, u8) {
    let mut fx = fixture();
    let (i, old) = flow_that_moves(&mut fx, 0);
    assert_eq!(fx.send(&packet(i, TCP_SYN)), Some(old));
    fx.add_real(service(Protocol::Tcp), 14, 1);
    (fx, i, old)
}

#[test]
fn a_rst_ends_the_entry() {
    if !require_root() {
        return;
    }
    let (mut fx, i, old) = opened_then_table_moved();
    assert_eq!(fx.send(&packet(i, TCP_ACK)), Some(old), "established");
    // The RST still reaches the server that knows the connection, then the entry is gone.
    assert_eq!(fx.send(&packet(i, TCP_RST | TCP_ACK)), Some(old));
    assert_eq!(fx.maps.conn(&flow_key(&fx, i)), None);
    assert_eq!(
        fx.send(&packet(i, TCP_SYN)),
        Some(predicted(&fx, &packet(i, TCP_SYN)))
    );
}

#[test]
fn a_syn_after_a_fin_opens_a_new_connection() {
    if !require_root() {
        return;
    }
    let (mut fx, i, old) = opened_then_table_moved();
    // A retransmitted SYN of a live connection stays.
    assert_eq!(fx.send(&packet(i, TCP_SYN)), Some(old));
    assert_eq!(fx.send(&packet(i, TCP_FIN | TCP_ACK)), Some(old));
    assert_eq!(
        fx.maps.conn(&flow_key(&fx, i)).map(|c| c.flags & CONN_FIN),
        Some(CONN_FIN)
    );
    assert_eq!(
        fx.send(&packet(i, TCP_ACK)),
        Some(old),
        "the closing handshake stays"
    );
    // The same ports, a new connection: scheduled by the table as it is now.
    let new = predicted(&fx, &packet(i, TCP_SYN));
    assert_ne!(new, old);
    assert_eq!(fx.send(&packet(i, TCP_SYN)), Some(new));
    assert_eq!(fx.send(&packet(i, TCP_ACK)), Some(new));
}

#[test]
fn idle_entries_expire_after_their_timeout() {
    if !require_root() {
        return;
    }
    let short = config_with(&Timeouts {
        tcp: 1,
        udp: 1,
        ..Timeouts::default()
    });
    let mut tcp = fixture_with(short, Protocol::Tcp);
    let mut udp = fixture_with(short, Protocol::Udp);
    let udp_packet = |i: u32| FrameSpec {
        proto: IPPROTO_UDP,
        dport: 53,
        ..packet(i, 0)
    };
    let (t, t_old) = flow_that_moves(&mut tcp, 0);
    assert_eq!(tcp.send(&packet(t, TCP_SYN)), Some(t_old));
    // The UDP service has the same reals and table size, so the same flows move.
    let u_old = udp.send(&udp_packet(t)).expect("forwarded");
    for fx in [&mut tcp, &mut udp] {
        let svc = fx.state.services.keys().next().copied().unwrap();
        fx.add_real(svc, 14, 1);
    }
    assert_eq!(tcp.send(&packet(t, TCP_ACK)), Some(t_old), "still live");
    assert_eq!(udp.send(&udp_packet(t)), Some(u_old), "still live");
    // Idle for more than the 1 s timeout (the clock counts whole seconds).
    std::thread::sleep(std::time::Duration::from_millis(2600));
    assert_eq!(
        tcp.send(&packet(t, TCP_ACK)),
        Some(predicted(&tcp, &packet(t, TCP_ACK)))
    );
    assert_ne!(
        tcp.send(&packet(t, TCP_ACK)),
        Some(t_old),
        "expired, rescheduled"
    );
    let u_new = udp.send(&udp_packet(t)).unwrap();
    assert_eq!(
        u_new,
        udp.predicted_mac(&service(Protocol::Udp), &udp_packet(t))[5]
    );
}

#[test]
fn the_connection_table_size_is_configurable() {
    if !require_root() {
        return;
    }
    // Two slots a connection, in a power of two of buckets.
    let mut datapath = lb_user::datapath::Datapath::load_lb(LoadOptions::flows(4096)).unwrap();
    assert_eq!(datapath.maps().unwrap().conn_capacity().unwrap(), 8192);
    let mut default = lb_user::datapath::Datapath::load_lb(LoadOptions::default()).unwrap();
    assert_eq!(default.maps().unwrap().conn_capacity().unwrap(), 1 << 21);
}

/// A table for 4096 connections keeps nearly all of 4096: a bucket can fill before the table
/// does (about 4 % of them at this size, simulated), and then gives up one entry, whose real
/// server's counts go down with it: they add up to the entries.
#[test]
fn a_table_keeps_the_connections_it_is_sized_for() {
    if !require_root() {
        return;
    }
    let mut fx = fixture_sized(4096);
    open(&mut fx, 4096);
    let kept = (0..4096)
        .filter(|&i| fx.maps.conn(&flow_key(&fx, i)).is_some())
        .count();
    assert!(kept >= 3850, "kept {kept} of 4096 connections");
    let entries = fx.maps.connections().unwrap();
    assert_eq!(entries.len(), kept);
    let counted: i64 = (0..fx.maps.conn_counts().entries() as u32)
        .map(|id| fx.maps.conn_counts().get(id))
        .map(|c| c.active + c.inactive)
        .sum();
    assert_eq!(counted, kept as i64, "the counts of pushed-out entries");
}

/// Under a flood of new flows 20 times the table's slots, established connections in use keep
/// their entries and real servers: an insert into a full bucket gives up a handshake first.
/// (The established flows are picked three at most to a bucket: a bucket of four established
/// connections in use has to give one up, which is not what this tests.)
#[test]
fn a_flood_of_new_flows_pushes_out_handshakes_not_established_connections() {
    if !require_root() {
        return;
    }
    let mut fx = fixture_sized(256);
    let shape = fx.maps.conn_shape().unwrap();
    let slots = fx.maps.conn_capacity().unwrap();
    let mut per_bucket = vec![0; shape.buckets() as usize];
    let established: Vec<u32> = (0..)
        .filter(|&i| {
            let b = lb_common::conn_table::place(&flow_key(&fx, i), shape.seed, shape.mask).bucket;
            per_bucket[b as usize] += 1;
            per_bucket[b as usize] <= 3
        })
        .take(100)
        .collect();
    let reals: Vec<u8> = established
        .iter()
        .map(|&i| fx.send(&packet(i, TCP_ACK)).expect("forwarded"))
        .collect();
    let mut flood = 100_000;
    for round in 0..20 {
        for _ in 0..slots {
            fx.send(&packet(flood, TCP_SYN)).expect("forwarded");
            flood += 1;
        }
        // The connections go on: each packet keeps its entry's second chance.
        for (&i, &real) in established.iter().zip(&reals) {
            assert_eq!(
                fx.send(&packet(i, TCP_ACK)),
                Some(real),
                "round {round}: flow {i} moved"
            );
        }
    }
    for &i in &established {
        let conn = fx.maps.conn(&flow_key(&fx, i)).expect("still in the table");
        assert_ne!(conn.flags & CONN_ESTABLISHED, 0);
    }
    let entries = fx.maps.connections().unwrap();
    assert!(
        entries.len() as u32 > slots / 2,
        "the flood's flows were remembered too: {} entries",
        entries.len()
    );
}

#[test]
fn a_tcp_packet_of_an_unknown_flow_is_scheduled_and_remembered() {
    if !require_root() {
        return;
    }
    let mut fx = fixture();
    // No SYN seen (say, the flow began before a director failover): the table decides, and the
    // flow is bound from then on, as Maglev does.
    let real = fx.send(&packet(7, TCP_ACK)).expect("forwarded");
    assert_eq!(real, predicted(&fx, &packet(7, TCP_ACK)));
    let conn = fx.maps.conn(&flow_key(&fx, 7)).expect("an entry");
    let id = fx
        .state
        .service(&service(Protocol::Tcp))
        .unwrap()
        .real(real_addr(real).into())
        .unwrap()
        .id;
    assert_eq!(conn.real, id);
}

#[test]
fn new_flows_are_counted_once() {
    if !require_root() {
        return;
    }
    let mut fx = fixture();
    open(&mut fx, 50);
    for i in 0..50 {
        fx.send(&packet(i, TCP_ACK));
    }
    let c = lb_user::datapath::MapWriter::counters(&fx.maps).unwrap();
    let id = fx.state.service(&service(Protocol::Tcp)).unwrap().id as usize;
    assert_eq!((c.services[id].conns, c.services[id].packets), (50, 100));
}

/// Connections as IPVS counts them, per real server: a SYN is inactive (SYN_RECV), the ACK that
/// completes the handshake makes it active, a FIN inactive again, a RST gone; UDP flows are
/// inactive; a TCP flow first seen mid-connection is active. Other packets change nothing.
#[test]
fn active_and_inactive_connections_follow_the_tcp_states() {
    if !require_root() {
        return;
    }
    let mut fx = fixture();
    let syn = packet(1, TCP_SYN);
    fx.run(&syn.build()).unwrap();
    assert_eq!(conns(&fx, &syn), (0, 1), "SYN: a handshake");
    fx.run(&packet(1, TCP_SYN).build()).unwrap();
    assert_eq!(conns(&fx, &syn), (0, 1), "a retransmitted SYN");
    for _ in 0..3 {
        fx.run(&packet(1, TCP_ACK).build()).unwrap();
    }
    assert_eq!(conns(&fx, &syn), (1, 0), "established");
    fx.run(&packet(1, TCP_ACK | TCP_FIN).build()).unwrap();
    fx.run(&packet(1, TCP_ACK | TCP_FIN).build()).unwrap();
    assert_eq!(conns(&fx, &syn), (0, 1), "after the FIN");
    fx.run(&packet(1, TCP_ACK | TCP_RST).build()).unwrap();
    assert_eq!(conns(&fx, &syn), (0, 0), "reset");
    let mid = packet(2, TCP_ACK);
    fx.run(&mid.build()).unwrap();
    assert_eq!(conns(&fx, &mid), (1, 0), "first seen mid-connection");
    fx.run(&packet(2, TCP_RST).build()).unwrap();
    assert_eq!(conns(&fx, &mid), (0, 0));

    let mut udp = fixture_with(default_config(), Protocol::Udp);
    let dgram = FrameSpec {
        proto: IPPROTO_UDP,
        dport: 53,
        ..packet(3, 0)
    };
    for _ in 0..3 {
        udp.run(&dgram.build()).unwrap();
    }
    let svc = udp.state.service(&service(Protocol::Udp)).unwrap();
    let id = svc
        .pick(&svc.flow(dgram.src.into(), dgram.sport))
        .unwrap()
        .id;
    let c = udp.maps.counters().unwrap().conns[id as usize];
    assert_eq!((c.active, c.inactive), (0, 1), "UDP");
}

/// A damaged packet of an established flow (a wrong header checksum, cut short) is dropped
/// before it can touch the flow's entry: a damaged ACK does not complete the handshake, a
/// damaged FIN does not close the connection; the same packets undamaged do.
#[test]
fn a_damaged_packet_leaves_its_flows_entry_as_it_was() {
    if !require_root() {
        return;
    }
    let mut fx = fixture();
    let i = 5;
    let real = fx.send(&packet(i, TCP_SYN)).expect("forwarded");
    let key = flow_key(&fx, i);
    let flags = |fx: &Fixture| fx.maps.conn(&key).expect("an entry").flags;
    let bad_checksum = |flags: u8| {
        let mut frame = packet(i, flags).build();
        frame[14 + 10] ^= 0x5a;
        (frame, Reason::DropBadChecksum)
    };
    let cut_short = |flags: u8| {
        let frame = packet(i, flags).build();
        (frame[..frame.len() - 1].to_vec(), Reason::DropMalformed)
    };
    let damaged = |fx: &mut Fixture, (frame, reason): (Vec<u8>, Reason)| {
        let before = fx.reason(reason);
        assert_eq!(fx.run(&frame).unwrap().0, XDP_DROP, "{reason:?}");
        assert_eq!(fx.reason(reason), before + 1, "{reason:?} counted");
    };
    for frame in [bad_checksum(TCP_ACK), cut_short(TCP_ACK)] {
        damaged(&mut fx, frame);
        assert_eq!(flags(&fx), 0, "a damaged ACK: still a handshake");
    }
    assert_eq!(conns(&fx, &packet(i, 0)), (0, 1));
    assert_eq!(fx.send(&packet(i, TCP_ACK)), Some(real));
    assert_eq!(flags(&fx), CONN_ESTABLISHED, "the ACK completes it");
    for frame in [
        bad_checksum(TCP_ACK | TCP_FIN),
        cut_short(TCP_ACK | TCP_FIN),
    ] {
        damaged(&mut fx, frame);
        assert_eq!(flags(&fx), CONN_ESTABLISHED, "a damaged FIN: still open");
    }
    assert_eq!(conns(&fx, &packet(i, 0)), (1, 0));
    assert_eq!(fx.send(&packet(i, TCP_ACK | TCP_FIN)), Some(real));
    assert_eq!(flags(&fx), CONN_ESTABLISHED | CONN_FIN, "the FIN closes it");
}

/// The FIN timeout runs from the FIN: a connection last refreshed longer ago than the FIN
/// timeout is not mistaken for a new, active one by the ACK that follows its FIN.
#[test]
fn the_fin_timeout_runs_from_the_fin() {
    if !require_root() {
        return;
    }
    let config = config_with(&Timeouts {
        tcp_fin: 1,
        ..Timeouts::default()
    });
    let mut fx = fixture_with(config, Protocol::Tcp);
    let p = packet(7, TCP_ACK);
    fx.run(&p.build()).unwrap();
    let svc = fx.state.service(&service(Protocol::Tcp)).unwrap().clone();
    let flow = svc.flow(p.src.into(), p.sport);
    let mut conn = fx.maps.conn(&flow).unwrap();
    // Last refreshed 2 s ago (refreshes come every few seconds at most).
    let hz = lb_user::datapath::clock::ticks_per_second().unwrap();
    conn.last_seen = conn.last_seen.wrapping_sub(2 * hz);
    fx.maps.set_conn(&flow, &conn).unwrap();
    fx.run(&packet(7, TCP_ACK | TCP_FIN).build()).unwrap();
    fx.run(&packet(7, TCP_ACK).build()).unwrap();
    let after = fx.maps.conn(&flow).unwrap();
    assert_eq!(
        after.flags & CONN_FIN,
        CONN_FIN,
        "the entry was made anew: {after:?}"
    );
    let c = fx.maps.counters().unwrap().conns[conn.real as usize];
    assert_eq!((c.active, c.inactive), (0, 1));
}
