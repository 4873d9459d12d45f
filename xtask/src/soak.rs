//! `cargo xtask soak --minutes N`: the chaos soak under HTTP load (tests/tests/soak.rs) for N
//! minutes instead of CI's 60 seconds, its figures (the test's `soak:` lines) repeated at the end
//! for docs/RELIABILITY.md.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _, Result};

/// Runs the soak with `cargo` (a `cargo` command in the workspace), the agent binary `xdplb`.
pub fn run(mut cargo: Command, xdplb: &Path, minutes: u64) -> Result<()> {
    let secs = minutes.checked_mul(60).context("--minutes: too many")?;
    cargo
        .args([
            "test",
            "-p",
            "lb-tests",
            "--test",
            "soak",
            "--",
            "--nocapture",
        ])
        .env("XDPLB_BIN", xdplb)
        .env("XDPLB_SOAK_SECS", secs.to_string())
        // Missing root, nginx or wrk is a failure here, not a skip.
        .env("CI", "1")
        .stdout(Stdio::piped());
    let mut child = cargo.spawn().context("cannot run cargo test")?;
    let mut figures = Vec::new();
    for line in BufReader::new(child.stdout.take().context("piped")?).lines() {
        let line = line?;
        println!("{line}");
        if line.starts_with("soak:") {
            figures.push(line);
        }
    }
    let status = child.wait()?;
    println!("\nxtask: soak of {minutes} min, figures:");
    for line in &figures {
        println!("{line}");
    }
    if !status.success() {
        bail!("the soak failed ({status})");
    }
    Ok(())
}
