//! Timers: an indexed binary min-heap over a slot table. Insert, cancel,
//! reset and expiry are O(log n) and leave no garbage behind: every slot
//! knows its position in the heap (as libev's timer heap does), so a
//! cancelled or re-armed timer is moved, not left for later. Timers need
//! no fd; the loop shortens its wait to the earliest deadline.

use std::time::{Duration, Instant};

/// Identifies a scheduled timer, for [`EventLoop::cancel`] and
/// [`EventLoop::reset_timer`].
///
/// [`EventLoop::cancel`]: crate::EventLoop::cancel
/// [`EventLoop::reset_timer`]: crate::EventLoop::reset_timer
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TimerId(pub(crate) u64);

pub(crate) struct Timer<C> {
    pub(crate) deadline: Instant,
    pub(crate) interval: Option<Duration>,
    pub(crate) callback: C,
}

impl<C> Timer<C> {
    pub(crate) fn new(deadline: Instant, interval: Option<Duration>, callback: C) -> Timer<C> {
        Timer {
            deadline,
            interval,
            callback,
        }
    }
}

/// A slot of the timer table. The generation makes ids of freed slots
/// stale, as tokens do for the selector.
struct Slot<C> {
    generation: u32,
    timer: Option<Timer<C>>,
    /// Scheduling sequence: equal deadlines fire in scheduling order.
    seq: u64,
    /// Position in `heap` while scheduled.
    pos: usize,
}

/// A heap entry: the ordering key is cached next to the slot index, so
/// sifting compares without chasing into the slot table (libev caches the
/// deadline in its heap the same way).
#[derive(Clone, Copy)]
struct HeapEntry {
    deadline: Instant,
    seq: u64,
    index: u32,
}

impl HeapEntry {
    fn before(&self, other: &HeapEntry) -> bool {
        (self.deadline, self.seq) < (other.deadline, other.seq)
    }
}

pub(crate) struct Timers<C> {
    /// A binary min-heap by (deadline, seq).
    heap: Vec<HeapEntry>,
    slots: Vec<Slot<C>>,
    free: Vec<u32>,
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
            heap: Vec::new(),
            slots: Vec::new(),
            free: Vec::new(),
            next_seq: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.heap.is_empty()
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
                    seq: 0,
                    pos: 0,
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
    pub(crate) fn schedule(&mut self, id: TimerId, timer: Timer<C>) {
        let (index, _) = parts(id);
        let seq = self.next_seq;
        self.next_seq += 1;
        let slot = &mut self.slots[index];
        debug_assert!(slot.timer.is_none());
        let deadline = timer.deadline;
        slot.timer = Some(timer);
        slot.seq = seq;
        slot.pos = self.heap.len();
        self.heap.push(HeapEntry {
            deadline,
            seq,
            index: index as u32,
        });
        self.sift_up(self.heap.len() - 1);
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

    /// The slot index of a scheduled timer.
    fn scheduled(&self, id: TimerId) -> Option<usize> {
        let (index, generation) = parts(id);
        self.slots
            .get(index)
            .filter(|s| s.generation == generation && s.timer.is_some())
            .map(|_| index)
    }

    /// Cancels a scheduled timer; returns whether it was scheduled.
    pub(crate) fn cancel(&mut self, id: TimerId) -> bool {
        let Some(index) = self.scheduled(id) else {
            return false;
        };
        self.remove_at(self.slots[index].pos);
        self.slots[index].timer = None;
        self.release(id);
        true
    }

    /// Moves a scheduled timer to `deadline` in place (it then fires after
    /// the timers already due at that instant); returns whether it was
    /// scheduled.
    pub(crate) fn reset(&mut self, id: TimerId, deadline: Instant) -> bool {
        let Some(index) = self.scheduled(id) else {
            return false;
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        let slot = &mut self.slots[index];
        slot.seq = seq;
        slot.timer.as_mut().expect("scheduled").deadline = deadline;
        let pos = slot.pos;
        self.heap[pos].deadline = deadline;
        self.heap[pos].seq = seq;
        self.sift_up(pos);
        self.sift_down(self.slots[index].pos);
        true
    }

    /// The earliest deadline of a scheduled timer.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.heap.first().map(|e| e.deadline)
    }

    /// Takes out the earliest timer due at or before `now`. Its slot stays
    /// reserved: pass the id to [`schedule`](Timers::schedule) to re-arm it
    /// or to [`release`](Timers::release) to free it.
    pub(crate) fn pop_expired(&mut self, now: Instant) -> Option<(TimerId, Timer<C>)> {
        let top = *self.heap.first()?;
        if top.deadline > now {
            return None;
        }
        let index = top.index as usize;
        self.remove_at(0);
        let slot = &mut self.slots[index];
        let timer = slot.timer.take()?;
        Some((id(index, slot.generation), timer))
    }

    /// Whether heap entry `a` fires before heap entry `b`.
    fn before(&self, a: usize, b: usize) -> bool {
        self.heap[a].before(&self.heap[b])
    }

    fn swap(&mut self, a: usize, b: usize) {
        self.heap.swap(a, b);
        self.slots[self.heap[a].index as usize].pos = a;
        self.slots[self.heap[b].index as usize].pos = b;
    }

    fn sift_up(&mut self, mut pos: usize) {
        while pos > 0 {
            let parent = (pos - 1) / 2;
            if !self.before(pos, parent) {
                break;
            }
            self.swap(pos, parent);
            pos = parent;
        }
    }

    fn sift_down(&mut self, mut pos: usize) {
        loop {
            let left = 2 * pos + 1;
            if left >= self.heap.len() {
                break;
            }
            let right = left + 1;
            let child = if right < self.heap.len() && self.before(right, left) {
                right
            } else {
                left
            };
            if !self.before(child, pos) {
                break;
            }
            self.swap(pos, child);
            pos = child;
        }
    }

    /// Removes heap entry `pos`, keeping the heap ordered.
    fn remove_at(&mut self, pos: usize) {
        let last = self.heap.len() - 1;
        if pos != last {
            self.swap(pos, last);
        }
        self.heap.pop();
        if pos < self.heap.len() {
            self.sift_up(pos);
            self.sift_down(self.slots[self.heap[pos].index as usize].pos);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain<C: Copy>(timers: &mut Timers<C>, now: Instant) -> Vec<C> {
        std::iter::from_fn(|| {
            timers.pop_expired(now).map(|(id, t)| {
                timers.release(id);
                t.callback
            })
        })
        .collect()
    }

    #[test]
    fn expires_in_deadline_then_scheduling_order() {
        let t0 = Instant::now();
        let mut timers = Timers::new();
        timers.insert(t0 + Duration::from_millis(2), None, "late");
        timers.insert(t0 + Duration::from_millis(1), None, "a");
        timers.insert(t0 + Duration::from_millis(1), None, "b");
        assert_eq!(timers.next_deadline(), Some(t0 + Duration::from_millis(1)));
        assert!(timers.pop_expired(t0).is_none());
        assert_eq!(
            drain(&mut timers, t0 + Duration::from_millis(5)),
            vec!["a", "b", "late"]
        );
        assert!(timers.is_empty());
    }

    #[test]
    fn cancelled_timers_never_expire_and_leave_nothing_behind() {
        let t0 = Instant::now();
        let mut timers = Timers::new();
        let ids: Vec<TimerId> = (0..1000)
            .map(|i| timers.insert(t0 + Duration::from_micros((i * 7919) % 1000), None, i))
            .collect();
        for id in ids.iter().filter(|id| id.0 % 10 != 0) {
            assert!(timers.cancel(*id));
            assert!(!timers.cancel(*id));
        }
        assert_eq!(timers.len(), 100);
        assert_eq!(timers.heap.len(), 100);
        let fired = drain(&mut timers, t0 + Duration::from_secs(1));
        let mut want: Vec<u64> = (0..1000).filter(|i| i % 10 == 0).collect();
        want.sort_by_key(|i| ((i * 7919) % 1000, *i));
        assert_eq!(fired, want);
    }

    #[test]
    fn reset_moves_a_timer_in_place() {
        let t0 = Instant::now();
        let mut timers = Timers::new();
        let a = timers.insert(t0 + Duration::from_millis(1), None, "a");
        timers.insert(t0 + Duration::from_millis(2), None, "b");
        timers.insert(t0 + Duration::from_millis(3), None, "c");
        assert!(timers.reset(a, t0 + Duration::from_millis(5)));
        assert_eq!(timers.len(), 3);
        assert_eq!(timers.next_deadline(), Some(t0 + Duration::from_millis(2)));
        assert_eq!(
            drain(&mut timers, t0 + Duration::from_millis(10)),
            vec!["b", "c", "a"]
        );
        assert!(!timers.reset(a, t0), "fired timers cannot be reset");
    }

    #[test]
    fn heap_order_survives_random_operations() {
        let t0 = Instant::now();
        let mut timers = Timers::new();
        let mut live: Vec<(TimerId, u64)> = Vec::new();
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        for step in 0..20_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let at = x % 500;
            match x % 4 {
                0 | 1 => live.push((
                    timers.insert(t0 + Duration::from_micros(at), None, step),
                    at,
                )),
                2 if !live.is_empty() => {
                    let (id, _) = live.swap_remove((x as usize / 4) % live.len());
                    assert!(timers.cancel(id));
                }
                _ if !live.is_empty() => {
                    let k = (x as usize / 4) % live.len();
                    assert!(timers.reset(live[k].0, t0 + Duration::from_micros(at)));
                    live[k].1 = at;
                }
                _ => {}
            }
        }
        assert_eq!(timers.len(), live.len());
        let mut last = None;
        while let Some((id, t)) = timers.pop_expired(t0 + Duration::from_secs(1)) {
            timers.release(id);
            assert!(last.is_none_or(|l| l <= t.deadline), "out of order");
            last = Some(t.deadline);
        }
        assert!(timers.is_empty());
    }
}
