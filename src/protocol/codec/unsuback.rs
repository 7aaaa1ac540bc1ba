//! UNSUBACK (3.11): a packet id; in 5.0 also properties and one reason code per filter.

use bytes::{BufMut, BytesMut};

use super::check_reason;
use super::error::{DecodeError, EncodeError};
use super::fixed_header::packet_type::UNSUBACK;
use super::properties;
use super::reader::Reader;
use crate::protocol::packet::{UnsubAck, Version};

/// 5.0 reason codes (3.11.3).
const CODES_V5: &[u8] = &[0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91];

/// Reads an UNSUBACK body.
pub(crate) fn read(r: &mut Reader) -> Result<UnsubAck, DecodeError> {
    let pkid = r.packet_id()?;
    let properties = properties::read_v5(r, properties::context(UNSUBACK))?;
    let mut reason_codes = Vec::new();
    // 3.1.1 has no payload, so any byte left is refused by `finish`.
    if r.version() == Version::V5 {
        reason_codes.reserve(r.remaining());
        while !r.is_empty() {
            reason_codes.push(check_reason(UNSUBACK, r.u8()?, CODES_V5)?);
        }
    }
    r.finish()?;
    Ok(UnsubAck {
        pkid,
        reason_codes,
        properties,
    })
}

fn codes_len(u: &UnsubAck, version: Version) -> usize {
    match version {
        Version::V311 => 0,
        Version::V5 => u.reason_codes.len(),
    }
}

/// The Remaining Length of `u` in `version`.
pub(crate) fn len(u: &UnsubAck, version: Version) -> usize {
    2 + properties::len_v5(&u.properties, version) + codes_len(u, version)
}

/// Writes the body of `u`; 3.1.1 carries no reason codes.
pub(crate) fn write(u: &UnsubAck, version: Version, out: &mut BytesMut) -> Result<(), EncodeError> {
    out.put_u16(u.pkid);
    properties::write_v5(&u.properties, properties::context(UNSUBACK), version, out)?;
    for code in &u.reason_codes[..codes_len(u, version)] {
        out.put_u8(code.0);
    }
    Ok(())
}
