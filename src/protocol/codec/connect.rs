//! CONNECT (3.1): the first packet of a connection; its protocol level picks the version.

use bytes::{BufMut, BytesMut};

use super::error::{DecodeError, EncodeError};
use super::fixed_header::packet_type::CONNECT;
use super::properties::{self, WILL};
use super::reader::Reader;
use super::topic_syntax::validate_topic_name;
use super::writer;
use crate::protocol::packet::{Connect, MqttString, QoS, Version, Will};

const PROTOCOL_NAME: &[u8] = b"MQTT";
/// Protocol level a mosquitto bridge sends for 3.1.1: level 4 with the bridge bit 0x80.
pub(crate) const BRIDGE_LEVEL_V311: u8 = 0x84;
/// Where the protocol level sits in a CONNECT body: after the two-byte length and "MQTT".
pub(crate) const LEVEL_OFFSET: usize = 6;

/// Connect Flags bits (3.1.2.3).
const RESERVED: u8 = 0x01;
const CLEAN_START: u8 = 0x02;
const WILL_FLAG: u8 = 0x04;
const WILL_RETAIN: u8 = 0x20;
const PASSWORD: u8 = 0x40;
const USER_NAME: u8 = 0x80;

/// Reads a CONNECT body. Sets the reader's version from the Protocol Level.
pub(crate) fn read(r: &mut Reader) -> Result<Connect, DecodeError> {
    let version = read_protocol(r)?;
    r.set_version(version);
    let flags = read_flags(r, version)?;
    let keep_alive_secs = r.u16()?;
    let properties = properties::read_v5(r, properties::context(CONNECT))?;
    let client_id = r.string()?;
    let will = if flags & WILL_FLAG != 0 {
        Some(read_will(r, flags)?)
    } else {
        None
    };
    let username = if flags & USER_NAME != 0 {
        Some(r.string()?)
    } else {
        None
    };
    let password = if flags & PASSWORD != 0 {
        Some(r.binary()?)
    } else {
        None
    };
    r.finish()?;
    Ok(Connect {
        version,
        client_id,
        clean_start: flags & CLEAN_START != 0,
        keep_alive_secs,
        username,
        password,
        will,
        properties,
    })
}

/// Protocol Name "MQTT" [MQTT-3.1.2-1] and Protocol Level 4 or 5 [MQTT-3.1.2-2] (or 0x84,
/// 3.1.1 from a bridge).
fn read_protocol(r: &mut Reader) -> Result<Version, DecodeError> {
    let name = r.binary()?;
    let level = r.u8()?;
    if name != PROTOCOL_NAME {
        return Err(DecodeError::UnsupportedProtocolName { level });
    }
    match level {
        // 0x84: 3.1.1 from a bridge (mosquitto's "try_private"; see `Codec::is_bridge`).
        4 | BRIDGE_LEVEL_V311 => Ok(Version::V311),
        5 => Ok(Version::V5),
        other => Err(DecodeError::UnsupportedProtocolLevel(other)),
    }
}

/// Connect Flags: reserved bit [MQTT-3.1.2-3], will consistency [MQTT-3.1.2-11..13],
/// 3.1.1 password needs a user name [MQTT-3.1.2-22].
fn read_flags(r: &mut Reader, version: Version) -> Result<u8, DecodeError> {
    let flags = r.u8()?;
    if flags & RESERVED != 0 {
        return Err(DecodeError::ConnectReservedFlag);
    }
    let will_qos = (flags >> 3) & 0b11;
    let has_will = flags & WILL_FLAG != 0;
    if will_qos == 3 || (!has_will && (will_qos != 0 || flags & WILL_RETAIN != 0)) {
        return Err(DecodeError::InvalidWillFlags);
    }
    if version == Version::V311 && flags & PASSWORD != 0 && flags & USER_NAME == 0 {
        return Err(DecodeError::PasswordWithoutUserName);
    }
    Ok(flags)
}

fn read_will(r: &mut Reader, flags: u8) -> Result<Will, DecodeError> {
    let properties = properties::read_v5(r, WILL)?;
    let topic = r.string()?;
    if !validate_topic_name(topic.as_str()) {
        return Err(DecodeError::InvalidTopicName);
    }
    let payload = r.binary()?;
    // Will QoS 3 was refused by `read_flags`.
    let qos = QoS::from_bits((flags >> 3) & 0b11).unwrap_or_default();
    Ok(Will {
        topic,
        payload,
        qos,
        retain: flags & WILL_RETAIN != 0,
        properties,
    })
}

/// The Remaining Length of `c` encoded as `version`.
pub(crate) fn len(c: &Connect, version: Version) -> usize {
    let props = |p| properties::len_v5(p, version);
    let mut len = 2 + PROTOCOL_NAME.len() + 1 + 1 + 2 + props(&c.properties);
    len += string_len(&c.client_id);
    if let Some(will) = &c.will {
        len += props(&will.properties) + string_len(&will.topic) + 2 + will.payload.len();
    }
    len += c.username.as_ref().map_or(0, string_len);
    len += c.password.as_ref().map_or(0, |p| 2 + p.len());
    len
}

fn string_len(s: &MqttString) -> usize {
    2 + s.len()
}

/// Writes the body of `c` as `version`.
pub(crate) fn write(c: &Connect, version: Version, out: &mut BytesMut) -> Result<(), EncodeError> {
    if c.version != version {
        return Err(EncodeError::VersionMismatch);
    }
    writer::binary(PROTOCOL_NAME, out)?;
    out.put_u8(version.level());
    out.put_u8(flags(c));
    out.put_u16(c.keep_alive_secs);
    properties::write_v5(&c.properties, properties::context(CONNECT), version, out)?;
    writer::string(&c.client_id, out)?;
    if let Some(will) = &c.will {
        properties::write_v5(&will.properties, WILL, version, out)?;
        writer::string(&will.topic, out)?;
        writer::binary(&will.payload, out)?;
    }
    if let Some(username) = &c.username {
        writer::string(username, out)?;
    }
    if let Some(password) = &c.password {
        writer::binary(password, out)?;
    }
    Ok(())
}

fn flags(c: &Connect) -> u8 {
    let mut flags = 0;
    if c.clean_start {
        flags |= CLEAN_START;
    }
    if let Some(will) = &c.will {
        flags |= WILL_FLAG | (will.qos as u8) << 3;
        if will.retain {
            flags |= WILL_RETAIN;
        }
    }
    if c.username.is_some() {
        flags |= USER_NAME;
    }
    if c.password.is_some() {
        flags |= PASSWORD;
    }
    flags
}
