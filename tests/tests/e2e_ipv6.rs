//! End to end, LVS/DR over IPv6 only (see lb_tests::ipv6): the agent configured through the CLI
//! with an IPv6 service and IPv6 real servers in ipvsadm's bracket notation; hundreds of real TCP
//! connections from many source addresses, each answered by the real server `xdplb simulate`
//! names, every real server used, each source kept on one (source hashing); real servers' MACs
//! learned by neighbour discovery; what the agent cannot do over IPv6 is refused with a
//! line saying so.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use lb_tests::agent::xdplb_bin;
use lb_tests::client::fetch_from;
use lb_tests::ipv6::Dr6Topology;
use lb_tests::{require_root, Agent};

const SERVICE: &str = "[2001:db8::100]:80";
const ROUNDS: u16 = 5;

#[test]
fn ipv6_direct_routing_from_many_clients() {
    if !require_root() {
        return;
    }
    let topo = Dr6Topology::new(3).expect("cannot build the IPv6 topology");
    let agent = Agent::start(topo.director(), "eth0", &[]).expect("cannot start the agent");
    agent.cli_ok(&["service", "add", "-t", SERVICE, "-s", "sh"]);
    // rs1 and rs2 by neighbour discovery, rs3 with its MAC given.
    for (i, rs) in topo.reals().iter().enumerate() {
        let real = format!("[{}]", Dr6Topology::real_addr(i + 1));
        let mac = rs.mac("eth0").unwrap();
        let mut args = vec!["real", "add", "-t", SERVICE, "-r", &real];
        if i == 2 {
            args.extend(["--mac", &mac]);
        }
        agent.cli_ok(&args);
    }
    let listing = agent.list();
    assert_eq!(
        listing.reals(SERVICE),
        (1..=3)
            .map(|i| format!("[{}]:80", Dr6Topology::real_addr(i)))
            .collect::<Vec<_>>(),
        "{}",
        listing.0
    );

    // ipvsadm's listing, in its IPv6 notation.
    let out = agent.cli(&["ipvsadm", "-Ln"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("TCP  [2001:db8::100]:80 sh") && text.contains("-> [2001:db8::13]:80"),
        "{text}"
    );

    // Refused, one line each, nothing changed.
    for (args, named) in [
        (
            vec![
                "real",
                "add",
                "-t",
                SERVICE,
                "-r",
                "[2001:db8::14]:8080",
                "-m",
            ],
            // LVS/NAT over IPv6 needs the director to forward IPv6, off here.
            "sysctl -w net.ipv6.conf.all.forwarding=1",
        ),
        (
            vec!["real", "add", "-t", SERVICE, "-r", "10.0.0.14"],
            "address family",
        ),
        (
            vec!["real", "add", "-t", SERVICE, "-r", "2001:db8::14"],
            "no neighbour discovery reply",
        ),
        (
            vec![
                "service",
                "add",
                "-t",
                "[2001:db8::100]:443",
                "-p",
                "300",
                "-M",
                "255.255.255.0",
            ],
            "an IPv6 service takes a prefix length",
        ),
    ] {
        let out = agent.cli(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} accepted");
        assert!(
            err.contains(named) && err.trim_end().lines().count() == 1,
            "{args:?}: {err}"
        );
    }
    assert_eq!(agent.list().reals(SERVICE).len(), 3, "nothing changed");

    // Every source, ROUNDS connections each from its own ports.
    let flows: Vec<SocketAddr> = Dr6Topology::client_sources()
        .into_iter()
        .flat_map(|src| (0..ROUNDS).map(move |r| SocketAddr::new(src.into(), 41000 + r)))
        .collect();
    let answers = fetch_all(topo.client(), &flows, Dr6Topology::service());
    let predicted = simulate(&agent, &flows);
    let mut by_source: BTreeMap<std::net::IpAddr, BTreeSet<&str>> = BTreeMap::new();
    for ((flow, answer), real) in flows.iter().zip(&answers).zip(&predicted) {
        // "[2001:db8::12]:80" is rs2.
        let n: usize = real
            .trim_start_matches("[2001:db8::1")
            .split(']')
            .next()
            .and_then(|d| d.parse().ok())
            .unwrap_or_else(|| panic!("unexpected simulate answer {real}"));
        assert_eq!(answer, &format!("rs{n}"), "{flow}: simulate said {real}");
        by_source.entry(flow.ip()).or_default().insert(answer);
    }
    assert!(
        by_source.values().all(|servers| servers.len() == 1),
        "source hashing keeps each source on one server: {by_source:?}"
    );
    let used: BTreeSet<&str> = by_source.values().flatten().copied().collect();
    assert_eq!(used.len(), 3, "every real server answered: {used:?}");
    let conns = agent.list().service_stat(SERVICE, "conns");
    assert_eq!(conns, flows.len() as u64, "each connection counted once");
}

/// One connection from each of `flows` to `dst`, from inside `client`: what each server said.
fn fetch_all(client: &lb_tests::Netns, flows: &[SocketAddr], dst: SocketAddr) -> Vec<String> {
    client.run_in(|| {
        flows
            .iter()
            .map(|&f| fetch_from(f, dst).unwrap_or_else(|e| panic!("{f} -> {dst}: {e:#}")))
            .collect()
    })
}

/// `xdplb simulate` for `flows`: the real server ("[RIP]:PORT") each would get.
fn simulate(agent: &Agent, flows: &[SocketAddr]) -> Vec<String> {
    simulate_for(agent, SERVICE, flows)
}

/// `xdplb simulate -t service` for `flows`: the real server each would get.
fn simulate_for(agent: &Agent, service: &str, flows: &[SocketAddr]) -> Vec<String> {
    let out = std::process::Command::new(xdplb_bin())
        .arg("--socket")
        .arg(agent.socket())
        .args(["simulate", "-t", service])
        .args(
            flows
                .iter()
                .flat_map(|f| ["--from".to_owned(), f.to_string()]),
        )
        .output()
        .expect("run xdplb simulate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            l.split_whitespace()
                .nth(1)
                .expect("a real server")
                .to_owned()
        })
        .collect()
}

/// A persistent IPv6 service (a prefix length as its netmask) in the configuration file `xdplb
/// save` writes, started from it again; clients in one prefix kept on one real server; TCP
/// health checks of IPv6 real servers: one whose server stops goes down, the other stays up,
/// and the clients persistence kept on the failed one go to the other.
#[test]
fn ipv6_saved_configuration_persistence_and_health_checks() {
    if !require_root() {
        return;
    }
    let mut topo = Dr6Topology::new(2).expect("cannot build the IPv6 topology");
    let mut agent = Agent::start(topo.director(), "eth0", &[]).expect("cannot start the agent");
    agent.cli_ok(&[
        "service", "add", "-t", SERVICE, "-s", "mh", "--hash", "src", "-p", "600", "-M", "125",
    ]);
    for i in 1..=2 {
        let real = format!("[{}]:80", Dr6Topology::real_addr(i));
        agent.cli_ok(&["real", "add", "-t", SERVICE, "-r", &real, "--check", "tcp"]);
    }
    let running = agent.list_config();
    let saved = agent.save();
    assert!(
        saved.contains(r#"vip = "2001:db8::100""#)
            && saved.contains(r#"address = "2001:db8::12""#)
            && saved.contains(r#"netmask = "125""#),
        "{saved}"
    );
    assert!(agent.stop().success());
    let agent = Agent::start_with_config(topo.director(), &saved)
        .unwrap_or_else(|e| panic!("cannot start from the saved file: {e:#}\n{saved}"));
    assert_eq!(
        agent.list_config(),
        running,
        "another configuration from:\n{saved}"
    );
    let out = agent.cli(&["ipvsadm", "-Ln"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("[2001:db8::100]:80 mh persistent 600 mask 125"),
        "{text}"
    );

    // A reload: an IPv4 mask for the IPv6 service is refused with its line, nothing changes;
    // a prefix length is taken.
    agent
        .write_config(&saved.replace(r#"netmask = "125""#, r#"netmask = "255.255.255.0""#))
        .unwrap();
    let out = agent.cli(&["reload"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("prefix length") && err.contains("xdplb.toml:"),
        "{err}"
    );
    assert_eq!(
        agent.list_config(),
        running,
        "a refused reload changed something"
    );
    agent
        .write_config(&saved.replace(r#"netmask = "125""#, "netmask = 126"))
        .unwrap();
    agent.cli_ok(&["reload"]);
    let text = agent.cli_ok(&["ipvsadm", "-Ln"]);
    assert!(text.contains("persistent 600 mask 126"), "{text}");
    agent.write_config(&saved).unwrap();
    agent.cli_ok(&["reload"]);
    assert_eq!(agent.list_config(), running);

    // Persistence groups the sources by /125 (eight addresses): mh alone, hashing each
    // address, would spread a group over both servers.
    let flows: Vec<SocketAddr> = Dr6Topology::client_sources()
        .into_iter()
        .map(|src| SocketAddr::new(src.into(), 42100))
        .collect();
    let answers = fetch_all(topo.client(), &flows, Dr6Topology::service());
    let mut by_group: BTreeMap<u16, BTreeSet<&str>> = BTreeMap::new();
    for (flow, answer) in flows.iter().zip(&answers) {
        let IpAddr::V6(src) = flow.ip() else {
            unreachable!()
        };
        by_group
            .entry(src.segments()[7] >> 3)
            .or_default()
            .insert(answer);
    }
    assert!(
        by_group.values().all(|servers| servers.len() == 1),
        "one server per /125: {by_group:?}"
    );
    // simulate reads the templates these connections left: the same server for each.
    let predicted = simulate(&agent, &flows);
    for ((flow, answer), real) in flows.iter().zip(&answers).zip(&predicted) {
        let n = Dr6Topology::real_addr(answer[2..].parse().unwrap());
        assert_eq!(real, &format!("[{n}]:80"), "{flow}");
    }

    let state = |i: usize| {
        let real = format!("[{}]:80", Dr6Topology::real_addr(i));
        agent.list().real(SERVICE, &real)["health"]["state"]
            .as_str()
            .unwrap_or("none")
            .to_owned()
    };
    topo.kill_server(1);
    let down = (0..80).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        state(1) == "down"
    });
    assert!(down, "rs1 never went down: {}", state(1));
    assert_eq!(
        state(2),
        "up",
        "rs2 passes its checks: {}",
        agent.list().real(SERVICE, "[2001:db8::12]:80")["health"]
    );
    // New connections avoid the server that is down.
    let flows: Vec<SocketAddr> = Dr6Topology::client_sources()
        .into_iter()
        .map(|src| SocketAddr::new(src.into(), 42000))
        .collect();
    let answers = fetch_all(topo.client(), &flows, Dr6Topology::service());
    assert!(answers.iter().all(|a| a == "rs2"), "{answers:?}");
}

/// A dual-stack service pair: the same three real servers behind an IPv4 and an IPv6 VIP, each
/// family by its own addresses. Connections of both families are answered, each by the server
/// `simulate` names for its service, and counted in its own service.
#[test]
fn a_dual_stack_service_pair() {
    if !require_root() {
        return;
    }
    const SERVICE4: &str = "10.0.0.100:80";
    let topo = Dr6Topology::dual_stack(3).expect("cannot build the dual-stack topology");
    let agent = Agent::start(topo.director(), "eth0", &[]).expect("cannot start the agent");
    for svc in [SERVICE4, SERVICE] {
        agent.cli_ok(&["service", "add", "-t", svc, "-s", "mh"]);
    }
    for i in 1..=3 {
        let v4 = Dr6Topology::real_addr4(i).to_string();
        let v6 = Dr6Topology::real_addr(i).to_string();
        agent.cli_ok(&["real", "add", "-t", SERVICE4, "-r", &v4]);
        agent.cli_ok(&["real", "add", "-t", SERVICE, "-r", &v6]);
    }
    let sources: [IpAddr; 2] = ["10.0.0.2".parse().unwrap(), "2001:db8::2".parse().unwrap()];
    for (service, src) in [SERVICE4, SERVICE].into_iter().zip(sources) {
        let dst: SocketAddr = service.parse().unwrap();
        let flows: Vec<SocketAddr> = (0..30).map(|p| SocketAddr::new(src, 43000 + p)).collect();
        let answers = fetch_all(topo.client(), &flows, dst);
        let predicted = simulate_for(&agent, service, &flows);
        let mut used = BTreeSet::new();
        for ((flow, answer), real) in flows.iter().zip(&answers).zip(&predicted) {
            let expected = (1..=3)
                .find(|&i| {
                    real.starts_with(&format!("{}:", Dr6Topology::real_addr4(i)))
                        || real.starts_with(&format!("[{}]:", Dr6Topology::real_addr(i)))
                })
                .unwrap_or_else(|| panic!("unexpected simulate answer {real}"));
            assert_eq!(answer, &format!("rs{expected}"), "{flow} -> {service}");
            used.insert(answer.clone());
        }
        assert_eq!(used.len(), 3, "{service}: every real server answered");
        assert_eq!(agent.list().service_stat(service, "conns"), 30, "{service}");
    }
}

/// LVS/TUN over IPv6 (see lb_tests::ipv6::Tun6Topology): real servers in two other IPv6 subnets
/// behind a router, their next hop learned by neighbour discovery, reached through
/// IPv6-in-IPv6 that `xdplb decap` opens. Connections from many sources are each answered by
/// the real server `simulate` names; both answer.
#[test]
fn ipv6_tunnelling_through_a_router() {
    if !require_root() {
        return;
    }
    let topo = lb_tests::ipv6::Tun6Topology::new().expect("cannot build the IPv6 TUN topology");
    let agent = Agent::start(topo.director(), "eth0", &[]).expect("cannot start the agent");
    agent.cli_ok(&["service", "add", "-t", SERVICE, "-s", "mh"]);
    for i in 1..=2 {
        let real = lb_tests::ipv6::Tun6Topology::real_addr(i).to_string();
        agent.cli_ok(&["real", "add", "-t", SERVICE, "-r", &real, "-i"]);
    }
    let flows: Vec<SocketAddr> = Dr6Topology::client_sources()
        .into_iter()
        .flat_map(|src| (0..3).map(move |r| SocketAddr::new(src.into(), 44000 + r)))
        .collect();
    let answers = fetch_all(topo.client(), &flows, Dr6Topology::service());
    let predicted = simulate(&agent, &flows);
    let mut used = BTreeSet::new();
    for ((flow, answer), real) in flows.iter().zip(&answers).zip(&predicted) {
        let i = (1..=2)
            .find(|&i| real == &format!("[{}]:80", lb_tests::ipv6::Tun6Topology::real_addr(i)))
            .unwrap_or_else(|| panic!("unexpected simulate answer {real}"));
        assert_eq!(answer, &format!("rs{i}"), "{flow}: simulate said {real}");
        used.insert(answer.clone());
    }
    assert_eq!(used.len(), 2, "both real servers answered");

    // A 4 MB upload: full-sized segments no longer fit once tunnelled; the director answers
    // with ICMPv6 Packet Too Big and the client's TCP lowers its segment size.
    let upload = format!(
        "[{}]:{}",
        Dr6Topology::VIP,
        lb_tests::ipv6::Tun6Topology::SINK_PORT
    );
    agent.cli_ok(&["service", "add", "-t", &upload, "-s", "mh"]);
    for i in 1..=2 {
        let real = lb_tests::ipv6::Tun6Topology::real_addr(i).to_string();
        agent.cli_ok(&["real", "add", "-t", &upload, "-r", &real, "-i"]);
    }
    const BYTES: usize = 4 << 20;
    let src = SocketAddr::new(Dr6Topology::client_sources()[0].into(), 45000);
    let dst: SocketAddr = upload.parse().unwrap();
    let answer = topo
        .client()
        .run_in(|| lb_tests::client::upload(src, dst, BYTES, std::time::Duration::from_secs(20)))
        .unwrap_or_else(|e| panic!("the upload through the tunnel: {e:#}"));
    assert!(answer.ends_with(&format!(" {BYTES}")), "{answer}");
    assert!(
        agent.list().reason("tx_frag_needed") >= 1,
        "the director answered a packet too big"
    );
}

/// An IPv4 service tunnelled to IPv6 real servers (IPv4-in-IPv6; see
/// lb_tests::ipv6::Tun6Topology::dual_stack): IPv4 connections answered by the real server
/// `simulate` names, through IPv6 tunnels `xdplb decap` opens; a 4 MB IPv4 upload whose
/// full-sized segments no longer fit the IPv6 tunnel lowers its segment size on the director's
/// fragmentation-needed answers; the mixed service survives `save` and a restart from the
/// file; an IPv6 real server without `-i` is refused with one line.
#[test]
fn an_ipv4_service_tunnelled_to_ipv6_real_servers() {
    use lb_tests::ipv6::Tun6Topology;
    if !require_root() {
        return;
    }
    const SERVICE4: &str = "10.0.0.100:80";
    const UPLOAD4: &str = "10.0.0.100:81";
    let topo = Tun6Topology::dual_stack().expect("cannot build the dual-stack TUN topology");
    let mut agent = Agent::start(topo.director(), "eth0", &[]).expect("cannot start the agent");
    for svc in [SERVICE4, UPLOAD4] {
        agent.cli_ok(&["service", "add", "-t", svc, "-s", "mh"]);
        for i in 1..=2 {
            let real = Tun6Topology::real_addr(i).to_string();
            agent.cli_ok(&["real", "add", "-t", svc, "-r", &real, "-i"]);
        }
    }
    let out = agent.cli(&["real", "add", "-t", SERVICE4, "-r", "2001:db8:1::99"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("by tunnelling only") && err.lines().count() == 1,
        "{err}"
    );
    let text = agent.cli_ok(&["ipvsadm", "-Ln"]);
    assert!(text.contains("-> [2001:db8:1::11]:80"), "{text}");

    let flows: Vec<SocketAddr> = (0..40)
        .map(|k| SocketAddr::new("10.0.0.2".parse().unwrap(), 46000 + k))
        .collect();
    let dst: SocketAddr = SERVICE4.parse().unwrap();
    let answers = fetch_all(topo.client(), &flows, dst);
    let predicted = simulate_for(&agent, SERVICE4, &flows);
    let mut used = BTreeSet::new();
    for ((flow, answer), real) in flows.iter().zip(&answers).zip(&predicted) {
        let i = (1..=2)
            .find(|&i| real == &format!("[{}]:80", Tun6Topology::real_addr(i)))
            .unwrap_or_else(|| panic!("unexpected simulate answer {real}"));
        assert_eq!(answer, &format!("rs{i}"), "{flow}: simulate said {real}");
        used.insert(answer.clone());
    }
    assert_eq!(used.len(), 2, "both real servers answered");

    const BYTES: usize = 4 << 20;
    let src: SocketAddr = "10.0.0.2:47000".parse().unwrap();
    let upload: SocketAddr = UPLOAD4.parse().unwrap();
    let answer = topo
        .client()
        .run_in(|| lb_tests::client::upload(src, upload, BYTES, std::time::Duration::from_secs(20)))
        .unwrap_or_else(|e| panic!("the upload through the IPv6 tunnel: {e:#}"));
    assert!(answer.ends_with(&format!(" {BYTES}")), "{answer}");
    assert!(
        agent.list().reason("tx_frag_needed") >= 1,
        "the director answered a packet too big for the tunnel"
    );

    let running = agent.list_config();
    let saved = agent.save();
    assert!(agent.stop().success());
    let agent = Agent::start_with_config(topo.director(), &saved)
        .unwrap_or_else(|e| panic!("cannot start from the saved file: {e:#}\n{saved}"));
    assert_eq!(agent.list_config(), running, "from:\n{saved}");
    let fresh: Vec<SocketAddr> = (0..6)
        .map(|k| SocketAddr::new("10.0.0.2".parse().unwrap(), 46100 + k))
        .collect();
    let answers = fetch_all(topo.client(), &fresh, dst);
    for (answer, real) in answers.iter().zip(simulate_for(&agent, SERVICE4, &fresh)) {
        let n = &answer[2..];
        assert!(
            real.starts_with(&format!("[2001:db8:{n}::1{n}]")),
            "{answer} {real}"
        );
    }
}
