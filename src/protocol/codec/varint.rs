//! Variable Byte Integers (1.5.5): 7 bits per byte, least significant first, at most 4 bytes.

use bytes::BufMut;

use super::error::DecodeError;

/// The largest value a Variable Byte Integer holds (4 bytes).
pub const VARINT_MAX: u32 = 268_435_455;

/// Parses a Variable Byte Integer from the front of `buf`: `Ok(None)` when `buf` ends before the
/// last byte, otherwise the value and the number of bytes it took. A fifth byte is an error
/// [MQTT-1.5.5] (3.1.1: 2.2.3).
#[inline]
pub(crate) fn parse(buf: &[u8]) -> Result<Option<(u32, usize)>, DecodeError> {
    let mut value = 0u32;
    for (i, &byte) in buf.iter().enumerate() {
        if i == 4 {
            return Err(DecodeError::VarintTooLong);
        }
        value |= u32::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    if buf.len() >= 4 {
        return Err(DecodeError::VarintTooLong);
    }
    Ok(None)
}

/// Bytes the minimal encoding of `value` takes (values over `VARINT_MAX` count as 4).
#[inline]
pub(crate) fn len(value: u32) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Writes `value` minimally. The caller has checked `value <= VARINT_MAX`.
#[inline]
pub(crate) fn write(value: u32, out: &mut impl BufMut) {
    debug_assert!(value <= VARINT_MAX);
    let mut value = value;
    loop {
        let byte = (value & 0x7F) as u8;
        value >>= 7;
        if value == 0 {
            out.put_u8(byte);
            return;
        }
        out.put_u8(byte | 0x80);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_at_every_boundary() {
        for value in [
            0, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152, VARINT_MAX,
        ] {
            let mut out = Vec::new();
            write(value, &mut out);
            assert_eq!(out.len(), len(value));
            assert_eq!(parse(&out), Ok(Some((value, out.len()))));
        }
    }

    #[test]
    fn refuses_a_fifth_byte() {
        assert_eq!(
            parse(&[0xFF, 0xFF, 0xFF, 0xFF, 0x7F]),
            Err(DecodeError::VarintTooLong)
        );
        assert_eq!(
            parse(&[0xFF, 0xFF, 0xFF, 0xFF]),
            Err(DecodeError::VarintTooLong)
        );
    }

    #[test]
    fn reports_incomplete() {
        assert_eq!(parse(&[]), Ok(None));
        assert_eq!(parse(&[0x80, 0x80]), Ok(None));
    }
}
