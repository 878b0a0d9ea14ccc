//! The loop driven from a host program's own poll(2) loop, on every
//! backend: through the backend fd where there is one, through
//! `watched_fds` + `run_ready` (GLib's way) everywhere.

mod util;

use util::pair;

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use muxloop::{BackendKind, EventLoop, Interest, PostAction, Ready};

/// How a host watches the loop.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    /// poll(2) on the backend fd, then `run_once(Some(ZERO))`.
    BackendFd,
    /// poll(2) on `watched_fds`, then `run_ready`.
    Fds,
}

fn modes(kind: BackendKind) -> Vec<Mode> {
    let lp = EventLoop::<()>::with_backend(kind).unwrap();
    if lp.backend_fd().is_some() {
        vec![Mode::BackendFd, Mode::Fds]
    } else {
        vec![Mode::Fds]
    }
}

/// poll(2) on `fds`, at most `timeout` (rounded up to whole ms);
/// returns the ready ones.
fn host_poll(fds: &[(RawFd, Interest)], timeout: Option<Duration>) -> Vec<(RawFd, Ready)> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&(fd, interest)| libc::pollfd {
            fd,
            events: if interest.is_readable() {
                libc::POLLIN
            } else {
                0
            } | if interest.is_writable() {
                libc::POLLOUT
            } else {
                0
            },
            revents: 0,
        })
        .collect();
    let ms = timeout.map_or(-1, |t| t.as_micros().div_ceil(1000).min(60_000) as i32);
    // SAFETY: `pfds` is a live array of pollfd of the length given.
    let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
    assert!(n >= 0, "poll: {}", std::io::Error::last_os_error());
    pfds.iter()
        .filter(|p| p.revents != 0)
        .map(|p| {
            let mut r = Ready::EMPTY;
            if p.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                r |= Ready::READABLE;
            }
            if p.revents & libc::POLLOUT != 0 {
                r |= Ready::WRITABLE;
            }
            (p.fd, r)
        })
        .collect()
}

/// One host turn: wait (at most `cap`, less if a timer is due), then let
/// the loop run. Returns (host saw something, callbacks run).
fn host_turn<S>(lp: &mut EventLoop<S>, mode: Mode, cap: Duration, state: &mut S) -> (bool, usize) {
    // A host takes the backend fd before it asks how long to sleep (from
    // then on the loop keeps the kernel object exact for it).
    let fd = match mode {
        Mode::BackendFd => lp.backend_fd().map(|fd| fd.as_raw_fd()),
        Mode::Fds => None,
    };
    let timeout = Some(lp.next_timeout().map_or(cap, |t| t.min(cap)));
    match mode {
        Mode::BackendFd => {
            let fd = fd.unwrap();
            let seen = host_poll(&[(fd, Interest::READABLE)], timeout);
            (
                !seen.is_empty(),
                lp.run_once(Some(Duration::ZERO), state).unwrap(),
            )
        }
        Mode::Fds => {
            let mut fds = Vec::new();
            lp.watched_fds(&mut fds).unwrap();
            let seen = host_poll(&fds, timeout);
            (!seen.is_empty(), lp.run_ready(&seen, state).unwrap())
        }
    }
}

fn reader() -> impl FnMut(
    &mut EventLoop<Vec<u8>>,
    &mut UnixStream,
    muxloop::SourceEvent<UnixStream>,
    &mut Vec<u8>,
) -> PostAction {
    |_, sock, _, got| {
        let mut buf = [0; 256];
        match sock.read(&mut buf) {
            Ok(0) => PostAction::Remove,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                PostAction::Continue
            }
            Err(_) => PostAction::Continue,
        }
    }
}

/// A host watching the backend fd: with epoll where there is one, since
/// its registrations belong to the open file (the file must stay the same,
/// not only the number); with poll(2) elsewhere.
struct HostWatcher {
    fd: RawFd,
    #[cfg(any(target_os = "linux", target_os = "android"))]
    ep: std::os::fd::OwnedFd,
}

impl HostWatcher {
    fn new(fd: RawFd) -> HostWatcher {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            use std::os::fd::FromRawFd;
            // SAFETY: plain syscalls; the new epoll fd is owned at once.
            let ep = unsafe {
                let raw = libc::epoll_create1(libc::EPOLL_CLOEXEC);
                assert!(raw >= 0);
                std::os::fd::OwnedFd::from_raw_fd(raw)
            };
            let mut ev = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: 7,
            };
            // SAFETY: `ev` is a live epoll_event; both fds are open.
            let r = unsafe { libc::epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) };
            assert_eq!(r, 0);
            HostWatcher { fd, ep }
        }
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        HostWatcher { fd }
    }

    /// Whether the backend fd turns readable within 2 s.
    fn hears(&self) -> bool {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            let _ = self.fd;
            let mut out = [libc::epoll_event { events: 0, u64: 0 }; 4];
            // SAFETY: `out` has room for the 4 events allowed.
            let n = unsafe { libc::epoll_wait(self.ep.as_raw_fd(), out.as_mut_ptr(), 4, 2000) };
            n == 1
        }
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        !host_poll(
            &[(self.fd, Interest::READABLE)],
            Some(Duration::from_secs(2)),
        )
        .is_empty()
    }
}

mod cases {
    use super::*;

    pub fn host_is_woken_by_an_inner_socket(kind: BackendKind) {
        for mode in modes(kind) {
            let mut lp = EventLoop::<Vec<u8>>::with_backend(kind).unwrap();
            let (a, mut b) = pair();
            lp.add(a, Interest::READABLE, reader()).unwrap();
            let writer = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(30));
                b.write_all(b"hello").unwrap();
                b
            });
            let mut got = Vec::new();
            let t = Instant::now();
            while got.is_empty() && t.elapsed() < Duration::from_secs(5) {
                host_turn(&mut lp, mode, Duration::from_secs(5), &mut got);
            }
            assert_eq!(got, b"hello", "{kind} {mode:?}");
            drop(writer.join());
        }
    }

    pub fn inner_timer_wakes_the_host_never_early_nor_busily(kind: BackendKind) {
        for mode in modes(kind) {
            let mut lp = EventLoop::<Option<Instant>>::with_backend(kind).unwrap();
            let start = Instant::now();
            lp.call_later(Duration::from_millis(40), |_, fired| {
                *fired = Some(Instant::now())
            });
            let mut fired = None;
            let mut turns = 0;
            while fired.is_none() && start.elapsed() < Duration::from_secs(5) {
                host_turn(&mut lp, mode, Duration::from_secs(5), &mut fired);
                turns += 1;
            }
            let late = fired.expect("fired").duration_since(start);
            assert!(
                late >= Duration::from_millis(40),
                "{kind} {mode:?}: early, {late:?}"
            );
            assert!(
                late < Duration::from_millis(40 + 60),
                "{kind} {mode:?}: late, {late:?}"
            );
            assert!(
                turns <= 3,
                "{kind} {mode:?}: {turns} host turns for one timer"
            );
        }
    }

    /// A stop, from a callback or from another thread, reaches a host
    /// that drives the loop with `run_once`: it sees `is_stopped` once,
    /// and a host that goes on is not made to spin.
    pub fn a_stop_reaches_the_host_which_may_go_on_without_spinning(kind: BackendKind) {
        for mode in modes(kind) {
            for from_thread in [false, true] {
                let mut lp = EventLoop::<()>::with_backend(kind).unwrap();
                if from_thread {
                    let handle = lp.handle();
                    std::thread::spawn(move || handle.stop().unwrap())
                        .join()
                        .unwrap();
                } else {
                    lp.call_soon(|lp, _| lp.stop());
                }
                let mut turns = 0;
                let start = Instant::now();
                while !lp.is_stopped() && start.elapsed() < Duration::from_secs(5) {
                    host_turn(&mut lp, mode, Duration::from_secs(5), &mut ());
                    turns += 1;
                }
                let what = format!("{kind} {mode:?} from_thread={from_thread}");
                assert!(lp.is_stopped(), "{what}: the host never saw the stop");
                assert!(turns <= 2, "{what}: {turns} turns to see the stop");
                assert_eq!(lp.next_timeout(), None, "{what}");
                // Going on: the host sleeps as it asks, and the stop is
                // answered.
                let start = Instant::now();
                let mut turns = 0;
                while start.elapsed() < Duration::from_millis(100) {
                    host_turn(&mut lp, mode, Duration::from_millis(25), &mut ());
                    turns += 1;
                }
                assert!(
                    turns <= 6,
                    "{what}: {turns} host turns in 100 ms after a stop"
                );
                assert!(!lp.is_stopped(), "{what}");
                let t = Instant::now();
                lp.run_once(Some(Duration::from_millis(30)), &mut ())
                    .unwrap();
                assert!(t.elapsed() >= Duration::from_millis(30), "{what}");
                // And `run` still answers a new stop.
                lp.call_soon(|lp, _| lp.stop());
                lp.run(&mut ()).unwrap();
                assert!(!lp.is_stopped(), "{what}");
            }
        }
    }

    pub fn handle_call_from_another_thread_wakes_the_host(kind: BackendKind) {
        for mode in modes(kind) {
            let mut lp = EventLoop::<u32>::with_backend(kind).unwrap();
            let handle = lp.handle();
            let t = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(30));
                handle.call_soon(|_, n| *n += 1).unwrap();
            });
            let mut n = 0;
            let start = Instant::now();
            while n == 0 && start.elapsed() < Duration::from_secs(5) {
                host_turn(&mut lp, mode, Duration::from_secs(5), &mut n);
            }
            assert_eq!(n, 1, "{kind} {mode:?}");
            t.join().unwrap();
        }
    }

    pub fn paused_disabled_and_removed_sources_do_not_wake_the_host(kind: BackendKind) {
        for mode in modes(kind) {
            let mut lp = EventLoop::<u32>::with_backend(kind).unwrap();
            let (a, mut b) = pair();
            let (c, mut d) = pair();
            let (e, mut f) = pair();
            // Never reads: data stays ready. Disables itself on its first call.
            let disabled = lp
                .add(a, Interest::READABLE, |lp, _, ev, n| {
                    *n += 1;
                    lp.disable(ev.id()).unwrap();
                    PostAction::Continue
                })
                .unwrap();
            let paused = lp
                .add(c, Interest::READABLE, |_, _, _, _| PostAction::Continue)
                .unwrap();
            let removed = lp
                .add(e, Interest::READABLE, |_, _, _, _| PostAction::Continue)
                .unwrap();
            b.write_all(b"x").unwrap();
            let mut n = 0;
            host_turn(&mut lp, mode, Duration::from_secs(5), &mut n);
            assert_eq!(n, 1, "{kind} {mode:?}");
            let kept = lp.pause(paused).unwrap();
            let sock = lp.remove(removed).unwrap();
            d.write_all(b"x").unwrap();
            f.write_all(b"x").unwrap();
            // Changes made outside an iteration: a host polling the backend
            // fd is told to come back at once (one that lists the fds gets
            // them applied by `watched_fds`); after that turn nothing is
            // left to see.
            if mode == Mode::BackendFd {
                assert_eq!(lp.next_timeout(), Some(Duration::ZERO), "{kind} {mode:?}");
            }
            host_turn(&mut lp, mode, Duration::from_millis(1), &mut n);
            assert_eq!(lp.next_timeout(), None, "{kind} {mode:?}");
            let (seen, ran) = host_turn(&mut lp, mode, Duration::from_millis(150), &mut n);
            assert!(
                !seen && ran == 0,
                "{kind} {mode:?}: host woken by a source it should not see"
            );
            assert!(lp.is_disabled(disabled));
            drop((kept.into_source(), sock));
        }
    }

    pub fn many_ready_fds_are_dispatched_in_one_host_turn(kind: BackendKind) {
        for mode in modes(kind) {
            let mut lp = EventLoop::<Vec<u8>>::with_backend(kind).unwrap();
            let mut peers = Vec::new();
            for _ in 0..300 {
                let (a, b) = pair();
                lp.add(a, Interest::READABLE, reader()).unwrap();
                peers.push(b);
            }
            let mut got = Vec::new();
            // Sources added between turns: where the backend only queued
            // them (io_uring), the loop asks for a turn at once, which hands
            // them to the kernel.
            host_turn(&mut lp, mode, Duration::from_millis(1), &mut got);
            assert_eq!(lp.next_timeout(), None, "{kind} {mode:?}");
            for b in &mut peers {
                b.write_all(b"y").unwrap();
            }
            let (seen, ran) = host_turn(&mut lp, mode, Duration::from_secs(5), &mut got);
            assert!(seen);
            assert_eq!(ran, 300, "{kind} {mode:?}");
            assert_eq!(got.len(), 300);
            // Drained: the next turns run nothing and see nothing.
            let (seen, ran) = host_turn(&mut lp, mode, Duration::from_millis(50), &mut got);
            assert!(!seen && ran == 0, "{kind} {mode:?}: {ran}");
        }
    }

    pub fn a_rebuilt_kernel_set_keeps_the_backend_fd(kind: BackendKind) {
        util::init_logging();
        let mut lp = EventLoop::<Vec<u8>>::with_backend(kind).unwrap();
        let Some(fd) = lp.backend_fd().map(|fd| fd.as_raw_fd()) else {
            return;
        };
        let host = HostWatcher::new(fd);
        // An orphan: the registered fd is closed while a dup keeps its file
        // open, which makes the backend replace its kernel set.
        let (a, mut b) = pair();
        let dup = a.try_clone().unwrap();
        let id = lp.add(a, Interest::READABLE, reader()).unwrap();
        let (c, mut d) = pair();
        lp.add(c, Interest::READABLE, reader()).unwrap();
        let raw = lp.source(id).unwrap().as_raw_fd();
        // SAFETY: closes the source's fd behind the loop's back, then
        // removes the source (the kernel cannot drop the registration any
        // more: the file lives on through `dup`); the source is forgotten,
        // its fd being closed already.
        unsafe { libc::close(raw) };
        std::mem::forget(lp.remove(id).unwrap());
        b.write_all(b"orphan").unwrap();
        let mut got = Vec::new();
        for _ in 0..3 {
            lp.run_once(Some(Duration::from_millis(20)), &mut got)
                .unwrap();
        }
        let after = lp.backend_fd().unwrap().as_raw_fd();
        assert_eq!(after, fd, "{kind}: the backend fd changed");
        // The host still hears the loop.
        d.write_all(b"live").unwrap();
        assert!(
            host.hears(),
            "{kind}: the host no longer hears the loop after a rebuild"
        );
        lp.run_once(Some(Duration::ZERO), &mut got).unwrap();
        assert!(got.ends_with(b"live"), "{kind}: {got:?}");
        drop(dup);
    }

    pub fn backend_fd_presence_matches_the_backend(kind: BackendKind) {
        let lp = EventLoop::<()>::with_backend(kind).unwrap();
        // The kqueue backend has the kqueue's fd; off the BSDs (the
        // `kqueue-model` feature) it runs on a model that has none.
        let model = kind == BackendKind::Kqueue
            && cfg!(not(any(
                target_os = "macos",
                target_os = "freebsd",
                target_os = "openbsd",
                target_os = "netbsd",
                target_os = "dragonfly"
            )));
        let expected = !matches!(kind, BackendKind::Select | BackendKind::Poll) && !model;
        assert_eq!(lp.backend_fd().is_some(), expected, "{kind}");
        let sel = muxloop::Selector::<()>::with_backend(kind).unwrap();
        assert_eq!(sel.backend_fd().is_some(), expected, "{kind}");
    }
}

per_backend!(
    host_is_woken_by_an_inner_socket,
    inner_timer_wakes_the_host_never_early_nor_busily,
    handle_call_from_another_thread_wakes_the_host,
    a_stop_reaches_the_host_which_may_go_on_without_spinning,
    paused_disabled_and_removed_sources_do_not_wake_the_host,
    many_ready_fds_are_dispatched_in_one_host_turn,
    a_rebuilt_kernel_set_keeps_the_backend_fd,
    backend_fd_presence_matches_the_backend,
);

#[test]
fn next_timeout_follows_timers_calls_and_stop() {
    let mut lp = EventLoop::<()>::new().unwrap();
    assert_eq!(lp.next_timeout(), None);
    let id = lp.call_later(Duration::from_millis(500), |_, _| {});
    let t = lp.next_timeout().unwrap();
    assert!(
        t <= Duration::from_millis(500) && t > Duration::from_millis(400),
        "{t:?}"
    );
    lp.cancel(id);
    assert_eq!(lp.next_timeout(), None);
    lp.stop();
    assert_eq!(lp.next_timeout(), Some(Duration::ZERO));
    lp.run_once(Some(Duration::ZERO), &mut ()).unwrap();
    // Seen: the host may sleep again.
    assert!(lp.is_stopped());
    assert_eq!(lp.next_timeout(), None);
    lp.handle().stop().unwrap();
    assert_eq!(lp.next_timeout(), Some(Duration::ZERO));
}

#[test]
fn watched_fds_lists_sources_with_their_interest_and_the_loops_own_fds() {
    let mut lp = EventLoop::<()>::with_backend(BackendKind::Poll).unwrap();
    let (a, _b) = pair();
    let fd = a.as_raw_fd();
    let id = lp
        .add(a, Interest::WRITABLE, |_, _, _, _| PostAction::Continue)
        .unwrap();
    let mut fds = Vec::new();
    lp.watched_fds(&mut fds).unwrap();
    assert!(fds.contains(&(fd, Interest::WRITABLE)), "{fds:?}");
    assert_eq!(fds.len(), 2, "the source and the wake-up fd: {fds:?}");
    lp.disable(id).unwrap();
    lp.watched_fds(&mut fds).unwrap();
    assert!(!fds.iter().any(|&(f, _)| f == fd), "{fds:?}");
    // Readiness for fds the loop does not watch is ignored.
    assert_eq!(
        lp.run_ready(&[(fd, Ready::WRITABLE), (9999, Ready::READABLE)], &mut ())
            .unwrap(),
        0
    );
}
