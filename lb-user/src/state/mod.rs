//! The agent's desired state: services, their real servers and weights, and each service's
//! lookup table. Every change is computed on a copy and validated as a whole, so a rejected change
//! leaves nothing behind; [`apply`] then writes the difference to the datapath.

mod apply;
pub mod model;

use std::{collections::BTreeMap, net::Ipv4Addr};

use anyhow::{bail, Result};
use lb_common::{
    sched::{NO_REAL, SH_TABLE_SIZE},
    table::{rebalance, Member},
    MAX_REALS, MAX_SERVICES,
};

pub use apply::apply;
pub use model::{Forward, Mac, Protocol, Scheduler, ServiceAddr};

/// Largest weight, as in IPVS.
pub const MAX_WEIGHT: u32 = 65535;

#[derive(Clone, Debug, PartialEq)]
pub struct Real {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub weight: u32,
    pub forward: Forward,
    pub mac: Mac,
    /// Index in the datapath's REALS array and real-server counters.
    pub id: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Service {
    pub addr: ServiceAddr,
    pub scheduler: Scheduler,
    /// Index in the datapath's per-service arrays.
    pub id: u32,
    pub reals: Vec<Real>,
    /// Lookup table: slot -> real server id ([`NO_REAL`] when empty).
    pub table: Vec<u32>,
}

impl Service {
    pub fn real(&self, addr: Ipv4Addr) -> Option<&Real> {
        self.reals.iter().find(|r| r.addr == addr)
    }

    fn rebuild_table(&mut self) {
        let members: Vec<Member> = self
            .reals
            .iter()
            .map(|r| Member {
                id: r.id,
                weight: r.weight,
            })
            .collect();
        rebalance(&mut self.table, &members);
    }

    /// The real server the datapath picks for a client address (what `sh` computes per packet).
    pub fn pick(&self, client: Ipv4Addr) -> Option<&Real> {
        let slot = lb_common::sched::sh_slot(&lb_common::addr_from_v4(client.octets()));
        let id = self.table[slot as usize];
        self.reals.iter().find(|r| r.id == id)
    }
}

/// What `real add` / `real edit` asks for. `None` keeps the current value (edit) or takes the
/// default (add).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RealSpec {
    pub addr: Option<Ipv4Addr>,
    pub port: Option<u16>,
    pub weight: Option<u32>,
    pub forward: Option<Forward>,
    pub mac: Option<Mac>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct State {
    pub services: BTreeMap<ServiceAddr, Service>,
}

fn check_port(what: &str, port: u16) -> Result<()> {
    if port == 0 {
        bail!("port 0 is not a valid {what} port");
    }
    Ok(())
}

fn check_weight(weight: u32) -> Result<()> {
    if weight > MAX_WEIGHT {
        bail!("weight {weight} is out of range 0..={MAX_WEIGHT}");
    }
    Ok(())
}

impl State {
    pub fn service(&self, addr: &ServiceAddr) -> Result<&Service> {
        match self.services.get(addr) {
            Some(s) => Ok(s),
            None => bail!("no such service: {addr}"),
        }
    }

    fn service_mut(&mut self, addr: &ServiceAddr) -> Result<&mut Service> {
        match self.services.get_mut(addr) {
            Some(s) => Ok(s),
            None => bail!("no such service: {addr}"),
        }
    }

    fn free_service_id(&self) -> Result<u32> {
        let used: Vec<u32> = self.services.values().map(|s| s.id).collect();
        match (0..MAX_SERVICES).find(|i| !used.contains(i)) {
            Some(id) => Ok(id),
            None => bail!("too many services: at most {MAX_SERVICES}"),
        }
    }

    fn free_real_id(&self) -> Result<u32> {
        let mut used = vec![false; MAX_REALS as usize];
        for r in self.services.values().flat_map(|s| &s.reals) {
            used[r.id as usize] = true;
        }
        match used.iter().position(|u| !u) {
            Some(id) => Ok(id as u32),
            None => bail!("too many real servers: at most {MAX_REALS} over all services"),
        }
    }

    pub fn add_service(&self, addr: ServiceAddr, scheduler: Scheduler) -> Result<State> {
        check_port("service", addr.port)?;
        if self.services.contains_key(&addr) {
            bail!("service {addr} already exists");
        }
        let mut next = self.clone();
        let service = Service {
            addr,
            scheduler,
            id: self.free_service_id()?,
            reals: Vec::new(),
            table: vec![NO_REAL; SH_TABLE_SIZE as usize],
        };
        next.services.insert(addr, service);
        Ok(next)
    }

    pub fn edit_service(&self, addr: ServiceAddr, scheduler: Scheduler) -> Result<State> {
        let mut next = self.clone();
        next.service_mut(&addr)?.scheduler = scheduler;
        Ok(next)
    }

    pub fn del_service(&self, addr: ServiceAddr) -> Result<State> {
        self.service(&addr)?;
        let mut next = self.clone();
        next.services.remove(&addr);
        Ok(next)
    }

    /// Adds a real server; `spec.mac` must already be resolved (the agent asks the kernel).
    pub fn add_real(&self, service: ServiceAddr, spec: &RealSpec) -> Result<State> {
        let (addr, port, mac) = self.check_new_real(service, spec)?;
        let weight = spec.weight.unwrap_or(1);
        check_weight(weight)?;
        let id = self.free_real_id()?;
        let mut next = self.clone();
        let svc = next.service_mut(&service)?;
        svc.reals.push(Real {
            addr,
            port,
            weight,
            forward: spec.forward.unwrap_or_default(),
            mac,
            id,
        });
        svc.rebuild_table();
        Ok(next)
    }

    /// Validates everything of a `real add` that does not need the kernel: the agent calls this
    /// before it resolves the real server's MAC address.
    pub fn check_new_real(
        &self,
        service: ServiceAddr,
        spec: &RealSpec,
    ) -> Result<(Ipv4Addr, u16, Mac)> {
        let svc = self.service(&service)?;
        let Some(addr) = spec.addr else {
            bail!("a real server address (-r RIP) is required")
        };
        let port = self.check_real_port(&service, spec.port)?;
        if svc.real(addr).is_some() {
            bail!("real server {addr}:{port} already exists in service {service}");
        }
        if let Some(w) = spec.weight {
            check_weight(w)?;
        }
        Ok((addr, port, spec.mac.unwrap_or_default()))
    }

    fn check_real_port(&self, service: &ServiceAddr, port: Option<u16>) -> Result<u16> {
        let port = port.unwrap_or(service.port);
        check_port("real server", port)?;
        // Direct routing leaves the packet untouched, so the real server sees the VIP's port.
        if port != service.port {
            bail!(
                "real server port {port} differs from the service port {}: direct routing cannot change the port",
                service.port
            );
        }
        Ok(port)
    }

    pub fn edit_real(&self, service: ServiceAddr, spec: &RealSpec) -> Result<State> {
        let Some(addr) = spec.addr else {
            bail!("a real server address (-r RIP) is required")
        };
        self.check_real_port(&service, spec.port)?;
        let mut next = self.clone();
        let svc = next.service_mut(&service)?;
        let Some(real) = svc.reals.iter_mut().find(|r| r.addr == addr) else {
            bail!("no such real server {addr} in service {service}");
        };
        if let Some(w) = spec.weight {
            check_weight(w)?;
            real.weight = w;
        }
        if let Some(f) = spec.forward {
            real.forward = f;
        }
        if let Some(m) = spec.mac {
            real.mac = m;
        }
        svc.rebuild_table();
        Ok(next)
    }

    pub fn del_real(&self, service: ServiceAddr, addr: Ipv4Addr) -> Result<State> {
        let mut next = self.clone();
        let svc = next.service_mut(&service)?;
        let before = svc.reals.len();
        svc.reals.retain(|r| r.addr != addr);
        if svc.reals.len() == before {
            bail!("no such real server {addr} in service {service}");
        }
        svc.rebuild_table();
        Ok(next)
    }
}

#[cfg(test)]
mod tests;
