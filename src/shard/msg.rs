//! Everything one shard can tell another, carried by the mesh (`crate::mesh`).

use super::session::SessionState;
use super::{Message, SessionKey};
use crate::mesh::{RequestId, ShardId};
use glommio::net::AcceptedTcpStream;

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
