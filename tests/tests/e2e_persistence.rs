//! End to end, persistence with real TCP (ipvsadm -p, port-0 services): 20 clients make 5
//! connections each, to ports 80 and 443 of a persistent port-0 service, spread over longer
//! than the timeout but never idle for as long: each client stays on one real server, whatever
//! the port, although rr alone would move every connection. A drained real server keeps its
//! persistent clients while their templates live; once they have been idle past the timeout the
//! templates are gone and those clients go elsewhere.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use lb_tests::client::fetch_from;
use lb_tests::topo::start_testsrv;
use lb_tests::{require_root, Agent, DrTopology, Serve};

const CLIENTS: u8 = 20;
const TIMEOUT_SECS: u64 = 3;

/// One connection from each client to `port` (its own source port `sport`): who answered.
fn round(topo: &DrTopology, port: u16, sport: u16) -> BTreeMap<Ipv4Addr, String> {
    let vip = SocketAddrV4::new(DrTopology::VIP, port);
    topo.client().ns().run_in(|| {
        (1..=CLIENTS)
            .map(|i| {
                let client = Ipv4Addr::new(10, 0, 0, 100 + i);
                let answer = fetch_from(SocketAddrV4::new(client, sport), vip)
                    .unwrap_or_else(|e| panic!("{client}:{sport} -> {vip}: {e:#}"));
                (client, answer)
            })
            .collect()
    })
}

/// The live templates of a service's real servers, as listed.
fn persistent_clients(agent: &Agent, svc: &str) -> u64 {
    let listed = agent.list();
    listed
        .reals(svc)
        .iter()
        .map(|r| {
            listed.real(svc, r)["persistent_conns"]
                .as_u64()
                .unwrap_or(0)
        })
        .sum()
}

#[test]
fn clients_stay_on_one_real_server_across_ports_until_their_template_expires() {
    if !require_root() {
        return;
    }
    let topo = DrTopology::new(3).expect("topology");
    // HTTPS beside HTTP on every real server.
    let _https: Vec<_> = topo
        .reals()
        .iter()
        .map(|rs| {
            let listen = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 443);
            start_testsrv(rs.ns(), rs.name(), listen, Serve::Once).expect("lb-testsrv on 443")
        })
        .collect();
    // A short FIN timeout: closed connections leave the table soon, so what keeps a client on
    // its server is the template alone.
    let agent =
        Agent::start(topo.director().ns(), "eth0", &["--tcp-fin-timeout", "1"]).expect("agent");
    let svc = "10.0.0.100:0";
    let timeout = TIMEOUT_SECS.to_string();
    agent.cli_ok(&["service", "add", "-t", svc, "-s", "rr", "-p", &timeout]);
    for rs in topo.reals() {
        agent.cli_ok(&["real", "add", "-t", svc, "-r", &rs.addr().to_string()]);
    }

    // Five rounds, alternating ports, 1.5 s apart: 6 s in all, twice the timeout, but no client
    // is ever idle for as long as the timeout.
    let first = round(&topo, 80, 40000);
    let spread: std::collections::BTreeSet<&String> = first.values().collect();
    assert!(
        spread.len() > 1,
        "rr placed every client on one server: {first:?}"
    );
    for (n, port) in [443, 80, 443, 80].into_iter().enumerate() {
        std::thread::sleep(Duration::from_millis(TIMEOUT_SECS * 1000 / 2));
        let again = round(&topo, port, 40001 + n as u16);
        assert_eq!(again, first, "round {} (port {port})", n + 2);
    }
    assert_eq!(
        persistent_clients(&agent, svc),
        u64::from(CLIENTS),
        "one template per client"
    );

    // rs1 drained: its persistent clients stay while their templates live (as IPVS's).
    let on_rs1: Vec<Ipv4Addr> = first
        .iter()
        .filter(|(_, s)| *s == "rs1")
        .map(|(c, _)| *c)
        .collect();
    assert!(!on_rs1.is_empty(), "rr gave rs1 no client: {first:?}");
    let rs1 = DrTopology::real_addr(1).to_string();
    agent.cli_ok(&["real", "edit", "-t", svc, "-r", &rs1, "-w", "0"]);
    assert_eq!(round(&topo, 80, 40006), first, "drained, templates alive");

    // Idle past the timeout: the templates are gone, rs1's clients go elsewhere, the others
    // are placed afresh; then they stick to their new servers.
    std::thread::sleep(Duration::from_millis(TIMEOUT_SECS * 1000 + 1500));
    assert_eq!(
        persistent_clients(&agent, svc),
        0,
        "templates after the timeout"
    );
    let after = round(&topo, 443, 40010);
    for c in &on_rs1 {
        assert_ne!(
            after[c], "rs1",
            "{c} kept the drained rs1 after its template expired"
        );
    }
    assert_eq!(round(&topo, 80, 40011), after);
}

/// The templates are pinned with the datapath: a client comes back after a restart of the agent
/// to the real server it had before, where rr alone (its position moved on by the first round)
/// would send nearly every client elsewhere.
#[test]
fn templates_outlive_a_restart_of_the_agent() {
    if !require_root() {
        return;
    }
    let topo = DrTopology::new(3).expect("topology");
    let mut agent = Agent::start(topo.director().ns(), "eth0", &[]).expect("agent");
    let svc = "10.0.0.100:0";
    agent.cli_ok(&["service", "add", "-t", svc, "-s", "rr", "-p", "600"]);
    for rs in topo.reals() {
        agent.cli_ok(&["real", "add", "-t", svc, "-r", &rs.addr().to_string()]);
    }
    let first = round(&topo, 80, 40000);
    assert_eq!(persistent_clients(&agent, svc), u64::from(CLIENTS));
    agent.kill();
    agent.restart().expect("cannot start the agent again");
    assert_eq!(
        persistent_clients(&agent, svc),
        u64::from(CLIENTS),
        "templates after the restart"
    );
    assert_eq!(round(&topo, 80, 40001), first, "after the restart");
}
