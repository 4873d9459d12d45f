//! `cargo xtask bench`: runs every benchmark and writes docs/BENCHMARKS.md (and its chart) with
//! the machine it ran on. Benchmarks are measured here, never by timed tests.

use std::{
    ffi::OsString,
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Result;

use crate::toolchain::output;

/// CPU model, CPUs, kernel, compiler, date: absolute times mean nothing without them.
fn machine() -> Result<String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown".into());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = output(Command::new("uname").arg("-r"))?;
    let rustc = output(Command::new("rustc").arg("--version"))?;
    let date = output(Command::new("date").args(["-u", "+%Y-%m-%d"]))?;
    let mut s = String::new();
    let _ = writeln!(s, "- CPU: {model}, {cpus} CPUs");
    let _ = writeln!(s, "- Kernel: {}", kernel.trim());
    let _ = writeln!(s, "- Compiler: {}", rustc.trim());
    let _ = writeln!(s, "- Date: {}", date.trim());
    Ok(s)
}

/// The benchmark, the test servers it starts, and the agent, all optimised.
fn build(cargo: &impl Fn(&[&str]) -> Command) -> Result<()> {
    for package in ["lb-tests", "lb-user"] {
        crate::toolchain::run(&mut cargo(&["build", "--release", "-p", package, "--bins"]))?;
    }
    Ok(())
}

/// `cargo xtask bench --compare A B`: two builds' datapath objects timed side by side; prints
/// the table, writes nothing.
pub fn compare(
    root: &Path,
    cargo: impl Fn(&[&str]) -> Command,
    objects: &[PathBuf],
    only: &str,
) -> Result<()> {
    build(&cargo)?;
    crate::toolchain::run(
        Command::new(root.join("target/release/xdplb-bench"))
            .arg(root.join("docs"))
            .arg("--compare")
            .args(objects)
            .arg(only),
    )
}

pub fn run(root: &Path, cargo: impl Fn(&[&str]) -> Command, path: &OsString) -> Result<()> {
    build(&cargo)?;
    let docs = root.join("docs");
    std::fs::create_dir_all(&docs)?;
    eprintln!("xtask: datapath cost per packet (needs root)");
    let mut bench = Command::new(root.join("target/release/xdplb-bench"));
    bench
        .arg(&docs)
        .env("PATH", path)
        .env("XDPLB_BIN", root.join("target/release/xdplb"));
    // Katran, timed the same way right before and after our cases, where the peer benchmark
    // sits next to this checkout (it builds Katran from KATRAN_GIT the first time).
    let peer = root.join("../shared/peer-bench");
    let given = std::env::var_os("XDPLB_PEER_BENCH").is_some();
    let beside = peer.join("run.sh").is_file();
    if given || beside {
        crate::packages::ensure_peer_bench()?;
    }
    if !given && beside {
        bench.env("XDPLB_PEER_BENCH", peer);
    }
    let datapath = output(&mut bench)?;
    eprintln!("xtask: Maglev table figures");
    let maglev = output(&mut cargo(&[
        "run",
        "--quiet",
        "--release",
        "-p",
        "lb-common",
        "--features",
        "alloc",
        "--example",
        "maglev_figures",
    ]))?;
    let mut doc = String::new();
    doc.push_str(
        "# Benchmarks\n\n\
         Written by `cargo xtask bench` (as root); every figure below comes from that command and is \
         replaced whole when it runs again. Tests assert behaviour and bounds, never durations, so a \
         loaded CI machine cannot fail them; CI runs a seconds-long smoke of each case \
         (`tests/tests/bench_smoke.rs`) only to keep the benchmarks working.\n\n\
         Absolute times drift on shared machines: compare each case with the baseline measured next \
         to it in the same run.\n\n## Machine\n\n",
    );
    doc.push_str(&machine()?);
    doc.push('\n');
    doc.push_str(&datapath);
    doc.push_str(
        "## Maglev lookup table (`mh`)\n\n\
         `cargo run --release -p lb-common --features alloc --example maglev_figures` (one thread). \
         The bounds the Maglev issue asks for are asserted, without timing, by \
         `lb-common/tests/maglev.rs`: max/mean <= 1.01 for N in {3, 10, 100}; weights 1:2:3:4 within \
         0.5 percentage points; removing one of N servers changes at most 1.5/N of the slots for N in \
         {10, 100}, and adding it back restores the table bit for bit; any input order gives the same \
         table. N = 1000 is reported only: with 65.5 slots per server it is below the 100 slots per \
         server `mh` requires.\n\n",
    );
    doc.push_str(&maglev);

    std::fs::write(docs.join("BENCHMARKS.md"), doc)?;
    eprintln!("xtask: wrote docs/BENCHMARKS.md");
    Ok(())
}
