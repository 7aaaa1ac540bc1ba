//! CONNACK (3.2).

use bytes::{BufMut, BytesMut};

use super::check_reason;
use super::error::{DecodeError, EncodeError};
use super::fixed_header::packet_type::CONNACK;
use super::properties;
use super::reader::Reader;
use crate::protocol::packet::{ConnAck, ReasonCode, Version};

/// 3.1.1 return codes 0 to 5 (3.2.2.3).
const CODES_V311: &[u8] = &[0, 1, 2, 3, 4, 5];
/// 5.0 reason codes (3.2.2.2).
const CODES_V5: &[u8] = &[
    0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90, 0x95, 0x97,
    0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
];

/// Reads a CONNACK body.
pub(crate) fn read(r: &mut Reader) -> Result<ConnAck, DecodeError> {
    let flags = r.u8()?;
    // Bits 7-1 of the Connect Acknowledge Flags are reserved [MQTT-3.2.2-1].
    if flags & 0xFE != 0 {
        return Err(DecodeError::InvalidConnAckFlags);
    }
    let allowed = match r.version() {
        Version::V311 => CODES_V311,
        Version::V5 => CODES_V5,
    };
    let code = check_reason(CONNACK, r.u8()?, allowed)?;
    let session_present = flags == 1;
    if session_present && code != ReasonCode::SUCCESS {
        return Err(DecodeError::SessionPresentWithError);
    }
    let properties = properties::read_v5(r, properties::context(CONNACK))?;
    r.finish()?;
    Ok(ConnAck {
        session_present,
        code,
        properties,
    })
}

/// The Remaining Length of `c` in `version`.
pub(crate) fn len(c: &ConnAck, version: Version) -> usize {
    2 + properties::len_v5(&c.properties, version)
}

/// Writes the body of `c` in `version`.
pub(crate) fn write(c: &ConnAck, version: Version, out: &mut BytesMut) -> Result<(), EncodeError> {
    out.put_u8(u8::from(c.session_present));
    out.put_u8(c.code.0);
    properties::write_v5(&c.properties, properties::context(CONNACK), version, out)
}
