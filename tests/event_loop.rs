//! EventLoop behaviour, written once and run on every backend: dispatch,
//! removal inside callbacks, stale-event protection with fd reuse, stop,
//! run_once, timers, call_soon and the cross-thread handle.

#[macro_use]
mod util;

use std::cell::RefCell;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::os::unix::net::UnixStream;
use std::rc::Rc;
use std::time::{Duration, Instant};

use muxloop::{BackendKind, EventLoop, Interest, LoopHandle, PostAction, SourceId};
use util::*;

fn new_loop<S>(kind: BackendKind) -> EventLoop<S> {
    init_logging();
    EventLoop::with_backend(kind).expect("event loop")
}

/// Stops the loop after `secs` whatever happens, so a broken test fails
/// instead of hanging.
fn safety_net<S: 'static>(lp: &mut EventLoop<S>, secs: u64) -> muxloop::TimerId {
    lp.call_later(Duration::from_secs(secs), |lp, _| lp.stop())
}

type Log = Vec<&'static str>;

/// Two sources made readable together and one iteration run, in which the
/// callback that runs first (the kernel's order) applies `to_other` to the
/// other source's id. Returns the loop, the log of callbacks that ran and
/// the peers (kept open).
fn two_ready_sources(
    kind: BackendKind,
    to_other: fn(&mut EventLoop<Log>, &mut SourceId<UnixStream>),
) -> (EventLoop<Log>, Log, [UnixStream; 2]) {
    let (a, mut ab) = pair();
    let (c, mut cb) = pair();
    let mut lp = new_loop::<Log>(kind);
    let ids: Rc<RefCell<Vec<SourceId<UnixStream>>>> = Rc::default();
    for (sock, name) in [(a, "a"), (c, "c")] {
        let ids2 = ids.clone();
        let id = lp
            .add(sock, Interest::READABLE, move |lp, sock, ev, log| {
                log.push(name);
                drain(sock);
                for other in ids2.borrow_mut().iter_mut() {
                    if *other != ev.id() {
                        to_other(lp, other);
                    }
                }
                PostAction::Continue
            })
            .unwrap();
        ids.borrow_mut().push(id);
    }
    ab.write_all(b"x").unwrap();
    cb.write_all(b"x").unwrap();
    std::thread::sleep(Duration::from_millis(10));
    let mut log = Vec::new();
    lp.run_once(Some(Duration::from_secs(1)), &mut log).unwrap();
    (lp, log, [ab, cb])
}

mod cases {
    use super::*;

    // --- sources ---------------------------------------------------------------

    pub fn readable_source_runs_its_callback_with_state(kind: BackendKind) {
        let (a, mut b) = pair();
        let mut lp = new_loop::<Vec<u8>>(kind);
        lp.add(a, Interest::READABLE, |lp, sock, ev, got| {
            assert!(ev.is_readable());
            let mut buf = [0; 16];
            let n = sock.read(&mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
            lp.stop();
            PostAction::Continue
        })
        .unwrap();
        safety_net(&mut lp, 5);
        b.write_all(b"hello").unwrap();
        let mut got = Vec::new();
        lp.run(&mut got).unwrap();
        assert_eq!(got, b"hello");
        assert_eq!(lp.source_count(), 1);
        assert_eq!(lp.stats().events_dispatched, 1);
    }

    pub fn post_action_remove_drops_and_closes_the_source(kind: BackendKind) {
        let (a, mut b) = pair();
        let mut lp = new_loop::<u32>(kind);
        lp.add(a, Interest::READABLE, |_, sock, _, calls| {
            *calls += 1;
            drain(sock);
            PostAction::Remove
        })
        .unwrap();
        b.write_all(b"x").unwrap();
        let mut calls = 0;
        for _ in 0..3 {
            lp.run_once(Some(Duration::from_millis(20)), &mut calls)
                .unwrap();
            b.write_all(b"y").ok();
        }
        assert_eq!(calls, 1);
        assert_eq!(lp.source_count(), 0);
        // The loop dropped `a`: its peer sees EOF.
        b.set_nonblocking(false).unwrap();
        b.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(b.read(&mut [0; 8]).unwrap(), 0);
    }

    pub fn remove_hands_the_source_back_open(kind: BackendKind) {
        let (a, mut b) = pair();
        let fd = a.as_raw_fd();
        let mut lp = new_loop::<()>(kind);
        let id = lp
            .add(a, Interest::READABLE, |_, _, _, _| PostAction::Continue)
            .unwrap();
        assert_eq!(lp.source(id).unwrap().as_raw_fd(), fd);
        let mut a = lp.remove(id).unwrap();
        assert_eq!(a.as_raw_fd(), fd);
        assert!(lp.remove(id).is_err(), "removed twice");
        assert!(lp.source(id).is_none());
        b.write_all(b"ok").unwrap();
        let mut buf = [0; 2];
        a.set_nonblocking(false).unwrap();
        a.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ok");
    }

    pub fn removal_by_an_earlier_callback_suppresses_a_collected_event(kind: BackendKind) {
        let (lp, log, _peers) = two_ready_sources(kind, |lp, other| {
            let _ = lp.remove(*other);
        });
        assert_eq!(
            log.len(),
            1,
            "both were ready; the second was removed: {log:?}"
        );
        assert_eq!(lp.source_count(), 1);
    }

    pub fn stale_event_never_reaches_a_new_source_on_the_same_fd(kind: BackendKind) {
        let (a, mut ab) = pair();
        let (b, mut bb) = pair();
        let b_fd = b.as_raw_fd();
        let mut lp = new_loop::<Vec<String>>(kind);
        let b_id = Rc::new(RefCell::new(None));
        let b_id2 = b_id.clone();
        lp.add(a, Interest::READABLE, move |lp, _, _, log| {
            log.push("a".into());
            // Remove b (its event is already collected) and put a fresh,
            // idle socket on the very same fd number.
            let Some(id) = b_id2.borrow_mut().take() else {
                return PostAction::Continue;
            };
            let old: UnixStream = lp.remove(id).unwrap();
            let (fresh, _keep) = pair();
            let raw = old.into_raw_fd();
            dup_onto(&fresh, raw);
            // SAFETY: `raw` is open (dup_onto made it a copy of `fresh`)
            // and owned by nobody else since `into_raw_fd`.
            let reused = unsafe { UnixStream::from_raw_fd(raw) };
            std::mem::forget(_keep);
            lp.add(
                reused,
                Interest::READABLE,
                |_, _, _, log: &mut Vec<String>| {
                    log.push("reused".into());
                    PostAction::Continue
                },
            )
            .unwrap();
            PostAction::Continue
        })
        .unwrap();
        let id = lp
            .add(b, Interest::READABLE, |_, _, _, log| {
                log.push("b".into());
                PostAction::Continue
            })
            .unwrap();
        *b_id.borrow_mut() = Some(id);
        bb.write_all(b"x").unwrap();
        ab.write_all(b"x").unwrap();
        std::thread::sleep(Duration::from_millis(10));
        let mut log = Vec::new();
        lp.run_once(Some(Duration::from_secs(1)), &mut log).unwrap();
        // Order of a and b within the batch is the kernel's; if a ran
        // first, b's event must be dropped and "reused" must not run.
        assert!(!log.contains(&"reused".to_string()), "{log:?}");
        if log[0] == "a" {
            assert_eq!(log, vec!["a"], "stale event delivered");
        }
        let _ = b_fd;
    }

    pub fn own_removal_is_busy_but_discard_works(kind: BackendKind) {
        let (a, mut b) = pair();
        let mut lp = new_loop::<Vec<String>>(kind);
        lp.add(a, Interest::READABLE, |lp, sock, ev, log| {
            drain(sock);
            let err = lp.remove(ev.id()).unwrap_err();
            log.push(format!("{:?}", err.kind()));
            lp.discard(ev.id()).unwrap();
            assert!(lp.discard(ev.id()).is_err());
            PostAction::Continue
        })
        .unwrap();
        b.write_all(b"x").unwrap();
        let mut log = Vec::new();
        lp.run_once(Some(Duration::from_secs(1)), &mut log).unwrap();
        assert_eq!(log, vec!["ResourceBusy"]);
        assert_eq!(lp.source_count(), 0);
        b.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        b.set_nonblocking(false).unwrap();
        assert_eq!(b.read(&mut [0; 4]).unwrap(), 0, "discarded source closed");
    }

    pub fn a_callback_keeps_its_source_until_it_returns_after_discarding_it(kind: BackendKind) {
        let (a, mut b) = pair();
        let mut lp = new_loop::<Vec<&'static str>>(kind);
        lp.add(a, Interest::READABLE, |lp, sock, ev, log| {
            drain(sock);
            lp.discard(ev.id()).unwrap();
            assert!(lp.source(ev.id()).is_none());
            // Still this callback's: closed when it returns, not before.
            sock.write_all(b"bye").unwrap();
            log.push("discarded");
            PostAction::Continue
        })
        .unwrap();
        b.write_all(b"x").unwrap();
        let mut log = Vec::new();
        lp.run_once(Some(Duration::from_secs(1)), &mut log).unwrap();
        assert_eq!(log, vec!["discarded"]);
        assert_eq!(lp.source_count(), 0);
        b.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        b.set_nonblocking(false).unwrap();
        let mut got = Vec::new();
        b.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"bye", "written after the discard, then closed");
    }

    pub fn a_source_removed_and_closed_while_a_dup_lives_does_not_spin(kind: BackendKind) {
        // The kernel may keep watching the file (epoll does, while a dup
        // holds it open) after the source's fd is closed: the loop must
        // not wake for it again and again.
        let (a, b) = pair();
        let dup = a.try_clone().unwrap();
        let mut lp = new_loop::<()>(kind);
        let id = lp
            .add(a, Interest::READABLE, |_, _, _, _| PostAction::Continue)
            .unwrap();
        drop(lp.remove(id).unwrap());
        (&b).write_all(b"x").unwrap();
        let t = Instant::now();
        let mut iterations = 0;
        while let Some(left) = Duration::from_millis(100).checked_sub(t.elapsed()) {
            lp.run_once(Some(left), &mut ()).unwrap();
            iterations += 1;
        }
        assert!(
            iterations <= 4,
            "{iterations} iterations in 100 ms: spinning"
        );
        drop(dup);
    }

    /// A source the loop drops (its callback returns `Remove`, or it is
    /// discarded) leaves the kernel's set before its fd is closed: a
    /// duplicate that keeps the file open and ready leaves no registration
    /// behind for the backend to purge.
    pub fn a_source_the_loop_closes_leaves_the_kernel_set_first(kind: BackendKind) {
        #[derive(Default)]
        struct Purges(std::sync::Arc<std::sync::atomic::AtomicUsize>);
        impl Hooks for Purges {
            fn before(&mut self, call: Call) -> std::io::Result<()> {
                if call == Call::Purge {
                    self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                Ok(())
            }
        }
        for by_callback in [true, false] {
            let purges = Purges::default();
            let count = purges.0.clone();
            init_logging();
            let mut lp =
                EventLoop::<()>::from_backend(Box::new(Hooked::new(kind, purges))).unwrap();
            let (a, mut b) = pair();
            let dup = a.try_clone().unwrap();
            let id = lp
                .add(a, Interest::READABLE, move |_, _, _, _| {
                    if by_callback {
                        PostAction::Remove
                    } else {
                        PostAction::Continue
                    }
                })
                .unwrap();
            b.write_all(b"x").unwrap();
            lp.run_once(Some(Duration::from_secs(1)), &mut ()).unwrap();
            if !by_callback {
                lp.discard(id).unwrap();
            }
            // The file stays open (the dup) and readable.
            for _ in 0..5 {
                lp.run_once(Some(Duration::from_millis(5)), &mut ())
                    .unwrap();
            }
            let purged = count.load(std::sync::atomic::Ordering::SeqCst);
            assert_eq!(
                purged, 0,
                "{kind} by_callback={by_callback}: the set was rebuilt"
            );
            drop(dup);
        }
    }

    pub fn modify_inside_callback_switches_interest(kind: BackendKind) {
        let (a, mut b) = pair();
        let mut lp = new_loop::<Vec<&'static str>>(kind);
        lp.add(a, Interest::READABLE, |lp, sock, ev, log| {
            if ev.is_readable() {
                drain(sock);
                log.push("read");
                lp.modify(ev.id(), Interest::WRITABLE).unwrap();
            } else {
                log.push("write");
                lp.stop();
            }
            PostAction::Continue
        })
        .unwrap();
        safety_net(&mut lp, 5);
        b.write_all(b"x").unwrap();
        let mut log = Vec::new();
        lp.run(&mut log).unwrap();
        assert_eq!(log, vec!["read", "write"]);
    }

    pub fn run_once_returns_after_its_timeout(kind: BackendKind) {
        let mut lp = new_loop::<()>(kind);
        let t = Instant::now();
        lp.run_once(Some(Duration::from_millis(30)), &mut ())
            .unwrap();
        let took = t.elapsed();
        assert!(took >= Duration::from_millis(30), "{took:?}");
        assert!(took < Duration::from_secs(3), "{took:?}");
        assert_eq!(lp.stats().iterations, 1);
    }

    pub fn stats_time_the_wait_and_the_callbacks(kind: BackendKind) {
        let mut lp = new_loop::<()>(kind);
        lp.run_once(Some(Duration::from_millis(30)), &mut ())
            .unwrap();
        let waited = lp.stats();
        assert!(waited.wait_time >= Duration::from_millis(30), "{waited:?}");
        assert!(waited.wait_time < Duration::from_secs(3), "{waited:?}");
        lp.call_soon(|_, _| std::thread::sleep(Duration::from_millis(20)));
        lp.run_once(Some(Duration::from_secs(5)), &mut ()).unwrap();
        let ran = lp.stats();
        let in_callbacks = ran.callback_time - waited.callback_time;
        assert!(in_callbacks >= Duration::from_millis(20), "{ran:?}");
        assert!(in_callbacks < Duration::from_secs(3), "{ran:?}");
        // The queued call made the second wait a poll: the wait time is
        // what the first one took, give or take.
        assert!(
            ran.wait_time - waited.wait_time < Duration::from_secs(1),
            "{ran:?}"
        );
    }

    pub fn hooks_run_around_the_wait(kind: BackendKind) {
        let mut lp = new_loop::<Vec<&'static str>>(kind);
        lp.set_before_sleep(|log| log.push("before"));
        lp.set_after_wake(|log| log.push("after"));
        lp.call_soon(|_, log| log.push("soon"));
        let mut log = Vec::new();
        lp.run_once(Some(Duration::ZERO), &mut log).unwrap();
        assert_eq!(log, vec!["before", "after", "soon"]);
    }

    pub fn call_soon_runs_on_the_next_iteration_in_order(kind: BackendKind) {
        let mut lp = new_loop::<Vec<u32>>(kind);
        lp.call_soon(|lp, log| {
            log.push(1);
            lp.call_soon(|_, log| log.push(3));
        });
        lp.call_soon(|_, log| log.push(2));
        let mut log = Vec::new();
        lp.run_once(Some(Duration::from_secs(5)), &mut log).unwrap();
        assert_eq!(log, vec![1, 2]);
        let t = Instant::now();
        lp.run_once(Some(Duration::from_secs(5)), &mut log).unwrap();
        assert_eq!(log, vec![1, 2, 3]);
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "queued call did not shorten the wait"
        );
        assert_eq!(lp.stats().calls_run, 3);
    }

    pub fn pause_stops_dispatch_and_resume_brings_the_callback_back(kind: BackendKind) {
        let (a, mut b) = pair();
        let mut lp = new_loop::<u32>(kind);
        let id = lp
            .add(a, Interest::READABLE, |_, sock, _, n| {
                drain(sock);
                *n += 1;
                PostAction::Continue
            })
            .unwrap();
        b.write_all(b"x").unwrap();
        let paused = lp.pause(id).unwrap();
        assert_eq!(lp.source_count(), 0);
        assert_eq!(
            lp.remove(id).unwrap_err().kind(),
            std::io::ErrorKind::NotFound
        );
        let mut n = 0;
        lp.run_once(Some(Duration::from_millis(20)), &mut n)
            .unwrap();
        assert_eq!(n, 0, "a paused source is not dispatched");
        let id2 = lp.resume(paused, Interest::READABLE).unwrap();
        assert_ne!(id2, id);
        lp.run_once(Some(Duration::from_secs(2)), &mut n).unwrap();
        assert_eq!(
            n, 1,
            "the data that arrived while paused is seen after resume"
        );
        let sock = lp.pause(id2).unwrap().into_source();
        (&sock).write_all(b"still open").unwrap();
    }

    pub fn pause_and_resume_before_the_wait_keeps_watching(kind: BackendKind) {
        let (a, mut b) = pair();
        let mut lp = new_loop::<u32>(kind);
        let mut id = lp
            .add(a, Interest::READABLE, |_, sock, _, n| {
                drain(sock);
                *n += 1;
                PostAction::Continue
            })
            .unwrap();
        // Many stop-and-starts without a wait in between: each must leave
        // the source watched, under a new id, with the old one dead.
        for _ in 0..1000 {
            let old = id;
            let paused = lp.pause(id).unwrap();
            id = lp.resume(paused, Interest::READABLE).unwrap();
            assert_ne!(id, old);
            assert!(lp.source(old).is_none());
            assert_eq!(
                lp.modify(old, Interest::WRITABLE).unwrap_err().kind(),
                std::io::ErrorKind::NotFound
            );
        }
        assert_eq!(lp.source_count(), 1);
        b.write_all(b"x").unwrap();
        let mut n = 0;
        lp.run_once(Some(Duration::from_secs(2)), &mut n).unwrap();
        assert_eq!(n, 1);
        // And once more with a wait between pause and resume.
        let paused = lp.pause(id).unwrap();
        b.write_all(b"y").unwrap();
        lp.run_once(Some(Duration::from_millis(20)), &mut n)
            .unwrap();
        assert_eq!(n, 1, "a paused source is not dispatched");
        lp.resume(paused, Interest::READABLE).unwrap();
        lp.run_once(Some(Duration::from_secs(2)), &mut n).unwrap();
        assert_eq!(n, 2);
    }

    pub fn a_source_left_paused_gives_up_its_number_at_the_next_wait(kind: BackendKind) {
        let cb = |_: &mut EventLoop<u32>,
                  sock: &mut UnixStream,
                  _: muxloop::SourceEvent<UnixStream>,
                  n: &mut u32| {
            drain(sock);
            *n += 1;
            PostAction::Continue
        };
        let (a, _pa) = pair();
        let (b, _pb) = pair();
        let number = b.as_raw_fd();
        let mut lp = new_loop::<u32>(kind);
        let ida = lp.add(a, Interest::READABLE, cb).unwrap();
        let idb = lp.add(b, Interest::READABLE, cb).unwrap();
        // b stays paused and is dropped (closing its fd); a is paused and
        // resumed before the wait, which keeps its registration.
        let pb = lp.pause(idb).unwrap();
        let pa = lp.pause(ida).unwrap();
        lp.resume(pa, Interest::READABLE).unwrap();
        drop(pb);
        let mut n = 0;
        lp.run_once(Some(Duration::ZERO), &mut n).unwrap();
        // The wait dropped b's registration: a new socket under b's number
        // is watched.
        let (c, mut d) = pair();
        let c = renumber(c, number);
        if c.as_raw_fd() != number {
            eprintln!("skipped: fd {number} was taken by a test running in parallel");
            return;
        }
        lp.add(c, Interest::READABLE, cb)
            .expect("the number of a source left paused is free after the wait");
        d.write_all(b"x").unwrap();
        lp.run_once(Some(Duration::from_secs(2)), &mut n).unwrap();
        assert_eq!(n, 1);
    }

    pub fn resume_before_the_wait_can_change_the_interest(kind: BackendKind) {
        let (a, _b) = pair();
        let mut lp = new_loop::<Vec<bool>>(kind);
        let id = lp
            .add(a, Interest::READABLE, |_, _, ev, log| {
                log.push(ev.is_writable());
                PostAction::Continue
            })
            .unwrap();
        let paused = lp.pause(id).unwrap();
        let id = lp.resume(paused, Interest::WRITABLE).unwrap();
        assert_eq!(lp.interest(id), Some(Interest::WRITABLE));
        let mut log = Vec::new();
        lp.run_once(Some(Duration::from_secs(2)), &mut log).unwrap();
        assert_eq!(log, vec![true], "an idle socket is writable");
    }

    pub fn pause_and_resume_by_an_earlier_callback_drops_the_collected_event(kind: BackendKind) {
        // The restarted source's event, collected under its old id, must
        // not be dispatched.
        let (mut lp, mut log, _peers) = two_ready_sources(kind, |lp, other| {
            if let Ok(p) = lp.pause(*other) {
                *other = lp.resume(p, Interest::READABLE).unwrap();
            }
        });
        assert_eq!(
            log.len(),
            1,
            "the restarted source ran on a stale event: {log:?}"
        );
        // Level-triggered: the restarted source is still readable and runs
        // on the next wait.
        lp.run_once(Some(Duration::from_secs(1)), &mut log).unwrap();
        assert_eq!(log.len(), 2, "{log:?}");
        assert_ne!(log[0], log[1]);
    }

    pub fn closing_a_paused_source_frees_its_fd_number(kind: BackendKind) {
        let (a, _ab) = pair();
        let mut lp = new_loop::<u32>(kind);
        let id = lp
            .add(a, Interest::READABLE, |_, _, _, n| {
                *n += 100;
                PostAction::Continue
            })
            .unwrap();
        // Paused, then its file closed and its number reused before the
        // loop waits again (dup2 does both at once, so no other thread can
        // take the number in between): the new file must be accepted and
        // watched.
        let raw = lp.pause(id).unwrap().into_source().into_raw_fd();
        let (fresh, mut fresh_peer) = pair();
        dup_onto(&fresh, raw);
        // SAFETY: `raw` is open (a copy of `fresh`) and owned by nobody else
        // since `into_raw_fd`.
        let reused = unsafe { UnixStream::from_raw_fd(raw) };
        drop(fresh);
        lp.add(reused, Interest::READABLE, |_, sock, _, n| {
            drain(sock);
            *n += 1;
            PostAction::Continue
        })
        .unwrap();
        fresh_peer.write_all(b"x").unwrap();
        let mut n = 0;
        lp.run_once(Some(Duration::from_secs(2)), &mut n).unwrap();
        assert_eq!(n, 1);
    }

    pub fn a_paused_source_can_move_to_another_loop(kind: BackendKind) {
        let (a, mut b) = pair();
        let mut one = new_loop::<u32>(kind);
        let mut two = new_loop::<u32>(kind);
        let id = one
            .add(a, Interest::READABLE, |_, sock, _, n| {
                drain(sock);
                *n += 1;
                PostAction::Continue
            })
            .unwrap();
        let paused = one.pause(id).unwrap();
        two.resume(paused, Interest::READABLE).unwrap();
        b.write_all(b"x").unwrap();
        let mut n = 0;
        one.run_once(Some(Duration::from_millis(20)), &mut n)
            .unwrap();
        assert_eq!(n, 0, "the first loop no longer watches it");
        assert_eq!(one.source_count(), 0);
        two.run_once(Some(Duration::from_secs(2)), &mut n).unwrap();
        assert_eq!(n, 1);
    }

    pub fn a_source_taken_back_after_pause_is_not_watched(kind: BackendKind) {
        let (a, mut b) = pair();
        let mut lp = new_loop::<u32>(kind);
        let cb = |_: &mut EventLoop<u32>, sock: &mut UnixStream, _, n: &mut u32| {
            drain(sock);
            *n += 1;
            PostAction::Continue
        };
        let id = lp.add(a, Interest::READABLE, cb).unwrap();
        let a = lp.pause(id).unwrap().into_source();
        b.write_all(b"x").unwrap();
        let mut n = 0;
        lp.run_once(Some(Duration::from_millis(20)), &mut n)
            .unwrap();
        assert_eq!(n, 0);
        // Added back as a new source: watched again.
        lp.add(a, Interest::READABLE, cb).unwrap();
        lp.run_once(Some(Duration::from_secs(2)), &mut n).unwrap();
        assert_eq!(n, 1);
    }

    pub fn running_the_loop_from_its_own_callback_is_refused(kind: BackendKind) {
        let (a, mut ab) = pair();
        let mut lp = new_loop::<Vec<std::io::ErrorKind>>(kind);
        lp.add(a, Interest::READABLE, |lp, sock, _, log| {
            drain(sock);
            let mut nested = Vec::new();
            log.push(
                lp.run_once(Some(Duration::ZERO), &mut nested)
                    .unwrap_err()
                    .kind(),
            );
            log.push(lp.run(&mut nested).unwrap_err().kind());
            PostAction::Continue
        })
        .unwrap();
        ab.write_all(b"x").unwrap();
        let mut log = Vec::new();
        lp.run_once(Some(Duration::from_secs(1)), &mut log).unwrap();
        assert_eq!(log, [std::io::ErrorKind::ResourceBusy; 2]);
        // And the loop runs normally afterwards.
        ab.write_all(b"y").unwrap();
        lp.run_once(Some(Duration::from_secs(1)), &mut log).unwrap();
        assert_eq!(log.len(), 4);
    }

    pub fn pausing_the_running_source_is_busy(kind: BackendKind) {
        let (a, mut b) = pair();
        let mut lp = new_loop::<Vec<std::io::Error>>(kind);
        lp.add(a, Interest::READABLE, |lp, sock, ev, log| {
            drain(sock);
            log.push(lp.pause(ev.id()).map(drop).unwrap_err());
            log.push(lp.remove(ev.id()).map(drop).unwrap_err());
            PostAction::Remove
        })
        .unwrap();
        b.write_all(b"x").unwrap();
        let mut log = Vec::new();
        lp.run_once(Some(Duration::from_secs(2)), &mut log).unwrap();
        assert_eq!(log.len(), 2);
        let (pause, remove) = (log[0].to_string(), log[1].to_string());
        assert!(
            log.iter()
                .all(|e| e.kind() == std::io::ErrorKind::ResourceBusy)
        );
        // Each names what the caller wanted, and advises accordingly: a
        // pause is not pointed at removal.
        assert!(pause.contains("cannot pause"), "{pause}");
        assert!(
            !pause.contains("Remove") && !pause.contains("discard"),
            "{pause}"
        );
        assert!(pause.contains("call_soon"), "{pause}");
        assert!(remove.contains("cannot remove"), "{remove}");
        assert!(remove.contains("PostAction::Remove"), "{remove}");
    }

    pub fn a_panicking_callback_leaves_the_loop_refusing_with_the_reason(kind: BackendKind) {
        let (a, mut b) = pair();
        let mut lp = new_loop::<()>(kind);
        lp.add(a, Interest::READABLE, |_, _, _, _| -> PostAction {
            panic!("callback failed")
        })
        .unwrap();
        b.write_all(b"x").unwrap();
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            lp.run_once(Some(Duration::from_secs(2)), &mut ())
        }));
        assert!(caught.is_err(), "the panic propagates");
        for err in [
            lp.run_once(Some(Duration::ZERO), &mut ()).unwrap_err(),
            lp.run(&mut ()).unwrap_err(),
        ] {
            assert_eq!(err.kind(), std::io::ErrorKind::ResourceBusy);
            let msg = err.to_string();
            assert!(msg.contains("panicked"), "{msg}");
            assert!(!msg.contains("called from a callback"), "{msg}");
        }
        // Dropping the loop closes the source whose callback panicked.
        drop(lp);
        b.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        b.set_nonblocking(false).unwrap();
        // (Closed with the byte unread: a reset, or an end of file.)
        match b.read(&mut [0; 8]) {
            Ok(n) => assert_eq!(n, 0, "closed"),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
        }
    }

    pub fn timer_rearmed_in_the_past_runs_once_per_iteration(kind: BackendKind) {
        fn again(lp: &mut EventLoop<u32>, n: &mut u32) {
            *n += 1;
            if *n < 1000 {
                lp.call_at(Instant::now() - Duration::from_millis(1), again);
            }
        }
        let mut lp = new_loop::<u32>(kind);
        lp.call_at(Instant::now() - Duration::from_millis(1), again);
        let mut n = 0;
        let started = Instant::now();
        lp.run_once(Some(Duration::from_millis(10)), &mut n)
            .unwrap();
        assert_eq!(n, 1, "a timer added by the timer pass waits for the next");
        lp.run_once(Some(Duration::from_millis(10)), &mut n)
            .unwrap();
        assert_eq!(n, 2);
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    pub fn a_late_drift_free_ticker_does_not_starve_io(kind: BackendKind) {
        // Each tick takes 2 ms and schedules the next 1 ms after its own
        // deadline: always behind. Every iteration must still poll I/O, so
        // no iteration runs more than the one tick that was due.
        #[derive(Default)]
        struct State {
            ticks: std::sync::Arc<std::sync::atomic::AtomicU32>,
            in_this_iteration: u32,
            most_in_one_iteration: u32,
            reads: u32,
        }
        fn tick(lp: &mut EventLoop<State>, st: &mut State, at: Instant) {
            st.ticks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            st.in_this_iteration += 1;
            st.most_in_one_iteration = st.most_in_one_iteration.max(st.in_this_iteration);
            std::thread::sleep(Duration::from_millis(2));
            let next = at + Duration::from_millis(1);
            lp.call_at(next, move |lp, st| tick(lp, st, next));
        }
        let (a, mut b) = pair();
        let mut lp = new_loop::<State>(kind);
        lp.set_after_wake(|st| st.in_this_iteration = 0);
        lp.add(a, Interest::READABLE, |lp, sock, _, st| {
            drain(sock);
            st.reads += 1;
            lp.stop();
            PostAction::Continue
        })
        .unwrap();
        let start = Instant::now();
        lp.call_at(start, move |lp, st| tick(lp, st, start));
        safety_net(&mut lp, 10);
        let st = State::default();
        let ticks = st.ticks.clone();
        // Once the ticker is well behind (ten ticks in), some I/O arrives.
        let writer = std::thread::spawn(move || {
            let t = Instant::now();
            while ticks.load(std::sync::atomic::Ordering::Relaxed) < 10
                && t.elapsed() < Duration::from_secs(5)
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            b.write_all(b"x").unwrap();
            b
        });
        let mut st = st;
        lp.run(&mut st).unwrap();
        let _b = writer.join().unwrap();
        assert_eq!(st.reads, 1);
        let ticks = st.ticks.load(std::sync::atomic::Ordering::Relaxed);
        assert!(ticks >= 10, "{ticks} ticks");
        assert_eq!(
            st.most_in_one_iteration, 1,
            "a pass ran {} ticks while I/O waited",
            st.most_in_one_iteration
        );
    }

    pub fn stop_before_run_runs_one_iteration(kind: BackendKind) {
        let (a, mut b) = pair();
        let mut lp = new_loop::<Vec<&'static str>>(kind);
        lp.add(a, Interest::READABLE, |_, sock, _, log| {
            drain(sock);
            log.push("io");
            PostAction::Continue
        })
        .unwrap();
        lp.call_soon(|_, log| log.push("soon"));
        let fallback = safety_net(&mut lp, 5);
        b.write_all(b"x").unwrap();
        lp.stop();
        assert!(lp.is_stopped());
        let mut log = Vec::new();
        let started = Instant::now();
        lp.run(&mut log).unwrap();
        assert!(started.elapsed() < Duration::from_secs(2), "did not wait");
        log.sort();
        assert_eq!(log, vec!["io", "soon"], "what was ready and queued ran");
        assert!(!lp.is_stopped(), "the stop was consumed");
        // The same through the handle.
        lp.handle().stop().unwrap();
        b.write_all(b"y").unwrap();
        lp.run(&mut log).unwrap();
        assert_eq!(log.len(), 3);
        assert!(lp.cancel(fallback));
    }

    pub fn disable_keeps_the_id_and_stops_events_until_enable(kind: BackendKind) {
        let (a, _ab) = pair();
        let mut lp = new_loop::<u32>(kind);
        // Always writable: it would fire every iteration.
        let id = lp
            .add(a, Interest::WRITABLE, |lp, _, ev, n| {
                *n += 1;
                lp.disable(ev.id()).unwrap();
                lp.disable(ev.id()).unwrap(); // twice is fine
                PostAction::Continue
            })
            .unwrap();
        let mut n = 0;
        for _ in 0..3 {
            lp.run_once(Some(Duration::from_millis(5)), &mut n).unwrap();
        }
        assert_eq!(n, 1);
        assert!(lp.is_disabled(id));
        assert_eq!(lp.source_count(), 1, "still registered");
        // Interest changes while disabled are kept for enable.
        lp.modify(id, Interest::BOTH).unwrap();
        assert_eq!(lp.interest(id), Some(Interest::BOTH));
        lp.run_once(Some(Duration::from_millis(5)), &mut n).unwrap();
        assert_eq!(n, 1);
        lp.enable(id, Interest::WRITABLE).unwrap();
        assert!(!lp.is_disabled(id));
        lp.run_once(Some(Duration::from_secs(1)), &mut n).unwrap();
        assert_eq!(n, 2);
        // A disabled source can be paused and resumed (watched again), and
        // removed.
        lp.disable(id).unwrap();
        let paused = lp.pause(id).unwrap();
        lp.run_once(Some(Duration::ZERO), &mut n).unwrap();
        let id = lp.resume(paused, Interest::WRITABLE).unwrap();
        lp.run_once(Some(Duration::from_secs(1)), &mut n).unwrap();
        assert_eq!(n, 3);
        lp.disable(id).unwrap();
        let _a: UnixStream = lp.remove(id).unwrap();
        assert_eq!(lp.source_count(), 0);
    }

    pub fn disabling_another_source_drops_its_collected_event(kind: BackendKind) {
        let (mut lp, log, _peers) = two_ready_sources(kind, |lp, other| {
            lp.disable(*other).unwrap();
        });
        assert_eq!(log.len(), 1, "{log:?}");
        assert_eq!(lp.source_count(), 2);
        // Both stay registered; the disabled one is silent.
        let mut log = log;
        lp.run_once(Some(Duration::from_millis(20)), &mut log)
            .unwrap();
        assert_eq!(log.len(), 1, "{log:?}");
    }

    pub fn with_source_lends_a_source_and_the_loop(kind: BackendKind) {
        let (a, mut peer) = pair();
        let (c, _cd) = pair();
        let mut lp = new_loop::<()>(kind);
        let id = lp
            .add(a, Interest::READABLE, |_, _, _, _| PostAction::Continue)
            .unwrap();
        let other = lp
            .add(c, Interest::READABLE, |_, _, _, _| PostAction::Continue)
            .unwrap();
        let res = lp.with_source(id, |lp, sock| {
            sock.write_all(b"hi").unwrap();
            // Lent already: not again; the other one is available.
            assert!(lp.with_source(id, |_, _| ()).is_none());
            assert!(lp.source(id).is_none());
            assert!(lp.with_source(other, |_, _| ()).is_some());
            assert_eq!(
                lp.remove(id).map(drop).unwrap_err().kind(),
                std::io::ErrorKind::ResourceBusy
            );
            lp.modify(id, Interest::BOTH).unwrap();
            7
        });
        assert_eq!(res, Some(7));
        assert_eq!(lp.interest(id), Some(Interest::BOTH));
        assert!(lp.source(id).is_some(), "put back");
        let mut got = [0; 2];
        peer.read_exact(&mut got).unwrap();
        // Discarded while lent: dropped when `f` returns.
        lp.with_source(other, |lp, _| lp.discard(other).unwrap());
        assert_eq!(lp.source_count(), 1);
        assert!(lp.with_source(other, |_, _| ()).is_none());
    }

    pub fn run_once_says_how_many_callbacks_it_ran(kind: BackendKind) {
        let (a, mut b) = pair();
        let mut lp = new_loop::<()>(kind);
        lp.add(a, Interest::READABLE, |_, sock, _, _| {
            drain(sock);
            PostAction::Continue
        })
        .unwrap();
        lp.call_at(Instant::now(), |_, _| {});
        lp.call_soon(|_, _| {});
        lp.handle().call_soon(|_, _| {}).unwrap();
        b.write_all(b"x").unwrap();
        // The source, the due timer, the queued call and the remote one.
        let mut ran = 0;
        let t = Instant::now();
        while ran < 4 {
            ran += lp
                .run_once(Some(Duration::from_millis(50)), &mut ())
                .unwrap();
            assert!(t.elapsed() < Duration::from_secs(5));
        }
        assert_eq!(ran, 4);
        // Nothing left: 0, which is how a host loop knows to stop draining.
        assert_eq!(lp.run_once(Some(Duration::ZERO), &mut ()).unwrap(), 0);
    }

    pub fn ids_of_another_loop_are_refused(kind: BackendKind) {
        let (a, _ab) = pair();
        let (c, _cd) = pair();
        let mut one = new_loop::<()>(kind);
        let mut two = new_loop::<()>(kind);
        let id_one = one
            .add(a, Interest::READABLE, |_, _, _, _| PostAction::Continue)
            .unwrap();
        let id_two = two
            .add(c, Interest::READABLE, |_, _, _, _| PostAction::Continue)
            .unwrap();
        assert_ne!(id_one, id_two);
        let timer_one = one.call_later(Duration::from_secs(60), |_, _| {});
        let timer_two = two.call_later(Duration::from_secs(60), |_, _| {});
        // Same slots in each loop, but the ids are not interchangeable.
        assert!(!two.cancel(timer_one));
        assert!(!two.reset_timer(timer_one, Duration::ZERO));
        assert_eq!(two.timer_count(), 1);
        let err = two.remove(id_one).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
        assert!(err.to_string().contains("another event loop"), "{err}");
        assert!(two.pause(id_one).is_err());
        assert!(two.discard(id_one).is_err());
        assert!(two.modify(id_one, Interest::WRITABLE).is_err());
        assert!(two.source(id_one).is_none());
        assert!(two.source_mut(id_one).is_none());
        assert!(two.interest(id_one).is_none());
        assert_eq!(two.source_count(), 1);
        assert_eq!(two.interest(id_two), Some(Interest::READABLE));
        assert!(two.cancel(timer_two));
        assert!(one.cancel(timer_one));
        assert!(one.remove(id_one).is_ok());
    }

    pub fn reset_timer_postpones_without_firing_early(kind: BackendKind) {
        let mut lp = new_loop::<Option<Duration>>(kind);
        let t0 = Instant::now();
        let idle = lp.call_later(Duration::from_millis(30), move |_, fired| {
            *fired = Some(t0.elapsed());
        });
        lp.call_later(Duration::from_millis(10), move |lp, _| {
            assert!(lp.reset_timer(idle, Duration::from_millis(50)));
        });
        let mut fired = None;
        while fired.is_none() {
            lp.run_once(Some(Duration::from_secs(1)), &mut fired)
                .unwrap();
            assert!(t0.elapsed() < Duration::from_secs(5));
        }
        let at = fired.unwrap();
        assert!(
            at >= Duration::from_millis(60),
            "fired at {at:?}, before the reset deadline"
        );
        assert!(
            !lp.reset_timer(idle, Duration::from_millis(1)),
            "a fired timer cannot be reset"
        );
        assert_eq!(lp.timer_count(), 0);
    }

    // --- timers ----------------------------------------------------------------

    pub fn timer_never_fires_early(kind: BackendKind) {
        let mut lp = new_loop::<Vec<Duration>>(kind);
        let t0 = Instant::now();
        for ms in [5u64, 25, 50] {
            lp.call_later(Duration::from_millis(ms), move |lp, fired| {
                let at = t0.elapsed();
                assert!(
                    at >= Duration::from_millis(ms),
                    "{ms} ms timer fired at {at:?}"
                );
                fired.push(at);
                if fired.len() == 3 {
                    lp.stop();
                }
            });
        }
        safety_net(&mut lp, 10);
        let mut fired = Vec::new();
        lp.run(&mut fired).unwrap();
        assert_eq!(fired.len(), 3);
        assert!(fired[2] < Duration::from_secs(5));
        assert_eq!(lp.stats().timers_fired, 3);
    }

    pub fn timers_due_together_fire_in_scheduling_order(kind: BackendKind) {
        let mut lp = new_loop::<Vec<u32>>(kind);
        let at = Instant::now() + Duration::from_millis(10);
        for i in 0..20 {
            lp.call_at(at, move |_, log| log.push(i));
        }
        let mut log = Vec::new();
        while log.len() < 20 {
            lp.run_once(Some(Duration::from_secs(1)), &mut log).unwrap();
        }
        assert_eq!(log, (0..20).collect::<Vec<_>>());
    }

    pub fn cancelled_timer_never_fires(kind: BackendKind) {
        let mut lp = new_loop::<Vec<&'static str>>(kind);
        let a = lp.call_later(Duration::from_millis(5), |_, log| log.push("cancelled"));
        lp.call_later(Duration::from_millis(20), |lp, log| {
            log.push("kept");
            lp.stop();
        });
        assert!(lp.cancel(a));
        assert!(!lp.cancel(a));
        safety_net(&mut lp, 5);
        let mut log = Vec::new();
        lp.run(&mut log).unwrap();
        assert_eq!(log, vec!["kept"]);
    }

    pub fn repeating_timer_repeats_until_it_says_remove(kind: BackendKind) {
        let mut lp = new_loop::<Vec<Instant>>(kind);
        let start = Instant::now();
        lp.call_every(Duration::from_millis(10), |lp, ticks| {
            ticks.push(Instant::now());
            if ticks.len() == 5 {
                lp.call_later(Duration::from_millis(40), |lp, _| lp.stop());
                PostAction::Remove
            } else {
                PostAction::Continue
            }
        });
        let net = safety_net(&mut lp, 10);
        let mut ticks = Vec::new();
        lp.run(&mut ticks).unwrap();
        assert!(lp.cancel(net));
        assert_eq!(ticks.len(), 5, "stopped after Remove");
        for (i, t) in ticks.iter().enumerate() {
            let min = Duration::from_millis(10 * (i as u64 + 1));
            assert!(*t - start >= min, "tick {i} early: {:?}", *t - start);
        }
        assert_eq!(lp.timer_count(), 0);
    }

    pub fn repeating_timer_can_cancel_itself(kind: BackendKind) {
        let mut lp = new_loop::<u32>(kind);
        let id = Rc::new(RefCell::new(None));
        let id2 = id.clone();
        let t = lp.call_every(Duration::from_millis(5), move |lp, n| {
            *n += 1;
            assert!(lp.cancel(id2.borrow().unwrap()));
            PostAction::Continue
        });
        *id.borrow_mut() = Some(t);
        lp.call_later(Duration::from_millis(60), |lp, _| lp.stop());
        let mut n = 0;
        lp.run(&mut n).unwrap();
        assert_eq!(n, 1);
    }

    pub fn timer_shortens_an_unbounded_wait(kind: BackendKind) {
        let mut lp = new_loop::<bool>(kind);
        lp.call_later(Duration::from_millis(20), |_, fired| *fired = true);
        let t = Instant::now();
        let mut fired = false;
        while !fired {
            lp.run_once(None, &mut fired).unwrap();
            assert!(t.elapsed() < Duration::from_secs(5));
        }
        assert!(t.elapsed() >= Duration::from_millis(20));
    }

    pub fn hundred_thousand_timers_fire_once_each_in_order(kind: BackendKind) {
        let mut lp = new_loop::<(u64, u64)>(kind);
        let base = Instant::now() + Duration::from_millis(5);
        const N: u64 = 100_000;
        let mut ids = Vec::new();
        for i in 0..N {
            // 100 distinct deadlines, 1,000 timers each.
            let at = base + Duration::from_micros(i % 100 * 10);
            ids.push(lp.call_at(at, move |_, (count, last)| {
                let key = (i % 100) * N + i;
                assert!(key > *last || *count == 0, "out of order");
                *last = key;
                *count += 1;
            }));
        }
        // Cancel every tenth.
        for id in ids.iter().step_by(10) {
            assert!(lp.cancel(*id));
        }
        let mut st = (0, 0);
        let t = Instant::now();
        while lp.timer_count() > 0 {
            lp.run_once(Some(Duration::from_millis(50)), &mut st)
                .unwrap();
            assert!(t.elapsed() < Duration::from_secs(30));
        }
        assert_eq!(st.0, N - N / 10);
    }

    // --- the handle --------------------------------------------------------------

    pub fn handle_wakes_a_loop_blocked_without_timeout(kind: BackendKind) {
        let mut lp = new_loop::<Vec<&'static str>>(kind);
        let handle = lp.handle();
        let t = Instant::now();
        let th = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            handle
                .call_soon(|lp, log| {
                    log.push("remote");
                    lp.stop();
                })
                .unwrap();
        });
        let mut log = Vec::new();
        lp.run(&mut log).unwrap();
        th.join().unwrap();
        assert_eq!(log, vec!["remote"]);
        assert!(t.elapsed() >= Duration::from_millis(45));
    }

    pub fn many_wakes_from_many_threads_coalesce(kind: BackendKind) {
        const THREADS: u64 = 4;
        const CALLS: u64 = 5_000;
        let mut lp = new_loop::<u64>(kind);
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                let h = lp.handle();
                std::thread::spawn(move || {
                    for _ in 0..CALLS {
                        h.call_soon(|_, n| *n += 1).unwrap();
                    }
                })
            })
            .collect();
        let mut n = 0;
        let t = Instant::now();
        while n < THREADS * CALLS {
            lp.run_once(Some(Duration::from_millis(100)), &mut n)
                .unwrap();
            assert!(t.elapsed() < Duration::from_secs(30));
        }
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(n, THREADS * CALLS);
        // Far fewer iterations than calls: wake-ups were coalesced.
        assert!(
            lp.stats().iterations < THREADS * CALLS / 2,
            "{:?}",
            lp.stats()
        );
    }

    pub fn handle_stop_ends_run(kind: BackendKind) {
        let mut lp = new_loop::<()>(kind);
        let h = lp.handle();
        let th = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            h.stop().unwrap();
        });
        lp.run(&mut ()).unwrap();
        th.join().unwrap();
    }

    pub fn handle_outliving_the_loop_reports_it(kind: BackendKind) {
        let lp = new_loop::<()>(kind);
        let h = lp.handle();
        drop(lp);
        let err = h.call_soon(|_, _| {}).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotConnected);
        assert!(h.stop().is_err());
    }
}

#[test]
fn loop_handle_is_send_sync_clone() {
    fn check<T: Send + Sync + Clone + 'static>() {}
    check::<LoopHandle<()>>();
    // Even for a state type that is neither Send nor Sync.
    check::<LoopHandle<Rc<RefCell<u32>>>>();
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
#[test]
fn select_loop_refuses_a_high_fd_and_drops_it() {
    if !fds_fit(1_600, "an fd numbered 1500") {
        return;
    }
    let (a, mut b) = pair();
    let high = dup_at_least(a.as_raw_fd(), 1500);
    drop(a);
    let mut lp = new_loop::<()>(BackendKind::Select);
    let err = lp
        .add(UnixStream::from(high), Interest::READABLE, |_, _, _, _| {
            PostAction::Continue
        })
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    assert_eq!(lp.source_count(), 0);
    // The refused source was dropped: the peer sees EOF.
    b.set_nonblocking(false).unwrap();
    b.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(b.read(&mut [0; 1]).unwrap(), 0);
}

// Every case, on every backend (see `per_backend!` in `tests/util`).
per_backend!(
    readable_source_runs_its_callback_with_state,
    a_source_left_paused_gives_up_its_number_at_the_next_wait,
    post_action_remove_drops_and_closes_the_source,
    remove_hands_the_source_back_open,
    removal_by_an_earlier_callback_suppresses_a_collected_event,
    stale_event_never_reaches_a_new_source_on_the_same_fd,
    own_removal_is_busy_but_discard_works,
    a_callback_keeps_its_source_until_it_returns_after_discarding_it,
    a_source_removed_and_closed_while_a_dup_lives_does_not_spin,
    a_source_the_loop_closes_leaves_the_kernel_set_first,
    modify_inside_callback_switches_interest,
    run_once_returns_after_its_timeout,
    stats_time_the_wait_and_the_callbacks,
    hooks_run_around_the_wait,
    call_soon_runs_on_the_next_iteration_in_order,
    pause_stops_dispatch_and_resume_brings_the_callback_back,
    pause_and_resume_before_the_wait_keeps_watching,
    resume_before_the_wait_can_change_the_interest,
    pause_and_resume_by_an_earlier_callback_drops_the_collected_event,
    closing_a_paused_source_frees_its_fd_number,
    a_paused_source_can_move_to_another_loop,
    a_source_taken_back_after_pause_is_not_watched,
    pausing_the_running_source_is_busy,
    a_panicking_callback_leaves_the_loop_refusing_with_the_reason,
    timer_rearmed_in_the_past_runs_once_per_iteration,
    a_late_drift_free_ticker_does_not_starve_io,
    stop_before_run_runs_one_iteration,
    ids_of_another_loop_are_refused,
    run_once_says_how_many_callbacks_it_ran,
    disable_keeps_the_id_and_stops_events_until_enable,
    disabling_another_source_drops_its_collected_event,
    with_source_lends_a_source_and_the_loop,
    running_the_loop_from_its_own_callback_is_refused,
    reset_timer_postpones_without_firing_early,
    timer_never_fires_early,
    timers_due_together_fire_in_scheduling_order,
    cancelled_timer_never_fires,
    repeating_timer_repeats_until_it_says_remove,
    repeating_timer_can_cancel_itself,
    timer_shortens_an_unbounded_wait,
    hundred_thousand_timers_fire_once_each_in_order,
    handle_wakes_a_loop_blocked_without_timeout,
    many_wakes_from_many_threads_coalesce,
    handle_stop_ends_run,
    handle_outliving_the_loop_reports_it,
);

#[test]
fn any_source_with_an_fd_can_be_added() {
    use std::net::UdpSocket;
    init_logging();
    let mut lp = EventLoop::<Vec<&'static str>>::new().unwrap();

    // std UDP.
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_nonblocking(true).unwrap();
    let udp_addr = udp.local_addr().unwrap();
    lp.add(udp, Interest::READABLE, |_, sock, _, log| {
        let mut buf = [0; 64];
        if sock.recv_from(&mut buf).is_ok() {
            log.push("std udp");
        }
        PostAction::Remove
    })
    .unwrap();

    // mio UDP.
    let mio_udp = mio::net::UdpSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let mio_addr = mio_udp.local_addr().unwrap();
    lp.add(mio_udp, Interest::READABLE, |_, sock, _, log| {
        let mut buf = [0; 64];
        if sock.recv_from(&mut buf).is_ok() {
            log.push("mio udp");
        }
        PostAction::Remove
    })
    .unwrap();

    // A pipe.
    let (r, w) = pipe();
    lp.add(r, Interest::READABLE, |_, _, ev, log| {
        assert!(ev.is_readable());
        log.push("pipe");
        PostAction::Remove
    })
    .unwrap();

    let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sender.send_to(b"a", udp_addr).unwrap();
    sender.send_to(b"b", mio_addr).unwrap();
    drop(w);
    let mut log = Vec::new();
    let t = Instant::now();
    while lp.source_count() > 0 {
        lp.run_once(Some(Duration::from_millis(100)), &mut log)
            .unwrap();
        assert!(t.elapsed() < Duration::from_secs(5), "{log:?}");
    }
    log.sort();
    assert_eq!(log, vec!["mio udp", "pipe", "std udp"]);
}
