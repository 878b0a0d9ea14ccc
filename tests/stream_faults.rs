//! Fault injection in the stream layer's I/O: a socket wrapper makes reads
//! and writes fail at random — EINTR and EAGAIN (spurious: the socket may
//! well be ready), short writes, and (when enabled) EPIPE or ECONNRESET —
//! under a protocol that sends and receives a known stream, on every
//! backend. Invariants: EINTR and EAGAIN never reach the protocol and lose
//! nothing (everything arrives, in order, both ways); a fatal error ends the
//! connection once with `connection_lost(Some(that error))` after a prefix
//! of the data; callbacks keep their order; fds return to their baseline.
//!
//! `MUXLOOP_FAULT_CASES` sets the sequences per backend (100, or 500 with
//! `MUXLOOP_LONG_TESTS`).

#[macro_use]
mod util;

use std::any::Any;
use std::cell::Cell;
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::rc::Rc;
use std::time::{Duration, Instant};

use muxloop::stream::{self, Addr, Protocol, StreamSocket, Transport};
use muxloop::{BackendKind, EventLoop};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use util::*;

fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(40_503) >> 7) as u8
}

/// Shared dice of one sequence.
struct Dice {
    rng: Cell<u64>,
    fatal: bool,
    /// The fatal error injected, if any.
    injected: Cell<Option<io::ErrorKind>>,
    transient: Cell<u64>,
}

impl Dice {
    fn roll(&self, one_in: u64) -> bool {
        let mut x = self.rng.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.set(x);
        x % one_in == 0
    }

    fn transient(&self) -> Option<io::Error> {
        if self.roll(8) {
            self.transient.set(self.transient.get() + 1);
            return Some(io::ErrorKind::Interrupted.into());
        }
        if self.roll(8) {
            self.transient.set(self.transient.get() + 1);
            return Some(io::ErrorKind::WouldBlock.into());
        }
        None
    }

    fn fatal(&self, errno: i32) -> Option<io::Error> {
        if self.fatal && self.injected.get().is_none() && self.roll(60) {
            let e = io::Error::from_raw_os_error(errno);
            self.injected.set(Some(e.kind()));
            return Some(e);
        }
        None
    }
}

struct Faulty {
    inner: UnixStream,
    dice: Rc<Dice>,
}

impl AsFd for Faulty {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.as_fd()
    }
}

impl StreamSocket for Faulty {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(e) = self.dice.transient() {
            return Err(e);
        }
        if let Some(e) = self.dice.fatal(libc::ECONNRESET) {
            return Err(e);
        }
        Read::read(&mut self.inner, buf)
    }

    fn send_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        if let Some(e) = self.dice.transient() {
            return Err(e);
        }
        let errno = if self.dice.roll(2) {
            libc::EPIPE
        } else {
            libc::ECONNRESET
        };
        if let Some(e) = self.dice.fatal(errno) {
            return Err(e);
        }
        // A short write: only part of the first buffer.
        if self.dice.roll(4) {
            if let Some(first) = bufs.iter().find(|b| !b.is_empty()) {
                let n = 1 + (self.dice.rng.get() as usize) % first.len();
                return self.inner.write(&first[..n]);
            }
        }
        Write::write_vectored(&mut self.inner, bufs)
    }

    fn shutdown_write(&mut self) -> io::Result<()> {
        self.inner.shutdown(std::net::Shutdown::Write)
    }

    fn peer_addr(&self) -> io::Result<Addr> {
        self.inner.peer_addr().map(Addr::Unix)
    }

    fn local_addr(&self) -> io::Result<Addr> {
        self.inner.local_addr().map(Addr::Unix)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[derive(Default)]
struct Seen {
    made: u32,
    received: usize,
    lost: Vec<Option<io::ErrorKind>>,
    after_lost: u32,
}

/// Sends `total` pattern bytes in chunks, honouring pause, then closes;
/// checks what it receives.
struct Sender {
    total: usize,
    sent: usize,
    chunk: usize,
}

impl Sender {
    fn pump(&mut self, t: &mut Transport<'_, Seen>) {
        while self.sent < self.total && t.write_buffer_size() <= t.write_buffer_limits().0 {
            let n = self.chunk.min(self.total - self.sent);
            let data: Vec<u8> = (self.sent..self.sent + n).map(pattern).collect();
            t.write(&data);
            self.sent += n;
        }
        if self.sent == self.total {
            t.close();
        }
    }
}

impl Protocol<Seen> for Sender {
    fn connection_made(&mut self, t: &mut Transport<'_, Seen>, seen: &mut Seen) {
        seen.made += 1;
        self.pump(t);
    }

    fn data_received(&mut self, _: &mut Transport<'_, Seen>, data: &[u8], seen: &mut Seen) {
        if !seen.lost.is_empty() {
            seen.after_lost += 1;
        }
        for (k, b) in data.iter().enumerate() {
            assert_eq!(*b, pattern(seen.received + k));
        }
        seen.received += data.len();
    }

    fn resume_writing(&mut self, t: &mut Transport<'_, Seen>, _: &mut Seen) {
        self.pump(t);
    }

    fn connection_lost(
        &mut self,
        _: &mut Transport<'_, Seen>,
        e: Option<io::Error>,
        seen: &mut Seen,
    ) {
        seen.lost.push(e.map(|e| e.kind()));
    }
}

fn run(
    kind: BackendKind,
    seed: u64,
    fatal: bool,
    total: usize,
    chunk: usize,
    incoming: usize,
) -> Result<(), TestCaseError> {
    let baseline = open_fds();
    let dice = Rc::new(Dice {
        rng: Cell::new(seed | 1),
        fatal,
        injected: Cell::new(None),
        transient: Cell::new(0),
    });
    let (a, mut peer) = pair();
    let mut lp = EventLoop::<Seen>::with_backend(kind).unwrap();
    let sender = Sender {
        total,
        sent: 0,
        chunk,
    };
    stream::attach(
        &mut lp,
        Faulty {
            inner: a,
            dice: dice.clone(),
        },
        sender,
    )
    .unwrap();
    let mut seen = Seen::default();
    let (mut got, mut peer_sent, mut peer_eof) = (0usize, 0usize, false);
    let mut buf = vec![0; 128 * 1024];
    let started = Instant::now();
    while seen.lost.is_empty() || !peer_eof {
        lp.run_once(Some(Duration::from_millis(5)), &mut seen)
            .unwrap();
        if peer_sent < incoming {
            let n = (incoming - peer_sent).min(10_000);
            let data: Vec<u8> = (peer_sent..peer_sent + n).map(pattern).collect();
            if let Ok(k) = peer.write(&data) {
                peer_sent += k;
            }
        }
        match peer.read(&mut buf) {
            Ok(0) => peer_eof = true,
            Ok(k) => {
                for (i, b) in buf[..k].iter().enumerate() {
                    prop_assert_eq!(*b, pattern(got + i), "byte {}", got + i);
                }
                got += k;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => peer_eof = true,
        }
        if peer_eof && peer_sent >= incoming {
            // As a peer does once it has read EOF.
            let _ = peer.shutdown(std::net::Shutdown::Both);
        }
        prop_assert!(
            started.elapsed() < Duration::from_secs(20),
            "stuck: {:?}",
            seen.lost
        );
    }
    prop_assert_eq!(seen.made, 1);
    prop_assert_eq!(seen.lost.len(), 1, "lost exactly once");
    prop_assert_eq!(seen.after_lost, 0, "nothing after lost");
    match dice.injected.get() {
        None => {
            prop_assert_eq!(seen.lost[0], None, "transient errors never surface");
            prop_assert_eq!(got, total, "everything sent arrived");
        }
        // Injected while the closed connection waited for the peer's EOF,
        // with everything delivered: nothing was lost, nothing to report.
        Some(_) if seen.lost[0].is_none() => {
            prop_assert_eq!(got, total, "a clean end only if everything arrived");
        }
        Some(kind) => {
            prop_assert_eq!(seen.lost[0], Some(kind), "the injected error is reported");
            prop_assert!(got <= total);
        }
    }
    drop(lp);
    drop(peer);
    prop_assert_eq!(open_fds(), baseline, "fds leaked");
    Ok(())
}

fn fuzz(kind: BackendKind) {
    let (_serial, mut runner) = fuzz_runner("MUXLOOP_FAULT_CASES", 100, 500);
    let strategy = (
        any::<u64>(),
        any::<bool>(),
        0usize..600_000,
        1usize..100_000,
        0usize..200_000,
    );
    runner
        .run(&strategy, |(seed, fatal, total, chunk, incoming)| {
            run(kind, seed, fatal, total, chunk, incoming)
        })
        .unwrap();
}

mod cases {
    pub fn stream_io_survives_faults(kind: muxloop::BackendKind) {
        super::fuzz(kind);
    }
}

per_backend!(stream_io_survives_faults);
