//! End to end, LVS/NAT with native XDP on both of the director's interfaces: clients outside,
//! three real servers on a private network whose default gateway is the director, each running a
//! real HTTP server on port 8080 behind the service's port 80 (see lb_tests::nat). Requests and
//! replies both cross the director's XDP program; the real servers see the clients' own
//! addresses; weights, a 10 MB download and upload, path MTU discovery and port unreachable
//! (ICMP translated), a real server's deletion, an agent restart and a gateway on a stacked
//! (VRRP-style) device are each checked over real TCP; `check` watches both interfaces. Two
//! directors with connection sync hand NAT connections over, replies included.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use lb_tests::client::StreamSet;
use lb_tests::ha::{sync_args, wait_fit, write_sync_key};
use lb_tests::metrics::Scrape;
use lb_tests::nat::NatTopology;
use lb_tests::{require_root, Agent, FreshFlows, Serve};

const SERVICE: &str = "10.0.0.100:80";
const ROUNDS: usize = 5;
const BIG: usize = 10 << 20;
const METRICS: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), 9727);

/// "rsN CLIENT" as the HTTP server answers /name: the server and the client address it saw.
fn name_and_peer(answer: &str) -> (String, IpAddr) {
    let (name, peer) = answer
        .trim()
        .split_once(' ')
        .unwrap_or_else(|| panic!("unexpected answer {answer:?}"));
    (name.to_owned(), peer.parse().expect("a peer address"))
}

/// The real server a request from `src` to `url` reached; asserts it saw `src` itself.
fn reach(topo: &NatTopology, src: impl Into<IpAddr>, url: &str) -> String {
    let src = src.into();
    let answer = topo
        .curl(src, &[url])
        .unwrap_or_else(|e| panic!("{src} -> {url}: {e:#}"));
    let (name, peer) = name_and_peer(&answer);
    assert_eq!(peer, src, "{name} saw the client's own address");
    name
}

/// The 10 MB /big answers with: the pattern nat-httpd.py serves.
fn big_pattern() -> Vec<u8> {
    let mb: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    mb.repeat(BIG >> 20)
}

fn configure(agent: &Agent) {
    agent.cli_ok(&["service", "add", "-t", SERVICE, "-s", "sh"]);
    for i in 1..=3 {
        let real = format!("{}:{}", NatTopology::real_addr(i), NatTopology::REAL_PORT);
        agent.cli_ok(&["real", "add", "-t", SERVICE, "-r", &real, "-m"]);
    }
}

#[test]
fn nat_maps_ports_routes_replies_and_keeps_connections() {
    if !require_root() {
        return;
    }
    let topo = NatTopology::new(3).expect("cannot build the NAT topology");
    let metrics = METRICS.to_string();
    let mut agent = topo
        .start_agent_at(1, &["--metrics", &metrics])
        .expect("cannot start the agent");
    configure(&agent);

    let owner = sticky_from_many_clients(&topo, &agent);
    weights_are_honoured(&topo, &agent);
    big_transfers_are_intact(&topo);
    path_mtu_discovery_works_through_the_director(&topo);
    port_unreachable_reaches_the_client(&topo, &agent);
    restart_breaks_no_transfer(&topo, &mut agent);
    deletion_moves_only_its_clients(&topo, &agent, &owner);
    gateway_on_a_stacked_device(&topo, &agent);
    check_watches_the_inside_interface(&topo, &agent);
    health_checks_go_to_the_real_servers_port(&agent);
}

/// ROUNDS rounds of one HTTP request from each of 40 client addresses: all answered, each
/// client always by the same server, every server used, the replies counted outbound.
fn sticky_from_many_clients(topo: &NatTopology, agent: &Agent) -> HashMap<Ipv4Addr, String> {
    let url = format!("http://{SERVICE}/name");
    let before = agent.list();
    let mut owner: HashMap<Ipv4Addr, String> = HashMap::new();
    for _ in 0..ROUNDS {
        for src in NatTopology::client_sources() {
            let name = reach(topo, src, &url);
            let first = owner.entry(src).or_insert_with(|| name.clone());
            assert_eq!(*first, name, "{src} reached {first} first, then {name}");
        }
    }
    let used: BTreeSet<&String> = owner.values().collect();
    assert_eq!(used.len(), 3, "every real server answers: {owner:?}");
    let after = agent.list();
    let conns = (ROUNDS * NatTopology::CLIENT_SOURCES as usize) as u64;
    let grew = |stat| after.service_stat(SERVICE, stat) - before.service_stat(SERVICE, stat);
    assert!(grew("conns") >= conns, "{}", after.0);
    // Each reply (SYN-ACK, the answer, FIN) crossed the director: counted outbound.
    assert!(grew("out_packets") >= 3 * conns, "{}", after.0);
    assert!(grew("out_bytes") > grew("out_packets") * 40, "{}", after.0);
    // The metrics count the same replies, per service and per real server.
    let scrape = Scrape::get(topo.director().ns(), METRICS).expect("scrape the metrics");
    let service = [("vip", "10.0.0.100"), ("port", "80")];
    assert_eq!(
        scrape.value("xdplb_service_out_packets_total", &service) as u64,
        after.service_stat(SERVICE, "out_packets")
    );
    let per_real: f64 = (1..=3)
        .map(|i| {
            let real = format!("{}:{}", NatTopology::real_addr(i), NatTopology::REAL_PORT);
            let labels = [("port", "80"), ("real", real.as_str())];
            let v = scrape.value("xdplb_real_out_packets_total", &labels);
            assert!(v > 0.0, "{real}: {}", scrape.text);
            v
        })
        .sum();
    assert_eq!(
        per_real as u64,
        after.service_stat(SERVICE, "out_packets"),
        "{}",
        scrape.text
    );
    owner
}

/// A second service on VIP:81, weighted round robin 1:2:3 over the same servers' port 8080.
fn weights_are_honoured(topo: &NatTopology, agent: &Agent) {
    let wrr = "10.0.0.100:81";
    agent.cli_ok(&["service", "add", "-t", wrr, "-s", "wrr"]);
    for (i, w) in [(1, "1"), (2, "2"), (3, "3")] {
        let real = format!("{}:{}", NatTopology::real_addr(i), NatTopology::REAL_PORT);
        agent.cli_ok(&["real", "add", "-t", wrr, "-r", &real, "-m", "-w", w]);
    }
    let url = format!("http://{wrr}/name");
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    for src in NatTopology::client_sources().iter().cycle().take(120) {
        *count.entry(reach(topo, *src, &url)).or_default() += 1;
    }
    // 20, 40 and 60 of 120; each CPU keeps its own place in the sequence, so allow a little.
    for (name, want) in [("rs1", 20), ("rs2", 40), ("rs3", 60)] {
        let got = count.get(name).copied().unwrap_or(0);
        assert!(
            got.abs_diff(want) <= 8,
            "{name}: {got} of 120, want {want}: {count:?}"
        );
    }
}

/// A 10 MB download and a 10 MB upload through the director, byte for byte.
fn big_transfers_are_intact(topo: &NatTopology) {
    big_transfers_to(topo, NatTopology::client_sources()[0].into(), SERVICE);
}

/// [`big_transfers_are_intact`] from `src` to `service` ("VIP:port", "[VIP]:port").
fn big_transfers_to(topo: &NatTopology, src: IpAddr, service: &str) {
    let dir = scratch();
    let file = dir.join("big");
    let file_arg = file.to_string_lossy().into_owned();
    topo.curl(src, &["-o", &file_arg, &format!("http://{service}/big")])
        .expect("10 MB download");
    assert!(
        std::fs::read(&file).unwrap() == big_pattern(),
        "the download arrived damaged"
    );

    let body: Vec<u8> = (0..BIG).map(|i| (i * 7 % 256) as u8).collect();
    let upload = dir.join("upload");
    std::fs::write(&upload, &body).unwrap();
    let data = format!("@{}", upload.to_string_lossy());
    let answer = topo
        .curl(
            src,
            &[
                "--data-binary",
                &data,
                "-H",
                "Content-Type: application/octet-stream",
                &format!("http://{service}/upload"),
            ],
        )
        .expect("10 MB upload");
    let sum = Command::new("sha256sum").arg(&upload).output().unwrap();
    let sum = String::from_utf8_lossy(&sum.stdout);
    let sum = sum.split_whitespace().next().unwrap();
    let fields: Vec<&str> = answer.split_whitespace().collect();
    assert_eq!(fields[1..], [BIG.to_string().as_str(), sum], "{answer}");
    let _ = std::fs::remove_dir_all(dir);
}

/// A 10 MB download to the far client, whose last hop takes 1280 bytes where the rest of the
/// path takes 1500: that hop's "fragmentation needed" goes to the VIP, and only translated (to
/// the real server, about its own reply) does the server lower its packet size.
fn path_mtu_discovery_works_through_the_director(topo: &NatTopology) {
    path_mtu_discovery_to(topo, NatTopology::FAR.into(), SERVICE);
}

/// [`path_mtu_discovery_works_through_the_director`] for the far client at `far_addr` and
/// `service` ("VIP:port", "[VIP]:port"): over IPv6 the hop's "packet too big" is translated.
fn path_mtu_discovery_to(topo: &NatTopology, far_addr: IpAddr, service: &str) {
    let far = far_addr.to_string();
    let get = |args: &[&str]| {
        let mut all = vec!["-gsS", "--fail", "--max-time", "30"];
        all.extend_from_slice(args);
        topo.far().ns().exec("curl", &all)
    };
    let (name, peer) = name_and_peer(&get(&[&format!("http://{service}/name")]).unwrap());
    assert_eq!(peer, far_addr);
    let dir = scratch();
    let file = dir.join("far");
    get(&[
        "-o",
        &file.to_string_lossy(),
        &format!("http://{service}/big"),
    ])
    .expect("a 10 MB download over a path narrower than its first hops");
    assert!(
        std::fs::read(&file).unwrap() == big_pattern(),
        "the download arrived damaged"
    );
    let _ = std::fs::remove_dir_all(dir);
    // The real server learned the path's MTU from the translated error.
    let rs = topo.reals().iter().find(|r| r.name() == name).unwrap();
    let route = rs.ns().ip(&["route", "get", &far]).unwrap();
    assert!(
        route.contains(&format!("mtu {}", NatTopology::FAR_MTU)),
        "{name}: {route}"
    );
}

/// A UDP service whose real server has nothing on the port: its "port unreachable" reaches the
/// client from the VIP, about what the client sent, so the client's socket is refused at once.
fn port_unreachable_reaches_the_client(topo: &NatTopology, agent: &Agent) {
    let service = "10.0.0.100:53";
    agent.cli_ok(&["service", "add", "-u", service]);
    let real = format!("{}:5353", NatTopology::real_addr(1));
    agent.cli_ok(&["real", "add", "-u", service, "-r", &real, "-m"]);
    let src = NatTopology::client_sources()[0].to_string();
    let script = format!(
        "import socket\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.bind(('{src}', 0))\n\
         s.connect(('10.0.0.100', 53))\n\
         s.settimeout(10)\n\
         s.send(b'anyone?')\n\
         try:\n    s.recv(100)\n    print('answered')\n\
         except ConnectionRefusedError:\n    print('refused')\n\
         except socket.timeout:\n    print('no answer')\n"
    );
    let answer = topo
        .client()
        .ns()
        .exec("python3", &["-c", &script])
        .unwrap();
    assert_eq!(answer.trim(), "refused");
    agent.cli_ok(&["service", "del", "-u", service]);
}

/// Four downloads paced to last a few seconds each; the agent exits (leaving the datapath) and
/// starts again meanwhile: all four complete, intact.
fn restart_breaks_no_transfer(topo: &NatTopology, agent: &mut Agent) {
    let dir = scratch();
    let url = format!("http://{SERVICE}/big");
    let downloads: Vec<(std::path::PathBuf, Child)> = NatTopology::client_sources()[..4]
        .iter()
        .enumerate()
        .map(|(i, src)| {
            let file = dir.join(format!("d{i}"));
            let child = topo
                .client()
                .ns()
                .command("curl")
                .args(["-sS", "--fail", "--max-time", "60", "--limit-rate", "2M"])
                .args(["--interface", &src.to_string(), "-o"])
                .arg(&file)
                .arg(&url)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("curl");
            (file, child)
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    agent.signal(libc::SIGQUIT).expect("SIGQUIT");
    agent
        .wait_exit(Duration::from_secs(5))
        .expect("the agent did not exit on SIGQUIT");
    std::thread::sleep(Duration::from_millis(500));
    agent.restart().expect("the agent starts again");
    let pattern = big_pattern();
    for (file, child) in downloads {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "a download across the restart failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(std::fs::read(&file).unwrap() == pattern, "damaged");
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Deleting rs2 moves its clients to the others and nobody else's.
fn deletion_moves_only_its_clients(
    topo: &NatTopology,
    agent: &Agent,
    owner: &HashMap<Ipv4Addr, String>,
) {
    let rs2 = format!("{}:{}", NatTopology::real_addr(2), NatTopology::REAL_PORT);
    agent.cli_ok(&["real", "del", "-t", SERVICE, "-r", &rs2]);
    let url = format!("http://{SERVICE}/name");
    for src in NatTopology::client_sources() {
        let name = reach(topo, src, &url);
        match owner[&src].as_str() {
            "rs2" => assert_ne!(name, "rs2", "{src}: rs2 is gone"),
            before => assert_eq!(name, before, "{src} moved though its server stayed"),
        }
    }
}

/// A directory of its own for downloaded and uploaded files.
/// Health checks of NAT real servers go to RIP:RPORT: the ones on 8080 stay up under an HTTP
/// check (nothing listens on the service's port 80 there), one on 8081 (nothing there) goes
/// down.
fn health_checks_go_to_the_real_servers_port(agent: &Agent) {
    let reals = agent.list().reals(SERVICE);
    assert!(!reals.is_empty());
    for r in &reals {
        agent.set_check(SERVICE, r, "http:/name");
    }
    // On a real server the service no longer has (deleted above), whose port 8081 is closed.
    let free = (1..=3)
        .map(NatTopology::real_addr)
        .find(|a| !reals.iter().any(|r| r.starts_with(&format!("{a}:"))))
        .expect("a real server was deleted");
    let closed = format!("{free}:8081");
    agent.cli_ok(&[
        "real", "add", "-t", SERVICE, "-r", &closed, "-m", "--check", "tcp",
    ]);
    let state = |r: &str| {
        let listing = agent.list();
        listing.real(SERVICE, r)["health"]["state"]
            .as_str()
            .unwrap_or_else(|| panic!("no health for {r}: {}", listing.0))
            .to_owned()
    };
    let down = (0..80).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        state(&closed) == "down"
    });
    assert!(down, "{closed} never went down: {}", state(&closed));
    // Two more seconds of checks every second: long enough for a wrong port to fail twice.
    std::thread::sleep(Duration::from_secs(2));
    for r in &reals {
        assert_eq!(state(r), "up", "{r}");
    }
    agent.cli_ok(&["real", "del", "-t", SERVICE, "-r", &closed]);
}

/// The one-interface layout: real servers on the same link as the clients' router, routing
/// through the director. Requests and replies both leave where they came in (XDP_TX), replies
/// from the VIP, and every client is answered.
#[test]
fn one_interface_nat_sends_both_ways_back_out_of_it() {
    if !require_root() {
        return;
    }
    let topo = NatTopology::one_interface(3).expect("cannot build the NAT topology");
    let agent = topo
        .start_agent_outside_only()
        .expect("cannot start the agent");
    agent.cli_ok(&["service", "add", "-t", SERVICE, "-s", "wrr"]);
    for i in 1..=3 {
        let real = format!(
            "{}:{}",
            NatTopology::outside_real_addr(i),
            NatTopology::REAL_PORT
        );
        agent.cli_ok(&["real", "add", "-t", SERVICE, "-r", &real, "-m"]);
    }
    let mut seen = BTreeSet::new();
    for src in NatTopology::client_sources() {
        seen.insert(reach(&topo, src, &format!("http://{SERVICE}/name")));
    }
    assert_eq!(seen.len(), 3, "every real server answered: {seen:?}");
    let listing = agent.list();
    let out = listing.service_stat(SERVICE, "out_packets");
    assert!(
        out >= 2 * NatTopology::CLIENT_SOURCES as u64,
        "replies translated by the director: {out}"
    );
    // Nothing went to the kernel to forward: it would have sent the replies from the RIPs.
    assert_eq!(listing.reason("pass_no_service"), 0, "{}", listing.0);
}

/// The real servers' gateway on a macvlan stacked on the inside interface, as keepalived's
/// `use_vmac` makes a floating gateway: replies come to its MAC, and the director still
/// translates them (they never reach the kernel, which would forward them from the RIP).
fn gateway_on_a_stacked_device(topo: &NatTopology, agent: &Agent) {
    const GATEWAY: &str = "192.168.10.254";
    const VMAC: &str = "02:00:5e:00:01:0a";
    let director = topo.director().ns();
    director
        .ip_batch(&format!(
            "link add gw0 link eth1 address {VMAC} type macvlan mode bridge\n\
             addr add {GATEWAY}/24 dev gw0 noprefixroute\n\
             link set gw0 up\n"
        ))
        .unwrap();
    // The gateway's MAC is the stacked device's (the director's eth1 would answer ARP for the
    // address too; keepalived's set-up has arp_ignore for that).
    for rs in topo.reals() {
        rs.ns()
            .ip_batch(&format!(
                "neigh replace {GATEWAY} lladdr {VMAC} nud permanent dev eth0\n\
                 route replace default via {GATEWAY}\n"
            ))
            .unwrap();
    }
    // The agent learns the device from the kernel's link events.
    let learned = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        agent.log().contains(VMAC)
    });
    assert!(
        learned,
        "the stacked device went unnoticed: {}",
        agent.log()
    );
    for src in &NatTopology::client_sources()[..10] {
        reach(topo, *src, &format!("http://{SERVICE}/name"));
    }
    for rs in topo.reals() {
        rs.ns()
            .ip(&[
                "route",
                "replace",
                "default",
                "via",
                &NatTopology::INSIDE_GATEWAY.to_string(),
            ])
            .unwrap();
    }
    director.ip(&["link", "del", "gw0"]).unwrap();
}

/// `xdplb check` (keepalived's vrrp_script) fails while the inside interface is down: a
/// director that cannot reach its NAT real servers must not hold the VIP.
fn check_watches_the_inside_interface(topo: &NatTopology, agent: &Agent) {
    let director = topo.director().ns();
    let check = || {
        let out = agent.cli(&["check"]);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert!(check().0, "fit before: {}", check().1);
    director.ip(&["link", "set", "eth1", "down"]).unwrap();
    let failed = (0..50).find_map(|_| {
        std::thread::sleep(Duration::from_millis(100));
        let (ok, why) = check();
        (!ok).then_some(why)
    });
    let why = failed.expect("check still passes with the inside interface down");
    assert!(why.contains("interface eth1 is down"), "{why}");
    director.ip(&["link", "set", "eth1", "up"]).unwrap();
    let back = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        check().0
    });
    assert!(back, "check still fails with eth1 up again: {}", check().1);
}

/// Two LVS/NAT directors syncing their connection tables. Streams open through d1; a real
/// server is added on both (Maglev alone would now move some streams); then the VIP and the
/// real servers' gateway move to d2, as a VRRP takeover moves them. Every stream goes on: d2
/// sends its requests where d1 did and translates its replies from the reply translations it
/// wrote for d1's flows (without them the kernel would forward the replies from the RIP, and
/// the client would reset the connections).
#[test]
fn a_second_director_takes_over_nat_connections_and_their_replies() {
    if !require_root() {
        return;
    }
    takeover(false);
}

/// The same over IPv6 (an IPv6 service beside the IPv4 one, IPv6 streams): d2 translates the
/// IPv6 replies of d1's flows from the reply translations sync wrote.
#[test]
fn a_second_director_takes_over_ipv6_nat_connections_and_their_replies() {
    if !require_root() {
        return;
    }
    takeover(true);
}

fn takeover(ipv6: bool) {
    const ECHO_PORT: u16 = 9000;
    const STREAMS: usize = 40;
    let mut topo = NatTopology::with_directors(4, 2).expect("cannot build the NAT topology");
    if ipv6 {
        topo = topo.with_ipv6().expect("IPv6 on the NAT topology");
    }
    topo.start_testsrv(ECHO_PORT, Serve::Echo)
        .expect("echo servers");
    let dir = scratch();
    let key = write_sync_key(&dir).unwrap();
    let agents: Vec<Agent> = (1..=2)
        .map(|i| {
            let peer = NatTopology::director_addr(3 - i);
            let args = sync_args(&key, NatTopology::director_addr(i), &[peer]);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            topo.start_agent_at(i, &args)
                .unwrap_or_else(|e| panic!("agent on d{i}: {e:#}"))
        })
        .collect();
    let (service, real): (String, Box<dyn Fn(usize) -> String>) = match ipv6 {
        false => (
            SERVICE.to_owned(),
            Box::new(|i| format!("{}:{ECHO_PORT}", NatTopology::real_addr(i))),
        ),
        true => (
            format!("[{}]:80", NatTopology::VIP6),
            Box::new(|i| format!("[{}]:{ECHO_PORT}", NatTopology::real_addr6(i))),
        ),
    };
    for a in &agents {
        a.cli_ok(&["service", "add", "-t", &service, "-s", "mh"]);
        for i in 1..=3 {
            a.cli_ok(&["real", "add", "-t", &service, "-r", &real(i), "-m"]);
        }
    }
    for a in &agents {
        wait_fit(a, Duration::from_secs(10));
    }

    let flows: Vec<std::net::SocketAddr> = match ipv6 {
        false => FreshFlows::from(NatTopology::client_sources(), 20000)
            .take(STREAMS)
            .into_iter()
            .map(Into::into)
            .collect(),
        true => NatTopology::client_sources6()
            .into_iter()
            .zip(20000..)
            .map(|(src, port)| std::net::SocketAddr::new(src.into(), port))
            .take(STREAMS)
            .collect(),
    };
    let dst: std::net::SocketAddr = service.parse().unwrap();
    let streams = StreamSet::open(topo.client().ns(), &flows, dst)
        .unwrap_or_else(|e| panic!("streams through d1: {e:#}"));
    let received = || agents[1].list_config().0["sync"]["peers"][0]["flows_received"].as_u64();
    let synced = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        received().unwrap_or(0) >= STREAMS as u64
    });
    assert!(synced, "d2 did not learn d1's flows: {:?}", received());
    for a in &agents {
        a.cli_ok(&["real", "add", "-t", &service, "-r", &real(4), "-m"]);
    }

    let before = agents[1].list().service_stat(&service, "out_packets");
    topo.move_to(2).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    streams.assert_flowing("after the move to d2");
    let after = agents[1].list().service_stat(&service, "out_packets");
    assert!(
        after > before + STREAMS as u64,
        "d2 translated {} replies",
        after - before
    );
    let finals = streams.stop();
    assert!(finals.iter().all(|s| s.failure.is_none()), "{finals:?}");
    let _ = std::fs::remove_dir_all(dir);
}

fn scratch() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "xdplb-nat-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// LVS/NAT over IPv6, beside IPv4 on the same director and real servers: an IPv6 service
/// mapped to the real servers' port 8080 answers 40 IPv6 clients, each always by the same
/// server and every server used, each server seeing the client's own address; the replies are
/// counted outbound; 10 MB each way arrive intact; a 10 MB download to a client behind a
/// 1280-byte hop completes (its "packet too big" translated to the real server); the IPv4
/// service goes on beside it.
#[test]
fn nat_over_ipv6_beside_ipv4() {
    if !require_root() {
        return;
    }
    const SERVICE6: &str = "[2001:db8::100]:80";
    let topo = NatTopology::new(3)
        .and_then(NatTopology::with_ipv6)
        .expect("cannot build the dual-stack NAT topology");
    let agent = topo.start_agent_at(1, &[]).expect("cannot start the agent");
    configure(&agent);
    agent.cli_ok(&["service", "add", "-t", SERVICE6, "-s", "sh"]);
    for i in 1..=3 {
        let real = format!(
            "[{}]:{}",
            NatTopology::real_addr6(i),
            NatTopology::REAL_PORT
        );
        agent.cli_ok(&["real", "add", "-t", SERVICE6, "-r", &real, "-m"]);
    }
    let listing = agent.cli_ok(&["ipvsadm", "-Ln"]);
    assert!(
        listing.contains("-> [fd00:10::11]:8080") && listing.contains("Masq"),
        "{listing}"
    );

    let url = format!("http://{SERVICE6}/name");
    let mut owner: HashMap<IpAddr, String> = HashMap::new();
    for _ in 0..3 {
        for src in NatTopology::client_sources6() {
            let name = reach(&topo, src, &url);
            let first = owner.entry(src.into()).or_insert_with(|| name.clone());
            assert_eq!(*first, name, "{src} reached {first} first, then {name}");
        }
    }
    let used: BTreeSet<&String> = owner.values().collect();
    assert_eq!(used.len(), 3, "every real server answers: {owner:?}");
    let listing = agent.list();
    let conns = 3 * u64::from(NatTopology::CLIENT_SOURCES);
    assert_eq!(listing.service_stat(SERVICE6, "conns"), conns);
    assert!(
        listing.service_stat(SERVICE6, "out_packets") >= 3 * conns,
        "replies counted outbound: {}",
        listing.0
    );
    big_transfers_to(&topo, NatTopology::client_sources6()[0].into(), SERVICE6);
    path_mtu_discovery_to(&topo, NatTopology::FAR6.into(), SERVICE6);

    // IPv4 beside it, on the same real servers.
    let v4 = NatTopology::client_sources()[0];
    reach(&topo, v4, &format!("http://{SERVICE}/name"));
}
