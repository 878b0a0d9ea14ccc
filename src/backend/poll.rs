//! poll(2): an array of `pollfd`, handed to the kernel whole on every wait.
//!
//! Cost: O(registered fds) per wait, in the kernel and here. No fd limit
//! beyond `RLIMIT_NOFILE`. Removal swaps the last entry into the hole, so
//! add, modify and delete are O(1).

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use super::Backend;
use crate::fd_table::FdTable;
use crate::sys;
use crate::{Interest, Ready, Token};

/// Linux also reports a peer's shutdown of its writing side.
#[cfg(any(target_os = "linux", target_os = "android"))]
const READ_EVENTS: libc::c_short = libc::POLLIN | libc::POLLRDHUP;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const READ_EVENTS: libc::c_short = libc::POLLIN;

// The flag table below relies on the values every supported system gives
// the six classic flags.
const _: () = assert!(
    libc::POLLIN == 0x1
        && libc::POLLPRI == 0x2
        && libc::POLLOUT == 0x4
        && libc::POLLERR == 0x8
        && libc::POLLHUP == 0x10
        && libc::POLLNVAL == 0x20
);

/// Bit 6 of the table index: `POLLRDHUP` (Linux's 0x2000), or nothing.
#[cfg(any(target_os = "linux", target_os = "android"))]
#[inline]
fn rdhup_bit(re: usize) -> usize {
    const _: () = assert!(libc::POLLRDHUP == 0x2000);
    (re >> 7) & 0x40
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
#[inline]
fn rdhup_bit(_: usize) -> usize {
    0
}

/// The readiness of `revents`: a table indexed by the six classic flags and
/// `POLLRDHUP`, computed at compile time (a shift, two masks and a load
/// instead of five tests). `POLLNVAL` (a closed fd) is an error.
#[inline]
fn ready_of(re: libc::c_short) -> Ready {
    let re = re as u16 as usize;
    READY_OF[(re & 0x3f) | rdhup_bit(re)]
}

const READY_OF: [Ready; 128] = {
    let mut table = [Ready::EMPTY; 128];
    let mut i = 0;
    while i < 128 {
        table[i] = Ready::from_flags(
            i & 0x3 != 0,
            i & 0x4 != 0,
            i & (0x8 | 0x20) != 0,
            i & (0x10 | 0x40) != 0,
            i & 0x10 != 0,
        );
        i += 1;
    }
    table
};

pub(crate) struct PollBackend {
    fds: Vec<libc::pollfd>,
    /// Token of `fds[i]`.
    tokens: Vec<Token>,
    /// Position in `fds` of each added fd.
    index: FdTable<usize>,
}

fn events_for(interest: Interest) -> libc::c_short {
    let mut events = 0;
    if interest.is_readable() {
        events |= READ_EVENTS;
    }
    if interest.is_writable() {
        events |= libc::POLLOUT;
    }
    events
}

impl PollBackend {
    pub(crate) fn new() -> PollBackend {
        PollBackend {
            fds: Vec::new(),
            tokens: Vec::new(),
            index: FdTable::new(usize::MAX),
        }
    }

    fn position(&self, fd: RawFd) -> io::Result<usize> {
        match self.index.get(fd) {
            Some(&pos) => Ok(pos),
            None => Err(io::Error::from_raw_os_error(libc::ENOENT)),
        }
    }
}

impl Backend for PollBackend {
    fn name(&self) -> &'static str {
        "poll"
    }

    fn reports_each_fd_once(&self) -> bool {
        true
    }

    fn add(&mut self, fd: RawFd, token: Token, interest: Interest) -> io::Result<()> {
        // poll(2) would only flag it later, with POLLNVAL.
        sys::check_open(fd)?;
        self.index.insert(fd, self.fds.len());
        self.fds.push(libc::pollfd {
            fd,
            events: events_for(interest),
            revents: 0,
        });
        self.tokens.push(token);
        Ok(())
    }

    fn modify(&mut self, fd: RawFd, token: Token, _: Interest, new: Interest) -> io::Result<()> {
        let pos = self.position(fd)?;
        self.fds[pos].events = events_for(new);
        self.tokens[pos] = token;
        Ok(())
    }

    fn delete(&mut self, fd: RawFd, _: Token, _: Interest) -> io::Result<()> {
        let pos = self.position(fd)?;
        self.fds.swap_remove(pos);
        self.tokens.swap_remove(pos);
        self.index.remove(fd);
        if let Some(moved) = self.fds.get(pos) {
            self.index.insert(moved.fd, pos);
        }
        Ok(())
    }

    fn wait(
        &mut self,
        events: &mut Vec<(Token, Ready)>,
        timeout: Option<Duration>,
    ) -> io::Result<()> {
        let left = sys::poll(&mut self.fds, timeout)?;
        // `left` records, each written in place: no capacity check per
        // record.
        let start = events.len();
        events.resize(start + left, (Token(0), Ready::EMPTY));
        let out = &mut events[start..];
        let mut n = 0;
        for (pfd, &token) in self.fds.iter().zip(&self.tokens) {
            if n == out.len() {
                break;
            }
            let re = pfd.revents;
            if re == 0 {
                continue;
            }
            if re & libc::POLLNVAL != 0 {
                closed_while_registered(pfd.fd);
            }
            out[n] = (token, ready_of(re));
            n += 1;
        }
        events.truncate(start + n);
        Ok(())
    }
}

#[cold]
fn closed_while_registered(fd: RawFd) {
    log::warn!("backend=poll fd={fd} closed while registered (unregister before close)");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_map_to_readiness() {
        let cases = [
            (libc::POLLIN, Ready::READABLE),
            (libc::POLLPRI, Ready::READABLE),
            (libc::POLLOUT, Ready::WRITABLE),
            (
                libc::POLLIN | libc::POLLOUT,
                Ready::READABLE | Ready::WRITABLE,
            ),
            (libc::POLLERR, Ready::ERROR),
            (libc::POLLNVAL, Ready::ERROR),
            (libc::POLLHUP, Ready::HUP | Ready::WRITE_CLOSED),
            (
                libc::POLLHUP | libc::POLLIN,
                Ready::HUP | Ready::WRITE_CLOSED | Ready::READABLE,
            ),
            (
                libc::POLLERR | libc::POLLHUP | libc::POLLOUT,
                Ready::ERROR | Ready::HUP | Ready::WRITE_CLOSED | Ready::WRITABLE,
            ),
            // Flags muxloop never asks for do not leak into the result.
            (libc::POLLRDNORM | libc::POLLWRBAND, Ready::EMPTY),
        ];
        for (flags, want) in cases {
            assert_eq!(ready_of(flags), want, "flags {flags:#x}");
        }
        #[cfg(any(target_os = "linux", target_os = "android"))]
        assert_eq!(
            ready_of(libc::POLLRDHUP | libc::POLLIN),
            Ready::HUP | Ready::READABLE
        );
    }
}
