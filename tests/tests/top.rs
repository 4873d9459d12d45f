//! `xdplb top` against a running agent with traffic: the screen (ratatui's test backend, from
//! the same drawing code) shows the service, its real servers, a server's health error and the
//! rates; and the real command in a pseudo-terminal draws the same and quits on `q`, restoring
//! the terminal.

use std::io::{Read as _, Write as _};
use std::os::fd::{FromRawFd as _, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lb_tests::agent::xdplb_bin;
use lb_tests::client::fetch_each;
use lb_tests::{require_root, Agent, DrTopology, FreshFlows};
use lb_user::top::{screen, View};

const SVC: &str = "10.0.0.100:80";

/// A running director: two real servers, the second down (its server killed, a TCP check on).
fn director() -> (DrTopology, Agent) {
    let topo = DrTopology::new(2).expect("topology");
    let agent = Agent::start(topo.director().ns(), "eth0", &[]).expect("agent");
    topo.configure(&agent);
    topo.kill_server(2);
    agent.set_check(SVC, "10.0.0.12", "tcp");
    let deadline = Instant::now() + Duration::from_secs(10);
    while agent.list_config().real(SVC, "10.0.0.12:80")["health"]["state"] != "down" {
        assert!(Instant::now() < deadline, "10.0.0.12 never went down");
        std::thread::sleep(Duration::from_millis(200));
    }
    (topo, agent)
}

#[test]
fn the_screen_shows_the_director_with_its_rates() {
    if !require_root() {
        return;
    }
    let (topo, agent) = director();
    let mut view = View::default();
    view.fetch(agent.socket());
    let before = screen(&view, 140, 16).join("\n");
    assert!(before.contains("TCP 10.0.0.100:80"), "{before}");
    assert!(before.contains("1/2 up"), "{before}");
    assert!(
        before.contains("down: connect 10.0.0.12:80: connection refused"),
        "{before}"
    );
    // New connections between two readings: the rates show them.
    std::thread::sleep(Duration::from_millis(500));
    let flows = FreshFlows::new(24000).take(30);
    let answers = topo
        .client()
        .ns()
        .run_in(|| fetch_each(&flows, DrTopology::service()));
    assert!(answers.iter().all(Result::is_ok), "{answers:?}");
    std::thread::sleep(Duration::from_millis(500));
    view.fetch(agent.socket());
    let lines = screen(&view, 140, 16);
    let text = lines.join("\n");
    let service = lines
        .iter()
        .find(|l| l.contains("TCP 10.0.0.100:80"))
        .unwrap_or_else(|| panic!("{text}"));
    let conns: Vec<u64> = service
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    // ACTIVE, INACT, CONN/S, PKT/S: new connections per second above 0.
    assert!(conns.len() >= 4 && conns[2] > 0, "{service}\n{text}");
    assert!(text.contains("  10.0.0.11:80"), "{text}");
    assert!(view.error.is_none());
}

/// A pseudo-terminal of `cols` x `rows`: (master, slave).
fn pty(cols: u16, rows: u16) -> (OwnedFd, OwnedFd) {
    let (mut master, mut slave) = (0, 0);
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty fills two descriptors we then own.
    let r = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &size,
        )
    };
    assert_eq!(r, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: fresh descriptors nothing else owns.
    unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) }
}

#[test]
fn top_in_a_terminal_draws_and_quits_on_q() {
    if !require_root() {
        return;
    }
    let (_topo, agent) = director();
    let (master, slave) = pty(140, 30);
    /// Killed when dropped, so a failing test leaves no `xdplb top` behind.
    struct Top(std::process::Child);
    impl Drop for Top {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = std::process::Command::new(xdplb_bin())
        .args(["--socket", agent.socket().to_str().unwrap(), "top"])
        .env("TERM", "xterm-256color")
        .stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave)
        .spawn()
        .map(Top)
        .expect("xdplb top");
    // Everything the program writes to the terminal.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut reader = std::fs::File::from(master.try_clone().unwrap());
    std::thread::spawn({
        let seen = seen.clone();
        move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        }
    });
    let shown = |text: &str| {
        let seen = seen.lock().unwrap();
        seen.windows(text.len()).any(|w| w == text.as_bytes())
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(shown("10.0.0.11:80") && shown("connection refused")) {
        assert!(
            Instant::now() < deadline,
            "not drawn: {}",
            String::from_utf8_lossy(&seen.lock().unwrap())
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(shown("\x1b[?1049h"), "the alternate screen");
    let mut writer = std::fs::File::from(master);
    writer.write_all(b"q").unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "top did not quit on q");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    std::thread::sleep(Duration::from_millis(100));
    assert!(shown("\x1b[?1049l"), "the terminal is given back");
}
