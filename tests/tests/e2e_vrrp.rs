//! End to end, active/backup directors with the distribution's keepalived (VRRP) moving the VIP,
//! configured from examples/keepalived-vrrp.conf, and xdplb's connection sync keeping the
//! connections: 100 long-lived TCP connections and a stream of new ones from a client; the
//! master fails (its link goes down; later, separately, its keepalived is killed), the VIP moves
//! to the backup within 4 s, and every established connection goes on (none reset, none stalled
//! beyond the failover and TCP's retransmission); new connections succeed on the backup; then
//! the master comes back and takes the VIP again, and the same holds. Weight changes before each
//! failover, and while the master is away, send many of the connections elsewhere by Maglev
//! alone, so they survive only through sync; the returning master must have taken the backup's
//! table before keepalived gives it the VIP back.

use std::path::Path;
use std::time::{Duration, Instant};

use lb_tests::client::{ConnectionProbe, ProbeResult, StreamSet};
use lb_tests::ha::{held_by_connection_table, wait_fit};
use lb_tests::{
    require_program, require_root, Agent, ClientAt, FreshFlows, HaTopology, Keepalived, Serve,
};

/// Streams open before the first failover, and while the master is away.
const STREAMS: usize = 100;
const AWAY_STREAMS: usize = 40;
/// A stream gives up only after this long without an answer: the VIP takes up to 4 s to move,
/// and TCP's backoff retransmits a while after that.
const STALL: Duration = Duration::from_secs(12);
/// The VIP must move within this.
const FAILOVER: Duration = Duration::from_secs(4);
/// keepalived gives the VIP back after its script passes and its 3.4 s master-down wait.
const FAILBACK: Duration = Duration::from_secs(10);
/// An outage's longest allowed gap in a stream: the move, plus TCP's retransmission backoff.
const LONGEST_GAP: Duration = Duration::from_secs(10);

fn svc() -> String {
    HaTopology::service().to_string()
}

/// The example keepalived configuration, for director `i` of `topo`, checking `agent`.
fn keepalived_config(topo: &HaTopology, i: usize, agent: &Agent, vmac: bool) -> String {
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/keepalived-vrrp.conf"),
    )
    .expect("examples/keepalived-vrrp.conf");
    let check = format!(
        "{} --socket {} check",
        lb_tests::agent::xdplb_bin().display(),
        agent.socket().display()
    );
    let mut config = example
        .replace("/usr/local/sbin/xdplb check", &check)
        .replace("192.0.2.100", &HaTopology::VIP.to_string())
        .replace("xdplb-director-1", &format!("xdplb-d{i}"));
    if i != 1 {
        config = config.replace("priority 150", "priority 100");
    }
    assert!(
        config.contains(&check) && config.contains("10.0.0.100/32"),
        "{config}"
    );
    if vmac {
        // keepalived's virtual MAC: the VIP goes on the macvlan device it creates.
        config = config
            .replace("advert_int 1", "advert_int 1\n    use_vmac")
            .replace("/32 dev eth0", "/32");
    }
    let _ = topo;
    config
}

/// Which director holds the VIP now (on any interface), if one does.
fn vip_holder(topo: &HaTopology) -> Vec<usize> {
    (1..=topo.directors().len())
        .filter(|&i| {
            topo.director(i)
                .ns()
                .ip(&["-4", "-o", "addr", "show"])
                .unwrap_or_default()
                .contains(&format!("{}/32", HaTopology::VIP))
        })
        .collect()
}

/// Waits until director `i` holds the VIP (alone, unless `killed` still holds it too); returns
/// how long it took.
fn wait_vip(topo: &HaTopology, i: usize, killed: Option<usize>, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let holders = vip_holder(topo);
        let others_ok = holders.iter().all(|&h| h == i || Some(h) == killed);
        if holders.contains(&i) && others_ok {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "the VIP is not on d{i} after {limit:?} (held by {holders:?})"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// keepalived on both directors (d1 the higher priority), checking their agents; returns once
/// d1 holds the VIP.
fn keepalived_pair(topo: &HaTopology, agents: [&Agent; 2], vmac: bool) -> (Keepalived, Keepalived) {
    let start = |i: usize| {
        let config = keepalived_config(topo, i, agents[i - 1], vmac);
        Keepalived::start(
            topo.director(i).ns(),
            topo.dir(),
            &format!("ka-d{i}"),
            &config,
        )
        .unwrap()
    };
    let pair = (start(1), start(2));
    wait_vip(topo, 1, None, Duration::from_secs(15));
    pair
}

/// Changes rs`real`'s weight on both directors (the operator edits both).
fn reweigh(agents: &[&Agent], real: usize, weight: u32) {
    let rip = lb_tests::DrTopology::real_addr(real).to_string();
    for a in agents {
        a.cli_ok(&[
            "real",
            "edit",
            "-t",
            &svc(),
            "-r",
            &rip,
            "-w",
            &weight.to_string(),
        ]);
    }
}

/// New connections failed only inside the outage windows, and succeeded after each.
fn assert_new_connections(results: &[ProbeResult], windows: &[(Instant, Instant)]) {
    for r in results {
        if let Err(e) = &r.answer {
            let inside = windows
                .iter()
                .any(|(from, to)| r.at >= *from && r.at <= *to);
            assert!(
                inside,
                "new connection {} failed outside a failover: {e}",
                r.flow
            );
        }
    }
    for (_, to) in windows {
        let after: Vec<&ProbeResult> = results.iter().filter(|r| r.at > *to).take(20).collect();
        assert!(
            after.len() >= 10,
            "too few new connections after a failover"
        );
        assert!(after.iter().all(|r| r.answer.is_ok()), "{after:?}");
    }
}

/// The agents of both directors, from config files with sync; the same Maglev service over
/// rs1..rs3. `xdplb check` passes on both before keepalived starts.
fn agents(topo: &HaTopology) -> (Agent, Agent) {
    let start = |i| {
        let config = topo
            .config(i, "", "mh", &[(1, 1), (2, 1), (3, 1), (4, 1)], None)
            .unwrap();
        Agent::start_with_config(topo.director(i).ns(), &config).unwrap()
    };
    let (d1, d2) = (start(1), start(2));
    wait_fit(&d1, Duration::from_secs(10));
    wait_fit(&d2, Duration::from_secs(10));
    (d1, d2)
}

#[test]
fn the_vip_moves_with_keepalived_and_no_connection_is_lost_either_way() {
    if !require_root() || !require_program("keepalived", "keepalived") {
        return;
    }
    let topo = HaTopology::new(2, 4, Serve::Echo, ClientAt::Lan).expect("topology");
    let (d1, d2) = agents(&topo);
    let (mut ka1, _ka2) = keepalived_pair(&topo, [&d1, &d2], false);

    let sources = HaTopology::client_sources(ClientAt::Lan);
    let mut fresh = FreshFlows::from(sources.clone(), 40000);
    let probe = ConnectionProbe::start(
        topo.client().ns(),
        fresh.take(3000),
        HaTopology::service(),
        Duration::from_millis(50),
    );
    let mut ports = FreshFlows::from(sources, 20000);
    let a = StreamSet::open_with_stall(
        topo.client().ns(),
        &ports.take(STREAMS),
        HaTopology::service(),
        STALL,
    )
    .unwrap();
    let mut windows = Vec::new();

    // --- The master's link goes down. ---
    reweigh(&[&d1, &d2], 1, 5);
    assert!(
        held_by_connection_table(&d2, &a) > 0,
        "no stream would move: sync would not be tested"
    );
    std::thread::sleep(Duration::from_millis(500));
    let down = Instant::now();
    topo.set_link(1, false);
    let moved = wait_vip(&topo, 2, None, FAILOVER);
    windows.push((down, Instant::now() + Duration::from_secs(2)));
    eprintln!("link down: the VIP moved to d2 in {moved:?}");
    std::thread::sleep(LONGEST_GAP);
    a.assert_recovered(
        down + moved,
        LONGEST_GAP,
        "on the backup after the master's link went down",
    );

    // While the master is away: connections open on the backup, then the tables change again,
    // so that these connections live on only in the backup's table.
    let b = StreamSet::open_with_stall(
        topo.client().ns(),
        &ports.take(AWAY_STREAMS),
        HaTopology::service(),
        STALL,
    )
    .unwrap();
    reweigh(&[&d1, &d2], 2, 5);
    assert!(
        held_by_connection_table(&d1, &b) > 0,
        "no stream opened on the backup would move on the master"
    );

    let up = Instant::now();
    topo.set_link(1, true);
    let back = wait_vip(&topo, 1, None, FAILBACK);
    windows.push((up, Instant::now() + Duration::from_secs(2)));
    eprintln!("link up: the VIP came back to d1 in {back:?}");
    let sync = d1.list_config().0["sync"].clone();
    assert!(
        sync["peers"][0]["tables_received"].as_u64().unwrap() >= 2,
        "d1 did not take d2's table after its link came back: {sync}"
    );
    std::thread::sleep(Duration::from_secs(3));
    a.assert_recovered(up, LONGEST_GAP, "back on the master (link)");
    b.assert_recovered(
        up,
        LONGEST_GAP,
        "opened on the backup, back on the master (link)",
    );
    let d1_packets = d1.list().service_stat(&svc(), "packets");
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        d1.list().service_stat(&svc(), "packets") > d1_packets + 100,
        "the traffic is not back on d1"
    );

    // --- The master's keepalived dies (SIGKILL): the dead master keeps the VIP configured. ---
    reweigh(&[&d1, &d2], 3, 5);
    let killed = Instant::now();
    ka1.kill();
    let moved = wait_vip(&topo, 2, Some(1), FAILOVER);
    windows.push((killed, Instant::now() + Duration::from_secs(2)));
    eprintln!("keepalived killed: the VIP moved to d2 in {moved:?}");
    let c = StreamSet::open_with_stall(
        topo.client().ns(),
        &ports.take(AWAY_STREAMS),
        HaTopology::service(),
        STALL,
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    reweigh(&[&d1, &d2], 4, 5);
    assert!(
        held_by_connection_table(&d1, &c) > 0,
        "no stream opened on the backup would move on the master"
    );
    for (set, when) in [(&a, "first"), (&b, "second")] {
        set.assert_recovered(
            killed,
            LONGEST_GAP,
            &format!("{when} streams on the backup (keepalived killed)"),
        );
    }

    let restarted = Instant::now();
    ka1.restart().unwrap();
    let back = wait_vip(&topo, 1, None, FAILBACK);
    windows.push((restarted, Instant::now() + Duration::from_secs(2)));
    eprintln!("keepalived restarted: the VIP came back to d1 in {back:?}");
    std::thread::sleep(Duration::from_secs(3));
    for (set, when) in [(&a, "first"), (&b, "second"), (&c, "third")] {
        set.assert_recovered(
            restarted,
            LONGEST_GAP,
            &format!("{when} streams back on the master (keepalived)"),
        );
    }
    std::thread::sleep(Duration::from_secs(2));
    let results = probe.stop();
    assert_new_connections(&results, &windows);
    for set in [a, b, c] {
        let finals = set.stop();
        assert!(finals.iter().all(|s| s.failure.is_none()), "{finals:?}");
    }
}

/// keepalived's `use_vmac`: the VIP lives on a macvlan device with the virtual MAC, which is up
/// on both directors. The master forwards what is sent to it; the backup never forwards (it
/// drops VIP traffic for the virtual MAC, so its kernel never resets a connection either), even
/// when the switch floods the virtual MAC's frames to it; on failover the connections follow.
#[test]
fn use_vmac_works_and_the_backup_never_forwards_the_virtual_macs_frames() {
    if !require_root() || !require_program("keepalived", "keepalived") {
        return;
    }
    let topo = HaTopology::new(2, 4, Serve::Echo, ClientAt::Lan).expect("topology");
    for d in topo.directors() {
        d.ns()
            .sysctl("net.ipv4.conf.all.arp_announce", "2")
            .unwrap();
        d.ns()
            .sysctl("net.ipv4.conf.eth0.arp_announce", "2")
            .unwrap();
    }
    let (d1, d2) = agents(&topo);
    let (_ka1, _ka2) = keepalived_pair(&topo, [&d1, &d2], true);
    let vmac = "00:00:5e:00:01:33";
    let mut ports = FreshFlows::from(HaTopology::client_sources(ClientAt::Lan), 20000);
    let streams = StreamSet::open_with_stall(
        topo.client().ns(),
        &ports.take(STREAMS),
        HaTopology::service(),
        STALL,
    )
    .unwrap();
    let neigh = topo
        .client()
        .ns()
        .ip(&["neigh", "show", &HaTopology::VIP.to_string()])
        .unwrap();
    assert!(
        neigh.contains(vmac),
        "the client does not reach the VIP at the virtual MAC: {neigh}"
    );
    std::thread::sleep(Duration::from_secs(1));
    streams.assert_flowing("through d1's virtual MAC");

    // The switch sends the virtual MAC's frames to the backup too (as after a MAC table flush).
    let port = topo.switch().ns();
    let backup_before = d2.list();
    port.exec(
        "bridge",
        &["fdb", "replace", vmac, "dev", "d2", "master", "static"],
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    // The master's next advertisement may already have moved the entry back to its port (the
    // bridge moves an entry that is not sticky): then there is nothing to delete.
    if let Err(e) = port.exec(
        "bridge",
        &["fdb", "del", vmac, "dev", "d2", "master", "static"],
    ) {
        assert!(format!("{e:#}").contains("No such file"), "{e:#}");
    }
    let backup_after = d2.list();
    let dropped = backup_after.reason("drop_standby") - backup_before.reason("drop_standby");
    assert!(
        dropped > 50,
        "the backup saw {dropped} frames for the virtual MAC"
    );
    assert_eq!(
        backup_after.service_stat(&svc(), "packets"),
        backup_before.service_stat(&svc(), "packets"),
        "the backup forwarded frames for the virtual MAC"
    );

    // Failover: d1's check fails (drained), keepalived moves the VIP in well under a second.
    std::thread::sleep(Duration::from_secs(2));
    let drained = Instant::now();
    d1.cli_ok(&["drain"]);
    let moved = wait_vip(&topo, 2, None, FAILOVER);
    eprintln!("drain: the VIP moved to d2 in {moved:?}");
    std::thread::sleep(Duration::from_secs(5));
    streams.assert_recovered(drained, LONGEST_GAP, "through d2's virtual MAC");
    let before = d2.list().service_stat(&svc(), "packets");
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        d2.list().service_stat(&svc(), "packets") > before + 100,
        "d2 does not forward"
    );
    let finals = streams.stop();
    assert!(finals.iter().all(|s| s.failure.is_none()), "{finals:?}");
}
