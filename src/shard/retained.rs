//! Retained messages. Every shard keeps a replica of all of them (the payloads are shared
//! `Bytes`, so a replica costs only the index), so a subscribe is answered from local memory
//! without asking other shards.

use super::trie::Trie;
use super::Message;
use std::collections::HashMap;

/// The retained message of each topic that has one.
#[derive(Default)]
pub struct Retained {
    by_topic: HashMap<String, Message>,
}

impl Retained {
    /// Stores `message` for `topic`, or clears the topic when its payload is empty
    /// [MQTT-3.3.1-10], [MQTT-3.3.1-11].
    pub fn set(&mut self, topic: &str, message: Option<Message>) {
        match message {
            Some(p) if !p.publish.payload.is_empty() => {
                self.by_topic.insert(topic.to_string(), p);
            }
            _ => {
                self.by_topic.remove(topic);
            }
        }
    }

    /// Number of retained messages.
    pub fn len(&self) -> usize {
        self.by_topic.len()
    }

    /// Whether none is retained.
    pub fn is_empty(&self) -> bool {
        self.by_topic.is_empty()
    }

    /// Calls `visit` with every retained message whose topic matches `filter`.
    pub fn for_each_match(&self, filter: &str, mut visit: impl FnMut(&Message)) {
        let mut one = Trie::new();
        one.insert(filter, 0u8, ());
        for (topic, message) in &self.by_topic {
            if one.has_match(topic) {
                visit(message);
            }
        }
    }
}
