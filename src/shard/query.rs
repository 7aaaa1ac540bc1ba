//! Operators' questions to the shards and the answers, as plain data that crosses threads
//! (`MeshMsg::Inspect` / `MeshMsg::Reported`); `inspect` asks and answers them.

use crate::metrics::Snapshot;
use serde::Serialize;

/// Clients one shard lists per question at most, whatever the page size asked.
pub const CLIENTS_PER_PAGE_MAX: usize = 1000;

/// A question for every shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Query {
    /// Its counters and gauges now.
    Snapshot,
    /// Up to `limit` of its clients whose id sorts after `after`, in client-id order.
    Clients {
        /// The last client id of the previous page ("" for the first).
        after: String,
        /// Page size.
        limit: usize,
    },
    /// One client, with its subscriptions.
    Client(String),
    /// Subscriptions whose filter matches this topic name.
    Topic(String),
    /// Subscriptions on exactly this filter.
    Filter(String),
    /// The `n` filters with the most subscriptions.
    TopFilters(usize),
    /// Close this client's connection with DISCONNECT 0x98 (Administrative action).
    Disconnect(String),
}

/// One shard's answer.
#[derive(Clone, Debug, PartialEq)]
pub enum Report {
    /// Counters and gauges (boxed: the other answers are a fraction of its size).
    Snapshot(Box<Snapshot>),
    /// Clients in client-id order.
    Clients(Vec<ClientInfo>),
    /// The client asked for, if this shard holds its session.
    Client(Option<ClientInfo>),
    /// Subscriptions counted: ordinary and shared-subscription members.
    Count(Count),
    /// Filters with their subscription counts.
    Filters(Vec<(String, u64)>),
    /// Whether this shard held a connection of that client and closed it.
    Disconnected(bool),
}

/// Subscriptions that match a topic or hold a filter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Count {
    /// Ordinary subscriptions (each gets its own copy of a message).
    pub subscriptions: u64,
    /// Members of shared subscriptions (each group gets one copy between its members).
    pub shared_members: u64,
}

/// One client's session as an operator sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ClientInfo {
    /// The client identifier.
    pub client_id: String,
    /// The shard that holds its session.
    pub shard: usize,
    /// Whether a connection holds the session now.
    pub connected: bool,
    /// "3.1.1" or "5.0".
    pub protocol: &'static str,
    /// Whether the session outlives its connection.
    pub persistent: bool,
    /// Subscriptions held.
    pub subscription_count: usize,
    /// Messages waiting behind the inflight window (and in the write buffer, when connected).
    pub queued_messages: usize,
    /// Outbound QoS 1/2 messages sent and not yet acknowledged.
    pub inflight: usize,
    /// Messages dropped for this session (queue full, offline QoS 0, too large).
    pub dropped: u64,
    /// Its subscriptions (only when one client is asked for).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub subscriptions: Vec<SubscriptionInfo>,
}

/// One subscription with its options.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SubscriptionInfo {
    /// The filter as the client wrote it (a shared one keeps `$share/group/`).
    pub filter: String,
    /// Maximum QoS granted.
    pub qos: u8,
    /// 5.0 No Local.
    pub no_local: bool,
    /// 5.0 Retain As Published.
    pub retain_as_published: bool,
    /// 5.0 Retain Handling.
    pub retain_handling: u8,
    /// 5.0 Subscription Identifier.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identifier: Option<u32>,
}
