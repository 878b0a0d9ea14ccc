//! poll(2)

use super::*;

pub(crate) fn poll(fds: &mut [libc::pollfd], timeout: Option<Duration>) -> io::Result<usize> {
    // SAFETY: the pointer and length describe a live, writable slice.
    let n = syscall!(poll(
        fds.as_mut_ptr(),
        fds.len() as libc::nfds_t,
        timeout_ms(timeout)
    ))?;
    Ok(n as usize)
}
