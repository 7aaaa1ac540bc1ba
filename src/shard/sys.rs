//! `$SYS/broker/...`: every `sys_interval_secs` each shard copies its counters into the shared
//! `metrics::Board`; shard 0 sums them and publishes retained QoS 0 messages under mosquitto's
//! topic names where mosquitto has one (so existing dashboards work) and under
//! `$SYS/broker/ringcast/...` for the rest.

use super::{Message, Shard};
use crate::metrics::{Board, Snapshot};
use crate::protocol::{MqttString, Props, Publish, QoS};
use crate::shard::backpressure::DropReason;
use bytes::Bytes;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

impl Shard {
    /// This shard's counters and gauges now.
    pub fn snapshot(&self) -> Snapshot {
        let st = self.state.borrow();
        let p = &self.pressure;
        let mut s = Snapshot {
            shard: self.id(),
            clients_total: st.sessions.len() as u64,
            messages_received: self.metrics.messages_received(),
            messages_sent: self.metrics.messages_sent(),
            received_by_qos: self.metrics.received_by_qos.each_ref().map(|c| c.get()),
            sent_by_qos: self.metrics.sent_by_qos.each_ref().map(|c| c.get()),
            retained: st.retained.len() as u64,
            connections_accepted: self.metrics.connections_accepted.get(),
            bytes_received: self.metrics.bytes_received.get(),
            handshake_failures: self.metrics.handshake_failures.get(),
            logins_refused: self.metrics.logins_refused.get(),
            publishes_denied: self.metrics.publishes_denied.get(),
            cluster_rejected: self.metrics.cluster_rejected.get(),
            bytes_sent: p.bytes_sent(),
            queued_bytes: p.queued_bytes() as u64,
            slow_disconnects: p.slow_disconnects(),
            publisher_pauses: p.pauses(),
            publishers_paused: p.paused_now(),
            subscribers_lagging: p.lagging() as u64,
            ceiling_hits: p.ceiling_hits(),
            ..Snapshot::default()
        };
        if let Some(persist) = &self.persist {
            let stats = persist.store().stats();
            s.store_failures = stats.failures;
            s.store_bytes_written = stats.bytes_written;
        }
        for (r, reason) in DropReason::ALL.iter().enumerate() {
            for (q, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
                .into_iter()
                .enumerate()
            {
                s.dropped[r][q] = p.dropped(*reason, qos);
            }
        }
        for session in st.sessions.values() {
            s.subscriptions += session.subscriptions.len() as u64;
            s.queued_messages += session.queued_len() as u64;
            if let Some(outbox) = &session.outbox {
                s.clients_connected += 1;
                s.queued_messages += outbox.len() as u64;
            }
        }
        s
    }
}

/// Runs on every shard while the broker runs: snapshots every `interval`; shard 0 publishes.
pub async fn run(shard: Rc<Shard>, board: Arc<Board>, interval: Duration) {
    let started = Instant::now();
    let mut loads = Loads::default();
    loop {
        glommio::timer::sleep(interval).await;
        board.store(shard.id(), shard.snapshot());
        if shard.id() != 0 {
            continue;
        }
        let shards = board.shards();
        let mut total = Snapshot::default();
        for s in &shards {
            total.add(s);
        }
        let mut all = topics(&total, &shards, started.elapsed());
        all.extend(loads.update(&total, interval));
        for (topic, value) in all {
            shard
                .route(Message::received(sys_publish(&topic, value), 0))
                .await;
        }
    }
}

/// mosquitto's `$SYS/broker/load/...`: per-minute rates averaged over 1, 5 and 15 minutes.
#[derive(Default)]
pub struct Loads {
    last: Option<[u64; 4]>,
    averages: [[f64; 3]; 4],
}

impl Loads {
    const NAMES: [&'static str; 4] = [
        "messages/received",
        "messages/sent",
        "bytes/received",
        "bytes/sent",
    ];
    const PERIODS_MINS: [u64; 3] = [1, 5, 15];

    /// Folds in the totals seen `interval` after the previous ones; returns the topics.
    pub fn update(&mut self, total: &Snapshot, interval: Duration) -> Vec<(String, String)> {
        let now = [
            total.messages_received,
            total.messages_sent,
            total.bytes_received,
            total.bytes_sent,
        ];
        let secs = interval.as_secs_f64().max(0.001);
        let mut out = Vec::new();
        for (i, name) in Self::NAMES.iter().enumerate() {
            let delta = self.last.map_or(0, |last| now[i].saturating_sub(last[i]));
            let per_min = delta as f64 * 60.0 / secs;
            for (j, mins) in Self::PERIODS_MINS.iter().enumerate() {
                // The same exponential decay mosquitto uses.
                let k = (-secs / (*mins as f64 * 60.0)).exp();
                let avg = &mut self.averages[i][j];
                *avg = k * (*avg - per_min) + per_min;
                out.push((
                    format!("$SYS/broker/load/{name}/{mins}min"),
                    format!("{avg:.2}"),
                ));
            }
        }
        self.last = Some(now);
        out
    }
}

fn sys_publish(topic: &str, value: String) -> Publish {
    Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: true,
        // `$SYS/...` names built here are valid topic names.
        topic: MqttString::from_str_checked(topic).unwrap_or_default(),
        pkid: 0,
        properties: Props::default(),
        payload: Bytes::from(value),
    }
}

/// Every `$SYS` topic with its value.
pub fn topics(total: &Snapshot, shards: &[Snapshot], uptime: Duration) -> Vec<(String, String)> {
    let b = "$SYS/broker";
    let mut out = vec![
        (
            format!("{b}/version"),
            format!("ringcast {}", env!("CARGO_PKG_VERSION")),
        ),
        (
            format!("{b}/uptime"),
            format!("{} seconds", uptime.as_secs()),
        ),
        (
            format!("{b}/clients/connected"),
            total.clients_connected.to_string(),
        ),
        (
            format!("{b}/clients/total"),
            total.clients_total.to_string(),
        ),
        (
            format!("{b}/subscriptions/count"),
            total.subscriptions.to_string(),
        ),
        (
            format!("{b}/messages/received"),
            total.messages_received.to_string(),
        ),
        (
            format!("{b}/messages/sent"),
            total.messages_sent.to_string(),
        ),
        (
            format!("{b}/publish/messages/received"),
            total.messages_received.to_string(),
        ),
        (
            format!("{b}/publish/messages/sent"),
            total.messages_sent.to_string(),
        ),
        (
            format!("{b}/publish/messages/dropped"),
            total.dropped_total().to_string(),
        ),
        (
            format!("{b}/bytes/received"),
            total.bytes_received.to_string(),
        ),
        (format!("{b}/bytes/sent"), total.bytes_sent.to_string()),
        (
            format!("{b}/retained messages/count"),
            total.retained.to_string(),
        ),
        (
            format!("{b}/store/messages/count"),
            total.queued_messages.to_string(),
        ),
        (
            format!("{b}/store/messages/bytes"),
            total.queued_bytes.to_string(),
        ),
    ];
    out.extend(ringcast_topics(&format!("{b}/ringcast"), total));
    for (i, s) in shards.iter().enumerate() {
        let prefix = format!("{b}/ringcast/shard/{i}");
        let connected = s.clients_connected.to_string();
        out.push((format!("{prefix}/clients/connected"), connected));
        out.extend(ringcast_topics(&prefix, s));
    }
    out
}

/// ringcast's own counters, under `prefix`.
fn ringcast_topics(prefix: &str, s: &Snapshot) -> Vec<(String, String)> {
    let mut out = vec![
        (
            format!("{prefix}/messages/received"),
            s.messages_received.to_string(),
        ),
        (
            format!("{prefix}/messages/sent"),
            s.messages_sent.to_string(),
        ),
        (
            format!("{prefix}/bytes/received"),
            s.bytes_received.to_string(),
        ),
        (format!("{prefix}/bytes/sent"), s.bytes_sent.to_string()),
        (
            format!("{prefix}/connections/accepted"),
            s.connections_accepted.to_string(),
        ),
        (format!("{prefix}/dropped"), s.dropped_total().to_string()),
        (
            format!("{prefix}/queued/messages"),
            s.queued_messages.to_string(),
        ),
        (format!("{prefix}/queued/bytes"), s.queued_bytes.to_string()),
        (
            format!("{prefix}/slow_disconnects"),
            s.slow_disconnects.to_string(),
        ),
        (
            format!("{prefix}/publishers/paused"),
            s.publishers_paused.to_string(),
        ),
        (
            format!("{prefix}/publishers/pauses"),
            s.publisher_pauses.to_string(),
        ),
        (
            format!("{prefix}/subscribers/lagging"),
            s.subscribers_lagging.to_string(),
        ),
        (format!("{prefix}/ceiling/hits"), s.ceiling_hits.to_string()),
        (
            format!("{prefix}/store/failures"),
            s.store_failures.to_string(),
        ),
        (
            format!("{prefix}/store/bytes/written"),
            s.store_bytes_written.to_string(),
        ),
        (
            format!("{prefix}/tls/handshake_failures"),
            s.handshake_failures.to_string(),
        ),
        (
            format!("{prefix}/logins/refused"),
            s.logins_refused.to_string(),
        ),
        (
            format!("{prefix}/publishes/denied"),
            s.publishes_denied.to_string(),
        ),
    ];
    out.push((
        format!("{prefix}/cluster/rejected"),
        s.cluster_rejected.to_string(),
    ));
    out.extend(dropped_topics(prefix, s));
    out
}

/// The drop counters under `prefix`, per reason and QoS.
fn dropped_topics<'a>(
    prefix: &'a str,
    s: &'a Snapshot,
) -> impl Iterator<Item = (String, String)> + 'a {
    DropReason::ALL
        .iter()
        .enumerate()
        .flat_map(move |(r, reason)| {
            (0..3).map(move |q| {
                let topic = format!("{prefix}/dropped/{}/qos{q}", reason.name());
                (topic, s.dropped[r][q].to_string())
            })
        })
}
