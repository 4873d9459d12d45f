//! The datapath's side of the set-associative tables ([`lb_common::conn_table`]'s layout), which
//! hold the connection table (`conntrack`), the persistence templates (`persist`) and the LVS/NAT
//! reply index (`nat`): finding a key's slot in its bucket, and writing a slot that other CPUs
//! read without a lock.

use aya_ebpf::maps::Array;
use lb_common::{
    conn_table::{self, BucketOf, Entry, SlotOf, EMPTY, WAYS},
    FlowKey,
};

/// The slot holding `key`'s entry in `table`, placed at `p`, if any.
#[inline(always)]
pub fn find<E>(
    table: &Array<BucketOf<E>>,
    key: &FlowKey,
    p: conn_table::Place,
) -> Option<*mut SlotOf<E>> {
    let bucket = table.get_ptr_mut(p.bucket)?;
    // SAFETY: the pointer is into the map's value.
    let way = conn_table::find(unsafe { &*bucket }, key, p.tag)?;
    // SAFETY: as above, the way masked in bounds for the verifier.
    Some(unsafe { &raw mut (*bucket).slots[way & (WAYS - 1)] })
}

/// Starts fetching bucket `bucket` of `table` into the CPU's caches: a load nothing waits on,
/// issued before the lookup that needs the bucket, so its miss overlaps another one (the
/// connection table's) rather than following it. The tag read, so the compiler keeps the load.
#[inline(always)]
pub fn fetch<E>(table: &Array<BucketOf<E>>, bucket: u32) -> u32 {
    match table.get_ptr(bucket) {
        // SAFETY: a read of the map's value.
        Some(b) => unsafe { core::ptr::read_volatile(&raw const (*b).slots[0].tag) },
        None => 0,
    }
}

/// Whether `slot` still holds the key tagged `tag` after the caller copied from it: a writer on
/// another CPU empties the tag before it writes and sets it after ([`write`]), so a copy taken
/// across a rewrite is refused, not taken for this key's. The copy's loads come first: the
/// compiler moves no load past the barrier, and the CPU (x86) keeps loads in order.
#[inline(always)]
pub fn still<E>(slot: *const SlotOf<E>, tag: u32) -> bool {
    // SAFETY: an empty instruction sequence that may touch memory, as far as the compiler knows.
    unsafe { core::arch::asm!("", options(nostack, preserves_flags)) };
    // SAFETY: a read of the map's value.
    unsafe { core::ptr::read_volatile(&raw const (*slot).tag) == tag }
}

/// Writes an entry into a slot, with its `mark`: the tag emptied first and written last, so no
/// reader takes half of one key's entry for another's.
#[inline(always)]
pub fn write<E>(slot: &mut SlotOf<E>, key: &FlowKey, tag: u32, mark: u32, entry: E) {
    // SAFETY: stores into the map's value.
    unsafe { core::ptr::write_volatile(&mut slot.tag, EMPTY) };
    slot.mark = mark;
    slot.key = *key;
    slot.entry = entry;
    // SAFETY: as above.
    unsafe { core::ptr::write_volatile(&mut slot.tag, tag) };
}

/// Writes `key`'s entry into `table`, placed at `p`: into its own slot if it has one, else the
/// one `victim` gives up in its bucket (the templates' and the NAT replies' writes). False if
/// the bucket is not in the table.
#[inline(always)]
pub fn write_over<E: Entry>(
    table: &Array<BucketOf<E>>,
    key: &FlowKey,
    p: conn_table::Place,
    mark: u32,
    entry: &E,
    victim: impl Fn(&BucketOf<E>) -> usize,
) -> bool {
    let Some(b) = table.get_ptr_mut(p.bucket) else {
        return false;
    };
    // SAFETY: the pointer is into the map's value.
    let b = unsafe { &mut *b };
    let way = match conn_table::find(b, key, p.tag) {
        Some(way) => way,
        None => victim(b),
    };
    // The entry is read only now: held in registers across the victim's choice, it took
    // stack the callers' chains have no room for.
    write(&mut b.slots[way & (WAYS - 1)], key, p.tag, mark, *entry);
    true
}
