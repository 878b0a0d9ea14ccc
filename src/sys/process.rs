//! Descriptors that keep their number, fork detection, child processes.

use super::*;

/// Makes `target`'s number refer to `fresh`'s open file (closing the file
/// it referred to, atomically), then closes `fresh`: the kernel object is
/// replaced while the number a host watches stays the same.
pub(crate) fn replace_fd(target: RawFd, fresh: OwnedFd) -> io::Result<()> {
    #[cfg(muxloop_sock_flags)]
    {
        // SAFETY: dup3 only manipulates the descriptor table; `fresh` is
        // live and `target` is a number the caller owns.
        syscall!(dup3(fresh.as_raw_fd(), target, libc::O_CLOEXEC))?;
    }
    #[cfg(not(muxloop_sock_flags))]
    {
        // SAFETY: as above, for dup2.
        syscall!(dup2(fresh.as_raw_fd(), target))?;
        // SAFETY: fcntl on the number just made; no memory involved.
        syscall!(fcntl(target, libc::F_SETFD, libc::FD_CLOEXEC))?;
    }
    drop(fresh);
    Ok(())
}

/// Whether kernel readiness objects (epoll, kqueue) are inherited across
/// `fork`: epoll instances are (the child shares the parent's), kqueues
/// are not (the child's copy of the number names nothing, or a file the
/// child opened since).
pub(crate) const KERNEL_OBJECTS_INHERITED: bool = cfg!(muxloop_epoll);

/// In a forked child: puts `fresh` in `slot`, which holds a kernel object
/// inherited from the parent (or, where those are not inherited, a number
/// that is no longer the loop's), under `slot`'s number if possible. An
/// inherited object is replaced under its number, which closes only the
/// child's reference: the parent's object is untouched. A number that is
/// not inherited is reused only if still free; otherwise `fresh` keeps its
/// own (and the number, someone else's now, is left alone).
pub(crate) fn take_over_after_fork(slot: &mut OwnedFd, fresh: OwnedFd) -> io::Result<()> {
    let number = slot.as_raw_fd();
    if KERNEL_OBJECTS_INHERITED || !fd_is_open(number) {
        return replace_fd(number, fresh);
    }
    log::warn!("fork=take-over fd={number} reused in the child: the loop's fd number changes");
    std::mem::forget(std::mem::replace(slot, fresh));
    Ok(())
}

/// A readiness object (epoll or kqueue) that watches `inner` for
/// readability: readable whenever `inner` is.
#[cfg(muxloop_epoll)]
pub(crate) fn watcher_of(inner: RawFd) -> io::Result<OwnedFd> {
    let ep = epoll_create()?;
    epoll_ctl(&ep, libc::EPOLL_CTL_ADD, inner, libc::EPOLLIN as u32, 0)?;
    Ok(ep)
}

/// Makes `watcher` (from [`watcher_of`]) watch `inner` too.
#[cfg(muxloop_epoll)]
pub(crate) fn watch_also(watcher: &OwnedFd, inner: RawFd) -> io::Result<()> {
    epoll_ctl(watcher, libc::EPOLL_CTL_ADD, inner, libc::EPOLLIN as u32, 0)
}

/// A readiness object (epoll or kqueue) that watches `inner` for
/// readability: readable whenever `inner` is.
#[cfg(muxloop_kqueue)]
pub(crate) fn watcher_of(inner: RawFd) -> io::Result<OwnedFd> {
    let kq = kqueue()?;
    watch_also(&kq, inner)?;
    Ok(kq)
}

/// Makes `watcher` (from [`watcher_of`]) watch `inner` too.
#[cfg(muxloop_kqueue)]
// The kevent constant types differ between the BSDs (see the kqueue backend).
#[allow(clippy::unnecessary_cast)]
pub(crate) fn watch_also(watcher: &OwnedFd, inner: RawFd) -> io::Result<()> {
    let change = kevent_change(inner, libc::EVFILT_READ as i16, libc::EV_ADD as u16, 0);
    let mut none = Vec::new();
    kevent(watcher, &[change], &mut none, Some(Duration::ZERO))
}

/// Forks this process has been through: 0 in the process that started
/// the program, one more in each child. A loop compares it with the value
/// it was made with to know that it was inherited across `fork`.
pub(crate) fn forks() -> u64 {
    static REGISTER: std::sync::Once = std::sync::Once::new();
    REGISTER.call_once(|| {
        // SAFETY: registers a handler that only increments an atomic,
        // which is async-signal-safe and so allowed in a forked child of
        // a multi-threaded process.
        let res = unsafe { libc::pthread_atfork(None, None, Some(count_fork)) };
        if res != 0 {
            log::warn!(
                "fork=register error={}: forks will not be detected",
                io::Error::from_raw_os_error(res)
            );
        }
    });
    FORKS.load(std::sync::atomic::Ordering::Relaxed)
}

static FORKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

extern "C" fn count_fork() {
    FORKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// The monotonic clock (the one [`Instant`](std::time::Instant) reads), in
/// nanoseconds: for the loop's time counters, which add up differences and
/// need no `Instant` arithmetic (its checked subtraction costs more than
/// the clock read).
pub(crate) fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC exists
    // on every supported system, so the call cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}

/// The calling process's id.
pub(crate) fn getpid() -> libc::pid_t {
    // SAFETY: getpid cannot fail and touches no memory.
    unsafe { libc::getpid() }
}

/// A pidfd for `pid` (Linux 5.3+): readable once the process exits, and
/// even if it already has (a zombie keeps its pid). `ENOSYS` on older
/// kernels, `ESRCH` if there is no such process (or it was reaped).
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags, no pointers.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = owned(fd as RawFd);
    // SAFETY: fcntl on a descriptor we own; no memory involved.
    syscall!(fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC))?;
    // SAFETY: as above.
    syscall!(fcntl(fd.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK))?;
    Ok(fd)
}

/// Reaps `pid` if it has exited: its wait status, or `None` while it
/// runs. `ECHILD` if it is not a child of this process (or was reaped).
pub(crate) fn try_reap(pid: libc::pid_t) -> io::Result<Option<libc::c_int>> {
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: `status` is a live c_int for waitpid to fill.
        match syscall!(waitpid(pid, &mut status, libc::WNOHANG)) {
            Ok(0) => return Ok(None),
            Ok(_) => return Ok(Some(status)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}
