//! The read deadlines of a shard's plain TCP connections (keep-alive × 1.5, the CONNECT
//! timeout), watched by one sweep per shard thread instead of one glommio timer per
//! connection: a timer held ~110 bytes per idle connection in glommio's tables, a deadline here
//! ~24 (a waker in the connection's slot, the slot's number in its second's list).
//!
//! Deadlines are kept to the second: a connection waiting to read is listed under the second
//! its deadline falls in, and the sweep wakes the connections of every second that has passed,
//! each second while any are listed. A woken connection checks its own deadline
//! (`poll_expired`): past it, its read times out; otherwise (it read since it was listed) it
//! lists itself again under its new deadline. So a connection is listed once per deadline,
//! not once per read, and the machine (`protocol::connection`) still decides, from the time it
//! is given, whether a silence closes the connection. A deadline is noticed up to two seconds
//! late, well within what the specification allows a server (MQTT-3.1.2-24 says within one
//! and a half times the keep-alive).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// How often the sweep looks for passed deadlines while any are listed.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// No slot, or no second: slots and seconds are numbered from 0 and 1.
const NONE: u32 = u32::MAX;

/// Connections opened or closed since the heap was last trimmed that make a storm worth
/// trimming after (see `Churn`).
const TRIM_CHURN_MIN: u32 = 4096;

/// A second with fewer connections opened or closed than this is calm: a storm is over.
const TRIM_CALM_MAX: u32 = 64;

/// A connection's read deadline, to the second, and its place in the sweep: its slot and
/// the second it is listed under. Kept in the connection (12 bytes), so the read's future
/// holds a pointer to it, not an `Instant`.
#[derive(Debug)]
pub struct Deadline {
    due: u32,
    slot: u32,
    listed: u32,
}

impl Default for Deadline {
    fn default() -> Deadline {
        Deadline {
            due: NONE,
            slot: NONE,
            listed: NONE,
        }
    }
}

impl Deadline {
    /// The read that follows times out once `deadline` has passed (None: never).
    pub fn set(&mut self, deadline: Option<Instant>) {
        self.due = match deadline {
            Some(deadline) => SWEEP.with_borrow(|s| s.second_of(deadline)),
            None => NONE,
        };
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        if self.slot != NONE {
            // A connection task ends on its thread; the sweep is that thread's.
            let _ = SWEEP.try_with(|s| s.borrow_mut().release(self.slot));
        }
    }
}

/// Connections waiting on a deadline, by the second it falls in. Time is passed in, so the
/// rules are tested without a clock.
pub struct Sweep {
    origin: Instant,
    /// Each connection's waker while it is listed (a dropped connection's slot is emptied at
    /// once, so its task's memory is not kept until its second comes).
    wakers: Vec<Option<Waker>>,
    free: Vec<u32>,
    /// Slots by the second (from `origin`) at or after which their deadline has passed. A slot
    /// may be listed under an earlier second than its deadline's: it is then woken early and
    /// lists itself again.
    seconds: BTreeMap<u32, Vec<u32>>,
    /// Every second up to this one has been swept.
    swept: u32,
    sweeping: bool,
    churn: Churn,
}

/// Connections opened and closed, to tell when a storm of them is over: then the heap's free
/// pages go back to the kernel (`host::give_back_free_heap`). 19,000 connections made at once
/// leave ~500 bytes each of free but resident heap between the long-lived allocations of those
/// that stay (RSS growth per idle connection 3.5 -> 3.0 KB, `malloc_trim` by hand after a
/// storm). A steady trickle never trims: a trim walks the whole heap.
#[derive(Debug, Default)]
struct Churn {
    since_trim: u32,
    this_second: u32,
}

impl Churn {
    fn note(&mut self) {
        self.since_trim = self.since_trim.saturating_add(1);
        self.this_second = self.this_second.saturating_add(1);
    }

    /// A second has passed: whether the heap is to be trimmed now (a storm of connections
    /// since the last trim, and a calm second, or no connection left to sweep).
    fn second_passed(&mut self, is_idle: bool) -> bool {
        let calm = is_idle || self.this_second < TRIM_CALM_MAX;
        self.this_second = 0;
        let trim = calm && self.since_trim >= TRIM_CHURN_MIN;
        if trim {
            self.since_trim = 0;
        }
        trim
    }
}

impl Sweep {
    pub fn new(origin: Instant) -> Sweep {
        Sweep {
            origin,
            wakers: Vec::new(),
            free: Vec::new(),
            seconds: BTreeMap::new(),
            swept: 0,
            sweeping: false,
            churn: Churn::default(),
        }
    }

    /// The second `deadline` is listed under: the first whole second after it.
    fn second_of(&self, deadline: Instant) -> u32 {
        let secs = deadline.saturating_duration_since(self.origin).as_secs() + 1;
        secs.min(u64::from(NONE - 1)) as u32
    }

    /// Whether the deadline of `entry` (a connection waiting since before it) has passed: its
    /// second was swept. Otherwise lists the connection under it, with `waker`, unless it is
    /// listed under an earlier second still to come (it is woken then, and lists itself again).
    pub fn expired(&mut self, entry: &mut Deadline, waker: &Waker) -> bool {
        let second = entry.due;
        if second <= self.swept {
            entry.listed = NONE;
            return true;
        }
        let listed = entry.listed != NONE && entry.listed > self.swept;
        if listed && entry.listed <= second {
            return false;
        }
        if entry.slot == NONE {
            entry.slot = self.take_slot();
        }
        let slot = &mut self.wakers[entry.slot as usize];
        match slot {
            Some(w) if w.will_wake(waker) => {}
            _ => *slot = Some(waker.clone()),
        }
        self.seconds.entry(second).or_default().push(entry.slot);
        entry.listed = second;
        false
    }

    fn take_slot(&mut self) -> u32 {
        self.churn.note();
        if let Some(slot) = self.free.pop() {
            return slot;
        }
        self.wakers.push(None);
        (self.wakers.len() - 1) as u32
    }

    /// Empties a dropped connection's slot for the next one. Its number may still be listed:
    /// whoever holds the slot then is woken once for nothing and lists itself again.
    fn release(&mut self, slot: u32) {
        if let Some(waker) = self.wakers.get_mut(slot as usize) {
            *waker = None;
            self.free.push(slot);
            self.churn.note();
        }
    }

    /// Sweeps every second up to `now`: the wakers of the connections listed under them.
    pub fn sweep(&mut self, now: Instant) -> Vec<Waker> {
        let now = now.saturating_duration_since(self.origin).as_secs();
        self.swept = self.swept.max(now.min(u64::from(NONE - 1)) as u32);
        let mut due = Vec::new();
        while let Some(entry) = self.seconds.first_entry() {
            if *entry.key() > self.swept {
                break;
            }
            for slot in entry.remove() {
                if let Some(waker) = self.wakers.get_mut(slot as usize).and_then(Option::take) {
                    due.push(waker);
                }
            }
        }
        due
    }

    /// Whether any connection is listed.
    pub fn is_empty(&self) -> bool {
        self.seconds.is_empty()
    }
}

thread_local! {
    /// The sweep of this shard's thread (shards are pinned threads, `!Send` state).
    static SWEEP: RefCell<Sweep> = RefCell::new(Sweep::new(Instant::now()));
}

/// For a read that is waiting: Ready(TimedOut) once the deadline of `entry` has passed,
/// otherwise Pending with the connection listed for the sweep.
pub fn poll_expired<T>(entry: &mut Deadline, cx: &Context<'_>) -> Poll<io::Result<T>> {
    if entry.due == NONE {
        return Poll::Pending;
    }
    let (expired, start) = SWEEP.with_borrow_mut(|s| {
        let expired = s.expired(entry, cx.waker());
        let start = !expired && !std::mem::replace(&mut s.sweeping, true);
        (expired, start)
    });
    if start {
        glommio::spawn_local(run()).detach();
    }
    if expired {
        return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
    }
    Poll::Pending
}

/// The shard's sweep task: runs while any connection is listed.
async fn run() {
    loop {
        glommio::timer::sleep(SWEEP_INTERVAL).await;
        let (due, done, trim) = SWEEP.with_borrow_mut(|s| {
            let due = s.sweep(Instant::now());
            let done = s.is_empty();
            if done {
                s.sweeping = false; // the next connection listed starts a new sweep
            }
            (due, done, s.churn.second_passed(done))
        });
        if trim {
            let started = Instant::now();
            crate::host::give_back_free_heap();
            tracing::debug!(
                "heap trimmed after a connection storm in {:?}",
                started.elapsed()
            );
        }
        // Woken outside the borrow: a woken connection lists itself again when it is polled.
        for waker in due {
            waker.wake();
        }
        if done {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::task::Wake;

    struct Count(std::sync::atomic::AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn waker() -> Waker {
        Waker::from(Arc::new(Count(0.into())))
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// `sweep.expired` for a read whose deadline is `deadline`.
    fn expired(sweep: &mut Sweep, deadline: Instant, entry: &mut Deadline) -> bool {
        entry.due = sweep.second_of(deadline);
        sweep.expired(entry, &waker())
    }

    #[test]
    fn a_deadline_expires_once_the_second_after_it_was_swept() {
        let t0 = Instant::now();
        let mut sweep = Sweep::new(t0);
        let mut entry = Deadline::default();
        let deadline = t0 + Duration::from_millis(1500);
        assert!(!expired(&mut sweep, deadline, &mut entry));
        assert!(sweep.sweep(t0 + secs(1)).is_empty());
        assert!(!expired(&mut sweep, deadline, &mut entry));
        assert_eq!(sweep.sweep(t0 + secs(2)).len(), 1);
        assert!(expired(&mut sweep, deadline, &mut entry));
        assert!(sweep.is_empty());
    }

    #[test]
    fn a_later_deadline_is_listed_when_the_earlier_second_wakes_the_connection() {
        let t0 = Instant::now();
        let mut sweep = Sweep::new(t0);
        let mut entry = Deadline::default();
        assert!(!expired(&mut sweep, t0 + secs(5), &mut entry));
        // Read again: a later deadline does not list the connection a second time.
        assert!(!expired(&mut sweep, t0 + secs(9), &mut entry));
        assert_eq!(sweep.seconds.values().map(Vec::len).sum::<usize>(), 1);
        // Woken at the first deadline's second, not expired: listed under the new one.
        assert_eq!(sweep.sweep(t0 + secs(6)).len(), 1);
        assert!(!expired(&mut sweep, t0 + secs(9), &mut entry));
        assert!(sweep.sweep(t0 + secs(9)).is_empty());
        assert_eq!(sweep.sweep(t0 + secs(10)).len(), 1);
        assert!(expired(&mut sweep, t0 + secs(9), &mut entry));
    }

    #[test]
    fn an_earlier_deadline_is_listed_at_once() {
        let t0 = Instant::now();
        let mut sweep = Sweep::new(t0);
        let mut entry = Deadline::default();
        assert!(!expired(&mut sweep, t0 + secs(30), &mut entry));
        assert!(!expired(&mut sweep, t0 + secs(3), &mut entry));
        assert_eq!(sweep.sweep(t0 + secs(4)).len(), 1);
        assert!(expired(&mut sweep, t0 + secs(3), &mut entry));
    }

    #[test]
    fn a_released_slot_is_not_woken_and_is_reused() {
        let t0 = Instant::now();
        let mut sweep = Sweep::new(t0);
        let mut first = Deadline::default();
        assert!(!expired(&mut sweep, t0 + secs(2), &mut first));
        let slot = first.slot;
        sweep.release(slot);
        first.slot = NONE; // as its drop does, without the thread's sweep
        assert!(sweep.sweep(t0 + secs(5)).is_empty());
        let mut second = Deadline::default();
        assert!(!expired(&mut sweep, t0 + secs(8), &mut second));
        assert_eq!(second.slot, slot);
        second.slot = NONE;
    }

    #[test]
    fn the_heap_is_trimmed_once_a_storm_of_connections_is_over() {
        let mut churn = Churn::default();
        for _ in 0..TRIM_CHURN_MIN {
            churn.note();
        }
        assert!(!churn.second_passed(false), "not while the storm goes on");
        for _ in 0..TRIM_CALM_MAX - 1 {
            churn.note();
        }
        assert!(churn.second_passed(false), "the first calm second after it");
        assert!(!churn.second_passed(false), "once");
    }

    #[test]
    fn a_trickle_of_connections_never_trims_and_a_storm_ending_in_silence_does() {
        let mut churn = Churn::default();
        for _ in 0..200 {
            for _ in 0..TRIM_CALM_MAX {
                churn.note();
            }
            assert!(!churn.second_passed(false));
        }
        assert!(churn.second_passed(true), "no connection left to sweep");
        assert!(!churn.second_passed(true));
    }
}
