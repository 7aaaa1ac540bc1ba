//! `$SYS/broker/...`: the counters are published, retained, under mosquitto's names where
//! mosquitto has one, and `#` alone does not deliver them [MQTT-4.7.2-1].

mod common;

use common::{Broker, NoPacket, Raw};
use ringcast::protocol::{Packet, QoS};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Waits (bounded) until `check` accepts a round of `$SYS` values; returns them. One `$SYS/#`
/// subscriber gets the retained values of the last round at once and every later round as the
/// broker publishes it; a round is complete when the messages pause (rounds are an interval
/// apart).
fn wait_for_sys(
    addr: SocketAddr,
    check: impl Fn(&HashMap<String, String>) -> bool,
) -> HashMap<String, String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut raw = Raw::connect(addr, "");
    raw.subscribe("$SYS/#", QoS::AtMostOnce);
    let mut values = HashMap::new();
    loop {
        assert!(
            Instant::now() < deadline,
            "$SYS never matched; last: {values:#?}"
        );
        match raw.recv_within(Duration::from_millis(500)) {
            Ok(Packet::Publish(p)) => {
                let value = String::from_utf8(p.payload.to_vec()).unwrap();
                values.insert(p.topic.as_str().to_string(), value);
            }
            Ok(other) => panic!("unexpected {other:?}"),
            Err(NoPacket::Closed) => panic!("the broker closed the $SYS reader"),
            Err(NoPacket::Timeout) => {
                if check(&values) {
                    raw.disconnect();
                    return values;
                }
            }
        }
    }
}

fn number(values: &HashMap<String, String>, topic: &str) -> u64 {
    values
        .get(topic)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{topic} missing or not a number"))
}

#[test]
fn sys_topics_count_clients_subscriptions_messages_and_bytes_across_shards() {
    let broker = Broker::start_with(2, |c| c.sys_interval_secs = 1);
    let mut subscribers: Vec<Raw> = (0..3)
        .map(|i| {
            let mut raw = Raw::connect(broker.addr, &format!("sub-{i}"));
            raw.subscribe("sys/test", QoS::AtMostOnce);
            raw
        })
        .collect();
    let mut publisher = Raw::connect(broker.addr, "pub");
    for i in 0..5u8 {
        publisher.publish("sys/test", &[i; 10], QoS::AtLeastOnce, false);
    }
    for sub in &mut subscribers {
        for _ in 0..5 {
            sub.recv_publish();
        }
    }
    let values = wait_for_sys(broker.addr, |v| {
        v.get("$SYS/broker/messages/received").map(String::as_str) == Some("5")
    });
    // Deliveries of $SYS messages to $SYS subscribers count as sent too, as in mosquitto.
    assert!(number(&values, "$SYS/broker/messages/sent") >= 15);
    let mut fresh = Raw::connect(broker.addr, "fresh");
    fresh.subscribe("$SYS/broker/version", QoS::AtMostOnce);
    assert!(fresh.recv_publish().retain, "$SYS messages are retained");
    // 3 subscribers and the publisher, plus this snapshot's own client once counted.
    let connected = number(&values, "$SYS/broker/clients/connected");
    assert!(
        (4..=5).contains(&connected),
        "clients/connected = {connected}"
    );
    assert_eq!(
        number(&values, "$SYS/broker/subscriptions/count"),
        3 + (connected - 4)
    );
    assert!(number(&values, "$SYS/broker/bytes/received") > 5 * 10);
    assert!(number(&values, "$SYS/broker/bytes/sent") > 15 * 10);
    assert_eq!(number(&values, "$SYS/broker/publish/messages/dropped"), 0);
    assert_eq!(
        number(&values, "$SYS/broker/ringcast/dropped/queue_full/qos1"),
        0
    );
    let per_shard: u64 = (0..2)
        .map(|i| {
            number(
                &values,
                &format!("$SYS/broker/ringcast/shard/{i}/messages/received"),
            )
        })
        .sum();
    assert_eq!(per_shard, 5, "per-shard counters add up to the total");
    assert!(values["$SYS/broker/version"].starts_with("ringcast "));
    for topic in [
        "$SYS/broker/uptime",
        "$SYS/broker/store/messages/count",
        "$SYS/broker/store/messages/bytes",
        "$SYS/broker/ringcast/slow_disconnects",
        "$SYS/broker/ringcast/publishers/paused",
        "$SYS/broker/ringcast/publishers/pauses",
        "$SYS/broker/ringcast/queued/bytes",
        "$SYS/broker/load/messages/received/1min",
        "$SYS/broker/load/bytes/sent/15min",
    ] {
        assert!(values.contains_key(topic), "{topic} is published");
    }
}

#[test]
fn sys_messages_do_not_match_a_bare_hash_filter() {
    let broker = Broker::start_with(1, |c| c.sys_interval_secs = 1);
    let mut all = Raw::connect(broker.addr, "all");
    all.subscribe("#", QoS::AtMostOnce);
    // Wait until $SYS has been published at least once.
    wait_for_sys(broker.addr, |v| v.contains_key("$SYS/broker/uptime"));
    match all.recv_within(Duration::from_millis(1500)) {
        Err(_) => {}
        Ok(Packet::Publish(p)) => assert!(
            !p.topic.as_str().starts_with('$'),
            "`#` delivered {}",
            p.topic.as_str()
        ),
        Ok(other) => panic!("unexpected {other:?}"),
    }
}

#[test]
fn sys_interval_zero_publishes_nothing() {
    let broker = Broker::start_with(1, |c| c.sys_interval_secs = 0);
    let mut raw = Raw::connect(broker.addr, "");
    raw.subscribe("$SYS/#", QoS::AtMostOnce);
    // Retained values would come at once, and rounds as they are published.
    match raw.recv_within(Duration::from_millis(800)) {
        Err(NoPacket::Timeout) => {}
        other => panic!("expected no $SYS message, got {other:?}"),
    }
}
