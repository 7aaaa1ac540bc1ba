//! MQTT 5.0 properties (2.2.2): one table of identifiers and the packets that may carry them,
//! a reader that enforces it, and a writer.

use bytes::{BufMut, Bytes, BytesMut};

use super::error::{DecodeError, EncodeError};
use super::reader::Reader;
use super::varint::{self, VARINT_MAX};
use super::writer;
use crate::protocol::packet::{MqttString, Properties, Props, Version};

/// Where a property list sits: one bit per packet type (bit n for type n), bit 0 for the will
/// properties of CONNECT.
pub(crate) type Context = u16;

/// Will properties inside CONNECT.
pub(crate) const WILL: Context = 1;
const CONNECT: Context = 1 << 1;
const CONNACK: Context = 1 << 2;
const PUBLISH: Context = 1 << 3;
const ACKS: Context = 0b1111 << 4;
const SUBSCRIBE: Context = 1 << 8;
const SUBACK: Context = 1 << 9;
const UNSUBACK: Context = 1 << 11;
const DISCONNECT: Context = 1 << 14;
const AUTH: Context = 1 << 15;

/// The context of a packet type's own property list.
pub(crate) fn context(packet_type: u8) -> Context {
    1 << packet_type
}

/// The table (2.2.2.2): which contexts may carry each property identifier.
fn allowed(id: u32) -> Option<Context> {
    Some(match id {
        0x01 | 0x02 | 0x03 | 0x08 | 0x09 => PUBLISH | WILL,
        0x0B => PUBLISH | SUBSCRIBE,
        0x11 => CONNECT | CONNACK | DISCONNECT,
        0x12 | 0x13 | 0x1A | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => CONNACK,
        0x15 | 0x16 => CONNECT | CONNACK | AUTH,
        0x17 | 0x19 => CONNECT,
        0x18 => WILL,
        0x1C => CONNACK | DISCONNECT,
        0x1F => CONNACK | ACKS | SUBACK | UNSUBACK | DISCONNECT | AUTH,
        0x21 | 0x22 | 0x27 => CONNECT | CONNACK,
        0x23 => PUBLISH,
        // Every packet that has a property list.
        0x26 => Context::MAX,
        _ => return None,
    })
}

/// Whether `id` may appear more than once in `context`: User Property anywhere, Subscription
/// Identifier in PUBLISH only (3.3.2.3.8, 3.8.2.1.2).
fn may_repeat(id: u8, context: Context) -> bool {
    id == 0x26 || (id == 0x0B && context == PUBLISH)
}

/// Reads a property list (length, then properties) for `context`.
pub(crate) fn read(r: &mut Reader, context: Context) -> Result<Props, DecodeError> {
    let len = r.varint()? as usize;
    if len == 0 {
        return Ok(Props::default());
    }
    let mut list = r.sub(len)?;
    let mut props = Properties::default();
    let mut seen = 0u64;
    while !list.is_empty() {
        let id = read_id(&mut list, context)?;
        let bit = 1u64 << id;
        if seen & bit != 0 && !may_repeat(id, context) {
            return Err(DecodeError::DuplicateProperty(id));
        }
        seen |= bit;
        read_value(&mut list, id, &mut props)?;
    }
    if props.authentication_data.is_some() && props.authentication_method.is_none() {
        return Err(DecodeError::AuthDataWithoutMethod);
    }
    Ok(props.into())
}

fn read_id(r: &mut Reader, context: Context) -> Result<u8, DecodeError> {
    let id = r.varint()?;
    let contexts = allowed(id).ok_or(DecodeError::UnknownProperty(id))?;
    // `allowed` knows only identifiers up to 0x2A.
    let id = id as u8;
    if contexts & context == 0 {
        let packet_type = context.trailing_zeros() as u8;
        return Err(DecodeError::PropertyNotAllowed { id, packet_type });
    }
    Ok(id)
}

fn read_value(r: &mut Reader, id: u8, p: &mut Properties) -> Result<(), DecodeError> {
    match id {
        0x01 => p.payload_format_indicator = Some(flag(r, id)?),
        0x02 => p.message_expiry_interval = Some(r.u32()?),
        0x03 => p.content_type = Some(r.string()?),
        0x08 => p.response_topic = Some(response_topic(r)?),
        0x09 => p.correlation_data = Some(r.binary()?),
        0x0B => p.subscription_identifiers.push(nonzero(r.varint()?, id)?),
        0x11 => p.session_expiry_interval = Some(r.u32()?),
        0x12 => p.assigned_client_identifier = Some(r.string()?),
        0x13 => p.server_keep_alive = Some(r.u16()?),
        0x15 => p.authentication_method = Some(r.string()?),
        0x16 => p.authentication_data = Some(r.binary()?),
        0x17 => p.request_problem_information = Some(flag(r, id)?),
        0x18 => p.will_delay_interval = Some(r.u32()?),
        0x19 => p.request_response_information = Some(flag(r, id)?),
        0x1A => p.response_information = Some(r.string()?),
        0x1C => p.server_reference = Some(r.string()?),
        0x1F => p.reason_string = Some(r.string()?),
        0x21 => p.receive_maximum = Some(nonzero(r.u16()?, id)?),
        0x22 => p.topic_alias_maximum = Some(r.u16()?),
        0x23 => p.topic_alias = Some(nonzero(r.u16()?, id)?),
        0x24 => p.maximum_qos = Some(flag(r, id)?),
        0x25 => p.retain_available = Some(flag(r, id)?),
        0x26 => p.user_properties.push((r.string()?, r.string()?)),
        0x27 => p.maximum_packet_size = Some(nonzero(r.u32()?, id)?),
        0x28 => p.wildcard_subscription_available = Some(flag(r, id)?),
        0x29 => p.subscription_identifier_available = Some(flag(r, id)?),
        0x2A => p.shared_subscription_available = Some(flag(r, id)?),
        _ => return Err(DecodeError::UnknownProperty(u32::from(id))),
    }
    Ok(())
}

/// A byte that must be 0 or 1.
fn flag(r: &mut Reader, id: u8) -> Result<u8, DecodeError> {
    match r.u8()? {
        value @ (0 | 1) => Ok(value),
        _ => Err(DecodeError::InvalidPropertyValue(id)),
    }
}

fn nonzero<T: Default + PartialEq>(value: T, id: u8) -> Result<T, DecodeError> {
    if value == T::default() {
        Err(DecodeError::InvalidPropertyValue(id))
    } else {
        Ok(value)
    }
}

/// The Response Topic is a topic name: no wildcards [MQTT-3.3.2-14].
fn response_topic(r: &mut Reader) -> Result<MqttString, DecodeError> {
    let topic = r.string()?;
    if super::topic_syntax::validate_topic_name(topic.as_str()) {
        Ok(topic)
    } else {
        Err(DecodeError::InvalidTopicName)
    }
}

/// One property value, for the writer.
enum Value<'a> {
    Byte(u8),
    Two(u16),
    Four(u32),
    Varint(u32),
    Str(&'a MqttString),
    Bin(&'a Bytes),
    Pair(&'a MqttString, &'a MqttString),
}

impl Value<'_> {
    fn len(&self) -> usize {
        match self {
            Value::Byte(_) => 1,
            Value::Two(_) => 2,
            Value::Four(_) => 4,
            Value::Varint(v) => varint::len(*v),
            Value::Str(s) => writer::field_len(s.as_bytes()),
            Value::Bin(b) => writer::field_len(b),
            Value::Pair(k, v) => writer::field_len(k.as_bytes()) + writer::field_len(v.as_bytes()),
        }
    }

    fn write(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        match self {
            Value::Byte(v) => out.put_u8(*v),
            Value::Two(v) => out.put_u16(*v),
            Value::Four(v) => out.put_u32(*v),
            Value::Varint(v) => varint::write(*v, out),
            Value::Str(s) => writer::string(s, out)?,
            Value::Bin(b) => writer::binary(b, out)?,
            Value::Pair(k, v) => {
                writer::string(k, out)?;
                writer::string(v, out)?;
            }
        }
        Ok(())
    }
}

/// Calls `f` with every property present, in identifier order.
fn for_each<'a>(p: &'a Properties, mut f: impl FnMut(u8, Value<'a>)) {
    let mut opt = |id, value: Option<Value<'a>>| {
        if let Some(value) = value {
            f(id, value)
        }
    };
    opt(0x01, p.payload_format_indicator.map(Value::Byte));
    opt(0x02, p.message_expiry_interval.map(Value::Four));
    opt(0x03, p.content_type.as_ref().map(Value::Str));
    opt(0x08, p.response_topic.as_ref().map(Value::Str));
    opt(0x09, p.correlation_data.as_ref().map(Value::Bin));
    for id in &p.subscription_identifiers {
        opt(0x0B, Some(Value::Varint(*id)));
    }
    opt(0x11, p.session_expiry_interval.map(Value::Four));
    opt(0x12, p.assigned_client_identifier.as_ref().map(Value::Str));
    opt(0x13, p.server_keep_alive.map(Value::Two));
    opt(0x15, p.authentication_method.as_ref().map(Value::Str));
    opt(0x16, p.authentication_data.as_ref().map(Value::Bin));
    opt(0x17, p.request_problem_information.map(Value::Byte));
    opt(0x18, p.will_delay_interval.map(Value::Four));
    opt(0x19, p.request_response_information.map(Value::Byte));
    opt(0x1A, p.response_information.as_ref().map(Value::Str));
    opt(0x1C, p.server_reference.as_ref().map(Value::Str));
    opt(0x1F, p.reason_string.as_ref().map(Value::Str));
    opt(0x21, p.receive_maximum.map(Value::Two));
    opt(0x22, p.topic_alias_maximum.map(Value::Two));
    opt(0x23, p.topic_alias.map(Value::Two));
    opt(0x24, p.maximum_qos.map(Value::Byte));
    opt(0x25, p.retain_available.map(Value::Byte));
    for (key, value) in &p.user_properties {
        opt(0x26, Some(Value::Pair(key, value)));
    }
    opt(0x27, p.maximum_packet_size.map(Value::Four));
    opt(0x28, p.wildcard_subscription_available.map(Value::Byte));
    opt(0x29, p.subscription_identifier_available.map(Value::Byte));
    opt(0x2A, p.shared_subscription_available.map(Value::Byte));
}

/// Length of the property list's content (without its own length prefix).
pub(crate) fn content_len(p: &Properties) -> usize {
    let mut len = 0;
    // Identifiers are all below 0x80, so each takes one byte.
    for_each(p, |_, value| len += 1 + value.len());
    len
}

/// Length on the wire: the length prefix and the content.
pub(crate) fn len(p: &Properties) -> usize {
    let content = content_len(p);
    varint::len(u32::try_from(content).unwrap_or(u32::MAX)) + content
}

/// Checks every property present may be sent in `context` and has an encodable value.
pub(crate) fn check(p: &Properties, context: Context) -> Result<(), EncodeError> {
    let mut result = Ok(());
    for_each(p, |id, value| {
        let is_allowed = allowed(u32::from(id)).is_some_and(|c| c & context != 0);
        if result.is_ok() && !is_allowed {
            let packet_type = context.trailing_zeros() as u8;
            result = Err(EncodeError::PropertyNotAllowed { id, packet_type });
        }
        if let Value::Varint(v) = value {
            if result.is_ok() && (v == 0 || v > VARINT_MAX) {
                result = Err(EncodeError::PropertyValueOutOfRange(id));
            }
        }
    });
    result
}

/// Writes the property list (length prefix, then properties). `check` has passed.
pub(crate) fn write(p: &Properties, out: &mut BytesMut) -> Result<(), EncodeError> {
    let content = content_len(p);
    let Ok(prefix) = u32::try_from(content) else {
        return Err(EncodeError::PacketTooLarge { remaining: content });
    };
    if prefix > VARINT_MAX {
        return Err(EncodeError::PacketTooLarge { remaining: content });
    }
    varint::write(prefix, out);
    let mut result = Ok(());
    for_each(p, |id, value| {
        if result.is_ok() {
            out.put_u8(id);
            result = value.write(out);
        }
    });
    result
}

/// Reads a property list in 5.0; a 3.1.1 packet has none.
#[inline]
pub(crate) fn read_v5(r: &mut Reader, context: Context) -> Result<Props, DecodeError> {
    match r.version() {
        Version::V5 => read(r, context),
        Version::V311 => Ok(Props::default()),
    }
}

/// Length of the property list on the wire in `version` (0 in 3.1.1).
pub(crate) fn len_v5(p: &Properties, version: Version) -> usize {
    match version {
        Version::V5 => len(p),
        Version::V311 => 0,
    }
}

/// Checks and writes a property list in 5.0; 3.1.1 has none, so nothing is written (a 5.0
/// publish forwarded to a 3.1.1 subscriber loses its properties, as it must).
pub(crate) fn write_v5(
    p: &Properties,
    context: Context,
    version: Version,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    if version == Version::V5 {
        check(p, context)?;
        write(p, out)?;
    }
    Ok(())
}

/// Whether no property is present.
pub(crate) fn is_empty(p: &Properties) -> bool {
    content_len(p) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(bytes: &[u8], context: Context) -> Result<Props, DecodeError> {
        let mut r = Reader::new(Bytes::copy_from_slice(bytes), Version::V5);
        read(&mut r, context)
    }

    #[test]
    fn refuses_properties_not_allowed_for_the_packet() {
        // Topic Alias (0x23) in CONNECT.
        let got = decode(&[3, 0x23, 0, 1], CONNECT);
        assert_eq!(
            got,
            Err(DecodeError::PropertyNotAllowed {
                id: 0x23,
                packet_type: 1
            })
        );
        // Will Delay Interval only in will properties.
        assert!(decode(&[5, 0x18, 0, 0, 0, 1], PUBLISH).is_err());
        assert!(decode(&[5, 0x18, 0, 0, 0, 1], WILL).is_ok());
    }

    #[test]
    fn refuses_unknown_identifiers() {
        assert_eq!(
            decode(&[2, 0x04, 0], PUBLISH),
            Err(DecodeError::UnknownProperty(4))
        );
    }

    #[test]
    fn refuses_duplicates_except_user_property_and_publish_subscription_id() {
        let twice = [6, 0x02, 0, 0, 0, 1, 0x02];
        assert!(decode(&twice, PUBLISH).is_err());
        let twice = [10, 0x02, 0, 0, 0, 1, 0x02, 0, 0, 0, 2];
        assert_eq!(
            decode(&twice, PUBLISH),
            Err(DecodeError::DuplicateProperty(2))
        );
        let user = [10, 0x26, 0, 0, 0, 0, 0x26, 0, 0, 0, 0];
        assert_eq!(decode(&user, PUBLISH).unwrap().user_properties.len(), 2);
        let sub_ids = [4, 0x0B, 1, 0x0B, 2];
        assert_eq!(
            decode(&sub_ids, PUBLISH).unwrap().subscription_identifiers,
            [1, 2]
        );
        assert_eq!(
            decode(&sub_ids, SUBSCRIBE),
            Err(DecodeError::DuplicateProperty(0x0B))
        );
    }

    #[test]
    fn refuses_values_out_of_range() {
        let cases: [(&[u8], Context, u8); 6] = [
            (&[3, 0x21, 0, 0], CONNECT, 0x21),
            (&[5, 0x27, 0, 0, 0, 0], CONNACK, 0x27),
            (&[3, 0x23, 0, 0], PUBLISH, 0x23),
            (&[2, 0x0B, 0], SUBSCRIBE, 0x0B),
            (&[2, 0x01, 2], PUBLISH, 0x01),
            (&[2, 0x17, 7], CONNECT, 0x17),
        ];
        for (bytes, context, id) in cases {
            assert_eq!(
                decode(bytes, context),
                Err(DecodeError::InvalidPropertyValue(id))
            );
        }
        assert_eq!(
            DecodeError::InvalidPropertyValue(0x23).reason_code(),
            crate::protocol::packet::ReasonCode::TOPIC_ALIAS_INVALID
        );
    }

    #[test]
    fn refuses_auth_data_without_method_and_wildcard_response_topic() {
        let data = [3, 0x16, 0, 0];
        assert_eq!(
            decode(&data, CONNECT),
            Err(DecodeError::AuthDataWithoutMethod)
        );
        let topic = [4, 0x08, 0, 1, b'#'];
        assert_eq!(decode(&topic, PUBLISH), Err(DecodeError::InvalidTopicName));
    }

    #[test]
    fn refuses_a_list_longer_than_the_packet() {
        assert_eq!(
            decode(&[9, 0x01, 0], PUBLISH),
            Err(DecodeError::UnexpectedEnd)
        );
        assert_eq!(
            decode(&[3, 0x02, 0, 0], PUBLISH),
            Err(DecodeError::UnexpectedEnd)
        );
    }
}
