//! `xdplb run`: owns the datapath for one interface, keeps the desired state, and serves the
//! control socket until SIGINT or SIGTERM, then detaches.

use std::{
    fs,
    os::unix::fs::{DirBuilderExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::Arc,
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
    state::{self, RealSpec, State},
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
}

/// The agent's mutable core: the desired state and the maps it is mirrored into.
pub struct Agent {
    state: State,
    maps: Box<dyn MapWriter>,
    iface: Interface,
    mode: AttachMode,
}

impl Agent {
    pub fn new(maps: Box<dyn MapWriter>, iface: Interface, mode: AttachMode) -> Self {
        Self {
            state: State::default(),
            maps,
            iface,
            mode,
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
                let real = self.resolve(service, real).await?;
                self.state.add_real(service, &real)?
            }
            Request::EditReal { service, real } => self.state.edit_real(service, &real)?,
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

    /// Fills in the MAC address of a new real server from the kernel's neighbour table, after
    /// checking everything else, so bad input never causes ARP traffic.
    async fn resolve(&self, service: state::ServiceAddr, mut real: RealSpec) -> Result<RealSpec> {
        let (addr, _, _) = self.state.check_new_real(service, &real)?;
        if real.mac.is_none() {
            real.mac = Some(state::Mac(net::resolve_real_mac(&self.iface, addr).await?));
        }
        Ok(real)
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
    maps.set_config(&DirectorConfig {
        mac: iface.mac,
        _pad: [0; 2],
        tcp_timeout: opts.tcp_timeout,
        tcp_fin_timeout: opts.tcp_fin_timeout,
        udp_timeout: opts.udp_timeout,
    })?;
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
    let agent = Arc::new(Mutex::new(Agent::new(Box::new(maps), iface, mode)));
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
