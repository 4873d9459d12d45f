//! End to end, counters and metrics: `xdplb run --metrics ADDR` serves the Prometheus families
//! the README lists, with the same counters `xdplb list --stats` shows; `xdplb zero` zeroes them;
//! `xdplb list --rate` shows the traffic per second while it flows, and nothing once it stopped.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lb_tests::client::{http_get, StreamSet};
use lb_tests::metrics::Scrape;
use lb_tests::{require_root, Agent, DrTopology, FreshFlows, Listing, Serve};

/// Where the agent serves its metrics, inside the director's namespace.
const METRICS: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), 9727);
const SVC: &str = "10.0.0.100:80";

/// Every family the agent serves, with its type.
const FAMILIES: [(&str, &str); 15] = [
    ("xdplb_agent_info", "gauge"),
    ("xdplb_agent_start_time_seconds", "gauge"),
    ("xdplb_config_reloads_total", "counter"),
    ("xdplb_config_reload_failures_total", "counter"),
    ("xdplb_service_connections_total", "counter"),
    ("xdplb_service_packets_total", "counter"),
    ("xdplb_service_bytes_total", "counter"),
    ("xdplb_service_reals_up", "gauge"),
    ("xdplb_service_available", "gauge"),
    ("xdplb_real_connections_total", "counter"),
    ("xdplb_real_packets_total", "counter"),
    ("xdplb_real_bytes_total", "counter"),
    ("xdplb_real_weight", "gauge"),
    ("xdplb_real_up", "gauge"),
    ("xdplb_packets_total", "counter"),
];

/// Every counter of a `list --stats --json`, by the name of the metric sample that must equal it:
/// `(family, real or reason)`.
fn counters(listing: &Listing) -> BTreeMap<(String, String), u64> {
    let mut all = BTreeMap::new();
    let stats = [
        ("connections", "conns"),
        ("packets", "packets"),
        ("bytes", "bytes"),
    ];
    for (family, stat) in stats {
        let service = format!("xdplb_service_{family}_total");
        all.insert((service, String::new()), listing.service_stat(SVC, stat));
        for real in listing.reals(SVC) {
            let value = listing.real(SVC, &real)["stats"][stat].as_u64();
            let value = value.unwrap_or_else(|| panic!("no {stat} for {real}: {}", listing.0));
            all.insert((format!("xdplb_real_{family}_total"), real), value);
        }
    }
    let reasons = listing.0["reasons"].as_object().expect("reasons");
    for (reason, value) in reasons {
        let value = value.as_u64().expect("a reason's count");
        all.insert(("xdplb_packets_total".to_owned(), reason.clone()), value);
    }
    all
}

/// The samples of a scrape for the keys of [`counters`].
fn scraped(
    scrape: &Scrape,
    keys: &BTreeMap<(String, String), u64>,
) -> BTreeMap<(String, String), u64> {
    keys.keys()
        .map(|(family, which)| {
            let label = match family.as_str() {
                "xdplb_packets_total" => "reason",
                _ if family.starts_with("xdplb_real_") => "real",
                _ => "vip",
            };
            let which_label = if label == "vip" { "10.0.0.100" } else { which };
            let value = scrape.value(family, &[(label, which_label)]);
            ((family.clone(), which.clone()), value as u64)
        })
        .collect()
}

/// The counters of `list --stats` and of a scrape, taken while nothing changed: a scrape before
/// and one after the listing agree.
fn quiescent(agent: &Agent, topo: &DrTopology) -> (BTreeMap<(String, String), u64>, Scrape) {
    let director = topo.director().ns();
    for _ in 0..10 {
        let before = Scrape::get(director, METRICS).expect("scrape");
        let listed = counters(&agent.list());
        let after = Scrape::get(director, METRICS).expect("scrape");
        if scraped(&before, &listed) == scraped(&after, &listed) {
            return (listed, after);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("the counters never stood still");
}

#[test]
fn metrics_list_zero_and_rate_agree_on_the_counters() {
    if !require_root() {
        return;
    }
    let test_start = SystemTime::now();
    let topo = DrTopology::with_servers(3, Serve::Echo).expect("cannot build the DR topology");
    let director = topo.director().ns();
    let metrics = METRICS.to_string();
    let agent = Agent::start(director, "eth0", &["--metrics", &metrics]).expect("agent");
    topo.configure(&agent);
    // A health check, so that xdplb_real_up has a sample (a family without any is not shown).
    agent.set_check(SVC, "10.0.0.11", "tcp");
    let mut fresh = FreshFlows::new(30000);
    topo.new_flows_as_simulated(&agent, "-t", &fresh.take(60), "traffic");
    std::thread::sleep(Duration::from_millis(300));

    let (listed, scrape) = quiescent(&agent, &topo);
    for (family, kind) in FAMILIES {
        assert_eq!(
            scrape.types.get(family).map(String::as_str),
            Some(kind),
            "family {family} in:\n{}",
            scrape.text
        );
    }
    assert_eq!(
        scraped(&scrape, &listed),
        listed,
        "metrics and list --stats disagree"
    );
    assert!(listed[&("xdplb_service_packets_total".to_owned(), String::new())] > 0);
    assert_eq!(
        scrape.value("xdplb_service_connections_total", &[("vip", "10.0.0.100")]),
        60.0,
        "one connection per new flow"
    );
    let service_labels = [
        ("protocol", "tcp"),
        ("vip", "10.0.0.100"),
        ("port", "80"),
        ("scheduler", "sh"),
    ];
    assert_eq!(
        scrape.value("xdplb_service_available", &service_labels),
        1.0
    );
    assert_eq!(scrape.value("xdplb_service_reals_up", &service_labels), 3.0);
    for rs in topo.reals() {
        let real = format!("{}:80", rs.addr());
        let labels = [
            ("real", real.as_str()),
            ("forward", "route"),
            ("scheduler", "sh"),
        ];
        assert_eq!(scrape.value("xdplb_real_weight", &labels), 1.0, "{real}");
    }
    // Only the checked real server has xdplb_real_up.
    let up: Vec<_> = scrape.samples("xdplb_real_up", &[]).collect();
    assert_eq!(up.len(), 1, "xdplb_real_up for unchecked real servers");
    assert_eq!(up[0].labels["real"], "10.0.0.11:80");
    let info = [("interface", "eth0"), ("mode", "native")];
    assert_eq!(scrape.value("xdplb_agent_info", &info), 1.0);
    let epoch = |t: SystemTime| t.duration_since(UNIX_EPOCH).expect("time").as_secs_f64();
    let started = scrape.value("xdplb_agent_start_time_seconds", &[]);
    assert!(
        (epoch(test_start) - 1.0..=epoch(SystemTime::now())).contains(&started),
        "start time {started}"
    );
    let not_found = director
        .run_in(|| http_get(METRICS, "/other"))
        .expect("GET /other");
    assert_eq!(not_found.status, 404);

    // Zeroed: list and metrics alike. The health check's probes answer the director through the
    // XDP interface (pass_no_service), so it goes first, with the last probe's reply let in.
    agent.set_check(SVC, "10.0.0.11", "none");
    std::thread::sleep(Duration::from_millis(500));
    agent.cli_ok(&["zero"]);
    let (listed, scrape) = quiescent(&agent, &topo);
    let nonzero: Vec<_> = listed.iter().filter(|(_, v)| **v != 0).collect();
    assert!(nonzero.is_empty(), "counters after xdplb zero: {nonzero:?}");
    assert_eq!(scraped(&scrape, &listed), listed);
    let text = agent.cli_ok(&["list", "--stats"]);
    assert!(text.contains(SVC), "{text}");

    // Rates: the traffic of 20 streams.
    let streams = StreamSet::open(topo.client().ns(), &fresh.take(20), DrTopology::service())
        .unwrap_or_else(|e| panic!("stream failed: {e:#}"));
    std::thread::sleep(Duration::from_secs(1));
    let (e0, t0) = (streams.exchanges(), Instant::now());
    let rate = agent.list_rate();
    let (e1, t1) = (streams.exchanges(), Instant::now());
    let per_second = (e1 - e0) as f64 / (t1 - t0).as_secs_f64();
    let packets = rate.service_stat(SVC, "packets") as f64;
    // Each exchange sends the director one segment, and at times a lone ACK.
    assert!(
        (0.5 * per_second..=3.0 * per_second).contains(&packets),
        "list --rate: {packets} packets/s, while the streams exchanged {per_second:.0} lines/s"
    );
    assert_eq!(rate.service_stat(SVC, "conns"), 0, "no new connections");
    for status in streams.stop() {
        assert_eq!(status.failure, None, "{status:?}");
    }
    std::thread::sleep(Duration::from_secs(1));
    let idle = agent.list_rate();
    assert_eq!(idle.service_stat(SVC, "packets"), 0, "rate without traffic");
}
