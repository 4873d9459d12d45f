//! Secret files (the sync key, the web token): refused when others can read them or when the
//! secret is too short to be one.

use std::path::Path;

use anyhow::{bail, Context as _, Result};

/// The shortest secret accepted, in bytes.
pub const MIN_LEN: usize = 16;

/// The secret in `path`, without surrounding whitespace (a newline from `echo`); `what` names
/// the file in errors ("sync key file").
pub fn read(path: &Path, what: &str) -> Result<Vec<u8>> {
    use std::os::unix::fs::PermissionsExt as _;
    let what = format!("{what} {}", path.display());
    let meta = std::fs::metadata(path).with_context(|| format!("cannot read {what}"))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!("{what} is readable by group or others (mode {mode:04o}): chmod 600 it");
    }
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {what}"))?;
    let secret = bytes.trim_ascii();
    if secret.len() < MIN_LEN {
        bail!(
            "{what} is too short ({} bytes): use at least {MIN_LEN} random bytes, e.g. `head -c 32 /dev/urandom | base64`",
            secret.len()
        );
    }
    Ok(secret.to_vec())
}
