//! Sync's settings (`[sync]`, `--sync-*`) and the shared key, checked before anything starts.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
};

use anyhow::{anyhow, bail, Result};
use serde::{Deserialize, Serialize};

use super::wire::Key;

/// `[sync]` in the config file, and `xdplb run --sync-listen/--sync-peer/--sync-key`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Where this director listens (UDP for flow updates and hellos, TCP for full tables) and
    /// sends from: its peers list this address.
    pub listen: SocketAddr,
    /// The other directors' listen addresses.
    pub peers: Vec<SocketAddr>,
    /// The file holding the shared secret (at least 16 bytes; not readable by group or others).
    pub key_file: PathBuf,
    /// A multicast group flow updates and hellos go to (one datagram for every peer) instead of
    /// one datagram per peer; full tables still go peer to peer over TCP. Every director joins
    /// it on the interface of its listen address, and still takes messages from its peers only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<Ipv4Addr>,
}

impl Settings {
    /// Everything that can be wrong without opening a socket, in one line each.
    pub fn validate(&self) -> Result<()> {
        if self.listen.port() == 0 {
            bail!("sync listen address {}: port 0 is not valid", self.listen);
        }
        if self.peers.is_empty() {
            bail!("connection sync needs at least one peer (--sync-peer IP:PORT)");
        }
        for (i, p) in self.peers.iter().enumerate() {
            if p.port() == 0 || p.ip().is_unspecified() {
                bail!("sync peer {p}: not an address a peer listens on");
            }
            if *p == self.listen {
                bail!("sync peer {p} is this director's own listen address");
            }
            if self.peers[..i].contains(p) {
                bail!("sync peer {p} is given twice");
            }
        }
        if let Some(g) = self.group {
            if !g.is_multicast() {
                bail!("sync group {g} is not a multicast address (224.0.0.0/4)");
            }
            match self.listen.ip() {
                IpAddr::V4(a) if !a.is_unspecified() => {}
                other => {
                    bail!("sync group {g} needs an IPv4 listen address to join it on, not {other}")
                }
            }
        }
        Ok(())
    }

    /// The key file's secret: refused if missing, too short, or readable by others.
    pub fn load_key(&self) -> Result<Key> {
        read_key(&self.key_file)
    }
}

/// Reads a sync key file, refusing a short key or a file others can read.
pub fn read_key(path: &Path) -> Result<Key> {
    let secret = crate::secret::read(path, "sync key file")?;
    Key::new(&secret).map_err(|e| anyhow!("sync key file {} {e}", path.display()))
}
