//! The datapath's side of the set-associative tables ([`lb_common::conn_table`]'s layout), which
//! hold the connection table (`conntrack`) and the persistence templates (`persist`): finding a
//! key's slot in its bucket, and writing a slot that other CPUs read without a lock.

use aya_ebpf::maps::Array;
use lb_common::{
    conn_table::{self, Bucket, Slot, EMPTY, WAYS},
    Conn, FlowKey,
};

/// The slot holding `key`'s entry in `table`, placed at `p`, if any.
#[inline(always)]
pub fn find(table: &Array<Bucket>, key: &FlowKey, p: conn_table::Place) -> Option<*mut Slot> {
    let bucket = table.get_ptr_mut(p.bucket)?;
    // SAFETY: the pointer is into the map's value.
    let way = conn_table::find(unsafe { &*bucket }, key, p.tag)?;
    // SAFETY: as above, the way masked in bounds for the verifier.
    Some(unsafe { &raw mut (*bucket).slots[way & (WAYS - 1)] })
}

/// Writes an entry into a slot: the tag emptied first and written last, so no reader takes half
/// of one key's entry for another's.
#[inline(always)]
pub fn write(slot: &mut Slot, key: &FlowKey, tag: u32, conn: Conn) {
    // SAFETY: stores into the map's value.
    unsafe { core::ptr::write_volatile(&mut slot.tag, EMPTY) };
    slot.mark = 0;
    slot.key = *key;
    slot.conn = conn;
    // SAFETY: as above.
    unsafe { core::ptr::write_volatile(&mut slot.tag, tag) };
}
