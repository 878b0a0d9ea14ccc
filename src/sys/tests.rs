//! Unit tests of the system-call wrappers.

use super::*;
use std::rc::Rc;

trait Count {
    fn bump(&mut self) -> u32;
}

/// Counts its calls, and its drops in `dropped`.
struct Counter {
    calls: u32,
    dropped: Rc<Cell<u32>>,
}

impl Count for Counter {
    fn bump(&mut self) -> u32 {
        self.calls += 1;
        self.calls
    }
}

impl Drop for Counter {
    fn drop(&mut self) {
        self.dropped.set(self.dropped.get() + 1);
    }
}

fn counter() -> (RunBox<dyn Count>, Rc<Cell<u32>>) {
    let dropped = Rc::new(Cell::new(0));
    let cell: Box<RunCell<dyn Count>> = RunCell::boxed(Counter {
        calls: 0,
        dropped: dropped.clone(),
    });
    (RunBox::new(cell), dropped)
}

#[test]
fn a_run_box_refuses_its_value_while_it_runs() {
    let (mut b, dropped) = counter();
    assert_eq!(b.get_mut().map(|c| c.bump()), Some(1));
    let mut run = b.run().expect("not running");
    assert!(b.is_running());
    assert!(b.get().is_none());
    assert!(b.get_mut().is_none());
    assert!(b.run().is_none(), "one run at a time");
    assert_eq!(run.get_mut().bump(), 2);
    drop(run);
    assert!(!b.is_running());
    assert_eq!(b.get_mut().map(|c| c.bump()), Some(3));
    drop(b);
    assert_eq!(dropped.get(), 1);
}

#[test]
fn a_run_box_dropped_during_a_run_is_freed_when_the_run_ends() {
    let (mut b, dropped) = counter();
    let mut run = b.run().expect("not running");
    drop(b);
    assert_eq!(dropped.get(), 0, "the value outlives its box while it runs");
    assert_eq!(run.get_mut().bump(), 1);
    drop(run);
    assert_eq!(dropped.get(), 1);
}

#[test]
fn timeouts_round_up_to_the_millisecond_and_saturate() {
    let ms = |nanos: u64| timeout_ms(Some(Duration::from_nanos(nanos)));
    assert_eq!(timeout_ms(None), -1);
    assert_eq!(ms(0), 0);
    assert_eq!(ms(1), 1);
    assert_eq!(ms(999_999), 1);
    assert_eq!(ms(1_000_000), 1);
    assert_eq!(ms(1_000_001), 2);
    assert_eq!(ms(1_500_000_000), 1_500);
    assert_eq!(ms(2_000_000_000_000), 2_000_000);
    let max = libc::c_int::MAX;
    let secs = max as u64 / 1_000;
    assert_eq!(
        timeout_ms(Some(Duration::from_secs(secs))),
        (secs * 1_000) as libc::c_int
    );
    assert_eq!(timeout_ms(Some(Duration::new(secs, 999_999_999))), max);
    assert_eq!(timeout_ms(Some(Duration::from_secs(secs + 1))), max);
    assert_eq!(timeout_ms(Some(Duration::MAX)), max);
}

#[cfg(any(target_os = "linux", target_os = "android"))]
#[test]
fn a_refusing_listener_drops_new_handshakes_and_keeps_its_queue() {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let queued = TcpStream::connect(addr).unwrap();
    assert!(refuse_new_connections(listener.as_raw_fd()).unwrap());
    // A new connection does not complete: its SYN is dropped.
    let refused = std::thread::spawn(move || {
        TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(300)).is_err()
    });
    assert!(refused.join().unwrap(), "a SYN got through the filter");
    // The one queued before is still there, and carries data.
    let (mut accepted, _) = listener.accept().unwrap();
    (&queued).write_all(b"x").unwrap();
    let mut b = [0; 1];
    accepted.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"x");
}

#[test]
fn a_reuse_port_listener_binds_beside_another() {
    let Some(option) = balanced_reuseport_option() else {
        return;
    };
    let any = "127.0.0.1:0".parse().unwrap();
    let first = tcp_listener(&any, Some(option), 128).unwrap();
    let addr = first.local_addr().unwrap();
    let second = tcp_listener(&addr, Some(option), 128).unwrap();
    assert_eq!(second.local_addr().unwrap(), addr);
    // Without the option the port is taken.
    let e = tcp_listener(&addr, None, 128).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse, "{e}");
}
