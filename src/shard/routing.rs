//! Routing a publish: to this shard's subscribers (one copy per session, as its matching
//! subscriptions grant it), to every other shard with a subscriber for its topic (one
//! `MeshMsg::Publish` each, sharing the `Arc`), to one member of each matching shared
//! subscription (`shared`), and to every retained replica.

use super::encoder::{Encoder, HeaderSlot, RunHeaders};
use super::message::Message;
use super::msg::{InterestAck, MeshMsg, Retain};
use super::persist::{wall_ms, Record};
use super::session::{Grant, Session, Subscription};
use super::trie::Trie;
use super::{SessionKey, Shard, State};
use crate::config::Limits;
use crate::mesh::{RequestId, ShardId};
use crate::protocol::{MqttString, Publish, QoS};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};

/// Messages of a run given header slots of their own (`Encoder::place`); a connection's runs
/// are no longer (`RUN_MAX` in `net::conn`), and a message past them is looked up by address.
const PLACED_MAX: usize = 32;

/// Shard ids are bits of a `u64` (`interested_shards`).
const _: () = assert!(crate::config::SHARDS_MAX <= u64::BITS as usize);

impl Shard {
    /// Routes a publish from a client of this shard: local subscribers now, other shards
    /// through the mesh (once per interested shard), one member of each matching shared
    /// subscription. Waits while the shard is over its memory share or a ring is full.
    /// Returns whether anyone subscribes to it.
    pub async fn publish(&self, message: Message) -> bool {
        let (matched, pending) = self.publish_held(message).await;
        if let Some(request) = pending {
            self.requests.wait(request).await;
        }
        matched
    }

    /// `publish`, but the answers the acknowledgement must wait for from other shards (what
    /// they store of it, their retained replicas) are left to the caller: the request to wait
    /// for, if any. A connection holds its acknowledgement in its outbox meanwhile and reads on.
    pub async fn publish_held(&self, message: Message) -> (bool, Option<RequestId>) {
        self.wait_for_room().await;
        self.count_received(message.publish.qos);
        let routed = self.route_with(message, true).await;
        self.wait_for_arrivals().await;
        routed
    }

    /// With persistence, a PUBACK waits for sessions arriving from other shards to settle:
    /// what this shard held for them is stored only then (`handoff`).
    async fn wait_for_arrivals(&self) {
        if self.persist.is_some() {
            let keys = self.arrivals();
            if !keys.is_empty() {
                self.arrivals_settled(&keys).await;
            }
        }
    }

    /// `publish` done at once, when it has nothing to wait for: no memory pressure, at most
    /// one other shard subscribed and room in the ring toward it, not retained on a broker of
    /// several shards, no shared subscription (whose members may be elsewhere), no stored
    /// record for another shard to wait on. Returns whether anyone subscribes, or gives the
    /// message back untouched. The common case of a fan-out or a pair, within a shard or
    /// across two, then costs no async state machine.
    pub fn publish_now(&self, message: Message) -> Result<bool, Message> {
        if self.pressure.must_wait()
            || (message.publish.retain && self.shards > 1)
            || self.cluster.is_some()
        {
            return Err(message);
        }
        let mut st = self.state.borrow_mut();
        if self.persist.is_some() && !st.arrivals.is_empty() {
            return Err(message);
        }
        let topic = message.publish.topic.as_str();
        if !st.group_trie.is_empty() {
            return Err(message);
        }
        let interested = interested_shards(&st.interest, topic);
        if interested != 0 && !self.send_to_one_shard(interested, &message) {
            return Err(message);
        }
        self.count_received(message.publish.qos);
        if message.publish.retain {
            let stored = message.to_stored();
            self.persist_retained(topic, Some(&stored));
            st.retained.set(topic, Some(stored));
        }
        // The other shard's subscribers count as matching, as on the async path.
        Ok(self.deliver_local(&mut st, &message) || interested != 0)
    }

    /// Sends `message` to the one other shard of `interested` when its ring has room; false,
    /// with nothing sent, otherwise: when more shards are interested (a full ring toward
    /// the second would leave the first with a message the others lack), when the ring is
    /// full, or when a PUBACK would wait for the other shard's stored record. The async path
    /// costs an async state machine and a wake-up per publish; with two shards on one CPU
    /// it delivered 55-59% of one shard's fanout-100 rate.
    fn send_to_one_shard(&self, interested: u64, message: &Message) -> bool {
        let is_stored = self.persist.is_some() && message.publish.qos != QoS::AtMostOnce;
        if interested.count_ones() != 1 || is_stored {
            return false;
        }
        let to = interested.trailing_zeros() as ShardId;
        self.mesh
            .try_send(to, MeshMsg::Publish(message.clone()))
            .is_ok()
    }

    /// Whether a run of publishes on `topic` at `qos` (`is_run`) can go to `publish_run`:
    /// each would be routed at once (`publish_now`), to this shard's subscribers and those
    /// of at most one other shard. Not while a session moves between shards: what it holds
    /// is stored message by message (a record names the message written last,
    /// `Persist::message_id`). Nothing it checks changes until the run is routed: the caller
    /// decodes the run without waiting.
    pub fn can_publish_run(&self, topic: &str, qos: QoS) -> bool {
        if self.pressure.must_wait() || self.cluster.is_some() {
            return false;
        }
        let st = self.state.borrow();
        let interested = interested_shards(&st.interest, topic);
        // A PUBACK that waits for another shard's record takes the async path.
        let is_stored = self.persist.is_some() && qos != QoS::AtMostOnce;
        (self.persist.is_none() || st.arrivals.is_empty())
            && st.group_trie.is_empty()
            && st.held.is_empty()
            && (interested == 0 || (interested.count_ones() == 1 && !is_stored))
    }

    /// Routes a run of publishes from one client on one topic (`is_run`, none retained) as
    /// `publish_now` routes each, with `can_publish_run` checked: each subscriber gets them
    /// in order, the whole run at a time (`deliver_run`), and the one other shard
    /// subscribed gets the run as one ring message. Returns whether anyone subscribes, the
    /// same for every message of the run; None, with nothing routed, when the ring toward
    /// that shard is full (the caller then routes each message on its own).
    pub fn publish_run(&self, run: &[Message]) -> Option<bool> {
        debug_assert!(run.iter().all(|m| !m.publish.retain));
        let mut st = self.state.borrow_mut();
        let interested = interested_shards(&st.interest, run[0].publish.topic.as_str());
        if interested != 0 {
            let to = interested.trailing_zeros() as ShardId;
            self.mesh
                .try_send(to, MeshMsg::PublishRun(run.to_vec()))
                .ok()?;
        }
        for message in run {
            self.count_received(message.publish.qos);
        }
        // The other shard's subscribers count as matching, as on the async path.
        Some(self.deliver_run(&mut st, run) || interested != 0)
    }

    /// `publish` without waiting for room or counting it as received (the broker's own `$SYS`
    /// messages, wills).
    pub async fn route(&self, message: Message) -> bool {
        // Nothing is acknowledged: no answer to wait for.
        self.route_with(message, false).await.0
    }

    /// Counts a PUBLISH received (from a client, or a will).
    pub(super) fn count_received(&self, qos: QoS) {
        self.metrics.count_received(qos as usize);
    }

    /// Routes a message. With `wait_for_replicas`, a QoS 1/2 message is acknowledged only once
    /// every shard's replica holds it (retained), so a subscriber anywhere that subscribes after
    /// the publisher's PUBACK gets it, and once the other shards stored it (persistence): the
    /// request those answers go to is returned. Only a connection may wait for it: a ring
    /// receiver waiting for an answer that queues behind it on its own ring would never get it.
    async fn route_with(
        &self,
        message: Message,
        wait_for_replicas: bool,
    ) -> (bool, Option<RequestId>) {
        let route = self.start_route();
        let stored = message.publish.retain.then(|| message.to_stored());
        let (interested, to_members, local) = {
            let mut st = self.state.borrow_mut();
            if let Some(stored) = &stored {
                let topic = stored.publish.topic.as_str();
                self.persist_retained(topic, Some(stored));
                st.retained.set(topic, Some(stored.clone()));
            }
            let local = self.deliver_local(&mut st, &message);
            let (shared, to_members) = self.deliver_shared(&mut st, &message);
            let interested = interested_shards(&st.interest, message.publish.topic.as_str());
            (interested, to_members, local || shared)
        };
        let is_acked = wait_for_replicas && message.publish.qos != QoS::AtMostOnce;
        let replicas_ack = is_acked && message.publish.retain && self.shards > 1;
        // With persistence, the PUBACK also waits for what the other shards store of it.
        let journaled = match is_acked && self.persist.is_some() {
            true => self.journaled_shards(),
            false => 0,
        };
        let durable = interested & journaled;
        let shares = to_members.iter().filter(|(to, _)| journaled & 1 << to != 0);
        let acks = if replicas_ack { self.shards - 1 } else { 0 }
            + durable.count_ones() as usize
            + shares.count();
        let request = (acks > 0).then(|| self.requests.open(acks));
        let retain_ack = request.filter(|_| replicas_ack);
        for to in (0..self.shards).filter(|&s| s != self.id()) {
            if let Some(stored) = &stored {
                let is_delivered_too = interested & (1 << to) != 0;
                let replica = self.replica(stored, retain_ack, is_delivered_too);
                self.mesh.send(to, replica).await;
            }
            if interested & (1 << to) != 0 {
                let msg = match request.filter(|_| durable & (1 << to) != 0) {
                    Some(request) => MeshMsg::PublishDurable(message.clone(), self.id(), request),
                    None => MeshMsg::Publish(message.clone()),
                };
                self.mesh.send(to, msg).await;
            }
        }
        for (to, mut msg) in to_members {
            if let (MeshMsg::ShareDeliver(deliver), Some(request)) = (&mut msg, request) {
                // The member's shard answers once its records of the message are durable.
                deliver.ack = (journaled & 1 << to != 0).then_some((self.id(), request));
            }
            self.mesh.send(to, msg).await;
        }
        let cluster_ack = self
            .to_cluster(&message, stored.as_ref(), wait_for_replicas)
            .await;
        drop(route); // everything is on its way; what follows only waits
        if let Some(answer) = cluster_ack {
            // The NATS thread answers once its server has the message; it stops only at
            // shutdown, when no PUBACK matters any more.
            let _ = answer.await;
        }
        // On a cluster node other nodes may subscribe: a PUBACK cannot say that nobody does.
        let matched = local || interested != 0 || self.cluster.is_some();
        (matched, request)
    }

    /// What sets `stored` in another shard's retained replica, answering `request` once
    /// applied when given; `is_delivered_too` when a publish of it follows on the same ring.
    fn replica(
        &self,
        stored: &Message,
        request: Option<RequestId>,
        is_delivered_too: bool,
    ) -> MeshMsg {
        MeshMsg::Retain(Retain {
            topic: stored.publish.topic.as_str().to_string(),
            publish: Some(stored.clone()),
            ack: request.map(|request| (self.id(), request)),
            is_delivered_too,
        })
    }

    /// Delivers to this shard's subscribers: one copy per session at the highest QoS among
    /// its matching subscriptions, capped by the publish QoS, with the identifiers of all of
    /// them [MQTT-3.3.4-3], [MQTT-3.3.4-4]. Returns whether any session matched.
    pub(super) fn deliver_local(&self, st: &mut State, message: &Message) -> bool {
        self.deliver_run(st, std::slice::from_ref(message))
    }

    /// `deliver_local` for a run of messages that differ only in payload, properties and
    /// expiry (`is_run`): each session gets the whole run before the next is touched. A
    /// fan-out waits on memory, not instructions: per message it touches every matched
    /// session, its outbox and the tail of its coalescing chunk, more lines than L1d holds,
    /// so each delivery missed on lines that were hot one message ago (~40% of a
    /// fanout-100 broker's cycles, perf). Per run they are fetched once.
    pub(super) fn deliver_run(&self, st: &mut State, run: &[Message]) -> bool {
        debug_assert!(run.windows(2).all(|w| is_run(&w[0], &w[1])));
        let State {
            trie,
            matched,
            sessions,
            enc,
            held,
            ..
        } = st;
        let first = &run[0];
        let topic = first.publish.topic.as_str();
        let matches = matched.of(trie, topic);
        // Sorted by session: one session when the first and the last are the same.
        let is_sole = matches.first().map(|m| m.0) == matches.last().map(|m| m.0);
        enc.set_sole(is_sole);
        let mut headers = [HeaderSlot::default(); PLACED_MAX];
        if !is_sole {
            for (header, message) in headers.iter_mut().zip(run) {
                *header = enc.place(&message.publish);
            }
        }
        let mut any = false;
        let is_holding = !held.is_empty();
        // Stored sessions get a run message by message, after the others: their records of a
        // message then follow its body, joined into one (`Persist::append_joined`).
        let mut stored = Vec::new();
        // The run's headers for each shape of client met so far (see `RunHeaders`).
        let mut shaped = Vec::new();
        for same in matches.chunk_by(|a, b| a.0 == b.0) {
            let key = same[0].0;
            let subs = same.iter().map(|(_, sub)| sub);
            if is_holding {
                // A session moving between shards holds what it matches (see `handoff`).
                if let Some(held) = held.get_mut(&key) {
                    for message in run {
                        any |= held.hold(message, subs.clone());
                    }
                    continue;
                }
            }
            let Some(session) = sessions.get_mut(&key) else {
                continue;
            };
            // The same for every message of the run but its expiry.
            let Some(grant) = session_grant(session, first, same) else {
                continue;
            };
            any = true;
            if run.len() > 1 && grant.qos != QoS::AtMostOnce && session.sid().is_some() {
                stored.push((key, grant));
                continue;
            }
            self.deliver_each(session, run, &headers, grant, enc, &mut shaped);
        }
        for (i, message) in run.iter().enumerate() {
            let header = headers.get(i..).unwrap_or_default();
            for (key, grant) in &stored {
                if let Some(session) = sessions.get_mut(key) {
                    let mut grant = grant.clone();
                    grant.set_expires_at(message.expires_at);
                    let message = std::slice::from_ref(message);
                    self.deliver_each(session, message, header, grant, enc, &mut Vec::new());
                }
            }
        }
        enc.set_sole(false);
        any
    }

    /// Gives `session` each message of `run` in order, as `grant` (made for the first)
    /// says, with each message's own expiry and header slot (`headers`, in step with `run`;
    /// a message past them is looked up by its address). Several go the fast way where
    /// the session allows (`send_run`), their headers encoded once per shape (`shaped`).
    fn deliver_each(
        &self,
        session: &mut Session,
        run: &[Message],
        headers: &[HeaderSlot],
        mut grant: Grant,
        enc: &mut Encoder,
        shaped: &mut Vec<RunHeaders>,
    ) {
        if let [message] = run {
            // One message, the grant made for it: nothing to copy (most routes).
            grant.header = headers.first().copied().unwrap_or_default();
            self.metrics.count_sent(grant.qos as usize);
            session.deliver(&message.publish, grant, &self.limits, enc);
            return;
        }
        let sent = send_run(session, run, headers, &grant, (&self.limits, enc), shaped);
        for _ in 0..sent {
            self.metrics.count_sent(grant.qos as usize);
        }
        for (i, message) in run.iter().enumerate().skip(sent) {
            let mut grant = grant.clone();
            grant.set_expires_at(message.expires_at);
            grant.header = headers.get(i).copied().unwrap_or_default();
            self.metrics.count_sent(grant.qos as usize);
            session.deliver(&message.publish, grant, &self.limits, enc);
        }
    }

    /// Counts a route under way until the returned guard is dropped.
    fn start_route(&self) -> Route<'_> {
        let id = self.routes.borrow_mut().start();
        Route {
            routes: &self.routes,
            id,
        }
    }

    /// Waits until every route that started before `mark` (`Routes::mark`) has sent all
    /// its messages.
    pub(super) async fn routes_done(&self, mark: u64) {
        poll_fn(|cx| {
            let mut routes = self.routes.borrow_mut();
            if routes.is_done(mark) {
                return Poll::Ready(());
            }
            routes.waiters.push((mark, cx.waker().clone()));
            Poll::Pending
        })
        .await
    }

    /// A publish routed here by another shard, for this shard's subscribers.
    pub(super) async fn on_publish(&self, message: Message) {
        // A full shard stops taking from its rings, so their producers wait in turn.
        self.wait_for_ring_room().await;
        let mut st = self.state.borrow_mut();
        self.deliver_local(&mut st, &message);
    }

    /// A run of publishes routed here by another shard (`publish_run`).
    pub(super) async fn on_publish_run(&self, run: Vec<Message>) {
        if self.pressure.must_wait() {
            // A paused shard takes `RING_CREDIT` publishes at a time, not runs: a run each
            // would queue 32 times as many for a subscriber that cannot keep up, past its
            // queue's bound.
            for message in run {
                self.on_publish(message).await;
            }
            return;
        }
        let mut st = self.state.borrow_mut();
        self.deliver_run(&mut st, &run);
    }

    /// A QoS 1/2 publish from another shard whose PUBACK waits for this shard's records.
    pub(super) async fn on_publish_durable(
        self: &Rc<Self>,
        message: Message,
        from: ShardId,
        request: RequestId,
    ) {
        let before = self.persist.as_ref().map_or(0, |p| p.last());
        self.on_publish(message).await;
        self.ack_when_durable(before, from, request);
    }

    /// Answers `request` of shard `from` once every record appended since `before` is
    /// durable: at once when there is none, else from a task of its own (a ring receiver
    /// never waits).
    pub(super) fn ack_when_durable(
        self: &Rc<Self>,
        before: u64,
        from: ShardId,
        request: RequestId,
    ) {
        let at = self.persist.as_ref().map_or(0, |p| p.last());
        let ack = MeshMsg::InterestAck(InterestAck { request });
        let arriving = self.arrivals();
        if let (Some(persist), false) = (self.persist.clone(), arriving.is_empty()) {
            let shard = self.clone();
            glommio::spawn_local(async move {
                shard.arrivals_settled(&arriving).await;
                persist.wait_durable(persist.last()).await;
                shard.mesh.post(from, ack);
            })
            .detach();
            return;
        }
        let Some(persist) = self
            .persist
            .clone()
            .filter(|p| at > before && !p.is_durable(at))
        else {
            return self.mesh.post(from, ack);
        };
        let shard = self.clone();
        glommio::spawn_local(async move {
            persist.wait_durable(at).await;
            shard.mesh.post(from, ack);
        })
        .detach();
    }

    /// Records a retained message (None: cleared) when this shard owns its topic's records.
    fn persist_retained(&self, topic: &str, message: Option<&Message>) {
        let Some(persist) = &self.persist else {
            return;
        };
        if retain_owner(topic, self.shards) != self.id() {
            return;
        }
        let message = message
            .filter(|m| !m.publish.payload.is_empty())
            .map(|m| (Publish::clone(&m.publish), m.expires_at.map(wall_ms)));
        let topic = topic.to_string();
        persist.append(&Record::Retain { topic, message });
    }

    /// Applies a retained message to this shard's replica, acknowledging it when asked
    /// (once stored, when this shard owns the topic's records).
    pub(super) fn on_retain(self: &Rc<Self>, retain: Retain) {
        let Retain {
            topic,
            publish,
            ack,
            is_delivered_too,
        } = retain;
        let before = self.persist.as_ref().map_or(0, |p| p.last());
        self.persist_retained(&topic, publish.as_ref());
        let mut st = self.state.borrow_mut();
        if let (true, Some(message)) = (is_delivered_too, &publish) {
            note_coming_live(&mut st, &message.publish.topic);
        }
        st.retained.set(&topic, publish);
        drop(st);
        if let Some((from, request)) = ack {
            self.ack_when_durable(before, from, request);
        }
    }
}

/// The retained message on `topic` that this shard's replica just took follows on the same
/// ring as a publish for this shard's subscribers: the retained feeds of the sessions it
/// matches skip the topic from now on (`Cursors::note_live`), as they would once it is
/// delivered. The delivery may wait behind backpressure (`wait_for_ring_room`) while the
/// feeds run on, and a cursor that reached the topic meanwhile sent the replica as well: the
/// client got the message twice, retained and live (tests/retained_scale.rs, whose
/// subscriber then waited for ever for a count that had overshot).
pub(super) fn note_coming_live(st: &mut State, topic: &MqttString) {
    let State {
        trie,
        matched,
        sessions,
        ..
    } = st;
    for run in matched.of(trie, topic.as_str()).chunk_by(|a, b| a.0 == b.0) {
        if let Some(session) = sessions.get_mut(&run[0].0) {
            session.cursors.note_live(topic);
        }
    }
}

/// The routes under way on this shard (`route_with`: from matching the topic to the last
/// message handed to a ring), in the order they started, so a `Settle` is passed on only
/// once every route that started before it has sent what it routed (see `handoff`).
#[derive(Default)]
pub(super) struct Routes {
    /// Id of the oldest route not known to have finished.
    first: u64,
    /// Whether each route from `first` on has finished.
    done: VecDeque<bool>,
    /// Tasks waiting until every route before an id has finished.
    waiters: Vec<(u64, Waker)>,
}

impl Routes {
    /// The id the next route gets: `routes_done(mark)` waits for every route before it.
    pub(super) fn mark(&self) -> u64 {
        self.first + self.done.len() as u64
    }

    /// Whether every route that started before `mark` has finished.
    pub(super) fn is_done(&self, mark: u64) -> bool {
        self.first >= mark
    }

    fn start(&mut self) -> u64 {
        let id = self.mark();
        self.done.push_back(false);
        id
    }

    fn finish(&mut self, id: u64) {
        self.done[(id - self.first) as usize] = true;
        while self.done.front() == Some(&true) {
            self.done.pop_front();
            self.first += 1;
        }
        let first = self.first;
        self.waiters.retain(|(mark, waker)| {
            let is_done = *mark <= first;
            if is_done {
                waker.wake_by_ref();
            }
            !is_done
        });
    }
}

/// A route under way (see `Routes`); finishes when dropped, also half way.
struct Route<'a> {
    routes: &'a RefCell<Routes>,
    id: u64,
}

impl Drop for Route<'_> {
    fn drop(&mut self) {
        self.routes.borrow_mut().finish(self.id);
    }
}

/// The message as one session gets it through its matching subscriptions `subs`: the
/// highest QoS granted, capped by the publish QoS; RETAIN kept only where Retain As Published
/// asks [MQTT-3.3.1-12]; every Subscription Identifier. None when all of them are No Local
/// subscriptions of the publishing client itself [MQTT-3.8.3-3].
pub(super) fn grant<'a>(
    message: &Message,
    subs: impl Iterator<Item = &'a Subscription>,
    is_own: bool,
) -> Option<Grant> {
    let publish = &message.publish;
    let mut qos: Option<QoS> = None;
    let mut retain = false;
    let mut ids = Vec::new();
    // A plain loop rather than `filter`, `Option::max` and `Vec::extend` from the
    // identifier's Option: fewer instructions per delivery (callgrind, fanout-100: 93 -> 85).
    for sub in subs {
        if is_own && sub.options.no_local {
            continue;
        }
        let granted = sub.options.qos;
        qos = Some(qos.map_or(granted, |q| q.max(granted)));
        retain |= sub.options.retain_as_published && publish.retain;
        if let Some(id) = sub.id {
            ids.push(id);
        }
    }
    Some(Grant::new(
        publish.qos.min(qos?),
        retain,
        ids,
        message.expires_at,
    ))
}

/// Sends `session` the first messages of `run` the fast way (`Session::send_run`), where
/// its client and its window allow, with the run's headers for its shape from `shaped`
/// (encoded there for the first session of that shape); returns how many. `slots` are the
/// messages' places in the encoder, in step with `run`.
fn send_run(
    session: &mut Session,
    run: &[Message],
    slots: &[HeaderSlot],
    grant: &Grant,
    (limits, enc): (&Limits, &mut Encoder),
    shaped: &mut Vec<RunHeaders>,
) -> usize {
    let Some(first) = run.first() else {
        return 0;
    };
    let room = session.run_room(first, grant, limits).min(run.len());
    if room == 0 {
        return 0;
    }
    let shape = (session.version, grant.qos, grant.retain);
    let index = match shaped.iter().position(|h| h.shape == shape) {
        Some(index) => index,
        None => {
            let slots = slots
                .iter()
                .copied()
                .chain(std::iter::repeat(HeaderSlot::default()));
            let publishes = run.iter().map(|m| &m.publish);
            shaped.push(enc.run_headers(publishes.zip(slots), shape));
            shaped.len() - 1
        }
    };
    session.send_run(&run[..room], &shaped[index], slots, grant, limits)
}

/// `grant` through one subscription without a Subscription Identifier, the common case: no
/// iterator and no identifier list to build (`grant` was ~85 instructions per delivery at
/// fanout-100, callgrind).
fn plain_grant(message: &Message, sub: &Subscription, is_own: bool) -> Option<Grant> {
    if is_own && sub.options.no_local {
        return None;
    }
    let publish = &message.publish;
    let retain = sub.options.retain_as_published && publish.retain;
    let qos = publish.qos.min(sub.options.qos);
    Some(Grant::new(qos, retain, Vec::new(), message.expires_at))
}

/// Whether `next` may follow `message` in one run (`Shard::deliver_run`): the same
/// publisher, topic, QoS and retain flag, so each session grants both alike.
pub fn is_run(message: &Message, next: &Message) -> bool {
    let (a, b) = (&message.publish, &next.publish);
    message.origin == next.origin && a.qos == b.qos && a.retain == b.retain && a.topic == b.topic
}

/// The message as `session` gets it through its matching subscriptions `same` (`grant`),
/// without an iterator or an identifier list for one plain subscription.
fn session_grant(
    session: &Session,
    message: &Message,
    same: &[(SessionKey, Subscription)],
) -> Option<Grant> {
    let is_own = message.origin != 0 && session.conn_token == message.origin;
    match same {
        [(_, sub)] if sub.id.is_none() && !sub.is_filtered => plain_grant(message, sub, is_own),
        // Only subscriptions the ACL cuts into pay a check here (see `Session::may_read`).
        _ => {
            let topic = message.publish.topic.as_str();
            let subs = same.iter().map(|(_, sub)| sub);
            grant(
                message,
                subs.filter(|sub| session.may_read(sub, topic)),
                is_own,
            )
        }
    }
}

/// The shard whose store file keeps the retained records of `topic`, so that one file holds
/// every record of a topic, in order.
pub(super) fn retain_owner(topic: &str, shards: usize) -> ShardId {
    crate::mesh::shard_of(topic, shards)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{MqttString, Props, SubscriptionOptions};
    use bytes::Bytes;
    use std::sync::Arc;

    fn message(qos: QoS, retain: bool) -> Message {
        let publish = Publish {
            dup: false,
            qos,
            retain,
            topic: MqttString::from("t"),
            pkid: 1,
            properties: Props::default(),
            payload: Bytes::from_static(b"p"),
        };
        Message {
            publish: Arc::new(publish),
            origin: 1,
            expires_at: None,
        }
    }

    fn message_on(topic: &'static str, qos: QoS, retain: bool, origin: u64) -> Message {
        let publish = Publish {
            dup: false,
            qos,
            retain,
            topic: MqttString::from(topic),
            pkid: 0,
            properties: Props::default(),
            payload: Bytes::from_static(b"payload"),
        };
        Message::received(publish, origin)
    }

    #[test]
    fn a_run_is_one_publisher_topic_qos_and_retain_flag() {
        let first = message_on("a/b", QoS::AtLeastOnce, false, 1);
        assert!(is_run(
            &first,
            &message_on("a/b", QoS::AtLeastOnce, false, 1)
        ));
        for other in [
            message_on("a/c", QoS::AtLeastOnce, false, 1),
            message_on("a/b", QoS::AtMostOnce, false, 1),
            message_on("a/b", QoS::AtLeastOnce, true, 1),
            message_on("a/b", QoS::AtLeastOnce, false, 2),
        ] {
            assert!(!is_run(&first, &other), "{other:?}");
        }
    }

    #[test]
    fn one_plain_subscription_is_granted_as_by_the_general_rule() {
        let qos = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce];
        for (publish_qos, sub_qos, bits) in qos.iter().flat_map(|p| {
            qos.iter()
                .flat_map(move |s| (0..16u8).map(move |b| (*p, *s, b)))
        }) {
            let message = message(publish_qos, bits & 1 != 0);
            let sub = Subscription {
                options: SubscriptionOptions {
                    qos: sub_qos,
                    no_local: bits & 2 != 0,
                    retain_as_published: bits & 4 != 0,
                    retain_handling: 0,
                },
                id: None,
                is_filtered: false,
            };
            let is_own = bits & 8 != 0;
            let fast = plain_grant(&message, &sub, is_own).map(|g| (g.qos, g.retain));
            let general = grant(&message, std::iter::once(&sub), is_own).map(|g| (g.qos, g.retain));
            assert_eq!(fast, general, "{publish_qos:?} {sub_qos:?} {bits:04b}");
        }
    }
}
