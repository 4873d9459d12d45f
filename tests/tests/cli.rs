//! The CLI against a live agent: rejected commands exit non-zero with one line on stderr and change
//! nothing; without an agent, the CLI says how to start one.

use lb_tests::agent::cli;
use lb_tests::client::fetch;
use lb_tests::{require_root, Agent, DrTopology};

/// A DR topology with `reals` real servers and an agent with the `sh` service on the VIP, no real
/// server yet: (topology, agent, "VIP:PORT").
fn agent_with_a_service(reals: usize) -> (DrTopology, Agent, String) {
    let topo = DrTopology::new(reals).expect("cannot build the DR topology");
    let agent = Agent::start(topo.director().ns(), "eth0", &[]).expect("cannot start the agent");
    let svc = DrTopology::service().to_string();
    agent.cli_ok(&["service", "add", "-t", &svc, "-s", "sh"]);
    (topo, agent, svc)
}

#[test]
fn rejected_commands_change_nothing() {
    if !require_root() {
        return;
    }
    // Two real servers, only rs1 configured: rs2 is a valid, reachable address to try bad
    // commands with.
    let (topo, agent, svc) = agent_with_a_service(2);
    agent.cli_ok(&[
        "real",
        "add",
        "-t",
        &svc,
        "-r",
        "10.0.0.11",
        "-g",
        "-w",
        "1",
    ]);
    let before = agent.cli_ok(&["list", "--json"]);

    // The service is 10.0.0.100:80 and has real server 10.0.0.11; 10.0.0.12 (rs2) exists.
    // (what, command, what the one-line error must name)
    let rejected = [
        (
            "existing service",
            "service add -t 10.0.0.100:80 -s sh",
            "already exists",
        ),
        ("port 0", "service add -t 10.0.0.100:0 -s sh", "port 0"),
        (
            "malformed VIP",
            "service add -t 10.0.0.300:80 -s sh",
            "10.0.0.300",
        ),
        (
            "unknown scheduler",
            "service add -t 10.0.0.100:82 -s xyz",
            "xyz",
        ),
        (
            "unknown service del",
            "service del -t 10.0.0.100:81",
            "no such service",
        ),
        (
            "weight 70000",
            "real add -t 10.0.0.100:80 -r 10.0.0.12 -g -w 70000",
            "70000",
        ),
        (
            "malformed real",
            "real add -t 10.0.0.100:80 -r 10.0.0.x -g -w 1",
            "10.0.0.x",
        ),
        (
            "unknown service",
            "real add -t 10.0.0.100:81 -r 10.0.0.12 -g -w 1",
            "no such service",
        ),
        (
            "existing real",
            "real add -t 10.0.0.100:80 -r 10.0.0.11 -g -w 1",
            "already exists",
        ),
        (
            "real not on-link",
            "real add -t 10.0.0.100:80 -r 10.9.9.9",
            "10.9.9.9",
        ),
        (
            "bad MAC",
            "real add -t 10.0.0.100:80 -r 10.0.0.12 --mac 02:00",
            "02:00",
        ),
        (
            "unknown real edit",
            "real edit -t 10.0.0.100:80 -r 10.0.0.99 -w 2",
            "no such real server",
        ),
        (
            "unknown real del",
            "real del -t 10.0.0.100:80 -r 10.0.0.99",
            "no such real server",
        ),
        (
            "real del with another port",
            "real del -t 10.0.0.100:80 -r 10.0.0.11:81",
            "no such real server 10.0.0.11:81",
        ),
    ];
    // Check them all, then report every deviation at once.
    let mut wrong = Vec::new();
    for (what, command, names) in rejected {
        let args: Vec<&str> = command.split_whitespace().collect();
        let out = agent.cli(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let after = agent.cli_ok(&["list", "--json"]);
        if out.status.success()
            || stderr.lines().count() != 1
            || !stderr.contains(names)
            || after != before
        {
            wrong.push(format!(
                "{what}: `xdplb {command}` -> {}, stderr {stderr:?}, listing {}",
                out.status,
                if after == before {
                    "unchanged".into()
                } else {
                    format!("changed to {after}")
                }
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "rejected commands misbehaved:\n{}",
        wrong.join("\n")
    );
    // Nor did the datapath change: every client still reaches the one configured real server,
    // also once rs2 is added with weight 0 (configured, but given no clients) and an explicit MAC.
    agent.cli_ok(&[
        "real",
        "add",
        "-t",
        &svc,
        "-r",
        "10.0.0.12",
        "-w",
        "0",
        "--mac",
        "02:aa:bb:cc:dd:ee",
    ]);
    let listing = agent.list();
    let rs2 = &listing.service(&svc).unwrap()["reals"][1];
    assert_eq!(
        (rs2["address"].as_str(), rs2["weight"].as_u64()),
        (Some("10.0.0.12:80"), Some(0))
    );
    assert_eq!(
        rs2["mac"], "02:aa:bb:cc:dd:ee",
        "--mac overrides the neighbour table"
    );
    topo.client().ns().run_in(|| {
        for src in DrTopology::client_sources() {
            assert_eq!(
                fetch(src, DrTopology::service()).unwrap(),
                "rs1",
                "from {src}"
            );
        }
    });
}

#[test]
fn without_an_agent_the_cli_says_how_to_start_one() {
    let socket = std::env::temp_dir().join(format!("xlb-no-agent-{}.sock", std::process::id()));
    let out = cli(&socket, &["list"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "list without an agent succeeded: {out:?}"
    );
    assert!(
        stderr.contains("xdplb run"),
        "the error does not say how to start an agent: {stderr:?}"
    );
}

#[test]
fn health_checks_can_be_set_from_the_cli() {
    if !require_root() {
        return;
    }
    let (topo, agent, svc) = agent_with_a_service(1);
    agent.cli_ok(&[
        "real",
        "add",
        "-t",
        &svc,
        "-r",
        "10.0.0.11",
        "--check",
        "tcp",
    ]);
    let health = |agent: &Agent| agent.list().service(&svc).unwrap()["reals"][0]["health"].clone();
    assert_eq!(health(&agent)["state"], "up");
    // A server whose check fails leaves; `--check none` takes the check away (and it is up).
    topo.kill_server(1);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while health(&agent)["state"] != "down" {
        assert!(
            std::time::Instant::now() < deadline,
            "never went down: {}",
            health(&agent)
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    agent.set_check(&svc, "10.0.0.11", "none");
    assert!(
        health(&agent).is_null(),
        "the check is still there: {}",
        health(&agent)
    );
    let out = agent.cli(&[
        "real",
        "edit",
        "-t",
        &svc,
        "-r",
        "10.0.0.11",
        "--check",
        "http:x",
    ]);
    assert!(!out.status.success());
}
