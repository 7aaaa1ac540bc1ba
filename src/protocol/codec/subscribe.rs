//! SUBSCRIBE (3.8): a packet id, properties (5.0), then filters with their options.

use bytes::{BufMut, BytesMut};

use super::error::{DecodeError, EncodeError};
use super::fixed_header::packet_type::SUBSCRIBE;
use super::properties;
use super::reader::Reader;
use super::topic_syntax::check_subscription_filter;
use super::writer;
use crate::protocol::packet::{QoS, Subscribe, SubscribeFilter, SubscriptionOptions, Version};
use crate::protocol::topic::split_shared;

/// Reads a SUBSCRIBE body.
pub(crate) fn read(r: &mut Reader) -> Result<Subscribe, DecodeError> {
    let pkid = r.packet_id()?;
    let properties = properties::read_v5(r, properties::context(SUBSCRIBE))?;
    let mut filters = Vec::new();
    while !r.is_empty() {
        filters.push(read_filter(r)?);
    }
    // At least one filter [MQTT-3.8.3-2] (3.1.1: MQTT-3.8.3-3).
    if filters.is_empty() {
        return Err(DecodeError::NoTopicFilters);
    }
    Ok(Subscribe {
        pkid,
        filters,
        properties,
    })
}

fn read_filter(r: &mut Reader) -> Result<SubscribeFilter, DecodeError> {
    let filter = r.string()?;
    check_subscription_filter(filter.as_str())?;
    let options = read_options(r.u8()?, r.version())?;
    if options.no_local && split_shared(filter.as_str()).is_some() {
        // No Local on a shared subscription is a Protocol Error [MQTT-3.8.3-4].
        return Err(DecodeError::NoLocalOnSharedSubscription);
    }
    Ok(SubscribeFilter { filter, options })
}

/// Subscription Options (3.8.3.1); 3.1.1 has only the QoS bits [MQTT-3-8.3-4].
fn read_options(byte: u8, version: Version) -> Result<SubscriptionOptions, DecodeError> {
    let reserved = match version {
        Version::V311 => 0b1111_1100,
        Version::V5 => 0b1100_0000,
    };
    if byte & reserved != 0 {
        return Err(DecodeError::InvalidSubscriptionOptions);
    }
    let qos = QoS::from_bits(byte & 0b11).ok_or(DecodeError::InvalidQoS)?;
    let retain_handling = (byte >> 4) & 0b11;
    if retain_handling == 3 {
        return Err(DecodeError::InvalidRetainHandling);
    }
    Ok(SubscriptionOptions {
        qos,
        no_local: byte & 0b0100 != 0,
        retain_as_published: byte & 0b1000 != 0,
        retain_handling,
    })
}

fn options_byte(o: &SubscriptionOptions, version: Version) -> u8 {
    let qos = o.qos as u8;
    match version {
        Version::V311 => qos,
        Version::V5 => {
            qos | u8::from(o.no_local) << 2
                | u8::from(o.retain_as_published) << 3
                | (o.retain_handling & 0b11) << 4
        }
    }
}

/// The Remaining Length of `s` in `version`.
pub(crate) fn len(s: &Subscribe, version: Version) -> usize {
    let filters: usize = s.filters.iter().map(|f| 2 + f.filter.len() + 1).sum();
    2 + properties::len_v5(&s.properties, version) + filters
}

/// Writes the body of `s`.
pub(crate) fn write(
    s: &Subscribe,
    version: Version,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    out.put_u16(s.pkid);
    properties::write_v5(&s.properties, properties::context(SUBSCRIBE), version, out)?;
    for f in &s.filters {
        writer::string(&f.filter, out)?;
        out.put_u8(options_byte(&f.options, version));
    }
    Ok(())
}
