//! Round trips of every packet type in both versions, framing, and one malformed example per
//! validation rule.

use bytes::{BufMut, Bytes, BytesMut};

use super::*;
use crate::protocol::packet::*;

const MAX: u32 = 1 << 20;

fn encoded(packet: &Packet, version: Version) -> BytesMut {
    let mut out = BytesMut::new();
    encode(packet, version, &mut out).expect("sample encodes");
    out
}

/// Decodes `bytes` with a codec fixed to `version`.
fn decode_as(version: Version, bytes: &[u8]) -> Result<Decoded, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    let before = buf.clone();
    let result = Codec::with_version(version, MAX).decode(&mut buf);
    if !matches!(result, Ok(Decoded::Packet(_))) {
        assert_eq!(buf, before, "an error or Incomplete consumed bytes");
    }
    result
}

fn error_of(version: Version, bytes: &[u8]) -> DecodeError {
    match decode_as(version, bytes) {
        Err(error) => error,
        other => panic!("expected an error for {bytes:02x?}, got {other:?}"),
    }
}

fn both() -> [Version; 2] {
    [Version::V311, Version::V5]
}

#[test]
fn every_sample_round_trips_in_both_versions() {
    for version in both() {
        for packet in samples::all(version) {
            let mut buf = encoded(&packet, version);
            assert_eq!(buf.len(), encoded_len(&packet, version), "{packet:?}");
            buf.put_slice(b"next");
            let got = Codec::with_version(version, MAX).decode(&mut buf);
            assert_eq!(got, Ok(Decoded::Packet(packet.clone())), "{version:?}");
            assert_eq!(&buf[..], b"next", "consumed exactly one frame");
        }
    }
}

#[test]
fn every_prefix_is_incomplete_and_consumes_nothing() {
    for version in both() {
        for packet in samples::all(version) {
            let whole = encoded(&packet, version);
            for cut in 0..whole.len() {
                match decode_as(version, &whole[..cut]) {
                    Ok(Decoded::Incomplete { needed }) => {
                        assert!(needed >= 1 && cut + needed <= whole.len())
                    }
                    other => panic!("prefix {cut} of {packet:?}: {other:?}"),
                }
            }
        }
    }
}

#[test]
fn needed_is_exact_once_the_fixed_header_is_in() {
    let whole = encoded(
        &Packet::PubAck(Ack {
            pkid: 1,
            ..Ack::default()
        }),
        Version::V311,
    );
    assert_eq!(
        decode_as(Version::V311, &whole[..2]),
        Ok(Decoded::Incomplete { needed: 2 })
    );
}

#[test]
fn payload_and_topic_are_slices_of_the_input() {
    let packet = Packet::Publish(samples::publish("t/x", QoS::AtLeastOnce, b"hello"));
    let mut buf = encoded(&packet, Version::V311);
    let range = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
    let Ok(Decoded::Packet(Packet::Publish(p))) =
        Codec::with_version(Version::V311, MAX).decode(&mut buf)
    else {
        panic!("not a publish")
    };
    assert!(range.contains(&(p.payload.as_ptr() as usize)));
    assert!(range.contains(&(p.topic.as_bytes().as_ptr() as usize)));
}

#[test]
fn publish_header_plus_payload_equals_encode() {
    for version in both() {
        for packet in samples::all(version) {
            let Packet::Publish(p) = &packet else {
                continue;
            };
            let mut header = BytesMut::new();
            write_publish_header(p, version, &mut header).unwrap();
            header.put_slice(&p.payload);
            assert_eq!(header, encoded(&packet, version));
        }
    }
}

#[test]
fn a_short_header_is_the_header_the_general_writer_writes() {
    let topics = [
        &b"t"[..],
        &b"sensors/floor-3/room-12/temperature"[..],
        &[b'x'; 118][..],
    ];
    let payloads = [0, 16, 100, 200, 20_000];
    for (version, topic, size) in both().into_iter().flat_map(|v| {
        topics
            .iter()
            .flat_map(move |t| payloads.map(|n| (v, *t, n)))
    }) {
        for (qos, retain, pkid) in [
            (QoS::AtMostOnce, false, 0),
            (QoS::AtLeastOnce, true, 7),
            (QoS::ExactlyOnce, false, 65_535),
        ] {
            let mut p = samples::publish("a", QoS::AtLeastOnce, b"x");
            p.topic = MqttString::from_bytes(Bytes::copy_from_slice(topic)).unwrap();
            p.payload = Bytes::from(vec![1; size]);
            let shape = Shape {
                qos,
                retain,
                dup: false,
                pkid,
            };
            let mut general = BytesMut::new();
            write_shaped_header(&p, shape, version, &mut general).unwrap();
            let mut short = [0; SHORT_HEADER_MAX];
            let len = short_header(&p, shape, version, &mut short).unwrap();
            assert_eq!(&short[..len], &general[..], "{version:?} {size} {qos:?}");
        }
    }
}

#[test]
fn a_header_with_properties_or_a_long_topic_is_left_to_the_general_writer() {
    let shape = Shape {
        qos: QoS::AtLeastOnce,
        retain: false,
        dup: false,
        pkid: 1,
    };
    let mut out = [0; SHORT_HEADER_MAX];
    let mut p = samples::publish("a", QoS::AtLeastOnce, b"x");
    p.properties = samples::publish_properties().into();
    assert_eq!(short_header(&p, shape, Version::V5, &mut out), None);
    let mut long = samples::publish("a", QoS::AtLeastOnce, b"x");
    long.topic = MqttString::from_bytes(Bytes::from(vec![b'x'; 119])).unwrap();
    assert_eq!(short_header(&long, shape, Version::V311, &mut out), None);
}

#[test]
fn a_5_0_publish_goes_to_a_3_1_1_subscriber_without_properties() {
    let mut p = samples::publish("a", QoS::AtLeastOnce, b"x");
    p.properties = samples::publish_properties().into();
    let bytes = encoded(&Packet::Publish(p.clone()), Version::V311);
    p.properties = Props::default();
    assert_eq!(
        decode_as(Version::V311, &bytes),
        Ok(Decoded::Packet(Packet::Publish(p)))
    );
}

// ---- Framing and version selection ----

#[test]
fn connect_fixes_the_version() {
    for version in both() {
        let mut codec = Codec::new(MAX);
        let mut buf = encoded(
            &Packet::Connect(Box::new(samples::connect(version))),
            version,
        );
        assert!(matches!(
            codec.decode(&mut buf),
            Ok(Decoded::Packet(Packet::Connect(_)))
        ));
        assert_eq!(codec.version(), Some(version));
    }
}

#[test]
fn only_connect_comes_first() {
    // [MQTT-3.1.0-1]
    let mut buf = BytesMut::from(&[0xC0, 0x00][..]);
    let got = Codec::new(MAX).decode(&mut buf);
    assert_eq!(
        got,
        Err(DecodeError::FirstPacketNotConnect { packet_type: 12 })
    );
    assert_eq!(got.unwrap_err().reason_code(), ReasonCode::PROTOCOL_ERROR);
    assert_eq!(buf.len(), 2);
}

#[test]
fn too_large_is_refused_from_the_fixed_header_alone() {
    // Announces 1000 bytes of PUBLISH but sends only the header.
    let mut buf = BytesMut::from(&[0x30, 0xE8, 0x07][..]);
    let got = Codec::with_version(Version::V5, 100).decode(&mut buf);
    assert_eq!(
        got,
        Err(DecodeError::PacketTooLarge {
            size: 1003,
            max: 100
        })
    );
    assert_eq!(got.unwrap_err().reason_code(), ReasonCode::PACKET_TOO_LARGE);
}

#[test]
fn remaining_length_over_four_bytes_is_malformed() {
    let error = error_of(Version::V311, &[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]);
    assert_eq!(error, DecodeError::VarintTooLong);
}

#[test]
fn non_minimal_remaining_length_is_refused_in_5_0_only() {
    // PINGREQ with Remaining Length 0 written in two bytes [MQTT-1.5.5-1].
    let bytes = [0xC0, 0x80, 0x00];
    assert_eq!(error_of(Version::V5, &bytes), DecodeError::NonMinimalVarint);
    assert_eq!(
        decode_as(Version::V311, &bytes),
        Ok(Decoded::Packet(Packet::PingReq))
    );
}

#[test]
fn non_minimal_property_length_is_refused_in_5_0() {
    // PUBACK pkid 1, reason 0, property length 0 written as 0x80 0x00.
    let error = error_of(Version::V5, &[0x40, 0x05, 0, 1, 0, 0x80, 0x00]);
    assert_eq!(error, DecodeError::NonMinimalVarint);
}

#[test]
fn flags_are_checked_per_packet_type() {
    assert!(decode_as(Version::V311, &[0x62, 0x02, 0, 1]).is_ok());
    assert_eq!(
        error_of(Version::V311, &[0x60, 0x02, 0, 1]),
        DecodeError::InvalidFlags {
            packet_type: 6,
            flags: 0
        }
    );
    assert_eq!(
        error_of(Version::V5, &[0x41, 0x02, 0, 1]),
        DecodeError::InvalidFlags {
            packet_type: 4,
            flags: 1
        }
    );
    assert_eq!(
        error_of(Version::V311, &[0xF0, 0x00]),
        DecodeError::ReservedPacketType(15)
    );
    assert_eq!(
        error_of(Version::V5, &[0x00, 0x00]),
        DecodeError::ReservedPacketType(0)
    );
}

#[test]
fn errors_consume_nothing_even_with_more_data_behind() {
    let mut buf = BytesMut::from(&[0x40, 0x02, 0, 0, 0xC0, 0x00][..]);
    let got = Codec::with_version(Version::V311, MAX).decode(&mut buf);
    assert_eq!(got, Err(DecodeError::ZeroPacketId));
    assert_eq!(&buf[..], &[0x40, 0x02, 0, 0, 0xC0, 0x00]);
}

#[test]
fn trailing_bytes_are_malformed() {
    assert_eq!(
        error_of(Version::V311, &[0x40, 0x03, 0, 1, 0]),
        DecodeError::TrailingBytes
    );
    assert_eq!(
        error_of(Version::V311, &[0xE0, 0x01, 0]),
        DecodeError::TrailingBytes
    );
    assert_eq!(
        error_of(Version::V5, &[0xC0, 0x01, 0]),
        DecodeError::TrailingBytes
    );
}

// ---- Strings ----

/// A QoS 0 PUBLISH on `topic` with an empty payload, as 3.1.1.
fn publish_with_topic(topic: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0x30, (2 + topic.len()) as u8, 0, topic.len() as u8];
    bytes.extend_from_slice(topic);
    bytes
}

/// The same with an empty property list when `version` is 5.0.
fn publish_with_topic_in(version: Version, topic: &[u8]) -> Vec<u8> {
    let mut bytes = publish_with_topic(topic);
    if version == Version::V5 {
        bytes[1] += 1;
        bytes.push(0);
    }
    bytes
}

#[test]
fn strings_must_be_well_formed_utf8() {
    // [MQTT-1.5.4-1]: ill-formed, and an encoded surrogate U+D800.
    let bad = publish_with_topic(&[0xC3, 0x28]);
    assert_eq!(error_of(Version::V311, &bad), DecodeError::InvalidUtf8);
    let surrogate = publish_with_topic_in(Version::V5, &[0xED, 0xA0, 0x80]);
    assert_eq!(error_of(Version::V5, &surrogate), DecodeError::InvalidUtf8);
    assert_eq!(
        DecodeError::InvalidUtf8.reason_code(),
        ReasonCode::MALFORMED_PACKET
    );
}

#[test]
fn strings_must_not_hold_nul() {
    // [MQTT-1.5.4-2]
    let nul = publish_with_topic(b"a\0b");
    assert_eq!(error_of(Version::V311, &nul), DecodeError::NullCharacter);
}

// ---- PUBLISH ----

#[test]
fn topic_names_hold_no_wildcards() {
    // [MQTT-3.3.2-2]
    for version in both() {
        for topic in [&b"a/+"[..], b"#", b"a/#"] {
            let error = error_of(version, &publish_with_topic_in(version, topic));
            assert_eq!(error, DecodeError::InvalidTopicName);
        }
    }
    assert_eq!(
        DecodeError::InvalidTopicName.reason_code(),
        ReasonCode::TOPIC_NAME_INVALID
    );
}

#[test]
fn topic_names_in_ascii_and_beyond_are_checked_alike() {
    // Plain ASCII names pass a one-pass check, others the full one: same verdicts.
    for version in both() {
        for topic in ["a/b", "\u{1}/\u{7f}", " ", "/", "é/ü", "温度/1"] {
            let bytes = publish_with_topic_in(version, topic.as_bytes());
            let Ok(Decoded::Packet(Packet::Publish(p))) = decode_as(version, &bytes) else {
                panic!("{topic:?} refused");
            };
            assert_eq!(p.topic.as_str(), topic);
        }
        for topic in ["é/+", "温度/#", "+/é", "a+", "#"] {
            let error = error_of(version, &publish_with_topic_in(version, topic.as_bytes()));
            assert_eq!(error, DecodeError::InvalidTopicName, "{topic:?}");
        }
        let nul = publish_with_topic_in(version, "é\0".as_bytes());
        assert_eq!(error_of(version, &nul), DecodeError::NullCharacter);
    }
}

#[test]
fn empty_topic_name_is_refused_unless_a_5_0_alias_stands_in() {
    // 3.1.1 [MQTT-4.7.3-1]
    let empty = publish_with_topic(b"");
    assert_eq!(
        error_of(Version::V311, &empty),
        DecodeError::InvalidTopicName
    );
    // 5.0 without alias: topic "", property length 0.
    let bytes = [0x30, 0x03, 0, 0, 0];
    assert_eq!(
        error_of(Version::V5, &bytes),
        DecodeError::EmptyTopicWithoutAlias
    );
    // 5.0 with Topic Alias 1.
    let bytes = [0x30, 0x06, 0, 0, 3, 0x23, 0, 1];
    assert!(matches!(
        decode_as(Version::V5, &bytes),
        Ok(Decoded::Packet(_))
    ));
}

#[test]
fn publish_qos_3_and_dup_on_qos_0_are_refused() {
    // [MQTT-3.3.1-4], [MQTT-3.3.1-2]
    assert_eq!(
        error_of(Version::V311, &[0x36, 0x05, 0, 1, b'a', 0, 1]),
        DecodeError::InvalidQoS
    );
    assert_eq!(
        error_of(Version::V311, &[0x38, 0x03, 0, 1, b'a']),
        DecodeError::DupWithQoS0
    );
}

#[test]
fn packet_ids_are_non_zero_where_required() {
    // QoS 1 PUBLISH, PUBACK, SUBSCRIBE, UNSUBSCRIBE with packet id 0 [MQTT-2.2.1-3].
    let cases: [&[u8]; 4] = [
        &[0x32, 0x05, 0, 1, b'a', 0, 0],
        &[0x40, 0x02, 0, 0],
        &[0x82, 0x06, 0, 0, 0, 1, b'a', 0],
        &[0xA2, 0x05, 0, 0, 0, 1, b'a'],
    ];
    for bytes in cases {
        assert_eq!(error_of(Version::V311, bytes), DecodeError::ZeroPacketId);
    }
}

#[test]
fn plain_puback_runs_read_as_the_codec_reads_them() {
    // Plain PUBACKs 1, 0x0102, 7; then a 5.0 PUBACK with a reason code, which is left.
    let mut wire = vec![0x40, 2, 0, 1, 0x40, 2, 1, 2, 0x40, 2, 0, 7];
    wire.extend_from_slice(&[0x40, 3, 0, 9, 0x10]);
    let mut pkids = [0u16; 8];
    assert_eq!(plain_pubacks(&wire, &mut pkids), (3, 12));
    let mut buf = BytesMut::from(&wire[..]);
    let mut codec = Codec::with_version(Version::V5, MAX);
    for want in &pkids[..3] {
        match codec.decode(&mut buf) {
            Ok(Decoded::Packet(Packet::PubAck(ack))) => assert_eq!(ack.pkid, *want),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(buf.len(), wire.len() - 12);
    // As many as fit; packet id 0, another packet and a cut frame stop the run.
    assert_eq!(plain_pubacks(&wire, &mut pkids[..2]), (2, 8));
    assert_eq!(plain_pubacks(&[0x40, 2, 0, 0], &mut pkids), (0, 0));
    assert_eq!(plain_pubacks(&[0x50, 2, 0, 1], &mut pkids), (0, 0));
    assert_eq!(
        plain_pubacks(&[0x40, 2, 0, 1, 0x40, 2, 0], &mut pkids),
        (1, 4)
    );
}

// ---- SUBSCRIBE / UNSUBSCRIBE ----

fn subscribe(filter: &[u8], options: u8) -> Vec<u8> {
    let mut bytes = vec![0x82, (5 + filter.len()) as u8, 0, 1, 0, filter.len() as u8];
    bytes.extend_from_slice(filter);
    bytes.push(options);
    bytes
}

fn subscribe_v5(filter: &[u8], options: u8) -> Vec<u8> {
    let mut bytes = subscribe(filter, options);
    bytes[1] += 1;
    bytes.insert(4, 0); // property length
    bytes
}

#[test]
fn subscribe_needs_a_filter() {
    // [MQTT-3.8.3-2], [MQTT-3.10.3-2]
    assert_eq!(
        error_of(Version::V311, &[0x82, 0x02, 0, 1]),
        DecodeError::NoTopicFilters
    );
    assert_eq!(
        error_of(Version::V5, &[0xA2, 0x03, 0, 1, 0]),
        DecodeError::NoTopicFilters
    );
    assert_eq!(
        DecodeError::NoTopicFilters.reason_code(),
        ReasonCode::PROTOCOL_ERROR
    );
}

#[test]
fn topic_filters_have_wildcards_in_the_right_places() {
    // [MQTT-4.7.1-1], [MQTT-4.7.1-2]
    for filter in [&b"a/#/b"[..], b"a#", b"a+/b", b""] {
        assert_eq!(
            error_of(Version::V311, &subscribe(filter, 0)),
            DecodeError::InvalidTopicFilter
        );
    }
    let unsubscribe = [0xA2, 0x05, 0, 1, 0, 1, b'#'];
    assert!(decode_as(Version::V311, &unsubscribe).is_ok());
    let unsubscribe = [0xA2, 0x06, 0, 1, 0, 2, b'#', b'a'];
    assert_eq!(
        error_of(Version::V311, &unsubscribe),
        DecodeError::InvalidTopicFilter
    );
}

#[test]
fn shared_subscriptions_follow_share_group_filter() {
    // [MQTT-4.8.2-1], [MQTT-4.8.2-2]
    assert!(decode_as(Version::V5, &subscribe_v5(b"$share/g/a/+", 1)).is_ok());
    for filter in [&b"$share/g"[..], b"$share//a", b"$share/g+/a"] {
        let error = error_of(Version::V5, &subscribe_v5(filter, 0));
        assert_eq!(error, DecodeError::InvalidSharedSubscription);
    }
}

#[test]
fn subscription_options_reserved_bits_and_ranges() {
    // 3.1.1: upper six bits reserved [MQTT-3-8.3-4]; 5.0: upper two [MQTT-3.8.3-5].
    let error = error_of(Version::V311, &subscribe(b"a", 0b0000_0100));
    assert_eq!(error, DecodeError::InvalidSubscriptionOptions);
    let error = error_of(Version::V5, &subscribe_v5(b"a", 0b0100_0000));
    assert_eq!(error, DecodeError::InvalidSubscriptionOptions);
    assert_eq!(
        error_of(Version::V5, &subscribe_v5(b"a", 3)),
        DecodeError::InvalidQoS
    );
    let error = error_of(Version::V5, &subscribe_v5(b"a", 0b0011_0000));
    assert_eq!(error, DecodeError::InvalidRetainHandling);
    // No Local on a shared subscription [MQTT-3.8.3-4].
    let error = error_of(Version::V5, &subscribe_v5(b"$share/g/a", 0b0100));
    assert_eq!(error, DecodeError::NoLocalOnSharedSubscription);
}

// ---- CONNECT ----

/// A CONNECT with `name`, `level`, `flags`, keep alive 0 and client id "c"; `tail` follows.
fn connect_bytes(name: &[u8], level: u8, flags: u8, tail: &[u8]) -> Vec<u8> {
    let mut body = vec![0, name.len() as u8];
    body.extend_from_slice(name);
    body.extend_from_slice(&[level, flags, 0, 0]);
    if level == 5 {
        body.push(0);
    }
    body.extend_from_slice(&[0, 1, b'c']);
    body.extend_from_slice(tail);
    let mut bytes = vec![0x10, body.len() as u8];
    bytes.extend(body);
    bytes
}

fn connect_error(bytes: &[u8]) -> DecodeError {
    let mut buf = BytesMut::from(bytes);
    let got = Codec::new(MAX).decode(&mut buf);
    assert_eq!(buf.len(), bytes.len(), "consumed nothing");
    got.expect_err("should be refused")
}

#[test]
fn connect_protocol_name_and_level() {
    // [MQTT-3.1.2-1], [MQTT-3.1.2-2]
    let error = connect_error(&connect_bytes(b"MQIsdp", 3, 2, &[]));
    assert_eq!(error, DecodeError::UnsupportedProtocolName { level: 3 });
    let error = connect_error(&connect_bytes(b"MQTT", 3, 2, &[]));
    assert_eq!(error, DecodeError::UnsupportedProtocolLevel(3));
    assert_eq!(
        error.reason_code(),
        ReasonCode::UNSUPPORTED_PROTOCOL_VERSION
    );
    assert_eq!(
        connect_error(&connect_bytes(b"MQTT", 6, 2, &[])),
        DecodeError::UnsupportedProtocolLevel(6)
    );
}

/// mosquitto's bridges send 3.1.1 as level 0x84 (the bridge bit on level 4): accepted as
/// 3.1.1, and the codec remembers it; other levels with the bit stay refused.
#[test]
fn connect_bridge_level_is_3_1_1_from_a_bridge() {
    for (level, is_bridge) in [(0x84, true), (4, false)] {
        let mut codec = Codec::new(MAX);
        let mut buf = BytesMut::from(&connect_bytes(b"MQTT", level, 2, &[])[..]);
        match codec.decode(&mut buf) {
            Ok(Decoded::Packet(Packet::Connect(c))) => assert_eq!(c.version, Version::V311),
            other => panic!("level {level:#x}: {other:?}"),
        }
        assert_eq!(codec.is_bridge(), is_bridge);
    }
    assert_eq!(
        connect_error(&connect_bytes(b"MQTT", 0x85, 2, &[0])),
        DecodeError::UnsupportedProtocolLevel(0x85)
    );
}

#[test]
fn connect_reserved_bit() {
    // [MQTT-3.1.2-3]
    let error = connect_error(&connect_bytes(b"MQTT", 4, 0b11, &[]));
    assert_eq!(error, DecodeError::ConnectReservedFlag);
}

#[test]
fn connect_will_flags_are_consistent() {
    // Will QoS without Will Flag, Will Retain without Will Flag, Will QoS 3.
    for flags in [0b0000_1010, 0b0010_0010, 0b0001_1110] {
        let error = connect_error(&connect_bytes(b"MQTT", 4, flags, &[]));
        assert_eq!(error, DecodeError::InvalidWillFlags, "{flags:#b}");
    }
}

#[test]
fn connect_will_topic_is_a_topic_name() {
    let will = [0, 1, b'#', 0, 0];
    let error = connect_error(&connect_bytes(b"MQTT", 4, 0b0110, &will));
    assert_eq!(error, DecodeError::InvalidTopicName);
}

#[test]
fn connect_password_needs_user_name_in_3_1_1_only() {
    // [MQTT-3.1.2-22]
    let password = [0, 2, b'p', b'w'];
    let error = connect_error(&connect_bytes(b"MQTT", 4, 0b0100_0010, &password));
    assert_eq!(error, DecodeError::PasswordWithoutUserName);
    let mut buf = BytesMut::from(&connect_bytes(b"MQTT", 5, 0b0100_0010, &password)[..]);
    assert!(Codec::new(MAX).decode(&mut buf).is_ok());
}

#[test]
fn empty_client_id_without_clean_session_is_the_brokers_call() {
    let mut bytes = connect_bytes(b"MQTT", 4, 0, &[]);
    let len = bytes.len();
    bytes[len - 3..].copy_from_slice(&[0, 0, 0]);
    bytes.pop();
    bytes[1] -= 1;
    let mut buf = BytesMut::from(&bytes[..]);
    assert!(matches!(
        Codec::new(MAX).decode(&mut buf),
        Ok(Decoded::Packet(_))
    ));
}

// ---- CONNACK and reason codes ----

#[test]
fn connack_flags_codes_and_session_present() {
    assert_eq!(
        error_of(Version::V311, &[0x20, 0x02, 0x02, 0]),
        DecodeError::InvalidConnAckFlags
    );
    let error = error_of(Version::V311, &[0x20, 0x02, 0, 6]);
    assert_eq!(
        error,
        DecodeError::InvalidReasonCode {
            packet_type: 2,
            code: 6
        }
    );
    let error = error_of(Version::V311, &[0x20, 0x02, 1, 5]);
    assert_eq!(error, DecodeError::SessionPresentWithError);
    let error = error_of(Version::V5, &[0x20, 0x03, 0, 0x01, 0]);
    assert_eq!(
        error,
        DecodeError::InvalidReasonCode {
            packet_type: 2,
            code: 1
        }
    );
}

#[test]
fn reason_codes_must_belong_to_the_packet() {
    // PUBACK 0x92, PUBREL 0x10, SUBACK 0x03, UNSUBACK 0x01, DISCONNECT 0x05, AUTH 0x01.
    let cases: [(&[u8], u8, u8); 6] = [
        (&[0x40, 0x03, 0, 1, 0x92], 4, 0x92),
        (&[0x62, 0x03, 0, 1, 0x10], 6, 0x10),
        (&[0x90, 0x04, 0, 1, 0, 0x03], 9, 0x03),
        (&[0xB0, 0x04, 0, 1, 0, 0x01], 11, 0x01),
        (&[0xE0, 0x01, 0x05], 14, 0x05),
        (&[0xF0, 0x01, 0x01], 15, 0x01),
    ];
    for (bytes, packet_type, code) in cases {
        let error = error_of(Version::V5, bytes);
        assert_eq!(error, DecodeError::InvalidReasonCode { packet_type, code });
    }
    let error = error_of(Version::V311, &[0x90, 0x03, 0, 1, 0x03]);
    assert_eq!(
        error,
        DecodeError::InvalidReasonCode {
            packet_type: 9,
            code: 3
        }
    );
}

#[test]
fn short_acks_are_the_bytes_encode_writes() {
    let acks = |reason: ReasonCode, properties: Props| {
        let a = Ack {
            pkid: 0x1234,
            reason,
            properties,
        };
        [
            Packet::PubAck(a.clone()),
            Packet::PubRec(a.clone()),
            Packet::PubRel(a.clone()),
            Packet::PubComp(a),
        ]
    };
    let mut with_reason_string = Props::default();
    with_reason_string.reason_string = MqttString::from_str_checked("why");
    for version in both() {
        for reason in [ReasonCode::SUCCESS, ReasonCode::NO_MATCHING_SUBSCRIBERS] {
            for props in [Props::default(), with_reason_string.clone()] {
                for packet in acks(reason, props) {
                    let short = short_ack(&packet, version);
                    let is_short = version == Version::V311
                        || (reason == ReasonCode::SUCCESS && packet_props_unset(&packet));
                    assert_eq!(short.is_some(), is_short, "{packet:?} {version:?}");
                    if let Some(short) = short {
                        assert_eq!(&short[..], &encoded(&packet, version)[..], "{packet:?}");
                    }
                }
            }
        }
    }
    assert_eq!(short_ack(&Packet::PingReq, Version::V311), None);
}

fn packet_props_unset(packet: &Packet) -> bool {
    match packet {
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            a.properties.is_unset()
        }
        _ => true,
    }
}

#[test]
fn short_forms_of_5_0_acks_disconnect_and_auth() {
    let ack = |reason| {
        Packet::PubAck(Ack {
            pkid: 1,
            reason,
            properties: Props::default(),
        })
    };
    let decoded = |bytes: &[u8]| decode_as(Version::V5, bytes);
    assert_eq!(
        decoded(&[0x40, 0x02, 0, 1]),
        Ok(Decoded::Packet(ack(ReasonCode(0))))
    );
    assert_eq!(
        decoded(&[0x40, 0x03, 0, 1, 0x10]),
        Ok(Decoded::Packet(ack(ReasonCode(0x10))))
    );
    let disconnect = Packet::Disconnect(Disconnect::default());
    assert_eq!(decoded(&[0xE0, 0x00]), Ok(Decoded::Packet(disconnect)));
    assert_eq!(
        decoded(&[0xF0, 0x00]),
        Ok(Decoded::Packet(Packet::Auth(Auth::default())))
    );
}

// ---- 5.0 properties in whole packets ----

#[test]
fn properties_are_checked_against_the_packet_type() {
    // PUBACK carrying Topic Alias: not allowed (2.2.2.2).
    let error = error_of(Version::V5, &[0x40, 0x07, 0, 1, 0, 3, 0x23, 0, 1]);
    assert_eq!(
        error,
        DecodeError::PropertyNotAllowed {
            id: 0x23,
            packet_type: 4
        }
    );
    // CONNECT with Receive Maximum 0.
    let mut bytes = connect_bytes(b"MQTT", 5, 2, &[]);
    bytes[1] += 3;
    bytes[12] = 3;
    bytes.splice(13..13, [0x21, 0, 0]);
    assert_eq!(
        connect_error(&bytes),
        DecodeError::InvalidPropertyValue(0x21)
    );
}

// ---- Encoding ----

#[test]
fn encode_refuses_what_cannot_be_sent() {
    let mut out = BytesMut::from(&b"keep"[..]);
    let auth = Packet::Auth(Auth::default());
    let error = encode(&auth, Version::V311, &mut out);
    assert_eq!(error, Err(EncodeError::NotInVersion { packet_type: 15 }));
    let mut long = samples::publish("t", QoS::AtMostOnce, b"");
    long.topic = MqttString::from_bytes(Bytes::from(vec![b'a'; 70_000])).unwrap();
    let error = encode(&Packet::Publish(long), Version::V5, &mut out);
    assert_eq!(error, Err(EncodeError::FieldTooLong { len: 70_000 }));
    let mut bad = samples::publish("t", QoS::AtMostOnce, b"");
    bad.properties.session_expiry_interval = Some(1);
    let error = encode(&Packet::Publish(bad), Version::V5, &mut out);
    assert_eq!(
        error,
        Err(EncodeError::PropertyNotAllowed {
            id: 0x11,
            packet_type: 3
        })
    );
    assert_eq!(&out[..], b"keep", "errors leave the output as it was");
}

#[test]
fn a_packet_is_no_larger_than_a_publish_and_its_tag() {
    // Every PUBLISH is moved as a `Packet` from decode to routing: the rare big variants are
    // boxed so that they do not set the size of each of those copies.
    let publish = std::mem::size_of::<Publish>();
    assert!(std::mem::size_of::<Packet>() <= publish + 8);
}

#[test]
fn a_publish_continues_a_run_only_whole_and_on_the_same_topic_qos_and_retain() {
    // QoS 1 PUBLISH on "a/b", packet id 5, payload "xy".
    let wire = [0x32, 9, 0, 3, b'a', b'/', b'b', 0, 5, b'x', b'y'];
    assert!(publish_continues(&wire, 0x32, b"a/b"));
    // DUP set on a resend still continues it.
    let mut dup = wire;
    dup[0] |= 0x08;
    assert!(publish_continues(&dup, 0x32, b"a/b"));
    // Another topic (longer, shorter, other bytes), QoS, RETAIN or packet type does not.
    for topic in [&b"a/bc"[..], b"a/", b"a/c", b""] {
        assert!(!publish_continues(&wire, 0x32, topic), "{topic:?}");
    }
    for first in [0x30, 0x33, 0x34, 0x40] {
        assert!(!publish_continues(&wire, first, b"a/b"), "{first:#x}");
    }
    // Nor a packet cut short, nor a topic length past the frame.
    for len in 0..wire.len() {
        assert!(!publish_continues(&wire[..len], 0x32, b"a/b"), "{len}");
    }
    assert!(!publish_continues(&[0x32, 3, 0, 3, b'a'], 0x32, b"a"));
}
