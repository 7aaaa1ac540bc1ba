//! Files through glommio's DMA API (O_DIRECT, io_uring): an appender that writes whole blocks,
//! a chunked reader, and the mapping of OS errors to `StoreError`.
//!
//! O_DIRECT wants buffers, offsets and lengths aligned to the device's logical block. Records
//! are small and written in small batches, so the appender keeps the last partial block in
//! memory and writes it again, completed, in front of the next batch: a batch costs one block
//! of rewrite instead of padding every batch to a block (which would make a log of one
//! 100-byte record per write five times its size with 512-byte blocks, 38 with 4 KiB ones).
//! Buffers come from `alloc_dma_buffer`; beyond the executor's registered `io_memory` glommio
//! allocates them on the heap (aligned), which O_DIRECT takes just the same. A block is one sector, which the device
//! writes whole, and the rewritten block starts with the same bytes it held, so a crash during
//! the rewrite leaves either the old or the new block, both readable up to the old end.

use std::io;
use std::path::Path;

use glommio::io::{DmaFile, DmaStreamReaderBuilder, OpenOptions};
use glommio::GlommioError;

use super::frame::Parser;
use super::StoreError;

/// Most bytes one `write_at` carries; a larger batch is written in several.
const WRITE_CHUNK_BYTES: usize = 4 << 20;
/// Bytes per read at start-up, and reads in flight at once.
const READ_CHUNK_BYTES: usize = 1 << 20;
const READ_AHEAD: usize = 4;

thread_local! {
    /// Devices whose poll support this thread's glommio has already probed.
    static PRIMED: std::cell::RefCell<Vec<u64>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Makes glommio probe the device of `dir` on a file with data in it.
///
/// glommio 0.9 decides once per thread and device whether reads may use its poll ring
/// (IOPOLL), by reading the first block of the first file opened there. On an empty file that
/// read succeeds even where the device has no poll queues (a virtio disk, for one), and every
/// later read of a file with data fails with EOPNOTSUPP. A store's first file is often a new,
/// empty log, so the store opens a one-block file of its own first.
pub(crate) async fn prime(dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(dir)
        .map_err(|e| store_error("cannot read", dir, &e))?
        .dev();
    if PRIMED.with(|p| p.borrow().contains(&dev)) {
        return Ok(());
    }
    // SAFETY: gettid has no preconditions. One name per thread: shards share the directory.
    let path = dir.join(format!("probe-{}.tmp", unsafe { libc::gettid() }));
    std::fs::write(&path, [1u8; 4096]).map_err(|e| store_error("cannot write", &path, &e))?;
    let opened = DmaFile::open(&path).await;
    let _ = std::fs::remove_file(&path);
    let file = opened.map_err(|e| glommio_error("cannot open", &path, e))?;
    let _ = file.close().await;
    PRIMED.with(|p| p.borrow_mut().push(dev));
    Ok(())
}

/// Maps an I/O error to `Full` (no space, quota, file size limit) or `Io`.
pub(crate) fn store_error(what: &str, path: &Path, err: &io::Error) -> StoreError {
    let full = matches!(
        err.raw_os_error(),
        Some(libc::ENOSPC) | Some(libc::EDQUOT) | Some(libc::EFBIG)
    );
    let text = format!("{what} {}: {err}", path.display());
    if full {
        StoreError::Full(text)
    } else {
        StoreError::Io(text)
    }
}

/// glommio's error, as the OS error it carries (glommio's own conversion to `io::Error` keeps
/// the kind but drops the errno that tells a full disk from other failures).
pub(crate) fn os_error(err: GlommioError<()>) -> io::Error {
    match err {
        GlommioError::IoError(e) => e,
        GlommioError::EnhancedIoError { source, .. } => source,
        other => io::Error::other(other.to_string()),
    }
}

pub(crate) fn glommio_error(what: &str, path: &Path, err: GlommioError<()>) -> StoreError {
    store_error(what, path, &os_error(err))
}

/// A file written from its current end on, in whole aligned blocks.
pub(crate) struct BlockFile {
    pub file: DmaFile,
    /// Offset just after the last byte written (the records' end, not the block's).
    end: u64,
    /// The bytes of the block `end` falls in, from its start to `end`.
    tail: Vec<u8>,
}

impl BlockFile {
    /// Opens (creates) `path` for writing at `end`, reading back the partial block before it.
    pub(crate) async fn open(path: &Path, end: u64) -> Result<BlockFile, StoreError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .dma_open(path)
            .await
            .map_err(|e| glommio_error("cannot open", path, e))?;
        let start = file.align_down(end);
        let tail = if start == end {
            Vec::new()
        } else {
            let got = file
                .read_at_aligned(start, file.alignment() as usize)
                .await
                .map_err(|e| glommio_error("cannot read", path, e))?;
            let want = (end - start) as usize;
            if got.len() < want {
                return Err(StoreError::Io(format!(
                    "cannot read {}: the file is shorter than its records",
                    path.display()
                )));
            }
            got[..want].to_vec()
        };
        Ok(BlockFile { file, end, tail })
    }

    pub(crate) fn end(&self) -> u64 {
        self.end
    }

    fn path_text(&self) -> String {
        self.file
            .path()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    }

    /// Writes `data` after the end. On failure nothing moves: a retry writes the same bytes at
    /// the same place (whatever part of the failed write landed is overwritten, and a partial
    /// record it left fails its checksum at start-up).
    pub(crate) async fn write(&mut self, data: &[u8]) -> Result<(), StoreError> {
        let align = self.file.alignment() as usize;
        let mut pos = self.file.align_down(self.end);
        // The bytes to write: the partial block again, then `data`, in chunks of whole blocks.
        let total = self.tail.len() + data.len();
        let mut done = 0;
        while done < total {
            let take = (total - done).min(WRITE_CHUNK_BYTES);
            let size = take.div_ceil(align) * align;
            let mut buf = self.file.alloc_dma_buffer(size);
            let out = buf.as_bytes_mut();
            // From the partial block first, then from `data`.
            let from_tail = self.tail.len().saturating_sub(done).min(take);
            if from_tail > 0 {
                out[..from_tail].copy_from_slice(&self.tail[done..done + from_tail]);
            }
            let at = done + from_tail - self.tail.len();
            out[from_tail..take].copy_from_slice(&data[at..at + take - from_tail]);
            out[take..].fill(0);
            let wrote = self
                .file
                .write_at(buf, pos)
                .await
                .map_err(|e| self.write_error(e))?;
            if wrote < size {
                return Err(StoreError::Full(format!(
                    "cannot write {}: short write ({wrote} of {size} bytes), the disk is full",
                    self.path_text()
                )));
            }
            pos += size as u64;
            done += take;
        }
        self.end += data.len() as u64;
        let block = self.file.align_down(self.end);
        let keep = (self.end - block) as usize;
        let mut tail = std::mem::take(&mut self.tail);
        tail.extend_from_slice(data);
        self.tail = tail.split_off(tail.len() - keep);
        Ok(())
    }

    fn write_error(&self, e: GlommioError<()>) -> StoreError {
        store_error("cannot write", Path::new(&self.path_text()), &os_error(e))
    }

    pub(crate) async fn sync(&self) -> Result<(), StoreError> {
        self.file
            .fdatasync()
            .await
            .map_err(|e| glommio_error("cannot sync", Path::new(&self.path_text()), e))
    }

    /// Cuts the file just after the records, dropping whatever a torn write left beyond them.
    pub(crate) async fn cut(&self) -> Result<(), StoreError> {
        self.file
            .truncate(self.end)
            .await
            .map_err(|e| glommio_error("cannot truncate", Path::new(&self.path_text()), e))
    }

    /// Empties the file; the next write starts at 0.
    pub(crate) async fn reset(&mut self) -> Result<(), StoreError> {
        self.file
            .truncate(0)
            .await
            .map_err(|e| glommio_error("cannot truncate", Path::new(&self.path_text()), e))?;
        self.end = 0;
        self.tail.clear();
        Ok(())
    }
}

/// Reads the file at `path` from `start` into `parser`. Returns the file's first `head` bytes
/// too (the header), or `None` when the file does not exist.
pub(crate) async fn read_file(
    path: &Path,
    head: usize,
    parser: &mut Parser,
) -> Result<Option<Vec<u8>>, StoreError> {
    let file = match DmaFile::open(path).await {
        Ok(f) => f,
        Err(e) => {
            let e = os_error(e);
            if e.kind() == io::ErrorKind::NotFound {
                return Ok(None);
            }
            return Err(store_error("cannot open", path, &e));
        }
    };
    // The stream reader keeps READ_AHEAD reads in flight, so the device reads the next chunks
    // while this one is parsed.
    let mut reader = DmaStreamReaderBuilder::new(file)
        .with_buffer_size(READ_CHUNK_BYTES)
        .with_read_ahead(READ_AHEAD)
        .build();
    let mut header = Vec::new();
    let mut pos = 0usize;
    loop {
        let got = reader
            .get_buffer_aligned(READ_CHUNK_BYTES as u64)
            .await
            .map_err(|e| glommio_error("cannot read", path, e))?;
        if got.is_empty() {
            break;
        }
        let skip = head.saturating_sub(pos).min(got.len());
        header.extend_from_slice(&got[..skip]);
        parser.feed(&got[skip..]);
        pos += got.len();
    }
    let _ = reader.close().await;
    Ok(Some(header))
}
