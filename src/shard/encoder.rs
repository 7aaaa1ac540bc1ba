//! Turns PUBLISHes and control packets into outbox frames.
//!
//! A fan-out writes the same PUBLISH header to many subscribers; only the packet id differs.
//! `Encoder` keeps the headers of recent messages, one per (protocol version, QoS, retain),
//! so each further subscriber costs a copy of a few bytes and two bytes of packet id instead
//! of an encode. Not only the message being fanned out: at QoS 1/2 most subscribers get a
//! message later, from their queue, when a PUBACK opens their window, each in the same order,
//! so the headers of the last few hundred messages are kept (an encode per queued message
//! was 18% of a fan-out's instructions, callgrind).

use crate::protocol::codec::{self, encode};
use crate::protocol::{Packet, Publish, QoS, Version};
use crate::shard::outbox::{Frame, Outbox};
use bytes::BytesMut;
use std::ops::Range;
use std::sync::{Arc, Weak};

/// Messages whose headers are kept, a power of two: more than a subscriber's default window
/// of 500 messages (`limits.inflight_max`) and its queue of 1,000 (`queue_messages_max`)
/// behind it, so that subscribers pumping the same messages one after another find them.
const CACHED_MESSAGES: usize = 2048;

/// Where a fanned-out message's headers are kept (`Encoder::place`); the default names none:
/// the message went to one session, and its header is written when it is sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeaderSlot(u16);

const _: () = assert!(CACHED_MESSAGES < u16::MAX as usize);

/// Encoding state of one shard: a scratch buffer and the cached headers of recent messages.
pub struct Encoder {
    /// Where headers are written before they go to an outbox.
    pub scratch: BytesMut,
    /// Slots by a hash of the message's address, made on first use.
    headers: Option<Box<[Headers; CACHED_MESSAGES]>>,
    /// Set while a message goes to one session of this shard only (`set_sole`): its header
    /// is written once, so it is encoded straight into the outbox rather than kept. Keeping
    /// it cost a slot's upkeep and, in a table larger than the CPU's caches, a cache miss per
    /// message (`cached` was 9% of a pairs-100 QoS 1 broker's cycles, perf).
    sole: bool,
    /// The slot the next message fanned out takes (`place`).
    next_slot: usize,
    /// The header of a message that was not placed (`shared_header`), written anew each time.
    short: [u8; codec::SHORT_HEADER_MAX],
}

impl Default for Encoder {
    fn default() -> Encoder {
        Encoder {
            scratch: BytesMut::new(),
            headers: None,
            sole: false,
            next_slot: 0,
            short: [0; codec::SHORT_HEADER_MAX],
        }
    }
}

/// The encoded headers of one message.
#[derive(Default)]
struct Headers {
    /// The message they belong to. Weak: the cache must not keep a message (and the read
    /// buffer its payload is a slice of) alive; it keeps only the allocation, so no other
    /// message can take its address while the slot names it.
    publish: Weak<Publish>,
    /// Its address, compared on every lookup (0: none).
    address: usize,
    shapes: Vec<Cached>,
    bytes: BytesMut,
}

/// The headers of a run of messages (`Shard::deliver_run`) as clients of one version get
/// them with one QoS and retain flag, copied out of the cache once per run: each session the
/// run goes to takes them without a lookup per message (`Session::send_run`; the lookup was
/// ~80 of a fanout-1000 QoS 1 delivery's ~480 instructions, callgrind).
pub struct RunHeaders {
    /// The version, QoS and retain flag they were encoded for.
    pub shape: (Version, QoS, bool),
    bytes: Vec<u8>,
    /// Each message's header in `bytes`, and where its packet id goes.
    parts: Vec<(Range<usize>, Option<usize>)>,
}

impl RunHeaders {
    /// The header of the run's `i`th message and where its packet id goes; None past those
    /// encoded.
    #[inline]
    pub fn get(&self, i: usize) -> Option<(&[u8], Option<usize>)> {
        let (range, pkid_at) = self.parts.get(i)?;
        Some((self.bytes.get(range.clone())?, *pkid_at))
    }
}

/// One encoded header of the cached message.
struct Cached {
    version: Version,
    qos: QoS,
    retain: bool,
    range: Range<usize>,
    pkid_at: Option<usize>,
}

impl Encoder {
    /// Queues `publish` as a client of `version` gets it with `qos`, `retain` and packet id
    /// `pkid` (every other field as received). One that cannot be encoded is not sent, as
    /// with `push_publish`.
    pub fn push_shared(
        &mut self,
        outbox: &Outbox,
        publish: &Arc<Publish>,
        version: Version,
        (qos, retain, pkid): (QoS, bool, u16),
        slot: HeaderSlot,
    ) {
        let Encoder {
            scratch,
            headers,
            sole,
            ..
        } = self;
        // Not placed: it goes to one session (`shared_header`).
        if *sole || slot == HeaderSlot::default() {
            push_shaped(outbox, scratch, publish, version, (qos, retain, pkid));
            return;
        }
        let shape = (version, qos, retain);
        let Some((header, pkid_at)) = cached(headers, publish, slot, shape) else {
            return;
        };
        if outbox.is_coalescing(header.len() + publish.payload.len()) {
            outbox.push_publish_parts(header, pkid_at.map(|at| (at, pkid)), &publish.payload);
            return;
        }
        reserve(scratch);
        scratch.extend_from_slice(header);
        if let Some(at) = pkid_at {
            scratch[at..at + 2].copy_from_slice(&pkid.to_be_bytes());
        }
        queue_publish(outbox, scratch, publish, qos);
    }

    /// The kept header of `publish` for a client of `version` that gets it with `qos` and
    /// `retain`, and where its packet id goes (see `push_shared`); None while a message goes
    /// to one session only (`set_sole`), or if it cannot be encoded.
    pub fn shared_header(
        &mut self,
        publish: &Arc<Publish>,
        version: Version,
        (qos, retain): (QoS, bool),
        slot: HeaderSlot,
    ) -> Option<(&[u8], Option<usize>)> {
        if self.sole {
            return None;
        }
        if slot == HeaderSlot::default() {
            // Not placed: fanned out to one session (`set_sole`), whose queue it waited in.
            // Its header is written once, so keeping it would cost a slot's upkeep and, in a
            // table larger than the CPU's caches, a miss per message (`cached` was 5% of a
            // pairs-100 QoS 1 broker's cycles, perf, where every message waits in a queue).
            let shape = codec::Shape {
                qos,
                retain,
                dup: false,
                pkid: 0,
            };
            if let Some(len) = codec::short_header(publish, shape, version, &mut self.short) {
                let pkid_at = codec::publish_pkid_offset(publish, shape, version);
                return Some((&self.short[..len], pkid_at));
            }
        }
        cached(&mut self.headers, publish, slot, (version, qos, retain))
    }

    /// The headers of the messages of a run (each with its slot) for clients of one
    /// `shape`, up to the first that cannot be encoded; none while the run goes to one
    /// session only (`set_sole`).
    pub fn run_headers<'a>(
        &mut self,
        run: impl Iterator<Item = (&'a Arc<Publish>, HeaderSlot)>,
        shape: (Version, QoS, bool),
    ) -> RunHeaders {
        let mut headers = RunHeaders {
            shape,
            bytes: Vec::new(),
            parts: Vec::new(),
        };
        if self.sole {
            return headers;
        }
        for (publish, slot) in run {
            let Some((header, pkid_at)) = cached(&mut self.headers, publish, slot, shape) else {
                break;
            };
            let start = headers.bytes.len();
            headers.bytes.extend_from_slice(header);
            headers.parts.push((start..headers.bytes.len(), pkid_at));
        }
        headers
    }

    /// Says whether the messages delivered until the next call go to one session of this
    /// shard only (see `sole`); either way `push_shared` queues the same bytes.
    pub fn set_sole(&mut self, sole: bool) {
        self.sole = sole;
    }

    /// Gives `publish`, about to be fanned out to several sessions of this shard, the next
    /// slot in turn: its headers are encoded there once and stay until `CACHED_MESSAGES`
    /// later messages took the slots after it, however long its subscribers' queues. Slots
    /// chosen by a hash of the address instead (as messages without one still are) let
    /// messages a queue apart evict each other: at fanout-100 QoS 1 a header was encoded
    /// once per 3 deliveries (callgrind), where once per message is enough.
    pub fn place(&mut self, publish: &Arc<Publish>) -> HeaderSlot {
        let index = self.next_slot;
        self.next_slot = (index + 1) % CACHED_MESSAGES;
        table(&mut self.headers)[index].hold(publish);
        HeaderSlot(index as u16 + 1)
    }

    /// Queues a PUBLISH encoded from scratch.
    pub fn push_publish(&mut self, outbox: &Outbox, publish: &Publish, version: Version) {
        push_publish(outbox, publish, version, &mut self.scratch);
    }

    /// Queues a control packet.
    pub fn push_packet(&mut self, outbox: &Outbox, packet: &Packet, version: Version) {
        push_packet(outbox, packet, version, &mut self.scratch);
    }
}

/// The table of kept headers, made on first use.
fn table(headers: &mut Option<Box<[Headers; CACHED_MESSAGES]>>) -> &mut [Headers; CACHED_MESSAGES] {
    headers.get_or_insert_with(|| {
        let slots: Box<[Headers]> = (0..CACHED_MESSAGES).map(|_| Headers::default()).collect();
        // The length is CACHED_MESSAGES by construction.
        slots.try_into().unwrap_or_else(|_| unreachable!())
    })
}

impl Headers {
    /// Makes the slot `publish`'s, forgetting the message it held.
    fn hold(&mut self, publish: &Arc<Publish>) {
        self.publish = Arc::downgrade(publish);
        self.address = Arc::as_ptr(publish) as usize;
        self.shapes.clear();
        self.bytes.clear();
    }
}

/// The cached header of `publish` for this shape (version, QoS, retain) and where its packet
/// id goes, encoded on first use: in the slot the message was placed in, if it still holds
/// it, else in the slot of its address. Inlined into `push_shared`: as a call of its own it
/// was ~35 more instructions per delivery of a fanout-100 QoS 0 broker (callgrind).
#[inline(always)]
fn cached<'a>(
    headers: &'a mut Option<Box<[Headers; CACHED_MESSAGES]>>,
    publish: &Arc<Publish>,
    slot: HeaderSlot,
    (version, qos, retain): (Version, QoS, bool),
) -> Option<(&'a [u8], Option<usize>)> {
    let headers = table(headers);
    let address = Arc::as_ptr(publish) as usize;
    let placed = usize::from(slot.0).wrapping_sub(1);
    let index = match headers.get(placed) {
        Some(kept) if kept.address == address => placed,
        _ => slot_of(publish),
    };
    let headers = &mut headers[index];
    if headers.address != address {
        headers.hold(publish);
    }
    let found = headers
        .shapes
        .iter()
        .position(|s| s.version == version && s.qos == qos && s.retain == retain);
    let index = match found {
        Some(index) => index,
        None => {
            let shape = codec::Shape {
                qos,
                retain,
                dup: false,
                pkid: 0,
            };
            let start = headers.bytes.len();
            codec::write_shaped_header(publish, shape, version, &mut headers.bytes).ok()?;
            headers.shapes.push(Cached {
                version,
                qos,
                retain,
                range: start..headers.bytes.len(),
                pkid_at: codec::publish_pkid_offset(publish, shape, version),
            });
            headers.shapes.len() - 1
        }
    };
    let shape = &headers.shapes[index];
    Some((&headers.bytes[shape.range.clone()], shape.pkid_at))
}

/// The cache slot of a message: a Fibonacci hash of its address (allocations are aligned,
/// so the low bits say little).
fn slot_of(publish: &Arc<Publish>) -> usize {
    const BITS: u32 = CACHED_MESSAGES.trailing_zeros();
    let address = Arc::as_ptr(publish) as usize as u64;
    let slot = (address >> 4).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - BITS);
    slot as usize & (CACHED_MESSAGES - 1)
}

const _: () = assert!(CACHED_MESSAGES.is_power_of_two());

/// `push_shared` without the cache: the header of `publish` with this QoS, retain and packet
/// id encoded into `scratch`, then queued with the payload.
fn push_shaped(
    outbox: &Outbox,
    scratch: &mut BytesMut,
    publish: &Publish,
    version: Version,
    (qos, retain, pkid): (QoS, bool, u16),
) {
    let shape = codec::Shape {
        qos,
        retain,
        dup: false,
        pkid,
    };
    let mut short = [0; codec::SHORT_HEADER_MAX];
    if let Some(len) = codec::short_header(publish, shape, version, &mut short)
        .filter(|len| outbox.is_coalescing(len + publish.payload.len()))
    {
        outbox.push_parts(&short[..len], &publish.payload);
        return;
    }
    reserve(scratch);
    if codec::write_shaped_header(publish, shape, version, scratch).is_err() {
        scratch.clear();
        return;
    }
    queue_publish(outbox, scratch, publish, qos);
}

/// Encodes a PUBLISH header into `scratch` and queues it with the shared payload.
pub fn push_publish(outbox: &Outbox, publish: &Publish, version: Version, scratch: &mut BytesMut) {
    reserve(scratch);
    if codec::write_publish_header(publish, version, scratch).is_err() {
        scratch.clear();
        return;
    }
    queue_publish(outbox, scratch, publish, publish.qos);
}

/// Queues the header in `scratch` with the payload of `publish`: copied into the outbox when
/// small, else as a frame that shares the payload.
fn queue_publish(outbox: &Outbox, scratch: &mut BytesMut, publish: &Publish, qos: QoS) {
    if outbox.is_coalescing(scratch.len() + publish.payload.len()) {
        outbox.push_parts(scratch, &publish.payload);
        scratch.clear();
        return;
    }
    outbox.push(Frame {
        header: scratch.split().freeze(),
        payload: publish.payload.clone(),
        is_droppable: qos == QoS::AtMostOnce,
    });
}

/// Encodes a control packet into `scratch` and queues it.
pub fn push_packet(outbox: &Outbox, packet: &Packet, version: Version, scratch: &mut BytesMut) {
    if let Some(short) = codec::short_ack(packet, version).filter(|_| outbox.is_coalescing(4)) {
        outbox.push_parts(&short, &[]);
        return;
    }
    reserve(scratch);
    if encode(packet, version, scratch).is_err() {
        scratch.clear();
    } else if outbox.is_coalescing(scratch.len()) {
        outbox.push_parts(scratch, &[]);
        scratch.clear();
    } else {
        outbox.push(Frame::control(scratch.split().freeze()));
    }
}

/// Headers are carved out of one larger allocation, so most packets cost no allocation.
fn reserve(scratch: &mut BytesMut) {
    if scratch.capacity() < 512 {
        scratch.reserve(16 << 10);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::codec::{Codec, Decoded};
    use crate::protocol::{MqttString, Props};
    use bytes::Bytes;

    fn publish(topic: &'static str) -> Arc<Publish> {
        Arc::new(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: MqttString::from(topic),
            pkid: 0,
            properties: Props::default(),
            payload: Bytes::from_static(b"payload"),
        })
    }

    /// (topic, packet id) of every PUBLISH in `outbox`, decoded as a 5.0 client would.
    fn sent(outbox: &Outbox) -> Vec<(String, u16)> {
        let mut wire = outbox.pending_wire();
        let mut codec = Codec::with_version(Version::V5, u32::MAX);
        let mut out = Vec::new();
        while let Ok(Decoded::Packet(Packet::Publish(p))) = codec.decode(&mut wire) {
            out.push((p.topic.as_str().to_string(), p.pkid));
        }
        out
    }

    #[test]
    fn headers_of_several_messages_are_kept_and_patched_per_packet_id() {
        let (a, b) = (publish("a/1"), publish("b/22"));
        let (mut enc, outbox) = (Encoder::default(), Outbox::default());
        let shape = |pkid| (QoS::AtLeastOnce, false, pkid);
        for (message, pkid) in [(&a, 1), (&b, 2), (&a, 3), (&b, 4), (&a, 5)] {
            enc.push_shared(
                &outbox,
                message,
                Version::V5,
                shape(pkid),
                HeaderSlot::default(),
            );
        }
        let want = [("a/1", 1), ("b/22", 2), ("a/1", 3), ("b/22", 4), ("a/1", 5)];
        let want: Vec<_> = want.iter().map(|(t, id)| (t.to_string(), *id)).collect();
        assert_eq!(sent(&outbox), want);
    }

    #[test]
    fn a_message_for_one_session_is_written_as_a_kept_header_would_be() {
        let message = publish("a/1");
        let shapes = [
            (QoS::AtMostOnce, false, 0),
            (QoS::AtLeastOnce, true, 7),
            (QoS::ExactlyOnce, false, 65_535),
        ];
        for version in [Version::V311, Version::V5] {
            let (kept, sole, unplaced) = (Outbox::default(), Outbox::default(), Outbox::default());
            let mut enc = Encoder::default();
            let slot = enc.place(&message);
            for shape in shapes {
                enc.push_shared(&kept, &message, version, shape, slot);
                enc.push_shared(&unplaced, &message, version, shape, HeaderSlot::default());
                enc.set_sole(true);
                enc.push_shared(&sole, &message, version, shape, HeaderSlot::default());
                enc.set_sole(false);
            }
            assert_eq!(sole.pending_wire(), kept.pending_wire(), "{version:?}");
            assert_eq!(unplaced.pending_wire(), kept.pending_wire(), "{version:?}");
        }
    }

    #[test]
    fn a_queued_message_that_was_not_placed_gets_the_header_a_placed_one_keeps() {
        let message = publish("a/1");
        for version in [Version::V311, Version::V5] {
            for shape in [(QoS::AtLeastOnce, false), (QoS::ExactlyOnce, true)] {
                let mut enc = Encoder::default();
                let slot = enc.place(&message);
                let kept = enc.shared_header(&message, version, shape, slot);
                let kept = kept.map(|(header, at)| (header.to_vec(), at));
                let unplaced = enc.shared_header(&message, version, shape, HeaderSlot::default());
                let unplaced = unplaced.map(|(header, at)| (header.to_vec(), at));
                assert!(kept.is_some());
                assert_eq!(unplaced, kept, "{version:?} {shape:?}");
            }
        }
    }

    #[test]
    fn a_placed_message_keeps_its_header_while_later_messages_take_the_other_slots() {
        let mut enc = Encoder::default();
        let first = publish("first");
        let slot = enc.place(&first);
        let later: Vec<_> = (1..CACHED_MESSAGES).map(|_| publish("later")).collect();
        for message in &later {
            assert_ne!(enc.place(message), slot);
        }
        let placed = &table(&mut enc.headers)[usize::from(slot.0) - 1];
        assert_eq!(placed.address, Arc::as_ptr(&first) as usize);
        let outbox = Outbox::default();
        enc.push_shared(
            &outbox,
            &first,
            Version::V5,
            (QoS::AtLeastOnce, false, 7),
            slot,
        );
        assert_eq!(sent(&outbox), vec![("first".to_string(), 7)]);
        // One more message takes the slot; the first is still found by its address.
        enc.place(&publish("next"));
        let outbox = Outbox::default();
        enc.push_shared(
            &outbox,
            &first,
            Version::V5,
            (QoS::AtLeastOnce, false, 8),
            slot,
        );
        assert_eq!(sent(&outbox), vec![("first".to_string(), 8)]);
    }

    #[test]
    fn the_cache_keeps_no_message_alive() {
        let message = publish("t");
        let mut enc = Encoder::default();
        enc.push_shared(
            &Outbox::default(),
            &message,
            Version::V311,
            (QoS::AtLeastOnce, false, 1),
            HeaderSlot::default(),
        );
        assert_eq!(Arc::strong_count(&message), 1);
        // A message freed and another at the same address get their own header.
        drop(message);
        let other = publish("another/topic");
        let outbox = Outbox::default();
        let shape = (QoS::AtLeastOnce, false, 9);
        enc.push_shared(&outbox, &other, Version::V5, shape, HeaderSlot::default());
        assert_eq!(sent(&outbox), vec![("another/topic".to_string(), 9)]);
    }
}
