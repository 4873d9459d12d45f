//! Pacing arithmetic.
//!
//! A live-frames system call of more than one frame costs a fixed ~25 ms on these kernels (the
//! XDP dispatcher is switched to the program and back, each switch waiting for an RCU grace
//! period), so rates are kept in one of two ways:
//! - low rates (see [`super::xdp::CALL_PACED_MAX`]): one frame per call, which skips the switch;
//!   the threads draw frames from one counter ([`Work`]) and frame `k` leaves no earlier than
//!   `k / rate` seconds after the start ([`due`]), so the total rate holds however the CPUs are
//!   loaded, and a count is met exactly;
//! - higher rates: long calls, and each CPU's program keeps its own schedule
//!   ([`lb_common::PktgenState::pace`]), dropping the frames it runs ahead of time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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
    fn frames_are_due_at_k_over_rate() {
        assert_eq!(due(0, 1000), Duration::ZERO);
        assert_eq!(due(1, 1000), Duration::from_millis(1));
        assert_eq!(due(1_500_000, 1_000_000), Duration::from_millis(1500));
        assert_eq!(due(3, 7), Duration::from_nanos(428_571_428));
        assert_eq!(due(u64::MAX, 1), Duration::from_secs(u64::MAX));
        assert_eq!(due(5, 0), Duration::MAX);
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
        assert_eq!(endless.claim(1 << 20), Some((0, 1 << 20)));
    }

    use lb_common::{PktgenState, PKTGEN_MAX_LAG_NS};

    /// Frames the program lets out when run every `step_ns` for `span_ns`.
    fn let_out(state: &mut PktgenState, from: u64, span_ns: u64, step_ns: u64) -> u64 {
        (0..span_ns / step_ns)
            .filter(|i| state.pace(from + i * step_ns))
            .count() as u64
    }

    #[test]
    fn the_program_keeps_its_rate() {
        let t0 = 5_000_000_000;
        // Run every 50 ns (a fast generator) for 100 ms.
        for pps in [1_000, 7_000, 333_333, 1_000_000, 3_000_000, 7_000_000] {
            let mut s = PktgenState::default();
            s.set_rate(pps);
            assert!(s.paced());
            let sent = let_out(&mut s, t0, 100_000_000, 50);
            assert!(sent.abs_diff(pps / 10) <= 1, "{pps} pps: {sent}");
        }
        // 7 Mpps is 142.857 ns: the fraction carries, so the rate does not drift to 7.04 Mpps.
        let mut s = PktgenState::default();
        s.set_rate(7_000_000);
        assert_eq!(s.interval_ns, 142);
        let mut unpaced = PktgenState::default();
        unpaced.set_rate(0);
        assert!(!unpaced.paced() && unpaced.pace(0));
    }

    #[test]
    fn a_late_program_catches_up_at_most_the_lag() {
        let mut s = PktgenState::default();
        s.set_rate(1_000_000); // one per microsecond
        assert!(s.pace(1_000_000_000));
        assert!(!s.pace(1_000_000_500));
        // 0.5 ms late: everything due by then leaves at once (1.000001 s ..= 1.000501 s), then
        // back to one per microsecond.
        let late = 1_000_501_000;
        let burst = (0..1000).filter(|_| s.pace(late)).count();
        assert_eq!(burst, 501);
        assert!(!s.pace(late + 999) && s.pace(late + 1000));
        // 50 ms late: more than the lag, the schedule restarts (one frame, not 50000).
        let later = late + 1000 + 50_000_000;
        const { assert!(PKTGEN_MAX_LAG_NS < 50_000_000) };
        assert_eq!((0..1000).filter(|_| s.pace(later)).count(), 1);
        assert!(s.pace(later + 1000));
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
