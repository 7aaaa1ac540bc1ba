//! Start-up: reads one shard's snapshot and log back, decides what is good, and says what it
//! found in one line each.

use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::file::read_file;
use super::frame::{decode_header, End, Header, Kind, Parser, FILE_HEADER_BYTES};
use super::StoreError;

/// One shard's files.
pub(crate) struct Paths {
    pub snap: PathBuf,
    pub log: PathBuf,
    /// Where a compaction writes the next snapshot before renaming it into place.
    pub snap_tmp: PathBuf,
}

impl Paths {
    pub(crate) fn new(dir: &Path, shard: usize) -> Paths {
        Paths {
            snap: dir.join(format!("shard-{shard}.snap")),
            log: dir.join(format!("shard-{shard}.log")),
            snap_tmp: dir.join(format!("shard-{shard}.snap.tmp")),
        }
    }
}

/// What reading one shard's files found.
pub(crate) struct Found {
    pub records: Vec<Bytes>,
    pub report: Vec<String>,
    /// The snapshot's generation (0 without one): the log must carry the same.
    pub generation: u64,
    /// Where the log's good records end, or `None` when the log must start over (missing,
    /// unwritten header, or left from before the snapshot).
    pub log_end: Option<u64>,
    /// Whether the log file holds bytes after `log_end` that must be cut.
    pub log_has_garbage: bool,
    /// Whether repair dropped anything (the files are then rewritten clean).
    pub repaired: bool,
}

/// One file's records and how they ended.
struct FileRead {
    header: Header,
    records: Vec<Bytes>,
    end_offset: u64,
    torn_bytes: u64,
    dropped: Vec<(u64, u64)>,
}

async fn read_one(path: &Path, kind: Kind, repair: bool) -> Result<Option<FileRead>, StoreError> {
    let mut parser = Parser::new(FILE_HEADER_BYTES as u64);
    let Some(head) = read_file(path, FILE_HEADER_BYTES, &mut parser).await? else {
        return Ok(None);
    };
    let header = decode_header(kind, &head);
    if !matches!(header, Header::Good(_)) {
        return Ok(Some(FileRead {
            header,
            records: Vec::new(),
            end_offset: 0,
            torn_bytes: 0,
            dropped: Vec::new(),
        }));
    }
    let (outcome, records) = parser.finish(repair).map_err(|d| StoreError::Corrupt {
        file: path.to_path_buf(),
        offset: d.offset,
        why: d.why.to_string(),
    })?;
    let torn_bytes = match outcome.end {
        End::Clean => 0,
        End::Torn { bytes } => bytes,
    };
    Ok(Some(FileRead {
        header,
        records,
        end_offset: outcome.end_offset,
        torn_bytes,
        dropped: outcome.dropped,
    }))
}

fn report_dropped(path: &Path, read: &FileRead, report: &mut Vec<String>) {
    for (offset, bytes) in &read.dropped {
        report.push(format!(
            "repair: dropped {bytes} damaged bytes at offset {offset} of {}",
            path.display()
        ));
    }
}

/// Reads the snapshot (its generation and records); a damaged or cut snapshot is corruption,
/// since it was synced before it was renamed into place.
async fn read_snapshot(paths: &Paths, repair: bool, found: &mut Found) -> Result<(), StoreError> {
    let Some(snap) = read_one(&paths.snap, Kind::Snapshot, repair).await? else {
        return Ok(());
    };
    let Header::Good(generation) = snap.header else {
        return Err(StoreError::Corrupt {
            file: paths.snap.clone(),
            offset: 0,
            why: "not a snapshot header".into(),
        });
    };
    if snap.torn_bytes > 0 {
        if !repair {
            return Err(StoreError::Corrupt {
                file: paths.snap.clone(),
                offset: snap.end_offset,
                why: "snapshot ends inside a record".into(),
            });
        }
        found.repaired = true;
        found.report.push(format!(
            "repair: dropped the last {} bytes of {} (cut inside a record)",
            snap.torn_bytes,
            paths.snap.display()
        ));
    }
    report_dropped(&paths.snap, &snap, &mut found.report);
    found.repaired |= !snap.dropped.is_empty();
    found.generation = generation;
    found.records = snap.records;
    Ok(())
}

/// Reads snapshot then log. A torn log tail is cut (and reported); damage elsewhere is an
/// error unless `repair`.
pub(crate) async fn read_shard(paths: &Paths, repair: bool) -> Result<Found, StoreError> {
    let mut found = Found {
        records: Vec::new(),
        report: Vec::new(),
        generation: 0,
        log_end: None,
        log_has_garbage: false,
        repaired: false,
    };
    read_snapshot(paths, repair, &mut found).await?;
    let Some(log) = read_one(&paths.log, Kind::Log, repair).await? else {
        return Ok(found);
    };
    match log.header {
        Header::Unwritten => return Ok(found),
        Header::Good(g) if g < found.generation => {
            // A compaction renamed its snapshot into place and the crash came before the log
            // started over: everything in this log is in the snapshot.
            found.report.push(format!(
                "{}: left from before the last snapshot, started over",
                paths.log.display()
            ));
            return Ok(found);
        }
        Header::Good(g) if g == found.generation => {}
        Header::Good(_) | Header::Bad if !repair => {
            return Err(StoreError::Corrupt {
                file: paths.log.clone(),
                offset: 0,
                why: "the log header does not match the snapshot".into(),
            });
        }
        Header::Good(_) | Header::Bad => {
            found.repaired = true;
            found.report.push(format!(
                "repair: dropped {} (its header does not match the snapshot)",
                paths.log.display()
            ));
            return Ok(found);
        }
    }
    if log.torn_bytes > 0 {
        found.log_has_garbage = true;
        found.report.push(format!(
            "{}: torn tail cut at offset {} ({} bytes after the last good record)",
            paths.log.display(),
            log.end_offset,
            log.torn_bytes
        ));
    }
    report_dropped(&paths.log, &log, &mut found.report);
    found.repaired |= !log.dropped.is_empty();
    found.log_end = Some(log.end_offset);
    found.records.extend(log.records);
    Ok(found)
}
