//! The chat server of `examples/chat.rs` — the same protocol code
//! (`examples/common/chat_room.rs`) — tested in simulation over many
//! seeds: a handful of simulated clients, some talking, one reading
//! slowly, one never reading, one resetting, one idle, on a simulated
//! network that cuts every read and write at random, in virtual time.
//!
//! Each seed checks that every line reaches every other reader whole and
//! in order, that the reader that never reads is cut off while the slow
//! one is not, that the idle client is closed by the idle timeout, and
//! that nothing is left open. It prints one line per failing seed and,
//! last, `N seeds, F failed, trace HASH` (a hash over every seed's trace:
//! the same command prints the same hash).
//!
//! ```text
//! cargo run --release --example sim_chat -- --seeds 1000
//! cargo run --release --example sim_chat -- --seeds 1000 --plant-bug   # some seeds fail
//! cargo run --release --example sim_chat -- --start 17 --seeds 1 --plant-bug --trace
//! ```

#[path = "common/chat_room.rs"]
mod chat_room;
#[path = "common/cli.rs"]
mod cli;

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use chat_room::{Limits, Member, Room};
use clap::Parser;
use muxloop::VirtualClock;
use muxloop::sim::{self, SimConfig, World};
use muxloop::stream::{Protocol, ServeOptions, Transport};

/// The chat server in simulation, over many seeds.
#[derive(Parser)]
struct Args {
    /// How many seeds to run.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 0)]
    start: u64,
    /// Switch on a deliberate bug in the chat protocol: a line split
    /// across two reads loses its first byte.
    #[arg(long)]
    plant_bug: bool,
    /// Print each seed's trace (use with one seed).
    #[arg(long)]
    trace: bool,
}

/// The room's timeouts in the simulation (virtual time).
const IDLE: Duration = Duration::from_secs(30);
const STALL: Duration = Duration::from_secs(5);
/// When the client that never reads looks at what it got.
const NEVER_LOOKS_AT: Duration = Duration::from_secs(20);
const SERVER: &str = "10.0.0.1:1235";

/// What a simulated client does.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    /// Sends its lines at random moments, reads everything.
    Talker,
    /// Reads one chunk every 100 ms.
    Slow,
    /// Does not read until `NEVER_LOOKS_AT`.
    Never,
    /// Sends a line and half of another, then aborts with data unread (a
    /// reset).
    Resetter,
    /// Sends nothing, reads everything.
    Idle,
}

/// What one client saw.
#[derive(Debug, Default)]
struct Seen {
    got: Vec<u8>,
    made_at: Option<Duration>,
    lost_at: Option<Duration>,
    failed: Option<String>,
}

const TICK: u64 = 1;

struct Client {
    kind: Kind,
    /// Its lines, and when each goes (after connecting).
    lines: Vec<(Duration, Vec<u8>)>,
    next: usize,
    seen: Rc<RefCell<Seen>>,
    clock: VirtualClock,
}

impl Client {
    fn schedule(&mut self, t: &mut Transport<'_, Room>) {
        if let Some((at, _)) = self.lines.get(self.next) {
            let prev = self
                .next
                .checked_sub(1)
                .map_or(Duration::ZERO, |i| self.lines[i].0);
            t.call_later(at.saturating_sub(prev), TICK);
        }
    }
}

impl Protocol<Room> for Client {
    fn connection_made(&mut self, t: &mut Transport<'_, Room>, _: &mut Room) {
        self.seen.borrow_mut().made_at = Some(self.clock.elapsed());
        match self.kind {
            Kind::Slow => {
                t.pause_reading();
                t.call_later(Duration::from_millis(100), TICK);
            }
            Kind::Never => {
                t.pause_reading();
                t.call_later(NEVER_LOOKS_AT, TICK);
            }
            Kind::Resetter => t.pause_reading(),
            Kind::Talker | Kind::Idle => {}
        }
        if matches!(self.kind, Kind::Talker | Kind::Resetter) {
            self.schedule(t);
        }
    }

    fn data_received(&mut self, t: &mut Transport<'_, Room>, data: &[u8], _: &mut Room) {
        self.seen.borrow_mut().got.extend_from_slice(data);
        if self.kind == Kind::Slow {
            t.pause_reading();
        }
    }

    fn timer_fired(&mut self, t: &mut Transport<'_, Room>, _: u64, _: &mut Room) {
        match self.kind {
            Kind::Slow => {
                t.resume_reading();
                t.call_later(Duration::from_millis(100), TICK);
            }
            Kind::Never => t.resume_reading(),
            Kind::Talker | Kind::Resetter => {
                if let Some((_, line)) = self.lines.get(self.next) {
                    t.write(line);
                    self.next += 1;
                    if self.next < self.lines.len() {
                        self.schedule(t);
                    } else if self.kind == Kind::Resetter {
                        t.abort();
                    }
                }
            }
            Kind::Idle => {}
        }
    }

    fn connection_lost(&mut self, _: &mut Transport<'_, Room>, _: Option<io::Error>, _: &mut Room) {
        self.seen.borrow_mut().lost_at = Some(self.clock.elapsed());
    }

    fn connection_failed(&mut self, e: io::Error, _: &mut Room) {
        let mut seen = self.seen.borrow_mut();
        seen.failed = Some(e.to_string());
        seen.lost_at = Some(self.clock.elapsed());
    }
}

/// A line of `len` bytes (newline included) from client `who`, number `n`.
fn line(world: &World, who: usize, n: usize) -> Vec<u8> {
    let len = 20 + world.below(280) as usize;
    let mut l = format!("c{who} {n} ").into_bytes();
    while l.len() + 1 < len {
        l.push(b'a' + (world.below(26) as u8));
    }
    l.push(b'\n');
    l
}

/// One seed: the scenario, then the checks. `Err` says what went wrong.
fn scenario(world: &World, plant_bug: bool) -> Result<(), String> {
    let mut lp = world.event_loop::<Room>().map_err(|e| e.to_string())?;
    let mut room = Room::new(Some(IDLE), STALL);
    room.limits = Limits {
        high: 8 * 1024,
        low: 2 * 1024,
        hard: 256 * 1024,
    };
    room.plant_bug = plant_bug;
    let addr: SocketAddr = SERVER.parse().expect("a valid address");
    let mut options = ServeOptions::default();
    options.close_timeout = Some(Duration::from_secs(5));
    world
        .serve(&mut lp, addr, options, |_, _| {
            Some(Box::new(Member::default()))
        })
        .map_err(|e| e.to_string())?;
    let kinds = [
        Kind::Talker,
        Kind::Talker,
        Kind::Talker,
        Kind::Slow,
        Kind::Never,
        Kind::Resetter,
        Kind::Idle,
    ];
    let mut clients = Vec::new();
    for (who, &kind) in kinds.iter().enumerate() {
        let count = match kind {
            Kind::Talker => 30 + world.below(20) as usize,
            Kind::Resetter => 2,
            _ => 0,
        };
        // Everyone joins within 10 ms; talking starts at 50 ms.
        let mut at = Duration::from_millis(50);
        let mut lines = Vec::new();
        for n in 0..count {
            at += Duration::from_micros(world.below(100_000));
            lines.push((at, line(world, who, n)));
        }
        if kind == Kind::Resetter {
            // The second "line" is half of one: it never completes.
            let half = lines[1].1.len() / 2;
            lines[1].1.truncate(half);
        }
        let seen = Rc::new(RefCell::new(Seen::default()));
        clients.push((kind, lines.clone(), seen.clone()));
        let client = Client {
            kind,
            lines,
            next: 0,
            seen,
            clock: world.clock(),
        };
        let join = Duration::from_micros(world.below(10_000));
        let w = world.clone();
        lp.call_later(join, move |lp, _| {
            if let Err(e) = w.connect(lp, addr, Some(Duration::from_secs(5)), client) {
                w.note(&format!("connect failed: {e}"));
            }
        });
    }
    // Until every client is gone, and the server has seen them go.
    let all_lost = |room: &mut Room| {
        room.members.is_empty() && clients.iter().all(|(_, _, s)| s.borrow().lost_at.is_some())
    };
    let done = world
        .run_until(&mut lp, &mut room, Duration::from_secs(120), all_lost)
        .map_err(|e| e.to_string())?;
    if !done {
        return Err(format!(
            "not every client was closed within 120 s ({} members left)",
            room.members.len()
        ));
    }
    check(world, &clients, &room)
}

type Clients = Vec<(Kind, Vec<(Duration, Vec<u8>)>, Rc<RefCell<Seen>>)>;

fn check(world: &World, clients: &Clients, room: &Room) -> Result<(), String> {
    let sent: std::collections::HashSet<&[u8]> = clients
        .iter()
        .flat_map(|(_, lines, _)| lines.iter().map(|(_, l)| &l[..]))
        .collect();
    for (who, (kind, _, seen)) in clients.iter().enumerate() {
        let seen = seen.borrow();
        if let Some(e) = &seen.failed {
            return Err(format!("client {who} ({kind:?}) could not connect: {e}"));
        }
        let lost = seen.lost_at.unwrap_or_default();
        let made = seen.made_at.unwrap_or_default();
        match kind {
            Kind::Talker | Kind::Slow | Kind::Idle => {
                // Every line it got is one that was sent, whole.
                let got: Vec<&[u8]> = seen.got.split_inclusive(|&b| b == b'\n').collect();
                if let Some(bad) = got.iter().find(|l| !sent.contains(*l)) {
                    return Err(format!(
                        "client {who} ({kind:?}) got a line nobody sent: {:?}",
                        String::from_utf8_lossy(bad)
                    ));
                }
                // And every other talker's lines, in order.
                for (other, (okind, lines, _)) in clients.iter().enumerate() {
                    if other == who || *okind != Kind::Talker {
                        continue;
                    }
                    let prefix = format!("c{other} ");
                    let from: Vec<&[u8]> = got
                        .iter()
                        .copied()
                        .filter(|l| l.starts_with(prefix.as_bytes()))
                        .collect();
                    let want: Vec<&[u8]> = lines.iter().map(|(_, l)| &l[..]).collect();
                    if from != want {
                        return Err(format!(
                            "client {who} ({kind:?}) got {} of client {other}'s {} lines",
                            from.len(),
                            want.len()
                        ));
                    }
                }
            }
            Kind::Never => {
                // Cut off long before the idle timeout would have closed it.
                if lost >= NEVER_LOOKS_AT + Duration::from_secs(5) {
                    return Err(format!(
                        "client {who} (never reads) was not cut off (lost at {lost:?})"
                    ));
                }
            }
            Kind::Resetter => {}
        }
        if *kind == Kind::Idle {
            let idle = lost.saturating_sub(made);
            // The server's timer starts as it accepts, a trip before the
            // client hears it connected; its close takes another trip.
            let trip = Duration::from_millis(5);
            if idle + trip < IDLE || idle > IDLE + trip {
                return Err(format!(
                    "client {who} (idle) was closed after {idle:?}, not the idle timeout"
                ));
            }
        }
        if *kind == Kind::Slow && lost < IDLE {
            return Err(format!(
                "client {who} (reads slowly) was cut off at {lost:?}"
            ));
        }
    }
    if !room.members.is_empty() {
        return Err(format!("{} members left in the room", room.members.len()));
    }
    if world.open_sockets() != 0 {
        return Err(format!(
            "{} simulated sockets left open",
            world.open_sockets()
        ));
    }
    Ok(())
}

fn main() -> io::Result<()> {
    cli::guard_stdio();
    env_logger::init();
    let args = Args::parse();
    let mut config = SimConfig::default();
    config.buffer = 4 * 1024;
    config.keep_trace = args.trace;
    let end = args.start.checked_add(args.seeds).ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, "--start + --seeds overflows")
    })?;
    let report = sim::explore(args.start..end, &config, |world| {
        // Half the seeds cut reads and writes (and so split lines).
        let cutting = world.below(2) == 0;
        world.configure(|c| c.max_chunk = cutting.then_some(1500));
        world.note(if cutting { "cutting" } else { "whole" });
        let result = scenario(world, args.plant_bug);
        if args.trace {
            for l in world.trace().unwrap_or_default() {
                cli::say!("{l}");
            }
        }
        result
    });
    for (seed, why) in &report.failed {
        cli::say!("seed {seed} failed: {why}");
    }
    cli::say!("{report}");
    Ok(())
}
