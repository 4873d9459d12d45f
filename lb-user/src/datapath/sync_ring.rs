//! The agent's side of the datapath's connection-sync events: each CPU's ring (`SYNC_RING`, with
//! its cursor in `SYNC_CURSORS`), mapped into the agent's memory and read without a system call;
//! see [`SyncCursor`] for who writes what. Older versions wrote into one kernel ring buffer
//! (`SYNC_EVENTS`): what an upgraded datapath left in it is read first, and an older object
//! (`cargo xtask bench --compare`) is read through it alone.

use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{anyhow, bail, Context as _, Result};
use aya::maps::{MapData, RingBuf};
use lb_common::{map_names, SyncCursor, SyncEvent};

use super::{clock, mmap::Mapped, pin::Pins};

/// The datapath's flow events, drained by the agent.
pub struct SyncRing {
    rings: Option<Rings>,
    previous: Option<RingBuf<MapData>>,
}

/// Every CPU's ring, mapped.
struct Rings {
    cursors: Mapped,
    events: Mapped,
    /// Slots of each CPU's ring.
    slots: u64,
    /// When the agent last looked at each CPU's `head` (CLOCK_MONOTONIC, ns; 0: never): the
    /// events it finds next were written after that.
    looked: Vec<u64>,
    /// Keeps the maps (and so their memory) while mapped.
    _maps: [MapData; 2],
}

impl SyncRing {
    /// The rings of a loaded object; an object older than them has its kernel ring buffer.
    pub(super) fn take(ebpf: &mut aya::Ebpf) -> Result<Self> {
        match (
            ebpf.take_map(map_names::SYNC_CURSORS),
            ebpf.take_map(map_names::SYNC_RING),
        ) {
            (Some(aya::maps::Map::Array(cursors)), Some(aya::maps::Map::Array(events))) => {
                Ok(Self {
                    rings: Some(Rings::map(cursors, events)?),
                    previous: None,
                })
            }
            (None, None) => {
                let map = ebpf
                    .take_map(map_names::SYNC_EVENTS)
                    .ok_or_else(|| anyhow!("the XDP object has no map {}", map_names::SYNC_RING))?;
                Ok(Self {
                    rings: None,
                    previous: Some(
                        RingBuf::try_from(map)
                            .context("the sync event map is not a ring buffer")?,
                    ),
                })
            }
            _ => bail!("the XDP object's sync rings have unexpected types"),
        }
    }

    /// The ring buffer an older version's datapath, adopted, wrote its events into, if pinned
    /// in `pins`; its pin goes (the map lives on while read).
    pub fn previous(pins: &Pins) -> Result<Option<RingBuf<MapData>>> {
        let path = pins.map(map_names::SYNC_EVENTS);
        if !path.exists() {
            return Ok(None);
        }
        let map = MapData::from_pin(&path)
            .with_context(|| format!("cannot open the previous sync ring {}", path.display()))?;
        let ring = RingBuf::try_from(aya::maps::Map::RingBuf(map))
            .context("the previous sync ring is not a ring buffer")?;
        std::fs::remove_file(&path).with_context(|| format!("cannot unpin {}", path.display()))?;
        Ok(Some(ring))
    }

    /// Reads `previous` (see [`SyncRing::previous`]: what is left in it once the older program
    /// is swapped out) before the rings.
    pub fn with_previous(mut self, previous: Option<RingBuf<MapData>>) -> Self {
        if previous.is_some() {
            self.previous = previous;
        }
        self
    }

    /// Hands `f` every event written since the last call, oldest first within each CPU's ring,
    /// with when it happened (CLOCK_MONOTONIC, ns: see [`event_time`]), and gives their slots
    /// back to the datapath; returns how many.
    pub fn drain(&mut self, mut f: impl FnMut(SyncEvent, u64)) -> usize {
        let mut n = 0;
        if let Some(ring) = &mut self.previous {
            while let Some(item) = ring.next() {
                if let Some(bytes) = item.get(..std::mem::size_of::<SyncEvent>()) {
                    let event: SyncEvent = bytemuck::pod_read_unaligned(bytes);
                    // The older datapath stamped its events with bpf_ktime_get_ns().
                    f(event, event.time);
                    n += 1;
                }
            }
        }
        if let Some(rings) = &mut self.rings {
            n += rings.drain(&mut f);
        }
        n
    }

    /// Every event in the rings now, read, with when it happened (a test's view).
    pub fn events(&mut self) -> Vec<(SyncEvent, u64)> {
        let mut out = Vec::new();
        self.drain(|e, when| out.push((e, when)));
        out
    }
}

impl Rings {
    fn map(cursors: MapData, events: MapData) -> Result<Self> {
        let cpus = cursors.info()?.max_entries() as usize;
        let total = events.info()?.max_entries() as u64;
        let cursor_map = Mapped::new(&cursors, cpus, std::mem::size_of::<SyncCursor>())?;
        let event_map = Mapped::new(&events, total as usize, std::mem::size_of::<SyncEvent>())?;
        // SAFETY: a mapped cursor; `mask` is written once, when the map is made.
        let mask = unsafe { (*cursor_map.at(0).cast::<SyncCursor>()).mask };
        let slots = mask.wrapping_add(1);
        if cpus == 0 || !slots.is_power_of_two() || slots * cpus as u64 > total {
            bail!("the sync rings' cursors do not fit their events ({cpus} CPUs, mask {mask}, {total} slots)");
        }
        Ok(Self {
            cursors: cursor_map,
            events: event_map,
            slots,
            looked: vec![0; cpus],
            _maps: [cursors, events],
        })
    }

    /// Atomic views of CPU `cpu`'s `head` and `tail`.
    fn cursor(&self, cpu: usize) -> (&AtomicU64, &AtomicU64) {
        let c = self.cursors.at(cpu).cast::<SyncCursor>();
        // SAFETY: 8-byte aligned fields of a mapped cursor, shared with the datapath, which only
        // ever stores `head` whole, as the agent stores `tail`.
        unsafe {
            (
                AtomicU64::from_ptr(&raw mut (*c).head),
                AtomicU64::from_ptr(&raw mut (*c).tail),
            )
        }
    }

    fn drain(&mut self, f: &mut impl FnMut(SyncEvent, u64)) -> usize {
        let mut n = 0;
        let tick = clock::tick_ns().unwrap_or(4_000_000);
        for cpu in 0..self.cursors.entries() {
            let after = std::mem::replace(&mut self.looked[cpu], clock::monotonic_ns());
            let (head, tail) = self.cursor(cpu);
            // Acquire: the events below `head` were written before it.
            let end = head.load(Ordering::Acquire);
            let before = clock::monotonic_ns();
            let mut next = tail.load(Ordering::Relaxed);
            // The datapath never runs more than a ring ahead; a cursor that says otherwise
            // (a ring made afresh under an agent that read the old one) starts over.
            if end.wrapping_sub(next) > self.slots {
                next = end;
            }
            while next != end {
                let slot = cpu as u64 * self.slots + (next & (self.slots - 1));
                // SAFETY: a mapped event the datapath finished before moving `head` past it
                // and does not touch again until `tail` passes it.
                let event = unsafe {
                    std::ptr::read_volatile(self.events.at(slot as usize).cast::<SyncEvent>())
                };
                let tick_start = clock::jiffies_to_ns(event.time).unwrap_or(before);
                f(event, event_time(after, before, tick_start, tick));
                next += 1;
                n += 1;
            }
            // Release: the slots are read before the datapath may write over them.
            tail.store(next, Ordering::Release);
        }
        n
    }
}

/// When an event happened (CLOCK_MONOTONIC, ns), from what the agent knows of it: the datapath
/// wrote it after the agent's previous look at its ring (`after`; 0: none, such as while the
/// agent was down) and before this one (`before`), in the kernel tick that started at
/// `tick_start` (give or take a tick: the agent's reading of the ticks). The middle of the span
/// both allow: within half the agent's read interval when it keeps up, half a few ticks when it
/// does not; where the two disagree, the tick's time held within the agent's looks.
pub fn event_time(after: u64, before: u64, tick_start: u64, tick: u64) -> u64 {
    let lo = after.max(tick_start.saturating_sub(tick));
    let hi = before.min(tick_start.saturating_add(2 * tick));
    if lo <= hi {
        lo + (hi - lo) / 2
    } else {
        (tick_start + tick / 2).clamp(after, before.max(after))
    }
}

/// Writes each CPU's ring size into a new map's cursors (a pinned map has them already).
pub(super) fn set_up(ebpf: &aya::Ebpf, slots: u32) -> Result<()> {
    let Some(aya::maps::Map::Array(map)) = ebpf.map(map_names::SYNC_CURSORS) else {
        return Ok(());
    };
    let cpus = map.info()?.max_entries() as usize;
    let cursors = Mapped::new(map, cpus, std::mem::size_of::<SyncCursor>())?;
    for cpu in 0..cpus {
        let c = cursors.at(cpu).cast::<SyncCursor>();
        // SAFETY: a mapped cursor; no program has run on the map yet, or it was set up before
        // (its mask is then already this one's or the pinned map's own).
        unsafe {
            if (*c).mask == 0 {
                (*c).mask = u64::from(slots - 1);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::event_time;

    const MS: u64 = 1_000_000;

    /// The agent keeps up (a look every millisecond, ticks of 4 ms): the event is placed
    /// between its two looks, whatever tick it names.
    #[test]
    fn between_two_looks_a_millisecond_apart() {
        let t = 1_000 * MS;
        assert_eq!(event_time(t, t + MS, t - 2 * MS, 4 * MS), t + MS / 2);
    }

    /// No look before (an agent just started, the events written while none ran), or looks far
    /// apart: the tick, give or take one, narrows it down.
    #[test]
    fn by_its_tick_when_the_looks_say_little() {
        let t = 1_000 * MS;
        // Written 500 ms before the first look, in the tick starting at t - 500 ms.
        let when = event_time(0, t, t - 500 * MS, 4 * MS);
        assert_eq!(when, t - 500 * MS + 2 * MS);
        // Looks 100 ms apart: likewise.
        let when = event_time(t - 100 * MS, t, t - 50 * MS, 4 * MS);
        assert_eq!(when, t - 50 * MS + 2 * MS);
    }

    /// A tick that contradicts the looks (the agent's reading of the ticks a little off) never
    /// places the event outside them.
    #[test]
    fn never_outside_the_looks() {
        let t = 1_000 * MS;
        assert_eq!(event_time(t, t + MS, t + 50 * MS, 4 * MS), t + MS);
        assert_eq!(event_time(t, t + MS, t - 50 * MS, 4 * MS), t);
        for tick_start in (0..3_000).map(|k| k * MS) {
            let when = event_time(t, t + 3 * MS, tick_start, 4 * MS);
            assert!((t..=t + 3 * MS).contains(&when), "{tick_start}: {when}");
        }
    }
}
