//! End to end, LVS/DR with native XDP: a client, the director running `xdplb run` (configured only
//! through the CLI) and three real servers on one bridge; real TCP connections from many client
//! source addresses.

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use lb_tests::client::fetch;
use lb_tests::{require_root, Agent, DrTopology, Listing};

const ROUNDS: usize = 10;
/// Client-to-VIP packets every connection certainly sends: SYN, ACK of the SYN-ACK, FIN.
const PACKETS_PER_CONN: u64 = 3;
/// How long after `real del` returns the deleted server's clients may still fail or stay put.
const SWITCH_OVER: Duration = Duration::from_secs(1);

#[test]
fn dr_source_hash_direct_return_and_real_server_removal() {
    if !require_root() {
        return;
    }
    let topo = DrTopology::new(3).expect("cannot build the DR topology");
    let agent = Agent::start(topo.director().ns(), "eth0", &[]).expect("cannot start the agent");
    topo.configure(&agent);

    let owner = sticky_and_direct_return(&topo, &agent);
    remove_real_server_under_load(&topo, &agent, &owner);
}

/// ROUNDS rounds of one connection from every client source: all succeed, each source always
/// reaches the same server, every server gets traffic, and only client->VIP packets cross the
/// director. Returns which server each source reached.
fn sticky_and_direct_return(topo: &DrTopology, agent: &Agent) -> HashMap<Ipv4Addr, String> {
    let service = DrTopology::service();
    let sources = DrTopology::client_sources();
    let before = agent.list();

    // Stop at the first failure: a broken datapath would otherwise cost a timeout per connection.
    let results = topo.client().ns().run_in(|| {
        let mut results = Vec::new();
        for round in 0..ROUNDS {
            for &src in &sources {
                let server = fetch(src, service).with_context(|| format!("round {round}"))?;
                results.push((src, server));
            }
        }
        anyhow::Ok(results)
    });
    let after = agent.list();
    let results =
        results.unwrap_or_else(|e| panic!("connection failed: {e:#}\nlisting: {}", after.0));

    let mut owner = HashMap::new();
    let mut per_server: HashMap<String, u64> = HashMap::new();
    for (src, server) in &results {
        let first = owner.entry(*src).or_insert_with(|| server.clone());
        assert_eq!(first, server, "{src} reached {first} first, then {server}");
        *per_server.entry(server.clone()).or_default() += 1;
    }
    let names: BTreeSet<_> = topo.reals().iter().map(|rs| rs.name().to_owned()).collect();
    let reached: BTreeSet<_> = per_server.keys().cloned().collect();
    assert_eq!(
        reached, names,
        "every real server gets traffic, and only they answer: {per_server:?}"
    );

    let conns = results.len() as u64;
    let svc = service.to_string();
    let delta = |l: &Listing, stat| l.service_stat(&svc, stat);
    let packets = delta(&after, "packets") - delta(&before, "packets");
    let new_conns = delta(&after, "conns") - delta(&before, "conns");
    assert!(
        packets >= PACKETS_PER_CONN * conns,
        "the director forwarded {packets} packets for {conns} connections: {}",
        after.0
    );
    assert!(
        new_conns >= conns,
        "{new_conns} new connections counted for {conns}: {}",
        after.0
    );

    // Replies go from the real servers straight to the client. Had they crossed the director,
    // they would be counted as "not for a service" (their source is the VIP, not their
    // destination); a few frames flooded by the bridge before it learned the MACs are fine.
    let no_service = after.reason("pass_no_service") - before.reason("pass_no_service");
    assert!(
        no_service < conns / 10,
        "the director saw {no_service} packets not for a service during {conns} connections: {}",
        after.0
    );
    owner
}

/// One attempt of the background client during the removal.
struct Attempt {
    src: Ipv4Addr,
    start: Instant,
    end: Instant,
    result: Result<String, String>,
}

/// Deletes one real server through the CLI while a client keeps connecting from every source.
/// Sources of the remaining servers never fail nor move; the deleted server's sources move to
/// other servers (and stay there) within SWITCH_OVER of the CLI returning, and may fail only
/// until then.
fn remove_real_server_under_load(
    topo: &DrTopology,
    agent: &Agent,
    owner: &HashMap<Ipv4Addr, String>,
) {
    let service = DrTopology::service();
    let victim = &topo.reals()[2];
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let stop = Arc::clone(&stop);
        topo.client().ns().thread(move || {
            let mut attempts = Vec::new();
            for src in DrTopology::client_sources().into_iter().cycle() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let start = Instant::now();
                let result = fetch(src, service).map_err(|e| format!("{e:#}"));
                attempts.push(Attempt {
                    src,
                    start,
                    end: Instant::now(),
                    result,
                });
            }
            attempts
        })
    };

    std::thread::sleep(Duration::from_millis(300));
    let del_start = Instant::now();
    agent.cli_ok(&[
        "real",
        "del",
        "-t",
        &service.to_string(),
        "-r",
        &victim.addr().to_string(),
    ]);
    let deadline = Instant::now() + SWITCH_OVER;
    std::thread::sleep(SWITCH_OVER + Duration::from_millis(700));
    stop.store(true, Ordering::Relaxed);
    let attempts = client.join().expect("the client thread panicked");

    let reals = agent.list().reals(&service.to_string());
    assert!(
        !reals
            .iter()
            .any(|r| r.starts_with(&format!("{}:", victim.addr()))),
        "{} still listed after real del: {reals:?}",
        victim.addr()
    );

    let mut moved_to: HashMap<Ipv4Addr, String> = HashMap::new();
    for a in &attempts {
        let was = &owner[&a.src];
        let result = a.result.as_deref();
        if was != victim.name() {
            assert_eq!(
                result,
                Ok(was.as_str()),
                "{} (served by {was}) during the removal",
                a.src
            );
        } else if a.end < del_start {
            assert_eq!(result, Ok(was.as_str()), "{} before the removal", a.src);
        } else if a.start >= deadline {
            let now = result
                .unwrap_or_else(|e| panic!("{} failed {SWITCH_OVER:?} after real del: {e}", a.src));
            assert_ne!(
                now,
                victim.name(),
                "{} still reaches the deleted server",
                a.src
            );
            let first = moved_to.entry(a.src).or_insert_with(|| now.to_owned());
            assert_eq!(first, now, "{} moved to {first}, then to {now}", a.src);
        }
    }
    let victim_sources = owner.values().filter(|s| *s == victim.name()).count();
    assert_eq!(
        moved_to.len(),
        victim_sources,
        "every source of {} was tried after the switch-over",
        victim.name()
    );
}
