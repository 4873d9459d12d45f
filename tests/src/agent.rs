//! The `xdplb` agent and CLI as the tests drive them: the agent runs inside the director's
//! namespace, the CLI anywhere (the control socket is a filesystem path).

use std::fs::File;
use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::Value;

use crate::names;
use crate::netns::{Netns, Proc};

/// The `xdplb` binary (agent and CLI).
pub fn xdplb_bin() -> PathBuf {
    crate::binary(
        "XDPLB_BIN",
        "xdplb",
        "cargo build -p lb-user (cargo xtask test does)",
    )
}

/// Runs `xdplb --socket <socket> <args>` to completion.
pub fn cli(socket: &Path, args: &[&str]) -> Output {
    Command::new(xdplb_bin())
        .arg("--socket")
        .arg(socket)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("cannot run xdplb")
}

/// A running `xdplb run` agent, stopped with SIGTERM on Drop. Its stdout and stderr go to a log
/// file, printed if the test is panicking when the agent is dropped.
pub struct Agent {
    proc: Proc,
    dir: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    echo: bool,
}

impl Agent {
    const READY_TIMEOUT: Duration = Duration::from_secs(10);

    /// Starts `xdplb run --iface <iface> --socket <tmp> <extra_args>` inside `ns` and waits until
    /// its control socket exists.
    pub fn start(ns: &Netns, iface: &str, extra_args: &[&str]) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("{}-agent", names::unique_prefix()));
        std::fs::create_dir_all(&dir)?;
        let socket = dir.join("xdplb.sock");
        let log = dir.join("agent.log");
        let out = File::create(&log)?;
        let mut cmd = ns.command(xdplb_bin());
        cmd.args(["run", "--iface", iface, "--socket"])
            .arg(&socket)
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let proc = match Proc::spawn(&mut cmd, format!("xdplb agent in {}", ns.name())) {
            Ok(proc) => proc,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let mut agent = Self {
            proc,
            dir,
            socket,
            log,
            echo: false,
        }; // from here on, Drop cleans up

        let deadline = Instant::now() + Self::READY_TIMEOUT;
        while !agent.socket.exists() {
            if let Some(status) = agent.proc.try_wait() {
                bail!(
                    "xdplb run exited ({status}) before it was ready:\n{}",
                    agent.log()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "xdplb run: no socket after {:?}:\n{}",
                    Self::READY_TIMEOUT,
                    agent.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(agent)
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Stops the agent now (SIGTERM) and returns how it exited; Drop then only cleans up.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        self.proc.stop()
    }

    /// What the agent wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Print every CLI command before running it (the demo shows what it does).
    pub fn set_echo(&mut self, on: bool) {
        self.echo = on;
    }

    /// Runs `xdplb --socket <this agent's socket> <args>`.
    pub fn cli(&self, args: &[&str]) -> Output {
        if self.echo {
            println!(
                "$ xdplb --socket {} {}",
                self.socket.display(),
                args.join(" ")
            );
        }
        cli(&self.socket, args)
    }

    /// Like [`Agent::cli`], but panics unless the command succeeds; returns its stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "xdplb {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        String::from_utf8(out.stdout).expect("xdplb prints UTF-8")
    }

    /// `xdplb simulate <proto> <service> --from SRC:PORT...`, `proto` being `-t` or `-u`: the
    /// real server (RIP:PORT) a NEW flow from each of `flows` would get now, in their order.
    /// Panics unless every flow gets exactly one well-formed line.
    pub fn simulate(
        &self,
        proto: &str,
        service: &str,
        flows: &[SocketAddrV4],
    ) -> Vec<SocketAddrV4> {
        let mut args = vec!["simulate", proto, service];
        let flows_text: Vec<String> = flows.iter().map(ToString::to_string).collect();
        for flow in &flows_text {
            args.extend(["--from", flow]);
        }
        let out = self.cli_ok(&args);
        let reals: Vec<SocketAddrV4> = out
            .lines()
            .zip(flows)
            .map(|(line, flow)| {
                let parsed: Option<(SocketAddrV4, SocketAddrV4)> = line
                    .split_once(' ')
                    .and_then(|(src, real)| Some((src.parse().ok()?, real.parse().ok()?)));
                match parsed {
                    Some((src, real)) if src == *flow => real,
                    _ => panic!("simulate: {line:?} is not \"{flow} RIP:PORT\" in:\n{out}"),
                }
            })
            .collect();
        assert_eq!(
            out.lines().count(),
            flows.len(),
            "simulate: one line per flow expected, got:\n{out}"
        );
        reals
    }

    /// `xdplb list --stats --json`, parsed.
    pub fn list(&self) -> Listing {
        let json = self.cli_ok(&["list", "--stats", "--json"]);
        Listing(
            serde_json::from_str(&json).unwrap_or_else(|e| panic!("bad list JSON ({e}): {json}")),
        )
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let status = self.proc.stop();
        if std::thread::panicking() {
            eprintln!("xdplb agent ({status}) log:\n{}", self.log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The output of `xdplb list --stats --json`, with accessors that panic on a missing field (a
/// missing field is a contract violation the test should report).
#[derive(Clone, Debug, PartialEq)]
pub struct Listing(pub Value);

impl Listing {
    pub fn services(&self) -> &[Value] {
        self.0["services"].as_array().map_or(&[], Vec::as_slice)
    }

    /// The service with address `addr` ("VIP:PORT").
    pub fn service(&self, addr: &str) -> Option<&Value> {
        self.services().iter().find(|s| s["address"] == addr)
    }

    /// A counter of a service: "conns", "packets" or "bytes".
    pub fn service_stat(&self, addr: &str, stat: &str) -> u64 {
        let service = self
            .service(addr)
            .unwrap_or_else(|| panic!("no service {addr} in {}", self.0));
        counter(&service["stats"][stat], stat)
    }

    /// Addresses ("RIP:PORT") of a service's real servers.
    pub fn reals(&self, addr: &str) -> Vec<String> {
        let service = self
            .service(addr)
            .unwrap_or_else(|| panic!("no service {addr} in {}", self.0));
        let reals = service["reals"].as_array().map_or(&[][..], Vec::as_slice);
        reals
            .iter()
            .map(|r| r["address"].as_str().expect("real address").to_owned())
            .collect()
    }

    /// A datapath reason counter, e.g. "pass_no_service".
    pub fn reason(&self, name: &str) -> u64 {
        counter(&self.0["reasons"][name], name)
    }
}

fn counter(value: &Value, name: &str) -> u64 {
    value
        .as_u64()
        .unwrap_or_else(|| panic!("counter {name} missing or not a number: {value}"))
}
