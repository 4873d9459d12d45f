//! Service lookup: (VIP, port, protocol) -> service.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap},
};
use lb_common::{
    addr_from_v4, vip_filter_index, Addr, ServiceInfo, ServiceKey, MAX_SERVICES, VIP_FILTER_SIZE,
};

use crate::parse::Packet;

#[map]
static SERVICES: HashMap<ServiceKey, ServiceInfo> = HashMap::with_max_entries(MAX_SERVICES, 0);

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

/// The service of `vip`:`port` (or the VIP's port-0 service), of either family.
#[inline(always)]
pub fn service_at(vip: Addr, port: u16, proto: u8) -> Option<&'static ServiceInfo> {
    let key = ServiceKey {
        vip,
        port,
        proto,
        _pad: 0,
    };
    // SAFETY: the value is only read; user space replaces entries whole.
    if let Some(s) = unsafe { SERVICES.get(key) } {
        return Some(s);
    }
    // A port-0 service takes every port of its VIP (LVS's persistent client connection).
    let any_port = ServiceKey { port: 0, ..key };
    // SAFETY: as above.
    unsafe { SERVICES.get(any_port) }
}
