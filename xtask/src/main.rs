//! `cargo xtask`: the project's build, test and demo entry points. It installs what the eBPF build
//! needs first (see toolchain.rs), so a fresh machine needs nothing by hand.

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
    /// Build, then run every test (unit, datapath, end to end; needs root), then fmt and clippy.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Lint only: rustfmt check and clippy with warnings denied.
    Lint,
    /// Build, then run the demo: a namespace topology with a client, the director and real servers.
    Demo,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn cargo(path: &OsString, args: &[&str]) -> Command {
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.args(args).current_dir(root()).env("PATH", path);
    cmd
}

fn build(path: &OsString) -> Result<()> {
    run(&mut cargo(path, &["build", "--workspace", "--bins"]))
}

fn lint(path: &OsString) -> Result<()> {
    run(&mut cargo(path, &["fmt", "--all", "--check"]))?;
    run(&mut cargo(
        path,
        &["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"],
    ))
}

fn require_root(what: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc_geteuid() } != 0 {
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
            build(&path)?;
            let mut cmd = cargo(&path, &["test", "--workspace"]);
            cmd.args(&args).env("XDPLB_BIN", bin.join("xdplb"));
            run(&mut cmd)?;
            lint(&path)
        }
        Task::Demo => {
            require_root("the demo")?;
            build(&path)?;
            run(Command::new(bin.join("xdplb-demo")).env("XDPLB_BIN", bin.join("xdplb")))
        }
    }
}
