//! Streaming a retained set to one subscriber.
//!
//! A new subscription may match 100,000 retained messages. Pushed into the connection at once,
//! they would meet the bounds meant for a subscriber that cannot keep up (write buffer,
//! session queue) and most would be dropped. Instead each subscription that is owed retained
//! messages gets a `Cursor`: the topic it has reached in the retained index, in topic order.
//! A feed moves it on while the connection has room — the write buffer below `feed_mark`, no
//! live message waiting in the session queue, a window slot for QoS 1/2 — and stops there.
//! A feeder task resumes it when the writer drains the socket or an acknowledgement opens
//! the window. Nothing is copied or queued: a cursor holds a topic, and each message is
//! encoded straight from the index when it is sent.
//!
//! Order: live messages go first (they are sent as they arrive and the feed only fills the
//! room they leave), so new messages are never stuck behind a large retained set. The spec
//! asks for the retained messages of a new subscription [MQTT-3.3.1-6] but orders only the
//! messages of one publisher on one topic [MQTT-4.6.0-5]; a retained message is the state of
//! its topic, flagged RETAIN. The one case where both meet is a retained message published
//! while the cursor runs: it reaches the client live, so the cursor skips its topic when it
//! gets there (delivered once, and the client never sees an older state after a newer one).
//! A message deleted (empty payload) while the cursor runs is gone from the index and never
//! sent. Cursors live in the session: a persistent session that reconnects goes on where it
//! stopped; a clean one ends with its connection.
//!
//! This module is plain data and the walk over the index; what a feed sends to goes through
//! `Sink`, which `feeder` implements over a session.

use super::lazy::Lazy;
use super::message::Message;
use super::retained::{topic_order, Retained};
use crate::protocol::topic::filter_matches;
use crate::protocol::{MqttString, QoS};
use std::cmp::Ordering;
use std::collections::{HashSet, VecDeque};
use std::num::NonZeroU64;

/// Retained messages taken from the index per walk.
const BATCH: usize = 64;

/// Retained messages one feed sends before it lets the shard's other tasks run.
const FEED_TURN_MAX: usize = 1024;

/// Where one subscription's retained delivery stands. Plain data: it moves with a persistent
/// session to another shard.
#[derive(Clone, Debug)]
pub struct Cursor {
    /// The subscription's filter (never a shared one: those get no retained messages).
    filter: String,
    /// The subscription's maximum QoS.
    qos: QoS,
    /// The subscription's identifier (5.0), sent with each of its messages.
    id: Option<u32>,
    /// The last topic passed, in topic order; None before the first.
    after: Option<MqttString>,
    /// Topics ahead of the cursor whose retained message the client already got live.
    skip: HashSet<MqttString>,
}

/// The retained deliveries a session still owes, oldest subscription first.
#[derive(Debug, Default)]
pub struct Cursors {
    /// Allocated while anything is owed: every session holds a `Cursors` for as long as it
    /// lives, and an empty queue is 32 bytes.
    queue: Lazy<VecDeque<Cursor>>,
    /// The connection token whose feeder task runs for this session, if one does (tokens
    /// start at 1: 8 bytes in every session where an `Option<u64>` takes 16).
    pub feeder: Option<NonZeroU64>,
}

/// What a feed ended with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feed {
    /// Every cursor reached its end.
    Done,
    /// It sent its share of this turn; more is owed and the connection has room.
    Yield,
    /// The connection has no room: wait for written bytes (below the mark) or, with None,
    /// for an acknowledgement.
    Wait(Option<usize>),
    /// The session has no open connection (or is gone): feeding stops, cursors stay.
    Offline,
}

/// Where a feed sends the retained messages it walks.
pub trait Sink {
    /// None when a retained message granted at `qos` can be sent now; else why not.
    fn room(&self, qos: QoS) -> Option<Feed>;
    /// Sends retained `message` at `qos`, with the subscription's identifier `id`.
    fn send(&mut self, message: &Message, qos: QoS, id: Option<u32>);
}

impl Cursors {
    /// Starts the retained delivery of a subscription to `filter` (granted `qos`, identifier
    /// `id`); a subscription made again starts over.
    pub fn add(&mut self, filter: &str, qos: QoS, id: Option<u32>) {
        self.remove(filter);
        self.queue.get_mut().push_back(Cursor {
            filter: filter.to_string(),
            qos,
            id,
            after: None,
            skip: HashSet::new(),
        });
    }

    /// Stops the retained delivery of `filter` (unsubscribed).
    pub fn remove(&mut self, filter: &str) {
        if let Some(queue) = self.queue.existing_mut() {
            queue.retain(|c| c.filter != filter);
        }
        self.queue.release_if(VecDeque::is_empty);
    }

    /// Whether the feeder task of connection `token` runs for this session.
    pub fn is_fed_by(&self, token: u64) -> bool {
        self.feeder.is_some_and(|f| f.get() == token)
    }

    /// Whether nothing is owed.
    pub fn is_empty(&self) -> bool {
        self.queue.get().is_none_or(VecDeque::is_empty)
    }

    /// Takes the cursors out (a persistent session moving to another shard).
    pub fn take(&mut self) -> Vec<Cursor> {
        self.feeder = None;
        self.queue.take().into()
    }

    /// Puts moved cursors back.
    pub fn restore(&mut self, cursors: Vec<Cursor>) {
        self.queue.clear();
        if !cursors.is_empty() {
            *self.queue.get_mut() = cursors.into();
        }
    }

    /// A retained message on `topic` reached the client live: a cursor that has not passed
    /// its topic yet will skip it.
    pub fn note_live(&mut self, topic: &MqttString) {
        for cursor in self.queue.existing_mut().into_iter().flatten() {
            let is_ahead = cursor.after.as_ref().is_none_or(|after| {
                topic_order(topic.as_str(), after.as_str()) == Ordering::Greater
            });
            if is_ahead && filter_matches(&cursor.filter, topic.as_str()) {
                cursor.skip.insert(topic.clone());
            }
        }
    }

    /// Sends what `sink` can take of the retained deliveries owed, from `store`.
    pub fn feed(&mut self, store: &Retained, sink: &mut impl Sink) -> Feed {
        let mut budget = FEED_TURN_MAX;
        while let Some(cursor) = self.queue.existing_mut().and_then(VecDeque::front_mut) {
            match cursor.feed(store, sink, &mut budget) {
                Feed::Done => {
                    self.queue.existing_mut().and_then(VecDeque::pop_front);
                }
                other => return other,
            }
        }
        // Nothing owed: the queue is given back (a session made one subscription long ago
        // holds none).
        self.queue.clear();
        Feed::Done
    }
}

impl Cursor {
    /// Moves this cursor on while `sink` has room and `budget` lasts.
    fn feed(&mut self, store: &Retained, sink: &mut impl Sink, budget: &mut usize) -> Feed {
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            batch.clear();
            let after = self.after.as_ref().map(MqttString::as_str);
            let is_last = store.collect(&self.filter, after, BATCH, &mut batch);
            for message in &batch {
                let topic = &message.publish.topic;
                if !self.skip.remove(topic) && !message.is_expired() {
                    let qos = message.publish.qos.min(self.qos);
                    if let Some(wait) = sink.room(qos) {
                        return wait;
                    }
                    if *budget == 0 {
                        return Feed::Yield;
                    }
                    *budget -= 1;
                    sink.send(message, qos, self.id);
                }
                self.after = Some(topic.clone());
            }
            if is_last {
                return Feed::Done;
            }
        }
    }
}
