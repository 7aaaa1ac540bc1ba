//! A client's session as the broker keeps it: subscriptions, the outbound QoS 1/2 window,
//! the queue behind it, and inbound QoS 2 packet ids. Pure state: it encodes packets into the
//! connection's outbox but does no I/O itself.

use super::cursor::{Cursor, Cursors, Feed};
use super::encoder::{push_publish, Encoder, HeaderSlot, RunHeaders};
use super::lazy::Lazy;
use super::message::Message;
use super::overflow;
use crate::config::{Limits, Qos12Overflow};
use crate::protocol::codec;
use crate::protocol::connection::server_disconnect;
use crate::protocol::{Ack, Packet, Publish, QoS, ReasonCode, Version, Will};
use crate::shard::backpressure::{DropReason, Pressure};
use crate::shard::outbox::Outbox;
use crate::shard::persist::{
    instant_of, wall_ms, will_to_stored, Journal, Opened, Persist, Record, StoredGrant,
};
pub use crate::shard::subscription::{Subscription, SubscriptionMap};
use bytes::Bytes;
use std::collections::{HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Payloads up to this size queued for an offline session are copied out of the read buffer
/// they were sliced from, so queued bytes are what the ceiling counts.
const OFFLINE_COPY_BYTES_MAX: usize = 4096;

/// Slots of the window and the queue a session keeps once it owes nothing: a burst grows them
/// to what it held (up to `inflight_max` and `queue_messages_max`, 32 and 24 bytes a slot), and a
/// session that caught up gives that back rather than holding its peak for good.
const SLOTS_KEPT_IDLE: usize = 64;

/// Appends to the window or the queue. Once a full deque holds half the slots kept idle, it
/// grows straight to `burst` (its size when the last burst was over, see `give_back_slots`)
/// rather than doubling: a subscriber that catches up and bursts again would otherwise grow
/// it from nothing each time, copying what it holds at each step (`VecDeque::grow` and its
/// copies were 7% of a fanout-100 QoS 1 delivery).
/// Inlined but for the growth: as a call of its own it was ~38 of a fanout-1000 QoS 1
/// delivery's ~580 instructions (callgrind), its 32-byte item passed through the stack.
#[inline(always)]
fn push_slot<T>(deque: &mut VecDeque<T>, item: T, burst: u16) {
    if deque.len() == deque.capacity() {
        grow_to_burst(deque, burst);
    }
    deque.push_back(item);
}

/// `push_slot`'s growth to `burst` slots, when a full deque holds half the slots kept idle.
#[cold]
fn grow_to_burst<T>(deque: &mut VecDeque<T>, burst: u16) {
    let burst = usize::from(burst);
    if deque.len() >= SLOTS_KEPT_IDLE / 2 && deque.len() < burst {
        deque.reserve_exact(burst - deque.len());
    }
}

/// The packet id given after `pkid`: ids run from 1 to 65,535, then wrap.
fn after(pkid: u16) -> u16 {
    if pkid == u16::MAX {
        1
    } else {
        pkid + 1
    }
}

/// Where an outbound QoS 1/2 message stands in its acknowledgement flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// PUBLISH sent, waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    Publish,
    /// PUBREL sent, waiting for PUBCOMP (QoS 2).
    Release,
}

/// An outbound message that has a packet id and is not yet acknowledged.
#[derive(Clone, Debug)]
pub struct Inflight {
    /// The message as this client gets it.
    pub out: Outgoing,
    /// The packet id it was sent with.
    pub pkid: u16,
    /// Where its flow stands.
    pub phase: Phase,
}

impl Inflight {
    /// Whether it is the message `pkid` at `phase`, sent with `qos`.
    #[inline]
    fn is(&self, pkid: u16, phase: Phase, qos: QoS) -> bool {
        self.pkid == pkid && self.phase == phase && self.out.grant.qos == qos
    }
}

/// What a session's deliveries are checked against when the ACL cuts into its
/// subscriptions: the ACL as it was when the client connected, and who the client is.
#[derive(Clone)]
pub struct ReadFilter {
    /// The tables holding the ACL.
    pub tables: std::sync::Arc<crate::security::Tables>,
    /// The username the client logged in with.
    pub username: Option<String>,
}

impl std::fmt::Debug for ReadFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadFilter")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// What one client gets of a message: QoS, retain and subscription identifiers chosen from
/// its matching subscriptions, and what the session needs to send it right.
#[derive(Clone, Debug)]
pub struct Grant {
    /// The QoS this client gets: its granted maximum, capped by the publish QoS.
    pub qos: QoS,
    /// RETAIN as this client gets it.
    pub retain: bool,
    /// Where the shard's encoder keeps the message's headers, when routing placed it there
    /// (a fan-out within the shard).
    pub header: HeaderSlot,
    /// Its expiry, Subscription Identifiers and shared subscription, boxed: most deliveries
    /// have none, and every message in a window or a queue carries a grant (a window slot
    /// takes 32 bytes, a queue slot 24; a fanout-1000 QoS 1 broker holds up to 500 in each
    /// window and as many queued, more than the CPU's caches). A message that has one is
    /// encoded for each client anyway (`to_publish`), which costs more than the box.
    extra: Option<Box<GrantExtra>>,
}

/// The rarer parts of a `Grant`.
#[derive(Clone, Debug, Default)]
struct GrantExtra {
    /// When its Message Expiry Interval runs out; an expired message is never sent
    /// [MQTT-3.3.2-5].
    expires_at: Option<Instant>,
    /// The Subscription Identifiers of its matching subscriptions (5.0).
    ids: Vec<u32>,
    /// The shared subscription (`$share/group/filter`) it came through, if any: should this
    /// session go away before the client acknowledges it, another member gets it.
    share: Option<String>,
}

impl Grant {
    /// A grant at `qos` and `retain` with the Subscription Identifiers `ids`, expiring at
    /// `expires_at`, through no shared subscription.
    #[inline]
    pub fn new(qos: QoS, retain: bool, ids: Vec<u32>, expires_at: Option<Instant>) -> Grant {
        let extra = (!ids.is_empty() || expires_at.is_some()).then(|| {
            Box::new(GrantExtra {
                expires_at,
                ids,
                share: None,
            })
        });
        Grant {
            qos,
            retain,
            header: HeaderSlot::default(),
            extra,
        }
    }

    /// When its Message Expiry Interval runs out (None: never).
    #[inline]
    pub fn expires_at(&self) -> Option<Instant> {
        self.extra.as_ref().and_then(|extra| extra.expires_at)
    }

    /// Makes it expire at `expires_at` (None: never).
    pub fn set_expires_at(&mut self, expires_at: Option<Instant>) {
        match (&mut self.extra, expires_at) {
            (Some(extra), _) => extra.expires_at = expires_at,
            (None, None) => {}
            (extra @ None, Some(_)) => {
                *extra = Some(Box::new(GrantExtra {
                    expires_at,
                    ..GrantExtra::default()
                }));
            }
        }
    }

    /// The Subscription Identifiers of its matching subscriptions (5.0).
    #[inline]
    pub fn ids(&self) -> &[u32] {
        self.extra.as_ref().map_or(&[], |extra| &extra.ids)
    }

    /// The shared subscription it came through, if any.
    pub fn share(&self) -> Option<&str> {
        self.extra.as_ref().and_then(|extra| extra.share.as_deref())
    }

    /// Marks it as delivered through the shared subscription `share`.
    pub fn set_share(&mut self, share: String) {
        self.extra.get_or_insert_with(Box::default).share = Some(share);
    }

    /// Takes out the shared subscription it came through, if any.
    pub fn take_share(&mut self) -> Option<String> {
        self.extra.as_mut().and_then(|extra| extra.share.take())
    }

    /// The grant as the store keeps it (expiry as wall-clock time).
    pub fn to_stored(&self) -> StoredGrant {
        StoredGrant {
            qos: self.qos,
            retain: self.retain,
            ids: self.ids().to_vec(),
            expires_ms: self.expires_at().map(wall_ms),
            share: self.share().map(str::to_string),
        }
    }

    /// A grant the store kept.
    pub fn from_stored(stored: &StoredGrant) -> Grant {
        let expires_at = stored.expires_ms.map(instant_of);
        let mut grant = Grant::new(stored.qos, stored.retain, stored.ids.clone(), expires_at);
        if let Some(share) = &stored.share {
            grant.set_share(share.clone());
        }
        grant
    }

    /// The message as published (its QoS and retain), no expiry, a plain subscription.
    pub fn as_published(publish: &Publish) -> Grant {
        Grant::new(publish.qos, publish.retain, Vec::new(), None)
    }

    /// Whether the PUBLISH this client gets differs from the received one in nothing but QoS,
    /// retain and packet id, so the fan-out's shared header serves it.
    fn is_plain(&self) -> bool {
        self.extra.is_none()
    }

    /// The PUBLISH this client gets of `publish`, as a copy of its own. Its Message Expiry
    /// Interval is lowered by the time it waited [MQTT-3.3.2-6].
    pub fn to_publish(&self, publish: &Publish, pkid: u16, dup: bool) -> Publish {
        let mut publish = publish.clone();
        publish.qos = self.qos;
        publish.retain = self.retain;
        publish.pkid = pkid;
        publish.dup = dup;
        publish.properties.subscription_identifiers = self.ids().to_vec();
        if let Some(deadline) = self.expires_at() {
            let left = deadline.saturating_duration_since(Instant::now());
            // Rounded up: a message with time left is not announced as already expired.
            let secs = left.as_millis().div_ceil(1000).max(1);
            publish.properties.message_expiry_interval = Some(secs.min(u32::MAX as u128) as u32);
        }
        publish
    }
}

/// A message held by one session (queued, or in flight): the PUBLISH as received, shared with
/// every other subscriber, and what this client gets of it.
#[derive(Clone, Debug)]
pub struct Outgoing {
    /// The PUBLISH as received.
    pub publish: Arc<Publish>,
    /// What this client gets of it.
    pub grant: Grant,
}

impl Outgoing {
    /// The message as published, with no expiry, through a plain subscription.
    pub fn plain(publish: Publish) -> Outgoing {
        Outgoing {
            grant: Grant::as_published(&publish),
            publish: Arc::new(publish),
        }
    }
}

pub use crate::protocol::connection::PeerLimits;

/// What became of a message offered to a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Written to the connection's outbox.
    Sent,
    /// Held in the session queue (window full, or client offline).
    Queued,
    /// Dropped because a bound was hit (or QoS 0 to an offline client).
    Dropped,
}

/// Everything of a session that moves to another shard when its client reconnects there.
/// Plain data, so it can cross threads.
#[derive(Debug, Default)]
pub struct SessionState {
    /// Subscriptions by filter (as the client wrote it).
    pub subscriptions: Vec<(String, Subscription)>,
    /// Unacknowledged outbound messages, in send order.
    pub inflight: Vec<Inflight>,
    /// Messages waiting behind the inflight window.
    pub queue: Vec<Outgoing>,
    /// Inbound QoS 2 packet ids received but not yet released.
    pub incoming_qos2: Vec<u16>,
    /// Next packet id to try.
    pub next_pkid: u16,
    /// Retained deliveries not finished yet.
    pub cursors: Vec<Cursor>,
}

impl SessionState {
    /// A copy of everything but the retained cursors (a restored session starts none).
    pub fn clone_plain(&self) -> SessionState {
        SessionState {
            subscriptions: self.subscriptions.clone(),
            inflight: self.inflight.clone(),
            queue: self.queue.clone(),
            incoming_qos2: self.incoming_qos2.clone(),
            next_pkid: self.next_pkid,
            cursors: Vec::new(),
        }
    }
}

/// Drop and queue counters of one session.
#[derive(Clone, Copy, Debug, Default)]
pub struct SessionCounters {
    /// Messages dropped: the queue was full, the client was offline (QoS 0), or the message
    /// was larger than the client's Maximum Packet Size [MQTT-3.1.2-25].
    pub dropped: u64,
    /// Messages dropped because their Message Expiry Interval ran out before sending.
    pub expired: u64,
}

/// A client's session.
pub struct Session {
    /// The client identifier, shared with the shard's table by client id and the
    /// connection (one allocation for the three).
    pub client_id: Rc<str>,
    /// Protocol version of the current (or last) connection.
    pub version: Version,
    /// Whether the session outlives the connection (3.1.1 Clean Session = 0).
    pub is_persistent: bool,
    /// Subscriptions by filter (a shared one keeps its `$share/group/` prefix).
    pub subscriptions: SubscriptionMap,
    /// The will of the current connection (boxed: most connections have none, and a session
    /// lives as long as its client).
    pub will: Option<Box<Will>>,
    /// The connection's outbox, while connected.
    pub outbox: Option<Rc<Outbox>>,
    /// Identifies the connection that owns the session now.
    pub conn_token: u64,
    /// 5.0 Session Expiry Interval in seconds (0xFFFF_FFFF: never); 3.1.1 persistent sessions
    /// never expire.
    pub expiry_secs: u32,
    /// What the current connection's client allows.
    pub peer: PeerLimits,
    /// Outbound topic aliases and inbound QoS 2 ids, allocated while either holds any: one
    /// pointer for both keeps an idle device's session within 232 bytes.
    tables: Lazy<Tables>,
    inflight: VecDeque<Inflight>,
    queue: VecDeque<Outgoing>,
    queued_bytes: usize,
    next_pkid: u16,
    /// The slots the window and the queue had when a burst was over (see `give_back_slots`):
    /// the next burst that outgrows the slots kept idle takes them in one step.
    burst_slots: (u16, u16),
    /// Counters.
    pub counters: SessionCounters,
    /// The shard's backpressure state, which counts this session's queued bytes and drops.
    pub pressure: Rc<Pressure>,
    /// Since when the queue has refused QoS 1/2 messages (for `qos12_overflow = "disconnect"`).
    pub over_bound_since: Option<Instant>,
    /// Retained messages still owed to new subscriptions, streamed as the connection makes
    /// room (see `cursor`).
    pub cursors: Cursors,
    /// The ACL deliveries are checked against, when one is configured (boxed: most brokers
    /// have none, and every session would carry its 32 bytes).
    pub reader: Option<Box<ReadFilter>>,
    /// Where a persistent session's changes are recorded (None: not stored).
    pub journal: Option<Box<Journal>>,
}

/// What a session holds for topic aliases and QoS 2 input, which most devices never use.
#[derive(Default)]
struct Tables {
    /// Outbound topic aliases of the current connection, by topic.
    aliases: HashMap<String, u16>,
    /// Inbound QoS 2 packet ids not yet released.
    incoming_qos2: HashSet<u16>,
}

impl Tables {
    fn is_empty(&self) -> bool {
        self.aliases.is_empty() && self.incoming_qos2.is_empty()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.pressure.sub(self.queued_bytes);
    }
}

thread_local! {
    /// The pressure a session counts toward until a shard installs it and gives it the
    /// shard's own (`Shard::install`): one per thread, so that making a session (one per
    /// connection) allocates no ~200-byte `Pressure` only to drop it.
    static DETACHED: Rc<Pressure> = Rc::new(Pressure::default());
}

impl Session {
    /// A new, empty session.
    pub fn new(client_id: String, version: Version, is_persistent: bool) -> Session {
        Session::with_id(client_id.into(), version, is_persistent)
    }

    /// A new, empty session whose client id is shared with its connection.
    pub fn with_id(client_id: Rc<str>, version: Version, is_persistent: bool) -> Session {
        Session {
            client_id,
            version,
            is_persistent,
            subscriptions: SubscriptionMap::new(),
            will: None,
            outbox: None,
            conn_token: 0,
            expiry_secs: 0,
            peer: PeerLimits::default(),
            tables: Lazy::default(),
            inflight: VecDeque::new(),
            queue: VecDeque::new(),
            queued_bytes: 0,
            next_pkid: 1,
            burst_slots: (0, 0),
            counters: SessionCounters::default(),
            pressure: DETACHED.with(Rc::clone),
            over_bound_since: None,
            cursors: Cursors::default(),
            reader: None,
            journal: None,
        }
    }

    /// Whether the client may read `topic` through `sub`: only subscriptions the ACL cuts
    /// into pay a check; the rest were settled when they were made.
    pub fn may_read(&self, sub: &Subscription, topic: &str) -> bool {
        !sub.is_filtered || self.may_read_topic(topic)
    }

    /// Whether the ACL lets the client read `topic`.
    pub fn may_read_topic(&self, topic: &str) -> bool {
        let Some(reader) = &self.reader else {
            return true;
        };
        let user = reader.username.as_deref();
        reader
            .tables
            .acl
            .as_ref()
            .is_none_or(|acl| acl.can_read(user, &self.client_id, topic))
    }

    /// Rebuilds a session moved from another shard.
    pub fn restore(&mut self, state: SessionState) {
        self.subscriptions = state.subscriptions.into_iter().collect();
        self.inflight = state.inflight.into();
        self.pressure.sub(self.queued_bytes);
        self.queued_bytes = state.queue.iter().map(|o| o.publish.payload.len()).sum();
        self.pressure.add(self.queued_bytes);
        self.queue = state.queue.into();
        if let Some(tables) = self.tables.existing_mut() {
            tables.incoming_qos2 = HashSet::new();
        }
        if !state.incoming_qos2.is_empty() {
            self.tables.get_mut().incoming_qos2 = state.incoming_qos2.into_iter().collect();
        }
        self.tables.release_if(Tables::is_empty);
        self.next_pkid = state.next_pkid.max(1);
        self.cursors.restore(state.cursors);
    }

    /// Takes the movable state out, leaving the session empty.
    pub fn take_state(&mut self) -> SessionState {
        self.pressure.sub(std::mem::take(&mut self.queued_bytes));
        SessionState {
            subscriptions: self.subscriptions.drain().collect(),
            inflight: self.inflight.drain(..).collect(),
            queue: self.queue.drain(..).collect(),
            incoming_qos2: self.take_incoming_qos2().into_iter().collect(),
            next_pkid: self.next_pkid,
            cursors: self.cursors.take(),
        }
    }

    /// This session's whole state as an `Open` record with session id `sid` and `stamp`;
    /// `mid` gives each message it holds its id (writing its body where that is needed).
    /// QoS 0 messages queued are left out: they are not stored.
    pub fn opened(
        &self,
        sid: u64,
        stamp: u64,
        mut mid: impl FnMut(&Arc<Publish>) -> u64,
    ) -> Opened {
        let inflight = self
            .inflight
            .iter()
            .map(|i| {
                let id = mid(&i.out.publish);
                (
                    id,
                    i.out.grant.to_stored(),
                    i.pkid,
                    i.phase == Phase::Release,
                )
            })
            .collect();
        let queue = self
            .queue
            .iter()
            .filter(|o| o.grant.qos != QoS::AtMostOnce)
            .map(|o| (mid(&o.publish), o.grant.to_stored()))
            .collect();
        Opened {
            sid,
            stamp,
            client_id: self.client_id.to_string(),
            version: self.version,
            expiry_secs: self.expiry_secs,
            will: self.will.as_deref().map(will_to_stored),
            subscriptions: self
                .subscriptions
                .iter()
                .map(|(f, s)| (f.clone(), *s))
                .collect(),
            incoming_qos2: self
                .tables
                .get()
                .into_iter()
                .flat_map(|t| &t.incoming_qos2)
                .copied()
                .collect(),
            next_pkid: self.next_pkid,
            inflight,
            queue,
        }
    }

    /// Gives a persistent session being installed on this shard its journal, and records its
    /// whole state (`Open`), message bodies first.
    pub fn open_journal(&mut self, persist: &Rc<Persist>) {
        let (sid, stamp) = persist.open_ids();
        let opened = self.opened(sid, stamp, |publish| persist.message_id(publish));
        persist.append(&Record::Open(Box::new(opened)));
        self.journal = Some(Box::new(Journal {
            persist: persist.clone(),
            sid,
        }));
    }

    /// Records that the connection's will is gone (disconnected, or published).
    pub fn note_will_gone(&self) {
        if let (Some(sid), true) = (self.sid(), self.will.is_some()) {
            self.note(Record::WillGone { sid });
        }
    }

    /// Records that the connection ended with a will waiting for its delay, due at `at_ms`
    /// (Unix ms).
    pub fn note_will_due(&self, at_ms: u64) {
        if let Some(sid) = self.sid() {
            self.note(Record::WillDue { sid, at_ms });
        }
    }

    /// Records that the will that waited for its delay was published.
    pub fn note_will_published(&self) {
        if let Some(sid) = self.sid() {
            self.note(Record::WillGone { sid });
        }
    }

    /// Records that a stored session ended for good.
    pub fn note_end(&self) {
        if let Some(sid) = self.sid() {
            self.note(Record::End { sid });
        }
    }

    /// Records a new Session Expiry Interval.
    pub fn note_expiry(&self, secs: u32) {
        if let Some(sid) = self.sid() {
            self.note(Record::Expiry { sid, secs });
        }
    }

    /// Records a subscription added or changed.
    pub fn note_subscribe(&self, filter: &str, sub: Subscription) {
        if let Some(sid) = self.sid() {
            let filter = filter.to_string();
            self.note(Record::Subscribe { sid, filter, sub });
        }
    }

    /// Records a subscription removed.
    pub fn note_unsubscribe(&self, filter: &str) {
        if let Some(sid) = self.sid() {
            let filter = filter.to_string();
            self.note(Record::Unsubscribe { sid, filter });
        }
    }

    /// Whether a connection is attached.
    pub fn is_online(&self) -> bool {
        self.outbox.is_some()
    }

    /// Messages waiting behind the window.
    pub fn queued_len(&self) -> usize {
        self.queue.len()
    }

    /// Offers a message at the QoS granted for this client. Order is kept across QoS levels:
    /// once anything waits in the queue, QoS 0 messages wait behind it [MQTT-4.6.0-6].
    /// The message is borrowed: a client served at once costs no reference count.
    pub fn deliver(
        &mut self,
        publish: &Arc<Publish>,
        grant: Grant,
        limits: &Limits,
        enc: &mut Encoder,
    ) -> Delivery {
        if publish.retain && !self.cursors.is_empty() {
            self.cursors.note_live(&publish.topic);
        }
        let is_qos0 = grant.qos == QoS::AtMostOnce;
        if !self.is_online() && is_qos0 {
            return self.drop_message(DropReason::Offline, grant.qos);
        }
        // The client will never accept it, so it is not worth a place in the queue.
        if self.is_too_large(publish, &grant) {
            return self.drop_message(DropReason::TooLarge, grant.qos);
        }
        if self.is_online() && self.queue.is_empty() && (is_qos0 || self.has_window(limits)) {
            return self.send_now(publish, grant, limits, enc, true);
        }
        let stored =
            (grant.qos != QoS::AtMostOnce && self.journal.is_some()).then(|| grant.to_stored());
        let delivery = self.enqueue(
            Outgoing {
                publish: publish.clone(),
                grant,
            },
            limits,
        );
        if let (Some(grant), Delivery::Queued) = (stored, delivery) {
            self.note_enqueued(publish, grant);
        }
        delivery
    }

    /// Records that a QoS 1/2 message entered this persistent session.
    fn note_enqueued(&self, publish: &Arc<Publish>, grant: StoredGrant) {
        if let Some(journal) = &self.journal {
            let mid = journal.persist.message_id(publish);
            let sid = journal.sid;
            self.note_quietly(Record::Enqueue { sid, mid, grant });
        }
    }

    /// Appends a record of this session (a persistent one) and holds its connection's
    /// output until the record is durable.
    pub fn note(&self, record: Record) {
        let Some(journal) = &self.journal else {
            return;
        };
        let at = journal.persist.append(&record);
        if let Some(outbox) = &self.outbox {
            outbox.hold_until(at);
        }
    }

    /// Appends a record that nothing sent to this client depends on, without holding its
    /// output: a message entering the queue, a QoS 1 packet id (after a crash the message is
    /// sent again, under any id: at least once), a flow that ended. The publisher's
    /// acknowledgement still waits for the record (its connection holds its own output).
    fn note_quietly(&self, record: Record) {
        if let Some(journal) = &self.journal {
            journal.persist.append_joined(&record);
        }
    }

    /// This session's id in its shard's journal, when it is persistent and stored.
    pub fn sid(&self) -> Option<u64> {
        self.journal.as_ref().map(|j| j.sid)
    }

    /// `deliver` for a message the caller owns (tests).
    #[cfg(test)]
    pub fn deliver_owned(&mut self, out: Outgoing, limits: &Limits, enc: &mut Encoder) -> Delivery {
        self.deliver(&out.publish, out.grant, limits, enc)
    }

    /// Whether the PUBLISH this client gets is over its Maximum Packet Size. Inlined for the
    /// common client that sets none: a call only to return false was ~19 instructions of a
    /// fanout-1000 QoS 1 delivery's 700 (callgrind).
    #[inline]
    fn is_too_large(&self, publish: &Publish, grant: &Grant) -> bool {
        self.peer.packet_size_max != u32::MAX && self.is_over_packet_max(publish, grant)
    }

    /// `is_too_large` for a client with a Maximum Packet Size. Measured, not encoded: a
    /// header encoded into the encoder's cache here was encoded a second time for a message
    /// going to one session (`Encoder::set_sole`).
    fn is_over_packet_max(&self, publish: &Publish, grant: &Grant) -> bool {
        let max = self.peer.packet_size_max as usize;
        let len = if grant.ids().is_empty() && grant.expires_at().is_none() {
            let shape = codec::Shape {
                qos: grant.qos,
                retain: grant.retain,
                dup: false,
                pkid: 0,
            };
            codec::shaped_len(publish, shape, self.version)
        } else {
            codec::publish_len(&grant.to_publish(publish, 0, false), self.version)
        };
        len > max
    }

    /// Sends at once: QoS 0 unless the connection's write buffer is over its bound, QoS 1/2
    /// into the window. A message whose expiry ran out is dropped instead.
    // `inline(always)`, as `send_new` and `remove_inflight`: LLVM kept each a call of its
    // own, and their entries and exits (registers saved, a 32-byte message moved) were ~60
    // of a fanout-1000 QoS 1 delivery's ~665 instructions (callgrind: 665 -> 600).
    #[inline(always)]
    fn send_now(
        &mut self,
        publish: &Arc<Publish>,
        grant: Grant,
        limits: &Limits,
        enc: &mut Encoder,
        is_fresh: bool,
    ) -> Delivery {
        if self.is_expired(&grant) {
            if let (Some(sid), false, true) = (self.sid(), is_fresh, grant.qos != QoS::AtMostOnce) {
                // Taken from the queue and dropped: replay drops it too.
                self.note_quietly(Record::Assign { sid, pkid: 0 });
            }
            return Delivery::Dropped;
        }
        if grant.qos != QoS::AtMostOnce {
            if is_fresh && self.journal.is_some() {
                self.note_enqueued(publish, grant.to_stored());
            }
            let out = Outgoing {
                publish: publish.clone(),
                grant,
            };
            self.send_new(out, enc);
            return Delivery::Sent;
        }
        let Some(outbox) = &self.outbox else {
            return Delivery::Dropped;
        };
        if outbox.is_closing() {
            return self.drop_message(DropReason::Offline, QoS::AtMostOnce);
        }
        if outbox.is_over(limits.write_buffer_bytes_max) {
            let (has_room, dropped) = overflow::make_room(outbox, &self.pressure, limits);
            self.counters.dropped += dropped;
            if !has_room {
                return self.drop_message(DropReason::WriteBufferFull, QoS::AtMostOnce);
            }
        }
        self.write_publish(publish, &grant, 0, enc);
        Delivery::Sent
    }

    /// Whether the Message Expiry Interval has run out (counted).
    fn is_expired(&mut self, grant: &Grant) -> bool {
        let expired = grant.expires_at().is_some_and(|at| at <= Instant::now());
        self.counters.expired += u64::from(expired);
        expired
    }

    fn enqueue(&mut self, mut out: Outgoing, limits: &Limits) -> Delivery {
        let size = out.publish.payload.len();
        if !self.is_online() && size <= OFFLINE_COPY_BYTES_MAX {
            // Held for long: a small slice must not keep its whole 64 KiB read buffer alive.
            let publish = Arc::make_mut(&mut out.publish);
            publish.payload = Bytes::copy_from_slice(&publish.payload);
        }
        let qos = out.grant.qos;
        while self.is_queue_full(size, limits) {
            if qos != QoS::AtMostOnce {
                self.over_bound(limits, Instant::now());
                return self.drop_message(DropReason::QueueFull, qos);
            }
            if !(overflow::drops_oldest(limits) && self.drop_oldest_queued()) {
                return self.drop_message(DropReason::QueueFull, qos);
            }
        }
        self.queued_bytes += size;
        self.pressure.add(size);
        push_slot(&mut self.queue, out, self.burst_slots.1);
        self.report_held();
        Delivery::Queued
    }

    fn is_queue_full(&self, size: usize, limits: &Limits) -> bool {
        self.queue.len() >= limits.queue_messages_max
            || self.queued_bytes + size > limits.queue_bytes_max
    }

    /// Counts a dropped message in the session and the shard.
    fn drop_message(&mut self, reason: DropReason, qos: QoS) -> Delivery {
        self.counters.dropped += 1;
        self.pressure.count_drop(reason, qos);
        Delivery::Dropped
    }

    /// A QoS 1/2 message met a full queue at `now`. Under the disconnect policy, a subscriber
    /// over its bound for `slow_subscriber_secs` is disconnected at once (what its socket
    /// still holds is discarded; a persistent session keeps its queue and inflight messages).
    fn over_bound(&mut self, limits: &Limits, now: Instant) {
        if limits.qos12_overflow != Qos12Overflow::Disconnect {
            return;
        }
        let Some(outbox) = &self.outbox else {
            return;
        };
        let since = *self.over_bound_since.get_or_insert(now);
        if now - since < Duration::from_secs(limits.slow_subscriber_secs) {
            return;
        }
        tracing::info!(
            "disconnecting slow subscriber {}: over its queue bound for {}s",
            self.client_id,
            limits.slow_subscriber_secs
        );
        outbox.abort();
        self.outbox = None;
        self.over_bound_since = None;
        self.pressure.count_slow_disconnect();
    }

    /// Removes the oldest queued QoS 0 message (drop-oldest policy); returns whether one was.
    fn drop_oldest_queued(&mut self) -> bool {
        let queue = &self.queue;
        let Some(index) = queue.iter().position(|o| o.grant.qos == QoS::AtMostOnce) else {
            return false;
        };
        let Some(old) = self.queue.remove(index) else {
            return false;
        };
        self.queued_bytes -= old.publish.payload.len();
        self.pressure.sub(old.publish.payload.len());
        self.drop_message(DropReason::QueueFull, QoS::AtMostOnce);
        true
    }

    /// Tells the connection how much waits behind it, for its lag.
    fn report_held(&self) {
        if let Some(outbox) = &self.outbox {
            outbox.set_held(self.queue.len(), self.queued_bytes);
        }
    }

    /// Room in the outbound window: ours, narrowed by the client's Receive Maximum
    /// [MQTT-3.3.4-9].
    fn has_window(&self, limits: &Limits) -> bool {
        self.inflight.len() < self.window_size(limits)
    }

    /// The outbound window's size: ours, narrowed by the client's Receive Maximum.
    fn window_size(&self, limits: &Limits) -> usize {
        usize::from(limits.inflight_max.min(self.peer.receive_max))
    }

    /// Writes a PUBLISH to the connection, replacing its topic by an outbound topic alias
    /// where the client allows them: a topic's first PUBLISH sets the alias, later ones send
    /// an empty topic. Aliases are given first come, first served until the client's maximum.
    #[inline(always)]
    fn write_publish(
        &mut self,
        publish: &Arc<Publish>,
        grant: &Grant,
        pkid: u16,
        enc: &mut Encoder,
    ) {
        let Some(outbox) = &self.outbox else {
            return;
        };
        let is_aliased = self.is_aliased();
        if grant.is_plain() && !is_aliased {
            enc.push_shared(
                outbox,
                publish,
                self.version,
                (grant.qos, grant.retain, pkid),
                grant.header,
            );
            return;
        }
        let mut shaped = grant.to_publish(publish, pkid, false);
        if is_aliased {
            let topic = publish.topic.as_str();
            let aliases = &mut self.tables.get_mut().aliases;
            if let Some(&alias) = aliases.get(topic) {
                shaped.topic = Default::default();
                shaped.properties.topic_alias = Some(alias);
            } else if aliases.len() < self.peer.topic_alias_max as usize {
                let alias = aliases.len() as u16 + 1;
                aliases.insert(topic.to_string(), alias);
                shaped.properties.topic_alias = Some(alias);
            }
        }
        enc.push_publish(outbox, &shaped, self.version);
    }

    /// Whether the client takes outbound topic aliases.
    fn is_aliased(&self) -> bool {
        self.peer.topic_alias_max != 0 && self.version == Version::V5
    }

    /// How many of the first messages of a run (one publisher's, each granted as `grant`,
    /// made for the `first`) `send_run` can take, given a plain grant and a client that needs
    /// nothing of its own (no topic alias, no Maximum Packet Size, no store, nothing
    /// queued): at QoS 0 any number, at QoS 1/2 as many as the window has room for; 0 for
    /// any other grant or client.
    pub fn run_room(&self, first: &Message, grant: &Grant, limits: &Limits) -> usize {
        let is_plain = grant.is_plain()
            && self.queue.is_empty()
            && self.is_plain_client()
            && (!first.publish.retain || self.cursors.is_empty());
        if !is_plain {
            return 0;
        }
        if grant.qos == QoS::AtMostOnce {
            return usize::MAX;
        }
        self.window_size(limits).saturating_sub(self.inflight.len())
    }

    /// Whether the client needs nothing of its own in what it is sent (no topic alias, no
    /// Maximum Packet Size, no store) and is connected.
    fn is_plain_client(&self) -> bool {
        self.journal.is_none()
            && self.peer.packet_size_max == u32::MAX
            && !self.is_aliased()
            && self.outbox.as_ref().is_some_and(|o| !o.is_closing())
    }

    /// Sends the first messages of `run` (at most `run_room`) as `deliver` would, with their
    /// headers from `headers` (encoded for this client's shape) and their slots in the
    /// encoder (`slots`, in step), and returns how many: those that coalesce into the
    /// outbox, up to the first message with an expiry, or at QoS 0 the first to find the
    /// outbox over `limits.write_buffer_bytes_max`. The rest is the caller's to `deliver`.
    /// What `deliver` checks per message is checked once per run (`run_room`), and the
    /// outbox counts its bytes once (`Outbox::end_run`).
    pub fn send_run(
        &mut self,
        run: &[Message],
        headers: &RunHeaders,
        slots: &[HeaderSlot],
        grant: &Grant,
        limits: &Limits,
    ) -> usize {
        debug_assert_eq!(headers.shape, (self.version, grant.qos, grant.retain));
        let Some(outbox) = self.outbox.clone() else {
            return 0;
        };
        let (mut sent, mut copied) = (0, 0);
        let mut ends = self.window_ends();
        for (i, message) in run.iter().enumerate() {
            let publish = &message.publish;
            let Some((header, pkid_at)) = headers.get(i) else {
                break;
            };
            let is_coalescing = outbox.is_coalescing(header.len() + publish.payload.len());
            if message.expires_at.is_some() || !is_coalescing {
                break;
            }
            if grant.qos == QoS::AtMostOnce {
                if outbox.is_over(limits.write_buffer_bytes_max) {
                    break;
                }
                copied += outbox.push_run_parts(header, None, &publish.payload);
                sent += 1;
                continue;
            }
            let out = Outgoing {
                publish: publish.clone(),
                grant: Grant {
                    qos: grant.qos,
                    retain: grant.retain,
                    header: slots.get(i).copied().unwrap_or_default(),
                    extra: None,
                },
            };
            copied += self.send_plain(&outbox, out, (header, pkid_at), &mut ends);
            sent += 1;
        }
        outbox.end_run(copied);
        sent
    }

    /// The ids of the window's first and last messages, for `send_plain`.
    fn window_ends(&self) -> (Option<u16>, Option<u16>) {
        let first = self.inflight.front().map(|i| i.pkid);
        (first, self.inflight.back().map(|i| i.pkid))
    }

    /// Sends a QoS 1/2 message with a plain grant to a plain client (`is_plain_client`) into
    /// the window, its `header` (and where the packet id goes in it) copied into `outbox` by
    /// `Outbox::push_run_parts`; returns the bytes copied. `ends` are the window's first and
    /// last ids (`window_ends`), kept up to date here.
    #[inline(always)]
    fn send_plain(
        &mut self,
        outbox: &Outbox,
        out: Outgoing,
        (header, pkid_at): (&[u8], Option<usize>),
        ends: &mut (Option<u16>, Option<u16>),
    ) -> usize {
        let pkid = self.allocate_pkid_after(ends.0, ends.1);
        *ends = (ends.0.or(Some(pkid)), Some(pkid));
        let copied =
            outbox.push_run_parts(header, pkid_at.map(|at| (at, pkid)), &out.publish.payload);
        let inflight = Inflight {
            out,
            pkid,
            phase: Phase::Publish,
        };
        push_slot(&mut self.inflight, inflight, self.burst_slots.0);
        copied
    }

    /// Moves queued QoS 1/2 messages with a plain grant into the window while it has room and
    /// they coalesce into the outbox, for a plain client (`is_plain_client`), as `pump` would
    /// one by one: each moved as it is, its header from the encoder's cache, the outbox
    /// counting its bytes once (`Outbox::end_run`). Returns the payload bytes taken from the
    /// queue.
    fn pump_plain(&mut self, limits: &Limits, enc: &mut Encoder) -> usize {
        let Some(outbox) = self.outbox.clone().filter(|_| self.is_plain_client()) else {
            return 0;
        };
        let window = self.window_size(limits);
        let (mut taken, mut copied) = (0, 0);
        let mut ends = self.window_ends();
        while self.inflight.len() < window {
            let Some(front) = self.queue.front() else {
                break;
            };
            let grant = &front.grant;
            if grant.qos == QoS::AtMostOnce || !grant.is_plain() {
                break;
            }
            let shape = (grant.qos, grant.retain);
            let publish = &front.publish;
            let Some(header) = enc.shared_header(publish, self.version, shape, grant.header) else {
                break;
            };
            if !outbox.is_coalescing(header.0.len() + publish.payload.len()) {
                break;
            }
            let Some(out) = self.queue.pop_front() else {
                break;
            };
            taken += out.publish.payload.len();
            copied += self.send_plain(&outbox, out, header, &mut ends);
        }
        outbox.end_run(copied);
        taken
    }

    /// A queued QoS 1/2 message whose turn came: moved into the window as it is (no second
    /// reference to count, no copy of its grant), or dropped if its expiry ran out.
    fn send_queued(&mut self, out: Outgoing, enc: &mut Encoder) {
        if self.is_expired(&out.grant) {
            if let Some(sid) = self.sid() {
                // Taken from the queue and dropped: replay drops it too.
                self.note_quietly(Record::Assign { sid, pkid: 0 });
            }
            return;
        }
        self.send_new(out, enc);
    }

    /// Gives the message a packet id, records it in flight and sends it.
    #[inline(always)]
    fn send_new(&mut self, out: Outgoing, enc: &mut Encoder) {
        let pkid = self.allocate_pkid();
        if let Some(sid) = self.sid() {
            // QoS 2 is sent under one packet id across a crash, or the client would take the
            // message twice: the PUBLISH waits for the record.
            match out.grant.qos {
                QoS::ExactlyOnce => self.note(Record::Assign { sid, pkid }),
                _ => self.note_quietly(Record::Assign { sid, pkid }),
            }
        }
        self.write_publish(&out.publish, &out.grant, pkid, enc);
        let inflight = Inflight {
            out,
            pkid,
            phase: Phase::Publish,
        };
        push_slot(&mut self.inflight, inflight, self.burst_slots.0);
    }

    /// The next packet id not in flight; the window is far smaller than 65,535 so one exists.
    fn allocate_pkid(&mut self) -> u16 {
        loop {
            let pkid = self.next_pkid;
            self.next_pkid = after(pkid);
            if !self.is_pkid_in_flight(pkid) {
                return pkid;
            }
        }
    }

    /// `allocate_pkid` for a caller that knows the ids of the window's `first` and `last`
    /// messages (`send_run`): the usual next id, the one after the last, is free unless the
    /// ids in flight wrap around to it, without a look at the window (finding its ends in
    /// the ring took ~40 of a fanout-1000 QoS 1 delivery's ~400 instructions, callgrind).
    #[inline]
    fn allocate_pkid_after(&mut self, first: Option<u16>, last: Option<u16>) -> u16 {
        let pkid = self.next_pkid;
        let is_free = match (first, last) {
            (Some(first), Some(last)) => pkid == after(last) && pkid != first,
            _ => self.inflight.is_empty(),
        };
        if !is_free {
            return self.allocate_pkid();
        }
        self.next_pkid = after(pkid);
        pkid
    }

    /// Whether `pkid` is in flight. Ids are given in turn and the window keeps send order, so
    /// the ids in flight run (wrapping past 65,535) from the first one's to the last one's:
    /// an id outside that run is free without a look at each message in the window.
    fn is_pkid_in_flight(&self, pkid: u16) -> bool {
        let (Some(first), Some(last)) = (self.inflight.front(), self.inflight.back()) else {
            return false;
        };
        // The usual case, the id after the last one: free unless the run wraps around to it.
        if pkid == after(last.pkid) && pkid != first.pkid {
            return false;
        }
        let from_first = |id: u16| (id as u32 + 65_535 - first.pkid as u32) % 65_535;
        if from_first(pkid) > from_first(last.pkid) {
            return false;
        }
        self.inflight.iter().any(|i| i.pkid == pkid)
    }

    /// Moves queued messages into the window while there is room and a connection. The bytes
    /// taken are given back to the shard's count once, after the run.
    pub fn pump(&mut self, limits: &Limits, enc: &mut Encoder) {
        let mut taken = self.pump_plain(limits, enc);
        while self.is_online() {
            let Some(front) = self.queue.front() else {
                break;
            };
            let is_qos0 = front.grant.qos == QoS::AtMostOnce;
            if !is_qos0 && !self.has_window(limits) {
                break;
            }
            let Some(out) = self.queue.pop_front() else {
                break;
            };
            taken += out.publish.payload.len();
            if is_qos0 {
                self.send_now(&out.publish, out.grant, limits, enc, false);
            } else {
                self.send_queued(out, enc);
            }
        }
        if taken > 0 {
            self.queued_bytes -= taken;
            self.pressure.sub(taken);
        }
        if self.queue.len() < limits.queue_messages_max {
            self.over_bound_since = None;
        }
        self.report_held();
        if let Some(outbox) = self.outbox.as_ref().filter(|_| !self.cursors.is_empty()) {
            // A retained feed waiting for the window or the queue may go on.
            outbox.notify_room();
        }
        self.give_back_slots();
    }

    /// Frees the window's and the queue's slots once nothing is in flight or queued, when a
    /// burst left more than `SLOTS_KEPT_IDLE` (only then: a session that keeps up and drains
    /// to empty between messages does not reallocate each time), and notes how many they
    /// were for the next burst (`push_slot`).
    fn give_back_slots(&mut self) {
        if !self.inflight.is_empty() || !self.queue.is_empty() {
            return;
        }
        let slots = |deque_capacity: usize| u16::try_from(deque_capacity).unwrap_or(u16::MAX);
        if self.inflight.capacity() > SLOTS_KEPT_IDLE {
            self.burst_slots.0 = slots(self.inflight.capacity());
            self.inflight = VecDeque::new();
        }
        if self.queue.capacity() > SLOTS_KEPT_IDLE {
            self.burst_slots.1 = slots(self.queue.capacity());
            self.queue = VecDeque::new();
        }
    }

    /// Whether a retained message granted at `qos` can be sent now; what to wait for if not.
    /// Live messages go first: nothing may wait in the queue, the write buffer must be under
    /// `mark` (below the lag mark, so the feed never pauses publishers) and QoS 1/2 need a
    /// window slot.
    pub fn room_for_retained(&self, qos: QoS, limits: &Limits, mark: usize) -> Option<Feed> {
        let Some(outbox) = self.outbox.as_ref().filter(|o| !o.is_closing()) else {
            return Some(Feed::Offline);
        };
        if !self.queue.is_empty() || (qos != QoS::AtMostOnce && !self.has_window(limits)) {
            return Some(Feed::Wait(None));
        }
        if outbox.queued_bytes() >= mark {
            return Some(Feed::Wait(Some(mark)));
        }
        None
    }

    /// Sends a retained message the connection has room for (see `room_for_retained`).
    pub fn send_retained(
        &mut self,
        publish: &Arc<Publish>,
        grant: Grant,
        limits: &Limits,
        enc: &mut Encoder,
    ) {
        if self.is_too_large(publish, &grant) {
            self.drop_message(DropReason::TooLarge, grant.qos);
            return;
        }
        self.send_now(publish, grant, limits, enc, true);
    }

    /// Attaches a new connection and re-sends what was in flight, in order, with DUP set
    /// for PUBLISH [MQTT-4.4.0-1].
    pub fn resume(&mut self, outbox: Rc<Outbox>, limits: &Limits, enc: &mut Encoder) {
        // Topic aliases belong to one connection [MQTT-3.3.2-7].
        if let Some(tables) = self.tables.existing_mut() {
            tables.aliases = HashMap::new();
        }
        self.tables.release_if(Tables::is_empty);
        for inflight in &self.inflight {
            match inflight.phase {
                Phase::Publish => {
                    let publish =
                        inflight
                            .out
                            .grant
                            .to_publish(&inflight.out.publish, inflight.pkid, true);
                    push_publish(&outbox, &publish, self.version, &mut enc.scratch);
                }
                Phase::Release => {
                    let packet = Packet::PubRel(ack(inflight.pkid));
                    enc.push_packet(&outbox, &packet, self.version);
                }
            }
        }
        self.outbox = Some(outbox);
        self.pump(limits, enc);
    }

    /// PUBACK from the client: QoS 1 flow done.
    pub fn on_puback(&mut self, pkid: u16, limits: &Limits, enc: &mut Encoder) {
        self.complete(pkid, Phase::Publish, QoS::AtLeastOnce, limits, enc);
    }

    /// Several PUBACKs from the client, with one pump of the queue after them all.
    pub fn on_pubacks(&mut self, pkids: &[u16], limits: &Limits, enc: &mut Encoder) {
        // Clients acknowledge in order, nearly always: the front of the window that the batch
        // acknowledges in turn goes in one step, its messages dropped in place rather than
        // each taken out first (`remove_inflight` per id was ~60 of a fanout-1000 QoS 1
        // delivery's ~400 instructions, callgrind).
        let in_order = pkids
            .iter()
            .zip(&self.inflight)
            .take_while(|&(&pkid, i)| i.is(pkid, Phase::Publish, QoS::AtLeastOnce))
            .count();
        self.inflight.drain(..in_order);
        if let Some(sid) = self.sid() {
            for &pkid in &pkids[..in_order] {
                self.note_quietly(Record::Done { sid, pkid });
            }
        }
        let mut any = in_order > 0;
        for &pkid in &pkids[in_order..] {
            any |= self.remove_inflight(pkid, Phase::Publish, QoS::AtLeastOnce);
        }
        if any {
            self.pump(limits, enc);
        }
    }

    /// PUBCOMP from the client: QoS 2 flow done.
    pub fn on_pubcomp(&mut self, pkid: u16, limits: &Limits, enc: &mut Encoder) {
        self.complete(pkid, Phase::Release, QoS::ExactlyOnce, limits, enc);
    }

    fn complete(&mut self, pkid: u16, phase: Phase, qos: QoS, limits: &Limits, enc: &mut Encoder) {
        if self.remove_inflight(pkid, phase, qos) {
            self.pump(limits, enc);
        }
    }

    /// Ends the flow of `pkid` at `phase`; false when no such message is in flight.
    #[inline(always)]
    fn remove_inflight(&mut self, pkid: u16, phase: Phase, qos: QoS) -> bool {
        let is_it = |i: &Inflight| i.is(pkid, phase, qos);
        // Clients acknowledge in order, nearly always: the oldest goes without a search or a
        // shift of the window (`remove` was 5% of a QoS 1 fan-out's instructions).
        let done = if self.inflight.front().is_some_and(is_it) {
            self.inflight.pop_front().is_some()
        } else {
            let found = self.inflight.iter().position(is_it);
            found.is_some_and(|index| self.inflight.remove(index).is_some())
        };
        if let (true, Some(sid)) = (done, self.sid()) {
            self.note_quietly(Record::Done { sid, pkid });
        }
        done
    }

    /// PUBREC from the client: answer PUBREL and wait for PUBCOMP. A PUBREC for an unknown
    /// id still gets a PUBREL so the client can finish its side.
    pub fn on_pubrec(&mut self, pkid: u16, enc: &mut Encoder) {
        if let Some(i) = self
            .inflight
            .iter_mut()
            .find(|i| i.pkid == pkid && i.out.grant.qos == QoS::ExactlyOnce)
        {
            i.phase = Phase::Release;
            if let Some(sid) = self.sid() {
                self.note(Record::PubRec { sid, pkid });
            }
        }
        if let Some(outbox) = &self.outbox {
            enc.push_packet(outbox, &Packet::PubRel(ack(pkid)), self.version);
        }
    }

    /// An inbound QoS 2 PUBLISH: returns whether it is new (to be forwarded) or a duplicate
    /// of one not yet released [MQTT-4.3.3-2].
    pub fn receive_qos2(&mut self, pkid: u16) -> bool {
        let is_new = self.tables.get_mut().incoming_qos2.insert(pkid);
        if let (true, Some(sid)) = (is_new, self.sid()) {
            self.note(Record::Incoming { sid, pkid });
        }
        is_new
    }

    /// An inbound PUBREL: the packet id may be reused by the client.
    /// Returns whether the id was waiting for its PUBREL.
    pub fn release_qos2(&mut self, pkid: u16) -> bool {
        let was = self
            .tables
            .existing_mut()
            .is_some_and(|t| t.incoming_qos2.remove(&pkid));
        self.tables.release_if(Tables::is_empty);
        if let (true, Some(sid)) = (was, self.sid()) {
            self.note(Record::Released { sid, pkid });
        }
        was
    }

    /// Unacknowledged inbound QoS 2 PUBLISHes, counted against our Receive Maximum.
    pub fn incoming_qos2_len(&self) -> usize {
        self.tables.get().map_or(0, |t| t.incoming_qos2.len())
    }

    /// Takes the inbound QoS 2 ids out, giving the tables back if nothing else is held.
    fn take_incoming_qos2(&mut self) -> HashSet<u16> {
        let ids = self
            .tables
            .existing_mut()
            .map(|t| std::mem::take(&mut t.incoming_qos2))
            .unwrap_or_default();
        self.tables.release_if(Tables::is_empty);
        ids
    }

    /// Takes out the messages that came through shared subscriptions and that the client has
    /// not yet received for sure (queued, or PUBLISH sent and not acknowledged), so another
    /// member of the group can have them when this session goes away.
    pub fn take_unfinished_shared(&mut self) -> Vec<Outgoing> {
        let mut out = Vec::new();
        for inflight in std::mem::take(&mut self.inflight) {
            if inflight.phase != Phase::Publish || inflight.out.grant.share().is_none() {
                self.inflight.push_back(inflight);
                continue;
            }
            out.push(inflight.out);
        }
        let (shared, rest): (Vec<_>, Vec<_>) = self
            .queue
            .drain(..)
            .partition(|o| o.grant.share().is_some());
        self.queue = rest.into();
        self.pressure.sub(self.queued_bytes);
        self.queued_bytes = self.queue.iter().map(|o| o.publish.payload.len()).sum();
        self.pressure.add(self.queued_bytes);
        self.report_held();
        out.extend(shared);
        out
    }

    /// Outbound QoS 1/2 messages sent and not yet acknowledged.
    pub fn inflight_len(&self) -> usize {
        self.inflight.len()
    }

    /// Closes the current connection from the broker's side (takeover, shutdown), telling a
    /// 5.0 client why first; false when the session had no connection.
    pub fn close_connection(&mut self, reason: ReasonCode, enc: &mut Encoder) -> bool {
        let Some(outbox) = self.outbox.take() else {
            return false;
        };
        if let Some(packet) = server_disconnect(self.version, reason) {
            enc.push_packet(&outbox, &packet, self.version);
        }
        outbox.close();
        true
    }
}

/// A PUBACK/PUBREC/PUBREL/PUBCOMP body with reason Success.
pub fn ack(pkid: u16) -> Ack {
    Ack {
        pkid,
        ..Ack::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::codec::{Codec, Decoded};
    use crate::protocol::{MqttString, Props};
    use crate::shard::backpressure::Pressure;
    use std::time::Duration;

    #[test]
    fn a_session_fits_a_240_byte_chunk() {
        // glibc hands out chunks of the request plus 8, rounded up to 16; every connected
        // device holds a boxed session.
        assert!(std::mem::size_of::<Session>() + 8 <= 240);
    }

    fn online(peer: PeerLimits) -> (Session, Rc<Outbox>) {
        let mut session = Session::new("c".into(), Version::V5, true);
        session.peer = peer;
        let outbox = Rc::new(Outbox::new(Rc::new(Pressure::default()), 1 << 20, 1 << 20));
        session.resume(outbox.clone(), &Limits::default(), &mut Encoder::default());
        (session, outbox)
    }

    fn message(topic: &'static str, qos: QoS) -> Publish {
        Publish {
            dup: false,
            qos,
            retain: false,
            topic: MqttString::from(topic),
            pkid: 0,
            properties: Props::default(),
            payload: Bytes::from_static(b"payload"),
        }
    }

    /// The PUBLISHes written to `outbox`, decoded as the client would.
    fn sent(outbox: &Outbox) -> Vec<Publish> {
        let mut wire = outbox.pending_wire();
        let mut codec = Codec::with_version(Version::V5, u32::MAX);
        let mut out = Vec::new();
        while let Ok(Decoded::Packet(Packet::Publish(p))) = codec.decode(&mut wire) {
            out.push(p);
        }
        out
    }

    #[test]
    fn client_receive_maximum_narrows_the_window() {
        let peer = PeerLimits {
            receive_max: 1,
            ..PeerLimits::default()
        };
        let (mut s, outbox) = online(peer);
        let limits = Limits::default();
        let mut enc = Encoder::default();
        for _ in 0..3 {
            s.deliver_owned(
                Outgoing::plain(message("t", QoS::AtLeastOnce)),
                &limits,
                &mut enc,
            );
        }
        assert_eq!(sent(&outbox).len(), 1);
        assert_eq!(s.queued_len(), 2);
    }

    #[test]
    fn expired_messages_are_dropped_and_the_rest_carry_what_is_left() {
        let (mut s, outbox) = online(PeerLimits::default());
        let limits = Limits::default();
        let mut enc = Encoder::default();
        let mut past = Outgoing::plain(message("t", QoS::AtMostOnce));
        past.grant
            .set_expires_at(Some(Instant::now() - Duration::from_millis(1)));
        let mut future = Outgoing::plain(message("t", QoS::AtMostOnce));
        future
            .grant
            .set_expires_at(Some(Instant::now() + Duration::from_secs(30)));
        assert_eq!(s.deliver_owned(past, &limits, &mut enc), Delivery::Dropped);
        assert_eq!(s.deliver_owned(future, &limits, &mut enc), Delivery::Sent);
        assert_eq!(s.counters.expired, 1);
        let got = sent(&outbox);
        assert_eq!(got[0].properties.message_expiry_interval, Some(30));
    }

    #[test]
    fn outbound_topic_aliases_first_come_until_the_maximum() {
        let peer = PeerLimits {
            topic_alias_max: 1,
            ..PeerLimits::default()
        };
        let (mut s, outbox) = online(peer);
        let limits = Limits::default();
        let mut enc = Encoder::default();
        for topic in ["a", "a", "b"] {
            s.deliver_owned(
                Outgoing::plain(message(topic, QoS::AtMostOnce)),
                &limits,
                &mut enc,
            );
        }
        let got: Vec<_> = sent(&outbox)
            .iter()
            .map(|p| (p.topic.as_str().to_string(), p.properties.topic_alias))
            .collect();
        let want = [("a", Some(1)), ("", Some(1)), ("b", None)];
        let want: Vec<_> = want.iter().map(|(t, a)| (t.to_string(), *a)).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn packets_over_the_client_maximum_are_dropped_and_counted() {
        let peer = PeerLimits {
            packet_size_max: 10,
            ..PeerLimits::default()
        };
        let (mut s, outbox) = online(peer);
        let out = Outgoing::plain(message("topic", QoS::AtLeastOnce));
        let delivery = s.deliver_owned(out, &Limits::default(), &mut Encoder::default());
        assert_eq!(delivery, Delivery::Dropped);
        assert_eq!(
            s.pressure.dropped(DropReason::TooLarge, QoS::AtLeastOnce),
            1
        );
        assert!(sent(&outbox).is_empty());
    }

    #[test]
    fn unfinished_shared_messages_are_handed_back_and_plain_ones_kept() {
        let (mut s, _outbox) = online(PeerLimits::default());
        let limits = Limits::default();
        let mut enc = Encoder::default();
        let mut shared = Outgoing::plain(message("t", QoS::AtLeastOnce));
        shared.grant.set_share("$share/g/t".into());
        s.deliver_owned(shared, &limits, &mut enc);
        s.deliver_owned(
            Outgoing::plain(message("t", QoS::AtLeastOnce)),
            &limits,
            &mut enc,
        );
        let back = s.take_unfinished_shared();
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].grant.share(), Some("$share/g/t"));
        assert_eq!(s.take_state().inflight.len(), 1);
    }

    #[test]
    fn packet_ids_wrap_past_65535_and_skip_those_in_flight() {
        let (mut s, _outbox) = online(PeerLimits::default());
        let limits = Limits::default();
        let mut enc = Encoder::default();
        s.next_pkid = 65_534;
        for _ in 0..3 {
            s.deliver_owned(
                Outgoing::plain(message("t", QoS::AtLeastOnce)),
                &limits,
                &mut enc,
            );
        }
        let ids: Vec<u16> = s.inflight.iter().map(|i| i.pkid).collect();
        assert_eq!(ids, [65_534, 65_535, 1]);
        s.next_pkid = 65_535;
        assert_eq!(s.allocate_pkid(), 2, "65,535 and 1 are in flight");
        s.on_puback(65_534, &limits, &mut enc);
        s.next_pkid = 65_534;
        assert_eq!(s.allocate_pkid(), 65_534, "acknowledged, so free again");
    }

    #[test]
    fn a_message_in_a_window_takes_32_bytes() {
        // What every slot of a window and a queue costs (`Grant` keeps its rare parts boxed).
        assert!(std::mem::size_of::<Outgoing>() <= 24);
        assert!(std::mem::size_of::<Inflight>() <= 32);
    }

    #[test]
    fn a_grant_with_identifiers_and_a_share_keeps_both() {
        let mut grant = Grant::new(QoS::AtLeastOnce, false, vec![3, 7], None);
        assert!(!grant.is_plain());
        grant.set_share("$share/g/t".into());
        assert_eq!(
            (grant.ids(), grant.share()),
            (&[3, 7][..], Some("$share/g/t"))
        );
        let stored = Grant::from_stored(&grant.to_stored());
        assert_eq!(
            (stored.ids(), stored.share()),
            (&[3, 7][..], Some("$share/g/t"))
        );
        assert_eq!(grant.take_share().as_deref(), Some("$share/g/t"));
        let plain = Grant::new(QoS::AtLeastOnce, false, Vec::new(), None);
        assert!(plain.is_plain() && plain.ids().is_empty() && plain.share().is_none());
    }

    /// Offers `n` QoS 1 messages on one topic.
    fn deliver_qos1(s: &mut Session, n: usize, limits: &Limits, enc: &mut Encoder) {
        for _ in 0..n {
            s.deliver_owned(Outgoing::plain(message("t", QoS::AtLeastOnce)), limits, enc);
        }
    }

    #[test]
    fn a_run_sent_at_once_goes_out_as_delivered_message_by_message() {
        let limits = Limits {
            inflight_max: 3,
            ..Limits::default()
        };
        let mut enc = Encoder::default();
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
            let (mut at_once, run_outbox) = online(PeerLimits::default());
            let (mut each, each_outbox) = online(PeerLimits::default());
            let run: Vec<Message> = (0..4)
                .map(|_| Message::received(message("t", qos), 0))
                .collect();
            let slots: Vec<HeaderSlot> = run.iter().map(|m| enc.place(&m.publish)).collect();
            let grant = Grant::new(qos, false, Vec::new(), None);
            let shape = (Version::V5, qos, false);
            let publishes = run.iter().map(|m| &m.publish);
            let headers = enc.run_headers(publishes.zip(slots.iter().copied()), shape);
            let room = at_once.run_room(&run[0], &grant, &limits).min(run.len());
            let taken = at_once.send_run(&run[..room], &headers, &slots, &grant, &limits);
            assert_eq!(taken, if qos == QoS::AtMostOnce { 4 } else { 3 });
            for (message, &slot) in run.iter().zip(&slots) {
                let mut grant = grant.clone();
                grant.header = slot;
                each.deliver(&message.publish, grant, &limits, &mut enc);
            }
            // One by one, the fourth QoS 1 message waits in the queue.
            assert_eq!(sent(&run_outbox).len(), taken);
            assert_eq!(
                run_outbox.pending_wire(),
                each_outbox.pending_wire(),
                "{qos:?}"
            );
            assert_eq!(at_once.inflight_len(), each.inflight_len());
            assert_eq!(run_outbox.queued_bytes(), each_outbox.queued_bytes());
        }
    }

    #[test]
    fn acknowledgements_out_of_order_free_their_own_messages() {
        let (mut s, _outbox) = online(PeerLimits::default());
        let limits = Limits::default();
        let mut enc = Encoder::default();
        deliver_qos1(&mut s, 4, &limits, &mut enc);
        s.on_pubacks(&[1, 3, 2], &limits, &mut enc);
        let ids: Vec<u16> = s.inflight.iter().map(|i| i.pkid).collect();
        assert_eq!(ids, [4]);
    }

    #[test]
    fn a_batch_of_pubacks_frees_the_window_and_pumps_the_queue_once() {
        let (mut s, outbox) = online(PeerLimits::default());
        let limits = Limits {
            inflight_max: 2,
            ..Limits::default()
        };
        let mut enc = Encoder::default();
        deliver_qos1(&mut s, 4, &limits, &mut enc);
        assert_eq!((s.inflight.len(), s.queued_len()), (2, 2));
        s.on_pubacks(&[1, 2, 999], &limits, &mut enc);
        let ids: Vec<u16> = s.inflight.iter().map(|i| i.pkid).collect();
        assert_eq!(ids, [3, 4], "an unknown id is ignored");
        assert_eq!(s.queued_len(), 0);
        assert_eq!(sent(&outbox).len(), 4);
    }

    #[test]
    fn a_session_that_caught_up_gives_back_what_a_burst_grew() {
        let (mut s, _outbox) = online(PeerLimits::default());
        let limits = Limits {
            inflight_max: 100,
            ..Limits::default()
        };
        let mut enc = Encoder::default();
        deliver_qos1(&mut s, 300, &limits, &mut enc);
        assert_eq!((s.inflight.len(), s.queued_len()), (100, 200));
        let first: Vec<u16> = (1..=100).collect();
        s.on_pubacks(&first, &limits, &mut enc);
        assert!(
            s.queue.capacity() >= 100,
            "still queued: the queue keeps its slots"
        );
        for round in 1..3u16 {
            let ids: Vec<u16> = (round * 100 + 1..=round * 100 + 100).collect();
            s.on_pubacks(&ids, &limits, &mut enc);
        }
        assert_eq!((s.inflight.len(), s.queued_len()), (0, 0));
        assert!(s.inflight.capacity() <= SLOTS_KEPT_IDLE);
        assert!(s.queue.capacity() <= SLOTS_KEPT_IDLE);
        let (window, queue) = s.burst_slots;
        assert!(usize::from(window) >= 100 && usize::from(queue) >= 200);
        // A message or two stay in the slots kept idle; the next burst past half of them
        // takes the last burst's slots in one step.
        deliver_qos1(&mut s, 1, &limits, &mut enc);
        assert!(s.inflight.capacity() <= SLOTS_KEPT_IDLE);
        deliver_qos1(&mut s, SLOTS_KEPT_IDLE / 2, &limits, &mut enc);
        assert!(s.inflight.capacity() >= usize::from(window));
        deliver_qos1(&mut s, 100 + SLOTS_KEPT_IDLE, &limits, &mut enc);
        assert!(s.queue.capacity() >= usize::from(queue));
    }
}
