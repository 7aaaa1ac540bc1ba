//! `ringcast-bench`: an MQTT load generator that measures a broker end to end.
//!
//! Module map:
//! - `options`: the command line, one struct.
//! - `plan`: a scenario (fanout, fanin, pairs) turned into topics, publishers and subscribers.
//! - `payload`: the sequence number and send time every message carries.
//! - `tracker`: per stream (publisher → subscriber) loss, duplicate and reorder counts.
//! - `shared`: the few counters the generator threads and the progress line share.
//! - `client`: the MQTT connections: handshake, publisher and subscriber loops.
//! - `run`: starts the pinned generator threads, waits, merges the results.
//! - `report`: the human table and the JSON object.
//! - `sink`: a trivial in-process forwarder, to measure the generator's own ceiling.

pub mod client;
pub mod options;
pub mod payload;
pub mod plan;
pub mod report;
pub mod run;
pub mod shared;
pub mod sink;
pub mod tracker;
