//! A reference UDP echo server on tokio's current-thread runtime
//! (`tokio::net::UdpSocket`, one `recv_from` and one `send_to` per
//! datagram). A peer for the benchmarks in `benches/run.sh`, not part of
//! muxloop.
//!
//! ```text
//! cargo run --release --example peer_tokio_udp -- --addr 127.0.0.1:1236
//! ```

#[path = "common/cli.rs"]
mod cli;

use std::time::Duration;

use clap::Parser;
use tokio::net::UdpSocket;

/// tokio current_thread UDP echo server (benchmark peer).
#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:1236")]
    addr: std::net::SocketAddr,
    /// Stop after this many seconds (0 = never).
    #[arg(long, default_value_t = 0)]
    max_seconds: u64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    cli::guard_stdio();
    let args = Args::parse();
    let sock = UdpSocket::bind(args.addr).await?;
    cli::say!("listening on {} (backend tokio-peer)", sock.local_addr()?);
    let serve = async {
        let mut buf = vec![0u8; 65_536];
        loop {
            let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                continue;
            };
            let _ = sock.send_to(&buf[..n], from).await;
        }
    };
    if args.max_seconds > 0 {
        let _ = tokio::time::timeout(Duration::from_secs(args.max_seconds), serve).await;
    } else {
        serve.await;
    }
    Ok(())
}
