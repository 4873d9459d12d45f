//! Starting the agent (pinning, or adopting a running datapath), its event loop and signals,
//! stopping; and `xdplb detach`.

use std::{
    fs,
    os::{
        fd::AsRawFd as _,
        unix::fs::{DirBuilderExt as _, PermissionsExt as _},
    },
    path::{Path, PathBuf},
    sync::Arc,
    time::SystemTime,
};

use anyhow::{anyhow, bail, Context as _, Result};
use lb_common::{addr_from_v4, DirectorConfig};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    signal::unix::{signal, SignalKind},
    sync::{mpsc, Mutex},
};
use tracing::{info, warn};

use super::{Agent, COUNT_INTERVAL, LINK_POLL_INTERVAL, NEIGH_POLL_INTERVAL, REFRESH_INTERVAL};
use crate::{
    announce::Announcer,
    config::{Director, Reread, Source, Timeouts},
    conntrack::table::PinnedTable,
    control::{Request, Response},
    datapath::{
        clock::{director_config, jiffies_now, with_sync},
        pin::Pins,
        AttachMode, Attachment, Datapath, LoadOptions, MapWriter, SyncRing,
    },
    health::Monitor,
    net::{self, Interface},
    state::{self, persist, State},
    sync::{Directory, SyncDaemon},
    web,
};

/// Where agents keep their lock, their saved state and (by default) their socket.
pub const RUN_DIR: &str = "/run/xdplb";

/// What `xdplb run` was asked for.
pub struct RunOptions {
    pub director: Director,
    pub timeouts: Timeouts,
    pub socket: PathBuf,
    /// The config file, if the agent runs from one (services are then applied from it): read
    /// and parsed once, before anything else happens.
    pub config: Option<(Source, Reread)>,
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

/// This process's effective capabilities (CapEff of /proc/self/status), if readable.
fn effective_capabilities() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// What is missing of what attaching XDP needs: CAP_NET_ADMIN, and CAP_BPF or CAP_SYS_ADMIN
/// (which still allows BPF). None when it is all there, or when the capabilities are unknown
/// (then the kernel says no, later).
pub(crate) fn missing_capabilities(effective: Option<u64>) -> Option<String> {
    const CAP_NET_ADMIN: u32 = 12;
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_BPF: u32 = 39;
    let caps = effective?;
    let has = |cap: u32| caps & (1 << cap) != 0;
    let mut missing = Vec::new();
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_BPF");
    }
    (!missing.is_empty()).then(|| missing.join(" and "))
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

/// The longest request the control socket takes: an `ipvsadm -R` of many thousands of rules.
const MAX_REQUEST: u64 = 64 << 20;
/// How long a client may take to send its request.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// One connection on the control socket: the CLI's one-line JSON request (it starts with `{`),
/// or HTTP (the API, see [`web`]).
async fn serve(agent: Arc<Mutex<Agent>>, stream: UnixStream, api: axum::Router) -> Result<()> {
    let first = tokio::time::timeout(REQUEST_TIMEOUT, first_byte(&stream))
        .await
        .map_err(|_| anyhow!("no request within {} s", REQUEST_TIMEOUT.as_secs()))?;
    match first? {
        None => Ok(()),
        Some(b'{') => serve_request(agent, stream).await,
        Some(_) => {
            web::serve_connection(stream, api, "control socket").await;
            Ok(())
        }
    }
}

/// The first byte the peer sent, left in the socket; None if it closed without sending any.
async fn first_byte(stream: &UnixStream) -> Result<Option<u8>> {
    loop {
        stream.readable().await?;
        let mut byte = 0u8;
        let peeked = stream.try_io(tokio::io::Interest::READABLE, || {
            // SAFETY: a one-byte buffer we own, on a socket we own.
            let n = unsafe {
                libc::recv(
                    stream.as_raw_fd(),
                    (&raw mut byte).cast(),
                    1,
                    libc::MSG_PEEK,
                )
            };
            if n < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(n)
            }
        });
        match peeked {
            Ok(0) => return Ok(None),
            Ok(_) => return Ok(Some(byte)),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

async fn serve_request(agent: Arc<Mutex<Agent>>, stream: UnixStream) -> Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut line = String::new();
    // A request is one line, read within a deadline and up to a size: a client that sends an
    // endless line, or nothing, holds nothing for long.
    let mut reader = BufReader::new(rd.take(MAX_REQUEST));
    match tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line)).await {
        Ok(result) => {
            result?;
        }
        Err(_) => bail!("no request within {} s", REQUEST_TIMEOUT.as_secs()),
    }
    if !line.ends_with('\n') && line.len() as u64 >= MAX_REQUEST {
        let response = Response::error(&anyhow!(
            "malformed request: longer than {} MiB",
            MAX_REQUEST >> 20
        ));
        let mut out = serde_json::to_string(&response)?;
        out.push('\n');
        wr.write_all(out.as_bytes()).await?;
        return Ok(());
    }
    let response = match serde_json::from_str::<Request>(&line) {
        Ok(req) => agent.lock().await.handle(req).await,
        Err(e) => Response::error(&anyhow!("malformed request: {e}")),
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
    /// The outer source of IPv6 LVS/TUN packets, if any.
    tunnel_src6: Option<std::net::Ipv6Addr>,
    state: State,
    /// One per interface, the first one first.
    attachments: Vec<Attachment>,
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
    ifaces: &[Interface],
    pins: &Pins,
    state_file: &Path,
) -> Result<Up> {
    let director = &opts.director;
    let iface = &ifaces[0];
    let adopting = pins.map(lb_common::map_names::SERVICES).exists();
    // A running datapath keeps the room it was made with: its maps are pinned, sized.
    let limits = match pins.limits()? {
        Some(pinned) if adopting => {
            if pinned != director.limits {
                warn!(
                    "keeping the pinned datapath's room for {} services and {} real servers (asked for {} and {}): its maps cannot be resized while they hold the state; `xdplb detach` and start again to resize them",
                    pinned.services, pinned.reals, director.limits.services, director.limits.reals
                );
            }
            pinned
        }
        _ => director.limits,
    };
    let mut datapath = Datapath::load_lb_pinned(
        LoadOptions {
            conn_max: director.conn_max,
            nat_max: director.nat_max(),
            datapath_log: opts.datapath_log,
            limits,
            ..LoadOptions::default()
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
    let tunnel_src6 = match director.tunnel_src6 {
        Some(a) => Some(a),
        None => net::ipv6_global_addresses(Some(iface.index))
            .await?
            .first()
            .copied(),
    };
    let config = with_sync(
        director_config(
            iface.mac,
            &opts.timeouts,
            iface.mtu,
            tunnel_src.map_or([0; 16], |a| addr_from_v4(a.octets())),
        )?,
        director.sync.is_some(),
    );
    maps.set_config(&config)?;
    maps.set_tunnel_src6(tunnel_src6.map_or([0; 16], |a| a.octets()))?;
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)? as u32;
    maps.set_new_flow_limit(
        director
            .new_flow_limit
            .unwrap_or_else(|| lb_common::default_new_flow_limit(director.conn_max, cpus)),
    )?;
    let entries: Vec<(u32, lb_common::Iface)> = ifaces
        .iter()
        .map(|i| {
            let entry = lb_common::Iface {
                mac: i.mac,
                _pad: 0,
                mtu: i.mtu,
            };
            (i.index, entry)
        })
        .collect();
    maps.set_interfaces(&entries)?;
    // An adopted datapath: its saved state, written back whole (counters kept) so maps and
    // state agree even if the last agent died half-way through a change.
    let (state, saved_mode) = match adopting.then(|| persist::load(state_file, limits)) {
        Some(Ok((mode, state))) => (state, Some(mode)),
        Some(Err(e)) => {
            warn!("adopting the pinned datapath without its saved state: {e:#}");
            (State::with_limits(limits), None)
        }
        None => (State::with_limits(limits), None),
    };
    state::resync(&mut maps, &state).context("cannot write the adopted state back")?;
    // Older versions' tables: what must be in place before this program runs, moved now.
    let adoption = crate::conntrack::migrate::before_swap(pins, &maps)?;
    let (first, mode) = datapath
        .attach_pinned(iface.index, None, director.mode, pins)
        .with_context(|| format!("interface {}", iface.name))?;
    let mode = mode.or(saved_mode).unwrap_or(director.mode);
    let mut attachments = vec![first];
    // The others in the first one's mode; interfaces left out of the configuration are left.
    let others: Vec<&str> = ifaces[1..].iter().map(|i| i.name.as_str()).collect();
    pins.unpin_other_links(&others)?;
    for i in &ifaces[1..] {
        let (attachment, _) = datapath
            .attach_pinned(i.index, Some(&i.name), mode, pins)
            .with_context(|| format!("interface {}", i.name))?;
        attachments.push(attachment);
    }
    // The rest of them, once the old program no longer runs.
    crate::conntrack::migrate::after_swap(pins, &mut maps, adoption)?;
    Ok(Up {
        datapath,
        maps,
        config,
        tunnel_src6,
        state,
        attachments,
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

pub async fn run(mut opts: RunOptions) -> Result<()> {
    let (initial, config_path) = match opts.config.take() {
        Some((src, read)) => {
            let path = src.path.clone();
            (Some((src, read)), Some(path))
        }
        None => (None, None),
    };
    let director = opts.director.clone();
    director.validate()?;
    if let Some(missing) = missing_capabilities(effective_capabilities()) {
        bail!(
            "xdplb run needs {missing}: run it as root, or with the capabilities of \
             examples/xdplb.service"
        );
    }
    let sync_key = director.sync.as_ref().map(|s| s.load_key()).transpose()?;
    let mut ifaces = Vec::new();
    for name in director.interfaces() {
        ifaces.push(net::interface(name).await?);
    }
    let iface = ifaces[0].clone();
    let run_dir = run_dir(&iface.name)?;
    let _lock = lock_interface(&run_dir, &iface.name)?;
    prepare_socket(&opts.socket)?;
    let sync_sockets = match &director.sync {
        Some(s) => Some(crate::sync::Sockets::bind(s).await?),
        None => None,
    };

    let pins = Pins::for_interface(&opts.bpffs, &iface.name)?;
    let pins_outlive_agent = crate::datapath::pin::outlives_agent(&opts.bpffs);
    let state_file = run_dir.join("state.json");
    let fresh = !pins.map(lb_common::map_names::SERVICES).exists();
    let up = match bring_up(&opts, &ifaces, &pins, &state_file).await {
        // The pins of a datapath whose interface is gone (a deleted namespace whose number was
        // reused, an interface created anew): nothing to adopt, start afresh.
        Err(e) if severed(&e) => {
            warn!(interface = %iface.name, "the pinned datapath belonged to an interface that is gone; starting afresh");
            pins.remove()?;
            let _ = fs::remove_file(&state_file);
            let pins = Pins::for_interface(&opts.bpffs, &iface.name)?;
            bring_up(&opts, &ifaces, &pins, &state_file).await
        }
        other => other,
    };
    let Up {
        mut datapath,
        maps,
        config,
        tunnel_src6,
        mut state,
        attachments,
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
    // Said once the datapath runs: that is what would not survive a restart.
    if pins_outlive_agent == Some(false) {
        warn!("{}", crate::datapath::pin::ephemeral_warning(&opts.bpffs));
    }
    if adopted {
        info!(interface = %iface.name, "adopted the running datapath: new program swapped in, maps and flows kept");
        let ways = lb_common::conn_table::WAYS as u32;
        keep_pinned_size(
            "connection table",
            maps.conn_capacity()?,
            lb_common::conn_table::table_slots(director.conn_max),
            format_args!("for {} connections", director.conn_max),
        );
        keep_pinned_size(
            "LVS/NAT reply index",
            maps.reply_table()?.shape().buckets() * ways,
            lb_common::conn_table::reply_buckets(director.nat_max()) * ways,
            format_args!("for nat_max {}", director.nat_max()),
        );
    }
    let translates_replies = maps.translates_replies()?;

    // An older version's ring buffer, unpinned: what its program wrote before the swap is sent
    // first.
    let previous = SyncRing::previous(&pins)?;
    let sync_events = match &director.sync {
        Some(_) => Some(datapath.sync_events()?.with_previous(previous)),
        None => None,
    };
    let (events_tx, mut events) = mpsc::unbounded_channel();
    // Checked with the settings before the datapath was touched; the agent reads them again on
    // reload, the web door serves what it holds.
    let web_tls = director
        .web
        .as_ref()
        .map(web::Settings::tls)
        .transpose()?
        .flatten();
    let mut agent = Agent {
        state: State::default(),
        maps: Box::new(maps),
        iface,
        ifaces,
        mode,
        config,
        director: director.clone(),
        timeouts: opts.timeouts,
        config_path,
        saver: None,
        monitor: Monitor::new(events_tx),
        started: SystemTime::now(),
        reloads: 0,
        reload_failures: 0,
        parse_cache: Default::default(),
        commits: 0,
        kept_at: None,
        sync: None,
        announcer: None,
        drained: run_dir.join("drained").exists(),
        links: Vec::new(),
        stopping: false,
        tunnel_src6,
        translates_replies,
        web_tls: web_tls.clone(),
        pins_outlive_agent,
        count_timeouts: Arc::new(std::sync::Mutex::new(crate::conntrack::IdleTimeouts::of(
            &config,
        ))),
    };
    std::mem::swap(&mut agent.state, &mut state);
    agent.checks_follow(&State::default());
    agent.restore_health();
    // Saved from the start: a datapath left behind always has its state beside it.
    agent.saver = Some(persist::Saver::new(&state_file, agent.mode, &agent.state)?);
    if let Some((src, read)) = initial {
        let next = agent.state_from(&read, &[], &src).await?;
        agent.commit(next)?;
        agent.parse_cache.keep(src.text, read, &[], &agent.state);
        agent.kept_at = Some(agent.commits);
        super::release_memory();
    }
    if let (Some(settings), Some(key), Some(sockets)) = (&director.sync, sync_key, sync_sockets) {
        let daemon = SyncDaemon::start(
            settings,
            sockets,
            key,
            Box::new(PinnedTable {
                path: pins.map(lb_common::map_names::CONN_TABLE),
                timeouts: agent.count_timeouts.clone(),
            }),
            Directory::new(&agent.state, &agent.config),
            Box::new(|| jiffies_now().unwrap_or(0)),
            sync_events,
        )
        .await?;
        agent.sync = Some(daemon);
    }
    if let Some(settings) = &director.announce {
        agent.announcer = Some(Announcer::new(settings.clone()).await?);
    }
    let count_timeouts = agent.count_timeouts.clone();
    let counts_task = tokio::spawn(correct_counts(
        pins.map(lb_common::map_names::CONN_TABLE),
        pins.map(lb_common::map_names::REAL_CONNS),
        count_timeouts,
    ));
    let mut links = net::watch_links()?;
    agent.link_changed().await;
    if agent.drained {
        warn!("drained (since before the restart): nothing is announced until `xdplb undrain`");
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

    // The HTTP side asks the agent what the CLI asks it, through the same handler.
    let control: web::Control = {
        let agent = agent.clone();
        Arc::new(move |req| {
            let agent = agent.clone();
            Box::pin(async move { agent.lock().await.handle(req).await })
        })
    };
    let rates = Arc::new(web::Rates::default());
    let mut http_tasks = vec![tokio::spawn(web::sample(control.clone(), rates.clone()))];
    let socket_api = web::router(
        web::Door::Socket,
        control.clone(),
        rates.clone(),
        web::Access::Full,
    );
    if let Some(m) = &director.metrics {
        let listener = tokio::net::TcpListener::bind(m.listen)
            .await
            .with_context(|| format!("cannot serve metrics on {}", m.listen))?;
        info!(listen = %m.listen, "serving Prometheus metrics");
        let app = web::router(
            web::Door::Metrics,
            control.clone(),
            rates.clone(),
            web::Access::ReadOnly,
        );
        http_tasks.push(tokio::spawn(web::serve_listener(
            listener, None, app, "metrics",
        )));
    }
    if let Some(w) = &director.web {
        let access = match &w.token_file {
            Some(file) => web::Access::Token(Arc::new(web::read_token(file)?)),
            None => web::Access::ReadOnly,
        };
        let tls = web_tls.clone();
        let listener = tokio::net::TcpListener::bind(w.listen)
            .await
            .with_context(|| format!("cannot serve the web page and API on {}", w.listen))?;
        info!(listen = %w.listen, writable = access.writable(), https = tls.is_some(), "serving the status page and the HTTP API");
        let app = web::router(web::Door::Web, control.clone(), rates.clone(), access);
        http_tasks.push(tokio::spawn(web::serve_listener(listener, tls, app, "web")));
    }

    let mut refresh = tokio::time::interval(REFRESH_INTERVAL);
    let mut neigh_poll = tokio::time::interval(NEIGH_POLL_INTERVAL);
    // Netlink tells of interface changes; this catches anything it might not have.
    let mut link_poll = tokio::time::interval(LINK_POLL_INTERVAL);
    let mut sync_current = agent.lock().await.sync.as_ref().map(|s| s.subscribe());
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let mut sigquit = signal(SignalKind::quit())?;
    let exit = loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = accepted?;
                let agent = agent.clone();
                let api = socket_api.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve(agent, stream, api).await {
                        warn!("control connection: {e:#}");
                    }
                });
            }
            Some(t) = events.recv() => {
                let mut agent = agent.lock().await;
                agent.health_changed(t);
                agent.follow().await;
            }
            _ = refresh.tick() => {
                let mut agent = agent.lock().await;
                if let Err(e) = agent.refresh().await {
                    warn!("refresh: {e:#}");
                }
                agent.follow().await;
            }
            _ = neigh_poll.tick() => agent.lock().await.resolve_misses().await,
            Some(()) = futures_util::StreamExt::next(&mut links) => agent.lock().await.link_changed().await,
            _ = link_poll.tick() => agent.lock().await.link_changed().await,
            Ok(()) = async { sync_current.as_mut().expect("guarded").changed().await }, if sync_current.is_some() => {
                agent.lock().await.follow().await;
            }
            _ = sighup.recv() => {
                let mut agent = agent.lock().await;
                let _ = agent.reload().await;
                agent.follow().await;
            }
            _ = sigint.recv() => break Exit::Detach,
            _ = sigterm.recv() => break Exit::Detach,
            _ = sigquit.recv() => break Exit::Leave,
        }
    };
    for t in http_tasks {
        t.abort();
    }
    counts_task.abort();
    let _ = fs::remove_file(&opts.socket);
    match exit {
        Exit::Detach => {
            // Withdrawn first; the datapath forwards what the routers still send meanwhile.
            if let Some(grace) = agent.lock().await.withdraw_all().await {
                info!(
                    "VIPs withdrawn; forwarding for {} s more while the routers converge",
                    grace.as_secs()
                );
                tokio::time::sleep(grace).await;
            }
            // Without its pins and with our descriptors closed, the program detaches and the
            // maps are freed.
            pins.remove()?;
            let _ = fs::remove_dir_all(&run_dir);
            for attachment in attachments {
                if let Attachment::Pinned(link) = attachment {
                    drop(aya::programs::links::FdLink::from(link));
                }
            }
            drop(datapath);
            info!("detached");
        }
        Exit::Leave => {
            drop(attachments);
            drop(datapath);
            info!(
                "exited; the datapath keeps forwarding (pinned in {})",
                pins.dir().display()
            );
        }
    }
    Ok(())
}

/// Keeps the connection counts honest against the connection table (see conntrack::counts), in
/// a blocking thread with its own handles on the pinned maps; as often as every 2 s, less often
/// when counting a large table takes long (at most a tenth of the time spent counting).
async fn correct_counts(
    conns: PathBuf,
    counts: PathBuf,
    timeouts: Arc<std::sync::Mutex<crate::conntrack::IdleTimeouts>>,
) {
    let mut wait = COUNT_INTERVAL;
    loop {
        tokio::time::sleep(wait).await;
        let (conns, counts, timeouts) = (conns.clone(), counts.clone(), timeouts.clone());
        let started = std::time::Instant::now();
        let done = tokio::task::spawn_blocking(move || -> Result<usize> {
            use crate::conntrack::table::ConnTables as _;
            let counts = crate::datapath::ConnCounts::from_pin(&counts)?;
            let table = PinnedTable {
                path: conns,
                timeouts: timeouts.clone(),
            }
            .open()?;
            let timeouts = *timeouts.lock().unwrap();
            crate::conntrack::counts::correct(
                table.as_ref(),
                &counts,
                || jiffies_now().unwrap_or(0),
                &timeouts,
            )
        })
        .await;
        match done {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => warn!("cannot correct the connection counts: {e:#}"),
            Err(e) => warn!("cannot correct the connection counts: {e}"),
        }
        wait = COUNT_INTERVAL.max(started.elapsed() * 10);
    }
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

/// Says so when an adopted datapath's table (`what`) keeps the size it was pinned with, `slots`,
/// where this start asked for `asked` (`why`): a table cannot be resized while it holds entries.
fn keep_pinned_size(what: &str, slots: u32, asked: u32, why: std::fmt::Arguments) {
    if slots != asked {
        warn!(
            "keeping the pinned {what} of {slots} slots (asked for {asked}, {why}): it cannot be resized while it holds entries; `xdplb detach` and start again to resize it"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::missing_capabilities;

    #[test]
    fn capabilities_attaching_needs() {
        let bit = |c: u32| 1u64 << c;
        assert_eq!(
            missing_capabilities(None),
            None,
            "unknown: the kernel decides"
        );
        assert_eq!(missing_capabilities(Some(u64::MAX)), None);
        assert_eq!(missing_capabilities(Some(bit(12) | bit(39))), None);
        assert_eq!(
            missing_capabilities(Some(bit(12) | bit(21))),
            None,
            "CAP_SYS_ADMIN allows BPF"
        );
        assert_eq!(
            missing_capabilities(Some(bit(39))).as_deref(),
            Some("CAP_NET_ADMIN")
        );
        assert_eq!(
            missing_capabilities(Some(0)).as_deref(),
            Some("CAP_NET_ADMIN and CAP_BPF")
        );
    }
}
