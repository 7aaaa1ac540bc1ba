//! Replay: one store file's records (`persist`'s schema), applied in order, back into
//! retained messages and sessions.

use super::persist::{decode_each, instant_of, will_from_stored, Opened, Record, StoredGrant};
use super::session::{Grant, Inflight, Outgoing, Phase, SessionState, Subscription};
use super::HashMap;
use crate::protocol::Publish;
use crate::protocol::{Version, Will};
use bytes::Bytes;
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

/// A session while its records are applied.
struct Building {
    opened: Opened,
    subscriptions: std::collections::HashMap<String, Subscription>,
    inflight: VecDeque<Inflight>,
    queue: VecDeque<Outgoing>,
    incoming: HashSet<u16>,
    next_pkid: u16,
    /// When the will, waiting for its delay, is due (Unix ms); None: its connection was on.
    will_due: Option<u64>,
}

/// Applies the records of shard file `file`; returns what they leave and how many records
/// were not understood (skipped).
pub fn replay(records: &[Bytes], file: usize) -> (Replayed, usize) {
    let mut messages: HashMap<u64, Arc<Publish>> = HashMap::default();
    let mut sessions: HashMap<u64, Building> = HashMap::default();
    let mut retained: HashMap<String, Option<RetainedImage>> = HashMap::default();
    let mut out = Replayed::default();
    let mut skipped = 0;
    for bytes in records {
        let understood = decode_each(bytes, |record| {
            if let Record::Retain { topic, message } = record {
                // Replayed in order, the last record of a topic is what it holds.
                let message = message.map(|(publish, expires)| (Arc::new(publish), expires));
                retained.insert(topic, message);
                return;
            }
            apply(record, &mut messages, &mut sessions, &mut out);
        });
        skipped += usize::from(!understood);
    }
    out.retained = retained
        .into_iter()
        .filter_map(|(topic, message)| Some((topic, message?)))
        .collect();
    let mut built: Vec<_> = sessions.into_values().collect();
    built.sort_by_key(|b| b.opened.sid);
    out.sessions = built.into_iter().map(|b| image(b, file)).collect();
    (out, skipped)
}

fn apply(
    record: Record,
    messages: &mut HashMap<u64, Arc<Publish>>,
    sessions: &mut HashMap<u64, Building>,
    out: &mut Replayed,
) {
    let outgoing = |messages: &HashMap<u64, Arc<Publish>>, mid: u64, grant: &StoredGrant| {
        messages.get(&mid).map(|publish| Outgoing {
            publish: publish.clone(),
            grant: Grant::from_stored(grant),
        })
    };
    match record {
        Record::Message { mid, publish } => {
            out.next_mid = out.next_mid.max(mid + 1);
            messages.insert(mid, Arc::new(publish));
        }
        Record::Open(opened) => {
            let opened = *opened;
            out.next_sid = out.next_sid.max(opened.sid + 1);
            let building = open(opened, messages, &outgoing);
            sessions.insert(building.opened.sid, building);
        }
        Record::End { sid } => {
            sessions.remove(&sid);
        }
        other => {
            let Some(sid) = sid_of(&other) else {
                return;
            };
            let Some(b) = sessions.get_mut(&sid) else {
                return;
            };
            apply_to(b, other, messages, &outgoing);
        }
    }
}

type MakeOut<'a> = dyn Fn(&HashMap<u64, Arc<Publish>>, u64, &StoredGrant) -> Option<Outgoing> + 'a;

fn open(opened: Opened, messages: &HashMap<u64, Arc<Publish>>, outgoing: &MakeOut) -> Building {
    let inflight = opened
        .inflight
        .iter()
        .filter_map(|(mid, grant, pkid, released)| {
            Some(Inflight {
                out: outgoing(messages, *mid, grant)?,
                pkid: *pkid,
                phase: if *released {
                    Phase::Release
                } else {
                    Phase::Publish
                },
            })
        })
        .collect();
    let queue = opened
        .queue
        .iter()
        .filter_map(|(mid, grant)| outgoing(messages, *mid, grant))
        .collect();
    Building {
        subscriptions: opened.subscriptions.iter().cloned().collect(),
        incoming: opened.incoming_qos2.iter().copied().collect(),
        next_pkid: opened.next_pkid,
        will_due: None,
        inflight,
        queue,
        opened,
    }
}

fn sid_of(record: &Record) -> Option<u64> {
    match record {
        Record::Subscribe { sid, .. }
        | Record::Unsubscribe { sid, .. }
        | Record::Expiry { sid, .. }
        | Record::WillGone { sid }
        | Record::WillDue { sid, .. }
        | Record::Enqueue { sid, .. }
        | Record::Assign { sid, .. }
        | Record::PubRec { sid, .. }
        | Record::Done { sid, .. }
        | Record::Incoming { sid, .. }
        | Record::Released { sid, .. } => Some(*sid),
        _ => None,
    }
}

fn apply_to(
    b: &mut Building,
    record: Record,
    messages: &HashMap<u64, Arc<Publish>>,
    outgoing: &MakeOut,
) {
    match record {
        Record::Subscribe { filter, sub, .. } => {
            b.subscriptions.insert(filter, sub);
        }
        Record::Unsubscribe { filter, .. } => {
            b.subscriptions.remove(&filter);
        }
        Record::Expiry { secs, .. } => b.opened.expiry_secs = secs,
        Record::WillGone { .. } => {
            b.opened.will = None;
            b.will_due = None;
        }
        Record::WillDue { at_ms, .. } => b.will_due = Some(at_ms),
        Record::Enqueue { mid, grant, .. } => b.queue.extend(outgoing(messages, mid, &grant)),
        Record::Assign { pkid: 0, .. } => {
            // Taken from the queue and dropped (expired).
            b.queue.pop_front();
        }
        Record::Assign { pkid, .. } => {
            if let Some(out) = b.queue.pop_front() {
                b.inflight.push_back(Inflight {
                    out,
                    pkid,
                    phase: Phase::Publish,
                });
            }
            b.next_pkid = if pkid == u16::MAX { 1 } else { pkid + 1 };
        }
        Record::PubRec { pkid, .. } => {
            if let Some(i) = b.inflight.iter_mut().find(|i| i.pkid == pkid) {
                i.phase = Phase::Release;
            }
        }
        Record::Done { pkid, .. } => b.inflight.retain(|i| i.pkid != pkid),
        Record::Incoming { pkid, .. } => {
            b.incoming.insert(pkid);
        }
        Record::Released { pkid, .. } => {
            b.incoming.remove(&pkid);
        }
        _ => {}
    }
}

fn image(b: Building, file: usize) -> Image {
    // Expired messages are left for the session to drop when it sends them.
    let _ = instant_of;
    Image {
        sid: b.opened.sid,
        stamp: b.opened.stamp,
        client_id: b.opened.client_id,
        version: b.opened.version,
        expiry_secs: b.opened.expiry_secs,
        will: b.opened.will.as_ref().map(will_from_stored),
        will_due_ms: b.will_due.filter(|_| b.opened.will.is_some()),
        state: SessionState {
            subscriptions: b.subscriptions.into_iter().collect(),
            inflight: b.inflight.into(),
            queue: b.queue.into(),
            incoming_qos2: b.incoming.into_iter().collect(),
            next_pkid: b.next_pkid,
            cursors: Vec::new(),
        },
        file,
    }
}

/// A session as replay rebuilt it: plain data (crosses threads at start-up).
#[derive(Debug)]
pub struct Image {
    /// The `Open` it started from, with what followed applied.
    pub sid: u64,
    /// Stamp of its `Open`.
    pub stamp: u64,
    /// Client identifier.
    pub client_id: String,
    /// Version.
    pub version: Version,
    /// Session Expiry Interval.
    pub expiry_secs: u32,
    /// Will.
    pub will: Option<Will>,
    /// When the will is due (Unix ms), when its connection had ended and it waited for its
    /// delay; None when the crash (or stop) ended the connection.
    pub will_due_ms: Option<u64>,
    /// The state to restore.
    pub state: SessionState,
    /// The shard file it came from.
    pub file: usize,
}

/// A retained message as replayed: the PUBLISH and its expiry (Unix ms).
pub type RetainedImage = (Arc<Publish>, Option<u64>);

/// What one file replays to.
#[derive(Default, Debug)]
pub struct Replayed {
    /// Retained messages by topic, as the file's last record of each left them.
    pub retained: Vec<(String, RetainedImage)>,
    /// Sessions not ended.
    pub sessions: Vec<Image>,
    /// Highest message id seen + 1.
    pub next_mid: u64,
    /// Highest session id seen + 1.
    pub next_sid: u64,
}
