//! The MQTT packets of 3.1.1 and 5.0 as plain data.
//!
//! One type serves both protocol versions: fields that only exist in 5.0 (properties, reason
//! codes) are left at their defaults for 3.1.1. Strings and binary data are slices of the
//! buffer the packet was decoded from, so decoding copies no payload.

use bytes::Bytes;

/// The protocol level a connection speaks, chosen by its CONNECT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Version {
    /// MQTT 3.1.1, protocol level 4.
    V311,
    /// MQTT 5.0, protocol level 5.
    V5,
}

impl Version {
    /// The protocol level byte carried in CONNECT.
    pub fn level(self) -> u8 {
        match self {
            Version::V311 => 4,
            Version::V5 => 5,
        }
    }
}

/// Quality of service of a PUBLISH or a subscription.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum QoS {
    /// At most once.
    #[default]
    AtMostOnce = 0,
    /// At least once.
    AtLeastOnce = 1,
    /// Exactly once.
    ExactlyOnce = 2,
}

impl QoS {
    /// The QoS for a two-bit value, `None` for 3 (which is malformed everywhere).
    pub fn from_bits(bits: u8) -> Option<QoS> {
        match bits {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

/// A UTF-8 string that has been checked against MQTT's rules (well-formed, no U+0000), held as
/// a slice of the buffer it came from.
#[derive(Clone, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct MqttString(Bytes);

impl MqttString {
    /// Checks `bytes` against MQTT's UTF-8 rules [MQTT-1.5.4-1], [MQTT-1.5.4-2].
    pub fn from_bytes(bytes: Bytes) -> Option<MqttString> {
        let text = std::str::from_utf8(&bytes).ok()?;
        if text.contains('\0') {
            return None;
        }
        Some(MqttString(bytes))
    }

    /// Wraps bytes the caller has already checked against MQTT's UTF-8 rules (the codec's
    /// reader checks each string once, as it reads it); debug builds check again.
    pub(crate) fn from_validated(bytes: Bytes) -> MqttString {
        debug_assert!(
            std::str::from_utf8(&bytes).is_ok() && !bytes.contains(&0),
            "MqttString::from_validated given bytes that are not valid MQTT UTF-8"
        );
        MqttString(bytes)
    }

    /// Copies a Rust string that is known to be valid (no U+0000), e.g. a constant.
    /// Returns `None` when it contains U+0000.
    pub fn from_str_checked(text: &str) -> Option<MqttString> {
        MqttString::from_bytes(Bytes::copy_from_slice(text.as_bytes()))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        // SAFETY: every constructor (`from_bytes`, `from_validated`, `From<&'static str>`)
        // only wraps bytes checked to be UTF-8, and the field is private and never mutated.
        // Checking again here cost a full UTF-8 scan per call on the PUBLISH hot path.
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }

    /// The underlying bytes (shared, not copied).
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the string is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for MqttString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl From<&'static str> for MqttString {
    /// For string literals in code and tests. Panics on U+0000, which a literal should not hold.
    fn from(text: &'static str) -> MqttString {
        assert!(!text.contains('\0'), "MQTT strings cannot contain U+0000");
        MqttString(Bytes::from_static(text.as_bytes()))
    }
}

/// An MQTT 5.0 reason code (also used for 3.1.1 CONNACK return codes and SUBACK results).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ReasonCode(pub u8);

#[allow(missing_docs)]
impl ReasonCode {
    pub const SUCCESS: ReasonCode = ReasonCode(0x00);
    pub const NORMAL_DISCONNECTION: ReasonCode = ReasonCode(0x00);
    pub const GRANTED_QOS_0: ReasonCode = ReasonCode(0x00);
    pub const GRANTED_QOS_1: ReasonCode = ReasonCode(0x01);
    pub const GRANTED_QOS_2: ReasonCode = ReasonCode(0x02);
    pub const DISCONNECT_WITH_WILL_MESSAGE: ReasonCode = ReasonCode(0x04);
    pub const NO_MATCHING_SUBSCRIBERS: ReasonCode = ReasonCode(0x10);
    pub const NO_SUBSCRIPTION_EXISTED: ReasonCode = ReasonCode(0x11);
    pub const CONTINUE_AUTHENTICATION: ReasonCode = ReasonCode(0x18);
    pub const REAUTHENTICATE: ReasonCode = ReasonCode(0x19);
    pub const UNSPECIFIED_ERROR: ReasonCode = ReasonCode(0x80);
    pub const MALFORMED_PACKET: ReasonCode = ReasonCode(0x81);
    pub const PROTOCOL_ERROR: ReasonCode = ReasonCode(0x82);
    pub const IMPLEMENTATION_SPECIFIC_ERROR: ReasonCode = ReasonCode(0x83);
    pub const UNSUPPORTED_PROTOCOL_VERSION: ReasonCode = ReasonCode(0x84);
    pub const CLIENT_IDENTIFIER_NOT_VALID: ReasonCode = ReasonCode(0x85);
    pub const BAD_USER_NAME_OR_PASSWORD: ReasonCode = ReasonCode(0x86);
    pub const NOT_AUTHORIZED: ReasonCode = ReasonCode(0x87);
    pub const SERVER_UNAVAILABLE: ReasonCode = ReasonCode(0x88);
    pub const SERVER_BUSY: ReasonCode = ReasonCode(0x89);
    pub const BANNED: ReasonCode = ReasonCode(0x8A);
    pub const SERVER_SHUTTING_DOWN: ReasonCode = ReasonCode(0x8B);
    pub const BAD_AUTHENTICATION_METHOD: ReasonCode = ReasonCode(0x8C);
    pub const KEEP_ALIVE_TIMEOUT: ReasonCode = ReasonCode(0x8D);
    pub const SESSION_TAKEN_OVER: ReasonCode = ReasonCode(0x8E);
    pub const TOPIC_FILTER_INVALID: ReasonCode = ReasonCode(0x8F);
    pub const TOPIC_NAME_INVALID: ReasonCode = ReasonCode(0x90);
    pub const PACKET_IDENTIFIER_IN_USE: ReasonCode = ReasonCode(0x91);
    pub const PACKET_IDENTIFIER_NOT_FOUND: ReasonCode = ReasonCode(0x92);
    pub const RECEIVE_MAXIMUM_EXCEEDED: ReasonCode = ReasonCode(0x93);
    pub const TOPIC_ALIAS_INVALID: ReasonCode = ReasonCode(0x94);
    pub const PACKET_TOO_LARGE: ReasonCode = ReasonCode(0x95);
    pub const MESSAGE_RATE_TOO_HIGH: ReasonCode = ReasonCode(0x96);
    pub const QUOTA_EXCEEDED: ReasonCode = ReasonCode(0x97);
    pub const ADMINISTRATIVE_ACTION: ReasonCode = ReasonCode(0x98);
    pub const PAYLOAD_FORMAT_INVALID: ReasonCode = ReasonCode(0x99);
    pub const RETAIN_NOT_SUPPORTED: ReasonCode = ReasonCode(0x9A);
    pub const QOS_NOT_SUPPORTED: ReasonCode = ReasonCode(0x9B);
    pub const USE_ANOTHER_SERVER: ReasonCode = ReasonCode(0x9C);
    pub const SERVER_MOVED: ReasonCode = ReasonCode(0x9D);
    pub const SHARED_SUBSCRIPTIONS_NOT_SUPPORTED: ReasonCode = ReasonCode(0x9E);
    pub const CONNECTION_RATE_EXCEEDED: ReasonCode = ReasonCode(0x9F);
    pub const MAXIMUM_CONNECT_TIME: ReasonCode = ReasonCode(0xA0);
    pub const SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED: ReasonCode = ReasonCode(0xA1);
    pub const WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED: ReasonCode = ReasonCode(0xA2);
}

/// 3.1.1 CONNACK return codes [MQTT-3.2.2.3].
#[allow(missing_docs)]
pub mod connack_v3 {
    pub const ACCEPTED: u8 = 0x00;
    pub const UNACCEPTABLE_PROTOCOL_VERSION: u8 = 0x01;
    pub const IDENTIFIER_REJECTED: u8 = 0x02;
    pub const SERVER_UNAVAILABLE: u8 = 0x03;
    pub const BAD_USER_NAME_OR_PASSWORD: u8 = 0x04;
    pub const NOT_AUTHORIZED: u8 = 0x05;
}

/// Every MQTT 5.0 property, for any packet. The codec checks which ones a packet type may carry
/// [MQTT-2.2.2]; a 3.1.1 packet always has the default (empty) value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Properties {
    /// 0x01, PUBLISH and will: 0 unspecified bytes, 1 UTF-8.
    pub payload_format_indicator: Option<u8>,
    /// 0x02, PUBLISH and will: lifetime in seconds.
    pub message_expiry_interval: Option<u32>,
    /// 0x03, PUBLISH and will.
    pub content_type: Option<MqttString>,
    /// 0x08, PUBLISH and will.
    pub response_topic: Option<MqttString>,
    /// 0x09, PUBLISH and will.
    pub correlation_data: Option<Bytes>,
    /// 0x0B, PUBLISH (may repeat) and SUBSCRIBE (once); 1..=268,435,455.
    pub subscription_identifiers: Vec<u32>,
    /// 0x11, CONNECT, CONNACK, DISCONNECT.
    pub session_expiry_interval: Option<u32>,
    /// 0x12, CONNACK.
    pub assigned_client_identifier: Option<MqttString>,
    /// 0x13, CONNACK.
    pub server_keep_alive: Option<u16>,
    /// 0x15, CONNECT, CONNACK, AUTH.
    pub authentication_method: Option<MqttString>,
    /// 0x16, CONNECT, CONNACK, AUTH.
    pub authentication_data: Option<Bytes>,
    /// 0x17, CONNECT: 0 or 1.
    pub request_problem_information: Option<u8>,
    /// 0x18, will properties.
    pub will_delay_interval: Option<u32>,
    /// 0x19, CONNECT: 0 or 1.
    pub request_response_information: Option<u8>,
    /// 0x1A, CONNACK.
    pub response_information: Option<MqttString>,
    /// 0x1C, CONNACK, DISCONNECT.
    pub server_reference: Option<MqttString>,
    /// 0x1F, CONNACK, PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK, UNSUBACK, DISCONNECT, AUTH.
    pub reason_string: Option<MqttString>,
    /// 0x21, CONNECT, CONNACK: non-zero.
    pub receive_maximum: Option<u16>,
    /// 0x22, CONNECT, CONNACK.
    pub topic_alias_maximum: Option<u16>,
    /// 0x23, PUBLISH: non-zero.
    pub topic_alias: Option<u16>,
    /// 0x24, CONNACK: 0 or 1.
    pub maximum_qos: Option<u8>,
    /// 0x25, CONNACK: 0 or 1.
    pub retain_available: Option<u8>,
    /// 0x26, every packet that has properties; may repeat, order kept.
    pub user_properties: Vec<(MqttString, MqttString)>,
    /// 0x27, CONNECT, CONNACK: non-zero.
    pub maximum_packet_size: Option<u32>,
    /// 0x28, CONNACK: 0 or 1.
    pub wildcard_subscription_available: Option<u8>,
    /// 0x29, CONNACK: 0 or 1.
    pub subscription_identifier_available: Option<u8>,
    /// 0x2A, CONNACK: 0 or 1.
    pub shared_subscription_available: Option<u8>,
}

/// A packet's properties, boxed when there are any. Most packets carry none (every 3.1.1
/// packet, most 5.0 PUBLISHes), and packets are moved and cloned on the hot path: inline, the
/// 400 bytes of `Properties` made every PUBLISH move a memcpy of half a kilobyte.
///
/// Reads see the empty set when there is none; the first write allocates.
#[derive(Clone, Default)]
pub struct Props(Option<Box<Properties>>);

/// What an absent `Props` reads as.
static NO_PROPERTIES: std::sync::LazyLock<Properties> =
    std::sync::LazyLock::new(Properties::default);

impl std::ops::Deref for Props {
    type Target = Properties;

    fn deref(&self) -> &Properties {
        self.0.as_deref().unwrap_or(&NO_PROPERTIES)
    }
}

impl Props {
    /// Whether no property was ever set: the one-branch check of the common case (a set that
    /// was written and cleared again reads as empty too, but is not unset).
    pub fn is_unset(&self) -> bool {
        self.0.is_none()
    }
}

impl std::ops::DerefMut for Props {
    fn deref_mut(&mut self) -> &mut Properties {
        self.0.get_or_insert_with(Box::default)
    }
}

impl From<Properties> for Props {
    fn from(properties: Properties) -> Props {
        if properties == *NO_PROPERTIES {
            return Props(None);
        }
        Props(Some(Box::new(properties)))
    }
}

impl PartialEq for Props {
    fn eq(&self, other: &Props) -> bool {
        **self == **other
    }
}

impl Eq for Props {}

impl std::fmt::Debug for Props {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        Properties::fmt(self, f)
    }
}

/// The will message carried in CONNECT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Will {
    /// Topic the will is published to (a valid topic name).
    pub topic: MqttString,
    /// Payload, a slice of the CONNECT buffer.
    pub payload: Bytes,
    /// QoS of the will publish.
    pub qos: QoS,
    /// Whether the will is retained.
    pub retain: bool,
    /// Will properties (5.0 only).
    pub properties: Props,
}

/// CONNECT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connect {
    /// The protocol level the client asked for.
    pub version: Version,
    /// Client identifier, possibly empty.
    pub client_id: MqttString,
    /// Clean Session (3.1.1) / Clean Start (5.0).
    pub clean_start: bool,
    /// Keep alive in seconds; 0 turns it off.
    pub keep_alive_secs: u16,
    /// User name.
    pub username: Option<MqttString>,
    /// Password (binary data).
    pub password: Option<Bytes>,
    /// Will message.
    pub will: Option<Will>,
    /// CONNECT properties (5.0 only).
    pub properties: Props,
}

/// CONNACK.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnAck {
    /// Session Present flag.
    pub session_present: bool,
    /// 3.1.1 return code (`connack_v3`) or 5.0 reason code.
    pub code: ReasonCode,
    /// CONNACK properties (5.0 only).
    pub properties: Props,
}

/// PUBLISH.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publish {
    /// DUP flag: a re-delivery.
    pub dup: bool,
    /// QoS.
    pub qos: QoS,
    /// RETAIN flag.
    pub retain: bool,
    /// Topic name; empty only in 5.0 with a Topic Alias property.
    pub topic: MqttString,
    /// Packet identifier; 0 for QoS 0, non-zero otherwise.
    pub pkid: u16,
    /// PUBLISH properties (5.0 only).
    pub properties: Props,
    /// Application message, a slice of the input buffer.
    pub payload: Bytes,
}

/// PUBACK, PUBREC, PUBREL and PUBCOMP share this shape.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Ack {
    /// Packet identifier, non-zero.
    pub pkid: u16,
    /// Reason code (5.0; 0x00 Success for 3.1.1).
    pub reason: ReasonCode,
    /// Properties (5.0 only).
    pub properties: Props,
}

/// Subscription options of one SUBSCRIBE entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SubscriptionOptions {
    /// Maximum QoS.
    pub qos: QoS,
    /// 5.0 No Local.
    pub no_local: bool,
    /// 5.0 Retain As Published.
    pub retain_as_published: bool,
    /// 5.0 Retain Handling: 0, 1 or 2.
    pub retain_handling: u8,
}

/// One topic filter of a SUBSCRIBE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscribeFilter {
    /// The topic filter (syntax checked, may be `$share/group/filter`).
    pub filter: MqttString,
    /// Its options.
    pub options: SubscriptionOptions,
}

/// SUBSCRIBE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscribe {
    /// Packet identifier, non-zero.
    pub pkid: u16,
    /// At least one filter.
    pub filters: Vec<SubscribeFilter>,
    /// Properties (5.0 only).
    pub properties: Props,
}

/// SUBACK.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubAck {
    /// Packet identifier.
    pub pkid: u16,
    /// One per filter: granted QoS, or 0x80 (3.1.1) / a 5.0 error reason code.
    pub reason_codes: Vec<ReasonCode>,
    /// Properties (5.0 only).
    pub properties: Props,
}

/// UNSUBSCRIBE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsubscribe {
    /// Packet identifier, non-zero.
    pub pkid: u16,
    /// At least one filter.
    pub filters: Vec<MqttString>,
    /// Properties (5.0 only).
    pub properties: Props,
}

/// UNSUBACK.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnsubAck {
    /// Packet identifier.
    pub pkid: u16,
    /// One per filter in 5.0; empty in 3.1.1.
    pub reason_codes: Vec<ReasonCode>,
    /// Properties (5.0 only).
    pub properties: Props,
}

/// DISCONNECT.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Disconnect {
    /// Reason code (5.0; 0x00 for 3.1.1).
    pub reason: ReasonCode,
    /// Properties (5.0 only).
    pub properties: Props,
}

/// AUTH (5.0 only).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Auth {
    /// Reason code: 0x00, 0x18 or 0x19.
    pub reason: ReasonCode,
    /// Properties.
    pub properties: Props,
}

/// Any MQTT control packet.
// CONNECT is boxed: it comes once per connection, and inline it set every packet's size (192
// bytes, copied by `memcpy` at each move of a PUBLISH between decode and routing); the other
// variants are left inline, a box would cost an allocation per packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Packet {
    /// CONNECT (type 1).
    Connect(Box<Connect>),
    /// CONNACK (type 2).
    ConnAck(ConnAck),
    /// PUBLISH (type 3).
    Publish(Publish),
    /// PUBACK (type 4).
    PubAck(Ack),
    /// PUBREC (type 5).
    PubRec(Ack),
    /// PUBREL (type 6).
    PubRel(Ack),
    /// PUBCOMP (type 7).
    PubComp(Ack),
    /// SUBSCRIBE (type 8).
    Subscribe(Subscribe),
    /// SUBACK (type 9).
    SubAck(SubAck),
    /// UNSUBSCRIBE (type 10).
    Unsubscribe(Unsubscribe),
    /// UNSUBACK (type 11).
    UnsubAck(UnsubAck),
    /// PINGREQ (type 12).
    PingReq,
    /// PINGRESP (type 13).
    PingResp,
    /// DISCONNECT (type 14).
    Disconnect(Disconnect),
    /// AUTH (type 15, 5.0 only).
    Auth(Auth),
}
