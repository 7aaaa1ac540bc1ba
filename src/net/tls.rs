//! MQTT over TLS (rustls, ring provider, TLS 1.2 and 1.3): the server configuration made from
//! PEM files, the handshake, and the two halves of a TLS transport.
//!
//! One rustls `ServerConnection` serves both halves of a connection (an `Rc<RefCell<..>>`
//! shared by its reader and writer, in the connection's task). The writer hands rustls the outbox's
//! frames as one vectored write: rustls encrypts from the shared payloads straight into its
//! record buffer, so a subscriber costs the cipher's copy and no plaintext copy; the records
//! then go to the socket with one `writev`. Only when the socket is full is a record copied
//! out, for io_uring to wait on.

use super::sockio::{dup_stream, gather, sendmsg};
pub use crate::config::TlsSettings;
use crate::shard::outbox::Outbox;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::{ServerConfig, ServerConnection, WebPkiClientVerifier};
use rustls::RootCertStore;
use std::cell::RefCell;
use std::io::{self, IoSlice, Read, Write};
use std::os::unix::io::{AsRawFd, RawFd};
use std::path::Path;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Ciphertext read from the socket at a time: one full TLS record and its overhead.
const CIPHER_READ_BYTES: usize = 16 << 10 | 512;

/// A TLS listener's certificates: the rustls configuration made from its files, replaced as
/// a whole when they are read again (SIGHUP). New handshakes use the new one; connections
/// already open keep theirs.
pub struct Certificates {
    settings: TlsSettings,
    current: Mutex<Arc<ServerConfig>>,
}

impl Certificates {
    /// Reads the listener's files; a bad file stops the start.
    pub fn load(settings: &TlsSettings) -> Result<Certificates, String> {
        Ok(Certificates {
            current: Mutex::new(server_config(settings)?),
            settings: settings.clone(),
        })
    }

    /// Reads the files again; a file that does not parse keeps the old configuration and
    /// returns why.
    pub fn reload(&self) -> Result<(), String> {
        let config = server_config(&self.settings)?;
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = config;
        Ok(())
    }

    /// The configuration for a new handshake.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether the client certificate's Common Name becomes the username.
    pub fn uses_identity_as_username(&self) -> bool {
        self.settings.use_identity_as_username
    }
}

/// Builds the rustls server configuration of a listener from its PEM files. Stateless session
/// tickets let reconnecting devices resume instead of paying a full handshake.
pub fn server_config(settings: &TlsSettings) -> Result<Arc<ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = read_certs(&settings.cert_file)?;
    let key = PrivateKeyDer::from_pem_file(&settings.key_file)
        .map_err(|e| bad_file(&settings.key_file, "a PEM private key", e))?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS setup failed: {e}"))?;
    let builder = match &settings.ca_file {
        None if settings.require_certificate => {
            return Err("require_certificate needs ca_file: set ca_file to the CA that signs client certificates".into())
        }
        None => builder.with_no_client_auth(),
        Some(ca_file) => builder.with_client_cert_verifier(client_verifier(settings, ca_file, provider)?),
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        format!(
            "{} and {} do not make a usable certificate and key: {e}",
            settings.cert_file.display(),
            settings.key_file.display()
        )
    })?;
    config.ticketer =
        rustls::crypto::ring::Ticketer::new().map_err(|e| format!("TLS session tickets: {e}"))?;
    Ok(Arc::new(config))
}

fn client_verifier(
    settings: &TlsSettings,
    ca_file: &Path,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, String> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(ca_file)? {
        roots
            .add(cert)
            .map_err(|e| bad_file(ca_file, "a CA certificate", e))?;
    }
    let mut verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    if let Some(crl_file) = &settings.crl_file {
        let crls = CertificateRevocationListDer::pem_file_iter(crl_file)
            .map_err(|e| bad_file(crl_file, "PEM revocation lists", e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad_file(crl_file, "PEM revocation lists", e))?;
        verifier = verifier.with_crls(crls);
    }
    if !settings.require_certificate {
        verifier = verifier.allow_unauthenticated();
    }
    verifier
        .build()
        .map_err(|e| format!("client certificate verification: {e}"))
}

/// The PEM certificates in `path`; at least one, or why not in a sentence.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad_file(path, "PEM certificates", e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad_file(path, "PEM certificates", e))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

/// Why `path` is not `what`, in a sentence.
pub fn bad_file(path: &Path, what: &str, error: impl std::fmt::Display) -> String {
    format!("{} does not hold {what}: {error}", path.display())
}

/// A TLS connection after its handshake.
pub struct Session {
    conn: Rc<RefCell<ServerConnection>>,
}

impl Session {
    /// The Common Name of the client certificate, if the client presented one.
    pub fn peer_common_name(&self) -> Option<String> {
        let conn = self.conn.borrow();
        let cert = conn.peer_certificates()?.first()?;
        common_name(cert)
    }
}

/// The subject Common Name of a DER certificate.
fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

/// Runs the server side of the handshake on `stream` until done or `deadline`; then the
/// connection's reader and writer halves.
pub async fn accept(
    mut stream: TcpStream,
    config: Arc<ServerConfig>,
    deadline: Instant,
) -> io::Result<(TlsReader, TlsWriter, Session)> {
    // Without it the CONNACK, written right behind the TLS 1.3 session tickets, waits for the
    // client's delayed ACK: ~40 ms per connect (measured with ringcast-bench handshakes).
    let _ = stream.set_nodelay(true);
    let conn = ServerConnection::new(config).map_err(io::Error::other)?;
    let conn = Rc::new(RefCell::new(conn));
    let mut cipher = vec![0u8; CIPHER_READ_BYTES];
    loop {
        flush_async(&mut stream, &conn).await?;
        if !conn.borrow().is_handshaking() {
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        let _ = stream.set_read_timeout(Some(left));
        let n = stream.read(&mut cipher).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let processed = feed(&conn, &cipher[..n]);
        if let Err(e) = processed {
            // Tell the client why (an alert) before closing.
            let _ = flush_async(&mut stream, &conn).await;
            return Err(e);
        }
    }
    let fd = stream.as_raw_fd();
    let session = Session { conn: conn.clone() };
    let reader = TlsReader {
        stream,
        conn: conn.clone(),
        cipher,
        pending: Vec::new(),
    };
    let writer = TlsWriter {
        fd,
        conn,
        iov: Vec::new(),
        slow: None,
    };
    Ok((reader, writer, session))
}

/// Hands ciphertext to rustls and processes it.
fn feed(conn: &RefCell<ServerConnection>, mut cipher: &[u8]) -> io::Result<()> {
    let mut conn = conn.borrow_mut();
    while !cipher.is_empty() {
        conn.read_tls(&mut cipher)?;
        conn.process_new_packets()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    }
    Ok(())
}

/// Writes what rustls has to send, waiting for the socket as needed.
async fn flush_async(stream: &mut TcpStream, conn: &RefCell<ServerConnection>) -> io::Result<()> {
    loop {
        let mut out = Vec::new();
        {
            let mut conn = conn.borrow_mut();
            if !conn.wants_write() {
                return Ok(());
            }
            conn.write_tls(&mut out)?;
        }
        stream.write_all(&out).await?;
    }
}

/// The reading half: ciphertext from the socket, plaintext out.
pub struct TlsReader {
    stream: TcpStream,
    conn: Rc<RefCell<ServerConnection>>,
    cipher: Vec<u8>,
    /// Ciphertext read but not yet taken by rustls (its plaintext buffer was full).
    pending: Vec<u8>,
}

impl TlsReader {
    /// Reads plaintext into `buf`; 0 at end of stream.
    pub async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.conn.borrow_mut().reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            if !self.pending.is_empty() {
                let pending = std::mem::take(&mut self.pending);
                self.take_cipher(&pending)?;
                continue;
            }
            let n = self.stream.read(&mut self.cipher).await?;
            if n == 0 {
                return Ok(0);
            }
            let cipher = std::mem::take(&mut self.cipher);
            let taken = self.take_cipher(&cipher[..n]);
            self.cipher = cipher;
            taken?;
        }
    }

    /// Hands `cipher` to rustls, keeping what it cannot take yet.
    fn take_cipher(&mut self, mut cipher: &[u8]) -> io::Result<()> {
        let mut conn = self.conn.borrow_mut();
        while !cipher.is_empty() {
            match conn.read_tls(&mut cipher) {
                Ok(_) => {}
                // Its plaintext buffer is full: the rest waits until the reader drains it.
                Err(e) if e.kind() == io::ErrorKind::Other && !conn.wants_read() => break,
                Err(e) => return Err(e),
            }
            conn.process_new_packets()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            if !conn.wants_read() {
                break;
            }
        }
        self.pending.extend_from_slice(cipher);
        // A key update or alert to answer goes out now, best effort; the writer sends the rest.
        let _ = conn.write_tls(&mut FdWriter(self.stream.as_raw_fd()));
        Ok(())
    }

    /// How long `read` waits for the client; None for ever.
    pub fn set_read_timeout(&mut self, timeout: Option<Duration>) {
        let _ = self.stream.set_read_timeout(timeout);
    }

    /// The socket's fd, for shutting it down.
    pub fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }
}

/// The writing half: the outbox's frames encrypted into records, records to the socket.
pub struct TlsWriter {
    fd: RawFd,
    conn: Rc<RefCell<ServerConnection>>,
    iov: Vec<libc::iovec>,
    /// The stream used to wait for a full socket, made from a dup of the fd on first need.
    slow: Option<Box<TcpStream>>,
}

impl TlsWriter {
    /// Encrypts what rustls takes of the outbox's first frames and sends the records; waits
    /// while the socket is full.
    pub async fn write_some(&mut self, outbox: &Outbox) -> io::Result<()> {
        self.encrypt(outbox)?;
        self.flush().await
    }

    /// Hands `slices` to rustls as one vectored write unless records still wait for the
    /// socket; returns the plaintext bytes it took.
    pub fn encrypt_slices(&mut self, slices: &[IoSlice<'_>]) -> io::Result<usize> {
        let mut conn = self.conn.borrow_mut();
        if conn.wants_write() {
            return Ok(0);
        }
        conn.writer().write_vectored(slices)
    }

    /// Writes all of `bytes` (an HTTP response), waiting for the socket as needed.
    pub async fn send_all(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            let n = self.conn.borrow_mut().writer().write(bytes)?;
            bytes = &bytes[n..];
            self.flush().await?;
        }
        Ok(())
    }

    /// Sends the records rustls holds, waiting while the socket is full.
    pub async fn flush(&mut self) -> io::Result<()> {
        let sent = self.conn.borrow_mut().write_tls(&mut FdWriter(self.fd));
        match sent {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.wait_and_write().await,
            Err(e) => Err(e),
        }
    }

    /// Whether records are still waiting for the socket.
    pub fn has_pending(&self) -> bool {
        self.conn.borrow().wants_write()
    }

    /// Hands the first frames to rustls as one vectored write (it encrypts straight from the
    /// shared payloads) and takes what it took out of the outbox. Nothing new is taken while
    /// records wait for the socket, so rustls' buffer stays bounded.
    fn encrypt(&mut self, outbox: &Outbox) -> io::Result<()> {
        let mut conn = self.conn.borrow_mut();
        if conn.wants_write() || outbox.is_empty() {
            return Ok(());
        }
        let slices = gather(outbox, &mut self.iov);
        let taken = conn.writer().write_vectored(slices)?;
        outbox.consume(taken);
        Ok(())
    }

    /// The socket is full: copies one chunk of records out for io_uring to wait on.
    async fn wait_and_write(&mut self) -> io::Result<()> {
        let mut chunk = Vec::new();
        self.conn.borrow_mut().write_tls(&mut chunk)?;
        let stream = dup_stream(&mut self.slow, self.fd)?;
        stream.write_all(&chunk).await
    }

    /// Tells the client the TLS session ends (close_notify), best effort.
    pub fn close_notify(&mut self) {
        let mut conn = self.conn.borrow_mut();
        conn.send_close_notify();
        let _ = conn.write_tls(&mut FdWriter(self.fd));
    }

    /// The socket's fd, for shutting it down.
    pub fn fd(&self) -> RawFd {
        self.fd
    }
}

/// Non-blocking writes of records straight to the socket.
struct FdWriter(RawFd);

impl Write for FdWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        sendmsg(self.0, bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
