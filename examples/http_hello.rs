//! An HTTP/1.1 server on `muxloop::stream`, over TCP or TLS: `GET /`
//! answers `200 hello world`, any other path `404`.
//!
//! * keep-alive (HTTP/1.1's default; HTTP/1.0 with `Connection:
//!   keep-alive`), and `Connection: close` honoured: the answer carries it
//!   and the connection closes once it is sent;
//! * pipelining: every complete request in what arrived is answered, in
//!   order, in one write;
//! * `HEAD` as `GET` without the body, request bodies with
//!   `Content-Length` read and skipped, `405` for other methods, `400`
//!   for what does not parse, `431` for headers over 8 KiB, `501` for
//!   chunked request bodies (each of those closes the connection);
//! * a client that pipelines without reading is not read while more than
//!   `--high-water` bytes of answers wait for it; an idle keep-alive
//!   connection is closed after `--idle-timeout` seconds;
//! * HTTPS when `--tls-cert` and `--tls-key` are given (with
//!   `--features tls`), ALPN `http/1.1`;
//! * SIGINT/SIGTERM stop it gracefully, then it prints counters;
//! * `--workers N`: N loops on N threads, one port (`muxloop::workers`),
//!   and after the stop one line per worker, `worker K: N connections`.
//!
//! ```text
//! cargo run --release --example http_hello -- --addr 127.0.0.1:8080
//! curl -v http://127.0.0.1:8080/
//! cargo run --example make_cert
//! cargo run --release --features tls --example http_hello -- \
//!     --tls-cert target/localhost-cert/cert.pem --tls-key target/localhost-cert/key.pem
//! ```

#[path = "common/cli.rs"]
mod cli;
#[path = "common/tls_flags.rs"]
mod tls_flags;
#[path = "common/workers_flags.rs"]
mod workers_flags;

use std::io::{self, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use clap::Parser;
use muxloop::stream::{self, Protocol, ServeOptions, Server, Transport};
use muxloop::{BackendKind, EventLoop};

/// An HTTP/1.1 hello-world server on muxloop's stream layer.
#[derive(Parser)]
struct Args {
    /// Backend (those this machine lacks are refused, naming the cause).
    #[arg(long, env = "MUXLOOP_BACKEND", default_value_t = BackendKind::platform_default(), value_parser = cli::backend_parser())]
    backend: BackendKind,
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: String,
    /// Stop reading a client once more than this many answer bytes wait
    /// for it.
    #[arg(long, default_value_t = 256 * 1024)]
    high_water: usize,
    /// Close a keep-alive connection after this many seconds without a
    /// request (0: never).
    #[arg(long, default_value_t = 60)]
    idle_timeout: u64,
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

/// The largest request head read; a longer one is answered `431`.
const MAX_HEAD: usize = 8 * 1024;
/// The most headers a request may have (more: `431`).
const MAX_HEADERS: usize = 64;
/// The largest request body skipped (more: `413`).
const MAX_BODY: usize = 1024 * 1024;
const HELLO: &[u8] = b"hello world\n";

/// What every connection shares: settings, counters, and one buffer the
/// answers are formatted in.
struct Shared {
    high_water: usize,
    idle: Option<Duration>,
    requests: u64,
    answer: Vec<u8>,
}

/// One connection: the bytes of a request not complete yet, and how much
/// of a request body is still to be skipped.
#[derive(Default)]
struct Http {
    pending: Vec<u8>,
    skip: usize,
    done: bool,
}

/// What one request gets.
struct Answer {
    status: &'static str,
    body: &'static [u8],
    head_only: bool,
    close: bool,
    allow: bool,
}

impl Answer {
    fn error(status: &'static str) -> Answer {
        Answer {
            status,
            body: b"",
            head_only: false,
            close: true,
            allow: false,
        }
    }

    fn append_to(&self, out: &mut Vec<u8>) {
        let _ = write!(
            out,
            "HTTP/1.1 {}\r\nServer: muxloop\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n",
            self.status,
            self.body.len()
        );
        if self.allow {
            out.extend_from_slice(b"Allow: GET, HEAD\r\n");
        }
        if self.close {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if !self.head_only {
            out.extend_from_slice(self.body);
        }
    }
}

/// What the front of a connection's input holds.
enum Parsed {
    /// A request whose head is `len` bytes and whose body `body` bytes.
    Request {
        answer: Answer,
        len: usize,
        body: usize,
    },
    /// Not a complete head yet.
    Partial,
    /// Cannot be answered but with this error (the connection closes).
    Bad(&'static str),
}

fn parse(input: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(input) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if input.len() > MAX_HEAD => {
            return Parsed::Bad("431 Request Header Fields Too Large");
        }
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => {
            return Parsed::Bad("431 Request Header Fields Too Large");
        }
        Err(_) => return Parsed::Bad("400 Bad Request"),
    };
    if len > MAX_HEAD {
        return Parsed::Bad("431 Request Header Fields Too Large");
    }
    // HTTP/1.1 keeps the connection unless told to close; 1.0 closes
    // unless told to keep it.
    let mut keep = req.version == Some(1);
    let mut body = 0;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    keep = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    keep = true;
                }
            }
        } else if h.name.eq_ignore_ascii_case("content-length") {
            match std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
            {
                Some(n) if n <= MAX_BODY => body = n,
                Some(_) => return Parsed::Bad("413 Content Too Large"),
                None => return Parsed::Bad("400 Bad Request"),
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Parsed::Bad("501 Not Implemented");
        }
    }
    let method = req.method.unwrap_or("");
    let known = method == "GET" || method == "HEAD";
    let found = req.path.is_some_and(|p| p == "/" || p.starts_with("/?"));
    let (status, body_out) = match (known, found) {
        (false, _) => ("405 Method Not Allowed", &b""[..]),
        (true, true) => ("200 OK", HELLO),
        (true, false) => ("404 Not Found", &b"not found\n"[..]),
    };
    Parsed::Request {
        answer: Answer {
            status,
            body: body_out,
            head_only: method == "HEAD",
            close: !keep,
            allow: !known,
        },
        len,
        body,
    }
}

impl Http {
    /// Answers every complete request at the front of `input`; returns how
    /// many bytes of it were used up.
    fn serve(&mut self, input: &[u8], t: &mut Transport<'_, Shared>, s: &mut Shared) -> usize {
        let mut at = 0;
        while !self.done {
            if self.skip > 0 {
                let n = self.skip.min(input.len() - at);
                self.skip -= n;
                at += n;
                if self.skip > 0 {
                    break;
                }
            }
            match parse(&input[at..]) {
                Parsed::Partial => break,
                Parsed::Bad(status) => {
                    Answer::error(status).append_to(&mut s.answer);
                    self.done = true;
                }
                Parsed::Request { answer, len, body } => {
                    answer.append_to(&mut s.answer);
                    s.requests += 1;
                    at += len;
                    self.skip = body;
                    self.done = answer.close;
                }
            }
        }
        if !s.answer.is_empty() {
            t.write(&s.answer);
            s.answer.clear();
        }
        if self.done {
            t.close();
            return input.len();
        }
        at
    }
}

impl Protocol<Shared> for Http {
    fn connection_made(&mut self, t: &mut Transport<'_, Shared>, s: &mut Shared) {
        t.set_write_buffer_limits(s.high_water, s.high_water / 4)
            .expect("low <= high");
        t.set_idle_timeout(s.idle);
    }

    fn data_received(&mut self, t: &mut Transport<'_, Shared>, data: &[u8], s: &mut Shared) {
        if self.pending.is_empty() {
            let used = self.serve(data, t, s);
            self.pending.extend_from_slice(&data[used..]);
        } else {
            let mut input = std::mem::take(&mut self.pending);
            input.extend_from_slice(data);
            let used = self.serve(&input, t, s);
            input.drain(..used);
            self.pending = input;
        }
    }

    fn pause_writing(&mut self, t: &mut Transport<'_, Shared>, _: &mut Shared) {
        t.pause_reading();
    }

    fn resume_writing(&mut self, t: &mut Transport<'_, Shared>, _: &mut Shared) {
        t.resume_reading();
    }
}

/// Stops accepting, lets connections flush for `grace`, then stops the loop.
fn shut_down(server: &Server<Shared>, lp: &mut EventLoop<Shared>, grace: Duration) {
    server.close(lp, grace, |lp, _| lp.stop());
}

/// `--workers N`: the same server on N loops, one port.
fn on_workers(args: &Args) -> io::Result<()> {
    let mut options = ServeOptions::default();
    args.tls.configure(&mut options, &[b"http/1.1"])?;
    let high_water = args.high_water;
    let idle = (args.idle_timeout > 0).then(|| Duration::from_secs(args.idle_timeout));
    let started = Instant::now();
    let exits = workers_flags::run(
        &args.workers,
        args.backend,
        &args.addr,
        Duration::from_secs(args.grace),
        args.max_seconds,
        |addr| match args.tls.client_line(addr, true) {
            Some(line) => Some(format!("HTTPS; try: {line}")),
            None => Some(format!("try: curl http://{addr}/")),
        },
        move |_| Shared {
            high_water,
            idle,
            requests: 0,
            answer: Vec::with_capacity(4096),
        },
        move |w, listener| {
            w.serve(listener, options.clone(), |_, _| {
                Some(Box::new(Http::default()))
            })?;
            Ok(())
        },
    )?;
    cli::tell!(
        "stopped after {:.1?}: connections={} requests={}",
        started.elapsed(),
        exits.iter().map(|e| e.stats.connections).sum::<u64>(),
        exits.iter().map(|e| e.state.requests).sum::<u64>(),
    );
    Ok(())
}

fn main() -> io::Result<()> {
    cli::guard_stdio();
    env_logger::init();
    let args = Args::parse();
    if args.workers.workers.is_some() {
        return on_workers(&args);
    }
    let mut lp = EventLoop::<Shared>::with_backend(args.backend)?;
    let mut options = ServeOptions::default();
    args.tls.configure(&mut options, &[b"http/1.1"])?;
    let listener = TcpListener::bind(&args.addr)?;
    let addr = listener.local_addr()?;
    let server = stream::serve(&mut lp, listener, options, |_, _| {
        Some(Box::new(Http::default()))
    })?;
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
    match args.tls.client_line(addr, true) {
        Some(line) => cli::say!("HTTPS; try: {line}"),
        None => cli::say!("try: curl http://{addr}/"),
    }

    let mut shared = Shared {
        high_water: args.high_water,
        idle: (args.idle_timeout > 0).then(|| Duration::from_secs(args.idle_timeout)),
        requests: 0,
        answer: Vec::with_capacity(4096),
    };
    let started = Instant::now();
    lp.run(&mut shared)?;
    cli::tell!(
        "stopped after {:.1?}: connections={} requests={}",
        started.elapsed(),
        server.connections_served(),
        shared.requests,
    );
    Ok(())
}
