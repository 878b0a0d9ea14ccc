//! The loop across fork(2): a child that takes its copy over with
//! `after_fork`, and one that never touches it. Each test forks; they run
//! one at a time (a lock), and every child ends with `_exit`.

mod util;

use util::{exit_code, fork_child, wait_child};

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use muxloop::{BackendKind, EventLoop, Interest, PostAction};

static SERIAL: Mutex<()> = Mutex::new(());

pub fn forked_child_loop_serves_while_the_parent_keeps_working(kind: BackendKind) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut lp = EventLoop::<Vec<u8>>::with_backend(kind).unwrap();
    // One socket for the child to serve, added before the fork.
    let (child_end, mut test_end) = UnixStream::pair().unwrap();
    child_end.set_nonblocking(true).unwrap();
    let served = lp
        .add(child_end, Interest::READABLE, |lp, sock, _, got| {
            let mut buf = [0; 64];
            if let Ok(n) = sock.read(&mut buf) {
                got.extend_from_slice(&buf[..n]);
                let _ = sock.write_all(b"pong");
                lp.stop();
            }
            PostAction::Continue
        })
        .unwrap();
    let handle = lp.handle();
    // The parent's handle is used while the child runs its loop: with a
    // shared eventfd the child would swallow the parent's wake-ups.
    let pid = fork_child(|| {
        if lp.run_once(Some(Duration::ZERO), &mut Vec::new()).is_ok() {
            return 2; // an inherited loop must refuse to run
        }
        lp.after_fork().unwrap();
        let h = lp.handle();
        let mut got = Vec::new();
        for _ in 0..20 {
            h.wake().unwrap();
            lp.run_once(Some(Duration::from_millis(10)), &mut got)
                .unwrap();
        }
        lp.call_later(Duration::from_secs(5), |lp, _| lp.stop());
        lp.run(&mut got).unwrap();
        if got == b"ping" { 0 } else { 3 }
    });
    // In the parent: the served socket is the child's business now.
    let mut parent_got = Vec::new();
    lp.discard(served).unwrap();
    let waker = {
        let handle = handle.clone();
        std::thread::spawn(move || {
            for _ in 0..50 {
                let _ = handle.wake();
                std::thread::sleep(Duration::from_millis(4));
            }
        })
    };
    test_end.write_all(b"ping").unwrap();
    let mut reply = [0; 4];
    test_end
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    test_end.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"pong", "{kind}");
    let status = wait_child(pid, Duration::from_secs(20));
    assert_eq!(
        exit_code(status),
        Some(0),
        "{kind}: child status {status:#x}"
    );
    waker.join().unwrap();
    // The parent's loop still works, and its handle still wakes it.
    let remote = handle.clone();
    let caller = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        remote.call_soon(|lp, got: &mut Vec<u8>| {
            got.push(1);
            lp.stop();
        })
    });
    lp.call_later(Duration::from_secs(5), |lp, _| lp.stop());
    let t = Instant::now();
    lp.run(&mut parent_got).unwrap();
    caller.join().unwrap().unwrap();
    assert_eq!(
        parent_got,
        vec![1],
        "{kind}: the parent's handle no longer wakes it"
    );
    assert!(t.elapsed() < Duration::from_secs(4), "{kind}");
}

pub fn sigterm_to_a_child_that_never_used_the_loop_kills_it(kind: BackendKind) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let ran = Arc::new(AtomicBool::new(false));
    let mut lp = EventLoop::<()>::with_backend(kind).unwrap();
    let flag = ran.clone();
    lp.add_signal(libc::SIGTERM, move |_, _| {
        flag.store(true, Ordering::SeqCst)
    })
    .unwrap();
    let pid = fork_child(|| {
        std::thread::sleep(Duration::from_secs(10));
        0
    });
    std::thread::sleep(Duration::from_millis(50));
    // SAFETY: signals the test's own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = wait_child(pid, Duration::from_secs(20));
    assert!(
        libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGTERM,
        "{kind}: the child survived SIGTERM (status {status:#x})"
    );
    for _ in 0..5 {
        lp.run_once(Some(Duration::from_millis(20)), &mut ())
            .unwrap();
    }
    assert!(
        !ran.load(Ordering::SeqCst),
        "{kind}: the child's SIGTERM ran the parent's callback"
    );
    // The parent's own SIGTERM still reaches its callback.
    // SAFETY: raise(3) to this thread; the handler is the loop's.
    unsafe { libc::raise(libc::SIGTERM) };
    lp.run_once(Some(Duration::from_secs(1)), &mut ()).unwrap();
    assert!(ran.load(Ordering::SeqCst), "{kind}");
    lp.remove_signal(libc::SIGTERM).unwrap();
}

pub fn a_child_can_take_the_signals_over(kind: BackendKind) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut lp = EventLoop::<u32>::with_backend(kind).unwrap();
    lp.add_signal(libc::SIGUSR2, |lp, n| {
        *n += 1;
        lp.stop();
    })
    .unwrap();
    let pid = fork_child(|| {
        lp.after_fork().unwrap();
        // SAFETY: raise(3) to this thread; the handler is the loop's.
        unsafe { libc::raise(libc::SIGUSR2) };
        lp.call_later(Duration::from_secs(5), |lp, _| lp.stop());
        let mut n = 0;
        lp.run(&mut n).unwrap();
        if n == 1 { 0 } else { 4 }
    });
    let status = wait_child(pid, Duration::from_secs(20));
    assert_eq!(
        exit_code(status),
        Some(0),
        "{kind}: child status {status:#x}"
    );
}

pub fn backend_fd_number_survives_after_fork(kind: BackendKind) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let lp = EventLoop::<()>::with_backend(kind).unwrap();
    let Some(before) = lp
        .backend_fd()
        .map(|fd| std::os::fd::AsRawFd::as_raw_fd(&fd))
    else {
        return;
    };
    let mut lp = lp;
    let pid = fork_child(|| {
        lp.after_fork().unwrap();
        let after = lp
            .backend_fd()
            .map(|fd| std::os::fd::AsRawFd::as_raw_fd(&fd));
        if after == Some(before) { 0 } else { 5 }
    });
    let status = wait_child(pid, Duration::from_secs(20));
    assert_eq!(
        exit_code(status),
        Some(0),
        "{kind}: child status {status:#x}"
    );
}

mod cases {
    pub use super::{
        a_child_can_take_the_signals_over, backend_fd_number_survives_after_fork,
        forked_child_loop_serves_while_the_parent_keeps_working,
        sigterm_to_a_child_that_never_used_the_loop_kills_it,
    };
}

per_backend!(
    forked_child_loop_serves_while_the_parent_keeps_working,
    sigterm_to_a_child_that_never_used_the_loop_kills_it,
    a_child_can_take_the_signals_over,
    backend_fd_number_survives_after_fork,
);
