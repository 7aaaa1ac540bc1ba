//! Overflow policies (what happens when one subscriber's bound is hit) and the publisher side
//! of backpressure (when a publisher of this shard must wait).
//!
//! The split: a subscriber that keeps reading but lags pauses its publishers, so it loses
//! nothing; a subscriber that stops reading is found stuck after `subscriber_stall_ms`, stops
//! pausing anyone, and fills up to its own bound, where its policy applies (drop newest, drop
//! oldest, or for QoS 1/2 disconnect after `slow_subscriber_secs`). The shard's share of the
//! memory ceiling pauses publishers whatever the cause. See docs/ARCHITECTURE.md, "Backpressure".

use super::session::Session;
use super::Shard;
use crate::config::{Limits, Qos0Overflow, Qos12Overflow};
use crate::protocol::QoS;
use crate::shard::backpressure::{DropReason, Pressure};
use crate::shard::outbox::Outbox;
use std::time::{Duration, Instant};

/// Publishes a ring receiver may deliver after a pause before it waits again.
const RING_CREDIT: u32 = 32;

/// Under drop-oldest, drops old QoS 0 frames until the write buffer is within its bound.
/// Returns whether there is room now and how many frames were dropped.
pub fn make_room(outbox: &Outbox, pressure: &Pressure, limits: &Limits) -> (bool, u64) {
    if limits.qos0_overflow != Qos0Overflow::DropOldest {
        return (false, 0);
    }
    let mut dropped = 0;
    while outbox.is_over(limits.write_buffer_bytes_max) {
        if !outbox.drop_oldest() {
            return (false, dropped);
        }
        pressure.count_drop(DropReason::WriteBufferFull, QoS::AtMostOnce);
        dropped += 1;
    }
    (true, dropped)
}

/// Under drop-oldest, drops the oldest queued QoS 0 message; returns whether one was.
pub fn make_room_in_queue(session: &mut Session, limits: &Limits) -> bool {
    limits.qos0_overflow == Qos0Overflow::DropOldest && session.drop_oldest_queued()
}

/// A QoS 1/2 message met a full queue at `now`. Under the disconnect policy, a subscriber over
/// its bound for `slow_subscriber_secs` is disconnected at once (what its socket still holds is
/// discarded; a persistent session keeps its queue and inflight messages).
pub fn over_bound(session: &mut Session, limits: &Limits, now: Instant) {
    if limits.qos12_overflow != Qos12Overflow::Disconnect {
        return;
    }
    let Some(outbox) = &session.outbox else {
        return;
    };
    let since = *session.over_bound_since.get_or_insert(now);
    if now - since < Duration::from_secs(limits.slow_subscriber_secs) {
        return;
    }
    tracing::info!(
        "disconnecting slow subscriber {}: over its queue bound for {}s",
        session.client_id,
        limits.slow_subscriber_secs
    );
    outbox.abort();
    session.outbox = None;
    session.over_bound_since = None;
    session.pressure.count_slow_disconnect();
}

impl Shard {
    /// Waits while this shard may not take more publishes: over its ceiling share, or with a
    /// reading subscriber that lags. Every `subscriber_stall_ms` of waiting, lagging
    /// subscribers that wrote nothing in that time are marked stuck and stop holding it up.
    pub async fn wait_for_room(&self) {
        if !self.pressure.must_wait() {
            return;
        }
        self.pressure.note_pause(true);
        let ticket = self.pressure.ticket();
        let stall = Duration::from_millis(self.limits.subscriber_stall_ms);
        loop {
            let waited = glommio::timer::timeout(stall, async {
                self.pressure.until_clear(&ticket).await;
                Ok(())
            })
            .await;
            if waited.is_ok() {
                break;
            }
            self.find_stuck(stall);
        }
        drop(ticket); // lets the next paused publisher go
        self.pressure.note_pause(false);
    }

    /// `wait_for_room` for publishes arriving on rings. One ring carries the publishes of every
    /// publisher of another shard, so after a pause it may deliver `RING_CREDIT` of them before
    /// it waits again; otherwise it would get one publish per wake-up against each local
    /// publisher's one and remote publishers would starve. The overshoot is bounded by that.
    pub async fn wait_for_ring_room(&self) {
        if !self.pressure.must_wait() || self.pressure.take_ring_credit() {
            return;
        }
        self.wait_for_room().await;
        self.pressure.grant_ring_credit(RING_CREDIT);
    }

    /// Marks lagging subscribers that took nothing from their socket for `stall` as stuck.
    fn find_stuck(&self, stall: Duration) {
        let now = Instant::now();
        let st = self.state.borrow();
        for session in st.sessions.values() {
            if let Some(outbox) = &session.outbox {
                if outbox.check_stall(now, stall) {
                    tracing::debug!("subscriber {} is stuck", session.client_id);
                }
            }
        }
    }
}
