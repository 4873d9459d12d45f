//! The datapath's side of connection sync, run by the kernel through BPF_PROG_TEST_RUN: the ring
//! buffer gets an event when a flow is bound, on its first FIN, on a RST, and when a live flow is
//! due to be announced again; never for the other packets of an established flow or a damaged
//! one, and never with sync off.

use lb_common::{Conn, FlowKey, SyncEvent, CONN_ESTABLISHED, CONN_FIN, SYNC_BIND, SYNC_CLOSE};
use lb_tests::fixture::{default_config, real_addr, Fixture, XDP_DROP, XDP_TX};
use lb_tests::require_root;
use lb_user::datapath::{LoadOptions, MapWriter as _, SyncRing};
use lb_user::{
    datapath::clock::with_sync,
    packet::{FrameSpec, TCP_ACK, TCP_FIN, TCP_RST},
    state::{Protocol, Scheduler, SchedulerSpec, ServiceAddr},
};

fn service() -> ServiceAddr {
    ServiceAddr {
        protocol: Protocol::Tcp,
        vip: "10.0.0.100".parse().unwrap(),
        port: 80,
    }
}

fn fixture(sync: bool) -> (Fixture, SyncRing) {
    fixture_with(sync, LoadOptions::flows(65536))
}

fn fixture_with(sync: bool, opts: LoadOptions) -> (Fixture, SyncRing) {
    let mut fx = Fixture::with_options(with_sync(default_config(), sync), opts);
    fx.add_service(
        service(),
        SchedulerSpec {
            scheduler: Some(Scheduler::Mh),
            ..Default::default()
        },
    );
    fx.add_real(service(), 11, 1);
    fx.add_real(service(), 12, 1);
    let ring = fx.datapath.sync_events().unwrap();
    (fx, ring)
}

fn events(ring: &mut SyncRing) -> Vec<SyncEvent> {
    ring.events().into_iter().map(|(e, _)| e).collect()
}

fn packet(sport: u16, flags: u8) -> FrameSpec {
    FrameSpec {
        sport,
        tcp_flags: flags,
        ..Default::default()
    }
}

#[test]
fn events_for_binding_fin_and_rst_only() {
    if !require_root() {
        return;
    }
    let (mut fx, mut ring) = fixture(true);
    let syn = packet(40000, 0x02);
    assert_eq!(fx.run(&syn.build()).unwrap().0, XDP_TX);
    let bound = events(&mut ring);
    assert_eq!(bound.len(), 1, "{bound:?}");
    let ev = bound[0];
    let svc = fx.state.service(&service()).unwrap();
    let flow = svc.flow(syn.src.into(), syn.sport);
    let real = svc.pick(&flow).unwrap();
    assert_eq!(
        (ev.kind, ev.flow, ev.service, ev.real, ev.flags),
        (SYNC_BIND, flow, svc.id, real.id, 0)
    );
    // The rest of the connection: no events.
    for _ in 0..10 {
        fx.run(&packet(40000, TCP_ACK).build()).unwrap();
    }
    assert!(events(&mut ring).is_empty());
    // A FIN with a wrong header checksum is dropped before it closes anything, here or on a peer.
    let mut damaged = packet(40000, TCP_ACK | TCP_FIN).build();
    damaged[14 + 10] ^= 0x5a;
    assert_eq!(fx.run(&damaged).unwrap().0, XDP_DROP);
    assert!(events(&mut ring).is_empty());
    // The first FIN is announced (peers use the shorter timeout), the second is not.
    fx.run(&packet(40000, TCP_ACK | TCP_FIN).build()).unwrap();
    fx.run(&packet(40000, TCP_ACK | TCP_FIN).build()).unwrap();
    let fin = events(&mut ring);
    assert_eq!(fin.len(), 1, "{fin:?}");
    assert_eq!(
        (fin[0].kind, fin[0].flags),
        (SYNC_BIND, CONN_FIN | CONN_ESTABLISHED)
    );
    // A RST closes it on the peers too.
    fx.run(&packet(40000, TCP_ACK | TCP_RST).build()).unwrap();
    let rst = events(&mut ring);
    assert_eq!(rst.len(), 1, "{rst:?}");
    assert_eq!((rst[0].kind, rst[0].flow), (SYNC_CLOSE, flow));
    // A RST of an unknown flow tells the peers nothing.
    fx.run(&packet(40001, TCP_RST).build()).unwrap();
    assert!(events(&mut ring).is_empty());
    assert_eq!(fx.maps.sync_counters().unwrap(), (3, 0));
}

#[test]
fn a_live_flow_is_announced_again_when_its_refresh_crosses_a_period() {
    if !require_root() {
        return;
    }
    let (mut fx, mut ring) = fixture(true);
    let config = with_sync(default_config(), true);
    assert!(config.sync_shift > 0);
    let svc = fx.state.service(&service()).unwrap().clone();
    let flow = svc.flow(real_addr(101).into(), 40000);
    let real = svc.pick(&flow).unwrap().id;
    let now = lb_user::datapath::clock::jiffies_now().unwrap();
    let period = 1u32 << config.sync_shift;
    // Last seen in the previous period, long enough ago to be refreshed: announced again.
    let before = (now & !(period - 1)).wrapping_sub(config.refresh + 1);
    let conn = Conn {
        real,
        service: svc.id,
        last_seen: before,
        flags: 0,
    };
    fx.maps.set_conn(&flow, &conn).unwrap();
    let ack = FrameSpec {
        src: real_addr(101),
        ..packet(40000, TCP_ACK)
    };
    fx.run(&ack.build()).unwrap();
    let ev = events(&mut ring);
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!((ev[0].kind, ev[0].real), (SYNC_BIND, real));
    // Refreshed just now: the next packets announce nothing.
    fx.run(&ack.build()).unwrap();
    assert!(events(&mut ring).is_empty());
    // Refreshed within the same period: nothing either.
    let same = Conn {
        last_seen: now.wrapping_sub(config.refresh + 1),
        ..conn
    };
    if (same.last_seen ^ now) >> config.sync_shift == 0 {
        fx.maps.set_conn(&flow, &same).unwrap();
        fx.run(&ack.build()).unwrap();
        assert!(events(&mut ring).is_empty());
    }
}

/// When an event happened, as the agent tells it (the datapath stamps only the kernel's tick):
/// the first read, with nothing to go by but the tick, within a tick or two of the packet; once
/// the agent has looked at the ring, between that look and the read that finds it.
#[test]
fn an_events_time_is_placed_between_the_agents_looks() {
    if !require_root() {
        return;
    }
    use lb_user::datapath::clock::{monotonic_ns, tick_ns};
    let (mut fx, mut ring) = fixture(true);
    let tick = tick_ns().unwrap();
    let sent = monotonic_ns();
    assert_eq!(fx.run(&packet(40000, 0x02).build()).unwrap().0, XDP_TX);
    let read = ring.events();
    assert_eq!(read.len(), 1);
    let when = read[0].1;
    assert!(
        when + 2 * tick >= sent && when <= monotonic_ns(),
        "sent at {sent}, placed at {when} (ticks of {tick} ns)"
    );
    // A look that finds nothing, then the packet, then the read.
    let looked = monotonic_ns();
    assert!(ring.events().is_empty());
    std::thread::sleep(std::time::Duration::from_millis(1));
    assert_eq!(fx.run(&packet(40001, 0x02).build()).unwrap().0, XDP_TX);
    let read = ring.events();
    let after = monotonic_ns();
    assert_eq!(read.len(), 1);
    let when = read[0].1;
    assert!(
        (looked..=after).contains(&when),
        "placed at {when}, outside the looks {looked}..={after}"
    );
}

/// Each CPU's ring holds what its agent has not read yet: past that, events are lost and
/// counted, the packets forwarded all the same; once read, its slots take new events, in order,
/// as often as the ring goes round.
#[test]
fn a_full_ring_loses_events_and_takes_them_again_once_read() {
    if !require_root() {
        return;
    }
    const SLOTS: u16 = 16;
    let (mut fx, mut ring) = fixture_with(
        true,
        LoadOptions {
            sync_slots: SLOTS.into(),
            ..LoadOptions::flows(65536)
        },
    );
    let svc = fx.state.service(&service()).unwrap().clone();
    let mut written = 0u64;
    let mut lost = 0u64;
    // Three times round the ring, each time filled past its end before the agent reads it.
    for lap in 0..3u16 {
        let first = 40000 + lap * 100;
        for port in first..first + SLOTS + 5 {
            assert_eq!(fx.run(&packet(port, 0x02).build()).unwrap().0, XDP_TX);
        }
        written += u64::from(SLOTS);
        lost += 5;
        assert_eq!(fx.maps.sync_counters().unwrap(), (written, lost));
        let got: Vec<(FlowKey, u32)> = events(&mut ring).iter().map(|e| (e.flow, e.real)).collect();
        // The first SLOTS flows of the lap, oldest first, each with the server it was bound to.
        let want: Vec<(FlowKey, u32)> = (first..first + SLOTS)
            .map(|port| {
                let flow = svc.flow(packet(port, 0x02).src.into(), port);
                (flow, svc.pick(&flow).unwrap().id)
            })
            .collect();
        assert_eq!(got, want, "lap {lap}");
        assert!(events(&mut ring).is_empty());
    }
}

/// Every CPU writes into a ring of its own; the agent reads them all.
#[test]
fn events_written_on_every_cpu_are_read() {
    if !require_root() {
        return;
    }
    let (mut fx, mut ring) = fixture(true);
    // The fixture pinned this thread to one CPU: every online CPU in turn.
    let cpus = aya::util::online_cpus().unwrap();
    assert!(!cpus.is_empty());
    for (i, &cpu) in cpus.iter().enumerate() {
        lb_user::pktgen::pin_to_cpu(cpu as usize).unwrap();
        for n in 0..3u16 {
            let port = 40000 + (i as u16) * 10 + n;
            assert_eq!(fx.run(&packet(port, 0x02).build()).unwrap().0, XDP_TX);
        }
    }
    let mut ports: Vec<u16> = events(&mut ring).iter().map(|e| e.flow.sport).collect();
    ports.sort_unstable();
    let want: Vec<u16> = (0..cpus.len() as u16)
        .flat_map(|i| (0..3).map(move |n| 40000 + i * 10 + n))
        .collect();
    assert_eq!(ports, want);
    assert_eq!(fx.maps.sync_counters().unwrap(), (want.len() as u64, 0));
}

#[test]
fn without_sync_the_ring_stays_empty() {
    if !require_root() {
        return;
    }
    let (mut fx, mut ring) = fixture(false);
    for port in 40000..40010 {
        fx.run(&packet(port, 0x02).build()).unwrap();
        fx.run(&packet(port, TCP_ACK | TCP_FIN).build()).unwrap();
        fx.run(&packet(port, TCP_RST).build()).unwrap();
    }
    assert!(events(&mut ring).is_empty());
    assert_eq!(fx.maps.sync_counters().unwrap(), (0, 0));
}

/// Sync meets LVS/TUN: a flow a peer bound to a tunnelled real server, written into this
/// director's table as the sync daemon writes it, is encapsulated to that server, whatever this
/// director's table would pick.
#[test]
fn a_peers_flow_to_a_tunnel_real_server_is_encapsulated_to_it() {
    use lb_user::state::{Forward, Mac, RealSpec};
    use lb_user::sync::{apply_records, record_of, wire::Op, Directory};
    if !require_root() {
        return;
    }
    let (mut fx, _ring) = fixture(true);
    let tun = ServiceAddr {
        port: 82,
        ..service()
    };
    fx.add_service(
        tun,
        SchedulerSpec {
            scheduler: Some(Scheduler::Mh),
            ..Default::default()
        },
    );
    for n in [21, 22] {
        fx.add_real_spec(
            tun,
            RealSpec {
                addr: Some(real_addr(n).into()),
                forward: Some(Forward::Tunnel),
                mac: Some(Mac([2, 0xee, 0, 0, 0, n])),
                ..Default::default()
            },
        );
    }
    let svc = fx.state.service(&tun).unwrap().clone();
    let client = real_addr(150);
    let flow = svc.flow(client.into(), 41000);
    let picked = svc.pick(&flow).unwrap().addr;
    let other = svc.reals.iter().find(|r| r.addr != picked).unwrap();
    // The peer bound it to the other server: the record says so by address.
    let directory = Directory::new(&fx.state, &default_config());
    let record = record_of(&directory, &flow, svc.id, other.id, Op::Bind, 0, 0).unwrap();
    let (written, _) = apply_records(
        &mut fx.maps.conn_table().unwrap(),
        &directory,
        &[record],
        lb_user::datapath::clock::jiffies_now().unwrap(),
    );
    assert_eq!(written, 1);
    let ack = FrameSpec {
        src: client,
        sport: 41000,
        dport: 82,
        ..packet(41000, TCP_ACK)
    };
    let (verdict, out) = fx.run(&ack.build()).unwrap();
    assert_eq!(verdict, XDP_TX);
    assert_eq!(out[14 + 9], 4, "an IPIP packet");
    assert_eq!(
        out[14 + 16..14 + 20],
        lb_user::state::addr_of(other.addr)[12..],
        "to the peer's real server, not {picked}"
    );
}
