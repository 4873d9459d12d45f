//! Privilege and exposure: an unprivileged user can neither read nor change anything through the
//! control socket (CLI or HTTP); the agent opens no TCP or UDP port unless told to; and without
//! the capabilities XDP needs it refuses to start, saying which are missing.

use std::process::Command;

use lb_tests::agent::xdplb_bin;
use lb_tests::{require_program, require_root, Agent, DrTopology};

/// `program args` as user and group 65534 (nobody), without supplementary groups.
fn as_nobody(program: &str, args: &[&str]) -> std::process::Output {
    Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
            program,
        ])
        .args(args)
        .output()
        .expect("setpriv")
}

#[test]
fn an_unprivileged_user_cannot_use_the_control_socket() {
    if !require_root() || !require_program("setpriv", "util-linux") {
        return;
    }
    let topo = DrTopology::new(1).expect("topology");
    let agent = Agent::start(topo.director().ns(), "eth0", &[]).expect("agent");
    topo.configure(&agent);
    let socket = agent.socket().to_str().unwrap();
    let before = agent.list_config();
    let bin = xdplb_bin();
    let bin = bin.to_str().unwrap();
    for args in [
        &["--socket", socket, "list"][..],
        &["--socket", socket, "service", "del", "-t", "10.0.0.100:80"],
        &["--socket", socket, "drain"],
    ] {
        let out = as_nobody(bin, args);
        assert!(!out.status.success(), "{args:?} worked as nobody");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("permission denied") && err.contains("root-only"),
            "{args:?}: {err}"
        );
    }
    if require_program("curl", "curl") {
        let out = as_nobody(
            "curl",
            &[
                "-sS",
                "--unix-socket",
                socket,
                "-X",
                "DELETE",
                "http://localhost/api/v1/services",
            ],
        );
        assert!(!out.status.success(), "curl as nobody reached the API");
    }
    assert_eq!(agent.list_config().0, before.0, "something changed");
}

/// The ports a namespace's processes listen on (`ss -H -l -n -t -u -p`), as lines.
fn listening(ns: &lb_tests::Netns) -> Vec<String> {
    let out = ns
        .exec("ss", &["-H", "-l", "-n", "-t", "-u", "-p"])
        .expect("ss");
    out.lines().map(str::to_owned).collect()
}

#[test]
fn the_agent_listens_on_no_port_unless_told_to() {
    if !require_root() || !require_program("ss", "iproute2") {
        return;
    }
    let topo = DrTopology::new(1).expect("topology");
    let director = topo.director().ns();
    let agent = Agent::start(director, "eth0", &[]).expect("agent");
    topo.configure(&agent);
    let open: Vec<String> = listening(director)
        .into_iter()
        .filter(|l| l.contains("xdplb"))
        .collect();
    assert!(open.is_empty(), "listening by default: {open:?}");
    drop(agent);
    let agent = Agent::start(director, "eth0", &["--metrics", "127.0.0.1:9727"]).expect("agent");
    let open: Vec<String> = listening(director)
        .into_iter()
        .filter(|l| l.contains("xdplb"))
        .collect();
    assert_eq!(open.len(), 1, "{open:?}");
    assert!(open[0].contains("127.0.0.1:9727"), "{open:?}");
    drop(agent);
}

#[test]
fn without_its_capabilities_the_agent_says_which_are_missing() {
    if !require_root() || !require_program("setpriv", "util-linux") {
        return;
    }
    let topo = DrTopology::new(1).expect("topology");
    let director = topo.director().ns();
    for (caps, missing) in [
        (&[][..], "CAP_NET_ADMIN and CAP_BPF"),
        (&["bpf", "perfmon"][..], "CAP_NET_ADMIN"),
        (&["net_admin", "net_raw"][..], "CAP_BPF"),
    ] {
        let err = Agent::start_with_capabilities(director, "eth0", caps)
            .err()
            .unwrap_or_else(|| panic!("an agent with only {caps:?}"));
        let err = format!("{err:#}");
        assert!(
            err.contains(&format!("xdplb run needs {missing}: run it as root")),
            "{caps:?}: {err}"
        );
        assert!(!director.xdp_attached("eth0").expect("ip link"));
    }
}
