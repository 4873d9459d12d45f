//! The distribution's routing and failover daemons, started by the tests inside their
//! namespaces with their own configuration, pid and control-socket paths (never as system
//! services): keepalived for VRRP, BIRD for BGP. `cargo xtask test` installs the packages.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use crate::netns::{command_in, run, Netns, Proc};

/// Whether `program` is installed (on PATH). Tests call it after [`crate::require_root`] and
/// return early when it is false; under CI (env `CI` set) a missing program is a failure.
pub fn require_program(program: &str, package: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()));
    if found {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{program} is not installed and CI is set: `cargo xtask test` installs {package}");
    }
    eprintln!("skipped: needs {program} (apt-get install {package}; cargo xtask test does)");
    false
}

/// A daemon's files in a test directory: its configuration, log and pid files.
fn files(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{name}.conf")),
        dir.join(format!("{name}.log")),
    )
}

/// Starts `program` inside the namespace named `ns`, its output appended to `log`.
fn spawn_logged(ns: &str, program: &str, args: &[&str], log: &Path) -> Result<Proc> {
    let out = OpenOptions::new().create(true).append(true).open(log)?;
    let mut cmd = command_in(ns, program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    Proc::spawn(&mut cmd, format!("{program} in {ns}"))
}

/// keepalived (VRRP) in a namespace, in the foreground (`-n`), logging to a file; stopped with
/// SIGTERM on Drop (it then gives the VIP up cleanly).
pub struct Keepalived {
    proc: Proc,
    ns: String,
    args: Vec<String>,
    log: PathBuf,
    vrrp_pid: PathBuf,
}

impl Keepalived {
    /// Writes `config` as `<dir>/<name>.conf` and starts keepalived on it inside `ns`.
    pub fn start(ns: &Netns, dir: &Path, name: &str, config: &str) -> Result<Self> {
        let (conf, log) = files(dir, name);
        std::fs::write(&conf, config)?;
        let pid = dir.join(format!("{name}.pid"));
        let vrrp_pid = dir.join(format!("{name}-vrrp.pid"));
        let args: Vec<String> = [
            "-n",
            "-l",
            "-D",
            "-f",
            conf.to_str().context("path")?,
            "-p",
            pid.to_str().context("path")?,
            "-r",
            vrrp_pid.to_str().context("path")?,
        ]
        .map(String::from)
        .to_vec();
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let proc = spawn_logged(ns.name(), "keepalived", &argv, &log)?;
        Ok(Self {
            proc,
            ns: ns.name().to_owned(),
            args,
            log,
            vrrp_pid,
        })
    }

    /// Kills keepalived with SIGKILL, its VRRP process included, as a crash would: nothing gives
    /// the VIP up (the dead master keeps it configured).
    pub fn kill(&mut self) {
        if let Some(pid) = std::fs::read_to_string(&self.vrrp_pid)
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        {
            // SAFETY: kill(2) of keepalived's VRRP child, which we started through its parent.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        self.proc.kill();
    }

    /// Starts keepalived again with the same configuration, after [`Keepalived::kill`].
    pub fn restart(&mut self) -> Result<()> {
        let _ = std::fs::remove_file(&self.vrrp_pid);
        let argv: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.proc = spawn_logged(&self.ns, "keepalived", &argv, &self.log)?;
        Ok(())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Keepalived {
    fn drop(&mut self) {
        self.proc.stop();
        if std::thread::panicking() {
            eprintln!("keepalived in {} log:\n{}", self.ns, self.log());
        }
    }
}

/// BIRD (BGP, BFD, the kernel's routes) in a namespace, in the foreground (`-f`), with its own
/// control socket; stopped with SIGTERM on Drop.
pub struct Bird {
    proc: Proc,
    ns: String,
    socket: PathBuf,
    log: PathBuf,
}

impl Bird {
    /// Writes `config` as `<dir>/<name>.conf` and starts BIRD on it inside `ns`.
    pub fn start(ns: &Netns, dir: &Path, name: &str, config: &str) -> Result<Self> {
        let (conf, log) = files(dir, name);
        std::fs::write(&conf, config)?;
        let socket = dir.join(format!("{name}.ctl"));
        let pid = dir.join(format!("{name}.pid"));
        let proc = spawn_logged(
            ns.name(),
            "bird",
            &[
                "-f",
                "-c",
                conf.to_str().context("path")?,
                "-s",
                socket.to_str().context("path")?,
                "-P",
                pid.to_str().context("path")?,
            ],
            &log,
        )?;
        let bird = Self {
            proc,
            ns: ns.name().to_owned(),
            socket,
            log,
        };
        let start = Instant::now();
        while bird.birdc("show status").is_err() {
            if start.elapsed() > Duration::from_secs(10) {
                bail!("BIRD in {} did not start:\n{}", bird.ns, bird.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(bird)
    }

    /// `birdc -s <socket> <command>`: its output.
    pub fn birdc(&self, command: &str) -> Result<String> {
        let mut cmd = Command::new("birdc");
        cmd.arg("-s")
            .arg(&self.socket)
            .args(command.split_whitespace());
        run(&mut cmd)
    }

    /// Waits until BGP protocol `name` is Established.
    pub fn wait_established(&self, name: &str, limit: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            let out = self.birdc(&format!("show protocols {name}"))?;
            if out.contains("Established") {
                return Ok(());
            }
            if start.elapsed() > limit {
                bail!(
                    "BGP session {name} in {} not established: {out}\n{}",
                    self.ns,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops BIRD (SIGTERM: it closes its sessions).
    pub fn stop(&mut self) {
        self.proc.stop();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        self.proc.stop();
        if std::thread::panicking() {
            eprintln!("BIRD in {} log:\n{}", self.ns, self.log());
        }
    }
}
