//! A client's session as the broker keeps it: subscriptions, the outbound QoS 1/2 window,
//! the queue behind it, and inbound QoS 2 packet ids. Pure state: it encodes packets into the
//! connection's outbox but does no I/O itself.

use super::overflow;
use crate::config::Limits;
use crate::net::ceiling::{DropReason, Pressure};
use crate::net::outbox::{Frame, Outbox};
use crate::protocol::codec::{self, encode};
use crate::protocol::{Ack, Packet, Publish, QoS, SubscriptionOptions, Version, Will};
use bytes::BytesMut;
use std::collections::{HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::time::Instant;

/// Payloads up to this size queued for an offline session are copied out of the read buffer
/// they were sliced from, so queued bytes are what the ceiling counts.
const OFFLINE_COPY_BYTES_MAX: usize = 4096;

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
    /// The PUBLISH as sent to this client (its QoS, packet id and retain flag).
    pub publish: Publish,
    /// Where its flow stands.
    pub phase: Phase,
}

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
    pub subscriptions: Vec<(String, SubscriptionOptions)>,
    /// Unacknowledged outbound messages, in send order.
    pub inflight: Vec<Inflight>,
    /// Messages waiting behind the inflight window.
    pub queue: Vec<Publish>,
    /// Inbound QoS 2 packet ids received but not yet released.
    pub incoming_qos2: Vec<u16>,
    /// Next packet id to try.
    pub next_pkid: u16,
}

/// Drop and queue counters of one session.
#[derive(Clone, Copy, Debug, Default)]
pub struct SessionCounters {
    /// Messages dropped because the queue was full or the client was offline (QoS 0).
    pub dropped: u64,
}

/// A client's session.
pub struct Session {
    /// The client identifier.
    pub client_id: String,
    /// Protocol version of the current (or last) connection.
    pub version: Version,
    /// Whether the session outlives the connection (3.1.1 Clean Session = 0).
    pub is_persistent: bool,
    /// Subscriptions by filter.
    pub subscriptions: HashMap<String, SubscriptionOptions>,
    /// The will of the current connection.
    pub will: Option<Will>,
    /// The connection's outbox, while connected.
    pub outbox: Option<Rc<Outbox>>,
    /// Identifies the connection that owns the session now.
    pub conn_token: u64,
    inflight: VecDeque<Inflight>,
    queue: VecDeque<Publish>,
    queued_bytes: usize,
    incoming_qos2: HashSet<u16>,
    next_pkid: u16,
    /// Counters.
    pub counters: SessionCounters,
    /// The shard's backpressure state, which counts this session's queued bytes and drops.
    pub pressure: Rc<Pressure>,
    /// Since when the queue has refused QoS 1/2 messages (for `qos12_overflow = "disconnect"`).
    pub over_bound_since: Option<Instant>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.pressure.sub(self.queued_bytes);
    }
}

impl Session {
    /// A new, empty session.
    pub fn new(client_id: String, version: Version, is_persistent: bool) -> Session {
        Session {
            client_id,
            version,
            is_persistent,
            subscriptions: HashMap::new(),
            will: None,
            outbox: None,
            conn_token: 0,
            inflight: VecDeque::new(),
            queue: VecDeque::new(),
            queued_bytes: 0,
            incoming_qos2: HashSet::new(),
            next_pkid: 1,
            counters: SessionCounters::default(),
            pressure: Rc::new(Pressure::default()),
            over_bound_since: None,
        }
    }

    /// Rebuilds a session moved from another shard.
    pub fn restore(&mut self, state: SessionState) {
        self.subscriptions = state.subscriptions.into_iter().collect();
        self.inflight = state.inflight.into();
        self.pressure.sub(self.queued_bytes);
        self.queued_bytes = state.queue.iter().map(|p| p.payload.len()).sum();
        self.pressure.add(self.queued_bytes);
        self.queue = state.queue.into();
        self.incoming_qos2 = state.incoming_qos2.into_iter().collect();
        self.next_pkid = state.next_pkid.max(1);
    }

    /// Takes the movable state out, leaving the session empty.
    pub fn take_state(&mut self) -> SessionState {
        self.pressure.sub(std::mem::take(&mut self.queued_bytes));
        SessionState {
            subscriptions: self.subscriptions.drain().collect(),
            inflight: self.inflight.drain(..).collect(),
            queue: self.queue.drain(..).collect(),
            incoming_qos2: self.incoming_qos2.drain().collect(),
            next_pkid: self.next_pkid,
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
    pub fn deliver(
        &mut self,
        publish: Publish,
        limits: &Limits,
        scratch: &mut BytesMut,
    ) -> Delivery {
        let is_qos0 = publish.qos == QoS::AtMostOnce;
        if !self.is_online() && is_qos0 {
            return self.drop_message(DropReason::Offline, publish.qos);
        }
        if self.is_online() && self.queue.is_empty() && (is_qos0 || self.has_window(limits)) {
            return self.send_now(publish, limits, scratch);
        }
        self.enqueue(publish, limits)
    }

    /// Sends at once: QoS 0 unless the connection's write buffer is over its bound, QoS 1/2
    /// into the window.
    fn send_now(&mut self, publish: Publish, limits: &Limits, scratch: &mut BytesMut) -> Delivery {
        if publish.qos != QoS::AtMostOnce {
            self.send_new(publish, scratch);
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
        push_publish(outbox, &publish, self.version, scratch);
        Delivery::Sent
    }

    fn enqueue(&mut self, mut publish: Publish, limits: &Limits) -> Delivery {
        let size = publish.payload.len();
        if !self.is_online() && size <= OFFLINE_COPY_BYTES_MAX {
            // Held for long: a small slice must not keep its whole 64 KiB read buffer alive.
            publish.payload = bytes::Bytes::copy_from_slice(&publish.payload);
        }
        while self.is_queue_full(size, limits) {
            if publish.qos != QoS::AtMostOnce {
                overflow::over_bound(self, limits, Instant::now());
                return self.drop_message(DropReason::QueueFull, publish.qos);
            }
            if !overflow::make_room_in_queue(self, limits) {
                return self.drop_message(DropReason::QueueFull, publish.qos);
            }
        }
        self.queued_bytes += size;
        self.pressure.add(size);
        self.queue.push_back(publish);
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

    /// Removes the oldest queued QoS 0 message (drop-oldest policy); returns whether one was.
    pub(super) fn drop_oldest_queued(&mut self) -> bool {
        let Some(index) = self.queue.iter().position(|p| p.qos == QoS::AtMostOnce) else {
            return false;
        };
        let Some(old) = self.queue.remove(index) else {
            return false;
        };
        self.queued_bytes -= old.payload.len();
        self.pressure.sub(old.payload.len());
        self.drop_message(DropReason::QueueFull, QoS::AtMostOnce);
        true
    }

    /// Tells the connection how much waits behind it, for its lag.
    fn report_held(&self) {
        if let Some(outbox) = &self.outbox {
            outbox.set_held(self.queue.len(), self.queued_bytes);
        }
    }

    fn has_window(&self, limits: &Limits) -> bool {
        self.inflight.len() < limits.inflight_max as usize
    }

    /// Gives `publish` a packet id, records it in flight and sends it.
    fn send_new(&mut self, mut publish: Publish, scratch: &mut BytesMut) {
        publish.pkid = self.allocate_pkid();
        publish.dup = false;
        if let Some(outbox) = &self.outbox {
            push_publish(outbox, &publish, self.version, scratch);
        }
        self.inflight.push_back(Inflight {
            publish,
            phase: Phase::Publish,
        });
    }

    /// The next packet id not in flight; the window is far smaller than 65,535 so one exists.
    fn allocate_pkid(&mut self) -> u16 {
        loop {
            let pkid = self.next_pkid;
            self.next_pkid = if pkid == u16::MAX { 1 } else { pkid + 1 };
            if !self.inflight.iter().any(|i| i.publish.pkid == pkid) {
                return pkid;
            }
        }
    }

    /// Moves queued messages into the window while there is room and a connection.
    pub fn pump(&mut self, limits: &Limits, scratch: &mut BytesMut) {
        while self.is_online() {
            let Some(front) = self.queue.front() else {
                break;
            };
            if front.qos != QoS::AtMostOnce && !self.has_window(limits) {
                break;
            }
            let Some(publish) = self.queue.pop_front() else {
                break;
            };
            self.queued_bytes -= publish.payload.len();
            self.pressure.sub(publish.payload.len());
            self.send_now(publish, limits, scratch);
        }
        if self.queue.len() < limits.queue_messages_max {
            self.over_bound_since = None;
        }
        self.report_held();
    }

    /// Attaches a new connection and re-sends what was in flight, in order, with DUP set
    /// for PUBLISH [MQTT-4.4.0-1].
    pub fn resume(&mut self, outbox: Rc<Outbox>, limits: &Limits, scratch: &mut BytesMut) {
        for inflight in &mut self.inflight {
            match inflight.phase {
                Phase::Publish => {
                    inflight.publish.dup = true;
                    push_publish(&outbox, &inflight.publish, self.version, scratch);
                }
                Phase::Release => {
                    let packet = Packet::PubRel(ack(inflight.publish.pkid));
                    push_packet(&outbox, &packet, self.version, scratch);
                }
            }
        }
        self.outbox = Some(outbox);
        self.pump(limits, scratch);
    }

    /// PUBACK from the client: QoS 1 flow done.
    pub fn on_puback(&mut self, pkid: u16, limits: &Limits, scratch: &mut BytesMut) {
        self.complete(pkid, Phase::Publish, QoS::AtLeastOnce, limits, scratch);
    }

    /// PUBCOMP from the client: QoS 2 flow done.
    pub fn on_pubcomp(&mut self, pkid: u16, limits: &Limits, scratch: &mut BytesMut) {
        self.complete(pkid, Phase::Release, QoS::ExactlyOnce, limits, scratch);
    }

    fn complete(
        &mut self,
        pkid: u16,
        phase: Phase,
        qos: QoS,
        limits: &Limits,
        scratch: &mut BytesMut,
    ) {
        let found = self
            .inflight
            .iter()
            .position(|i| i.publish.pkid == pkid && i.phase == phase && i.publish.qos == qos);
        if let Some(index) = found {
            self.inflight.remove(index);
            self.pump(limits, scratch);
        }
    }

    /// PUBREC from the client: answer PUBREL and wait for PUBCOMP. A PUBREC for an unknown
    /// id still gets a PUBREL so the client can finish its side.
    pub fn on_pubrec(&mut self, pkid: u16, scratch: &mut BytesMut) {
        if let Some(i) = self
            .inflight
            .iter_mut()
            .find(|i| i.publish.pkid == pkid && i.publish.qos == QoS::ExactlyOnce)
        {
            i.phase = Phase::Release;
        }
        if let Some(outbox) = &self.outbox {
            push_packet(outbox, &Packet::PubRel(ack(pkid)), self.version, scratch);
        }
    }

    /// An inbound QoS 2 PUBLISH: returns whether it is new (to be forwarded) or a duplicate
    /// of one not yet released [MQTT-4.3.3-2].
    pub fn receive_qos2(&mut self, pkid: u16) -> bool {
        self.incoming_qos2.insert(pkid)
    }

    /// An inbound PUBREL: the packet id may be reused by the client.
    pub fn release_qos2(&mut self, pkid: u16) {
        self.incoming_qos2.remove(&pkid);
    }

    /// Sends a control packet on the current connection, if any.
    pub fn send(&self, packet: &Packet, scratch: &mut BytesMut) {
        if let Some(outbox) = &self.outbox {
            push_packet(outbox, packet, self.version, scratch);
        }
    }
}

/// A PUBACK/PUBREC/PUBREL/PUBCOMP body with reason Success.
pub fn ack(pkid: u16) -> Ack {
    Ack {
        pkid,
        ..Ack::default()
    }
}

/// Encodes a PUBLISH header into `scratch` and queues it with the shared payload.
pub fn push_publish(outbox: &Outbox, publish: &Publish, version: Version, scratch: &mut BytesMut) {
    reserve(scratch);
    if codec::write_publish_header(publish, version, scratch).is_ok() {
        outbox.push(Frame {
            header: scratch.split().freeze(),
            payload: publish.payload.clone(),
            is_droppable: publish.qos == QoS::AtMostOnce,
        });
    } else {
        scratch.clear();
    }
}

/// Encodes a control packet into `scratch` and queues it.
pub fn push_packet(outbox: &Outbox, packet: &Packet, version: Version, scratch: &mut BytesMut) {
    reserve(scratch);
    if encode(packet, version, scratch).is_ok() {
        outbox.push(Frame::control(scratch.split().freeze()));
    } else {
        scratch.clear();
    }
}

/// Headers are carved out of one larger allocation, so most packets cost no allocation.
fn reserve(scratch: &mut BytesMut) {
    if scratch.capacity() < 512 {
        scratch.reserve(16 << 10);
    }
}
