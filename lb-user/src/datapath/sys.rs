//! The bpf(2) system call itself, for the commands aya does not offer: the map batch operations
//! (`batch`) and, for the bench's profile, a program's and a BTF object's info.

/// bpf(2) command `cmd` with `attr`, the member of union bpf_attr it takes; the call's result
/// (0, or a new descriptor for the commands that open one).
///
/// # Safety
/// `attr` must be a valid bpf_attr member for `cmd`, and every buffer it points to must stay
/// alive, with the size it says, for the call: the kernel reads and writes through them.
pub unsafe fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
    // SAFETY: the caller's.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(r)
}
