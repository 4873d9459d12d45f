//! End to end, restarting the agent without dropping traffic: the datapath is pinned, so an agent
//! killed with SIGKILL leaves it forwarding (established streams and new connections alike), and
//! `xdplb run` started again with the same arguments adopts it: same services, real servers,
//! counters and connection table, no stream ever stalls. SIGTERM then detaches and leaves no
//! pins. SIGQUIT leaves the datapath running too, and `xdplb detach` removes it.

use std::os::unix::process::ExitStatusExt as _;
use std::time::{Duration, Instant};

use lb_common::{Conn, FlowKey};
use lb_tests::agent::{bpffs, xdplb_in};
use lb_tests::client::{fetch, fetch_each, StreamSet};
use lb_tests::legacy::{pin_lru_table, pin_placed_replies, pin_sync_ring_buffer};
use lb_tests::{require_root, Agent, DrTopology, FreshFlows, Netns, Serve};

/// Long-lived TCP connections, from every client source address, each with its own port.
const STREAMS: usize = 50;
const STREAM_PORTS: u16 = 20000;
/// New connections use ports from here on, one each.
const FRESH_PORTS: u16 = 30000;
/// New connections tried at each step.
const NEW_CONNS: usize = 40;
/// How long the director runs without an agent.
const AGENTLESS: Duration = Duration::from_secs(5);

/// Names of the pins left in the tests' bpffs for namespace `ns`.
fn pins_of(ns: &Netns) -> Vec<String> {
    let prefix = format!("net{}-", ns.inode().expect("netns inode"));
    std::fs::read_dir(bpffs().expect("bpffs").join("xdplb"))
        .expect("read the pin directory")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(&prefix))
        .collect()
}

#[test]
fn a_killed_agent_leaves_traffic_flowing_and_a_restarted_one_adopts_it() {
    if !require_root() {
        return;
    }
    let topo = DrTopology::with_servers(4, Serve::Echo).expect("cannot build the DR topology");
    let director = topo.director().ns();
    let mut agent = Agent::start(director, "eth0", &[]).expect("cannot start the agent");
    let svc = DrTopology::service().to_string();
    agent.cli_ok(&["service", "add", "-t", &svc, "-s", "mh"]);
    // A second service, so that adoption has more than one to keep.
    agent.cli_ok(&["service", "add", "-u", &svc, "-s", "sh"]);
    for (i, rs) in topo.reals()[..3].iter().enumerate() {
        let (rip, weight) = (rs.addr().to_string(), (i + 1).to_string());
        agent.cli_ok(&["real", "add", "-t", &svc, "-r", &rip, "-w", &weight]);
        agent.cli_ok(&["real", "add", "-u", &svc, "-r", &rip]);
    }

    let stream_flows = FreshFlows::new(STREAM_PORTS).take(STREAMS);
    let predicted = topo.predict(&agent, "-t", &svc, &stream_flows);
    let streams = StreamSet::open(topo.client().ns(), &stream_flows, DrTopology::service())
        .unwrap_or_else(|e| panic!("stream failed: {e:#}"));
    let servers: Vec<String> = streams.statuses().into_iter().map(|s| s.server).collect();
    assert_eq!(
        servers, predicted,
        "streams greeted by the predicted servers"
    );
    // rs4 joins: the table now sends some of the streams' flows to it, and only the connection
    // table keeps them on their servers (through the restart too).
    let rs4 = DrTopology::real_addr(4).to_string();
    agent.cli_ok(&["real", "add", "-t", &svc, "-r", &rs4, "-w", "3"]);
    let now_predicted = topo.predict(&agent, "-t", &svc, &stream_flows);
    let held = servers
        .iter()
        .zip(&now_predicted)
        .filter(|(server, now)| server != now)
        .count();
    assert!(
        held > 0,
        "no stream's flow moved in the table: this test would not see a lost connection table"
    );
    let configured = agent.list_config();
    let pin_dir = agent
        .pin_dir()
        .expect("the agent's pin directory")
        .to_owned();
    let mut fresh = FreshFlows::new(FRESH_PORTS);
    topo.new_flows_as_simulated(&agent, "-t", &fresh.take(NEW_CONNS), "with the first agent");
    std::thread::sleep(Duration::from_secs(1));
    streams.assert_flowing("before the kill");

    // Where new flows will go while no agent runs: the tables stay as they are.
    let agentless_flows = fresh.take(NEW_CONNS);
    let agentless_predicted = topo.predict(&agent, "-t", &svc, &agentless_flows);
    let packets_before = agent.list().service_stat(&svc, "packets");
    let exchanges_before = streams.exchanges();
    let killed = agent.kill();
    let killed_at = Instant::now();
    assert_eq!(killed.signal(), Some(libc::SIGKILL), "{killed}");
    assert!(
        director.xdp_attached("eth0").expect("ip link"),
        "the killed agent's program is no longer attached"
    );
    assert!(pin_dir.is_dir(), "no pins in {}", pin_dir.display());
    assert!(
        !agent.cli(&["list"]).status.success(),
        "list answered without an agent"
    );

    // Without an agent, new connections go where the agent's tables said.
    std::thread::sleep(Duration::from_secs(1));
    let answers = topo
        .client()
        .ns()
        .run_in(|| fetch_each(&agentless_flows, DrTopology::service()));
    for ((src, predicted), answer) in agentless_flows
        .iter()
        .zip(&agentless_predicted)
        .zip(answers)
    {
        let answer = answer.map_err(|e| format!("{e:#}"));
        assert_eq!(
            answer.as_deref(),
            Ok(predicted.as_str()),
            "without an agent: new connection from {src}"
        );
    }
    while killed_at.elapsed() < AGENTLESS {
        streams.assert_flowing("without an agent");
        std::thread::sleep(Duration::from_millis(250));
    }
    streams.assert_flowing("without an agent");

    agent.restart().expect("cannot start the agent again");
    streams.assert_flowing("right after the restart");
    assert_eq!(
        agent.list_config(),
        configured,
        "the restarted agent runs another configuration"
    );
    // Every exchange since the kill brought the director at least one packet, counted by the
    // datapath in the pinned counters the new agent reads (an exchange under way at the kill
    // may have been counted before it).
    let exchanged = streams.exchanges() - exchanges_before;
    let packets_after = agent.list().service_stat(&svc, "packets");
    assert!(
        packets_after >= packets_before + exchanged - STREAMS as u64,
        "counters not kept across the restart: {packets_before} packets before the kill, \
         {packets_after} after the restart, {exchanged} exchanges in between"
    );
    let landed =
        topo.new_flows_as_simulated(&agent, "-t", &fresh.take(NEW_CONNS), "after the restart");
    assert!(
        landed.len() > 1,
        "all new connections on one server: {landed:?}"
    );
    std::thread::sleep(Duration::from_secs(1));
    streams.assert_flowing("after the restart");
    let finals = streams.stop();
    let servers_after: Vec<String> = finals.into_iter().map(|s| s.server).collect();
    assert_eq!(servers_after, servers, "streams changed server");

    agent.stop_detached(director);
    assert_eq!(
        pins_of(director),
        Vec::<String>::new(),
        "pins left after SIGTERM"
    );
}

#[test]
fn sigquit_leaves_the_datapath_running_until_xdplb_detach() {
    if !require_root() {
        return;
    }
    let topo = DrTopology::new(2).expect("cannot build the DR topology");
    let director = topo.director().ns();
    let mut agent = Agent::start(director, "eth0", &[]).expect("cannot start the agent");
    topo.configure(&agent);
    let source = DrTopology::client_sources()[0];
    let reach = || {
        topo.client()
            .ns()
            .run_in(|| fetch(source, DrTopology::service()))
    };
    let answer = reach().expect("through the agent");

    agent.signal(libc::SIGQUIT).expect("SIGQUIT");
    let status = agent
        .wait_exit(Duration::from_secs(5))
        .expect("the agent did not exit on SIGQUIT");
    assert!(
        status.success(),
        "exit on SIGQUIT: {status}\n{}",
        agent.log()
    );
    assert!(director.xdp_attached("eth0").expect("ip link"));
    assert!(!pins_of(director).is_empty(), "no pins after SIGQUIT");
    assert_eq!(
        reach().expect("without an agent").as_str(),
        answer,
        "the same client reaches another server"
    );

    let out = xdplb_in(director, &["detach", "--iface", "eth0"]).expect("xdplb detach");
    assert!(
        out.status.success(),
        "xdplb detach: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!director.xdp_attached("eth0").expect("ip link"));
    assert_eq!(
        pins_of(director),
        Vec::<String>::new(),
        "pins left after detach"
    );
    // The VIP is the director's own address now: its kernel refuses the connection.
    assert!(reach().is_err(), "the VIP still reaches a real server");
    let again = xdplb_in(director, &["detach", "--iface", "eth0"]).expect("xdplb detach");
    let err = String::from_utf8_lossy(&again.stderr).trim().to_owned();
    assert!(!again.status.success(), "a second detach succeeded");
    assert_eq!(err.lines().count(), 1, "not one line: {err}");
    assert!(err.contains("eth0"), "{err}");
}

/// An agent adopts a datapath pinned by an older version, whose pass/drop reason map has fewer
/// slots than this version's: listing, zeroing and forwarding all work, and the reasons the old
/// map has no slot for read 0.
#[test]
fn a_datapath_pinned_by_an_older_version_is_adopted() {
    if !require_root() {
        return;
    }
    let topo = DrTopology::new(2).expect("cannot build the DR topology");
    let director = topo.director().ns();
    // What the previous version left pinned: the same maps, but 10 reason slots and a NAT
    // program array of one slot (the ICMP path's program came later).
    // Named as the agent names it: after the namespace the agent runs in.
    let dir = bpffs()
        .unwrap()
        .join("xdplb")
        .join(format!("net{}-eth0", director.inode().unwrap()));
    std::fs::create_dir_all(&dir).unwrap();
    // Its connection table was a kernel LRU hash, pinned as CONNS, with one flow in it.
    let old_flow = FlowKey {
        src: lb_common::addr_from_v4([10, 0, 0, 9]),
        dst: lb_common::addr_from_v4(DrTopology::VIP.octets()),
        sport: 40000,
        dport: DrTopology::PORT,
        proto: lb_common::IPPROTO_TCP,
        _pad: [0; 3],
    };
    let old_conn = Conn {
        real: 1,
        service: 0,
        last_seen: lb_user::datapath::clock::jiffies_now().unwrap(),
        flags: lb_common::CONN_ESTABLISHED,
    };
    let old_table = dir.join(lb_common::map_names::LRU_CONNS);
    pin_lru_table(&old_table, &old_flow, &old_conn);
    // Its persistence templates were one too, pinned as TEMPLATES: the client's, in service 0.
    let old_template_key = lb_common::TemplateKey {
        service: 0,
        client: old_flow.src,
    };
    let old_template = lb_common::Template {
        real: 1,
        last_seen: old_conn.last_seen,
    };
    let old_templates = dir.join(lb_common::map_names::LRU_TEMPLATES);
    pin_lru_table(&old_templates, &old_template_key, &old_template);
    // And its LVS/NAT reply index, pinned as NAT_REPLIES: a NAT flow's reply.
    let old_reply_key = old_flow.nat_reply(&lb_common::addr_from_v4([10, 0, 0, 11]), 8080);
    let old_reply = lb_common::NatReply {
        vip: old_flow.dst,
        vport: old_flow.dport,
        _pad: 0,
        service: 0,
        real: 1,
    };
    let old_replies = dir.join(lb_common::map_names::LRU_NAT_REPLIES);
    pin_lru_table(&old_replies, &old_reply_key, &old_reply);
    // Then, until this version, a table of today's layout placing each reply by its whole flow
    // (pinned as NAT_REPLY_TABLE): another client's reply in it.
    let placed_key = FlowKey {
        dst: lb_common::addr_from_v4([10, 0, 0, 10]),
        ..old_reply_key
    };
    let placed = dir.join(lb_common::map_names::PLACED_NAT_REPLIES);
    pin_placed_replies(&placed, &placed_key, &old_reply);
    // And its sync events went into a kernel ring buffer, pinned as SYNC_EVENTS (one left in it):
    // an agent without sync unpins it.
    let old_ring = dir.join(lb_common::map_names::SYNC_EVENTS);
    pin_sync_ring_buffer(&old_ring, &[lb_tests::legacy::bind_event(old_flow, 0, 1)]);
    director.run_in(|| {
        let mut loader = aya::EbpfLoader::new();
        loader.map_max_entries(lb_common::map_names::REASONS, 10);
        loader.map_max_entries(lb_common::map_names::NAT_PROGS, 1);
        let paths: Vec<(&str, std::path::PathBuf)> = lb_user::datapath::pin::PINNED_MAPS
            .iter()
            .filter(|m| **m != lb_common::map_names::LOCAL_MACS && !m.starts_with("SYNC"))
            .filter(|m| {
                ![
                    lb_common::map_names::CONN_TABLE,
                    lb_common::map_names::TEMPLATE_TABLE,
                    lb_common::map_names::NAT_REPLY_INDEX,
                ]
                .contains(m)
            })
            .map(|m| (*m, dir.join(m)))
            .collect();
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        drop(
            loader
                .load(lb_user::datapath::OBJECT)
                .expect("the older datapath's maps"),
        );
    });
    let agent = Agent::start(director, "eth0", &[]).expect("adopting the older datapath");
    assert!(
        agent.log().contains("adopted the running datapath"),
        "{}",
        agent.log()
    );
    // The old table's flow moved into the new one, and the old table's pin is gone.
    assert!(
        agent
            .log()
            .contains("moved the connection table of the previous version"),
        "{}",
        agent.log()
    );
    assert!(!old_table.exists(), "the old table is still pinned");
    let table = |name| {
        lb_user::datapath::conn_table::SlotTable::new(
            &aya::maps::MapData::from_pin(dir.join(name)).unwrap(),
        )
        .unwrap()
    };
    let conns = table(lb_common::map_names::CONN_TABLE);
    assert_eq!(conns.get(&old_flow).unwrap(), Some(old_conn));
    // Likewise its template, which names its service in the new table's entry.
    assert!(
        agent
            .log()
            .contains("moved the persistence templates of the previous version"),
        "{}",
        agent.log()
    );
    assert!(
        !old_templates.exists(),
        "the old templates are still pinned"
    );
    let templates = table(lb_common::map_names::TEMPLATE_TABLE);
    let template = Conn {
        real: 1,
        service: 0,
        last_seen: old_conn.last_seen,
        flags: 0,
    };
    assert_eq!(
        templates.get(&old_template_key.flow_key()).unwrap(),
        Some(template)
    );
    // Likewise its NAT reply, in the reply table.
    assert!(
        agent
            .log()
            .contains("moved the LVS/NAT reply index of the previous version"),
        "{}",
        agent.log()
    );
    assert!(!old_replies.exists(), "the old reply index is still pinned");
    let replies = lb_user::datapath::conn_table::SlotTable::<lb_common::ReplyEntry>::new(
        &aya::maps::MapData::from_pin(dir.join(lb_common::map_names::NAT_REPLY_INDEX)).unwrap(),
    )
    .unwrap();
    let moved = replies.get(&old_reply_key).unwrap().map(|e| e.reply);
    assert_eq!(moved, Some(old_reply));
    // And the other's, where this version looks for it.
    assert!(
        agent
            .log()
            .contains("placed the LVS/NAT replies of the previous version"),
        "{}",
        agent.log()
    );
    assert!(!placed.exists(), "the placed reply index is still pinned");
    assert!(!old_ring.exists(), "the old sync ring is still pinned");
    let moved = replies.get(&placed_key).unwrap().map(|e| e.reply);
    assert_eq!(moved, Some(old_reply));
    topo.configure(&agent);
    let answers = topo
        .client()
        .ns()
        .run_in(|| fetch_each(&FreshFlows::new(30000).take(10), DrTopology::service()));
    assert!(answers.iter().all(Result::is_ok), "{answers:?}");
    let listing = agent.list();
    assert_eq!(listing.reason("pass_other_host"), 0);
    assert_eq!(listing.reason("drop_standby"), 0);
    assert!(listing.service_stat(&DrTopology::service().to_string(), "packets") >= 10);
    agent.cli_ok(&["zero"]);
    assert_eq!(
        agent
            .list()
            .service_stat(&DrTopology::service().to_string(), "packets"),
        0
    );
}

/// Under `ip netns exec` with the default bpffs (/sys/fs/bpf, which there is a fresh sysfs), the
/// agent mounts a bpffs of its own, in its private mount namespace: the pins die with it. It says
/// so at start, in `list` and in the metrics; after a SIGKILL the XDP program is gone and the
/// next agent starts empty. With a bpffs of the host (the tests' own, by XDPLB_BPFFS), nothing is
/// said and a SIGKILL leaves the datapath attached.
#[test]
fn a_bpffs_that_dies_with_the_agent_is_reported() {
    if !require_root() {
        return;
    }
    let topo = DrTopology::new(1).expect("topology");
    let director = topo.director().ns();
    let mut agent = Agent::start(
        director,
        "eth0",
        &["--bpffs", "/sys/fs/bpf", "--metrics", "127.0.0.1:9727"],
    )
    .expect("agent");
    topo.configure(&agent);
    let warning = "is this agent's own (a private mount namespace";
    assert!(agent.log().contains(warning), "{}", agent.log());
    assert!(
        agent.log().contains("give it with --bpffs"),
        "{}",
        agent.log()
    );
    let list = agent.cli_ok(&["list"]);
    assert!(
        list.contains("Warning: the datapath dies with this agent"),
        "{list}"
    );
    assert_eq!(agent.list().0["agent"]["pins_outlive_agent"], false);
    let scrape = lb_tests::metrics::Scrape::get(director, "127.0.0.1:9727".parse().unwrap())
        .expect("metrics");
    assert_eq!(scrape.value("xdplb_pins_outlive_agent", &[]), 0.0);

    // As warned: killed, the agent takes the datapath with it.
    agent.kill();
    let deadline = Instant::now() + Duration::from_secs(5);
    while director.xdp_attached("eth0").expect("ip link") {
        assert!(
            Instant::now() < deadline,
            "the XDP program outlived its private bpffs"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(agent);

    // With the host's bpffs: no warning, and a killed agent leaves the datapath attached.
    let mut agent = Agent::start(director, "eth0", &[]).expect("agent");
    assert!(!agent.log().contains(warning), "{}", agent.log());
    assert!(!agent
        .cli_ok(&["list"])
        .contains("Warning: the datapath dies"));
    assert_eq!(agent.list().0["agent"]["pins_outlive_agent"], true);
    agent.kill();
    assert!(director.xdp_attached("eth0").expect("ip link"));
}
