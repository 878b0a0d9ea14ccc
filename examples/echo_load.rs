//! An echo load generator: N connections doing request/response ping-pong
//! with fixed-size messages, optional idle connections held open, every
//! echoed byte verified. Reports round trips per second and latency
//! percentiles (from an HDR histogram); exits non-zero on any mismatch.
//!
//! ```text
//! cargo run --release --example echo_load -- --addr 127.0.0.1:1234 --conns 100 --duration 5
//! cargo run --release --example echo_load -- --conns 10 --idle 5000 --count 2000
//! ```
//!
//! The last line is machine-readable:
//! `RESULT load conns=… idle=… size=… round_trips=… secs=… rt_per_s=… p50_us=… p99_us=… p999_us=… max_us=… errors=… cpu_s=…`

#[path = "common/cli.rs"]
mod cli;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use muxloop::{BackendKind, EventLoop, Interest, PostAction, SourceEvent};

/// Echo ping-pong load with verification and latency percentiles.
#[derive(Parser)]
struct Args {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:1234")]
    addr: SocketAddr,
    /// Active connections.
    #[arg(long, default_value_t = 50)]
    conns: usize,
    /// Idle connections held open (connected, never used).
    #[arg(long, default_value_t = 0)]
    idle: usize,
    /// Message size in bytes.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Round trips per connection (ignored with --duration).
    #[arg(long, default_value_t = 1000)]
    count: u64,
    /// Run for this many seconds instead of a fixed count.
    #[arg(long)]
    duration: Option<f64>,
    /// Short connections: each round trip on a connection of its own
    /// (connect, send, read the echo, close), as HTTP with
    /// `Connection: close` does.
    #[arg(long)]
    short: bool,
    /// The load generator's own backend.
    #[arg(long, default_value_t = BackendKind::platform_default(), value_parser = cli::backend_parser())]
    backend: BackendKind,
}

struct Load {
    addr: SocketAddr,
    short: bool,
    size: usize,
    count: u64,
    deadline: Option<Instant>,
    hist: Histogram<u64>,
    round_trips: u64,
    errors: u64,
    finished: usize,
}

/// The byte at `i` of message `k` on connection `c`: changes with all three,
/// so a byte from the wrong message, position or connection is caught.
fn byte(c: usize, k: u64, i: usize) -> u8 {
    (c as u64)
        .wrapping_mul(31)
        .wrapping_add(k.wrapping_mul(17))
        .wrapping_add(i as u64 * 7) as u8
}

struct Conn {
    id: usize,
    k: u64,
    out: Vec<u8>,
    sent: usize,
    received: usize,
    sent_at: Instant,
}

impl Conn {
    fn next_message(&mut self, size: usize) {
        self.out.clear();
        self.out.extend((0..size).map(|i| byte(self.id, self.k, i)));
        self.sent = 0;
        self.received = 0;
        self.sent_at = Instant::now();
    }

    /// Writes what is left of the message; returns whether all of it went.
    fn flush(&mut self, sock: &mut TcpStream) -> io::Result<bool> {
        while self.sent < self.out.len() {
            match sock.write(&self.out[self.sent..]) {
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}

fn fail(lp: &mut EventLoop<Load>, st: &mut Load, what: String) -> PostAction {
    cli::tell!("echo_load: {what}");
    st.errors += 1;
    st.finished += 1;
    lp.stop();
    PostAction::Remove
}

fn on_event(
    c: &mut Conn,
    lp: &mut EventLoop<Load>,
    sock: &mut TcpStream,
    ev: SourceEvent<TcpStream>,
    st: &mut Load,
) -> PostAction {
    if ev.is_writable() {
        match c.flush(sock) {
            Ok(true) => {
                if lp.modify(ev.id(), Interest::READABLE).is_err() {
                    return fail(lp, st, format!("conn {}: modify failed", c.id));
                }
            }
            Ok(false) => return PostAction::Continue,
            Err(e) => return fail(lp, st, format!("conn {}: write: {e}", c.id)),
        }
    }
    if !ev.is_readable() {
        return PostAction::Continue;
    }
    let mut buf = [0u8; 16 * 1024];
    loop {
        match sock.read(&mut buf) {
            Ok(0) => {
                return fail(
                    lp,
                    st,
                    format!("conn {}: server closed the connection", c.id),
                );
            }
            Ok(n) => {
                for (j, b) in buf[..n].iter().enumerate() {
                    let i = c.received + j;
                    if i >= st.size || *b != byte(c.id, c.k, i) {
                        return fail(
                            lp,
                            st,
                            format!("conn {}: byte {i} of message {} differs", c.id, c.k),
                        );
                    }
                }
                c.received += n;
                if c.received == st.size {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return PostAction::Continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return fail(lp, st, format!("conn {}: read: {e}", c.id)),
        }
    }
    // A full echo.
    let us = c.sent_at.elapsed().as_micros().max(1) as u64;
    let _ = st.hist.record(us.min(st.hist.high()));
    st.round_trips += 1;
    c.k += 1;
    let done = match st.deadline {
        Some(deadline) => Instant::now() >= deadline,
        None => c.k >= st.count,
    };
    if done {
        st.finished += 1;
        return PostAction::Remove;
    }
    if st.short {
        // This connection is done; the next round trip gets a new one.
        if let Err(e) = start_conn(lp, st, c.id, c.k) {
            return fail(lp, st, format!("conn {}: reconnect: {e}", c.id));
        }
        return PostAction::Remove;
    }
    c.next_message(st.size);
    match c.flush(sock) {
        Ok(true) => PostAction::Continue,
        Ok(false) => match lp.modify(ev.id(), Interest::WRITABLE) {
            Ok(()) => PostAction::Continue,
            Err(e) => fail(lp, st, format!("conn {}: modify: {e}", c.id)),
        },
        Err(e) => fail(lp, st, format!("conn {}: write: {e}", c.id)),
    }
}

/// Connects connection `id` for its message `k` and sends it.
fn start_conn(lp: &mut EventLoop<Load>, st: &Load, id: usize, k: u64) -> io::Result<()> {
    let sock = TcpStream::connect(st.addr)?;
    sock.set_nodelay(true)?;
    sock.set_nonblocking(true)?;
    watch(lp, sock, id, k, st.size, Instant::now())
}

/// Sends message `k` of connection `id` and watches for the echo.
fn watch(
    lp: &mut EventLoop<Load>,
    mut sock: TcpStream,
    id: usize,
    k: u64,
    size: usize,
    now: Instant,
) -> io::Result<()> {
    let mut c = Conn {
        id,
        k,
        out: Vec::with_capacity(size),
        sent: 0,
        received: 0,
        sent_at: now,
    };
    c.next_message(size);
    let interest = if c.flush(&mut sock)? {
        Interest::READABLE
    } else {
        Interest::WRITABLE
    };
    lp.add(sock, interest, move |lp, sock, ev, st| {
        on_event(&mut c, lp, sock, ev, st)
    })?;
    Ok(())
}

fn main() -> io::Result<()> {
    cli::guard_stdio();
    env_logger::init();
    let args = Args::parse();
    if args.size == 0 || args.conns == 0 {
        cli::tell!("echo_load: --size and --conns must be at least 1");
        std::process::exit(2);
    }
    cli::raise_fd_limit();
    let mut idle = Vec::with_capacity(args.idle);
    for _ in 0..args.idle {
        idle.push(TcpStream::connect(args.addr)?);
    }
    let mut lp = EventLoop::<Load>::with_backend(args.backend)?;
    let mut st = Load {
        addr: args.addr,
        short: args.short,
        size: args.size,
        count: args.count,
        deadline: None,
        hist: Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds"),
        round_trips: 0,
        errors: 0,
        finished: 0,
    };
    let mut socks = Vec::with_capacity(args.conns);
    for _ in 0..args.conns {
        let s = TcpStream::connect(args.addr)?;
        s.set_nodelay(true)?;
        s.set_nonblocking(true)?;
        socks.push(s);
    }
    let start = Instant::now();
    st.deadline = args.duration.map(|d| start + Duration::from_secs_f64(d));
    for (id, sock) in socks.into_iter().enumerate() {
        watch(&mut lp, sock, id, 0, args.size, start)?;
    }
    // A hard stop, whatever the server does.
    let limit = args.duration.map_or(Duration::from_secs(600), |d| {
        Duration::from_secs_f64(d + 30.0)
    });
    lp.call_later(limit, |lp, st: &mut Load| {
        cli::tell!(
            "echo_load: time limit reached with {} connections unfinished",
            lp.source_count()
        );
        st.errors += 1;
        lp.stop();
    });
    while st.finished < args.conns && !lp.is_stopped() {
        lp.run_once(None, &mut st)?;
    }
    let secs = start.elapsed().as_secs_f64();
    drop(idle);
    let h = &st.hist;
    cli::say!(
        "RESULT load conns={} idle={} size={} short={} round_trips={} secs={:.3} rt_per_s={:.0} p50_us={} p99_us={} p999_us={} max_us={} errors={} cpu_s={:.3}",
        args.conns,
        args.idle,
        args.size,
        args.short,
        st.round_trips,
        secs,
        st.round_trips as f64 / secs,
        h.value_at_quantile(0.50),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max(),
        st.errors,
        cli::own_cpu_seconds(),
    );
    if st.errors > 0 {
        std::process::exit(1);
    }
    Ok(())
}
