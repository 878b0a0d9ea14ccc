//! Fault injection: a backend wrapper that makes calls fail — EINTR,
//! EAGAIN, EBADF, ENOENT, EEXIST, ENOMEM, ENOSPC — or return short results,
//! at random, around every real backend. Random operation sequences run
//! through it; the invariants: no panic, every injected error surfaces with
//! its kind (EINTR never escapes `select`), a failed register or modify
//! leaves the key as it was, and afterwards — with injection off — the
//! selector and the kernel agree: a clean `select` reports exactly what the
//! model expects.
//!
//! `MUXLOOP_FAULT_CASES` sets the sequences per backend (2,000 by default,
//! 10,000 with `MUXLOOP_LONG_TESTS`).

mod util;

use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use muxloop::{BackendKind, Events, Interest, Ready, Selector, Token};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use util::*;

const ERRNOS: [i32; 7] = [
    libc::EINTR,
    libc::EAGAIN,
    libc::EBADF,
    libc::ENOENT,
    libc::EEXIST,
    libc::ENOMEM,
    libc::ENOSPC,
];

/// Shared switchboard of a `Faulty` backend.
struct Faults {
    on: AtomicBool,
    rng: AtomicU64,
    injected: AtomicU64,
    /// errno of the last injected failure, or 0.
    last: AtomicU64,
}

impl Faults {
    fn roll(&self, one_in: u64) -> Option<u64> {
        if !self.on.load(Ordering::SeqCst) {
            return None;
        }
        // xorshift, shared so a sequence is reproducible from its seed.
        let mut x = self.rng.load(Ordering::SeqCst);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.store(x, Ordering::SeqCst);
        (x % one_in == 0).then_some(x / one_in)
    }

    fn errno(&self, pick: u64) -> io::Error {
        let errno = ERRNOS[(pick % ERRNOS.len() as u64) as usize];
        self.injected.fetch_add(1, Ordering::SeqCst);
        self.last.store(errno as u64, Ordering::SeqCst);
        io::Error::from_raw_os_error(errno)
    }
}

/// The hooks that inject the faults.
struct Faulty {
    faults: Arc<Faults>,
    /// A short result decided before the wait: keep this many of its
    /// records (modulo their number).
    truncate: Option<usize>,
}

impl Hooks for Faulty {
    fn before(&mut self, call: Call) -> io::Result<()> {
        match call {
            // A failing add or modify must leave the kernel unchanged: fail
            // before it.
            Call::Add | Call::Modify => match self.faults.roll(4) {
                Some(pick) => Err(self.faults.errno(pick)),
                None => Ok(()),
            },
            Call::Wait => match self.faults.roll(3) {
                // Interrupted before the kernel answered.
                Some(pick) if pick % 3 == 0 => {
                    self.faults.injected.fetch_add(1, Ordering::SeqCst);
                    Err(io::Error::from_raw_os_error(libc::EINTR))
                }
                // A short result: only a prefix of what the kernel reported.
                Some(pick) if pick % 3 == 1 => {
                    self.truncate = Some(pick as usize / 3);
                    Ok(())
                }
                // Any other error, surfacing from select.
                Some(pick) => {
                    let e = self.faults.errno(pick / 3);
                    if e.kind() == io::ErrorKind::Interrupted {
                        self.faults.injected.fetch_sub(1, Ordering::SeqCst);
                        return Ok(());
                    }
                    Err(e)
                }
                None => Ok(()),
            },
            _ => Ok(()),
        }
    }

    fn after(
        &mut self,
        call: Call,
        res: io::Result<()>,
        events: &mut Vec<(Token, Ready)>,
    ) -> io::Result<()> {
        match call {
            // The kernel forgets, but the call reports an error anyway.
            Call::Delete => match self.faults.roll(3) {
                Some(pick) => Err(self.faults.errno(pick)),
                None => res,
            },
            Call::Wait => {
                res?;
                if let Some(keep) = self.truncate.take() {
                    events.truncate(keep % (events.len() + 1));
                    self.faults.injected.fetch_add(1, Ordering::SeqCst);
                }
                Ok(())
            }
            _ => res,
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    Register(usize, u8),
    Modify(usize, u8),
    Unregister(usize),
    PeerWrite(usize),
    Select,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..4usize, 1u8..=3).prop_map(|(i, b)| Op::Register(i, b)),
        2 => (0..4usize, 1u8..=3).prop_map(|(i, b)| Op::Modify(i, b)),
        2 => (0..4usize).prop_map(Op::Unregister),
        2 => (0..4usize).prop_map(Op::PeerWrite),
        3 => Just(Op::Select),
    ]
}

fn injected_kind(faults: &Faults) -> io::ErrorKind {
    io::Error::from_raw_os_error(faults.last.load(Ordering::SeqCst) as i32).kind()
}

fn run(kind: BackendKind, seed: u64, ops: &[Op], total: &AtomicU64) -> Result<(), TestCaseError> {
    let faults = Arc::new(Faults {
        on: AtomicBool::new(true),
        rng: AtomicU64::new(seed | 1),
        injected: AtomicU64::new(0),
        last: AtomicU64::new(0),
    });
    let backend = Hooked::new(
        kind,
        Faulty {
            faults: faults.clone(),
            truncate: None,
        },
    );
    let mut sel: Selector<u32> = Selector::from_backend(Box::new(backend));
    let socks: Vec<(UnixStream, UnixStream)> = (0..4).map(|_| pair()).collect();
    let fd = |i: usize| socks[i].0.as_raw_fd();
    let mut model: Vec<Option<Interest>> = vec![None; 4];
    let mut pending = [false; 4];
    for (n, op) in ops.iter().enumerate() {
        let before = faults.injected.load(Ordering::SeqCst);
        match *op {
            Op::Register(i, b) => {
                let int = Interest::from_bits(b).expect("1..=3");
                let res = sel.register(fd(i), int, n as u32).map(|_| ());
                let faulted = faults.injected.load(Ordering::SeqCst) > before;
                match (model[i], res) {
                    (Some(_), Err(e)) => prop_assert_eq!(e.kind(), io::ErrorKind::AlreadyExists),
                    (None, Ok(())) => {
                        prop_assert!(!faulted, "register succeeded through a fault");
                        model[i] = Some(int);
                    }
                    (None, Err(e)) => {
                        prop_assert!(faulted, "register failed without a fault: {e}");
                        prop_assert_eq!(e.kind(), injected_kind(&faults));
                    }
                    (Some(_), Ok(())) => return Err(TestCaseError::fail("registered twice")),
                }
            }
            Op::Modify(i, b) => {
                let int = Interest::from_bits(b).expect("1..=3");
                let res = sel.modify(fd(i), int, n as u32).map(|_| ());
                let faulted = faults.injected.load(Ordering::SeqCst) > before;
                match (model[i], res) {
                    (None, Err(e)) => prop_assert_eq!(e.kind(), io::ErrorKind::NotFound),
                    (Some(_), Ok(())) => model[i] = Some(int),
                    (Some(old), Err(e)) => {
                        prop_assert!(faulted, "modify failed without a fault: {e}");
                        prop_assert_eq!(e.kind(), injected_kind(&faults));
                        prop_assert_eq!(sel.key(fd(i)).map(|k| k.interest()), Some(old));
                    }
                    (None, Ok(())) => return Err(TestCaseError::fail("modified an unknown fd")),
                }
            }
            Op::Unregister(i) => {
                let res = sel.unregister(fd(i));
                match model[i].take() {
                    // Whatever the backend said, the key is gone.
                    Some(_) => prop_assert!(res.is_ok(), "unregister: {:?}", res.err()),
                    None => {
                        prop_assert_eq!(res.err().map(|e| e.kind()), Some(io::ErrorKind::NotFound))
                    }
                }
            }
            Op::PeerWrite(i) => {
                (&socks[i].1)
                    .write_all(b"x")
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                pending[i] = true;
            }
            Op::Select => {
                let mut events = Events::new();
                match sel.select(&mut events, Some(Duration::ZERO)) {
                    Ok(_) => {
                        // Possibly short, never wrong.
                        for ev in &events {
                            let i = (0..4).find(|&i| fd(i) == ev.fd()).expect("one of ours");
                            let int = model[i].expect("registered");
                            prop_assert!(
                                !ev.ready().is_readable() || (int.is_readable() && pending[i])
                            );
                            prop_assert!(!ev.ready().is_writable() || int.is_writable());
                        }
                    }
                    Err(e) => {
                        prop_assert!(
                            e.kind() != io::ErrorKind::Interrupted,
                            "EINTR escaped select"
                        );
                        prop_assert_eq!(e.kind(), injected_kind(&faults));
                    }
                }
            }
        }
        for (i, want) in model.iter().enumerate() {
            prop_assert_eq!(
                sel.key(fd(i)).map(|k| k.interest()),
                *want,
                "key {} after {:?}",
                i,
                op
            );
        }
    }
    total.fetch_add(faults.injected.load(Ordering::SeqCst), Ordering::SeqCst);
    // Injection off: the kernel must agree with the selector exactly.
    faults.on.store(false, Ordering::SeqCst);
    let mut events = Events::new();
    sel.select(&mut events, Some(Duration::ZERO))
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    for i in 0..4 {
        let want_r = model[i].is_some_and(|m| m.is_readable()) && pending[i];
        let want_w = model[i].is_some_and(|m| m.is_writable());
        let got = events.iter().find(|e| e.fd() == fd(i)).map(|e| e.ready());
        prop_assert_eq!(
            (
                got.is_some_and(|r| r.is_readable()),
                got.is_some_and(|r| r.is_writable())
            ),
            (want_r, want_w),
            "fd slot {} after faults",
            i
        );
    }
    Ok(())
}

fn fuzz(kind: BackendKind) {
    init_logging();
    let cases = env_cases("MUXLOOP_FAULT_CASES", 2_000, 10_000);
    let total = AtomicU64::new(0);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (any::<u64>(), proptest::collection::vec(op(), 1..40));
    if let Err(e) = runner.run(&strategy, |(seed, ops)| run(kind, seed, &ops, &total)) {
        panic!("{kind}: {e}");
    }
    let injected = total.load(Ordering::SeqCst);
    eprintln!("{kind}: {cases} sequences, {injected} faults injected");
    assert!(
        injected > u64::from(cases),
        "too few faults injected: {injected}"
    );
}

/// The cases, instantiated once per backend below.
mod cases {
    use muxloop::BackendKind;

    pub fn survives_faults(kind: BackendKind) {
        super::fuzz(kind)
    }
}

per_backend!(survives_faults);
