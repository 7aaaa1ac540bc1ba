//! Subscriptions of this shard's sessions, and the interest other shards are told of: a shard
//! announces a filter when its first local subscriber arrives (and waits until every shard
//! applied it, so a publish anywhere after the SUBACK reaches the subscriber) and withdraws it
//! when the last one leaves. A shared subscription instead makes its session a member of its
//! group on every shard (`shared`).

use super::msg::{InterestAck, InterestAdd, InterestRemove, MeshMsg, ShareJoin, ShareLeave};
use super::session::{Session, Subscription};
use super::shared::{join_group, leave_group, SHARE_PREFIX};
use super::{SessionKey, Shard, State};
use crate::mesh::ShardId;

impl Shard {
    /// Adds a subscription; returns whether other shards must be told (a filter new to this
    /// shard, or a new shared-subscription member).
    pub fn subscribe(&self, key: SessionKey, filter: &str, sub: Subscription) -> bool {
        let mut st = self.state.borrow_mut();
        let Some(session) = st.sessions.get_mut(&key) else {
            return false;
        };
        session.note_subscribe(filter, sub);
        if let Some(old) = session.subscriptions.get_mut(filter) {
            *old = sub;
            if !filter.starts_with(SHARE_PREFIX) {
                st.trie.insert(filter, key, sub);
            }
            return false;
        }
        session.subscriptions.insert(filter.to_string(), sub);
        add_subscription(&mut st, self.id(), key, filter, sub)
    }

    /// Removes a subscription; returns (whether it existed, whether the filter left this shard).
    pub fn unsubscribe(&self, key: SessionKey, filter: &str) -> (bool, bool) {
        let mut st = self.state.borrow_mut();
        let existed = st.sessions.get_mut(&key).is_some_and(|s| {
            s.cursors.remove(filter);
            s.note_unsubscribe(filter);
            s.subscriptions.remove(filter).is_some()
        });
        if !existed {
            return (false, false);
        }
        (true, drop_subscription(&mut st, self.id(), key, filter))
    }

    /// Starts streaming the retained messages matching `filter` to a session that just
    /// subscribed (see `cursor`); `feed_retained` (`feeder`) sends them.
    pub fn send_retained(&self, key: SessionKey, filter: &str, sub: Subscription) {
        if let Some(session) = self.state.borrow_mut().sessions.get_mut(&key) {
            session.cursors.add(filter, sub.options.qos, sub.id);
        }
    }

    /// Tells every other shard that this shard now subscribes to `filters`, and waits until
    /// all have applied it, so a publish anywhere after the SUBACK reaches the subscriber.
    /// A shared subscription's `filters` (`$share/…`) make session `key` a member of its
    /// group on every shard.
    /// A session that arrived from another shard then settles what was published while it
    /// moved (see `handoff`).
    pub async fn announce(&self, key: SessionKey, filters: Vec<String>) {
        self.announce_filters(key, filters).await;
        self.settle_arrival(key).await;
    }

    /// Announces the shared subscriptions of sessions restored at start-up (their plain
    /// filters every shard noted from the exchange itself, `Shard::restore`).
    pub async fn announce_restored(&self, placed: Vec<(SessionKey, Vec<String>)>) {
        for (key, filters) in placed {
            let shared: Vec<String> = filters
                .into_iter()
                .filter(|f| f.starts_with(SHARE_PREFIX))
                .collect();
            self.announce_filters(key, shared).await;
        }
    }

    /// `announce` without settling.
    async fn announce_filters(&self, key: SessionKey, filters: Vec<String>) {
        if self.cluster.is_some() {
            // Boxed: every CONNECT's and SUBSCRIBE's future would otherwise hold its state.
            Box::pin(self.cluster_subscribe(&filters)).await;
        }
        if self.shards == 1 || filters.is_empty() {
            return;
        }
        let request = self.requests.open((self.shards - 1) * filters.len());
        let from = self.id();
        for filter in filters {
            for to in (0..self.shards).filter(|&s| s != from) {
                let filter = filter.clone();
                let msg = if filter.starts_with(SHARE_PREFIX) {
                    let (share, member) = (filter, key);
                    MeshMsg::ShareJoin(ShareJoin {
                        share,
                        from,
                        member,
                        request,
                    })
                } else {
                    MeshMsg::InterestAdd(InterestAdd {
                        filter,
                        from,
                        request,
                    })
                };
                self.mesh.send(to, msg).await;
            }
        }
        self.requests.wait(request).await;
    }

    /// Tells every other shard that this shard no longer subscribes to `filters`, and that
    /// session `key` left the shared subscriptions among them.
    pub fn withdraw(&self, key: SessionKey, filters: Vec<String>) {
        self.cluster_unsubscribe(&filters);
        let from = self.id();
        for filter in filters {
            for to in (0..self.shards).filter(|&s| s != from) {
                let filter = filter.clone();
                let msg = if filter.starts_with(SHARE_PREFIX) {
                    let (share, member) = (filter, key);
                    MeshMsg::ShareLeave(ShareLeave {
                        share,
                        from,
                        member,
                    })
                } else {
                    MeshMsg::InterestRemove(InterestRemove { filter, from })
                };
                self.mesh.post(to, msg);
            }
        }
    }

    /// Calls `visit` with every filter subscribed anywhere in the broker, as far as this shard
    /// knows, and how many subscriptions this shard holds on it (None: another shard's, or a
    /// shared subscription's filter). A bridge asks its remote only for what someone wants.
    pub fn for_each_filter(&self, mut visit: impl FnMut(&str, Option<usize>)) {
        let st = self.state.borrow();
        st.trie
            .for_each_filter(|filter, count| visit(filter, Some(count)));
        st.interest.for_each(|filter, _, _| visit(filter, None));
        for share in st.groups.keys() {
            visit(crate::protocol::topic::filter_part(share), None);
        }
    }

    /// Another shard has a first subscriber on a filter.
    pub(super) fn on_interest_add(&self, add: InterestAdd) {
        let InterestAdd {
            filter,
            from,
            request,
        } = add;
        self.state.borrow_mut().interest.insert(&filter, from, ());
        self.mesh
            .post(from, MeshMsg::InterestAck(InterestAck { request }));
    }

    /// Another shard's last subscriber on a filter left.
    pub(super) fn on_interest_remove(&self, remove: InterestRemove) {
        let mut st = self.state.borrow_mut();
        st.interest.remove(&remove.filter, &remove.from);
    }
}

/// Removes a session and its subscriptions; returns it with the filters no longer
/// subscribed on this shard and the shared subscriptions it left.
pub(super) fn remove_session(
    st: &mut State,
    shard: ShardId,
    key: SessionKey,
) -> Option<(Session, Vec<String>)> {
    let session = forget_session(st, key)?;
    let gone = drop_subscriptions(st, shard, key, session.subscriptions.keys());
    Some((session, gone))
}

/// Removes a session, leaving its subscriptions indexed.
pub(super) fn forget_session(st: &mut State, key: SessionKey) -> Option<Session> {
    let session = *st.sessions.remove(&key)?;
    if st.by_client.get(&*session.client_id) == Some(&key) {
        st.by_client.remove(&*session.client_id);
    }
    Some(session)
}

/// Drops session `key`'s subscriptions on `filters`; returns the filters no longer
/// subscribed on this shard and the shared subscriptions it left (for `withdraw`).
pub(super) fn drop_subscriptions<'a>(
    st: &mut State,
    shard: ShardId,
    key: SessionKey,
    filters: impl IntoIterator<Item = &'a String>,
) -> Vec<String> {
    filters
        .into_iter()
        .filter(|filter| drop_subscription(st, shard, key, filter))
        .cloned()
        .collect()
}

/// Indexes session `key`'s subscription on `filter` on this shard; true when other shards
/// must be told (first local subscriber of a filter, or any shared subscription).
pub(super) fn add_subscription(
    st: &mut State,
    shard: ShardId,
    key: SessionKey,
    filter: &str,
    sub: Subscription,
) -> bool {
    if filter.starts_with(SHARE_PREFIX) {
        join_group(st, filter, (shard, key));
        return true;
    }
    // The trie counts a filter's subscriptions: a map of counts by filter beside it held
    // ~75 bytes per idle device (its key and its slot).
    st.trie.insert(filter, key, sub).is_none() && st.trie.count(filter) == 1
}

/// Undoes `add_subscription`; true when other shards must be told.
pub(super) fn drop_subscription(
    st: &mut State,
    shard: ShardId,
    key: SessionKey,
    filter: &str,
) -> bool {
    if filter.starts_with(SHARE_PREFIX) {
        leave_group(st, filter, (shard, key));
        return true;
    }
    st.trie.remove(filter, &key).is_some() && st.trie.count(filter) == 0
}
