//! A PUBLISH as the broker routes it: the packet, shared by every subscriber, plus what
//! routing needs beside it (the publisher, for No Local; the expiry deadline).

use crate::protocol::{MqttString, Publish};
use bytes::Bytes;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A PUBLISH as the broker routes it: the packet plus what routing needs beside it.
#[derive(Clone, Debug)]
pub struct Message {
    /// The PUBLISH as received (topic alias resolved), shared by all its subscribers.
    pub publish: Arc<Publish>,
    /// Connection token of the publisher, for No Local; 0 for none.
    pub origin: u64,
    /// When its Message Expiry Interval runs out, counted from receipt.
    pub expires_at: Option<Instant>,
}

impl Message {
    /// A message received now from connection `origin`.
    pub fn received(publish: Publish, origin: u64) -> Message {
        let expires_at = publish
            .properties
            .message_expiry_interval
            .map(|secs| Instant::now() + Duration::from_secs(secs as u64));
        Message {
            publish: Arc::new(publish),
            origin,
            expires_at,
        }
    }

    /// Whether its Message Expiry Interval has run out.
    pub fn is_expired(&self) -> bool {
        self.expires_at.is_some_and(|t| t <= Instant::now())
    }

    /// The message as the retained store keeps it: topic and payload copied out of the read
    /// buffer they were sliced from, so a retained message held for months does not keep a
    /// 16 KiB buffer alive. Done once, on the publisher's shard; every replica shares it.
    pub fn to_stored(&self) -> Message {
        let mut publish = Publish::clone(&self.publish);
        publish.topic = MqttString::from_str_checked(self.publish.topic.as_str())
            .unwrap_or_else(|| self.publish.topic.clone());
        publish.payload = Bytes::copy_from_slice(&self.publish.payload);
        publish.dup = false;
        Message {
            publish: Arc::new(publish),
            origin: self.origin,
            expires_at: self.expires_at,
        }
    }
}
