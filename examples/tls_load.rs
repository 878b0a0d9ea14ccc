//! A TLS load generator on muxloop's own TLS client (`stream::tls`):
//! echo ping-pong, HTTPS keep-alive requests, full handshakes, or idle
//! connections held open, every answer verified. `--plain` runs the same
//! load over plain TCP, for the cost of TLS itself.
//!
//! * `--mode echo`: `--conns` connections, each a `--size`-byte message
//!   and its echo, one after the other, for `--duration` seconds;
//! * `--mode http`: the same with `GET /` and its `200 hello world`;
//! * `--mode handshake`: each connection does a full handshake (no
//!   session resumption), one echo, a close; then the next connection
//!   starts: handshakes per second;
//! * `--mode idle`: opens `--conns` connections (at most 200 at a time),
//!   each verified with one echo, prints `READY conns=N`, holds them
//!   `--hold` seconds (for the server's memory to be read), then ends.
//!
//! ```text
//! cargo run --example make_cert
//! cargo run --release --features tls --example echo_server -- \
//!     --tls-cert target/localhost-cert/cert.pem --tls-key target/localhost-cert/key.pem
//! cargo run --release --features tls --example tls_load -- --addr 127.0.0.1:1234 \
//!     --cacert target/localhost-cert/cert.pem --mode echo --conns 50 --duration 5
//! ```
//!
//! The last line is machine-readable:
//! `RESULT tls_load mode=… tls=… conns=… ops=… secs=… ops_per_s=… p50_us=… p99_us=… max_us=… errors=…`

#[path = "common/cli.rs"]
mod cli;

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use muxloop::stream::{self, Protocol, Transport, tls};
use muxloop::{BackendKind, EventLoop};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Echo,
    Http,
    Handshake,
    Idle,
}

/// TLS (or plain) echo, HTTPS and handshake load with verification.
#[derive(Parser)]
struct Args {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:1234")]
    addr: SocketAddr,
    #[arg(long, value_enum, default_value_t = Mode::Echo)]
    mode: Mode,
    /// Connections at once (idle: in all).
    #[arg(long, default_value_t = 50)]
    conns: usize,
    /// Echo message size in bytes.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Seconds to run (echo, http, handshake).
    #[arg(long, default_value_t = 3.0)]
    duration: f64,
    /// Seconds to hold the idle connections once all are up.
    #[arg(long, default_value_t = 0.0)]
    hold: f64,
    /// Plain TCP instead of TLS.
    #[arg(long)]
    plain: bool,
    /// The CA certificate (PEM) the server's certificate is checked
    /// against (its own, for a self-signed one).
    #[arg(long, required_unless_present = "plain")]
    cacert: Option<PathBuf>,
    /// The name the server's certificate is checked for (and SNI).
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// Offer TLS 1.2 only.
    #[arg(long)]
    tls12: bool,
    /// The load generator's own backend.
    #[arg(long, default_value_t = BackendKind::platform_default(), value_parser = cli::backend_parser())]
    backend: BackendKind,
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";
const HELLO: &[u8] = b"hello world\n";
/// Idle mode: connections opening at once.
const OPENING: usize = 200;

/// The run: settings, the client configuration, counters.
struct Load {
    mode: Mode,
    addr: SocketAddr,
    size: usize,
    server_name: String,
    config: Option<Arc<rustls::ClientConfig>>,
    deadline: Instant,
    hist: Histogram<u64>,
    ops: u64,
    errors: u64,
    /// Connections that ended their part of the run (idle: that are up).
    done: usize,
    /// Idle mode: connections started so far.
    started: usize,
    target: usize,
    next_id: usize,
}

/// The byte at `i` of message `k` on connection `c`.
fn byte(c: usize, k: u64, i: usize) -> u8 {
    (c as u64)
        .wrapping_mul(31)
        .wrapping_add(k.wrapping_mul(17))
        .wrapping_add(i as u64 * 7) as u8
}

struct Conn {
    id: usize,
    k: u64,
    got: Vec<u8>,
    sent_at: Instant,
    finished: bool,
}

impl Conn {
    fn new(id: usize) -> Conn {
        Conn {
            id,
            k: 0,
            got: Vec::new(),
            sent_at: Instant::now(),
            finished: false,
        }
    }

    fn send(&mut self, t: &mut Transport<'_, Load>, st: &Load) {
        self.got.clear();
        if st.mode == Mode::Http {
            t.write(GET);
        } else {
            let msg: Vec<u8> = (0..st.size).map(|i| byte(self.id, self.k, i)).collect();
            t.write(&msg);
        }
        if st.mode != Mode::Handshake {
            self.sent_at = Instant::now();
        }
    }

    /// Whether `got` holds the whole answer; an error if it is wrong.
    fn complete(&self, st: &Load) -> Result<bool, String> {
        if st.mode != Mode::Http {
            if let Some(i) =
                (0..self.got.len().min(st.size)).find(|&i| self.got[i] != byte(self.id, self.k, i))
            {
                return Err(format!("byte {i} of message {} differs", self.k));
            }
            if self.got.len() > st.size {
                return Err(format!(
                    "{} bytes for a {}-byte message",
                    self.got.len(),
                    st.size
                ));
            }
            return Ok(self.got.len() == st.size);
        }
        let Some(head) = self.got.windows(4).position(|w| w == b"\r\n\r\n") else {
            return Ok(false);
        };
        let text = String::from_utf8_lossy(&self.got[..head]);
        if !text.starts_with("HTTP/1.1 200 ") {
            return Err(format!("answer {:?}", text.lines().next()));
        }
        let len: usize = text
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .ok_or("no Content-Length")?;
        let body = &self.got[head + 4..];
        match body.len().cmp(&len) {
            std::cmp::Ordering::Less => Ok(false),
            std::cmp::Ordering::Greater => Err(format!("{} bytes after the head", body.len())),
            std::cmp::Ordering::Equal if body == HELLO => Ok(true),
            std::cmp::Ordering::Equal => Err(format!("body {body:?}")),
        }
    }

    fn fail(&mut self, t: &mut Transport<'_, Load>, st: &mut Load, what: &str) {
        cli::tell!("tls_load: conn {}: {what}", self.id);
        st.errors += 1;
        self.end(st);
        t.abort();
    }

    /// This connection's part of the run is over.
    fn end(&mut self, st: &mut Load) {
        if !self.finished {
            self.finished = true;
            st.done += 1;
        }
    }
}

/// Starts connection `id` (TLS unless `--plain`).
fn start(lp: &mut EventLoop<Load>, st: &mut Load) -> io::Result<()> {
    let c = Conn::new(st.next_id);
    st.next_id += 1;
    st.started += 1;
    match &st.config {
        Some(config) => {
            let timeout = Some(Duration::from_secs(20));
            tls::connect_tls(lp, st.addr, &st.server_name, config.clone(), timeout, c)?
        }
        None => stream::connect(lp, st.addr, Some(Duration::from_secs(20)), c)?,
    };
    Ok(())
}

impl Protocol<Load> for Conn {
    fn connection_made(&mut self, t: &mut Transport<'_, Load>, st: &mut Load) {
        // Closes at once when its part is done: the server's close follows.
        t.set_close_linger(Duration::ZERO);
        self.send(t, st);
    }

    fn data_received(&mut self, t: &mut Transport<'_, Load>, data: &[u8], st: &mut Load) {
        if self.finished {
            return;
        }
        self.got.extend_from_slice(data);
        match self.complete(st) {
            Ok(false) => return,
            Ok(true) => {}
            Err(what) => return self.fail(t, st, &what),
        }
        let us = self.sent_at.elapsed().as_micros().max(1) as u64;
        let _ = st.hist.record(us.min(st.hist.high()));
        st.ops += 1;
        self.k += 1;
        let over = Instant::now() >= st.deadline;
        match st.mode {
            Mode::Echo | Mode::Http if !over => self.send(t, st),
            Mode::Echo | Mode::Http => {
                self.end(st);
                t.close();
            }
            Mode::Handshake if over => {
                self.end(st);
                t.close();
            }
            Mode::Handshake => {
                // This connection is done; its successor does the next one.
                self.finished = true;
                t.close();
                if let Err(e) = start(t.event_loop(), st) {
                    cli::tell!("tls_load: connect: {e}");
                    st.errors += 1;
                    st.done += 1;
                }
            }
            Mode::Idle => {
                self.end(st);
                if st.started < st.target {
                    if let Err(e) = start(t.event_loop(), st) {
                        cli::tell!("tls_load: connect: {e}");
                        st.errors += 1;
                        st.done += 1;
                    }
                }
            }
        }
    }

    fn connection_lost(
        &mut self,
        t: &mut Transport<'_, Load>,
        e: Option<io::Error>,
        st: &mut Load,
    ) {
        if !self.finished {
            let why = e.map_or("closed by the server".to_string(), |e| e.to_string());
            self.fail(t, st, &why);
        }
    }

    fn connection_failed(&mut self, e: io::Error, st: &mut Load) {
        cli::tell!("tls_load: conn {}: {e}", self.id);
        st.errors += 1;
        st.done += 1;
    }
}

/// A client configuration trusting `ca`, without session resumption
/// (every connection a full handshake).
fn client_config(args: &Args, ca: &std::path::Path) -> io::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in tls::load_certs(ca)? {
        roots
            .add(cert)
            .map_err(|e| io::Error::other(format!("{}: {e}", ca.display())))?;
    }
    let versions: &[&rustls::SupportedProtocolVersion] = if args.tls12 {
        &[&rustls::version::TLS12]
    } else {
        rustls::DEFAULT_VERSIONS
    };
    let mut config = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(versions)
        .map_err(|e| io::Error::other(format!("TLS versions: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    if args.mode == Mode::Http {
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
    }
    Ok(Arc::new(config))
}

fn main() -> io::Result<()> {
    cli::guard_stdio();
    env_logger::init();
    let args = Args::parse();
    if args.size == 0 || args.conns == 0 {
        cli::tell!("tls_load: --size and --conns must be at least 1");
        std::process::exit(2);
    }
    cli::raise_fd_limit();
    let config = match (&args.cacert, args.plain) {
        (Some(ca), false) => Some(client_config(&args, ca)?),
        _ => None,
    };
    let mut lp = EventLoop::<Load>::with_backend(args.backend)?;
    let start_at = Instant::now();
    let mut st = Load {
        mode: args.mode,
        addr: args.addr,
        size: args.size,
        server_name: args.server_name.clone(),
        config,
        deadline: start_at + Duration::from_secs_f64(args.duration),
        hist: Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds"),
        ops: 0,
        errors: 0,
        done: 0,
        started: 0,
        target: args.conns,
        next_id: 0,
    };
    let first = match args.mode {
        Mode::Idle => args.conns.min(OPENING),
        _ => args.conns,
    };
    for _ in 0..first {
        start(&mut lp, &mut st)?;
    }
    // A hard stop, whatever the server does.
    let limit = Duration::from_secs_f64(args.duration + 60.0);
    let limit_timer = lp.call_later(limit, |lp, st: &mut Load| {
        cli::tell!(
            "tls_load: time limit reached with {} of {} connections unfinished",
            st.target - st.done,
            st.target
        );
        st.errors += 1;
        lp.stop();
    });
    while st.done < st.target && !lp.is_stopped() {
        lp.run_once(None, &mut st)?;
    }
    let secs = start_at.elapsed().as_secs_f64();
    if args.mode == Mode::Idle && st.errors == 0 {
        cli::say!("READY conns={}", st.done);
        lp.cancel(limit_timer);
        let hold_until = Instant::now() + Duration::from_secs_f64(args.hold);
        while let Some(left) = hold_until.checked_duration_since(Instant::now()) {
            lp.run_once(Some(left), &mut st)?;
        }
    }
    let h = &st.hist;
    cli::say!(
        "RESULT tls_load mode={} tls={} conns={} ops={} secs={secs:.3} ops_per_s={:.0} p50_us={} p99_us={} max_us={} errors={}",
        args.mode
            .to_possible_value()
            .expect("a named mode")
            .get_name(),
        !args.plain,
        args.conns,
        st.ops,
        st.ops as f64 / secs,
        h.value_at_quantile(0.50),
        h.value_at_quantile(0.99),
        h.max(),
        st.errors
    );
    if st.errors > 0 {
        std::process::exit(1);
    }
    Ok(())
}
