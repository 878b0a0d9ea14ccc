//! The stream layer on every backend: the callback order, buffered writes
//! and flow control, half-close, close and abort, resets, writing to other
//! connections, connection timers, servers (TCP v4/v6, Unix, caps,
//! refusal, graceful close) and clients (connected, refused, timed out).

#[macro_use]
mod util;

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use muxloop::stream::{self, Protocol, ServeOptions, Transport};
use muxloop::{BackendKind, EventLoop};
use util::*;

/// What the protocols saw, in order, per connection name.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Ev {
    Made,
    Data(usize),
    Eof,
    PauseWriting(usize),
    ResumeWriting(usize),
    Timer(u64),
    Idle,
    Lost(Option<io::ErrorKind>),
    Failed(io::ErrorKind),
}

#[derive(Default)]
struct Log {
    events: Vec<(&'static str, Ev)>,
    received: Vec<u8>,
}

impl Log {
    fn of(&self, name: &str) -> Vec<Ev> {
        self.events
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, e)| e.clone())
            .collect()
    }

    fn lost(&self, name: &str) -> bool {
        self.of(name).iter().any(|e| matches!(e, Ev::Lost(_)))
    }
}

type Hook = Box<dyn FnMut(&mut Transport<'_, Log>, &[u8])>;

/// A protocol that logs every callback and runs the test's hooks.
struct Probe {
    name: &'static str,
    keep_open: bool,
    echo: bool,
    /// A timer resumes reading (twice: idempotent).
    resume_on_timer: bool,
    /// Called in connection_made (with no data) and in data_received.
    on_made: Option<Hook>,
    on_data: Option<Hook>,
    on_pause: Option<Hook>,
    on_resume: Option<Hook>,
}

impl Probe {
    fn new(name: &'static str) -> Probe {
        Probe {
            name,
            keep_open: false,
            echo: false,
            resume_on_timer: false,
            on_made: None,
            on_data: None,
            on_pause: None,
            on_resume: None,
        }
    }
}

impl Protocol<Log> for Probe {
    fn connection_made(&mut self, t: &mut Transport<'_, Log>, log: &mut Log) {
        log.events.push((self.name, Ev::Made));
        if let Some(f) = self.on_made.as_mut() {
            f(t, &[]);
        }
    }

    fn data_received(&mut self, t: &mut Transport<'_, Log>, data: &[u8], log: &mut Log) {
        log.events.push((self.name, Ev::Data(data.len())));
        log.received.extend_from_slice(data);
        if self.echo {
            t.write(data);
        }
        if let Some(f) = self.on_data.as_mut() {
            f(t, data);
        }
    }

    fn eof_received(&mut self, _: &mut Transport<'_, Log>, log: &mut Log) -> bool {
        log.events.push((self.name, Ev::Eof));
        self.keep_open
    }

    fn connection_lost(
        &mut self,
        t: &mut Transport<'_, Log>,
        error: Option<io::Error>,
        log: &mut Log,
    ) {
        assert!(t.is_closing());
        log.events
            .push((self.name, Ev::Lost(error.map(|e| e.kind()))));
    }

    fn connection_failed(&mut self, error: io::Error, log: &mut Log) {
        log.events.push((self.name, Ev::Failed(error.kind())));
    }

    fn pause_writing(&mut self, t: &mut Transport<'_, Log>, log: &mut Log) {
        log.events
            .push((self.name, Ev::PauseWriting(t.write_buffer_size())));
        if let Some(f) = self.on_pause.as_mut() {
            f(t, &[]);
        }
    }

    fn resume_writing(&mut self, t: &mut Transport<'_, Log>, log: &mut Log) {
        log.events
            .push((self.name, Ev::ResumeWriting(t.write_buffer_size())));
        if let Some(f) = self.on_resume.as_mut() {
            f(t, &[]);
        }
    }

    fn timer_fired(&mut self, t: &mut Transport<'_, Log>, key: u64, log: &mut Log) {
        log.events.push((self.name, Ev::Timer(key)));
        if self.resume_on_timer {
            t.resume_reading();
            t.resume_reading();
            assert!(t.is_reading());
        }
    }

    fn idle_timeout(&mut self, t: &mut Transport<'_, Log>, log: &mut Log) {
        log.events.push((self.name, Ev::Idle));
        t.close();
    }
}

fn new_loop(kind: BackendKind) -> EventLoop<Log> {
    init_logging();
    EventLoop::with_backend(kind).expect("event loop")
}

/// Runs the loop until `done` holds, for at most 10 s.
fn run_until(lp: &mut EventLoop<Log>, log: &mut Log, mut done: impl FnMut(&Log) -> bool) {
    let t = Instant::now();
    while !done(log) {
        lp.run_once(Some(Duration::from_millis(20)), log).unwrap();
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "timed out: {:?}",
            log.events
        );
    }
}

/// A non-blocking socket pair: (the connection's side, the peer, blocking
/// with a timeout).
fn conn_pair() -> (UnixStream, UnixStream) {
    let (a, b) = pair();
    b.set_nonblocking(false).unwrap();
    b.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    (a, b)
}

fn pattern(i: usize) -> u8 {
    (i * 31 % 253) as u8
}

/// Asserts the callback order of one connection: made first, lost once and
/// last, eof at most once after every data, pause/resume alternating.
fn assert_order(events: &[Ev]) {
    assert_eq!(events.first(), Some(&Ev::Made), "{events:?}");
    let lost: Vec<_> = events
        .iter()
        .enumerate()
        .filter(|(_, e)| matches!(e, Ev::Lost(_)))
        .collect();
    assert_eq!(lost.len(), 1, "{events:?}");
    assert_eq!(lost[0].0, events.len() - 1, "lost is last: {events:?}");
    if let Some(eof) = events.iter().position(|e| *e == Ev::Eof) {
        assert!(
            !events[eof..].iter().any(|e| matches!(e, Ev::Data(_))),
            "{events:?}"
        );
        assert_eq!(events.iter().filter(|e| **e == Ev::Eof).count(), 1);
    }
    let mut paused = false;
    for e in events {
        match e {
            Ev::PauseWriting(_) => {
                assert!(!paused, "pause twice: {events:?}");
                paused = true;
            }
            Ev::ResumeWriting(_) => {
                assert!(paused, "resume without pause: {events:?}");
                paused = false;
            }
            _ => {}
        }
    }
}

mod cases {
    use super::*;

    pub fn callbacks_come_in_order_and_eof_closes_after_the_echo(kind: BackendKind) {
        let (a, mut peer) = conn_pair();
        let mut lp = new_loop(kind);
        let mut p = Probe::new("c");
        p.echo = true;
        stream::attach(&mut lp, a, p).unwrap();
        peer.write_all(b"hello").unwrap();
        peer.shutdown(Shutdown::Write).unwrap();
        let mut log = Log::default();
        run_until(&mut lp, &mut log, |l| l.lost("c"));
        let events = log.of("c");
        assert_order(&events);
        assert_eq!(events[events.len() - 2], Ev::Eof);
        assert_eq!(events.last(), Some(&Ev::Lost(None)));
        let mut back = Vec::new();
        peer.read_to_end(&mut back).unwrap();
        assert_eq!(back, b"hello", "echoed, then closed");
        assert_eq!(lp.source_count(), 0);
    }

    pub fn writes_to_a_slow_reader_arrive_whole_and_in_order(kind: BackendKind) {
        let (a, mut peer) = conn_pair();
        let mut lp = new_loop(kind);
        const TOTAL: usize = 3 * 1024 * 1024;
        let mut p = Probe::new("w");
        p.on_made = Some(Box::new(|t, _| {
            // Random sizes, plain and vectored, far beyond the socket
            // buffer: most of it is buffered.
            let data: Vec<u8> = (0..TOTAL).map(pattern).collect();
            let mut rng = Rng::new(7);
            let mut at = 0;
            while at < TOTAL {
                let n = (1 + rng.below(40_000) as usize).min(TOTAL - at);
                if rng.below(2) == 0 {
                    t.write(&data[at..at + n]);
                } else {
                    let mid = at + n / 2;
                    t.write_vectored(&[&data[at..mid], &data[mid..at + n]]);
                }
                at += n;
            }
            assert!(t.write_buffer_size() > 0);
            t.close();
        }));
        stream::attach(&mut lp, a, p).unwrap();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut buf = [0; 7000];
            loop {
                std::thread::sleep(Duration::from_micros(200));
                match peer.read(&mut buf).unwrap() {
                    0 => break got,
                    n => got.extend_from_slice(&buf[..n]),
                }
            }
        });
        let mut log = Log::default();
        run_until(&mut lp, &mut log, |l| l.lost("w"));
        let got = reader.join().unwrap();
        assert_eq!(got.len(), TOTAL);
        assert!(got.iter().enumerate().all(|(i, b)| *b == pattern(i)));
        let events = log.of("w");
        assert_order(&events);
        // Above 64 KiB: paused (once, the protocol went on writing).
        assert!(
            matches!(events[1], Ev::PauseWriting(n) if n > 64 * 1024),
            "{events:?}"
        );
    }

    pub fn watermarks_pause_above_high_and_resume_at_low_even_at_zero(kind: BackendKind) {
        for (high, low) in [
            (0, 0),
            (100_000, 0),
            (100_000, 100_000),
            (64 * 1024, 16 * 1024),
        ] {
            let (a, mut peer) = conn_pair();
            let mut lp = new_loop(kind);
            let mut p = Probe::new("m");
            let sent = std::rc::Rc::new(std::cell::Cell::new(0usize));
            // A protocol that honours pause: writes while not paused, and
            // closes once it has written everything.
            let pump = move |t: &mut Transport<'_, Log>, sent: &std::cell::Cell<usize>| {
                let chunk = [5u8; 50_000];
                while t.write_buffer_size() <= high && sent.get() < 4_000_000 {
                    t.write(&chunk);
                    sent.set(sent.get() + chunk.len());
                }
                if sent.get() >= 4_000_000 {
                    t.close();
                }
            };
            let s1 = sent.clone();
            p.on_made = Some(Box::new(move |t, _| {
                t.set_write_buffer_limits(high, low).unwrap();
                assert_eq!(t.write_buffer_limits(), (high, low));
                pump(t, &s1);
            }));
            let s2 = sent.clone();
            p.on_resume = Some(Box::new(move |t, _| {
                assert!(t.write_buffer_size() <= low);
                pump(t, &s2);
            }));
            stream::attach(&mut lp, a, p).unwrap();
            let reader = std::thread::spawn(move || {
                let mut n = 0;
                let mut buf = vec![0; 64 * 1024];
                loop {
                    match peer.read(&mut buf).unwrap() {
                        0 => break n,
                        k => n += k,
                    }
                }
            });
            let mut log = Log::default();
            run_until(&mut lp, &mut log, |l| l.lost("m"));
            assert_eq!(reader.join().unwrap(), sent.get(), "{high}/{low}");
            let events = log.of("m");
            assert_order(&events);
            for e in &events {
                match *e {
                    // Honoured: never more than high + one write.
                    Ev::PauseWriting(n) => assert!(n > high && n <= high + 50_000, "{e:?}"),
                    Ev::ResumeWriting(n) => assert!(n <= low, "{e:?}"),
                    _ => {}
                }
            }
            assert_eq!(
                events.last(),
                Some(&Ev::Lost(None)),
                "{high}/{low}: {events:?}"
            );
        }
    }

    pub fn invalid_watermarks_are_refused(kind: BackendKind) {
        let (a, _peer) = conn_pair();
        let mut lp = new_loop(kind);
        let mut p = Probe::new("x");
        p.on_made = Some(Box::new(|t, _| {
            let err = t.set_write_buffer_limits(10, 11).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
            assert_eq!(t.write_buffer_limits(), (64 * 1024, 16 * 1024));
            t.abort();
        }));
        stream::attach(&mut lp, a, p).unwrap();
        let mut log = Log::default();
        run_until(&mut lp, &mut log, |l| l.lost("x"));
    }

    pub fn abort_drops_the_buffer_and_closes_at_once(kind: BackendKind) {
        let (a, mut peer) = conn_pair();
        let mut lp = new_loop(kind);
        let mut p = Probe::new("a");
        p.on_made = Some(Box::new(|t, _| {
            t.write(&vec![1; 4 * 1024 * 1024]);
            assert!(t.write_buffer_size() > 0);
            t.abort();
            t.write(b"ignored");
            assert!(t.is_closing());
        }));
        stream::attach(&mut lp, a, p).unwrap();
        let mut log = Log::default();
        lp.run_once(Some(Duration::ZERO), &mut log).unwrap();
        assert_eq!(log.of("a"), vec![Ev::Made, Ev::Lost(None)]);
        let mut n = 0;
        let mut buf = vec![0; 1 << 20];
        loop {
            match peer.read(&mut buf) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(_) => break,
            }
        }
        assert!(n < 4 * 1024 * 1024, "only what the socket took: {n}");
    }

    pub fn a_reset_reaches_connection_lost_as_an_error(kind: BackendKind) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (a, _) = listener.accept().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut lp = new_loop(kind);
        stream::attach(&mut lp, a, Probe::new("r")).unwrap();
        let mut log = Log::default();
        lp.run_once(Some(Duration::ZERO), &mut log).unwrap();
        linger_zero(&peer);
        drop(peer); // RST
        run_until(&mut lp, &mut log, |l| l.lost("r"));
        let events = log.of("r");
        assert_order(&events);
        assert_eq!(
            events.last(),
            Some(&Ev::Lost(Some(io::ErrorKind::ConnectionReset))),
            "{events:?}"
        );
    }

    /// Reading paused, the peer resets, and only then the protocol closes
    /// (nothing pending): the close ends with `None` or the reset, never
    /// with the `NotConnected` of shutdown(2) on a reset socket.
    pub fn close_after_an_unread_reset_ends_with_none_or_the_reset(kind: BackendKind) {
        for write_eof in [false, true] {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let peer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (a, _) = listener.accept().unwrap();
            a.set_nonblocking(true).unwrap();
            let mut lp = new_loop(kind);
            let mut p = Probe::new("c");
            p.on_made = Some(Box::new(|t, _| t.pause_reading()));
            let id = stream::attach(&mut lp, a, p).unwrap();
            let mut log = Log::default();
            lp.run_once(Some(Duration::ZERO), &mut log).unwrap();
            linger_zero(&peer);
            drop(peer); // RST, unread: nobody watches the socket
            for _ in 0..3 {
                lp.run_once(Some(Duration::from_millis(10)), &mut log)
                    .unwrap();
            }
            if write_eof {
                stream::with_transport(&mut lp, id, |t| t.write_eof());
            } else {
                stream::close(&mut lp, id);
            }
            run_until(&mut lp, &mut log, |l| l.lost("c"));
            let events = log.of("c");
            assert_order(&events);
            let last = events.last().unwrap();
            let ok =
                *last == Ev::Lost(None) || *last == Ev::Lost(Some(io::ErrorKind::ConnectionReset));
            assert!(ok, "write_eof={write_eof}: {events:?}");
        }
    }

    /// After the peer's EOF a close sends everything and closes the
    /// socket, whose FIN is the half-close: no shutdown(2) first.
    pub fn a_close_after_the_peers_eof_needs_no_half_close(kind: BackendKind) {
        let (a, mut peer) = conn_pair();
        let shutdowns = std::rc::Rc::new(std::cell::Cell::new(0));
        let sock = Counted {
            inner: a,
            calls: Default::default(),
            shutdowns: shutdowns.clone(),
            sends: Default::default(),
        };
        let mut lp = new_loop(kind);
        let mut p = Probe::new("q");
        p.echo = true;
        stream::attach(&mut lp, sock, p).unwrap();
        peer.write_all(b"last words").unwrap();
        peer.shutdown(Shutdown::Write).unwrap();
        let mut log = Log::default();
        run_until(&mut lp, &mut log, |l| l.lost("q"));
        let events = log.of("q");
        assert_order(&events);
        assert_eq!(events.last(), Some(&Ev::Lost(None)), "{events:?}");
        let mut got = Vec::new();
        peer.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"last words");
        assert_eq!(shutdowns.get(), 0, "a half-close before the close");
    }

    /// The close linger is a setting: zero closes at once, a short one
    /// bounds the wait for a peer that never sends its EOF.
    pub fn the_close_linger_bounds_the_wait_for_the_peers_eof(kind: BackendKind) {
        for linger in [Duration::ZERO, Duration::from_millis(300)] {
            let (a, mut peer) = conn_pair();
            let mut lp = new_loop(kind);
            let mut p = Probe::new("l");
            p.on_made = Some(Box::new(move |t, _| {
                assert_eq!(t.close_linger(), Duration::from_secs(2), "the default");
                t.set_close_linger(linger);
                t.write(b"bye");
                t.close();
            }));
            stream::attach(&mut lp, a, p).unwrap();
            let mut log = Log::default();
            let start = Instant::now();
            run_until(&mut lp, &mut log, |l| l.lost("l"));
            let took = start.elapsed();
            assert!(took >= linger, "{linger:?}: closed after {took:?}");
            let bound = linger + Duration::from_millis(1000);
            assert!(took < bound, "{linger:?}: closed after {took:?}");
            assert_eq!(log.of("l").last(), Some(&Ev::Lost(None)));
            let mut got = Vec::new();
            peer.read_to_end(&mut got).unwrap();
            assert_eq!(got, b"bye", "{linger:?}");
        }
    }

    /// A close that cannot send its buffer (the peer never reads) ends at
    /// the close timeout, reported as `TimedOut`.
    pub fn the_close_timeout_aborts_a_close_the_peer_does_not_read(kind: BackendKind) {
        let (a, _peer) = conn_pair();
        let mut lp = new_loop(kind);
        let mut p = Probe::new("t");
        p.on_made = Some(Box::new(|t, _| {
            t.set_close_timeout(Some(Duration::from_millis(200)));
            t.write(&vec![7; 8 << 20]);
            t.close();
        }));
        stream::attach(&mut lp, a, p).unwrap();
        let mut log = Log::default();
        let start = Instant::now();
        run_until(&mut lp, &mut log, |l| l.lost("t"));
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(200), "{took:?}");
        assert!(took < Duration::from_secs(3), "{took:?}");
        let events = log.of("t");
        assert_eq!(
            events.last(),
            Some(&Ev::Lost(Some(io::ErrorKind::TimedOut))),
            "{events:?}"
        );
    }

    /// Sixteen writes in one callback (a pipelined protocol's answers) go
    /// out in at most two sends, in order; so do sixteen writes to another
    /// connection; the buffer size asked in between is the exact one.
    pub fn the_writes_of_one_callback_go_out_together(kind: BackendKind) {
        let counted = |inner| {
            let sends = std::rc::Rc::new(std::cell::Cell::new(0));
            let sock = Counted {
                inner,
                calls: Default::default(),
                shutdowns: Default::default(),
                sends: sends.clone(),
            };
            (sock, sends)
        };
        let (a, mut peer_a) = conn_pair();
        let (b, mut peer_b) = conn_pair();
        let (a, sends_a) = counted(a);
        let (b, sends_b) = counted(b);
        let mut lp = new_loop(kind);
        let id_b = stream::attach(&mut lp, b, Probe::new("b")).unwrap();
        let mut p = Probe::new("a");
        p.on_data = Some(Box::new(move |t, _| {
            for i in 0..16u8 {
                t.write(&[b'a' + i; 10]);
            }
            assert_eq!(t.write_buffer_size(), 0, "the socket took it all");
            for i in 0..16u8 {
                t.write(&[b'A' + i; 10]);
                t.write_to(id_b, &[b'A' + i; 10]).unwrap();
            }
        }));
        stream::attach(&mut lp, a, p).unwrap();
        let mut log = Log::default();
        run_until(&mut lp, &mut log, |l| l.of("b").contains(&Ev::Made));
        let (before_a, before_b) = (sends_a.get(), sends_b.get());
        peer_a.write_all(b"go").unwrap();
        run_until(&mut lp, &mut log, |l| l.received.len() == 2);
        for _ in 0..3 {
            lp.run_once(Some(Duration::from_millis(5)), &mut log)
                .unwrap();
        }
        let mut want_a = Vec::new();
        for i in 0..16u8 {
            want_a.extend_from_slice(&[b'a' + i; 10]);
        }
        let mut want_b = Vec::new();
        for i in 0..16u8 {
            want_a.extend_from_slice(&[b'A' + i; 10]);
            want_b.extend_from_slice(&[b'A' + i; 10]);
        }
        let mut got = vec![0; want_a.len()];
        peer_a.read_exact(&mut got).unwrap();
        assert_eq!(got, want_a);
        let mut got = vec![0; want_b.len()];
        peer_b.read_exact(&mut got).unwrap();
        assert_eq!(got, want_b);
        // a: the first write, the fifteen held before the size was asked,
        // the sixteen after it.
        let (sent_a, sent_b) = (sends_a.get() - before_a, sends_b.get() - before_b);
        assert!(sent_a <= 3, "{sent_a} sends for 32 writes");
        assert!(
            sent_b <= 2,
            "{sent_b} sends for 16 writes to another connection"
        );
    }

    /// `is_writing_paused` turns true inside the callback whose write went
    /// over the high mark (before `pause_writing` is called), and false
    /// once the buffer drained to the low mark.
    pub fn is_writing_paused_is_known_inside_the_callback(kind: BackendKind) {
        let (a, mut peer) = conn_pair();
        let mut lp = new_loop(kind);
        let mut p = Probe::new("p");
        p.on_made = Some(Box::new(|t, _| {
            t.set_write_buffer_limits(1024, 0).unwrap();
            assert!(!t.is_writing_paused());
            t.write(&vec![1; 4 << 20]);
            assert!(t.is_writing_paused(), "over the high mark at once");
        }));
        p.on_resume = Some(Box::new(|t, _| assert!(!t.is_writing_paused())));
        stream::attach(&mut lp, a, p).unwrap();
        let mut log = Log::default();
        lp.run_once(Some(Duration::ZERO), &mut log).unwrap();
        assert!(
            matches!(log.of("p")[..], [Ev::Made, Ev::PauseWriting(_)]),
            "{:?}",
            log.of("p")
        );
        let drain = std::thread::spawn(move || {
            let mut buf = vec![0; 1 << 16];
            let mut got = 0;
            while got < 4 << 20 {
                got += peer.read(&mut buf).unwrap();
            }
            peer
        });
        run_until(&mut lp, &mut log, |l| {
            l.of("p").iter().any(|e| matches!(e, Ev::ResumeWriting(_)))
        });
        drop(drain.join().unwrap());
    }

    pub fn half_open_keeps_writing_after_the_peers_eof(kind: BackendKind) {
        let (a, mut peer) = conn_pair();
        let mut lp = new_loop(kind);
        let mut p = Probe::new("h");
        p.keep_open = true;
        let id = stream::attach(&mut lp, a, p).unwrap();
        peer.shutdown(Shutdown::Write).unwrap();
        let mut log = Log::default();
        run_until(&mut lp, &mut log, |l| l.of("h").contains(&Ev::Eof));
        for _ in 0..3 {
            lp.run_once(Some(Duration::from_millis(10)), &mut log)
                .unwrap();
        }
        assert!(!log.lost("h"), "stays open");
        // Still writable, from outside its callbacks too.
        stream::send(&mut lp, id, b"after your eof").unwrap();
        stream::close(&mut lp, id);
        run_until(&mut lp, &mut log, |l| l.lost("h"));
        let mut got = Vec::new();
        peer.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"after your eof");
        assert_order(&log.of("h"));
    }

    pub fn write_eof_half_closes_and_reading_goes_on(kind: BackendKind) {
        let (a, mut peer) = conn_pair();
        let mut lp = new_loop(kind);
        let mut p = Probe::new("e");
        p.on_made = Some(Box::new(|t, _| {
            t.write(b"bye");
            t.write_eof();
            t.write(b"ignored");
        }));
        stream::attach(&mut lp, a, p).unwrap();
        let mut log = Log::default();
        lp.run_once(Some(Duration::ZERO), &mut log).unwrap();
        let mut got = Vec::new();
        peer.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"bye", "EOF after the data");
        peer.write_all(b"still reading").unwrap();
        run_until(&mut lp, &mut log, |l| l.received.len() == 13);
        assert!(!log.lost("e"));
        // The peer's EOF ends it: both directions are done.
        peer.shutdown(Shutdown::Write).unwrap();
        run_until(&mut lp, &mut log, |l| l.lost("e"));
        assert_order(&log.of("e"));
    }

    pub fn pause_reading_is_idempotent_and_loses_nothing(kind: BackendKind) {
        let (a, mut peer) = conn_pair();
        let mut lp = new_loop(kind);
        let mut p = Probe::new("p");
        p.resume_on_timer = true;
        p.on_made = Some(Box::new(|t, _| {
            t.pause_reading();
            t.pause_reading();
            assert!(!t.is_reading());
            t.call_later(Duration::from_millis(50), 0);
        }));
        stream::attach(&mut lp, a, p).unwrap();
        peer.write_all(b"waiting").unwrap();
        let mut log = Log::default();
        run_until(&mut lp, &mut log, |l| l.of("p").contains(&Ev::Timer(0)));
        let events = log.of("p");
        assert_eq!(
            events,
            vec![Ev::Made, Ev::Timer(0)],
            "nothing read while paused"
        );
        run_until(&mut lp, &mut log, |l| l.received == b"waiting");
    }

    pub fn write_to_reaches_another_connection_with_its_flow_control(kind: BackendKind) {
        let (a, mut a_peer) = conn_pair();
        let (b, mut b_peer) = conn_pair();
        let mut lp = new_loop(kind);
        let b_id = stream::attach(&mut lp, b, Probe::new("b")).unwrap();
        let mut p = Probe::new("a");
        p.on_data = Some(Box::new(move |t, data| {
            let size = t.write_to(b_id, data).unwrap();
            assert!(size <= data.len());
            // Writing to itself is a plain write.
            let me = t.id();
            t.write_to(me, b"ack").unwrap();
        }));
        stream::attach(&mut lp, a, p).unwrap();
        a_peer.write_all(b"relay me").unwrap();
        let mut log = Log::default();
        run_until(&mut lp, &mut log, |l| l.received.len() == 8);
        let mut got = [0; 8];
        b_peer.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"relay me");
        let mut ack = [0; 3];
        a_peer.read_exact(&mut ack).unwrap();
        assert_eq!(&ack, b"ack");
        // A peer that never reads: B's buffer grows and B is told to pause.
        let big = vec![9u8; 2 * 1024 * 1024];
        let n = stream::send(&mut lp, b_id, &big).unwrap();
        assert!(n > 64 * 1024);
        lp.run_once(Some(Duration::ZERO), &mut log).unwrap();
        assert!(
            log.of("b").iter().any(|e| matches!(e, Ev::PauseWriting(_))),
            "{:?}",
            log.of("b")
        );
        // Gone connections are NotFound.
        stream::abort(&mut lp, b_id);
        run_until(&mut lp, &mut log, |l| l.lost("b"));
        assert_eq!(
            stream::send(&mut lp, b_id, b"x").unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }

    pub fn connection_timers_fire_and_die_with_the_connection(kind: BackendKind) {
        let (a, peer) = conn_pair();
        let mut lp = new_loop(kind);
        let mut p = Probe::new("t");
        p.on_made = Some(Box::new(|t, _| {
            t.call_later(Duration::from_millis(10), 1);
            t.call_later(Duration::from_secs(3600), 2);
        }));
        stream::attach(&mut lp, a, p).unwrap();
        let mut log = Log::default();
        run_until(&mut lp, &mut log, |l| l.of("t").contains(&Ev::Timer(1)));
        assert_eq!(lp.timer_count(), 1, "the hour-long one is pending");
        drop(peer);
        run_until(&mut lp, &mut log, |l| l.lost("t"));
        assert_eq!(lp.timer_count(), 0, "cancelled with the connection");
        assert_order(&log.of("t"));
    }

    pub fn serve_tcp_v4_v6_and_unix(kind: BackendKind) {
        let dir = std::env::temp_dir().join(format!(
            "muxloop-stream-{}-{}",
            std::process::id(),
            kind.name()
        ));
        let _ = std::fs::remove_file(&dir);
        let mut listeners: Vec<stream::Listener> =
            vec![TcpListener::bind("127.0.0.1:0").unwrap().into()];
        if let Ok(v6) = TcpListener::bind("[::1]:0") {
            listeners.push(v6.into());
        }
        listeners.push(UnixListener::bind(&dir).unwrap().into());
        for listener in listeners {
            let mut lp = new_loop(kind);
            let server = stream::serve(&mut lp, listener, ServeOptions::default(), |_, _| {
                let mut p = Probe::new("s");
                p.echo = true;
                Some(Box::new(p))
            })
            .unwrap();
            let addr = server.local_addr().unwrap();
            let client = std::thread::spawn(move || -> Vec<u8> {
                let mut back = Vec::new();
                match addr {
                    stream::Addr::Inet(a) => {
                        let mut c = TcpStream::connect(a).unwrap();
                        c.write_all(b"ping").unwrap();
                        c.shutdown(Shutdown::Write).unwrap();
                        c.read_to_end(&mut back).unwrap();
                    }
                    stream::Addr::Unix(a) => {
                        let mut c = UnixStream::connect(a.as_pathname().unwrap()).unwrap();
                        c.write_all(b"ping").unwrap();
                        c.shutdown(Shutdown::Write).unwrap();
                        c.read_to_end(&mut back).unwrap();
                    }
                }
                back
            });
            let mut log = Log::default();
            run_until(&mut lp, &mut log, |l| l.lost("s"));
            assert_eq!(client.join().unwrap(), b"ping");
            assert_eq!(server.connections_served(), 1);
            assert_eq!(server.connection_count(), 0);
        }
        let _ = std::fs::remove_file(&dir);
    }

    pub fn serve_caps_connections_and_the_factory_may_refuse(kind: BackendKind) {
        let mut lp = new_loop(kind);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut options = ServeOptions::default();
        options.max_connections = Some(2);
        let mut n = 0;
        let server = stream::serve(&mut lp, listener, options, move |_, _| {
            n += 1;
            // The third connection offered is refused.
            (n != 3).then(|| Box::new(Probe::new("s")) as Box<dyn Protocol<Log>>)
        })
        .unwrap();
        let clients: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(addr).unwrap()).collect();
        let mut log = Log::default();
        for _ in 0..20 {
            lp.run_once(Some(Duration::from_millis(10)), &mut log)
                .unwrap();
        }
        assert_eq!(server.connection_count(), 2, "capped");
        assert_eq!(server.connections_served(), 2);
        // One leaves: the next is accepted (and refused by the factory),
        // then the fourth is served.
        drop(clients);
        run_until(&mut lp, &mut log, |_| {
            server.connection_count() == 0 && server.connections_served() == 3
        });
        assert_eq!(server.connections_refused(), 1);
    }

    pub fn graceful_close_flushes_then_aborts_what_is_left(kind: BackendKind) {
        let mut lp = new_loop(kind);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = stream::serve(&mut lp, listener, ServeOptions::default(), |_, _| {
            let mut p = Probe::new("g");
            p.on_data = Some(Box::new(|t, data| {
                // A reply bigger than the socket buffers.
                if data.starts_with(b"big") {
                    t.write(&vec![3u8; 8 * 1024 * 1024]);
                } else {
                    t.write(&vec![4u8; 100_000]);
                }
            }));
            Some(Box::new(p))
        })
        .unwrap();
        let mut reader = TcpStream::connect(addr).unwrap();
        let mut stuck = TcpStream::connect(addr).unwrap();
        reader.write_all(b"small").unwrap();
        stuck.write_all(b"big").unwrap();
        let mut log = Log::default();
        run_until(&mut lp, &mut log, |l| l.received.len() == 8);
        let closed = std::rc::Rc::new(std::cell::Cell::new(false));
        let c = closed.clone();
        let started = Instant::now();
        server.close(&mut lp, Duration::from_millis(300), move |_, _| c.set(true));
        let read_all = std::thread::spawn(move || {
            let mut got = Vec::new();
            reader.read_to_end(&mut got).unwrap();
            got.len()
        });
        run_until(&mut lp, &mut log, |_| closed.get());
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "waited for the grace"
        );
        assert_eq!(
            read_all.join().unwrap(),
            100_000,
            "in-flight data delivered"
        );
        assert!(server.is_closed());
        assert!(TcpStream::connect(addr).is_err(), "the listener is closed");
        assert_eq!(
            log.of("g")
                .iter()
                .filter(|e| matches!(e, Ev::Lost(_)))
                .count(),
            2
        );
        drop(stuck);
    }

    pub fn graceful_close_serves_the_connections_still_queued(kind: BackendKind) {
        let mut lp = new_loop(kind);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = stream::serve(&mut lp, listener, ServeOptions::default(), |_, _| {
            Some(Box::new(Probe::new("q")))
        })
        .unwrap();
        // Connected (the kernel completed the handshakes), never accepted.
        let clients: Vec<TcpStream> = (0..5)
            .map(|_| {
                let mut c = TcpStream::connect(addr).unwrap();
                c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                c.write_all(b"hi").unwrap();
                c.shutdown(std::net::Shutdown::Write).unwrap();
                c
            })
            .collect();
        let closed = std::rc::Rc::new(std::cell::Cell::new(false));
        let c = closed.clone();
        server.close(&mut lp, Duration::from_secs(5), move |_, _| c.set(true));
        let mut log = Log::default();
        run_until(&mut lp, &mut log, |_| closed.get());
        assert_eq!(server.connections_served(), 5, "every queued one accepted");
        assert_eq!(log.of("q").iter().filter(|e| **e == Ev::Made).count(), 5);
        for mut c in clients {
            let mut rest = Vec::new();
            // An orderly close, not the reset of a listener closed over
            // its queue.
            c.read_to_end(&mut rest).unwrap();
        }
        assert!(TcpStream::connect(addr).is_err(), "the listener is closed");
    }

    pub fn connect_succeeds_is_refused_and_times_out(kind: BackendKind) {
        let mut lp = new_loop(kind);
        // Succeeds: buffered writes go out once connected.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut p = Probe::new("ok");
        p.on_made = Some(Box::new(|t, _| t.write(b"!")));
        let id = stream::connect(&mut lp, listener.local_addr().unwrap(), None, p).unwrap();
        stream::send(&mut lp, id, b"early").unwrap();
        let (mut srv, _) = listener.accept().unwrap();
        srv.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut log = Log::default();
        run_until(&mut lp, &mut log, |l| l.of("ok").contains(&Ev::Made));
        let mut got = [0; 6];
        srv.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"early!");
        // Refused: nothing listens on a just-freed port, nor at a path.
        let free = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        stream::connect(&mut lp, free, None, Probe::new("refused")).unwrap();
        let path = std::env::temp_dir().join("muxloop-no-such-socket");
        stream::connect(&mut lp, path.as_path(), None, Probe::new("nopath")).unwrap();
        run_until(&mut lp, &mut log, |l| {
            !l.of("refused").is_empty() && !l.of("nopath").is_empty()
        });
        assert_eq!(
            log.of("refused"),
            vec![Ev::Failed(io::ErrorKind::ConnectionRefused)]
        );
        assert_eq!(log.of("nopath"), vec![Ev::Failed(io::ErrorKind::NotFound)]);
        // Timed out: a listener whose accept queue is full drops SYNs.
        if let Some(full) = full_listener() {
            let started = Instant::now();
            stream::connect(
                &mut lp,
                full.0,
                Some(Duration::from_millis(200)),
                Probe::new("slow"),
            )
            .unwrap();
            run_until(&mut lp, &mut log, |l| !l.of("slow").is_empty());
            assert_eq!(log.of("slow"), vec![Ev::Failed(io::ErrorKind::TimedOut)]);
            assert!(started.elapsed() >= Duration::from_millis(200));
        }
        assert_eq!(lp.source_count(), 1, "only the connected one is left");
    }
}

/// A listener with backlog 0 whose queue is filled, so further connects
/// hang; with the clients that fill it. `None` if it cannot be made.
fn full_listener() -> Option<(std::net::SocketAddr, TcpListener, Vec<TcpStream>)> {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    // SAFETY: listen(2) on a socket we own, with no memory involved.
    if unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&l), 0) } != 0 {
        return None;
    }
    let addr = l.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(100)) {
            Ok(s) => fillers.push(s),
            Err(_) => return Some((addr, l, fillers)),
        }
    }
    Some((addr, l, fillers))
}

/// A wrapper that counts its reads and writes, and answers `as_any` with
/// the socket it wraps (as a wrapper that wants `Transport::socket` to
/// reach the real socket might).
struct Counted {
    inner: UnixStream,
    calls: std::rc::Rc<std::cell::Cell<usize>>,
    shutdowns: std::rc::Rc<std::cell::Cell<usize>>,
    sends: std::rc::Rc<std::cell::Cell<usize>>,
}

impl std::os::fd::AsFd for Counted {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.inner.as_fd()
    }
}

impl stream::StreamSocket for Counted {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.calls.set(self.calls.get() + 1);
        self.inner.read(buf)
    }

    fn send_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.calls.set(self.calls.get() + 1);
        self.sends.set(self.sends.get() + 1);
        self.inner.write_vectored(bufs)
    }

    fn shutdown_write(&mut self) -> io::Result<()> {
        self.shutdowns.set(self.shutdowns.get() + 1);
        self.inner.shutdown(Shutdown::Write)
    }

    fn peer_addr(&self) -> io::Result<stream::Addr> {
        self.inner.peer_addr().map(stream::Addr::Unix)
    }

    fn local_addr(&self) -> io::Result<stream::Addr> {
        self.inner.local_addr().map(stream::Addr::Unix)
    }

    fn as_any(&self) -> &dyn std::any::Any {
        &self.inner
    }
}

/// The transport reads and writes std sockets with recv(2)/send(2)
/// directly, but a wrapper is always driven through its own methods, even
/// one whose `as_any` answers with a std socket.
#[test]
fn a_wrapper_socket_is_never_bypassed() {
    let (a, mut b) = conn_pair();
    let calls = std::rc::Rc::new(std::cell::Cell::new(0));
    let sock = Counted {
        inner: a,
        calls: calls.clone(),
        shutdowns: Default::default(),
        sends: Default::default(),
    };
    let mut lp = new_loop(BackendKind::platform_default());
    let mut p = Probe::new("w");
    p.echo = true;
    stream::attach(&mut lp, sock, p).unwrap();
    let mut log = Log::default();
    b.write_all(b"ping").unwrap();
    run_until(&mut lp, &mut log, |l| l.received.len() == 4);
    let mut got = [0; 4];
    b.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");
    // At least the read and the echo's write went through the wrapper.
    assert!(calls.get() >= 2, "the wrapper saw {} calls", calls.get());
}

per_backend!(
    callbacks_come_in_order_and_eof_closes_after_the_echo,
    writes_to_a_slow_reader_arrive_whole_and_in_order,
    watermarks_pause_above_high_and_resume_at_low_even_at_zero,
    invalid_watermarks_are_refused,
    abort_drops_the_buffer_and_closes_at_once,
    a_reset_reaches_connection_lost_as_an_error,
    close_after_an_unread_reset_ends_with_none_or_the_reset,
    a_close_after_the_peers_eof_needs_no_half_close,
    the_writes_of_one_callback_go_out_together,
    is_writing_paused_is_known_inside_the_callback,
    the_close_linger_bounds_the_wait_for_the_peers_eof,
    the_close_timeout_aborts_a_close_the_peer_does_not_read,
    half_open_keeps_writing_after_the_peers_eof,
    write_eof_half_closes_and_reading_goes_on,
    pause_reading_is_idempotent_and_loses_nothing,
    write_to_reaches_another_connection_with_its_flow_control,
    connection_timers_fire_and_die_with_the_connection,
    serve_tcp_v4_v6_and_unix,
    serve_caps_connections_and_the_factory_may_refuse,
    graceful_close_flushes_then_aborts_what_is_left,
    graceful_close_serves_the_connections_still_queued,
    connect_succeeds_is_refused_and_times_out,
);
