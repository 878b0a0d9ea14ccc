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

#[path = "common/cli.rs"]
mod cli;
#[path = "common/workers_flags.rs"]
mod workers_flags;

use std::collections::HashSet;
use std::io;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use muxloop::stream::{self, ConnId, Protocol, ServeOptions, Transport};
use muxloop::workers::Peers;
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

/// The longest line a client may send.
const MAX_LINE: usize = 1024 * 1024;
/// A member's backlog above this pauses the room; back at `LOW`, it goes on.
const HIGH: usize = 256 * 1024;
const LOW: usize = 64 * 1024;
/// A member's backlog above this cuts it off at once.
const HARD: usize = 4 * 1024 * 1024;
/// The key of a member's stall check timer.
const STALL_CHECK: u64 = 1;

/// The room: who is connected (the loop's state, shared by every client).
struct Room {
    members: HashSet<ConnId<Room>>,
    /// Members over their high mark: while there is one, no member is read.
    slow: HashSet<ConnId<Room>>,
    idle_timeout: Option<Duration>,
    stall_timeout: Duration,
    /// With `--workers`: this worker's index and the other workers, whose
    /// members get every line too.
    peers: Option<(usize, Peers<Room>)>,
}

impl Room {
    /// Lines from a member of another worker: to every member here.
    fn relay(&self, lp: &mut EventLoop<Room>, lines: &[u8]) {
        for &m in &self.members {
            if stream::send(lp, m, lines).is_ok_and(|backlog| backlog > HARD) {
                log::warn!("chat=drop reason=backlog-over-hard-limit");
                stream::abort(lp, m);
            }
        }
    }

    /// Pauses or resumes reading every member but `me` (whose own
    /// transport the caller holds), as the room's readers allow.
    fn set_reading(&self, t: &mut Transport<'_, Room>, reading: bool) {
        let me = t.id();
        for &m in self.members.iter().filter(|&&m| m != me) {
            stream::with_transport(t.event_loop(), m, |other| {
                if reading {
                    other.resume_reading()
                } else {
                    other.pause_reading()
                }
            });
        }
        if reading {
            t.resume_reading();
        } else {
            t.pause_reading();
        }
    }
}

/// One client.
#[derive(Default)]
struct Member {
    /// What it sent after its last complete line.
    partial: Vec<u8>,
    /// Its backlog at the last stall check, while it is slow.
    backlog_at_check: Option<usize>,
}

impl Member {
    fn cut_off(t: &mut Transport<'_, Room>, why: &str) {
        log::warn!("chat=drop reason={why} peer={:?}", t.peer_addr().ok());
        t.abort();
    }
}

impl Protocol<Room> for Member {
    fn connection_made(&mut self, t: &mut Transport<'_, Room>, room: &mut Room) {
        t.set_write_buffer_limits(HIGH, LOW).expect("low <= high");
        t.set_idle_timeout(room.idle_timeout);
        if !room.slow.is_empty() {
            t.pause_reading(); // the room is waiting for a slow reader
        }
        room.members.insert(t.id());
        log::info!(
            "chat=join peer={:?} members={}",
            t.peer_addr().ok(),
            room.members.len()
        );
    }

    fn data_received(&mut self, t: &mut Transport<'_, Room>, data: &[u8], room: &mut Room) {
        let old = self.partial.len();
        self.partial.extend_from_slice(data);
        // Only the new bytes are searched; a line's length counts from the
        // last newline before them.
        let mut line_start = 0;
        let mut complete = 0;
        for (i, &b) in data.iter().enumerate() {
            if b == b'\n' {
                let end = old + i + 1;
                if end - line_start > MAX_LINE {
                    return Member::cut_off(t, "line-too-long");
                }
                line_start = end;
                complete = end;
            }
        }
        if self.partial.len() - line_start > MAX_LINE {
            return Member::cut_off(t, "line-too-long");
        }
        if complete > 0 {
            // Every complete line of this read, in one write per member.
            let me = t.id();
            let lines = &self.partial[..complete];
            for &other in room.members.iter().filter(|&&m| m != me) {
                if t.write_to(other, lines).is_ok_and(|backlog| backlog > HARD) {
                    log::warn!("chat=drop reason=backlog-over-hard-limit");
                    stream::abort(t.event_loop(), other);
                }
            }
            if let Some((me, peers)) = &room.peers {
                // The members on the other workers (a copy each way; the
                // room's pace is each worker's own).
                let lines: Arc<[u8]> = lines.into();
                peers.broadcast(Some(*me), move |lp, room: &mut Room| room.relay(lp, &lines));
            }
            self.partial.drain(..complete);
        }
    }

    fn pause_writing(&mut self, t: &mut Transport<'_, Room>, room: &mut Room) {
        // Over its high mark: the room waits for this reader.
        if room.slow.insert(t.id()) && room.slow.len() == 1 {
            room.set_reading(t, false);
        }
        self.backlog_at_check = Some(t.write_buffer_size());
        t.call_later(room.stall_timeout, STALL_CHECK);
    }

    fn resume_writing(&mut self, t: &mut Transport<'_, Room>, room: &mut Room) {
        self.backlog_at_check = None;
        if room.slow.remove(&t.id()) && room.slow.is_empty() {
            room.set_reading(t, true);
        }
    }

    fn timer_fired(&mut self, t: &mut Transport<'_, Room>, key: u64, room: &mut Room) {
        let Some(before) = self.backlog_at_check else {
            return; // caught up since
        };
        if key != STALL_CHECK {
            return;
        }
        let now = t.write_buffer_size();
        if now >= before {
            return Member::cut_off(t, "no-progress");
        }
        // Slow, but reading: check again later.
        self.backlog_at_check = Some(now);
        t.call_later(room.stall_timeout, STALL_CHECK);
    }

    fn connection_lost(
        &mut self,
        t: &mut Transport<'_, Room>,
        e: Option<io::Error>,
        room: &mut Room,
    ) {
        room.members.remove(&t.id());
        if room.slow.remove(&t.id()) && room.slow.is_empty() {
            room.set_reading(t, true);
        }
        log::info!("chat=leave error={e:?} members={}", room.members.len());
    }
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
            move |_| Room {
                members: HashSet::new(),
                slow: HashSet::new(),
                idle_timeout,
                stall_timeout,
                peers: None,
            },
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
    let mut room = Room {
        members: HashSet::new(),
        slow: HashSet::new(),
        idle_timeout,
        stall_timeout,
        peers: None,
    };
    lp.run(&mut room)?;
    cli::tell!("stopped: {} clients served", server.connections_served());
    Ok(())
}
