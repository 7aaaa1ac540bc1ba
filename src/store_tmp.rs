//! TEMPORARY stand-in for `crate::store` (the `store` branch builds the real one: glommio DMA
//! files, CRC32C, snapshots). Same interface, written with plain blocking `std::fs` calls so
//! the broker's durability can be built and crash-tested before it lands. Deleted on merge.

use bytes::Bytes;
use std::cell::{Cell, RefCell};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// When records are synced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fsync {
    /// fdatasync before `durable` resolves.
    Always,
    /// Written before `durable` resolves; synced every interval.
    Interval(Duration),
    /// Written, never synced.
    Never,
}

/// Where and how a store keeps its files.
#[derive(Clone, Debug)]
pub struct Options {
    /// The data directory.
    pub dir: PathBuf,
    /// Sync mode.
    pub fsync: Fsync,
    /// Drop bad records in the middle instead of failing.
    pub repair: bool,
}

/// Why the store cannot do what was asked.
#[derive(Debug, Clone)]
pub enum StoreError {
    /// The disk (or file size limit) is full.
    Full(String),
    /// Any other failing read or write.
    Io(String),
    /// A bad record before the end of a file.
    Corrupt {
        /// The file.
        file: PathBuf,
        /// Where the bad record starts.
        offset: u64,
        /// What is wrong with it.
        why: String,
    },
    /// Another broker holds the directory.
    Locked(PathBuf),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Full(e) => write!(f, "the data disk is full ({e}); free space"),
            StoreError::Io(e) => write!(f, "cannot write the data directory: {e}"),
            StoreError::Corrupt { file, offset, why } => write!(
                f,
                "{} is corrupt at offset {offset} ({why}); start with --repair to drop what is bad",
                file.display()
            ),
            StoreError::Locked(dir) => write!(
                f,
                "another broker is using the data directory {}; stop it or pass another --data-dir",
                dir.display()
            ),
        }
    }
}

fn io_error(e: std::io::Error) -> StoreError {
    match e.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) | Some(libc::EFBIG) => {
            StoreError::Full(e.to_string())
        }
        _ => StoreError::Io(e.to_string()),
    }
}

/// An exclusive lock on the data directory, held while it lives.
pub struct DirLock {
    _file: File,
}

/// Creates `dir` and takes its lock.
pub fn lock_dir(dir: &Path) -> Result<DirLock, StoreError> {
    std::fs::create_dir_all(dir).map_err(io_error)?;
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("LOCK"))
        .map_err(io_error)?;
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor we own.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(StoreError::Locked(dir.to_path_buf()));
    }
    Ok(DirLock { _file: file })
}

/// What start-up read back for one shard file set.
pub struct Recovered {
    /// Snapshot records, then log records.
    pub records: Vec<Bytes>,
    /// One line per torn tail or repair.
    pub report: Vec<String>,
}

/// Shard numbers with files in `dir`.
pub fn shards_on_disk(dir: &Path) -> Result<Vec<usize>, StoreError> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(out);
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(rest) = name.strip_prefix("shard-") else {
            continue;
        };
        let number = rest.split('.').next().and_then(|n| n.parse().ok());
        if let Some(n) = number {
            if !out.contains(&n) {
                out.push(n);
            }
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// A position in a store's log.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub struct Position(pub u64);

/// One shard's log and snapshot.
pub struct Store {
    options: Options,
    shard: usize,
    log: RefCell<File>,
    pending: RefCell<Vec<u8>>,
    appended: Cell<u64>,
    written: Cell<u64>,
    synced: Cell<u64>,
    log_bytes: Cell<u64>,
    failing: Cell<bool>,
}

fn paths(options: &Options, shard: usize) -> (PathBuf, PathBuf) {
    (
        options.dir.join(format!("shard-{shard}.snap")),
        options.dir.join(format!("shard-{shard}.log")),
    )
}

fn checksum(bytes: &[u8]) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for &b in bytes {
        hash = (hash ^ b as u32).wrapping_mul(0x0100_0193);
    }
    hash
}

fn frame(record: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(record.len() as u32).to_le_bytes());
    out.extend_from_slice(&checksum(record).to_le_bytes());
    out.extend_from_slice(record);
}

/// Reads the records of one file; returns them and the offset of the last good byte.
fn read_file(
    path: &Path,
    repair: bool,
    report: &mut Vec<String>,
) -> Result<(Vec<Bytes>, u64), StoreError> {
    let mut data = Vec::new();
    match File::open(path) {
        Ok(mut f) => {
            f.read_to_end(&mut data).map_err(io_error)?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(io_error(e)),
    }
    let data = Bytes::from(data);
    let mut records = Vec::new();
    let mut at = 0usize;
    let mut good = 0usize;
    while at < data.len() {
        let bad = |why: &str| (at, why.to_string());
        let result = (|| {
            if data.len() - at < 8 {
                return Err(bad("short header"));
            }
            let len = u32::from_le_bytes(data[at..at + 4].try_into().unwrap_or_default()) as usize;
            let sum = u32::from_le_bytes(data[at + 4..at + 8].try_into().unwrap_or_default());
            if data.len() - at - 8 < len {
                return Err(bad("short record"));
            }
            let body = data.slice(at + 8..at + 8 + len);
            if checksum(&body) != sum {
                return Err(bad("checksum mismatch"));
            }
            Ok((body, at + 8 + len))
        })();
        match result {
            Ok((body, next)) => {
                records.push(body);
                at = next;
                good = at;
            }
            Err((offset, why)) => {
                // A bad record with nothing good after it is a torn tail.
                let is_tail =
                    data.len() - offset < 8 + (16 << 20) && !has_good_after(&data, offset);
                if is_tail {
                    report.push(format!(
                        "{}: torn tail cut at offset {offset} ({why}, {} bytes dropped)",
                        path.display(),
                        data.len() - offset
                    ));
                    break;
                }
                if !repair {
                    return Err(StoreError::Corrupt {
                        file: path.to_path_buf(),
                        offset: offset as u64,
                        why,
                    });
                }
                report.push(format!(
                    "{}: dropped a bad record at offset {offset} ({why})",
                    path.display()
                ));
                at = next_good(&data, offset + 1).unwrap_or(data.len());
                good = at;
            }
        }
    }
    Ok((records, good as u64))
}

fn record_at(data: &[u8], at: usize) -> Option<usize> {
    if data.len() - at < 8 {
        return None;
    }
    let len = u32::from_le_bytes(data[at..at + 4].try_into().ok()?) as usize;
    let sum = u32::from_le_bytes(data[at + 4..at + 8].try_into().ok()?);
    if len == 0 || data.len() - at - 8 < len || checksum(&data[at + 8..at + 8 + len]) != sum {
        return None;
    }
    Some(at + 8 + len)
}

fn next_good(data: &[u8], from: usize) -> Option<usize> {
    (from..data.len()).find(|&at| record_at(data, at).is_some())
}

fn has_good_after(data: &[u8], offset: usize) -> bool {
    next_good(data, offset + 1).is_some()
}

fn read_set(options: &Options, shard: usize) -> Result<(Recovered, u64), StoreError> {
    let (snap, log) = paths(options, shard);
    let mut report = Vec::new();
    let (mut records, _) = read_file(&snap, options.repair, &mut report)?;
    let (more, good) = read_file(&log, options.repair, &mut report)?;
    records.extend(more);
    Ok((Recovered { records, report }, good))
}

impl Store {
    /// Opens (creates) shard `shard`'s files and reads them back.
    pub async fn open(options: &Options, shard: usize) -> Result<(Store, Recovered), StoreError> {
        std::fs::create_dir_all(&options.dir).map_err(io_error)?;
        let (recovered, good) = read_set(options, shard)?;
        let (_, log_path) = paths(options, shard);
        let log = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&log_path)
            .map_err(io_error)?;
        log.set_len(good).map_err(io_error)?;
        let log = OpenOptions::new()
            .append(true)
            .open(&log_path)
            .map_err(io_error)?;
        let store = Store {
            options: options.clone(),
            shard,
            log: RefCell::new(log),
            pending: RefCell::new(Vec::new()),
            appended: Cell::new(0),
            written: Cell::new(0),
            synced: Cell::new(0),
            log_bytes: Cell::new(good),
            failing: Cell::new(false),
        };
        Ok((store, recovered))
    }

    /// Reads another shard's files.
    pub async fn read_only(options: &Options, shard: usize) -> Result<Recovered, StoreError> {
        Ok(read_set(options, shard)?.0)
    }

    /// Deletes another shard's files.
    pub async fn retire(options: &Options, shard: usize) -> Result<(), StoreError> {
        let (snap, log) = paths(options, shard);
        for path in [snap, log] {
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error(e)),
            }
        }
        Ok(())
    }

    /// Queues a record.
    pub fn append(&self, record: &[u8]) -> Position {
        frame(record, &mut self.pending.borrow_mut());
        let n = self.appended.get() + 1;
        self.appended.set(n);
        Position(n)
    }

    /// Resolves when every record up to `at` is durable as the mode promises.
    pub async fn durable(&self, at: Position) -> Result<(), StoreError> {
        if at.0 > self.written.get() {
            self.write()?;
        }
        if self.options.fsync == Fsync::Always && at.0 > self.synced.get() {
            let written = self.written.get();
            self.log.borrow().sync_data().map_err(|e| self.fail(e))?;
            self.synced.set(written);
        }
        Ok(())
    }

    fn fail(&self, e: std::io::Error) -> StoreError {
        self.failing.set(true);
        io_error(e)
    }

    fn write(&self) -> Result<(), StoreError> {
        let mut pending = self.pending.borrow_mut();
        let mut log = self.log.borrow_mut();
        while !pending.is_empty() {
            match log.write(&pending) {
                Ok(0) => return Err(self.fail(std::io::Error::from_raw_os_error(libc::ENOSPC))),
                Ok(n) => {
                    pending.drain(..n);
                    self.log_bytes.set(self.log_bytes.get() + n as u64);
                }
                Err(e) => return Err(self.fail(e)),
            }
        }
        self.failing.set(false);
        self.written.set(self.appended.get());
        Ok(())
    }

    /// True while writes fail.
    pub fn is_failing(&self) -> bool {
        self.failing.get()
    }

    /// Bytes in the log since the last snapshot.
    pub fn log_bytes(&self) -> u64 {
        self.log_bytes.get()
    }

    /// Replaces snapshot + log by `records`.
    pub async fn compact(&self, records: Vec<Bytes>) -> Result<(), StoreError> {
        self.write()?;
        let (snap, log_path) = paths(&self.options, self.shard);
        let tmp = snap.with_extension("snap.tmp");
        let mut out = Vec::new();
        for r in &records {
            frame(r, &mut out);
        }
        let mut f = File::create(&tmp).map_err(io_error)?;
        f.write_all(&out).map_err(io_error)?;
        f.sync_data().map_err(io_error)?;
        // The old log's records are in the new snapshot: an empty log goes in place first
        // under a temporary name, then the snapshot, then the log.
        let tmp_log = log_path.with_extension("log.tmp");
        File::create(&tmp_log).map_err(io_error)?;
        std::fs::rename(&tmp, &snap).map_err(io_error)?;
        std::fs::rename(&tmp_log, &log_path).map_err(io_error)?;
        *self.log.borrow_mut() = OpenOptions::new()
            .append(true)
            .open(&log_path)
            .map_err(io_error)?;
        self.log_bytes.set(0);
        Ok(())
    }

    /// Writes and syncs everything queued.
    pub async fn close(&self) -> Result<(), StoreError> {
        self.write()?;
        self.log.borrow().sync_data().map_err(io_error)
    }
}
