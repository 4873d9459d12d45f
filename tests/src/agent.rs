//! The `xdplb` agent and CLI as the tests drive them: the agent runs inside the director's
//! namespace, the CLI anywhere (the control socket is a filesystem path).

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::OpenOptions;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use lb_user::control::Request;
use serde_json::Value;

use crate::names;
use crate::netns::{command_in, Netns, Proc};

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

/// Runs `xdplb <args>` to completion inside `ns`, with the tests' bpffs ([`bpffs`]): for the
/// commands that work on an interface of the namespace rather than through an agent's socket
/// (`xdplb detach --iface IF`).
pub fn xdplb_in(ns: &Netns, args: &[&str]) -> Result<Output> {
    xdplb_in_named(ns.name(), args)
}

fn xdplb_in_named(ns: &str, args: &[&str]) -> Result<Output> {
    xdplb_command(ns, args)?
        .output()
        .context("cannot run xdplb")
}

/// `xdplb <args>` inside namespace `ns`, pinning under [`bpffs`], stdin closed.
fn xdplb_command(ns: &str, args: &[impl AsRef<OsStr>]) -> Result<Command> {
    launched_command(ns, &[], args)
}

/// [`xdplb_command`] started through `launcher` (a program and its arguments, which runs the
/// rest: `setpriv ...`), or directly when it is empty.
fn launched_command(
    ns: &str,
    launcher: &[OsString],
    args: &[impl AsRef<OsStr>],
) -> Result<Command> {
    let mut cmd = match launcher.split_first() {
        Some((program, rest)) => {
            let mut c = command_in(ns, program);
            c.args(rest).arg(xdplb_bin());
            c
        }
        None => command_in(ns, xdplb_bin()),
    };
    cmd.env("XDPLB_BPFFS", bpffs()?)
        .args(args)
        .stdin(Stdio::null());
    Ok(cmd)
}

/// An `xdplb` process inside a namespace, with its own temporary directory (for a control socket
/// and a config file) holding a log file of its stdout and stderr. It can be started again with
/// the same arguments once it has exited. Stopped with SIGTERM on Drop, which prints the log if
/// the test is panicking and removes the directory.
struct XdplbProc {
    proc: Proc,
    what: String,
    ns: String,
    launcher: Vec<OsString>,
    args: Vec<OsString>,
    dir: PathBuf,
    log: PathBuf,
}

/// Where the tests' bpffs is mounted (see [`bpffs`]).
const BPFFS: &str = "/run/xdplb-tests/bpffs";

/// The bpffs the agents of the tests pin under, mounted here, in the root mount namespace: an
/// agent runs under `ip netns exec`, whose own /sys is a fresh sysfs, and a bpffs it mounted
/// itself would vanish (with its pins) when it dies — and surviving its death is what pins are for.
pub fn bpffs() -> Result<PathBuf> {
    let root = PathBuf::from(BPFFS);
    lb_user::datapath::pin::ensure_bpffs(&root)?;
    Ok(root)
}

/// Removes the pins of agents whose network namespace no longer exists (left by a run killed
/// before its guards ran, whose agents died with their namespaces), and their directories under
/// /run/xdplb (lock, saved state). The kernel reuses the number of a deleted namespace, and an
/// agent started in a new namespace with that number would find the dead one's datapath.
pub(crate) fn remove_stale_pins() {
    let dirs = [
        Path::new(BPFFS).join("xdplb"),
        PathBuf::from(lb_user::agent::RUN_DIR),
    ];
    let entries: Vec<_> = dirs
        .iter()
        .filter_map(|dir| std::fs::read_dir(dir).ok())
        .flatten()
        .flatten()
        .collect();
    // Looked up after the entries: an entry's namespace existed before it, so a live one is
    // found even if it was created a moment ago.
    let live = live_netns_inodes();
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        let inode = name
            .strip_prefix("net")
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(inode, _)| inode.parse::<u64>().ok());
        if inode.is_some_and(|inode| !live.contains(&inode)) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The inode numbers of every network namespace that exists: named ones and those of every
/// thread of every process.
fn live_netns_inodes() -> HashSet<u64> {
    let named = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path());
    let threads = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|p| std::fs::read_dir(p.path().join("task")).ok())
        .flatten()
        .flatten()
        .map(|t| t.path().join("ns/net"));
    named
        .chain(threads)
        .filter_map(|path| std::fs::metadata(path).ok())
        .map(|m| m.ino())
        .collect()
}

impl XdplbProc {
    /// A start loads the program (the verifier takes about 5 s on these machines); a restart
    /// that finds its pinned datapath stale loads it twice.
    const READY_TIMEOUT: Duration = Duration::from_secs(30);

    /// Starts `xdplb <args(dir)>` inside `ns`; `role` names it and its directory, `dir`, which
    /// `args` may use (and put files in).
    fn start(
        ns: &Netns,
        role: &str,
        launcher: &[OsString],
        args: impl FnOnce(&Path) -> Result<Vec<OsString>>,
    ) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("{}-{role}", names::unique_prefix()));
        std::fs::create_dir_all(&dir)?;
        let log = dir.join(format!("{role}.log"));
        let what = format!("xdplb {role} in {}", ns.name());
        let spawned = args(&dir).and_then(|args| {
            let proc = spawn_xdplb(ns.name(), launcher, &args, &log, &what)?;
            Ok((proc, args))
        });
        match spawned {
            Ok((proc, args)) => Ok(Self {
                proc,
                what,
                ns: ns.name().to_owned(),
                launcher: launcher.to_vec(),
                args,
                dir,
                log,
            }),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    /// Starts the same command again, once the last one has exited; the log goes on.
    fn respawn(&mut self) -> Result<()> {
        if self.proc.try_wait().is_none() {
            bail!("{} is still running: it cannot be started again", self.what);
        }
        self.proc = spawn_xdplb(&self.ns, &self.launcher, &self.args, &self.log, &self.what)?;
        Ok(())
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

/// Starts `xdplb <args>` in namespace `ns`, stdout and stderr appended to `log`.
fn spawn_xdplb(
    ns: &str,
    launcher: &[OsString],
    args: &[OsString],
    log: &Path,
    what: &str,
) -> Result<Proc> {
    let out = OpenOptions::new().create(true).append(true).open(log)?;
    let mut cmd = launched_command(ns, launcher, args)?;
    cmd.stdout(out.try_clone()?).stderr(out);
    Proc::spawn(&mut cmd, what)
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
///
/// It can be killed ([`Agent::kill`], leaving its datapath pinned and forwarding) and started
/// again with the same arguments ([`Agent::restart`]). On Drop, a datapath a killed agent left
/// pinned is removed with `xdplb detach`, so that nothing outlives the test.
pub struct Agent {
    proc: XdplbProc,
    socket: PathBuf,
    config: Option<PathBuf>,
    /// The interface and the directory it pins under, when known (not for an unreadable config).
    pins: Option<(String, PathBuf)>,
    echo: bool,
}

impl Agent {
    /// Starts `xdplb run --iface <iface> --socket <tmp> <extra_args>` inside `ns` and waits until
    /// it answers on its control socket.
    pub fn start(ns: &Netns, iface: &str, extra_args: &[&str]) -> Result<Self> {
        Self::launch(ns, &[], Some(iface), None, extra_args)
    }

    /// Writes `config` (TOML, see examples/xdplb.toml) to a file in the agent's directory
    /// ([`Agent::config_path`]), starts `xdplb run --config <file> --socket <tmp>` inside `ns` and
    /// waits until it answers on its control socket.
    pub fn start_with_config(ns: &Netns, config: &str) -> Result<Self> {
        let source = lb_user::config::Source {
            path: PathBuf::from("xdplb.toml"),
            text: config.to_owned(),
        };
        let iface = source.parse().ok().map(|c| c.interface);
        Self::launch(ns, &[], iface.as_deref(), Some(config), &[])
    }

    /// [`Agent::start`] with only the capabilities `caps` (setpriv's names: `bpf`, `net_admin`,
    /// ...) in its bounding set, as a systemd unit's CapabilityBoundingSet leaves a root service.
    pub fn start_with_capabilities(ns: &Netns, iface: &str, caps: &[&str]) -> Result<Self> {
        let set: String = caps.iter().map(|c| format!(",+{c}")).collect();
        let launcher = [
            "setpriv".to_owned(),
            format!("--bounding-set=-all{set}"),
            "--".to_owned(),
        ]
        .map(OsString::from);
        Self::launch(ns, &launcher, Some(iface), None, &[])
    }

    fn launch(
        ns: &Netns,
        launcher: &[OsString],
        iface: Option<&str>,
        config: Option<&str>,
        extra_args: &[&str],
    ) -> Result<Self> {
        let (mut socket, mut config_path) = (PathBuf::new(), None);
        let proc = XdplbProc::start(ns, "agent", launcher, |dir| {
            socket = dir.join("xdplb.sock");
            let mut args = vec![OsString::from("run")];
            match config {
                Some(text) => {
                    let path = dir.join("xdplb.toml");
                    std::fs::write(&path, text)?;
                    args.extend(["--config".into(), path.clone().into_os_string()]);
                    config_path = Some(path);
                }
                None => args.extend(["--iface", iface.unwrap_or_default()].map(OsString::from)),
            }
            args.extend(["--socket".into(), socket.clone().into_os_string()]);
            args.extend(extra_args.iter().map(OsString::from));
            Ok(args)
        })?;
        let pins = match iface {
            Some(iface) => {
                let dir = format!("net{}-{iface}", ns.inode()?);
                Some((iface.to_owned(), bpffs()?.join("xdplb").join(dir)))
            }
            None => None,
        };
        let mut agent = Self {
            proc,
            socket,
            config: config_path,
            pins,
            echo: false,
        };
        agent.wait_ready()?;
        Ok(agent)
    }

    /// Waits until the agent answers a `list` request on its socket (a socket file alone may be
    /// the one a killed agent left behind).
    fn wait_ready(&mut self) -> Result<()> {
        let socket = self.socket.clone();
        self.proc
            .wait_until("ready (answering on its control socket)", || {
                lb_user::control::request(&socket, &Request::List).is_ok()
            })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The config file the agent was started with ([`Agent::start_with_config`]); rewrite it
    /// with [`Agent::write_config`].
    pub fn config_path(&self) -> Option<&Path> {
        self.config.as_deref()
    }

    /// Replaces the content of the agent's config file (nothing happens until a reload).
    pub fn write_config(&self, config: &str) -> Result<()> {
        let path = self
            .config
            .as_ref()
            .context("the agent was not started with a config file")?;
        std::fs::write(path, config).with_context(|| format!("cannot write {}", path.display()))
    }

    /// The directory in the tests' bpffs ([`bpffs`]) the agent pins its datapath under:
    /// `xdplb/net<netns inode>-<interface>`. None if its config could not be read.
    pub fn pin_dir(&self) -> Option<&Path> {
        self.pins.as_ref().map(|(_, dir)| dir.as_path())
    }

    /// The agent's process id (of its current run).
    pub fn pid(&self) -> u32 {
        self.proc.proc.pid()
    }

    /// Sends a signal to the agent, e.g. `libc::SIGHUP` (reload).
    pub fn signal(&mut self, signal: libc::c_int) -> Result<()> {
        self.proc.proc.signal(signal)
    }

    /// Kills the agent with SIGKILL, as a crash would, and reaps it: its datapath stays attached,
    /// pinned, and forwarding, and its socket file stays behind.
    pub fn kill(&mut self) -> std::process::ExitStatus {
        self.proc.proc.kill()
    }

    /// Waits up to `timeout` for the agent to exit by itself (e.g. after [`Agent::signal`]);
    /// its exit status if it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        self.proc.proc.wait_for(timeout)
    }

    /// Starts the agent again after it exited ([`Agent::kill`], [`Agent::stop`]), with the same
    /// arguments, socket and config file, and waits until it answers on its socket.
    pub fn restart(&mut self) -> Result<()> {
        self.proc.respawn()?;
        self.wait_ready()
    }

    /// Stops the agent now (SIGTERM) and returns how it exited; Drop then only cleans up.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        self.proc.proc.stop()
    }

    /// Stops the agent with SIGTERM and panics unless it exits 0 having detached and cleaned up:
    /// no XDP program on its interface in `ns` (its namespace), no pins, no socket.
    pub fn stop_detached(&mut self, ns: &Netns) {
        let status = self.stop();
        assert!(
            status.success(),
            "agent exit on SIGTERM: {status}\n{}",
            self.log()
        );
        if let Some((iface, dir)) = &self.pins {
            let attached = ns.xdp_attached(iface).expect("ip link");
            assert!(!attached, "XDP still attached to {iface} after SIGTERM");
            assert!(
                !dir.exists(),
                "pins left after SIGTERM in {}",
                dir.display()
            );
        }
        assert!(!self.socket.exists(), "socket left after SIGTERM");
    }

    /// What the agent wrote to stdout and stderr so far (over all its runs).
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

    /// `xdplb real edit -t SERVICE -r RIP --check CHECK`: gives a real server a health check.
    pub fn set_check(&self, service: &str, rip: &str, check: &str) {
        self.cli_ok(&["real", "edit", "-t", service, "-r", rip, "--check", check]);
    }

    /// `xdplb simulate <proto> <service> --from SRC:PORT...`, `proto` being `-t` or `-u`: the
    /// real server (RIP:PORT) a NEW flow from each of `flows` would get now, in their order.
    /// Panics unless every flow gets exactly one well-formed line.
    pub fn simulate<A>(&self, proto: &str, service: &str, flows: &[A]) -> Vec<A>
    where
        A: std::str::FromStr + std::fmt::Display + PartialEq,
    {
        let mut args = vec!["simulate", proto, service];
        let flows_text: Vec<String> = flows.iter().map(ToString::to_string).collect();
        for flow in &flows_text {
            args.extend(["--from", flow]);
        }
        let out = self.cli_ok(&args);
        let reals: Vec<A> = out
            .lines()
            .zip(flows)
            .map(|(line, flow)| {
                let parsed: Option<(A, A)> = line
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

    /// `xdplb save`: the running state as a config file.
    pub fn save(&self) -> String {
        self.cli_ok(&["save"])
    }

    /// `xdplb list --stats --json`, parsed.
    pub fn list(&self) -> Listing {
        self.list_json(&["list", "--stats", "--json"])
    }

    /// `xdplb list --json` (no counters), parsed, without the connections each real server has
    /// now and without the agent's own figures: the configuration the agent runs.
    pub fn list_config(&self) -> Listing {
        let mut l = self.list_json(&["list", "--json"]);
        // The agent's own figures (reloads, start time, program) are not configuration.
        if let Some(o) = l.0.as_object_mut() {
            o.remove("agent");
        }
        for svc in l.0["services"].as_array_mut().into_iter().flatten() {
            for real in svc["reals"].as_array_mut().into_iter().flatten() {
                if let Some(r) = real.as_object_mut() {
                    r.remove("active_conns");
                    r.remove("inactive_conns");
                    r.remove("persistent_conns");
                }
            }
        }
        l
    }

    /// `xdplb list --rate --json` (counters per second, measured over one second), parsed.
    pub fn list_rate(&self) -> Listing {
        self.list_json(&["list", "--rate", "--json"])
    }

    fn list_json(&self, args: &[&str]) -> Listing {
        let json = self.cli_ok(args);
        Listing(
            serde_json::from_str(&json).unwrap_or_else(|e| panic!("bad list JSON ({e}): {json}")),
        )
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
        // A killed agent's datapath is still pinned (and attached): remove it as an operator
        // would, else it outlives the test. `xdplb detach` refuses while another agent runs on
        // the interface (a later one of the test, still running).
        let Some((iface, _)) = self.pins.as_ref().filter(|(_, dir)| dir.exists()) else {
            return;
        };
        match xdplb_in_named(&self.proc.ns, &["detach", "--iface", iface]) {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "warning: xdplb detach --iface {iface} in {}: {}",
                self.proc.ns,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => eprintln!("warning: {e:#}"),
        }
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
        let mut proc = XdplbProc::start(ns, "decap", &[], |_| {
            let args = ["decap", "--iface", iface]
                .into_iter()
                .chain(extra_args.iter().copied());
            Ok(args.map(OsString::from).collect())
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

    /// The service with address `addr` ("VIP:PORT"); the first one, if a TCP and a UDP service
    /// share it (see [`Listing::service_of`]).
    pub fn service(&self, addr: &str) -> Option<&Value> {
        self.services().iter().find(|s| s["address"] == addr)
    }

    /// The service of `protocol` ("tcp" or "udp") with address `addr` ("VIP:PORT").
    pub fn service_of(&self, protocol: &str, addr: &str) -> Option<&Value> {
        self.services()
            .iter()
            .find(|s| s["address"] == addr && s["protocol"] == protocol)
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
