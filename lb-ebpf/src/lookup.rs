//! Service lookup: (VIP, port, protocol) -> service. Every new flow needs it (an established
//! one's entry names its service), so each CPU keeps the services it found last: SERVICES is a
//! kernel hash map, whose keyed hash of the 20-byte key and bucket walk took about a sixth of a
//! new flow past the SYN-flood guard, where a kept service is a few loads and compares.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
};
use lb_common::{
    addr_from_v4, vip_filter_index, Addr, CachedService, ServiceInfo, ServiceKey, MAX_SERVICES,
    SERVICE_CACHE_SLOTS, VIP_FILTER_SIZE,
};

use crate::parse::Packet;

#[map]
static SERVICES: HashMap<ServiceKey, ServiceInfo> = HashMap::with_max_entries(MAX_SERVICES, 0);

/// Bumped by the agent after every change to SERVICES (lb_common::CachedService).
#[map]
static SERVICES_GEN: Array<u64> = Array::with_max_entries(1, 0);

/// Each CPU's last services found, a slot per hash of their key (lb_common::CachedService): a
/// SYN flood's packets, all for one service, find it in one slot.
#[map]
static SERVICE_CACHE: PerCpuArray<CachedService> =
    PerCpuArray::with_max_entries(SERVICE_CACHE_SLOTS, 0);

/// 1 where some VIP ends in these 16 bits (lb_common::vip_filter_index).
#[map]
static VIP_FILTER: Array<u8> = Array::with_max_entries(VIP_FILTER_SIZE, 0);

/// Whether the address could be a VIP: most traffic that is not for a service stops here,
/// at one array read.
#[inline(always)]
pub fn may_be_vip(addr: &Addr) -> bool {
    VIP_FILTER.get(vip_filter_index(addr)).copied() == Some(1)
}

#[inline(always)]
pub fn service(pkt: &Packet) -> Option<&'static ServiceInfo> {
    service_at(addr_from_v4(pkt.dst), pkt.dport, pkt.proto)
}

/// The service of `vip`:`port` (or the VIP's port-0 service), of either family. The reference
/// is into this CPU's cache, which nothing else writes until this packet is done.
#[inline(always)]
pub fn service_at(vip: Addr, port: u16, proto: u8) -> Option<&'static ServiceInfo> {
    let key = ServiceKey {
        vip,
        port,
        proto,
        _pad: 0,
    };
    let index = xdplb_service(&key);
    if index < 0 {
        return None;
    }
    SERVICE_CACHE.get(index as u32).map(|c| &c.info)
}

/// The SERVICE_CACHE slot holding the service of `key`, filled from SERVICES if it held another
/// key or was filled before SERVICES last changed; -1 for no service (not kept: a VIP's ports
/// without a service are rare on the fast path, past the VIP prefilter). A global function: the
/// verifier checks it once, not at each of the pipeline's lookups, and it returns the slot's
/// index, a global function's result being a number.
#[no_mangle]
#[inline(never)]
pub extern "C" fn xdplb_service(key: *const ServiceKey) -> i64 {
    // SAFETY: the verifier sizes the pointer from its type; null is all it can be else.
    let Some(key) = (unsafe { key.as_ref() }) else {
        return -1;
    };
    let Some(&gen) = SERVICES_GEN.get(0) else {
        return -1;
    };
    // SAFETY: the key's 16 address bytes, read as two words whatever their alignment.
    let vip = unsafe { crate::frame::load(key.vip.as_ptr().cast::<[u64; 2]>()) };
    let port_proto = key.port as u32 | (key.proto as u32) << 16;
    let index = ((vip[1] >> 32) as u32 ^ vip[0] as u32 ^ port_proto).wrapping_mul(0x9e37_79b1)
        >> (32 - SERVICE_CACHE_SLOTS.trailing_zeros());
    let Some(slot) = SERVICE_CACHE.get_ptr_mut(index) else {
        return -1;
    };
    // SAFETY: this CPU's own slot, and XDP runs to the end on its CPU.
    let slot = unsafe { &mut *slot };
    if slot.gen == gen && slot.port_proto == port_proto && slot.vip == vip {
        return index as i64;
    }
    let Some(info) = service_in_map(key) else {
        return -1;
    };
    *slot = CachedService {
        info: *info,
        port_proto,
        gen,
        vip,
    };
    index as i64
}

#[inline(always)]
fn service_in_map(key: &ServiceKey) -> Option<&'static ServiceInfo> {
    // SAFETY: the value is only read; user space replaces entries whole.
    if let Some(s) = unsafe { SERVICES.get(key) } {
        return Some(s);
    }
    // A port-0 service takes every port of its VIP (LVS's persistent client connection).
    let any_port = ServiceKey { port: 0, ..*key };
    // SAFETY: as above.
    unsafe { SERVICES.get(any_port) }
}
