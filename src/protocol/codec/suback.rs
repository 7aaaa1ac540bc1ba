//! SUBACK (3.9): a packet id, properties (5.0), one reason code per filter.

use bytes::{BufMut, BytesMut};

use super::check_reason;
use super::error::{DecodeError, EncodeError};
use super::fixed_header::packet_type::SUBACK;
use super::properties;
use super::reader::Reader;
use crate::protocol::packet::{SubAck, Version};

/// 3.1.1 return codes (3.9.3).
const CODES_V311: &[u8] = &[0x00, 0x01, 0x02, 0x80];
/// 5.0 reason codes (3.9.3).
const CODES_V5: &[u8] = &[
    0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2,
];

/// Reads a SUBACK body.
pub(crate) fn read(r: &mut Reader) -> Result<SubAck, DecodeError> {
    let pkid = r.packet_id()?;
    let properties = properties::read_v5(r, properties::context(SUBACK))?;
    let allowed = match r.version() {
        Version::V311 => CODES_V311,
        Version::V5 => CODES_V5,
    };
    let mut reason_codes = Vec::with_capacity(r.remaining());
    while !r.is_empty() {
        reason_codes.push(check_reason(SUBACK, r.u8()?, allowed)?);
    }
    Ok(SubAck {
        pkid,
        reason_codes,
        properties,
    })
}

/// The Remaining Length of `s` in `version`.
pub(crate) fn len(s: &SubAck, version: Version) -> usize {
    2 + properties::len_v5(&s.properties, version) + s.reason_codes.len()
}

/// Writes the body of `s`.
pub(crate) fn write(s: &SubAck, version: Version, out: &mut BytesMut) -> Result<(), EncodeError> {
    out.put_u16(s.pkid);
    properties::write_v5(&s.properties, properties::context(SUBACK), version, out)?;
    for code in &s.reason_codes {
        out.put_u8(code.0);
    }
    Ok(())
}
