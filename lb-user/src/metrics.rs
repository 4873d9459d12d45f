//! Prometheus metrics for `xdplb run --metrics ADDR`: the text exposition format (version 0.0.4)
//! rendered from the same [`Listing`] that `xdplb list --stats --json` prints, served at
//! `GET /metrics` by axum.
//!
//! The server has no authentication: bind it to localhost or a management network.
//!
//! Families (all prefixed `xdplb_`):
//!
//! | family | type | labels |
//! |---|---|---|
//! | `agent_info` (1) | gauge | `version`, `interface`, `mode` |
//! | `program_id` | gauge | |
//! | `agent_start_time_seconds` | gauge | |
//! | `config_reloads_total`, `config_reload_failures_total` | counter | |
//! | `service_connections_total`, `_packets_total`, `_bytes_total`, `_out_packets_total`, `_out_bytes_total` | counter | service |
//! | `service_reals_up`, `service_available` (1/0) | gauge | service |
//! | `real_connections_total`, `_packets_total`, `_bytes_total`, `_out_packets_total`, `_out_bytes_total` | counter | real |
//! | `real_weight`, `real_up` (1/0), `real_active_connections`, `real_inactive_connections` | gauge | real |
//! | `packets_total` | counter | `reason` |
//! | `drained` (1/0) | gauge | |
//! | `vip_announced` (1) | gauge | `vip`, `table` |
//! | `sync_current` (1/0) | gauge | |
//! | `sync_events_total` | counter | `result` (`written`, `lost`, `unnamed`) |
//! | `sync_rejected_total` | counter | `reason` (`auth`, `malformed`, `unknown_peer`, `replay`) |
//! | `sync_peer_up`, `sync_peer_config_match` (1/0), `sync_peer_last_contact_seconds` | gauge | `peer` |
//! | `sync_peer_flows_sent_total`, `_flows_received_total`, `_flows_unknown_total`, `_datagrams_unsent_total`, `_tables_received_total`, `_tables_sent_total` | counter | `peer` |
//! | `sync_peer_delay_seconds` | gauge | `peer`, `quantile` (0.5, 0.99) |
//!
//! Service labels: `protocol` (`tcp`, `udp`), `vip`, `port`, `scheduler` (`sh`, `mh`); real server
//! labels: the service's plus `real` (`RIP:PORT`) and `forward` (`route`, `tunnel`).

use std::{
    fmt::{Display, Write as _},
    future::Future,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Result;
use tokio::{net::TcpListener, task::JoinSet};

use crate::{
    control::{Listing, RealView, ServiceView, StatsView},
    state::{Forward, Protocol},
};

/// What the metrics show besides the listing.
#[derive(Clone, Debug)]
pub struct AgentInfo {
    pub version: &'static str,
    pub interface: String,
    /// The mode the program is attached in: `native` or `generic`.
    pub mode: String,
    pub program_id: Option<u32>,
    pub started: SystemTime,
    pub reloads: u64,
    pub reload_failures: u64,
}

/// The `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Renders the Prometheus text exposition format (version 0.0.4) for one scrape.
///
/// `up` tells whether a real server passes its health check: `Some(true)` up, `Some(false)` down,
/// `None` not checked. `xdplb_real_up` is only emitted for checked real servers; an unchecked real
/// server counts as up in `xdplb_service_reals_up`, as the datapath sends it flows.
/// Counters are emitted for the services and real servers whose `stats` are present.
pub fn render<F>(listing: &Listing, info: &AgentInfo, up: F) -> String
where
    F: Fn(&ServiceView, &RealView) -> Option<bool>,
{
    let mut t = Text::default();

    t.family(
        "xdplb_agent_info",
        Gauge,
        "The agent's version, the interface it is attached to and the XDP mode; always 1.",
    );
    let labels = format!(
        "version=\"{}\",interface=\"{}\",mode=\"{}\"",
        escape(info.version),
        escape(&info.interface),
        escape(&info.mode)
    );
    t.sample("xdplb_agent_info", &labels, 1);
    if let Some(id) = info.program_id {
        t.family(
            "xdplb_program_id",
            Gauge,
            "The kernel's id of the attached XDP program.",
        );
        t.sample("xdplb_program_id", "", id);
    }
    t.family(
        "xdplb_agent_start_time_seconds",
        Gauge,
        "When the agent started, in seconds since the Unix epoch.",
    );
    let started = info
        .started
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    t.sample("xdplb_agent_start_time_seconds", "", started);
    t.family(
        "xdplb_config_reloads_total",
        Counter,
        "Configuration reloads applied.",
    );
    t.sample("xdplb_config_reloads_total", "", info.reloads);
    t.family(
        "xdplb_config_reload_failures_total",
        Counter,
        "Configuration reloads rejected; the previous configuration stays in force.",
    );
    t.sample(
        "xdplb_config_reload_failures_total",
        "",
        info.reload_failures,
    );

    let services: Vec<(&ServiceView, String)> = listing
        .services
        .iter()
        .map(|s| (s, service_labels(s)))
        .collect();
    let reals: Vec<(&ServiceView, &RealView, String)> = services
        .iter()
        .flat_map(|(s, sl)| {
            s.reals.iter().map(move |r| {
                let forward = match r.forward {
                    Forward::Route => "route",
                    Forward::Tunnel => "tunnel",
                    Forward::Masq => "masq",
                };
                let rl = format!("{sl},real=\"{}\",forward=\"{forward}\"", escape(&r.address));
                (*s, r, rl)
            })
        })
        .collect();

    let counters: [StatsFamily; 5] = [
        (
            "connections",
            "New connections (connection-table entries created)",
            |s| s.conns,
        ),
        ("packets", "Packets received", |s| s.packets),
        ("bytes", "Bytes received", |s| s.bytes),
        (
            "out_packets",
            "LVS/NAT reply packets sent on to clients",
            |s| s.out_packets,
        ),
        ("out_bytes", "LVS/NAT reply bytes sent on to clients", |s| {
            s.out_bytes
        }),
    ];
    for (what, help, value) in counters {
        let name = format!("xdplb_service_{what}_total");
        t.family(&name, Counter, &format!("{help} for the service."));
        for (s, labels) in &services {
            if let Some(stats) = &s.stats {
                t.sample(&name, labels, value(stats));
            }
        }
    }
    t.family(
        "xdplb_service_reals_up",
        Gauge,
        "Real servers of the service that can take new flows: weight above 0 and not failing \
         their health check.",
    );
    let reals_up = |s: &ServiceView| {
        s.reals
            .iter()
            .filter(|r| r.weight > 0 && up(s, r) != Some(false))
            .count()
    };
    for (s, labels) in &services {
        t.sample("xdplb_service_reals_up", labels, reals_up(s));
    }
    t.family(
        "xdplb_service_available",
        Gauge,
        "1 if at least one real server of the service can take new flows, 0 if none can (its \
         new flows are dropped).",
    );
    for (s, labels) in &services {
        t.sample("xdplb_service_available", labels, u8::from(reals_up(s) > 0));
    }

    for (what, help, value) in counters {
        let name = format!("xdplb_real_{what}_total");
        t.family(&name, Counter, &format!("{help} for the real server."));
        for (_, r, labels) in &reals {
            if let Some(stats) = &r.stats {
                t.sample(&name, labels, value(stats));
            }
        }
    }
    let conns: [RealFamily; 2] = [
        ("active", "TCP connections established (IPVS's ActiveConn)", |r: &RealView| r.active_conns),
        ("inactive", "Other entries of the connection table: handshakes, after a FIN, UDP (IPVS's InActConn)", |r: &RealView| r.inactive_conns),
    ];
    for (what, help, value) in conns {
        let name = format!("xdplb_real_{what}_connections");
        t.family(&name, Gauge, &format!("{help} of the real server now."));
        for (_, r, labels) in &reals {
            t.sample(&name, labels, value(r));
        }
    }
    t.family(
        "xdplb_real_weight",
        Gauge,
        "The real server's configured weight; 0 gives it no new flows.",
    );
    for (_, r, labels) in &reals {
        t.sample("xdplb_real_weight", labels, r.weight);
    }
    t.family(
        "xdplb_real_up",
        Gauge,
        "1 if the real server passes its health check, 0 if it fails it (health-checked real \
         servers only).",
    );
    for (s, r, labels) in &reals {
        if let Some(u) = up(s, r) {
            t.sample("xdplb_real_up", labels, u8::from(u));
        }
    }

    t.family(
        "xdplb_packets_total",
        Counter,
        "Packets passed to the kernel, dropped or answered by the director itself, by reason.",
    );
    for (reason, packets) in &listing.reasons {
        let labels = format!("reason=\"{}\"", escape(reason));
        t.sample("xdplb_packets_total", &labels, packets);
    }
    high_availability(&mut t, listing);
    t.out
}

/// Drain, announced VIPs and connection sync.
fn high_availability(t: &mut Text, listing: &Listing) {
    t.family(
        "xdplb_drained",
        Gauge,
        "1 while the director is drained for maintenance (xdplb drain): nothing announced, \
         check fails, forwarding goes on.",
    );
    t.sample("xdplb_drained", "", u8::from(listing.drained));
    if let Some(a) = &listing.announce {
        t.family(
            "xdplb_vip_announced",
            Gauge,
            "A VIP this director announces (a route in the routing table the routing daemon \
             learns); absent when withdrawn.",
        );
        for vip in &a.announced {
            let labels = format!("vip=\"{}\",table=\"{}\"", escape(vip), a.table);
            t.sample("xdplb_vip_announced", &labels, 1);
        }
    }
    let Some(sync) = &listing.sync else {
        return;
    };
    t.family(
        "xdplb_sync_current",
        Gauge,
        "1 when the connection table is current, 0 while the director catches up from a peer.",
    );
    t.sample("xdplb_sync_current", "", u8::from(sync.current));
    t.family(
        "xdplb_sync_events_total",
        Counter,
        "Flow events of the datapath: written to the ring, lost because it was full, and \
         about real servers no longer configured (not sent).",
    );
    for (result, n) in [
        ("written", sync.events_written),
        ("lost", sync.events_lost),
        ("unnamed", sync.events_unnamed),
    ] {
        t.sample(
            "xdplb_sync_events_total",
            &format!("result=\"{result}\""),
            n,
        );
    }
    t.family(
        "xdplb_sync_rejected_total",
        Counter,
        "Sync messages refused: not authentic, malformed, replayed, or from an address that \
         is not a peer.",
    );
    for reason in ["auth", "malformed", "replay", "unknown_peer"] {
        let n = sync.rejected.get(reason).copied().unwrap_or(0);
        t.sample(
            "xdplb_sync_rejected_total",
            &format!("reason=\"{reason}\""),
            n,
        );
    }
    let peers: Vec<(&crate::sync::PeerView, String)> = sync
        .peers
        .iter()
        .map(|p| (p, format!("peer=\"{}\"", escape(&p.address))))
        .collect();
    t.family(
        "xdplb_sync_peer_up",
        Gauge,
        "1 if the peer was heard within 3 s.",
    );
    for (p, l) in &peers {
        t.sample("xdplb_sync_peer_up", l, u8::from(p.state == "up"));
    }
    t.family(
        "xdplb_sync_peer_config_match",
        Gauge,
        "1 if the peer's services and real servers are ours, 0 if they differ (directors then \
         disagree on real servers); absent until it said hello.",
    );
    for (p, l) in &peers {
        if let Some(m) = p.config_match {
            t.sample("xdplb_sync_peer_config_match", l, u8::from(m));
        }
    }
    t.family(
        "xdplb_sync_peer_last_contact_seconds",
        Gauge,
        "Seconds since the peer was last heard; absent if never.",
    );
    for (p, l) in &peers {
        if let Some(s) = p.last_contact_secs {
            t.sample("xdplb_sync_peer_last_contact_seconds", l, s);
        }
    }
    let counters: [PeerFamily; 6] = [
        ("flows_sent", "Flows sent to the peer.", |p| p.flows_sent),
        ("flows_received", "Flows received from the peer and written into the connection table.", |p| p.flows_received),
        ("flows_unknown", "Flows from the peer for a service or real server this director does not have (not written).", |p| p.flows_unknown),
        ("datagrams_unsent", "Datagrams to the peer the socket would not take (their flows never left).", |p| p.datagrams_unsent),
        ("tables_received", "Full connection tables received from the peer.", |p| p.tables_received),
        ("tables_sent", "Full connection tables sent to the peer.", |p| p.tables_sent),
    ];
    for (what, help, value) in counters {
        let name = format!("xdplb_sync_peer_{what}_total");
        t.family(&name, Counter, help);
        for (p, l) in &peers {
            t.sample(&name, l, value(p));
        }
    }
    t.family(
        "xdplb_sync_peer_delay_seconds",
        Gauge,
        "Sync delay of the flows received from the peer (bound there -> in this table), by \
         quantile, since the start or the last zero.",
    );
    for (p, l) in &peers {
        for (q, v) in [("0.5", p.delay_p50_us), ("0.99", p.delay_p99_us)] {
            if let Some(us) = v {
                let labels = format!("{l},quantile=\"{q}\"");
                t.sample("xdplb_sync_peer_delay_seconds", &labels, us as f64 / 1e6);
            }
        }
    }
}

/// A per-real-server gauge: its name part, its HELP text and its value.
type RealFamily = (&'static str, &'static str, fn(&RealView) -> u64);

/// A per-peer sync counter: its name part, its HELP text and its value.
type PeerFamily = (
    &'static str,
    &'static str,
    fn(&crate::sync::PeerView) -> u64,
);

/// One of the counters of [`StatsView`]: its name part, its HELP text and its value.
type StatsFamily = (&'static str, &'static str, fn(&StatsView) -> u64);

/// `protocol="tcp",vip="10.0.0.100",port="80",scheduler="sh"`, escaped; an IPv6 VIP without
/// its brackets (`vip="2001:db8::100"`).
fn service_labels(s: &ServiceView) -> String {
    let protocol = match s.protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    };
    let (vip, port) = s.address.rsplit_once(':').unwrap_or((&s.address, ""));
    let vip = vip.trim_start_matches('[').trim_end_matches(']');
    format!(
        "protocol=\"{protocol}\",vip=\"{}\",port=\"{}\",scheduler=\"{}\"",
        escape(vip),
        escape(port),
        escape(&s.scheduler.to_string())
    )
}

/// A label value as the exposition format quotes it: `\`, `"` and newline escaped.
fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
}
use Kind::{Counter, Gauge};

/// The exposition text being written: each family's HELP and TYPE, then its samples.
#[derive(Default)]
struct Text {
    out: String,
}

impl Text {
    fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let kind = match kind {
            Counter => "counter",
            Gauge => "gauge",
        };
        // HELP text escapes `\` and newline (not `"`).
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    /// `labels` is the already escaped inside of the braces, empty for none.
    fn sample(&mut self, name: &str, labels: &str, value: impl Display) {
        if labels.is_empty() {
            let _ = writeln!(self.out, "{name} {value}");
        } else {
            let _ = writeln!(self.out, "{name}{{{labels}}} {value}");
        }
    }
}

/// The longest one scrape connection may last, from accept to the last byte written.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// Scrapes served at once; further connections wait to be accepted.
const MAX_CONNECTIONS: usize = 16;

/// Serves `GET /metrics` (and `HEAD`) on `listener` until the task is aborted, answering 404 for
/// other paths and 405 (with `Allow`) for other methods, one request per connection
/// (`Connection: close`), at most [`MAX_CONNECTIONS`] at once, each for at most
/// [`CONNECTION_TIMEOUT`]. HTTP itself is axum's router on hyper's HTTP/1.1 connections: request
/// parsing, malformed requests (400) and oversized heads (431).
///
/// `snapshot` is called once per scrape and returns the exposition text (see [`render`]); an
/// error is answered with 500. Connections in progress are aborted with the task.
pub async fn serve<F, Fut>(listener: TcpListener, snapshot: F) -> Result<()>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<String>> + Send + 'static,
{
    use axum::{
        http::{header, StatusCode},
        routing::get,
        Router,
    };
    let snapshot = Arc::new(snapshot);
    let scrape = move || {
        let snapshot = snapshot.clone();
        async move {
            let no_store = [(header::CACHE_CONTROL, "no-store")];
            match snapshot().await {
                Ok(text) => (
                    StatusCode::OK,
                    no_store,
                    [(header::CONTENT_TYPE, CONTENT_TYPE)],
                    text,
                ),
                Err(e) => {
                    tracing::warn!("xdplb: metrics: {e:#}");
                    (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        no_store,
                        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                        format!("{e:#}\n"),
                    )
                }
            }
        }
    };
    let app = Router::new()
        .route("/metrics", get(scrape))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                "not found; metrics are at /metrics\n",
            )
        });
    // Dropping the set (when this task is aborted) aborts the connections it holds.
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        if connections.len() >= MAX_CONNECTIONS {
            connections.join_next().await;
            continue;
        }
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, a connection reset before it was accepted, ...: the
                // listener itself is fine, so keep serving.
                tracing::warn!("xdplb: metrics: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        connections.spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_TIMEOUT, connection).await {
                Ok(Ok(())) | Err(_) => {}
                Ok(Err(e)) => tracing::debug!("xdplb: metrics connection: {e}"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet, HashSet};

    use super::*;
    use crate::{
        datapath::AttachMode,
        state::{Mac, Scheduler},
    };

    fn stats(conns: u64, packets: u64, bytes: u64) -> Option<StatsView> {
        Some(StatsView {
            conns,
            packets,
            bytes,
            ..Default::default()
        })
    }

    fn real(address: &str, forward: Forward, weight: u32, s: Option<StatsView>) -> RealView {
        RealView {
            address: address.to_owned(),
            forward,
            weight,
            mac: Mac::default(),
            health: None,
            active_conns: 2,
            inactive_conns: 1,
            u_threshold: 0,
            l_threshold: 0,
            overloaded: false,
            persistent_conns: 0,
            stats: s,
        }
    }

    fn listing() -> Listing {
        Listing {
            interface: "eth0".to_owned(),
            mode: AttachMode::Native,
            services: vec![
                ServiceView {
                    protocol: Protocol::Tcp,
                    address: "10.0.0.100:80".to_owned(),
                    scheduler: Scheduler::Sh,
                    mh_size: None,
                    hash: None,
                    persistent: None,
                    netmask: None,
                    stats: stats(7, 100, 6400),
                    reals: vec![
                        real("10.0.0.11:80", Forward::Route, 1, stats(3, 40, 2560)),
                        real("10.0.0.12:80", Forward::Tunnel, 2, stats(4, 60, 3840)),
                        // Draining: configured, no new flows.
                        real("10.0.0.13:80", Forward::Route, 0, stats(0, 0, 0)),
                    ],
                },
                ServiceView {
                    protocol: Protocol::Udp,
                    address: "10.0.0.100:53".to_owned(),
                    scheduler: Scheduler::Mh,
                    mh_size: Some(65537),
                    persistent: None,
                    netmask: None,
                    hash: None,
                    stats: stats(1, 2, 3),
                    reals: vec![real("10.0.0.21:53", Forward::Route, 5, stats(1, 2, 3))],
                },
                // No real servers at all.
                ServiceView {
                    protocol: Protocol::Tcp,
                    address: "10.0.0.101:443".to_owned(),
                    scheduler: Scheduler::Sh,
                    mh_size: None,
                    persistent: None,
                    netmask: None,
                    hash: None,
                    stats: None,
                    reals: vec![],
                },
            ],
            reasons: BTreeMap::from([
                ("pass_no_service".to_owned(), 12),
                ("drop_no_real".to_owned(), 5),
                ("weird\"reason\\\n".to_owned(), 1),
            ]),
            drained: false,
            sync: None,
            announce: None,
            timeouts: Default::default(),
            conn_max: 1_000_000,
        }
    }

    fn info() -> AgentInfo {
        AgentInfo {
            version: "0.1.0",
            interface: "eth\"0\\x\ny".to_owned(),
            mode: "native".to_owned(),
            program_id: Some(42),
            started: UNIX_EPOCH + Duration::from_millis(1_700_000_000_500),
            reloads: 3,
            reload_failures: 1,
        }
    }

    /// 10.0.0.12 fails its health check, the UDP service's only real server too, 10.0.0.11 is
    /// unchecked.
    fn health(_: &ServiceView, r: &RealView) -> Option<bool> {
        match r.address.as_str() {
            "10.0.0.11:80" => None,
            "10.0.0.12:80" | "10.0.0.21:53" => Some(false),
            _ => Some(true),
        }
    }

    /// One sample: its name, its labels unescaped, its value.
    type Sample = (String, BTreeMap<String, String>, f64);

    fn is_name(s: &str, colon: bool) -> bool {
        let mut cs = s.chars();
        cs.next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (colon && c == ':'))
            && cs.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':'))
    }

    /// Parses `{a="x",b="y"}` (braces excluded), unescaping values; panics on malformed text.
    fn parse_labels(mut s: &str) -> BTreeMap<String, String> {
        let mut labels = BTreeMap::new();
        while !s.is_empty() {
            let (name, rest) = s.split_once("=\"").expect("label name=\"");
            assert!(is_name(name, false), "label name {name:?}");
            let mut value = String::new();
            let mut chars = rest.char_indices();
            let end = loop {
                match chars.next().expect("unterminated label value") {
                    (_, '\\') => match chars.next().expect("dangling escape").1 {
                        '\\' => value.push('\\'),
                        '"' => value.push('"'),
                        'n' => value.push('\n'),
                        c => panic!("bad escape \\{c}"),
                    },
                    (i, '"') => break i,
                    (_, '\n') => panic!("raw newline in a label value"),
                    (_, c) => value.push(c),
                }
            };
            assert!(
                labels.insert(name.to_owned(), value).is_none(),
                "label {name} twice"
            );
            s = &rest[end + 1..];
            s = s.strip_prefix(',').unwrap_or(s);
        }
        labels
    }

    /// Checks that `text` is valid version 0.0.4 exposition text as `render` writes it (one TYPE
    /// per family, HELP and TYPE before its samples, samples of a family together, no duplicate
    /// series) and returns its samples and each family's type.
    fn parse(text: &str) -> (Vec<Sample>, BTreeMap<String, String>) {
        assert!(text.ends_with('\n'), "text ends with a newline");
        let mut types = BTreeMap::new();
        let mut helped = HashSet::new();
        let mut current: Option<String> = None;
        let mut samples = Vec::new();
        let mut series = HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').expect("HELP name text");
                assert!(is_name(name, true), "HELP name {name:?}");
                assert!(!help.is_empty(), "HELP for {name} is empty");
                assert!(helped.insert(name.to_owned()), "HELP {name} twice");
                assert!(!types.contains_key(name), "HELP {name} after its TYPE");
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
                assert!(helped.contains(name), "TYPE {name} without HELP before it");
                assert!(matches!(kind, "counter" | "gauge"), "TYPE {name} {kind}");
                if kind == "counter" {
                    assert!(name.ends_with("_total"), "counter {name} ends with _total");
                }
                assert!(
                    types.insert(name.to_owned(), kind.to_owned()).is_none(),
                    "family {name} declared twice"
                );
                current = Some(name.to_owned());
            } else {
                assert!(!line.starts_with('#'), "stray comment {line:?}");
                let (series_text, value) = line.rsplit_once(' ').expect("sample has a value");
                let value: f64 = value.parse().expect("sample value is a number");
                let (name, labels) = match series_text.split_once('{') {
                    Some((name, rest)) => {
                        let inner = rest.strip_suffix('}').expect("labels end with }");
                        (name, parse_labels(inner))
                    }
                    None => (series_text, BTreeMap::new()),
                };
                assert!(is_name(name, true), "sample name {name:?}");
                assert_eq!(
                    current.as_deref(),
                    Some(name),
                    "sample {line:?} outside its family"
                );
                if types[name] == "counter" {
                    assert!(value >= 0.0, "negative counter {line:?}");
                }
                assert!(
                    series.insert((name.to_owned(), labels.clone())),
                    "duplicate series {line:?}"
                );
                samples.push((name.to_owned(), labels, value));
            }
        }
        (samples, types)
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn value(samples: &[Sample], name: &str, pairs: &[(&str, &str)]) -> Option<f64> {
        let want = labels(pairs);
        samples
            .iter()
            .find(|(n, l, _)| n == name && *l == want)
            .map(|s| s.2)
    }

    const HTTP: [(&str, &str); 4] = [
        ("protocol", "tcp"),
        ("vip", "10.0.0.100"),
        ("port", "80"),
        ("scheduler", "sh"),
    ];
    const DNS: [(&str, &str); 4] = [
        ("protocol", "udp"),
        ("vip", "10.0.0.100"),
        ("port", "53"),
        ("scheduler", "mh"),
    ];
    const TLS: [(&str, &str); 4] = [
        ("protocol", "tcp"),
        ("vip", "10.0.0.101"),
        ("port", "443"),
        ("scheduler", "sh"),
    ];

    fn with<'a>(
        base: &[(&'a str, &'a str)],
        more: &[(&'a str, &'a str)],
    ) -> Vec<(&'a str, &'a str)> {
        base.iter().chain(more).copied().collect()
    }

    #[test]
    fn render_is_valid_exposition_text() {
        let text = render(&listing(), &info(), health);
        let (samples, types) = parse(&text);
        let families: BTreeSet<&str> = types.keys().map(String::as_str).collect();
        for f in [
            "xdplb_agent_info",
            "xdplb_program_id",
            "xdplb_agent_start_time_seconds",
            "xdplb_config_reloads_total",
            "xdplb_config_reload_failures_total",
            "xdplb_service_connections_total",
            "xdplb_service_packets_total",
            "xdplb_service_bytes_total",
            "xdplb_service_reals_up",
            "xdplb_service_available",
            "xdplb_real_connections_total",
            "xdplb_real_packets_total",
            "xdplb_real_bytes_total",
            "xdplb_real_weight",
            "xdplb_real_up",
            "xdplb_packets_total",
        ] {
            assert!(families.contains(f), "family {f} missing:\n{text}");
        }
        assert_eq!(types["xdplb_real_weight"], "gauge");
        assert_eq!(types["xdplb_packets_total"], "counter");
        // Every sample name is a declared family (checked by `parse`), every family is prefixed.
        assert!(families.iter().all(|f| f.starts_with("xdplb_")));
        assert!(!samples.is_empty());
    }

    #[test]
    fn render_has_the_expected_samples() {
        let text = render(&listing(), &info(), health);
        let (s, _) = parse(&text);
        let v = |name: &str, pairs: &[(&str, &str)]| value(&s, name, pairs);

        // The interface name comes back intact through the escaping.
        assert_eq!(
            v(
                "xdplb_agent_info",
                &[
                    ("version", "0.1.0"),
                    ("interface", "eth\"0\\x\ny"),
                    ("mode", "native")
                ]
            ),
            Some(1.0)
        );
        assert!(
            text.contains(r#"interface="eth\"0\\x\ny""#),
            "escaped in the text:\n{text}"
        );
        assert_eq!(v("xdplb_program_id", &[]), Some(42.0));
        assert_eq!(
            v("xdplb_agent_start_time_seconds", &[]),
            Some(1_700_000_000.5)
        );
        assert_eq!(v("xdplb_config_reloads_total", &[]), Some(3.0));
        assert_eq!(v("xdplb_config_reload_failures_total", &[]), Some(1.0));

        assert_eq!(v("xdplb_service_connections_total", &HTTP), Some(7.0));
        assert_eq!(v("xdplb_service_packets_total", &HTTP), Some(100.0));
        assert_eq!(v("xdplb_service_bytes_total", &HTTP), Some(6400.0));
        assert_eq!(v("xdplb_service_bytes_total", &DNS), Some(3.0));
        // No stats, no counters; but its health is shown.
        assert_eq!(v("xdplb_service_packets_total", &TLS), None);

        // 10.0.0.11 (unchecked, weight 1) counts; 10.0.0.12 is down; 10.0.0.13 drains.
        assert_eq!(v("xdplb_service_reals_up", &HTTP), Some(1.0));
        assert_eq!(v("xdplb_service_available", &HTTP), Some(1.0));
        // All real servers of a service failed.
        assert_eq!(v("xdplb_service_reals_up", &DNS), Some(0.0));
        assert_eq!(v("xdplb_service_available", &DNS), Some(0.0));
        // None configured.
        assert_eq!(v("xdplb_service_reals_up", &TLS), Some(0.0));
        assert_eq!(v("xdplb_service_available", &TLS), Some(0.0));

        let r11 = with(&HTTP, &[("real", "10.0.0.11:80"), ("forward", "route")]);
        let r12 = with(&HTTP, &[("real", "10.0.0.12:80"), ("forward", "tunnel")]);
        let r13 = with(&HTTP, &[("real", "10.0.0.13:80"), ("forward", "route")]);
        let r21 = with(&DNS, &[("real", "10.0.0.21:53"), ("forward", "route")]);
        assert_eq!(v("xdplb_real_connections_total", &r11), Some(3.0));
        assert_eq!(v("xdplb_real_packets_total", &r12), Some(60.0));
        assert_eq!(v("xdplb_real_bytes_total", &r12), Some(3840.0));
        assert_eq!(v("xdplb_real_bytes_total", &r21), Some(3.0));
        assert_eq!(v("xdplb_real_weight", &r11), Some(1.0));
        assert_eq!(v("xdplb_real_weight", &r12), Some(2.0));
        assert_eq!(v("xdplb_real_weight", &r13), Some(0.0));
        assert_eq!(v("xdplb_real_up", &r11), None, "not health-checked");
        assert_eq!(v("xdplb_real_up", &r12), Some(0.0));
        assert_eq!(v("xdplb_real_up", &r13), Some(1.0));
        assert_eq!(v("xdplb_real_up", &r21), Some(0.0));

        assert_eq!(
            v("xdplb_packets_total", &[("reason", "pass_no_service")]),
            Some(12.0)
        );
        assert_eq!(
            v("xdplb_packets_total", &[("reason", "drop_no_real")]),
            Some(5.0)
        );
        assert_eq!(
            v("xdplb_packets_total", &[("reason", "weird\"reason\\\n")]),
            Some(1.0)
        );
        let count = |name: &str| s.iter().filter(|x| x.0 == name).count();
        assert_eq!(count("xdplb_packets_total"), 3);
        assert_eq!(count("xdplb_real_weight"), 4);
        assert_eq!(count("xdplb_service_available"), 3);
    }

    #[test]
    fn render_without_health_checks_stats_or_program() {
        let listing = listing().without_stats();
        let info = AgentInfo {
            program_id: None,
            ..info()
        };
        let text = render(&listing, &info, |_, _| None);
        let (s, types) = parse(&text);
        assert!(!types.contains_key("xdplb_program_id"));
        assert!(!s.iter().any(|x| x.0 == "xdplb_real_up"));
        assert!(!s
            .iter()
            .any(|x| x.0.ends_with("_total") && !x.0.contains("config")));
        // Unchecked real servers with weight > 0 take flows.
        assert_eq!(value(&s, "xdplb_service_reals_up", &HTTP), Some(2.0));
        assert_eq!(value(&s, "xdplb_service_available", &DNS), Some(1.0));
        assert_eq!(value(&s, "xdplb_service_available", &TLS), Some(0.0));
    }

    #[test]
    fn escape_label_values() {
        assert_eq!(escape(r"a\b"), r"a\\b");
        assert_eq!(escape("a\"b"), r#"a\"b"#);
        assert_eq!(escape("a\nb"), r"a\nb");
        assert_eq!(escape("plain 10.0.0.1:80"), "plain 10.0.0.1:80");
    }

    /// Sends `request`, returns the status code, the head (header names in lower case, as
    /// hyper writes them) and the body.
    async fn http(addr: std::net::SocketAddr, request: &str) -> (u16, String, String) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let (head, body) = response.split_once("\r\n\r\n").expect("head and body");
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status code");
        (status, head.to_owned(), body.to_owned())
    }

    #[tokio::test]
    async fn serve_answers_scrapes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // The agent's state behind a tokio Mutex, as the agent holds it.
        let state = Arc::new(tokio::sync::Mutex::new((listing(), info(), 0u64)));
        let server = tokio::spawn(serve(listener, {
            let state = state.clone();
            move || {
                let state = state.clone();
                async move {
                    let mut st = state.lock().await;
                    st.2 += 1;
                    st.1.reloads = st.2;
                    Ok(render(&st.0, &st.1, health))
                }
            }
        }));

        let get = "GET /metrics HTTP/1.1\r\nHost: localhost\r\nAccept: text/plain\r\n\r\n";
        let (status, head, body) = http(addr, get).await;
        assert_eq!(status, 200, "{head}");
        assert!(
            head.contains("content-type: text/plain; version=0.0.4"),
            "{head}"
        );
        assert!(head.contains("connection: close"), "{head}");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        parse(&body);
        assert!(body.contains("xdplb_config_reloads_total 1\n"), "{body}");

        // A second scrape takes a new snapshot.
        let (status, _, body) = http(addr, "GET /metrics?x=1 HTTP/1.0\r\n\r\n").await;
        assert_eq!(status, 200);
        assert!(body.contains("xdplb_config_reloads_total 2\n"), "{body}");

        let (status, head, body) = http(addr, "HEAD /metrics HTTP/1.1\r\n\r\n").await;
        assert_eq!(status, 200);
        assert!(body.is_empty());
        assert!(!head.contains("content-length: 0"), "{head}");

        let (status, _, _) = http(addr, "GET / HTTP/1.1\r\n\r\n").await;
        assert_eq!(status, 404);
        let (status, _, _) = http(addr, "GET /metricsx HTTP/1.1\r\n\r\n").await;
        assert_eq!(status, 404);
        let (status, head, _) =
            http(addr, "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").await;
        assert_eq!(status, 405);
        assert!(head.contains("allow: GET,HEAD"), "{head}");
        let (status, _, _) = http(addr, "garbage\r\n\r\n").await;
        assert_eq!(status, 400);
        // Beyond hyper's limit for a request head (about 400 KB).
        let huge = format!(
            "GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(1 << 20)
        );
        let (status, _, _) = http(addr, &huge).await;
        assert_eq!(status, 431);

        // The head may arrive in pieces.
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        for piece in ["GET /met", "rics HTTP/1.1\r", "\n\r", "\n"] {
            stream.write_all(piece.as_bytes()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert!(response.contains("xdplb_config_reloads_total 4\n"));

        // Every scrape above that reached /metrics with GET or HEAD took one snapshot.
        assert_eq!(state.lock().await.2, 4);
        server.abort();
        assert!(server.await.unwrap_err().is_cancelled());
    }

    #[tokio::test]
    async fn serve_answers_500_when_the_snapshot_fails() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(listener, || async {
            Err(anyhow::anyhow!("datapath counters unreadable"))
        }));
        let (status, _, body) = http(addr, "GET /metrics HTTP/1.1\r\n\r\n").await;
        assert_eq!(status, 500);
        assert!(body.contains("datapath counters unreadable"));
        server.abort();
    }
}

#[cfg(test)]
mod ipv6_tests {
    use super::*;
    use crate::state::Scheduler;

    #[test]
    fn an_ipv6_vip_is_labelled_without_brackets() {
        let s = ServiceView {
            protocol: Protocol::Tcp,
            address: "[2001:db8::100]:80".to_owned(),
            scheduler: Scheduler::Mh,
            mh_size: None,
            hash: None,
            persistent: None,
            netmask: None,
            stats: None,
            reals: Vec::new(),
        };
        assert_eq!(
            service_labels(&s),
            r#"protocol="tcp",vip="2001:db8::100",port="80",scheduler="mh""#
        );
    }
}
