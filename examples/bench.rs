//! libevent's `test/bench.c` (the benchmark behind libev's "libevent vs
//! libev" comparison) on muxloop, with the same command line so the numbers
//! line up with the C originals:
//!
//! ```text
//! cargo run --release --example bench -- -b epoll -n 1000 -a 100 -w 100 -i 25 [-t] [--rearm remove]
//! ```
//!
//! Prints one machine-readable `RESULT …` line on stdout (medians over the
//! iterations after the first, which is a warm-up); `-v` also prints each
//! iteration on stderr. See `examples/common/bench_core.rs` for the method.

#[path = "common/bench_core.rs"]
mod bench_core;
#[path = "common/cli.rs"]
mod cli;

use clap::Parser;
use muxloop::BackendKind;

/// libevent's bench.c on muxloop.
#[derive(Parser)]
struct Args {
    /// Backend (those this machine lacks are refused, naming the cause).
    #[arg(short = 'b', long, default_value_t = BackendKind::platform_default(), value_parser = cli::backend_parser())]
    backend: BackendKind,
    /// Number of socket pairs.
    #[arg(short = 'n', long = "pairs", default_value_t = 100)]
    pairs: usize,
    /// Pairs written to at the start of each iteration.
    #[arg(short = 'a', long = "active", default_value_t = 1)]
    active: usize,
    /// Writes the callbacks make, each into the next pair (default: n).
    #[arg(short = 'w', long = "writes")]
    writes: Option<usize>,
    /// Iterations, the first of which is a warm-up.
    #[arg(short = 'i', long = "iterations", default_value_t = 25)]
    iterations: usize,
    /// Give every watcher a 10 s idle timer, re-armed on every read.
    #[arg(short = 't', long = "timers")]
    timers: bool,
    /// How each iteration re-registers the watchers: `pause` (pause +
    /// resume, the default) or `remove` (remove + add, through the kernel).
    #[arg(long, value_enum, default_value_t = bench_core::Rearm::Pause)]
    rearm: bench_core::Rearm,
    /// Print every iteration on stderr.
    #[arg(short = 'v', long)]
    verbose: bool,
}

fn main() {
    cli::guard_stdio();
    env_logger::init();
    let args = Args::parse();
    let cfg = bench_core::Config {
        backend: args.backend,
        pairs: args.pairs,
        active: args.active,
        writes: args.writes.unwrap_or(args.pairs),
        iterations: args.iterations,
        timers: args.timers,
        rearm: args.rearm,
    };
    let verbose = args.verbose;
    let res = bench_core::run(cfg, |i, s| {
        if verbose {
            cli::tell!(
                "iter {i:>3}: setup {:>10.1} us  run {:>10.1} us  total {:>10.1} us",
                s.setup_us,
                s.run_us,
                s.total_us
            );
        }
    });
    match res {
        Ok(summary) => cli::say!("{}", bench_core::result_line(&cfg, &summary)),
        Err(e) => {
            cli::tell!("bench: {e}");
            std::process::exit(2);
        }
    }
}
