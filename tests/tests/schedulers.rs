//! IPVS's schedulers in the datapath, run by the kernel through BPF_PROG_TEST_RUN on new flows:
//! `rr` and `wrr` go through their sequences exactly as IPVS's (the fixture keeps a test on one
//! CPU); `lc`, `wlc`, `sed` and `nq` choose by the connection counts and weights as IPVS's loops
//! do; `fo` and `ovf` by weight (and active connections); `dh` by the destination address. For
//! each, weight 0 and a failed health check take a server out, and `xdplb simulate`'s answer is the datapath's.

use std::net::Ipv4Addr;

use lb_tests::fixture::{real_addr, Fixture};
use lb_tests::require_root;
use lb_user::{
    datapath::MapWriter as _,
    health::Health,
    packet::FrameSpec,
    state::{Loads, Protocol, Scheduler, SchedulerSpec, ServiceAddr},
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);

fn service(vip: Ipv4Addr) -> ServiceAddr {
    ServiceAddr {
        protocol: Protocol::Tcp,
        vip: vip.into(),
        port: 80,
    }
}

/// A service on `vip` with `scheduler` over real servers 10.0.0.11.. of `weights`.
fn fixture_on(fx: &mut Fixture, vip: Ipv4Addr, scheduler: Scheduler, weights: &[u32]) {
    fx.add_service(
        service(vip),
        SchedulerSpec {
            scheduler: Some(scheduler),
            ..Default::default()
        },
    );
    for (i, &w) in weights.iter().enumerate() {
        fx.add_real(service(vip), 11 + i as u8, w);
    }
}

fn fixture(scheduler: Scheduler, weights: &[u32]) -> Fixture {
    let mut fx = Fixture::new();
    fixture_on(&mut fx, VIP, scheduler, weights);
    fx
}

/// New flow number `i` (a SYN from its own client address): the real server it went to.
fn new_flow(fx: &mut Fixture, i: u32) -> u8 {
    new_flow_to(fx, i, VIP)
}

fn new_flow_to(fx: &mut Fixture, i: u32, vip: Ipv4Addr) -> u8 {
    let spec = FrameSpec {
        src: Ipv4Addr::from(0x0a64_0000 + i),
        sport: 10000 + (i % 50000) as u16,
        dst: vip,
        ..Default::default()
    };
    fx.send(&spec)
        .unwrap_or_else(|| panic!("new flow {i} was not forwarded"))
}

/// Sets real server 10.0.0.`n`'s counts to (active, inactive) (as if that many connections).
fn set_conns(fx: &mut Fixture, n: u8, active: i64, inactive: i64) {
    let id = fx
        .state
        .service(&service(VIP))
        .unwrap()
        .real(real_addr(n).into())
        .unwrap()
        .id;
    let counts = fx.maps.conn_counts();
    let now = counts.get(id);
    counts.add(id, active - now.active, inactive - now.inactive);
}

/// What `xdplb simulate` says the next `n` new flows get, from the datapath's own counts and
/// position, as the agent computes it.
fn simulated(fx: &Fixture, n: u32) -> Vec<u8> {
    let svc = fx.state.service(&service(VIP)).unwrap();
    let counts = fx.maps.counters().unwrap().conns;
    let mut loads = Loads {
        conns: counts
            .iter()
            .enumerate()
            .map(|(id, c)| (id as u32, *c))
            .collect(),
        position: fx.maps.positions(svc.id).unwrap().iter().sum(),
        locality: fx
            .maps
            .locality(svc.id, lb_common::addr_from_v4(VIP.octets()))
            .unwrap(),
    };
    (0..n)
        .map(|i| {
            let flow = svc.flow(Ipv4Addr::from(0x0a64_0000 + i).into(), 10000);
            lb_user::state::addr_of(svc.choose(&flow, &mut loads).unwrap().addr)[15]
        })
        .collect()
}

#[test]
fn rr_takes_the_available_servers_in_turn() {
    if !require_root() {
        return;
    }
    let mut fx = fixture(Scheduler::Rr, &[1, 5, 1]);
    let seq: Vec<u8> = (0..7).map(|i| new_flow(&mut fx, i)).collect();
    assert_eq!(seq, [11, 12, 13, 11, 12, 13, 11]);
    // Weight 0 and a failed check take a server out of the turn.
    fx.set_weight(service(VIP), 12, 0);
    let predicted = simulated(&fx, 4);
    let seq: Vec<u8> = (10..14).map(|i| new_flow(&mut fx, i)).collect();
    assert_eq!(seq, predicted, "simulate agrees");
    assert!(seq.iter().all(|n| *n != 12), "{seq:?}");
    fx.change(|s| s.set_health(service(VIP), real_addr(13).into(), Health::Down, None));
    assert!((20..24).all(|i| new_flow(&mut fx, i) == 11));
}

#[test]
fn wrr_goes_through_ipvs_weighted_sequence() {
    if !require_root() {
        return;
    }
    // IPVS's wrr with weights 4, 3, 2: cw 4: a; cw 3: a b; cw 2: a b c; cw 1: a b c.
    let mut fx = fixture(Scheduler::Wrr, &[4, 3, 2]);
    let seq: Vec<u8> = (0..18).map(|i| new_flow(&mut fx, i)).collect();
    let cycle = [11, 11, 12, 11, 12, 13, 11, 12, 13];
    assert_eq!(seq[..9], cycle);
    assert_eq!(seq[9..], cycle);
    // A change starts the sequence over (as IPVS does), with the gcd of the weights as its step.
    fx.set_weight(service(VIP), 11, 6);
    fx.set_weight(service(VIP), 12, 4);
    let predicted = simulated(&fx, 7);
    let seq: Vec<u8> = (100..107).map(|i| new_flow(&mut fx, i)).collect();
    // 6, 4, 2 -> gcd 2: cw 6: a; cw 4: a b; cw 2: a b c.
    assert_eq!(seq, [11, 11, 12, 11, 12, 13, 11]);
    assert_eq!(seq, predicted, "simulate agrees");
}

/// A scheduler, the weights, each server's (active, inactive) connections, the server expected.
type Case = (Scheduler, [u32; 3], [(i64, i64); 3], u8);

#[test]
fn the_least_connection_family_chooses_as_ipvs() {
    if !require_root() {
        return;
    }
    // (scheduler, weights, (active, inactive) per server, expected choice)
    let cases: [Case; 10] = [
        // lc: active x256 + inactive, weights ignored.
        (Scheduler::Lc, [1, 1, 9], [(3, 0), (2, 300), (4, 0)], 11),
        (Scheduler::Lc, [1, 1, 9], [(3, 0), (2, 200), (4, 0)], 12),
        // wlc: overhead / weight.
        (Scheduler::Wlc, [1, 3, 1], [(2, 0), (5, 0), (2, 0)], 12),
        (Scheduler::Wlc, [1, 2, 1], [(2, 0), (5, 0), (2, 0)], 11),
        // sed: (active + 1) / weight.
        (Scheduler::Sed, [1, 3, 1], [(1, 0), (5, 0), (0, 50)], 13),
        (Scheduler::Sed, [1, 4, 1], [(1, 0), (3, 0), (1, 0)], 12),
        // nq: the first idle server, whatever the weights.
        (Scheduler::Nq, [1, 9, 1], [(2, 0), (1, 0), (0, 7)], 13),
        (Scheduler::Nq, [1, 9, 1], [(2, 0), (1, 0), (1, 0)], 12),
        // fo: the highest weight; ovf: the highest weight not overflowing (active > weight).
        (Scheduler::Fo, [2, 5, 3], [(9, 0), (99, 0), (0, 0)], 12),
        (Scheduler::Ovf, [2, 5, 3], [(1, 0), (6, 0), (3, 0)], 13),
    ];
    for (sched, weights, conns, expected) in cases {
        let mut fx = fixture(sched, &weights);
        for (n, (a, i)) in (11..).zip(conns) {
            set_conns(&mut fx, n, a, i);
        }
        assert_eq!(
            simulated(&fx, 1),
            [expected],
            "simulate, {sched} {weights:?} {conns:?}"
        );
        assert_eq!(
            new_flow(&mut fx, 1),
            expected,
            "{sched} {weights:?} {conns:?}"
        );
    }
}

#[test]
fn every_new_connection_moves_least_connection_along() {
    if !require_root() {
        return;
    }
    // wlc with 1:2:1 and nothing open: each SYN adds an inactive connection to its server.
    let mut fx = fixture(Scheduler::Wlc, &[1, 2, 1]);
    let predicted = simulated(&fx, 8);
    let seq: Vec<u8> = (0..8).map(|i| new_flow(&mut fx, i)).collect();
    assert_eq!(seq, predicted);
    let count = |n| seq.iter().filter(|x| **x == n).count();
    assert_eq!((count(11), count(12), count(13)), (2, 4, 2), "{seq:?}");
    // A server at weight 0 or down gets nothing, whatever its load.
    set_conns(&mut fx, 11, 0, 0);
    fx.set_weight(service(VIP), 11, 0);
    assert!((10..20).all(|i| new_flow(&mut fx, i) != 11));
    // ovf with every server overflowing: no server (dropped).
    let mut fx = fixture(Scheduler::Ovf, &[1, 1]);
    set_conns(&mut fx, 11, 2, 0);
    set_conns(&mut fx, 12, 2, 0);
    let spec = FrameSpec {
        src: Ipv4Addr::new(10, 100, 0, 1),
        ..Default::default()
    };
    assert_eq!(fx.send(&spec), None, "every server overflows");
}

#[test]
fn dh_keys_on_the_destination_address() {
    if !require_root() {
        return;
    }
    // Three VIPs with dh over the same servers: every client of one VIP gets that VIP's server;
    // the VIPs spread over the servers as IPVS's buckets say.
    let vips: Vec<Ipv4Addr> = (100..140).map(|n| Ipv4Addr::new(10, 0, 0, n)).collect();
    let mut fx = Fixture::new();
    for &vip in &vips {
        fixture_on(&mut fx, vip, Scheduler::Dh, &[1, 1, 1]);
    }
    let mut seen = std::collections::BTreeSet::new();
    for &vip in &vips {
        let svc = fx.state.service(&service(vip)).unwrap().clone();
        let first = new_flow_to(&mut fx, 0, vip);
        for i in 1..20 {
            assert_eq!(
                new_flow_to(&mut fx, i, vip),
                first,
                "dh: another client of {vip}"
            );
        }
        // IPVS's buckets: the hash of the address, dealt to the servers in turn.
        let bucket = lb_common::sched::dh_hash(&lb_common::addr_from_v4(vip.octets())) % 256;
        let expected = lb_user::state::addr_of(svc.reals[bucket as usize % 3].addr)[15];
        assert_eq!(first, expected, "{vip}: bucket {bucket}");
        seen.insert(first);
    }
    assert_eq!(seen.len(), 3, "40 VIPs over 3 servers");

    // Weight 0 on one server: its destinations go to the others, the others' stay.
    let before: Vec<u8> = vips.iter().map(|&v| new_flow_to(&mut fx, 100, v)).collect();
    for &vip in &vips {
        fx.set_weight(service(vip), 12, 0);
    }
    for (&vip, &was) in vips.iter().zip(&before) {
        let now = new_flow_to(&mut fx, 101, vip);
        if was == 12 {
            assert!(now == 11 || now == 13, "{vip}: {now}");
        } else {
            assert_eq!(now, was, "{vip} was not on the drained server");
        }
    }
}

/// Connection thresholds (ipvsadm -x, -y): a real server at its upper threshold gets no new
/// flows, whatever the scheduler, until its connections are under the lower one.
#[test]
fn an_overloaded_server_gets_nothing_until_under_its_lower_threshold() {
    if !require_root() {
        return;
    }
    for sched in [Scheduler::Rr, Scheduler::Wlc, Scheduler::Sh] {
        let mut fx = Fixture::new();
        fixture_on(&mut fx, VIP, sched, &[]);
        for (n, upper, lower) in [(11u8, 4u32, 2u32), (12, 0, 0)] {
            fx.add_real_spec(
                service(VIP),
                lb_user::state::RealSpec {
                    addr: Some(real_addr(n).into()),
                    mac: Some(lb_user::state::Mac(lb_tests::fixture::real_mac(n))),
                    upper: Some(upper),
                    lower: Some(lower),
                    ..Default::default()
                },
            );
        }
        // A client that sh sends to rs11 (sh hashes the source).
        let svc = fx.state.service(&service(VIP)).unwrap().clone();
        let to_11 = (0..1000u32)
            .find(|i| {
                let f = svc.flow(Ipv4Addr::from(0x0a64_0000 + i).into(), 10000);
                svc.pick(&f).unwrap().addr == real_addr(11)
            })
            .unwrap();
        let goes_to_11 = |fx: &mut Fixture, k: u32| {
            let i = if sched == Scheduler::Sh { to_11 } else { k };
            let spec = FrameSpec {
                src: Ipv4Addr::from(0x0a64_0000 + i),
                sport: 20000 + k as u16,
                ..Default::default()
            };
            fx.send(&spec) == Some(11)
        };
        set_conns(&mut fx, 11, 3, 1);
        assert!(
            !(0..6).any(|k| goes_to_11(&mut fx, k)),
            "{sched}: at its upper threshold"
        );
        set_conns(&mut fx, 11, 2, 1);
        assert!(
            !(10..16).any(|k| goes_to_11(&mut fx, k)),
            "{sched}: not yet under the lower one"
        );
        set_conns(&mut fx, 11, 1, 0);
        set_conns(&mut fx, 12, 9, 0); // wlc would prefer rs11 now
        assert!(
            (20..26).any(|k| goes_to_11(&mut fx, k)),
            "{sched}: under the lower threshold"
        );
        let listed = fx.maps.counters().unwrap().conns;
        let id = fx
            .state
            .service(&service(VIP))
            .unwrap()
            .real(real_addr(11).into())
            .unwrap()
            .id;
        assert_eq!(listed[id as usize].overloaded, 0, "{sched}");
    }
}

/// `lblc`: a destination keeps its real server until that one has more active connections than
/// its weight while another has fewer than half its own; then the least loaded takes the
/// destination over. `lblcr` keeps a set: the busy one stays a member, the new one joins.
#[test]
fn lblc_and_lblcr_keep_a_destinations_servers() {
    if !require_root() {
        return;
    }
    for sched in [Scheduler::Lblc, Scheduler::Lblcr] {
        let mut fx = fixture(sched, &[1, 1, 1]);
        let predicted = simulated(&fx, 1);
        let first = new_flow(&mut fx, 0);
        assert_eq!([first], predicted[..], "{sched}: simulate");
        assert_eq!(first, 11, "{sched}: all idle, the first");
        // Its load grows, but not past its weight: the destination stays.
        set_conns(&mut fx, 11, 1, 40);
        assert!(
            (1..6).all(|i| new_flow(&mut fx, i) == 11),
            "{sched}: sticks"
        );
        // Past its weight while rs12 and rs13 are idle: the least loaded takes over.
        set_conns(&mut fx, 11, 2, 0);
        set_conns(&mut fx, 12, 0, 3);
        set_conns(&mut fx, 13, 0, 1);
        let predicted = simulated(&fx, 1);
        assert_eq!(new_flow(&mut fx, 10), 13, "{sched}: to the least loaded");
        assert_eq!(predicted, [13], "{sched}: simulate");
        set_conns(&mut fx, 13, 0, 0);
        assert!(
            (11..16).all(|i| new_flow(&mut fx, i) == 13),
            "{sched}: the new server sticks"
        );
        // rs13 gets busier than rs11 (now idle): lblc stays with rs13 (not overloaded by its
        // rule), lblcr takes the least loaded member, rs11.
        set_conns(&mut fx, 11, 0, 0);
        set_conns(&mut fx, 13, 1, 50);
        let expected = if sched == Scheduler::Lblc { 13 } else { 11 };
        assert_eq!(simulated(&fx, 1), [expected], "{sched}: simulate");
        assert_eq!(new_flow(&mut fx, 20), expected, "{sched}: members");
    }
}
