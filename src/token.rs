//! Registration identities that survive slot reuse.

use std::fmt;

/// Identifies one registration: a slot index plus a generation.
///
/// A `Token` is what the kernel hands back with each event (epoll's
/// `data.u64`, kqueue's `udata`, mio's `Token`). When a registration is
/// removed, its slot's generation is bumped, so a token from an event
/// collected earlier never resolves to a newer registration that reuses the
/// slot or the fd number: [`Selector::key_by_token`] returns `None` for it.
///
/// The index takes the low half of a `usize` and the generation the high
/// half (32 + 32 bits on 64-bit targets).
///
/// [`Selector::key_by_token`]: crate::Selector::key_by_token
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Token(pub usize);

const HALF: u32 = usize::BITS / 2;
const INDEX_MASK: usize = (1 << HALF) - 1;

impl Token {
    pub(crate) const MAX_INDEX: usize = INDEX_MASK;

    pub(crate) fn new(index: usize, generation: u32) -> Token {
        debug_assert!(index <= INDEX_MASK);
        let generation = (generation as usize) & INDEX_MASK;
        Token(index | (generation << HALF))
    }

    /// The slot index part.
    pub fn index(self) -> usize {
        self.0 & INDEX_MASK
    }

    /// The generation part.
    pub fn generation(self) -> u32 {
        (self.0 >> HALF) as u32
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({}v{})", self.index(), self.generation())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_index_and_generation() {
        let t = Token::new(12345, 7);
        assert_eq!(t.index(), 12345);
        assert_eq!(t.generation(), 7);
        assert_ne!(t, Token::new(12345, 8));
    }

    #[test]
    fn generation_wraps_within_its_half() {
        let max = (INDEX_MASK as u64).min(u32::MAX as u64) as u32;
        let t = Token::new(1, max);
        assert_eq!(t.index(), 1);
        assert_eq!(t.generation(), max);
    }
}
