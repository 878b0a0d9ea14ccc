//! A production-shaped echo server on `muxloop::stream`.
//!
//! * every byte echoed, in order, to thousands of concurrent clients;
//! * backpressure: a client that sends but does not read stops being read
//!   once more than `--high-water` bytes wait for it, and is read again
//!   when at most `--low-water` do, so memory per connection stays bounded;
//! * resets, half-closes and vanishing clients end only that connection
//!   (after a half-close, what was received is still echoed, then closed);
//! * out of file descriptors, connections are shed, never spun on (the
//!   stream layer's accept);
//! * SIGINT/SIGTERM stop it gracefully: no new connections, open ones get
//!   up to `--grace` seconds to flush, then it prints counters and exits.
//!
//! * with `--tls-cert` and `--tls-key` (and `--features tls`), TLS: the
//!   same protocol, over rustls;
//! * with `--workers N`, N loops on N threads serving one port
//!   (`muxloop::workers`; `--balance` picks how connections are spread);
//!   after the graceful stop it prints `worker K: N connections` for each.
//!
//! ```text
//! cargo run --release --example echo_server -- --backend epoll --addr 127.0.0.1:1234
//! cargo run --release --example echo_server -- --workers 2
//! cargo run --example make_cert
//! cargo run --release --features tls --example echo_server -- \
//!     --tls-cert target/localhost-cert/cert.pem --tls-key target/localhost-cert/key.pem
//! ```

#[path = "common/cli.rs"]
mod cli;
#[path = "common/tls_flags.rs"]
mod tls_flags;
#[path = "common/workers_flags.rs"]
mod workers_flags;

use std::io;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use clap::Parser;
use muxloop::stream::{self, Protocol, ServeOptions, Server, Transport};
use muxloop::{BackendKind, EventLoop};

/// An echo server on muxloop's stream layer.
#[derive(Parser)]
struct Args {
    /// Backend (those this machine lacks are refused, naming the cause).
    #[arg(long, env = "MUXLOOP_BACKEND", default_value_t = BackendKind::platform_default(), value_parser = cli::backend_parser())]
    backend: BackendKind,
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:1234")]
    addr: String,
    /// Stop reading a client once more than this many echo bytes wait for
    /// it (0: whenever any wait).
    #[arg(long, default_value_t = 256 * 1024)]
    high_water: usize,
    /// Resume reading it once at most this many wait (at most --high-water).
    #[arg(long, default_value_t = 64 * 1024)]
    low_water: usize,
    /// Seconds open connections get to flush on SIGINT/SIGTERM.
    #[arg(long, default_value_t = 5)]
    grace: u64,
    /// Stop by itself after this many seconds (0 = run until a signal).
    #[arg(long, default_value_t = 0)]
    max_seconds: u64,
    #[command(flatten)]
    tls: tls_flags::TlsFlags,
    #[command(flatten)]
    workers: workers_flags::WorkerFlags,
}

/// What every callback shares.
struct Counters {
    high_water: usize,
    low_water: usize,
    bytes: u64,
}

/// One connection: echo, and stop reading while the client does not keep up.
struct Echo;

impl Protocol<Counters> for Echo {
    fn connection_made(&mut self, t: &mut Transport<'_, Counters>, c: &mut Counters) {
        t.set_write_buffer_limits(c.high_water, c.low_water)
            .expect("low <= high");
    }

    fn data_received(&mut self, t: &mut Transport<'_, Counters>, data: &[u8], c: &mut Counters) {
        c.bytes += data.len() as u64;
        t.write(data);
    }

    fn pause_writing(&mut self, t: &mut Transport<'_, Counters>, _: &mut Counters) {
        t.pause_reading();
    }

    fn resume_writing(&mut self, t: &mut Transport<'_, Counters>, _: &mut Counters) {
        t.resume_reading();
    }
}

/// Stops accepting, lets connections flush for `grace`, then stops the loop.
fn shut_down(server: &Server<Counters>, lp: &mut EventLoop<Counters>, grace: Duration) {
    server.close(lp, grace, |lp, _| lp.stop());
}

/// `--workers N`: the same server on N loops, one port.
fn on_workers(args: &Args) -> io::Result<()> {
    let mut options = ServeOptions::default();
    args.tls.configure(&mut options, &[])?;
    let (high_water, low_water) = (args.high_water, args.low_water.min(args.high_water));
    let started = Instant::now();
    let exits = workers_flags::run(
        &args.workers,
        args.backend,
        &args.addr,
        Duration::from_secs(args.grace),
        args.max_seconds,
        |addr| {
            args.tls
                .client_line(addr, false)
                .map(|l| format!("TLS; try: {l}"))
        },
        move |_| Counters {
            high_water,
            low_water,
            bytes: 0,
        },
        move |w, listener| {
            w.serve(listener, options.clone(), |_, _| Some(Box::new(Echo)))?;
            Ok(())
        },
    )?;
    cli::tell!(
        "stopped after {:.1?}: accepted={} bytes_echoed={}",
        started.elapsed(),
        exits.iter().map(|e| e.stats.connections).sum::<u64>(),
        exits.iter().map(|e| e.state.bytes).sum::<u64>(),
    );
    Ok(())
}

fn main() -> io::Result<()> {
    cli::guard_stdio();
    env_logger::init();
    let args = Args::parse();
    cli::raise_fd_limit();
    if args.workers.workers.is_some() {
        return on_workers(&args);
    }
    let mut lp = EventLoop::<Counters>::with_backend(args.backend)?;
    let listener = TcpListener::bind(&args.addr)?;
    let addr = listener.local_addr()?;
    let mut options = ServeOptions::default();
    args.tls.configure(&mut options, &[])?;
    let server = stream::serve(&mut lp, listener, options, |_, _| Some(Box::new(Echo)))?;
    let grace = Duration::from_secs(args.grace);
    for signum in [libc::SIGINT, libc::SIGTERM] {
        let server = server.clone();
        lp.add_signal(signum, move |lp, _| {
            log::info!("signal={signum}: stopping");
            shut_down(&server, lp, grace);
        })?;
    }
    if args.max_seconds > 0 {
        let server = server.clone();
        let limit = Duration::from_secs(args.max_seconds);
        lp.call_later(limit, move |lp, _| shut_down(&server, lp, grace));
    }
    cli::say!("listening on {addr} (backend {})", lp.backend_name());
    if let Some(line) = args.tls.client_line(addr, false) {
        cli::say!("TLS; try: {line}");
    }

    let mut counters = Counters {
        high_water: args.high_water,
        low_water: args.low_water.min(args.high_water),
        bytes: 0,
    };
    let started = Instant::now();
    lp.run(&mut counters)?;
    let stats = lp.stats();
    cli::tell!(
        "stopped after {:.1?}: accepted={} shed={} bytes_echoed={} iterations={} events={} \
         wait={:.1?} callbacks={:.1?}",
        started.elapsed(),
        server.connections_served(),
        server.connections_shed(),
        counters.bytes,
        stats.iterations,
        stats.events_dispatched,
        stats.wait_time,
        stats.callback_time,
    );
    Ok(())
}
