//! Takeover across nodes: a JetStream KV bucket with one key per client id (escaped as a
//! subject token) whose value names the node that accepted its latest connection. Every
//! node watches the bucket's new writes; a write by another node closes this node's
//! connection with that client id (DISCONNECT 0x8E Session taken over in 5.0).
//!
//! The session itself does not move between nodes: the new node starts from its own state
//! for the client id (docs/SCALING.md).

use super::subject::{escape_level, unescape_level};
use super::Inbound;
use crate::config::ClusterConfig;
use async_nats::jetstream::kv;
use async_nats::Client;
use bytes::Bytes;
use futures_lite::StreamExt;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use tokio::sync::mpsc;

/// Bucket of client-id owners.
const BUCKET: &str = "ringcast_clients";

/// This node's side of the owners bucket.
pub(super) struct Owners {
    store: kv::Store,
    node: String,
    /// Revisions of this node's own latest write per client id, until the watch has passed
    /// them: an older write of another node seen after ours must not close our connection.
    pending: Rc<RefCell<HashMap<String, u64>>>,
}

impl Owners {
    /// Opens (or makes) the bucket and starts watching it.
    pub(super) async fn open(
        client: &Client,
        config: &ClusterConfig,
        shards: Vec<mpsc::Sender<Inbound>>,
    ) -> Option<Owners> {
        let store = super::bucket::open_bucket(client, config, BUCKET).await?;
        let watch = store
            .watch_all()
            .await
            .map_err(|e| tracing::error!("cluster: cannot watch the client bucket: {e}"))
            .ok()?;
        let pending = Rc::new(RefCell::new(HashMap::new()));
        let node = config.node.clone();
        tokio::task::spawn_local(follow(watch, node.clone(), pending.clone(), shards));
        Some(Owners {
            store,
            node,
            pending,
        })
    }

    /// Records that `client_id` connected here.
    pub(super) async fn claim(&self, client_id: &str) {
        let mut key = String::with_capacity(client_id.len() + 2);
        escape_level(client_id, &mut key);
        match self.store.put(&key, Bytes::from(self.node.clone())).await {
            Ok(revision) => {
                self.pending.borrow_mut().insert(key, revision);
            }
            Err(e) => tracing::warn!("cluster: cannot record client {client_id:?}: {e}"),
        }
    }
}

/// Closes this node's connection of every client id that another node took since.
async fn follow(
    mut watch: kv::Watch,
    node: String,
    pending: Rc<RefCell<HashMap<String, u64>>>,
    shards: Vec<mpsc::Sender<Inbound>>,
) {
    while let Some(entry) = watch.next().await {
        let Ok(entry) = entry else {
            continue;
        };
        if entry.operation != kv::Operation::Put {
            continue;
        }
        let ours = pending.borrow().get(&entry.key).copied();
        if entry.value == node.as_bytes() {
            if ours == Some(entry.revision) {
                pending.borrow_mut().remove(&entry.key);
            }
            continue;
        }
        if ours.is_some_and(|mine| mine > entry.revision) {
            continue; // our connection is the newer one
        }
        let Some(client_id) = unescape_level(&entry.key) else {
            continue;
        };
        // Whichever shard holds the id closes it; the others find nothing.
        for shard in &shards {
            let evict = Inbound::Evict {
                client_id: client_id.clone(),
            };
            if shard.send(evict).await.is_err() {
                return;
            }
        }
    }
}
