//! A persistent session handed to another shard without losing what is published meanwhile.
//!
//! The gap: when shard A hands a session to shard B (`takeover`), A's subscriptions of it go
//! at once, but B's are known to the other shards only once B has installed the session and
//! announced its filters. A message published in between reached A (or a shard still routing
//! to A) after the session left, and B before it arrived or not at all: lost, although it was
//! PUBACKed to its publisher.
//!
//! The bridge: A keeps a stub of the session: its plain subscriptions stay indexed under the
//! old key and what they match is held (not sent) until B settles. B holds what its own
//! subscriptions match too, from install on. Once B has announced its filters it sends
//! `Settle` to every shard; each passes it on to A as `Settled` once every route it had started
//! has handed its messages to the rings (`Routes`), so `Settled` arrives behind them. A route
//! that starts later already sends to B. When all have, no message routed to A alone is still
//! on its way, so A drops the stub and hands its held messages to B, which
//! queues them, then what it held itself, leaving out what both held (the same `Arc`). Order
//! is kept: what A held was routed before what only B holds. The connection is attached (and
//! gets its CONNACK) after that. QoS 0 messages held meanwhile are dropped like any QoS 0
//! message for an offline session; shared subscriptions leave A at once and join again on B
//! (a group whose only member moves has no member for that moment).

use super::message::Message;
use super::msg::{Handoff, MeshMsg, Settle, StubRef};
use super::persist::{Journal, Record};
use super::routing::grant;
use super::session::{Outgoing, Session, SessionState, Subscription};
use super::shared::SHARE_PREFIX;
use super::subscriptions::drop_subscriptions;
use super::{SessionKey, Shard, State};
use crate::protocol::{Publish, QoS};
use std::collections::HashSet;
use std::rc::Rc;
use std::sync::Arc;

/// What a session's subscriptions matched while it moves between shards, held instead of sent.
pub(super) struct Held {
    /// Connection token the session had (No Local compares the publisher's with it).
    token: u64,
    /// The messages, in the order they were routed here.
    messages: Vec<Outgoing>,
    /// Messages the session already has (its handed state), so a copy held here is left out.
    known: Vec<Arc<Publish>>,
    /// A stub's: the journal of the session that left, which records what the stub holds, so
    /// that a crash before the new holder's `Open` is durable still has it (that `Open`
    /// follows the settle, and holds it too).
    journal: Option<Journal>,
}

impl Held {
    /// Holds `message` as matched by `subs`; returns whether the session gets it.
    pub(super) fn hold<'a>(
        &mut self,
        message: &Message,
        subs: impl Iterator<Item = &'a Subscription>,
    ) -> bool {
        let is_own = message.origin != 0 && message.origin == self.token;
        let Some(grant) = grant(message, subs, is_own) else {
            return false;
        };
        let publish = message.publish.clone();
        if let Some(journal) = self
            .journal
            .as_ref()
            .filter(|_| grant.qos != QoS::AtMostOnce)
        {
            let mid = journal.persist.message_id(&publish);
            let (sid, grant) = (journal.sid, grant.to_stored());
            journal.persist.append(&Record::Enqueue { sid, mid, grant });
        }
        self.messages.push(Outgoing { publish, grant });
        true
    }
}

/// A session handed to another shard, as the shard it left keeps it until the new one settles.
pub(super) struct Stub {
    /// Its plain filters, still indexed under the stub's key.
    filters: Vec<String>,
    /// Shards that passed the new holder's `Settle` on.
    settled: usize,
}

impl Shard {
    /// Turns evicted session `key`, handed to another shard, into a stub: its plain
    /// subscriptions stay indexed and hold what they match; its shared subscriptions leave now.
    /// Returns the filters no longer subscribed here (for `withdraw`) and the stub's address.
    pub(super) fn leave_stub(
        &self,
        st: &mut State,
        key: SessionKey,
        session: &Session,
    ) -> (Vec<String>, StubRef) {
        let (shared, plain): (Vec<&String>, Vec<&String>) = session
            .subscriptions
            .keys()
            .partition(|f| f.starts_with(SHARE_PREFIX));
        let gone = drop_subscriptions(st, self.id(), key, shared);
        let filters = plain.into_iter().cloned().collect();
        st.stubs.insert(
            key,
            Stub {
                filters,
                settled: 0,
            },
        );
        let held = Held {
            token: session.conn_token,
            messages: Vec::new(),
            known: Vec::new(),
            journal: session.journal.as_deref().cloned(),
        };
        st.held.insert(key, held);
        let stub = StubRef {
            shard: self.id(),
            key,
        };
        (gone, stub)
    }

    /// Session `key`, just installed from `state` handed over by `stub`, holds what its
    /// subscriptions match until `settle_arrival`.
    pub(super) fn hold_arrival(
        &self,
        st: &mut State,
        key: SessionKey,
        token: u64,
        state: &SessionState,
        stub: StubRef,
    ) {
        let queued = state.queue.iter().map(|o| o.publish.clone());
        let inflight = state.inflight.iter().map(|i| i.out.publish.clone());
        let held = Held {
            token,
            messages: Vec::new(),
            known: queued.chain(inflight).collect(),
            journal: None,
        };
        st.held.insert(key, held);
        st.arrivals.insert(key, (stub, token));
    }

    /// Settles the stub that session `key` arrived from (if it did): takes what the stub held
    /// and queues it, then what the session held here. A newer connection that claimed the
    /// client id meanwhile takes the session over now.
    pub(super) async fn settle_arrival(&self, key: SessionKey) {
        let (arrival, waiters) = {
            let mut st = self.state.borrow_mut();
            let arrival = st.arrivals.remove(&key);
            (arrival, std::mem::take(&mut st.settle_waiters))
        };
        waiters.into_iter().for_each(std::task::Waker::wake);
        let Some((stub, token)) = arrival else {
            return;
        };
        // Boxed: every CONNECT and SUBSCRIBE awaits this, and only an arrival waits here;
        // inline, its state would sit in every one of their futures.
        Box::pin(self.settle_arrived(key, stub, token)).await;
    }

    /// The rest of `settle_arrival` for a session that did arrive.
    async fn settle_arrived(&self, key: SessionKey, stub: StubRef, token: u64) {
        let upstream = self.settle(stub).await;
        self.merge_held(key, upstream);
        self.open_journal(key);
        let newer = self.claims.borrow_mut().remove(&token).flatten();
        if let Some(evict) = newer {
            self.on_evict(evict).await;
        }
    }

    /// Records an arrived persistent session (`Open`, with what it was handed and what was
    /// held for it) once it has settled: until then the shard it left has the newest record.
    fn open_journal(&self, key: SessionKey) {
        let Some(persist) = &self.persist else {
            return;
        };
        let mut st = self.state.borrow_mut();
        let Some(session) = st.sessions.get_mut(&key) else {
            return;
        };
        if session.is_persistent && session.journal.is_none() {
            session.open_journal(persist);
        }
    }

    /// Whether sessions are arriving from other shards: what is held for them is stored only
    /// once they settle (`open_journal`).
    pub fn arrivals(&self) -> Vec<SessionKey> {
        self.state.borrow().arrivals.keys().copied().collect()
    }

    /// Waits until none of `keys` is still arriving.
    pub async fn arrivals_settled(&self, keys: &[SessionKey]) {
        std::future::poll_fn(|cx| {
            let mut st = self.state.borrow_mut();
            if keys.iter().any(|k| st.arrivals.contains_key(k)) {
                st.settle_waiters.push(cx.waker().clone());
                return std::task::Poll::Pending;
            }
            std::task::Poll::Ready(())
        })
        .await
    }

    /// Asks every shard to pass `Settle` on to the stub's shard; returns what the stub held.
    pub(super) async fn settle(&self, stub: StubRef) -> Vec<Outgoing> {
        let request = self.requests.open(1);
        let settle = Settle {
            stub,
            to: self.id(),
            request,
        };
        for to in 0..self.shards {
            self.mesh.send(to, MeshMsg::Settle(settle)).await;
        }
        let answer = self.requests.wait(request).await;
        answer.state.map_or_else(Vec::new, |state| state.queue)
    }

    /// Queues `upstream` (what the stub held) and then what session `key` held here, leaving
    /// out what it has already.
    fn merge_held(&self, key: SessionKey, upstream: Vec<Outgoing>) {
        let mut st = self.state.borrow_mut();
        let st = &mut *st;
        let Some(held) = st.held.remove(&key) else {
            return;
        };
        let Some(session) = st.sessions.get_mut(&key) else {
            return;
        };
        let mut known: HashSet<*const Publish> = held.known.iter().map(Arc::as_ptr).collect();
        let mut fresh = |out: &Outgoing| known.insert(Arc::as_ptr(&out.publish));
        let merged: Vec<Outgoing> = upstream.into_iter().filter(&mut fresh).collect();
        let here: Vec<Outgoing> = held.messages.into_iter().filter(&mut fresh).collect();
        for out in merged.into_iter().chain(here) {
            // Held without the ACL's read check `deliver_local` makes; made here, for the
            // client that now holds the session.
            if session.may_read_topic(out.publish.topic.as_str()) {
                session.deliver(&out.publish, out.grant, &self.limits, &mut st.enc);
            }
        }
    }

    /// A new holder's `Settle`: passed on to the stub's shard behind every message this
    /// shard's routes under way send (they matched the topic before the new holder's
    /// subscriptions were known here). Waits in a task of its own: a ring receiver never waits
    /// for routes, which may themselves wait for ring room.
    pub(super) fn on_settle(self: &Rc<Self>, settle: Settle) {
        let mark = self.routes.borrow().mark();
        if self.routes.borrow().is_done(mark) {
            self.mesh.post(settle.stub.shard, MeshMsg::Settled(settle));
            return;
        }
        let shard = self.clone();
        glommio::spawn_local(async move {
            shard.routes_done(mark).await;
            shard.mesh.post(settle.stub.shard, MeshMsg::Settled(settle));
        })
        .detach();
    }

    /// One shard passed `Settle` on; after the last, the stub goes and what it held goes to the
    /// new holder.
    pub(super) fn on_settled(&self, settle: Settle) {
        let key = settle.stub.key;
        let (gone, messages) = {
            let mut st = self.state.borrow_mut();
            let Some(stub) = st.stubs.get_mut(&key) else {
                return;
            };
            stub.settled += 1;
            if stub.settled < self.shards {
                return;
            }
            let Some(stub) = st.stubs.remove(&key) else {
                return;
            };
            let held = st.held.remove(&key).map_or_else(Vec::new, |h| h.messages);
            let gone = drop_subscriptions(&mut st, self.id(), key, &stub.filters);
            (gone, held)
        };
        self.withdraw(key, gone);
        let state = SessionState {
            queue: messages,
            ..SessionState::default()
        };
        let handoff = Handoff {
            request: settle.request,
            state: Some(Box::new(state)),
            stub: None,
        };
        self.mesh.post(settle.to, MeshMsg::Handoff(handoff));
    }
}
