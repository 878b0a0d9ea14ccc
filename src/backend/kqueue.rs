//! kqueue(2): one kernel filter per direction (`EVFILT_READ`,
//! `EVFILT_WRITE`), level-triggered (no `EV_CLEAR`).
//!
//! Cost: O(1) syscall per add/modify/delete, O(ready filters) per wait.
//! Quirks handled:
//!
//! * read and write readiness of one fd arrive as two records; the selector
//!   merges them into one event;
//! * changes are submitted with `EV_RECEIPT`, so each filter's error comes
//!   back separately and a half-applied change can be undone;
//! * closing an fd removes its filters in the kernel (kqueue(2)), so a
//!   later delete may fail with `ENOENT` or `EBADF`, which the selector
//!   tolerates;
//! * `EV_EOF` is reported as a hang-up, `EV_ERROR` as an error.

// The kevent field types differ between the BSDs (NetBSD widens `filter` and
// `flags` to u32), so the casts below are needed on some and no-ops on others.
#![allow(clippy::unnecessary_cast)]

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Duration;

use super::Backend;
use crate::sys::{self, KeventList};
use crate::{Interest, Ready, Token};

const MIN_EVENTS: usize = 64;

pub(crate) struct KqueueBackend {
    kq: OwnedFd,
    events: KeventList,
    receipts: KeventList,
    added: usize,
}

fn filters(interest: Interest) -> impl Iterator<Item = i16> {
    let read = interest.is_readable().then_some(libc::EVFILT_READ as i16);
    let write = interest.is_writable().then_some(libc::EVFILT_WRITE as i16);
    read.into_iter().chain(write)
}

impl KqueueBackend {
    pub(crate) fn new() -> io::Result<KqueueBackend> {
        Ok(KqueueBackend {
            kq: sys::kqueue()?,
            events: KeventList(Vec::with_capacity(MIN_EVENTS)),
            receipts: KeventList(Vec::with_capacity(2)),
            added: 0,
        })
    }

    /// Applies up to two changes and returns, per change, the error the
    /// kernel reported for it.
    fn apply(&mut self, changes: &[libc::kevent]) -> io::Result<[Option<io::Error>; 2]> {
        debug_assert!(changes.len() <= 2);
        let mut errors = [None, None];
        if changes.is_empty() {
            return Ok(errors);
        }
        self.receipts.0.clear();
        sys::kevent(
            &self.kq,
            changes,
            &mut self.receipts.0,
            Some(Duration::ZERO),
        )?;
        for receipt in &self.receipts.0 {
            if receipt.flags & libc::EV_ERROR as u16 != 0 && receipt.data != 0 {
                let i = changes
                    .iter()
                    .position(|c| c.filter == receipt.filter)
                    .unwrap_or(0);
                errors[i] = Some(io::Error::from_raw_os_error(receipt.data as i32));
            }
        }
        Ok(errors)
    }

    /// Adds the filters of `add` and deletes those of `del`, undoing the
    /// successful part if any change fails.
    fn change(&mut self, fd: RawFd, token: Token, add: &[i16], del: &[i16]) -> io::Result<()> {
        let flags_add = (libc::EV_ADD | libc::EV_RECEIPT) as u16;
        let flags_del = (libc::EV_DELETE | libc::EV_RECEIPT) as u16;
        let mut changes = Vec::with_capacity(2);
        changes.extend(
            add.iter()
                .map(|&f| sys::kevent_change(fd, f, flags_add, token.0)),
        );
        changes.extend(
            del.iter()
                .map(|&f| sys::kevent_change(fd, f, flags_del, token.0)),
        );
        let errors = self.apply(&changes)?;
        let Some(first) = errors.iter().position(Option::is_some) else {
            return Ok(());
        };
        // Undo what did succeed, so the kernel is left as it was.
        let undo: Vec<libc::kevent> = changes
            .iter()
            .zip(&errors)
            .filter(|(_, e)| e.is_none())
            .map(|(c, _)| {
                let flags = if c.flags & libc::EV_ADD as u16 != 0 {
                    flags_del
                } else {
                    flags_add
                };
                sys::kevent_change(fd, c.filter as i16, flags, token.0)
            })
            .collect();
        if let Err(e) = self.apply(&undo) {
            log::warn!("backend=kqueue fd={fd} rollback failed: {e}");
        }
        let [a, b] = errors;
        Err(if first == 0 { a } else { b }.expect("error at position"))
    }
}

impl Backend for KqueueBackend {
    fn name(&self) -> &'static str {
        "kqueue"
    }

    fn add(&mut self, fd: RawFd, token: Token, interest: Interest) -> io::Result<()> {
        let add: Vec<i16> = filters(interest).collect();
        self.change(fd, token, &add, &[])?;
        self.added += 1;
        Ok(())
    }

    fn modify(&mut self, fd: RawFd, token: Token, old: Interest, new: Interest) -> io::Result<()> {
        let add: Vec<i16> = filters(new)
            .filter(|f| !filters(old).any(|o| o == *f))
            .collect();
        let del: Vec<i16> = filters(old)
            .filter(|f| !filters(new).any(|n| n == *f))
            .collect();
        self.change(fd, token, &add, &del)
    }

    /// `EV_ADD` of an existing filter replaces its `udata`: one call.
    fn retoken(&mut self, fd: RawFd, _: Token, new: Token, interest: Interest) -> io::Result<()> {
        let filters: Vec<i16> = filters(interest).collect();
        self.change(fd, new, &filters, &[])
    }

    fn delete(&mut self, fd: RawFd, token: Token, interest: Interest) -> io::Result<()> {
        self.added -= 1;
        let flags = (libc::EV_DELETE | libc::EV_RECEIPT) as u16;
        let changes: Vec<libc::kevent> = filters(interest)
            .map(|f| sys::kevent_change(fd, f, flags, token.0))
            .collect();
        // Deleting is best effort: report the first error, after trying all.
        match self.apply(&changes)? {
            [Some(e), _] | [None, Some(e)] => Err(e),
            _ => Ok(()),
        }
    }

    /// The kqueue itself: it is never replaced (closing an fd removes its
    /// filters, so there is nothing to purge), and it is readable while
    /// events are pending.
    fn fd(&self) -> Option<RawFd> {
        Some(self.kq.as_raw_fd())
    }

    /// A kqueue is not inherited by a child: a new one, under the old
    /// number if the child has not reused it, with the `live` filters.
    fn after_fork(
        &mut self,
        live: &mut dyn Iterator<Item = (RawFd, Token, Interest)>,
    ) -> io::Result<()> {
        sys::take_over_after_fork(&mut self.kq, sys::kqueue()?)?;
        self.added = 0;
        for (fd, token, interest) in live {
            let add: Vec<i16> = filters(interest).collect();
            match self.change(fd, token, &add, &[]) {
                Ok(()) => self.added += 1,
                Err(e) => log::warn!("backend=kqueue fd={fd} not re-added after fork: {e}"),
            }
        }
        Ok(())
    }

    fn wait(
        &mut self,
        events: &mut Vec<(Token, Ready)>,
        timeout: Option<Duration>,
    ) -> io::Result<()> {
        self.events.0.clear();
        let want = (2 * self.added).max(MIN_EVENTS);
        if self.events.0.capacity() < want {
            self.events.0.reserve(want);
        }
        sys::kevent(&self.kq, &[], &mut self.events.0, timeout)?;
        for kev in &self.events.0 {
            let mut ready = Ready::EMPTY;
            if kev.filter == libc::EVFILT_READ as _ {
                ready |= Ready::READABLE;
            } else if kev.filter == libc::EVFILT_WRITE as _ {
                ready |= Ready::WRITABLE;
            }
            if kev.flags & libc::EV_EOF as u16 != 0 {
                ready |= Ready::HUP;
            }
            if kev.flags & libc::EV_ERROR as u16 != 0 {
                ready |= Ready::ERROR;
            }
            events.push((Token(kev.udata as usize), ready));
        }
        Ok(())
    }
}
