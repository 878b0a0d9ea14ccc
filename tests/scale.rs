//! Thousands of fds: every backend that can (select only where its fd set
//! grows) takes 5,000+ registrations and reports every ready one in a
//! single call. A separate test binary, so the
//! high fd numbers it uses never reach the select backend's tests.

mod util;

use std::io::Write;
use std::os::fd::AsRawFd;
use std::time::Duration;

use muxloop::{BackendKind, Events, Interest};
use util::*;

const PAIRS: usize = 2_600; // 5,200 registered fds

fn thousands_registered_all_ready_in_one_call(kind: BackendKind) {
    if !fds_fit(2 * PAIRS as u64 + 100, "5,200 registered fds") {
        return;
    }
    let pairs: Vec<_> = (0..PAIRS).map(|_| pair()).collect();
    let mut sel = selector(kind);
    for (i, (a, b)) in pairs.iter().enumerate() {
        sel.register(a.as_raw_fd(), Interest::READABLE, i).unwrap();
        sel.register(b.as_raw_fd(), Interest::READABLE, PAIRS + i)
            .unwrap();
    }
    assert_eq!(sel.len(), 2 * PAIRS);
    let mut events = Events::with_capacity(16);
    assert_eq!(sel.select(&mut events, Some(Duration::ZERO)).unwrap(), 0);

    // Every other pair gets data on its `a` side.
    for (a, b) in pairs.iter().step_by(2) {
        let _ = a;
        (&*b).write_all(b"x").unwrap();
    }
    let want = PAIRS.div_ceil(2);
    assert_eq!(
        sel.select(&mut events, Some(Duration::from_secs(5)))
            .unwrap(),
        want
    );
    let mut seen: Vec<usize> = events
        .iter()
        .map(|e| *sel.key_by_token(e.token()).unwrap().data())
        .collect();
    seen.sort();
    let expected: Vec<usize> = (0..PAIRS).step_by(2).collect();
    assert_eq!(seen, expected);

    // Now everything writable: every fd, in one call.
    for (a, b) in &pairs {
        sel.set_interest(a.as_raw_fd(), Interest::WRITABLE).unwrap();
        sel.set_interest(b.as_raw_fd(), Interest::WRITABLE).unwrap();
    }
    assert_eq!(
        sel.select(&mut events, Some(Duration::from_secs(5)))
            .unwrap(),
        2 * PAIRS
    );
    for (a, b) in &pairs {
        sel.unregister(a.as_raw_fd()).unwrap();
        sel.unregister(b.as_raw_fd()).unwrap();
    }
    assert!(sel.is_empty());
}

/// The cases, instantiated once per backend below.
mod cases {
    use muxloop::BackendKind;

    pub fn five_thousand_fds(kind: BackendKind) {
        super::thousands_registered_all_ready_in_one_call(kind)
    }
}

per_backend!(five_thousand_fds);
