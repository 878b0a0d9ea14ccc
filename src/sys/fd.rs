//! Descriptors.

use super::*;

/// Whether `fd` names an open descriptor of this process.
pub(crate) fn fd_is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only reads the descriptor flags; any integer is a
    // valid argument and a closed one yields EBADF.
    fd >= 0 && syscall!(fcntl(fd, libc::F_GETFD)).is_ok()
}

/// The file `fd` names, as (device, inode): two fds name the same file
/// (or a closed and reused number another one) exactly when these match,
/// except for Linux's anonymous-inode fds (eventfd, epoll, ...), which
/// share one inode.
#[cfg(all(not(muxloop_kqueue), any(test, feature = "kqueue-model")))]
pub(crate) fn file_identity(fd: RawFd) -> io::Result<(u64, u64)> {
    // SAFETY: a zeroed stat is a valid out-buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a live, writable stat; a closed fd yields EBADF.
    syscall!(fstat(fd, &mut st))?;
    Ok((st.st_dev as u64, st.st_ino as u64))
}

/// Whether `fd` is open and lacks `O_NONBLOCK`.
pub(crate) fn is_blocking(fd: RawFd) -> bool {
    // SAFETY: F_GETFL only reads the file status flags; a closed or invalid
    // fd yields EBADF.
    syscall!(fcntl(fd, libc::F_GETFL)).is_ok_and(|flags| flags & libc::O_NONBLOCK == 0)
}

/// Fails with EBADF unless `fd` is open, for backends whose kernel interface
/// would only notice later (select(2), poll(2)).
pub(crate) fn check_open(fd: RawFd) -> io::Result<()> {
    if fd_is_open(fd) {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(libc::EBADF))
    }
}

/// `fd` borrowed for as long as `owner`, whose kernel object it is.
/// `None` for a negative number.
pub(crate) fn borrow_fd<T: ?Sized>(fd: RawFd, owner: &T) -> Option<std::os::fd::BorrowedFd<'_>> {
    let _ = owner;
    // SAFETY: a backend's `fd` is open for the backend's whole life
    // (`Backend::fd`'s contract), and the borrow cannot outlive `owner`,
    // which holds the backend. `-1`, which `BorrowedFd` may not hold, is
    // ruled out.
    (fd >= 0).then(|| unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) })
}

/// Takes ownership of a freshly created descriptor.
pub(super) fn owned(fd: RawFd) -> OwnedFd {
    // SAFETY: callers pass a descriptor the kernel just returned to them and
    // that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}
