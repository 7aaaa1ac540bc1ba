//! Everything one shard can tell another, carried by the mesh (`crate::mesh`): one struct per
//! message. `Shard::on_message` hands each to a method in the module of its concept.

use super::message::Message;
use super::query::{Query, Report};
use super::session::SessionState;
use super::SessionKey;
use crate::mesh::{RequestId, ShardId};
use glommio::net::AcceptedTcpStream;

/// Everything one shard can tell another.
pub enum MeshMsg {
    /// A freshly accepted connection placed on this shard (the server starts its task).
    /// (The second field is the index of the listener that accepted it.)
    Accepted(AcceptedTcpStream, usize),
    /// A publish for this shard's local subscribers (shared subscriptions excepted: the
    /// publishing shard picks their member). Handled in `routing`.
    Publish(Message),
    /// A run of publishes from one client on one topic (`routing::is_run`), for this shard's
    /// local subscribers: each gets the whole run at once (`Shard::deliver_run`).
    PublishRun(Vec<Message>),
    /// A QoS 1/2 publish whose publisher's acknowledgement waits until what this shard
    /// stores of it is durable: answer `InterestAck` to the shard and request then.
    PublishDurable(Message, ShardId, RequestId),
    /// A retained message for this shard's replica (`routing`).
    Retain(Retain),
    /// A member joined a shared subscription (`shared`).
    ShareJoin(ShareJoin),
    /// A member left a shared subscription (`shared`).
    ShareLeave(ShareLeave),
    /// A message for one member of a shared subscription (`shared`).
    ShareDeliver(ShareDeliver),
    /// Another shard subscribes to a filter (`subscriptions`).
    InterestAdd(InterestAdd),
    /// Another shard no longer subscribes to a filter (`subscriptions`).
    InterestRemove(InterestRemove),
    /// An `InterestAdd`, `ShareJoin` or acknowledged `Retain` has been applied.
    InterestAck(InterestAck),
    /// To a client id's home shard: a connection wants the client id (`takeover`).
    Claim(Claim),
    /// From the home shard to the holder of a client id: close it, hand it on (`takeover`).
    Evict(Evict),
    /// The answer to a `Claim`: the old session's state, if it had one to give (`takeover`).
    Handoff(Handoff),
    /// To the home shard: a session is gone (`takeover`).
    Release(Release),
    /// From the new holder of a handed-over session to every shard: pass it on (`handoff`).
    Settle(Settle),
    /// To the shard keeping a handed-over session's stub: one shard passed `Settle` on.
    Settled(Settle),
    /// An operator's question for this shard (`inspect`); boxed, being rare.
    Inspect(Box<Inspect>),
    /// One shard's answer to an `Inspect` (`inspect`).
    Reported(Box<Reported>),
}

/// An operator's question, asked by shard `from` of every shard.
pub struct Inspect {
    /// The question.
    pub query: Query,
    /// Who asks.
    pub from: ShardId,
    /// Request to answer with `Reported`.
    pub request: RequestId,
}

/// One shard's answer to an `Inspect`.
pub struct Reported {
    /// The request answered.
    pub request: RequestId,
    /// The answer.
    pub report: Report,
}

/// Set (Some) or clear (None) the retained message of a topic in this shard's replica.
pub struct Retain {
    /// Topic name.
    pub topic: String,
    /// The retained PUBLISH, or None to clear.
    pub publish: Option<Message>,
    /// When set, answer `InterestAck` to this shard and request once applied (QoS 1/2
    /// retained publishes are acknowledged to their publisher only after every replica has
    /// them).
    pub ack: Option<(ShardId, RequestId)>,
    /// Whether the same message follows on this ring as a publish for this shard's
    /// subscribers: their retained feeds skip its topic from now on (see `on_retain`).
    pub is_delivered_too: bool,
}

/// Session `member` of shard `from` joined shared subscription `share`
/// (`$share/group/filter`); answer `InterestAck`. Every shard keeps every group's members.
pub struct ShareJoin {
    /// The shared subscription.
    pub share: String,
    /// Shard of the member.
    pub from: ShardId,
    /// Session of the member on that shard.
    pub member: SessionKey,
    /// Request to acknowledge.
    pub request: RequestId,
}

/// Session `member` of shard `from` left shared subscription `share`.
pub struct ShareLeave {
    /// The shared subscription.
    pub share: String,
    /// Shard of the member.
    pub from: ShardId,
    /// Session of the member on that shard.
    pub member: SessionKey,
}

/// A message for one member of a shared subscription, picked by the publishing shard.
pub struct ShareDeliver {
    /// The shared subscription.
    pub share: String,
    /// The member's session on the receiving shard.
    pub member: SessionKey,
    /// The message.
    pub message: Message,
    /// Times the message was passed on because its member had gone; bounds the passing.
    pub hops: u8,
    /// The publishing shard's request to answer once this message's records are durable
    /// (passed on with the message when its member had gone).
    pub ack: Option<(ShardId, RequestId)>,
}

/// Shard `from` now has local subscribers on `filter`; answer `InterestAck`.
pub struct InterestAdd {
    /// The filter.
    pub filter: String,
    /// Who subscribes.
    pub from: ShardId,
    /// Request to acknowledge.
    pub request: RequestId,
}

/// Shard `from` has no more local subscribers on `filter`.
pub struct InterestRemove {
    /// The filter.
    pub filter: String,
    /// Who unsubscribed.
    pub from: ShardId,
}

/// One answer to a request that carries nothing back.
pub struct InterestAck {
    /// The request answered.
    pub request: RequestId,
}

/// To a client id's home shard: a connection on `from` wants the client id.
pub struct Claim {
    /// The client id.
    pub client_id: String,
    /// Shard of the new connection.
    pub from: ShardId,
    /// Token of the new connection.
    pub token: u64,
    /// Request to answer with `Handoff`.
    pub request: RequestId,
    /// Whether the new connection wants the old session's state.
    pub wants_state: bool,
}

/// From the home shard to the shard holding the client id: close it, hand its state on.
#[derive(Debug)]
pub struct Evict {
    /// The client id.
    pub client_id: String,
    /// Token of the connection that holds it (or held it last).
    pub token: u64,
    /// Shard of the new connection.
    pub to: ShardId,
    /// Request to answer with `Handoff`.
    pub request: RequestId,
    /// Whether to send the session state.
    pub wants_state: bool,
}

/// The answer to a `Claim`: the old session's state, if it had one to give.
pub struct Handoff {
    /// The request answered.
    pub request: RequestId,
    /// The session state.
    pub state: Option<Box<SessionState>>,
    /// Where the old session's stub holds what was published since (see `handoff`).
    pub stub: Option<StubRef>,
}

/// Where a session handed to another shard left its stub (see `handoff`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StubRef {
    /// The shard the session left.
    pub shard: ShardId,
    /// The stub's key there (the session's old key).
    pub key: SessionKey,
}

/// From the new holder of a handed-over session (shard `to`) to every shard, which passes it
/// on to the stub's shard behind everything it routed before; the stub's shard answers
/// `request` with `Handoff` once every shard has.
#[derive(Clone, Copy, Debug)]
pub struct Settle {
    /// The stub to settle.
    pub stub: StubRef,
    /// The new holder's shard.
    pub to: ShardId,
    /// Its request, answered with what the stub held.
    pub request: RequestId,
}

/// To the home shard: the session of connection `token` is gone.
pub struct Release {
    /// The client id.
    pub client_id: String,
    /// The connection whose session ended.
    pub token: u64,
}
