//! The two halves of a WebSocket transport, over plain TCP or TLS.
//!
//! The reader reads client frames from the inner transport and unmasks their payloads
//! straight into the connection's read buffer (`websocket::Decoder`), so the rest of the
//! broker reads a plain MQTT byte stream. Pings and closes it cannot answer itself: it queues
//! the pong or close frame in `Controls`, which the writer sends between its data frames.
//!
//! The writer keeps the copy-free path: one binary frame carries a batch of outbox frames
//! (many MQTT packets), and its 2–10 byte header is one more iovec in front of the outbox's
//! header and shared payload iovecs. A frame's length is announced before all of it may be
//! written, so the writer remembers how much of the current frame is still to go
//! (`frame_left`) and sends nothing else — no control frame, no new header — until it has,
//! and tells the outbox (`commit`) not to drop any frame the header counted.

use super::{Reader, Shutdown, Writer};
use crate::net::sockio::FRAMES_PER_WRITE;
use crate::net::websocket::{self, opcode, status, Decoder, Event};
use crate::shard::outbox::Outbox;
use std::cell::RefCell;
use std::io::{self, IoSlice};
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// Raw bytes read from the socket at least per read.
const RAW_READ_BYTES_MIN: usize = 1 << 10;

/// Control frames the reader queued for the writer.
#[derive(Default)]
pub struct Controls {
    /// Whole frames (pong, close), in order.
    frames: Vec<u8>,
    /// Whether a close frame is among them: nothing may follow it.
    has_close: bool,
    /// The writer, waiting for something to send.
    waker: Option<Waker>,
}

impl Controls {
    fn queue(&mut self, frame: &[u8], is_close: bool) {
        if self.has_close {
            return;
        }
        self.frames.extend_from_slice(frame);
        self.has_close = is_close;
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }
}

/// Makes the two halves of a WebSocket connection over `reader` and `writer`, once the
/// upgrade was answered; `leftover` is what the client sent after its upgrade request, and
/// `frame_bytes_max` the largest data frame accepted.
pub fn split(
    reader: Reader,
    writer: Writer,
    leftover: Vec<u8>,
    frame_bytes_max: usize,
) -> (Reader, Writer) {
    let controls = Rc::new(RefCell::new(Controls::default()));
    let reader = WsReader {
        inner: reader,
        decoder: Decoder::new(frame_bytes_max),
        raw: leftover,
        at: 0,
        controls: controls.clone(),
        is_closed: false,
    };
    let writer = WsWriter {
        inner: writer,
        controls,
        prefix: Vec::new(),
        prefix_at: 0,
        frame_left: 0,
        iov: Vec::new(),
        has_closed: false,
    };
    (Reader::Ws(Box::new(reader)), Writer::Ws(Box::new(writer)))
}

/// The reading half: client frames in, MQTT bytes out.
pub struct WsReader {
    inner: Reader,
    decoder: Decoder,
    /// Bytes read from the inner transport; those before `at` are decoded.
    raw: Vec<u8>,
    at: usize,
    controls: Rc<RefCell<Controls>>,
    /// Whether the client closed, or broke the protocol: nothing more is read.
    is_closed: bool,
}

impl WsReader {
    /// Reads MQTT bytes into `buf`; 0 once the client closed. Fails when a frame breaks
    /// RFC 6455 or our limits, after queueing the close frame that says why.
    pub async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.is_closed {
                return Ok(0);
            }
            let step = match self.decoder.decode(&self.raw[self.at..], buf) {
                Ok(step) => step,
                Err(violation) => {
                    self.close(violation.code);
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("WebSocket: {}", violation.reason),
                    ));
                }
            };
            self.at += step.consumed;
            let has_event = step.event.is_some();
            match step.event {
                Some(Event::Ping(payload)) => self
                    .controls
                    .borrow_mut()
                    .queue(&websocket::control_frame(opcode::PONG, &payload), false),
                Some(Event::Close(code)) => self.close(code.unwrap_or(status::NORMAL)),
                Some(Event::Pong) | None => {}
            }
            if step.written > 0 {
                return Ok(step.written);
            }
            if step.consumed == 0 && !has_event {
                self.read_raw(buf.len()).await?;
            }
        }
    }

    /// Reads more raw bytes from the inner transport, at least as many as the caller asked
    /// for (so the read buffer's growth decides this one's too); end of stream is an error.
    async fn read_raw(&mut self, wanted: usize) -> io::Result<()> {
        self.raw.drain(..self.at);
        self.at = 0;
        let start = self.raw.len();
        self.raw.resize(start + wanted.max(RAW_READ_BYTES_MIN), 0);
        // The inner transports directly, not `Reader::read`, which would make that future
        // recursive (and boxed per read).
        let raw = &mut self.raw[start..];
        let read = match &mut self.inner {
            Reader::Plain(socket) => socket.read(raw).await,
            Reader::Tcp(stream) => futures_lite::AsyncReadExt::read(&mut **stream, raw).await,
            Reader::Tls(tls) => tls.read(raw).await,
            Reader::Ws(_) => Err(io::Error::other("WebSocket inside WebSocket")),
        };
        let n = *read.as_ref().unwrap_or(&0);
        self.raw.truncate(start + n);
        match read {
            Ok(0) => {
                self.is_closed = true;
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Queues a close frame with `code`; nothing more is read.
    fn close(&mut self, code: u16) {
        self.is_closed = true;
        self.controls
            .borrow_mut()
            .queue(&websocket::close_frame(code), true);
    }

    /// The transport under the frames.
    pub fn inner(&self) -> &Reader {
        &self.inner
    }

    /// The transport under the frames, to change.
    pub fn inner_mut(&mut self) -> &mut Reader {
        &mut self.inner
    }
}

/// The writing half: outbox frames out as binary frames, control frames between them.
pub struct WsWriter {
    inner: Writer,
    controls: Rc<RefCell<Controls>>,
    /// Bytes of our own to send before the rest of the current frame: control frames, then a
    /// data frame's header. Those before `prefix_at` are sent.
    prefix: Vec<u8>,
    prefix_at: usize,
    /// Outbox bytes the current data frame still carries.
    frame_left: usize,
    iov: Vec<libc::iovec>,
    /// Whether a close frame was staged: nothing follows it.
    has_closed: bool,
}

impl WsWriter {
    /// Sends what it can: the rest of the current frame, or the queued control frames and a
    /// new frame of the outbox's first packets. Fails once a close frame was sent.
    pub async fn write_some(&mut self, outbox: &Outbox) -> io::Result<()> {
        self.stage(outbox);
        if self.prefix_at == self.prefix.len() && self.frame_left == 0 {
            if self.has_closed && !self.inner.has_pending() {
                return Err(io::ErrorKind::ConnectionAborted.into());
            }
            return match &mut self.inner {
                Writer::Tls(tls) => tls.flush().await,
                _ => Ok(()),
            };
        }
        let slices = gather(
            &self.prefix[self.prefix_at..],
            self.frame_left,
            outbox,
            &mut self.iov,
        );
        match &mut self.inner {
            Writer::Tcp(tcp) => match tcp.send_now(slices) {
                Ok(n) => self.advance(n, outbox),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let part = self.first_part(outbox);
                    let Writer::Tcp(tcp) = &mut self.inner else {
                        return Ok(());
                    };
                    let n = tcp.wait_write(&part, outbox).await?;
                    self.advance(n, outbox);
                }
                Err(e) => return Err(e),
            },
            Writer::Tls(tls) => {
                let n = tls.encrypt_slices(slices)?;
                self.advance(n, outbox);
                let Writer::Tls(tls) = &mut self.inner else {
                    return Ok(());
                };
                tls.flush().await?;
            }
            Writer::Ws(_) => return Err(io::Error::other("WebSocket inside WebSocket")),
        }
        Ok(())
    }

    /// Between data frames: takes the queued control frames, then (unless one closes) starts
    /// a frame over the outbox's first packets and commits them.
    fn stage(&mut self, outbox: &Outbox) {
        if self.prefix_at == self.prefix.len() {
            self.prefix.clear();
            self.prefix_at = 0;
        }
        if self.frame_left > 0 || self.has_closed {
            return;
        }
        {
            let mut controls = self.controls.borrow_mut();
            self.prefix.append(&mut controls.frames);
            self.has_closed = controls.has_close;
        }
        if self.has_closed || outbox.is_empty() {
            return;
        }
        let mut len = 0;
        outbox.peek_frames(FRAMES_PER_WRITE, |frame| len += frame.len());
        let (header, used) = websocket::frame_header(opcode::BINARY, len);
        self.prefix.extend_from_slice(&header[..used]);
        self.frame_left = len;
        outbox.commit(len);
    }

    /// Counts `n` bytes as written: our own first, then the outbox's.
    fn advance(&mut self, n: usize, outbox: &Outbox) {
        let own = n.min(self.prefix.len() - self.prefix_at);
        self.prefix_at += own;
        let from_outbox = (n - own).min(self.frame_left);
        self.frame_left -= from_outbox;
        outbox.consume(from_outbox);
    }

    /// What to wait on when the socket is full: the rest of our own bytes (a few, copied), or
    /// the outbox's first part within the current frame (shared).
    fn first_part(&self, outbox: &Outbox) -> bytes::Bytes {
        if self.prefix_at < self.prefix.len() {
            return bytes::Bytes::copy_from_slice(&self.prefix[self.prefix_at..]);
        }
        let mut part = outbox.front_part().unwrap_or_default();
        part.truncate(self.frame_left);
        part
    }

    /// Whether bytes of ours wait: control frames, the rest of a frame, TLS records.
    pub fn has_pending(&self) -> bool {
        self.prefix_at < self.prefix.len()
            || self.frame_left > 0
            || !self.controls.borrow().frames.is_empty()
            || self.inner.has_pending()
    }

    /// Ready when the reader queued a control frame; else wakes the writer when it does.
    pub fn poll_controls(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut controls = self.controls.borrow_mut();
        if !controls.frames.is_empty() {
            return Poll::Ready(());
        }
        controls.waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Shuts the connection down in direction `how`; closing the write side first says so
    /// with a close frame (1000) when none was sent and no frame is half written.
    pub fn shutdown(&mut self, how: Shutdown) {
        let is_between_frames = self.frame_left == 0 && self.prefix_at == self.prefix.len();
        if how != Shutdown::Read && !self.has_closed && is_between_frames {
            self.has_closed = true;
            let close = websocket::close_frame(status::NORMAL);
            match &mut self.inner {
                Writer::Tcp(tcp) => {
                    let _ = tcp.send_now(&[IoSlice::new(&close)]);
                }
                Writer::Tls(tls) => {
                    let _ = tls.encrypt_slices(&[IoSlice::new(&close)]);
                }
                Writer::Ws(_) => {}
            }
        }
        self.inner.shutdown(how);
    }
}

/// Points `iov` at `prefix` and then the outbox's first frames, at most `frame_left` bytes of
/// them; returns them as slices, valid until the outbox next changes.
fn gather<'a>(
    prefix: &'a [u8],
    frame_left: usize,
    outbox: &'a Outbox,
    iov: &'a mut Vec<libc::iovec>,
) -> &'a [IoSlice<'a>] {
    iov.clear();
    let mut push = |part: &[u8]| {
        iov.push(libc::iovec {
            iov_base: part.as_ptr() as *mut libc::c_void,
            iov_len: part.len(),
        })
    };
    if !prefix.is_empty() {
        push(prefix);
    }
    let mut left = frame_left;
    outbox.peek_frames(FRAMES_PER_WRITE, |frame| {
        for part in [&frame.header, &frame.payload] {
            let n = part.len().min(left);
            if n > 0 {
                push(&part[..n]);
                left -= n;
            }
        }
    });
    // SAFETY: `IoSlice` is ABI-compatible with `iovec` on Unix (documented); every iovec
    // points into `prefix` or a `Bytes` the outbox holds, and the slices borrow both.
    unsafe { std::slice::from_raw_parts(iov.as_ptr() as *const IoSlice<'a>, iov.len()) }
}
