//! `xdplb pktgen` and its counting sink: the generator program's frames (BPF_PROG_TEST_RUN),
//! live frames across a veth into a sink, and through the director to three real servers whose
//! sinks agree with the director's per-real counters.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::Output;
use std::time::Duration;

use lb_tests::agent::xdplb_bin;
use lb_tests::netns::veth;
use lb_tests::{names, require_root, Agent, DrTopology, Netns};
use lb_user::net::Interface;
use lb_user::packet::{TCP_ACK, TCP_SYN};
use lb_user::pktgen::{
    allowed_cpus, checksums_valid, pin_to_cpu, source_of, walk, Generator, Sink, Traffic,
};
use lb_user::state::Protocol;
use serde_json::Value;

const XDP_TX: u32 = 3;

/// A traffic description for the program alone (no interface is used in plain test mode).
fn traffic(protocol: Protocol, src: &str, sport: &str, size: usize) -> Traffic {
    let lo = Interface {
        index: 1,
        name: "lo".into(),
        mac: [2, 0, 0, 0, 0, 1],
        mtu: 1500,
    };
    let dst = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 100), 80);
    Traffic {
        protocol,
        sport: sport.parse().unwrap(),
        size,
        ..Traffic::new(&lo, [2, 0, 0, 0, 0, 2], dst, src.parse().unwrap())
    }
}

#[test]
fn generator_frames_vary_within_the_ranges_with_valid_checksums() {
    if !require_root() {
        return;
    }
    // The walk is per CPU: stay on one, so consecutive runs continue one walk.
    let cpu = allowed_cpus().unwrap()[0];
    std::thread::spawn(move || {
        pin_to_cpu(cpu).unwrap();
        for (protocol, flags, src, sport, size) in [
            (Protocol::Tcp, TCP_SYN, "10.1.0.0/30", "1000-1002", 60),
            (Protocol::Tcp, TCP_ACK, "10.3.0.0/30", "2000-2002", 60),
            (Protocol::Udp, 0, "10.1.0.1-10.1.0.5", "5000-5003", 42),
            (Protocol::Udp, 0, "10.2.0.0/16", "1024-65535", 1000),
        ] {
            let t = Traffic {
                tcp_flags: flags,
                ..traffic(protocol, src, sport, size)
            };
            let generator = Generator::new(&t).unwrap();
            let n = 40;
            let expected = walk(generator.config(), 0, n);
            let mut seen = Vec::new();
            for i in 0..n {
                // Always the same input (the template), as live frames hand it out.
                let (verdict, out) = generator.run_once().unwrap();
                assert_eq!(verdict, XDP_TX, "{src} frame {i}");
                assert_eq!(out.len(), size);
                assert!(
                    checksums_valid(&out),
                    "{src} frame {i}: bad checksum {out:02x?}"
                );
                // Only the source address, port and checksums change.
                let template = generator.template();
                assert_eq!(
                    out[..26],
                    template[..24]
                        .iter()
                        .chain(&out[24..26])
                        .copied()
                        .collect::<Vec<_>>()[..]
                );
                assert_eq!(out[30..34], template[30..34]);
                if protocol == Protocol::Tcp {
                    assert_eq!(out[47], flags, "{src} frame {i}: the TCP flags");
                }
                let (a, p) = source_of(&out);
                assert!(
                    t.src.contains(a) && t.sport.contains(p),
                    "{a}:{p} outside {src} {sport}"
                );
                seen.push((a, p));
            }
            assert_eq!(
                seen, expected,
                "the program walks the flows as lb_common says"
            );
            let distinct: HashSet<_> = seen.iter().collect();
            assert_eq!(
                distinct.len() as u64,
                (n as u64).min(t.src.len() * t.sport.len())
            );
            assert!(
                seen.windows(2).all(|w| w[0].0 != w[1].0),
                "{src}: addresses vary"
            );
        }
    })
    .join()
    .unwrap();
}

/// `xdplb <args>` inside `ns`.
fn xdplb(ns: &Netns, args: &[&str]) -> Output {
    ns.command(xdplb_bin())
        .args(args)
        .output()
        .expect("cannot run xdplb")
}

/// `xdplb pktgen <args> --json` inside `ns` (`args` split at whitespace), which must succeed:
/// its summary.
fn pktgen_json(ns: &Netns, args: &str) -> Value {
    let mut all = vec!["pktgen"];
    all.extend(args.split_whitespace());
    all.push("--json");
    let out = xdplb(ns, &all);
    assert!(
        out.status.success(),
        "xdplb {} failed: {}",
        all.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

/// A generator namespace and a receiver namespace joined by a veth: gen veth0 10.9.0.1/24,
/// rx veth1 10.9.0.2/24.
struct Pair {
    gen: Netns,
    rx: Netns,
}

impl Pair {
    fn new() -> Self {
        names::cleanup_stale();
        let prefix = names::unique_prefix();
        let gen = Netns::new(format!("{prefix}-pggen")).unwrap();
        let rx = Netns::new(format!("{prefix}-pgrx")).unwrap();
        for ns in [&gen, &rx] {
            ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1").unwrap();
            ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")
                .unwrap();
        }
        veth(&gen, "veth0", &rx, "veth1").unwrap();
        gen.ip(&["addr", "add", "10.9.0.1/24", "dev", "veth0"])
            .unwrap();
        rx.ip(&["addr", "add", "10.9.0.2/24", "dev", "veth1"])
            .unwrap();
        Self { gen, rx }
    }
}

#[test]
fn pktgen_into_a_sink_across_a_veth() {
    if !require_root() {
        return;
    }
    let pair = Pair::new();
    // Resolve the receiver's MAC (ARP) while nothing drops its answer yet: pktgen then finds it
    // in the neighbour table, the default when no --dst-mac is given.
    let dst = SocketAddrV4::new(Ipv4Addr::new(10, 9, 0, 2), 80);
    let resolved = pair
        .gen
        .run_in(|| Traffic::for_interface("veth0", dst))
        .unwrap();
    let index = pair.rx.ifindex("veth1").unwrap();
    let sink = pair.rx.run_in(|| Sink::attach(index)).unwrap();
    assert_eq!(sink.count(), (0, 0));

    const TO_RX: &str = "--iface veth0 --dst 10.9.0.2:80 --src 10.1.0.0/16";
    let summary = pktgen_json(
        &pair.gen,
        &format!("{TO_RX} --sport 1024-65535 --count 100000"),
    );
    assert_eq!(summary["packets"], 100_000, "{summary}");
    assert_eq!(summary["bytes"], 100_000 * 60, "{summary}");
    assert_eq!(summary["engine"], "xdp");
    assert!(summary["pps"].as_f64().unwrap() > 0.0 && summary["bps"].as_f64().unwrap() > 0.0);
    let (packets, bytes) = sink
        .settle(Duration::from_millis(100), Duration::from_secs(3))
        .unwrap();
    assert!(
        (95_000..=100_000).contains(&packets),
        "the sink counted {packets} of 100000 frames"
    );
    assert_eq!(bytes, packets * 60);
    eprintln!(
        "pktgen -> sink: {packets} of 100000 at {:.2} Mpps (dst MAC {:02x?})",
        summary["pps"].as_f64().unwrap() / 1e6,
        resolved.dst_mac
    );

    // --duration and --rate: never more than rate x duration (less when the CPU is shared with
    // the other tests), all of it counted.
    let mut sink = sink;
    sink.reset().unwrap();
    let paced = pktgen_json(
        &pair.gen,
        &format!("{TO_RX} --udp --duration 0.5 --rate 40000"),
    );
    let sent = paced["packets"].as_u64().unwrap();
    assert!((8_000..=20_100).contains(&sent), "{paced}");
    let (got, _) = sink
        .settle(Duration::from_millis(100), Duration::from_secs(3))
        .unwrap();
    assert!((sent * 95 / 100..=sent).contains(&got), "{got} of {sent}");
}

#[test]
fn bad_input_fails_with_one_line() {
    if !require_root() {
        return;
    }
    let pair = Pair::new();
    let base = [
        "pktgen",
        "--iface",
        "veth0",
        "--dst",
        "10.9.0.2:80",
        "--dst-mac",
        "02:00:00:00:00:02",
    ];
    for (extra, expected) in [
        (&["--size", "40"][..], "below the 54 bytes"),
        (&["--size", "1515"], "above what veth0 carries"),
        (&["--src", "10.0.0.9-10.0.0.1"], "empty address range"),
        (&["--sport", "2000-1000"], "empty port range"),
        (&["--src", "10.1.0.5/16"], "host bits set"),
        (&["--engine", "kernel", "--udp"], "use --engine xdp"),
        (&["--cpus", "4096"], "CPU 4096 is not available"),
        (&["--udp", "--ack"], "cannot be used with"),
    ] {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        let out = xdplb(&pair.gen, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(expected), "{args:?}: {err}");
    }
    let out = xdplb(
        &pair.gen,
        &["pktgen", "--iface", "nope0", "--dst", "10.9.0.2:80"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.trim() == "xdplb: unknown interface 'nope0'",
        "{err}"
    );
}

#[test]
fn pktgen_through_the_director_matches_its_per_real_counters() {
    if !require_root() {
        return;
    }
    let topo = DrTopology::new(3).expect("cannot build the DR topology");
    let agent = Agent::start(topo.director().ns(), "eth0", &[]).expect("cannot start the agent");
    topo.configure(&agent);
    // The client sends with XDP_TX into its veth: the switch-side end needs an XDP program.
    let _client_port = topo.switch().pass_xdp(topo.client().name()).unwrap();
    // Resolve the VIP's MAC (the director's) before the sinks drop every ARP frame.
    let service = DrTopology::service();
    topo.client()
        .ns()
        .run_in(|| Traffic::for_interface("eth0", service))
        .unwrap();
    let sinks: Vec<Sink> = topo
        .reals()
        .iter()
        .map(|rs| {
            let index = rs.ns().ifindex("eth0").unwrap();
            rs.ns().run_in(|| Sink::attach(index)).unwrap()
        })
        .collect();
    let before = agent.list();

    const COUNT: u64 = 50_000;
    let sources = format!(
        "{}-{}",
        DrTopology::client_sources()[0],
        DrTopology::client_sources().last().unwrap()
    );
    let summary = pktgen_json(
        topo.client().ns(),
        &format!("--iface eth0 --dst {service} --src {sources} --count {COUNT} --rate 50000"),
    );
    assert_eq!(summary["packets"], COUNT, "{summary}");
    let counted: Vec<u64> = sinks
        .iter()
        .map(|s| {
            s.settle(Duration::from_millis(200), Duration::from_secs(5))
                .unwrap()
                .0
        })
        .collect();
    let after = agent.list();
    let svc = service.to_string();
    let mut total = 0;
    for (rs, got) in topo.reals().iter().zip(&counted) {
        let real = format!("{}:{}", rs.addr(), DrTopology::PORT);
        let stat =
            |l: &lb_tests::Listing| l.real(&svc, &real)["stats"]["packets"].as_u64().unwrap();
        let forwarded = stat(&after) - stat(&before);
        assert!(forwarded > 0, "{real} got nothing: {}", after.0);
        // A stray broadcast (an ARP request) may reach a sink too.
        assert!(
            (forwarded..=forwarded + 3).contains(got),
            "{real}: the director forwarded {forwarded}, its sink counted {got}"
        );
        total += forwarded;
    }
    assert!(
        (COUNT * 95 / 100..=COUNT).contains(&total),
        "the director forwarded {total} of {COUNT}: {}",
        after.0
    );
    eprintln!("through the director: {counted:?} (sum {total} of {COUNT})");

    // The same flows again, as ACKs of open connections (`--ack`): the director holds them, so
    // each goes where its SYN went.
    let acks = pktgen_json(
        topo.client().ns(),
        &format!("--iface eth0 --dst {service} --src {sources} --count {COUNT} --rate 50000 --ack"),
    );
    assert_eq!(acks["packets"], COUNT, "{acks}");
    for ((rs, sink), first) in topo.reals().iter().zip(&sinks).zip(&counted) {
        let now = sink
            .settle(Duration::from_millis(200), Duration::from_secs(5))
            .unwrap()
            .0;
        let again = now - first;
        assert!(
            (first.saturating_sub(3)..=first + 3).contains(&again),
            "{}: {first} SYNs, then {again} ACKs of the same flows",
            rs.addr()
        );
    }
}
