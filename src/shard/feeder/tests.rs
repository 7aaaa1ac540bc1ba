//! The retained feed in memory: a session, its outbox and the retained index, no socket and
//! no executor. The "writer" is the test taking bytes out of the outbox.

use super::*;
use crate::protocol::codec::{Codec, Decoded};
use crate::protocol::{MqttString, Packet, Publish, Version};
use crate::shard::backpressure::Pressure;
use crate::shard::retained::topic_order;
use crate::shard::routing::note_coming_live;
use crate::shard::session::Subscription;
use crate::shard::subscriptions::add_subscription;
use crate::shard::State;
use bytes::Bytes;
use std::cmp::Ordering;
use std::sync::Arc;

const TOPICS: usize = 1000;

fn topic(i: usize) -> String {
    format!("s/{}/{}", i / 100, i % 100)
}

fn retained(topic: &str, payload: &[u8], qos: QoS) -> Message {
    let publish = Publish {
        dup: false,
        qos,
        retain: true,
        topic: MqttString::from_str_checked(topic).unwrap(),
        pkid: 0,
        properties: Default::default(),
        payload: Bytes::copy_from_slice(payload),
    };
    Message::received(publish, 0)
}

/// A store of `TOPICS` retained QoS 2 messages of 64 bytes, in topic order `topic(i)`.
fn store() -> Retained {
    let mut store = Retained::default();
    for i in 0..TOPICS {
        let t = topic(i);
        store.set(&t, Some(retained(&t, &[b'x'; 64], QoS::ExactlyOnce)));
    }
    store
}

struct Fixture {
    session: Session,
    outbox: Rc<Outbox>,
    store: Retained,
    limits: Limits,
    enc: Encoder,
    codec: Codec,
}

impl Fixture {
    /// A connected session subscribed to `s/#` at `qos`, owed the whole store.
    fn new(qos: QoS, limits: Limits) -> Fixture {
        let mut session = Session::new("c".into(), Version::V311, false);
        let outbox = Rc::new(Outbox::new(
            Rc::new(Pressure::default()),
            limits.write_buffer_pause_bytes,
            usize::MAX,
        ));
        session.outbox = Some(outbox.clone());
        session.cursors.add("s/#", qos, None);
        Fixture {
            session,
            outbox,
            store: store(),
            limits,
            enc: Encoder::default(),
            codec: Codec::with_version(Version::V311, 1 << 20),
        }
    }

    fn feed(&mut self) -> Feed {
        feed_session(&mut self.session, &self.store, &self.limits, &mut self.enc)
    }

    /// What the writer would send: every packet in the outbox, taken out.
    fn written(&mut self) -> Vec<Publish> {
        let mut bytes = self.outbox.pending_wire();
        self.outbox.consume(bytes.len());
        let mut out = Vec::new();
        while let Ok(Decoded::Packet(packet)) = self.codec.decode(&mut bytes) {
            match packet {
                Packet::Publish(p) => out.push(p),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(bytes.is_empty(), "a partial packet in the outbox");
        out
    }

    /// Feeds and writes until the feed is done, acknowledging QoS 1 as the client would;
    /// returns the topics in the order they were written.
    fn run_to_end(&mut self) -> Vec<String> {
        let mut topics = Vec::new();
        loop {
            let feed = self.feed();
            let written = self.written();
            let pkids: Vec<u16> = written.iter().map(|p| p.pkid).collect();
            topics.extend(written.iter().map(|p| p.topic.as_str().to_string()));
            if !pkids.is_empty() && pkids[0] != 0 {
                self.session.on_pubacks(&pkids, &self.limits, &mut self.enc);
            }
            if feed == Feed::Done {
                return topics;
            }
        }
    }
}

fn small_limits() -> Limits {
    Limits {
        write_buffer_pause_bytes: 8 << 10,
        inflight_max: 10,
        ..Limits::default()
    }
}

#[test]
fn mqtt_3_3_1_8_a_feed_stops_at_the_mark_and_goes_on_when_the_writer_drains() {
    let mut f = Fixture::new(QoS::AtMostOnce, small_limits());
    let mark = feed_mark(&f.limits);
    assert_eq!(f.feed(), Feed::Wait(Some(mark)));
    let queued = f.outbox.queued_bytes();
    assert!(
        queued >= mark && queued < mark + 100,
        "{queued} bytes queued"
    );
    let first = f.written();
    assert!(first.iter().all(|p| p.retain && p.qos == QoS::AtMostOnce));
    let mut topics: Vec<String> = first.iter().map(|p| p.topic.as_str().into()).collect();
    topics.extend(f.run_to_end());
    let mut expected: Vec<String> = (0..TOPICS).map(topic).collect();
    expected.sort_by(|a, b| topic_order(a, b));
    assert!(
        topics == expected,
        "every retained message once, in topic order"
    );
    assert_eq!(f.session.counters.dropped, 0);
    assert!(f.session.cursors.is_empty());
}

#[test]
fn mqtt_3_3_4_9_a_qos1_feed_fills_the_window_and_waits_for_acknowledgements() {
    let mut f = Fixture::new(QoS::AtLeastOnce, small_limits());
    assert_eq!(f.feed(), Feed::Wait(None));
    let first = f.written();
    assert_eq!(first.len(), 10, "the window, no more");
    assert_eq!(f.feed(), Feed::Wait(None), "nothing acknowledged yet");
    let pkids: Vec<u16> = first.iter().map(|p| p.pkid).collect();
    f.session.on_pubacks(&pkids, &f.limits, &mut f.enc);
    let mut topics: Vec<String> = first.iter().map(|p| p.topic.as_str().into()).collect();
    topics.extend(f.run_to_end());
    assert_eq!(topics.len(), TOPICS);
    assert_eq!(f.session.queued_len(), 0, "nothing went through the queue");
}

#[test]
fn a_feed_waits_behind_live_messages_in_the_queue() {
    let mut f = Fixture::new(QoS::AtLeastOnce, small_limits());
    let live = Arc::new(
        retained("live/x", b"1", QoS::AtLeastOnce)
            .publish
            .as_ref()
            .clone(),
    );
    for _ in 0..15 {
        let grant = Grant::as_published(&live);
        f.session.deliver(&live, grant, &f.limits, &mut f.enc);
    }
    assert_eq!(f.session.queued_len(), 5, "10 in the window, 5 queued");
    assert_eq!(f.feed(), Feed::Wait(None));
    assert!(f.written().iter().all(|p| p.topic.as_str() == "live/x"));
}

#[test]
fn a_retained_message_published_ahead_of_the_cursor_is_delivered_once_live() {
    let mut f = Fixture::new(QoS::AtMostOnce, small_limits());
    f.feed();
    let first = f.written();
    let reached = first.last().unwrap().topic.as_str().to_string();
    // New retained values: one ahead of the cursor, one behind it. Both go out live.
    for t in [topic(TOPICS - 1), topic(0)] {
        let update = retained(&t, b"new", QoS::AtMostOnce);
        f.store.set(&t, Some(update.clone()));
        let grant = Grant::as_published(&update.publish);
        f.session
            .deliver(&update.publish, grant, &f.limits, &mut f.enc);
    }
    let rest = f.run_to_end();
    let last = topic(TOPICS - 1);
    assert_eq!(
        rest.iter().filter(|t| **t == last).count(),
        1,
        "the live update only"
    );
    assert!(rest
        .iter()
        .filter(|t| **t != last)
        .all(|t| { topic_order(t, &reached) == Ordering::Greater || *t == topic(0) }));
    assert_eq!(
        first.len() + rest.len(),
        TOPICS + 1,
        "topic(0) twice: old, then live"
    );
}

#[test]
fn mqtt_3_3_1_10_a_message_deleted_while_the_cursor_runs_is_not_delivered() {
    let mut f = Fixture::new(QoS::AtMostOnce, small_limits());
    f.feed();
    let first = f.written();
    let gone = topic(TOPICS / 2);
    f.store.set(&gone, None);
    let rest = f.run_to_end();
    assert!(!rest.contains(&gone));
    assert_eq!(first.len() + rest.len(), TOPICS - 1);
}

#[test]
fn a_feed_stops_with_the_connection_and_a_resumed_session_goes_on() {
    let mut f = Fixture::new(QoS::AtLeastOnce, small_limits());
    f.feed();
    let first = f.written();
    f.session.outbox = None;
    assert_eq!(f.feed(), Feed::Offline);
    // The client comes back: in-flight messages are sent again, then the feed goes on.
    let outbox = f.outbox.clone();
    f.session.resume(outbox, &f.limits, &mut f.enc);
    let again = f.written();
    assert_eq!(again.len(), first.len());
    assert!(again.iter().all(|p| p.dup));
    let pkids: Vec<u16> = again.iter().map(|p| p.pkid).collect();
    f.session.on_pubacks(&pkids, &f.limits, &mut f.enc);
    let rest = f.run_to_end();
    assert_eq!(first.len() + rest.len(), TOPICS);
}

#[test]
fn unsubscribing_ends_the_feed() {
    let mut f = Fixture::new(QoS::AtMostOnce, small_limits());
    f.feed();
    f.written();
    f.session.cursors.remove("s/#");
    assert_eq!(f.feed(), Feed::Done);
    assert!(f.written().is_empty());
}

/// Runs `note_coming_live` for `topic` over a shard state where `f`'s session is subscribed
/// to `s/#`, as `on_retain` does for a replica whose live copy follows on the ring.
fn note_coming_live_in_state(f: &mut Fixture, topic: &MqttString) {
    let mut st = State::default();
    let key = 1;
    add_subscription(&mut st, 0, key, "s/#", Subscription::default());
    let session = std::mem::replace(
        &mut f.session,
        Session::new("-".into(), Version::V311, false),
    );
    st.sessions.insert(key, Box::new(session));
    note_coming_live(&mut st, topic);
    f.session = *st.sessions.remove(&key).expect("inserted above");
}

#[test]
fn a_replica_whose_live_copy_is_still_on_the_ring_is_not_streamed_as_well() {
    let mut f = Fixture::new(QoS::AtMostOnce, small_limits());
    f.feed();
    let first = f.written();
    // Two new values ahead of the cursor reach this shard's replica. One was published after
    // the subscription reached its shard: its live copy follows on the ring, held back by
    // backpressure while the feed goes on. The other was published before: only the feed
    // sends it.
    let (coming, stored_only) = (topic(TOPICS - 1), topic(TOPICS - 2));
    let update = retained(&coming, b"new", QoS::AtMostOnce);
    f.store.set(&coming, Some(update.clone()));
    note_coming_live_in_state(&mut f, &update.publish.topic);
    f.store.set(
        &stored_only,
        Some(retained(&stored_only, b"new", QoS::AtMostOnce)),
    );
    let rest = f.run_to_end();
    assert!(!rest.contains(&coming), "left to its live copy");
    assert!(rest.contains(&stored_only));
    let grant = Grant::as_published(&update.publish);
    f.session
        .deliver(&update.publish, grant, &f.limits, &mut f.enc);
    let live = f.written();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].topic.as_str(), coming);
    assert_eq!(
        first.len() + rest.len() + live.len(),
        TOPICS,
        "every topic once"
    );
}
