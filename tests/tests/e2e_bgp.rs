//! End to end, active/active directors behind ECMP, with the distribution's BIRD doing the BGP
//! (examples/bird-director.conf on each director, examples/bird-router.conf on the router, BFD
//! on): three directors announce the VIP through xdplb's route table, the router spreads 200
//! long-lived TCP connections over them, and the directors keep each other's connections
//! through sync. One director fails (its link goes down; later its agent stops with SIGTERM,
//! withdrawing first; later again all its real servers fail its health checks): the route
//! converges within 3 s, its connections go on through the others; it comes back and the rehash
//! moves connections to it: none is reset. A weight change on every director after the
//! connections opened sends many of them elsewhere by Maglev alone, so they survive the moves
//! only through sync. All three directors pick the same real server for 10,000 flows.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::time::{Duration, Instant};

use lb_tests::client::StreamSet;
use lb_tests::ha::held_by_connection_table;
use lb_tests::{
    require_program, require_root, Agent, Bird, ClientAt, DrTopology, FreshFlows, HaTopology, Serve,
};

const STREAMS: usize = 200;
const STALL: Duration = Duration::from_secs(12);
const CONVERGE: Duration = Duration::from_secs(3);
/// The longest a stream may wait for an answer across a move: the convergence, plus a TCP
/// retransmission or two.
const LONGEST_GAP: Duration = Duration::from_secs(5);
const TABLE: u32 = 100;

fn svc() -> String {
    HaTopology::service().to_string()
}

fn example(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples")
            .join(name),
    )
    .unwrap_or_else(|e| panic!("examples/{name}: {e}"))
}

/// examples/bird-director.conf for director `i`.
fn director_bird(i: usize) -> String {
    let config = example("bird-director.conf")
        .replace("192.0.2.254", &HaTopology::ROUTER_LAN.to_string())
        .replace("192.0.2.1", &HaTopology::director_addr(i).to_string())
        .replace("2001:db8:ffff::fe", &HaTopology::ROUTER_LAN6.to_string())
        .replace(
            "2001:db8:ffff::1",
            &HaTopology::director_addr6(i).to_string(),
        );
    assert!(config.contains("kernel table 100;"), "{config}");
    config
}

/// BIRD on directors 1..=`n`, each with [`director_bird`].
fn director_birds(topo: &HaTopology, n: usize) -> Vec<Bird> {
    (1..=n)
        .map(|i| {
            let name = format!("bird-d{i}");
            Bird::start(topo.director(i).ns(), topo.dir(), &name, &director_bird(i)).unwrap()
        })
        .collect()
}

/// examples/bird-router.conf for the topology's router and three directors.
fn router_bird() -> String {
    let mut config = example("bird-router.conf")
        .replace("192.0.2.254", &HaTopology::ROUTER_LAN.to_string())
        .replace("2001:db8:ffff::fe", &HaTopology::ROUTER_LAN6.to_string());
    for i in 1..=3 {
        config = config
            .replace(
                &format!("neighbor 192.0.2.{i} "),
                &format!("neighbor {} ", HaTopology::director_addr(i)),
            )
            .replace(
                &format!("neighbor 2001:db8:ffff::{i} "),
                &format!("neighbor {} ", HaTopology::director_addr6(i)),
            );
    }
    config
}

/// The directors the router's route to `vip` goes through now (an IPv6 route may name a
/// director by its link-local address).
fn nexthops(topo: &HaTopology, vip: IpAddr) -> Vec<usize> {
    let family = if vip.is_ipv6() { "-6" } else { "-4" };
    let router = topo.router().unwrap().ns();
    let out = router
        .ip(&[family, "route", "show", &vip.to_string()])
        .unwrap_or_default();
    let director = |hop: IpAddr| {
        (1..=topo.directors().len()).find(|&i| {
            hop == IpAddr::from(HaTopology::director_addr(i))
                || hop == IpAddr::from(HaTopology::director_addr6(i))
                || topo
                    .director(i)
                    .ns()
                    .ip(&["-6", "addr", "show", "dev", "eth0", "scope", "link"])
                    .is_ok_and(|a| a.contains(&format!("{hop}/64")))
        })
    };
    let mut hops: Vec<usize> = out
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[0] == "via")
        .filter_map(|w| director(w[1].parse().ok()?))
        .collect();
    hops.sort();
    hops
}

/// Waits until the router's nexthops for the VIP are exactly `directors`.
fn wait_nexthops(topo: &HaTopology, directors: &[usize], limit: Duration) -> Duration {
    wait_route(topo, HaTopology::VIP.into(), directors, limit)
}

/// Waits until the router's route to `vip` goes through exactly `directors`.
fn wait_route(topo: &HaTopology, vip: IpAddr, directors: &[usize], limit: Duration) -> Duration {
    let mut want = directors.to_vec();
    want.sort();
    let start = Instant::now();
    loop {
        let now = nexthops(topo, vip);
        if now == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "the router's route is {now:?}, not {want:?}, after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn start_agent(topo: &HaTopology, i: usize) -> Agent {
    let config = topo
        .config(
            i,
            &format!("[announce]\ntable = {TABLE}\n"),
            "mh",
            &[(1, 1), (2, 1), (3, 1), (4, 1)],
            Some("{ type = \"tcp\", interval_ms = 500, timeout_ms = 500, rise = 2, fall = 2 }"),
        )
        .unwrap();
    Agent::start_with_config(topo.director(i).ns(), &config).unwrap()
}

/// Packets the agent forwarded for the service so far.
fn forwarded(agent: &Agent) -> u64 {
    agent.list().service_stat(&svc(), "packets")
}

#[test]
fn ecmp_directors_keep_every_connection_when_one_fails_and_comes_back() {
    if !require_root() || !require_program("bird", "bird2") {
        return;
    }
    let topo = HaTopology::new(3, 4, Serve::Echo, ClientAt::BehindRouter).expect("topology");
    let router = topo.router().unwrap();
    let _rbird = Bird::start(router.ns(), topo.dir(), "bird-router", &router_bird()).unwrap();
    let mut agents: Vec<Agent> = (1..=3).map(|i| start_agent(&topo, i)).collect();
    let birds = director_birds(&topo, 3);
    wait_nexthops(&topo, &[1, 2, 3], Duration::from_secs(20));

    // Every director picks the same real server for the same flow.
    let sample: Vec<SocketAddrV4> = (0..10_000u32)
        .map(|i| {
            SocketAddrV4::new(
                Ipv4Addr::from(0x0a09_0000 | (i % 5000 + 1)),
                1024 + (i % 60000) as u16,
            )
        })
        .collect();
    let picks: Vec<Vec<SocketAddrV4>> = sample
        .chunks(2000)
        .map(|chunk| {
            let per_director: Vec<Vec<SocketAddrV4>> = agents
                .iter()
                .map(|a| a.simulate("-t", &svc(), chunk))
                .collect();
            assert!(
                per_director.windows(2).all(|w| w[0] == w[1]),
                "directors disagree"
            );
            per_director[0].clone()
        })
        .collect();
    assert_eq!(picks.iter().map(Vec::len).sum::<usize>(), 10_000);

    let sources = HaTopology::client_sources(ClientAt::BehindRouter);
    let flows = FreshFlows::from(sources, 20000).take(STREAMS);
    let before: Vec<u64> = agents.iter().map(forwarded).collect();
    let streams =
        StreamSet::open_with_stall(topo.client().ns(), &flows, HaTopology::service(), STALL)
            .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    streams.assert_flowing("through three directors");
    for (i, a) in agents.iter().enumerate() {
        let n = forwarded(a) - before[i];
        assert!(
            n > 200,
            "d{} forwarded only {n} packets: ECMP does not spread",
            i + 1
        );
    }
    // A table change everywhere: many connections now live on only in the connection tables.
    for a in &agents {
        a.cli_ok(&[
            "real",
            "edit",
            "-t",
            &svc(),
            "-r",
            &DrTopology::real_addr(1).to_string(),
            "-w",
            "5",
        ]);
    }
    let held = held_by_connection_table(&agents[0], &streams);
    assert!(
        held > 20,
        "only {held} connections would move: sync would hardly be tested"
    );

    // --- d3's link goes down: BFD takes it out of the route. ---
    let down = Instant::now();
    topo.set_link(3, false);
    let t = wait_nexthops(&topo, &[1, 2], CONVERGE);
    eprintln!("d3 link down: converged in {t:?}");
    std::thread::sleep(Duration::from_secs(4));
    streams.assert_recovered(down, LONGEST_GAP, "d3's link down");

    // d3 comes back: it takes a peer's table before it announces; the rehash moves connections
    // to it.
    let up = Instant::now();
    let d3_before = forwarded(&agents[2]);
    topo.set_link(3, true);
    let t = wait_nexthops(&topo, &[1, 2, 3], Duration::from_secs(10));
    eprintln!("d3 link up: back in the route after {t:?}");
    std::thread::sleep(Duration::from_secs(3));
    streams.assert_recovered(up, LONGEST_GAP, "d3 back");
    assert!(
        forwarded(&agents[2]) > d3_before + 100,
        "no connection moved back to d3"
    );

    // --- d3's agent stops (SIGTERM): it withdraws first and forwards during the grace period. ---
    let stop = Instant::now();
    let stopper = std::thread::scope(|s| {
        let handle = s.spawn(|| agents[2].stop());
        let t = wait_nexthops(&topo, &[1, 2], CONVERGE);
        eprintln!("d3 SIGTERM: withdrawn after {t:?}");
        handle.join().unwrap()
    });
    assert!(stopper.success(), "d3's agent exited with {stopper}");
    assert!(!topo.director(3).ns().xdp_attached("eth0").unwrap());
    std::thread::sleep(Duration::from_secs(2));
    streams.assert_recovered(stop, LONGEST_GAP, "d3 stopped");

    // A new agent on d3: it catches up, then announces; the rehash brings connections back.
    drop(agents.remove(2));
    let restart = Instant::now();
    let d3 = start_agent(&topo, 3);
    wait_nexthops(&topo, &[1, 2, 3], Duration::from_secs(15));
    let sync = d3.list_config().0["sync"].clone();
    assert!(
        sync["last_table"][1].as_u64().unwrap() >= STREAMS as u64,
        "d3 started without the table: {sync}"
    );
    std::thread::sleep(Duration::from_secs(3));
    streams.assert_recovered(restart, LONGEST_GAP, "d3 restarted");
    agents.push(d3);

    // --- d3 sees every real server fail its health checks: it withdraws. ---
    let blind = Instant::now();
    for i in 1..=4 {
        topo.director(3)
            .ns()
            .ip(&[
                "route",
                "add",
                "prohibit",
                &format!("{}/32", DrTopology::real_addr(i)),
            ])
            .unwrap();
    }
    let t = wait_nexthops(&topo, &[1, 2], Duration::from_secs(6));
    eprintln!("d3's real servers down in its view: withdrawn after {t:?}");
    let err = String::from_utf8_lossy(&agents[2].cli(&["check"]).stderr).into_owned();
    assert!(err.contains("no available real server"), "{err}");
    std::thread::sleep(Duration::from_secs(2));
    streams.assert_recovered(blind, LONGEST_GAP, "d3's real servers down");
    let finals = streams.stop();
    assert!(finals.iter().all(|s| s.failure.is_none()), "{finals:?}");
    drop(birds);
}

/// `xdplb drain` withdraws every VIP while forwarding goes on; `undrain` announces them again.
/// Routes someone removed from the table by hand come back.
#[test]
fn drain_withdraws_and_undrain_announces_again() {
    if !require_root() {
        return;
    }
    let topo = HaTopology::new(1, 1, Serve::Once, ClientAt::Lan).expect("topology");
    let config = format!(
        "interface = \"eth0\"\n[metrics]\nlisten = \"127.0.0.1:9727\"\n[announce]\ntable = {TABLE}\n[[service]]\nprotocol = \"tcp\"\nvip = \"{}\"\nport = 80\n[[service.real]]\naddress = \"{}\"\n",
        HaTopology::VIP,
        DrTopology::real_addr(1)
    );
    let d1 = Agent::start_with_config(topo.director(1).ns(), &config).unwrap();
    let ns = topo.director(1).ns();
    let table = TABLE.to_string();
    let routes = || ns.ip(&["route", "show", "table", &table]).unwrap();
    let wait = |want: bool| {
        let start = Instant::now();
        while routes().contains(&HaTopology::VIP.to_string()) != want {
            assert!(
                start.elapsed() < Duration::from_secs(8),
                "announced = {}: {}",
                !want,
                routes()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait(true);
    assert!(
        routes().contains("blackhole 10.0.0.100 proto static"),
        "{}",
        routes()
    );
    assert_eq!(d1.list_config().0["announce"]["announced"][0], "10.0.0.100");
    let scrape = || lb_tests::metrics::Scrape::get(ns, "127.0.0.1:9727".parse().unwrap()).unwrap();
    let announced = [("vip", "10.0.0.100"), ("table", "100")];
    assert_eq!(scrape().value("xdplb_vip_announced", &announced), 1.0);
    d1.cli_ok(&["drain"]);
    wait(false);
    assert_eq!(d1.list_config().0["drained"], true);
    let drained = scrape();
    assert_eq!(drained.value("xdplb_drained", &[]), 1.0);
    assert!(
        drained.samples("xdplb_vip_announced", &[]).next().is_none(),
        "{}",
        drained.text
    );
    // A drain survives a restart of the agent (a crash, an upgrade), not a stop.
    let mut d1 = d1;
    d1.kill();
    d1.restart().unwrap();
    assert_eq!(
        d1.list_config().0["drained"],
        true,
        "the drain was forgotten"
    );
    wait(false);
    d1.cli_ok(&["undrain"]);
    wait(true);
    ns.ip(&["route", "del", "10.0.0.100/32", "table", &table])
        .unwrap();
    wait(true);
    let _ = d1;
}

/// IPv6 VIPs over BGP, beside IPv4 ones (examples/bird-*.conf, an IPv6 session per director):
/// two dual-stack directors announce the IPv6 VIP while they can serve it, the router spreads
/// IPv6 connections over both, and a director that drains is withdrawn while its connections go
/// on through the other (sync); undrained, it is announced again, and none is reset.
#[test]
fn ipv6_vips_are_announced_over_bgp() {
    if !require_root() || !require_program("bird", "bird2") {
        return;
    }
    let topo = HaTopology::new(2, 3, Serve::Echo, ClientAt::BehindRouter)
        .and_then(HaTopology::with_ipv6)
        .expect("topology");
    let router = topo.router().unwrap();
    let _rbird = Bird::start(router.ns(), topo.dir(), "bird-router", &router_bird()).unwrap();
    let vip6 = SocketAddr::new(HaTopology::VIP6.into(), HaTopology::PORT);
    let agents: Vec<Agent> = (1..=2)
        .map(|i| {
            let mut config = format!(
                "interface = \"eth0\"\n{}[announce]\ntable = {TABLE}\n",
                topo.sync_config(i).unwrap()
            );
            config += &format!(
                "[[service]]\nprotocol = \"tcp\"\nvip = \"{}\"\nport = 80\nscheduler = \"mh\"\n",
                HaTopology::VIP6
            );
            for r in 1..=3 {
                config += &format!(
                    "[[service.real]]\naddress = \"{}\"\ncheck = {{ type = \"tcp\", interval_ms = 500, timeout_ms = 500 }}\n",
                    lb_tests::ipv6::Dr6Topology::real_addr(r)
                );
            }
            Agent::start_with_config(topo.director(i).ns(), &config)
                .unwrap_or_else(|e| panic!("d{i}: {e:#}\n{config}"))
        })
        .collect();
    let _birds = director_birds(&topo, 2);
    let vip: IpAddr = HaTopology::VIP6.into();
    wait_route(&topo, vip, &[1, 2], Duration::from_secs(20));
    let table = TABLE.to_string();
    let routes = topo
        .director(1)
        .ns()
        .ip(&["-6", "route", "show", "table", &table])
        .unwrap();
    assert!(
        routes.contains("blackhole 2001:db8::100 ") && routes.contains("proto static"),
        "{routes}"
    );
    assert_eq!(
        agents[0].list_config().0["announce"]["announced"][0],
        "2001:db8::100"
    );

    let sources = HaTopology::client_sources6();
    let flows: Vec<SocketAddr> = (0..60)
        .map(|k| SocketAddr::new(sources[k % sources.len()].into(), 21000 + k as u16))
        .collect();
    let forwarded = |a: &Agent| a.list().service_stat(&vip6.to_string(), "packets");
    let before: Vec<u64> = agents.iter().map(forwarded).collect();
    let streams = StreamSet::open_with_stall(topo.client().ns(), &flows, vip6, STALL).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    streams.assert_flowing("through two directors");
    for (i, a) in agents.iter().enumerate() {
        let n = forwarded(a) - before[i];
        assert!(
            n > 60,
            "d{} forwarded only {n} packets: ECMP does not spread",
            i + 1
        );
    }

    // d1 drains: withdrawn; its connections go on through d2, which has them from sync.
    let drained = Instant::now();
    agents[0].cli_ok(&["drain"]);
    let t = wait_route(&topo, vip, &[2], CONVERGE);
    eprintln!("d1 drained: IPv6 VIP withdrawn after {t:?}");
    std::thread::sleep(Duration::from_secs(2));
    streams.assert_recovered(drained, LONGEST_GAP, "d1 drained");
    agents[0].cli_ok(&["undrain"]);
    wait_route(&topo, vip, &[1, 2], Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(2));
    streams.assert_flowing("d1 back");
    let finals = streams.stop();
    assert!(finals.iter().all(|s| s.failure.is_none()), "{finals:?}");
}
