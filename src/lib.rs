// The link definitions come first, so the README's links to `docs/*.md`
// become links to the same guides in these docs.
#![doc = include_str!("guide/links.md")]
#![doc = include_str!("../README.md")]
#![warn(
    missing_docs,
    unsafe_op_in_unsafe_fn,
    clippy::undocumented_unsafe_blocks
)]
#[cfg(not(unix))]
compile_error!(
    "muxloop supports Unix only (Linux, Android, macOS, iOS and the BSDs): it is built on \
     select(2), poll(2), epoll and kqueue"
);

/// Gives every item `#[cfg(unix)]`, so that elsewhere the crate is empty
/// but for the `compile_error!` above.
macro_rules! unix_only {
    ($($item:item)*) => { $( #[cfg(unix)] $item )* };
}

unix_only! {
    mod backend;
    mod clock;
    mod event;
    mod event_loop;
    mod fd_table;
    pub mod guide;
    mod interest;
    mod ready;
    mod selector;
    pub mod sim;
    pub mod stream;
    mod sys;
    mod token;
    mod waker;
    pub mod workers;

    pub use backend::{BACKEND_ENV, Backend, BackendKind, URING_ENV};
    pub use clock::VirtualClock;
    pub use event::{Event, Events};
    pub use event_loop::{
        BlockingPool, EventLoop, LoopHandle, LoopStats, Paused, PostAction, SourceEvent, SourceId,
        TimerId,
    };
    pub use interest::Interest;
    pub use ready::Ready;
    pub use selector::{Selector, SelectorKey};
    pub use token::Token;
}
