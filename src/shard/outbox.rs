//! The queue of encoded frames waiting to be written to one connection.
//!
//! Sessions push frames (a header and a shared payload) into it; the connection's writer (in
//! its task) drains it with vectored writes. It is bounded in bytes by the caller, who decides
//! what to do when it is full (see `is_over`).
//!
//! Small packets are copied into one open chunk instead of being queued one by one: a fan-out
//! of 16-byte messages then costs a memcpy per subscriber instead of two reference counts, and
//! the writer hands the kernel one iovec for hundreds of packets. Only the first
//! `COALESCE_BYTES_MAX` of the queue are coalesced; past that mark (a subscriber falling
//! behind) packets stay separate frames so the drop-oldest policy can still remove them.
//!
//! It also keeps the connection's side of backpressure: its bytes count toward the shard's
//! `Pressure`, and it knows whether its subscriber lags (past the pause mark, still reading),
//! is stuck (past the mark and nothing written for a while) or keeps up.

use super::backpressure::Pressure;
use bytes::{Buf, Bytes, BytesMut};
use std::cell::{Cell, OnceCell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Packets up to this size (header and payload) are copied into the open chunk.
pub const SMALL_PACKET_BYTES_MAX: usize = 512;

/// Packets are coalesced only while less than this (or half the pause mark, if less) is
/// queued: the coalesced part counts as committed to the wire, like the socket's own buffer;
/// the rest stays droppable.
/// With the default pause mark that is 128 KiB, what one read turn (`read_bytes_per_turn`
/// times 8) fans out to a subscriber that keeps up. A lower mark sent a turn of 256-byte
/// packets half as frames of their own, two iovecs each, and the kernel's copy costs about
/// 20 ns per iovec: fanout-10 at 256 B spent a third of the broker's CPU in `_copy_from_iter`
/// (perf), 14% once coalesced.
const COALESCE_BYTES_MAX: usize = 256 << 10;

/// Smallest allocation for the open chunk.
const CHUNK_BYTES_MIN: usize = 1 << 10;

/// The open chunk of a connection that coalesced less than this in its current and its last
/// busy spell, the next packet included: it sends a small packet now and then (a CONNACK, a SUBACK, a PINGRESP, a sensor's
/// command), and a 1 KiB chunk each time, freed once written, leaves holes between the
/// long-lived allocations of a connection storm.
const QUIET_SPELL_BYTES: usize = 64;

/// The open chunk's allocation while the connection is quiet (see `QUIET_SPELL_BYTES`).
const QUIET_CHUNK_BYTES: usize = 128;

/// Largest allocation for the open chunk: an allocation per 60 packets of 256 bytes costs
/// little, and a busy subscriber holds at most this much room it has not used yet.
const CHUNK_BYTES_MAX: usize = 16 << 10;

/// One packet on its way out: its encoded header and a payload shared with other subscribers.
#[derive(Clone, Debug, Default)]
pub struct Frame {
    /// Fixed header, variable header and properties (or a whole control packet).
    pub header: Bytes,
    /// Application message, shared by reference count; empty for control packets.
    pub payload: Bytes,
    /// Whether the frame is a QoS 0 PUBLISH, which an overflow policy may drop.
    pub is_droppable: bool,
}

impl Frame {
    /// A control packet with no separate payload.
    pub fn control(packet: Bytes) -> Frame {
        Frame {
            header: packet,
            payload: Bytes::new(),
            is_droppable: false,
        }
    }

    /// Bytes still to be written.
    pub fn len(&self) -> usize {
        self.header.len() + self.payload.len()
    }

    /// Whether everything has been written.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops the first `n` bytes, which have been written.
    fn advance(&mut self, mut n: usize) {
        let from_header = n.min(self.header.len());
        self.header.advance(from_header);
        n -= from_header;
        self.payload.advance(n);
    }
}

/// How far behind the subscriber of this connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lag {
    /// Below the pause mark.
    KeepsUp,
    /// Past the pause mark and still reading: its publishers wait for it.
    Lagging,
    /// Past the pause mark and not reading (or closing): its own bounds apply, nobody waits.
    Stuck,
}

/// Frames queued for one connection, shared by its session (producer) and writer (consumer).
pub struct Outbox {
    frames: RefCell<VecDeque<Frame>>,
    /// Small packets queued after the last frame, not yet handed to the writer.
    open: RefCell<BytesMut>,
    /// Bytes coalesced since the outbox was last empty, and in the busy spell before that:
    /// what the next chunk is sized by (see `push_parts`). 32 bits each (larger spells
    /// saturate, and size a chunk as the largest does), like the marks below.
    coalesced: Cell<u32>,
    coalesced_before: Cell<u32>,
    bytes: Cell<usize>,
    waker: Cell<Option<Waker>>,
    closing: Cell<bool>,
    /// The connection's reader finished: the writer's linger after closing ends.
    reader_done: Cell<bool>,
    aborted: Cell<bool>,
    pressure: Rc<Pressure>,
    /// Messages and payload bytes waiting in the session queue behind this connection.
    held_messages: Cell<usize>,
    held_bytes: Cell<usize>,
    /// The marks, 32 bits each (larger ones saturate): with them, an outbox and its
    /// reference counts fit a 208-byte heap chunk, and every connection holds one.
    pause_bytes: u32,
    pause_messages: u32,
    coalesce_bytes: u32,
    lag: Cell<Lag>,
    /// Last time the socket took bytes (or the subscriber started to lag).
    progress_at: Cell<Instant>,
    /// Bytes at the front that the writer has announced on the wire (a WebSocket frame
    /// header counts them), so none of their frames may be dropped.
    committed: Cell<usize>,
    /// What only some connections use, allocated by the first that does: every connection
    /// holds its outbox for as long as it lives.
    rare: OnceCell<Box<Rare>>,
}

/// The waits and holds of an outbox that an idle connection never uses.
#[derive(Default)]
struct Rare {
    /// The writer waiting for `abort` (while the socket is full).
    abort_waker: Cell<Option<Waker>>,
    /// A task waiting for room to send more (a retained-message feed), with the mark below
    /// which written bytes wake it (0: only `notify_room` or closing does).
    room: Cell<Option<Waker>>,
    room_mark: Cell<usize>,
    room_notified: Cell<bool>,
    /// Store position every frame queued so far acknowledges or depends on: the writer sends
    /// nothing until the shard's store has made it durable (see `shard::persist`); 0: none.
    hold: Cell<u64>,
    /// Answers from other shards that the frames queued so far wait for (an acknowledgement
    /// of a message other shards must store or replicate first): nothing is sent while any
    /// is missing. Held here rather than awaited, so the connection reads on meanwhile.
    shard_holds: Cell<usize>,
    shard_waker: Cell<Option<Waker>>,
}

/// `n`, or `u32::MAX` when larger.
fn saturated(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl Default for Outbox {
    fn default() -> Outbox {
        Outbox::new(Rc::new(Pressure::default()), usize::MAX, usize::MAX)
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        self.pressure.sub(self.bytes.get());
        if self.lag.get() == Lag::Lagging {
            self.pressure.lag_ended();
        }
    }
}

impl Outbox {
    /// An empty outbox counting toward `pressure`; its subscriber lags once `pause_bytes`
    /// (written or queued) or `pause_messages` (queued) are waiting.
    pub fn new(pressure: Rc<Pressure>, pause_bytes: usize, pause_messages: usize) -> Outbox {
        Outbox {
            frames: RefCell::default(),
            open: RefCell::default(),
            coalesced: Cell::new(0),
            coalesced_before: Cell::new(0),
            bytes: Cell::new(0),
            waker: Cell::default(),
            closing: Cell::new(false),
            reader_done: Cell::new(false),
            aborted: Cell::new(false),
            pressure,
            held_messages: Cell::new(0),
            held_bytes: Cell::new(0),
            pause_bytes: saturated(pause_bytes),
            pause_messages: saturated(pause_messages),
            coalesce_bytes: saturated(COALESCE_BYTES_MAX.min(pause_bytes / 2)),
            lag: Cell::new(Lag::KeepsUp),
            progress_at: Cell::new(Instant::now()),
            committed: Cell::new(0),
            rare: OnceCell::new(),
        }
    }

    /// The rare part, allocated on first use.
    fn rare(&self) -> &Rare {
        self.rare.get_or_init(Box::default)
    }

    /// Frames queued from now on wait for one more answer from other shards
    /// (`release_for_shards`).
    pub fn hold_for_shards(&self) {
        let rare = self.rare();
        rare.shard_holds.set(rare.shard_holds.get() + 1);
    }

    /// One answer `hold_for_shards` waited for came; the writer goes on once all did.
    pub fn release_for_shards(&self) {
        let Some(rare) = self.rare.get() else {
            return;
        };
        let left = rare.shard_holds.get().saturating_sub(1);
        rare.shard_holds.set(left);
        if left == 0 {
            if let Some(waker) = rare.shard_waker.take() {
                waker.wake();
            }
        }
    }

    /// Whether an answer from other shards is awaited.
    pub fn is_held_for_shards(&self) -> bool {
        self.rare.get().is_some_and(|r| r.shard_holds.get() > 0)
    }

    /// Ready once no answer from other shards is awaited.
    pub fn poll_shards_released(&self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.is_held_for_shards() {
            return Poll::Ready(());
        }
        self.rare().shard_waker.set(Some(cx.waker().clone()));
        Poll::Pending
    }

    /// Frames queued from now on wait until the store position `at` is durable.
    pub fn hold_until(&self, at: u64) {
        if at > self.held_until() {
            self.rare().hold.set(at);
        }
    }

    /// The store position the queued frames wait for (0: none).
    pub fn held_until(&self) -> u64 {
        self.rare.get().map_or(0, |r| r.hold.get())
    }

    /// Queues a frame and wakes the writer.
    pub fn push(&self, frame: Frame) {
        if self.closing.get() {
            return;
        }
        if self.is_coalescing(frame.len()) {
            self.push_parts(&frame.header, &frame.payload);
            return;
        }
        self.seal();
        self.count_pushed(frame.len());
        self.frames.borrow_mut().push_back(frame);
        self.wake();
    }

    /// Queues a small packet given as `header` and `payload` slices (see `is_coalescing`),
    /// copying both into the open chunk.
    pub fn push_parts(&self, header: &[u8], payload: &[u8]) {
        self.push_publish_parts(header, None, payload);
    }

    /// `push_parts` for a PUBLISH header kept for many subscribers, with its packet id
    /// (`pkid`: the id and its offset in `header`) written into the copy in the chunk: the
    /// header is copied once, not first into a scratch buffer to be patched there.
    pub fn push_publish_parts(&self, header: &[u8], pkid: Option<(usize, u16)>, payload: &[u8]) {
        let len = self.push_run_parts(header, pkid, payload);
        self.end_run(len);
    }

    /// `push_publish_parts` for each PUBLISH of a run to one subscriber (`Session::send_run`),
    /// as long as `is_coalescing` says so for the next: the caller then calls `end_run` once
    /// with the bytes copied, for the shard's pressure, the lag and the writer's wake-up
    /// (per PUBLISH they were ~25 of a fanout-1000 QoS 1 delivery's ~580 instructions).
    /// Returns the bytes copied: none into a closing outbox.
    #[inline]
    pub fn push_run_parts(
        &self,
        header: &[u8],
        pkid: Option<(usize, u16)>,
        payload: &[u8],
    ) -> usize {
        if self.closing.get() {
            return 0;
        }
        let len = self.coalesce(header, pkid, payload);
        self.bytes.set(self.bytes.get() + len);
        len
    }

    /// Ends a run of `push_run_parts` that copied `len` bytes.
    #[inline]
    pub fn end_run(&self, len: usize) {
        if len > 0 {
            self.pressure.add(len);
            self.update_lag();
            self.wake();
        }
    }

    /// Copies a packet into the open chunk (see `push_publish_parts`); returns its length.
    #[inline(always)]
    fn coalesce(&self, header: &[u8], pkid: Option<(usize, u16)>, payload: &[u8]) -> usize {
        let len = header.len() + payload.len();
        let mut open = self.open.borrow_mut();
        if open.capacity() - open.len() < len {
            drop(open);
            self.seal();
            open = self.open.borrow_mut();
            open.reserve(len.max(self.chunk_bytes(len)));
        }
        let start = open.len();
        open.extend_from_slice(header);
        if let Some((at, id)) = pkid {
            if let Some(field) = open.get_mut(start + at..start + at + 2) {
                field.copy_from_slice(&id.to_be_bytes());
            }
        }
        open.extend_from_slice(payload);
        drop(open);
        let coalesced = self.coalesced.get().saturating_add(saturated(len));
        self.coalesced.set(coalesced);
        len
    }

    /// Size of the next chunk, for a packet of `len` bytes: what this busy spell, or the one
    /// before, coalesced so far.
    /// Chunks of a fixed 1 KiB took an allocation for the buffer and one for its shared
    /// count every three 256-byte packets: 30% of the broker's instructions in a fan-out of
    /// 256-byte messages to 10 subscribers (callgrind), against 3% with 16-byte ones.
    fn chunk_bytes(&self, len: usize) -> usize {
        let spell = self.coalesced.get().max(self.coalesced_before.get()) as usize;
        if spell + len < QUIET_SPELL_BYTES {
            return QUIET_CHUNK_BYTES;
        }
        spell.clamp(CHUNK_BYTES_MIN, CHUNK_BYTES_MAX)
    }

    /// The outbox went empty: the busy spell is over. The open chunk's spare room is given
    /// back, so an idle connection holds no buffer; after a quiet spell (see
    /// `QUIET_SPELL_BYTES`) the frame queue's room too (288 bytes for its first four frames),
    /// while a busy connection keeps it for the next spell.
    fn end_spell(&self) {
        let spell = self.coalesced.replace(0);
        self.coalesced_before.set(spell);
        let spell = spell as usize;
        let mut open = self.open.borrow_mut();
        if open.is_empty() && open.capacity() > 0 {
            *open = BytesMut::new();
        }
        if spell < QUIET_SPELL_BYTES {
            let mut frames = self.frames.borrow_mut();
            if frames.is_empty() && frames.capacity() > 0 {
                *frames = VecDeque::new();
            }
        }
    }

    /// Whether a packet of `len` bytes would be copied into the open chunk rather than
    /// queued as a frame of its own.
    pub fn is_coalescing(&self, len: usize) -> bool {
        len <= SMALL_PACKET_BYTES_MAX && self.bytes.get() < self.coalesce_bytes as usize
    }

    fn count_pushed(&self, len: usize) {
        self.bytes.set(self.bytes.get() + len);
        self.pressure.add(len);
        self.update_lag();
    }

    /// Closes the open chunk into a frame of its own, so the writer can take it.
    fn seal(&self) {
        let mut open = self.open.borrow_mut();
        if !open.is_empty() {
            let chunk = open.split().freeze();
            self.frames.borrow_mut().push_back(Frame::control(chunk));
        }
    }

    /// Asks the writer to flush what is queued, then close the connection.
    pub fn close(&self) {
        self.closing.set(true);
        self.update_lag();
        self.wake();
        self.wake_room();
    }

    /// Ready once fewer than `below` bytes are queued (with Some), `notify_room` was called
    /// since the last Ready, or the connection is closing. One task may wait at a time.
    pub fn poll_room(&self, cx: &mut Context<'_>, below: Option<usize>) -> Poll<()> {
        let has_room = below.is_some_and(|mark| self.bytes.get() < mark);
        let rare = self.rare();
        if rare.room_notified.replace(false) || has_room || self.closing.get() {
            rare.room_mark.set(0);
            return Poll::Ready(());
        }
        rare.room_mark.set(below.unwrap_or(0));
        rare.room.set(Some(cx.waker().clone()));
        Poll::Pending
    }

    /// Wakes the task waiting in `poll_room`: something other than written bytes made room
    /// (an acknowledgement opened the window).
    pub fn notify_room(&self) {
        self.rare().room_notified.set(true);
        self.wake_room();
    }

    fn wake_room(&self) {
        if let Some(waker) = self.rare.get().and_then(|r| r.room.take()) {
            waker.wake();
        }
    }

    /// Closes at once: what is queued is discarded and the writer shuts the socket down, even
    /// if it is waiting for a full socket (a slow subscriber being disconnected).
    pub fn abort(&self) {
        self.closing.set(true);
        self.aborted.set(true);
        let frames = std::mem::take(&mut *self.frames.borrow_mut());
        drop(frames);
        *self.open.borrow_mut() = BytesMut::new();
        self.pressure.sub(self.bytes.replace(0));
        self.update_lag();
        self.wake();
        if let Some(waker) = self.rare.get().and_then(|r| r.abort_waker.take()) {
            waker.wake();
        }
        self.wake_room();
    }

    /// Ready once `abort` was called.
    pub fn poll_aborted(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.aborted.get() {
            return Poll::Ready(());
        }
        self.rare().abort_waker.set(Some(cx.waker().clone()));
        Poll::Pending
    }

    /// Whether `abort` was called.
    pub fn is_aborted(&self) -> bool {
        self.aborted.get()
    }

    /// The session queue behind this connection now holds `messages` of `bytes` payload.
    pub fn set_held(&self, messages: usize, bytes: usize) {
        self.held_messages.set(messages);
        self.held_bytes.set(bytes);
        self.update_lag();
    }

    /// Where the subscriber stands.
    pub fn lag(&self) -> Lag {
        self.lag.get()
    }

    /// Re-evaluates the lag after bytes came or went; tells the shard on every change that
    /// matters to its publishers.
    ///
    /// A subscriber starts to lag at the pause mark and keeps up again only below the resume
    /// mark, half of it (see `is_under_resume_mark`): with a single mark, every write that
    /// took the subscriber just under it released one publish, which took it over again, so
    /// its socket ran dry while the publishers took turns (fan-in of 100 QoS 0 publishers:
    /// 0.09 M deliveries/s at a 256 KiB mark, 0.49 M at 4 MB).
    #[inline]
    fn update_lag(&self) {
        // The usual case, inlined into every push: a subscriber that keeps up and stays under
        // both pause marks, nothing to change.
        let waiting = self.bytes.get() + self.held_bytes.get();
        let held = self.held_messages.get();
        if self.lag.get() == Lag::KeepsUp && !self.is_over_pause_mark(waiting, held) {
            return;
        }
        self.change_lag(waiting, held);
    }

    /// `update_lag` past its usual case, with what is waiting in bytes and held in messages.
    fn change_lag(&self, waiting: usize, held: usize) {
        match self.lag.get() {
            Lag::KeepsUp if self.closing.get() => {}
            Lag::KeepsUp if self.is_over_pause_mark(waiting, held) => {
                self.lag.set(Lag::Lagging);
                self.progress_at.set(Instant::now());
                self.pressure.lag_started();
            }
            Lag::Lagging if self.closing.get() || self.is_under_resume_mark(waiting, held) => {
                self.lag.set(Lag::KeepsUp);
                self.pressure.lag_ended();
            }
            Lag::Stuck if !self.closing.get() && self.is_under_resume_mark(waiting, held) => {
                self.lag.set(Lag::KeepsUp)
            }
            _ => {}
        }
    }

    /// Whether `waiting` bytes or `held` queued messages reached a pause mark.
    #[inline]
    fn is_over_pause_mark(&self, waiting: usize, held: usize) -> bool {
        waiting >= self.pause_bytes as usize || held >= self.pause_messages as usize
    }

    /// Whether `waiting` bytes and `held` queued messages are below the resume mark: half of
    /// each pause mark, so that a subscriber let go has that much still to write while its
    /// publishers refill its buffer.
    fn is_under_resume_mark(&self, waiting: usize, held: usize) -> bool {
        waiting < self.pause_bytes as usize / 2 && held < self.pause_messages.div_ceil(2) as usize
    }

    /// A lagging subscriber whose socket took nothing for `stall` is stuck: it stops holding
    /// its publishers back. Returns whether it was found stuck now.
    pub fn check_stall(&self, now: Instant, stall: Duration) -> bool {
        if self.lag.get() != Lag::Lagging || now - self.progress_at.get() < stall {
            return false;
        }
        self.lag.set(Lag::Stuck);
        self.pressure.lag_ended();
        true
    }

    /// Drops the oldest QoS 0 PUBLISH not yet started on the wire; returns whether one was.
    pub fn drop_oldest(&self) -> bool {
        let mut frames = self.frames.borrow_mut();
        // The first frame may be partly written, and committed frames are announced: they stay.
        let mut start = 0;
        let index = frames.iter().position(|f| {
            let is_free = start > 0 && start >= self.committed.get() && f.is_droppable;
            start += f.len();
            is_free
        });
        let Some(frame) = index.and_then(|index| frames.remove(index)) else {
            return false;
        };
        drop(frames);
        self.bytes.set(self.bytes.get() - frame.len());
        self.pressure.sub(frame.len());
        self.update_lag();
        true
    }

    /// Whether the connection is being closed.
    pub fn is_closing(&self) -> bool {
        self.closing.get()
    }

    /// Bytes waiting to be written.
    pub fn queued_bytes(&self) -> usize {
        self.bytes.get()
    }

    /// Whether more than `limit` bytes are waiting.
    pub fn is_over(&self, limit: usize) -> bool {
        self.bytes.get() > limit
    }

    fn wake(&self) {
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    /// The connection's reader is done: a writer lingering after the close stops waiting
    /// (`poll_reader_done`).
    pub fn reader_done(&self) {
        self.reader_done.set(true);
        self.wake();
    }

    /// Ready once `reader_done` was called. Shares the writer's waker: the writer waits here
    /// only once it has stopped waiting for frames.
    pub fn poll_reader_done(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.reader_done.get() {
            return Poll::Ready(());
        }
        self.waker.set(Some(cx.waker().clone()));
        Poll::Pending
    }

    /// Ready when there is something to write or the connection is closing.
    pub fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.is_empty() || self.closing.get() {
            return Poll::Ready(());
        }
        self.waker.set(Some(cx.waker().clone()));
        Poll::Pending
    }

    /// Frames waiting (the open chunk counts as one).
    pub fn len(&self) -> usize {
        self.frames.borrow().len() + usize::from(!self.open.borrow().is_empty())
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.frames.borrow().is_empty() && self.open.borrow().is_empty()
    }

    /// Every byte queued, in order: what the writer would send, for tests to decode as the
    /// client would.
    #[cfg(test)]
    pub fn pending_wire(&self) -> BytesMut {
        let mut wire = BytesMut::new();
        self.peek_frames(usize::MAX, |f| {
            wire.extend_from_slice(&f.header);
            wire.extend_from_slice(&f.payload);
        });
        wire
    }

    /// Calls `visit` with the first `max` frames, for building one vectored write.
    pub fn peek_frames(&self, max: usize, mut visit: impl FnMut(&Frame)) {
        self.seal();
        for frame in self.frames.borrow().iter().take(max) {
            visit(frame);
        }
    }

    /// Marks the first `n` queued bytes as announced on the wire (a WebSocket frame header
    /// says their length): until written they are never dropped.
    pub fn commit(&self, n: usize) {
        self.committed.set(n);
    }

    /// Removes `n` written bytes from the front.
    pub fn consume(&self, mut n: usize) {
        self.seal();
        self.committed.set(self.committed.get().saturating_sub(n));
        self.bytes.set(self.bytes.get() - n);
        self.pressure.sub(n);
        self.pressure.count_sent(n);
        if n > 0 {
            self.progress_at.set(Instant::now());
        }
        self.update_lag();
        if self
            .rare
            .get()
            .is_some_and(|r| self.bytes.get() < r.room_mark.get())
        {
            self.wake_room();
        }
        let mut frames = self.frames.borrow_mut();
        while n > 0 {
            let Some(front) = frames.front_mut() else {
                break;
            };
            let len = front.len();
            if n >= len {
                frames.pop_front();
                n -= len;
            } else {
                front.advance(n);
                n = 0;
            }
        }
        while frames.front().is_some_and(Frame::is_empty) {
            frames.pop_front();
        }
        drop(frames);
        if self.bytes.get() == 0 {
            self.end_spell();
        }
    }

    /// The first unwritten slice (header or payload of the first frame), shared not copied:
    /// what the writer waits on when the socket is full.
    pub fn front_part(&self) -> Option<Bytes> {
        self.seal();
        let frames = self.frames.borrow();
        let front = frames.front()?;
        let part = if front.header.is_empty() {
            &front.payload
        } else {
            &front.header
        };
        Some(part.clone())
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn an_outbox_and_its_counts_fit_a_208_byte_chunk() {
        // glibc hands out chunks of the request plus 8, rounded up to 16; `Rc` adds 16.
        assert!(std::mem::size_of::<Outbox>() + 16 + 8 <= 208);
    }

    #[test]
    fn frames_wait_until_every_shard_answered() {
        let outbox = Outbox::default();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(outbox.poll_shards_released(&mut cx).is_ready());
        outbox.hold_for_shards();
        outbox.hold_for_shards();
        assert!(outbox.is_held_for_shards());
        outbox.release_for_shards();
        assert!(outbox.poll_shards_released(&mut cx).is_pending());
        outbox.release_for_shards();
        assert!(!outbox.is_held_for_shards());
        assert!(outbox.poll_shards_released(&mut cx).is_ready());
    }
    use super::*;

    fn frame(h: &'static [u8], p: &'static [u8]) -> Frame {
        Frame {
            header: Bytes::from_static(h),
            payload: Bytes::from_static(p),
            is_droppable: true,
        }
    }

    #[test]
    fn lag_counts_toward_pressure_and_stall_releases_it() {
        let pressure = Rc::new(Pressure::default());
        let outbox = Outbox::new(pressure.clone(), 4, 10);
        outbox.push(frame(b"ab", b"cd"));
        assert_eq!(outbox.lag(), Lag::Lagging);
        assert!(pressure.is_blocked());
        let later = Instant::now() + Duration::from_secs(1);
        assert!(outbox.check_stall(later, Duration::from_millis(500)));
        assert!(!pressure.is_blocked());
        outbox.consume(4);
        assert_eq!(outbox.lag(), Lag::KeepsUp);
        assert_eq!(pressure.queued_bytes(), 0);
    }

    #[test]
    fn lagging_ends_below_the_resume_mark_not_the_pause_mark() {
        let pressure = Rc::new(Pressure::default());
        let outbox = Outbox::new(pressure.clone(), 8, 4);
        outbox.push(frame(b"abcd", b"efgh"));
        assert_eq!(outbox.lag(), Lag::Lagging);
        outbox.consume(1);
        assert_eq!(
            outbox.lag(),
            Lag::Lagging,
            "7 bytes: under the pause mark only"
        );
        outbox.consume(3);
        assert_eq!(outbox.lag(), Lag::Lagging, "4 bytes: at the resume mark");
        outbox.consume(1);
        assert_eq!(outbox.lag(), Lag::KeepsUp, "3 bytes: under the resume mark");
        assert!(!pressure.is_blocked());
        outbox.set_held(4, 0);
        assert_eq!(
            outbox.lag(),
            Lag::Lagging,
            "4 queued messages: the pause mark"
        );
        outbox.set_held(2, 0);
        assert_eq!(outbox.lag(), Lag::Lagging);
        outbox.set_held(1, 0);
        assert_eq!(outbox.lag(), Lag::KeepsUp);
    }

    #[test]
    fn chunks_grow_with_the_busy_spell_and_are_given_back_when_idle() {
        let outbox = Outbox::new(Rc::new(Pressure::default()), 1 << 20, 10);
        let packet = [7u8; 256];
        for _ in 0..40 {
            outbox.push_parts(&packet[..4], &packet);
        }
        let mut chunks = Vec::new();
        outbox.peek_frames(10, |f| chunks.push(f.header.len()));
        assert_eq!(chunks.iter().sum::<usize>(), 40 * 260);
        assert!(chunks.len() <= 5, "chunks of growing size: {chunks:?}");
        outbox.consume(40 * 260);
        assert_eq!(outbox.open.borrow().capacity(), 0, "idle: no buffer held");
        outbox.push_parts(&packet[..4], &packet);
        assert!(
            outbox.open.borrow().capacity() >= 40 * 260,
            "sized by the last spell"
        );
    }

    #[test]
    fn a_quiet_connection_holds_no_queue_room_once_written() {
        let outbox = Outbox::new(Rc::new(Pressure::default()), 1 << 20, 10);
        outbox.push_parts(&[0x20, 2], &[0, 0]);
        assert!(
            outbox.open.borrow().capacity() < CHUNK_BYTES_MIN,
            "a CONNACK takes a small chunk"
        );
        let mut sent = 0;
        outbox.peek_frames(10, |f| sent += f.len());
        outbox.consume(sent);
        assert_eq!(outbox.open.borrow().capacity(), 0);
        assert_eq!(
            outbox.frames.borrow().capacity(),
            0,
            "the frame queue's room too"
        );
    }

    #[test]
    fn the_writer_linger_ends_when_the_reader_is_done() {
        let outbox = Outbox::default();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(outbox.poll_reader_done(&mut cx).is_pending());
        outbox.reader_done();
        assert!(outbox.poll_reader_done(&mut cx).is_ready());
    }

    /// An outbox that queues every packet as a frame of its own.
    fn uncoalesced(pressure: Rc<Pressure>) -> Outbox {
        Outbox::new(pressure, 1, 10)
    }

    #[test]
    fn small_packets_share_one_frame_until_the_mark() {
        let pressure = Rc::new(Pressure::default());
        let outbox = Outbox::new(pressure.clone(), 24, 10);
        outbox.push(frame(b"ab", b"cd"));
        outbox.push_parts(b"ef", b"gh");
        outbox.push(frame(b"ij", b"kl"));
        outbox.push(frame(b"mn", b"op"));
        assert_eq!(
            outbox.len(),
            2,
            "the coalesced chunk and one frame past the mark"
        );
        let mut seen = Vec::new();
        outbox.peek_frames(10, |f| seen.push([&f.header[..], &f.payload[..]].concat()));
        assert_eq!(seen, vec![b"abcdefghijkl".to_vec(), b"mnop".to_vec()]);
        assert!(outbox.drop_oldest(), "the frame past the mark is droppable");
        outbox.consume(12);
        assert!(outbox.is_empty());
        assert_eq!(pressure.queued_bytes(), 0);
    }

    #[test]
    fn drop_oldest_keeps_frames_a_websocket_header_announced() {
        let outbox = uncoalesced(Rc::new(Pressure::default()));
        for h in [b"a", b"b", b"c"] {
            outbox.push(frame(h, b"1"));
        }
        outbox.commit(4);
        assert!(outbox.drop_oldest(), "the third frame was not announced");
        assert!(!outbox.drop_oldest(), "the first two were");
        outbox.consume(2);
        outbox.push(frame(b"d", b"1"));
        outbox.push(frame(b"e", b"1"));
        assert!(outbox.drop_oldest(), "once written, the commitment shrinks");
        let mut seen = Vec::new();
        outbox.peek_frames(10, |f| seen.push(f.header.clone()));
        assert_eq!(
            seen,
            vec![Bytes::from_static(b"b"), Bytes::from_static(b"e")]
        );
    }

    #[test]
    fn drop_oldest_keeps_the_first_frame() {
        let pressure = Rc::new(Pressure::default());
        let outbox = uncoalesced(pressure.clone());
        outbox.push(frame(b"a", b"1"));
        outbox.push(frame(b"b", b"2"));
        outbox.push(frame(b"c", b"3"));
        assert!(outbox.drop_oldest());
        let mut seen = Vec::new();
        outbox.peek_frames(10, |f| seen.push(f.header.clone()));
        assert_eq!(
            seen,
            vec![Bytes::from_static(b"a"), Bytes::from_static(b"c")]
        );
        assert_eq!(pressure.queued_bytes(), 4);
        drop(outbox);
        assert_eq!(pressure.queued_bytes(), 0);
    }

    #[test]
    fn consume_handles_partial_frames() {
        let outbox = uncoalesced(Rc::new(Pressure::default()));
        outbox.push(frame(b"ab", b"cde"));
        outbox.push(frame(b"f", b""));
        assert_eq!(outbox.queued_bytes(), 6);
        outbox.consume(3);
        assert_eq!(&outbox.front_part().unwrap()[..], b"de");
        outbox.consume(2);
        assert_eq!(&outbox.front_part().unwrap()[..], b"f");
        outbox.consume(1);
        assert!(outbox.is_empty());
        assert!(outbox.front_part().is_none());
        assert_eq!(outbox.queued_bytes(), 0);
    }
}
