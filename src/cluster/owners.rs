//! Which node owns each client id: a JetStream KV bucket with one key per client id (escaped
//! as a subject token) whose value names the node that accepted its latest connection.
//!
//! A node takes a client id with a compare-and-set on the key's revision (create when the key
//! is new, update at the revision it read otherwise), so of two nodes claiming one id at the
//! same moment one writes first and the other retries against it: the writes are ordered, and
//! each claimant learns whom it took the id from (from the bucket's order as the watch
//! delivers it, `claims`). It then asks that node for the session (`moves`). A node holds the requests of claimants that replaced its own write until its
//! claim has ended, the session installed on its shard (`claims`). The owner record also
//! decides at start-up: a restored session whose id another node owns moved while this node
//! was down, and is dropped.
//!
//! Every node watches the bucket too, as a backstop for a hand-over that did not happen (the
//! old node was cut off from NATS when asked): a while after another node took an id this node
//! held, and unless this node took it back meanwhile, it drops what it still has of it.

use super::claims::{ClaimId, Claims};
use super::moves::{self, Request};
use super::subject::{escape_level, unescape_level};
use super::{Claimed, Inbound};
use crate::config::ClusterConfig;
use async_nats::jetstream::kv;
use async_nats::Client;
use bytes::Bytes;
use futures_lite::StreamExt;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Bucket of client-id owners.
const BUCKET: &str = "ringcast_clients";
/// Attempts at the compare-and-set before a claim gives up (each failure means another node
/// wrote in between, so this bounds a storm of one id on many nodes).
const CAS_TRIES: usize = 8;
/// Longest a claim waits for the bucket (an R3 write takes milliseconds when JetStream is up).
const WRITE_WAIT: Duration = Duration::from_secs(2);
/// How long after another node took an id the backstop drops what this node still holds of
/// it: longer than a hand-over may take (`moves::FETCH_WAIT`), so it never races one.
const BACKSTOP_WAIT: Duration = Duration::from_secs(5);

/// This node's side of the owners bucket.
pub(super) struct Owners {
    store: kv::Store,
    client: Client,
    node: String,
    shards: Vec<mpsc::Sender<Inbound>>,
    /// Client ids (as keys) this node took, with the revision of its latest write, until
    /// another node takes them: a write of another node older than ours is ignored.
    owned: RefCell<HashMap<String, u64>>,
    /// This node's claims under way, with the hand-over requests of newer claimants they hold.
    claims: RefCell<Claims>,
    /// Woken when the watch delivered a put of a key with a claim under way.
    put_seen: tokio::sync::Notify,
}

/// A claim's write: the owner it replaced (node and revision), and its own revision.
struct Written {
    previous: Option<(String, u64)>,
    revision: u64,
}

/// The bucket key of a client id.
fn key_of(client_id: &str) -> String {
    let mut key = String::with_capacity(client_id.len() + 2);
    escape_level(client_id, &mut key);
    key
}

impl Owners {
    /// Opens (or makes) the bucket, starts watching it and answering hand-over requests.
    pub(super) async fn open(
        client: &Client,
        config: &ClusterConfig,
        shards: Vec<mpsc::Sender<Inbound>>,
    ) -> Option<Rc<Owners>> {
        let store = super::bucket::open_bucket(client, config, BUCKET).await;
        let watch = store
            .watch_all()
            .await
            .map_err(|e| tracing::error!("cluster: cannot watch the client bucket: {e}"))
            .ok()?;
        let owners = Rc::new(Owners {
            store,
            client: client.clone(),
            node: config.node.clone(),
            shards,
            owned: RefCell::default(),
            claims: RefCell::default(),
            put_seen: tokio::sync::Notify::new(),
        });
        serve(owners.clone()).await?;
        tokio::task::spawn_local(follow(watch, owners.clone()));
        Some(owners)
    }

    /// Takes `client_id` for this node and fetches its session from the node that held it;
    /// answers `done` (unless the shard stopped waiting, in which case nothing is taken). The
    /// claim lasts until `installed` resolves (the shard sends or drops it once the session is
    /// installed, or the connection went away): a newer claimant's request waits until then.
    pub(super) async fn claim(
        self: Rc<Self>,
        client_id: String,
        wants_state: bool,
        done: oneshot::Sender<Claimed>,
        installed: oneshot::Receiver<()>,
    ) {
        if done.is_closed() {
            return;
        }
        let key = key_of(&client_id);
        let id = self.claims.borrow_mut().begin(&key);
        let written = tokio::time::timeout(WRITE_WAIT, self.write(&key))
            .await
            .unwrap_or_else(|_| {
                tracing::warn!(
                    "cluster: the owner of client {client_id:?} was not written in time"
                );
                None
            });
        let written = match written {
            Some(written) => Some(self.in_stream_order(&key, id, written).await),
            None => None,
        };
        let revision = written.as_ref().map(|w| w.revision);
        let older = self.claims.borrow_mut().written(&key, id, revision);
        older.into_iter().for_each(|r| self.answer_now(r));
        let claimed = match written {
            Some(Written {
                previous: Some((node, replaced)),
                ..
            }) if node != self.node => Claimed::Moved(
                moves::fetch(&self.client, &node, &client_id, wants_state, replaced).await,
            ),
            _ => Claimed::Kept,
        };
        let newer = self.claims.borrow_mut().fetched(&key, id);
        if !newer.is_empty() {
            let _ = done.send(self.pass_on(newer, claimed));
            return;
        }
        self.settle(&key, id, done, claimed, installed).await;
    }

    /// `written` with the write it replaced as the bucket's order has it (`Claims::predecessor`),
    /// once the watch has delivered it; as the compare-and-set read it when the watch does
    /// not within `WRITE_WAIT`.
    async fn in_stream_order(&self, key: &str, id: ClaimId, written: Written) -> Written {
        let reached = async {
            loop {
                let seen = self.put_seen.notified();
                if self.claims.borrow().reached(key, id, written.revision) {
                    return;
                }
                seen.await;
            }
        };
        if tokio::time::timeout(WRITE_WAIT, reached).await.is_err() {
            tracing::warn!("cluster: the owner write of {key:?} did not come back in time");
            return written;
        }
        let claims = self.claims.borrow();
        let previous = claims.predecessor(key, id, written.revision, written.previous);
        Written {
            previous,
            ..written
        }
    }

    /// Answers the shard with what the claim got, and ends the claim once the shard has
    /// installed it: a newer claimant's request held meanwhile then finds the session on the
    /// shard that holds it now (`hand_over`).
    async fn settle(
        self: &Rc<Self>,
        key: &str,
        id: ClaimId,
        done: oneshot::Sender<Claimed>,
        claimed: Claimed,
        installed: oneshot::Receiver<()>,
    ) {
        if done.send(claimed).is_ok() {
            let _ = installed.await;
        }
        let newer = self.claims.borrow_mut().end(key, id);
        self.pass_on(newer, Claimed::Kept);
    }

    /// A claim ended with newer claimants waiting: the newest gets what it fetched (or, when
    /// it fetched nothing, what this node's shards hold) and this claim is superseded.
    fn pass_on(self: &Rc<Self>, mut newer: Vec<Request>, claimed: Claimed) -> Claimed {
        let Some(newest) = newer.pop() else {
            return claimed;
        };
        for older in newer {
            tokio::task::spawn_local(moves::respond(self.client.clone(), older.reply, None));
        }
        match claimed {
            Claimed::Moved(session) => {
                let session = session.filter(|_| newest.wants_state);
                let reply = moves::respond(self.client.clone(), newest.reply, session);
                tokio::task::spawn_local(reply);
            }
            _ => self.answer_now(newest),
        }
        Claimed::Superseded
    }

    /// Has the shards give up the session `request` asks for, and answers with it.
    fn answer_now(&self, request: Request) {
        let client = self.client.clone();
        tokio::task::spawn_local(moves::hand_over(client, self.shards.clone(), request));
    }

    /// Writes this node as the owner of `key` by compare-and-set; None when the bucket could
    /// not be written.
    async fn write(&self, key: &str) -> Option<Written> {
        let value = Bytes::from(self.node.clone());
        let mut why = String::new();
        for _ in 0..CAS_TRIES {
            let entry = match self.store.entry(key).await {
                Ok(entry) => entry.filter(|e| e.operation == kv::Operation::Put),
                Err(e) => {
                    why = e.to_string();
                    continue;
                }
            };
            let previous = entry
                .as_ref()
                .map(|e| (String::from_utf8_lossy(&e.value).into_owned(), e.revision));
            let written = match &entry {
                Some(e) => (self.store.update(key, value.clone(), e.revision).await)
                    .map_err(|e| e.to_string()),
                None => (self.store.create(key, value.clone()).await).map_err(|e| e.to_string()),
            };
            match written {
                Ok(revision) => {
                    self.owned.borrow_mut().insert(key.to_string(), revision);
                    return Some(Written { previous, revision });
                }
                // Another node wrote in between: read again and try against it.
                Err(e) => why = e,
            }
        }
        tracing::warn!("cluster: cannot record the owner of {key:?}: {why}");
        None
    }

    /// Whether this node took `key` (or is taking it) since: what it holds of it is current.
    fn is_claimed(&self, key: &str) -> bool {
        self.owned.borrow().contains_key(key) || self.claims.borrow().contains(key)
    }

    /// Drops the restored sessions whose client id another node owns now (unless its client
    /// came back here meanwhile).
    pub(super) async fn check_restored(self: Rc<Self>, client_ids: Vec<String>) {
        for client_id in client_ids {
            let key = key_of(&client_id);
            let (owner, revision) = match self.store.entry(key.as_str()).await {
                Ok(Some(entry)) if entry.operation == kv::Operation::Put => {
                    (entry.value, entry.revision)
                }
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!("cluster: cannot read the owner of {client_id:?}: {e}");
                    continue;
                }
            };
            if owner == self.node.as_bytes() {
                // Still this node's: the backstop covers it as if claimed since the start.
                self.owned.borrow_mut().entry(key).or_insert(revision);
            } else if !self.is_claimed(&key) {
                tracing::info!(
                    "cluster: client {client_id:?} moved to node {} while this node was down: its stored session is dropped",
                    String::from_utf8_lossy(&owner)
                );
                moves::surrender(&self.shards, &client_id, false).await;
            }
        }
    }
}

/// Subscribes to this node's request subject and answers what arrives.
async fn serve(owners: Rc<Owners>) -> Option<()> {
    let subject = moves::node_subject(&owners.node);
    let requests = owners
        .client
        .subscribe(subject)
        .await
        .map_err(|e| tracing::error!("cluster: cannot take session requests: {e}"))
        .ok()?;
    tokio::task::spawn_local(answer_requests(owners, requests));
    Some(())
}

async fn answer_requests(owners: Rc<Owners>, mut requests: async_nats::Subscriber) {
    while let Some(message) = requests.next().await {
        let Some(request) = moves::request_of(message) else {
            continue;
        };
        // The claimant replaced a claim of this node still under way: the request waits for
        // its end (`Owners::pass_on`).
        let key = key_of(&request.client_id);
        let now = owners.claims.borrow_mut().arrive(&key, request);
        if let Some(request) = now {
            owners.answer_now(request);
        }
    }
}

/// Follows the bucket: when another node takes an id this node owns, and this node has not
/// taken it back `BACKSTOP_WAIT` later, drops what this node still holds of it.
async fn follow(mut watch: kv::Watch, owners: Rc<Owners>) {
    while let Some(entry) = watch.next().await {
        let Ok(entry) = entry else {
            continue;
        };
        if entry.operation != kv::Operation::Put {
            continue;
        }
        let node = String::from_utf8_lossy(&entry.value);
        if owners
            .claims
            .borrow_mut()
            .put_seen(&entry.key, entry.revision, &node)
        {
            owners.put_seen.notify_waiters();
        }
        if entry.value == owners.node.as_bytes() {
            continue;
        }
        let mine = owners.owned.borrow().get(&entry.key).copied();
        if mine.is_none_or(|mine| mine > entry.revision) {
            continue; // never ours, or our claim is the newer one
        }
        owners.owned.borrow_mut().remove(&entry.key);
        let Some(client_id) = unescape_level(&entry.key) else {
            continue;
        };
        let owners = owners.clone();
        tokio::task::spawn_local(async move {
            tokio::time::sleep(BACKSTOP_WAIT).await;
            if !owners.is_claimed(&key_of(&client_id)) {
                moves::surrender(&owners.shards, &client_id, false).await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_become_keys_a_kv_bucket_accepts() {
        assert_eq!(key_of("dev-1_a"), "dev-1_a");
        assert_eq!(key_of(""), "=");
        assert_eq!(
            unescape_level(&key_of("a.b c/é")).as_deref(),
            Some("a.b c/é")
        );
    }
}
