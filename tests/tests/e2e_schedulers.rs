//! End to end, the schedulers that choose by connection counts, with real TCP: long-lived
//! connections on one real server steer `wlc`'s new connections to the others, in proportion to
//! their weights; `rr` in the same place pays no attention to them.

use std::collections::BTreeMap;
use std::net::SocketAddrV4;

use lb_tests::client::{fetch_each, StreamSet};
use lb_tests::{require_root, Agent, DrTopology, FreshFlows, Serve};

const LONG: usize = 20;
const SHORT: usize = 24;

fn svc() -> String {
    DrTopology::service().to_string()
}

/// Short connections from fresh flows: how many each server answered.
fn short_connections(topo: &DrTopology, flows: &[SocketAddrV4]) -> BTreeMap<String, usize> {
    let mut by_server = BTreeMap::new();
    let answers = topo
        .client()
        .ns()
        .run_in(|| fetch_each(flows, DrTopology::service()));
    for (flow, a) in flows.iter().zip(answers) {
        let server = a.unwrap_or_else(|e| panic!("{flow}: {e:#}"));
        *by_server.entry(server).or_insert(0) += 1;
    }
    by_server
}

/// Real servers rs1 (weight 1), rs2 (weight 3), rs3 (weight 1) under `scheduler`, after `LONG`
/// connections were opened to rs1 alone (the others joined after them): where `SHORT` new
/// connections go while those stay open.
fn with_long_connections_on_rs1(scheduler: &str) -> BTreeMap<String, usize> {
    let topo = DrTopology::with_servers(3, Serve::Echo).expect("topology");
    let agent = Agent::start(topo.director().ns(), "eth0", &[]).expect("agent");
    agent.cli_ok(&["service", "add", "-t", &svc(), "-s", scheduler]);
    let add = |n: usize, w: &str| {
        let addr = DrTopology::real_addr(n).to_string();
        agent.cli_ok(&["real", "add", "-t", &svc(), "-r", &addr, "-w", w]);
    };
    add(1, "1");
    let mut flows = FreshFlows::new(20000);
    let long = StreamSet::open(topo.client().ns(), &flows.take(LONG), DrTopology::service())
        .expect("long-lived connections");
    assert!(long.statuses().iter().all(|s| s.server == "rs1"));
    add(2, "3");
    add(3, "1");
    let by_server = short_connections(&topo, &flows.take(SHORT));
    long.assert_flowing("after the short connections");
    let finals = long.stop();
    assert!(finals.iter().all(|s| s.failure.is_none()), "{finals:?}");
    by_server
}

#[test]
fn wlc_sends_new_connections_away_from_long_lived_ones_by_weight() {
    if !require_root() {
        return;
    }
    let got = with_long_connections_on_rs1("wlc");
    let n = |s: &str| got.get(s).copied().unwrap_or(0);
    // rs1's 20 active connections weigh 256 each against the others' closed (inactive) ones.
    assert_eq!(n("rs1"), 0, "{got:?}");
    // rs2 has three times rs3's weight: about three times its connections.
    assert!(n("rs3") > 0 && n("rs2") >= 2 * n("rs3"), "{got:?}");
    assert_eq!(n("rs2") + n("rs3"), SHORT);
}

#[test]
fn rr_in_the_same_place_takes_every_server_in_turn() {
    if !require_root() {
        return;
    }
    let got = with_long_connections_on_rs1("rr");
    // rr ignores the open connections and the weights: a third each (per CPU).
    for s in ["rs1", "rs2", "rs3"] {
        let n = got.get(s).copied().unwrap_or(0);
        assert!(n >= SHORT / 6, "{s}: {n} of {SHORT}: {got:?}");
    }
}
