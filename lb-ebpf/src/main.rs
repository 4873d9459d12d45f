//! The xdplb datapath: an XDP program that forwards packets for virtual services to real servers.
//!
//! One module per stage, in the order a packet goes through them:
//! parse -> lookup (service; `host`: is the frame for this host?) -> conntrack (established
//! flow?) -> schedule (new flow: real server) -> forward (LVS/DR, or LVS/TUN by `encap`; `icmp`
//! when it does not fit) -> stats. `sync` hands new and closing flows to the agent, which tells
//! the other directors.
//! `xdp_decap` is the real-server side of LVS/TUN.
// Built for bpfel-unknown-none by lb-user's build script; on the host (cargo clippy --workspace)
// it is an ordinary empty program so the same sources are still checked.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// Atomic adds (connection counts): the BPF target has no atomic types.
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

mod bench;
mod config;
mod conntrack;
mod counts;
mod encap;
mod ether;
mod forward;
mod host;
mod icmp;
mod lookup;
mod parse;
mod persist;
mod pktgen;
mod schedule;
mod stats;
mod sync;

use aya_ebpf::{
    bindings::xdp_action::{XDP_PASS, XDP_TX},
    macros::xdp,
    programs::XdpContext,
};
use aya_log_ebpf::debug;
use lb_common::{Reason, FWD_TUN};

use crate::parse::{Parsed, TCP_FLAG_RST};

#[xdp]
pub fn xdplb(ctx: XdpContext) -> u32 {
    let frame_len = (ctx.data_end() - ctx.data()) as u64;
    let pkt = match parse::parse(&ctx) {
        Parsed::Packet(p) => p,
        Parsed::Pass(reason) => return stats::pass(reason, frame_len),
    };
    if !lookup::may_be_vip(&pkt) {
        return stats::pass(Reason::PassNoService, frame_len);
    }
    let Some(config) = config::get() else {
        return stats::pass(Reason::PassNoService, frame_len);
    };
    match host::owner(&ctx, config) {
        host::Owner::Local => {}
        host::Owner::Other => return stats::pass(Reason::PassOtherHost, frame_len),
        // A backup's virtual MAC: dropped if it is for a service, so the kernel (which may just
        // have been given the VIP) never resets a connection this director is about to take.
        host::Owner::Standby => {
            return match lookup::service(&pkt) {
                Some(_) => stats::drop(Reason::DropStandby, frame_len),
                None => stats::pass(Reason::PassOtherHost, frame_len),
            }
        }
    }
    let flow = conntrack::flow(&pkt);
    let flags = parse::tcp_flags(&ctx, &pkt);
    let now = conntrack::now();
    // An established flow goes straight to its real server: the flow already names the service,
    // so the service lookup is only for new flows.
    let known = conntrack::established(&flow, flags, now, config)
        .and_then(|(svc, id)| Some((svc, id, schedule::real(svc, id)?)));
    let (service_id, real_id, real, new_flow) = match known {
        Some((svc, id, real)) => {
            if !parse::is_whole(&ctx, &pkt) {
                return stats::drop(Reason::DropMalformed, frame_len);
            }
            (svc, id, real, false)
        }
        None => {
            let Some(service) = lookup::service(&pkt) else {
                return stats::pass(Reason::PassNoService, frame_len);
            };
            // Only now, with a service at stake, is a damaged packet worth a drop, not a pass.
            if !parse::is_whole(&ctx, &pkt) {
                return stats::drop(Reason::DropMalformed, frame_len);
            }
            // A persistent client goes where its template says; else the scheduler decides.
            let id = match persist::template(service, &flow, now) {
                Some(id) => Some(id),
                None => schedule::pick(service, &flow),
            };
            let Some(id) = id else {
                debug!(
                    &ctx,
                    "no real server for {:i}:{}",
                    u32::from_be_bytes(pkt.src),
                    flow.sport
                );
                return stats::drop(Reason::DropNoReal, frame_len);
            };
            let Some(real) = schedule::real(service.id, id) else {
                return stats::drop(Reason::DropNoReal, frame_len);
            };
            if flags & TCP_FLAG_RST == 0 {
                conntrack::insert(&flow, service.id, id, flags, now, config);
                persist::remember(service, &flow, id, now);
            }
            debug!(
                &ctx,
                "new flow {:i}:{} -> real server {}",
                u32::from_be_bytes(pkt.src),
                flow.sport,
                id
            );
            (service.id, id, real, true)
        }
    };
    if flags & TCP_FLAG_RST != 0 {
        conntrack::close(&flow, service_id, real_id, !new_flow, config);
    }
    if real.method == FWD_TUN {
        match encap::ipip(&ctx, &pkt, config, real) {
            Ok(()) => {}
            Err(Reason::TxFragNeeded) if icmp::frag_needed(&ctx, &pkt, config) => {
                return stats::tx(Reason::TxFragNeeded, frame_len);
            }
            Err(Reason::TxFragNeeded) => return stats::drop(Reason::DropNoRoom, frame_len),
            Err(reason) => return stats::drop(reason, frame_len),
        }
    } else if !forward::direct_route(&ctx, config, real) {
        return stats::drop(Reason::DropMalformed, frame_len);
    }
    stats::forwarded(service_id, real_id, frame_len, new_flow);
    XDP_TX
}

/// Benchmarks only: restores a template frame each iteration, then tail-calls the program under
/// test (see bench.rs).
#[xdp]
pub fn xdp_bench(ctx: XdpContext) -> u32 {
    bench::run(&ctx)
}

/// The real-server side of LVS/TUN (`xdplb decap`): opens IPIP packets for this host's VIPs.
#[xdp]
pub fn xdp_decap(ctx: XdpContext) -> u32 {
    encap::decap(&ctx)
}

/// Hands every frame to the kernel. A veth only delivers frames another XDP program sent into it
/// with XDP_TX when its own end has an XDP program too; this is that program.
#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

/// Sends every frame back out unchanged: the "bare XDP_TX" baseline benchmarks compare against.
#[xdp]
pub fn xdp_tx(_ctx: XdpContext) -> u32 {
    XDP_TX
}

/// Benchmarks only: the bare forwarder the director is compared with (see bench.rs).
#[xdp]
pub fn xdp_fwd(ctx: XdpContext) -> u32 {
    bench::forward(&ctx)
}

/// Packet generator (`xdplb pktgen`), run in BPF_PROG_TEST_RUN live-frames mode: gives each
/// frame the source address and port of the next flow and sends it with XDP_TX (see pktgen.rs).
#[xdp]
pub fn xdp_pktgen(ctx: XdpContext) -> u32 {
    pktgen::generate(&ctx)
}

/// Counting sink: counts packets and bytes per CPU, then drops them (passes them with SINK_PASS).
#[xdp]
pub fn xdp_count(ctx: XdpContext) -> u32 {
    pktgen::count(&ctx)
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(all(not(test), target_arch = "bpf"))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
