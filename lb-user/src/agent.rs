//! `xdplb run`: owns the datapath of one interface, keeps the desired state, serves the control
//! socket, runs health checks and metrics.
//!
//! The datapath is pinned in bpffs and the state saved beside it, so a new agent adopts a running
//! datapath without a dropped packet (after a crash, SIGKILL or SIGQUIT). SIGINT and SIGTERM
//! detach and remove everything; SIGHUP reloads the config file.

use std::{
    collections::HashMap,
    fs,
    net::{Ipv4Addr, SocketAddr},
    os::{
        fd::AsRawFd as _,
        unix::fs::{DirBuilderExt as _, PermissionsExt as _},
    },
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use anyhow::{anyhow, bail, Context as _, Result};
use lb_common::{addr_from_v4, DirectorConfig};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    signal::unix::{signal, SignalKind},
    sync::{mpsc, Mutex},
};
use tracing::{error, info, warn};

use crate::{
    config::{Config, Director, Source, Timeouts},
    control::{Listing, Request, Response},
    datapath::{
        clock::director_config, pin::Pins, AttachMode, Attachment, Datapath, LoadOptions, MapWriter,
    },
    health::{Health, Monitor, Target, Transition},
    metrics,
    net::{self, Interface},
    state::{self, persist, Forward, Mac, RealSpec, ServiceAddr, State},
};

/// How often kernel-learned MAC addresses (real servers, next hops) and the MTU are re-read.
const REFRESH_INTERVAL: Duration = Duration::from_secs(5);

/// Where agents keep their lock, their saved state and (by default) their socket.
pub const RUN_DIR: &str = "/run/xdplb";

/// What `xdplb run` was asked for.
pub struct RunOptions {
    pub director: Director,
    pub timeouts: Timeouts,
    pub socket: PathBuf,
    /// The config file, if the agent runs from one (services are then applied from it).
    pub config: Option<PathBuf>,
    /// Where bpffs is (or gets) mounted for the pins.
    pub bpffs: PathBuf,
    /// The datapath's debug logs (aya-log), into the agent's log.
    pub datapath_log: bool,
}

/// Passes the datapath's aya-log records on to the agent's log (through the `log` bridge).
fn forward_datapath_logs(datapath: &mut Datapath) -> Result<()> {
    let logger = aya_log::EbpfLogger::init(datapath.ebpf_mut())
        .context("cannot read the datapath's logs")?;
    // SAFETY: the logger owns its ring buffer's descriptor and lives inside the AsyncFd.
    let mut logger = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    }
    .map_err(|e| anyhow!("cannot watch the datapath's logs: {}", e.into_parts().1))?;
    tokio::spawn(async move {
        while let Ok(mut guard) = logger.readable_mut().await {
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
    Ok(())
}

/// A health-check target: one real server of one service.
type Key = (ServiceAddr, Ipv4Addr);

/// The agent's mutable core: the desired state and the maps it is mirrored into.
pub struct Agent {
    state: State,
    maps: Box<dyn MapWriter>,
    iface: Interface,
    mode: AttachMode,
    config: DirectorConfig,
    director: Director,
    timeouts: Timeouts,
    config_path: Option<PathBuf>,
    state_file: Option<PathBuf>,
    monitor: Monitor<Key>,
    started: SystemTime,
    reloads: u64,
    reload_failures: u64,
}

impl Agent {
    pub fn state(&self) -> &State {
        &self.state
    }

    /// Makes `next` the current state once the datapath holds it.
    fn commit(&mut self, next: State) -> Result<()> {
        state::apply(self.maps.as_mut(), &self.state, &next)?;
        self.state = next;
        self.checks_follow_state();
        if let Some(path) = &self.state_file {
            if let Err(e) = persist::save(path, self.mode, &self.state) {
                warn!("cannot save the state for a restart: {e:#}");
            }
        }
        Ok(())
    }

    /// Health checks run for exactly the real servers that have one.
    fn checks_follow_state(&mut self) {
        let targets = self
            .state
            .services
            .values()
            .flat_map(|s| {
                s.reals.iter().filter_map(move |r| {
                    let check = r.check.clone()?;
                    let addr = check.probe_addr(SocketAddr::from((r.addr, r.port)));
                    Some(Target {
                        key: (s.addr, r.addr),
                        addr,
                        check,
                    })
                })
            })
            .collect();
        self.monitor.set_targets(targets);
    }

    /// At start: the checks begin from the health the saved state knows, so a restarted agent
    /// keeps a dead server out instead of trusting it until `fall` checks fail.
    fn restore_health(&self) {
        for s in self.state.services.values() {
            for r in s.reals.iter().filter(|r| r.health == Health::Down) {
                self.monitor.assume(&(s.addr, r.addr), Health::Down);
            }
        }
    }

    fn listing(&self) -> Result<Listing> {
        let counters = self.maps.counters()?;
        Ok(Listing::new(
            &self.iface.name,
            self.mode,
            &self.state,
            &counters,
        ))
    }

    pub async fn handle(&mut self, req: Request) -> Response {
        match self.execute(req).await {
            Ok(r) => r,
            Err(e) => Response::Error {
                message: format!("{e:#}").replace('\n', " "),
            },
        }
    }

    async fn execute(&mut self, req: Request) -> Result<Response> {
        let next = match req {
            Request::List => return Ok(Response::Listing(self.listing()?)),
            Request::AddService { service, scheduler } => {
                self.state.add_service(service, &scheduler)?
            }
            Request::EditService { service, scheduler } => {
                self.state.edit_service(service, &scheduler)?
            }
            Request::DelService { service } => self.state.del_service(service)?,
            Request::AddReal { service, real } => {
                self.state.check_new_real(service, &real)?;
                let learned = self.learn_mac(&real, None).await?;
                self.state.add_real_learned(service, &real, learned)?
            }
            Request::EditReal { service, real } => {
                // Everything is checked before a changed method makes the agent learn a new MAC.
                self.state.edit_real(
                    service,
                    &RealSpec {
                        mac: None,
                        ..real.clone()
                    },
                )?;
                let before = real
                    .addr
                    .and_then(|a| self.state.service(&service).ok()?.real(a).cloned());
                let learned = match before {
                    Some(b) if real.forward.is_some_and(|f| f != b.forward) && !b.pinned_mac => {
                        self.learn_mac(&real, Some(b.forward)).await?
                    }
                    _ => None,
                };
                self.state.edit_real_learned(service, &real, learned)?
            }
            Request::DelReal { service, addr } => self.state.del_real(service, addr)?,
            Request::Simulate { service, flows } => {
                let reals = flows
                    .iter()
                    .map(|&(src, sport)| {
                        let real = self.state.simulate(&service, src, sport)?;
                        Ok(real.map(|r| format!("{}:{}", r.addr, r.port)))
                    })
                    .collect::<Result<_>>()?;
                return Ok(Response::Simulated { reals });
            }
            Request::Reload => {
                self.reload().await?;
                return Ok(Response::Ok);
            }
            Request::Save => {
                let cfg = Config::from_state(self.director.clone(), self.timeouts, &self.state);
                return Ok(Response::Saved {
                    config: cfg.to_toml()?,
                });
            }
            Request::Zero => {
                self.maps.reset_all_counters()?;
                return Ok(Response::Ok);
            }
        };
        self.commit(next)?;
        Ok(Response::Ok)
    }

    /// Applies the config file again, changing only what differs; a bad file changes nothing.
    async fn reload(&mut self) -> Result<()> {
        let result = self.try_reload().await;
        match &result {
            Ok(()) => {
                self.reloads += 1;
                info!("configuration reloaded");
            }
            Err(e) => {
                self.reload_failures += 1;
                error!("reload rejected, nothing changed: {e:#}");
            }
        }
        result
    }

    async fn try_reload(&mut self) -> Result<()> {
        let path = self.config_path.clone().ok_or_else(|| {
            anyhow!("the agent was started without --config: there is nothing to reload")
        })?;
        let src = Source::read(&path)?;
        let cfg = src.parse()?;
        if cfg.director() != self.director {
            bail!(
                "{}: interface, mode, conn_max, tunnel_src and metrics are fixed while the agent runs; restart it to change them",
                path.display()
            );
        }
        let next = self.state_from(&cfg, &src).await?;
        if cfg.timeouts != self.timeouts {
            let config = director_config(
                self.config.mac,
                &cfg.timeouts,
                self.config.mtu,
                self.config.tunnel_src,
            )?;
            self.maps.set_config(&config)?;
            self.config = config;
            self.timeouts = cfg.timeouts;
        }
        self.commit(next)
    }

    /// The state `cfg` describes, reached from the current one; learns the MACs it needs first.
    async fn state_from(&self, cfg: &Config, src: &Source) -> Result<State> {
        let mut learned = HashMap::new();
        for need in cfg.macs_needed(&self.state) {
            let spec = RealSpec {
                addr: Some(need.addr),
                forward: Some(need.forward),
                ..Default::default()
            };
            let mac = self
                .learn_mac(&spec, None)
                .await
                .map_err(|e| src.error_at(&need.span, format!("{e:#}")))?;
            learned.insert(
                (need.service, need.addr),
                mac.expect("no MAC given, so one was learned"),
            );
        }
        cfg.apply_to(&self.state, &learned, src)
    }

    /// The MAC address frames for this real server go to, from the kernel's routes and
    /// neighbours, unless --mac gave it. Called after everything else is checked, so bad input
    /// never causes ARP traffic.
    async fn learn_mac(&self, real: &RealSpec, current: Option<Forward>) -> Result<Option<Mac>> {
        let Some(addr) = real.addr.filter(|_| real.mac.is_none()) else {
            return Ok(None);
        };
        let forward = real.forward.or(current).unwrap_or_default();
        if forward == Forward::Tunnel && self.config.tunnel_src == [0; 16] {
            bail!(
                "LVS/TUN needs a tunnel source address: {} has no IPv4 address; start the agent with --tunnel-src",
                self.iface.name
            );
        }
        Ok(Some(Mac(resolve_mac(&self.iface, forward, addr).await?)))
    }

    /// Re-reads every kernel-learned MAC and the interface MTU; writes what changed.
    async fn refresh(&mut self) -> Result<()> {
        let mut learned = Vec::new();
        for svc in self.state.services.values() {
            for r in svc.reals.iter().filter(|r| !r.pinned_mac) {
                match resolve_mac(&self.iface, r.forward, r.addr).await {
                    Ok(mac) if Mac(mac) != r.mac => learned.push((svc.addr, r.addr, Mac(mac))),
                    Ok(_) => {}
                    Err(e) => warn!("keeping the last MAC of {}: {e:#}", r.addr),
                }
            }
        }
        if !learned.is_empty() {
            let next = self.state.with_learned_macs(&learned);
            self.commit(next)?;
        }
        let mtu = net::interface(&self.iface.name).await?.mtu;
        if mtu != self.config.mtu {
            self.config.mtu = mtu;
            self.maps.set_config(&self.config)?;
        }
        Ok(())
    }

    /// A health transition: the real server leaves (or rejoins) its service's table.
    fn health_changed(&mut self, t: Transition<Key>) {
        let ((service, addr), health, error) = (t.key, t.health, t.error);
        match health {
            Health::Down => {
                warn!(%service, real = %addr, error = error.as_deref().unwrap_or(""), "real server down")
            }
            Health::Up => info!(%service, real = %addr, "real server up"),
        }
        let next = match self.state.set_health(service, addr, health, error) {
            Ok(next) => next,
            Err(_) => return, // removed meanwhile
        };
        if let Err(e) = self.commit(next) {
            error!("cannot apply the health change of {addr}: {e:#}");
        }
        if let Ok(svc) = self.state.service(&service) {
            if !svc.reals.is_empty() && svc.reals.iter().all(|r| r.effective_weight() == 0) {
                error!(%service, "no real server can take new flows: every one is down or drained; new connections are dropped");
            }
        }
    }

    fn metrics_text(&self) -> Result<String> {
        let info = metrics::AgentInfo {
            version: env!("CARGO_PKG_VERSION"),
            interface: self.iface.name.clone(),
            mode: format!("{:?}", self.mode).to_lowercase(),
            program_id: None,
            started: self.started,
            reloads: self.reloads,
            reload_failures: self.reload_failures,
        };
        let listing = self.listing()?;
        Ok(metrics::render(&listing, &info, |_, r| {
            r.health.as_ref().map(|h| h.state == Health::Up)
        }))
    }
}

/// Where frames for a real server go: itself (DR) or the next hop toward it (TUN).
async fn resolve_mac(iface: &Interface, forward: Forward, addr: Ipv4Addr) -> Result<[u8; 6]> {
    match forward {
        Forward::Route => net::resolve_real_mac(iface, addr).await,
        Forward::Tunnel => net::resolve_next_hop_mac(iface, addr).await,
    }
}

/// Refuses to start over a live agent; removes a socket file left by a dead one.
fn prepare_socket(path: &Path) -> Result<()> {
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        bail!("an xdplb agent is already listening on {}", path.display());
    }
    let _ = fs::remove_file(path);
    if let Some(dir) = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty() && !d.exists())
    {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    Ok(())
}

/// The agent's own directory for an interface (lock, saved state), beside its pins.
pub fn run_dir(ifname: &str) -> Result<PathBuf> {
    Ok(Path::new(RUN_DIR).join(format!("net{}-{ifname}", crate::datapath::pin::netns_id()?)))
}

/// One agent per interface: an exclusive lock held for the agent's life.
fn lock_interface(dir: &Path, ifname: &str) -> Result<fs::File> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("lock"))?;
    // SAFETY: flock on an fd we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        bail!("an xdplb agent already runs on {ifname}");
    }
    Ok(file)
}

async fn serve(agent: Arc<Mutex<Agent>>, stream: UnixStream) -> Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut line = String::new();
    BufReader::new(rd).read_line(&mut line).await?;
    let response = match serde_json::from_str::<Request>(&line) {
        Ok(req) => agent.lock().await.handle(req).await,
        Err(e) => Response::Error {
            message: format!("malformed request: {e}"),
        },
    };
    let mut out = serde_json::to_string(&response)?;
    out.push('\n');
    wr.write_all(out.as_bytes()).await?;
    Ok(())
}

/// The datapath loaded (or adopted) and attached, with its settings and state.
struct Up {
    datapath: Datapath,
    maps: crate::datapath::Maps,
    config: DirectorConfig,
    state: State,
    attachment: Attachment,
    mode: AttachMode,
    adopted: bool,
}

/// Whether `e` says a pinned link's interface is gone (ENOLINK: "link has been severed").
fn severed(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error)
            == Some(libc::ENOLINK)
            || c.to_string().contains("severed")
    })
}

/// Loads the program on the pinned maps (adopting a running datapath when there is one),
/// configures it, takes up the saved state and attaches through the pinned link.
async fn bring_up(
    opts: &RunOptions,
    iface: &Interface,
    pins: &Pins,
    state_file: &Path,
) -> Result<Up> {
    let director = &opts.director;
    let adopting = pins.map(lb_common::map_names::SERVICES).exists();
    let mut datapath = Datapath::load_lb_pinned(
        LoadOptions {
            conn_max: director.conn_max,
            datapath_log: opts.datapath_log,
        },
        pins,
    )?;
    let mut maps = datapath.maps()?;
    let tunnel_src = match director.tunnel_src {
        Some(a) => Some(a),
        None => net::ipv4_addresses(Some(iface.index))
            .await?
            .first()
            .copied(),
    };
    let config = director_config(
        iface.mac,
        &opts.timeouts,
        iface.mtu,
        tunnel_src.map_or([0; 16], |a| addr_from_v4(a.octets())),
    )?;
    maps.set_config(&config)?;
    // An adopted datapath: its saved state, written back whole (counters kept) so maps and
    // state agree even if the last agent died half-way through a change.
    let (state, saved_mode) = match adopting.then(|| persist::load(state_file)) {
        Some(Ok((mode, state))) => (state, Some(mode)),
        Some(Err(e)) => {
            warn!("adopting the pinned datapath without its saved state: {e:#}");
            (State::default(), None)
        }
        None => (State::default(), None),
    };
    state::resync(&mut maps, &state).context("cannot write the adopted state back")?;
    let (attachment, mode) = datapath
        .attach_pinned(iface.index, director.mode, pins)
        .with_context(|| format!("interface {}", iface.name))?;
    let mode = mode.or(saved_mode).unwrap_or(director.mode);
    Ok(Up {
        datapath,
        maps,
        config,
        state,
        attachment,
        mode,
        adopted: adopting,
    })
}

/// How the agent ends.
enum Exit {
    /// Detach and remove the pins: traffic for the services stops.
    Detach,
    /// Leave the datapath running for the next agent.
    Leave,
}

pub async fn run(opts: RunOptions) -> Result<()> {
    // A config file is checked before anything else happens.
    let initial = match &opts.config {
        Some(path) => {
            let src = Source::read(path)?;
            let cfg = src.parse()?;
            Some((src, cfg))
        }
        None => None,
    };
    let director = opts.director.clone();
    let iface = net::interface(&director.interface).await?;
    let run_dir = run_dir(&iface.name)?;
    let _lock = lock_interface(&run_dir, &iface.name)?;
    prepare_socket(&opts.socket)?;

    let pins = Pins::for_interface(&opts.bpffs, &iface.name)?;
    let state_file = run_dir.join("state.json");
    let fresh = !pins.map(lb_common::map_names::SERVICES).exists();
    let up = match bring_up(&opts, &iface, &pins, &state_file).await {
        // The pins of a datapath whose interface is gone (a deleted namespace whose number was
        // reused, an interface created anew): nothing to adopt, start afresh.
        Err(e) if severed(&e) => {
            warn!(interface = %iface.name, "the pinned datapath belonged to an interface that is gone; starting afresh");
            pins.remove()?;
            let _ = fs::remove_file(&state_file);
            let pins = Pins::for_interface(&opts.bpffs, &iface.name)?;
            bring_up(&opts, &iface, &pins, &state_file).await
        }
        other => other,
    };
    let Up {
        mut datapath,
        maps,
        config,
        mut state,
        attachment,
        mode,
        adopted,
    } = match up {
        Ok(up) => up,
        Err(e) => {
            // A start that fails leaves nothing behind (an adopted datapath keeps running).
            if fresh {
                let _ = pins.remove();
                let _ = fs::remove_dir_all(&run_dir);
            }
            return Err(e);
        }
    };
    if opts.datapath_log {
        forward_datapath_logs(&mut datapath)?;
    }
    if adopted {
        info!(interface = %iface.name, "adopted the running datapath: new program swapped in, maps and flows kept");
        let capacity = maps.conn_capacity()?;
        if capacity != director.conn_max {
            warn!(
                "keeping the pinned connection table of {capacity} flows (asked for {}): it cannot be resized while it holds flows; `xdplb detach` and start again to resize it",
                director.conn_max
            );
        }
    }

    let (events_tx, mut events) = mpsc::unbounded_channel();
    let mut agent = Agent {
        state: State::default(),
        maps: Box::new(maps),
        iface,
        mode,
        config,
        director: director.clone(),
        timeouts: opts.timeouts,
        config_path: opts.config.clone(),
        state_file: Some(state_file.clone()),
        monitor: Monitor::new(events_tx),
        started: SystemTime::now(),
        reloads: 0,
        reload_failures: 0,
    };
    std::mem::swap(&mut agent.state, &mut state);
    agent.checks_follow_state();
    agent.restore_health();
    // Saved from the start: a datapath left behind always has its state beside it.
    persist::save(&state_file, agent.mode, &agent.state)?;
    if let Some((src, cfg)) = &initial {
        let next = agent.state_from(cfg, src).await?;
        agent.commit(next)?;
    }

    let listener = UnixListener::bind(&opts.socket)
        .with_context(|| format!("cannot listen on {}", opts.socket.display()))?;
    // Root-only: whoever can talk to the agent can redirect the director's traffic.
    fs::set_permissions(&opts.socket, fs::Permissions::from_mode(0o600))?;
    info!(
        interface = %agent.iface.name,
        mode = %format!("{mode:?}").to_lowercase(),
        socket = %opts.socket.display(),
        "xdplb agent ready"
    );
    let agent = Arc::new(Mutex::new(agent));

    let metrics_task = match &director.metrics {
        Some(m) => {
            let listener = tokio::net::TcpListener::bind(m.listen)
                .await
                .with_context(|| format!("cannot serve metrics on {}", m.listen))?;
            info!(listen = %m.listen, "serving Prometheus metrics");
            let agent = agent.clone();
            Some(tokio::spawn(metrics::serve(listener, move || {
                let agent = agent.clone();
                async move { agent.lock().await.metrics_text() }
            })))
        }
        None => None,
    };

    let mut refresh = tokio::time::interval(REFRESH_INTERVAL);
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let mut sigquit = signal(SignalKind::quit())?;
    let exit = loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = accepted?;
                let agent = agent.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve(agent, stream).await {
                        warn!("control connection: {e:#}");
                    }
                });
            }
            Some(t) = events.recv() => agent.lock().await.health_changed(t),
            _ = refresh.tick() => {
                if let Err(e) = agent.lock().await.refresh().await {
                    warn!("refresh: {e:#}");
                }
            }
            _ = sighup.recv() => { let _ = agent.lock().await.reload().await; }
            _ = sigint.recv() => break Exit::Detach,
            _ = sigterm.recv() => break Exit::Detach,
            _ = sigquit.recv() => break Exit::Leave,
        }
    };
    if let Some(t) = metrics_task {
        t.abort();
    }
    let _ = fs::remove_file(&opts.socket);
    match exit {
        Exit::Detach => {
            // Without its pins and with our descriptors closed, the program detaches and the
            // maps are freed.
            pins.remove()?;
            let _ = fs::remove_dir_all(&run_dir);
            if let Attachment::Pinned(link) = attachment {
                drop(aya::programs::links::FdLink::from(link));
            }
            drop(datapath);
            info!("detached");
        }
        Exit::Leave => {
            drop(attachment);
            drop(datapath);
            info!(
                "exited; the datapath keeps forwarding (pinned in {})",
                pins.dir().display()
            );
        }
    }
    Ok(())
}

/// `xdplb detach --iface IF`: removes a datapath no agent runs anymore.
pub fn detach(bpffs: &Path, ifname: &str) -> Result<()> {
    let dir = run_dir(ifname)?;
    if dir.exists() {
        let _lock = lock_interface(&dir, ifname).map_err(|_| {
            anyhow!("an xdplb agent runs on {ifname}: stop it with SIGTERM, which detaches too")
        })?;
    }
    let Some(pins) = crate::datapath::pin::Pins::existing(bpffs, ifname)? else {
        bail!("xdplb is not attached to {ifname} (no pins in this network namespace)");
    };
    pins.remove()?;
    let _ = fs::remove_dir_all(&dir);
    Ok(())
}
