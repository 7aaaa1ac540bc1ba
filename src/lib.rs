//! ringcast: a thread-per-core MQTT 3.1.1 / 5.0 broker built for high fan-out.
//!
//! Crate map, one line per module:
//! - `protocol`: sans-IO packets, codec, topics and session state (no sockets, no glommio).
//! - `shard`: what one core owns outright, starting with its local subscription trie.

pub mod protocol;
pub mod shard;
