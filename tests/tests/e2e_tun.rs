//! End to end, LVS/TUN with native XDP: the director sends clients' packets in IPIP tunnels,
//! through a router, to real servers in other subnets, which decapsulate them (`xdplb decap`) and
//! answer the client directly through the router; a service mixes tunnelled and direct-routing
//! real servers; packets too big for the tunnel get "fragmentation needed" from the director, so
//! path MTU discovery works through it. The director is configured only through the CLI.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use lb_tests::capture::{Capture, Frame};
use lb_tests::client::{fetch_from, upload, UdpFlow};
use lb_tests::{require_root, Agent, Host, Listing, Serve, TunTopology};

/// Connections (or UDP flows) per round.
const CONNS: usize = 120;
/// Client-to-VIP packets every TCP connection certainly sends: SYN, ACK of the SYN-ACK, FIN.
const PACKETS_PER_CONN: u64 = 3;
/// Real-server-to-client packets every TCP connection certainly gets: SYN-ACK, the name (which
/// may carry the ACK of the client's FIN and the server's FIN).
const REPLIES_PER_CONN: usize = 2;
/// The director's interface MTU, and what is left inside an IPIP tunnel through it.
const MTU: usize = 1500;
const TUNNEL_MTU: usize = MTU - 20;
/// The UDP payload of a datagram of exactly [`TUNNEL_MTU`] bytes.
const UDP_PAYLOAD_FITS: usize = TUNNEL_MTU - 20 - 8;
/// What each client uploads in the path MTU test.
const UPLOAD_BYTES: usize = 1 << 20;
const UPLOADS: usize = 4;
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(10);

#[test]
fn tun_tcp_through_tunnels_with_direct_replies_then_mixed_with_dr() {
    let Some((topo, agent)) = setup(Serve::Once, "-t", &[]) else {
        return;
    };
    let svc = TunTopology::service().to_string();
    let listing = agent.list();
    for rs in topo.remote_reals() {
        let real = listing.real(&svc, &format!("{}:80", rs.addr()));
        assert_eq!(real["forward"], "tunnel", "{}: {real}", rs.name());
    }

    // Tunnelled real servers only.
    connection_round(&topo, &agent, 30000, topo.remote_reals());

    // The same service with a direct-routing real server in the director's segment too.
    let rs3 = topo.local_real();
    add_real(&agent, "-t", rs3, "-g");
    let listing = agent.list();
    let real = listing.real(&svc, &format!("{}:80", rs3.addr()));
    assert_ne!(real["forward"], "tunnel", "rs3 was added with -g: {real}");
    connection_round(&topo, &agent, 31000, topo.reals());
}

#[test]
fn tun_path_mtu_discovery_through_the_director() {
    let Some((topo, agent)) = setup(Serve::Sink, "-t", &[]) else {
        return;
    };
    let route = || {
        let vip = TunTopology::VIP.to_string();
        topo.client().ns().ip(&["route", "get", &vip]).unwrap()
    };
    assert!(
        !route().contains("mtu"),
        "a path MTU before any traffic: {}",
        route()
    );

    let flows = flows(UPLOADS, 30000);
    let predicted = simulate(&topo, &agent, "-t", &flows);
    let before = agent.list();
    let answers = topo.client().ns().run_in(|| {
        let service = TunTopology::service();
        let upload = |&src| upload(src, service, UPLOAD_BYTES, UPLOAD_TIMEOUT);
        flows.iter().map(upload).collect::<anyhow::Result<Vec<_>>>()
    });
    let after = agent.list();
    let answers = answers.unwrap_or_else(|e| {
        panic!(
            "upload failed: {e:#}\nclient route: {}listing: {}",
            route(),
            after.0
        )
    });
    for ((flow, answer), rs) in flows.iter().zip(&answers).zip(&predicted) {
        assert_eq!(
            answer,
            &format!("{rs} {UPLOAD_BYTES}"),
            "upload from {flow}"
        );
    }
    let delta = |name| after.reason(name) - before.reason(name);
    assert!(
        delta("tx_frag_needed") >= 1,
        "no \"fragmentation needed\" sent: {}",
        after.0
    );
    assert_eq!(
        delta("drop_too_big"),
        0,
        "packets with DF dropped instead of answered: {}",
        after.0
    );
    let svc = TunTopology::service().to_string();
    let bytes = after.service_stat(&svc, "bytes") - before.service_stat(&svc, "bytes");
    assert!(
        bytes >= (UPLOADS * UPLOAD_BYTES) as u64,
        "the director forwarded {bytes} bytes of {UPLOADS} uploads of {UPLOAD_BYTES}"
    );
    assert!(
        route().contains(&format!("mtu {TUNNEL_MTU}")),
        "the client's path MTU to the VIP: {}",
        route()
    );
}

#[test]
fn tun_udp_flows_and_datagrams_too_big_for_the_tunnel() {
    let vip = TunTopology::VIP.to_string();
    let Some((topo, agent)) = setup(Serve::Echo, "-u", &["--tunnel-src", &vip]) else {
        return;
    };
    let service = TunTopology::service();
    let flows = flows(CONNS, 30000);
    let predicted = simulate(&topo, &agent, "-u", &flows);
    let capture = Capture::start(topo.router().ns(), &TunTopology::router_iface(0)).unwrap();
    let mut udp = topo.client().ns().run_in(|| {
        let connect = |&src| UdpFlow::connect(src, service);
        flows
            .iter()
            .map(connect)
            .collect::<anyhow::Result<Vec<_>>>()
    });
    let udp = udp.as_mut().expect("UDP sockets");
    for round in 0..2 {
        for (flow, rs) in udp.iter_mut().zip(&predicted) {
            let answer = flow
                .exchange()
                .unwrap_or_else(|e| panic!("round {round}: {e:#}\nlisting: {}", agent.list().0));
            assert_eq!(&answer, rs, "round {round}: UDP {}", flow.src());
        }
    }
    let frames = capture.stop();
    let servers: BTreeSet<&String> = predicted.iter().collect();
    assert_eq!(servers.len(), 2, "both servers get flows: {servers:?}");
    let tunnelled: usize = tunnel_packets(&topo, &frames, TunTopology::VIP)
        .values()
        .sum();
    assert!(
        tunnelled >= 2 * CONNS,
        "{tunnelled} datagrams tunnelled for {CONNS} flows x 2"
    );
    assert!(replies_routed(&frames) >= 2 * CONNS, "replies not routed");

    // A datagram that just fits the tunnel, then one byte more: dropped without DF, answered
    // with "fragmentation needed" with DF.
    let (flow, owner) = (&mut udp[0], &predicted[0]);
    let answer = flow.exchange_sized(UDP_PAYLOAD_FITS);
    assert_eq!(answer.unwrap(), *owner, "{UDP_PAYLOAD_FITS} bytes fit");
    // [drop_too_big, tx_frag_needed] each oversized datagram must add, with and without DF.
    for (df, expected) in [(false, [1, 0]), (true, [0, 1])] {
        let counters = || {
            let listing = agent.list();
            ["drop_too_big", "tx_frag_needed"].map(|name| listing.reason(name))
        };
        let before = counters();
        flow.set_dont_fragment(df).unwrap();
        let too_big = flow.exchange_sized(UDP_PAYLOAD_FITS + 1);
        assert!(too_big.is_err(), "answered (DF {df}): {too_big:?}");
        let after = counters();
        assert_eq!(
            [after[0] - before[0], after[1] - before[1]],
            expected,
            "[drop_too_big, tx_frag_needed] for one datagram too big, DF {df}: {}",
            agent.list().0
        );
    }
    let route = topo.client().ns().ip(&["route", "get", &vip]).unwrap();
    assert!(route.contains(&format!("mtu {TUNNEL_MTU}")), "{route}");
    let answer = flow.exchange_sized(UDP_PAYLOAD_FITS);
    assert_eq!(
        answer.unwrap(),
        *owner,
        "{UDP_PAYLOAD_FITS} bytes still fit"
    );
}

/// The TUN topology (real servers running `lb-testsrv` as `serve`), an agent on the director
/// started with `agent_args`, and the service `proto` (`-t` or `-u`) VIP:80 with scheduler mh and
/// the real servers behind the router, rs1 and rs2, tunnelled. None (skipped) without root.
fn setup(serve: Serve, proto: &str, agent_args: &[&str]) -> Option<(TunTopology, Agent)> {
    if !require_root() {
        return None;
    }
    let topo = TunTopology::new(serve).expect("cannot build the TUN topology");
    let agent = Agent::start(topo.director().ns(), "eth0", agent_args).expect("agent");
    let svc = TunTopology::service().to_string();
    agent.cli_ok(&["service", "add", proto, &svc, "-s", "mh"]);
    for rs in topo.remote_reals() {
        add_real(&agent, proto, rs, "-i");
    }
    Some((topo, agent))
}

/// `xdplb real add <proto> VIP:80 -r <rs> <method>`.
fn add_real(agent: &Agent, proto: &str, rs: &Host, method: &str) {
    let svc = TunTopology::service().to_string();
    let rip = rs.addr().to_string();
    agent.cli_ok(&["real", "add", proto, &svc, "-r", &rip, method]);
}

/// `n` flows: every client source address in turn, ports from `first_port` on, one each.
fn flows(n: usize, first_port: u16) -> Vec<SocketAddrV4> {
    let sources = TunTopology::client_sources();
    (0..n)
        .map(|i| SocketAddrV4::new(sources[i % sources.len()], first_port + i as u16))
        .collect()
}

/// The names of the real servers `simulate` predicts for new flows from `flows`.
fn simulate(topo: &TunTopology, agent: &Agent, proto: &str, flows: &[SocketAddrV4]) -> Vec<String> {
    let svc = TunTopology::service().to_string();
    let reals = agent.simulate(proto, &svc, flows).into_iter();
    reals
        .map(|rip| match topo.real_at(*rip.ip()) {
            Some(rs) => rs.name().to_owned(),
            None => panic!("simulate names {rip}, not a real server"),
        })
        .collect()
}

/// One TCP connection from each of `flows` to the VIP, each answered by the real server
/// `simulate` predicted; stops at the first failure. Returns how many each server answered.
fn connect_all(
    topo: &TunTopology,
    agent: &Agent,
    flows: &[SocketAddrV4],
) -> BTreeMap<String, usize> {
    let predicted = simulate(topo, agent, "-t", flows);
    let service = TunTopology::service();
    let answers = topo.client().ns().run_in(|| {
        let fetch = |&src| fetch_from(src, service);
        flows.iter().map(fetch).collect::<anyhow::Result<Vec<_>>>()
    });
    let answers =
        answers.unwrap_or_else(|e| panic!("connection failed: {e:#}\nlisting: {}", agent.list().0));
    let mut landed = BTreeMap::new();
    for ((flow, answer), rs) in flows.iter().zip(answers).zip(predicted) {
        assert_eq!(answer, rs, "{flow} -> {service}");
        *landed.entry(rs).or_default() += 1;
    }
    landed
}

/// [`CONNS`] TCP connections from fresh flows (ports from `first_port` on), while capturing on
/// the router's interface in the director's segment. Each is answered by the server `simulate`
/// predicted, and `servers` all answer; the director forwarded the client's packets
/// ([`director_forwarded`]); those for servers behind the router went through tunnels
/// ([`tunnel_packets`]), those for servers in the director's segment did not; the router
/// forwarded the tunnelled servers' replies to the client.
fn connection_round(topo: &TunTopology, agent: &Agent, first_port: u16, servers: &[Host]) {
    let capture = Capture::start(topo.router().ns(), &TunTopology::router_iface(0)).unwrap();
    let before = agent.list();
    let landed = connect_all(topo, agent, &flows(CONNS, first_port));
    let after = agent.list();
    let frames = capture.stop();
    let names: BTreeSet<&str> = servers.iter().map(Host::name).collect();
    assert_eq!(
        landed.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        names,
        "the servers that answer {CONNS} new connections: {landed:?}"
    );
    director_forwarded(&before, &after, CONNS);

    let tunnelled = tunnel_packets(topo, &frames, TunTopology::DIRECTOR_ADDR);
    let mut remote_conns = 0;
    for rs in servers {
        let packets = tunnelled.get(&rs.addr()).copied().unwrap_or(0);
        let conns = landed[rs.name()];
        if topo.segment_of(rs) == 0 {
            assert_eq!(
                packets,
                0,
                "{} in the director's segment got tunnelled",
                rs.name()
            );
            continue;
        }
        remote_conns += conns;
        let needed = PACKETS_PER_CONN as usize * conns;
        assert!(
            packets >= needed,
            "{packets} packets tunnelled to {} for {conns} connections",
            rs.name()
        );
    }
    let routed = replies_routed(&frames);
    assert!(
        routed >= REPLIES_PER_CONN * remote_conns,
        "the router forwarded {routed} replies from the VIP to the clients for {remote_conns} \
         connections to servers behind it"
    );
}

/// What the director's counters say about `conns` connections: it received at least their
/// client-to-VIP packets, and hardly anything else (replies that crossed it would count as "not
/// for a service": their source is the VIP, not their destination).
fn director_forwarded(before: &Listing, after: &Listing, conns: usize) {
    let svc = TunTopology::service().to_string();
    let delta = |stat| after.service_stat(&svc, stat) - before.service_stat(&svc, stat);
    assert!(
        delta("packets") >= PACKETS_PER_CONN * conns as u64,
        "the director forwarded {} packets for {conns} connections: {}",
        delta("packets"),
        after.0
    );
    let no_service = after.reason("pass_no_service") - before.reason("pass_no_service");
    assert!(
        no_service < conns as u64 / 10,
        "the director saw {no_service} packets not for a service during {conns} connections: {}",
        after.0
    );
}

/// The IPIP packets the router received from the director in `frames` (captured on its
/// interface in the director's segment), by outer destination. Checks each as LVS/TUN wants it:
/// outer source `tunnel_src`, TTL 64, DF as the inner packet's, the inner packet from a client
/// to the VIP, the outer destination a real server.
fn tunnel_packets(
    topo: &TunTopology,
    frames: &[Frame],
    tunnel_src: Ipv4Addr,
) -> BTreeMap<Ipv4Addr, usize> {
    let mut per_real = BTreeMap::new();
    let clients: BTreeSet<Ipv4Addr> = TunTopology::client_sources().into_iter().collect();
    for frame in frames.iter().filter(|f| !f.outgoing) {
        let Some(outer) = frame.ipv4() else {
            continue;
        };
        let Some(inner) = outer.inner() else {
            continue;
        };
        let what = format!("IPIP {outer:?} carrying {inner:?}");
        assert_eq!(outer.src, tunnel_src, "tunnel source: {what}");
        assert!(
            topo.real_at(outer.dst).is_some(),
            "to a real server: {what}"
        );
        assert_eq!(outer.ttl, 64, "{what}");
        assert_eq!(
            outer.df, inner.df,
            "DF copied from the inner header: {what}"
        );
        assert_eq!(
            usize::from(outer.total_len),
            usize::from(inner.total_len) + 20,
            "{what}"
        );
        assert_eq!(inner.dst, TunTopology::VIP, "{what}");
        assert!(clients.contains(&inner.src), "from a client: {what}");
        *per_real.entry(outer.dst).or_default() += 1;
    }
    per_real
}

/// How many packets from the VIP (real servers' replies) the router sent into the director's
/// segment, in `frames` captured there.
fn replies_routed(frames: &[Frame]) -> usize {
    let from_vip = |f: &&Frame| f.ipv4().is_some_and(|ip| ip.src == TunTopology::VIP);
    frames
        .iter()
        .filter(|f| f.outgoing)
        .filter(from_vip)
        .count()
}
