//! `xdplb run`: owns the datapath for one interface, keeps the desired state, and serves the
//! control socket until SIGINT or SIGTERM, then detaches.

use std::{
    fs,
    net::Ipv4Addr,
    os::unix::fs::{DirBuilderExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use lb_common::DirectorConfig;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    signal::unix::{signal, SignalKind},
    sync::Mutex,
};

use crate::{
    control::{Listing, Request, Response},
    datapath::{AttachMode, Datapath, LoadOptions, MapWriter},
    net::{self, Interface},
    state::{self, Forward, Mac, RealSpec, State},
};

pub struct RunOptions {
    pub iface: String,
    pub mode: AttachMode,
    pub socket: PathBuf,
    pub load: LoadOptions,
    /// Connection-table idle timeouts, seconds.
    pub tcp_timeout: u32,
    pub tcp_fin_timeout: u32,
    pub udp_timeout: u32,
    /// Source of LVS/TUN outer headers; default: the interface's first IPv4 address.
    pub tunnel_src: Option<Ipv4Addr>,
}

/// How often kernel-learned MAC addresses (real servers, next hops) and the MTU are re-read.
const REFRESH_INTERVAL: Duration = Duration::from_secs(5);

/// The agent's mutable core: the desired state and the maps it is mirrored into.
pub struct Agent {
    state: State,
    maps: Box<dyn MapWriter>,
    iface: Interface,
    mode: AttachMode,
    config: DirectorConfig,
}

impl Agent {
    pub fn new(
        maps: Box<dyn MapWriter>,
        iface: Interface,
        mode: AttachMode,
        config: DirectorConfig,
    ) -> Self {
        Self {
            state: State::default(),
            maps,
            iface,
            mode,
            config,
        }
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// Makes `next` the current state once the datapath holds it.
    fn commit(&mut self, next: State) -> Result<()> {
        state::apply(self.maps.as_mut(), &self.state, &next)?;
        self.state = next;
        Ok(())
    }

    pub async fn handle(&mut self, req: Request) -> Response {
        match self.execute(req).await {
            Ok(r) => r,
            Err(e) => Response::Error {
                message: format!("{e:#}"),
            },
        }
    }

    async fn execute(&mut self, req: Request) -> Result<Response> {
        let next = match req {
            Request::List => {
                let counters = self.maps.counters()?;
                return Ok(Response::Listing(Listing::new(
                    &self.iface.name,
                    self.mode,
                    &self.state,
                    &counters,
                )));
            }
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
            Request::DelReal { service, addr } => self.state.del_real(service, addr)?,
        };
        self.commit(next)?;
        Ok(Response::Ok)
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
                    Err(e) => eprintln!("xdplb: keeping the last MAC of {}: {e:#}", r.addr),
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

pub async fn run(opts: RunOptions) -> Result<()> {
    let iface = net::interface(&opts.iface).await?;
    prepare_socket(&opts.socket)?;
    let mut datapath = Datapath::load_lb(opts.load)?;
    let mut maps = datapath.maps()?;
    let tunnel_src = match opts.tunnel_src {
        Some(a) => Some(a),
        None => net::ipv4_addresses(Some(iface.index))
            .await?
            .first()
            .copied(),
    };
    let config = DirectorConfig {
        mac: iface.mac,
        _pad: [0; 2],
        tcp_timeout: opts.tcp_timeout,
        tcp_fin_timeout: opts.tcp_fin_timeout,
        udp_timeout: opts.udp_timeout,
        mtu: iface.mtu,
        tunnel_src: tunnel_src.map_or([0; 16], |a| lb_common::addr_from_v4(a.octets())),
    };
    maps.set_config(&config)?;
    let (_link, mode) = datapath
        .attach(iface.index, opts.mode)
        .with_context(|| format!("interface {}", iface.name))?;
    let listener = UnixListener::bind(&opts.socket)
        .with_context(|| format!("cannot listen on {}", opts.socket.display()))?;
    // Root-only: whoever can talk to the agent can redirect the director's traffic.
    fs::set_permissions(&opts.socket, fs::Permissions::from_mode(0o600))?;
    eprintln!(
        "xdplb: attached to {} ({} XDP); control socket {}",
        iface.name,
        format!("{mode:?}").to_lowercase(),
        opts.socket.display()
    );
    let agent = Arc::new(Mutex::new(Agent::new(Box::new(maps), iface, mode, config)));
    let mut refresh = tokio::time::interval(REFRESH_INTERVAL);
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = accepted?;
                let agent = agent.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve(agent, stream).await {
                        eprintln!("xdplb: control connection: {e:#}");
                    }
                });
            }
            _ = refresh.tick() => {
                if let Err(e) = agent.lock().await.refresh().await {
                    eprintln!("xdplb: refresh: {e:#}");
                }
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    let _ = fs::remove_file(&opts.socket);
    // Dropping the datapath detaches the program and frees the maps.
    drop(datapath);
    eprintln!("xdplb: detached");
    Ok(())
}
