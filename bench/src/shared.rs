//! State the generator threads share: progress counters and, per stream, how far the
//! subscriber has got (which is what bounds the publisher's window).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Instant;

/// Marks a publisher still running in `Shared::final_count`.
pub const RUNNING: u64 = u64::MAX;

/// Shared by every generator thread; all counters are relaxed (they are statistics, and the
/// window tolerates reading a slightly old value).
pub struct Shared {
    /// The clock every payload timestamp counts from.
    pub start: Instant,
    /// Messages published, all publishers.
    pub published: AtomicU64,
    /// Messages received, all subscribers.
    pub delivered: AtomicU64,
    /// Subscribers whose SUBACK has arrived.
    pub subscribed: AtomicUsize,
    /// Per stream: one past the highest sequence number its subscriber has seen.
    pub reached: Vec<AtomicU64>,
    /// Per publisher: messages it sent in all, or `RUNNING`.
    pub final_count: Vec<AtomicU64>,
    /// Publisher of each stream.
    pub publisher_of_stream: Vec<usize>,
    /// Publishers not finished yet.
    pub publishers_left: AtomicUsize,
    /// Nanoseconds (since `start`) when publishing ended, 0 while it runs.
    pub publish_end_ns: AtomicU64,
    /// Nanoseconds (since `start`) when publishing began, after every subscriber was ready.
    pub publish_start_ns: AtomicU64,
    /// Nanoseconds (since `start`) of the last delivery.
    pub last_delivery_ns: AtomicU64,
    /// Set when the run must stop early (an error, a lost connection).
    pub abort: AtomicBool,
    /// Errors seen, for the report.
    pub errors: Mutex<Vec<String>>,
}

impl Shared {
    /// Fresh state for the streams of `publisher_of_stream` and `publishers` publishers.
    pub fn new(publisher_of_stream: Vec<usize>, publishers: usize) -> Shared {
        let streams = publisher_of_stream.len();
        Shared {
            start: Instant::now(),
            published: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            subscribed: AtomicUsize::new(0),
            reached: (0..streams).map(|_| AtomicU64::new(0)).collect(),
            final_count: (0..publishers).map(|_| AtomicU64::new(RUNNING)).collect(),
            publisher_of_stream,
            publishers_left: AtomicUsize::new(publishers),
            publish_end_ns: AtomicU64::new(0),
            publish_start_ns: AtomicU64::new(0),
            last_delivery_ns: AtomicU64::new(0),
            abort: AtomicBool::new(false),
            errors: Mutex::new(Vec::new()),
        }
    }

    /// Nanoseconds since `start`.
    pub fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Records an error and stops the run.
    pub fn fail(&self, what: String) {
        self.abort.store(true, Relaxed);
        // A poisoned lock only means another thread panicked while pushing; keep its data.
        let mut errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        if errors.len() < 20 {
            errors.push(what);
        }
    }

    /// Whether the run was aborted.
    pub fn is_aborted(&self) -> bool {
        self.abort.load(Relaxed)
    }

    /// The least progress among `streams` (the slowest subscriber of one publisher).
    pub fn slowest(&self, streams: &[usize]) -> u64 {
        streams
            .iter()
            .map(|&s| self.reached[s].load(Relaxed))
            .min()
            .unwrap_or(u64::MAX)
    }
}
