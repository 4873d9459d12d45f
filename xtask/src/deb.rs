//! `cargo xtask deb`: a Debian package of the director, built with dpkg-deb from a staging tree
//! (no cargo-deb to build first): the binary, its manual page, shell completions, the systemd
//! unit and the example configuration.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::toolchain::output;

/// Builds the package from `bin` (an `xdplb` binary) into `out`; returns its path.
pub fn package(root: &Path, bin: &Path, out: &Path) -> Result<PathBuf> {
    let xdplb = |args: &[&str]| output(Command::new(bin).args(args)).map(String::into_bytes);
    let version = String::from_utf8(xdplb(&["--version"])?)?;
    let version = version
        .trim()
        .strip_prefix("xdplb ")
        .context("xdplb --version does not say its version")?
        .to_owned();
    let arch = output(Command::new("dpkg").arg("--print-architecture"))?
        .trim()
        .to_owned();

    let stage = out.join(format!("xdplb_{version}_{arch}"));
    let _ = fs::remove_dir_all(&stage);
    let put = |path: &str, bytes: &[u8], mode: u32| -> Result<()> {
        let file = stage.join(path);
        fs::create_dir_all(file.parent().expect("a file in a directory"))?;
        fs::write(&file, bytes).with_context(|| format!("writing {}", file.display()))?;
        fs::set_permissions(&file, fs::Permissions::from_mode(mode))?;
        Ok(())
    };
    put("usr/sbin/xdplb", &fs::read(bin)?, 0o755)?;
    let man = xdplb(&["man"])?;
    put("usr/share/man/man1/xdplb.1.gz", &gzip(&man)?, 0o644)?;
    for (shell, path) in [
        ("bash", "usr/share/bash-completion/completions/xdplb"),
        ("zsh", "usr/share/zsh/vendor-completions/_xdplb"),
        ("fish", "usr/share/fish/vendor_completions.d/xdplb.fish"),
    ] {
        put(path, &xdplb(&["completions", shell])?, 0o644)?;
    }
    let copy = |from: &str, to: &str| -> Result<()> {
        put(
            to,
            &fs::read(root.join(from)).with_context(|| from.to_owned())?,
            0o644,
        )
    };
    copy("examples/xdplb.service", "lib/systemd/system/xdplb.service")?;
    copy(
        "examples/xdplb.toml",
        "usr/share/doc/xdplb/examples/xdplb.toml",
    )?;
    copy("README.md", "usr/share/doc/xdplb/README.md")?;
    for doc in ["ha.md", "nat.md", "web.md", "migration.md"] {
        copy(
            &format!("docs/{doc}"),
            &format!("usr/share/doc/xdplb/{doc}"),
        )?;
    }
    let size_kb = du(&stage)? / 1024;
    put(
        "DEBIAN/control",
        format!(
            "Package: xdplb\n\
             Version: {version}\n\
             Architecture: {arch}\n\
             Maintainer: xdplb developers <xdplb@localhost>\n\
             Section: net\n\
             Priority: optional\n\
             Depends: libc6\n\
             Suggests: keepalived, bird2\n\
             Installed-Size: {size_kb}\n\
             Description: XDP virtual server (LVS rebuilt on eBPF/XDP)\n \
             A director that spreads connections for virtual IPs over real servers in the\n \
             NIC driver, driven like ipvsadm: direct routing, tunnelling and NAT, IPv4 and\n \
             IPv6, IPVS's schedulers and Maglev, health checks, connection sync, a status\n \
             page and an HTTP API.\n"
        )
        .as_bytes(),
        0o644,
    )?;
    let deb = out.join(format!("xdplb_{version}_{arch}.deb"));
    output(
        Command::new("dpkg-deb")
            // gzip: every dpkg reads it, and it is quick on a large (debug) binary.
            .args(["--root-owner-group", "-Zgzip", "--build"])
            .arg(&stage)
            .arg(&deb),
    )?;
    fs::remove_dir_all(&stage)?;
    Ok(deb)
}

/// `gzip -9n` (no name or time stamp: the same input gives the same file).
fn gzip(bytes: &[u8]) -> Result<Vec<u8>> {
    use std::io::Write as _;
    let mut child = Command::new("gzip")
        .args(["-9n", "-c"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("cannot run gzip")?;
    child.stdin.take().expect("piped").write_all(bytes)?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("gzip failed");
    }
    Ok(out.stdout)
}

/// Bytes of the files under `dir`.
fn du(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            du(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}
