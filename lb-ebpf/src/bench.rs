//! The benchmark wrapper: BPF_PROG_TEST_RUN with repeat does not restore the packet between
//! iterations, so a program that changes it (encapsulation) or must see a new flow each time
//! (connection-table insert) is measured behind this wrapper, which rewrites the frame from a
//! template and then tail-calls it. The wrapper's own cost is measured the same way, with a bare
//! XDP_TX program behind it, and subtracted. Never attached to an interface.

use aya_ebpf::{
    bindings::xdp_action::XDP_ABORTED,
    macros::map,
    maps::{Array, PerCpuArray, ProgramArray},
    programs::XdpContext,
};
use lb_common::{addr_from_v4, BenchFrame, BENCH_FRAME_MAX};

use crate::{
    ether::adjust_head,
    parse::{self, ptr_at},
    parse6, route,
};

#[map]
static BENCH_FRAME: Array<BenchFrame> = Array::with_max_entries(1, 0);

#[map]
static BENCH_PROGS: ProgramArray = ProgramArray::with_max_entries(1, 0);

#[map]
static BENCH_SEQ: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// The bare forwarder's MAC addresses: destination then source.
#[map]
static BENCH_FWD: Array<[u8; 12]> = Array::with_max_entries(1, 0);

/// The bare forwarder: rewrites the two MAC addresses and sends the frame back out.
#[inline(always)]
pub fn forward(ctx: &XdpContext) -> u32 {
    let (Some(macs), Some(eth)) = (BENCH_FWD.get(0), ptr_at::<[u8; 12]>(ctx, 0)) else {
        return aya_ebpf::bindings::xdp_action::XDP_PASS;
    };
    // SAFETY: bounds-checked by ptr_at.
    unsafe { eth.write_unaligned(*macs) };
    aya_ebpf::bindings::xdp_action::XDP_TX
}

/// The kernel's FIB lookup alone, as a LVS/NAT reply makes it toward its client (the frame's
/// destination, from its source; either family): XDP_TX if it found a next hop, the frame left
/// as it is. What the helper costs is the kernel's; the NAT replies' budgets count it.
#[inline(always)]
pub fn fib(ctx: &XdpContext) -> u32 {
    let Ok((l3, ethertype)) = parse::l3(ctx) else {
        return XDP_ABORTED;
    };
    let (src, dst, tot_len) = if ethertype == parse::ETH_P_IPV4 {
        let Some(ip) = parse::read::<[u8; 20]>(ctx, l3) else {
            return XDP_ABORTED;
        };
        let tot_len = parse::be16([ip[2], ip[3]]);
        let (src, dst) = (
            [ip[12], ip[13], ip[14], ip[15]],
            [ip[16], ip[17], ip[18], ip[19]],
        );
        (addr_from_v4(src), addr_from_v4(dst), tot_len)
    } else {
        let Some(ip) = parse6::fixed6(ctx, l3) else {
            return XDP_ABORTED;
        };
        (ip.src, ip.dst, ip.tot_len)
    };
    match route::fib(ctx, &src, &dst, tot_len) {
        Ok(_) => aya_ebpf::bindings::xdp_action::XDP_TX,
        Err(_) => XDP_ABORTED,
    }
}

const CHUNK: usize = 8;

/// Updates the 16-bit checksum at `at` (if it is in the frame) for 4 bytes changed from `old`
/// to `new` (RFC 1624), so the IPv4 header of a varied frame stays right.
#[inline(always)]
fn fix_checksum(ctx: &XdpContext, at: usize, old: &[u8], new: [u8; 4]) {
    if at > BENCH_FRAME_MAX - 2 || old.len() < 4 {
        return;
    }
    let Some(field) = ptr_at::<[u8; 2]>(ctx, at) else {
        return;
    };
    let word = |b: &[u8], i: usize| u32::from(u16::from_be_bytes([b[i], b[i + 1]]));
    // SAFETY: bounds-checked by ptr_at.
    let check = u16::from_be_bytes(unsafe { field.read_unaligned() });
    let mut sum = u32::from(!check)
        + (!word(old, 0) & 0xffff)
        + (!word(old, 2) & 0xffff)
        + word(&new, 0)
        + word(&new, 2);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    // SAFETY: as above.
    unsafe { field.write_unaligned((!(sum as u16)).to_be_bytes()) };
}

#[inline(always)]
pub fn run(ctx: &XdpContext) -> u32 {
    let Some(frame) = BENCH_FRAME.get(0) else {
        return XDP_ABORTED;
    };
    let want = frame.len as usize;
    let have = ctx.data_end() - ctx.data();
    if want > BENCH_FRAME_MAX || (have != want && !adjust_head(ctx, have as i32 - want as i32)) {
        return XDP_ABORTED;
    }
    // Copy the template 8 bytes at a time; a frame length is a multiple of 8 or the tail is
    // copied by the last, overlapping chunk.
    let mut off = 0;
    while off < BENCH_FRAME_MAX {
        if off >= want {
            break;
        }
        let at = if off + CHUNK > want {
            want - CHUNK
        } else {
            off
        };
        let (Some(dst), Some(src)) = (
            ptr_at::<[u8; CHUNK]>(ctx, at),
            frame.bytes.get(at..at + CHUNK),
        ) else {
            return XDP_ABORTED;
        };
        let mut chunk = [0u8; CHUNK];
        chunk.copy_from_slice(src);
        // SAFETY: bounds-checked by ptr_at.
        unsafe { dst.write_unaligned(chunk) };
        off += CHUNK;
    }
    // A bounded offset, so the verifier can check the write (u32::MAX, "none", fails the test).
    let vary_at = frame.vary_at as usize;
    if vary_at <= BENCH_FRAME_MAX - 4 {
        if let (Some(seq), Some(at), Some(old)) = (
            BENCH_SEQ.get_ptr_mut(0),
            ptr_at::<[u8; 4]>(ctx, vary_at),
            frame.bytes.get(vary_at..vary_at + 4),
        ) {
            // SAFETY: per-CPU counter; bounds-checked packet pointer.
            let new = unsafe {
                *seq = (*seq).wrapping_add(1);
                // The first byte stays the template's: an IPv4 source stays one a client can
                // have (not 0.0.0.0/8), which the datapath checks.
                let new = ((*seq & 0x00ff_ffff) | (u32::from(old[0]) << 24)).to_be_bytes();
                at.write_unaligned(new);
                new
            };
            fix_checksum(ctx, frame.csum_at as usize, old, new);
        }
    }
    // SAFETY: index 0 holds an XDP program; on failure the call returns and we abort.
    unsafe { BENCH_PROGS.tail_call(ctx, 0) };
    XDP_ABORTED
}
