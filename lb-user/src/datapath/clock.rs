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
/// into ticks), the tunnel source. Connection synchronisation is off; [`with_sync`] turns it on.
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
        sync_shift: 0,
        _pad: 0,
        tcp_timeout: ticks(timeouts.tcp),
        tcp_fin_timeout: ticks(timeouts.tcp_fin),
        udp_timeout: ticks(timeouts.udp),
        mtu,
        tunnel_src,
        // Refreshed well within the shortest timeout, or a busy flow would time out between two
        // refreshes.
        refresh: ticks(DirectorConfig::REFRESH_SECS)
            .min(ticks(timeouts.tcp.min(timeouts.tcp_fin).min(timeouts.udp)) / 2)
            .max(1),
    })
}

/// `config` with connection synchronisation on (or off): a live flow is announced again about
/// four times per idle timeout of TCP and UDP flows, so a peer's copy never ages out while the
/// flow lives (the period is a power of two of ticks, which the datapath tests with a shift).
pub fn with_sync(config: DirectorConfig, on: bool) -> DirectorConfig {
    let shortest = config.tcp_timeout.min(config.udp_timeout).max(8);
    DirectorConfig {
        sync_shift: if on {
            ((shortest / 4).max(2).ilog2() as u8).clamp(1, 30)
        } else {
            0
        },
        ..config
    }
}

/// The kernel's clock ticks now (jiffies, as the datapath reads them), for entries user space
/// writes into the connection table (flows heard from a peer). Worked out from CLOCK_MONOTONIC
/// with an offset measured once against /proc/timer_list: a tick or two off at most, which
/// timeouts of seconds do not notice.
pub fn jiffies_now() -> Result<u32> {
    let (base_ns, base_jiffies) = offset()?;
    let hz = ticks_per_second()? as u64;
    let elapsed = monotonic_ns().saturating_sub(base_ns);
    Ok((base_jiffies as u32).wrapping_add((elapsed * hz / 1_000_000_000) as u32))
}

/// CLOCK_MONOTONIC (ns) at the start of tick `jiffies` (the datapath's bpf_jiffies64()), a
/// tick or two off at most, as [`jiffies_now`].
pub fn jiffies_to_ns(jiffies: u64) -> Result<u64> {
    let (base_ns, base_jiffies) = offset()?;
    let hz = ticks_per_second()? as i128;
    let ns = base_ns as i128 + (jiffies as i128 - base_jiffies as i128) * 1_000_000_000 / hz;
    Ok(ns.max(0) as u64)
}

/// A tick's length in ns.
pub fn tick_ns() -> Result<u64> {
    Ok(1_000_000_000 / ticks_per_second()? as u64)
}

/// CLOCK_MONOTONIC and the jiffies at one instant, sampled once.
fn offset() -> Result<(u64, u64)> {
    static OFFSET: OnceLock<(u64, u64)> = OnceLock::new();
    if let Some(v) = OFFSET.get() {
        return Ok(*v);
    }
    let v = sample()?;
    Ok(*OFFSET.get_or_init(|| v))
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of bpf_ktime_get_ns() and of /proc/timer_list.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    #[test]
    fn flows_are_refreshed_well_within_the_shortest_timeout() {
        if unsafe { libc::geteuid() } != 0 {
            return; // the tick rate needs /proc/timer_list
        }
        let hz = super::ticks_per_second().unwrap();
        let short = crate::config::Timeouts {
            tcp: 900,
            tcp_fin: 120,
            udp: 3,
        };
        let c = super::director_config([0; 6], &short, 1500, [0; 16]).unwrap();
        assert!(c.refresh <= hz * 3 / 2, "refresh {} ticks", c.refresh);
        let c = super::director_config([0; 6], &Default::default(), 1500, [0; 16]).unwrap();
        assert_eq!(c.refresh, hz * lb_common::DirectorConfig::REFRESH_SECS);
    }

    #[test]
    fn the_tick_rate_is_one_linux_builds_with() {
        if unsafe { libc::geteuid() } != 0 {
            return; // /proc/timer_list is root-only; the datapath tests use this as root.
        }
        let hz = super::ticks_per_second().unwrap();
        assert!(super::RATES.contains(&hz), "{hz}");
    }
}
