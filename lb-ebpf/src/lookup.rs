//! Service lookup: (VIP, port, protocol) -> service.

use aya_ebpf::{macros::map, maps::HashMap};
use lb_common::{addr_from_v4, ServiceInfo, ServiceKey, MAX_SERVICES};

use crate::parse::Packet;

#[map]
static SERVICES: HashMap<ServiceKey, ServiceInfo> = HashMap::with_max_entries(MAX_SERVICES, 0);

#[inline(always)]
pub fn service(pkt: &Packet) -> Option<&'static ServiceInfo> {
    let key = ServiceKey {
        vip: addr_from_v4(pkt.dst),
        port: pkt.dport,
        proto: pkt.proto,
        _pad: 0,
    };
    // SAFETY: the value is only read; user space replaces entries whole.
    unsafe { SERVICES.get(key) }
}
