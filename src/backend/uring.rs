//! io_uring, used for readiness: a one-shot `IORING_OP_POLL_ADD` per watched
//! fd, and every change and re-arm queued and handed to the kernel by the
//! same `io_uring_enter` that waits.
//!
//! Cost: **one system call per wait**, whatever changed in between (adds,
//! interest changes, deletes and re-arms only fill the submission queue);
//! O(ready fds) per wait. The one backend where interest churn (write
//! interest toggled on partial writes, pause/resume) costs no system call.
//!
//! Quirks handled:
//!
//! * **Level-triggered from one-shot polls.** Multishot polls are
//!   edge-triggered and `IORING_POLL_ADD_LEVEL` does not exist, so each
//!   request reports once; every fd a wait reported is re-armed by the
//!   next wait's enter, and a one-shot poll on a still-ready fd completes
//!   at once: a still-ready fd is reported by every wait.
//! * **Late completions.** A poll can complete after its removal was
//!   queued. `user_data` is `fd | generation << 32`, and a completion
//!   whose generation is not the fd's live one is dropped: nothing reaches
//!   an unregistered or re-registered fd.
//! * **Removal cancels.** A poll request holds a reference on the file, so
//!   a closed fd's peer sees no hang-up until the request goes: every
//!   delete (and interest change) queues a `POLL_REMOVE`, without a
//!   completion on success (`IOSQE_CQE_SKIP_SUCCESS`).
//! * **Synchronous errors.** A poll on a bad fd fails in its completion,
//!   not at submission, so `add` checks the fd first (EBADF at once, as on
//!   the other backends). A regular file is always ready, as with poll(2).
//! * **Timeouts** through `IORING_ENTER_EXT_ARG` (nanoseconds, never
//!   rounded down); `ETIME` and `EINTR` are ordinary outcomes.
//!   `IORING_ENTER_NO_IOWAIT` where the kernel has it, so an idle loop does
//!   not show as iowait.
//! * **Nothing lost on overflow.** The completion queue holds 4,096
//!   entries; beyond that the kernel keeps completions aside
//!   (`IORING_FEAT_NODROP`, required) and the wait flushes them in before
//!   it returns, so one wait reports every ready fd.
//! * **`IORING_SETUP_COOP_TASKRUN`** (with `TASKRUN_FLAG`) where the
//!   kernel has it (5.19; the ring is made without it before): a poll's
//!   completion is posted when this thread next enters the kernel instead
//!   of by interrupting it. Completions still arrive before the next wait
//!   reaps them (any system call posts them), so the stale-completion
//!   check above holds. Not `DEFER_TASKRUN`: completions would be posted
//!   only inside the waiting enter, too late for that check, and its
//!   single-issuer rule would tie the ring to the thread that made it. No
//!   SQPOLL.
//! * **A half-closed peer keeps a one-shot poll completing.** The kernel
//!   adds `POLLRDHUP` (with `POLLERR`, `POLLHUP`) to every poll's mask, so
//!   a socket watched for writing only, its buffer full and its peer's
//!   write side shut, completes each poll at once with nothing to report.
//!   Such an fd is *parked*: it waits for room in a small epoll set, which
//!   honours the mask, and the ring polls that set's fd. Costs one
//!   `epoll_ctl` to park and an `epoll_wait(0)` per wait the set is ready;
//!   nothing for any other fd.
//! * **Availability.** io_uring may be missing (`ENOSYS`), blocked
//!   (`EPERM`: seccomp, `kernel.io_uring_disabled`) or short of locked
//!   memory (`ENOMEM`); creating the backend then fails naming the cause,
//!   and [`BackendKind::available`](crate::BackendKind::available) lists it
//!   only where a probe ring could be made.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Duration;

use io_uring::{EnterFlags, IoUring, opcode, squeue, types};

use super::Backend;
use super::host_fd::HostFd;
use crate::fd_table::FdTable;
use crate::sys;
use crate::{Interest, Ready, Token};

const SQ_ENTRIES: u32 = 256;
const CQ_ENTRIES: u32 = 4096;
/// `user_data` of `POLL_REMOVE` requests (their rare failure completions
/// are ignored); generations stay below it.
const REMOVE: u64 = 1 << 63;
/// Bit 0 with `REMOVE` marks the poll on the parked fds' epoll set; the
/// bits above carry the set's generation (see `Parked::poll_data`).
const PARKED: u64 = REMOVE | 1;
/// Poll bits that make a completion worth reporting to a registration
/// watching for writing only (`POLLRDHUP` alone is not one).
const WRITER_WAKES: u32 = (libc::POLLOUT | libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) as u32;

#[derive(Clone, Copy, PartialEq)]
struct FdState {
    token: Token,
    interest: Interest,
    generation: u32,
    /// A poll request with this generation is in the kernel.
    armed: bool,
    /// In `arm`, waiting to be armed by the next enter.
    queued: bool,
    /// Watched through the parked set instead of a poll request.
    parked: bool,
}

impl FdState {
    const VACANT: FdState = FdState {
        token: Token(0),
        interest: Interest::READABLE,
        generation: 0,
        armed: false,
        queued: false,
        parked: false,
    };
}

/// Fds watched for writing only whose polls kept completing for the
/// always-added `POLLRDHUP`: an epoll set (level-triggered, `EPOLLOUT`)
/// that the ring polls for readability. Made on first use.
#[derive(Default)]
struct Parked {
    epfd: Option<OwnedFd>,
    /// Live fds in the set.
    count: usize,
    /// The ring's poll on `epfd` is in the kernel.
    armed: bool,
    /// Counts the sets made: a completion of an earlier set's poll is
    /// stale.
    generation: u64,
    /// Fds to park once the completion queue is released.
    pending: Vec<RawFd>,
    records: Vec<libc::epoll_event>,
}

impl Parked {
    /// `user_data` of the ring's poll on this set.
    fn poll_data(&self) -> u64 {
        PARKED | ((self.generation & 0x3fff_ffff_ffff_ffff) << 1)
    }
}

pub(crate) struct UringBackend {
    ring: IoUring,
    /// Registered fds (vacant entries have generation 0, which no request
    /// carries).
    fds: FdTable<FdState>,
    generation: u32,
    /// Fds to arm at the next enter: new, changed, or reported.
    arm: Vec<RawFd>,
    /// `user_data` of requests to remove at the next enter.
    remove: Vec<u64>,
    no_iowait: bool,
    parked: Parked,
    host: HostFd,
    /// `sys::forks()` when the ring was made: in a forked child the ring's
    /// memory is not mapped (`dontfork`), and using it would fault.
    forks: u64,
}

fn data(fd: RawFd, generation: u32) -> u64 {
    u64::from(fd as u32) | (u64::from(generation) << 32)
}

fn poll_mask(interest: Interest) -> u32 {
    let mut mask = 0;
    if interest.is_readable() {
        mask |= (libc::POLLIN | libc::POLLRDHUP) as u32;
    }
    if interest.is_writable() {
        mask |= libc::POLLOUT as u32;
    }
    mask
}

fn ready_of(revents: u32) -> Ready {
    let has = |bits: libc::c_short| revents & bits as u32 != 0;
    let mut ready = Ready::from_flags(
        has(libc::POLLIN | libc::POLLPRI),
        has(libc::POLLOUT),
        has(libc::POLLERR),
        has(libc::POLLHUP | libc::POLLRDHUP),
        has(libc::POLLHUP),
    );
    if has(libc::POLLNVAL) {
        ready |= Ready::ERROR;
    }
    ready
}

/// Makes a ring, naming the cause when the kernel refuses.
fn new_ring() -> io::Result<IoUring> {
    if std::env::var_os(super::URING_ENV).is_some_and(|v| v == "0") {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("the uring backend is switched off ({}=0)", super::URING_ENV),
        ));
    }
    let build = |coop: bool| {
        let mut builder = IoUring::builder();
        builder
            .setup_cqsize(CQ_ENTRIES)
            .setup_clamp()
            // The ring's memory is not shared with a forked child, which
            // must make its own (`after_fork`) and never touch the
            // parent's.
            .dontfork();
        if coop {
            // Completions are posted when this thread next enters the
            // kernel, not by interrupting it (an IPI, and EINTR for a host
            // sleeping in its own poll on every completion).
            builder.setup_coop_taskrun().setup_taskrun_flag();
        }
        builder.build(SQ_ENTRIES)
    };
    let ring = match build(true) {
        Ok(ring) => ring,
        // Before Linux 5.19: the flags are unknown.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            log::debug!("backend=uring no IORING_SETUP_COOP_TASKRUN here: {e}");
            build(false).map_err(unavailable)?
        }
        Err(e) => return Err(unavailable(e)),
    };
    if !ring.params().is_feature_nodrop() || !ring.params().is_feature_ext_arg() {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "io_uring is too old for the uring backend: it needs IORING_FEAT_NODROP and \
             IORING_FEAT_EXT_ARG (Linux 5.11)",
        ));
    }
    Ok(ring)
}

fn unavailable(e: io::Error) -> io::Error {
    let why = match e.raw_os_error() {
        Some(libc::ENOSYS) => "the kernel has no io_uring",
        Some(libc::EPERM) | Some(libc::EACCES) => {
            "io_uring is blocked for this process (a seccomp profile, or sysctl kernel.io_uring_disabled)"
        }
        Some(libc::ENOMEM) => "no memory for the ring (RLIMIT_MEMLOCK too low?)",
        Some(libc::EMFILE) | Some(libc::ENFILE) => "out of file descriptors",
        _ => "the kernel refused to create a ring",
    };
    let kind = match e.raw_os_error() {
        Some(libc::ENOSYS) => io::ErrorKind::Unsupported,
        Some(libc::EPERM) | Some(libc::EACCES) => io::ErrorKind::PermissionDenied,
        _ => e.kind(),
    };
    io::Error::new(kind, format!("io_uring unavailable: {why}: {e}"))
}

/// Whether this process can make a ring (for `BackendKind::available`).
pub(crate) fn probe() -> io::Result<()> {
    new_ring().map(drop)
}

impl UringBackend {
    pub(crate) fn new() -> io::Result<UringBackend> {
        let ring = new_ring()?;
        let no_iowait = ring.params().is_feature_no_iowait();
        Ok(UringBackend {
            host: HostFd::new(ring.as_raw_fd()),
            ring,
            fds: FdTable::new(FdState::VACANT),
            generation: 0,
            arm: Vec::new(),
            remove: Vec::new(),
            no_iowait,
            parked: Parked::default(),
            forks: sys::forks(),
        })
    }

    fn check_process(&self) -> io::Result<()> {
        if sys::forks() == self.forks {
            return Ok(());
        }
        Err(io::Error::other(
            "this io_uring ring belongs to the parent process (the program forked): \
             call after_fork before using it in the child",
        ))
    }

    /// A generation no request in flight carries (0 is the vacant entry's;
    /// bit 63 of `user_data` is `REMOVE`'s).
    fn next_generation(&mut self) -> u32 {
        self.generation = (self.generation.wrapping_add(1) & 0x7fff_ffff).max(1);
        self.generation
    }

    fn state(&mut self, fd: RawFd) -> &mut FdState {
        self.fds
            .get_mut(fd)
            .expect("the backend keeps an entry for every fd it was given")
    }

    /// Queues the removal of `fd`'s request, if it has one.
    fn disarm(&mut self, fd: RawFd) {
        let st = self.state(fd);
        if st.armed {
            st.armed = false;
            let ud = data(fd, st.generation);
            self.remove.push(ud);
        }
    }

    fn queue_arm(&mut self, fd: RawFd) {
        let st = self.state(fd);
        if !st.queued {
            st.queued = true;
            self.arm.push(fd);
        }
    }

    /// Records `fd` and queues its first poll.
    fn insert(&mut self, fd: RawFd, token: Token, interest: Interest) {
        let generation = self.next_generation();
        self.fds.insert(
            fd,
            FdState {
                token,
                interest,
                generation,
                armed: false,
                queued: false,
                parked: false,
            },
        );
        self.queue_arm(fd);
    }

    /// Moves the queued removals and arms into the submission queue,
    /// submitting (without waiting) whenever it fills up.
    fn fill(&mut self) -> io::Result<()> {
        for i in 0..self.remove.len() {
            let entry = opcode::PollRemove::new(self.remove[i])
                .build()
                .user_data(REMOVE)
                .flags(squeue::Flags::SKIP_SUCCESS);
            self.push(&entry)?;
        }
        self.remove.clear();
        for i in 0..self.arm.len() {
            let fd = self.arm[i];
            let Some(st) = self.fds.get_mut(fd) else {
                continue;
            };
            if !st.queued {
                continue; // deleted since it was queued
            }
            st.queued = false;
            if st.armed {
                continue;
            }
            st.armed = true;
            let entry = opcode::PollAdd::new(types::Fd(fd), poll_mask(st.interest))
                .build()
                .user_data(data(fd, st.generation));
            self.push(&entry)?;
        }
        self.arm.clear();
        if self.parked.count > 0 && !self.parked.armed {
            if let Some(epfd) = &self.parked.epfd {
                let entry = opcode::PollAdd::new(types::Fd(epfd.as_raw_fd()), libc::POLLIN as u32)
                    .build()
                    .user_data(self.parked.poll_data());
                self.parked.armed = true;
                self.push(&entry)?;
            }
        }
        Ok(())
    }

    /// Moves `fd` from poll requests to the parked set, where it waits for
    /// room (or an error or hang-up) without the always-added `POLLRDHUP`.
    fn park(&mut self, fd: RawFd) {
        let Some(st) = self.fds.get_mut(fd) else {
            return;
        };
        if st.parked || st.armed || st.interest.is_readable() {
            return; // changed since its completion
        }
        let ud = data(fd, st.generation);
        if self.parked.epfd.is_none() {
            match sys::epoll_create() {
                Ok(epfd) => {
                    self.parked.epfd = Some(epfd);
                    self.parked.generation += 1;
                }
                Err(e) => {
                    log::warn!("backend=uring fd={fd} cannot park a half-closed writer: {e}");
                    return;
                }
            }
        }
        let epfd = self.parked.epfd.as_ref().expect("made above");
        let events = (libc::EPOLLOUT) as u32;
        if let Err(e) = sys::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, events, ud) {
            // Watched by polls as before (correct, only not quiet).
            log::warn!("backend=uring fd={fd} cannot park a half-closed writer: {e}");
            return;
        }
        log::trace!("backend=uring fd={fd} parked (peer half-closed, watched for writing)");
        let st = self.state(fd);
        st.parked = true;
        st.queued = false; // no poll request for it from now on
        self.parked.count += 1;
    }

    /// Takes `fd` out of the parked set (before a change or a delete).
    fn unpark(&mut self, fd: RawFd) {
        let st = self.state(fd);
        if !st.parked {
            return;
        }
        st.parked = false;
        self.parked.count -= 1;
        if let Some(epfd) = &self.parked.epfd {
            // Fails only if the fd was closed first: then the kernel dropped
            // it, or a duplicate keeps it, which `collect_parked` notices.
            if let Err(e) = sys::epoll_ctl(epfd, libc::EPOLL_CTL_DEL, fd, 0, 0) {
                log::debug!("backend=uring fd={fd} unpark: {e}");
            }
        }
    }

    /// Reports the parked fds that are ready (the set's poll completed).
    fn collect_parked(&mut self, events: &mut Vec<(Token, Ready)>) {
        let Some(epfd) = &self.parked.epfd else {
            return;
        };
        let records = &mut self.parked.records;
        records.clear();
        records.reserve(self.parked.count.max(16));
        if let Err(e) = sys::epoll_wait(epfd, records, Some(Duration::ZERO)) {
            log::warn!("backend=uring reading the parked set: {e}");
            return;
        }
        let mut orphans = false;
        for rec in records.iter() {
            let ud = rec.u64;
            let fd = (ud & 0xffff_ffff) as u32 as RawFd;
            match self.fds.get(fd) {
                Some(st) if st.parked && data(fd, st.generation) == ud => {
                    events.push((st.token, ready_of(rec.events)));
                }
                // A registration the kernel kept after its fd was closed
                // while a duplicate lives: it cannot be deleted by number.
                _ => orphans = true,
            }
        }
        if orphans {
            self.rebuild_parked();
        }
    }

    /// A fresh parked set holding exactly the live parked fds.
    fn rebuild_parked(&mut self) {
        log::debug!("backend=uring rebuilding the parked set (an fd was closed while parked)");
        if self.parked.armed {
            self.remove.push(self.parked.poll_data());
        }
        self.parked.epfd = None;
        self.parked.armed = false;
        let parked: Vec<RawFd> = self
            .fds
            .iter()
            .filter(|(_, st)| st.parked)
            .map(|(fd, _)| fd)
            .collect();
        self.parked.count = 0;
        for fd in parked {
            self.state(fd).parked = false;
            self.park(fd);
            if !self.state(fd).parked {
                self.queue_arm(fd); // could not park: back to polls
            }
        }
    }

    fn push(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        loop {
            let pushed = {
                let mut sq = self.ring.submission();
                sys::uring_push(&mut sq, entry).is_ok()
            };
            if pushed {
                return Ok(());
            }
            // Full: hand what is queued to the kernel, making room.
            self.submit_now()?;
        }
    }

    fn submit_now(&mut self) -> io::Result<()> {
        loop {
            match self.ring.submit() {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // Completions pile up: they are reaped by the next wait,
                // and the kernel holds the rest (NODROP).
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    /// Takes every completion and queues the fds of live requests to be
    /// armed again; with `events`, also reports them (completions that came
    /// during the enter are as fresh as a wait's answer).
    fn reap(&mut self, mut events: Option<&mut Vec<(Token, Ready)>>) {
        let mut parked_ready = false;
        loop {
            let mut cq = self.ring.completion();
            cq.sync();
            for cqe in &mut cq {
                let ud = cqe.user_data();
                if ud & REMOVE != 0 {
                    if ud & PARKED == PARKED && ud == self.parked.poll_data() && self.parked.armed {
                        // The parked set has ready fds (or had, for a
                        // completion from before this wait: armed again).
                        self.parked.armed = false;
                        parked_ready = events.is_some();
                    }
                    continue; // or a removal that found its poll already done
                }
                let fd = (ud & 0xffff_ffff) as u32 as RawFd;
                let generation = (ud >> 32) as u32;
                let Some(st) = self.fds.get_mut(fd) else {
                    continue;
                };
                if st.generation != generation || !st.armed {
                    continue; // a request of an earlier registration
                }
                st.armed = false;
                let res = cqe.result();
                if res >= 0 && res as u32 & WRITER_WAKES == 0 && !st.interest.is_readable() {
                    // Nothing a writer waits for: the always-added
                    // POLLRDHUP (a half-closed peer), which would complete
                    // every poll at once.
                    self.parked.pending.push(fd);
                    continue;
                }
                let ready = if res >= 0 {
                    ready_of(res as u32)
                } else if res == -libc::ECANCELED {
                    Ready::EMPTY
                } else {
                    log::debug!(
                        "backend=uring fd={fd} poll failed: {}",
                        io::Error::from_raw_os_error(-res)
                    );
                    Ready::ERROR
                };
                let token = st.token;
                if !st.queued {
                    st.queued = true;
                    self.arm.push(fd);
                }
                if let Some(events) = events.as_deref_mut() {
                    if !ready.is_empty() {
                        events.push((token, ready));
                    }
                }
            }
            drop(cq);
            while let Some(fd) = self.parked.pending.pop() {
                self.park(fd);
                if !self.state(fd).parked {
                    self.queue_arm(fd);
                }
            }
            // Completions the kernel kept aside while the queue was full:
            // bring them in, so this wait reports every ready fd.
            if !self.ring.submission().cq_overflow() {
                break;
            }
            if let Err(e) = self.submit_now() {
                log::warn!("backend=uring flushing overflowed completions: {e}");
                break;
            }
        }
        if parked_ready {
            if let Some(events) = events {
                self.collect_parked(events);
            }
        }
    }
}

impl Backend for UringBackend {
    fn name(&self) -> &'static str {
        "uring"
    }

    fn reports_each_fd_once(&self) -> bool {
        // One request per fd, and a request completes once.
        true
    }

    fn add(&mut self, fd: RawFd, token: Token, interest: Interest) -> io::Result<()> {
        // A poll on a bad fd would fail only in its completion.
        sys::check_open(fd)?;
        self.insert(fd, token, interest);
        Ok(())
    }

    fn modify(&mut self, fd: RawFd, token: Token, _: Interest, new: Interest) -> io::Result<()> {
        self.unpark(fd);
        self.disarm(fd);
        let generation = self.next_generation();
        let st = self.state(fd);
        st.token = token;
        st.interest = new;
        st.generation = generation;
        self.queue_arm(fd);
        Ok(())
    }

    fn delete(&mut self, fd: RawFd, _: Token, _: Interest) -> io::Result<()> {
        self.unpark(fd);
        self.disarm(fd);
        self.fds.remove(fd);
        Ok(())
    }

    /// A poll request holds a reference on its file: for an fd closed
    /// next, the cancel is submitted at once (one `io_uring_enter`, as
    /// epoll's one `EPOLL_CTL_DEL`), or the peer would see the close only
    /// at the next wait.
    fn delete_closing(&mut self, fd: RawFd, token: Token, interest: Interest) -> io::Result<()> {
        self.delete(fd, token, interest)?;
        self.check_process()?;
        self.fill()?;
        self.submit_now()
    }

    fn wait(
        &mut self,
        events: &mut Vec<(Token, Ready)>,
        timeout: Option<Duration>,
    ) -> io::Result<()> {
        self.check_process()?;
        // Completions that arrived since the last wait may be stale (the fd
        // was read meanwhile): arm those fds again instead, in this enter,
        // which reports them only if they are still ready.
        self.reap(None);
        self.fill()?;
        let flags = if self.no_iowait {
            EnterFlags::NO_IOWAIT
        } else {
            EnterFlags::empty()
        };
        let res = match timeout {
            Some(t) if t.is_zero() => self.ring.submit().map(drop),
            Some(t) => {
                // Longer waits are as good as forever and safe to convert:
                // the selector waits again for what is left.
                let t = t.min(Duration::from_secs(30 * 86_400));
                let ts = types::Timespec::from(t);
                let args = types::SubmitArgs::new().timespec(&ts);
                self.ring
                    .submitter()
                    .submit_with_args_and_flags(1, &args, flags)
                    .map(drop)
            }
            None => {
                let args = types::SubmitArgs::new();
                self.ring
                    .submitter()
                    .submit_with_args_and_flags(1, &args, flags)
                    .map(drop)
            }
        };
        match res {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ETIME) => {}
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                self.reap(Some(events));
                return if events.is_empty() { Err(e) } else { Ok(()) };
            }
            Err(e) => return Err(e),
        }
        self.reap(Some(events));
        Ok(())
    }

    fn fd(&self) -> Option<RawFd> {
        self.host.fd()
    }

    /// Hands the queued removals and arms to the kernel, so that the ring
    /// fd turns readable exactly when a watched fd is ready. (The event
    /// loop calls it only for a host polling the backend fd; otherwise the
    /// next wait submits them in its own enter: one system call per
    /// iteration.)
    fn flush(&mut self) -> io::Result<()> {
        if !self.has_deferred() {
            return Ok(());
        }
        self.check_process()?;
        self.fill()?;
        self.submit_now()
    }

    fn has_deferred(&self) -> bool {
        !self.arm.is_empty()
            || !self.remove.is_empty()
            || (self.parked.count > 0 && !self.parked.armed)
    }

    /// The ring's memory is not mapped in a child (`dontfork`), and its fd
    /// is the parent's too: the child makes its own ring and closes only
    /// its reference to the old one, never touching its memory.
    fn after_fork(
        &mut self,
        live: &mut dyn Iterator<Item = (RawFd, Token, Interest)>,
    ) -> io::Result<()> {
        let fresh = new_ring()?;
        let inherited = std::mem::replace(&mut self.ring, fresh);
        // Closing the fd closes only this process's reference; dropping the
        // ring would also unmap memory this process does not have.
        sys::close_raw(inherited.as_raw_fd());
        std::mem::forget(inherited);
        self.forks = sys::forks();
        self.fds.clear();
        self.arm.clear();
        self.remove.clear();
        // The parked set is shared with the parent: closing this process's
        // reference leaves the parent's intact; the re-added fds start over.
        self.parked = Parked {
            generation: self.parked.generation + 1,
            ..Parked::default()
        };
        // Without the fd check: one closed meanwhile stays registered with
        // the selector, and its poll fails in its completion (an error
        // event), as poll(2) reports POLLNVAL.
        for (fd, token, interest) in live {
            self.insert(fd, token, interest);
        }
        self.host.after_fork(self.ring.as_raw_fd())
    }
}
