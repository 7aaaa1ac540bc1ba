//! Where and how a client connects: `Endpoint` (the broker's address, TLS or not, WebSocket or
//! not) and `Stream`, the byte stream a `Conn` reads and writes (plain TCP, TLS over it, and
//! WebSocket over either). The scenarios never look inside: the same loops run over all.

use crate::tls::{Tls, TlsStream};
use crate::websocket::WsStream;
use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use rustls::HandshakeKind;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::io::{AsRawFd, FromRawFd, IntoRawFd};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// How often a blocked read wakes to check whether the run is over.
pub const READ_TICK: Duration = Duration::from_millis(100);
/// How long one write may block before the run fails.
pub const WRITE_LIMIT: Duration = Duration::from_secs(5);

/// The broker the generator loads, and how to reach it.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// Its address (loopback).
    pub addr: SocketAddr,
    /// TLS settings with `--tls`; plain TCP without.
    pub tls: Option<Tls>,
    /// With `--websocket`: the path MQTT over WebSocket is served on.
    pub websocket: Option<String>,
    /// `--persistent`: every client keeps a persistent session (3.1.1 Clean Session 0; 5.0
    /// Clean Start 0 and a session that never expires), so a broker that stores sessions
    /// stores what they get.
    pub persistent: bool,
    /// The loopback address connections start from; None: the kernel's choice (127.0.0.1).
    pub source: Option<IpAddr>,
}

impl Endpoint {
    /// Plain TCP to `addr`.
    pub fn plain(addr: SocketAddr) -> Endpoint {
        Endpoint {
            addr,
            tls: None,
            websocket: None,
            persistent: false,
            source: None,
        }
    }

    /// The same broker, reached from `source`.
    pub fn from_source(&self, source: Option<IpAddr>) -> Endpoint {
        Endpoint {
            source,
            ..self.clone()
        }
    }

    /// Connects (and with TLS, runs the handshake until `deadline`). Reads time out every
    /// `READ_TICK`, so a reader can check whether the run is over; a write blocked for
    /// `WRITE_LIMIT` fails, so a broker that stops reading fails the run instead of hanging it.
    pub async fn connect(&self, read_bytes: usize, deadline: Instant) -> io::Result<Stream> {
        let tcp = match self.source {
            None => TcpStream::connect(self.addr).await?,
            Some(source) => connect_from(source, self.addr, deadline).await?,
        };
        tcp.set_nodelay(true)?;
        tcp.set_read_timeout(Some(READ_TICK))?;
        tcp.set_write_timeout(Some(WRITE_LIMIT))?;
        let stream = match &self.tls {
            None => Stream::Plain(tcp),
            Some(tls) => Stream::Tls(Box::new(tls.connect(tcp, read_bytes, deadline).await?)),
        };
        Ok(match &self.websocket {
            None => stream,
            Some(path) => Stream::Ws(Box::new(
                WsStream::upgrade(stream, path, read_bytes, deadline).await?,
            )),
        })
    }
}

/// Connects to `addr` from the address `source`, the port chosen at connect for the whole
/// address pair (IP_BIND_ADDRESS_NO_PORT), so ports in use from other sources stay free for
/// this one. Waits for the handshake until `deadline`.
async fn connect_from(
    source: IpAddr,
    addr: SocketAddr,
    deadline: Instant,
) -> io::Result<TcpStream> {
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, None)?;
    socket.set_nonblocking(true)?;
    let on: libc::c_int = 1;
    // SAFETY: a valid int option on an open socket.
    let set = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if set < 0 {
        return Err(io::Error::last_os_error());
    }
    socket.bind(&SocketAddr::new(source, 0).into())?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {
            wait_connected(&socket, deadline).await?;
        }
        Err(e) => return Err(e),
    }
    // glommio's own streams are blocking sockets driven through io_uring.
    socket.set_nonblocking(false)?;
    // SAFETY: the fd is a connected TCP socket, owned by the stream from here on.
    Ok(unsafe { TcpStream::from_raw_fd(socket.into_raw_fd()) })
}

/// Waits until a non-blocking connect of `socket` has finished, polling: glommio has no wait
/// for writability. On loopback the handshake is usually done before the first look; it
/// waits only while the broker's accept queue is full (the kernel then resends the SYN).
async fn wait_connected(socket: &socket2::Socket, deadline: Instant) -> io::Result<()> {
    let mut pause = Duration::from_millis(1);
    loop {
        let mut poll = libc::pollfd {
            fd: socket.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: one valid pollfd; a zero timeout never blocks the generator's thread.
        if unsafe { libc::poll(&mut poll, 1, 0) } > 0 {
            return match socket.take_error()? {
                Some(e) => Err(e),
                None => Ok(()),
            };
        }
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the TCP handshake did not finish within the setup limit",
            ));
        }
        glommio::timer::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// A connection's bytes: plain TCP, or TLS over it. Writes end with a `flush` (a no-op on
/// plain TCP; with TLS it sends the records the socket did not take at once).
pub enum Stream {
    /// MQTT over TCP: reads and writes go straight to glommio.
    Plain(TcpStream),
    /// MQTT over TLS (boxed: a rustls connection is large, a plain stream should not carry it).
    Tls(Box<TlsStream>),
    /// MQTT over WebSocket, over plain TCP or TLS.
    Ws(Box<WsStream>),
}

impl Stream {
    /// How the TLS handshake went (full or resumed); `None` on plain TCP.
    pub fn handshake_kind(&self) -> Option<HandshakeKind> {
        match self {
            Stream::Plain(_) => None,
            Stream::Tls(tls) => tls.handshake_kind(),
            Stream::Ws(ws) => ws.handshake_kind(),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Stream::Tls(tls) => Pin::new(&mut **tls).poll_read(cx, buf),
            Stream::Ws(ws) => Pin::new(&mut **ws).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Stream::Tls(tls) => Pin::new(&mut **tls).poll_write(cx, buf),
            Stream::Ws(ws) => Pin::new(&mut **ws).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Stream::Tls(tls) => Pin::new(&mut **tls).poll_flush(cx),
            Stream::Ws(ws) => Pin::new(&mut **ws).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_close(cx),
            Stream::Tls(tls) => Pin::new(&mut **tls).poll_close(cx),
            Stream::Ws(ws) => Pin::new(&mut **ws).poll_close(cx),
        }
    }
}
