//! The store's shared state and the tasks that write it: one writer per store (group commit)
//! and, in Interval mode, a timer that syncs.
//!
//! Group commit: `append` only queues; the writer wakes when someone waits in `durable` (or
//! the queue grows large) and writes everything queued so far in one write, then in Always mode
//! one fdatasync, then wakes every waiter. Waiters that arrive while a write is in flight are
//! served together by the next one, so under load each write and each sync carries as many
//! records as arrived during the previous one.

use std::cell::RefCell;
use std::future::poll_fn;
use std::rc::{Rc, Weak};
use std::task::{Poll, Waker};
use std::time::Duration;

use glommio::sync::Semaphore;

use super::file::BlockFile;
use super::frame::{encode_header, seal_record, Kind};
use super::recover::Paths;
use super::{Fsync, StoreError, StoreStats};

/// Queued bytes that make the writer write even when nobody waits, so that records nobody
/// waits for (QoS 0 for an offline session) do not pile up in memory.
pub(crate) const QUEUE_FLUSH_BYTES: usize = 1 << 20;
/// First and longest pause between two attempts while the disk refuses writes.
const RETRY_MIN: Duration = Duration::from_millis(10);
const RETRY_MAX: Duration = Duration::from_secs(1);

pub(crate) struct Shared {
    pub fsync: Fsync,
    pub paths: Paths,
    pub dir: std::path::PathBuf,
    pub state: RefCell<State>,
    /// Serializes the log's I/O: writes, syncs, and compaction's switch to a new log.
    pub io: Semaphore,
    /// One compaction at a time.
    pub compacting: Semaphore,
    /// The log file; taken out by whoever holds `io` while they use it.
    pub log: RefCell<Option<BlockFile>>,
}

pub(crate) struct State {
    /// Framed records not yet written.
    pub pending: Vec<u8>,
    /// Offset in `pending` of the last record while it may still grow (`Store::append_open`):
    /// its header is filled in when it is sealed (`seal`).
    pub open: Option<usize>,
    /// An empty buffer with room, to queue into while `pending` is being written (without it
    /// the queue grew from nothing by reallocations during every write).
    pub spare: Vec<u8>,
    /// Position of the last record appended, written, synced.
    pub appended: u64,
    pub written: u64,
    pub synced: u64,
    /// Highest position someone waits for in `durable`.
    pub demand: u64,
    pub waiters: Vec<Waker>,
    pub writer: Option<Waker>,
    /// Set while writes fail; cleared by the next good write.
    pub failure: Option<StoreError>,
    pub log_bytes: u64,
    /// Generation of the snapshot in place; the log's header carries the same.
    pub generation: u64,
    /// While a compaction runs: a copy of every record appended since it was called.
    pub carry: Option<Vec<u8>>,
    /// The log must start over (header of `generation`) before its next write.
    pub log_reset: bool,
    /// The `Store` is gone: the tasks end.
    pub closed: bool,
    pub stats: StoreStats,
}

impl State {
    /// Position up to which the mode's promise holds.
    pub(crate) fn done(&self, fsync: &Fsync) -> u64 {
        match fsync {
            Fsync::Always => self.synced,
            _ => self.written,
        }
    }

    /// Closes the open record, if any: fills in its header and copies it to `carry` while a
    /// compaction runs. Done before anything else is appended and before `pending` is
    /// written, moved or cut.
    pub(crate) fn seal(&mut self) {
        let Some(start) = self.open.take() else {
            return;
        };
        seal_record(&mut self.pending[start..]);
        if let Some(carry) = self.carry.as_mut() {
            carry.extend_from_slice(&self.pending[start..]);
        }
    }

    fn has_work(&self, fsync: &Fsync) -> bool {
        let queued = !self.pending.is_empty()
            && (self.demand > self.done(fsync)
                || self.pending.len() >= QUEUE_FLUSH_BYTES
                || self.failure.is_some());
        let unsynced = matches!(fsync, Fsync::Always) && self.synced < self.written;
        queued || unsynced || self.log_reset
    }

    pub(crate) fn wake_all(&mut self) {
        for w in self.waiters.drain(..) {
            w.wake();
        }
    }

    pub(crate) fn wake_writer(&mut self) {
        if let Some(w) = self.writer.take() {
            w.wake();
        }
    }
}

impl Shared {
    /// Runs `f` on the log file while holding `io` (the caller holds it). The log goes back in
    /// place even if the caller's future is dropped halfway (`close` under a timeout).
    async fn with_log<T, F>(&self, f: F) -> T
    where
        F: AsyncFnOnce(&mut BlockFile) -> T,
    {
        let log = self.log.borrow_mut().take();
        let mut lent = Lent { shared: self, log };
        f(lent
            .log
            .as_mut()
            .expect("the log is put back after each use"))
        .await
    }

    /// Writes what is queued and syncs as the mode (or `force_sync`) wants. The caller holds
    /// `io`. On failure the queue is as it was, plus what was appended meanwhile.
    pub(crate) async fn flush(&self, force_sync: bool) -> Result<(), StoreError> {
        self.with_log(async |log: &mut BlockFile| self.flush_log(log, force_sync).await)
            .await
    }

    async fn flush_log(&self, log: &mut BlockFile, force_sync: bool) -> Result<(), StoreError> {
        if self.state.borrow().log_reset {
            let generation = self.state.borrow().generation;
            log.reset().await?;
            log.write(&encode_header(Kind::Log, generation)).await?;
            log.sync().await?;
            self.state.borrow_mut().log_reset = false;
        }
        let (data, seq) = {
            let mut st = self.state.borrow_mut();
            st.seal();
            let spare = std::mem::take(&mut st.spare);
            (std::mem::replace(&mut st.pending, spare), st.appended)
        };
        if !data.is_empty() {
            let mut taken = Taken { shared: self, data };
            log.write(&taken.data).await?;
            let data = std::mem::take(&mut taken.data);
            let mut st = self.state.borrow_mut();
            st.written = seq;
            st.stats.writes += 1;
            st.stats.bytes_written += data.len() as u64;
            // Keep the queue's allocation for the next group, unless a burst made it large.
            if data.capacity() <= QUEUE_FLUSH_BYTES {
                let mut data = data;
                data.clear();
                if st.pending.is_empty() && st.pending.capacity() < data.capacity() {
                    st.pending = data;
                } else if st.spare.capacity() < data.capacity() {
                    st.spare = data;
                }
            }
        }
        let target = self.state.borrow().written;
        let sync = force_sync || matches!(self.fsync, Fsync::Always);
        if sync && self.state.borrow().synced < target {
            log.sync().await?;
            let mut st = self.state.borrow_mut();
            st.synced = target;
            st.stats.syncs += 1;
        }
        Ok(())
    }

    /// Records the result of a write: logs the first failure of an episode and the recovery,
    /// and wakes the waiters either way (they return the error or their success).
    pub(crate) fn note(&self, result: &Result<(), StoreError>) {
        let mut st = self.state.borrow_mut();
        match result {
            Ok(()) => {
                if st.failure.take().is_some() {
                    tracing::warn!(dir = %self.dir.display(), "store: writes succeed again");
                }
            }
            Err(e) => {
                if st.failure.is_none() {
                    tracing::warn!(dir = %self.dir.display(), "store: writes fail: {e}");
                    st.stats.failures += 1;
                }
                st.failure = Some(e.clone());
            }
        }
        st.wake_all();
    }
}

/// The log file, lent out of `Shared::log`; put back when dropped.
struct Lent<'a> {
    shared: &'a Shared,
    log: Option<BlockFile>,
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        *self.shared.log.borrow_mut() = self.log.take();
    }
}

/// Queued records taken out for a write. If the write fails, or the future writing them is
/// dropped, they go back in front of what was appended meanwhile: nothing is lost or reordered.
struct Taken<'a> {
    shared: &'a Shared,
    data: Vec<u8>,
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        if self.data.is_empty() {
            return;
        }
        let mut st = self.shared.state.borrow_mut();
        st.seal();
        let mut back = std::mem::take(&mut self.data);
        back.extend_from_slice(&st.pending);
        st.pending = back;
    }
}

/// Waits until the writer has something to do; false once the store is gone.
async fn work(shared: &Shared) -> bool {
    poll_fn(|cx| {
        let mut st = shared.state.borrow_mut();
        if st.closed {
            return Poll::Ready(false);
        }
        if st.has_work(&shared.fsync) {
            return Poll::Ready(true);
        }
        st.writer = Some(cx.waker().clone());
        Poll::Pending
    })
    .await
}

/// The writer task: one per store, for its life.
pub(crate) async fn run_writer(shared: Rc<Shared>) {
    let mut retry = RETRY_MIN;
    while work(&shared).await {
        let result = match shared.io.acquire_permit(1).await {
            Ok(_permit) => shared.flush(false).await,
            Err(_) => return, // The semaphore is never closed.
        };
        shared.note(&result);
        if result.is_ok() {
            retry = RETRY_MIN;
        } else {
            glommio::timer::sleep(retry).await;
            retry = (retry * 2).min(RETRY_MAX);
        }
    }
}

/// Interval mode: every `every`, writes what is queued (records nobody waited for) and syncs
/// what was written, while the store lives.
pub(crate) async fn run_timer(shared: Weak<Shared>, every: Duration) {
    // A zero interval would spin; a millisecond is as often as a sync can usefully come.
    let every = every.max(Duration::from_millis(1));
    loop {
        glommio::timer::sleep(every).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if shared.state.borrow().closed {
            return;
        }
        let result = match shared.io.acquire_permit(1).await {
            Ok(_permit) => shared.flush(true).await,
            Err(_) => return, // The semaphore is never closed.
        };
        shared.note(&result);
    }
}
