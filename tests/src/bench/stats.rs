//! How a figure is taken from timed runs: a round's time as the median of shorter test runs,
//! how far a set of times moved, and a case measured again while its baseline moved.

use anyhow::Result;

/// Test runs a timed run is split into: its time is their median, so that a disturbance of the
/// machine shorter than a few of them (an interrupt, the host taking the CPU away for a while)
/// lands in one and not in the figure.
pub const SUB_RUNS: u32 = 10;

/// How `repeat` iterations are run: (test runs, iterations in each); at least one of each.
pub fn sub_runs(repeat: u32) -> (u32, u32) {
    let runs = SUB_RUNS.min(repeat).max(1);
    (runs, (repeat / runs).max(1))
}

/// The median of `runs` timed runs.
pub(super) fn median_of(runs: u32, mut run: impl FnMut() -> Result<f64>) -> Result<f64> {
    let times = (0..runs).map(|_| run()).collect::<Result<Vec<_>>>()?;
    Ok(median(&times))
}

/// How far a baseline may move within a case's rounds, or between the cases measured against
/// the same one, before the run is flagged: (max - min) / median.
pub const DRIFT_LIMIT: f64 = 0.10;

/// Times a case is measured at most: again while its baseline moved more than [`DRIFT_LIMIT`]
/// within its rounds (the machine changed state while it ran).
pub const ATTEMPTS: usize = 3;

/// (median, min, max).
pub fn stats(v: &[f64]) -> (f64, f64, f64) {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (median(v), min, max)
}

/// How far a set of times moved: (max - min) / median.
pub fn moved(v: &[f64]) -> f64 {
    let (m, lo, hi) = stats(v);
    (hi - lo) / m
}

/// Runs `measure` until the baseline `base` gives of its result moved no more than
/// [`DRIFT_LIMIT`], at most [`ATTEMPTS`] times: the attempt whose baseline moved least, and how
/// many were made. Which attempt is kept depends on the baseline alone, never on the case's
/// own times.
pub fn steadiest<T>(
    mut measure: impl FnMut() -> Result<T>,
    base: impl Fn(&T) -> &[f64],
) -> Result<(T, usize)> {
    let mut best = measure()?;
    let mut attempts = 1;
    while moved(base(&best)) > DRIFT_LIMIT && attempts < ATTEMPTS {
        let next = measure()?;
        attempts += 1;
        if moved(base(&next)) < moved(base(&best)) {
            best = next;
        }
    }
    Ok((best, attempts))
}

/// The median of `v`.
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// The `p` quantile of `v` (nearest rank).
pub fn percentile(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let i = ((s.len() as f64 - 1.0) * p).round() as usize;
    s[i.min(s.len() - 1)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::bail;

    #[test]
    fn a_round_is_split_into_test_runs_of_its_iterations() {
        assert_eq!(sub_runs(200_000), (SUB_RUNS, 200_000 / SUB_RUNS));
        // Fewer iterations than test runs: one iteration each; never zero of either.
        assert_eq!(sub_runs(3), (3, 1));
        assert_eq!(sub_runs(0), (1, 1));
    }

    #[test]
    fn a_disturbed_test_run_does_not_move_the_round() {
        // The host took the CPU away during the third of five test runs.
        let mut times = [20.0, 21.0, 90.0, 20.0, 21.0].into_iter();
        assert_eq!(median_of(5, || Ok(times.next().unwrap())).unwrap(), 21.0);
        assert!(times.next().is_none(), "every test run made");
    }

    /// `steadiest` over attempts whose baselines are given, each attempt's case figure its
    /// index: (the kept attempt, attempts made).
    fn kept(bases: &[&[f64]]) -> (usize, usize) {
        let mut next = 0;
        let ((index, _), attempts) = steadiest(
            || {
                next += 1;
                Ok((next - 1, bases[next - 1].to_vec()))
            },
            |(_, base): &(usize, Vec<f64>)| base,
        )
        .unwrap();
        (index, attempts)
    }

    #[test]
    fn a_case_is_measured_again_while_its_baseline_moved() {
        // Steady at once (moved 5 % <= 10 %): measured once.
        assert_eq!(kept(&[&[20.0, 21.0, 20.0]]), (0, 1));
        // Moved 50 %, then 5 %: the second kept.
        assert_eq!(kept(&[&[20.0, 30.0, 20.0], &[20.0, 21.0, 20.0]]), (1, 2));
        // Never steady: ATTEMPTS made, the one that moved least kept (20 % over 50 and 30).
        let three: [&[f64]; 3] = [
            &[20.0, 30.0, 20.0],
            &[20.0, 24.0, 20.0],
            &[20.0, 26.0, 20.0],
        ];
        assert_eq!(kept(&three), (1, ATTEMPTS));
    }

    #[test]
    fn an_attempt_that_fails_fails_the_measurement() {
        let mut n = 0;
        let r = steadiest(
            || {
                n += 1;
                match n {
                    1 => Ok(vec![20.0, 40.0]),
                    _ => bail!("the program returned XDP_DROP"),
                }
            },
            |v: &Vec<f64>| v,
        );
        assert!(r.unwrap_err().to_string().contains("XDP_DROP"));
    }
}
