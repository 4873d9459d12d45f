//! Rates and the recent history the page charts: the listing sampled every
//! [`SAMPLE_INTERVAL`], each sample's counters turned into per-second rates against the one
//! before ([`Listing::per_second`], as `xdplb list --rate`), the last [`HISTORY`] kept per
//! service.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::Mutex,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde::Serialize;

use crate::control::{Listing, ServiceView, StatsView};

pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(2);
/// Samples kept per service: five minutes.
pub const HISTORY: usize = 150;
/// How long sampling goes on after the rates were last asked for (the page, the API, `top`):
/// a sample lists every service and real server under the agent's lock, which a director of
/// thousands of services should not pay every two seconds when nobody looks.
pub const WATCHED_FOR: Duration = Duration::from_secs(600);

/// One point of a service's chart: its rates over the interval that ended at `time`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Point {
    /// Seconds since the Unix epoch.
    pub time: f64,
    pub conns: u64,
    pub packets: u64,
    pub bytes: u64,
}

/// A service's chart: its identity as the listing names it, and its points, oldest first.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct History {
    pub protocol: crate::state::Protocol,
    pub address: String,
    pub points: Vec<Point>,
}

#[derive(Default)]
pub struct Rates {
    inner: Mutex<Inner>,
    /// When the rates were last asked for.
    asked: Mutex<Option<Instant>>,
}

#[derive(Default)]
struct Inner {
    /// The last sample, and when it was taken.
    last: Option<(Instant, Listing)>,
    /// The listing's counters as rates over the last interval.
    current: Option<Listing>,
    history: BTreeMap<String, VecDeque<Point>>,
}

/// A service's key: `tcp 10.0.0.100:80`.
fn key(s: &ServiceView) -> String {
    format!("{} {}", s.protocol.name(), s.address)
}

impl Rates {
    /// Whether someone asked for the rates within [`WATCHED_FOR`].
    pub fn watched(&self, now: Instant) -> bool {
        let asked = *self.asked.lock().unwrap_or_else(|e| e.into_inner());
        asked.is_some_and(|t| now.duration_since(t) < WATCHED_FOR)
    }

    fn ask(&self) {
        *self.asked.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }

    /// Takes a sample: the rates since the one before, a point for each service's chart.
    /// Services no longer listed lose their history.
    pub fn record(&self, listing: &Listing, now: Instant) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        // A sample from before a pause in watching gives no rate: this one starts afresh.
        let stale = |then: &Instant| now.duration_since(*then) > 3 * SAMPLE_INTERVAL;
        if inner.last.as_ref().is_some_and(|(then, _)| stale(then)) {
            inner.last = None;
            inner.current = None;
        }
        let live: std::collections::HashSet<String> = listing.services.iter().map(key).collect();
        inner.history.retain(|k, _| live.contains(k));
        if let Some((then, earlier)) = &inner.last {
            let secs = now.duration_since(*then).as_secs_f64();
            if secs > 0.0 {
                let rates = listing.clone().per_second(earlier, secs);
                let time = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64());
                let mut history = std::mem::take(&mut inner.history);
                for s in &rates.services {
                    let r = s.stats.unwrap_or_default();
                    let points = history.entry(key(s)).or_default();
                    if points.len() == HISTORY {
                        points.pop_front();
                    }
                    points.push_back(Point {
                        time,
                        conns: r.conns,
                        packets: r.packets,
                        bytes: r.bytes,
                    });
                }
                inner.history = history;
                inner.current = Some(rates);
            }
        }
        inner.last = Some((now, listing.clone()));
    }

    /// Fills in the rates of the services and real servers of `listing` from the last sample
    /// (those it did not see yet have none).
    pub fn annotate(&self, listing: &mut Listing) {
        self.ask();
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let Some(current) = &inner.current else {
            return;
        };
        let index = current.service_index();
        for s in &mut listing.services {
            let Some(then) = index.get(&(s.protocol, s.address.as_str())) else {
                continue;
            };
            s.rates = then.stats;
            for r in &mut s.reals {
                r.rates = then
                    .reals
                    .iter()
                    .find(|c| c.address == r.address)
                    .and_then(|c| c.stats);
            }
        }
        listing.reason_rates = current.reasons.clone();
    }

    /// Every service's chart.
    pub fn history(&self) -> Vec<History> {
        self.ask();
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let Some(current) = &inner.current else {
            return Vec::new();
        };
        current
            .services
            .iter()
            .map(|s| History {
                protocol: s.protocol,
                address: s.address.clone(),
                points: inner
                    .history
                    .get(&key(s))
                    .map(|p| p.iter().copied().collect())
                    .unwrap_or_default(),
            })
            .collect()
    }
}

/// The rates of a whole listing: every service's summed (what the page's header shows).
pub fn total(listing: &Listing) -> StatsView {
    StatsView::sum(listing.services.iter().filter_map(|s| s.rates))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        control::RealView,
        state::{Forward, Protocol, Scheduler},
    };

    fn listing(conns: u64, packets: u64, real_conns: [u64; 2]) -> Listing {
        let stats = |conns, packets| {
            Some(StatsView {
                conns,
                packets,
                bytes: packets * 100,
                ..StatsView::default()
            })
        };
        let real = |n: u8, conns| RealView {
            address: format!("10.0.0.{n}:80"),
            forward: Forward::Route,
            weight: 1,
            stats: stats(conns, conns),
            ..RealView::default()
        };
        let mut l: Listing = serde_json::from_value(serde_json::json!({
            "interface": "eth0", "mode": "native", "services": []
        }))
        .unwrap();
        l.services.push(ServiceView {
            protocol: Protocol::Tcp,
            address: "10.0.0.100:80".into(),
            scheduler: Scheduler::Mh,
            mh_size: None,
            hash: None,
            persistent: None,
            netmask: None,
            stats: stats(conns, packets),
            rates: None,
            reals: vec![real(11, real_conns[0]), real(12, real_conns[1])],
        });
        l.reasons.insert("pass_no_service".into(), packets * 2);
        l
    }

    #[test]
    fn rates_come_from_two_samples_and_history_keeps_the_last_five_minutes() {
        let rates = Rates::default();
        let t0 = Instant::now();
        let mut view = listing(0, 0, [0, 0]);
        rates.record(&listing(0, 0, [0, 0]), t0);
        rates.annotate(&mut view);
        assert_eq!(view.services[0].rates, None, "one sample gives no rate");
        assert!(rates.history().is_empty());

        rates.record(&listing(20, 400, [15, 5]), t0 + Duration::from_secs(2));
        let mut view = listing(20, 400, [15, 5]);
        rates.annotate(&mut view);
        let s = &view.services[0];
        assert_eq!(
            s.rates.map(|r| (r.conns, r.packets, r.bytes)),
            Some((10, 200, 20_000))
        );
        assert_eq!(s.reals[0].rates.map(|r| r.conns), Some(8));
        assert_eq!(s.reals[1].rates.map(|r| r.conns), Some(3));
        assert_eq!(view.reason_rates.get("pass_no_service"), Some(&400));
        assert_eq!(total(&view).packets, 200);

        for i in 2..200u64 {
            rates.record(
                &listing(20 + i, 400, [15, 5]),
                t0 + Duration::from_secs(2 * i),
            );
        }
        let history = rates.history();
        assert_eq!(history.len(), 1);
        assert_eq!(history[0].address, "10.0.0.100:80");
        assert_eq!(history[0].points.len(), HISTORY);
        assert!(history[0]
            .points
            .iter()
            .all(|p| p.packets == 0 && p.conns == 1));

        // Asked for: watched for a while, then no longer.
        assert!(rates.watched(Instant::now()));
        assert!(!rates.watched(Instant::now() + WATCHED_FOR + Duration::from_secs(1)));
        assert!(
            !Rates::default().watched(Instant::now()),
            "nobody asked yet"
        );

        // A sample long after the one before (watching paused) gives no rate.
        rates.record(&listing(400, 400, [15, 5]), t0 + Duration::from_secs(460));
        let mut view = listing(400, 400, [15, 5]);
        rates.annotate(&mut view);
        assert_eq!(view.services[0].rates, None);

        // A service gone takes its chart with it.
        let mut empty = listing(0, 0, [0, 0]);
        empty.services.clear();
        rates.record(&empty, t0 + Duration::from_secs(500));
        assert!(rates.history().is_empty());
    }
}
