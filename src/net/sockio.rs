//! Writing to a connection's socket without copying: the outbox's frames as iovecs, one
//! non-blocking `sendmsg`, and the dup'd stream a writer waits on when the socket is full.
//! Shared by the plain TCP and the TLS writers.

use crate::shard::outbox::Outbox;
use glommio::net::TcpStream;
use std::io::{self, IoSlice};
use std::os::unix::io::{FromRawFd, RawFd};

/// Frames gathered into one write; Linux allows 1024 iovecs, two per frame.
pub const FRAMES_PER_WRITE: usize = 256;

/// Points `iov` at the outbox's first frames — each header and shared payload, no copy — and
/// returns them as slices. They stay valid until the outbox is next changed: callers write
/// them, then `consume` what was written.
pub fn gather<'a>(outbox: &'a Outbox, iov: &'a mut Vec<libc::iovec>) -> &'a [IoSlice<'a>] {
    iov.clear();
    outbox.peek_frames(FRAMES_PER_WRITE, |frame| {
        for part in [&frame.header, &frame.payload] {
            if !part.is_empty() {
                iov.push(libc::iovec {
                    iov_base: part.as_ptr() as *mut libc::c_void,
                    iov_len: part.len(),
                });
            }
        }
    });
    // SAFETY: `IoSlice` is ABI-compatible with `iovec` on Unix (documented); every iovec points
    // into a `Bytes` the outbox holds, and the slices borrow the outbox.
    unsafe { std::slice::from_raw_parts(iov.as_ptr() as *const IoSlice<'a>, iov.len()) }
}

/// One non-blocking `sendmsg` of `bufs` on socket `fd`; returns the bytes written.
pub fn sendmsg(fd: RawFd, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    // SAFETY: msghdr is plain data; zeroed is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = bufs.len() as _;
    // SAFETY: `IoSlice` is ABI-compatible with `iovec`; the slices outlive the call.
    let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// The stream a writer waits on when the socket is full, made on first need from a dup of
/// `fd` (the reader keeps `fd` open), so a connection costs one fd in the common case. Boxed:
/// a writer that never waits carries a pointer, not a stream.
pub fn dup_stream(slot: &mut Option<Box<TcpStream>>, fd: RawFd) -> io::Result<&mut TcpStream> {
    if let Some(stream) = slot {
        return Ok(stream);
    }
    // SAFETY: dup of an fd the reader keeps open; the copy is owned by the new stream.
    let copy = unsafe { libc::dup(fd) };
    if copy < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `copy` is a fresh fd for the same socket, owned from here on.
    Ok(slot.insert(Box::new(unsafe { TcpStream::from_raw_fd(copy) })))
}
