//! Timers and a cross-thread wake-up, in a few lines: a repeating timer, a
//! one-shot timer that cancels it, and a worker thread that hands a result
//! to the loop through a `LoopHandle` and stops it.
//!
//! ```text
//! cargo run --example timers
//! ```

#[path = "common/cli.rs"]
mod cli;

use std::time::{Duration, Instant};

use clap::Parser;
use muxloop::{BackendKind, EventLoop, PostAction};

/// Timers and a cross-thread wake-up on the event loop.
#[derive(Parser)]
struct Args {
    /// Backend (those this machine lacks are refused, naming the cause).
    #[arg(long, env = "MUXLOOP_BACKEND", default_value_t = BackendKind::platform_default(), value_parser = cli::backend_parser())]
    backend: BackendKind,
}

#[derive(Default)]
struct State {
    ticks: u32,
    result: Option<u64>,
}

fn main() -> std::io::Result<()> {
    cli::guard_stdio();
    env_logger::init();
    let args = Args::parse();
    let mut lp = EventLoop::<State>::with_backend(args.backend)?;
    let start = Instant::now();

    let tick = lp.call_every(Duration::from_millis(100), move |_, st| {
        st.ticks += 1;
        cli::say!("{:>6.1?} tick {}", start.elapsed(), st.ticks);
        PostAction::Continue
    });
    lp.call_later(Duration::from_millis(450), move |lp, _| {
        cli::say!("{:>6.1?} one-shot: cancelling the ticker", start.elapsed());
        lp.cancel(tick);
    });

    // Work on another thread; the loop sleeps (no timeout needed) until the
    // handle wakes it.
    let handle = lp.handle();
    let worker = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(600));
        let sum: u64 = (1..=1_000_000u64).sum();
        handle
            .call_soon(move |lp, st| {
                cli::say!("{:>6.1?} worker result {sum} arrived", start.elapsed());
                st.result = Some(sum);
                lp.stop();
            })
            .expect("loop alive");
    });

    cli::say!("backend {}", lp.backend_name());
    let mut st = State::default();
    lp.run(&mut st)?;
    worker.join().expect("worker");
    let stats = lp.stats();
    cli::say!(
        "{} ticks, result {:?}; {} iterations, {} timers fired, waited {:.1?}",
        st.ticks,
        st.result,
        stats.iterations,
        stats.timers_fired,
        stats.wait_time
    );
    Ok(())
}
