//! Durable storage for one shard: an append-only log of checksummed records and a snapshot
//! that compaction replaces it with. It knows bytes, records, files and syncing, nothing of
//! MQTT: the shard decides what a record means.
//!
//! - `frame`: the on-disk format (headers, records) and the parser that reads it back, sans I/O.
//! - `file`: DMA file access (O_DIRECT through io_uring): whole-block appends, chunked reads.
//! - `recover`: start-up: snapshot then log, torn tails cut, damage reported or repaired.
//! - `writer`: the shared state, the writer task (group commit) and Interval mode's sync timer.
//!
//! Files in the data directory: `LOCK` (held by the running broker), `shard-N.snap` and
//! `shard-N.log` per shard, `shard-N.snap.tmp` while a compaction writes, and `probe-T.tmp` for a
//! moment when a shard first opens a file (see `file::prime`).

mod compact;
mod file;
pub mod frame;
mod recover;
mod writer;

#[cfg(test)]
mod tests;

use std::cell::RefCell;
use std::fmt;
use std::fs;
use std::future::poll_fn;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::task::Poll;

use bytes::Bytes;
use glommio::sync::Semaphore;

use file::{glommio_error, BlockFile};
use frame::{
    encode_header, encode_record_with, framed_len, Kind, FILE_HEADER_BYTES, RECORD_HEADER_BYTES,
};
use recover::{read_shard, Found, Paths};
use writer::{Shared, State, QUEUE_FLUSH_BYTES};

/// When a write counts as durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fsync {
    /// Written and fdatasync'ed (one sync per group of waiters).
    Always,
    /// Written; a timer syncs this often if anything was written.
    Interval(std::time::Duration),
    /// Written, never synced.
    Never,
}

/// Where and how a store keeps its files.
#[derive(Clone, Debug)]
pub struct Options {
    pub dir: PathBuf,
    pub fsync: Fsync,
    /// Drop damaged records at start-up (and report them) instead of refusing to start.
    pub repair: bool,
}

#[derive(Debug, Clone)]
pub enum StoreError {
    /// ENOSPC / EDQUOT / EFBIG: the disk (or the file size limit) is full.
    Full(String),
    /// Any other failing read or write.
    Io(String),
    /// A bad record before the end of a file (not a torn tail).
    Corrupt {
        file: PathBuf,
        offset: u64,
        why: String,
    },
    /// Another broker holds the directory.
    Locked(PathBuf),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Full(what) => write!(
                f,
                "the disk is full ({what}): free space or raise the limit, and writes resume by themselves"
            ),
            StoreError::Io(what) => write!(
                f,
                "a storage read or write failed ({what}): check the disk and the data directory"
            ),
            StoreError::Corrupt { file, offset, why } => write!(
                f,
                "{} is damaged at offset {offset} ({why}): start with --repair to drop the damaged records",
                file.display()
            ),
            StoreError::Locked(dir) => write!(
                f,
                "another broker holds the data directory {}: stop it or choose another data directory",
                dir.display()
            ),
        }
    }
}

impl std::error::Error for StoreError {}

/// Counts of what a store did, for `$SYS` and for tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Writes that succeeded (each carries one group of records).
    pub writes: u64,
    /// fdatasync calls that succeeded.
    pub syncs: u64,
    pub bytes_written: u64,
    /// Episodes of failing writes (a run of failures counts once).
    pub failures: u64,
}

/// An exclusive flock on `dir/LOCK`, held for the broker's life.
#[derive(Debug)]
pub struct DirLock {
    _file: fs::File,
}

/// Locks `dir` (creating it) for this process, or says that another one holds it.
pub fn lock_dir(dir: &Path) -> Result<DirLock, StoreError> {
    fs::create_dir_all(dir).map_err(|e| file::store_error("cannot create", dir, &e))?;
    let path = dir.join("LOCK");
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| file::store_error("cannot open", &path, &e))?;
    // SAFETY: flock on a descriptor this function owns; it touches no memory.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(StoreError::Locked(dir.to_path_buf()));
        }
        return Err(file::store_error("cannot lock", &path, &err));
    }
    Ok(DirLock { _file: file })
}

/// What start-up read back for one shard's files.
#[derive(Debug)]
pub struct Recovered {
    /// Snapshot records, then log records, in write order.
    pub records: Vec<Bytes>,
    /// One line each: torn tail cut at offset, repairs done.
    pub report: Vec<String>,
}

/// The shard numbers that have files in `dir` (the shard count may have changed since).
pub fn shards_on_disk(dir: &Path) -> Result<Vec<usize>, StoreError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(file::store_error("cannot list", dir, &e)),
    };
    let mut shards = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| file::store_error("cannot list", dir, &e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let number = name
            .strip_prefix("shard-")
            .and_then(|rest| rest.strip_suffix(".snap").or(rest.strip_suffix(".log")));
        if let Some(n) = number.and_then(|n| n.parse::<usize>().ok()) {
            shards.push(n);
        }
    }
    shards.sort_unstable();
    shards.dedup();
    Ok(shards)
}

/// A position in a store's sequence of records; increasing per store.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub struct Position(pub u64);

/// One shard's log and snapshot. Not `Send`: it lives on its shard's glommio executor, whose
/// tasks write it.
pub struct Store {
    shared: Rc<Shared>,
}

impl Drop for Store {
    fn drop(&mut self) {
        let mut st = self.shared.state.borrow_mut();
        st.closed = true;
        st.wake_writer();
    }
}

fn remove_if_there(path: &Path) -> Result<(), StoreError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(file::store_error("cannot remove", path, &e))
        }
        _ => Ok(()),
    }
}

pub(crate) async fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    // glommio opens a directory relative to fd -1 (its files it resolves against the working
    // directory itself): a relative `dir` such as the default ./ringcast-data failed with EBADF.
    let dir =
        &std::path::absolute(dir).map_err(|e| file::store_error("cannot resolve", dir, &e))?;
    let d = glommio::io::Directory::open(dir)
        .await
        .map_err(|e| glommio_error("cannot open", dir, e))?;
    d.sync()
        .await
        .map_err(|e| glommio_error("cannot sync", dir, e))?;
    let _ = d.close().await;
    Ok(())
}

/// Opens the log for appending where `found` says its good records end (starting it over or
/// cutting a torn tail as needed).
async fn open_log(paths: &Paths, found: &Found) -> Result<BlockFile, StoreError> {
    let mut log = BlockFile::open(&paths.log, found.log_end.unwrap_or(0)).await?;
    match found.log_end {
        None => {
            log.reset().await?;
            log.write(&encode_header(Kind::Log, found.generation))
                .await?;
            log.sync().await?;
        }
        Some(_) if found.log_has_garbage => {
            log.cut().await?;
            log.sync().await?;
        }
        Some(_) => {}
    }
    Ok(log)
}

impl Store {
    /// Opens (creates) shard `shard`'s files and reads them back: snapshot then log. A torn
    /// tail is cut at the last good record (reported in `report`); a bad record before the end
    /// fails with Corrupt unless `options.repair` (then it is dropped and reported, and the
    /// files are rewritten without it).
    pub async fn open(options: &Options, shard: usize) -> Result<(Store, Recovered), StoreError> {
        fs::create_dir_all(&options.dir)
            .map_err(|e| file::store_error("cannot create", &options.dir, &e))?;
        file::prime(&options.dir).await?;
        let paths = Paths::new(&options.dir, shard);
        // A compaction that did not finish: its snapshot was never renamed into place.
        remove_if_there(&paths.snap_tmp)?;
        let found = read_shard(&paths, options.repair).await?;
        let log = open_log(&paths, &found).await?;
        let log_bytes = log.end().saturating_sub(FILE_HEADER_BYTES as u64);
        let shared = Rc::new(Shared {
            fsync: options.fsync.clone(),
            paths,
            dir: options.dir.clone(),
            state: RefCell::new(State {
                pending: Vec::new(),
                open: None,
                spare: Vec::new(),
                appended: 0,
                written: 0,
                synced: 0,
                demand: 0,
                waiters: Vec::new(),
                writer: None,
                failure: None,
                log_bytes,
                generation: found.generation,
                carry: None,
                log_reset: false,
                closed: false,
                stats: StoreStats::default(),
            }),
            io: Semaphore::new(1),
            compacting: Semaphore::new(1),
            log: RefCell::new(Some(log)),
        });
        glommio::spawn_local(writer::run_writer(shared.clone())).detach();
        if let Fsync::Interval(every) = options.fsync {
            glommio::spawn_local(writer::run_timer(Rc::downgrade(&shared), every)).detach();
        }
        let store = Store { shared };
        let mut report = found.report;
        if found.repaired {
            store.compact(found.records.clone()).await?;
            report.push(format!(
                "repair: rewrote shard {shard}'s snapshot without the damaged records"
            ));
        }
        let recovered = Recovered {
            records: found.records,
            report,
        };
        Ok((store, recovered))
    }

    /// Reads another shard's files without changing them (start-up with fewer shards than
    /// files); the caller re-appends what it keeps, then calls `retire`.
    pub async fn read_only(options: &Options, shard: usize) -> Result<Recovered, StoreError> {
        file::prime(&options.dir).await?;
        let found = read_shard(&Paths::new(&options.dir, shard), options.repair).await?;
        Ok(Recovered {
            records: found.records,
            report: found.report,
        })
    }

    /// Deletes shard `shard`'s files.
    pub async fn retire(options: &Options, shard: usize) -> Result<(), StoreError> {
        let paths = Paths::new(&options.dir, shard);
        remove_if_there(&paths.snap_tmp)?;
        remove_if_there(&paths.log)?;
        remove_if_there(&paths.snap)?;
        sync_dir(&options.dir).await
    }

    /// Queues a record (any bytes, < 16 MiB) for the next write; returns its position. Never
    /// waits, never fails (a failing disk shows in `durable`).
    pub fn append(&self, record: &[u8]) -> Position {
        self.append_with(|out| out.extend_from_slice(record))
    }

    /// `append` of the record `write` appends to the buffer it is given, encoded in place:
    /// no buffer of its own per record, no copy of it. `write` must only append.
    pub fn append_with(&self, write: impl FnOnce(&mut Vec<u8>)) -> Position {
        let mut st = self.shared.state.borrow_mut();
        let st = &mut *st;
        st.seal();
        let start = st.pending.len();
        let len = encode_record_with(&mut st.pending, write);
        if let Some(carry) = st.carry.as_mut() {
            carry.extend_from_slice(&st.pending[start..]);
        }
        st.appended += 1;
        st.log_bytes += framed_len(len);
        if st.pending.len() >= QUEUE_FLUSH_BYTES {
            st.wake_writer();
        }
        Position(st.appended)
    }

    /// `append_with`, leaving the record open: `extend` may add to it until it is sealed (by
    /// the next record, a write, or a compaction). Many small records of one kind then cost
    /// one header and one checksum.
    pub fn append_open(&self, write: impl FnOnce(&mut Vec<u8>)) -> Position {
        let mut st = self.shared.state.borrow_mut();
        st.seal();
        let start = st.pending.len();
        st.pending.extend_from_slice(&[0; RECORD_HEADER_BYTES]);
        write(&mut st.pending);
        st.open = Some(start);
        st.appended += 1;
        st.log_bytes += (st.pending.len() - start) as u64;
        if st.pending.len() >= QUEUE_FLUSH_BYTES {
            st.wake_writer();
        }
        Position(st.appended)
    }

    /// Appends what `write` appends to the record at `at`, if it is still open: true. False,
    /// with nothing written, once it was sealed.
    pub fn extend(&self, at: Position, write: impl FnOnce(&mut Vec<u8>)) -> bool {
        let mut st = self.shared.state.borrow_mut();
        if st.open.is_none() || st.appended != at.0 {
            return false;
        }
        let before = st.pending.len();
        write(&mut st.pending);
        st.log_bytes += (st.pending.len() - before) as u64;
        if st.pending.len() >= QUEUE_FLUSH_BYTES {
            st.wake_writer();
        }
        true
    }

    /// Resolves when every record up to `at` is durable as the mode promises: written
    /// (Interval, Never) or written and fdatasync'ed (Always). All waiters of one loop turn
    /// share one write and one sync. Err(Full/Io) while the disk refuses; the records stay
    /// queued and the store retries by itself, so a later call succeeds when space returns.
    pub async fn durable(&self, at: Position) -> Result<(), StoreError> {
        let shared = &self.shared;
        poll_fn(|cx| {
            let mut st = shared.state.borrow_mut();
            if at.0 <= st.done(&shared.fsync) {
                return Poll::Ready(Ok(()));
            }
            if let Some(e) = &st.failure {
                return Poll::Ready(Err(e.clone()));
            }
            st.demand = st.demand.max(at.0);
            st.waiters.push(cx.waker().clone());
            st.wake_writer();
            Poll::Pending
        })
        .await
    }

    /// True while writes fail.
    pub fn is_failing(&self) -> bool {
        self.shared.state.borrow().failure.is_some()
    }

    /// Bytes in the log since the last snapshot, queued ones included.
    pub fn log_bytes(&self) -> u64 {
        self.shared.state.borrow().log_bytes
    }

    /// What this store has done since it was opened.
    pub fn stats(&self) -> StoreStats {
        self.shared.state.borrow().stats
    }

    /// Writes and syncs everything queued (graceful shutdown).
    pub async fn close(&self) -> Result<(), StoreError> {
        let shared = &self.shared;
        let result = match shared.io.acquire_permit(1).await {
            Ok(_permit) => shared.flush(true).await,
            Err(_) => Ok(()), // The semaphore is never closed.
        };
        shared.note(&result);
        result
    }
}
