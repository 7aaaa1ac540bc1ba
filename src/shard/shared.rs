//! Shared subscriptions (`$share/group/filter`) [MQTT-4.8.2]. Every shard keeps every group's
//! members (`ShareJoin`, acknowledged before SUBACK, and `ShareLeave`); the shard where a
//! message is published picks one member per matching group in turn and delivers it there or
//! sends `ShareDeliver` to the member's shard. A member that left on the way passes it on.

use super::message::Message;
use super::msg::{InterestAck, MeshMsg, ShareDeliver, ShareJoin, ShareLeave};
use super::routing::grant;
use super::session::Outgoing;
use super::{SessionKey, Shard, State};
use crate::mesh::ShardId;
use std::rc::Rc;

/// Prefix of a shared subscription's filter [MQTT-4.8.2].
pub const SHARE_PREFIX: &str = "$share/";

/// Most times a shared message is passed on because the member picked for it had gone.
const SHARE_HOPS_MAX: u8 = 8;

/// A message for another shard.
type Remote = (ShardId, MeshMsg);

/// The members of one shared subscription, as every shard keeps them.
#[derive(Default)]
pub(super) struct Group {
    members: Vec<(ShardId, SessionKey)>,
    next: usize,
}

impl Group {
    /// Members that are sessions of shard `shard`.
    pub(super) fn members_on(&self, shard: ShardId) -> usize {
        self.members.iter().filter(|(s, _)| *s == shard).count()
    }

    /// The next member in turn, for an even spread.
    fn pick(&mut self) -> Option<(ShardId, SessionKey)> {
        if self.members.is_empty() {
            return None;
        }
        let member = self.members[self.next % self.members.len()];
        self.next = self.next.wrapping_add(1);
        Some(member)
    }
}

/// The filter part of a shared subscription `$share/group/filter`; None for a plain filter.
fn share_filter(filter: &str) -> Option<&str> {
    let rest = filter.strip_prefix(SHARE_PREFIX)?;
    rest.split_once('/').map(|(_, filter)| filter)
}

/// Adds a member to shared subscription `share`.
pub(super) fn join_group(st: &mut State, share: &str, member: (ShardId, SessionKey)) {
    let group = st.groups.entry(share.to_string()).or_default();
    if group.members.is_empty() {
        let filter = share_filter(share).unwrap_or(share);
        st.group_trie.insert(filter, share.to_string(), ());
    }
    if !group.members.contains(&member) {
        group.members.push(member);
    }
}

/// Removes a member from shared subscription `share`.
pub(super) fn leave_group(st: &mut State, share: &str, member: (ShardId, SessionKey)) {
    let Some(group) = st.groups.get_mut(share) else {
        return;
    };
    group.members.retain(|m| *m != member);
    if group.members.is_empty() {
        st.groups.remove(share);
        let filter = share_filter(share).unwrap_or(share);
        st.group_trie.remove(filter, &share.to_string());
    }
}

impl Shard {
    /// Picks one member of each shared subscription matching the message; delivers to the
    /// members of this shard and returns the messages for members elsewhere.
    pub(super) fn deliver_shared(&self, st: &mut State, message: &Message) -> (bool, Vec<Remote>) {
        // Most brokers have no shared subscription: no need to split the topic once more.
        // On a cluster node NATS picks the member node (a queue group; `shard::cluster`).
        if st.group_trie.is_empty() || self.cluster.is_some() {
            return (false, Vec::new());
        }
        let mut shares = Vec::new();
        st.group_trie
            .for_each_match(message.publish.topic.as_str(), |share, _| {
                shares.push(share.clone())
            });
        let matched = !shares.is_empty();
        let remote = shares
            .into_iter()
            .filter_map(|share| self.dispatch_shared(st, share, message.clone(), 0))
            .collect();
        (matched, remote)
    }

    /// Hands a message of shared subscription `share` to its next member: delivered here
    /// when the member is local, else returned as the message to send (None when the group
    /// has no member left or the message was passed on too often).
    pub(super) fn dispatch_shared(
        &self,
        st: &mut State,
        share: String,
        message: Message,
        hops: u8,
    ) -> Option<Remote> {
        let members = st.groups.get(&share).map_or(0, |g| g.members.len());
        if hops >= SHARE_HOPS_MAX {
            return None;
        }
        for _ in 0..members {
            let Some((shard, member)) = st.groups.get_mut(&share).and_then(Group::pick) else {
                break;
            };
            if shard != self.id() {
                let msg = MeshMsg::ShareDeliver(ShareDeliver {
                    share,
                    member,
                    message,
                    hops: hops + 1,
                    ack: None,
                });
                return Some((shard, msg));
            }
            if self.offer_to_member(st, &share, member, &message) {
                break;
            }
        }
        None
    }

    /// Delivers a shared subscription's message to member session `key` of this shard;
    /// false when that session no longer has the subscription.
    fn offer_to_member(
        &self,
        st: &mut State,
        share: &str,
        key: SessionKey,
        message: &Message,
    ) -> bool {
        let Some(session) = st.sessions.get_mut(&key) else {
            return false;
        };
        let Some(sub) = session.subscriptions.get(share) else {
            return false;
        };
        if !session.may_read(sub, message.publish.topic.as_str()) {
            return false;
        }
        let Some(mut grant) = grant(message, std::iter::once(sub), false) else {
            return false;
        };
        grant.set_share(share.to_string());
        self.metrics.count_sent(grant.qos as usize);
        session.deliver(&message.publish, grant, &self.limits, &mut st.enc);
        true
    }

    /// Gives the shared messages a departing member had not finished to other members.
    pub(super) fn requeue_shared(&self, unfinished: Vec<Outgoing>) {
        let mut remote = Vec::new();
        {
            let mut st = self.state.borrow_mut();
            for mut out in unfinished {
                let Some(share) = out.grant.take_share() else {
                    continue;
                };
                let message = Message {
                    publish: out.publish,
                    origin: 0,
                    expires_at: out.grant.expires_at(),
                };
                remote.extend(self.dispatch_shared(&mut st, share, message, 0));
            }
        }
        for (to, msg) in remote {
            self.mesh.post(to, msg);
        }
    }

    /// Another shard's session joined a shared subscription.
    pub(super) fn on_share_join(&self, join: ShareJoin) {
        let ShareJoin {
            share,
            from,
            member,
            request,
        } = join;
        join_group(&mut self.state.borrow_mut(), &share, (from, member));
        self.mesh
            .post(from, MeshMsg::InterestAck(InterestAck { request }));
    }

    /// Another shard's session left a shared subscription.
    pub(super) fn on_share_leave(&self, leave: ShareLeave) {
        let member = (leave.from, leave.member);
        leave_group(&mut self.state.borrow_mut(), &leave.share, member);
    }

    /// A message for a member of this shard, picked by the publishing shard. Its request
    /// (`ack`) is answered once what this shard stored of it is durable, or passed on with it.
    pub(super) fn on_share_deliver(self: &Rc<Self>, deliver: ShareDeliver) {
        let ShareDeliver {
            share,
            member,
            message,
            hops,
            mut ack,
        } = deliver;
        let before = self.persist.as_ref().map_or(0, |p| p.last());
        let remote = {
            let mut st = self.state.borrow_mut();
            if self.offer_to_member(&mut st, &share, member, &message) {
                None
            } else {
                // The member left on the way; another one gets it.
                self.dispatch_shared(&mut st, share, message, hops)
            }
        };
        if let Some((to, mut msg)) = remote {
            if let MeshMsg::ShareDeliver(next) = &mut msg {
                next.ack = ack.take();
            }
            self.mesh.post(to, msg);
        }
        if let Some((from, request)) = ack {
            self.ack_when_durable(before, from, request);
        }
    }
}
