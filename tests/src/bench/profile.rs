//! Where a case's time goes: `perf record` samples the benchmark's CPU (the software clock: these
//! machines have no hardware counters for `bpftool prog profile`) while the case runs, and
//! `perf report` splits the samples by symbol: the JITed programs themselves, and the kernel
//! functions they call (map lookups and updates, the LRU's eviction, hashing, helpers). The
//! director programs' own samples are then split by the lb-ebpf source line their instruction
//! came from (see `jit_lines`).

use std::{
    os::fd::AsFd as _,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};

use lb_common::program_names;

use super::{jit_lines::JitLines, Bench, Case};

/// One symbol's share of a case's samples.
#[derive(Clone, Debug, PartialEq)]
pub struct Share {
    pub percent: f64,
    pub symbol: String,
}

/// One source line's share of the director program's own samples.
#[derive(Clone, Debug, PartialEq)]
pub struct LineShare {
    pub percent: f64,
    /// `file:line  text`.
    pub line: String,
}

/// A case's profile: by symbol, and the director program's samples by source line.
#[derive(Clone, Debug)]
pub struct Profile {
    pub symbols: Vec<Share>,
    /// The lines with at least [`LINE_LIMIT`] % of the programs' samples, most first.
    pub lines: Vec<LineShare>,
    /// The programs' samples the lines are shares of, by program: each of [`LINE_PROGRAMS`]
    /// with its count (the lines of code several programs share, parsing or a table's lookup,
    /// do not say which one ran).
    pub by_program: Vec<(&'static str, usize)>,
}

impl Profile {
    /// The programs' samples the lines are shares of.
    pub fn program_samples(&self) -> usize {
        self.by_program.iter().map(|(_, n)| n).sum()
    }
}

/// Source lines below this share (percent of the program's samples) are left out.
pub const LINE_LIMIT: f64 = 1.5;

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

/// Shares of the programs' samples (`ips`, instruction pointers) by the source line each falls
/// in, and the samples of each of `programs` programs; `lines` gives a sample's program (its
/// index) and line, None for samples outside them.
pub fn line_shares(
    lines: impl Fn(u64) -> Option<(usize, String)>,
    programs: usize,
    ips: &[u64],
) -> (Vec<LineShare>, Vec<usize>) {
    let mut counts = std::collections::HashMap::<String, usize>::new();
    let mut by_program = vec![0; programs];
    let mut total = 0;
    for ip in ips {
        if let Some((program, line)) = lines(*ip) {
            *counts.entry(line).or_default() += 1;
            by_program[program] += 1;
            total += 1;
        }
    }
    let mut shares: Vec<LineShare> = counts
        .into_iter()
        .map(|(line, n)| LineShare {
            percent: n as f64 * 100.0 / total as f64,
            line,
        })
        .filter(|s| s.percent >= LINE_LIMIT)
        .collect();
    shares.sort_by(|a, b| b.percent.total_cmp(&a.percent).then(a.line.cmp(&b.line)));
    (shares, by_program)
}

/// The sampled instruction pointers of `perf script -F ip` output.
fn sample_ips(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| u64::from_str_radix(l.split_whitespace().next()?, 16).ok())
        .collect()
}

/// The programs whose samples a case's lines split: the director's and those it tail-calls (the
/// IPv6 pipeline, the NAT programs, the 4in6 encapsulation, the options' checker), each case's
/// packets running through one or more of them.
pub const LINE_PROGRAMS: [&str; 7] = [
    program_names::LB,
    program_names::IPV6,
    program_names::NAT_REPLY,
    program_names::NAT6,
    program_names::NAT6_REPLY,
    program_names::TUN_4IN6,
    program_names::IP_OPTIONS,
];

/// Samples `cpu` while `case` runs; the symbols with at least [`PERCENT_LIMIT`] % of the samples,
/// and the samples of [`LINE_PROGRAMS`] by source line.
pub fn profile(bench: &mut Bench, case: Case, cpu: usize, dir: &Path) -> Result<Profile> {
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
    let measured = bench.measure_alone(case, ROUNDS, REPEAT);
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
    let script = Command::new("perf")
        .args(["script", "-F", "ip", "-i"])
        .arg(&data)
        .output()
        .context("cannot run perf script");
    let _ = std::fs::remove_file(&data);
    if !report.status.success() {
        bail!(
            "perf report: {}",
            String::from_utf8_lossy(&report.stderr).trim()
        );
    }
    let script = script?;
    if !script.status.success() {
        bail!(
            "perf script: {}",
            String::from_utf8_lossy(&script.stderr).trim()
        );
    }
    let mut jits = Vec::new();
    for name in LINE_PROGRAMS {
        let program = bench.fx.datapath.program(name)?;
        jits.push(JitLines::of(program.fd()?.as_fd())?);
    }
    let ips = sample_ips(&String::from_utf8_lossy(&script.stdout));
    let line = |ip| {
        jits.iter()
            .enumerate()
            .find_map(|(i, j)| Some((i, j.line(ip)?.to_owned())))
    };
    let (lines, by_program) = line_shares(line, jits.len(), &ips);
    Ok(Profile {
        symbols: parse_report(&String::from_utf8_lossy(&report.stdout)),
        lines,
        by_program: LINE_PROGRAMS.into_iter().zip(by_program).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_split_by_line_of_the_program_only() {
        let ips = sample_ips(
            "ffffffffc0001010\nffffffffc0001020\n  ffffffffc0001028\nffffffff81000000\n",
        );
        assert_eq!(ips.len(), 4);
        let line = |ip: u64| match ip {
            0xffffffffc0001000..0xffffffffc0001020 => Some((0, "a.rs:1  x".to_owned())),
            0xffffffffc0001020..0xffffffffc0002000 => Some((1, "b.rs:2  y".to_owned())),
            _ => None,
        };
        let (shares, by_program) = line_shares(line, 2, &ips);
        assert_eq!(by_program, [1, 2], "the kernel's sample is no program's");
        let got: Vec<(String, i64)> = shares
            .iter()
            .map(|s| (s.line.clone(), (s.percent * 10.0).round() as i64))
            .collect();
        assert_eq!(
            got,
            vec![("b.rs:2  y".to_owned(), 667), ("a.rs:1  x".to_owned(), 333)]
        );
    }

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
