//! Which node owns each client id: a JetStream KV bucket with one key per client id (escaped
//! as a subject token) whose value names the node that accepted its latest connection.
//!
//! A node takes a client id with a compare-and-set on the key's revision (create when the key
//! is new, update at the revision it read otherwise), so of two nodes claiming one id at the
//! same moment one writes first and the other retries against it: the writes are ordered, and
//! each claimant knows whom it took the id from. It then asks that node for the session
//! (`moves`). The owner record also decides at start-up: a restored session whose id another
//! node owns moved while this node was down, and is dropped.
//!
//! Every node watches the bucket too, as a backstop for a hand-over that did not happen (the
//! old node was cut off from NATS when asked): a while after another node took an id this node
//! held, and unless this node took it back meanwhile, it drops what it still has of it.

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
    /// Client ids (as keys) with a claim of this node under way: its write's revision once
    /// written, and the hand-over requests of claimants that replaced that write (answered
    /// when the claim ends, with what it fetched), or that came before it was written.
    claiming: RefCell<HashMap<String, Claiming>>,
}

/// A claim of this node under way.
#[derive(Default)]
pub(super) struct Claiming {
    /// The revision this node wrote, once written.
    revision: Option<u64>,
    /// Requests of newer claimants waiting for the claim's end.
    waiting: Vec<Request>,
}

impl Claiming {
    /// Whether `request` waits for this claim (it replaced this claim's write, or may have:
    /// the write's revision is not known yet) rather than being answered now.
    fn holds(&self, request: &Request) -> bool {
        self.revision
            .is_none_or(|revision| request.replaced == revision)
    }
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
        let store = super::bucket::open_bucket(client, config, BUCKET).await?;
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
            claiming: RefCell::default(),
        });
        serve(owners.clone()).await?;
        tokio::task::spawn_local(follow(watch, owners.clone()));
        Some(owners)
    }

    /// Takes `client_id` for this node and fetches its session from the node that held it;
    /// answers `done` (unless the shard stopped waiting, in which case nothing is taken).
    pub(super) async fn claim(
        self: Rc<Self>,
        client_id: String,
        wants_state: bool,
        done: oneshot::Sender<Claimed>,
    ) {
        if done.is_closed() {
            return;
        }
        let key = key_of(&client_id);
        self.claiming.borrow_mut().entry(key.clone()).or_default();
        let written = tokio::time::timeout(WRITE_WAIT, self.write(&key))
            .await
            .unwrap_or_else(|_| {
                tracing::warn!(
                    "cluster: the owner of client {client_id:?} was not written in time"
                );
                None
            });
        self.written(&key, written.as_ref().map(|w| w.revision));
        let claimed = match written {
            Some(Written {
                previous: Some((node, replaced)),
                ..
            }) if node != self.node => Claimed::Moved(
                moves::fetch(&self.client, &node, &client_id, wants_state, replaced).await,
            ),
            _ => Claimed::Kept,
        };
        let newer = self.claiming.borrow_mut().remove(&key).unwrap_or_default();
        let _ = done.send(self.pass_on(newer.waiting, claimed));
    }

    /// The claim of `key` wrote `revision` (None: could not write): requests that did not
    /// replace that write are older than this claim and are answered now.
    fn written(self: &Rc<Self>, key: &str, revision: Option<u64>) {
        let mut claiming = self.claiming.borrow_mut();
        let Some(claim) = claiming.get_mut(key) else {
            return;
        };
        claim.revision = Some(revision.unwrap_or(0));
        let waiting = std::mem::take(&mut claim.waiting);
        let (held, now): (Vec<_>, Vec<_>) = waiting
            .into_iter()
            .partition(|r| revision.is_some() && claim.holds(r));
        claim.waiting = held;
        drop(claiming);
        for request in now {
            tokio::task::spawn_local(self.hand_over(request));
        }
    }

    /// A claim ended: with newer claimants waiting, the newest gets what it fetched (or, when
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
            _ => {
                tokio::task::spawn_local(self.hand_over(newest));
            }
        }
        Claimed::Superseded
    }

    /// Has the shards give up the session `request` asks for, and answers with it.
    fn hand_over(&self, request: Request) -> impl std::future::Future<Output = ()> + 'static {
        // The claimant replaced this node's own last write: the session this node claimed may
        // still be on its way to a shard (its claim has ended, the connection not yet taken it).
        let in_transit =
            self.owned.borrow().get(&key_of(&request.client_id)) == Some(&request.replaced);
        moves::hand_over(
            self.client.clone(),
            self.shards.clone(),
            request,
            in_transit,
        )
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
        self.owned.borrow().contains_key(key) || self.claiming.borrow().contains_key(key)
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
        // its end, and gets what it fetched (`Owners::pass_on`).
        let key = key_of(&request.client_id);
        if let Some(claim) = owners.claiming.borrow_mut().get_mut(&key) {
            if claim.holds(&request) {
                claim.waiting.push(request);
                continue;
            }
        }
        tokio::task::spawn_local(owners.hand_over(request));
    }
}

/// Follows the bucket: when another node takes an id this node owns, and this node has not
/// taken it back `BACKSTOP_WAIT` later, drops what this node still holds of it.
async fn follow(mut watch: kv::Watch, owners: Rc<Owners>) {
    while let Some(entry) = watch.next().await {
        let Ok(entry) = entry else {
            continue;
        };
        if entry.operation != kv::Operation::Put || entry.value == owners.node.as_bytes() {
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

    fn request(replaced: u64) -> Request {
        Request {
            reply: async_nats::Subject::from("_INBOX.x"),
            client_id: "c".into(),
            wants_state: true,
            replaced,
        }
    }

    #[test]
    fn a_claim_holds_only_requests_of_claimants_that_replaced_its_write() {
        let unwritten = Claiming::default();
        assert!(unwritten.holds(&request(3)), "undecided until written");
        let written = Claiming {
            revision: Some(7),
            waiting: Vec::new(),
        };
        assert!(written.holds(&request(7)), "replaced this claim: newer");
        assert!(
            !written.holds(&request(6)),
            "replaced an older write: older"
        );
        assert!(!written.holds(&request(0)), "found no owner: older");
    }

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
