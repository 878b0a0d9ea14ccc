//! Model-based fuzzing of the Selector, on every backend.
//!
//! proptest generates random sequences of register / modify / set_interest /
//! unregister / key lookups / select(0) / peer writes / drains / peer
//! closes / "close and reuse" of a registered fd number (an atomic dup2 of a
//! fresh socket onto it) / selector close, runs them against the real
//! selector and against a plain model, and compares after every step:
//! results and error kinds, keys, and — on every select — exactly which fds
//! are ready with which bits. select may never report an unregistered fd or
//! a bit outside the key's interest, and never miss a ready one. After each
//! sequence the process's open fd count is back to its baseline.
//!
//! `MUXLOOP_FUZZ_CASES` sets the sequences per backend (10,000 by default);
//! for a long run: `MUXLOOP_FUZZ_CASES=200000 cargo test --release --test model`.

mod util;

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use muxloop::{BackendKind, Events, Interest, Selector};
use proptest::prelude::*;
use util::*;

/// fd numbers per sequence.
const K: usize = 4;

#[derive(Clone, Debug)]
enum Op {
    Register(usize, u8),
    Modify(usize, u8),
    SetInterest(usize, u8),
    Unregister(usize),
    Key(usize),
    PeerWrite(usize),
    Drain(usize),
    PeerClose(usize),
    Replace(usize),
    Select,
    CloseSelector,
}

fn op() -> impl Strategy<Value = Op> {
    let i = 0..K;
    let bits = 1u8..=3;
    prop_oneof![
        4 => (i.clone(), bits.clone()).prop_map(|(i, b)| Op::Register(i, b)),
        2 => (i.clone(), bits.clone()).prop_map(|(i, b)| Op::Modify(i, b)),
        1 => (i.clone(), bits).prop_map(|(i, b)| Op::SetInterest(i, b)),
        2 => i.clone().prop_map(Op::Unregister),
        1 => i.clone().prop_map(Op::Key),
        3 => i.clone().prop_map(Op::PeerWrite),
        2 => i.clone().prop_map(Op::Drain),
        1 => i.clone().prop_map(Op::PeerClose),
        1 => i.prop_map(Op::Replace),
        5 => Just(Op::Select),
        1 => Just(Op::CloseSelector),
    ]
}

fn interest(bits: u8) -> Interest {
    Interest::from_bits(bits).expect("1..=3")
}

/// What the model believes about one fd number.
#[derive(Clone, Default)]
struct Slot {
    key: Option<(Interest, u32)>,
    pending: usize,
    peer_closed: bool,
    /// Replaced while registered: the kernel side is backend-defined until
    /// it is unregistered.
    unknown: bool,
}

struct Model {
    closed: bool,
    slots: Vec<Slot>,
}

struct Real {
    sel: Selector<u32>,
    own: Vec<UnixStream>,
    peers: Vec<Option<UnixStream>>,
}

fn check_kind(
    what: &str,
    res: io::Result<()>,
    want: Option<io::ErrorKind>,
) -> Result<(), TestCaseError> {
    match (res, want) {
        (Ok(()), None) => Ok(()),
        (Err(e), Some(kind)) if e.kind() == kind => Ok(()),
        (Err(e), Some(_))
            if want == Some(io::ErrorKind::Other) && e.to_string().contains("closed") =>
        {
            Ok(())
        }
        (got, want) => Err(TestCaseError::fail(format!(
            "{what}: got {got:?}, model says {want:?}"
        ))),
    }
}

/// The error the model expects for an operation on slot `i` that needs
/// (`registered`) or forbids (`!registered`) a key.
fn expect(m: &Model, i: usize, registered: bool) -> Option<io::ErrorKind> {
    if m.closed {
        Some(io::ErrorKind::Other)
    } else if registered && m.slots[i].key.is_none() {
        Some(io::ErrorKind::NotFound)
    } else if !registered && m.slots[i].key.is_some() {
        Some(io::ErrorKind::AlreadyExists)
    } else {
        None
    }
}

fn step(r: &mut Real, m: &mut Model, op: &Op, n: u32) -> Result<(), TestCaseError> {
    let fd = |i: usize| r.own[i].as_raw_fd();
    match *op {
        Op::Register(i, b) => {
            let want = expect(m, i, false);
            let res = r.sel.register(fd(i), interest(b), n).map(|_| ());
            check_kind("register", res, want)?;
            if want.is_none() {
                m.slots[i].key = Some((interest(b), n));
                m.slots[i].unknown = false;
            }
        }
        Op::Modify(i, b) | Op::SetInterest(i, b) => {
            let want = expect(m, i, true);
            let keep_data = matches!(op, Op::SetInterest(..));
            let res = if keep_data {
                r.sel.set_interest(fd(i), interest(b)).map(|_| ())
            } else {
                r.sel.modify(fd(i), interest(b), n).map(|_| ())
            };
            if want.is_none() && m.slots[i].unknown {
                // The number names another file now: the kernel may refuse
                // (epoll: ENOENT). Either way the key must be coherent.
                if res.is_ok() {
                    let old = m.slots[i].key.expect("registered");
                    m.slots[i].key = Some((interest(b), if keep_data { old.1 } else { n }));
                }
            } else {
                check_kind("modify", res, want)?;
                if want.is_none() {
                    let old = m.slots[i].key.expect("registered");
                    m.slots[i].key = Some((interest(b), if keep_data { old.1 } else { n }));
                }
            }
        }
        Op::Unregister(i) => {
            let want = expect(m, i, true);
            match r.sel.unregister(fd(i)) {
                Ok(key) => {
                    prop_assert!(want.is_none(), "unregister succeeded, model says {want:?}");
                    let (int, data) = m.slots[i].key.take().expect("registered");
                    prop_assert_eq!((key.interest(), key.into_data()), (int, data));
                    m.slots[i].unknown = false;
                }
                Err(e) => check_kind("unregister", Err(e), want)?,
            }
        }
        Op::Key(i) => {
            let got = r.sel.key(fd(i)).map(|k| (k.fd(), k.interest(), *k.data()));
            let want = m.slots[i].key.map(|(int, data)| (fd(i), int, data));
            prop_assert_eq!(got, want);
            if let Some(token) = r.sel.key(fd(i)).map(|k| k.token()) {
                prop_assert_eq!(r.sel.key_by_token(token).map(|k| k.fd()), Some(fd(i)));
            }
        }
        Op::PeerWrite(i) => {
            if let Some(p) = r.peers[i].as_mut() {
                p.write_all(b"x")
                    .map_err(|e| TestCaseError::fail(format!("peer write: {e}")))?;
                m.slots[i].pending += 1;
            }
        }
        Op::Drain(i) => {
            let mut buf = [0u8; 256];
            loop {
                match r.own[i].read(&mut buf) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(TestCaseError::fail(format!("drain: {e}"))),
                }
            }
            m.slots[i].pending = 0;
        }
        Op::PeerClose(i) => {
            if r.peers[i].take().is_some() {
                m.slots[i].peer_closed = true;
            }
        }
        Op::Replace(i) => {
            let (c, d) = pair();
            dup_onto(&c, fd(i));
            r.peers[i] = Some(d);
            let s = &mut m.slots[i];
            s.pending = 0;
            s.peer_closed = false;
            if s.key.is_some() {
                s.unknown = true;
            }
        }
        Op::Select => {
            let mut events = Events::new();
            let res = r.sel.select(&mut events, Some(Duration::ZERO));
            if m.closed {
                prop_assert!(res.is_err(), "select after close succeeded");
            } else {
                res.map_err(|e| TestCaseError::fail(format!("select: {e}")))?;
                check_events(r, m, &events)?;
            }
        }
        Op::CloseSelector => {
            r.sel.close();
            m.closed = true;
            for s in &mut m.slots {
                s.key = None;
                s.unknown = false;
            }
        }
    }
    check_keys(r, m)
}

fn check_keys(r: &Real, m: &Model) -> Result<(), TestCaseError> {
    let mut registered = 0;
    for (i, s) in m.slots.iter().enumerate() {
        let got = r
            .sel
            .key(r.own[i].as_raw_fd())
            .map(|k| (k.interest(), *k.data()));
        prop_assert_eq!(got, s.key, "key of slot {}", i);
        registered += usize::from(s.key.is_some());
    }
    prop_assert_eq!(r.sel.len(), registered);
    Ok(())
}

fn check_events(r: &Real, m: &Model, events: &Events) -> Result<(), TestCaseError> {
    let mut seen: HashMap<RawFd, muxloop::Ready> = HashMap::new();
    for ev in events {
        prop_assert!(
            seen.insert(ev.fd(), ev.ready()).is_none(),
            "fd {} reported twice",
            ev.fd()
        );
        let key = r.sel.key_by_token(ev.token());
        prop_assert!(key.is_some(), "event for an unregistered fd {}", ev.fd());
        let int = key.expect("checked").interest();
        prop_assert!(
            (!ev.ready().is_readable() || int.is_readable())
                && (!ev.ready().is_writable() || int.is_writable()),
            "fd {}: {:?} outside interest {:?}",
            ev.fd(),
            ev.ready(),
            int
        );
    }
    for (i, s) in m.slots.iter().enumerate() {
        let fd = r.own[i].as_raw_fd();
        let Some((int, _)) = s.key else {
            prop_assert!(!seen.contains_key(&fd), "unregistered fd {} reported", fd);
            continue;
        };
        if s.unknown {
            continue;
        }
        let readable = int.is_readable() && (s.pending > 0 || s.peer_closed);
        let writable = int.is_writable();
        match seen.get(&fd) {
            None => prop_assert!(
                !readable && !writable,
                "fd {} ready (r={} w={}) but not reported",
                fd,
                readable,
                writable
            ),
            Some(got) => {
                prop_assert_eq!(got.is_readable(), readable, "fd {} readable", fd);
                prop_assert_eq!(got.is_writable(), writable, "fd {} writable", fd);
            }
        }
    }
    Ok(())
}

fn run_sequence(kind: BackendKind, ops: &[Op]) -> Result<(), TestCaseError> {
    let baseline = open_fds();
    {
        let mut own = Vec::new();
        let mut peers = Vec::new();
        for _ in 0..K {
            let (a, b) = pair();
            own.push(a);
            peers.push(Some(b));
        }
        let mut real = Real {
            sel: Selector::with_backend(kind).map_err(|e| TestCaseError::fail(e.to_string()))?,
            own,
            peers,
        };
        let mut model = Model {
            closed: false,
            slots: vec![Slot::default(); K],
        };
        for (n, op) in ops.iter().enumerate() {
            step(&mut real, &mut model, op, n as u32)
                .map_err(|e| TestCaseError::fail(format!("step {n} {op:?}: {e}")))?;
        }
    }
    let after = open_fds();
    prop_assert_eq!(after, baseline, "fd count after the sequence");
    Ok(())
}

fn fuzz(kind: BackendKind) {
    // One backend at a time: the fd-count check needs this binary's tests
    // to run alone.
    let (_serial, mut runner) = fuzz_runner("MUXLOOP_FUZZ_CASES", 2_000, 10_000);
    let cases = runner.config().cases;
    let result = runner.run(&proptest::collection::vec(op(), 1..40), |ops| {
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
