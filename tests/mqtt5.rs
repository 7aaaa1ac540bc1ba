//! MQTT 5.0 end to end over real sockets, each test named after the spec statement it checks
//! and run with 1 and with 4 shards. Most use the raw-bytes client of `common` (exact packets
//! and properties); `rumqttc_v5` at the end uses a real client library.

mod common;

use bytes::Bytes;
use common::*;
use ringcast::protocol::*;
use std::thread::sleep;
use std::time::Duration;

/// A 5.0 CONNECT with `properties`.
fn connect5(id: &str, clean: bool, properties: Properties) -> Connect {
    Connect {
        properties: properties.into(),
        ..connect_packet(id, Version::V5, clean)
    }
}

/// Connects a 5.0 client with a clean start and no properties.
fn v5(addr: std::net::SocketAddr, id: &str) -> Raw {
    Raw::connect_with(addr, connect5(id, true, Properties::default())).0
}

/// Connects a 5.0 client with `properties`.
fn v5_with(
    addr: std::net::SocketAddr,
    id: &str,
    clean: bool,
    properties: Properties,
) -> (Raw, ConnAck) {
    Raw::connect_with(addr, connect5(id, clean, properties))
}

/// A persistent 5.0 session: Session Expiry Interval `secs`.
fn expiring(secs: u32) -> Properties {
    Properties {
        session_expiry_interval: Some(secs),
        ..Properties::default()
    }
}

fn text(s: &str) -> MqttString {
    MqttString::from_str_checked(s).unwrap()
}

/// A 5.0 PUBLISH with `properties`.
fn publish5(topic: &str, payload: &[u8], qos: QoS, pkid: u16, properties: Properties) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: text(topic),
        pkid,
        properties: properties.into(),
        payload: Bytes::copy_from_slice(payload),
    })
}

/// Subscribes with a Subscription Identifier.
fn subscribe_id(c: &mut Raw, filter: &str, qos: QoS, id: u32) {
    c.send(&Packet::Subscribe(Subscribe {
        pkid: 9,
        filters: vec![SubscribeFilter {
            filter: text(filter),
            options: SubscriptionOptions {
                qos,
                ..Default::default()
            },
        }],
        properties: Properties {
            subscription_identifiers: vec![id],
            ..Properties::default()
        }
        .into(),
    }));
    assert!(matches!(c.recv(), Packet::SubAck(a) if a.reason_codes == vec![ReasonCode(qos as u8)]));
}

/// The PUBACK (or PUBREC) answering the last PUBLISH.
fn ack_of(c: &mut Raw) -> Ack {
    match c.recv() {
        Packet::PubAck(a) | Packet::PubRec(a) => a,
        other => panic!("expected PUBACK/PUBREC, got {other:?}"),
    }
}

/// Every PUBLISH that arrives before a quiet spell, acknowledged.
fn drain(c: &mut Raw) -> Vec<Publish> {
    let mut got = Vec::new();
    while let Ok(packet) = c.recv_within(Duration::from_millis(500)) {
        if let Packet::Publish(p) = packet {
            c.ack(&p);
            got.push(p);
        }
    }
    got
}

// ---------------------------------------------------------------------------------------------
// CONNECT / CONNACK

on_1_and_4_shards!(mqtt5_3_2_2_3_connack_carries_server_properties, |shards| {
    let broker = Broker::start(shards);
    let (_c, ack) = v5_with(broker.addr, "props", true, Properties::default());
    let p = &ack.properties;
    assert_eq!(p.receive_maximum, Some(64));
    assert_eq!(p.topic_alias_maximum, Some(64));
    assert_eq!(p.maximum_packet_size, Some(1 << 20));
    assert_eq!(p.retain_available, Some(1));
    assert_eq!(p.maximum_qos, None, "absent means QoS 2 is supported");
    assert_eq!(p.wildcard_subscription_available, Some(1));
    assert_eq!(p.subscription_identifier_available, Some(1));
    assert_eq!(p.shared_subscription_available, Some(1));
    assert_eq!(p.server_keep_alive, None);
});

on_1_and_4_shards!(
    mqtt5_3_2_2_21_server_keep_alive_when_configured_maximum_is_lower,
    |shards| {
        let broker = Broker::start_with(shards, |c| c.limits.keep_alive_max_secs = 10);
        let (_c, ack) = v5_with(broker.addr, "ka", true, Properties::default());
        assert_eq!(ack.properties.server_keep_alive, Some(10));
    }
);

on_1_and_4_shards!(
    mqtt5_3_2_2_16_assigned_client_identifier_for_empty_client_id,
    |shards| {
        let broker = Broker::start(shards);
        let (_c, ack) = v5_with(broker.addr, "", true, Properties::default());
        let id = ack
            .properties
            .assigned_client_identifier
            .clone()
            .expect("assigned id");
        assert!(!id.is_empty());
    }
);

on_1_and_4_shards!(
    mqtt5_4_12_0_1_unknown_authentication_method_gets_0x8c,
    |shards| {
        let broker = Broker::start(shards);
        let mut c = Raw::open(broker.addr, Version::V5);
        let properties = Properties {
            authentication_method: Some(text("SCRAM-SHA-256")),
            ..Properties::default()
        };
        c.send(&Packet::Connect(Box::new(connect5(
            "auth", true, properties,
        ))));
        let packets = c.expect_closed();
        assert!(
            matches!(&packets[..], [Packet::ConnAck(a)] if a.code == ReasonCode::BAD_AUTHENTICATION_METHOD),
            "{packets:?}"
        );
    }
);

on_1_and_4_shards!(
    mqtt5_3_1_2_24_keep_alive_timeout_gets_disconnect_0x8d,
    |shards| {
        let broker = Broker::start(shards);
        let mut connect = connect5("idle", true, Properties::default());
        connect.keep_alive_secs = 1;
        let (mut c, _) = Raw::connect_with(broker.addr, connect);
        let packets = c.expect_closed();
        assert!(
            matches!(&packets[..], [Packet::Disconnect(d)] if d.reason == ReasonCode::KEEP_ALIVE_TIMEOUT),
            "{packets:?}"
        );
    }
);

on_1_and_4_shards!(
    mqtt5_3_1_4_3_session_takeover_gets_disconnect_0x8e,
    |shards| {
        let broker = Broker::start(shards);
        let mut first = v5(broker.addr, "twin");
        let _second = v5(broker.addr, "twin");
        let packets = first.expect_closed();
        assert!(
            matches!(&packets[..], [Packet::Disconnect(d)] if d.reason == ReasonCode::SESSION_TAKEN_OVER),
            "{packets:?}"
        );
    }
);

#[test]
fn mqtt5_3_14_server_shutting_down_gets_disconnect_0x8b() {
    let broker = Broker::start(2);
    let mut c = v5(broker.addr, "bye");
    broker.stop();
    let packets = c.expect_closed();
    assert!(
        matches!(&packets[..], [Packet::Disconnect(d)] if d.reason == ReasonCode::SERVER_SHUTTING_DOWN),
        "{packets:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Reason codes and problem information

on_1_and_4_shards!(
    mqtt5_3_4_2_1_puback_and_pubrec_say_no_matching_subscribers,
    |shards| {
        let broker = Broker::start(shards);
        let mut p = v5(broker.addr, "lonely");
        p.send(&publish5(
            "nobody/here",
            b"x",
            QoS::AtLeastOnce,
            1,
            Properties::default(),
        ));
        assert_eq!(ack_of(&mut p).reason, ReasonCode::NO_MATCHING_SUBSCRIBERS);
        p.send(&publish5(
            "nobody/here",
            b"x",
            QoS::ExactlyOnce,
            2,
            Properties::default(),
        ));
        assert_eq!(ack_of(&mut p).reason, ReasonCode::NO_MATCHING_SUBSCRIBERS);

        let mut s = v5(broker.addr, "listener");
        s.subscribe("some/one", QoS::AtLeastOnce);
        p.send(&publish5(
            "some/one",
            b"x",
            QoS::AtLeastOnce,
            3,
            Properties::default(),
        ));
        assert_eq!(ack_of(&mut p).reason, ReasonCode::SUCCESS);
    }
);

on_1_and_4_shards!(
    mqtt5_3_3_2_4_payload_format_indicator_1_with_invalid_utf8_is_refused,
    |shards| {
        let broker = Broker::start(shards);
        let mut s = v5(broker.addr, "s");
        s.subscribe("pfi", QoS::AtLeastOnce);
        let mut p = v5(broker.addr, "p");
        let utf8 = Properties {
            payload_format_indicator: Some(1),
            ..Properties::default()
        };
        p.send(&publish5(
            "pfi",
            b"ok \xc3\xa9",
            QoS::AtLeastOnce,
            1,
            utf8.clone(),
        ));
        assert_eq!(ack_of(&mut p).reason, ReasonCode::SUCCESS);
        assert_eq!(s.recv_publish().payload, &b"ok \xc3\xa9"[..]);

        p.send(&publish5(
            "pfi",
            b"\xff\xfe",
            QoS::AtLeastOnce,
            2,
            utf8.clone(),
        ));
        let ack = ack_of(&mut p);
        assert_eq!(ack.reason, ReasonCode::PAYLOAD_FORMAT_INVALID);
        assert!(ack.properties.reason_string.is_some());
        s.expect_nothing();

        // QoS 0 has no acknowledgement to carry the refusal: the connection ends with it.
        p.send(&publish5("pfi", b"\xff", QoS::AtMostOnce, 0, utf8));
        let packets = p.expect_closed();
        assert!(
            matches!(&packets[..], [Packet::Disconnect(d)] if d.reason == ReasonCode::PAYLOAD_FORMAT_INVALID),
            "{packets:?}"
        );
    }
);

on_1_and_4_shards!(
    mqtt5_3_1_2_29_no_reason_string_when_request_problem_information_is_0,
    |shards| {
        let broker = Broker::start(shards);
        let quiet = Properties {
            request_problem_information: Some(0),
            ..Properties::default()
        };
        let (mut p, _) = v5_with(broker.addr, "quiet", true, quiet);
        let bad = Properties {
            payload_format_indicator: Some(1),
            ..Properties::default()
        };
        p.send(&publish5("t", b"\xff", QoS::AtLeastOnce, 1, bad));
        let ack = ack_of(&mut p);
        assert_eq!(ack.reason, ReasonCode::PAYLOAD_FORMAT_INVALID);
        assert_eq!(ack.properties, Props::default());
    }
);

on_1_and_4_shards!(
    mqtt5_3_3_2_2_inbound_packet_over_maximum_packet_size_gets_0x95,
    |shards| {
        let broker = Broker::start_with(shards, |c| c.limits.packet_size_max = 128);
        let mut p = v5(broker.addr, "big");
        p.send(&publish5(
            "t",
            &[7u8; 200],
            QoS::AtMostOnce,
            0,
            Properties::default(),
        ));
        let packets = p.expect_closed();
        assert!(
            matches!(&packets[..], [Packet::Disconnect(d)] if d.reason == ReasonCode::PACKET_TOO_LARGE),
            "{packets:?}"
        );
    }
);

// ---------------------------------------------------------------------------------------------
// Expiry: session, message, will delay

on_1_and_4_shards!(
    mqtt5_3_1_2_11_session_is_kept_for_its_expiry_interval_then_dropped,
    |shards| {
        let broker = Broker::start(shards);
        let (mut c, _) = v5_with(broker.addr, "exp", false, expiring(1));
        c.subscribe("kept", QoS::AtLeastOnce);
        c.disconnect();
        let (c, ack) = v5_with(broker.addr, "exp", false, expiring(1));
        assert!(
            ack.session_present,
            "session kept within its expiry interval"
        );
        c.disconnect();
        sleep(Duration::from_millis(1800));
        let (_c, ack) = v5_with(broker.addr, "exp", false, expiring(1));
        assert!(
            !ack.session_present,
            "session dropped after its expiry interval"
        );
    }
);

on_1_and_4_shards!(
    mqtt5_3_14_2_2_disconnect_changes_session_expiry_interval,
    |shards| {
        let broker = Broker::start(shards);
        let (mut c, _) = v5_with(broker.addr, "chg", false, expiring(60));
        c.send(&Packet::Disconnect(Disconnect {
            reason: ReasonCode::SUCCESS,
            properties: expiring(0).into(),
        }));
        // The broker ends the session before it closes the connection.
        c.expect_closed();
        let (_c, ack) = v5_with(broker.addr, "chg", false, expiring(60));
        assert!(!ack.session_present, "DISCONNECT set the expiry to 0");
    }
);

on_1_and_4_shards!(
    mqtt5_3_14_2_2_disconnect_cannot_set_expiry_when_connect_had_zero,
    |shards| {
        let broker = Broker::start(shards);
        let mut c = v5(broker.addr, "zero");
        c.send(&Packet::Disconnect(Disconnect {
            reason: ReasonCode::SUCCESS,
            properties: expiring(60).into(),
        }));
        let packets = c.expect_closed();
        assert!(
            matches!(&packets[..], [Packet::Disconnect(d)] if d.reason == ReasonCode::PROTOCOL_ERROR),
            "{packets:?}"
        );
    }
);

on_1_and_4_shards!(
    mqtt5_3_3_2_5_message_expiry_drops_expired_messages,
    |shards| {
        let broker = Broker::start(shards);
        let (mut s, _) = v5_with(broker.addr, "offline", false, expiring(60));
        s.subscribe("exp/t", QoS::AtLeastOnce);
        s.disconnect();
        let mut p = v5(broker.addr, "p");
        let short = Properties {
            message_expiry_interval: Some(1),
            ..Properties::default()
        };
        let long = Properties {
            message_expiry_interval: Some(100),
            ..Properties::default()
        };
        p.send(&publish5("exp/t", b"short", QoS::AtLeastOnce, 1, short));
        ack_of(&mut p);
        p.send(&publish5("exp/t", b"long", QoS::AtLeastOnce, 2, long));
        ack_of(&mut p);
        sleep(Duration::from_millis(1500));
        let (mut s, ack) = v5_with(broker.addr, "offline", false, expiring(60));
        assert!(ack.session_present);
        let got = drain(&mut s);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].payload, &b"long"[..]);
        // [MQTT-3.3.2-6]: forwarded with what is left of the interval.
        let left = got[0]
            .properties
            .message_expiry_interval
            .expect("interval forwarded");
        assert!((98..=100).contains(&left), "{left}");
    }
);

on_1_and_4_shards!(
    mqtt5_3_1_3_9_will_is_published_after_will_delay_interval,
    |shards| {
        let broker = Broker::start(shards);
        let mut s = v5(broker.addr, "watcher");
        s.subscribe("wills/w", QoS::AtLeastOnce);
        let mut connect = connect5("w", true, expiring(10));
        connect.will = Some(Will {
            topic: text("wills/w"),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Properties {
                will_delay_interval: Some(1),
                ..Properties::default()
            }
            .into(),
        });
        let (w, _) = Raw::connect_with(broker.addr, connect);
        drop(w); // abrupt: the will is due
        s.expect_nothing();
        let will = s.recv_publish();
        assert_eq!(will.payload, &b"gone"[..]);
        assert_eq!(will.properties.will_delay_interval, None);
    }
);

on_1_and_4_shards!(
    mqtt5_3_1_3_9_reconnect_within_will_delay_cancels_the_will,
    |shards| {
        let broker = Broker::start(shards);
        let mut s = v5(broker.addr, "watcher");
        s.subscribe("wills/r", QoS::AtLeastOnce);
        let will = Will {
            topic: text("wills/r"),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Properties {
                will_delay_interval: Some(1),
                ..Properties::default()
            }
            .into(),
        };
        let mut connect = connect5("r", false, expiring(10));
        connect.will = Some(will);
        let (w, _) = Raw::connect_with(broker.addr, connect);
        w.close_without_disconnect(); // the will waits for its delay
        let (_back, ack) = v5_with(broker.addr, "r", false, expiring(10));
        assert!(ack.session_present);
        match s.recv_within(Duration::from_millis(1800)) {
            Err(NoPacket::Timeout) => {}
            other => panic!("the will was cancelled, got {other:?}"),
        }
    }
);

// ---------------------------------------------------------------------------------------------
// Topic aliases, flow control, packet size

on_1_and_4_shards!(
    mqtt5_3_3_2_12_inbound_topic_alias_sets_then_replaces_the_topic,
    |shards| {
        let broker = Broker::start(shards);
        let mut s = v5(broker.addr, "s");
        s.subscribe("alias/in", QoS::AtMostOnce);
        let mut p = v5(broker.addr, "p");
        let alias = Properties {
            topic_alias: Some(3),
            ..Properties::default()
        };
        p.send(&publish5(
            "alias/in",
            b"1",
            QoS::AtMostOnce,
            0,
            alias.clone(),
        ));
        p.send(&publish5("", b"2", QoS::AtMostOnce, 0, alias));
        for payload in [&b"1"[..], b"2"] {
            let got = s.recv_publish();
            assert_eq!(got.topic.as_str(), "alias/in");
            assert_eq!(got.payload, payload);
            assert_eq!(got.properties.topic_alias, None);
        }
    }
);

on_1_and_4_shards!(
    mqtt5_3_3_2_9_topic_alias_above_maximum_gets_disconnect_0x94,
    |shards| {
        let broker = Broker::start_with(shards, |c| c.limits.topic_alias_max = 2);
        let mut p = v5(broker.addr, "p");
        let alias = Properties {
            topic_alias: Some(3),
            ..Properties::default()
        };
        p.send(&publish5("t", b"1", QoS::AtMostOnce, 0, alias));
        let packets = p.expect_closed();
        assert!(
            matches!(&packets[..], [Packet::Disconnect(d)] if d.reason == ReasonCode::TOPIC_ALIAS_INVALID),
            "{packets:?}"
        );
    }
);

on_1_and_4_shards!(
    mqtt5_3_3_2_11_outbound_topic_aliases_only_when_the_client_allows_them,
    |shards| {
        let broker = Broker::start(shards);
        let allow = Properties {
            topic_alias_maximum: Some(1),
            ..Properties::default()
        };
        let (mut s, _) = v5_with(broker.addr, "aliased", true, allow);
        s.subscribe("out/#", QoS::AtMostOnce);
        let mut plain = v5(broker.addr, "plain");
        plain.subscribe("out/#", QoS::AtMostOnce);
        let mut p = v5(broker.addr, "p");
        for topic in ["out/a", "out/a", "out/b"] {
            p.send(&publish5(
                topic,
                b"x",
                QoS::AtMostOnce,
                0,
                Properties::default(),
            ));
        }
        let got: Vec<_> = (0..3).map(|_| s.recv_publish()).collect();
        assert_eq!(
            (got[0].topic.as_str(), got[0].properties.topic_alias),
            ("out/a", Some(1))
        );
        assert_eq!(
            (got[1].topic.as_str(), got[1].properties.topic_alias),
            ("", Some(1))
        );
        // Only one alias allowed: the next topic goes in full, without one.
        assert_eq!(
            (got[2].topic.as_str(), got[2].properties.topic_alias),
            ("out/b", None)
        );
        for _ in 0..3 {
            let got = plain.recv_publish();
            assert!(!got.topic.is_empty());
            assert_eq!(got.properties.topic_alias, None);
        }
    }
);

on_1_and_4_shards!(
    mqtt5_3_3_4_9_client_receive_maximum_bounds_unacknowledged_sends,
    |shards| {
        let broker = Broker::start(shards);
        let small = Properties {
            receive_maximum: Some(2),
            ..Properties::default()
        };
        let (mut s, _) = v5_with(broker.addr, "slow", true, small);
        s.subscribe("rm", QoS::AtLeastOnce);
        let mut p = v5(broker.addr, "p");
        for i in 1..=3u16 {
            p.send(&publish5(
                "rm",
                &[i as u8],
                QoS::AtLeastOnce,
                i,
                Properties::default(),
            ));
            ack_of(&mut p);
        }
        let first = match s.recv() {
            Packet::Publish(p) => p,
            other => panic!("{other:?}"),
        };
        assert!(matches!(s.recv(), Packet::Publish(_)));
        s.expect_nothing();
        s.ack(&first);
        assert_eq!(s.recv_publish().payload, &[3u8][..]);
    }
);

on_1_and_4_shards!(
    mqtt5_3_3_4_8_exceeding_server_receive_maximum_gets_disconnect_0x93,
    |shards| {
        let broker = Broker::start_with(shards, |c| c.limits.receive_max = 2);
        let mut p = v5(broker.addr, "p");
        for pkid in 1..=3u16 {
            p.send(&publish5(
                "t",
                b"x",
                QoS::ExactlyOnce,
                pkid,
                Properties::default(),
            ));
        }
        let packets = p.expect_closed();
        assert!(
            matches!(&packets[..], [Packet::PubRec(_), Packet::PubRec(_), Packet::Disconnect(d)]
                if d.reason == ReasonCode::RECEIVE_MAXIMUM_EXCEEDED),
            "{packets:?}"
        );
    }
);

on_1_and_4_shards!(
    mqtt5_3_1_2_25_packet_over_client_maximum_packet_size_is_not_sent,
    |shards| {
        let broker = Broker::start(shards);
        let small = Properties {
            maximum_packet_size: Some(64),
            ..Properties::default()
        };
        let (mut s, _) = v5_with(broker.addr, "tiny", true, small);
        s.subscribe("mps", QoS::AtLeastOnce);
        let mut p = v5(broker.addr, "p");
        p.send(&publish5(
            "mps",
            &[1u8; 100],
            QoS::AtLeastOnce,
            1,
            Properties::default(),
        ));
        ack_of(&mut p);
        p.send(&publish5(
            "mps",
            b"small",
            QoS::AtLeastOnce,
            2,
            Properties::default(),
        ));
        ack_of(&mut p);
        assert_eq!(s.recv_publish().payload, &b"small"[..]);
        s.expect_nothing();
    }
);

// ---------------------------------------------------------------------------------------------
// Subscription options and identifiers

on_1_and_4_shards!(
    mqtt5_3_8_3_3_no_local_skips_the_publishing_connection,
    |shards| {
        let broker = Broker::start(shards);
        let mut c = v5(broker.addr, "self");
        c.subscribe_with(
            "nl",
            SubscriptionOptions {
                qos: QoS::AtMostOnce,
                no_local: true,
                ..Default::default()
            },
        );
        let mut other = v5(broker.addr, "other");
        other.subscribe("nl", QoS::AtMostOnce);
        c.send(&publish5(
            "nl",
            b"mine",
            QoS::AtMostOnce,
            0,
            Properties::default(),
        ));
        assert_eq!(other.recv_publish().payload, &b"mine"[..]);
        c.expect_nothing();
        other.send(&publish5(
            "nl",
            b"theirs",
            QoS::AtMostOnce,
            0,
            Properties::default(),
        ));
        assert_eq!(c.recv_publish().payload, &b"theirs"[..]);
    }
);

on_1_and_4_shards!(
    mqtt5_3_3_1_12_retain_as_published_keeps_the_retain_flag,
    |shards| {
        let broker = Broker::start(shards);
        let mut rap = v5(broker.addr, "rap");
        rap.subscribe_with(
            "rap/t",
            SubscriptionOptions {
                qos: QoS::AtMostOnce,
                retain_as_published: true,
                ..Default::default()
            },
        );
        let mut plain = v5(broker.addr, "plain");
        plain.subscribe("rap/t", QoS::AtMostOnce);
        let mut p = v5(broker.addr, "p");
        p.publish("rap/t", b"r", QoS::AtMostOnce, true);
        assert!(rap.recv_publish().retain);
        assert!(!plain.recv_publish().retain);
    }
);

/// Subscribes to `filter` with Retain Handling `handling` and returns the retained
/// messages that arrive.
fn retained_after_subscribe(c: &mut Raw, filter: &str, handling: u8) -> Vec<Publish> {
    let options = SubscriptionOptions {
        qos: QoS::AtMostOnce,
        retain_handling: handling,
        ..Default::default()
    };
    assert_eq!(c.subscribe_with(filter, options), vec![ReasonCode(0)]);
    drain(c)
}

on_1_and_4_shards!(mqtt5_3_3_1_9_retain_handling_0_1_2, |shards| {
    let broker = Broker::start(shards);
    let mut p = v5(broker.addr, "p");
    // At QoS 1 the PUBACK comes once every shard holds the retained message.
    p.publish("rh/t", b"kept", QoS::AtLeastOnce, true);
    let mut c = v5(broker.addr, "c");
    // 0: sent at every subscribe [MQTT-3.3.1-9].
    assert_eq!(retained_after_subscribe(&mut c, "rh/t", 0).len(), 1);
    assert_eq!(retained_after_subscribe(&mut c, "rh/t", 0).len(), 1);
    // 1: sent only if the subscription did not exist [MQTT-3.3.1-10].
    assert_eq!(retained_after_subscribe(&mut c, "rh/t", 1).len(), 0);
    assert_eq!(retained_after_subscribe(&mut c, "rh/+", 1).len(), 1);
    // 2: never sent [MQTT-3.3.1-11].
    assert_eq!(retained_after_subscribe(&mut c, "rh/#", 2).len(), 0);
});

on_1_and_4_shards!(
    mqtt5_3_3_4_3_retained_message_carries_the_subscription_identifier,
    |shards| {
        let broker = Broker::start(shards);
        let mut p = v5(broker.addr, "p");
        // At QoS 1 the PUBACK comes once every shard holds the retained message.
        p.publish("rid/t", b"kept", QoS::AtLeastOnce, true);
        let mut c = v5(broker.addr, "c");
        subscribe_id(&mut c, "rid/#", QoS::AtMostOnce, 77);
        let got = c.recv_publish();
        assert!(got.retain);
        assert_eq!(got.properties.subscription_identifiers, vec![77]);
    }
);

on_1_and_4_shards!(
    mqtt5_3_3_4_3_subscription_identifiers_one_per_matching_subscription,
    |shards| {
        let broker = Broker::start(shards);
        let mut s = v5(broker.addr, "ids");
        subscribe_id(&mut s, "ids/+", QoS::AtMostOnce, 1);
        subscribe_id(&mut s, "ids/#", QoS::AtLeastOnce, 2);
        let mut p = v5(broker.addr, "p");
        p.send(&publish5(
            "ids/a",
            b"x",
            QoS::AtLeastOnce,
            1,
            Properties::default(),
        ));
        ack_of(&mut p);
        let got = s.recv_publish();
        let mut ids = got.properties.subscription_identifiers.clone();
        ids.sort_unstable();
        assert_eq!(ids, vec![1, 2]);
        assert_eq!(
            got.qos,
            QoS::AtLeastOnce,
            "highest QoS of the overlapping subscriptions"
        );
        s.expect_nothing();
    }
);

on_1_and_4_shards!(mqtt5_3_3_2_properties_pass_through_unchanged, |shards| {
    let broker = Broker::start(shards);
    let mut s = v5(broker.addr, "s");
    s.subscribe("props", QoS::AtLeastOnce);
    let mut p = v5(broker.addr, "p");
    let properties = Properties {
        payload_format_indicator: Some(1),
        content_type: Some(text("text/plain")),
        response_topic: Some(text("reply/here")),
        correlation_data: Some(Bytes::from_static(b"\x00\x01corr")),
        user_properties: vec![(text("k"), text("v1")), (text("k"), text("v2"))],
        ..Properties::default()
    };
    p.send(&publish5(
        "props",
        b"hello",
        QoS::AtLeastOnce,
        1,
        properties.clone(),
    ));
    ack_of(&mut p);
    assert_eq!(s.recv_publish().properties, properties.into());
});

// ---------------------------------------------------------------------------------------------
// Shared subscriptions

/// Members of `$share/g/shared/t` (5.0 or 3.1.1), one plain subscriber, 10 messages.
fn shared_spread(shards: usize, version: Version) {
    let broker = Broker::start(shards);
    let mut members: Vec<Raw> = (0..2)
        .map(|i| {
            let id = format!("member{i}");
            let (mut m, _) = Raw::connect_with(broker.addr, connect_packet(&id, version, true));
            assert_eq!(
                m.subscribe("$share/g/shared/t", QoS::AtLeastOnce),
                vec![ReasonCode(1)]
            );
            m
        })
        .collect();
    let mut plain = v5(broker.addr, "plain");
    plain.subscribe("shared/t", QoS::AtLeastOnce);
    let mut p = v5(broker.addr, "p");
    for i in 0..10u8 {
        p.send(&publish5(
            "shared/t",
            &[i],
            QoS::AtLeastOnce,
            1 + i as u16,
            Properties::default(),
        ));
        assert_eq!(ack_of(&mut p).reason, ReasonCode::SUCCESS);
    }
    let counts: Vec<Vec<u8>> = members
        .iter_mut()
        .map(|m| drain(m).iter().map(|p| p.payload[0]).collect())
        .collect();
    let mut all: Vec<u8> = counts.concat();
    all.sort_unstable();
    assert_eq!(
        all,
        (0..10).collect::<Vec<_>>(),
        "each message to exactly one member"
    );
    assert!(
        counts.iter().all(|c| c.len() >= 3),
        "fair spread: {counts:?}"
    );
    assert_eq!(drain(&mut plain).len(), 10);
}

on_1_and_4_shards!(
    mqtt5_4_8_2_shared_subscription_each_message_to_one_member,
    |shards| shared_spread(shards, Version::V5)
);

on_1_and_4_shards!(
    mqtt5_4_8_2_shared_subscription_usable_from_v311_clients,
    |shards| shared_spread(shards, Version::V311)
);

on_1_and_4_shards!(
    mqtt5_4_8_2_member_leaving_hands_unacknowledged_messages_to_another,
    |shards| {
        let broker = Broker::start(shards);
        let mut a = v5(broker.addr, "a");
        a.subscribe("$share/g/work", QoS::AtLeastOnce);
        let mut b = v5(broker.addr, "b");
        b.subscribe("$share/g/work", QoS::AtLeastOnce);
        let mut p = v5(broker.addr, "p");
        for i in 1..=2u16 {
            p.send(&publish5(
                "work",
                &[i as u8],
                QoS::AtLeastOnce,
                i,
                Properties::default(),
            ));
            ack_of(&mut p);
        }
        // a takes its message and never acknowledges it, then goes away.
        let taken = match a.recv() {
            Packet::Publish(p) => p.payload[0],
            other => panic!("{other:?}"),
        };
        drop(a);
        let mut got: Vec<u8> = drain(&mut b).iter().map(|p| p.payload[0]).collect();
        got.sort_unstable();
        assert_eq!(got, vec![1, 2], "b got its own and a's ({taken}) message");
    }
);

on_1_and_4_shards!(
    mqtt5_4_8_2_unsubscribed_member_gets_no_more_messages,
    |shards| {
        let broker = Broker::start(shards);
        let mut a = v5(broker.addr, "a");
        a.subscribe("$share/g/u", QoS::AtMostOnce);
        let mut b = v5(broker.addr, "b");
        b.subscribe("$share/g/u", QoS::AtMostOnce);
        b.send(&Packet::Unsubscribe(Unsubscribe {
            pkid: 3,
            filters: vec![text("$share/g/u")],
            properties: Props::default(),
        }));
        assert!(
            matches!(b.recv(), Packet::UnsubAck(u) if u.reason_codes == vec![ReasonCode::SUCCESS])
        );
        let mut p = v5(broker.addr, "p");
        for i in 0..4u8 {
            p.send(&publish5(
                "u",
                &[i],
                QoS::AtLeastOnce,
                1 + i as u16,
                Properties::default(),
            ));
            ack_of(&mut p);
        }
        assert_eq!(drain(&mut a).len(), 4);
        b.expect_nothing();
    }
);

// ---------------------------------------------------------------------------------------------
// A real client library: rumqttc's MQTT 5 client.

mod rumqttc_v5 {
    use super::*;
    use rumqttc::v5::mqttbytes::v5::{Filter, Packet as P, PublishProperties};
    use rumqttc::v5::mqttbytes::QoS as Q;
    use rumqttc::v5::{Event, EventLoop};

    fn block_on<F: std::future::Future<Output = ()>>(body: F) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
            .block_on(body)
    }

    use common::rumqttc_v5::{connect, until};

    async fn suback(events: &mut EventLoop) {
        until(events, |e| {
            matches!(e, Event::Incoming(P::SubAck(_))).then_some(())
        })
        .await
    }

    on_1_and_4_shards!(
        mqtt5_3_3_2_17_user_properties_pass_through_rumqttc,
        |shards| block_on(async move {
            let broker = Broker::start(shards);
            let (sub, mut sub_events) = connect(&broker, "rsub").await;
            sub.subscribe("r/props", Q::AtLeastOnce).await.unwrap();
            suback(&mut sub_events).await;
            let (publisher, mut pub_events) = connect(&broker, "rpub").await;
            let properties = PublishProperties {
                user_properties: vec![("origin".into(), "rumqttc".into())],
                content_type: Some("application/json".into()),
                response_topic: Some("r/reply".into()),
                correlation_data: Some(Bytes::from_static(b"42")),
                ..Default::default()
            };
            publisher
                .publish_with_properties("r/props", Q::AtLeastOnce, false, "{}", properties)
                .await
                .unwrap();
            until(&mut pub_events, |e| {
                matches!(e, Event::Incoming(P::PubAck(_))).then_some(())
            })
            .await;
            let got = until(&mut sub_events, |e| match e {
                Event::Incoming(P::Publish(p)) => Some(p.clone()),
                _ => None,
            })
            .await;
            let props = got.properties.expect("properties");
            assert_eq!(
                props.user_properties,
                vec![("origin".into(), "rumqttc".into())]
            );
            assert_eq!(props.content_type.as_deref(), Some("application/json"));
            assert_eq!(props.response_topic.as_deref(), Some("r/reply"));
            assert_eq!(props.correlation_data.as_deref(), Some(&b"42"[..]));
        })
    );

    on_1_and_4_shards!(mqtt5_4_8_2_shared_subscription_with_rumqttc, |shards| {
        block_on(async move {
            let broker = Broker::start(shards);
            let mut members = Vec::new();
            for id in ["rm1", "rm2"] {
                let (client, mut events) = connect(&broker, id).await;
                client
                    .subscribe_many(vec![Filter::new("$share/grp/r/shared", Q::AtMostOnce)])
                    .await
                    .unwrap();
                suback(&mut events).await;
                members.push((client, events));
            }
            let (publisher, mut pub_events) = connect(&broker, "rp").await;
            for i in 0..4u8 {
                publisher
                    .publish("r/shared", Q::AtLeastOnce, false, vec![i])
                    .await
                    .unwrap();
                until(&mut pub_events, |e| {
                    matches!(e, Event::Incoming(P::PubAck(_))).then_some(())
                })
                .await;
            }
            for (_, events) in &mut members {
                for _ in 0..2 {
                    until(events, |e| {
                        matches!(e, Event::Incoming(P::Publish(_))).then_some(())
                    })
                    .await;
                }
            }
        })
    });
}
