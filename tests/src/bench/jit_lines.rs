//! Which source line a JITed program's instruction came from: the kernel keeps, for a program
//! loaded with BTF, the JIT address of every line-info record (jited_line_info) beside the
//! records themselves (source file and line text, as strings in the program's BTF). With them a
//! sampled instruction pointer in the program becomes a line of lb-ebpf, which is how the
//! bench's profile goes below the per-symbol split: `perf annotate` cannot disassemble JITed BPF
//! here (perf without libbfd), and `bpftool prog profile` needs hardware counters.

use std::os::fd::{AsRawFd as _, BorrowedFd};

use anyhow::{bail, Context as _, Result};
use aya_obj::generated::{bpf_btf_info, bpf_line_info, bpf_prog_info};

const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_BTF_GET_FD_BY_ID: libc::c_long = 19;

/// A loaded program's JITed code and the source line of each stretch of it.
#[derive(Debug)]
pub struct JitLines {
    /// Where each of its functions (the program and its subprograms) is: start, end.
    funcs: Vec<(u64, u64)>,
    /// JIT address of each line-info record, ascending, with its "file:line  text".
    points: Vec<(u64, String)>,
}

impl JitLines {
    /// The lines of the program `fd` refers to.
    pub fn of(fd: BorrowedFd<'_>) -> Result<Self> {
        let fd = fd.as_raw_fd();
        let mut first = zeroed::<bpf_prog_info>();
        info_by_fd(fd, &mut first)?;
        if first.nr_jited_line_info == 0 || first.btf_id == 0 {
            bail!("the program has no line info (loaded without BTF, or not JITed)");
        }
        if first.line_info_rec_size as usize != size_of::<bpf_line_info>()
            || first.jited_line_info_rec_size as usize != size_of::<u64>()
        {
            bail!("unexpected line-info record sizes");
        }
        let mut ksyms = vec![0u64; first.nr_jited_ksyms as usize];
        let mut lens = vec![0u32; first.nr_jited_func_lens as usize];
        let mut lines = vec![zeroed::<bpf_line_info>(); first.nr_line_info as usize];
        let mut jited = vec![0u64; first.nr_jited_line_info as usize];
        let mut info = zeroed::<bpf_prog_info>();
        info.nr_jited_ksyms = ksyms.len() as u32;
        info.jited_ksyms = ksyms.as_mut_ptr() as u64;
        info.nr_jited_func_lens = lens.len() as u32;
        info.jited_func_lens = lens.as_mut_ptr() as u64;
        info.nr_line_info = lines.len() as u32;
        info.line_info_rec_size = first.line_info_rec_size;
        info.line_info = lines.as_mut_ptr() as u64;
        info.nr_jited_line_info = jited.len() as u32;
        info.jited_line_info_rec_size = first.jited_line_info_rec_size;
        info.jited_line_info = jited.as_mut_ptr() as u64;
        info_by_fd(fd, &mut info)?;
        let strings = btf_strings(first.btf_id)?;
        let string = |off: u32| -> &str {
            let s = strings.get(off as usize..).unwrap_or_default();
            let end = s.iter().position(|b| *b == 0).unwrap_or(s.len());
            std::str::from_utf8(&s[..end]).unwrap_or("?")
        };
        let mut points: Vec<(u64, String)> = jited
            .iter()
            .zip(&lines)
            .map(|(addr, l)| {
                let file = short_path(string(l.file_name_off));
                let text = string(l.line_off).trim();
                (*addr, format!("{file}:{}  {text}", l.line_col >> 10))
            })
            .collect();
        points.sort_by_key(|p| p.0);
        let funcs = ksyms
            .iter()
            .zip(&lens)
            .map(|(k, l)| (*k, k + *l as u64))
            .collect();
        Ok(Self { funcs, points })
    }

    /// The source line of the instruction at `ip`, if `ip` is in this program.
    pub fn line(&self, ip: u64) -> Option<&str> {
        if !self
            .funcs
            .iter()
            .any(|(start, end)| (*start..*end).contains(&ip))
        {
            return None;
        }
        let at = self.points.partition_point(|p| p.0 <= ip).checked_sub(1)?;
        Some(&self.points[at].1)
    }
}

/// A source path as the profile shows it: a file of lb-ebpf by its path under src/, another
/// crate's (inlined from aya-ebpf or core) with the crate's name in front, without a version:
/// `conntrack.rs`, `nat/icmp.rs`, `aya-ebpf/helpers.rs`, `core/num/mod.rs`.
fn short_path(path: &str) -> String {
    let Some((before, file)) = path.rsplit_once("/src/") else {
        return path.rsplit('/').next().unwrap_or(path).to_owned();
    };
    let krate = before.rsplit('/').next().unwrap_or(before);
    // A registry crate's folder ends in its version: aya-ebpf-0.2.1.
    let krate = match krate.rsplit_once('-') {
        Some((name, v)) if v.starts_with(|c: char| c.is_ascii_digit()) => name,
        _ => krate,
    };
    if krate == "lb-ebpf" {
        file.to_owned()
    } else {
        format!("{krate}/{file}")
    }
}

/// A bpf_prog_info or bpf_btf_info filled in by the kernel for `fd`.
fn info_by_fd<T>(fd: i32, info: &mut T) -> Result<()> {
    let mut attr = [0u64; 16];
    attr[0] = fd as u32 as u64 | (size_of::<T>() as u64) << 32;
    attr[1] = info as *mut T as u64;
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).context("BPF_OBJ_GET_INFO_BY_FD")?;
    Ok(())
}

/// The string section of the BTF object `id`.
fn btf_strings(id: u32) -> Result<Vec<u8>> {
    let mut attr = [0u64; 16];
    attr[0] = id as u64;
    let fd = bpf(BPF_BTF_GET_FD_BY_ID, &mut attr).context("BPF_BTF_GET_FD_BY_ID")? as i32;
    // SAFETY: the kernel just returned this descriptor, now ours to close.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let mut info = zeroed::<bpf_btf_info>();
    info_by_fd(fd.as_raw_fd(), &mut info)?;
    let mut raw = vec![0u8; info.btf_size as usize];
    let mut info = zeroed::<bpf_btf_info>();
    info.btf = raw.as_mut_ptr() as u64;
    info.btf_size = raw.len() as u32;
    info_by_fd(fd.as_raw_fd(), &mut info)?;
    // The header: magic (2), version, flags, hdr_len, type_off, type_len, str_off, str_len.
    let word = |at: usize| -> Result<usize> {
        let b = raw.get(at..at + 4).context("BTF shorter than its header")?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let (hdr_len, str_off, str_len) = (word(4)?, word(16)?, word(20)?);
    let start = hdr_len + str_off;
    raw.get(start..start + str_len)
        .map(<[u8]>::to_vec)
        .context("BTF's strings past its end")
}

fn bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> Result<libc::c_long> {
    // SAFETY: `attr` is a zero-padded bpf_attr of 128 bytes, which the kernel reads (and for
    // info, writes through the pointers in it, to buffers the caller keeps alive).
    Ok(unsafe { lb_user::datapath::sys::bpf(cmd, attr) }?)
}

/// A zeroed bindgen struct of the kernel's (all its fields are integers).
fn zeroed<T>() -> T {
    // SAFETY: only used for the kernel's plain-integer structs above.
    unsafe { std::mem::zeroed() }
}

#[cfg(test)]
mod tests {
    use super::short_path;

    #[test]
    fn paths_are_shown_by_crate_and_file() {
        for (path, shown) in [
            ("/work/main/lb-ebpf/src/conntrack.rs", "conntrack.rs"),
            ("/work/main/lb-ebpf/src/nat/icmp.rs", "nat/icmp.rs"),
            (
                "/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/aya-ebpf-0.2.1/src/helpers.rs",
                "aya-ebpf/helpers.rs",
            ),
            ("/rustc/59807616e1fa2540/library/core/src/num/mod.rs", "core/num/mod.rs"),
            ("weird.rs", "weird.rs"),
        ] {
            assert_eq!(short_path(path), shown);
        }
    }
}
