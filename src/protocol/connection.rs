//! The per-connection protocol machine: every rule MQTT sets for one client connection, with no
//! socket, no executor and no clock (time is a parameter), in the spirit of quinn-proto.
//!
//! The socket task reads and decodes packets and hands each to `Connection::handle` with the
//! time it was read; the machine answers with one `Action`: a packet to send, a message to
//! route, subscriptions to apply, acknowledgements for the session, or a close with a reason.
//! Where a rule needs a fact only the broker has (is the server full, was this QoS 2 packet id
//! already received, how many subscriptions does the session hold, did a subscription exist,
//! did anyone subscribe), the socket task asks the broker and passes the answer back through
//! a method named after the fact (`qos2_recorded`, `check_filter`, `routed`, ...), and the
//! machine decides.
//!
//! Rules here: CONNECT (client identifiers, persistence, enhanced authentication method, the
//! CONNACK and its server properties), keep-alive and the CONNECT timeout, inbound topic
//! aliases, topic limits, payload format, inbound QoS 2 and Receive Maximum, SUBSCRIBE policy
//! (filter limits, quota, Retain Handling), UNSUBACK, DISCONNECT and session expiry, protocol
//! errors, and the reason codes and Reason Strings of all of them.

use super::auth;
use super::codec::DecodeError;
use super::topic::SHARE_PREFIX;
use super::{
    connack_v3, Ack, ConnAck, Connect, Disconnect, MqttString, Packet, Properties, Props, Publish,
    QoS, ReasonCode, SubAck, SubscriptionOptions, UnsubAck, Version, Will,
};
use crate::config::Limits;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the client of a connection allows the broker to send it (5.0 CONNECT properties;
/// 3.1.1 clients get the defaults, which allow everything).
#[derive(Clone, Copy, Debug)]
pub struct PeerLimits {
    /// Receive Maximum: QoS 1/2 PUBLISHes unacknowledged at once.
    pub receive_max: u16,
    /// Maximum Packet Size, in bytes.
    pub packet_size_max: u32,
    /// Topic Alias Maximum: 0 means no outbound topic aliases.
    pub topic_alias_max: u16,
}

impl Default for PeerLimits {
    fn default() -> PeerLimits {
        PeerLimits {
            receive_max: u16::MAX,
            packet_size_max: u32::MAX,
            topic_alias_max: 0,
        }
    }
}

/// What the broker knows of a client when its CONNECT arrives.
#[derive(Clone, Copy, Debug, Default)]
pub struct Admission {
    /// The broker is over its connection limit.
    pub is_server_full: bool,
    /// Why the credentials (or certificate) do not admit the client on this listener.
    pub refusal: Option<Refusal>,
}

/// Why a login is refused; the codes are those mosquitto 2.0 answers with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Wrong password, unknown user, anonymous where not allowed: 3.1.1 0x05, 5.0 0x87.
    NotAuthorized,
    /// No username to log in with where one is needed (a client certificate without a Common
    /// Name under use_identity_as_username): 3.1.1 0x04, 5.0 0x86.
    BadCredentials,
}

/// An accepted CONNECT: what the broker needs to claim the client id and make the session.
#[derive(Debug)]
pub struct Accepted {
    /// The client identifier (assigned by the server when the client sent none).
    pub client_id: String,
    /// Clean Start (3.1.1: Clean Session).
    pub clean_start: bool,
    /// Whether the session outlives the connection.
    pub is_persistent: bool,
    /// Session Expiry Interval in seconds (5.0; 0 for 3.1.1).
    pub session_expiry_secs: u32,
    /// The will.
    pub will: Option<Will>,
    /// What the client allows us to send.
    pub peer: PeerLimits,
}

/// What the broker must do after a packet.
#[derive(Debug)]
pub enum Action {
    /// Nothing.
    None,
    /// Send this packet.
    Send(Packet),
    /// Route this QoS 0 or 1 PUBLISH (checked, topic alias resolved); then call `routed`.
    Route(Publish),
    /// A checked QoS 2 PUBLISH: record its packet id in the session, then `qos2_recorded`.
    Qos2(Publish),
    /// SUBSCRIBE: `check_filter` each entry, apply the granted ones, then `suback`.
    Subscribe(super::Subscribe),
    /// UNSUBSCRIBE: remove each filter, then `unsuback` with which existed.
    Unsubscribe(super::Unsubscribe),
    /// PUBACK from the client for this packet id.
    PubAck(u16),
    /// PUBREC from the client: the session answers PUBREL.
    PubRec(u16),
    /// PUBCOMP from the client.
    PubComp(u16),
    /// PUBREL from the client: release the id in the session, then `released`.
    PubRel(u16),
    /// The client disconnected. Set the Session Expiry Interval when Some; publish the will
    /// only when `publish_will` (5.0 reason 0x04).
    Disconnect {
        /// New Session Expiry Interval, if the DISCONNECT carried one.
        session_expiry_secs: Option<u32>,
        /// Whether the will is still published.
        publish_will: bool,
    },
    /// Close the connection (the will is published): send this DISCONNECT first when Some.
    Close(Option<Packet>),
}

/// What to do with a QoS 2 PUBLISH once the session recorded its packet id.
#[derive(Debug)]
pub enum Qos2 {
    /// New: route it, then `routed` gives the PUBREC.
    Route(Publish),
    /// A re-send of one not yet released: answer PUBREC, do not route again [MQTT-4.3.3-2].
    Answer(Packet),
    /// Too many unreleased: close [MQTT-3.3.4-8].
    Close(Option<Packet>),
}

/// Where the connection stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for CONNECT, since `at`.
    Connecting,
    /// CONNACK sent.
    Connected,
}

/// The protocol state of one client connection.
pub struct Connection {
    /// Shared with every connection that started under the same limits.
    limits: Arc<Limits>,
    phase: Phase,
    version: Version,
    /// When the last packet was read (or the connection opened).
    last_input: Instant,
    /// 1.5 × the keep-alive in force; None when off [MQTT-3.1.2-24].
    keep_alive: Option<Duration>,
    /// The CONNACK's properties, made when CONNECT is accepted (boxed: a connection holds
    /// them only until its CONNACK).
    server_properties: Props,
    /// 5.0 inbound topic aliases of this connection; boxed once the client sets one (an empty
    /// map is 48 bytes, and a connection's machine lives as long as it does).
    #[allow(clippy::box_collection)]
    inbound_aliases: Option<Box<HashMap<u16, MqttString>>>,
    /// Whether the client accepts Reason Strings on acknowledgements (5.0 Request Problem
    /// Information, default 1) [MQTT-3.1.2-29].
    has_problem_info: bool,
    /// Session Expiry Interval from CONNECT, for the checks on DISCONNECT.
    session_expiry_secs: u32,
    /// The client's Maximum Packet Size; a Reason String that would pass it is left out
    /// [MQTT-3.1.2-25].
    peer_packet_size_max: u32,
}

impl Connection {
    /// A connection opened at `now`, under `limits`.
    pub fn new(limits: impl Into<Arc<Limits>>, now: Instant) -> Connection {
        Connection {
            limits: limits.into(),
            phase: Phase::Connecting,
            version: Version::V311,
            last_input: now,
            keep_alive: None,
            server_properties: Props::default(),
            inbound_aliases: None,
            has_problem_info: true,
            session_expiry_secs: 0,
            peer_packet_size_max: u32::MAX,
        }
    }

    /// The protocol version of the connection (3.1.1 until CONNECT says otherwise).
    pub fn version(&self) -> Version {
        self.version
    }

    /// How long the socket may stay silent from `now` before `handle_timeout` closes the
    /// connection; None for never.
    pub fn read_timeout(&self, now: Instant) -> Option<Duration> {
        let allowed = match self.phase {
            Phase::Connecting => Duration::from_secs(self.limits.connect_timeout_secs),
            Phase::Connected => self.keep_alive?,
        };
        Some((self.last_input + allowed).saturating_duration_since(now))
    }

    /// The socket was silent until `now`: a close when the keep-alive (or the CONNECT
    /// timeout) ran out, else None.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<Action> {
        if self.read_timeout(now)? > Duration::ZERO {
            return None;
        }
        Some(match self.phase {
            Phase::Connecting => Action::Close(None),
            Phase::Connected => self.close(ReasonCode::KEEP_ALIVE_TIMEOUT),
        })
    }

    /// Checks a CONNECT read at `now`, with what the broker knows of the client. Returns what
    /// the broker needs to install the session, or the CONNACK that refuses it (send it, then
    /// close).
    pub fn handle_connect(
        &mut self,
        connect: Connect,
        now: Instant,
        admission: Admission,
    ) -> Result<Accepted, ConnAck> {
        self.last_input = now;
        self.version = connect.version;
        let v5 = self.version == Version::V5;
        if admission.is_server_full {
            let code = if v5 {
                ReasonCode::SERVER_BUSY
            } else {
                ReasonCode(connack_v3::SERVER_UNAVAILABLE)
            };
            return Err(self.refusal(code));
        }
        if let Some(method) = &connect.properties.authentication_method {
            // Enhanced authentication: refused unless a method by that name is configured.
            if auth::authenticator(method.as_str()).is_none() {
                return Err(self.refusal(ReasonCode::BAD_AUTHENTICATION_METHOD));
            }
        }
        if let Some(refusal) = admission.refusal {
            // The codes mosquitto 2.0 answers a refused login with, in both versions.
            let code = match (refusal, v5) {
                (Refusal::NotAuthorized, _) => self.not_authorized(connack_v3::NOT_AUTHORIZED),
                (Refusal::BadCredentials, true) => ReasonCode::BAD_USER_NAME_OR_PASSWORD,
                (Refusal::BadCredentials, false) => {
                    ReasonCode(connack_v3::BAD_USER_NAME_OR_PASSWORD)
                }
            };
            return Err(self.refusal(code));
        }
        let wanted = &connect.properties;
        self.has_problem_info = wanted.request_problem_information != Some(0);
        self.session_expiry_secs = wanted.session_expiry_interval.unwrap_or(0);
        self.peer_packet_size_max = wanted.maximum_packet_size.unwrap_or(u32::MAX);
        self.server_properties = self.server_properties().into();
        let keep_alive = self.negotiate_keep_alive(connect.keep_alive_secs);
        self.keep_alive = (keep_alive > 0).then(|| Duration::from_millis(keep_alive as u64 * 1500));
        let peer = PeerLimits {
            receive_max: wanted.receive_maximum.unwrap_or(u16::MAX),
            packet_size_max: self.peer_packet_size_max,
            topic_alias_max: wanted.topic_alias_maximum.unwrap_or(0),
        };
        let client_id = connect.client_id.as_str().to_string();
        if client_id.is_empty() && !v5 && !connect.clean_start {
            // A zero-byte client id needs Clean Session = 1 [MQTT-3.1.3-8].
            return Err(self.refusal(ReasonCode(connack_v3::IDENTIFIER_REJECTED)));
        }
        Ok(Accepted {
            client_id,
            clean_start: connect.clean_start,
            is_persistent: match self.version {
                Version::V311 => !connect.clean_start,
                Version::V5 => self.session_expiry_secs > 0,
            },
            session_expiry_secs: self.session_expiry_secs,
            will: connect.will,
            peer,
        })
    }

    /// The client sent an empty client id: the server assigns `id`, and a 5.0 CONNACK says so
    /// [MQTT-3.2.2-16].
    pub fn assign_client_id(&mut self, accepted: &mut Accepted, id: String) {
        if self.version == Version::V5 {
            self.server_properties.assigned_client_identifier = MqttString::from_str_checked(&id);
        }
        accepted.client_id = id;
    }

    /// The CONNACK accepting the connection; the machine is connected from here on.
    pub fn connack(&mut self, session_present: bool) -> Packet {
        self.phase = Phase::Connected;
        Packet::ConnAck(ConnAck {
            session_present,
            code: ReasonCode::SUCCESS,
            properties: std::mem::take(&mut self.server_properties),
        })
    }

    /// The CONNACK for a CONNECT the codec could not decode, where the spec asks for one
    /// before closing: 3.1.1 for an unsupported protocol level, 5.0 with the decode error's
    /// reason. None: close without one.
    pub fn refuse_undecodable(&mut self, error: &DecodeError, v5: bool) -> Option<Packet> {
        let code = match error {
            DecodeError::UnsupportedProtocolLevel(_) if !v5 => {
                ReasonCode(connack_v3::UNACCEPTABLE_PROTOCOL_VERSION)
            }
            _ if v5 => error.reason_code(),
            _ => return None,
        };
        self.version = if v5 { Version::V5 } else { Version::V311 };
        Some(Packet::ConnAck(self.refusal(code)))
    }

    /// 5.0's Not authorized, or `v3_code` for 3.1.1.
    fn not_authorized(&self, v3_code: u8) -> ReasonCode {
        match self.version {
            Version::V5 => ReasonCode::NOT_AUTHORIZED,
            Version::V311 => ReasonCode(v3_code),
        }
    }

    /// The answer to a PUBLISH the ACL does not let this client write: 5.0 refuses it with Not
    /// authorized; 3.1.1 has no way to say so, so it is acknowledged (and dropped), as
    /// mosquitto does. None for QoS 0.
    pub fn publish_denied(&self, qos: QoS, pkid: u16) -> Option<Packet> {
        let reason = self.not_authorized(ReasonCode::SUCCESS.0);
        match qos {
            QoS::AtMostOnce => None,
            QoS::AtLeastOnce => Some(self.ack(Packet::PubAck, pkid, reason)),
            QoS::ExactlyOnce => Some(self.ack(Packet::PubRec, pkid, reason)),
        }
    }

    /// The SUBACK code of a filter no ACL rule lets this client read: 3.1.1's failure, 5.0's
    /// Not authorized.
    pub fn subscribe_denied(&self) -> ReasonCode {
        self.not_authorized(ReasonCode::UNSPECIFIED_ERROR.0)
    }

    fn refusal(&self, code: ReasonCode) -> ConnAck {
        ConnAck {
            session_present: false,
            code,
            properties: Props::default(),
        }
    }

    /// What a 5.0 CONNACK tells the client about this server [MQTT-3.2.2.3]. Maximum QoS is
    /// left out: its absence means QoS 2, which is supported.
    fn server_properties(&self) -> Properties {
        if self.version != Version::V5 {
            return Properties::default();
        }
        Properties {
            receive_maximum: Some(self.limits.receive_max),
            retain_available: Some(1),
            maximum_packet_size: Some(self.limits.packet_size_max),
            topic_alias_maximum: Some(self.limits.topic_alias_max),
            wildcard_subscription_available: Some(1),
            subscription_identifier_available: Some(1),
            shared_subscription_available: Some(1),
            ..Properties::default()
        }
    }

    /// The keep-alive the connection runs with: the client's, unless it exceeds (or turns
    /// off) the configured maximum, which 5.0 then announces as Server Keep Alive
    /// [MQTT-3.2.2-21]. A 3.1.1 client cannot be told, so it keeps its own.
    fn negotiate_keep_alive(&mut self, asked: u16) -> u16 {
        let max = self.limits.keep_alive_max_secs;
        if self.version != Version::V5 || max == 0 || (asked != 0 && asked <= max) {
            return asked;
        }
        self.server_properties.server_keep_alive = Some(max);
        max
    }

    /// Handles a packet read at `now`, after CONNECT.
    pub fn handle(&mut self, packet: Packet, now: Instant) -> Action {
        self.last_input = now;
        match packet {
            Packet::Publish(publish) => self.on_publish(publish),
            Packet::Subscribe(subscribe) => Action::Subscribe(subscribe),
            Packet::Unsubscribe(unsubscribe) => Action::Unsubscribe(unsubscribe),
            Packet::PubAck(ack) => Action::PubAck(ack.pkid),
            Packet::PubRec(ack) => Action::PubRec(ack.pkid),
            Packet::PubComp(ack) => Action::PubComp(ack.pkid),
            Packet::PubRel(ack) => Action::PubRel(ack.pkid),
            Packet::PingReq => Action::Send(Packet::PingResp),
            Packet::Disconnect(disconnect) => self.on_disconnect(&disconnect),
            // A second CONNECT [MQTT-3.1.0-2], AUTH without an authentication method, and
            // server-to-client packets are protocol errors.
            _ => self.close(ReasonCode::PROTOCOL_ERROR),
        }
    }

    /// The bytes after CONNECT broke the protocol: close with the decode error's reason.
    pub fn handle_decode_error(&mut self, error: &DecodeError) -> Action {
        self.close(error.reason_code())
    }

    /// A close with `reason`: a 5.0 DISCONNECT carrying it and a Reason String saying it in
    /// words (allowed on DISCONNECT whatever Request Problem Information says); nothing for
    /// 3.1.1.
    fn close(&self, reason: ReasonCode) -> Action {
        Action::Close(self.disconnect(reason))
    }

    fn disconnect(&self, reason: ReasonCode) -> Option<Packet> {
        if self.version != Version::V5 {
            return None;
        }
        let properties = Properties {
            reason_string: self.reason_string(reason),
            ..Properties::default()
        };
        Some(Packet::Disconnect(Disconnect {
            reason,
            properties: properties.into(),
        }))
    }

    fn on_disconnect(&mut self, disconnect: &Disconnect) -> Action {
        let session_expiry_secs = disconnect.properties.session_expiry_interval;
        if session_expiry_secs.is_some_and(|secs| secs != 0) && self.session_expiry_secs == 0 {
            // A session that ends with the connection cannot be revived here [MQTT-3.14.2-2].
            return self.close(ReasonCode::PROTOCOL_ERROR);
        }
        Action::Disconnect {
            session_expiry_secs,
            publish_will: disconnect.reason == ReasonCode::DISCONNECT_WITH_WILL_MESSAGE,
        }
    }

    fn on_publish(&mut self, mut publish: Publish) -> Action {
        let is_plain = publish.qos != QoS::ExactlyOnce
            && publish.properties.topic_alias.is_none()
            && publish.properties.payload_format_indicator != Some(1);
        if is_plain {
            // The common case, checked without touching the properties again.
            return match self.check_topic(publish.topic.as_str(), false) {
                Some(reason) => self.close(reason),
                None => Action::Route(publish),
            };
        }
        if let Err(reason) = self.resolve_topic_alias(&mut publish) {
            return self.close(reason);
        }
        if let Some(reason) = self.check_topic(publish.topic.as_str(), false) {
            return self.close(reason);
        }
        // [MQTT-3.3.2-4]: the server may refuse a payload that is not what its Payload Format
        // Indicator says. QoS 1/2 get the reason in PUBACK/PUBREC and the connection stays;
        // QoS 0 has no acknowledgement to carry it, so the connection ends with it.
        let bad_format = publish.properties.payload_format_indicator == Some(1)
            && std::str::from_utf8(&publish.payload).is_err();
        let pkid = publish.pkid;
        match (publish.qos, bad_format) {
            (QoS::AtMostOnce, true) => self.close(ReasonCode::PAYLOAD_FORMAT_INVALID),
            (QoS::AtLeastOnce, true) => {
                Action::Send(self.ack(Packet::PubAck, pkid, ReasonCode::PAYLOAD_FORMAT_INVALID))
            }
            (QoS::ExactlyOnce, true) => {
                Action::Send(self.ack(Packet::PubRec, pkid, ReasonCode::PAYLOAD_FORMAT_INVALID))
            }
            (QoS::ExactlyOnce, false) => Action::Qos2(publish),
            (_, false) => Action::Route(publish),
        }
    }

    /// The acknowledgement of a routed PUBLISH of `qos` with `pkid` (none for QoS 0);
    /// `matched` says whether anyone subscribes (5.0 answers 0x10 when nobody does).
    pub fn routed(&self, qos: QoS, pkid: u16, matched: bool) -> Option<Packet> {
        let reason = match (matched, self.version) {
            (false, Version::V5) => ReasonCode::NO_MATCHING_SUBSCRIBERS,
            _ => ReasonCode::SUCCESS,
        };
        match qos {
            QoS::AtMostOnce => None,
            QoS::AtLeastOnce => Some(self.ack(Packet::PubAck, pkid, reason)),
            QoS::ExactlyOnce => Some(self.ack(Packet::PubRec, pkid, reason)),
        }
    }

    /// A QoS 2 PUBLISH whose packet id the session recorded: `is_new` unless it was already
    /// waiting for its PUBREL; `pending` ids now wait, counted against our Receive Maximum.
    pub fn qos2_recorded(&self, publish: Publish, is_new: bool, pending: usize) -> Qos2 {
        if is_new && pending > self.limits.receive_max as usize && self.version == Version::V5 {
            return Qos2::Close(self.disconnect(ReasonCode::RECEIVE_MAXIMUM_EXCEEDED));
        }
        if is_new {
            return Qos2::Route(publish);
        }
        Qos2::Answer(self.ack(Packet::PubRec, publish.pkid, ReasonCode::SUCCESS))
    }

    /// The PUBCOMP answering a PUBREL; `known` says whether the id was waiting for it.
    pub fn released(&self, pkid: u16, known: bool) -> Packet {
        let reason = match (known, self.version) {
            (false, Version::V5) => ReasonCode::PACKET_IDENTIFIER_NOT_FOUND,
            _ => ReasonCode::SUCCESS,
        };
        self.ack(Packet::PubComp, pkid, reason)
    }

    /// Whether one SUBSCRIBE entry may be granted, given the `subscriptions` the session holds
    /// now: None to grant it, else the reason code refusing it.
    pub fn check_filter(&self, filter: &str, subscriptions: usize) -> Option<ReasonCode> {
        let v5 = self.version == Version::V5;
        if self.check_topic(filter, true).is_some() {
            return Some(if v5 {
                ReasonCode::TOPIC_FILTER_INVALID
            } else {
                ReasonCode::UNSPECIFIED_ERROR
            });
        }
        if subscriptions >= self.limits.subscriptions_max {
            return Some(if v5 {
                ReasonCode::QUOTA_EXCEEDED
            } else {
                ReasonCode::UNSPECIFIED_ERROR
            });
        }
        None
    }

    /// Whether a subscription just made gets the retained messages it matches: Retain
    /// Handling 0 always, 1 only when it did not exist, 2 never; a shared subscription never
    /// when it is made [MQTT-3.3.1-9], [MQTT-3.3.1-10], 3.8.3.1.
    pub fn wants_retained(options: &SubscriptionOptions, filter: &str, existed: bool) -> bool {
        match options.retain_handling {
            2 => false,
            1 if existed => false,
            _ => !filter.starts_with(SHARE_PREFIX),
        }
    }

    /// The SUBACK with one reason code per entry, in order.
    pub fn suback(&self, pkid: u16, reason_codes: Vec<ReasonCode>) -> Packet {
        Packet::SubAck(SubAck {
            pkid,
            reason_codes,
            properties: Props::default(),
        })
    }

    /// The UNSUBACK: 5.0 says per filter whether a subscription existed; 3.1.1 has no codes.
    pub fn unsuback(&self, pkid: u16, existed: &[bool]) -> Packet {
        let reason_codes = match self.version {
            Version::V311 => Vec::new(),
            Version::V5 => existed
                .iter()
                .map(|&e| {
                    if e {
                        ReasonCode::SUCCESS
                    } else {
                        ReasonCode::NO_SUBSCRIPTION_EXISTED
                    }
                })
                .collect(),
        };
        Packet::UnsubAck(UnsubAck {
            pkid,
            reason_codes,
            properties: Props::default(),
        })
    }

    /// A PUBLISH/PUBACK-shaped acknowledgement with `reason` (and its Reason String when
    /// allowed).
    fn ack(&self, kind: fn(Ack) -> Packet, pkid: u16, reason: ReasonCode) -> Packet {
        kind(Ack {
            pkid,
            reason,
            properties: self.problem(reason),
        })
    }

    /// Properties of an acknowledgement that refuses something: a Reason String unless the
    /// client asked for no problem information [MQTT-3.1.2-29]. Success has none, given as
    /// such: building an empty `Properties` and comparing it with the empty one cost a QoS 1
    /// PUBLISH 180 instructions (callgrind, pairs-100).
    fn problem(&self, reason: ReasonCode) -> Props {
        if !self.has_problem_info || reason.0 < 0x80 || self.version != Version::V5 {
            return Props::default();
        }
        Properties {
            reason_string: self.reason_string(reason),
            ..Properties::default()
        }
        .into()
    }

    /// The Reason String for `reason`, if an acknowledgement carrying it stays within the
    /// client's Maximum Packet Size (fixed header, packet id, reason code and property
    /// framing take at most 16 bytes).
    fn reason_string(&self, reason: ReasonCode) -> Option<MqttString> {
        let text = reason_text(reason);
        let fits = text.len() + 16 <= self.peer_packet_size_max as usize;
        fits.then(|| MqttString::from_str_checked(text)).flatten()
    }

    /// Replaces a 5.0 Topic Alias by its topic [MQTT-3.3.2-12]: a PUBLISH with a topic and an
    /// alias sets the alias, one with an empty topic uses it. Aliases above our Topic Alias
    /// Maximum (or 0) are refused [MQTT-3.3.2-9]; an unknown one is a protocol error.
    fn resolve_topic_alias(&mut self, publish: &mut Publish) -> Result<(), ReasonCode> {
        let Some(alias) = publish.properties.topic_alias.take() else {
            return Ok(());
        };
        if alias == 0 || alias > self.limits.topic_alias_max {
            return Err(ReasonCode::TOPIC_ALIAS_INVALID);
        }
        if publish.topic.is_empty() {
            let topic = self.inbound_aliases.as_ref().and_then(|a| a.get(&alias));
            publish.topic = topic.cloned().ok_or(ReasonCode::PROTOCOL_ERROR)?;
        } else {
            let aliases = self.inbound_aliases.get_or_insert_with(Box::default);
            aliases.insert(alias, publish.topic.clone());
        }
        Ok(())
    }

    /// A topic (or filter) over the configured length or depth, or empty; returns the reason
    /// to refuse it with.
    fn check_topic(&self, topic: &str, is_filter: bool) -> Option<ReasonCode> {
        if topic.is_empty() {
            // Only a PUBLISH with a Topic Alias may have an empty topic, resolved before this.
            return Some(ReasonCode::PROTOCOL_ERROR);
        }
        // A topic has at most one level more than it has bytes: a short one needs no count.
        let levels_max = self.limits.topic_levels_max;
        let too_deep = topic.len() >= levels_max
            && topic.bytes().filter(|&b| b == b'/').count() + 1 > levels_max;
        let too_long = topic.len() > self.limits.topic_bytes_max || too_deep;
        match (too_long, is_filter) {
            (false, _) => None,
            (true, true) => Some(ReasonCode::TOPIC_FILTER_INVALID),
            (true, false) => Some(ReasonCode::TOPIC_NAME_INVALID),
        }
    }
}

/// A Reason String for the reason codes this server sends.
fn reason_text(reason: ReasonCode) -> &'static str {
    match reason {
        ReasonCode::MALFORMED_PACKET => "malformed packet",
        ReasonCode::PROTOCOL_ERROR => "protocol error",
        ReasonCode::KEEP_ALIVE_TIMEOUT => "nothing received within 1.5 times the keep alive",
        ReasonCode::TOPIC_NAME_INVALID => "topic name too long or too deep",
        ReasonCode::TOPIC_FILTER_INVALID => "topic filter too long or too deep",
        ReasonCode::TOPIC_ALIAS_INVALID => "topic alias 0 or above the topic alias maximum",
        ReasonCode::RECEIVE_MAXIMUM_EXCEEDED => {
            "more unacknowledged QoS 2 messages than receive maximum"
        }
        ReasonCode::PACKET_TOO_LARGE => "packet larger than maximum packet size",
        ReasonCode::PAYLOAD_FORMAT_INVALID => "payload format indicator 1 but payload not UTF-8",
        ReasonCode::QUOTA_EXCEEDED => "too many subscriptions",
        ReasonCode::SESSION_TAKEN_OVER => "another connection took the client id over",
        ReasonCode::SERVER_SHUTTING_DOWN => "server shutting down",
        _ => "refused",
    }
}

/// The DISCONNECT the broker sends a 5.0 client it closes for `reason` from outside the
/// connection (takeover, shutdown); None for 3.1.1.
pub fn server_disconnect(version: Version, reason: ReasonCode) -> Option<Packet> {
    (version == Version::V5).then(|| {
        Packet::Disconnect(Disconnect {
            reason,
            properties: Props::default(),
        })
    })
}

#[cfg(test)]
mod tests;
