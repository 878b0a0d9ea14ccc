//! The echo server and the loop under load: 10,000 concurrent connections
//! on every backend (the load in a separate process: the fd limit is per
//! process), a million timers, a million cross-thread wake-ups.
//!
//! Without `MUXLOOP_LONG_TESTS`, select and poll (O(fds) per wait, ~30 s
//! each at 10,000 in a debug build) get 2,000 connections and the timer
//! test 200,000 timers; CI runs the full sizes.

mod util;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use muxloop::{BackendKind, EventLoop, PostAction};
use util::*;

#[test]
fn ten_thousand_concurrent_connections_on_every_backend() {
    // The server and the load each hold one fd per connection.
    if !fds_fit(10_000 + 100, "10,000 concurrent connections") {
        return;
    }
    for &kind in BackendKind::available() {
        let scans = matches!(kind, BackendKind::Select | BackendKind::Poll);
        let conns: u32 = if scans {
            quick_or_long(2_000, 10_000)
        } else {
            10_000
        };
        let server = echo_server(kind, &[]);
        let t = Instant::now();
        let out = Command::new(example_path("echo_load"))
            .args([
                "--addr",
                &server.addr.to_string(),
                "--conns",
                &conns.to_string(),
                "--count",
                "3",
                "--size",
                "100",
            ])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{kind}: {}\n{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
        let f = result_fields(&stdout);
        assert_eq!(f["round_trips"], (3 * conns).to_string(), "{kind}");
        assert_eq!(f["errors"], "0", "{kind}");
        eprintln!(
            "{kind}: {conns} connections x 3 round trips, {} bytes verified in {:.1?}",
            300 * conns,
            t.elapsed()
        );
    }
}

#[test]
fn a_million_timers_fire_once_each_never_early_in_order() {
    init_logging();
    let n: u64 = quick_or_long(200_000, 1_000_000);
    let mut lp = EventLoop::<(u64, u64, u64)>::new().unwrap();
    let start = Instant::now() + Duration::from_millis(20);
    // 1,000 distinct deadlines over 200 ms, 1,000 timers each.
    let mut ids = Vec::with_capacity(n as usize);
    for i in 0..n {
        let slot = i % 1000;
        let at = start + Duration::from_micros(slot * 200);
        ids.push(lp.call_at(at, move |_, (count, last_key, early)| {
            if Instant::now() < at {
                *early += 1;
            }
            // (deadline slot, scheduling order) must increase.
            let key = slot * n + i;
            assert!(*count == 0 || key > *last_key, "timer {i} out of order");
            *last_key = key;
            *count += 1;
        }));
    }
    // Cancel a tenth; they must not fire.
    for id in ids.iter().skip(3).step_by(10) {
        assert!(lp.cancel(*id));
    }
    let mut st = (0, 0, 0);
    let t = Instant::now();
    while lp.timer_count() > 0 {
        lp.run_once(Some(Duration::from_secs(1)), &mut st).unwrap();
        assert!(t.elapsed() < Duration::from_secs(120), "timers too slow");
    }
    assert_eq!(st.0, n - n / 10, "fired");
    assert_eq!(st.2, 0, "early");
    assert_eq!(lp.stats().timers_fired, n - n / 10);
}

#[test]
fn a_million_wake_ups_from_four_threads_never_block_and_coalesce() {
    init_logging();
    const THREADS: u64 = 4;
    const PER: u64 = 250_000;
    let mut lp = EventLoop::<u64>::new().unwrap();
    let slowest = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..THREADS)
        .map(|_| {
            let h = lp.handle();
            let slowest = slowest.clone();
            std::thread::spawn(move || {
                for _ in 0..PER {
                    let t = Instant::now();
                    h.call_soon(|_, n| *n += 1).unwrap();
                    slowest.fetch_max(t.elapsed().as_micros() as u64, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let mut n = 0;
    let t = Instant::now();
    while n < THREADS * PER {
        lp.run_once(Some(Duration::from_millis(100)), &mut n)
            .unwrap();
        assert!(t.elapsed() < Duration::from_secs(120));
    }
    for w in workers {
        w.join().unwrap();
    }
    assert_eq!(n, THREADS * PER);
    let iterations = lp.stats().iterations;
    eprintln!(
        "1,000,000 wake-ups in {iterations} iterations, slowest call_soon {} us",
        slowest.load(Ordering::Relaxed)
    );
    assert!(
        iterations < THREADS * PER / 10,
        "not coalesced: {iterations} iterations"
    );
    // "Never block": no call waited on the loop; allow for scheduling
    // hiccups on a shared machine.
    assert!(slowest.load(Ordering::Relaxed) < 2_000_000);
}

#[test]
fn a_repeating_timer_under_a_busy_loop_keeps_its_cadence() {
    let (a, b) = pair();
    let mut lp = EventLoop::<Vec<Instant>>::new().unwrap();
    // A source that is always ready keeps the loop busy.
    lp.add(b, muxloop::Interest::WRITABLE, |_, _, _, _| {
        PostAction::Continue
    })
    .unwrap();
    let start = Instant::now();
    lp.call_every(Duration::from_millis(10), |lp, ticks| {
        ticks.push(Instant::now());
        if ticks.len() == 20 {
            lp.stop();
        }
        PostAction::Continue
    });
    let mut ticks = Vec::new();
    lp.run(&mut ticks).unwrap();
    for (i, t) in ticks.iter().enumerate() {
        assert!(
            *t - start >= Duration::from_millis(10 * (i as u64 + 1)),
            "tick {i} early"
        );
    }
    assert!(start.elapsed() < Duration::from_secs(10));
    drop(a);
}
