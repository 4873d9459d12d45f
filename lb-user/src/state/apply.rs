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
    let (old_filter, new_filter) = (filter_entries(old), filter_entries(new));
    // Open the prefilter before any new service entry, close it after the last one went.
    for &i in new_filter.difference(&old_filter) {
        w.set_vip_filter(i, true)?;
    }
    let (old_nat, new_nat) = (nat_source_entries(old), nat_source_entries(new));
    for &i in new_nat.difference(&old_nat) {
        w.set_nat_source(i, true)?;
    }
    for (addr, svc) in &old.services {
        if !new.services.contains_key(addr) {
            // Unreachable once its entry is gone; its table is replaced when the id is reused.
            w.remove_service(&addr.key())
                .with_context(|| format!("removing service {addr}"))?;
            for r in &svc.reals {
                w.set_real(r.id, &RealServer::default())?;
            }
            if svc.persistence.is_some() {
                let ids: Vec<u32> = svc.reals.iter().map(|r| r.id).collect();
                w.release_templates(svc.id, &ids)?;
            }
        }
    }
    for (addr, svc) in &new.services {
        let before = old.services.get(addr);
        let find_old =
            |id: u32| before.and_then(|b| Some((b, b.reals.iter().find(|r| r.id == id)?)));
        for r in &svc.reals {
            // Limits before the entry: a new real server is compared by its own weight.
            if find_old(r.id).is_none_or(|(_, o)| limits(o) != limits(r)) {
                w.set_limits(r.id, &limits(r))?;
            }
            // Where it leaves and its NAT port, before the entry that sends packets there.
            let egress = egress_entry(new, r);
            if find_old(r.id).is_none_or(|(_, o)| egress_entry(old, o) != egress) {
                w.set_egress(r.id, &egress)?;
            }
            match find_old(r.id) {
                Some((b, o)) if real_entry(b, o) == real_entry(svc, r) => {}
                Some((b, o)) => {
                    let entry = real_entry(svc, r);
                    w.set_real(r.id, &entry)?;
                    // A failed real server releases its persistent clients (a drained one keeps
                    // them until they expire).
                    let failed = entry.flags & REAL_DOWN != 0;
                    if failed
                        && real_entry(b, o).flags & REAL_DOWN == 0
                        && svc.persistence.is_some()
                    {
                        w.release_templates(svc.id, &[r.id])?;
                    }
                }
                None => {
                    if reset {
                        w.reset_counters(&[], &[r.id])?;
                    }
                    w.set_real(r.id, &real_entry(svc, r))?;
                }
            }
        }
        if before.is_none() && reset {
            w.reset_counters(&[svc.id], &[])?;
        }
        // The service entry carries the table size: a packet must never index past the table it
        // finds, so a shrinking table is swapped in after the entry, a growing one before.
        let shrinks = before.is_some_and(|b| svc.table.len() < b.table.len());
        let write_table = |w: &mut dyn MapWriter| -> Result<()> {
            if before.is_none_or(|b| b.table != svc.table) {
                w.set_table(svc.id, &svc.table)
                    .with_context(|| format!("writing the table of {addr}"))?;
                // IPVS's wrr starts its sequence over when its servers change; a new service
                // (perhaps on a reused id) starts at the beginning.
                if before.is_none() || svc.scheduler == Scheduler::Wrr {
                    w.reset_position(svc.id)?;
                }
            }
            Ok(())
        };
        if !shrinks {
            write_table(w)?;
        }
        if before.is_none_or(|b| b.persistence != svc.persistence) {
            w.set_persistence(svc.id, svc.persistence.as_ref())?;
        }
        if before.is_none_or(|b| b.info() != svc.info()) {
            w.set_service(&addr.key(), &svc.info())
                .with_context(|| format!("writing service {addr}"))?;
        }
        if shrinks {
            write_table(w)?;
        }
        if let Some(b) = before {
            let gone: Vec<u32> = b
                .reals
                .iter()
                .filter(|r| !svc.reals.iter().any(|n| n.id == r.id))
                .map(|r| r.id)
                .collect();
            for &id in &gone {
                w.set_real(id, &RealServer::default())?;
            }
            if !gone.is_empty() && b.persistence.is_some() {
                w.release_templates(svc.id, &gone)?;
            }
        }
    }
    for &i in old_filter.difference(&new_filter) {
        w.set_vip_filter(i, false)?;
    }
    for &i in old_nat.difference(&new_nat) {
        w.set_nat_source(i, false)?;
    }
    Ok(())
}
