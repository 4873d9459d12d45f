//! The desired state saved next to a pinned datapath (/run/xdplb/...), so an agent that comes
//! back after a crash or an upgrade knows the weights, checks and ids behind the maps it adopts.
//! Maglev tables are not saved: they follow from the rest.

use std::path::Path;

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use super::{Hash, Real, Scheduler, Service, ServiceAddr, State};
use crate::datapath::AttachMode;

#[derive(Serialize, Deserialize)]
struct SavedService {
    addr: ServiceAddr,
    scheduler: Scheduler,
    hash: Hash,
    id: u32,
    size: usize,
    reals: Vec<Real>,
    /// `sh` tables depend on their history (minimal moves), so they are kept.
    sh_table: Option<Vec<u32>>,
    #[serde(default)]
    persistence: Option<super::Persistence>,
}

#[derive(Serialize, Deserialize)]
struct Saved {
    mode: AttachMode,
    services: Vec<SavedService>,
}

/// Writes `state` (and the attach mode, which an adopted link does not tell) to `path`.
pub fn save(path: &Path, mode: AttachMode, state: &State) -> Result<()> {
    let saved = Saved {
        mode,
        services: state
            .services
            .values()
            .map(|s| SavedService {
                addr: s.addr,
                scheduler: s.scheduler,
                hash: s.hash,
                id: s.id,
                size: s.table.len(),
                sh_table: (s.scheduler == Scheduler::Sh).then(|| s.table.clone()),
                reals: s.reals.clone(),
                persistence: s.persistence,
            })
            .collect(),
    };
    // Written aside and renamed: a crash never leaves half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(&saved)?)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Reads what [`save`] wrote.
pub fn load(path: &Path) -> Result<(AttachMode, State)> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let saved: Saved =
        serde_json::from_slice(&bytes).with_context(|| format!("{} is damaged", path.display()))?;
    let mut state = State::default();
    for s in saved.services {
        let mut service = Service {
            addr: s.addr,
            scheduler: s.scheduler,
            hash: s.hash,
            id: s.id,
            reals: s.reals,
            table: s
                .sh_table
                .unwrap_or_else(|| vec![lb_common::sched::NO_REAL; s.size]),
            persistence: s.persistence,
        };
        service.rebuild_table();
        state.services.insert(service.addr, service);
    }
    Ok((saved.mode, state))
}
