//! Where a case's time goes: `perf record` samples the benchmark's CPU (the software clock: these
//! machines have no hardware counters for `bpftool prog profile`) while the case runs, and
//! `perf report` splits the samples by symbol: the JITed programs themselves, and the kernel
//! functions they call (map lookups and updates, the LRU's eviction, hashing, helpers).

use std::{
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};

use super::{Bench, Case};

/// One symbol's share of a case's samples.
#[derive(Clone, Debug, PartialEq)]
pub struct Share {
    pub percent: f64,
    pub symbol: String,
}

/// Rounds of the case while perf samples it.
const ROUNDS: usize = 8;
const REPEAT: u32 = 200_000;
/// Symbols below this share (percent) are left out.
const PERCENT_LIMIT: f64 = 2.0;
/// The idle task: the CPU waiting between two test runs, not part of any case.
const IDLE: &str = "swapper";

/// A JITed program's symbol (`bpf_prog_<tag>_<name>`) as its program's name.
fn readable(symbol: &str) -> String {
    match symbol.strip_prefix("bpf_prog_") {
        Some(rest) => match rest.split_once('_') {
            Some((tag, name)) if tag.len() == 16 => format!("{name} (JITed BPF)"),
            _ => symbol.to_owned(),
        },
        None => symbol.to_owned(),
    }
}

/// Reads `perf report --stdio --sort comm,sym -q` (`  38.46%  xdplb-bench  [k]
/// htab_lru_map_update_elem`): the shares of the busy CPU's time (the idle task's samples left
/// out), at least [`PERCENT_LIMIT`] each.
pub fn parse_report(text: &str) -> Vec<Share> {
    let rows: Vec<(f64, String)> = text
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let percent: f64 = words.next()?.strip_suffix('%')?.parse().ok()?;
            let comm = words.next()?;
            let _space = words.next()?;
            let symbol: Vec<&str> = words.collect();
            (comm != IDLE && !symbol.is_empty()).then(|| (percent, readable(&symbol.join(" "))))
        })
        .collect();
    let busy: f64 = rows.iter().map(|(p, _)| p).sum();
    rows.into_iter()
        .map(|(p, symbol)| Share {
            percent: p / busy * 100.0,
            symbol,
        })
        .filter(|s| s.percent >= PERCENT_LIMIT)
        .collect()
}

/// Samples `cpu` while `case` runs; the symbols with at least [`PERCENT_LIMIT`] % of the samples.
pub fn profile(bench: &mut Bench, case: Case, cpu: usize, dir: &Path) -> Result<Vec<Share>> {
    let data = dir.join(format!("xdplb-perf-{}.data", std::process::id()));
    let mut perf = Command::new("perf")
        .args(["record", "-q", "-e", "cpu-clock", "-C"])
        .arg(cpu.to_string())
        .arg("-o")
        .arg(&data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start perf (the linux-perf package)")?;
    std::thread::sleep(Duration::from_millis(500));
    let measured = bench.measure(case, ROUNDS, REPEAT);
    // perf writes its file when interrupted.
    // SAFETY: a signal to the child started above.
    unsafe { libc::kill(perf.id() as i32, libc::SIGINT) };
    let status = perf.wait()?;
    measured?;
    if !data.exists() {
        bail!("perf record wrote nothing ({status})");
    }
    let report = Command::new("perf")
        .args([
            "report",
            "--stdio",
            "--no-children",
            "--sort",
            "comm,sym",
            "-q",
            "-i",
        ])
        .arg(&data)
        .output()
        .context("cannot run perf report")?;
    let _ = std::fs::remove_file(&data);
    if !report.status.success() {
        bail!(
            "perf report: {}",
            String::from_utf8_lossy(&report.stderr).trim()
        );
    }
    Ok(parse_report(&String::from_utf8_lossy(&report.stdout)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_lines_become_shares_with_programs_named() {
        let text = "\n    50.00%  swapper  [k] pv_native_safe_halt\n    \
                    30.00%  xdplb-bench  [k] bpf_prog_6deef7357e7b4530_xdplb\n    \
                    14.50%  xdplb-bench  [k] htab_lru_map_update_elem\n     \
                    5.00%  xdplb-bench  [k] __htab_map_lookup_elem\n     \
                    0.50%  xdplb-bench  [k] memcpy\n";
        let rounded: Vec<Share> = parse_report(text)
            .into_iter()
            .map(|s| Share {
                percent: (s.percent * 100.0).round() / 100.0,
                ..s
            })
            .collect();
        assert_eq!(
            rounded,
            vec![
                Share {
                    percent: 60.0,
                    symbol: "xdplb (JITed BPF)".into()
                },
                Share {
                    percent: 29.0,
                    symbol: "htab_lru_map_update_elem".into()
                },
                Share {
                    percent: 10.0,
                    symbol: "__htab_map_lookup_elem".into()
                },
            ]
        );
    }
}
