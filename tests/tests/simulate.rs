//! `xdplb simulate` answers "which real server would this flow hit?" from the agent's state with
//! the same lb-common code the datapath runs: 10,000 random flows through the XDP program
//! (BPF_PROG_TEST_RUN, tables built in this process) and through `simulate` (tables built by a
//! separate agent configured through the CLI) must agree on every one, LVS/NAT real servers'
//! ports included.

use std::io::Write as _;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use lb_common::rng::XorShift64;
use lb_tests::agent::xdplb_bin;
use lb_tests::fixture::{random_client, real_mac, Fixture};
use lb_tests::netns::veth;
use lb_tests::{names, require_root, Agent, Netns};
use lb_user::{
    packet::{FrameSpec, TCP_SYN},
    state::{Forward, Hash, Mac, Protocol, RealSpec, Scheduler, SchedulerSpec, ServiceAddr},
};

const WEIGHTS: [(u8, u32); 4] = [(11, 1), (12, 2), (13, 3), (14, 0)];

fn mac_arg(n: u8) -> String {
    let m = real_mac(n);
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

/// `xdplb simulate` over `flows`, one "SRC:PORT" per stdin line; the answers in order.
fn simulate(agent: &Agent, service: &str, flows: &[(Ipv4Addr, u16)]) -> Vec<String> {
    let mut child = Command::new(xdplb_bin())
        .arg("--socket")
        .arg(agent.socket())
        .args(["simulate", "-t", service, "--from", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run xdplb simulate");
    let input: String = flows.iter().map(|(a, p)| format!("{a}:{p}\n")).collect();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "simulate failed");
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<String> = text
        .lines()
        .map(|l| l.split_whitespace().nth(1).unwrap().to_owned())
        .collect();
    assert_eq!(lines.len(), flows.len());
    lines
}

#[test]
fn simulate_agrees_with_the_datapath_on_10000_flows() {
    if !require_root() {
        return;
    }
    // An agent needs an interface: the director's end of a veth pair, real servers on-link.
    let prefix = names::unique_prefix();
    let director = Netns::new(format!("{prefix}-director")).unwrap();
    let peer = Netns::new(format!("{prefix}-peer")).unwrap();
    veth(&director, "eth0", &peer, "eth0").unwrap();
    director
        .ip(&["addr", "add", "10.0.0.1/24", "dev", "eth0"])
        .unwrap();
    let agent = Agent::start(&director, "eth0", &["--conn-max", "1024"]).unwrap();

    // LVS/NAT real servers route replies through the director: the agent wants forwarding.
    director.sysctl("net.ipv4.ip_forward", "1").unwrap();
    let mh = SchedulerSpec {
        scheduler: Some(Scheduler::Mh),
        ..Default::default()
    };
    // (service, scheduler, LVS/NAT: each real server on port 8000 + n instead of the service's)
    let services = [
        ("10.0.0.100:80", mh, false),
        (
            "10.0.0.100:443",
            SchedulerSpec {
                scheduler: Some(Scheduler::Mh),
                mh_size: Some(4093),
                hash: Some(Hash::Src),
                ..Default::default()
            },
            false,
        ),
        (
            "10.0.0.100:8080",
            SchedulerSpec {
                scheduler: Some(Scheduler::Sh),
                ..Default::default()
            },
            false,
        ),
        ("10.0.0.100:81", mh, true),
    ];
    let real_port = |n: u8, service_port: u16, masq: bool| {
        if masq {
            8000 + n as u16
        } else {
            service_port
        }
    };
    let mut fx = Fixture::new();
    for (addr, spec, masq) in &services {
        let mut args = vec!["service", "add", "-t", addr];
        let size = spec.mh_size.map(|s| s.to_string());
        let sched = spec.scheduler.unwrap().to_string();
        args.extend(["-s", &sched]);
        if let Some(size) = &size {
            args.extend(["--mh-size", size]);
        }
        if spec.hash == Some(Hash::Src) {
            args.extend(["--hash", "src"]);
        }
        agent.cli_ok(&args);
        let svc: std::net::SocketAddrV4 = addr.parse().unwrap();
        let svc = ServiceAddr {
            protocol: Protocol::Tcp,
            vip: (*svc.ip()).into(),
            port: svc.port(),
        };
        fx.add_service(svc, *spec);
        for (n, w) in WEIGHTS {
            let port = real_port(n, svc.port, *masq);
            let (rip, weight, mac) = (format!("10.0.0.{n}:{port}"), w.to_string(), mac_arg(n));
            let mut args = vec![
                "real", "add", "-t", addr, "-r", &rip, "-w", &weight, "--mac", &mac,
            ];
            if *masq {
                args.push("-m");
            }
            agent.cli_ok(&args);
            fx.add_real_spec(
                svc,
                RealSpec {
                    addr: Some(Ipv4Addr::new(10, 0, 0, n).into()),
                    port: Some(port),
                    weight: Some(w),
                    forward: Some(if *masq { Forward::Masq } else { Forward::Route }),
                    mac: Some(Mac(real_mac(n))),
                    ..Default::default()
                },
            );
        }
    }

    let mut rng = XorShift64::new(7);
    for (addr, _, masq) in &services {
        let svc: std::net::SocketAddrV4 = addr.parse().unwrap();
        let flows: Vec<(Ipv4Addr, u16)> = (0..10_000)
            .map(|_| (random_client(&mut rng), (rng.next() as u16).max(1)))
            .collect();
        let predicted = simulate(&agent, addr, &flows);
        for ((src, sport), want) in flows.iter().zip(&predicted) {
            let spec = FrameSpec {
                src: *src,
                sport: *sport,
                dport: svc.port(),
                tcp_flags: TCP_SYN,
                ..Default::default()
            };
            let real = fx.send(&spec).expect("forwarded");
            assert_eq!(
                &format!("10.0.0.{real}:{}", real_port(real, svc.port(), *masq)),
                want,
                "flow {src}:{sport} to {addr}"
            );
        }
        let weight_zero = predicted
            .iter()
            .filter(|r| r.starts_with("10.0.0.14:"))
            .count();
        assert_eq!(weight_zero, 0, "weight 0 gets no new flows");
    }
}
