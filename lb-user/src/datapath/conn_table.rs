//! The agent's view of the datapath's connection table ([`lb_common::conn_table`]), mapped into
//! its memory: a lookup, a listing or a peer's entry costs no system call. Writes follow the
//! datapath's protocol (the tag emptied first, written last) so a lookup never takes half of
//! one flow's entry for another's.

use std::{
    path::Path,
    sync::atomic::{fence, AtomicU32, Ordering},
};

use anyhow::{bail, Context as _, Result};
use aya::maps::MapData;
use lb_common::{
    conn_table::{self, Bucket, Slot, EMPTY, WAYS},
    Conn, DirectorConfig, FlowKey,
};

use super::mmap::Mapped;
use crate::conntrack::IdleTimeouts;

/// What a table was made with: its bucket mask and hash seed. The datapath gets both as
/// load-time globals; a pinned table keeps its own, which a new program must reuse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub mask: u32,
    pub seed: u64,
}

impl Shape {
    /// A new table for `conn_max` connections, with a fresh random seed.
    pub fn new(conn_max: u32) -> Self {
        let mut seed = [0u8; 8];
        getrandom::fill(&mut seed).expect("the kernel's random numbers");
        Self {
            mask: conn_table::table_buckets(conn_max) - 1,
            seed: u64::from_ne_bytes(seed),
        }
    }

    /// The shape of the table pinned at `path`, if there is one.
    pub fn of_pin(path: &Path) -> Result<Option<Self>> {
        if !path.exists() {
            return Ok(None);
        }
        let map = MapData::from_pin(path)
            .with_context(|| format!("cannot open the pinned map {}", path.display()))?;
        Ok(Some(SlotTable::new(&map)?.shape))
    }

    pub fn buckets(&self) -> u32 {
        self.mask + 1
    }

    /// Flows it has slots for.
    pub fn slots(&self) -> u32 {
        self.buckets() * WAYS as u32
    }
}

/// The table, mapped.
pub struct SlotTable {
    mapped: Mapped,
    shape: Shape,
}

impl SlotTable {
    /// Maps `map`, which must be a connection table (its last entry a header).
    pub fn new(map: &MapData) -> Result<Self> {
        let entries = map.info()?.max_entries();
        let buckets = entries.saturating_sub(1);
        if !buckets.is_power_of_two() || conn_table::map_entries(buckets) != entries {
            bail!("the map of {entries} entries is not a connection table");
        }
        let mapped = Mapped::new(map, entries as usize, size_of::<Bucket>())?;
        // SAFETY: the header entry, within the mapping; nothing writes it after the table is made.
        let header =
            unsafe { std::ptr::read_volatile(mapped.at(buckets as usize).cast::<Bucket>()) };
        let Some(seed) = conn_table::seed_of(&header) else {
            bail!("the connection table has no header (it was never set up)");
        };
        Ok(Self {
            mapped,
            shape: Shape {
                mask: buckets - 1,
                seed,
            },
        })
    }

    /// Writes the header of a table the datapath has just made (all zeroes: no header yet);
    /// checks that of a pinned one, which must be `shape`.
    pub fn set_up(map: &MapData, shape: Shape) -> Result<()> {
        let entries = conn_table::map_entries(shape.buckets());
        if map.info()?.max_entries() != entries {
            bail!("the connection table was not made with {entries} entries");
        }
        let mapped = Mapped::new(map, entries as usize, size_of::<Bucket>())?;
        let header = mapped.at(shape.buckets() as usize).cast::<Bucket>();
        // SAFETY: the header entry, within the mapping; the datapath never touches it.
        match conn_table::seed_of(&unsafe { std::ptr::read_volatile(header) }) {
            Some(seed) if seed == shape.seed => Ok(()),
            Some(_) => bail!("the pinned connection table has another seed"),
            None => {
                // SAFETY: as above.
                unsafe { std::ptr::write_volatile(header, conn_table::header(shape.seed)) };
                Ok(())
            }
        }
    }

    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// Flows it has slots for.
    pub fn capacity(&self) -> u32 {
        self.shape.slots()
    }

    fn slot(&self, bucket: u32, way: usize) -> *mut Slot {
        let bucket = self.mapped.at(bucket as usize).cast::<Bucket>();
        // SAFETY: within the bucket.
        unsafe { &raw mut (*bucket).slots[way] }
    }

    fn tag(slot: *mut Slot) -> &'static AtomicU32 {
        // SAFETY: the tag is an aligned u32 in the shared mapping, which outlives every use here
        // (the reference never leaves the method that made it).
        unsafe { AtomicU32::from_ptr(&raw mut (*slot).tag) }
    }

    /// A consistent copy of a slot: None when it is empty or changed while being read.
    fn read(slot: *mut Slot) -> Option<Slot> {
        let tag = Self::tag(slot).load(Ordering::Acquire);
        if tag == EMPTY {
            return None;
        }
        // SAFETY: within the mapping; a racing writer is detected by the tag check below.
        let copy = unsafe { std::ptr::read_volatile(slot) };
        fence(Ordering::Acquire);
        (Self::tag(slot).load(Ordering::Relaxed) == tag && copy.tag == tag).then_some(copy)
    }

    /// A copy of bucket `index` (a racing write only changes what an insert chooses).
    fn bucket(&self, index: u32) -> Bucket {
        // SAFETY: within the mapping.
        unsafe { std::ptr::read_volatile(self.mapped.at(index as usize).cast()) }
    }

    /// `flow`'s entry in bucket `index`, if it is there: (bucket, way, the slot).
    fn find_in(&self, index: u32, flow: &FlowKey, tag: u32) -> Option<(u32, usize, Slot)> {
        (0..WAYS).find_map(|way| {
            let s = Self::read(self.slot(index, way))?;
            (s.tag == tag && s.key == *flow).then_some((index, way, s))
        })
    }

    /// Where `flow`'s entry is, if it has one.
    fn find(&self, flow: &FlowKey) -> Option<(u32, usize, Slot)> {
        let p = conn_table::place(flow, self.shape.seed, self.shape.mask);
        self.find_in(p.bucket, flow, p.tag)
    }

    /// A flow's entry, if it has one.
    pub fn get(&self, flow: &FlowKey) -> Option<Conn> {
        self.find(flow).map(|(_, _, s)| s.conn)
    }

    /// Writes a flow's entry into its own slot, an empty one, or the one the datapath would give
    /// up ([`conn_table::victim`], by the timeouts at clock `now`).
    pub fn upsert(&self, flow: &FlowKey, conn: &Conn, now: u32, timeouts: &IdleTimeouts) {
        let p = conn_table::place(flow, self.shape.seed, self.shape.mask);
        let (bucket, way) = match self.find(flow) {
            Some((bucket, way, _)) => (bucket, way),
            None => {
                let cfg = DirectorConfig {
                    tcp_timeout: timeouts.tcp,
                    tcp_fin_timeout: timeouts.tcp_fin,
                    udp_timeout: timeouts.udp,
                    ..Default::default()
                };
                (
                    p.bucket,
                    conn_table::victim(&self.bucket(p.bucket), now, &cfg),
                )
            }
        };
        let slot = self.slot(bucket, way);
        Self::tag(slot).store(EMPTY, Ordering::Relaxed);
        fence(Ordering::Release);
        // SAFETY: within the mapping; the slot reads as empty until its tag is written.
        unsafe {
            std::ptr::write_volatile(&raw mut (*slot).mark, 0);
            std::ptr::write_volatile(&raw mut (*slot).key, *flow);
            std::ptr::write_volatile(&raw mut (*slot).conn, *conn);
        }
        Self::tag(slot).store(p.tag, Ordering::Release);
    }

    /// Forgets a flow's entry, if it has one.
    pub fn remove(&self, flow: &FlowKey) {
        if let Some((bucket, way, _)) = self.find(flow) {
            Self::tag(self.slot(bucket, way)).store(EMPTY, Ordering::Release);
        }
    }

    /// Every entry (a snapshot, bucket by bucket; the datapath goes on meanwhile).
    pub fn entries(&self) -> Vec<(FlowKey, Conn)> {
        (0..self.shape.buckets())
            .flat_map(|b| (0..WAYS).map(move |w| (b, w)))
            .filter_map(|(b, w)| Self::read(self.slot(b, w)).map(|s| (s.key, s.conn)))
            .collect()
    }
}
