//! The connection machine driven directly: packets and time in, actions out. No socket, no
//! executor, no sleep; time passes by adding to an `Instant`.

use super::*;
use crate::protocol::{Properties, Subscribe, SubscribeFilter, Unsubscribe};
use bytes::Bytes;

const FULL: Admission = Admission {
    is_server_full: true,
    refusal: None,
};

fn t0() -> Instant {
    Instant::now()
}

fn connect(version: Version, client_id: &str, clean: bool, keep_alive: u16) -> Connect {
    Connect {
        version,
        client_id: MqttString::from_str_checked(client_id).unwrap(),
        clean_start: clean,
        keep_alive_secs: keep_alive,
        username: None,
        password: None,
        will: None,
        properties: Props::default(),
    }
}

/// A machine that accepted a CONNECT of `version` at `now` and sent its CONNACK.
fn connected(version: Version, limits: Limits, now: Instant) -> Connection {
    let mut machine = Connection::new(limits, now);
    machine
        .handle_connect(connect(version, "c", true, 10), now, Admission::default())
        .expect("accepted");
    machine.connack(false);
    machine
}

fn v5(now: Instant) -> Connection {
    connected(Version::V5, Limits::default(), now)
}

fn v3(now: Instant) -> Connection {
    connected(Version::V311, Limits::default(), now)
}

fn publish(topic: &str, qos: QoS, pkid: u16) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: MqttString::from_str_checked(topic).unwrap(),
        pkid,
        properties: Props::default(),
        payload: Bytes::from_static(b"x"),
    }
}

/// The reason of a close action's DISCONNECT.
fn closed_with(action: Action) -> Option<ReasonCode> {
    match action {
        Action::Close(Some(Packet::Disconnect(d))) => Some(d.reason),
        Action::Close(None) => None,
        other => panic!("expected a close, got {other:?}"),
    }
}

fn connack_of(packet: Packet) -> ConnAck {
    match packet {
        Packet::ConnAck(ack) => ack,
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

fn ack_of(packet: Packet) -> Ack {
    match packet {
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubComp(a) | Packet::PubRel(a) => a,
        other => panic!("expected an acknowledgement, got {other:?}"),
    }
}

// CONNECT -------------------------------------------------------------------------------------

#[test]
fn mqtt_3_2_2_connect_accepted_gets_a_connack_with_session_present_as_told() {
    let now = t0();
    let mut machine = Connection::new(Limits::default(), now);
    let accepted = machine
        .handle_connect(
            connect(Version::V311, "dev-1", false, 30),
            now,
            Admission::default(),
        )
        .unwrap();
    assert_eq!(accepted.client_id, "dev-1");
    assert!(
        accepted.is_persistent,
        "3.1.1 Clean Session 0 is persistent"
    );
    let ack = connack_of(machine.connack(true));
    assert_eq!(ack.code, ReasonCode::SUCCESS);
    assert!(ack.session_present);
    assert_eq!(
        *ack.properties,
        Properties::default(),
        "3.1.1 has no properties"
    );
}

#[test]
fn mqtt_3_1_3_8_an_empty_client_id_needs_clean_session_in_3_1_1() {
    let now = t0();
    let mut machine = Connection::new(Limits::default(), now);
    let refused = machine
        .handle_connect(
            connect(Version::V311, "", false, 30),
            now,
            Admission::default(),
        )
        .unwrap_err();
    assert_eq!(refused.code, ReasonCode(connack_v3::IDENTIFIER_REJECTED));
}

#[test]
fn mqtt_3_2_2_16_an_assigned_client_id_is_announced_in_the_v5_connack() {
    let now = t0();
    let mut machine = Connection::new(Limits::default(), now);
    let mut accepted = machine
        .handle_connect(
            connect(Version::V5, "", true, 30),
            now,
            Admission::default(),
        )
        .unwrap();
    machine.assign_client_id(&mut accepted, "ringcast-7".into());
    assert_eq!(accepted.client_id, "ringcast-7");
    let ack = connack_of(machine.connack(false));
    let assigned = ack.properties.assigned_client_identifier.clone();
    assert_eq!(assigned.unwrap().as_str(), "ringcast-7");
}

#[test]
fn mqtt_3_2_2_6_a_full_server_refuses_with_the_version_s_code() {
    let now = t0();
    for (version, code) in [
        (Version::V311, ReasonCode(connack_v3::SERVER_UNAVAILABLE)),
        (Version::V5, ReasonCode::SERVER_BUSY),
    ] {
        let mut machine = Connection::new(Limits::default(), now);
        let refused = machine
            .handle_connect(connect(version, "c", true, 30), now, FULL)
            .unwrap_err();
        assert_eq!(refused.code, code);
    }
}

#[test]
fn mqtt_4_12_0_1_an_unknown_authentication_method_is_refused() {
    let now = t0();
    let mut machine = Connection::new(Limits::default(), now);
    let mut c = connect(Version::V5, "c", true, 30);
    c.properties.authentication_method = MqttString::from_str_checked("SCRAM-SHA-1");
    let refused = machine
        .handle_connect(c, now, Admission::default())
        .unwrap_err();
    assert_eq!(refused.code, ReasonCode::BAD_AUTHENTICATION_METHOD);
}

#[test]
fn mqtt_3_2_2_3_the_v5_connack_tells_the_server_s_limits() {
    let now = t0();
    let limits = Limits {
        receive_max: 20,
        topic_alias_max: 5,
        ..Limits::default()
    };
    let mut machine = Connection::new(limits.clone(), now);
    let mut c = connect(Version::V5, "c", true, 30);
    c.properties.session_expiry_interval = Some(60);
    let accepted = machine
        .handle_connect(c, now, Admission::default())
        .unwrap();
    assert!(accepted.is_persistent, "5.0: a Session Expiry Interval > 0");
    let ack = connack_of(machine.connack(false));
    assert_eq!(ack.properties.receive_maximum, Some(20));
    assert_eq!(ack.properties.topic_alias_maximum, Some(5));
    assert_eq!(
        ack.properties.maximum_packet_size,
        Some(limits.packet_size_max)
    );
    assert_eq!(ack.properties.shared_subscription_available, Some(1));
    assert_eq!(ack.properties.server_keep_alive, None);
}

#[test]
fn mqtt_3_1_2_connect_properties_become_the_peer_limits() {
    let now = t0();
    let mut machine = Connection::new(Limits::default(), now);
    let mut c = connect(Version::V5, "c", true, 30);
    c.properties.receive_maximum = Some(7);
    c.properties.maximum_packet_size = Some(1000);
    c.properties.topic_alias_maximum = Some(3);
    let accepted = machine
        .handle_connect(c, now, Admission::default())
        .unwrap();
    assert_eq!(accepted.peer.receive_max, 7);
    assert_eq!(accepted.peer.packet_size_max, 1000);
    assert_eq!(accepted.peer.topic_alias_max, 3);
}

#[test]
fn mqtt_3_1_4_undecodable_connects_get_the_connack_the_spec_asks_for() {
    let now = t0();
    let mut machine = Connection::new(Limits::default(), now);
    let level = DecodeError::UnsupportedProtocolLevel(7);
    let ack = connack_of(machine.refuse_undecodable(&level, false).unwrap());
    assert_eq!(
        ack.code,
        ReasonCode(connack_v3::UNACCEPTABLE_PROTOCOL_VERSION)
    );
    let malformed = DecodeError::UnexpectedEnd;
    assert!(machine.refuse_undecodable(&malformed, false).is_none());
    let ack = connack_of(machine.refuse_undecodable(&malformed, true).unwrap());
    assert_eq!(ack.code, malformed.reason_code());
}

// Time: CONNECT timeout and keep-alive --------------------------------------------------------

#[test]
fn a_connection_that_sends_no_connect_is_closed_after_the_connect_timeout() {
    let now = t0();
    let limits = Limits {
        connect_timeout_secs: 10,
        ..Limits::default()
    };
    let mut machine = Connection::new(limits, now);
    assert_eq!(machine.read_timeout(now), Some(Duration::from_secs(10)));
    assert!(machine
        .handle_timeout(now + Duration::from_secs(9))
        .is_none());
    let action = machine
        .handle_timeout(now + Duration::from_secs(10))
        .unwrap();
    assert_eq!(closed_with(action), None, "no DISCONNECT before CONNECT");
}

#[test]
fn mqtt_3_1_2_24_silence_for_one_and_a_half_keep_alives_closes() {
    let now = t0();
    let mut machine = v5(now); // keep-alive 10 s
    assert_eq!(machine.read_timeout(now), Some(Duration::from_secs(15)));
    let later = now + Duration::from_millis(14_999);
    assert!(machine.handle_timeout(later).is_none());
    // A packet restarts the count.
    machine.handle(Packet::PingReq, later);
    assert!(machine
        .handle_timeout(later + Duration::from_secs(14))
        .is_none());
    let action = machine
        .handle_timeout(later + Duration::from_secs(15))
        .unwrap();
    assert_eq!(closed_with(action), Some(ReasonCode::KEEP_ALIVE_TIMEOUT));
}

#[test]
fn keep_alive_0_never_times_out() {
    let now = t0();
    let mut machine = Connection::new(Limits::default(), now);
    machine
        .handle_connect(
            connect(Version::V311, "c", true, 0),
            now,
            Admission::default(),
        )
        .unwrap();
    machine.connack(false);
    assert_eq!(machine.read_timeout(now), None);
    assert!(machine
        .handle_timeout(now + Duration::from_secs(86_400))
        .is_none());
}

#[test]
fn mqtt_3_2_2_21_the_server_keep_alive_caps_what_a_v5_client_asks() {
    let now = t0();
    let limits = Limits {
        keep_alive_max_secs: 30,
        ..Limits::default()
    };
    for asked in [0, 100] {
        let mut machine = Connection::new(limits.clone(), now);
        machine
            .handle_connect(
                connect(Version::V5, "c", true, asked),
                now,
                Admission::default(),
            )
            .unwrap();
        let ack = connack_of(machine.connack(false));
        assert_eq!(ack.properties.server_keep_alive, Some(30));
        assert_eq!(machine.read_timeout(now), Some(Duration::from_secs(45)));
    }
    // 3.1.1 cannot be told: the client's own keep-alive stands.
    let mut machine = Connection::new(limits, now);
    machine
        .handle_connect(
            connect(Version::V311, "c", true, 100),
            now,
            Admission::default(),
        )
        .unwrap();
    machine.connack(false);
    assert_eq!(machine.read_timeout(now), Some(Duration::from_secs(150)));
}

#[test]
fn mqtt_3_12_4_1_pingreq_gets_pingresp() {
    let now = t0();
    assert!(matches!(
        v3(now).handle(Packet::PingReq, now),
        Action::Send(Packet::PingResp)
    ));
}

// PUBLISH -------------------------------------------------------------------------------------

#[test]
fn mqtt_3_3_2_12_topic_aliases_set_and_used() {
    let now = t0();
    let mut machine = v5(now);
    let mut first = publish("room/1/temp", QoS::AtMostOnce, 0);
    first.properties.topic_alias = Some(3);
    let Action::Route(routed) = machine.handle(Packet::Publish(first), now) else {
        panic!("routed");
    };
    assert_eq!(routed.topic.as_str(), "room/1/temp");
    assert_eq!(routed.properties.topic_alias, None, "the alias is resolved");
    let mut second = publish("", QoS::AtMostOnce, 0);
    second.properties.topic_alias = Some(3);
    let Action::Route(routed) = machine.handle(Packet::Publish(second), now) else {
        panic!("routed");
    };
    assert_eq!(routed.topic.as_str(), "room/1/temp");
}

#[test]
fn mqtt_3_3_2_9_aliases_0_or_above_the_maximum_are_invalid() {
    let now = t0();
    for alias in [0, Limits::default().topic_alias_max + 1] {
        let mut machine = v5(now);
        let mut p = publish("a", QoS::AtMostOnce, 0);
        p.properties.topic_alias = Some(alias);
        let action = machine.handle(Packet::Publish(p), now);
        assert_eq!(closed_with(action), Some(ReasonCode::TOPIC_ALIAS_INVALID));
    }
}

#[test]
fn an_unknown_topic_alias_with_an_empty_topic_is_a_protocol_error() {
    let now = t0();
    let mut machine = v5(now);
    let mut p = publish("", QoS::AtMostOnce, 0);
    p.properties.topic_alias = Some(1);
    let action = machine.handle(Packet::Publish(p), now);
    assert_eq!(closed_with(action), Some(ReasonCode::PROTOCOL_ERROR));
}

#[test]
fn topics_over_the_configured_length_or_depth_close_the_connection() {
    let now = t0();
    let limits = Limits {
        topic_bytes_max: 8,
        topic_levels_max: 3,
        ..Limits::default()
    };
    for topic in ["123456789", "a/b/c/d", "///"] {
        let mut machine = connected(Version::V5, limits.clone(), now);
        let action = machine.handle(Packet::Publish(publish(topic, QoS::AtLeastOnce, 1)), now);
        assert_eq!(closed_with(action), Some(ReasonCode::TOPIC_NAME_INVALID));
    }
    for topic in ["12345678", "a/b/c", "//", "ab/cd/ef"] {
        let mut machine = connected(Version::V5, limits.clone(), now);
        let action = machine.handle(Packet::Publish(publish(topic, QoS::AtLeastOnce, 1)), now);
        assert!(matches!(action, Action::Route(_)), "{topic}");
    }
    let mut machine = connected(Version::V311, limits, now);
    let action = machine.handle(Packet::Publish(publish("a/b/c/d", QoS::AtMostOnce, 0)), now);
    assert_eq!(
        closed_with(action),
        None,
        "3.1.1 closes without a DISCONNECT"
    );
}

#[test]
fn mqtt_3_3_2_4_a_payload_not_as_its_format_indicator_says_is_refused() {
    let now = t0();
    let bad = |qos, pkid| {
        let mut p = publish("a", qos, pkid);
        p.properties.payload_format_indicator = Some(1);
        p.payload = Bytes::from_static(&[0xff, 0xfe]);
        Packet::Publish(p)
    };
    let action = v5(now).handle(bad(QoS::AtMostOnce, 0), now);
    assert_eq!(
        closed_with(action),
        Some(ReasonCode::PAYLOAD_FORMAT_INVALID)
    );
    for qos in [QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let Action::Send(packet) = v5(now).handle(bad(qos, 9), now) else {
            panic!("an acknowledgement");
        };
        let ack = ack_of(packet);
        assert_eq!(
            (ack.pkid, ack.reason),
            (9, ReasonCode::PAYLOAD_FORMAT_INVALID)
        );
        assert!(ack.properties.reason_string.is_some());
    }
}

#[test]
fn mqtt_3_4_2_2_a_publish_nobody_subscribes_to_is_acknowledged_with_0x10_in_v5() {
    let now = t0();
    let ack = ack_of(v5(now).routed(QoS::AtLeastOnce, 4, false).unwrap());
    assert_eq!(ack.reason, ReasonCode::NO_MATCHING_SUBSCRIBERS);
    let ack = ack_of(v3(now).routed(QoS::AtLeastOnce, 4, false).unwrap());
    assert_eq!(ack.reason, ReasonCode::SUCCESS);
    assert!(v5(now).routed(QoS::AtMostOnce, 0, true).is_none());
    assert!(matches!(
        v5(now).routed(QoS::ExactlyOnce, 4, true),
        Some(Packet::PubRec(_))
    ));
}

#[test]
fn mqtt_4_3_3_2_a_qos2_publish_is_routed_once_until_its_pubrel() {
    let now = t0();
    let mut machine = v5(now);
    let Action::Qos2(p) = machine.handle(Packet::Publish(publish("a", QoS::ExactlyOnce, 5)), now)
    else {
        panic!("QoS 2 goes through the session first");
    };
    assert!(matches!(
        machine.qos2_recorded(p.clone(), true, 1),
        Qos2::Route(_)
    ));
    let Qos2::Answer(pubrec) = machine.qos2_recorded(p, false, 1) else {
        panic!("a re-send is only answered");
    };
    assert_eq!(ack_of(pubrec).pkid, 5);
    let Action::PubRel(pkid) = machine.handle(Packet::PubRel(Ack::default()), now) else {
        panic!("PUBREL goes to the session");
    };
    let pubcomp = ack_of(machine.released(pkid, false));
    assert_eq!(pubcomp.reason, ReasonCode::PACKET_IDENTIFIER_NOT_FOUND);
    assert_eq!(
        ack_of(machine.released(5, true)).reason,
        ReasonCode::SUCCESS
    );
}

#[test]
fn mqtt_3_3_4_8_more_unreleased_qos2_than_receive_maximum_closes_v5() {
    let now = t0();
    let limits = Limits {
        receive_max: 2,
        ..Limits::default()
    };
    let machine = connected(Version::V5, limits.clone(), now);
    let p = publish("a", QoS::ExactlyOnce, 3);
    assert!(matches!(
        machine.qos2_recorded(p.clone(), true, 2),
        Qos2::Route(_)
    ));
    let Qos2::Close(Some(Packet::Disconnect(d))) = machine.qos2_recorded(p.clone(), true, 3) else {
        panic!("closed");
    };
    assert_eq!(d.reason, ReasonCode::RECEIVE_MAXIMUM_EXCEEDED);
    let machine = connected(Version::V311, limits, now);
    assert!(matches!(machine.qos2_recorded(p, true, 3), Qos2::Route(_)));
}

#[test]
fn acknowledgements_from_the_client_go_to_the_session() {
    let now = t0();
    let mut machine = v3(now);
    let ack = |pkid| Ack {
        pkid,
        ..Ack::default()
    };
    assert!(matches!(
        machine.handle(Packet::PubAck(ack(1)), now),
        Action::PubAck(1)
    ));
    assert!(matches!(
        machine.handle(Packet::PubRec(ack(2)), now),
        Action::PubRec(2)
    ));
    assert!(matches!(
        machine.handle(Packet::PubComp(ack(3)), now),
        Action::PubComp(3)
    ));
}

// SUBSCRIBE and UNSUBSCRIBE -------------------------------------------------------------------

#[test]
fn mqtt_3_9_3_filters_over_the_limits_or_the_quota_are_refused_per_entry() {
    let now = t0();
    let limits = Limits {
        topic_bytes_max: 8,
        subscriptions_max: 2,
        ..Limits::default()
    };
    let five = connected(Version::V5, limits.clone(), now);
    let three = connected(Version::V311, limits, now);
    assert_eq!(five.check_filter("a/#", 1), None);
    assert_eq!(
        five.check_filter("a/b/c/d/e/#", 0),
        Some(ReasonCode::TOPIC_FILTER_INVALID)
    );
    assert_eq!(
        five.check_filter("a/#", 2),
        Some(ReasonCode::QUOTA_EXCEEDED)
    );
    assert_eq!(
        three.check_filter("a/#", 2),
        Some(ReasonCode::UNSPECIFIED_ERROR)
    );
    assert_eq!(
        three.check_filter("a/b/c/d/e/#", 0),
        Some(ReasonCode::UNSPECIFIED_ERROR)
    );
}

#[test]
fn mqtt_3_3_1_9_retain_handling_decides_whether_retained_messages_are_sent() {
    let options = |retain_handling| SubscriptionOptions {
        retain_handling,
        ..Default::default()
    };
    assert!(Connection::wants_retained(&options(0), "a/#", true));
    assert!(Connection::wants_retained(&options(1), "a/#", false));
    assert!(!Connection::wants_retained(&options(1), "a/#", true));
    assert!(!Connection::wants_retained(&options(2), "a/#", false));
    assert!(
        !Connection::wants_retained(&options(0), "$share/g/a/#", false),
        "a shared subscription gets none when made"
    );
}

#[test]
fn mqtt_3_8_4_subscribe_and_unsubscribe_are_answered_in_order() {
    let now = t0();
    let mut machine = v5(now);
    let subscribe = Subscribe {
        pkid: 3,
        filters: vec![SubscribeFilter {
            filter: MqttString::from_str_checked("a/#").unwrap(),
            options: SubscriptionOptions::default(),
        }],
        properties: Props::default(),
    };
    assert!(matches!(
        machine.handle(Packet::Subscribe(subscribe), now),
        Action::Subscribe(_)
    ));
    let Packet::SubAck(suback) = machine.suback(3, vec![ReasonCode::GRANTED_QOS_1]) else {
        panic!("SUBACK");
    };
    assert_eq!((suback.pkid, suback.reason_codes.len()), (3, 1));
    let unsubscribe = Unsubscribe {
        pkid: 4,
        filters: vec![],
        properties: Props::default(),
    };
    assert!(matches!(
        machine.handle(Packet::Unsubscribe(unsubscribe), now),
        Action::Unsubscribe(_)
    ));
    let Packet::UnsubAck(unsuback) = machine.unsuback(4, &[true, false]) else {
        panic!("UNSUBACK");
    };
    assert_eq!(
        unsuback.reason_codes,
        [ReasonCode::SUCCESS, ReasonCode::NO_SUBSCRIPTION_EXISTED]
    );
    let Packet::UnsubAck(unsuback) = v3(now).unsuback(4, &[true, false]) else {
        panic!("UNSUBACK");
    };
    assert!(
        unsuback.reason_codes.is_empty(),
        "3.1.1 UNSUBACK has no codes"
    );
}

// DISCONNECT, protocol errors, reason strings -------------------------------------------------

#[test]
fn mqtt_3_14_4_3_disconnect_discards_the_will_unless_0x04() {
    let now = t0();
    let normal = Disconnect::default();
    let with_will = Disconnect {
        reason: ReasonCode::DISCONNECT_WITH_WILL_MESSAGE,
        ..Disconnect::default()
    };
    for (disconnect, expected) in [(normal, false), (with_will, true)] {
        let action = v5(now).handle(Packet::Disconnect(disconnect), now);
        let Action::Disconnect { publish_will, .. } = action else {
            panic!("disconnected");
        };
        assert_eq!(publish_will, expected);
    }
}

#[test]
fn mqtt_3_14_2_2_a_session_that_ends_with_the_connection_cannot_be_revived() {
    let now = t0();
    let revive = Disconnect {
        properties: Properties {
            session_expiry_interval: Some(60),
            ..Properties::default()
        }
        .into(),
        ..Disconnect::default()
    };
    let action = v5(now).handle(Packet::Disconnect(revive.clone()), now);
    assert_eq!(closed_with(action), Some(ReasonCode::PROTOCOL_ERROR));
    // A session with an expiry may change it.
    let mut machine = Connection::new(Limits::default(), now);
    let mut c = connect(Version::V5, "c", true, 10);
    c.properties.session_expiry_interval = Some(10);
    machine
        .handle_connect(c, now, Admission::default())
        .unwrap();
    machine.connack(false);
    let Action::Disconnect {
        session_expiry_secs,
        ..
    } = machine.handle(Packet::Disconnect(revive), now)
    else {
        panic!("disconnected");
    };
    assert_eq!(session_expiry_secs, Some(60));
}

#[test]
fn mqtt_3_1_0_2_a_second_connect_is_a_protocol_error() {
    let now = t0();
    let again = Packet::Connect(Box::new(connect(Version::V5, "c", true, 10)));
    assert_eq!(
        closed_with(v5(now).handle(again, now)),
        Some(ReasonCode::PROTOCOL_ERROR)
    );
    let auth = Packet::Auth(Default::default());
    assert_eq!(
        closed_with(v5(now).handle(auth, now)),
        Some(ReasonCode::PROTOCOL_ERROR)
    );
}

#[test]
fn malformed_input_after_connect_closes_with_the_decoder_s_reason() {
    let now = t0();
    let error = DecodeError::UnexpectedEnd;
    let action = v5(now).handle_decode_error(&error);
    assert_eq!(closed_with(action), Some(error.reason_code()));
    assert_eq!(closed_with(v3(now).handle_decode_error(&error)), None);
}

#[test]
fn mqtt_3_1_2_29_no_reason_strings_on_acknowledgements_when_the_client_asks_for_none() {
    let now = t0();
    let mut machine = Connection::new(Limits::default(), now);
    let mut c = connect(Version::V5, "c", true, 10);
    c.properties.request_problem_information = Some(0);
    machine
        .handle_connect(c, now, Admission::default())
        .unwrap();
    machine.connack(false);
    let ack = ack_of(machine.released(1, false));
    assert_eq!(ack.reason, ReasonCode::PACKET_IDENTIFIER_NOT_FOUND);
    assert!(ack.properties.reason_string.is_none());
    // DISCONNECT may carry one whatever the client asked.
    let Action::Close(Some(Packet::Disconnect(d))) = machine.handle(Packet::PingResp, now) else {
        panic!("closed");
    };
    assert!(d.properties.reason_string.is_some());
}

#[test]
fn mqtt_3_1_2_25_a_reason_string_that_would_pass_the_client_s_maximum_packet_size_is_left_out() {
    let now = t0();
    let mut machine = Connection::new(Limits::default(), now);
    let mut c = connect(Version::V5, "c", true, 10);
    c.properties.maximum_packet_size = Some(20);
    machine
        .handle_connect(c, now, Admission::default())
        .unwrap();
    machine.connack(false);
    let Action::Close(Some(Packet::Disconnect(d))) = machine.handle(Packet::PingResp, now) else {
        panic!("closed");
    };
    assert_eq!(d.reason, ReasonCode::PROTOCOL_ERROR);
    assert!(d.properties.reason_string.is_none());
}

#[test]
fn server_disconnects_are_v5_only() {
    assert!(server_disconnect(Version::V311, ReasonCode::SESSION_TAKEN_OVER).is_none());
    let Some(Packet::Disconnect(d)) =
        server_disconnect(Version::V5, ReasonCode::SESSION_TAKEN_OVER)
    else {
        panic!("DISCONNECT");
    };
    assert_eq!(d.reason, ReasonCode::SESSION_TAKEN_OVER);
}

#[test]
fn mqtt_3_2_2_refused_credentials_get_the_codes_mosquitto_answers() {
    let now = t0();
    let cases = [
        (
            Refusal::NotAuthorized,
            Version::V311,
            ReasonCode(connack_v3::NOT_AUTHORIZED),
        ),
        (
            Refusal::NotAuthorized,
            Version::V5,
            ReasonCode::NOT_AUTHORIZED,
        ),
        (
            Refusal::BadCredentials,
            Version::V311,
            ReasonCode(connack_v3::BAD_USER_NAME_OR_PASSWORD),
        ),
        (
            Refusal::BadCredentials,
            Version::V5,
            ReasonCode::BAD_USER_NAME_OR_PASSWORD,
        ),
    ];
    for (refusal, version, code) in cases {
        let refused = Admission {
            refusal: Some(refusal),
            ..Admission::default()
        };
        let mut machine = Connection::new(Limits::default(), now);
        let ack = machine
            .handle_connect(connect(version, "c", true, 10), now, refused)
            .unwrap_err();
        assert_eq!(ack.code, code, "{refusal:?} in {version:?}");
    }
}

#[test]
fn a_publish_the_acl_denies_is_refused_in_v5_and_acknowledged_in_3_1_1() {
    let now = t0();
    let ack = ack_of(v5(now).publish_denied(QoS::AtLeastOnce, 3).unwrap());
    assert_eq!(ack.reason, ReasonCode::NOT_AUTHORIZED);
    let ack = ack_of(v5(now).publish_denied(QoS::ExactlyOnce, 3).unwrap());
    assert_eq!(ack.reason, ReasonCode::NOT_AUTHORIZED);
    let ack = ack_of(v3(now).publish_denied(QoS::AtLeastOnce, 3).unwrap());
    assert_eq!(ack.reason, ReasonCode::SUCCESS);
    assert!(v3(now).publish_denied(QoS::AtMostOnce, 0).is_none());
    assert_eq!(v3(now).subscribe_denied(), ReasonCode::UNSPECIFIED_ERROR);
    assert_eq!(v5(now).subscribe_denied(), ReasonCode::NOT_AUTHORIZED);
}
