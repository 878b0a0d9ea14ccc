//! A map from fd numbers to small values, dense where fds are dense.
//!
//! Fds are small integers handed out lowest-first, so a `Vec` indexed by fd
//! is the fastest map (one bounds check per lookup, the hot path of every
//! backend). But a process may own a few very high fds (`dup2` onto a high
//! number, a large `RLIMIT_NOFILE`), and a `Vec` indexed by them would cost
//! memory for every number below: 32 bytes each, 64 GB for `i32::MAX`. So
//! the dense part only grows to cover a new fd while it stays within a
//! constant factor of the number of entries; an fd beyond that goes to a
//! hash map, and moves into the dense part when it grows past it. Memory is
//! O(entries), never O(highest fd).

use std::collections::HashMap;
use std::os::fd::RawFd;

/// The dense part always may cover fds below this.
const MIN_DENSE: usize = 1024;
/// ...and fds below this many times the entry count.
const DENSITY: usize = 4;

pub(crate) struct FdTable<V> {
    /// Indexed by fd; `vacant` marks an absent entry.
    dense: Vec<V>,
    /// Fds at or beyond `dense.len()`.
    sparse: HashMap<RawFd, V>,
    vacant: V,
    len: usize,
}

impl<V: Copy + PartialEq> FdTable<V> {
    /// An empty table; `vacant` is the value that stands for "no entry" in
    /// the dense part (never stored).
    pub(crate) fn new(vacant: V) -> FdTable<V> {
        FdTable {
            dense: Vec::new(),
            sparse: HashMap::new(),
            vacant,
            len: 0,
        }
    }

    #[inline]
    pub(crate) fn get(&self, fd: RawFd) -> Option<&V> {
        match self.dense.get(fd as usize) {
            Some(v) if *v != self.vacant => Some(v),
            Some(_) => None,
            None => self.sparse_get(fd),
        }
    }

    /// The hash-map half, out of line: the dense half is the hot path.
    #[cold]
    #[inline(never)]
    fn sparse_get(&self, fd: RawFd) -> Option<&V> {
        if self.sparse.is_empty() {
            None
        } else {
            self.sparse.get(&fd)
        }
    }

    // (The epoll and uring backends' look-ups.)
    #[cfg_attr(not(any(muxloop_epoll, muxloop_uring)), allow(dead_code))]
    #[inline]
    pub(crate) fn get_mut(&mut self, fd: RawFd) -> Option<&mut V> {
        if (fd as usize) < self.dense.len() {
            let v = &mut self.dense[fd as usize];
            if *v != self.vacant { Some(v) } else { None }
        } else {
            sparse_get_mut(&mut self.sparse, fd)
        }
    }

    /// Sets the entry of `fd` (non-negative), returning the old one.
    pub(crate) fn insert(&mut self, fd: RawFd, value: V) -> Option<V> {
        debug_assert!(fd >= 0, "fd {fd}");
        debug_assert!(value != self.vacant, "the vacant value is not storable");
        let idx = fd as usize;
        if idx >= self.dense.len() {
            self.grow_for(idx);
        }
        let old = match self.dense.get_mut(idx) {
            Some(slot) => Some(std::mem::replace(slot, value)).filter(|v| *v != self.vacant),
            None => self.sparse.insert(fd, value),
        };
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    pub(crate) fn remove(&mut self, fd: RawFd) -> Option<V> {
        let old = match self.dense.get_mut(fd as usize) {
            Some(slot) => Some(std::mem::replace(slot, self.vacant)).filter(|v| *v != self.vacant),
            None => self.sparse.remove(&fd),
        };
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    /// Grows the dense part to cover `idx` if that keeps it within
    /// `max(MIN_DENSE, DENSITY × entries)`, moving sparse entries it now
    /// covers.
    fn grow_for(&mut self, idx: usize) {
        let bound = MIN_DENSE.max(DENSITY.saturating_mul(self.len + 1));
        if idx >= bound {
            return;
        }
        let new_len = (idx + 1).max(self.dense.len() * 2).min(bound);
        self.dense.resize(new_len, self.vacant);
        if self.sparse.is_empty() {
            return;
        }
        let dense = &mut self.dense;
        self.sparse
            .retain(|&fd, v| match dense.get_mut(fd as usize) {
                Some(slot) => {
                    *slot = *v;
                    false
                }
                None => true,
            });
    }

    /// Every entry, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (RawFd, &V)> {
        let vacant = self.vacant;
        self.dense
            .iter()
            .enumerate()
            .filter(move |(_, v)| **v != vacant)
            .map(|(fd, v)| (fd as RawFd, v))
            .chain(self.sparse.iter().map(|(&fd, v)| (fd, v)))
    }

    /// The highest fd with an entry.
    pub(crate) fn max_fd(&self) -> Option<RawFd> {
        let sparse = self.sparse.keys().copied().max();
        if sparse.is_some() {
            return sparse; // every sparse fd is beyond the dense part
        }
        let vacant = self.vacant;
        self.dense
            .iter()
            .rposition(|v| *v != vacant)
            .map(|i| i as RawFd)
    }

    /// Removes every entry (the dense part keeps its memory).
    pub(crate) fn clear(&mut self) {
        self.dense.fill(self.vacant);
        self.sparse.clear();
        self.len = 0;
    }

    /// Memory held by the dense part, in entries.
    #[cfg(test)]
    fn dense_len(&self) -> usize {
        self.dense.len()
    }
}

/// [`FdTable::get_mut`]'s hash-map half, out of line: the dense half is
/// the hot path.
#[cold]
#[inline(never)]
#[cfg_attr(not(any(muxloop_epoll, muxloop_uring)), allow(dead_code))]
fn sparse_get_mut<V>(sparse: &mut HashMap<RawFd, V>, fd: RawFd) -> Option<&mut V> {
    if sparse.is_empty() {
        None
    } else {
        sparse.get_mut(&fd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_high_fds_cost_no_dense_memory() {
        let mut t = FdTable::new(usize::MAX);
        assert_eq!(t.insert(i32::MAX - 1, 7), None);
        assert_eq!(t.insert(50_000_000, 8), None);
        assert_eq!(t.insert(3, 9), None);
        assert!(t.dense_len() <= MIN_DENSE, "dense {}", t.dense_len());
        assert_eq!(t.get(i32::MAX - 1), Some(&7));
        assert_eq!(t.get(50_000_000), Some(&8));
        assert_eq!(t.get(3), Some(&9));
        assert_eq!(t.get(4), None);
        assert_eq!(t.max_fd(), Some(i32::MAX - 1));
        assert_eq!(t.len, 3);
        assert_eq!(t.remove(i32::MAX - 1), Some(7));
        assert_eq!(t.remove(i32::MAX - 1), None);
        assert_eq!(t.max_fd(), Some(50_000_000));
        assert_eq!(t.len, 2);
    }

    #[test]
    fn dense_part_absorbs_sparse_entries_as_it_grows() {
        let mut t = FdTable::new(u32::MAX);
        t.insert(5000, 5000);
        assert!(t.dense_len() < 5000);
        for fd in 0..2000 {
            t.insert(fd, fd as u32);
        }
        assert!(!t.sparse.is_empty(), "nothing asked for a dense 5000 yet");
        // 2,001 entries allow a dense part of 8,008: covering 6000 moves
        // 5000 in too.
        t.insert(6000, 6000);
        assert!(t.dense_len() > 6000);
        assert!(t.sparse.is_empty());
        assert_eq!(t.get(5000), Some(&5000));
        assert_eq!(t.len, 2002);
        let mut all: Vec<_> = t.iter().map(|(fd, v)| (fd, *v)).collect();
        all.sort();
        assert_eq!(all.len(), 2002);
        assert_eq!(all[2000], (5000, 5000));
        assert!(all.iter().all(|&(fd, v)| fd as u32 == v));
    }

    #[test]
    fn insert_replaces_and_clear_empties() {
        let mut t = FdTable::new(0u8);
        assert_eq!(t.insert(1, 1), None);
        assert_eq!(t.insert(1, 2), Some(1));
        assert_eq!(t.insert(1 << 20, 3), None);
        assert_eq!(t.len, 2);
        *t.get_mut(1 << 20).unwrap() = 4;
        assert_eq!(t.get(1 << 20), Some(&4));
        t.clear();
        assert_eq!(t.len, 0);
        assert_eq!(t.get(1), None);
        assert_eq!(t.get(1 << 20), None);
        assert_eq!(t.max_fd(), None);
        assert_eq!(t.get(-1), None);
    }
}
