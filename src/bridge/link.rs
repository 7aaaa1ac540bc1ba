//! The bridge's connection to its remote broker: TCP (or TLS, as a rustls client) and our own
//! codec, packets in and out.
//!
//! One task owns the link and both reads and writes it. `recv` may be abandoned at its await
//! (the bridge races it against its other work): glommio's read waits for readiness and then
//! reads, so a read given up loses no bytes, and decoding happens only on bytes already held.

use crate::config::{BridgeConfig, BridgeTls};
use crate::net::tls::{bad_file, read_certs};
use crate::protocol::codec::{encode, Codec, Decoded};
use crate::protocol::{Packet, Version};
use bytes::BytesMut;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};
use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::Duration;

/// Largest packet accepted from the remote.
const PACKET_SIZE_MAX: u32 = 1 << 24;
/// Bytes read from the socket at a time.
const READ_BYTES: usize = 16 << 10;
/// Protocol level bit mosquitto's bridges set in CONNECT ("try_private"): the remote then
/// knows the client is a bridge and does not send it back what it published.
pub const BRIDGE_BIT: u8 = 0x80;

/// A connection to the remote.
pub struct Link {
    stream: TcpStream,
    tls: Option<Box<ClientConnection>>,
    codec: Codec,
    buf: BytesMut,
    out: BytesMut,
    /// Where socket reads land (ciphertext under TLS).
    chunk: Vec<u8>,
    version: Version,
}

/// The TLS client settings of a bridge, read from its files once at start.
pub fn client_config(tls: &BridgeTls) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for cert in read_certs(&tls.ca_file)? {
        roots
            .add(cert)
            .map_err(|e| bad_file(&tls.ca_file, "a CA certificate", e))?;
    }
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .with_root_certificates(roots);
    let config = match (&tls.cert_file, &tls.key_file) {
        (Some(cert_file), Some(key_file)) => {
            let certs = read_certs(cert_file)?;
            let key = PrivateKeyDer::from_pem_file(key_file)
                .map_err(|e| bad_file(key_file, "a PEM private key", e))?;
            builder.with_client_auth_cert(certs, key).map_err(|e| {
                format!(
                    "{} and {} do not make a usable client certificate and key: {e}",
                    cert_file.display(),
                    key_file.display()
                )
            })?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

impl Link {
    /// Opens TCP to the remote within `timeout`, and TLS over it when `tls` is given.
    pub async fn open(
        config: &BridgeConfig,
        tls: Option<&Arc<ClientConfig>>,
        timeout: Duration,
    ) -> io::Result<Link> {
        let stream = TcpStream::connect_timeout(config.address.as_str(), timeout).await?;
        stream.set_nodelay(true)?;
        let version = match config.protocol_version {
            crate::config::BridgeVersion::V311 => Version::V311,
            crate::config::BridgeVersion::V5 => Version::V5,
        };
        let mut link = Link {
            stream,
            tls: None,
            codec: Codec::with_version(version, PACKET_SIZE_MAX),
            buf: BytesMut::new(),
            out: BytesMut::new(),
            chunk: vec![0; READ_BYTES],
            version,
        };
        if let Some(client) = tls {
            let host = config.address.rsplit_once(':').map_or("", |(h, _)| h);
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let name = config
                .tls
                .as_ref()
                .and_then(|t| t.server_name.clone())
                .unwrap_or_else(|| host.to_string());
            let name = ServerName::try_from(name).map_err(io::Error::other)?;
            let conn = ClientConnection::new(client.clone(), name).map_err(io::Error::other)?;
            link.tls = Some(Box::new(conn));
            within(timeout, link.handshake()).await?;
        }
        Ok(link)
    }

    /// The version spoken.
    pub fn version(&self) -> Version {
        self.version
    }

    /// Sends one packet; a CONNECT with `bridge_bit` carries mosquitto's bridge protocol level.
    pub async fn send(&mut self, packet: &Packet, bridge_bit: bool) -> io::Result<()> {
        self.out.clear();
        encode(packet, self.version, &mut self.out).map_err(io::Error::other)?;
        if bridge_bit {
            // Fixed header, then "MQTT" as a two-byte length and four bytes, then the level.
            let level_at = connect_level_offset(&self.out);
            if let Some(level) = level_at.and_then(|at| self.out.get_mut(at)) {
                *level |= BRIDGE_BIT;
            }
        }
        let bytes = std::mem::take(&mut self.out);
        let written = self.write_all(&bytes).await;
        self.out = bytes;
        written
    }

    /// The next packet from the remote.
    pub async fn recv(&mut self) -> io::Result<Packet> {
        loop {
            match self.codec.decode(&mut self.buf) {
                Ok(Decoded::Packet(packet)) => return Ok(packet),
                Ok(Decoded::Incomplete { .. }) => self.fill().await?,
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
            }
        }
    }

    /// Reads more plaintext into the buffer.
    /// Nothing after the read awaits, so a `recv` given up loses nothing; TLS records rustls
    /// wants to send meanwhile go out with the next `send`.
    async fn fill(&mut self) -> io::Result<()> {
        let chunk = &mut self.chunk;
        let n = self.stream.read(chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let Some(tls) = self.tls.as_mut() else {
            self.buf.extend_from_slice(&chunk[..n]);
            return Ok(());
        };
        let mut input = &chunk[..n];
        while !input.is_empty() {
            tls.read_tls(&mut input)?;
            tls.process_new_packets().map_err(io::Error::other)?;
        }
        loop {
            match tls.reader().read(chunk) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self.tls.as_mut() {
            None => self.stream.write_all(bytes).await,
            Some(tls) => {
                tls.writer().write_all(bytes)?;
                self.flush_tls().await
            }
        }
    }

    /// Sends the TLS records rustls has ready.
    async fn flush_tls(&mut self) -> io::Result<()> {
        let Some(tls) = self.tls.as_mut() else {
            return Ok(());
        };
        let mut records = Vec::new();
        while tls.wants_write() {
            tls.write_tls(&mut records)?;
        }
        if !records.is_empty() {
            self.stream.write_all(&records).await?;
        }
        Ok(())
    }

    /// Runs the TLS handshake to its end.
    async fn handshake(&mut self) -> io::Result<()> {
        let mut chunk = vec![0u8; READ_BYTES];
        loop {
            self.flush_tls().await?;
            let Some(tls) = self.tls.as_mut() else {
                return Ok(());
            };
            if !tls.is_handshaking() {
                return Ok(());
            }
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let mut input = &chunk[..n];
            while !input.is_empty() {
                tls.read_tls(&mut input)?;
                tls.process_new_packets().map_err(io::Error::other)?;
            }
        }
    }
}

/// `io` unless `limit` passes first (then a TimedOut error).
pub async fn within<T>(
    limit: Duration,
    io: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    let late = async {
        glommio::timer::sleep(limit).await;
        Err(io::ErrorKind::TimedOut.into())
    };
    futures_lite::future::or(io, late).await
}

/// Where the protocol level sits in an encoded CONNECT: after the fixed header (type byte and
/// a remaining length of one to four bytes) and the six bytes of the protocol name.
fn connect_level_offset(frame: &[u8]) -> Option<usize> {
    let length_bytes = frame.iter().skip(1).take(4).position(|b| b & 0x80 == 0)? + 1;
    let at = 1 + length_bytes + 6;
    (frame.get(at - 4..at) == Some(b"MQTT")).then_some(at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::codec::samples;

    #[test]
    fn bridge_bit_goes_on_the_protocol_level_byte() {
        let mut out = BytesMut::new();
        let connect = Packet::Connect(Box::new(samples::connect(Version::V311)));
        encode(&connect, Version::V311, &mut out).unwrap();
        let at = connect_level_offset(&out).unwrap();
        assert_eq!(out[at], 4);
        assert!(connect_level_offset(b"\x10").is_none());
    }
}
