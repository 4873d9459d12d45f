//! The desired state saved next to a pinned datapath (/run/xdplb/...), so an agent that comes
//! back after a crash or an upgrade knows the weights, checks and ids behind the maps it adopts.
//! Maglev tables are not saved: they follow from the rest.
//!
//! A snapshot (`state.json`) and a journal beside it (`state.json.journal`): each change appends
//! one line with the services it set and removed, so saving costs what the change changed, not
//! what the director holds. Once the journal outgrows the snapshot, a new snapshot (of the next
//! generation) replaces both; journal lines of another generation than the snapshot's are
//! left out, so a crash between the two steps cannot replay old changes over a newer snapshot.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use super::{Hash, Limits, Real, Scheduler, Service, ServiceAddr, State};
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

impl SavedService {
    fn of(s: &Service) -> Self {
        SavedService {
            addr: s.addr,
            scheduler: s.scheduler,
            hash: s.hash,
            id: s.id,
            size: s.table.len(),
            sh_table: (s.scheduler == Scheduler::Sh).then(|| s.table.to_vec()),
            reals: s.reals.clone(),
            persistence: s.persistence,
        }
    }

    fn service(self) -> Service {
        let mut service = Service {
            addr: self.addr,
            scheduler: self.scheduler,
            hash: self.hash,
            id: self.id,
            reals: self.reals,
            table: Arc::new(
                self.sh_table
                    .unwrap_or_else(|| vec![lb_common::sched::NO_REAL; self.size]),
            ),
            persistence: self.persistence,
        };
        service.rebuild_table();
        service
    }
}

#[derive(Serialize, Deserialize)]
struct Saved {
    mode: AttachMode,
    services: Vec<SavedService>,
    /// Which journal lines follow this snapshot (absent in files of older versions: 0).
    #[serde(default)]
    generation: u64,
}

/// A journal line: one change.
#[derive(Serialize, Deserialize)]
struct Change {
    generation: u64,
    mode: AttachMode,
    set: Vec<SavedService>,
    removed: Vec<ServiceAddr>,
}

fn journal_of(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".journal");
    PathBuf::from(name)
}

/// Keeps the saved state in step with the agent's.
pub struct Saver {
    path: PathBuf,
    generation: u64,
    /// Whether the files hold the state the agent changes next: each change is then a journal
    /// line; otherwise (a write failed) the next save is a snapshot.
    in_step: bool,
    mode: AttachMode,
    snapshot_bytes: u64,
    journal_bytes: u64,
}

impl Saver {
    /// Saves `state` whole (a new snapshot, the journal emptied).
    pub fn new(path: &Path, mode: AttachMode, state: &State) -> Result<Self> {
        let generation = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice::<Saved>(&bytes).map_or(0, |s| s.generation) + 1,
            Err(_) => 0,
        };
        let mut saver = Saver {
            path: path.to_owned(),
            generation,
            in_step: false,
            mode,
            snapshot_bytes: 0,
            journal_bytes: 0,
        };
        saver.snapshot(mode, state)?;
        Ok(saver)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn snapshot(&mut self, mode: AttachMode, state: &State) -> Result<()> {
        let saved = Saved {
            mode,
            services: state
                .services
                .values()
                .map(|s| SavedService::of(s))
                .collect(),
            generation: self.generation,
        };
        let bytes = serde_json::to_vec(&saved)?;
        // Written aside and renamed: a crash never leaves half a file.
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, &bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &self.path)?;
        // The old journal belongs to the old generation: replayed over this snapshot, it would
        // be left out; removed, it does not grow forever.
        let _ = std::fs::remove_file(journal_of(&self.path));
        self.in_step = true;
        self.mode = mode;
        self.snapshot_bytes = bytes.len() as u64;
        self.journal_bytes = 0;
        Ok(())
    }

    /// Records `state`, which the agent reached from `before` (the state of the last save): a
    /// journal line with the services changed (none if nothing changed); a new snapshot once
    /// the journal is larger than the snapshot, or when the last write failed.
    pub fn save(&mut self, mode: AttachMode, before: &State, state: &State) -> Result<()> {
        if !self.in_step {
            return self.snapshot(mode, state);
        }
        let written = self.journal(mode, before, state);
        self.in_step = written.is_ok();
        written
    }

    fn journal(&mut self, mode: AttachMode, before: &State, state: &State) -> Result<()> {
        let diff = super::service_changes(before, state, false);
        // A change of most services (a first load) is as large as a snapshot: written as one
        // straight away, not written out as a line first.
        if diff.len() > 1000 && diff.len() > state.services.len() / 2 {
            self.generation += 1;
            return self.snapshot(mode, state);
        }
        let set: Vec<SavedService> = diff
            .iter()
            .filter_map(|(_, n)| Some(SavedService::of(n.as_ref()?)))
            .collect();
        let removed: Vec<ServiceAddr> = diff
            .iter()
            .filter(|(_, n)| n.is_none())
            .filter_map(|(o, _)| Some(o.as_ref()?.addr))
            .collect();
        if set.is_empty() && removed.is_empty() && mode == self.mode {
            return Ok(());
        }
        let change = Change {
            generation: self.generation,
            mode,
            set,
            removed,
        };
        let mut line = serde_json::to_vec(&change)?;
        if self.journal_bytes + line.len() as u64 > self.snapshot_bytes.max(64 * 1024) {
            self.generation += 1;
            return self.snapshot(mode, state);
        }
        line.push(b'\n');
        let journal = journal_of(&self.path);
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&journal)
            .and_then(|mut f| f.write_all(&line))
            .with_context(|| format!("cannot write {}", journal.display()))?;
        self.journal_bytes += line.len() as u64;
        self.mode = mode;
        Ok(())
    }
}

/// Reads what a [`Saver`] wrote, for a datapath with room for `limits`: the snapshot, then the
/// journal's changes of its generation (a last line cut short by a crash is left out).
pub fn load(path: &Path, limits: Limits) -> Result<(AttachMode, State)> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let saved: Saved =
        serde_json::from_slice(&bytes).with_context(|| format!("{} is damaged", path.display()))?;
    let mut mode = saved.mode;
    let mut services: std::collections::BTreeMap<ServiceAddr, SavedService> =
        saved.services.into_iter().map(|s| (s.addr, s)).collect();
    let journal = journal_of(path);
    if let Ok(text) = std::fs::read_to_string(&journal) {
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let change: Change = match serde_json::from_str(line) {
                Ok(c) => c,
                Err(_) if i + 1 == lines.len() => break,
                Err(e) => anyhow::bail!("{} is damaged at line {}: {e}", journal.display(), i + 1),
            };
            if change.generation != saved.generation {
                continue;
            }
            mode = change.mode;
            for addr in change.removed {
                services.remove(&addr);
            }
            for s in change.set {
                services.insert(s.addr, s);
            }
        }
    }
    let mut state = State::with_limits(limits);
    for s in services.into_values() {
        let service = s.service();
        if service.id >= limits.services || service.reals.iter().any(|r| r.id >= limits.reals) {
            anyhow::bail!(
                "{}: service {} has ids beyond the datapath's room ({} services, {} real servers)",
                path.display(),
                service.addr,
                limits.services,
                limits.reals
            );
        }
        state.services.insert(service.addr, Arc::new(service));
    }
    state.index_ids();
    Ok((mode, state))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{RealSpec, SchedulerSpec};

    fn svc(port: u16) -> ServiceAddr {
        ServiceAddr {
            protocol: super::super::Protocol::Tcp,
            vip: "10.0.0.100".parse().unwrap(),
            port,
        }
    }

    fn real(last: u8, weight: u32) -> RealSpec {
        RealSpec {
            addr: Some(format!("10.0.0.{last}").parse().unwrap()),
            weight: Some(weight),
            mac: Some(super::super::Mac([2, 0, 0, 0, 0, last])),
            ..Default::default()
        }
    }

    #[test]
    fn changes_are_journaled_replayed_and_compacted() {
        let dir = std::env::temp_dir().join(format!("xdplb-persist-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.json");
        let mut state = State::default();
        for port in 1..=50 {
            state = state
                .add_service(svc(port), &SchedulerSpec::default())
                .unwrap();
            state = state.add_real(svc(port), &real(11, 1)).unwrap();
        }
        let mut saver = Saver::new(&path, AttachMode::Native, &state).unwrap();
        let snapshot = std::fs::metadata(&path).unwrap().len();
        // A change of one service appends a line about that service alone.
        let next = state.edit_real(svc(7), &real(11, 5)).unwrap();
        saver.save(AttachMode::Native, &state, &next).unwrap();
        let journal = std::fs::read_to_string(journal_of(&path)).unwrap();
        assert_eq!(journal.lines().count(), 1);
        assert!((journal.len() as u64) < snapshot / 10, "{journal}");
        let (before, next) = (next.clone(), next.del_service(svc(9)).unwrap());
        saver.save(AttachMode::Native, &before, &next).unwrap();
        // Unchanged: nothing written.
        saver.save(AttachMode::Native, &next, &next).unwrap();
        assert_eq!(
            std::fs::read_to_string(journal_of(&path))
                .unwrap()
                .lines()
                .count(),
            2
        );
        let (mode, loaded) = load(&path, Limits::default()).unwrap();
        assert_eq!((mode, &loaded), (AttachMode::Native, &next));
        assert!(loaded.ids_consistent());
        // A line cut short by a crash is left out: the state before it.
        let mut text = std::fs::read_to_string(journal_of(&path)).unwrap();
        text.truncate(text.len() - 10);
        std::fs::write(journal_of(&path), &text).unwrap();
        let (_, before_cut) = load(&path, Limits::default()).unwrap();
        assert!(before_cut.service(&svc(9)).is_ok());
        assert_eq!(
            before_cut.service(&svc(7)).unwrap().reals[0].weight,
            5,
            "the first line still applies"
        );
        // Many changes: the journal is folded into a new snapshot before it outgrows it.
        let mut saver = Saver::new(&path, AttachMode::Native, &next).unwrap();
        let mut s = next.clone();
        for i in 0..2000 {
            let next = s.edit_real(svc(7), &real(11, 1 + i % 3)).unwrap();
            saver.save(AttachMode::Native, &s, &next).unwrap();
            s = next;
        }
        let journal = std::fs::metadata(journal_of(&path)).map_or(0, |m| m.len());
        assert!(journal <= std::fs::metadata(&path).unwrap().len().max(64 * 1024));
        let (_, loaded) = load(&path, Limits::default()).unwrap();
        assert_eq!(loaded, s);
        // A journal left by an older generation is not replayed over a newer snapshot.
        let old_line = serde_json::to_string(&Change {
            generation: 0,
            mode: AttachMode::Native,
            set: Vec::new(),
            removed: vec![svc(7)],
        })
        .unwrap();
        std::fs::write(journal_of(&path), old_line + "\n").unwrap();
        let (_, loaded) = load(&path, Limits::default()).unwrap();
        assert!(loaded.service(&svc(7)).is_ok());

        // A change whose line cannot be written: the next change is saved as a snapshot, so the
        // one that failed is not lost.
        let mut saver = Saver::new(&path, AttachMode::Native, &s).unwrap();
        std::fs::create_dir(journal_of(&path)).unwrap();
        let failed = s.edit_real(svc(8), &real(11, 9)).unwrap();
        assert!(saver.save(AttachMode::Native, &s, &failed).is_err());
        std::fs::remove_dir(journal_of(&path)).unwrap();
        let last = failed.edit_real(svc(7), &real(11, 4)).unwrap();
        saver.save(AttachMode::Native, &failed, &last).unwrap();
        assert!(
            !journal_of(&path).exists(),
            "a snapshot, not a journal line"
        );
        let (_, loaded) = load(&path, Limits::default()).unwrap();
        assert_eq!(loaded, last);

        // A first load of many services is saved as a snapshot, not as a journal line.
        let limits = Limits {
            services: 2000,
            reals: 4096,
        };
        let empty = State::with_limits(limits);
        let mut saver = Saver::new(&path, AttachMode::Native, &empty).unwrap();
        let mut many = empty.clone();
        for port in 1..=1500 {
            many.add_service_in(svc(port), &SchedulerSpec::default())
                .unwrap();
        }
        saver.save(AttachMode::Native, &empty, &many).unwrap();
        assert!(
            !journal_of(&path).exists(),
            "a snapshot, not a journal line"
        );
        assert_eq!(load(&path, limits).unwrap().1, many);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
