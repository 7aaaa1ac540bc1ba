//! One subscription as a session, the trie and the store keep it.

use crate::protocol::SubscriptionOptions;

/// One subscription as a session and the trie keep it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Subscription {
    /// Options from the SUBSCRIBE entry.
    pub options: SubscriptionOptions,
    /// 5.0 Subscription Identifier from the SUBSCRIBE, returned with each matching PUBLISH.
    pub id: Option<u32>,
    /// Whether the ACL lets the client read only some of what the filter matches, so each
    /// message is checked (`Session::may_read`); false when it may read all of it.
    pub is_filtered: bool,
}
