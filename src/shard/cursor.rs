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

use super::encoder::Encoder;
use super::retained::{topic_order, Retained};
use super::session::{Grant, Session, Subscription};
use super::{Message, SessionKey, Shard};
use crate::config::Limits;
use crate::protocol::topic::filter_matches;
use crate::protocol::{MqttString, QoS};
use crate::shard::outbox::Outbox;
use std::cmp::Ordering;
use std::collections::{HashSet, VecDeque};
use std::rc::Rc;

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
    sub: Subscription,
    /// The last topic passed, in topic order; None before the first.
    after: Option<MqttString>,
    /// Topics ahead of the cursor whose retained message the client already got live.
    skip: HashSet<MqttString>,
}

/// The retained deliveries a session still owes, oldest subscription first.
#[derive(Debug, Default)]
pub struct Cursors {
    queue: VecDeque<Cursor>,
    /// The connection token whose feeder task runs for this session, if one does.
    feeder: Option<u64>,
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

impl Cursors {
    /// Starts the retained delivery of a subscription to `filter`; a subscription made again
    /// starts over.
    pub fn add(&mut self, filter: &str, sub: Subscription) {
        self.remove(filter);
        self.queue.push_back(Cursor {
            filter: filter.to_string(),
            sub,
            after: None,
            skip: HashSet::new(),
        });
    }

    /// Stops the retained delivery of `filter` (unsubscribed).
    pub fn remove(&mut self, filter: &str) {
        self.queue.retain(|c| c.filter != filter);
    }

    /// Whether nothing is owed.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Takes the cursors out (a persistent session moving to another shard).
    pub fn take(&mut self) -> Vec<Cursor> {
        self.feeder = None;
        self.queue.drain(..).collect()
    }

    /// Puts moved cursors back.
    pub fn restore(&mut self, cursors: Vec<Cursor>) {
        self.queue = cursors.into();
    }

    /// A retained message on `topic` reached the client live: a cursor that has not passed
    /// its topic yet will skip it.
    pub fn note_live(&mut self, topic: &MqttString) {
        for cursor in &mut self.queue {
            let is_ahead = cursor.after.as_ref().is_none_or(|after| {
                topic_order(topic.as_str(), after.as_str()) == Ordering::Greater
            });
            if is_ahead && filter_matches(&cursor.filter, topic.as_str()) {
                cursor.skip.insert(topic.clone());
            }
        }
    }

    /// Sends what `session` can take of its retained deliveries from `store`.
    fn feed(
        &mut self,
        session: &mut Session,
        store: &Retained,
        limits: &Limits,
        enc: &mut Encoder,
    ) -> Feed {
        let mut budget = FEED_TURN_MAX;
        while let Some(cursor) = self.queue.front_mut() {
            match cursor.feed(session, store, limits, enc, &mut budget) {
                Feed::Done => {
                    self.queue.pop_front();
                }
                other => return other,
            }
        }
        Feed::Done
    }
}

impl Cursor {
    /// Moves this cursor on while the connection has room and `budget` lasts.
    fn feed(
        &mut self,
        session: &mut Session,
        store: &Retained,
        limits: &Limits,
        enc: &mut Encoder,
        budget: &mut usize,
    ) -> Feed {
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            batch.clear();
            let after = self.after.as_ref().map(MqttString::as_str);
            let is_last = store.collect(&self.filter, after, BATCH, &mut batch);
            for message in &batch {
                let topic = &message.publish.topic;
                if !self.skip.remove(topic) && !message.is_expired() {
                    let qos = message.publish.qos.min(self.sub.options.qos);
                    if let Some(wait) = session.room_for_retained(qos, limits, feed_mark(limits)) {
                        return wait;
                    }
                    if *budget == 0 {
                        return Feed::Yield;
                    }
                    *budget -= 1;
                    session.send_retained(&message.publish, self.grant(message, qos), limits, enc);
                }
                self.after = Some(topic.clone());
            }
            enc.forget();
            if is_last {
                return Feed::Done;
            }
        }
    }

    /// What the client gets of retained `message`: RETAIN set [MQTT-3.3.1-8], this
    /// subscription's identifier.
    fn grant(&self, message: &Message, qos: QoS) -> Grant {
        Grant {
            qos,
            retain: true,
            ids: self.sub.id.into_iter().collect(),
            expires_at: message.expires_at,
            share: None,
        }
    }
}

/// Bytes a feed leaves in the write buffer at most: half the mark at which a subscriber
/// counts as lagging, so streaming a retained set never pauses the shard's publishers.
pub fn feed_mark(limits: &Limits) -> usize {
    (limits.write_buffer_pause_bytes / 2).max(1)
}

impl Shard {
    /// Sends what session `key` (of connection `token`) can take now of the retained messages
    /// it is owed, and leaves a feeder task to send the rest as the connection makes room.
    pub fn feed_retained(self: &Rc<Self>, key: SessionKey, token: u64) {
        let feed = self.feed_once(key, token);
        if matches!(feed, Feed::Done | Feed::Offline) {
            return;
        }
        let outbox = self.with_session(key, token, |session, _, _| {
            let is_running = session.cursors.feeder == Some(token);
            session.cursors.feeder = Some(token);
            session.outbox.clone().filter(|_| !is_running)
        });
        if let Some(Some(outbox)) = outbox {
            glommio::spawn_local(run_feeder(self.clone(), key, token, outbox)).detach();
        }
    }

    /// One feed of session `key`'s cursors.
    fn feed_once(&self, key: SessionKey, token: u64) -> Feed {
        let mut st = self.state.borrow_mut();
        let st = &mut *st;
        let Some(session) = st.sessions.get_mut(&key).filter(|s| s.conn_token == token) else {
            return Feed::Offline;
        };
        feed_session(session, &st.retained, &self.limits, &mut st.enc)
    }
}

/// Sends what `session` can take now of the retained messages it is owed from `store`.
fn feed_session(
    session: &mut Session,
    store: &Retained,
    limits: &Limits,
    enc: &mut Encoder,
) -> Feed {
    if session.cursors.is_empty() {
        return Feed::Done;
    }
    // Taken out for the feed, so the session and its cursors can be borrowed apart.
    let mut cursors = std::mem::take(&mut session.cursors);
    let feed = cursors.feed(session, store, limits, enc);
    session.cursors = cursors;
    feed
}

/// Feeds session `key` whenever connection `token`'s outbox has room, until nothing is owed
/// or the connection ends.
async fn run_feeder(shard: Rc<Shard>, key: SessionKey, token: u64, outbox: Rc<Outbox>) {
    loop {
        match shard.feed_once(key, token) {
            Feed::Yield => futures_lite::future::yield_now().await,
            Feed::Wait(below) => std::future::poll_fn(|cx| outbox.poll_room(cx, below)).await,
            Feed::Done | Feed::Offline => break,
        }
    }
    shard.with_session(key, token, |session, _, _| {
        if session.cursors.feeder == Some(token) {
            session.cursors.feeder = None;
        }
    });
}

#[cfg(test)]
mod tests;
