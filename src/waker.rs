//! Cross-thread wake-ups for a loop blocked in `select`: an eventfd on
//! Linux, a self-pipe elsewhere. Wake-ups are coalesced: while one is
//! pending, further ones make no syscall.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::sys;

pub(crate) struct Waker {
    read: OwnedFd,
    /// The pipe's write end; `None` for an eventfd, which is both ends.
    write: Option<OwnedFd>,
    pending: AtomicBool,
}

impl Waker {
    pub(crate) fn new() -> io::Result<Waker> {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        let (read, write) = (sys::eventfd()?, None);
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        let (read, write) = {
            let (r, w) = sys::pipe()?;
            (r, Some(w))
        };
        Ok(Waker {
            read,
            write,
            pending: AtomicBool::new(false),
        })
    }

    /// The fd to register for reading.
    pub(crate) fn fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }

    /// Makes the fd readable, unless a wake-up is already pending.
    pub(crate) fn wake(&self) -> io::Result<()> {
        if self.pending.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let fd = self.write.as_ref().unwrap_or(&self.read).as_raw_fd();
        match sys::write(fd, &1u64.to_ne_bytes()[..self.unit()]) {
            Ok(_) => Ok(()),
            // Full: the fd is readable already, which is all we need.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => {
                self.pending.store(false, Ordering::Release);
                Err(e)
            }
        }
    }

    /// Empties the fd, then clears the pending state. Call before handling
    /// the work the wake-up announced.
    ///
    /// The order matters. Clearing first would let a `wake` slip in between
    /// (setting the flag and writing), have its write drained here, and
    /// leave the flag set with the fd empty: every later `wake` would then
    /// skip its write, and the loop would sleep through them. Draining
    /// first, a `wake` that sees the flag still set skipped its write, but
    /// its work was queued before the caller looks at the queue.
    pub(crate) fn reset(&self) {
        let mut buf = [0u8; 64];
        loop {
            match sys::read(self.read.as_raw_fd(), &mut buf) {
                Ok(n) if n > 0 && self.write.is_some() => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                _ => break,
            }
        }
        self.pending.store(false, Ordering::Release);
    }

    /// Bytes per write: an eventfd takes a u64, a pipe one byte.
    fn unit(&self) -> usize {
        if self.write.is_some() { 1 } else { 8 }
    }
}
