//! Timers and a cross-thread wake-up, in a few lines: a repeating timer, a
//! one-shot timer that cancels it, and a worker thread that hands a result
//! to the loop through a `LoopHandle` and stops it.
//!
//! ```text
//! cargo run --example timers
//! ```

use std::time::{Duration, Instant};

use muxloop::{EventLoop, PostAction};

#[derive(Default)]
struct State {
    ticks: u32,
    result: Option<u64>,
}

fn main() -> std::io::Result<()> {
    env_logger::init();
    let mut lp = EventLoop::<State>::new()?;
    let start = Instant::now();

    let tick = lp.call_every(Duration::from_millis(100), move |_, st| {
        st.ticks += 1;
        println!("{:>6.1?} tick {}", start.elapsed(), st.ticks);
        PostAction::Continue
    });
    lp.call_later(Duration::from_millis(450), move |lp, _| {
        println!("{:>6.1?} one-shot: cancelling the ticker", start.elapsed());
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
                println!("{:>6.1?} worker result {sum} arrived", start.elapsed());
                st.result = Some(sum);
                lp.stop();
            })
            .expect("loop alive");
    });

    println!("backend {}", lp.backend_name());
    let mut st = State::default();
    lp.run(&mut st)?;
    worker.join().expect("worker");
    let stats = lp.stats();
    println!(
        "{} ticks, result {:?}; {} iterations, {} timers fired, waited {:.1?}",
        st.ticks, st.result, stats.iterations, stats.timers_fired, stats.wait_time
    );
    Ok(())
}
