//! Child processes: a callback with the exit status when a child exits,
//! the child reaped (no zombie).
//!
//! Two mechanisms, chosen per child. On Linux (5.3+), a pidfd: an fd that
//! becomes readable when the process exits, watched as an ordinary source;
//! a child that exited before it is watched still has its pid (it is a
//! zombie), so its pidfd is readable at once. Elsewhere, or where the
//! kernel lacks pidfds, SIGCHLD through the loop's signal pipe, on which
//! every waiting child is polled with `waitpid(WNOHANG)`; the first poll
//! runs on the next iteration after the child is added, which covers a
//! child that exited before the handler was installed. SIGCHLD, like any
//! signal, belongs to one loop at a time: the loop holds it while it has
//! children waiting, and other loops are refused meanwhile
//! (`AlreadyExists`); pidfds have no such limit. Setting
//! `MUXLOOP_CHILD_WATCH=sigchld` picks the second on Linux too (to test
//! it).

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ExitStatus};

use super::EventLoop;
use crate::sys;
#[cfg(any(target_os = "linux", target_os = "android"))]
use crate::{Interest, PostAction};

/// The callback of a watched child.
pub(super) type ChildCallback<S> =
    Box<dyn FnOnce(&mut EventLoop<S>, &mut S, io::Result<ExitStatus>)>;

/// A process to reap: a `std` child (which then records its status) or a
/// bare pid.
enum Process {
    Std(Child),
    Pid(libc::pid_t),
}

impl Process {
    fn pid(&self) -> libc::pid_t {
        match self {
            Process::Std(child) => child.id() as libc::pid_t,
            Process::Pid(pid) => *pid,
        }
    }

    /// Its exit status if it exited (reaping it), `None` while it runs.
    fn try_reap(&mut self) -> io::Result<Option<ExitStatus>> {
        match self {
            Process::Std(child) => child.try_wait(),
            Process::Pid(pid) => Ok(sys::try_reap(*pid)?.map(ExitStatus::from_raw)),
        }
    }
}

/// A child waiting for SIGCHLD.
pub(super) struct Waiting<S> {
    process: Process,
    callback: ChildCallback<S>,
}

impl<S: 'static> EventLoop<S> {
    /// Runs `callback` with `child`'s exit status once it exits, and reaps
    /// it. Returns its pid. The loop owns the child meanwhile (take its
    /// stdin/stdout/stderr out first to use them, e.g. as sources). A child
    /// that has already exited is reported on the next iteration. Many
    /// children may be watched at once.
    ///
    /// # Errors
    ///
    /// `NotFound` if the process was already reaped; the kernel refusing
    /// a pidfd (e.g. out of fds), or the SIGCHLD handler. Where children
    /// are watched through SIGCHLD (no pidfds: not Linux, or a kernel
    /// before 5.3), `AlreadyExists` while another loop of the process
    /// watches children, or handles SIGCHLD itself.
    ///
    /// # Examples
    ///
    /// ```
    /// use muxloop::EventLoop;
    /// use std::process::{Command, ExitStatus};
    /// use std::time::Duration;
    ///
    /// let mut lp = EventLoop::<Option<ExitStatus>>::new()?;
    /// let child = Command::new("sh").args(["-c", "exit 3"]).spawn()?;
    /// lp.add_child(child, |lp, status, res| {
    ///     *status = Some(res.expect("reaped"));
    ///     lp.stop();
    /// })?;
    /// lp.call_later(Duration::from_secs(10), |lp, _| lp.stop()); // a safety net
    /// let mut status = None;
    /// lp.run(&mut status)?;
    /// assert_eq!(status.and_then(|s| s.code()), Some(3));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn add_child<F>(&mut self, child: Child, callback: F) -> io::Result<u32>
    where
        F: FnOnce(&mut EventLoop<S>, &mut S, io::Result<ExitStatus>) + 'static,
    {
        let pid = child.id();
        self.watch(Process::Std(child), Box::new(callback))?;
        Ok(pid)
    }

    /// [`add_child`](EventLoop::add_child) for a process known by its pid
    /// (one forked without `std::process`). It must be a child of this
    /// process that nothing else reaps.
    ///
    /// # Errors
    ///
    /// As [`add_child`](EventLoop::add_child); `InvalidInput` for a pid
    /// that cannot be a child (0, or above `i32::MAX`).
    pub fn add_child_pid<F>(&mut self, pid: u32, callback: F) -> io::Result<()>
    where
        F: FnOnce(&mut EventLoop<S>, &mut S, io::Result<ExitStatus>) + 'static,
    {
        let pid = libc::pid_t::try_from(pid)
            .ok()
            .filter(|&p| p > 0)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("pid {pid} cannot name a child process"),
                )
            })?;
        self.watch(Process::Pid(pid), Box::new(callback))
    }

    fn watch(&mut self, process: Process, callback: ChildCallback<S>) -> io::Result<()> {
        self.check_process()?;
        #[cfg(any(target_os = "linux", target_os = "android"))]
        if std::env::var_os("MUXLOOP_CHILD_WATCH").is_none_or(|v| v != "sigchld") {
            match sys::pidfd_open(process.pid()) {
                Ok(pidfd) => return self.watch_pidfd(pidfd, process, callback),
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {
                    return Err(reaped(process.pid()));
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
                    log::debug!("loop=child pid={} no pidfd, using SIGCHLD", process.pid());
                }
                Err(e) => return Err(e),
            }
        }
        self.watch_sigchld(process, callback)
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn watch_pidfd(
        &mut self,
        pidfd: std::os::fd::OwnedFd,
        mut process: Process,
        callback: ChildCallback<S>,
    ) -> io::Result<()> {
        let pid = process.pid();
        let mut callback = Some(callback);
        self.add(pidfd, Interest::READABLE, move |lp, _, _, state| {
            let res = match process.try_reap() {
                Ok(None) => return PostAction::Continue,
                Ok(Some(status)) => Ok(status),
                Err(e) => Err(e),
            };
            log::debug!("loop=child pid={pid} exited: {res:?}");
            lp.unlisted_children -= 1;
            if let Some(cb) = callback.take() {
                cb(lp, state, res);
            }
            PostAction::Remove
        })?;
        self.unlisted_children += 1;
        log::debug!("loop=child pid={pid} watched by pidfd");
        Ok(())
    }

    fn watch_sigchld(
        &mut self,
        mut process: Process,
        callback: ChildCallback<S>,
    ) -> io::Result<()> {
        let pid = process.pid();
        match process.try_reap() {
            Ok(None) => {}
            // Exited already: reaped now, reported on the next iteration.
            Ok(Some(status)) => {
                log::debug!("loop=child pid={pid} exited before it was watched: {status:?}");
                // Watched (and counted) until its callback has run.
                self.unlisted_children += 1;
                self.call_soon(move |lp, state| {
                    lp.unlisted_children -= 1;
                    callback(lp, state, Ok(status));
                });
                return Ok(());
            }
            Err(e) if e.raw_os_error() == Some(libc::ECHILD) => return Err(reaped(pid)),
            Err(e) => return Err(e),
        }
        self.ensure_signals()?;
        self.signals
            .as_mut()
            .expect("made above")
            .add_internal(libc::SIGCHLD)?;
        self.children.push(Waiting { process, callback });
        // It may have exited before the handler was installed: look on the
        // next iteration whatever the signal says.
        self.call_soon(|lp, state| lp.reap_children(state));
        log::debug!("loop=child pid={pid} watched by SIGCHLD");
        Ok(())
    }
}

impl<S> EventLoop<S> {
    /// How many children are watched and not yet reported.
    pub fn child_count(&self) -> usize {
        self.children.len() + self.unlisted_children
    }

    /// Polls every child waiting for SIGCHLD, and reports those that
    /// exited (or cannot be waited for any more).
    pub(super) fn reap_children(&mut self, state: &mut S) {
        let mut done = Vec::new();
        let mut i = 0;
        while i < self.children.len() {
            match self.children[i].process.try_reap() {
                Ok(None) => i += 1,
                res => {
                    let child = self.children.swap_remove(i);
                    done.push((child, res.map(|s| s.expect("matched Some"))));
                }
            }
        }
        if self.children.is_empty() {
            // Let SIGCHLD go: another loop of the process may want it.
            if let Some(signals) = self.signals.as_mut() {
                if let Err(e) = signals.remove_internal(libc::SIGCHLD) {
                    log::warn!("loop=child SIGCHLD not restored: {e}");
                }
            }
        }
        for (child, res) in done {
            log::debug!("loop=child pid={} exited: {res:?}", child.process.pid());
            self.stats.events_dispatched += 1;
            (child.callback)(self, state, res);
        }
    }
}

fn reaped(pid: libc::pid_t) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("process {pid} cannot be watched: it does not exist or was already reaped"),
    )
}
