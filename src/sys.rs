//! Every `unsafe` line of the crate: thin, checked wrappers around the raw
//! system calls the backends use, and the box the event loop runs
//! callbacks from ([`RunBox`]). Each wrapper turns a `-1` return into an
//! [`io::Error`] carrying `errno`, and owns descriptors through [`OwnedFd`]
//! so nothing leaks on an error path.

use std::cell::{Cell, UnsafeCell};
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::{self, NonNull};
use std::time::Duration;

/// Calls a libc function and turns `-1` into `io::Error::last_os_error()`.
macro_rules! syscall {
    ($fn:ident ( $($arg:expr),* $(,)? )) => {{
        // SAFETY: each call site documents why its arguments are valid.
        let res = unsafe { libc::$fn($($arg),*) };
        if res == -1 {
            Err(io::Error::last_os_error())
        } else {
            Ok(res)
        }
    }};
}

// ---------------------------------------------------------------------------
// Timeouts. Every conversion rounds *up*, so a wait is never shorter than
// asked, and saturates instead of overflowing.
// ---------------------------------------------------------------------------

/// Milliseconds for poll(2) and epoll_wait(2): `-1` for "forever", rounded
/// up so that 100 µs becomes 1 ms, not 0 (which would spin).
pub(crate) fn timeout_ms(timeout: Option<Duration>) -> libc::c_int {
    match timeout {
        None => -1,
        // Whole milliseconds, rounded up, in 64-bit arithmetic (every wait
        // with a timeout computes it); beyond c_int's range, the maximum.
        Some(t) => {
            const MAX_SECS: u64 = libc::c_int::MAX as u64 / 1_000;
            if t.as_secs() > MAX_SECS {
                return libc::c_int::MAX;
            }
            let ms = t.as_secs() * 1_000 + u64::from(t.subsec_nanos()).div_ceil(1_000_000);
            ms.min(libc::c_int::MAX as u64) as libc::c_int
        }
    }
}

/// A `timeval` for select(2), rounded up to the microsecond. Seconds are
/// clamped to what every kernel accepts (select(2) rejects more than 10^8 s
/// on some systems with EINVAL).
pub(crate) fn timeval(t: Duration) -> libc::timeval {
    const MAX_SECS: u64 = 100_000_000;
    let (mut secs, mut micros) = if t.as_secs() >= MAX_SECS {
        (MAX_SECS, 0)
    } else {
        (t.as_secs(), u64::from(t.subsec_nanos()).div_ceil(1_000))
    };
    if micros == 1_000_000 {
        secs += 1;
        micros = 0;
    }
    libc::timeval {
        tv_sec: secs as libc::time_t,
        tv_usec: micros as libc::suseconds_t,
    }
}

/// A `timespec` for kevent(2), clamped like [`timeval`].
#[cfg(muxloop_kqueue)]
pub(crate) fn timespec(t: Duration) -> libc::timespec {
    const MAX_SECS: u64 = 100_000_000;
    let (secs, nanos) = if t.as_secs() >= MAX_SECS {
        (MAX_SECS, 0)
    } else {
        (t.as_secs(), t.subsec_nanos())
    };
    libc::timespec {
        tv_sec: secs as libc::time_t,
        tv_nsec: nanos as _,
    }
}

// ---------------------------------------------------------------------------
// A box whose value can run while the box stays where it is. The event loop
// calls a source's callback with the loop itself, which owns the box, as an
// argument: meanwhile the callback may ask the loop for the source (refused)
// or drop it (the memory then lives until the call returns). No unsafe code
// elsewhere has to reason about it.
// ---------------------------------------------------------------------------

/// The allocation behind a [`RunBox`]: its state beside the value.
pub(crate) struct RunCell<T: ?Sized> {
    /// `RUNNING` while a [`Run`] of the value exists; `ORPHANED` once the
    /// box was dropped during a run (the run then frees the cell).
    state: Cell<u8>,
    value: UnsafeCell<T>,
}

const RUNNING: u8 = 1;
const ORPHANED: u8 = 2;

impl<T> RunCell<T> {
    /// A cell to make a [`RunBox`] of (after coercing it to `Box<RunCell<dyn
    /// Trait>>` if need be).
    pub(crate) fn boxed(value: T) -> Box<RunCell<T>> {
        Box::new(RunCell {
            state: Cell::new(0),
            value: UnsafeCell::new(value),
        })
    }
}

/// Owns a [`RunCell`] as a `Box` would. [`run`](RunBox::run) hands out the
/// value mutably without borrowing the box, so the box stays reachable (to
/// be refused, or dropped) while the value runs.
pub(crate) struct RunBox<T: ?Sized> {
    cell: NonNull<RunCell<T>>,
    /// The value's place in the cell, computed once (for a `dyn` value its
    /// offset depends on the alignment the vtable gives).
    value: NonNull<T>,
    _owns: PhantomData<Box<RunCell<T>>>,
}

impl<T: ?Sized> RunBox<T> {
    pub(crate) fn new(cell: Box<RunCell<T>>) -> RunBox<T> {
        let cell = NonNull::from(Box::leak(cell));
        // SAFETY: `cell` is allocated and initialised; the projection makes
        // no reference.
        let value = unsafe { UnsafeCell::raw_get(ptr::addr_of!((*cell.as_ptr()).value)) };
        RunBox {
            cell,
            // SAFETY: a field of a non-null allocation is not null.
            value: unsafe { NonNull::new_unchecked(value) },
            _owns: PhantomData,
        }
    }

    /// The state, reached without a reference to the value.
    #[inline]
    fn state(&self) -> &Cell<u8> {
        // SAFETY: the cell is allocated for as long as this box exists (only
        // `Drop` of the box or of a `Run` frees it, and a `Run` does only
        // after the box was dropped); the projection creates no reference
        // to `value`, which a `Run` may be lending out mutably.
        unsafe { &*ptr::addr_of!((*self.cell.as_ptr()).state) }
    }

    /// Whether a [`Run`] of the value exists.
    #[inline]
    pub(crate) fn is_running(&self) -> bool {
        self.state().get() != 0
    }

    /// The value, unless it is running.
    #[inline]
    pub(crate) fn get(&self) -> Option<&T> {
        if self.is_running() {
            return None;
        }
        // SAFETY: no `Run` exists, and none can be made while `self` is
        // borrowed (`run` takes `&mut self`): nothing else refers to the
        // value. The cell is allocated (see `state`).
        Some(unsafe { self.value.as_ref() })
    }

    /// The value mutably, unless it is running.
    #[inline]
    pub(crate) fn get_mut(&mut self) -> Option<&mut T> {
        if self.is_running() {
            return None;
        }
        // SAFETY: as in `get`, and `self` is borrowed mutably, so this is
        // the only reference.
        Some(unsafe { self.value.as_mut() })
    }

    /// Starts a run: the value, mutably, through a handle that does not
    /// borrow the box. `None` if a run is under way already.
    #[inline]
    pub(crate) fn run(&mut self) -> Option<Run<T>> {
        if self.is_running() {
            return None;
        }
        self.state().set(RUNNING);
        Some(Run {
            cell: self.cell,
            value: self.value,
        })
    }
}

impl<T: ?Sized> Drop for RunBox<T> {
    fn drop(&mut self) {
        if self.is_running() {
            self.state().set(RUNNING | ORPHANED);
            return; // the `Run` frees the cell when it ends
        }
        // SAFETY: no `Run` exists and none can be made any more: this box
        // owns the cell alone, and it came from `Box::leak`.
        drop(unsafe { Box::from_raw(self.cell.as_ptr()) });
    }
}

/// A run of a [`RunBox`]'s value; the run ends when it is dropped, which
/// also frees the cell if the box was dropped meanwhile.
pub(crate) struct Run<T: ?Sized> {
    cell: NonNull<RunCell<T>>,
    value: NonNull<T>,
}

impl<T: ?Sized> Run<T> {
    /// The value. Only this run reaches it: the box refuses while it lasts.
    #[inline]
    pub(crate) fn get_mut(&mut self) -> &mut T {
        // SAFETY: the cell stays allocated while a run exists (a box dropped
        // meanwhile leaves it to the run to free); the box hands out no
        // reference to the value while the state says `RUNNING`, and there
        // is one run at a time (`run` checks it), so this is the only
        // reference, for as long as `self` is borrowed.
        unsafe { self.value.as_mut() }
    }
}

impl<T: ?Sized> Drop for Run<T> {
    #[inline]
    fn drop(&mut self) {
        let cell = self.cell.as_ptr();
        // SAFETY: allocated (see `get_mut`); only the state is touched here,
        // and no reference to the value outlives this run.
        let state = unsafe { &*ptr::addr_of!((*cell).state) };
        if state.replace(0) & ORPHANED != 0 {
            // SAFETY: the box is gone and this run is over: nothing refers
            // to the cell any more; it came from `Box::leak`.
            drop(unsafe { Box::from_raw(cell) });
        }
    }
}

// ---------------------------------------------------------------------------
// Descriptors.
// ---------------------------------------------------------------------------

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
fn owned(fd: RawFd) -> OwnedFd {
    // SAFETY: callers pass a descriptor the kernel just returned to them and
    // that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

// ---------------------------------------------------------------------------
// select(2)
// ---------------------------------------------------------------------------

/// `FD_SETSIZE`: the size of the C library's `fd_set`.
#[cfg(any(test, not(any(target_os = "linux", target_os = "android"))))]
pub(crate) const FD_SETSIZE: RawFd = libc::FD_SETSIZE as RawFd;

/// The highest fd plus one that an [`FdSet`] can hold, or `None` if it
/// grows to any fd.
///
/// Linux's select(2) reads as many bits as `nfds` asks for, from a buffer
/// of `unsigned long` words, whatever `FD_SETSIZE` says (fs/select.c:
/// `core_sys_select`); only the C library's fixed-size `fd_set` and its
/// macros stop at 1024. So on Linux the set is a growable bit vector in
/// the kernel's layout and select works for every fd, as libev does.
/// Elsewhere (macOS refuses `nfds > FD_SETSIZE` with EINVAL) the set is
/// the C `fd_set`, bounds-checked on every access.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) const SELECT_FD_LIMIT: Option<RawFd> = None;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub(crate) const SELECT_FD_LIMIT: Option<RawFd> = Some(FD_SETSIZE);

/// A growable set of fds in the kernel's `fd_set` layout.
#[cfg(any(target_os = "linux", target_os = "android"))]
#[derive(Clone, Default)]
pub(crate) struct FdSet {
    words: Vec<libc::c_ulong>,
}

#[cfg(any(target_os = "linux", target_os = "android"))]
impl FdSet {
    const BITS: usize = libc::c_ulong::BITS as usize;

    pub(crate) fn new() -> FdSet {
        FdSet::default()
    }

    /// Makes room for fds below `nfds`.
    fn cover(&mut self, nfds: RawFd) {
        let words = (nfds.max(0) as usize).div_ceil(Self::BITS);
        if self.words.len() < words {
            self.words.resize(words, 0);
        }
    }

    /// Adds `fd`; returns false (and changes nothing) if it is negative.
    pub(crate) fn insert(&mut self, fd: RawFd) -> bool {
        if fd < 0 {
            return false;
        }
        self.cover(fd + 1);
        let fd = fd as usize;
        self.words[fd / Self::BITS] |= 1 << (fd % Self::BITS);
        true
    }

    pub(crate) fn remove(&mut self, fd: RawFd) {
        if fd >= 0 {
            let fd = fd as usize;
            if let Some(w) = self.words.get_mut(fd / Self::BITS) {
                *w &= !(1 << (fd % Self::BITS));
            }
        }
    }

    pub(crate) fn contains(&self, fd: RawFd) -> bool {
        if fd < 0 {
            return false;
        }
        let fd = fd as usize;
        self.words
            .get(fd / Self::BITS)
            .is_some_and(|w| w & (1 << (fd % Self::BITS)) != 0)
    }

    /// Copies `other` into `self`, reusing the allocation.
    pub(crate) fn copy_from(&mut self, other: &FdSet) {
        self.words.clone_from(&other.words);
    }

    /// Calls `f` for every fd in `self` or `other`, in increasing order.
    pub(crate) fn for_each_union(&self, other: &FdSet, mut f: impl FnMut(RawFd)) {
        let n = self.words.len().max(other.words.len());
        for i in 0..n {
            let mut w =
                self.words.get(i).copied().unwrap_or(0) | other.words.get(i).copied().unwrap_or(0);
            while w != 0 {
                let bit = w.trailing_zeros() as usize;
                f((i * Self::BITS + bit) as RawFd);
                w &= w - 1;
            }
        }
    }

    fn as_mut_ptr(&mut self, nfds: RawFd) -> *mut libc::fd_set {
        self.cover(nfds);
        self.words.as_mut_ptr().cast()
    }
}

/// A bounds-checked C `fd_set`: `FD_SET` beyond `FD_SETSIZE` would write
/// past its end, so fds out of range are refused instead.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
#[derive(Clone)]
pub(crate) struct FdSet(libc::fd_set);

#[cfg(not(any(target_os = "linux", target_os = "android")))]
impl FdSet {
    pub(crate) fn new() -> FdSet {
        let mut set = std::mem::MaybeUninit::<libc::fd_set>::uninit();
        // SAFETY: FD_ZERO initialises every byte of the set it is given.
        unsafe { libc::FD_ZERO(set.as_mut_ptr()) };
        // SAFETY: initialised just above.
        FdSet(unsafe { set.assume_init() })
    }

    fn in_range(fd: RawFd) -> bool {
        (0..FD_SETSIZE).contains(&fd)
    }

    /// Adds `fd`; returns false (and changes nothing) if it is out of range.
    pub(crate) fn insert(&mut self, fd: RawFd) -> bool {
        if !Self::in_range(fd) {
            return false;
        }
        // SAFETY: 0 <= fd < FD_SETSIZE, so the bit lies inside the set.
        unsafe { libc::FD_SET(fd, &mut self.0) };
        true
    }

    pub(crate) fn remove(&mut self, fd: RawFd) {
        if Self::in_range(fd) {
            // SAFETY: 0 <= fd < FD_SETSIZE, so the bit lies inside the set.
            unsafe { libc::FD_CLR(fd, &mut self.0) };
        }
    }

    pub(crate) fn contains(&self, fd: RawFd) -> bool {
        // SAFETY: 0 <= fd < FD_SETSIZE, so the bit lies inside the set.
        Self::in_range(fd) && unsafe { libc::FD_ISSET(fd, &self.0) }
    }

    pub(crate) fn copy_from(&mut self, other: &FdSet) {
        self.0 = other.0;
    }

    /// Calls `f` for every fd in `self` or `other`, in increasing order.
    pub(crate) fn for_each_union(&self, other: &FdSet, mut f: impl FnMut(RawFd)) {
        for fd in 0..FD_SETSIZE {
            if self.contains(fd) || other.contains(fd) {
                f(fd);
            }
        }
    }

    fn as_mut_ptr(&mut self, nfds: RawFd) -> *mut libc::fd_set {
        debug_assert!(nfds <= FD_SETSIZE);
        &mut self.0
    }
}

/// select(2) on read and write sets; `nfds` is the highest fd plus one.
pub(crate) fn select(
    nfds: RawFd,
    read: &mut FdSet,
    write: &mut FdSet,
    timeout: Option<Duration>,
) -> io::Result<usize> {
    let mut tv = timeout.map(timeval);
    let tv_ptr = tv
        .as_mut()
        .map_or(std::ptr::null_mut(), |tv| tv as *mut libc::timeval);
    let (r, w) = (read.as_mut_ptr(nfds), write.as_mut_ptr(nfds));
    // SAFETY: `as_mut_ptr` made both sets cover at least `nfds` bits, which
    // is all the kernel reads and writes; the timeout is null or points at
    // a live timeval.
    let n = syscall!(select(nfds, r, w, std::ptr::null_mut(), tv_ptr))?;
    Ok(n as usize)
}

// ---------------------------------------------------------------------------
// poll(2)
// ---------------------------------------------------------------------------

pub(crate) fn poll(fds: &mut [libc::pollfd], timeout: Option<Duration>) -> io::Result<usize> {
    // SAFETY: the pointer and length describe a live, writable slice.
    let n = syscall!(poll(
        fds.as_mut_ptr(),
        fds.len() as libc::nfds_t,
        timeout_ms(timeout)
    ))?;
    Ok(n as usize)
}

// ---------------------------------------------------------------------------
// epoll (Linux, Android)
// ---------------------------------------------------------------------------

#[cfg(muxloop_epoll)]
pub(crate) fn epoll_create() -> io::Result<OwnedFd> {
    // SAFETY: no pointers involved.
    let fd = syscall!(epoll_create1(libc::EPOLL_CLOEXEC))?;
    Ok(owned(fd))
}

#[cfg(muxloop_epoll)]
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
#[cfg(muxloop_epoll)]
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

// ---------------------------------------------------------------------------
// kqueue (macOS, iOS, FreeBSD, OpenBSD, NetBSD, DragonFly)
// ---------------------------------------------------------------------------

#[cfg(muxloop_kqueue)]
pub(crate) fn kqueue() -> io::Result<OwnedFd> {
    // SAFETY: no pointers involved.
    let fd = owned(syscall!(kqueue())?);
    // kqueue(2) has no close-on-exec flag on every system; set it here.
    // SAFETY: `fd` is open and owned.
    syscall!(fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC))?;
    Ok(fd)
}

/// A buffer of kevent records that may move between threads.
#[cfg(muxloop_kqueue)]
pub(crate) struct KeventList(pub(crate) Vec<libc::kevent>);

// SAFETY: the only pointer in a kevent is `udata`, which muxloop uses as an
// integer token and never dereferences.
#[cfg(muxloop_kqueue)]
unsafe impl Send for KeventList {}

/// A kevent change record. Built field by field because the struct has
/// extra members on some systems (FreeBSD 12's `ext`).
#[cfg(muxloop_kqueue)]
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
#[cfg(muxloop_kqueue)]
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

// ---------------------------------------------------------------------------
// io_uring (Linux): the ring itself is the `io-uring` crate's; queuing an
// entry is its one unsafe call.
// ---------------------------------------------------------------------------

/// Closes `fd`, whose owner is then forgotten without being dropped (an
/// io_uring ring inherited across `fork`, whose memory is not mapped here).
#[cfg(muxloop_uring)]
pub(crate) fn close_raw(fd: RawFd) {
    // SAFETY: the caller owns `fd` and forgets its owner right after, so
    // the number is closed once and used by nothing afterwards.
    unsafe { libc::close(fd) };
}

/// Queues `entry`, which must be a poll add or poll remove: they name an
/// fd or a user_data value, never a buffer. `Err` if the queue is full.
#[cfg(muxloop_uring)]
pub(crate) fn uring_push(
    sq: &mut io_uring::SubmissionQueue<'_>,
    entry: &io_uring::squeue::Entry,
) -> Result<(), io_uring::squeue::PushError> {
    // SAFETY: the kernel reads no memory through a poll add or poll remove
    // entry (only the fd, the event mask and user_data it carries), so
    // nothing has to outlive the submission.
    unsafe { sq.push(entry) }
}

// ---------------------------------------------------------------------------
// Wake-ups: eventfd on Linux, a self-pipe elsewhere.
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// Sockets, for the stream layer: sends that never raise SIGPIPE, a
// non-blocking connect and its outcome.
// ---------------------------------------------------------------------------

/// `send`'s flags: never SIGPIPE where the flag exists (elsewhere the
/// socket gets `SO_NOSIGPIPE` instead, see `no_sigpipe`).
#[cfg(not(muxloop_apple))]
const SEND_FLAGS: libc::c_int = libc::MSG_NOSIGNAL;
#[cfg(muxloop_apple)]
const SEND_FLAGS: libc::c_int = 0;

/// send(2) of `buf` on a connected socket, returning `EPIPE` instead of
/// raising SIGPIPE.
#[inline]
pub(crate) fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    raw_result(send_raw(fd, buf))
}

/// recv(2) into `buf`: what is there, at most its length.
#[inline]
pub(crate) fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    raw_result(recv_raw(fd, buf))
}

/// [`send`] as the kernel answers: bytes sent, or -1 with `errno` set
/// (turn it into an error with [`raw_result`] before anything else runs).
/// For a hot path that tests for the usual outcome before building a
/// result.
#[inline(always)]
pub(crate) fn send_raw(fd: RawFd, buf: &[u8]) -> isize {
    // SAFETY: the pointer and length describe a live slice.
    unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), SEND_FLAGS) }
}

/// [`recv`] as the kernel answers: bytes read, 0 at EOF, or -1 with
/// `errno` set, as [`send_raw`].
#[inline(always)]
pub(crate) fn recv_raw(fd: RawFd, buf: &mut [u8]) -> isize {
    // SAFETY: the pointer and length describe a live, writable slice.
    unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) }
}

/// The result of a raw call that returned `n`: `errno` if it is -1. Call
/// it right after the call, before anything can change `errno`.
#[inline(always)]
pub(crate) fn raw_result(n: isize) -> io::Result<usize> {
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// sendmsg(2) of `bufs` on a connected socket: a vectored write that
/// returns `EPIPE` instead of raising SIGPIPE.
pub(crate) fn send_vectored(fd: RawFd, bufs: &[std::io::IoSlice<'_>]) -> io::Result<usize> {
    if let [buf] = bufs {
        // One buffer: send(2), which spares the kernel the iovec import.
        return send(fd, buf);
    }
    // SAFETY: a zeroed msghdr is valid (no name, no control data).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    // IoSlice is guaranteed ABI-compatible with iovec on Unix; the kernel
    // only reads the buffers.
    msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = bufs.len().min(1024) as _;
    // SAFETY: `msg` points at `bufs`, live for the call.
    let n = syscall!(sendmsg(fd, &msg, SEND_FLAGS))?;
    Ok(n as usize)
}

/// Sets `SO_NOSIGPIPE` where sends have no `MSG_NOSIGNAL`; nothing elsewhere.
pub(crate) fn no_sigpipe(fd: RawFd) -> io::Result<()> {
    #[cfg(muxloop_apple)]
    {
        let on: libc::c_int = 1;
        // SAFETY: `on` is a live c_int and the length says so.
        syscall!(setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_NOSIGPIPE,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t
        ))?;
    }
    let _ = fd;
    Ok(())
}

/// A socket address in the kernel's form.
pub(crate) struct SockAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl SockAddr {
    pub(crate) fn family(&self) -> libc::c_int {
        libc::c_int::from(self.storage.ss_family)
    }

    /// An IPv4 or IPv6 address.
    pub(crate) fn inet(addr: &std::net::SocketAddr) -> SockAddr {
        // SAFETY: a zeroed sockaddr_storage is a valid, empty address.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let len = match addr {
            std::net::SocketAddr::V4(a) => {
                // SAFETY: sockaddr_storage is large and aligned enough for
                // any sockaddr type, sockaddr_in included.
                let sin = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in) };
                sin.sin_family = libc::AF_INET as libc::sa_family_t;
                sin.sin_port = a.port().to_be();
                sin.sin_addr = libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                };
                std::mem::size_of::<libc::sockaddr_in>()
            }
            std::net::SocketAddr::V6(a) => {
                // SAFETY: as above, for sockaddr_in6.
                let sin6 = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in6) };
                sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sin6.sin6_port = a.port().to_be();
                sin6.sin6_addr = libc::in6_addr {
                    s6_addr: a.ip().octets(),
                };
                sin6.sin6_flowinfo = a.flowinfo();
                sin6.sin6_scope_id = a.scope_id();
                std::mem::size_of::<libc::sockaddr_in6>()
            }
        };
        SockAddr {
            storage,
            len: len as libc::socklen_t,
        }
    }

    /// A Unix-domain path.
    pub(crate) fn unix(path: &std::path::Path) -> io::Result<SockAddr> {
        use std::os::unix::ffi::OsStrExt;
        let bytes = path.as_os_str().as_bytes();
        // SAFETY: a zeroed sockaddr_storage is a valid, empty address.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        // SAFETY: sockaddr_storage is large and aligned enough for
        // sockaddr_un.
        let sun = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_un) };
        if bytes.len() >= sun.sun_path.len() || bytes.contains(&0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "Unix socket path {} is too long ({} bytes, at most {}) or holds a NUL",
                    path.display(),
                    bytes.len(),
                    sun.sun_path.len() - 1
                ),
            ));
        }
        sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (dst, src) in sun.sun_path.iter_mut().zip(bytes) {
            *dst = *src as libc::c_char;
        }
        let base = std::mem::size_of::<libc::sockaddr_un>() - sun.sun_path.len();
        Ok(SockAddr {
            storage,
            len: (base + bytes.len() + 1) as libc::socklen_t,
        })
    }
}

/// Starts a connect of the non-blocking socket `fd` to `addr`: `Ok(false)`
/// while it is in progress (wait for writability, then
/// `take_socket_error`), `Ok(true)` if it completed at once.
pub(crate) fn start_connect(fd: RawFd, addr: &SockAddr) -> io::Result<bool> {
    // SAFETY: `addr.storage` holds a valid address of `addr.len` bytes.
    let res = syscall!(connect(
        fd,
        (&addr.storage as *const libc::sockaddr_storage).cast(),
        addr.len
    ));
    match res {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(false),
        Err(e) => Err(e),
    }
}

/// A non-blocking, close-on-exec stream socket of `family`, without
/// SIGPIPE.
pub(crate) fn stream_socket(family: libc::c_int) -> io::Result<OwnedFd> {
    let fd = new_stream_socket(family)?;
    no_sigpipe(fd.as_raw_fd())?;
    Ok(fd)
}

#[cfg(muxloop_sock_flags)]
fn new_stream_socket(family: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: no pointers involved.
    let fd = syscall!(socket(
        family,
        libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        0
    ))?;
    Ok(owned(fd))
}

#[cfg(not(muxloop_sock_flags))]
fn new_stream_socket(family: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: no pointers involved.
    let fd = owned(syscall!(socket(family, libc::SOCK_STREAM, 0))?);
    // SAFETY: fcntl on a descriptor we own; no memory involved.
    syscall!(fcntl(fd.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK))?;
    // SAFETY: as above.
    syscall!(fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC))?;
    Ok(fd)
}

/// Accepts a TCP connection on the listening socket `fd` as a
/// non-blocking, close-on-exec socket (one `accept4`, where std's accept
/// needs an `ioctl(FIONBIO)` after it), with the peer's address.
#[cfg(muxloop_sock_flags)]
pub(crate) fn accept_inet(fd: RawFd) -> io::Result<(OwnedFd, std::net::SocketAddr)> {
    // SAFETY: a zeroed sockaddr_storage is a valid, empty address.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `storage` and `len` are live and describe the buffer the
    // kernel may write the address into.
    let conn = syscall!(accept4(
        fd,
        (&mut storage as *mut libc::sockaddr_storage).cast(),
        &mut len,
        libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC
    ))?;
    let conn = owned(conn);
    let peer = inet_of(&storage).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "accept returned an address of family {}, not IPv4 or IPv6",
                storage.ss_family
            ),
        )
    })?;
    Ok((conn, peer))
}

/// The IPv4 or IPv6 address in `storage`, if it holds one.
#[cfg(muxloop_sock_flags)]
fn inet_of(storage: &libc::sockaddr_storage) -> Option<std::net::SocketAddr> {
    match libc::c_int::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, and
            // sockaddr_storage is large and aligned enough for it.
            let sin = unsafe { &*(storage as *const _ as *const libc::sockaddr_in) };
            let ip = std::net::Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Some(std::net::SocketAddr::from((ip, u16::from_be(sin.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &*(storage as *const _ as *const libc::sockaddr_in6) };
            let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(std::net::SocketAddr::V6(std::net::SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// The pending error of a socket (`SO_ERROR`, which reading clears): how a
/// non-blocking connect ended. `Ok(None)` if it succeeded.
pub(crate) fn take_socket_error(fd: RawFd) -> io::Result<Option<io::Error>> {
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `err` and `len` are live and describe a c_int.
    syscall!(getsockopt(
        fd,
        libc::SOL_SOCKET,
        libc::SO_ERROR,
        (&mut err as *mut libc::c_int).cast(),
        &mut len
    ))?;
    Ok((err != 0).then(|| io::Error::from_raw_os_error(err)))
}

// ---------------------------------------------------------------------------
// Descriptors that keep their number, fork detection, child processes.
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// Signals: a process-wide handler that marks the signal pending and wakes
// the loop that asked for it through its pipe.
// ---------------------------------------------------------------------------

/// One more than the highest signal number muxloop accepts.
pub(crate) const NSIG: usize = 65;

/// Per signal: the write end of the pipe of the loop handling it, or -1.
static SIGNAL_PIPES: [std::sync::atomic::AtomicI32; NSIG] =
    [const { std::sync::atomic::AtomicI32::new(-1) }; NSIG];

/// Per signal: set by the handler, cleared by the loop when it runs the
/// callback. A flag per signal, not the pipe's bytes, says what arrived:
/// a burst that fills the pipe cannot make another signal be lost.
static SIGNAL_PENDING: [std::sync::atomic::AtomicBool; NSIG] =
    [const { std::sync::atomic::AtomicBool::new(false) }; NSIG];

/// Per signal: the process whose loop handles it. A forked child that
/// never took the loop over has another pid: there the handler gives the
/// signal its earlier disposition back and raises it again, so the child
/// behaves as if muxloop had never handled it.
static SIGNAL_OWNERS: [std::sync::atomic::AtomicI32; NSIG] =
    [const { std::sync::atomic::AtomicI32::new(0) }; NSIG];

/// Per signal: the disposition before muxloop took it over, readable from
/// the handler.
struct SavedActions([std::cell::UnsafeCell<std::mem::MaybeUninit<libc::sigaction>>; NSIG]);

// SAFETY: slot `n` is written only by the thread that owns signal `n`'s
// `SIGNAL_PIPES` entry (won with a compare-exchange) before it installs
// the handler, and read only after the handler is installed (the
// sigaction(2) call orders the write before any delivery) or by that
// owner when it restores the disposition.
unsafe impl Sync for SavedActions {}

static SAVED_ACTIONS: SavedActions =
    SavedActions([const { std::cell::UnsafeCell::new(std::mem::MaybeUninit::uninit()) }; NSIG]);

#[cfg(any(target_os = "linux", target_os = "android"))]
fn errno_location() -> *mut libc::c_int {
    // SAFETY: returns the calling thread's errno; always valid.
    unsafe { libc::__errno_location() }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn errno_location() -> *mut libc::c_int {
    // SAFETY: returns the calling thread's errno; always valid.
    unsafe { libc::__error() }
}

extern "C" fn forward_signal(signum: libc::c_int) {
    use std::sync::atomic::Ordering;
    let Some(slot) = SIGNAL_PIPES.get(signum as usize) else {
        return;
    };
    let errno = errno_location();
    // SAFETY: errno is the calling thread's; it is restored below, as
    // write(2) and getpid(2) may change it behind the interrupted code.
    let saved_errno = unsafe { *errno };
    let fd = slot.load(Ordering::Acquire);
    if fd >= 0 {
        if SIGNAL_OWNERS[signum as usize].load(Ordering::Relaxed) == getpid() {
            SIGNAL_PENDING[signum as usize].store(true, Ordering::Release);
            let byte = signum as u8;
            // SAFETY: write(2) of one byte from the stack to a non-blocking
            // pipe, async-signal-safe. A full pipe drops the byte, which is
            // fine: the pipe is readable, and the flag says which signal.
            unsafe { libc::write(fd, (&byte as *const u8).cast(), 1) };
        } else {
            // SAFETY: the slot was filled before the handler was installed
            // (see `SavedActions`); sigaction(2) and raise(3) are
            // async-signal-safe. The signal is blocked while its handler
            // runs, so the raised one is delivered, under the restored
            // disposition, when this returns.
            unsafe {
                let old = (*SAVED_ACTIONS.0[signum as usize].get()).as_ptr();
                libc::sigaction(signum, old, std::ptr::null_mut());
                libc::raise(signum);
            }
        }
    }
    // SAFETY: as above.
    unsafe { *errno = saved_errno };
}

/// Marks muxloop's handling of a signal: while it lives, the signal is
/// forwarded to a loop's pipe. Restore it with [`restore_signal`].
pub(crate) struct SignalRoute(i32);

/// Routes `signum` to `pipe_write`, the pipe of a loop in this process.
/// Fails with `AlreadyExists` if another loop of this process handles it;
/// a route inherited from the parent across `fork` is taken over.
pub(crate) fn install_signal(signum: i32, pipe_write: RawFd) -> io::Result<SignalRoute> {
    use std::sync::atomic::Ordering;
    let i = signum as usize;
    let me = getpid();
    let slot = &SIGNAL_PIPES[i];
    let current = slot.load(Ordering::SeqCst);
    let inherited = current >= 0 && SIGNAL_OWNERS[i].load(Ordering::SeqCst) != me;
    let expected = if inherited { current } else { -1 };
    if slot
        .compare_exchange(expected, pipe_write, Ordering::SeqCst, Ordering::SeqCst)
        .is_err()
    {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("signal {signum} is already handled by another event loop"),
        ));
    }
    SIGNAL_OWNERS[i].store(me, Ordering::SeqCst);
    SIGNAL_PENDING[i].store(false, Ordering::SeqCst);
    if inherited {
        // The handler and the saved disposition are the parent's, still in
        // place: keep them.
        return Ok(SignalRoute(signum));
    }
    // SAFETY: a zeroed sigaction is a valid value to fill in.
    let mut new: libc::sigaction = unsafe { std::mem::zeroed() };
    new.sa_sigaction = forward_signal as *const () as usize;
    new.sa_flags = libc::SA_RESTART;
    // SAFETY: `new.sa_mask` is a valid sigset_t to initialise.
    unsafe { libc::sigemptyset(&mut new.sa_mask) };
    // SAFETY: this thread owns slot `i` (the compare-exchange above), and
    // the handler, not installed yet, cannot read it.
    let old = unsafe { (*SAVED_ACTIONS.0[i].get()).as_mut_ptr() };
    // SAFETY: `new` is a live sigaction; `old` points to the saved slot,
    // which sigaction(2) fills with the disposition it replaces.
    if let Err(e) = syscall!(sigaction(signum, &new, old)) {
        slot.store(-1, Ordering::SeqCst);
        return Err(e);
    }
    Ok(SignalRoute(signum))
}

/// Points an installed route at another pipe (the loop's new one after
/// `fork`), owned by this process.
pub(crate) fn reroute_signal(route: &SignalRoute, pipe_write: RawFd) {
    use std::sync::atomic::Ordering;
    let i = route.0 as usize;
    SIGNAL_OWNERS[i].store(getpid(), Ordering::SeqCst);
    SIGNAL_PIPES[i].store(pipe_write, Ordering::SeqCst);
}

/// Whether `signum` arrived since the last call, clearing the mark.
pub(crate) fn take_pending_signal(route: &SignalRoute) -> bool {
    SIGNAL_PENDING[route.0 as usize].swap(false, std::sync::atomic::Ordering::AcqRel)
}

/// Restores the disposition `signum` had before [`install_signal`] and
/// stops forwarding it.
pub(crate) fn restore_signal(route: SignalRoute) -> io::Result<()> {
    let i = route.0 as usize;
    // SAFETY: the slot was filled by `install_signal` for this route,
    // which this thread owns.
    let old = unsafe { (*SAVED_ACTIONS.0[i].get()).as_ptr() };
    // SAFETY: `old` points to the sigaction the kernel returned earlier.
    let res = syscall!(sigaction(route.0, old, std::ptr::null_mut()));
    SIGNAL_PIPES[i].store(-1, std::sync::atomic::Ordering::SeqCst);
    SIGNAL_PENDING[i].store(false, std::sync::atomic::Ordering::SeqCst);
    res.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    trait Count {
        fn bump(&mut self) -> u32;
    }

    /// Counts its calls, and its drops in `dropped`.
    struct Counter {
        calls: u32,
        dropped: Rc<Cell<u32>>,
    }

    impl Count for Counter {
        fn bump(&mut self) -> u32 {
            self.calls += 1;
            self.calls
        }
    }

    impl Drop for Counter {
        fn drop(&mut self) {
            self.dropped.set(self.dropped.get() + 1);
        }
    }

    fn counter() -> (RunBox<dyn Count>, Rc<Cell<u32>>) {
        let dropped = Rc::new(Cell::new(0));
        let cell: Box<RunCell<dyn Count>> = RunCell::boxed(Counter {
            calls: 0,
            dropped: dropped.clone(),
        });
        (RunBox::new(cell), dropped)
    }

    #[test]
    fn a_run_box_refuses_its_value_while_it_runs() {
        let (mut b, dropped) = counter();
        assert_eq!(b.get_mut().map(|c| c.bump()), Some(1));
        let mut run = b.run().expect("not running");
        assert!(b.is_running());
        assert!(b.get().is_none());
        assert!(b.get_mut().is_none());
        assert!(b.run().is_none(), "one run at a time");
        assert_eq!(run.get_mut().bump(), 2);
        drop(run);
        assert!(!b.is_running());
        assert_eq!(b.get_mut().map(|c| c.bump()), Some(3));
        drop(b);
        assert_eq!(dropped.get(), 1);
    }

    #[test]
    fn a_run_box_dropped_during_a_run_is_freed_when_the_run_ends() {
        let (mut b, dropped) = counter();
        let mut run = b.run().expect("not running");
        drop(b);
        assert_eq!(dropped.get(), 0, "the value outlives its box while it runs");
        assert_eq!(run.get_mut().bump(), 1);
        drop(run);
        assert_eq!(dropped.get(), 1);
    }

    #[test]
    fn timeouts_round_up_to_the_millisecond_and_saturate() {
        let ms = |nanos: u64| timeout_ms(Some(Duration::from_nanos(nanos)));
        assert_eq!(timeout_ms(None), -1);
        assert_eq!(ms(0), 0);
        assert_eq!(ms(1), 1);
        assert_eq!(ms(999_999), 1);
        assert_eq!(ms(1_000_000), 1);
        assert_eq!(ms(1_000_001), 2);
        assert_eq!(ms(1_500_000_000), 1_500);
        assert_eq!(ms(2_000_000_000_000), 2_000_000);
        let max = libc::c_int::MAX;
        let secs = max as u64 / 1_000;
        assert_eq!(
            timeout_ms(Some(Duration::from_secs(secs))),
            (secs * 1_000) as libc::c_int
        );
        assert_eq!(timeout_ms(Some(Duration::new(secs, 999_999_999))), max);
        assert_eq!(timeout_ms(Some(Duration::from_secs(secs + 1))), max);
        assert_eq!(timeout_ms(Some(Duration::MAX)), max);
    }
}
