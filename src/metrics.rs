//! Per-shard counters. Each shard owns its own (no atomics on the hot path).

use std::cell::Cell;

/// Counters of one shard.
#[derive(Default, Debug)]
pub struct Metrics {
    /// PUBLISH packets received from clients of this shard.
    pub messages_received: Cell<u64>,
    /// PUBLISH deliveries offered to sessions of this shard.
    pub messages_sent: Cell<u64>,
    /// Connections currently open on this shard.
    pub connections: Cell<u64>,
}
