//! `xdplb run` itself: attach modes, refusing bad starts with one line, and detaching cleanly on
//! SIGTERM.

use lb_tests::agent::xdplb_bin;
use lb_tests::client::fetch;
use lb_tests::{names, require_root, Agent, DrTopology, Netns};

/// The XDP attachment of the director's eth0 as `ip -d link` shows it: "xdp" (native),
/// "xdpgeneric", or None.
fn xdp_attachment(ns: &Netns) -> Option<String> {
    let link = ns.ip(&["-d", "link", "show", "eth0"]).expect("ip link");
    ["xdpgeneric", "xdp"]
        .into_iter()
        .find(|mode| link.split_whitespace().any(|w| w == *mode))
        .map(str::to_owned)
}

/// Every client source reaches a real server through the director.
fn serves_clients(topo: &DrTopology) {
    let sources = DrTopology::client_sources();
    topo.client().ns().run_in(|| {
        for src in sources.iter().take(10) {
            let name = fetch(*src, DrTopology::service()).unwrap_or_else(|e| panic!("{e:#}"));
            assert!(name.starts_with("rs"), "{src} got {name:?}");
        }
    });
}

/// Starts an agent with `args`, checks it forwards, that the interface shows `attached`, and that
/// SIGTERM makes it exit 0, detach and remove its pins and socket.
fn attach_serve_detach(args: &[&str], attached: &str, listed_mode: &str) {
    let topo = DrTopology::new(2).expect("topology");
    let director = topo.director().ns();
    let mut agent = Agent::start(director, "eth0", args).expect("agent");
    topo.configure(&agent);
    assert_eq!(xdp_attachment(director).as_deref(), Some(attached));
    assert_eq!(agent.list().0["mode"], listed_mode);
    serves_clients(&topo);

    agent.stop_detached(director);
}

#[test]
fn native_is_the_default_and_sigterm_detaches() {
    if !require_root() {
        return;
    }
    attach_serve_detach(&[], "xdp", "native");
}

#[test]
fn generic_mode_forwards_too() {
    if !require_root() {
        return;
    }
    attach_serve_detach(&["--mode", "generic"], "xdpgeneric", "generic");
}

#[test]
fn auto_picks_native_where_the_driver_has_it() {
    if !require_root() {
        return;
    }
    attach_serve_detach(&["--mode", "auto"], "xdp", "native");
}

/// Runs `xdplb run` in `ns` expecting it to fail at once; returns its stderr, checked to be one line.
fn failed_start(ns: &Netns, args: &[&str]) -> String {
    let out = ns
        .command(xdplb_bin())
        .arg("run")
        .args(args)
        .output()
        .expect("run xdplb");
    assert!(!out.status.success(), "xdplb run {args:?} succeeded");
    let err = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    assert_eq!(err.lines().count(), 1, "not one line: {err}");
    err
}

/// `xdplb run --iface IFACE` in a namespace of its own, expected to fail: the namespace, the
/// socket path it was given, its one-line error.
fn failed_start_alone(iface: &str) -> (Netns, std::path::PathBuf, String) {
    let ns = Netns::new(format!("{}-solo", names::unique_prefix())).unwrap();
    let socket = std::env::temp_dir().join(format!("{}.sock", ns.name()));
    let err = failed_start(
        &ns,
        &["--iface", iface, "--socket", socket.to_str().unwrap()],
    );
    (ns, socket, err)
}

#[test]
fn an_unknown_interface_is_refused() {
    if !require_root() {
        return;
    }
    let (_ns, socket, err) = failed_start_alone("nope0");
    assert!(err.contains("unknown interface 'nope0'"), "{err}");
    assert!(!socket.exists());
}

#[test]
fn a_second_agent_is_refused_and_the_first_keeps_working() {
    if !require_root() {
        return;
    }
    let topo = DrTopology::new(1).expect("topology");
    let director = topo.director().ns();
    let agent = Agent::start(director, "eth0", &[]).expect("agent");
    topo.configure(&agent);
    let socket = agent.socket().to_str().unwrap().to_owned();
    // Same socket (for another interface): another agent is listening there.
    let err = failed_start(director, &["--iface", "lo", "--socket", &socket]);
    assert!(err.contains("already listening"), "{err}");
    // Another socket, same interface: one agent per interface.
    let other = format!("{socket}.2");
    let err = failed_start(director, &["--iface", "eth0", "--socket", &other]);
    assert!(err.contains("already runs on eth0"), "{err}");
    assert!(!std::path::Path::new(&other).exists());
    serves_clients(&topo);
    assert!(agent.socket().exists());
}

#[test]
fn a_failed_start_leaves_nothing_behind() {
    if !require_root() {
        return;
    }
    // lo has no native XDP: the program loads, its maps are pinned, then attaching fails.
    let (ns, _, err) = failed_start_alone("lo");
    assert!(err.contains("cannot attach"), "{err}");
    let dir = format!("net{}-lo", ns.inode().unwrap());
    let pins = lb_tests::agent::bpffs().unwrap().join("xdplb").join(&dir);
    assert!(!pins.exists(), "{} left behind", pins.display());
    assert!(!std::path::Path::new("/run/xdplb").join(&dir).exists());
}

#[test]
fn the_pins_of_an_interface_that_is_gone_are_not_adopted() {
    if !require_root() {
        return;
    }
    let topo = DrTopology::new(1).expect("topology");
    let director = topo.director().ns();
    let mut agent = Agent::start(director, "eth0", &[]).expect("agent");
    topo.configure(&agent);
    agent.kill();
    // The interface goes and comes back: the pinned link is severed, the old state is stale.
    director.ip(&["link", "set", "eth0", "down"]).unwrap();
    let peer = topo.switch().ns();
    peer.ip(&["link", "del", topo.director().name()]).unwrap();
    topo.switch()
        .plug(director, "eth0", topo.director().name())
        .unwrap();
    director
        .ip(&["addr", "add", "10.0.0.1/24", "dev", "eth0"])
        .unwrap();
    agent.restart().expect("a fresh start");
    assert_eq!(xdp_attachment(director).as_deref(), Some("xdp"));
    assert!(
        agent.list().services().is_empty(),
        "a stale state was adopted: {}",
        agent.list().0
    );
}
