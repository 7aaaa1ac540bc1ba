//! Listeners: where the broker accepts connections, over what, and who may connect there.
//!
//! Secure by default, as mosquitto 2.0: with no listener configured the broker listens on
//! loopback only (MQTT on 127.0.0.1:1883 and [::1]:1883, WebSocket and HTTP on
//! 127.0.0.1:8083) and accepts anonymous clients there; a WebSocket listener serves browser
//! pages of its own origin and loopback ones only, unless `allowed_origins` names others. Once any listener is given
//! (`--listen`, `--ws-listen` or `[[listener]]`) only those open, so a broker never holds a
//! port it was not asked for (tests start many brokers side by side on ephemeral ports). A
//! listener on any other address must say who may connect — a password file, client
//! certificates, or `allow_anonymous = true` to accept anyone knowingly — or the broker
//! refuses to start.

use super::{Config, ConfigError};
use serde::Deserialize;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

/// The port MQTT listens on by default.
pub const MQTT_PORT: u16 = 1883;
/// The port MQTT over WebSocket (and HTTP) listens on by default, as EMQX's.
pub const WEBSOCKET_PORT: u16 = 8083;
/// The HTTP path a WebSocket listener upgrades on by default.
pub const WEBSOCKET_PATH: &str = "/mqtt";

/// One `[[listener]]` as configured (mosquitto's names, with underscores).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Address and port to accept on.
    pub address: SocketAddr,
    /// The protocol spoken there.
    #[serde(default)]
    pub protocol: Protocol,
    /// Whether clients without credentials are accepted; when absent, the top-level
    /// `allow_anonymous`, else true only when no password file is configured.
    #[serde(default)]
    pub allow_anonymous: Option<bool>,
    /// TLS settings; plain TCP without (on a WebSocket listener: `wss://`).
    #[serde(default)]
    pub tls: Option<TlsSettings>,
    /// The HTTP path a WebSocket listener upgrades on; default `/mqtt`.
    #[serde(default)]
    pub path: Option<String>,
    /// Whether a WebSocket listener answers plain HTTP requests (the operator endpoints);
    /// default true.
    #[serde(default)]
    pub http_api: Option<bool>,
    /// Web origins whose pages may use a WebSocket listener besides its own and loopback
    /// ones (`"https://app.example.com"`, or `"*"` for any).
    #[serde(default)]
    pub allowed_origins: Option<Vec<String>>,
}

impl ListenerConfig {
    /// A listener on `address` speaking `protocol`, everything else by default.
    pub fn new(address: SocketAddr, protocol: Protocol) -> ListenerConfig {
        ListenerConfig {
            address,
            protocol,
            allow_anonymous: None,
            tls: None,
            path: None,
            http_api: None,
            allowed_origins: None,
        }
    }
}

/// What a listener speaks.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// MQTT over TCP (or TLS).
    #[default]
    Mqtt,
    /// MQTT over WebSocket (or over TLS: `wss://`), and plain HTTP on the same port.
    Websocket,
}

/// A TLS listener's settings (`[listener.tls]`, mosquitto's names).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// The server's certificate chain, PEM.
    pub cert_file: PathBuf,
    /// The server's private key, PEM.
    pub key_file: PathBuf,
    /// CA certificates that sign client certificates, PEM; without it no client certificate
    /// is asked for.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Certificate revocation lists for client certificates, PEM.
    #[serde(default)]
    pub crl_file: Option<PathBuf>,
    /// Whether a client must present a certificate signed by `ca_file`.
    #[serde(default)]
    pub require_certificate: bool,
    /// Whether the client certificate's Common Name becomes the username.
    #[serde(default)]
    pub use_identity_as_username: bool,
}

/// A listener with every default resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct Listener {
    /// Address and port to accept on.
    pub address: SocketAddr,
    /// The protocol spoken there.
    pub protocol: Protocol,
    /// Whether clients without credentials are accepted.
    pub allow_anonymous: bool,
    /// TLS settings; plain TCP without.
    pub tls: Option<TlsSettings>,
    /// Whether this is one of the loopback listeners used when none is configured (a host
    /// without IPv6 skips [::1] instead of failing).
    pub is_default: bool,
    /// The HTTP path a WebSocket listener upgrades on.
    pub path: String,
    /// Whether a WebSocket listener answers plain HTTP requests.
    pub http_api: bool,
    /// Web origins whose pages may use a WebSocket listener besides its own and loopback ones.
    pub allowed_origins: Vec<String>,
}

impl Config {
    /// The listeners to open: the configured `[[listener]]`s, `listen` addresses (plain MQTT)
    /// and `ws_listen` addresses (WebSocket), or the loopback defaults when there are none.
    pub fn listeners(&self) -> Vec<Listener> {
        let plain = self
            .listen
            .iter()
            .map(|&address| ListenerConfig::new(address, Protocol::Mqtt));
        let websocket = self
            .ws_listen
            .iter()
            .map(|&address| ListenerConfig::new(address, Protocol::Websocket));
        let configured: Vec<ListenerConfig> = self
            .listener
            .iter()
            .cloned()
            .chain(plain)
            .chain(websocket)
            .collect();
        let is_default = configured.is_empty();
        let configured = if is_default {
            default_listeners()
        } else {
            configured
        };
        configured
            .into_iter()
            .map(|l| Listener {
                allow_anonymous: l
                    .allow_anonymous
                    .unwrap_or_else(|| self.default_allow_anonymous()),
                address: l.address,
                protocol: l.protocol,
                tls: l.tls,
                is_default,
                path: l.path.unwrap_or_else(|| WEBSOCKET_PATH.to_string()),
                http_api: l.http_api.unwrap_or(true),
                allowed_origins: l.allowed_origins.unwrap_or_default(),
            })
            .collect()
    }

    /// Anonymous clients are accepted unless a password file says who may connect.
    fn default_allow_anonymous(&self) -> bool {
        self.allow_anonymous.unwrap_or(self.password_file.is_none())
    }

    /// Refuses a listener open to anyone on the network that did not say so knowingly.
    pub(super) fn validate_listeners(&self) -> Result<(), ConfigError> {
        let explicit = |address: SocketAddr| {
            self.listener
                .iter()
                .find(|l| l.address == address)
                .and_then(|l| l.allow_anonymous)
                .or(self.allow_anonymous)
                == Some(true)
        };
        for listener in self.listeners() {
            let has_client_certs = listener.tls.as_ref().is_some_and(|t| t.require_certificate);
            let is_guarded = self.password_file.is_some() || has_client_certs;
            if !listener.address.ip().is_loopback() && !is_guarded && !explicit(listener.address) {
                return Err(ConfigError(format!(
                    "bad config: the listener on {} would accept anyone on the network; set \
                     password_file, or require client certificates in [listener.tls], or set \
                     allow_anonymous = true (--allow-anonymous) to accept that knowingly",
                    listener.address
                )));
            }
            self.validate_websocket(&listener)?;
            if let Some(tls) = &listener.tls {
                if tls.require_certificate && tls.ca_file.is_none() {
                    return Err(ConfigError(format!(
                        "bad config: the listener on {} requires client certificates but has no ca_file to check them against",
                        listener.address
                    )));
                }
            }
        }
        Ok(())
    }
}

impl Config {
    /// Refuses WebSocket settings on an MQTT listener (they would be ignored) and a path that
    /// is not one.
    fn validate_websocket(&self, listener: &Listener) -> Result<(), ConfigError> {
        let misplaced = self.listener.iter().find(|l| {
            let has_ws_keys =
                l.path.is_some() || l.http_api.is_some() || l.allowed_origins.is_some();
            l.protocol == Protocol::Mqtt && has_ws_keys
        });
        if let Some(l) = misplaced {
            return Err(ConfigError(format!(
                "bad config: the listener on {} sets path, http_api or allowed_origins, which only a listener with protocol = \"websocket\" has",
                l.address
            )));
        }
        if !listener.path.starts_with('/') || listener.path.contains(['?', '#', ' ']) {
            return Err(ConfigError(format!(
                "bad config: the listener on {} has path {:?}; a path starts with / and has no ?, # or space",
                listener.address, listener.path
            )));
        }
        Ok(())
    }
}

/// Loopback only: MQTT on 127.0.0.1 and [::1] port 1883, WebSocket and HTTP on 127.0.0.1
/// port 8083.
fn default_listeners() -> Vec<ListenerConfig> {
    let mqtt = [
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ]
    .map(|ip| ListenerConfig::new(SocketAddr::new(ip, MQTT_PORT), Protocol::Mqtt));
    let websocket = ListenerConfig::new(
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), WEBSOCKET_PORT),
        Protocol::Websocket,
    );
    mqtt.into_iter().chain([websocket]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::from_toml(text).unwrap()
    }

    #[test]
    fn a_listener_open_to_the_network_must_say_who_may_connect() {
        let open = config("listen = [\"0.0.0.0:1883\"]");
        let error = open.validate().unwrap_err().to_string();
        assert!(error.contains("allow_anonymous = true"), "{error}");
        let knowingly = config("listen = [\"0.0.0.0:1883\"]\nallow_anonymous = true");
        knowingly.validate().unwrap();
        let passwords = config("listen = [\"0.0.0.0:1883\"]\npassword_file = \"pw\"");
        passwords.validate().unwrap();
        assert!(!passwords.listeners()[0].allow_anonymous);
        let loopback = config("listen = [\"127.0.0.1:1883\"]");
        loopback.validate().unwrap();
        assert!(loopback.listeners()[0].allow_anonymous);
    }

    #[test]
    fn listeners_have_their_own_settings() {
        let c = config(
            r#"
            password_file = "pw"
            [[listener]]
            address = "0.0.0.0:8883"
            [listener.tls]
            cert_file = "server.pem"
            key_file = "server.key"
            ca_file = "ca.pem"
            require_certificate = true
            use_identity_as_username = true
            [[listener]]
            address = "127.0.0.1:1883"
            allow_anonymous = true
            "#,
        );
        c.validate().unwrap();
        let listeners = c.listeners();
        assert_eq!(listeners.len(), 2);
        let tls = listeners[0].tls.as_ref().unwrap();
        assert!(tls.require_certificate && tls.use_identity_as_username);
        assert!(
            !listeners[0].allow_anonymous,
            "a password file means credentials"
        );
        assert!(listeners[1].allow_anonymous);
    }

    #[test]
    fn client_certificates_need_a_ca_file() {
        let c = config(
            r#"
            [[listener]]
            address = "127.0.0.1:8883"
            [listener.tls]
            cert_file = "server.pem"
            key_file = "server.key"
            require_certificate = true
            "#,
        );
        let error = c.validate().unwrap_err().to_string();
        assert!(error.contains("ca_file"), "{error}");
    }

    #[test]
    fn unknown_listener_keys_and_protocols_are_refused() {
        assert!(Config::from_toml("[[listener]]\naddress = \"127.0.0.1:1\"\nport = 1").is_err());
        let gopher = "[[listener]]\naddress = \"127.0.0.1:1\"\nprotocol = \"gopher\"";
        assert!(Config::from_toml(gopher).is_err());
    }

    #[test]
    fn websocket_listeners_default_to_path_mqtt_with_http() {
        let c = config(
            r#"
            [[listener]]
            address = "127.0.0.1:9001"
            protocol = "websocket"
            [[listener]]
            address = "127.0.0.1:9002"
            protocol = "websocket"
            path = "/ws"
            http_api = false
            "#,
        );
        c.validate().unwrap();
        let listeners = c.listeners();
        assert_eq!(listeners[0].protocol, Protocol::Websocket);
        assert_eq!(listeners[0].path, "/mqtt");
        assert!(listeners[0].http_api);
        assert_eq!(listeners[1].path, "/ws");
        assert!(!listeners[1].http_api);
    }

    #[test]
    fn websocket_keys_on_an_mqtt_listener_or_a_bad_path_are_refused() {
        let on_mqtt = config("[[listener]]\naddress = \"127.0.0.1:1\"\npath = \"/mqtt\"");
        let error = on_mqtt.validate().unwrap_err().to_string();
        assert!(error.contains("protocol = \"websocket\""), "{error}");
        let bad_path = config(
            "[[listener]]\naddress = \"127.0.0.1:1\"\nprotocol = \"websocket\"\npath = \"mqtt\"",
        );
        let error = bad_path.validate().unwrap_err().to_string();
        assert!(error.contains("starts with /"), "{error}");
    }

    #[test]
    fn any_listener_given_replaces_every_default() {
        let c = Config {
            ws_listen: vec!["127.0.0.1:0".parse().unwrap()],
            ..Config::default()
        };
        let listeners = c.listeners();
        assert_eq!(listeners.len(), 1, "no default 1883 or 8083 beside it");
        assert_eq!(listeners[0].protocol, Protocol::Websocket);
        let c = Config {
            listen: vec!["127.0.0.1:0".parse().unwrap()],
            ..Config::default()
        };
        assert_eq!(c.listeners().len(), 1, "no default 8083 beside --listen");
    }
}
