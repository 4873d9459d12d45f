//! End to end, scheduler `mh` (Maglev hashing) and the connection table, LVS/DR with native XDP:
//! 100 long-lived TCP connections keep their real server while, through the CLI, a real server is
//! added, one reweighted, one drained and one deleted; only the deleted server's connections
//! break. New connections land exactly where `xdplb simulate` says, and never on a drained or
//! deleted server.

use std::collections::BTreeMap;
use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use lb_tests::client::{fetch_from, DrivenStream, Stream, StreamError, StreamStatus};
use lb_tests::{require_root, Agent, DrTopology, Serve};

/// Long-lived connections, from every client source address, each with its own source port.
const STREAMS: u16 = 100;
const STREAM_PORTS: u16 = 20000;
/// Fresh flows for new connections use ports from here on, one each.
const FRESH_PORTS: u16 = 30000;
/// New connections tried after each change.
const NEW_CONNS: usize = 60;
/// Flows only asked of `simulate`, to see a weight's effect on the share of new flows.
const SIMULATED: usize = 1000;
/// A stream exchanges a line this often.
const INTERVAL: Duration = Duration::from_millis(50);
/// Wait after each change before looking.
const SETTLE: Duration = Duration::from_secs(1);

#[test]
fn mh_established_connections_survive_real_server_changes() {
    if !require_root() {
        return;
    }
    let topo = DrTopology::with_servers(4, Serve::Echo).expect("cannot build the DR topology");
    let agent = Agent::start(topo.director().ns(), "eth0", &["--tcp-timeout", "0"]).expect("cannot start the agent");
    let svc = DrTopology::service().to_string();
    let addr = |i: usize| DrTopology::real_addr(i).to_string();
    agent.cli_ok(&["service", "add", "-t", &svc, "-s", "mh"]);
    for i in 1..=3 {
        agent.cli_ok(&["real", "add", "-t", &svc, "-r", &addr(i), "-w", "1"]);
    }
    let listing = agent.list();
    let service = listing.service(&svc).expect("the service is listed");
    assert_eq!(service["mh_size"], 65537, "default table size: {service}");
    assert_eq!(service["hash"], "flow", "default hash: {service}");

    let mut check = Checker {
        topo: &topo,
        agent: &agent,
        svc: &svc,
        next_port: FRESH_PORTS,
    };
    let streams = check.open_streams();

    // (what, command, servers new connections must never reach from then on)
    let changes: [(&str, Vec<String>, &[&str]); 4] = [
        ("add rs4", real(&svc, "add", &addr(4), Some("1")), &[]),
        ("rs1 weight 3", real(&svc, "edit", &addr(1), Some("3")), &[]),
        (
            "drain rs2",
            real(&svc, "edit", &addr(2), Some("0")),
            &["rs2"],
        ),
        (
            "delete rs3",
            real(&svc, "del", &addr(3), None),
            &["rs2", "rs3"],
        ),
    ];
    // Before the first change; before each later one, the check after the one before it.
    check.new_connections("before any change", &[]);
    let mut rs2_exchanges_at_drain = BTreeMap::new();
    let mut deleted_at = None;
    for (what, command, never) in &changes {
        if *what == "drain rs2" {
            rs2_exchanges_at_drain = exchanges_of(&streams, "rs2");
        }
        let started = Instant::now();
        let args: Vec<&str> = command.iter().map(String::as_str).collect();
        agent.cli_ok(&args);
        if *what == "delete rs3" {
            deleted_at = Some(started);
        }
        std::thread::sleep(SETTLE);
        check.streams_alive(&streams, what, deleted_at.map(|at| ("rs3", at)));
        let landed = check.new_connections(&format!("after {what}"), never);
        eprintln!("after {what}: new {landed:?}");
        match *what {
            "add rs4" => assert!(landed.contains_key("rs4"), "after {what}: {landed:?}"),
            "rs1 weight 3" => check.largest_share("rs1"),
            _ => {}
        }
    }
    let deleted_at = deleted_at.expect("rs3 was deleted");

    let finals: Vec<StreamStatus> = streams.into_iter().map(DrivenStream::stop).collect();
    let mut still_scheduled_to_own_server = 0;
    let predicted = check.simulate(&finals.iter().map(|s| s.src).collect::<Vec<_>>());
    for (status, now_new_flow_goes_to) in finals.iter().zip(&predicted) {
        if status.server == "rs3" {
            // Rescheduled on its next packet to a server that does not know the connection.
            let (when, error) = status
                .failure
                .clone()
                .unwrap_or_else(|| panic!("{} on deleted rs3 still works: {status:?}", status.src));
            assert_eq!(
                error,
                StreamError::Reset,
                "{} on rs3: {status:?}",
                status.src
            );
            assert!(
                when > deleted_at,
                "{} on rs3 broke before the delete: {status:?}",
                status.src
            );
            continue;
        }
        assert_eq!(
            status.failure, None,
            "{} on {} broke (only rs3's connections may): {status:?}",
            status.src, status.server
        );
        if status.server == "rs2" {
            let before = rs2_exchanges_at_drain[&status.src];
            assert!(
                status.exchanges
                    >= before + 2 * SETTLE.as_millis() as u64 / INTERVAL.as_millis() as u64,
                "{} on drained rs2 stopped flowing: {} exchanges at the drain, {} at the end",
                status.src,
                before,
                status.exchanges
            );
        }
        if *now_new_flow_goes_to == status.server {
            still_scheduled_to_own_server += 1;
        }
    }
    eprintln!("still_scheduled_to_own_server {still_scheduled_to_own_server}");
    let survivors = finals.iter().filter(|s| s.server != "rs3").count();
    assert!(
        still_scheduled_to_own_server < survivors,
        "every surviving flow would still be scheduled to its server: the changes moved no flow \
         in the table, so this test proves nothing about the connection table"
    );
}

/// `xdplb real <verb> -t SVC -r RIP [-w W]`.
fn real(svc: &str, verb: &str, rip: &str, weight: Option<&str>) -> Vec<String> {
    let mut args = vec!["real", verb, "-t", svc, "-r", rip];
    if let Some(w) = weight {
        args.extend(["-w", w]);
    }
    args.into_iter().map(str::to_owned).collect()
}

/// Exchanges so far of the streams served by `server`, by source.
fn exchanges_of(streams: &[DrivenStream], server: &str) -> BTreeMap<SocketAddrV4, u64> {
    streams
        .iter()
        .map(DrivenStream::status)
        .filter(|s| s.server == server)
        .map(|s| (s.src, s.exchanges))
        .collect()
}

struct Checker<'a> {
    topo: &'a DrTopology,
    agent: &'a Agent,
    svc: &'a str,
    next_port: u16,
}

impl Checker<'_> {
    /// `n` flows never used before: every client source address in turn, a new port each.
    fn fresh_flows(&mut self, n: usize) -> Vec<SocketAddrV4> {
        let sources = DrTopology::client_sources();
        (0..n)
            .map(|i| {
                let port = self.next_port;
                self.next_port += 1;
                SocketAddrV4::new(sources[i % sources.len()], port)
            })
            .collect()
    }

    /// Names of the servers `simulate` predicts for new flows from `flows`.
    fn simulate(&self, flows: &[SocketAddrV4]) -> Vec<String> {
        self.agent
            .simulate("-t", self.svc, flows)
            .into_iter()
            .map(|rip| {
                let rs = self.topo.real_at(*rip.ip());
                rs.unwrap_or_else(|| panic!("simulate names {rip}, not a real server"))
                    .name()
                    .to_owned()
            })
            .collect()
    }

    /// STREAMS connections from every client source, each predicted by `simulate` and greeted
    /// by the predicted server, spread over rs1..rs3, then driven.
    fn open_streams(&mut self) -> Vec<DrivenStream> {
        let sources = DrTopology::client_sources();
        let flows: Vec<SocketAddrV4> = (0..STREAMS)
            .map(|i| SocketAddrV4::new(sources[usize::from(i) % sources.len()], STREAM_PORTS + i))
            .collect();
        let predicted = self.simulate(&flows);
        let service = DrTopology::service();
        let streams = self.topo.client().ns().run_in(|| {
            flows
                .iter()
                .map(|&src| Stream::connect(src, service))
                .collect::<anyhow::Result<Vec<_>>>()
        });
        let streams = streams.unwrap_or_else(|e| panic!("stream failed: {e:#}"));
        let mut per_server: BTreeMap<&str, usize> = BTreeMap::new();
        for (stream, predicted) in streams.iter().zip(&predicted) {
            assert_eq!(stream.server(), predicted, "{} -> {service}", stream.src());
            *per_server.entry(stream.server()).or_default() += 1;
        }
        assert_eq!(
            per_server.keys().copied().collect::<Vec<_>>(),
            ["rs1", "rs2", "rs3"],
            "streams spread over the configured servers: {per_server:?}"
        );
        streams.into_iter().map(|s| s.drive(INTERVAL)).collect()
    }

    /// NEW_CONNS new connections, each to the server `simulate` predicted, none to `never`.
    /// Returns how many each server got.
    fn new_connections(&mut self, when: &str, never: &[&str]) -> BTreeMap<String, usize> {
        let flows = self.fresh_flows(NEW_CONNS);
        let predicted = self.simulate(&flows);
        let service = DrTopology::service();
        let answers = self.topo.client().ns().run_in(|| {
            flows
                .iter()
                .map(|&src| fetch_from(src, service).map_err(|e| format!("{e:#}")))
                .collect::<Vec<_>>()
        });
        let mut landed = BTreeMap::new();
        for ((src, predicted), answer) in flows.iter().zip(&predicted).zip(answers) {
            assert_eq!(
                answer.as_deref(),
                Ok(predicted.as_str()),
                "{when}: new connection {src} -> {service}"
            );
            assert!(
                !never.contains(&predicted.as_str()),
                "{when}: new connection {src} reached {predicted}"
            );
            *landed.entry(predicted.clone()).or_default() += 1;
        }
        landed
    }

    /// Of SIMULATED new flows, `server` gets more than any other.
    fn largest_share(&mut self, server: &str) {
        let flows = self.fresh_flows(SIMULATED);
        let mut share: BTreeMap<String, usize> = BTreeMap::new();
        for name in self.simulate(&flows) {
            *share.entry(name).or_default() += 1;
        }
        let top = share
            .iter()
            .max_by_key(|(_, n)| **n)
            .map(|(s, _)| s.as_str());
        assert_eq!(top, Some(server), "shares of new flows: {share:?}");
    }

    /// No stream broke, stalled or changed server, except, after `deleted` (server, when),
    /// that server's.
    fn streams_alive(
        &self,
        streams: &[DrivenStream],
        after: &str,
        deleted: Option<(&str, Instant)>,
    ) {
        let now = Instant::now();
        for status in streams.iter().map(DrivenStream::status) {
            if deleted.is_some_and(|(server, _)| server == status.server) {
                continue;
            }
            assert_eq!(
                status.failure, None,
                "after {after}: {} on {} broke: {status:?}",
                status.src, status.server
            );
            let quiet = now - status.last_ok;
            assert!(
                quiet < Stream::STALL,
                "after {after}: {} on {} has had no answer for {quiet:?}",
                status.src,
                status.server
            );
        }
    }
}
