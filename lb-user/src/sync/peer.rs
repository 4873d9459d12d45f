//! A peer director as sync keeps it: whether it is heard, what it sent, and how late.

use std::{
    net::SocketAddr,
    time::{Duration, Instant, SystemTime},
};

use serde::{Deserialize, Serialize};

use super::wire::ReplayWindow;

/// A peer not heard from for this long is down (three hellos missed).
pub const PEER_TIMEOUT: Duration = Duration::from_secs(3);

pub struct Peer {
    pub addr: SocketAddr,
    pub window: ReplayWindow,
    pub last_contact: Option<(Instant, SystemTime)>,
    /// Up since its last return (or the start): set when it was heard after being down.
    pub up: bool,
    /// From its last hello.
    pub digest: Option<[u8; 32]>,
    pub current: bool,
    pub flows_sent: u64,
    pub datagrams_sent: u64,
    /// UDP payload bytes of the datagrams sent (flow updates and hellos).
    pub bytes_sent: u64,
    /// Datagrams the socket would not take (buffer full, no route): those flows never left.
    pub datagrams_unsent: u64,
    pub flows_received: u64,
    /// Flows for a service or real server this director does not have.
    pub flows_unknown: u64,
    pub tables_received: u64,
    pub tables_sent: u64,
    /// Sync delay of the flows received from it: bound on the peer -> in this table.
    pub delay: Histogram,
}

impl Peer {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            window: ReplayWindow::default(),
            last_contact: None,
            up: false,
            digest: None,
            current: false,
            flows_sent: 0,
            datagrams_sent: 0,
            bytes_sent: 0,
            datagrams_unsent: 0,
            flows_received: 0,
            flows_unknown: 0,
            tables_received: 0,
            tables_sent: 0,
            delay: Histogram::default(),
        }
    }

    /// Whether it was heard within [`PEER_TIMEOUT`].
    pub fn alive(&self, now: Instant) -> bool {
        self.last_contact
            .is_some_and(|(at, _)| now.duration_since(at) < PEER_TIMEOUT)
    }

    pub fn zero(&mut self) {
        self.flows_sent = 0;
        self.datagrams_sent = 0;
        self.bytes_sent = 0;
        self.datagrams_unsent = 0;
        self.flows_received = 0;
        self.flows_unknown = 0;
        self.tables_received = 0;
        self.tables_sent = 0;
        self.delay = Histogram::default();
    }
}

/// Delays in buckets an eighth of a power of two wide (12% resolution), from 1 µs to over an hour.
#[derive(Clone, Debug)]
pub struct Histogram {
    buckets: Vec<u64>,
    count: u64,
}

const SUB: u32 = 8;
const BUCKETS: usize = 36 * SUB as usize;

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: vec![0; BUCKETS],
            count: 0,
        }
    }
}

impl Histogram {
    fn bucket(us: u64) -> usize {
        let us = us.max(1);
        let log = 63 - us.leading_zeros();
        // The SUB steps within [2^log, 2^(log+1)).
        let frac = if log >= 3 {
            ((us >> (log - 3)) & 7) as u32
        } else {
            ((us << (3 - log)) & 7) as u32
        };
        ((log * SUB + frac) as usize).min(BUCKETS - 1)
    }

    /// The smallest delay of a bucket, µs.
    fn lower(bucket: usize) -> u64 {
        let (log, frac) = (bucket as u32 / SUB, bucket as u64 % SUB as u64);
        ((8 + frac) << log) >> 3
    }

    pub fn record(&mut self, us: u64) {
        self.buckets[Self::bucket(us)] += 1;
        self.count += 1;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The delay below which a fraction `q` of the recorded ones lie, µs (upper end of its
    /// bucket); None with nothing recorded.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(Self::lower(i + 1).max(1));
            }
        }
        None
    }
}

/// A peer as `xdplb list --sync` and the metrics show it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerView {
    pub address: String,
    /// "up" (heard within 3 s) or "down".
    pub state: String,
    /// Seconds since it was last heard; absent if never.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub last_contact_secs: Option<f64>,
    /// Whether its services and real servers are the same as ours (unknown until it said hello).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub config_match: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub config_digest: Option<String>,
    /// Whether its own table is current, as it says.
    pub current: bool,
    pub flows_sent: u64,
    pub datagrams_sent: u64,
    pub bytes_sent: u64,
    pub datagrams_unsent: u64,
    pub flows_received: u64,
    pub flows_unknown: u64,
    pub tables_received: u64,
    pub tables_sent: u64,
    /// Sync delay of flows received from it (bound there -> in our table): median and 99th
    /// percentile, µs.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub delay_p50_us: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub delay_p99_us: Option<u64>,
}

impl Peer {
    pub fn view(&self, now: Instant, ours: &[u8; 32]) -> PeerView {
        PeerView {
            address: self.addr.to_string(),
            state: if self.alive(now) { "up" } else { "down" }.into(),
            last_contact_secs: self
                .last_contact
                .map(|(at, _)| now.duration_since(at).as_secs_f64()),
            config_match: self.digest.map(|d| d == *ours),
            config_digest: self.digest.as_ref().map(super::directory::short),
            current: self.current,
            flows_sent: self.flows_sent,
            datagrams_sent: self.datagrams_sent,
            bytes_sent: self.bytes_sent,
            datagrams_unsent: self.datagrams_unsent,
            flows_received: self.flows_received,
            flows_unknown: self.flows_unknown,
            tables_received: self.tables_received,
            tables_sent: self.tables_sent,
            delay_p50_us: self.delay.quantile(0.5),
            delay_p99_us: self.delay.quantile(0.99),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Histogram;

    #[test]
    fn quantiles_are_within_an_eighth() {
        let mut h = Histogram::default();
        for us in 1..=10_000 {
            h.record(us);
        }
        for (q, exact) in [(0.5, 5000.0), (0.99, 9900.0)] {
            let got = h.quantile(q).unwrap() as f64;
            assert!(
                got >= exact && got <= exact * 1.13,
                "q{q}: {got} for {exact}"
            );
        }
        assert_eq!(Histogram::default().quantile(0.5), None);
        let mut one = Histogram::default();
        one.record(0);
        assert!(one.quantile(0.99).unwrap() <= 2);
    }
}
