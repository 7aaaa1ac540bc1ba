//! The queue of encoded frames waiting to be written to one connection.
//!
//! Sessions push frames (a header and a shared payload) into it; the connection's writer task
//! drains it with vectored writes. It is bounded in bytes by the caller, who decides what to do
//! when it is full (see `is_over`).

use bytes::{Buf, Bytes};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::task::{Context, Poll, Waker};

/// One packet on its way out: its encoded header and a payload shared with other subscribers.
#[derive(Clone, Debug, Default)]
pub struct Frame {
    /// Fixed header, variable header and properties (or a whole control packet).
    pub header: Bytes,
    /// Application message, shared by reference count; empty for control packets.
    pub payload: Bytes,
}

impl Frame {
    /// A control packet with no separate payload.
    pub fn control(packet: Bytes) -> Frame {
        Frame {
            header: packet,
            payload: Bytes::new(),
        }
    }

    /// Bytes still to be written.
    pub fn len(&self) -> usize {
        self.header.len() + self.payload.len()
    }

    /// Whether everything has been written.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops the first `n` bytes, which have been written.
    fn advance(&mut self, mut n: usize) {
        let from_header = n.min(self.header.len());
        self.header.advance(from_header);
        n -= from_header;
        self.payload.advance(n);
    }
}

/// Frames queued for one connection, shared by its session (producer) and writer (consumer).
#[derive(Default)]
pub struct Outbox {
    frames: RefCell<VecDeque<Frame>>,
    bytes: Cell<usize>,
    waker: RefCell<Option<Waker>>,
    closing: Cell<bool>,
}

impl Outbox {
    /// Queues a frame and wakes the writer.
    pub fn push(&self, frame: Frame) {
        if self.closing.get() {
            return;
        }
        self.bytes.set(self.bytes.get() + frame.len());
        self.frames.borrow_mut().push_back(frame);
        self.wake();
    }

    /// Asks the writer to flush what is queued, then close the connection.
    pub fn close(&self) {
        self.closing.set(true);
        self.wake();
    }

    /// Whether the connection is being closed.
    pub fn is_closing(&self) -> bool {
        self.closing.get()
    }

    /// Bytes waiting to be written.
    pub fn queued_bytes(&self) -> usize {
        self.bytes.get()
    }

    /// Whether more than `limit` bytes are waiting.
    pub fn is_over(&self, limit: usize) -> bool {
        self.bytes.get() > limit
    }

    fn wake(&self) {
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }

    /// Ready when there is something to write or the connection is closing.
    pub fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.frames.borrow().is_empty() || self.closing.get() {
            return Poll::Ready(());
        }
        *self.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.frames.borrow().is_empty()
    }

    /// Calls `visit` with the first `max` frames, for building one vectored write.
    pub fn peek_frames(&self, max: usize, mut visit: impl FnMut(&Frame)) {
        for frame in self.frames.borrow().iter().take(max) {
            visit(frame);
        }
    }

    /// Removes `n` written bytes from the front.
    pub fn consume(&self, mut n: usize) {
        self.bytes.set(self.bytes.get() - n);
        let mut frames = self.frames.borrow_mut();
        while n > 0 {
            let Some(front) = frames.front_mut() else {
                break;
            };
            let len = front.len();
            if n >= len {
                frames.pop_front();
                n -= len;
            } else {
                front.advance(n);
                n = 0;
            }
        }
        while frames.front().is_some_and(Frame::is_empty) {
            frames.pop_front();
        }
    }

    /// The first unwritten slice (header or payload of the first frame), shared not copied:
    /// what the writer waits on when the socket is full.
    pub fn front_part(&self) -> Option<Bytes> {
        let frames = self.frames.borrow();
        let front = frames.front()?;
        let part = if front.header.is_empty() {
            &front.payload
        } else {
            &front.header
        };
        Some(part.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(h: &'static [u8], p: &'static [u8]) -> Frame {
        Frame {
            header: Bytes::from_static(h),
            payload: Bytes::from_static(p),
        }
    }

    #[test]
    fn consume_handles_partial_frames() {
        let outbox = Outbox::default();
        outbox.push(frame(b"ab", b"cde"));
        outbox.push(frame(b"f", b""));
        assert_eq!(outbox.queued_bytes(), 6);
        outbox.consume(3);
        assert_eq!(&outbox.front_part().unwrap()[..], b"de");
        outbox.consume(2);
        assert_eq!(&outbox.front_part().unwrap()[..], b"f");
        outbox.consume(1);
        assert!(outbox.is_empty());
        assert!(outbox.front_part().is_none());
        assert_eq!(outbox.queued_bytes(), 0);
    }
}
