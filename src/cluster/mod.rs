//! The cluster: several ringcast nodes sharing one topic space over NATS (docs/SCALING.md).
//!
//! The NATS client (async-nats, which needs tokio) runs on a thread of its own (`link`) with
//! a current-thread tokio runtime. Shards talk to it like they talk to each other, over
//! bounded queues both ways: `Uplink` toward NATS (a full queue makes the publisher wait),
//! one `Inbound` receiver per shard back (a full queue makes the NATS reads wait). tokio's
//! channels wake a glommio task from another thread, so no shard ever runs tokio code.
//!
//! Module map:
//! - `subject`: MQTT topics and filters as NATS subjects and KV keys.
//! - `link`: the NATS thread: subscriptions by interest, publishes, the retained bucket.
//! - `props`: a message's MQTT 5.0 properties as a NATS header.
//! - `bucket`: the shared JetStream KV buckets, opened or made.
//! - `owners`: which node holds each client id (a KV bucket, written by compare-and-set).
//! - `claims`: this node's claims of client ids under way, and the requests they hold.
//! - `moves`: a session handed from the node that held it to the node its client came to.

mod bucket;
mod claims;
mod link;
mod moves;
mod owners;
pub mod props;
pub mod subject;

use crate::config::ClusterConfig;
use crate::protocol::Publish;
use bytes::Bytes;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// What a shard asks of the NATS thread.
pub enum Command {
    /// Publish a message of a local client to the other nodes. With `done`, answer once the
    /// node's NATS server has received it (a flush round trip): the QoS 1/2 promise.
    Publish {
        /// The message.
        publish: Arc<Publish>,
        /// When its Message Expiry Interval runs out: it leaves with the time left then, or
        /// not at all once expired.
        expires_at: Option<std::time::Instant>,
        /// Told `true` when NATS has it, `false` when NATS could not be reached.
        done: Option<oneshot::Sender<bool>>,
    },
    /// A shard has its first local subscriber on each of `filters` (or, for `$share/…`, one
    /// more member); answer once this node's NATS server has the subscriptions.
    Subscribe {
        /// Filters.
        filters: Vec<String>,
        /// Answered when subscribed.
        done: oneshot::Sender<()>,
    },
    /// A shard has no local subscriber left on each of `filters` (one member less of each
    /// `$share/…`).
    Unsubscribe {
        /// Filters.
        filters: Vec<String>,
    },
    /// A client id connected on this node: it becomes the id's owner in the cluster, and a
    /// node that held it closes its connection and hands its session over (or drops it).
    Claim {
        /// The client id.
        client_id: String,
        /// Whether the session is wanted (clean start 0): otherwise the old node drops it.
        wants_state: bool,
        /// Answered once the claim is written and the session fetched (or neither could be).
        done: oneshot::Sender<Claimed>,
        /// Sent or dropped by the shard once it installed what `done` answered (or the
        /// connection went away): until then another node's newer claim waits for the
        /// session, which may be between two shards of this node.
        installed: oneshot::Receiver<()>,
    },
    /// Persistent sessions this shard restored from its store at start-up: those whose
    /// client id another node owns now moved while this node was down, and are dropped.
    Restored {
        /// Their client ids.
        client_ids: Vec<String>,
    },
    /// A local client set (Some) or cleared (None) the retained message of `topic`.
    Retain {
        /// The topic.
        topic: String,
        /// The stored message, or None to clear.
        publish: Option<Arc<Publish>>,
    },
}

/// What became of a claim of a client id in the cluster.
#[derive(Debug)]
pub enum Claimed {
    /// No other node held it (or the owners bucket could not be reached): this node's own
    /// state for the client id counts.
    Kept,
    /// Another node held it: its session as that node handed it over (`shard::carry`), or
    /// None when it had none to give, was asked to drop it, or did not answer.
    Moved(Option<Bytes>),
    /// A connection on another node claimed the client id after this one, while this claim
    /// was under way: this connection closes, and what it fetched went to the newer one.
    Superseded,
}

/// Another node took a client id: the shard holding its session removes it (closing its
/// connection with 0x8E Session taken over) and answers with it written out when wanted.
pub struct Surrender {
    /// The client id.
    pub client_id: String,
    /// Whether to answer with the session (clean start 0 on the new node).
    pub wants_state: bool,
    /// Answered by every shard: the session (`shard::carry`) by the one that held it.
    pub reply: oneshot::Sender<Option<Bytes>>,
}

/// What the NATS thread hands a shard.
pub enum Inbound {
    /// Another node took a client id: give up its session.
    Surrender(Surrender),
    /// A message published on another node, for this node's subscribers.
    Publish(Publish),
    /// A message NATS gave this node's member of shared subscription `share`
    /// (`$share/group/filter`): for one of this node's members of it.
    Share {
        /// The shared subscription.
        share: String,
        /// The message.
        publish: Publish,
    },
    /// Another node set (Some) or cleared (None) the retained message of a topic.
    Retain {
        /// The topic.
        topic: String,
        /// The message, or None to clear.
        publish: Option<Publish>,
    },
    /// A message arrived from NATS that this node could not read (to count).
    Rejected,
}

/// A shard's way to the NATS thread (cheap to clone).
#[derive(Clone)]
pub struct Uplink {
    commands: mpsc::Sender<Command>,
}

impl Uplink {
    /// Sends a command, waiting while the queue toward NATS is full. A stopped NATS thread
    /// (shutdown) takes nothing more, which is no error.
    pub async fn send(&self, command: Command) {
        let _ = self.commands.send(command).await;
    }

    /// Sends without waiting when there is room; otherwise a task sends it. Commands of this
    /// kind (unsubscribes) are counted by the thread, so their order does not matter.
    pub fn post(&self, command: Command) {
        if let Err(mpsc::error::TrySendError::Full(command)) = self.commands.try_send(command) {
            let commands = self.commands.clone();
            glommio::spawn_local(async move {
                let _ = commands.send(command).await;
            })
            .detach();
        }
    }
}

/// Starts the NATS thread for `shards` shards: the uplink, and one inbound receiver per shard.
pub fn start(
    config: &ClusterConfig,
    shards: usize,
) -> Result<(Uplink, Vec<mpsc::Receiver<Inbound>>), String> {
    let (commands, command_rx) = mpsc::channel(config.queue_messages_max);
    let (inbound, receivers): (Vec<_>, Vec<_>) = (0..shards)
        .map(|_| mpsc::channel(config.queue_messages_max))
        .unzip();
    let config = config.clone();
    std::thread::Builder::new()
        .name("cluster".into())
        .spawn(move || link::run(config, command_rx, inbound))
        .map_err(|e| format!("cannot start the cluster thread: {e}"))?;
    Ok((Uplink { commands }, receivers))
}
