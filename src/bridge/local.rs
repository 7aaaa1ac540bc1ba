//! The bridge's side of the local broker: an internal session that holds the `out` rules'
//! subscriptions, and the way messages from the remote enter the broker.
//!
//! The session is a session like a client's, on the bridge's shard, with an outbox that no
//! socket drains: the bridge takes the encoded PUBLISH frames out of it, decodes them with the
//! broker's own codec and acknowledges QoS 1 ones once they are in the bridge's queue. Messages
//! from the remote are published with the session's connection token as their origin, and the
//! session subscribes with No Local, so nothing the bridge brings in goes back out.

use crate::protocol::codec::{Codec, Decoded};
use crate::protocol::{Packet, Publish, QoS, SubscriptionOptions, Version};
use crate::shard::outbox::Outbox;
use crate::shard::session::{Session, Subscription};
use crate::shard::{Message, SessionKey, Shard};
use bytes::BytesMut;
use std::rc::Rc;

/// The internal session of one bridge.
pub struct Local {
    shard: Rc<Shard>,
    key: SessionKey,
    token: u64,
    /// The filters the session subscribes to.
    filters: Vec<String>,
}

/// What takes the session's messages out of its outbox.
pub struct Drain {
    outbox: Rc<Outbox>,
    codec: Codec,
    buf: BytesMut,
}

impl Local {
    /// Installs the session `client_id` (a name no client can send) subscribed to `filters`
    /// at `qos`; None when a newer holder of the id took over meanwhile. `is_persistent`: the
    /// session is stored and never expires, and one the store kept from before a restart is
    /// taken up again (its unacknowledged messages come out of it first).
    pub async fn install(
        shard: Rc<Shard>,
        client_id: String,
        filters: Vec<(String, QoS)>,
        is_persistent: bool,
    ) -> Option<(Local, Drain)> {
        let token = shard.new_token();
        let state = shard.claim(&client_id, token, is_persistent).await.ok()?;
        let mut session = Session::new(client_id, Version::V5, is_persistent);
        session.conn_token = token;
        if is_persistent {
            session.expiry_secs = u32::MAX;
        }
        let (key, mut new_filters) = shard.install(session, state);
        for (filter, qos) in &filters {
            if shard.subscribe(key, filter, subscription(*qos)) {
                new_filters.push(filter.clone());
            }
        }
        shard.announce(key, new_filters).await;
        let limits = &shard.limits;
        let outbox = Rc::new(Outbox::new(
            shard.pressure.clone(),
            limits.write_buffer_pause_bytes,
            (limits.queue_messages_max / 2).max(1),
        ));
        let attached = shard.with_session(key, token, |s, limits, enc| {
            s.resume(outbox.clone(), limits, enc)
        });
        attached?;
        // Retained messages cross too, once, when the bridge starts (as a new subscriber
        // would get them).
        for (filter, qos) in &filters {
            shard.send_retained(key, filter, subscription(*qos));
        }
        shard.feed_retained(key, token);
        let drain = Drain {
            codec: Codec::with_version(Version::V5, u32::MAX),
            outbox,
            buf: BytesMut::new(),
        };
        let local = Local {
            shard,
            key,
            token,
            filters: filters.into_iter().map(|(f, _)| f).collect(),
        };
        Some((local, drain))
    }

    /// Whether the session itself subscribes to `filter`.
    pub fn subscribes(&self, filter: &str) -> bool {
        self.filters.iter().any(|f| f == filter)
    }

    /// Acknowledges a QoS 1 message to the session: it is now the bridge's to deliver.
    pub fn acknowledge(&self, pkid: u16) {
        self.shard
            .with_session(self.key, self.token, |s, limits, enc| {
                s.on_puback(pkid, limits, enc)
            });
    }

    /// Publishes a message from the remote into the broker, as a client of this shard would;
    /// the bridge's own session does not get it (No Local).
    pub async fn publish(&self, publish: Publish) -> bool {
        self.shard
            .publish(Message::received(publish, self.token))
            .await
    }
}

impl Drain {
    /// Waits for the session's next messages (None once the broker closed the session).
    pub async fn next_batch(&mut self) -> Option<Vec<Publish>> {
        std::future::poll_fn(|cx| self.outbox.poll_ready(cx)).await;
        if self.outbox.is_empty() {
            return None; // closing
        }
        let mut taken = 0;
        let buf = &mut self.buf;
        self.outbox.peek_frames(usize::MAX, |frame| {
            buf.extend_from_slice(&frame.header);
            buf.extend_from_slice(&frame.payload);
            taken += frame.len();
        });
        self.outbox.consume(taken);
        let mut batch = Vec::new();
        // The session's frames are whole packets the broker encoded: anything else is a bug,
        // and the rest of the buffer is dropped rather than read out of step.
        loop {
            match self.codec.decode(&mut self.buf) {
                Ok(Decoded::Packet(Packet::Publish(publish))) => batch.push(publish),
                Ok(Decoded::Packet(_)) => {}
                Ok(Decoded::Incomplete { .. }) => break,
                Err(e) => {
                    tracing::error!("bridge session: undecodable frame dropped: {e}");
                    self.buf.clear();
                    break;
                }
            }
        }
        Some(batch)
    }
}

/// The session's subscription for an `out` rule: No Local (what the bridge brought in stays
/// in), the retain flag as published (a retained message stays retained on the remote).
fn subscription(qos: QoS) -> Subscription {
    Subscription {
        options: SubscriptionOptions {
            qos,
            no_local: true,
            retain_as_published: true,
            retain_handling: 0,
        },
        id: None,
        is_filtered: false,
    }
}
