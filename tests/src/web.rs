//! The agent's HTTP side from outside, as users reach it: curl against the control socket and
//! `--web`, and headless Chromium (Debian's package) driven over the DevTools protocol on a
//! pipe (`--remote-debugging-pipe`: JSON messages separated by NUL bytes on fds 3 and 4).

use std::fs::File;
use std::io::{BufRead as _, BufReader, Write as _};
use std::os::fd::{FromRawFd as _, OwnedFd};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};

use crate::Netns;

/// An answer: its status and body.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    /// The message of a JSON error answer.
    pub fn error(&self) -> String {
        match self.json()["error"].as_str() {
            Some(m) => m.to_owned(),
            None => panic!("not an error answer: {} {}", self.status, self.body),
        }
    }
}

/// Where the API is: the control socket (curl --unix-socket), or `--web` inside a namespace,
/// over HTTP or HTTPS.
pub enum Api<'a> {
    Socket(&'a Path),
    Web(&'a Netns, std::net::SocketAddr),
    /// `--web` over TLS, its certificate verified against `ca` for the name `name` (which
    /// resolves to the address).
    Https {
        ns: &'a Netns,
        addr: std::net::SocketAddr,
        ca: &'a str,
        name: &'a str,
    },
}

impl Api<'_> {
    /// `method path` with an optional JSON body and bearer token, through curl.
    pub fn call(&self, method: &str, path: &str, body: Option<&str>, token: Option<&str>) -> Reply {
        let mut cmd = match self {
            Api::Socket(socket) => {
                let mut c = Command::new("curl");
                c.arg("--unix-socket").arg(socket);
                c
            }
            Api::Web(ns, _) => ns.command("curl"),
            Api::Https { ns, addr, ca, name } => {
                let mut c = ns.command("curl");
                let resolve = format!("{name}:{}:{}", addr.port(), addr.ip());
                c.args(["--cacert", ca, "--resolve", &resolve]);
                c
            }
        };
        let url = match self {
            Api::Socket(_) => format!("http://localhost{path}"),
            Api::Web(_, addr) => format!("http://{addr}{path}"),
            Api::Https { addr, name, .. } => format!("https://{name}:{}{path}", addr.port()),
        };
        // -g: brackets of IPv6 addresses are not curl's globbing.
        cmd.args([
            "-sS",
            "-g",
            "-m",
            "30",
            "-X",
            method,
            "-w",
            "\n%{http_code}",
        ]);
        if let Some(b) = body {
            cmd.args(["-H", "Content-Type: application/json", "--data-binary", b]);
        }
        if let Some(t) = token {
            cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
        }
        cmd.arg(&url);
        let out = cmd.output().expect("curl runs");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, status) = text
            .rsplit_once('\n')
            .unwrap_or_else(|| panic!("curl {method} {url}: {text:?} {:?}", out.stderr));
        Reply {
            status: status.parse().unwrap_or_else(|_| {
                panic!(
                    "curl {method} {url}: no status in {text:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                )
            }),
            body: body.to_owned(),
        }
    }

    pub fn get(&self, path: &str) -> Reply {
        self.call("GET", path, None, None)
    }

    /// GET that must answer 200 with JSON.
    pub fn get_json(&self, path: &str) -> Value {
        let r = self.get(path);
        assert_eq!(r.status, 200, "GET {path}: {}", r.body);
        r.json()
    }
}

/// Headless Chromium with one page, in a namespace.
pub struct Browser {
    child: Child,
    to: File,
    from: BufReader<File>,
    next_id: u64,
    session: String,
    profile: PathBuf,
}

/// A pipe whose ends are both above the descriptors 3 and 4 the child's are copied onto: an end
/// that was 3 or 4 itself would be overwritten by the first copy before the second is made
/// (Chromium then talks to the wrong end and exits at once).
fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        bail!("pipe2: {}", std::io::Error::last_os_error());
    }
    // SAFETY: both are fresh descriptors nothing else owns.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok((above_4(read)?, above_4(write)?))
}

/// A copy of `fd` numbered 5 or more (close-on-exec); `fd` is closed.
fn above_4(fd: OwnedFd) -> Result<OwnedFd> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: fcntl on a descriptor we own; the copy is fresh and ours.
    let copy = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 5) };
    if copy < 0 {
        bail!(
            "fcntl(F_DUPFD_CLOEXEC): {}",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: as above.
    Ok(unsafe { OwnedFd::from_raw_fd(copy) })
}

impl Browser {
    /// Starts Chromium inside `ns` (as root it needs --no-sandbox) and opens `url` in a
    /// 1280x900 window.
    pub fn open(ns: &Netns, url: &str, log: &Path) -> Result<Self> {
        use std::os::fd::AsRawFd as _;
        let profile = std::env::temp_dir().join(format!(
            "xdplb-chromium-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        std::fs::create_dir_all(&profile)?;
        let (cmd_read, cmd_write) = pipe()?;
        let (out_read, out_write) = pipe()?;
        let (cr, ow) = (cmd_read.as_raw_fd(), out_write.as_raw_fd());
        let mut cmd = ns.command("chromium");
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--remote-debugging-pipe",
            "--window-size=1280,900",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(log)?);
        // SAFETY: dup2 only, between fork and exec: Chromium reads commands on fd 3 and writes
        // on fd 4 (dup2 clears close-on-exec on the copies).
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(cr, 3) < 0 || libc::dup2(ow, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().context("starting chromium")?;
        drop((cmd_read, out_write));
        let mut browser = Self {
            child,
            to: File::from(cmd_write),
            from: BufReader::new(File::from(out_read)),
            next_id: 0,
            session: String::new(),
            profile,
        };
        let target = browser.command("Target.createTarget", json!({ "url": url }))?;
        let target = target["targetId"]
            .as_str()
            .context("no targetId")?
            .to_owned();
        let attached = browser.command(
            "Target.attachToTarget",
            json!({ "targetId": target, "flatten": true }),
        )?;
        browser.session = attached["sessionId"]
            .as_str()
            .context("no sessionId")?
            .to_owned();
        Ok(browser)
    }

    /// Sends one command (to the page once attached) and returns its result.
    fn command(&mut self, method: &str, params: Value) -> Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if !self.session.is_empty() {
            message["sessionId"] = json!(self.session);
        }
        let mut bytes = serde_json::to_vec(&message)?;
        bytes.push(0);
        self.to.write_all(&bytes).context("writing to chromium")?;
        loop {
            let mut raw = Vec::new();
            if self.from.read_until(0, &mut raw)? == 0 {
                bail!("chromium closed its pipe (see its log)");
            }
            raw.pop();
            let answer: Value = serde_json::from_slice(&raw)?;
            if answer["id"] != json!(id) {
                continue; // an event, or another command's answer
            }
            if let Some(e) = answer.get("error") {
                bail!("{method}: {e}");
            }
            return Ok(answer["result"].clone());
        }
    }

    /// The value of a JavaScript expression in the page (promises awaited).
    pub fn eval(&mut self, expression: &str) -> Result<Value> {
        let r = self.command(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
        )?;
        if let Some(e) = r.get("exceptionDetails") {
            bail!("{expression}: {e}");
        }
        Ok(r["result"]["value"].clone())
    }

    /// Waits up to `timeout` until `expression` is true in the page.
    pub fn wait_for(&mut self, expression: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.eval(expression)? == json!(true) {
                return Ok(());
            }
            if Instant::now() > deadline {
                let text = self.eval("document.body.innerText")?;
                bail!(
                    "not within {timeout:?}: {expression}\npage:\n{}",
                    text.as_str().unwrap_or("")
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A PNG of the whole page, written to `path`.
    pub fn screenshot(&mut self, path: &Path) -> Result<()> {
        use base64::Engine as _;
        let r = self.command(
            "Page.captureScreenshot",
            json!({ "format": "png", "captureBeyondViewport": true }),
        )?;
        let data = r["data"].as_str().context("no screenshot data")?;
        let png = base64::engine::general_purpose::STANDARD.decode(data)?;
        std::fs::write(path, png)?;
        Ok(())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
