//! A production-shaped echo server on muxloop's `EventLoop`.
//!
//! * every byte echoed, in order, to thousands of concurrent clients;
//! * partial writes kept in a per-connection buffer, WRITE interest on only
//!   while something is pending;
//! * backpressure: a client that sends but does not read stops being read
//!   once its pending output passes the high-water mark, and is read again
//!   below the low-water mark, so memory per connection stays bounded;
//! * resets, half-closes and vanishing clients drop only that connection
//!   (after a half-close, what was received is still echoed, then closed);
//! * out of file descriptors (`EMFILE`/`ENFILE` on accept): the reserve-fd
//!   trick sheds the pending connection instead of spinning; if even that
//!   fails, accepting pauses for 100 ms;
//! * SIGINT/SIGTERM stop it gracefully, printing counters.
//!
//! ```text
//! cargo run --release --example echo_server -- --backend epoll --addr 127.0.0.1:1234
//! ```

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use clap::Parser;
use muxloop::{BackendKind, EventLoop, Interest, PostAction, SourceEvent};

/// An echo server on muxloop's EventLoop.
#[derive(Parser)]
struct Args {
    /// Backend: select, poll, epoll, kqueue or mio.
    #[arg(long, env = "MUXLOOP_BACKEND", default_value_t = BackendKind::platform_default())]
    backend: BackendKind,
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:1234")]
    addr: String,
    /// Stop reading a client once more than this many echo bytes wait for
    /// it (0: whenever any wait).
    #[arg(long, default_value_t = 256 * 1024)]
    high_water: usize,
    /// Resume reading it once at most this many wait (at most --high-water;
    /// 0: once all are sent).
    #[arg(long, default_value_t = 64 * 1024)]
    low_water: usize,
    /// Stop by itself after this many seconds (0 = run until a signal).
    #[arg(long, default_value_t = 0)]
    max_seconds: u64,
}

/// Shared state every callback gets.
struct Server {
    high_water: usize,
    low_water: usize,
    /// Where reads land before they are echoed (or queued when the client
    /// does not keep up).
    scratch: Vec<u8>,
    /// An fd held in reserve, given up to shed a connection when out of fds.
    spare: Option<File>,
    open: usize,
    accepted: u64,
    shed: u64,
    refused: u64,
    bytes: u64,
}

const READ_CHUNK: usize = 64 * 1024;

/// One connection's state, owned by its callback.
struct Conn {
    out: Vec<u8>,
    /// Bytes of `out` already written.
    sent: usize,
    /// The client half-closed (or closed): echo what is left, then close.
    read_closed: bool,
    /// Not reading until the backlog drains below the low-water mark.
    paused: bool,
    interest: Interest,
}

impl Conn {
    fn pending(&self) -> usize {
        self.out.len() - self.sent
    }

    /// Reads one chunk through the shared scratch buffer and echoes it.
    /// With nothing pending, the chunk is written straight from the scratch
    /// buffer and only what the socket does not take is kept (the common
    /// case copies nothing); otherwise it queues behind the pending bytes.
    /// Returns false if the connection failed.
    fn read_from(&mut self, sock: &mut TcpStream, srv: &mut Server) -> bool {
        let n = match sock.read(&mut srv.scratch) {
            Ok(0) => {
                self.read_closed = true;
                return true;
            }
            Ok(n) => n,
            Err(e) if is_retry(&e) => return true,
            Err(e) => {
                log::debug!("read error={e}; dropping connection");
                return false;
            }
        };
        srv.bytes += n as u64;
        let mut chunk = &srv.scratch[..n];
        if self.pending() == 0 {
            match sock.write(chunk) {
                Ok(written) => chunk = &chunk[written..],
                Err(e) if is_retry(&e) => {}
                Err(e) => {
                    log::debug!("write error={e}; dropping connection");
                    return false;
                }
            }
        }
        if !chunk.is_empty() {
            self.out.extend_from_slice(chunk);
        }
        true
    }

    /// Writes what is pending. Returns false if the connection failed.
    fn flush_to(&mut self, sock: &mut TcpStream) -> bool {
        if self.out.is_empty() {
            return true;
        }
        while self.pending() > 0 {
            match sock.write(&self.out[self.sent..]) {
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    log::debug!("write error={e}; dropping connection");
                    return false;
                }
            }
        }
        if self.pending() == 0 {
            // Idle connections hold no buffer: thousands of them stay cheap.
            if self.out.capacity() > 16 * 1024 {
                self.out = Vec::new();
            }
            self.out.clear();
            self.sent = 0;
        } else if self.sent > self.out.len() / 2 {
            self.out.drain(..self.sent);
            self.sent = 0;
        }
        true
    }

    /// What to wait for next, or `None` when the connection is done.
    fn wanted(&mut self, srv: &Server) -> Option<Interest> {
        let pending = self.pending();
        if self.paused && pending <= srv.low_water {
            self.paused = false;
        } else if !self.paused && pending > srv.high_water {
            self.paused = true;
        }
        let read = !self.read_closed && !self.paused;
        match (read, pending > 0) {
            (true, true) => Some(Interest::BOTH),
            (true, false) => Some(Interest::READABLE),
            (false, true) => Some(Interest::WRITABLE),
            (false, false) => None,
        }
    }
}

fn is_retry(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

fn on_connection(
    conn: &mut Conn,
    lp: &mut EventLoop<Server>,
    sock: &mut TcpStream,
    ev: SourceEvent<TcpStream>,
    srv: &mut Server,
) -> PostAction {
    if ev.is_readable() && !conn.read_from(sock, srv) {
        return close(srv);
    }
    if conn.out.is_empty() && conn.interest == Interest::READABLE && !conn.read_closed {
        // Everything echoed and still reading: nothing to change (the
        // common case, and what `wanted` would conclude).
        return PostAction::Continue;
    }
    if !conn.flush_to(sock) {
        return close(srv);
    }
    let Some(want) = conn.wanted(srv) else {
        return close(srv); // half-closed and fully echoed
    };
    if want != conn.interest {
        if let Err(e) = lp.modify(ev.id(), want) {
            log::warn!("modify error={e}; dropping connection");
            return close(srv);
        }
        conn.interest = want;
    }
    PostAction::Continue
}

fn close(srv: &mut Server) -> PostAction {
    srv.open -= 1;
    PostAction::Remove
}

fn add_connection(lp: &mut EventLoop<Server>, sock: TcpStream, srv: &mut Server) {
    let peer = sock.peer_addr().ok();
    if let Err(e) = sock.set_nonblocking(true) {
        log::warn!("peer={peer:?} set_nonblocking error={e}");
        return;
    }
    let _ = sock.set_nodelay(true);
    let mut conn = Conn {
        out: Vec::new(),
        sent: 0,
        read_closed: false,
        paused: false,
        interest: Interest::READABLE,
    };
    let res = lp.add(sock, Interest::READABLE, move |lp, sock, ev, srv| {
        on_connection(&mut conn, lp, sock, ev, srv)
    });
    match res {
        Ok(_) => {
            srv.open += 1;
            srv.accepted += 1;
        }
        // e.g. the select backend and an fd >= FD_SETSIZE: the socket was
        // dropped (closed); everyone else is still served.
        Err(e) => {
            srv.refused += 1;
            log::warn!("peer={peer:?} refused: {e}");
        }
    }
}

fn out_of_fds(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

fn on_accept(
    lp: &mut EventLoop<Server>,
    listener: &mut TcpListener,
    ev: SourceEvent<TcpListener>,
    srv: &mut Server,
) -> PostAction {
    // A bounded batch per wake-up, so a connect storm cannot starve the
    // clients already connected.
    for _ in 0..128 {
        match listener.accept() {
            Ok((sock, _)) => add_connection(lp, sock, srv),
            Err(e) if is_retry(&e) => break,
            Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
            Err(e) if out_of_fds(&e) => {
                shed(lp, listener, ev, srv, &e);
                break;
            }
            Err(e) => {
                log::warn!("accept error={e}");
                break;
            }
        }
    }
    PostAction::Continue
}

/// Out of fds: the pending connection would make the listener readable
/// forever. Give up the reserve fd, accept the connection and close it at
/// once, then take the reserve back. If that is impossible, stop accepting
/// for a moment instead of spinning.
fn shed(
    lp: &mut EventLoop<Server>,
    listener: &mut TcpListener,
    ev: SourceEvent<TcpListener>,
    srv: &mut Server,
    e: &io::Error,
) {
    if srv.spare.take().is_some() {
        if let Ok((sock, peer)) = listener.accept() {
            srv.shed += 1;
            log::warn!("out of fds ({e}): shedding connection from {peer}");
            drop(sock);
        }
        srv.spare = File::open("/dev/null").ok();
    }
    if srv.spare.is_none() {
        log::warn!("out of fds ({e}) and no reserve: pausing accept for 100 ms");
        let id = ev.id();
        // Outside this callback (a running source cannot be paused).
        lp.call_soon(move |lp, _| {
            let Ok(paused) = lp.pause(id) else { return };
            lp.call_later(Duration::from_millis(100), move |lp, srv: &mut Server| {
                srv.spare = srv.spare.take().or_else(|| File::open("/dev/null").ok());
                if let Err(e) = lp.resume(paused, Interest::READABLE) {
                    log::warn!("listener resume error={e}; stopping");
                    lp.stop();
                }
            });
        });
    }
}

/// Raises the soft fd limit to the hard one: a server wants every fd it
/// may have (the reserve-fd trick handles running out).
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid rlimit out-pointer; raising soft to hard is allowed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn main() -> io::Result<()> {
    env_logger::init();
    let args = Args::parse();
    raise_fd_limit();
    let kind = args.backend;
    let mut lp = EventLoop::<Server>::with_backend(kind)?;
    let listener = TcpListener::bind(&args.addr)?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    lp.add(listener, Interest::READABLE, on_accept)?;
    for signum in [libc::SIGINT, libc::SIGTERM] {
        lp.add_signal(signum, move |lp, _| {
            log::info!("signal={signum}: stopping");
            lp.stop();
        })?;
    }
    if args.max_seconds > 0 {
        lp.call_later(Duration::from_secs(args.max_seconds), |lp, _| lp.stop());
    }
    println!("listening on {addr} (backend {})", lp.backend_name());

    let mut srv = Server {
        high_water: args.high_water,
        low_water: args.low_water.min(args.high_water),
        scratch: vec![0; READ_CHUNK],
        spare: File::open("/dev/null").ok(),
        open: 0,
        accepted: 0,
        shed: 0,
        refused: 0,
        bytes: 0,
    };
    let started = Instant::now();
    lp.run(&mut srv)?;
    let stats = lp.stats();
    eprintln!(
        "stopped after {:.1?}: accepted={} open={} shed={} refused={} bytes_echoed={} \
         iterations={} events={} wait={:.1?} callbacks={:.1?}",
        started.elapsed(),
        srv.accepted,
        srv.open,
        srv.shed,
        srv.refused,
        srv.bytes,
        stats.iterations,
        stats.events_dispatched,
        stats.wait_time,
        stats.callback_time,
    );
    Ok(())
}
