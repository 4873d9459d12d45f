//! Health checks for real servers, as keepalived's checkers do them: every checked real server
//! gets a tokio task that probes it every `interval_ms` (a TCP connect, an HTTP or HTTPS `GET`
//! ([`http`]), an ICMP echo ([`ping`]) or a command ([`script`])), and a
//! [`Transition`] is reported only when `fall` consecutive probes failed (Up -> Down) or `rise`
//! consecutive probes succeeded (Down -> Up). A server starts Up: it is trusted until proven dead.
//!
//! The agent owns a [`Monitor`], hands it the set of [`Target`]s whenever the configuration
//! changes, and turns the transitions it receives into weight-0-like "down" real servers.

mod http;
mod ping;
mod script;

use std::{
    collections::{hash_map::RandomState, HashMap, HashSet},
    fmt,
    hash::{BuildHasher as _, Hash},
    io,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tokio::{
    net::TcpStream,
    sync::mpsc::UnboundedSender,
    task::JoinHandle,
    time::{self, Instant, MissedTickBehavior},
};

/// The most an HTTP check reads of a response's body.
pub const MAX_RESPONSE: usize = 64 * 1024;
/// Longest interval or timeout: one hour.
const MAX_MS: u64 = 3_600_000;
/// Largest `rise` or `fall`.
const MAX_COUNT: u32 = 100;

// The defaults detect a dead server within 3 s: a server that dies right after a good probe fails
// the next probe (at most 1 s later) and the one after it (1 s later again), each failing within
// the 1 s timeout, so it is Down after at most fall * interval + timeout = 3 s. `fall` is 2, not
// 1, so that one lost SYN (Linux retransmits it after 1 s, exactly the timeout) or one slow answer
// does not pull a healthy server; `rise` is 2 so that a flapping server has to answer twice in a
// row, a second apart, before it gets new flows again.
const DEFAULT_INTERVAL_MS: u64 = 1000;
const DEFAULT_TIMEOUT_MS: u64 = 1000;
const DEFAULT_RISE: u32 = 2;
const DEFAULT_FALL: u32 = 2;

fn default_path() -> String {
    "/".to_owned()
}
fn default_status() -> u16 {
    200
}
fn default_interval_ms() -> u64 {
    DEFAULT_INTERVAL_MS
}
fn default_timeout_ms() -> u64 {
    DEFAULT_TIMEOUT_MS
}
fn default_rise() -> u32 {
    DEFAULT_RISE
}
fn default_fall() -> u32 {
    DEFAULT_FALL
}

fn yes() -> bool {
    true
}

fn is_true(v: &bool) -> bool {
    *v
}

/// What to check. TOML/JSON form: `{ type = "tcp" }`,
/// `{ type = "http", path = "/health", status = 200, body = "ok" }`,
/// `{ type = "https", path = "/", verify = false, sni = "www.example.com" }`,
/// `{ type = "ping" }`, `{ type = "script", command = "/usr/local/bin/check --fast" }`,
/// `{ type = "none" }`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Check {
    /// No check: the real server is always Up.
    None,
    /// A TCP connect within the timeout (then close).
    Tcp,
    /// `GET path` (HTTP/1.1 with `Connection: close`, hyper's client) within the timeout;
    /// success iff the status code is `status` and, if `body` is set, the body (its first
    /// [`MAX_RESPONSE`] bytes) contains that substring.
    Http {
        #[serde(default = "default_path")]
        path: String,
        #[serde(default = "default_status")]
        status: u16,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        body: Option<String>,
    },
    /// The same over TLS (rustls; keepalived's SSL_GET): the certificate verified against
    /// `ca_file` or the system's roots unless `verify` is false, for the name `sni` (sent as
    /// SNI and used as `Host`), else for the real server's address.
    Https {
        #[serde(default = "default_path")]
        path: String,
        #[serde(default = "default_status")]
        status: u16,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        body: Option<String>,
        #[serde(default = "yes", skip_serializing_if = "is_true")]
        verify: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sni: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ca_file: Option<PathBuf>,
    },
    /// An ICMP (ICMPv6) echo answered within the timeout.
    Ping,
    /// A command that exits 0 within the timeout (see [`script`]).
    Script { command: String },
}

/// A check with its timing. `type` may be left out: it defaults to `tcp`.
///
/// Serialized flat: `{ type = "http", path = "/health", port = 8080, interval_ms = 500 }`.
/// Deserialization goes through a flat mirror struct (`serde(flatten)` and `deny_unknown_fields`
/// do not work together), so unknown fields are rejected, and so are `path`, `status` and `body`
/// on a check that is not `http`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, try_from = "RawHealthCheck")]
pub struct HealthCheck {
    #[serde(flatten)]
    pub check: Check,
    /// Port to check; `None` = the real server's service port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Time between the starts of two probes.
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    /// A probe that takes longer fails (connect, request and response together).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Consecutive successes that bring a Down server Up.
    #[serde(default = "default_rise")]
    pub rise: u32,
    /// Consecutive failures that take an Up server Down.
    #[serde(default = "default_fall")]
    pub fall: u32,
}

impl Default for HealthCheck {
    fn default() -> Self {
        Self {
            check: Check::Tcp,
            port: None,
            interval_ms: DEFAULT_INTERVAL_MS,
            timeout_ms: DEFAULT_TIMEOUT_MS,
            rise: DEFAULT_RISE,
            fall: DEFAULT_FALL,
        }
    }
}

impl HealthCheck {
    /// Refuses values that cannot work; every error is one line.
    pub fn validate(&self) -> Result<()> {
        for (name, ms) in [
            ("interval_ms", self.interval_ms),
            ("timeout_ms", self.timeout_ms),
        ] {
            if !(1..=MAX_MS).contains(&ms) {
                bail!("{name} must be 1..={MAX_MS} (one hour), got {ms}");
            }
        }
        if self.timeout_ms > self.interval_ms {
            bail!(
                "timeout_ms ({}) must not exceed interval_ms ({})",
                self.timeout_ms,
                self.interval_ms
            );
        }
        for (name, n) in [("rise", self.rise), ("fall", self.fall)] {
            if !(1..=MAX_COUNT).contains(&n) {
                bail!("{name} must be 1..={MAX_COUNT}, got {n}");
            }
        }
        if self.port == Some(0) {
            bail!("health check port 0 is not a valid port");
        }
        match &self.check {
            Check::Http { path, status, body }
            | Check::Https {
                path, status, body, ..
            } => {
                if !path.starts_with('/') {
                    bail!("http check path must start with '/', got {path:?}");
                }
                if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    bail!(
                        "http check path must not contain spaces or control characters, got {path:?}"
                    );
                }
                if !(100..=599).contains(status) {
                    bail!("http check status must be 100..=599, got {status}");
                }
                if body.as_ref().is_some_and(|b| b.len() > MAX_RESPONSE) {
                    bail!("http check body is longer than the {MAX_RESPONSE} bytes a check reads");
                }
            }
            Check::Script { command } => script::validate(command).map_err(anyhow::Error::msg)?,
            Check::None | Check::Tcp | Check::Ping => {}
        }
        if let Check::Https {
            verify,
            sni,
            ca_file,
            ..
        } = &self.check
        {
            let any: SocketAddr = ([0, 0, 0, 0], 0).into();
            http::Tls::new(*verify, sni.as_deref(), ca_file.as_deref(), any)
                .map_err(anyhow::Error::msg)?;
        }
        Ok(())
    }

    /// The address probes go to: the real server's, with `port` if it is set.
    pub fn probe_addr(&self, real: SocketAddr) -> SocketAddr {
        SocketAddr::new(real.ip(), self.port.unwrap_or(real.port()))
    }
}

/// The flat form [`HealthCheck`] is deserialized from.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealthCheck {
    #[serde(rename = "type", default)]
    kind: CheckKind,
    path: Option<String>,
    status: Option<u16>,
    body: Option<String>,
    verify: Option<bool>,
    sni: Option<String>,
    ca_file: Option<PathBuf>,
    command: Option<String>,
    port: Option<u16>,
    #[serde(default = "default_interval_ms")]
    interval_ms: u64,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
    #[serde(default = "default_rise")]
    rise: u32,
    #[serde(default = "default_fall")]
    fall: u32,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "lowercase")]
enum CheckKind {
    None,
    #[default]
    Tcp,
    Http,
    Https,
    Ping,
    Script,
}

impl TryFrom<RawHealthCheck> for HealthCheck {
    type Error = String;

    fn try_from(raw: RawHealthCheck) -> Result<Self, String> {
        use CheckKind as K;
        // Each field and the kinds of check it belongs to.
        let only = [
            ("path", raw.path.is_some(), "http and https"),
            ("status", raw.status.is_some(), "http and https"),
            ("body", raw.body.is_some(), "http and https"),
            ("verify", raw.verify.is_some(), "https"),
            ("sni", raw.sni.is_some(), "https"),
            ("ca_file", raw.ca_file.is_some(), "https"),
            ("command", raw.command.is_some(), "script"),
        ];
        let kind = match raw.kind {
            K::None => "none",
            K::Tcp => "tcp",
            K::Http => "http",
            K::Https => "https",
            K::Ping => "ping",
            K::Script => "script",
        };
        if let Some((field, _, kinds)) = only
            .iter()
            .find(|(_, set, kinds)| *set && !kinds.split(" and ").any(|k| k == kind))
        {
            return Err(format!("`{field}` is only for checks of type {kinds}"));
        }
        let path = || raw.path.clone().unwrap_or_else(default_path);
        let status = raw.status.unwrap_or_else(default_status);
        let check = match raw.kind {
            K::None => Check::None,
            K::Tcp => Check::Tcp,
            K::Http => Check::Http {
                path: path(),
                status,
                body: raw.body.clone(),
            },
            K::Https => Check::Https {
                path: path(),
                status,
                body: raw.body.clone(),
                verify: raw.verify.unwrap_or(true),
                sni: raw.sni.clone(),
                ca_file: raw.ca_file.clone(),
            },
            K::Ping => Check::Ping,
            K::Script => Check::Script {
                command: raw
                    .command
                    .clone()
                    .ok_or("a script check needs its `command`")?,
            },
        };
        Ok(Self {
            check,
            port: raw.port,
            interval_ms: raw.interval_ms,
            timeout_ms: raw.timeout_ms,
            rise: raw.rise,
            fall: raw.fall,
        })
    }
}

/// Whom to check: a key the caller chooses, the real server's address (its service port unless
/// the check sets `port`), the check.
#[derive(Clone, Debug, PartialEq)]
pub struct Target<K> {
    pub key: K,
    pub addr: SocketAddr,
    pub check: HealthCheck,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Up,
    Down,
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Health::Up => "Up",
            Health::Down => "Down",
        })
    }
}

/// A state change: emitted only on transitions (after `fall` consecutive failures / `rise`
/// consecutive successes), and when [`Monitor::set_targets`] restarts a Down target Up.
#[derive(Clone, Debug, PartialEq)]
pub struct Transition<K> {
    pub key: K,
    pub health: Health,
    /// The last error, for Down.
    pub error: Option<String>,
}

/// What a target's task and the monitor share.
#[derive(Debug)]
struct Status {
    health: Health,
    /// The last probe's error; a successful probe clears it.
    last_error: Option<String>,
    /// Set (under the lock) when the target is stopped: its task, which may still be running
    /// until its next await, reports nothing more.
    stopped: bool,
}

fn lock(status: &Mutex<Status>) -> MutexGuard<'_, Status> {
    status.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Entry<K> {
    target: Target<K>,
    status: Arc<Mutex<Status>>,
    /// `None` for `Check::None`.
    task: Option<JoinHandle<()>>,
}

impl<K> Entry<K> {
    /// Stops the task; returns the health it had.
    fn stop(&self) -> Health {
        let mut status = lock(&self.status);
        status.stopped = true;
        if let Some(task) = &self.task {
            task.abort();
        }
        status.health
    }
}

/// Runs one tokio task per target. Targets start Up (a server is trusted until `fall` checks
/// fail, as keepalived does). Each task runs its probes one after the other, never two at once;
/// tasks start at a random offset within their interval so that probes are spread out.
pub struct Monitor<K> {
    events: UnboundedSender<Transition<K>>,
    entries: HashMap<K, Entry<K>>,
    /// Seeds the start offsets (random per process).
    seed: RandomState,
}

impl<K: Clone + Eq + Hash + Send + Sync + 'static + fmt::Debug> Monitor<K> {
    pub fn new(events: UnboundedSender<Transition<K>>) -> Self {
        Self {
            events,
            entries: HashMap::new(),
            seed: RandomState::new(),
        }
    }

    /// Makes `targets` the checked set: unchanged targets (same key, addr and check) keep running
    /// and keep their state; changed ones restart (Up; a Down one reports a transition to Up);
    /// removed ones stop (their tasks are aborted). `Check::None` targets get no task (always Up).
    /// Of two targets with the same key the last one counts. Must be called inside a Tokio
    /// runtime. Checks should have passed [`HealthCheck::validate`]; zero intervals and counts
    /// are taken as 1 ms and 1.
    pub fn set_targets(&mut self, targets: Vec<Target<K>>) {
        let all: Vec<K> = self.entries.keys().cloned().collect();
        self.set_some_targets(all, targets);
    }

    /// [`Monitor::set_targets`] for part of the set: `targets` become the targets among the
    /// keys `within` and their own; targets of other keys are left as they are. A change of a
    /// few real servers costs a few, however many are checked.
    pub fn set_some_targets(
        &mut self,
        within: impl IntoIterator<Item = K>,
        targets: Vec<Target<K>>,
    ) {
        let mut next: HashMap<K, Target<K>> = HashMap::with_capacity(targets.len());
        for target in targets {
            next.insert(target.key.clone(), target);
        }
        // Each key once: `within` may name a key twice, and `targets` name their own.
        let mut keys: HashSet<K> = within.into_iter().collect();
        keys.extend(next.keys().cloned());
        for key in keys {
            let Some(entry) = self.entries.remove(&key) else {
                continue;
            };
            match next.remove(&key) {
                Some(target) if target == entry.target => {
                    self.entries.insert(key, entry);
                }
                Some(target) => {
                    if entry.stop() == Health::Down {
                        // Nobody may miss a receiver error: the caller just dropped its end.
                        let _ = self.events.send(Transition {
                            key: key.clone(),
                            health: Health::Up,
                            error: None,
                        });
                    }
                    let entry = self.start(target);
                    self.entries.insert(key, entry);
                }
                None => {
                    entry.stop();
                }
            }
        }
        for (key, target) in next {
            let entry = self.start(target);
            self.entries.insert(key, entry);
        }
    }

    /// Last error seen for a key (also while still Up), for `xdplb list`. A successful probe
    /// clears it.
    pub fn last_error(&self, key: &K) -> Option<String> {
        lock(&self.entries.get(key)?.status).last_error.clone()
    }

    /// Takes `health` as a target's current state without a transition (an agent restarting with
    /// what it knew): a server known down needs `rise` good probes to come back, instead of being
    /// trusted until `fall` bad ones. No effect on unknown keys or unchecked targets.
    pub fn assume(&self, key: &K, health: Health) {
        if let Some(entry) = self.entries.get(key).filter(|e| e.task.is_some()) {
            lock(&entry.status).health = health;
        }
    }

    /// The current health of a key; `None` for a key that is not checked.
    pub fn health(&self, key: &K) -> Option<Health> {
        Some(lock(&self.entries.get(key)?.status).health)
    }

    fn start(&self, target: Target<K>) -> Entry<K> {
        let status = Arc::new(Mutex::new(Status {
            health: Health::Up,
            last_error: None,
            stopped: false,
        }));
        let task = (target.check.check != Check::None).then(|| {
            let offset = stagger(
                self.seed.hash_one((&target.key, target.addr)),
                target.check.interval_ms,
            );
            tokio::spawn(run(
                target.clone(),
                offset,
                status.clone(),
                self.events.clone(),
            ))
        });
        Entry {
            target,
            status,
            task,
        }
    }
}

impl<K> Drop for Monitor<K> {
    fn drop(&mut self) {
        for entry in self.entries.values() {
            entry.stop();
        }
    }
}

/// The first probe's delay: a pseudo-random point within the interval.
fn stagger(hash: u64, interval_ms: u64) -> Duration {
    Duration::from_millis(hash % interval_ms.max(1))
}

/// A target's task: probes, one at a time, and reports transitions.
async fn run<K: Clone>(
    target: Target<K>,
    offset: Duration,
    status: Arc<Mutex<Status>>,
    events: UnboundedSender<Transition<K>>,
) {
    let hc = &target.check;
    let addr = hc.probe_addr(target.addr);
    let timeout = Duration::from_millis(hc.timeout_ms);
    let mut ticks = time::interval_at(
        Instant::now() + offset,
        Duration::from_millis(hc.interval_ms.max(1)),
    );
    // A probe that overran its interval is followed by the next one at once, then the period.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // Consecutive results that disagree with the current health.
    let mut streak = 0;
    let prober = Prober::new(&hc.check, addr);
    loop {
        ticks.tick().await;
        let result = prober.probe(addr, timeout).await;
        let mut status = lock(&status);
        if status.stopped {
            return;
        }
        let ok = result.is_ok();
        status.last_error = result.err();
        if ok == (status.health == Health::Up) {
            streak = 0;
            continue;
        }
        streak += 1;
        if streak >= if ok { hc.rise } else { hc.fall }.max(1) {
            streak = 0;
            status.health = if ok { Health::Up } else { Health::Down };
            let _ = events.send(Transition {
                key: target.key.clone(),
                health: status.health,
                error: status.last_error.clone(),
            });
        }
    }
}

/// A check ready to probe: what it needs prepared once (the TLS settings of an HTTPS check).
enum Prober {
    Pass,
    Tcp,
    Http {
        path: String,
        status: u16,
        body: Option<String>,
        tls: Option<http::Tls>,
    },
    Ping,
    Script(String),
    /// A check that cannot run (its CA file is gone, say): every probe fails with this.
    Broken(String),
}

impl Prober {
    fn new(check: &Check, addr: SocketAddr) -> Self {
        match check {
            Check::None => Prober::Pass,
            Check::Tcp => Prober::Tcp,
            Check::Http { path, status, body } => Prober::Http {
                path: path.clone(),
                status: *status,
                body: body.clone(),
                tls: None,
            },
            Check::Https {
                path,
                status,
                body,
                verify,
                sni,
                ca_file,
            } => match http::Tls::new(*verify, sni.as_deref(), ca_file.as_deref(), addr) {
                Ok(tls) => Prober::Http {
                    path: path.clone(),
                    status: *status,
                    body: body.clone(),
                    tls: Some(tls),
                },
                Err(e) => Prober::Broken(e),
            },
            Check::Ping => Prober::Ping,
            Check::Script { command } => Prober::Script(command.clone()),
        }
    }

    /// One probe of `addr`; the error is one line.
    async fn probe(&self, addr: SocketAddr, timeout: Duration) -> Result<(), String> {
        if let Prober::Pass = self {
            return Ok(());
        }
        match time::timeout(timeout, self.probe_now(addr)).await {
            Ok(result) => result,
            Err(_) => Err(format!("timeout after {} ms", timeout.as_millis())),
        }
    }

    async fn probe_now(&self, addr: SocketAddr) -> Result<(), String> {
        match self {
            Prober::Pass => Ok(()),
            // Dropping the stream closes the connection.
            Prober::Tcp => TcpStream::connect(addr)
                .await
                .map(drop)
                .map_err(|e| format!("connect {addr}: {}", io_message(&e))),
            Prober::Http {
                path,
                status,
                body,
                tls,
            } => {
                let want = http::Expect {
                    path,
                    status: *status,
                    body: body.as_deref(),
                };
                http::get(addr, tls.as_ref(), &want).await
            }
            Prober::Ping => ping::echo(addr.ip()).await,
            Prober::Script(command) => script::run(command, addr).await,
            Prober::Broken(e) => Err(e.clone()),
        }
    }
}

/// One probe of `addr` with `check` (prepared for this probe alone).
#[cfg(test)]
async fn probe(check: &Check, addr: SocketAddr, timeout: Duration) -> Result<(), String> {
    Prober::new(check, addr).probe(addr, timeout).await
}

/// "connection refused" rather than "Connection refused (os error 111)".
fn io_message(e: &io::Error) -> String {
    let text = e.to_string();
    let text = text.split(" (os error ").next().unwrap_or_default();
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => format!("{:?}", e.kind()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::TcpListener,
        sync::mpsc::{unbounded_channel, UnboundedReceiver},
    };

    use super::*;

    const LOCAL: std::net::Ipv4Addr = std::net::Ipv4Addr::LOCALHOST;

    /// Where a request's body starts: after the first empty line.
    fn headers_end(buf: &[u8]) -> Option<usize> {
        buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
    }

    fn fast(check: Check) -> HealthCheck {
        HealthCheck {
            check,
            port: None,
            interval_ms: 20,
            timeout_ms: 20,
            rise: 2,
            fall: 2,
        }
    }

    fn http(path: &str, body: Option<&str>) -> Check {
        Check::Http {
            path: path.to_owned(),
            status: 200,
            body: body.map(str::to_owned),
        }
    }

    fn target(key: &'static str, addr: SocketAddr, check: HealthCheck) -> Target<&'static str> {
        Target { key, addr, check }
    }

    /// A port nothing listens on (bound, then released).
    async fn closed_port() -> SocketAddr {
        let listener = TcpListener::bind((LOCAL, 0)).await.unwrap();
        listener.local_addr().unwrap()
    }

    /// A listener that accepts and closes connections, counting them.
    fn serve_tcp(listener: TcpListener) -> Arc<AtomicUsize> {
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while listener.accept().await.is_ok() {
                count.fetch_add(1, Ordering::SeqCst);
            }
        });
        accepted
    }

    /// An HTTP server that answers every request with `response`, then closes the connection
    /// (or, with `hold`, keeps it open); returns its address and the requests it got.
    async fn serve_http(
        response: &'static str,
        hold: bool,
    ) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
        let listener = TcpListener::bind((LOCAL, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = requests.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let log = log.clone();
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    while headers_end(&request).is_none() {
                        let mut chunk = [0; 1024];
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&chunk[..n]),
                        }
                    }
                    log.lock()
                        .unwrap()
                        .push(String::from_utf8(request).unwrap());
                    let _ = stream.write_all(response.as_bytes()).await;
                    if hold {
                        time::sleep(Duration::from_secs(10)).await;
                    }
                });
            }
        });
        (addr, requests)
    }

    async fn next<K>(events: &mut UnboundedReceiver<Transition<K>>) -> Transition<K> {
        time::timeout(Duration::from_secs(2), events.recv())
            .await
            .expect("no transition within 2 s")
            .expect("channel closed")
    }

    #[tokio::test]
    async fn tcp_probe() {
        let listener = TcpListener::bind((LOCAL, 0)).await.unwrap();
        let up = listener.local_addr().unwrap();
        serve_tcp(listener);
        let timeout = Duration::from_millis(500);
        assert_eq!(probe(&Check::Tcp, up, timeout).await, Ok(()));
        let down = closed_port().await;
        assert_eq!(
            probe(&Check::Tcp, down, timeout).await,
            Err(format!("connect {down}: connection refused"))
        );
        assert_eq!(probe(&Check::None, down, timeout).await, Ok(()));
    }

    #[tokio::test]
    async fn http_status_and_request() {
        let (addr, requests) =
            serve_http("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false).await;
        let timeout = Duration::from_millis(500);
        assert_eq!(probe(&http("/health", None), addr, timeout).await, Ok(()));
        let request = requests.lock().unwrap()[0].clone();
        // hyper writes header names in lower case.
        assert!(request.starts_with("GET /health HTTP/1.1\r\n"), "{request}");
        assert!(
            request.contains(&format!("\r\nhost: {addr}\r\n")),
            "{request}"
        );
        assert!(request.contains("\r\nconnection: close\r\n"), "{request}");

        let wrong = Check::Http {
            path: "/".into(),
            status: 204,
            body: None,
        };
        assert_eq!(
            probe(&wrong, addr, timeout).await,
            Err("HTTP status 200, expected 204".into())
        );
        let (addr, _) = serve_http("HTTP/1.0 503 Service Unavailable\r\n\r\n", false).await;
        assert_eq!(
            probe(&http("/", None), addr, timeout).await,
            Err("HTTP status 503, expected 200".into())
        );
        let (addr, _) = serve_http("SSH-2.0-OpenSSH\r\n", false).await;
        assert_eq!(
            probe(&http("/", None), addr, timeout).await,
            Err("HTTP: invalid HTTP version parsed".into())
        );
        let (addr, _) = serve_http("", false).await;
        assert_eq!(
            probe(&http("/", None), addr, timeout).await,
            Err("HTTP: connection closed before message completed".into())
        );
    }

    #[tokio::test]
    async fn http_body() {
        let timeout = Duration::from_millis(500);
        // Ended by EOF.
        let (addr, _) = serve_http("HTTP/1.0 200 OK\r\n\r\nall ok here", false).await;
        assert_eq!(probe(&http("/", Some("ok")), addr, timeout).await, Ok(()));
        assert_eq!(
            probe(&http("/", Some("fine")), addr, timeout).await,
            Err("body does not contain \"fine\"".into())
        );
        // Ended by Content-Length while the server keeps the connection open: no timeout.
        let (addr, _) = serve_http(
            "HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nokay, and more",
            true,
        )
        .await;
        assert_eq!(probe(&http("/", Some("okay")), addr, timeout).await, Ok(()));
        assert_eq!(
            probe(&http("/", Some("more")), addr, timeout).await,
            Err("body does not contain \"more\"".into())
        );
    }

    #[tokio::test]
    async fn timeout() {
        // Accepts, reads the request, never answers.
        let listener = TcpListener::bind((LOCAL, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        let start = std::time::Instant::now();
        assert_eq!(
            probe(&http("/", None), addr, Duration::from_millis(50)).await,
            Err("timeout after 50 ms".into())
        );
        assert!(start.elapsed() < Duration::from_millis(500));
    }

    #[tokio::test]
    async fn tcp_up_stays_up() {
        let listener = TcpListener::bind((LOCAL, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = serve_tcp(listener);
        let (tx, mut events) = unbounded_channel();
        let mut monitor = Monitor::new(tx);
        monitor.set_targets(vec![target("a", addr, fast(Check::Tcp))]);
        time::sleep(Duration::from_millis(150)).await;
        assert!(events.try_recv().is_err());
        assert_eq!(monitor.health(&"a"), Some(Health::Up));
        assert_eq!(monitor.last_error(&"a"), None);
        assert!(accepted.load(Ordering::SeqCst) >= 3);
    }

    #[tokio::test]
    async fn tcp_down_after_fall_then_rise() {
        let addr = closed_port().await;
        let (tx, mut events) = unbounded_channel();
        let mut monitor = Monitor::new(tx);
        let start = std::time::Instant::now();
        monitor.set_targets(vec![target("a", addr, fast(Check::Tcp))]);
        let down = next(&mut events).await;
        // fall = 2: two probes, one interval apart.
        assert!(start.elapsed() >= Duration::from_millis(20));
        let error = format!("connect {addr}: connection refused");
        assert_eq!(
            down,
            Transition {
                key: "a",
                health: Health::Down,
                error: Some(error.clone())
            }
        );
        assert_eq!(monitor.health(&"a"), Some(Health::Down));
        assert_eq!(monitor.last_error(&"a"), Some(error));

        let listener = TcpListener::bind(addr).await.unwrap();
        serve_tcp(listener);
        let start = std::time::Instant::now();
        let up = next(&mut events).await;
        assert!(start.elapsed() >= Duration::from_millis(20));
        assert_eq!(
            up,
            Transition {
                key: "a",
                health: Health::Up,
                error: None
            }
        );
        assert_eq!(monitor.last_error(&"a"), None);
    }

    #[tokio::test]
    async fn http_monitor_goes_down_on_body() {
        let (addr, _) = serve_http("HTTP/1.0 200 OK\r\n\r\nmaintenance", false).await;
        let (tx, mut events) = unbounded_channel();
        let mut monitor = Monitor::new(tx);
        monitor.set_targets(vec![target("a", addr, fast(http("/", Some("ok"))))]);
        let down = next(&mut events).await;
        assert_eq!(down.health, Health::Down);
        assert_eq!(down.error.as_deref(), Some("body does not contain \"ok\""));
    }

    #[tokio::test]
    async fn none_check_has_no_task() {
        let addr = closed_port().await;
        let (tx, mut events) = unbounded_channel();
        let mut monitor = Monitor::new(tx);
        monitor.set_targets(vec![target("a", addr, fast(Check::None))]);
        assert!(monitor.entries[&"a"].task.is_none());
        time::sleep(Duration::from_millis(80)).await;
        assert!(events.try_recv().is_err());
        assert_eq!(monitor.health(&"a"), Some(Health::Up));
        assert_eq!(monitor.health(&"b"), None);
    }

    #[tokio::test]
    async fn set_targets_keeps_unchanged_and_restarts_changed() {
        let a = closed_port().await;
        let c = closed_port().await;
        let (tx, mut events) = unbounded_channel();
        let mut monitor = Monitor::new(tx);
        let keep = target("a", a, fast(Check::Tcp));
        monitor.set_targets(vec![keep.clone(), target("c", c, fast(Check::Tcp))]);
        let mut down = [next(&mut events).await.key, next(&mut events).await.key];
        down.sort();
        assert_eq!(down, ["a", "c"]);

        let changed = HealthCheck {
            interval_ms: 25,
            ..fast(Check::Tcp)
        };
        monitor.set_targets(vec![keep.clone(), target("c", c, changed)]);
        // The changed target restarts Up, and says so at once.
        assert_eq!(
            events.try_recv().unwrap(),
            Transition {
                key: "c",
                health: Health::Up,
                error: None
            }
        );
        assert_eq!(monitor.health(&"c"), Some(Health::Up));
        assert_eq!(monitor.health(&"a"), Some(Health::Down));
        let again = next(&mut events).await;
        assert_eq!((again.key, again.health), ("c", Health::Down));
        // The unchanged one kept its state: nothing to report.
        time::sleep(Duration::from_millis(60)).await;
        assert!(events.try_recv().is_err());
        assert_eq!(monitor.health(&"a"), Some(Health::Down));

        // A part of the set changed: the others keep running as they were.
        let b = closed_port().await;
        monitor.set_some_targets(["b"], vec![target("b", b, fast(Check::Tcp))]);
        assert_eq!(next(&mut events).await.key, "b");
        monitor.set_some_targets(["b", "zz"], Vec::new());
        assert_eq!(monitor.health(&"b"), None);
        assert_eq!(monitor.health(&"a"), Some(Health::Down));
        assert_eq!(monitor.health(&"c"), Some(Health::Down));
        assert_eq!(monitor.entries.len(), 2);
        // A key named twice (a service before and after a change) with its target unchanged.
        monitor.set_some_targets(["a", "a"], vec![keep.clone()]);
        assert_eq!(monitor.health(&"a"), Some(Health::Down));
        assert!(events.try_recv().is_err());

        // Removed: no state, no task.
        monitor.set_targets(vec![keep]);
        assert_eq!(monitor.health(&"c"), None);
        assert_eq!(monitor.last_error(&"c"), None);
        assert_eq!(monitor.entries.len(), 1);
    }

    #[tokio::test]
    async fn removed_and_dropped_targets_stop_probing() {
        let listener = TcpListener::bind((LOCAL, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = serve_tcp(listener);
        let probes = || accepted.load(Ordering::SeqCst);
        let (tx, _events) = unbounded_channel();
        let mut monitor = Monitor::new(tx);
        let checked = vec![target("a", addr, fast(Check::Tcp))];

        monitor.set_targets(checked.clone());
        time::sleep(Duration::from_millis(80)).await;
        assert!(probes() >= 2);
        monitor.set_targets(Vec::new());
        time::sleep(Duration::from_millis(30)).await;
        let stopped = probes();
        time::sleep(Duration::from_millis(80)).await;
        assert_eq!(probes(), stopped);

        monitor.set_targets(checked);
        time::sleep(Duration::from_millis(80)).await;
        assert!(probes() >= stopped + 2);
        drop(monitor);
        time::sleep(Duration::from_millis(30)).await;
        let stopped = probes();
        time::sleep(Duration::from_millis(80)).await;
        assert_eq!(probes(), stopped);
    }

    #[test]
    fn stagger_within_interval() {
        let seed = RandomState::new();
        let offsets: Vec<_> = (0..20u16)
            .map(|i| stagger(seed.hash_one(i), 1000))
            .collect();
        assert!(offsets.iter().all(|o| *o < Duration::from_secs(1)));
        assert!(offsets.iter().any(|o| *o != offsets[0]));
        assert_eq!(stagger(12345, 0), Duration::ZERO);
    }

    #[test]
    fn serde_forms() {
        let parse = |s: &str| serde_json::from_str::<HealthCheck>(s);
        assert_eq!(parse(r#"{"type":"tcp"}"#).unwrap(), HealthCheck::default());
        assert_eq!(parse("{}").unwrap(), HealthCheck::default());
        assert_eq!(parse(r#"{"type":"none"}"#).unwrap().check, Check::None);
        assert_eq!(
            parse(r#"{"type":"http"}"#).unwrap(),
            HealthCheck {
                check: http("/", None),
                ..HealthCheck::default()
            }
        );
        assert_eq!(
            serde_json::to_string(&HealthCheck::default()).unwrap(),
            r#"{"type":"tcp","interval_ms":1000,"timeout_ms":1000,"rise":2,"fall":2}"#
        );

        let full = serde_json::json!({
            "type": "http", "path": "/health", "status": 204, "body": "ok",
            "port": 8080, "interval_ms": 500, "timeout_ms": 200, "rise": 3, "fall": 1,
        });
        let hc: HealthCheck = serde_json::from_value(full.clone()).unwrap();
        assert_eq!(
            hc,
            HealthCheck {
                check: Check::Http {
                    path: "/health".into(),
                    status: 204,
                    body: Some("ok".into())
                },
                port: Some(8080),
                interval_ms: 500,
                timeout_ms: 200,
                rise: 3,
                fall: 1,
            }
        );
        assert_eq!(serde_json::to_value(&hc).unwrap(), full);
        for hc in [
            HealthCheck::default(),
            fast(Check::None),
            fast(http("/x", None)),
        ] {
            let back = serde_json::from_str::<HealthCheck>(&serde_json::to_string(&hc).unwrap());
            assert_eq!(back.unwrap(), hc);
        }

        // Check alone, as the doc shows it.
        assert_eq!(
            serde_json::from_str::<Check>(
                r#"{"type":"http","path":"/health","status":200,"body":"ok"}"#
            )
            .unwrap(),
            http("/health", Some("ok"))
        );
        assert!(serde_json::from_str::<Check>(r#"{"type":"http","x":1}"#).is_err());
        assert_eq!(serde_json::to_string(&Health::Down).unwrap(), r#""down""#);
        assert_eq!(
            serde_json::from_str::<Health>(r#""up""#).unwrap(),
            Health::Up
        );
    }

    #[test]
    fn serde_rejects_unknown_fields() {
        let error = |s: &str| {
            serde_json::from_str::<HealthCheck>(s)
                .unwrap_err()
                .to_string()
        };
        assert!(error(r#"{"type":"tcp","bogus":1}"#).contains("unknown field `bogus`"));
        assert!(error(r#"{"type":"http","interval":1}"#).contains("unknown field `interval`"));
        assert!(error(r#"{"type":"udp"}"#).contains("unknown variant `udp`"));
        assert!(error(r#"{"type":"tcp","path":"/"}"#)
            .contains("`path` is only for checks of type http and https"));
        assert!(error(r#"{"type":"http","sni":"a.example"}"#)
            .contains("`sni` is only for checks of type https"));
        assert!(error(r#"{"type":"ping","command":"/bin/true"}"#)
            .contains("`command` is only for checks of type script"));
        assert!(error(r#"{"type":"script"}"#).contains("a script check needs its `command`"));
        assert!(error(r#"{"type":"none","body":"ok"}"#).contains("`body` is only"));
    }

    #[test]
    fn validate() {
        let error = |hc: HealthCheck| {
            let e = hc.validate().unwrap_err().to_string();
            assert!(!e.contains('\n'), "{e}");
            e
        };
        HealthCheck::default().validate().unwrap();
        fast(http("/health", Some("ok"))).validate().unwrap();
        let d = HealthCheck::default;
        assert!(error(HealthCheck {
            interval_ms: 0,
            ..d()
        })
        .contains("interval_ms must be"));
        assert!(error(HealthCheck {
            interval_ms: MAX_MS + 1,
            timeout_ms: 10,
            ..d()
        })
        .contains("interval_ms must be 1..=3600000"));
        assert!(error(HealthCheck {
            timeout_ms: 0,
            ..d()
        })
        .contains("timeout_ms must be"));
        assert_eq!(
            error(HealthCheck {
                timeout_ms: 2000,
                ..d()
            }),
            "timeout_ms (2000) must not exceed interval_ms (1000)"
        );
        assert_eq!(
            error(HealthCheck { rise: 0, ..d() }),
            "rise must be 1..=100, got 0"
        );
        assert_eq!(
            error(HealthCheck { fall: 101, ..d() }),
            "fall must be 1..=100, got 101"
        );
        assert!(error(HealthCheck {
            port: Some(0),
            ..d()
        })
        .contains("port 0"));
        assert!(error(fast(http("health", None))).contains("must start with '/'"));
        assert!(error(fast(http("/a b", None))).contains("spaces or control"));
        assert!(error(fast(http("/a\r\nX: y", None))).contains("spaces or control"));
        for status in [99, 600] {
            let check = Check::Http {
                path: "/".into(),
                status,
                body: None,
            };
            assert!(error(fast(check)).contains("status must be 100..=599"));
        }
    }
}
