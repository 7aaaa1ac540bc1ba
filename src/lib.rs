//! ringcast: a thread-per-core MQTT 3.1.1 / 5.0 broker built for high fan-out.
//!
//! Crate map, one line per module:
//! - `protocol`: sans-IO packets, codec and topics (no sockets, no glommio, no clocks).
//! - `cluster`: several nodes sharing one topic space over NATS (the NATS thread, subjects).
//! - `config`: typed configuration and limits, validated at start-up.
//! - `host`: start-up checks of io_uring, RLIMIT_MEMLOCK and the listen ports.
//! - `server`: starts one pinned glommio executor per shard and stops them.
//! - `shard`: what one core owns: sessions, subscription trie, interest, retained messages,
//!   routing, shared subscriptions, takeover, backpressure, `$SYS` (its own module map lists
//!   one line per submodule).
//! - `mesh`: messages between shards over bounded SPSC rings.
//! - `net`: the only socket code: accept and place, read packets, write outboxes.
//! - `ops`: what operators see over HTTP: Prometheus metrics, the JSON API, the dashboard.
//! - `metrics`: per-shard counters and the board shard 0 sums for `$SYS`.
//! - `security`: who may connect: mosquitto-compatible password files (read, check, write).
//! - `bridge`: connections to other MQTT brokers (`[[bridge]]`), carrying messages both ways.
//! - `store`: durable storage per shard: checksummed append-only log, snapshots, recovery (what the
//!   records mean is `shard::persist`'s).

pub mod bridge;
pub mod cluster;
pub mod config;
pub mod host;
pub mod mesh;
pub mod metrics;
pub mod net;
pub mod ops;
pub mod protocol;
pub mod security;
pub mod server;
pub mod shard;
pub mod store;
