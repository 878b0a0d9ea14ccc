//! io_uring (Linux): the ring itself is the `io-uring` crate's; queuing an
//! entry is its one unsafe call.

use super::*;

/// Closes `fd`, whose owner is then forgotten without being dropped (an
/// io_uring ring inherited across `fork`, whose memory is not mapped here).
pub(crate) fn close_raw(fd: RawFd) {
    // SAFETY: the caller owns `fd` and forgets its owner right after, so
    // the number is closed once and used by nothing afterwards.
    unsafe { libc::close(fd) };
}

/// Queues `entry`, which must be a poll add or poll remove: they name an
/// fd or a user_data value, never a buffer. `Err` if the queue is full.
pub(crate) fn uring_push(
    sq: &mut io_uring::SubmissionQueue<'_>,
    entry: &io_uring::squeue::Entry,
) -> Result<(), io_uring::squeue::PushError> {
    // SAFETY: the kernel reads no memory through a poll add or poll remove
    // entry (only the fd, the event mask and user_data it carries), so
    // nothing has to outlive the submission.
    unsafe { sq.push(entry) }
}
