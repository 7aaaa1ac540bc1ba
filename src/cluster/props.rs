//! MQTT 5.0 properties of a message crossing nodes, as one NATS header (`Rc-Props`).
//!
//! Carried: Payload Format Indicator, Message Expiry Interval (the time left when the message
//! leaves, so it keeps counting down), Content Type, Response Topic, Correlation Data and User
//! Properties (order kept). Not carried: Topic Alias and Subscription Identifiers, which belong
//! to each hop, and nothing that is not a PUBLISH property.
//!
//! The value is `1:` (the format's version) followed by the PUBLISH property list exactly as
//! MQTT 5.0 writes it (length prefix, then properties), in unpadded URL-safe base64: header
//! values are text and Correlation Data is binary. A message without any carried property has
//! no header, so the common publish costs one branch. The payload stays the NATS payload,
//! untouched, so it is shared as it arrives.

use crate::protocol::codec::{read_publish_properties, write_publish_properties};
use crate::protocol::{Properties, Props};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::{Bytes, BytesMut};
use std::time::Instant;

/// The header's name.
pub const HEADER: &str = "Rc-Props";
/// The prefix of the format this node writes, and the only one it reads.
const VERSION_PREFIX: &str = "1:";

/// The header value carrying `props` of a message that expires at `expires_at`; None when no
/// carried property is present; `Expired` when the message has expired by `now` (it is not
/// forwarded).
pub fn encode(
    props: &Props,
    expires_at: Option<Instant>,
    now: Instant,
) -> Result<Option<String>, Expired> {
    let left = match expires_at {
        Some(at) if at <= now => return Err(Expired),
        // Rounded up, as a delivery to a local client is: time left is never announced as none.
        Some(at) => Some(at.duration_since(now).as_millis().div_ceil(1000).max(1)),
        None => None,
    };
    // The fast path: a publish that never had a property (every 3.1.1 one, most 5.0 ones).
    if props.is_unset() && left.is_none() {
        return Ok(None);
    }
    let carried = Properties {
        payload_format_indicator: props.payload_format_indicator,
        message_expiry_interval: left.map(|secs| secs.min(u32::MAX as u128) as u32),
        content_type: props.content_type.clone(),
        response_topic: props.response_topic.clone(),
        correlation_data: props.correlation_data.clone(),
        user_properties: props.user_properties.clone(),
        ..Properties::default()
    };
    if carried == Properties::default() {
        return Ok(None);
    }
    let mut list = BytesMut::new();
    // Every carried property is one a PUBLISH may hold, with the value the codec read: the
    // write fails only for a list past MQTT's own size limit, which no packet could carry.
    if write_publish_properties(&carried, &mut list).is_err() {
        return Ok(None);
    }
    let mut value = String::with_capacity(VERSION_PREFIX.len() + list.len() * 4 / 3 + 4);
    value.push_str(VERSION_PREFIX);
    URL_SAFE_NO_PAD.encode_string(&list, &mut value);
    Ok(Some(value))
}

/// The message had expired before it could leave: it is not forwarded [MQTT-3.3.2-5].
#[derive(Debug, PartialEq, Eq)]
pub struct Expired;

/// The properties a header value carries, or why it cannot be read (the message is refused).
pub fn decode(value: &str) -> Result<Props, String> {
    let Some(encoded) = value.strip_prefix(VERSION_PREFIX) else {
        let version = value.split(':').next().unwrap_or_default();
        return Err(format!("unknown {HEADER} format {version:?}"));
    };
    let list = URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|e| format!("{HEADER} is not base64: {e}"))?;
    let props = read_publish_properties(Bytes::from(list)).map_err(|e| format!("{HEADER}: {e}"))?;
    // A node writes neither; another writer's would be wrong on this hop.
    if props.topic_alias.is_some() || !props.subscription_identifiers.is_empty() {
        return Err(format!("{HEADER} carries a per-hop property"));
    }
    Ok(props)
}

#[cfg(test)]
mod tests;
