//! Unique names for the namespaces of one topology, and removal of those a dead run left behind.
//!
//! Names are `xlb<pid>-<n>-<role>`: the pid separates concurrent test processes, the counter the
//! topologies of parallel test threads, and the pid tells a later run whether the owner is gone.
//! Interface names inside the namespaces are fixed (`eth0`, ...): each namespace has its own.

use std::sync::atomic::{AtomicU32, Ordering};

/// Start of every namespace name this harness creates.
pub const NS_PREFIX: &str = "xlb";

/// A prefix no other topology of this run or of a concurrent run uses, e.g. `xlb4711-0`.
pub fn unique_prefix() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{NS_PREFIX}{}-{n}", std::process::id())
}

/// The pid encoded in a name made from [`unique_prefix`], if the name is one of ours.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(NS_PREFIX)?;
    let (pid, _) = rest.split_once('-')?;
    pid.parse().ok()
}

/// Removes what a run killed before its guards ran left behind: our namespaces whose creating
/// process no longer exists, with whatever still runs in them (a leftover namespace keeps its
/// processes and XDP programs alive forever), the datapaths their agents left pinned, and that
/// run's temporary directories.
pub fn cleanup_stale() {
    for name in stale("/run/netns") {
        crate::netns::delete(&name);
    }
    crate::agent::remove_stale_pins();
    let tmp = std::env::temp_dir();
    for name in stale(&tmp) {
        let _ = std::fs::remove_dir_all(tmp.join(name));
    }
}

/// Entries of `dir` named by [`unique_prefix`] for a process that no longer exists.
fn stale(dir: impl AsRef<std::path::Path>) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| {
            owner_pid(name)
                .is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_unique_and_parse_back() {
        let (a, b) = (unique_prefix(), unique_prefix());
        assert_ne!(a, b);
        assert_eq!(owner_pid(&format!("{a}-rs1")), Some(std::process::id()));
        assert_eq!(owner_pid("xlbfoo-1-sw"), None);
        assert_eq!(owner_pid("other"), None);
    }
}
