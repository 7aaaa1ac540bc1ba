//! The MQTT 3.1.1 / 5.0 codec: framing, decoding and encoding of every packet.
//!
//! Decoding takes a `BytesMut` holding what has been read from the peer. It either consumes
//! exactly one packet, or consumes nothing and says how many more bytes it needs, or consumes
//! nothing and returns a typed error. Strings, binary data and payloads in the decoded packet
//! are slices of the input (no copy).
//!
//! Encoding a PUBLISH can write its header alone (`write_publish_header`), so that one payload
//! `Bytes` is sent to many subscribers with only the header built per subscriber.

#![deny(missing_docs)]

mod ack;
mod auth;
mod connack;
mod connect;
mod disconnect;
mod error;
pub mod fixed_header;
mod ping;
mod properties;
mod publish;
mod reader;
pub mod samples;
mod suback;
mod subscribe;
pub mod topic_syntax;
mod unsuback;
mod unsubscribe;
mod varint;
mod writer;

#[cfg(test)]
mod tests;

use bytes::{Bytes, BytesMut};

pub use ack::{plain_pubacks, short_ack};
pub use error::{DecodeError, EncodeError};
use fixed_header::{packet_type::*, FixedHeader};
pub use publish::{publish_continues, short_header, Shape, SHORT_HEADER_MAX};
use reader::Reader;
pub use topic_syntax::{validate_topic_filter, validate_topic_name};
pub use varint::VARINT_MAX;

use crate::protocol::packet::{Packet, Publish, ReasonCode, Version};

/// Frames and decodes the packets of one connection.
#[derive(Clone, Debug)]
pub struct Codec {
    version: Option<Version>,
    max_packet_size: u32,
    /// Whether the CONNECT carried mosquitto's bridge protocol level (0x84).
    is_bridge: bool,
}

/// What `Codec::decode` found at the front of the buffer.
// Same trade-off as `Packet`: no allocation per packet.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decoded {
    /// One whole packet, whose bytes were consumed.
    Packet(Packet),
    /// Not a whole packet yet: at least `needed` more bytes must be read. Nothing was consumed.
    Incomplete {
        /// Bytes still missing (a lower bound while the fixed header itself is incomplete).
        needed: usize,
    },
}

impl Codec {
    /// A codec for a new connection: the first packet must be CONNECT, whose protocol level
    /// selects the version.
    pub fn new(max_packet_size: u32) -> Codec {
        Codec {
            version: None,
            max_packet_size,
            is_bridge: false,
        }
    }

    /// A codec already fixed to a version (for clients, tests, after CONNECT).
    pub fn with_version(version: Version, max_packet_size: u32) -> Codec {
        Codec {
            version: Some(version),
            max_packet_size,
            is_bridge: false,
        }
    }

    /// The version, once known.
    pub fn version(&self) -> Option<Version> {
        self.version
    }

    /// Whether the client connected with mosquitto's bridge protocol level (0x84, 3.1.1): a
    /// broker bridging to us, which expects not to get its own messages back and to see the
    /// retain flag as published, as mosquitto treats bridges.
    pub fn is_bridge(&self) -> bool {
        self.is_bridge
    }

    /// The largest packet (fixed header included) `decode` accepts, in bytes.
    pub fn max_packet_size(&self) -> u32 {
        self.max_packet_size
    }

    /// Decodes one packet from the front of `buf`. `Ok(Decoded::Packet)` consumed exactly that
    /// frame; `Ok(Decoded::Incomplete { needed })` and `Err` consumed nothing.
    /// Before the version is known only CONNECT is accepted (MQTT-3.1.0-1); a decoded CONNECT
    /// fixes the version for the rest of the connection.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, DecodeError> {
        let header = match fixed_header::parse(buf)? {
            Ok(header) => header,
            Err(needed) => return Ok(Decoded::Incomplete { needed }),
        };
        self.check_header(&header)?;
        if buf.len() < header.frame_len() {
            let needed = header.frame_len() - buf.len();
            return Ok(Decoded::Incomplete { needed });
        }
        let frame = buf.split_to(header.frame_len()).freeze();
        let body = frame.slice(header.header_len..);
        match self.decode_body(&header, body) {
            Ok(packet) => Ok(Decoded::Packet(packet)),
            Err(error) => {
                restore(buf, frame);
                Err(error)
            }
        }
    }

    /// Everything the fixed header alone can refuse, before the body is buffered.
    fn check_header(&self, header: &FixedHeader) -> Result<(), DecodeError> {
        let version = match self.version {
            Some(version) => version,
            None if header.packet_type == CONNECT => Version::V5,
            None => {
                let packet_type = header.packet_type;
                return Err(DecodeError::FirstPacketNotConnect { packet_type });
            }
        };
        fixed_header::check_type_and_flags(header, version)?;
        // Refuse oversize packets before buffering them: a peer must not make us hold
        // a huge body just by announcing it.
        let size = header.frame_len();
        if size > self.max_packet_size as usize {
            let max = self.max_packet_size;
            return Err(DecodeError::PacketTooLarge { size, max });
        }
        if self.version == Some(Version::V5) && !header.is_minimal {
            return Err(DecodeError::NonMinimalVarint);
        }
        Ok(())
    }

    #[inline]
    fn decode_body(&mut self, header: &FixedHeader, body: Bytes) -> Result<Packet, DecodeError> {
        let Some(version) = self.version else {
            // Only CONNECT gets here (`check_header`); it fixes the version.
            let is_bridge = body.get(connect::LEVEL_OFFSET) == Some(&connect::BRIDGE_LEVEL_V311);
            let connect = connect::read(&mut Reader::new(body, Version::V311))?;
            if connect.version == Version::V5 && !header.is_minimal {
                return Err(DecodeError::NonMinimalVarint);
            }
            self.version = Some(connect.version);
            self.is_bridge = is_bridge;
            return Ok(Packet::Connect(Box::new(connect)));
        };
        read_packet(header, &mut Reader::new(body, version))
    }
}

/// Puts a frame that failed to decode back in front of `buf`, so an error consumes nothing.
/// Errors end the connection, so the copy this may make costs nothing that matters.
fn restore(buf: &mut BytesMut, frame: Bytes) {
    let mut whole = match frame.try_into_mut() {
        Ok(frame) => frame,
        Err(frame) => BytesMut::from(&frame[..]),
    };
    whole.unsplit(std::mem::take(buf));
    *buf = whole;
}

/// Reads the body of the packet `header` announces.
#[inline]
fn read_packet(header: &FixedHeader, r: &mut Reader) -> Result<Packet, DecodeError> {
    let packet_type = header.packet_type;
    Ok(match packet_type {
        CONNECT => Packet::Connect(Box::new(connect::read(r)?)),
        CONNACK => Packet::ConnAck(connack::read(r)?),
        PUBLISH => Packet::Publish(publish::read(header.flags, r)?),
        PUBACK => Packet::PubAck(ack::read(packet_type, r)?),
        PUBREC => Packet::PubRec(ack::read(packet_type, r)?),
        PUBREL => Packet::PubRel(ack::read(packet_type, r)?),
        PUBCOMP => Packet::PubComp(ack::read(packet_type, r)?),
        SUBSCRIBE => Packet::Subscribe(subscribe::read(r)?),
        SUBACK => Packet::SubAck(suback::read(r)?),
        UNSUBSCRIBE => Packet::Unsubscribe(unsubscribe::read(r)?),
        UNSUBACK => Packet::UnsubAck(unsuback::read(r)?),
        PINGREQ => ping::read(r).map(|()| Packet::PingReq)?,
        PINGRESP => ping::read(r).map(|()| Packet::PingResp)?,
        DISCONNECT => Packet::Disconnect(disconnect::read(r)?),
        AUTH => Packet::Auth(auth::read(r)?),
        // `check_type_and_flags` refused type 0; the type is a nibble.
        other => return Err(DecodeError::ReservedPacketType(other)),
    })
}

/// A reason code of `packet_type` that must be one of `allowed`.
pub(crate) fn check_reason(
    packet_type: u8,
    code: u8,
    allowed: &[u8],
) -> Result<ReasonCode, DecodeError> {
    if allowed.contains(&code) {
        Ok(ReasonCode(code))
    } else {
        Err(DecodeError::InvalidReasonCode { packet_type, code })
    }
}

/// The packet type number of `packet`.
pub fn packet_type(packet: &Packet) -> u8 {
    match packet {
        Packet::Connect(_) => CONNECT,
        Packet::ConnAck(_) => CONNACK,
        Packet::Publish(_) => PUBLISH,
        Packet::PubAck(_) => PUBACK,
        Packet::PubRec(_) => PUBREC,
        Packet::PubRel(_) => PUBREL,
        Packet::PubComp(_) => PUBCOMP,
        Packet::Subscribe(_) => SUBSCRIBE,
        Packet::SubAck(_) => SUBACK,
        Packet::Unsubscribe(_) => UNSUBSCRIBE,
        Packet::UnsubAck(_) => UNSUBACK,
        Packet::PingReq => PINGREQ,
        Packet::PingResp => PINGRESP,
        Packet::Disconnect(_) => DISCONNECT,
        Packet::Auth(_) => AUTH,
    }
}

/// The Remaining Length of `packet` in `version`.
fn remaining_len(packet: &Packet, version: Version) -> usize {
    match packet {
        Packet::Connect(c) => connect::len(c, version),
        Packet::ConnAck(c) => connack::len(c, version),
        Packet::Publish(p) => publish::len(p, Shape::of(p), version),
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            ack::len(a, version)
        }
        Packet::Subscribe(s) => subscribe::len(s, version),
        Packet::SubAck(s) => suback::len(s, version),
        Packet::Unsubscribe(u) => unsubscribe::len(u, version),
        Packet::UnsubAck(u) => unsuback::len(u, version),
        Packet::PingReq | Packet::PingResp => 0,
        Packet::Disconnect(d) => disconnect::len(d, version),
        Packet::Auth(a) => auth::len(a),
    }
}

/// The size in bytes `packet` will take on the wire (for Maximum Packet Size checks).
pub fn encoded_len(packet: &Packet, version: Version) -> usize {
    let remaining = remaining_len(packet, version);
    fixed_header::len(remaining) + remaining
}

/// The size in bytes a PUBLISH will take on the wire, payload included, without building a
/// `Packet` around it (checked against a client's Maximum Packet Size before queueing).
pub fn publish_len(publish: &Publish, version: Version) -> usize {
    let remaining = publish::len(publish, Shape::of(publish), version);
    fixed_header::len(remaining) + remaining
}

/// Length of the whole PUBLISH `write_shaped_header` and the payload make: `publish` sent with
/// `shape`'s QoS, retain, DUP and packet id, without a copy of it.
pub fn shaped_len(publish: &Publish, shape: Shape, version: Version) -> usize {
    let remaining = publish::len(publish, shape, version);
    fixed_header::len(remaining) + remaining
}

/// Encodes any packet for `version` (PUBLISH: header then a copy of the payload — for
/// clients/tests). On error `out` is left as it was.
pub fn encode(packet: &Packet, version: Version, out: &mut BytesMut) -> Result<(), EncodeError> {
    let start = out.len();
    let result = write_packet(packet, version, out);
    if result.is_err() {
        out.truncate(start);
    }
    result
}

fn write_packet(packet: &Packet, version: Version, out: &mut BytesMut) -> Result<(), EncodeError> {
    let packet_type = packet_type(packet);
    if let Packet::Publish(p) = packet {
        publish::write_header(p, Shape::of(p), version, out)?;
        out.extend_from_slice(&p.payload);
        return Ok(());
    }
    if packet_type == AUTH && version == Version::V311 {
        return Err(EncodeError::NotInVersion { packet_type });
    }
    let flags = match packet_type {
        PUBREL | SUBSCRIBE | UNSUBSCRIBE => 0b0010,
        _ => 0,
    };
    fixed_header::write(
        packet_type << 4 | flags,
        remaining_len(packet, version),
        out,
    )?;
    match packet {
        Packet::Connect(c) => connect::write(c, version, out),
        Packet::ConnAck(c) => connack::write(c, version, out),
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            ack::write(packet_type, a, version, out)
        }
        Packet::Subscribe(s) => subscribe::write(s, version, out),
        Packet::SubAck(s) => suback::write(s, version, out),
        Packet::Unsubscribe(u) => unsubscribe::write(u, version, out),
        Packet::UnsubAck(u) => unsuback::write(u, version, out),
        Packet::Disconnect(d) => disconnect::write(d, version, out),
        Packet::Auth(a) => auth::write(a, out),
        Packet::Publish(_) | Packet::PingReq | Packet::PingResp => Ok(()),
    }
}

/// Writes a PUBLISH property list (length prefix, then properties) on its own, for carrying a
/// message's properties outside an MQTT packet (the cluster's `Rc-Props` header). Properties
/// a PUBLISH may not carry are refused.
pub fn write_publish_properties(
    p: &crate::protocol::packet::Properties,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    properties::check(p, properties::context(PUBLISH))?;
    properties::write(p, out)
}

/// Reads what `write_publish_properties` wrote: exactly one PUBLISH property list, checked as
/// the codec checks a PUBLISH's (allowed identifiers, no repeats, valid values).
pub fn read_publish_properties(bytes: Bytes) -> Result<crate::protocol::Props, DecodeError> {
    let mut r = Reader::new(bytes, Version::V5);
    let props = properties::read(&mut r, properties::context(PUBLISH))?;
    r.finish()?;
    Ok(props)
}

/// Where the packet id sits in the header `write_shaped_header` writes for `publish` sent
/// with `shape` (None for QoS 0), so one encoded header can serve many subscribers with their
/// own ids.
pub fn publish_pkid_offset(publish: &Publish, shape: Shape, version: Version) -> Option<usize> {
    if shape.qos == crate::protocol::QoS::AtMostOnce {
        return None;
    }
    let remaining = publish::len(publish, shape, version);
    Some(fixed_header::len(remaining) + 2 + publish.topic.len())
}

/// Writes everything of a PUBLISH except the payload: fixed header (remaining length counts
/// the payload), topic, packet id, properties. On error `out` is left as it was.
pub fn write_publish_header(
    publish: &Publish,
    version: Version,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    write_shaped_header(publish, Shape::of(publish), version, out)
}

/// `write_publish_header` for a copy of `publish` sent with `shape` (its own QoS, retain,
/// DUP and packet id), without building that copy.
pub fn write_shaped_header(
    publish: &Publish,
    shape: Shape,
    version: Version,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    let start = out.len();
    let result = publish::write_header(publish, shape, version, out);
    if result.is_err() {
        out.truncate(start);
    }
    result
}
