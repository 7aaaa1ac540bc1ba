//! Messages between shards, over glommio's SPSC rings (`channel_mesh`).
//!
//! Every shard can send to every other shard. A message to the shard itself goes through a
//! local queue, so callers never special-case "same shard". Rings are bounded: `send` waits
//! when the ring toward a shard is full, which pauses whatever produced the message (a
//! publisher's reader) instead of growing memory.

use crate::shard::session::SessionState;
use crate::shard::{Message, SessionKey};
use glommio::channels::channel_mesh::Senders;
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::AcceptedTcpStream;
use glommio::ResourceType;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

/// Index of a shard, 0-based.
pub type ShardId = usize;

/// Identifies a pending request on the shard that made it.
pub type RequestId = u64;

/// Everything one shard can tell another.
pub enum MeshMsg {
    /// A freshly accepted connection placed on this shard.
    Accepted(AcceptedTcpStream),
    /// A publish for this shard's local subscribers (shared subscriptions excepted: the
    /// publishing shard picks their member).
    Publish(Message),
    /// Set (Some) or clear (None) the retained message of a topic in this shard's replica.
    Retain {
        /// Topic name.
        topic: String,
        /// The retained PUBLISH, or None to clear.
        publish: Option<Message>,
        /// When set, answer `InterestAck` to `from` once applied (QoS 1/2 retained publishes
        /// are acknowledged to their publisher only after every replica has them).
        ack: Option<(ShardId, RequestId)>,
    },
    /// Session `member` of shard `from` joined shared subscription `share`
    /// (`$share/group/filter`); answer `InterestAck`. Every shard keeps every group's members.
    ShareJoin {
        /// The shared subscription.
        share: String,
        /// Shard of the member.
        from: ShardId,
        /// Session of the member on that shard.
        member: SessionKey,
        /// Request to acknowledge.
        request: RequestId,
    },
    /// Session `member` of shard `from` left shared subscription `share`.
    ShareLeave {
        /// The shared subscription.
        share: String,
        /// Shard of the member.
        from: ShardId,
        /// Session of the member on that shard.
        member: SessionKey,
    },
    /// A message for one member of a shared subscription, picked by the publishing shard.
    ShareDeliver {
        /// The shared subscription.
        share: String,
        /// The member's session on the receiving shard.
        member: SessionKey,
        /// The message.
        message: Message,
        /// Times the message was passed on because its member had gone; bounds the passing.
        hops: u8,
    },
    /// Shard `from` now has local subscribers on `filter`; answer `InterestAck`.
    InterestAdd {
        /// The filter.
        filter: String,
        /// Who subscribes.
        from: ShardId,
        /// Request to acknowledge.
        request: RequestId,
    },
    /// Shard `from` has no more local subscribers on `filter`.
    InterestRemove {
        /// The filter.
        filter: String,
        /// Who unsubscribed.
        from: ShardId,
    },
    /// An `InterestAdd`, `ShareJoin` or acknowledged `Retain` has been applied.
    InterestAck {
        /// The request acknowledged.
        request: RequestId,
    },
    /// To a client id's home shard: a connection on `from` wants the client id.
    Claim {
        /// The client id.
        client_id: String,
        /// Shard of the new connection.
        from: ShardId,
        /// Token of the new connection.
        token: u64,
        /// Request to answer with `Handoff`.
        request: RequestId,
        /// Whether the new connection wants the old session's state.
        wants_state: bool,
    },
    /// From the home shard to the shard holding the client id: close it, hand its state on.
    Evict {
        /// The client id.
        client_id: String,
        /// Token of the connection that holds it (or held it last).
        token: u64,
        /// Shard of the new connection.
        to: ShardId,
        /// Request to answer with `Handoff`.
        request: RequestId,
        /// Whether to send the session state.
        wants_state: bool,
    },
    /// The answer to a `Claim`: the old session's state, if it had one to give.
    Handoff {
        /// The request answered.
        request: RequestId,
        /// The session state.
        state: Option<Box<SessionState>>,
    },
    /// To the home shard: the session of connection `token` is gone.
    Release {
        /// The client id.
        client_id: String,
        /// The connection whose session ended.
        token: u64,
    },
}

/// This shard's ends of the mesh.
pub struct Mesh {
    id: ShardId,
    senders: Option<Senders<MeshMsg>>,
    local: LocalSender<MeshMsg>,
    /// Messages posted while the ring toward a shard was full, in order, per shard.
    backlog: RefCell<Vec<VecDeque<MeshMsg>>>,
    /// Per shard: a task is sending its backlog; later messages must queue behind it.
    draining: RefCell<Vec<bool>>,
}

impl Mesh {
    /// Wraps the joined mesh; returns it with the receiver of messages to self.
    pub fn new(id: ShardId, senders: Option<Senders<MeshMsg>>) -> (Mesh, LocalReceiver<MeshMsg>) {
        let (local, receiver) = local_channel::new_unbounded();
        let peers = senders.as_ref().map_or(0, |s| s.nr_consumers());
        let backlog = RefCell::new((0..peers).map(|_| VecDeque::new()).collect());
        let mesh = Mesh {
            id,
            senders,
            local,
            backlog,
            draining: RefCell::new(vec![false; peers]),
        };
        (mesh, receiver)
    }

    /// This shard's id.
    pub fn id(&self) -> ShardId {
        self.id
    }

    /// Sends, waiting while the ring toward `to` is full (and behind anything posted to `to`
    /// earlier, so order toward one shard is kept).
    pub async fn send(&self, to: ShardId, msg: MeshMsg) {
        if to == self.id {
            let _ = self.local.try_send(msg);
            return;
        }
        while self.has_backlog(to) {
            futures_lite::future::yield_now().await;
        }
        self.send_direct(to, msg).await;
    }

    /// Whether messages posted to `to` are still waiting to be sent.
    fn has_backlog(&self, to: ShardId) -> bool {
        self.draining.borrow().get(to).copied().unwrap_or(false)
    }

    async fn send_direct(&self, to: ShardId, msg: MeshMsg) {
        if let Some(senders) = &self.senders {
            // An error means the peer is gone (shutdown); nothing is left to deliver to.
            let _ = senders.send_to(to, msg).await;
        }
    }

    /// Sends without waiting when there is room; otherwise queues the message behind the
    /// others posted to `to` and a background task sends them in order. For control messages
    /// produced where waiting is not possible.
    pub fn post(self: &Rc<Self>, to: ShardId, msg: MeshMsg) {
        if to == self.id {
            let _ = self.local.try_send(msg);
            return;
        }
        let Some(senders) = &self.senders else { return };
        let msg = if self.has_backlog(to) {
            msg
        } else {
            // Only a full ring hands the message back; a closed one means the peer stopped.
            match senders.try_send_to(to, msg) {
                Err(glommio::GlommioError::WouldBlock(ResourceType::Channel(msg))) => msg,
                _ => return,
            }
        };
        self.backlog.borrow_mut()[to].push_back(msg);
        if !self.has_backlog(to) {
            self.draining.borrow_mut()[to] = true;
            let mesh = self.clone();
            glommio::spawn_local(async move { mesh.drain_backlog(to).await }).detach();
        }
    }

    /// Sends what was posted to `to` while its ring was full, oldest first.
    async fn drain_backlog(self: Rc<Self>, to: ShardId) {
        loop {
            let next = self.backlog.borrow_mut()[to].pop_front();
            let Some(msg) = next else {
                self.draining.borrow_mut()[to] = false;
                return;
            };
            self.send_direct(to, msg).await;
        }
    }
}
