//! A subscriber's reading: packets scanned in place in one read buffer, so a message costs the
//! generator the same whatever its payload size. The socket reads straight into the buffer
//! (no scratch copy), a PUBLISH is looked at only for its QoS, packet id, topic and the
//! sequence number and send time at the front of its payload (no `Bytes` per message, no
//! copy of the payload), and only the bytes of a packet cut off by the end of a read are ever
//! moved (to the front of the buffer, when the room behind them runs short).

use ringcast::protocol::Version;

/// Packet types in the fixed header's high nibble.
const PUBLISH: u8 = 3;
const PUBREL: u8 = 6;

/// What the subscriber needs of one packet.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A PUBLISH: its QoS, packet id (0 at QoS 0), topic and payload, slices of the buffer.
    Publish {
        qos: u8,
        pkid: u16,
        topic: &'a [u8],
        payload: &'a [u8],
    },
    /// A PUBREL with its packet id.
    PubRel(u16),
    /// Anything else (the subscriber ignores it).
    Other,
}

/// The read buffer and the packets in it not yet scanned.
pub struct Frames {
    data: Vec<u8>,
    /// The first byte not yet scanned.
    start: usize,
    /// The end of what was read.
    end: usize,
    /// Bytes asked for per read, at least.
    read_bytes: usize,
    /// Length of the packet at `start` when it is known but not all read yet.
    needed: usize,
    version: Version,
    packet_max_bytes: usize,
}

impl Frames {
    /// A buffer reading `read_bytes` at a time, starting with `already` (bytes read while
    /// connecting that follow the SUBACK).
    pub fn new(
        read_bytes: usize,
        already: &[u8],
        version: Version,
        packet_max_bytes: usize,
    ) -> Frames {
        // Four reads' worth: the partial packet at the end is moved to the front at most
        // once every three reads.
        let mut data = vec![0u8; (4 * read_bytes).max(already.len() + read_bytes)];
        data[..already.len()].copy_from_slice(already);
        Frames {
            data,
            start: 0,
            end: already.len(),
            read_bytes,
            needed: 0,
            version,
            packet_max_bytes,
        }
    }

    /// Where the next read goes: at least `read_bytes` of room behind what is unscanned (and
    /// room for the whole packet at the front, when it is larger than the buffer).
    pub fn room(&mut self) -> &mut [u8] {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        }
        if self.data.len() - self.end < self.read_bytes {
            self.data.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
        }
        let wanted = self.needed.max(self.end + self.read_bytes);
        if wanted > self.data.len() {
            self.data.resize(wanted, 0);
        }
        &mut self.data[self.end..]
    }

    /// Counts `n` bytes just read into `room()`.
    pub fn filled(&mut self, n: usize) {
        self.end = (self.end + n).min(self.data.len());
    }

    /// The next whole packet, if one is all read; an error for a packet that cannot be
    /// (a malformed length, a PUBLISH shorter than its own fields, QoS 3, too large).
    pub fn next_frame(&mut self) -> Result<Option<Frame<'_>>, String> {
        let unread = &self.data[self.start..self.end];
        let Some((header, remaining)) = fixed_header(unread)? else {
            return Ok(None);
        };
        if remaining > self.packet_max_bytes {
            return Err(format!("a packet of {remaining} bytes, over the maximum"));
        }
        let len = header + remaining;
        if unread.len() < len {
            self.needed = len;
            return Ok(None);
        }
        self.needed = 0;
        let begin = self.start;
        self.start += len;
        let packet = &self.data[begin..begin + len];
        let body = &packet[header..];
        match packet[0] >> 4 {
            PUBLISH => publish(packet[0], body, self.version).map(Some),
            PUBREL => Ok(Some(Frame::PubRel(pkid(body).ok_or("a short PUBREL")?))),
            _ => Ok(Some(Frame::Other)),
        }
    }
}

/// The fixed header's length and the remaining length, once both are read.
fn fixed_header(buf: &[u8]) -> Result<Option<(usize, usize)>, String> {
    let mut remaining = 0usize;
    for i in 0..4 {
        let Some(&byte) = buf.get(1 + i) else {
            return Ok(None);
        };
        remaining |= ((byte & 0x7f) as usize) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((2 + i, remaining)));
        }
    }
    Err("a remaining length over four bytes".into())
}

/// The packet id at the front of `body`.
fn pkid(body: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(body.get(..2)?.try_into().ok()?))
}

/// A variable byte integer at the front of `buf`: its value and length.
fn varint(buf: &[u8]) -> Option<(usize, usize)> {
    let mut value = 0usize;
    for (i, &byte) in buf.iter().take(4).enumerate() {
        value |= ((byte & 0x7f) as usize) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// The fields of a PUBLISH the subscriber needs, bounds-checked.
fn publish(first: u8, body: &[u8], version: Version) -> Result<Frame<'_>, String> {
    let short = || "a PUBLISH shorter than its fields".to_string();
    let qos = (first >> 1) & 3;
    if qos == 3 {
        return Err("a PUBLISH with QoS 3".into());
    }
    let topic_len = pkid(body).ok_or_else(short)? as usize;
    let mut at = 2 + topic_len;
    let topic = body.get(2..at).ok_or_else(short)?;
    let mut id = 0;
    if qos > 0 {
        id = pkid(body.get(at..).ok_or_else(short)?).ok_or_else(short)?;
        at += 2;
    }
    if version == Version::V5 {
        let (properties, len) = varint(body.get(at..).ok_or_else(short)?).ok_or_else(short)?;
        at += len + properties;
    }
    let payload = body.get(at..).ok_or_else(short)?;
    Ok(Frame::Publish {
        qos,
        pkid: id,
        topic,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{Bytes, BytesMut};
    use ringcast::protocol::codec::encode;
    use ringcast::protocol::{Ack, MqttString, Packet, Props, Publish, QoS};

    fn publish_packet(topic: &str, payload: &[u8], qos: QoS, pkid: u16) -> Packet {
        let mut properties = Props::default();
        properties.message_expiry_interval = Some(60);
        Packet::Publish(Publish {
            dup: false,
            qos,
            retain: false,
            topic: MqttString::from_str_checked(topic).unwrap(),
            pkid,
            properties,
            payload: Bytes::copy_from_slice(payload),
        })
    }

    fn encoded(packets: &[Packet], version: Version) -> Vec<u8> {
        let mut out = BytesMut::new();
        for p in packets {
            encode(p, version, &mut out).unwrap();
        }
        out.to_vec()
    }

    /// Everything in `bytes`, fed `step` bytes per read, as owned frames.
    fn scan(bytes: &[u8], step: usize, version: Version) -> Vec<(u8, u16, Vec<u8>, Vec<u8>)> {
        let mut frames = Frames::new(8, &[], version, 1 << 20);
        let mut out = Vec::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            let room = frames.room();
            let n = step.min(room.len()).min(rest.len());
            room[..n].copy_from_slice(&rest[..n]);
            frames.filled(n);
            rest = &rest[n..];
            while let Some(frame) = frames.next_frame().unwrap() {
                out.push(match frame {
                    Frame::Publish {
                        qos,
                        pkid,
                        topic,
                        payload,
                    } => (qos, pkid, topic.to_vec(), payload.to_vec()),
                    Frame::PubRel(id) => (9, id, Vec::new(), Vec::new()),
                    Frame::Other => (0xff, 0, Vec::new(), Vec::new()),
                });
            }
        }
        out
    }

    #[test]
    fn publishes_read_in_pieces_of_any_size_come_out_whole_in_both_versions() {
        let big = vec![7u8; 3000];
        for version in [Version::V311, Version::V5] {
            let packets = [
                publish_packet("a/1", b"0123456789abcdef", QoS::AtMostOnce, 0),
                publish_packet("bench/t/42", &big, QoS::AtLeastOnce, 513),
                Packet::PubRel(Ack {
                    pkid: 9,
                    ..Ack::default()
                }),
                Packet::PingResp,
                publish_packet("x", b"", QoS::ExactlyOnce, 2),
            ];
            let bytes = encoded(&packets, version);
            for step in [1, 3, 7, 64, bytes.len()] {
                let got = scan(&bytes, step, version);
                assert_eq!(got.len(), 5, "{version:?} step {step}");
                assert_eq!(
                    got[0],
                    (0, 0, b"a/1".to_vec(), b"0123456789abcdef".to_vec())
                );
                assert_eq!(got[1], (1, 513, b"bench/t/42".to_vec(), big.clone()));
                assert_eq!((got[2].0, got[2].1), (9, 9));
                assert_eq!(got[3].0, 0xff);
                assert_eq!(got[4], (2, 2, b"x".to_vec(), Vec::new()));
            }
        }
    }

    #[test]
    fn a_publish_shorter_than_its_topic_is_an_error_not_a_panic() {
        let mut frames = Frames::new(64, &[0x30, 3, 0, 9, b'a'], Version::V311, 1 << 20);
        assert!(frames.next_frame().is_err());
        let mut frames = Frames::new(64, &[0x30, 0xff, 0xff, 0xff, 0xff, 1], Version::V5, 1 << 20);
        assert!(frames.next_frame().is_err());
        let mut frames = Frames::new(64, &[0x32, 2, 0, 0], Version::V311, 1 << 20);
        assert!(frames.next_frame().is_err(), "QoS 1 without a packet id");
    }

    #[test]
    fn a_packet_over_the_maximum_is_refused_before_it_is_read() {
        let mut frames = Frames::new(64, &[0x30, 0x80, 0x80, 0x10], Version::V311, 1 << 10);
        assert!(frames.next_frame().is_err());
    }
}
