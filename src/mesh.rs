//! Messages between shards, over glommio's SPSC rings (`channel_mesh`). Generic over the
//! message type: the shard's own list of messages is `shard::msg::MeshMsg`.
//!
//! Every shard can send to every other shard. A message to the shard itself goes through a
//! local queue, so callers never special-case "same shard". Rings are bounded: `send` waits
//! when the ring toward a shard is full, which pauses whatever produced the message (a
//! publisher's reader) instead of growing memory.

use glommio::channels::channel_mesh::Senders;
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::ResourceType;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

/// Index of a shard, 0-based.
pub type ShardId = usize;

/// Identifies a pending request on the shard that made it.
pub type RequestId = u64;

/// This shard's ends of the mesh.
pub struct Mesh<M: Send> {
    id: ShardId,
    senders: Option<Senders<M>>,
    local: LocalSender<M>,
    /// Messages posted while the ring toward a shard was full, in order, per shard.
    backlog: RefCell<Vec<VecDeque<M>>>,
    /// Per shard: a task is sending its backlog; later messages must queue behind it.
    draining: RefCell<Vec<bool>>,
}

impl<M: Send + 'static> Mesh<M> {
    /// Wraps the joined mesh; returns it with the receiver of messages to self.
    pub fn new(id: ShardId, senders: Option<Senders<M>>) -> (Mesh<M>, LocalReceiver<M>) {
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
    pub async fn send(&self, to: ShardId, msg: M) {
        if to == self.id {
            let _ = self.local.try_send(msg);
            return;
        }
        while self.has_backlog(to) {
            futures_lite::future::yield_now().await;
        }
        let Err(msg) = self.try_send(to, msg) else {
            return;
        };
        // Only a full ring waits, boxed: the futures of every caller (each CONNECT's claim,
        // each SUBSCRIBE's announcement) would otherwise carry glommio's send state.
        Box::pin(self.send_direct(to, msg)).await;
    }

    /// Whether messages posted to `to` are still waiting to be sent.
    fn has_backlog(&self, to: ShardId) -> bool {
        self.draining.borrow().get(to).copied().unwrap_or(false)
    }

    async fn send_direct(&self, to: ShardId, msg: M) {
        if let Some(senders) = &self.senders {
            // An error means the peer is gone (shutdown); nothing is left to deliver to.
            let _ = senders.send_to(to, msg).await;
        }
    }

    /// Sends without waiting when the ring toward `to` has room and nothing posted earlier
    /// waits for it; otherwise gives the message back, unsent.
    pub fn try_send(&self, to: ShardId, msg: M) -> Result<(), M> {
        if to == self.id {
            let _ = self.local.try_send(msg);
            return Ok(());
        }
        let Some(senders) = &self.senders else {
            return Ok(());
        };
        if self.has_backlog(to) {
            return Err(msg);
        }
        match senders.try_send_to(to, msg) {
            Err(glommio::GlommioError::WouldBlock(ResourceType::Channel(msg))) => Err(msg),
            // A closed ring means the peer stopped (shutdown): nothing is left to deliver to.
            _ => Ok(()),
        }
    }

    /// Sends without waiting when there is room; otherwise queues the message behind the
    /// others posted to `to` and a background task sends them in order. For control messages
    /// produced where waiting is not possible.
    pub fn post(self: &Rc<Self>, to: ShardId, msg: M) {
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

/// The shard a key (a client id, a retained topic) belongs to: FNV-1a, stable across runs and
/// threads (unlike the std hasher's random seed), since the answer is kept on disk.
pub fn shard_of(key: &str, shards: usize) -> ShardId {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.bytes() {
        hash = (hash ^ byte as u64).wrapping_mul(0x0100_0000_01b3);
    }
    (hash % shards as u64) as ShardId
}
