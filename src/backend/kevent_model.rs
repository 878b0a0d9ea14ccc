//! A model of FreeBSD's kevent(2) in user space, on poll(2): the kqueue
//! backend's own logic (`kqueue.rs`) runs on it where there is no kqueue —
//! in the unit tests, and as `BackendKind::Kqueue` with the `kqueue-model`
//! feature — so that Linux CI executes the change list, the receipts, the
//! rollback and the translation of records, not only type-checks them.
//!
//! It follows kqueue(2), and FreeBSD's `sys/kern/kern_event.c`
//! (`kern_kevent_fp`, `kqueue_register`, `kqueue_scan`) where the manual
//! is silent:
//!
//! * changes are applied in order; one with filter 0 is skipped, and the
//!   system flags of the input (`EV_EOF`, `EV_ERROR`, ...) are cleared;
//! * a change that fails, and any change with `EV_RECEIPT`, gives a record
//!   `{flags: EV_ERROR, data: errno or 0}` while the event list has room;
//!   without room a failure ends the call with that errno (a success ends
//!   it quietly), and the later changes are not applied;
//! * a call that gave such records returns them and collects no events;
//! * `EV_ADD` creates the knote, or replaces the `udata` of an existing
//!   one (its other flags stay); `EV_DELETE` drops it; `ENOENT` for a
//!   change to no knote without `EV_ADD`, `EBADF` for an fd that is not
//!   open, `EINVAL` for a filter other than read and write;
//! * closing an fd drops its knotes (noticed at the next call: the number
//!   is closed, or names another file);
//! * knotes are level-triggered (no `EV_CLEAR`): reported while their
//!   condition holds, each then moved to the back of the queue, so that
//!   with more ready knotes than room the next call starts with the rest;
//! * a record is the knote's kevent (ident, filter, udata, its flags less
//!   `EV_ADD`/`EV_DELETE` — `EV_RECEIPT` stays), with `EV_EOF` once the
//!   peer's end is closed (read: the peer shut down or hung up; write: the
//!   connection cannot send any more);
//! * the collection waits until a knote is ready or the timeout passes,
//!   and fails with `EINTR` if a signal comes first.
//!
//! Not modelled: the order in which knotes became active between two calls
//! (poll(2) cannot tell it: knotes that turned ready meanwhile are
//! reported in queue order, where FreeBSD reports them in the order they
//! turned ready), other filters and flags (`EV_CLEAR`, `EV_ONESHOT`,
//! `EV_DISPATCH`, `EV_ENABLE`/`EV_DISABLE`: `EINVAL` here), `data` (bytes
//! available) and low-water marks, `fflags` (the socket error), a kqueue
//! watching itself, and a number closed and reused for the same file (a
//! dup, or any of Linux's anonymous-inode fds, which share one inode):
//! FreeBSD drops those knotes at close, the model keeps them.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use super::kqueue::flag::*;
use super::kqueue::{Kernel, Kev};
use crate::sys;

/// Flags of the input that the kernel ignores (`EV_SYSFLAGS`).
const EV_SYSFLAGS: u16 = 0xf000;
/// Flags a knote does not keep (`EV_ENABLE`, `EV_DISABLE` are not modelled).
const ACTIONS: u16 = EV_ADD | EV_DELETE;

#[cfg(any(target_os = "linux", target_os = "android"))]
const POLLRDHUP: libc::c_short = libc::POLLRDHUP;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const POLLRDHUP: libc::c_short = 0;

struct Knote {
    /// The knote's kevent as registered (`flags` less the actions).
    kev: Kev,
    /// The file the fd named when the knote was made (device, inode).
    file: (u64, u64),
    /// Its place in the queue (`KeventModel::queue`).
    seq: u64,
}

/// One kqueue.
#[derive(Default)]
pub(crate) struct KeventModel {
    knotes: HashMap<(RawFd, i16), Knote>,
    /// The knotes in the order a collection looks at them.
    queue: BTreeMap<u64, (RawFd, i16)>,
    next_seq: u64,
    /// Per change applied, in order: `Some(errno)` fails it instead of
    /// applying it, `None` applies it; when empty, every change applies.
    pub(crate) faults: VecDeque<Option<i32>>,
    /// kevent(2) calls so far.
    pub(crate) calls: usize,
    pollfds: Vec<libc::pollfd>,
}

impl KeventModel {
    pub(crate) fn new() -> KeventModel {
        KeventModel::default()
    }

    /// The knotes, as `(ident, filter, udata)`, sorted.
    #[cfg(test)]
    pub(crate) fn knotes(&self) -> Vec<(RawFd, i16, usize)> {
        let mut all: Vec<_> = self
            .knotes
            .values()
            .map(|k| (k.kev.ident, k.kev.filter, k.kev.udata))
            .collect();
        all.sort_unstable();
        all
    }

    fn enqueue(&mut self, key: (RawFd, i16)) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.queue.insert(seq, key);
        seq
    }

    fn drop_knote(&mut self, key: (RawFd, i16)) {
        if let Some(k) = self.knotes.remove(&key) {
            self.queue.remove(&k.seq);
        }
    }

    /// Drops the knotes of `ident` unless they are of `file`: the fd was
    /// closed (and maybe reused) since they were made.
    fn forget_if_not(&mut self, ident: RawFd, file: Option<(u64, u64)>) {
        for filter in [EVFILT_READ, EVFILT_WRITE] {
            if self
                .knotes
                .get(&(ident, filter))
                .is_some_and(|k| Some(k.file) != file)
            {
                log::trace!("kevent-model=closed ident={ident} filter={filter}");
                self.drop_knote((ident, filter));
            }
        }
    }

    /// `kqueue_register`: one change.
    fn register(&mut self, kev: &Kev) -> Result<(), i32> {
        if kev.filter != EVFILT_READ && kev.filter != EVFILT_WRITE {
            return Err(libc::EINVAL);
        }
        if kev.flags & !(ACTIONS | EV_RECEIPT) != 0 {
            return Err(libc::EINVAL);
        }
        let file = sys::file_identity(kev.ident).map_err(|_| libc::EBADF)?;
        self.forget_if_not(kev.ident, Some(file));
        let key = (kev.ident, kev.filter);
        match self.knotes.get_mut(&key) {
            None if kev.flags & EV_ADD != 0 => {
                let seq = self.enqueue(key);
                let mut kept = *kev;
                kept.flags &= !ACTIONS;
                kept.data = 0;
                self.knotes.insert(
                    key,
                    Knote {
                        kev: kept,
                        file,
                        seq,
                    },
                );
                Ok(())
            }
            None => Err(libc::ENOENT),
            Some(_) if kev.flags & EV_DELETE != 0 => {
                self.drop_knote(key);
                Ok(())
            }
            Some(knote) => {
                knote.kev.udata = kev.udata;
                Ok(())
            }
        }
    }

    /// `kqueue_scan`: collects up to `room` ready knotes, waiting for one
    /// at most `timeout`.
    fn scan(
        &mut self,
        events: &mut Vec<Kev>,
        room: usize,
        timeout: Option<Duration>,
    ) -> io::Result<()> {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let mut idents: Vec<RawFd> = self.knotes.keys().map(|&(ident, _)| ident).collect();
        idents.sort_unstable();
        idents.dedup();
        for &ident in &idents {
            self.forget_if_not(ident, sys::file_identity(ident).ok());
        }
        // Where each ident's pollfd is.
        let mut slot_of: HashMap<RawFd, usize> = HashMap::with_capacity(idents.len());
        loop {
            self.pollfds.clear();
            slot_of.clear();
            for &(ident, filter) in self.queue.values() {
                let events = if filter == EVFILT_READ {
                    libc::POLLIN | POLLRDHUP
                } else {
                    libc::POLLOUT
                };
                let i = *slot_of.entry(ident).or_insert_with(|| {
                    self.pollfds.push(libc::pollfd {
                        fd: ident,
                        events: 0,
                        revents: 0,
                    });
                    self.pollfds.len() - 1
                });
                self.pollfds[i].events |= events;
            }
            let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let remaining = if room == 0 {
                Some(Duration::ZERO)
            } else {
                remaining.or(timeout)
            };
            let n = sys::poll(&mut self.pollfds, remaining)?;
            if n == 0 || room == 0 {
                return Ok(());
            }
            let order: Vec<(u64, (RawFd, i16))> =
                self.queue.iter().map(|(&seq, &key)| (seq, key)).collect();
            for (seq, key) in order {
                if events.len() == room {
                    break;
                }
                let Some(revents) = slot_of.get(&key.0).map(|&i| self.pollfds[i].revents) else {
                    continue;
                };
                if revents & libc::POLLNVAL != 0 {
                    self.drop_knote(key);
                    continue;
                }
                let (ready, eof) = if key.1 == EVFILT_READ {
                    (
                        revents & (libc::POLLIN | POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0,
                        revents & (POLLRDHUP | libc::POLLHUP) != 0,
                    )
                } else {
                    (
                        revents & (libc::POLLOUT | libc::POLLHUP | libc::POLLERR) != 0,
                        revents & (libc::POLLHUP | libc::POLLERR) != 0,
                    )
                };
                if !ready {
                    continue;
                }
                // Reported: to the back of the queue.
                self.queue.remove(&seq);
                let seq = self.enqueue(key);
                let knote = self.knotes.get_mut(&key).expect("queued knote");
                knote.seq = seq;
                let mut record = knote.kev;
                if eof {
                    record.flags |= EV_EOF;
                }
                events.push(record);
            }
            if !events.is_empty() || remaining == Some(Duration::ZERO) {
                return Ok(());
            }
            // Woken by something no knote reports: wait on.
        }
    }
}

impl Kernel for KeventModel {
    /// `kern_kevent_fp`.
    fn kevent(
        &mut self,
        changes: &[Kev],
        events: &mut Vec<Kev>,
        timeout: Option<Duration>,
    ) -> io::Result<()> {
        debug_assert!(events.is_empty());
        self.calls += 1;
        let room = events.capacity();
        for change in changes {
            if change.filter == 0 {
                continue;
            }
            let mut kev = *change;
            kev.flags &= !EV_SYSFLAGS;
            let error = match self.faults.pop_front().flatten() {
                Some(errno) => errno,
                None => self.register(&kev).err().unwrap_or(0),
            };
            if error == 0 && kev.flags & EV_RECEIPT == 0 {
                continue;
            }
            if events.len() == room {
                return match error {
                    0 => Ok(()),
                    errno => Err(io::Error::from_raw_os_error(errno)),
                };
            }
            events.push(Kev {
                flags: EV_ERROR,
                data: error.into(),
                ..kev
            });
        }
        if !events.is_empty() {
            return Ok(());
        }
        self.scan(events, room, timeout)
    }

    fn fd(&self) -> Option<RawFd> {
        None
    }

    fn renew_after_fork(&mut self) -> io::Result<()> {
        self.knotes.clear();
        self.queue.clear();
        Ok(())
    }
}
