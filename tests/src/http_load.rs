//! Real HTTP under load, from the distribution's packages: nginx as a real server inside a
//! namespace, with its own configuration, pid, logs and temporary files in a scratch directory,
//! and wrk as the client, whose summary is parsed. `cargo xtask test` installs both.

use std::io::Read as _;
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use crate::names;
use crate::netns::{Netns, Proc};

/// nginx serving as a real server: every path but `/health` answers 200 with `NAME\n`, and each
/// such request is one line of its access log; `/health` answers 200 while the server is healthy
/// ([`Nginx::set_healthy`]), 404 otherwise, unlogged. Stopped on Drop, which prints its error log
/// if the test is panicking and removes its directory.
pub struct Nginx {
    proc: Proc,
    name: String,
    dir: PathBuf,
}

impl Nginx {
    /// How long nginx may take to listen.
    const START_TIMEOUT: Duration = Duration::from_secs(10);

    /// Starts nginx (one worker, in the foreground) inside `ns`, named `name`, on `port` of every
    /// address, and waits until it accepts connections.
    pub fn start(ns: &Netns, name: &str, port: u16) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("{}-nginx-{name}", names::unique_prefix()));
        std::fs::create_dir_all(dir.join("tmp"))?;
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, config(&dir, name, port))?;
        let nginx = Self {
            proc: spawn_nginx(ns, &dir, &conf)?,
            name: name.to_owned(),
            dir,
        };
        nginx.set_healthy(true)?;
        let listen = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
        let deadline = Instant::now() + Self::START_TIMEOUT;
        while ns.run_in(|| TcpStream::connect(listen)).is_err() {
            if Instant::now() > deadline {
                bail!(
                    "nginx {name} does not listen on {port}:\n{}",
                    nginx.error_log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(nginx)
    }

    /// Makes `/health` answer 200 (`on`) or 404, as an application that fails its health check
    /// while still serving its clients.
    pub fn set_healthy(&self, on: bool) -> Result<()> {
        let file = self.dir.join("healthy");
        match on {
            true => std::fs::write(&file, "ok\n"),
            false => std::fs::remove_file(&file),
        }
        .with_context(|| format!("nginx {}: health file", self.name))
    }

    /// Requests answered with the server's name so far: lines of its access log, each a status
    /// code and a newline (4 bytes), so the file's size says it without reading it.
    pub fn served(&self) -> Result<u64> {
        let log = self.dir.join("access.log");
        let len = std::fs::metadata(&log)
            .with_context(|| format!("{}", log.display()))?
            .len();
        Ok(len / 4)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.proc.stop();
        if std::thread::panicking() {
            eprintln!("nginx {} error log:\n{}", self.name, self.error_log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// nginx's configuration: everything it writes goes under `dir`. Keep-alive connections last
/// (nearly) forever, so that wrk's keep-alive connections never reconnect and stay on the real
/// server they started on; idle half-open ones are dropped after a few seconds.
fn config(dir: &Path, name: &str, port: u16) -> String {
    let dir = dir.display();
    format!(
        "worker_processes 1;\ndaemon off;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n\
         \x20 client_body_temp_path {dir}/tmp/body;\n  proxy_temp_path {dir}/tmp/proxy;\n\
         \x20 fastcgi_temp_path {dir}/tmp/fastcgi;\n  uwsgi_temp_path {dir}/tmp/uwsgi;\n\
         \x20 scgi_temp_path {dir}/tmp/scgi;\n\
         \x20 log_format status \"$status\";\n  access_log {dir}/access.log status;\n\
         \x20 keepalive_requests 1000000000;\n  keepalive_time 7d;\n  keepalive_timeout 1h;\n\
         \x20 client_header_timeout 5s;\n  send_timeout 5s;\n\
         \x20 server {{\n\
         \x20   listen {port};\n\
         \x20   location / {{ default_type text/plain; return 200 \"{name}\\n\"; }}\n\
         \x20   location = /health {{ access_log off; default_type text/plain; alias {dir}/healthy; }}\n\
         \x20 }}\n\
         }}\n"
    )
}

/// `program` inside `ns` at a lower priority (`nice`, which execs it: the pid is the program's).
/// Real servers and clients are other machines in production; here they share two cores with
/// the agent, whose start (the verifier runs in its bpf() call) they must not starve.
fn niced(ns: &Netns, program: &str) -> std::process::Command {
    let mut cmd = ns.command("nice");
    cmd.args(["-n", "10", program]);
    cmd
}

fn spawn_nginx(ns: &Netns, dir: &Path, conf: &Path) -> Result<Proc> {
    // -e: the error log before the configuration is read (else the package's /var/log/nginx).
    let mut cmd = niced(ns, "nginx");
    cmd.arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(conf)
        .arg("-e")
        .arg(dir.join("error.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    Proc::spawn(&mut cmd, format!("nginx in {}", ns.name()))
}

/// What a wrk run reports: completed requests and every kind of failure it counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WrkSummary {
    pub requests: u64,
    pub connect_errors: u64,
    pub read_errors: u64,
    pub write_errors: u64,
    /// Requests without an answer after wrk's `--timeout`.
    pub timeouts: u64,
    /// Answers with a status of 400 or more (wrk's "Non-2xx or 3xx responses").
    pub bad_status: u64,
}

impl WrkSummary {
    /// Failed requests of every kind.
    pub fn failures(&self) -> u64 {
        self.connect_errors + self.read_errors + self.write_errors + self.timeouts + self.bad_status
    }

    /// Parses wrk's summary: `N requests in ...`, and the lines wrk prints only when they are
    /// not zero, `Socket errors: connect C, read R, write W, timeout T` and `Non-2xx or 3xx
    /// responses: N`.
    pub fn parse(output: &str) -> Result<Self> {
        let mut summary = Self::default();
        let mut requests = None;
        for line in output.lines().map(str::trim) {
            if let Some((n, _)) = line.split_once(" requests in ") {
                requests = Some(n.parse().with_context(|| format!("wrk: {line:?}"))?);
            } else if let Some(errors) = line.strip_prefix("Socket errors:") {
                for part in errors.split(',') {
                    let (kind, n) = part
                        .trim()
                        .split_once(' ')
                        .with_context(|| format!("wrk: {line:?}"))?;
                    let n = n.parse().with_context(|| format!("wrk: {line:?}"))?;
                    match kind {
                        "connect" => summary.connect_errors = n,
                        "read" => summary.read_errors = n,
                        "write" => summary.write_errors = n,
                        "timeout" => summary.timeouts = n,
                        _ => bail!("wrk: unknown socket error kind in {line:?}"),
                    }
                }
            } else if let Some(n) = line.strip_prefix("Non-2xx or 3xx responses:") {
                summary.bad_status = n.trim().parse().with_context(|| format!("wrk: {line:?}"))?;
            }
        }
        summary.requests = requests.with_context(|| format!("no request count in:\n{output}"))?;
        Ok(summary)
    }
}

/// A wrk run in the background (one thread), until [`Wrk::finish`] interrupts it.
pub struct Wrk {
    proc: Proc,
    what: String,
}

impl Wrk {
    /// wrk's own limit on its run: the test ends it earlier with [`Wrk::finish`].
    const MAX_RUN: Duration = Duration::from_secs(24 * 3600);
    /// How long a request may take before wrk counts it as a timeout: generous, since the soak
    /// counts failures, not slowness, on a machine that runs everything on two cores.
    const TIMEOUT: &'static str = "30s";

    /// Starts wrk inside `ns` on `url` with `connections` connections, kept alive, or closed
    /// after every request (`close`: each request on a new connection).
    pub fn start(ns: &Netns, url: &str, connections: u32, close: bool) -> Result<Self> {
        let what = format!(
            "wrk ({connections} connections{}) in {}",
            if close { ", Connection: close" } else { "" },
            ns.name()
        );
        let duration = format!("{}s", Self::MAX_RUN.as_secs());
        let connections = connections.to_string();
        let mut cmd = niced(ns, "wrk");
        cmd.args(["-t1", "-c", &connections, "-d", &duration])
            .args(["--timeout", Self::TIMEOUT]);
        if close {
            cmd.args(["-H", "Connection: close"]);
        }
        cmd.arg(url).stdin(Stdio::null()).stdout(Stdio::piped());
        let proc = Proc::spawn(&mut cmd, &what)?;
        Ok(Self { proc, what })
    }

    /// Interrupts wrk (SIGINT: it stops and prints its summary) and returns the summary.
    pub fn finish(mut self) -> Result<WrkSummary> {
        let mut stdout = self.proc.stdout().context("wrk's stdout")?;
        // It fails only if wrk has exited already: its status and output then say why.
        let _ = self.proc.signal(libc::SIGINT);
        let mut output = String::new();
        stdout.read_to_string(&mut output)?;
        let status = self
            .proc
            .wait_for(Duration::from_secs(10))
            .with_context(|| format!("{} did not exit on SIGINT", self.what))?;
        if !status.success() {
            bail!("{} failed ({status}):\n{output}", self.what);
        }
        WrkSummary::parse(&output).with_context(|| self.what.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_with_errors_is_read_in_full() {
        let output = "Running 3s test @ http://10.0.0.100:8080/\n  1 threads and 4 connections\n\
            \x20 Thread Stats   Avg      Stdev     Max   +/- Stdev\n\
            \x20   Latency   174.40us  250.22us   8.16ms   96.31%\n\
            \x20 35278 requests in 3.00s, 4.91MB read\n\
            \x20 Socket errors: connect 1, read 2, write 3, timeout 4\n\
            \x20 Non-2xx or 3xx responses: 5\nRequests/sec:  11756.95\nTransfer/sec:      1.64MB\n";
        let summary = WrkSummary::parse(output).unwrap();
        assert_eq!(
            summary,
            WrkSummary {
                requests: 35278,
                connect_errors: 1,
                read_errors: 2,
                write_errors: 3,
                timeouts: 4,
                bad_status: 5,
            }
        );
        assert_eq!(summary.failures(), 15);
    }

    #[test]
    fn a_clean_summary_has_no_failures_and_a_missing_count_is_an_error() {
        let clean = "  152743 requests in 3.10s, 22.00MB read\nRequests/sec:  49270.08\n";
        let summary = WrkSummary::parse(clean).unwrap();
        assert_eq!((summary.requests, summary.failures()), (152743, 0));
        assert!(WrkSummary::parse("unable to connect to 10.0.0.100:8080\n").is_err());
    }
}
