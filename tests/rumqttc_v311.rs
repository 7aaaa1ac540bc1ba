//! ringcast against a real client library: rumqttc (MQTT 3.1.1, plus one MQTT 5 round trip).
//! Each test is named after the spec statement it checks and runs with 1 and with 4 shards.
//!
//! rumqttc does its I/O only while its `EventLoop` is polled, so the tests poll each client's
//! loop in turn on a single-threaded runtime; TCP buffers what the broker sends meanwhile.
//! Every wait is bounded by `WAIT`, so a broker that never answers fails the test, never hangs it.

mod common;

use common::Broker;
use rumqttc::{AsyncClient, Event, EventLoop, Incoming, LastWill, MqttOptions, Outgoing, QoS};
use std::future::Future;
use std::time::Duration;

/// How long one step of a test may wait for the broker.
const WAIT: Duration = Duration::from_secs(3);

/// Runs an async test body on a fresh single-threaded runtime.
fn block_on<F: Future<Output = ()>>(body: F) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(body)
}

/// A rumqttc client and the event loop that does its I/O.
struct Peer {
    client: AsyncClient,
    events: EventLoop,
    name: String,
}

impl Peer {
    /// Connects and returns the peer with its CONNACK's session-present flag.
    async fn connect_with(
        broker: &Broker,
        id: &str,
        adjust: impl FnOnce(&mut MqttOptions),
    ) -> (Peer, bool) {
        let mut options = MqttOptions::new(id, "127.0.0.1", broker.addr.port());
        options.set_keep_alive(Duration::from_secs(30));
        adjust(&mut options);
        let (client, events) = AsyncClient::new(options, 64);
        let mut peer = Peer {
            client,
            events,
            name: id.to_owned(),
        };
        let session_present = peer
            .until(|event| match event {
                Event::Incoming(Incoming::ConnAck(ack)) => {
                    assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success, "{ack:?}");
                    Some(ack.session_present)
                }
                _ => None,
            })
            .await;
        (peer, session_present)
    }

    /// Connects with a clean session.
    async fn connect(broker: &Broker, id: &str) -> Peer {
        Peer::connect_with(broker, id, |_| {}).await.0
    }

    /// Polls the event loop until `pick` returns a value, failing the test after `WAIT`.
    async fn until<T>(&mut self, mut pick: impl FnMut(&Event) -> Option<T>) -> T {
        let name = &self.name;
        let events = &mut self.events;
        let wait = async {
            loop {
                match events.poll().await {
                    Ok(event) => {
                        if let Some(found) = pick(&event) {
                            return found;
                        }
                    }
                    Err(e) => panic!("{name}: connection failed: {e:?}"),
                }
            }
        };
        match tokio::time::timeout(WAIT, wait).await {
            Ok(found) => found,
            Err(_) => panic!("{name}: timed out waiting for the broker"),
        }
    }

    /// Polls for `limit` and returns every PUBLISH that arrived (used to show that none does).
    async fn publishes_within(&mut self, limit: Duration) -> Vec<rumqttc::Publish> {
        let mut got = Vec::new();
        let events = &mut self.events;
        let _ = tokio::time::timeout(limit, async {
            while let Ok(event) = events.poll().await {
                if let Event::Incoming(Incoming::Publish(p)) = event {
                    got.push(p);
                }
            }
        })
        .await;
        got
    }

    /// Subscribes and waits for the SUBACK, checking the granted QoS.
    async fn subscribe(&mut self, filter: &str, qos: QoS) {
        self.client.subscribe(filter, qos).await.unwrap();
        let codes = self
            .until(|event| match event {
                Event::Incoming(Incoming::SubAck(ack)) => Some(ack.return_codes.clone()),
                _ => None,
            })
            .await;
        assert_eq!(
            codes,
            vec![rumqttc::SubscribeReasonCode::Success(qos)],
            "{}: SUBACK for {filter}",
            self.name
        );
    }

    /// Publishes and waits until the broker has completed the flow for `qos`.
    async fn publish(&mut self, topic: &str, payload: &[u8], qos: QoS, retain: bool) {
        self.client
            .publish(topic, qos, retain, payload.to_vec())
            .await
            .unwrap();
        self.until(|event| match (qos, event) {
            (QoS::AtMostOnce, Event::Outgoing(Outgoing::Publish(_))) => Some(()),
            (QoS::AtLeastOnce, Event::Incoming(Incoming::PubAck(_))) => Some(()),
            (QoS::ExactlyOnce, Event::Incoming(Incoming::PubComp(_))) => Some(()),
            _ => None,
        })
        .await
    }

    /// The next PUBLISH (rumqttc acknowledges it itself).
    async fn next_publish(&mut self) -> rumqttc::Publish {
        self.until(|event| match event {
            Event::Incoming(Incoming::Publish(p)) => Some(p.clone()),
            _ => None,
        })
        .await
    }

    /// Sends DISCONNECT and waits until it is written.
    async fn disconnect(mut self) {
        self.client.disconnect().await.unwrap();
        self.until(|event| matches!(event, Event::Outgoing(Outgoing::Disconnect)).then_some(()))
            .await
    }
}

/// Publishes one message at `qos` to a subscriber that asked for QoS 2, and checks what arrives.
async fn round_trip(shards: usize, qos: QoS) {
    let broker = Broker::start(shards);
    let mut sub = Peer::connect(&broker, "sub").await;
    sub.subscribe("a/b", QoS::ExactlyOnce).await;
    let mut publisher = Peer::connect(&broker, "pub").await;
    let payload: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
    publisher.publish("a/b", &payload, qos, false).await;
    let got = sub.next_publish().await;
    assert_eq!(got.topic, "a/b");
    assert_eq!(&got.payload[..], &payload[..]);
    // Delivered at the publisher's QoS, since the subscription allows up to 2 [MQTT-3.8.4-6].
    assert_eq!(got.qos, qos);
    assert!(!got.retain);
    // rumqttc completes the receiver's side of the flow; the broker must accept it quietly.
    if qos != QoS::AtMostOnce {
        let expected = match qos {
            QoS::AtLeastOnce => Outgoing::PubAck(got.pkid),
            _ => Outgoing::PubComp(got.pkid),
        };
        sub.until(|event| matches!(event, Event::Outgoing(o) if *o == expected).then_some(()))
            .await;
    }
    assert!(sub
        .publishes_within(Duration::from_millis(200))
        .await
        .is_empty());
}

on_1_and_4_shards!(mqtt_4_3_1_qos0_publish_is_delivered, |shards| {
    block_on(round_trip(shards, QoS::AtMostOnce))
});

on_1_and_4_shards!(
    mqtt_4_3_2_qos1_publish_is_delivered_and_acknowledged,
    |shards| block_on(round_trip(shards, QoS::AtLeastOnce))
);

on_1_and_4_shards!(
    mqtt_4_3_3_qos2_publish_is_delivered_exactly_once,
    |shards| block_on(round_trip(shards, QoS::ExactlyOnce))
);

on_1_and_4_shards!(
    mqtt_3_8_4_6_delivery_qos_is_the_minimum_of_publish_and_subscription,
    |shards| block_on(async move {
        let broker = Broker::start(shards);
        let mut sub = Peer::connect(&broker, "sub").await;
        sub.subscribe("down/grade", QoS::AtLeastOnce).await;
        let mut publisher = Peer::connect(&broker, "pub").await;
        publisher
            .publish("down/grade", b"q2", QoS::ExactlyOnce, false)
            .await;
        let got = sub.next_publish().await;
        assert_eq!(&got.payload[..], b"q2");
        assert_eq!(got.qos, QoS::AtLeastOnce);
    })
);

on_1_and_4_shards!(
    mqtt_3_3_1_6_retained_message_goes_to_later_subscribers_with_retain_set,
    |shards| block_on(async move {
        let broker = Broker::start(shards);
        let mut live = Peer::connect(&broker, "live").await;
        live.subscribe("status/door", QoS::AtLeastOnce).await;
        let mut publisher = Peer::connect(&broker, "pub").await;
        publisher
            .publish("status/door", b"open", QoS::AtLeastOnce, true)
            .await;
        // A subscription that already existed gets the message with retain cleared [MQTT-3.3.1-9].
        let got = live.next_publish().await;
        assert_eq!(&got.payload[..], b"open");
        assert!(!got.retain, "live delivery must not carry the retain flag");

        let mut late = Peer::connect(&broker, "late").await;
        late.subscribe("status/+", QoS::AtLeastOnce).await;
        let got = late.next_publish().await;
        assert_eq!(got.topic, "status/door");
        assert_eq!(&got.payload[..], b"open");
        assert_eq!(got.qos, QoS::AtLeastOnce);
        assert!(
            got.retain,
            "retained delivery must carry the retain flag [MQTT-3.3.1-8]"
        );
    })
);

on_1_and_4_shards!(
    mqtt_3_3_1_10_empty_retained_payload_clears_the_retained_message,
    |shards| block_on(async move {
        let broker = Broker::start(shards);
        let mut publisher = Peer::connect(&broker, "pub").await;
        publisher
            .publish("status/lamp", b"on", QoS::AtLeastOnce, true)
            .await;
        publisher
            .publish("status/lamp", b"", QoS::AtLeastOnce, true)
            .await;
        let mut late = Peer::connect(&broker, "late").await;
        late.subscribe("status/lamp", QoS::AtLeastOnce).await;
        let got = late.publishes_within(Duration::from_millis(300)).await;
        assert!(got.is_empty(), "retained message not cleared: {got:?}");
    })
);

on_1_and_4_shards!(
    mqtt_3_1_2_4_persistent_session_keeps_qos1_messages_published_while_offline,
    |shards| block_on(async move {
        let broker = Broker::start(shards);
        let persistent = |o: &mut MqttOptions| {
            o.set_clean_session(false);
        };
        let (mut sleeper, present) = Peer::connect_with(&broker, "sleeper", persistent).await;
        assert!(!present, "first connection has no session");
        sleeper.subscribe("inbox/#", QoS::AtLeastOnce).await;
        sleeper.disconnect().await;

        let mut publisher = Peer::connect(&broker, "pub").await;
        for i in 0..3u8 {
            publisher
                .publish("inbox/mail", &[b'm', b'0' + i], QoS::AtLeastOnce, false)
                .await;
        }
        // QoS 0 messages for an offline session may be dropped; not asserted either way.

        let (mut sleeper, present) = Peer::connect_with(&broker, "sleeper", persistent).await;
        assert!(
            present,
            "CONNACK must say the session is present [MQTT-3.2.2-2]"
        );
        for i in 0..3u8 {
            let got = sleeper.next_publish().await;
            assert_eq!(got.topic, "inbox/mail");
            assert_eq!(&got.payload[..], &[b'm', b'0' + i], "order kept");
            assert_eq!(got.qos, QoS::AtLeastOnce);
        }
        assert!(sleeper
            .publishes_within(Duration::from_millis(200))
            .await
            .is_empty());
    })
);

on_1_and_4_shards!(
    mqtt_3_1_2_6_clean_session_discards_the_previous_session,
    |shards| block_on(async move {
        let broker = Broker::start(shards);
        let (mut c, _) = Peer::connect_with(&broker, "c", |o| {
            o.set_clean_session(false);
        })
        .await;
        c.subscribe("gone/#", QoS::AtLeastOnce).await;
        c.disconnect().await;
        let (mut c, present) = Peer::connect_with(&broker, "c", |_| {}).await;
        assert!(
            !present,
            "clean session must report no session [MQTT-3.2.2-1]"
        );
        let mut publisher = Peer::connect(&broker, "pub").await;
        publisher
            .publish("gone/x", b"x", QoS::AtLeastOnce, false)
            .await;
        let got = c.publishes_within(Duration::from_millis(300)).await;
        assert!(got.is_empty(), "old subscription survived: {got:?}");
    })
);

on_1_and_4_shards!(
    mqtt_3_1_2_8_will_is_published_when_the_connection_drops,
    |shards| block_on(async move {
        let broker = Broker::start(shards);
        let mut watcher = Peer::connect(&broker, "watcher").await;
        watcher.subscribe("wills/+", QoS::AtLeastOnce).await;
        let (doomed, _) = Peer::connect_with(&broker, "doomed", |o| {
            o.set_last_will(LastWill::new(
                "wills/doomed",
                "doomed is gone",
                QoS::AtLeastOnce,
                false,
            ));
        })
        .await;
        // Dropping the event loop closes the socket without a DISCONNECT.
        drop(doomed);
        let got = watcher.next_publish().await;
        assert_eq!(got.topic, "wills/doomed");
        assert_eq!(&got.payload[..], b"doomed is gone");
        assert_eq!(got.qos, QoS::AtLeastOnce);
    })
);

on_1_and_4_shards!(
    mqtt_3_14_4_3_will_is_not_published_after_disconnect,
    |shards| block_on(async move {
        let broker = Broker::start(shards);
        let mut watcher = Peer::connect(&broker, "watcher").await;
        watcher.subscribe("wills/+", QoS::AtLeastOnce).await;
        let (polite, _) = Peer::connect_with(&broker, "polite", |o| {
            o.set_last_will(LastWill::new("wills/polite", "x", QoS::AtLeastOnce, false));
        })
        .await;
        polite.disconnect().await;
        let got = watcher.publishes_within(Duration::from_millis(400)).await;
        assert!(got.is_empty(), "will sent after DISCONNECT: {got:?}");
    })
);

on_1_and_4_shards!(
    mqtt_4_7_1_wildcards_plus_and_hash_match_the_right_topics,
    |shards| block_on(async move {
        let broker = Broker::start(shards);
        let mut sub = Peer::connect(&broker, "sub").await;
        sub.subscribe("sensors/+/temp", QoS::AtLeastOnce).await;
        sub.subscribe("logs/#", QoS::AtLeastOnce).await;
        let mut publisher = Peer::connect(&broker, "pub").await;
        let topics = [
            ("sensors/kitchen/temp", true),
            ("sensors/kitchen/humidity", false),
            ("sensors/a/b/temp", false),
            ("sensors//temp", true), // `+` matches an empty level [MQTT-4.7.1-3]
            ("logs", true),          // `#` also matches the parent level [MQTT-4.7.1-2]
            ("logs/app/error", true),
            ("log", false),
            ("$SYS/logs", false),
            ("done/marker", false),
        ];
        for (topic, _) in topics {
            publisher
                .publish(topic, topic.as_bytes(), QoS::AtLeastOnce, false)
                .await;
        }
        // A last message on a matching topic: once it arrives, everything before it has.
        publisher
            .publish("logs/end", b"end", QoS::AtLeastOnce, false)
            .await;
        let mut got = Vec::new();
        loop {
            let p = sub.next_publish().await;
            if &p.payload[..] == b"end" {
                break;
            }
            assert_eq!(
                p.topic, p.payload,
                "payload is the topic it was published to"
            );
            got.push(p.topic);
        }
        let expected: Vec<&str> = topics
            .iter()
            .filter(|(_, matches)| *matches)
            .map(|(t, _)| *t)
            .collect();
        assert_eq!(got, expected);
    })
);

on_1_and_4_shards!(mqtt_4_7_2_1_hash_does_not_match_dollar_topics, |shards| {
    block_on(async move {
        let broker = Broker::start(shards);
        let mut sub = Peer::connect(&broker, "sub").await;
        sub.subscribe("#", QoS::AtMostOnce).await;
        let mut publisher = Peer::connect(&broker, "pub").await;
        publisher
            .publish("$app/x", b"hidden", QoS::AtLeastOnce, false)
            .await;
        publisher
            .publish("app/x", b"seen", QoS::AtLeastOnce, false)
            .await;
        let got = sub.next_publish().await;
        assert_eq!(&got.payload[..], b"seen");
    })
});

/// The MQTT 5 client: CONNECT, SUBSCRIBE and a QoS 1 PUBLISH through the broker.
mod v5 {
    use super::*;
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::mqttbytes::QoS as QoS5;
    use rumqttc::v5::Event;

    use common::rumqttc_v5::{connect, until};

    on_1_and_4_shards!(
        mqtt5_3_3_4_qos1_publish_round_trip_with_v5_client,
        |shards| block_on(async move {
            let broker = Broker::start(shards);
            let (sub, mut sub_events) = connect(&broker, "sub5").await;
            sub.subscribe("v5/topic", QoS5::AtLeastOnce).await.unwrap();
            let codes = until(&mut sub_events, |e| match e {
                Event::Incoming(Packet::SubAck(ack)) => Some(ack.return_codes.clone()),
                _ => None,
            })
            .await;
            assert_eq!(
                codes,
                vec![rumqttc::v5::mqttbytes::v5::SubscribeReasonCode::Success(
                    QoS5::AtLeastOnce
                )]
            );

            let (publisher, mut pub_events) = connect(&broker, "pub5").await;
            publisher
                .publish("v5/topic", QoS5::AtLeastOnce, false, b"hello v5".to_vec())
                .await
                .unwrap();
            let reason = until(&mut pub_events, |e| match e {
                Event::Incoming(Packet::PubAck(ack)) => Some(ack.reason),
                _ => None,
            })
            .await;
            assert_eq!(
                reason,
                rumqttc::v5::mqttbytes::v5::PubAckReason::Success,
                "PUBACK reason"
            );

            let got = until(&mut sub_events, |e| match e {
                Event::Incoming(Packet::Publish(p)) => Some(p.clone()),
                _ => None,
            })
            .await;
            assert_eq!(&got.topic[..], b"v5/topic");
            assert_eq!(&got.payload[..], b"hello v5");
            assert_eq!(got.qos, QoS5::AtLeastOnce);
            drop((sub, publisher));
        })
    );
}
