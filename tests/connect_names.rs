//! Connecting by name and by several addresses (`stream::connect_host`,
//! `connect_any`), on every backend: a name resolved on the blocking
//! pool, Happy Eyeballs past an address that does not answer or refuses,
//! one error listing every address's, names that do not resolve, and the
//! timeout covering it all.
#![cfg(target_os = "linux")]

#[macro_use]
mod util;

use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use muxloop::stream::{self, Protocol, Transport};
use muxloop::{BackendKind, EventLoop};
use util::*;

#[derive(Default)]
struct Log {
    made: Option<SocketAddr>,
    failed: Option<(io::ErrorKind, String)>,
}

/// Says hello, records where it got to.
struct Client;

impl Protocol<Log> for Client {
    fn connection_made(&mut self, t: &mut Transport<'_, Log>, log: &mut Log) {
        log.made = match t.peer_addr() {
            Ok(stream::Addr::Inet(a)) => Some(a),
            other => panic!("{other:?}"),
        };
        t.write(b"hello");
        t.close();
    }
    fn data_received(&mut self, _: &mut Transport<'_, Log>, _: &[u8], _: &mut Log) {}
    fn connection_failed(&mut self, e: io::Error, log: &mut Log) {
        log.failed = Some((e.kind(), e.to_string()));
    }
}

fn run_until_decided(lp: &mut EventLoop<Log>, log: &mut Log) -> Duration {
    let start = Instant::now();
    while log.made.is_none() && log.failed.is_none() {
        assert!(start.elapsed() < Duration::from_secs(20), "undecided");
        lp.run_once(Some(Duration::from_millis(50)), log).unwrap();
    }
    start.elapsed()
}

/// Reads what the client sent on the listener's first connection.
fn hello_on(l: &TcpListener) -> Vec<u8> {
    let (mut s, _) = l.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    got
}

mod cases {
    use super::*;

    pub fn a_name_is_resolved_and_connected(kind: BackendKind) {
        init_logging();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut lp = EventLoop::with_backend(kind).unwrap();
        let to = format!("localhost:{port}");
        stream::connect_host(&mut lp, &to, Some(Duration::from_secs(10)), Client).unwrap();
        let mut log = Log::default();
        run_until_decided(&mut lp, &mut log);
        assert_eq!(log.failed, None);
        assert_eq!(log.made, Some(listener.local_addr().unwrap()));
        let l = listener.try_clone().unwrap();
        let reader = std::thread::spawn(move || hello_on(&l));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !reader.is_finished() {
            assert!(Instant::now() < deadline, "hello not received");
            lp.run_once(Some(Duration::from_millis(20)), &mut log)
                .unwrap();
        }
        assert_eq!(reader.join().unwrap(), b"hello");
        // IP literals need no resolver, IPv6 in brackets.
        if let Ok(v6) = TcpListener::bind("[::1]:0") {
            let to = format!("[::1]:{}", v6.local_addr().unwrap().port());
            stream::connect_host(&mut lp, &to, None, Client).unwrap();
            let mut log = Log::default();
            run_until_decided(&mut lp, &mut log);
            assert_eq!(log.made, Some(v6.local_addr().unwrap()));
        }
    }

    pub fn happy_eyeballs_tries_the_next_address_after_the_delay(kind: BackendKind) {
        init_logging();
        let silent = unanswering_listener("127.0.0.1:0");
        let good = TcpListener::bind("127.0.0.1:0").unwrap();
        let addrs = [silent.local_addr().unwrap(), good.local_addr().unwrap()];
        let mut lp = EventLoop::with_backend(kind).unwrap();
        let delay = Duration::from_millis(200);
        stream::connect_any_with(
            &mut lp,
            &addrs,
            Some(Duration::from_secs(10)),
            delay,
            Client,
        )
        .unwrap();
        let mut log = Log::default();
        let took = run_until_decided(&mut lp, &mut log);
        assert_eq!(log.made, Some(addrs[1]), "{:?}", log.failed);
        assert!(took >= delay - Duration::from_millis(5), "{took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
        // The attempt that lost is closed; only the winner is left.
        assert_eq!(lp.source_count(), 1);
    }

    pub fn a_refused_address_has_the_next_one_tried_at_once(kind: BackendKind) {
        init_logging();
        let refused = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let good = TcpListener::bind("127.0.0.1:0").unwrap();
        let addrs = [refused, good.local_addr().unwrap()];
        let mut lp = EventLoop::with_backend(kind).unwrap();
        stream::connect_any(&mut lp, &addrs, None, Client).unwrap();
        let mut log = Log::default();
        let took = run_until_decided(&mut lp, &mut log);
        assert_eq!(log.made, Some(addrs[1]));
        assert!(
            took < stream::HAPPY_EYEBALLS_DELAY,
            "{took:?}: waited for the delay"
        );
    }

    pub fn all_failing_gives_one_error_naming_each_address(kind: BackendKind) {
        init_logging();
        let a = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let b = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut lp = EventLoop::with_backend(kind).unwrap();
        stream::connect_any(&mut lp, &[a, b], None, Client).unwrap();
        let mut log = Log::default();
        run_until_decided(&mut lp, &mut log);
        let (kind_, msg) = log.failed.unwrap();
        assert_eq!(kind_, io::ErrorKind::ConnectionRefused);
        assert!(msg.contains("2 addresses failed"), "{msg}");
        assert!(
            msg.contains(&a.to_string()) && msg.contains(&b.to_string()),
            "{msg}"
        );
        assert_eq!(lp.source_count(), 0);
        assert!(stream::connect_any(&mut lp, &[], None, Client).is_err());
    }

    pub fn names_that_do_not_resolve_and_the_timeout(kind: BackendKind) {
        init_logging();
        let mut lp = EventLoop::with_backend(kind).unwrap();
        // `.invalid` never resolves (RFC 6761); without a DNS server the
        // resolver may instead wait: the timeout covers that.
        let to = "no-such-host.invalid:80";
        stream::connect_host(&mut lp, to, Some(Duration::from_secs(3)), Client).unwrap();
        let mut log = Log::default();
        run_until_decided(&mut lp, &mut log);
        let (_, msg) = log.failed.unwrap();
        assert!(msg.contains(to), "{msg}");
        // A silent address: the timeout ends it, naming it.
        let silent = unanswering_listener("127.0.0.1:0");
        let to = silent.local_addr().unwrap().to_string();
        let started = Instant::now();
        stream::connect_host(&mut lp, &to, Some(Duration::from_millis(300)), Client).unwrap();
        let mut log = Log::default();
        run_until_decided(&mut lp, &mut log);
        let (kind_, msg) = log.failed.unwrap();
        assert_eq!(kind_, io::ErrorKind::TimedOut, "{msg}");
        assert!(msg.contains(&to), "{msg}");
        assert!(started.elapsed() >= Duration::from_millis(290));
        assert_eq!(lp.source_count(), 0, "the attempt is closed");
        for bad in ["no-port", "host:notaport", ":80"] {
            let e = stream::connect_host(&mut lp, bad, None, Client).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{bad}");
        }
        let e = stream::connect_host(&mut lp, ("", 80), None, Client).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }

    pub fn a_host_and_port_pair_and_a_resolver_that_hangs(kind: BackendKind) {
        init_logging();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut lp = EventLoop::with_backend(kind).unwrap();
        stream::connect_host(&mut lp, ("localhost", port), None, Client).unwrap();
        let mut log = Log::default();
        run_until_decided(&mut lp, &mut log);
        assert_eq!(log.made, Some(listener.local_addr().unwrap()));
        // One pool thread, held by a job that takes 2 s: the resolution
        // waits behind it, as behind a resolver that hangs, and the
        // connect's timeout ends it first.
        lp.set_blocking_pool(muxloop::BlockingPool::new(1, 4));
        lp.spawn_blocking(|| std::thread::sleep(Duration::from_secs(2)), |_, _, _| {})
            .unwrap();
        let started = Instant::now();
        let to = format!("localhost:{port}");
        stream::connect_host(&mut lp, &to, Some(Duration::from_millis(300)), Client).unwrap();
        let mut log = Log::default();
        run_until_decided(&mut lp, &mut log);
        let (kind_, msg) = log.failed.unwrap();
        assert_eq!(kind_, io::ErrorKind::TimedOut, "{msg}");
        assert!(msg.contains(&to), "{msg}");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(290) && took < Duration::from_millis(1900),
            "{took:?}"
        );
    }
}

per_backend!(
    a_name_is_resolved_and_connected,
    happy_eyeballs_tries_the_next_address_after_the_delay,
    a_refused_address_has_the_next_one_tried_at_once,
    all_failing_gives_one_error_naming_each_address,
    names_that_do_not_resolve_and_the_timeout,
    a_host_and_port_pair_and_a_resolver_that_hangs,
);
