//! `xdplb import keepalived`: the distribution's keepalived accepts the fixture
//! (tests/data/keepalived-lvs.conf, written from keepalived.conf(5)); the import turns it into
//! exactly the services, real servers, schedulers, persistence and checks it describes, and says
//! on stderr, each on its line, what it does not carry over; an agent in the LVS/DR topology
//! loads the result and forwards by it; and what cannot be converted (NAT, fwmark, a malformed
//! file) exits non-zero with one line per problem and prints no configuration.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use lb_tests::agent::xdplb_bin;
use lb_tests::client::fetch;
use lb_tests::{require_program, require_root, Agent, DrTopology};
use lb_user::config::{Config, Source};
use lb_user::health::{Check, HealthCheck};
use lb_user::state::{Forward, Hash, Protocol, Scheduler};

/// The fixture, relative to the tests crate (the directory the import runs in, so that the
/// report names it this way).
const FIXTURE: &str = "data/keepalived-lvs.conf";
const INCLUDED: &str = "data/keepalived-lvs.d/dns.conf";

fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `xdplb import keepalived <args>`, run in `dir`.
fn import(dir: &Path, args: &[&str]) -> Output {
    Command::new(xdplb_bin())
        .current_dir(dir)
        .args(["import", "keepalived"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("cannot run xdplb")
}

/// The fixture converted: the configuration, read back by xdplb's own parser, and stderr.
fn converted_fixture() -> (String, Config, String) {
    let out = import(crate_dir(), &[FIXTURE]);
    let (stdout, stderr) = (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    );
    assert!(out.status.success(), "import failed: {stderr}");
    let config = Source {
        path: PathBuf::from("converted.toml"),
        text: stdout.clone(),
    }
    .parse()
    .unwrap_or_else(|e| panic!("the output does not parse: {e:#}\n{stdout}"));
    (stdout, config, stderr)
}

/// The number of the first line of `file` (under the tests crate) holding `markers[last]` after
/// lines holding the markers before it, in order.
fn line_of(file: &str, markers: &[&str]) -> usize {
    let text = std::fs::read_to_string(crate_dir().join(file)).unwrap();
    let mut from = 0;
    for marker in markers {
        from += text
            .lines()
            .skip(from)
            .position(|l| l.contains(marker))
            .unwrap_or_else(|| panic!("{file} has no line with {marker:?} after line {from}"))
            + 1;
    }
    from
}

#[test]
fn keepalived_accepts_the_fixture() {
    if !require_program("keepalived", "keepalived") {
        return;
    }
    // Config test mode; -e: a missing (included) file is an error too. keepalived exits 0 and
    // says nothing for a clean configuration, and reports every doubt on stderr.
    let out = Command::new("keepalived")
        .current_dir(crate_dir())
        .args(["-t", "-e", "-f", FIXTURE])
        .stdin(Stdio::null())
        .output()
        .expect("cannot run keepalived");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "keepalived -t refuses {FIXTURE} ({}): {stderr}",
        out.status
    );
    // And it does read it: a broken copy fails.
    let dir = TempDir::new("keepalived-t");
    let broken = std::fs::read_to_string(crate_dir().join(FIXTURE))
        .unwrap()
        .replace("lb_algo wlc", "lb_algo nosuch");
    let path = dir.0.join("broken.conf");
    std::fs::write(&path, broken).unwrap();
    let out = Command::new("keepalived")
        .args(["-t", "-f"])
        .arg(&path)
        .stdin(Stdio::null())
        .output()
        .expect("cannot run keepalived");
    assert!(
        !out.status.success(),
        "keepalived -t accepts lb_algo nosuch"
    );
}

/// A real server as the assertions compare it.
type RealRow = (IpAddr, u32, Forward, u32, u32, Option<HealthCheck>);

fn tcp(port: Option<u16>, interval_ms: u64, timeout_ms: u64, fall: u32) -> Option<HealthCheck> {
    checked(Check::Tcp, port, interval_ms, timeout_ms, fall)
}

/// A check as keepalived's are carried over: rise 1.
fn checked(
    check: Check,
    port: Option<u16>,
    interval_ms: u64,
    timeout_ms: u64,
    fall: u32,
) -> Option<HealthCheck> {
    Some(HealthCheck {
        check,
        port,
        interval_ms,
        timeout_ms,
        rise: 1,
        fall,
    })
}

fn rs(i: u8) -> IpAddr {
    Ipv4Addr::new(10, 0, 0, 10 + i).into()
}

#[test]
fn the_fixture_converts_to_the_services_it_describes() {
    let (_, config, stderr) = converted_fixture();
    assert_eq!(config.interface, "eth0", "from the vrrp_instance");
    let services: Vec<_> = config
        .services
        .iter()
        .map(|s| {
            let s = s.get_ref();
            let reals: Vec<RealRow> = s
                .reals
                .iter()
                .map(|r| {
                    let r = r.get_ref();
                    assert_eq!((r.port, r.mac), (None, None), "{r:?}");
                    (
                        r.address,
                        r.weight,
                        r.forward,
                        r.u_threshold,
                        r.l_threshold,
                        r.check.clone(),
                    )
                })
                .collect();
            (
                (s.protocol, s.vip, s.port),
                (s.scheduler, s.hash, s.persistent, s.netmask),
                reals,
            )
        })
        .collect();
    let vip: IpAddr = Ipv4Addr::new(10, 0, 0, 100).into();
    let route = Forward::Route;
    let expected = vec![
        // Every port, persistent per /24, sh; the second real server's check: delay_loop 3 s,
        // but keepalived's default connect_timeout of 5 s makes the interval 5 s.
        (
            (Protocol::Tcp, vip, 0),
            (
                Scheduler::Sh,
                None,
                Some(600),
                Some(lb_user::state::Netmask::Dotted(Ipv4Addr::new(
                    255, 255, 255, 0,
                ))),
            ),
            vec![
                (rs(1), 1, route, 0, 0, tcp(Some(80), 60_000, 5_000, 2)),
                (rs(2), 2, route, 0, 0, tcp(Some(80), 5_000, 5_000, 2)),
            ],
        ),
        // Web: wlc; delay_loop 2, connect_timeout 1, retry 2 from the virtual server, the HTTP
        // check's own connect_timeout 0.5 and retry 3; MISC_CHECK becomes a script check.
        (
            (Protocol::Tcp, vip, 80),
            (Scheduler::Wlc, None, None, None),
            vec![
                (rs(1), 3, route, 1000, 800, tcp(None, 2_000, 1_000, 3)),
                (
                    rs(2),
                    2,
                    route,
                    0,
                    0,
                    Some(HealthCheck {
                        check: Check::Http {
                            path: "/healthz".into(),
                            status: 200,
                            body: None,
                        },
                        port: None,
                        interval_ms: 2_000,
                        timeout_ms: 500,
                        rise: 1,
                        fall: 4,
                    }),
                ),
                (
                    rs(3),
                    1,
                    route,
                    0,
                    0,
                    checked(
                        Check::Script {
                            command: "/bin/true".into(),
                        },
                        None,
                        2_000,
                        1_000,
                        3,
                    ),
                ),
            ],
        ),
        // HTTPS: mh with mh-port hashes the flow; TUN, one real server by DR; SSL_GET becomes
        // an https check that does not verify the certificate.
        (
            (Protocol::Tcp, vip, 443),
            (Scheduler::Mh, Some(Hash::Flow), None, None),
            vec![
                (
                    rs(1),
                    1,
                    Forward::Tunnel,
                    0,
                    0,
                    checked(
                        Check::Https {
                            path: "/".into(),
                            status: 200,
                            body: None,
                            verify: false,
                            sni: None,
                            ca_file: None,
                        },
                        Some(80),
                        60_000,
                        5_000,
                        2,
                    ),
                ),
                (rs(3), 2, route, 0, 0, tcp(Some(80), 60_000, 5_000, 2)),
            ],
        ),
        // DNS, from the included file: rr, persistent for keepalived's default 360 s.
        (
            (Protocol::Udp, vip, 53),
            (Scheduler::Rr, None, Some(360), None),
            vec![(rs(2), 1, route, 0, 0, None), (rs(3), 0, route, 0, 0, None)],
        ),
    ];
    assert_eq!(services, expected);

    // What is not carried over, each on its line, in file order.
    let at = |file: &str, markers: &[&str], note: &str| {
        format!("{file}:{}: note: {note}", line_of(file, markers))
    };
    let vrrp =
        "belongs to keepalived itself: skipped (keep running keepalived for VRRP: see docs/ha.md)";
    let uninhibited = "real servers without inhibit_on_failure: keepalived removes a failed one, and IPVS then drops its established connections; xdplb keeps those going and gives it no new ones, as inhibit_on_failure does";
    let quorum = "xdplb has no quorum: a service goes on with whichever real servers are up";
    let f = FIXTURE;
    let expected = [
        at(f, &["global_defs {"], &format!("global_defs: {vrrp}")),
        at(f, &["vrrp_instance VI_1 {"], &format!("vrrp_instance VI_1: {vrrp}")),
        at(f, &["vrrp_instance", "interface eth0"], "interface eth0: the director's interface, taken from the vrrp_instance (--interface chooses another)"),
        at(f, &["delay_before_retry 1"], "delay_before_retry 1 s: xdplb repeats a failed probe after its check interval (2 s), not sooner"),
        at(f, &["sorry_server"], "sorry_server 10.0.0.20 80: xdplb has no sorry server: with every real server down, new connections are dropped"),
        at(f, &["digest"], "digest 9b3a0c85a887a256d6939da88aabd8cd: xdplb does not compare digests: the check looks at the status code"),
        at(f, &["virtualhost"], "virtualhost www.example.org: xdplb's HTTP check sends the real server's address as Host"),
        at(f, &["notify_down"], "notify_down /bin/true: xdplb runs no scripts: it logs the change, and exports it as a metric"),
        at(f, &["virtual_server 10.0.0.100 0 {"], &format!("virtual_server 10.0.0.100 0: {uninhibited}")),
        at(f, &["real_server 10.0.0.12 0", "TCP_CHECK"], "connect_timeout (keepalived's default 5 s) is longer than delay_loop 3 s: xdplb's check interval becomes 5 s"),
        at(f, &["virtual_server 10.0.0.100 443 {"], &format!("virtual_server 10.0.0.100 443: {uninhibited}")),
        at(f, &["quorum 2"], &format!("quorum 2: {quorum}")),
        at(f, &["hysteresis 1"], &format!("hysteresis 1: {quorum}")),
        at(f, &["    alpha"], "alpha: xdplb starts real servers up (down after `fall` failed probes); keepalived's alpha starts them down until a check passes"),
        at(f, &["SSL_GET"], "SSL_GET: an https check that does not verify the certificate (verify = false), as keepalived checks; set verify and ca_file to verify it"),
        at(f, &["SSL_GET", "url {"], "url without status_code: keepalived accepts 200-299, xdplb's check wants 200"),
        at(INCLUDED, &["DNS_CHECK"], "DNS_CHECK: xdplb has no such check: not carried over"),
    ];
    assert_eq!(stderr.lines().collect::<Vec<_>>(), expected);
}

#[test]
fn the_converted_fixture_runs_in_an_agent() {
    if !require_root() {
        return;
    }
    let (text, config, _) = converted_fixture();
    let topo = DrTopology::new(3).expect("cannot build the DR topology");
    let agent =
        Agent::start_with_config(topo.director().ns(), &text).expect("cannot start the agent");
    let listing = agent.list_config();
    let mut running: Vec<(String, String, String, Vec<String>)> = listing
        .services()
        .iter()
        .map(|s| {
            let reals = s["reals"]
                .as_array()
                .expect("reals")
                .iter()
                .map(|r| format!("{} {} {}", r["address"], r["forward"], r["weight"]))
                .collect();
            (
                s["protocol"].as_str().unwrap().to_owned(),
                s["address"].as_str().unwrap().to_owned(),
                s["scheduler"].as_str().unwrap().to_owned(),
                reals,
            )
        })
        .collect();
    running.sort();
    let mut wanted: Vec<(String, String, String, Vec<String>)> = config
        .services
        .iter()
        .map(|s| {
            let s = s.get_ref();
            let reals = s
                .reals
                .iter()
                .map(|r| {
                    let r = r.get_ref();
                    let forward = serde_json::to_value(r.forward).unwrap();
                    format!("\"{}:{}\" {forward} {}", r.address, s.port, r.weight)
                })
                .collect();
            (
                serde_json::to_value(s.protocol)
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_owned(),
                format!("{}:{}", s.vip, s.port),
                s.scheduler.to_string(),
                reals,
            )
        })
        .collect();
    wanted.sort();
    assert_eq!(running, wanted, "{}", listing.0);
    assert_eq!(running.len(), 4);

    // And it forwards by it: the web service answers from a real server.
    let answer = topo
        .client()
        .ns()
        .run_in(|| fetch(DrTopology::CLIENT_ADDR, DrTopology::service()))
        .unwrap_or_else(|e| panic!("no answer through the VIP: {e:#}\n{}", agent.log()));
    assert!(
        ["rs1", "rs2", "rs3"].contains(&answer.as_str()),
        "answered {answer:?}"
    );
}

/// A directory of its own in the system's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("xdplb-{what}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn what_cannot_be_converted_exits_non_zero_and_prints_nothing() {
    let dir = TempDir::new("import-errors");
    std::fs::write(
        dir.0.join("keepalived.conf"),
        "\
virtual_server 10.0.0.100 80 {
    lb_algo rr
    lb_kind NAT
    protocol TCP
    real_server 10.0.0.11 80 {
    }
}
virtual_server fwmark 1 {
    lb_kind DR
    real_server 10.0.0.11 80 {
    }
}
virtual_server 10.0.0.100 443 {
    lb_kind DR
    protocol TCP
    quorum 2
    real_server 10.0.0.11 443 {
        weight 70000
    }
",
    )
    .unwrap();
    let cases: [(&[&str], &[&str]); 2] = [
        (
            &["keepalived.conf", "--interface", "eth0"],
            &[
                "keepalived.conf:8: error: virtual_server fwmark 1: xdplb has no firewall marks (it matches VIP, port and protocol in XDP); for every port of a VIP use `virtual_server VIP 0` with persistence_timeout",
                "keepalived.conf:13: error: '{' is never closed",
                "keepalived.conf:18: error: weight: '70000' is out of range 0..=65535",
                "xdplb: keepalived.conf: nothing converted: 3 error(s)",
            ],
        ),
        (
            &["nosuch.conf", "--interface", "eth0"],
            &[
                "nosuch.conf: error: cannot read nosuch.conf: No such file or directory (os error 2)",
                "xdplb: nosuch.conf: nothing converted: 1 error(s)",
            ],
        ),
    ];
    for (args, lines) in cases {
        let out = import(&dir.0, args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "", "{args:?}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.lines().collect::<Vec<_>>(), lines, "{args:?}");
    }
}
