//! The end of connections and sessions: disconnect, Session Expiry Interval, wills (delayed
//! by Will Delay Interval, cancelled by a reconnect), and closing everything at shutdown.

use super::message::Message;
use super::msg::{MeshMsg, Release};
use super::persist::wall_ms;
use super::subscriptions::remove_session;
use super::takeover::home_shard;
use super::{SessionKey, Shard};
use crate::protocol::{Publish, ReasonCode, Version, Will};
use std::rc::Rc;
use std::time::{Duration, Instant};

fn secs_of(secs: u32) -> Duration {
    Duration::from_secs(u64::from(secs))
}

impl Shard {
    /// Ends connection `token`'s hold on its session. A clean session is removed (and its
    /// home shard told); a persistent one stays, offline, until its Session Expiry Interval
    /// runs out. Returns the will to publish, with the delay before publishing it.
    pub fn disconnect(
        self: &Rc<Self>,
        key: SessionKey,
        token: u64,
        graceful: bool,
    ) -> Option<(Will, Duration)> {
        let (will, expiry, delay) = {
            let mut st = self.state.borrow_mut();
            let session = st
                .sessions
                .get_mut(&key)
                .filter(|s| s.conn_token == token)?;
            let expiry = match (session.is_persistent, session.version) {
                (false, _) => Some(0),
                (true, Version::V5) if session.expiry_secs != u32::MAX => Some(session.expiry_secs),
                (true, _) => None,
            };
            // The will waits for its Will Delay Interval, but never past the session's end
            // [MQTT-3.1.3-9].
            let will_delay = session
                .will
                .as_ref()
                .map_or(0, |w| w.properties.will_delay_interval.unwrap_or(0));
            let delay = expiry.map_or(will_delay, |secs| secs.min(will_delay));
            match delay {
                // Stored with its due time: a crash during the delay does not lose it.
                1.. if !graceful => session.note_will_due(wall_ms(Instant::now() + secs_of(delay))),
                _ => session.note_will_gone(),
            }
            let will = if graceful {
                None
            } else {
                session.will.take().map(|w| *w)
            };
            session.will = None;
            session.outbox = None;
            (will, expiry, delay)
        };
        match expiry {
            Some(0) => self.retire(key, token),
            Some(secs) => self.expire_after(key, token, secs_of(secs)),
            None => {}
        }
        Some((will?, secs_of(delay)))
    }

    /// Removes session `key` for good: its subscriptions leave this shard (other shards are
    /// told), its home shard releases the client id, and shared messages it had not finished
    /// go to other members.
    fn retire(&self, key: SessionKey, token: u64) {
        let removed = remove_session(&mut self.state.borrow_mut(), self.id(), key);
        let Some((mut session, gone)) = removed else {
            return;
        };
        self.withdraw(key, gone);
        session.note_end();
        let home = home_shard(&session.client_id, self.shards);
        let client_id = session.client_id.to_string();
        self.mesh
            .post(home, MeshMsg::Release(Release { client_id, token }));
        self.requeue_shared(session.take_unfinished_shared());
    }

    /// Removes the session of connection `token` after `after`, if it is still offline then.
    pub(super) fn expire_after(self: &Rc<Self>, key: SessionKey, token: u64, after: Duration) {
        let shard = self.clone();
        glommio::spawn_local(async move {
            glommio::timer::sleep(after).await;
            let still_offline = shard
                .with_session(key, token, |s, _, _| !s.is_online())
                .unwrap_or(false);
            if still_offline {
                shard.retire(key, token);
            }
        })
        .detach();
    }

    /// Publishes the will of connection `token` (of session `key`) after `delay`, unless a
    /// new connection with the same client id takes the session over first (`on_evict`
    /// cancels it); once published, the session's stored will is gone.
    pub fn publish_will_after(
        self: &Rc<Self>,
        key: SessionKey,
        token: u64,
        will: Will,
        delay: Duration,
    ) {
        let due = Instant::now() + delay;
        self.state
            .borrow_mut()
            .pending_wills
            .insert(token, (will, due));
        let shard = self.clone();
        glommio::spawn_local(async move {
            glommio::timer::sleep(delay).await;
            let will = shard.state.borrow_mut().pending_wills.remove(&token);
            if let Some((will, _)) = will {
                shard.publish_will(will).await;
                shard.with_session(key, token, |s, _, _| s.note_will_published());
            }
        })
        .detach();
    }

    /// The will waiting for its delay of connection `token`, with when it is due.
    pub(super) fn pending_will(&self, token: u64) -> Option<(Will, Instant)> {
        self.state.borrow().pending_wills.get(&token).cloned()
    }

    /// Changes the Session Expiry Interval of connection `token`'s session, as a 5.0
    /// DISCONNECT may [MQTT-3.14.2-2 is checked by the caller].
    pub fn set_session_expiry(&self, key: SessionKey, token: u64, secs: u32) {
        self.with_session(key, token, |s, _, _| {
            s.expiry_secs = secs;
            s.is_persistent = secs > 0;
            s.note_expiry(secs);
        });
    }

    /// Publishes a will as its client's last PUBLISH.
    pub async fn publish_will(&self, will: Will) {
        let mut publish = Publish {
            dup: false,
            qos: will.qos,
            retain: will.retain,
            topic: will.topic,
            pkid: 0,
            properties: will.properties,
            payload: will.payload,
        };
        // Will Delay Interval is a will property, not one of the PUBLISH [MQTT-3.1.3-10].
        publish.properties.will_delay_interval = None;
        let message = Message::received(publish, 0);
        // Routed without waiting (for room or for retained replicas): a will may be published
        // from a ring receiver, which must never wait on its own ring.
        self.count_received(message.publish.qos);
        self.route(message).await;
    }

    /// Closes every connection for shutdown; returns their wills.
    pub fn close_all(&self, reason: ReasonCode) -> Vec<Will> {
        let mut st = self.state.borrow_mut();
        let st = &mut *st;
        let mut wills = Vec::new();
        for session in st.sessions.values_mut() {
            if session.close_connection(reason, &mut st.enc) {
                session.note_will_gone();
                wills.extend(session.will.take().map(|w| *w));
            }
        }
        // Sessions end with the server, so wills still waiting for their delay are due now.
        wills.extend(st.pending_wills.drain().map(|(_, (will, _))| will));
        wills
    }
}
