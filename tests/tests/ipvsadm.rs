//! The ipvsadm front end against a live agent: ipvsadm(8)'s example commands build the service
//! and real TCP reaches its real servers; listings come in ipvsadm's layout and columns (-Ln,
//! --stats, --thresholds, --persistent-conn, -Lnc, --timeout); -S writes what -R reads back,
//! which moves a director's rules; a restore with one bad line changes nothing; the binary run
//! through links named ipvsadm and ipvsadm-save behaves the same; every rejected command exits
//! non-zero with one line and changes nothing.

use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::{Command, Output, Stdio};

use lb_tests::agent::xdplb_bin;
use lb_tests::client::{fetch_each, fetch_from};
use lb_tests::{require_root, Agent, DrTopology, FreshFlows, Serve};

const SVC: &str = "10.0.0.100:80";

fn topology(reals: usize) -> (DrTopology, Agent) {
    let topo = DrTopology::with_servers(reals, Serve::Once).expect("topology");
    let agent = Agent::start(topo.director().ns(), "eth0", &[]).expect("agent");
    (topo, agent)
}

/// `xdplb ipvsadm WORDS` (split on blanks).
fn ipvsadm(agent: &Agent, words: &str) -> Output {
    let mut args = vec!["ipvsadm"];
    args.extend(words.split_whitespace());
    agent.cli(&args)
}

/// [`ipvsadm`], which must succeed; its stdout.
fn ipvsadm_ok(agent: &Agent, words: &str) -> String {
    let out = ipvsadm(agent, words);
    assert!(
        out.status.success(),
        "ipvsadm {words}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `xdplb ipvsadm -R` with `rules` on stdin.
fn restore(agent: &Agent, rules: &str) -> Output {
    let mut child = Command::new(xdplb_bin())
        .args(["--socket"])
        .arg(agent.socket())
        .args(["ipvsadm", "-R"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(rules.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// A rejected command: non-zero, one line on stderr naming `named`, nothing changed.
fn assert_rejected(agent: &Agent, out: &Output, what: &str, named: &str, before: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{what}: accepted");
    assert_eq!(err.trim_end().lines().count(), 1, "{what}: one line: {err}");
    assert!(
        err.contains(named),
        "{what}: {err:?} does not name {named:?}"
    );
    assert_eq!(
        agent.cli_ok(&["list", "--json"]),
        before,
        "{what}: changed the state"
    );
}

fn row(addr: &str, fwd: &str, weight: u32, active: u64, inactive: u64) -> String {
    format!("  -> {addr:<28} {fwd:<7} {weight:<6} {active:<10} {inactive:<10}\n")
}

#[test]
fn the_manual_example_builds_the_service_and_lists_as_ipvsadm() {
    if !require_root() {
        return;
    }
    let (topo, agent) = topology(3);
    // ipvsadm(8), EXAMPLE 1, on this topology's addresses.
    ipvsadm_ok(&agent, "-A -t 10.0.0.100:80 -s rr");
    let before = agent.cli_ok(&["list", "--json"]);
    // Its real servers are masqueraded: refused until LVS/NAT exists, nothing added.
    let out = ipvsadm(&agent, "-a -t 10.0.0.100:80 -r 10.0.0.11:80 -g -m");
    assert_rejected(&agent, &out, "-g -m", "one forwarding method", &before);
    for rs in topo.reals() {
        ipvsadm_ok(
            &agent,
            &format!("-a -t 10.0.0.100:80 -r {}:80 -g", rs.addr()),
        );
    }
    let expected = format!(
        "IP Virtual Server version 1.2.1 (size=1000000)\n\
         Prot LocalAddress:Port Scheduler Flags\n  \
         -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n\
         TCP  10.0.0.100:80 rr\n{}{}{}",
        row("10.0.0.11:80", "Route", 1, 0, 0),
        row("10.0.0.12:80", "Route", 1, 0, 0),
        row("10.0.0.13:80", "Route", 1, 0, 0)
    );
    assert_eq!(ipvsadm_ok(&agent, "-L -n"), expected);
    assert_eq!(
        ipvsadm_ok(&agent, "-Ln"),
        expected,
        "combined short options"
    );

    // Real connections, from known client ports; rr gives each server a turn (per CPU).
    let flows = FreshFlows::new(30000).take(6);
    let answers: Vec<String> = topo
        .client()
        .ns()
        .run_in(|| fetch_each(&flows, DrTopology::service()))
        .into_iter()
        .map(|r| r.expect("a connection through the front end's service"))
        .collect();
    for rs in topo.reals() {
        assert!(
            answers.iter().any(|a| a == rs.name()),
            "{} never answered: {answers:?}",
            rs.name()
        );
    }
    // --stats: the service's Conns column counts them.
    let stats = ipvsadm_ok(&agent, "-L -n --stats --exact");
    let line = stats
        .lines()
        .find(|l| l.starts_with("TCP  10.0.0.100:80"))
        .unwrap();
    let conns: u64 = line.split_whitespace().nth(2).unwrap().parse().unwrap();
    assert_eq!(conns, 6, "{stats}");
    // -Lnc: each connection with its client, the VIP and the server that answered it.
    let table = ipvsadm_ok(&agent, "-L -n -c");
    let mut lines = table.lines();
    assert_eq!(lines.next(), Some("IPVS connection entries"));
    assert_eq!(
        lines.next(),
        Some("pro expire state       source             virtual            destination")
    );
    for (flow, answer) in flows.iter().zip(&answers) {
        let real = topo
            .reals()
            .iter()
            .find(|r| r.name() == answer)
            .unwrap()
            .addr();
        let entry = table
            .lines()
            .find(|l| l.split_whitespace().nth(3) == Some(&flow.to_string()))
            .unwrap_or_else(|| panic!("no entry for {flow}:\n{table}"));
        let f: Vec<&str> = entry.split_whitespace().collect();
        assert_eq!(f[0], "TCP", "{entry}");
        // The client closed its side: the director saw its FIN.
        assert_eq!(f[2], "FIN_WAIT", "{entry}");
        assert_eq!(f[4], SVC, "{entry}");
        assert_eq!(f[5], format!("{real}:80"), "{entry}");
        assert!(f[1].len() == 5 && f[1].as_bytes()[2] == b':', "{entry}");
    }
}

/// The rules ipvsadm-save prints for a director with persistence, thresholds, both methods and
/// a UDP Maglev service, in ipvsadm's order (sorted by protocol, address, port).
const SAVED: &str = "\
-A -t 10.0.0.100:0 -s wlc -p 360 -M 255.255.255.0
-a -t 10.0.0.100:0 -r 10.0.0.12:0 -g -w 1
-A -t 10.0.0.100:80 -s wrr
-a -t 10.0.0.100:80 -r 10.0.0.11:80 -g -w 3 -x 100 -y 50
-a -t 10.0.0.100:80 -r 10.0.0.12:80 -i -w 1
-A -u 10.0.0.100:53 -s mh -b mh-port
-a -u 10.0.0.100:53 -r 10.0.0.11:53 -g -w 2
";

#[test]
fn save_and_restore_move_a_directors_rules() {
    if !require_root() {
        return;
    }
    let (_topo, agent) = topology(2);
    // Built with ipvsadm commands (names, defaults and all) ...
    for cmd in [
        "-A -t 10.0.0.100:http -s wrr",
        "-a -t 10.0.0.100:80 -r 10.0.0.11 -w 3 -x 100 -y 50",
        "-a -t 10.0.0.100:80 -r 10.0.0.12:80 -i",
        "-A -u 10.0.0.100:domain -s mh -b mh-port",
        "-a -u 10.0.0.100:53 -r 10.0.0.11 -w 2",
        "-A -t 10.0.0.100:0 -p 360 -M 255.255.255.0",
        "-a -t 10.0.0.100:0 -r 10.0.0.12",
    ] {
        ipvsadm_ok(&agent, cmd);
    }
    // ... saved in ipvsadm-save's format.
    assert_eq!(ipvsadm_ok(&agent, "-S -n"), SAVED);
    let built = agent.list_config();
    ipvsadm_ok(&agent, "-C");
    assert_eq!(agent.list_config().services().len(), 0, "-C clears");

    // A restore with one bad line, at the end: nothing of it is applied.
    let empty = agent.cli_ok(&["list", "--json"]);
    let bad = format!("{SAVED}-a -t 10.0.0.100:80 -r 10.0.0.13 -g -m\n");
    let out = restore(&agent, &bad);
    assert_rejected(
        &agent,
        &out,
        "restore with -g -m",
        "line 8: one forwarding method",
        &empty,
    );
    // One the agent refuses (the same service twice): nothing applied either.
    let twice = format!("{SAVED}-A -t 10.0.0.100:80 -s rr\n");
    let out = restore(&agent, &twice);
    assert_rejected(&agent, &out, "restore twice", "line 8:", &empty);

    // The saved rules, as ipvsadm-save wrote them, comments and all.
    let file = format!("# saved by ipvsadm-save -n\n{SAVED}\n");
    let out = restore(&agent, &file);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(agent.list_config(), built, "restored as built");
    assert_eq!(ipvsadm_ok(&agent, "-S -n"), SAVED);
}

#[test]
fn edits_zero_and_timeouts_as_ipvsadm() {
    if !require_root() {
        return;
    }
    let (topo, agent) = topology(2);
    ipvsadm_ok(&agent, "-A -t 10.0.0.100:80 -s sh -p 60");
    ipvsadm_ok(&agent, "-a -t 10.0.0.100:80 -r 10.0.0.11 -w 4 -x 10 -y 5");
    ipvsadm_ok(&agent, "-a -t 10.0.0.100:80 -r 10.0.0.12");
    let listed = ipvsadm_ok(&agent, "-Ln");
    assert!(
        listed.contains("\nTCP  10.0.0.100:80 sh persistent 60\n"),
        "{listed}"
    );
    let thresholds = ipvsadm_ok(&agent, "-Ln --thresholds");
    assert!(
        thresholds.starts_with(
            "IP Virtual Server version 1.2.1 (size=1000000)\n\
             Prot LocalAddress:Port            Uthreshold Lthreshold ActiveConn InActConn \n  \
             -> RemoteAddress:Port\nTCP  10.0.0.100:80 sh persistent 60\n  \
             -> 10.0.0.11:80                 10         5          0          0         \n"
        ),
        "{thresholds}"
    );

    // A persistent client: its template shows in --persistent-conn.
    let client = Ipv4Addr::new(10, 0, 0, 101);
    let answer = topo
        .client()
        .ns()
        .run_in(|| fetch_from(SocketAddrV4::new(client, 31000), DrTopology::service()))
        .unwrap();
    let real = topo
        .reals()
        .iter()
        .find(|r| r.name() == answer)
        .unwrap()
        .addr();
    let pc = ipvsadm_ok(&agent, "-Ln --persistent-conn");
    let line = pc
        .lines()
        .find(|l| l.contains(&format!("{real}:80")))
        .unwrap();
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(cols[3], "1", "PersistConn of {real}: {pc}");

    // -E without -s or -p: ipvsadm's defaults (wlc, not persistent), as ipvsadm's edit.
    ipvsadm_ok(&agent, "-E -t 10.0.0.100:80");
    assert!(ipvsadm_ok(&agent, "-Ln").contains("\nTCP  10.0.0.100:80 wlc\n"));
    // -e without -w or -x: weight 1, no thresholds.
    ipvsadm_ok(&agent, "-e -t 10.0.0.100:80 -r 10.0.0.11");
    let listed = ipvsadm_ok(&agent, "-Ln --thresholds");
    assert!(
        listed.contains("  -> 10.0.0.11:80                 0          0          "),
        "{listed}"
    );
    assert!(agent.list_config().0.to_string().contains("\"weight\":1"));

    // --rate: ipvsadm's rate columns, measured over a second.
    let rate = ipvsadm_ok(&agent, "-Ln --rate");
    assert!(
        rate.contains(
            "\nProt LocalAddress:Port                 CPS    InPPS   OutPPS    InBPS   OutBPS\n"
        ),
        "{rate}"
    );
    // -Z -t: this service's counters only (the stats say so).
    let stats = |agent: &Agent| agent.list().service_stat(SVC, "packets");
    assert!(stats(&agent) > 0);
    ipvsadm_ok(&agent, "-Z -t 10.0.0.100:80");
    assert_eq!(stats(&agent), 0);

    // --set, 0 keeping a value; --timeout lists them.
    ipvsadm_ok(&agent, "--set 100 20 30");
    assert_eq!(
        ipvsadm_ok(&agent, "-L --timeout"),
        "Timeout (tcp tcpfin udp): 100 20 30\n"
    );
    ipvsadm_ok(&agent, "--set 0 0 40");
    assert_eq!(
        ipvsadm_ok(&agent, "-L --timeout"),
        "Timeout (tcp tcpfin udp): 100 20 40\n"
    );

    // -L -t: that service alone, no version line.
    let one = ipvsadm_ok(&agent, "-L -n -t 10.0.0.100:80");
    assert!(one.starts_with("Prot LocalAddress:Port Scheduler Flags\n"));
    // -d, then -D.
    ipvsadm_ok(&agent, "-d -t 10.0.0.100:80 -r 10.0.0.12");
    assert_eq!(agent.list_config().reals(SVC), ["10.0.0.11:80"]);
    ipvsadm_ok(&agent, "-D -t 10.0.0.100:80");
    assert!(agent.list_config().services().is_empty());
}

#[test]
fn rejected_commands_change_nothing() {
    if !require_root() {
        return;
    }
    let (_topo, agent) = topology(2);
    ipvsadm_ok(&agent, "-A -t 10.0.0.100:80 -s rr");
    ipvsadm_ok(&agent, "-a -t 10.0.0.100:80 -r 10.0.0.11");
    let before = agent.cli_ok(&["list", "--json"]);
    for (words, named) in [
        ("-A -t 10.0.0.100:80 -s rr", "already exists"),
        ("-A -t 10.0.0.100:81 -s xyz", "xyz"),
        ("-A -t 10.0.0.100:0 -s rr", "port 0"),
        ("-A -f 1 -s rr", "-f"),
        (
            "-A -t [2001:db8::80]:80 -s rr -p 300 -M 255.255.255.0",
            "prefix length",
        ),
        ("-a -t 10.0.0.100:80 -r 10.0.0.11", "already"),
        ("-a -t 10.0.0.100:80 -r 10.0.0.12 -w 65536", "65536"),
        ("-a -t 10.0.0.100:80 -r 10.0.0.12 -x 5 -y 10", "threshold"),
        ("-a -t 10.0.0.100:81 -r 10.0.0.12", "no such service"),
        ("-e -t 10.0.0.100:80 -r 10.0.0.13", "10.0.0.13"),
        ("-d -t 10.0.0.100:80 -r 10.0.0.13", "10.0.0.13"),
        ("-D -t 10.0.0.100:81", "no such service"),
        ("-A -t 10.0.0.100:82 -w 1", "'weight'"),
        ("--start-daemon master", "docs/ha.md"),
        ("-L -c --rate", "'rate'"),
        ("-L -t 10.0.0.100:81", "no such service"),
        ("-Q", "-Q"),
    ] {
        let out = ipvsadm(&agent, words);
        assert_rejected(&agent, &out, words, named, &before);
    }
}

#[test]
fn a_link_named_ipvsadm_is_the_front_end() {
    if !require_root() {
        return;
    }
    let (_topo, agent) = topology(1);
    let dir = std::env::temp_dir().join(format!("xdplb-ipvsadm-link-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["ipvsadm", "ipvsadm-save"] {
        std::os::unix::fs::symlink(xdplb_bin(), dir.join(name)).unwrap();
    }
    let run = |name: &str, args: &[&str]| -> Output {
        Command::new(dir.join(name))
            .args(args)
            .env("XDPLB_SOCKET", agent.socket())
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let out = run("ipvsadm", &["-A", "-t", SVC, "-s", "lc"]);
    assert!(out.status.success(), "{out:?}");
    let out = run("ipvsadm", &["-a", "-t", SVC, "-r", "10.0.0.11", "-w", "5"]);
    assert!(out.status.success(), "{out:?}");
    let stdout = |o: Output| String::from_utf8(o.stdout).unwrap();
    assert_eq!(
        stdout(run("ipvsadm", &["-Ln"])),
        ipvsadm_ok(&agent, "-Ln"),
        "the link lists as xdplb ipvsadm"
    );
    // No arguments: the list, as ipvsadm.
    assert_eq!(stdout(run("ipvsadm", &[])), ipvsadm_ok(&agent, "-Ln"));
    assert_eq!(
        stdout(run("ipvsadm-save", &["-n"])),
        "-A -t 10.0.0.100:80 -s lc\n-a -t 10.0.0.100:80 -r 10.0.0.11:80 -g -w 5\n"
    );
    let out = run("ipvsadm", &["-A", "-t", SVC]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("ipvsadm: "), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
