//! A trivial in-process "broker" for fanout at QoS 0: it answers CONNECT and SUBSCRIBE and
//! copies the publisher's PUBLISH frames, unparsed, to every subscriber. Whatever the generator
//! reaches against it is the generator's own ceiling on this machine.

use bytes::BytesMut;
use ringcast::protocol::codec::{Codec, Decoded};
use ringcast::protocol::{Packet, Version};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

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
    std::thread::Builder::new()
        .name("sink".into())
        .spawn(move || {
            pin(cpu);
            let subscribers = Arc::new(Mutex::new(Vec::new()));
            for stream in listener.incoming().flatten() {
                if let Err(e) = handshake(stream, cpu, &subscribers) {
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
    cpu: Option<usize>,
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
        std::thread::Builder::new()
            .name("sink-forward".into())
            .spawn(move || {
                pin(cpu);
                forward(stream, buf, targets);
            })?;
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

/// Copies every whole PUBLISH frame from `publisher` to all `targets` until the publisher closes.
fn forward(mut publisher: TcpStream, mut buf: BytesMut, mut targets: Vec<TcpStream>) {
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    loop {
        let mut at = 0;
        while let Some(len) = frame_len(&buf[at..]) {
            let is_publish = buf[at] >> 4 == PUBLISH_TYPE;
            if !is_publish {
                send_all(&mut targets, &buf[..at]);
                let _ = buf.split_to(at + len);
                at = 0;
                continue;
            }
            at += len;
        }
        send_all(&mut targets, &buf[..at]);
        let _ = buf.split_to(at);
        match publisher.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Writes `bytes` to every target, dropping those that fail.
fn send_all(targets: &mut Vec<TcpStream>, bytes: &[u8]) {
    if !bytes.is_empty() {
        targets.retain_mut(|t| t.write_all(bytes).is_ok());
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
