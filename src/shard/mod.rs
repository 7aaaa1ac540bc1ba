//! Everything one core owns: its connections' sessions, its subscription trie, its view of
//! which other shards want which filters, and its replica of the retained messages.
//!
//! Shard state is `!Send` and never leaves its thread; other shards reach it only through
//! `MeshMsg`s, handled in `on_message`.

pub mod requests;
pub mod retained;
pub mod session;
pub mod trie;

use crate::config::Limits;
use crate::mesh::{Mesh, MeshMsg, RequestId, ShardId};
use crate::metrics::Metrics;
use crate::protocol::{Packet, Publish, QoS, ReasonCode, SubscriptionOptions, Version, Will};
use bytes::BytesMut;
use requests::Requests;
use retained::Retained;
use session::{Session, SessionState};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use trie::Trie;

/// Local handle of a session in this shard.
pub type SessionKey = u64;

/// Which shard keeps the registry entry of a client id.
pub fn home_shard(client_id: &str, shards: usize) -> ShardId {
    // FNV-1a: stable across runs and threads, unlike the std hasher's random seed.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in client_id.bytes() {
        hash = (hash ^ byte as u64).wrapping_mul(0x0100_0000_01b3);
    }
    (hash % shards as u64) as ShardId
}

/// What an `Evict` asks of the holder of a client id.
#[derive(Debug)]
struct Eviction {
    token: u64,
    to: ShardId,
    request: RequestId,
    wants_state: bool,
}

/// A claim lost to a newer connection with the same client id, made while it was pending.
#[derive(Debug)]
pub struct Superseded;

/// Who holds a client id, as its home shard records it.
#[derive(Clone, Copy, Debug)]
struct Owner {
    shard: ShardId,
    token: u64,
}

/// The mutable state of a shard.
#[derive(Default)]
pub struct State {
    sessions: HashMap<SessionKey, Session>,
    by_client: HashMap<String, SessionKey>,
    next_key: SessionKey,
    trie: Trie<SessionKey, SubscriptionOptions>,
    /// Local subscriptions per filter, to know when to tell other shards.
    filter_refs: HashMap<String, usize>,
    /// Filters other shards subscribe to.
    interest: Trie<ShardId, ()>,
    retained: Retained,
    /// Home-shard role: where each client id homed here is held.
    registry: HashMap<String, Owner>,
    scratch: BytesMut,
    matches: Vec<(SessionKey, QoS)>,
}

/// One shard.
pub struct Shard {
    /// Shard count.
    pub shards: usize,
    /// Messages to other shards.
    pub mesh: Rc<Mesh>,
    /// Limits from the configuration.
    pub limits: Limits,
    /// Counters.
    pub metrics: Metrics,
    /// Requests waiting on other shards.
    pub requests: Requests,
    state: RefCell<State>,
    next_token: Cell<u64>,
    /// Claims of this shard's connections (by token) not yet answered; true once a newer
    /// claim of the same client id superseded them.
    claims: RefCell<HashMap<u64, Option<Eviction>>>,
    open_connections: Arc<AtomicUsize>,
}

impl Shard {
    /// A shard with no clients yet.
    pub fn new(
        mesh: Rc<Mesh>,
        shards: usize,
        limits: Limits,
        open_connections: Arc<AtomicUsize>,
    ) -> Shard {
        Shard {
            shards,
            mesh,
            limits,
            metrics: Metrics::default(),
            requests: Requests::default(),
            state: RefCell::new(State::default()),
            next_token: Cell::new(0),
            claims: RefCell::default(),
            open_connections,
        }
    }

    /// Whether more connections are open than `limits.connections_max` allows.
    pub fn is_over_connection_limit(&self) -> bool {
        self.open_connections.load(Ordering::Relaxed) > self.limits.connections_max
    }

    /// A connection of this shard has ended.
    pub fn connection_closed(&self) {
        self.open_connections.fetch_sub(1, Ordering::Relaxed);
    }

    /// This shard's id.
    pub fn id(&self) -> ShardId {
        self.mesh.id()
    }

    /// A connection token unique across shards.
    pub fn new_token(&self) -> u64 {
        let n = self.next_token.get() + 1;
        self.next_token.set(n);
        (n << 16) | self.id() as u64
    }

    /// Asks the client id's home shard for the id; returns the old session's state when the
    /// old session was persistent and `wants_state` is set. Any other holder is closed.
    pub async fn claim(
        &self,
        client_id: &str,
        token: u64,
        wants_state: bool,
    ) -> Result<Option<Box<SessionState>>, Superseded> {
        let request = self.requests.open(1);
        self.claims.borrow_mut().insert(token, None);
        let home = home_shard(client_id, self.shards);
        let msg = MeshMsg::Claim {
            client_id: client_id.to_string(),
            from: self.id(),
            token,
            request,
            wants_state,
        };
        self.mesh.send(home, msg).await;
        let state = self.requests.wait(request).await;
        if let Some(Some(newer)) = self.claims.borrow_mut().remove(&token) {
            // Pass what we were handed on to the newer claimant, so a persistent session
            // survives the race.
            let state = if newer.wants_state { state } else { None };
            let handoff = MeshMsg::Handoff {
                request: newer.request,
                state,
            };
            self.mesh.post(newer.to, handoff);
            return Err(Superseded);
        }
        Ok(state)
    }

    /// Installs a session for a new connection and returns its key.
    pub fn install(
        &self,
        mut session: Session,
        state: Option<Box<SessionState>>,
    ) -> (SessionKey, Vec<String>) {
        let mut st = self.state.borrow_mut();
        st.next_key += 1;
        let key = st.next_key;
        let mut new_filters = Vec::new();
        if let Some(state) = state {
            session.restore(*state);
            for (filter, options) in &session.subscriptions {
                st.trie.insert(filter, key, *options);
                if add_filter_ref(&mut st.filter_refs, filter) {
                    new_filters.push(filter.clone());
                }
            }
        }
        st.by_client.insert(session.client_id.clone(), key);
        st.sessions.insert(key, session);
        (key, new_filters)
    }

    /// Runs `f` on a session of this shard, if it still belongs to connection `token`.
    pub fn with_session<R>(
        &self,
        key: SessionKey,
        token: u64,
        f: impl FnOnce(&mut Session, &Limits, &mut BytesMut) -> R,
    ) -> Option<R> {
        let mut st = self.state.borrow_mut();
        let st = &mut *st;
        let session = st
            .sessions
            .get_mut(&key)
            .filter(|s| s.conn_token == token)?;
        Some(f(session, &self.limits, &mut st.scratch))
    }

    /// Tells every other shard that this shard now subscribes to `filters`, and waits until
    /// all have applied it, so a publish anywhere after the SUBACK reaches the subscriber.
    pub async fn announce(&self, filters: Vec<String>) {
        if self.shards == 1 || filters.is_empty() {
            return;
        }
        let request = self.requests.open((self.shards - 1) * filters.len());
        for filter in filters {
            for to in (0..self.shards).filter(|&s| s != self.id()) {
                let msg = MeshMsg::InterestAdd {
                    filter: filter.clone(),
                    from: self.id(),
                    request,
                };
                self.mesh.send(to, msg).await;
            }
        }
        self.requests.wait(request).await;
    }

    /// Tells every other shard that this shard no longer subscribes to `filters`.
    pub fn withdraw(&self, filters: Vec<String>) {
        for filter in filters {
            for to in (0..self.shards).filter(|&s| s != self.id()) {
                let msg = MeshMsg::InterestRemove {
                    filter: filter.clone(),
                    from: self.id(),
                };
                self.mesh.post(to, msg);
            }
        }
    }

    /// Adds a subscription; returns whether the filter is new to this shard.
    pub fn subscribe(&self, key: SessionKey, filter: &str, options: SubscriptionOptions) -> bool {
        let mut st = self.state.borrow_mut();
        st.trie.insert(filter, key, options);
        if let Some(session) = st.sessions.get_mut(&key) {
            if session
                .subscriptions
                .insert(filter.to_string(), options)
                .is_some()
            {
                return false;
            }
        }
        add_filter_ref(&mut st.filter_refs, filter)
    }

    /// Removes a subscription; returns (whether it existed, whether the filter left this shard).
    pub fn unsubscribe(&self, key: SessionKey, filter: &str) -> (bool, bool) {
        let mut st = self.state.borrow_mut();
        let existed = st
            .sessions
            .get_mut(&key)
            .is_some_and(|s| s.subscriptions.remove(filter).is_some());
        if !existed {
            return (false, false);
        }
        st.trie.remove(filter, &key);
        (true, drop_filter_ref(&mut st.filter_refs, filter))
    }

    /// Sends the retained messages matching `filter` to a session that just subscribed.
    pub fn send_retained(&self, key: SessionKey, filter: &str, granted: QoS) {
        let mut st = self.state.borrow_mut();
        let st = &mut *st;
        let Some(session) = st.sessions.get_mut(&key) else {
            return;
        };
        let limits = &self.limits;
        let scratch = &mut st.scratch;
        st.retained.for_each_match(filter, |retained| {
            let mut publish = retained.clone();
            publish.qos = publish.qos.min(granted);
            publish.retain = true;
            session.deliver(publish, limits, scratch);
        });
    }

    /// Routes a publish from a client of this shard: local subscribers now, other shards
    /// through the mesh (once per interested shard). Waits if a ring is full.
    pub async fn publish(&self, publish: Publish) {
        self.metrics
            .messages_received
            .set(self.metrics.messages_received.get() + 1);
        let interested = {
            let mut st = self.state.borrow_mut();
            if publish.retain {
                st.retained
                    .set(publish.topic.as_str(), Some(publish.clone()));
            }
            self.deliver_local(&mut st, &publish);
            interested_shards(&st.interest, publish.topic.as_str())
        };
        for to in (0..self.shards).filter(|&s| s != self.id()) {
            if publish.retain {
                let retain = MeshMsg::Retain {
                    topic: publish.topic.as_str().to_string(),
                    publish: Some(publish.clone()),
                };
                self.mesh.send(to, retain).await;
            }
            if interested & (1 << to) != 0 {
                self.mesh.send(to, MeshMsg::Publish(publish.clone())).await;
            }
        }
    }

    /// Delivers to this shard's subscribers: one copy per session at the highest QoS among
    /// its matching subscriptions, capped by the publish QoS.
    fn deliver_local(&self, st: &mut State, publish: &Publish) {
        let State {
            trie,
            matches,
            sessions,
            scratch,
            ..
        } = st;
        matches.clear();
        trie.for_each_match(publish.topic.as_str(), |key, options| {
            matches.push((*key, options.qos));
        });
        matches.sort_unstable();
        let mut previous = None;
        for &(key, qos) in matches.iter().rev() {
            if previous == Some(key) {
                continue; // sorted by QoS within a key, highest first in reverse
            }
            previous = Some(key);
            let Some(session) = sessions.get_mut(&key) else {
                continue;
            };
            let mut out = publish.clone();
            out.qos = publish.qos.min(qos);
            out.retain = false;
            out.dup = false;
            session.deliver(out, &self.limits, scratch);
            self.metrics
                .messages_sent
                .set(self.metrics.messages_sent.get() + 1);
        }
    }

    /// Ends connection `token`'s hold on its session. A clean session is removed (and its
    /// home shard told); a persistent one stays, offline. Returns the will to publish.
    pub fn disconnect(&self, key: SessionKey, token: u64, graceful: bool) -> Option<Will> {
        let mut st = self.state.borrow_mut();
        let session = st
            .sessions
            .get_mut(&key)
            .filter(|s| s.conn_token == token)?;
        let will = if graceful { None } else { session.will.take() };
        session.will = None;
        session.outbox = None;
        if !session.is_persistent {
            let session = remove_session(&mut st, key);
            drop(st);
            if let Some(session) = session {
                self.withdraw(session.1);
                let home = home_shard(&session.0.client_id, self.shards);
                let release = MeshMsg::Release {
                    client_id: session.0.client_id,
                    token,
                };
                self.mesh.post(home, release);
            }
        }
        will
    }

    /// Publishes a will as its client's last PUBLISH.
    pub async fn publish_will(&self, will: Will) {
        let publish = Publish {
            dup: false,
            qos: will.qos,
            retain: will.retain,
            topic: will.topic,
            pkid: 0,
            properties: will.properties,
            payload: will.payload,
        };
        self.publish(publish).await;
    }

    /// Closes every connection for shutdown; returns their wills.
    pub fn close_all(&self, reason: ReasonCode) -> Vec<Will> {
        let mut st = self.state.borrow_mut();
        let st = &mut *st;
        let mut wills = Vec::new();
        for session in st.sessions.values_mut() {
            let Some(outbox) = session.outbox.take() else {
                continue;
            };
            if session.version == Version::V5 {
                let packet = Packet::Disconnect(crate::protocol::Disconnect {
                    reason,
                    properties: Default::default(),
                });
                session::push_packet(&outbox, &packet, Version::V5, &mut st.scratch);
            }
            outbox.close();
            wills.extend(session.will.take());
        }
        wills
    }

    /// Handles a message from another shard (or from this one).
    pub async fn on_message(self: &Rc<Self>, msg: MeshMsg) {
        match msg {
            MeshMsg::Accepted(stream) => {
                let shard = self.clone();
                let stream = stream.bind_to_executor();
                glommio::spawn_local(crate::net::conn::serve(shard, stream)).detach();
            }
            MeshMsg::Publish(publish) => {
                let mut st = self.state.borrow_mut();
                self.deliver_local(&mut st, &publish);
            }
            MeshMsg::Retain { topic, publish } => {
                self.state.borrow_mut().retained.set(&topic, publish)
            }
            MeshMsg::InterestAdd {
                filter,
                from,
                request,
            } => {
                self.state.borrow_mut().interest.insert(&filter, from, ());
                self.mesh.post(from, MeshMsg::InterestAck { request });
            }
            MeshMsg::InterestRemove { filter, from } => {
                self.state.borrow_mut().interest.remove(&filter, &from);
            }
            MeshMsg::InterestAck { request } => self.requests.answer(request, None),
            MeshMsg::Claim {
                client_id,
                from,
                token,
                request,
                wants_state,
            } => self.on_claim(client_id, from, token, request, wants_state),
            MeshMsg::Evict {
                client_id,
                token,
                to,
                request,
                wants_state,
            } => {
                let evict = Eviction {
                    token,
                    to,
                    request,
                    wants_state,
                };
                self.on_evict(&client_id, evict).await
            }
            MeshMsg::Handoff { request, state } => self.requests.answer(request, state),
            MeshMsg::Release { client_id, token } => {
                let mut st = self.state.borrow_mut();
                if st
                    .registry
                    .get(&client_id)
                    .is_some_and(|o| o.token == token)
                {
                    st.registry.remove(&client_id);
                }
            }
        }
    }

    /// Home-shard role: record the new holder and have the old one evicted.
    fn on_claim(
        &self,
        client_id: String,
        from: ShardId,
        token: u64,
        request: RequestId,
        wants_state: bool,
    ) {
        let owner = Owner { shard: from, token };
        let previous = self
            .state
            .borrow_mut()
            .registry
            .insert(client_id.clone(), owner);
        let msg = match previous {
            Some(old) => {
                let evict = MeshMsg::Evict {
                    client_id,
                    token: old.token,
                    to: from,
                    request,
                    wants_state,
                };
                self.mesh.post(old.shard, evict);
                return;
            }
            None => MeshMsg::Handoff {
                request,
                state: None,
            },
        };
        self.mesh.post(from, msg);
    }

    /// Closes this shard's session of `client_id` (a newer connection took it over) and
    /// hands its state to shard `to` when asked and the session was persistent.
    async fn on_evict(&self, client_id: &str, evict: Eviction) {
        if let Some(pending) = self.claims.borrow_mut().get_mut(&evict.token) {
            // The holder is still waiting for its own claim's answer: the newer claim wins,
            // and the holder hands on what it receives when that answer arrives.
            *pending = Some(evict);
            return;
        }
        let Eviction {
            token,
            to,
            request,
            wants_state,
        } = evict;
        let taken = {
            let mut st = self.state.borrow_mut();
            let key = st.by_client.get(client_id).copied();
            let key = key.filter(|k| st.sessions.get(k).is_some_and(|s| s.conn_token == token));
            key.and_then(|key| remove_session(&mut st, key))
                .map(|(session, gone)| (session, gone, std::mem::take(&mut st.scratch)))
        };
        let mut state = None;
        let mut will = None;
        if let Some((mut session, gone, mut scratch)) = taken {
            self.withdraw(gone);
            if let Some(outbox) = session.outbox.take() {
                if session.version == Version::V5 {
                    let packet = Packet::Disconnect(crate::protocol::Disconnect {
                        reason: ReasonCode::SESSION_TAKEN_OVER,
                        properties: Default::default(),
                    });
                    session::push_packet(&outbox, &packet, Version::V5, &mut scratch);
                }
                outbox.close();
                will = session.will.take();
            }
            self.state.borrow_mut().scratch = scratch;
            if wants_state && session.is_persistent {
                state = Some(Box::new(session.take_state()));
            }
        }
        self.mesh.post(to, MeshMsg::Handoff { request, state });
        if let Some(will) = will {
            self.publish_will(will).await;
        }
    }

    /// Number of sessions (online and offline) on this shard.
    pub fn session_count(&self) -> usize {
        self.state.borrow().sessions.len()
    }
}

/// Removes a session and its subscriptions; returns it with the filters no longer
/// subscribed on this shard.
fn remove_session(st: &mut State, key: SessionKey) -> Option<(Session, Vec<String>)> {
    let session = st.sessions.remove(&key)?;
    if st.by_client.get(&session.client_id) == Some(&key) {
        st.by_client.remove(&session.client_id);
    }
    let mut gone = Vec::new();
    for filter in session.subscriptions.keys() {
        st.trie.remove(filter, &key);
        if drop_filter_ref(&mut st.filter_refs, filter) {
            gone.push(filter.clone());
        }
    }
    Some((session, gone))
}

/// Counts one more local subscription on `filter`; true when it is the first.
fn add_filter_ref(refs: &mut HashMap<String, usize>, filter: &str) -> bool {
    let count = refs.entry(filter.to_string()).or_insert(0);
    *count += 1;
    *count == 1
}

/// Counts one less local subscription on `filter`; true when it was the last.
fn drop_filter_ref(refs: &mut HashMap<String, usize>, filter: &str) -> bool {
    let Some(count) = refs.get_mut(filter) else {
        return false;
    };
    *count -= 1;
    if *count == 0 {
        refs.remove(filter);
        return true;
    }
    false
}

/// Bit set of the other shards with a subscriber matching `topic`.
fn interested_shards(interest: &Trie<ShardId, ()>, topic: &str) -> u64 {
    let mut shards = 0u64;
    interest.for_each_match(topic, |shard, _| shards |= 1 << shard);
    shards
}
