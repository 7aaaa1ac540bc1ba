//! A persistent session that moves between shards while a publisher keeps publishing to it
//! loses nothing: every QoS 1 message reaches the client at least once, whichever shard the
//! session was on (or between) when the message was published.
//!
//! Connections are placed on shards round-robin, so each reconnect of the subscriber lands on
//! another shard than the last and its session is handed over from shard to shard, both after
//! a clean DISCONNECT (the session waits offline) and by a takeover of a connection that is
//! still open.

mod common;

use common::*;
use ringcast::protocol::*;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

const TOPIC: &str = "handoff/t";
const CLIENT_ID: &str = "mover";
/// Times the subscriber reconnects while the publisher runs.
const RECONNECTS: usize = 60;
/// How long the subscriber reads on each connection before the next reconnect.
const READ_BETWEEN: Duration = Duration::from_millis(15);
/// How long the subscriber may go without a new message before the test gives up.
const STALL: Duration = Duration::from_secs(10);

/// Connects the subscriber with a persistent 3.1.1 session.
fn connect_subscriber(addr: std::net::SocketAddr) -> (Raw, ConnAck) {
    Raw::connect_with(addr, connect_packet(CLIENT_ID, Version::V311, false))
}

/// Publishes numbered QoS 1 messages (waiting for each PUBACK) until `stop`; returns how many.
fn run_publisher(addr: std::net::SocketAddr, stop: Arc<AtomicBool>) -> u32 {
    let mut publisher = Raw::connect(addr, "numbers");
    let mut n = 0u32;
    while !stop.load(Ordering::Relaxed) {
        publisher.publish(TOPIC, n.to_string().as_bytes(), QoS::AtLeastOnce, false);
        n += 1;
    }
    publisher.disconnect();
    n
}

/// Reads PUBLISHes (acknowledging them) for `span`, or until the connection closes.
fn read_for(sub: &mut Raw, span: Duration, seen: &mut BTreeSet<u32>) {
    let until = Instant::now() + span;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        match sub.recv_within(left) {
            Ok(Packet::Publish(p)) => {
                sub.ack(&p);
                seen.insert(number(&p));
            }
            Ok(other) => panic!("expected PUBLISH, got {other:?}"),
            Err(_) => return,
        }
    }
}

fn number(publish: &Publish) -> u32 {
    std::str::from_utf8(&publish.payload)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("unexpected payload {:?}", publish.payload))
}

#[test]
fn a_session_moving_between_shards_misses_no_qos1_message() {
    let broker = Broker::start(4);
    let (mut sub, _) = connect_subscriber(broker.addr);
    assert_eq!(
        sub.subscribe(TOPIC, QoS::AtLeastOnce),
        vec![ReasonCode::GRANTED_QOS_1]
    );
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (addr, stop) = (broker.addr, stop.clone());
        thread::spawn(move || run_publisher(addr, stop))
    };
    let mut seen = BTreeSet::new();
    for round in 0..RECONNECTS {
        read_for(&mut sub, READ_BETWEEN, &mut seen);
        if round % 2 == 0 {
            // Goes offline first: the session waits on its shard for the next connection.
            sub.disconnect();
            sub = connect_subscriber(broker.addr).0;
        } else {
            // Takes over a connection that is still open; whatever it had not acknowledged is
            // sent again on the new one.
            sub = connect_subscriber(broker.addr).0;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let published = publisher.join().expect("publisher runs");
    assert!(published > 0, "the publisher published nothing");
    let mut last_progress = Instant::now();
    while seen.len() < published as usize && last_progress.elapsed() < STALL {
        let before = seen.len();
        read_for(&mut sub, Duration::from_millis(200), &mut seen);
        if seen.len() > before {
            last_progress = Instant::now();
        }
    }
    let missing: Vec<u32> = (0..published).filter(|n| !seen.contains(n)).collect();
    assert!(
        missing.is_empty(),
        "{} of {published} messages never arrived, first ones: {:?}",
        missing.len(),
        &missing[..missing.len().min(20)]
    );
}
