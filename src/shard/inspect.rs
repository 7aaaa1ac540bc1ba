//! What operators ask of the shards (`crate::ops`): counters, clients, subscription counts, an
//! administrative disconnect. Sessions live on every shard, so a question goes to each shard
//! over the mesh (`MeshMsg::Inspect`) and each answers with plain data (`MeshMsg::Reported`)
//! that the asking shard merges. Nothing here runs per message: only when asked.

use super::msg::{Inspect, MeshMsg, Reported};
use super::query::{ClientInfo, Count, Query, Report, SubscriptionInfo, CLIENTS_PER_PAGE_MAX};
use super::requests::Answer;
use super::session::Session;
use super::{Shard, State, SHARE_PREFIX};
use crate::protocol::{ReasonCode, Version};
use std::rc::Rc;

impl Shard {
    /// Asks every shard (this one too) `query` and waits for all the answers, in no order.
    pub async fn ask_all(self: &Rc<Self>, query: Query) -> Vec<Report> {
        let request = self.requests.open(self.shards);
        for to in 0..self.shards {
            let inspect = Inspect {
                query: query.clone(),
                from: self.id(),
                request,
            };
            self.mesh.post(to, MeshMsg::Inspect(Box::new(inspect)));
        }
        self.requests.wait(request).await.reports
    }

    /// Answers another shard's (or this shard's own) question.
    pub(super) fn on_inspect(&self, inspect: Inspect) {
        let report = self.answer_query(&inspect.query);
        let reported = Reported {
            request: inspect.request,
            report,
        };
        self.mesh
            .post(inspect.from, MeshMsg::Reported(Box::new(reported)));
    }

    /// Records one shard's answer to a question this shard asked.
    pub(super) fn on_reported(&self, reported: Reported) {
        let answer = Answer {
            reports: vec![reported.report],
            ..Answer::default()
        };
        self.requests.answer(reported.request, answer);
    }

    /// This shard's answer to `query`.
    pub fn answer_query(&self, query: &Query) -> Report {
        if let Query::Snapshot = query {
            return Report::Snapshot(Box::new(self.snapshot()));
        }
        let mut st = self.state.borrow_mut();
        let shard = self.id();
        match query {
            Query::Snapshot => Report::Snapshot(Box::default()),
            Query::Clients { after, limit } => {
                Report::Clients(clients_page(&st, shard, after, *limit))
            }
            Query::Client(id) => Report::Client(st.by_client.get(id.as_str()).and_then(|key| {
                let session = st.sessions.get(key)?;
                Some(client_info(session, shard, true))
            })),
            Query::Topic(topic) => Report::Count(count_topic(&st, shard, topic)),
            Query::Filter(filter) => Report::Count(count_filter(&st, shard, filter)),
            Query::TopFilters(n) => Report::Filters(top_filters(&st, *n)),
            Query::Disconnect(id) => Report::Disconnected(disconnect(&mut st, id)),
        }
    }
}

/// Closes the connection of client `id`, if this shard holds one, telling a 5.0 client why.
fn disconnect(st: &mut State, id: &str) -> bool {
    let State {
        sessions,
        by_client,
        enc,
        ..
    } = st;
    let Some(session) = by_client.get(id).and_then(|key| sessions.get_mut(key)) else {
        return false;
    };
    // The connection's task then ends the session as for a lost connection (the will is
    // published: the client did not send DISCONNECT itself).
    session.close_connection(ReasonCode::ADMINISTRATIVE_ACTION, enc)
}

/// Up to `limit` clients of this shard whose id sorts after `after`, in id order.
fn clients_page(st: &State, shard: usize, after: &str, limit: usize) -> Vec<ClientInfo> {
    let limit = limit.min(CLIENTS_PER_PAGE_MAX);
    let mut ids: Vec<&str> = st
        .by_client
        .keys()
        .map(|id| &**id)
        .filter(|id| *id > after)
        .collect();
    // Only the first `limit` need sorting, whatever the number of sessions.
    if ids.len() > limit {
        ids.select_nth_unstable(limit);
        ids.truncate(limit);
    }
    ids.sort_unstable();
    ids.into_iter()
        .filter_map(|id| st.sessions.get(st.by_client.get(id)?))
        .map(|session| client_info(session, shard, false))
        .collect()
}

/// What an operator sees of `session`; its subscriptions too when `with_subscriptions`.
fn client_info(session: &Session, shard: usize, with_subscriptions: bool) -> ClientInfo {
    let mut queued = session.queued_len();
    if let Some(outbox) = &session.outbox {
        queued += outbox.len();
    }
    let mut subscriptions: Vec<SubscriptionInfo> = if with_subscriptions {
        session
            .subscriptions
            .iter()
            .map(|(filter, sub)| SubscriptionInfo {
                filter: filter.clone(),
                qos: sub.options.qos as u8,
                no_local: sub.options.no_local,
                retain_as_published: sub.options.retain_as_published,
                retain_handling: sub.options.retain_handling,
                identifier: sub.id,
            })
            .collect()
    } else {
        Vec::new()
    };
    subscriptions.sort_unstable_by(|a, b| a.filter.cmp(&b.filter));
    ClientInfo {
        client_id: session.client_id.to_string(),
        shard,
        connected: session.is_online(),
        protocol: match session.version {
            Version::V5 => "5.0",
            _ => "3.1.1",
        },
        persistent: session.is_persistent,
        subscription_count: session.subscriptions.len(),
        queued_messages: queued,
        inflight: session.inflight_len(),
        dropped: session.counters.dropped,
        subscriptions,
    }
}

/// Subscriptions of this shard whose filter matches topic name `topic`.
fn count_topic(st: &State, shard: usize, topic: &str) -> Count {
    let mut count = Count::default();
    st.trie
        .for_each_match(topic, |_, _| count.subscriptions += 1);
    // Every shard knows every group's members; each counts only its own sessions.
    st.group_trie.for_each_match(topic, |share, _| {
        if let Some(group) = st.groups.get(share) {
            count.shared_members += group.members_on(shard) as u64;
        }
    });
    count
}

/// Subscriptions of this shard on exactly `filter`.
fn count_filter(st: &State, shard: usize, filter: &str) -> Count {
    if filter.starts_with(SHARE_PREFIX) {
        let members = st.groups.get(filter).map_or(0, |g| g.members_on(shard));
        return Count {
            shared_members: members as u64,
            ..Count::default()
        };
    }
    Count {
        subscriptions: st.trie.count(filter) as u64,
        ..Count::default()
    }
}

/// The `n` filters of this shard with the most subscriptions, most first.
fn top_filters(st: &State, n: usize) -> Vec<(String, u64)> {
    let mut all: Vec<(String, usize)> = Vec::new();
    st.trie.for_each_filter(|f, c| all.push((f.to_owned(), c)));
    let by_count = |a: &(String, usize), b: &(String, usize)| b.1.cmp(&a.1).then(a.0.cmp(&b.0));
    if all.len() > n && n > 0 {
        all.select_nth_unstable_by(n, by_count);
        all.truncate(n);
    }
    all.truncate(n);
    all.sort_unstable_by(by_count);
    all.into_iter().map(|(f, c)| (f, c as u64)).collect()
}
