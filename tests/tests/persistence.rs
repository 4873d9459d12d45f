//! Persistence (ipvsadm -p, -M) in the datapath, through BPF_PROG_TEST_RUN: a client's new
//! connections go to the real server its first one went to, whatever the scheduler would do,
//! while the template lives; clients grouped by the netmask share it; a drained real server keeps
//! its clients, a failed one loses them; the template expires `timeout` after its last use; a
//! port-0 service takes every port of its VIP, one client's ports all going to one real server.

use std::net::{Ipv4Addr, Ipv6Addr};

use lb_tests::fixture::{real_addr, Fixture};
use lb_tests::require_root;
use lb_user::{
    health::Health,
    packet::{Frame6Spec, FrameSpec},
    state::{Mac, Netmask, Protocol, RealSpec, Scheduler, SchedulerSpec, ServiceAddr},
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);

fn service(port: u16) -> ServiceAddr {
    ServiceAddr {
        protocol: Protocol::Tcp,
        vip: VIP.into(),
        port,
    }
}

/// A persistent rr service on `port` over rs11..rs13: without persistence every new
/// connection would go to the next server.
fn fixture(port: u16, timeout: u32, netmask: Option<Netmask>) -> Fixture {
    let mut fx = Fixture::new();
    fx.add_service(
        service(port),
        SchedulerSpec {
            scheduler: Some(Scheduler::Rr),
            persistent: Some(timeout),
            netmask,
            ..Default::default()
        },
    );
    for n in 11..=13 {
        fx.add_real(service(port), n, 1);
    }
    fx
}

/// A new connection (SYN) from `client`, its own source port `sport`, to VIP:`dport`.
fn connect(fx: &mut Fixture, client: Ipv4Addr, sport: u16, dport: u16) -> Option<u8> {
    fx.send(&FrameSpec {
        src: client,
        sport,
        dport,
        ..Default::default()
    })
}

#[test]
fn a_clients_connections_stay_with_one_real_server() {
    if !require_root() {
        return;
    }
    let mut fx = fixture(80, 300, None);
    let (a, b) = (Ipv4Addr::new(10, 1, 0, 1), Ipv4Addr::new(10, 1, 0, 2));
    let first_a = connect(&mut fx, a, 1000, 80).unwrap();
    let first_b = connect(&mut fx, b, 1000, 80).unwrap();
    assert_ne!(
        first_a, first_b,
        "rr gave the two clients different servers"
    );
    for port in 1001..1010 {
        assert_eq!(
            connect(&mut fx, a, port, 80),
            Some(first_a),
            "client a, port {port}"
        );
        assert_eq!(
            connect(&mut fx, b, port, 80),
            Some(first_b),
            "client b, port {port}"
        );
    }
    // Drained: its persistent clients stay (as IPVS's quiescent servers keep their templates).
    fx.set_weight(service(80), first_a, 0);
    assert_eq!(connect(&mut fx, a, 2000, 80), Some(first_a), "drained");
    // Down: they move, and stay where they moved.
    fx.change(|s| s.set_health(service(80), real_addr(first_a).into(), Health::Down, None));
    let moved = connect(&mut fx, a, 2001, 80).unwrap();
    assert_ne!(moved, first_a, "a failed server keeps no client");
    assert_eq!(connect(&mut fx, a, 2002, 80), Some(moved));
}

#[test]
fn clients_under_one_netmask_share_a_real_server() {
    if !require_root() {
        return;
    }
    let mut fx = fixture(
        80,
        300,
        Some(Netmask::Dotted(Ipv4Addr::new(255, 255, 255, 0))),
    );
    let first = connect(&mut fx, Ipv4Addr::new(10, 1, 7, 1), 1000, 80).unwrap();
    for host in 2..40 {
        let c = Ipv4Addr::new(10, 1, 7, host);
        assert_eq!(
            connect(&mut fx, c, 1000, 80),
            Some(first),
            "{c} of the same /24"
        );
    }
    let other = connect(&mut fx, Ipv4Addr::new(10, 1, 8, 1), 1000, 80).unwrap();
    assert_ne!(other, first, "another /24 gets rr's next server");
}

#[test]
fn a_template_expires_its_timeout_after_its_last_use() {
    if !require_root() {
        return;
    }
    let mut fx = fixture(80, 1, None);
    let a = Ipv4Addr::new(10, 1, 0, 1);
    let first = connect(&mut fx, a, 1000, 80).unwrap();
    assert_eq!(connect(&mut fx, a, 1001, 80), Some(first));
    std::thread::sleep(std::time::Duration::from_millis(2200));
    // Expired: rr's next server (the one after `first`).
    let next = connect(&mut fx, a, 1002, 80).unwrap();
    assert_eq!(next, if first == 13 { 11 } else { first + 1 });
}

#[test]
fn a_port_0_service_takes_every_port_and_keeps_a_clients_ports_together() {
    if !require_root() {
        return;
    }
    let mut fx = fixture(0, 300, None);
    let a = Ipv4Addr::new(10, 1, 0, 1);
    let first = connect(&mut fx, a, 1000, 80).unwrap();
    for (sport, dport) in [(1001, 443), (1002, 8080), (1003, 22), (1004, 80)] {
        assert_eq!(
            connect(&mut fx, a, sport, dport),
            Some(first),
            "port {dport}"
        );
    }
    let b = connect(&mut fx, Ipv4Addr::new(10, 1, 0, 2), 1000, 443).unwrap();
    assert_ne!(b, first);
    // A service of its own on a port wins over the port-0 one.
    let mut fx = fixture(0, 300, None);
    fx.add_service(
        service(443),
        SchedulerSpec {
            scheduler: Some(Scheduler::Rr),
            ..Default::default()
        },
    );
    fx.add_real(service(443), 21, 1);
    assert_eq!(connect(&mut fx, a, 1000, 443), Some(21));
    assert!(matches!(connect(&mut fx, a, 1001, 80), Some(11..=13)));
}

#[test]
fn a_failed_or_deleted_real_server_releases_its_templates() {
    if !require_root() {
        return;
    }
    use lb_user::datapath::MapWriter;
    use lb_user::state::RealSpec;
    let mut fx = fixture(80, 300, None);
    let (a, b) = (Ipv4Addr::new(10, 1, 0, 1), Ipv4Addr::new(10, 1, 0, 2));
    let real_id = |fx: &Fixture, n: u8| {
        let svc = fx.state.service(&service(80)).unwrap();
        svc.reals
            .iter()
            .find(|r| r.addr == real_addr(n))
            .unwrap()
            .id
    };
    let template = |fx: &Fixture, c: Ipv4Addr| {
        let id = fx.state.service(&service(80)).unwrap().id;
        fx.maps
            .template(id, c.into())
            .unwrap()
            .map(|(real, _)| real)
    };
    let first_a = connect(&mut fx, a, 1000, 80).unwrap();
    let first_b = connect(&mut fx, b, 1000, 80).unwrap();
    assert_eq!(template(&fx, a), Some(real_id(&fx, first_a)));
    // Failed and back before the client returns: its template went with the failure.
    fx.change(|s| s.set_health(service(80), real_addr(first_a).into(), Health::Down, None));
    assert_eq!(template(&fx, a), None, "a failed server's template");
    assert_eq!(template(&fx, b), Some(real_id(&fx, first_b)), "others stay");
    fx.change(|s| s.set_health(service(80), real_addr(first_a).into(), Health::Up, None));
    assert_eq!(template(&fx, a), None);
    // Deleted: its clients' templates go, whoever takes its id next gets none of them.
    fx.change(|s| s.del_real(service(80), real_addr(first_b).into()));
    assert_eq!(template(&fx, b), None, "a deleted server's template");
    fx.change(|s| {
        s.add_real(
            service(80),
            &RealSpec {
                addr: Some(real_addr(first_b).into()),
                weight: Some(1),
                mac: Some(lb_user::state::Mac(lb_tests::fixture::real_mac(first_b))),
                ..Default::default()
            },
        )
    });
    assert_eq!(template(&fx, b), None);
}

#[test]
fn persistence_holds_with_every_scheduler() {
    if !require_root() {
        return;
    }
    for scheduler in Scheduler::ALL {
        let mut fx = Fixture::new();
        fx.add_service(
            service(80),
            SchedulerSpec {
                scheduler: Some(scheduler),
                persistent: Some(300),
                ..Default::default()
            },
        );
        for n in 11..=13 {
            fx.add_real(service(80), n, 1);
        }
        for host in 1..=10 {
            let client = Ipv4Addr::new(10, 1, 0, host);
            let first = connect(&mut fx, client, 1000, 80).unwrap();
            for sport in 1001..1010 {
                assert_eq!(
                    connect(&mut fx, client, sport, 80),
                    Some(first),
                    "{}: {client}:{sport}",
                    scheduler.name()
                );
            }
        }
    }
}

const VIP6: &str = "2001:db8::100";

/// [`fixture`] for an IPv6 VIP, over real servers 2001:db8::11 to ::13.
fn fixture6(port: u16, netmask: Option<Netmask>) -> Fixture {
    let mut fx = Fixture::new();
    add_service6(&mut fx, port, netmask);
    fx
}

/// A persistent rr service on VIP6:`port` over 2001:db8::11 to ::13.
fn add_service6(fx: &mut Fixture, port: u16, netmask: Option<Netmask>) {
    let svc = ServiceAddr {
        protocol: Protocol::Tcp,
        vip: VIP6.parse::<Ipv6Addr>().unwrap().into(),
        port,
    };
    fx.add_service(
        svc,
        SchedulerSpec {
            scheduler: Some(Scheduler::Rr),
            persistent: Some(300),
            netmask,
            ..Default::default()
        },
    );
    for n in 11..=13u8 {
        let addr: Ipv6Addr = format!("2001:db8::{n}").parse().unwrap();
        fx.add_real_spec(
            svc,
            RealSpec {
                addr: Some(addr.into()),
                mac: Some(Mac(lb_tests::fixture::real_mac(n))),
                ..Default::default()
            },
        );
    }
}

/// [`connect`] over IPv6: the real server (its MAC's last byte) the SYN went to, unchanged.
fn connect6(fx: &mut Fixture, client: &str, sport: u16, dport: u16) -> u8 {
    let frame = Frame6Spec {
        src: client.parse().unwrap(),
        dst: VIP6.parse().unwrap(),
        sport,
        dport,
        ..Default::default()
    }
    .build();
    let (verdict, out) = fx.run(&frame).expect("test run");
    assert_eq!(verdict, lb_tests::fixture::XDP_TX, "{client}:{sport}");
    assert_eq!(
        out[12..],
        frame[12..],
        "LVS/DR leaves the packet as it came"
    );
    out[5]
}

/// IPv6: the same, with the netmask a prefix length. Clients in one /64 share a template, those
/// in another get their own, every port of a port-0 service included; the default (128) keeps
/// each address apart.
#[test]
fn ipv6_clients_under_one_prefix_share_a_real_server() {
    if !require_root() {
        return;
    }
    let mut fx = fixture6(80, Some(Netmask::Prefix(64)));
    let a = connect6(&mut fx, "2001:db8:1:1::1", 1000, 80);
    let b = connect6(&mut fx, "2001:db8:1:2::1", 1000, 80);
    assert_ne!(a, b, "rr gave the two prefixes different servers");
    for port in 1001..1006 {
        assert_eq!(connect6(&mut fx, "2001:db8:1:1::1", port, 80), a);
        assert_eq!(connect6(&mut fx, "2001:db8:1:1:aaaa::7", port, 80), a);
        assert_eq!(connect6(&mut fx, "2001:db8:1:2:ffff::", port, 80), b);
    }

    // Each address apart by default: a neighbour in the /64 is scheduled afresh (rr: the next).
    let mut fx = fixture6(80, None);
    let a = connect6(&mut fx, "2001:db8:1:1::1", 1000, 80);
    let c = connect6(&mut fx, "2001:db8:1:1::2", 1000, 80);
    assert_ne!(a, c);
    assert_eq!(connect6(&mut fx, "2001:db8:1:1::1", 1001, 80), a);

    // A port-0 service: every port of one client's prefix on one real server.
    let mut fx = fixture6(0, Some(Netmask::Prefix(48)));
    let first = connect6(&mut fx, "2001:db8:5::1", 1000, 80);
    for (sport, dport) in [(1001, 443), (1002, 8080), (1003, 22)] {
        assert_eq!(connect6(&mut fx, "2001:db8:5:9::3", sport, dport), first);
    }
    assert_ne!(connect6(&mut fx, "2001:db8:6::1", 1000, 443), first);
}

/// A prefix of 0 groups every client of the service. The first service has id 0, so its one
/// template's key is all zeros: the value the datapath's memo of the last template placed
/// (persist.rs) starts with, which must not pass for a placed key. Another service's clients
/// in between move the memo on, so a template written where the memo's start pointed is lost.
#[test]
fn ipv6_a_prefix_of_0_puts_every_client_on_one_real_server() {
    if !require_root() {
        return;
    }
    let mut fx = fixture6(80, Some(Netmask::Prefix(0)));
    add_service6(&mut fx, 443, None);
    let first = connect6(&mut fx, "2001:db8:1:1::1", 1000, 80);
    let clients = ["2001:db8:7::1", "fd00::1", "2001:db8:1:1::1"];
    for (sport, client) in (1001..).zip(clients) {
        connect6(&mut fx, client, sport, 443);
        assert_eq!(connect6(&mut fx, client, sport, 80), first, "{client}");
    }
}
