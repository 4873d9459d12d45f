//! Network namespace and child process guards.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

/// A named network namespace (`/run/netns/<name>`), deleted on Drop together with every process
/// still running in it.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace and brings its loopback up.
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Self { name }; // from here on, Drop removes it
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <ns> <args>`; returns its stdout.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        run(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// Several `ip` commands, one per line, in one process (`ip -batch`): setting up dozens of
    /// addresses one process each is slow on these 2-core machines.
    pub fn ip_batch(&self, commands: &str) -> Result<()> {
        let mut child = Command::new("ip")
            .args(["-n", &self.name, "-batch", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot run ip")?;
        use std::io::Write as _;
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(commands.as_bytes())?;
        check(
            &format!("ip -n {} -batch", self.name),
            child.wait_with_output()?,
        )
        .map(drop)
    }

    /// A command running `program` inside the namespace. `ip netns exec` execs the program (no
    /// fork), so the child's pid is the program's own and signals reach it directly.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        command_in(&self.name, program)
    }

    /// The namespace's inode number: what tells network namespaces apart (`/proc/PID/ns/net`
    /// links to `net:[INODE]`). The kernel reuses the number of a deleted namespace.
    pub fn inode(&self) -> Result<u64> {
        use std::os::unix::fs::MetadataExt as _;
        let path = format!("/run/netns/{}", self.name);
        Ok(std::fs::metadata(&path)
            .with_context(|| format!("cannot stat {path}"))?
            .ino())
    }

    /// Runs a program inside the namespace to completion; fails with its stderr on a non-zero exit.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        run(self.command(program).args(args))
    }

    /// Starts a long-running program inside the namespace, stdout piped (see [`Proc::stdout`]).
    /// The returned guard stops it on Drop.
    pub fn spawn(&self, program: impl AsRef<OsStr>, args: &[&str]) -> Result<Proc> {
        let what = format!("{} in {}", program.as_ref().to_string_lossy(), self.name);
        Proc::spawn(
            self.command(program).args(args).stdout(Stdio::piped()),
            what,
        )
    }

    /// Moves the CALLING thread into the namespace, for good. Only for threads the caller owns
    /// (see [`Netns::run_in`] and [`Netns::thread`]); never call it on a test's own thread.
    pub fn enter(&self) -> Result<()> {
        enter(&self.name)
    }

    /// Runs `f` on a new thread inside the namespace and returns its result: sockets, ioctls,
    /// /proc/sys/net writes and XDP attachments made by `f` all happen in this namespace.
    /// A panic in `f` is propagated.
    pub fn run_in<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        std::thread::scope(|s| {
            let handle = s.spawn(|| {
                self.enter().expect("cannot enter the namespace");
                f()
            });
            handle
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Like [`Netns::run_in`] but without waiting: a background thread inside the namespace.
    pub fn thread<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> JoinHandle<R> {
        let name = self.name.clone();
        std::thread::spawn(move || {
            enter(&name).expect("cannot enter the namespace");
            f()
        })
    }

    /// Writes a sysctl of this namespace, e.g. `sysctl("net.ipv4.conf.all.arp_ignore", "1")`.
    /// /proc/sys/net resolves to the namespace of the thread that opens it.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        self.run_in(|| std::fs::write(&path, value))
            .with_context(|| format!("cannot set {key}={value} in {}", self.name))
    }

    /// IPv6 on, on every interface (a topology may have made its hosts IPv4-only, for quiet
    /// links; "all" reaches every device), and duplicate address detection off: addresses added
    /// afterwards work at once.
    pub fn enable_ipv6(&self) -> Result<()> {
        for conf in ["all", "default"] {
            self.sysctl(&format!("net.ipv6.conf.{conf}.accept_dad"), "0")?;
            self.sysctl(&format!("net.ipv6.conf.{conf}.disable_ipv6"), "0")?;
        }
        Ok(())
    }

    /// A permanent neighbour entry: `addr` is at `mac` on `dev` (as a takeover's gratuitous
    /// ARP or unsolicited neighbour advertisement would have it).
    pub fn pin_neighbour(&self, addr: impl std::fmt::Display, mac: &str, dev: &str) -> Result<()> {
        let addr = addr.to_string();
        self.ip(&[
            "neigh",
            "replace",
            &addr,
            "lladdr",
            mac,
            "dev",
            dev,
            "nud",
            "permanent",
        ])
        .map(drop)
    }

    /// The index of an interface of this namespace.
    pub fn ifindex(&self, ifname: &str) -> Result<u32> {
        let c_name = std::ffi::CString::new(ifname)?;
        // SAFETY: a valid NUL-terminated name.
        let index = self.run_in(|| unsafe { libc::if_nametoindex(c_name.as_ptr()) });
        if index == 0 {
            bail!("no interface {ifname} in {}", self.name);
        }
        Ok(index)
    }

    /// The packet and byte counters of an interface (`ip -s link show`).
    pub fn link_stats(&self, ifname: &str) -> Result<LinkStats> {
        let link = self.link_json(&["-s", "-j", "link", "show", "dev", ifname])?;
        let stats = &link["stats64"];
        let get = |dir: &str, what: &str| {
            stats[dir][what]
                .as_u64()
                .with_context(|| format!("no {dir} {what} for {ifname} in {}: {link}", self.name))
        };
        Ok(LinkStats {
            rx_packets: get("rx", "packets")?,
            rx_bytes: get("rx", "bytes")?,
            tx_packets: get("tx", "packets")?,
            tx_bytes: get("tx", "bytes")?,
        })
    }

    /// The MAC address of an interface, as `ip` prints it (`02:ab:...`).
    pub fn mac(&self, ifname: &str) -> Result<String> {
        let link = self.link_json(&["-j", "link", "show", "dev", ifname])?;
        link["address"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("no address for {ifname} in {}: {link}", self.name))
    }

    /// Whether an XDP program is attached to an interface, in any mode.
    pub fn xdp_attached(&self, ifname: &str) -> Result<bool> {
        let link = self.link_json(&["-j", "link", "show", "dev", ifname])?;
        Ok(link.get("xdp").is_some())
    }

    /// The one object of `ip -j <args>` about one link.
    fn link_json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let out = self.ip(args)?;
        let mut links: Vec<serde_json::Value> = serde_json::from_str(&out)
            .with_context(|| format!("ip {} in {}: not JSON: {out}", args.join(" "), self.name))?;
        if links.len() != 1 {
            bail!(
                "ip {} in {}: expected one link: {out}",
                args.join(" "),
                self.name
            );
        }
        Ok(links.remove(0))
    }

    /// Turns TX checksum offload of an interface on or off (`ethtool -K <if> tx on|off`).
    pub fn set_tx_checksum(&self, ifname: &str, on: bool) -> Result<()> {
        self.run_in(|| crate::ethtool::set_tx_checksum(ifname, on))
            .with_context(|| format!("{} {ifname}", self.name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        delete(&self.name);
    }
}

/// Counters of an interface since it was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
}

/// Creates a veth pair with one end in each namespace (directly: nothing appears in the root
/// namespace, even for a moment) and brings both ends up.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> Result<()> {
    a.ip(&[
        "link",
        "add",
        a_if,
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "netns",
        b.name(),
    ])?;
    a.ip(&["link", "set", a_if, "up"])?;
    b.ip(&["link", "set", b_if, "up"])?;
    Ok(())
}

/// A command running `program` inside the namespace called `ns_name`, as [`Netns::command`]: for
/// guards that outlive a borrow of the [`Netns`] and start their program again later.
pub fn command_in(ns_name: &str, program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns_name]).arg(program);
    cmd
}

/// Moves the calling thread into the named namespace.
fn enter(name: &str) -> Result<()> {
    let path = format!("/run/netns/{name}");
    let file = File::open(&path).with_context(|| format!("cannot open {path}"))?;
    // SAFETY: setns on a valid namespace fd affects only the calling thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns({path}): {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Kills what still runs in a namespace and removes it. Best effort: it runs from Drop.
pub(crate) fn delete(name: &str) {
    if let Ok(pids) = run(Command::new("ip").args(["netns", "pids", name])) {
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            if pid as u32 != std::process::id() {
                // SAFETY: plain kill(2) of a process inside our own namespace.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
    if let Err(e) = run(Command::new("ip").args(["netns", "del", name])) {
        eprintln!("warning: {e:#}");
    }
}

/// A child process, stopped on Drop (SIGTERM, then SIGKILL if it lingers) and reaped.
pub struct Proc {
    child: Child,
    what: String,
}

impl Proc {
    /// How long a process gets to exit after SIGTERM before it is killed.
    const STOP_TIMEOUT: Duration = Duration::from_secs(5);

    pub fn spawn(cmd: &mut Command, what: impl Into<String>) -> Result<Self> {
        let what = what.into();
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {what}"))?;
        Ok(Self { child, what })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The child's stdout, if it was piped and not taken yet.
    pub fn stdout(&mut self) -> Option<ChildStdout> {
        self.child.stdout.take()
    }

    /// The exit status if the process has already exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Sends `signal` (e.g. `libc::SIGHUP`) unless the process has exited already.
    pub fn signal(&mut self, signal: libc::c_int) -> Result<()> {
        if let Some(status) = self.try_wait() {
            bail!("{} has exited ({status}): cannot signal it", self.what);
        }
        // SAFETY: kill(2) of our own unreaped child: its pid cannot have been reused.
        if unsafe { libc::kill(self.child.id() as i32, signal) } != 0 {
            bail!(
                "kill({}, {signal}): {}",
                self.what,
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }

    /// Kills the process at once (SIGKILL: no cleanup of its own, as in a crash) and reaps it;
    /// returns the exit status.
    pub fn kill(&mut self) -> ExitStatus {
        if let Some(status) = self.try_wait() {
            return status;
        }
        let _ = self.child.kill();
        self.child.wait().expect("wait for a killed child")
    }

    /// Waits up to `timeout` for the process to exit by itself; its exit status if it did.
    pub fn wait_for(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends SIGTERM, waits up to 5 s, then SIGKILLs; returns the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        if let Some(status) = self.try_wait() {
            return status;
        }
        // SAFETY: kill(2) of our own unreaped child: its pid cannot have been reused.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        if let Some(status) = self.wait_for(Self::STOP_TIMEOUT) {
            return status;
        }
        eprintln!("warning: {} ignored SIGTERM, killing it", self.what);
        self.kill()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs a command to completion; its stdout, or an error naming the command and its stderr.
pub fn run(cmd: &mut Command) -> Result<String> {
    let line = format!("{cmd:?}");
    let output = cmd.output().with_context(|| format!("cannot run {line}"))?;
    check(&line, output)
}

fn check(line: &str, output: std::process::Output) -> Result<String> {
    if !output.status.success() {
        bail!(
            "{line} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
