//! HTTP/1.1 on a WebSocket listener: read request heads (and bodies), answer the upgrade to
//! WebSocket, or hand plain requests to the operator endpoints (`ops::respond`) and write
//! their responses, several on one connection (keep-alive).
//!
//! Parsing is sans-IO (`take_request`, `write_response`); `serve` moves the bytes. Every
//! request is bounded: a head of `HEAD_BYTES_MAX` (else 431), a body of `BODY_BYTES_MAX` with
//! a Content-Length (else 413, or 411 without one), each read within the listener's
//! CONNECT deadline.

use super::gate::Gate;
use super::transport::{Reader, Shutdown, Writer};
use super::websocket::{self, Site};
use crate::ops::http::{percent_decode, reason_phrase, Request, Response};
use crate::ops::{self, Context};
use crate::shard::Shard;
use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Largest request head (request line and headers).
pub const HEAD_BYTES_MAX: usize = 8 << 10;
/// Largest request body.
pub const BODY_BYTES_MAX: usize = 64 << 10;
/// Most headers in one request.
const HEADERS_MAX: usize = 64;
/// Bytes asked of the socket per read.
const READ_BYTES: usize = 4 << 10;
/// How long a connection the server closes may still be read (and discarded), so the client
/// reads the response before end of stream instead of a reset.
const LINGER: Duration = Duration::from_secs(1);

/// A complete request taken from the front of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct Taken {
    /// The request.
    pub request: Request,
    /// Whether the connection stays open after the response.
    pub keep_alive: bool,
}

/// Takes the first complete request (head and body) off `buf`; None while it is incomplete,
/// the status to refuse it with when it is bad or too large.
pub fn take_request(buf: &mut Vec<u8>) -> Result<Option<Taken>, u16> {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut parsed = httparse::Request::new(&mut headers);
    let head_len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) if len <= HEAD_BYTES_MAX => len,
        Ok(httparse::Status::Complete(_)) => return Err(431),
        Ok(httparse::Status::Partial) if buf.len() > HEAD_BYTES_MAX => return Err(431),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(431),
        Err(_) => return Err(400),
    };
    let (Some(method), Some(target), Some(minor)) = (parsed.method, parsed.path, parsed.version)
    else {
        return Err(400);
    };
    let headers: Vec<(String, String)> = parsed
        .headers
        .iter()
        .map(|h| {
            let value = String::from_utf8_lossy(h.value).trim().to_string();
            (h.name.to_ascii_lowercase(), value)
        })
        .collect();
    let mut request = Request {
        method: method.to_string(),
        headers,
        ..Request::default()
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    // `+` is a space only in queries; in a path it stays a plus.
    request.path = percent_decode(&path.replace('+', "%2B"));
    request.query = query.to_string();
    let body_len = body_len(&request)?;
    if buf.len() < head_len + body_len {
        return Ok(None);
    }
    request.body = buf[head_len..head_len + body_len].to_vec();
    buf.drain(..head_len + body_len);
    let connection = request
        .header("connection")
        .unwrap_or("")
        .to_ascii_lowercase();
    let keep_alive = match minor {
        1 => !connection.contains("close"),
        _ => connection.contains("keep-alive"),
    };
    Ok(Some(Taken {
        request,
        keep_alive,
    }))
}

/// The body's length from Content-Length; a chunked body (411) or one over the limit (413)
/// is refused.
fn body_len(request: &Request) -> Result<usize, u16> {
    if request.header("transfer-encoding").is_some() {
        return Err(411);
    }
    let Some(len) = request.header("content-length") else {
        return Ok(0);
    };
    let len: usize = len.parse().map_err(|_| 400u16)?;
    if len > BODY_BYTES_MAX {
        return Err(413);
    }
    Ok(len)
}

/// Appends `response` to `out`: the status line, its headers, and for anything but 101 the
/// Content-Type, Content-Length and Connection headers and the body (not for HEAD).
pub fn write_response(response: &Response, keep_alive: bool, is_head: bool, out: &mut Vec<u8>) {
    use std::io::Write;
    let status = response.status;
    let _ = write!(out, "HTTP/1.1 {status} {}\r\n", reason_phrase(status));
    for (name, value) in &response.headers {
        let _ = write!(out, "{name}: {value}\r\n");
    }
    if status != 101 {
        if !response.content_type.is_empty() {
            let _ = write!(out, "Content-Type: {}\r\n", response.content_type);
        }
        let connection = if keep_alive { "keep-alive" } else { "close" };
        let _ = write!(
            out,
            "Content-Length: {}\r\nConnection: {connection}\r\n",
            response.body.len()
        );
    }
    out.extend_from_slice(b"\r\n");
    if !is_head {
        out.extend_from_slice(&response.body);
    }
}

/// A connection switched to WebSocket: its transport halves and what the client sent after
/// the upgrade request (the first frames, possibly).
pub struct Upgraded {
    /// The reading half.
    pub reader: Reader,
    /// The writing half.
    pub writer: Writer,
    /// Bytes read past the upgrade request.
    pub leftover: Vec<u8>,
}

/// Serves HTTP requests on a new connection of a WebSocket listener until it upgrades (then
/// returns its halves) or closes (then None, the connection closed).
pub async fn serve(
    mut reader: Reader,
    mut writer: Writer,
    site: &Site,
    shard: &Rc<Shard>,
    gate: &Gate,
) -> Option<Upgraded> {
    let timeout = Duration::from_secs(shard.limits.connect_timeout_secs);
    let mut buf = Vec::new();
    loop {
        let taken = match read_request(&mut reader, &mut buf, timeout).await {
            Ok(Ok(taken)) => taken,
            Ok(Err(status)) => {
                let refusal = Response::text(status, format!("{}\n", reason_phrase(status)));
                let _ = send(&mut writer, &refusal, false, false).await;
                return close(reader, writer).await;
            }
            Err(_) => return close(reader, writer).await,
        };
        let request = &taken.request;
        let is_head = request.method == "HEAD";
        let is_origin_allowed = websocket::is_origin_allowed(request, &site.allowed_origins);
        if websocket::is_upgrade(request) {
            let answer = match is_origin_allowed {
                true => websocket::handshake(request, &site.path),
                false => Err(websocket::forbidden_origin(request)),
            };
            return match answer {
                Ok(accepted) => {
                    send(&mut writer, &accepted, true, false).await.ok()?;
                    Some(Upgraded {
                        reader,
                        writer,
                        leftover: buf,
                    })
                }
                Err(refused) => {
                    let _ = send(&mut writer, &refused, false, is_head).await;
                    close(reader, writer).await
                }
            };
        }
        // Pages from other origins may read nothing here, and change nothing either (a form
        // posted from another site).
        let response = match is_origin_allowed {
            true => answer(request, site, shard, gate).await,
            false => websocket::forbidden_origin(request),
        };
        let sent = send(&mut writer, &response, taken.keep_alive, is_head).await;
        if sent.is_err() || !taken.keep_alive {
            return close(reader, writer).await;
        }
    }
}

/// The response to a plain (not upgrade) request.
async fn answer(request: &Request, site: &Site, shard: &Rc<Shard>, gate: &Gate) -> Response {
    if site.has_api {
        let context = Context {
            shard: shard.clone(),
            tables: gate.tables(),
        };
        return ops::respond(request, &context).await;
    }
    if request.path == site.path {
        let mut response = Response::text(426, "this path speaks MQTT over WebSocket\n");
        response
            .headers
            .push(("Upgrade".into(), "websocket".into()));
        return response;
    }
    Response::text(404, format!("no such page: {}\n", request.path))
}

/// Reads until `buf` holds a whole request, each read within `timeout`. The outer error is
/// the socket's (or a timeout); the inner one the status a bad request is refused with.
async fn read_request(
    reader: &mut Reader,
    buf: &mut Vec<u8>,
    timeout: Duration,
) -> io::Result<Result<Taken, u16>> {
    let deadline = Instant::now() + timeout;
    loop {
        match take_request(buf) {
            Ok(Some(taken)) => return Ok(Ok(taken)),
            Ok(None) => {}
            Err(status) => return Ok(Err(status)),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        reader.set_read_timeout(Some(left));
        let start = buf.len();
        buf.resize(start + READ_BYTES, 0);
        let read = reader.read(&mut buf[start..]).await;
        let n = *read.as_ref().unwrap_or(&0);
        buf.truncate(start + n);
        if n == 0 {
            return Err(read.err().unwrap_or(io::ErrorKind::UnexpectedEof.into()));
        }
    }
}

/// Writes one response.
async fn send(
    writer: &mut Writer,
    response: &Response,
    keep_alive: bool,
    is_head: bool,
) -> io::Result<()> {
    let mut out = Vec::with_capacity(256 + response.body.len());
    write_response(response, keep_alive, is_head, &mut out);
    writer.send_all(&out).await
}

/// Closes a connection after its last response: the write side first, then what the client
/// still sends is read and dropped for a moment, so it reads the response, not a reset.
async fn close(mut reader: Reader, mut writer: Writer) -> Option<Upgraded> {
    writer.shutdown(Shutdown::Write);
    let deadline = Instant::now() + LINGER;
    let mut scratch = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        reader.set_read_timeout(Some(left));
        match reader.read(&mut scratch).await {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
    writer.shutdown(Shutdown::Both);
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_taken_one_by_one_with_their_bodies() {
        let mut buf = b"GET /api/v1/topics?filter=a%2F%2B HTTP/1.1\r\nHost: x\r\n\r\n\
            POST /a%20b+c HTTP/1.1\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabcGET"
            .to_vec();
        let first = take_request(&mut buf).unwrap().unwrap();
        assert_eq!(first.request.method, "GET");
        assert_eq!(first.request.path, "/api/v1/topics");
        assert_eq!(first.request.query_param("filter").as_deref(), Some("a/+"));
        assert_eq!(first.request.header("host"), Some("x"));
        assert!(first.keep_alive);
        let second = take_request(&mut buf).unwrap().unwrap();
        assert_eq!(
            (second.request.path.as_str(), second.request.body.as_slice()),
            ("/a b+c", &b"abc"[..])
        );
        assert!(!second.keep_alive);
        assert_eq!(take_request(&mut buf), Ok(None), "GET alone is incomplete");
        assert_eq!(buf, b"GET");
    }

    #[test]
    fn a_body_waits_until_complete() {
        let mut buf = b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nab".to_vec();
        assert_eq!(take_request(&mut buf), Ok(None));
        buf.extend_from_slice(b"cd");
        assert_eq!(
            take_request(&mut buf).unwrap().unwrap().request.body,
            b"abcd"
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn oversize_heads_bodies_and_bad_requests_get_their_status() {
        let mut big_head = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big_head.resize(HEAD_BYTES_MAX + 1, b'a');
        assert_eq!(take_request(&mut big_head), Err(431));
        let mut big_body = format!(
            "POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            BODY_BYTES_MAX + 1
        )
        .into_bytes();
        assert_eq!(take_request(&mut big_body), Err(413));
        let mut chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        assert_eq!(take_request(&mut chunked), Err(411));
        let mut garbage = b"\x10\x0c\x00\x04MQTT".to_vec();
        assert_eq!(take_request(&mut garbage), Err(400));
        let mut old = b"GET / HTTP/1.0\r\n\r\n".to_vec();
        assert!(!take_request(&mut old).unwrap().unwrap().keep_alive);
    }

    #[test]
    fn responses_carry_length_type_and_connection_but_101_only_its_headers() {
        let mut out = Vec::new();
        write_response(&Response::text(404, "no"), true, false, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"), "{text}");
        assert!(text.contains("Content-Type: text/plain; charset=utf-8\r\n"));
        assert!(text.contains("Content-Length: 2\r\nConnection: keep-alive\r\n\r\nno"));
        let upgrade = Response {
            status: 101,
            headers: vec![("Upgrade".into(), "websocket".into())],
            content_type: "",
            body: Vec::new(),
        };
        let mut out = Vec::new();
        write_response(&upgrade, true, false, &mut out);
        assert_eq!(
            out,
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"
        );
        let mut out = Vec::new();
        write_response(&Response::text(200, "body"), false, true, &mut out);
        assert!(
            out.ends_with(b"Connection: close\r\n\r\n"),
            "HEAD has no body"
        );
    }
}
