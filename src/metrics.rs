//! Per-shard counters. Each shard owns its own (no atomics on the hot path); once per
//! `sys_interval_secs` each shard copies them into its slot of a `Board`, and shard 0 sums the
//! slots and publishes them on `$SYS` (see `shard::sys`).

use std::cell::Cell;
use std::sync::Mutex;

/// Counters of one shard.
#[derive(Default, Debug)]
pub struct Metrics {
    /// Connections this shard's listeners accepted.
    pub connections_accepted: Cell<u64>,
    /// Bytes read from client sockets.
    pub bytes_received: Cell<u64>,
    /// TLS handshakes that failed or did not finish in time.
    pub handshake_failures: Cell<u64>,
    /// Logins refused (credentials, anonymous where not allowed).
    pub logins_refused: Cell<u64>,
    /// PUBLISH packets the ACL did not let their client write.
    pub publishes_denied: Cell<u64>,
    /// PUBLISH packets received from clients of this shard (wills too), by their QoS.
    pub received_by_qos: [Cell<u64>; 3],
    /// PUBLISH deliveries offered to sessions of this shard, by the QoS the subscriber gets.
    /// (Only per QoS: a delivery bumps one counter, and totals are summed when read.)
    pub sent_by_qos: [Cell<u64>; 3],
    /// Messages from other cluster nodes this node could not read.
    pub cluster_rejected: Cell<u64>,
}

impl Metrics {
    /// Counts a connection accepted by this shard.
    pub fn count_accepted(&self) {
        bump(&self.connections_accepted);
    }

    /// Counts a failed TLS handshake.
    pub fn count_handshake_failure(&self) {
        self.handshake_failures
            .set(self.handshake_failures.get() + 1);
    }

    /// Counts a refused login.
    pub fn count_login_refused(&self) {
        self.logins_refused.set(self.logins_refused.get() + 1);
    }

    /// Counts a message from another node that could not be read.
    pub fn count_cluster_rejected(&self) {
        bump(&self.cluster_rejected);
    }

    /// Counts a PUBLISH denied by the ACL.
    pub fn count_publish_denied(&self) {
        self.publishes_denied.set(self.publishes_denied.get() + 1);
    }

    /// Counts a PUBLISH received at `qos` (0, 1 or 2).
    pub fn count_received(&self, qos: usize) {
        if let Some(cell) = self.received_by_qos.get(qos) {
            bump(cell);
        }
    }

    /// PUBLISH packets received.
    pub fn messages_received(&self) -> u64 {
        self.received_by_qos.iter().map(Cell::get).sum()
    }

    /// PUBLISH deliveries offered.
    pub fn messages_sent(&self) -> u64 {
        self.sent_by_qos.iter().map(Cell::get).sum()
    }

    /// Counts a PUBLISH delivery offered at `qos` (0, 1 or 2).
    pub fn count_sent(&self, qos: usize) {
        if let Some(cell) = self.sent_by_qos.get(qos) {
            bump(cell);
        }
    }

    /// Counts bytes read from a client.
    pub fn add_bytes_received(&self, n: usize) {
        self.bytes_received
            .set(self.bytes_received.get() + n as u64);
    }
}

fn bump(cell: &Cell<u64>) {
    cell.set(cell.get() + 1);
}

/// Drop counters: `[reason][qos]`, reasons in `shard::backpressure::DropReason::ALL` order.
pub type DropCounts = [[u64; 3]; 4];

/// One shard's counters and gauges at one moment, as plain numbers that can cross threads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Snapshot {
    /// The shard these numbers are of (0 in a sum).
    pub shard: usize,
    /// Sessions with a connection.
    pub clients_connected: u64,
    /// Sessions, connected or not.
    pub clients_total: u64,
    /// Subscriptions held by sessions.
    pub subscriptions: u64,
    /// PUBLISH packets received from clients.
    pub messages_received: u64,
    /// PUBLISH deliveries offered to sessions.
    pub messages_sent: u64,
    /// PUBLISH packets received, by QoS.
    pub received_by_qos: [u64; 3],
    /// PUBLISH deliveries offered, by QoS.
    pub sent_by_qos: [u64; 3],
    /// Retained messages in this shard's replica (every shard holds all of them).
    pub retained: u64,
    /// Connections accepted by this shard's listeners.
    pub connections_accepted: u64,
    /// Bytes read from client sockets.
    pub bytes_received: u64,
    /// Bytes written to client sockets.
    pub bytes_sent: u64,
    /// TLS handshakes that failed or did not finish in time.
    pub handshake_failures: u64,
    /// Logins refused.
    pub logins_refused: u64,
    /// PUBLISH packets denied by the ACL.
    pub publishes_denied: u64,
    /// Messages from other cluster nodes that could not be read.
    pub cluster_rejected: u64,
    /// Messages dropped, per reason and QoS.
    pub dropped: DropCounts,
    /// Messages waiting in write buffers and session queues.
    pub queued_messages: u64,
    /// Bytes waiting in write buffers and session queues.
    pub queued_bytes: u64,
    /// Subscribers disconnected for staying over their bound.
    pub slow_disconnects: u64,
    /// Times a publisher (or ring receiver) was paused.
    pub publisher_pauses: u64,
    /// Publishers (or ring receivers) paused now.
    pub publishers_paused: u64,
    /// Reading subscribers lagging past their pause mark now.
    pub subscribers_lagging: u64,
    /// Times a shard went over its share of the memory ceiling.
    pub ceiling_hits: u64,
    /// Spells of failing store writes (disk full or failing), each counted once.
    pub store_failures: u64,
    /// Bytes the store wrote.
    pub store_bytes_written: u64,
}

impl Snapshot {
    /// Messages dropped for any reason.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().flatten().sum()
    }

    /// Adds another shard's numbers to these.
    pub fn add(&mut self, o: &Snapshot) {
        self.clients_connected += o.clients_connected;
        self.clients_total += o.clients_total;
        self.subscriptions += o.subscriptions;
        self.messages_received += o.messages_received;
        self.messages_sent += o.messages_sent;
        for q in 0..3 {
            self.received_by_qos[q] += o.received_by_qos[q];
            self.sent_by_qos[q] += o.sent_by_qos[q];
        }
        // Every shard holds a replica of the same retained messages: not a sum.
        self.retained = self.retained.max(o.retained);
        self.connections_accepted += o.connections_accepted;
        self.bytes_received += o.bytes_received;
        self.bytes_sent += o.bytes_sent;
        self.handshake_failures += o.handshake_failures;
        self.logins_refused += o.logins_refused;
        self.publishes_denied += o.publishes_denied;
        self.cluster_rejected += o.cluster_rejected;
        for (row, other) in self.dropped.iter_mut().zip(o.dropped.iter()) {
            for (cell, v) in row.iter_mut().zip(other.iter()) {
                *cell += v;
            }
        }
        self.queued_messages += o.queued_messages;
        self.queued_bytes += o.queued_bytes;
        self.slow_disconnects += o.slow_disconnects;
        self.publisher_pauses += o.publisher_pauses;
        self.publishers_paused += o.publishers_paused;
        self.subscribers_lagging += o.subscribers_lagging;
        self.ceiling_hits += o.ceiling_hits;
        self.store_failures += o.store_failures;
        self.store_bytes_written += o.store_bytes_written;
    }
}

/// The latest snapshot of every shard, shared by the shards (touched once per interval).
#[derive(Debug)]
pub struct Board {
    slots: Vec<Mutex<Snapshot>>,
}

impl Board {
    /// A board for `shards` shards, all zero.
    pub fn new(shards: usize) -> Board {
        Board {
            slots: (0..shards).map(|_| Mutex::default()).collect(),
        }
    }

    /// Stores shard `id`'s snapshot.
    pub fn store(&self, id: usize, snapshot: Snapshot) {
        if let Some(slot) = self.slots.get(id) {
            *slot.lock().unwrap_or_else(|e| e.into_inner()) = snapshot;
        }
    }

    /// Every shard's latest snapshot, in shard order.
    pub fn shards(&self) -> Vec<Snapshot> {
        self.slots
            .iter()
            .map(|s| *s.lock().unwrap_or_else(|e| e.into_inner()))
            .collect()
    }
}
