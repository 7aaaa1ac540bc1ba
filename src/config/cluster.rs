//! `[cluster]`: the NATS servers and this node's name. Without `nats`, the broker is one node
//! and nothing of the cluster runs.

use serde::Deserialize;

/// `[cluster]`: several ringcast nodes sharing one topic space over NATS (see docs/SCALING.md).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// NATS server URLs (`nats://127.0.0.1:4222`); the client connects to one and moves to
    /// another when it fails. Empty: no cluster.
    pub nats: Vec<String>,
    /// This node's name, unique in the cluster: it marks what this node wrote to the shared
    /// key-value buckets (retained messages, client-id owners).
    pub node: String,
    /// Messages waiting between the shards and the NATS thread, each way; a full queue makes
    /// publishers wait (toward NATS) or NATS reads wait (toward the shards).
    pub queue_messages_max: usize,
    /// Copies NATS keeps of the shared key-value buckets (at most the NATS servers there are).
    pub kv_replicas: usize,
}

impl Default for ClusterConfig {
    fn default() -> ClusterConfig {
        ClusterConfig {
            nats: Vec::new(),
            node: String::new(),
            queue_messages_max: 4096,
            kv_replicas: 1,
        }
    }
}

impl ClusterConfig {
    /// Whether this broker is a cluster node.
    pub fn is_enabled(&self) -> bool {
        !self.nats.is_empty()
    }

    /// Checks the section; the error is one sentence.
    pub fn validate(&self) -> Result<(), String> {
        if !self.is_enabled() {
            return Ok(());
        }
        let is_plain = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'-';
        if self.node.is_empty() || self.node.len() > 64 || !self.node.bytes().all(is_plain) {
            return Err(
                "`cluster.node` must be a name of 1 to 64 letters, digits, `_` and `-`".into(),
            );
        }
        if !(1..=5).contains(&self.kv_replicas) {
            return Err("`cluster.kv_replicas` must be between 1 and 5".into());
        }
        if self.queue_messages_max == 0 {
            return Err("`cluster.queue_messages_max` must be at least 1".into());
        }
        if let Some(url) = self.nats.iter().find(|u| !u.starts_with("nats://")) {
            return Err(format!(
                "`cluster.nats` entries must be nats:// URLs (got {url:?})"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str) -> ClusterConfig {
        ClusterConfig {
            nats: vec!["nats://127.0.0.1:4222".into()],
            node: name.into(),
            ..ClusterConfig::default()
        }
    }

    #[test]
    fn without_nats_the_cluster_is_off_and_anything_else_is_ignored() {
        let off = ClusterConfig::default();
        assert!(!off.is_enabled());
        assert_eq!(off.validate(), Ok(()));
    }

    #[test]
    fn node_names_are_checked_at_their_limits() {
        assert_eq!(node("a").validate(), Ok(()));
        assert_eq!(node(&"n".repeat(64)).validate(), Ok(()));
        for bad in ["", "a.b", "a b", "é", &"n".repeat(65)] {
            assert!(node(bad).validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn replicas_queue_and_urls_are_checked() {
        let mut c = node("a");
        c.kv_replicas = 0;
        assert!(c.validate().is_err());
        c.kv_replicas = 6;
        assert!(c.validate().is_err());
        c.kv_replicas = 5;
        assert_eq!(c.validate(), Ok(()));
        c.queue_messages_max = 0;
        assert!(c.validate().is_err());
        let mut c = node("a");
        c.nats.push("127.0.0.1:4222".into());
        assert!(c.validate().unwrap_err().contains("nats://"));
    }
}
