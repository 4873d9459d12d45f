//! Announcing VIPs for ECMP: xdplb keeps one route per VIP it can serve in a kernel routing table
//! (`xdplb run --announce-table N`, `[announce] table = N`), which the routing daemon's kernel
//! protocol learns and announces over BGP (BIRD, FRR: see docs/ha.md). xdplb never speaks BGP
//! itself. A VIP is announced while the director can serve it: the agent runs, the datapath is
//! attached to an interface that is up, at least one real server of a service on the VIP is
//! available, the connection table is current (sync), and the director is not drained. On
//! SIGTERM every VIP is withdrawn first, and the datapath keeps forwarding for a grace period
//! while the routers converge.

use std::{collections::BTreeSet, net::IpAddr, time::Duration};

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tracing::info;

use crate::{net::announce_routes, state::State};

fn default_grace() -> u32 {
    Settings::DEFAULT_GRACE_SECS
}

/// `[announce]` in the config file, `--announce-table` / `--announce-grace` on the command line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The kernel routing table the routing daemon learns the VIP routes from (1..=4294967295,
    /// not the main (254), local (255) or default (253) table).
    pub table: u32,
    /// Seconds the datapath keeps forwarding after the VIPs were withdrawn on SIGTERM.
    #[serde(default = "default_grace")]
    pub grace: u32,
}

impl Settings {
    pub const DEFAULT_GRACE_SECS: u32 = 3;

    pub fn validate(&self) -> Result<()> {
        match self.table {
            0 => bail!("announce table 0 is not a routing table"),
            253..=255 => bail!(
                "announce table {} is the kernel's own (default, main or local): give xdplb a table of its own, e.g. 100",
                self.table
            ),
            _ => {}
        }
        if self.grace > 3600 {
            bail!("announce grace of {} s is more than an hour", self.grace);
        }
        Ok(())
    }

    pub fn grace(&self) -> Duration {
        Duration::from_secs(self.grace.into())
    }
}

/// The VIPs of `state`, of both families, that have a service with at least one real server
/// that takes new flows (weight above 0, health up).
pub fn servable(state: &State) -> BTreeSet<IpAddr> {
    state
        .services
        .values()
        .filter(|s| s.reals.iter().any(|r| r.effective_weight() > 0))
        .map(|s| s.addr.vip)
        .collect()
}

/// The routes of one table, kept equal to the VIPs that should be announced.
pub struct Announcer {
    settings: Settings,
    announced: BTreeSet<IpAddr>,
}

impl Announcer {
    /// Takes over the table as a previous agent may have left it.
    pub async fn new(settings: Settings) -> Result<Self> {
        let announced = announce_routes::list(settings.table)
            .await?
            .into_iter()
            .collect();
        Ok(Self {
            settings,
            announced,
        })
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn announced(&self) -> &BTreeSet<IpAddr> {
        &self.announced
    }

    /// Adds and removes routes so that exactly `wanted` is announced.
    pub async fn set(&mut self, wanted: &BTreeSet<IpAddr>) -> Result<()> {
        let table = self.settings.table;
        for &vip in wanted.difference(&self.announced.clone()) {
            announce_routes::add(table, vip).await?;
            info!(%vip, table, "announced");
            self.announced.insert(vip);
        }
        for &vip in self.announced.clone().difference(wanted) {
            announce_routes::del(table, vip).await?;
            info!(%vip, table, "withdrawn");
            self.announced.remove(&vip);
        }
        Ok(())
    }

    /// Reads the table again (someone may have removed a route) and sets it right.
    pub async fn resync(&mut self, wanted: &BTreeSet<IpAddr>) -> Result<()> {
        self.announced = announce_routes::list(self.settings.table)
            .await?
            .into_iter()
            .collect();
        self.set(wanted).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::Health;
    use crate::state::{Mac, Protocol, RealSpec, SchedulerSpec, ServiceAddr};
    use std::net::Ipv4Addr;

    fn svc(vip: [u8; 4], port: u16) -> ServiceAddr {
        ServiceAddr {
            protocol: Protocol::Tcp,
            vip: Ipv4Addr::from(vip).into(),
            port,
        }
    }

    #[test]
    fn a_vip_is_servable_while_one_of_its_services_has_an_available_real_server() {
        let (a80, a443, b80) = (
            svc([10, 0, 0, 100], 80),
            svc([10, 0, 0, 100], 443),
            svc([10, 0, 0, 101], 80),
        );
        let mut s = State::default();
        for a in [a80, a443, b80] {
            s = s.add_service(a, &SchedulerSpec::default()).unwrap();
        }
        assert!(servable(&s).is_empty(), "services without real servers");
        let real = |n: u8, w: u32| RealSpec {
            addr: Some(Ipv4Addr::new(10, 0, 0, n).into()),
            weight: Some(w),
            mac: Some(Mac([2, 0, 0, 0, 0, n])),
            ..Default::default()
        };
        s = s.add_real(a80, &real(11, 1)).unwrap();
        s = s.add_real(b80, &real(12, 0)).unwrap();
        assert_eq!(
            servable(&s),
            BTreeSet::from([IpAddr::from([10, 0, 0, 100])]),
            "weight 0 serves nothing"
        );
        s = s.add_real(a443, &real(13, 1)).unwrap();
        let down = s
            .set_health(a80, Ipv4Addr::new(10, 0, 0, 11).into(), Health::Down, None)
            .unwrap();
        assert_eq!(
            servable(&down),
            BTreeSet::from([IpAddr::from([10, 0, 0, 100])]),
            "443 still serves the VIP"
        );
        let both_down = down
            .set_health(a443, Ipv4Addr::new(10, 0, 0, 13).into(), Health::Down, None)
            .unwrap();
        assert!(servable(&both_down).is_empty());

        // An IPv6 VIP is announced as an IPv4 one is, beside it.
        let v6 = ServiceAddr {
            vip: "2001:db8::100".parse().unwrap(),
            ..a80
        };
        let rs6 = RealSpec {
            addr: Some("2001:db8::11".parse().unwrap()),
            ..real(11, 1)
        };
        let s6 = s
            .add_service(v6, &SchedulerSpec::default())
            .and_then(|s| s.add_real(v6, &rs6))
            .unwrap();
        assert_eq!(
            servable(&s6),
            BTreeSet::from([IpAddr::from([10, 0, 0, 100]), v6.vip])
        );
    }

    #[test]
    fn kernel_tables_and_odd_graces_are_refused() {
        for table in [0, 253, 254, 255] {
            let e = Settings { table, grace: 3 }
                .validate()
                .unwrap_err()
                .to_string();
            assert!(e.contains(&format!("table {table}")), "{e}");
        }
        assert!(Settings {
            table: 100,
            grace: 7200
        }
        .validate()
        .is_err());
        assert!(Settings {
            table: 100,
            grace: 0
        }
        .validate()
        .is_ok());
    }
}
