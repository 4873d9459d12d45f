//! The director's room for services and real servers, set at start (`services_max`,
//! `reals_max`): a service on an id beyond the built-in 256 carries real TCP; the room's last
//! service is refused one more with a line naming the limit; an agent started again without the
//! setting keeps the running datapath's room and every service; a room out of range is refused
//! at start and attaches nothing; `nat_max = 0` leaves the LVS/NAT reply index one bucket, and
//! every way of adding an LVS/NAT real server is then refused, across a restart too.

use std::time::Duration;

use lb_tests::{agent::xdplb_in, client::fetch, require_root, Agent, DrTopology};

/// Services in the file: 299 on other VIPs, then the topology's service, the 300th.
const SERVICES: usize = 300;

fn config(room: bool) -> String {
    let mut text = String::from("interface = \"eth0\"\n");
    if room {
        text.push_str(&format!("services_max = {SERVICES}\n"));
    }
    for i in 0..SERVICES - 1 {
        text.push_str(&format!(
            "\n[[service]]\nprotocol = \"tcp\"\nvip = \"10.9.{}.{}\"\nport = 80\n\
             [[service.real]]\naddress = \"{}\"\n",
            i / 250,
            i % 250 + 1,
            DrTopology::real_addr(1)
        ));
    }
    text.push_str(&format!(
        "\n[[service]]\nprotocol = \"tcp\"\nvip = \"{}\"\nport = {}\nscheduler = \"mh\"\n",
        DrTopology::VIP,
        DrTopology::PORT
    ));
    for i in 1..=3 {
        text.push_str(&format!(
            "[[service.real]]\naddress = \"{}\"\n",
            DrTopology::real_addr(i)
        ));
    }
    text
}

/// A new connection to the topology's service is answered by one of its real servers.
fn assert_answered(topo: &DrTopology, when: &str) {
    let src = DrTopology::client_sources()[0];
    let answer = topo
        .client()
        .ns()
        .run_in(|| fetch(src, DrTopology::service()))
        .unwrap_or_else(|e| panic!("{when}: no answer: {e:#}"));
    assert!(
        (1..=3).any(|i| answer.trim() == format!("rs{i}")),
        "{when}: answered by {answer:?}"
    );
}

#[test]
fn a_service_beyond_the_default_room_carries_traffic_and_keeps_its_room_across_a_restart() {
    if !require_root() {
        return;
    }
    let topo = DrTopology::new(3).expect("cannot build the DR topology");
    let mut agent = Agent::start_with_config(topo.director().ns(), &config(true))
        .expect("cannot start the agent");
    let services = |a: &Agent| {
        a.list_config().0["services"]
            .as_array()
            .map_or(0, |s| s.len())
    };
    assert_eq!(services(&agent), SERVICES);
    assert_answered(&topo, "the 300th service");

    // The room is full: one more service is refused, naming the limit, and nothing changes.
    let out = agent.cli(&["service", "add", "-t", "10.9.9.9:80"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("too many services: at most 300 (the director's services_max)"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_eq!(services(&agent), SERVICES);

    // Killed (the datapath runs on) and started again from a file without the setting: the
    // running datapath's room holds, and so does every service.
    agent.kill();
    agent.write_config(&config(false)).unwrap();
    agent.restart().expect("cannot start the agent again");
    assert_eq!(services(&agent), SERVICES);
    assert_answered(&topo, "after the restart");
    assert!(
        agent
            .log()
            .contains("keeping the pinned datapath's room for 300 services"),
        "{}",
        agent.log()
    );
}

#[test]
fn a_room_out_of_range_is_refused_at_start_and_attaches_nothing() {
    if !require_root() {
        return;
    }
    let topo = DrTopology::new(1).expect("cannot build the DR topology");
    let ns = topo.director().ns();
    for (flag, value, message) in [
        (
            "--services-max",
            "0",
            "services_max 0 is out of range: 1 to 65536",
        ),
        (
            "--reals-max",
            "2000000",
            "reals_max 2000000 is out of range: 1 to 1048576",
        ),
    ] {
        let out = xdplb_in(ns, &["run", "--iface", "eth0", flag, value]).unwrap();
        assert!(!out.status.success(), "{flag} {value} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(message), "{flag} {value}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            !ns.xdp_attached("eth0").unwrap(),
            "{flag} {value}: attached"
        );
    }
}

/// The reply index's slots, read from the agent's pinned map.
fn reply_slots(agent: &Agent) -> u32 {
    let dir = agent.pin_dir().expect("the agent's pins");
    let map =
        aya::maps::MapData::from_pin(dir.join(lb_common::map_names::NAT_REPLY_INDEX)).unwrap();
    lb_user::datapath::conn_table::SlotTable::<lb_common::ReplyEntry>::new(&map)
        .unwrap()
        .capacity()
}

#[test]
fn a_director_started_with_nat_max_0_has_no_reply_index_and_refuses_lvs_nat() {
    if !require_root() {
        return;
    }
    let topo = DrTopology::new(2).expect("cannot build the DR topology");
    let service = DrTopology::service().to_string();
    let dr = |nat_max: &str| {
        format!(
            "interface = \"eth0\"\n{nat_max}\n[[service]]\nprotocol = \"tcp\"\nvip = \"{}\"\n\
             port = {}\n[[service.real]]\naddress = \"{}\"\n",
            DrTopology::VIP,
            DrTopology::PORT,
            DrTopology::real_addr(1)
        )
    };
    let mut agent = Agent::start_with_config(topo.director().ns(), &dr("nat_max = 0"))
        .expect("cannot start the agent");
    assert_answered(&topo, "LVS/DR with nat_max 0");
    assert_eq!(agent.list().0["nat_max"], 0);
    // One bucket: the smallest table the kernel makes, where the default is as large as the
    // connection table (2,097,152 slots, 160 MiB).
    assert_eq!(reply_slots(&agent), lb_common::conn_table::WAYS as u32);

    // Every way in refuses an LVS/NAT real server with one line and changes nothing.
    let nat_real = format!("{}:8080", DrTopology::real_addr(2));
    let unchanged = |agent: &Agent, how: &str, out: std::process::Output| {
        assert!(!out.status.success(), "{how} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(
                "LVS/NAT needs the reply index, and this director was started with nat_max 0"
            ),
            "{how}: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{how}: {err}");
        assert_eq!(
            agent.list().reals(&service),
            vec![format!("{}:{}", DrTopology::real_addr(1), DrTopology::PORT)],
            "{how}"
        );
    };
    let out = agent.cli(&["real", "add", "-t", &service, "-r", &nat_real, "-m"]);
    unchanged(&agent, "real add -m", out);
    let out = agent.cli(&["ipvsadm", "-a", "-t", &service, "-r", &nat_real, "-m"]);
    unchanged(&agent, "ipvsadm -a -m", out);
    let out = agent.cli(&["service", "add", "-t", "10.9.9.9:80"]);
    assert!(out.status.success(), "a new DR service: {out:?}");
    agent.cli_ok(&["service", "del", "-t", "10.9.9.9:80"]);
    // A file with its MAC given learns nothing: the state's own check refuses it.
    let with_nat = format!(
        "{}[[service.real]]\naddress = \"{}\"\nport = 8080\nforward = \"masq\"\n\
         mac = \"02:00:00:00:00:02\"\n",
        dr("nat_max = 0"),
        DrTopology::real_addr(2)
    );
    agent.write_config(&with_nat).unwrap();
    let out = agent.cli(&["reload"]);
    unchanged(&agent, "a reload adding one", out);
    assert_answered(&topo, "after the refusals");

    // Started again asking for the default: the pinned index keeps its size, says so, and
    // LVS/NAT stays refused.
    agent.kill();
    agent.write_config(&dr("")).unwrap();
    agent.restart().expect("cannot start the agent again");
    assert!(
        agent
            .log()
            .contains("keeping the pinned LVS/NAT reply index of 4 slots"),
        "{}",
        agent.log()
    );
    assert_eq!(reply_slots(&agent), lb_common::conn_table::WAYS as u32);
    assert_eq!(
        agent.list().0["nat_max"],
        0,
        "the kept index's, not the one asked for"
    );
    let out = agent.cli(&["real", "add", "-t", &service, "-r", &nat_real, "-m"]);
    unchanged(&agent, "real add -m after the restart", out);
    assert_answered(&topo, "after the restart");
}
