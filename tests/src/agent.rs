//! The `xdplb` agent and CLI as the tests drive them: the agent runs inside the director's
//! namespace, the CLI anywhere (the control socket is a filesystem path).

use std::ffi::OsString;
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

/// An `xdplb` process inside a namespace, with its own temporary directory (for a control socket)
/// holding a log file of its stdout and stderr. Stopped with SIGTERM on Drop, which prints the log
/// if the test is panicking and removes the directory.
struct XdplbProc {
    proc: Proc,
    what: String,
    dir: PathBuf,
    log: PathBuf,
}

/// The bpffs the agents of the tests pin under, mounted here, in the root mount namespace: an
/// agent runs under `ip netns exec`, whose own /sys is a fresh sysfs, and a bpffs it mounted
/// itself would vanish (with its pins) when it dies — and surviving its death is what pins are for.
pub fn bpffs() -> Result<PathBuf> {
    let root = PathBuf::from("/run/xdplb-tests/bpffs");
    lb_user::datapath::pin::ensure_bpffs(&root)?;
    Ok(root)
}

impl XdplbProc {
    const READY_TIMEOUT: Duration = Duration::from_secs(10);

    /// Starts `xdplb <args(dir)>` inside `ns`; `role` names it and its directory, `dir`, which
    /// `args` may use.
    fn start(ns: &Netns, role: &str, args: impl FnOnce(&Path) -> Vec<OsString>) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("{}-{role}", names::unique_prefix()));
        std::fs::create_dir_all(&dir)?;
        let log = dir.join(format!("{role}.log"));
        let what = format!("xdplb {role} in {}", ns.name());
        let spawned = (|| {
            let out = File::create(&log)?;
            let mut cmd = ns.command(xdplb_bin());
            cmd.env("XDPLB_BPFFS", bpffs()?);
            cmd.args(args(&dir))
                .stdin(Stdio::null())
                .stdout(out.try_clone()?)
                .stderr(out);
            Proc::spawn(&mut cmd, what.clone())
        })();
        match spawned {
            Ok(proc) => Ok(Self {
                proc,
                what,
                dir,
                log,
            }),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    /// Waits until `ready` holds; fails with the log if the process exits first or it takes
    /// longer than [`Self::READY_TIMEOUT`].
    fn wait_until(&mut self, what: &str, mut ready: impl FnMut() -> bool) -> Result<()> {
        let deadline = Instant::now() + Self::READY_TIMEOUT;
        while !ready() {
            if let Some(status) = self.proc.try_wait() {
                bail!(
                    "{} exited ({status}) before {what}:\n{}",
                    self.what,
                    self.log()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{}: not {what} after {:?}:\n{}",
                    self.what,
                    Self::READY_TIMEOUT,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for XdplbProc {
    fn drop(&mut self) {
        let status = self.proc.stop();
        if std::thread::panicking() {
            eprintln!("{} ({status}) log:\n{}", self.what, self.log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A running `xdplb run` agent, stopped with SIGTERM on Drop. Its stdout and stderr go to a log
/// file, printed if the test is panicking when the agent is dropped.
pub struct Agent {
    proc: XdplbProc,
    socket: PathBuf,
    echo: bool,
}

impl Agent {
    /// Starts `xdplb run --iface <iface> --socket <tmp> <extra_args>` inside `ns` and waits until
    /// its control socket exists.
    pub fn start(ns: &Netns, iface: &str, extra_args: &[&str]) -> Result<Self> {
        let mut socket = PathBuf::new();
        let mut proc = XdplbProc::start(ns, "agent", |dir| {
            socket = dir.join("xdplb.sock");
            let args = ["run", "--iface", iface, "--socket"].map(OsString::from);
            let extra = extra_args.iter().map(OsString::from);
            args.into_iter()
                .chain([socket.clone().into_os_string()])
                .chain(extra)
                .collect()
        })?;
        proc.wait_until("ready (its control socket exists)", || socket.exists())?;
        Ok(Self {
            proc,
            socket,
            echo: false,
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Stops the agent now (SIGTERM) and returns how it exited; Drop then only cleans up.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        self.proc.proc.stop()
    }

    /// What the agent wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        self.proc.log()
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

/// A running `xdplb decap` (the LVS/TUN real server's decapsulation program), stopped with
/// SIGTERM on Drop; its output is printed if the test is panicking then.
pub struct Decap {
    _proc: XdplbProc,
}

impl Decap {
    /// Starts `xdplb decap --iface <iface> <extra_args>` inside `ns` and waits until an XDP
    /// program is attached to `iface`.
    pub fn start(ns: &Netns, iface: &str, extra_args: &[&str]) -> Result<Self> {
        let mut proc = XdplbProc::start(ns, "decap", |_| {
            let args = ["decap", "--iface", iface]
                .into_iter()
                .chain(extra_args.iter().copied());
            args.map(OsString::from).collect()
        })?;
        proc.wait_until(&format!("attached to {iface}"), || {
            ns.xdp_attached(iface).unwrap_or(false)
        })?;
        Ok(Self { _proc: proc })
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
        self.real_entries(addr)
            .iter()
            .map(|r| r["address"].as_str().expect("real address").to_owned())
            .collect()
    }

    /// A real server of a service as listed, by its address ("RIP:PORT").
    pub fn real(&self, addr: &str, real: &str) -> &Value {
        self.real_entries(addr)
            .iter()
            .find(|r| r["address"] == real)
            .unwrap_or_else(|| panic!("no real server {real} in service {addr}: {}", self.0))
    }

    fn real_entries(&self, addr: &str) -> &[Value] {
        let service = self
            .service(addr)
            .unwrap_or_else(|| panic!("no service {addr} in {}", self.0));
        service["reals"].as_array().map_or(&[], Vec::as_slice)
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
