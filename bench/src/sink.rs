//! A trivial in-process "broker", the generator's ceiling: it answers CONNECT and SUBSCRIBE
//! and copies each publisher's PUBLISH frames, unparsed, to the subscribers whose filter
//! matches the publisher's first topic (fanout: all of them; pairs: one each; fanin: the one
//! on `+`). At QoS 1 it does the least a broker must: a PUBACK for every PUBLISH to its
//! publisher, the frame forwarded as it came (the publisher's packet id serves the subscriber:
//! the generator keeps its ids unique within its window) and the subscribers' PUBACKs read
//! and dropped. Whatever the generator reaches against it is its own ceiling on this machine.

use bytes::BytesMut;
use ringcast::protocol::codec::{Codec, Decoded};
use ringcast::protocol::topic::filter_matches;
use ringcast::protocol::{Packet, Version};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};

/// Packet type of PUBLISH in the fixed header's high nibble.
const PUBLISH_TYPE: u8 = 3;
/// Pending connections the sink's listener holds (the kernel caps it at somaxconn).
const LISTEN_BACKLOG: libc::c_int = 4096;
/// Bytes read from the publisher at a time.
const READ_CHUNK_BYTES: usize = 256 << 10;
/// Readiness events taken per wait.
const EVENTS_MAX: usize = 256;
/// How long a poller waits for readiness before it looks for new connections, in ms.
const TICK_MS: libc::c_int = 10;

/// A subscriber's socket, shared by the publishers whose messages it gets.
type Target = Arc<TcpStream>;

/// The subscribers so far, with their filters.
type Subscribers = Arc<Mutex<Vec<(String, Target)>>>;

/// A publisher being forwarded: its socket, what was read of it and not yet forwarded, and
/// the subscribers it goes to.
struct Publisher {
    stream: TcpStream,
    buf: BytesMut,
    targets: Vec<Target>,
}

/// Starts the sink on an ephemeral loopback port, its threads pinned to `cpu` if given.
pub fn start(cpu: Option<usize>) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    // std listens with a backlog of 128; the generator opens every subscriber at once, so
    // 1000 subscribers overflowed it (connections reset).
    // SAFETY: plain syscall on a socket this function owns; calling listen() again on a
    // listening socket only changes its backlog.
    if unsafe { libc::listen(listener.as_raw_fd(), LISTEN_BACKLOG) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let addr = listener.local_addr()?;
    let (to_drain, drained) = mpsc::channel();
    let (to_forward, forwarded) = mpsc::channel();
    std::thread::Builder::new()
        .name("sink-drain".into())
        .spawn(move || {
            pin(cpu);
            if let Err(e) = poll(drained, |s: &mut TcpStream| s.as_raw_fd(), drain_one) {
                eprintln!("sink: {e}");
            }
        })?;
    std::thread::Builder::new()
        .name("sink-forward".into())
        .spawn(move || {
            pin(cpu);
            let fd = |p: &mut Publisher| p.stream.as_raw_fd();
            if let Err(e) = poll(forwarded, fd, forward_some) {
                eprintln!("sink: {e}");
            }
        })?;
    std::thread::Builder::new()
        .name("sink".into())
        .spawn(move || {
            pin(cpu);
            let subscribers = Subscribers::default();
            for stream in listener.incoming().flatten() {
                // A thread per handshake: a publisher that waits for every subscriber before
                // its first PUBLISH must not hold up the subscribers behind it.
                let to = (to_drain.clone(), to_forward.clone());
                let subscribers = subscribers.clone();
                let spawned =
                    std::thread::Builder::new()
                        .name("sink-conn".into())
                        .spawn(move || {
                            pin(cpu);
                            if let Err(e) = serve(stream, &subscribers, &to) {
                                eprintln!("sink: {e}");
                            }
                        });
                if let Err(e) = spawned {
                    eprintln!("sink: {e}");
                }
            }
        })?;
    Ok(addr)
}

fn pin(cpu: Option<usize>) {
    if let Some(id) = cpu {
        core_affinity::set_for_current(core_affinity::CoreId { id });
    }
}

/// Answers CONNECT, then hands a subscriber to the drain and a publisher to the forwarder.
fn serve(
    mut stream: TcpStream,
    subscribers: &Subscribers,
    (to_drain, to_forward): &(Sender<TcpStream>, Sender<Publisher>),
) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut codec = Codec::new(1 << 20);
    let mut buf = BytesMut::new();
    let Packet::Connect(connect) = next_packet(&mut stream, &mut codec, &mut buf)? else {
        return Err(io::Error::other("first packet is not CONNECT"));
    };
    let v5 = connect.version == Version::V5;
    stream.write_all(if v5 {
        &[0x20, 3, 0, 0, 0]
    } else {
        &[0x20, 2, 0, 0]
    })?;
    while buf.is_empty() {
        read_some(&mut stream, &mut buf)?;
    }
    if buf[0] >> 4 == PUBLISH_TYPE {
        let topic = first_topic(&mut stream, &mut codec, &mut buf)?;
        let targets: Vec<Target> = subscribers
            .lock()
            .map_err(|_| io::Error::other("poisoned"))?
            .iter()
            .filter(|(filter, _)| filter_matches(filter, &topic))
            .map(|(_, target)| target.clone())
            .collect();
        return to_forward
            .send(Publisher {
                stream,
                buf,
                targets,
            })
            .map_err(|_| io::Error::other("forwarder gone"));
    }
    let Packet::Subscribe(sub) = next_packet(&mut stream, &mut codec, &mut buf)? else {
        return Err(io::Error::other("expected SUBSCRIBE or PUBLISH"));
    };
    let [hi, lo] = sub.pkid.to_be_bytes();
    let filter = sub
        .filters
        .first()
        .ok_or_else(|| io::Error::other("SUBSCRIBE without a filter"))?;
    let granted = filter.options.qos as u8;
    let suback: Vec<u8> = if v5 {
        vec![0x90, 4, hi, lo, 0, granted]
    } else {
        vec![0x90, 3, hi, lo, granted]
    };
    to_drain
        .send(stream.try_clone()?)
        .map_err(|_| io::Error::other("drain gone"))?;
    let target = Arc::new(stream);
    // Listed before the SUBACK goes out: the generator starts publishing once it has every
    // SUBACK, and a publisher's targets are taken from this list at its first PUBLISH.
    subscribers
        .lock()
        .map_err(|_| io::Error::other("poisoned"))?
        .push((filter.filter.as_str().to_string(), target.clone()));
    (&*target).write_all(&suback)
}

/// The topic of the PUBLISH at the front of `buf`, read whole from `stream` first; `buf`
/// keeps it.
fn first_topic(
    stream: &mut TcpStream,
    codec: &mut Codec,
    buf: &mut BytesMut,
) -> io::Result<String> {
    while frame_len(buf).is_none() {
        read_some(stream, buf)?;
    }
    match codec.decode(&mut buf.clone()) {
        Ok(Decoded::Packet(Packet::Publish(p))) => Ok(p.topic.as_str().to_string()),
        other => Err(io::Error::other(format!(
            "expected a PUBLISH, got {other:?}"
        ))),
    }
}

fn read_some(stream: &mut TcpStream, buf: &mut BytesMut) -> io::Result<()> {
    let mut chunk = [0u8; 4096];
    match stream.read(&mut chunk)? {
        0 => Err(io::Error::other("closed during handshake")),
        n => {
            buf.extend_from_slice(&chunk[..n]);
            Ok(())
        }
    }
}

fn next_packet(
    stream: &mut TcpStream,
    codec: &mut Codec,
    buf: &mut BytesMut,
) -> io::Result<Packet> {
    loop {
        match codec.decode(buf) {
            Ok(Decoded::Packet(p)) => return Ok(p),
            Ok(Decoded::Incomplete { .. }) => read_some(stream, buf)?,
            Err(e) => return Err(io::Error::other(format!("{e:?}"))),
        }
    }
}

/// Reads what `publisher` sent, copies every whole PUBLISH frame to its targets and answers
/// each QoS 1 one with a PUBACK; false once it closed.
fn forward_some(publisher: &mut Publisher, scratch: &mut [u8]) -> bool {
    let Some(n) = recv_now(publisher.stream.as_raw_fd(), scratch) else {
        return false;
    };
    let Publisher {
        stream,
        buf,
        targets,
    } = publisher;
    buf.extend_from_slice(&scratch[..n]);
    let mut acks = Vec::new();
    let mut at = 0;
    while let Some(len) = frame_len(&buf[at..]) {
        let frame = &buf[at..at + len];
        if frame[0] >> 4 != PUBLISH_TYPE {
            send_all(targets, &buf[..at]);
            let _ = buf.split_to(at + len);
            at = 0;
            continue;
        }
        if let Some(pkid) = qos1_pkid(frame) {
            acks.extend_from_slice(&[0x40, 2]);
            acks.extend_from_slice(&pkid.to_be_bytes());
        }
        at += len;
    }
    send_all(targets, &buf[..at]);
    let _ = buf.split_to(at);
    acks.is_empty() || stream.write_all(&acks).is_ok()
}

/// Reads and drops what a subscriber sent (its PUBACKs); false once it closed.
fn drain_one(stream: &mut TcpStream, scratch: &mut [u8]) -> bool {
    recv_now(stream.as_raw_fd(), scratch).is_some()
}

/// Reads what `fd` has without blocking: Some(0) when nothing, None once closed or failed.
/// Non-blocking per call: the sockets stay blocking for the writes to them.
fn recv_now(fd: RawFd, scratch: &mut [u8]) -> Option<usize> {
    // SAFETY: `fd` is an open socket of the caller; `scratch` is writable for its length.
    let got = unsafe {
        libc::recv(
            fd,
            scratch.as_mut_ptr().cast(),
            scratch.len(),
            libc::MSG_DONTWAIT,
        )
    };
    match got {
        0 => None,
        n if n > 0 => Some(n as usize),
        _ if io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock => Some(0),
        _ => None,
    }
}

/// Writes `bytes` to every target, dropping those that fail.
fn send_all(targets: &mut Vec<Target>, bytes: &[u8]) {
    if !bytes.is_empty() {
        targets.retain(|t| (&**t).write_all(bytes).is_ok());
    }
}

/// Length of the whole frame at the front of `buf`, if it is all there.
fn frame_len(buf: &[u8]) -> Option<usize> {
    let mut remaining = 0usize;
    for i in 0..4 {
        let byte = *buf.get(1 + i)?;
        remaining |= ((byte & 0x7f) as usize) << (7 * i);
        if byte & 0x80 == 0 {
            let len = 2 + i + remaining;
            return (buf.len() >= len).then_some(len);
        }
    }
    None
}

/// The packet id of a whole QoS 1 PUBLISH frame; None for other QoS or a short frame.
fn qos1_pkid(frame: &[u8]) -> Option<u16> {
    if (frame[0] >> 1) & 3 != 1 {
        return None;
    }
    let varint = frame[1..].iter().position(|b| b & 0x80 == 0)? + 1;
    let topic_at = 1 + varint;
    let topic_len = u16::from_be_bytes([*frame.get(topic_at)?, *frame.get(topic_at + 1)?]);
    let at = topic_at + 2 + topic_len as usize;
    Some(u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]))
}

/// Serves the connections `new` hands over from one thread waiting on epoll: `serve` is
/// called for each that has something to read, and the connection dropped once it says false.
fn poll<T>(
    new: Receiver<T>,
    fd_of: impl Fn(&mut T) -> RawFd,
    mut serve: impl FnMut(&mut T, &mut [u8]) -> bool,
) -> io::Result<()> {
    // SAFETY: plain syscall; the result is checked, then owned (and closed) by `_owned`.
    let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if epoll < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `epoll` is a fresh descriptor that nothing else owns.
    let _owned = unsafe { <OwnedFd as FromRawFd>::from_raw_fd(epoll) };
    let mut conns: HashMap<RawFd, T> = HashMap::new();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS_MAX];
    let mut scratch = vec![0u8; READ_CHUNK_BYTES];
    loop {
        loop {
            let mut conn = match new.try_recv() {
                Ok(conn) => conn,
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => return Ok(()),
            };
            let fd = fd_of(&mut conn);
            let mut event = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: fd as u64,
            };
            // SAFETY: `fd` is open (its owner goes into `conns`); `event` outlives the call.
            let is_added = unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, fd, &mut event) };
            // What was read during the handshake is served now: no readiness will announce it.
            if is_added == 0 && serve(&mut conn, &mut scratch) {
                conns.insert(fd, conn);
            }
        }
        // SAFETY: `events` holds EVENTS_MAX entries the kernel may fill.
        let n = unsafe { libc::epoll_wait(epoll, events.as_mut_ptr(), EVENTS_MAX as _, TICK_MS) };
        for event in events.iter().take(n.max(0) as usize) {
            let fd = event.u64 as RawFd;
            let Some(conn) = conns.get_mut(&fd) else {
                continue;
            };
            if !serve(conn, &mut scratch) {
                // SAFETY: `fd` is still open; removing it from the set needs no event.
                unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_DEL, fd, std::ptr::null_mut()) };
                conns.remove(&fd);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames() {
        assert_eq!(frame_len(&[0x30, 2, 0, 0]), Some(4));
        assert_eq!(frame_len(&[0x30, 3, 0, 0]), None);
        assert_eq!(frame_len(&[0x30, 0x80, 1]), None);
        assert_eq!(frame_len(&[0x30]), None);
    }

    #[test]
    fn packet_ids_of_qos1_publishes() {
        // QoS 1, topic "ab", packet id 0x0102, payload "x".
        assert_eq!(
            qos1_pkid(&[0x32, 7, 0, 2, b'a', b'b', 1, 2, b'x']),
            Some(0x0102)
        );
        assert_eq!(qos1_pkid(&[0x30, 5, 0, 2, b'a', b'b', b'x']), None);
        assert_eq!(qos1_pkid(&[0x32, 4, 0, 2, b'a', b'b']), None);
    }
}
