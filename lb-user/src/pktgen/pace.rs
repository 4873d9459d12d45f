//! Pacing: how many frames one live-frames system call sends, when it may start, and how the
//! threads share the work.
//!
//! The threads draw chunks of frames from one counter: the frame numbered `k` (over all threads)
//! may leave no earlier than `k / rate` seconds after the start, so the total rate holds however
//! the CPUs are loaded, and a count is met exactly.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Frames per system call at full speed: enough that the call's fixed cost (setting up the
/// page pool) vanishes, few enough that a stop or the end of a duration is noticed within a few
/// milliseconds.
pub const MAX_CHUNK: u32 = 1 << 15;

/// Frames per system call: about a millisecond of traffic at `rate` packets per second (at least
/// one frame), or [`MAX_CHUNK`] at full speed.
pub fn chunk(rate: Option<u64>) -> u32 {
    if let Ok(v) = std::env::var("XDPLB_HACK_CHUNK") {
        return v.parse().unwrap();
    }
    match rate {
        None => MAX_CHUNK,
        Some(r) => (r / 1000).clamp(1, MAX_CHUNK as u64) as u32,
    }
}

/// When frame number `k` is due, counted from the start, at `rate` packets per second.
pub fn due(k: u64, rate: u64) -> Duration {
    if rate == 0 {
        return Duration::MAX;
    }
    let nanos = (k % rate) as u128 * 1_000_000_000 / rate as u128;
    Duration::new(k / rate, nanos as u32)
}

/// Packets per second and bits per second (frame bytes, FCS excluded) of `packets` frames of
/// `size` bytes sent in `elapsed`.
pub fn rates(packets: u64, size: usize, elapsed: Duration) -> (f64, f64) {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return (0.0, 0.0);
    }
    let pps = packets as f64 / secs;
    (pps, pps * size as f64 * 8.0)
}

/// The frames still to send, shared by the threads.
#[derive(Debug)]
pub struct Work {
    claimed: AtomicU64,
    limit: u64,
}

impl Work {
    /// `limit` frames in all (`u64::MAX`: until stopped).
    pub fn new(limit: u64) -> Self {
        Self {
            claimed: AtomicU64::new(0),
            limit,
        }
    }

    /// The next chunk: its first frame's number and its length (at most `chunk`), or None
    /// when every frame has been handed out.
    pub fn claim(&self, chunk: u32) -> Option<(u64, u32)> {
        let first = self.claimed.fetch_add(chunk as u64, Ordering::Relaxed);
        if first >= self.limit {
            return None;
        }
        Some((first, (self.limit - first).min(chunk as u64) as u32))
    }
}

/// A rate as people read it: `4.76 M`, `812 k`, `95`.
pub fn human(v: f64) -> String {
    match v {
        v if v >= 1e9 => format!("{:.2} G", v / 1e9),
        v if v >= 1e6 => format!("{:.2} M", v / 1e6),
        v if v >= 1e3 => format!("{:.1} k", v / 1e3),
        v => format!("{v:.0} "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_a_millisecond_of_traffic() {
        assert_eq!(chunk(None), MAX_CHUNK);
        assert_eq!(chunk(Some(1_000_000)), 1000);
        assert_eq!(chunk(Some(500)), 1);
        assert_eq!(chunk(Some(0)), 1);
        assert_eq!(chunk(Some(u64::MAX)), MAX_CHUNK);
    }

    #[test]
    fn frames_are_due_at_k_over_rate() {
        assert_eq!(due(0, 1000), Duration::ZERO);
        assert_eq!(due(1, 1000), Duration::from_millis(1));
        assert_eq!(due(1_500_000, 1_000_000), Duration::from_millis(1500));
        assert_eq!(due(3, 7), Duration::from_nanos(428_571_428));
        assert_eq!(due(u64::MAX, 1), Duration::from_secs(u64::MAX));
        assert_eq!(due(5, 0), Duration::MAX);
        // Chunks sent when due keep the rate: 10 chunks of 1 ms at 1 Mpps end at 10 ms.
        let c = chunk(Some(1_000_000)) as u64;
        assert_eq!(due(10 * c, 1_000_000), Duration::from_millis(10));
    }

    #[test]
    fn work_is_handed_out_exactly() {
        let w = Work::new(10);
        assert_eq!(w.claim(4), Some((0, 4)));
        assert_eq!(w.claim(4), Some((4, 4)));
        assert_eq!(w.claim(4), Some((8, 2)));
        assert_eq!(w.claim(4), None);
        assert_eq!(w.claim(4), None);
        let endless = Work::new(u64::MAX);
        assert_eq!(endless.claim(MAX_CHUNK), Some((0, MAX_CHUNK)));
    }

    #[test]
    fn rates_and_their_display() {
        let (pps, bps) = rates(1_000_000, 60, Duration::from_millis(500));
        assert_eq!((pps, bps), (2e6, 960e6));
        assert_eq!(rates(5, 60, Duration::ZERO), (0.0, 0.0));
        assert_eq!(human(4_760_000.0), "4.76 M");
        assert_eq!(human(812_300.0), "812.3 k");
        assert_eq!(human(95.0), "95 ");
        assert_eq!(human(2.5e9), "2.50 G");
    }
}
