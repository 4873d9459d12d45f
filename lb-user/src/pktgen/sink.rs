//! The counting sink: `xdp_count` on a receiving interface counts packets and bytes per CPU and
//! drops them (or passes them on). On a veth it is also what makes the interface accept frames
//! its peer sends with XDP_TX at all.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use aya::{
    maps::{MapData, PerCpuArray, PerCpuValues},
    programs::XdpMode,
    util::nr_cpus,
    Ebpf,
};
use lb_common::{map_names, program_names, Counters, SINK_PASS_GLOBAL};

use super::xdp::{load, program};
use crate::datapath::AttachMode;

/// What the sink does with a frame once counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SinkAction {
    /// XDP_DROP: nothing reaches the kernel's stack (ARP neither).
    #[default]
    Drop,
    /// XDP_PASS: the kernel handles the frame as usual.
    Pass,
}

/// A counting program attached to an interface of the calling thread's network namespace;
/// detached on Drop.
pub struct Sink {
    ebpf: Ebpf,
    ifindex: u32,
}

impl Sink {
    /// Counts and drops everything arriving on `ifindex`, in native XDP mode.
    pub fn attach(ifindex: u32) -> Result<Self> {
        Self::attach_with(ifindex, SinkAction::Drop, AttachMode::Native)
    }

    /// Counts everything arriving on `ifindex`, then drops or passes it; `mode` as for the
    /// director (`Auto` falls back to generic XDP).
    pub fn attach_with(ifindex: u32, action: SinkAction, mode: AttachMode) -> Result<Self> {
        let pass = u8::from(action == SinkAction::Pass);
        let mut ebpf = load(program_names::COUNT, &[(SINK_PASS_GLOBAL, pass)])?;
        let prog = program(&mut ebpf, program_names::COUNT)?;
        let attached = match mode {
            AttachMode::Native => prog.attach_to_if_index(ifindex, XdpMode::Driver),
            AttachMode::Generic => prog.attach_to_if_index(ifindex, XdpMode::Skb),
            AttachMode::Auto => prog
                .attach_to_if_index(ifindex, XdpMode::Driver)
                .or_else(|_| prog.attach_to_if_index(ifindex, XdpMode::Skb)),
        };
        attached.with_context(|| {
            format!("cannot attach the counting sink to interface #{ifindex} (another XDP program there?)")
        })?;
        Ok(Self { ebpf, ifindex })
    }

    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    fn stats(&mut self) -> Result<PerCpuArray<&mut MapData, Counters>> {
        Ok(PerCpuArray::try_from(
            self.ebpf
                .map_mut(map_names::SINK_STATS)
                .context("the XDP object has no SINK_STATS map")?,
        )?)
    }

    /// (packets, bytes) counted since attached or reset.
    pub fn try_count(&self) -> Result<(u64, u64)> {
        let map: PerCpuArray<&MapData, Counters> = PerCpuArray::try_from(
            self.ebpf
                .map(map_names::SINK_STATS)
                .context("the XDP object has no SINK_STATS map")?,
        )?;
        let values = map.get(&0, 0)?;
        Ok(values
            .iter()
            .fold((0, 0), |(p, b), c| (p + c.packets, b + c.bytes)))
    }

    /// (packets, bytes) counted since attached or reset.
    ///
    /// Panics if the kernel refuses to read the map, which it does not for a map this process
    /// created; use [`Sink::try_count`] to handle that as an error.
    pub fn count(&self) -> (u64, u64) {
        self.try_count().expect("read the sink's counters")
    }

    /// Zeroes the counters.
    pub fn reset(&mut self) -> Result<()> {
        let cpus = nr_cpus().map_err(|(_, e)| anyhow::anyhow!("cannot count the CPUs: {e}"))?;
        let zero = PerCpuValues::try_from(vec![Counters::default(); cpus])?;
        self.stats()?.set(0, zero, 0)?;
        Ok(())
    }

    /// The count once it has stopped changing for `quiet` (frames still in queues have
    /// arrived), or after `max` at the latest.
    pub fn settle(&self, quiet: Duration, max: Duration) -> Result<(u64, u64)> {
        let end = Instant::now() + max;
        let mut last = self.try_count()?;
        let mut since = Instant::now();
        while Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
            let now = self.try_count()?;
            if now != last {
                last = now;
                since = Instant::now();
            } else if since.elapsed() >= quiet {
                break;
            }
        }
        Ok(last)
    }
}
