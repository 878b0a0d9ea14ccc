//! A UDP echo server on `muxloop::stream::datagram`: every datagram
//! (empty ones too) goes back to its sender, read in batches (recvmmsg on
//! Linux), queued when the kernel has no room, SIGINT/SIGTERM stop it and
//! it prints counters.
//!
//! ```text
//! cargo run --release --example udp_echo -- --addr 127.0.0.1:1236
//! socat - UDP:127.0.0.1:1236        # type a line, it comes back
//! ```

#[path = "common/cli.rs"]
mod cli;

use std::io;
use std::time::Instant;

use clap::Parser;
use muxloop::stream::Addr;
use muxloop::stream::datagram::{self, DatagramOptions, DatagramProtocol, DatagramTransport};
use muxloop::{BackendKind, EventLoop};

/// A UDP echo server.
#[derive(Parser)]
struct Args {
    /// Backend (those this machine lacks are refused, naming the cause).
    #[arg(long, env = "MUXLOOP_BACKEND", default_value_t = BackendKind::platform_default(), value_parser = cli::backend_parser())]
    backend: BackendKind,
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:1236")]
    addr: std::net::SocketAddr,
    /// Datagrams per read (one recvmmsg(2) on Linux).
    #[arg(long, default_value_t = 32)]
    batch: usize,
}

#[derive(Default)]
struct Counters {
    datagrams: u64,
    bytes: u64,
    dropped: u64,
    errors: u64,
}

struct Echo;

impl DatagramProtocol<Counters> for Echo {
    fn datagram_received(
        &mut self,
        t: &mut DatagramTransport<'_, Counters>,
        data: &[u8],
        from: Addr,
        c: &mut Counters,
    ) {
        c.datagrams += 1;
        c.bytes += data.len() as u64;
        let Some(to) = from.as_inet() else { return };
        if let Err(e) = t.send_to(data, to) {
            // The queue is full (a client that floods): UDP may drop.
            log::debug!("udp_echo=drop to={to} error={e}");
            c.dropped += 1;
        }
    }

    fn error_received(
        &mut self,
        _: &mut DatagramTransport<'_, Counters>,
        e: io::Error,
        c: &mut Counters,
    ) {
        log::debug!("udp_echo=error error={e}");
        c.errors += 1;
    }
}

fn main() -> io::Result<()> {
    cli::guard_stdio();
    env_logger::init();
    let args = Args::parse();
    let mut lp = EventLoop::<Counters>::with_backend(args.backend)?;
    let mut options = DatagramOptions::default();
    options.batch = args.batch.max(1);
    let id = datagram::open(&mut lp, args.addr, options, Echo)?;
    let addr = datagram::local_addr(&lp, id).expect("just bound");
    for signum in [libc::SIGINT, libc::SIGTERM] {
        lp.add_signal(signum, move |lp, _| {
            datagram::close(lp, id);
            lp.stop();
        })?;
    }
    cli::say!("listening on {addr} (backend {})", lp.backend_name());
    let started = Instant::now();
    let mut c = Counters::default();
    lp.run(&mut c)?;
    cli::tell!(
        "stopped after {:.1?}: datagrams={} bytes={} dropped={} errors={}",
        started.elapsed(),
        c.datagrams,
        c.bytes,
        c.dropped,
        c.errors
    );
    Ok(())
}
