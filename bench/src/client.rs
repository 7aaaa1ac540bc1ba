//! The generator's MQTT connections over glommio sockets (plain TCP or TLS, the same code over
//! `transport::Stream`), speaking through ringcast's sans-IO codec: the handshake, the
//! publisher loop (closed loop: a bounded window ahead of the slowest subscriber) and the
//! subscriber loop (latency, loss, duplicates, reordering).

use crate::frames::{Frame, Frames};
use crate::payload;
use crate::plan::{topic_index, SubscriberPlan};
use crate::shared::Shared;
use crate::tracker::Tracker;
use crate::transport::{Endpoint, Stream};
use bytes::{Bytes, BytesMut};
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use hdrhistogram::Histogram;
use ringcast::protocol::codec::{encode, write_publish_header, Codec, Decoded};
use ringcast::protocol::*;
use std::cell::{Cell, RefCell};
use std::io;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

/// Bytes asked for per read: big, so a busy subscriber drains its socket in few calls.
const READ_CHUNK_BYTES: usize = 64 << 10;
/// The largest packet the generator accepts from the broker.
const PACKET_MAX_BYTES: u32 = 1 << 20;
/// Keep-alive asked for: longer than the longest run (--duration ≤ 3600 s), so no PINGREQ
/// is ever due.
const KEEP_ALIVE_SECS: u16 = u16::MAX;
/// How long connecting and subscribing may take, all clients together.
pub const SETUP_LIMIT: Duration = Duration::from_secs(30);

thread_local! {
    /// Publishers on this thread waiting for their window to open.
    static WAITERS: RefCell<Vec<Waker>> = const { RefCell::new(Vec::new()) };
}

/// Wakes this thread's waiting publishers: a subscriber or a PUBACK made progress.
fn wake_publishers() {
    WAITERS.with(|w| w.borrow_mut().drain(..).for_each(Waker::wake));
}

/// Waits until `is_open()` holds, woken by progress on this thread. A timer re-checks too:
/// every 200 µs when subscribers live on other threads (their progress wakes no one here),
/// else every 5 ms so a stalled broker cannot park the publisher past its deadline.
async fn wait_until(is_open: impl Fn() -> bool, poll_other_threads: bool) {
    let local = futures_lite::future::poll_fn(|cx| {
        if is_open() {
            return Poll::Ready(());
        }
        WAITERS.with(|w| w.borrow_mut().push(cx.waker().clone()));
        Poll::Pending
    });
    let tick = if poll_other_threads {
        Duration::from_micros(200)
    } else {
        Duration::from_millis(5)
    };
    futures_lite::future::or(local, async {
        glommio::timer::sleep(tick).await;
    })
    .await;
}

/// What one read gave.
enum Fill {
    /// This many bytes were read.
    Data(usize),
    /// Nothing within the read timeout (`transport::READ_TICK`).
    Idle,
    /// The broker closed the connection.
    Closed,
}

/// Reads once from `reader` into `room`.
async fn fill<R: AsyncRead + Unpin>(reader: &mut R, room: &mut [u8]) -> io::Result<Fill> {
    match reader.read(room).await {
        Ok(0) => Ok(Fill::Closed),
        Ok(n) => Ok(Fill::Data(n)),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
            ) =>
        {
            Ok(Fill::Idle)
        }
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(Fill::Idle),
        Err(e) => Err(e),
    }
}

/// Whether a read gave bytes; an error if the broker closed the connection.
fn is_data(read: Fill) -> io::Result<bool> {
    match read {
        Fill::Data(_) => Ok(true),
        Fill::Idle => Ok(false),
        Fill::Closed => Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "broker closed the connection",
        )),
    }
}

/// Encodes and writes one packet.
async fn send<W: AsyncWrite + Unpin>(
    writer: &mut W,
    packet: &Packet,
    version: Version,
) -> io::Result<()> {
    let mut out = BytesMut::new();
    encode(packet, version, &mut out)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{e:?}")))?;
    write_out(writer, &out).await
}

/// Writes `bytes` and flushes: a no-op on plain TCP, while TLS sends there the records the
/// socket did not take at once.
async fn write_out<W: AsyncWrite + Unpin>(writer: &mut W, bytes: &[u8]) -> io::Result<()> {
    writer.write_all(bytes).await?;
    writer.flush().await
}

/// An open MQTT connection after CONNACK, whose reads and writes the caller interleaves:
/// packets are queued and written together by `flush`; `fill` reads once and `next_packet`
/// decodes one whole packet at a time from what was read.
pub struct Conn {
    stream: Stream,
    codec: Codec,
    buf: BytesMut,
    scratch: Box<[u8]>,
    out: BytesMut,
    version: Version,
    /// The broker's Receive Maximum (5.0), if it gave one.
    pub receive_maximum: Option<u16>,
}

impl Conn {
    /// Connects, sends CONNECT (clean, the longest keep-alive: runs are shorter than it and
    /// pings would only add noise; 0 would be simpler but rumqttd refuses it) and waits up to
    /// `SETUP_LIMIT` for a CONNACK that accepts.
    pub async fn open(broker: &Endpoint, version: Version, client_id: &str) -> io::Result<Conn> {
        Conn::open_with(broker, version, client_id, READ_CHUNK_BYTES).await
    }

    /// Like `open`, reading at most `read_chunk` bytes at a time (idle connections in the
    /// conns scenario use a small one: thousands of 64 KiB buffers would measure us).
    pub async fn open_with(
        broker: &Endpoint,
        version: Version,
        client_id: &str,
        read_chunk: usize,
    ) -> io::Result<Conn> {
        let deadline = Instant::now() + SETUP_LIMIT;
        Conn::connect(broker, version, client_id, read_chunk, deadline).await
    }

    /// Like `open`, waiting for the CONNACK until `deadline` (the retained scenario bounds each
    /// of its phases by --duration).
    pub async fn open_until(
        broker: &Endpoint,
        version: Version,
        client_id: &str,
        deadline: Instant,
    ) -> io::Result<Conn> {
        Conn::connect(broker, version, client_id, READ_CHUNK_BYTES, deadline).await
    }

    async fn connect(
        broker: &Endpoint,
        version: Version,
        client_id: &str,
        read_chunk: usize,
        deadline: Instant,
    ) -> io::Result<Conn> {
        let stream = broker.connect(read_chunk, deadline).await?;
        let mut conn = Conn {
            stream,
            codec: Codec::with_version(version, PACKET_MAX_BYTES),
            buf: BytesMut::with_capacity(read_chunk),
            scratch: vec![0u8; read_chunk].into_boxed_slice(),
            out: BytesMut::new(),
            version,
            receive_maximum: None,
        };
        let mut properties = Props::default();
        if broker.persistent && version == Version::V5 {
            properties.session_expiry_interval = Some(u32::MAX);
        }
        conn.queue(&Packet::Connect(Box::new(Connect {
            version,
            client_id: MqttString::from_str_checked(client_id)
                .ok_or_else(|| invalid("client id"))?,
            clean_start: !broker.persistent,
            keep_alive_secs: KEEP_ALIVE_SECS,
            username: None,
            password: None,
            will: None,
            properties,
        })))?;
        conn.flush().await?;
        match conn.recv(deadline).await? {
            Packet::ConnAck(ack) if ack.code.0 == 0 => {
                conn.receive_maximum = ack.properties.receive_maximum;
                Ok(conn)
            }
            other => Err(invalid(&format!(
                "expected an accepting CONNACK, got {other:?}"
            ))),
        }
    }

    /// Subscribes to one filter and checks the SUBACK grants it.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> io::Result<()> {
        self.queue(&subscribe_packet(filter, qos)?)?;
        self.flush().await?;
        match self.recv(Instant::now() + SETUP_LIMIT).await? {
            Packet::SubAck(ack) if ack.reason_codes.iter().all(|c| c.0 < 0x80) => Ok(()),
            other => Err(invalid(&format!("SUBSCRIBE refused: {other:?}"))),
        }
    }

    /// Encodes `packet` into the output buffer; `flush` writes it.
    pub fn queue(&mut self, packet: &Packet) -> io::Result<()> {
        encode(packet, self.version, &mut self.out).map_err(|e| invalid(&format!("{e:?}")))
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            write_out(&mut self.stream, &self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    /// Reads once; false if nothing came within the read timeout, an error if the broker
    /// closed the connection.
    pub async fn fill(&mut self) -> io::Result<bool> {
        let read = fill(&mut self.stream, &mut self.scratch).await?;
        if let Fill::Data(n) = read {
            self.buf.extend_from_slice(&self.scratch[..n]);
        }
        is_data(read)
    }

    /// Reads once straight into `frames` (no copy); like `fill` otherwise.
    pub async fn fill_frames(&mut self, frames: &mut Frames) -> io::Result<bool> {
        let read = fill(&mut self.stream, frames.room()).await?;
        if let Fill::Data(n) = read {
            frames.filled(n);
        }
        is_data(read)
    }

    /// A subscriber's read buffer, holding what was read after the last packet decoded.
    pub fn frames(&mut self) -> Frames {
        let already = self.buf.split();
        // The scratch buffer is not read into any more.
        self.scratch = Box::default();
        Frames::new(
            READ_CHUNK_BYTES,
            &already,
            self.version,
            PACKET_MAX_BYTES as usize,
        )
    }

    /// The next whole packet already read, if any.
    pub fn next_packet(&mut self) -> io::Result<Option<Packet>> {
        match self.codec.decode(&mut self.buf) {
            Ok(Decoded::Packet(p)) => Ok(Some(p)),
            Ok(Decoded::Incomplete { .. }) => Ok(None),
            Err(e) => Err(invalid(&format!("decode: {e:?}"))),
        }
    }

    /// The next packet, reading as needed; an error if none is whole by `deadline`.
    async fn recv(&mut self, deadline: Instant) -> io::Result<Packet> {
        loop {
            if let Some(packet) = self.next_packet()? {
                return Ok(packet);
            }
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no answer from the broker",
                ));
            }
            self.fill().await?;
        }
    }

    /// How the TLS handshake went (full or resumed); `None` on plain TCP.
    pub fn handshake_kind(&self) -> Option<rustls::HandshakeKind> {
        self.stream.handshake_kind()
    }

    /// Sends DISCONNECT after anything still queued, best effort: the run is over either way.
    /// With TLS, close_notify follows.
    pub async fn disconnect(mut self) {
        if self
            .queue(&Packet::Disconnect(Disconnect::default()))
            .is_ok()
        {
            let _ = self.flush().await;
        }
        let _ = self.stream.close().await;
    }
}

/// A SUBSCRIBE (packet id 1) for one filter at `qos`.
pub fn subscribe_packet(filter: &str, qos: QoS) -> io::Result<Packet> {
    Ok(Packet::Subscribe(Subscribe {
        pkid: 1,
        filters: vec![SubscribeFilter {
            filter: MqttString::from_str_checked(filter).ok_or_else(|| invalid("filter"))?,
            options: SubscriptionOptions {
                qos,
                ..Default::default()
            },
        }],
        properties: Props::default(),
    }))
}

/// An `InvalidData` error saying what was wrong.
pub fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// What a publisher needs to know.
#[derive(Clone, Debug)]
pub struct PublisherSpec {
    /// Publisher index (also its topic index).
    pub index: usize,
    /// Topics it publishes on, in turn.
    pub topics: Vec<String>,
    /// Streams it feeds; the slowest bounds its window.
    pub streams: Vec<usize>,
    /// QoS of its publishes.
    pub qos: QoS,
    /// Payload bytes.
    pub payload_bytes: usize,
    /// Messages ahead of the slowest subscriber, at most.
    pub window: u64,
    /// QoS 1/2 PUBLISHes not yet completed (PUBACK or PUBCOMP), at most.
    pub inflight: u64,
    /// Messages per write, at most.
    pub batch: u64,
    /// Messages to send at most.
    pub count: u64,
    /// How long to publish.
    pub duration: Duration,
    /// How long to wait for PUBACKs after the last publish.
    pub drain: Duration,
    /// Whether some of its subscribers run on other threads.
    pub poll_other_threads: bool,
    /// Open loop: this publisher's messages per second; `None` is closed loop.
    pub rate_per_s: Option<f64>,
}

/// Builds the PUBLISH header of `topic` once; for QoS 1 and 2 also finds where the packet id
/// sits, so each message only patches two bytes.
fn publish_header(
    spec: &PublisherSpec,
    topic: &str,
    version: Version,
) -> io::Result<(BytesMut, Option<usize>)> {
    let header = |pkid: u16| -> io::Result<BytesMut> {
        let publish = Publish {
            dup: false,
            qos: spec.qos,
            retain: false,
            topic: MqttString::from_str_checked(topic).ok_or_else(|| invalid("topic"))?,
            pkid,
            properties: Props::default(),
            payload: Bytes::from(vec![0u8; spec.payload_bytes]),
        };
        let mut out = BytesMut::new();
        write_publish_header(&publish, version, &mut out)
            .map_err(|e| invalid(&format!("{e:?}")))?;
        Ok(out)
    };
    if spec.qos == QoS::AtMostOnce {
        return Ok((header(0)?, None));
    }
    let (a, b) = (header(0x0101)?, header(0x0202)?);
    let at = a
        .iter()
        .zip(b.iter())
        .position(|(x, y)| x != y)
        .ok_or_else(|| invalid("packet id"))?;
    Ok((a, Some(at)))
}

/// Runs one publisher: waits for every subscriber, then publishes until its count or duration
/// is reached, never more than `window` ahead of its slowest subscriber. Returns messages sent.
pub async fn publisher(
    shared: Arc<Shared>,
    broker: Endpoint,
    version: Version,
    spec: PublisherSpec,
    subscribers: usize,
    id: String,
) -> u64 {
    let conn = match Conn::open(&broker, version, &id).await {
        Ok(conn) => conn,
        Err(e) => {
            shared.fail(format!("publisher {}: {e}", spec.index));
            return finish_publisher(&shared, spec.index, 0);
        }
    };
    if !wait_for_subscribers(&shared, subscribers).await {
        return finish_publisher(&shared, spec.index, 0);
    }
    let _ = shared
        .publish_start_ns
        .compare_exchange(0, shared.now_ns().max(1), Relaxed, Relaxed);
    let sent = match publish_loop(&shared, conn, &spec).await {
        Ok(sent) => sent,
        Err((sent, e)) => {
            shared.fail(format!("publisher {}: {e}", spec.index));
            sent
        }
    };
    finish_publisher(&shared, spec.index, sent)
}

/// Waits until `n` subscribers have their SUBACK; false if the run was aborted or timed out.
async fn wait_for_subscribers(shared: &Shared, n: usize) -> bool {
    let deadline = Instant::now() + SETUP_LIMIT;
    while shared.subscribed.load(Relaxed) < n {
        if shared.is_aborted() || Instant::now() > deadline {
            shared.fail("subscribers not ready in time".into());
            return false;
        }
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
    true
}

/// Records the publisher's final count; the last one to finish marks the end of publishing.
fn finish_publisher(shared: &Shared, index: usize, sent: u64) -> u64 {
    shared.final_count[index].store(sent, Relaxed);
    if shared.publishers_left.fetch_sub(1, Relaxed) == 1 {
        shared.publish_end_ns.store(shared.now_ns().max(1), Relaxed);
    }
    sent
}

/// What the publisher's reader task learns from the broker: completed messages and, at QoS 2,
/// the packet ids whose PUBREC asks for a PUBREL.
#[derive(Default)]
struct Acks {
    /// PUBACKs (QoS 1) or PUBCOMPs (QoS 2) received.
    completed: Cell<u64>,
    /// PUBRECs not yet answered with a PUBREL.
    to_release: RefCell<Vec<u16>>,
    /// Set when the reader should stop.
    done: Cell<bool>,
}

/// Writes a PUBREL for every PUBREC received so far.
async fn release<W: AsyncWrite + Unpin>(
    writer: &mut W,
    acks: &Acks,
    version: Version,
    out: &mut BytesMut,
) -> io::Result<()> {
    let pkids: Vec<u16> = acks.to_release.borrow_mut().drain(..).collect();
    if pkids.is_empty() {
        return Ok(());
    }
    out.clear();
    for pkid in pkids {
        let rel = Packet::PubRel(Ack {
            pkid,
            ..Ack::default()
        });
        encode(&rel, version, out)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{e:?}")))?;
    }
    write_out(writer, out).await
}

/// The publishing itself; on error gives back how many were sent before it.
///
/// Closed loop: sends as fast as the window allows. Open loop (`rate_per_s`): message `seq` is
/// due at `start + seq / rate` and carries that time as its send time, whether or not the
/// window let it go out then.
async fn publish_loop(
    shared: &Shared,
    conn: Conn,
    spec: &PublisherSpec,
) -> Result<u64, (u64, io::Error)> {
    let version = conn.version;
    let headers = spec
        .topics
        .iter()
        .map(|t| publish_header(spec, t, version))
        .collect::<io::Result<Vec<_>>>()
        .map_err(|e| (0, e))?;
    let has_acks = spec.qos != QoS::AtMostOnce;
    let inflight = spec
        .inflight
        .min(conn.receive_maximum.map_or(u64::MAX, u64::from));
    let (mut reader, mut writer) = futures_lite::io::split(conn.stream);
    let acks = Rc::new(Acks::default());
    let ack_task = has_acks.then(|| {
        let (acks, codec, buf) = (acks.clone(), conn.codec, conn.buf);
        glommio::spawn_local(async move { read_acks(&mut reader, codec, buf, &acks).await })
    });
    let mut template = vec![0u8; spec.payload_bytes];
    let header_max = headers.iter().map(|h| h.0.len()).max().unwrap_or(0);
    let mut out = BytesMut::with_capacity((header_max + spec.payload_bytes) * spec.batch as usize);
    let mut control = BytesMut::new();
    let start = shared.now_ns();
    let deadline = start + spec.duration.as_nanos() as u64;
    // Nanoseconds between two scheduled messages, open loop only.
    let interval = spec.rate_per_s.map(|r| 1e9 / r);
    let due = |seq: u64| interval.map_or(0, |i| start + (seq as f64 * i) as u64);
    let mut sent = 0u64;
    while sent < spec.count && shared.now_ns() < deadline && !shared.is_aborted() {
        release(&mut writer, &acks, version, &mut control)
            .await
            .map_err(|e| (sent, e))?;
        let room = |sent: u64| {
            let ahead = sent - shared.slowest(&spec.streams).min(sent);
            let unacked = if has_acks {
                sent - acks.completed.get().min(sent)
            } else {
                0
            };
            spec.window
                .saturating_sub(ahead)
                .min(inflight.saturating_sub(unacked))
                .min(spec.batch)
                .min(spec.count - sent)
        };
        let now = shared.now_ns();
        // Open loop: only what is due by now (at least one, after sleeping until it is due).
        let scheduled = match interval {
            Some(i) => {
                let due_now = ((now.saturating_sub(start)) as f64 / i) as u64 + 1;
                if due_now <= sent {
                    let wait = due(sent).saturating_sub(now);
                    glommio::timer::sleep(Duration::from_nanos(wait)).await;
                    continue;
                }
                due_now - sent
            }
            None => u64::MAX,
        };
        let want = spec
            .batch
            .min(spec.window)
            .min(inflight)
            .min(spec.count - sent)
            .min(scheduled)
            .max(1);
        if room(sent) < want {
            wait_until(
                || {
                    room(sent) >= want
                        || shared.is_aborted()
                        || !acks.to_release.borrow().is_empty()
                },
                spec.poll_other_threads,
            )
            .await;
            continue;
        }
        let n = room(sent).min(scheduled);
        out.clear();
        for seq in sent..sent + n {
            let (header, pkid_at) = &headers[(seq % headers.len() as u64) as usize];
            let start = out.len();
            out.extend_from_slice(header);
            if let Some(at) = pkid_at {
                // Packet ids 1..=65535 in turn; the inflight bound keeps them unique.
                let pkid = (seq % 65_535 + 1) as u16;
                out[start + at..start + at + 2].copy_from_slice(&pkid.to_be_bytes());
            }
            let stamp = if interval.is_some() { due(seq) } else { now };
            payload::stamp(&mut template, seq, stamp);
            out.extend_from_slice(&template);
        }
        write_out(&mut writer, &out).await.map_err(|e| (sent, e))?;
        sent += n;
        shared.published.fetch_add(n, Relaxed);
    }
    if let Some(task) = ack_task {
        let drain_end = Instant::now() + spec.drain;
        while acks.completed.get() < sent && Instant::now() < drain_end && !shared.is_aborted() {
            release(&mut writer, &acks, version, &mut control)
                .await
                .map_err(|e| (sent, e))?;
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
        acks.done.set(true);
        task.await;
    }
    let _ = send(
        &mut writer,
        &Packet::Disconnect(Disconnect::default()),
        version,
    )
    .await;
    Ok(sent)
}

/// Counts PUBACKs and PUBCOMPs and collects PUBRECs until `done`; anything else from the
/// broker is ignored.
async fn read_acks<R: AsyncRead + Unpin>(
    reader: &mut R,
    mut codec: Codec,
    mut buf: BytesMut,
    acks: &Acks,
) {
    let mut scratch = vec![0u8; READ_CHUNK_BYTES];
    while !acks.done.get() {
        match fill(reader, &mut scratch).await {
            Ok(Fill::Data(n)) => buf.extend_from_slice(&scratch[..n]),
            Ok(Fill::Idle) => continue,
            Ok(Fill::Closed) | Err(_) => return,
        }
        while let Ok(Decoded::Packet(p)) = codec.decode(&mut buf) {
            match p {
                Packet::PubAck(_) | Packet::PubComp(_) => {
                    acks.completed.set(acks.completed.get() + 1)
                }
                Packet::PubRec(rec) => acks.to_release.borrow_mut().push(rec.pkid),
                _ => {}
            }
        }
        wake_publishers();
    }
}

/// What a subscriber saw.
pub struct SubscriberResult {
    /// Per stream it received: the stream id and its counts.
    pub streams: Vec<(usize, Tracker)>,
    /// PUBLISH packets received, duplicates included.
    pub deliveries: u64,
}

/// What a subscriber needs to know.
#[derive(Clone, Debug)]
pub struct SubscriberSpec {
    /// The broker and how to reach it.
    pub broker: Endpoint,
    /// Protocol version.
    pub version: Version,
    /// QoS it subscribes with.
    pub qos: QoS,
    /// Its filter and streams.
    pub plan: SubscriberPlan,
    /// Client id.
    pub id: String,
    /// How long to wait for the last messages once publishing ends.
    pub drain: Duration,
}

/// Runs one subscriber until its streams are complete or the drain time after publishing ends.
/// Latencies go into `histogram`, shared by the subscribers of this thread.
pub async fn subscriber(
    shared: Arc<Shared>,
    spec: SubscriberSpec,
    histogram: Rc<RefCell<Histogram<u64>>>,
) -> SubscriberResult {
    let plan = &spec.plan;
    let id = &spec.id;
    let mut result = SubscriberResult {
        streams: (0..plan.publishers)
            .map(|i| (plan.first_stream + i, Tracker::default()))
            .collect(),
        deliveries: 0,
    };
    let conn = match Conn::open(&spec.broker, spec.version, id).await {
        Ok(mut conn) => match conn.subscribe(&plan.filter, spec.qos).await {
            Ok(()) => conn,
            Err(e) => return fail_subscriber(&shared, id, e, result),
        },
        Err(e) => return fail_subscriber(&shared, id, e, result),
    };
    shared.subscribed.fetch_add(1, Relaxed);
    if let Err(e) = receive_loop(&shared, conn, plan, spec.drain, &histogram, &mut result).await {
        shared.fail(format!("subscriber {id}: {e}"));
    }
    result
}

fn fail_subscriber(
    shared: &Shared,
    id: &str,
    e: io::Error,
    result: SubscriberResult,
) -> SubscriberResult {
    shared.fail(format!("subscriber {id}: {e}"));
    result
}

/// Reads, decodes and accounts PUBLISHes (acknowledging QoS 1 and 2) until done.
async fn receive_loop(
    shared: &Shared,
    mut conn: Conn,
    plan: &SubscriberPlan,
    drain: Duration,
    histogram: &RefCell<Histogram<u64>>,
    result: &mut SubscriberResult,
) -> io::Result<()> {
    let mut frames = conn.frames();
    while !is_subscriber_done(shared, result, drain) {
        if !conn.fill_frames(&mut frames).await? {
            continue;
        }
        // One clock read per chunk: everything in it arrived together.
        let now = shared.now_ns();
        let got = {
            // Released before the flush awaits: the thread's other subscribers share it.
            let mut hist = histogram.borrow_mut();
            decode_chunk(&mut conn, &mut frames, plan, now, &mut hist, result)?
        };
        if got > 0 {
            publish_progress(shared, result, got, now);
        }
        conn.flush().await?;
    }
    conn.disconnect().await;
    Ok(())
}

/// Scans every whole packet already read, accounting PUBLISHes and queueing their
/// acknowledgements (PUBACK at QoS 1; PUBREC, then PUBCOMP for the PUBREL, at QoS 2).
/// Returns the number of PUBLISHes.
fn decode_chunk(
    conn: &mut Conn,
    frames: &mut Frames,
    plan: &SubscriberPlan,
    now: u64,
    hist: &mut Histogram<u64>,
    result: &mut SubscriberResult,
) -> io::Result<u64> {
    let mut got = 0;
    while let Some(frame) = frames.next_frame().map_err(|e| invalid(&e))? {
        let ack = |pkid| Ack {
            pkid,
            ..Ack::default()
        };
        let answer = match frame {
            Frame::Publish {
                qos,
                pkid,
                topic,
                payload,
            } => {
                got += 1;
                account(plan, topic, payload, now, hist, result);
                match qos {
                    0 => None,
                    1 => Some(Packet::PubAck(ack(pkid))),
                    _ => Some(Packet::PubRec(ack(pkid))),
                }
            }
            Frame::PubRel(pkid) => Some(Packet::PubComp(ack(pkid))),
            Frame::Other => None,
        };
        if let Some(answer) = answer {
            conn.queue(&answer)?;
        }
    }
    Ok(got)
}

/// Records one PUBLISH: its stream's sequence accounting and its latency.
fn account(
    plan: &SubscriberPlan,
    topic: &[u8],
    payload: &[u8],
    now: u64,
    hist: &mut Histogram<u64>,
    result: &mut SubscriberResult,
) {
    let Some(topic) = topic_index(topic) else {
        return;
    };
    let Some(slot) = plan.slot_of_topic(topic) else {
        return;
    };
    let Some((seq, sent)) = payload::read(payload) else {
        return;
    };
    result.streams[slot].1.record(seq);
    hist.saturating_record(now.saturating_sub(sent).max(1));
}

/// Tells publishers (and the progress line) how far this subscriber got.
fn publish_progress(shared: &Shared, result: &mut SubscriberResult, got: u64, now: u64) {
    result.deliveries += got;
    for (stream, tracker) in &result.streams {
        shared.reached[*stream].store(tracker.next(), Relaxed);
    }
    shared.delivered.fetch_add(got, Relaxed);
    shared.last_delivery_ns.fetch_max(now, Relaxed);
    wake_publishers();
}

/// Done when aborted, when every stream has everything its publisher sent, or when the drain
/// time after the end of publishing is over.
fn is_subscriber_done(shared: &Shared, result: &SubscriberResult, drain: Duration) -> bool {
    if shared.is_aborted() {
        return true;
    }
    let end = shared.publish_end_ns.load(Relaxed);
    if end == 0 {
        return false;
    }
    let complete = result.streams.iter().all(|(stream, tracker)| {
        let publisher = shared.publisher_of_stream[*stream];
        tracker.next() >= shared.final_count[publisher].load(Relaxed)
    });
    complete || shared.now_ns() > end + drain.as_nanos() as u64
}
