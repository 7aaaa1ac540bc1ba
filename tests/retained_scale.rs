//! Retained messages at scale, over real sockets: 100,000 retained messages, and every new
//! subscriber to a wildcard that reads gets all of them, at each QoS, on 1, 2 and 4 shards,
//! beside live traffic, with the default bounds, and without a single drop counted.

mod common;

use bytes::BytesMut;
use common::{connect_packet, Broker, Raw};
use ringcast::protocol::codec::{encode, Codec, Decoded};
use ringcast::protocol::*;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Retained messages in each test: `ret/<0..100>/<0..1000>`.
const RETAINED: usize = 100_000;
/// Payload of each retained message.
const PAYLOAD: [u8; 64] = [b'r'; 64];
/// How long a client waits for its next packet before the test fails.
const STALL: Duration = Duration::from_secs(20);

fn topic(i: usize) -> String {
    format!("ret/{}/{}", i / 1000, i % 1000)
}

fn start(shards: usize) -> Broker {
    Broker::start_with(shards, |c| c.sys_interval_secs = 1)
}

/// A client that pipelines: packets are encoded into a buffer and written in batches, and
/// what arrives is decoded from one buffered read at a time.
struct Pipe {
    stream: TcpStream,
    codec: Codec,
    inbox: BytesMut,
    outbox: BytesMut,
}

impl Pipe {
    fn connect(addr: SocketAddr, client_id: &str, clean: bool) -> Pipe {
        let raw = Raw::open(addr, Version::V5);
        let mut pipe = Pipe {
            stream: raw.stream,
            codec: Codec::with_version(Version::V5, 1 << 24),
            inbox: BytesMut::new(),
            outbox: BytesMut::new(),
        };
        pipe.stream.set_read_timeout(Some(STALL)).unwrap();
        let mut connect = connect_packet(client_id, Version::V5, clean);
        if !clean {
            connect.properties.session_expiry_interval = Some(600);
        }
        pipe.push(&Packet::Connect(Box::new(connect)));
        pipe.flush();
        match pipe.next() {
            Packet::ConnAck(ack) => assert_eq!(ack.code, ReasonCode::SUCCESS),
            other => panic!("expected CONNACK, got {other:?}"),
        }
        pipe
    }

    fn push(&mut self, packet: &Packet) {
        encode(packet, Version::V5, &mut self.outbox).expect("test packet encodes");
    }

    fn flush(&mut self) {
        self.stream
            .write_all(&self.outbox)
            .expect("broker takes the bytes");
        self.outbox.clear();
    }

    /// The next packet; anything pushed is flushed before waiting for the socket.
    fn next(&mut self) -> Packet {
        loop {
            match self.codec.decode(&mut self.inbox) {
                Ok(Decoded::Packet(packet)) => return packet,
                Ok(Decoded::Incomplete { .. }) => {}
                Err(e) => panic!("undecodable packet from the broker: {e:?}"),
            }
            if !self.outbox.is_empty() {
                self.flush();
            }
            let mut chunk = [0u8; 64 << 10];
            match self.stream.read(&mut chunk) {
                Ok(0) => panic!("broker closed the connection"),
                Ok(n) => self.inbox.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => panic!("nothing from the broker for {STALL:?}: {e}"),
            }
        }
    }

    fn subscribe(&mut self, filter: &str, qos: QoS) {
        self.push(&Packet::Subscribe(Subscribe {
            pkid: 1,
            filters: vec![SubscribeFilter {
                filter: MqttString::from_str_checked(filter).unwrap(),
                options: SubscriptionOptions {
                    qos,
                    ..Default::default()
                },
            }],
            properties: Props::default(),
        }));
        self.flush();
    }

    /// Answers the broker's side of a QoS 1/2 flow; returns the PUBLISH it carried, if any.
    fn acknowledge(&mut self, packet: Packet) -> Option<Publish> {
        let ack = |pkid| Ack {
            pkid,
            ..Ack::default()
        };
        match packet {
            Packet::Publish(p) => {
                match p.qos {
                    QoS::AtMostOnce => {}
                    QoS::AtLeastOnce => self.push(&Packet::PubAck(ack(p.pkid))),
                    QoS::ExactlyOnce => self.push(&Packet::PubRec(ack(p.pkid))),
                }
                Some(p)
            }
            Packet::PubRel(a) => {
                self.push(&Packet::PubComp(ack(a.pkid)));
                None
            }
            Packet::SubAck(_) => None,
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Publishes `topics` retained at `qos`, pipelined within a window, and returns once the
/// broker has acknowledged every one (QoS 0: once a PINGRESP came back behind them).
fn publish(addr: SocketAddr, client_id: &str, topics: &[String], payload: &[u8], qos: QoS) {
    let mut pipe = Pipe::connect(addr, client_id, true);
    // Within the broker's Receive Maximum (64) for QoS 2.
    let window = 32;
    let mut outstanding = 0;
    for (i, topic) in topics.iter().enumerate() {
        while qos != QoS::AtMostOnce && outstanding >= window {
            outstanding -= publisher_ack(&mut pipe);
        }
        let pkid = if qos == QoS::AtMostOnce {
            0
        } else {
            (i % 60_000) as u16 + 1
        };
        pipe.push(&common::publish_packet(topic, payload, qos, true, pkid));
        outstanding += 1;
        if pipe.outbox.len() > 32 << 10 {
            pipe.flush();
        }
    }
    if qos == QoS::AtMostOnce {
        pipe.push(&Packet::PingReq);
        assert!(matches!(pipe.next(), Packet::PingResp));
        return;
    }
    while outstanding > 0 {
        outstanding -= publisher_ack(&mut pipe);
    }
    pipe.flush();
}

/// Handles one acknowledgement from the broker; returns 1 when it ended a flow.
fn publisher_ack(pipe: &mut Pipe) -> usize {
    match pipe.next() {
        Packet::PubAck(_) | Packet::PubComp(_) => 1,
        Packet::PubRec(a) => {
            pipe.push(&Packet::PubRel(Ack {
                pkid: a.pkid,
                ..Ack::default()
            }));
            0
        }
        other => panic!("unexpected {other:?}"),
    }
}

/// Publishes the retained set at QoS 2, spread over `publishers` connections (placed
/// round-robin, so over every shard), at once.
fn publish_retained_set(addr: SocketAddr, publishers: usize) {
    let topics: Vec<String> = (0..RETAINED).map(topic).collect();
    let share = RETAINED.div_ceil(publishers);
    std::thread::scope(|s| {
        for (n, part) in topics.chunks(share).enumerate() {
            s.spawn(move || publish(addr, &format!("pub-{n}"), part, &PAYLOAD, QoS::ExactlyOnce));
        }
    });
}

/// What one subscriber received.
#[derive(Default)]
struct Received {
    /// Retained (RETAIN set) deliveries per topic.
    retained: HashMap<String, usize>,
    /// Deliveries without RETAIN, per topic.
    live: HashMap<String, usize>,
}

impl Received {
    fn count(&mut self, publish: &Publish) {
        let topic = publish.topic.as_str().to_string();
        let map = if publish.retain {
            &mut self.retained
        } else {
            &mut self.live
        };
        *map.entry(topic).or_default() += 1;
    }
}

/// Reads as a subscriber, acknowledging as it goes, until `done` says it has everything.
fn receive(pipe: &mut Pipe, done: impl FnMut(&Received) -> bool) -> Received {
    receive_more(pipe, Received::default(), done)
}

/// `receive`, counting on from `received`.
fn receive_more(
    pipe: &mut Pipe,
    mut received: Received,
    mut done: impl FnMut(&Received) -> bool,
) -> Received {
    while !done(&received) {
        let packet = pipe.next();
        if let Some(publish) = pipe.acknowledge(packet) {
            received.count(&publish);
        }
    }
    pipe.flush();
    received
}

/// Subscribes to `ret/#` at `qos` and reads the whole retained set.
fn subscribe_and_receive_all(addr: SocketAddr, client_id: &str, qos: QoS) -> Received {
    let mut pipe = Pipe::connect(addr, client_id, true);
    pipe.subscribe("ret/#", qos);
    let received = receive(&mut pipe, |r| r.retained.len() == RETAINED);
    assert_every_topic_once(&received, qos);
    received
}

fn assert_every_topic_once(received: &Received, qos: QoS) {
    assert_eq!(received.retained.len(), RETAINED, "at {qos:?}");
    let twice = received.retained.iter().find(|(_, n)| **n > 1);
    assert!(twice.is_none(), "delivered more than once: {twice:?}");
    for i in [0, RETAINED / 2, RETAINED - 1] {
        assert!(
            received.retained.contains_key(&topic(i)),
            "{} missing",
            topic(i)
        );
    }
}

/// The `$SYS` counter `topic`, once it has been published.
fn sys_value(addr: SocketAddr, topic: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut raw = Raw::connect(addr, "");
        raw.subscribe(topic, QoS::AtMostOnce);
        if let Ok(Packet::Publish(p)) = raw.recv_within(Duration::from_secs(3)) {
            return std::str::from_utf8(&p.payload).unwrap().parse().unwrap();
        }
        assert!(Instant::now() < deadline, "{topic} never published");
    }
}

/// Every drop counter stays at zero: the subscribers read, so nothing was owed to a bound.
fn assert_nothing_dropped(addr: SocketAddr) {
    // The counters are published every second; two periods cover what happened before.
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(sys_value(addr, "$SYS/broker/ringcast/dropped"), 0);
    assert_eq!(sys_value(addr, "$SYS/broker/publish/messages/dropped"), 0);
}

/// Subscribers at QoS 0, 1 and 2, at the same time, each with its own cursor.
fn all_qos_subscribers_get_everything(shards: usize) {
    let broker = start(shards);
    publish_retained_set(broker.addr, shards);
    std::thread::scope(|s| {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let addr = broker.addr;
            s.spawn(move || subscribe_and_receive_all(addr, &format!("sub-{qos:?}"), qos));
        }
    });
    assert_nothing_dropped(broker.addr);
}

#[test]
fn mqtt_3_3_1_6_every_retained_message_reaches_new_wildcard_subscribers_at_each_qos() {
    all_qos_subscribers_get_everything(1);
}

#[test]
fn mqtt_3_3_1_6_every_retained_message_reaches_new_wildcard_subscribers_on_2_shards() {
    all_qos_subscribers_get_everything(2);
}

#[test]
fn mqtt_3_3_1_6_every_retained_message_reaches_new_wildcard_subscribers_on_4_shards() {
    all_qos_subscribers_get_everything(4);
}

/// Live messages published while the retained set streams are delivered beside it, all of
/// them; retained ones among them reach the subscriber once.
#[test]
fn live_messages_flow_beside_a_retained_stream_and_all_arrive() {
    const LIVE: usize = 20_000;
    let broker = start(2);
    publish_retained_set(broker.addr, 2);
    let mut pipe = Pipe::connect(broker.addr, "reader", true);
    pipe.subscribe("ret/#", QoS::AtLeastOnce);
    // Live traffic starts while the first retained messages are arriving.
    let first = receive(&mut pipe, |r| r.retained.len() >= 100);
    let addr = broker.addr;
    let live_topics: Vec<String> = (0..LIVE).map(|i| format!("ret/live/{i}")).collect();
    // New values for retained topics, published during the stream: one delivery each.
    let updated: Vec<String> = (0..1000).map(|i| topic(RETAINED - 1 - i * 7)).collect();
    let Received { retained, live } = std::thread::scope(|s| {
        s.spawn(|| publish(addr, "live", &live_topics, b"live", QoS::AtLeastOnce));
        s.spawn(|| publish(addr, "updates", &updated, b"new", QoS::AtLeastOnce));
        receive_more(&mut pipe, first, |r| {
            // Done when every live message came and every retained topic came one way or
            // the other (cheap checks first: this runs per packet).
            let is_live_done = r.live.len() == LIVE + updated.len();
            is_live_done
                && r.retained.len() + updated.len() >= RETAINED
                && r.retained.len()
                    + updated
                        .iter()
                        .filter(|t| !r.retained.contains_key(*t))
                        .count()
                    == RETAINED
        })
    });
    for t in &live_topics {
        assert_eq!(live.get(t), Some(&1), "live message {t}");
    }
    // Every retained topic arrives once: as the stored message, or live when its update
    // came before the cursor reached it (then never again as retained).
    for i in 0..RETAINED {
        let t = topic(i);
        let stored = retained.get(&t).copied().unwrap_or(0);
        let fresh = live.get(&t).copied().unwrap_or(0);
        assert!(
            stored <= 1 && fresh <= 1,
            "{t}: {stored} retained, {fresh} live"
        );
        if !updated.contains(&t) {
            assert_eq!(stored, 1, "{t} missing");
        }
    }
    assert_nothing_dropped(broker.addr);
}

/// A subscriber that leaves half-way and comes back with a clean session gets the whole
/// set again; the cursor of the first connection just stopped.
#[test]
fn a_subscriber_that_reconnects_half_way_gets_the_full_set_again() {
    let broker = start(1);
    publish_retained_set(broker.addr, 1);
    let mut pipe = Pipe::connect(broker.addr, "again", true);
    pipe.subscribe("ret/#", QoS::AtLeastOnce);
    receive(&mut pipe, |r| r.retained.len() >= RETAINED / 2);
    drop(pipe);
    subscribe_and_receive_all(broker.addr, "again", QoS::AtLeastOnce);
    assert_nothing_dropped(broker.addr);
}

/// A persistent session that disconnects mid-stream is owed the rest: on reconnect the
/// cursor goes on where it stopped, and the client ends with the whole set.
#[test]
fn a_persistent_session_resumes_its_retained_stream_on_reconnect() {
    let broker = start(2);
    publish_retained_set(broker.addr, 2);
    let mut pipe = Pipe::connect(broker.addr, "durable", false);
    pipe.subscribe("ret/#", QoS::AtLeastOnce);
    let first = receive(&mut pipe, |r| r.retained.len() >= RETAINED / 3);
    let seen_first = first.retained.len();
    drop(pipe);
    // Reconnected, the session is present: no new SUBSCRIBE, the stream resumes (on
    // whichever shard the connection lands). QoS 1 messages in flight at the disconnect
    // come again, so the two parts may overlap by up to the window.
    let mut pipe = Pipe::connect(broker.addr, "durable", false);
    let received = receive_more(&mut pipe, first, |r| r.retained.len() == RETAINED);
    let topics = received.retained.len();
    assert!(seen_first < RETAINED);
    assert_eq!(topics, RETAINED);
    assert_nothing_dropped(broker.addr);
}
