//! Writing the difference between two desired states into the datapath, in an order that never
//! shows a packet a half-made service: real servers before the table slots that name them, the
//! table before the service entry that leads to it; removal in the reverse order.

use anyhow::{Context as _, Result};
use lb_common::{sched::NO_REAL, RealServer, ServiceInfo, REAL_ACTIVE};

use super::{Real, Service, State};
use crate::datapath::MapWriter;

fn real_entry(r: &Real) -> RealServer {
    RealServer {
        addr: lb_common::addr_from_v4(r.addr.octets()),
        mac: r.mac.0,
        method: r.forward.method(),
        flags: REAL_ACTIVE,
    }
}

fn service_entry(s: &Service) -> ServiceInfo {
    ServiceInfo {
        id: s.id,
        scheduler: s.scheduler.id(),
    }
}

/// Writes what differs between `old` and `new`. On failure it tries to restore `old`, so the
/// datapath stays consistent with the state the agent keeps.
pub fn apply(writer: &mut dyn MapWriter, old: &State, new: &State) -> Result<()> {
    write_diff(writer, old, new).inspect_err(|_| {
        let _ = write_diff(writer, new, old);
    })
}

fn write_diff(w: &mut dyn MapWriter, old: &State, new: &State) -> Result<()> {
    for (addr, svc) in &old.services {
        if !new.services.contains_key(addr) {
            w.remove_service(&addr.key())
                .with_context(|| format!("removing service {addr}"))?;
            let empty: Vec<(u32, u32)> =
                (0..svc.table.len() as u32).map(|s| (s, NO_REAL)).collect();
            w.set_slots(svc.id, &empty)?;
            for r in &svc.reals {
                w.set_real(r.id, &RealServer::default())?;
            }
        }
    }
    for (addr, svc) in &new.services {
        let before = old.services.get(addr);
        let find_old = |id: u32| before.and_then(|b| b.reals.iter().find(|r| r.id == id));
        for r in &svc.reals {
            match find_old(r.id) {
                Some(o) if real_entry(o) == real_entry(r) => {}
                Some(_) => w.set_real(r.id, &real_entry(r))?,
                None => {
                    w.reset_counters(&[], &[r.id])?;
                    w.set_real(r.id, &real_entry(r))?;
                }
            }
        }
        // A new service gets every slot written: a fresh array holds zeros, and 0 is a real id.
        let slots: Vec<(u32, u32)> = svc
            .table
            .iter()
            .enumerate()
            .filter(|(i, id)| before.is_none_or(|b| b.table[*i] != **id))
            .map(|(i, id)| (i as u32, *id))
            .collect();
        w.set_slots(svc.id, &slots)
            .with_context(|| format!("writing the table of {addr}"))?;
        if before.is_none() {
            w.reset_counters(&[svc.id], &[])?;
        }
        if before.is_none_or(|b| service_entry(b) != service_entry(svc)) {
            w.set_service(&addr.key(), &service_entry(svc))
                .with_context(|| format!("writing service {addr}"))?;
        }
        if let Some(b) = before {
            for r in b
                .reals
                .iter()
                .filter(|r| !svc.reals.iter().any(|n| n.id == r.id))
            {
                w.set_real(r.id, &RealServer::default())?;
            }
        }
    }
    Ok(())
}
