//! MQTT over WebSocket (RFC 6455), sans-IO: the opening handshake as a request in and a
//! response out, and the framing as bytes in, MQTT bytes and control events out. No socket is
//! touched here; `ws_transport` moves the bytes.
//!
//! What a client may send is checked as mosquitto (libwebsockets) does: a GET on the
//! listener's path, `Upgrade: websocket`, `Connection: upgrade`, version 13, a 16-byte key,
//! and the `mqtt` (or the older `mqttv3.1`) subprotocol, else 400. Client frames must be
//! masked (else close 1002), text frames are no MQTT (1003), and a frame larger than the
//! broker's maximum packet size is refused before it is read (1009).

use crate::ops::http::{Request, Response};
use base64::Engine;
use sha1::{Digest, Sha1};

/// The GUID RFC 6455 appends to the client's key before hashing.
const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// The subprotocols that carry MQTT, in the order preferred when a client offers both.
pub const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];
/// Largest payload of a control frame (ping, pong, close), by RFC 6455 section 5.5.
pub const CONTROL_PAYLOAD_MAX: usize = 125;
/// Largest frame header the server writes: 2 bytes, then a 64-bit length (no mask).
pub const HEADER_BYTES_MAX: usize = 10;

/// Frame opcodes.
pub mod opcode {
    /// The next fragment of a message.
    pub const CONTINUATION: u8 = 0x0;
    /// A UTF-8 text message.
    pub const TEXT: u8 = 0x1;
    /// A binary message (MQTT's).
    pub const BINARY: u8 = 0x2;
    /// Closing the connection.
    pub const CLOSE: u8 = 0x8;
    /// Are you there?
    pub const PING: u8 = 0x9;
    /// The answer to a ping.
    pub const PONG: u8 = 0xA;
}

/// Close status codes (RFC 6455 section 7.4.1).
pub mod status {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The peer broke the protocol.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A type of data the endpoint cannot take (text for MQTT).
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// Text that is not UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// A message too big to process.
    pub const TOO_BIG: u16 = 1009;
}

/// A WebSocket listener's HTTP settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Site {
    /// The path the upgrade to MQTT over WebSocket is served on.
    pub path: String,
    /// Whether plain requests go to the operator endpoints (else 404, or 426 on `path`).
    pub has_api: bool,
    /// Web origins (`https://app.example.com`, or `*` for any) whose pages may connect
    /// besides the listener's own and loopback ones (see `is_origin_allowed`).
    pub allowed_origins: Vec<String>,
}

/// Whether a browser page may use this listener: requests without an `Origin` (not from a
/// browser: MQTT.js in Node, curl), from the listener's own origin (a page it served), from a
/// page on a loopback host (local development), or from an origin in `allowed`. Anything
/// else is refused, so a web page the user happens to visit cannot reach a broker on their
/// machine (cross-site WebSocket hijacking).
pub fn is_origin_allowed(request: &Request, allowed: &[String]) -> bool {
    let Some(origin) = request.header("origin") else {
        return true;
    };
    if allowed
        .iter()
        .any(|a| a == "*" || a.trim_end_matches('/').eq_ignore_ascii_case(origin))
    {
        return true;
    }
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false; // "null": a file, a sandboxed frame
    };
    if !matches!(scheme, "http" | "https") {
        return false;
    }
    if request
        .header("host")
        .is_some_and(|host| host.eq_ignore_ascii_case(authority))
    {
        return true;
    }
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The answer to a request from an origin that may not use the listener.
pub fn forbidden_origin(request: &Request) -> Response {
    Response::text(
        403,
        format!(
            "pages from {} may not use this listener; add the origin to allowed_origins\n",
            request.header("origin").unwrap_or("")
        ),
    )
}

/// Whether `request` asks to switch to WebSocket (an `Upgrade: websocket` header).
pub fn is_upgrade(request: &Request) -> bool {
    request
        .header("upgrade")
        .is_some_and(|v| has_token(v, "websocket"))
}

/// Answers an upgrade request on a listener serving `path`: 101 with the accept key and the
/// chosen subprotocol, or why not (404 for another path, 400 for a bad handshake, 426 with
/// the version spoken for another WebSocket version).
pub fn handshake(request: &Request, path: &str) -> Result<Response, Response> {
    if request.path != path {
        return Err(Response::text(
            404,
            format!("no WebSocket at {}\n", request.path),
        ));
    }
    if request.method != "GET" {
        return Err(Response::text(400, "a WebSocket upgrade is a GET\n"));
    }
    let is_connection_upgrade = request
        .header("connection")
        .is_some_and(|v| has_token(v, "upgrade"));
    if !is_upgrade(request) || !is_connection_upgrade {
        return Err(Response::text(
            400,
            "a WebSocket upgrade needs Upgrade: websocket and Connection: Upgrade\n",
        ));
    }
    if request.header("sec-websocket-version").map(str::trim) != Some("13") {
        let mut response = Response::text(426, "only WebSocket version 13 is spoken\n");
        response
            .headers
            .push(("Sec-WebSocket-Version".into(), "13".into()));
        return Err(response);
    }
    let key = request.header("sec-websocket-key").map(str::trim);
    let is_key_valid = key.is_some_and(|k| {
        base64::engine::general_purpose::STANDARD
            .decode(k)
            .is_ok_and(|raw| raw.len() == 16)
    });
    let (Some(key), true) = (key, is_key_valid) else {
        return Err(Response::text(
            400,
            "Sec-WebSocket-Key must be 16 bytes in base64\n",
        ));
    };
    let Some(subprotocol) = choose_subprotocol(request) else {
        return Err(Response::text(
            400,
            "Sec-WebSocket-Protocol must offer mqtt (or mqttv3.1)\n",
        ));
    };
    Ok(Response {
        status: 101,
        headers: vec![
            ("Upgrade".into(), "websocket".into()),
            ("Connection".into(), "Upgrade".into()),
            ("Sec-WebSocket-Accept".into(), accept_key(key)),
            ("Sec-WebSocket-Protocol".into(), subprotocol.into()),
        ],
        content_type: "",
        body: Vec::new(),
    })
}

/// The subprotocol to answer with: the first MQTT one the client offers, in our order.
fn choose_subprotocol(request: &Request) -> Option<&'static str> {
    let offered: Vec<&str> = request
        .headers
        .iter()
        .filter(|(name, _)| name == "sec-websocket-protocol")
        .flat_map(|(_, value)| value.split(','))
        .map(str::trim)
        .collect();
    SUBPROTOCOLS
        .into_iter()
        .find(|ours| offered.iter().any(|o| o.eq_ignore_ascii_case(ours)))
}

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`: base64(SHA-1(key + GUID)).
pub fn accept_key(key: &str) -> String {
    let mut sha1 = Sha1::new();
    sha1.update(key.as_bytes());
    sha1.update(ACCEPT_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha1.finalize())
}

/// Whether a comma-separated header value holds `token` (case-insensitive).
fn has_token(value: &str, token: &str) -> bool {
    value
        .split(',')
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The header of an unmasked, final server frame with `len` payload bytes: the bytes and how
/// many of them are used.
pub fn frame_header(opcode: u8, len: usize) -> ([u8; HEADER_BYTES_MAX], usize) {
    header(true, opcode, len, false)
}

/// A frame header with the shortest length encoding; `masked` sets the mask bit (the four
/// mask bytes follow the header).
fn header(fin: bool, opcode: u8, len: usize, masked: bool) -> ([u8; HEADER_BYTES_MAX], usize) {
    let mut header = [0u8; HEADER_BYTES_MAX];
    header[0] = (u8::from(fin) << 7) | opcode;
    let mask_bit = if masked { 0x80 } else { 0 };
    let used = if len < 126 {
        header[1] = mask_bit | len as u8;
        2
    } else if len <= u16::MAX as usize {
        header[1] = mask_bit | 126;
        header[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        header[1] = mask_bit | 127;
        header[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    };
    (header, used)
}

/// Appends a client's frame to `out`: `payload` masked with `mask`, or unmasked (which a
/// server refuses) when `mask` is None. The broker never sends one: the load generator and
/// the tests speak as WebSocket clients with it.
pub fn push_client_frame(
    out: &mut Vec<u8>,
    fin: bool,
    opcode: u8,
    payload: &[u8],
    mask: Option<[u8; 4]>,
) {
    let (header, used) = header(fin, opcode, payload.len(), mask.is_some());
    out.extend_from_slice(&header[..used]);
    match mask {
        Some(mask) => {
            out.extend_from_slice(&mask);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
}

/// A whole control frame from the server (payload at most `CONTROL_PAYLOAD_MAX`).
pub fn control_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let payload = &payload[..payload.len().min(CONTROL_PAYLOAD_MAX)];
    let (header, used) = frame_header(opcode, payload.len());
    let mut frame = header[..used].to_vec();
    frame.extend_from_slice(payload);
    frame
}

/// A close frame from the server with `code`.
pub fn close_frame(code: u16) -> Vec<u8> {
    control_frame(opcode::CLOSE, &code.to_be_bytes())
}

/// Why a connection's frames are refused: the close status to send, and a reason for logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The close status code.
    pub code: u16,
    /// Why, for the log.
    pub reason: &'static str,
}

fn violation(code: u16, reason: &'static str) -> Violation {
    Violation { code, reason }
}

/// A control frame from the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A ping with its payload, to be answered by a pong with the same payload.
    Ping(Vec<u8>),
    /// A pong (ignored).
    Pong,
    /// The client closes, with its status code if it gave one.
    Close(Option<u16>),
}

/// What one call of `Decoder::decode` did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Step {
    /// Input bytes used; the caller drops them.
    pub consumed: usize,
    /// MQTT bytes written (unmasked) to the output.
    pub written: usize,
    /// A control frame that completed; decoding stops after one.
    pub event: Option<Event>,
}

/// Where the decoder is in the byte stream.
#[derive(Clone, Debug)]
enum State {
    /// Waiting for a frame header.
    Header,
    /// Inside a frame's payload.
    Payload {
        opcode: u8,
        left: u64,
        mask: [u8; 4],
        /// Payload bytes already unmasked (where the mask continues).
        at: usize,
    },
}

/// Client frames in, MQTT bytes and control events out. Data frames are unmasked straight
/// into the caller's buffer as they arrive, whatever their size; only control frames (at most
/// 125 bytes) are held until complete.
#[derive(Clone, Debug)]
pub struct Decoder {
    frame_bytes_max: u64,
    state: State,
    /// Whether a fragmented binary message is open (continuation frames expected).
    is_fragmented: bool,
    control: Vec<u8>,
}

impl Decoder {
    /// A decoder refusing data frames larger than `frame_bytes_max` (status 1009).
    pub fn new(frame_bytes_max: usize) -> Decoder {
        Decoder {
            frame_bytes_max: frame_bytes_max as u64,
            state: State::Header,
            is_fragmented: false,
            control: Vec::new(),
        }
    }

    /// Decodes what it can of `input` into `out`: stops when the input is used up (or holds
    /// only part of a header), `out` is full, or a control frame completed.
    pub fn decode(&mut self, input: &[u8], out: &mut [u8]) -> Result<Step, Violation> {
        let mut step = Step::default();
        loop {
            let rest = &input[step.consumed..];
            match self.state {
                State::Header => match self.header(rest)? {
                    Some(used) => step.consumed += used,
                    None => return Ok(step),
                },
                State::Payload { .. } if rest.is_empty() && !self.is_payload_done() => {
                    return Ok(step)
                }
                State::Payload { opcode, .. } if opcode >= opcode::CLOSE => {
                    step.consumed += self.control_payload(rest);
                    if self.is_payload_done() {
                        self.state = State::Header;
                        step.event = Some(self.control_event(opcode)?);
                        return Ok(step);
                    }
                }
                State::Payload { .. } => {
                    if step.written == out.len() && !self.is_payload_done() {
                        return Ok(step);
                    }
                    let n = self.unmask_into(rest, &mut out[step.written..]);
                    step.consumed += n;
                    step.written += n;
                    if self.is_payload_done() {
                        self.state = State::Header;
                    }
                }
            }
        }
    }

    fn is_payload_done(&self) -> bool {
        matches!(self.state, State::Payload { left: 0, .. })
    }

    /// Parses a frame header at the start of `input`; None while incomplete.
    fn header(&mut self, input: &[u8]) -> Result<Option<usize>, Violation> {
        let [b0, b1, ..] = *input else {
            return Ok(None);
        };
        let (fin, opcode) = (b0 & 0x80 != 0, b0 & 0x0F);
        if b0 & 0x70 != 0 {
            return Err(violation(status::PROTOCOL_ERROR, "reserved bits set"));
        }
        if b1 & 0x80 == 0 {
            return Err(violation(status::PROTOCOL_ERROR, "client frame not masked"));
        }
        let (len, at) = match b1 & 0x7F {
            126 if input.len() >= 4 => (u16::from_be_bytes([input[2], input[3]]) as u64, 4),
            127 if input.len() >= 10 => {
                let mut len = [0u8; 8];
                len.copy_from_slice(&input[2..10]);
                (u64::from_be_bytes(len), 10)
            }
            126 | 127 => return Ok(None),
            len => (len as u64, 2),
        };
        if input.len() < at + 4 {
            return Ok(None);
        }
        self.check_frame(fin, opcode, len)?;
        let mut mask = [0u8; 4];
        mask.copy_from_slice(&input[at..at + 4]);
        self.state = State::Payload {
            opcode,
            left: len,
            mask,
            at: 0,
        };
        self.control.clear();
        Ok(Some(at + 4))
    }

    /// Checks a frame's opcode, fragmentation and length against RFC 6455 and our limits,
    /// and notes whether a fragmented message goes on.
    fn check_frame(&mut self, fin: bool, opcode: u8, len: u64) -> Result<(), Violation> {
        match opcode {
            opcode::CLOSE | opcode::PING | opcode::PONG => {
                if !fin || len > CONTROL_PAYLOAD_MAX as u64 {
                    return Err(violation(
                        status::PROTOCOL_ERROR,
                        "control frame fragmented or over 125 bytes",
                    ));
                }
                return Ok(());
            }
            opcode::TEXT => {
                return Err(violation(
                    status::UNSUPPORTED_DATA,
                    "text frame (MQTT is binary)",
                ))
            }
            opcode::BINARY if self.is_fragmented => {
                return Err(violation(
                    status::PROTOCOL_ERROR,
                    "new message inside a fragmented one",
                ))
            }
            opcode::CONTINUATION if !self.is_fragmented => {
                return Err(violation(
                    status::PROTOCOL_ERROR,
                    "continuation frame without a message",
                ))
            }
            opcode::BINARY | opcode::CONTINUATION => {}
            _ => return Err(violation(status::PROTOCOL_ERROR, "unknown opcode")),
        }
        if len > self.frame_bytes_max {
            return Err(violation(
                status::TOO_BIG,
                "frame larger than the maximum packet size",
            ));
        }
        self.is_fragmented = !fin;
        Ok(())
    }

    /// Unmasks payload bytes from `input` into `out`; returns how many.
    fn unmask_into(&mut self, input: &[u8], out: &mut [u8]) -> usize {
        let State::Payload { left, mask, at, .. } = &mut self.state else {
            return 0;
        };
        let n = (*left).min(input.len() as u64).min(out.len() as u64) as usize;
        for (i, (dst, src)) in out[..n].iter_mut().zip(&input[..n]).enumerate() {
            *dst = src ^ mask[(*at + i) % 4];
        }
        *at = (*at + n) % 4;
        *left -= n as u64;
        n
    }

    /// Collects a control frame's payload (unmasked); returns the input bytes used.
    fn control_payload(&mut self, input: &[u8]) -> usize {
        let mut chunk = [0u8; CONTROL_PAYLOAD_MAX];
        let n = self.unmask_into(input, &mut chunk);
        self.control.extend_from_slice(&chunk[..n]);
        n
    }

    /// The event of a complete control frame.
    fn control_event(&mut self, opcode: u8) -> Result<Event, Violation> {
        let payload = std::mem::take(&mut self.control);
        match opcode {
            opcode::PING => Ok(Event::Ping(payload)),
            opcode::PONG => Ok(Event::Pong),
            _ => close_event(&payload),
        }
    }
}

/// A close frame's status code, checked: none, or a code a peer may send with a UTF-8 reason.
fn close_event(payload: &[u8]) -> Result<Event, Violation> {
    let [hi, lo, reason @ ..] = payload else {
        return match payload.len() {
            0 => Ok(Event::Close(None)),
            _ => Err(violation(
                status::PROTOCOL_ERROR,
                "close payload of one byte",
            )),
        };
    };
    let code = u16::from_be_bytes([*hi, *lo]);
    let is_sendable = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
    if !is_sendable {
        return Err(violation(
            status::PROTOCOL_ERROR,
            "close status not allowed",
        ));
    }
    if std::str::from_utf8(reason).is_err() {
        return Err(violation(status::INVALID_PAYLOAD, "close reason not UTF-8"));
    }
    Ok(Event::Close(Some(code)))
}

#[cfg(test)]
mod tests;
