//! Ready events and the caller-owned buffer they are written into.

use std::os::fd::RawFd;

use crate::{Ready, Token};

/// One ready file descriptor, as returned by [`Selector::select`].
///
/// Python's `(key, mask)` pair: look the key up with
/// [`Selector::key_by_token`], which also tells whether the registration the
/// event belongs to still exists.
///
/// [`Selector::select`]: crate::Selector::select
/// [`Selector::key_by_token`]: crate::Selector::key_by_token
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    pub(crate) token: Token,
    pub(crate) fd: RawFd,
    pub(crate) ready: Ready,
}

impl Event {
    /// The registration this event belongs to.
    pub fn token(&self) -> Token {
        self.token
    }

    /// The file descriptor, as registered.
    pub fn fd(&self) -> RawFd {
        self.fd
    }

    /// What is ready, already masked by the registration's interest.
    pub fn ready(&self) -> Ready {
        self.ready
    }
}

/// A reusable buffer of [`Event`]s filled by [`Selector::select`].
///
/// The buffer grows to hold every ready fd (there is no truncation) and keeps
/// its capacity, so a loop that reuses one `Events` does not allocate once it
/// has seen its peak.
///
/// [`Selector::select`]: crate::Selector::select
///
/// # Examples
///
/// ```
/// let mut events = muxloop::Events::with_capacity(64);
/// assert!(events.is_empty());
/// assert!(events.capacity() >= 64);
/// ```
#[derive(Debug, Default)]
pub struct Events {
    pub(crate) list: Vec<Event>,
}

impl Events {
    /// An empty buffer.
    pub fn new() -> Events {
        Events::default()
    }

    /// An empty buffer with room for `capacity` events before it grows.
    pub fn with_capacity(capacity: usize) -> Events {
        Events {
            list: Vec::with_capacity(capacity),
        }
    }

    /// How many events the last `select` reported.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether the last `select` reported nothing.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// How many events fit before the buffer grows.
    pub fn capacity(&self) -> usize {
        self.list.capacity()
    }

    /// The events, in the order the kernel reported them.
    pub fn iter(&self) -> std::slice::Iter<'_, Event> {
        self.list.iter()
    }

    /// Forgets all events, keeping the capacity.
    pub fn clear(&mut self) {
        self.list.clear();
    }
}

impl<'a> IntoIterator for &'a Events {
    type Item = &'a Event;
    type IntoIter = std::slice::Iter<'a, Event>;

    fn into_iter(self) -> Self::IntoIter {
        self.list.iter()
    }
}
