//! The store's tests, each inside a glommio executor with the broker's small `io_memory`, so
//! that DMA buffers beyond the registered pool are exercised too.

use std::cell::Cell;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use glommio::{LocalExecutorBuilder, Placement};

use super::*;

/// The longest one executor of these tests may run: a hang fails the test instead of holding
/// CI until its global timeout.
const EXECUTOR_LIMIT: Duration = Duration::from_secs(300);

/// Runs `make()`'s future on a fresh glommio executor thread, as a shard would.
fn run<F, Fut, T>(make: F) -> T
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T> + 'static,
    T: Send + 'static,
{
    let (done, finished) = std::sync::mpsc::channel();
    let handle = LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(64 << 10)
        .spawn(move || async move {
            let out = make().await;
            let _ = done.send(());
            out
        })
        .expect("executor starts");
    // Disconnected: the executor panicked; `join` reports it.
    if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = finished.recv_timeout(EXECUTOR_LIMIT) {
        panic!("the executor did not finish within {EXECUTOR_LIMIT:?}");
    }
    handle.join().expect("executor runs")
}

/// A fresh directory under the system's temporary one, removed when dropped.
pub(super) struct TempDir(pub PathBuf);

impl TempDir {
    pub(super) fn new(name: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("ringcast-store-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A small deterministic generator (xorshift64*), so failures replay.
pub(super) struct Rng(u64);

impl Rng {
    pub(super) fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    pub(super) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub(super) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// Random bytes of a random length under `max`.
    pub(super) fn blob(&mut self, max: u64) -> Bytes {
        let len = self.below(max) as usize;
        self.bytes(len)
    }
    pub(super) fn bytes(&mut self, len: usize) -> Bytes {
        (0..len)
            .map(|_| self.next() as u8)
            .collect::<Vec<u8>>()
            .into()
    }
}

fn options(dir: &Path, fsync: Fsync) -> Options {
    Options {
        dir: dir.to_path_buf(),
        fsync,
        repair: false,
    }
}

const MODES: [Fsync; 3] = [
    Fsync::Always,
    Fsync::Interval(Duration::from_millis(50)),
    Fsync::Never,
];

/// Appends `records` in groups of random size, waiting for each group.
async fn append_all(store: &Store, records: &[Bytes], rng: &mut Rng) {
    let mut i = 0;
    while i < records.len() {
        let group = 1 + rng.below(20) as usize;
        let mut last = None;
        for r in records.iter().skip(i).take(group) {
            last = Some(store.append(r));
        }
        store
            .durable(last.expect("a group"))
            .await
            .expect("durable");
        i += group;
    }
}

#[test]
fn records_round_trip_across_reopen_in_every_mode() {
    for (m, mode) in MODES.into_iter().enumerate() {
        run(move || async move {
            let tmp = TempDir::new("round-trip");
            let opts = options(&tmp.0, mode);
            let mut rng = Rng::new(7 + m as u64);
            let mut all: Vec<Bytes> = Vec::new();
            for round in 0..3 {
                let (store, rec) = Store::open(&opts, 0).await.expect("opens");
                assert_eq!(rec.records, all, "round {round}");
                assert!(rec.report.is_empty(), "{:?}", rec.report);
                let mut batch = Vec::new();
                for _ in 0..8 {
                    // Sizes 0..1 MiB, and many small ones between them.
                    batch.push(rng.blob(1 << 20));
                    for _ in 0..200 {
                        batch.push(rng.blob(200));
                    }
                }
                append_all(&store, &batch, &mut rng).await;
                all.extend(batch);
                if round == 1 {
                    // Records queued and never waited for are written by close.
                    store.append(b"queued");
                    all.push(Bytes::from_static(b"queued"));
                    store.close().await.expect("closes");
                }
            }
        });
    }
}

#[test]
fn writes_and_snapshots_larger_than_one_dma_chunk_round_trip() {
    run(|| async {
        let tmp = TempDir::new("large");
        let opts = options(&tmp.0, Fsync::Always);
        let (store, _) = Store::open(&opts, 0).await.expect("opens");
        let mut rng = Rng::new(12);
        // Three records of 3 MiB and a small one: one group of 9 MiB, written in three chunks.
        let mut records: Vec<Bytes> = (0..3).map(|_| rng.bytes(3 << 20)).collect();
        records.push(rng.bytes(5));
        let mut at = Position(0);
        for r in &records {
            at = store.append(r);
        }
        store.durable(at).await.expect("durable");
        assert_eq!(store.stats().writes, 1);
        drop(store);
        let (store, rec) = Store::open(&opts, 0).await.expect("reopens");
        assert_eq!(rec.records, records);
        store.compact(rec.records).await.expect("compacts");
        drop(store);
        let (_, rec) = Store::open(&opts, 0).await.expect("reopens");
        assert_eq!(rec.records, records);
    });
}

/// Writes `n` records of sizes 0..`max` to shard 0 and returns them with their file offsets.
async fn write_log(opts: &Options, n: usize, max: u64, seed: u64) -> (Vec<Bytes>, Vec<u64>) {
    let (store, _) = Store::open(opts, 0).await.expect("opens");
    let mut rng = Rng::new(seed);
    let records: Vec<Bytes> = (0..n).map(|_| rng.blob(max)).collect();
    append_all(&store, &records, &mut rng).await;
    store.close().await.expect("closes");
    let mut offsets = Vec::new();
    let mut at = frame::FILE_HEADER_BYTES as u64;
    for r in &records {
        offsets.push(at);
        at += frame::framed_len(r.len());
    }
    offsets.push(at);
    (records, offsets)
}

fn log_path(dir: &Path) -> PathBuf {
    dir.join("shard-0.log")
}

fn flip_byte(path: &Path, offset: u64) {
    let mut bytes = std::fs::read(path).expect("reads");
    bytes[offset as usize] ^= 0x40;
    std::fs::write(path, bytes).expect("writes");
}

#[test]
fn a_bad_checksum_in_the_middle_is_corrupt_with_file_and_offset() {
    run(|| async {
        let tmp = TempDir::new("corrupt");
        let opts = options(&tmp.0, Fsync::Always);
        let (_, offsets) = write_log(&opts, 50, 300, 3).await;
        // Damage the data of record 20 (the 10th byte after its header).
        flip_byte(&log_path(&tmp.0), offsets[20] + 10);
        match Store::open(&opts, 0).await {
            Err(StoreError::Corrupt { file, offset, why }) => {
                assert_eq!(file, log_path(&tmp.0));
                assert_eq!(offset, offsets[20]);
                assert_eq!(why, "checksum mismatch");
            }
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("a damaged log opened"),
        }
        // read_only says the same.
        assert!(matches!(
            Store::read_only(&opts, 0).await,
            Err(StoreError::Corrupt { .. })
        ));
    });
}

#[test]
fn repair_drops_the_bad_record_reports_it_and_rewrites_the_files() {
    run(|| async {
        let tmp = TempDir::new("repair");
        let mut opts = options(&tmp.0, Fsync::Always);
        let (records, offsets) = write_log(&opts, 50, 300, 4).await;
        // A damaged length: the reader must not follow it.
        flip_byte(&log_path(&tmp.0), offsets[30] + 1);
        opts.repair = true;
        let (store, rec) = Store::open(&opts, 0).await.expect("repairs");
        let mut want = records.clone();
        want.remove(30);
        assert_eq!(rec.records, want);
        let line = format!("offset {}", offsets[30]);
        assert!(
            rec.report.iter().any(|l| l.contains(&line)),
            "{:?}",
            rec.report
        );
        store.append(b"after");
        store.close().await.expect("closes");
        drop(store);
        opts.repair = false;
        let (_, rec) = Store::open(&opts, 0).await.expect("clean after repair");
        want.push(Bytes::from_static(b"after"));
        assert_eq!(rec.records, want);
        assert!(rec.report.is_empty(), "{:?}", rec.report);
    });
}

#[test]
fn a_log_cut_at_every_offset_recovers_the_records_written_before_the_cut() {
    run(|| async {
        let tmp = TempDir::new("torn");
        let opts = options(&tmp.0, Fsync::Always);
        let (records, offsets) = write_log(&opts, 24, 40, 5).await;
        let full = std::fs::read(log_path(&tmp.0)).expect("reads");
        let end = *offsets.last().expect("offsets");
        // Every cut from an empty file to past the end (into the zero padding of the block).
        for cut in 0..full.len().min(end as usize + 40) {
            std::fs::write(log_path(&tmp.0), &full[..cut]).expect("writes");
            let (store, rec) = Store::open(&opts, 0).await.expect("opens");
            let whole = offsets.iter().skip(1).filter(|&&o| o <= cut as u64).count();
            assert_eq!(rec.records, records[..whole], "cut at {cut}");
            let on_boundary = cut < frame::FILE_HEADER_BYTES || offsets.contains(&(cut as u64));
            assert_eq!(
                rec.report.is_empty(),
                on_boundary || cut as u64 > end,
                "cut {cut}: {:?}",
                rec.report
            );
            // What is appended next follows the good records, with no trace of the cut one.
            store.append(b"next");
            store.close().await.expect("closes");
            drop(store);
            let (_, rec) = Store::open(&opts, 0).await.expect("reopens");
            let mut want = records[..whole].to_vec();
            want.push(Bytes::from_static(b"next"));
            assert_eq!(rec.records, want, "cut at {cut}, reopened");
        }
    });
}

#[test]
fn a_large_log_cut_at_random_offsets_recovers_the_records_before_the_cut() {
    run(|| async {
        let tmp = TempDir::new("torn-large");
        let opts = options(&tmp.0, Fsync::Never);
        let (records, offsets) = write_log(&opts, 3000, 2000, 6).await;
        let full = std::fs::read(log_path(&tmp.0)).expect("reads");
        let mut rng = Rng::new(66);
        for _ in 0..40 {
            let cut = rng.below(full.len() as u64) as usize;
            std::fs::write(log_path(&tmp.0), &full[..cut]).expect("writes");
            let rec = Store::read_only(&opts, 0).await.expect("reads back");
            let whole = offsets.iter().skip(1).filter(|&&o| o <= cut as u64).count();
            assert_eq!(rec.records.len(), whole, "cut at {cut}");
            assert!(rec.records[..] == records[..whole]);
        }
    });
}

#[test]
fn compaction_keeps_exactly_the_records_passed_and_those_appended_after() {
    run(|| async {
        let tmp = TempDir::new("compact");
        let opts = options(&tmp.0, Fsync::Always);
        let (store, _) = Store::open(&opts, 0).await.expect("opens");
        let mut rng = Rng::new(8);
        let old: Vec<Bytes> = (0..500).map(|_| rng.bytes(100)).collect();
        append_all(&store, &old, &mut rng).await;
        // Queued but not yet written when compaction is called: superseded by the snapshot.
        store.append(b"superseded");
        let live: Vec<Bytes> = (0..300).map(|_| rng.blob(3000)).collect();
        let during: Vec<Bytes> = (0..50).map(|_| rng.bytes(80)).collect();
        let mut last = Position(0);
        {
            let compaction = store.compact(live.clone());
            futures_lite::pin!(compaction);
            assert!(futures_lite::future::poll_once(&mut compaction)
                .await
                .is_none());
            // Appended while the compaction runs: they must land after the live state.
            for r in &during {
                last = store.append(r);
            }
            compaction.await.expect("compacts");
        }
        store.durable(last).await.expect("durable");
        let after = Bytes::from_static(b"after");
        let at = store.append(&after);
        store.durable(at).await.expect("durable");
        assert_eq!(store.log_bytes(), frame::framed_len(after.len()));
        drop(store);
        let (_, rec) = Store::open(&opts, 0).await.expect("reopens");
        let mut want = live;
        want.extend(during);
        want.push(after);
        assert_eq!(rec.records, want);
    });
}

#[test]
fn a_close_or_compaction_dropped_halfway_loses_nothing() {
    run(|| async {
        let tmp = TempDir::new("dropped");
        let opts = options(&tmp.0, Fsync::Always);
        let (store, _) = Store::open(&opts, 0).await.expect("opens");
        let mut all = vec![Bytes::from_static(b"a")];
        store.append(&all[0]);
        {
            // Polled once: it holds the log with the write in flight; then dropped.
            let close = store.close();
            futures_lite::pin!(close);
            assert!(futures_lite::future::poll_once(&mut close).await.is_none());
        }
        {
            let compaction = store.compact(vec![Bytes::from_static(b"never")]);
            futures_lite::pin!(compaction);
            assert!(futures_lite::future::poll_once(&mut compaction)
                .await
                .is_none());
        }
        all.push(Bytes::from_static(b"b"));
        let at = store.append(&all[1]);
        store.durable(at).await.expect("durable");
        store.close().await.expect("closes");
        drop(store);
        let (_, rec) = Store::open(&opts, 0).await.expect("reopens");
        assert_eq!(rec.records, all);
    });
}

/// Copies shard 0's files of `dir` as they are now.
fn save(dir: &Path) -> (Vec<u8>, Vec<u8>) {
    (
        std::fs::read(dir.join("shard-0.snap")).unwrap_or_default(),
        std::fs::read(log_path(dir)).expect("log"),
    )
}

/// Snapshot, log and temporary a crash leaves, and the records start-up must read.
type CrashCase<'a> = (&'a [u8], &'a [u8], Option<&'a [u8]>, &'a Vec<Bytes>);

#[test]
fn a_crash_at_any_step_of_compaction_reads_old_or_new_state_never_a_mix() {
    run(|| async {
        let tmp = TempDir::new("compact-crash");
        let opts = options(&tmp.0, Fsync::Always);
        let dir = &tmp.0;
        let (store, _) = Store::open(&opts, 0).await.expect("opens");
        let s1 = vec![Bytes::from_static(b"s1-a"), Bytes::from_static(b"s1-b")];
        store.compact(s1.clone()).await.expect("compacts");
        let y = store.append(b"y");
        store.durable(y).await.expect("durable");
        let old_state: Vec<Bytes> = s1
            .iter()
            .cloned()
            .chain([Bytes::from_static(b"y")])
            .collect();
        let (old_snap, old_log) = save(dir);
        let s2 = vec![Bytes::from_static(b"s2")];
        store.compact(s2.clone()).await.expect("compacts");
        drop(store);
        let (new_snap, new_log) = save(dir);
        let tmp_path = dir.join("shard-0.snap.tmp");
        // Each state a crash can leave: (snapshot, log, temporary) -> what start-up reads.
        let cases: Vec<CrashCase> = vec![
            (
                &old_snap,
                &old_log,
                Some(&new_snap[..new_snap.len() / 2]),
                &old_state,
            ),
            (&old_snap, &old_log, Some(&new_snap), &old_state),
            (&new_snap, &old_log, None, &s2),
            (&new_snap, &[], None, &s2),
            (&new_snap, &new_log, None, &s2),
        ];
        for (i, (snap, log, temp, want)) in cases.into_iter().enumerate() {
            std::fs::write(dir.join("shard-0.snap"), snap).expect("writes");
            std::fs::write(log_path(dir), log).expect("writes");
            if let Some(t) = temp {
                std::fs::write(&tmp_path, t).expect("writes");
            }
            let (store, rec) = Store::open(&opts, 0).await.expect("opens");
            assert_eq!(&rec.records, want, "case {i}");
            assert!(!tmp_path.exists(), "case {i}: the temporary is removed");
            // And the store goes on from there.
            let z = store.append(b"z");
            store.durable(z).await.expect("durable");
            drop(store);
            let (_, rec) = Store::open(&opts, 0).await.expect("reopens");
            assert_eq!(
                rec.records.last().map(|b| &b[..]),
                Some(&b"z"[..]),
                "case {i}"
            );
            assert_eq!(rec.records.len(), want.len() + 1, "case {i}");
        }
    });
}

#[test]
fn a_second_lock_on_the_directory_is_refused_until_the_first_is_dropped() {
    let tmp = TempDir::new("lock");
    let first = lock_dir(&tmp.0).expect("locks");
    match lock_dir(&tmp.0) {
        Err(e @ StoreError::Locked(_)) => assert!(e.to_string().contains("another broker")),
        other => panic!("second lock: {other:?}"),
    }
    drop(first);
    lock_dir(&tmp.0).expect("locks again");
}

#[test]
fn always_mode_syncs_once_per_group_of_waiters() {
    run(|| async {
        let tmp = TempDir::new("group");
        let (store, _) = Store::open(&options(&tmp.0, Fsync::Always), 0)
            .await
            .expect("opens");
        let store = Rc::new(store);
        let done = Rc::new(Cell::new(0));
        // 100 waiters in one loop turn share one write and one sync.
        let tasks: Vec<_> = (0..100)
            .map(|i| {
                let at = store.append(format!("record {i}").as_bytes());
                let (store, done) = (store.clone(), done.clone());
                glommio::spawn_local(async move {
                    store.durable(at).await.expect("durable");
                    done.set(done.get() + 1);
                })
            })
            .collect();
        for t in tasks {
            t.await;
        }
        assert_eq!(done.get(), 100);
        assert_eq!((store.stats().writes, store.stats().syncs), (1, 1));
        // One waiter at a time: one write and one sync each.
        for i in 0..5 {
            let at = store.append(b"one");
            store.durable(at).await.expect("durable");
            assert_eq!(store.stats().syncs, 2 + i);
        }
        // Waiting again for what is durable costs nothing.
        store.durable(Position(1)).await.expect("durable");
        assert_eq!(store.stats().syncs, 6);
    });
}

#[test]
fn interval_mode_syncs_by_timer_and_never_mode_does_not_sync() {
    run(|| async {
        let tmp = TempDir::new("interval");
        let opts = options(&tmp.0, Fsync::Interval(Duration::from_millis(20)));
        let (store, _) = Store::open(&opts, 0).await.expect("opens");
        let at = store.append(b"x");
        store.durable(at).await.expect("durable");
        // Bounded wait for the timer (no assertion on how long it takes).
        for _ in 0..500 {
            if store.stats().syncs > 0 {
                break;
            }
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(store.stats().syncs, 1);
        // A record nobody waits for is written (and synced) by the timer too.
        store.append(b"unwaited");
        for _ in 0..500 {
            if store.stats().syncs > 1 {
                break;
            }
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!((store.stats().writes, store.stats().syncs), (2, 2));
        drop(store);
        let never = TempDir::new("never");
        let (store, _) = Store::open(&options(&never.0, Fsync::Never), 0)
            .await
            .expect("opens");
        for _ in 0..5 {
            let at = store.append(b"x");
            store.durable(at).await.expect("durable");
        }
        assert_eq!((store.stats().writes, store.stats().syncs), (5, 0));
        store.close().await.expect("closes");
        assert_eq!(store.stats().syncs, 1);
    });
}

#[test]
fn shards_on_disk_lists_each_shard_once_and_retire_removes_its_files() {
    run(|| async {
        let tmp = TempDir::new("shards");
        let opts = options(&tmp.0, Fsync::Never);
        for shard in [0, 3] {
            let (store, _) = Store::open(&opts, shard).await.expect("opens");
            store
                .compact(vec![Bytes::from_static(b"s")])
                .await
                .expect("compacts");
            let at = store.append(format!("shard {shard}").as_bytes());
            store.durable(at).await.expect("durable");
        }
        std::fs::write(tmp.0.join("unrelated.txt"), b"x").expect("writes");
        assert_eq!(shards_on_disk(&tmp.0).expect("lists"), vec![0, 3]);
        let rec = Store::read_only(&opts, 3).await.expect("reads");
        assert_eq!(
            rec.records,
            vec![Bytes::from_static(b"s"), Bytes::from_static(b"shard 3")]
        );
        Store::retire(&opts, 3).await.expect("retires");
        assert_eq!(shards_on_disk(&tmp.0).expect("lists"), vec![0]);
        assert!(shards_on_disk(&tmp.0.join("missing"))
            .expect("lists")
            .is_empty());
    });
}

/// Set in the child process of the disk-full test: the directory to work in.
const FULL_CHILD_DIR: &str = "RINGCAST_STORE_FULL_CHILD_DIR";
/// The file size limit the child sets on itself.
const FULL_LIMIT_BYTES: u64 = 256 << 10;

/// Sets the soft RLIMIT_FSIZE of this process.
fn set_file_size_limit(bytes: Option<u64>) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit/signal with a valid struct; they change this process only
    // (the child of the test below).
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_FSIZE, &mut lim), 0);
        lim.rlim_cur = bytes.unwrap_or(lim.rlim_max);
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &lim), 0);
        // Past the limit the kernel sends SIGXFSZ, which would kill the process; ignored, the
        // write fails with EFBIG instead.
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}

/// The child's part: fill the log to the limit, see Full, lift the limit, see it recover.
fn full_child(dir: PathBuf) {
    set_file_size_limit(Some(FULL_LIMIT_BYTES));
    run(move || async move {
        let opts = options(&dir, Fsync::Always);
        let (store, _) = Store::open(&opts, 0).await.expect("opens");
        let mut rng = Rng::new(9);
        let mut all = Vec::new();
        let refused = loop {
            let r = rng.bytes(1000);
            let at = store.append(&r);
            all.push(r);
            match store.durable(at).await {
                Ok(()) => assert!(all.len() < 1000, "the limit never hit"),
                Err(e) => break (e, at),
            }
        };
        assert!(matches!(refused.0, StoreError::Full(_)), "{}", refused.0);
        assert!(store.is_failing());
        // Still refused while the limit holds, and appending more is fine.
        let more = rng.bytes(10);
        let last = store.append(&more);
        all.push(more);
        assert!(matches!(
            store.durable(last).await,
            Err(StoreError::Full(_))
        ));
        // A crash now: start-up reads every record acknowledged, then at most whole records
        // of the refused write, and nothing the partial write left behind.
        let crashed = dir.join("crashed");
        std::fs::create_dir_all(&crashed).expect("dir");
        // A link, not a copy: a copy of the file would meet the size limit itself.
        std::fs::hard_link(log_path(&dir), log_path(&crashed)).expect("links");
        let rec = Store::read_only(&options(&crashed, Fsync::Always), 0)
            .await
            .expect("reads");
        let acked = refused.1 .0 as usize - 1;
        assert!(rec.records.len() >= acked && rec.records[..] == all[..rec.records.len()]);
        set_file_size_limit(None);
        // The store retries by itself; bounded wait for it.
        let mut tries = 0;
        while store.durable(last).await.is_err() {
            tries += 1;
            assert!(tries < 1000, "no recovery after the limit was lifted");
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
        assert!(!store.is_failing());
        assert_eq!(store.stats().failures, 1);
        drop(store);
        let (_, rec) = Store::open(&opts, 0).await.expect("reopens");
        assert!(rec.report.is_empty(), "{:?}", rec.report);
        assert_eq!(rec.records, all);
    });
}

#[test]
fn full_when_the_file_size_limit_is_hit_and_writes_resume_when_it_is_lifted() {
    if let Some(dir) = std::env::var_os(FULL_CHILD_DIR) {
        return full_child(PathBuf::from(dir));
    }
    // The limit is per process: a child, so that other tests' files are not limited.
    let tmp = TempDir::new("full");
    let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "store::tests::full_when_the_file_size_limit_is_hit_and_writes_resume_when_it_is_lifted",
            "--nocapture",
        ])
        .env(FULL_CHILD_DIR, &tmp.0)
        .output()
        .expect("child runs");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child failed:\n{text}");
    assert!(text.contains("1 passed"), "the child ran no test:\n{text}");
}

/// Frames `records` after a log header, as a log file holds them.
fn framed(records: &[Bytes]) -> Vec<u8> {
    let mut out = frame::encode_header(frame::Kind::Log, 1).to_vec();
    for r in records {
        frame::encode_record(r, &mut out);
    }
    out
}

/// Parses a file image fed in chunks of `chunk` bytes.
fn parse(
    image: &[u8],
    chunk: usize,
    repair: bool,
) -> Result<(frame::Outcome, Vec<Bytes>), frame::Damage> {
    let mut parser = frame::Parser::new(frame::FILE_HEADER_BYTES as u64);
    for c in image[frame::FILE_HEADER_BYTES..].chunks(chunk) {
        parser.feed(c);
    }
    parser.finish(repair)
}

#[test]
fn the_parser_reads_the_same_records_whatever_the_chunk_size() {
    let mut rng = Rng::new(10);
    let records: Vec<Bytes> = (0..200).map(|_| rng.blob(700)).collect();
    let mut image = framed(&records);
    // Zero padding to the end of the block is a clean end.
    image.resize(image.len().div_ceil(512) * 512, 0);
    for chunk in [1, 7, 512, 4096, 1 << 20] {
        let (outcome, got) = parse(&image, chunk, false).expect("parses");
        assert_eq!(got, records, "chunk {chunk}");
        assert_eq!(outcome.end, frame::End::Clean);
    }
}

#[test]
fn the_parser_tells_a_torn_tail_from_damage_in_the_middle() {
    let records: Vec<Bytes> = (0..10u8).map(|i| Bytes::from(vec![i; 50])).collect();
    let image = framed(&records);
    let at = |i: usize| (frame::FILE_HEADER_BYTES + i * 58) as u64;
    // The last record cut short, then garbage: torn, nothing after it checks out.
    let mut torn = image[..image.len() - 20].to_vec();
    torn.extend_from_slice(&[0xAB; 300]);
    let (outcome, got) = parse(&torn, 64, false).expect("parses");
    assert_eq!(got, records[..9]);
    assert_eq!(
        (outcome.end_offset, outcome.end),
        (at(9), frame::End::Torn { bytes: 338 })
    );
    // Record 4's checksum damaged: good records follow, so it is damage at record 4's offset.
    let mut bad = image.clone();
    bad[at(4) as usize + 5] ^= 1;
    let damage = parse(&bad, 64, false).expect_err("damage");
    assert_eq!(damage.offset, at(4));
    let (outcome, got) = parse(&bad, 64, true).expect("repairs");
    let mut want = records.clone();
    want.remove(4);
    assert_eq!(got, want);
    assert_eq!(outcome.dropped, vec![(at(4), 58)]);
    // A header of zeros never checks out: the CRC32 of a zero length is not zero.
    assert_ne!(crc32fast::hash(&[0, 0, 0, 0]), 0);
}

#[test]
fn file_headers_are_checked_and_a_torn_one_reads_as_unwritten() {
    use frame::{decode_header, encode_header, Header, Kind};
    let h = encode_header(Kind::Log, 42);
    assert_eq!(decode_header(Kind::Log, &h), Header::Good(42));
    assert_eq!(decode_header(Kind::Snapshot, &h), Header::Bad);
    assert_eq!(decode_header(Kind::Log, &h[..5]), Header::Unwritten);
    assert_eq!(decode_header(Kind::Log, &[0; 30]), Header::Unwritten);
    let mut bad = h;
    bad[9] ^= 1;
    assert_eq!(decode_header(Kind::Log, &bad), Header::Bad);
}

/// Appends `records` of `size` bytes in batches of `batch`, each batch waited for, for at most
/// `budget`; returns records per second.
async fn append_rate(store: &Store, size: usize, batch: usize, budget: Duration) -> f64 {
    let record = vec![7u8; size];
    let start = std::time::Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget {
        let mut at = Position(0);
        for _ in 0..batch {
            at = store.append(&record);
        }
        store.durable(at).await.expect("durable");
        n += batch as u64;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// Median over 5 rounds of the time `Store::open` takes to read `n` records back.
async fn median_open_secs(opts: &Options, n: usize) -> f64 {
    let mut secs = Vec::new();
    for _ in 0..5 {
        let start = std::time::Instant::now();
        let (_, rec) = Store::open(opts, 0).await.expect("opens");
        secs.push(start.elapsed().as_secs_f64());
        assert_eq!(rec.records.len(), n);
    }
    secs.sort_by(f64::total_cmp);
    secs[2]
}

/// `tasks` tasks each appending one record and waiting for it, over and over, for `budget`;
/// returns records per second (group commit at work).
async fn concurrent_rate(store: Rc<Store>, tasks: usize, budget: Duration) -> f64 {
    let start = std::time::Instant::now();
    let count = Rc::new(Cell::new(0u64));
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let (store, count) = (store.clone(), count.clone());
            glommio::spawn_local(async move {
                while start.elapsed() < budget {
                    let at = store.append(&[7u8; 100]);
                    store.durable(at).await.expect("durable");
                    count.set(count.get() + 1);
                }
            })
        })
        .collect();
    for h in handles {
        h.await;
    }
    count.get() as f64 / start.elapsed().as_secs_f64()
}

/// Throughput of append + durable per mode and batch size, and the start-up replay rate.
/// `cargo test --release --lib store::tests::bench -- --ignored --nocapture`
#[test]
#[ignore]
fn bench_append_durable_and_replay() {
    for (name, mode) in [
        ("always", Fsync::Always),
        ("interval", Fsync::Interval(Duration::from_secs(1))),
        ("never", Fsync::Never),
    ] {
        for batch in [1, 10, 100] {
            let mode = mode.clone();
            let rate = run(move || async move {
                let tmp = TempDir::new("bench");
                let (store, _) = Store::open(&options(&tmp.0, mode), 0).await.expect("opens");
                append_rate(&store, 100, batch, Duration::from_secs(2)).await
            });
            println!("append+durable {name:8} batch {batch:3}: {rate:10.0} records/s");
        }
        let mode = mode.clone();
        let rate = run(move || async move {
            let tmp = TempDir::new("bench");
            let (store, _) = Store::open(&options(&tmp.0, mode), 0).await.expect("opens");
            concurrent_rate(Rc::new(store), 100, Duration::from_secs(2)).await
        });
        println!("append+durable {name:8} 100 concurrent waiters: {rate:10.0} records/s");
    }
    run(|| async {
        let tmp = TempDir::new("bench-replay");
        let opts = options(&tmp.0, Fsync::Never);
        let (store, _) = Store::open(&opts, 0).await.expect("opens");
        let n = 1_100_000;
        let mut rng = Rng::new(11);
        let mut at = Position(0);
        for i in 0..n {
            let mut r = rng.bytes(100).to_vec();
            r[..8].copy_from_slice(&(i as u64).to_le_bytes());
            at = store.append(&r);
        }
        store.durable(at).await.expect("durable");
        store.close().await.expect("closes");
        drop(store);
        let bytes = std::fs::metadata(log_path(&tmp.0)).expect("log").len();
        let secs = median_open_secs(&opts, n).await;
        println!(
            "replay log: {n} records, {bytes} bytes: median {secs:.3} s = {:.0} records/s",
            n as f64 / secs
        );
        let (store, rec) = Store::open(&opts, 0).await.expect("opens");
        let start = std::time::Instant::now();
        store.compact(rec.records).await.expect("compacts");
        let secs = start.elapsed().as_secs_f64();
        println!("compact {n} records into a snapshot: {secs:.3} s");
        drop(store);
        let secs = median_open_secs(&opts, n).await;
        println!(
            "replay snapshot: {n} records: median {secs:.3} s = {:.0} records/s",
            n as f64 / secs
        );
    });
}

/// Set in the child process of the kill test: the directory to work in, and the mode.
const CRASH_CHILD_DIR: &str = "RINGCAST_STORE_CRASH_CHILD_DIR";
const CRASH_CHILD_ALWAYS: &str = "RINGCAST_STORE_CRASH_CHILD_ALWAYS";

/// Record `i` of the kill test: its number, then `i % 50` bytes of filler.
fn numbered(i: u64) -> Vec<u8> {
    let mut r = i.to_le_bytes().to_vec();
    r.resize(8 + (i % 50) as usize, i as u8);
    r
}

/// The child's part: appends numbered records in groups, prints the last number of each group
/// once `durable` returns, and now and then compacts, until it is killed.
fn crash_child(dir: PathBuf, always: bool) {
    run(move || async move {
        let mode = if always {
            Fsync::Always
        } else {
            Fsync::Interval(Duration::from_millis(5))
        };
        let (store, rec) = Store::open(&options(&dir, mode), 0).await.expect("opens");
        let mut all = rec.records;
        let mut rng = Rng::new(all.len() as u64 + 1);
        for _ in 0..5000 {
            let mut at = Position(0);
            for _ in 0..1 + rng.below(20) {
                let r = Bytes::from(numbered(all.len() as u64));
                at = store.append(&r);
                all.push(r);
            }
            store.durable(at).await.expect("durable");
            println!("acked {}", all.len() - 1);
            if rng.below(30) == 0 {
                store.compact(all.clone()).await.expect("compacts");
            }
        }
    });
}

#[test]
fn records_acknowledged_before_a_kill_9_are_read_back_in_order() {
    use std::io::BufRead;
    if let Some(dir) = std::env::var_os(CRASH_CHILD_DIR) {
        return crash_child(
            PathBuf::from(dir),
            std::env::var_os(CRASH_CHILD_ALWAYS).is_some(),
        );
    }
    let mut rng = Rng::new(13);
    for always in [true, false] {
        let tmp = TempDir::new("kill");
        for round in 0..8 {
            let mut cmd = std::process::Command::new(std::env::current_exe().expect("binary"));
            cmd.args([
                "--exact",
                "store::tests::records_acknowledged_before_a_kill_9_are_read_back_in_order",
                "--nocapture",
            ])
            .env(CRASH_CHILD_DIR, &tmp.0)
            .stdout(std::process::Stdio::piped());
            if always {
                cmd.env(CRASH_CHILD_ALWAYS, "1");
            }
            let mut child = cmd.spawn().expect("child starts");
            let stdout = child.stdout.take().expect("piped");
            // Kill after a random number of acknowledged groups (bounded: the child stops
            // after 5,000 groups by itself), mostly with a write in flight.
            let groups = 1 + rng.below(150) as usize;
            let lines = std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok);
            let acked = lines
                .filter_map(|l| l.strip_prefix("acked ").and_then(|n| n.parse::<u64>().ok()))
                .take(groups)
                .last();
            child.kill().expect("SIGKILL");
            child.wait().expect("reaped");
            let dir = tmp.0.clone();
            let got = run(move || async move {
                let rec = Store::read_only(&options(&dir, Fsync::Never), 0).await;
                rec.expect("reads back").records
            });
            for (i, r) in got.iter().enumerate() {
                assert_eq!(
                    &r[..],
                    &numbered(i as u64)[..],
                    "always {always}, round {round}"
                );
            }
            let acked = acked.expect("the child acknowledged something");
            assert!(
                got.len() as u64 > acked,
                "always {always}, round {round}: acknowledged {acked}, read {}",
                got.len()
            );
        }
    }
}

#[test]
fn a_relative_directory_is_synced() {
    // The broker's default directory is relative (./ringcast-data).
    let result = run(|| async { super::sync_dir(Path::new(".")).await });
    assert!(result.is_ok(), "{result:?}");
}

#[test]
fn an_open_record_takes_what_is_added_until_the_next_record_or_write_seals_it() {
    run(|| async {
        let tmp = TempDir::new("open");
        let opts = options(&tmp.0, Fsync::Always);
        let (store, _) = Store::open(&opts, 0).await.expect("opens");
        let first = store.append_open(|w| w.extend_from_slice(b"ab"));
        assert!(store.extend(first, |w| w.extend_from_slice(b"cd")));
        // Another record seals it: adding to it is refused, nothing is written.
        let second = store.append(b"x");
        assert!(!store.extend(first, |w| w.extend_from_slice(b"lost")));
        let third = store.append_open(|w| w.extend_from_slice(b"ef"));
        assert!(store.extend(third, |w| w.extend_from_slice(b"gh")));
        assert!(second < third);
        store.durable(third).await.expect("durable");
        // Written: sealed.
        assert!(!store.extend(third, |w| w.extend_from_slice(b"lost")));
        let fourth = store.append_open(|w| w.extend_from_slice(b"ij"));
        assert!(store.extend(fourth, |w| w.extend_from_slice(b"kl")));
        store.close().await.expect("closes");
        let want: Vec<u64> = vec![
            frame::framed_len(4),
            frame::framed_len(1),
            frame::framed_len(4),
            frame::framed_len(4),
        ];
        assert_eq!(store.log_bytes(), want.iter().sum::<u64>());
        drop(store);
        let (_, rec) = Store::open(&opts, 0).await.expect("reopens");
        let got: Vec<&[u8]> = rec.records.iter().map(|r| &r[..]).collect();
        assert_eq!(got, [&b"abcd"[..], b"x", b"efgh", b"ijkl"]);
    });
}

#[test]
fn a_record_open_when_compaction_starts_is_kept_once() {
    run(|| async {
        let tmp = TempDir::new("open-compact");
        let opts = options(&tmp.0, Fsync::Always);
        let (store, _) = Store::open(&opts, 0).await.expect("opens");
        // Open when the compaction is called: the owner's records stand for it.
        let before = store.append_open(|w| w.extend_from_slice(b"superseded"));
        let live = vec![Bytes::from_static(b"live")];
        let during;
        {
            let compaction = store.compact(live);
            futures_lite::pin!(compaction);
            assert!(futures_lite::future::poll_once(&mut compaction)
                .await
                .is_none());
            assert!(!store.extend(before, |w| w.extend_from_slice(b"!")));
            // Opened while it runs: it follows the live state, with what joined it.
            during = store.append_open(|w| w.extend_from_slice(b"dur"));
            assert!(store.extend(during, |w| w.extend_from_slice(b"ing")));
            compaction.await.expect("compacts");
        }
        store.durable(during).await.expect("durable");
        drop(store);
        let (_, rec) = Store::open(&opts, 0).await.expect("reopens");
        let got: Vec<&[u8]> = rec.records.iter().map(|r| &r[..]).collect();
        assert_eq!(got, [&b"live"[..], b"during"]);
    });
}
