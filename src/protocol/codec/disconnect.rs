//! DISCONNECT (3.14): empty in 3.1.1; in 5.0 a reason code and properties, either omitted
//! when Normal Disconnection and empty.

use bytes::{BufMut, BytesMut};

use super::ack::tail;
use super::check_reason;
use super::error::{DecodeError, EncodeError};
use super::fixed_header::packet_type::DISCONNECT;
use super::properties;
use super::reader::Reader;
use crate::protocol::packet::{Disconnect, Version};

/// 5.0 reason codes (3.14.2.1).
const CODES_V5: &[u8] = &[
    0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93, 0x94, 0x95,
    0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2,
];

/// Reads a DISCONNECT body.
pub(crate) fn read(r: &mut Reader) -> Result<Disconnect, DecodeError> {
    let mut d = Disconnect::default();
    if r.version() == Version::V5 && !r.is_empty() {
        d.reason = check_reason(DISCONNECT, r.u8()?, CODES_V5)?;
        if !r.is_empty() {
            d.properties = properties::read(r, properties::context(DISCONNECT))?;
        }
    }
    r.finish()?;
    Ok(d)
}

/// The Remaining Length of `d` in `version`.
pub(crate) fn len(d: &Disconnect, version: Version) -> usize {
    match tail(d.reason, &d.properties, version) {
        (_, true) => 1 + properties::len(&d.properties),
        (has_reason, false) => usize::from(has_reason),
    }
}

/// Writes the body of `d`.
pub(crate) fn write(
    d: &Disconnect,
    version: Version,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    let (has_reason, has_props) = tail(d.reason, &d.properties, version);
    if has_reason {
        out.put_u8(d.reason.0);
    }
    if has_props {
        properties::write_v5(&d.properties, properties::context(DISCONNECT), version, out)?;
    }
    Ok(())
}
