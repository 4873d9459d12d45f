//! Connection synchronisation between directors, after IPVS's sync daemon, active/active: every
//! director tells its peers about the flows its datapath binds and closes, and writes what it
//! hears into its own connection table, so a flow that moves to another director (a VRRP
//! takeover, an ECMP rehash) keeps its real server, even when the tables changed since it began.
//!
//! - `wire`: the messages and their HMAC; `directory`: ids <-> addresses and the configuration
//!   digest; `peer`: per-peer state;
//!   `transfer`: full tables over TCP.
//! - Flow updates: the datapath's per-CPU rings (new flows, first FIN, RST, a periodic refresh of
//!   live ones) -> batched UDP datagrams to every peer, read and sent every millisecond.
//! - Hellos every second carry each director's configuration digest and whether its table is
//!   current; a peer not heard for 3 s is down.
//! - Full tables over TCP on the same address: a director that starts, or whose interface comes
//!   back up, asks its peers for their whole table and is not current (`xdplb check` fails, no
//!   VIP is announced) until it has one, or until no peer answers at all (it is alone). A peer
//!   heard again after being down, or restarted, is asked for its table too, so both sides of a
//!   cut sync link catch up.
//!
//! Anything unauthenticated, malformed, replayed or from an address that is not a peer is
//! dropped and counted, never inserted.

pub mod directory;
mod events;
pub mod peer;
mod settings;
mod transfer;
pub mod wire;

pub use settings::{read_key, Settings};

use std::{
    collections::BTreeMap,
    io::ErrorKind,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, RwLock,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result};
use lb_common::{Conn, FlowKey, NatReply, TemplateKey, CONN_ESTABLISHED, CONN_FIN};
use serde::{Deserialize, Serialize};
use tokio::{
    net::{TcpListener, UdpSocket},
    sync::{watch, Notify},
    task::JoinHandle,
};
use tracing::{info, warn};

use crate::conntrack::table::{ConnTable, ConnTables};
pub use directory::Directory;
use peer::Peer;
pub use peer::PeerView;
use wire::{Body, Fresh, Header, Hello, Key, Message, Op, Record, Reject};

use crate::state::{Protocol, ServiceAddr};

/// How often hellos go out.
const HELLO_INTERVAL: Duration = Duration::from_secs(1);
/// A director that hears no peer at all for this long while catching up takes itself as the
/// only one (the first up, or the last standing): its table is as current as it gets.
const ALONE_AFTER: Duration = Duration::from_secs(3);

/// The kernel clock (ticks) entries are stamped with: the datapath's own clock in production.
pub type Ticks = Box<dyn Fn() -> u32 + Send + Sync>;

/// What sync tells `xdplb list --sync` and the metrics.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SyncView {
    pub listen: String,
    /// Whether this director's table is current: false while it catches up.
    pub current: bool,
    /// What it is doing: "current", or why it is not.
    pub status: String,
    /// This director's configuration digest (first bytes).
    pub config_digest: String,
    /// The last full table received: from whom, how many flows, how long ago (seconds).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub last_table: Option<(String, u64, f64)>,
    pub peers: Vec<PeerView>,
    /// Messages refused: `auth`, `malformed`, `unknown_peer`, `replay`.
    pub rejected: BTreeMap<String, u64>,
    /// Datapath events about real servers no longer configured (not sent).
    pub events_unnamed: u64,
    /// The datapath's ring: events written, and lost because the ring was full (the agent fills
    /// these from the datapath's counters).
    pub events_written: u64,
    pub events_lost: u64,
}

struct Inner {
    peers: Vec<Peer>,
    current: bool,
    status: String,
    link_up: bool,
    last_table: Option<(SocketAddr, u64, Instant)>,
    rejected: BTreeMap<&'static str, u64>,
    events_unnamed: u64,
    /// Peers whose table is wanted (returned after being down, or restarted).
    fetch: Vec<SocketAddr>,
}

struct Shared {
    key: Key,
    listen: SocketAddr,
    epoch: u64,
    seq: AtomicU64,
    socket: UdpSocket,
    /// The multicast group datagrams go to instead of each peer, if configured.
    group: Option<SocketAddr>,
    inner: Mutex<Inner>,
    directory: RwLock<Arc<Directory>>,
    tables: Box<dyn ConnTables>,
    writer: Mutex<Box<dyn ConnTable>>,
    ticks: Ticks,
    /// Wakes the catch-up task: not current, or a peer's table is wanted.
    wake: Notify,
    current: watch::Sender<bool>,
}

/// The running sync daemon (IPVS's name for it): its tasks stop when it is dropped.
pub struct SyncDaemon {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for SyncDaemon {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("the kernel's random numbers");
    u64::from_ne_bytes(b)
}

/// The sync address, bound (UDP and TCP) before anything else starts, so a wrong address stops
/// the agent before it touches the interface.
pub struct Sockets {
    udp: UdpSocket,
    tcp: TcpListener,
    /// With a multicast group: a socket bound to it (one bound to a unicast address never sees
    /// multicast), joined on the listen address's interface.
    group: Option<(UdpSocket, SocketAddr)>,
}

impl Sockets {
    pub async fn bind(settings: &Settings) -> Result<Self> {
        let listen = settings.listen;
        let udp = UdpSocket::bind(listen)
            .await
            .with_context(|| format!("cannot listen for sync on UDP {listen}"))?;
        let tcp = TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen for sync on TCP {listen}"))?;
        let group = match (settings.group, listen.ip()) {
            (Some(g), IpAddr::V4(local)) => {
                let to = SocketAddr::new(IpAddr::V4(g), listen.port());
                let sock = UdpSocket::bind(to)
                    .await
                    .with_context(|| format!("cannot listen for sync on group {to}"))?;
                sock.join_multicast_v4(g, local)
                    .with_context(|| format!("cannot join sync group {g} on {local}"))?;
                // Out of the listen address's interface, to this link only, not back to us.
                set_multicast_if(&udp, local)
                    .with_context(|| format!("cannot send sync to group {g} from {local}"))?;
                udp.set_multicast_ttl_v4(1)?;
                udp.set_multicast_loop_v4(false)?;
                Some((sock, to))
            }
            _ => None,
        };
        Ok(Self { udp, tcp, group })
    }
}

/// IP_MULTICAST_IF: which interface (by its address) multicast datagrams leave from.
fn set_multicast_if(socket: &UdpSocket, local: Ipv4Addr) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let addr = libc::in_addr {
        s_addr: u32::from_ne_bytes(local.octets()),
    };
    // SAFETY: setsockopt on our own socket with a valid in_addr of its true size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MULTICAST_IF,
            std::ptr::from_ref(&addr).cast(),
            std::mem::size_of_val(&addr) as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

impl SyncDaemon {
    /// Starts the tasks on the bound `sockets`. Not current until it has a peer's table (or
    /// finds itself alone). `events` are the datapath's rings.
    pub async fn start(
        settings: &Settings,
        sockets: Sockets,
        key: Key,
        tables: Box<dyn ConnTables>,
        directory: Directory,
        ticks: Ticks,
        events: Option<crate::datapath::SyncRing>,
    ) -> Result<Self> {
        let Sockets {
            udp: socket,
            tcp: listener,
            group,
        } = sockets;
        let (group_socket, group) = match group {
            Some((s, to)) => (Some(s), Some(to)),
            None => (None, None),
        };
        let writer = tables.open()?;
        let (current, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            key,
            listen: settings.listen,
            epoch: unix_ns(),
            seq: AtomicU64::new(1),
            socket,
            group,
            inner: Mutex::new(Inner {
                peers: settings.peers.iter().map(|&a| Peer::new(a)).collect(),
                current: false,
                status: "catching up: asking the peers for their connection tables".into(),
                link_up: true,
                last_table: None,
                rejected: BTreeMap::new(),
                events_unnamed: 0,
                fetch: Vec::new(),
            }),
            directory: RwLock::new(Arc::new(directory)),
            tables,
            writer: Mutex::new(writer),
            ticks,
            wake: Notify::new(),
            current,
        });
        let mut tasks = vec![
            tokio::spawn(receive(shared.clone(), None)),
            tokio::spawn(hellos(shared.clone())),
            tokio::spawn(transfer::serve_tables(shared.clone(), listener)),
            tokio::spawn(catch_up(shared.clone())),
        ];
        if let Some(ring) = events {
            tasks.push(tokio::spawn(events::forward(shared.clone(), ring)));
        }
        if let Some(sock) = group_socket {
            tasks.push(tokio::spawn(receive(shared.clone(), Some(sock))));
        }
        info!(listen = %settings.listen, peers = ?settings.peers, group = ?settings.group, "connection sync started");
        Ok(Self { shared, tasks })
    }

    /// The agent's state changed: new ids, new digest.
    pub fn set_directory(&self, directory: Directory) {
        *self.shared.directory.write().unwrap() = Arc::new(directory);
    }

    /// Whether this director's table is current.
    pub fn is_current(&self) -> bool {
        self.shared.inner.lock().unwrap().current
    }

    /// Changes of [`SyncDaemon::is_current`], for whoever must follow them (announcing VIPs).
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.shared.current.subscribe()
    }

    /// The director's interface went down or came up: while it is down the table falls behind
    /// (`xdplb check` fails), and once it is up again the director catches up from its peers.
    pub fn link_changed(&self, up: bool) {
        let mut inner = self.shared.inner.lock().unwrap();
        if inner.link_up == up {
            return;
        }
        inner.link_up = up;
        let status = if up {
            "catching up: the interface came back up".to_owned()
        } else {
            "the interface is down: flows bound meanwhile are missed".to_owned()
        };
        warn!("connection sync: {status}");
        self.shared.set_current(&mut inner, false, status);
        drop(inner);
        if up {
            self.shared.wake.notify_one();
        }
    }

    /// The state of sync and of every peer.
    pub fn view(&self) -> SyncView {
        let inner = self.shared.inner.lock().unwrap();
        let directory = self.shared.directory.read().unwrap().clone();
        let now = Instant::now();
        SyncView {
            listen: self.shared.listen.to_string(),
            current: inner.current,
            status: if inner.current {
                "current".into()
            } else {
                inner.status.clone()
            },
            config_digest: directory::short(&directory.digest()),
            last_table: inner
                .last_table
                .map(|(p, n, at)| (p.to_string(), n, now.duration_since(at).as_secs_f64())),
            peers: inner
                .peers
                .iter()
                .map(|p| p.view(now, &directory.digest()))
                .collect(),
            rejected: inner
                .rejected
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            events_unnamed: inner.events_unnamed,
            events_written: 0,
            events_lost: 0,
        }
    }

    /// Zeroes the counters (`xdplb zero`).
    pub fn zero(&self) {
        let mut inner = self.shared.inner.lock().unwrap();
        for p in &mut inner.peers {
            p.zero();
        }
        inner.rejected.clear();
        inner.events_unnamed = 0;
    }
}

impl Shared {
    fn next_header(&self, nonce: u64) -> Header {
        Header {
            epoch: self.epoch,
            seq: self.seq.fetch_add(1, Ordering::Relaxed),
            sent_ns: unix_ns(),
            nonce,
        }
    }

    fn encode(&self, body: Body, nonce: u64) -> Vec<u8> {
        wire::encode(
            &self.key,
            &Message {
                header: self.next_header(nonce),
                body,
            },
        )
    }

    fn set_current(&self, inner: &mut Inner, current: bool, status: String) {
        if current && !inner.current {
            info!("connection sync: the table is current ({status})");
        }
        inner.current = current;
        inner.status = status;
        self.current.send_replace(current);
    }

    fn reject(&self, why: &'static str) {
        *self.inner.lock().unwrap().rejected.entry(why).or_default() += 1;
    }

    /// Sends `datagram` (carrying `flows` flows) to every peer (or once to the group, for all
    /// of them), counting what each took.
    async fn send_all(&self, datagram: &[u8], flows: u64) {
        let peers: Vec<SocketAddr> = {
            let inner = self.inner.lock().unwrap();
            inner.peers.iter().map(|p| p.addr).collect()
        };
        let send = |to| async move {
            matches!(self.socket.send_to(datagram, to).await, Ok(n) if n == datagram.len())
        };
        let group_ok = match self.group {
            Some(g) => Some(send(g).await),
            None => None,
        };
        for addr in peers {
            let ok = match group_ok {
                Some(ok) => ok,
                None => send(addr).await,
            };
            let mut inner = self.inner.lock().unwrap();
            if let Some(p) = inner.peers.iter_mut().find(|p| p.addr == addr) {
                if ok {
                    p.datagrams_sent += 1;
                    p.bytes_sent += datagram.len() as u64;
                    p.flows_sent += flows;
                } else {
                    p.datagrams_unsent += 1;
                }
            }
        }
    }

    /// Writes peer records into the connection table; returns (written, unknown).
    fn apply(&self, records: &[Record]) -> (u64, u64) {
        let directory = self.directory.read().unwrap().clone();
        let mut writer = self.writer.lock().unwrap();
        apply_records(writer.as_mut(), &directory, records, (self.ticks)())
    }

    /// An authenticated, fresh message from peer `i`.
    fn handle(&self, i: usize, msg: Message) -> Result<(), Reject> {
        let now_ns = unix_ns();
        match msg.body {
            Body::Flows(records) => {
                let (written, unknown) = self.apply(&records);
                let mut inner = self.inner.lock().unwrap();
                let peer = &mut inner.peers[i];
                peer.flows_received += written;
                peer.flows_unknown += unknown;
                let transit_us = now_ns.saturating_sub(msg.header.sent_ns) / 1000;
                for r in &records {
                    peer.delay.record(transit_us + r.age_us as u64);
                }
                Ok(())
            }
            Body::Hello(Hello { digest, current }) => {
                let ours = self.directory.read().unwrap().digest();
                let mut inner = self.inner.lock().unwrap();
                let peer = &mut inner.peers[i];
                if peer.digest != Some(digest) && digest != ours {
                    warn!(
                        peer = %peer.addr,
                        theirs = directory::short(&digest),
                        ours = directory::short(&ours),
                        "connection sync: the peer's services and real servers differ from ours: directors will disagree on real servers"
                    );
                }
                peer.digest = Some(digest);
                peer.current = current;
                Ok(())
            }
            _ => Err(Reject::Malformed("a full-table message over UDP")),
        }
    }

    /// A datagram from `src`.
    fn on_datagram(&self, src: SocketAddr, bytes: &[u8]) {
        let Some(i) = self.peer_index(src) else {
            return self.reject("unknown_peer");
        };
        let msg = match wire::decode(&self.key, bytes) {
            Ok(m) => m,
            Err(r) => return self.reject(r.name()),
        };
        let fresh = {
            let mut inner = self.inner.lock().unwrap();
            let fresh = inner.peers[i]
                .window
                .accept(msg.header.epoch, msg.header.seq);
            if fresh != Fresh::Replay {
                self.heard(&mut inner, i, fresh == Fresh::NewEpoch);
            }
            fresh
        };
        if fresh == Fresh::Replay {
            return self.reject("replay");
        }
        if let Err(r) = self.handle(i, msg) {
            self.reject(r.name());
        }
    }

    /// Peer `i` was heard: if it had been down (or restarted), its table is wanted.
    fn heard(&self, inner: &mut Inner, i: usize, restarted: bool) {
        let now = Instant::now();
        let peer = &mut inner.peers[i];
        let returned = !peer.alive(now);
        peer.last_contact = Some((now, SystemTime::now()));
        if returned || restarted {
            let addr = peer.addr;
            if returned {
                info!(peer = %addr, "connection sync: peer up");
            }
            peer.up = true;
            // Its table was just taken (catching up): no need to ask again.
            let just_taken = inner
                .last_table
                .is_some_and(|(p, _, at)| p == addr && at.elapsed() < peer::PEER_TIMEOUT);
            if !just_taken && !inner.fetch.contains(&addr) {
                inner.fetch.push(addr);
            }
            self.wake.notify_one();
        }
    }

    fn peer_index(&self, src: SocketAddr) -> Option<usize> {
        let src = canonical(src);
        let inner = self.inner.lock().unwrap();
        inner.peers.iter().position(|p| p.addr == src)
    }

    fn is_peer_ip(&self, ip: IpAddr) -> bool {
        let ip = canonical(SocketAddr::new(ip, 0)).ip();
        let inner = self.inner.lock().unwrap();
        inner.peers.iter().any(|p| p.addr.ip() == ip)
    }
}

/// Writes what peers report into `table`: a bound flow gets an entry for this director's ids of
/// the same real server, stamped `now` (ticks), and for a persistent service its client's
/// template (as IPVS syncs its templates: the client's next connection goes where this one went,
/// whichever director takes it); a closed one loses its entry, not the template, which outlives
/// its connections. Returns (written, unknown): records for a service or real server this
/// director does not have are not written.
pub fn apply_records(
    table: &mut dyn ConnTable,
    directory: &Directory,
    records: &[Record],
    now: u32,
) -> (u64, u64) {
    let (mut written, mut unknown) = (0, 0);
    for r in records {
        let Some((flow, ids)) = flow_of(r).and_then(|(flow, svc)| {
            let ids = directory.ids(&svc, r.real)?;
            Some((flow, ids))
        }) else {
            unknown += 1;
            continue;
        };
        let result = match r.op {
            Op::Bind => table
                .upsert(
                    &flow,
                    &Conn {
                        real: ids.real,
                        service: ids.service,
                        last_seen: now,
                        flags: if r.fin { CONN_FIN } else { 0 }
                            | if r.established { CONN_ESTABLISHED } else { 0 },
                    },
                )
                .and_then(|()| match ids.nat {
                    // An LVS/NAT flow's replies must be translated here too after a failover.
                    Some((addr, port)) => table.upsert_nat_reply(
                        &flow.nat_reply(&crate::state::addr_of(addr), port),
                        &NatReply {
                            vip: flow.dst,
                            vport: flow.dport,
                            _pad: 0,
                            service: ids.service,
                            real: ids.real,
                        },
                        r.established && !r.fin,
                    ),
                    None => Ok(()),
                })
                .and_then(|()| match ids.template_mask {
                    Some(mask) => table.upsert_template(
                        &TemplateKey::of(ids.service, &flow.src, &mask).flow_key(),
                        &Conn {
                            real: ids.real,
                            service: ids.service,
                            last_seen: now,
                            flags: 0,
                        },
                    ),
                    None => Ok(()),
                }),
            Op::Close => table.remove(&flow),
        };
        match result {
            Ok(()) => written += 1,
            Err(e) => warn!("connection sync: cannot write a flow: {e:#}"),
        }
    }
    (written, unknown)
}

/// IPv4-mapped IPv6 source addresses (a dual-stack socket) as the IPv4 address they are.
fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}

/// The flow key and service a record names; None for a client of another family than its VIP.
fn flow_of(r: &Record) -> Option<(FlowKey, ServiceAddr)> {
    let protocol = match r.proto {
        lb_common::IPPROTO_TCP => Protocol::Tcp,
        lb_common::IPPROTO_UDP => Protocol::Udp,
        _ => return None,
    };
    if r.client.is_ipv4() != r.vip.is_ipv4() {
        return None;
    }
    Some((
        FlowKey {
            src: crate::state::addr_of(r.client),
            dst: crate::state::addr_of(r.vip),
            sport: r.cport,
            dport: r.vport,
            proto: r.proto,
            _pad: [0; 3],
        },
        ServiceAddr {
            protocol,
            vip: r.vip,
            port: r.vport,
        },
    ))
}

/// The record telling peers about a connection-table entry or datapath event.
pub fn record_of(
    directory: &Directory,
    flow: &FlowKey,
    service: u32,
    real: u32,
    op: Op,
    flags: u32,
    age_us: u32,
) -> Option<Record> {
    let name = directory.name(service, real)?;
    let (client, vip) = (
        crate::state::ip_of(&flow.src),
        crate::state::ip_of(&flow.dst),
    );
    Some(Record {
        op,
        fin: flags & CONN_FIN != 0,
        established: flags & CONN_ESTABLISHED != 0,
        proto: flow.proto,
        client,
        cport: flow.sport,
        vip,
        vport: flow.dport,
        real: name.addr,
        rport: name.port,
        age_us,
    })
}

/// Receives on the sync socket, or on the group's when `group` is given.
async fn receive(shared: Arc<Shared>, group: Option<UdpSocket>) {
    let mut buf = vec![0u8; 65536];
    let socket = group.as_ref().unwrap_or(&shared.socket);
    loop {
        match socket.recv_from(&mut buf).await {
            Ok((n, src)) => shared.on_datagram(src, &buf[..n]),
            // ICMP errors of earlier sends (a peer down) surface here: not ours to handle.
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::ConnectionRefused | ErrorKind::Interrupted
                ) => {}
            Err(e) => {
                warn!("connection sync: receive: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn hellos(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(HELLO_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (current, down) = {
            let mut inner = shared.inner.lock().unwrap();
            let now = Instant::now();
            let mut down = Vec::new();
            for p in inner.peers.iter_mut().filter(|p| p.up && !p.alive(now)) {
                p.up = false;
                down.push(p.addr);
            }
            (inner.current, down)
        };
        for p in down {
            warn!(peer = %p, "connection sync: peer down (not heard for 3 s)");
        }
        let digest = shared.directory.read().unwrap().digest();
        let hello = shared.encode(Body::Hello(Hello { digest, current }), 0);
        shared.send_all(&hello, 0).await;
    }
}

/// Catches up whenever the table is not current, and fetches the tables of peers that came back.
async fn catch_up(shared: Arc<Shared>) {
    let mut since: Option<Instant> = None;
    // Peers whose failure was logged in this round of catching up: once is enough.
    let mut warned = std::collections::HashSet::new();
    loop {
        let (current, link_up) = {
            let inner = shared.inner.lock().unwrap();
            (inner.current, inner.link_up)
        };
        if !current && link_up {
            let started = *since.get_or_insert_with(|| {
                warned.clear();
                Instant::now()
            });
            let peers: Vec<SocketAddr> = {
                let inner = shared.inner.lock().unwrap();
                inner.peers.iter().map(|p| p.addr).collect()
            };
            let mut done = None;
            for peer in peers {
                match transfer::fetch_table(&shared, peer).await {
                    Ok(n) => {
                        done = Some((peer, n));
                        break;
                    }
                    Err(e) if warned.insert(peer) => {
                        warn!(%peer, "connection sync: no table from the peer (trying again): {e:#}")
                    }
                    Err(_) => {}
                }
            }
            let retry = {
                let mut inner = shared.inner.lock().unwrap();
                if !inner.link_up || inner.current {
                    continue;
                }
                match done {
                    Some((peer, n)) => {
                        inner.last_table = Some((peer, n, Instant::now()));
                        // Just merged: no need to ask it again for having been heard meanwhile.
                        inner.fetch.retain(|p| *p != peer);
                        shared.set_current(&mut inner, true, format!("{n} flows from {peer}"));
                        false
                    }
                    None if started.elapsed() >= ALONE_AFTER
                        && !inner.peers.iter().any(|p| p.alive(Instant::now())) =>
                    {
                        shared.set_current(
                            &mut inner,
                            true,
                            "no peer answers: this director is the only one up".into(),
                        );
                        false
                    }
                    None => true,
                }
            };
            if retry {
                tokio::time::sleep(Duration::from_millis(250)).await;
            } else {
                since = None;
            }
            continue;
        }
        since = None;
        let wanted = std::mem::take(&mut shared.inner.lock().unwrap().fetch);
        for peer in wanted {
            match transfer::fetch_table(&shared, peer).await {
                Ok(n) => info!(%peer, flows = n, "connection sync: merged the peer's table"),
                Err(e) => warn!(%peer, "connection sync: no table from the peer: {e:#}"),
            }
        }
        let more = !shared.inner.lock().unwrap().fetch.is_empty();
        if !more {
            shared.wake.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::conntrack::table::MemoryTable;
    use crate::state::{Mac, RealSpec, SchedulerSpec, State};

    fn service(port: u16) -> ServiceAddr {
        ServiceAddr {
            protocol: Protocol::Tcp,
            vip: Ipv4Addr::new(10, 0, 0, 100).into(),
            port,
        }
    }

    /// Two directors' states with the same servers added in another order: other ids.
    fn states() -> (State, State) {
        let build = |order: &[u8]| {
            let mut s = State::default()
                .add_service(service(80), &SchedulerSpec::default())
                .unwrap();
            for &n in order {
                let real = RealSpec {
                    addr: Some(Ipv4Addr::new(10, 0, 0, n).into()),
                    mac: Some(Mac([2, 0, 0, 0, 0, n])),
                    ..Default::default()
                };
                s = s.add_real(service(80), &real).unwrap();
            }
            s
        };
        (build(&[11, 12, 13]), build(&[13, 12, 11]))
    }

    #[test]
    fn a_flow_travels_by_address_and_lands_on_the_receivers_ids() {
        let (a, b) = states();
        let cfg = lb_common::DirectorConfig::default();
        let (da, db) = (Directory::new(&a, &cfg), Directory::new(&b, &cfg));
        let svc = a.service(&service(80)).unwrap();
        let flow = svc.flow(Ipv4Addr::new(10, 1, 2, 3).into(), 40000);
        let rs11_on_a = svc.real(Ipv4Addr::new(10, 0, 0, 11).into()).unwrap().id;
        let record = record_of(&da, &flow, svc.id, rs11_on_a, Op::Bind, CONN_FIN, 7).unwrap();
        assert_eq!(record.real, IpAddr::from([10, 0, 0, 11]));
        let on_b = MemoryTable::default();
        let (written, unknown) = apply_records(&mut on_b.clone(), &db, &[record], 1234);
        assert_eq!((written, unknown), (1, 0));
        let rs11_on_b = b
            .service(&service(80))
            .unwrap()
            .real(Ipv4Addr::new(10, 0, 0, 11).into())
            .unwrap()
            .id;
        assert_ne!(rs11_on_a, rs11_on_b, "the test needs different ids");
        let entry = on_b.0.lock().unwrap()[&flow];
        assert_eq!(
            (entry.real, entry.last_seen, entry.flags),
            (rs11_on_b, 1234, CONN_FIN)
        );
        // A close removes it.
        let close = Record {
            op: Op::Close,
            ..record
        };
        apply_records(&mut on_b.clone(), &db, &[close], 1300);
        assert!(on_b.0.lock().unwrap().is_empty());
    }

    /// A persistent service's flow brings its client's template: keyed by the receiver's
    /// service id and the client's address under the service's netmask, pointing at the
    /// receiver's id of the real server; the flow's close leaves it. A service that is not
    /// persistent gets none.
    #[test]
    fn a_persistent_services_flow_brings_its_clients_template() {
        use crate::state::Netmask;
        let persistent = SchedulerSpec {
            persistent: Some(300),
            netmask: Some(Netmask::Dotted(Ipv4Addr::new(255, 255, 255, 0))),
            ..Default::default()
        };
        let (a, b) = states();
        let add = |s: State| {
            let mut s = s.add_service(service(443), &persistent).unwrap();
            for n in [13, 11] {
                let real = RealSpec {
                    addr: Some(Ipv4Addr::new(10, 0, 0, n).into()),
                    mac: Some(Mac([2, 0, 0, 0, 0, n])),
                    ..Default::default()
                };
                s = s.add_real(service(443), &real).unwrap();
            }
            s
        };
        let (a, b) = (add(a), add(b));
        let cfg = lb_common::DirectorConfig::default();
        let (da, db) = (Directory::new(&a, &cfg), Directory::new(&b, &cfg));
        let bind = |svc: ServiceAddr, client: [u8; 4], sport: u16| {
            let s = a.service(&svc).unwrap();
            let flow = s.flow(Ipv4Addr::from(client).into(), sport);
            let rs11 = s.real(Ipv4Addr::new(10, 0, 0, 11).into()).unwrap().id;
            record_of(&da, &flow, s.id, rs11, Op::Bind, 0, 0).unwrap()
        };
        let on_b = MemoryTable::default();
        let records = [
            bind(service(443), [10, 1, 2, 3], 40000),
            bind(service(80), [10, 1, 2, 3], 40001),
        ];
        assert_eq!(apply_records(&mut on_b.clone(), &db, &records, 99), (2, 0));
        let svc_b = b.service(&service(443)).unwrap();
        let key = TemplateKey {
            service: svc_b.id,
            client: crate::state::addr_of(Ipv4Addr::new(10, 1, 2, 0).into()),
        }
        .flow_key();
        let rs11 = svc_b.real(Ipv4Addr::new(10, 0, 0, 11).into()).unwrap().id;
        let templates = on_b.2.lock().unwrap().clone();
        assert_eq!(templates.len(), 1, "one template, the persistent service's");
        assert_eq!(
            templates.get(&key),
            Some(&Conn {
                real: rs11,
                service: svc_b.id,
                last_seen: 99,
                flags: 0
            }),
            "{templates:?}"
        );
        let close = Record {
            op: Op::Close,
            ..records[0]
        };
        apply_records(&mut on_b.clone(), &db, &[close], 100);
        assert_eq!(*on_b.2.lock().unwrap(), templates);
    }

    /// IPv6 flows travel the same way, with their 16-byte addresses;
    /// a client of the other family than its VIP is not a flow.
    #[test]
    fn an_ipv6_flow_travels_too() {
        let v6 = |s: &str| s.parse::<IpAddr>().unwrap();
        let svc6 = ServiceAddr {
            vip: v6("2001:db8::100"),
            ..service(80)
        };
        let build = |order: &[&str]| {
            let mut s = State::default()
                .add_service(svc6, &SchedulerSpec::default())
                .unwrap();
            for (i, a) in order.iter().enumerate() {
                let real = RealSpec {
                    addr: Some(v6(a)),
                    mac: Some(Mac([2, 0, 0, 0, 0, i as u8])),
                    ..Default::default()
                };
                s = s.add_real(svc6, &real).unwrap();
            }
            s
        };
        let (a, b) = (
            build(&["2001:db8::11", "2001:db8::12"]),
            build(&["2001:db8::12", "2001:db8::11"]),
        );
        let cfg = lb_common::DirectorConfig::default();
        let (da, db) = (Directory::new(&a, &cfg), Directory::new(&b, &cfg));
        let svc = a.service(&svc6).unwrap();
        let flow = svc.flow(v6("2001:db8::1:7"), 40000);
        let id = svc.real(v6("2001:db8::12")).unwrap().id;
        let record = record_of(&da, &flow, svc.id, id, Op::Bind, 0, 0).unwrap();
        assert_eq!(
            (record.client, record.vip, record.real),
            (v6("2001:db8::1:7"), v6("2001:db8::100"), v6("2001:db8::12"))
        );
        // (The wire format's round trip of IPv6 records is wire.rs's test.)
        let table = MemoryTable::default();
        assert_eq!(apply_records(&mut table.clone(), &db, &[record], 1), (1, 0));
        let on_b = b
            .service(&svc6)
            .unwrap()
            .real(v6("2001:db8::12"))
            .unwrap()
            .id;
        assert_eq!(table.0.lock().unwrap()[&flow].real, on_b);
        let mixed = Record {
            client: v6("10.1.2.3"),
            ..record
        };
        assert_eq!(apply_records(&mut table.clone(), &db, &[mixed], 1), (0, 1));
    }

    #[test]
    fn flows_for_what_the_receiver_lacks_are_counted_not_written() {
        let (a, b) = states();
        let cfg = lb_common::DirectorConfig::default();
        let da = Directory::new(&a, &cfg);
        let svc = a.service(&service(80)).unwrap();
        let flow = svc.flow(Ipv4Addr::new(10, 1, 2, 3).into(), 40000);
        let id = svc.real(Ipv4Addr::new(10, 0, 0, 12).into()).unwrap().id;
        let record = record_of(&da, &flow, svc.id, id, Op::Bind, 0, 0).unwrap();
        let without_12 = b
            .del_real(service(80), Ipv4Addr::new(10, 0, 0, 12).into())
            .unwrap();
        let other_port = Record {
            vport: 81,
            ..record
        };
        let udp = Record {
            proto: lb_common::IPPROTO_UDP,
            ..record
        };
        let icmp = Record { proto: 1, ..record };
        let table = MemoryTable::default();
        let (written, unknown) = apply_records(
            &mut table.clone(),
            &Directory::new(&without_12, &cfg),
            &[record, other_port, udp, icmp],
            1,
        );
        assert_eq!((written, unknown), (0, 4));
        assert!(table.0.lock().unwrap().is_empty());
        // Ids that are no longer a real server of that service name nothing.
        assert!(record_of(&da, &flow, svc.id + 1, id, Op::Bind, 0, 0).is_none());
    }

    #[test]
    fn a_peers_nat_flow_gets_its_reply_translation() {
        let rip = Ipv4Addr::new(192, 168, 10, 11);
        let nat = RealSpec {
            addr: Some(rip.into()),
            port: Some(8080),
            forward: Some(crate::state::Forward::Masq),
            mac: Some(Mac([2, 0, 0, 0, 0, 9])),
            ..Default::default()
        };
        let (a, _) = states();
        let a = a.add_real(service(80), &nat).unwrap();
        let d = Directory::new(&a, &lb_common::DirectorConfig::default());
        let svc = a.service(&service(80)).unwrap();
        let flow = svc.flow(Ipv4Addr::new(10, 1, 2, 3).into(), 40000);
        let id = svc.real(rip.into()).unwrap().id;
        let record = record_of(&d, &flow, svc.id, id, Op::Bind, 0, 0).unwrap();
        let table = MemoryTable::default();
        assert_eq!(apply_records(&mut table.clone(), &d, &[record], 1), (1, 0));
        let replies = table.1.lock().unwrap();
        let want = NatReply {
            vip: flow.dst,
            vport: 80,
            _pad: 0,
            service: svc.id,
            real: id,
        };
        // Keyed as the real server answers: from RIP:8080 to the client.
        let key = flow.nat_reply(&lb_common::addr_from_v4(rip.octets()), 8080);
        assert_eq!(key.sport, 8080);
        assert_eq!(replies.get(&key), Some(&want));
        assert_eq!(replies.len(), 1, "DR flows get none");
    }

    /// The same for an IPv6 NAT flow: its reply is keyed by the IPv6 real server's address.
    #[test]
    fn a_peers_ipv6_nat_flow_gets_its_reply_translation() {
        let svc6 = ServiceAddr {
            protocol: crate::state::Protocol::Tcp,
            vip: "2001:db8::100".parse().unwrap(),
            port: 80,
        };
        let rip: std::net::IpAddr = "fd00:10::11".parse().unwrap();
        let nat = RealSpec {
            addr: Some(rip),
            port: Some(8080),
            forward: Some(crate::state::Forward::Masq),
            mac: Some(Mac([2, 0, 0, 0, 0, 9])),
            ..Default::default()
        };
        let s = State::default()
            .add_service(svc6, &crate::state::SchedulerSpec::default())
            .and_then(|s| s.add_real(svc6, &nat))
            .unwrap();
        let d = Directory::new(&s, &lb_common::DirectorConfig::default());
        let svc = s.service(&svc6).unwrap();
        let flow = svc.flow("2001:db8:c::7".parse().unwrap(), 40000);
        let id = svc.real(rip).unwrap().id;
        let record = record_of(&d, &flow, svc.id, id, Op::Bind, 0, 0).unwrap();
        let table = MemoryTable::default();
        assert_eq!(apply_records(&mut table.clone(), &d, &[record], 1), (1, 0));
        let key = flow.nat_reply(&crate::state::addr_of(rip), 8080);
        let got = table.1.lock().unwrap().get(&key).copied();
        assert_eq!(
            got.map(|r| (r.vip, r.vport, r.real)),
            Some((flow.dst, 80, id))
        );
    }
}
