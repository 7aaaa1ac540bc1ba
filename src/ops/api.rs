//! The JSON API under `/api/v1/`: what every shard answered, merged into one document. The
//! merging is plain functions of the shards' reports, tested without a broker.

use crate::metrics::Snapshot;
use crate::shard::backpressure::DropReason;
use crate::shard::query::{ClientInfo, Count, Report, CLIENTS_PER_PAGE_MAX};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// Clients on a page when the request does not say.
pub const CLIENTS_PER_PAGE_DEFAULT: usize = 100;
/// Filters `/api/v1/topics` lists when the request does not say.
pub const TOP_FILTERS_DEFAULT: usize = 10;
/// Most filters `/api/v1/topics` lists.
pub const TOP_FILTERS_MAX: usize = 100;

/// `/api/v1/stats`: the broker's totals, drops by reason, and each shard's numbers.
pub fn stats(mut shards: Vec<Snapshot>) -> Value {
    let mut total = Snapshot::default();
    for s in &shards {
        total.add(s);
    }
    // Every shard holds the same retained messages; a shard's own figure would mislead.
    for s in &mut shards {
        s.retained = total.retained;
    }
    let mut total = summary(&total);
    if let Value::Object(fields) = &mut total {
        fields.remove("shard");
    }
    json!({
        "total": total,
        "shards": shards.iter().map(summary).collect::<Vec<_>>(),
    })
}

/// One snapshot as the API shows it: its fields, with drops keyed by reason and QoS.
fn summary(s: &Snapshot) -> Value {
    let mut value = serde_json::to_value(s).unwrap_or(Value::Null);
    if let Value::Object(fields) = &mut value {
        let mut dropped = Map::new();
        for (r, reason) in DropReason::ALL.iter().enumerate() {
            let row = s.dropped[r];
            dropped.insert(
                reason.name().to_string(),
                json!({"qos0": row[0], "qos1": row[1], "qos2": row[2], "total": row.iter().sum::<u64>()}),
            );
        }
        fields.insert("dropped".to_string(), Value::Object(dropped));
        fields.insert("dropped_total".to_string(), json!(s.dropped_total()));
    }
    value
}

/// Snapshots out of the reports, in shard order.
pub fn snapshots(reports: Vec<Report>) -> Vec<Snapshot> {
    let mut out: Vec<Snapshot> = reports
        .into_iter()
        .filter_map(|r| match r {
            Report::Snapshot(s) => Some(*s),
            _ => None,
        })
        .collect();
    out.sort_by_key(|s| s.shard);
    out
}

/// `/api/v1/clients`: one page of every shard's clients, in client-id order, and the cursor
/// of the next page (null on the last).
pub fn clients_page(reports: Vec<Report>, limit: usize) -> Value {
    let mut all: Vec<ClientInfo> = reports
        .into_iter()
        .flat_map(|r| match r {
            Report::Clients(clients) => clients,
            _ => Vec::new(),
        })
        .collect();
    all.sort_by(|a, b| a.client_id.cmp(&b.client_id));
    let more = all.len() > limit;
    all.truncate(limit);
    let next = more
        .then(|| all.last().map(|c| c.client_id.clone()))
        .flatten();
    json!({ "clients": all, "next": next })
}

/// The page size a request asks for, within bounds.
pub fn page_size(asked: Option<&str>) -> usize {
    asked
        .and_then(|s| s.parse().ok())
        .unwrap_or(CLIENTS_PER_PAGE_DEFAULT)
        .clamp(1, CLIENTS_PER_PAGE_MAX)
}

/// `/api/v1/clients/{id}`: the client's session, if a shard holds it (a connected one first,
/// should a session be moving between shards).
pub fn client(reports: Vec<Report>) -> Option<ClientInfo> {
    reports
        .into_iter()
        .filter_map(|r| match r {
            Report::Client(c) => c,
            _ => None,
        })
        .max_by_key(|c| c.connected)
}

/// Counts summed over shards.
pub fn count(reports: Vec<Report>) -> Count {
    let mut total = Count::default();
    for r in reports {
        if let Report::Count(c) = r {
            total.subscriptions += c.subscriptions;
            total.shared_members += c.shared_members;
        }
    }
    total
}

/// The `n` filters with the most subscriptions over all shards, most first.
pub fn top_filters(reports: Vec<Report>, n: usize) -> Value {
    let mut sums: BTreeMap<String, u64> = BTreeMap::new();
    for r in reports {
        if let Report::Filters(filters) = r {
            for (filter, count) in filters {
                *sums.entry(filter).or_default() += count;
            }
        }
    }
    let mut all: Vec<(String, u64)> = sums.into_iter().collect();
    all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    all.truncate(n);
    let filters: Vec<Value> = all
        .into_iter()
        .map(|(filter, subscriptions)| json!({"filter": filter, "subscriptions": subscriptions}))
        .collect();
    json!({ "filters": filters })
}

/// Whether any shard closed a connection.
pub fn disconnected(reports: &[Report]) -> bool {
    reports
        .iter()
        .any(|r| matches!(r, Report::Disconnected(true)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(id: &str, shard: usize, connected: bool) -> ClientInfo {
        ClientInfo {
            client_id: id.to_string(),
            shard,
            connected,
            ..ClientInfo::default()
        }
    }

    #[test]
    fn stats_sums_shards_and_keys_drops_by_reason() {
        let mut a = Snapshot {
            shard: 0,
            clients_connected: 2,
            messages_received: 10,
            retained: 3,
            ..Snapshot::default()
        };
        a.dropped[DropReason::Offline as usize][0] = 4;
        let b = Snapshot {
            shard: 1,
            clients_connected: 1,
            messages_received: 5,
            retained: 3,
            ..Snapshot::default()
        };
        let v = stats(vec![a, b]);
        assert_eq!(v["total"]["clients_connected"], 3);
        assert_eq!(v["total"]["messages_received"], 15);
        assert_eq!(v["total"]["retained"], 3);
        assert_eq!(v["total"]["dropped"]["offline"]["qos0"], 4);
        assert_eq!(v["total"]["dropped_total"], 4);
        assert_eq!(v["shards"][1]["messages_received"], 5);
    }

    #[test]
    fn snapshots_come_back_in_shard_order() {
        let reports = [2, 0, 1]
            .map(|shard| {
                Report::Snapshot(Box::new(Snapshot {
                    shard,
                    ..Snapshot::default()
                }))
            })
            .to_vec();
        let order: Vec<usize> = snapshots(reports).iter().map(|s| s.shard).collect();
        assert_eq!(order, [0, 1, 2]);
    }

    #[test]
    fn clients_pages_merge_shards_in_id_order_with_a_cursor() {
        let reports = vec![
            Report::Clients(vec![client("a", 0, true), client("d", 0, false)]),
            Report::Clients(vec![client("b", 1, true), client("c", 1, true)]),
        ];
        let v = clients_page(reports.clone(), 3);
        let ids: Vec<&str> = v["clients"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["client_id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert_eq!(v["next"], "c");
        assert_eq!(clients_page(reports, 4)["next"], Value::Null);
    }

    #[test]
    fn page_size_defaults_and_stays_within_bounds() {
        assert_eq!(page_size(None), CLIENTS_PER_PAGE_DEFAULT);
        assert_eq!(page_size(Some("0")), 1);
        assert_eq!(page_size(Some("999999")), CLIENTS_PER_PAGE_MAX);
        assert_eq!(page_size(Some("junk")), CLIENTS_PER_PAGE_DEFAULT);
    }

    #[test]
    fn a_connected_session_wins_over_a_stale_one() {
        let reports = vec![
            Report::Client(Some(client("x", 0, false))),
            Report::Client(None),
            Report::Client(Some(client("x", 1, true))),
        ];
        assert_eq!(super::client(reports).map(|c| c.shard), Some(1));
    }

    #[test]
    fn top_filters_sum_over_shards() {
        let reports = vec![
            Report::Filters(vec![("a/#".into(), 2), ("b".into(), 5)]),
            Report::Filters(vec![("a/#".into(), 4)]),
        ];
        let v = top_filters(reports, 1);
        assert_eq!(v["filters"][0]["filter"], "a/#");
        assert_eq!(v["filters"][0]["subscriptions"], 6);
        assert_eq!(v["filters"].as_array().unwrap().len(), 1);
    }
}
