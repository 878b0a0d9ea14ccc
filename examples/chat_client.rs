//! A line client for `examples/chat.rs`, on `muxloop::stream::connect`:
//! lines typed on stdin are sent, lines from the room are printed. Stdin is
//! read by a thread that hands each line to the loop through its
//! `LoopHandle`; at the end of input the client sends what is pending,
//! closes and exits.
//!
//! ```text
//! cargo run --example chat_client -- --addr 127.0.0.1:1235
//! ```

#[path = "common/cli.rs"]
mod cli;

use std::io::{self, BufRead, Write};
use std::net::ToSocketAddrs;
use std::time::Duration;

use clap::Parser;
use muxloop::stream::{self, Protocol, Transport};
use muxloop::{BackendKind, EventLoop};

/// A line client for the chat server.
#[derive(Parser)]
struct Args {
    /// Backend (those this machine lacks are refused, naming the cause).
    #[arg(long, env = "MUXLOOP_BACKEND", default_value_t = BackendKind::platform_default(), value_parser = cli::backend_parser())]
    backend: BackendKind,
    /// The chat server.
    #[arg(long, default_value = "127.0.0.1:1235")]
    addr: String,
}

/// Prints what the room says; stops the loop when the connection ends.
struct Client;

impl Protocol<()> for Client {
    fn data_received(&mut self, _: &mut Transport<'_, ()>, data: &[u8], _: &mut ()) {
        let mut out = io::stdout().lock();
        let _ = out.write_all(data).and_then(|()| out.flush());
    }

    fn connection_lost(&mut self, t: &mut Transport<'_, ()>, e: Option<io::Error>, _: &mut ()) {
        if let Some(e) = e {
            cli::tell!("connection lost: {e}");
        }
        t.event_loop().stop();
    }

    fn connection_failed(&mut self, e: io::Error, _: &mut ()) {
        cli::tell!("cannot connect: {e}");
        std::process::exit(1);
    }
}

fn main() -> io::Result<()> {
    cli::guard_stdio();
    env_logger::init();
    let args = Args::parse();
    let addr = args
        .addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address"))?;
    let mut lp = EventLoop::<()>::with_backend(args.backend)?;
    let id = stream::connect(&mut lp, addr, Some(Duration::from_secs(10)), Client)?;
    let handle = lp.handle();
    std::thread::spawn(move || {
        for line in io::stdin().lock().lines() {
            let Ok(mut line) = line else { break };
            line.push('\n');
            let sent = handle.call_soon(move |lp, _| {
                let _ = stream::send(lp, id, line.as_bytes());
            });
            if sent.is_err() {
                return; // the loop is gone
            }
        }
        // End of input: send what is pending, close, and so stop.
        let _ = handle.call_soon(move |lp, _| stream::close(lp, id));
    });
    lp.run(&mut ())
}
