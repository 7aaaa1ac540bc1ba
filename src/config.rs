//! Typed configuration and limits, validated at start-up.
//!
//! The same keys come from the embedded defaults, a hardware profile (`--profile`), a config
//! file (`--config`) and command-line flags, later ones overriding earlier ones.

pub mod bridge;
pub mod cluster;
pub mod listener;
pub mod reload;

pub use bridge::{BridgeConfig, BridgeTls, BridgeVersion, Direction, TopicRule};
pub use cluster::ClusterConfig;
pub use listener::{Listener, ListenerConfig, Protocol, TlsSettings};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Most shards a broker runs: a shard is one bit of the `u64` sets of shards that routing
/// keeps per topic.
pub const SHARDS_MAX: usize = 64;

/// Everything the broker can be told. Unknown keys are refused so a typo is never ignored.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Addresses to accept plain MQTT on (`--listen`); each is a listener with the
    /// top-level settings.
    pub listen: Vec<SocketAddr>,
    /// Addresses to accept MQTT over WebSocket and HTTP on (`--ws-listen`), path `/mqtt`;
    /// each is a listener with the top-level settings.
    pub ws_listen: Vec<SocketAddr>,
    /// Listeners with their own settings (`[[listener]]`); with none and no `listen`, the
    /// broker listens on loopback only (see `listener`). Not serialized: a reload compares
    /// listeners whole (`reload::changes`).
    #[serde(skip_serializing)]
    pub listener: Vec<ListenerConfig>,
    /// mosquitto-format password file (`mosquitto_passwd` or `ringcast passwd` write it).
    pub password_file: Option<PathBuf>,
    /// mosquitto-format ACL file.
    pub acl_file: Option<PathBuf>,
    /// Whether clients without credentials are accepted on listeners that do not say;
    /// absent: only when there is no password file.
    pub allow_anonymous: Option<bool>,
    /// CPUs to pin shards to; empty means every online CPU.
    pub cpus: Vec<usize>,
    /// Number of shards, at most `SHARDS_MAX`; 0 means one per CPU in `cpus`.
    pub shards: usize,
    /// Log level: error, warn, info, debug or trace.
    pub log_level: String,
    /// Log format: `text` (colour only on a terminal) or `json` (one object per line).
    pub log_format: String,
    /// Users of the password file who may use the HTTP endpoints (metrics, API, dashboard);
    /// with a password file and none listed, every HTTP request is refused.
    pub http_users: Vec<String>,
    /// Protocol limits.
    pub limits: Limits,
    /// Cross-shard ring tuning.
    pub mesh: MeshConfig,
    /// Broker-wide memory ceiling for queued messages.
    pub backpressure: Backpressure,
    /// Seconds between `$SYS/broker/...` updates; 0 turns them off.
    pub sys_interval_secs: u64,
    /// Connections to other MQTT brokers (`[[bridge]]`, see `bridge`). Not serialized: a
    /// reload compares bridges whole (`reload::changes`).
    #[serde(skip_serializing)]
    pub bridge: Vec<BridgeConfig>,
    /// Cluster over NATS (`[cluster]`); off without `nats`. Not serialized: a reload
    /// compares it whole (`reload::changes`).
    #[serde(skip_serializing)]
    pub cluster: ClusterConfig,
    /// What survives a restart or a crash (`[persistence]`).
    pub persistence: Persistence,
}

/// Durability: each shard's log and snapshot in `dir`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Persistence {
    /// Whether retained messages, persistent sessions and their QoS 1/2 messages are stored.
    pub enabled: bool,
    /// The data directory (created; locked while the broker runs).
    pub dir: PathBuf,
    /// When acknowledged records reach the disk.
    pub fsync: FsyncMode,
    /// Under `fsync = "interval"`: milliseconds between syncs.
    pub fsync_interval_ms: u64,
    /// Drop bad records in the middle of a file instead of refusing to start (`--repair`).
    pub repair: bool,
}

/// When acknowledged records reach the disk.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FsyncMode {
    /// Acknowledgements wait for fdatasync.
    Always,
    /// Acknowledgements wait for the write; synced every `fsync_interval_ms`.
    Interval,
    /// Written, never synced.
    Never,
}

impl Default for Persistence {
    fn default() -> Persistence {
        Persistence {
            enabled: true,
            dir: PathBuf::from("./ringcast-data"),
            fsync: FsyncMode::Interval,
            fsync_interval_ms: 1000,
            repair: false,
        }
    }
}

/// Bounds on what one client may ask of the broker.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest packet accepted from a client, in bytes (whole packet).
    pub packet_size_max: u32,
    /// Most concurrent client connections per broker.
    pub connections_max: usize,
    /// Outbound QoS 1/2 messages awaiting acknowledgement per session. It has to cover a round
    /// trip at the rate a subscriber is served, or the broker waits for PUBACKs with nothing
    /// to send; an MQTT 5 client narrows it with its Receive Maximum.
    pub inflight_max: u16,
    /// Messages queued per session beyond the inflight window (online or offline).
    pub queue_messages_max: usize,
    /// Payload bytes queued per session (online or offline).
    pub queue_bytes_max: usize,
    /// Subscriptions one session may hold.
    pub subscriptions_max: usize,
    /// Longest topic name or filter, in bytes.
    pub topic_bytes_max: usize,
    /// Most levels in a topic name or filter.
    pub topic_levels_max: usize,
    /// Seconds to wait for CONNECT after a TCP connection opens.
    pub connect_timeout_secs: u64,
    /// Largest keep-alive a client may use; 0 means no limit.
    pub keep_alive_max_secs: u16,
    /// 5.0 Receive Maximum announced to clients: inbound QoS 2 messages a client may leave
    /// unreleased at once.
    pub receive_max: u16,
    /// 5.0 Topic Alias Maximum announced to clients: inbound topic aliases per connection.
    pub topic_alias_max: u16,
    /// Bytes read from one connection before yielding to others in the same loop turn, a
    /// packet counting as at most 32 bytes (so a turn holds as many messages whatever their
    /// size), and at most 8 times this in real bytes.
    pub read_bytes_per_turn: usize,
    /// Messages delivered to this shard's subscribers on behalf of one connection before it
    /// yields in the same loop turn: a fan-out publisher's work is its deliveries, not its
    /// bytes, and yielding lets the writers flush (so subscribers start reading) sooner.
    pub deliveries_per_turn: usize,
    /// Bytes of socket writes kept waiting per connection before new QoS 0 messages are dropped.
    pub write_buffer_bytes_max: usize,
    /// Bytes (written or queued) a subscriber may lag before its publishers are paused, as long
    /// as it keeps reading; they go on once it is below half of this. Below
    /// `write_buffer_bytes_max` and `queue_bytes_max`.
    pub write_buffer_pause_bytes: usize,
    /// A subscriber past `write_buffer_pause_bytes` that takes nothing from its socket for this
    /// long is stuck: it stops pausing publishers and its own bounds and policies apply.
    pub subscriber_stall_ms: u64,
    /// What to drop when a QoS 0 message meets a full subscriber.
    pub qos0_overflow: Qos0Overflow,
    /// What to do when a QoS 1/2 message meets a full subscriber queue.
    pub qos12_overflow: Qos12Overflow,
    /// Under `qos12_overflow = "disconnect"`: seconds a subscriber may stay over its bound.
    pub slow_subscriber_secs: u64,
}

/// Policy for a QoS 0 message when the subscriber's bound is hit.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Qos0Overflow {
    /// Keep what is queued; the new message is dropped.
    DropNewest,
    /// Drop the oldest QoS 0 message not yet started on the wire to make room.
    DropOldest,
}

/// Policy for a QoS 1/2 message when the subscriber's queue is full.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Qos12Overflow {
    /// Drop the new message and count it.
    Drop,
    /// Drop and count, and close the subscriber's connection once it has been over its bound
    /// for `slow_subscriber_secs`.
    Disconnect,
}

/// The broker-wide bound on bytes held for subscribers (write buffers and session queues).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Backpressure {
    /// Above this many queued bytes (all shards together; each shard holds its share) the
    /// broker stops reading PUBLISH packets from its clients and its rings.
    pub memory_ceiling_bytes: usize,
    /// Reading resumes once queued bytes fall below this low-water mark.
    pub memory_resume_bytes: usize,
}

impl Default for Backpressure {
    fn default() -> Backpressure {
        Backpressure {
            memory_ceiling_bytes: 256 << 20,
            memory_resume_bytes: 192 << 20,
        }
    }
}

/// Tuning of the rings between shards.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MeshConfig {
    /// Messages each ring between two shards holds before the producer waits; unset, as many
    /// as `ring_capacity_for` gives the shard count.
    pub ring_capacity: Option<usize>,
}

/// Messages a shard's rings toward the other shards hold together, by default.
const RING_SLOTS_PER_SHARD: usize = 8192;

/// The fewest messages a ring holds by default, however many shards there are.
const RING_CAPACITY_MIN: usize = 1024;

impl MeshConfig {
    /// Messages each ring holds with `shards` shards: `ring_capacity`, or by default a
    /// shard's `RING_SLOTS_PER_SHARD` shared among its rings, at least `RING_CAPACITY_MIN`
    /// each. Few shards get long rings: in a storm of connections every CONNECT's claim and
    /// every SUBSCRIBE's announcement crosses to another shard, and while a ring is full each
    /// waits in an allocation of its own; thousands of those, freed between the sessions made
    /// meanwhile, left the heap full of holes (two shards on one CPU, 19,000 connections at
    /// once: 2,070-2,608 bytes per connection with rings of 1,024, ~1,970 with 8,192, and the
    /// storm connected ~25% faster). Many shards have many rings (a ring of 8,192 messages
    /// is ~0.8 MB), so theirs stay at the minimum.
    pub fn ring_capacity_for(&self, shards: usize) -> usize {
        self.ring_capacity.unwrap_or_else(|| {
            let rings = shards.saturating_sub(1).max(1);
            (RING_SLOTS_PER_SHARD / rings).max(RING_CAPACITY_MIN)
        })
    }
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: Vec::new(),
            ws_listen: Vec::new(),
            listener: Vec::new(),
            password_file: None,
            acl_file: None,
            allow_anonymous: None,
            cpus: Vec::new(),
            shards: 0,
            log_level: "info".to_string(),
            log_format: "text".to_string(),
            http_users: Vec::new(),
            limits: Limits::default(),
            mesh: MeshConfig::default(),
            backpressure: Backpressure::default(),
            sys_interval_secs: 10,
            bridge: Vec::new(),
            cluster: ClusterConfig::default(),
            persistence: Persistence::default(),
        }
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            packet_size_max: 1 << 20,
            connections_max: 100_000,
            inflight_max: 500,
            queue_messages_max: 1_000,
            queue_bytes_max: 16 << 20,
            subscriptions_max: 1_000,
            topic_bytes_max: 1024,
            topic_levels_max: 32,
            connect_timeout_secs: 10,
            keep_alive_max_secs: 0,
            receive_max: 64,
            topic_alias_max: 64,
            read_bytes_per_turn: 16 << 10,
            deliveries_per_turn: 128 << 10,
            write_buffer_bytes_max: 4 << 20,
            write_buffer_pause_bytes: 256 << 10,
            subscriber_stall_ms: 500,
            qos0_overflow: Qos0Overflow::DropNewest,
            qos12_overflow: Qos12Overflow::Drop,
            slow_subscriber_secs: 10,
        }
    }
}

/// Why a configuration was refused, as one sentence for the operator.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Parses TOML text holding any subset of the keys.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text)
            .map_err(|e| ConfigError(format!("bad config: {}", e.message().trim_end_matches('.'))))
    }

    /// Checks relations between values that the types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |msg: &str| Err(ConfigError(format!("bad config: {msg}")));
        if self.shards > SHARDS_MAX {
            return bad(&format!(
                "`shards` must be at most {SHARDS_MAX} (got {})",
                self.shards
            ));
        }
        if let Err(e) = self.cluster.validate() {
            return bad(&e);
        }
        let p = &self.persistence;
        if p.enabled && p.fsync == FsyncMode::Interval && p.fsync_interval_ms == 0 {
            return bad("`persistence.fsync_interval_ms` must be at least 1");
        }
        let l = &self.limits;
        if l.packet_size_max < 64 || l.packet_size_max > 268_435_460 {
            return bad("`limits.packet_size_max` must be between 64 and 268435460 bytes");
        }
        if l.receive_max == 0 {
            return bad("`limits.receive_max` must be at least 1 (MQTT 5.0 forbids 0)");
        }
        if l.inflight_max == 0 {
            return bad("`limits.inflight_max` must be at least 1");
        }
        if l.queue_messages_max == 0 || l.queue_bytes_max == 0 {
            return bad(
                "`limits.queue_messages_max` and `limits.queue_bytes_max` must be at least 1",
            );
        }
        if l.read_bytes_per_turn < 4096 {
            return bad("`limits.read_bytes_per_turn` must be at least 4096");
        }
        if l.deliveries_per_turn == 0 {
            return bad("`limits.deliveries_per_turn` must be at least 1");
        }
        if l.write_buffer_pause_bytes == 0
            || l.write_buffer_pause_bytes >= l.write_buffer_bytes_max
            || l.write_buffer_pause_bytes >= l.queue_bytes_max
        {
            return bad("`limits.write_buffer_pause_bytes` must be at least 1 and below both `limits.write_buffer_bytes_max` and `limits.queue_bytes_max`");
        }
        if l.subscriber_stall_ms == 0 {
            return bad("`limits.subscriber_stall_ms` must be at least 1");
        }
        let b = &self.backpressure;
        if b.memory_resume_bytes >= b.memory_ceiling_bytes {
            return bad("`backpressure.memory_resume_bytes` must be below `backpressure.memory_ceiling_bytes`");
        }
        if b.memory_ceiling_bytes < l.write_buffer_bytes_max.saturating_mul(2) {
            return bad("`backpressure.memory_ceiling_bytes` must be at least twice `limits.write_buffer_bytes_max`, so one stuck subscriber cannot hold the ceiling");
        }
        if self.mesh.ring_capacity.is_some_and(|c| c < 16) {
            return bad("`mesh.ring_capacity` must be at least 16");
        }
        if !["error", "warn", "info", "debug", "trace"].contains(&self.log_level.as_str()) {
            return bad("`log_level` must be one of error, warn, info, debug, trace");
        }
        if !["text", "json"].contains(&self.log_format.as_str()) {
            return bad("`log_format` must be `text` or `json`");
        }
        if !self.http_users.is_empty() && self.password_file.is_none() {
            return bad("`http_users` needs a `password_file` to check their passwords against");
        }
        self.validate_listeners()?;
        bridge::validate(&self.bridge).map_err(|e| ConfigError(format!("bad config: {e}")))
    }
}

/// Builds a config from the defaults and TOML files applied in order: a later file's keys
/// override an earlier one's, table by table, so a config file can change one limit of a
/// profile without repeating the rest.
pub fn load_layers(paths: &[&std::path::PathBuf]) -> Result<Config, ConfigError> {
    let mut merged = toml::Table::new();
    for path in paths {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError(format!(
                "cannot read {}: {e}; check the path and permissions",
                path.display()
            ))
        })?;
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            ConfigError(format!("{}: bad TOML: {}", path.display(), e.message()))
        })?;
        merge(&mut merged, table);
    }
    let config: Config = toml::Value::Table(merged)
        .try_into()
        .map_err(|e: toml::de::Error| ConfigError(format!("bad config: {}", e.message())))?;
    Ok(config)
}

fn merge(into: &mut toml::Table, from: toml::Table) {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}

/// Parses a CPU list such as `0,1` or `0-3,6`.
pub fn parse_cpu_list(text: &str) -> Result<Vec<usize>, ConfigError> {
    let bad = || {
        ConfigError(format!(
            "bad CPU list `{text}`: use numbers and ranges such as 0,1 or 0-3"
        ))
    };
    let mut cpus = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((lo, hi)) => {
                let lo: usize = lo.trim().parse().map_err(|_| bad())?;
                let hi: usize = hi.trim().parse().map_err(|_| bad())?;
                if lo > hi {
                    return Err(bad());
                }
                cpus.extend(lo..=hi);
            }
            None => cpus.push(part.parse().map_err(|_| bad())?),
        }
    }
    if cpus.is_empty() {
        return Err(bad());
    }
    cpus.dedup();
    Ok(cpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_listen_on_loopback_1883_and_8083() {
        let config = Config::default();
        config.validate().unwrap();
        let listeners = config.listeners();
        assert_eq!(listeners.len(), 3, "127.0.0.1 and ::1, then WebSocket");
        for l in &listeners[..2] {
            assert!(l.address.ip().is_loopback() && l.address.port() == 1883);
            assert!(l.allow_anonymous && l.tls.is_none());
            assert_eq!(l.protocol, Protocol::Mqtt);
        }
        let ws = &listeners[2];
        assert_eq!(ws.address, "127.0.0.1:8083".parse().unwrap());
        assert_eq!(
            (ws.protocol, ws.path.as_str()),
            (Protocol::Websocket, "/mqtt")
        );
        assert!(ws.allow_anonymous && ws.http_api);
    }

    #[test]
    fn unknown_key_is_refused() {
        let err = Config::from_toml("lisen = [\"127.0.0.1:1\"]").unwrap_err();
        assert!(err.0.contains("lisen"), "{}", err.0);
    }

    #[test]
    fn partial_file_keeps_other_defaults() {
        let config = Config::from_toml("[limits]\ninflight_max = 7\n").unwrap();
        assert_eq!(config.limits.inflight_max, 7);
        assert_eq!(
            config.limits.queue_messages_max,
            Limits::default().queue_messages_max
        );
    }

    #[test]
    fn overflow_policies_parse_and_ceiling_is_checked() {
        let text = "[limits]\nqos0_overflow = \"drop_oldest\"\nqos12_overflow = \"disconnect\"\n";
        let config = Config::from_toml(text).unwrap();
        assert_eq!(config.limits.qos0_overflow, Qos0Overflow::DropOldest);
        assert_eq!(config.limits.qos12_overflow, Qos12Overflow::Disconnect);
        assert!(Config::from_toml("[limits]\nqos0_overflow = \"drop_all\"\n").is_err());
        let mut config = Config::default();
        config.backpressure.memory_resume_bytes = config.backpressure.memory_ceiling_bytes;
        assert!(config.validate().is_err());
        let mut config = Config::default();
        config.limits.write_buffer_pause_bytes = config.limits.write_buffer_bytes_max;
        assert!(config.validate().is_err());
    }

    #[test]
    fn default_profile_matches_the_built_in_defaults() {
        let profile = Config::from_toml(include_str!("../hw-profiles/default.toml")).unwrap();
        profile.validate().unwrap();
        let defaults = Config::default();
        assert_eq!(profile.limits, defaults.limits);
        assert_eq!(profile.backpressure, defaults.backpressure);
        assert_eq!(profile.sys_interval_secs, defaults.sys_interval_secs);
        assert_eq!(profile.mesh, defaults.mesh);
    }

    #[test]
    fn rings_share_a_shards_slots_by_default_and_a_set_capacity_wins() {
        let default = MeshConfig::default();
        let by_shards: Vec<usize> = [2, 3, 5, 9, 64]
            .into_iter()
            .map(|shards| default.ring_capacity_for(shards))
            .collect();
        assert_eq!(by_shards, [8192, 4096, 2048, 1024, 1024]);
        let set = MeshConfig {
            ring_capacity: Some(16),
        };
        assert_eq!(set.ring_capacity_for(2), 16);
        let toml = Config::from_toml("[mesh]\nring_capacity = 2048\n").unwrap();
        assert_eq!(toml.mesh.ring_capacity, Some(2048));
    }

    #[test]
    fn shards_are_at_most_64() {
        let at_limit = Config {
            shards: SHARDS_MAX,
            ..Config::default()
        };
        at_limit.validate().unwrap();
        let over = Config {
            shards: SHARDS_MAX + 1,
            ..Config::default()
        };
        let err = over.validate().unwrap_err();
        assert_eq!(err.0, "bad config: `shards` must be at most 64 (got 65)");
    }

    #[test]
    fn cpu_lists_parse() {
        assert_eq!(parse_cpu_list("0,1").unwrap(), vec![0, 1]);
        assert_eq!(parse_cpu_list("0-3").unwrap(), vec![0, 1, 2, 3]);
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("x").is_err());
    }
}
