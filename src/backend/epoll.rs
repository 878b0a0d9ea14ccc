//! epoll(7), level-triggered: the kernel keeps the interest set and returns
//! only ready fds.
//!
//! Cost: at most one syscall per add/modify/delete, O(ready fds) per wait.
//! Quirks handled:
//!
//! * **No truncation.** The event buffer always has room for every
//!   registered fd (`maxevents` is a hard cap in epoll_wait(2)).
//! * **Kernel data is `fd | generation << 32`**, not the selector's token.
//!   The backend keeps, per fd, the selector token and the generation of the
//!   live kernel registration, and translates each event. An event whose
//!   generation is not the live one comes from a registration the kernel
//!   kept after its fd was closed (see the last point).
//! * **Coalesced re-registration.** A delete only marks the fd; the
//!   `EPOLL_CTL_DEL` is issued at the start of the next wait. An add of the
//!   same fd before then first tries `EPOLL_CTL_ADD`: `EEXIST` proves the
//!   very same open file is still registered (epoll keys registrations by
//!   file *and* fd), so it is reused — with no further syscall if the
//!   interest is unchanged, one `EPOLL_CTL_MOD` otherwise. If the number now
//!   names another file, the ADD simply succeeds, with a new generation, so
//!   a reused fd is never left unwatched. This is libev's scheme; it turns
//!   the "stop watching, start again" pattern from two syscalls into one
//!   cheap failing one.
//! * `EPOLLRDHUP` is requested with read interest so a peer's half-close is
//!   reported as a hang-up (epoll(7), since Linux 2.6.17).
//! * Regular files and directories are refused by the kernel with `EPERM`
//!   (epoll_ctl(2)); the error reaches the selector, which rolls back.
//! * **Sparse fds.** The per-fd table is an [`FdTable`]: a registration of
//!   a very high fd number costs one hash-map entry, not a table up to it,
//!   and a refused one (`EBADF` for `i32::MAX - 1`) costs nothing.
//! * **Orphans.** Closing an fd removes its registration only when no other
//!   descriptor refers to the same open file (epoll(7), Q6). Otherwise the
//!   registration lives on, no `EPOLL_CTL_DEL` can name it any more, and,
//!   level-triggered, it would wake every wait. When an event with a dead
//!   generation shows up, the backend replaces the epoll instance with a
//!   fresh one holding only the live registrations.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Duration;

use super::host_fd::HostFd;
use super::{Backend, not_pollable};
use crate::fd_table::FdTable;
use crate::sys;
use crate::{Interest, Ready, Token};

const MIN_EVENTS: usize = 64;

/// What the kernel holds for one fd number.
#[derive(Clone, Copy, PartialEq)]
struct FdState {
    token: Token,
    interest: Interest,
    /// Generation stored in the live kernel registration's data.
    generation: u32,
    /// The kernel data events of the active registration carry, or
    /// `NOT_LIVE` if the fd is not registered with the selector: one
    /// comparison checks both per event.
    live: u64,
    /// Deleted since the last wait; the kernel registration may remain.
    deferred: bool,
}

impl FdState {
    const EMPTY: FdState = FdState {
        token: Token(0),
        interest: Interest::READABLE,
        generation: 0,
        live: NOT_LIVE,
        deferred: false,
    };
}

pub(crate) struct EpollBackend {
    ep: OwnedFd,
    events: Vec<libc::epoll_event>,
    /// Fds registered or with a deferred delete; an entry goes when both
    /// are over.
    fds: FdTable<FdState>,
    /// Fds whose delete is deferred to the next wait.
    deferred: Vec<RawFd>,
    active: usize,
    /// The generation of the last kernel registration made (any fd): each
    /// new registration gets a fresh one, so an orphan's data never
    /// matches a live registration's.
    generation: u32,
    /// What a host program polls (see `HostFd`).
    host: HostFd,
}

fn events_for(interest: Interest) -> u32 {
    let mut events = 0;
    if interest.is_readable() {
        events |= (libc::EPOLLIN | libc::EPOLLRDHUP) as u32;
    }
    if interest.is_writable() {
        events |= libc::EPOLLOUT as u32;
    }
    events
}

/// The readiness of an event's flags. The five low flags and `EPOLLRDHUP`
/// index a table computed at compile time: a shift, two masks and a load
/// per event instead of four tests.
#[inline]
fn ready_of(flags: u32) -> Ready {
    let index = (flags & 0x1f) | ((flags >> 8) & 0x20);
    READY_OF[index as usize]
}

/// `ready_of` for every index: bits 0–4 are `EPOLLIN`, `EPOLLPRI`,
/// `EPOLLOUT`, `EPOLLERR`, `EPOLLHUP`, bit 5 `EPOLLRDHUP` (0x2000 >> 8).
const READY_OF: [Ready; 64] = {
    let mut table = [Ready::EMPTY; 64];
    let mut i = 0;
    while i < 64 {
        let bits = (i as u32 & 0x1f) | ((i as u32 & 0x20) << 8);
        table[i] = Ready::from_flags(
            bits & (libc::EPOLLIN | libc::EPOLLPRI) as u32 != 0,
            bits & libc::EPOLLOUT as u32 != 0,
            bits & libc::EPOLLERR as u32 != 0,
            bits & (libc::EPOLLHUP | libc::EPOLLRDHUP) as u32 != 0,
        );
        i += 1;
    }
    table
};

/// No kernel data equals it: its fd half is not a valid fd.
const NOT_LIVE: u64 = u64::MAX;

impl FdState {
    fn active(&self) -> bool {
        self.live != NOT_LIVE
    }
}

fn data(fd: RawFd, generation: u32) -> u64 {
    u64::from(fd as u32) | (u64::from(generation) << 32)
}

impl EpollBackend {
    pub(crate) fn new() -> io::Result<EpollBackend> {
        let ep = sys::epoll_create()?;
        Ok(EpollBackend {
            host: HostFd::new(ep.as_raw_fd()),
            ep,
            events: Vec::with_capacity(MIN_EVENTS),
            fds: FdTable::new(FdState::EMPTY),
            deferred: Vec::new(),
            active: 0,
            generation: 0,
        })
    }

    /// A generation no live kernel registration carries (0 is the vacant
    /// entry's).
    fn next_generation(&mut self) -> u32 {
        self.generation = self.generation.wrapping_add(1).max(1);
        self.generation
    }

    fn state(&mut self, fd: RawFd) -> &mut FdState {
        self.fds
            .get_mut(fd)
            .expect("the backend keeps an entry for every fd it was given")
    }

    fn ctl(
        &self,
        op: libc::c_int,
        fd: RawFd,
        interest: Interest,
        generation: u32,
    ) -> io::Result<()> {
        sys::epoll_ctl(&self.ep, op, fd, events_for(interest), data(fd, generation))
    }

    /// Re-adds an fd deleted since the last wait, reusing its kernel
    /// registration if the same open file still holds it.
    fn revive(&mut self, fd: RawFd, interest: Interest) -> io::Result<()> {
        let st = *self.state(fd);
        let fresh = self.next_generation();
        match self.ctl(libc::EPOLL_CTL_ADD, fd, interest, fresh) {
            // Another file (or none) is at this number now: registered anew.
            Ok(()) => {
                self.state(fd).generation = fresh;
                Ok(())
            }
            // The same open file is still registered, with the old data.
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                if st.interest != interest {
                    self.ctl(libc::EPOLL_CTL_MOD, fd, interest, st.generation)?;
                }
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Applies the deferred deletes, if any (checked inline: every wait
    /// calls it).
    #[inline]
    fn flush_deletes(&mut self) {
        if !self.deferred.is_empty() {
            self.apply_deletes();
        }
    }

    /// Applies the deferred deletes. Errors are expected and ignored: a
    /// closed fd (EBADF) or a reused one (ENOENT) has nothing to delete.
    fn apply_deletes(&mut self) {
        for i in 0..self.deferred.len() {
            let fd = self.deferred[i];
            let Some(st) = self.fds.get_mut(fd) else {
                continue;
            };
            if st.deferred {
                st.deferred = false;
                if !st.active() {
                    self.fds.remove(fd);
                }
                if let Err(e) = sys::epoll_ctl(&self.ep, libc::EPOLL_CTL_DEL, fd, 0, 0) {
                    log::trace!("backend=epoll fd={fd} deferred delete: {e}");
                }
            }
        }
        self.deferred.clear();
    }

    /// Replaces the epoll instance with one holding only the active
    /// registrations, dropping orphans no `EPOLL_CTL_DEL` can reach.
    fn rebuild(&mut self) -> io::Result<()> {
        self.flush_deletes();
        let live: Vec<(RawFd, Token, Interest)> = self
            .fds
            .iter()
            .filter(|(_, st)| st.active())
            .map(|(fd, st)| (fd, st.token, st.interest))
            .collect();
        let ep = self.fresh_set(&mut live.into_iter())?;
        log::warn!(
            "backend=epoll rebuilt the epoll set without registrations of closed fds \
             (closed while registered, or after unregister while a dup kept the file open); \
             registrations={}",
            self.active
        );
        self.switch_to(ep)
    }

    /// Makes `ep` the instance (the old one closes) and tells the host fd.
    fn switch_to(&mut self, ep: OwnedFd) -> io::Result<()> {
        let _old = std::mem::replace(&mut self.ep, ep);
        self.host.replaced(self.ep.as_raw_fd())
    }

    /// A new instance holding `live` (those the kernel still accepts); the
    /// table describes every one of them.
    /// Deferred deletes are dropped unapplied: after `fork` they would
    /// reach the instance the child shares with its parent.
    fn fresh_set(
        &mut self,
        live: &mut dyn Iterator<Item = (RawFd, Token, Interest)>,
    ) -> io::Result<OwnedFd> {
        let ep = sys::epoll_create()?;
        self.fds.clear();
        self.deferred.clear();
        self.active = 0;
        for (fd, token, interest) in live {
            let generation = self.next_generation();
            let res = sys::epoll_ctl(
                &ep,
                libc::EPOLL_CTL_ADD,
                fd,
                events_for(interest),
                data(fd, generation),
            );
            // A closed fd stays registered with the selector: keep its
            // entry (nothing to watch until it is unregistered).
            if let Err(e) = res {
                log::warn!("backend=epoll fd={fd} not re-added: {e}");
            }
            self.fds.insert(
                fd,
                FdState {
                    token,
                    interest,
                    generation,
                    live: data(fd, generation),
                    deferred: false,
                },
            );
            self.active += 1;
        }
        Ok(ep)
    }
}

impl Backend for EpollBackend {
    fn name(&self) -> &'static str {
        "epoll"
    }

    fn reports_each_fd_once(&self) -> bool {
        true
    }

    fn add(&mut self, fd: RawFd, token: Token, interest: Interest) -> io::Result<()> {
        // Only a deferred delete can have left an entry: the selector never
        // adds an fd twice.
        if self.fds.get(fd).is_some_and(|st| st.deferred) {
            self.state(fd).deferred = false;
            if let Err(e) = self.revive(fd, interest) {
                // Nothing is registered any more; the deferred delete
                // (still queued) drops whatever the kernel kept.
                self.state(fd).deferred = true;
                return Err(not_pollable("epoll", fd, e));
            }
        } else {
            // Nothing is recorded before the kernel accepts the fd.
            let generation = self.next_generation();
            self.ctl(libc::EPOLL_CTL_ADD, fd, interest, generation)
                .map_err(|e| not_pollable("epoll", fd, e))?;
            self.fds.insert(
                fd,
                FdState {
                    generation,
                    ..FdState::EMPTY
                },
            );
        }
        let st = self.state(fd);
        st.token = token;
        st.interest = interest;
        st.live = data(fd, st.generation);
        self.active += 1;
        Ok(())
    }

    fn modify(&mut self, fd: RawFd, token: Token, _: Interest, new: Interest) -> io::Result<()> {
        let generation = self.state(fd).generation;
        self.ctl(libc::EPOLL_CTL_MOD, fd, new, generation)?;
        let st = self.state(fd);
        st.token = token;
        st.interest = new;
        Ok(())
    }

    /// The kernel data names the fd and the kernel generation, not the
    /// token, so a new token needs no system call.
    fn retoken(&mut self, fd: RawFd, _: Token, new: Token, _: Interest) -> io::Result<()> {
        match self.fds.get_mut(fd) {
            Some(st) if st.active() => {
                st.token = new;
                Ok(())
            }
            _ => Err(io::Error::from_raw_os_error(libc::ENOENT)),
        }
    }

    fn delete(&mut self, fd: RawFd, _: Token, _: Interest) -> io::Result<()> {
        // Deferred to the next wait (see the module docs); no event can be
        // collected for the fd before then.
        let st = self.state(fd);
        st.live = NOT_LIVE;
        st.deferred = true;
        self.deferred.push(fd);
        self.active -= 1;
        Ok(())
    }

    /// Re-synchronises with the selector's registrations: a fresh epoll
    /// instance holding exactly `live`. Needed if the kernel and the
    /// backend's table disagree, e.g. after a wrapper dropped a delete.
    fn purge(
        &mut self,
        live: &mut dyn Iterator<Item = (RawFd, Token, Interest)>,
    ) -> io::Result<()> {
        let ep = self.fresh_set(live)?;
        self.switch_to(ep)
    }

    /// The inherited instance is the parent's too: the child makes its
    /// own, and only the child's reference to the old one closes.
    fn after_fork(
        &mut self,
        live: &mut dyn Iterator<Item = (RawFd, Token, Interest)>,
    ) -> io::Result<()> {
        self.ep = self.fresh_set(live)?;
        self.host.after_fork(self.ep.as_raw_fd())
    }

    fn fd(&self) -> Option<RawFd> {
        self.host.fd()
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_deletes();
        Ok(())
    }

    fn has_deferred(&self) -> bool {
        !self.deferred.is_empty()
    }

    fn wait(
        &mut self,
        events: &mut Vec<(Token, Ready)>,
        timeout: Option<Duration>,
    ) -> io::Result<()> {
        self.flush_deletes();
        self.events.clear();
        let want = self.active.max(MIN_EVENTS);
        if self.events.capacity() < want {
            self.events.reserve(want);
        }
        sys::epoll_wait(&self.ep, &mut self.events, timeout)?;
        // Each record is written in place and kept only if it is the live
        // registration's: no branch and no capacity check per event.
        let start = events.len();
        let n = self.events.len();
        events.resize(start + n, (Token(0), Ready::EMPTY));
        let out = &mut events[start..];
        let mut kept = 0;
        for ev in &self.events {
            // A vacant entry's `live` is NOT_LIVE: the comparison rejects
            // it, so no vacancy test is needed.
            if let Some(st) = self.fds.get_or_vacant((ev.u64 & 0xffff_ffff) as RawFd) {
                out[kept] = (st.token, ready_of(ev.events));
                kept += usize::from(st.live == ev.u64);
            }
        }
        events.truncate(start + kept);
        // A record that is not the live registration's: an orphan (see
        // above).
        let orphans = kept < n;
        if orphans {
            self.rebuild()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_map_to_readiness() {
        let cases = [
            (libc::EPOLLIN, Ready::READABLE),
            (libc::EPOLLPRI, Ready::READABLE),
            (libc::EPOLLOUT, Ready::WRITABLE),
            (
                libc::EPOLLIN | libc::EPOLLOUT,
                Ready::READABLE | Ready::WRITABLE,
            ),
            (libc::EPOLLERR, Ready::ERROR),
            (libc::EPOLLHUP, Ready::HUP),
            (
                libc::EPOLLRDHUP | libc::EPOLLIN,
                Ready::HUP | Ready::READABLE,
            ),
            (
                libc::EPOLLERR | libc::EPOLLHUP | libc::EPOLLOUT,
                Ready::ERROR | Ready::HUP | Ready::WRITABLE,
            ),
            // Flags muxloop never asks for do not leak into the result.
            (
                libc::EPOLLRDNORM | libc::EPOLLWRNORM | libc::EPOLLMSG,
                Ready::EMPTY,
            ),
        ];
        for (flags, want) in cases {
            assert_eq!(ready_of(flags as u32), want, "flags {flags:#x}");
        }
    }
}
