//! Runs of PUBLISHes: what a publisher writes in one go lands in one read of the broker, and
//! the PUBLISHes on one topic that follow each other there are routed as one run (each
//! subscriber gets the whole run at once). Every rule of a single PUBLISH still holds: each
//! subscriber gets every message once, in publish order, across topics too, with its own
//! QoS, subscription identifiers, No Local, retained messages and stored sessions.

mod common;

use bytes::{Bytes, BytesMut};
use common::*;
use ringcast::protocol::codec::encode;
use ringcast::protocol::*;
use std::net::SocketAddr;

/// A 5.0 client with a clean session.
fn v5(addr: SocketAddr, id: &str) -> Raw {
    Raw::connect_with(addr, connect_packet(id, Version::V5, true)).0
}

/// A PUBLISH whose payload is its sequence number, packet id `seq + 1` at QoS 1.
fn numbered(topic: &str, seq: u32, qos: QoS, retain: bool) -> Packet {
    let pkid = if qos == QoS::AtMostOnce {
        0
    } else {
        seq as u16 + 1
    };
    publish_packet(topic, &seq.to_be_bytes(), qos, retain, pkid)
}

/// Writes `packets` with one write, so that the broker reads them together.
fn send_together(c: &mut Raw, packets: &[Packet]) {
    let mut out = BytesMut::new();
    for packet in packets {
        encode(packet, c.version, &mut out).expect("test packet encodes");
    }
    c.send_bytes(&out);
}

/// The sequence numbers of the next `n` PUBLISHes, each acknowledged, asserting every one
/// arrives at `qos` with `ids` as its subscription identifiers.
fn receive(c: &mut Raw, n: usize, qos: QoS, ids: &[u32]) -> Vec<u32> {
    (0..n)
        .map(|_| {
            let p = c.recv_publish();
            assert_eq!(p.qos, qos);
            let mut got = p.properties.subscription_identifiers.clone();
            got.sort_unstable();
            assert_eq!(got, ids);
            u32::from_be_bytes(p.payload[..4].try_into().unwrap())
        })
        .collect()
}

/// Asserts the publisher gets PUBACKs for packet ids 1..=n, in order.
fn expect_pubacks(c: &mut Raw, n: u32) {
    for pkid in 1..=n {
        match c.recv() {
            Packet::PubAck(ack) => assert_eq!(ack.pkid, pkid as u16),
            other => panic!("expected PUBACK {pkid}, got {other:?}"),
        }
    }
}

const RUN: u32 = 300;

#[test]
fn a_run_of_same_topic_publishes_reaches_every_subscriber_complete_and_in_order() {
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
        let broker = Broker::start(1);
        let mut q0 = Raw::connect(broker.addr, "q0");
        q0.subscribe("run/t", QoS::AtMostOnce);
        let mut q1 = Raw::connect(broker.addr, "q1");
        q1.subscribe("run/t", QoS::AtLeastOnce);
        // Two matching subscriptions of one session: one copy, both identifiers.
        let mut ids = v5(broker.addr, "ids");
        subscribe_id(&mut ids, "run/t", 7);
        subscribe_id(&mut ids, "run/+", 9);
        let mut publisher = v5(broker.addr, "pub");
        publisher.subscribe_with(
            "run/t",
            SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                no_local: true,
                ..Default::default()
            },
        );
        // A retained message in the middle ends one run; the next starts another.
        let packets: Vec<Packet> = (0..RUN)
            .map(|seq| numbered("run/t", seq, qos, seq == RUN / 2))
            .collect();
        send_together(&mut publisher, &packets);
        if qos == QoS::AtLeastOnce {
            expect_pubacks(&mut publisher, RUN);
        }
        let all: Vec<u32> = (0..RUN).collect();
        assert_eq!(receive(&mut q0, RUN as usize, QoS::AtMostOnce, &[]), all);
        assert_eq!(receive(&mut q1, RUN as usize, qos, &[]), all);
        assert_eq!(receive(&mut ids, RUN as usize, qos, &[7, 9]), all);
        publisher.expect_nothing();
        q0.expect_nothing();
        let mut late = Raw::connect(broker.addr, "late");
        late.subscribe("run/t", QoS::AtMostOnce);
        let retained = late.recv_publish();
        assert!(retained.retain);
        assert_eq!(
            retained.payload,
            Bytes::from((RUN / 2).to_be_bytes().to_vec())
        );
    }
}

#[test]
fn one_publishers_interleaved_topics_keep_their_order_for_a_subscriber_on_both() {
    let broker = Broker::start(1);
    let mut both = Raw::connect(broker.addr, "both");
    both.subscribe("il/a", QoS::AtLeastOnce);
    both.subscribe("il/b", QoS::AtMostOnce);
    let mut wild = Raw::connect(broker.addr, "wild");
    wild.subscribe("il/+", QoS::AtLeastOnce);
    let mut only_a = Raw::connect(broker.addr, "only-a");
    only_a.subscribe("il/a", QoS::AtLeastOnce);
    // Runs of every length from 1 to 13 on alternating topics, and single messages between.
    let lengths = [1, 2, 5, 3, 8, 1, 1, 13, 4, 1, 2, 7];
    let mut topics = Vec::new();
    for (i, len) in lengths.iter().cycle().take(40).enumerate() {
        let topic = if i % 2 == 0 { "il/a" } else { "il/b" };
        topics.extend(std::iter::repeat_n(topic, *len));
    }
    let n = topics.len() as u32;
    let packets: Vec<Packet> = (0..n)
        .map(|seq| numbered(topics[seq as usize], seq, QoS::AtLeastOnce, false))
        .collect();
    let mut publisher = Raw::connect(broker.addr, "pub");
    send_together(&mut publisher, &packets);
    expect_pubacks(&mut publisher, n);
    let all: Vec<u32> = (0..n).collect();
    let on_a: Vec<u32> = all
        .iter()
        .copied()
        .filter(|&seq| topics[seq as usize] == "il/a")
        .collect();
    let mut got_both = Vec::new();
    for _ in 0..n {
        let p = both.recv_publish();
        let seq = u32::from_be_bytes(p.payload[..4].try_into().unwrap());
        let qos = match topics[seq as usize] {
            "il/a" => QoS::AtLeastOnce,
            _ => QoS::AtMostOnce,
        };
        assert_eq!((p.topic.as_str(), p.qos), (topics[seq as usize], qos));
        got_both.push(seq);
    }
    assert_eq!(got_both, all);
    assert_eq!(receive(&mut wild, n as usize, QoS::AtLeastOnce, &[]), all);
    assert_eq!(
        receive(&mut only_a, on_a.len(), QoS::AtLeastOnce, &[]),
        on_a
    );
    only_a.expect_nothing();
}

#[test]
fn a_run_reaches_stored_sessions_in_order_online_offline_and_after_a_restart() {
    let dir = fresh_data_dir();
    let stored = |dir: &std::path::Path| {
        let dir = dir.to_path_buf();
        move |config: &mut ringcast::config::Config| {
            config.persistence.enabled = true;
            config.persistence.dir = dir;
        }
    };
    let broker = Broker::start_with(1, stored(&dir));
    let keep = |addr| Raw::connect_with(addr, connect_packet("keep", Version::V311, false)).0;
    let away = |addr| Raw::connect_with(addr, connect_packet("away", Version::V311, false)).0;
    let mut online = keep(broker.addr);
    online.subscribe("st/t", QoS::AtLeastOnce);
    let mut offline = away(broker.addr);
    offline.subscribe("st/t", QoS::AtLeastOnce);
    offline.disconnect();
    let mut clean = Raw::connect(broker.addr, "clean");
    clean.subscribe("st/t", QoS::AtLeastOnce);
    let packets: Vec<Packet> = (0..RUN)
        .map(|seq| numbered("st/t", seq, QoS::AtLeastOnce, false))
        .collect();
    let mut publisher = Raw::connect(broker.addr, "pub");
    send_together(&mut publisher, &packets);
    expect_pubacks(&mut publisher, RUN);
    let all: Vec<u32> = (0..RUN).collect();
    assert_eq!(
        receive(&mut online, RUN as usize, QoS::AtLeastOnce, &[]),
        all
    );
    assert_eq!(
        receive(&mut clean, RUN as usize, QoS::AtLeastOnce, &[]),
        all
    );
    online.disconnect();
    broker.stop();
    // What the stored session missed comes back from the records, in order.
    let broker = Broker::start_with(1, stored(&dir));
    let mut offline = away(broker.addr);
    assert_eq!(
        receive(&mut offline, RUN as usize, QoS::AtLeastOnce, &[]),
        all
    );
    offline.expect_nothing();
    broker.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Subscribes a 5.0 client to `filter` at QoS 1 with Subscription Identifier `id`.
fn subscribe_id(c: &mut Raw, filter: &str, id: u32) {
    c.send(&Packet::Subscribe(Subscribe {
        pkid: 9,
        filters: vec![SubscribeFilter {
            filter: MqttString::from_str_checked(filter).unwrap(),
            options: SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                ..Default::default()
            },
        }],
        properties: Properties {
            subscription_identifiers: vec![id],
            ..Properties::default()
        }
        .into(),
    }));
    assert!(matches!(c.recv(), Packet::SubAck(a) if a.pkid == 9));
}

#[test]
fn a_run_reaches_the_subscribers_of_another_shard_complete_and_in_order() {
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
        // Connections are placed on the shards in turn: each shard has subscribers, and
        // the publisher's shard sends each run to the other as one ring message.
        let broker = Broker::start(2);
        let mut subscribers: Vec<Raw> = (0..4)
            .map(|i| {
                let mut c = Raw::connect(broker.addr, &format!("sub{i}"));
                c.subscribe("xs/t", QoS::AtLeastOnce);
                c
            })
            .collect();
        let mut publisher = Raw::connect(broker.addr, "pub");
        let packets: Vec<Packet> = (0..RUN)
            .map(|seq| numbered("xs/t", seq, qos, false))
            .collect();
        send_together(&mut publisher, &packets);
        if qos == QoS::AtLeastOnce {
            expect_pubacks(&mut publisher, RUN);
        }
        let all: Vec<u32> = (0..RUN).collect();
        for c in &mut subscribers {
            assert_eq!(receive(c, RUN as usize, qos, &[]), all);
            c.expect_nothing();
        }
    }
}

#[test]
fn runs_the_ring_to_another_shard_has_no_room_for_are_routed_one_by_one_in_order() {
    // A subscriber that reads nothing for a while makes its shard stop taking from the ring
    // (backpressure), so the smallest ring fills and the publisher's runs find no room.
    let broker = Broker::start_with(2, |config| config.mesh.ring_capacity = Some(16));
    let mut slow = Raw::connect(broker.addr, "slow");
    slow.subscribe("full/t", QoS::AtLeastOnce);
    let mut publisher = Raw::connect(broker.addr, "pub");
    const WRITES: u32 = 30;
    for write in 0..WRITES {
        let packets: Vec<Packet> = (write * RUN..(write + 1) * RUN)
            .map(|seq| numbered("full/t", seq, QoS::AtLeastOnce, false))
            .collect();
        send_together(&mut publisher, &packets);
    }
    let n = WRITES * RUN;
    let all: Vec<u32> = (0..n).collect();
    assert_eq!(receive(&mut slow, n as usize, QoS::AtLeastOnce, &[]), all);
    expect_pubacks(&mut publisher, n);
    slow.expect_nothing();
}
