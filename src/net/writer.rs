//! Writes a connection's outbox to its socket.
//!
//! The fast path is one `sendmsg` per loop turn on the raw fd, with an iovec per header and per
//! shared payload, so payloads are never copied (glommio's own vectored write only sends the
//! first slice). When the socket buffer is full, the writer hands the first queued slice (a
//! reference-counted clone, still no copy) to glommio, which waits for the socket through
//! io_uring. That wait uses a dup of the fd that exists only while the socket stays full, so a
//! connection costs one fd in the common case.

use crate::shard::outbox::Outbox;
use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;
use std::io;
use std::os::unix::io::{FromRawFd, RawFd};
use std::rc::Rc;

/// Frames gathered into one `sendmsg`; Linux allows 1024 iovecs, two per frame.
const FRAMES_PER_WRITE: usize = 256;

/// Drains `outbox` into socket `fd` until the outbox closes or the socket fails, then shuts
/// the socket down so the reader sees end of stream too. The caller keeps `fd` open until
/// this returns (or drops this future).
pub async fn run(fd: RawFd, outbox: Rc<Outbox>) {
    // Grows with the largest batch this connection writes, so idle connections stay small.
    let mut iov: Vec<libc::iovec> = Vec::new();
    let mut slow: Option<TcpStream> = None;
    loop {
        std::future::poll_fn(|cx| outbox.poll_ready(cx)).await;
        if outbox.is_empty() {
            break; // closing, and everything was flushed
        }
        match send_some(fd, &outbox, &mut iov) {
            Ok(n) => outbox.consume(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let Some(stream) = slow_stream(&mut slow, fd) else {
                    break;
                };
                let Some(part) = outbox.front_part() else {
                    continue;
                };
                // A slow subscriber being disconnected must not wait for its socket.
                let write = async { Some(stream.write(&part).await) };
                let aborted = async {
                    std::future::poll_fn(|cx| outbox.poll_aborted(cx)).await;
                    None
                };
                match futures_lite::future::or(write, aborted).await {
                    Some(Ok(n)) if n > 0 => outbox.consume(n),
                    _ => break,
                }
            }
            Err(_) => break,
        }
        if outbox.is_empty() {
            slow = None; // the socket drained: give the extra fd back
        }
    }
    outbox.close();
    // SAFETY: the caller keeps fd open while this runs.
    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
}

/// The stream used to wait for a full socket, made on first need from a dup of `fd`.
fn slow_stream(slow: &mut Option<TcpStream>, fd: RawFd) -> Option<&mut TcpStream> {
    if slow.is_none() {
        // SAFETY: dup of an fd the caller keeps open; the copy is owned by the new stream.
        let copy = unsafe { libc::dup(fd) };
        if copy < 0 {
            return None;
        }
        // SAFETY: `copy` is a fresh fd for the same socket, owned from here on.
        *slow = Some(unsafe { TcpStream::from_raw_fd(copy) });
    }
    slow.as_mut()
}

/// One non-blocking `sendmsg` of the first frames; returns the bytes written.
fn send_some(fd: RawFd, outbox: &Outbox, iov: &mut Vec<libc::iovec>) -> io::Result<usize> {
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
    // SAFETY: msghdr is plain data; zeroed is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = iov.len() as _;
    // SAFETY: every iovec points into a `Bytes` held by the outbox, which is not touched until
    // this call returns.
    let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}
