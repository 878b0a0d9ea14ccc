//! Every `unsafe` line of the crate: thin, checked wrappers around the raw
//! system calls the backends use, and the box the event loop runs
//! callbacks from ([`RunBox`]). Each wrapper turns a `-1` return into an
//! [`io::Error`] carrying `errno`, and owns descriptors through [`OwnedFd`]
//! so nothing leaks on an error path.

use std::cell::{Cell, UnsafeCell};
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::{self, NonNull};
use std::time::Duration;

/// Calls a libc function and turns `-1` into `io::Error::last_os_error()`.
macro_rules! syscall {
    ($fn:ident ( $($arg:expr),* $(,)? )) => {{
        // SAFETY: each call site documents why its arguments are valid.
        let res = unsafe { libc::$fn($($arg),*) };
        if res == -1 {
            Err(io::Error::last_os_error())
        } else {
            Ok(res)
        }
    }};
}

#[cfg(muxloop_epoll)]
mod epoll;
mod fd;
#[cfg(muxloop_kqueue)]
mod kqueue;
mod poll;
mod process;
mod run_box;
mod select;
mod signal;
mod socket;
mod time;
#[cfg(muxloop_uring)]
mod uring;
mod wake;

#[cfg(muxloop_epoll)]
pub(crate) use self::epoll::*;
pub(crate) use self::fd::*;
#[cfg(muxloop_kqueue)]
pub(crate) use self::kqueue::*;
pub(crate) use self::poll::*;
pub(crate) use self::process::*;
pub(crate) use self::run_box::*;
pub(crate) use self::select::*;
pub(crate) use self::signal::*;
pub(crate) use self::socket::*;
pub(crate) use self::time::*;
#[cfg(muxloop_uring)]
pub(crate) use self::uring::*;
pub(crate) use self::wake::*;

#[cfg(test)]
mod tests;
