//! End to end, connection synchronisation between two directors (no VRRP or BGP daemon here:
//! the client's neighbour entry for the VIP decides which director gets its packets, as a
//! takeover's gratuitous ARP would). Established TCP connections keep their real server when
//! their packets move to the other director, even after the tables changed so that Maglev alone
//! would send them elsewhere; a director that starts (or restarts) takes its peer's table before
//! `xdplb check` passes; messages that are not authentic, fresh and from a peer are counted and
//! never inserted.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use lb_tests::client::{fetch_each, StreamSet};
use lb_tests::ha::{held_by_connection_table, sync_args, wait_fit, write_sync_key};
use lb_tests::ipv6::Dr6Topology;
use lb_tests::{require_root, Agent, ClientAt, FreshFlows, HaTopology, Serve};
use lb_user::sync::wire::{self, Body, Header, Key, Message, Op, Record};
use serde_json::Value;

const STREAMS: usize = 60;
const STREAM_PORTS: u16 = 20000;
const FRESH_PORTS: u16 = 30000;
const NEW_CONNS: usize = 30;

fn svc() -> String {
    HaTopology::service().to_string()
}

/// The same service on every director: Maglev over rs1..rs3, weight 1.
const REALS: [(usize, u32); 3] = [(1, 1), (2, 1), (3, 1)];

/// Director `i`'s agent, from a config file with sync to the others and [`REALS`].
fn start(topo: &HaTopology, i: usize) -> Agent {
    let config = topo.config(i, "", "mh", &REALS, None).unwrap();
    Agent::start_with_config(topo.director(i).ns(), &config)
        .unwrap_or_else(|e| panic!("agent on d{i}: {e:#}"))
}

/// Waits until `agent` has heard its first peer's hello with the same configuration.
fn wait_config_match(agent: &Agent) {
    let start = Instant::now();
    while sync_view(agent)["peers"][0]["config_match"] != true {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the peer's configuration does not match: {}",
            sync_view(agent)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `list --json`'s sync section.
fn sync_view(agent: &Agent) -> Value {
    agent.list_config().0["sync"].clone()
}

fn peer_stat(agent: &Agent, stat: &str) -> u64 {
    sync_view(agent)["peers"][0][stat]
        .as_u64()
        .unwrap_or_else(|| panic!("no {stat}: {}", sync_view(agent)))
}

/// Waits until `agent` has received at least `n` flows from its first peer.
fn wait_received(agent: &Agent, n: u64) {
    let start = Instant::now();
    while peer_stat(agent, "flows_received") < n {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the peer's flows did not arrive: {}",
            sync_view(agent)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn connections_keep_their_real_server_when_their_packets_move_to_the_other_director() {
    if !require_root() {
        return;
    }
    let topo = HaTopology::new(2, 4, Serve::Echo, ClientAt::Lan).expect("topology");
    move_between_directors(&topo);
}

/// The same with the updates sent once to a multicast group rather than to each peer.
#[test]
fn the_same_with_updates_to_a_multicast_group() {
    if !require_root() {
        return;
    }
    let topo = HaTopology::new(2, 4, Serve::Echo, ClientAt::Lan)
        .expect("topology")
        .with_sync_group("239.1.2.3".parse().unwrap());
    move_between_directors(&topo);
}

/// The same over IPv6 only: an IPv6 service and real servers, streams from many IPv6 sources,
/// and the directors syncing over IPv6 (`--sync-listen [addr]:port`).
#[test]
fn the_same_over_ipv6() {
    if !require_root() {
        return;
    }
    let topo = Dr6Topology::pair(4, Serve::Echo).expect("IPv6 topology");
    let dir = std::env::temp_dir().join(format!("xdplb-sync6-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = write_sync_key(&dir).unwrap();
    let service = Dr6Topology::service();
    let agents: Vec<Agent> = [(1, 2), (2, 1)]
        .into_iter()
        .map(|(i, peer)| {
            let args = sync_args(
                &key,
                Dr6Topology::director_addr(i),
                &[Dr6Topology::director_addr(peer)],
            );
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let agent = Agent::start(topo.director_at(i), "eth0", &args)
                .unwrap_or_else(|e| panic!("agent on d{i}: {e:#}"));
            let svc = service.to_string();
            agent.cli_ok(&["service", "add", "-t", &svc, "-s", "mh"]);
            for (r, _) in REALS {
                let rip = SocketAddr::new(Dr6Topology::real_addr(r).into(), 80).to_string();
                agent.cli_ok(&["real", "add", "-t", &svc, "-r", &rip]);
            }
            agent
        })
        .collect();
    let sources = Dr6Topology::client_sources();
    let flows = |first_port: u16, n: usize| -> Vec<SocketAddr> {
        (0..n)
            .map(|k| SocketAddr::new(sources[k % sources.len()].into(), first_port + k as u16))
            .collect()
    };
    between_directors(
        &agents[0],
        &agents[1],
        &Lan {
            client: topo.client(),
            service,
            flows: &flows,
            rs4: SocketAddr::new(Dr6Topology::real_addr(4).into(), 80).to_string(),
            send_vip_to: &|i| topo.send_vip_to(i).unwrap(),
        },
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The directors' LAN as [`between_directors`] uses it, for either family.
struct Lan<'a> {
    client: &'a lb_tests::Netns,
    service: SocketAddr,
    /// `n` fresh flows from the client's sources, from a port on.
    flows: &'a dyn Fn(u16, usize) -> Vec<SocketAddr>,
    /// The real server a table change adds (rs4), as `-r` takes it.
    rs4: String,
    /// Moves the VIP's packets to director `i`.
    send_vip_to: &'a dyn Fn(usize),
}

/// [`between_directors`] on the IPv4 LAN, the agents started from config files.
fn move_between_directors(topo: &HaTopology) {
    let flows = |first_port: u16, n: usize| -> Vec<SocketAddr> {
        FreshFlows::from(HaTopology::client_sources(ClientAt::Lan), first_port)
            .take(n)
            .into_iter()
            .map(Into::into)
            .collect()
    };
    between_directors(
        &start(topo, 1),
        &start(topo, 2),
        &Lan {
            client: topo.client().ns(),
            service: HaTopology::service().into(),
            flows: &flows,
            rs4: lb_tests::DrTopology::real_addr(4).to_string(),
            send_vip_to: &|i| topo.send_vip_to(i).unwrap(),
        },
    );
}

/// Streams through d1, a table change, the VIP's packets to d2, and back: no stream breaks.
fn between_directors(d1: &Agent, d2: &Agent, lan: &Lan) {
    let svc = lan.service.to_string();
    wait_fit(d1, Duration::from_secs(10));
    wait_fit(d2, Duration::from_secs(10));
    wait_config_match(d1);
    wait_config_match(d2);

    (lan.send_vip_to)(1);
    let flows = (lan.flows)(STREAM_PORTS, STREAMS);
    let streams = StreamSet::open(lan.client, &flows, lan.service)
        .unwrap_or_else(|e| panic!("streams through d1: {e:#}"));
    wait_received(d2, STREAMS as u64);

    // A table change on both directors: Maglev alone would now move some of the streams.
    for d in [d1, d2] {
        d.cli_ok(&["real", "add", "-t", &svc, "-r", &lan.rs4, "-w", "4"]);
    }
    let moved = held_by_connection_table(d2, &streams);
    assert!(
        moved > 0,
        "no stream would move: the test would not see a missing sync"
    );

    // The takeover: the client's packets now go to d2, which never saw these connections open.
    let before = d2.list().service_stat(&svc, "packets");
    (lan.send_vip_to)(2);
    std::thread::sleep(Duration::from_secs(2));
    streams.assert_flowing("after the move to d2");
    let after = d2.list().service_stat(&svc, "packets");
    assert!(
        after > before + STREAMS as u64,
        "d2 forwarded {} packets",
        after - before
    );
    // New connections through d2 work, and go where its table says.
    let fresh = (lan.flows)(FRESH_PORTS, NEW_CONNS);
    let service = lan.service;
    let answers = lan.client.run_in(|| fetch_each(&fresh, service));
    for (flow, a) in fresh.iter().zip(answers) {
        assert!(a.is_ok(), "new connection {flow} through d2: {a:?}");
    }
    // And back to d1: d1 learned d2's new flows too.
    wait_received(d1, NEW_CONNS as u64);
    (lan.send_vip_to)(1);
    std::thread::sleep(Duration::from_secs(1));
    streams.assert_flowing("back on d1");
    let finals = streams.stop();
    assert!(finals.iter().all(|s| s.failure.is_none()), "{finals:?}");
}

/// Every scheduler keeps its flows across a failover through connection synchronisation: for
/// each, streams open through d1, the real server holding most of them is drained on both
/// directors (no scheduler gives it a new flow), and the streams' packets move to d2, which only
/// knows where they belong from d1's sync.
#[test]
fn every_scheduler_keeps_its_flows_across_a_failover() {
    if !require_root() {
        return;
    }
    const PER_SCHEDULER: usize = 24;
    let topo = HaTopology::new(2, 3, Serve::Echo, ClientAt::Lan).expect("topology");
    // Weights high enough for ovf to take every stream.
    let reals = [(1, 20), (2, 20), (3, 20)];
    let schedulers = [
        "rr", "wrr", "lc", "wlc", "sed", "nq", "dh", "lblc", "lblcr", "fo", "ovf", "sh",
    ];
    for (k, scheduler) in schedulers.into_iter().enumerate() {
        let start_d = |i: usize| {
            let config = topo.config(i, "", scheduler, &reals, None).unwrap();
            Agent::start_with_config(topo.director(i).ns(), &config)
                .unwrap_or_else(|e| panic!("{scheduler}: agent on d{i}: {e:#}"))
        };
        let (d1, d2) = (start_d(1), start_d(2));
        wait_fit(&d1, Duration::from_secs(10));
        wait_fit(&d2, Duration::from_secs(10));
        wait_config_match(&d2);
        topo.send_vip_to(1).unwrap();
        let ports = STREAM_PORTS + 1000 * k as u16;
        let flows =
            FreshFlows::from(HaTopology::client_sources(ClientAt::Lan), ports).take(PER_SCHEDULER);
        let streams = StreamSet::open(topo.client().ns(), &flows, HaTopology::service())
            .unwrap_or_else(|e| panic!("{scheduler}: streams through d1: {e:#}"));
        wait_received(&d2, PER_SCHEDULER as u64);

        let mut held: BTreeMap<String, usize> = BTreeMap::new();
        for s in streams.statuses() {
            *held.entry(s.server).or_default() += 1;
        }
        let busiest = held.iter().max_by_key(|(_, n)| **n).unwrap().0.clone();
        let n: usize = busiest.trim_start_matches("rs").parse().unwrap();
        let addr = lb_tests::DrTopology::real_addr(n).to_string();
        for d in [&d1, &d2] {
            d.cli_ok(&["real", "edit", "-t", &svc(), "-r", &addr, "-w", "0"]);
        }
        assert!(
            held_by_connection_table(&d2, &streams) > 0,
            "{scheduler}: no stream would move"
        );
        topo.send_vip_to(2).unwrap();
        std::thread::sleep(Duration::from_secs(2));
        streams.assert_flowing(&format!("{scheduler}: after the move to d2"));
        let fresh =
            FreshFlows::from(HaTopology::client_sources(ClientAt::Lan), ports + 500).take(6);
        let answers = topo
            .client()
            .ns()
            .run_in(|| fetch_each(&fresh, HaTopology::service()));
        for (flow, a) in fresh.iter().zip(answers) {
            let a = a.unwrap_or_else(|e| panic!("{scheduler}: new connection {flow}: {e:#}"));
            assert_ne!(
                a, busiest,
                "{scheduler}: a new flow went to the drained server"
            );
        }
        let finals = streams.stop();
        assert!(
            finals.iter().all(|s| s.failure.is_none()),
            "{scheduler}: {finals:?}"
        );
    }
}

/// Persistence across a failover: each client's connection through d1 brings its template to
/// d2 with the connection's sync, so its next connection, the first d2 sees of it, goes to the
/// same real server, where d2's own `rr` would have spread the clients in another order.
#[test]
fn a_persistent_clients_next_connection_through_the_other_director_keeps_its_server() {
    if !require_root() {
        return;
    }
    const CLIENTS: usize = 9;
    let topo = HaTopology::new(2, 3, Serve::Echo, ClientAt::Lan).expect("topology");
    let start_d = |i: usize| {
        let config = topo.config(i, "", "rr", &REALS, None).unwrap().replace(
            "scheduler = \"rr\"\n",
            "scheduler = \"rr\"\npersistent = 300\n",
        );
        Agent::start_with_config(topo.director(i).ns(), &config)
            .unwrap_or_else(|e| panic!("agent on d{i}: {e:#}"))
    };
    let (d1, d2) = (start_d(1), start_d(2));
    wait_fit(&d1, Duration::from_secs(10));
    wait_fit(&d2, Duration::from_secs(10));
    wait_config_match(&d2);
    let clients: Vec<_> = HaTopology::client_sources(ClientAt::Lan)[..CLIENTS].to_vec();
    let connect = |port: u16, order: &mut dyn Iterator<Item = &std::net::Ipv4Addr>| {
        let flows: Vec<SocketAddrV4> = order.map(|c| SocketAddrV4::new(*c, port)).collect();
        let answers = topo
            .client()
            .ns()
            .run_in(|| fetch_each(&flows, HaTopology::service()));
        flows
            .iter()
            .zip(answers)
            .map(|(f, a)| {
                let a = a.unwrap_or_else(|e| panic!("connection from {f}: {e:#}"));
                (*f.ip(), a)
            })
            .collect::<BTreeMap<_, _>>()
    };
    topo.send_vip_to(1).unwrap();
    let on_d1 = connect(STREAM_PORTS, &mut clients.iter());
    let servers: std::collections::BTreeSet<_> = on_d1.values().collect();
    assert!(servers.len() > 1, "rr used one server: {on_d1:?}");
    // d2 holds every client's template (ipvsadm's PersistConn, summed over its real servers).
    let templates = || -> u64 {
        let listing = d2.list();
        let reals = listing.0["services"][0]["reals"].as_array().cloned();
        reals
            .into_iter()
            .flatten()
            .map(|r| r["persistent_conns"].as_u64().unwrap_or(0))
            .sum()
    };
    let start = Instant::now();
    while templates() < CLIENTS as u64 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "d2 holds {} templates of {CLIENTS} clients",
            templates()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // d2 takes the VIP; the clients come back in the other order, so d2's rr alone would pair
    // them with other servers.
    topo.send_vip_to(2).unwrap();
    let on_d2 = connect(STREAM_PORTS + 1, &mut clients.iter().rev());
    assert_eq!(
        on_d2, on_d1,
        "a client's next connection through d2 changed server"
    );
}

#[test]
fn a_restarted_director_takes_its_peers_table_before_it_is_fit() {
    if !require_root() {
        return;
    }
    let topo = HaTopology::new(2, 4, Serve::Echo, ClientAt::Lan).expect("topology");
    let d1 = start(&topo, 1);
    let mut d2 = start(&topo, 2);
    wait_fit(&d1, Duration::from_secs(10));
    wait_fit(&d2, Duration::from_secs(10));
    // d2 goes away for good (SIGTERM: its datapath and table are gone).
    d2.stop_detached(topo.director(2).ns());

    topo.send_vip_to(1).unwrap();
    let flows =
        FreshFlows::from(HaTopology::client_sources(ClientAt::Lan), STREAM_PORTS).take(STREAMS);
    let streams = StreamSet::open(topo.client().ns(), &flows, HaTopology::service())
        .unwrap_or_else(|e| panic!("streams through d1: {e:#}"));
    let rs4 = lb_tests::DrTopology::real_addr(4).to_string();
    d1.cli_ok(&["real", "add", "-t", &svc(), "-r", &rs4, "-w", "4"]);

    // d2 comes back with the new configuration: not fit until it has d1's table.
    let mut reals = REALS.to_vec();
    reals.push((4, 4));
    d2.write_config(&topo.config(2, "", "mh", &reals, None).unwrap())
        .unwrap();
    d2.restart().expect("restart d2");
    wait_fit(&d2, Duration::from_secs(10));
    assert!(
        held_by_connection_table(&d2, &streams) > 0,
        "no stream would move"
    );
    let view = sync_view(&d2);
    let (from, n) = (
        view["last_table"][0].as_str().unwrap(),
        view["last_table"][1].as_u64().unwrap(),
    );
    assert_eq!(
        from,
        format!("{}:{}", HaTopology::director_addr(1), HaTopology::SYNC_PORT)
    );
    assert!(
        n >= STREAMS as u64,
        "d2 got {n} flows in d1's table: {view}"
    );
    assert_eq!(view["peers"][0]["flows_unknown"], 0, "{view}");

    topo.send_vip_to(2).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    streams.assert_flowing("on the restarted d2");
    streams.stop();
}

/// The restarted director is not fit before it has the table: `check` fails at once after the
/// start while a peer that answers exists.
#[test]
fn check_fails_until_the_table_is_current_and_names_why() {
    if !require_root() {
        return;
    }
    let topo = HaTopology::new(2, 1, Serve::Once, ClientAt::Lan).expect("topology");
    let d1 = topo.start_agent(1, &[]).expect("agent d1");
    let out = d1.cli(&["check"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    // Either still catching up, or alone and then without services.
    assert!(
        err.contains("not current") || err.contains("no service"),
        "{err}"
    );
    // d1 is alone: after a while it is current, and only the missing service keeps it unfit.
    std::thread::sleep(Duration::from_secs(6));
    let err = String::from_utf8_lossy(&d1.cli(&["check"]).stderr).into_owned();
    assert!(err.contains("no service is configured"), "{err}");
    d1.cli_ok(&["service", "add", "-t", &svc(), "-s", "mh"]);
    let err = String::from_utf8_lossy(&d1.cli(&["check"]).stderr).into_owned();
    assert!(err.contains("has no available real server"), "{err}");
    d1.cli_ok(&["real", "add", "-t", &svc(), "-r", "10.0.0.11"]);
    assert_eq!(d1.cli_ok(&["check"]).trim(), "ok");
    d1.cli_ok(&["drain"]);
    let err = String::from_utf8_lossy(&d1.cli(&["check"]).stderr).into_owned();
    assert!(err.contains("drained"), "{err}");
    d1.cli_ok(&["undrain"]);
    assert_eq!(d1.cli_ok(&["check"]).trim(), "ok");
}

/// A fake peer on the client's address: d1 lists it as a peer, the test speaks the protocol with
/// the right key, the wrong key, replays and malformed messages.
#[test]
fn only_authentic_fresh_messages_from_peers_are_accepted() {
    if !require_root() {
        return;
    }
    let topo = HaTopology::new(1, 3, Serve::Once, ClientAt::Lan).expect("topology");
    let key_path = topo.sync_key().unwrap();
    let fake = SocketAddrV4::new(lb_tests::DrTopology::CLIENT_ADDR, HaTopology::SYNC_PORT);
    let listen = SocketAddrV4::new(HaTopology::director_addr(1), HaTopology::SYNC_PORT);
    let d1 = Agent::start(
        topo.director(1).ns(),
        "eth0",
        &[
            "--sync-listen",
            &listen.to_string(),
            "--sync-peer",
            &fake.to_string(),
            "--sync-key",
            key_path.to_str().unwrap(),
        ],
    )
    .expect("agent");
    d1.cli_ok(&["service", "add", "-t", &svc(), "-s", "mh"]);
    for i in 1..=3 {
        let rip = lb_tests::DrTopology::real_addr(i).to_string();
        d1.cli_ok(&["real", "add", "-t", &svc(), "-r", &rip]);
    }
    let key = Key::new(&std::fs::read(&key_path).unwrap()).unwrap();
    let record = |real: [u8; 4], port: u16| Record {
        op: Op::Bind,
        fin: false,
        established: false,
        proto: 6,
        client: IpAddr::from([10, 0, 0, 101]),
        cport: port,
        vip: IpAddr::V4(HaTopology::VIP),
        vport: HaTopology::PORT,
        real: IpAddr::from(real),
        rport: HaTopology::PORT,
        age_us: 0,
    };
    let msg = |seq: u64, records: Vec<Record>| Message {
        header: Header {
            epoch: 1_000,
            seq,
            sent_ns: 0,
            nonce: 0,
        },
        body: Body::Flows(records),
    };
    let good = wire::encode(
        &key,
        &msg(
            1,
            vec![record([10, 0, 0, 12], 50000), record([10, 0, 0, 99], 50001)],
        ),
    );
    let wrong_key = wire::encode(
        &Key::new(b"not the shared secret!").unwrap(),
        &msg(2, vec![record([10, 0, 0, 11], 50002)]),
    );
    let mut damaged = wire::encode(&key, &msg(3, vec![record([10, 0, 0, 11], 50003)]));
    damaged[50] ^= 1;
    topo.client().ns().run_in(|| {
        let from_peer = UdpSocket::bind(fake).unwrap();
        let stranger = UdpSocket::bind((lb_tests::DrTopology::CLIENT_ADDR, 9999)).unwrap();
        for d in [&good, &wrong_key, &damaged, &good] {
            from_peer.send_to(d, listen).unwrap();
        }
        stranger.send_to(&good, listen).unwrap();
        from_peer.send_to(b"garbage", listen).unwrap();
    });
    std::thread::sleep(Duration::from_millis(500));
    let view = sync_view(&d1);
    let rejected: BTreeMap<String, u64> = serde_json::from_value(view["rejected"].clone()).unwrap();
    assert_eq!(
        rejected,
        BTreeMap::from([
            ("auth".to_owned(), 3),
            ("replay".to_owned(), 1),
            ("unknown_peer".to_owned(), 1)
        ]),
        "{view}"
    );
    let peer = &view["peers"][0];
    assert_eq!(peer["flows_received"], 1, "{view}");
    assert_eq!(peer["flows_unknown"], 1, "the flow for 10.0.0.99: {view}");
    // The accepted flow is in d1's table: its packets go to rs2, whatever Maglev says.
    let flow = SocketAddrV4::new([10, 0, 0, 101].into(), 50000);
    topo.send_vip_to(1).unwrap();
    let answer = topo
        .client()
        .ns()
        .run_in(|| lb_tests::client::fetch_from(flow, HaTopology::service()));
    // A SYN on an entry without FIN keeps the entry's real server.
    assert_eq!(answer.unwrap(), "rs2");
}

#[test]
fn bad_sync_settings_are_refused_with_one_line_and_nothing_attached() {
    if !require_root() {
        return;
    }
    let topo = HaTopology::new(1, 1, Serve::Once, ClientAt::Lan).expect("topology");
    let ns = topo.director(1).ns();
    let key = topo.sync_key().unwrap();
    let open_key = topo.dir().join("open.key");
    std::fs::write(&open_key, "a shared secret readable by all\n").unwrap();
    let short_key = topo.dir().join("short.key");
    std::fs::write(&short_key, "short\n").unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&open_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(&short_key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let key = key.to_str().unwrap();
    let cases: [(&[&str], &str); 7] = [
        (
            &["--sync-listen", "10.0.0.1:8742", "--sync-key", key],
            "--sync-peer",
        ),
        (
            &[
                "--sync-listen",
                "10.0.0.1:8742",
                "--sync-peer",
                "10.0.0.3:8742",
            ],
            "--sync-key",
        ),
        (
            &[
                "--sync-listen",
                "10.0.0.1:8742",
                "--sync-peer",
                "10.0.0.1:8742",
                "--sync-key",
                key,
            ],
            "own listen address",
        ),
        (
            &[
                "--sync-listen",
                "10.0.0.1:8742",
                "--sync-peer",
                "10.0.0.3:0",
                "--sync-key",
                key,
            ],
            "not an address a peer listens on",
        ),
        (
            &[
                "--sync-listen",
                "10.0.0.1:8742",
                "--sync-peer",
                "10.0.0.3:8742",
                "--sync-key",
                open_key.to_str().unwrap(),
            ],
            "readable by group or others",
        ),
        (
            &[
                "--sync-listen",
                "10.0.0.1:8742",
                "--sync-peer",
                "10.0.0.3:8742",
                "--sync-key",
                short_key.to_str().unwrap(),
            ],
            "too short",
        ),
        (
            &[
                "--sync-listen",
                "10.0.0.1:8742",
                "--sync-peer",
                "10.0.0.3:8742",
                "--sync-key",
                key,
                "--sync-group",
                "10.1.2.3",
            ],
            "not a multicast address",
        ),
    ];
    for (args, expected) in cases {
        let mut all = vec![
            "run",
            "--iface",
            "eth0",
            "--socket",
            "/run/xdplb-tests-none.sock",
        ];
        all.extend_from_slice(args);
        let out = lb_tests::agent::xdplb_in(ns, &all).unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(expected), "{args:?}: {err}");
        assert!(!ns.xdp_attached("eth0").unwrap(), "{args:?} attached XDP");
    }
    // The address of another host cannot be listened on: refused, nothing left attached.
    let out = lb_tests::agent::xdplb_in(
        ns,
        &[
            "run",
            "--iface",
            "eth0",
            "--socket",
            "/run/xdplb-tests-none.sock",
            "--sync-listen",
            "10.0.0.77:8742",
            "--sync-peer",
            "10.0.0.3:8742",
            "--sync-key",
            key,
        ],
    )
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("cannot listen for sync"),
        "{err}"
    );
    assert!(
        !ns.xdp_attached("eth0").unwrap(),
        "a failed start left XDP attached"
    );
}

/// Sync with the agent's restarts and reloads: while d1's agent is killed, its datapath goes on
/// binding new connections and writing their events into the pinned ring; the restarted agent
/// adopts the datapath and sends them, so d2 has them. A reload that changes weights on both
/// directors changes nothing for established connections.
#[test]
fn flows_bound_while_the_agent_was_down_reach_the_peer_after_the_restart() {
    if !require_root() {
        return;
    }
    let topo = HaTopology::new(2, 4, Serve::Echo, ClientAt::Lan).expect("topology");
    let mut d1 = start(&topo, 1);
    let d2 = start(&topo, 2);
    wait_fit(&d1, Duration::from_secs(10));
    wait_fit(&d2, Duration::from_secs(10));
    topo.send_vip_to(1).unwrap();
    d1.kill();
    let flows =
        FreshFlows::from(HaTopology::client_sources(ClientAt::Lan), STREAM_PORTS).take(STREAMS);
    let streams = StreamSet::open(topo.client().ns(), &flows, HaTopology::service())
        .unwrap_or_else(|e| panic!("streams through d1 without its agent: {e:#}"));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        peer_stat(&d2, "flows_received"),
        0,
        "flows sent without an agent?"
    );
    d1.restart().expect("restart d1");
    wait_received(&d2, STREAMS as u64);

    // A reload with other weights on both directors: Maglev now moves some of the streams.
    let mut reals = REALS.to_vec();
    reals[0].1 = 6;
    for (i, d) in [(1, &d1), (2, &d2)] {
        d.write_config(&topo.config(i, "", "mh", &reals, None).unwrap())
            .unwrap();
        d.cli_ok(&["reload"]);
    }
    assert!(
        held_by_connection_table(&d2, &streams) > 0,
        "no stream would move"
    );
    topo.send_vip_to(2).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    streams.assert_flowing("on d2, bound while d1's agent was down");
    streams.stop();
}

/// An upgrade from a version whose datapath wrote its sync events into one kernel ring buffer:
/// what its datapath wrote there that no agent read (here while d1's agent was down) reaches
/// the peer from the agent that adopts the datapath, and the old ring's pin goes. Each flow
/// names another real server than the tables would pick, so only the event can put it in the
/// peer's connection table as it is there.
#[test]
fn events_left_in_an_older_versions_ring_reach_the_peer_after_the_upgrade() {
    if !require_root() {
        return;
    }
    const OLD_FLOWS: u16 = 20;
    let topo = HaTopology::new(2, 4, Serve::Echo, ClientAt::Lan).expect("topology");
    let mut d1 = start(&topo, 1);
    let d2 = start(&topo, 2);
    wait_fit(&d1, Duration::from_secs(10));
    wait_fit(&d2, Duration::from_secs(10));
    d1.kill();
    // What the agent keeps beside its datapath: its ids, saved; its pins.
    let place = |i: usize| {
        format!(
            "net{}-eth0",
            topo.director(i).ns().inode().expect("netns inode")
        )
    };
    let saved = |i: usize| {
        let file = std::path::Path::new(lb_user::agent::RUN_DIR)
            .join(place(i))
            .join("state.json");
        lb_user::state::persist::load(&file, lb_common::Limits::default())
            .expect("the saved state")
            .1
    };
    let service = HaTopology::service();
    let addr = lb_user::state::ServiceAddr {
        protocol: lb_user::state::Protocol::Tcp,
        vip: (*service.ip()).into(),
        port: service.port(),
    };
    let state1 = saved(1);
    let svc = state1.service(&addr).unwrap();
    let client: IpAddr = HaTopology::client_sources(ClientAt::Lan)[0].into();
    let flows: Vec<(lb_common::FlowKey, IpAddr)> = (0..OLD_FLOWS)
        .map(|k| {
            let flow = svc.flow(client, 45000 + k);
            let picked = svc.pick(&flow).unwrap().id;
            let other = svc.reals.iter().find(|r| r.id != picked).unwrap();
            (flow, other.addr)
        })
        .collect();
    let events: Vec<_> = flows
        .iter()
        .map(|(flow, addr)| {
            let real = svc.reals.iter().find(|r| r.addr == *addr).unwrap();
            lb_tests::legacy::bind_event(*flow, svc.id, real.id)
        })
        .collect();
    let pins = |i: usize| {
        lb_tests::agent::bpffs()
            .unwrap()
            .join("xdplb")
            .join(place(i))
    };
    let old_ring = pins(1).join(lb_common::map_names::SYNC_EVENTS);
    lb_tests::legacy::pin_sync_ring_buffer(&old_ring, &events);

    d1.restart()
        .expect("restart d1 over the older datapath's ring");
    wait_received(&d2, OLD_FLOWS.into());
    assert!(
        !old_ring.exists(),
        "the older version's ring is still pinned"
    );
    let table = lb_user::datapath::conn_table::SlotTable::<lb_common::Conn>::new(
        &aya::maps::MapData::from_pin(pins(2).join(lb_common::map_names::CONN_TABLE)).unwrap(),
    )
    .unwrap();
    let state2 = saved(2);
    let svc2 = state2.service(&addr).unwrap();
    for (flow, real) in &flows {
        let conn = table
            .get(flow)
            .unwrap()
            .unwrap_or_else(|| panic!("d2 has no {flow:?}"));
        let held = svc2
            .reals
            .iter()
            .find(|r| r.id == conn.real)
            .map(|r| r.addr);
        assert_eq!(held, Some(*real), "{flow:?}");
    }
}

/// `xdplb list --sync` shows the peers in a table; without sync it says so in one line.
#[test]
fn list_sync_shows_the_peers() {
    if !require_root() {
        return;
    }
    let topo = HaTopology::new(2, 3, Serve::Once, ClientAt::Lan).expect("topology");
    let metrics = "[metrics]\nlisten = \"127.0.0.1:9727\"\n";
    let d1 = Agent::start_with_config(
        topo.director(1).ns(),
        &topo.config(1, metrics, "mh", &REALS, None).unwrap(),
    )
    .unwrap();
    let d2 = start(&topo, 2);
    wait_fit(&d1, Duration::from_secs(10));
    wait_config_match(&d1);
    let scrape =
        lb_tests::metrics::Scrape::get(topo.director(1).ns(), "127.0.0.1:9727".parse().unwrap())
            .unwrap();
    let peer_label = format!("{}:{}", HaTopology::director_addr(2), HaTopology::SYNC_PORT);
    let peer = [("peer", peer_label.as_str())];
    assert_eq!(scrape.value("xdplb_sync_current", &[]), 1.0);
    assert_eq!(scrape.value("xdplb_sync_peer_up", &peer), 1.0);
    assert_eq!(scrape.value("xdplb_sync_peer_config_match", &peer), 1.0);
    assert_eq!(
        scrape.value("xdplb_sync_rejected_total", &[("reason", "auth")]),
        0.0
    );
    assert_eq!(scrape.value("xdplb_drained", &[]), 0.0);
    assert_eq!(
        scrape.types["xdplb_sync_peer_flows_received_total"],
        "counter"
    );
    let text = d1.cli_ok(&["list", "--sync"]);
    let peer = format!("{}:{}", HaTopology::director_addr(2), HaTopology::SYNC_PORT);
    assert!(
        text.starts_with(&format!(
            "Sync on {}:{}: current",
            HaTopology::director_addr(1),
            HaTopology::SYNC_PORT
        )),
        "{text}"
    );
    let line = text
        .lines()
        .find(|l| l.starts_with(&peer))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains(" up ") && line.contains("same"), "{line}");
    // The HTTP API on the control socket shows the same peers.
    let view = lb_tests::web::Api::Socket(d1.socket()).get_json("/api/v1/sync");
    assert_eq!(view["peers"][0]["address"], peer, "{view}");
    assert_eq!(view["peers"][0]["state"], "up", "{view}");
    assert_eq!(view["peers"][0]["config_match"], true, "{view}");
    drop(d2);
    let lone = Agent::start(topo.director(2).ns(), "eth0", &[]).unwrap();
    let out = lone.cli(&["list", "--sync"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("connection sync is not configured"));
    let r = lb_tests::web::Api::Socket(lone.socket()).get("/api/v1/sync");
    assert_eq!(r.status, 404);
    assert!(
        r.error().contains("connection sync is not configured"),
        "{}",
        r.body
    );
}
