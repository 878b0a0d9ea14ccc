//! Timeouts. Every conversion rounds *up*, so a wait is never shorter than
//! asked, and saturates instead of overflowing.

use super::*;

/// Milliseconds for poll(2) and epoll_wait(2): `-1` for "forever", rounded
/// up so that 100 µs becomes 1 ms, not 0 (which would spin).
pub(crate) fn timeout_ms(timeout: Option<Duration>) -> libc::c_int {
    match timeout {
        None => -1,
        // Whole milliseconds, rounded up, in 64-bit arithmetic (every wait
        // with a timeout computes it); beyond c_int's range, the maximum.
        Some(t) => {
            const MAX_SECS: u64 = libc::c_int::MAX as u64 / 1_000;
            if t.as_secs() > MAX_SECS {
                return libc::c_int::MAX;
            }
            let ms = t.as_secs() * 1_000 + u64::from(t.subsec_nanos()).div_ceil(1_000_000);
            ms.min(libc::c_int::MAX as u64) as libc::c_int
        }
    }
}

/// A `timeval` for select(2), rounded up to the microsecond. Seconds are
/// clamped to what every kernel accepts (select(2) rejects more than 10^8 s
/// on some systems with EINVAL).
pub(crate) fn timeval(t: Duration) -> libc::timeval {
    const MAX_SECS: u64 = 100_000_000;
    let (mut secs, mut micros) = if t.as_secs() >= MAX_SECS {
        (MAX_SECS, 0)
    } else {
        (t.as_secs(), u64::from(t.subsec_nanos()).div_ceil(1_000))
    };
    if micros == 1_000_000 {
        secs += 1;
        micros = 0;
    }
    libc::timeval {
        tv_sec: secs as libc::time_t,
        tv_usec: micros as libc::suseconds_t,
    }
}

/// A `timespec` for kevent(2), clamped like [`timeval`].
#[cfg(muxloop_kqueue)]
pub(crate) fn timespec(t: Duration) -> libc::timespec {
    const MAX_SECS: u64 = 100_000_000;
    let (secs, nanos) = if t.as_secs() >= MAX_SECS {
        (MAX_SECS, 0)
    } else {
        (t.as_secs(), t.subsec_nanos())
    };
    libc::timespec {
        tv_sec: secs as libc::time_t,
        tv_nsec: nanos as _,
    }
}
