//! Model-based fuzzing of the EventLoop's sources, on every backend.
//!
//! proptest generates random sequences of add / modify / pause / resume
//! (into the same loop or the other of two) / remove / discard / dropping a
//! paused source / taking a paused source back / peer writes / one
//! non-blocking iteration, and compares every iteration with a plain model:
//! exactly the sources that are ready run, once each, with the right bits,
//! and every callback that runs is the one currently registered for its
//! socket (no event reaches a paused, removed or replaced source). Pauses
//! keep their kernel registration until the next wait, so sequences that
//! pause, close, reuse fd numbers and resume before iterating are what this
//! exercises. After each sequence the open fd count is back to baseline.
//!
//! `MUXLOOP_FUZZ_CASES` sets the sequences per backend (2,000 by default).

mod util;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use muxloop::{BackendKind, EventLoop, Interest, Paused, PostAction, SourceId};
use proptest::prelude::*;
use util::*;

/// Sockets per sequence.
const K: usize = 4;
/// Loops per sequence.
const L: usize = 2;

#[derive(Clone, Debug)]
enum Op {
    Add(usize, u8, usize),
    Modify(usize, u8),
    Disable(usize),
    Enable(usize, u8),
    Pause(usize),
    Resume(usize, u8, usize),
    Remove(usize),
    Discard(usize),
    DropPaused(usize),
    TakeBack(usize),
    PeerWrite(usize),
    Run(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let i = 0..K;
    let l = 0..L;
    let bits = 1u8..=3;
    prop_oneof![
        4 => (i.clone(), bits.clone(), l.clone()).prop_map(|(i, b, l)| Op::Add(i, b, l)),
        1 => (i.clone(), bits.clone()).prop_map(|(i, b)| Op::Modify(i, b)),
        2 => i.clone().prop_map(Op::Disable),
        2 => (i.clone(), bits.clone()).prop_map(|(i, b)| Op::Enable(i, b)),
        4 => i.clone().prop_map(Op::Pause),
        4 => (i.clone(), bits, l.clone()).prop_map(|(i, b, l)| Op::Resume(i, b, l)),
        2 => i.clone().prop_map(Op::Remove),
        1 => i.clone().prop_map(Op::Discard),
        1 => i.clone().prop_map(Op::DropPaused),
        1 => i.clone().prop_map(Op::TakeBack),
        3 => i.prop_map(Op::PeerWrite),
        5 => l.prop_map(Op::Run),
    ]
}

fn interest(bits: u8) -> Interest {
    Interest::from_bits(bits).expect("1..=3")
}

/// What a callback records: socket, callback serial, readable, writable.
type Log = Vec<(usize, u64, bool, bool)>;

/// Where one socket's reading end is.
enum Place {
    Hand(UnixStream),
    Loop {
        lp: usize,
        id: SourceId<UnixStream>,
        interest: Interest,
        /// Disabled: registered, not watched.
        disabled: bool,
    },
    Paused(Paused<Log, UnixStream>),
    /// Transient, while an op moves the socket.
    Moving,
}

struct Socket {
    place: Place,
    peer: UnixStream,
    /// Bytes written by the peer and not read yet.
    pending: usize,
    /// Serial of the callback this socket was last added with.
    serial: u64,
}

fn callback(
    i: usize,
    serial: u64,
) -> impl FnMut(
    &mut EventLoop<Log>,
    &mut UnixStream,
    muxloop::SourceEvent<UnixStream>,
    &mut Log,
) -> PostAction {
    move |_, sock, ev, log| {
        if ev.is_readable() {
            drain(sock);
        }
        log.push((i, serial, ev.is_readable(), ev.is_writable()));
        PostAction::Continue
    }
}

fn fresh(sock: &mut Socket) {
    let (a, b) = pair();
    sock.place = Place::Hand(a);
    sock.peer = b;
    sock.pending = 0;
}

fn fail(e: std::io::Error) -> TestCaseError {
    TestCaseError::fail(e.to_string())
}

fn step(
    loops: &mut [EventLoop<Log>],
    socks: &mut [Socket],
    next_serial: &mut u64,
    op: &Op,
) -> Result<(), TestCaseError> {
    match *op {
        Op::Add(i, bits, l) => {
            if let Place::Hand(_) = socks[i].place {
                let Place::Hand(s) = std::mem::replace(&mut socks[i].place, Place::Moving) else {
                    unreachable!()
                };
                *next_serial += 1;
                socks[i].serial = *next_serial;
                let id = loops[l]
                    .add(s, interest(bits), callback(i, *next_serial))
                    .map_err(fail)?;
                socks[i].place = Place::Loop {
                    lp: l,
                    id,
                    interest: interest(bits),
                    disabled: false,
                };
            }
        }
        Op::Modify(i, bits) => {
            if let Place::Loop {
                lp,
                id,
                interest: ref mut cur,
                ..
            } = socks[i].place
            {
                loops[lp].modify(id, interest(bits)).map_err(fail)?;
                *cur = interest(bits);
            }
        }
        Op::Disable(i) => {
            if let Place::Loop {
                lp,
                id,
                ref mut disabled,
                ..
            } = socks[i].place
            {
                loops[lp].disable(id).map_err(fail)?;
                prop_assert!(loops[lp].is_disabled(id));
                prop_assert!(loops[lp].source(id).is_some(), "a disabled source is kept");
                *disabled = true;
            }
        }
        Op::Enable(i, bits) => {
            if let Place::Loop {
                lp,
                id,
                interest: ref mut cur,
                ref mut disabled,
            } = socks[i].place
            {
                loops[lp].enable(id, interest(bits)).map_err(fail)?;
                prop_assert!(!loops[lp].is_disabled(id));
                *cur = interest(bits);
                *disabled = false;
            }
        }
        Op::Pause(i) => {
            if let Place::Loop { lp, id, .. } = socks[i].place {
                let paused = loops[lp].pause(id).map_err(fail)?;
                prop_assert!(loops[lp].source(id).is_none(), "paused id still resolves");
                socks[i].place = Place::Paused(paused);
            }
        }
        Op::Resume(i, bits, l) => {
            if let Place::Paused(_) = socks[i].place {
                let Place::Paused(p) = std::mem::replace(&mut socks[i].place, Place::Moving) else {
                    unreachable!()
                };
                let id = loops[l].resume(p, interest(bits)).map_err(fail)?;
                socks[i].place = Place::Loop {
                    lp: l,
                    id,
                    interest: interest(bits),
                    disabled: false,
                };
            }
        }
        Op::Remove(i) => {
            if let Place::Loop { lp, id, .. } = socks[i].place {
                let s = loops[lp].remove(id).map_err(fail)?;
                socks[i].place = Place::Hand(s);
            }
        }
        Op::Discard(i) => {
            if let Place::Loop { lp, id, .. } = socks[i].place {
                loops[lp].discard(id).map_err(fail)?;
                fresh(&mut socks[i]);
            }
        }
        Op::DropPaused(i) => {
            if let Place::Paused(_) = socks[i].place {
                socks[i].place = Place::Moving; // drops (closes) it
                fresh(&mut socks[i]);
            }
        }
        Op::TakeBack(i) => {
            if let Place::Paused(_) = socks[i].place {
                let Place::Paused(p) = std::mem::replace(&mut socks[i].place, Place::Moving) else {
                    unreachable!()
                };
                socks[i].place = Place::Hand(p.into_source());
            }
        }
        Op::PeerWrite(i) => {
            socks[i].peer.write_all(b"x").map_err(fail)?;
            socks[i].pending += 1;
        }
        Op::Run(l) => {
            let mut log = Log::new();
            loops[l]
                .run_once(Some(Duration::ZERO), &mut log)
                .map_err(fail)?;
            log.sort();
            let mut want = Log::new();
            for (i, s) in socks.iter_mut().enumerate() {
                if let Place::Loop {
                    lp,
                    interest,
                    disabled,
                    ..
                } = s.place
                {
                    if lp != l || disabled {
                        continue;
                    }
                    let readable = interest.is_readable() && s.pending > 0;
                    let writable = interest.is_writable();
                    if readable || writable {
                        want.push((i, s.serial, readable, writable));
                    }
                    if readable {
                        s.pending = 0;
                    }
                }
            }
            prop_assert_eq!(log, want, "callbacks run by loop {}", l);
        }
    }
    Ok(())
}

fn run_sequence(kind: BackendKind, ops: &[Op]) -> Result<(), TestCaseError> {
    let baseline = open_fds();
    {
        let mut loops: Vec<EventLoop<Log>> = (0..L)
            .map(|_| EventLoop::with_backend(kind))
            .collect::<Result<_, _>>()
            .map_err(fail)?;
        let mut socks: Vec<Socket> = (0..K)
            .map(|_| {
                let (a, b) = pair();
                Socket {
                    place: Place::Hand(a),
                    peer: b,
                    pending: 0,
                    serial: 0,
                }
            })
            .collect();
        let mut serial = 0;
        for (n, op) in ops.iter().enumerate() {
            step(&mut loops, &mut socks, &mut serial, op)
                .map_err(|e| TestCaseError::fail(format!("step {n} {op:?}: {e}")))?;
        }
    }
    prop_assert_eq!(open_fds(), baseline, "fd count after the sequence");
    Ok(())
}

fn fuzz(kind: BackendKind) {
    // One backend at a time: the fd-count check needs this binary's tests
    // to run alone.
    let (_serial, mut runner) = fuzz_runner("MUXLOOP_FUZZ_CASES", 500, 2_000);
    let cases = runner.config().cases;
    let result = runner.run(&proptest::collection::vec(op(), 1..50), |ops| {
        run_sequence(kind, &ops)
    });
    if let Err(e) = result {
        panic!("{kind}: {e}");
    }
    eprintln!("{kind}: {cases} sequences passed");
}

/// The cases, instantiated once per backend below.
mod cases {
    use muxloop::BackendKind;

    pub fn matches_the_model(kind: BackendKind) {
        super::fuzz(kind)
    }
}

per_backend!(matches_the_model);
