//! Hostile control input: the control socket and the HTTP API get malformed JSON, endless lines,
//! garbage, slow and idle clients by the thousand and hostile values; the agent answers each with
//! an error, keeps serving the others, changes nothing, and its memory stays bounded.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use lb_tests::web::Api;
use lb_tests::{require_program, require_root, Agent, DrTopology};

/// The agent's resident memory, kB.
fn rss_kb(agent: &Agent) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

/// Sends `bytes` on a new connection to the socket and returns the answer line.
fn send(agent: &Agent, bytes: &[u8]) -> String {
    let mut s = UnixStream::connect(agent.socket()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    // The agent may answer (and close) before it has read everything: that is fine.
    let _ = s.write_all(bytes);
    let mut line = String::new();
    let _ = BufReader::new(s).read_line(&mut line);
    line
}

#[test]
fn the_control_socket_survives_hostile_clients() {
    if !require_root() {
        return;
    }
    let topo = DrTopology::new(1).expect("topology");
    let agent = Agent::start(topo.director().ns(), "eth0", &[]).expect("agent");
    topo.configure(&agent);
    let before = agent.list_config();
    let rss_before = rss_kb(&agent);

    for (bytes, want) in [
        (&b"{\"op\":\"add_service\"}\n"[..], "malformed request"),
        (b"{not json}\n", "malformed request"),
        (b"{\"op\":\"del_service\",\"service\":{\"protocol\":\"tcp\",\"vip\":\"999.1.1.1\",\"port\":80}}\n", "malformed request"),
        (b"{\"op\":\"add_real\",\"service\":{\"protocol\":\"tcp\",\"vip\":\"10.0.0.100\",\"port\":80},\"real\":{\"addr\":\"10.0.0.50\",\"weight\":4294967295}}\n", "weight 4294967295 is out of range"),
        (b"{\"op\":\"batch\",\"requests\":[[\"rule 1\",{\"op\":\"del_service\",\"service\":{\"protocol\":\"tcp\",\"vip\":\"10.0.0.100\",\"port\":80}}],[\"rule 2\",{\"op\":\"del_service\",\"service\":{\"protocol\":\"tcp\",\"vip\":\"10.9.9.9\",\"port\":1}}]]}\n", "rule 2: no such service: TCP 10.9.9.9:1"),
    ] {
        let answer = send(&agent, bytes);
        assert!(answer.contains(want), "{:?}: {answer}", String::from_utf8_lossy(bytes));
    }
    // An endless line: refused once it passes the limit, not read to the end.
    let mut huge = vec![b'{'];
    huge.resize(65 << 20, b'a');
    let answer = send(&agent, &huge);
    assert!(answer.contains("longer than 64 MiB"), "{answer}");

    // Thousands of clients that connect and say nothing: the others are served at once.
    let idle: Vec<UnixStream> = (0..2000)
        .map(|_| UnixStream::connect(agent.socket()).expect("connect"))
        .collect();
    let started = Instant::now();
    assert_eq!(agent.list_config().0, before.0);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // Half-sent requests, then gone.
    for s in idle.iter().take(500) {
        let _ = (&*s).write_all(b"{\"op\":\"li");
    }
    drop(idle);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        agent.list_config().0,
        before.0,
        "a hostile client changed something"
    );
    let grown = rss_kb(&agent).saturating_sub(rss_before);
    assert!(grown < 64 * 1024, "the agent grew by {grown} kB");
}

#[test]
fn the_http_api_survives_hostile_requests() {
    if !require_root() || !require_program("curl", "curl") {
        return;
    }
    let topo = DrTopology::new(1).expect("topology");
    let director = topo.director().ns();
    let agent = Agent::start(director, "eth0", &["--web", "127.0.0.1:9728"]).expect("agent");
    topo.configure(&agent);
    let before = agent.list_config();
    let api = Api::Socket(agent.socket());
    let svc = "/api/v1/services/tcp/10.0.0.100/80";
    for (method, path, body, status) in [
        ("POST", "/api/v1/services", "[1,2,3]", 400),
        (
            "POST",
            "/api/v1/services",
            "{\"protocol\":\"tcp\",\"vip\":\"10.0.0.1\",\"port\":99999}",
            400,
        ),
        (
            "POST",
            "/api/v1/services",
            "{\"protocol\":\"tcp\",\"vip\":\"10.0.0.1\",\"port\":0}",
            400,
        ),
        (
            "PUT",
            &format!("{svc}/reals/10.0.0.11"),
            "{\"weight\":1e99}",
            400,
        ),
        (
            "PUT",
            &format!("{svc}/reals/10.0.0.11"),
            "{\"mac\":\"zz:zz\"}",
            400,
        ),
        ("PUT", "/api/v1/services/tcp/10.0.0.100%00/80", "{}", 400),
        (
            "GET",
            "/api/v1/services/tcp/10.0.0.100/80/reals/../../../../etc/passwd",
            "",
            404,
        ),
        ("POST", "/api/v1/timeouts", "{}", 405),
    ] {
        let body = (!body.is_empty()).then_some(body);
        let r = api.call(method, path, body, None);
        assert_eq!(r.status, status, "{method} {path} {body:?}: {}", r.body);
    }
    // A body beyond the limit (2 MB) is refused without reaching the agent.
    let big = format!(
        "{{\"addr\":\"10.0.0.50\",\"x\":\"{}\"}}",
        "a".repeat(3 << 20)
    );
    let file = std::env::temp_dir().join(format!("xdplb-big-{}", std::process::id()));
    std::fs::write(&file, big).unwrap();
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--unix-socket",
        ])
        .arg(agent.socket())
        .args(["-H", "Content-Type: application/json", "--data-binary"])
        .arg(format!("@{}", file.display()))
        .arg(format!("http://localhost{svc}/reals"))
        .output()
        .unwrap();
    std::fs::remove_file(&file).unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "413");

    // Clients that hold every connection the TCP door serves at once: it answers again when
    // they go (each is cut after 30 s at the latest).
    let holders: Vec<std::net::TcpStream> = director.run_in(|| {
        (0..40)
            .filter_map(|_| std::net::TcpStream::connect("127.0.0.1:9728").ok())
            .collect()
    });
    assert!(holders.len() >= 16);
    drop(holders);
    let web = Api::Web(director, "127.0.0.1:9728".parse().unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = web.call("GET", "/api/v1/agent", None, None);
        if r.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the web door never came back: {}",
            r.body
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Garbage on the TCP door: 400, and the door serves on.
    let answer = director.run_in(|| {
        let mut s = std::net::TcpStream::connect("127.0.0.1:9728").unwrap();
        s.write_all(b"\x16\x03\x01garbage that is not HTTP\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    });
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(web.call("GET", "/api/v1/agent", None, None).status, 200);
    assert_eq!(
        agent.list_config().0,
        before.0,
        "a hostile request changed something"
    );
}
