//! MQTT over TLS for the generator: the rustls client configuration (ring provider, TLS 1.3 and
//! 1.2) made from `--cafile` (and `--cert`/`--key`), and `TlsStream`, a rustls
//! `ClientConnection` driven by hand over a glommio `TcpStream` (glommio has no TLS of its own).
//!
//! Reads: ciphertext comes off the socket in large chunks into our buffer (one `recv` for many
//! records, where rustls alone would read 4 KiB at a time), is handed to rustls (`read_tls`,
//! `process_new_packets`) only as far as its plaintext buffer allows, and the plaintext is
//! copied out (`reader()`). Writes: plaintext goes to `writer()` and the records go to the
//! socket straight from rustls' buffer (`write_tls`, one `sendmsg` for all of them); what the
//! socket does not take waits in rustls until the next write or `flush`.
//!
//! A `TlsStream` may be shared by a reading task and a writing task (`futures_lite::io::split`).
//! glommio keeps one waker per direction per socket, so the read side never waits for the
//! socket to be writable (it would take the writing task's waker, which then never wakes): an
//! alert or key update that reading produces goes out with a non-blocking `sendmsg`, or else
//! with the next write.

use crate::options::Options;
use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use rustls::client::{
    ClientSessionStore, Resumption, Tls12ClientSessionValue, Tls13ClientSessionValue,
};
use rustls::{ClientConfig, ClientConnection, HandshakeKind, NamedGroup, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSlice, Read, Write};
use std::ops::Range;
use std::os::unix::io::{AsRawFd, RawFd};
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Instant;

/// rustls refuses more ciphertext once it holds more plaintext than this (its default,
/// `DEFAULT_RECEIVED_PLAINTEXT_LIMIT`), so ciphertext is handed over only while it holds less.
const PLAINTEXT_HELD_MAX_BYTES: usize = 16 << 10;
/// The smallest ciphertext buffer: a server's first flight (certificate chain) in one or two
/// reads, even for idle connections that read little else.
const CIPHER_MIN_BYTES: usize = 4 << 10;
/// TLS 1.3 tickets the client keeps per server with `--resume`. rustls' own store keeps 8,
/// and with 16 handshakes in flight it ran dry (a ticket is used once): a quarter
/// of the "resumed" handshakes were full ones. Each connection brings back two (the servers'
/// default), so this many is never reached in practice.
const TICKETS_PER_SERVER_MAX: usize = 4096;

/// How the generator's connections speak TLS: one rustls configuration for all of them (with
/// `--resume`, its session store lets every connection resume what an earlier one began) and
/// the name the server's certificate must carry.
#[derive(Clone, Debug)]
pub struct Tls {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
}

impl Tls {
    /// The TLS settings of `opts`; `None` without `--tls`.
    pub fn from_options(opts: &Options) -> Result<Option<Tls>, String> {
        if !opts.tls {
            return Ok(None);
        }
        let cafile = opts
            .cafile
            .as_deref()
            .ok_or("--tls needs --cafile FILE: the CA that signs the broker's certificate")?;
        let identity = match (&opts.cert, &opts.key) {
            (Some(cert), Some(key)) => Some((cert.as_path(), key.as_path())),
            _ => None,
        };
        let config = client_config(cafile, identity, opts.resume)?;
        let server_name = ServerName::try_from(opts.tls_server_name.clone())
            .map_err(|e| format!("--tls-server-name {:?}: {e}", opts.tls_server_name))?;
        Ok(Some(Tls {
            config,
            server_name,
        }))
    }

    /// Runs the client side of the handshake on `tcp` until done or `deadline`. Reads of
    /// ciphertext take at most `read_bytes` (at least `CIPHER_MIN_BYTES`) at a time.
    pub async fn connect(
        &self,
        tcp: TcpStream,
        read_bytes: usize,
        deadline: Instant,
    ) -> io::Result<TlsStream> {
        let conn = ClientConnection::new(self.config.clone(), self.server_name.clone())
            .map_err(io::Error::other)?;
        let mut stream = TlsStream {
            tcp,
            conn,
            cipher: vec![0u8; read_bytes.max(CIPHER_MIN_BYTES)].into_boxed_slice(),
            unread: 0..0,
            is_closing: false,
        };
        stream.handshake(deadline).await?;
        Ok(stream)
    }
}

/// The rustls client configuration: the CA certificates of `cafile` as the only roots, the
/// client certificate and key of `identity` if given, and session resumption only if
/// `resume` (else every handshake is a full one).
pub fn client_config(
    cafile: &Path,
    identity: Option<(&Path, &Path)>,
    resume: bool,
) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(cafile)? {
        roots
            .add(cert)
            .map_err(|e| format!("{} does not hold a CA certificate: {e}", cafile.display()))?;
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| format!("TLS setup failed: {e}"))?
            .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("{} does not hold a PEM private key: {e}", key.display()))?;
            builder
                .with_client_auth_cert(read_certs(cert)?, key)
                .map_err(|e| format!("--cert and --key do not make a usable identity: {e}"))?
        }
    };
    config.resumption = if resume {
        Resumption::store(Arc::new(SessionStore::default()))
    } else {
        Resumption::disabled()
    };
    Ok(Arc::new(config))
}

/// The sessions `--resume` keeps, per server name: the last TLS 1.2 session and up to
/// `TICKETS_PER_SERVER_MAX` TLS 1.3 tickets (the oldest dropped first), each handed out once,
/// the newest first.
#[derive(Debug, Default)]
struct SessionStore {
    servers: Mutex<HashMap<ServerName<'static>, Sessions>>,
}

#[derive(Debug, Default)]
struct Sessions {
    kx_hint: Option<NamedGroup>,
    tls12: Option<Tls12ClientSessionValue>,
    tls13: VecDeque<Tls13ClientSessionValue>,
}

impl SessionStore {
    fn with<T>(&self, server: &ServerName<'_>, f: impl FnOnce(&mut Sessions) -> T) -> T {
        let mut servers = self.servers.lock().unwrap_or_else(|e| e.into_inner());
        f(servers.entry(server.to_owned()).or_default())
    }
}

impl ClientSessionStore for SessionStore {
    fn set_kx_hint(&self, server: ServerName<'static>, group: NamedGroup) {
        self.with(&server, |s| s.kx_hint = Some(group));
    }

    fn kx_hint(&self, server: &ServerName<'_>) -> Option<NamedGroup> {
        self.with(server, |s| s.kx_hint)
    }

    fn set_tls12_session(&self, server: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.with(&server, |s| s.tls12 = Some(value));
    }

    fn tls12_session(&self, server: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.with(server, |s| s.tls12.clone())
    }

    fn remove_tls12_session(&self, server: &ServerName<'static>) {
        self.with(server, |s| s.tls12 = None);
    }

    fn insert_tls13_ticket(&self, server: ServerName<'static>, value: Tls13ClientSessionValue) {
        self.with(&server, |s| {
            if s.tls13.len() == TICKETS_PER_SERVER_MAX {
                s.tls13.pop_front();
            }
            s.tls13.push_back(value);
        });
    }

    fn take_tls13_ticket(&self, server: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        self.with(server, |s| s.tls13.pop_back())
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bad = |e: rustls_pki_types::pem::Error| {
        format!("{} does not hold PEM certificates: {e}", path.display())
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(bad)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(bad)?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

/// A TLS connection to the broker: rustls over a glommio socket, read and written as one byte
/// stream. Writes must end with a `flush`, which sends the records the socket did not take.
pub struct TlsStream {
    tcp: TcpStream,
    conn: ClientConnection,
    /// Ciphertext read from the socket; `unread` is the part rustls has not taken yet.
    cipher: Box<[u8]>,
    unread: Range<usize>,
    /// Whether close_notify was queued.
    is_closing: bool,
}

impl TlsStream {
    /// Whether the handshake was a full one or resumed an earlier session.
    pub fn handshake_kind(&self) -> Option<HandshakeKind> {
        self.conn.handshake_kind()
    }

    /// Sends and receives handshake records until rustls is done, then sends its last flight.
    async fn handshake(&mut self, deadline: Instant) -> io::Result<()> {
        while self.conn.is_handshaking() {
            futures_lite::future::poll_fn(|cx| self.poll_send(cx)).await?;
            if !self.conn.is_handshaking() {
                break;
            }
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "TLS handshake not done in time",
                ));
            }
            if self.unread.is_empty() {
                match futures_lite::future::poll_fn(|cx| self.poll_recv(cx)).await {
                    Ok(0) => {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "broker closed the connection during the TLS handshake",
                        ))
                    }
                    Ok(_) => {}
                    // The read timeout is a tick to check the deadline.
                    Err(e) if is_idle(&e) => continue,
                    Err(e) => return Err(e),
                }
            }
            self.decrypt(usize::MAX)?;
        }
        futures_lite::future::poll_fn(|cx| self.poll_send(cx)).await
    }

    /// Reads ciphertext from the socket into `cipher`; 0 at end of stream.
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        debug_assert!(self.unread.is_empty());
        let n = ready!(Pin::new(&mut self.tcp).poll_read(cx, &mut self.cipher))?;
        self.unread = 0..n;
        Poll::Ready(Ok(n))
    }

    /// Hands unread ciphertext to rustls until it holds `want` bytes of plaintext (or as much
    /// as it takes). Answers rustls has to send (an alert, a key update) go out if the socket
    /// takes them now.
    fn decrypt(&mut self, want: usize) -> io::Result<()> {
        debug_assert!(!self.unread.is_empty());
        let mut cipher = &self.cipher[self.unread.clone()];
        let before = cipher.len();
        let mut held = 0;
        let processed = loop {
            if cipher.is_empty() || held >= want || held > PLAINTEXT_HELD_MAX_BYTES {
                break Ok(());
            }
            if let Err(e) = self.conn.read_tls(&mut cipher) {
                break Err(e);
            }
            match self.conn.process_new_packets() {
                Ok(state) => held = state.plaintext_bytes_to_read(),
                Err(e) => break Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
        };
        self.unread.start += before - cipher.len();
        let _ = self
            .conn
            .write_tls(&mut NonBlockingSend(self.tcp.as_raw_fd()));
        processed
    }

    /// Sends every record rustls holds; pending while the socket is full.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.conn.wants_write() {
            let fd = self.tcp.as_raw_fd();
            match self.conn.write_tls(&mut NonBlockingSend(fd)) {
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
            // Full: glommio's write (which registers this task's waker) tries once more.
            let mut socket = PollingSend {
                tcp: &mut self.tcp,
                cx,
            };
            match self.conn.write_tls(&mut socket) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Plaintext into `buf`, decrypting what the socket has as needed; 0 at the end.
    fn poll_read_plaintext(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        loop {
            match self.conn.reader().read(buf) {
                // 0: the broker sent close_notify.
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The broker closed the socket without close_notify: the end all the same.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Poll::Ready(Ok(0)),
                Err(e) => return Poll::Ready(Err(e)),
            }
            if self.unread.is_empty() && ready!(self.poll_recv(cx))? == 0 {
                // End of stream: rustls then reads as close_notify (0) or an unexpected EOF.
                self.conn.read_tls(&mut io::empty())?;
                continue;
            }
            self.decrypt(buf.len())?;
        }
    }

    /// Encrypts what rustls takes of `buf`; its records go out now or with the next write or
    /// flush.
    fn poll_write_plaintext(
        &mut self,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        // The last write's records first, so rustls never holds more than one write's worth.
        ready!(self.poll_send(cx))?;
        let n = self.conn.writer().write(buf)?;
        // Sent now if the socket takes them; else with the next write or flush.
        if let Poll::Ready(Err(e)) = self.poll_send(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    /// Sends close_notify, then shuts the socket's sending side.
    fn poll_close_notify(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.is_closing {
            self.conn.send_close_notify();
            self.is_closing = true;
        }
        ready!(self.poll_send(cx))?;
        Pin::new(&mut self.tcp).poll_close(cx)
    }
}

impl AsyncRead for TlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_read_plaintext(cx, buf)
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_plaintext(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_send(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_close_notify(cx)
    }
}

/// Whether a read error only means nothing came within the socket's read timeout.
pub fn is_idle(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

/// Records to the socket with one non-blocking `sendmsg`, straight from rustls' buffers;
/// `WouldBlock` when the socket is full. Registers no waker, so either task may use it.
struct NonBlockingSend(RawFd);

impl Write for NonBlockingSend {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        // SAFETY: a zeroed msghdr is valid (no name, no control data); msg_iov points at
        // `bufs`, which outlive the call, and `IoSlice` is ABI-compatible with `iovec` on Unix.
        let sent = unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
            msg.msg_iovlen = bufs.len() as _;
            libc::sendmsg(self.0, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(sent as usize)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The socket as `io::Write` inside a poll: glommio's write, whose `Pending` (this task's
/// waker registered for when the socket drains) reads as `WouldBlock` to rustls.
struct PollingSend<'a, 'b> {
    tcp: &'a mut TcpStream,
    cx: &'a mut Context<'b>,
}

impl Write for PollingSend<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match Pin::new(&mut *self.tcp).poll_write(self.cx, buf) {
            Poll::Ready(result) => result,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
