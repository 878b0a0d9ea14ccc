//! The time a loop runs on: the system's monotonic clock, or a virtual
//! clock that a simulation ([`crate::sim`]) moves forward by itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A clock that stands still until it is moved: virtual time. A
/// [`Backend`](crate::Backend) that keeps one (the simulation's) hands it
/// to its selector and loop, which then read every deadline and timeout
/// from it instead of the system's monotonic clock; time passes only when
/// the backend moves it, so a five-minute timeout takes no time at all.
///
/// Its instants are `Instant`s, starting at the moment the clock was made,
/// so they mix with the APIs that take them ([`EventLoop::call_at`]).
/// Clones share one time.
///
/// [`EventLoop::call_at`]: crate::EventLoop::call_at
///
/// # Examples
///
/// ```
/// use muxloop::VirtualClock;
/// use std::time::Duration;
///
/// let clock = VirtualClock::new();
/// let start = clock.now();
/// clock.advance(Duration::from_secs(300));
/// assert_eq!(clock.now() - start, Duration::from_secs(300));
/// assert_eq!(clock.elapsed(), Duration::from_secs(300));
/// ```
#[derive(Clone, Debug)]
pub struct VirtualClock {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    base: Instant,
    /// Nanoseconds since `base`.
    offset: AtomicU64,
}

impl Default for VirtualClock {
    fn default() -> Self {
        VirtualClock::new()
    }
}

impl VirtualClock {
    /// A clock at zero.
    pub fn new() -> VirtualClock {
        VirtualClock {
            inner: Arc::new(Inner {
                base: Instant::now(),
                offset: AtomicU64::new(0),
            }),
        }
    }

    /// The clock's time.
    pub fn now(&self) -> Instant {
        self.inner.base + self.elapsed()
    }

    /// The time since the clock was made.
    pub fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.inner.offset.load(Ordering::Acquire))
    }

    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let _ = self
            .inner
            .offset
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |o| {
                Some(o.saturating_add(ns))
            });
    }

    /// Moves the clock forward to `t`; a `t` in its past changes nothing
    /// (the clock never goes back).
    pub fn advance_to(&self, t: Instant) {
        let target = t.saturating_duration_since(self.inner.base);
        let ns = u64::try_from(target.as_nanos()).unwrap_or(u64::MAX);
        self.inner.offset.fetch_max(ns, Ordering::AcqRel);
    }
}
