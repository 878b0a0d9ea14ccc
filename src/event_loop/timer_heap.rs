//! TimerHeap: an indexed 4-ary min-heap over a slot table. Insert, cancel,
//! reset and expiry are O(log n) and leave no garbage behind: every slot
//! knows its position in the heap (as libev's timer heap does), so a
//! cancelled or re-armed timer is moved, not left for later. TimerHeap need
//! no fd; the loop shortens its wait to the earliest deadline.

use std::time::{Duration, Instant};

/// Identifies a scheduled timer, for [`EventLoop::cancel`] and
/// [`EventLoop::reset_timer`].
///
/// [`EventLoop::cancel`]: crate::EventLoop::cancel
/// [`EventLoop::reset_timer`]: crate::EventLoop::reset_timer
///
/// An id belongs to the loop that made it: another loop's `cancel` or
/// `reset_timer` does not know it (returns false).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TimerId {
    /// Slot index and generation.
    slot: u64,
    /// The [`TimerHeap`] (hence the loop) that made it.
    owner: u64,
}

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
struct TimerSlot<C> {
    generation: u32,
    timer: Option<Timer<C>>,
    /// Position in `heap` while scheduled.
    pos: usize,
    /// The timer's true key while scheduled. Its heap entry may hold an
    /// earlier one: a reset to a later deadline only updates these, and
    /// the entry is moved when its old deadline comes (`pop_expired`).
    at: u64,
    seq: u64,
}

/// A heap entry: the ordering key is cached next to the slot index, so
/// sifting compares without chasing into the slot table (libev caches the
/// deadline in its heap the same way).
#[derive(Clone, Copy)]
struct HeapEntry {
    /// Deadline, in nanoseconds since the heap's epoch.
    at: u64,
    /// Scheduling order: equal deadlines fire first-scheduled first.
    seq: u64,
    index: u32,
}

impl HeapEntry {
    #[inline]
    fn before(&self, other: &HeapEntry) -> bool {
        self.order() < other.order()
    }

    /// (deadline, seq) as one integer: one wide comparison.
    #[inline]
    fn order(&self) -> u128 {
        (u128::from(self.at) << 64) | u128::from(self.seq)
    }
}

/// The earlier of two (position, order) pairs; the first on a tie.
#[inline]
fn earlier(a: (usize, u128), b: (usize, u128)) -> (usize, u128) {
    if b.1 < a.1 { b } else { a }
}

/// Children per heap node. Four halves the depth of a binary heap and
/// keeps a node's children in one cache line; libev makes the same choice.
const ARITY: usize = 4;

pub(crate) struct TimerHeap<C> {
    /// A 4-ary min-heap by (deadline, seq).
    heap: Vec<HeapEntry>,
    slots: Vec<TimerSlot<C>>,
    free: Vec<u32>,
    next_seq: u64,
    /// Deadlines are stored as nanoseconds since this instant.
    epoch: Instant,
    /// The earliest key a timer may be scheduled at: during an expiry pass,
    /// just after its `now`, so that a timer scheduled by a callback of the
    /// pass (at a deadline already past) waits for a later pass instead of
    /// running in this one; 0 otherwise.
    floor: u64,
    /// Written into every id, and checked: ids of other instances are
    /// unknown here.
    owner: u64,
}

fn parts(id: TimerId) -> (usize, u32) {
    ((id.slot & 0xffff_ffff) as usize, (id.slot >> 32) as u32)
}

impl<C> TimerHeap<C> {
    /// An empty heap whose ids carry `owner`.
    pub(crate) fn new(owner: u64) -> TimerHeap<C> {
        TimerHeap {
            heap: Vec::new(),
            slots: Vec::new(),
            free: Vec::new(),
            next_seq: 0,
            epoch: Instant::now(),
            floor: 0,
            owner,
        }
    }

    fn id(&self, index: usize, generation: u32) -> TimerId {
        TimerId {
            slot: index as u64 | (u64::from(generation) << 32),
            owner: self.owner,
        }
    }

    /// Starts an expiry pass at `now`: until [`end_pass`](TimerHeap::end_pass),
    /// timers scheduled or reset to a deadline at or before `now` are kept
    /// for the next pass (they still fire as soon as possible, never early:
    /// their deadline has passed). Without this a callback re-arming its
    /// timer at a past deadline would run again and again in one pass,
    /// starving I/O.
    pub(crate) fn begin_pass(&mut self, now: Instant) {
        self.floor = self.key(now).saturating_add(1);
    }

    /// Ends the pass begun by [`begin_pass`](TimerHeap::begin_pass).
    pub(crate) fn end_pass(&mut self) {
        self.floor = 0;
    }

    /// The key of `deadline`, not before the pass's floor; a deadline the
    /// floor moves is moved with it, so that `next_deadline` never names
    /// an instant before the timer's key (a loop told the old one would
    /// wait zero and find nothing due, over and over, on a clock that
    /// does not move by itself: virtual time).
    #[inline]
    fn floored(&self, deadline: &mut Instant) -> u64 {
        let key = self.key(*deadline);
        if key < self.floor {
            *deadline = self.instant(self.floor);
            return self.floor;
        }
        key
    }

    /// `t` as a heap key: nanoseconds from the epoch, offset by 2^63 so
    /// instants before the epoch keep their order too. Exact (Instant has
    /// nanosecond resolution at best) and monotonic within 292 years either
    /// side of the epoch, saturating beyond.
    #[inline]
    fn key(&self, t: Instant) -> u64 {
        const ZERO: u64 = 1 << 63;
        fn nanos(d: Duration) -> u64 {
            d.as_secs()
                .saturating_mul(1_000_000_000)
                .saturating_add(u64::from(d.subsec_nanos()))
        }
        match t.checked_duration_since(self.epoch) {
            Some(after) => ZERO.saturating_add(nanos(after)),
            None => ZERO.saturating_sub(nanos(self.epoch - t)),
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
                self.slots.push(TimerSlot {
                    generation: 0,
                    timer: None,
                    pos: 0,
                    at: 0,
                    seq: 0,
                });
                self.slots.len() - 1
            }
        };
        let id = self.id(index, self.slots[index].generation);
        self.schedule(id, Timer::new(deadline, interval, callback));
        id
    }

    /// Schedules `timer` under `id`, whose slot is empty: new, or taken by
    /// [`pop_expired`](TimerHeap::pop_expired) and not released.
    pub(crate) fn schedule(&mut self, id: TimerId, mut timer: Timer<C>) {
        let (index, _) = parts(id);
        let at = self.floored(&mut timer.deadline);
        let entry = HeapEntry {
            at,
            seq: self.next_seq,
            index: index as u32,
        };
        self.next_seq += 1;
        let slot = &mut self.slots[index];
        debug_assert!(slot.timer.is_none());
        slot.timer = Some(timer);
        slot.at = entry.at;
        slot.seq = entry.seq;
        self.heap.push(entry);
        self.sift_up(self.heap.len() - 1, entry);
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
        if id.owner != self.owner {
            return None;
        }
        let (index, generation) = parts(id);
        self.slots
            .get(index)
            .filter(|s| s.generation == generation && s.timer.is_some())
            .map(|_| index)
    }

    /// Whether a timer is scheduled (not fired, cancelled or running).
    pub(crate) fn is_pending(&self, id: TimerId) -> bool {
        self.scheduled(id).is_some()
    }

    /// Unschedules a pending timer and frees its slot. False if it already
    /// fired or was cancelled.
    pub(crate) fn cancel(&mut self, id: TimerId) -> bool {
        let Some(index) = self.scheduled(id) else {
            return false;
        };
        self.remove_at(self.slots[index].pos);
        self.slots[index].timer = None;
        self.release(id);
        true
    }

    /// Moves a pending timer to `deadline`. False if it already fired or
    /// was cancelled. Among equal deadlines it now fires last.
    ///
    /// Earlier: the entry moves up the heap at once. Later (an idle timeout
    /// re-armed on activity, the common case): only the slot's key changes,
    /// in O(1); the stale, earlier entry is moved down only when its old
    /// deadline comes, so a timer re-armed many times before it is due
    /// costs at most one heap move per old deadline that passes instead of
    /// one per reset. (libev's manual recommends doing this by hand for
    /// idle timeouts.)
    pub(crate) fn reset(&mut self, id: TimerId, deadline: Instant) -> bool {
        let Some(index) = self.scheduled(id) else {
            return false;
        };
        let mut deadline = deadline;
        let at = self.floored(&mut deadline);
        let seq = self.next_seq;
        self.next_seq += 1;
        let slot = &mut self.slots[index];
        slot.timer.as_mut().expect("scheduled").deadline = deadline;
        slot.at = at;
        slot.seq = seq;
        let pos = slot.pos;
        if at < self.heap[pos].at {
            let entry = HeapEntry {
                at,
                seq,
                index: index as u32,
            };
            self.sift_up(pos, entry);
        }
        true
    }

    /// When the loop must wake up next: the top entry's deadline. If that
    /// entry is stale (its timer was pushed back), this is earlier than the
    /// timer's deadline; the wake-up then moves the entry down and fires
    /// nothing, once per push-back that reaches the top.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let top = self.heap.first()?;
        let slot = &self.slots[top.index as usize];
        if slot.at == top.at && slot.seq == top.seq {
            return slot.timer.as_ref().map(|t| t.deadline);
        }
        Some(self.instant(top.at))
    }

    /// The instant of a key: the inverse of `key`, exact on both sides of
    /// the epoch (a virtual clock's instants may lie before it), saturating
    /// where `Instant` cannot go.
    fn instant(&self, at: u64) -> Instant {
        const ZERO: u64 = 1 << 63;
        if at >= ZERO {
            self.epoch + Duration::from_nanos(at - ZERO)
        } else {
            self.epoch
                .checked_sub(Duration::from_nanos(ZERO - at))
                .unwrap_or(self.epoch)
        }
    }

    /// Takes the earliest timer if it is due at `now`. Its slot stays
    /// reserved (for [`schedule`](TimerHeap::schedule) or
    /// [`release`](TimerHeap::release)).
    pub(crate) fn pop_expired(&mut self, now: Instant) -> Option<(TimerId, Timer<C>)> {
        let now = self.key(now);
        let top = loop {
            let top = *self.heap.first()?;
            if top.at > now {
                return None;
            }
            let slot = &self.slots[top.index as usize];
            if slot.at == top.at && slot.seq == top.seq {
                break top;
            }
            // Stale: the timer was pushed back. Move the entry to its true
            // key and look again.
            let entry = HeapEntry {
                at: slot.at,
                seq: slot.seq,
                index: top.index,
            };
            self.sift_down(0, entry);
        };
        let index = top.index as usize;
        self.remove_at(0);
        let slot = &mut self.slots[index];
        let timer = slot.timer.take()?;
        let generation = slot.generation;
        Some((self.id(index, generation), timer))
    }

    /// Writes `entry` at `pos` and records the position in its slot.
    #[inline]
    fn place(&mut self, pos: usize, entry: HeapEntry) {
        self.heap[pos] = entry;
        self.slots[entry.index as usize].pos = pos;
    }

    /// Puts `entry` at `pos` or above: parents after it move down into
    /// the hole.
    fn sift_up(&mut self, mut pos: usize, entry: HeapEntry) {
        while pos > 0 {
            let parent = (pos - 1) / ARITY;
            let p = self.heap[parent];
            if !entry.before(&p) {
                break;
            }
            self.place(pos, p);
            pos = parent;
        }
        self.place(pos, entry);
    }

    /// Puts `entry` at `pos` or below: the earliest child before it moves
    /// up into the hole.
    fn sift_down(&mut self, mut pos: usize, entry: HeapEntry) {
        let len = self.heap.len();
        loop {
            let first = ARITY * pos + 1;
            let (child, best) = if let Some(kids) = self.heap.get(first..first + ARITY) {
                // A full node (the common case): a tournament on the keys.
                let o = [
                    kids[0].order(),
                    kids[1].order(),
                    kids[2].order(),
                    kids[3].order(),
                ];
                let (i, oi) = earlier((0, o[0]), (1, o[1]));
                let (j, oj) = earlier((2, o[2]), (3, o[3]));
                let (k, _) = earlier((i, oi), (j, oj));
                (first + k, kids[k])
            } else if first < len {
                let mut child = first;
                let mut best = self.heap[first];
                for (c, e) in self.heap.iter().enumerate().skip(first + 1) {
                    if e.before(&best) {
                        child = c;
                        best = *e;
                    }
                }
                (child, best)
            } else {
                break;
            };
            if !best.before(&entry) {
                break;
            }
            self.place(pos, best);
            pos = child;
        }
        self.place(pos, entry);
    }

    /// Removes the entry at `pos`, filling the hole with the last entry.
    fn remove_at(&mut self, pos: usize) {
        let last = self.heap.pop().expect("pos is in the heap");
        if pos == self.heap.len() {
            return;
        }
        if pos > 0 && last.before(&self.heap[(pos - 1) / ARITY]) {
            self.sift_up(pos, last);
        } else {
            self.sift_down(pos, last);
        }
    }

    /// Checks the heap order and every slot's recorded position.
    #[cfg(test)]
    fn check(&self) {
        for (pos, e) in self.heap.iter().enumerate() {
            let slot = &self.slots[e.index as usize];
            assert_eq!(slot.pos, pos, "stale position");
            assert!(
                (e.at, e.seq) <= (slot.at, slot.seq),
                "an entry is never later than its timer"
            );
            if pos > 0 {
                let parent = &self.heap[(pos - 1) / ARITY];
                assert!(!e.before(parent), "heap order broken at {pos}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain<C: Copy>(timers: &mut TimerHeap<C>, now: Instant) -> Vec<C> {
        std::iter::from_fn(|| {
            timers.pop_expired(now).map(|(id, t)| {
                timers.release(id);
                t.callback
            })
        })
        .collect()
    }

    #[test]
    fn a_timer_scheduled_in_a_pass_is_not_reported_due_before_its_key() {
        let now = Instant::now() + Duration::from_secs(1);
        let mut timers = TimerHeap::new(1);
        timers.begin_pass(now);
        // Scheduled by a callback of the pass, at a deadline already past:
        // it waits for the next pass, and the next deadline says when.
        timers.insert(now - Duration::from_millis(5), None, "soon");
        timers.end_pass();
        let next = timers.next_deadline().unwrap();
        assert!(next > now, "{:?} before the pass's now", now - next);
        assert!(timers.pop_expired(now).is_none());
        assert_eq!(drain(&mut timers, next), vec!["soon"]);
    }

    #[test]
    fn deadlines_before_the_heap_was_made_are_kept_exactly() {
        let before = Instant::now();
        std::thread::sleep(Duration::from_millis(2));
        let mut timers = TimerHeap::new(1);
        timers.begin_pass(before);
        timers.insert(before, None, "past");
        timers.end_pass();
        // Keyed one nanosecond after `before`, which is before the epoch.
        assert_eq!(
            timers.next_deadline(),
            Some(before + Duration::from_nanos(1))
        );
    }

    #[test]
    fn expires_in_deadline_then_scheduling_order() {
        let t0 = Instant::now();
        let mut timers = TimerHeap::new(1);
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
    fn timers_scheduled_during_a_pass_wait_for_the_next_one() {
        let t0 = Instant::now();
        let mut timers = TimerHeap::new(1);
        let past = t0 - Duration::from_millis(5);
        timers.insert(t0, None, "due");
        timers.insert(t0 + Duration::from_millis(1), None, "due later");
        timers.begin_pass(t0 + Duration::from_millis(1));
        let (id, _) = timers.pop_expired(t0 + Duration::from_millis(1)).unwrap();
        timers.release(id);
        // A callback of the pass schedules at a past deadline, and pushes
        // a pending timer to now.
        timers.insert(past, None, "again");
        let later = timers.insert(t0 + Duration::from_secs(9), None, "reset");
        assert!(timers.reset(later, past));
        let rest = drain(&mut timers, t0 + Duration::from_millis(1));
        assert_eq!(rest, vec!["due later"], "only what was due before the pass");
        timers.end_pass();
        // The next pass runs them, in scheduling order, however late.
        assert_eq!(
            drain(&mut timers, t0 + Duration::from_millis(2)),
            vec!["again", "reset"]
        );
        timers.check();
    }

    #[test]
    fn ids_of_another_heap_are_unknown() {
        let t0 = Instant::now();
        let mut a = TimerHeap::new(1);
        let mut b = TimerHeap::new(2);
        let id_a = a.insert(t0, None, "a");
        let id_b = b.insert(t0, None, "b");
        assert_ne!(id_a, id_b, "same slot, other owner");
        assert!(!b.cancel(id_a));
        assert!(!b.reset(id_a, t0));
        assert_eq!(b.len(), 1);
        assert!(a.cancel(id_a));
        assert!(b.cancel(id_b));
    }

    #[test]
    fn cancelled_timers_never_expire_and_leave_nothing_behind() {
        let t0 = Instant::now();
        let mut timers = TimerHeap::new(1);
        let ids: Vec<TimerId> = (0..1000)
            .map(|i| timers.insert(t0 + Duration::from_micros((i * 7919) % 1000), None, i))
            .collect();
        for id in ids.iter().filter(|id| id.slot % 10 != 0) {
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
    fn deadlines_before_the_heap_was_created_keep_their_order() {
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_millis(2));
        let mut timers = TimerHeap::new(1);
        timers.insert(t0 + Duration::from_micros(900), None, "third");
        timers.insert(t0, None, "first");
        timers.insert(t0 + Duration::from_micros(10), None, "second");
        timers.check();
        assert_eq!(
            drain(&mut timers, Instant::now()),
            vec!["first", "second", "third"]
        );
    }

    #[test]
    fn timers_pushed_back_keep_order_and_scheduling_order() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut timers = TimerHeap::new(1);
        let b = timers.insert(t0 + ms(1), None, "b");
        let a = timers.insert(t0 + ms(2), None, "a");
        timers.insert(t0 + ms(3), None, "c");
        // Pushed back lazily: the heap still holds their old, earlier
        // entries. a is reset to 8 ms before b is, so a fires first, even
        // though b's stale entry is the earlier one.
        for _ in 0..100 {
            assert!(timers.reset(a, t0 + ms(8)));
            assert!(timers.reset(b, t0 + ms(8)));
        }
        timers.check();
        // The wake-up may come early (b's old deadline), a firing never.
        assert_eq!(timers.next_deadline(), Some(t0 + ms(1)));
        assert!(timers.pop_expired(t0 + ms(2)).is_none(), "never early");
        assert_eq!(timers.next_deadline(), Some(t0 + ms(3)));
        assert_eq!(drain(&mut timers, t0 + ms(5)), vec!["c"]);
        // Back to an earlier deadline: moved up at once.
        assert!(timers.reset(b, t0 + ms(6)));
        timers.check();
        assert_eq!(drain(&mut timers, t0 + ms(10)), vec!["b", "a"]);
        assert!(timers.is_empty());
    }

    #[test]
    fn reset_moves_a_timer_without_firing_it_early() {
        let t0 = Instant::now();
        let mut timers = TimerHeap::new(1);
        let a = timers.insert(t0 + Duration::from_millis(1), None, "a");
        timers.insert(t0 + Duration::from_millis(2), None, "b");
        timers.insert(t0 + Duration::from_millis(3), None, "c");
        assert!(timers.reset(a, t0 + Duration::from_millis(5)));
        assert_eq!(timers.len(), 3);
        // Pushed back lazily: the next wake-up is still a's old deadline,
        // which fires nothing and brings the heap up to date.
        assert_eq!(timers.next_deadline(), Some(t0 + Duration::from_millis(1)));
        assert!(timers.pop_expired(t0 + Duration::from_millis(1)).is_none());
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
        let mut timers = TimerHeap::new(1);
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
            if step % 997 == 0 {
                timers.check();
            }
        }
        timers.check();
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
