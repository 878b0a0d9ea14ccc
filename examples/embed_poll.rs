//! The event loop inside a program that has its own poll(2) loop.
//!
//! The host watches an fd of its own (a pipe a "sensor" thread writes
//! readings into) and drives a muxloop `EventLoop` that serves a
//! `muxloop::stream` echo server and a one-second timer. Each host turn:
//!
//! 1. ask the loop how long the host may sleep (`next_timeout`);
//! 2. poll(2) the host's fd together with the loop's: its backend fd where
//!    it has one (epoll, kqueue, mio), else every fd it watches
//!    (`watched_fds`, on select and poll);
//! 3. handle the host's own fd, then let the loop run: `run_once` without
//!    waiting (backend fd), or `run_ready` with what poll saw.
//!
//! ```text
//! cargo run --example embed_poll -- --seconds 5
//! printf 'hello\n' | nc 127.0.0.1 <port>
//! ```

#[path = "common/cli.rs"]
mod cli;

use std::io::{self, Read, Write};
use std::net::TcpListener;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use clap::Parser;
use muxloop::stream::{self, Protocol, ServeOptions, Transport};
use muxloop::{BackendKind, EventLoop, Interest, PostAction, Ready};

/// A poll(2) host loop that drives a muxloop EventLoop.
#[derive(Parser)]
struct Args {
    /// Backend (those this machine lacks are refused, naming the cause).
    #[arg(long, env = "MUXLOOP_BACKEND", default_value_t = BackendKind::platform_default(), value_parser = cli::backend_parser())]
    backend: BackendKind,
    /// Address of the echo server the loop runs.
    #[arg(long, default_value = "127.0.0.1:0")]
    addr: String,
    /// Stop after this many seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

/// What the loop's callbacks share.
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

    // Backpressure: a client that does not read its echo is not read
    // either, so its buffer stays near the high-water mark (64 KiB).
    fn pause_writing(&mut self, t: &mut Transport<'_, State>, _: &mut State) {
        t.pause_reading();
    }

    fn resume_writing(&mut self, t: &mut Transport<'_, State>, _: &mut State) {
        t.resume_reading();
    }
}

/// The host's view of what to poll: its own fd first, then the loop's.
struct Host {
    pfds: Vec<libc::pollfd>,
    watched: Vec<(RawFd, Interest)>,
    seen: Vec<(RawFd, Ready)>,
    wakes: u64,
}

impl Host {
    /// poll(2) on `own` and the loop, at most `timeout` (rounded up to whole
    /// milliseconds, so that a timer is due when poll returns). Returns
    /// whether the host's own fd is readable.
    fn poll(
        &mut self,
        own: RawFd,
        lp: &mut EventLoop<State>,
        timeout: Option<Duration>,
    ) -> io::Result<bool> {
        self.pfds.clear();
        self.pfds.push(pollfd(own, Interest::READABLE));
        match lp.backend_fd() {
            Some(fd) => self.pfds.push(pollfd(fd.as_raw_fd(), Interest::READABLE)),
            None => {
                lp.watched_fds(&mut self.watched)?;
                self.pfds
                    .extend(self.watched.iter().map(|&(fd, i)| pollfd(fd, i)));
            }
        }
        let ms = timeout.map_or(-1, |t| {
            t.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32
        });
        // SAFETY: `pfds` is a live array of pollfd of the length passed.
        let n = unsafe { libc::poll(self.pfds.as_mut_ptr(), self.pfds.len() as libc::nfds_t, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            };
        }
        self.wakes += 1;
        self.seen.clear();
        for p in &self.pfds[1..] {
            let mut ready = Ready::EMPTY;
            if p.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                ready |= Ready::READABLE;
            }
            if p.revents & (libc::POLLOUT | libc::POLLHUP | libc::POLLERR) != 0 {
                ready |= Ready::WRITABLE;
            }
            if !ready.is_empty() {
                self.seen.push((p.fd, ready));
            }
        }
        Ok(self.pfds[0].revents != 0)
    }

    /// Lets the loop run what the poll found, without waiting.
    fn run_loop(&mut self, lp: &mut EventLoop<State>, st: &mut State) -> io::Result<usize> {
        if lp.backend_fd().is_some() {
            lp.run_once(Some(Duration::ZERO), st)
        } else {
            lp.run_ready(&self.seen, st)
        }
    }
}

fn pollfd(fd: RawFd, interest: Interest) -> libc::pollfd {
    let mut events = 0;
    if interest.is_readable() {
        events |= libc::POLLIN;
    }
    if interest.is_writable() {
        events |= libc::POLLOUT;
    }
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

fn main() -> io::Result<()> {
    cli::guard_stdio();
    env_logger::init();
    let args = Args::parse();
    let mut lp = EventLoop::<State>::with_backend(args.backend)?;
    let listener = TcpListener::bind(&args.addr)?;
    cli::say!(
        "listening on {} (backend {})",
        listener.local_addr()?,
        lp.backend_name()
    );
    stream::serve(&mut lp, listener, ServeOptions::default(), |_, _| {
        Some(Box::new(Echo))
    })?;
    lp.call_every(Duration::from_secs(1), |_, st| {
        st.ticks += 1;
        PostAction::Continue
    });

    // The host's own fd: readings from a sensor thread, one line each.
    let (mut sensor_rx, mut sensor_tx) = UnixStream::pair()?;
    sensor_rx.set_nonblocking(true)?;
    std::thread::spawn(move || {
        for i in 0.. {
            std::thread::sleep(Duration::from_millis(700));
            if writeln!(sensor_tx, "reading {i}").is_err() {
                break;
            }
        }
    });

    // Taken once, before the first turn: from then on the loop keeps its
    // kernel object exact for a host that polls it.
    let fd_mode = if lp.backend_fd().is_some() {
        "its backend fd"
    } else {
        "its fds, listed"
    };
    cli::tell!("host: watching the loop through {fd_mode}");
    let mut host = Host {
        pfds: Vec::new(),
        watched: Vec::new(),
        seen: Vec::new(),
        wakes: 0,
    };
    let mut st = State::default();
    let (mut readings, mut callbacks) = (0u64, 0usize);
    let end = Instant::now() + Duration::from_secs(args.seconds);
    let mut out = io::stdout();
    while Instant::now() < end {
        let until_end = end.saturating_duration_since(Instant::now());
        let timeout = lp.next_timeout().map_or(until_end, |t| t.min(until_end));
        if host.poll(sensor_rx.as_raw_fd(), &mut lp, Some(timeout))? {
            let mut buf = [0; 256];
            while let Ok(n @ 1..) = sensor_rx.read(&mut buf) {
                readings += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
            }
        }
        callbacks += host.run_loop(&mut lp, &mut st)?;
    }
    let _ = writeln!(
        out,
        "host: {} wakes, {readings} readings; loop: {callbacks} callbacks, {} ticks, {} bytes echoed",
        host.wakes, st.ticks, st.echoed
    );
    Ok(())
}
