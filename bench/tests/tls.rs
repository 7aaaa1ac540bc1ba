//! The generator's TLS client (`--tls`) against a small rustls MQTT responder on a real
//! loopback socket: bytes both ways through whole and partial records larger than rustls'
//! plaintext buffer, close_notify, and session resumption (TLS 1.3 tickets, TLS 1.2 session
//! ids) with and without `--resume`. The CA and server certificate are made here with rcgen.

use bytes::{Bytes, BytesMut};
use clap::Parser;
use glommio::LocalExecutorBuilder;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use ringcast::protocol::codec::{Codec, Decoded};
use ringcast::protocol::{MqttString, Packet, Props, Publish, QoS, Version};
use ringcast_bench::client::Conn;
use ringcast_bench::options::Options;
use ringcast_bench::tls::Tls;
use ringcast_bench::transport::Endpoint;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{HandshakeKind, ServerConfig, ServerConnection, StreamOwned};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long any one read may block on either side before the test fails.
const IO_LIMIT: Duration = Duration::from_secs(10);
/// PUBLISHes the responder sends in the stream test: 128 KiB and more, in writes of 1,000
/// (about 14 KiB, one record each) and one of 6,000 (several records, over rustls' 16 KiB
/// plaintext buffer at once).
const DOWN: u64 = 10_000;
/// PUBLISHes the generator sends back in one flush (26 KiB: more than one record).
const UP: u64 = 2_000;

/// A CA, the server's certificate for localhost signed by it, and the CA's PEM file.
struct Pki {
    ca_file: PathBuf,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Pki {
    fn new(test: &str) -> Pki {
        let mut ca = CertificateParams::default();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca =
            CertifiedIssuer::self_signed(ca, KeyPair::generate().expect("a key")).expect("a CA");
        let key = KeyPair::generate().expect("a key");
        let leaf = CertificateParams::new(vec!["localhost".to_string()])
            .expect("a name")
            .signed_by(&key, &ca)
            .expect("a signed certificate");
        let ca_file = std::env::temp_dir().join(format!(
            "ringcast-bench-{test}-{}-ca.pem",
            std::process::id()
        ));
        std::fs::write(&ca_file, ca.pem()).expect("write the CA file");
        Pki {
            ca_file,
            chain: vec![leaf.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        }
    }

    /// A server configuration offering `versions`, with stateless session tickets.
    fn server(&self, versions: &[&'static rustls::SupportedProtocolVersion]) -> Arc<ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .expect("a certificate");
        config.ticketer = rustls::crypto::ring::Ticketer::new().expect("a ticketer");
        Arc::new(config)
    }

    /// The generator's TLS settings for this CA, as the command line gives them.
    fn client(&self, resume: bool) -> Tls {
        let ca = self.ca_file.to_str().expect("a UTF-8 path");
        let mut args = vec!["ringcast-bench", "--tls", "--cafile", ca];
        if resume {
            args.push("--resume");
        }
        let opts = Options::parse_from(args);
        opts.validate().expect("valid options");
        Tls::from_options(&opts)
            .expect("TLS settings")
            .expect("--tls given")
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.ca_file);
    }
}

type ServerStream = StreamOwned<ServerConnection, TcpStream>;

/// Accepts `n` TLS connections one after the other on loopback; `serve` runs each.
fn responder(
    config: Arc<ServerConfig>,
    n: usize,
    serve: fn(&mut ServerStream) -> io::Result<u64>,
) -> (SocketAddr, JoinHandle<Vec<u64>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = listener.local_addr().expect("its address");
    let handle = std::thread::spawn(move || {
        let mut results = Vec::new();
        for _ in 0..n {
            let (tcp, _) = listener.accept().expect("accept");
            tcp.set_read_timeout(Some(IO_LIMIT)).expect("read timeout");
            let conn = ServerConnection::new(config.clone()).expect("a server connection");
            let mut stream = StreamOwned::new(conn, tcp);
            results.push(serve(&mut stream).expect("the client follows the script"));
        }
        results
    });
    (addr, handle)
}

/// Reads one packet from the client.
fn read_packet(
    stream: &mut ServerStream,
    codec: &mut Codec,
    buf: &mut BytesMut,
) -> io::Result<Option<Packet>> {
    loop {
        match codec.decode(buf) {
            Ok(Decoded::Packet(p)) => return Ok(Some(p)),
            Ok(Decoded::Incomplete { .. }) => {}
            Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, format!("{e:?}"))),
        }
        let mut chunk = [0u8; 16 << 10];
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(None),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            // The client closed without close_notify.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
    }
}

/// CONNECT in, CONNACK out.
fn accept_connect(
    stream: &mut ServerStream,
    codec: &mut Codec,
    buf: &mut BytesMut,
) -> io::Result<()> {
    match read_packet(stream, codec, buf)? {
        Some(Packet::Connect(_)) => stream.write_all(&[0x20, 0x02, 0x00, 0x00]),
        other => Err(io::Error::other(format!("expected CONNECT, got {other:?}"))),
    }
}

/// A QoS 0 PUBLISH on topic `t` whose payload is `seq`.
fn publish(seq: u64, out: &mut Vec<u8>) {
    out.extend_from_slice(&[0x30, 11, 0, 1, b't']);
    out.extend_from_slice(&seq.to_be_bytes());
}

/// The stream script: CONNECT, SUBSCRIBE, `DOWN` PUBLISHes out, then counts the client's
/// PUBLISHes until its DISCONNECT; ends with close_notify.
fn stream_script(stream: &mut ServerStream) -> io::Result<u64> {
    let (mut codec, mut buf) = (Codec::new(1 << 20), BytesMut::new());
    accept_connect(stream, &mut codec, &mut buf)?;
    match read_packet(stream, &mut codec, &mut buf)? {
        Some(Packet::Subscribe(_)) => stream.write_all(&[0x90, 0x03, 0x00, 0x01, 0x00])?,
        other => {
            return Err(io::Error::other(format!(
                "expected SUBSCRIBE, got {other:?}"
            )))
        }
    }
    let mut out = Vec::new();
    let mut seq = 0;
    for batch in [1_000, 1_000, 6_000, 1_000, 999, 1] {
        out.clear();
        for _ in 0..batch {
            publish(seq, &mut out);
            seq += 1;
        }
        stream.write_all(&out)?;
    }
    assert_eq!(seq, DOWN);
    let mut received = 0u64;
    loop {
        match read_packet(stream, &mut codec, &mut buf)? {
            Some(Packet::Publish(p)) => {
                assert_eq!(p.payload.as_ref(), received.to_be_bytes(), "in order");
                received += 1;
            }
            Some(Packet::Disconnect(_)) => break,
            other => return Err(io::Error::other(format!("unexpected {other:?}"))),
        }
    }
    stream.conn.send_close_notify();
    stream.flush()?;
    Ok(received)
}

/// The handshake script: CONNECT, CONNACK, then reads until the client has gone.
fn connect_script(stream: &mut ServerStream) -> io::Result<u64> {
    let (mut codec, mut buf) = (Codec::new(1 << 20), BytesMut::new());
    accept_connect(stream, &mut codec, &mut buf)?;
    while read_packet(stream, &mut codec, &mut buf)?.is_some() {}
    Ok(0)
}

/// Runs `client` on a glommio executor and gives back what it returned.
fn on_glommio<T: Send + 'static, F: std::future::Future<Output = T> + 'static>(
    client: impl FnOnce() -> F + Send + 'static,
) -> T {
    LocalExecutorBuilder::default()
        .spawn(client)
        .expect("a glommio executor")
        .join()
        .expect("the client thread")
}

#[test]
fn bytes_both_ways_over_tls() {
    let pki = Pki::new("stream");
    let (addr, server) = responder(pki.server(&[&rustls::version::TLS13]), 1, stream_script);
    let broker = Endpoint {
        addr,
        tls: Some(pki.client(false)),
        websocket: None,
        persistent: false,
        source: None,
    };
    let received = on_glommio(move || async move {
        let mut conn = Conn::open(&broker, Version::V311, "tls-test")
            .await
            .expect("CONNACK over TLS");
        assert_eq!(conn.handshake_kind(), Some(HandshakeKind::Full));
        conn.subscribe("t", QoS::AtMostOnce).await.expect("SUBACK");
        let deadline = Instant::now() + IO_LIMIT;
        let mut next = 0u64;
        while next < DOWN {
            assert!(
                Instant::now() < deadline,
                "only {next} of {DOWN} PUBLISHes arrived"
            );
            conn.fill().await.expect("reads");
            while let Some(packet) = conn.next_packet().expect("decodes") {
                let Packet::Publish(p) = packet else {
                    panic!("expected PUBLISH, got {packet:?}");
                };
                assert_eq!(p.payload.as_ref(), next.to_be_bytes(), "in order");
                next += 1;
            }
        }
        for seq in 0..UP {
            conn.queue(&Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtMostOnce,
                retain: false,
                topic: MqttString::from_str_checked("t").expect("a topic"),
                pkid: 0,
                properties: Props::default(),
                payload: Bytes::copy_from_slice(&seq.to_be_bytes()),
            }))
            .expect("encodes");
        }
        conn.flush().await.expect("writes");
        conn.disconnect().await;
        next
    });
    assert_eq!(received, DOWN);
    let results = server.join().expect("the responder");
    assert_eq!(
        results,
        vec![UP],
        "every PUBLISH the generator sent arrived"
    );
}

/// Opens `n` connections one after the other; the kind of each handshake.
fn handshakes(
    pki: &Pki,
    versions: &[&'static rustls::SupportedProtocolVersion],
    resume: bool,
    n: usize,
) -> Vec<HandshakeKind> {
    let (addr, server) = responder(pki.server(versions), n, connect_script);
    let broker = Endpoint {
        addr,
        tls: Some(pki.client(resume)),
        websocket: None,
        persistent: false,
        source: None,
    };
    let kinds = on_glommio(move || async move {
        let mut kinds = Vec::new();
        for i in 0..n {
            let conn = Conn::open(&broker, Version::V311, &format!("tls-test-{i}"))
                .await
                .expect("CONNACK over TLS");
            kinds.push(conn.handshake_kind().expect("a TLS handshake"));
            conn.disconnect().await;
        }
        kinds
    });
    server.join().expect("the responder");
    kinds
}

#[test]
fn resumption_only_with_resume() {
    use HandshakeKind::{Full, Resumed};
    let pki = Pki::new("resume");
    for versions in [
        &[&rustls::version::TLS13][..],
        &[&rustls::version::TLS12][..],
    ] {
        assert_eq!(handshakes(&pki, versions, false, 3), vec![Full, Full, Full]);
        assert_eq!(
            handshakes(&pki, versions, true, 3),
            vec![Full, Resumed, Resumed]
        );
    }
}

/// CONNACK, then the socket closed without close_notify.
fn close_abruptly(stream: &mut ServerStream) -> io::Result<u64> {
    let (mut codec, mut buf) = (Codec::new(1 << 20), BytesMut::new());
    accept_connect(stream, &mut codec, &mut buf)?;
    stream.sock.shutdown(std::net::Shutdown::Both)?;
    Ok(0)
}

/// CONNACK, then close_notify.
fn close_cleanly(stream: &mut ServerStream) -> io::Result<u64> {
    let (mut codec, mut buf) = (Codec::new(1 << 20), BytesMut::new());
    accept_connect(stream, &mut codec, &mut buf)?;
    stream.conn.send_close_notify();
    stream.flush()?;
    Ok(0)
}

#[test]
fn a_closing_broker_ends_the_stream() {
    let pki = Pki::new("close");
    for script in [close_abruptly, close_cleanly] {
        let (addr, server) = responder(pki.server(&[&rustls::version::TLS13]), 1, script);
        let broker = Endpoint {
            addr,
            tls: Some(pki.client(false)),
            websocket: None,
            persistent: false,
            source: None,
        };
        let error = on_glommio(move || async move {
            let mut conn = Conn::open(&broker, Version::V311, "tls-close")
                .await
                .expect("CONNACK over TLS");
            let deadline = Instant::now() + IO_LIMIT;
            loop {
                assert!(Instant::now() < deadline, "the close was never seen");
                if let Err(e) = conn.fill().await {
                    return e.kind();
                }
            }
        });
        assert_eq!(error, io::ErrorKind::ConnectionAborted);
        server.join().expect("the responder");
    }
}
