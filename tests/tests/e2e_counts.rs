//! End to end, each real server's connections as IPVS counts them (ActiveConn, InActConn), with
//! hundreds of real TCP connections opening and closing: the counts `xdplb list` shows match the
//! connections that are really open, within 5%, and entries that time out leave the counts
//! (the agent corrects what the datapath cannot see).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use lb_tests::client::{fetch_each, StreamSet};
use lb_tests::{require_root, Agent, DrTopology, FreshFlows, Listing, Serve};

const HALF: usize = 120;

fn svc() -> String {
    DrTopology::service().to_string()
}

/// (active, inactive) per real server name, as listed.
fn counts(topo: &DrTopology, l: &Listing) -> BTreeMap<String, (u64, u64)> {
    l.reals(&svc())
        .iter()
        .map(|addr| {
            let r = l.real(&svc(), addr);
            let ip: std::net::Ipv4Addr = addr.split(':').next().unwrap().parse().unwrap();
            let n = |k: &str| r[k].as_u64().unwrap_or_else(|| panic!("no {k} in {r}"));
            (
                topo.real_name(ip).to_owned(),
                (n("active_conns"), n("inactive_conns")),
            )
        })
        .collect()
}

/// How many of the streams each server greeted.
fn per_server(sets: &[&StreamSet]) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for s in sets.iter().flat_map(|s| s.statuses()) {
        *m.entry(s.server).or_default() += 1;
    }
    m
}

fn within(what: &str, got: u64, want: u64) {
    let slack = (want / 20).max(1);
    assert!(
        got.abs_diff(want) <= slack,
        "{what}: {got}, expected {want} (within 5%)"
    );
}

/// Polls until `ok` holds for the listing, or panics with the last one after `limit`.
fn wait_for(agent: &Agent, limit: Duration, what: &str, ok: impl Fn(&Listing) -> bool) -> Listing {
    let start = Instant::now();
    loop {
        let l = agent.list();
        if ok(&l) {
            return l;
        }
        assert!(start.elapsed() < limit, "{what}: {}", l.0);
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn active_and_inactive_counts_match_the_open_connections() {
    if !require_root() {
        return;
    }
    let topo = DrTopology::with_servers(3, Serve::Echo).expect("topology");
    let agent =
        Agent::start(topo.director().ns(), "eth0", &["--tcp-fin-timeout", "5"]).expect("agent");
    agent.cli_ok(&["service", "add", "-t", &svc(), "-s", "mh"]);
    for rs in topo.reals() {
        agent.cli_ok(&["real", "add", "-t", &svc(), "-r", &rs.addr().to_string()]);
    }
    let mut flows = FreshFlows::new(20000);
    let keep =
        StreamSet::open(topo.client().ns(), &flows.take(HALF), DrTopology::service()).unwrap();
    let close =
        StreamSet::open(topo.client().ns(), &flows.take(HALF), DrTopology::service()).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let open = per_server(&[&keep, &close]);
    let listed = counts(&topo, &agent.list());
    for (server, n) in &open {
        within(
            &format!("{server} active with {} streams open", 2 * HALF),
            listed[server].0,
            *n,
        );
        within(&format!("{server} inactive"), listed[server].1, 0);
    }

    // Half of them close (FIN): inactive until the FIN timeout (5 s), then gone.
    let closing = per_server(&[&close]);
    close.stop();
    std::thread::sleep(Duration::from_millis(500));
    let listed = counts(&topo, &agent.list());
    let kept = per_server(&[&keep]);
    for server in open.keys() {
        within(
            &format!("{server} active after half closed"),
            listed[server].0,
            kept.get(server).copied().unwrap_or(0),
        );
        within(
            &format!("{server} inactive after half closed"),
            listed[server].1,
            closing.get(server).copied().unwrap_or(0),
        );
    }
    // 200 short connections on top: each leaves an entry after its FIN.
    let answers = topo
        .client()
        .ns()
        .run_in(|| fetch_each(&flows.take(200), DrTopology::service()));
    assert!(answers.iter().all(Result::is_ok));
    let total_inactive = |l: &Listing| counts(&topo, l).values().map(|c| c.1).sum::<u64>();
    within(
        "inactive with the short connections",
        total_inactive(&agent.list()),
        HALF as u64 + 200,
    );

    // The closed ones time out silently; the agent takes them out of the counts.
    let l = wait_for(
        &agent,
        Duration::from_secs(15),
        "timed-out entries still counted",
        |l| total_inactive(l) == 0,
    );
    let listed = counts(&topo, &l);
    for server in open.keys() {
        within(
            &format!("{server} active at the end"),
            listed[server].0,
            kept.get(server).copied().unwrap_or(0),
        );
    }
    keep.assert_flowing("the connections kept open");
    keep.stop();
}
