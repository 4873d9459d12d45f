//! The agent's view of the datapath's tables of [`lb_common::conn_table`]'s layout (the
//! connection table, the persistence templates, the LVS/NAT reply index), mapped into its memory
//! a window at a time: a listing costs a few system calls, not one per entry. Writes follow the
//! datapath's protocol (the tag emptied first, written last) so a lookup never takes half of one
//! flow's entry for another's.

use std::{
    marker::PhantomData,
    os::fd::{AsFd as _, OwnedFd},
    path::Path,
    sync::atomic::{fence, AtomicU32, Ordering},
};

use anyhow::{bail, Context as _, Result};
use aya::maps::MapData;
use lb_common::{
    conn_table::{self, BucketOf, Entry, SlotOf, EMPTY, WAYS},
    Conn, DirectorConfig, FlowKey, NatReply, ReplyEntry,
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

    /// The shape of the table of `E`s pinned at `path`, if there is one.
    pub fn of_pin<E: Entry>(path: &Path) -> Result<Option<Self>> {
        if !path.exists() {
            return Ok(None);
        }
        let map = MapData::from_pin(path)
            .with_context(|| format!("cannot open the pinned map {}", path.display()))?;
        Ok(Some(SlotTable::<E>::new(&map)?.shape))
    }

    pub fn buckets(&self) -> u32 {
        self.mask + 1
    }

    /// Flows it has slots for.
    pub fn slots(&self) -> u32 {
        self.buckets() * WAYS as u32
    }
}

/// The shapes of the datapath's three tables of this layout.
#[derive(Clone, Copy, Debug)]
pub struct Shapes {
    pub conns: Shape,
    pub templates: Shape,
    /// The LVS/NAT reply index: for `nat_max` connections, its own seed.
    pub replies: Shape,
}

impl Shapes {
    /// New tables: the connection table for `conn_max` connections, the reply index for
    /// `nat_max` ([`conn_table::reply_buckets`]).
    pub fn new(conn_max: u32, nat_max: u32) -> Self {
        Self {
            conns: Shape::new(conn_max),
            templates: Shape::templates(),
            replies: Shape::with_buckets(conn_table::reply_buckets(nat_max)),
        }
    }

    /// The tables pinned at these paths keep their shapes (a new program must hash as the old
    /// one did); a table not pinned yet is new, as [`Shapes::new`] makes it.
    pub fn pinned(
        conns: &Path,
        templates: &Path,
        replies: &Path,
        conn_max: u32,
        nat_max: u32,
    ) -> Result<Self> {
        let new = Self::new(conn_max, nat_max);
        Ok(Self {
            conns: Shape::of_pin::<Conn>(conns)?.unwrap_or(new.conns),
            templates: Shape::of_pin::<Conn>(templates)?.unwrap_or(new.templates),
            replies: Shape::of_pin::<ReplyEntry>(replies)?.unwrap_or(new.replies),
        })
    }
}

/// Buckets mapped at once by a walk of the whole table: 256 KiB, so reading a table of
/// millions of connections adds no more than that to the agent's resident memory (4 MiB windows
/// showed as 15 % growth in the soak test's samples), for two system calls per window.
const WALK_BUCKETS: u32 = 1024;

/// A table of `E`s (the connection table's and the templates' hold a [`Conn`], the reply
/// index's a [`ReplyEntry`]). Each operation maps the buckets it touches and unmaps them after:
/// kept mapped, every page a walk or a peer's entry touched would count in the agent's resident
/// memory (128 MiB for the default table), though the memory is the kernel's either way.
pub struct SlotTable<E = Conn> {
    fd: OwnedFd,
    shape: Shape,
    entry: PhantomData<E>,
}

/// Some buckets of a table, mapped.
struct Buckets<E> {
    mapped: Mapped,
    first: u32,
    entry: PhantomData<E>,
}

impl<E: Entry> Buckets<E> {
    fn map(fd: &OwnedFd, first: u32, count: u32) -> Result<Self> {
        let mapped = Mapped::window(
            fd.as_fd(),
            first as usize,
            count as usize,
            size_of::<BucketOf<E>>(),
        )?;
        Ok(Self {
            mapped,
            first,
            entry: PhantomData,
        })
    }

    fn bucket(&self, index: u32) -> *mut BucketOf<E> {
        self.mapped.at((index - self.first) as usize).cast()
    }

    fn slot(&self, index: u32, way: usize) -> *mut SlotOf<E> {
        // SAFETY: within the bucket.
        unsafe { &raw mut (*self.bucket(index)).slots[way] }
    }

    /// A copy of a bucket (a racing write only changes what an insert chooses).
    fn copy(&self, index: u32) -> BucketOf<E> {
        // SAFETY: within the mapping.
        unsafe { std::ptr::read_volatile(self.bucket(index)) }
    }
}

impl<E: Entry> SlotTable<E> {
    /// Opens `map`, which must be a table of [`conn_table`]'s layout (its last entry a header)
    /// whose slots hold `E`s.
    pub fn new(map: &MapData) -> Result<Self> {
        let info = map.info()?;
        let entries = info.max_entries();
        let buckets = entries.saturating_sub(1);
        if !buckets.is_power_of_two()
            || conn_table::map_entries(buckets) != entries
            || info.value_size() as usize != size_of::<BucketOf<E>>()
        {
            bail!(
                "the map of {entries} entries of {} bytes is not a table of {}-byte buckets",
                info.value_size(),
                size_of::<BucketOf<E>>()
            );
        }
        let fd = map.fd().as_fd().try_clone_to_owned()?;
        let header = Buckets::<E>::map(&fd, buckets, 1)?.copy(buckets);
        let Some(seed) = conn_table::seed_of(&header) else {
            bail!("the table has no header (it was never set up)");
        };
        Ok(Self {
            fd,
            shape: Shape {
                mask: buckets - 1,
                seed,
            },
            entry: PhantomData,
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
        let mapped = Buckets::<E>::map(&fd, shape.buckets(), 1)?;
        match conn_table::seed_of(&mapped.copy(shape.buckets())) {
            Some(seed) if seed == shape.seed => Ok(()),
            Some(_) => bail!("the pinned table has another seed"),
            None => {
                // SAFETY: the header entry, within the mapping; the datapath never touches it.
                unsafe {
                    std::ptr::write_volatile(
                        mapped.bucket(shape.buckets()),
                        conn_table::header::<E>(shape.seed),
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

    fn tag(slot: *mut SlotOf<E>) -> &'static AtomicU32 {
        // SAFETY: the tag is an aligned u32 in the shared mapping, which outlives every use here
        // (the reference never leaves the method that made it).
        unsafe { AtomicU32::from_ptr(&raw mut (*slot).tag) }
    }

    /// A consistent copy of a slot: None when it is empty or changed while being read.
    fn read(slot: *mut SlotOf<E>) -> Option<SlotOf<E>> {
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
    fn bucket_of(&self, flow: &FlowKey) -> Result<(Buckets<E>, conn_table::Place)> {
        let p = E::place(flow, self.shape.seed, self.shape.mask);
        Ok((Buckets::map(&self.fd, p.bucket, 1)?, p))
    }

    /// The way of `flow`'s entry in its (mapped) bucket, if it has one.
    fn find(b: &Buckets<E>, p: &conn_table::Place, flow: &FlowKey) -> Option<(usize, SlotOf<E>)> {
        (0..WAYS).find_map(|way| {
            let s = Self::read(b.slot(p.bucket, way))?;
            (s.tag == p.tag && s.key == *flow).then_some((way, s))
        })
    }

    /// A flow's entry, if it has one.
    pub fn get(&self, flow: &FlowKey) -> Result<Option<E>> {
        Ok(self.slot(flow)?.map(|s| s.entry))
    }

    /// A flow's slot (its entry and mark), if it has one.
    pub fn slot(&self, flow: &FlowKey) -> Result<Option<SlotOf<E>>> {
        let (b, p) = self.bucket_of(flow)?;
        Ok(Self::find(&b, &p, flow).map(|(_, s)| s))
    }

    /// Writes an entry with its `mark` into its own slot, else the one `victim` picks in its
    /// bucket.
    fn write(
        &self,
        flow: &FlowKey,
        mark: u32,
        entry: &E,
        victim: impl Fn(&BucketOf<E>) -> usize,
    ) -> Result<()> {
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
            std::ptr::write_volatile(&raw mut (*slot).mark, mark);
            std::ptr::write_volatile(&raw mut (*slot).key, *flow);
            std::ptr::write_volatile(&raw mut (*slot).entry, *entry);
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
    pub fn entries(&self) -> Result<Vec<(FlowKey, E)>> {
        let mut entries = Vec::new();
        let buckets = self.shape.buckets();
        for first in (0..buckets).step_by(WALK_BUCKETS as usize) {
            let count = WALK_BUCKETS.min(buckets - first);
            let window = Buckets::<E>::map(&self.fd, first, count)?;
            for index in first..first + count {
                entries.extend(
                    (0..WAYS)
                        .filter_map(|way| Self::read(window.slot(index, way)))
                        .map(|s| (s.key, s.entry)),
                );
            }
        }
        Ok(entries)
    }
}

impl SlotTable<Conn> {
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
        self.write(flow, 0, conn, |b| conn_table::victim(b, now, &cfg))
    }

    /// Writes a template into its own slot, an empty one, or the longest unused at clock `now`
    /// ([`conn_table::oldest`]), as the datapath does.
    pub fn upsert_template(&self, key: &FlowKey, template: &Conn, now: u32) -> Result<()> {
        self.write(key, 0, template, |b| conn_table::oldest(b, now))
    }
}

impl SlotTable<ReplyEntry> {
    /// Writes an LVS/NAT flow's reply translation (keyed by the reply's own flow), ranked as
    /// an `established` connection's or not, into its own slot, or the one the datapath would
    /// give up ([`conn_table::reply_victim`] at clock `now`).
    pub fn upsert_reply(
        &self,
        reply: &FlowKey,
        value: &NatReply,
        now: u32,
        established: bool,
    ) -> Result<()> {
        let entry = ReplyEntry {
            reply: *value,
            last_seen: now,
        };
        let mark = conn_table::reply_mark(established);
        self.write(reply, mark, &entry, |b| conn_table::reply_victim(b, now))
    }
}
