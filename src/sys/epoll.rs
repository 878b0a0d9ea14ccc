//! epoll (Linux, Android)

use super::*;

pub(crate) fn epoll_create() -> io::Result<OwnedFd> {
    // SAFETY: no pointers involved.
    let fd = syscall!(epoll_create1(libc::EPOLL_CLOEXEC))?;
    Ok(owned(fd))
}

pub(crate) fn epoll_ctl(
    epfd: &OwnedFd,
    op: libc::c_int,
    fd: RawFd,
    events: u32,
    data: u64,
) -> io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: data };
    // SAFETY: `ev` is a valid epoll_event (ignored by EPOLL_CTL_DEL, which
    // still wants a non-null pointer on kernels before 2.6.9).
    syscall!(epoll_ctl(epfd.as_raw_fd(), op, fd, &mut ev))?;
    Ok(())
}

/// epoll_wait(2) into the spare capacity of `events`, which must be empty.
pub(crate) fn epoll_wait(
    epfd: &OwnedFd,
    events: &mut Vec<libc::epoll_event>,
    timeout: Option<Duration>,
) -> io::Result<()> {
    debug_assert!(events.is_empty());
    let cap = events.capacity().min(libc::c_int::MAX as usize) as libc::c_int;
    // SAFETY: the kernel writes at most `cap` entries into the vector's
    // spare capacity, which is at least that long.
    let n = syscall!(epoll_wait(
        epfd.as_raw_fd(),
        events.as_mut_ptr(),
        cap,
        timeout_ms(timeout)
    ))?;
    // SAFETY: the kernel initialised the first `n <= cap` entries.
    unsafe { events.set_len(n as usize) };
    Ok(())
}
