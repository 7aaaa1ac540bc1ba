//! PUBLISH (3.3). The payload is a slice of the input; the header can be written alone so
//! one payload `Bytes` serves many subscribers.

use bytes::{BufMut, BytesMut};

use super::error::{DecodeError, EncodeError};
use super::fixed_header::{self, packet_type::PUBLISH};
use super::properties;
use super::reader::Reader;
use super::topic_syntax::validate_topic_name;
use super::writer;
use crate::protocol::packet::{Publish, QoS, Version};

/// The fields of a PUBLISH that differ between the copies sent to different clients: one
/// received PUBLISH is written with as many shapes as it has subscribers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// QoS of this copy.
    pub qos: QoS,
    /// RETAIN flag of this copy.
    pub retain: bool,
    /// DUP flag of this copy.
    pub dup: bool,
    /// Packet id of this copy (ignored at QoS 0).
    pub pkid: u16,
}

impl Shape {
    /// The shape `p` itself has.
    pub fn of(p: &Publish) -> Shape {
        Shape {
            qos: p.qos,
            retain: p.retain,
            dup: p.dup,
            pkid: p.pkid,
        }
    }
}

/// Reads a PUBLISH body with the fixed header's `flags`.
#[inline]
pub(crate) fn read(flags: u8, r: &mut Reader) -> Result<Publish, DecodeError> {
    // Both QoS bits set is malformed [MQTT-3.3.1-4].
    let qos = QoS::from_bits((flags >> 1) & 0b11).ok_or(DecodeError::InvalidQoS)?;
    let dup = flags & 0b1000 != 0;
    if dup && qos == QoS::AtMostOnce {
        return Err(DecodeError::DupWithQoS0);
    }
    let (topic, is_valid_name) = r.topic_name()?;
    let pkid = match qos {
        QoS::AtMostOnce => 0,
        _ => r.packet_id()?,
    };
    let properties = properties::read_v5(r, properties::context(PUBLISH))?;
    if topic.is_empty() {
        // 5.0 allows an empty name with a Topic Alias (3.3.2.1); 3.1.1 never [MQTT-4.7.3-1].
        match r.version() {
            Version::V5 if properties.topic_alias.is_some() => {}
            Version::V5 => return Err(DecodeError::EmptyTopicWithoutAlias),
            Version::V311 => return Err(DecodeError::InvalidTopicName),
        }
    } else if !is_valid_name && !validate_topic_name(topic.as_str()) {
        return Err(DecodeError::InvalidTopicName);
    }
    Ok(Publish {
        dup,
        qos,
        retain: flags & 1 != 0,
        topic,
        pkid,
        properties,
        payload: r.rest(),
    })
}

/// Whether the packet at the front of `buf` is a whole PUBLISH on `topic` whose fixed
/// header begins with `first` (DUP aside), told without decoding it: a connection routes
/// the PUBLISHes on one topic that follow each other in its buffer as one run, and looks
/// ahead with this so that a packet that would not continue the run stays undecoded. The
/// codec still decodes and checks every packet of the run.
pub fn publish_continues(buf: &[u8], first: u8, topic: &[u8]) -> bool {
    const DUP: u8 = 0b1000;
    let Ok(Ok(header)) = fixed_header::parse(buf) else {
        return false;
    };
    let start = header.header_len;
    let end = start + 2 + topic.len();
    buf[0] & !DUP == first & !DUP
        && buf.len() >= header.frame_len()
        && end <= header.frame_len()
        && buf[start..start + 2] == (topic.len() as u16).to_be_bytes()
        && buf[start + 2..end] == *topic
}

/// The first byte of the fixed header.
fn first_byte(s: Shape) -> u8 {
    (PUBLISH << 4) | u8::from(s.dup) << 3 | (s.qos as u8) << 1 | u8::from(s.retain)
}

/// Length of everything after the fixed header except the payload.
fn variable_header_len(p: &Publish, s: Shape, version: Version) -> usize {
    let pkid = if s.qos == QoS::AtMostOnce { 0 } else { 2 };
    2 + p.topic.len() + pkid + properties::len_v5(&p.properties, version)
}

/// The Remaining Length of `p` sent with `s`, in `version`.
pub(crate) fn len(p: &Publish, s: Shape, version: Version) -> usize {
    variable_header_len(p, s, version) + p.payload.len()
}

/// Room for the header `short_header` writes: topic names of up to 118 bytes.
pub const SHORT_HEADER_MAX: usize = 128;

/// The bytes `write_header` writes for `p` sent with `s`, written into `out` when `p` has no
/// properties and a topic name short enough for `out`; their length. A message going to one
/// session has its header written once: through `BytesMut` into a scratch buffer and copied
/// on from there, that took ~250 instructions a message at pairs-100 QoS 1 (callgrind).
/// `None`: write it the general way.
pub fn short_header(
    p: &Publish,
    s: Shape,
    version: Version,
    out: &mut [u8; SHORT_HEADER_MAX],
) -> Option<usize> {
    let topic = p.topic.as_bytes();
    // Fixed header (at most 5 bytes), topic length, packet id, property length.
    if !p.properties.is_unset() || topic.len() + 10 > SHORT_HEADER_MAX {
        return None;
    }
    let remaining = len(p, s, version);
    if remaining > super::VARINT_MAX as usize {
        return None;
    }
    out[0] = first_byte(s);
    let mut at = 1;
    let mut value = remaining;
    loop {
        let more = value >= 0x80;
        out[at] = (value & 0x7F) as u8 | u8::from(more) << 7;
        at += 1;
        value >>= 7;
        if !more {
            break;
        }
    }
    out[at..at + 2].copy_from_slice(&(topic.len() as u16).to_be_bytes());
    out[at + 2..at + 2 + topic.len()].copy_from_slice(topic);
    at += 2 + topic.len();
    if s.qos != QoS::AtMostOnce {
        out[at..at + 2].copy_from_slice(&s.pkid.to_be_bytes());
        at += 2;
    }
    if version == Version::V5 {
        out[at] = 0; // no properties
        at += 1;
    }
    Some(at)
}

/// Writes the fixed header, topic, packet id and properties of `p` sent with `s`; the
/// Remaining Length counts the payload, which the caller sends after these bytes.
pub(crate) fn write_header(
    p: &Publish,
    s: Shape,
    version: Version,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    writer::check_field(p.topic.len())?;
    fixed_header::write(first_byte(s), len(p, s, version), out)?;
    writer::string(&p.topic, out)?;
    if s.qos != QoS::AtMostOnce {
        out.put_u16(s.pkid);
    }
    properties::write_v5(&p.properties, properties::context(PUBLISH), version, out)
}
