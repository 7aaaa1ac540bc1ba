//! The shard's side of the cluster (`crate::cluster`): what it tells the NATS thread (local
//! publishes, retained changes, filters gained and lost) and what it takes from it (messages
//! and retained changes of other nodes). Every hook is a no-op on a broker without `[cluster]`.

use super::message::Message;
use super::msg::{MeshMsg, Retain};
use super::Shard;
use crate::cluster::{Claimed, Command, Inbound};
use crate::protocol::{Publish, QoS};
use tokio::sync::oneshot;

/// `Message::origin` of a message that came from another node: no connection of this node
/// has it, so No Local never drops it, and it is never sent back to NATS.
pub const CLUSTER_ORIGIN: u64 = u64::MAX;

/// Longest a CONNACK waits for the client id's claim in the cluster: the NATS thread bounds
/// its own part (the owner's write, the old node's answer) well below this; the wait is
/// longer only while the owners bucket is not open yet (JetStream still coming up).
const CLAIM_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

impl Shard {
    /// Hands a message of a local client to the other nodes, and its retained change to the
    /// cluster's bucket. Returns, for a QoS 1/2 message of a client (`is_acked`), what to
    /// await before the PUBACK: NATS has received it.
    pub(super) async fn to_cluster(
        &self,
        message: &Message,
        stored: Option<&Message>,
        is_acked: bool,
    ) -> Option<oneshot::Receiver<bool>> {
        let uplink = self.cluster.as_ref()?;
        // `$SYS` describes this node alone: every node publishes its own under the same names.
        if message.origin == CLUSTER_ORIGIN || message.publish.topic.as_str().starts_with("$SYS") {
            return None;
        }
        if message.publish.retain {
            let topic = message.publish.topic.as_str().to_string();
            let publish = stored
                .map(|s| s.publish.clone())
                .filter(|p| !p.payload.is_empty());
            uplink.send(Command::Retain { topic, publish }).await;
        }
        let (done, answer) = if is_acked && message.publish.qos != QoS::AtMostOnce {
            let (done, answer) = oneshot::channel();
            (Some(done), Some(answer))
        } else {
            (None, None)
        };
        let publish = message.publish.clone();
        let expires_at = message.expires_at;
        let command = Command::Publish {
            publish,
            expires_at,
            done,
        };
        uplink.send(command).await;
        answer
    }

    /// Tells the NATS thread about filters this shard subscribes to for the first time, and
    /// waits until this node's NATS server has them.
    pub(super) async fn cluster_subscribe(&self, filters: &[String]) {
        let (Some(uplink), false) = (&self.cluster, filters.is_empty()) else {
            return;
        };
        let filters = filters.to_vec();
        let (done, answer) = oneshot::channel();
        uplink.send(Command::Subscribe { filters, done }).await;
        let _ = answer.await;
    }

    /// Tells the NATS thread about filters this shard no longer subscribes to.
    pub(super) fn cluster_unsubscribe(&self, filters: &[String]) {
        if let (Some(uplink), false) = (&self.cluster, filters.is_empty()) {
            let filters = filters.to_vec();
            uplink.post(Command::Unsubscribe { filters });
        }
    }

    /// Takes what the NATS thread hands this shard.
    pub async fn on_cluster(&self, inbound: Inbound) {
        match inbound {
            Inbound::Publish(publish) => {
                // A full shard stops taking from NATS, so the NATS thread waits in turn.
                self.wait_for_ring_room().await;
                self.route(remote(publish)).await;
            }
            Inbound::Surrender(surrender) => self.surrender(surrender).await,
            Inbound::Rejected => self.metrics.count_cluster_rejected(),
            Inbound::Share { share, publish } => {
                self.wait_for_ring_room().await;
                let next =
                    self.dispatch_shared(&mut self.state.borrow_mut(), share, remote(publish), 0);
                if let Some((to, msg)) = next {
                    self.mesh.send(to, msg).await;
                }
            }
            Inbound::Retain { topic, publish } => {
                let publish = publish.map(remote);
                for to in (0..self.shards).filter(|&s| s != self.id()) {
                    let (topic, publish) = (topic.clone(), publish.clone());
                    let retain = Retain {
                        topic,
                        publish,
                        ack: None,
                        is_delivered_too: false,
                    };
                    self.mesh.send(to, MeshMsg::Retain(retain)).await;
                }
                self.state.borrow_mut().retained.set(&topic, publish);
            }
        }
    }
}

impl Shard {
    /// Takes `client_id` for this node in the cluster: the node that held it closes its
    /// connection and hands its session over (`wants_state`) or drops it. Waits until the
    /// owner is written, so of two connections with one client id on two nodes, the one with
    /// the later CONNACK stays. `installed` is dropped once the session is installed.
    pub(super) async fn cluster_claim(
        &self,
        client_id: &str,
        wants_state: bool,
        installed: oneshot::Receiver<()>,
    ) -> Claimed {
        let Some(uplink) = &self.cluster else {
            return Claimed::Kept;
        };
        let client_id = client_id.to_string();
        let (done, answer) = oneshot::channel();
        let claim = Command::Claim {
            client_id,
            wants_state,
            done,
            installed,
        };
        uplink.send(claim).await;
        // A connection does not wait long for an unavailable JetStream (a node that just
        // started, a NATS cluster without quorum): the claim is then not made at all.
        glommio::timer::timeout(CLAIM_WAIT, async {
            Ok(answer.await.unwrap_or(Claimed::Kept))
        })
        .await
        .unwrap_or(Claimed::Kept)
    }
}

/// A message of another node as this node routes it: its Message Expiry Interval is the time
/// it had left when it left its node, and counts down from its arrival here.
fn remote(publish: Publish) -> Message {
    Message::received(publish, CLUSTER_ORIGIN)
}
