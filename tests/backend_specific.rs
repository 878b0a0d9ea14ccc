//! Behaviour that only some backends have: select's FD_SETSIZE limit,
//! epoll's refusal of regular files, and rollback when a backend fails.

mod util;

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use muxloop::{BackendKind, Interest, Ready, Selector};
use util::*;

/// Off Linux, select(2) stops at FD_SETSIZE: a higher fd is refused at
/// register, never written past the end of an `fd_set`.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
#[test]
fn select_refuses_fd_at_or_above_fd_setsize_at_register() {
    if !fds_fit(1_600, "an fd numbered 1500") {
        return;
    }
    let (a, _b) = pair();
    let high = dup_at_least(a.as_raw_fd(), 1500);
    let mut sel = selector::<()>(BackendKind::Select);
    let err = sel
        .register(high.as_raw_fd(), Interest::READABLE, ())
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    assert!(err.to_string().contains("FD_SETSIZE"), "{err}");
    assert!(sel.is_empty());
    // Nothing half-registered: the selector keeps working.
    sel.register(a.as_raw_fd(), Interest::WRITABLE, ()).unwrap();
    assert_eq!(ready_fds(&mut sel), vec![a.as_raw_fd()]);
}

/// On Linux the select backend's fd set grows: fds far beyond FD_SETSIZE
/// are watched like any other.
#[cfg(any(target_os = "linux", target_os = "android"))]
#[test]
fn select_watches_fds_far_beyond_fd_setsize() {
    use std::io::Write;
    if !fds_fit(9_100, "an fd numbered 9000") {
        return;
    }
    let (a, mut b) = pair();
    let (c, _d) = pair();
    let high_read = dup_at_least(a.as_raw_fd(), 1500);
    let higher_write = dup_at_least(c.as_raw_fd(), 9000);
    let mut sel = selector::<&str>(BackendKind::Select);
    sel.register(high_read.as_raw_fd(), Interest::READABLE, "high")
        .unwrap();
    sel.register(higher_write.as_raw_fd(), Interest::WRITABLE, "higher")
        .unwrap();
    sel.register(a.as_raw_fd(), Interest::READABLE, "low")
        .unwrap();
    assert_eq!(
        poll_now(&mut sel),
        vec![(higher_write.as_raw_fd(), Ready::WRITABLE)]
    );
    b.write_all(b"x").unwrap();
    let got = ready(&mut sel, Some(std::time::Duration::from_secs(5)));
    let fds: Vec<std::os::fd::RawFd> = got.iter().map(|e| e.0).collect();
    assert_eq!(
        fds,
        vec![
            a.as_raw_fd(),
            high_read.as_raw_fd(),
            higher_write.as_raw_fd()
        ]
    );
    sel.unregister(higher_write.as_raw_fd()).unwrap();
    sel.unregister(high_read.as_raw_fd()).unwrap();
    assert_eq!(ready_fds(&mut sel), vec![a.as_raw_fd()]);
}

#[cfg(target_os = "linux")]
#[test]
fn epoll_and_mio_refuse_regular_files_and_dev_null_naming_the_cause() {
    for path in ["Cargo.toml", "/dev/null", "src"] {
        let file = std::fs::File::open(path).unwrap();
        for kind in [BackendKind::Epoll, BackendKind::Mio] {
            if !kind.is_available() {
                continue;
            }
            let mut sel = selector::<&str>(kind);
            let err = sel
                .register(file.as_raw_fd(), Interest::READABLE, "file")
                .unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");
            let msg = err.to_string();
            for part in [
                "does not support polling",
                "regular file",
                "select and poll",
            ] {
                assert!(msg.contains(part), "{kind} {path}: {msg}");
            }
            assert!(sel.is_empty());
            assert!(sel.key(file.as_raw_fd()).is_none());
            assert_eq!(
                sel.unregister(file.as_raw_fd()).unwrap_err().kind(),
                io::ErrorKind::NotFound
            );
        }
    }
}

#[test]
fn poll_and_select_accept_regular_files_as_always_ready() {
    let file = std::fs::File::open("Cargo.toml").unwrap();
    for kind in [BackendKind::Select, BackendKind::Poll] {
        let mut sel = selector::<()>(kind);
        sel.register(file.as_raw_fd(), Interest::READABLE, ())
            .unwrap();
        assert_eq!(ready_fds(&mut sel), vec![file.as_raw_fd()], "{kind}");
    }
}

#[cfg(target_os = "linux")]
#[test]
fn epoll_failed_modify_leaves_key_and_kernel_on_the_old_interest() {
    let (a, _ab) = pair();
    let fd = a.as_raw_fd();
    let mut sel = selector::<&str>(BackendKind::Epoll);
    sel.register(fd, Interest::WRITABLE, "old").unwrap();
    // The number now names a file epoll does not watch: MOD fails.
    let (pr, _pw) = pipe();
    dup_onto(&pr, fd);
    let err = sel.modify(fd, Interest::READABLE, "new").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT), "{err}");
    let key = sel.key(fd).unwrap();
    assert_eq!((key.interest(), *key.data()), (Interest::WRITABLE, "old"));
    sel.unregister(fd).unwrap();
}

/// A backend wrapper that fails `add` / `modify` on demand, to check that a
/// failure leaves no half-state in the selector.
/// Fails adds (`ENOMEM`) and modifies (`ENOSPC`) while the flag is set.
struct Failing(Arc<AtomicBool>);

impl Hooks for Failing {
    fn before(&mut self, call: Call) -> io::Result<()> {
        if !self.0.load(Ordering::SeqCst) {
            return Ok(());
        }
        match call {
            Call::Add => Err(io::Error::from_raw_os_error(libc::ENOMEM)),
            Call::Modify => Err(io::Error::from_raw_os_error(libc::ENOSPC)),
            _ => Ok(()),
        }
    }
}

#[test]
fn failed_backend_calls_leave_no_half_state_on_any_backend() {
    init_logging();
    for &kind in BackendKind::available() {
        let fail = Arc::new(AtomicBool::new(false));
        let backend = Hooked::new(kind, Failing(fail.clone()));
        let mut sel = Selector::from_backend(Box::new(backend));
        let (a, _ab) = pair();
        let (c, _cb) = pair();
        let fd = a.as_raw_fd();

        fail.store(true, Ordering::SeqCst);
        let err = sel.register(fd, Interest::WRITABLE, "a").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOMEM), "{kind}");
        assert!(sel.is_empty() && sel.key(fd).is_none(), "{kind}");
        fail.store(false, Ordering::SeqCst);
        let token = sel.register(fd, Interest::WRITABLE, "a").unwrap().token();
        sel.register(c.as_raw_fd(), Interest::READABLE, "c")
            .unwrap();

        fail.store(true, Ordering::SeqCst);
        let err = sel.modify(fd, Interest::READABLE, "changed").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{kind}");
        let key = sel.key(fd).unwrap();
        assert_eq!(key.interest(), Interest::WRITABLE, "{kind}");
        assert_eq!(*key.data(), "a", "{kind}");
        assert_eq!(key.token(), token, "{kind}");
        // Kernel and selector still agree: fd reported as writable.
        assert_eq!(poll_now(&mut sel), vec![(fd, Ready::WRITABLE)], "{kind}");
        fail.store(false, Ordering::SeqCst);
        assert_eq!(sel.len(), 2);
    }
}

#[test]
fn unknown_backend_name_lists_what_is_available() {
    let err = "iocp".parse::<BackendKind>().unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    for kind in BackendKind::available() {
        assert!(err.to_string().contains(kind.name()), "{err}");
    }
}

/// io_uring: a ready fd that is never drained is reported by every wait
/// (level-triggered out of one-shot polls), and one that was drained
/// between waits is not reported from its earlier completion.
#[cfg(all(target_os = "linux", feature = "uring"))]
#[test]
fn uring_is_level_triggered_and_never_reports_a_stale_completion() {
    if !BackendKind::Uring.is_available() {
        eprintln!("skipped: io_uring is not available here");
        return;
    }
    let mut sel = selector::<()>(BackendKind::Uring);
    let (a, mut b) = pair();
    sel.register(a.as_raw_fd(), Interest::READABLE, ()).unwrap();
    assert!(poll_now(&mut sel).is_empty());
    std::io::Write::write_all(&mut b, b"x").unwrap();
    for round in 0..3 {
        let got = ready(&mut sel, Some(std::time::Duration::from_secs(1)));
        assert_eq!(got.len(), 1, "wait {round}: {got:?}");
        assert!(got[0].1.is_readable());
    }
    // A poll armed and waiting, completed by new data, which is then read
    // before the next wait: that completion is stale.
    let mut a = a;
    drain(&mut a);
    assert!(poll_now(&mut sel).is_empty(), "a drained fd was reported");
    std::io::Write::write_all(&mut b, b"y").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    drain(&mut a);
    assert!(
        poll_now(&mut sel).is_empty(),
        "a stale completion was reported"
    );
    let t = std::time::Instant::now();
    assert!(ready(&mut sel, Some(std::time::Duration::from_millis(50))).is_empty());
    assert!(t.elapsed() >= std::time::Duration::from_millis(50));
}

/// io_uring blocked for the process (as container seccomp profiles do):
/// creating the backend fails at once, saying why, with PermissionDenied.
#[cfg(all(target_os = "linux", target_arch = "x86_64", feature = "uring"))]
#[test]
fn uring_blocked_by_seccomp_is_a_named_permission_error() {
    if !BackendKind::Uring.is_available() {
        eprintln!("skipped: io_uring is not available here");
        return;
    }
    // The child installs a seccomp filter on itself, tries the backend and
    // exits with the first check that failed.
    let pid = fork_child(|| {
        // Fail io_uring_setup with EPERM, allow everything else.
        let filter = [
            libc::sock_filter {
                code: 0x20,
                jt: 0,
                jf: 0,
                k: 0,
            }, // ld seccomp_data.nr
            libc::sock_filter {
                code: 0x15,
                jt: 0,
                jf: 1,
                k: libc::SYS_io_uring_setup as u32,
            },
            libc::sock_filter {
                code: 0x06,
                jt: 0,
                jf: 0,
                k: libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
            },
            libc::sock_filter {
                code: 0x06,
                jt: 0,
                jf: 0,
                k: libc::SECCOMP_RET_ALLOW,
            },
        ];
        let prog = libc::sock_fprog {
            len: filter.len() as u16,
            filter: filter.as_ptr() as *mut _,
        };
        // SAFETY: prctl with a live filter program, for this process.
        unsafe {
            assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
            assert_eq!(
                libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &prog),
                0
            );
        }
        let Err(err) = BackendKind::Uring.create() else {
            return 2;
        };
        if err.kind() != io::ErrorKind::PermissionDenied {
            return 3;
        }
        if !err.to_string().contains("blocked") {
            return 4;
        }
        // The others are unaffected.
        if BackendKind::Epoll.create().is_err() {
            return 5;
        }
        0
    });
    let status = wait_child(pid, std::time::Duration::from_secs(20));
    assert_eq!(
        exit_code(status),
        Some(0),
        "child check failed (status {status:#x})"
    );
}
