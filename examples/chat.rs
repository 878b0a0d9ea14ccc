//! A line-relay chat server on `muxloop::stream`: every complete line a
//! client sends goes, verbatim, to every *other* connected client (never
//! back to its sender).
//!
//! * a client whose unsent backlog passes 1 MiB (it does not read) is
//!   disconnected, and everyone else keeps chatting; a line longer than
//!   1 MiB disconnects its sender too, so memory stays bounded;
//! * a client that sends nothing for `--idle-timeout` seconds is closed;
//! * SIGINT/SIGTERM close every connection gracefully and stop.
//!
//! ```text
//! cargo run --example chat -- --addr 127.0.0.1:1235
//! cargo run --example chat_client -- --addr 127.0.0.1:1235   # in two terminals
//! ```

#[path = "common/cli.rs"]
mod cli;

use std::collections::HashSet;
use std::io;
use std::net::TcpListener;
use std::time::Duration;

use clap::Parser;
use muxloop::stream::{self, ConnId, Protocol, ServeOptions, Transport};
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
    /// Close a client that has sent nothing for this many seconds.
    #[arg(long, default_value_t = 300)]
    idle_timeout: u64,
}

/// The most a client may have waiting for it, or send without a newline.
const LIMIT: usize = 1024 * 1024;

/// The room: who is connected (the loop's state, shared by every client).
struct Room {
    members: HashSet<ConnId<Room>>,
    idle_timeout: Duration,
}

/// One client: the part of a line received so far.
#[derive(Default)]
struct Member {
    partial: Vec<u8>,
}

impl Protocol<Room> for Member {
    fn connection_made(&mut self, t: &mut Transport<'_, Room>, room: &mut Room) {
        // Past the high mark pause_writing fires: the client is too slow.
        t.set_write_buffer_limits(LIMIT, LIMIT)
            .expect("low <= high");
        t.set_idle_timeout(Some(room.idle_timeout));
        room.members.insert(t.id());
        log::info!(
            "chat=join peer={:?} members={}",
            t.peer_addr().ok(),
            room.members.len()
        );
    }

    fn data_received(&mut self, t: &mut Transport<'_, Room>, data: &[u8], room: &mut Room) {
        self.partial.extend_from_slice(data);
        let me = t.id();
        let mut start = 0;
        while let Some(n) = self.partial[start..].iter().position(|&b| b == b'\n') {
            let line = &self.partial[start..start + n + 1];
            for &other in room.members.iter().filter(|&&m| m != me) {
                let _ = t.write_to(other, line);
            }
            start += n + 1;
        }
        self.partial.drain(..start);
        if self.partial.len() > LIMIT {
            log::warn!(
                "chat=drop reason=line-too-long peer={:?}",
                t.peer_addr().ok()
            );
            t.abort();
        }
    }

    fn pause_writing(&mut self, t: &mut Transport<'_, Room>, _: &mut Room) {
        log::warn!("chat=drop reason=backlog peer={:?}", t.peer_addr().ok());
        t.abort();
    }

    fn connection_lost(
        &mut self,
        t: &mut Transport<'_, Room>,
        e: Option<io::Error>,
        room: &mut Room,
    ) {
        room.members.remove(&t.id());
        log::info!("chat=leave error={e:?} members={}", room.members.len());
    }
}

fn main() -> io::Result<()> {
    cli::guard_stdio();
    env_logger::init();
    let args = Args::parse();
    let mut lp = EventLoop::<Room>::with_backend(args.backend)?;
    let listener = TcpListener::bind(&args.addr)?;
    let addr = listener.local_addr()?;
    let server = stream::serve(&mut lp, listener, ServeOptions::default(), |_, _| {
        Some(Box::new(Member::default()))
    })?;
    for signum in [libc::SIGINT, libc::SIGTERM] {
        let server = server.clone();
        lp.add_signal(signum, move |lp, _| {
            server.close(lp, Duration::from_secs(2), |lp, _| lp.stop());
        })?;
    }
    cli::say!("listening on {addr} (backend {})", lp.backend_name());
    let mut room = Room {
        members: HashSet::new(),
        idle_timeout: Duration::from_secs(args.idle_timeout),
    };
    lp.run(&mut room)?;
    cli::tell!("stopped: {} clients served", server.connections_served());
    Ok(())
}
