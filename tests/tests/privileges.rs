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

/// Traffic that is not for a service (other ports, other protocols, the director's own address)
/// reaches the director's kernel exactly as the client sent it: a capture on both ends agrees
/// byte for byte.
#[test]
fn traffic_not_for_a_service_reaches_the_kernel_byte_identical() {
    use std::net::{SocketAddr, TcpStream, UdpSocket};
    use std::time::Duration;

    use lb_tests::capture::Capture;

    if !require_root() {
        return;
    }
    let topo = DrTopology::new(1).expect("topology");
    let (client, director) = (topo.client().ns(), topo.director().ns());
    let agent = Agent::start(director, "eth0", &[]).expect("agent");
    topo.configure(&agent);
    let sent = Capture::start(client, "eth0").expect("capture on the client");
    let got = Capture::start(director, "eth0").expect("capture on the director");
    client.run_in(|| {
        let vip = DrTopology::VIP;
        let own = DrTopology::DIRECTOR_ADDR;
        // TCP to ports of the VIP that are no service, and to the director itself: refused.
        for (addr, port) in [(vip, 81), (vip, 443), (own, 22), (own, 80)] {
            let _ = TcpStream::connect_timeout(
                &SocketAddr::from((addr, port)),
                Duration::from_millis(500),
            );
        }
        // UDP to the TCP service's port (another protocol), and to the director, of two sizes.
        let udp = UdpSocket::bind("0.0.0.0:0").unwrap();
        for (addr, port, len) in [(vip, 80, 10), (vip, 80, 1200), (own, 9999, 64)] {
            let _ = udp.send_to(&vec![0x5a; len], (addr, port));
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let (sent, got) = (sent.stop(), got.stop());
    let director_mac = director.mac("eth0").expect("director MAC");
    let mac: Vec<u8> = director_mac
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect();
    let to_director: Vec<_> = sent
        .iter()
        .filter(|f| f.outgoing && f.data.len() >= 14 && f.data[..6] == mac[..])
        .collect();
    assert!(to_director.len() >= 7, "{} frames sent", to_director.len());
    for frame in &to_director {
        assert!(
            got.iter().any(|g| !g.outgoing && g.data == frame.data),
            "a frame reached the director changed or not at all: {:02x?}",
            frame.data
        );
    }
}
