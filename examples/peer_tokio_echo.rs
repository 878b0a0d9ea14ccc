//! A reference echo server on tokio (one task per connection): the
//! current-thread runtime, or with `--threads N` the multi-thread one
//! (work stealing over N threads). A peer for the benchmarks in
//! `benches/run.sh`, not part of muxloop.
//!
//! ```text
//! cargo run --release --example peer_tokio_echo -- --addr 127.0.0.1:1234
//! cargo run --release --example peer_tokio_echo -- --threads 2
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
    /// Run on the multi-thread runtime with this many worker threads
    /// (without it: the current-thread runtime).
    #[arg(long)]
    threads: Option<usize>,
}

fn main() -> std::io::Result<()> {
    cli::guard_stdio();
    let args = Args::parse();
    let rt = match args.threads {
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n.max(1))
            .enable_all()
            .build()?,
        None => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
    };
    rt.block_on(serve(args))
}

async fn serve(args: Args) -> std::io::Result<()> {
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
