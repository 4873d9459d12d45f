//! Builds the XDP program (lb-ebpf) for bpfel-unknown-none with nightly and embeds it, as aya's
//! template does. bpf-linker comes from PATH or from where `cargo xtask` installs it
//! ($CARGO_HOME/bin); `cargo xtask build` installs it when it is missing.

use std::{env, path::PathBuf};

use anyhow::{bail, Context as _};

fn main() -> anyhow::Result<()> {
    let cargo_home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    let mut paths: Vec<PathBuf> = env::var_os("PATH")
        .map(|p| env::split_paths(&p).collect())
        .unwrap_or_default();
    if !paths.iter().any(|p| p.join("bpf-linker").is_file()) {
        let bin = cargo_home.join("bin");
        if !bin.join("bpf-linker").is_file() {
            bail!("bpf-linker is missing: run `cargo xtask build` once, it installs it");
        }
        paths.insert(0, bin);
        // SAFETY: build scripts are single-threaded; the child cargo inherits the new PATH.
        unsafe { env::set_var("PATH", env::join_paths(paths)?) };
    }
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest.join("../lb-ebpf");
    println!(
        "cargo:rerun-if-changed={}",
        manifest.join("../lb-common/src").display()
    );
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "lb-ebpf",
            root_dir: ebpf_dir.to_str().context("non-UTF-8 path")?,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
