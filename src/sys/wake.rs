//! Wake-ups: eventfd on Linux, a self-pipe elsewhere.

use super::*;

/// A non-blocking, close-on-exec eventfd.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: no pointers involved.
    let fd = syscall!(eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC))?;
    Ok(owned(fd))
}

/// A non-blocking, close-on-exec pipe: (read end, write end).
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1; 2];
    // SAFETY: `fds` has room for the two descriptors pipe(2) writes.
    syscall!(pipe(fds.as_mut_ptr()))?;
    let (r, w) = (owned(fds[0]), owned(fds[1]));
    for fd in [&r, &w] {
        // SAFETY: fcntl on descriptors we own; no memory involved.
        syscall!(fcntl(fd.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK))?;
        // SAFETY: as above.
        syscall!(fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC))?;
    }
    Ok((r, w))
}

/// write(2) of `buf` to `fd`.
pub(crate) fn write(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: the pointer and length describe a live slice.
    let n = syscall!(write(fd, buf.as_ptr().cast(), buf.len()))?;
    Ok(n as usize)
}

/// read(2) from `fd` into `buf`.
pub(crate) fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: the pointer and length describe a live, writable slice.
    let n = syscall!(read(fd, buf.as_mut_ptr().cast(), buf.len()))?;
    Ok(n as usize)
}
