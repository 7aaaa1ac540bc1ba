//! Writers for MQTT data types. Lengths are checked before anything is written.

use bytes::{BufMut, Bytes, BytesMut};

use super::error::EncodeError;
use crate::protocol::packet::MqttString;

/// Checks that a string or binary field fits its two-byte length prefix.
#[inline]
pub(crate) fn check_field(len: usize) -> Result<(), EncodeError> {
    if len > usize::from(u16::MAX) {
        Err(EncodeError::FieldTooLong { len })
    } else {
        Ok(())
    }
}

/// Writes Binary Data: two-byte length, then the bytes.
#[inline]
pub(crate) fn binary(data: &[u8], out: &mut BytesMut) -> Result<(), EncodeError> {
    check_field(data.len())?;
    // Fits: checked just above.
    out.put_u16(data.len() as u16);
    out.put_slice(data);
    Ok(())
}

/// Writes a UTF-8 Encoded String.
#[inline]
pub(crate) fn string(text: &MqttString, out: &mut BytesMut) -> Result<(), EncodeError> {
    binary(text.as_bytes(), out)
}

/// Length on the wire of a string or binary field.
#[inline]
pub(crate) fn field_len(data: &Bytes) -> usize {
    2 + data.len()
}
