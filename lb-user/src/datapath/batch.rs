//! The kernel's batch operations on maps (BPF_MAP_UPDATE_BATCH, BPF_MAP_LOOKUP_BATCH), which
//! aya does not offer: one system call for a whole array instead of one per element, which is
//! what a director with tens of thousands of real servers needs to read its counters and load
//! its tables.

use std::os::fd::{AsRawFd as _, BorrowedFd};

use anyhow::{bail, Result};
use bytemuck::Pod;

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// The `batch` member of union bpf_attr.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

fn bpf(cmd: libc::c_long, attr: &mut BatchAttr) -> std::io::Result<()> {
    // SAFETY: a batch attribute, whose pointers the callers keep alive for the call.
    unsafe { super::sys::bpf(cmd, attr) }.map(|_| ())
}

/// Writes `values[i]` at `keys[i]` of a map whose values are a `T` each (for a map of maps,
/// `u32` inner map descriptors).
pub fn update<T: Pod>(map: BorrowedFd<'_>, keys: &[u32], values: &[T]) -> Result<()> {
    assert_eq!(keys.len(), values.len());
    update_raw(map, keys, bytemuck::cast_slice(values))
}

/// Zeroes entries `keys` of a per-CPU array of `T`, on every CPU.
pub fn zero_per_cpu<T: Pod>(map: BorrowedFd<'_>, keys: &[u32], cpus: usize) -> Result<()> {
    let stride = std::mem::size_of::<T>().div_ceil(8) * 8;
    update_raw(map, keys, &vec![0u8; keys.len() * stride * cpus])
}

fn update_raw(map: BorrowedFd<'_>, keys: &[u32], values: &[u8]) -> Result<()> {
    if keys.is_empty() {
        return Ok(());
    }
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: keys.len() as u32,
        map_fd: map.as_raw_fd() as u32,
        ..Default::default()
    };
    if let Err(e) = bpf(BPF_MAP_UPDATE_BATCH, &mut attr) {
        bail!(
            "cannot update {} entries at once (done: {}): {e}",
            keys.len(),
            attr.count
        );
    }
    Ok(())
}

/// Every element of a per-CPU array of `entries` values of `T`, one `Vec` of `cpus` values
/// per element (the kernel lays each CPU's value out 8-byte aligned).
pub fn lookup_per_cpu<T: Pod>(
    map: BorrowedFd<'_>,
    entries: u32,
    cpus: usize,
) -> Result<Vec<Vec<T>>> {
    let stride = std::mem::size_of::<T>().div_ceil(8) * 8;
    let mut keys = vec![0u32; entries as usize];
    let mut values = vec![0u8; entries as usize * stride * cpus];
    let (mut cursor, mut next, mut done) = (0u32, 0u32, 0usize);
    while done < entries as usize {
        let mut attr = BatchAttr {
            in_batch: if done == 0 {
                0
            } else {
                &cursor as *const u32 as u64
            },
            out_batch: &mut next as *mut u32 as u64,
            keys: keys[done..].as_mut_ptr() as u64,
            values: values[done * stride * cpus..].as_mut_ptr() as u64,
            count: entries - done as u32,
            map_fd: map.as_raw_fd() as u32,
            ..Default::default()
        };
        let result = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        done += attr.count as usize;
        match result {
            Ok(()) => cursor = next,
            // The end of the map.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => break,
            Err(e) => bail!("cannot read {entries} entries at once: {e}"),
        }
        if attr.count == 0 {
            break;
        }
    }
    Ok((0..done)
        .map(|i| {
            (0..cpus)
                .map(|c| {
                    let at = (i * cpus + c) * stride;
                    bytemuck::pod_read_unaligned(&values[at..at + std::mem::size_of::<T>()])
                })
                .collect()
        })
        .collect())
}
