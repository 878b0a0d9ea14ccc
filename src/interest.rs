//! What a registration waits for.

use std::fmt;
use std::ops::BitOr;

/// The readiness a registration is interested in: readable, writable or both.
///
/// An `Interest` is never empty: the only ways to build one are the two
/// constants, `|` between them, and [`Interest::from_bits`], which refuses 0.
/// This is Python's `EVENT_READ` / `EVENT_WRITE` mask with the empty mask
/// made unrepresentable.
///
/// # Examples
///
/// ```
/// use muxloop::Interest;
///
/// let both = Interest::READABLE | Interest::WRITABLE;
/// assert!(both.is_readable() && both.is_writable());
/// assert_eq!(both.remove(Interest::WRITABLE), Some(Interest::READABLE));
/// assert_eq!(Interest::READABLE.remove(Interest::READABLE), None);
/// assert_eq!(Interest::from_bits(0), None);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Interest(u8);

const READ: u8 = 0b01;
const WRITE: u8 = 0b10;

impl Interest {
    /// Interest in read readiness (Python's `EVENT_READ`).
    pub const READABLE: Interest = Interest(READ);
    /// Interest in write readiness (Python's `EVENT_WRITE`).
    pub const WRITABLE: Interest = Interest(WRITE);
    /// Interest in both.
    pub const BOTH: Interest = Interest(READ | WRITE);

    /// Builds an interest from Python-style bits (`1` = read, `2` = write).
    ///
    /// Returns `None` for 0 and for any unknown bit.
    pub const fn from_bits(bits: u8) -> Option<Interest> {
        if bits == 0 || bits & !(READ | WRITE) != 0 {
            None
        } else {
            Some(Interest(bits))
        }
    }

    /// The Python-style bits: `1` = read, `2` = write.
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// Whether read readiness is wanted.
    pub const fn is_readable(self) -> bool {
        self.0 & READ != 0
    }

    /// Whether write readiness is wanted.
    pub const fn is_writable(self) -> bool {
        self.0 & WRITE != 0
    }

    /// Both interests together (the same as `|`).
    pub const fn add(self, other: Interest) -> Interest {
        Interest(self.0 | other.0)
    }

    /// `self` without `other`, or `None` if nothing would remain.
    pub const fn remove(self, other: Interest) -> Option<Interest> {
        Interest::from_bits(self.0 & !other.0)
    }
}

impl BitOr for Interest {
    type Output = Interest;

    fn bitor(self, other: Interest) -> Interest {
        self.add(other)
    }
}

impl fmt::Debug for Interest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.is_readable(), self.is_writable()) {
            (true, true) => f.write_str("READABLE | WRITABLE"),
            (true, false) => f.write_str("READABLE"),
            _ => f.write_str("WRITABLE"),
        }
    }
}
