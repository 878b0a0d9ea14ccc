//! A reference echo server on tokio's current-thread runtime (one task per
//! connection). A peer for the benchmarks in `benches/run.sh`, not part of
//! muxloop.
//!
//! ```text
//! cargo run --release --example peer_tokio_echo -- --addr 127.0.0.1:1234
//! ```

#[path = "common/cli.rs"]
mod cli;

use std::time::Duration;

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// tokio current_thread echo server (benchmark peer).
#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:1234")]
    addr: std::net::SocketAddr,
    /// Stop after this many seconds (0 = never).
    #[arg(long, default_value_t = 0)]
    max_seconds: u64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    cli::guard_stdio();
    let args = Args::parse();
    let listener = TcpListener::bind(args.addr).await?;
    cli::say!(
        "listening on {} (backend tokio-peer)",
        listener.local_addr()?
    );
    let serve = async {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                continue;
            };
            let _ = sock.set_nodelay(true);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if sock.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
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
