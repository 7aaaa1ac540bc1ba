//! The byte layout of records: a tag byte, then fields in order; integers little-endian,
//! strings and byte strings with a u32 length; PUBLISH bodies as 5.0 PUBLISH packets (the
//! broker's own codec, so every property survives).

use super::{Opened, Record, StoredGrant};
use crate::protocol::codec::{write_shaped_header, Codec, Decoded, Shape};
use crate::protocol::{Packet, Publish, QoS, SubscriptionOptions, Version};
use crate::shard::subscription::Subscription;
use bytes::BytesMut;

const RETAIN: u8 = 1;
const MESSAGE: u8 = 2;
const OPEN: u8 = 3;
const END: u8 = 4;
const SUBSCRIBE: u8 = 5;
const UNSUBSCRIBE: u8 = 6;
const EXPIRY: u8 = 7;
const ENQUEUE: u8 = 8;
const ASSIGN: u8 = 9;
const PUBREC: u8 = 10;
const DONE: u8 = 11;
const INCOMING: u8 = 12;
const RELEASED: u8 = 13;
const WILL_GONE: u8 = 14;
const WILL_DUE: u8 = 15;
/// Records that stand for several: a message and the sessions it entered (`Message`, then an
/// `Enqueue` per session); a session's packet ids given (`Assign` each) or finished (`Done`
/// each), in order. Written by `Persist` while the store leaves its last record open.
const MESSAGE_TO: u8 = 16;
const ASSIGNS: u8 = 17;
const DONES: u8 = 18;

/// The bytes of a record.
pub fn encode_record(record: &Record) -> Vec<u8> {
    let mut w = Vec::with_capacity(32);
    encode_record_into(record, &mut w);
    w
}

/// Appends the bytes of a record to `w` (the store's queue: `Store::append_with`).
pub fn encode_record_into(record: &Record, w: &mut Vec<u8>) {
    match record {
        Record::Retain { topic, message } => {
            w.push(RETAIN);
            put_str(w, topic);
            match message {
                Some((publish, expires)) => {
                    w.push(1);
                    put_opt_u64(w, *expires);
                    put_publish(w, publish);
                }
                None => w.push(0),
            }
        }
        Record::Message { mid, publish } => encode_message(*mid, publish, w),
        Record::Open(opened) => put_opened(w, opened),
        Record::End { sid } => {
            w.push(END);
            put_u64(w, *sid);
        }
        Record::WillGone { sid } => {
            w.push(WILL_GONE);
            put_u64(w, *sid);
        }
        Record::WillDue { sid, at_ms } => {
            w.push(WILL_DUE);
            put_u64(w, *sid);
            put_u64(w, *at_ms);
        }
        Record::Subscribe { sid, filter, sub } => {
            w.push(SUBSCRIBE);
            put_u64(w, *sid);
            put_str(w, filter);
            put_sub(w, sub);
        }
        Record::Unsubscribe { sid, filter } => {
            w.push(UNSUBSCRIBE);
            put_u64(w, *sid);
            put_str(w, filter);
        }
        Record::Expiry { sid, secs } => {
            w.push(EXPIRY);
            put_u64(w, *sid);
            w.extend_from_slice(&secs.to_le_bytes());
        }
        Record::Enqueue { sid, mid, grant } => {
            w.push(ENQUEUE);
            put_u64(w, *sid);
            put_u64(w, *mid);
            put_grant(w, grant);
        }
        Record::Assign { sid, pkid } => put_pkid(w, ASSIGN, *sid, *pkid),
        Record::PubRec { sid, pkid } => put_pkid(w, PUBREC, *sid, *pkid),
        Record::Done { sid, pkid } => put_pkid(w, DONE, *sid, *pkid),
        Record::Incoming { sid, pkid } => put_pkid(w, INCOMING, *sid, *pkid),
        Record::Released { sid, pkid } => put_pkid(w, RELEASED, *sid, *pkid),
    }
}

/// Appends the bytes of `Record::Message` for `mid` and `publish`, without building the record.
fn encode_message(mid: u64, publish: &Publish, w: &mut Vec<u8>) {
    w.push(MESSAGE);
    put_u64(w, mid);
    put_publish(w, publish);
}

/// Starts a `MESSAGE_TO` record: `Record::Message`, to which `encode_enqueue_entry` adds
/// the sessions it enters.
pub fn encode_message_to(mid: u64, publish: &Publish, w: &mut Vec<u8>) {
    w.push(MESSAGE_TO);
    put_u64(w, mid);
    put_publish(w, publish);
}

/// One session of a `MESSAGE_TO` record: `Record::Enqueue` of its message.
pub fn encode_enqueue_entry(sid: u64, grant: &StoredGrant, w: &mut Vec<u8>) {
    put_u64(w, sid);
    put_grant(w, grant);
}

/// Starts an `ASSIGNS` (`assign`) or `DONES` record of session `sid` with its first
/// packet id; more follow as two bytes each.
pub fn encode_pkid_run(assign: bool, sid: u64, pkid: u16, w: &mut Vec<u8>) {
    w.push(if assign { ASSIGNS } else { DONES });
    put_u64(w, sid);
    w.extend_from_slice(&pkid.to_le_bytes());
}

fn put_opened(w: &mut Vec<u8>, o: &Opened) {
    w.push(OPEN);
    put_u64(w, o.sid);
    put_u64(w, o.stamp);
    put_str(w, &o.client_id);
    w.push(u8::from(o.version == Version::V5));
    w.extend_from_slice(&o.expiry_secs.to_le_bytes());
    match &o.will {
        Some((will, delay)) => {
            w.push(1);
            put_publish(w, will);
            put_u32(w, *delay);
        }
        None => w.push(0),
    }
    put_u32(w, o.subscriptions.len() as u32);
    for (filter, sub) in &o.subscriptions {
        put_str(w, filter);
        put_sub(w, sub);
    }
    put_u32(w, o.incoming_qos2.len() as u32);
    for pkid in &o.incoming_qos2 {
        w.extend_from_slice(&pkid.to_le_bytes());
    }
    w.extend_from_slice(&o.next_pkid.to_le_bytes());
    put_u32(w, o.inflight.len() as u32);
    for (mid, grant, pkid, released) in &o.inflight {
        put_u64(w, *mid);
        put_grant(w, grant);
        w.extend_from_slice(&pkid.to_le_bytes());
        w.push(u8::from(*released));
    }
    put_u32(w, o.queue.len() as u32);
    for (mid, grant) in &o.queue {
        put_u64(w, *mid);
        put_grant(w, grant);
    }
}

fn put_pkid(w: &mut Vec<u8>, tag: u8, sid: u64, pkid: u16) {
    w.push(tag);
    put_u64(w, sid);
    w.extend_from_slice(&pkid.to_le_bytes());
}

fn put_u32(w: &mut Vec<u8>, n: u32) {
    w.extend_from_slice(&n.to_le_bytes());
}

fn put_u64(w: &mut Vec<u8>, n: u64) {
    w.extend_from_slice(&n.to_le_bytes());
}

fn put_opt_u64(w: &mut Vec<u8>, n: Option<u64>) {
    match n {
        Some(n) => {
            w.push(1);
            put_u64(w, n);
        }
        None => w.push(0),
    }
}

fn put_str(w: &mut Vec<u8>, s: &str) {
    put_u32(w, s.len() as u32);
    w.extend_from_slice(s.as_bytes());
}

fn put_sub(w: &mut Vec<u8>, sub: &Subscription) {
    let o = &sub.options;
    w.push(o.qos as u8);
    w.push(
        u8::from(o.no_local)
            | u8::from(o.retain_as_published) << 1
            | u8::from(sub.is_filtered) << 2,
    );
    w.push(o.retain_handling);
    match sub.id {
        Some(id) => {
            w.push(1);
            put_u32(w, id);
        }
        None => w.push(0),
    }
}

fn put_grant(w: &mut Vec<u8>, g: &StoredGrant) {
    w.push(g.qos as u8);
    w.push(u8::from(g.retain));
    put_u32(w, g.ids.len() as u32);
    for id in &g.ids {
        put_u32(w, *id);
    }
    put_opt_u64(w, g.expires_ms);
    match &g.share {
        Some(share) => {
            w.push(1);
            put_str(w, share);
        }
        None => w.push(0),
    }
}

/// A PUBLISH as a 5.0 packet (packet id 1 for QoS 1/2: the id is not part of the message).
fn put_publish(w: &mut Vec<u8>, publish: &Publish) {
    let shape = Shape {
        qos: publish.qos,
        retain: publish.retain,
        dup: false,
        pkid: u16::from(publish.qos != QoS::AtMostOnce),
    };
    HEADER.with_borrow_mut(|header| {
        header.clear();
        // A PUBLISH the broker decoded encodes again; should it not, an empty body is stored
        // and replay drops the message rather than the broker failing.
        if write_shaped_header(publish, shape, Version::V5, header).is_err() {
            put_u32(w, 0);
            return;
        }
        put_u32(w, (header.len() + publish.payload.len()) as u32);
        w.extend_from_slice(header);
        w.extend_from_slice(&publish.payload);
    });
}

thread_local! {
    /// The header `put_publish` encodes, kept between records so that writing a message
    /// allocates nothing.
    static HEADER: std::cell::RefCell<BytesMut> = std::cell::RefCell::new(BytesMut::new());
}

/// Reads fields off a record; None once anything is missing or malformed.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.bytes.len() < n {
            return None;
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn opt_u64(&mut self) -> Option<Option<u64>> {
        match self.u8()? {
            0 => Some(None),
            _ => Some(Some(self.u64()?)),
        }
    }

    fn str(&mut self) -> Option<String> {
        let len = self.u32()? as usize;
        String::from_utf8(self.take(len)?.to_vec()).ok()
    }

    fn count(&mut self) -> Option<usize> {
        let n = self.u32()? as usize;
        // Each entry takes at least one byte: a corrupt count cannot allocate much.
        (n <= self.bytes.len()).then_some(n)
    }

    fn qos(&mut self) -> Option<QoS> {
        QoS::from_bits(self.u8()?)
    }

    fn sub(&mut self) -> Option<Subscription> {
        let qos = self.qos()?;
        let flags = self.u8()?;
        let retain_handling = self.u8()?;
        let id = match self.u8()? {
            0 => None,
            _ => Some(self.u32()?),
        };
        Some(Subscription {
            options: SubscriptionOptions {
                qos,
                no_local: flags & 1 != 0,
                retain_as_published: flags & 2 != 0,
                retain_handling,
            },
            id,
            is_filtered: flags & 4 != 0,
        })
    }

    fn grant(&mut self) -> Option<StoredGrant> {
        let qos = self.qos()?;
        let retain = self.u8()? != 0;
        let n = self.count()?;
        let ids = (0..n).map(|_| self.u32()).collect::<Option<Vec<_>>>()?;
        let expires_ms = self.opt_u64()?;
        let share = match self.u8()? {
            0 => None,
            _ => Some(self.str()?),
        };
        Some(StoredGrant {
            qos,
            retain,
            ids,
            expires_ms,
            share,
        })
    }

    /// A `MESSAGE_TO` record after its tag.
    fn message_to(&mut self) -> Option<Vec<Record>> {
        let mid = self.u64()?;
        let publish = self.publish()?;
        let mut records = vec![Record::Message { mid, publish }];
        while !self.bytes.is_empty() {
            let sid = self.u64()?;
            let grant = self.grant()?;
            records.push(Record::Enqueue { sid, mid, grant });
        }
        Some(records)
    }

    /// An `ASSIGNS` or `DONES` record after its tag: a session id, then packet ids.
    fn pkid_run(&mut self, assign: bool) -> Option<Vec<Record>> {
        let sid = self.u64()?;
        let mut records = Vec::new();
        loop {
            let pkid = self.u16()?;
            records.push(match assign {
                true => Record::Assign { sid, pkid },
                false => Record::Done { sid, pkid },
            });
            if self.bytes.is_empty() {
                return Some(records);
            }
        }
    }

    fn publish(&mut self) -> Option<Publish> {
        let len = self.u32()? as usize;
        let mut buf = BytesMut::from(self.take(len)?);
        let mut codec = Codec::with_version(Version::V5, u32::MAX);
        match codec.decode(&mut buf) {
            Ok(Decoded::Packet(Packet::Publish(publish))) => Some(publish),
            _ => None,
        }
    }

    fn pkid_record(&mut self) -> Option<(u64, u16)> {
        Some((self.u64()?, self.u16()?))
    }

    fn opened(&mut self) -> Option<Opened> {
        let sid = self.u64()?;
        let stamp = self.u64()?;
        let client_id = self.str()?;
        let version = if self.u8()? != 0 {
            Version::V5
        } else {
            Version::V311
        };
        let expiry_secs = self.u32()?;
        let will = match self.u8()? {
            0 => None,
            _ => Some((self.publish()?, self.u32()?)),
        };
        let n = self.count()?;
        let subscriptions = (0..n)
            .map(|_| Some((self.str()?, self.sub()?)))
            .collect::<Option<Vec<_>>>()?;
        let n = self.count()?;
        let incoming_qos2 = (0..n).map(|_| self.u16()).collect::<Option<Vec<_>>>()?;
        let next_pkid = self.u16()?;
        let n = self.count()?;
        let inflight = (0..n)
            .map(|_| Some((self.u64()?, self.grant()?, self.u16()?, self.u8()? != 0)))
            .collect::<Option<Vec<_>>>()?;
        let n = self.count()?;
        let queue = (0..n)
            .map(|_| Some((self.u64()?, self.grant()?)))
            .collect::<Option<Vec<_>>>()?;
        Some(Opened {
            sid,
            stamp,
            client_id,
            version,
            expiry_secs,
            will,
            subscriptions,
            incoming_qos2,
            next_pkid,
            inflight,
            queue,
        })
    }
}

/// The record in `bytes`; None when it is not one this version writes.
/// The records `bytes` stands for, in order, to `each`: one, or several for the records
/// written as one (`MESSAGE_TO`, `ASSIGNS`, `DONES`). False, with nothing given, when the
/// bytes are not a record.
pub fn decode_each(bytes: &[u8], each: impl FnMut(Record)) -> bool {
    let Some((&tag, rest)) = bytes.split_first() else {
        return false;
    };
    if !matches!(tag, MESSAGE_TO | ASSIGNS | DONES) {
        return decode(bytes).map(each).is_some();
    }
    let mut r = Reader { bytes: rest };
    let Some(records) = (match tag {
        MESSAGE_TO => r.message_to(),
        _ => r.pkid_run(tag == ASSIGNS),
    }) else {
        return false;
    };
    records.into_iter().for_each(each);
    true
}

/// The record `bytes` holds, when it holds exactly one.
pub fn decode(bytes: &[u8]) -> Option<Record> {
    let mut r = Reader { bytes };
    let record = match r.u8()? {
        RETAIN => {
            let topic = r.str()?;
            let message = match r.u8()? {
                0 => None,
                _ => {
                    let expires = r.opt_u64()?;
                    Some((r.publish()?, expires))
                }
            };
            Record::Retain { topic, message }
        }
        MESSAGE => Record::Message {
            mid: r.u64()?,
            publish: r.publish()?,
        },
        OPEN => Record::Open(Box::new(r.opened()?)),
        END => Record::End { sid: r.u64()? },
        WILL_GONE => Record::WillGone { sid: r.u64()? },
        WILL_DUE => Record::WillDue {
            sid: r.u64()?,
            at_ms: r.u64()?,
        },
        SUBSCRIBE => Record::Subscribe {
            sid: r.u64()?,
            filter: r.str()?,
            sub: r.sub()?,
        },
        UNSUBSCRIBE => Record::Unsubscribe {
            sid: r.u64()?,
            filter: r.str()?,
        },
        EXPIRY => Record::Expiry {
            sid: r.u64()?,
            secs: r.u32()?,
        },
        ENQUEUE => Record::Enqueue {
            sid: r.u64()?,
            mid: r.u64()?,
            grant: r.grant()?,
        },
        tag @ (ASSIGN | PUBREC | DONE | INCOMING | RELEASED) => {
            let (sid, pkid) = r.pkid_record()?;
            match tag {
                ASSIGN => Record::Assign { sid, pkid },
                PUBREC => Record::PubRec { sid, pkid },
                DONE => Record::Done { sid, pkid },
                INCOMING => Record::Incoming { sid, pkid },
                _ => Record::Released { sid, pkid },
            }
        }
        _ => return None,
    };
    r.bytes.is_empty().then_some(record)
}
