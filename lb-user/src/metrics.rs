//! Prometheus metrics for `xdplb run --metrics ADDR` (and `--web ADDR`): the OpenMetrics text
//! format, encoded by the `prometheus-client` crate from the same [`Listing`] that
//! `xdplb list --stats --json` prints, served at `GET /metrics` (see [`crate::web`]).
//!
//! The server has no authentication: bind it to localhost or a management network.
//!
//! Families (all prefixed `xdplb_`; a counter `x` is sampled as `x_total`):
//!
//! | family | type | labels |
//! |---|---|---|
//! | `agent_info` (1) | gauge | `version`, `interface`, `mode` |
//! | `program_id` | gauge | |
//! | `pins_outlive_agent` (1/0) | gauge | |
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
//! Service labels: `protocol` (`tcp`, `udp`), `vip`, `port`, `scheduler` (`sh`, `mh`, ...); real
//! server labels: the service's plus `real` (`RIP:PORT`) and `forward` (`route`, `tunnel`,
//! `masq`). `xdplb_real_up` is only there for health-checked real servers; an unchecked one
//! counts as up in `xdplb_service_reals_up`, as the datapath sends it flows. A family without
//! samples (no health checks, no sync) is left out.

use std::sync::atomic::AtomicU64;

use prometheus_client::{
    encoding::{text::encode, EncodeMetric},
    metrics::{counter::Counter, family::Family, gauge::Gauge, TypedMetric},
    registry::Registry,
};

use crate::{
    control::{Listing, RealView, ServiceView, StatsView},
    health::Health,
    state::Forward,
};

/// The `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A sample's labels, values already escaped (the crate writes them as given).
type Labels = Vec<(String, String)>;

/// Renders one scrape. Counters are there for the services and real servers whose `stats`
/// are present.
pub fn render(listing: &Listing) -> String {
    let mut r = Registry::with_prefix("xdplb");
    agent(&mut r, listing);

    let services: Vec<(&ServiceView, Labels)> = listing
        .services
        .iter()
        .map(|s| (s, service_labels(s)))
        .collect();
    let reals: Vec<(&ServiceView, &RealView, Labels)> = services
        .iter()
        .flat_map(|(s, sl)| s.reals.iter().map(move |r| (*s, r, real_labels(sl, r))))
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
        counter(
            &mut r,
            &format!("service_{what}"),
            &format!("{help} for the service"),
            services
                .iter()
                .filter_map(|(s, l)| s.stats.as_ref().map(|st| (l.clone(), value(st)))),
        );
    }
    let reals_up = |s: &ServiceView| {
        s.reals
            .iter()
            .filter(|r| r.weight > 0 && up(r) != Some(false))
            .count() as i64
    };
    gauge(
        &mut r,
        "service_reals_up",
        "Real servers of the service that can take new flows: weight above 0 and not failing \
         their health check",
        services.iter().map(|(s, l)| (l.clone(), reals_up(s))),
    );
    gauge(
        &mut r,
        "service_available",
        "1 if at least one real server of the service can take new flows, 0 if none can (its \
         new flows are dropped)",
        services
            .iter()
            .map(|(s, l)| (l.clone(), i64::from(reals_up(s) > 0))),
    );

    for (what, help, value) in counters {
        counter(
            &mut r,
            &format!("real_{what}"),
            &format!("{help} for the real server"),
            reals
                .iter()
                .filter_map(|(_, rv, l)| rv.stats.as_ref().map(|st| (l.clone(), value(st)))),
        );
    }
    let conns: [RealFamily; 2] = [
        ("active", "TCP connections established (IPVS's ActiveConn)", |r: &RealView| r.active_conns),
        ("inactive", "Other entries of the connection table: handshakes, after a FIN, UDP (IPVS's InActConn)", |r: &RealView| r.inactive_conns),
    ];
    for (what, help, value) in conns {
        gauge(
            &mut r,
            &format!("real_{what}_connections"),
            &format!("{help} of the real server now"),
            reals.iter().map(|(_, rv, l)| (l.clone(), value(rv) as i64)),
        );
    }
    gauge(
        &mut r,
        "real_weight",
        "The real server's configured weight; 0 gives it no new flows",
        reals
            .iter()
            .map(|(_, rv, l)| (l.clone(), i64::from(rv.weight))),
    );
    gauge(
        &mut r,
        "real_up",
        "1 if the real server passes its health check, 0 if it fails it (health-checked real \
         servers only)",
        reals
            .iter()
            .filter_map(|(_, rv, l)| up(rv).map(|u| (l.clone(), i64::from(u)))),
    );

    counter(
        &mut r,
        "packets",
        "Packets passed to the kernel, dropped or answered by the director itself, by reason",
        listing
            .reasons
            .iter()
            .map(|(reason, n)| (labels(&[("reason", reason)]), *n)),
    );
    high_availability(&mut r, listing);

    let mut out = String::new();
    encode(&mut out, &r).expect("writing to a String does not fail");
    out
}

/// Whether the real server passes its health check; `None` when it has none.
fn up(r: &RealView) -> Option<bool> {
    r.health.as_ref().map(|h| h.state == Health::Up)
}

/// The agent: version, interface, mode, program, start time, reloads.
fn agent(r: &mut Registry, listing: &Listing) {
    let Some(a) = &listing.agent else {
        return;
    };
    let mode = format!("{:?}", listing.mode).to_lowercase();
    gauge(
        r,
        "agent_info",
        "The agent's version, the interface it is attached to and the XDP mode; always 1",
        [(
            labels(&[
                ("version", &a.version),
                ("interface", &listing.interface),
                ("mode", &mode),
            ]),
            1,
        )],
    );
    if let Some(id) = a.program_id {
        gauge(
            r,
            "program_id",
            "The kernel's id of the attached XDP program",
            [(Labels::new(), i64::from(id))],
        );
    }
    if let Some(persist) = a.pins_outlive_agent {
        gauge(
            r,
            "pins_outlive_agent",
            "1 if the datapath's pins outlive the agent (restarts keep forwarding), 0 if its bpffs \
             is in the agent's private mount namespace (a restart starts empty)",
            [(Labels::new(), i64::from(persist))],
        );
    }
    gauge_f64(
        r,
        "agent_start_time_seconds",
        "When the agent started, in seconds since the Unix epoch",
        [(Labels::new(), a.started)],
    );
    counter(
        r,
        "config_reloads",
        "Configuration reloads applied",
        [(Labels::new(), a.reloads)],
    );
    counter(
        r,
        "config_reload_failures",
        "Configuration reloads rejected; the previous configuration stays in force",
        [(Labels::new(), a.reload_failures)],
    );
}

/// Drain, announced VIPs and connection sync.
fn high_availability(r: &mut Registry, listing: &Listing) {
    gauge(
        r,
        "drained",
        "1 while the director is drained for maintenance (xdplb drain): nothing announced, \
         check fails, forwarding goes on",
        [(Labels::new(), i64::from(listing.drained))],
    );
    if let Some(a) = &listing.announce {
        let table = a.table.to_string();
        gauge(
            r,
            "vip_announced",
            "A VIP this director announces (a route in the routing table the routing daemon \
             learns); absent when withdrawn",
            a.announced
                .iter()
                .map(|vip| (labels(&[("vip", vip), ("table", &table)]), 1)),
        );
    }
    let Some(sync) = &listing.sync else {
        return;
    };
    gauge(
        r,
        "sync_current",
        "1 when the connection table is current, 0 while the director catches up from a peer",
        [(Labels::new(), i64::from(sync.current))],
    );
    counter(
        r,
        "sync_events",
        "Flow events of the datapath: written to the ring, lost because it was full, and \
         about real servers no longer configured (not sent)",
        [
            ("written", sync.events_written),
            ("lost", sync.events_lost),
            ("unnamed", sync.events_unnamed),
        ]
        .map(|(result, n)| (labels(&[("result", result)]), n)),
    );
    counter(
        r,
        "sync_rejected",
        "Sync messages refused: not authentic, malformed, replayed, or from an address that \
         is not a peer",
        ["auth", "malformed", "replay", "unknown_peer"].map(|reason| {
            let n = sync.rejected.get(reason).copied().unwrap_or(0);
            (labels(&[("reason", reason)]), n)
        }),
    );
    let peers: Vec<(&crate::sync::PeerView, Labels)> = sync
        .peers
        .iter()
        .map(|p| (p, labels(&[("peer", &p.address)])))
        .collect();
    gauge(
        r,
        "sync_peer_up",
        "1 if the peer was heard within 3 s",
        peers
            .iter()
            .map(|(p, l)| (l.clone(), i64::from(p.state == "up"))),
    );
    gauge(
        r,
        "sync_peer_config_match",
        "1 if the peer's services and real servers are ours, 0 if they differ (directors then \
         disagree on real servers); absent until it said hello",
        peers
            .iter()
            .filter_map(|(p, l)| p.config_match.map(|m| (l.clone(), i64::from(m)))),
    );
    gauge_f64(
        r,
        "sync_peer_last_contact_seconds",
        "Seconds since the peer was last heard; absent if never",
        peers
            .iter()
            .filter_map(|(p, l)| p.last_contact_secs.map(|s| (l.clone(), s))),
    );
    let counters: [PeerFamily; 6] = [
        ("flows_sent", "Flows sent to the peer", |p| p.flows_sent),
        ("flows_received", "Flows received from the peer and written into the connection table", |p| p.flows_received),
        ("flows_unknown", "Flows from the peer for a service or real server this director does not have (not written)", |p| p.flows_unknown),
        ("datagrams_unsent", "Datagrams to the peer the socket would not take (their flows never left)", |p| p.datagrams_unsent),
        ("tables_received", "Full connection tables received from the peer", |p| p.tables_received),
        ("tables_sent", "Full connection tables sent to the peer", |p| p.tables_sent),
    ];
    for (what, help, value) in counters {
        counter(
            r,
            &format!("sync_peer_{what}"),
            help,
            peers.iter().map(|(p, l)| (l.clone(), value(p))),
        );
    }
    gauge_f64(
        r,
        "sync_peer_delay_seconds",
        "Sync delay of the flows received from the peer (bound there -> in this table), by \
         quantile, since the start or the last zero",
        peers.iter().flat_map(|(p, l)| {
            [("0.5", p.delay_p50_us), ("0.99", p.delay_p99_us)]
                .into_iter()
                .filter_map(move |(q, v)| {
                    let mut l = l.clone();
                    l.push(("quantile".into(), q.into()));
                    v.map(|us| (l, us as f64 / 1e6))
                })
        }),
    );
}

/// A family of counters, each sample its labels and value. (The crate adds the `_total`
/// suffix to the samples and a full stop to the help.)
fn counter(
    r: &mut Registry,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Labels, u64)>,
) {
    family(r, name, help, samples, |c: &Counter, v| {
        c.inc_by(v);
    });
}

/// A family of integer gauges.
fn gauge(
    r: &mut Registry,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Labels, i64)>,
) {
    family(r, name, help, samples, |g: &Gauge, v| {
        g.set(v);
    });
}

/// A family of gauges with fractions.
fn gauge_f64(
    r: &mut Registry,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Labels, f64)>,
) {
    family(r, name, help, samples, |g: &Gauge<f64, AtomicU64>, v| {
        g.set(v);
    });
}

/// Registers the samples as one family of metrics `M`, each set by `set`; a single sample
/// without labels as a metric of its own (`name 1`, not `name{} 1`).
fn family<M, V>(
    r: &mut Registry,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Labels, V)>,
    set: impl Fn(&M, V),
) where
    M: EncodeMetric + TypedMetric + Default + Clone + std::fmt::Debug + Send + Sync + 'static,
{
    let mut samples: Vec<(Labels, V)> = samples.into_iter().collect();
    if samples.len() == 1 && samples[0].0.is_empty() {
        let metric = M::default();
        if let Some((_, v)) = samples.pop() {
            set(&metric, v);
        }
        r.register(name, help, metric);
        return;
    }
    let family = Family::<Labels, M>::default();
    for (l, v) in samples {
        set(&family.get_or_create(&l), v);
    }
    r.register(name, help, family);
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

/// Labels from names and raw values (escaped here).
fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), escape(v)))
        .collect()
}

/// `protocol="tcp",vip="10.0.0.100",port="80",scheduler="sh"`; an IPv6 VIP without its
/// brackets (`vip="2001:db8::100"`).
fn service_labels(s: &ServiceView) -> Labels {
    let protocol = s.protocol.name();
    let (vip, port) = s.address.rsplit_once(':').unwrap_or((&s.address, ""));
    let vip = vip.trim_start_matches('[').trim_end_matches(']');
    labels(&[
        ("protocol", protocol),
        ("vip", vip),
        ("port", port),
        ("scheduler", &s.scheduler.to_string()),
    ])
}

/// The service's labels and `real="RIP:PORT",forward="route"`.
fn real_labels(service: &Labels, r: &RealView) -> Labels {
    let forward = match r.forward {
        Forward::Route => "route",
        Forward::Tunnel => "tunnel",
        Forward::Masq => "masq",
    };
    let mut l = service.clone();
    l.extend(labels(&[("real", &r.address), ("forward", forward)]));
    l
}

/// A label value as the exposition format quotes it: `\`, `"` and newline escaped (the crate
/// writes values as they are).
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

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet, HashSet};

    use super::*;
    use crate::{
        control::{AgentView, HealthView},
        datapath::AttachMode,
        state::{Mac, Protocol, Scheduler},
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
            stats: s,
            ..RealView::default()
        }
    }

    fn listing() -> Listing {
        Listing {
            interface: "eth\"0\\x\ny".to_owned(),
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
                    rates: None,
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
                    rates: None,
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
                    rates: None,
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
            nat_max: 1_000_000,
            agent: Some(AgentView {
                version: "0.1.0".into(),
                started: 1_700_000_000.5,
                reloads: 3,
                reload_failures: 1,
                program_id: Some(42),
                pins_outlive_agent: Some(true),
            }),
            reason_rates: BTreeMap::new(),
        }
    }

    /// 10.0.0.12 fails its health check (with an error), the UDP service's only real server
    /// too, 10.0.0.11 is unchecked, the others pass.
    fn with_health(mut l: Listing) -> Listing {
        for r in l.services.iter_mut().flat_map(|s| &mut s.reals) {
            r.health = match r.address.as_str() {
                "10.0.0.11:80" => None,
                "10.0.0.12:80" | "10.0.0.21:53" => Some(HealthView {
                    state: Health::Down,
                    last_error: Some("connection refused".into()),
                }),
                _ => Some(HealthView {
                    state: Health::Up,
                    last_error: None,
                }),
            };
        }
        l
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

    /// Checks that `text` is valid OpenMetrics text as `render` writes it (HELP and TYPE before
    /// a family's samples, a counter's samples named `_total`, samples of a family together,
    /// no duplicate series, `# EOF` last) and returns its samples and the type of each sample
    /// name.
    fn parse(text: &str) -> (Vec<Sample>, BTreeMap<String, String>) {
        let text = text
            .strip_suffix("# EOF\n")
            .expect("the text ends with # EOF and a newline");
        let mut types = BTreeMap::new();
        let mut helped = HashSet::new();
        let mut current: Option<String> = None;
        let mut samples = Vec::new();
        let mut series = HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').expect("HELP name text");
                assert!(is_name(name, true), "HELP name {name:?}");
                assert!(
                    help.ends_with('.') && !help.ends_with(".."),
                    "HELP {help:?}"
                );
                assert!(helped.insert(name.to_owned()), "HELP {name} twice");
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
                assert!(helped.contains(name), "TYPE {name} without HELP before it");
                let sample_name = match kind {
                    "counter" => {
                        assert!(!name.ends_with("_total"), "counter family {name}");
                        format!("{name}_total")
                    }
                    "gauge" => name.to_owned(),
                    _ => panic!("TYPE {name} {kind}"),
                };
                assert!(
                    types.insert(sample_name.clone(), kind.to_owned()).is_none(),
                    "family {name} declared twice"
                );
                current = Some(sample_name);
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
        let text = render(&with_health(listing()));
        let (samples, types) = parse(&text);
        let families: BTreeSet<&str> = types.keys().map(String::as_str).collect();
        for f in [
            "xdplb_agent_info",
            "xdplb_program_id",
            "xdplb_pins_outlive_agent",
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
        let text = render(&with_health(listing()));
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
        assert_eq!(v("xdplb_pins_outlive_agent", &[]), Some(1.0));
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
        let mut listing = listing().without_stats();
        listing.agent.as_mut().unwrap().program_id = None;
        let text = render(&listing);
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
}

#[cfg(test)]
mod ipv6_tests {
    use super::*;
    use crate::state::{Protocol, Scheduler};

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
            rates: None,
            reals: Vec::new(),
        };
        let labels = service_labels(&s);
        let pairs: Vec<(&str, &str)> = labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("protocol", "tcp"),
                ("vip", "2001:db8::100"),
                ("port", "80"),
                ("scheduler", "mh")
            ]
        );
    }
}
