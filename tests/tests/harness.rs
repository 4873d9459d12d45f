//! The harness by itself, without an agent: the topology comes up as documented and goes away
//! completely on Drop.

use std::net::SocketAddrV4;
use std::time::Duration;

use lb_tests::client::{fetch, fetch_from, Stream, StreamError};
use lb_tests::{require_root, DrTopology, Serve, TunTopology};

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
    assert_gone(&names);
}

/// None of the namespaces `names` exists any more.
fn assert_gone(names: &[String]) {
    let left = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    for name in names {
        assert!(!left.contains(name), "namespace {name} left behind");
    }
}

/// The LVS/TUN topology without an agent: the client and the director reach the real servers
/// behind the router at their own addresses and the answers route back through it; the on-link
/// one directly; every real server runs a decap program that lets this plain traffic through.
#[test]
fn tun_topology_routes_and_tears_down() {
    if !require_root() {
        return;
    }
    let topo = TunTopology::new(Serve::Once).expect("cannot build the TUN topology");
    let names: Vec<String> = topo
        .segments()
        .iter()
        .map(|sw| sw.ns())
        .chain([topo.client().ns(), topo.director().ns(), topo.router().ns()])
        .chain(topo.reals().iter().map(|rs| rs.ns()))
        .map(|ns| ns.name().to_owned())
        .collect();

    let router = topo.router().ns();
    let toward_clients = TunTopology::router_iface(0);
    let sources = TunTopology::client_sources();
    for rs in topo.reals() {
        assert!(
            rs.ns().xdp_attached("eth0").unwrap(),
            "no decap program on {}",
            rs.name()
        );
        let direct = SocketAddrV4::new(rs.addr(), TunTopology::PORT);
        let before = router.link_stats(&toward_clients).unwrap();
        for src in [TunTopology::CLIENT_ADDR, sources[0]] {
            let answer = topo.client().ns().run_in(|| fetch(src, direct));
            assert_eq!(answer.expect("client connection"), rs.name(), "{src}");
        }
        let answer = topo
            .director()
            .ns()
            .run_in(|| fetch(TunTopology::DIRECTOR_ADDR, direct));
        assert_eq!(answer.expect("director connection"), rs.name());
        // Answers to the client and the director: at least a SYN-ACK and the name each.
        let routed = router.link_stats(&toward_clients).unwrap().tx_packets - before.tx_packets;
        if topo.segment_of(rs) == 0 {
            assert!(routed < 3, "{}'s answers were routed: {routed}", rs.name());
        } else {
            assert!(routed >= 6, "{}: only {routed} routed packets", rs.name());
        }
        assert!(rs
            .ns()
            .ip(&["addr", "show", "lo"])
            .unwrap()
            .contains("10.0.0.100/32"));
    }
    for key in [
        "ipv4/ip_forward",
        "ipv4/conf/all/rp_filter",
        "ipv4/conf/eth1/rp_filter",
    ] {
        let value = router
            .exec("cat", &[&format!("/proc/sys/net/{key}")])
            .unwrap();
        let expected = if key.ends_with("forward") { "1" } else { "0" };
        assert_eq!(value.trim(), expected, "router {key}");
    }

    drop(topo);
    assert_gone(&names);
}

/// `lb-testsrv --echo` and the long-lived client, straight to a real server: streams from chosen
/// source ports get answers from the server that greeted them; a reset and a stall are told
/// apart and reported; `fetch` still works against an echo server.
#[test]
fn streams_report_resets_and_stalls() {
    if !require_root() {
        return;
    }
    let topo = DrTopology::with_servers(1, Serve::Echo).expect("cannot build the DR topology");
    let rs = &topo.reals()[0];
    let direct = SocketAddrV4::new(rs.addr(), DrTopology::PORT);
    let src = DrTopology::client_sources()[0];
    let (kept, reset) = (SocketAddrV4::new(src, 20001), SocketAddrV4::new(src, 20002));
    let client = topo.client().ns();

    let answer = client.run_in(|| fetch_from(SocketAddrV4::new(src, 20000), direct));
    assert_eq!(answer.expect("fetch from an echo server"), rs.name());
    let streams = client.run_in(|| [kept, reset].map(|from| Stream::connect(from, direct)));
    let [kept, reset] = streams.map(|s| {
        let mut s = s.expect("stream connect");
        assert_eq!(s.server(), rs.name());
        assert_eq!(s.exchange(), Ok(()));
        s.drive(Duration::from_millis(20))
    });

    // The server's socket of one stream is destroyed: it answers the next line with a reset.
    let filter = format!("sport = :{} and dst = {src}:20002", DrTopology::PORT);
    rs.ns().exec("ss", &["-K", "-t", &filter]).expect("ss -K");
    std::thread::sleep(Duration::from_millis(300));
    let status = reset.stop();
    assert_eq!(
        status.failure.clone().map(|(_, e)| e),
        Some(StreamError::Reset),
        "{status:?}"
    );
    let status = kept.status();
    assert!(
        status.failure.is_none() && status.exchanges > 5,
        "{status:?}"
    );

    // The server goes silent: the other stream stalls.
    rs.ns()
        .ip(&["link", "set", "eth0", "down"])
        .expect("link down");
    std::thread::sleep(Stream::STALL + Duration::from_millis(500));
    let status = kept.stop();
    let (when, error) = status.failure.clone().expect("the stream stalled");
    assert_eq!(error, StreamError::Stall, "{status:?}");
    let quiet = when - status.last_ok;
    assert!(
        quiet >= Stream::STALL && quiet < Stream::STALL + Duration::from_millis(300),
        "stall reported after {quiet:?} without an answer: {status:?}"
    );
}
