//! Signals as loop callbacks. Each test uses its own signal: dispositions
//! are process-wide and the tests of one binary run in parallel.

mod util;

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use muxloop::{BackendKind, EventLoop};
use util::init_logging;

fn raise(signum: i32) {
    // SAFETY: raise(3) sends a signal to the calling thread; the handler
    // installed for it is async-signal-safe.
    assert_eq!(unsafe { libc::raise(signum) }, 0);
}

/// The handler currently installed for `signum`.
fn current_handler(signum: i32) -> usize {
    // SAFETY: a null new action only queries; `old` is a valid out-value.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        assert_eq!(libc::sigaction(signum, std::ptr::null(), &mut old), 0);
        old.sa_sigaction
    }
}

#[test]
fn signal_runs_its_callback_in_loop_context_on_every_backend() {
    init_logging();
    for &kind in BackendKind::available() {
        let mut lp = EventLoop::<Vec<i32>>::with_backend(kind).unwrap();
        lp.add_signal(libc::SIGUSR1, |lp, got| {
            got.push(libc::SIGUSR1);
            lp.stop();
        })
        .unwrap();
        lp.call_later(Duration::from_millis(20), |_, _| raise(libc::SIGUSR1));
        lp.call_later(Duration::from_secs(5), |lp, _| lp.stop());
        let t = Instant::now();
        let mut got = Vec::new();
        lp.run(&mut got).unwrap();
        assert_eq!(got, vec![libc::SIGUSR1], "{kind}");
        assert!(t.elapsed() < Duration::from_secs(4), "{kind}");
        assert_eq!(lp.stats().signals_dispatched, 1);
        // Coalesced: three raises before the loop looks, one callback.
        raise(libc::SIGUSR1);
        raise(libc::SIGUSR1);
        raise(libc::SIGUSR1);
        lp.run_once(Some(Duration::from_secs(1)), &mut got).unwrap();
        assert_eq!(got.len(), 2, "{kind}: {got:?}");
    }
}

static OLD_HANDLER_RAN: AtomicBool = AtomicBool::new(false);

extern "C" fn old_handler(_: libc::c_int) {
    OLD_HANDLER_RAN.store(true, Ordering::SeqCst);
}

#[test]
fn remove_signal_restores_the_previous_disposition() {
    init_logging();
    // SAFETY: installs an async-signal-safe handler (an atomic store).
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = old_handler as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGUSR2, &sa, std::ptr::null_mut()), 0);
    }
    let before = current_handler(libc::SIGUSR2);
    let mut lp = EventLoop::<u32>::new().unwrap();
    lp.add_signal(libc::SIGUSR2, |_, n| *n += 1).unwrap();
    assert_ne!(current_handler(libc::SIGUSR2), before);
    raise(libc::SIGUSR2);
    let mut n = 0;
    lp.run_once(Some(Duration::from_secs(1)), &mut n).unwrap();
    assert_eq!(n, 1);
    assert!(!OLD_HANDLER_RAN.load(Ordering::SeqCst));

    assert!(lp.remove_signal(libc::SIGUSR2).unwrap());
    assert!(!lp.remove_signal(libc::SIGUSR2).unwrap());
    assert_eq!(current_handler(libc::SIGUSR2), before);
    raise(libc::SIGUSR2);
    assert!(OLD_HANDLER_RAN.load(Ordering::SeqCst));
    lp.run_once(Some(Duration::from_millis(20)), &mut n)
        .unwrap();
    assert_eq!(n, 1, "removed callback ran");
}

#[test]
fn dropping_the_loop_restores_dispositions() {
    let before = current_handler(libc::SIGURG);
    let mut lp = EventLoop::<()>::new().unwrap();
    lp.add_signal(libc::SIGURG, |_, _| {}).unwrap();
    assert_ne!(current_handler(libc::SIGURG), before);
    drop(lp);
    assert_eq!(current_handler(libc::SIGURG), before);
}

#[test]
fn uncatchable_and_invalid_signals_are_invalid_input() {
    let mut lp = EventLoop::<()>::new().unwrap();
    for signum in [libc::SIGKILL, libc::SIGSTOP, 0, -1, 65, 1000] {
        let err = lp.add_signal(signum, |_, _| {}).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{signum}: {err}");
    }
    assert_eq!(
        lp.remove_signal(-3).unwrap_err().kind(),
        io::ErrorKind::InvalidInput
    );
}

#[test]
fn one_signal_belongs_to_one_loop() {
    let mut a = EventLoop::<()>::new().unwrap();
    let mut b = EventLoop::<()>::new().unwrap();
    a.add_signal(libc::SIGWINCH, |_, _| {}).unwrap();
    let err = b.add_signal(libc::SIGWINCH, |_, _| {}).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
    // Replacing the callback in the owning loop is fine.
    a.add_signal(libc::SIGWINCH, |_, _| {}).unwrap();
    a.remove_signal(libc::SIGWINCH).unwrap();
    b.add_signal(libc::SIGWINCH, |_, _| {}).unwrap();
}

#[test]
fn a_burst_that_fills_the_pipe_does_not_lose_another_signal() {
    init_logging();
    // Signals used by no other test here.
    let (burst, single) = (libc::SIGPROF, libc::SIGVTALRM);
    for &kind in BackendKind::available() {
        let mut lp = EventLoop::<Vec<i32>>::with_backend(kind).unwrap();
        lp.add_signal(burst, move |_, got| got.push(burst)).unwrap();
        lp.add_signal(single, move |_, got| got.push(single))
            .unwrap();
        // More than a pipe holds (64 KiB on Linux) before the loop looks.
        for _ in 0..70_000 {
            raise(burst);
        }
        raise(single);
        let mut got = Vec::new();
        lp.run_once(Some(Duration::from_secs(1)), &mut got).unwrap();
        lp.run_once(Some(Duration::ZERO), &mut got).unwrap();
        got.sort_unstable();
        let mut want = vec![burst, single];
        want.sort_unstable();
        assert_eq!(got, want, "{kind}");
        lp.remove_signal(burst).unwrap();
        lp.remove_signal(single).unwrap();
    }
}

#[test]
fn fault_signals_are_refused() {
    let mut lp = EventLoop::<()>::new().unwrap();
    for signum in [libc::SIGSEGV, libc::SIGBUS, libc::SIGFPE, libc::SIGILL] {
        let err = lp.add_signal(signum, |_, _| {}).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{signum}");
        assert!(err.to_string().contains("fault"), "{err}");
    }
}
