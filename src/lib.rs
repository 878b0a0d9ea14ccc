#![doc = include_str!("../README.md")]
#![warn(
    missing_docs,
    unsafe_op_in_unsafe_fn,
    clippy::undocumented_unsafe_blocks
)]
#![cfg(unix)]

mod backend;
mod event;
mod event_loop;
mod fd_table;
mod interest;
mod ready;
mod selector;
mod signal;
mod sys;
mod timer;
mod token;
mod waker;

pub use backend::{BACKEND_ENV, Backend, BackendKind};
pub use event::{Event, Events};
pub use event_loop::{EventLoop, LoopHandle, LoopStats, Paused, PostAction, SourceEvent, SourceId};
pub use interest::Interest;
pub use ready::Ready;
pub use selector::{Selector, SelectorKey};
pub use timer::TimerId;
pub use token::Token;

/// The guides under `docs/` are compiled and run as doc-tests too.
#[cfg(doctest)]
#[doc = include_str!("../docs/writing-a-backend.md")]
struct WritingABackend;

#[cfg(doctest)]
#[doc = include_str!("../docs/architecture.md")]
struct Architecture;

#[cfg(doctest)]
#[doc = include_str!("../docs/backends.md")]
struct Backends;

#[cfg(doctest)]
#[doc = include_str!("../docs/event-loop.md")]
struct EventLoopGuide;
