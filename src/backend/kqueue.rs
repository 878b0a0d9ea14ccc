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
//!
//! The backend speaks to the kernel through [`Kernel`]: on macOS and the
//! BSDs the real kevent(2) ([`SysKqueue`]); elsewhere, for the tests (and
//! with the `kqueue-model` feature), a model of FreeBSD's kevent(2) in
//! user space (`kevent_model.rs`), so that everything in this file runs
//! on Linux too.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use super::Backend;
use crate::{Interest, Ready, Token};

const MIN_EVENTS: usize = 64;

/// One kevent record, in the backend's own type: the system's `struct
/// kevent` differs between the BSDs (field widths, FreeBSD's `ext`), and
/// the model speaks this one. Filters and flags carry the system's values
/// (FreeBSD's where there is no kqueue).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Kev {
    pub(crate) ident: RawFd,
    pub(crate) filter: i16,
    pub(crate) flags: u16,
    pub(crate) data: i64,
    pub(crate) udata: usize,
}

impl Kev {
    pub(crate) fn change(ident: RawFd, filter: i16, flags: u16, udata: usize) -> Kev {
        Kev {
            ident,
            filter,
            flags,
            data: 0,
            udata,
        }
    }
}

/// The kevent(2) constants the backend uses: the system's own.
// The constant types differ between the BSDs (NetBSD widens `filter` and
// `flags` to u32), so the casts are needed on some and no-ops on others.
#[cfg(muxloop_kqueue)]
#[allow(clippy::unnecessary_cast)]
pub(crate) mod flag {
    pub(crate) const EVFILT_READ: i16 = libc::EVFILT_READ as i16;
    pub(crate) const EVFILT_WRITE: i16 = libc::EVFILT_WRITE as i16;
    pub(crate) const EV_ADD: u16 = libc::EV_ADD as u16;
    pub(crate) const EV_DELETE: u16 = libc::EV_DELETE as u16;
    pub(crate) const EV_RECEIPT: u16 = libc::EV_RECEIPT as u16;
    pub(crate) const EV_EOF: u16 = libc::EV_EOF as u16;
    pub(crate) const EV_ERROR: u16 = libc::EV_ERROR as u16;
}

/// The kevent(2) constants the backend uses: FreeBSD's (`sys/event.h`),
/// for the model.
#[cfg(not(muxloop_kqueue))]
pub(crate) mod flag {
    pub(crate) const EVFILT_READ: i16 = -1;
    pub(crate) const EVFILT_WRITE: i16 = -2;
    pub(crate) const EV_ADD: u16 = 0x0001;
    pub(crate) const EV_DELETE: u16 = 0x0002;
    pub(crate) const EV_RECEIPT: u16 = 0x0040;
    pub(crate) const EV_EOF: u16 = 0x8000;
    pub(crate) const EV_ERROR: u16 = 0x4000;
}

use flag::*;

/// What the backend needs of a kqueue.
pub(crate) trait Kernel: Send {
    /// kevent(2): applies `changes`, then (unless a change produced a
    /// record) collects ready events; records go into `events` (empty on
    /// entry), at most its capacity.
    fn kevent(
        &mut self,
        changes: &[Kev],
        events: &mut Vec<Kev>,
        timeout: Option<Duration>,
    ) -> io::Result<()>;

    /// The kqueue's fd, if it has one (the model has not).
    fn fd(&self) -> Option<RawFd>;

    /// In a forked child, which does not inherit kqueues: a new, empty one.
    fn renew_after_fork(&mut self) -> io::Result<()>;
}

/// The system's kqueue.
#[cfg(muxloop_kqueue)]
pub(crate) struct SysKqueue {
    kq: std::os::fd::OwnedFd,
    changes: crate::sys::KeventList,
    events: crate::sys::KeventList,
}

#[cfg(muxloop_kqueue)]
impl SysKqueue {
    pub(crate) fn new() -> io::Result<SysKqueue> {
        Ok(SysKqueue {
            kq: crate::sys::kqueue()?,
            changes: crate::sys::KeventList(Vec::with_capacity(2)),
            events: crate::sys::KeventList(Vec::new()),
        })
    }
}

#[cfg(muxloop_kqueue)]
#[allow(clippy::unnecessary_cast)]
impl Kernel for SysKqueue {
    fn kevent(
        &mut self,
        changes: &[Kev],
        events: &mut Vec<Kev>,
        timeout: Option<Duration>,
    ) -> io::Result<()> {
        use crate::sys;
        self.changes.0.clear();
        self.changes.0.extend(
            changes
                .iter()
                .map(|c| sys::kevent_change(c.ident, c.filter, c.flags, c.udata)),
        );
        self.events.0.clear();
        self.events.0.reserve(events.capacity());
        sys::kevent(&self.kq, &self.changes.0, &mut self.events.0, timeout)?;
        events.extend(self.events.0.iter().map(|k| Kev {
            ident: k.ident as RawFd,
            filter: k.filter as i16,
            flags: k.flags as u16,
            data: k.data as i64,
            udata: k.udata as usize,
        }));
        Ok(())
    }

    fn fd(&self) -> Option<RawFd> {
        use std::os::fd::AsRawFd;
        Some(self.kq.as_raw_fd())
    }

    /// Under the old number if the child has not reused it.
    fn renew_after_fork(&mut self) -> io::Result<()> {
        crate::sys::take_over_after_fork(&mut self.kq, crate::sys::kqueue()?)
    }
}

pub(crate) struct KqueueBackend<K: Kernel> {
    pub(crate) kq: K,
    events: Vec<Kev>,
    receipts: Vec<Kev>,
    added: usize,
}

fn filters(interest: Interest) -> impl Iterator<Item = i16> {
    let read = interest.is_readable().then_some(EVFILT_READ);
    let write = interest.is_writable().then_some(EVFILT_WRITE);
    read.into_iter().chain(write)
}

#[cfg(muxloop_kqueue)]
impl KqueueBackend<SysKqueue> {
    pub(crate) fn new() -> io::Result<KqueueBackend<SysKqueue>> {
        Ok(KqueueBackend::on(SysKqueue::new()?))
    }
}

impl<K: Kernel> KqueueBackend<K> {
    /// The backend on `kq`.
    pub(crate) fn on(kq: K) -> KqueueBackend<K> {
        KqueueBackend {
            kq,
            events: Vec::with_capacity(MIN_EVENTS),
            receipts: Vec::with_capacity(2),
            added: 0,
        }
    }

    /// Applies up to two changes and returns, per change, the error the
    /// kernel reported for it.
    fn apply(&mut self, changes: &[Kev]) -> io::Result<[Option<io::Error>; 2]> {
        debug_assert!(changes.len() <= 2);
        let mut errors = [None, None];
        if changes.is_empty() {
            return Ok(errors);
        }
        self.receipts.clear();
        self.kq
            .kevent(changes, &mut self.receipts, Some(Duration::ZERO))?;
        for receipt in &self.receipts {
            if receipt.flags & EV_ERROR != 0 && receipt.data != 0 {
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
        let flags_add = EV_ADD | EV_RECEIPT;
        let flags_del = EV_DELETE | EV_RECEIPT;
        let mut changes = Vec::with_capacity(2);
        changes.extend(add.iter().map(|&f| Kev::change(fd, f, flags_add, token.0)));
        changes.extend(del.iter().map(|&f| Kev::change(fd, f, flags_del, token.0)));
        let errors = self.apply(&changes)?;
        let Some(first) = errors.iter().position(Option::is_some) else {
            return Ok(());
        };
        // Undo what did succeed, so the kernel is left as it was.
        let undo: Vec<Kev> = changes
            .iter()
            .zip(&errors)
            .filter(|(_, e)| e.is_none())
            .map(|(c, _)| {
                let flags = if c.flags & EV_ADD != 0 {
                    flags_del
                } else {
                    flags_add
                };
                Kev::change(fd, c.filter, flags, token.0)
            })
            .collect();
        if let Err(e) = self.apply(&undo) {
            log::warn!("backend=kqueue fd={fd} rollback failed: {e}");
        }
        let [a, b] = errors;
        Err(if first == 0 { a } else { b }.expect("error at position"))
    }
}

impl<K: Kernel> Backend for KqueueBackend<K> {
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

    fn delete(&mut self, fd: RawFd, token: Token, interest: Interest) -> io::Result<()> {
        self.added -= 1;
        let changes: Vec<Kev> = filters(interest)
            .map(|f| Kev::change(fd, f, EV_DELETE | EV_RECEIPT, token.0))
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
        self.kq.fd()
    }

    /// A kqueue is not inherited by a child: a new one, with the `live`
    /// filters.
    fn after_fork(
        &mut self,
        live: &mut dyn Iterator<Item = (RawFd, Token, Interest)>,
    ) -> io::Result<()> {
        self.kq.renew_after_fork()?;
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
        self.events.clear();
        let want = (2 * self.added).max(MIN_EVENTS);
        if self.events.capacity() < want {
            self.events.reserve(want);
        }
        self.kq.kevent(&[], &mut self.events, timeout)?;
        for kev in &self.events {
            let mut ready = Ready::EMPTY;
            if kev.filter == EVFILT_READ {
                ready |= Ready::READABLE;
            } else if kev.filter == EVFILT_WRITE {
                ready |= Ready::WRITABLE;
            }
            // EOF on the read filter is the peer's half-close; on the write
            // filter, no more writing (the connection is gone).
            if kev.flags & EV_EOF != 0 {
                ready |= Ready::HUP;
                if kev.filter == EVFILT_WRITE {
                    ready |= Ready::WRITE_CLOSED;
                }
            }
            if kev.flags & EV_ERROR != 0 {
                ready |= Ready::ERROR;
            }
            events.push((Token(kev.udata), ready));
        }
        Ok(())
    }
}

/// The backend's logic on the model of FreeBSD's kevent(2)
/// (`kevent_model.rs`): receipts, rollback, interest changes, translation.
#[cfg(all(test, not(muxloop_kqueue)))]
mod tests {
    use super::super::kevent_model::KeventModel;
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    const R: Interest = Interest::READABLE;
    const W: Interest = Interest::WRITABLE;

    fn backend() -> KqueueBackend<KeventModel> {
        KqueueBackend::on(KeventModel::new())
    }

    fn pair() -> (UnixStream, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        (a, b)
    }

    fn wait(b: &mut KqueueBackend<KeventModel>) -> Vec<(Token, Ready)> {
        let mut events = Vec::new();
        b.wait(&mut events, Some(Duration::ZERO)).unwrap();
        events
    }

    #[test]
    fn add_registers_one_filter_per_direction_in_one_call() {
        let (a, _b) = pair();
        let fd = a.as_raw_fd();
        let mut b = backend();
        b.add(fd, Token(7), Interest::BOTH).unwrap();
        assert_eq!(b.kq.calls, 1);
        // (Sorted by filter: EVFILT_WRITE is -2, EVFILT_READ -1.)
        assert_eq!(b.kq.knotes(), [(fd, EVFILT_WRITE, 7), (fd, EVFILT_READ, 7)]);
    }

    #[test]
    fn error_on_the_second_change_rolls_the_first_back() {
        let (a, _b) = pair();
        let fd = a.as_raw_fd();
        let mut b = backend();
        b.add(fd, Token(1), R).unwrap();
        // READ -> WRITE: add WRITE, delete READ; the delete fails.
        b.kq.faults.extend([None, Some(libc::EBADF)]);
        let e = b.modify(fd, Token(1), R, W).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EBADF));
        // The added WRITE filter was deleted again: as before the call.
        assert_eq!(b.kq.knotes(), [(fd, EVFILT_READ, 1)]);
    }

    #[test]
    fn error_on_the_first_change_rolls_the_second_back() {
        let (a, _b) = pair();
        let fd = a.as_raw_fd();
        let mut b = backend();
        b.kq.faults.extend([Some(libc::ENOMEM), None]);
        let e = b.add(fd, Token(1), Interest::BOTH).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOMEM));
        assert_eq!(b.kq.knotes(), []);
        // Nothing counted: a later wait sizes its list for what is there.
        assert_eq!(b.added, 0);
    }

    #[test]
    fn add_of_a_closed_fd_is_ebadf_and_leaves_nothing() {
        // A number no test opens (a closed one could be reused by a test
        // running in parallel).
        let fd = 999_999;
        let mut b = backend();
        let e = b.add(fd, Token(1), Interest::BOTH).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EBADF));
        assert_eq!(b.kq.knotes(), []);
    }

    #[test]
    fn delete_tries_every_filter_and_reports_the_first_error() {
        let (a, _b) = pair();
        let fd = a.as_raw_fd();
        let mut b = backend();
        b.add(fd, Token(1), Interest::BOTH).unwrap();
        b.kq.faults.extend([Some(libc::ENOENT), None]);
        let e = b.delete(fd, Token(1), Interest::BOTH).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
        // The write filter went; the read filter's delete "failed".
        assert_eq!(b.kq.knotes(), [(fd, EVFILT_READ, 1)]);
    }

    #[test]
    fn closing_an_fd_drops_its_filters_and_a_late_delete_fails_quietly() {
        let (a, _b) = pair();
        let fd = a.as_raw_fd();
        let mut b = backend();
        b.add(fd, Token(1), R).unwrap();
        drop(a);
        assert!(wait(&mut b).is_empty());
        assert_eq!(b.kq.knotes(), []);
        // EBADF; ENOENT if a test running in parallel reused the number.
        let e = b.delete(fd, Token(1), R).unwrap_err();
        assert!(
            matches!(e.raw_os_error(), Some(libc::EBADF | libc::ENOENT)),
            "{e}"
        );
    }

    #[test]
    fn modify_is_one_call_and_events_keep_the_token() {
        let (a, mut peer) = pair();
        let fd = a.as_raw_fd();
        let mut b = backend();
        b.add(fd, Token(1), R).unwrap();
        let calls = b.kq.calls;
        b.modify(fd, Token(1), R, Interest::BOTH).unwrap();
        assert_eq!(b.kq.calls, calls + 1);
        peer.write_all(b"x").unwrap();
        let mut got = wait(&mut b);
        got.sort_by_key(|&(_, r)| r.is_writable());
        assert_eq!(
            got,
            [(Token(1), Ready::READABLE), (Token(1), Ready::WRITABLE)]
        );
    }

    #[test]
    fn read_and_write_arrive_as_two_records_and_eof_is_a_hang_up() {
        let (a, mut peer) = pair();
        let fd = a.as_raw_fd();
        let mut b = backend();
        b.add(fd, Token(3), Interest::BOTH).unwrap();
        peer.write_all(b"x").unwrap();
        let mut got = wait(&mut b);
        got.sort_by_key(|&(_, r)| r.is_writable());
        assert_eq!(
            got,
            [(Token(3), Ready::READABLE), (Token(3), Ready::WRITABLE)]
        );
        drop(peer);
        let got = wait(&mut b);
        assert!(
            got.contains(&(Token(3), Ready::READABLE | Ready::HUP)),
            "{got:?}"
        );
    }

    #[test]
    fn level_triggered_until_drained_and_fair_beyond_the_list() {
        let mut b = backend();
        let mut socks = Vec::new();
        for i in 0..(MIN_EVENTS + 6) {
            let (a, mut peer) = pair();
            b.add(a.as_raw_fd(), Token(i), R).unwrap();
            peer.write_all(b"x").unwrap();
            socks.push((a, peer));
        }
        // The list holds MIN_EVENTS (2 per registration asked for, at
        // least MIN_EVENTS): the first wait leaves some out, the next
        // starts with those.
        b.events = Vec::with_capacity(MIN_EVENTS);
        b.added = 1;
        let first = wait(&mut b);
        assert_eq!(first.len(), MIN_EVENTS);
        let second = wait(&mut b);
        let missed: Vec<Token> = (0..MIN_EVENTS + 6)
            .map(Token)
            .filter(|t| !first.iter().any(|(f, _)| f == t))
            .collect();
        assert_eq!(missed.len(), 6);
        for t in &missed {
            assert!(
                second[..6].iter().any(|(s, _)| s == t),
                "{t:?} not first in {second:?}"
            );
        }
    }

    #[test]
    fn after_fork_rebuilds_from_the_live_list() {
        let (a, _b) = pair();
        let fd = a.as_raw_fd();
        let mut b = backend();
        b.add(fd, Token(1), R).unwrap();
        b.after_fork(&mut [(fd, Token(5), Interest::BOTH)].into_iter())
            .unwrap();
        assert_eq!(b.kq.knotes(), [(fd, EVFILT_WRITE, 5), (fd, EVFILT_READ, 5)]);
        assert_eq!(b.added, 1);
    }

    /// A kernel that answers with given records: the translation of what
    /// the model never produces (an `EV_ERROR` record in the event list).
    struct Scripted(Vec<Kev>);

    impl Kernel for Scripted {
        fn kevent(
            &mut self,
            _: &[Kev],
            events: &mut Vec<Kev>,
            _: Option<Duration>,
        ) -> io::Result<()> {
            events.append(&mut self.0);
            Ok(())
        }
        fn fd(&self) -> Option<RawFd> {
            None
        }
        fn renew_after_fork(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn records_translate_to_readiness() {
        let rec = |filter, flags| Kev {
            ident: 9,
            filter,
            flags,
            data: 0,
            udata: 4,
        };
        let mut b = KqueueBackend::on(Scripted(vec![
            rec(EVFILT_READ, 0),
            rec(EVFILT_WRITE, EV_EOF),
            rec(EVFILT_READ, EV_ERROR),
        ]));
        let mut events = Vec::new();
        b.wait(&mut events, None).unwrap();
        assert_eq!(
            events,
            [
                (Token(4), Ready::READABLE),
                (Token(4), Ready::WRITABLE | Ready::HUP | Ready::WRITE_CLOSED),
                (Token(4), Ready::READABLE | Ready::ERROR),
            ]
        );
    }
}
