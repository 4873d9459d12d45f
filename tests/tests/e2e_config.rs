//! End to end, the config file: `xdplb reload` (and SIGHUP) apply an edited file by difference,
//! leaving the established flows of an unchanged service alone; an invalid file is rejected with
//! its line and reason and changes nothing; `xdplb save` writes a file that starts an agent
//! running exactly the same configuration.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

use lb_tests::client::StreamSet;
use lb_tests::metrics::Scrape;
use lb_tests::{require_root, Agent, DrTopology, FreshFlows, Listing, Netns, Serve};

/// Where the agent serves its metrics, inside the director's namespace.
const METRICS: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9727);
/// Both services' address: service A is TCP, service B UDP.
const SVC: &str = "10.0.0.100:80";
const NAT_SVC: &str = "10.0.0.100:8080";
/// Long-lived TCP connections on service A, each from its own source port.
const STREAMS: usize = 30;
const STREAM_PORTS: u16 = 20000;
/// Fresh flows use ports from here on.
const FRESH_PORTS: u16 = 30000;

/// `[[service.real]]` for real server `i` (counting from 1) with `weight`.
fn real(i: usize, weight: u32) -> String {
    format!(
        "  [[service.real]]\n  address = \"{}\"\n  weight = {weight}\n",
        DrTopology::real_addr(i)
    )
}

/// The file of the reload tests: service A, TCP VIP:80 (Maglev) on rs1..rs3, which no reload
/// changes, and service B, UDP VIP:80 (source hashing) on `b_reals` (real server, weight).
fn two_services(b_reals: &[(usize, u32)]) -> String {
    let a_reals: String = (1..=3).map(|i| real(i, 1)).collect();
    let b_reals: String = b_reals.iter().map(|&(i, w)| real(i, w)).collect();
    format!(
        "interface = \"eth0\"\n\n[metrics]\nlisten = \"{METRICS}\"\n\n\
         # A: the streams' service.\n[[service]]\nprotocol = \"tcp\"\nvip = \"{vip}\"\nport = 80\n\
         scheduler = \"mh\"\n{a_reals}\n\
         # B: what the reloads change.\n[[service]]\nprotocol = \"udp\"\nvip = \"{vip}\"\nport = 80\n\
         {b_reals}",
        vip = DrTopology::VIP
    )
}

/// The topology (4 echo servers), an agent started from `config` and STREAMS streams on
/// service A, checked to be flowing; None (skipped) without root.
fn start(config: &str) -> Option<(DrTopology, Agent, StreamSet)> {
    if !require_root() {
        return None;
    }
    let topo = DrTopology::with_servers(4, Serve::Echo).expect("cannot build the DR topology");
    let agent =
        Agent::start_with_config(topo.director().ns(), config).expect("cannot start the agent");
    let flows = FreshFlows::new(STREAM_PORTS).take(STREAMS);
    let streams = StreamSet::open(topo.client().ns(), &flows, DrTopology::service())
        .unwrap_or_else(|e| panic!("stream failed: {e:#}"));
    std::thread::sleep(Duration::from_millis(500));
    streams.assert_flowing("before any reload");
    Some((topo, agent, streams))
}

/// (RIP:PORT, weight) of the real servers of the service of `protocol`, sorted.
fn reals_of(listing: &Listing, protocol: &str) -> Vec<(String, u64)> {
    let service = listing
        .service_of(protocol, SVC)
        .unwrap_or_else(|| panic!("no {protocol} service {SVC}: {}", listing.0));
    let mut reals: Vec<(String, u64)> = service["reals"]
        .as_array()
        .expect("reals")
        .iter()
        .map(|r| {
            let address = r["address"].as_str().expect("real address").to_owned();
            (address, r["weight"].as_u64().expect("real weight"))
        })
        .collect();
    reals.sort();
    reals
}

/// What `reals_of` must show for `b_reals`.
fn expected_reals(b_reals: &[(usize, u32)]) -> Vec<(String, u64)> {
    let mut reals: Vec<(String, u64)> = b_reals
        .iter()
        .map(|&(i, w)| (format!("{}:80", DrTopology::real_addr(i)), u64::from(w)))
        .collect();
    reals.sort();
    reals
}

/// The agent's reload counters from its metrics: (applied, rejected).
fn reload_counters(director: &Netns) -> (f64, f64) {
    let scrape = Scrape::get(director, METRICS).expect("scrape the metrics");
    (
        scrape.value("xdplb_config_reloads_total", &[]),
        scrape.value("xdplb_config_reload_failures_total", &[]),
    )
}

#[test]
fn reload_and_sighup_change_only_what_the_file_changes() {
    let first: &[(usize, u32)] = &[(1, 1), (2, 1)];
    let Some((topo, mut agent, streams)) = start(&two_services(first)) else {
        return;
    };
    let director = topo.director().ns();
    let service_a = |agent: &Agent| agent.list_config().service_of("tcp", SVC).cloned();
    let a_before = service_a(&agent).expect("service A is listed");
    assert_eq!(reals_of(&agent.list_config(), "udp"), expected_reals(first));
    assert_eq!(reload_counters(director), (0.0, 0.0));
    let servers_before: Vec<String> = streams.statuses().into_iter().map(|s| s.server).collect();
    let mut fresh = FreshFlows::new(FRESH_PORTS);

    // B loses rs1, gains rs3 and rs4, rs2 is reweighted; then rs4 goes, rs1 comes back.
    let changes: [(&str, &[(usize, u32)]); 2] = [
        ("xdplb reload", &[(2, 3), (3, 2), (4, 1)]),
        ("SIGHUP", &[(1, 5), (2, 3), (3, 2)]),
    ];
    for (n, (how, b_reals)) in changes.into_iter().enumerate() {
        agent
            .write_config(&two_services(b_reals))
            .expect("write the config");
        match how {
            "SIGHUP" => agent.signal(libc::SIGHUP).expect("SIGHUP the agent"),
            _ => drop(agent.cli_ok(&["reload"])),
        }
        let expected = expected_reals(b_reals);
        let deadline = Instant::now() + Duration::from_secs(5);
        while reals_of(&agent.list_config(), "udp") != expected {
            assert!(
                Instant::now() < deadline,
                "{how}: service B is still {:?}, the file says {expected:?}",
                reals_of(&agent.list_config(), "udp")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(
            service_a(&agent).as_ref(),
            Some(&a_before),
            "{how} changed service A"
        );
        let landed = topo.new_flows_as_simulated(&agent, "-u", &fresh.take(40), how);
        let b_names: BTreeSet<String> = b_reals.iter().map(|&(i, _)| format!("rs{i}")).collect();
        assert!(
            landed.keys().all(|name| b_names.contains(name)),
            "{how}: new UDP flows on {landed:?}, service B has {b_names:?}"
        );
        streams.assert_flowing(how);
        assert_eq!(
            reload_counters(director),
            ((n + 1) as f64, 0.0),
            "reload counters after {how}"
        );
    }
    std::thread::sleep(Duration::from_secs(1));
    streams.assert_flowing("after the reloads");
    let servers_after: Vec<String> = streams.stop().into_iter().map(|s| s.server).collect();
    assert_eq!(servers_after, servers_before, "streams changed server");
}

/// `text` with line `line` (counting from 1) replaced by `with` (which may hold several lines).
fn replace_line(text: &str, line: usize, with: &str) -> String {
    let mut lines: Vec<&str> = text.lines().collect();
    lines[line - 1] = with;
    lines.join("\n") + "\n"
}

/// The number (counting from 1) of the `nth` (from 0) line of `text` equal to `line` trimmed.
fn line_of(text: &str, line: &str, nth: usize) -> usize {
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.trim() == line)
        .nth(nth)
        .unwrap_or_else(|| panic!("no line {line:?} (#{nth}) in:\n{text}"))
        .0
        + 1
}

#[test]
fn an_invalid_file_is_rejected_with_its_line_and_changes_nothing() {
    let valid = two_services(&[(1, 1), (2, 1)]);
    let Some((topo, agent, streams)) = start(&valid) else {
        return;
    };
    let director = topo.director().ns();
    let path = agent
        .config_path()
        .expect("config path")
        .display()
        .to_string();
    let before = agent.list_config();

    let scheduler = line_of(&valid, "scheduler = \"mh\"", 0);
    let rs2_in_a = line_of(&valid, "address = \"10.0.0.12\"", 0);
    let rs2_in_b = line_of(&valid, "address = \"10.0.0.12\"", 1);
    let end = valid.lines().count();
    // (what, the broken file, the lines the error may name, what the error must name)
    let broken: [(&str, String, RangeInclusive<usize>, &str); 5] = [
        (
            "a syntax error",
            replace_line(&valid, scheduler, "scheduler = \"mh"),
            scheduler..=scheduler,
            "",
        ),
        (
            "an unknown key",
            replace_line(&valid, rs2_in_a, "  address = \"10.0.0.12\"\n  wieght = 2"),
            rs2_in_a + 1..=rs2_in_a + 1,
            "wieght",
        ),
        (
            "a duplicate service",
            format!("{valid}\n[[service]]\nprotocol = \"udp\"\nvip = \"10.0.0.100\"\nport = 80\n"),
            end + 2..=end + 5,
            "duplicate service",
        ),
        (
            "a real server off the LAN",
            replace_line(&valid, rs2_in_b, "  address = \"10.9.9.9\""),
            rs2_in_b - 1..=rs2_in_b + 1,
            "10.9.9.9",
        ),
        (
            // Stands for a byte that is not UTF-8 (0xff), written in its place below.
            "a byte that is not UTF-8",
            replace_line(&valid, rs2_in_b, "  address = \"10.0.0.12\" # \u{1}"),
            rs2_in_b..=rs2_in_b,
            "not UTF-8",
        ),
    ];
    for (n, (what, text, lines, names)) in broken.iter().enumerate() {
        let bytes: Vec<u8> = text
            .bytes()
            .map(|b| if b == 1 { 0xff } else { b })
            .collect();
        std::fs::write(&path, bytes).expect("write the config");
        let out = agent.cli(&["reload"]);
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        assert!(!out.status.success(), "{what}: reload succeeded");
        assert_eq!(stderr.lines().count(), 1, "{what}: not one line: {stderr}");
        // The CLI prefixes its errors with "xdplb: ".
        let error = stderr.strip_prefix("xdplb: ").unwrap_or(&stderr);
        let line: Option<usize> = error
            .strip_prefix(&format!("{path}:"))
            .and_then(|rest| rest.split_once(": "))
            .and_then(|(line, _)| line.parse().ok());
        assert!(
            line.is_some_and(|line| lines.contains(&line)),
            "{what}: expected \"{path}:LINE: reason\" with LINE in {lines:?}, got: {stderr}\n\
             the file:\n{text}"
        );
        assert!(
            error.contains(names),
            "{what}: {stderr} does not name {names:?}"
        );
        eprintln!("{what}: {stderr}");
        assert_eq!(
            agent.list_config(),
            before,
            "{what}: the configuration changed"
        );
        assert_eq!(
            reload_counters(director),
            (0.0, (n + 1) as f64),
            "reload counters after {what}"
        );
        streams.assert_flowing(what);
    }

    // The file fixed, a reload applies it again (nothing to change). The files that failed
    // their checks or their apply were kept: only the section the last of them changed is
    // parsed again (a large file put right reloads as fast as one edit).
    agent.write_config(&valid).expect("write the config");
    agent.cli_ok(&["reload"]);
    assert_eq!(agent.list_config(), before);
    assert_eq!(reload_counters(director), (1.0, broken.len() as f64));
    let log = agent.log();
    assert!(
        log.contains("configuration reloaded (1 of 2 services parsed anew)"),
        "the fixed file was not read with the failed ones' sections:\n{log}"
    );
    streams.assert_flowing("after the fixed reload");
    for status in streams.stop() {
        assert_eq!(status.failure, None, "{status:?}");
    }
}

#[test]
fn save_writes_a_file_that_starts_the_same_configuration() {
    if !require_root() {
        return;
    }
    let topo = DrTopology::with_servers(4, Serve::Once).expect("cannot build the DR topology");
    let director = topo.director().ns();
    let rs3_mac = topo.reals()[2].ns().mac("eth0").expect("rs3's MAC");
    let config = format!(
        r#"interface = "eth0"
conn_max = 50000

[timeouts]
tcp = 600
tcp_fin = 60
udp = 120

[[service]]
protocol = "tcp"
vip = "10.0.0.100"
port = 80
scheduler = "mh"
mh_size = 1021
hash = "src"

  [[service.real]]
  address = "10.0.0.11"
  weight = 2
  check = {{ type = "tcp", interval_ms = 500, timeout_ms = 400, rise = 3, fall = 2 }}

  [[service.real]]
  address = "10.0.0.12"

  [[service.real]]
  address = "10.0.0.13"
  mac = "{rs3_mac}"
"#
    );
    let mut agent = Agent::start_with_config(director, &config).expect("cannot start the agent");
    // Changes made with the CLI are part of the running state that `save` writes.
    agent.cli_ok(&["real", "add", "-t", SVC, "-r", "10.0.0.14", "-w", "0"]);
    agent.cli_ok(&["real", "edit", "-t", SVC, "-r", "10.0.0.12", "-w", "5"]);
    agent.cli_ok(&["service", "add", "-u", SVC, "-s", "sh"]);
    agent.cli_ok(&["real", "add", "-u", SVC, "-r", "10.0.0.11", "-w", "3"]);
    // An LVS/NAT real server on a port of its own (the agent wants forwarding on for it).
    director.sysctl("net.ipv4.ip_forward", "1").unwrap();
    agent.cli_ok(&["service", "add", "-t", NAT_SVC, "-s", "wrr"]);
    agent.cli_ok(&[
        "real",
        "add",
        "-t",
        NAT_SVC,
        "-r",
        "10.0.0.12:8081",
        "-m",
        "-w",
        "2",
    ]);
    let running = agent.list_config();
    assert_eq!(reals_of(&running, "tcp").len(), 4, "{}", running.0);
    let saved = agent.save();

    // What `list` does not show is in the file too.
    let parsed = lb_user::config::Source {
        path: "saved.toml".into(),
        text: saved.clone(),
    }
    .parse()
    .unwrap_or_else(|e| panic!("the saved file does not parse: {e:#}\n{saved}"));
    assert_eq!(parsed.conn_max, 50000, "{saved}");
    assert_eq!(
        (
            parsed.timeouts.tcp,
            parsed.timeouts.tcp_fin,
            parsed.timeouts.udp
        ),
        (600, 60, 120),
        "{saved}"
    );
    let check = parsed.services[0].get_ref().reals[0]
        .get_ref()
        .check
        .clone();
    let check = check.unwrap_or_else(|| panic!("rs1's check is not saved:\n{saved}"));
    let nat = parsed
        .services
        .iter()
        .map(|s| s.get_ref())
        .find(|s| s.port == 8080)
        .unwrap_or_else(|| panic!("the NAT service is not saved:\n{saved}"));
    let real = nat.reals[0].get_ref();
    assert_eq!(
        (real.forward, real.port),
        (lb_user::state::Forward::Masq, Some(8081)),
        "{saved}"
    );
    assert!(saved.contains(r#"forward = "masq""#), "{saved}");
    assert_eq!(
        (check.interval_ms, check.timeout_ms, check.rise, check.fall),
        (500, 400, 3, 2),
        "{saved}"
    );

    let stopped = agent.stop();
    assert!(stopped.success(), "agent exit on SIGTERM: {stopped}");
    let again =
        Agent::start_with_config(director, &saved).expect("cannot start from the saved file");
    assert_eq!(
        again.list_config(),
        running,
        "the agent started from the saved file runs another configuration; the file:\n{saved}"
    );
    assert_eq!(again.save(), saved, "saving again gives another file");
    topo.new_flows_as_simulated(
        &again,
        "-t",
        &FreshFlows::new(FRESH_PORTS).take(40),
        "saved",
    );
}
