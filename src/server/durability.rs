//! Start-up and shutdown of the shards' stores: the directory lock, every shard replaying
//! its files in parallel, the exchange that lets each shard take what is placed on it, and
//! the broker's answer (ready, or why it cannot start).

use crate::config::{FsyncMode, Persistence};
use crate::shard::persist::Persist;
use crate::shard::replay::{replay, Replayed};
use crate::shard::Shard;
use crate::store::{self, DirLock, Fsync, Options, Store, StoreError};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// How often a shard waiting for the others looks again (start-up only).
const POLL: Duration = Duration::from_millis(2);
/// How often a shard checks whether its log wants compacting.
const COMPACT_CHECK: Duration = Duration::from_secs(1);
/// At shutdown, a log past this size is compacted, so the next start reads a snapshot.
const SHUTDOWN_COMPACT_BYTES: u64 = 1 << 20;

/// What the shards share while they start from the store.
pub struct Startup {
    options: Options,
    shards: usize,
    /// Shard numbers that had files before this start.
    on_disk: Vec<usize>,
    /// Whether the shard count differs from the files' (every shard then compacts).
    is_reshaped: bool,
    parts: RwLock<Vec<(usize, Replayed)>>,
    arrived: AtomicUsize,
    restored: AtomicUsize,
    failed: AtomicBool,
    error: Mutex<Option<String>>,
    started: Instant,
    /// Per shard: whether it stores sessions (see `Shard::journaled`).
    pub journaled: Arc<[AtomicBool]>,
    _lock: DirLock,
}

impl Startup {
    /// Takes the directory's lock and lists its files; Err is one sentence.
    pub fn new(config: &Persistence, shards: usize) -> Result<Startup, String> {
        let lock = store::lock_dir(&config.dir).map_err(|e| e.to_string())?;
        let on_disk = store::shards_on_disk(&config.dir).map_err(|e| e.to_string())?;
        let is_reshaped = !on_disk.is_empty() && on_disk != (0..shards).collect::<Vec<_>>();
        let fsync = match config.fsync {
            FsyncMode::Always => Fsync::Always,
            FsyncMode::Interval => Fsync::Interval(Duration::from_millis(config.fsync_interval_ms)),
            FsyncMode::Never => Fsync::Never,
        };
        Ok(Startup {
            options: Options {
                dir: config.dir.clone(),
                fsync,
                repair: config.repair,
            },
            shards,
            on_disk,
            is_reshaped,
            parts: RwLock::new(Vec::new()),
            arrived: AtomicUsize::new(0),
            restored: AtomicUsize::new(0),
            failed: AtomicBool::new(false),
            error: Mutex::new(None),
            started: Instant::now(),
            journaled: (0..shards).map(|_| AtomicBool::new(false)).collect(),
            _lock: lock,
        })
    }

    /// Why start-up failed, if it did.
    pub fn error(&self) -> Option<String> {
        self.error.lock().ok().and_then(|e| e.clone())
    }

    fn fail(&self, e: &StoreError) {
        if let Ok(mut error) = self.error.lock() {
            error.get_or_insert_with(|| e.to_string());
        }
        self.failed.store(true, Ordering::SeqCst);
    }

    /// Waits until `count` reaches the shard count; false when a shard failed.
    async fn all(&self, count: &AtomicUsize) -> bool {
        while count.load(Ordering::SeqCst) < self.shards {
            if self.failed.load(Ordering::SeqCst) {
                return false;
            }
            glommio::timer::sleep(POLL).await;
        }
        !self.failed.load(Ordering::SeqCst)
    }

    /// The other shard files shard `id` reads (those past the shard count).
    fn extra_files(&self, id: usize) -> Vec<usize> {
        let shards = self.shards;
        self.on_disk
            .iter()
            .copied()
            .filter(|&n| n >= shards && n % shards == id)
            .collect()
    }

    /// Shard `id` opens its store and replays its files (and the extra files it reads).
    pub async fn open(&self, id: usize) -> Option<Persist> {
        match self.replay_files(id).await {
            Ok((persist, parts)) => {
                if let Ok(mut all) = self.parts.write() {
                    all.extend(parts);
                }
                self.arrived.fetch_add(1, Ordering::SeqCst);
                self.all(&self.arrived).await.then_some(persist)
            }
            Err(e) => {
                self.fail(&e);
                None
            }
        }
    }

    async fn replay_files(
        &self,
        id: usize,
    ) -> Result<(Persist, Vec<(usize, Replayed)>), StoreError> {
        let (store, recovered) = Store::open(&self.options, id).await?;
        let mut parts = Vec::new();
        let mut reports = recovered.report;
        let (own, skipped) = replay(&recovered.records, id);
        let persist =
            Persist::new(store, own.next_mid, own.next_sid).flagging(self.journaled.clone(), id);
        parts.push((id, own, skipped));
        for n in self.extra_files(id) {
            let recovered = Store::read_only(&self.options, n).await?;
            reports.extend(recovered.report);
            let (replayed, skipped) = replay(&recovered.records, n);
            parts.push((n, replayed, skipped));
        }
        for line in reports {
            tracing::warn!("{line}");
        }
        let parts = parts
            .into_iter()
            .map(|(n, replayed, skipped)| {
                if skipped > 0 {
                    tracing::warn!("shard file {n}: {skipped} records of an unknown kind skipped");
                }
                (n, replayed)
            })
            .collect();
        Ok((persist, parts))
    }

    /// Places what every shard replayed on `shard`, announces the restored subscriptions,
    /// compacts when the shard count changed, and waits for every shard to be done.
    pub async fn restore(&self, shard: &Rc<Shard>) -> bool {
        let placed = match self.parts.read() {
            Ok(parts) => shard.restore(&parts, !self.is_reshaped),
            Err(_) => return false,
        };
        shard.announce_restored(placed.filters).await;
        let wills = placed.wills;
        if self.is_reshaped && shard.compact().await {
            for n in self.extra_files(shard.id()) {
                if let Err(e) = Store::retire(&self.options, n).await {
                    tracing::warn!("cannot remove shard file {n}: {e}");
                }
            }
        }
        self.restored.fetch_add(1, Ordering::SeqCst);
        let ok = self.all(&self.restored).await;
        // Every shard knows every subscription now: the wills reach them all.
        for (key, token, will, delay) in wills {
            shard.publish_will_after(key, token, will, delay);
        }
        if shard.id() == 0 && ok {
            if let Ok(mut parts) = self.parts.write() {
                parts.clear();
            }
            tracing::info!(
                "started from {} in {} ms",
                self.options.dir.display(),
                self.started.elapsed().as_millis()
            );
        }
        ok
    }
}

/// Compacts the shard's store whenever its log has grown enough.
pub async fn compact_when_grown(shard: Rc<Shard>) {
    loop {
        glommio::timer::sleep(COMPACT_CHECK).await;
        if shard.persist.as_ref().is_some_and(|p| p.wants_compaction()) {
            shard.compact().await;
        }
    }
}

/// Writes what is queued and, when the log is long, compacts, so the next start is quick.
pub async fn close(shard: &Rc<Shard>) {
    let Some(persist) = &shard.persist else {
        return;
    };
    if persist.store().log_bytes() > SHUTDOWN_COMPACT_BYTES {
        shard.compact().await;
    }
    if let Err(e) = persist.store().close().await {
        tracing::warn!("shard {}: closing its store: {e}", shard.id());
    }
}
