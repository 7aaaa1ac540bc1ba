//! Feeding a session its retained messages (see `cursor`) as its connection makes room: one
//! feed right after the SUBACK, then a feeder task per connection that waits on the outbox
//! (`Outbox::poll_room`) and feeds again, until nothing is owed or the connection ends.

use super::cursor::{Feed, Sink};
use super::encoder::Encoder;
use super::message::Message;
use super::retained::Retained;
use super::session::{Grant, Session};
use super::{SessionKey, Shard};
use crate::config::Limits;
use crate::protocol::QoS;
use crate::shard::outbox::Outbox;
use std::num::NonZeroU64;
use std::rc::Rc;

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
            let is_running = session.cursors.is_fed_by(token);
            session.cursors.feeder = NonZeroU64::new(token);
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

/// A session as the sink of its own retained feed.
struct SessionSink<'a> {
    session: &'a mut Session,
    limits: &'a Limits,
    enc: &'a mut Encoder,
}

impl Sink for SessionSink<'_> {
    fn room(&self, qos: QoS) -> Option<Feed> {
        let mark = feed_mark(self.limits);
        self.session.room_for_retained(qos, self.limits, mark)
    }

    /// RETAIN set [MQTT-3.3.1-8], the subscription's identifier.
    fn send(&mut self, message: &Message, qos: QoS, id: Option<u32>) {
        let grant = Grant::new(qos, true, id.into_iter().collect(), message.expires_at);
        let publish = &message.publish;
        // Retained messages are not the fan-out's hot path: each is checked against the ACL
        // whatever the subscription's read scope (a topic it may read all of passes anyway).
        if !self.session.may_read_topic(publish.topic.as_str()) {
            return;
        }
        self.session
            .send_retained(publish, grant, self.limits, self.enc);
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
    let mut sink = SessionSink {
        session,
        limits,
        enc,
    };
    let feed = cursors.feed(store, &mut sink);
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
        if session.cursors.is_fed_by(token) {
            session.cursors.feeder = None;
        }
    });
}

#[cfg(test)]
mod tests;
