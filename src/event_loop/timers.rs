//! Timers and deferred calls.

use std::time::{Duration, Instant};

use super::timer_heap::{Timer, TimerId};
use super::{Call, EventLoop, PostAction, Repeat};

pub(super) enum TimerCallback<S> {
    Once(Call<S>),
    Every(Repeat<S>),
}

impl<S> EventLoop<S> {
    /// The loop's time: the system's monotonic clock, or the backend's
    /// [`VirtualClock`](crate::VirtualClock) in a simulation
    /// ([`crate::sim`]). Timers and timeouts are measured in it; use it
    /// for [`call_at`](EventLoop::call_at) deadlines.
    #[inline]
    pub fn now(&self) -> Instant {
        self.selector.now()
    }

    /// Runs `callback` once, `delay` from now (never earlier).
    pub fn call_later<F>(&mut self, delay: Duration, callback: F) -> TimerId
    where
        F: FnOnce(&mut EventLoop<S>, &mut S) + 'static,
    {
        let now = self.selector.now();
        let at = now.checked_add(delay).unwrap_or_else(|| far_future(now));
        self.call_at(at, callback)
    }

    /// Runs `callback` once at `deadline` (never earlier). Timers due at the
    /// same instant run in the order they were scheduled.
    pub fn call_at<F>(&mut self, deadline: Instant, callback: F) -> TimerId
    where
        F: FnOnce(&mut EventLoop<S>, &mut S) + 'static,
    {
        self.timers
            .insert(deadline, None, TimerCallback::Once(Box::new(callback)))
    }

    /// Runs `callback` every `interval`, first `interval` from now, until it
    /// returns [`PostAction::Remove`] or is cancelled. A late loop does not
    /// fire a burst of missed runs: the next run is one interval after the
    /// late one. A zero interval runs once per loop iteration.
    pub fn call_every<F>(&mut self, interval: Duration, callback: F) -> TimerId
    where
        F: FnMut(&mut EventLoop<S>, &mut S) -> PostAction + 'static,
    {
        let now = self.selector.now();
        let at = now.checked_add(interval).unwrap_or_else(|| far_future(now));
        self.timers
            .insert(at, Some(interval), TimerCallback::Every(Box::new(callback)))
    }

    /// Cancels a timer; returns whether it was pending. Cancelling a
    /// repeating timer from its own callback stops it too.
    pub fn cancel(&mut self, id: TimerId) -> bool {
        if let Some((running, cancelled)) = &mut self.running_timer {
            if *running == id {
                let was = !*cancelled;
                *cancelled = true;
                return was;
            }
        }
        self.timers.cancel(id)
    }

    /// Moves a pending timer's deadline to `delay` from now, in place (a
    /// cheap "idle timeout" re-arm, like libev's `ev_timer_again`); a
    /// repeating timer keeps its interval afterwards. Returns whether the
    /// timer was pending (not fired, cancelled or running).
    ///
    /// # Examples
    ///
    /// ```
    /// use muxloop::EventLoop;
    /// use std::time::Duration;
    ///
    /// let mut lp = EventLoop::<()>::new()?;
    /// let idle = lp.call_later(Duration::from_secs(10), |_, _| println!("idle"));
    /// // Activity: push the idle timeout back.
    /// assert!(lp.reset_timer(idle, Duration::from_secs(10)));
    /// assert!(lp.cancel(idle));
    /// assert!(!lp.reset_timer(idle, Duration::from_secs(10)));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn reset_timer(&mut self, id: TimerId, delay: Duration) -> bool {
        let now = self.selector.now();
        let at = now.checked_add(delay).unwrap_or_else(|| far_future(now));
        self.timers.reset(id, at)
    }

    /// Whether a timer is pending: scheduled, and neither fired, cancelled
    /// nor running its callback.
    pub fn is_pending(&self, id: TimerId) -> bool {
        self.timers.is_pending(id)
    }

    /// How many timers are pending.
    pub fn timer_count(&self) -> usize {
        self.timers.len()
    }

    /// Runs `callback` on the next iteration, before the loop sleeps again.
    pub fn call_soon<F>(&mut self, callback: F)
    where
        F: FnOnce(&mut EventLoop<S>, &mut S) + 'static,
    {
        self.soon.push_back(Box::new(callback));
    }

    pub(super) fn run_timers(&mut self, state: &mut S) {
        if self.timers.is_empty() {
            return;
        }
        let now = self.selector.now();
        // Timers scheduled by the callbacks below at a deadline already
        // past wait for the next iteration: the loop polls I/O in between.
        self.timers.begin_pass(now);
        while let Some((id, timer)) = self.timers.pop_expired(now) {
            self.stats.timers_fired += 1;
            let Timer {
                deadline,
                interval,
                callback,
                ..
            } = timer;
            match callback {
                TimerCallback::Once(cb) => {
                    self.timers.release(id);
                    cb(self, state);
                }
                TimerCallback::Every(mut cb) => {
                    self.running_timer = Some((id, false));
                    let action = cb(self, state);
                    let (_, cancelled) = self.running_timer.take().expect("set above");
                    if action != PostAction::Continue || cancelled {
                        self.timers.release(id);
                    } else {
                        let interval = interval.unwrap_or_default();
                        let mut next = deadline + interval;
                        if next <= now {
                            next = now + interval;
                        }
                        // Scheduled at once, so that a later callback of
                        // this pass can cancel or reset it; the pass's floor
                        // keeps it from firing again before the next one.
                        self.timers.schedule(
                            id,
                            Timer::new(next, Some(interval), TimerCallback::Every(cb)),
                        );
                    }
                }
            }
        }
        self.timers.end_pass();
    }

    pub(super) fn run_soon(&mut self, state: &mut S) {
        // Only what was queued before this pass: calls queued now run on the
        // next iteration.
        for _ in 0..self.soon.len() {
            let Some(call) = self.soon.pop_front() else {
                break;
            };
            self.stats.calls_run += 1;
            call(self, state);
        }
    }
}

fn far_future(now: Instant) -> Instant {
    // About 30 years: as good as never, and safe to add to.
    now + Duration::from_secs(30 * 365 * 86_400)
}
