//! The reliability suite's long runs (docs/RELIABILITY.md): `cargo xtask soak --minutes N`, the
//! chaos soak under HTTP load (tests/tests/soak.rs) for N minutes instead of CI's 60 seconds,
//! and `cargo xtask fuzz --frames N`, the datapath fuzzing (tests/tests/fuzz.rs) on N frames
//! instead of CI's 100,000. Each test's figure lines (`soak:`, `fuzz:`) are repeated at the end.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _, Result};

/// Runs the soak with `cargo` (a `cargo` command in the workspace), the agent binary `xdplb`.
pub fn soak(cargo: Command, xdplb: &Path, minutes: u64) -> Result<()> {
    let secs = minutes.checked_mul(60).context("--minutes: too many")?;
    run(
        cargo,
        xdplb,
        "soak",
        ("XDPLB_SOAK_SECS", secs),
        &format!("soak of {minutes} min"),
    )
}

/// Runs the datapath fuzzing on `frames` frames (from `seed`).
pub fn fuzz(cargo: Command, xdplb: &Path, frames: u64, seed: u64) -> Result<()> {
    let mut cargo = cargo;
    cargo.env("XDPLB_FUZZ_SEED", seed.to_string());
    run(
        cargo,
        xdplb,
        "fuzz",
        ("XDPLB_FUZZ_FRAMES", frames),
        &format!("fuzzing of {frames} frames"),
    )
}

/// Runs test file `test` with `setting` in its environment, printing its output, then its
/// figure lines (those starting with the test's name and a colon) under `what`.
fn run(
    mut cargo: Command,
    xdplb: &Path,
    test: &str,
    setting: (&str, u64),
    what: &str,
) -> Result<()> {
    cargo
        .args([
            "test",
            "-p",
            "lb-tests",
            "--test",
            test,
            "--",
            "--nocapture",
        ])
        .env("XDPLB_BIN", xdplb)
        .env(setting.0, setting.1.to_string())
        // Missing root or a package is a failure here, not a skip.
        .env("CI", "1")
        .stdout(Stdio::piped());
    let mut child = cargo.spawn().context("cannot run cargo test")?;
    let prefix = format!("{test}:");
    let mut figures = Vec::new();
    for line in BufReader::new(child.stdout.take().context("piped")?).lines() {
        let line = line?;
        println!("{line}");
        if line.starts_with(&prefix) {
            figures.push(line);
        }
    }
    let status = child.wait()?;
    println!("\nxtask: {what}, figures:");
    for line in &figures {
        println!("{line}");
    }
    if !status.success() {
        bail!("the {test} test failed ({status})");
    }
    Ok(())
}
