//! `xdplb decap`: the real-server side of LVS/TUN. Attaches the decapsulation program and keeps
//! its set of VIPs current, until SIGINT/SIGTERM.

use std::{net::IpAddr, time::Duration};

use anyhow::{Context as _, Result};
use lb_common::program_names;
use tokio::signal::unix::{signal, SignalKind};

use crate::{
    datapath::{AttachMode, Datapath, LoadOptions},
    net,
};

/// How often the host's addresses are re-read when no VIP was given.
const FOLLOW_INTERVAL: Duration = Duration::from_secs(2);

/// Every IPv4 address of the host outside 127.0.0.0/8 and every global IPv6 one: the VIPs a
/// real server holds (on lo).
async fn host_vips() -> Result<Vec<IpAddr>> {
    let v4 = net::ipv4_addresses(None).await?;
    let v6 = net::ipv6_global_addresses(None).await?;
    Ok(v4
        .into_iter()
        .filter(|a| !a.is_loopback())
        .map(IpAddr::V4)
        .chain(v6.into_iter().map(IpAddr::V6))
        .collect())
}

pub async fn run(iface: &str, vips: Vec<IpAddr>, mode: AttachMode) -> Result<()> {
    let iface = net::interface(iface).await?;
    // The decapsulation program needs no connection table worth the name, nor sync rings.
    let opts = LoadOptions {
        sync_slots: 1,
        ..LoadOptions::flows(1)
    };
    let mut datapath = Datapath::load(program_names::DECAP, opts)?;
    let mut maps = datapath.decap_maps()?;
    let follow = vips.is_empty();
    let mut current = if follow { host_vips().await? } else { vips };
    maps.set_vips(&current)?;
    let (_link, mode) = datapath
        .attach_program(program_names::DECAP, iface.index, mode)
        .with_context(|| format!("interface {}", iface.name))?;
    let list: Vec<String> = current.iter().map(IpAddr::to_string).collect();
    tracing::info!(
        "attached to {} ({} XDP); decapsulating IPIP and IPv6-in-IPv6 for {}",
        iface.name,
        format!("{mode:?}").to_lowercase(),
        if follow {
            format!("the host's addresses ({})", list.join(", "))
        } else {
            list.join(", ")
        }
    );
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut tick = tokio::time::interval(FOLLOW_INTERVAL);
    loop {
        tokio::select! {
            _ = tick.tick(), if follow => {
                let now = host_vips().await?;
                if now != current {
                    maps.set_vips(&now)?;
                    current = now;
                }
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    let (opened, passed) = maps.counters()?;
    tracing::info!(
        "detached; {} packets decapsulated, {} passed untouched",
        opened.packets,
        passed.packets
    );
    Ok(())
}
