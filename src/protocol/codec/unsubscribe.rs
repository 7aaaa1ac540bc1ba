//! UNSUBSCRIBE (3.10): a packet id, properties (5.0), then at least one topic filter.

use bytes::{BufMut, BytesMut};

use super::error::{DecodeError, EncodeError};
use super::fixed_header::packet_type::UNSUBSCRIBE;
use super::properties;
use super::reader::Reader;
use super::topic_syntax::check_subscription_filter;
use super::writer;
use crate::protocol::packet::{Unsubscribe, Version};

/// Reads an UNSUBSCRIBE body.
pub(crate) fn read(r: &mut Reader) -> Result<Unsubscribe, DecodeError> {
    let pkid = r.packet_id()?;
    let properties = properties::read_v5(r, properties::context(UNSUBSCRIBE))?;
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = r.string()?;
        check_subscription_filter(filter.as_str())?;
        filters.push(filter);
    }
    // At least one filter [MQTT-3.10.3-2].
    if filters.is_empty() {
        return Err(DecodeError::NoTopicFilters);
    }
    Ok(Unsubscribe {
        pkid,
        filters,
        properties,
    })
}

/// The Remaining Length of `u` in `version`.
pub(crate) fn len(u: &Unsubscribe, version: Version) -> usize {
    let filters: usize = u.filters.iter().map(|f| 2 + f.len()).sum();
    2 + properties::len_v5(&u.properties, version) + filters
}

/// Writes the body of `u`.
pub(crate) fn write(
    u: &Unsubscribe,
    version: Version,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    out.put_u16(u.pkid);
    properties::write_v5(
        &u.properties,
        properties::context(UNSUBSCRIBE),
        version,
        out,
    )?;
    for filter in &u.filters {
        writer::string(filter, out)?;
    }
    Ok(())
}
