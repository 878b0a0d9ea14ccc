//! select(2)

use super::*;

/// `FD_SETSIZE`: the size of the C library's `fd_set`.
#[cfg(any(test, not(any(target_os = "linux", target_os = "android"))))]
pub(crate) const FD_SETSIZE: RawFd = libc::FD_SETSIZE as RawFd;

/// The highest fd plus one that an [`FdSet`] can hold, or `None` if it
/// grows to any fd.
///
/// Linux's select(2) reads as many bits as `nfds` asks for, from a buffer
/// of `unsigned long` words, whatever `FD_SETSIZE` says (fs/select.c:
/// `core_sys_select`); only the C library's fixed-size `fd_set` and its
/// macros stop at 1024. So on Linux the set is a growable bit vector in
/// the kernel's layout and select works for every fd, as libev does.
/// Elsewhere (macOS refuses `nfds > FD_SETSIZE` with EINVAL) the set is
/// the C `fd_set`, bounds-checked on every access.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) const SELECT_FD_LIMIT: Option<RawFd> = None;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub(crate) const SELECT_FD_LIMIT: Option<RawFd> = Some(FD_SETSIZE);

/// A growable set of fds in the kernel's `fd_set` layout.
#[cfg(any(target_os = "linux", target_os = "android"))]
#[derive(Clone, Default)]
pub(crate) struct FdSet {
    words: Vec<libc::c_ulong>,
}

#[cfg(any(target_os = "linux", target_os = "android"))]
impl FdSet {
    const BITS: usize = libc::c_ulong::BITS as usize;

    pub(crate) fn new() -> FdSet {
        FdSet::default()
    }

    /// Makes room for fds below `nfds`.
    fn cover(&mut self, nfds: RawFd) {
        let words = (nfds.max(0) as usize).div_ceil(Self::BITS);
        if self.words.len() < words {
            self.words.resize(words, 0);
        }
    }

    /// Adds `fd`; returns false (and changes nothing) if it is negative.
    pub(crate) fn insert(&mut self, fd: RawFd) -> bool {
        if fd < 0 {
            return false;
        }
        self.cover(fd + 1);
        let fd = fd as usize;
        self.words[fd / Self::BITS] |= 1 << (fd % Self::BITS);
        true
    }

    pub(crate) fn remove(&mut self, fd: RawFd) {
        if fd >= 0 {
            let fd = fd as usize;
            if let Some(w) = self.words.get_mut(fd / Self::BITS) {
                *w &= !(1 << (fd % Self::BITS));
            }
        }
    }

    pub(crate) fn contains(&self, fd: RawFd) -> bool {
        if fd < 0 {
            return false;
        }
        let fd = fd as usize;
        self.words
            .get(fd / Self::BITS)
            .is_some_and(|w| w & (1 << (fd % Self::BITS)) != 0)
    }

    /// Copies `other` into `self`, reusing the allocation.
    pub(crate) fn copy_from(&mut self, other: &FdSet) {
        self.words.clone_from(&other.words);
    }

    /// Calls `f` for every fd in `self` or `other`, in increasing order.
    pub(crate) fn for_each_union(&self, other: &FdSet, mut f: impl FnMut(RawFd)) {
        let n = self.words.len().max(other.words.len());
        for i in 0..n {
            let mut w =
                self.words.get(i).copied().unwrap_or(0) | other.words.get(i).copied().unwrap_or(0);
            while w != 0 {
                let bit = w.trailing_zeros() as usize;
                f((i * Self::BITS + bit) as RawFd);
                w &= w - 1;
            }
        }
    }

    fn as_mut_ptr(&mut self, nfds: RawFd) -> *mut libc::fd_set {
        self.cover(nfds);
        self.words.as_mut_ptr().cast()
    }
}

/// A bounds-checked C `fd_set`: `FD_SET` beyond `FD_SETSIZE` would write
/// past its end, so fds out of range are refused instead.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
#[derive(Clone)]
pub(crate) struct FdSet(libc::fd_set);

#[cfg(not(any(target_os = "linux", target_os = "android")))]
impl FdSet {
    pub(crate) fn new() -> FdSet {
        let mut set = std::mem::MaybeUninit::<libc::fd_set>::uninit();
        // SAFETY: FD_ZERO initialises every byte of the set it is given.
        unsafe { libc::FD_ZERO(set.as_mut_ptr()) };
        // SAFETY: initialised just above.
        FdSet(unsafe { set.assume_init() })
    }

    fn in_range(fd: RawFd) -> bool {
        (0..FD_SETSIZE).contains(&fd)
    }

    /// Adds `fd`; returns false (and changes nothing) if it is out of range.
    pub(crate) fn insert(&mut self, fd: RawFd) -> bool {
        if !Self::in_range(fd) {
            return false;
        }
        // SAFETY: 0 <= fd < FD_SETSIZE, so the bit lies inside the set.
        unsafe { libc::FD_SET(fd, &mut self.0) };
        true
    }

    pub(crate) fn remove(&mut self, fd: RawFd) {
        if Self::in_range(fd) {
            // SAFETY: 0 <= fd < FD_SETSIZE, so the bit lies inside the set.
            unsafe { libc::FD_CLR(fd, &mut self.0) };
        }
    }

    pub(crate) fn contains(&self, fd: RawFd) -> bool {
        // SAFETY: 0 <= fd < FD_SETSIZE, so the bit lies inside the set.
        Self::in_range(fd) && unsafe { libc::FD_ISSET(fd, &self.0) }
    }

    pub(crate) fn copy_from(&mut self, other: &FdSet) {
        self.0 = other.0;
    }

    /// Calls `f` for every fd in `self` or `other`, in increasing order.
    pub(crate) fn for_each_union(&self, other: &FdSet, mut f: impl FnMut(RawFd)) {
        for fd in 0..FD_SETSIZE {
            if self.contains(fd) || other.contains(fd) {
                f(fd);
            }
        }
    }

    fn as_mut_ptr(&mut self, nfds: RawFd) -> *mut libc::fd_set {
        debug_assert!(nfds <= FD_SETSIZE);
        &mut self.0
    }
}

/// select(2) on read and write sets; `nfds` is the highest fd plus one.
pub(crate) fn select(
    nfds: RawFd,
    read: &mut FdSet,
    write: &mut FdSet,
    timeout: Option<Duration>,
) -> io::Result<usize> {
    let mut tv = timeout.map(timeval);
    let tv_ptr = tv
        .as_mut()
        .map_or(std::ptr::null_mut(), |tv| tv as *mut libc::timeval);
    let (r, w) = (read.as_mut_ptr(nfds), write.as_mut_ptr(nfds));
    // SAFETY: `as_mut_ptr` made both sets cover at least `nfds` bits, which
    // is all the kernel reads and writes; the timeout is null or points at
    // a live timeval.
    let n = syscall!(select(nfds, r, w, std::ptr::null_mut(), tv_ptr))?;
    Ok(n as usize)
}
