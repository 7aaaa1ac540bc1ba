//! A session written for another node: the records of `persist`'s schema that a journal would
//! hold for it (each message body once, then its `Open`), each prefixed by its length. The
//! receiving node reads them back with `replay`, the code that reads the store at start-up,
//! so there is one place that says how a session is written.
//!
//! Retained messages still owed to new subscriptions (cursors) are not carried, and neither
//! are QoS 0 messages queued for an offline client (they are not stored either).

use super::persist::{decode, encode_record, Record};
use super::replay::{replay, Image};
use super::session::{Session, SessionState};
use crate::protocol::Publish;
use bytes::{BufMut, Bytes, BytesMut};
use std::collections::HashMap;
use std::sync::Arc;

/// The session as bytes for another node.
pub fn carry(session: &Session) -> Bytes {
    let mut out = BytesMut::new();
    let mut mids: HashMap<*const Publish, u64> = HashMap::new();
    let put = |out: &mut BytesMut, record: &Record| {
        let bytes = encode_record(record);
        out.put_u32(bytes.len() as u32);
        out.put_slice(&bytes);
    };
    let opened = session.opened(1, 0, |publish| {
        let next = mids.len() as u64 + 1;
        *mids.entry(Arc::as_ptr(publish)).or_insert_with(|| {
            let publish = Publish::clone(publish);
            put(&mut out, &Record::Message { mid: next, publish });
            next
        })
    });
    put(&mut out, &Record::Open(Box::new(opened)));
    out.freeze()
}

/// The session `carry` wrote; None when the bytes are not one whole session.
pub fn uncarry(bytes: &Bytes) -> Option<Image> {
    let mut records = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let len = u32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?) as usize;
        records.push(bytes.slice(at + 4..(at + 4).checked_add(len).filter(|&e| e <= bytes.len())?));
        at += 4 + len;
    }
    // One `Open`, last: the bodies it names come before it.
    let is_open = |record: &Bytes| matches!(decode(record), Some(Record::Open(_)));
    if records.iter().filter(|r| is_open(r)).count() != 1 || !records.last().is_some_and(is_open) {
        return None;
    }
    let (mut replayed, skipped) = replay(&records, 0);
    if skipped > 0 || replayed.sessions.len() != 1 {
        return None;
    }
    replayed.sessions.pop()
}

/// The state of a session another node handed over; None (and a log line) when its bytes are
/// not a session.
pub fn arrived(bytes: &Bytes, client_id: &str) -> Option<Box<SessionState>> {
    match uncarry(bytes) {
        Some(image) => Some(Box::new(image.state)),
        None => {
            tracing::warn!(
                "cluster: the session of client {client_id:?} arrived damaged: it starts afresh"
            );
            None
        }
    }
}

#[cfg(test)]
mod tests;
