//! MQTT over TLS, black-box: a rustls client speaking ringcast's own codec, mosquitto_pub /
//! mosquitto_sub and Python paho-mqtt, against TLS listeners whose certificates the tests make
//! with rcgen in a temporary folder (no key is ever committed).
//!
//! What is checked: publish and subscribe over TLS 1.2 and 1.3 at QoS 0 and 1, a 200 KiB
//! payload and 1,000 small messages arriving intact and in order; client certificates (signed
//! by the CA: in; none, an unknown CA's, an expired one, a revoked one: out); the certificate's
//! Common Name as the username, as the ACL sees it, and no login without one; plain MQTT on
//! the TLS port and TLS on the plain port closed without harm to other clients; a silent TCP
//! client on the TLS port closed by the CONNECT deadline.
//!
//! A missing external client skips its test with a note, unless `RINGCAST_REQUIRE_INTEROP=1`
//! (set by CI), which turns it into a failure. Every read and subprocess runs under a deadline.

mod common;

use bytes::BytesMut;
use common::{connect_packet, publish_packet, NoPacket, Raw, QUIET, WAIT};
use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, CertificateRevocationListParams,
    CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevocationReason, RevokedCertParams, SerialNumber,
};
use ringcast::config::{Config, ListenerConfig, Protocol, TlsSettings};
use ringcast::protocol::codec::{encode, Codec, Decoded};
use ringcast::protocol::*;
use ringcast::server::Server;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long one subprocess (mosquitto_pub, mosquitto_sub, python3) may run.
const PROC_LIMIT: Duration = Duration::from_secs(10);
/// How long a stopping broker may take.
const STOP_LIMIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// Certificates, made per test in a folder of their own.

/// A fresh folder under the system's temporary folder, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let unique = format!(
            "ringcast-tls-{name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(unique);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the test folder");
        TempDir(dir)
    }

    /// Writes `text` to `name` in the folder; returns its path.
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("write a test file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A certificate authority: its certificate and the key it signs with.
type Ca = CertifiedIssuer<'static, KeyPair>;

/// A CA that may sign certificates and revocation lists.
fn new_ca(name: &str) -> Ca {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("a key")).expect("a CA")
}

/// A certificate and its key.
struct Leaf {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Leaf {
    fn chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.cert.der().clone()]
    }

    fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()))
    }

    /// Writes `NAME.pem` and `NAME.key`; returns their paths.
    fn write(&self, dir: &TempDir, name: &str) -> (PathBuf, PathBuf) {
        (
            dir.write(&format!("{name}.pem"), &self.cert.pem()),
            dir.write(&format!("{name}.key"), &self.key.serialize_pem()),
        )
    }
}

/// What a leaf certificate is for, and how it differs from a good one.
struct LeafSpec<'a> {
    /// The subject Common Name; None leaves the subject empty.
    common_name: Option<&'a str>,
    serial: u8,
    is_server: bool,
    is_expired: bool,
}

impl LeafSpec<'_> {
    fn client(common_name: &str, serial: u8) -> LeafSpec<'_> {
        LeafSpec {
            common_name: Some(common_name),
            serial,
            is_server: false,
            is_expired: false,
        }
    }
}

/// The serial number of test certificate `n` (DER integers are minimal: no leading zero byte,
/// high bit clear).
fn serial(n: u8) -> SerialNumber {
    SerialNumber::from(vec![0x10, n])
}

/// A certificate signed by `ca`: a server's for 127.0.0.1 and localhost, or a client's.
fn new_leaf(ca: &Ca, spec: LeafSpec<'_>) -> Leaf {
    let names = if spec.is_server {
        vec!["127.0.0.1".to_string(), "localhost".to_string()]
    } else {
        Vec::new()
    };
    let mut params = CertificateParams::new(names).expect("certificate names");
    params.distinguished_name = rcgen::DistinguishedName::new();
    if let Some(name) = spec.common_name {
        params.distinguished_name.push(DnType::CommonName, name);
    }
    params.serial_number = Some(serial(spec.serial));
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![if spec.is_server {
        ExtendedKeyUsagePurpose::ServerAuth
    } else {
        ExtendedKeyUsagePurpose::ClientAuth
    }];
    if spec.is_expired {
        params.not_before = date_time_ymd(2000, 1, 1);
        params.not_after = date_time_ymd(2001, 1, 1);
    }
    let key = KeyPair::generate().expect("a key");
    let cert = params.signed_by(&key, ca).expect("a signed certificate");
    Leaf { cert, key }
}

/// A revocation list from `ca` naming the certificates with serials `revoked`.
fn new_crl(ca: &Ca, revoked: &[u8]) -> String {
    let params = CertificateRevocationListParams {
        this_update: date_time_ymd(2020, 1, 1),
        next_update: date_time_ymd(4000, 1, 1),
        crl_number: SerialNumber::from(vec![0x01]),
        issuing_distribution_point: None,
        revoked_certs: revoked
            .iter()
            .map(|&n| RevokedCertParams {
                serial_number: serial(n),
                revocation_time: date_time_ymd(2020, 1, 1),
                reason_code: Some(RevocationReason::KeyCompromise),
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    };
    params
        .signed_by(ca)
        .expect("a signed CRL")
        .pem()
        .expect("CRL as PEM")
}

/// One test's public key infrastructure: a CA, the server's certificate, and the files the
/// broker and the external clients read.
struct Pki {
    dir: TempDir,
    ca: Ca,
    ca_file: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let dir = TempDir::new(name);
        let ca = new_ca("ringcast test CA");
        let ca_file = dir.write("ca.pem", &ca.pem());
        let server = new_leaf(
            &ca,
            LeafSpec {
                common_name: Some("ringcast test server"),
                serial: 1,
                is_server: true,
                is_expired: false,
            },
        );
        let (server_cert, server_key) = server.write(&dir, "server");
        Pki {
            dir,
            ca,
            ca_file,
            server_cert,
            server_key,
        }
    }

    /// A TLS listener's settings with this server certificate and no client certificates.
    fn settings(&self) -> TlsSettings {
        TlsSettings {
            cert_file: self.server_cert.clone(),
            key_file: self.server_key.clone(),
            ..TlsSettings::default()
        }
    }

    /// Settings requiring a client certificate signed by the CA.
    fn client_cert_settings(&self) -> TlsSettings {
        TlsSettings {
            ca_file: Some(self.ca_file.clone()),
            require_certificate: true,
            ..self.settings()
        }
    }

    /// A client certificate signed by the CA.
    fn client(&self, common_name: &str, serial: u8) -> Leaf {
        new_leaf(&self.ca, LeafSpec::client(common_name, serial))
    }

    /// A client configuration trusting the CA, presenting `identity` if any.
    fn client_config(&self, identity: Option<&Leaf>) -> Arc<ClientConfig> {
        client_config(&self.ca, identity, TLS_BOTH)
    }
}

/// Both TLS versions the broker speaks.
const TLS_BOTH: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// A rustls client configuration trusting `ca`, offering `versions`.
fn client_config(
    ca: &Ca,
    identity: Option<&Leaf>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.der().clone()).expect("the CA is a root");
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(versions)
            .expect("TLS versions")
            .with_root_certificates(roots);
    let config = match identity {
        Some(leaf) => builder
            .with_client_auth_cert(leaf.chain(), leaf.private_key())
            .expect("a client certificate"),
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

// ---------------------------------------------------------------------------------------------
// A broker with TLS listeners (and a plain one) in this process.

/// A broker listening on 127.0.0.1 (ports chosen by the OS): one TLS listener per entry of
/// `tls`, in order, then a plain one. Stopped when dropped.
struct Broker {
    server: Option<Server>,
    tls: Vec<SocketAddr>,
    plain: SocketAddr,
}

impl Broker {
    fn start(shards: usize, tls: Vec<TlsSettings>, adjust: impl FnOnce(&mut Config)) -> Broker {
        let loopback: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let count = tls.len();
        let mut config = Config {
            listen: vec![loopback],
            listener: tls
                .into_iter()
                .map(|settings| ListenerConfig {
                    tls: Some(settings),
                    ..ListenerConfig::new(loopback, Protocol::Mqtt)
                })
                .collect(),
            shards,
            log_level: "warn".into(),
            ..Config::default()
        };
        config.persistence.enabled = false;
        adjust(&mut config);
        let server = Server::start(&config).expect("broker starts");
        let addrs = server.local_addrs().to_vec();
        assert_eq!(addrs.len(), count + 1, "one address per listener");
        Broker {
            server: Some(server),
            tls: addrs[..count].to_vec(),
            plain: addrs[count],
        }
    }

    /// A broker with one TLS listener (and the plain one).
    fn with_tls(shards: usize, settings: TlsSettings) -> Broker {
        Broker::start(shards, vec![settings], |_| {})
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let Some(server) = self.server.take() else {
            return;
        };
        server.stop();
        let (done, stopped) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            server.join();
            let _ = done.send(());
        });
        if stopped.recv_timeout(STOP_LIMIT).is_err() && !std::thread::panicking() {
            panic!("broker did not stop within {STOP_LIMIT:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A blocking MQTT client over rustls.

/// An MQTT client over TLS speaking raw packets with ringcast's codec.
struct TlsClient {
    stream: StreamOwned<ClientConnection, TcpStream>,
    codec: Codec,
    buf: BytesMut,
    version: Version,
}

impl TlsClient {
    /// Opens TCP and completes the TLS handshake (as far as the client can tell: in TLS 1.3 the
    /// server judges the client's certificate after the client has finished).
    fn handshake(addr: SocketAddr, config: Arc<ClientConfig>) -> Result<TlsClient, String> {
        let tcp = TcpStream::connect(addr).map_err(|e| format!("TCP connect: {e}"))?;
        tcp.set_nodelay(true).unwrap();
        tcp.set_read_timeout(Some(WAIT)).unwrap();
        tcp.set_write_timeout(Some(WAIT)).unwrap();
        let name = ServerName::from(addr.ip());
        let conn = ClientConnection::new(config, name).map_err(|e| format!("rustls: {e}"))?;
        let mut stream = StreamOwned::new(conn, tcp);
        while stream.conn.is_handshaking() {
            match stream.conn.complete_io(&mut stream.sock) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("TLS handshake: {e}")),
            }
        }
        Ok(TlsClient {
            stream,
            codec: Codec::new(1 << 24),
            buf: BytesMut::new(),
            version: Version::V311,
        })
    }

    /// Handshakes and sends `connect`; the CONNACK, or why none came.
    fn try_connect(
        addr: SocketAddr,
        config: Arc<ClientConfig>,
        connect: Connect,
    ) -> Result<(TlsClient, ConnAck), String> {
        let mut client = TlsClient::handshake(addr, config)?;
        client.version = connect.version;
        client.codec = Codec::with_version(connect.version, 1 << 24);
        client.try_send(&Packet::Connect(Box::new(connect)))?;
        match client.next(WAIT)? {
            Packet::ConnAck(ack) => Ok((client, ack)),
            other => Err(format!("expected CONNACK, got {other:?}")),
        }
    }

    /// Connects with `connect`; the CONNACK must accept.
    fn connect_with(addr: SocketAddr, config: Arc<ClientConfig>, connect: Connect) -> TlsClient {
        let (client, ack) =
            TlsClient::try_connect(addr, config, connect).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ack.code, ReasonCode::SUCCESS, "CONNACK refused: {ack:?}");
        client
    }

    fn connect(addr: SocketAddr, config: Arc<ClientConfig>, id: &str, v: Version) -> TlsClient {
        TlsClient::connect_with(addr, config, connect_packet(id, v, true))
    }

    fn try_send(&mut self, packet: &Packet) -> Result<(), String> {
        let mut out = BytesMut::new();
        encode(packet, self.version, &mut out).expect("test packet encodes");
        self.stream
            .write_all(&out)
            .and_then(|_| self.stream.flush())
            .map_err(|e| format!("TLS write: {e}"))
    }

    fn send(&mut self, packet: &Packet) {
        self.try_send(packet).unwrap_or_else(|e| panic!("{e}"));
    }

    /// The next packet within `limit`; an error says what ended the wait (the text of a TLS
    /// alert, a close, a timeout).
    fn next(&mut self, limit: Duration) -> Result<Packet, String> {
        self.recv_within(limit)
            .map_err(|(why, text)| format!("{why:?}: {text}"))
    }

    fn recv_within(&mut self, limit: Duration) -> Result<Packet, (NoPacket, String)> {
        let deadline = Instant::now() + limit;
        let mut chunk = vec![0u8; 64 << 10];
        loop {
            match self.codec.decode(&mut self.buf) {
                Ok(Decoded::Packet(packet)) => return Ok(packet),
                Ok(Decoded::Incomplete { .. }) => {}
                Err(e) => return Err((NoPacket::Closed, format!("undecodable: {e:?}"))),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err((NoPacket::Timeout, "no packet in time".into()));
            }
            self.stream.sock.set_read_timeout(Some(left)).unwrap();
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err((NoPacket::Closed, "closed (close_notify)".into())),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err((NoPacket::Timeout, "no packet in time".into()))
                }
                // The broker's threads share this process; their signals interrupt reads.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err((NoPacket::Closed, format!("closed: {e}"))),
            }
        }
    }

    fn recv(&mut self) -> Packet {
        self.next(WAIT)
            .unwrap_or_else(|e| panic!("expected a packet: {e}"))
    }

    fn expect_nothing(&mut self) {
        match self.recv_within(QUIET) {
            Err((NoPacket::Timeout, _)) => {}
            other => panic!("expected silence, got {other:?}"),
        }
    }

    /// Subscribes to one filter; returns the SUBACK's code.
    fn subscribe(&mut self, filter: &str, qos: QoS) -> ReasonCode {
        self.send(&Packet::Subscribe(Subscribe {
            pkid: 7,
            filters: vec![SubscribeFilter {
                filter: MqttString::from_str_checked(filter).unwrap(),
                options: SubscriptionOptions {
                    qos,
                    ..Default::default()
                },
            }],
            properties: Props::default(),
        }));
        match self.recv() {
            Packet::SubAck(ack) if ack.pkid == 7 && ack.reason_codes.len() == 1 => {
                ack.reason_codes[0]
            }
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    /// The next PUBLISH, acknowledged if QoS 1.
    fn recv_publish(&mut self) -> Publish {
        match self.recv() {
            Packet::Publish(p) => {
                self.ack(&p);
                p
            }
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    /// The next PUBLISH, acknowledged if QoS 1; fails the test naming `what` was awaited.
    fn publish_or_fail(&mut self, what: &str) -> Publish {
        match self.next(WAIT) {
            Ok(Packet::Publish(p)) => {
                self.ack(&p);
                p
            }
            other => panic!("waiting for {what}: {other:?}"),
        }
    }

    fn ack(&mut self, publish: &Publish) {
        assert_ne!(publish.qos, QoS::ExactlyOnce, "these tests use QoS 0 and 1");
        if publish.qos == QoS::AtLeastOnce {
            self.send(&Packet::PubAck(Ack {
                pkid: publish.pkid,
                ..Ack::default()
            }));
        }
    }

    /// Sends DISCONNECT and waits for the broker to close.
    fn disconnect(mut self) {
        self.send(&Packet::Disconnect(Disconnect::default()));
        match self.recv_within(WAIT) {
            Err((NoPacket::Closed, _)) => {}
            other => panic!("expected the broker to close, got {other:?}"),
        }
    }
}

fn topic(publish: &Publish) -> &str {
    publish.topic.as_str()
}

/// A payload of `len` bytes that differs at every position, so a lost, doubled or reordered
/// piece shows.
fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// External clients.

/// True when the named tools run here. When they do not: fails the test if
/// `RINGCAST_REQUIRE_INTEROP=1`, else prints a note and the caller returns early.
fn interop_ready(tools: &[&str]) -> bool {
    let mut missing = Vec::new();
    for &tool in tools {
        let present = if tool == "paho" {
            let check =
                "import sys, paho.mqtt; sys.exit(int(paho.mqtt.__version__.split('.')[0]) < 2)";
            Command::new("python3")
                .args(["-c", check])
                .output()
                .is_ok_and(|out| out.status.success())
        } else {
            // Some print usage and exit non-zero on --help; only "not found" matters here.
            Command::new(tool).arg("--help").output().is_ok()
        };
        if !present {
            missing.push(if tool == "paho" {
                "python3 with paho-mqtt>=2"
            } else {
                tool
            });
        }
    }
    if missing.is_empty() {
        return true;
    }
    let message = format!(
        "interop clients missing: {}. Install with `apt-get install mosquitto-clients` and \
         `python3 -m pip install 'paho-mqtt>=2,<3'`",
        missing.join(", ")
    );
    common::tool_missing(&message)
}

/// Runs `command` to its end; kills it and fails the test after `PROC_LIMIT`.
fn run(mut command: Command) -> Output {
    let shown = format!("{command:?}");
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {shown}: {e}"));
    // Small outputs only: the pipes hold them until the child has exited.
    if common::wait_exit(&mut child, PROC_LIMIT).is_none() {
        let _ = child.kill();
        let output = child.wait_with_output().expect("output of a killed child");
        panic!("{shown} ran over {PROC_LIMIT:?}:\n{}", describe(&output));
    }
    child
        .wait_with_output()
        .expect("output of a finished child")
}

fn describe(output: &Output) -> String {
    format!(
        "{}\n--- stdout ---\n{}--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// mosquitto_pub or mosquitto_sub on the TLS port `addr`, trusting `ca_file`, presenting a
/// client certificate if given.
fn mosquitto(
    tool: &str,
    addr: SocketAddr,
    ca_file: &Path,
    identity: Option<&(PathBuf, PathBuf)>,
    v: Version,
) -> Command {
    let mut command = Command::new(tool);
    let version = match v {
        Version::V311 => "mqttv311",
        Version::V5 => "mqttv5",
    };
    command
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &addr.port().to_string(),
            "-V",
            version,
        ])
        .arg("--cafile")
        .arg(ca_file);
    if let Some((cert, key)) = identity {
        command.arg("--cert").arg(cert).arg("--key").arg(key);
    }
    command
}

// ---------------------------------------------------------------------------------------------
// 1. MQTT over TLS with ringcast's own codec.

/// Over TLS 1.3 and 1.2, in 3.1.1 and 5.0: CONNECT, SUBSCRIBE, and the client's own PUBLISH
/// back at QoS 0 and QoS 1 (with its PUBACK).
#[test]
fn a_tls_client_subscribes_and_receives_its_own_messages_at_qos_0_and_1() {
    let pki = Pki::new("own-messages");
    let broker = Broker::with_tls(1, pki.settings());
    let versions: [(&str, &[&'static rustls::SupportedProtocolVersion]); 2] = [
        ("TLS 1.3", &[&rustls::version::TLS13]),
        ("TLS 1.2", &[&rustls::version::TLS12]),
    ];
    for (tls_name, tls_version) in versions {
        for v in [Version::V311, Version::V5] {
            let context = format!("{tls_name}, MQTT {v:?}");
            let config = client_config(&pki.ca, None, tls_version);
            let mut client = TlsClient::connect(broker.tls[0], config, "own", v);
            let negotiated = client.stream.conn.protocol_version();
            let expected = tls_version[0].version;
            assert_eq!(negotiated, Some(expected), "{context}");
            assert_eq!(client.subscribe("own/#", QoS::AtLeastOnce), ReasonCode(1));

            client.send(&publish_packet(
                "own/0",
                b"qos 0 over tls",
                QoS::AtMostOnce,
                false,
                0,
            ));
            let p = client.recv_publish();
            assert_eq!(
                (topic(&p), &p.payload[..]),
                ("own/0", &b"qos 0 over tls"[..])
            );
            assert_eq!(p.qos, QoS::AtMostOnce, "{context}");

            client.send(&publish_packet(
                "own/1",
                b"qos 1 over tls",
                QoS::AtLeastOnce,
                false,
                9,
            ));
            // The PUBACK and the delivery may come in either order.
            let (mut acked, mut delivered) = (false, None);
            while !acked || delivered.is_none() {
                match client.recv() {
                    Packet::PubAck(ack) if ack.pkid == 9 && !acked => {
                        assert!(ack.reason.0 < 0x80, "{context}: {ack:?}");
                        acked = true;
                    }
                    Packet::Publish(p) if delivered.is_none() => {
                        client.ack(&p);
                        delivered = Some(p);
                    }
                    other => panic!("{context}: unexpected {other:?}"),
                }
            }
            let p = delivered.unwrap();
            assert_eq!(
                (topic(&p), &p.payload[..]),
                ("own/1", &b"qos 1 over tls"[..])
            );
            assert_eq!(p.qos, QoS::AtLeastOnce, "{context}");
            client.expect_nothing();
            client.disconnect();
        }
    }
}

/// 200 KiB payloads (many TLS records each) followed by 1,000 small messages, at QoS 0 and at
/// QoS 1, from one TLS publisher to a TLS subscriber (2 shards, connections placed round-robin,
/// so usually one on each): every byte arrives, in order [MQTT-4.6.0-6]. The subscriber reads
/// nothing until the publisher's packets were all handled, so 6 MiB wait for it: more than the
/// kernel's socket buffers hold, which sends the TLS writer down its full-socket path (records
/// copied out for io_uring to wait on) as well as its vectored one.
#[test]
fn a_200_kib_payload_and_1000_small_messages_arrive_intact_and_in_order_over_tls() {
    const LARGE: usize = 30;
    const SMALL: usize = 1000;
    let pki = Pki::new("bulk");
    let broker = Broker::start(2, vec![pki.settings()], |config| {
        // Room for the whole burst, so the broker neither pauses the publisher nor drops for
        // the subscriber that does not read yet.
        let limits = &mut config.limits;
        limits.write_buffer_pause_bytes = 32 << 20;
        limits.write_buffer_bytes_max = 64 << 20;
        limits.queue_bytes_max = 64 << 20;
        limits.queue_messages_max = 10_000;
    });
    let config = pki.client_config(None);
    let mut sub = TlsClient::connect(broker.tls[0], config.clone(), "bulk-sub", Version::V5);
    assert_eq!(sub.subscribe("bulk/#", QoS::AtLeastOnce), ReasonCode(1));
    let mut publisher = TlsClient::connect(broker.tls[0], config, "bulk-pub", Version::V5);

    let large = |qos: u8, i: usize| pattern(200 << 10, (qos as usize * LARGE + i) as u32);
    let small = |qos: u8, i: usize| format!("q{qos} message {i:04} ").repeat(3).into_bytes();
    let (go, ready) = std::sync::mpsc::channel::<QoS>();
    let (round_done, done) = std::sync::mpsc::channel::<()>();
    let reader = std::thread::spawn(move || {
        while let Ok(qos) = ready.recv() {
            let q = qos as u8;
            for i in 0..LARGE {
                let p = sub.publish_or_fail(&format!("large message {i} at {qos:?}"));
                assert_eq!((topic(&p), p.qos), ("bulk/large", qos));
                assert!(
                    p.payload[..] == large(q, i)[..],
                    "large message {i} at {qos:?} changed"
                );
            }
            for i in 0..SMALL {
                let p = sub.publish_or_fail(&format!("small message {i} at {qos:?}"));
                assert_eq!((topic(&p), p.qos), ("bulk/small", qos));
                assert_eq!(
                    p.payload[..],
                    small(q, i)[..],
                    "small message {i} at {qos:?}"
                );
            }
            sub.expect_nothing();
            let _ = round_done.send(());
        }
        sub.disconnect();
    });
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
        let q = qos as u8;
        let mut pkids = (1..=u16::MAX).map(|id| if qos == QoS::AtMostOnce { 0 } else { id });
        for i in 0..LARGE {
            let pkid = pkids.next().unwrap();
            publisher.send(&publish_packet(
                "bulk/large",
                &large(q, i),
                qos,
                false,
                pkid,
            ));
        }
        for i in 0..SMALL {
            let pkid = pkids.next().unwrap();
            publisher.send(&publish_packet(
                "bulk/small",
                &small(q, i),
                qos,
                false,
                pkid,
            ));
        }
        // Every PUBLISH was handled once its PUBACK, or the PINGRESP behind them, is back.
        if qos == QoS::AtLeastOnce {
            for expected in 1..=(LARGE + SMALL) as u16 {
                match publisher.recv() {
                    Packet::PubAck(ack) if ack.pkid == expected && ack.reason.0 < 0x80 => {}
                    other => panic!("expected PUBACK {expected}, got {other:?}"),
                }
            }
        }
        publisher.send(&Packet::PingReq);
        assert_eq!(publisher.recv(), Packet::PingResp);
        go.send(qos).expect("the subscriber is reading");
        if done.recv_timeout(Duration::from_secs(60)).is_err() {
            break; // the reader failed: its panic is reported below
        }
    }
    drop(go);
    if let Err(panic) = reader.join() {
        std::panic::resume_unwind(panic);
    }
    publisher.disconnect();
}

// ---------------------------------------------------------------------------------------------
// 2. mosquitto_pub / mosquitto_sub and paho-mqtt over TLS.

/// mosquitto_pub (with `--cafile`, and `--cert`/`--key` where the listener wants a client
/// certificate) publishes to a TLS subscriber; mosquitto_sub receives a retained message that
/// a TLS client left; mosquitto_sub without a certificate is turned away where one is required.
#[test]
fn mosquitto_clients_publish_and_subscribe_over_tls_with_cafile_and_client_certs() {
    if !interop_ready(&["mosquitto_pub", "mosquitto_sub"]) {
        return;
    }
    let pki = Pki::new("mosquitto");
    let broker = Broker::start(2, vec![pki.settings(), pki.client_cert_settings()], |_| {});
    let client = pki.client("mosquitto-client", 2);
    let identity_files = client.write(&pki.dir, "client");
    let cases = [
        ("server certificate only", broker.tls[0], None),
        ("client certificate", broker.tls[1], Some(&identity_files)),
    ];
    for (case, addr, identity) in cases {
        for v in [Version::V311, Version::V5] {
            let context = format!("{case}, MQTT {v:?}");
            let live = format!("m/{}/{v:?}/live", addr.port());
            let retained = format!("m/{}/{v:?}/retained", addr.port());
            let config = pki.client_config(Some(&client));
            let mut ours = TlsClient::connect(addr, config, "rust-tls", v);
            assert_eq!(ours.subscribe(&live, QoS::AtLeastOnce), ReasonCode(1));

            let mut publish = mosquitto("mosquitto_pub", addr, &pki.ca_file, identity, v);
            publish.args(["-t", &live, "-q", "1", "-m", "from mosquitto_pub"]);
            let output = run(publish);
            assert!(output.status.success(), "{context}: {}", describe(&output));
            let p = ours.recv_publish();
            assert_eq!(topic(&p), live, "{context}");
            assert_eq!(&p.payload[..], b"from mosquitto_pub", "{context}");

            ours.send(&publish_packet(
                &retained,
                b"left by rustls",
                QoS::AtLeastOnce,
                true,
                3,
            ));
            assert!(
                matches!(ours.recv(), Packet::PubAck(a) if a.pkid == 3),
                "{context}"
            );
            let mut subscribe = mosquitto("mosquitto_sub", addr, &pki.ca_file, identity, v);
            subscribe.args(["-t", &retained, "-C", "1", "-W", "5", "-v"]);
            let output = run(subscribe);
            assert!(output.status.success(), "{context}: {}", describe(&output));
            let stdout = String::from_utf8_lossy(&output.stdout);
            assert_eq!(
                stdout.trim(),
                format!("{retained} left by rustls"),
                "{context}"
            );
            ours.disconnect();
        }
    }
    let mut refused = mosquitto(
        "mosquitto_sub",
        broker.tls[1],
        &pki.ca_file,
        None,
        Version::V311,
    );
    refused.args(["-t", "m/#", "-C", "1", "-W", "5"]);
    let output = run(refused);
    assert!(
        !output.status.success(),
        "mosquitto_sub without a certificate got in: {}",
        describe(&output)
    );
}

/// paho-mqtt 2.x with `tls_set(ca_certs=...)` (and a client certificate where the listener
/// wants one) subscribes, publishes at QoS 1 and receives its own message, in 3.1.1 and 5.0.
#[test]
fn paho_mqtt_subscribes_and_publishes_over_tls() {
    if !interop_ready(&["paho"]) {
        return;
    }
    const SCRIPT: &str = r#"
import sys, paho.mqtt.client as mqtt
port, version, ca, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
protocol = mqtt.MQTTv5 if version == "5" else mqtt.MQTTv311
client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-tls", protocol=protocol)
client.tls_set(ca_certs=ca, certfile=cert or None, keyfile=key or None)
def on_connect(client, userdata, flags, reason, properties):
    print("CONNACK", reason.value, flush=True)
    client.subscribe("paho/tls", qos=1)
def on_subscribe(client, userdata, mid, reasons, properties):
    print("SUBACK", [r.value for r in reasons], flush=True)
    client.publish("paho/tls", b"over tls from paho", qos=1)
def on_message(client, userdata, message):
    print("MSG", message.topic, message.qos, message.payload.decode(), flush=True)
    client.disconnect()
client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
client.connect("127.0.0.1", port, keepalive=30)
client.loop_forever()
"#;
    let pki = Pki::new("paho");
    let broker = Broker::start(1, vec![pki.settings(), pki.client_cert_settings()], |_| {});
    let client = pki.client("paho-client", 2);
    let (cert, key) = client.write(&pki.dir, "client");
    let cases = [
        ("server certificate only", broker.tls[0], None),
        ("client certificate", broker.tls[1], Some((&cert, &key))),
    ];
    for (case, addr, identity) in cases {
        for version in ["311", "5"] {
            let mut command = Command::new("python3");
            command
                .args(["-c", SCRIPT, &addr.port().to_string(), version])
                .arg(&pki.ca_file);
            match identity {
                Some((cert, key)) => command.arg(cert).arg(key),
                None => command.args(["", ""]),
            };
            let output = run(command);
            let context = format!("{case}, MQTT {version}: {}", describe(&output));
            assert!(output.status.success(), "{context}");
            let stdout = String::from_utf8_lossy(&output.stdout);
            let lines: Vec<&str> = stdout.lines().collect();
            assert_eq!(
                lines,
                [
                    "CONNACK 0",
                    "SUBACK [1]",
                    "MSG paho/tls 1 over tls from paho"
                ],
                "{context}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Client certificates.

/// With `require_certificate = true` and `ca_file` (and `crl_file`): a certificate signed by
/// the CA gets in; no certificate, one from another CA, an expired one and a revoked one are
/// refused in the handshake with the TLS alert that says why, before any MQTT; the broker goes
/// on serving.
#[test]
fn client_certificates_are_required_checked_against_the_ca_expiry_and_the_crl() {
    let pki = Pki::new("client-certs");
    let crl_file = pki.dir.write("crl.pem", &new_crl(&pki.ca, &[3]));
    let settings = TlsSettings {
        crl_file: Some(crl_file),
        ..pki.client_cert_settings()
    };
    let broker = Broker::with_tls(1, settings);
    let addr = broker.tls[0];
    let good = pki.client("good", 2);
    let revoked = pki.client("revoked", 3);
    let expired = new_leaf(
        &pki.ca,
        LeafSpec {
            is_expired: true,
            ..LeafSpec::client("expired", 4)
        },
    );
    let stranger_ca = new_ca("another CA");
    let stranger = new_leaf(&stranger_ca, LeafSpec::client("stranger", 5));
    let try_connect = |identity: Option<&Leaf>| {
        let connect = connect_packet("certs", Version::V5, true);
        TlsClient::try_connect(addr, pki.client_config(identity), connect)
    };

    let (client, ack) = try_connect(Some(&good)).expect("a certificate signed by the CA gets in");
    assert_eq!(ack.code, ReasonCode::SUCCESS);
    client.disconnect();
    // The broker says why, in a TLS alert, once it has seen the client's certificate.
    let refused = [
        ("no certificate", None, "CertificateRequired"),
        (
            "a certificate from an unknown CA",
            Some(&stranger),
            "UnknownCA",
        ),
        (
            "an expired certificate",
            Some(&expired),
            "CertificateExpired",
        ),
        (
            "a revoked certificate",
            Some(&revoked),
            "CertificateRevoked",
        ),
    ];
    for (case, identity, alert) in refused {
        match try_connect(identity) {
            Ok((_, ack)) => panic!("{case} got a CONNACK: {ack:?}"),
            Err(why) => assert!(why.contains(alert), "{case}: expected alert {alert}: {why}"),
        }
    }
    let (client, ack) = try_connect(Some(&good)).expect("the broker still serves");
    assert_eq!(ack.code, ReasonCode::SUCCESS);
    client.disconnect();
}

/// `use_identity_as_username = true`: the certificate's Common Name is the username the ACL
/// sees (`user device-7` may use `dev/7/#` and nothing else), whatever username the CONNECT
/// carries.
#[test]
fn the_certificate_common_name_is_the_username_for_the_acl() {
    let pki = Pki::new("identity");
    let acl = pki.dir.write(
        "acl",
        "user device-7\ntopic readwrite dev/7/#\n\nuser admin\ntopic readwrite #\n",
    );
    let settings = TlsSettings {
        use_identity_as_username: true,
        ..pki.client_cert_settings()
    };
    let broker = Broker::start(1, vec![settings], |config| {
        config.acl_file = Some(acl);
    });
    let device = pki.client("device-7", 2);
    for v in [Version::V311, Version::V5] {
        let refused = if v == Version::V5 {
            ReasonCode::NOT_AUTHORIZED
        } else {
            ReasonCode::UNSPECIFIED_ERROR
        };
        // The CONNECT claims to be admin; the certificate says device-7, and that counts.
        let mut connect = connect_packet("device", v, true);
        connect.username = MqttString::from_str_checked("admin");
        let mut client =
            TlsClient::connect_with(broker.tls[0], pki.client_config(Some(&device)), connect);
        assert_eq!(
            client.subscribe("dev/7/#", QoS::AtLeastOnce),
            ReasonCode(1),
            "{v:?}"
        );
        assert_eq!(
            client.subscribe("dev/8/#", QoS::AtLeastOnce),
            refused,
            "{v:?}"
        );
        client.send(&publish_packet(
            "dev/7/temp",
            b"21",
            QoS::AtLeastOnce,
            false,
            1,
        ));
        let (mut acked, mut delivered) = (false, false);
        while !(acked && delivered) {
            match client.recv() {
                Packet::PubAck(ack) if ack.pkid == 1 => {
                    assert_eq!(ack.reason, ReasonCode::SUCCESS, "{v:?}");
                    acked = true;
                }
                Packet::Publish(p) if topic(&p) == "dev/7/temp" => {
                    client.ack(&p);
                    delivered = true;
                }
                other => panic!("{v:?}: unexpected {other:?}"),
            }
        }
        client.send(&publish_packet(
            "dev/8/temp",
            b"22",
            QoS::AtLeastOnce,
            false,
            2,
        ));
        let expected = if v == Version::V5 {
            ReasonCode::NOT_AUTHORIZED
        } else {
            ReasonCode::SUCCESS
        };
        match client.recv() {
            Packet::PubAck(ack) if ack.pkid == 2 => assert_eq!(ack.reason, expected, "{v:?}"),
            other => panic!("{v:?}: expected PUBACK, got {other:?}"),
        }
        client.expect_nothing();
        client.disconnect();
    }
}

/// `use_identity_as_username = true` and a certificate without a Common Name: there is no
/// identity, so the client is refused in its CONNACK rather than let in under the username its
/// CONNECT claims. mosquitto 2.0.11 refuses it with 0x04 (3.1.1) / 0x86 (5.0), Bad user name
/// or password; ringcast with the Not authorized it gives every refused login, 0x05 / 0x87.
#[test]
fn a_certificate_without_a_common_name_is_refused_when_it_should_be_the_username() {
    let pki = Pki::new("no-cn");
    let acl = pki
        .dir
        .write("acl", "user device-7\ntopic readwrite dev/7/#\n");
    let settings = TlsSettings {
        use_identity_as_username: true,
        ..pki.client_cert_settings()
    };
    let broker = Broker::start(1, vec![settings], |config| {
        config.acl_file = Some(acl);
    });
    let nameless = new_leaf(
        &pki.ca,
        LeafSpec {
            common_name: None,
            ..LeafSpec::client("", 2)
        },
    );
    for v in [Version::V311, Version::V5] {
        let mut connect = connect_packet("nameless", v, true);
        connect.username = MqttString::from_str_checked("device-7");
        let config = pki.client_config(Some(&nameless));
        let (mut client, ack) = TlsClient::try_connect(broker.tls[0], config, connect)
            .unwrap_or_else(|why| panic!("{v:?}: no CONNACK: {why}"));
        // mosquitto 2.0.11 answers 0x04 / 0x86 here (bad user name or password).
        let refusal = match v {
            Version::V311 => ReasonCode(0x04),
            Version::V5 => ReasonCode::BAD_USER_NAME_OR_PASSWORD,
        };
        assert_eq!(ack.code, refusal, "{v:?}: let in as device-7: {ack:?}");
        match client.recv_within(WAIT) {
            Err((NoPacket::Closed, _)) => {}
            other => panic!("{v:?}: expected a close after the refusal, got {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 4. The wrong protocol on a port, and silence.

/// Reads `stream` until the broker closes it or `limit` passes; the bytes read, or None if it
/// stayed open.
fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut chunk) {
            Ok(0) => return Some(got),
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return None
            }
            // A reset closes it too.
            Err(_) => return Some(got),
        }
    }
}

/// A plain MQTT CONNECT on the TLS port is no ClientHello: the connection is closed without a
/// CONNACK. A TLS ClientHello on the plain port is no CONNECT: the handshake fails and the
/// connection is closed. Both listeners go on serving.
#[test]
fn plain_mqtt_on_the_tls_port_and_tls_on_the_plain_port_are_closed_and_others_still_served() {
    let pki = Pki::new("wrong-protocol");
    let broker = Broker::with_tls(1, pki.settings());

    let mut plain = Raw::open(broker.tls[0], Version::V311);
    plain.send(&Packet::Connect(Box::new(connect_packet(
        "plain",
        Version::V311,
        true,
    ))));
    let answer = read_until_closed(&mut plain.stream, WAIT).expect("the TLS port closes");
    // At most a TLS alert record (content type 21) comes back, never a CONNACK (0x20).
    assert!(
        answer.is_empty() || answer[0] == 0x15,
        "the TLS port answered plain MQTT with {answer:02x?}"
    );

    let started = Instant::now();
    let error = TlsClient::handshake(broker.plain, pki.client_config(None))
        .err()
        .expect("a TLS handshake with the plain port fails");
    assert!(
        started.elapsed() < WAIT,
        "took {:?}: {error}",
        started.elapsed()
    );

    let mut tls = TlsClient::connect(broker.tls[0], pki.client_config(None), "after", Version::V5);
    let mut raw = Raw::connect(broker.plain, "after-plain");
    assert_eq!(
        raw.subscribe("after/#", QoS::AtMostOnce),
        vec![ReasonCode(0)]
    );
    tls.send(&publish_packet(
        "after/tls",
        b"still here",
        QoS::AtMostOnce,
        false,
        0,
    ));
    let p = raw.recv_publish();
    assert_eq!(
        (topic(&p), &p.payload[..]),
        ("after/tls", &b"still here"[..])
    );
    tls.disconnect();
    raw.disconnect();
}

/// A client that opens TCP to the TLS port and sends nothing (no ClientHello) is closed by the
/// CONNECT deadline (`limits.connect_timeout_secs = 1`), not held for ever.
#[test]
fn a_silent_connection_to_the_tls_port_is_closed_by_the_connect_deadline() {
    let pki = Pki::new("silent");
    let broker = Broker::start(1, vec![pki.settings()], |config| {
        config.limits.connect_timeout_secs = 1;
    });
    let started = Instant::now();
    let mut silent = TcpStream::connect(broker.tls[0]).expect("TCP connect");
    let answer = read_until_closed(&mut silent, Duration::from_secs(10))
        .expect("the broker closes a silent connection");
    let took = started.elapsed();
    assert!(answer.is_empty(), "sent {answer:02x?} to a silent client");
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(5),
        "closed after {took:?} with a 1 s CONNECT deadline"
    );
    // The listener is unharmed.
    TlsClient::connect(
        broker.tls[0],
        pki.client_config(None),
        "later",
        Version::V311,
    )
    .disconnect();
}

/// rumqttc, the client many Rust services use, over TLS (rustls, trusting the test CA):
/// subscribes, publishes at QoS 1 and receives its own message.
#[test]
fn rumqttc_subscribes_and_publishes_over_tls() {
    let pki = Pki::new("rumqttc");
    let broker = Broker::with_tls(1, pki.settings());
    let config = pki.client_config(None);
    let port = broker.tls[0].port();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async move {
        let mut options = rumqttc::MqttOptions::new("rumqttc-tls", "127.0.0.1", port);
        let tls = rumqttc::TlsConfiguration::Rustls(config);
        options.set_transport(rumqttc::Transport::tls_with_config(tls));
        let (client, mut events) = rumqttc::AsyncClient::new(options, 10);
        client
            .subscribe("rq/#", rumqttc::QoS::AtLeastOnce)
            .await
            .expect("subscribe queued");
        client
            .publish(
                "rq/1",
                rumqttc::QoS::AtLeastOnce,
                false,
                b"over tls".to_vec(),
            )
            .await
            .expect("publish queued");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let event = tokio::time::timeout_at(deadline, events.poll())
                .await
                .expect("the message in time")
                .expect("the connection stays up");
            if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) = event {
                assert_eq!(
                    (p.topic.as_str(), &p.payload[..]),
                    ("rq/1", &b"over tls"[..])
                );
                break;
            }
        }
    });
}
