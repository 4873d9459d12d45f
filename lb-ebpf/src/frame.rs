//! Reading and writing the frame a word at a time. Headers sit at any alignment in a frame (the
//! IPv4 header is 2 bytes off a 4-byte boundary behind Ethernet), so their bytes are typed as
//! `[u8; N]` and read unaligned, which LLVM's BPF backend turns into one load per byte plus
//! shifts to put words back together: for a 20-byte IPv4 header, about 60 instructions where 3
//! do. Its `allows-misaligned-mem-access` feature would lift that, but it also lays the stack
//! out misaligned, which the verifier refuses. So the frame's own loads and stores are written
//! here as single instructions of 8, 4 or 2 bytes, at whatever alignment the frame has: the
//! verifier accepts misaligned packet access where the CPU handles it (x86-64 and arm64, the
//! platforms with CONFIG_HAVE_EFFICIENT_UNALIGNED_ACCESS). Values go through an 8-byte aligned
//! buffer on the stack, so the stack only ever sees aligned accesses.

use core::mem::size_of;

/// The largest value moved at once: an IPv6 header.
const MAX: usize = 40;

/// A value and the aligned words it is moved as.
#[repr(C)]
union Words<T: Copy> {
    value: T,
    words: [u64; MAX / 8],
}

/// Reads a `T` (at most 40 bytes) from the frame at `p`, whatever its alignment.
///
/// # Safety
/// `p` must point at `size_of::<T>()` readable bytes of the frame (bounds-checked by the
/// caller), and any bit pattern must be a valid `T`.
#[inline(always)]
pub unsafe fn load<T: Copy>(p: *const T) -> T {
    const { assert!(size_of::<T>() <= MAX) };
    let n = size_of::<T>();
    let p = p as *const u8;
    let mut buf = Words::<T> {
        words: [0; MAX / 8],
    };
    // SAFETY: the buffer is 8-byte aligned and MAX bytes long; every offset below is within
    // `n <= MAX` and aligned to its width (8-byte steps first, then 4, 2, 1).
    unsafe {
        let dst = buf.words.as_mut_ptr() as *mut u8;
        let mut i = 0;
        while i + 8 <= n {
            (dst.add(i) as *mut u64).write(load64(p.add(i)));
            i += 8;
        }
        if i + 4 <= n {
            (dst.add(i) as *mut u32).write(load32(p.add(i)));
            i += 4;
        }
        if i + 2 <= n {
            (dst.add(i) as *mut u16).write(load16(p.add(i)));
            i += 2;
        }
        if i < n {
            dst.add(i).write(p.add(i).read());
        }
        buf.value
    }
}

/// Writes `v` (at most 40 bytes) into the frame at `p`, whatever its alignment.
///
/// # Safety
/// `p` must point at `size_of::<T>()` writable bytes of the frame (bounds-checked by the
/// caller).
#[inline(always)]
pub unsafe fn store<T: Copy>(p: *mut T, v: T) {
    const { assert!(size_of::<T>() <= MAX) };
    let n = size_of::<T>();
    let p = p as *mut u8;
    let buf = Words::<T> { value: v };
    // SAFETY: as in `load`, the other way round; bytes of the buffer past the value are never
    // read (only `n` bytes are).
    unsafe {
        let src = buf.words.as_ptr() as *const u8;
        let mut i = 0;
        while i + 8 <= n {
            store64(p.add(i), (src.add(i) as *const u64).read());
            i += 8;
        }
        if i + 4 <= n {
            store32(p.add(i), (src.add(i) as *const u32).read());
            i += 4;
        }
        if i + 2 <= n {
            store16(p.add(i), (src.add(i) as *const u16).read());
            i += 2;
        }
        if i < n {
            p.add(i).write(src.add(i).read());
        }
    }
}

/// One load or store instruction of the given width, any alignment (on the host, where the
/// program is only type-checked, an unaligned access).
macro_rules! access {
    ($load:ident, $store:ident, $t:ty, $width:literal) => {
        #[cfg(target_arch = "bpf")]
        #[inline(always)]
        unsafe fn $load(p: *const u8) -> $t {
            let v: $t;
            // SAFETY: the caller's: `p` points at readable frame bytes.
            unsafe {
                core::arch::asm!(
                    concat!("{v} = *(", $width, " *)({p} + 0)"),
                    p = in(reg) p,
                    v = lateout(reg) v,
                    options(nostack, readonly, preserves_flags),
                );
            }
            v
        }

        #[cfg(target_arch = "bpf")]
        #[inline(always)]
        unsafe fn $store(p: *mut u8, v: $t) {
            // SAFETY: the caller's: `p` points at writable frame bytes.
            unsafe {
                core::arch::asm!(
                    concat!("*(", $width, " *)({p} + 0) = {v}"),
                    p = in(reg) p,
                    v = in(reg) v,
                    options(nostack, preserves_flags),
                );
            }
        }

        #[cfg(not(target_arch = "bpf"))]
        #[inline(always)]
        unsafe fn $load(p: *const u8) -> $t {
            // SAFETY: the caller's.
            unsafe { (p as *const $t).read_unaligned() }
        }

        #[cfg(not(target_arch = "bpf"))]
        #[inline(always)]
        unsafe fn $store(p: *mut u8, v: $t) {
            // SAFETY: the caller's.
            unsafe { (p as *mut $t).write_unaligned(v) }
        }
    };
}

/// An Ethernet address read from the frame at `p` (6 bytes) into the low 48 bits of a u64, its
/// first byte lowest: two loads into registers. Going through a byte array instead, the address
/// is put together on the stack and read back wider than it was written, which the CPU cannot
/// forward from its store buffer (a stall of a dozen cycles or more per read).
///
/// # Safety
/// `p` must point at 6 readable bytes of the frame (bounds-checked by the caller).
#[inline(always)]
pub unsafe fn load_mac(p: *const u8) -> u64 {
    // SAFETY: the caller's.
    unsafe { u32::from_le(load32(p)) as u64 | (u16::from_le(load16(p.add(4))) as u64) << 32 }
}

/// Writes a frame's two Ethernet addresses (as [`load_mac`] reads them) at `p`: four stores
/// straight from registers.
///
/// # Safety
/// `p` must point at 12 writable bytes of the frame (bounds-checked by the caller).
#[inline(always)]
pub unsafe fn store_macs(p: *mut u8, dst: u64, src: u64) {
    // SAFETY: the caller's; the offsets are within the 12 bytes.
    unsafe {
        store32(p, (dst as u32).to_le());
        store16(p.add(4), ((dst >> 32) as u16).to_le());
        store16(p.add(6), (src as u16).to_le());
        store32(p.add(8), ((src >> 16) as u32).to_le());
    }
}

access!(load64, store64, u64, "u64");
access!(load32, store32, u32, "u32");
access!(load16, store16, u16, "u16");
