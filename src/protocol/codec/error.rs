//! Typed decode and encode errors, each tied to the spec statement it enforces.
//!
//! Statement numbers are MQTT 5.0 ones unless marked 3.1.1; where both versions have the rule
//! under different numbers, both are given.

use crate::protocol::packet::ReasonCode;

/// Why bytes from a peer are not a valid MQTT packet. Decoding that fails consumes nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// A Variable Byte Integer runs past 4 bytes [MQTT-1.5.5] (3.1.1: 2.2.3).
    VarintTooLong,
    /// A Variable Byte Integer does not use the fewest bytes [MQTT-1.5.5-1] (5.0 only).
    NonMinimalVarint,
    /// The packet is larger than the Maximum Packet Size; refused from the fixed header alone
    /// [MQTT-3.2.2-15] (5.0), a server limit in 3.1.1.
    PacketTooLarge {
        /// Size of the whole packet (fixed header included), in bytes.
        size: usize,
        /// The limit it exceeds.
        max: u32,
    },
    /// Packet type 0, or 15 (AUTH) in 3.1.1, is reserved [MQTT-2.1.2] (3.1.1: 2.2.1).
    ReservedPacketType(u8),
    /// The flag bits of the fixed header are not the ones fixed for this packet type
    /// [MQTT-2.1.3-1] (3.1.1: MQTT-2.2.2-1, MQTT-2.2.2-2).
    InvalidFlags {
        /// The packet type (upper nibble of byte 1).
        packet_type: u8,
        /// The flags received (lower nibble).
        flags: u8,
    },
    /// The first packet on a connection is not CONNECT [MQTT-3.1.0-1].
    FirstPacketNotConnect {
        /// The packet type received instead.
        packet_type: u8,
    },
    /// A field runs past the end of the packet (its Remaining Length) [MQTT-1.5] / 4.13.
    UnexpectedEnd,
    /// Bytes are left over after the last field of the packet (4.13 Malformed Packet).
    TrailingBytes,
    /// A UTF-8 string is ill-formed or encodes a surrogate [MQTT-1.5.4-1] (3.1.1: MQTT-1.5.3-1).
    InvalidUtf8,
    /// A UTF-8 string contains U+0000 [MQTT-1.5.4-2] (3.1.1: MQTT-1.5.3-2).
    NullCharacter,
    /// Both QoS bits are set [MQTT-3.3.1-4], or a subscription asks for QoS 3 (3.8.3.1;
    /// 3.1.1: MQTT-3-8.3-4).
    InvalidQoS,
    /// DUP is set on a QoS 0 PUBLISH [MQTT-3.3.1-2].
    DupWithQoS0,
    /// A packet identifier that must be non-zero is zero [MQTT-2.2.1-3] (3.1.1: MQTT-2.3.1-1).
    ZeroPacketId,
    /// A topic name holds a wildcard [MQTT-3.3.2-2], or is empty in 3.1.1 [MQTT-4.7.3-1].
    InvalidTopicName,
    /// A 5.0 PUBLISH has an empty topic name and no Topic Alias [MQTT-3.3.2-1] (3.3.2.1).
    EmptyTopicWithoutAlias,
    /// A topic filter is empty, has `#` other than as the whole last level, or `+` other
    /// than as a whole level [MQTT-4.7.1-1], [MQTT-4.7.1-2], [MQTT-4.7.3-1].
    InvalidTopicFilter,
    /// A `$share/` filter lacks a group name, has a wildcard or `/` in it, or lacks a filter
    /// after it [MQTT-4.8.2-1], [MQTT-4.8.2-2].
    InvalidSharedSubscription,
    /// SUBSCRIBE or UNSUBSCRIBE carries no topic filter [MQTT-3.8.3-2], [MQTT-3.10.3-2]
    /// (3.1.1: MQTT-3.8.3-3, MQTT-3.10.3-2).
    NoTopicFilters,
    /// Reserved bits of a subscription options byte are set [MQTT-3.8.3-5]
    /// (3.1.1: MQTT-3-8.3-4).
    InvalidSubscriptionOptions,
    /// Retain Handling is 3 (3.8.3.1: "It is a Protocol Error").
    InvalidRetainHandling,
    /// No Local is set on a shared subscription [MQTT-3.8.3-4].
    NoLocalOnSharedSubscription,
    /// The Protocol Name in CONNECT is not "MQTT" [MQTT-3.1.2-1]. The server answers CONNACK
    /// 0x01 (3.1.1) / 0x84 (5.0) as it chooses by `level`, then closes.
    UnsupportedProtocolName {
        /// The protocol level byte that followed the name.
        level: u8,
    },
    /// The Protocol Level in CONNECT is neither 4 nor 5 [MQTT-3.1.2-2]. The server answers
    /// CONNACK 0x01 (3.1.1) / 0x84 (5.0), then closes.
    UnsupportedProtocolLevel(u8),
    /// The reserved bit of the CONNECT flags is set [MQTT-3.1.2-3].
    ConnectReservedFlag,
    /// Will QoS or Will Retain is set without the Will Flag, or Will QoS is 3
    /// [MQTT-3.1.2-11], [MQTT-3.1.2-12], [MQTT-3.1.2-13] (3.1.1: MQTT-3.1.2-13..15).
    InvalidWillFlags,
    /// 3.1.1 only: the Password Flag is set without the User Name Flag [MQTT-3.1.2-22].
    PasswordWithoutUserName,
    /// Reserved bits of the CONNACK acknowledge flags are set [MQTT-3.2.2-1].
    InvalidConnAckFlags,
    /// CONNACK has Session Present with a non-zero code [MQTT-3.2.2-6] (3.1.1: MQTT-3.2.2-4).
    SessionPresentWithError,
    /// A reason code (or 3.1.1 return code) is not one defined for this packet type
    /// (2.4, and each packet's Reason Code table).
    InvalidReasonCode {
        /// The packet type.
        packet_type: u8,
        /// The code received.
        code: u8,
    },
    /// A property identifier that MQTT 5.0 does not define (2.2.2.2: Malformed Packet).
    UnknownProperty(u32),
    /// A property not valid for this packet type (2.2.2.2: Malformed Packet).
    PropertyNotAllowed {
        /// The property identifier.
        id: u8,
        /// The packet type (0 for will properties).
        packet_type: u8,
    },
    /// A property other than User Property (or Subscription Identifier in PUBLISH) appears
    /// twice (each property's text: "It is a Protocol Error to include ... more than once").
    DuplicateProperty(u8),
    /// A property value out of range: Receive Maximum 0, Maximum Packet Size 0, Topic Alias
    /// 0 [MQTT-3.3.2-8], Subscription Identifier 0, or a 0-or-1 property with another value
    /// (each property's text: "It is a Protocol Error ...").
    InvalidPropertyValue(u8),
    /// Authentication Data without Authentication Method (3.1.2.11.10, 3.2.2.3.18).
    AuthDataWithoutMethod,
}

impl DecodeError {
    /// The MQTT 5.0 reason code a server sends in DISCONNECT/CONNACK for this error.
    pub fn reason_code(&self) -> ReasonCode {
        use DecodeError::*;
        match self {
            PacketTooLarge { .. } => ReasonCode::PACKET_TOO_LARGE,
            UnsupportedProtocolName { .. } | UnsupportedProtocolLevel(_) => {
                ReasonCode::UNSUPPORTED_PROTOCOL_VERSION
            }
            InvalidTopicName => ReasonCode::TOPIC_NAME_INVALID,
            InvalidTopicFilter | InvalidSharedSubscription => ReasonCode::TOPIC_FILTER_INVALID,
            InvalidPropertyValue(0x23) => ReasonCode::TOPIC_ALIAS_INVALID,
            FirstPacketNotConnect { .. }
            | DupWithQoS0
            | ZeroPacketId
            | EmptyTopicWithoutAlias
            | NoTopicFilters
            | InvalidRetainHandling
            | NoLocalOnSharedSubscription
            | SessionPresentWithError
            | DuplicateProperty(_)
            | InvalidPropertyValue(_)
            | AuthDataWithoutMethod => ReasonCode::PROTOCOL_ERROR,
            VarintTooLong
            | NonMinimalVarint
            | ReservedPacketType(_)
            | InvalidFlags { .. }
            | UnexpectedEnd
            | TrailingBytes
            | InvalidUtf8
            | NullCharacter
            | InvalidQoS
            | InvalidSubscriptionOptions
            | ConnectReservedFlag
            | InvalidWillFlags
            | PasswordWithoutUserName
            | InvalidConnAckFlags
            | InvalidReasonCode { .. }
            | UnknownProperty(_)
            | PropertyNotAllowed { .. } => ReasonCode::MALFORMED_PACKET,
        }
    }
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use DecodeError::*;
        match self {
            PacketTooLarge { size, max } => {
                write!(f, "packet of {size} bytes exceeds the maximum of {max}")
            }
            UnsupportedProtocolName { level } => {
                write!(f, "protocol name is not \"MQTT\" (level {level})")
            }
            UnsupportedProtocolLevel(level) => write!(f, "unsupported protocol level {level}"),
            InvalidFlags { packet_type, flags } => {
                write!(
                    f,
                    "invalid flags {flags:#06b} for packet type {packet_type}"
                )
            }
            FirstPacketNotConnect { packet_type } => {
                write!(f, "first packet is type {packet_type}, not CONNECT")
            }
            other => write!(f, "{other:?}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Why a packet cannot be encoded. On error the output buffer is left as it was.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EncodeError {
    /// A string or binary field is longer than its 2-byte length prefix allows (65,535).
    FieldTooLong {
        /// The field's length in bytes.
        len: usize,
    },
    /// The Remaining Length exceeds 268,435,455, the most a Variable Byte Integer holds.
    PacketTooLarge {
        /// The Remaining Length the packet would need.
        remaining: usize,
    },
    /// A property set that this packet type may not carry (2.2.2.2).
    PropertyNotAllowed {
        /// The property identifier.
        id: u8,
        /// The packet type (0 for will properties).
        packet_type: u8,
    },
    /// A property value that cannot be encoded (Subscription Identifier 0 or over 268,435,455).
    PropertyValueOutOfRange(u8),
    /// The packet type does not exist in this version (AUTH in 3.1.1).
    NotInVersion {
        /// The packet type.
        packet_type: u8,
    },
    /// A CONNECT whose `version` differs from the version asked to encode it with.
    VersionMismatch,
}

impl std::fmt::Display for EncodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot encode: {self:?}")
    }
}

impl std::error::Error for EncodeError {}
