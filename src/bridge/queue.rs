//! What a bridge holds for its remote: messages not yet sent and QoS 1 messages sent but not
//! yet acknowledged, in order, within a bound of messages and payload bytes.
//!
//! A QoS 1 message leaves the queue only when the remote's PUBACK names it; a reconnect makes
//! every unacknowledged one due again (sent with DUP), so what the local broker acknowledged
//! reaches the remote at least once.
//!
//! The queue lives in memory. With persistence on, each entry also names the packet id the
//! bridge's local session gave it (`local`): that session is persistent then, so the message
//! stays in the store until the entry is settled (the remote acknowledged it, it left at QoS
//! 0, or the bound refused it) and the bridge acknowledges it to the session (`take_settled`).
//! After a restart the session sends its unacknowledged messages again and they queue anew.

use crate::protocol::{Publish, QoS};
use std::collections::VecDeque;

/// Highest packet id the queue gives a PUBLISH; the ids above are left for SUBSCRIBE and
/// UNSUBSCRIBE, which share the client's id space.
pub const PKID_MAX: u16 = 0xEFFF;

/// One message for the remote.
#[derive(Debug)]
struct Entry {
    publish: Publish,
    /// The packet id it was last sent with, while the remote has not acknowledged it.
    sent_as: Option<u16>,
    /// The local session's packet id, to acknowledge once the entry is settled.
    local: Option<u16>,
}

/// The bounded queue toward one remote.
#[derive(Debug)]
pub struct OutQueue {
    entries: VecDeque<Entry>,
    bytes: usize,
    messages_max: usize,
    bytes_max: usize,
    in_flight: usize,
    dropped: u64,
    next_pkid: u16,
    /// Local packet ids of entries settled since `take_settled`.
    settled: Vec<u16>,
}

impl OutQueue {
    /// An empty queue holding at most `messages_max` messages and `bytes_max` payload bytes.
    pub fn new(messages_max: usize, bytes_max: usize) -> OutQueue {
        OutQueue {
            entries: VecDeque::new(),
            bytes: 0,
            messages_max,
            bytes_max,
            in_flight: 0,
            dropped: 0,
            next_pkid: 1,
            settled: Vec::new(),
        }
    }

    /// Queues a message (its topic already the remote's), held by the local session as
    /// `local` if any; false when the bound refused it, which is counted (and settles it).
    pub fn push(&mut self, publish: Publish, local: Option<u16>) -> bool {
        let len = publish.payload.len();
        if self.entries.len() >= self.messages_max || self.bytes + len > self.bytes_max {
            self.dropped += 1;
            self.settled.extend(local);
            return false;
        }
        self.bytes += len;
        self.entries.push_back(Entry {
            publish,
            sent_as: None,
            local,
        });
        true
    }

    /// The local packet ids of the entries settled since the last call.
    pub fn take_settled(&mut self) -> Vec<u16> {
        std::mem::take(&mut self.settled)
    }

    /// The next message to send while fewer than `window` QoS 1 messages await their PUBACK:
    /// a QoS 0 one leaves the queue, a QoS 1 one stays, numbered, until `acknowledged`.
    pub fn next_to_send(&mut self, window: usize) -> Option<Publish> {
        let index = self.entries.iter().position(|e| e.sent_as.is_none())?;
        if self.entries[index].publish.qos == QoS::AtMostOnce {
            let entry = self.entries.remove(index)?;
            self.bytes -= entry.publish.payload.len();
            self.settled.extend(entry.local);
            return Some(entry.publish);
        }
        if self.in_flight >= window {
            return None;
        }
        let pkid = self.free_pkid();
        let entry = &mut self.entries[index];
        entry.sent_as = Some(pkid);
        self.in_flight += 1;
        let mut publish = entry.publish.clone();
        publish.pkid = pkid;
        Some(publish)
    }

    /// The remote acknowledged packet id `pkid`; false when no message was sent with it.
    pub fn acknowledged(&mut self, pkid: u16) -> bool {
        let Some(index) = self.entries.iter().position(|e| e.sent_as == Some(pkid)) else {
            return false;
        };
        if let Some(entry) = self.entries.remove(index) {
            self.bytes -= entry.publish.payload.len();
            self.in_flight -= 1;
            self.settled.extend(entry.local);
        }
        true
    }

    /// The connection to the remote ended: every unacknowledged message is due again, marked
    /// as a re-delivery.
    pub fn connection_lost(&mut self) {
        for entry in self.entries.iter_mut().filter(|e| e.sent_as.is_some()) {
            entry.sent_as = None;
            entry.publish.dup = true;
        }
        self.in_flight = 0;
    }

    /// Messages held (unsent and unacknowledged).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Payload bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Messages refused at the bound since the start.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// A packet id no message in flight uses (ids wrap around at `PKID_MAX` and skip 0).
    fn free_pkid(&mut self) -> u16 {
        loop {
            let pkid = self.next_pkid;
            self.next_pkid = if pkid >= PKID_MAX { 1 } else { pkid + 1 };
            if !self.entries.iter().any(|e| e.sent_as == Some(pkid)) {
                return pkid;
            }
        }
    }

    /// Checks the counters against the entries (tests).
    #[cfg(test)]
    fn invariants(&self) {
        let bytes: usize = self.entries.iter().map(|e| e.publish.payload.len()).sum();
        assert_eq!(bytes, self.bytes);
        let sent = self.entries.iter().filter(|e| e.sent_as.is_some()).count();
        assert_eq!(sent, self.in_flight);
        assert!(self.entries.len() <= self.messages_max && self.bytes <= self.bytes_max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::codec::samples::publish;

    #[test]
    fn qos1_stays_until_acknowledged_and_is_resent_after_a_reconnect() {
        let mut q = OutQueue::new(10, 1000);
        assert!(q.push(publish("a", QoS::AtLeastOnce, b"1"), None));
        assert!(q.push(publish("b", QoS::AtMostOnce, b"2"), None));
        let first = q.next_to_send(5).unwrap();
        assert_eq!((first.topic.as_str(), first.dup), ("a", false));
        assert_eq!(q.next_to_send(5).unwrap().topic.as_str(), "b");
        assert!(q.next_to_send(5).is_none());
        assert_eq!(q.len(), 1, "the QoS 1 message waits for its PUBACK");
        q.invariants();
        q.connection_lost();
        let again = q.next_to_send(5).unwrap();
        assert!(again.dup && again.topic.as_str() == "a");
        assert!(!q.acknowledged(first.pkid) || first.pkid == again.pkid);
        assert!(q.acknowledged(again.pkid) || q.is_empty());
        assert!(q.is_empty());
        q.invariants();
    }

    #[test]
    fn window_bounds_messages_in_flight() {
        let mut q = OutQueue::new(10, 1000);
        for _ in 0..3 {
            q.push(publish("a", QoS::AtLeastOnce, b"x"), None);
        }
        let one = q.next_to_send(2).unwrap();
        let two = q.next_to_send(2).unwrap();
        assert_ne!(one.pkid, two.pkid);
        assert!(q.next_to_send(2).is_none());
        assert!(q.acknowledged(one.pkid));
        assert!(!q.acknowledged(one.pkid), "an id is acknowledged once");
        assert!(q.next_to_send(2).is_some());
        q.invariants();
    }

    #[test]
    fn bound_in_messages_and_bytes_drops_and_counts() {
        let mut q = OutQueue::new(2, 5);
        assert!(q.push(publish("a", QoS::AtLeastOnce, b"abc"), None));
        assert!(
            !q.push(publish("a", QoS::AtLeastOnce, b"abc"), None),
            "bytes bound"
        );
        assert!(q.push(publish("a", QoS::AtLeastOnce, b"ab"), None));
        assert!(
            !q.push(publish("a", QoS::AtMostOnce, b""), None),
            "messages bound"
        );
        assert_eq!((q.len(), q.bytes(), q.dropped()), (2, 5, 2));
        q.invariants();
    }

    #[test]
    fn local_ids_are_settled_when_acknowledged_sent_at_qos0_or_refused() {
        let mut q = OutQueue::new(2, 1000);
        assert!(q.push(publish("a", QoS::AtLeastOnce, b"1"), Some(7)));
        assert!(q.push(publish("b", QoS::AtMostOnce, b"2"), Some(8)));
        assert!(!q.push(publish("c", QoS::AtLeastOnce, b"3"), Some(9)));
        assert_eq!(q.take_settled(), [9], "refused at the bound");
        q.next_to_send(5).unwrap();
        q.next_to_send(5).unwrap();
        assert_eq!(q.take_settled(), [8], "left at QoS 0");
        q.connection_lost();
        let again = q.next_to_send(5).unwrap();
        assert!(q.take_settled().is_empty(), "unacknowledged: still held");
        assert!(q.acknowledged(again.pkid));
        assert_eq!(q.take_settled(), [7]);
        assert!(q.take_settled().is_empty());
        q.invariants();
    }
}
