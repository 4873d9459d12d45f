//! Writing the difference between two desired states into the datapath, in an order that never
//! shows a packet a half-made service: real servers before the table that names them, the table
//! before the service entry that leads to it; removal in the reverse order.

use anyhow::{Context as _, Result};
use std::collections::BTreeSet;

use lb_common::{vip_filter_index, RealEgress, RealLimits, RealServer, REAL_ACTIVE, REAL_DOWN};

use super::{Forward, Real, Scheduler, Service, State};
use crate::datapath::MapWriter;

fn limits(r: &Real) -> RealLimits {
    RealLimits {
        weight: r.effective_weight(),
        upper: r.upper,
        lower: r.lower,
        _pad: 0,
    }
}

fn real_entry(svc: &Service, r: &Real) -> RealServer {
    RealServer {
        addr: super::model::addr_of(r.addr),
        mac: r.mac.0,
        method: r.forward.method(),
        flags: REAL_ACTIVE
            | if r.health == crate::health::Health::Down {
                REAL_DOWN
            } else {
                0
            },
        service: svc.id,
    }
}

/// Writes what differs between `old` and `new`. On failure it tries to restore `old`, so the
/// datapath stays consistent with the state the agent keeps.
pub fn apply(writer: &mut dyn MapWriter, old: &State, new: &State) -> Result<()> {
    write_diff(writer, old, new, true).inspect_err(|_| {
        let _ = write_diff(writer, new, old, true);
    })
}

/// Writes all of `state` into maps that should already hold it (an agent adopting a running
/// datapath): tables are swapped for identical ones, counters are kept.
pub fn resync(writer: &mut dyn MapWriter, state: &State) -> Result<()> {
    for key in writer.service_keys()? {
        if !state.services.keys().any(|a| a.key() == key) {
            writer.remove_service(&key)?;
        }
    }
    write_diff(writer, &State::default(), state, false)
}

/// A real server's REAL_EGRESS entry: its interface and, for LVS/NAT, its port.
fn egress_entry(state: &State, r: &Real) -> RealEgress {
    RealEgress {
        ifindex: state.egress.get(&r.addr).copied().unwrap_or(0),
        port: if r.forward == Forward::Masq {
            r.port
        } else {
            0
        },
        _pad: 0,
    }
}

/// The LVS/NAT reply prefilter entries a state needs (its NAT real servers' addresses).
fn nat_source_entries(state: &State) -> BTreeSet<u32> {
    state
        .services
        .values()
        .flat_map(|s| s.reals.iter())
        .filter(|r| r.forward == Forward::Masq)
        .map(|r| vip_filter_index(&super::model::addr_of(r.addr)))
        .collect()
}

/// The VIP prefilter entries a state needs.
fn filter_entries(state: &State) -> BTreeSet<u32> {
    state
        .services
        .keys()
        .map(|a| vip_filter_index(&a.key().vip))
        .collect()
}

fn write_diff(w: &mut dyn MapWriter, old: &State, new: &State, reset: bool) -> Result<()> {
    // A service both states share is unchanged (a change copies what it touches), and so are
    // its real servers' entries unless the interfaces toward them changed.
    let same_egress = old.egress == new.egress;
    let diff = super::service_changes(old, new, !same_egress);
    // The prefilters follow the services' addresses and their LVS/NAT real servers: looked at
    // again only when a service came or went, or one with NAT real servers changed.
    let keys_changed = diff.iter().any(|(o, n)| o.is_none() || n.is_none());
    let nat_changed = diff
        .iter()
        .any(|(o, n)| o.is_some_and(|s| s.masquerades()) || n.is_some_and(|s| s.masquerades()));
    let (old_filter, new_filter) = match keys_changed {
        true => (filter_entries(old), filter_entries(new)),
        false => Default::default(),
    };
    // Open the prefilter before any new service entry, close it after the last one went.
    for &i in new_filter.difference(&old_filter) {
        w.set_vip_filter(i, true)?;
    }
    let (old_nat, new_nat) = match nat_changed {
        true => (nat_source_entries(old), nat_source_entries(new)),
        false => Default::default(),
    };
    for &i in new_nat.difference(&old_nat) {
        w.set_nat_source(i, true)?;
    }
    // The templates to release, (service id, real server id), a walk of their table for many:
    // those of services removed before any service (which may take a removed one's id) is
    // written, the others once the real servers and tables are.
    let mut released: Vec<(u32, u32)> = Vec::new();
    for svc in diff
        .iter()
        .filter(|(_, n)| n.is_none())
        .filter_map(|(o, _)| *o)
    {
        // Unreachable once its entry is gone; its table is replaced when the id is reused.
        w.remove_service(&svc.addr.key())
            .with_context(|| format!("removing service {}", svc.addr))?;
        for r in &svc.reals {
            w.set_real(r.id, &RealServer::default())?;
        }
        if svc.persistence.is_some() {
            released.extend(svc.reals.iter().map(|r| (svc.id, r.id)));
        }
    }
    if !released.is_empty() {
        w.release_templates(&released)?;
        released.clear();
    }
    let changed: Vec<(&Service, Option<&Service>)> = diff
        .iter()
        .filter_map(|(o, n)| Some((&**(*n)?, o.map(|b| &**b))))
        .collect();
    // The services' steps in phases, each phase for all of them, so that many services changed
    // together (a config file) cost one batch of tables; each service still sees its own order:
    // real servers, table, entry, a shrinking table, real servers gone.
    let mut reals = RealWrites::default();
    for &(svc, before) in &changed {
        reals.add(old, new, svc, before);
    }
    w.set_real_parts(&reals.limits, &reals.egress, &reals.entries)?;
    released.extend(&reals.released);
    let new_reals = reals.new_reals;
    if reset {
        let new_services: Vec<u32> = changed
            .iter()
            .filter(|(_, before)| before.is_none())
            .map(|(svc, _)| svc.id)
            .collect();
        w.reset_counters(&new_services, &new_reals)?;
    }
    // The service entry carries the table size: a packet must never index past the table it
    // finds, so a shrinking table is swapped in after the entry, a growing one before.
    let shrinks = |svc: &Service, before: Option<&Service>| {
        before.is_some_and(|b| svc.table.len() < b.table.len())
    };
    let (shrinking, growing): (Vec<_>, Vec<_>) = changed
        .iter()
        .partition(|(svc, before)| shrinks(svc, *before));
    write_tables(w, &growing)?;
    for &(svc, before) in &changed {
        if before.is_none_or(|b| b.persistence != svc.persistence) {
            w.set_persistence(svc.id, svc.persistence.as_ref())?;
        }
        if before.is_none_or(|b| b.info() != svc.info()) {
            w.set_service(&svc.addr.key(), &svc.info())
                .with_context(|| format!("writing service {}", svc.addr))?;
        }
    }
    write_tables(w, &shrinking)?;
    for &(svc, before) in &changed {
        let Some(b) = before else { continue };
        // An id another service took in this same change is that service's now.
        let gone: Vec<u32> = b
            .reals
            .iter()
            .filter(|r| !svc.reals.iter().any(|n| n.id == r.id))
            .map(|r| r.id)
            .collect();
        for &id in gone.iter().filter(|id| !new.real_ids.contains(**id)) {
            w.set_real(id, &RealServer::default())?;
        }
        if b.persistence.is_some() {
            released.extend(gone.iter().map(|&id| (svc.id, id)));
        }
    }
    if !released.is_empty() {
        w.release_templates(&released)?;
    }
    for &i in old_filter.difference(&new_filter) {
        w.set_vip_filter(i, false)?;
    }
    for &i in old_nat.difference(&new_nat) {
        w.set_nat_source(i, false)?;
    }
    Ok(())
}

/// What changed of the real servers of the changed services, written together: every limit,
/// then every egress, then every entry (each real server's entry after its limits and egress,
/// and all before the tables that name them).
#[derive(Default)]
struct RealWrites {
    limits: Vec<(u32, RealLimits)>,
    egress: Vec<(u32, RealEgress)>,
    entries: Vec<(u32, RealServer)>,
    /// (service id, real server id): persistent clients released (the server failed).
    released: Vec<(u32, u32)>,
    /// Real servers new to the datapath (their counters start at zero).
    new_reals: Vec<u32>,
}

impl RealWrites {
    fn add(&mut self, old: &State, new: &State, svc: &Service, before: Option<&Service>) {
        let find_old =
            |id: u32| before.and_then(|b| Some((b, b.reals.iter().find(|r| r.id == id)?)));
        for r in &svc.reals {
            // Limits before the entry: a new real server is compared by its own weight.
            if find_old(r.id).is_none_or(|(_, o)| limits(o) != limits(r)) {
                self.limits.push((r.id, limits(r)));
            }
            // Where it leaves and its NAT port, before the entry that sends packets there.
            let egress = egress_entry(new, r);
            if find_old(r.id).is_none_or(|(_, o)| egress_entry(old, o) != egress) {
                self.egress.push((r.id, egress));
            }
            match find_old(r.id) {
                Some((b, o)) if real_entry(b, o) == real_entry(svc, r) => {}
                Some((b, o)) => {
                    let entry = real_entry(svc, r);
                    self.entries.push((r.id, entry));
                    // A failed real server releases its persistent clients (a drained one keeps
                    // them until they expire).
                    let failed = entry.flags & REAL_DOWN != 0;
                    let was_up = real_entry(b, o).flags & REAL_DOWN == 0;
                    if failed && was_up && svc.persistence.is_some() {
                        self.released.push((svc.id, r.id));
                    }
                }
                None => {
                    self.new_reals.push(r.id);
                    self.entries.push((r.id, real_entry(svc, r)));
                }
            }
        }
    }
}

/// The tables that changed among `services`, in one go; the round-robin positions that start
/// over with them.
fn write_tables(w: &mut dyn MapWriter, services: &[&(&Service, Option<&Service>)]) -> Result<()> {
    let tables: Vec<(u32, &[u32])> = services
        .iter()
        .filter(|(svc, before)| before.is_none_or(|b| b.table != svc.table))
        .map(|(svc, _)| (svc.id, &svc.table[..]))
        .collect();
    if tables.is_empty() {
        return Ok(());
    }
    w.set_tables(&tables).context("writing the lookup tables")?;
    for (svc, before) in services {
        // IPVS's wrr starts its sequence over when its servers change; a new service (perhaps
        // on a reused id) starts at the beginning.
        let rewritten = before.is_none_or(|b| b.table != svc.table);
        if rewritten && (before.is_none() || svc.scheduler == Scheduler::Wrr) {
            w.reset_position(svc.id)?;
        }
    }
    Ok(())
}
