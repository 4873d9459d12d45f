//! The control plane at a large site's size: an agent started from a config file with thousands
//! of services and tens of thousands of real servers, its memory, how long it takes to load
//! that file from scratch, a reload of the file with one service changed, and single CLI changes.

use std::{collections::BTreeSet, net::Ipv4Addr, process::Command, time::Instant};

use anyhow::{Context as _, Result};
use lb_user::{
    config::Source,
    control::{request, Request},
    state::{Protocol, RealSpec, ServiceAddr},
};

use crate::{names, netns::veth, Agent, Netns};

/// The benchmark's director: `services` services of `per_service` real servers each.
#[derive(Clone, Copy, Debug)]
pub struct Size {
    pub services: u32,
    pub per_service: u32,
}

impl Size {
    pub fn reals(self) -> u32 {
        self.services * self.per_service
    }
}

/// What was measured.
#[derive(Clone, Debug)]
pub struct Scale {
    pub size: Size,
    /// Bytes of the config file.
    pub file_bytes: usize,
    /// From the agent's start to its answering with every service loaded, milliseconds; and
    /// the same agent (the same room) started with no service.
    pub start_ms: f64,
    pub start_empty_ms: f64,
    /// The agent's resident memory (KiB), with every service and with none.
    pub rss_kib: u64,
    pub rss_empty_kib: u64,
    /// Memory of the BPF maps the agent made (bytes), with every service and with none.
    pub maps_bytes: u64,
    pub maps_empty_bytes: u64,
    /// `xdplb reload` of the file with one real server's weight changed, milliseconds; parsing
    /// that file alone, in this process.
    pub reload_ms: Vec<f64>,
    pub parse_ms: Vec<f64>,
    /// `xdplb real edit` (the whole command), and the same change as one control-socket request.
    pub cli_ms: Vec<f64>,
    pub socket_ms: Vec<f64>,
}

fn vip(i: u32) -> Ipv4Addr {
    // Ten ports per VIP, as a site with a few services per address.
    let v = i / 10;
    Ipv4Addr::new(
        10,
        50 + (v / 62_500) as u8,
        ((v / 250) % 250) as u8,
        (v % 250 + 1) as u8,
    )
}

fn port(i: u32) -> u16 {
    80 + (i % 10) as u16
}

/// Real server `k` of service `i`: from a pool of 2,000 hosts, distinct within a service.
fn real(i: u32, k: u32) -> Ipv4Addr {
    let h = (i * 10 + k) % 2000;
    Ipv4Addr::new(10, 60, (h / 250) as u8, (h % 250 + 1) as u8)
}

/// The config file: `wlc` (ipvsadm's default scheduler), LVS/DR, real servers' MACs given.
/// `first_weight` is the weight of service 0's first real server.
pub fn config(size: Size, iface: &str, first_weight: u32) -> String {
    let mut text = format!(
        "interface = \"{iface}\"\nservices_max = {}\nreals_max = {}\n",
        size.services,
        size.reals()
    );
    for i in 0..size.services {
        text.push_str(&format!(
            "\n[[service]]\nprotocol = \"tcp\"\nvip = \"{}\"\nport = {}\nscheduler = \"wlc\"\n",
            vip(i),
            port(i)
        ));
        for k in 0..size.per_service {
            let weight = if i == 0 && k == 0 { first_weight } else { 1 };
            let h = real(i, k).octets();
            text.push_str(&format!(
                "  [[service.real]]\n  address = \"{}\"\n  weight = {weight}\n  mac = \"02:60:00:00:{:02x}:{:02x}\"\n",
                real(i, k),
                h[2],
                h[3]
            ));
        }
    }
    text
}

/// Ids of the BPF maps in the kernel, and each one's memory.
fn maps() -> Result<Vec<(u64, u64)>> {
    let out = crate::netns::run(Command::new("bpftool").args(["map", "list", "-j"]))?;
    let list: serde_json::Value = serde_json::from_str(&out)?;
    Ok(list
        .as_array()
        .context("bpftool map list: not a list")?
        .iter()
        .filter_map(|m| Some((m["id"].as_u64()?, m["bytes_memlock"].as_u64()?)))
        .collect())
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")
}

/// An agent started from `text`: how long it took, and its memory (process, maps made).
fn start(net: &Netns, text: &str) -> Result<(Agent, f64, u64, u64)> {
    let before: BTreeSet<u64> = maps()?.into_iter().map(|(id, _)| id).collect();
    let t = Instant::now();
    let agent = Agent::start_with_config(net, text)?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let made: u64 = maps()?
        .into_iter()
        .filter(|(id, _)| !before.contains(id))
        .map(|(_, bytes)| bytes)
        .sum();
    let rss = rss_kib(agent.pid())?;
    Ok((agent, ms, rss, made))
}

fn ms(f: impl FnOnce() -> Result<()>) -> Result<f64> {
    let t = Instant::now();
    f()?;
    Ok(t.elapsed().as_secs_f64() * 1e3)
}

/// Measures a director of `size`, with `changes` reloads and CLI changes.
pub fn scale(size: Size, changes: usize) -> Result<Scale> {
    names::cleanup_stale();
    let net = Netns::new(format!("{}-scale", names::unique_prefix()))?;
    veth(&net, "eth0", &net, "eth1")?;
    net.ip(&["addr", "add", "10.0.0.1/24", "dev", "eth0"])?;
    let text = config(size, "eth0", 1);

    // The same room, no services: what the services themselves add.
    let empty: String = text.split("\n[[service]]").next().unwrap_or("").to_owned();
    let (agent, start_empty_ms, rss_empty_kib, maps_empty_bytes) = start(&net, &empty)?;
    drop(agent);
    let (agent, start_ms, rss_kib, maps_bytes) = start(&net, &text)?;
    let listed = agent.list_config();
    let services = listed.0["services"].as_array().map_or(0, |s| s.len());
    anyhow::ensure!(
        services == size.services as usize,
        "the agent holds {services} services, not {}",
        size.services
    );

    let mut out = Scale {
        size,
        file_bytes: text.len(),
        start_ms,
        start_empty_ms,
        rss_kib,
        rss_empty_kib,
        maps_bytes,
        maps_empty_bytes,
        reload_ms: Vec::new(),
        parse_ms: Vec::new(),
        cli_ms: Vec::new(),
        socket_ms: Vec::new(),
    };
    for n in 0..changes {
        let changed = config(size, "eth0", 2 + (n % 2) as u32);
        agent.write_config(&changed)?;
        out.reload_ms.push(ms(|| {
            agent.cli_ok(&["reload"]);
            Ok(())
        })?);
        let source = Source {
            path: "xdplb.toml".into(),
            text: changed,
        };
        out.parse_ms.push(ms(|| source.parse().map(|_| ()))?);
    }
    // A service in the middle of the table, so no change is at an end of anything.
    let i = size.services / 2;
    let svc = format!("{}:{}", vip(i), port(i));
    let rip = real(i, 0).to_string();
    for n in 0..changes {
        let weight = (2 + n % 2).to_string();
        out.cli_ms.push(ms(|| {
            agent.cli_ok(&["real", "edit", "-t", &svc, "-r", &rip, "-w", &weight]);
            Ok(())
        })?);
    }
    let service = ServiceAddr {
        protocol: Protocol::Tcp,
        vip: vip(i).into(),
        port: port(i),
    };
    for n in 0..changes {
        let real = RealSpec {
            addr: Some(real(i, 1).into()),
            weight: Some(2 + (n % 2) as u32),
            ..Default::default()
        };
        out.socket_ms.push(ms(|| {
            request(agent.socket(), &Request::EditReal { service, real }).map(|_| ())
        })?);
    }
    Ok(out)
}
