//! Compaction: the owner's whole live state becomes the new snapshot and the log starts over.
//!
//! The rename of the new snapshot is the one commit point. The snapshot carries a generation
//! one above the old; the log's header carries the generation it follows. Records appended
//! after `compact` was called are written into the new snapshot too (after the owner's
//! records), so that the moment the snapshot is in place, the old log holds nothing needed and
//! start-up ignores a log of an older generation. A crash before the rename leaves the old
//! snapshot and old log (and a temporary that start-up deletes); after it, the new snapshot
//! with either the old log (ignored) or the new one.

use bytes::Bytes;

use super::file::{glommio_error, BlockFile};
use super::frame::{encode_header, encode_record, Kind};
use super::writer::Shared;
use super::{remove_if_there, sync_dir, Store, StoreError};

/// Records are framed into batches of this size before each write.
const BATCH_BYTES: usize = 4 << 20;

impl Store {
    /// Replaces snapshot + log by `records` (the owner's whole live state at the moment of the
    /// call): the new snapshot is written, synced and renamed into place, then the log
    /// restarts. Records appended after the call go to the new log. Crash at any point:
    /// start-up reads either the old snapshot + old log or the new snapshot + new log.
    pub async fn compact(&self, records: Vec<Bytes>) -> Result<(), StoreError> {
        let shared = &self.shared;
        let Ok(_one_at_a_time) = shared.compacting.acquire_permit(1).await else {
            return Ok(()); // The semaphore is never closed.
        };
        {
            // An open record is part of the owner's records, not of what follows them.
            let mut st = shared.state.borrow_mut();
            st.seal();
            st.carry = Some(Vec::new());
        }
        let running = Running { shared };
        let result = compact_steps(shared, &records).await;
        drop(running);
        if result.is_err() {
            let _ = remove_if_there(&shared.paths.snap_tmp);
        }
        result
    }
}

/// Stops copying appended records once the compaction ends, dropped halfway included.
struct Running<'a> {
    shared: &'a Shared,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.shared.state.borrow_mut().carry = None;
    }
}

/// Writes the owner's records into the temporary snapshot, then switches under `io`.
async fn compact_steps(shared: &Shared, records: &[Bytes]) -> Result<(), StoreError> {
    let generation = shared.state.borrow().generation + 1;
    let mut snap = BlockFile::open(&shared.paths.snap_tmp, 0).await?;
    snap.reset().await?;
    let mut batch = encode_header(Kind::Snapshot, generation).to_vec();
    for record in records {
        encode_record(record, &mut batch);
        if batch.len() >= BATCH_BYTES {
            snap.write(&batch).await?;
            batch.clear();
        }
    }
    snap.write(&batch).await?;
    let Ok(_permit) = shared.io.acquire_permit(1).await else {
        return Ok(()); // The semaphore is never closed.
    };
    // From here the log is still: what was appended since the call is in `carry`, and the
    // queue's records up to `appended` are either in the owner's records or in `carry`.
    let (carry, queued, appended) = {
        let mut st = shared.state.borrow_mut();
        st.seal();
        let carry = st.carry.take().unwrap_or_default();
        (carry, st.pending.len(), st.appended)
    };
    snap.write(&carry).await?;
    snap.sync().await?;
    let _ = snap.file.close().await;
    glommio::io::rename(&shared.paths.snap_tmp, &shared.paths.snap)
        .await
        .map_err(|e| glommio_error("cannot rename", &shared.paths.snap_tmp, e))?;
    // Committed: the snapshot holds everything up to `appended`. The directory sync makes the
    // rename itself durable; if it fails the data is safe in either name, so go on.
    let dir_synced = sync_dir(&shared.dir).await;
    {
        let mut st = shared.state.borrow_mut();
        st.seal();
        st.pending.drain(..queued);
        st.written = st.written.max(appended);
        st.synced = st.synced.max(appended);
        st.generation = generation;
        st.log_reset = true;
        st.log_bytes = st.pending.len() as u64;
    }
    // Start the new log now rather than at the next write, so that its header is in place.
    let result = shared.flush(false).await;
    shared.note(&result.clone().and(dir_synced));
    Ok(())
}
