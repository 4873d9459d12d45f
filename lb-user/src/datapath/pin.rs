//! Pinning in bpffs, so the datapath outlives its agent: the maps and the XDP link of one
//! interface live under /sys/fs/bpf/xdplb/<netns>-<interface>/. A new agent adopts them: it loads
//! its program on the pinned maps and swaps it into the pinned link in one bpf_link update, so
//! traffic never stops, even across an upgrade.

use std::{
    ffi::CString,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _, Result};
use aya::programs::{
    links::{FdLink, PinnedLink},
    xdp::XdpLink,
};
use lb_common::map_names;

/// Where bpffs is mounted by default. Another mount point can be given (`--bpffs`): inside
/// `ip netns exec`, /sys is a fresh sysfs, and a bpffs mounted there would vanish with the
/// agent's private mount namespace, taking the pins with it.
pub const BPFFS: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The maps of the director's program that survive its agent: configuration, state and counters.
pub const PINNED_MAPS: [&str; 34] = [
    map_names::SERVICES,
    // Pinned with SERVICES, so that any agent's change to it reaches the cache of the program
    // running (SERVICE_CACHE itself is the program's own: a new program starts it empty).
    map_names::SERVICES_GEN,
    map_names::VIP_FILTER,
    map_names::TABLES,
    map_names::REALS,
    map_names::CONFIG,
    map_names::CONN_TABLE,
    map_names::SERVICE_STATS,
    map_names::REAL_STATS,
    map_names::REASONS,
    map_names::LOCAL_MACS,
    map_names::SYNC_RING,
    map_names::SYNC_CURSORS,
    map_names::SYNC_STATS,
    map_names::REAL_CONNS,
    map_names::REAL_LIMITS,
    map_names::SCHED_POS,
    map_names::LOCALITY,
    map_names::PERSISTENCE,
    map_names::TEMPLATE_TABLE,
    map_names::REAL_EGRESS,
    map_names::NAT_REPLY_INDEX,
    map_names::NAT_SOURCES,
    map_names::SERVICE_OUT,
    map_names::REAL_OUT,
    map_names::IFACES,
    map_names::TX_PORTS,
    map_names::NEIGH_MISSES,
    // Pinned so its entry outlives the agent (a program array's entries are cleared when no
    // user holds it); each agent installs its own reply program.
    map_names::NAT_PROGS,
    map_names::IPV6_PROGS,
    map_names::IPV4_PROGS,
    map_names::TUNNEL_SRC6,
    // Shared by the old program and the new one's xdplb_4in6 while an upgrade swaps them.
    map_names::FLOW_HANDOFF,
    // Likewise: the old program may call the new checker, which marks the packet for the new one.
    map_names::OPTIONS_CHECKED,
];

/// The network namespace of this process, as a number that tells namespaces apart: interfaces
/// of the same name in different namespaces must not share pins.
pub fn netns_id() -> Result<u64> {
    Ok(std::fs::metadata("/proc/self/ns/net")
        .context("cannot identify the network namespace")?
        .ino())
}

/// Mounts bpffs on `root` unless it is there already.
pub fn ensure_bpffs(root: &Path) -> Result<()> {
    let path = CString::new(root.as_os_str().as_encoded_bytes())?;
    // SAFETY: statfs on a valid path into a zeroed struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(path.as_ptr(), &mut st) } == 0 && st.f_type as i64 == BPF_FS_MAGIC {
        return Ok(());
    }
    std::fs::create_dir_all(root)?;
    let fstype = CString::new("bpf")?;
    // SAFETY: mount(2) with valid C strings and no data.
    if unsafe {
        libc::mount(
            fstype.as_ptr(),
            path.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    } != 0
    {
        bail!(
            "cannot mount bpffs on {}: {}",
            root.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Whether the bpffs at `root` outlives this process: `Some(true)` if the host (the mount
/// namespace of PID 1) sees the same bpffs instance, `Some(false)` if only this process's
/// private mount namespace has it (`ip netns exec`, a unit with PrivateMounts: the pins, and so
/// the datapath, die with the agent), `None` if it cannot tell (PID 1's mounts unreadable).
pub fn outlives_agent(root: &Path) -> Option<bool> {
    let dev = std::fs::metadata(root).ok()?.dev();
    let id = format!("{}:{}", libc::major(dev), libc::minor(dev));
    let mounts = std::fs::read_to_string("/proc/1/mountinfo").ok()?;
    Some(mounts.lines().any(|line| {
        // `ID PARENT MAJOR:MINOR ROOT MOUNTPOINT OPTIONS ... - FSTYPE SOURCE ...`
        let mut fields = line.split_whitespace();
        fields.nth(2) == Some(&id)
            && line
                .split(" - ")
                .nth(1)
                .is_some_and(|t| t.starts_with("bpf "))
    }))
}

/// The warning an agent gives when its pins die with it: what happens and the fix.
pub fn ephemeral_warning(root: &Path) -> String {
    format!(
        "the bpffs at {} is this agent's own (a private mount namespace: ip netns exec, or a unit \
         with PrivateMounts/ProtectSystem): its pins, and the datapath with them, die with the \
         agent, so a restart starts empty and breaks every connection; mount bpffs in the host's \
         mount namespace (mount -t bpf bpf /run/xdplb/bpffs) and give it with --bpffs",
        root.display()
    )
}

const LINK_PREFIX: &str = "link-";

/// The pin directory of one director (named after its first interface).
#[derive(Clone, Debug)]
pub struct Pins {
    dir: PathBuf,
}

impl Pins {
    /// The directory for `ifname` in this network namespace (bpffs mounted if needed).
    pub fn for_interface(root: &Path, ifname: &str) -> Result<Self> {
        ensure_bpffs(root)?;
        let dir = root
            .join("xdplb")
            .join(format!("net{}-{ifname}", netns_id()?));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Self { dir })
    }

    /// Without creating anything: for `xdplb detach`.
    pub fn existing(root: &Path, ifname: &str) -> Result<Option<Self>> {
        let dir = root
            .join("xdplb")
            .join(format!("net{}-{ifname}", netns_id()?));
        Ok(dir.is_dir().then_some(Self { dir }))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The link on the interface the pins are named after is `link`; on another one the
    /// director is attached to, `link-IFNAME`.
    fn link_path(&self, other: Option<&str>) -> PathBuf {
        match other {
            None => self.dir.join("link"),
            Some(name) => self.dir.join(format!("{LINK_PREFIX}{name}")),
        }
    }

    /// The pinned XDP link of a running datapath (on the interface `other`, or the first), if
    /// there is one.
    pub fn link(&self, other: Option<&str>) -> Result<Option<XdpLink>> {
        let path = self.link_path(other);
        if !path.exists() {
            return Ok(None);
        }
        let pinned = PinnedLink::from_pin(path).context("cannot open the pinned XDP link")?;
        let link = XdpLink::try_from(FdLink::from(pinned))
            .context("the pinned link is not an XDP link")?;
        Ok(Some(link))
    }

    /// Pins a freshly attached link.
    pub fn pin_link(&self, link: XdpLink, other: Option<&str>) -> Result<PinnedLink> {
        let fd = FdLink::try_from(link)
            .context("the XDP attachment is not a bpf_link (kernel too old)")?;
        fd.pin(self.link_path(other))
            .context("cannot pin the XDP link")
    }

    /// Unpins the links on other interfaces than `keep` (the director no longer uses them):
    /// the program leaves those interfaces.
    pub fn unpin_other_links(&self, keep: &[&str]) -> Result<()> {
        for entry in std::fs::read_dir(&self.dir)? {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            if let Some(ifname) = name.strip_prefix(LINK_PREFIX) {
                if !keep.contains(&ifname) {
                    std::fs::remove_file(self.dir.join(&*name))?;
                }
            }
        }
        Ok(())
    }

    /// Removes the pin of a program array with fewer slots than this version's (an older
    /// version's): it holds only programs, which every agent installs anew, so nothing is lost.
    pub fn drop_outgrown_prog_array(&self, name: &str, slots: u32) -> Result<()> {
        let path = self.map(name);
        if path.exists() && aya::maps::MapInfo::from_pin(&path)?.max_entries() < slots {
            std::fs::remove_file(&path)
                .with_context(|| format!("cannot remove {}", path.display()))?;
        }
        Ok(())
    }

    /// The room the pinned datapath was made with (its per-service and per-real-server maps
    /// keep their size), if there is one.
    pub fn limits(&self) -> Result<Option<lb_common::Limits>> {
        let size = |name: &str| -> Result<Option<u32>> {
            let path = self.map(name);
            Ok(match path.exists() {
                true => Some(aya::maps::MapInfo::from_pin(&path)?.max_entries()),
                false => None,
            })
        };
        Ok(
            match (size(map_names::SERVICES)?, size(map_names::REALS)?) {
                (Some(services), Some(reals)) => Some(lb_common::Limits { services, reals }),
                _ => None,
            },
        )
    }

    /// Removes every pin: once no process holds them, the program is detached and the maps freed.
    pub fn remove(&self) -> Result<()> {
        std::fs::remove_dir_all(&self.dir)
            .with_context(|| format!("cannot remove {}", self.dir.display()))
    }
}
