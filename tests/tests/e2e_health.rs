//! End to end, health checks: an agent started from a config file checks its real servers (TCP
//! connect, default timing: every second, down after 2 failures, up after 2 successes). When one
//! server's service dies, new connections stop reaching it within 3 seconds and the others take
//! every client; `list` and the metrics show it down with the error; when the service comes back,
//! the server gets new connections again a few seconds later.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use lb_tests::client::fetch_from;
use lb_tests::metrics::Scrape;
use lb_tests::{require_root, Agent, DrTopology, FreshFlows, Serve};

/// Where the agent serves its metrics, inside the director's namespace.
const METRICS: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9727);
/// New connections per round of polling, and the pause between rounds.
const ROUND: usize = 20;
const PAUSE: Duration = Duration::from_millis(50);
/// The longest a dead server may keep getting new connections: `fall` (2) failed probes a second
/// apart, each failing at once (the port refuses), the first within a second of the death.
const DETECT: Duration = Duration::from_secs(3);
/// How long the test watches new connections after the kill.
const WATCH_DOWN: Duration = Duration::from_secs(6);
/// The longest a revived server may wait for new connections: `rise` (2) good probes a second
/// apart, the first within a second of the restart, plus slack for a busy machine.
const REVIVE: Duration = Duration::from_secs(5);
/// The real server that dies.
const VICTIM: usize = 2;

/// The agent's configuration: TCP VIP:80, Maglev, three real servers with a TCP check each.
fn config() -> String {
    let reals: String = (1..=3)
        .map(|i| {
            format!(
                "  [[service.real]]\n  address = \"{}\"\n  check = {{ type = \"tcp\" }}\n",
                DrTopology::real_addr(i)
            )
        })
        .collect();
    format!(
        "interface = \"eth0\"\n\n[metrics]\nlisten = \"{METRICS}\"\n\n[[service]]\nprotocol = \"tcp\"\n\
         vip = \"{}\"\nport = {}\nscheduler = \"mh\"\n\n{reals}",
        DrTopology::VIP,
        DrTopology::PORT
    )
}

/// A new connection: when it started, from where, who answered (or why it failed).
struct Attempt {
    at: Instant,
    src: SocketAddrV4,
    answer: Result<String, String>,
}

/// Rounds of [`ROUND`] new connections until `done` holds for what was seen so far or `limit`
/// has passed.
fn poll(
    topo: &DrTopology,
    fresh: &mut FreshFlows,
    limit: Duration,
    done: impl Fn(&[Attempt]) -> bool,
) -> Vec<Attempt> {
    let started = Instant::now();
    let mut seen = Vec::new();
    while started.elapsed() < limit && !done(&seen) {
        let flows = fresh.take(ROUND);
        let round = topo.client().ns().run_in(|| {
            flows
                .iter()
                .map(|&src| {
                    let at = Instant::now();
                    let answer =
                        fetch_from(src, DrTopology::service()).map_err(|e| format!("{e:#}"));
                    Attempt { at, src, answer }
                })
                .collect::<Vec<_>>()
        });
        seen.extend(round);
        std::thread::sleep(PAUSE);
    }
    seen
}

/// Whether a connection reached the dead server: it refuses (resets) connections, and only it.
fn refused(attempt: &Attempt) -> bool {
    attempt
        .answer
        .as_ref()
        .is_err_and(|e| e.contains("refused"))
}

/// The health of `real` ("RIP:PORT") as `list --json` shows it: its state and last error.
fn health(agent: &Agent, real: &str) -> (String, Option<String>) {
    let listing = agent.list_config();
    let health = &listing.real(&DrTopology::service().to_string(), real)["health"];
    let state = health["state"]
        .as_str()
        .unwrap_or_else(|| panic!("no health state for {real}: {}", listing.0));
    (
        state.to_owned(),
        health["last_error"].as_str().map(str::to_owned),
    )
}

#[test]
fn a_dead_real_server_gets_no_new_connections_until_it_is_back() {
    if !require_root() {
        return;
    }
    let topo = DrTopology::with_servers(3, Serve::Once).expect("cannot build the DR topology");
    let director = topo.director().ns();
    let agent = Agent::start_with_config(director, &config()).expect("cannot start the agent");
    let victim = DrTopology::real_addr(VICTIM);
    let victim_real = SocketAddrV4::new(victim, DrTopology::PORT).to_string();
    let victim_name = topo.real_name(victim).to_owned();
    let mut fresh = FreshFlows::new(30000);

    // Every server is up and takes new connections (as simulate says).
    std::thread::sleep(Duration::from_secs(2));
    for i in 1..=3 {
        let real = SocketAddrV4::new(DrTopology::real_addr(i), DrTopology::PORT).to_string();
        assert_eq!(health(&agent, &real), ("up".to_owned(), None), "{real}");
    }
    let landed = topo.new_flows_as_simulated(&agent, "-t", &fresh.take(60), "all up");
    assert_eq!(
        landed.len(),
        3,
        "new connections before the kill: {landed:?}"
    );

    let killed = Instant::now();
    topo.kill_server(VICTIM);
    let attempts = poll(&topo, &mut fresh, WATCH_DOWN, |_| false);
    let last_reached = attempts.iter().filter(|a| refused(a)).map(|a| a.at).max();
    eprintln!(
        "last new connection to the dead {victim_name}: {:?} after the kill",
        last_reached.map(|last| last - killed)
    );
    if let Some(last) = last_reached {
        assert!(
            last - killed <= DETECT,
            "{victim_name} still got new connections {:?} after its service died",
            last - killed
        );
    }
    // After that, every new connection works, on the others.
    let after: Vec<&Attempt> = attempts
        .iter()
        .filter(|a| last_reached.is_none_or(|last| a.at > last))
        .collect();
    assert!(
        after.len() >= 100,
        "only {} connections after the last one to {victim_name}",
        after.len()
    );
    for attempt in &after {
        let answer = attempt.answer.as_deref();
        assert!(
            answer.is_ok_and(|name| name != victim_name),
            "new connection {} {:?} after {victim_name} was dead: {answer:?}",
            attempt.src,
            attempt.at - killed
        );
    }
    for other in topo.reals().iter().filter(|rs| rs.addr() != victim) {
        assert!(
            after
                .iter()
                .any(|a| a.answer.as_deref() == Ok(other.name())),
            "{} got no new connections while {victim_name} was dead",
            other.name()
        );
    }
    let (state, error) = health(&agent, &victim_real);
    assert_eq!(state, "down", "{victim_real}");
    assert!(
        error.as_deref().is_some_and(|e| !e.trim().is_empty()),
        "{victim_real} is down without a last_error: {error:?}"
    );
    let scrape = Scrape::get(director, METRICS).expect("scrape");
    let real_up = |addr: &str| scrape.value("xdplb_real_up", &[("real", addr)]);
    assert_eq!(real_up(&victim_real), 0.0);
    for i in [1, 3] {
        let real = SocketAddrV4::new(DrTopology::real_addr(i), DrTopology::PORT).to_string();
        assert_eq!(real_up(&real), 1.0, "{real}");
    }
    assert_eq!(scrape.value("xdplb_service_reals_up", &[]), 2.0);
    assert_eq!(scrape.value("xdplb_service_available", &[]), 1.0);

    // Back: new connections reach it again, once it has passed `rise` checks.
    topo.restart_server(VICTIM)
        .expect("cannot restart the server");
    let restarted = Instant::now();
    let reached = |a: &Attempt| a.answer.as_deref() == Ok(victim_name.as_str());
    let attempts = poll(&topo, &mut fresh, REVIVE + Duration::from_secs(2), |seen| {
        seen.iter().any(reached)
    });
    let first = attempts
        .iter()
        .find(|a| reached(a))
        .unwrap_or_else(|| panic!("{victim_name} got no new connection after its restart"));
    let waited = first.at - restarted;
    eprintln!("first new connection to {victim_name} {waited:?} after its restart");
    assert!(
        waited <= REVIVE,
        "{victim_name} got new connections only {waited:?} after its restart"
    );
    assert!(
        waited >= Duration::from_millis(900),
        "{victim_name} got new connections {waited:?} after its restart: before 2 checks (rise) \
         a second apart could pass"
    );
    for attempt in &attempts {
        assert!(
            attempt.answer.is_ok(),
            "new connection {} after the restart: {:?}",
            attempt.src,
            attempt.answer
        );
    }
    assert_eq!(health(&agent, &victim_real), ("up".to_owned(), None));
    let landed = topo.new_flows_as_simulated(&agent, "-t", &fresh.take(60), "all up again");
    assert_eq!(
        landed.len(),
        3,
        "new connections after the restart: {landed:?}"
    );
}

#[test]
fn a_restarted_agent_keeps_a_dead_server_out() {
    if !require_root() {
        return;
    }
    let topo = DrTopology::with_servers(3, Serve::Once).expect("cannot build the DR topology");
    let director = topo.director().ns();
    let mut agent = Agent::start_with_config(director, &config()).expect("cannot start the agent");
    let victim = DrTopology::real_addr(VICTIM);
    let victim_real = SocketAddrV4::new(victim, DrTopology::PORT).to_string();
    let mut fresh = FreshFlows::new(40000);
    topo.kill_server(VICTIM);
    let deadline = Instant::now() + DETECT + Duration::from_secs(2);
    while health(&agent, &victim_real).0 != "down" {
        assert!(Instant::now() < deadline, "{victim_real} never went down");
        std::thread::sleep(PAUSE);
    }
    // The agent dies and comes back: it must not trust the dead server until `fall` checks fail
    // again (which would hand it new clients for a couple of seconds).
    agent.kill();
    agent.restart().expect("restart");
    assert_eq!(
        health(&agent, &victim_real).0,
        "down",
        "health forgotten across the restart"
    );
    let attempts = poll(&topo, &mut fresh, Duration::from_secs(2), |_| false);
    let refused_after_restart = attempts.iter().filter(|a| refused(a)).count();
    assert_eq!(
        refused_after_restart, 0,
        "new clients sent to the dead server after the restart"
    );
    assert!(
        attempts.iter().all(|a| a.answer.is_ok()),
        "some connection failed"
    );
    // And once its service is back, it rejoins.
    topo.restart_server(VICTIM).expect("restart the server");
    let back = poll(&topo, &mut fresh, REVIVE, |seen| {
        seen.iter()
            .any(|a| a.answer.as_deref() == Ok(topo.real_name(victim)))
    });
    assert!(
        back.iter()
            .any(|a| a.answer.as_deref() == Ok(topo.real_name(victim))),
        "{victim_real} never came back"
    );
}
