//! Overflow policies: what happens to a message when one subscriber's bound is hit.
//!
//! A subscriber that keeps reading but lags pauses its publishers (`backpressure`), so it
//! loses nothing; a subscriber that stops reading is found stuck after `subscriber_stall_ms`,
//! stops pausing anyone and fills up to its own bound, where its policy applies: QoS 0 drops
//! the newest (default) or the oldest frame not yet on the wire (`make_room`, and the session's
//! queue likewise); QoS 1/2 drops the new message or, under the disconnect policy, closes the
//! connection after `slow_subscriber_secs` over its bound (`Session::over_bound`). See
//! docs/ARCHITECTURE.md, "Backpressure".

use crate::config::{Limits, Qos0Overflow};
use crate::protocol::QoS;
use crate::shard::backpressure::{DropReason, Pressure};
use crate::shard::outbox::Outbox;

/// Under drop-oldest, drops old QoS 0 frames until the write buffer is within its bound.
/// Returns whether there is room now and how many frames were dropped.
pub fn make_room(outbox: &Outbox, pressure: &Pressure, limits: &Limits) -> (bool, u64) {
    if !drops_oldest(limits) {
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

/// Whether a full buffer or queue makes room for a QoS 0 message by dropping its oldest QoS 0
/// message (rather than dropping the new one).
pub fn drops_oldest(limits: &Limits) -> bool {
    limits.qos0_overflow == Qos0Overflow::DropOldest
}
