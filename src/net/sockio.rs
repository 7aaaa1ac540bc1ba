//! Writing to a connection's socket without copying: the outbox's frames as iovecs, one
//! non-blocking `sendmsg`, and the dup'd stream a writer waits on when the socket is full.
//! Shared by the plain TCP and the TLS writers.

use crate::shard::outbox::{Outbox, SMALL_PACKET_BYTES_MAX};
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
        push_iov(iov, &frame.header);
        push_iov(iov, &frame.payload);
    });
    // SAFETY: `IoSlice` is ABI-compatible with `iovec` on Unix (documented); every iovec points
    // into a `Bytes` the outbox holds, and the slices borrow the outbox.
    unsafe { std::slice::from_raw_parts(iov.as_ptr() as *const IoSlice<'a>, iov.len()) }
}

/// Bytes of small frames one write copies together (see `gather_flat`): about one of
/// loopback's 64 KiB segments and a little more.
pub const FLAT_BYTES: usize = 96 << 10;

/// Like `gather`, but small frames (`SMALL_PACKET_BYTES_MAX`) are copied into `flat`, runs of
/// them sent as one iovec. These are packets queued past the outbox's coalescing mark (a
/// subscriber behind, or several publishers' turns before the writer ran): as frames of their
/// own they would cost two iovecs each, and the kernel's copy pays about 20 ns per iovec (a
/// 256-byte packet in two iovecs took 127 ns of sender CPU on loopback, copied into one
/// buffer 80 ns). They stay in the outbox, droppable, until written: `flat` is only the
/// write's copy. `flat` keeps its `FLAT_BYTES` allocation between calls, so the iovecs into it
/// stay valid (it is never grown here).
pub fn gather_flat<'a>(
    outbox: &'a Outbox,
    iov: &'a mut Vec<libc::iovec>,
    flat: &'a mut Vec<u8>,
) -> &'a [IoSlice<'a>] {
    iov.clear();
    flat.clear();
    flat.reserve_exact(FLAT_BYTES);
    let room = flat.capacity();
    // Whether the last iovec is a run copied into `flat`, which the next small frame extends.
    let mut in_run = false;
    outbox.peek_frames(FRAMES_PER_WRITE, |frame| {
        let len = frame.len();
        if len > SMALL_PACKET_BYTES_MAX || flat.len() + len > room {
            push_iov(iov, &frame.header);
            push_iov(iov, &frame.payload);
            in_run = false;
            return;
        }
        let at = flat.len();
        flat.extend_from_slice(&frame.header);
        flat.extend_from_slice(&frame.payload);
        match iov.last_mut() {
            Some(last) if in_run => last.iov_len += len,
            _ => push_iov(iov, &flat[at..]),
        }
        in_run = len > 0;
    });
    // SAFETY: as in `gather`; the iovecs into `flat` stay valid because it was not grown past
    // the capacity reserved above, and the slices borrow it.
    unsafe { std::slice::from_raw_parts(iov.as_ptr() as *const IoSlice<'a>, iov.len()) }
}

fn push_iov(iov: &mut Vec<libc::iovec>, part: &[u8]) {
    if !part.is_empty() {
        iov.push(libc::iovec {
            iov_base: part.as_ptr() as *mut libc::c_void,
            iov_len: part.len(),
        });
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::backpressure::Pressure;
    use crate::shard::outbox::Frame;
    use bytes::Bytes;
    use std::rc::Rc;

    fn frame(header: &'static [u8], payload: Vec<u8>) -> Frame {
        Frame {
            header: Bytes::from_static(header),
            payload: Bytes::from(payload),
            is_droppable: true,
        }
    }

    #[test]
    fn small_frames_are_written_as_one_copied_run_and_large_ones_in_place() {
        // A pause mark of 1: nothing is coalesced, every packet is a frame of its own.
        let outbox = Outbox::new(Rc::new(Pressure::default()), 1, 10);
        let large = vec![7; SMALL_PACKET_BYTES_MAX + 1];
        outbox.push(frame(b"ab", b"cd".to_vec()));
        outbox.push(frame(b"ef", b"gh".to_vec()));
        outbox.push(frame(b"LH", large.clone()));
        outbox.push(frame(b"ij", Vec::new()));
        let (mut iov, mut flat) = (Vec::new(), Vec::new());
        let slices = gather_flat(&outbox, &mut iov, &mut flat);
        let parts: Vec<&[u8]> = slices.iter().map(|s| &s[..]).collect();
        assert_eq!(parts, [&b"abcdefgh"[..], b"LH", &large, b"ij"]);
        let mut third = None;
        outbox.peek_frames(3, |f| third = Some(f.payload.as_ptr()));
        assert_eq!(
            third,
            Some(slices[2].as_ptr()),
            "a large payload is not copied"
        );
        assert_eq!(parts.concat(), outbox.pending_wire().to_vec());
        assert!(
            outbox.drop_oldest(),
            "copied frames stay droppable until written"
        );
    }
}
