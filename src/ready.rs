//! What fired.

use std::fmt;
use std::ops::{BitOr, BitOrAssign};

use crate::Interest;

/// The readiness of one file descriptor, as reported by [`Selector::select`].
///
/// `readable` and `writable` are what matters for control flow, and they are
/// always masked by the registration's [`Interest`]: a key registered for
/// reading never reports `writable`. `error`, `hup` and `write_closed` are
/// extra hints about *why* the fd woke up. An error, or a connection closed
/// both ways, wakes the fd for each direction it is registered for (so a
/// reader sees `readable` and then `read` returns 0 or the error, a writer
/// sees `writable` and then `write` fails at once). A half-close — the peer
/// shut down only its writing side — wakes readers only: it is no reason to
/// write, so a writer whose buffer is full keeps waiting for room. Whether
/// the hint bits themselves are set depends on the kernel interface:
/// `select(2)` cannot tell, and sets none. See `docs/backends.md`.
///
/// [`Selector::select`]: crate::Selector::select
///
/// # Examples
///
/// ```
/// use muxloop::Ready;
///
/// let r = Ready::READABLE | Ready::HUP;
/// assert!(r.is_readable() && r.is_hup() && !r.is_writable());
/// assert!(!r.is_write_closed());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Ready(u8);

const READABLE: u8 = 0b0001;
const WRITABLE: u8 = 0b0010;
const ERROR: u8 = 0b0100;
const HUP: u8 = 0b1000;
const WRITE_CLOSED: u8 = 0b1_0000;

impl Ready {
    /// Nothing is ready.
    pub const EMPTY: Ready = Ready(0);
    /// A read will not block.
    pub const READABLE: Ready = Ready(READABLE);
    /// A write will not block.
    pub const WRITABLE: Ready = Ready(WRITABLE);
    /// The kernel reported an error condition (`POLLERR`, `EPOLLERR`,
    /// `EV_ERROR`, an invalid fd). Read or write the fd to learn which error.
    pub const ERROR: Ready = Ready(ERROR);
    /// The peer hung up, at least its writing side (`POLLHUP`,
    /// `EPOLLRDHUP`, `EV_EOF`): the next reads return what is left, then 0.
    pub const HUP: Ready = Ready(HUP);
    /// The connection can no longer be written either (`POLLHUP`,
    /// `EPOLLHUP`, `EV_EOF` on the write filter): a write fails at once.
    /// Kernels report it with [`HUP`](Ready::HUP); it wakes writers, which a
    /// half-close alone does not.
    pub const WRITE_CLOSED: Ready = Ready(WRITE_CLOSED);

    /// Builds a readiness from its five flags, without branches (backends
    /// call it once per kernel event).
    #[inline]
    pub(crate) const fn from_flags(
        readable: bool,
        writable: bool,
        error: bool,
        hup: bool,
        write_closed: bool,
    ) -> Ready {
        Ready(
            (readable as u8 * READABLE)
                | (writable as u8 * WRITABLE)
                | (error as u8 * ERROR)
                | (hup as u8 * HUP)
                | (write_closed as u8 * WRITE_CLOSED),
        )
    }

    /// Whether a read will not block.
    pub const fn is_readable(self) -> bool {
        self.0 & READABLE != 0
    }

    /// Whether a write will not block.
    pub const fn is_writable(self) -> bool {
        self.0 & WRITABLE != 0
    }

    /// Whether the kernel flagged an error condition.
    pub const fn is_error(self) -> bool {
        self.0 & ERROR != 0
    }

    /// Whether the kernel flagged a hang-up (at least the peer's writing
    /// side).
    pub const fn is_hup(self) -> bool {
        self.0 & HUP != 0
    }

    /// Whether the kernel flagged that writing is over too (see
    /// [`WRITE_CLOSED`](Ready::WRITE_CLOSED)).
    pub const fn is_write_closed(self) -> bool {
        self.0 & WRITE_CLOSED != 0
    }

    /// Whether no bit is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Whether every bit of `other` is set in `self`.
    pub const fn contains(self, other: Ready) -> bool {
        self.0 & other.0 == other.0
    }

    /// The readiness a registration with `interest` sees.
    ///
    /// An error or a closed write side wakes every registered direction, a
    /// hang-up of the peer's writing side wakes readers; then the
    /// directions are masked by `interest`. The result is empty when
    /// nothing the registration asked for happened.
    #[inline]
    pub(crate) fn masked(self, interest: Interest) -> Ready {
        let bits = self.0;
        let hints = bits & (ERROR | HUP | WRITE_CLOSED);
        if hints == 0 {
            // The usual record: directions only.
            return Ready(bits & interest.bits());
        }
        // ERROR or WRITE_CLOSED wake both directions, HUP wakes reading.
        let woken = if hints & (ERROR | WRITE_CLOSED) != 0 {
            READABLE | WRITABLE
        } else {
            bits | READABLE
        };
        let dirs = woken & interest.bits();
        if dirs == 0 {
            Ready::EMPTY
        } else {
            Ready(dirs | hints)
        }
    }

    /// The directions as an [`Interest`], or `None` if neither is set
    /// (Python's `mask` in `for key, mask in sel.select()`).
    pub const fn interest(self) -> Option<Interest> {
        Interest::from_bits(self.0 & (READABLE | WRITABLE))
    }
}

impl BitOr for Ready {
    type Output = Ready;

    fn bitor(self, other: Ready) -> Ready {
        Ready(self.0 | other.0)
    }
}

impl BitOrAssign for Ready {
    fn bitor_assign(&mut self, other: Ready) {
        self.0 |= other.0;
    }
}

impl fmt::Debug for Ready {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = [
            (READABLE, "READABLE"),
            (WRITABLE, "WRITABLE"),
            (ERROR, "ERROR"),
            (HUP, "HUP"),
            (WRITE_CLOSED, "WRITE_CLOSED"),
        ];
        let mut first = true;
        for (bit, name) in names {
            if self.0 & bit != 0 {
                if !first {
                    f.write_str(" | ")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        if first {
            f.write_str("EMPTY")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masking_keeps_only_registered_directions() {
        let both = Ready::READABLE | Ready::WRITABLE;
        assert_eq!(both.masked(Interest::READABLE), Ready::READABLE);
        assert_eq!(both.masked(Interest::WRITABLE), Ready::WRITABLE);
        assert_eq!(Ready::WRITABLE.masked(Interest::READABLE), Ready::EMPTY);
    }

    #[test]
    fn hang_up_wakes_registered_directions() {
        let r = Ready::HUP.masked(Interest::READABLE);
        assert_eq!(r, Ready::READABLE | Ready::HUP);
        let e = Ready::ERROR.masked(Interest::WRITABLE);
        assert_eq!(e, Ready::WRITABLE | Ready::ERROR);
        let closed = Ready::HUP | Ready::WRITE_CLOSED;
        assert_eq!(closed.masked(Interest::WRITABLE), Ready::WRITABLE | closed);
    }

    #[test]
    fn half_close_does_not_wake_a_writer() {
        assert_eq!(Ready::HUP.masked(Interest::WRITABLE), Ready::EMPTY);
        let eof = Ready::READABLE | Ready::HUP;
        assert_eq!(eof.masked(Interest::BOTH), eof);
        let room = Ready::WRITABLE | Ready::HUP;
        assert_eq!(room.masked(Interest::WRITABLE), room);
    }

    #[test]
    fn masking_rules_hold_for_every_combination() {
        for bits in 0..32u8 {
            let ready = Ready(bits);
            for interest in [Interest::READABLE, Interest::WRITABLE, Interest::BOTH] {
                let got = ready.masked(interest);
                let mut woken = bits & (READABLE | WRITABLE);
                if bits & (ERROR | WRITE_CLOSED) != 0 {
                    woken = READABLE | WRITABLE;
                }
                if bits & HUP != 0 {
                    woken |= READABLE;
                }
                let dirs = woken & interest.bits();
                let want = if dirs == 0 {
                    Ready::EMPTY
                } else {
                    Ready(dirs | (bits & (ERROR | HUP | WRITE_CLOSED)))
                };
                assert_eq!(got, want, "{ready:?} masked by {interest:?}");
            }
        }
    }

    #[test]
    fn debug_lists_bits() {
        assert_eq!(
            format!("{:?}", Ready::READABLE | Ready::HUP),
            "READABLE | HUP"
        );
        assert_eq!(format!("{:?}", Ready::EMPTY), "EMPTY");
    }
}
