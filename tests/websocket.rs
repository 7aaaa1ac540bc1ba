//! MQTT over WebSocket, black-box: raw bytes for the handshake and the frames (RFC 6455), MQTT
//! 3.1.1 and 5.0 end to end over `ws://` and `wss://`, and plain HTTP on the same port.
//!
//! MQTT.js (npm `mqtt`, pinned in tests/js/package-lock.json) runs in Node and, from its
//! browser bundle, in headless Chromium (Debian's `chromium`, driven by playwright-core);
//! `.ci/run` installs both and runs `npm ci` in tests/js. A missing tool skips its test with a
//! note, unless `RINGCAST_REQUIRE_INTEROP=1` (set by CI), which turns it into a failure.
//!
//! Every broker listens on ephemeral loopback ports; every read and subprocess runs under a
//! deadline.

mod common;

use common::ws::{self, WsClient, BINARY, CLOSE, CONTINUATION, PING, PONG, TEXT};
use common::{connect_packet, publish_packet, Broker, Raw};
use ringcast::config::{Config, ListenerConfig, Protocol, TlsSettings};
use ringcast::protocol::*;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

/// How long one Node run (all its checks) may take; the scripts stop themselves sooner.
const NODE_LIMIT: Duration = Duration::from_secs(45);

/// A broker with a plain MQTT listener (`addrs()[0]`) and a WebSocket one (`addrs()[1]`).
fn broker_with(adjust: impl FnOnce(&mut Config)) -> (Broker, SocketAddr, SocketAddr) {
    let broker = Broker::start_with(1, |c| {
        c.ws_listen = vec!["127.0.0.1:0".parse().unwrap()];
        adjust(c);
    });
    let addrs = broker.addrs();
    let (mqtt, ws) = (addrs[0], addrs[addrs.len() - 1]);
    (broker, mqtt, ws)
}

fn broker() -> (Broker, SocketAddr, SocketAddr) {
    broker_with(|_| {})
}

#[test]
fn upgrade_gets_101_with_the_rfc6455_accept_key_and_the_mqtt_subprotocol() {
    let (_broker, _, addr) = broker();
    for (offered, chosen) in [
        ("mqtt", "mqtt"),
        ("mqttv3.1", "mqttv3.1"),
        ("chat, mqttv3.1, mqtt", "mqtt"),
    ] {
        let response = ws::http(addr, &ws::upgrade_request("/mqtt", Some(offered)));
        assert_eq!(response.status, 101, "{response:?}");
        assert_eq!(
            response.header("sec-websocket-accept"),
            Some(ws::SAMPLE_ACCEPT)
        );
        assert_eq!(response.header("sec-websocket-protocol"), Some(chosen));
        assert_eq!(response.header("upgrade"), Some("websocket"));
    }
}

#[test]
fn bad_upgrades_are_refused_wrong_path_404_missing_key_or_no_mqtt_subprotocol_400() {
    let (_broker, _, addr) = broker();
    let wrong_path = ws::http(addr, &ws::upgrade_request("/ws", Some("mqtt")));
    assert_eq!(wrong_path.status, 404);
    let no_key = ws::upgrade_request("/mqtt", Some("mqtt"))
        .replace(&format!("Sec-WebSocket-Key: {}\r\n", ws::SAMPLE_KEY), "");
    assert_eq!(ws::http(addr, &no_key).status, 400);
    let no_protocol = ws::http(addr, &ws::upgrade_request("/mqtt", None));
    assert_eq!(no_protocol.status, 400);
    let other_protocol = ws::http(addr, &ws::upgrade_request("/mqtt", Some("chat")));
    assert_eq!(other_protocol.status, 400);
    let version = ws::upgrade_request("/mqtt", Some("mqtt")).replace("Version: 13", "Version: 8");
    let refused = ws::http(addr, &version);
    assert_eq!(refused.status, 426);
    assert_eq!(refused.header("sec-websocket-version"), Some("13"));
}

#[test]
fn several_mqtt_packets_in_one_frame_are_all_handled() {
    let (_broker, _, addr) = broker();
    let mut client = WsClient::open(addr);
    let connect = Packet::Connect(Box::new(connect_packet("several", Version::V311, true)));
    let mut frame = client.encode(&connect);
    frame.extend(client.encode(&Packet::PingReq));
    frame.extend(client.encode(&Packet::PingReq));
    client.send_frame(true, BINARY, &frame);
    assert!(matches!(client.recv(), Packet::ConnAck(_)));
    assert_eq!(client.recv(), Packet::PingResp);
    assert_eq!(client.recv(), Packet::PingResp);
}

#[test]
fn one_mqtt_packet_over_three_frames_is_reassembled() {
    let (_broker, _, addr) = broker();
    let mut client = WsClient::open(addr);
    let connect = client.encode(&Packet::Connect(Box::new(connect_packet(
        "fragmented",
        Version::V311,
        true,
    ))));
    client.send_frame(false, BINARY, &connect[..3]);
    client.send_frame(false, CONTINUATION, &connect[3..9]);
    client.send_frame(true, CONTINUATION, &connect[9..]);
    assert!(matches!(client.recv(), Packet::ConnAck(_)));
    // Split without fragmentation too: one packet across two whole messages.
    let ping = client.encode(&Packet::PingReq);
    client.send_frame(true, BINARY, &ping[..1]);
    client.send_frame(true, BINARY, &ping[1..]);
    assert_eq!(client.recv(), Packet::PingResp);
}

#[test]
fn ping_gets_a_pong_with_its_payload_between_mqtt_packets() {
    let (_broker, _, addr) = broker();
    let mut client = WsClient::connect_with(addr, connect_packet("pinger", Version::V311, true));
    client.send_frame(true, PING, b"are you there");
    let pong = client.next_frame(common::WAIT).expect("a pong");
    assert_eq!(
        (pong.opcode, pong.payload.as_slice()),
        (PONG, &b"are you there"[..])
    );
    client.send(&Packet::PingReq);
    assert_eq!(client.recv(), Packet::PingResp);
}

#[test]
fn close_gets_a_close_reply_and_end_of_stream() {
    let (_broker, _, addr) = broker();
    let mut client = WsClient::connect_with(addr, connect_packet("closer", Version::V311, true));
    client.send_frame(true, CLOSE, &1000u16.to_be_bytes());
    client.expect_close(1000);
}

#[test]
fn unmasked_frame_closes_with_1002_and_other_connections_go_on() {
    let (_broker, _, addr) = broker();
    let mut other = WsClient::connect_with(addr, connect_packet("other", Version::V311, true));
    let mut client = WsClient::connect_with(addr, connect_packet("unmasked", Version::V311, true));
    let ping = client.encode(&Packet::PingReq);
    client.send_raw(&ws::client_frame(true, BINARY, &ping, false));
    client.expect_close(1002);
    other.send(&Packet::PingReq);
    assert_eq!(other.recv(), Packet::PingResp);
}

#[test]
fn frame_over_the_maximum_packet_size_closes_with_1009() {
    let (_broker, _, addr) = broker_with(|c| c.limits.packet_size_max = 1024);
    let mut client = WsClient::connect_with(addr, connect_packet("big", Version::V311, true));
    // Only the header: the broker refuses before the payload arrives.
    let frame = ws::client_frame(true, BINARY, &[0u8; 2000], true);
    client.send_raw(&frame[..8]);
    client.expect_close(1009);
}

#[test]
fn text_frame_closes_with_1003() {
    let (_broker, _, addr) = broker();
    let mut client = WsClient::connect_with(addr, connect_packet("text", Version::V311, true));
    client.send_frame(true, TEXT, b"{\"hello\":1}");
    client.expect_close(1003);
}

#[test]
fn mqtt_3_1_1_over_websocket_reaches_tcp_and_websocket_subscribers() {
    let (_broker, mqtt, addr) = broker();
    let mut ws_sub = WsClient::connect_with(addr, connect_packet("ws-sub", Version::V311, true));
    ws_sub.subscribe("sensors/+/temp", QoS::AtLeastOnce);
    let mut tcp_sub = Raw::connect(mqtt, "tcp-sub");
    tcp_sub.subscribe("sensors/#", QoS::AtLeastOnce);
    let mut ws_pub = WsClient::connect_with(addr, connect_packet("ws-pub", Version::V311, true));
    ws_pub.send(&publish_packet(
        "sensors/a/temp",
        b"21.5",
        QoS::AtLeastOnce,
        false,
        9,
    ));
    assert!(matches!(ws_pub.recv(), Packet::PubAck(ack) if ack.pkid == 9));
    let got = ws_sub.recv_publish();
    assert_eq!(
        (got.topic.as_str(), &got.payload[..]),
        ("sensors/a/temp", &b"21.5"[..])
    );
    assert_eq!(&tcp_sub.recv_publish().payload[..], b"21.5");
    // From plain TCP to WebSocket, a large payload (several TCP writes) intact.
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    tcp_sub.publish("sensors/b/temp", &big, QoS::AtMostOnce, false);
    assert_eq!(&ws_sub.recv_publish().payload[..], &big[..]);
}

#[test]
fn a_thousand_messages_arrive_in_order_over_websocket() {
    let (_broker, mqtt, addr) = broker();
    let mut sub = WsClient::connect_with(addr, connect_packet("order", Version::V311, true));
    sub.subscribe("seq", QoS::AtMostOnce);
    let mut publisher = Raw::connect(mqtt, "seq-pub");
    for i in 0..1000u32 {
        publisher.send(&publish_packet(
            "seq",
            &i.to_be_bytes(),
            QoS::AtMostOnce,
            false,
            0,
        ));
    }
    for i in 0..1000u32 {
        assert_eq!(&sub.recv_publish().payload[..], &i.to_be_bytes());
    }
}

#[test]
fn ten_megabytes_queued_behind_a_full_socket_arrive_whole_and_in_order() {
    // More than loopback's socket buffers hold: the writer meets a full socket in the middle
    // of frames it announced, and must finish each before anything else.
    let (_broker, mqtt, addr) = broker();
    let mut sub = WsClient::connect_with(addr, connect_packet("full", Version::V311, true));
    sub.subscribe("bulk", QoS::AtLeastOnce);
    const MESSAGES: u32 = 600;
    let publisher = std::thread::spawn(move || {
        let mut publisher = Raw::connect(mqtt, "bulk-pub");
        for i in 0..MESSAGES {
            let mut payload = vec![(i % 256) as u8; 16 << 10];
            payload[..4].copy_from_slice(&i.to_be_bytes());
            publisher.send(&publish_packet("bulk", &payload, QoS::AtMostOnce, false, 0));
        }
        publisher.send(&Packet::PingReq);
        assert_eq!(publisher.recv(), Packet::PingResp);
    });
    for i in 0..MESSAGES {
        let publish = sub.recv_publish();
        assert_eq!(
            &publish.payload[..4],
            &i.to_be_bytes(),
            "message {i} in order"
        );
        assert!(publish.payload[4..].iter().all(|&b| b == (i % 256) as u8));
    }
    publisher.join().unwrap();
}

#[test]
fn a_client_disconnect_or_a_protocol_error_ends_with_close_1000() {
    let (_broker, _, addr) = broker();
    let mut client = WsClient::connect_with(addr, connect_packet("leaves", Version::V311, true));
    client.send(&Packet::Disconnect(Disconnect::default()));
    client.expect_close(1000);
    let mut client = WsClient::connect_with(addr, connect_packet("errs", Version::V311, true));
    client.send(&Packet::Connect(Box::new(connect_packet(
        "again",
        Version::V311,
        true,
    ))));
    client.expect_close(1000);
}

#[test]
fn mqtt_5_over_websocket_connects_subscribes_and_publishes_qos2() {
    let (_broker, _, addr) = broker();
    let mut sub = WsClient::connect_with(addr, connect_packet("v5-sub", Version::V5, true));
    sub.subscribe("v5/#", QoS::ExactlyOnce);
    let mut publisher = WsClient::connect_with(addr, connect_packet("v5-pub", Version::V5, true));
    publisher.send(&publish_packet("v5/x", b"once", QoS::ExactlyOnce, true, 5));
    assert!(matches!(publisher.recv(), Packet::PubRec(_)));
    publisher.send(&Packet::PubRel(Ack {
        pkid: 5,
        ..Ack::default()
    }));
    assert!(matches!(publisher.recv(), Packet::PubComp(_)));
    let got = sub.recv_publish();
    assert_eq!(
        (got.topic.as_str(), &got.payload[..]),
        ("v5/x", &b"once"[..])
    );
    assert_eq!(got.qos, QoS::ExactlyOnce);
}

#[test]
fn http_get_on_the_websocket_port_reaches_the_operator_endpoints_with_keep_alive() {
    let (_broker, _, addr) = broker();
    let mut stream = ws::tcp(addr);
    let mut buf = Vec::new();
    for (path, status) in [("/", 200), ("/metrics", 200), ("/nothing-here", 404)] {
        write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let response = ws::read_response(&mut stream, &mut buf);
        assert_eq!(response.status, status, "{path}");
        assert_eq!(response.header("connection"), Some("keep-alive"));
    }
    let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(9000));
    assert_eq!(ws::http(addr, &big).status, 431);
}

#[test]
fn pages_of_other_web_origins_get_403_unless_allowed_origins_names_them() {
    let upgrade_from = |origin: &str| {
        ws::upgrade_request("/mqtt", Some("mqtt"))
            .replace("\r\n\r\n", &format!("\r\nOrigin: {origin}\r\n\r\n"))
    };
    let (_broker, _, addr) = broker();
    assert_eq!(
        ws::http(addr, &upgrade_from("https://evil.example")).status,
        403
    );
    let get = "GET / HTTP/1.1\r\nHost: x\r\nOrigin: https://evil.example\r\n\r\n";
    assert_eq!(ws::http(addr, get).status, 403);
    assert_eq!(
        ws::http(addr, &upgrade_from("http://localhost:3000")).status,
        101
    );
    let own = format!("http://{addr}");
    let own_page = ws::upgrade_request("/mqtt", Some("mqtt"))
        .replace("Host: 127.0.0.1", &format!("Host: {addr}"))
        .replace("\r\n\r\n", &format!("\r\nOrigin: {own}\r\n\r\n"));
    assert_eq!(ws::http(addr, &own_page).status, 101);
    let listener = ListenerConfig {
        allowed_origins: Some(vec!["https://app.example".into()]),
        ..ListenerConfig::new("127.0.0.1:0".parse().unwrap(), Protocol::Websocket)
    };
    let (_broker, addr, _) = broker_with(|c| {
        c.ws_listen.clear();
        c.listener = vec![listener];
    });
    assert_eq!(
        ws::http(addr, &upgrade_from("https://app.example")).status,
        101
    );
    assert_eq!(
        ws::http(addr, &upgrade_from("https://evil.example")).status,
        403
    );
}

#[test]
fn without_http_api_plain_requests_get_404_and_426_on_the_mqtt_path() {
    let listener = ListenerConfig {
        http_api: Some(false),
        ..ListenerConfig::new("127.0.0.1:0".parse().unwrap(), Protocol::Websocket)
    };
    // `[[listener]]`s come first: the WebSocket one is addrs()[0].
    let (_broker, addr, _) = broker_with(|c| {
        c.ws_listen.clear();
        c.listener = vec![listener];
    });
    assert_eq!(ws::http(addr, "GET / HTTP/1.1\r\n\r\n").status, 404);
    let on_path = ws::http(addr, "GET /mqtt HTTP/1.1\r\n\r\n");
    assert_eq!(on_path.status, 426);
    let mut client = WsClient::connect_with(addr, connect_packet("no-api", Version::V311, true));
    client.send(&Packet::PingReq);
    assert_eq!(client.recv(), Packet::PingResp);
}

/// A CA, and a server certificate it signs for 127.0.0.1, written to a fresh folder.
struct TestCa {
    dir: std::path::PathBuf,
    root: rustls::pki_types::CertificateDer<'static>,
}

impl TestCa {
    fn new() -> TestCa {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let dir = std::env::temp_dir().join(format!("ringcast-wss-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let params = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca).unwrap();
        std::fs::write(dir.join("server.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
        TestCa {
            dir,
            root: ca.der().clone(),
        }
    }

    fn settings(&self) -> TlsSettings {
        TlsSettings {
            cert_file: self.dir.join("server.pem"),
            key_file: self.dir.join("server.key"),
            ..TlsSettings::default()
        }
    }

    fn connect(&self, addr: SocketAddr) -> Box<dyn ws::Io> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.root.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        Box::new(rustls::StreamOwned::new(conn, ws::tcp(addr)))
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn wss_carries_mqtt_and_http_over_tls_with_a_test_ca() {
    let ca = TestCa::new();
    let listener = ListenerConfig {
        tls: Some(ca.settings()),
        ..ListenerConfig::new("127.0.0.1:0".parse().unwrap(), Protocol::Websocket)
    };
    let (_broker, mqtt, addr) = broker_with(|c| {
        c.ws_listen.clear();
        c.listener = vec![listener];
        c.listen = vec!["127.0.0.1:0".parse().unwrap()];
    });
    // `[[listener]]`s come first: the TLS WebSocket one is addrs()[0].
    let (addr, mqtt) = (mqtt, addr);
    let mut sub = WsClient::upgrade(ca.connect(addr), "/mqtt");
    sub.handshake(connect_packet("wss-sub", Version::V5, true));
    sub.subscribe("secure/#", QoS::AtLeastOnce);
    let mut publisher = Raw::connect(mqtt, "plain-pub");
    let big: Vec<u8> = (0..100_000u32).map(|i| (i % 241) as u8).collect();
    publisher.publish("secure/big", &big, QoS::AtLeastOnce, false);
    let got = sub.recv_publish();
    assert_eq!(&got.payload[..], &big[..]);
    let mut io = ca.connect(addr);
    io.write_all(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let response = ws::read_response(&mut *io, &mut Vec::new());
    assert_eq!(response.status, 404);
}

/// tests/js, where the Node scripts and their node_modules are.
fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js")
}

/// Whether Node and tests/js/node_modules (`npm ci`) are there; if not, says so (a failure
/// under `RINGCAST_REQUIRE_INTEROP=1`).
fn has_node_and_modules() -> bool {
    let has_node = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_node {
        return common::tool_missing("node is not installed (apt-get install nodejs npm)");
    }
    if !js_dir().join("node_modules/mqtt").is_dir() {
        return common::tool_missing("tests/js/node_modules is missing (run npm ci in tests/js)");
    }
    true
}

/// Runs `node tests/js/SCRIPT URL` and returns its output; fails the test when it fails.
fn run_node(script: &str, url: &str) -> String {
    let mut child = Command::new("node")
        .arg(js_dir().join(script))
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start node");
    let status = common::wait_exit(&mut child, NODE_LIMIT);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let mut output = String::new();
    for pipe in [
        child.stdout.take().map(|p| Box::new(p) as Box<dyn Read>),
        child.stderr.take().map(|p| Box::new(p) as Box<dyn Read>),
    ]
    .into_iter()
    .flatten()
    {
        let mut pipe = pipe;
        let _ = pipe.read_to_string(&mut output);
    }
    let status =
        status.unwrap_or_else(|| panic!("node {script} ran past {NODE_LIMIT:?}: {output}"));
    assert!(
        status.success(),
        "node {script} failed ({status}):\n{output}"
    );
    output
}

#[test]
fn mqtt_js_in_node_speaks_3_1_1_and_5_0_at_every_qos_with_retained_and_wildcards() {
    if !has_node_and_modules() {
        return;
    }
    let (_broker, _, addr) = broker();
    let output = run_node("mqttjs.mjs", &format!("ws://{addr}/mqtt"));
    for version in ["v4", "v5"] {
        for check in ["QoS 0", "QoS 1", "QoS 2", "retained", "+ wildcard"] {
            let line = format!("ok: {version} {check}");
            assert!(output.contains(&line), "no {line:?} in:\n{output}");
        }
    }
    assert!(output.contains("all passed"), "{output}");
}

#[test]
fn mqtt_js_in_headless_chromium_subscribes_and_publishes_over_ws() {
    if !has_node_and_modules() {
        return;
    }
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() {
        common::tool_missing(&format!("{chromium} is missing (apt-get install chromium)"));
        return;
    }
    let (_broker, _, addr) = broker();
    let output = run_node("browser.mjs", &format!("ws://{addr}/mqtt"));
    assert!(
        output.contains("ok: received hello from chromium on browser/page/echo"),
        "{output}"
    );
}
