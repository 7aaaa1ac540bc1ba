//! A PUBLISH as the broker routes it: the packet, shared by every subscriber, plus what
//! routing needs beside it (the publisher, for No Local; the expiry deadline).

use crate::protocol::{MqttString, Props, Publish, QoS};
use bytes::Bytes;
use std::cell::RefCell;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Message allocations this thread keeps for its next messages, at most (~7 MiB).
/// A QoS 1 message's last holder is its subscriber's window, and a shard lets go of them in
/// waves: pairs-100 QoS 1 frees and then allocates thousands at a time (the generator keeps
/// up to 1,000 messages of each publisher in flight; a spare list of 512 caught 2% of the
/// allocations, 8,192 27%, 32,768 78%). Through glibc, whose per-thread cache holds 7 chunks
/// a size, each such message cost ~440 instructions allocated and freed (callgrind).
const SPARE_MAX: usize = 65_536;

/// Allocations of messages that no one holds any more, emptied (see `recycle`).
struct Spare {
    kept: Vec<Arc<Publish>>,
    /// Whether a message was made since the last `sweep_spares`.
    is_used: bool,
}

thread_local! {
    static SPARE: RefCell<Spare> = const {
        RefCell::new(Spare {
            kept: Vec::new(),
            is_used: false,
        })
    };
}

/// Frees the spare allocations of this thread's messages when no message was made since the
/// last call (once a second, from the shard's sweep): a burst's spares do not outlive it long.
pub fn sweep_spares() {
    SPARE.with(|spare| {
        let mut spare = spare.borrow_mut();
        if !std::mem::take(&mut spare.is_used) {
            spare.kept = Vec::new();
        }
    });
}

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
            publish: reuse(publish),
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

/// `publish` in an allocation another message left (`recycle`), or a new one.
fn reuse(publish: Publish) -> Arc<Publish> {
    let spare = SPARE.with(|spare| {
        let mut spare = spare.borrow_mut();
        spare.is_used = true;
        spare.kept.pop()
    });
    match spare {
        Some(mut spare) => match Arc::get_mut(&mut spare) {
            Some(slot) => {
                *slot = publish;
                spare
            }
            None => Arc::new(publish),
        },
        None => Arc::new(publish),
    }
}

/// Lets go of a message; when this was its last holder, keeps its allocation for the
/// thread's next message (`reuse`) instead of freeing it. What the message refers to (the
/// read buffer its topic and payload are slices of, its properties) is released now. A
/// message anything else still refers to, weakly too (the encoder's header cache keys
/// headers by address and holds a `Weak` so that no other message can take it meanwhile),
/// is only let go of.
pub fn recycle(mut publish: Arc<Publish>) {
    // A plain load first: a message fanned out is let go of by all but its last subscriber,
    // and `get_mut` costs an atomic exchange.
    if Arc::strong_count(&publish) != 1 {
        return;
    }
    let Some(slot) = Arc::get_mut(&mut publish) else {
        return;
    };
    *slot = Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: MqttString::default(),
        pkid: 0,
        properties: Props::default(),
        payload: Bytes::new(),
    };
    SPARE.with(|spare| {
        let mut spare = spare.borrow_mut();
        if spare.kept.len() < SPARE_MAX {
            spare.kept.push(publish);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Weak;

    fn publish(topic: &'static str) -> Publish {
        Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: MqttString::from(topic),
            pkid: 7,
            properties: Props::default(),
            payload: Bytes::from_static(b"payload"),
        }
    }

    #[test]
    fn a_message_let_go_by_its_last_holder_lends_its_allocation_to_the_next_one() {
        let first = Message::received(publish("a"), 1);
        let address = Arc::as_ptr(&first.publish);
        recycle(first.publish);
        let next = Message::received(publish("b"), 2);
        assert_eq!(Arc::as_ptr(&next.publish), address);
        assert_eq!(next.publish.topic.as_str(), "b");
        assert_eq!(next.publish.pkid, 7);
        assert_eq!(&next.publish.payload[..], b"payload");
        recycle(next.publish);
    }

    #[test]
    fn spares_not_taken_for_a_sweep_are_freed() {
        recycle(Message::received(publish("a"), 1).publish);
        sweep_spares();
        let taken = Message::received(publish("b"), 1);
        recycle(Message::received(publish("c"), 1).publish);
        sweep_spares(); // one was taken since the last sweep: kept
        assert_eq!(SPARE.with(|s| s.borrow().kept.len()), 1);
        sweep_spares();
        assert_eq!(SPARE.with(|s| s.borrow().kept.len()), 0);
        drop(taken);
    }

    #[test]
    fn a_message_still_held_or_weakly_referred_to_is_not_reused() {
        let held = Message::received(publish("held"), 1);
        let other = held.publish.clone();
        recycle(held.publish);
        let cached = Message::received(publish("cached"), 1);
        let weak: Weak<Publish> = Arc::downgrade(&cached.publish);
        recycle(cached.publish);
        let next = Message::received(publish("next"), 1);
        assert_ne!(Arc::as_ptr(&next.publish), Arc::as_ptr(&other));
        assert_ne!(Arc::as_ptr(&next.publish), weak.as_ptr());
        assert_eq!(other.topic.as_str(), "held");
        assert!(weak.upgrade().is_none());
    }
}
