//! `GET /metrics`: every shard's counters in the Prometheus text format (OpenMetrics flavour,
//! as `prometheus-client` writes it). A scrape builds a fresh registry from the shards'
//! snapshots: the shards keep plain per-shard counters and share nothing per message.

use crate::metrics::Snapshot;
use crate::shard::backpressure::DropReason;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The Content-Type of what `render` writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = Vec<(&'static str, String)>;

/// A counter of one number per shard: name, help (the library ends it with a full stop),
/// the number.
type PerShard = (&'static str, &'static str, fn(&Snapshot) -> u64);

const COUNTERS: [PerShard; 10] = [
    (
        "connections_accepted",
        "Connections accepted by the shard's listeners",
        |s| s.connections_accepted,
    ),
    ("bytes_received", "Bytes read from client sockets", |s| {
        s.bytes_received
    }),
    ("bytes_sent", "Bytes written to client sockets", |s| {
        s.bytes_sent
    }),
    (
        "publisher_pauses",
        "Times a publisher (or ring receiver) was paused for backpressure",
        |s| s.publisher_pauses,
    ),
    (
        "slow_disconnects",
        "Subscribers disconnected for staying over their bound",
        |s| s.slow_disconnects,
    ),
    (
        "memory_ceiling_hits",
        "Times a shard went over its share of the memory ceiling",
        |s| s.ceiling_hits,
    ),
    (
        "tls_handshake_failures",
        "TLS handshakes that failed or did not finish in time",
        |s| s.handshake_failures,
    ),
    (
        "logins_refused",
        "Logins refused (credentials, anonymous where not allowed)",
        |s| s.logins_refused,
    ),
    (
        "publishes_denied",
        "PUBLISH packets the ACL did not let their client write",
        |s| s.publishes_denied,
    ),
    (
        "cluster_messages_rejected",
        "Messages from other cluster nodes this node could not read",
        |s| s.cluster_rejected,
    ),
];

const GAUGES: [PerShard; 7] = [
    ("connections", "Client connections with a session", |s| {
        s.clients_connected
    }),
    ("sessions", "Sessions, connected or not", |s| {
        s.clients_total
    }),
    ("subscriptions", "Subscriptions held by sessions", |s| {
        s.subscriptions
    }),
    (
        "queued_messages",
        "Messages waiting in write buffers and session queues",
        |s| s.queued_messages,
    ),
    (
        "queued_bytes",
        "Bytes waiting in write buffers and session queues",
        |s| s.queued_bytes,
    ),
    (
        "publishers_paused",
        "Publishers (or ring receivers) paused now",
        |s| s.publishers_paused,
    ),
    (
        "subscribers_lagging",
        "Reading subscribers lagging past their pause mark now",
        |s| s.subscribers_lagging,
    ),
];

/// The text a scrape gets for these shards' snapshots (in shard order).
pub fn render(shards: &[Snapshot]) -> String {
    let mut registry = Registry::with_prefix("ringcast");
    for (name, help, value) in COUNTERS {
        let family = Family::<Labels, Counter>::default();
        for (i, s) in shards.iter().enumerate() {
            family.get_or_create(&shard_label(i)).inc_by(value(s));
        }
        registry.register(name, help, family);
    }
    for (name, help, value) in GAUGES {
        let family = Family::<Labels, Gauge>::default();
        for (i, s) in shards.iter().enumerate() {
            family
                .get_or_create(&shard_label(i))
                .set(as_gauge(value(s)));
        }
        registry.register(name, help, family);
    }
    register_by_qos(&mut registry, shards);
    register_drops(&mut registry, shards);
    // Every shard holds a replica of the same retained messages: one number, no shard label.
    let retained = Gauge::<i64>::default();
    retained.set(as_gauge(
        shards.iter().map(|s| s.retained).max().unwrap_or(0),
    ));
    registry.register("retained_messages", "Retained messages held", retained);
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &registry);
    out
}

/// Messages received and sent, by shard and QoS.
fn register_by_qos(registry: &mut Registry, shards: &[Snapshot]) {
    let received = Family::<Labels, Counter>::default();
    let sent = Family::<Labels, Counter>::default();
    for (i, s) in shards.iter().enumerate() {
        for qos in 0..3 {
            let mut labels = shard_label(i);
            labels.push(("qos", qos.to_string()));
            received
                .get_or_create(&labels)
                .inc_by(s.received_by_qos[qos]);
            sent.get_or_create(&labels).inc_by(s.sent_by_qos[qos]);
        }
    }
    registry.register(
        "messages_received",
        "PUBLISH packets received from clients",
        received,
    );
    registry.register(
        "messages_sent",
        "PUBLISH deliveries offered to subscribers, at the QoS each gets",
        sent,
    );
}

/// Dropped messages, by shard, reason and QoS.
fn register_drops(registry: &mut Registry, shards: &[Snapshot]) {
    let dropped = Family::<Labels, Counter>::default();
    for (i, s) in shards.iter().enumerate() {
        for (r, reason) in DropReason::ALL.iter().enumerate() {
            for qos in 0..3 {
                let mut labels = shard_label(i);
                labels.push(("reason", reason.name().to_string()));
                labels.push(("qos", qos.to_string()));
                dropped.get_or_create(&labels).inc_by(s.dropped[r][qos]);
            }
        }
    }
    registry.register(
        "messages_dropped",
        "Messages dropped, by reason and QoS",
        dropped,
    );
}

fn shard_label(shard: usize) -> Labels {
    vec![("shard", shard.to_string())]
}

fn as_gauge(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample `name{labels}` in `text`.
    fn sample(text: &str, series: &str) -> Option<u64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn counters_gauges_and_drops_are_written_per_shard_with_help_and_type() {
        let mut a = Snapshot {
            clients_connected: 3,
            bytes_sent: 1000,
            retained: 7,
            ..Snapshot::default()
        };
        a.received_by_qos = [5, 1, 0];
        a.dropped[DropReason::QueueFull as usize][1] = 4;
        let b = Snapshot {
            clients_connected: 2,
            retained: 7,
            ..Snapshot::default()
        };
        let text = render(&[a, b]);
        assert!(text.contains("# TYPE ringcast_connections gauge"));
        assert!(text.contains("# TYPE ringcast_bytes_sent counter"));
        assert!(text.contains("# HELP ringcast_bytes_sent Bytes written to client sockets."));
        assert_eq!(sample(&text, "ringcast_connections{shard=\"0\"}"), Some(3));
        assert_eq!(sample(&text, "ringcast_connections{shard=\"1\"}"), Some(2));
        assert_eq!(
            sample(&text, "ringcast_bytes_sent_total{shard=\"0\"}"),
            Some(1000)
        );
        assert_eq!(
            sample(
                &text,
                "ringcast_messages_received_total{shard=\"0\",qos=\"0\"}"
            ),
            Some(5)
        );
        assert_eq!(
            sample(
                &text,
                "ringcast_messages_dropped_total{shard=\"0\",reason=\"queue_full\",qos=\"1\"}"
            ),
            Some(4)
        );
        // A replica per shard is one set of retained messages, not two.
        assert_eq!(sample(&text, "ringcast_retained_messages"), Some(7));
        assert!(text.trim_end().ends_with("# EOF"));
    }
}
