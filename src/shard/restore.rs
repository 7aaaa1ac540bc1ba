//! Start-up from the store: what every shard's files replayed to, placed on this shard
//! (all retained messages, in every replica; the sessions whose client id is homed here),
//! and the whole live state written back as a snapshot (`live_records`) for compaction.

use super::persist::{self, Journal, Persist, Record};
use super::replay::{Image, Replayed};
use super::routing::retain_owner;
use super::session::Session;
use super::takeover::{home_shard, Owner};
use super::{Message, Shard};
use crate::protocol::{Publish, Will};
use bytes::Bytes;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A will to publish after a restart: the session's key and connection token, the will, its
/// delay.
pub type DueWill = (super::SessionKey, u64, Will, Duration);

/// What a shard keeps of everything replayed.
pub struct Placed {
    /// Filters the restored sessions subscribe to (for `announce`), by session key.
    pub filters: Vec<(super::SessionKey, Vec<String>)>,
    /// Wills of the connections the stop or crash ended: due once every shard is ready.
    pub wills: Vec<DueWill>,
}

impl Shard {
    /// Installs what replay found: every retained message, and the sessions homed on this
    /// shard (of one client id in several files, the latest `Open`). `own` tells whether a
    /// file's session records can go on being appended to as they are (same shard, same
    /// shard count); other sessions are written afresh.
    pub fn restore(self: &Rc<Self>, all: &[(usize, Replayed)], reuse_own: bool) -> Placed {
        self.restore_retained(all);
        let mut latest: super::HashMap<&str, &Image> = super::HashMap::default();
        for (_, replayed) in all {
            for image in &replayed.sessions {
                let entry = latest.entry(image.client_id.as_str()).or_insert(image);
                if image.stamp > entry.stamp {
                    *entry = image;
                }
            }
        }
        // Sessions homed elsewhere: their shard's plain filters go into this shard's interest
        // table at once (every shard saw every session), instead of one message per filter.
        let (here, elsewhere): (Vec<&Image>, Vec<&Image>) = latest
            .into_values()
            .partition(|image| home_shard(&image.client_id, self.shards) == self.id());
        self.note_interest(&elsewhere);
        let mut placed = Placed {
            filters: Vec::new(),
            wills: Vec::new(),
        };
        self.check_restored(here.iter().map(|i| i.client_id.clone()).collect());
        for image in here {
            let (filters, will) = self.restore_session(image, reuse_own);
            placed.filters.push(filters);
            placed.wills.extend(will);
        }
        placed
    }

    /// Records that the shards holding `images` subscribe to their plain filters.
    fn note_interest(&self, images: &[&Image]) {
        let mut st = self.state.borrow_mut();
        for image in images {
            let home = home_shard(&image.client_id, self.shards);
            for (filter, _) in &image.state.subscriptions {
                if !filter.starts_with(super::SHARE_PREFIX) {
                    st.interest.insert(filter, home, ());
                }
            }
        }
    }

    fn restore_retained(&self, all: &[(usize, Replayed)]) {
        // A topic's records are all in its owner's file (a reshaped start compacts before any
        // new record), so the files' sets do not overlap.
        let mut st = self.state.borrow_mut();
        let topics = all.iter().flat_map(|(_, replayed)| &replayed.retained);
        for (topic, (publish, expires)) in topics {
            let message = Message {
                publish: publish.clone(),
                origin: 0,
                expires_at: expires.map(persist::instant_of),
            };
            if message.is_expired() {
                continue;
            }
            st.retained.set(topic, Some(message));
        }
    }

    /// Installs one replayed session, offline, held by this shard.
    fn restore_session(
        self: &Rc<Self>,
        image: &Image,
        reuse_own: bool,
    ) -> ((super::SessionKey, Vec<String>), Option<DueWill>) {
        let token = self.new_token();
        let mut session = Session::new(image.client_id.clone(), image.version, true);
        session.conn_token = token;
        session.expiry_secs = image.expiry_secs;
        if let (true, Some(persist)) = (reuse_own && image.file == self.id(), &self.persist) {
            session.journal = Some(Box::new(Journal {
                persist: persist.clone(),
                sid: image.sid,
            }));
        }
        let state = image.state.clone_plain();
        let (key, filters) = self.install(session, Some(Box::new(state)));
        let owner = Owner {
            shard: self.id(),
            token,
        };
        self.state
            .borrow_mut()
            .registry
            .insert(image.client_id.as_str().into(), owner);
        let expires =
            image.version == crate::protocol::Version::V5 && image.expiry_secs != u32::MAX;
        if expires {
            let after = Duration::from_secs(image.expiry_secs as u64);
            self.expire_after(key, token, after);
        }
        // A will whose delay was running is due when it was; else the crash (or stop) ended
        // the will's connection: it is due after its delay, never past the session's end
        // [MQTT-3.1.3-9].
        let will = image.will.clone().map(|will| {
            let delay = will.properties.will_delay_interval.unwrap_or(0);
            let delay = if expires {
                delay.min(image.expiry_secs)
            } else {
                delay
            };
            let delay = match image.will_due_ms {
                Some(due) => persist::instant_of(due).saturating_duration_since(Instant::now()),
                None => Duration::from_secs(delay as u64),
            };
            (key, token, will, delay)
        });
        ((key, filters), will)
    }

    /// This shard's live state as records: the retained messages whose topics it owns, and
    /// every stored session (`Open` with the message bodies before it), keeping session ids.
    pub fn live_records(&self, persist: &Persist) -> Vec<Bytes> {
        let st = self.state.borrow();
        let mut records = Vec::new();
        st.retained.for_each(|topic, message| {
            if retain_owner(topic, self.shards) != self.id() {
                return;
            }
            let expires = message.expires_at.map(persist::wall_ms);
            let record = Record::Retain {
                topic: topic.to_string(),
                message: Some((Publish::clone(&message.publish), expires)),
            };
            records.push(Bytes::from(persist::encode_record(&record)));
        });
        let mut mids: HashMap<*const Publish, u64> = HashMap::new();
        for session in st.sessions.values() {
            let Some(sid) = session.sid() else {
                continue;
            };
            let stamp = persist.open_ids().1;
            let mut opened = session.opened(sid, stamp, |publish| {
                let next = persist.fresh_mid();
                *mids.entry(Arc::as_ptr(publish)).or_insert_with(|| {
                    let record = Record::Message {
                        mid: next,
                        publish: Publish::clone(publish),
                    };
                    records.push(Bytes::from(persist::encode_record(&record)));
                    next
                })
            });
            // A will waiting for its delay is the session's until it is published.
            let pending = self.pending_will(session.conn_token);
            if let Some((will, _)) = &pending {
                opened.will = Some(persist::will_to_stored(will));
            }
            records.push(Bytes::from(persist::encode_record(&Record::Open(
                Box::new(opened),
            ))));
            if let Some((_, due)) = pending {
                let at_ms = persist::wall_ms(due);
                records.push(Bytes::from(persist::encode_record(&Record::WillDue {
                    sid,
                    at_ms,
                })));
            }
        }
        records
    }

    /// Compacts this shard's store into its live state; true when it did.
    pub async fn compact(&self) -> bool {
        let Some(persist) = &self.persist else {
            return false;
        };
        let records = self.live_records(persist);
        let bytes: u64 = records.iter().map(|r| r.len() as u64 + 8).sum();
        persist.forget_current();
        match persist.store().compact(records).await {
            Ok(()) => {
                persist.compacted(bytes);
                true
            }
            Err(e) => {
                tracing::warn!("shard {}: compaction failed: {e}", self.id());
                false
            }
        }
    }
}
