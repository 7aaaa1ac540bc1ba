//! A bounds-checked reader over one packet's bytes: every read checks what is left first, so
//! no input can make it panic, and strings and binary data come out as slices (no copy).

use bytes::{Buf, Bytes};

use super::error::DecodeError;
use super::varint;
use crate::protocol::packet::{MqttString, Version};

/// Reads MQTT data types from the body of one packet.
pub(crate) struct Reader {
    buf: Bytes,
    version: Version,
}

impl Reader {
    /// A reader over `buf`; `version` decides whether varints must be minimal.
    #[inline]
    pub(crate) fn new(buf: Bytes, version: Version) -> Reader {
        Reader { buf, version }
    }

    /// The version the rest of the packet is read as.
    #[inline]
    pub(crate) fn version(&self) -> Version {
        self.version
    }

    /// Switches version, for CONNECT once its protocol level has been read.
    #[inline]
    pub(crate) fn set_version(&mut self, version: Version) {
        self.version = version;
    }

    /// Whether every byte has been read.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Bytes left.
    #[inline]
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// Errors unless every byte has been read (a field list that ends early is malformed).
    #[inline]
    pub(crate) fn finish(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes)
        }
    }

    /// One byte.
    #[inline]
    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        self.need(1)?;
        Ok(self.buf.get_u8())
    }

    /// A big-endian Two Byte Integer.
    #[inline]
    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        self.need(2)?;
        Ok(self.buf.get_u16())
    }

    /// A big-endian Four Byte Integer.
    #[inline]
    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        self.need(4)?;
        Ok(self.buf.get_u32())
    }

    /// A packet identifier, which must be non-zero [MQTT-2.2.1-3].
    #[inline]
    pub(crate) fn packet_id(&mut self) -> Result<u16, DecodeError> {
        match self.u16()? {
            0 => Err(DecodeError::ZeroPacketId),
            id => Ok(id),
        }
    }

    /// A Variable Byte Integer; minimal encoding is required in 5.0 [MQTT-1.5.5-1].
    #[inline]
    pub(crate) fn varint(&mut self) -> Result<u32, DecodeError> {
        match varint::parse(&self.buf)? {
            None => Err(DecodeError::UnexpectedEnd),
            Some((value, used)) => {
                if self.version == Version::V5 && used != varint::len(value) {
                    return Err(DecodeError::NonMinimalVarint);
                }
                self.buf.advance(used);
                Ok(value)
            }
        }
    }

    /// The next `len` bytes, shared with the input.
    #[inline]
    pub(crate) fn take(&mut self, len: usize) -> Result<Bytes, DecodeError> {
        self.need(len)?;
        Ok(self.buf.split_to(len))
    }

    /// Everything left, shared with the input (a PUBLISH payload).
    #[inline]
    pub(crate) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    /// A sub-reader over the next `len` bytes (a property list).
    #[inline]
    pub(crate) fn sub(&mut self, len: usize) -> Result<Reader, DecodeError> {
        Ok(Reader::new(self.take(len)?, self.version))
    }

    /// Binary Data: a two-byte length, then that many bytes.
    #[inline]
    pub(crate) fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }

    /// A UTF-8 Encoded String, checked [MQTT-1.5.4-1], [MQTT-1.5.4-2].
    #[inline]
    pub(crate) fn string(&mut self) -> Result<MqttString, DecodeError> {
        checked_string(self.binary()?)
    }

    /// A PUBLISH topic name read as `string` reads, and whether one pass over its bytes
    /// already found it a valid name: ASCII, none of U+0000, `+`, `#` [MQTT-3.3.2-2]. Device
    /// topics nearly always are, and `string` then the name check scan them three times
    /// (UTF-8, U+0000, wildcards: ~400 instructions for a 15-byte topic). When false, the
    /// caller checks the name as before.
    #[inline]
    pub(crate) fn topic_name(&mut self) -> Result<(MqttString, bool), DecodeError> {
        let bytes = self.binary()?;
        // Not short-circuiting: a branch-free fold over short topics.
        let is_plain = bytes
            .iter()
            .fold(!bytes.is_empty(), |ok, &b| ok & is_plain_name_byte(b));
        if is_plain {
            return Ok((MqttString::from_validated(bytes), true));
        }
        Ok((checked_string(bytes)?, false))
    }

    #[inline]
    fn need(&self, len: usize) -> Result<(), DecodeError> {
        if self.buf.len() < len {
            Err(DecodeError::UnexpectedEnd)
        } else {
            Ok(())
        }
    }
}

/// A byte that, when every byte of a topic is one, makes it a valid UTF-8 topic name: ASCII
/// other than U+0000 and the wildcards.
#[inline]
fn is_plain_name_byte(b: u8) -> bool {
    b.wrapping_sub(1) < 0x7f && b != b'+' && b != b'#'
}

/// Checks bytes as a UTF-8 Encoded String [MQTT-1.5.4-1], [MQTT-1.5.4-2].
#[inline]
fn checked_string(bytes: Bytes) -> Result<MqttString, DecodeError> {
    // `from_utf8` rejects ill-formed sequences and encoded surrogates (U+D800..U+DFFF).
    // Checked once here; `from_validated` does not scan the bytes again.
    if std::str::from_utf8(&bytes).is_err() {
        return Err(DecodeError::InvalidUtf8);
    }
    if bytes.contains(&0) {
        return Err(DecodeError::NullCharacter);
    }
    Ok(MqttString::from_validated(bytes))
}
