//! `cargo xtask`: the project's build, test and demo entry points. It installs what the eBPF build
//! needs first (see toolchain.rs), so a fresh machine needs nothing by hand.

mod bench;
mod deb;
mod packages;
mod reliability;
mod toolchain;

use std::{
    env,
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};

use crate::toolchain::run;

#[derive(Parser)]
#[command(about = "Build, test and demo xdplb")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the eBPF toolchain if missing and build everything.
    Build,
    /// Install the daemons the tests start (keepalived, BIRD) if missing, build, then run every
    /// test (unit, datapath, end to end; needs root), then fmt and clippy.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Lint only: rustfmt check and clippy with warnings denied.
    Lint,
    /// Build, then run the demo: a namespace topology with a client, the director and real servers.
    Demo,
    /// Run the benchmarks (as root) and write docs/BENCHMARKS.md.
    Bench {
        /// Instead, time two builds of the datapath side by side, round by round, and print the
        /// difference per case (the objects: target/*/build/lb-user-*/out/lb of each build).
        #[arg(long, num_args = 2, value_names = ["OBJECT_A", "OBJECT_B"])]
        compare: Option<Vec<PathBuf>>,
        /// With --compare: only the cases whose names contain this (e.g. "established").
        #[arg(long, requires = "compare")]
        only: Option<String>,
    },
    /// Install nginx and wrk if missing, build, then run the chaos soak under HTTP load (as root)
    /// and print its figures (CI runs it for 60 seconds).
    Soak {
        /// How long it runs, in minutes.
        #[arg(long, default_value_t = 10)]
        minutes: u64,
    },
    /// Build, then fuzz the datapath through BPF_PROG_TEST_RUN (as root) and print the
    /// verdicts (CI fuzzes 100,000 frames).
    Fuzz {
        /// How many frames.
        #[arg(long, default_value_t = 10_000_000)]
        frames: u64,
        /// The mutations' seed.
        #[arg(long, default_value_t = 15)]
        seed: u64,
    },
    /// Build a Debian package (binary, manual page, completions, systemd unit, example config).
    Deb {
        /// Package this xdplb binary instead of building a release one.
        #[arg(long, value_name = "PATH")]
        bin: Option<PathBuf>,
        /// Where the package goes.
        #[arg(long, value_name = "DIR", default_value = "target/debian")]
        out: PathBuf,
    },
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn cargo(path: &OsString, args: &[&str]) -> Command {
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.args(args).current_dir(root()).env("PATH", path);
    // A CI run builds once from a fresh clone: incremental caches (about 1 GB) would only cost disk.
    if env::var_os("CI").is_some() && env::var_os("CARGO_INCREMENTAL").is_none() {
        cmd.env("CARGO_INCREMENTAL", "0");
    }
    cmd
}

fn build(path: &OsString) -> Result<()> {
    run(&mut cargo(path, &["build", "--workspace", "--bins"]))
}

fn lint(path: &OsString) -> Result<()> {
    run(&mut cargo(path, &["fmt", "--all", "--check"]))?;
    run(&mut cargo(
        path,
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    ))
}

/// Runs `cargo test`, echoing its output, and sums its "test result:" lines:
/// (passed, failed, ignored).
fn run_tests(cmd: &mut Command) -> Result<(u64, u64, u64)> {
    use std::io::{BufRead as _, BufReader};
    let mut child = cmd.stdout(std::process::Stdio::piped()).spawn()?;
    let mut totals = (0, 0, 0);
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let count = |what: &str| -> u64 {
                rest.split(';')
                    .find_map(|part| part.trim().strip_suffix(what))
                    .and_then(|n| n.trim().rsplit(' ').next()?.parse().ok())
                    .unwrap_or(0)
            };
            totals.0 += count(" passed");
            totals.1 += count(" failed");
            totals.2 += count(" ignored");
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!(
            "cargo test failed ({status}): {} passed, {} failed",
            totals.0,
            totals.1
        );
    }
    Ok(totals)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc_geteuid() == 0 }
}

fn require_root(what: &str) -> Result<()> {
    if !is_root() {
        bail!("{what} needs root (network namespaces, XDP): run it as root");
    }
    Ok(())
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let path = toolchain::ensure()?;
    let bin = root().join("target/debug");
    match cli.command {
        Task::Build => build(&path),
        Task::Lint => lint(&path),
        Task::Test { args } => {
            packages::ensure()?;
            build(&path)?;
            let mut cmd = cargo(&path, &["test", "--workspace"]);
            cmd.args(&args).env("XDPLB_BIN", bin.join("xdplb"));
            let totals = run_tests(&mut cmd)?;
            lint(&path)?;
            // One closing line for the whole run (cargo's last line is some crate's doc tests).
            println!(
                "xtask: {} passed, {} failed, {} skipped",
                totals.0, totals.1, totals.2
            );
            Ok(())
        }
        Task::Soak { minutes } => {
            require_root("the soak")?;
            packages::ensure()?;
            build(&path)?;
            reliability::soak(cargo(&path, &[]), &bin.join("xdplb"), minutes)
        }
        Task::Fuzz { frames, seed } => {
            require_root("the fuzzing")?;
            build(&path)?;
            reliability::fuzz(cargo(&path, &[]), &bin.join("xdplb"), frames, seed)
        }
        Task::Bench { compare, only } => {
            require_root("the benchmarks")?;
            // perf (the per-line profiles) and bpftool (the maps' memory at scale).
            packages::ensure()?;
            match compare {
                Some(objects) => bench::compare(
                    &root(),
                    |args| cargo(&path, args),
                    &objects,
                    only.as_deref().unwrap_or(""),
                ),
                None => bench::run(&root(), |args| cargo(&path, args), &path),
            }
        }
        Task::Deb { bin, out } => {
            let bin = match bin {
                Some(b) => b,
                None => {
                    run(&mut cargo(
                        &path,
                        &["build", "--release", "-p", "lb-user", "--bin", "xdplb"],
                    ))?;
                    root().join("target/release/xdplb")
                }
            };
            let out = root().join(out);
            std::fs::create_dir_all(&out)?;
            let deb = deb::package(&root(), &bin, &out)?;
            println!("{}", deb.display());
            Ok(())
        }
        Task::Demo => {
            require_root("the demo")?;
            build(&path)?;
            run(Command::new(bin.join("xdplb-demo")).env("XDPLB_BIN", bin.join("xdplb")))
        }
    }
}
