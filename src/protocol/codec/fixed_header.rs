//! The fixed header (2.1 / 3.1.1: 2.2): packet type, flags, Remaining Length.

use bytes::{BufMut, BytesMut};

use super::error::{DecodeError, EncodeError};
use super::varint::{self, VARINT_MAX};
use crate::protocol::packet::Version;

/// Packet type numbers (upper nibble of the first byte).
#[allow(missing_docs)]
pub mod packet_type {
    pub const CONNECT: u8 = 1;
    pub const CONNACK: u8 = 2;
    pub const PUBLISH: u8 = 3;
    pub const PUBACK: u8 = 4;
    pub const PUBREC: u8 = 5;
    pub const PUBREL: u8 = 6;
    pub const PUBCOMP: u8 = 7;
    pub const SUBSCRIBE: u8 = 8;
    pub const SUBACK: u8 = 9;
    pub const UNSUBSCRIBE: u8 = 10;
    pub const UNSUBACK: u8 = 11;
    pub const PINGREQ: u8 = 12;
    pub const PINGRESP: u8 = 13;
    pub const DISCONNECT: u8 = 14;
    pub const AUTH: u8 = 15;
}

/// A parsed fixed header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FixedHeader {
    /// Upper nibble of byte 1.
    pub packet_type: u8,
    /// Lower nibble of byte 1.
    pub flags: u8,
    /// The Remaining Length: bytes after the fixed header.
    pub remaining: usize,
    /// Bytes the fixed header itself takes (2 to 5).
    pub header_len: usize,
    /// Whether the Remaining Length was minimally encoded (required in 5.0).
    pub is_minimal: bool,
}

impl FixedHeader {
    /// The whole packet's size in bytes.
    #[inline]
    pub fn frame_len(&self) -> usize {
        self.header_len + self.remaining
    }
}

/// Parses a fixed header from the front of `buf`. `Err(needed)` in the outer result says how
/// many more bytes are needed at least before it can be parsed.
#[inline]
pub(crate) fn parse(buf: &[u8]) -> Result<Result<FixedHeader, usize>, DecodeError> {
    let Some((&first, rest)) = buf.split_first() else {
        return Ok(Err(2));
    };
    let Some((remaining, used)) = varint::parse(rest)? else {
        return Ok(Err(1));
    };
    Ok(Ok(FixedHeader {
        packet_type: first >> 4,
        flags: first & 0x0F,
        remaining: remaining as usize,
        header_len: 1 + used,
        is_minimal: used == varint::len(remaining),
    }))
}

/// Checks the packet type exists in `version` and its flag bits are the fixed ones
/// [MQTT-2.1.3-1] (3.1.1: MQTT-2.2.2-1, MQTT-2.2.2-2). PUBLISH flags are checked by PUBLISH.
#[inline]
pub(crate) fn check_type_and_flags(
    header: &FixedHeader,
    version: Version,
) -> Result<(), DecodeError> {
    use packet_type::*;
    let expected = match header.packet_type {
        0 => return Err(DecodeError::ReservedPacketType(0)),
        AUTH if version == Version::V311 => return Err(DecodeError::ReservedPacketType(AUTH)),
        PUBLISH => return Ok(()),
        PUBREL | SUBSCRIBE | UNSUBSCRIBE => 0b0010,
        _ => 0,
    };
    if header.flags == expected {
        Ok(())
    } else {
        Err(DecodeError::InvalidFlags {
            packet_type: header.packet_type,
            flags: header.flags,
        })
    }
}

/// Bytes a fixed header with this Remaining Length takes.
#[inline]
pub(crate) fn len(remaining: usize) -> usize {
    1 + varint::len(u32::try_from(remaining).unwrap_or(u32::MAX))
}

/// Writes a fixed header.
#[inline]
pub(crate) fn write(
    first_byte: u8,
    remaining: usize,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    let Ok(value) = u32::try_from(remaining) else {
        return Err(EncodeError::PacketTooLarge { remaining });
    };
    if value > VARINT_MAX {
        return Err(EncodeError::PacketTooLarge { remaining });
    }
    out.put_u8(first_byte);
    varint::write(value, out);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn says_how_much_is_missing() {
        assert_eq!(parse(&[]), Ok(Err(2)));
        assert_eq!(parse(&[0x30]), Ok(Err(1)));
        assert_eq!(parse(&[0x30, 0x80]), Ok(Err(1)));
    }

    #[test]
    fn notes_non_minimal_length() {
        let header = parse(&[0x30, 0x80, 0x00]).unwrap().unwrap();
        assert!(!header.is_minimal);
        assert_eq!(header.frame_len(), 3);
    }

    #[test]
    fn refuses_bad_flags_and_reserved_types() {
        let header = |byte: u8| parse(&[byte, 0]).unwrap().unwrap();
        let check = |byte: u8, v| check_type_and_flags(&header(byte), v);
        assert_eq!(
            check(0x00, Version::V5),
            Err(DecodeError::ReservedPacketType(0))
        );
        assert_eq!(
            check(0xF0, Version::V311),
            Err(DecodeError::ReservedPacketType(15))
        );
        assert_eq!(check(0xF0, Version::V5), Ok(()));
        assert!(check(0x60, Version::V5).is_err(), "PUBREL needs 0010");
        assert!(check(0x80, Version::V311).is_err(), "SUBSCRIBE needs 0010");
        assert!(
            check(0xA3, Version::V311).is_err(),
            "UNSUBSCRIBE needs 0010"
        );
        assert!(check(0x41, Version::V5).is_err(), "PUBACK needs 0000");
        assert!(check(0xC8, Version::V5).is_err(), "PINGREQ needs 0000");
        assert_eq!(
            check(0x3F, Version::V5),
            Ok(()),
            "PUBLISH flags are PUBLISH's business"
        );
    }
}
