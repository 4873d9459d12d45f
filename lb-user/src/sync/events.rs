//! The datapath's flow events (its ring buffer) turned into records for the peers, packed into
//! datagrams and sent as soon as the ring is drained.

use std::sync::Arc;

use lb_common::{SyncEvent, SYNC_CLOSE};
use tracing::warn;

use super::{
    record_of,
    wire::{self, Body, Op},
    Shared,
};

/// Datapath events -> records -> datagrams, as soon as the ring is drained.
pub(super) async fn forward(shared: Arc<Shared>, ring: aya::maps::RingBuf<aya::maps::MapData>) {
    // SAFETY: the ring buffer owns its descriptor and lives inside the AsyncFd.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE)
    };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            warn!(
                "connection sync: cannot watch the datapath's events: {}",
                e.into_parts().1
            );
            return;
        }
    };
    loop {
        let Ok(mut guard) = fd.readable_mut().await else {
            return;
        };
        let directory = shared.directory.read().unwrap().clone();
        let now = crate::datapath::clock::monotonic_ns();
        let mut records = Vec::new();
        let mut unnamed = 0;
        {
            let ring = guard.get_inner_mut();
            while let Some(item) = ring.next() {
                if item.len() < std::mem::size_of::<SyncEvent>() {
                    continue;
                }
                let ev: SyncEvent =
                    bytemuck::pod_read_unaligned(&item[..std::mem::size_of::<SyncEvent>()]);
                let op = if ev.kind == SYNC_CLOSE {
                    Op::Close
                } else {
                    Op::Bind
                };
                let age = (now.saturating_sub(ev.ktime) / 1000).min(u32::MAX as u64) as u32;
                match record_of(&directory, &ev.flow, ev.service, ev.real, op, ev.flags, age) {
                    Some(r) => records.push(r),
                    None => unnamed += 1,
                }
            }
        }
        guard.clear_ready();
        if unnamed > 0 {
            shared.inner.lock().unwrap().events_unnamed += unnamed;
        }
        for chunk in wire::pack(&records, wire::MAX_DATAGRAM) {
            let datagram = shared.encode(Body::Flows(chunk.to_vec()), 0);
            shared.send_all(&datagram, chunk.len() as u64).await;
        }
    }
}
