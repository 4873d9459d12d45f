//! The datapath's flow events (its rings, read every millisecond) turned into records for the
//! peers, packed into datagrams and sent as soon as they are read.

use std::{sync::Arc, time::Duration};

use lb_common::SYNC_CLOSE;
use tokio::time::MissedTickBehavior;

use super::{
    record_of,
    wire::{self, Body, Op},
    Shared,
};
use crate::datapath::SyncRing;

/// How often the rings are read: the datapath writes without waking anyone (a wakeup would
/// cost it an interrupt per event when the agent keeps up), so the agent looks. A millisecond
/// adds at most that to a flow's sync delay and costs the agent nothing it can measure.
const READ_INTERVAL: Duration = Duration::from_millis(1);

/// Datapath events -> records -> datagrams, every [`READ_INTERVAL`].
pub(super) async fn forward(shared: Arc<Shared>, mut ring: SyncRing) {
    let mut tick = tokio::time::interval(READ_INTERVAL);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let directory = shared.directory.read().unwrap().clone();
        let now = crate::datapath::clock::monotonic_ns();
        let mut records = Vec::new();
        let mut unnamed = 0;
        ring.drain(|ev, when| {
            let op = if ev.kind == SYNC_CLOSE {
                Op::Close
            } else {
                Op::Bind
            };
            let age = (now.saturating_sub(when) / 1000).min(u32::MAX as u64) as u32;
            match record_of(&directory, &ev.flow, ev.service, ev.real, op, ev.flags, age) {
                Some(r) => records.push(r),
                None => unnamed += 1,
            }
        });
        if unnamed > 0 {
            shared.inner.lock().unwrap().events_unnamed += unnamed;
        }
        for chunk in wire::pack(&records, wire::MAX_DATAGRAM) {
            let datagram = shared.encode(Body::Flows(chunk.to_vec()), 0);
            shared.send_all(&datagram, chunk.len() as u64).await;
        }
    }
}
