//! kqueue (macOS, iOS, FreeBSD, OpenBSD, NetBSD, DragonFly)

use super::*;

pub(crate) fn kqueue() -> io::Result<OwnedFd> {
    // SAFETY: no pointers involved.
    let fd = owned(syscall!(kqueue())?);
    // kqueue(2) has no close-on-exec flag on every system; set it here.
    // SAFETY: `fd` is open and owned.
    syscall!(fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC))?;
    Ok(fd)
}

/// A buffer of kevent records that may move between threads.
pub(crate) struct KeventList(pub(crate) Vec<libc::kevent>);

// SAFETY: the only pointer in a kevent is `udata`, which muxloop uses as an
// integer token and never dereferences.
unsafe impl Send for KeventList {}

/// A kevent change record. Built field by field because the struct has
/// extra members on some systems (FreeBSD 12's `ext`).
pub(crate) fn kevent_change(fd: RawFd, filter: i16, flags: u16, udata: usize) -> libc::kevent {
    // SAFETY: kevent is plain integers and a pointer; all-zero is valid.
    let mut kev: libc::kevent = unsafe { std::mem::zeroed() };
    kev.ident = fd as _;
    kev.filter = filter as _;
    kev.flags = flags as _;
    kev.udata = udata as _;
    kev
}

/// kevent(2): applies `changes` and collects into the spare capacity of
/// `events` (which must be empty). With `EV_RECEIPT` set on every change,
/// pass `events` at least as long as `changes` and a zero timeout.
pub(crate) fn kevent(
    kq: &OwnedFd,
    changes: &[libc::kevent],
    events: &mut Vec<libc::kevent>,
    timeout: Option<Duration>,
) -> io::Result<()> {
    debug_assert!(events.is_empty());
    let ts = timeout.map(timespec);
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |ts| ts as *const libc::timespec);
    let cap = events.capacity().min(libc::c_int::MAX as usize);
    // SAFETY: `changes` is a live slice, the kernel writes at most `cap`
    // records into the spare capacity of `events`, and the timeout is null
    // or points at a live timespec.
    let n = syscall!(kevent(
        kq.as_raw_fd(),
        changes.as_ptr(),
        changes.len() as _,
        events.as_mut_ptr(),
        cap as _,
        ts_ptr
    ))?;
    // SAFETY: the kernel initialised the first `n <= cap` records.
    unsafe { events.set_len(n as usize) };
    Ok(())
}
