//! One shard's side of backpressure: the bytes it holds for subscribers (write buffers and
//! session queues) against its share of the broker-wide ceiling, the subscribers that lag while
//! still reading, and the counters of what was dropped, paused or disconnected.
//!
//! Publishers of the shard (and its ring receivers) wait in `Pressure::until_clear` while either
//! the shard is over its ceiling share (until it falls below the low-water mark) or a reading
//! subscriber lags (past its pause mark, until it drains below its resume mark). Writers wake
//! them, all together, as they drain. Nothing here is shared
//! between threads: each shard owns one `Pressure` and compares it with ceiling / shards.
//! `Shard::wait_for_room` is where a publisher (or a ring receiver) waits, and where lagging
//! subscribers that stopped reading are found stuck.

use super::Shard;
use crate::protocol::QoS;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

/// Publishes a ring receiver may deliver after a pause before it waits again.
const RING_CREDIT: u32 = 32;

/// Why a message was dropped, as counted per reason and QoS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// QoS 0 to a client that is not connected.
    Offline = 0,
    /// The session queue was at `queue_messages_max` or `queue_bytes_max`.
    QueueFull = 1,
    /// The connection's write buffer was at `write_buffer_bytes_max` (QoS 0).
    WriteBufferFull = 2,
    /// Larger than the client's Maximum Packet Size [MQTT-3.1.2-25].
    TooLarge = 3,
}

impl DropReason {
    /// Every reason, in counter order.
    pub const ALL: [DropReason; 4] = [
        DropReason::Offline,
        DropReason::QueueFull,
        DropReason::WriteBufferFull,
        DropReason::TooLarge,
    ];

    /// The name used in `$SYS` topics.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::Offline => "offline",
            DropReason::QueueFull => "queue_full",
            DropReason::WriteBufferFull => "write_buffer_full",
            DropReason::TooLarge => "too_large",
        }
    }
}

/// Backpressure state and counters of one shard.
#[derive(Debug)]
pub struct Pressure {
    queued_bytes: Cell<usize>,
    high: usize,
    low: usize,
    is_over: Cell<bool>,
    lagging: Cell<usize>,
    /// Paused publishers in arrival order, each with its waker once it has polled.
    waiters: RefCell<VecDeque<(u64, Option<Waker>)>>,
    next_ticket: Cell<u64>,
    dropped: [[Cell<u64>; 3]; DropReason::ALL.len()],
    bytes_sent: Cell<u64>,
    slow_disconnects: Cell<u64>,
    pauses: Cell<u64>,
    paused_now: Cell<u64>,
    ceiling_hits: Cell<u64>,
    ring_credit: Cell<u32>,
}

impl Default for Pressure {
    fn default() -> Pressure {
        Pressure::new(usize::MAX, usize::MAX - 1)
    }
}

impl Pressure {
    /// A shard's share: pause above `high` queued bytes, resume below `low`.
    pub fn new(high: usize, low: usize) -> Pressure {
        assert!(low < high, "the low-water mark is below the ceiling");
        Pressure {
            queued_bytes: Cell::new(0),
            high,
            low,
            is_over: Cell::new(false),
            lagging: Cell::new(0),
            waiters: RefCell::default(),
            next_ticket: Cell::new(0),
            dropped: Default::default(),
            bytes_sent: Cell::new(0),
            slow_disconnects: Cell::new(0),
            pauses: Cell::new(0),
            paused_now: Cell::new(0),
            ceiling_hits: Cell::new(0),
            ring_credit: Cell::new(0),
        }
    }

    /// Bytes now held for subscribers of this shard.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes.get()
    }

    /// `n` more bytes are held (a frame written to an outbox, a message queued).
    pub fn add(&self, n: usize) {
        let queued = self.queued_bytes.get() + n;
        self.queued_bytes.set(queued);
        if queued > self.high && !self.is_over.get() {
            self.is_over.set(true);
            self.ceiling_hits.set(self.ceiling_hits.get() + 1);
        }
    }

    /// `n` held bytes were written or dropped.
    pub fn sub(&self, n: usize) {
        let queued = self.queued_bytes.get() - n;
        self.queued_bytes.set(queued);
        if self.is_over.get() && queued < self.low {
            self.is_over.set(false);
            self.wake_if_clear();
        }
    }

    /// A reading subscriber went past its pause mark.
    pub fn lag_started(&self) {
        self.lagging.set(self.lagging.get() + 1);
    }

    /// A lagging subscriber caught up, was found stuck, or left.
    pub fn lag_ended(&self) {
        self.lagging.set(self.lagging.get() - 1);
        self.wake_if_clear();
    }

    /// Subscribers lagging now (not counting stuck ones).
    pub fn lagging(&self) -> usize {
        self.lagging.get()
    }

    /// Whether publishers must wait: over the ceiling share, or a reading subscriber lags.
    pub fn is_blocked(&self) -> bool {
        self.is_over.get() || self.lagging.get() > 0
    }

    /// Whether a publisher must wait. Publishers still waiting when the shard is clear have
    /// all been woken (`wake_if_clear`), earliest first, so one that goes on meanwhile does not
    /// pass them for long: they run next, before the connections that read meanwhile.
    pub fn must_wait(&self) -> bool {
        self.is_blocked()
    }

    /// A place in the queue of paused publishers, which sets the order they are woken in;
    /// dropped when the publisher goes on (or its connection goes away).
    pub fn ticket(&self) -> Ticket<'_> {
        let id = self.next_ticket.get();
        self.next_ticket.set(id + 1);
        self.waiters.borrow_mut().push_back((id, None));
        Ticket { pressure: self, id }
    }

    /// Waits until the publisher holding `ticket` may go on: nothing blocks. Paused publishers
    /// are released together, woken in arrival order, and each goes on for as long as nothing
    /// blocks (the rest of its read turn): releasing them one publish each, in turn, let the
    /// subscriber's socket run dry while they took turns. One that finds the shard blocked
    /// again keeps its place ahead of those that paused after it. May be cancelled and called
    /// again with the same ticket, keeping its place.
    pub async fn until_clear(&self, ticket: &Ticket<'_>) {
        std::future::poll_fn(|cx| {
            if !self.is_blocked() {
                return Poll::Ready(());
            }
            let mut waiters = self.waiters.borrow_mut();
            // Tickets are queued in id order.
            if let Ok(at) = waiters.binary_search_by_key(&ticket.id, |(id, _)| *id) {
                waiters[at].1 = Some(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }

    /// Wakes every paused publisher, in arrival order, once nothing blocks.
    fn wake_if_clear(&self) {
        if self.is_blocked() {
            return;
        }
        let wakers: Vec<Waker> = self
            .waiters
            .borrow_mut()
            .iter_mut()
            .filter_map(|(_, w)| w.take())
            .collect();
        for waker in wakers {
            waker.wake();
        }
    }

    /// Counts one dropped message.
    pub fn count_drop(&self, reason: DropReason, qos: QoS) {
        let cell = &self.dropped[reason as usize][qos as usize];
        cell.set(cell.get() + 1);
    }

    /// Messages dropped for `reason` at `qos`.
    pub fn dropped(&self, reason: DropReason, qos: QoS) -> u64 {
        self.dropped[reason as usize][qos as usize].get()
    }

    /// Counts bytes written to sockets.
    pub fn count_sent(&self, n: usize) {
        self.bytes_sent.set(self.bytes_sent.get() + n as u64);
    }

    /// Bytes written to sockets.
    pub fn bytes_sent(&self) -> u64 {
        self.bytes_sent.get()
    }

    /// Counts a subscriber disconnected for staying over its bound.
    pub fn count_slow_disconnect(&self) {
        self.slow_disconnects.set(self.slow_disconnects.get() + 1);
    }

    /// Subscribers disconnected for staying over their bound.
    pub fn slow_disconnects(&self) -> u64 {
        self.slow_disconnects.get()
    }

    /// Marks the start (true) or end (false) of a publisher's pause.
    pub fn note_pause(&self, is_start: bool) {
        if is_start {
            self.pauses.set(self.pauses.get() + 1);
            self.paused_now.set(self.paused_now.get() + 1);
        } else {
            self.paused_now.set(self.paused_now.get() - 1);
        }
    }

    /// Pauses of publishers (or ring receivers) so far.
    pub fn pauses(&self) -> u64 {
        self.pauses.get()
    }

    /// Takes one unit of the credit ring receivers get after a pause; false when none is left.
    pub fn take_ring_credit(&self) -> bool {
        let credit = self.ring_credit.get();
        if credit == 0 {
            return false;
        }
        self.ring_credit.set(credit - 1);
        true
    }

    /// Grants ring receivers `n` publishes before they check again.
    pub fn grant_ring_credit(&self, n: u32) {
        self.ring_credit.set(n);
    }

    /// Times this shard went over its ceiling share.
    pub fn ceiling_hits(&self) -> u64 {
        self.ceiling_hits.get()
    }

    /// Publishers (or ring receivers) waiting now.
    pub fn paused_now(&self) -> u64 {
        self.paused_now.get()
    }
}

/// A paused publisher's place in line (see `Pressure::ticket`).
pub struct Ticket<'a> {
    pressure: &'a Pressure,
    id: u64,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        // Others were woken when the shard cleared; leaving wakes nobody.
        let mut waiters = self.pressure.waiters.borrow_mut();
        if let Ok(at) = waiters.binary_search_by_key(&self.id, |(id, _)| *id) {
            waiters.remove(at);
        }
    }
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
        drop(ticket);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn ceiling_has_hysteresis() {
        let p = Pressure::new(100, 50);
        p.add(101);
        assert!(p.is_blocked());
        p.sub(30);
        assert!(p.is_blocked(), "71 is still above the low-water mark");
        p.sub(30);
        assert!(!p.is_blocked());
        p.lag_started();
        assert!(p.is_blocked());
        p.lag_ended();
        assert!(!p.is_blocked());
    }

    type Log = Arc<Mutex<Vec<&'static str>>>;

    /// A waker that records, in `log`, the order it was woken in under `name`.
    fn logging_waker(log: &Log, name: &'static str) -> Waker {
        struct Entry(Log, &'static str);
        impl std::task::Wake for Entry {
            fn wake(self: Arc<Self>) {
                self.0.lock().unwrap().push(self.1);
            }
        }
        Waker::from(Arc::new(Entry(log.clone(), name)))
    }

    fn poll_until_clear(p: &Pressure, t: &Ticket<'_>, waker: &Waker) -> bool {
        use std::future::Future;
        let mut fut = std::pin::pin!(p.until_clear(t));
        fut.as_mut()
            .poll(&mut std::task::Context::from_waker(waker))
            .is_ready()
    }

    #[test]
    fn paused_publishers_are_released_together_in_arrival_order() {
        let p = Pressure::new(100, 50);
        p.add(101);
        let (first, second) = (p.ticket(), p.ticket());
        let log = Log::default();
        let (w1, w2) = (logging_waker(&log, "first"), logging_waker(&log, "second"));
        assert!(p.must_wait());
        assert!(!poll_until_clear(&p, &second, &w2));
        assert!(!poll_until_clear(&p, &first, &w1));
        p.sub(30);
        assert!(
            log.lock().unwrap().is_empty(),
            "still above the low-water mark"
        );
        p.sub(71);
        assert_eq!(
            *log.lock().unwrap(),
            ["first", "second"],
            "one wake-up for all"
        );
        assert!(poll_until_clear(&p, &second, &w2));
        assert!(poll_until_clear(&p, &first, &w1));
        drop((first, second));
        assert!(!p.must_wait());
    }

    #[test]
    fn a_publisher_blocked_again_waits_for_the_next_release() {
        let p = Pressure::new(100, 50);
        p.lag_started();
        let ticket = p.ticket();
        let log = Log::default();
        let waker = logging_waker(&log, "paused");
        assert!(!poll_until_clear(&p, &ticket, &waker));
        p.lag_ended();
        p.lag_started();
        assert!(!poll_until_clear(&p, &ticket, &waker), "blocked again");
        p.lag_ended();
        assert_eq!(*log.lock().unwrap(), ["paused", "paused"]);
        assert!(poll_until_clear(&p, &ticket, &waker));
    }
}
