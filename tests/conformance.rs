//! The selector behaviour suite, written once and run against every backend.
//!
//! Each case is a function of the backend kind in `cases`; `per_backend!`
//! (in `tests/util`) instantiates all of them in one module per backend, so
//! `cargo test epoll::` runs one backend, and a new backend is one line in
//! that macro.

#[macro_use]
mod util;

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use muxloop::{BackendKind, Events, Interest, Ready};
use util::*;

const R: Interest = Interest::READABLE;
const W: Interest = Interest::WRITABLE;
const RW: Interest = Interest::BOTH;

mod cases {
    use super::*;

    // --- registration and keys -------------------------------------------

    pub fn register_returns_key_with_fd_interest_and_data(kind: BackendKind) {
        let (a, _b) = pair();
        let mut sel = selector(kind);
        let key = sel.register(a.as_raw_fd(), R, "a").unwrap();
        assert_eq!(key.fd(), a.as_raw_fd());
        assert_eq!(key.interest(), R);
        assert_eq!(*key.data(), "a");
        assert_eq!(sel.len(), 1);
        assert_eq!(*sel.key(a.as_raw_fd()).unwrap().data(), "a");
    }

    pub fn register_twice_is_already_exists(kind: BackendKind) {
        let (a, _b) = pair();
        let mut sel = selector(kind);
        sel.register(a.as_raw_fd(), R, 1).unwrap();
        let err = sel.register(a.as_raw_fd(), W, 2).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert!(err.to_string().contains("already registered"), "{err}");
        // The first registration is untouched.
        let key = sel.key(a.as_raw_fd()).unwrap();
        assert_eq!((key.interest(), *key.data()), (R, 1));
        assert_eq!(sel.len(), 1);
    }

    pub fn register_same_number_through_another_handle_is_already_exists(kind: BackendKind) {
        let (a, _b) = pair();
        let mut sel = selector(kind);
        sel.register(a.as_raw_fd(), R, ()).unwrap();
        let borrowed = std::os::fd::AsFd::as_fd(&a);
        let err = sel.register(borrowed.as_raw_fd(), R, ()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
    }

    pub fn dup_of_registered_fd_is_a_separate_registration(kind: BackendKind) {
        let (a, mut b) = pair();
        let dup = a.try_clone().unwrap();
        let mut sel = selector(kind);
        sel.register(a.as_raw_fd(), R, "orig").unwrap();
        sel.register(dup.as_raw_fd(), R, "dup").unwrap();
        b.write_all(b"x").unwrap();
        let mut fds = ready_fds(&mut sel);
        let mut want = vec![a.as_raw_fd(), dup.as_raw_fd()];
        fds.sort();
        want.sort();
        assert_eq!(fds, want);
        sel.unregister(dup.as_raw_fd()).unwrap();
        assert_eq!(ready_fds(&mut sel), vec![a.as_raw_fd()]);
    }

    pub fn register_negative_fd_is_invalid_input(kind: BackendKind) {
        let mut sel = selector::<()>(kind);
        let err = sel.register(-1, R, ()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(sel.is_empty());
    }

    pub fn register_closed_fd_fails_and_leaves_nothing(kind: BackendKind) {
        let (a, _b) = pair();
        let fd = a.as_raw_fd();
        let mut sel = selector::<()>(kind);
        // A number that is certainly closed: a high one nobody opened.
        let closed = dup_at_least(fd, 900);
        let closed_fd = closed.as_raw_fd();
        drop(closed);
        let err = sel.register(closed_fd, R, ()).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EBADF), "{err}");
        assert!(sel.is_empty());
        assert!(sel.key(closed_fd).is_none());
        // The selector still works.
        sel.register(fd, W, ()).unwrap();
        assert_eq!(ready_fds(&mut sel), vec![fd]);
    }

    pub fn register_huge_fd_number_fails_at_once_and_costs_nothing(kind: BackendKind) {
        let (a, _b) = pair();
        let mut sel = selector::<()>(kind);
        let rss = own_rss_kib();
        let started = Instant::now();
        for fd in [i32::MAX - 1, i32::MAX, 50_000_000, 1_000_000] {
            let err = sel.register(fd, R, ()).unwrap_err();
            let refused = err.raw_os_error() == Some(libc::EBADF)
                || err.kind() == io::ErrorKind::InvalidInput; // select off Linux
            assert!(refused, "fd {fd}: {err}");
            assert!(sel.key(fd).is_none());
        }
        assert!(sel.is_empty());
        let grew = own_rss_kib().saturating_sub(rss);
        assert!(
            grew < 32 * 1024,
            "four refused registers grew RSS by {grew} KiB"
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        sel.register(a.as_raw_fd(), W, ()).unwrap();
        assert_eq!(ready_fds(&mut sel), vec![a.as_raw_fd()]);
    }

    pub fn fd_near_the_limit_is_watched(kind: BackendKind) {
        let limit = raise_fd_limit().min(i32::MAX as u64) as RawFd;
        let (a, mut b) = pair();
        let high = dup_at_least(a.as_raw_fd(), limit.saturating_sub(8).max(64));
        let mut sel = selector(kind);
        match sel.register(high.as_raw_fd(), R, "high") {
            Ok(_) => {}
            // select(2) off Linux cannot hold fds beyond FD_SETSIZE.
            Err(e) if e.kind() == io::ErrorKind::InvalidInput => return,
            Err(e) => panic!("{e}"),
        }
        sel.register(a.as_raw_fd(), R, "low").unwrap();
        b.write_all(b"x").unwrap();
        let mut fds = ready_fds(&mut sel);
        fds.sort();
        assert_eq!(fds, vec![a.as_raw_fd(), high.as_raw_fd()]);
        assert_eq!(*sel.unregister(high.as_raw_fd()).unwrap().data(), "high");
        assert_eq!(ready_fds(&mut sel), vec![a.as_raw_fd()]);
    }

    pub fn unregister_returns_key_with_data(kind: BackendKind) {
        let (a, _b) = pair();
        let mut sel = selector(kind);
        sel.register(a.as_raw_fd(), RW, String::from("payload"))
            .unwrap();
        let key = sel.unregister(a.as_raw_fd()).unwrap();
        assert_eq!(key.fd(), a.as_raw_fd());
        assert_eq!(key.interest(), RW);
        assert_eq!(key.into_data(), "payload");
        assert!(sel.is_empty());
        assert!(sel.key(a.as_raw_fd()).is_none());
    }

    pub fn unregister_unknown_is_not_found(kind: BackendKind) {
        let (a, _b) = pair();
        let mut sel = selector::<()>(kind);
        let err = sel.unregister(a.as_raw_fd()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert_eq!(
            sel.unregister(-5).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }

    pub fn modify_unknown_is_not_found(kind: BackendKind) {
        let (a, _b) = pair();
        let mut sel = selector::<()>(kind);
        let err = sel.modify(a.as_raw_fd(), R, ()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        let err = sel.set_interest(a.as_raw_fd(), R).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    pub fn register_again_after_unregister(kind: BackendKind) {
        let (a, mut b) = pair();
        let mut sel = selector(kind);
        sel.register(a.as_raw_fd(), R, 1).unwrap();
        sel.unregister(a.as_raw_fd()).unwrap();
        sel.register(a.as_raw_fd(), R, 2).unwrap();
        b.write_all(b"x").unwrap();
        let mut events = Events::new();
        sel.select(&mut events, Some(Duration::ZERO)).unwrap();
        let ev = events.iter().next().expect("one event");
        assert_eq!(*sel.key_by_token(ev.token()).unwrap().data(), 2);
    }

    pub fn keys_and_len_track_registrations(kind: BackendKind) {
        let pairs: Vec<_> = (0..5).map(|_| pair()).collect();
        let mut sel = selector(kind);
        for (i, (a, _)) in pairs.iter().enumerate() {
            sel.register(a.as_raw_fd(), R, i).unwrap();
        }
        assert_eq!(sel.len(), 5);
        sel.unregister(pairs[2].0.as_raw_fd()).unwrap();
        let mut data: Vec<usize> = sel.keys().map(|k| *k.data()).collect();
        data.sort();
        assert_eq!(data, vec![0, 1, 3, 4]);
        assert_eq!(sel.len(), 4);
    }

    pub fn key_mut_changes_data_in_place(kind: BackendKind) {
        let (a, _b) = pair();
        let mut sel = selector(kind);
        sel.register(a.as_raw_fd(), R, 1).unwrap();
        *sel.key_mut(a.as_raw_fd()).unwrap().data_mut() += 41;
        assert_eq!(*sel.key(a.as_raw_fd()).unwrap().data(), 42);
    }

    // --- modify ------------------------------------------------------------

    pub fn modify_changes_interest_and_data(kind: BackendKind) {
        let (a, _b) = pair();
        let fd = a.as_raw_fd();
        let mut sel = selector(kind);
        sel.register(fd, R, "read").unwrap();
        assert!(poll_now(&mut sel).is_empty());
        let key = sel.modify(fd, W, "write").unwrap();
        assert_eq!((key.interest(), *key.data()), (W, "write"));
        assert_eq!(poll_now(&mut sel), vec![(fd, Ready::WRITABLE)]);
        sel.modify(fd, R, "read again").unwrap();
        assert!(poll_now(&mut sel).is_empty());
    }

    pub fn modify_data_only_makes_no_syscall(kind: BackendKind) {
        let (a, _b) = pair();
        let (mut sel, calls) = counting_selector(kind);
        sel.register(a.as_raw_fd(), R, 1).unwrap();
        let before = calls.ctl();
        let key = sel.modify(a.as_raw_fd(), R, 2).unwrap();
        assert_eq!(*key.data(), 2);
        sel.set_interest(a.as_raw_fd(), R).unwrap();
        assert_eq!(calls.ctl(), before, "data-only modify reached the backend");
        sel.modify(a.as_raw_fd(), W, 3).unwrap();
        assert_eq!(calls.ctl(), before + 1);
    }

    pub fn set_interest_keeps_data(kind: BackendKind) {
        let (a, _b) = pair();
        let mut sel = selector(kind);
        sel.register(a.as_raw_fd(), R, "kept").unwrap();
        let key = sel.set_interest(a.as_raw_fd(), RW).unwrap();
        assert_eq!((key.interest(), *key.data()), (RW, "kept"));
    }

    // --- readiness -----------------------------------------------------------

    pub fn readable_when_peer_writes(kind: BackendKind) {
        let (a, mut b) = pair();
        let mut sel = selector(kind);
        sel.register(a.as_raw_fd(), R, ()).unwrap();
        assert!(poll_now(&mut sel).is_empty());
        b.write_all(b"hello").unwrap();
        let got = ready(&mut sel, Some(Duration::from_secs(5)));
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, a.as_raw_fd());
        assert!(got[0].1.is_readable());
    }

    pub fn writable_when_buffer_has_room(kind: BackendKind) {
        let (a, _b) = pair();
        let mut sel = selector(kind);
        sel.register(a.as_raw_fd(), W, ()).unwrap();
        assert_eq!(poll_now(&mut sel), vec![(a.as_raw_fd(), Ready::WRITABLE)]);
    }

    pub fn not_writable_when_buffer_full_until_peer_drains(kind: BackendKind) {
        let (mut a, mut b) = pair();
        let mut sel = selector(kind);
        fill(&mut a);
        sel.register(a.as_raw_fd(), W, ()).unwrap();
        assert!(poll_now(&mut sel).is_empty());
        drain(&mut b);
        let got = ready(&mut sel, Some(Duration::from_secs(5)));
        assert_eq!(got, vec![(a.as_raw_fd(), Ready::WRITABLE)]);
    }

    pub fn level_triggered_readable_repeats_until_drained(kind: BackendKind) {
        let (mut a, mut b) = pair();
        let mut sel = selector(kind);
        sel.register(a.as_raw_fd(), R, ()).unwrap();
        b.write_all(b"0123456789").unwrap();
        for _ in 0..3 {
            assert_eq!(ready_fds(&mut sel), vec![a.as_raw_fd()]);
        }
        let mut buf = [0; 4];
        a.read_exact(&mut buf).unwrap();
        assert_eq!(ready_fds(&mut sel), vec![a.as_raw_fd()], "partly drained");
        drain(&mut a);
        assert!(poll_now(&mut sel).is_empty(), "drained");
        b.write_all(b"again").unwrap();
        assert_eq!(ready(&mut sel, Some(Duration::from_secs(5))).len(), 1);
    }

    pub fn level_triggered_writable_repeats(kind: BackendKind) {
        let (a, _b) = pair();
        let mut sel = selector(kind);
        sel.register(a.as_raw_fd(), W, ()).unwrap();
        for _ in 0..3 {
            assert_eq!(ready_fds(&mut sel), vec![a.as_raw_fd()]);
        }
    }

    pub fn read_and_write_merge_into_one_event(kind: BackendKind) {
        let (a, mut b) = pair();
        let mut sel = selector(kind);
        sel.register(a.as_raw_fd(), RW, ()).unwrap();
        b.write_all(b"x").unwrap();
        let got = poll_now(&mut sel);
        assert_eq!(got.len(), 1, "one event per fd: {got:?}");
        assert!(got[0].1.is_readable() && got[0].1.is_writable());
    }

    pub fn readiness_is_masked_by_interest(kind: BackendKind) {
        let (r, mut rb) = pair();
        let (w, _wb) = pair();
        let mut sel = selector(kind);
        // Readable and writable, registered for reading only.
        sel.register(r.as_raw_fd(), R, ()).unwrap();
        rb.write_all(b"x").unwrap();
        // Writable with data pending, registered for writing only.
        sel.register(w.as_raw_fd(), W, ()).unwrap();
        for (fd, ready) in poll_now(&mut sel) {
            if fd == r.as_raw_fd() {
                assert!(ready.is_readable() && !ready.is_writable(), "{ready:?}");
            } else {
                assert_eq!(fd, w.as_raw_fd());
                assert!(ready.is_writable() && !ready.is_readable(), "{ready:?}");
            }
        }
    }

    pub fn many_ready_fds_reported_in_one_call(kind: BackendKind) {
        let n = if kind == BackendKind::Select {
            100
        } else {
            400
        };
        let pairs: Vec<_> = (0..n).map(|_| pair()).collect();
        let mut sel = selector(kind);
        for (a, b) in &pairs {
            sel.register(a.as_raw_fd(), R, ()).unwrap();
            (&*b).write_all(b"x").unwrap();
        }
        let mut events = Events::with_capacity(1);
        assert_eq!(
            sel.select(&mut events, Some(Duration::from_secs(5)))
                .unwrap(),
            n
        );
        let mut fds: Vec<RawFd> = events.iter().map(|e| e.fd()).collect();
        fds.sort();
        fds.dedup();
        assert_eq!(fds.len(), n);
    }

    pub fn events_buffer_is_reused_without_growth(kind: BackendKind) {
        let pairs: Vec<_> = (0..8).map(|_| pair()).collect();
        let mut sel = selector(kind);
        for (a, _) in &pairs {
            sel.register(a.as_raw_fd(), W, ()).unwrap();
        }
        let mut events = Events::with_capacity(8);
        let cap = events.capacity();
        for _ in 0..100 {
            assert_eq!(sel.select(&mut events, Some(Duration::ZERO)).unwrap(), 8);
        }
        assert_eq!(events.capacity(), cap);
    }

    pub fn no_event_after_unregister(kind: BackendKind) {
        let (a, mut b) = pair();
        let mut sel = selector(kind);
        sel.register(a.as_raw_fd(), R, ()).unwrap();
        b.write_all(b"x").unwrap();
        assert_eq!(ready_fds(&mut sel).len(), 1);
        sel.unregister(a.as_raw_fd()).unwrap();
        assert!(poll_now(&mut sel).is_empty());
    }

    // --- hang-up and errors ------------------------------------------------

    pub fn peer_close_is_readable_then_eof(kind: BackendKind) {
        let (mut a, b) = pair();
        let mut sel = selector(kind);
        sel.register(a.as_raw_fd(), R, ()).unwrap();
        (&b).write_all(b"last").unwrap();
        drop(b);
        let got = ready(&mut sel, Some(Duration::from_secs(5)));
        assert_eq!(got.len(), 1);
        assert!(got[0].1.is_readable());
        let mut buf = Vec::new();
        a.read_to_end(&mut buf).unwrap();
        assert_eq!(buf, b"last");
        // Still readable (EOF) on every later call: level-triggered.
        assert_eq!(ready_fds(&mut sel), vec![a.as_raw_fd()]);
        assert_eq!(a.read(&mut [0; 8]).unwrap(), 0);
    }

    pub fn peer_close_wakes_a_writer(kind: BackendKind) {
        let (mut a, b) = pair();
        fill(&mut a);
        let mut sel = selector(kind);
        sel.register(a.as_raw_fd(), W, ()).unwrap();
        assert!(poll_now(&mut sel).is_empty());
        drop(b);
        let got = ready(&mut sel, Some(Duration::from_secs(5)));
        assert_eq!(got.len(), 1, "a writer whose peer left must wake");
        assert!(got[0].1.is_writable());
        let err = a.write(b"x").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }

    /// A full send buffer whose peer shut its write side down: a
    /// half-close is not a hang-up, so a socket watched for writing is not
    /// ready until the peer reads, whether its EOF was read or not.
    pub fn full_writer_whose_peer_half_closed_waits_for_room(kind: BackendKind) {
        let (a, b) = pair();
        half_closed_full_writer(kind, a, b, "unix");
        let (a, b) = tcp_pair();
        half_closed_full_writer(kind, a, b, "tcp");
    }

    fn half_closed_full_writer<S>(kind: BackendKind, mut a: S, mut b: S, what: &str)
    where
        S: Read + Write + AsRawFd + HalfClose,
    {
        fill_any(&mut a);
        b.shut_write();
        let (mut sel, calls) = counting_selector(kind);
        sel.register(a.as_raw_fd(), W, ()).unwrap();
        // Nothing to report, and no wake-ups: a backend that keeps
        // answering "hang-up" spins through the whole wait.
        let quiet = |sel: &mut muxloop::Selector<()>, stage: &str| {
            let before = calls.waits();
            let started = Instant::now();
            let got = ready(sel, Some(Duration::from_millis(150)));
            assert!(got.is_empty(), "{what}, {stage}: {got:?}");
            assert!(
                started.elapsed() >= Duration::from_millis(150),
                "{what}, {stage}"
            );
            let waits = calls.waits() - before;
            assert!(
                waits <= 3,
                "{what}, {stage}: {waits} backend waits in 150 ms"
            );
        };
        quiet(&mut sel, "EOF unread");
        // Watched for both: the EOF is readable, the full buffer still not
        // writable.
        sel.modify(a.as_raw_fd(), RW, ()).unwrap();
        let got = poll_now(&mut sel);
        assert_eq!(got.len(), 1, "{what}: {got:?}");
        assert!(
            got[0].1.is_readable() && !got[0].1.is_writable(),
            "{what}: {got:?}"
        );
        assert_eq!(a.read(&mut [0; 8]).unwrap(), 0, "{what}: EOF");
        sel.modify(a.as_raw_fd(), W, ()).unwrap();
        quiet(&mut sel, "EOF read");
        // The peer reads: now a write makes progress.
        let mut buf = vec![0; 1 << 20];
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            while b.read(&mut buf).is_ok_and(|n| n > 0) {}
            let got = ready(&mut sel, Some(Duration::from_millis(50)));
            if let Some(&(fd, r)) = got.first() {
                assert_eq!(fd, a.as_raw_fd());
                assert!(r.is_writable(), "{what}: {r:?}");
                assert!(a.write(b"x").is_ok(), "{what}: reported writable");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: never writable after the drain"
            );
        }
    }

    /// 150 ms of selects that report nothing and do not spin (a few
    /// backend waits each, not thousands).
    fn stays_quiet(sel: &mut muxloop::Selector<()>, calls: &Calls, what: &str) {
        let before = calls.waits();
        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(150) {
            let got = ready(sel, Some(Duration::from_millis(50)));
            assert!(got.is_empty(), "{what}: {got:?}");
        }
        let waits = calls.waits() - before;
        assert!(waits <= 12, "{what}: {waits} backend waits in 150 ms");
    }

    /// The same writer, closed while a duplicate keeps its file open and
    /// only then unregistered: when the peer reads, nothing is reported
    /// and nothing spins (the kernel kept its registration under a number
    /// that no longer names it).
    pub fn half_closed_writer_closed_while_a_dup_lives_does_not_spin(kind: BackendKind) {
        let (mut a, mut b) = pair();
        fill(&mut a);
        b.shutdown(std::net::Shutdown::Write).unwrap();
        let (mut sel, calls) = counting_selector(kind);
        let fd = a.as_raw_fd();
        sel.register(fd, W, ()).unwrap();
        assert!(ready(&mut sel, Some(Duration::from_millis(30))).is_empty());
        let dup = a.try_clone().unwrap();
        drop(a);
        sel.unregister(fd).unwrap();
        drain(&mut b);
        stays_quiet(&mut sel, &calls, "after the close");
        // Another writer in the same state is quiet too, and wakes when its
        // peer reads.
        let (mut c, mut d) = pair();
        fill(&mut c);
        d.shutdown(std::net::Shutdown::Write).unwrap();
        sel.register(c.as_raw_fd(), W, ()).unwrap();
        stays_quiet(&mut sel, &calls, "another half-closed writer");
        drain(&mut d);
        let got = ready(&mut sel, Some(Duration::from_secs(5)));
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].0, c.as_raw_fd());
        assert!(got[0].1.is_writable());
        drop(dup);
    }

    pub fn pipe_writer_close_wakes_reader(kind: BackendKind) {
        let (r, w) = pipe();
        let mut sel = selector(kind);
        sel.register(r.as_raw_fd(), R, ()).unwrap();
        assert!(poll_now(&mut sel).is_empty());
        drop(w);
        let got = ready(&mut sel, Some(Duration::from_secs(5)));
        assert_eq!(got.len(), 1);
        assert!(got[0].1.is_readable());
    }

    pub fn unregister_closed_fd_succeeds(kind: BackendKind) {
        let (a, _b) = pair();
        let fd = a.as_raw_fd();
        let mut sel = selector(kind);
        sel.register(fd, R, "gone").unwrap();
        // Close it behind the selector's back, atomically replacing the
        // number with a harmless, never-ready pipe end so no other thread of
        // the test process can take it.
        let (pr, _pw) = pipe();
        dup_onto(&pr, fd);
        let key = sel.unregister(fd).unwrap();
        assert_eq!(key.into_data(), "gone");
        assert!(sel.is_empty());
        drop(a);
    }

    pub fn closed_and_reused_fd_number_can_be_unregistered_and_registered(kind: BackendKind) {
        let (a, mut ab) = pair();
        let fd = a.as_raw_fd();
        let mut sel = selector(kind);
        sel.register(fd, R, "old").unwrap();
        ab.write_all(b"old data").unwrap();
        // The number now names a new socket.
        let (c, mut cb) = pair();
        dup_onto(&c, fd);
        let err = sel.register(fd, R, "new").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert!(err.to_string().contains("reused"), "{err}");
        sel.unregister(fd).unwrap();
        sel.register(fd, R, "new").unwrap();
        // Only the new socket's readiness counts.
        let mut events = Events::new();
        sel.select(&mut events, Some(Duration::ZERO)).unwrap();
        for ev in &events {
            assert!(sel.key_by_token(ev.token()).is_some(), "stale event {ev:?}");
        }
        cb.write_all(b"new data").unwrap();
        sel.select(&mut events, Some(Duration::from_secs(5)))
            .unwrap();
        assert_eq!(events.len(), 1);
        let ev = events.iter().next().unwrap();
        assert_eq!(*sel.key_by_token(ev.token()).unwrap().data(), "new");
        drop(a);
    }

    pub fn closed_registered_fd_does_not_break_select(kind: BackendKind) {
        let (a, _ab) = pair();
        let (live, mut live_b) = pair();
        let mut sel = selector(kind);
        // Register a dup, then close it behind the selector's back (the
        // number is atomically re-pointed at... nothing: close it outright
        // would race with other tests, so close the dup directly).
        let dup = a.try_clone().unwrap();
        let dup_fd = dup.as_raw_fd();
        sel.register(dup_fd, R, "closed").unwrap();
        sel.register(live.as_raw_fd(), R, "live").unwrap();
        drop(dup);
        live_b.write_all(b"x").unwrap();
        let mut events = Events::new();
        // Whatever the backend makes of the closed fd, select does not fail
        // and the live fd is reported.
        sel.select(&mut events, Some(Duration::from_secs(5)))
            .unwrap();
        assert!(events.iter().any(|e| e.fd() == live.as_raw_fd()));
        sel.unregister(dup_fd).unwrap();
        assert_eq!(ready_fds(&mut sel), vec![live.as_raw_fd()]);
    }

    pub fn closed_fd_whose_file_stays_ready_does_not_spin(kind: BackendKind) {
        // epoll keeps watching a closed fd while a duplicate keeps its file
        // open, and after unregister no epoll_ctl can reach it. Being
        // level-triggered, it would wake every wait: the selector must not
        // spin on it.
        let (a, ab) = pair();
        (&ab).write_all(b"x").unwrap();
        let dup = a.try_clone().unwrap();
        let dup_fd = dup.as_raw_fd();
        let (mut sel, calls) = counting_selector(kind);
        sel.register(dup_fd, R, "closed").unwrap();
        drop(dup);
        // While registered it is reported (readable through the live file,
        // or flagged as an error by select and poll), so the owner notices.
        for (fd, ready) in poll_now(&mut sel) {
            assert_eq!(fd, dup_fd);
            assert!(ready.is_readable());
        }
        sel.unregister(dup_fd).unwrap();
        let waits = calls.waits();
        let t = Instant::now();
        assert!(ready(&mut sel, Some(Duration::from_millis(100))).is_empty());
        assert!(t.elapsed() >= Duration::from_millis(100));
        assert!(
            calls.waits() - waits <= 4,
            "{} waits: spinning",
            calls.waits() - waits
        );
        drop(a);
    }

    pub fn reregister_after_number_reuse_watches_the_new_file(kind: BackendKind) {
        // unregister + register of one fd number may be coalesced by a
        // backend; if the number now names another file, that file must be
        // watched, not left silent.
        let (a, _ab) = pair();
        let fd = a.as_raw_fd();
        let mut sel = selector(kind);
        sel.register(fd, R, "old").unwrap();
        sel.unregister(fd).unwrap();
        let (c, mut cb) = pair();
        dup_onto(&c, fd);
        sel.register(fd, R, "new").unwrap();
        assert!(poll_now(&mut sel).is_empty());
        cb.write_all(b"x").unwrap();
        assert_eq!(ready_fds(&mut sel), vec![fd]);
        drop(a);
    }

    pub fn reregister_with_another_interest_takes_the_new_one(kind: BackendKind) {
        let (a, mut ab) = pair();
        let fd = a.as_raw_fd();
        let mut sel = selector(kind);
        ab.write_all(b"x").unwrap();
        sel.register(fd, R, ()).unwrap();
        for _ in 0..3 {
            sel.unregister(fd).unwrap();
            sel.register(fd, W, ()).unwrap();
            assert_eq!(poll_now(&mut sel), vec![(fd, Ready::WRITABLE)]);
            sel.unregister(fd).unwrap();
            sel.register(fd, R, ()).unwrap();
            assert_eq!(poll_now(&mut sel), vec![(fd, Ready::READABLE)]);
        }
    }

    pub fn unregister_then_close_while_a_dup_lives_does_not_spin(kind: BackendKind) {
        // The usual unregister-then-close, except that a dup keeps the file
        // open and ready. A backend that defers the kernel delete must not
        // leave it waking every wait.
        let (a, ab) = pair();
        let dup = a.try_clone().unwrap();
        let (mut sel, calls) = counting_selector(kind);
        sel.register(a.as_raw_fd(), R, ()).unwrap();
        sel.unregister(a.as_raw_fd()).unwrap();
        drop(a);
        (&ab).write_all(b"x").unwrap();
        let t = Instant::now();
        assert!(ready(&mut sel, Some(Duration::from_millis(100))).is_empty());
        assert!(t.elapsed() >= Duration::from_millis(100));
        assert!(calls.waits() <= 4, "{} waits: spinning", calls.waits());
        drop(dup);
    }

    pub fn stale_token_is_not_resolved_after_slot_reuse(kind: BackendKind) {
        let (a, mut ab) = pair();
        let (c, _cb) = pair();
        let mut sel = selector(kind);
        sel.register(a.as_raw_fd(), R, "a").unwrap();
        ab.write_all(b"x").unwrap();
        let mut events = Events::new();
        sel.select(&mut events, Some(Duration::ZERO)).unwrap();
        let old = events.iter().next().unwrap().token();
        sel.unregister(a.as_raw_fd()).unwrap();
        let new = sel.register(c.as_raw_fd(), R, "c").unwrap().token();
        assert_eq!(new.index(), old.index(), "slot reused");
        assert_ne!(new, old);
        assert!(sel.key_by_token(old).is_none());
        assert!(sel.key_by_token_mut(old).is_none());
        assert_eq!(*sel.key_by_token(new).unwrap().data(), "c");
    }

    pub fn handlers_may_change_registrations_while_iterating(kind: BackendKind) {
        // The selectors echo pattern: while handling one batch, unregister
        // fds that are still to come and register new ones.
        let pairs: Vec<_> = (0..6).map(|_| pair()).collect();
        let mut sel = selector(kind);
        for (i, (a, b)) in pairs.iter().enumerate() {
            sel.register(a.as_raw_fd(), R, i).unwrap();
            (&*b).write_all(b"x").unwrap();
        }
        let mut events = Events::new();
        sel.select(&mut events, Some(Duration::from_secs(5)))
            .unwrap();
        assert_eq!(events.len(), 6);
        let mut handled = Vec::new();
        let extra = pair();
        for ev in &events {
            let Some(key) = sel.key_by_token(ev.token()) else {
                continue;
            };
            let i = *key.data();
            handled.push(i);
            // Every handler removes every other registration.
            let fds: Vec<RawFd> = sel
                .keys()
                .map(|k| k.fd())
                .filter(|&fd| fd != ev.fd())
                .collect();
            for fd in fds {
                sel.unregister(fd).unwrap();
            }
            sel.register(extra.0.as_raw_fd(), R, 99).ok();
        }
        assert_eq!(handled.len(), 1, "later events belonged to removed keys");
    }

    // --- timeouts and signals ----------------------------------------------

    pub fn zero_timeout_does_not_block(kind: BackendKind) {
        let (a, _b) = pair();
        let mut sel = selector(kind);
        sel.register(a.as_raw_fd(), R, ()).unwrap();
        let t = Instant::now();
        for _ in 0..100 {
            assert!(poll_now(&mut sel).is_empty());
        }
        assert!(t.elapsed() < Duration::from_secs(2));
    }

    pub fn timeout_waits_at_least_the_requested_time(kind: BackendKind) {
        let (a, _b) = pair();
        let mut sel = selector(kind);
        sel.register(a.as_raw_fd(), R, ()).unwrap();
        for ms in [1u64, 15, 60] {
            let t = Instant::now();
            assert!(ready(&mut sel, Some(Duration::from_millis(ms))).is_empty());
            let took = t.elapsed();
            assert!(took >= Duration::from_millis(ms), "{ms} ms took {took:?}");
            assert!(
                took < Duration::from_millis(ms) + Duration::from_secs(2),
                "{took:?}"
            );
        }
    }

    pub fn empty_selector_still_sleeps(kind: BackendKind) {
        let mut sel = selector::<()>(kind);
        let t = Instant::now();
        assert!(ready(&mut sel, Some(Duration::from_millis(30))).is_empty());
        assert!(t.elapsed() >= Duration::from_millis(30));
    }

    pub fn sub_millisecond_timeout_is_not_a_busy_loop(kind: BackendKind) {
        let (a, _b) = pair();
        let (mut sel, calls) = counting_selector(kind);
        sel.register(a.as_raw_fd(), R, ()).unwrap();
        let t = Instant::now();
        assert!(ready(&mut sel, Some(Duration::from_micros(100))).is_empty());
        assert!(t.elapsed() >= Duration::from_micros(100));
        assert!(calls.waits() <= 3, "{} waits for 100 µs", calls.waits());
    }

    pub fn huge_timeout_is_clamped(kind: BackendKind) {
        let (a, mut b) = pair();
        let mut sel = selector(kind);
        sel.register(a.as_raw_fd(), R, ()).unwrap();
        b.write_all(b"x").unwrap();
        for t in [
            Duration::MAX,
            Duration::from_secs(u64::MAX / 2),
            Duration::from_secs(1 << 40),
        ] {
            assert_eq!(ready(&mut sel, Some(t)).len(), 1);
        }
    }

    pub fn no_timeout_blocks_until_ready(kind: BackendKind) {
        let (a, b) = pair();
        let mut sel = selector(kind);
        sel.register(a.as_raw_fd(), R, ()).unwrap();
        let t = Instant::now();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            (&b).write_all(b"x").unwrap();
            b
        });
        assert_eq!(ready(&mut sel, None).len(), 1);
        assert!(
            t.elapsed() >= Duration::from_millis(45),
            "{:?}",
            t.elapsed()
        );
        writer.join().unwrap();
    }

    pub fn signal_does_not_end_or_extend_the_wait(kind: BackendKind) {
        install_sigusr1_interrupter();
        let (a, _b) = pair();
        let mut sel = selector(kind);
        sel.register(a.as_raw_fd(), R, ()).unwrap();
        let me = this_thread();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = done.clone();
        let kicker = std::thread::spawn(move || {
            for _ in 0..5 {
                std::thread::sleep(Duration::from_millis(20));
                if flag.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                interrupt(me);
            }
        });
        let t = Instant::now();
        let got = sel.select(&mut Events::new(), Some(Duration::from_millis(200)));
        let took = t.elapsed();
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        kicker.join().unwrap();
        assert_eq!(got.unwrap(), 0, "EINTR must not escape");
        assert!(took >= Duration::from_millis(200), "woke early: {took:?}");
        assert!(took < Duration::from_secs(3), "waited too long: {took:?}");
    }

    pub fn signal_during_infinite_wait_keeps_waiting(kind: BackendKind) {
        install_sigusr1_interrupter();
        let (a, b) = pair();
        let mut sel = selector(kind);
        sel.register(a.as_raw_fd(), R, ()).unwrap();
        let me = this_thread();
        let helper = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            interrupt(me);
            std::thread::sleep(Duration::from_millis(30));
            (&b).write_all(b"x").unwrap();
            b
        });
        let got = ready(&mut sel, None);
        helper.join().unwrap();
        assert_eq!(got.len(), 1);
    }

    /// A registration whose fd was closed behind the selector's back cannot
    /// be given to a fresh kernel object (`after_fork`, like the purge of
    /// orphans, rebuilds from the registrations): the selector still holds
    /// it, so unregistering it afterwards must work, and the others must
    /// still be watched.
    pub fn after_fork_keeps_a_registration_it_cannot_re_add(kind: BackendKind) {
        let (a, _b) = pair();
        let (c, mut d) = pair();
        let mut sel = selector(kind);
        let closed = a.as_raw_fd();
        sel.register(closed, R, ()).unwrap();
        sel.register(c.as_raw_fd(), R, ()).unwrap();
        drop(a);
        sel.after_fork().unwrap();
        assert_eq!(sel.unregister(closed).map(|_| ()).ok(), Some(()));
        d.write_all(b"x").unwrap();
        assert_eq!(ready_fds(&mut sel), vec![c.as_raw_fd()]);
    }

    // --- close ---------------------------------------------------------------

    pub fn operations_after_close_are_errors(kind: BackendKind) {
        let (a, _b) = pair();
        let mut sel = selector(kind);
        sel.register(a.as_raw_fd(), R, ()).unwrap();
        sel.close();
        assert!(sel.is_closed());
        assert_eq!(sel.len(), 0);
        let mut events = Events::new();
        for err in [
            sel.register(a.as_raw_fd(), R, ()).map(|_| ()).unwrap_err(),
            sel.modify(a.as_raw_fd(), W, ()).map(|_| ()).unwrap_err(),
            sel.unregister(a.as_raw_fd()).map(|_| ()).unwrap_err(),
            sel.select(&mut events, Some(Duration::ZERO))
                .map(|_| ())
                .unwrap_err(),
        ] {
            assert!(err.to_string().contains("closed"), "{err}");
        }
    }

    pub fn close_twice_is_fine(kind: BackendKind) {
        let mut sel = selector::<()>(kind);
        sel.close();
        sel.close();
        assert!(sel.is_closed());
    }

    pub fn close_drops_the_data(kind: BackendKind) {
        let (a, _b) = pair();
        let data = std::rc::Rc::new(());
        let mut sel = selector(kind);
        sel.register(a.as_raw_fd(), R, data.clone()).unwrap();
        assert_eq!(std::rc::Rc::strong_count(&data), 2);
        sel.close();
        assert_eq!(std::rc::Rc::strong_count(&data), 1);
    }

    pub fn selector_is_debug_and_names_its_backend(kind: BackendKind) {
        let sel = selector::<()>(kind);
        assert_eq!(sel.backend_name(), kind.name());
        assert!(format!("{sel:?}").contains(kind.name()));
    }
}

// Every case, on every backend (see `per_backend!` in `tests/util`).
per_backend!(
    register_returns_key_with_fd_interest_and_data,
    register_twice_is_already_exists,
    register_same_number_through_another_handle_is_already_exists,
    dup_of_registered_fd_is_a_separate_registration,
    register_negative_fd_is_invalid_input,
    register_closed_fd_fails_and_leaves_nothing,
    register_huge_fd_number_fails_at_once_and_costs_nothing,
    fd_near_the_limit_is_watched,
    unregister_returns_key_with_data,
    unregister_unknown_is_not_found,
    modify_unknown_is_not_found,
    register_again_after_unregister,
    keys_and_len_track_registrations,
    key_mut_changes_data_in_place,
    modify_changes_interest_and_data,
    modify_data_only_makes_no_syscall,
    set_interest_keeps_data,
    readable_when_peer_writes,
    writable_when_buffer_has_room,
    not_writable_when_buffer_full_until_peer_drains,
    level_triggered_readable_repeats_until_drained,
    level_triggered_writable_repeats,
    read_and_write_merge_into_one_event,
    readiness_is_masked_by_interest,
    many_ready_fds_reported_in_one_call,
    events_buffer_is_reused_without_growth,
    no_event_after_unregister,
    peer_close_is_readable_then_eof,
    peer_close_wakes_a_writer,
    full_writer_whose_peer_half_closed_waits_for_room,
    half_closed_writer_closed_while_a_dup_lives_does_not_spin,
    pipe_writer_close_wakes_reader,
    unregister_closed_fd_succeeds,
    closed_and_reused_fd_number_can_be_unregistered_and_registered,
    closed_registered_fd_does_not_break_select,
    closed_fd_whose_file_stays_ready_does_not_spin,
    reregister_after_number_reuse_watches_the_new_file,
    reregister_with_another_interest_takes_the_new_one,
    unregister_then_close_while_a_dup_lives_does_not_spin,
    stale_token_is_not_resolved_after_slot_reuse,
    handlers_may_change_registrations_while_iterating,
    zero_timeout_does_not_block,
    timeout_waits_at_least_the_requested_time,
    empty_selector_still_sleeps,
    sub_millisecond_timeout_is_not_a_busy_loop,
    huge_timeout_is_clamped,
    no_timeout_blocks_until_ready,
    signal_does_not_end_or_extend_the_wait,
    signal_during_infinite_wait_keeps_waiting,
    after_fork_keeps_a_registration_it_cannot_re_add,
    operations_after_close_are_errors,
    close_twice_is_fine,
    close_drops_the_data,
    selector_is_debug_and_names_its_backend,
);
