// The child-watcher cases, shared by tests/children.rs (pidfd on Linux)
// and tests/children_sigchld.rs (SIGCHLD + waitpid, as elsewhere).

/// Calls `$then!` with the names of every case below, so that the list is
/// written once.
macro_rules! each_child_case {
    ($then:ident) => {
        $then!(
            exit_status_reaches_the_callback,
            a_child_that_exited_before_it_was_added_is_reported,
            a_killed_child_reports_its_signal,
            many_children_at_once_and_no_zombies,
            a_bare_pid_is_watched_too,
            child_output_streams_through_the_loop,
            a_watcher_taken_across_fork_reports_echild
        );
    };
}

use std::io::{self, Read};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use muxloop::{BackendKind, EventLoop};

type Results = Vec<(u32, io::Result<ExitStatus>)>;

fn sh(script: &str) -> std::process::Child {
    Command::new("sh")
        .args(["-c", script])
        .stdin(Stdio::null())
        .spawn()
        .unwrap()
}

/// Runs `lp` until `n` results arrived (or 20 s).
fn run_until(lp: &mut EventLoop<Results>, n: usize) -> Results {
    let mut got = Vec::new();
    let start = Instant::now();
    while got.len() < n && start.elapsed() < Duration::from_secs(20) {
        lp.run_once(Some(Duration::from_millis(100)), &mut got)
            .unwrap();
    }
    got
}

/// Whether `pid` is still a child of this process (a zombie counts).
fn still_a_child(pid: u32) -> bool {
    let mut status = 0;
    // SAFETY: `status` is a live c_int; WNOHANG never blocks.
    let r = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG) };
    r >= 0
}

fn record(pid: u32) -> impl FnOnce(&mut EventLoop<Results>, &mut Results, io::Result<ExitStatus>) {
    move |_, got, res| got.push((pid, res))
}

pub fn exit_status_reaches_the_callback(kind: BackendKind) {
    let mut lp = EventLoop::<Results>::with_backend(kind).unwrap();
    let child = sh("exit 7");
    let pid = child.id();
    lp.add_child(child, record(pid)).unwrap();
    let got = run_until(&mut lp, 1);
    assert_eq!(got.len(), 1, "{kind}");
    assert_eq!(got[0].1.as_ref().unwrap().code(), Some(7), "{kind}");
    assert!(!still_a_child(pid), "{kind}: zombie left behind");
    assert_eq!(lp.child_count(), 0);
}

pub fn a_child_that_exited_before_it_was_added_is_reported(kind: BackendKind) {
    let mut lp = EventLoop::<Results>::with_backend(kind).unwrap();
    let child = sh("exit 0");
    let pid = child.id();
    // Long enough for it to be a zombie already.
    std::thread::sleep(Duration::from_millis(200));
    lp.add_child(child, record(pid)).unwrap();
    assert_eq!(lp.child_count(), 1, "{kind}: watched until reported");
    let got = run_until(&mut lp, 1);
    assert_eq!(got.len(), 1, "{kind}");
    assert_eq!(lp.child_count(), 0, "{kind}");
    assert!(got[0].1.as_ref().unwrap().success(), "{kind}");
    assert!(!still_a_child(pid));
}

pub fn a_killed_child_reports_its_signal(kind: BackendKind) {
    let mut lp = EventLoop::<Results>::with_backend(kind).unwrap();
    let mut child = sh("sleep 30");
    let pid = child.id();
    child.kill().unwrap(); // SIGKILL; std does not reap it here
    lp.add_child(child, record(pid)).unwrap();
    let got = run_until(&mut lp, 1);
    assert_eq!(got.len(), 1, "{kind}");
    assert_eq!(
        got[0].1.as_ref().unwrap().signal(),
        Some(libc::SIGKILL),
        "{kind}"
    );
    assert!(!still_a_child(pid));
}

pub fn many_children_at_once_and_no_zombies(kind: BackendKind) {
    let mut lp = EventLoop::<Results>::with_backend(kind).unwrap();
    let mut pids = Vec::new();
    for i in 0..100 {
        let child = sh(&format!("sleep 0.0{}; exit {}", i % 10, i % 50));
        let pid = child.id();
        pids.push(pid);
        lp.add_child(child, record(pid)).unwrap();
    }
    assert_eq!(lp.child_count(), 100);
    let got = run_until(&mut lp, 100);
    assert_eq!(got.len(), 100, "{kind}");
    for (i, pid) in pids.iter().enumerate() {
        let (_, res) = got.iter().find(|(p, _)| p == pid).expect("reported");
        assert_eq!(
            res.as_ref().unwrap().code(),
            Some((i % 50) as i32),
            "{kind}"
        );
        assert!(!still_a_child(*pid), "{kind}: pid {pid} left as a zombie");
    }
    assert_eq!(lp.child_count(), 0);
}

pub fn a_bare_pid_is_watched_too(kind: BackendKind) {
    let mut lp = EventLoop::<Results>::with_backend(kind).unwrap();
    let child = sh("exit 9");
    let pid = child.id();
    // The Child is forgotten: only the pid is known to the loop.
    std::mem::forget(child);
    lp.add_child_pid(pid, record(pid)).unwrap();
    let got = run_until(&mut lp, 1);
    assert_eq!(got[0].1.as_ref().unwrap().code(), Some(9), "{kind}");
    assert!(!still_a_child(pid));
    // Reaped: watching it again is refused.
    let err = lp.add_child_pid(pid, |_, _, _| {}).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::NotFound, "{kind}: {err}");
    assert_eq!(
        lp.add_child_pid(0, |_, _, _| {}).unwrap_err().kind(),
        io::ErrorKind::InvalidInput
    );
}

pub fn child_output_streams_through_the_loop(kind: BackendKind) {
    let mut lp = EventLoop::<Results>::with_backend(kind).unwrap();
    let mut child = Command::new("sh")
        .args(["-c", "printf 'one\\ntwo\\n'; exit 4"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let pid = child.id();
    let output = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let sink = output.clone();
    muxloop_set_nonblocking(&out);
    lp.add(out, muxloop::Interest::READABLE, move |_, out, _, _| {
        let mut buf = [0; 256];
        match out.read(&mut buf) {
            Ok(0) => muxloop::PostAction::Remove,
            Ok(n) => {
                sink.borrow_mut().extend_from_slice(&buf[..n]);
                muxloop::PostAction::Continue
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => muxloop::PostAction::Continue,
            Err(_) => muxloop::PostAction::Remove,
        }
    })
    .unwrap();
    lp.add_child(child, record(pid)).unwrap();
    let got = run_until(&mut lp, 1);
    // The output may still be in the pipe when the exit is reported.
    for _ in 0..10 {
        lp.run_once(Some(Duration::from_millis(10)), &mut Vec::new())
            .unwrap();
    }
    assert_eq!(got[0].1.as_ref().unwrap().code(), Some(4), "{kind}");
    assert_eq!(&*output.borrow(), b"one\ntwo\n", "{kind}");
}

/// A loop forked while it watches a child (already polled once) and taken
/// over with `after_fork`: the child process's copy reports the watcher
/// with `ECHILD` (the watched process is its parent's child, not its own)
/// — at once through SIGCHLD, when it exits through a pidfd —, and does
/// not wait for ever.
pub fn a_watcher_taken_across_fork_reports_echild(kind: BackendKind) {
    let mut lp = EventLoop::<Results>::with_backend(kind).unwrap();
    let mut child = sh("sleep 1");
    let pid = child.id();
    lp.add_child_pid(pid, record(pid)).unwrap();
    for _ in 0..3 {
        lp.run_once(Some(Duration::from_millis(5)), &mut Vec::new())
            .unwrap();
    }
    let forked = crate::util::fork_child(|| {
        if lp.after_fork().is_err() {
            return 2;
        }
        let got = run_until(&mut lp, 1);
        match got.first() {
            Some((p, Err(e))) if *p == pid && e.raw_os_error() == Some(libc::ECHILD) => 0,
            Some(_) => 3,
            None => 4,
        }
    });
    let status = crate::util::wait_child(forked, Duration::from_secs(30));
    child.kill().unwrap();
    let _ = child.wait();
    assert_eq!(
        crate::util::exit_code(status),
        Some(0),
        "{kind}: the forked copy's watcher (status {status:#x})"
    );
}

fn muxloop_set_nonblocking(fd: &impl std::os::fd::AsRawFd) {
    let fd = fd.as_raw_fd();
    // SAFETY: fcntl on a descriptor the caller owns; no memory involved.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        assert!(flags >= 0);
        assert_eq!(libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK), 0);
    }
}
