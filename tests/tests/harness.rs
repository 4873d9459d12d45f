//! The harness by itself, without an agent: the topology comes up as documented and goes away
//! completely on Drop.

use std::net::SocketAddrV4;

use lb_tests::client::fetch;
use lb_tests::{require_root, DrTopology};

#[test]
fn dr_topology_builds_and_tears_down() {
    if !require_root() {
        return;
    }
    let topo = DrTopology::new(2).expect("cannot build the DR topology");
    let names: Vec<String> = [topo.switch().ns(), topo.client().ns(), topo.director().ns()]
        .into_iter()
        .chain(topo.reals().iter().map(|rs| rs.ns()))
        .map(|ns| ns.name().to_owned())
        .collect();

    // Each real server answers on its own address, from any client source, with its name.
    let sources = DrTopology::client_sources();
    for rs in topo.reals() {
        let direct = SocketAddrV4::new(rs.addr(), DrTopology::PORT);
        for src in [
            DrTopology::CLIENT_ADDR,
            sources[0],
            *sources.last().unwrap(),
        ] {
            let answer = topo.client().ns().run_in(|| fetch(src, direct));
            assert_eq!(
                answer.expect("direct connection"),
                rs.name(),
                "{src} -> {direct}"
            );
        }
        // The VIP sits on lo, hidden from ARP.
        let sysctl = |key: &str| {
            rs.ns()
                .exec("cat", &[&format!("/proc/sys/net/ipv4/conf/{key}")])
                .unwrap()
        };
        assert_eq!(sysctl("eth0/arp_ignore").trim(), "1");
        assert_eq!(sysctl("all/arp_announce").trim(), "2");
        assert!(rs
            .ns()
            .ip(&["addr", "show", "lo"])
            .unwrap()
            .contains("10.0.0.100/32"));
    }
    // Without an agent, nothing answers on the VIP port: the director has no server on it.
    let refused = topo
        .client()
        .ns()
        .run_in(|| fetch(sources[0], DrTopology::service()));
    assert!(
        refused.is_err(),
        "the VIP answered without an agent: {refused:?}"
    );

    drop(topo);
    let left = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    for name in names {
        assert!(!left.contains(&name), "namespace {name} left behind");
    }
}
