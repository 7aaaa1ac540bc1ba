//! Bridges (`[[bridge]]`): connections this broker makes to another MQTT broker, and the topic
//! rules that say what crosses them, written as mosquitto writes them.
//!
//! A rule is one string: `pattern [direction [qos [local-prefix remote-prefix]]]`, e.g.
//! `"sensors/# out 1"` or `"cmd/# in 1 local/ remote/"`. As in mosquitto, the topic on this
//! broker is `local-prefix + pattern` and the topic on the remote is `remote-prefix + pattern`;
//! a message crossing keeps the part after its prefix and swaps the prefix. `""` stands for an
//! empty pattern or prefix (the prefix is then the whole topic).

use crate::protocol::topic::{check_filter, filter_matches};
use crate::protocol::QoS;
use serde::Deserialize;
use std::path::PathBuf;

/// One `[[bridge]]` as configured.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BridgeConfig {
    /// Names the bridge in `$SYS`, logs and the default client id.
    pub name: String,
    /// The remote broker, `host:port`.
    pub address: String,
    /// TLS toward the remote; plain TCP without.
    #[serde(default)]
    pub tls: Option<BridgeTls>,
    /// User name given to the remote.
    #[serde(default)]
    pub username: Option<String>,
    /// Password given to the remote.
    #[serde(default)]
    pub password: Option<String>,
    /// Client id at the remote; absent: `<hostname>.<name>`, as mosquitto.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Whether the remote drops the bridge's session when it disconnects. mosquitto's
    /// `cleansession` defaults to false, so the remote queues QoS 1 messages for the bridge
    /// while it is away; the same here.
    #[serde(default)]
    pub clean_session: bool,
    /// Keep-alive toward the remote, seconds (mosquitto's `keepalive_interval`, 60).
    #[serde(default = "default_keep_alive")]
    pub keep_alive_secs: u16,
    /// MQTT version spoken to the remote: "3.1.1" or "5".
    #[serde(default)]
    pub protocol_version: BridgeVersion,
    /// Topic rules, mosquitto syntax, one string each.
    pub topic: Vec<TopicRule>,
    /// Messages for the remote held while it is unreachable or has not acknowledged them.
    #[serde(default = "default_queue_messages")]
    pub queue_messages_max: usize,
    /// Payload bytes held for the remote, likewise.
    #[serde(default = "default_queue_bytes")]
    pub queue_bytes_max: usize,
    /// First wait before reconnecting, milliseconds; doubles per failure up to the maximum,
    /// with jitter.
    #[serde(default = "default_reconnect_min")]
    pub reconnect_min_ms: u64,
    /// Longest wait before reconnecting, milliseconds.
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max_ms: u64,
}

fn default_keep_alive() -> u16 {
    60
}
fn default_queue_messages() -> usize {
    10_000
}
fn default_queue_bytes() -> usize {
    16 << 20
}
fn default_reconnect_min() -> u64 {
    500
}
fn default_reconnect_max() -> u64 {
    30_000
}

/// TLS toward the remote (`[bridge.tls]`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BridgeTls {
    /// CA certificates the remote's certificate must chain to, PEM.
    pub ca_file: PathBuf,
    /// Our client certificate chain, PEM, when the remote asks for one.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// Its private key, PEM.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// The name the remote's certificate must carry; absent: the host part of `address`.
    #[serde(default)]
    pub server_name: Option<String>,
}

/// The MQTT version a bridge speaks to its remote.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
pub enum BridgeVersion {
    /// 3.1.1, with mosquitto's bridge bit (protocol level 0x84) so a mosquitto remote does not
    /// send the bridge's own messages back.
    #[serde(rename = "3.1.1")]
    V311,
    /// 5.0, whose No Local keeps the bridge's own messages from coming back.
    #[default]
    #[serde(rename = "5")]
    V5,
}

/// Which way a rule carries messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Remote to local.
    In,
    /// Local to remote.
    Out,
    /// Both ways.
    Both,
}

impl Direction {
    /// Whether messages come in from the remote under this rule.
    pub fn is_in(self) -> bool {
        matches!(self, Direction::In | Direction::Both)
    }

    /// Whether messages go out to the remote under this rule.
    pub fn is_out(self) -> bool {
        matches!(self, Direction::Out | Direction::Both)
    }
}

/// One topic rule, parsed.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct TopicRule {
    /// The pattern (may be empty when a prefix gives the whole topic).
    pub pattern: String,
    /// Which way.
    pub direction: Direction,
    /// Highest QoS used on either side (0 or 1).
    pub qos: QoS,
    /// Prefix of the topic on this broker.
    pub local_prefix: String,
    /// Prefix of the topic on the remote.
    pub remote_prefix: String,
}

impl TryFrom<String> for TopicRule {
    type Error = String;

    fn try_from(text: String) -> Result<TopicRule, String> {
        TopicRule::parse(&text)
    }
}

impl TopicRule {
    /// Parses `pattern [in|out|both [qos [local-prefix remote-prefix]]]`; direction defaults
    /// to out and QoS to 0, as in mosquitto. The error is one sentence naming the rule.
    pub fn parse(text: &str) -> Result<TopicRule, String> {
        let bad = |why: &str| format!("bridge topic rule `{text}`: {why}");
        let words: Vec<&str> = text.split_whitespace().map(unquote_empty).collect();
        if words.is_empty() || words.len() > 5 || words.len() == 4 {
            return Err(bad(
                "write `pattern [in|out|both [qos [local-prefix remote-prefix]]]`",
            ));
        }
        let direction = match words.get(1).copied().unwrap_or("out") {
            "in" => Direction::In,
            "out" => Direction::Out,
            "both" => Direction::Both,
            _ => return Err(bad("the direction must be in, out or both")),
        };
        let qos = match words.get(2).copied().unwrap_or("0") {
            "0" => QoS::AtMostOnce,
            "1" => QoS::AtLeastOnce,
            "2" => return Err(bad("QoS 2 across a bridge is not supported; use 0 or 1")),
            _ => return Err(bad("the QoS must be 0 or 1")),
        };
        let rule = TopicRule {
            pattern: words[0].to_string(),
            direction,
            qos,
            local_prefix: words.get(3).unwrap_or(&"").to_string(),
            remote_prefix: words.get(4).unwrap_or(&"").to_string(),
        };
        rule.check().map_err(|why| bad(&why))?;
        Ok(rule)
    }

    /// The filter this rule covers on this broker.
    pub fn local_filter(&self) -> String {
        format!("{}{}", self.local_prefix, self.pattern)
    }

    /// The filter this rule covers on the remote.
    pub fn remote_filter(&self) -> String {
        format!("{}{}", self.remote_prefix, self.pattern)
    }

    /// The local topic for a remote one this rule covers (None: not this rule's).
    pub fn to_local(&self, remote_topic: &str) -> Option<String> {
        let rest = remote_topic.strip_prefix(self.remote_prefix.as_str())?;
        filter_matches(&self.remote_filter(), remote_topic)
            .then(|| format!("{}{rest}", self.local_prefix))
    }

    /// The remote topic for a local one this rule covers (None: not this rule's).
    pub fn to_remote(&self, local_topic: &str) -> Option<String> {
        let rest = local_topic.strip_prefix(self.local_prefix.as_str())?;
        filter_matches(&self.local_filter(), local_topic)
            .then(|| format!("{}{rest}", self.remote_prefix))
    }

    /// Both filters are valid and prefixes hold no wildcard (as mosquitto checks).
    fn check(&self) -> Result<(), String> {
        for prefix in [&self.local_prefix, &self.remote_prefix] {
            if prefix.contains(['+', '#']) {
                return Err(format!("the prefix `{prefix}` must not contain + or #"));
            }
        }
        if self.pattern.is_empty() && self.local_prefix.is_empty() {
            return Err("an empty pattern needs prefixes that name the topic".to_string());
        }
        for filter in [self.local_filter(), self.remote_filter()] {
            if check_filter(&filter).is_err() || filter.starts_with("$share/") {
                return Err(format!("`{filter}` is not a valid topic filter"));
            }
        }
        Ok(())
    }
}

/// mosquitto writes an empty pattern or prefix as `""`.
fn unquote_empty(word: &str) -> &str {
    if word == "\"\"" {
        ""
    } else {
        word
    }
}

/// Checks a bridge's settings that the types alone cannot; one sentence when wrong.
pub fn validate(bridges: &[BridgeConfig]) -> Result<(), String> {
    let mut names = std::collections::HashSet::new();
    for b in bridges {
        let name = &b.name;
        if name.is_empty() || name.contains(['/', '+', '#']) {
            return Err(format!(
                "bridge name `{name}` must be non-empty, without / + #"
            ));
        }
        if !names.insert(name) {
            return Err(format!("two bridges are named `{name}`; names must differ"));
        }
        if b.address
            .rsplit_once(':')
            .is_none_or(|(_, p)| p.parse::<u16>().is_err())
        {
            return Err(format!(
                "bridge `{name}`: address `{}` must be host:port",
                b.address
            ));
        }
        if b.topic.is_empty() {
            return Err(format!("bridge `{name}` needs at least one `topic` rule"));
        }
        if b.queue_messages_max == 0 || b.queue_bytes_max == 0 {
            return Err(format!(
                "bridge `{name}`: `queue_messages_max` and `queue_bytes_max` must be at least 1"
            ));
        }
        if b.reconnect_min_ms == 0 || b.reconnect_max_ms < b.reconnect_min_ms {
            return Err(format!("bridge `{name}`: `reconnect_min_ms` must be at least 1 and at most `reconnect_max_ms`"));
        }
        if b.password.is_some() && b.username.is_none() {
            return Err(format!("bridge `{name}`: a `password` needs a `username`"));
        }
        if let Some(tls) = &b.tls {
            if tls.cert_file.is_some() != tls.key_file.is_some() {
                return Err(format!(
                    "bridge `{name}`: `tls.cert_file` and `tls.key_file` go together"
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_with_defaults_is_out_qos_0() {
        let rule = TopicRule::parse("sensors/#").unwrap();
        assert_eq!(rule.direction, Direction::Out);
        assert_eq!(rule.qos, QoS::AtMostOnce);
        assert_eq!(rule.local_filter(), "sensors/#");
        assert_eq!(rule.remote_filter(), "sensors/#");
    }

    #[test]
    fn prefixes_swap_as_mosquitto_does() {
        let rule = TopicRule::parse("cmd/# in 1 local/ remote/").unwrap();
        assert_eq!(rule.direction, Direction::In);
        assert_eq!(rule.qos, QoS::AtLeastOnce);
        assert_eq!(rule.remote_filter(), "remote/cmd/#");
        assert_eq!(rule.local_filter(), "local/cmd/#");
        assert_eq!(rule.to_local("remote/cmd/a/b").unwrap(), "local/cmd/a/b");
        assert_eq!(rule.to_remote("local/cmd/x").unwrap(), "remote/cmd/x");
        assert_eq!(rule.to_local("cmd/a"), None);
        assert_eq!(rule.to_local("remote/other"), None);
    }

    #[test]
    fn empty_pattern_maps_one_topic_to_another() {
        let rule = TopicRule::parse("\"\" both 0 here/status there/status").unwrap();
        assert_eq!(rule.to_local("there/status").unwrap(), "here/status");
        assert_eq!(rule.to_remote("here/status").unwrap(), "there/status");
        assert_eq!(rule.to_remote("here/status/x"), None);
    }

    #[test]
    fn empty_prefix_is_written_as_two_quotes() {
        let rule = TopicRule::parse("a/+ out 1 \"\" up/").unwrap();
        assert_eq!(rule.to_remote("a/b").unwrap(), "up/a/b");
    }

    #[test]
    fn bad_rules_are_refused_with_one_sentence() {
        for (text, says) in [
            ("", "write `pattern"),
            ("a/# sideways", "in, out or both"),
            ("a/# in 3", "QoS must be 0 or 1"),
            ("a/# in 2", "QoS 2"),
            ("a/# in 1 only-local/", "write `pattern"),
            ("a/#/b in 1", "not a valid topic filter"),
            ("a in 1 l/+/ r/", "must not contain"),
            ("a in 1 l/ r/ extra", "write `pattern"),
        ] {
            let err = TopicRule::parse(text).unwrap_err();
            assert!(err.contains(says), "{text:?} gave {err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn bridge_table_parses_and_rules_are_checked_at_load() {
        let text = "[[bridge]]\nname = \"up\"\naddress = \"127.0.0.1:1883\"\n\
                    topic = [\"sensors/# out 1\", \"cmd/# in 1 local/ remote/\"]\n";
        let config = crate::config::Config::from_toml(text).unwrap();
        let b = &config.bridge[0];
        assert!(
            !b.clean_session,
            "mosquitto's cleansession default is false"
        );
        assert_eq!(b.protocol_version, BridgeVersion::V5);
        assert_eq!(b.topic.len(), 2);
        config.validate().unwrap();
        let bad = text.replace("out 1", "out 7");
        let err = crate::config::Config::from_toml(&bad).unwrap_err();
        assert!(err.0.contains("QoS must be 0 or 1"), "{}", err.0);
    }

    #[test]
    fn bridge_settings_are_validated() {
        let mut b: BridgeConfig = toml::from_str(
            "name = \"x\"\naddress = \"h:1\"\ntopic = [\"a\"]\nprotocol_version = \"3.1.1\"",
        )
        .unwrap();
        assert_eq!(b.protocol_version, BridgeVersion::V311);
        validate(std::slice::from_ref(&b)).unwrap();
        assert!(validate(&[b.clone(), b.clone()])
            .unwrap_err()
            .contains("two bridges"));
        b.address = "nohost".into();
        assert!(validate(&[b.clone()]).unwrap_err().contains("host:port"));
        b.address = "h:1".into();
        b.password = Some("secret".into());
        assert!(validate(&[b.clone()])
            .unwrap_err()
            .contains("needs a `username`"));
        b.password = None;
        b.topic.clear();
        assert!(validate(&[b]).unwrap_err().contains("at least one"));
    }
}
