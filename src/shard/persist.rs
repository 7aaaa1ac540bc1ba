//! What the shard's store records mean: the schema of retained messages, persistent
//! sessions and the QoS 1/2 messages they hold, and the per-shard journal that writes them.
//!
//! The store (`crate::store`) knows bytes; this module knows MQTT. A message fanned out to
//! many persistent sessions of a shard is written once (`Record::Message`, with an id) and
//! each session gets a small `Record::Enqueue` naming it. A session's record stream mirrors
//! what its `Session` does: `Open` (its whole state, stamped), then subscriptions, messages
//! entering its queue, packet ids given (`Assign`), acknowledgements, inbound QoS 2 ids, and
//! `End`. Replay (`replay`) applies the records in order; of two `Open`s of one client id in
//! different shards' files, the later stamp wins (the session moved between shards).
//!
//! Clean sessions and QoS 0 messages write nothing.

use super::subscription::Subscription;
use crate::protocol::{Publish, QoS, Version, Will};
use crate::store::{Position, Store};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A record as written to, and read back from, the store.
#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    /// The retained message of a topic (None: cleared). Written by the topic's owner shard
    /// (`retain_owner`), so one file holds every record of a topic, in order.
    Retain {
        /// Topic name.
        topic: String,
        /// The message and its expiry (Unix ms), or None.
        message: Option<(Publish, Option<u64>)>,
    },
    /// A message body, named by `mid` in later records of the same file.
    Message {
        /// Id, unique within the file.
        mid: u64,
        /// The PUBLISH as received.
        publish: Publish,
    },
    /// A persistent session's whole state when it was installed on this shard.
    Open(Box<Opened>),
    /// The session ended (expired, replaced by a clean one).
    End {
        /// Session id within the file.
        sid: u64,
    },
    /// A subscription added or changed.
    Subscribe {
        /// Session id.
        sid: u64,
        /// Filter as the client wrote it.
        filter: String,
        /// Its options.
        sub: Subscription,
    },
    /// A subscription removed.
    Unsubscribe {
        /// Session id.
        sid: u64,
        /// Filter.
        filter: String,
    },
    /// The connection's will is gone (the client disconnected; or it was published).
    WillGone {
        /// Session id.
        sid: u64,
    },
    /// The will's connection ended; the will waits for its delay, due at `at_ms` (Unix ms),
    /// so a restart during the delay publishes it when it was due, not a whole delay later.
    WillDue {
        /// Session id.
        sid: u64,
        /// When it is due, Unix ms.
        at_ms: u64,
    },
    /// A new Session Expiry Interval (5.0 DISCONNECT).
    Expiry {
        /// Session id.
        sid: u64,
        /// Seconds.
        secs: u32,
    },
    /// A QoS 1/2 message entered the session's queue (or went straight into its window).
    Enqueue {
        /// Session id.
        sid: u64,
        /// Message id.
        mid: u64,
        /// What this client gets of it.
        grant: StoredGrant,
    },
    /// The oldest queued message was sent with packet id `pkid`.
    Assign {
        /// Session id.
        sid: u64,
        /// Packet id.
        pkid: u16,
    },
    /// PUBREC received for `pkid`: PUBREL is next.
    PubRec {
        /// Session id.
        sid: u64,
        /// Packet id.
        pkid: u16,
    },
    /// `pkid`'s flow is finished (PUBACK or PUBCOMP).
    Done {
        /// Session id.
        sid: u64,
        /// Packet id.
        pkid: u16,
    },
    /// An inbound QoS 2 packet id now waits for PUBREL.
    Incoming {
        /// Session id.
        sid: u64,
        /// Packet id.
        pkid: u16,
    },
    /// An inbound QoS 2 packet id was released.
    Released {
        /// Session id.
        sid: u64,
        /// Packet id.
        pkid: u16,
    },
}

/// The state `Record::Open` carries.
#[derive(Clone, Debug, PartialEq)]
pub struct Opened {
    /// Session id within the file.
    pub sid: u64,
    /// Orders opens of one client id across files: later wins.
    pub stamp: u64,
    /// Client identifier.
    pub client_id: String,
    /// Protocol version of its last connection.
    pub version: Version,
    /// Session Expiry Interval (seconds).
    pub expiry_secs: u32,
    /// The will of the session's last connection, as a PUBLISH, with its Will Delay
    /// Interval (seconds).
    pub will: Option<(Publish, u32)>,
    /// Subscriptions by filter.
    pub subscriptions: Vec<(String, Subscription)>,
    /// Inbound QoS 2 ids awaiting PUBREL.
    pub incoming_qos2: Vec<u16>,
    /// Next packet id to try.
    pub next_pkid: u16,
    /// Messages in flight: message id, grant, packet id, whether PUBREC came.
    pub inflight: Vec<(u64, StoredGrant, u16, bool)>,
    /// Messages queued: message id, grant.
    pub queue: Vec<(u64, StoredGrant)>,
}

/// A `Grant` with its expiry as Unix milliseconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredGrant {
    /// QoS this client gets.
    pub qos: QoS,
    /// RETAIN as this client gets it.
    pub retain: bool,
    /// Subscription identifiers.
    pub ids: Vec<u32>,
    /// Expiry, Unix ms.
    pub expires_ms: Option<u64>,
    /// Shared subscription it came through.
    pub share: Option<String>,
}

/// A will as the store keeps it: a PUBLISH and the Will Delay Interval.
pub fn will_to_stored(will: &Will) -> (Publish, u32) {
    let mut properties = will.properties.clone();
    let delay = properties.will_delay_interval.take().unwrap_or(0);
    let publish = Publish {
        dup: false,
        qos: will.qos,
        retain: will.retain,
        topic: will.topic.clone(),
        pkid: 0,
        properties,
        payload: will.payload.clone(),
    };
    (publish, delay)
}

/// The will a stored one stands for.
pub fn will_from_stored((publish, delay): &(Publish, u32)) -> Will {
    let mut properties = publish.properties.clone();
    if *delay > 0 {
        properties.will_delay_interval = Some(*delay);
    }
    Will {
        topic: publish.topic.clone(),
        payload: publish.payload.clone(),
        qos: publish.qos,
        retain: publish.retain,
        properties,
    }
}

/// Unix milliseconds of a deadline.
pub fn wall_ms(at: Instant) -> u64 {
    let now = Instant::now();
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let left = at.saturating_duration_since(now);
    (unix + left).as_millis() as u64
}

/// The deadline of a Unix-milliseconds time (in the past when it has passed).
pub fn instant_of(ms: u64) -> Instant {
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let at = Duration::from_millis(ms);
    let now = Instant::now();
    match at.checked_sub(unix) {
        Some(left) => now + left,
        None => now.checked_sub(unix - at).unwrap_or(now),
    }
}

mod codec;
pub use codec::{decode, decode_each, encode_record};
use codec::{encode_enqueue_entry, encode_message_to, encode_pkid_run, encode_record_into};

/// A persistent session's handle on its shard's journal.
#[derive(Clone)]
pub struct Journal {
    /// The shard's journal.
    pub persist: Rc<Persist>,
    /// The session's id in this shard's file.
    pub sid: u64,
}

/// One shard's writer of records, over its store.
pub struct Persist {
    store: Store,
    /// Highest position known durable.
    durable: Cell<u64>,
    /// Position of the last record appended.
    last: Cell<u64>,
    /// Whether the current spell of failing writes was logged.
    is_warned: Cell<bool>,
    next_mid: Cell<u64>,
    next_sid: Cell<u64>,
    last_stamp: Cell<u64>,
    /// The message last written, so a fan-out writes it once.
    current: RefCell<Option<(Arc<Publish>, u64)>>,
    /// The store's open record (`Store::append_open`) as this journal wrote it, its position
    /// and how many records joined it: the next record of the same kind joins it.
    open: Cell<Option<(Joinable, u64, u32)>>,
    /// Stop compacting when the log is this size past the last compaction.
    compact_bytes: Cell<u64>,
    /// Every shard's "stores sessions" flag, and this shard's index in it.
    journaled: Option<(Arc<[AtomicBool]>, usize)>,
}

/// What a record left open may be joined by.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Joinable {
    /// A message's sessions (`Enqueue`s of message `mid`).
    Message(u64),
    /// Packet ids given (`Assign`) or finished (`Done`) by session `sid`.
    Assigns(u64),
    Dones(u64),
}

/// Most records joined into one, so that a record stays small (~120 KiB of sessions of a
/// fan-out at most) and start-up reads it whole.
const JOINED_MAX: u32 = 4096;

/// Log bytes past which a shard compacts (and twice the last snapshot).
pub const COMPACT_BYTES_MIN: u64 = 64 << 20;

impl Persist {
    /// A journal over `store`, continuing after the ids replay saw.
    pub fn new(store: Store, next_mid: u64, next_sid: u64) -> Persist {
        Persist {
            store,
            durable: Cell::new(0),
            last: Cell::new(0),
            is_warned: Cell::new(false),
            next_mid: Cell::new(next_mid.max(1)),
            next_sid: Cell::new(next_sid.max(1)),
            last_stamp: Cell::new(0),
            current: RefCell::new(None),
            open: Cell::new(None),
            compact_bytes: Cell::new(COMPACT_BYTES_MIN),
            journaled: None,
        }
    }

    /// Raises shard `id`'s flag in `flags` once this shard stores a session (now, if its file
    /// had some): other shards ask it for durable answers only then (`Shard::journaled_shards`).
    pub fn flagging(mut self, flags: Arc<[AtomicBool]>, id: usize) -> Persist {
        if self.next_sid.get() > 1 {
            flags[id].store(true, Ordering::Release);
        }
        self.journaled = Some((flags, id));
        self
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Appends a record; returns its position.
    pub fn append(&self, record: &Record) -> u64 {
        self.append_with(|w| encode_record_into(record, w))
    }

    /// `append` of the record `write` encodes, in place in the store's queue.
    fn append_with(&self, write: impl FnOnce(&mut Vec<u8>)) -> u64 {
        let at = self.store.append_with(write).0;
        self.last.set(at);
        at
    }

    /// `append` for the records a message's delivery writes one after another: a message
    /// entering a session's queue, a QoS 1 packet id given, a flow finished. Each joins the
    /// record before it when that is still open and of its kind (one header and one checksum
    /// for many); replay reads them back as the records they stand for. A joined record
    /// takes the position of the record it joins, so `last()` moves only when a record opens:
    /// a routed message always starts with its `Message` record (`message_id`), which does.
    pub fn append_joined(&self, record: &Record) -> u64 {
        let joined = match record {
            Record::Enqueue { sid, mid, grant } => self.join(Joinable::Message(*mid), |w| {
                encode_enqueue_entry(*sid, grant, w)
            }),
            Record::Assign { sid, pkid } => self.join_run(true, *sid, *pkid),
            Record::Done { sid, pkid } => self.join_run(false, *sid, *pkid),
            _ => None,
        };
        joined.unwrap_or_else(|| self.append(record))
    }

    /// Adds to the open record when it is `kind`'s; its position, or None.
    fn join(&self, kind: Joinable, write: impl FnOnce(&mut Vec<u8>)) -> Option<u64> {
        let (open, at, joined) = self.open.get()?;
        if open != kind || joined >= JOINED_MAX || !self.store.extend(Position(at), write) {
            return None;
        }
        self.open.set(Some((open, at, joined + 1)));
        Some(at)
    }

    /// Joins `pkid` to the open run of session `sid`, or opens one.
    fn join_run(&self, assign: bool, sid: u64, pkid: u16) -> Option<u64> {
        let kind = match assign {
            true => Joinable::Assigns(sid),
            false => Joinable::Dones(sid),
        };
        let joined = self.join(kind, |w| w.extend_from_slice(&pkid.to_le_bytes()));
        Some(joined.unwrap_or_else(|| {
            let at = self
                .store
                .append_open(|w| encode_pkid_run(assign, sid, pkid, w))
                .0;
            self.opened(kind, at)
        }))
    }

    /// The store's last record, at `at`, is open and of `kind`.
    fn opened(&self, kind: Joinable, at: u64) -> u64 {
        self.last.set(at);
        self.open.set(Some((kind, at, 1)));
        at
    }

    /// Position of the last record appended (0: none yet).
    pub fn last(&self) -> u64 {
        self.last.get()
    }

    /// Whether position `at` is known durable.
    pub fn is_durable(&self, at: u64) -> bool {
        at <= self.durable.get()
    }

    /// Waits until `at` is durable; retries while the disk refuses (counted once per
    /// failure spell), so it returns only when it is.
    pub async fn wait_durable(&self, at: u64) {
        while !self.is_durable(at) {
            match self.store.durable(Position(at)).await {
                Ok(()) => {
                    if at > self.durable.get() {
                        self.durable.set(at);
                    }
                    if self.is_warned.replace(false) {
                        tracing::info!("store writes again");
                    }
                }
                Err(e) => {
                    // Once per spell of failures, however many wait.
                    if !self.is_warned.replace(true) {
                        tracing::warn!("store write failed, holding acknowledgements: {e}");
                    }
                    glommio::timer::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Whether writes fail now (new QoS 1/2 messages for persistent sessions are refused).
    pub fn is_failing(&self) -> bool {
        self.store.is_failing()
    }

    /// The id of `publish` in this file, writing its body first if it is new here.
    pub fn message_id(&self, publish: &Arc<Publish>) -> u64 {
        if let Some((current, mid)) = &*self.current.borrow() {
            if Arc::ptr_eq(current, publish) {
                return *mid;
            }
        }
        let mid = self.next_mid.get();
        self.next_mid.set(mid + 1);
        let at = self
            .store
            .append_open(|w| encode_message_to(mid, publish, w))
            .0;
        self.opened(Joinable::Message(mid), at);
        *self.current.borrow_mut() = Some((publish.clone(), mid));
        mid
    }

    /// A message id not used yet (snapshots number their messages afresh).
    pub fn fresh_mid(&self) -> u64 {
        let mid = self.next_mid.get();
        self.next_mid.set(mid + 1);
        mid
    }

    /// A new session id and stamp.
    pub fn open_ids(&self) -> (u64, u64) {
        let sid = self.next_sid.get();
        self.next_sid.set(sid + 1);
        if let Some((flags, id)) = &self.journaled {
            flags[*id].store(true, Ordering::Release);
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        let stamp = now.max(self.last_stamp.get() + 1);
        self.last_stamp.set(stamp);
        (sid, stamp)
    }

    /// Whether the log grew enough to be compacted.
    pub fn wants_compaction(&self) -> bool {
        self.store.log_bytes() > self.compact_bytes.get()
    }

    /// Compacted into `records`: the next threshold is twice their size (at least the
    /// minimum).
    pub fn compacted(&self, snapshot_bytes: u64) {
        self.compact_bytes
            .set((snapshot_bytes * 2).max(COMPACT_BYTES_MIN));
        *self.current.borrow_mut() = None;
    }

    /// Drops the message cache (its id may be gone after a compaction).
    pub fn forget_current(&self) {
        *self.current.borrow_mut() = None;
    }
}

#[cfg(test)]
mod tests;
