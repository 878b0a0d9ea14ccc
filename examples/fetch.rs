//! Fetches an `http://` URL over TCP by host name: the name resolved on
//! the loop's blocking pool, its addresses raced (Happy Eyeballs), the
//! response printed (the body on stdout, the status and headers on
//! stderr with `-v`).
//!
//! ```text
//! cargo run --example http_hello -- --addr 127.0.0.1:8080 &
//! cargo run --example fetch -- http://localhost:8080/
//! ```

#[path = "common/cli.rs"]
mod cli;

use std::io::{self, Write};
use std::time::Duration;

use clap::Parser;
use muxloop::stream::{self, Protocol, Transport};
use muxloop::{BackendKind, EventLoop};

/// Fetch an http:// URL (HTTP/1.1, `Connection: close`).
#[derive(Parser)]
struct Args {
    /// The URL: http://HOST[:PORT]/PATH.
    url: String,
    /// Print the status line and headers to stderr.
    #[arg(short, long)]
    verbose: bool,
    /// Seconds for the name, the connect and the answer.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
    #[arg(long, env = "MUXLOOP_BACKEND", default_value_t = BackendKind::platform_default(), value_parser = cli::backend_parser())]
    backend: BackendKind,
}

/// What the fetch ended with.
#[derive(Default)]
struct Fetch {
    response: Vec<u8>,
    done: Option<io::Result<()>>,
}

struct Get {
    request: Vec<u8>,
}

impl Protocol<Fetch> for Get {
    fn connection_made(&mut self, t: &mut Transport<'_, Fetch>, _: &mut Fetch) {
        log::info!("fetch=connected peer={:?}", t.peer_addr().ok());
        t.write(&self.request);
    }
    fn data_received(&mut self, _: &mut Transport<'_, Fetch>, data: &[u8], f: &mut Fetch) {
        f.response.extend_from_slice(data);
    }
    fn connection_lost(
        &mut self,
        _: &mut Transport<'_, Fetch>,
        e: Option<io::Error>,
        f: &mut Fetch,
    ) {
        f.done = Some(e.map_or(Ok(()), Err));
    }
    fn connection_failed(&mut self, e: io::Error, f: &mut Fetch) {
        f.done = Some(Err(e));
    }
}

/// (host:port, path) of an http:// URL.
fn split_url(url: &str) -> io::Result<(String, String)> {
    let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidInput, format!("{url}: {why}"));
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| bad("only http:// URLs"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(bad("no host"));
    }
    let has_port = match authority.rfind(']') {
        Some(end) => authority[end..].contains(':'),
        None => authority.contains(':'),
    };
    let host_port = if has_port {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    Ok((host_port, path.to_string()))
}

fn main() -> io::Result<()> {
    cli::guard_stdio();
    env_logger::init();
    let args = Args::parse();
    let (host_port, path) = split_url(&args.url)?;
    let host = host_port
        .rsplit_once(':')
        .map_or(&host_port[..], |(h, _)| h);
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: muxloop-fetch\r\nConnection: close\r\n\r\n"
    );
    let mut lp = EventLoop::<Fetch>::with_backend(args.backend)?;
    let timeout = Duration::from_secs(args.timeout);
    stream::connect_host(
        &mut lp,
        &host_port,
        Some(timeout),
        Get {
            request: request.into_bytes(),
        },
    )?;
    lp.call_later(timeout, |lp, f: &mut Fetch| {
        f.done.get_or_insert(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "no complete answer in time",
        )));
        lp.stop();
    });
    let mut fetch = Fetch::default();
    while fetch.done.is_none() && !lp.is_stopped() {
        lp.run_once(None, &mut fetch)?;
    }
    fetch.done.take().expect("decided")?;
    let head_end = fetch
        .response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no HTTP head in the answer"))?;
    if args.verbose {
        cli::tell!("{}", String::from_utf8_lossy(&fetch.response[..head_end]));
    }
    let _ = io::stdout().write_all(&fetch.response[head_end + 4..]);
    let ok = fetch.response.starts_with(b"HTTP/1.1 2") || fetch.response.starts_with(b"HTTP/1.0 2");
    if !ok {
        let status = String::from_utf8_lossy(&fetch.response[..head_end]);
        cli::tell!("fetch: {}", status.lines().next().unwrap_or(""));
        std::process::exit(1);
    }
    Ok(())
}
