//! Sockets, for the stream layer: sends that never raise SIGPIPE, a
//! non-blocking connect and its outcome.

use super::*;

/// `send`'s flags: never SIGPIPE where the flag exists (elsewhere the
/// socket gets `SO_NOSIGPIPE` instead, see `no_sigpipe`).
#[cfg(not(muxloop_apple))]
const SEND_FLAGS: libc::c_int = libc::MSG_NOSIGNAL;
#[cfg(muxloop_apple)]
const SEND_FLAGS: libc::c_int = 0;

/// send(2) of `buf` on a connected socket, returning `EPIPE` instead of
/// raising SIGPIPE.
#[inline]
pub(crate) fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    raw_result(send_raw(fd, buf))
}

/// recv(2) into `buf`: what is there, at most its length.
#[inline]
pub(crate) fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    raw_result(recv_raw(fd, buf))
}

/// [`send`] as the kernel answers: bytes sent, or -1 with `errno` set
/// (turn it into an error with [`raw_result`] before anything else runs).
/// For a hot path that tests for the usual outcome before building a
/// result.
#[inline(always)]
pub(crate) fn send_raw(fd: RawFd, buf: &[u8]) -> isize {
    // SAFETY: the pointer and length describe a live slice.
    unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), SEND_FLAGS) }
}

/// [`recv`] as the kernel answers: bytes read, 0 at EOF, or -1 with
/// `errno` set, as [`send_raw`].
#[inline(always)]
pub(crate) fn recv_raw(fd: RawFd, buf: &mut [u8]) -> isize {
    // SAFETY: the pointer and length describe a live, writable slice.
    unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) }
}

/// The result of a raw call that returned `n`: `errno` if it is -1. Call
/// it right after the call, before anything can change `errno`.
#[inline(always)]
pub(crate) fn raw_result(n: isize) -> io::Result<usize> {
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// sendmsg(2) of `bufs` on a connected socket: a vectored write that
/// returns `EPIPE` instead of raising SIGPIPE.
pub(crate) fn send_vectored(fd: RawFd, bufs: &[std::io::IoSlice<'_>]) -> io::Result<usize> {
    if let [buf] = bufs {
        // One buffer: send(2), which spares the kernel the iovec import.
        return send(fd, buf);
    }
    // SAFETY: a zeroed msghdr is valid (no name, no control data).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    // IoSlice is guaranteed ABI-compatible with iovec on Unix; the kernel
    // only reads the buffers.
    msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = bufs.len().min(1024) as _;
    // SAFETY: `msg` points at `bufs`, live for the call.
    let n = syscall!(sendmsg(fd, &msg, SEND_FLAGS))?;
    Ok(n as usize)
}

/// Sets `SO_NOSIGPIPE` where sends have no `MSG_NOSIGNAL`; nothing elsewhere.
pub(crate) fn no_sigpipe(fd: RawFd) -> io::Result<()> {
    #[cfg(muxloop_apple)]
    {
        let on: libc::c_int = 1;
        // SAFETY: `on` is a live c_int and the length says so.
        syscall!(setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_NOSIGPIPE,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t
        ))?;
    }
    let _ = fd;
    Ok(())
}

/// A socket address in the kernel's form.
pub(crate) struct SockAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl SockAddr {
    pub(crate) fn family(&self) -> libc::c_int {
        libc::c_int::from(self.storage.ss_family)
    }

    /// An IPv4 or IPv6 address.
    pub(crate) fn inet(addr: &std::net::SocketAddr) -> SockAddr {
        // SAFETY: a zeroed sockaddr_storage is a valid, empty address.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let len = match addr {
            std::net::SocketAddr::V4(a) => {
                // SAFETY: sockaddr_storage is large and aligned enough for
                // any sockaddr type, sockaddr_in included.
                let sin = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in) };
                sin.sin_family = libc::AF_INET as libc::sa_family_t;
                sin.sin_port = a.port().to_be();
                sin.sin_addr = libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                };
                std::mem::size_of::<libc::sockaddr_in>()
            }
            std::net::SocketAddr::V6(a) => {
                // SAFETY: as above, for sockaddr_in6.
                let sin6 = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in6) };
                sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sin6.sin6_port = a.port().to_be();
                sin6.sin6_addr = libc::in6_addr {
                    s6_addr: a.ip().octets(),
                };
                sin6.sin6_flowinfo = a.flowinfo();
                sin6.sin6_scope_id = a.scope_id();
                std::mem::size_of::<libc::sockaddr_in6>()
            }
        };
        SockAddr {
            storage,
            len: len as libc::socklen_t,
        }
    }

    /// A Unix-domain path.
    pub(crate) fn unix(path: &std::path::Path) -> io::Result<SockAddr> {
        use std::os::unix::ffi::OsStrExt;
        let bytes = path.as_os_str().as_bytes();
        // SAFETY: a zeroed sockaddr_storage is a valid, empty address.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        // SAFETY: sockaddr_storage is large and aligned enough for
        // sockaddr_un.
        let sun = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_un) };
        if bytes.len() >= sun.sun_path.len() || bytes.contains(&0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "Unix socket path {} is too long ({} bytes, at most {}) or holds a NUL",
                    path.display(),
                    bytes.len(),
                    sun.sun_path.len() - 1
                ),
            ));
        }
        sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (dst, src) in sun.sun_path.iter_mut().zip(bytes) {
            *dst = *src as libc::c_char;
        }
        let base = std::mem::size_of::<libc::sockaddr_un>() - sun.sun_path.len();
        Ok(SockAddr {
            storage,
            len: (base + bytes.len() + 1) as libc::socklen_t,
        })
    }

    /// A Unix-domain socket's address: its path, or (Linux) its abstract
    /// name. `InvalidInput` for an unnamed one, which nothing can reach.
    pub(crate) fn unix_addr(addr: &std::os::unix::net::SocketAddr) -> io::Result<SockAddr> {
        if let Some(path) = addr.as_pathname() {
            return SockAddr::unix(path);
        }
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            #[cfg(target_os = "android")]
            use std::os::android::net::SocketAddrExt;
            #[cfg(target_os = "linux")]
            use std::os::linux::net::SocketAddrExt;
            if let Some(name) = addr.as_abstract_name() {
                // SAFETY: a zeroed sockaddr_storage is a valid, empty address.
                let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
                // SAFETY: sockaddr_storage is large and aligned enough for
                // sockaddr_un.
                let sun = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_un) };
                // std built the name, so it fits after the leading NUL.
                let n = name.len().min(sun.sun_path.len() - 1);
                sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
                for (dst, src) in sun.sun_path[1..].iter_mut().zip(&name[..n]) {
                    *dst = *src as libc::c_char;
                }
                let base = std::mem::size_of::<libc::sockaddr_un>() - sun.sun_path.len();
                return Ok(SockAddr {
                    storage,
                    len: (base + 1 + n) as libc::socklen_t,
                });
            }
        }
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "an unnamed Unix socket cannot be sent to",
        ))
    }
}

/// Starts a connect of the non-blocking socket `fd` to `addr`: `Ok(false)`
/// while it is in progress (wait for writability, then
/// `take_socket_error`), `Ok(true)` if it completed at once.
pub(crate) fn start_connect(fd: RawFd, addr: &SockAddr) -> io::Result<bool> {
    // SAFETY: `addr.storage` holds a valid address of `addr.len` bytes.
    let res = syscall!(connect(
        fd,
        (&addr.storage as *const libc::sockaddr_storage).cast(),
        addr.len
    ));
    match res {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(false),
        Err(e) => Err(e),
    }
}

/// A non-blocking, close-on-exec stream socket of `family`, without
/// SIGPIPE.
pub(crate) fn stream_socket(family: libc::c_int) -> io::Result<OwnedFd> {
    let fd = new_stream_socket(family)?;
    no_sigpipe(fd.as_raw_fd())?;
    Ok(fd)
}

#[cfg(muxloop_sock_flags)]
fn new_stream_socket(family: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: no pointers involved.
    let fd = syscall!(socket(
        family,
        libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        0
    ))?;
    Ok(owned(fd))
}

#[cfg(not(muxloop_sock_flags))]
fn new_stream_socket(family: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: no pointers involved.
    let fd = owned(syscall!(socket(family, libc::SOCK_STREAM, 0))?);
    // SAFETY: fcntl on a descriptor we own; no memory involved.
    syscall!(fcntl(fd.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK))?;
    // SAFETY: as above.
    syscall!(fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC))?;
    Ok(fd)
}

/// Accepts a TCP connection on the listening socket `fd` as a
/// non-blocking, close-on-exec socket (one `accept4`, where std's accept
/// needs an `ioctl(FIONBIO)` after it), with the peer's address.
#[cfg(muxloop_sock_flags)]
pub(crate) fn accept_inet(fd: RawFd) -> io::Result<(OwnedFd, std::net::SocketAddr)> {
    // SAFETY: a zeroed sockaddr_storage is a valid, empty address.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `storage` and `len` are live and describe the buffer the
    // kernel may write the address into.
    let conn = syscall!(accept4(
        fd,
        (&mut storage as *mut libc::sockaddr_storage).cast(),
        &mut len,
        libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC
    ))?;
    let conn = owned(conn);
    let peer = inet_of(&storage).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "accept returned an address of family {}, not IPv4 or IPv6",
                storage.ss_family
            ),
        )
    })?;
    Ok((conn, peer))
}

/// The IPv4 or IPv6 address in `storage`, if it holds one.
fn inet_of(storage: &libc::sockaddr_storage) -> Option<std::net::SocketAddr> {
    match libc::c_int::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, and
            // sockaddr_storage is large and aligned enough for it.
            let sin = unsafe { &*(storage as *const _ as *const libc::sockaddr_in) };
            let ip = std::net::Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Some(std::net::SocketAddr::from((ip, u16::from_be(sin.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &*(storage as *const _ as *const libc::sockaddr_in6) };
            let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(std::net::SocketAddr::V6(std::net::SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// The pending error of a socket (`SO_ERROR`, which reading clears): how a
/// non-blocking connect ended. `Ok(None)` if it succeeded.
pub(crate) fn take_socket_error(fd: RawFd) -> io::Result<Option<io::Error>> {
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `err` and `len` are live and describe a c_int.
    syscall!(getsockopt(
        fd,
        libc::SOL_SOCKET,
        libc::SO_ERROR,
        (&mut err as *mut libc::c_int).cast(),
        &mut len
    ))?;
    Ok((err != 0).then(|| io::Error::from_raw_os_error(err)))
}

/// Sets an `int` socket option to `value`.
fn set_int_option(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `value` is a live c_int and the length passed is its size.
    syscall!(setsockopt(
        fd,
        level,
        name,
        (&value as *const libc::c_int).cast(),
        std::mem::size_of::<libc::c_int>() as libc::socklen_t
    ))?;
    Ok(())
}

/// The option that lets several listeners share a port with the kernel
/// spreading connections across them: `SO_REUSEPORT` on Linux,
/// `SO_REUSEPORT_LB` on FreeBSD; `None` where no such option exists (on
/// macOS and the other BSDs `SO_REUSEPORT` shares a port but hands every
/// connection to one listener).
pub(crate) fn balanced_reuseport_option() -> Option<libc::c_int> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    return Some(libc::SO_REUSEPORT);
    #[cfg(target_os = "freebsd")]
    return Some(libc::SO_REUSEPORT_LB);
    #[allow(unreachable_code)]
    None
}

/// A blocking TCP listener on `addr` with `SO_REUSEADDR` and, if given,
/// the reuse-port option `reuse` set before the bind, listening with
/// `backlog`.
pub(crate) fn tcp_listener(
    addr: &std::net::SocketAddr,
    reuse: Option<libc::c_int>,
    backlog: libc::c_int,
) -> io::Result<std::net::TcpListener> {
    let sa = SockAddr::inet(addr);
    let fd = new_stream_socket(sa.family())?;
    let raw = fd.as_raw_fd();
    set_int_option(raw, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    if let Some(option) = reuse {
        set_int_option(raw, libc::SOL_SOCKET, option, 1)?;
    }
    // SAFETY: `sa.storage` holds a valid address of `sa.len` bytes.
    syscall!(bind(
        raw,
        (&sa.storage as *const libc::sockaddr_storage).cast(),
        sa.len
    ))?;
    // SAFETY: no pointers involved.
    syscall!(listen(raw, backlog))?;
    let listener = std::net::TcpListener::from(fd);
    listener.set_nonblocking(false)?;
    Ok(listener)
}

/// Makes the TCP listener `fd` drop new connection requests (a bare SYN)
/// while handshakes already under way still complete into its accept
/// queue: a socket filter (Linux's classic BPF, `SO_ATTACH_FILTER`) that
/// passes every segment but those with SYN set and ACK clear. Then what
/// the queue holds can be accepted to the last connection before the
/// listener closes (closing it resets what is still queued). `Ok(false)`
/// where there are no socket filters; the refused client retransmits its
/// SYN and finds the port closed, or another listener of the port.
pub(crate) fn refuse_new_connections(fd: RawFd) -> io::Result<bool> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        // For a TCP socket the filter sees the segment from its TCP
        // header on: the flags are byte 13.
        let program = [
            // A = flags & (SYN | ACK)
            bpf(libc::BPF_LD | libc::BPF_B | libc::BPF_ABS, 13),
            bpf(libc::BPF_ALU | libc::BPF_AND | libc::BPF_K, 0x12),
            // A == SYN alone: drop (keep 0 bytes); else keep all.
            libc::sock_filter {
                code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
                jt: 0,
                jf: 1,
                k: 0x02,
            },
            bpf(libc::BPF_RET | libc::BPF_K, 0),
            bpf(libc::BPF_RET | libc::BPF_K, u32::MAX),
        ];
        let prog = libc::sock_fprog {
            len: program.len() as libc::c_ushort,
            filter: program.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: `prog` points at `program`, both live for the call; the
        // kernel copies the program.
        syscall!(setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&prog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t
        ))?;
        Ok(true)
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = fd;
        Ok(false)
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn bpf(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

/// Who sent a datagram, as the kernel named it.
#[derive(Clone, Debug)]
pub(crate) enum Sender {
    /// An IPv4 or IPv6 address.
    Inet(std::net::SocketAddr),
    /// A bound Unix-domain socket (a path, or an abstract name on Linux).
    Unix(std::os::unix::net::SocketAddr),
    /// An unbound Unix-domain socket, or no name given.
    Unnamed,
}

/// The sender named by the first `len` bytes of `storage`.
fn sender_of(storage: &libc::sockaddr_storage, len: libc::socklen_t) -> Sender {
    if let Some(a) = inet_of(storage) {
        return Sender::Inet(a);
    }
    if libc::c_int::from(storage.ss_family) != libc::AF_UNIX {
        return Sender::Unnamed;
    }
    // SAFETY: the family says the storage holds a sockaddr_un, and
    // sockaddr_storage is large and aligned enough for it.
    let sun = unsafe { &*(storage as *const _ as *const libc::sockaddr_un) };
    let base = std::mem::size_of::<libc::sockaddr_un>() - sun.sun_path.len();
    let n = (len as usize).saturating_sub(base).min(sun.sun_path.len());
    // c_char is i8 or u8 by target: either way one byte of the name.
    let bytes: Vec<u8> = sun.sun_path[..n].iter().map(|&c| c as u8).collect();
    match bytes.first() {
        None => Sender::Unnamed,
        #[cfg(any(target_os = "linux", target_os = "android"))]
        Some(0) => {
            #[cfg(target_os = "android")]
            use std::os::android::net::SocketAddrExt;
            #[cfg(target_os = "linux")]
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(&bytes[1..])
                .map_or(Sender::Unnamed, Sender::Unix)
        }
        Some(_) => {
            use std::os::unix::ffi::OsStrExt;
            let path = bytes.split(|&b| b == 0).next().unwrap_or_default();
            std::os::unix::net::SocketAddr::from_pathname(std::ffi::OsStr::from_bytes(path))
                .map_or(Sender::Unnamed, Sender::Unix)
        }
    }
}

/// One datagram a batch read took: its length, its sender, and whether
/// it was cut to the slot's size.
#[derive(Clone, Debug)]
pub(crate) struct Received {
    pub(crate) len: usize,
    pub(crate) from: Sender,
    pub(crate) truncated: bool,
}

/// A batch read's memory, kept from read to read: `n` slots of `slot`
/// bytes, and the kernel's headers for them.
pub(crate) struct RecvBatch {
    buf: Vec<u8>,
    slot: usize,
    names: Vec<libc::sockaddr_storage>,
    #[cfg(any(target_os = "linux", target_os = "android"))]
    iovs: Vec<libc::iovec>,
    #[cfg(any(target_os = "linux", target_os = "android"))]
    msgs: Vec<libc::mmsghdr>,
    got: Vec<Received>,
}

impl RecvBatch {
    pub(crate) fn new(n: usize, slot: usize) -> RecvBatch {
        let n = n.max(1);
        let slot = slot.max(1);
        RecvBatch {
            buf: vec![0; n * slot],
            slot,
            // SAFETY: zeroed sockaddr_storage, iovec and mmsghdr values
            // are valid, empty ones (filled in before each read).
            names: vec![unsafe { std::mem::zeroed() }; n],
            #[cfg(any(target_os = "linux", target_os = "android"))]
            // SAFETY: as above.
            iovs: vec![unsafe { std::mem::zeroed() }; n],
            #[cfg(any(target_os = "linux", target_os = "android"))]
            // SAFETY: as above.
            msgs: vec![unsafe { std::mem::zeroed() }; n],
            got: Vec::with_capacity(n),
        }
    }

    /// Datagram `i` of the last read.
    pub(crate) fn datagram(&self, i: usize) -> (&[u8], &Received) {
        let r = &self.got[i];
        (&self.buf[i * self.slot..][..r.len.min(self.slot)], r)
    }

    /// Reads up to `n` datagrams from the non-blocking socket `fd` with
    /// one recvmmsg(2) (Linux) or recvfrom(2) calls (elsewhere): how many.
    /// `WouldBlock` when none waits.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    pub(crate) fn read(&mut self, fd: RawFd) -> io::Result<usize> {
        self.got.clear();
        let base = self.buf.as_mut_ptr();
        for (i, ((m, iov), name)) in self
            .msgs
            .iter_mut()
            .zip(self.iovs.iter_mut())
            .zip(self.names.iter_mut())
            .enumerate()
        {
            // SAFETY: slot `i` lies inside `buf` (it holds n slots).
            iov.iov_base = unsafe { base.add(i * self.slot) }.cast();
            iov.iov_len = self.slot;
            m.msg_hdr.msg_name = (name as *mut libc::sockaddr_storage).cast();
            m.msg_hdr.msg_namelen =
                std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            m.msg_hdr.msg_iov = iov;
            m.msg_hdr.msg_iovlen = 1;
            m.msg_hdr.msg_flags = 0;
            m.msg_len = 0;
        }
        // SAFETY: every mmsghdr points at a live iovec over its own slot
        // of `buf` and at a live sockaddr_storage, all owned by `self` and
        // untouched during the call; the kernel writes at most those sizes.
        let got = syscall!(recvmmsg(
            fd,
            self.msgs.as_mut_ptr(),
            self.msgs.len() as libc::c_uint,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut()
        ))? as usize;
        for (m, name) in self.msgs.iter().zip(&self.names).take(got) {
            self.got.push(Received {
                len: m.msg_len as usize,
                from: sender_of(name, m.msg_hdr.msg_namelen),
                truncated: m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
            });
        }
        Ok(got)
    }

    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    pub(crate) fn read(&mut self, fd: RawFd) -> io::Result<usize> {
        self.got.clear();
        let n = self.names.len();
        for i in 0..n {
            let slot = &mut self.buf[i * self.slot..][..self.slot];
            let name = &mut self.names[i];
            let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            // SAFETY: `slot` and `name` are live and writable for the
            // lengths given; MSG_TRUNC is not asked of the kernel (the
            // length is at most the slot's).
            let res = syscall!(recvfrom(
                fd,
                slot.as_mut_ptr().cast(),
                slot.len(),
                0,
                (name as *mut libc::sockaddr_storage).cast(),
                &mut len
            ));
            match res {
                Ok(got) => self.got.push(Received {
                    len: got as usize,
                    from: sender_of(name, len),
                    // Without MSG_TRUNC's report a full slot may be cut.
                    truncated: got as usize == self.slot,
                }),
                Err(e) if i > 0 && e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    if i > 0 {
                        break;
                    }
                    return Err(e);
                }
            }
        }
        Ok(self.got.len())
    }
}

/// Sends one datagram on the non-blocking socket `fd`, to `to` (`None`:
/// its connected peer), never raising SIGPIPE: sendto(2).
pub(crate) fn send_one(fd: RawFd, data: &[u8], to: Option<&SockAddr>) -> io::Result<usize> {
    let (name, len) = match to {
        Some(a) => ((&a.storage as *const libc::sockaddr_storage).cast(), a.len),
        None => (std::ptr::null(), 0),
    };
    // SAFETY: `data` is live for its length and only read; `name` is null
    // (length 0) or a live address of `len` bytes, outliving the call.
    let sent = syscall!(sendto(
        fd,
        data.as_ptr().cast(),
        data.len(),
        SEND_FLAGS | libc::MSG_DONTWAIT,
        name,
        len
    ))?;
    Ok(sent as usize)
}

/// Sends `msgs` (each a datagram and its destination, `None` on a
/// connected socket) with one sendmmsg(2): how many went, from the first.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) fn send_batch(fd: RawFd, msgs: &[(&[u8], Option<&SockAddr>)]) -> io::Result<usize> {
    let mut iovs: Vec<libc::iovec> = msgs
        .iter()
        .map(|(data, _)| libc::iovec {
            iov_base: data.as_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        })
        .collect();
    // SAFETY: a zeroed mmsghdr is a valid, empty one; filled in below.
    let mut hdrs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; msgs.len()];
    for ((h, iov), (_, name)) in hdrs.iter_mut().zip(iovs.iter_mut()).zip(msgs) {
        if let Some(name) = name {
            h.msg_hdr.msg_name =
                (&name.storage as *const libc::sockaddr_storage) as *mut libc::c_void;
            h.msg_hdr.msg_namelen = name.len;
        }
        h.msg_hdr.msg_iov = iov;
        h.msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: every header points at a live iovec over a live datagram
    // (only read by the kernel) and at a live address, outliving the call.
    let sent = syscall!(sendmmsg(
        fd,
        hdrs.as_mut_ptr(),
        hdrs.len() as libc::c_uint,
        libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL
    ))?;
    Ok(sent as usize)
}

/// A non-blocking UDP socket bound to `addr`, with `SO_REUSEADDR` (and
/// `SO_REUSEPORT` where it exists) set first when `reuse` (several
/// sockets on one multicast group and port).
pub(crate) fn udp_socket(
    addr: &std::net::SocketAddr,
    reuse: bool,
) -> io::Result<std::net::UdpSocket> {
    let sa = SockAddr::inet(addr);
    // SAFETY: no pointers involved.
    let fd = owned(syscall!(socket(sa.family(), libc::SOCK_DGRAM, 0))?);
    let raw = fd.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own; no memory involved.
    syscall!(fcntl(raw, libc::F_SETFD, libc::FD_CLOEXEC))?;
    if reuse {
        set_int_option(raw, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
        set_int_option(raw, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    }
    // SAFETY: `sa.storage` holds a valid address of `sa.len` bytes.
    syscall!(bind(
        raw,
        (&sa.storage as *const libc::sockaddr_storage).cast(),
        sa.len
    ))?;
    let sock = std::net::UdpSocket::from(fd);
    sock.set_nonblocking(true)?;
    Ok(sock)
}
