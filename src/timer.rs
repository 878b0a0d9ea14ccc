//! A timer heap with lazy cancellation: O(log n) insert and expiry, O(1)
//! cancel. Timers need no fd; the loop shortens its wait to the earliest
//! deadline.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
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

/// A slot of the timer table: the generation makes ids of freed slots
/// stale, as tokens do for the selector.
struct Slot<C> {
    generation: u32,
    timer: Option<Timer<C>>,
}

pub(crate) struct Timers<C> {
    heap: BinaryHeap<Entry>,
    slots: Vec<Slot<C>>,
    free: Vec<u32>,
    live: usize,
    next_seq: u64,
}

fn id(index: usize, generation: u32) -> TimerId {
    TimerId(index as u64 | (u64::from(generation) << 32))
}

fn parts(id: TimerId) -> (usize, u32) {
    ((id.0 & 0xffff_ffff) as usize, (id.0 >> 32) as u32)
}

impl<C> Timers<C> {
    pub(crate) fn new() -> Timers<C> {
        Timers {
            heap: BinaryHeap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            next_seq: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.live
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.live == 0
    }

    pub(crate) fn insert(
        &mut self,
        deadline: Instant,
        interval: Option<Duration>,
        callback: C,
    ) -> TimerId {
        let index = match self.free.pop() {
            Some(i) => i as usize,
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    timer: None,
                });
                self.slots.len() - 1
            }
        };
        let id = id(index, self.slots[index].generation);
        self.schedule(id, Timer::new(deadline, interval, callback));
        id
    }

    /// Schedules `timer` under `id`, whose slot is empty: new, or taken by
    /// [`pop_expired`](Timers::pop_expired) and not released.
    pub(crate) fn schedule(&mut self, id: TimerId, mut timer: Timer<C>) {
        timer.seq = self.next_seq;
        self.next_seq += 1;
        self.heap.push(Reverse((timer.deadline, timer.seq, id)));
        let (index, _) = parts(id);
        debug_assert!(self.slots[index].timer.is_none());
        self.slots[index].timer = Some(timer);
        self.live += 1;
    }

    /// Frees the slot of a timer taken by `pop_expired` that will not run
    /// again; its id goes stale.
    pub(crate) fn release(&mut self, id: TimerId) {
        let (index, generation) = parts(id);
        let slot = &mut self.slots[index];
        if slot.generation == generation && slot.timer.is_none() {
            slot.generation = slot.generation.wrapping_add(1);
            self.free.push(index as u32);
        }
    }

    fn slot(&self, id: TimerId) -> Option<&Slot<C>> {
        let (index, generation) = parts(id);
        self.slots.get(index).filter(|s| s.generation == generation)
    }

    /// Cancels a pending timer. Its heap entry stays until it surfaces (or
    /// until cancelled entries outnumber live ones, when the heap is
    /// rebuilt), so cancel is O(1) amortised.
    pub(crate) fn cancel(&mut self, id: TimerId) -> bool {
        if self.slot(id).is_none_or(|s| s.timer.is_none()) {
            return false;
        }
        let (index, _) = parts(id);
        self.slots[index].timer = None;
        self.live -= 1;
        self.release(id);
        if self.heap.len() > 64 && self.heap.len() > 2 * self.live {
            let slots = &self.slots;
            self.heap.retain(|Reverse((_, seq, id))| {
                let (index, generation) = parts(*id);
                slots[index].generation == generation
                    && slots[index].timer.as_ref().is_some_and(|t| t.seq == *seq)
            });
        }
        true
    }

    /// Whether the heap entry is the current schedule of a live timer.
    fn is_current(&self, seq: u64, id: TimerId) -> bool {
        self.slot(id)
            .and_then(|s| s.timer.as_ref())
            .is_some_and(|t| t.seq == seq)
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

    /// Takes out the earliest live timer due at or before `now`. Its slot
    /// stays reserved: pass the id to [`schedule`](Timers::schedule) to
    /// re-arm it or to [`release`](Timers::release) to free it.
    pub(crate) fn pop_expired(&mut self, now: Instant) -> Option<(TimerId, Timer<C>)> {
        loop {
            let Reverse((deadline, seq, id)) = *self.heap.peek()?;
            if deadline > now {
                return None;
            }
            self.heap.pop();
            if self.is_current(seq, id) {
                let (index, _) = parts(id);
                self.live -= 1;
                return self.slots[index].timer.take().map(|t| (id, t));
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
