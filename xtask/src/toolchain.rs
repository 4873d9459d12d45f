//! Makes sure the eBPF toolchain is present: nightly's `rust-src` (for `-Z build-std=core`) and
//! `bpf-linker`, built once against the libLLVM that ships inside the nightly toolchain, because
//! the distribution's LLVM is too old and `cargo install bpf-linker` alone would look for it.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

/// Where bpf-linker and its LLVM prefix live: cargo's own bin directory survives `cargo clean`.
fn cargo_home() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

/// Runs a command and returns its stdout; fails with its stderr.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn ensure_rust_src() -> Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .context(
        "the nightly toolchain is needed for the eBPF build (rustup toolchain install nightly)",
    )?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    eprintln!("xtask: installing rust-src for nightly (needed by -Z build-std=core)");
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

/// The bpf-linker to use: one on PATH, or the one a previous run installed.
pub fn bpf_linker() -> Option<PathBuf> {
    let installed = cargo_home().join("bin").join("bpf-linker");
    let on_path = env::var_os("PATH").and_then(|paths| {
        env::split_paths(&paths)
            .map(|p| p.join("bpf-linker"))
            .find(|p| p.is_file())
    });
    [on_path, Some(installed)].into_iter().flatten().find(|p| {
        Command::new(p)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

fn ensure_bpf_linker() -> Result<PathBuf> {
    if let Some(p) = bpf_linker() {
        return Ok(p);
    }
    let version = output(Command::new("rustc").args(["+nightly", "-vV"]))?;
    let major = version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("cannot read the LLVM version from `rustc +nightly -vV`")?
        .to_owned();
    let sysroot = PathBuf::from(
        output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?.trim(),
    );
    let libllvm = std::fs::read_dir(sysroot.join("lib"))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.starts_with("libLLVM.so.") || (n.starts_with("libLLVM-") && n.ends_with(".so"))
            })
        })
        .with_context(|| format!("no libLLVM in {}/lib", sysroot.display()))?;
    // A prefix whose lib/ offers the nightly's libLLVM under the name the linker looks for
    // (libLLVM.so) and under its own soname (what the built binary loads at run time).
    let prefix = cargo_home().join("xdplb-llvm");
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib)?;
    let name = libllvm.file_name().unwrap();
    for link in [lib.join("libLLVM.so"), lib.join(name)] {
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&libllvm, &link)
            .with_context(|| format!("cannot create {}", link.display()))?;
    }
    eprintln!(
        "xtask: building bpf-linker against the nightly's LLVM {major} (once; about a minute)"
    );
    run(Command::new("cargo")
        .args([
            "+stable",
            "install",
            "bpf-linker",
            "--locked",
            "--no-default-features",
        ])
        .args(["--features", &format!("llvm-{major}")])
        .arg("--root")
        .arg(cargo_home())
        .env("LLVM_PREFIX", &prefix)
        .env("LD_LIBRARY_PATH", &lib))?;
    bpf_linker().context("bpf-linker was installed but does not run")
}

/// Everything the eBPF build needs; returns the PATH that finds bpf-linker.
pub fn ensure() -> Result<std::ffi::OsString> {
    ensure_rust_src()?;
    let linker = ensure_bpf_linker()?;
    let dir = linker.parent().unwrap().to_path_buf();
    let mut paths: Vec<PathBuf> = vec![dir];
    if let Some(p) = env::var_os("PATH") {
        paths.extend(env::split_paths(&p));
    }
    Ok(env::join_paths(paths)?)
}
