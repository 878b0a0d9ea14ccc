//! A loop per core (`muxloop::workers`), on every backend: one server
//! across two workers in each balancing mode (1,000 connections, every
//! byte checked, both workers serving), messages between workers, a
//! graceful stop under load that loses no accepted connection, the final
//! states, and a panicking worker.

#[macro_use]
mod util;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use muxloop::BackendKind;
use muxloop::stream::{Protocol, ServeOptions, Transport};
use muxloop::workers::{Balance, Pick, SharedListener, WorkerError, WorkerOptions, Workers};
use util::*;

/// A worker's state: what it echoed, and messages it got.
#[derive(Default)]
struct Tally {
    index: usize,
    bytes: u64,
    messages: Vec<String>,
}

struct Echo;

impl Protocol<Tally> for Echo {
    fn data_received(&mut self, t: &mut Transport<'_, Tally>, data: &[u8], s: &mut Tally) {
        s.bytes += data.len() as u64;
        t.write(data);
    }
}

fn options(kind: BackendKind, count: usize) -> WorkerOptions {
    let mut o = WorkerOptions::default();
    o.count = count;
    o.backend = Some(kind);
    o
}

fn echo_workers(kind: BackendKind, balance: Balance) -> (Workers<Tally>, SocketAddr) {
    init_logging();
    let listener = SharedListener::bind("127.0.0.1:0".parse().unwrap(), balance).unwrap();
    let addr = listener.local_addr();
    let workers = Workers::start(
        options(kind, 2),
        |index| Tally {
            index,
            ..Tally::default()
        },
        move |w| {
            w.serve(&listener, ServeOptions::default(), |_, _| {
                Some(Box::new(Echo))
            })?;
            Ok(())
        },
    )
    .unwrap();
    (workers, addr)
}

/// 1,000 connections open at once, each echoing a few payloads; then the
/// workers' shares.
fn thousand_connections(kind: BackendKind, balance: Balance) {
    if !fds_fit(2400, "1,000 connections") {
        return;
    }
    let (workers, addr) = echo_workers(kind, balance);
    let bytes = echo_clients(addr, 1000, 3, 200);
    let exits = workers.stop(Duration::from_secs(5));
    let exits: Vec<_> = exits.into_iter().map(Result::unwrap).collect();
    let served: Vec<u64> = exits.iter().map(|e| e.stats.connections).collect();
    assert_eq!(
        served.iter().sum::<u64>(),
        1000,
        "{kind} {balance:?}: {served:?}"
    );
    for (i, &n) in served.iter().enumerate() {
        assert!(
            n >= 250,
            "{kind} {balance:?}: worker {i} served {n} of 1000"
        );
    }
    let echoed: u64 = exits.iter().map(|e| e.state.bytes).sum();
    assert_eq!(echoed as usize, bytes, "{kind} {balance:?}");
    for (i, e) in exits.iter().enumerate() {
        assert_eq!((e.index, e.state.index), (i, i));
        assert_eq!(e.stats.open, 0);
        assert!(e.stats.callbacks > 0 && e.stats.iterations > 0);
    }
}

/// Clients connect and ping-pong until the stop; every connection a
/// client got must have been accepted by a worker and end with an
/// orderly close (or its echo), never a reset.
fn graceful_stop_under_load(kind: BackendKind, balance: Balance) {
    let (workers, addr) = echo_workers(kind, balance);
    let stop = Arc::new(AtomicBool::new(false));
    let connected = Arc::new(AtomicUsize::new(0));
    let resets = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (stop, connected, resets) = (stop.clone(), connected.clone(), resets.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    let Ok(mut c) = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
                    else {
                        continue;
                    };
                    connected.fetch_add(1, Ordering::AcqRel);
                    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    let mut back = [0u8; 4];
                    let outcome = c.write_all(b"ping").and_then(|_| c.read_exact(&mut back));
                    match outcome {
                        Ok(()) => assert_eq!(&back, b"ping"),
                        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {}
                        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                            resets.fetch_add(1, Ordering::AcqRel);
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let exits = workers.stop(Duration::from_secs(5));
    stop.store(true, Ordering::Release);
    for c in clients {
        c.join().unwrap();
    }
    let served: u64 = exits
        .into_iter()
        .map(|e| e.unwrap().stats.connections)
        .sum();
    let connected = connected.load(Ordering::Acquire) as u64;
    assert!(
        connected > 50,
        "{kind} {balance:?}: only {connected} connections"
    );
    assert_eq!(
        resets.load(Ordering::Acquire),
        0,
        "{kind} {balance:?}: resets"
    );
    assert_eq!(
        served, connected,
        "{kind} {balance:?}: accepted = connected"
    );
}

mod cases {
    use super::*;

    pub fn reuse_port_spreads_a_thousand_connections(kind: BackendKind) {
        if SharedListener::bind("127.0.0.1:0".parse().unwrap(), Balance::ReusePort).is_err() {
            eprintln!("skipped: no balanced reuse-port here");
            return;
        }
        thousand_connections(kind, Balance::ReusePort);
    }

    pub fn an_acceptor_spreads_a_thousand_connections(kind: BackendKind) {
        thousand_connections(kind, Balance::Acceptor(Pick::RoundRobin));
        thousand_connections(kind, Balance::Acceptor(Pick::LeastConnections));
    }

    pub fn graceful_stop_loses_no_accepted_connection(kind: BackendKind) {
        graceful_stop_under_load(kind, Balance::Auto);
        graceful_stop_under_load(kind, Balance::Acceptor(Pick::LeastConnections));
    }

    pub fn messages_reach_one_worker_or_all(kind: BackendKind) {
        init_logging();
        let workers = Workers::start(
            options(kind, 3),
            |index| Tally {
                index,
                ..Tally::default()
            },
            |w| {
                // Worker 0 greets worker 2, then everyone else.
                if w.index() == 0 {
                    let peers = w.peers();
                    peers.send(2, |_, s: &mut Tally| s.messages.push("direct".into()))?;
                    peers.broadcast(Some(0), |_, s: &mut Tally| s.messages.push("all".into()));
                    assert!(peers.send(3, |_, _| {}).is_err(), "no worker 3");
                }
                Ok(())
            },
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        // Messages are queued in the loops: wait for them to be run.
        while workers.stats().iter().map(|s| s.callbacks).sum::<u64>() < 3 {
            assert!(Instant::now() < deadline, "messages not run");
            std::thread::sleep(Duration::from_millis(5));
        }
        let exits = workers.stop(Duration::ZERO);
        let got: Vec<Vec<String>> = exits
            .into_iter()
            .map(|e| e.unwrap().state.messages)
            .collect();
        assert_eq!(got[0], Vec::<String>::new());
        assert_eq!(got[1], vec!["all"]);
        let mut two = got[2].clone();
        two.sort();
        assert_eq!(two, vec!["all", "direct"]);
    }

    pub fn a_panicking_worker_is_reported_and_the_others_stop(kind: BackendKind) {
        init_logging();
        let (workers, addr) = echo_workers(kind, Balance::Auto);
        let gone = Arc::new(AtomicUsize::new(0));
        let g = gone.clone();
        workers.on_exit(move |_| {
            g.fetch_add(1, Ordering::AcqRel);
        });
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        c.read_exact(&mut b).unwrap();
        workers
            .peers()
            .send(1, |_, _| panic!("worker one gives up"))
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while gone.load(Ordering::Acquire) < 2 {
            assert!(Instant::now() < deadline, "the other worker did not stop");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(workers.any_finished());
        let exits = workers.join();
        assert!(exits[0].is_ok(), "{:?}", exits[0].as_ref().err());
        match &exits[1] {
            Err(WorkerError::Panicked(1, msg)) => assert_eq!(msg, "worker one gives up"),
            other => panic!("{:?}", other.as_ref().map(|e| e.index)),
        }
        drop(c);
    }

    pub fn a_failing_setup_stops_the_start(kind: BackendKind) {
        init_logging();
        let e = Workers::start(
            options(kind, 2),
            |_| (),
            |w| {
                if w.index() == 1 {
                    return Err(io::Error::new(io::ErrorKind::AddrInUse, "taken"));
                }
                Ok(())
            },
        )
        .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        assert!(e.to_string().contains("worker 1"), "{e}");
        let e = Workers::start(options(kind, 0), |_| (), |_| Ok(())).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }
}

per_backend!(
    reuse_port_spreads_a_thousand_connections,
    an_acceptor_spreads_a_thousand_connections,
    graceful_stop_loses_no_accepted_connection,
    messages_reach_one_worker_or_all,
    a_panicking_worker_is_reported_and_the_others_stop,
    a_failing_setup_stops_the_start,
);
