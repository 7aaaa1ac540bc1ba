//! A trivial in-process "broker" for fanout and fanin at QoS 0: it answers CONNECT and SUBSCRIBE
//! and copies each publisher's PUBLISH frames, unparsed, to every subscriber. Whatever the
//! generator reaches against it is the generator's own ceiling on this machine.
//!
//! One thread forwards for every publisher (epoll over their sockets), and gathers what one
//! round of ready publishers sent into one write per subscriber, as a broker's event loop does:
//! a thread per publisher made fanin-100 a hundred threads taking turns on one CPU, which
//! forwarded a third of what ringcast did (41 k deliveries/s against 116 k, same machine).

use bytes::BytesMut;
use ringcast::protocol::codec::{Codec, Decoded};
use ringcast::protocol::{Packet, Version};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{mpsc, Arc, Mutex};

/// Packet type of PUBLISH in the fixed header's high nibble.
const PUBLISH_TYPE: u8 = 3;
/// Pending connections the sink's listener holds (the kernel caps it at somaxconn).
const LISTEN_BACKLOG: libc::c_int = 4096;
/// Bytes read from the publisher at a time.
const READ_CHUNK_BYTES: usize = 256 << 10;

/// Starts the sink on an ephemeral loopback port, its threads pinned to `cpu` if given.
pub fn start(cpu: Option<usize>) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    // std listens with a backlog of 128; the generator opens every subscriber at once and the
    // handshakes are served one by one, so 1000 subscribers overflowed it (connections reset).
    // SAFETY: plain syscall on a socket this function owns; calling listen() again on a
    // listening socket only changes its backlog.
    if unsafe { libc::listen(listener.as_raw_fd(), LISTEN_BACKLOG) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let addr = listener.local_addr()?;
    let (feeds, new_feeds) = mpsc::channel();
    std::thread::Builder::new()
        .name("sink-forward".into())
        .spawn(move || {
            pin(cpu);
            if let Err(e) = forward(&new_feeds) {
                eprintln!("sink: {e}");
            }
        })?;
    std::thread::Builder::new()
        .name("sink".into())
        .spawn(move || {
            pin(cpu);
            let subscribers = Arc::new(Mutex::new(Vec::new()));
            for stream in listener.incoming().flatten() {
                if let Err(e) = handshake(stream, &feeds, &subscribers) {
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

/// Answers CONNECT, then either registers a subscriber or starts forwarding for a publisher.
fn handshake(
    mut stream: TcpStream,
    feeds: &mpsc::Sender<Feed>,
    subscribers: &Arc<Mutex<Vec<TcpStream>>>,
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
        let targets = subscribers
            .lock()
            .map_err(|_| io::Error::other("poisoned"))?
            .iter()
            .map(TcpStream::try_clone)
            .collect::<io::Result<Vec<_>>>()?;
        stream.set_nonblocking(true)?;
        let feed = Feed {
            publisher: stream,
            buf,
            targets,
        };
        feeds
            .send(feed)
            .map_err(|_| io::Error::other("forwarder gone"))?;
        return Ok(());
    }
    let Packet::Subscribe(sub) = next_packet(&mut stream, &mut codec, &mut buf)? else {
        return Err(io::Error::other("expected SUBSCRIBE or PUBLISH"));
    };
    let [hi, lo] = sub.pkid.to_be_bytes();
    let suback: Vec<u8> = if v5 {
        vec![0x90, 4, hi, lo, 0, 0]
    } else {
        vec![0x90, 3, hi, lo, 0]
    };
    stream.write_all(&suback)?;
    subscribers
        .lock()
        .map_err(|_| io::Error::other("poisoned"))?
        .push(stream);
    Ok(())
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

/// A publisher handed to the forwarder: its socket (non-blocking), what was read of it and not
/// forwarded yet, and the subscribers it forwards to.
struct Feed {
    publisher: TcpStream,
    buf: BytesMut,
    targets: Vec<TcpStream>,
}

/// A subscriber's socket and what this round of publishers queued for it.
struct Target {
    stream: TcpStream,
    out: Vec<u8>,
}

/// Most ready publishers served per round.
const EVENTS_MAX: usize = 256;
/// How long the forwarder waits for a ready publisher before it looks for new ones.
const IDLE_WAIT_MS: libc::c_int = 1;

/// Forwards for every publisher `new_feeds` brings, until the generator is done with the sink.
/// Each round reads once from every ready publisher, then writes each subscriber what the
/// round gathered for it, with blocking writes: a subscriber that cannot keep up holds every
/// publisher back, as with a socket per publisher.
fn forward(new_feeds: &mpsc::Receiver<Feed>) -> io::Result<()> {
    // SAFETY: plain syscall; the fd is owned by `epoll` below.
    let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if epoll < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd this function owns.
    let epoll = unsafe { OwnedFd::from_raw_fd(epoll) };
    let mut feeds: Vec<Feed> = Vec::new();
    let mut route: Vec<Vec<usize>> = Vec::new();
    let mut targets = Targets::default();
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS_MAX];
    loop {
        loop {
            match new_feeds.try_recv() {
                Ok(mut feed) => {
                    let index = feeds.len();
                    watch(&epoll, &feed.publisher, index)?;
                    route.push(targets.indexes(std::mem::take(&mut feed.targets))?);
                    feeds.push(feed);
                    gather(&mut feeds[index].buf, &route[index], &mut targets.all);
                }
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => return Ok(()),
            }
        }
        // SAFETY: `events` has room for EVENTS_MAX entries.
        let ready = unsafe {
            libc::epoll_wait(
                epoll.as_raw_fd(),
                events.as_mut_ptr(),
                EVENTS_MAX as libc::c_int,
                IDLE_WAIT_MS,
            )
        };
        for event in &events[..ready.max(0) as usize] {
            let index = event.u64 as usize;
            let feed = &mut feeds[index];
            match feed.publisher.read(&mut chunk) {
                Ok(0) => unwatch(&epoll, &feed.publisher),
                Ok(n) => {
                    feed.buf.extend_from_slice(&chunk[..n]);
                    gather(&mut feed.buf, &route[index], &mut targets.all);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => unwatch(&epoll, &feed.publisher),
            }
        }
        for target in &mut targets.all {
            if !target.out.is_empty() && target.stream.write_all(&target.out).is_err() {
                // A subscriber that went away gets nothing more.
                target.out = Vec::new();
                target.stream.shutdown(std::net::Shutdown::Both).ok();
            }
            target.out.clear();
        }
    }
}

/// The subscribers every publisher forwards to, by their address (each publisher brings its
/// own handles to the same sockets).
#[derive(Default)]
struct Targets {
    all: Vec<Target>,
    by_peer: HashMap<SocketAddr, usize>,
}

impl Targets {
    /// Indexes of the subscribers `streams` names, adding those not seen yet.
    fn indexes(&mut self, streams: Vec<TcpStream>) -> io::Result<Vec<usize>> {
        let mut indexes = Vec::with_capacity(streams.len());
        for stream in streams {
            let next = self.all.len();
            let at = *self.by_peer.entry(stream.peer_addr()?).or_insert(next);
            if at == next {
                self.all.push(Target {
                    stream,
                    out: Vec::new(),
                });
            }
            indexes.push(at);
        }
        Ok(indexes)
    }
}

/// Moves the whole frames at the front of `buf` into the out buffers of `route`'s targets:
/// PUBLISH frames are copied, anything else (DISCONNECT) is dropped.
fn gather(buf: &mut BytesMut, route: &[usize], targets: &mut [Target]) {
    let mut at = 0;
    while let Some(len) = frame_len(&buf[at..]) {
        if buf[at] >> 4 == PUBLISH_TYPE {
            for &t in route {
                targets[t].out.extend_from_slice(&buf[at..at + len]);
            }
        }
        at += len;
    }
    let _ = buf.split_to(at);
}

/// Adds a publisher's socket to `epoll`, reporting readiness with `index`.
fn watch(epoll: &OwnedFd, publisher: &TcpStream, index: usize) -> io::Result<()> {
    let mut event = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: index as u64,
    };
    // SAFETY: both fds are open; `event` outlives the call.
    let rc = unsafe {
        libc::epoll_ctl(
            epoll.as_raw_fd(),
            libc::EPOLL_CTL_ADD,
            publisher.as_raw_fd(),
            &mut event,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Stops watching a publisher that closed.
fn unwatch(epoll: &OwnedFd, publisher: &TcpStream) {
    // SAFETY: both fds are open; DEL ignores the event argument.
    unsafe {
        libc::epoll_ctl(
            epoll.as_raw_fd(),
            libc::EPOLL_CTL_DEL,
            publisher.as_raw_fd(),
            std::ptr::null_mut(),
        );
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
}
