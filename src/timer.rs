//! A timer heap with lazy cancellation: O(log n) insert and expiry, O(1)
//! cancel. Timers need no fd; the loop shortens its wait to the earliest
//! deadline.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::{Duration, Instant};

/// Identifies a scheduled timer, for [`EventLoop::cancel`].
///
/// [`EventLoop::cancel`]: crate::EventLoop::cancel
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TimerId(pub(crate) u64);

pub(crate) struct Timer<C> {
    pub(crate) deadline: Instant,
    pub(crate) interval: Option<Duration>,
    pub(crate) callback: C,
    seq: u64,
}

impl<C> Timer<C> {
    pub(crate) fn new(deadline: Instant, interval: Option<Duration>, callback: C) -> Timer<C> {
        Timer {
            deadline,
            interval,
            callback,
            seq: 0,
        }
    }
}

/// Heap entries order by deadline, then by scheduling sequence, so timers
/// due at the same instant fire in the order they were scheduled.
type Entry = Reverse<(Instant, u64, TimerId)>;

pub(crate) struct Timers<C> {
    heap: BinaryHeap<Entry>,
    live: HashMap<TimerId, Timer<C>>,
    next_id: u64,
    next_seq: u64,
}

impl<C> Timers<C> {
    pub(crate) fn new() -> Timers<C> {
        Timers {
            heap: BinaryHeap::new(),
            live: HashMap::new(),
            next_id: 0,
            next_seq: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.live.len()
    }

    pub(crate) fn insert(
        &mut self,
        deadline: Instant,
        interval: Option<Duration>,
        callback: C,
    ) -> TimerId {
        let id = TimerId(self.next_id);
        self.next_id += 1;
        self.schedule(id, Timer::new(deadline, interval, callback));
        id
    }

    /// (Re)schedules `timer` under `id` at `timer.deadline`.
    pub(crate) fn schedule(&mut self, id: TimerId, mut timer: Timer<C>) {
        timer.seq = self.next_seq;
        self.next_seq += 1;
        self.heap.push(Reverse((timer.deadline, timer.seq, id)));
        self.live.insert(id, timer);
    }

    /// Cancels a pending timer. Its heap entry stays until it surfaces (or
    /// until cancelled entries outnumber live ones, when the heap is
    /// rebuilt), so cancel is O(1) amortised.
    pub(crate) fn cancel(&mut self, id: TimerId) -> bool {
        let found = self.live.remove(&id).is_some();
        if found && self.heap.len() > 64 && self.heap.len() > 2 * self.live.len() {
            let live = &self.live;
            self.heap
                .retain(|Reverse((_, seq, id))| live.get(id).is_some_and(|t| t.seq == *seq));
        }
        found
    }

    /// Whether the heap entry is the current schedule of a live timer.
    fn is_current(&self, seq: u64, id: TimerId) -> bool {
        self.live.get(&id).is_some_and(|t| t.seq == seq)
    }

    /// The earliest deadline of a live timer.
    pub(crate) fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(Reverse((deadline, seq, id))) = self.heap.peek().copied() {
            if self.is_current(seq, id) {
                return Some(deadline);
            }
            self.heap.pop();
        }
        None
    }

    /// Removes and returns the earliest live timer due at or before `now`.
    pub(crate) fn pop_expired(&mut self, now: Instant) -> Option<(TimerId, Timer<C>)> {
        loop {
            let Reverse((deadline, seq, id)) = *self.heap.peek()?;
            if deadline > now {
                return None;
            }
            self.heap.pop();
            if self.is_current(seq, id) {
                return self.live.remove(&id).map(|t| (id, t));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_in_deadline_then_scheduling_order() {
        let t0 = Instant::now();
        let mut timers = Timers::new();
        let late = timers.insert(t0 + Duration::from_millis(2), None, "late");
        let a = timers.insert(t0 + Duration::from_millis(1), None, "a");
        let b = timers.insert(t0 + Duration::from_millis(1), None, "b");
        assert_eq!(timers.next_deadline(), Some(t0 + Duration::from_millis(1)));
        assert!(timers.pop_expired(t0).is_none());
        let now = t0 + Duration::from_millis(5);
        let order: Vec<TimerId> =
            std::iter::from_fn(|| timers.pop_expired(now).map(|(id, _)| id)).collect();
        assert_eq!(order, vec![a, b, late]);
    }

    #[test]
    fn cancelled_timers_never_expire_and_heap_is_compacted() {
        let t0 = Instant::now();
        let mut timers = Timers::new();
        let ids: Vec<TimerId> = (0..1000)
            .map(|i| timers.insert(t0 + Duration::from_micros(i), None, i))
            .collect();
        for id in &ids[..900] {
            assert!(timers.cancel(*id));
            assert!(!timers.cancel(*id));
        }
        assert_eq!(timers.len(), 100);
        assert!(timers.heap.len() <= 2 * 100 + 64);
        let fired: Vec<u64> = std::iter::from_fn(|| {
            timers
                .pop_expired(t0 + Duration::from_secs(1))
                .map(|(_, t)| t.callback)
        })
        .collect();
        assert_eq!(fired, (900..1000).collect::<Vec<u64>>());
    }
}
