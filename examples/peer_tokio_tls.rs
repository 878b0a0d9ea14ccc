//! A reference TLS server on tokio's current-thread runtime and
//! tokio-rustls (one task per connection): TLS echo (`--mode echo`, as
//! `echo_server --tls-cert …`) or the HTTPS hello of `http_hello`
//! (`--mode http`: the same parser, the same answers). Its
//! `rustls::ServerConfig` is built by the same function muxloop's
//! examples use (`muxloop::stream::tls::server_config`: rustls on ring,
//! TLS 1.2 and 1.3), so the two servers differ only in what drives
//! rustls. A peer for the benchmarks in `benches/run.sh`, not part of
//! muxloop.
//!
//! ```text
//! cargo run --example make_cert
//! cargo run --release --features tls --example peer_tokio_tls -- --mode http \
//!     --tls-cert target/localhost-cert/cert.pem --tls-key target/localhost-cert/key.pem
//! ```

#[path = "common/cli.rs"]
mod cli;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum Mode {
    /// Echo every byte.
    Echo,
    /// HTTP/1.1 keep-alive: `GET /` answers `200 hello world`.
    Http,
}

/// tokio + tokio-rustls TLS echo or HTTPS hello server (benchmark peer).
#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:1234")]
    addr: std::net::SocketAddr,
    #[arg(long, value_enum, default_value_t = Mode::Echo)]
    mode: Mode,
    /// Certificate chain (PEM).
    #[arg(long)]
    tls_cert: PathBuf,
    /// Its private key (PEM).
    #[arg(long)]
    tls_key: PathBuf,
    /// Stop after this many seconds (0 = never).
    #[arg(long, default_value_t = 0)]
    max_seconds: u64,
}

const HELLO: &[u8] = b"hello world\n";

async fn echo<T: AsyncRead + AsyncWrite + Unpin>(mut sock: T) {
    // 16 KiB: the most plaintext one TLS record holds.
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match sock.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if sock.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
    let _ = sock.shutdown().await;
}

/// Appends the answer to one request head; returns (head length,
/// whether the connection closes after it), or `None` for a partial or
/// bad head (`Some((0, true))`).
fn answer(input: &[u8], out: &mut Vec<u8>) -> Option<(usize, bool)> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(input) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return None,
        Err(_) => return Some((0, true)),
    };
    let mut keep = req.version == Some(1);
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
        } else if h.name.eq_ignore_ascii_case("content-length")
            || h.name.eq_ignore_ascii_case("transfer-encoding")
        {
            // The benchmark sends neither; a body is not served here.
            return Some((0, true));
        }
    }
    let found = req.method == Some("GET") && req.path == Some("/");
    let (status, body) = if found {
        ("200 OK", HELLO)
    } else {
        ("404 Not Found", &b"not found\n"[..])
    };
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_bytes());
    out.extend_from_slice(b"\r\nServer: muxloop\r\nContent-Type: text/plain\r\nContent-Length: ");
    out.extend_from_slice(body.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    if !keep {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    Some((len, !keep))
}

async fn http<T: AsyncRead + AsyncWrite + Unpin>(mut sock: T) {
    let mut input = Vec::with_capacity(16 * 1024);
    let mut out = Vec::with_capacity(4096);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match sock.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        input.extend_from_slice(&buf[..n]);
        let mut at = 0;
        let mut close = false;
        while let Some((len, last)) = answer(&input[at..], &mut out) {
            at += len;
            if last {
                close = true;
                break;
            }
        }
        input.drain(..at);
        if !out.is_empty() && sock.write_all(&out).await.is_err() {
            return;
        }
        out.clear();
        if close || input.len() > 8 * 1024 {
            break;
        }
    }
    let _ = sock.shutdown().await;
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    cli::guard_stdio();
    let args = Args::parse();
    let alpn: &[&[u8]] = match args.mode {
        Mode::Echo => &[],
        Mode::Http => &[b"http/1.1"],
    };
    let config = muxloop::stream::tls::server_config(&args.tls_cert, &args.tls_key, alpn)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let listener = TcpListener::bind(args.addr).await?;
    cli::say!(
        "listening on {} (backend tokio-peer)",
        listener.local_addr()?
    );
    let mode = args.mode;
    let serve = async {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                continue;
            };
            let _ = sock.set_nodelay(true);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // The same bound as muxloop's default handshake timeout.
                let shake = tokio::time::timeout(Duration::from_secs(60), acceptor.accept(sock));
                let Ok(Ok(tls)) = shake.await else { return };
                match mode {
                    Mode::Echo => echo(tls).await,
                    Mode::Http => http(tls).await,
                }
            });
        }
    };
    if args.max_seconds > 0 {
        let _ = tokio::time::timeout(Duration::from_secs(args.max_seconds), serve).await;
    } else {
        serve.await;
    }
    Ok(())
}
