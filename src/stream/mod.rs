//! Protocols and transports: connections as callbacks, with the buffering,
//! flow control, half-close, timers and shutdown that every server would
//! otherwise write by hand. asyncio's `Protocol`/`Transport` split, on the
//! [`EventLoop`], on every backend.
//!
//! * A [`Protocol`] is what a connection *does*: a set of callbacks called
//!   in a fixed order — [`connection_made`](Protocol::connection_made), then
//!   [`data_received`](Protocol::data_received) any number of times, at most
//!   one [`eof_received`](Protocol::eof_received), and
//!   [`connection_lost`](Protocol::connection_lost) exactly once, last. (A
//!   client connect that fails calls
//!   [`connection_failed`](Protocol::connection_failed) instead, and nothing
//!   else.)
//! * A [`Transport`] is how it talks: every callback gets one, to
//!   [`write`](Transport::write) (at once when nothing is pending, buffered
//!   otherwise: never blocking, never dropping, never reordering), to pause
//!   reading, to half-close, close or abort, to write to *other*
//!   connections by [`ConnId`], and to own timers that die with the
//!   connection.
//! * [`serve`] runs a listener (TCP, IPv4 or IPv6, or Unix) with a protocol
//!   per connection, out-of-fds handling, a connection cap and graceful
//!   shutdown; [`connect`] is the client side.
//!
//! Where asyncio's users get hurt, this layer is stricter: a protocol that
//! ignores [`pause_writing`](Protocol::pause_writing) is still bounded by
//! what it chooses to do (the write buffer size is always known, and a
//! server can cut off a slow consumer, see `examples/chat.rs`); `close`
//! never drops written data; pausing and resuming reading is idempotent and
//! never loses readiness (the loop is level-triggered).
//!
//! # Examples
//!
//! An echo server is one protocol:
//!
//! ```
//! use muxloop::stream::{self, Protocol, ServeOptions, Transport};
//! use muxloop::EventLoop;
//! use std::io::{Read, Write};
//! use std::net::{TcpListener, TcpStream};
//! use std::time::Duration;
//!
//! struct Echo;
//!
//! impl Protocol<()> for Echo {
//!     fn data_received(&mut self, t: &mut Transport<'_, ()>, data: &[u8], _: &mut ()) {
//!         t.write(data);
//!     }
//!     // Back-pressure: stop reading while the peer does not keep up.
//!     fn pause_writing(&mut self, t: &mut Transport<'_, ()>, _: &mut ()) {
//!         t.pause_reading();
//!     }
//!     fn resume_writing(&mut self, t: &mut Transport<'_, ()>, _: &mut ()) {
//!         t.resume_reading();
//!     }
//! }
//!
//! let mut lp = EventLoop::<()>::new()?;
//! let listener = TcpListener::bind("127.0.0.1:0")?;
//! let server = stream::serve(&mut lp, listener, ServeOptions::default(), |_, _| {
//!     Some(Box::new(Echo))
//! })?;
//! let addr = server.local_addr().unwrap();
//!
//! let client = std::thread::spawn(move || -> std::io::Result<Vec<u8>> {
//!     let mut c = TcpStream::connect(addr.to_string())?;
//!     c.write_all(b"hello")?;
//!     c.shutdown(std::net::Shutdown::Write)?;
//!     let mut back = Vec::new();
//!     c.read_to_end(&mut back)?;
//!     Ok(back)
//! });
//! let stop = lp.handle();
//! std::thread::spawn(move || {
//!     std::thread::sleep(Duration::from_secs(5));
//!     let _ = stop.stop(); // a safety net
//! });
//! while server.connections_served() == 0 || server.connection_count() > 0 {
//!     lp.run_once(Some(Duration::from_millis(50)), &mut ())?;
//! }
//! assert_eq!(client.join().unwrap()?, b"hello");
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! The guide, with the callback order, flow control and a broadcast
//! example: [`guide::streams`](crate::guide::streams).
//!
//! [`EventLoop`]: crate::EventLoop

mod buffer;
mod client;
mod connection;
pub mod datagram;
mod protocol;
mod resolve;
mod server;
mod socket;
#[cfg(feature = "tls")]
pub mod tls;
mod transport;

pub use client::{Endpoint, connect};
pub(crate) use connection::attach_boxed;
pub use connection::{ConnId, attach};
pub use protocol::Protocol;
pub use resolve::{HAPPY_EYEBALLS_DELAY, HostPort, connect_any, connect_any_with, connect_host};
pub(crate) use server::DRAIN_SETTLE;
pub(crate) use server::serve_adopted_at;
pub use server::{Listener, ServeOptions, Server, serve, serve_adopted};
pub use socket::{Addr, StreamSocket};
pub use transport::{Transport, abort, close, send, with_transport};

/// asyncio's defaults: writing pauses above 64 KiB buffered and resumes at
/// 16 KiB.
pub const DEFAULT_HIGH_WATER: usize = 64 * 1024;
/// See [`DEFAULT_HIGH_WATER`].
pub const DEFAULT_LOW_WATER: usize = 16 * 1024;
