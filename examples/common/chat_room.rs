//! The chat room's protocol, shared by `examples/chat.rs` (on real
//! sockets) and `examples/sim_chat.rs` (in simulation): every complete
//! line a member sends goes to every other member; the room goes at its
//! readers' pace; a reader that makes no progress is cut off.

use std::collections::BTreeSet;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use muxloop::EventLoop;
use muxloop::stream::{self, ConnId, Protocol, Transport};
use muxloop::workers::Peers;

/// The longest line a client may send.
pub const MAX_LINE: usize = 1024 * 1024;

/// A member's backlog limits: above `high` the room pauses, at `low` it
/// goes on, above `hard` the member is cut off at once.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub high: usize,
    pub low: usize,
    pub hard: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            high: 256 * 1024,
            low: 64 * 1024,
            hard: 4 * 1024 * 1024,
        }
    }
}
/// The key of a member's stall check timer.
const STALL_CHECK: u64 = 1;

/// The room: who is connected (the loop's state, shared by every client).
/// The sets are ordered, so that members are visited in one order run
/// after run (a simulation replays a seed exactly).
pub struct Room {
    pub members: BTreeSet<ConnId<Room>>,
    /// Members over their high mark: while there is one, no member is read.
    pub slow: BTreeSet<ConnId<Room>>,
    pub idle_timeout: Option<Duration>,
    pub stall_timeout: Duration,
    pub limits: Limits,
    /// With `--workers`: this worker's index and the other workers, whose
    /// members get every line too.
    pub peers: Option<(usize, Peers<Room>)>,
    /// `sim_chat --plant-bug`: a line split across two reads loses its
    /// first byte. Off everywhere else.
    pub plant_bug: bool,
}

impl Room {
    /// An empty room.
    pub fn new(idle_timeout: Option<Duration>, stall_timeout: Duration) -> Room {
        Room {
            members: BTreeSet::new(),
            slow: BTreeSet::new(),
            idle_timeout,
            stall_timeout,
            limits: Limits::default(),
            peers: None,
            plant_bug: false,
        }
    }

    /// Lines from a member of another worker: to every member here.
    fn relay(&self, lp: &mut EventLoop<Room>, lines: &[u8]) {
        let hard = self.limits.hard;
        for &m in &self.members {
            if stream::send(lp, m, lines).is_ok_and(|backlog| backlog > hard) {
                log::warn!("chat=drop reason=backlog-over-hard-limit");
                stream::abort(lp, m);
            }
        }
    }

    /// Pauses or resumes reading every member but `me` (whose own
    /// transport the caller holds), as the room's readers allow.
    fn set_reading(&self, t: &mut Transport<'_, Room>, reading: bool) {
        let me = t.id();
        for &m in self.members.iter().filter(|&&m| m != me) {
            stream::with_transport(t.event_loop(), m, |other| {
                if reading {
                    other.resume_reading()
                } else {
                    other.pause_reading()
                }
            });
        }
        if reading {
            t.resume_reading();
        } else {
            t.pause_reading();
        }
    }
}

/// One client.
#[derive(Default)]
pub struct Member {
    /// What it sent after its last complete line.
    partial: Vec<u8>,
    /// Its backlog at the last stall check, while it is slow.
    backlog_at_check: Option<usize>,
}

impl Member {
    fn cut_off(t: &mut Transport<'_, Room>, why: &str) {
        log::warn!("chat=drop reason={why} peer={:?}", t.peer_addr().ok());
        t.abort();
    }
}

impl Protocol<Room> for Member {
    fn connection_made(&mut self, t: &mut Transport<'_, Room>, room: &mut Room) {
        let limits = room.limits;
        t.set_write_buffer_limits(limits.high, limits.low)
            .expect("low <= high");
        t.set_idle_timeout(room.idle_timeout);
        if !room.slow.is_empty() {
            t.pause_reading(); // the room is waiting for a slow reader
        }
        room.members.insert(t.id());
        log::info!(
            "chat=join peer={:?} members={}",
            t.peer_addr().ok(),
            room.members.len()
        );
    }

    fn data_received(&mut self, t: &mut Transport<'_, Room>, data: &[u8], room: &mut Room) {
        let mut old = self.partial.len();
        self.partial.extend_from_slice(data);
        if room.plant_bug && old > 0 {
            // The planted bug: a line begun in an earlier read loses its
            // first byte.
            self.partial.remove(0);
            old -= 1;
        }
        // Only the new bytes are searched; a line's length counts from the
        // last newline before them.
        let mut line_start = 0;
        let mut complete = 0;
        for (i, &b) in self.partial[old..].iter().enumerate() {
            if b == b'\n' {
                let end = old + i + 1;
                if end - line_start > MAX_LINE {
                    return Member::cut_off(t, "line-too-long");
                }
                line_start = end;
                complete = end;
            }
        }
        if self.partial.len() - line_start > MAX_LINE {
            return Member::cut_off(t, "line-too-long");
        }
        if complete > 0 {
            // Every complete line of this read, in one write per member.
            let me = t.id();
            let lines = &self.partial[..complete];
            for &other in room.members.iter().filter(|&&m| m != me) {
                if t.write_to(other, lines)
                    .is_ok_and(|backlog| backlog > room.limits.hard)
                {
                    log::warn!("chat=drop reason=backlog-over-hard-limit");
                    stream::abort(t.event_loop(), other);
                }
            }
            if let Some((me, peers)) = &room.peers {
                // The members on the other workers (a copy each way; the
                // room's pace is each worker's own).
                let lines: Arc<[u8]> = lines.into();
                peers.broadcast(Some(*me), move |lp, room: &mut Room| room.relay(lp, &lines));
            }
            self.partial.drain(..complete);
        }
    }

    fn pause_writing(&mut self, t: &mut Transport<'_, Room>, room: &mut Room) {
        // Over its high mark: the room waits for this reader.
        if room.slow.insert(t.id()) && room.slow.len() == 1 {
            room.set_reading(t, false);
        }
        self.backlog_at_check = Some(t.write_buffer_size());
        t.call_later(room.stall_timeout, STALL_CHECK);
    }

    fn resume_writing(&mut self, t: &mut Transport<'_, Room>, room: &mut Room) {
        self.backlog_at_check = None;
        if room.slow.remove(&t.id()) && room.slow.is_empty() {
            room.set_reading(t, true);
        }
    }

    fn timer_fired(&mut self, t: &mut Transport<'_, Room>, key: u64, room: &mut Room) {
        let Some(before) = self.backlog_at_check else {
            return; // caught up since
        };
        if key != STALL_CHECK {
            return;
        }
        let now = t.write_buffer_size();
        if now >= before {
            return Member::cut_off(t, "no-progress");
        }
        // Slow, but reading: check again later.
        self.backlog_at_check = Some(now);
        t.call_later(room.stall_timeout, STALL_CHECK);
    }

    fn connection_lost(
        &mut self,
        t: &mut Transport<'_, Room>,
        e: Option<io::Error>,
        room: &mut Room,
    ) {
        room.members.remove(&t.id());
        if room.slow.remove(&t.id()) && room.slow.is_empty() {
            room.set_reading(t, true);
        }
        log::info!("chat=leave error={e:?} members={}", room.members.len());
    }
}
