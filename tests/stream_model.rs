//! Model-based fuzzing of the transport, on every backend: random
//! sequences of writes (plain and vectored, random sizes), slow and paused
//! peer reads, pause/resume reading, write_eof, close, abort, peer writes,
//! peer FIN and RST, against a model of what must hold:
//!
//! * the peer receives a prefix of what was written, in order, and all of
//!   it before EOF after a `close` (unless aborted or reset);
//! * `abort` drops, writes after `close`/`write_eof`/`abort` are ignored;
//! * `connection_made` first, `connection_lost` exactly once and last,
//!   nothing after it; its error is `None` unless the peer reset;
//! * pause/resume-writing strictly alternate, at the thresholds (pause
//!   above high, resume at or below low), and with a protocol that honours
//!   pause the buffer stays within high + one write;
//! * the fd count is back to its baseline after every sequence.
//!
//! `MUXLOOP_FUZZ_CASES` sets the sequences per backend (100, or 500 with
//! `MUXLOOP_LONG_TESTS`).

#[macro_use]
mod util;

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use muxloop::stream::{self, ConnId, Protocol, Transport};
use muxloop::{BackendKind, EventLoop};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use util::*;

#[derive(Clone, Debug)]
enum Op {
    Write(usize),
    WriteVectored(usize, usize),
    PeerRead(usize),
    PeerWrite(usize),
    PauseReading,
    ResumeReading,
    WriteEof,
    Close,
    Abort,
    PeerFin,
    PeerRst,
    Idle,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1usize..150_000).prop_map(Op::Write),
        2 => (0usize..60_000, 0usize..60_000).prop_map(|(a, b)| Op::WriteVectored(a, b)),
        6 => (1usize..300_000).prop_map(Op::PeerRead),
        2 => (1usize..50_000).prop_map(Op::PeerWrite),
        1 => Just(Op::PauseReading),
        1 => Just(Op::ResumeReading),
        1 => Just(Op::WriteEof),
        1 => Just(Op::Close),
        1 => Just(Op::Abort),
        1 => Just(Op::PeerFin),
        1 => Just(Op::PeerRst),
        2 => Just(Op::Idle),
    ]
}

fn limits() -> impl Strategy<Value = (usize, usize)> {
    prop_oneof![
        Just((0, 0)),
        Just((64 * 1024, 16 * 1024)),
        (0usize..300_000).prop_flat_map(|h| (Just(h), 0..=h)),
    ]
}

fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(2_654_435_761) >> 13) as u8
}

#[derive(Clone, Debug, PartialEq)]
enum Ev {
    Made,
    Data(usize),
    Eof,
    Pause { size: usize, high: usize },
    Resume { size: usize, low: usize },
    Lost(Option<io::ErrorKind>),
}

#[derive(Default)]
struct Seen {
    events: Vec<Ev>,
    /// Bytes the peer wrote that the protocol received.
    received: usize,
    paused: bool,
}

struct Recorder {
    keep_open: bool,
    limits: (usize, usize),
}

impl Protocol<Seen> for Recorder {
    fn connection_made(&mut self, t: &mut Transport<'_, Seen>, seen: &mut Seen) {
        t.set_write_buffer_limits(self.limits.0, self.limits.1)
            .unwrap();
        seen.events.push(Ev::Made);
    }

    fn data_received(&mut self, _: &mut Transport<'_, Seen>, data: &[u8], seen: &mut Seen) {
        assert!(!matches!(seen.events.last(), Some(Ev::Lost(_))));
        for (k, b) in data.iter().enumerate() {
            assert_eq!(
                *b,
                pattern(seen.received + k),
                "peer byte {}",
                seen.received + k
            );
        }
        seen.received += data.len();
        seen.events.push(Ev::Data(data.len()));
    }

    fn eof_received(&mut self, _: &mut Transport<'_, Seen>, seen: &mut Seen) -> bool {
        seen.events.push(Ev::Eof);
        self.keep_open
    }

    fn pause_writing(&mut self, t: &mut Transport<'_, Seen>, seen: &mut Seen) {
        seen.paused = true;
        seen.events.push(Ev::Pause {
            size: t.write_buffer_size(),
            high: t.write_buffer_limits().0,
        });
    }

    fn resume_writing(&mut self, t: &mut Transport<'_, Seen>, seen: &mut Seen) {
        seen.paused = false;
        seen.events.push(Ev::Resume {
            size: t.write_buffer_size(),
            low: t.write_buffer_limits().1,
        });
    }

    fn connection_lost(
        &mut self,
        _: &mut Transport<'_, Seen>,
        e: Option<io::Error>,
        seen: &mut Seen,
    ) {
        seen.events.push(Ev::Lost(e.map(|e| e.kind())));
    }
}

/// A connected TCP pair over loopback: (server side, non-blocking; peer).
fn tcp_pair(listener: &TcpListener) -> (TcpStream, TcpStream) {
    let peer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (conn, _) = listener.accept().unwrap();
    conn.set_nonblocking(true).unwrap();
    peer.set_nonblocking(true).unwrap();
    (conn, peer)
}

struct Run {
    lp: EventLoop<Seen>,
    seen: Seen,
    id: ConnId<Seen>,
    peer: Option<TcpStream>,
    /// Bytes the transport accepted (the model's view), and what the peer
    /// has read of them.
    accepted: usize,
    peer_got: usize,
    peer_eof: bool,
    peer_sent: usize,
    closing: bool,
    aborted: bool,
    eof_written: bool,
    reset: bool,
    peer_fin: bool,
    peer_closed: bool,
    max_write: usize,
    max_buffer: usize,
}

impl Run {
    fn iterate(&mut self) {
        self.lp
            .run_once(Some(Duration::ZERO), &mut self.seen)
            .unwrap();
    }

    fn lost(&self) -> bool {
        matches!(self.seen.events.last(), Some(Ev::Lost(_)))
    }

    /// Writes through the transport if the protocol would (it honours
    /// pause); returns whether it wrote.
    fn write(&mut self, parts: &[usize]) {
        if self.seen.paused {
            return;
        }
        let start = self.accepted;
        let mut bufs = Vec::new();
        let mut at = start;
        for &n in parts {
            bufs.push((at..at + n).map(pattern).collect::<Vec<u8>>());
            at += n;
        }
        let total = at - start;
        let refuses = self.closing || self.aborted || self.eof_written;
        let size = stream::with_transport(&mut self.lp, self.id, |t| {
            let before = t.write_buffer_size();
            if bufs.len() == 1 {
                t.write(&bufs[0]);
            } else {
                let slices: Vec<&[u8]> = bufs.iter().map(|b| b.as_slice()).collect();
                t.write_vectored(&slices);
            }
            (before, t.write_buffer_size())
        });
        if let Some((before, after)) = size {
            if refuses {
                assert_eq!(after, before, "a write after close/eof/abort is ignored");
            } else if !self.reset {
                self.accepted += total;
            }
            self.max_write = self.max_write.max(total);
            self.max_buffer = self.max_buffer.max(after);
        }
    }

    /// Reads up to `n` bytes at the peer; checks they continue the stream.
    fn peer_read(&mut self, n: usize) {
        let Some(peer) = self.peer.as_mut() else {
            return;
        };
        let mut buf = vec![0; n.min(1 << 20)];
        match peer.read(&mut buf) {
            Ok(0) => self.peer_eof = true,
            Ok(k) => {
                for (i, b) in buf[..k].iter().enumerate() {
                    assert_eq!(*b, pattern(self.peer_got + i), "byte {}", self.peer_got + i);
                }
                self.peer_got += k;
                assert!(
                    self.reset || self.peer_got <= self.accepted,
                    "more arrived than was written"
                );
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => self.peer_eof = true, // reset
        }
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Write(n) => self.write(&[n]),
            Op::WriteVectored(a, b) => self.write(&[a, b]),
            Op::PeerRead(n) => self.peer_read(n),
            Op::PeerWrite(n) => {
                if let Some(peer) = self.peer.as_mut().filter(|_| !self.peer_fin) {
                    let data: Vec<u8> = (self.peer_sent..self.peer_sent + n).map(pattern).collect();
                    if let Ok(k) = peer.write(&data) {
                        self.peer_sent += k;
                    }
                }
            }
            Op::PauseReading => {
                stream::with_transport(&mut self.lp, self.id, |t| t.pause_reading());
            }
            Op::ResumeReading => {
                stream::with_transport(&mut self.lp, self.id, |t| t.resume_reading());
            }
            Op::WriteEof => {
                if stream::with_transport(&mut self.lp, self.id, |t| t.write_eof()).is_some() {
                    self.eof_written = true;
                }
            }
            Op::Close => {
                if stream::with_transport(&mut self.lp, self.id, |t| t.close()).is_some() {
                    self.closing = true;
                }
            }
            Op::Abort => {
                if stream::with_transport(&mut self.lp, self.id, |t| t.abort()).is_some() {
                    self.aborted = true;
                }
            }
            Op::PeerFin => {
                if let Some(peer) = self.peer.as_ref() {
                    let _ = peer.shutdown(Shutdown::Write);
                    self.peer_fin = true;
                }
            }
            Op::PeerRst => {
                if let Some(peer) = self.peer.take() {
                    linger_zero(&peer);
                    drop(peer);
                    self.reset = true;
                }
            }
            Op::Idle => {}
        }
        self.iterate();
    }

    /// Closes, lets the peer read everything, and checks the ending.
    fn finish(&mut self, high: usize) -> Result<(), TestCaseError> {
        stream::with_transport(&mut self.lp, self.id, |t| {
            t.resume_reading();
            t.close();
        });
        let started = Instant::now();
        while !(self.lost() && (self.peer_eof || self.peer.is_none())) {
            self.iterate();
            self.peer_read(1 << 20);
            if self.peer_eof && !self.peer_closed {
                // EOF read: the peer closes too, as peers do (the
                // transport waits for that before it closes its socket).
                self.peer_closed = true;
                if let Some(peer) = self.peer.as_ref() {
                    let _ = peer.shutdown(Shutdown::Both);
                }
            }
            prop_assert!(
                started.elapsed() < Duration::from_secs(10),
                "did not finish: {:?}",
                self.seen.events
            );
        }
        let events = &self.seen.events;
        prop_assert_eq!(&events[0], &Ev::Made);
        let lost: Vec<usize> = (0..events.len())
            .filter(|&i| matches!(events[i], Ev::Lost(_)))
            .collect();
        prop_assert_eq!(
            lost,
            vec![events.len() - 1],
            "lost once, last: {:?}",
            events
        );
        prop_assert!(events.iter().filter(|e| **e == Ev::Eof).count() <= 1);
        let mut paused = false;
        for e in events {
            match *e {
                Ev::Pause { size, high } => {
                    prop_assert!(!paused, "pause twice: {:?}", events);
                    prop_assert!(size > high, "pause at {} <= high {}", size, high);
                    paused = true;
                }
                Ev::Resume { size, low } => {
                    prop_assert!(paused, "resume without pause: {:?}", events);
                    prop_assert!(size <= low, "resume at {} > low {}", size, low);
                    paused = false;
                }
                _ => {}
            }
        }
        prop_assert!(
            self.max_buffer <= high + self.max_write,
            "buffer {} above high {} + one write {}",
            self.max_buffer,
            high,
            self.max_write
        );
        if let Some(Ev::Lost(error)) = events.last() {
            if !self.reset {
                prop_assert_eq!(*error, None, "{:?}", events);
            }
        }
        if !self.aborted && !self.reset {
            prop_assert_eq!(self.peer_got, self.accepted, "everything written arrived");
        }
        prop_assert_eq!(self.lp.source_count(), 0);
        Ok(())
    }
}

fn run(
    kind: BackendKind,
    limits: (usize, usize),
    keep_open: bool,
    ops: &[Op],
) -> Result<(), TestCaseError> {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let baseline = open_fds();
    {
        let mut lp = EventLoop::<Seen>::with_backend(kind).unwrap();
        let (conn, peer) = tcp_pair(&listener);
        let id = stream::attach(&mut lp, conn, Recorder { keep_open, limits }).unwrap();
        let mut r = Run {
            lp,
            seen: Seen::default(),
            id,
            peer: Some(peer),
            accepted: 0,
            peer_got: 0,
            peer_eof: false,
            peer_sent: 0,
            closing: false,
            aborted: false,
            eof_written: false,
            reset: false,
            peer_fin: false,
            peer_closed: false,
            max_write: 0,
            max_buffer: 0,
        };
        r.iterate();
        for op in ops {
            r.apply(op);
        }
        r.finish(limits.0)?;
    }
    prop_assert_eq!(open_fds(), baseline, "fds leaked");
    Ok(())
}

fn fuzz(kind: BackendKind) {
    let (_serial, mut runner) = fuzz_runner("MUXLOOP_FUZZ_CASES", 100, 500);
    let strategy = (limits(), any::<bool>(), prop::collection::vec(op(), 1..40));
    runner
        .run(&strategy, |(limits, keep_open, ops)| {
            run(kind, limits, keep_open, &ops)
        })
        .unwrap();
}

mod cases {
    pub fn transport_matches_the_model(kind: muxloop::BackendKind) {
        super::fuzz(kind);
    }
}

per_backend!(transport_matches_the_model);
