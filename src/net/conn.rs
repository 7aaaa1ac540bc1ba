//! One client connection's socket task: read, decode, ask the connection machine
//! (`protocol::connection`), act on the shard, write.
//!
//! Reading and writing share the connection's task, each polled on every wake: the reader
//! reads and handles packets, the writer (`writer::run`) drains the outbox through the
//! transport. Every protocol rule is the machine's; this file only moves bytes and carries the
//! machine's actions to the shard.

use super::gate::Gate;
use super::keepalive::{self, Deadline};
use super::tls::Certificates;
use super::transport::{self, Reader, Shutdown, Writer};
use super::{arena, http, tls, writer};
use crate::protocol::codec::{self, Codec, DecodeError, Decoded};
use crate::protocol::connection::{Accepted, Action, Admission, Connection, Qos2, Refusal};
use crate::protocol::{
    ConnAck, Connect, Packet, Publish, QoS, ReasonCode, Subscribe, Unsubscribe, Version, Will,
};
use crate::security::acl::ReadScope;
use crate::shard::encoder::{push_packet, Encoder};
use crate::shard::outbox::Outbox;
use crate::shard::session::{Session, Subscription};
use crate::shard::{Message, SessionKey, Shard};
use bytes::{Buf, BytesMut};
use glommio::net::TcpStream;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Bytes asked of the socket per read.
const READ_CHUNK_BYTES: usize = 16 << 10;
// `Conn::read_chunk` holds it in 16 bits.
const _: () = assert!(READ_CHUNK_BYTES <= u16::MAX as usize);
/// Bytes asked of the socket per read on a new connection; doubled (up to
/// `READ_CHUNK_BYTES`) whenever a read fills it, so idle connections stay small and busy
/// publishers soon read in large chunks.
const READ_START_BYTES: usize = 1 << 10;
/// How long a closing connection may take to flush what is queued.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// What a connection the broker closed may still read and discard, at most, while its client
/// reads the DISCONNECT (so unread input does not turn the close into a reset).
const LINGER_BYTES_MAX: usize = 1 << 20;
/// PUBACKs handled in one batch, at most: more than the default window of 500
/// (`limits.inflight_max`), so one read of a subscriber's acknowledgements refills its window
/// with one session lookup and one pump of its queue.
const PUBACK_BATCH_MAX: usize = 512;
/// Most a packet counts toward `read_bytes_per_turn`: a turn then holds as many messages of
/// 256 bytes as of 16 (each about this size on the wire), so a larger payload does not mean
/// smaller writes to every subscriber (fanout-10 of 256-byte messages: 16 KiB turns took
/// 245 ns of broker CPU per delivery, turns of as many messages as at 16 bytes 205 ns).
const TURN_PACKET_COST_MAX: usize = 32;
/// The bytes read in one turn stay below this many times `read_bytes_per_turn`.
const TURN_BYTES_FACTOR: usize = 8;

/// PUBLISHes routed as one run at most (`Conn::publish_run`). Each subscriber gets a run
/// at once, so a run goes past the shard's backpressure checks (made once per run) by at most
/// this many messages.
const RUN_MAX: usize = 32;

thread_local! {
    /// The buffer a run is gathered in (`Conn::publish_run`), kept for the next run: a new
    /// one per run, `RUN_MAX` messages of 32 bytes, is an allocation of 1 KiB, the size from
    /// which glibc merges its fast bins first (`malloc_consolidate`), so the small allocations
    /// after it (a message each) would take its slow path.
    static RUN_BUFFER: std::cell::Cell<Vec<Message>> = const { std::cell::Cell::new(Vec::new()) };
}

/// `Conn::hold_point` of an action that holds nothing (not an `Option`: the read loop keeps
/// it across an await, in the task that lives as long as the connection).
const NO_HOLD: u64 = u64::MAX;

/// What is left of an action that has to wait.
enum Wait {
    /// A QoS 1/2 PUBLISH while the store cannot write (see `refused_for_disk`).
    Disk(Action),
    /// A message for other shards too.
    Route(Message),
    /// A QoS 2 PUBLISH, recorded and routed.
    Qos2(Publish),
    /// A SUBSCRIBE: other shards are told, then retained messages follow.
    Subscribe(Subscribe),
    /// A run of PUBLISHes (`publish_run`) the ring toward another shard had no room for,
    /// routed message by message, and what followed it in the buffer.
    Run(Box<RunLeft>),
}

/// A run of messages not yet routed, and what followed it (`read_run`).
type RunLeft = (Vec<Message>, Option<Result<Action, End>>);

/// Why the read loop stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// The client sent DISCONNECT; its will is published only if it asked (5.0 reason 0x04).
    Disconnected { publish_will: bool },
    /// The socket closed or failed; the will is published.
    Gone,
    /// The broker closed the connection with a reason; the will is published. The client may
    /// still be sending.
    Closed,
    /// Refused at CONNECT: no session was made.
    Refused,
}

/// Starts serving a connection accepted on listener `listener`: its task, which reads and
/// writes.
/// A plain TCP connection's task holds no more than its state needs while the connection
/// lives; TLS and WebSocket connections first go through their handshakes (`serve`).
pub fn spawn(shard: Rc<Shard>, stream: TcpStream, gate: Rc<Gate>, listener: usize) {
    let is_plain = gate
        .endpoint(listener)
        .is_some_and(|e| e.tls.is_none() && e.site.is_none());
    if !is_plain {
        glommio::spawn_local(serve(shard, stream, gate, listener)).detach();
        return;
    }
    let now = Instant::now();
    let peer = stream.peer_addr().ok().map(|a| a.ip());
    let (reader, writer) = match transport::plain(stream) {
        Ok(halves) => halves,
        Err(e) => {
            tracing::warn!("connection closed at once: its socket could not be watched: {e}");
            return shard.connection_closed();
        }
    };
    let login = Login::new(gate, listener, peer, Identity::Credentials);
    glommio::spawn_local(serve_transport(shard, reader, writer, login, now)).detach();
}

/// Serves one connection accepted on listener `listener` until it closes: the TLS handshake
/// first where the listener speaks TLS, within the CONNECT deadline, then on a WebSocket
/// listener the HTTP requests up to the upgrade.
async fn serve(shard: Rc<Shard>, stream: TcpStream, gate: Rc<Gate>, listener: usize) {
    let now = Instant::now();
    let peer = stream.peer_addr().ok().map(|a| a.ip());
    let Some(endpoint) = gate.endpoint(listener) else {
        return shard.connection_closed();
    };
    // The handshakes are boxed: the task lives as long as the connection, and would
    // otherwise carry their state all that time.
    let secured = match &endpoint.tls {
        None => {
            let (reader, writer) = transport::tcp(stream);
            Some((reader, writer, Identity::Credentials))
        }
        Some(certificates) => {
            Box::pin(secure(&shard, stream, (&gate, certificates), peer, now)).await
        }
    };
    let Some((reader, writer, identity)) = secured else {
        return shard.connection_closed();
    };
    let (reader, writer) = match &endpoint.site {
        None => (reader, writer),
        Some(site) => match Box::pin(http::serve(reader, writer, site, &shard, &gate)).await {
            Some(upgraded) => transport::ws::split(
                upgraded.reader,
                upgraded.writer,
                upgraded.leftover,
                shard.connection_limits().packet_size_max as usize,
            ),
            None => return shard.connection_closed(),
        },
    };
    // The CONNECT deadline runs from the upgrade on a WebSocket connection, which may have
    // served HTTP requests first.
    let now = match endpoint.site {
        Some(_) => Instant::now(),
        None => now,
    };
    let login = Login::new(gate, listener, peer, identity);
    serve_transport(shard, reader, writer, login, now).await;
}

/// The connection's TLS transport halves after its handshake (None when the handshake
/// failed).
async fn secure(
    shard: &Shard,
    stream: TcpStream,
    (gate, certificates): (&Gate, &Certificates),
    peer: Option<IpAddr>,
    now: Instant,
) -> Option<(Reader, Writer, Identity)> {
    let timeout = shard.connection_limits().connect_timeout_secs;
    let deadline = now + Duration::from_secs(timeout);
    match tls::accept(stream, certificates.current(), deadline).await {
        Ok((reader, writer, session)) => {
            let identity = if certificates.uses_identity_as_username() {
                Identity::Certificate(session.peer_common_name())
            } else {
                Identity::Credentials
            };
            Some((
                Reader::Tls(Box::new(reader)),
                Writer::Tls(Box::new(writer)),
                identity,
            ))
        }
        Err(e) => {
            let why = format!("TLS handshake failed: {e}");
            gate.refusals.refused(peer, why, Instant::now());
            shard.metrics.count_handshake_failure();
            None
        }
    }
}

/// Who a connection is, as far as the gate is concerned.
struct Login {
    gate: Rc<Gate>,
    /// What only logging in needs, boxed and dropped once the CONNECT is answered: every
    /// connection's task holds its `Conn` for as long as it lives.
    arrival: Option<Box<Arrival>>,
}

/// Where a connection came from and how it proves who it is.
struct Arrival {
    listener: usize,
    peer: Option<IpAddr>,
    /// What the username comes from.
    identity: Identity,
}

impl Login {
    fn new(gate: Rc<Gate>, listener: usize, peer: Option<IpAddr>, identity: Identity) -> Login {
        let arrival = Arrival {
            listener,
            peer,
            identity,
        };
        Login {
            gate,
            arrival: Some(Box::new(arrival)),
        }
    }

    /// The client's address, while it logs in.
    fn peer(&self) -> Option<IpAddr> {
        self.arrival.as_ref().and_then(|a| a.peer)
    }
}

/// Where a connection's username comes from.
enum Identity {
    /// The CONNECT's username and password, checked against the password file.
    Credentials,
    /// The client certificate's Common Name (`use_identity_as_username`); None when the client
    /// sent no certificate or one without a Common Name, which logs in as nobody.
    Certificate(Option<String>),
}

/// Serves a connection over its transport until it closes: reads and handles packets and
/// drains the outbox into the transport, both in the connection's one task.
fn serve_transport(
    shard: Rc<Shard>,
    reader: Reader,
    mut writer: Writer,
    login: Login,
    now: Instant,
) -> impl std::future::Future<Output = ()> {
    // Read once: a reload (SIGHUP) changes them for connections that start later.
    let connection_limits = shard.connection_limits();
    let limits = &shard.limits;
    let pause_messages = (limits.queue_messages_max / 2).max(1);
    let outbox = Outbox::new(
        shard.pressure.clone(),
        limits.write_buffer_pause_bytes,
        pause_messages,
    );
    let mut conn = Conn {
        login,
        username: None,
        client_id: None,
        machine: Connection::new(connection_limits.clone(), now),
        shard,
        reader,
        buf: BytesMut::new(),
        in_arena: false,
        read_chunk: READ_START_BYTES as u16,
        codec: Codec::new(connection_limits.packet_size_max),
        outbox: Rc::new(outbox),
        key: 0,
        token: 0,
        now,
        deadline: Deadline::default(),
    };
    // An async block, not an async fn: a fn's arguments would be kept twice in the task
    // (as arguments and as the locals they are moved into), the `Conn` among them.
    async move {
        // The writer works on the socket the reader owns, which `conn` keeps open until the
        // writer is done. What it is given is made here, in the call, not captured: what the
        // block captures stays in the task beside what it is moved into.
        let writing = writer::run(&mut writer, conn.outbox.clone(), conn.shard.persist.clone());
        let reading = async {
            let end = conn.run().await;
            conn.outbox.close();
            conn.outbox.reader_done();
            end
        };
        let (end, flushed) = ReadAndWrite::new(reading, writing).await;
        if !flushed {
            // The writer was dropped (cancelled) at the flush's deadline; close the socket for
            // good.
            conn.reader.shutdown(Shutdown::Both);
        } else if matches!(end, End::Closed | End::Refused) {
            Box::pin(conn.discard_input()).await;
        }
        let shard = conn.shard.clone();
        drop(conn);
        shard.connection_closed();
    }
}

pin_project_lite::pin_project! {
    /// A connection's reading and writing, both polled on every wake of its one task, until
    /// reading has ended and writing too, or `FLUSH_TIMEOUT` after reading ended. Gives how
    /// reading ended and whether writing finished (false: it was dropped at the deadline).
    /// One task rather than a writer task of its own: one heap chunk and one glommio task
    /// header (48 bytes) fewer per connection, whose writer's state now sits in this task.
    struct ReadAndWrite<R, W> {
        #[pin]
        reading: R,
        #[pin]
        writing: W,
        end: Option<End>,
        written: bool,
        // Boxed: made once, when reading has ended.
        deadline: Option<Pin<Box<glommio::timer::Timer>>>,
    }
}

impl<R, W> ReadAndWrite<R, W> {
    fn new(reading: R, writing: W) -> Self {
        ReadAndWrite {
            reading,
            writing,
            end: None,
            written: false,
            deadline: None,
        }
    }
}

impl<R: Future<Output = End>, W: Future<Output = ()>> Future for ReadAndWrite<R, W> {
    type Output = (End, bool);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<(End, bool)> {
        let this = self.project();
        // Reading first: what it queued for its own client is written in the same poll.
        if this.end.is_none() {
            if let Poll::Ready(end) = this.reading.poll(cx) {
                *this.end = Some(end);
            }
        }
        if !*this.written {
            *this.written = this.writing.poll(cx).is_ready();
        }
        let Some(end) = *this.end else {
            return Poll::Pending;
        };
        if *this.written {
            return Poll::Ready((end, true));
        }
        let deadline = this
            .deadline
            .get_or_insert_with(|| Box::pin(glommio::timer::Timer::new(FLUSH_TIMEOUT)));
        deadline.as_mut().poll(cx).map(|_| (end, false))
    }
}

struct Conn {
    login: Login,
    /// The username the client logged in with (or its certificate's), for the ACL.
    username: Option<Box<str>>,
    /// The client id, for the ACL's `%c` (None until the CONNECT is accepted); shared with
    /// the session.
    client_id: Option<Rc<str>>,
    machine: Connection,
    shard: Rc<Shard>,
    reader: Reader,
    /// What was read and not yet decoded: at most a partial packet between reads.
    buf: BytesMut,
    /// Whether `buf` is a slice of the shard's read arena.
    in_arena: bool,
    /// Bytes asked of the socket per read (see `READ_START_BYTES`); 16 bits, so that it
    /// shares a word with `in_arena` and `deadline`.
    read_chunk: u16,
    codec: Codec,
    outbox: Rc<Outbox>,
    key: SessionKey,
    token: u64,
    /// When the last read completed: the time the machine is told packets arrived.
    now: Instant,
    /// A plain TCP connection's place in the shard's sweep of read deadlines (see
    /// `keepalive`); other transports time their reads out themselves.
    deadline: Deadline,
}

/// A failed read.
enum ReadError {
    /// The socket closed or failed.
    Gone,
    /// The bytes broke the protocol.
    Decode(DecodeError),
    /// The machine closes the connection (keep-alive or CONNECT timeout).
    Close(Action),
}

impl Conn {
    async fn run(&mut self) -> End {
        let connect = match self.read_packet().await.map(|(packet, _)| packet) {
            Ok(Packet::Connect(connect)) => *connect,
            Err(ReadError::Decode(e)) => {
                let why = format!("its CONNECT does not decode: {e}");
                self.login
                    .gate
                    .refusals
                    .refused(self.login.peer(), why, self.now);
                let v5 = self.codec.version() == Some(Version::V5);
                if let Some(connack) = self.machine.refuse_undecodable(&e, v5) {
                    self.send(&connack);
                }
                return End::Refused;
            }
            // The codec yields nothing but CONNECT first.
            Ok(_) | Err(ReadError::Gone | ReadError::Close(_)) => return End::Gone,
        };
        let accepted = Box::pin(self.accept_connect(connect)).await;
        self.login.arrival = None;
        if !accepted {
            return End::Refused;
        }
        let end = self.read_loop().await;
        if let Some(will) = self.disconnect(end) {
            Box::pin(self.shard.publish_will(will)).await;
        }
        end
    }

    /// Ends the session's connection: the will to publish now, if any (a delayed one is left
    /// with the shard). Not matched in `run`, whose task would keep the scrutinee, a will
    /// and its delay, in its state for the life of the connection.
    fn disconnect(&mut self, end: End) -> Option<Will> {
        let graceful = end
            == End::Disconnected {
                publish_will: false,
            };
        match self.shard.disconnect(self.key, self.token, graceful)? {
            (will, delay) if delay.is_zero() => Some(will),
            (will, delay) => {
                let (key, token) = (self.key, self.token);
                self.shard.publish_will_after(key, token, will, delay);
                None
            }
        }
    }

    /// Reads and handles packets until the connection ends.
    async fn read_loop(&mut self) -> End {
        let mut bytes_this_turn = 0;
        let mut cost_this_turn = 0;
        let mut sent_at_turn_start = self.shard.metrics.messages_sent();
        loop {
            // Nothing large may live across an await of this loop (a packet, an action): the
            // task holds the loop's state for as long as the connection lives.
            let read = self.read_packet().await;
            // The bytes this turn decodes, counted from the first packet's start: what a read
            // on the way brought in counts by what was decoded of it (a whole run included),
            // so the turn's byte limit holds for runs too.
            let before = self.buf.len() + read.as_ref().map_or(0, |(_, len)| *len);
            let read = read.map(|(packet, _)| packet);
            // The action's scope ends before the next await: a local that was borrowed
            // (`hold_point`) keeps its room in the task until its scope ends, moved or not,
            // and the task would carry an action (200 bytes) for the life of the connection.
            let received = self.shard.metrics.messages_received();
            let (appended, acted) = {
                let action = match self.action_for(read) {
                    Ok(action) => action,
                    Err(end) => return end,
                };
                let appended = self.hold_point(&action);
                (appended, self.act(action).map_err(|wait| self.finish(wait)))
            };
            // Moved into the match (the braces), so its borrow of `self` ends with it; matched
            // in place, it would be dropped only at the end of the loop body.
            #[allow(clippy::blocks_in_conditions)]
            let end = match { acted } {
                Ok(end) => end,
                Err(waiting) => waiting.await,
            };
            if appended != NO_HOLD {
                self.hold_since(appended);
            }
            if let Some(end) = end {
                return end;
            }
            // Bound the work one connection does per loop turn (packets and bytes read,
            // messages fanned out) so a fast publisher cannot starve the other connections of
            // its shard, and the writers get to send what it fanned out while it goes on.
            let read = before.saturating_sub(self.buf.len()).max(1);
            // A run of PUBLISHes (`publish_run`) counts as many packets as it held.
            let packets = self
                .shard
                .metrics
                .messages_received()
                .wrapping_sub(received);
            bytes_this_turn += read;
            cost_this_turn += read.min(TURN_PACKET_COST_MAX * packets.max(1) as usize);
            let sent = self.shard.metrics.messages_sent();
            let limits = &self.shard.limits;
            if cost_this_turn >= limits.read_bytes_per_turn
                || bytes_this_turn >= limits.read_bytes_per_turn * TURN_BYTES_FACTOR
                || sent.wrapping_sub(sent_at_turn_start) >= limits.deliveries_per_turn as u64
            {
                bytes_this_turn = 0;
                cost_this_turn = 0;
                futures_lite::future::yield_now().await;
                sent_at_turn_start = self.shard.metrics.messages_sent();
            }
        }
    }

    /// What the machine makes of a read: an action, or the end of the connection.
    fn action_for(&mut self, read: Result<Packet, ReadError>) -> Result<Action, End> {
        Ok(match read {
            // Taken over or shut down meanwhile: what the client still sends is not ours.
            Ok(_) if self.outbox.is_closing() => return Err(End::Closed),
            Ok(packet) => self.machine.handle(packet, self.now),
            Err(ReadError::Gone) => return Err(End::Gone),
            Err(ReadError::Decode(e)) => self.machine.handle_decode_error(&e),
            Err(ReadError::Close(action)) => action,
        })
    }

    /// Position of the shard's last stored record (0 without persistence).
    fn appended(&self) -> u64 {
        self.shard.persist.as_ref().map_or(0, |p| p.last())
    }

    /// Where the store stands before `action`, when what this connection sends next must
    /// wait for the records `action` appends (`hold_since`). `NO_HOLD` for what a client sends about
    /// messages it was given (PUBACK, PUBREC, PUBCOMP): nothing it is answered with
    /// acknowledges their records, and what depends on one (a QoS 2 packet id, a PUBREC) holds
    /// the outbox itself (`Session::note`). Holding for them made every message a subscriber
    /// gets once its window is full wait for a write, or an fdatasync.
    fn hold_point(&self, action: &Action) -> u64 {
        match action {
            Action::PubAck(_) | Action::PubRec(_) | Action::PubComp(_) => NO_HOLD,
            _ => self.appended(),
        }
    }

    /// What this connection sends from now on waits for the records appended since
    /// `before` (its acknowledgements are of them).
    fn hold_since(&self, before: u64) {
        let last = self.appended();
        if last > before {
            self.outbox.hold_until(last);
        }
    }

    /// While the store cannot write, a new QoS 1/2 PUBLISH is refused: 5.0 answers 0x97
    /// Quota exceeded (true); 3.1.1 has no way to say it, so the PUBLISH waits, unanswered,
    /// until the disk takes writes again (false).
    async fn refused_for_disk(&mut self, publish: &Publish) -> bool {
        let Some(persist) = self.shard.persist.clone() else {
            return false;
        };
        if publish.qos == QoS::AtMostOnce || !persist.is_failing() {
            return false;
        }
        self.shard.metrics.count_publish_denied();
        if self.machine.version() == Version::V5 {
            let ack = crate::protocol::Ack {
                pkid: publish.pkid,
                reason: ReasonCode::QUOTA_EXCEEDED,
                ..Default::default()
            };
            let packet = match publish.qos {
                QoS::AtLeastOnce => Packet::PubAck(ack),
                _ => Packet::PubRec(ack),
            };
            self.send(&packet);
            return true;
        }
        while persist.is_failing() {
            glommio::timer::sleep(Duration::from_millis(50)).await;
            persist.wait_durable(persist.last()).await;
        }
        false
    }

    /// Carries out one action of the machine without waiting: Ok (Some when the connection
    /// ends), or the part that has to wait, which `wait_for` finishes. Most packets never
    /// build an async state machine (moving one into place for every PUBACK was 13% of a QoS 1
    /// fan-out profile, memmove), and the connection's task, alive as long as the connection,
    /// holds only the read loop's own state: the waits are boxed while they last.
    // The large Err is moved into a box at once (`finish`); boxing it here would cost an
    // allocation per wait for nothing.
    #[allow(clippy::result_large_err)]
    fn act(&mut self, action: Action) -> Result<Option<End>, Wait> {
        self.act_with(action, true)
    }

    /// `act`; a PUBLISH starts a run (`publish_run`) only if `may_run`.
    #[allow(clippy::result_large_err)]
    fn act_with(&mut self, action: Action, may_run: bool) -> Result<Option<End>, Wait> {
        if let Action::Route(publish) | Action::Qos2(publish) = &action {
            let failing = self.shard.persist.as_ref().is_some_and(|p| p.is_failing());
            if failing && publish.qos != QoS::AtMostOnce {
                return Err(Wait::Disk(action));
            }
        }
        self.act_stored(action, may_run)
    }

    /// `act_with`, once the store takes writes (or the PUBLISH needs none).
    #[allow(clippy::result_large_err)]
    fn act_stored(&mut self, action: Action, may_run: bool) -> Result<Option<End>, Wait> {
        match action {
            Action::Route(publish) | Action::Qos2(publish)
                if !self.may_write(publish.topic.as_str()) =>
            {
                self.deny(&publish);
                Ok(None)
            }
            Action::Route(publish) if may_run && self.is_run_ahead(&publish) => {
                self.publish_run(publish)
            }
            Action::Route(publish) => match self.publish_now(publish) {
                Ok(()) => Ok(None),
                Err(message) => Err(Wait::Route(message)),
            },
            Action::Qos2(publish) => Err(Wait::Qos2(publish)),
            Action::Subscribe(subscribe) => Err(Wait::Subscribe(subscribe)),
            action => Ok(self.act_now(action)),
        }
    }

    /// `wait_for`, boxed: the wait lives on the heap while it lasts, and the read loop's
    /// state holds a pointer to it, whatever the size of the action.
    fn finish(&mut self, wait: Wait) -> Pin<Box<impl Future<Output = Option<End>> + '_>> {
        Box::pin(self.wait_for(wait))
    }

    /// Finishes an action that has to wait; Some when the connection ends.
    async fn wait_for(&mut self, wait: Wait) -> Option<End> {
        match wait {
            Wait::Disk(action) => {
                let refused = match &action {
                    Action::Route(publish) | Action::Qos2(publish) => {
                        self.refused_for_disk(publish).await
                    }
                    _ => false,
                };
                if refused {
                    return None;
                }
                match self.act_stored(action, true) {
                    Ok(end) => end,
                    Err(wait) => Box::pin(self.wait_for(wait)).await,
                }
            }
            Wait::Route(message) => {
                self.route(message).await;
                None
            }
            Wait::Qos2(publish) => self.on_publish_qos2(publish).await,
            Wait::Run(left) => {
                let (run, next) = *left;
                for message in run {
                    self.route(message).await;
                }
                match self.act_after_run(next) {
                    Ok(end) => end,
                    Err(wait) => Box::pin(self.wait_for(wait)).await,
                }
            }
            Wait::Subscribe(subscribe) => {
                self.on_subscribe(subscribe).await;
                None
            }
        }
    }

    /// Carries out an action that never waits.
    fn act_now(&mut self, action: Action) -> Option<End> {
        match action {
            Action::Send(packet) => self.send(&packet),
            Action::PubAck(pkid) => self.on_pubacks(pkid),
            Action::PubRec(pkid) => {
                self.session(|s, _, enc| s.on_pubrec(pkid, enc));
            }
            Action::PubComp(pkid) => {
                self.session(|s, limits, enc| s.on_pubcomp(pkid, limits, enc));
            }
            Action::PubRel(pkid) => {
                let known = self.session(|s, _, _| s.release_qos2(pkid));
                let pubcomp = self.machine.released(pkid, known.unwrap_or(true));
                self.send(&pubcomp);
            }
            Action::Unsubscribe(unsubscribe) => self.on_unsubscribe(unsubscribe),
            Action::Disconnect {
                session_expiry_secs,
                publish_will,
            } => {
                if let Some(secs) = session_expiry_secs {
                    self.shard.set_session_expiry(self.key, self.token, secs);
                }
                self.outbox.close();
                return Some(End::Disconnected { publish_will });
            }
            Action::Close(disconnect) => return Some(self.close(disconnect)),
            Action::None | Action::Route(_) | Action::Qos2(_) | Action::Subscribe(_) => {}
        }
        None
    }

    /// Answers a PUBLISH the ACL denies, which is dropped. A QoS 2 one acknowledged in 3.1.1
    /// completes its flow: the PUBREL that follows finds no id and is answered all the same.
    fn deny(&mut self, publish: &Publish) {
        self.shard.metrics.count_publish_denied();
        let answer = self.machine.publish_denied(publish.qos, publish.pkid);
        self.send_some(answer);
    }

    /// Sends the machine's DISCONNECT, if any, and closes.
    fn close(&mut self, disconnect: Option<Packet>) -> End {
        if let Some(packet) = disconnect {
            self.send(&packet);
        }
        self.outbox.close();
        End::Closed
    }

    /// Decodes the next packet, reading from the socket as needed; gives it with its length
    /// on the wire. A decoded packet is never held across the read's await. A plain TCP read
    /// is a poll over the `Conn`'s own fields (`poll_packet`), so the read loop's await keeps
    /// nothing but a pointer: the connection's task holds the state of that await for as
    /// long as the connection lives, most of it idle. TLS and WebSocket reads are async and
    /// boxed while they wait (`fill_other`). An async block, not an async fn: a fn keeps
    /// `self` twice in its state.
    #[allow(clippy::manual_async_fn)]
    fn read_packet(&mut self) -> impl Future<Output = Result<(Packet, usize), ReadError>> + '_ {
        async move {
            loop {
                // Not a match: its scrutinee (a packet's room) would live across the fill.
                if let Some(packet) = std::future::poll_fn(|cx| self.poll_packet(cx)).await? {
                    return Ok(packet);
                }
                Box::pin(self.fill_other()).await?;
            }
        }
    }

    /// The next packet once decoded, reading a plain TCP socket as needed; Ready(Ok(None))
    /// when the buffer holds no whole packet and the transport is not plain TCP.
    fn poll_packet(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<(Packet, usize)>, ReadError>> {
        loop {
            let len = self.buf.len();
            match self.codec.decode(&mut self.buf) {
                Ok(Decoded::Packet(packet)) => {
                    return Poll::Ready(Ok(Some((packet, len - self.buf.len()))))
                }
                Ok(Decoded::Incomplete { .. }) => {}
                Err(e) => return Poll::Ready(Err(ReadError::Decode(e))),
            }
            if !matches!(self.reader, Reader::Plain(_)) {
                return Poll::Ready(Ok(None));
            }
            let chunk = self.read_chunk as usize;
            let timeout = self.machine.read_timeout(self.now);
            self.deadline.set(timeout.map(|t| self.now + t));
            let start = self.buf.len();
            if start > 0 {
                self.own_buffer(chunk);
                self.buf.resize(start + chunk, 0);
            } else {
                // An empty slice of the arena would keep its allocation from being reused.
                self.buf = BytesMut::new();
            }
            let Reader::Plain(socket) = &mut self.reader else {
                return Poll::Ready(Ok(None)); // matched above
            };
            let read = match start {
                // Nothing held between packets: read into the shard's arena (see `arena`).
                0 => arena::poll_read(socket, cx, chunk).map_ok(|bytes| {
                    self.buf = bytes;
                    self.in_arena = true;
                    self.buf.len()
                }),
                _ => socket.poll_read(cx, &mut self.buf[start..]),
            };
            let read = match read {
                Poll::Ready(read) => read,
                Poll::Pending => {
                    self.buf.truncate(start);
                    std::task::ready!(keepalive::poll_expired(&mut self.deadline, cx))
                }
            };
            self.read_done(read, start, chunk)?;
        }
    }

    /// Reads what a TLS or WebSocket transport has into the buffer, within the time the
    /// machine allows.
    async fn fill_other(&mut self) -> Result<(), ReadError> {
        let chunk = self.read_chunk as usize;
        let timeout = self.machine.read_timeout(self.now);
        self.reader.set_read_timeout(timeout);
        let start = self.buf.len();
        self.own_buffer(chunk);
        self.buf.resize(start + chunk, 0);
        let read = self.reader.read(&mut self.buf[start..]).await;
        self.read_done(read, start, chunk)
    }

    /// Takes in the outcome of a read of at most `chunk` bytes after the `start` bytes the
    /// buffer held: the connection's time, the end of stream, the read size.
    fn read_done(
        &mut self,
        read: std::io::Result<usize>,
        start: usize,
        chunk: usize,
    ) -> Result<(), ReadError> {
        self.now = Instant::now();
        let n = match read {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                self.buf.truncate(start);
                // Nothing came in time: the machine decides whether that ends the connection.
                return match self.machine.handle_timeout(self.now) {
                    Some(action) => Err(ReadError::Close(action)),
                    None => Ok(()),
                };
            }
            Err(_) => 0,
        };
        self.buf.truncate(start + n);
        if n == 0 {
            return Err(ReadError::Gone);
        }
        if n == chunk {
            self.read_chunk = (chunk * 2).min(READ_CHUNK_BYTES) as u16;
        }
        self.shard.metrics.add_bytes_received(n);
        Ok(())
    }

    /// Makes room for `chunk` more bytes after a partial packet in a buffer of the
    /// connection's own: a partial packet read into the arena is copied out of it first, so
    /// it does not keep the arena's allocation alive (nor grow into one of its size).
    fn own_buffer(&mut self, chunk: usize) {
        if std::mem::take(&mut self.in_arena) {
            let mut own = BytesMut::with_capacity(self.buf.len() + chunk * 4);
            own.extend_from_slice(&self.buf);
            self.buf = own;
        } else if self.buf.capacity() - self.buf.len() < chunk {
            self.buf.reserve(chunk * 4);
        }
    }

    /// Reads and drops what the client still sends, until it closes, `writer::LINGER` passes
    /// or `LINGER_BYTES_MAX` came: a client that is told why it is closed gets to read it.
    async fn discard_input(&mut self) {
        let deadline = Instant::now() + writer::LINGER;
        let mut discarded = 0;
        let mut scratch = vec![0u8; 4096];
        while discarded < LINGER_BYTES_MAX {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            // Timed here for every transport: a plain connection's reads have no timeout of
            // their own (the shard's sweep times them while the machine runs).
            let reader = &mut self.reader;
            let scratch = &mut scratch;
            let read = glommio::timer::timeout(left, async { Ok(reader.read(scratch).await) });
            match read.await {
                Ok(Ok(n)) if n > 0 => discarded += n,
                _ => break,
            }
        }
    }

    /// Asks the machine about a CONNECT, takes the client id over from any older connection,
    /// installs the session and answers CONNACK. Returns false when the connection was
    /// refused.
    async fn accept_connect(&mut self, mut connect: Connect) -> bool {
        let admission = Admission {
            is_server_full: self.shard.is_over_connection_limit(),
            refusal: self.log_in(&mut connect).await,
        };
        let mut accepted = match self.machine.handle_connect(connect, self.now, admission) {
            Ok(accepted) => accepted,
            Err(connack) => {
                let why = refusal_reason(&admission, &connack);
                self.login
                    .gate
                    .refusals
                    .refused(self.login.peer(), why, self.now);
                if admission.refusal.is_some() {
                    self.shard.metrics.count_login_refused();
                    let delay = self
                        .login
                        .gate
                        .note_refusal(self.login.peer(), Instant::now());
                    glommio::timer::sleep(delay).await;
                }
                self.send(&Packet::ConnAck(connack));
                self.outbox.close();
                return false;
            }
        };
        self.login.gate.note_success(self.login.peer());
        if accepted.client_id.is_empty() {
            let id = format!("ringcast-{:x}", self.shard.new_token());
            self.machine.assign_client_id(&mut accepted, id);
        }
        self.client_id = Some(accepted.client_id.as_str().into());
        self.token = self.shard.new_token();
        let claim = self
            .shard
            .claim(&accepted.client_id, self.token, !accepted.clean_start)
            .await;
        let Ok(state) = claim else {
            // A newer connection with this client id took over while we waited.
            self.outbox.close();
            return false;
        };
        let session_present = state.is_some();
        let session = self.new_session(accepted);
        let (key, new_filters) = self.shard.install(session, state);
        self.key = key;
        self.shard.announce(key, new_filters).await;
        let connack = self.machine.connack(session_present);
        // The CONNACK waits for the session's record (and any before it).
        self.hold_since(0);
        let outbox = self.outbox.clone();
        let version = self.machine.version();
        // CONNACK and attaching happen together, and only if no newer connection took the
        // session over while the interest announcement was in flight.
        let attached = self.shard.with_session(key, self.token, |s, limits, enc| {
            push_packet(&outbox, &connack, version, &mut enc.scratch);
            s.resume(outbox, limits, enc)
        });
        if attached.is_none() {
            self.outbox.close();
            return false;
        }
        // A persistent session may come back owing retained messages.
        self.shard.feed_retained(key, self.token);
        true
    }

    /// Checks the client's credentials (or its certificate) against the listener and the
    /// password file; records the username. A will the ACL does not let the client write is
    /// dropped (the connection stays, as the will is only a last PUBLISH).
    async fn log_in(&mut self, connect: &mut Connect) -> Option<Refusal> {
        let Some(arrival) = self.login.arrival.as_deref() else {
            return Some(Refusal::NotAuthorized); // logged in already (not reached)
        };
        let endpoint = self.login.gate.endpoint(arrival.listener);
        let allow_anonymous = endpoint.is_some_and(|e| e.allow_anonymous);
        let given = connect.username.as_ref().map(|u| u.as_str().into());
        let refusal = match &arrival.identity {
            Identity::Certificate(Some(name)) => {
                self.username = Some(name.as_str().into());
                None
            }
            // No name to log in as: refused, as mosquitto does, rather than falling back to
            // the CONNECT's username, which the certificate was meant to replace.
            Identity::Certificate(None) => Some(Refusal::BadCredentials),
            Identity::Credentials => {
                if given.is_some() && self.login.gate.with_tables(|t| t.passwords.is_some()) {
                    // A hash check costs up to a few hundred microseconds of CPU: one per
                    // loop turn, so a flood of logins cannot stall the shard's other clients.
                    futures_lite::future::yield_now().await;
                }
                let password = connect.password.as_deref();
                self.username = given;
                let user = self.username.as_deref();
                let gate = &self.login.gate;
                let admitted = gate.with_tables(|t| t.admits(allow_anonymous, user, password));
                (!admitted).then_some(Refusal::NotAuthorized)
            }
        };
        let client_id = connect.client_id.as_str();
        let will_denied = connect.will.as_ref().is_some_and(|will| {
            let user = self.username.as_deref();
            !self
                .login
                .gate
                .with_tables(|t| t.can_write(user, client_id, will.topic.as_str()))
        });
        if will_denied {
            tracing::debug!("will of {client_id} dropped: the ACL denies writing its topic");
            connect.will = None;
        }
        refusal
    }

    /// Whether the ACL lets this client publish to `topic`.
    fn may_write(&self, topic: &str) -> bool {
        let user = self.username.as_deref();
        let client_id = self.client_id.as_deref().unwrap_or_default();
        self.login
            .gate
            .with_tables(|t| t.can_write(user, client_id, topic))
    }

    /// The session an accepted CONNECT asks for, owned by this connection.
    fn new_session(&self, accepted: Accepted) -> Session {
        let client_id = self.client_id.clone();
        let mut session = Session::with_id(
            client_id.unwrap_or_else(|| accepted.client_id.as_str().into()),
            self.machine.version(),
            accepted.is_persistent,
        );
        session.conn_token = self.token;
        session.will = accepted.will.map(Box::new);
        session.expiry_secs = accepted.session_expiry_secs;
        session.peer = accepted.peer;
        session.reader = self
            .login
            .gate
            .read_filter(self.username.as_deref().map(str::to_string))
            .map(Box::new);
        session
    }

    /// A PUBACK, and the PUBACKs right behind it in the buffer, handled as one batch: one
    /// session lookup and one pump of the queue for a whole read of a subscriber's acks.
    /// Plain ones are read straight from the buffer (`codec::plain_pubacks`): the machine
    /// would only note the time of input, which it did for the first.
    fn on_pubacks(&mut self, first: u16) {
        let mut pkids = [0u16; PUBACK_BATCH_MAX];
        pkids[0] = first;
        let mut len = 1;
        while len < PUBACK_BATCH_MAX {
            let (read, taken) = codec::plain_pubacks(&self.buf, &mut pkids[len..]);
            self.buf.advance(taken);
            len += read;
            // 0x40 is PUBACK with its only valid flags; a malformed one (which the codec
            // leaves in the buffer) is left for the read loop to report.
            if len == PUBACK_BATCH_MAX || self.buf.first() != Some(&0x40) {
                break;
            }
            let Ok(Decoded::Packet(packet)) = self.codec.decode(&mut self.buf) else {
                break;
            };
            let Action::PubAck(pkid) = self.machine.handle(packet, self.now) else {
                break; // a PUBACK always gives Action::PubAck
            };
            pkids[len] = pkid;
            len += 1;
        }
        self.session(|s, limits, enc| s.on_pubacks(&pkids[..len], limits, enc));
    }

    fn session<R>(
        &mut self,
        f: impl FnOnce(&mut Session, &crate::config::Limits, &mut Encoder) -> R,
    ) -> Option<R> {
        self.shard.with_session(self.key, self.token, f)
    }

    fn send(&mut self, packet: &Packet) {
        self.shard
            .push_packet(&self.outbox, packet, self.machine.version());
    }

    fn send_some(&mut self, packet: Option<Packet>) {
        if let Some(packet) = packet {
            self.send(&packet);
        }
    }

    /// Routes a checked QoS 0 or 1 PUBLISH at once when the shard can (see
    /// `Shard::publish_now`), and acknowledges it; otherwise hands the message back.
    fn publish_now(&mut self, publish: Publish) -> Result<(), Message> {
        let message = Message::received(publish, self.token);
        let (qos, pkid) = (message.publish.qos, message.publish.pkid);
        let matched = self.shard.publish_now(message)?;
        let ack = self.machine.routed(qos, pkid, matched);
        self.send_some(ack);
        Ok(())
    }

    /// Whether the packet behind `publish` in the buffer continues a run of it
    /// (`publish_run`): a whole PUBLISH on the same topic, of the same QoS, without RETAIN,
    /// with a shard that can route the run at once.
    fn is_run_ahead(&self, publish: &Publish) -> bool {
        let topic = publish.topic.as_bytes();
        !publish.retain
            && codec::publish_continues(&self.buf, run_header(publish), topic)
            && self
                .shard
                .can_publish_run(publish.topic.as_str(), publish.qos)
    }

    /// Routes `publish` with the PUBLISHes right behind it in the buffer that continue it
    /// (same topic, QoS, no RETAIN; `RUN_MAX` at most) as one run, each subscriber getting
    /// the whole run at once (`Shard::publish_run`), then acknowledges each in order. The
    /// first packet that does not continue the run is acted on after it.
    #[allow(clippy::result_large_err)]
    fn publish_run(&mut self, publish: Publish) -> Result<Option<End>, Wait> {
        let mut run = RUN_BUFFER.take();
        run.reserve(RUN_MAX);
        run.push(Message::received(publish, self.token));
        let next = self.read_run(&mut run);
        let Some(matched) = self.shard.publish_run(&run) else {
            return Err(Wait::Run(Box::new((run, next))));
        };
        for message in run.drain(..) {
            let ack = self
                .machine
                .routed(message.publish.qos, message.publish.pkid, matched);
            self.send_some(ack);
        }
        RUN_BUFFER.set(run);
        self.act_after_run(next)
    }

    /// Acts on what followed a run (`read_run`): nothing, a packet, or the end.
    #[allow(clippy::result_large_err)]
    fn act_after_run(&mut self, next: Option<Result<Action, End>>) -> Result<Option<End>, Wait> {
        match next {
            None => Ok(None),
            // Not as a run: acting on what follows could start another, and another, deeper
            // with each, for as long as the buffer lasts.
            Some(Ok(action)) => self.act_with(action, false),
            Some(Err(end)) => Ok(Some(end)),
        }
    }

    /// Decodes the PUBLISHes behind the first of `run` that continue it; gives back what
    /// the machine made of one that turned out not to (a refused one), if any.
    fn read_run(&mut self, run: &mut Vec<Message>) -> Option<Result<Action, End>> {
        let header = run_header(&run[0].publish);
        let topic = run[0].publish.topic.clone();
        while run.len() < RUN_MAX && codec::publish_continues(&self.buf, header, topic.as_bytes()) {
            let read = match self.codec.decode(&mut self.buf) {
                Ok(Decoded::Packet(packet)) => Ok(packet),
                Ok(Decoded::Incomplete { .. }) => return None,
                Err(e) => Err(ReadError::Decode(e)),
            };
            match self.action_for(read) {
                Ok(Action::Route(publish)) if publish.topic == topic => {
                    run.push(Message::received(publish, self.token));
                }
                other => return Some(other),
            }
        }
        None
    }

    /// Routes a checked message, waiting as `Shard::publish` may, then acknowledges it.
    async fn route(&mut self, message: Message) {
        let (qos, pkid) = (message.publish.qos, message.publish.pkid);
        let matched = self.publish_held(message).await;
        let ack = self.machine.routed(qos, pkid, matched);
        self.send_some(ack);
    }

    /// Routes a message; what the acknowledgement must wait for from other shards (their
    /// records, their retained replicas) holds this connection's outbox, not its reading: a
    /// task releases the hold when the answers are in.
    async fn publish_held(&mut self, message: Message) -> bool {
        let (matched, pending) = self.shard.publish_held(message).await;
        if let Some(request) = pending {
            self.outbox.hold_for_shards();
            let (shard, outbox) = (self.shard.clone(), self.outbox.clone());
            glommio::spawn_local(async move {
                shard.requests.wait(request).await;
                outbox.release_for_shards();
            })
            .detach();
        }
        matched
    }

    /// A QoS 2 PUBLISH: the session records its packet id, the machine decides (route once
    /// per id until PUBREL [MQTT-4.3.3-2], or close past our Receive Maximum).
    async fn on_publish_qos2(&mut self, publish: Publish) -> Option<End> {
        let pkid = publish.pkid;
        let (is_new, pending) = self
            .session(|s, _, _| (s.receive_qos2(pkid), s.incoming_qos2_len()))
            .unwrap_or((false, 0));
        match self.machine.qos2_recorded(publish, is_new, pending) {
            Qos2::Route(publish) => {
                let message = Message::received(publish, self.token);
                let matched = self.publish_held(message).await;
                let pubrec = self.machine.routed(QoS::ExactlyOnce, pkid, matched);
                self.send_some(pubrec);
                None
            }
            Qos2::Answer(pubrec) => {
                self.send(&pubrec);
                None
            }
            Qos2::Close(disconnect) => Some(self.close(disconnect)),
        }
    }

    async fn on_subscribe(&mut self, subscribe: Subscribe) {
        let mut reason_codes = Vec::with_capacity(subscribe.filters.len());
        let mut new_filters = Vec::new();
        let mut granted = Vec::new();
        let id = subscribe
            .properties
            .subscription_identifiers
            .first()
            .copied();
        for entry in &subscribe.filters {
            let filter = entry.filter.as_str();
            let (count, existed) = self
                .session(|s, _, _| (s.subscriptions.len(), s.subscriptions.contains_key(filter)))
                .unwrap_or((0, false));
            if let Some(refused) = self.machine.check_filter(filter, count) {
                reason_codes.push(refused);
                continue;
            }
            let scope = self.read_scope(filter);
            if scope == ReadScope::None {
                reason_codes.push(self.machine.subscribe_denied());
                continue;
            }
            let mut sub = Subscription {
                options: entry.options,
                id,
                is_filtered: scope == ReadScope::Partial,
            };
            if self.codec.is_bridge() {
                // A 3.1.1 bridge (level 0x84) gets what mosquitto gives one: not its own
                // messages back, and the retain flag as published.
                sub.options.no_local = true;
                sub.options.retain_as_published = true;
            }
            if self.shard.subscribe(self.key, filter, sub) {
                new_filters.push(filter.to_string());
            }
            reason_codes.push(ReasonCode(entry.options.qos as u8));
            granted.push((filter.to_string(), sub, existed));
        }
        self.shard.announce(self.key, new_filters).await;
        let suback = self.machine.suback(subscribe.pkid, reason_codes);
        self.send(&suback);
        for (filter, sub, existed) in granted {
            if Connection::wants_retained(&sub.options, &filter, existed) {
                self.shard.send_retained(self.key, &filter, sub);
            }
        }
        self.shard.feed_retained(self.key, self.token);
    }

    /// How much of what `filter` matches the ACL lets this client read: None is refused in
    /// the SUBACK (beyond mosquitto, which grants it and delivers nothing); Partial is checked
    /// per message; All (or no ACL) costs nothing per delivery.
    fn read_scope(&self, filter: &str) -> ReadScope {
        let user = self.username.as_deref();
        let client_id = self.client_id.as_deref().unwrap_or_default();
        let filter = crate::protocol::topic::filter_part(filter);
        self.login.gate.with_tables(|t| {
            t.acl.as_ref().map_or(ReadScope::All, |acl| {
                acl.read_scope(user, client_id, filter)
            })
        })
    }

    fn on_unsubscribe(&mut self, unsubscribe: Unsubscribe) {
        let mut existed = Vec::with_capacity(unsubscribe.filters.len());
        let mut gone = Vec::new();
        for filter in &unsubscribe.filters {
            let (was, last) = self.shard.unsubscribe(self.key, filter.as_str());
            if last {
                gone.push(filter.as_str().to_string());
            }
            existed.push(was);
        }
        self.shard.withdraw(self.key, gone);
        let unsuback = self.machine.unsuback(unsubscribe.pkid, &existed);
        self.send(&unsuback);
    }
}

/// Why a CONNECT was refused, in words for the log.
fn refusal_reason(admission: &Admission, connack: &ConnAck) -> String {
    let code = connack.code.0;
    match admission.refusal {
        Some(Refusal::NotAuthorized) => {
            format!("login refused: bad or missing credentials (CONNACK 0x{code:02X})")
        }
        Some(Refusal::BadCredentials) => {
            format!("login refused: no username to log in with (CONNACK 0x{code:02X})")
        }
        None if admission.is_server_full => {
            format!("limits.connections_max reached (CONNACK 0x{code:02X})")
        }
        None => format!("CONNACK 0x{code:02X} (see the MQTT reason code)"),
    }
}

/// The first byte of the fixed header of the PUBLISHes that may continue a run of `publish`
/// (DUP aside): its QoS, no RETAIN.
fn run_header(publish: &Publish) -> u8 {
    0x30 | (publish.qos as u8) << 1
}
