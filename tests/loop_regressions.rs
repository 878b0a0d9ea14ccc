//! The kernel calls behind the event loop's pause, resume and remove, on
//! a recording backend, and standalone regressions of the loop's
//! bookkeeping (orphaned records, failed renewals, timers cancelled within
//! the pass that fired them).

mod util;

use std::cell::RefCell;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use muxloop::{BackendKind, EventLoop, Interest, PostAction, SourceId};
use util::*;

/// Records the names of the backend calls; fails the one named `fail`
/// with `ENOMEM`.
struct Recording {
    calls: std::sync::Arc<std::sync::Mutex<Vec<&'static str>>>,
    fail: Option<&'static str>,
}

impl Hooks for Recording {
    fn before(&mut self, call: Call) -> std::io::Result<()> {
        if call == Call::Wait {
            return Ok(());
        }
        self.calls.lock().unwrap().push(call.name());
        if self.fail == Some(call.name()) {
            return Err(std::io::Error::from_raw_os_error(libc::ENOMEM));
        }
        Ok(())
    }
}

type Recorded = std::sync::Arc<std::sync::Mutex<Vec<&'static str>>>;

fn recording_loop_with(fail: Option<&'static str>) -> (EventLoop<u32>, Recorded) {
    let calls = Recorded::default();
    let hooks = Recording {
        calls: calls.clone(),
        fail,
    };
    let backend = Hooked::new(BackendKind::platform_default(), hooks);
    let lp = EventLoop::from_backend(Box::new(backend)).unwrap();
    calls.lock().unwrap().clear(); // the loop's own wake-up fd
    (lp, calls)
}

/// A socket added for reading, with a callback that does nothing, and its
/// peer (kept open by the caller).
fn idle_source(lp: &mut EventLoop<u32>) -> (SourceId<UnixStream>, UnixStream) {
    let (a, b) = pair();
    let id = lp
        .add(a, Interest::READABLE, |_, _, _, _| PostAction::Continue)
        .unwrap();
    (id, b)
}

#[test]
fn stop_and_start_before_the_wait_only_renews_the_token() {
    let (mut lp, calls) = recording_loop_with(None);
    let (mut id, _b) = idle_source(&mut lp);
    for _ in 0..3 {
        let paused = lp.pause(id).unwrap();
        id = lp.resume(paused, Interest::READABLE).unwrap();
    }
    let paused = lp.pause(id).unwrap();
    id = lp.resume(paused, Interest::WRITABLE).unwrap();
    // The backend keeps the registration's first token: only the interest
    // change reaches it.
    assert_eq!(*calls.lock().unwrap(), ["add", "modify"]);
    // Paused across a wait: the registration is dropped then, and a resume
    // registers anew.
    calls.lock().unwrap().clear();
    let paused = lp.pause(id).unwrap();
    lp.run_once(Some(Duration::ZERO), &mut 0).unwrap();
    lp.resume(paused, Interest::READABLE).unwrap();
    assert_eq!(*calls.lock().unwrap(), ["delete", "add"]);
}

#[test]
fn records_of_sources_removed_or_renewed_during_the_pass_are_no_orphans() {
    // Two ready sources; the first callback to run removes the other, and
    // pauses and resumes itself through a later call: the other's record,
    // collected before, is dropped without rebuilding the kernel set.
    let (mut lp, calls) = recording_loop_with(None);
    let ids: std::rc::Rc<RefCell<Vec<SourceId<UnixStream>>>> = Default::default();
    let mut peers = Vec::new();
    for _ in 0..2 {
        let (a, b) = pair();
        let ids2 = ids.clone();
        let id = lp
            .add(a, Interest::READABLE, move |lp, sock, ev, n| {
                drain(sock);
                *n += 1;
                for other in ids2.borrow().iter() {
                    if *other != ev.id() {
                        let _ = lp.discard(*other);
                    }
                }
                PostAction::Continue
            })
            .unwrap();
        ids.borrow_mut().push(id);
        peers.push(b);
    }
    for b in &mut peers {
        b.write_all(b"x").unwrap();
    }
    let mut n = 0;
    lp.run_once(Some(Duration::from_secs(1)), &mut n).unwrap();
    assert_eq!(n, 1, "the removed source's collected record is dropped");
    let survivor = *ids
        .borrow()
        .iter()
        .find(|&&id| lp.source(id).is_some())
        .unwrap();
    let paused = lp.pause(survivor).unwrap();
    lp.resume(paused, Interest::READABLE).unwrap();
    lp.run_once(Some(Duration::ZERO), &mut n).unwrap();
    assert!(
        !calls.lock().unwrap().contains(&"purge"),
        "{:?}",
        calls.lock().unwrap()
    );
}

#[test]
fn a_source_disabled_paused_and_resumed_during_the_pass_is_no_orphan() {
    // The first callback to run disables the other source, pauses it and
    // resumes it: it is registered with the backend anew, and its record
    // of this pass, collected before, is dropped without a purge.
    let (mut lp, calls) = recording_loop_with(None);
    let ids: std::rc::Rc<RefCell<Vec<SourceId<UnixStream>>>> = Default::default();
    let mut peers = Vec::new();
    for _ in 0..2 {
        let (a, b) = pair();
        let ids2 = ids.clone();
        let id = lp
            .add(a, Interest::READABLE, move |lp, sock, ev, n| {
                drain(sock);
                *n += 1;
                let mut ids = ids2.borrow_mut();
                for other in ids.iter_mut() {
                    if *other != ev.id() {
                        lp.disable(*other).unwrap();
                        let paused = lp.pause(*other).unwrap();
                        *other = lp.resume(paused, Interest::READABLE).unwrap();
                    }
                }
                PostAction::Continue
            })
            .unwrap();
        ids.borrow_mut().push(id);
        peers.push(b);
    }
    for b in &mut peers {
        b.write_all(b"x").unwrap();
    }
    let mut n = 0;
    lp.run_once(Some(Duration::from_secs(1)), &mut n).unwrap();
    assert_eq!(n, 1, "the renewed source's collected record is dropped");
    assert!(
        !calls.lock().unwrap().contains(&"purge"),
        "{:?}",
        calls.lock().unwrap()
    );
    // Still watched: its unread byte makes the next pass run it.
    lp.run_once(Some(Duration::from_secs(1)), &mut n).unwrap();
    assert_eq!(n, 2);
}

#[test]
fn a_failed_renewal_drops_the_source_and_frees_its_fd() {
    // A resume with the same interest makes no backend call, so only the
    // interest change can fail.
    let (mut lp, calls) = recording_loop_with(Some("modify"));
    let (id, _b) = idle_source(&mut lp);
    let paused = lp.pause(id).unwrap();
    let err = lp.resume(paused, Interest::WRITABLE).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOMEM));
    assert_eq!(*calls.lock().unwrap(), ["add", "modify", "delete"]);
    assert_eq!(lp.source_count(), 0);
    // No half-registered key is left: the number is free for a new source.
    let (c, _d) = pair();
    lp.add(c, Interest::READABLE, |_, _, _, _| PostAction::Continue)
        .unwrap();
}

#[test]
fn remove_unregisters_at_once() {
    let (mut lp, calls) = recording_loop_with(None);
    let (id, _b) = idle_source(&mut lp);
    let _a: UnixStream = lp.remove(id).unwrap();
    assert_eq!(*calls.lock().unwrap(), ["add", "delete"]);
}

#[test]
fn a_repeating_timer_that_fired_earlier_in_the_pass_can_be_cancelled_in_it() {
    let mut lp = EventLoop::<Vec<&'static str>>::new().unwrap();
    // Both due in the same pass; the ticker fires first (earlier deadline).
    let tick = lp.call_every(Duration::from_millis(20), |_, log| {
        log.push("tick");
        PostAction::Continue
    });
    lp.call_later(Duration::from_millis(21), move |lp, log| {
        assert!(
            lp.is_pending(tick),
            "a fired repeating timer is pending again"
        );
        assert!(
            lp.cancel(tick),
            "cancel of a ticker that fired in this pass"
        );
        log.push("cancelled");
    });
    std::thread::sleep(Duration::from_millis(30));
    let mut log = Vec::new();
    lp.run_once(Some(Duration::ZERO), &mut log).unwrap();
    assert_eq!(log, ["tick", "cancelled"]);
    std::thread::sleep(Duration::from_millis(50));
    lp.run_once(Some(Duration::ZERO), &mut log).unwrap();
    assert_eq!(
        log,
        ["tick", "cancelled"],
        "the cancelled ticker fired again"
    );
    assert_eq!(lp.timer_count(), 0);
}
