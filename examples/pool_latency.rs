//! Measures `EventLoop::spawn_blocking`: `--jobs` jobs through a bounded
//! pool, submitted as fast as the pool takes them (`WouldBlock` is the
//! back-pressure), and for each the latency from its result being ready
//! on the pool's thread to its callback running on the loop; the loop's
//! memory before and after. `--in-flight 1` measures an idle loop's
//! hand-back (a wake-up and an iteration).
//!
//! ```text
//! cargo run --release --example pool_latency -- --jobs 100000
//! cargo run --release --example pool_latency -- --jobs 10000 --in-flight 1
//! ```
//!
//! The last line is machine-readable:
//! `RESULT pool jobs=… threads=… in_flight=… secs=… jobs_per_s=… p50_us=… p99_us=… max_us=… refused=… rss_growth_kib=…`

#[path = "common/cli.rs"]
mod cli;

use std::io;
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use muxloop::{BlockingPool, EventLoop};

/// spawn_blocking's hand-back latency and memory.
#[derive(Parser)]
struct Args {
    /// Jobs to run.
    #[arg(long, default_value_t = 100_000)]
    jobs: usize,
    /// Pool threads.
    #[arg(long, default_value_t = 4)]
    threads: usize,
    /// Jobs waiting at most.
    #[arg(long, default_value_t = 1024)]
    queued: usize,
    /// Jobs in flight at most (1: each waits for the one before, the
    /// hand-back latency of an idle loop; default: as many as the pool
    /// takes).
    #[arg(long)]
    in_flight: Option<usize>,
}

struct Run {
    hist: Histogram<u64>,
    done: usize,
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn main() -> io::Result<()> {
    cli::guard_stdio();
    let args = Args::parse();
    let mut lp = EventLoop::<Run>::new()?;
    lp.set_blocking_pool(BlockingPool::new(args.threads, args.queued));
    let mut run = Run {
        hist: Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds"),
        done: 0,
    };
    let before = rss_kib();
    let start = Instant::now();
    let (mut submitted, mut refused) = (0, 0u64);
    while run.done < args.jobs {
        while submitted < args.jobs && submitted - run.done < args.in_flight.unwrap_or(usize::MAX) {
            let r = lp.spawn_blocking(Instant::now, |_, run: &mut Run, ready| {
                let us = ready.expect("no panic").elapsed().as_micros().max(1) as u64;
                let _ = run.hist.record(us.min(run.hist.high()));
                run.done += 1;
            });
            match r {
                Ok(()) => submitted += 1,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    refused += 1;
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        lp.run_once(Some(Duration::from_millis(100)), &mut run)?;
    }
    let secs = start.elapsed().as_secs_f64();
    let h = &run.hist;
    cli::say!(
        "RESULT pool jobs={} threads={} in_flight={} secs={secs:.3} jobs_per_s={:.0} p50_us={} p99_us={} max_us={} refused={refused} rss_growth_kib={}",
        args.jobs,
        args.threads,
        args.in_flight.map_or("max".to_string(), |n| n.to_string()),
        args.jobs as f64 / secs,
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.max(),
        rss_kib().saturating_sub(before),
    );
    Ok(())
}
