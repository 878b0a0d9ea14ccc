//! The kernel side: one small file per readiness interface, behind one trait.
//!
//! A backend only translates between muxloop's types and the kernel's. All
//! the bookkeeping — keys, user data, duplicate checks, rollback, EINTR,
//! timeouts, masking, merging, stale-token protection — lives once in
//! [`Selector`](crate::Selector).

use std::fmt;
use std::io;
use std::os::fd::RawFd;
use std::str::FromStr;
use std::time::Duration;

use crate::{Interest, Ready, Token};

#[cfg(muxloop_epoll)]
mod epoll;
#[cfg(any(muxloop_epoll, muxloop_kqueue))]
mod host_fd;
#[cfg(all(not(muxloop_kqueue), any(test, feature = "kqueue-model")))]
mod kevent_model;
#[cfg(any(muxloop_kqueue, test, feature = "kqueue-model"))]
mod kqueue;
#[cfg(feature = "mio")]
mod mio_poll;
mod poll;
mod select;
#[cfg(muxloop_uring)]
mod uring;

/// The contract between a [`Selector`](crate::Selector) and a kernel
/// readiness interface.
///
/// The selector guarantees that it calls [`add`](Backend::add) only for an
/// fd that is not currently added, [`modify`](Backend::modify) and
/// [`delete`](Backend::delete) only for one that is, always with the token
/// it was added with (a registration keeps its token for as long as it is
/// added) and its current interest, and that `events` is empty when
/// [`wait`](Backend::wait) is called.
///
/// A backend must:
///
/// * be **level-triggered**: an fd that is still ready is reported again by
///   the next `wait`, however it is implemented underneath;
/// * report error and hang-up conditions as [`Ready::ERROR`] /
///   [`Ready::HUP`] (the peer's half-close) / [`Ready::HUP`] with
///   [`Ready::WRITE_CLOSED`] (no more writing either) — the selector turns
///   them into readable/writable and masks them by interest —, and never
///   report a direction the fd was not added for unless one of those is
///   set;
/// * leave the kernel unchanged when `add` or `modify` fails (roll back any
///   partial change it made);
/// * report every ready fd of one wait in one call (no truncation), though it
///   may report one fd in several entries (the selector merges them);
/// * wait at least `timeout` unless an event arrives (`None` is forever,
///   zero never blocks) — rounding a sub-resolution timeout *up*; returning
///   early with no events, or with `ErrorKind::Interrupted`, is allowed: the
///   selector retries with the remaining time.
///
/// A `delete` whose fd the kernel already dropped (closed, or closed and
/// reused) may fail with `EBADF` or `ENOENT`; the selector tolerates both.
/// A backend may defer a delete to the start of the next `wait`, and turn a
/// delete and re-add of the same fd in between into one kernel update, as
/// long as it never leaves a re-added fd unwatched.
///
/// The conformance suite in `tests/conformance.rs` checks all of this; see
/// `docs/writing-a-backend.md`.
pub trait Backend: Send {
    /// The name users pick the backend by (`"epoll"`, …).
    fn name(&self) -> &'static str;

    /// Starts watching `fd` for `interest`; events carry `token`.
    fn add(&mut self, fd: RawFd, token: Token, interest: Interest) -> io::Result<()>;

    /// Changes the interest of an added fd from `old` to `new`.
    fn modify(&mut self, fd: RawFd, token: Token, old: Interest, new: Interest) -> io::Result<()>;

    /// Stops watching `fd`, which was added with `interest`.
    fn delete(&mut self, fd: RawFd, token: Token, interest: Interest) -> io::Result<()>;

    /// As [`delete`](Backend::delete), for an fd its owner closes right
    /// after: a backend that defers deletes applies this one now, while
    /// the number still names the file (after the close a deferred delete
    /// fails, and where a duplicate keeps the file open it can no longer
    /// reach the registration). The default is `delete`.
    fn delete_closing(&mut self, fd: RawFd, token: Token, interest: Interest) -> io::Result<()> {
        self.delete(fd, token, interest)
    }

    /// Waits for readiness and appends `(token, ready)` pairs to `events`.
    fn wait(
        &mut self,
        events: &mut Vec<(Token, Ready)>,
        timeout: Option<Duration>,
    ) -> io::Result<()>;

    /// The clock this backend keeps, if it keeps one (a simulation's
    /// [`VirtualClock`](crate::VirtualClock)): the selector and the loop
    /// over it then read all time from it. `None`, the default: the
    /// system's monotonic clock.
    fn virtual_clock(&self) -> Option<crate::VirtualClock> {
        None
    }

    /// Whether `wait` reports each fd at most once per call (true for
    /// select, poll and epoll; kqueue reports read and write apart). The
    /// default, `false`, is always safe: the selector then merges records.
    fn reports_each_fd_once(&self) -> bool {
        false
    }

    /// Called when `wait` reported a token that belongs to no registration.
    ///
    /// That happens when an fd was closed while registered but its open
    /// file lives on through a duplicate: epoll keeps watching it, and no
    /// `delete` can reach it any more (epoll(7), "Questions and answers",
    /// Q6). Being level-triggered, it would wake every wait from now on.
    /// Backends where this can happen re-create their kernel object and add
    /// the `live` registrations again; the default does nothing.
    ///
    /// A backend with a [kernel fd](Backend::fd) keeps its number.
    fn purge(
        &mut self,
        live: &mut dyn Iterator<Item = (RawFd, Token, Interest)>,
    ) -> io::Result<()> {
        let _ = live;
        Ok(())
    }

    /// The fd of the kernel object, for a program that drives the selector
    /// from its own loop: it must become readable whenever a `wait` would
    /// report something, and keep its number for the backend's whole life
    /// (through [`purge`](Backend::purge) and
    /// [`after_fork`](Backend::after_fork)). `None`, the default, for
    /// backends without one (select, poll).
    fn fd(&self) -> Option<RawFd> {
        None
    }

    /// Applies changes the backend deferred (deletes batched until the
    /// next wait, re-arming of edge-triggered registrations), so that the
    /// [kernel fd](Backend::fd) reflects exactly the added fds and their
    /// readiness when no `wait` follows at once. The default does nothing.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    /// Whether [`flush`](Backend::flush) has anything to apply. A host
    /// polling the [kernel fd](Backend::fd) must not sleep while it does.
    /// The default, `false`, is right for backends that apply every change
    /// at once.
    fn has_deferred(&self) -> bool {
        false
    }

    /// In a child process after `fork`: stops sharing the kernel object
    /// with the parent (a new one, under the same fd number) and adds the
    /// `live` registrations to it. Nothing may reach the parent's object.
    /// The default calls [`purge`](Backend::purge), right for backends
    /// without a kernel object and for those whose `purge` re-creates it.
    fn after_fork(
        &mut self,
        live: &mut dyn Iterator<Item = (RawFd, Token, Interest)>,
    ) -> io::Result<()> {
        self.purge(live)
    }
}

/// The built-in backends, chosen at run time by name.
///
/// # Examples
///
/// ```
/// use muxloop::BackendKind;
///
/// let kind: BackendKind = "poll".parse().unwrap();
/// assert_eq!(kind, BackendKind::Poll);
/// assert_eq!(kind.name(), "poll");
/// assert!(BackendKind::available().contains(&BackendKind::platform_default()));
/// assert!("nope".parse::<BackendKind>().is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BackendKind {
    /// select(2): everywhere; O(highest fd) per wait. On Linux any fd
    /// (the set grows with the highest fd registered); elsewhere fds below
    /// `FD_SETSIZE` (1024) only, a higher one is refused with
    /// `InvalidInput`.
    Select,
    /// poll(2): everywhere; O(registered fds) per wait.
    Poll,
    /// epoll(7): Linux and Android; O(ready fds) per wait.
    Epoll,
    /// kqueue(2): macOS, iOS and the BSDs; O(ready fds) per wait.
    Kqueue,
    /// The `mio` crate's `Poll` (epoll or kqueue, edge-triggered underneath,
    /// made level-triggered by re-arming every reported fd). Needs the `mio`
    /// cargo feature (on by default); without it the backend is not
    /// available.
    Mio,
    /// io_uring (Linux), for readiness: one-shot poll requests, every
    /// change and re-arm submitted by the `io_uring_enter` that waits — one
    /// system call per wait. Needs the `uring` cargo feature (on by
    /// default) and a kernel that lets this process make a ring (5.11+, not
    /// blocked by seccomp or `kernel.io_uring_disabled`): available only
    /// where a probe ring works, never the default.
    Uring,
}

/// The environment variable that overrides the default backend.
pub const BACKEND_ENV: &str = "MUXLOOP_BACKEND";

/// Set to `0` to switch the uring backend off for the process (where
/// io_uring misbehaves: under valgrind, or a sandbox that lets rings be
/// made but not used): it is then neither available nor creatable.
pub const URING_ENV: &str = "MUXLOOP_URING";

const ALL: [BackendKind; 6] = [
    BackendKind::Select,
    BackendKind::Poll,
    BackendKind::Epoll,
    BackendKind::Uring,
    BackendKind::Kqueue,
    BackendKind::Mio,
];

/// The backends this build offers, before the run-time probes.
const BUILT: &[BackendKind] = &[
    BackendKind::Select,
    BackendKind::Poll,
    #[cfg(muxloop_epoll)]
    BackendKind::Epoll,
    #[cfg(muxloop_uring)]
    BackendKind::Uring,
    #[cfg(any(muxloop_kqueue, feature = "kqueue-model"))]
    BackendKind::Kqueue,
    #[cfg(feature = "mio")]
    BackendKind::Mio,
];

/// What this process can use: what is built, less io_uring if no ring can
/// be made here. Probed once.
fn available_here() -> &'static [BackendKind] {
    static AVAILABLE: std::sync::OnceLock<Vec<BackendKind>> = std::sync::OnceLock::new();
    AVAILABLE.get_or_init(|| {
        BUILT
            .iter()
            .copied()
            .filter(|&kind| match kind {
                #[cfg(muxloop_uring)]
                BackendKind::Uring => match uring::probe() {
                    Ok(()) => true,
                    Err(e) => {
                        log::debug!("backend=uring not available: {e}");
                        false
                    }
                },
                _ => true,
            })
            .collect()
    })
}

impl BackendKind {
    /// Every backend muxloop knows, available here or not.
    pub fn all() -> &'static [BackendKind] {
        &ALL
    }

    /// The backends this platform offers, in order of increasing
    /// scalability (mio last). `Uring` is listed only if this process can
    /// make an io_uring ring (probed once).
    pub fn available() -> &'static [BackendKind] {
        available_here()
    }

    /// Whether this platform offers the backend.
    pub fn is_available(self) -> bool {
        available_here().contains(&self)
    }

    /// epoll on Linux, kqueue on macOS and the BSDs, poll elsewhere.
    pub fn platform_default() -> BackendKind {
        if cfg!(muxloop_epoll) {
            BackendKind::Epoll
        } else if cfg!(muxloop_kqueue) {
            BackendKind::Kqueue
        } else {
            BackendKind::Poll
        }
    }

    /// The backend named by `MUXLOOP_BACKEND`, or the platform default when
    /// the variable is unset or empty.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for an unknown name and `Unsupported` for a backend
    /// this platform lacks; the message lists what is available. There is no
    /// silent fallback.
    pub fn from_env() -> io::Result<BackendKind> {
        let value = std::env::var_os(BACKEND_ENV);
        Self::from_env_value(value.as_ref().map(|v| v.to_string_lossy()).as_deref())
    }

    fn from_env_value(value: Option<&str>) -> io::Result<BackendKind> {
        match value.map(str::trim) {
            None | Some("") => Ok(Self::platform_default()),
            Some(name) => Self::checked(name)
                .map_err(|e| io::Error::new(e.kind(), format!("{BACKEND_ENV}={name}: {e}"))),
        }
    }

    /// Parses `name` and checks that this platform offers it.
    fn checked(name: &str) -> io::Result<BackendKind> {
        let kind: BackendKind = name.parse()?;
        if kind.is_available() {
            Ok(kind)
        } else {
            // Built in, but this process cannot have it: the cause, as
            // `create` gives it.
            #[cfg(muxloop_uring)]
            if kind == BackendKind::Uring {
                uring::probe()?;
            }
            Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "backend {kind} is not available on this platform (available: {})",
                    available_list()
                ),
            ))
        }
    }

    /// The name: `"select"`, `"poll"`, `"epoll"`, `"uring"`, `"kqueue"` or
    /// `"mio"`.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Select => "select",
            BackendKind::Poll => "poll",
            BackendKind::Epoll => "epoll",
            BackendKind::Uring => "uring",
            BackendKind::Kqueue => "kqueue",
            BackendKind::Mio => "mio",
        }
    }

    /// Opens a new instance of this backend.
    ///
    /// # Errors
    ///
    /// `Unsupported` if the platform lacks the backend; the kernel's error
    /// if it refuses to create the instance (e.g. `EMFILE`).
    pub fn create(self) -> io::Result<Box<dyn Backend>> {
        let backend: Box<dyn Backend> = match self {
            BackendKind::Select => Box::new(select::SelectBackend::new()),
            BackendKind::Poll => Box::new(poll::PollBackend::new()),
            #[cfg(muxloop_epoll)]
            BackendKind::Epoll => Box::new(epoll::EpollBackend::new()?),
            #[cfg(muxloop_kqueue)]
            BackendKind::Kqueue => Box::new(kqueue::KqueueBackend::new()?),
            // The kqueue backend's logic on the model of kevent(2).
            #[cfg(all(not(muxloop_kqueue), feature = "kqueue-model"))]
            BackendKind::Kqueue => {
                Box::new(kqueue::KqueueBackend::on(kevent_model::KeventModel::new()))
            }
            #[cfg(feature = "mio")]
            BackendKind::Mio => Box::new(mio_poll::MioBackend::new()?),
            // Created even where the probe failed: the error names the cause.
            #[cfg(muxloop_uring)]
            BackendKind::Uring => Box::new(uring::UringBackend::new()?),
            #[allow(unreachable_patterns)]
            other => return Err(Self::checked(other.name()).unwrap_err()),
        };
        log::debug!("backend=created name={}", backend.name());
        Ok(backend)
    }
}

/// The kernel's refusal of `fd`, with the cause named where `EPERM` alone
/// would not tell it: epoll (and mio on it) cannot watch files that do not
/// support polling.
#[cfg_attr(not(any(muxloop_epoll, feature = "mio")), allow(dead_code))]
pub(crate) fn not_pollable(backend: &str, fd: RawFd, e: io::Error) -> io::Error {
    if e.raw_os_error() != Some(libc::EPERM) {
        return e;
    }
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!(
            "the {backend} backend cannot watch fd {fd}: it does not support polling \
             (a regular file, a directory, /dev/null?); the select and poll backends \
             accept such fds and report them always ready ({e})"
        ),
    )
}

fn available_list() -> String {
    let names: Vec<&str> = available_here().iter().map(|k| k.name()).collect();
    names.join(", ")
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for BackendKind {
    type Err = io::Error;

    /// Parses a backend name, case-insensitively.
    fn from_str(name: &str) -> io::Result<BackendKind> {
        ALL.iter()
            .copied()
            .find(|k| k.name().eq_ignore_ascii_case(name.trim()))
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("unknown backend {name:?} (available: {})", available_list()),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for &kind in BackendKind::all() {
            assert_eq!(kind.name().parse::<BackendKind>().unwrap(), kind);
            assert_eq!(kind.to_string(), kind.name());
        }
        assert_eq!("EPOLL".parse::<BackendKind>().unwrap(), BackendKind::Epoll);
    }

    #[test]
    fn unknown_name_is_invalid_input_listing_available() {
        let err = "kpoll".parse::<BackendKind>().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("poll"), "{err}");
    }

    #[test]
    fn env_value_selects_or_defaults() {
        assert_eq!(
            BackendKind::from_env_value(None).unwrap(),
            BackendKind::platform_default()
        );
        assert_eq!(
            BackendKind::from_env_value(Some("")).unwrap(),
            BackendKind::platform_default()
        );
        assert_eq!(
            BackendKind::from_env_value(Some("poll")).unwrap(),
            BackendKind::Poll
        );
        let err = BackendKind::from_env_value(Some("bogus")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(
            err.to_string().starts_with("MUXLOOP_BACKEND=bogus"),
            "{err}"
        );
    }

    #[test]
    fn unavailable_backend_is_unsupported() {
        for &kind in BackendKind::all() {
            if !kind.is_available() {
                let err = BackendKind::from_env_value(Some(kind.name())).unwrap_err();
                assert_eq!(err.kind(), io::ErrorKind::Unsupported);
                assert!(kind.create().is_err());
            }
        }
    }

    #[test]
    fn every_available_backend_can_be_created() {
        for &kind in BackendKind::available() {
            let b = kind.create().unwrap();
            assert_eq!(b.name(), kind.name());
        }
    }
}
