//! A line-relay chat server on `muxloop::stream`: every complete line a
//! client sends goes, verbatim, to every *other* connected client (never
//! back to its sender).
//!
//! * the room goes at its readers' pace: while a member has more than
//!   256 KiB waiting for it, nobody's lines are read (each sender waits in
//!   TCP's own flow control), and reading resumes once it is back under
//!   64 KiB; a member that makes no progress for `--stall-timeout`
//!   seconds, or whose backlog passes 4 MiB, is cut off — a client that
//!   reads, however slowly, is never dropped, and memory stays bounded;
//! * a line longer than 1 MiB cuts its sender off;
//! * a client that sends nothing for `--idle-timeout` seconds is closed
//!   (0: never), and a close that cannot deliver what is left within 5 s
//!   is an abort;
//! * SIGINT/SIGTERM close every connection gracefully and stop;
//! * `--workers N`: N loops on N threads serving one port; a line goes to
//!   the members on the other workers through `muxloop::workers::Peers`
//!   (each worker's room keeps its own pace).
//!
//! ```text
//! cargo run --example chat -- --addr 127.0.0.1:1235
//! cargo run --example chat_client -- --addr 127.0.0.1:1235   # in two terminals
//! ```

#[path = "common/chat_room.rs"]
mod chat_room;
#[path = "common/cli.rs"]
mod cli;
#[path = "common/workers_flags.rs"]
mod workers_flags;

use std::io;
use std::net::TcpListener;
use std::time::Duration;

use chat_room::{Member, Room};
use clap::Parser;
use muxloop::stream::{self, ServeOptions};
use muxloop::{BackendKind, EventLoop};

/// A line-relay chat server.
#[derive(Parser)]
struct Args {
    /// Backend (those this machine lacks are refused, naming the cause).
    #[arg(long, env = "MUXLOOP_BACKEND", default_value_t = BackendKind::platform_default(), value_parser = cli::backend_parser())]
    backend: BackendKind,
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:1235")]
    addr: String,
    /// Close a client that has sent nothing for this many seconds (0: no
    /// idle timeout).
    #[arg(long, default_value_t = 300)]
    idle_timeout: u64,
    /// Cut off a client that has read nothing of its backlog for this many
    /// seconds while the room waits for it.
    #[arg(long, default_value_t = 5.0)]
    stall_timeout: f64,
    #[command(flatten)]
    workers: workers_flags::WorkerFlags,
}

fn main() -> io::Result<()> {
    cli::guard_stdio();
    env_logger::init();
    let args = Args::parse();
    let stall_timeout = Duration::try_from_secs_f64(args.stall_timeout)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "--stall-timeout {}: must be a positive number of seconds",
                    args.stall_timeout
                ),
            )
        })?;
    let mut options = ServeOptions::default();
    // A member closed for idleness that does not read its backlog cannot
    // hold its fd for ever.
    options.close_timeout = Some(Duration::from_secs(5));
    let idle_timeout = (args.idle_timeout > 0).then(|| Duration::from_secs(args.idle_timeout));
    if args.workers.workers.is_some() {
        let exits = workers_flags::run(
            &args.workers,
            args.backend,
            &args.addr,
            Duration::from_secs(2),
            0,
            |_| None,
            move |_| Room::new(idle_timeout, stall_timeout),
            move |w, listener| {
                let (index, peers) = (w.index(), w.peers());
                w.state().peers = Some((index, peers));
                w.serve(listener, options.clone(), |_, _| {
                    Some(Box::new(Member::default()))
                })?;
                Ok(())
            },
        )?;
        let served: u64 = exits.iter().map(|e| e.stats.connections).sum();
        cli::tell!("stopped: {served} clients served");
        return Ok(());
    }
    let mut lp = EventLoop::<Room>::with_backend(args.backend)?;
    let listener = TcpListener::bind(&args.addr)?;
    let addr = listener.local_addr()?;
    let server = stream::serve(&mut lp, listener, options, |_, _| {
        Some(Box::new(Member::default()))
    })?;
    for signum in [libc::SIGINT, libc::SIGTERM] {
        let server = server.clone();
        lp.add_signal(signum, move |lp, _| {
            server.close(lp, Duration::from_secs(2), |lp, _| lp.stop());
        })?;
    }
    cli::say!("listening on {addr} (backend {})", lp.backend_name());
    let mut room = Room::new(idle_timeout, stall_timeout);
    lp.run(&mut room)?;
    cli::tell!("stopped: {} clients served", server.connections_served());
    Ok(())
}
