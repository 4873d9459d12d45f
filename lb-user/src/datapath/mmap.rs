//! Array maps made with BPF_F_MMAPABLE, mapped into the agent's memory: filled with one copy
//! (lookup tables) or read and adjusted in place with atomics (connection counts), instead of a
//! system call per element. The kernel lays array elements out 8-byte aligned.

use std::os::fd::{AsFd as _, AsRawFd as _, BorrowedFd};

use anyhow::{bail, Result};
use aya::maps::MapData;

/// A shared mapping of an array map's values (all, or a window of them), unmapped on Drop.
pub struct Mapped {
    base: *mut u8,
    len: usize,
    /// Bytes from the mapping's start to the first value (a window starts on a page).
    skew: usize,
    stride: usize,
    entries: usize,
}

// SAFETY: the mapping is plain shared memory; every access goes through raw pointers with the
// alignment the kernel guarantees, and writes to shared values are atomic or exclusive by design.
unsafe impl Send for Mapped {}
// SAFETY: as above; `&Mapped` only hands out addresses.
unsafe impl Sync for Mapped {}

impl Mapped {
    /// Maps `entries` values of `value_size` bytes of `map` (which must be BPF_F_MMAPABLE).
    pub fn new(map: &MapData, entries: usize, value_size: usize) -> Result<Self> {
        Self::window(map.fd().as_fd(), 0, entries, value_size)
    }

    /// Maps values `first..first + entries` of the BPF_F_MMAPABLE array `fd`: a large array
    /// read a window at a time keeps only that window's pages in the caller's resident memory.
    pub fn window(
        fd: BorrowedFd<'_>,
        first: usize,
        entries: usize,
        value_size: usize,
    ) -> Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let stride = value_size.div_ceil(8) * 8;
        let start = first * stride / page * page;
        let skew = first * stride - start;
        let len = (skew + entries * stride).max(1);
        // SAFETY: a fresh shared mapping of the map's memory, within its size.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                start as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            bail!(
                "cannot map a BPF array: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(Self {
            base: p.cast(),
            len,
            skew,
            stride,
            entries,
        })
    }

    pub fn entries(&self) -> usize {
        self.entries
    }

    /// The address of value `i` of the mapping (in bounds: panics otherwise).
    pub fn at(&self, i: usize) -> *mut u8 {
        assert!(
            i < self.entries,
            "index {i} beyond {} entries",
            self.entries
        );
        // SAFETY: within the mapping.
        unsafe { self.base.add(self.skew + i * self.stride) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: the mapping this value made.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}
