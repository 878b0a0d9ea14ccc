//! The guides, as pages of these docs: how muxloop is built, each backend's
//! cost and quirks, the event loop, writing a backend, what is tested and
//! what was measured. (The same text is in the repository's `docs/`.)
//!
//! | page | what it covers |
//! |---|---|
//! | [`architecture`] | the layers, one `select` step by step, who owns what |
//! | [`backends`] | each backend's system calls, cost, limits and quirks |
//! | [`event_loop`] | one loop iteration, ownership, what callbacks may do |
//! | [`streams`] | protocols and transports: callback order, flow control, servers |
//! | [`embedding`] | the loop inside another program's loop, fork, signals, child processes |
//! | [`workers`] | a loop per core: reuse-port or an acceptor, messages, graceful stop |
//! | [`writing_a_backend`] | the [`Backend`](crate::Backend) contract |
//! | [`reliability`] | model-based fuzzing, fault injection, scale, soak |
//! | [`simulation`] | testing a protocol in virtual time: seeds, faults, replay |
//! | [`benchmarks`] | select vs poll vs epoll vs mio, muxloop vs libev and others |
//! | [`io_models`] | threads vs non-blocking vs select/poll/epoll/io_uring servers, measured |

// Each page is its markdown file behind `links.md`, whose link definitions
// come first and so win over the file's own (which point at the other
// markdown files, for reading them in the repository).

#[doc = include_str!("links.md")]
#[doc = include_str!("../../docs/architecture.md")]
pub mod architecture {}

#[doc = include_str!("links.md")]
#[doc = include_str!("../../docs/backends.md")]
pub mod backends {}

#[doc = include_str!("links.md")]
#[doc = include_str!("../../docs/event-loop.md")]
pub mod event_loop {}

#[doc = include_str!("links.md")]
#[doc = include_str!("../../docs/streams.md")]
pub mod streams {}

#[doc = include_str!("links.md")]
#[doc = include_str!("../../docs/embedding.md")]
pub mod embedding {}

#[doc = include_str!("links.md")]
#[doc = include_str!("../../docs/workers.md")]
pub mod workers {}

#[doc = include_str!("links.md")]
#[doc = include_str!("../../docs/writing-a-backend.md")]
pub mod writing_a_backend {}

#[doc = include_str!("links.md")]
#[doc = include_str!("../../docs/reliability.md")]
pub mod reliability {}

#[doc = include_str!("links.md")]
#[doc = include_str!("../../docs/simulation.md")]
pub mod simulation {}

#[doc = include_str!("links.md")]
#[doc = include_str!("../../docs/benchmarks.md")]
pub mod benchmarks {}

#[doc = include_str!("links.md")]
#[doc = include_str!("../../docs/io-models.md")]
pub mod io_models {}
