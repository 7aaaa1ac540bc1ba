//! What SIGHUP changes: the limits that apply to new connections are swapped in for the
//! shards to pick up at their next connection (`LiveLimits`); every other changed key is
//! named as needing a restart (`changes`).

use super::{Config, Limits};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Keys a reload applies without a restart: each is read once per connection, when it
/// starts (its CONNECT rules and packet size), so open connections keep the old value.
pub const LIVE_KEYS: [&str; 9] = [
    "limits.packet_size_max",
    "limits.connections_max",
    "limits.subscriptions_max",
    "limits.topic_bytes_max",
    "limits.topic_levels_max",
    "limits.connect_timeout_secs",
    "limits.keep_alive_max_secs",
    "limits.receive_max",
    "limits.topic_alias_max",
];

/// What a reload found changed, as `key: old → new`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Changes applied to new connections.
    pub applied: Vec<String>,
    /// Changes that take effect only after a restart.
    pub need_restart: Vec<String>,
}

/// What differs between the running config and the one read again.
pub fn changes(old: &Config, new: &Config) -> Changes {
    let (before, after) = (flatten(old), flatten(new));
    let mut out = Changes::default();
    let keys: std::collections::BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    for key in keys {
        let (was, now) = (before.get(key), after.get(key));
        if was == now {
            continue;
        }
        let none = "(unset)".to_string();
        let line = format!("{key}: {} → {}", was.unwrap_or(&none), now.unwrap_or(&none));
        if LIVE_KEYS.contains(&key.as_str()) {
            out.applied.push(line);
        } else {
            out.need_restart.push(line);
        }
    }
    // Listeners are compared whole: any change to them needs a restart.
    if old.listener != new.listener {
        out.need_restart.push("listener: changed".to_string());
    }
    if old.bridge != new.bridge {
        out.need_restart.push("bridge: changed".to_string());
    }
    if old.cluster != new.cluster {
        out.need_restart.push("cluster: changed".to_string());
    }
    out
}

/// `new` with only the live keys taken from it: what the shards run with after a reload.
pub fn live_limits(running: &Limits, new: &Limits) -> Limits {
    Limits {
        packet_size_max: new.packet_size_max,
        connections_max: new.connections_max,
        subscriptions_max: new.subscriptions_max,
        topic_bytes_max: new.topic_bytes_max,
        topic_levels_max: new.topic_levels_max,
        connect_timeout_secs: new.connect_timeout_secs,
        keep_alive_max_secs: new.keep_alive_max_secs,
        receive_max: new.receive_max,
        topic_alias_max: new.topic_alias_max,
        ..running.clone()
    }
}

/// Every key of `config` (but the listeners) as `section.key` → value.
fn flatten(config: &Config) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Ok(toml::Value::Table(table)) = toml::Value::try_from(config) {
        flatten_into("", &table, &mut out);
    }
    out
}

fn flatten_into(prefix: &str, table: &toml::Table, out: &mut BTreeMap<String, String>) {
    for (key, value) in table {
        let name = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            toml::Value::Table(inner) => flatten_into(&name, inner, out),
            other => {
                out.insert(name, other.to_string());
            }
        }
    }
}

/// The limits new connections get, replaced as a whole on reload; shards look at the
/// generation (one atomic load) when a connection starts, as for the security tables.
pub struct LiveLimits {
    current: Mutex<Arc<Limits>>,
    generation: AtomicU64,
}

impl LiveLimits {
    /// Starts with `limits`.
    pub fn new(limits: Limits) -> LiveLimits {
        LiveLimits {
            current: Mutex::new(Arc::new(limits)),
            generation: AtomicU64::new(0),
        }
    }

    /// The limits now.
    pub fn current(&self) -> Arc<Limits> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the limits.
    pub fn replace(&self, limits: Limits) {
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(limits);
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Updates `limits` if a reload happened since generation `seen`; returns the generation.
    pub fn refresh(&self, seen: u64, limits: &mut Arc<Limits>) -> u64 {
        let now = self.generation.load(Ordering::Acquire);
        if now != seen {
            *limits = self.current();
        }
        now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_limits_are_applied_and_the_rest_named_as_needing_a_restart() {
        let old = Config::default();
        let mut new = Config::default();
        new.limits.receive_max = 10;
        new.limits.queue_messages_max = 7;
        new.shards = 3;
        let changes = changes(&old, &new);
        assert_eq!(
            changes.applied,
            [format!(
                "limits.receive_max: {} → 10",
                old.limits.receive_max
            )]
        );
        assert_eq!(
            changes.need_restart,
            [
                format!(
                    "limits.queue_messages_max: {} → 7",
                    old.limits.queue_messages_max
                ),
                "shards: 0 → 3".to_string()
            ]
        );
        let live = live_limits(&old.limits, &new.limits);
        assert_eq!(live.receive_max, 10);
        assert_eq!(live.queue_messages_max, old.limits.queue_messages_max);
    }

    #[test]
    fn no_change_is_no_change() {
        assert_eq!(
            changes(&Config::default(), &Config::default()),
            Changes::default()
        );
    }

    #[test]
    fn a_reload_is_seen_through_the_generation() {
        let live = LiveLimits::new(Limits::default());
        let mut mine = live.current();
        let seen = live.refresh(0, &mut mine);
        let new = Limits {
            receive_max: 5,
            ..Limits::default()
        };
        live.replace(new);
        let seen_now = live.refresh(seen, &mut mine);
        assert_ne!(seen, seen_now);
        assert_eq!(mine.receive_max, 5);
    }
}
