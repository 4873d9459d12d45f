//! The agent's view of the datapath's connection table ([`lb_common::conn_table`]), mapped into
//! its memory a window at a time: a listing costs a few system calls, not one per entry. Writes
//! follow the datapath's protocol (the tag emptied first, written last) so a lookup never takes
//! half of one flow's entry for another's.

use std::{
    os::fd::{AsFd as _, OwnedFd},
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
        Self::with_buckets(conn_table::table_buckets(conn_max))
    }

    /// A new template table ([`conn_table::TEMPLATE_BUCKETS`], a size fixed at build time).
    pub fn templates() -> Self {
        Self::with_buckets(conn_table::TEMPLATE_BUCKETS)
    }

    fn with_buckets(buckets: u32) -> Self {
        let mut seed = [0u8; 8];
        getrandom::fill(&mut seed).expect("the kernel's random numbers");
        Self {
            mask: buckets - 1,
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

/// The shapes of the datapath's two tables of this layout.
#[derive(Clone, Copy, Debug)]
pub struct Shapes {
    pub conns: Shape,
    pub templates: Shape,
}

impl Shapes {
    /// New tables, the connection table for `conn_max` connections.
    pub fn new(conn_max: u32) -> Self {
        Self {
            conns: Shape::new(conn_max),
            templates: Shape::templates(),
        }
    }

    /// The tables pinned at these paths keep their shapes (a new program must hash as the old
    /// one did); a table not pinned yet is new.
    pub fn pinned(conns: &Path, templates: &Path, conn_max: u32) -> Result<Self> {
        Ok(Self {
            conns: Shape::of_pin(conns)?.unwrap_or_else(|| Shape::new(conn_max)),
            templates: Shape::of_pin(templates)?.unwrap_or_else(Shape::templates),
        })
    }
}

/// Buckets mapped at once by a walk of the whole table: 256 KiB, so reading a table of
/// millions of connections adds no more than that to the agent's resident memory (4 MiB windows
/// showed as 15 % growth in the soak test's samples), for two system calls per window.
const WALK_BUCKETS: u32 = 1024;

/// The table. Each operation maps the buckets it touches and unmaps them after: kept mapped,
/// every page a walk or a peer's entry touched would count in the agent's resident memory
/// (128 MiB for the default table), though the memory is the kernel's either way.
pub struct SlotTable {
    fd: OwnedFd,
    shape: Shape,
}

/// Some buckets of the table, mapped.
struct Buckets {
    mapped: Mapped,
    first: u32,
}

impl Buckets {
    fn map(fd: &OwnedFd, first: u32, count: u32) -> Result<Self> {
        let mapped = Mapped::window(
            fd.as_fd(),
            first as usize,
            count as usize,
            size_of::<Bucket>(),
        )?;
        Ok(Self { mapped, first })
    }

    fn bucket(&self, index: u32) -> *mut Bucket {
        self.mapped.at((index - self.first) as usize).cast()
    }

    fn slot(&self, index: u32, way: usize) -> *mut Slot {
        // SAFETY: within the bucket.
        unsafe { &raw mut (*self.bucket(index)).slots[way] }
    }

    /// A copy of a bucket (a racing write only changes what an insert chooses).
    fn copy(&self, index: u32) -> Bucket {
        // SAFETY: within the mapping.
        unsafe { std::ptr::read_volatile(self.bucket(index)) }
    }
}

impl SlotTable {
    /// Opens `map`, which must be a table of [`conn_table`]'s layout (its last entry a header):
    /// the connection table or the templates'.
    pub fn new(map: &MapData) -> Result<Self> {
        let entries = map.info()?.max_entries();
        let buckets = entries.saturating_sub(1);
        if !buckets.is_power_of_two() || conn_table::map_entries(buckets) != entries {
            bail!("the map of {entries} entries is not a connection or template table");
        }
        let fd = map.fd().as_fd().try_clone_to_owned()?;
        let header = Buckets::map(&fd, buckets, 1)?.copy(buckets);
        let Some(seed) = conn_table::seed_of(&header) else {
            bail!("the table has no header (it was never set up)");
        };
        Ok(Self {
            fd,
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
            bail!("the table was not made with {entries} entries");
        }
        let fd = map.fd().as_fd().try_clone_to_owned()?;
        let mapped = Buckets::map(&fd, shape.buckets(), 1)?;
        match conn_table::seed_of(&mapped.copy(shape.buckets())) {
            Some(seed) if seed == shape.seed => Ok(()),
            Some(_) => bail!("the pinned table has another seed"),
            None => {
                // SAFETY: the header entry, within the mapping; the datapath never touches it.
                unsafe {
                    std::ptr::write_volatile(
                        mapped.bucket(shape.buckets()),
                        conn_table::header(shape.seed),
                    )
                };
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

    /// `flow`'s bucket, mapped, and its place.
    fn bucket_of(&self, flow: &FlowKey) -> Result<(Buckets, conn_table::Place)> {
        let p = conn_table::place(flow, self.shape.seed, self.shape.mask);
        Ok((Buckets::map(&self.fd, p.bucket, 1)?, p))
    }

    /// The way of `flow`'s entry in its (mapped) bucket, if it has one.
    fn find(b: &Buckets, p: &conn_table::Place, flow: &FlowKey) -> Option<(usize, Slot)> {
        (0..WAYS).find_map(|way| {
            let s = Self::read(b.slot(p.bucket, way))?;
            (s.tag == p.tag && s.key == *flow).then_some((way, s))
        })
    }

    /// A flow's entry, if it has one.
    pub fn get(&self, flow: &FlowKey) -> Result<Option<Conn>> {
        let (b, p) = self.bucket_of(flow)?;
        Ok(Self::find(&b, &p, flow).map(|(_, s)| s.conn))
    }

    /// Writes a flow's entry into its own slot, an empty one, or the one the datapath would give
    /// up ([`conn_table::victim`], by the timeouts at clock `now`).
    pub fn upsert(
        &self,
        flow: &FlowKey,
        conn: &Conn,
        now: u32,
        timeouts: &IdleTimeouts,
    ) -> Result<()> {
        let cfg = DirectorConfig {
            tcp_timeout: timeouts.tcp,
            tcp_fin_timeout: timeouts.tcp_fin,
            udp_timeout: timeouts.udp,
            ..Default::default()
        };
        self.write(flow, conn, |b| conn_table::victim(b, now, &cfg))
    }

    /// Writes a template into its own slot, an empty one, or the longest unused at clock `now`
    /// ([`conn_table::oldest`]), as the datapath does.
    pub fn upsert_template(&self, key: &FlowKey, template: &Conn, now: u32) -> Result<()> {
        self.write(key, template, |b| conn_table::oldest(b, now))
    }

    /// Writes an entry into its own slot, else the one `victim` picks in its bucket.
    fn write(&self, flow: &FlowKey, conn: &Conn, victim: impl Fn(&Bucket) -> usize) -> Result<()> {
        let (b, p) = self.bucket_of(flow)?;
        let way = match Self::find(&b, &p, flow) {
            Some((way, _)) => way,
            None => victim(&b.copy(p.bucket)),
        };
        let slot = b.slot(p.bucket, way);
        Self::tag(slot).store(EMPTY, Ordering::Relaxed);
        fence(Ordering::Release);
        // SAFETY: within the mapping; the slot reads as empty until its tag is written.
        unsafe {
            std::ptr::write_volatile(&raw mut (*slot).mark, 0);
            std::ptr::write_volatile(&raw mut (*slot).key, *flow);
            std::ptr::write_volatile(&raw mut (*slot).conn, *conn);
        }
        Self::tag(slot).store(p.tag, Ordering::Release);
        Ok(())
    }

    /// Forgets a flow's entry, if it has one.
    pub fn remove(&self, flow: &FlowKey) -> Result<()> {
        let (b, p) = self.bucket_of(flow)?;
        if let Some((way, _)) = Self::find(&b, &p, flow) {
            Self::tag(b.slot(p.bucket, way)).store(EMPTY, Ordering::Release);
        }
        Ok(())
    }

    /// Every entry (a snapshot, a window of buckets at a time; the datapath goes on meanwhile).
    pub fn entries(&self) -> Result<Vec<(FlowKey, Conn)>> {
        let mut entries = Vec::new();
        let buckets = self.shape.buckets();
        for first in (0..buckets).step_by(WALK_BUCKETS as usize) {
            let count = WALK_BUCKETS.min(buckets - first);
            let window = Buckets::map(&self.fd, first, count)?;
            for index in first..first + count {
                entries.extend(
                    (0..WAYS)
                        .filter_map(|way| Self::read(window.slot(index, way)))
                        .map(|s| (s.key, s.conn)),
                );
            }
        }
        Ok(entries)
    }
}
