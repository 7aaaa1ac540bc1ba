//! Everything one core owns: its connections' sessions, its subscription trie, its view of
//! which other shards want which filters, and its replica of the retained messages.
//!
//! Shard state is `!Send` and never leaves its thread; other shards reach it only through
//! `MeshMsg`s, handled in `on_message`.

pub mod backpressure;
pub mod cursor;
pub mod encoder;
pub mod msg;
pub mod outbox;
pub mod overflow;
pub mod requests;
pub mod retained;
pub mod session;
pub mod sys;
pub mod trie;

use crate::config::Limits;
use crate::mesh::{Mesh, RequestId, ShardId};
use crate::metrics::Metrics;
use crate::protocol::{MqttString, Packet, Publish, ReasonCode, Version, Will};
use backpressure::Pressure;
use bytes::Bytes;
use encoder::Encoder;
use msg::MeshMsg;
use requests::Requests;
use retained::Retained;
use session::{Grant, Outgoing, Session, SessionState, Subscription};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use trie::Trie;

/// Prefix of a shared subscription's filter [MQTT-4.8.2].
pub const SHARE_PREFIX: &str = "$share/";

/// Most times a shared message is passed on because the member picked for it had gone.
const SHARE_HOPS_MAX: u8 = 8;

/// The shard's hash map: aHash, keyed per process, so crafted client ids and topic levels
/// cannot collide on purpose; several times faster than the standard SipHash on the
/// per-subscriber session lookups of a fan-out.
pub type HashMap<K, V> = std::collections::HashMap<K, V, ahash::RandomState>;

/// A PUBLISH as the broker routes it: the packet plus what routing needs beside it.
#[derive(Clone, Debug)]
pub struct Message {
    /// The PUBLISH as received (topic alias resolved), shared by all its subscribers.
    pub publish: Arc<Publish>,
    /// Connection token of the publisher, for No Local; 0 for none.
    pub origin: u64,
    /// When its Message Expiry Interval runs out, counted from receipt.
    pub expires_at: Option<Instant>,
}

impl Message {
    /// A message received now from connection `origin`.
    pub fn received(publish: Publish, origin: u64) -> Message {
        let expires_at = publish
            .properties
            .message_expiry_interval
            .map(|secs| Instant::now() + Duration::from_secs(secs as u64));
        Message {
            publish: Arc::new(publish),
            origin,
            expires_at,
        }
    }

    /// Whether its Message Expiry Interval has run out.
    pub fn is_expired(&self) -> bool {
        self.expires_at.is_some_and(|t| t <= Instant::now())
    }

    /// The message as the retained store keeps it: topic and payload copied out of the read
    /// buffer they were sliced from, so a retained message held for months does not keep a
    /// 16 KiB buffer alive. Done once, on the publisher's shard; every replica shares it.
    pub fn to_stored(&self) -> Message {
        let mut publish = Publish::clone(&self.publish);
        publish.topic = MqttString::from_str_checked(self.publish.topic.as_str())
            .unwrap_or_else(|| self.publish.topic.clone());
        publish.payload = Bytes::copy_from_slice(&self.publish.payload);
        publish.dup = false;
        Message {
            publish: Arc::new(publish),
            origin: self.origin,
            expires_at: self.expires_at,
        }
    }
}

/// The filter part of a shared subscription `$share/group/filter`; None for a plain filter.
pub fn share_filter(filter: &str) -> Option<&str> {
    let rest = filter.strip_prefix(SHARE_PREFIX)?;
    rest.split_once('/').map(|(_, filter)| filter)
}

/// The members of one shared subscription, as every shard keeps them.
#[derive(Default)]
struct Group {
    members: Vec<(ShardId, SessionKey)>,
    next: usize,
}

impl Group {
    /// The next member in turn, for an even spread.
    fn pick(&mut self) -> Option<(ShardId, SessionKey)> {
        if self.members.is_empty() {
            return None;
        }
        let member = self.members[self.next % self.members.len()];
        self.next = self.next.wrapping_add(1);
        Some(member)
    }
}

/// Local handle of a session in this shard.
pub type SessionKey = u64;

/// A message for another shard.
type Remote = (ShardId, MeshMsg);

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
    trie: Trie<SessionKey, Subscription>,
    /// Shared subscriptions by `$share/group/filter`, with every member on every shard.
    groups: HashMap<String, Group>,
    /// Filter part of each shared subscription → its `$share/group/filter` name.
    group_trie: Trie<String, ()>,
    /// Local subscriptions per filter, to know when to tell other shards.
    filter_refs: HashMap<String, usize>,
    /// Filters other shards subscribe to.
    interest: Trie<ShardId, ()>,
    retained: Retained,
    /// Home-shard role: where each client id homed here is held.
    registry: HashMap<String, Owner>,
    enc: Encoder,
    matches: Vec<(SessionKey, Subscription)>,
    /// Pending will publications (delayed by Will Delay Interval), by connection token.
    pending_wills: HashMap<u64, Will>,
}

/// One shard.
pub struct Shard {
    /// Shard count.
    pub shards: usize,
    /// Messages to other shards.
    pub mesh: Rc<Mesh<MeshMsg>>,
    /// Limits from the configuration.
    pub limits: Limits,
    /// Counters.
    pub metrics: Metrics,
    /// Requests waiting on other shards.
    pub requests: Requests,
    /// Bytes held for this shard's subscribers against its ceiling share; drop counters.
    pub pressure: Rc<Pressure>,
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
        mesh: Rc<Mesh<MeshMsg>>,
        shards: usize,
        limits: Limits,
        open_connections: Arc<AtomicUsize>,
        pressure: Pressure,
    ) -> Shard {
        Shard {
            shards,
            mesh,
            limits,
            metrics: Metrics::default(),
            requests: Requests::default(),
            pressure: Rc::new(pressure),
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
        session.pressure = self.pressure.clone();
        if let Some(state) = state {
            session.restore(*state);
            for (filter, sub) in &session.subscriptions {
                if add_subscription(&mut st, self.id(), key, filter, *sub) {
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
        f: impl FnOnce(&mut Session, &Limits, &mut Encoder) -> R,
    ) -> Option<R> {
        let mut st = self.state.borrow_mut();
        let st = &mut *st;
        let session = st
            .sessions
            .get_mut(&key)
            .filter(|s| s.conn_token == token)?;
        Some(f(session, &self.limits, &mut st.enc))
    }

    /// Tells every other shard that this shard now subscribes to `filters`, and waits until
    /// all have applied it, so a publish anywhere after the SUBACK reaches the subscriber.
    /// A shared subscription's `filters` (`$share/…`) make session `key` a member of its
    /// group on every shard.
    pub async fn announce(&self, key: SessionKey, filters: Vec<String>) {
        if self.shards == 1 || filters.is_empty() {
            return;
        }
        let request = self.requests.open((self.shards - 1) * filters.len());
        for filter in filters {
            for to in (0..self.shards).filter(|&s| s != self.id()) {
                let msg = if filter.starts_with(SHARE_PREFIX) {
                    MeshMsg::ShareJoin {
                        share: filter.clone(),
                        from: self.id(),
                        member: key,
                        request,
                    }
                } else {
                    MeshMsg::InterestAdd {
                        filter: filter.clone(),
                        from: self.id(),
                        request,
                    }
                };
                self.mesh.send(to, msg).await;
            }
        }
        self.requests.wait(request).await;
    }

    /// Tells every other shard that this shard no longer subscribes to `filters`, and that
    /// session `key` left the shared subscriptions among them.
    pub fn withdraw(&self, key: SessionKey, filters: Vec<String>) {
        for filter in filters {
            for to in (0..self.shards).filter(|&s| s != self.id()) {
                let msg = if filter.starts_with(SHARE_PREFIX) {
                    MeshMsg::ShareLeave {
                        share: filter.clone(),
                        from: self.id(),
                        member: key,
                    }
                } else {
                    MeshMsg::InterestRemove {
                        filter: filter.clone(),
                        from: self.id(),
                    }
                };
                self.mesh.post(to, msg);
            }
        }
    }

    /// Adds a subscription; returns whether other shards must be told (a filter new to this
    /// shard, or a new shared-subscription member).
    pub fn subscribe(&self, key: SessionKey, filter: &str, sub: Subscription) -> bool {
        let mut st = self.state.borrow_mut();
        let Some(session) = st.sessions.get_mut(&key) else {
            return false;
        };
        if let Some(old) = session.subscriptions.get_mut(filter) {
            *old = sub;
            if !filter.starts_with(SHARE_PREFIX) {
                st.trie.insert(filter, key, sub);
            }
            return false;
        }
        session.subscriptions.insert(filter.to_string(), sub);
        add_subscription(&mut st, self.id(), key, filter, sub)
    }

    /// Removes a subscription; returns (whether it existed, whether the filter left this shard).
    pub fn unsubscribe(&self, key: SessionKey, filter: &str) -> (bool, bool) {
        let mut st = self.state.borrow_mut();
        let existed = st.sessions.get_mut(&key).is_some_and(|s| {
            s.cursors.remove(filter);
            s.subscriptions.remove(filter).is_some()
        });
        if !existed {
            return (false, false);
        }
        (true, drop_subscription(&mut st, self.id(), key, filter))
    }

    /// Starts streaming the retained messages matching `filter` to a session that just
    /// subscribed (see `cursor`); `feed_retained` sends them.
    pub fn send_retained(&self, key: SessionKey, filter: &str, sub: Subscription) {
        if let Some(session) = self.state.borrow_mut().sessions.get_mut(&key) {
            session.cursors.add(filter, sub);
        }
    }

    /// Routes a publish from a client of this shard: local subscribers now, other shards
    /// through the mesh (once per interested shard), one member of each matching shared
    /// subscription. Waits while the shard is over its memory share or a ring is full.
    /// Returns whether anyone subscribes to it.
    pub async fn publish(&self, message: Message) -> bool {
        self.wait_for_room().await;
        self.metrics
            .messages_received
            .set(self.metrics.messages_received.get() + 1);
        self.route_with(message, true).await
    }

    /// `publish` done at once, when it needs no other shard and nothing to wait for: no memory
    /// pressure, no other shard subscribed, not retained on a broker of several shards, no
    /// shared subscription (whose members may be elsewhere). Returns whether anyone
    /// subscribes, or gives the message back untouched. The common case of a fan-out or a
    /// pair then costs no async state machine.
    pub fn publish_now(&self, message: Message) -> Result<bool, Message> {
        if self.pressure.must_wait() || (message.publish.retain && self.shards > 1) {
            return Err(message);
        }
        let mut st = self.state.borrow_mut();
        let topic = message.publish.topic.as_str();
        if !st.group_trie.is_empty() || interested_shards(&st.interest, topic) != 0 {
            return Err(message);
        }
        self.metrics
            .messages_received
            .set(self.metrics.messages_received.get() + 1);
        if message.publish.retain {
            st.retained.set(topic, Some(message.to_stored()));
        }
        Ok(self.deliver_local(&mut st, &message))
    }

    /// `publish` without waiting for room or counting it as received (the broker's own `$SYS`
    /// messages, wills).
    pub async fn route(&self, message: Message) -> bool {
        self.route_with(message, false).await
    }

    /// Routes a message. With `wait_for_replicas`, a QoS 1/2 retained message returns only once
    /// every shard's replica holds it, so a subscriber anywhere that subscribes after the
    /// publisher's PUBACK gets it. Only a connection's own task may wait so: a ring receiver
    /// waiting for an answer that queues behind it on its own ring would never get it.
    async fn route_with(&self, message: Message, wait_for_replicas: bool) -> bool {
        let stored = message.publish.retain.then(|| message.to_stored());
        let (interested, to_members, local) = {
            let mut st = self.state.borrow_mut();
            if let Some(stored) = &stored {
                st.retained
                    .set(stored.publish.topic.as_str(), Some(stored.clone()));
            }
            let local = self.deliver_local(&mut st, &message);
            let (shared, to_members) = self.deliver_shared(&mut st, &message);
            let interested = interested_shards(&st.interest, message.publish.topic.as_str());
            (interested, to_members, local || shared)
        };
        let matched = local || interested != 0;
        let retain_ack = (wait_for_replicas
            && message.publish.retain
            && message.publish.qos != crate::protocol::QoS::AtMostOnce
            && self.shards > 1)
            .then(|| self.requests.open(self.shards - 1));
        for to in (0..self.shards).filter(|&s| s != self.id()) {
            if let Some(stored) = &stored {
                let retain = MeshMsg::Retain {
                    topic: message.publish.topic.as_str().to_string(),
                    publish: Some(stored.clone()),
                    ack: retain_ack.map(|request| (self.id(), request)),
                };
                self.mesh.send(to, retain).await;
            }
            if interested & (1 << to) != 0 {
                self.mesh.send(to, MeshMsg::Publish(message.clone())).await;
            }
        }
        for (to, msg) in to_members {
            self.mesh.send(to, msg).await;
        }
        if let Some(request) = retain_ack {
            self.requests.wait(request).await;
        }
        matched
    }

    /// Delivers to this shard's subscribers: one copy per session at the highest QoS among
    /// its matching subscriptions, capped by the publish QoS, with the identifiers of all of
    /// them [MQTT-3.3.4-3], [MQTT-3.3.4-4]. Returns whether any session matched.
    fn deliver_local(&self, st: &mut State, message: &Message) -> bool {
        let State {
            trie,
            matches,
            sessions,
            enc,
            ..
        } = st;
        matches.clear();
        trie.for_each_match(message.publish.topic.as_str(), |key, sub| {
            matches.push((*key, *sub));
        });
        matches.sort_unstable_by_key(|(key, _)| *key);
        let mut any = false;
        for run in matches.chunk_by(|a, b| a.0 == b.0) {
            let Some(session) = sessions.get_mut(&run[0].0) else {
                continue;
            };
            let is_own = message.origin != 0 && session.conn_token == message.origin;
            let subs = run.iter().map(|(_, sub)| sub);
            let Some(grant) = grant(message, subs, is_own) else {
                continue;
            };
            any = true;
            session.deliver(&message.publish, grant, &self.limits, enc);
            self.metrics
                .messages_sent
                .set(self.metrics.messages_sent.get() + 1);
        }
        enc.forget();
        any
    }

    /// Picks one member of each shared subscription matching the message; delivers to the
    /// members of this shard and returns the messages for members elsewhere.
    fn deliver_shared(&self, st: &mut State, message: &Message) -> (bool, Vec<Remote>) {
        // Most brokers have no shared subscription: no need to split the topic once more.
        if st.group_trie.is_empty() {
            return (false, Vec::new());
        }
        let mut shares = Vec::new();
        st.group_trie
            .for_each_match(message.publish.topic.as_str(), |share, _| {
                shares.push(share.clone())
            });
        let matched = !shares.is_empty();
        let remote = shares
            .into_iter()
            .filter_map(|share| self.dispatch_shared(st, share, message.clone(), 0))
            .collect();
        (matched, remote)
    }

    /// Hands a message of shared subscription `share` to its next member: delivered here
    /// when the member is local, else returned as the message to send (None, None when the
    /// group has no member left or the message was passed on too often).
    fn dispatch_shared(
        &self,
        st: &mut State,
        share: String,
        message: Message,
        hops: u8,
    ) -> Option<Remote> {
        let members = st.groups.get(&share).map_or(0, |g| g.members.len());
        if hops >= SHARE_HOPS_MAX {
            return None;
        }
        for _ in 0..members {
            let Some((shard, member)) = st.groups.get_mut(&share).and_then(Group::pick) else {
                break;
            };
            if shard != self.id() {
                let msg = MeshMsg::ShareDeliver {
                    share,
                    member,
                    message,
                    hops: hops + 1,
                };
                return Some((shard, msg));
            }
            if self.offer_to_member(st, &share, member, &message) {
                break;
            }
        }
        None
    }

    /// Delivers a shared subscription's message to member session `key` of this shard;
    /// false when that session no longer has the subscription.
    fn offer_to_member(
        &self,
        st: &mut State,
        share: &str,
        key: SessionKey,
        message: &Message,
    ) -> bool {
        let Some(session) = st.sessions.get_mut(&key) else {
            return false;
        };
        let Some(sub) = session.subscriptions.get(share) else {
            return false;
        };
        let Some(mut grant) = grant(message, std::iter::once(sub), false) else {
            return false;
        };
        grant.share = Some(share.to_string());
        session.deliver(&message.publish, grant, &self.limits, &mut st.enc);
        st.enc.forget();
        self.metrics
            .messages_sent
            .set(self.metrics.messages_sent.get() + 1);
        true
    }

    /// Gives the shared messages a departing member had not finished to other members.
    fn requeue_shared(&self, unfinished: Vec<Outgoing>) {
        let mut remote = Vec::new();
        {
            let mut st = self.state.borrow_mut();
            for out in unfinished {
                let Some(share) = out.grant.share else {
                    continue;
                };
                let message = Message {
                    publish: out.publish,
                    origin: 0,
                    expires_at: out.grant.expires_at,
                };
                remote.extend(self.dispatch_shared(&mut st, share, message, 0));
            }
        }
        for (to, msg) in remote {
            self.mesh.post(to, msg);
        }
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
        let home = home_shard(&session.client_id, self.shards);
        let client_id = std::mem::take(&mut session.client_id);
        self.mesh.post(home, MeshMsg::Release { client_id, token });
        self.requeue_shared(session.take_unfinished_shared());
    }

    /// Ends connection `token`'s hold on its session. A clean session is removed (and its
    /// home shard told); a persistent one stays, offline, until its Session Expiry Interval
    /// runs out. Returns the will to publish, with the delay before publishing it.
    pub fn disconnect(
        self: &Rc<Self>,
        key: SessionKey,
        token: u64,
        graceful: bool,
    ) -> Option<(Will, Duration)> {
        let (will, expiry) = {
            let mut st = self.state.borrow_mut();
            let session = st
                .sessions
                .get_mut(&key)
                .filter(|s| s.conn_token == token)?;
            let will = if graceful { None } else { session.will.take() };
            session.will = None;
            session.outbox = None;
            let expiry = match (session.is_persistent, session.version) {
                (false, _) => Some(0),
                (true, Version::V5) if session.expiry_secs != u32::MAX => Some(session.expiry_secs),
                (true, _) => None,
            };
            (will, expiry)
        };
        match expiry {
            Some(0) => self.retire(key, token),
            Some(secs) => self.expire_after(key, token, Duration::from_secs(secs as u64)),
            None => {}
        }
        let will = will?;
        // The will waits for its Will Delay Interval, but never past the session's end
        // [MQTT-3.1.3-9].
        let will_delay = will.properties.will_delay_interval.unwrap_or(0);
        let delay = expiry.map_or(will_delay, |secs| secs.min(will_delay));
        Some((will, Duration::from_secs(delay as u64)))
    }

    /// Removes the session of connection `token` after `after`, if it is still offline then.
    fn expire_after(self: &Rc<Self>, key: SessionKey, token: u64, after: Duration) {
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

    /// Publishes the will of connection `token` after `delay`, unless a new connection with
    /// the same client id takes the session over first (`on_evict` cancels it).
    pub fn publish_will_after(self: &Rc<Self>, token: u64, will: Will, delay: Duration) {
        self.state.borrow_mut().pending_wills.insert(token, will);
        let shard = self.clone();
        glommio::spawn_local(async move {
            glommio::timer::sleep(delay).await;
            let will = shard.state.borrow_mut().pending_wills.remove(&token);
            if let Some(will) = will {
                shard.publish_will(will).await;
            }
        })
        .detach();
    }

    /// Changes the Session Expiry Interval of connection `token`'s session, as a 5.0
    /// DISCONNECT may [MQTT-3.14.2-2 is checked by the caller].
    pub fn set_session_expiry(&self, key: SessionKey, token: u64, secs: u32) {
        self.with_session(key, token, |s, _, _| {
            s.expiry_secs = secs;
            s.is_persistent = secs > 0;
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
        self.metrics
            .messages_received
            .set(self.metrics.messages_received.get() + 1);
        self.route(message).await;
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
                st.enc.push_packet(&outbox, &packet, Version::V5);
            }
            outbox.close();
            wills.extend(session.will.take());
        }
        // Sessions end with the server, so wills still waiting for their delay are due now.
        wills.extend(st.pending_wills.drain().map(|(_, will)| will));
        wills
    }

    /// Handles a message from another shard (or from this one).
    pub async fn on_message(self: &Rc<Self>, msg: MeshMsg) {
        match msg {
            MeshMsg::Publish(message) => {
                // A full shard stops taking from its rings, so their producers wait in turn.
                self.wait_for_ring_room().await;
                let mut st = self.state.borrow_mut();
                self.deliver_local(&mut st, &message);
            }
            MeshMsg::ShareJoin {
                share,
                from,
                member,
                request,
            } => {
                join_group(&mut self.state.borrow_mut(), &share, (from, member));
                self.mesh.post(from, MeshMsg::InterestAck { request });
            }
            MeshMsg::ShareLeave {
                share,
                from,
                member,
            } => leave_group(&mut self.state.borrow_mut(), &share, (from, member)),
            MeshMsg::ShareDeliver {
                share,
                member,
                message,
                hops,
            } => {
                let remote = {
                    let mut st = self.state.borrow_mut();
                    if self.offer_to_member(&mut st, &share, member, &message) {
                        None
                    } else {
                        // The member left on the way; another one gets it.
                        self.dispatch_shared(&mut st, share, message, hops)
                    }
                };
                if let Some((to, msg)) = remote {
                    self.mesh.post(to, msg);
                }
            }
            MeshMsg::Retain {
                topic,
                publish,
                ack,
            } => {
                self.state.borrow_mut().retained.set(&topic, publish);
                if let Some((from, request)) = ack {
                    self.mesh.post(from, MeshMsg::InterestAck { request });
                }
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
            // Placing a connection is the server's (`server::dispatch`); never routed here.
            MeshMsg::Accepted(_) => {}
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
            // A will waiting for its delay is cancelled by the reconnect [MQTT-3.1.3-9].
            st.pending_wills.remove(&token);
            let id = self.id();
            key.and_then(|key| remove_session(&mut st, id, key).map(|r| (key, r)))
                .map(|(key, (session, gone))| (key, session, gone, std::mem::take(&mut st.enc)))
        };
        let mut state = None;
        let mut will = None;
        if let Some((key, mut session, gone, mut enc)) = taken {
            self.withdraw(key, gone);
            if let Some(outbox) = session.outbox.take() {
                if session.version == Version::V5 {
                    let packet = Packet::Disconnect(crate::protocol::Disconnect {
                        reason: ReasonCode::SESSION_TAKEN_OVER,
                        properties: Default::default(),
                    });
                    enc.push_packet(&outbox, &packet, Version::V5);
                }
                outbox.close();
                // A will with a delay is not due: the client is back within it.
                will = session
                    .will
                    .take()
                    .filter(|w| w.properties.will_delay_interval.unwrap_or(0) == 0);
            }
            self.state.borrow_mut().enc = enc;
            if wants_state && session.is_persistent {
                state = Some(Box::new(session.take_state()));
            } else {
                self.requeue_shared(session.take_unfinished_shared());
            }
        }
        self.mesh.post(to, MeshMsg::Handoff { request, state });
        if let Some(will) = will {
            self.publish_will(will).await;
        }
    }
}

/// Removes a session and its subscriptions; returns it with the filters no longer
/// subscribed on this shard and the shared subscriptions it left.
fn remove_session(
    st: &mut State,
    shard: ShardId,
    key: SessionKey,
) -> Option<(Session, Vec<String>)> {
    let session = st.sessions.remove(&key)?;
    if st.by_client.get(&session.client_id) == Some(&key) {
        st.by_client.remove(&session.client_id);
    }
    let gone = session
        .subscriptions
        .keys()
        .filter(|filter| drop_subscription(st, shard, key, filter))
        .cloned()
        .collect();
    Some((session, gone))
}

/// Indexes session `key`'s subscription on `filter` on this shard; true when other shards
/// must be told (first local subscriber of a filter, or any shared subscription).
fn add_subscription(
    st: &mut State,
    shard: ShardId,
    key: SessionKey,
    filter: &str,
    sub: Subscription,
) -> bool {
    if filter.starts_with(SHARE_PREFIX) {
        join_group(st, filter, (shard, key));
        return true;
    }
    st.trie.insert(filter, key, sub);
    add_filter_ref(&mut st.filter_refs, filter)
}

/// Undoes `add_subscription`; true when other shards must be told.
fn drop_subscription(st: &mut State, shard: ShardId, key: SessionKey, filter: &str) -> bool {
    if filter.starts_with(SHARE_PREFIX) {
        leave_group(st, filter, (shard, key));
        return true;
    }
    st.trie.remove(filter, &key);
    drop_filter_ref(&mut st.filter_refs, filter)
}

/// Adds a member to shared subscription `share`.
fn join_group(st: &mut State, share: &str, member: (ShardId, SessionKey)) {
    let group = st.groups.entry(share.to_string()).or_default();
    if group.members.is_empty() {
        let filter = share_filter(share).unwrap_or(share);
        st.group_trie.insert(filter, share.to_string(), ());
    }
    if !group.members.contains(&member) {
        group.members.push(member);
    }
}

/// Removes a member from shared subscription `share`.
fn leave_group(st: &mut State, share: &str, member: (ShardId, SessionKey)) {
    let Some(group) = st.groups.get_mut(share) else {
        return;
    };
    group.members.retain(|m| *m != member);
    if group.members.is_empty() {
        st.groups.remove(share);
        let filter = share_filter(share).unwrap_or(share);
        st.group_trie.remove(filter, &share.to_string());
    }
}

/// The message as one session gets it through its matching subscriptions `subs`: the
/// highest QoS granted, capped by the publish QoS; RETAIN kept only where Retain As Published
/// asks [MQTT-3.3.1-12]; every Subscription Identifier. None when all of them are No Local
/// subscriptions of the publishing client itself [MQTT-3.8.3-3].
fn grant<'a>(
    message: &Message,
    subs: impl Iterator<Item = &'a Subscription>,
    is_own: bool,
) -> Option<Grant> {
    let publish = &message.publish;
    let mut qos = None;
    let mut retain = false;
    let mut ids = Vec::new();
    for sub in subs.filter(|s| !(is_own && s.options.no_local)) {
        qos = qos.max(Some(sub.options.qos));
        retain |= sub.options.retain_as_published && publish.retain;
        ids.extend(sub.id);
    }
    Some(Grant {
        qos: publish.qos.min(qos?),
        retain,
        ids,
        expires_at: message.expires_at,
        share: None,
    })
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
    if interest.is_empty() {
        return shards;
    }
    interest.for_each_match(topic, |shard, _| shards |= 1 << shard);
    shards
}
