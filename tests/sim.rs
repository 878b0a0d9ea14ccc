//! The simulation (`muxloop::sim`): virtual time, the simulated network's
//! behaviour and faults, determinism (one seed, one trace), exploration
//! over seeds, and `examples/sim_chat.rs`. Stream-layer logic that needs
//! long timeouts is tested here, in virtual time, instead of on real
//! sockets and real time.

#[macro_use]
mod util;

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use muxloop::sim::{self, SimConfig, World};
use muxloop::stream::Addr;
use muxloop::stream::datagram::{self, DatagramOptions, DatagramProtocol, DatagramTransport};
use muxloop::stream::{Protocol, ServeOptions, Transport};
use muxloop::{EventLoop, VirtualClock};
use util::*;

const SERVER: &str = "10.0.0.1:80";

fn server_addr() -> SocketAddr {
    SERVER.parse().unwrap()
}

/// What a test's protocols record, shared with the test.
#[derive(Debug, Default)]
struct Log {
    made: Vec<(&'static str, Duration)>,
    got: Vec<u8>,
    eof: Option<Duration>,
    lost: Vec<(&'static str, Duration, Option<io::ErrorKind>)>,
    failed: Option<io::ErrorKind>,
    paused: usize,
    resumed: usize,
}

type Shared = Rc<RefCell<Log>>;

type OnMade = dyn FnMut(&mut Transport<'_, ()>);

/// A protocol with a script: what it does when made, and whether it
/// reads; it records everything into the log.
struct Scripted {
    name: &'static str,
    log: Shared,
    clock: VirtualClock,
    on_made: Box<OnMade>,
    reading: bool,
}

impl Scripted {
    fn new(
        name: &'static str,
        world: &World,
        log: &Shared,
        on_made: impl FnMut(&mut Transport<'_, ()>) + 'static,
    ) -> Scripted {
        Scripted {
            name,
            log: log.clone(),
            clock: world.clock(),
            on_made: Box::new(on_made),
            reading: true,
        }
    }
}

impl Protocol<()> for Scripted {
    fn connection_made(&mut self, t: &mut Transport<'_, ()>, _: &mut ()) {
        self.log
            .borrow_mut()
            .made
            .push((self.name, self.clock.elapsed()));
        if !self.reading {
            t.pause_reading();
        }
        (self.on_made)(t);
    }
    fn data_received(&mut self, _: &mut Transport<'_, ()>, data: &[u8], _: &mut ()) {
        self.log.borrow_mut().got.extend_from_slice(data);
    }
    fn eof_received(&mut self, _: &mut Transport<'_, ()>, _: &mut ()) -> bool {
        self.log.borrow_mut().eof = Some(self.clock.elapsed());
        false
    }
    fn connection_lost(&mut self, _: &mut Transport<'_, ()>, e: Option<io::Error>, _: &mut ()) {
        self.log
            .borrow_mut()
            .lost
            .push((self.name, self.clock.elapsed(), e.map(|e| e.kind())));
    }
    fn connection_failed(&mut self, e: io::Error, _: &mut ()) {
        self.log.borrow_mut().failed = Some(e.kind());
    }
    fn pause_writing(&mut self, _: &mut Transport<'_, ()>, _: &mut ()) {
        self.log.borrow_mut().paused += 1;
    }
    fn resume_writing(&mut self, _: &mut Transport<'_, ()>, _: &mut ()) {
        self.log.borrow_mut().resumed += 1;
    }
}

fn world(seed: u64) -> (World, EventLoop<()>) {
    let world = World::new(seed, SimConfig::default());
    let lp = world.event_loop().unwrap();
    (world, lp)
}

#[test]
fn a_five_minute_idle_timeout_takes_no_real_time() {
    init_logging();
    let started = Instant::now();
    for seed in 0..20 {
        let (world, mut lp) = world(seed);
        let log = Shared::default();
        let (l, w) = (log.clone(), world.clone());
        world
            .serve(
                &mut lp,
                server_addr(),
                ServeOptions::default(),
                move |_, _| {
                    Some(Box::new(Scripted::new("server", &w, &l, |t| {
                        t.set_idle_timeout(Some(Duration::from_secs(300)));
                    })))
                },
            )
            .unwrap();
        world
            .connect(
                &mut lp,
                server_addr(),
                None,
                Scripted::new("client", &world, &log, |_| {}),
            )
            .unwrap();
        let done = world
            .run_until(&mut lp, &mut (), Duration::from_secs(900), |_| {
                log.borrow().lost.len() == 2
            })
            .unwrap();
        assert!(done, "seed {seed}: {:?}", log.borrow());
        let log = log.borrow();
        let made = log.made.iter().find(|m| m.0 == "server").unwrap().1;
        let closed = log.lost.iter().find(|l| l.0 == "server").unwrap().1;
        // Never early; and nothing else made it late.
        assert!(closed - made >= Duration::from_secs(300), "{log:?}");
        assert!(closed - made < Duration::from_secs(301), "{log:?}");
        assert!(log.eof.is_some(), "the client read EOF: {log:?}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "100 minutes of virtual time took {:?}",
        started.elapsed()
    );
}

/// Reads push the idle timeout back; it fires its whole span after the
/// last one, never earlier. (Stream-layer logic, the same on every
/// backend: tested here, over seeds, instead of with real sleeps.)
#[test]
fn the_idle_timeout_is_pushed_back_by_reads() {
    let report = sim::explore(0..20, &SimConfig::default(), |world| {
        let mut lp = world.event_loop::<()>().map_err(|e| e.to_string())?;
        let log = Shared::default();
        let (l, w) = (log.clone(), world.clone());
        world
            .serve(
                &mut lp,
                server_addr(),
                ServeOptions::default(),
                move |_, _| {
                    Some(Box::new(Scripted::new("server", &w, &l, |t| {
                        t.set_idle_timeout(Some(Duration::from_millis(150)));
                    })))
                },
            )
            .map_err(|e| e.to_string())?;
        // A byte every 50 ms for 300 ms, then silence.
        struct Ticker(Scripted, u32);
        impl Protocol<()> for Ticker {
            fn connection_made(&mut self, t: &mut Transport<'_, ()>, s: &mut ()) {
                self.0.connection_made(t, s);
                t.call_later(Duration::from_millis(50), 0);
            }
            fn data_received(&mut self, t: &mut Transport<'_, ()>, d: &[u8], s: &mut ()) {
                self.0.data_received(t, d, s)
            }
            fn timer_fired(&mut self, t: &mut Transport<'_, ()>, _: u64, _: &mut ()) {
                t.write(b".");
                self.0
                    .log
                    .borrow_mut()
                    .made
                    .push(("tick", self.0.clock.elapsed()));
                self.1 += 1;
                if self.1 < 6 {
                    t.call_later(Duration::from_millis(50), 0);
                }
            }
            fn connection_lost(
                &mut self,
                t: &mut Transport<'_, ()>,
                e: Option<io::Error>,
                s: &mut (),
            ) {
                self.0.connection_lost(t, e, s)
            }
        }
        let client = Ticker(Scripted::new("client", world, &log, |_| {}), 0);
        world
            .connect(&mut lp, server_addr(), None, client)
            .map_err(|e| e.to_string())?;
        world
            .run_until(&mut lp, &mut (), Duration::from_secs(10), |_| {
                log.borrow().lost.len() == 2
            })
            .map_err(|e| e.to_string())?;
        let log = log.borrow();
        let last_tick = log.made.iter().filter(|m| m.0 == "tick").map(|m| m.1).max();
        let closed = log.lost.iter().find(|l| l.0 == "server").map(|l| l.1);
        let (Some(last_tick), Some(closed)) = (last_tick, closed) else {
            return Err(format!("{log:?}"));
        };
        // The last byte arrives within a trip (≤ 2 ms) of its tick; the
        // server's graceful close waits a round trip for the client's EOF.
        let after = closed.saturating_sub(last_tick);
        if after < Duration::from_millis(150) || after > Duration::from_millis(157) {
            return Err(format!("closed {after:?} after the last read: {log:?}"));
        }
        Ok(())
    });
    assert!(report.failed.is_empty(), "{report}: {:?}", report.failed);
}

#[test]
fn timers_never_fire_early_in_virtual_time() {
    let (world, mut lp) = world(3);
    let fired = Rc::new(RefCell::new(Vec::new()));
    let start = world.elapsed();
    for i in 0..200u64 {
        let delay = Duration::from_nanos(world.below(5_000_000_000) + i);
        let (f, clock) = (fired.clone(), world.clock());
        lp.call_later(delay, move |_, _| {
            f.borrow_mut().push((delay, clock.elapsed() - start));
        });
    }
    world
        .run_until(&mut lp, &mut (), Duration::from_secs(10), |_| {
            fired.borrow().len() == 200
        })
        .unwrap();
    for &(want, at) in fired.borrow().iter() {
        assert!(at >= want, "fired at {at:?}, asked {want:?}");
        assert!(
            at == want,
            "virtual time jumps exactly: {at:?} for {want:?}"
        );
    }
}

/// A client sends `data`, half-closes; the server echoes all of it, then
/// closes. Over many seeds (every read and write cut at random), the
/// client gets every byte in order, then EOF.
#[test]
fn half_close_and_close_lose_nothing_however_reads_and_writes_are_cut() {
    let report = sim::explore(0..50, &SimConfig::default(), |world| {
        let mut lp = world.event_loop::<()>().map_err(|e| e.to_string())?;
        struct Echo;
        impl Protocol<()> for Echo {
            fn data_received(&mut self, t: &mut Transport<'_, ()>, data: &[u8], _: &mut ()) {
                t.write(data);
            }
        }
        world
            .serve(&mut lp, server_addr(), ServeOptions::default(), |_, _| {
                Some(Box::new(Echo))
            })
            .map_err(|e| e.to_string())?;
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let log = Shared::default();
        let sent = data.clone();
        let client = Scripted::new("client", world, &log, move |t| {
            t.write(&sent);
            t.write_eof();
        });
        world
            .connect(&mut lp, server_addr(), None, client)
            .map_err(|e| e.to_string())?;
        world
            .run_until(&mut lp, &mut (), Duration::from_secs(60), |_| {
                !log.borrow().lost.is_empty()
            })
            .map_err(|e| e.to_string())?;
        let log = log.borrow();
        if log.got != data {
            return Err(format!("got {} of {} bytes", log.got.len(), data.len()));
        }
        if log.eof.is_none() || log.lost[0].2.is_some() {
            return Err(format!("no clean end: {:?} {:?}", log.eof, log.lost));
        }
        if world.open_sockets() != 0 {
            return Err(format!("{} sockets left open", world.open_sockets()));
        }
        Ok(())
    });
    assert!(report.failed.is_empty(), "{report}: {:?}", report.failed);
}

/// A client that does not read makes the server's transport pause its
/// protocol; reading again resumes it, and every byte arrives.
#[test]
fn flow_control_pauses_and_resumes_a_writer_facing_a_reader_that_stops() {
    let report = sim::explore(0..20, &SimConfig::default(), |world| {
        let mut lp = world.event_loop::<()>().map_err(|e| e.to_string())?;
        let server_log = Shared::default();
        let (l, w) = (server_log.clone(), world.clone());
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 253) as u8).collect();
        let sent = data.clone();
        world
            .serve(
                &mut lp,
                server_addr(),
                ServeOptions::default(),
                move |_, _| {
                    let sent = sent.clone();
                    Some(Box::new(Scripted::new("server", &w, &l, move |t| {
                        for chunk in sent.chunks(10_000) {
                            t.write(chunk);
                        }
                        t.close();
                    })))
                },
            )
            .map_err(|e| e.to_string())?;
        let log = Shared::default();
        let mut client = Scripted::new("client", world, &log, |t| {
            t.call_later(Duration::from_secs(10), 1);
        });
        client.reading = false;
        struct Later(Scripted);
        impl Protocol<()> for Later {
            fn connection_made(&mut self, t: &mut Transport<'_, ()>, s: &mut ()) {
                self.0.connection_made(t, s)
            }
            fn data_received(&mut self, t: &mut Transport<'_, ()>, d: &[u8], s: &mut ()) {
                self.0.data_received(t, d, s)
            }
            fn timer_fired(&mut self, t: &mut Transport<'_, ()>, _: u64, _: &mut ()) {
                t.resume_reading();
            }
            fn connection_lost(
                &mut self,
                t: &mut Transport<'_, ()>,
                e: Option<io::Error>,
                s: &mut (),
            ) {
                self.0.connection_lost(t, e, s)
            }
        }
        world
            .connect(&mut lp, server_addr(), None, Later(client))
            .map_err(|e| e.to_string())?;
        world
            .run_until(&mut lp, &mut (), Duration::from_secs(120), |_| {
                !log.borrow().lost.is_empty() && !server_log.borrow().lost.is_empty()
            })
            .map_err(|e| e.to_string())?;
        let (log, server) = (log.borrow(), server_log.borrow());
        if log.got != data {
            return Err(format!("got {} of {} bytes", log.got.len(), data.len()));
        }
        if server.paused == 0 || server.resumed == 0 {
            return Err(format!(
                "paused {} resumed {} times",
                server.paused, server.resumed
            ));
        }
        Ok(())
    });
    assert!(report.failed.is_empty(), "{report}: {:?}", report.failed);
}

/// Connects a client to the server's address and runs until the connect
/// is decided: how it failed, if it did.
fn connect_outcome(
    world: &World,
    lp: &mut EventLoop<()>,
    timeout: Option<Duration>,
) -> Option<io::ErrorKind> {
    let log = Shared::default();
    world
        .connect(
            lp,
            server_addr(),
            timeout,
            Scripted::new("c", world, &log, |_| {}),
        )
        .unwrap();
    world
        .run_until(lp, &mut (), Duration::from_secs(10), |_| {
            log.borrow().failed.is_some() || !log.borrow().made.is_empty()
        })
        .unwrap();
    log.borrow().failed
}

#[test]
fn refused_connects_timeouts_and_out_of_fds() {
    init_logging();
    let (world, mut lp) = world(11);
    // Nothing listens: refused, after a round trip.
    let refused = Some(io::ErrorKind::ConnectionRefused);
    assert_eq!(
        connect_outcome(&world, &mut lp, Some(Duration::from_secs(5))),
        refused
    );
    assert!(world.elapsed() > Duration::ZERO);
    // Every connect refused by a fault; and a timeout shorter than the trip.
    world.configure(|c| c.refuse_per_million = 1_000_000);
    world
        .serve(&mut lp, server_addr(), ServeOptions::default(), |_, _| None)
        .unwrap();
    assert_eq!(connect_outcome(&world, &mut lp, None), refused);
    world.configure(|c| {
        c.refuse_per_million = 0;
        c.latency = (Duration::from_millis(100), Duration::from_millis(100));
    });
    let timed_out = Some(io::ErrorKind::TimedOut);
    assert_eq!(
        connect_outcome(&world, &mut lp, Some(Duration::from_millis(150))),
        timed_out
    );
    let log = Shared::default();
    // Out of fds: the connect itself fails, with EMFILE.
    let open = world.open_sockets();
    world.configure(|c| c.max_sockets = Some(open));
    let e = world
        .connect(
            &mut lp,
            server_addr(),
            None,
            Scripted::new("c", &world, &log, |_| {}),
        )
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EMFILE));
    // A second server on one address is refused.
    let e = world
        .serve(&mut lp, server_addr(), ServeOptions::default(), |_, _| None)
        .unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
}

#[test]
fn resets_reach_both_ends_as_errors() {
    let mut config = SimConfig::default();
    config.reset_per_million = 200_000;
    let report = sim::explore(0..20, &config, |world| {
        let mut lp = world.event_loop::<()>().map_err(|e| e.to_string())?;
        let log = Shared::default();
        let (l, w) = (log.clone(), world.clone());
        world
            .serve(
                &mut lp,
                server_addr(),
                ServeOptions::default(),
                move |_, _| Some(Box::new(Scripted::new("server", &w, &l, |_| {}))),
            )
            .map_err(|e| e.to_string())?;
        let client = Scripted::new("client", world, &log, |t| {
            for _ in 0..100 {
                t.write(&[7; 1000]);
            }
        });
        world
            .connect(&mut lp, server_addr(), None, client)
            .map_err(|e| e.to_string())?;
        world
            .run_until(&mut lp, &mut (), Duration::from_secs(30), |_| {
                log.borrow().lost.len() == 2
            })
            .map_err(|e| e.to_string())?;
        let log = log.borrow();
        let resets = log
            .lost
            .iter()
            .filter(|l| l.2 == Some(io::ErrorKind::ConnectionReset))
            .count();
        if log.lost.len() != 2 || resets != 2 {
            return Err(format!("{:?}", log.lost));
        }
        Ok(())
    });
    assert!(report.failed.is_empty(), "{report}: {:?}", report.failed);
}

/// One seed, one run: the same trace, line for line, twice; another seed
/// (almost always) another one.
#[test]
fn the_same_seed_gives_the_same_trace() {
    let run = |seed: u64| {
        let mut config = SimConfig::default();
        config.keep_trace = true;
        let world = World::new(seed, config);
        let mut lp = world.event_loop::<()>().unwrap();
        let log = Shared::default();
        let (l, w) = (log.clone(), world.clone());
        world
            .serve(
                &mut lp,
                server_addr(),
                ServeOptions::default(),
                move |_, _| {
                    Some(Box::new(Scripted::new("server", &w, &l, |t| {
                        t.write(&[1; 50_000]);
                        t.close();
                    })))
                },
            )
            .unwrap();
        for _ in 0..3 {
            world
                .connect(
                    &mut lp,
                    server_addr(),
                    None,
                    Scripted::new("client", &world, &log, |_| {}),
                )
                .unwrap();
        }
        world
            .run_until(&mut lp, &mut (), Duration::from_secs(30), |_| {
                log.borrow().lost.len() == 6
            })
            .unwrap();
        (world.trace_hash(), world.trace().unwrap())
    };
    let (h1, t1) = run(42);
    let (h2, t2) = run(42);
    assert_eq!(t1, t2);
    assert_eq!(h1, h2);
    assert!(t1.len() > 100, "{} lines", t1.len());
    let others: Vec<u64> = (43..48).map(|s| run(s).0).collect();
    assert!(others.iter().any(|&h| h != h1));
}

#[test]
fn explore_reports_failures_and_panics_by_seed() {
    let report = sim::explore(0..30, &SimConfig::default(), |world| match world.below(3) {
        0 => Err("unlucky".into()),
        1 => panic!("boom at seed {}", world.seed()),
        _ => Ok(()),
    });
    assert_eq!(report.seeds, 30);
    assert!(report.failed.iter().any(|(_, w)| w == "unlucky"));
    assert!(
        report
            .failed
            .iter()
            .any(|(s, w)| *w == format!("boom at seed {s}"))
    );
    let again = sim::explore(0..30, &SimConfig::default(), |world| match world.below(3) {
        0 => Err("unlucky".into()),
        1 => panic!("boom at seed {}", world.seed()),
        _ => Ok(()),
    });
    assert_eq!(again, report);
    assert!(report.to_string().starts_with("30 seeds, "), "{report}");
}

/// A simulation with nothing left to happen says so instead of hanging.
#[test]
fn a_stuck_simulation_is_reported() {
    let (_world, mut lp) = world(1);
    let started = Instant::now();
    let e = lp.run_once(None, &mut ()).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
    assert!(e.to_string().contains("simulation stuck"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

fn sim_chat(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(example_path("sim_chat"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// `sim_chat`: the chat protocol passes over many seeds (every line to
/// every other reader, the reader that never reads cut off and the slow
/// one not, the idle one closed by the idle timeout); the same command
/// prints the same hash; the planted bug fails some seeds, and a failing
/// seed fails again alone.
#[test]
fn sim_chat_passes_replays_and_finds_the_planted_bug() {
    let (ok, out) = sim_chat(&["--seeds", "200"]);
    assert!(ok, "{out}");
    let last = out.lines().last().unwrap().to_string();
    assert!(last.starts_with("200 seeds, 0 failed, trace "), "{out}");
    let (_, again) = sim_chat(&["--seeds", "200"]);
    assert_eq!(again.lines().last().unwrap(), last);
    let (ok, bug) = sim_chat(&["--seeds", "40", "--plant-bug"]);
    assert!(ok, "{bug}");
    let failing: Vec<&str> = bug.lines().filter(|l| l.starts_with("seed ")).collect();
    assert!(!failing.is_empty(), "{bug}");
    let summary = bug.lines().last().unwrap();
    assert!(
        summary.starts_with(&format!("40 seeds, {} failed", failing.len())),
        "{bug}"
    );
    assert!(failing.len() < 40, "some seeds pass: {bug}");
    let seed = failing[0].split_whitespace().nth(1).unwrap();
    let (_, alone) = sim_chat(&["--start", seed, "--seeds", "1", "--plant-bug"]);
    assert!(alone.starts_with(&format!("seed {seed} failed")), "{alone}");
    assert!(
        alone
            .lines()
            .last()
            .unwrap()
            .starts_with("1 seeds, 1 failed")
    );
}

/// Datagrams in simulation: an echo endpoint answers a connected client
/// (whole datagrams, maybe out of order), lost ones are lost, and a
/// connected endpoint whose peer is not there hears `ConnectionRefused`.
#[test]
fn datagrams_are_echoed_lost_and_refused() {
    #[derive(Default)]
    struct Got {
        back: Vec<Vec<u8>>,
        errors: Vec<io::ErrorKind>,
    }
    struct Echo;
    impl DatagramProtocol<Got> for Echo {
        fn datagram_received(
            &mut self,
            t: &mut DatagramTransport<'_, Got>,
            data: &[u8],
            from: Addr,
            _: &mut Got,
        ) {
            t.send_to(data, from).unwrap();
        }
    }
    struct Client;
    impl DatagramProtocol<Got> for Client {
        fn datagram_received(
            &mut self,
            _: &mut DatagramTransport<'_, Got>,
            data: &[u8],
            _: Addr,
            got: &mut Got,
        ) {
            got.back.push(data.to_vec());
        }
        fn error_received(
            &mut self,
            _: &mut DatagramTransport<'_, Got>,
            e: io::Error,
            got: &mut Got,
        ) {
            got.errors.push(e.kind());
        }
    }
    let run = |seed: u64, drop: u32| -> (Got, u64) {
        let mut config = SimConfig::default();
        config.drop_per_million = drop;
        let world = World::new(seed, config);
        let mut lp = world.event_loop::<Got>().unwrap();
        let server: SocketAddr = "10.0.0.1:53".parse().unwrap();
        world
            .open_datagram(&mut lp, server, DatagramOptions::default(), Echo)
            .unwrap();
        let mut options = DatagramOptions::default();
        options.connect = Some(server);
        let client = world
            .open_datagram(&mut lp, "10.0.0.2:0".parse().unwrap(), options, Client)
            .unwrap();
        for i in 0..100usize {
            datagram::send_to(&mut lp, client, &vec![i as u8; i * 10], None).unwrap();
        }
        let mut got = Got::default();
        world
            .run_until(&mut lp, &mut got, Duration::from_secs(5), |g| {
                g.back.len() == 100
            })
            .unwrap();
        (got, world.trace_hash())
    };
    let (got, hash) = run(5, 0);
    let mut back = got.back.clone();
    back.sort_by_key(|d| d.len());
    let want: Vec<Vec<u8>> = (0..100usize).map(|i| vec![i as u8; i * 10]).collect();
    assert_eq!(back, want, "every datagram back, whole");
    assert_ne!(got.back, want, "latencies of their own reorder them");
    assert_eq!(run(5, 0).1, hash, "one seed, one trace");
    let (lossy, _) = run(5, 100_000);
    assert!(
        lossy.back.len() < 100 && lossy.back.len() > 50,
        "{}",
        lossy.back.len()
    );
    // Nobody at the peer's address: refused, reported to the endpoint.
    let world = World::new(1, SimConfig::default());
    let mut lp = world.event_loop::<Got>().unwrap();
    let mut options = DatagramOptions::default();
    options.connect = Some("10.0.0.9:9".parse().unwrap());
    let id = world
        .open_datagram(&mut lp, "10.0.0.2:0".parse().unwrap(), options, Client)
        .unwrap();
    datagram::send_to(&mut lp, id, b"anyone?", None).unwrap();
    let mut got = Got::default();
    world
        .run_until(&mut lp, &mut got, Duration::from_secs(5), |g| {
            !g.errors.is_empty()
        })
        .unwrap();
    assert_eq!(got.errors, vec![io::ErrorKind::ConnectionRefused]);
    // Bound twice: refused.
    let e = world
        .open_datagram(
            &mut lp,
            "10.0.0.2:40000".parse().unwrap(),
            DatagramOptions::default(),
            Client,
        )
        .unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
}
