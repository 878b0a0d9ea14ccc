//! Blocking work off the loop (`EventLoop::spawn_blocking`), on every
//! backend: results back in loop context, panics as errors, a full queue
//! refused, a loop dropped with work in flight, 100,000 jobs in bounded
//! memory.

#[macro_use]
mod util;

use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use muxloop::{BackendKind, BlockingPool, EventLoop};
use util::*;

#[derive(Default)]
struct Got {
    values: Vec<u64>,
    errors: Vec<String>,
}

/// Runs the loop until `done`, for at most 20 s.
fn run_until<S>(lp: &mut EventLoop<S>, state: &mut S, mut done: impl FnMut(&S) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done(state) {
        assert!(Instant::now() < deadline, "timed out");
        lp.run_once(Some(Duration::from_millis(50)), state).unwrap();
    }
}

/// Sets its flag when dropped.
struct Dropped(Arc<AtomicBool>);

impl Drop for Dropped {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

mod cases {
    use super::*;

    pub fn results_come_back_on_the_loop(kind: BackendKind) {
        init_logging();
        let mut lp = EventLoop::<Got>::with_backend(kind).unwrap();
        let pool = BlockingPool::new(4, 1000);
        lp.set_blocking_pool(pool.clone());
        let loop_thread = std::thread::current().id();
        for i in 0..500u64 {
            lp.spawn_blocking(
                move || {
                    assert_ne!(std::thread::current().id(), loop_thread);
                    i * i
                },
                move |_, got: &mut Got, r| {
                    assert_eq!(std::thread::current().id(), loop_thread);
                    got.values.push(r.unwrap());
                },
            )
            .unwrap();
        }
        assert_eq!(lp.blocking_in_flight(), 500);
        let mut got = Got::default();
        run_until(&mut lp, &mut got, |g| g.values.len() == 500);
        got.values.sort_unstable();
        assert_eq!(got.values, (0..500u64).map(|i| i * i).collect::<Vec<_>>());
        assert_eq!(lp.blocking_in_flight(), 0);
        assert!(pool.threads() <= 4, "{pool:?}");
    }

    pub fn a_panic_in_the_work_reaches_done_as_an_error(kind: BackendKind) {
        init_logging();
        let mut lp = EventLoop::<Got>::with_backend(kind).unwrap();
        lp.set_blocking_pool(BlockingPool::new(1, 10));
        lp.spawn_blocking(
            || -> u64 { panic!("the disk is on fire") },
            |_, got: &mut Got, r| got.errors.push(r.unwrap_err().to_string()),
        )
        .unwrap();
        // The pool's thread survives the panic.
        lp.spawn_blocking(|| 7u64, |_, got: &mut Got, r| got.values.push(r.unwrap()))
            .unwrap();
        let mut got = Got::default();
        run_until(&mut lp, &mut got, |g| g.errors.len() + g.values.len() == 2);
        assert_eq!(got.values, vec![7]);
        assert!(
            got.errors[0].contains("the disk is on fire"),
            "{:?}",
            got.errors
        );
    }

    pub fn a_full_queue_is_refused_and_then_accepts_again(kind: BackendKind) {
        init_logging();
        let mut lp = EventLoop::<Got>::with_backend(kind).unwrap();
        lp.set_blocking_pool(BlockingPool::new(1, 2));
        let (release, wait) = mpsc::channel::<()>();
        let wait = Arc::new(std::sync::Mutex::new(wait));
        // One running (held), two waiting: full.
        for _ in 0..3 {
            let wait = wait.clone();
            lp.spawn_blocking(
                move || {
                    let _ = wait.lock().unwrap().recv();
                    1u64
                },
                |_, got: &mut Got, r| got.values.push(r.unwrap()),
            )
            .unwrap();
        }
        let e = lp
            .spawn_blocking(|| 2u64, |_, _: &mut Got, _| panic!("refused work ran"))
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        assert!(e.to_string().contains("blocking pool full"), "{e}");
        assert_eq!(lp.blocking_in_flight(), 3, "the refused job left nothing");
        for _ in 0..3 {
            release.send(()).unwrap();
        }
        let mut got = Got::default();
        run_until(&mut lp, &mut got, |g| g.values.len() == 3);
        lp.spawn_blocking(|| 2u64, |_, got: &mut Got, r| got.values.push(r.unwrap()))
            .unwrap();
        run_until(&mut lp, &mut got, |g| g.values.len() == 4);
    }

    pub fn results_not_yet_taken_count_against_the_bound(kind: BackendKind) {
        init_logging();
        let mut lp = EventLoop::<Got>::with_backend(kind).unwrap();
        let pool = BlockingPool::new(1, 2);
        lp.set_blocking_pool(pool.clone());
        // Quick jobs, the loop never run: their results wait for it, and
        // still hold their places.
        let mut accepted = 0;
        for _ in 0..10 {
            match lp.spawn_blocking(|| 1u64, |_, got: &mut Got, r| got.values.push(r.unwrap())) {
                Ok(()) => accepted += 1,
                Err(e) => assert_eq!(e.kind(), io::ErrorKind::WouldBlock),
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(accepted, 3, "1 thread + 2 waiting");
        let mut got = Got::default();
        run_until(&mut lp, &mut got, |g| g.values.len() == 3);
        lp.spawn_blocking(|| 1u64, |_, _, _| {}).unwrap();
    }

    pub fn a_dropped_loop_runs_no_callback_and_leaks_nothing(kind: BackendKind) {
        init_logging();
        let mut lp = EventLoop::<()>::with_backend(kind).unwrap();
        lp.set_blocking_pool(BlockingPool::new(1, 10));
        let (release, wait) = mpsc::channel::<()>();
        let (done_dropped, value_dropped) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let ran = Arc::new(AtomicBool::new(false));
        let (d, v, r) = (
            Dropped(done_dropped.clone()),
            value_dropped.clone(),
            ran.clone(),
        );
        lp.spawn_blocking(
            move || {
                let _ = wait.recv();
                Dropped(v)
            },
            move |_, _, _| {
                let _keep = &d;
                r.store(true, Ordering::Release);
            },
        )
        .unwrap();
        drop(lp);
        assert!(
            done_dropped.load(Ordering::Acquire),
            "done dropped with the loop"
        );
        release.send(()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !value_dropped.load(Ordering::Acquire) {
            assert!(Instant::now() < deadline, "the result was never dropped");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(!ran.load(Ordering::Acquire));
    }

    pub fn a_hundred_thousand_jobs_in_bounded_memory(kind: BackendKind) {
        init_logging();
        let mut lp = EventLoop::<usize>::with_backend(kind).unwrap();
        let pool = BlockingPool::new(4, 256);
        lp.set_blocking_pool(pool.clone());
        let ran = Arc::new(AtomicUsize::new(0));
        let before = own_rss_kib();
        let (mut submitted, mut done, mut refused) = (0usize, 0usize, 0usize);
        let deadline = Instant::now() + Duration::from_secs(60);
        while done < 100_000 {
            assert!(Instant::now() < deadline, "{done} of 100,000 done");
            while submitted < 100_000 {
                let ran = ran.clone();
                let r = lp.spawn_blocking(
                    move || ran.fetch_add(1, Ordering::Relaxed),
                    |_, done: &mut usize, r| {
                        r.unwrap();
                        *done += 1;
                    },
                );
                match r {
                    Ok(()) => submitted += 1,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        refused += 1;
                        break;
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            // What the loop and the pool hold is bounded by the pool's
            // size, whatever was submitted.
            assert!(pool.queued() <= 256 + 4, "{pool:?}");
            assert!(
                lp.blocking_in_flight() <= 256 + 4,
                "{}",
                lp.blocking_in_flight()
            );
            lp.run_once(Some(Duration::from_millis(10)), &mut done)
                .unwrap();
        }
        assert_eq!(ran.load(Ordering::Relaxed), 100_000);
        assert!(refused > 0, "the queue bound was reached and held");
        // The process's RSS (other tests run beside this one): a loose
        // check that 100,000 jobs left nothing each behind.
        let grown = own_rss_kib().saturating_sub(before);
        assert!(grown < 256 * 1024, "RSS grew {grown} KiB");
    }
}

per_backend!(
    results_come_back_on_the_loop,
    a_panic_in_the_work_reaches_done_as_an_error,
    a_full_queue_is_refused_and_then_accepts_again,
    results_not_yet_taken_count_against_the_bound,
    a_dropped_loop_runs_no_callback_and_leaks_nothing,
    a_hundred_thousand_jobs_in_bounded_memory,
);
