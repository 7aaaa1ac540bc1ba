//! `ringcast-bench`: an MQTT load generator that measures a broker end to end.
//!
//! A crate of its own beside the broker (a workspace member): the broker neither exports the
//! generator nor carries its dependencies (hdrhistogram), and the generator sees only what the
//! broker makes public; it uses only the sans-IO `ringcast::protocol` (codec, packet types).
//!
//! Module map:
//! - `options`: the command line, one struct.
//! - `transport`: where and how a client connects: `Endpoint` (address, TLS or not, WebSocket
//!   or not) and `Stream` (plain TCP, TLS, WebSocket), the bytes a `Conn` reads and writes.
//! - `tls`: MQTT over TLS: the rustls client configuration (--cafile, --cert/--key, --resume)
//!   and a rustls `ClientConnection` driven over a glommio socket.
//! - `websocket`: MQTT over WebSocket (--websocket): the upgrade, masked binary frames out,
//!   the broker's frames unwrapped in.
//! - `plan`: a scenario (fanout, fanin, pairs, wildcard) turned into topics, publishers and
//!   subscribers.
//! - `payload`: the sequence number and send time every message carries.
//! - `tracker`: per stream (publisher → subscriber) loss, duplicate and reorder counts.
//! - `shared`: the few counters the generator threads and the progress line share.
//! - `client`: the MQTT connections: `Conn` (handshake, queued writes, one packet at a time
//!   out of each read; the conns and retained scenarios use it too), the publisher (closed or
//!   open loop, QoS 0/1/2) and subscriber loops.
//! - `frames`: a subscriber's packets scanned in place in its read buffer (no copy of the
//!   payload, the same cost per message at any payload size).
//! - `conns`: the conns scenario: connect rate and the broker's memory per idle connection.
//! - `handshakes`: the handshakes scenario: TLS connections opened and closed as fast as the
//!   broker allows, full or resumed handshakes per second.
//! - `retained`: the retained scenario: store a large retained set, then read it back with
//!   new subscribers; the broker's memory per retained message.
//! - `run`: starts the pinned generator threads, waits, merges the results.
//! - `report`: the human table and the JSON object.
//! - `html`: the `--html` page: latency percentile plot and rates over time.
//! - `sink`: a trivial in-process forwarder, to measure the generator's own ceiling.

pub mod client;
pub mod conns;
pub mod frames;
pub mod handshakes;
pub mod html;
pub mod options;
pub mod payload;
pub mod plan;
pub mod report;
pub mod retained;
pub mod run;
pub mod shared;
pub mod sink;
pub mod tls;
pub mod tracker;
pub mod transport;
pub mod websocket;
