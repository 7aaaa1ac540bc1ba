//! Transports: how a connection's bytes reach its client. The reader reads through a
//! `Reader`, the writer drains the outbox through a `Writer` (both in the connection's task,
//! `conn::ReadAndWrite`); the rest of the broker never sees which transport a connection uses.
//!
//! Plain TCP keeps the copy-free path: the writer hands the kernel one `sendmsg` whose iovecs
//! point at each frame's header and its shared payload (glommio's own vectored write only
//! sends the first slice). The other transports:
//! - WebSocket (`ws`, over plain TCP or TLS): the reader unwraps binary frames into
//!   the MQTT byte stream; the writer puts a 2–10 byte frame header iovec in front of each
//!   batch of frame iovecs, payloads still shared.
//! - TLS: one rustls connection serves both halves (an `Rc` shared by the reader and writer
//!   tasks of one shard); the reader decrypts records into the read buffer, the writer
//!   encrypts from the shared payloads straight into the connection's own record buffer, so
//!   a subscriber costs one copy (the cipher's) and no plaintext copy.
//!
//! The reader owns the socket; the writer works on its fd and must be done (or dropped) before
//! the reader is dropped, which `conn::serve_transport` ensures.

use super::socket::Socket;
use super::sockio::{dup_stream, gather_flat, sendmsg};
use super::tls::{TlsReader, TlsWriter};

use crate::shard::outbox::Outbox;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use std::future::Future;
use std::io::{self, IoSlice};
use std::os::unix::io::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
pub use ws::{WsReader, WsWriter};

pub mod ws;

/// Which direction `shutdown` closes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shutdown {
    /// No more writes: the client reads end of stream after what was sent.
    Write,
    /// No more reads: a pending read returns end of stream.
    Read,
    /// Both.
    Both,
}

/// The reading half of a connection's transport.
pub enum Reader {
    /// Plain TCP carrying MQTT: waits for input through the shard's epoll set (see `socket`),
    /// so an idle connection holds no readiness request of glommio's.
    Plain(Socket),
    /// Plain TCP under WebSocket or HTTP (boxed, like the other transports).
    Tcp(Box<TcpStream>),
    /// TLS over TCP (boxed: a plain connection's reader is then the size of its stream, and
    /// every connection's task holds one for as long as it lives).
    Tls(Box<TlsReader>),
    /// WebSocket over TCP or TLS.
    Ws(Box<WsReader>),
}

/// The writing half of a connection's transport.
pub enum Writer {
    /// Plain TCP.
    Tcp(TcpWriter),
    /// TLS over TCP (boxed: a plain connection's writer is then the size of its own, and
    /// every connection holds one for as long as it lives).
    Tls(Box<TlsWriter>),
    /// WebSocket over TCP or TLS.
    Ws(Box<WsWriter>),
}

/// Splits an accepted TCP connection into its halves, for WebSocket or HTTP over it.
pub fn tcp(stream: TcpStream) -> (Reader, Writer) {
    let _ = stream.set_nodelay(true);
    let writer = TcpWriter {
        fd: stream.as_raw_fd(),
        slow: None,
    };
    (Reader::Tcp(Box::new(stream)), Writer::Tcp(writer))
}

/// Splits an accepted TCP connection that carries MQTT itself into its halves.
pub fn plain(stream: TcpStream) -> io::Result<(Reader, Writer)> {
    let _ = stream.set_nodelay(true);
    let socket = Socket::new(stream)?;
    let writer = TcpWriter {
        fd: socket.fd(),
        slow: None,
    };
    Ok((Reader::Plain(socket), Writer::Tcp(writer)))
}

impl Reader {
    /// Reads what the client sent into `buf`; 0 at end of stream. Fails with `TimedOut`
    /// when nothing came within the read timeout.
    pub async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Reader::Plain(socket) => socket.read(buf).await,
            Reader::Tcp(stream) => stream.read(buf).await,
            Reader::Tls(tls) => tls.read(buf).await,
            Reader::Ws(ws) => ws.read(buf).await,
        }
    }

    /// How long `read` waits for the client; None for ever. Plain MQTT connections are timed
    /// by the shard's sweep instead (see `keepalive`).
    pub fn set_read_timeout(&mut self, timeout: Option<Duration>) {
        match self {
            Reader::Plain(_) => {}
            // A zero timeout is refused by the socket: the deadline passed, so time out at
            // once (a microsecond).
            Reader::Tcp(stream) => {
                let _ = stream.set_read_timeout(timeout.map(|t| t.max(Duration::from_micros(1))));
            }
            Reader::Tls(tls) => {
                tls.set_read_timeout(timeout.map(|t| t.max(Duration::from_micros(1))))
            }
            Reader::Ws(ws) => ws.inner_mut().set_read_timeout(timeout),
        }
    }

    /// Shuts the connection down in direction `how`.
    pub fn shutdown(&self, how: Shutdown) {
        match self {
            Reader::Plain(socket) => shutdown_fd(socket.fd(), how),
            Reader::Tcp(stream) => shutdown_fd(stream.as_raw_fd(), how),
            Reader::Tls(tls) => shutdown_fd(tls.fd(), how),
            Reader::Ws(ws) => ws.inner().shutdown(how),
        }
    }
}

impl Writer {
    /// Writes what it can of the outbox's first frames and takes it out of the outbox; waits
    /// while the socket is full. Fails when the socket does, or the outbox is aborted while
    /// waiting.
    pub fn write_some<'a>(&'a mut self, outbox: &'a Outbox) -> WriteSome<'a> {
        // TLS and WebSocket writes are boxed, so a plain connection's task does not carry
        // their state (the task lives as long as the connection).
        match self {
            Writer::Tcp(tcp) => tcp.write_some(outbox),
            Writer::Tls(tls) => WriteSome::Waiting(Box::pin(tls.write_some(outbox))),
            Writer::Ws(ws) => WriteSome::Waiting(Box::pin(ws.write_some(outbox))),
        }
    }

    /// Whether the transport has bytes of its own to send (TLS records, WebSocket control
    /// frames, the rest of a WebSocket frame).
    pub fn has_pending(&self) -> bool {
        match self {
            Writer::Tcp(_) => false,
            Writer::Tls(tls) => tls.has_pending(),
            Writer::Ws(ws) => ws.has_pending(),
        }
    }

    /// Ready when the outbox has something to write or is closing, or the transport has
    /// bytes of its own to send (a pong the reader queued).
    pub fn poll_ready(&self, outbox: &Outbox, cx: &mut Context<'_>) -> Poll<()> {
        if let Writer::Ws(ws) = self {
            if ws.poll_controls(cx).is_ready() {
                return Poll::Ready(());
            }
        }
        outbox.poll_ready(cx)
    }

    /// Writes all of `bytes` (an HTTP response), waiting for the socket as needed.
    pub async fn send_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Writer::Tcp(tcp) => tcp.send_all(bytes).await,
            Writer::Tls(tls) => tls.send_all(bytes).await,
            Writer::Ws(_) => Err(io::Error::other("HTTP is not spoken inside WebSocket")),
        }
    }

    /// Shuts the connection down in direction `how`.
    pub fn shutdown(&mut self, how: Shutdown) {
        match self {
            Writer::Tcp(tcp) => shutdown_fd(tcp.fd, how),
            Writer::Tls(tls) => {
                if how != Shutdown::Read {
                    tls.close_notify();
                }
                shutdown_fd(tls.fd(), how)
            }
            Writer::Ws(ws) => ws.shutdown(how),
        }
    }
}

/// A write of the outbox: done at once where the socket took the bytes (plain TCP's usual
/// case, no future built), or waiting, boxed while it lasts, so the connection's task, which
/// holds it for as long as the connection lives, carries a pointer rather than the wait's
/// state.
pub enum WriteSome<'a> {
    Done(Option<io::Result<()>>),
    Waiting(Pin<Box<dyn Future<Output = io::Result<()>> + 'a>>),
}

impl Future for WriteSome<'_> {
    type Output = io::Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteSome::Done(done) => Poll::Ready(done.take().unwrap_or(Ok(()))),
            WriteSome::Waiting(waiting) => waiting.as_mut().poll(cx),
        }
    }
}

thread_local! {
    /// Plain TCP writers' iovecs, filled and written within one call (shards are threads).
    static IOV: std::cell::RefCell<Vec<libc::iovec>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Their copy of small frames (`gather_flat`), one per shard thread.
    static FLAT: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Plain TCP's writer: `sendmsg` on the raw fd, payloads never copied.
pub struct TcpWriter {
    pub(super) fd: RawFd,
    /// The stream used to wait for a full socket, made from a dup of the fd only while the
    /// socket stays full, so a connection costs one fd in the common case.
    slow: Option<Box<TcpStream>>,
}

impl TcpWriter {
    fn write_some<'a>(&'a mut self, outbox: &'a Outbox) -> WriteSome<'a> {
        // The iovecs live only for the call: one vector per shard thread, none per connection.
        let sent = IOV.with_borrow_mut(|iov| {
            FLAT.with_borrow_mut(|flat| sendmsg(self.fd, gather_flat(outbox, iov, flat)))
        });
        match sent {
            Ok(n) => outbox.consume(n),
            // Boxed while it lasts: the wait is rare, its state large.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return WriteSome::Waiting(Box::pin(async move {
                    self.wait_and_write(outbox).await?;
                    self.drained(outbox);
                    Ok(())
                }));
            }
            Err(e) => return WriteSome::Done(Some(Err(e))),
        }
        self.drained(outbox);
        WriteSome::Done(Some(Ok(())))
    }

    /// Once the socket drained, gives the extra fd back.
    fn drained(&mut self, outbox: &Outbox) {
        if outbox.is_empty() {
            self.slow = None;
        }
    }

    /// The socket is full: hands the first queued slice (a reference-counted clone, still no
    /// copy) to glommio, which waits for the socket through io_uring.
    async fn wait_and_write(&mut self, outbox: &Outbox) -> io::Result<()> {
        let Some(part) = outbox.front_part() else {
            return Ok(());
        };
        let n = self.wait_write(&part, outbox).await?;
        outbox.consume(n);
        Ok(())
    }

    /// Writes `bytes` once the socket takes them, through glommio (io_uring waits for the
    /// socket); returns how many were written. Fails when the outbox is aborted meanwhile.
    pub(super) async fn wait_write(&mut self, part: &[u8], outbox: &Outbox) -> io::Result<usize> {
        let stream = dup_stream(&mut self.slow, self.fd)?;
        // A slow subscriber being disconnected must not wait for its socket.
        let write = async { Some(stream.write(part).await) };
        let aborted = async {
            std::future::poll_fn(|cx| outbox.poll_aborted(cx)).await;
            None
        };
        match futures_lite::future::or(write, aborted).await {
            Some(Ok(n)) if n > 0 => Ok(n),
            Some(Err(e)) => Err(e),
            _ => Err(io::ErrorKind::ConnectionAborted.into()),
        }
    }

    /// One non-blocking `sendmsg` of `slices`.
    pub(super) fn send_now(&self, slices: &[IoSlice<'_>]) -> io::Result<usize> {
        sendmsg(self.fd, slices)
    }

    async fn send_all(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            match sendmsg(self.fd, &[IoSlice::new(bytes)]) {
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return dup_stream(&mut self.slow, self.fd)?.write_all(bytes).await;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

pub(super) fn shutdown_fd(fd: RawFd, how: Shutdown) {
    let how = match how {
        Shutdown::Write => libc::SHUT_WR,
        Shutdown::Read => libc::SHUT_RD,
        Shutdown::Both => libc::SHUT_RDWR,
    };
    // SAFETY: the fd is owned by the reader, which outlives every caller (see module docs).
    unsafe { libc::shutdown(fd, how) };
}
