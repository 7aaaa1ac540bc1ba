//! A blocking MQTT-over-WebSocket client for tests, speaking raw frames: the upgrade request
//! as text, masked client frames out, server frames in, and MQTT packets inside them with
//! ringcast's own codec. Also a raw HTTP exchange for the plain requests a WebSocket listener
//! answers.

use super::WAIT;
use bytes::BytesMut;
use ringcast::net::websocket;
use ringcast::protocol::codec::{encode, Codec, Decoded};
use ringcast::protocol::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Frame opcodes.
pub const CONTINUATION: u8 = 0x0;
pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xA;

/// The key of RFC 6455's sample handshake, and the accept key it must get.
pub const SAMPLE_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
pub const SAMPLE_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// The mask the client frames use (any will do; a fixed one keeps failures replayable).
const MASK: [u8; 4] = [0xa1, 0x5e, 0x03, 0x7c];

/// Anything a WebSocket connection can run over: plain TCP, or TLS over it.
pub trait Io: Read + Write + Send {}
impl<T: Read + Write + Send> Io for T {}

/// A standard upgrade request for `path` offering `protocols` (none: no header).
pub fn upgrade_request(path: &str, protocols: Option<&str>) -> String {
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {SAMPLE_KEY}\r\nSec-WebSocket-Version: 13\r\n"
    );
    if let Some(protocols) = protocols {
        request.push_str(&format!("Sec-WebSocket-Protocol: {protocols}\r\n"));
    }
    request.push_str("\r\n");
    request
}

/// An HTTP response as read: status, headers (names lower-cased), body.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header named `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one HTTP response head (and its Content-Length body) from `io`; bytes read past it
/// stay in `buf`.
pub fn read_response(io: &mut dyn Io, buf: &mut Vec<u8>) -> HttpResponse {
    let deadline = Instant::now() + WAIT;
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        assert!(Instant::now() < deadline, "no HTTP response head in time");
        fill(io, buf);
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).expect("an ASCII head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map_or(0, |(_, v)| v.parse().expect("a number"));
    let len = if status == 101 { 0 } else { len };
    while buf.len() < head_end + len {
        assert!(Instant::now() < deadline, "no HTTP body in time");
        fill(io, buf);
    }
    let body = buf[head_end..head_end + len].to_vec();
    buf.drain(..head_end + len);
    HttpResponse {
        status,
        headers,
        body,
    }
}

/// Reads what comes into `buf`; panics at end of stream.
fn fill(io: &mut dyn Io, buf: &mut Vec<u8>) {
    let mut chunk = [0u8; 16 << 10];
    match io.read(&mut chunk) {
        Ok(0) => panic!(
            "connection closed; read so far: {:?}",
            String::from_utf8_lossy(buf)
        ),
        Ok(n) => buf.extend_from_slice(&chunk[..n]),
        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
        Err(e) => panic!("read failed: {e}; read so far: {buf:?}"),
    }
}

/// Opens a TCP connection with reads bounded by `WAIT`.
pub fn tcp(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect to broker");
    stream.set_nodelay(true).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream
}

/// Sends `request` (raw text) on a new connection and reads the response.
pub fn http(addr: SocketAddr, request: &str) -> HttpResponse {
    let mut stream = tcp(addr);
    stream.write_all(request.as_bytes()).unwrap();
    read_response(&mut stream, &mut Vec::new())
}

/// A frame as the server sent it.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

/// A client frame: masked unless `masked` is false.
pub fn client_frame(fin: bool, opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut frame = Vec::new();
    websocket::push_client_frame(&mut frame, fin, opcode, payload, masked.then_some(MASK));
    frame
}

/// An MQTT client over WebSocket, speaking raw frames.
pub struct WsClient {
    io: Box<dyn Io>,
    buf: Vec<u8>,
    /// MQTT bytes unwrapped from binary frames, not yet decoded.
    mqtt: BytesMut,
    codec: Codec,
    pub version: Version,
}

impl WsClient {
    /// Upgrades `io` on `path` (offering `mqtt`) and checks the 101 and its accept key.
    pub fn upgrade(mut io: Box<dyn Io>, path: &str) -> WsClient {
        io.write_all(upgrade_request(path, Some("mqtt")).as_bytes())
            .unwrap();
        let mut buf = Vec::new();
        let response = read_response(&mut *io, &mut buf);
        assert_eq!(response.status, 101, "{response:?}");
        assert_eq!(response.header("sec-websocket-accept"), Some(SAMPLE_ACCEPT));
        WsClient {
            io,
            buf,
            mqtt: BytesMut::new(),
            codec: Codec::with_version(Version::V311, 1 << 24),
            version: Version::V311,
        }
    }

    /// Upgrades a new TCP connection to `addr` on `/mqtt`.
    pub fn open(addr: SocketAddr) -> WsClient {
        WsClient::upgrade(Box::new(tcp(addr)), "/mqtt")
    }

    /// Connects over WebSocket with `connect` and checks the CONNACK accepts.
    pub fn connect_with(addr: SocketAddr, connect: Connect) -> WsClient {
        let mut client = WsClient::open(addr);
        client.handshake(connect);
        client
    }

    /// Sends `connect` and checks the CONNACK accepts.
    pub fn handshake(&mut self, connect: Connect) {
        self.version = connect.version;
        self.codec = Codec::with_version(connect.version, 1 << 24);
        self.send(&Packet::Connect(Box::new(connect)));
        match self.recv() {
            Packet::ConnAck(ack) => assert_eq!(ack.code, ReasonCode::SUCCESS, "{ack:?}"),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// Writes raw bytes.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).unwrap();
        self.io.flush().unwrap();
    }

    /// Writes one masked frame.
    pub fn send_frame(&mut self, fin: bool, opcode: u8, payload: &[u8]) {
        self.send_raw(&client_frame(fin, opcode, payload, true));
    }

    /// Encodes one packet.
    pub fn encode(&self, packet: &Packet) -> Vec<u8> {
        let mut out = BytesMut::new();
        encode(packet, self.version, &mut out).expect("test packet encodes");
        out.to_vec()
    }

    /// Sends one packet in one binary frame.
    pub fn send(&mut self, packet: &Packet) {
        let bytes = self.encode(packet);
        self.send_frame(true, BINARY, &bytes);
    }

    /// The next frame from the server; None at end of stream or after `limit`.
    pub fn next_frame(&mut self, limit: Duration) -> Option<Frame> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(frame) = self.take_frame() {
                return Some(frame);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let mut chunk = [0u8; 64 << 10];
            match self.io.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return None,
            }
        }
    }

    /// Takes one whole server frame off the buffer, checking it is unmasked.
    fn take_frame(&mut self) -> Option<Frame> {
        let [b0, b1, ..] = self.buf[..] else {
            return None;
        };
        assert_eq!(b1 & 0x80, 0, "server frames are not masked");
        let (len, at) = match b1 & 0x7F {
            126 if self.buf.len() >= 4 => {
                (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
            }
            127 if self.buf.len() >= 10 => {
                let mut len = [0u8; 8];
                len.copy_from_slice(&self.buf[2..10]);
                (u64::from_be_bytes(len) as usize, 10)
            }
            126 | 127 => return None,
            len => (len as usize, 2),
        };
        if self.buf.len() < at + len {
            return None;
        }
        let payload = self.buf[at..at + len].to_vec();
        self.buf.drain(..at + len);
        Some(Frame {
            fin: b0 & 0x80 != 0,
            opcode: b0 & 0x0F,
            payload,
        })
    }

    /// The next packet, unwrapped from binary frames; panics after `WAIT` or on any other
    /// frame.
    pub fn recv(&mut self) -> Packet {
        loop {
            if let Ok(Decoded::Packet(packet)) = self.codec.decode(&mut self.mqtt) {
                return packet;
            }
            match self.next_frame(WAIT) {
                Some(Frame {
                    opcode: BINARY | CONTINUATION,
                    payload,
                    ..
                }) => self.mqtt.extend_from_slice(&payload),
                other => panic!("expected a binary frame, got {other:?}"),
            }
        }
    }

    /// Expects a close frame with `code`, then end of stream.
    pub fn expect_close(&mut self, code: u16) {
        loop {
            match self.next_frame(WAIT) {
                Some(Frame {
                    opcode: CLOSE,
                    payload,
                    ..
                }) => {
                    assert_eq!(payload[..2], code.to_be_bytes(), "close status");
                    break;
                }
                Some(Frame { opcode: BINARY, .. }) => continue,
                other => panic!("expected close {code}, got {other:?}"),
            }
        }
        assert_eq!(self.next_frame(WAIT), None, "end of stream after close");
    }

    /// Subscribes to `filter` and checks the SUBACK grants `qos`.
    pub fn subscribe(&mut self, filter: &str, qos: QoS) {
        let subscribe = Subscribe {
            pkid: 3,
            filters: vec![SubscribeFilter {
                filter: MqttString::from_str_checked(filter).unwrap(),
                options: SubscriptionOptions {
                    qos,
                    ..Default::default()
                },
            }],
            properties: Props::default(),
        };
        self.send(&Packet::Subscribe(subscribe));
        match self.recv() {
            Packet::SubAck(ack) => assert_eq!(ack.pkid, 3),
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    /// The next PUBLISH.
    pub fn recv_publish(&mut self) -> Publish {
        match self.recv() {
            Packet::Publish(publish) => publish,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }
}
