//! MQTT over WebSocket (`--websocket`): the upgrade request, then every write wrapped in one
//! masked binary frame (as a browser's client sends them) and the server's frames unwrapped
//! into the MQTT byte stream. A client of its own, written from RFC 6455 and not from the
//! broker's code, so the two check each other.

use crate::transport::Stream;
use futures_lite::{ready, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use ringcast::net::websocket;
use std::io;
use std::ops::Range;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

/// Largest upgrade response head read.
const RESPONSE_HEAD_MAX: usize = 8 << 10;
/// Frame opcodes the client tells apart.
const OP_CONTINUATION: u8 = 0x0;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;

/// A WebSocket connection carrying MQTT.
pub struct WsStream {
    inner: Stream,
    /// Bytes read from `inner`; `unread` is the part not yet unwrapped.
    raw: Box<[u8]>,
    unread: Range<usize>,
    /// Payload bytes of the current server frame still to come.
    payload_left: u64,
    /// Whether the current frame's payload is dropped (a control frame).
    is_skipping: bool,
    /// Framed bytes not yet taken by `inner`; `out_at` is where they start.
    out: Vec<u8>,
    out_at: usize,
    /// The state of the mask generator (xorshift; masks need not be secret here).
    mask_state: u32,
}

impl WsStream {
    /// Asks for the upgrade on `path` (subprotocol `mqtt`) and reads the 101, until
    /// `deadline`; `read_bytes` sizes the read buffer.
    pub async fn upgrade(
        mut inner: Stream,
        path: &str,
        read_bytes: usize,
        deadline: Instant,
    ) -> io::Result<WsStream> {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: cmluZ2Nhc3QtYmVuY2gtMQ==\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Protocol: mqtt\r\n\r\n"
        );
        inner.write_all(request.as_bytes()).await?;
        inner.flush().await?;
        let mut head = Vec::new();
        let mut chunk = vec![0u8; read_bytes.max(RESPONSE_HEAD_MAX)];
        let end = loop {
            if let Some(at) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            if head.len() > RESPONSE_HEAD_MAX || Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no upgrade response",
                ));
            }
            match inner.read(&mut chunk).await {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => head.extend_from_slice(&chunk[..n]),
                // The read timeout is a tick to check the deadline.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
                    ) => {}
                Err(e) => return Err(e),
            }
        };
        if !head.starts_with(b"HTTP/1.1 101") {
            let status_end = head.windows(2).position(|w| w == b"\r\n").unwrap_or(end);
            let line = String::from_utf8_lossy(&head[..status_end]).into_owned();
            return Err(io::Error::other(format!("upgrade refused: {line}")));
        }
        let mut raw = vec![0u8; read_bytes.max(head.len())].into_boxed_slice();
        let leftover = &head[end..];
        raw[..leftover.len()].copy_from_slice(leftover);
        Ok(WsStream {
            inner,
            raw,
            unread: 0..leftover.len(),
            payload_left: 0,
            is_skipping: false,
            out: Vec::new(),
            out_at: 0,
            mask_state: 0x2545_F491,
        })
    }

    /// How the TLS handshake under it went; `None` over plain TCP.
    pub fn handshake_kind(&self) -> Option<rustls::HandshakeKind> {
        self.inner.handshake_kind()
    }

    /// Parses a server frame header at the front of the unread bytes; false while incomplete.
    fn take_header(&mut self) -> io::Result<bool> {
        let bytes = &self.raw[self.unread.clone()];
        let [b0, b1, ..] = *bytes else {
            return Ok(false);
        };
        if b1 & 0x80 != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "masked server frame",
            ));
        }
        let (len, at) = match b1 & 0x7F {
            126 if bytes.len() >= 4 => (u16::from_be_bytes([bytes[2], bytes[3]]) as u64, 4),
            127 if bytes.len() >= 10 => {
                let mut len = [0u8; 8];
                len.copy_from_slice(&bytes[2..10]);
                (u64::from_be_bytes(len), 10)
            }
            126 | 127 => return Ok(false),
            len => (len as u64, 2),
        };
        self.unread.start += at;
        self.payload_left = len;
        self.is_skipping = !matches!(b0 & 0x0F, OP_BINARY | OP_CONTINUATION);
        if b0 & 0x0F == OP_CLOSE {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "broker closed",
            ));
        }
        Ok(true)
    }

    /// Reads more raw bytes behind the unread ones; 0 at end of stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.unread.start > 0 {
            self.raw.copy_within(self.unread.clone(), 0);
            self.unread = 0..self.unread.len();
        }
        let end = self.unread.end;
        let n = ready!(Pin::new(&mut self.inner).poll_read(cx, &mut self.raw[end..]))?;
        self.unread.end += n;
        Poll::Ready(Ok(n))
    }

    /// Appends `payload` to the output as one masked binary frame.
    fn frame(&mut self, payload: &[u8]) {
        self.mask_state ^= self.mask_state << 13;
        self.mask_state ^= self.mask_state >> 17;
        self.mask_state ^= self.mask_state << 5;
        let mask = self.mask_state.to_be_bytes();
        websocket::push_client_frame(&mut self.out, true, OP_BINARY, payload, Some(mask));
    }

    /// Hands the framed bytes to the inner stream until it has them all.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_at < self.out.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.out[self.out_at..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_at += n;
        }
        self.out.clear();
        self.out_at = 0;
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for WsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            if this.payload_left > 0 && !this.unread.is_empty() {
                let n = (this.payload_left.min(this.unread.len() as u64) as usize).min(buf.len());
                let from = this.unread.start;
                this.unread.start += n;
                this.payload_left -= n as u64;
                if !this.is_skipping {
                    buf[..n].copy_from_slice(&this.raw[from..from + n]);
                    return Poll::Ready(Ok(n));
                }
                continue;
            }
            if this.payload_left == 0 && this.take_header()? {
                continue;
            }
            if ready!(this.poll_fill(cx))? == 0 {
                return Poll::Ready(Ok(0));
            }
        }
    }
}

impl AsyncWrite for WsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        this.frame(buf);
        // Start sending now; what the socket does not take goes on at the next write or flush.
        if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_close(cx)
    }
}
