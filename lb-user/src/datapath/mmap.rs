//! Array maps made with BPF_F_MMAPABLE, mapped into the agent's memory: filled with one copy
//! (lookup tables) or read and adjusted in place with atomics (connection counts), instead of a
//! system call per element. The kernel lays array elements out 8-byte aligned.

use std::os::fd::{AsFd as _, AsRawFd as _};

use anyhow::{bail, Result};
use aya::maps::MapData;

/// A shared mapping of an array map's values, unmapped on Drop.
pub struct Mapped {
    base: *mut u8,
    len: usize,
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
        let stride = value_size.div_ceil(8) * 8;
        let len = (entries * stride).max(1);
        let fd = map.fd().as_fd().as_raw_fd();
        // SAFETY: a fresh shared mapping of the map's memory, within its size.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
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
            stride,
            entries,
        })
    }

    pub fn entries(&self) -> usize {
        self.entries
    }

    /// The address of value `i` (in bounds: panics otherwise).
    pub fn at(&self, i: usize) -> *mut u8 {
        assert!(
            i < self.entries,
            "index {i} beyond {} entries",
            self.entries
        );
        // SAFETY: within the mapping.
        unsafe { self.base.add(i * self.stride) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: the mapping this value made.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}
