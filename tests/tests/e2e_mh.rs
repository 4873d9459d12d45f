//! End to end, scheduler `mh` (Maglev hashing) and the connection table, LVS/DR with native XDP.
//! Through the CLI, a real server is added, one reweighted, one drained (weight 0) and one deleted,
//! while established flows keep going: 100 long-lived TCP connections keep their real server, and
//! only the deleted server's connections break; UDP flows keep their server too, the deleted
//! server's move. After every change, new flows land exactly where `xdplb simulate` says, never on
//! a drained or deleted server.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use lb_tests::client::{fetch_from, DrivenStream, Stream, StreamError, StreamStatus, UdpFlow};
use lb_tests::{require_root, Agent, DrTopology, Serve};

/// Long-lived TCP connections, from every client source address, each with its own source port.
const STREAMS: usize = 100;
const STREAM_PORTS: u16 = 20000;
/// UDP flows kept across the changes.
const UDP_FLOWS: usize = 40;
/// Fresh flows (new connections, simulated flows) use ports from here on, one each.
const FRESH_PORTS: u16 = 30000;
/// New connections tried after each change.
const NEW_CONNS: usize = 60;
/// Flows only asked of `simulate`, to see a weight's effect on the share of new flows.
const SIMULATED: usize = 1000;
/// A stream exchanges a line this often.
const INTERVAL: Duration = Duration::from_millis(50);
/// Wait after each change before looking.
const SETTLE: Duration = Duration::from_secs(1);

/// One change of the real servers through the CLI.
struct Change {
    what: &'static str,
    /// `xdplb real <verb>` of real server `rs<real>`, with `-w <weight>` if any.
    verb: &'static str,
    real: usize,
    weight: Option<&'static str>,
    /// Servers new flows must never reach once the change is made.
    never: &'static [&'static str],
}

/// Starting from rs1..rs3 of weight 1, the changes both tests make, in order.
const CHANGES: [Change; 4] = [
    Change {
        what: "add rs4",
        verb: "add",
        real: 4,
        weight: Some("1"),
        never: &[],
    },
    Change {
        what: "rs1 weight 3",
        verb: "edit",
        real: 1,
        weight: Some("3"),
        never: &[],
    },
    Change {
        what: "drain rs2",
        verb: "edit",
        real: 2,
        weight: Some("0"),
        never: &["rs2"],
    },
    Change {
        what: "delete rs3",
        verb: "del",
        real: 3,
        weight: None,
        never: &["rs2", "rs3"],
    },
];

/// Four real servers running `lb-testsrv --echo` and an agent on the director; None (skipped)
/// without root.
fn echo_topology() -> Option<(DrTopology, Agent)> {
    if !require_root() {
        return None;
    }
    let topo = DrTopology::with_servers(4, Serve::Echo).expect("cannot build the DR topology");
    let agent = Agent::start(topo.director().ns(), "eth0", &[]).expect("cannot start the agent");
    Some((topo, agent))
}

#[test]
fn mh_established_tcp_connections_survive_real_server_changes() {
    // The agent, bound last, is dropped first: it stops before the namespaces go.
    let Some((topo, agent)) = echo_topology() else {
        return;
    };
    let mut check = Checker::new(&topo, &agent, "-t");
    let listing = agent.list();
    let service = listing.service(check.svc).expect("the service is listed");
    assert_eq!(service["mh_size"], 65537, "default table size: {service}");
    assert_eq!(service["hash"], "flow", "default hash: {service}");

    let streams = check.open_streams();
    // Before the first change; before each later one, the check after the one before it.
    check.new_connections("before any change", &[]);
    let mut rs2_exchanges_at_drain = BTreeMap::new();
    let mut deleted_at = None;
    for change in &CHANGES {
        let what = change.what;
        if what == "drain rs2" {
            rs2_exchanges_at_drain = exchanges_of(&streams, "rs2");
        }
        let started = Instant::now();
        check.apply(change);
        if what == "delete rs3" {
            deleted_at = Some(started);
        }
        std::thread::sleep(SETTLE);
        streams_alive(&streams, what, deleted_at.map(|_| "rs3"));
        check.after(change);
    }
    let deleted_at = deleted_at.expect("rs3 was deleted");

    let finals: Vec<StreamStatus> = streams.into_iter().map(DrivenStream::stop).collect();
    let mut still_scheduled_to_own_server = 0;
    let predicted = check.simulate(&finals.iter().map(src4).collect::<Vec<_>>());
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
            let before = rs2_exchanges_at_drain[&src4(status)];
            let expected = 2 * SETTLE.as_millis() / INTERVAL.as_millis();
            assert!(
                status.exchanges >= before + expected as u64,
                "{} on drained rs2 stopped flowing: {before} exchanges at the drain, {} at the end",
                status.src,
                status.exchanges
            );
        }
        if *now_new_flow_goes_to == status.server {
            still_scheduled_to_own_server += 1;
        }
    }
    let survivors = finals.iter().filter(|s| s.server != "rs3").count();
    assert!(
        still_scheduled_to_own_server < survivors,
        "every surviving flow would still be scheduled to its server: the changes moved no flow \
         in the table, so this test proves nothing about the connection table"
    );
}

#[test]
fn mh_udp_flows_keep_their_real_server_until_it_is_deleted() {
    let Some((topo, agent)) = echo_topology() else {
        return;
    };
    let mut check = Checker::new(&topo, &agent, "-u");
    let flows = check.fresh_flows(UDP_FLOWS);
    let mut udp = topo.client().ns().run_in(|| {
        flows
            .iter()
            .map(|&src| UdpFlow::connect(src, DrTopology::service()))
            .collect::<anyhow::Result<Vec<_>>>()
            .expect("UDP socket")
    });
    let exchange_all = |udp: &mut [UdpFlow], when: &str| -> Vec<String> {
        let answers = udp.iter_mut().map(|f| (f.src(), f.exchange()));
        answers
            .map(|(src, a)| a.unwrap_or_else(|e| panic!("{when}: UDP {src}: {e:#}")))
            .collect()
    };
    let owners = exchange_all(&mut udp, "before any change");
    assert_eq!(owners, check.simulate(&flows), "first datagrams");
    let servers: BTreeSet<&str> = owners.iter().map(String::as_str).collect();
    assert_eq!(servers, BTreeSet::from(["rs1", "rs2", "rs3"]), "{owners:?}");

    for change in &CHANGES {
        check.apply(change);
        let now_new_flows_go_to = check.simulate(&flows);
        let answered = exchange_all(&mut udp, change.what);
        for i in 0..flows.len() {
            let expected = if change.what == "delete rs3" && owners[i] == "rs3" {
                // Rescheduled as a new flow would be.
                &now_new_flows_go_to[i]
            } else {
                &owners[i]
            };
            assert_eq!(
                &answered[i], expected,
                "after {}: UDP {} (first answered by {})",
                change.what, flows[i], owners[i]
            );
        }
        let again = exchange_all(&mut udp, change.what);
        assert_eq!(again, answered, "after {}: flows moved again", change.what);
        check.after(change);
        if change.what == "drain rs2" {
            assert_ne!(
                now_new_flows_go_to, owners,
                "no flow would move in the table: this test proves nothing"
            );
        }
    }
}

/// A stream's source: these tests are IPv4's.
fn src4(s: &lb_tests::client::StreamStatus) -> SocketAddrV4 {
    match s.src {
        std::net::SocketAddr::V4(a) => a,
        other => panic!("an IPv6 stream {other}"),
    }
}

/// Exchanges so far of the streams served by `server`, by source.
fn exchanges_of(streams: &[DrivenStream], server: &str) -> BTreeMap<SocketAddrV4, u64> {
    streams
        .iter()
        .map(DrivenStream::status)
        .filter(|s| s.server == server)
        .map(|s| (src4(&s), s.exchanges))
        .collect()
}

/// The service VIP:80 of one protocol (`-t` or `-u`) with scheduler mh, and the checks the tests
/// make on it.
struct Checker<'a> {
    topo: &'a DrTopology,
    agent: &'a Agent,
    proto: &'static str,
    svc: &'static str,
    next_port: u16,
}

impl<'a> Checker<'a> {
    /// Adds the service with scheduler mh and real servers rs1..rs3 of weight 1.
    fn new(topo: &'a DrTopology, agent: &'a Agent, proto: &'static str) -> Self {
        let svc = "10.0.0.100:80";
        assert_eq!(svc, DrTopology::service().to_string());
        agent.cli_ok(&["service", "add", proto, svc, "-s", "mh"]);
        let check = Self {
            topo,
            agent,
            proto,
            svc,
            next_port: FRESH_PORTS,
        };
        for real in 1..=3 {
            check.apply(&Change {
                what: "add",
                verb: "add",
                real,
                weight: Some("1"),
                never: &[],
            });
        }
        check
    }

    /// Makes `change` through the CLI.
    fn apply(&self, change: &Change) {
        let rip = DrTopology::real_addr(change.real).to_string();
        let mut args = vec!["real", change.verb, self.proto, self.svc, "-r", &rip];
        if let Some(w) = change.weight {
            args.extend(["-w", w]);
        }
        self.agent.cli_ok(&args);
    }

    /// What every change is checked for: new connections go where `simulate` says, never to a
    /// server excluded by now; a new server gets some, a heavier one the largest share.
    fn after(&mut self, change: &Change) {
        let what = format!("after {}", change.what);
        let landed = self.new_connections(&what, change.never);
        match change.what {
            "add rs4" => assert!(landed.contains_key("rs4"), "{what}: {landed:?}"),
            "rs1 weight 3" => self.largest_share("rs1"),
            _ => {}
        }
    }

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
            .simulate(self.proto, self.svc, flows)
            .into_iter()
            .map(|rip| {
                let rs = self.topo.real_at(*rip.ip());
                rs.unwrap_or_else(|| panic!("simulate names {rip}, not a real server"))
                    .name()
                    .to_owned()
            })
            .collect()
    }

    /// STREAMS TCP connections from every client source, each predicted by `simulate` and
    /// greeted by the predicted server, spread over rs1..rs3, then driven.
    fn open_streams(&mut self) -> Vec<DrivenStream> {
        let sources = DrTopology::client_sources();
        let flows: Vec<SocketAddrV4> = (0..STREAMS)
            .map(|i| SocketAddrV4::new(sources[i % sources.len()], STREAM_PORTS + i as u16))
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

    /// NEW_CONNS new connections (TCP) or flows (UDP), each to the server `simulate` predicted,
    /// none to `never`. Returns how many each server got.
    fn new_connections(&mut self, when: &str, never: &[&str]) -> BTreeMap<String, usize> {
        let flows = self.fresh_flows(NEW_CONNS);
        let predicted = self.simulate(&flows);
        let service = DrTopology::service();
        let udp = self.proto == "-u";
        let answers = self.topo.client().ns().run_in(|| {
            flows
                .iter()
                .map(|&src| match udp {
                    true => UdpFlow::connect(src, service).and_then(|mut f| f.exchange()),
                    false => fetch_from(src, service),
                })
                .map(|answer| answer.map_err(|e| format!("{e:#}")))
                .collect::<Vec<_>>()
        });
        let mut landed = BTreeMap::new();
        for ((src, predicted), answer) in flows.iter().zip(&predicted).zip(answers) {
            assert_eq!(
                answer.as_deref(),
                Ok(predicted.as_str()),
                "{when}: new flow {src} -> {service} ({})",
                self.proto
            );
            assert!(
                !never.contains(&predicted.as_str()),
                "{when}: new flow {src} reached {predicted}"
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
}

/// No stream broke, stalled or changed server, except those of server `deleted`.
fn streams_alive(streams: &[DrivenStream], after: &str, deleted: Option<&str>) {
    let now = Instant::now();
    for status in streams.iter().map(DrivenStream::status) {
        if deleted == Some(status.server.as_str()) {
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
