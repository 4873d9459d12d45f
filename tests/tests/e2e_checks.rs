//! End to end, the kinds of health check beside TCP: HTTPS against a real TLS server (openssl
//! s_server with certificates from a test CA: verified for the right name, refused for a wrong
//! name or an unknown issuer, accepted unverified), ping (a real server that stops answering ICMP
//! echo goes down, and up again), and script checks (exit status decides). Down servers get no new
//! connections.

use std::time::{Duration, Instant};

use lb_tests::scratch::Scratch;
use lb_tests::tls::Certificates;
use lb_tests::{require_program, require_root, Agent, DrTopology, FreshFlows, Proc};

const SVC: &str = "10.0.0.100:80";

/// Waits until `real` ("RIP:PORT") is `want` ("up", "down") in `list`; returns its last error.
fn wait_health(agent: &Agent, real: &str, want: &str) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let listing = agent.list_config();
        let health = listing.real(SVC, real)["health"].clone();
        if health["state"] == want {
            return health["last_error"].as_str().map(str::to_owned);
        }
        assert!(
            Instant::now() < deadline,
            "{real} is not {want} within 10 s: {health}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn https_checks_verify_the_certificate_for_its_name() {
    if !require_root() || !require_program("openssl", "openssl") {
        return;
    }
    let topo = DrTopology::new(4).expect("topology");
    let dir = Scratch::new("https-checks");
    let Certificates { ca, cert, key, .. } =
        Certificates::new(&dir.0, "www.example").expect("openssl");
    // A real TLS server on port 443 of every real server (their service stays on port 80).
    let _servers: Vec<Proc> = topo
        .reals()
        .iter()
        .map(|rs| {
            rs.ns()
                .spawn(
                    "openssl",
                    &[
                        "s_server", "-accept", "443", "-cert", &cert, "-key", &key, "-www",
                        "-quiet",
                    ],
                )
                .unwrap()
        })
        .collect();
    let real = |i: usize, check: &str| {
        format!(
            "  [[service.real]]\n  address = \"{}\"\n  check = {{ type = \"https\", port = 443, {check} }}\n",
            DrTopology::real_addr(i)
        )
    };
    let config = format!(
        "interface = \"eth0\"\n[[service]]\nprotocol = \"tcp\"\nvip = \"10.0.0.100\"\nport = 80\n\
         scheduler = \"mh\"\n{}{}{}{}",
        real(1, &format!("ca_file = \"{ca}\", sni = \"www.example\"")),
        real(2, &format!("ca_file = \"{ca}\", sni = \"other.example\"")),
        real(3, "verify = false"),
        // The system's roots do not know the test CA.
        real(4, "sni = \"www.example\""),
    );
    let agent = Agent::start_with_config(topo.director().ns(), &config).expect("agent");

    assert_eq!(wait_health(&agent, "10.0.0.11:80", "up"), None);
    let wrong_name = wait_health(&agent, "10.0.0.12:80", "down").unwrap_or_default();
    assert!(
        wrong_name.contains("certificate not valid for name")
            && wrong_name.contains("other.example"),
        "{wrong_name}"
    );
    assert_eq!(wait_health(&agent, "10.0.0.13:80", "up"), None);
    let unknown = wait_health(&agent, "10.0.0.14:80", "down").unwrap_or_default();
    assert!(unknown.contains("UnknownIssuer"), "{unknown}");

    // New connections go to the servers whose check passes only.
    let mut fresh = FreshFlows::new(21000);
    let names = topo.answered(&mut fresh, 40);
    let (rs1, rs3) = (topo.reals()[0].name(), topo.reals()[2].name());
    assert!(names.iter().all(|n| n == rs1 || n == rs3), "{names:?}");
    assert!(
        names.iter().any(|n| n == rs1) && names.iter().any(|n| n == rs3),
        "{names:?}"
    );

    // The check is as the config says, and saves back as it came.
    let saved = agent.save();
    assert!(saved.contains("type = \"https\""), "{saved}");
    assert!(saved.contains("verify = false"), "{saved}");
    assert!(saved.contains(&format!("ca_file = \"{ca}\"")), "{saved}");
}

#[test]
fn ping_checks_follow_icmp_echo() {
    if !require_root() {
        return;
    }
    let topo = DrTopology::new(2).expect("topology");
    let agent = Agent::start(topo.director().ns(), "eth0", &[]).expect("agent");
    topo.configure(&agent);
    for rip in ["10.0.0.11", "10.0.0.12"] {
        agent.set_check(SVC, rip, "ping");
    }
    // A real server that is not there at all (its MAC given, nothing answers).
    agent.cli_ok(&[
        "real",
        "add",
        "-t",
        SVC,
        "-r",
        "10.0.0.19",
        "--mac",
        "02:00:00:00:00:19",
        "--check",
        "ping",
    ]);
    assert_eq!(wait_health(&agent, "10.0.0.11:80", "up"), None);
    assert_eq!(wait_health(&agent, "10.0.0.12:80", "up"), None);
    let gone = wait_health(&agent, "10.0.0.19:80", "down").unwrap_or_default();
    assert!(gone.starts_with("timeout after"), "{gone}");

    // The second stops answering echo requests: down, and no new connections; then back.
    let rs2 = topo.reals()[1].ns();
    rs2.sysctl("net.ipv4.icmp_echo_ignore_all", "1").unwrap();
    wait_health(&agent, "10.0.0.12:80", "down");
    let mut fresh = FreshFlows::new(22000);
    let names = topo.answered(&mut fresh, 20);
    let rs1 = topo.reals()[0].name();
    assert!(names.iter().all(|n| n == rs1), "{names:?}");
    rs2.sysctl("net.ipv4.icmp_echo_ignore_all", "0").unwrap();
    wait_health(&agent, "10.0.0.12:80", "up");
}

#[test]
fn script_checks_go_by_exit_status() {
    if !require_root() {
        return;
    }
    let topo = DrTopology::new(2).expect("topology");
    let agent = Agent::start(topo.director().ns(), "eth0", &[]).expect("agent");
    topo.configure(&agent);
    let dir = Scratch::new("script-checks");
    // Up while a flag file named after the real server exists (keepalived's MISC_CHECK style).
    let script = dir.file("check");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n[ -e {}/up-$XDPLB_REAL_ADDR-$1 ] || {{ echo \"no flag for $XDPLB_REAL_ADDR\" >&2; exit 2; }}\n",
            dir.0.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let flag = |rip: &str| dir.0.join(format!("up-{rip}-web"));
    std::fs::write(flag("10.0.0.11"), "").unwrap();
    let check = format!("script:{script} web");
    for rip in ["10.0.0.11", "10.0.0.12"] {
        agent.set_check(SVC, rip, &check);
    }
    assert_eq!(wait_health(&agent, "10.0.0.11:80", "up"), None);
    let err = wait_health(&agent, "10.0.0.12:80", "down").unwrap_or_default();
    assert_eq!(
        err,
        format!("{script} exited with 2: no flag for 10.0.0.12")
    );
    let mut fresh = FreshFlows::new(23000);
    let rs1 = topo.reals()[0].name();
    let names = topo.answered(&mut fresh, 20);
    assert!(names.iter().all(|n| n == rs1), "{names:?}");

    std::fs::write(flag("10.0.0.12"), "").unwrap();
    wait_health(&agent, "10.0.0.12:80", "up");
    std::fs::remove_file(flag("10.0.0.11")).unwrap();
    wait_health(&agent, "10.0.0.11:80", "down");

    // A command that cannot run is refused with one line, and nothing changes.
    let before = agent.list_config();
    let out = agent.cli(&[
        "real",
        "edit",
        "-t",
        SVC,
        "-r",
        "10.0.0.11",
        "--check",
        "script:check.sh",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("must be an absolute path"), "{err}");
    assert_eq!(agent.list_config().0["services"], before.0["services"]);
}
