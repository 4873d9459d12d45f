//! The datapath measures time in kernel clock ticks (jiffies): reading them costs it one load.
//! User space turns seconds into ticks, which needs the kernel's tick rate (CONFIG_HZ): measured
//! once, from /proc/timer_list, against the kernel's own nanosecond clock.

use std::{sync::OnceLock, time::Duration};

use anyhow::{anyhow, Context as _, Result};
use lb_common::{Addr, DirectorConfig};

use crate::config::Timeouts;

/// Tick rates Linux is built with.
const RATES: [u32; 4] = [100, 250, 300, 1000];

/// "now at N nsecs" and the first "jiffies: N" of /proc/timer_list.
fn sample() -> Result<(u64, u64)> {
    let text =
        std::fs::read_to_string("/proc/timer_list").context("cannot read /proc/timer_list")?;
    let now = text.lines().find_map(|l| {
        l.strip_prefix("now at ")?
            .strip_suffix(" nsecs")?
            .parse()
            .ok()
    });
    let jiffies = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("jiffies: ")?.parse().ok());
    now.zip(jiffies)
        .ok_or_else(|| anyhow!("/proc/timer_list has no clock readings"))
}

fn measure() -> Result<u32> {
    let (t0, j0) = sample()?;
    std::thread::sleep(Duration::from_millis(200));
    let (t1, j1) = sample()?;
    let hz = (j1 - j0) as f64 * 1e9 / (t1 - t0) as f64;
    Ok(*RATES
        .iter()
        .min_by(|a, b| (**a as f64 - hz).abs().total_cmp(&(**b as f64 - hz).abs()))
        .unwrap())
}

/// The kernel's clock ticks per second.
pub fn ticks_per_second() -> Result<u32> {
    static HZ: OnceLock<u32> = OnceLock::new();
    if let Some(hz) = HZ.get() {
        return Ok(*hz);
    }
    let hz = measure()?;
    Ok(*HZ.get_or_init(|| hz))
}

/// The datapath's settings: the interface's MAC and MTU, connection timeouts (seconds, turned
/// into ticks), the tunnel source.
pub fn director_config(
    mac: [u8; 6],
    timeouts: &Timeouts,
    mtu: u32,
    tunnel_src: Addr,
) -> Result<DirectorConfig> {
    let hz = ticks_per_second()?;
    let ticks = |secs: u32| secs.saturating_mul(hz);
    Ok(DirectorConfig {
        mac,
        _pad: [0; 2],
        tcp_timeout: ticks(timeouts.tcp),
        tcp_fin_timeout: ticks(timeouts.tcp_fin),
        udp_timeout: ticks(timeouts.udp),
        mtu,
        tunnel_src,
        refresh: ticks(DirectorConfig::REFRESH_SECS),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_tick_rate_is_one_linux_builds_with() {
        if unsafe { libc::geteuid() } != 0 {
            return; // /proc/timer_list is root-only; the datapath tests use this as root.
        }
        let hz = super::ticks_per_second().unwrap();
        assert!(super::RATES.contains(&hz), "{hz}");
    }
}
