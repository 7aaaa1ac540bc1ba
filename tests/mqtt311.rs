//! MQTT 3.1.1 end to end over real sockets, each test named after the spec statement it checks
//! and run with 1 and with 4 shards.

mod common;

use common::*;
use ringcast::protocol::*;
use std::time::Duration;

fn v3(addr: std::net::SocketAddr, id: &str, clean: bool) -> (Raw, ConnAck) {
    Raw::connect_with(addr, connect_packet(id, Version::V311, clean))
}

/// Waits until the broker has settled the CONNECT of one of several racers with one client id:
/// its CONNACK came, or its connection closed (a racer taken over while its own claim was
/// pending gets no CONNACK). A CONNACK comes only after the previous holder's connection was
/// closed to further packets, so once every racer is settled a PINGREQ finds the survivor.
fn settle(racer: &mut Raw) {
    match racer.recv_within(WAIT) {
        Ok(Packet::ConnAck(_)) | Err(NoPacket::Closed) => {}
        other => panic!("expected CONNACK or a close, got {other:?}"),
    }
}

on_1_and_4_shards!(
    mqtt_3_2_2_connack_accepts_and_pingreq_is_answered,
    |shards| {
        let broker = Broker::start(shards);
        let (mut c, ack) = v3(broker.addr, "c1", true);
        assert!(!ack.session_present);
        c.send(&Packet::PingReq);
        assert_eq!(c.recv(), Packet::PingResp);
    }
);

on_1_and_4_shards!(
    mqtt_3_1_2_2_unsupported_protocol_level_gets_return_code_1,
    |shards| {
        let broker = Broker::start(shards);
        let mut c = Raw::open(broker.addr, Version::V311);
        // CONNECT with protocol level 3.
        c.send_bytes(&[
            0x10, 0x0e, 0, 4, b'M', b'Q', b'T', b'T', 3, 2, 0, 60, 0, 2, b'i', b'd',
        ]);
        let packets = c.expect_closed();
        assert!(
            matches!(&packets[..], [Packet::ConnAck(a)] if a.code == ReasonCode(1)),
            "{packets:?}"
        );
    }
);

on_1_and_4_shards!(
    mqtt_3_1_3_8_empty_client_id_with_persistent_session_is_rejected,
    |shards| {
        let broker = Broker::start(shards);
        let mut c = Raw::open(broker.addr, Version::V311);
        c.send(&Packet::Connect(Box::new(connect_packet(
            "",
            Version::V311,
            false,
        ))));
        let packets = c.expect_closed();
        assert!(
            matches!(&packets[..], [Packet::ConnAck(a)] if a.code == ReasonCode(2)),
            "{packets:?}"
        );
    }
);

on_1_and_4_shards!(
    mqtt_3_1_3_6_empty_client_id_with_clean_session_is_assigned,
    |shards| {
        let broker = Broker::start(shards);
        let (mut c, _) = v3(broker.addr, "", true);
        assert_eq!(c.subscribe("t", QoS::AtMostOnce), vec![ReasonCode(0)]);
    }
);

on_1_and_4_shards!(mqtt_3_1_0_1_first_packet_must_be_connect, |shards| {
    let broker = Broker::start(shards);
    let mut c = Raw::open(broker.addr, Version::V311);
    c.send(&Packet::PingReq);
    assert!(c.expect_closed().is_empty());
});

on_1_and_4_shards!(
    mqtt_3_1_0_2_second_connect_is_a_protocol_violation,
    |shards| {
        let broker = Broker::start(shards);
        let (mut c, _) = v3(broker.addr, "twice", true);
        c.send(&Packet::Connect(Box::new(connect_packet(
            "twice",
            Version::V311,
            true,
        ))));
        c.expect_closed();
    }
);

on_1_and_4_shards!(
    mqtt_3_1_4_2_same_client_id_takes_over_the_old_connection,
    |shards| {
        let broker = Broker::start(shards);
        let (mut old, _) = v3(broker.addr, "dup-id", true);
        // With 4 shards the second connection lands on another shard (round-robin placement).
        let (mut new, _) = v3(broker.addr, "dup-id", true);
        old.expect_closed();
        new.send(&Packet::PingReq);
        assert_eq!(new.recv(), Packet::PingResp);
    }
);

on_1_and_4_shards!(
    mqtt_3_1_2_24_keep_alive_expiry_closes_and_sends_will,
    |shards| {
        let broker = Broker::start(shards);
        let mut watcher = Raw::connect(broker.addr, "watcher");
        watcher.subscribe("wills/ka", QoS::AtLeastOnce);
        let mut connect = connect_packet("sleepy", Version::V311, true);
        connect.keep_alive_secs = 1;
        connect.will = Some(Will {
            topic: "wills/ka".into(),
            payload: bytes::Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Props::default(),
        });
        let (mut sleepy, _) = Raw::connect_with(broker.addr, connect);
        let started = std::time::Instant::now();
        sleepy.expect_closed();
        assert!(
            started.elapsed() >= Duration::from_millis(1400),
            "closed after {:?}",
            started.elapsed()
        );
        let will = watcher.recv_publish();
        assert_eq!(&will.payload[..], b"gone");
    }
);

on_1_and_4_shards!(mqtt_3_1_2_10_will_is_sent_when_the_socket_drops, |shards| {
    let broker = Broker::start(shards);
    let mut watcher = Raw::connect(broker.addr, "watcher");
    watcher.subscribe("wills/#", QoS::AtLeastOnce);
    let mut connect = connect_packet("dropper", Version::V311, true);
    connect.will = Some(Will {
        topic: "wills/drop".into(),
        payload: bytes::Bytes::from_static(b"dropped"),
        qos: QoS::AtMostOnce,
        retain: true,
        properties: Props::default(),
    });
    let (dropper, _) = Raw::connect_with(broker.addr, connect);
    drop(dropper);
    let will = watcher.recv_publish();
    assert_eq!(&will.payload[..], b"dropped");
    assert_eq!(will.topic.as_str(), "wills/drop");
    // Will Retain: a later subscriber gets it as a retained message.
    let mut late = Raw::connect(broker.addr, "late");
    late.subscribe("wills/drop", QoS::AtMostOnce);
    let retained = late.recv_publish();
    assert!(retained.retain);
});

on_1_and_4_shards!(mqtt_3_14_4_3_disconnect_discards_the_will, |shards| {
    let broker = Broker::start(shards);
    let mut watcher = Raw::connect(broker.addr, "watcher");
    watcher.subscribe("wills/#", QoS::AtMostOnce);
    let mut connect = connect_packet("polite", Version::V311, true);
    connect.will = Some(Will {
        topic: "wills/polite".into(),
        payload: bytes::Bytes::from_static(b"x"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Props::default(),
    });
    let (polite, _) = Raw::connect_with(broker.addr, connect);
    polite.disconnect();
    watcher.expect_nothing();
});

on_1_and_4_shards!(
    mqtt_4_3_qos_0_1_2_are_delivered_at_the_granted_qos,
    |shards| {
        let broker = Broker::start(shards);
        let mut sub = Raw::connect(broker.addr, "sub");
        assert_eq!(sub.subscribe("q/2", QoS::ExactlyOnce), vec![ReasonCode(2)]);
        assert_eq!(sub.subscribe("q/1", QoS::AtLeastOnce), vec![ReasonCode(1)]);
        let mut publisher = Raw::connect(broker.addr, "pub");
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            publisher.publish("q/2", format!("{qos:?}").as_bytes(), qos, false);
            let got = sub.recv_publish();
            assert_eq!(got.qos, qos);
            assert_eq!(&got.payload[..], format!("{qos:?}").as_bytes());
        }
        // Delivered QoS is the minimum of publish QoS and granted QoS [MQTT-3.8.4-6].
        publisher.publish("q/1", b"two", QoS::ExactlyOnce, false);
        assert_eq!(sub.recv_publish().qos, QoS::AtLeastOnce);
    }
);

on_1_and_4_shards!(
    mqtt_4_3_3_2_inbound_qos2_duplicate_is_not_forwarded_twice,
    |shards| {
        let broker = Broker::start(shards);
        let mut sub = Raw::connect(broker.addr, "sub");
        sub.subscribe("x", QoS::ExactlyOnce);
        let mut publisher = Raw::connect(broker.addr, "pub");
        publisher.send(&publish_packet("x", b"once", QoS::ExactlyOnce, false, 5));
        assert!(matches!(publisher.recv(), Packet::PubRec(a) if a.pkid == 5));
        let mut dup = publish_packet("x", b"once", QoS::ExactlyOnce, false, 5);
        if let Packet::Publish(p) = &mut dup {
            p.dup = true;
        }
        publisher.send(&dup);
        assert!(matches!(publisher.recv(), Packet::PubRec(a) if a.pkid == 5));
        publisher.send(&Packet::PubRel(Ack {
            pkid: 5,
            ..Ack::default()
        }));
        assert!(matches!(publisher.recv(), Packet::PubComp(a) if a.pkid == 5));
        assert_eq!(&sub.recv_publish().payload[..], b"once");
        sub.expect_nothing();
    }
);

on_1_and_4_shards!(
    mqtt_3_8_4_subscribe_wildcards_and_the_dollar_rule,
    |shards| {
        let broker = Broker::start(shards);
        let mut hash = Raw::connect(broker.addr, "hash");
        hash.subscribe("#", QoS::AtMostOnce);
        let mut sport = Raw::connect(broker.addr, "sport");
        sport.subscribe("sport/#", QoS::AtMostOnce);
        let mut plus = Raw::connect(broker.addr, "plus");
        plus.subscribe("sport/+/player1", QoS::AtMostOnce);
        // A `$` topic of the application's own: clients may not write under `$SYS`.
        let mut sys = Raw::connect(broker.addr, "sys");
        sys.subscribe("$app/#", QoS::AtMostOnce);
        let mut publisher = Raw::connect(broker.addr, "pub");
        // [MQTT-4.7.1-2]: "sport/#" matches "sport" itself.
        publisher.publish("sport", b"1", QoS::AtMostOnce, false);
        assert_eq!(&hash.recv_publish().payload[..], b"1");
        assert_eq!(&sport.recv_publish().payload[..], b"1");
        publisher.publish("sport/tennis/player1", b"2", QoS::AtMostOnce, false);
        assert_eq!(&hash.recv_publish().payload[..], b"2");
        assert_eq!(&sport.recv_publish().payload[..], b"2");
        assert_eq!(&plus.recv_publish().payload[..], b"2");
        // [MQTT-4.7.2-1]: "#" does not match topics starting with "$".
        publisher.publish("$app/test", b"3", QoS::AtMostOnce, false);
        assert_eq!(&sys.recv_publish().payload[..], b"3");
        hash.expect_nothing();
    }
);

on_1_and_4_shards!(
    mqtt_3_3_5_1_overlapping_subscriptions_deliver_one_copy_at_the_highest_qos,
    |shards| {
        let broker = Broker::start(shards);
        let mut sub = Raw::connect(broker.addr, "sub");
        sub.subscribe("a/+", QoS::AtMostOnce);
        sub.subscribe("a/#", QoS::AtLeastOnce);
        sub.subscribe("a/b", QoS::AtMostOnce);
        let mut publisher = Raw::connect(broker.addr, "pub");
        publisher.publish("a/b", b"x", QoS::ExactlyOnce, false);
        let got = sub.recv_publish();
        assert_eq!(got.qos, QoS::AtLeastOnce);
        sub.expect_nothing();
    }
);

on_1_and_4_shards!(mqtt_3_10_4_unsubscribe_stops_delivery, |shards| {
    let broker = Broker::start(shards);
    let mut sub = Raw::connect(broker.addr, "sub");
    sub.subscribe("u/t", QoS::AtMostOnce);
    sub.send(&Packet::Unsubscribe(Unsubscribe {
        pkid: 3,
        filters: vec!["u/t".into()],
        properties: Props::default(),
    }));
    assert!(matches!(sub.recv(), Packet::UnsubAck(a) if a.pkid == 3));
    let mut publisher = Raw::connect(broker.addr, "pub");
    publisher.publish("u/t", b"x", QoS::AtLeastOnce, false);
    sub.expect_nothing();
});

on_1_and_4_shards!(
    mqtt_3_3_1_retained_messages_stored_replaced_and_cleared,
    |shards| {
        let broker = Broker::start(shards);
        let mut publisher = Raw::connect(broker.addr, "pub");
        publisher.publish("r/a", b"first", QoS::AtLeastOnce, true);
        publisher.publish("r/a", b"second", QoS::AtLeastOnce, true);
        publisher.publish("r/b", b"other", QoS::AtLeastOnce, true);
        let mut sub = Raw::connect(broker.addr, "sub");
        sub.subscribe("r/a", QoS::AtLeastOnce);
        let got = sub.recv_publish();
        // [MQTT-3.3.1-6]: sent on subscribe with RETAIN = 1, and replaced [MQTT-3.3.1-7].
        assert!(got.retain);
        assert_eq!(&got.payload[..], b"second");
        sub.expect_nothing();
        // [MQTT-3.3.1-9]: forwarded live with RETAIN = 0.
        publisher.publish("r/a", b"live", QoS::AtMostOnce, true);
        let live = sub.recv_publish();
        assert!(!live.retain);
        // [MQTT-3.3.1-10]: an empty retained payload clears the topic.
        publisher.publish("r/a", b"", QoS::AtLeastOnce, true);
        assert!(sub.recv_publish().payload.is_empty());
        let mut late = Raw::connect(broker.addr, "late");
        late.subscribe("r/#", QoS::AtMostOnce);
        assert_eq!(&late.recv_publish().payload[..], b"other");
        late.expect_nothing();
    }
);

on_1_and_4_shards!(
    mqtt_3_1_2_4_persistent_session_keeps_subscriptions_and_queues_offline,
    |shards| {
        let broker = Broker::start(shards);
        let (mut sub, ack) = v3(broker.addr, "durable", false);
        assert!(!ack.session_present);
        sub.subscribe("d/t", QoS::AtLeastOnce);
        sub.disconnect();
        let mut publisher = Raw::connect(broker.addr, "pub");
        publisher.publish("d/t", b"while-away-1", QoS::AtLeastOnce, false);
        publisher.publish("d/t", b"while-away-0", QoS::AtMostOnce, false);
        publisher.publish("d/t", b"while-away-2", QoS::ExactlyOnce, false);
        let (mut sub, ack) = v3(broker.addr, "durable", false);
        assert!(ack.session_present, "[MQTT-3.2.2-2]");
        assert_eq!(&sub.recv_publish().payload[..], b"while-away-1");
        assert_eq!(&sub.recv_publish().payload[..], b"while-away-2");
        sub.expect_nothing();
        // The subscription survived: live messages flow too.
        publisher.publish("d/t", b"live", QoS::AtLeastOnce, false);
        assert_eq!(&sub.recv_publish().payload[..], b"live");
    }
);

on_1_and_4_shards!(
    mqtt_3_1_2_6_clean_session_discards_the_old_session,
    |shards| {
        let broker = Broker::start(shards);
        let (mut sub, _) = v3(broker.addr, "fickle", false);
        sub.subscribe("c/t", QoS::AtLeastOnce);
        sub.disconnect();
        let (mut sub, ack) = v3(broker.addr, "fickle", true);
        assert!(!ack.session_present);
        let mut publisher = Raw::connect(broker.addr, "pub");
        publisher.publish("c/t", b"x", QoS::AtLeastOnce, false);
        sub.expect_nothing();
    }
);

on_1_and_4_shards!(
    mqtt_4_4_0_1_unacknowledged_messages_are_resent_with_dup_on_reconnect,
    |shards| {
        let broker = Broker::start(shards);
        let (mut sub, _) = v3(broker.addr, "forgetful", false);
        sub.subscribe("f/t", QoS::AtLeastOnce);
        let mut publisher = Raw::connect(broker.addr, "pub");
        publisher.publish("f/t", b"unacked", QoS::AtLeastOnce, false);
        let first = match sub.recv() {
            Packet::Publish(p) => p,
            other => panic!("{other:?}"),
        };
        assert!(!first.dup);
        drop(sub); // no PUBACK
        let (mut sub, ack) = v3(broker.addr, "forgetful", false);
        assert!(ack.session_present);
        let again = sub.recv_publish();
        assert!(again.dup);
        assert_eq!(again.pkid, first.pkid);
        assert_eq!(&again.payload[..], b"unacked");
    }
);

on_1_and_4_shards!(mqtt_3_3_2_order_from_one_publisher_is_kept, |shards| {
    let broker = Broker::start(shards);
    let mut subs: Vec<Raw> = (0..4)
        .map(|i| Raw::connect(broker.addr, &format!("s{i}")))
        .collect();
    for sub in &mut subs {
        sub.subscribe("ord", QoS::AtLeastOnce);
    }
    let mut publisher = Raw::connect(broker.addr, "pub");
    for i in 0..200u32 {
        let qos = if i % 2 == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        };
        publisher.publish("ord", &i.to_be_bytes(), qos, false);
    }
    for sub in &mut subs {
        for i in 0..200u32 {
            assert_eq!(&sub.recv_publish().payload[..], &i.to_be_bytes());
        }
    }
});

on_1_and_4_shards!(
    mqtt_4_8_protocol_violation_closes_only_that_connection,
    |shards| {
        let broker = Broker::start(shards);
        let mut good = Raw::connect(broker.addr, "good");
        good.subscribe("ok", QoS::AtMostOnce);
        let mut bad = Raw::connect(broker.addr, "bad");
        // PUBLISH with QoS 3 is malformed [MQTT-3.3.1-4].
        bad.send_bytes(&[0x36, 0x05, 0x00, 0x01, b't', 0x00, 0x01]);
        bad.expect_closed();
        let mut publisher = Raw::connect(broker.addr, "pub");
        publisher.publish("ok", b"still here", QoS::AtMostOnce, false);
        assert_eq!(&good.recv_publish().payload[..], b"still here");
    }
);

on_1_and_4_shards!(
    mqtt_3_8_3_2_wildcard_in_publish_topic_closes_the_connection,
    |shards| {
        let broker = Broker::start(shards);
        let mut bad = Raw::connect(broker.addr, "bad");
        bad.send_bytes(&[0x30, 0x05, 0x00, 0x03, b'a', b'/', b'#']);
        bad.expect_closed();
    }
);

on_1_and_4_shards!(mqtt_3_9_3_invalid_filter_gets_0x80, |shards| {
    let broker = Broker::start_with(shards, |c| c.limits.topic_levels_max = 3);
    let mut c = Raw::connect(broker.addr, "deep");
    assert_eq!(
        c.subscribe("a/b/c/d", QoS::AtMostOnce),
        vec![ReasonCode(0x80)]
    );
    assert_eq!(c.subscribe("a/b/c", QoS::AtMostOnce), vec![ReasonCode(0)]);
});

on_1_and_4_shards!(
    mqtt_3_1_4_2_concurrent_connects_with_one_client_id_leave_exactly_one,
    |shards| {
        let broker = Broker::start(shards);
        let addr = broker.addr;
        let mut racers: Vec<Raw> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    scope.spawn(move || {
                        let mut raw = Raw::open(addr, Version::V311);
                        raw.send(&Packet::Connect(Box::new(connect_packet(
                            "racer",
                            Version::V311,
                            true,
                        ))));
                        raw
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        racers.iter_mut().for_each(settle);
        let mut alive = 0;
        for mut raw in racers {
            raw.send(&Packet::PingReq);
            loop {
                match raw.recv_within(Duration::from_secs(2)) {
                    Ok(Packet::PingResp) => {
                        alive += 1;
                        break;
                    }
                    Ok(_) => continue, // CONNACK, or DISCONNECT
                    Err(_) => break,
                }
            }
        }
        assert_eq!(alive, 1, "exactly one connection keeps the client id");
    }
);

on_1_and_4_shards!(
    mqtt_3_2_2_3_server_unavailable_when_connections_max_is_reached,
    |shards| {
        let broker = Broker::start_with(shards, |c| c.limits.connections_max = 2);
        let _a = Raw::connect(broker.addr, "a");
        let _b = Raw::connect(broker.addr, "b");
        let mut c = Raw::open(broker.addr, Version::V311);
        c.send(&Packet::Connect(Box::new(connect_packet(
            "c",
            Version::V311,
            true,
        ))));
        let packets = c.expect_closed();
        assert!(
            matches!(&packets[..], [Packet::ConnAck(a)] if a.code == ReasonCode(3)),
            "{packets:?}"
        );
    }
);

on_1_and_4_shards!(
    mqtt_3_1_2_4_concurrent_reconnects_keep_the_persistent_session,
    |shards| {
        let broker = Broker::start(shards);
        let (mut keeper, _) = v3(broker.addr, "keeper", false);
        keeper.subscribe("k/t", QoS::AtLeastOnce);
        keeper.disconnect();
        let mut publisher = Raw::connect(broker.addr, "pub");
        publisher.publish("k/t", b"kept", QoS::AtLeastOnce, false);
        let addr = broker.addr;
        let mut racers: Vec<Raw> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..6)
                .map(|_| {
                    scope.spawn(move || {
                        let mut raw = Raw::open(addr, Version::V311);
                        raw.send(&Packet::Connect(Box::new(connect_packet(
                            "keeper",
                            Version::V311,
                            false,
                        ))));
                        raw
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        racers.iter_mut().for_each(settle);
        let mut survivors = Vec::new();
        let mut delivered = 0;
        for mut raw in racers {
            raw.send(&Packet::PingReq);
            while let Ok(packet) = raw.recv_within(Duration::from_secs(2)) {
                match packet {
                    Packet::Publish(p) => {
                        delivered += usize::from(&p.payload[..] == b"kept");
                        raw.ack(&p);
                    }
                    Packet::PingResp => {
                        survivors.push(raw);
                        break;
                    }
                    _ => {}
                }
            }
        }
        assert_eq!(
            survivors.len(),
            1,
            "exactly one connection keeps the client id"
        );
        let mut survivor = survivors.pop().unwrap();
        if delivered == 0 {
            // The queued message was handed from holder to holder and reaches the survivor.
            assert_eq!(&survivor.recv_publish().payload[..], b"kept");
        }
        // The subscription survived the race too.
        publisher.publish("k/t", b"after", QoS::AtLeastOnce, false);
        assert_eq!(&survivor.recv_publish().payload[..], b"after");
    }
);
