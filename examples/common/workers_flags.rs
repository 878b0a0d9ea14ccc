//! `--workers N` and `--balance` for the example servers, and the main
//! thread of a server on several loops: the listener shared by the
//! workers, SIGINT/SIGTERM (or `--max-seconds`) for a graceful stop, and
//! one line per worker afterwards, `worker K: N connections`.
#![allow(dead_code)]

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use clap::ValueEnum;
use muxloop::workers::{Balance, Pick, SharedListener, Worker, WorkerExit, WorkerOptions, Workers};
use muxloop::{BackendKind, EventLoop};

/// How `--workers` spreads the connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BalanceFlag {
    /// Reuse-port listeners where the kernel balances them, else an acceptor.
    Auto,
    /// A listener per worker (`SO_REUSEPORT`).
    Reuseport,
    /// One acceptor thread, round robin.
    Acceptor,
    /// One acceptor thread, to the worker with the fewest connections.
    Least,
}

impl BalanceFlag {
    pub fn balance(self) -> Balance {
        match self {
            BalanceFlag::Auto => Balance::Auto,
            BalanceFlag::Reuseport => Balance::ReusePort,
            BalanceFlag::Acceptor => Balance::Acceptor(Pick::RoundRobin),
            BalanceFlag::Least => Balance::Acceptor(Pick::LeastConnections),
        }
    }
}

/// The flags of a server that can run on several loops.
#[derive(clap::Args)]
pub struct WorkerFlags {
    /// Run on this many loops, one thread each, serving one port (0: one
    /// per core). Without the flag: one loop, on the main thread.
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// With --workers: how connections are spread over the loops.
    #[arg(long, value_enum, default_value_t = BalanceFlag::Auto, requires = "workers")]
    pub balance: BalanceFlag,
}

/// The name of a resolved balance, for the second line.
fn describe(b: Balance) -> &'static str {
    match b {
        Balance::ReusePort => "reuse-port listeners",
        Balance::Acceptor(Pick::RoundRobin) => "an acceptor, round robin",
        Balance::Acceptor(Pick::LeastConnections) => "an acceptor, least connections",
        Balance::Auto => "auto",
    }
}

/// Serves `addr` on `count` workers (each state from `state`, each
/// worker's servers from `serve`), prints `listening on ADDR (backend
/// NAME)` and a second line naming the workers, runs until SIGINT or
/// SIGTERM (or `max_seconds`, or a worker ending), stops gracefully with
/// `grace`, prints `worker K: N connections` for each, and returns the
/// workers' final states.
#[allow(clippy::too_many_arguments)]
pub fn run<S, F, G>(
    flags: &WorkerFlags,
    backend: BackendKind,
    addr: &str,
    grace: Duration,
    max_seconds: u64,
    extra_line: impl Fn(SocketAddr) -> Option<String>,
    state: F,
    serve: G,
) -> io::Result<Vec<WorkerExit<S>>>
where
    S: Send + 'static,
    F: Fn(usize) -> S + Send + Sync + 'static,
    G: Fn(&mut Worker<'_, S>, &SharedListener) -> io::Result<()> + Send + Sync + 'static,
{
    let addr: SocketAddr = addr
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("--addr {addr}: {e}")))?;
    let listener = SharedListener::bind(addr, flags.balance.balance())?;
    let local = listener.local_addr();
    let mut options = WorkerOptions::default();
    if let Some(n) = flags.workers.filter(|&n| n > 0) {
        options.count = n;
    }
    options.backend = Some(backend);
    let count = options.count;
    let balance = listener.balance();
    let shared = listener.clone();
    let workers = Workers::start(options, state, move |w| serve(w, &shared))?;
    let mut main = EventLoop::<()>::new()?;
    for signum in [libc::SIGINT, libc::SIGTERM] {
        main.add_signal(signum, move |lp, _| {
            log::info!("signal={signum}: stopping");
            lp.stop();
        })?;
    }
    if max_seconds > 0 {
        main.call_later(Duration::from_secs(max_seconds), |lp, _| lp.stop());
    }
    let handle = main.handle();
    workers.on_exit(move |_| {
        let _ = handle.stop();
    });
    super::cli::say!("listening on {local} (backend {})", backend.name());
    super::cli::say!("{count} workers, {}", describe(balance));
    if let Some(line) = extra_line(local) {
        super::cli::say!("{line}");
    }
    if !workers.any_finished() {
        main.run(&mut ())?;
    }
    let mut exits = Vec::new();
    let mut failed = None;
    for outcome in workers.stop(grace) {
        match outcome {
            Ok(exit) => {
                super::cli::say!(
                    "worker {}: {} connections",
                    exit.index,
                    exit.stats.connections
                );
                exits.push(exit);
            }
            Err(e) => {
                super::cli::tell!("{e}");
                failed.get_or_insert(io::Error::other(e.to_string()));
            }
        }
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(exits),
    }
}
