//! Persistence (ipvsadm -p): a client's new connections to a persistent service go to the real
//! server its earlier ones went to, while any of them lives and for the service's timeout after
//! the last, as IPVS keeps its templates. One template per service and client address (masked
//! with the service's netmask), refreshed by every new connection of the client and by the
//! refresh of its live connections. The templates live in a table of the connection table's
//! layout ([`conn_table`]): one keyed hash, one bucket of four slots, nothing to allocate.

use aya_ebpf::{
    macros::map,
    maps::{Array, PerCpuArray},
};
use lb_common::{
    conn_table::{self, Bucket, Slot, TEMPLATE_BUCKETS},
    Conn, FlowKey, Persistence, ServiceInfo, TemplateKey, MAP_MMAPABLE, MAX_SERVICES, REAL_DOWN,
    SVC_PERSISTENT,
};

use crate::{schedule, slots};

#[map]
static PERSISTENCE: Array<Persistence> = Array::with_max_entries(MAX_SERVICES, 0);

/// Memory-mapped, as the connection table, for the agent's walks.
#[map]
static TEMPLATE_TABLE: Array<Bucket> =
    Array::with_max_entries(conn_table::map_entries(TEMPLATE_BUCKETS), MAP_MMAPABLE);

/// The table's hash secret, set at load ([`conn_table::TEMPLATE_SEED_GLOBAL`]).
#[no_mangle]
static TEMPLATE_SEED: u64 = 0;

/// The key of `flow`'s client's template in the table.
#[inline(always)]
fn key(service: u32, flow: &FlowKey, p: &Persistence) -> FlowKey {
    TemplateKey::flow_key_of(service, flow, p)
}

/// The template key this CPU placed last, and its place: a persistent client's SYN places its
/// key three times (the fetch, the lookup, the write), where one keyed hash does. The seed is
/// the program's for its life, so the place stays right for the key whatever packet wrote it.
#[repr(C)]
struct Placed {
    key: FlowKey,
    place: conn_table::Place,
}

#[map]
static PLACED: PerCpuArray<Placed> = PerCpuArray::with_max_entries(1, 0);

/// A template's bucket and tag.
#[inline(always)]
fn place(key: &FlowKey) -> conn_table::Place {
    let Some(last) = PLACED.get_ptr_mut(0) else {
        return hash(key);
    };
    // SAFETY: this CPU's own value; its XDP programs never run two at a time.
    let last = unsafe { &mut *last };
    // A tag is never 0 but in the value the map starts with: an all-zero key (service 0, a
    // mask of 0) is not placed at bucket 0 by it.
    if last.place.tag != 0 && conn_table::same(&last.key, key) {
        return last.place;
    }
    let at = hash(key);
    last.key = *key;
    last.place = at;
    at
}

/// A template's bucket and tag, hashed.
#[inline(always)]
fn hash(key: &FlowKey) -> conn_table::Place {
    // SAFETY: a read of a plain global; volatile so the compiler does not fold its default.
    let seed = unsafe { core::ptr::read_volatile(&TEMPLATE_SEED) };
    conn_table::place(key, seed, TEMPLATE_BUCKETS - 1)
}

/// The slot holding the template of `flow`'s client for `service`, if any, and its tag.
#[inline(always)]
fn slot(service: u32, flow: &FlowKey, p: &Persistence) -> Option<(*mut Slot, u32)> {
    let key = key(service, flow, p);
    let at = place(&key);
    Some((slots::find(&TEMPLATE_TABLE, &key, at)?, at.tag))
}

/// The real server a persistent service's template gives this client, if the template is alive
/// and its real server still takes persistent clients (configured and up; a drained one does).
#[inline(always)]
pub fn template(service: &ServiceInfo, flow: &FlowKey, now: u32) -> Option<u32> {
    if service.flags & SVC_PERSISTENT == 0 {
        return None;
    }
    let p = PERSISTENCE.get(service.id)?;
    let (slot, tag) = slot(service.id, flow, p)?;
    // SAFETY: reads of the map's value.
    let (id, last_seen) = unsafe { ((*slot).entry.real, (*slot).entry.last_seen) };
    // Another client's template may be written over this one on another CPU (a new client
    // pushing out the longest unused): a real server read across that is not this client's.
    if !slots::still(slot, tag) || now.wrapping_sub(last_seen) > p.timeout {
        return None;
    }
    let real = schedule::real(service.id, id)?;
    if real.flags & REAL_DOWN != 0 {
        return None;
    }
    // SAFETY: the pointer is into the map's value; a lost timestamp update is harmless.
    unsafe { (*slot).entry.last_seen = now };
    Some(id)
}

/// Starts fetching the bucket of this client's template in a persistent `service`
/// ([`slots::fetch`]), and the connection table's bucket of `flow` right before it: the two
/// misses come in together, where the table's, issued by its lookup a stage later, would
/// otherwise still be on its way when the template's is back (the connection table's hash is
/// computed once more for it; only a persistent service's SYNs pay that). A global function (see
/// build.rs): xdplb's stack has no room for it inline.
#[no_mangle]
#[inline(never)]
pub extern "C" fn xdplb_template_fetch(flow: *const FlowKey, service: u32) -> u32 {
    // SAFETY: the verifier sizes the pointer from its type; null is all it can be else.
    let Some(flow) = (unsafe { flow.as_ref() }) else {
        return 0;
    };
    let Some(p) = PERSISTENCE.get(service) else {
        return 0;
    };
    let conn = crate::conntrack::fetch(flow);
    conn ^ slots::fetch(&TEMPLATE_TABLE, place(&key(service, flow, p)).bucket)
}

/// Remembers where a persistent service sent this client.
#[inline(always)]
pub fn remember(service: &ServiceInfo, flow: &FlowKey, real: u32, now: u32) {
    if service.flags & SVC_PERSISTENT == 0 {
        return;
    }
    if let Some(p) = PERSISTENCE.get(service.id) {
        let _ = xdplb_template_write(&key(service.id, flow, p), service.id, real, now);
    }
}

/// Writes `service`'s template `key` (1; 0 if it could not): into its own slot if it has one,
/// else an empty one, else the longest unused ([`conn_table::oldest`]). A global function (see
/// build.rs), as the connection table's write: the verifier checks it once, not for every state
/// of the new-flow path.
#[no_mangle]
#[inline(never)]
pub extern "C" fn xdplb_template_write(
    key: *const FlowKey,
    service: u32,
    real: u32,
    now: u32,
) -> u32 {
    // SAFETY: the verifier sizes the pointer from its type; null is all it can be else.
    let Some(key) = (unsafe { key.as_ref() }) else {
        return 0;
    };
    let template = Conn {
        real,
        service,
        last_seen: now,
        flags: 0,
    };
    let oldest = |b: &Bucket| conn_table::oldest(b, now);
    slots::write_over(&TEMPLATE_TABLE, key, place(key), 0, &template, oldest) as u32
}

/// A live connection of `flow`'s client was refreshed: its template lives on.
#[inline(always)]
pub fn touch(service: u32, flow: &FlowKey, now: u32) {
    let Some(p) = PERSISTENCE.get(service) else {
        return;
    };
    if p.timeout == 0 {
        return;
    }
    if let Some((t, _)) = slot(service, flow, p) {
        // SAFETY: as above.
        unsafe { (*t).entry.last_seen = now };
    }
}
