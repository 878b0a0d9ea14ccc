//! What muxloop logs for users: a blocking fd registered with a selector or
//! a loop is pointed out at debug level.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::Mutex;

use muxloop::{BackendKind, Interest, Selector};

static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::Level::Debug
    }

    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            LINES.lock().unwrap().push(r.args().to_string());
        }
    }

    fn flush(&self) {}
}

#[test]
fn registering_a_blocking_fd_is_logged_at_debug_level() {
    log::set_logger(&Capture).unwrap();
    log::set_max_level(log::LevelFilter::Debug);
    for &kind in BackendKind::available() {
        let (blocking, _a) = UnixStream::pair().unwrap();
        let (nonblocking, _b) = UnixStream::pair().unwrap();
        nonblocking.set_nonblocking(true).unwrap();
        let mut sel = Selector::with_backend(kind).unwrap();
        LINES.lock().unwrap().clear();
        sel.register(nonblocking.as_raw_fd(), Interest::READABLE, ())
            .unwrap();
        let about = |fd: i32| {
            let needle = format!("fd={fd} is in blocking mode");
            LINES.lock().unwrap().iter().any(|l| l.contains(&needle))
        };
        assert!(!about(nonblocking.as_raw_fd()), "{kind}");
        sel.register(blocking.as_raw_fd(), Interest::READABLE, ())
            .unwrap();
        assert!(
            about(blocking.as_raw_fd()),
            "{kind}: {:?}",
            LINES.lock().unwrap()
        );
    }
}
