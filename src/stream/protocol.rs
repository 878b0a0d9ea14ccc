//! What a connection does: its callbacks, in a fixed order.

use std::io;

use super::Transport;

/// The callbacks of one connection. `S` is the loop's state, passed to
/// every callback as in the rest of the loop.
///
/// # Order
///
/// For a connection: [`connection_made`](Protocol::connection_made) first,
/// then [`data_received`](Protocol::data_received) any number of times, at
/// most one [`eof_received`](Protocol::eof_received) after the last data,
/// and [`connection_lost`](Protocol::connection_lost) **exactly once and
/// last**: nothing is called after it. Interleaved anywhere between the
/// first and the last: [`pause_writing`](Protocol::pause_writing) and
/// [`resume_writing`](Protocol::resume_writing), strictly alternating and
/// starting with a pause, and the connection's own timers
/// ([`timer_fired`](Protocol::timer_fired),
/// [`idle_timeout`](Protocol::idle_timeout)).
///
/// For a client connect that fails (refused, unreachable, timed out):
/// [`connection_failed`](Protocol::connection_failed), once, and nothing
/// else.
///
/// Callbacks may do anything with their [`Transport`] (write, close, write
/// to other connections, schedule timers) and with the loop it lends
/// ([`Transport::event_loop`]). They are never called re-entrantly: a
/// `pause_writing` caused by a `write` in `data_received` is called as soon
/// as `data_received` returns, before anything else.
pub trait Protocol<S>: 'static {
    /// The connection is established; `t` is its transport. Runs before
    /// any other callback of the connection.
    fn connection_made(&mut self, t: &mut Transport<'_, S>, state: &mut S) {
        let _ = (t, state);
    }

    /// Bytes arrived (one read's worth: at most 64 KiB per call, one call
    /// per readiness event, so no connection holds the loop for long).
    fn data_received(&mut self, t: &mut Transport<'_, S>, data: &[u8], state: &mut S);

    /// The peer closed its writing side: no more data will come. Return
    /// `false` (the default) to close the connection once everything
    /// written is sent, or `true` to stay half-open and keep writing; the
    /// connection then ends when the protocol closes it, or when it
    /// [`write_eof`](Transport::write_eof)s too.
    fn eof_received(&mut self, t: &mut Transport<'_, S>, state: &mut S) -> bool {
        let _ = (t, state);
        false
    }

    /// The connection is gone: closed, aborted, reset by the peer or failed
    /// (`error` then says why). Called exactly once, last. The transport
    /// still tells the id and addresses, but writes to it are ignored; the
    /// connection's timers are already cancelled.
    fn connection_lost(
        &mut self,
        t: &mut Transport<'_, S>,
        error: Option<io::Error>,
        state: &mut S,
    ) {
        let _ = (t, error, state);
    }

    /// The TLS handshake that [`Transport::start_tls`] began is done
    /// (feature `tls`): what is written now is encrypted, and what is
    /// received was. The connection stays up while it runs, without
    /// calls (its protocol writes are held until this one). Default:
    /// nothing.
    ///
    /// [`Transport::start_tls`]: super::Transport
    fn tls_started(&mut self, t: &mut Transport<'_, S>, state: &mut S) {
        let _ = (t, state);
    }

    /// A client connect failed; no other callback is called, the socket is
    /// closed.
    fn connection_failed(&mut self, error: io::Error, state: &mut S) {
        log::debug!("stream=connect error={error}");
        let _ = state;
    }

    /// The write buffer went above the high-water mark
    /// ([`Transport::set_write_buffer_limits`]): stop producing data, e.g.
    /// by [`pause_reading`](Transport::pause_reading) on the connection it
    /// comes from. Writes still work; they are only buffered.
    fn pause_writing(&mut self, t: &mut Transport<'_, S>, state: &mut S) {
        let _ = (t, state);
    }

    /// The write buffer drained to the low-water mark after a
    /// [`pause_writing`](Protocol::pause_writing).
    fn resume_writing(&mut self, t: &mut Transport<'_, S>, state: &mut S) {
        let _ = (t, state);
    }

    /// A timer of this connection ([`Transport::call_later`]) is due;
    /// `key` is what it was scheduled with.
    fn timer_fired(&mut self, t: &mut Transport<'_, S>, key: u64, state: &mut S) {
        let _ = (t, key, state);
    }

    /// Nothing was received for the idle timeout
    /// ([`Transport::set_idle_timeout`]). The default closes the
    /// connection (flushing what was written).
    fn idle_timeout(&mut self, t: &mut Transport<'_, S>, state: &mut S) {
        let _ = state;
        t.close();
    }
}
