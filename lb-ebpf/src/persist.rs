//! Persistence (ipvsadm -p): a client's new connections to a persistent service go to the real
//! server its earlier ones went to, while any of them lives and for the service's timeout after
//! the last, as IPVS keeps its templates. One template per service and client address (masked
//! with the service's netmask), refreshed by every new connection of the client and by the
//! refresh of its live connections.

use aya_ebpf::{
    macros::map,
    maps::{Array, LruHashMap},
};
use lb_common::{
    mask_addr, Addr, FlowKey, Persistence, ServiceInfo, Template, TemplateKey, BPF_F_NO_COMMON_LRU,
    MAX_SERVICES, REAL_DOWN, SVC_PERSISTENT, TEMPLATES_MAX,
};

use crate::schedule;

#[map]
static PERSISTENCE: Array<Persistence> = Array::with_max_entries(MAX_SERVICES, 0);

#[map]
static TEMPLATES: LruHashMap<TemplateKey, Template> =
    LruHashMap::with_max_entries(TEMPLATES_MAX, BPF_F_NO_COMMON_LRU);

#[inline(always)]
fn key(service: u32, client: &Addr, p: &Persistence) -> TemplateKey {
    TemplateKey {
        service,
        client: mask_addr(client, &p.mask),
    }
}

/// The real server a persistent service's template gives this client, if the template is alive
/// and its real server still takes persistent clients (configured and up; a drained one does).
#[inline(always)]
pub fn template(service: &ServiceInfo, flow: &FlowKey, now: u32) -> Option<u32> {
    if service.flags & SVC_PERSISTENT == 0 {
        return None;
    }
    let p = PERSISTENCE.get(service.id)?;
    let t = TEMPLATES.get_ptr_mut(key(service.id, &flow.src, p))?;
    // SAFETY: the pointer is into the map's value; a lost timestamp update is harmless.
    let t = unsafe { &mut *t };
    if now.wrapping_sub(t.last_seen) > p.timeout {
        return None;
    }
    let real = schedule::real(service.id, t.real)?;
    if real.flags & REAL_DOWN != 0 {
        return None;
    }
    t.last_seen = now;
    Some(t.real)
}

/// Remembers where a persistent service sent this client.
#[inline(always)]
pub fn remember(service: &ServiceInfo, flow: &FlowKey, real: u32, now: u32) {
    if service.flags & SVC_PERSISTENT == 0 {
        return;
    }
    if let Some(p) = PERSISTENCE.get(service.id) {
        let t = Template {
            real,
            last_seen: now,
        };
        let _ = TEMPLATES.insert(key(service.id, &flow.src, p), t, 0);
    }
}

/// A live connection of this client was refreshed: its template lives on.
#[inline(always)]
pub fn touch(service: u32, client: &Addr, now: u32) {
    let Some(p) = PERSISTENCE.get(service) else {
        return;
    };
    if p.timeout == 0 {
        return;
    }
    if let Some(t) = TEMPLATES.get_ptr_mut(key(service, client, p)) {
        // SAFETY: as above.
        unsafe { (*t).last_seen = now };
    }
}
