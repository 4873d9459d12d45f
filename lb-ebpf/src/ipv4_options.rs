//! IPv4 options of a packet for a service, checked as the kernel checks them before IPVS sees
//! the packet (ip_options_compile, and the refusal of source routes that Linux applies unless
//! accept_source_route is set). A walk over options of any length does not fit in the
//! director's program (the verifier's limit), so it is a program of its own: a packet with
//! options goes to `xdplb_ip_options`, which marks it (per CPU) with its verdict and calls the
//! director's program again; that finds the mark and goes on, and its check stage drops the
//! packet if the options were refused and a service is at stake. `xdplb` hands such a packet to
//! the checker before its pipeline runs ([`check_first`]), so the pipeline runs once for it.
//! Packets without options, nearly all, pay two compares.

use aya_ebpf::{
    macros::map,
    maps::{PerCpuArray, ProgramArray},
    programs::XdpContext,
};
use lb_common::{
    ipv4::HEADER_LEN as IPV4_MIN_HLEN, Reason, IPV4_PROG_DIRECTOR, IPV4_PROG_OPTIONS,
    IPV4_PROG_SLOTS,
};

use crate::parse::{self, Packet};

/// The checker (`xdplb_ip_options`) and the director's program (`xdplb`), set by the agent.
#[map]
static IPV4_PROGS: ProgramArray = ProgramArray::with_max_entries(IPV4_PROG_SLOTS, 0);

/// The checker's verdict on a packet, read (and cleared) by the check stage of the program it
/// calls back on the same CPU: the packet's fingerprint if it passed, its complement if refused
/// (see [`marks`]); 0 when none.
#[map]
static OPTIONS_CHECKED: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Longest options: a 60-byte header's.
const MAX_OPTIONS: usize = 40;
/// The copy's size: a power of two past [`MAX_OPTIONS`], so an index masked by `COPY - 1`
/// is one the verifier can see is inside it.
const COPY: usize = 64;
const IPOPT_END: u8 = 0;
const IPOPT_NOOP: u8 = 1;
const IPOPT_RR: u8 = 7;
const IPOPT_TIMESTAMP: u8 = 68;
const IPOPT_LSRR: u8 = 131;
const IPOPT_CIPSO: u8 = 134;
const IPOPT_SSRR: u8 = 137;
const IPOPT_RA: u8 = 148;
/// Timestamp flags that take an address with each time.
const IPOPT_TS_TSANDADDR: u8 = 1;
const IPOPT_TS_PRESPEC: u8 = 3;
/// The shortest CIPSO option: type, length, a 4-byte DOI, a tag's type and length.
const CIPSO_MIN_LEN: u8 = 8;

/// Whether the packet at `l3_off` has options. The header's length read again, as a value the
/// verifier does not tie to the packet's transport offset: branching on that would split every
/// later state in two (with and without options), which puts the director's program over the
/// verifier's limit.
#[inline(always)]
fn has_options(ctx: &XdpContext, l3_off: usize) -> bool {
    let Some(first) = parse::ptr_at::<u8>(ctx, l3_off) else {
        return true;
    };
    // SAFETY: inside the frame (ptr_at); volatile so it is not the earlier read's value.
    unsafe { core::ptr::read_volatile(first) & 0x0f != (IPV4_MIN_HLEN / 4) as u8 }
}

/// Before `xdplb`'s pipeline: hands a packet with options to the checker, unless the checker
/// has marked it already (this is the pipeline's run after it), so that the pipeline runs once
/// for it, after the checker, not up to its check stage and then again. False only if the
/// checker is not there: the caller drops the packet (nothing goes on with unchecked options,
/// and a pipeline that went on past a failed hand-off would be two for the verifier).
#[inline(always)]
pub fn check_first(ctx: &XdpContext, pkt: &Packet) -> bool {
    if !has_options(ctx, pkt.l3_off) {
        return true;
    }
    let Some(mark) = OPTIONS_CHECKED.get(0) else {
        return false;
    };
    if marks(*mark, fingerprint(ctx, pkt.l3_off)) {
        return true;
    }
    // SAFETY: a tail call; it does not return when it succeeds.
    unsafe { IPV4_PROGS.tail_call(ctx, IPV4_PROG_OPTIONS) };
    false
}

/// Ok if `pkt` has no options or the checker passed them, an error if it refused them;
/// otherwise hands the packet to the checker, and returns (an error) only if that is not
/// there: unchecked options never go on.
#[inline(always)]
pub fn checked(ctx: &XdpContext, pkt: &Packet) -> Result<(), Reason> {
    if !has_options(ctx, pkt.l3_off) {
        return Ok(());
    }
    let Some(mark) = OPTIONS_CHECKED.get_ptr_mut(0) else {
        return Err(Reason::DropBadOptions);
    };
    let fingerprint = fingerprint(ctx, pkt.l3_off);
    // SAFETY: a per-CPU slot, and XDP does not preempt itself on a CPU; a tail call does not
    // return when it succeeds.
    unsafe {
        let m = *mark;
        // Taken once: the same packet seen again (a retransmission) is checked again.
        *mark = 0;
        if m == fingerprint {
            return Ok(());
        }
        if m == !fingerprint {
            return Err(Reason::DropBadOptions);
        }
        IPV4_PROGS.tail_call(ctx, IPV4_PROG_OPTIONS);
    }
    Err(Reason::DropBadOptions)
}

/// After the checker: marks the packet with its verdict (`refused`) and continues with the
/// director's program, whose check stage acts on it; returns only if that is not there.
#[inline(always)]
pub fn back_to_director(ctx: &XdpContext, refused: bool) {
    let Some(l3_off) = parse::ipv4_offset(ctx).ok() else {
        return;
    };
    let Some(mark) = OPTIONS_CHECKED.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: as in `checked`.
    unsafe {
        let fingerprint = fingerprint(ctx, l3_off);
        *mark = if refused { !fingerprint } else { fingerprint };
        IPV4_PROGS.tail_call(ctx, IPV4_PROG_DIRECTOR);
        *mark = 0;
    }
}

/// Whether `mark` is the checker's verdict on the packet of this fingerprint: the fingerprint
/// itself (passed; the mark's only form before refusals were marked too, so a checker and a
/// director of the two versions agree during an upgrade) or its complement (refused; a
/// fingerprint's lowest bit is set, a complement's clear).
#[inline(always)]
fn marks(mark: u64, fingerprint: u64) -> bool {
    mark == fingerprint || mark == !fingerprint
}

/// Tells this packet from the next one on the CPU: its length, and its IPv4 header after the
/// total length (identification, fragment field, TTL, protocol, checksum, addresses). The
/// checksum covers the options: the same fingerprint with other options is a packet the
/// checksum test drops. Its lowest bit is set: never 0.
#[inline(always)]
fn fingerprint(ctx: &XdpContext, l3_off: usize) -> u64 {
    let [a, b] = parse::read::<[u64; 2]>(ctx, l3_off + 4).unwrap_or([0; 2]);
    let len = (ctx.data_end() - ctx.data()) as u64;
    (a ^ b.rotate_left(17) ^ len) | 1
}

/// The options of the IPv4 packet in the frame, checked: each well formed (its length within
/// the header and at least its kind's, its pointer where RFC 791 puts it), record route, the
/// timestamp and CIPSO at most once, and no source route.
#[inline(always)]
pub fn check(ctx: &XdpContext) -> Result<(), Reason> {
    let options = copy(ctx).ok_or(Reason::DropMalformed)?;
    if well_formed(&options) {
        Ok(())
    } else {
        Err(Reason::DropBadOptions)
    }
}

/// The options area, copied out of the header a word at a time (its length is a multiple of
/// 4), with its length; the rest of the copy is zero (IPOPT_END).
struct Options {
    bytes: [u8; COPY],
    len: usize,
}

#[inline(always)]
fn copy(ctx: &XdpContext) -> Option<Options> {
    let l3_off = parse::ipv4_offset(ctx).ok()?;
    let first = parse::read::<u8>(ctx, l3_off)?;
    let len = ((first & 0x0f) as usize * 4).checked_sub(IPV4_MIN_HLEN)?;
    let mut options = Options {
        bytes: [0; COPY],
        len,
    };
    let mut i = 0;
    while i < MAX_OPTIONS / 4 {
        if i * 4 >= len {
            break;
        }
        let word = parse::read::<[u8; 4]>(ctx, l3_off + IPV4_MIN_HLEN + i * 4)?;
        options.bytes[i * 4..i * 4 + 4].copy_from_slice(&word);
        i += 1;
    }
    Some(options)
}

/// Where the walk stands between two byte positions: the bytes left to skip of the current
/// option, the options seen (record route, timestamp, CIPSO: one each at most), and the
/// options' length.
#[derive(Clone, Copy)]
struct Walk {
    skip: u32,
    seen: u32,
    len: u32,
}

/// The walk's state, per CPU. Kept in memory, not in registers, so the verifier does not track
/// it: every path reaches the next byte position in the same state and is checked once, where
/// tracked values would multiply the paths past its limit.
#[map]
static OPTIONS_WALK: PerCpuArray<Walk> = PerCpuArray::with_max_entries(1, 0);

const SEEN_RR: u32 = 1;
const SEEN_TS: u32 = 2;
const SEEN_CIPSO: u32 = 4;

/// Walked one byte position at a time, skipping the rest of each option, so every read of the
/// copy is at a position the verifier knows exactly.
#[inline(always)]
fn well_formed(options: &Options) -> bool {
    let Some(walk) = OPTIONS_WALK.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: a per-CPU value, and XDP does not preempt itself on a CPU. Volatile, so the
    // compiler keeps the state in memory too.
    let load = || unsafe { core::ptr::read_volatile(walk) };
    let store = |w: Walk| unsafe { core::ptr::write_volatile(walk, w) };
    store(Walk {
        skip: 0,
        seen: 0,
        len: options.len.min(MAX_OPTIONS) as u32,
    });
    // Past the options, the copy's zeros read as IPOPT_END.
    let at = |i: usize| options.bytes[i & (COPY - 1)];
    let mut pos = 0;
    while pos < MAX_OPTIONS {
        let here = pos;
        pos += 1;
        let w = load();
        let len = w.len as usize;
        if here >= len {
            return true;
        }
        if w.skip > 0 {
            store(Walk {
                skip: w.skip - 1,
                ..w
            });
            continue;
        }
        let kind = at(here);
        if kind == IPOPT_END {
            // The rest is padding.
            return true;
        }
        if kind == IPOPT_NOOP {
            continue;
        }
        let left = len - here;
        let opt_len = at(here + 1);
        if left < 2 || opt_len < 2 || opt_len as usize > left {
            return false;
        }
        let (ptr, flags) = (at(here + 2), at(here + 3));
        let (ok, once) = match kind {
            IPOPT_LSRR | IPOPT_SSRR => (false, 0),
            IPOPT_RR => (
                opt_len >= 3 && ptr >= 4 && (ptr > opt_len || ptr + 3 <= opt_len),
                SEEN_RR,
            ),
            IPOPT_TIMESTAMP => (
                opt_len >= 4 && ptr >= 5 && timestamp_fits(opt_len, ptr, flags),
                SEEN_TS,
            ),
            IPOPT_RA => (opt_len >= 4, 0),
            IPOPT_CIPSO => (opt_len >= CIPSO_MIN_LEN, SEEN_CIPSO),
            // Others (security, stream ID, unknown kinds): the kernel takes them as they are.
            _ => (true, 0),
        };
        if !ok || w.seen & once != 0 {
            return false;
        }
        store(Walk {
            skip: opt_len as u32 - 1,
            seen: w.seen | once,
            len: w.len,
        });
    }
    true
}

/// A timestamp option's pointer and flags, against its length: room for the next entry (a time,
/// or an address and a time) while the pointer is inside the option; when it is past it, the
/// overflow count has not run out.
#[inline(always)]
fn timestamp_fits(opt_len: u8, ptr: u8, flags: u8) -> bool {
    let (ptr, opt_len) = (ptr as u16, opt_len as u16);
    if ptr > opt_len {
        return flags >> 4 != 15;
    }
    let entry = match flags & 0x0f {
        IPOPT_TS_TSANDADDR | IPOPT_TS_PRESPEC => 8,
        _ => 4,
    };
    ptr + entry - 1 <= opt_len
}
