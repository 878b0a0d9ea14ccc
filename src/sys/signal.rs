//! Signals: a process-wide handler that marks the signal pending and wakes
//! the loop that asked for it through its pipe.

use super::*;

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
