//! Nothing the event loop allocates outlives it: with a counting allocator,
//! a loop that ran callbacks of every kind, dropped a source from inside its
//! own callback, paused and resumed one — or served and made a stream
//! connection — and was then dropped gives back every byte, on every
//! backend.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use muxloop::stream::{self, Protocol, ServeOptions, Transport};
use muxloop::{BackendKind, EventLoop, Interest, PostAction};

/// Counts the bytes live on each thread (the test allocates and frees on
/// one), on top of the system allocator.
struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
}

fn add_live(bytes: isize) {
    // `try_with`: no counting while the thread's locals are torn down.
    let _ = LIVE.try_with(|live| live.set(live.get() + bytes));
}

// SAFETY: every call is forwarded to the system allocator unchanged; the
// counter is a thread-local `Cell` and allocates nothing.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is `System`'s.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            add_live(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        add_live(-(layout.size() as isize));
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as above.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            add_live(new_size as isize - layout.size() as isize);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live() -> isize {
    LIVE.with(Cell::get)
}

fn pair() -> (UnixStream, UnixStream) {
    let (a, b) = UnixStream::pair().expect("socketpair");
    a.set_nonblocking(true).expect("nonblocking");
    (a, b)
}

fn drain(sock: &mut UnixStream) {
    let mut buf = [0; 64];
    while matches!(sock.read(&mut buf), Ok(n) if n > 0) {}
}

/// A loop put through its paces, then dropped.
fn exercise(kind: BackendKind) {
    let mut lp = EventLoop::<u32>::with_backend(kind).expect("event loop");
    let (a, mut pa) = pair();
    let (b, mut pb) = pair();
    let (c, mut pc) = pair();
    let kept = lp
        .add(a, Interest::READABLE, |_, sock, _, n| {
            drain(sock);
            *n += 1;
            PostAction::Continue
        })
        .expect("add");
    // Drops itself from its own callback: freed when the callback returns.
    lp.add(b, Interest::READABLE, |lp, sock, ev, n| {
        drain(sock);
        lp.discard(ev.id()).expect("discard");
        *n += 1;
        PostAction::Continue
    })
    .expect("add");
    // Removed by its return value.
    lp.add(c, Interest::READABLE, |_, _, _, n| {
        *n += 1;
        PostAction::Remove
    })
    .expect("add");
    lp.call_later(Duration::from_millis(1), |_, n| *n += 1);
    lp.call_soon(|_, n| *n += 1);
    let _idle = lp.call_later(Duration::from_secs(60), |_, _| {});
    for peer in [&mut pa, &mut pb, &mut pc] {
        peer.write_all(b"x").expect("write");
    }
    let mut n = 0;
    for _ in 0..20 {
        lp.run_once(Some(Duration::from_millis(5)), &mut n)
            .expect("run_once");
        if n >= 5 {
            break;
        }
    }
    assert!(n >= 5, "every callback ran: {n}");
    let paused = lp.pause(kept).expect("pause");
    let kept = lp.resume(paused, Interest::READABLE).expect("resume");
    assert!(lp.with_source(kept, |_, _| ()).is_some());
    lp.run_once(Some(Duration::ZERO), &mut n).expect("run_once");
    drop(lp);
}

/// Echoes.
struct Echo;

impl Protocol<Seen> for Echo {
    fn data_received(&mut self, t: &mut Transport<'_, Seen>, data: &[u8], _: &mut Seen) {
        t.write(data);
    }
}

/// Sends a greeting, closes once it is echoed.
struct Greeter;

impl Protocol<Seen> for Greeter {
    fn connection_made(&mut self, t: &mut Transport<'_, Seen>, _: &mut Seen) {
        t.write(b"hello");
    }

    fn data_received(&mut self, t: &mut Transport<'_, Seen>, data: &[u8], seen: &mut Seen) {
        seen.echoed.extend_from_slice(data);
        if seen.echoed.len() >= 5 {
            t.close();
        }
    }

    fn connection_lost(
        &mut self,
        _: &mut Transport<'_, Seen>,
        _: Option<std::io::Error>,
        seen: &mut Seen,
    ) {
        seen.lost += 1;
    }
}

#[derive(Default)]
struct Seen {
    echoed: Vec<u8>,
    lost: u32,
}

/// A server and a client on loopback, one exchange, the server closed, the
/// loop dropped.
fn exercise_streams(kind: BackendKind) {
    let mut lp = EventLoop::<Seen>::with_backend(kind).expect("event loop");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    let server = stream::serve(&mut lp, listener, ServeOptions::default(), |_, _| {
        Some(Box::new(Echo))
    })
    .expect("serve");
    stream::connect(&mut lp, addr, Some(Duration::from_secs(5)), Greeter).expect("connect");
    let mut seen = Seen::default();
    for _ in 0..200 {
        lp.run_once(Some(Duration::from_millis(10)), &mut seen)
            .expect("run_once");
        if seen.lost == 1 && server.connections_served() == 1 && server.connection_count() == 0 {
            break;
        }
    }
    assert_eq!(seen.echoed, b"hello");
    assert_eq!(seen.lost, 1);
    server.close(&mut lp, Duration::ZERO, |_, _| {});
    for _ in 0..10 {
        lp.run_once(Some(Duration::from_millis(1)), &mut seen)
            .expect("run_once");
    }
    drop(server);
    drop(lp);
}

/// Runs `exercise` on every backend, once to warm up (whatever is made
/// once per process — the backend probe, the fork hook, the stream layer's
/// read buffer — is not the loop's), then twice more, counting.
fn gives_back_every_byte(exercise: fn(BackendKind)) {
    for &kind in BackendKind::available() {
        exercise(kind);
        let before = live();
        exercise(kind);
        exercise(kind);
        let after = live();
        assert_eq!(
            after,
            before,
            "{kind}: {} bytes outlived their loops",
            after - before
        );
    }
}

#[test]
fn a_dropped_event_loop_gives_back_every_byte() {
    gives_back_every_byte(exercise);
}

#[test]
fn a_dropped_event_loop_with_streams_gives_back_every_byte() {
    gives_back_every_byte(exercise_streams);
}
