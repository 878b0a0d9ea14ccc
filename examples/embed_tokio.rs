//! The event loop inside a tokio current-thread runtime.
//!
//! tokio watches the loop's backend fd with `AsyncFd`; whenever it turns
//! readable, or the loop's next timer is due, a task lets the loop run.
//! tokio's readiness is edge-triggered, so the task calls `run_once` until a
//! call runs no callback before it waits again: stopping earlier could leave
//! work that no new edge would announce.
//!
//! The loop serves a `muxloop::stream` echo server; tokio tasks connect to
//! it, send messages in small pieces and check the echo, while a tokio
//! interval ticks alongside. Needs a backend with a backend fd (epoll,
//! kqueue or mio).
//!
//! ```text
//! cargo run --example embed_tokio -- --clients 10 --messages 500
//! ```

#[path = "common/cli.rs"]
mod cli;

use std::io;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use clap::Parser;
use muxloop::stream::{self, Protocol, ServeOptions, Transport};
use muxloop::{BackendKind, EventLoop, PostAction};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A muxloop EventLoop driven by a tokio runtime.
#[derive(Parser)]
struct Args {
    /// Backend: epoll, kqueue or mio (select and poll have no backend fd).
    #[arg(long, env = "MUXLOOP_BACKEND", default_value_t = BackendKind::platform_default(), value_parser = cli::backend_parser())]
    backend: BackendKind,
    /// tokio clients of the loop's echo server.
    #[arg(long, default_value_t = 10)]
    clients: usize,
    /// Messages per client.
    #[arg(long, default_value_t = 500)]
    messages: usize,
}

#[derive(Default)]
struct State {
    echoed: usize,
    ticks: u32,
}

struct Echo;

impl Protocol<State> for Echo {
    fn data_received(&mut self, t: &mut Transport<'_, State>, data: &[u8], st: &mut State) {
        st.echoed += data.len();
        t.write(data);
    }
}

/// The loop's backend fd, for `AsyncFd` (which wants an owner of an fd; the
/// loop keeps the fd open, and this value is dropped before the loop).
struct LoopFd(RawFd);

impl AsRawFd for LoopFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// Runs the loop from tokio until `work` is done. Returns its output, the
/// number of host turns and of callbacks the loop ran.
async fn drive<T>(
    lp: &mut EventLoop<State>,
    st: &mut State,
    work: impl std::future::Future<Output = T>,
) -> io::Result<(T, u64, usize)> {
    let fd = lp.backend_fd().expect("checked in main").as_raw_fd();
    // SAFETY: the fd stays open for the loop's whole life (backend_fd's
    // promise), and the AsyncFd, local to this function, is dropped while
    // `lp` is still borrowed.
    let afd =
        unsafe { AsyncFd::register_with_interest(LoopFd(fd), tokio::io::Interest::READABLE)? };
    let (mut turns, mut callbacks) = (0, 0);
    tokio::pin!(work);
    let output = loop {
        // Sleep until the backend fd is readable or the next timer is due
        // (tokio's timer rounds the deadline up to its next millisecond
        // tick itself: never early).
        let timeout = lp.next_timeout();
        let sleep = async {
            match timeout {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            guard = afd.readable() => guard?.clear_ready(),
            () = sleep => {}
            output = &mut work => break output,
        }
        turns += 1;
        // Edge-triggered host: drain until a dispatch runs nothing.
        loop {
            let n = lp.run_once(Some(Duration::ZERO), st)?;
            callbacks += n;
            if n == 0 {
                break;
            }
        }
    };
    Ok((output, turns, callbacks))
}

/// One tokio client, as `client_once`; when the process runs out of fds
/// (the connect fails, or the server sheds the connection) it backs off and
/// starts again, as a real client would, for up to a minute.
async fn client(addr: std::net::SocketAddr, id: usize, messages: usize) -> io::Result<usize> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut backoff = Duration::from_millis(5);
    loop {
        match client_once(addr, id, messages).await {
            Err(e) if retryable(&e) && Instant::now() < deadline => {
                log::debug!("client {id}: {e}; again in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(200));
            }
            res => return res,
        }
    }
}

/// Out of fds here, or shed by the server because it was.
fn retryable(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
        || matches!(
            e.kind(),
            io::ErrorKind::ConnectionReset
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::UnexpectedEof
                | io::ErrorKind::ConnectionAborted
        )
}

/// Sends `messages` messages of 33 bytes, each in three writes, and reads
/// each echo back whole.
async fn client_once(addr: std::net::SocketAddr, id: usize, messages: usize) -> io::Result<usize> {
    let mut sock = tokio::net::TcpStream::connect(addr).await?;
    sock.set_nodelay(true)?;
    let mut echoed = 0;
    for i in 0..messages {
        let msg = format!("{:<32}\n", format!("client {id} message {i}"));
        for piece in msg.as_bytes().chunks(12) {
            sock.write_all(piece).await?;
        }
        let mut back = [0; 33];
        sock.read_exact(&mut back).await?;
        if back != msg.as_bytes() {
            return Err(io::Error::other(format!("client {id}: echo mismatch")));
        }
        echoed += back.len();
    }
    Ok(echoed)
}

fn main() -> io::Result<()> {
    cli::guard_stdio();
    env_logger::init();
    let args = Args::parse();
    let mut lp = EventLoop::<State>::with_backend(args.backend)?;
    if lp.backend_fd().is_none() {
        cli::tell!(
            "the {} backend has no backend fd: use epoll, kqueue or mio (examples/embed_poll.rs drives select and poll)",
            lp.backend_name()
        );
        std::process::exit(2);
    }
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    cli::say!("listening on {addr} (backend {})", lp.backend_name());
    stream::serve(&mut lp, listener, ServeOptions::default(), |_, _| {
        Some(Box::new(Echo))
    })?;
    lp.call_every(Duration::from_millis(100), |_, st| {
        st.ticks += 1;
        PostAction::Continue
    });

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut st = State::default();
    let start = Instant::now();
    let (clients, messages) = (args.clients, args.messages);
    let local = tokio::task::LocalSet::new();
    let (result, turns, callbacks) = local.block_on(&rt, async {
        let tasks: Vec<_> = (0..clients)
            .map(|id| tokio::task::spawn_local(client(addr, id, messages)))
            .collect();
        let work = async {
            let mut total = 0;
            for t in tasks {
                total += t.await.map_err(io::Error::other)??;
            }
            Ok::<_, io::Error>(total)
        };
        drive(&mut lp, &mut st, work).await
    })?;
    let total = result?;
    cli::say!(
        "{clients} tokio clients: {total} bytes echoed by the loop in {:.2?}; {turns} host turns, {callbacks} loop callbacks, {} loop ticks",
        start.elapsed(),
        st.ticks
    );
    Ok(())
}
