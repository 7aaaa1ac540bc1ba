//! One client connection: read bytes, decode packets, act on them through the shard.
//!
//! Reading and writing are separate tasks: this one reads and handles packets, the writer
//! (`writer::run`) drains the outbox. Keep-alive is a read timeout of 1.5 × the client's
//! keep-alive [MQTT-3.1.2-24].

use super::writer;
use crate::protocol::codec::{Codec, DecodeError, Decoded};
use crate::protocol::{
    connack_v3, Ack, ConnAck, Connect, Disconnect, MqttString, Packet, Properties, Props, Publish,
    QoS, ReasonCode, SubAck, Subscribe, UnsubAck, Unsubscribe, Version,
};
use crate::shard::encoder::push_packet;
use crate::shard::outbox::Outbox;
use crate::shard::session::{PeerLimits, Session, Subscription};
use crate::shard::{Message, SessionKey, Shard};
use bytes::BytesMut;
use futures_lite::AsyncReadExt;
use glommio::net::TcpStream;
use std::collections::HashMap;
use std::os::unix::io::AsRawFd;
use std::rc::Rc;
use std::time::Duration;

/// Bytes asked of the socket per read.
const READ_CHUNK_BYTES: usize = 16 << 10;
/// Bytes asked of the socket per read on a new connection; doubled (up to
/// `READ_CHUNK_BYTES`) whenever a read fills it, so idle connections stay small and busy
/// publishers soon read in large chunks.
const READ_START_BYTES: usize = 1 << 10;
/// How long a closing connection may take to flush what is queued.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the read loop stopped.
enum End {
    /// The client sent DISCONNECT (its will is discarded).
    Graceful,
    /// Anything else: socket closed, keep-alive expired, protocol error (the will is sent).
    Abrupt,
}

/// What is left to do with a PUBLISH that `Conn::publish_now` could not finish.
enum Deferred {
    /// Checks and handling of `on_publish` (topic alias, payload format, QoS 2).
    Checks(Publish),
    /// Routing that may wait (memory pressure, other shards, retained replicas, shared
    /// subscriptions): checked, not yet routed.
    Routing(Message),
}

/// PUBACKs handled in one batch, at most.
const PUBACK_BATCH_MAX: usize = 64;

/// Serves one accepted connection until it closes.
pub async fn serve(shard: Rc<Shard>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let limits = &shard.limits;
    let pause_messages = (limits.queue_messages_max / 2).max(1);
    let outbox = Outbox::new(
        shard.pressure.clone(),
        limits.write_buffer_pause_bytes,
        pause_messages,
    );
    let outbox = Rc::new(outbox);
    // Reading and writing are separate tasks so neither waits on the other. The writer uses
    // the raw fd, which `conn.stream` keeps open until the writer is done or dropped below.
    let writer = glommio::spawn_local(writer::run(stream.as_raw_fd(), outbox.clone()));
    let mut conn = Conn {
        shard: shard.clone(),
        stream,
        buf: BytesMut::new(),
        read_chunk: READ_START_BYTES,
        codec: Codec::new(shard.limits.packet_size_max),
        outbox: outbox.clone(),
        version: Version::V311,
        key: 0,
        token: 0,
        scratch: BytesMut::new(),
        inbound_aliases: HashMap::new(),
        has_problem_info: true,
        session_expiry_secs: 0,
        peer_packet_size_max: u32::MAX,
    };
    conn.run().await;
    outbox.close();
    let flushed = glommio::timer::timeout(FLUSH_TIMEOUT, async {
        writer.await;
        Ok(())
    })
    .await;
    if flushed.is_err() {
        // The writer was dropped (cancelled) with the timeout; close the socket for good.
        // SAFETY: the socket is still owned by `conn.stream`.
        unsafe { libc::shutdown(conn.stream.as_raw_fd(), libc::SHUT_RDWR) };
    }
    drop(conn);
    shard.connection_closed();
}

struct Conn {
    shard: Rc<Shard>,
    stream: TcpStream,
    buf: BytesMut,
    /// Bytes asked of the socket per read (see `READ_START_BYTES`).
    read_chunk: usize,
    codec: Codec,
    outbox: Rc<Outbox>,
    version: Version,
    key: SessionKey,
    token: u64,
    scratch: BytesMut,
    /// 5.0 inbound topic aliases of this connection.
    inbound_aliases: HashMap<u16, MqttString>,
    /// Whether the client accepts reason strings and user properties on acknowledgements
    /// (5.0 Request Problem Information, default 1) [MQTT-3.1.2-29].
    has_problem_info: bool,
    /// Session Expiry Interval from CONNECT, for the checks on DISCONNECT.
    session_expiry_secs: u32,
    /// The client's Maximum Packet Size; a Reason String that would pass it is left out
    /// [MQTT-3.1.2-25].
    peer_packet_size_max: u32,
}

/// A failed read, with what to tell a 5.0 client.
enum ReadError {
    /// The socket closed or failed.
    Gone,
    /// Nothing came within 1.5 × keep-alive.
    KeepAliveTimeout,
    /// The bytes broke the protocol.
    Decode(DecodeError),
}

impl Conn {
    async fn run(&mut self) {
        let connect_timeout = Duration::from_secs(self.shard.limits.connect_timeout_secs);
        let _ = self.stream.set_read_timeout(Some(connect_timeout));
        let connect = match self.read_packet().await {
            Ok(Packet::Connect(connect)) => connect,
            Ok(_) => return, // the codec only yields CONNECT first; kept for exhaustiveness
            Err(ReadError::Decode(e)) => return self.refuse_connect(&e),
            Err(ReadError::Gone | ReadError::KeepAliveTimeout) => return,
        };
        if !Box::pin(self.accept_connect(connect)).await {
            return;
        }
        let end = self.read_loop().await;
        let graceful = matches!(end, End::Graceful);
        match self.shard.disconnect(self.key, self.token, graceful) {
            Some((will, delay)) if delay.is_zero() => Box::pin(self.shard.publish_will(will)).await,
            Some((will, delay)) => self.shard.publish_will_after(self.token, will, delay),
            None => {}
        }
    }

    /// Reads and handles packets until the connection ends.
    async fn read_loop(&mut self) -> End {
        let mut bytes_this_turn = 0;
        let mut sent_at_turn_start = self.shard.metrics.messages_sent.get();
        loop {
            let before = self.buf.len();
            // A packet already in the buffer is taken without building the read future
            // (moving it into place per packet showed as memmove in the profiles).
            let buffered = match self.codec.decode(&mut self.buf) {
                Ok(Decoded::Packet(packet)) => Ok(packet),
                Ok(Decoded::Incomplete { .. }) => self.read_packet().await,
                Err(e) => Err(ReadError::Decode(e)),
            };
            let packet = match buffered {
                Ok(packet) => packet,
                Err(ReadError::Decode(e)) => {
                    self.disconnect_with(e.reason_code());
                    return End::Abrupt;
                }
                Err(ReadError::KeepAliveTimeout) => {
                    self.disconnect_with(ReasonCode::KEEP_ALIVE_TIMEOUT);
                    return End::Abrupt;
                }
                Err(ReadError::Gone) => return End::Abrupt,
            };
            // Only PUBLISH and SUBSCRIBE may wait; the rest is handled without building the
            // async state machine, which is large enough that moving it into place for every
            // PUBACK was 13% of a QoS 1 fan-out profile (memmove).
            let end = match packet {
                // The waits are boxed, like every rare wait of this loop, so that the
                // connection's task (alive as long as the connection) holds only the loop's own
                // state: ~2.9 KB per connection otherwise.
                Packet::Publish(publish) => match self.publish_now(publish) {
                    Ok(end) => end,
                    Err(Deferred::Checks(publish)) => Box::pin(self.on_publish(publish)).await,
                    Err(Deferred::Routing(message)) => {
                        Box::pin(self.route(message)).await;
                        None
                    }
                },
                Packet::Subscribe(subscribe) => {
                    Box::pin(self.on_subscribe(subscribe)).await;
                    None
                }
                packet => self.handle_now(packet),
            };
            if let Some(end) = end {
                return end;
            }
            // Bound the work one connection does per loop turn (bytes read, messages fanned
            // out) so a fast publisher cannot starve the other connections of its shard, and
            // the writers get to send what it fanned out while it goes on.
            bytes_this_turn += before.saturating_sub(self.buf.len()).max(1);
            let sent = self.shard.metrics.messages_sent.get();
            let limits = &self.shard.limits;
            if bytes_this_turn >= limits.read_bytes_per_turn
                || sent.wrapping_sub(sent_at_turn_start) >= limits.deliveries_per_turn as u64
            {
                bytes_this_turn = 0;
                futures_lite::future::yield_now().await;
                sent_at_turn_start = self.shard.metrics.messages_sent.get();
            }
        }
    }

    /// Decodes the next packet, reading from the socket as needed.
    async fn read_packet(&mut self) -> Result<Packet, ReadError> {
        loop {
            match self.codec.decode(&mut self.buf) {
                Ok(Decoded::Packet(packet)) => return Ok(packet),
                Ok(Decoded::Incomplete { .. }) => self.fill().await?,
                Err(e) => return Err(ReadError::Decode(e)),
            }
        }
    }

    /// Reads what the socket has into the buffer.
    async fn fill(&mut self) -> Result<(), ReadError> {
        let chunk = self.read_chunk;
        if self.buf.capacity() - self.buf.len() < chunk {
            self.buf.reserve(chunk * 4);
        }
        let start = self.buf.len();
        self.buf.resize(start + chunk, 0);
        let read = self.stream.read(&mut self.buf[start..]).await;
        if matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::TimedOut) {
            self.buf.truncate(start);
            return Err(ReadError::KeepAliveTimeout);
        }
        let n = read.unwrap_or(0);
        self.buf.truncate(start + n);
        if n == 0 {
            return Err(ReadError::Gone);
        }
        if n == chunk {
            self.read_chunk = (chunk * 2).min(READ_CHUNK_BYTES);
        }
        self.shard.metrics.add_bytes_received(n);
        Ok(())
    }

    /// Answers a CONNECT the codec refused, where the spec asks for a CONNACK first.
    fn refuse_connect(&mut self, error: &DecodeError) {
        let v5 = self.codec.version() == Some(Version::V5);
        let code = match error {
            DecodeError::UnsupportedProtocolLevel(_) if !v5 => {
                ReasonCode(connack_v3::UNACCEPTABLE_PROTOCOL_VERSION)
            }
            _ if v5 => error.reason_code(),
            _ => return self.outbox.close(),
        };
        let version = if v5 { Version::V5 } else { Version::V311 };
        self.send_connack(version, false, code, Properties::default());
        self.outbox.close();
    }

    fn send_connack(
        &mut self,
        version: Version,
        session_present: bool,
        code: ReasonCode,
        properties: Properties,
    ) {
        let packet = Packet::ConnAck(ConnAck {
            session_present,
            code,
            properties: properties.into(),
        });
        push_packet(&self.outbox, &packet, version, &mut self.scratch);
    }

    /// Refuses a CONNECT with `code` and closes.
    fn refuse(&mut self, code: ReasonCode) -> bool {
        self.send_connack(self.version, false, code, Properties::default());
        self.outbox.close();
        false
    }

    /// Checks the client id, takes it over from any older connection, installs the session
    /// and answers CONNACK. Returns false when the connection was refused.
    async fn accept_connect(&mut self, connect: Connect) -> bool {
        self.version = connect.version;
        if self.shard.is_over_connection_limit() {
            return self.refuse(match self.version {
                Version::V311 => ReasonCode(connack_v3::SERVER_UNAVAILABLE),
                Version::V5 => ReasonCode::SERVER_BUSY,
            });
        }
        if let Some(method) = &connect.properties.authentication_method {
            // Enhanced authentication: no method is configured unless `auth` knows it.
            if crate::auth::authenticator(method.as_str()).is_none() {
                return self.refuse(ReasonCode::BAD_AUTHENTICATION_METHOD);
            }
        }
        let mut properties = self.server_properties();
        let mut client_id = connect.client_id.as_str().to_string();
        if client_id.is_empty() {
            if self.version == Version::V311 && !connect.clean_start {
                // [MQTT-3.1.3-8]: a zero-byte id needs Clean Session = 1.
                return self.refuse(ReasonCode(connack_v3::IDENTIFIER_REJECTED));
            }
            client_id = format!("ringcast-{:x}", self.shard.new_token());
            if self.version == Version::V5 {
                properties.assigned_client_identifier = MqttString::from_str_checked(&client_id);
            }
        }
        let wanted = &connect.properties;
        self.has_problem_info = wanted.request_problem_information != Some(0);
        self.session_expiry_secs = wanted.session_expiry_interval.unwrap_or(0);
        let is_persistent = match self.version {
            Version::V311 => !connect.clean_start,
            Version::V5 => self.session_expiry_secs > 0,
        };
        self.token = self.shard.new_token();
        let claim = self
            .shard
            .claim(&client_id, self.token, !connect.clean_start)
            .await;
        let Ok(state) = claim else {
            // A newer connection with this client id took over while we waited.
            self.outbox.close();
            return false;
        };
        let session_present = state.is_some();
        let mut session = Session::new(client_id, self.version, is_persistent);
        session.conn_token = self.token;
        session.will = connect.will;
        session.expiry_secs = self.session_expiry_secs;
        self.peer_packet_size_max = wanted.maximum_packet_size.unwrap_or(u32::MAX);
        session.peer = PeerLimits {
            receive_max: wanted.receive_maximum.unwrap_or(u16::MAX),
            packet_size_max: self.peer_packet_size_max,
            topic_alias_max: wanted.topic_alias_maximum.unwrap_or(0),
        };
        let (key, new_filters) = self.shard.install(session, state);
        self.key = key;
        self.shard.announce(key, new_filters).await;
        let keep_alive = self.keep_alive(connect.keep_alive_secs, &mut properties);
        let connack = Packet::ConnAck(ConnAck {
            session_present,
            code: ReasonCode::SUCCESS,
            properties: properties.into(),
        });
        let outbox = self.outbox.clone();
        let version = self.version;
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
        let keep_alive = keep_alive as u64;
        let timeout = (keep_alive > 0).then(|| Duration::from_millis(keep_alive * 1500));
        let _ = self.stream.set_read_timeout(timeout);
        true
    }

    /// What a 5.0 CONNACK tells the client about this server [MQTT-3.2.2.3]. Maximum QoS is
    /// left out: its absence means QoS 2, which is supported.
    fn server_properties(&self) -> Properties {
        if self.version != Version::V5 {
            return Properties::default();
        }
        let limits = &self.shard.limits;
        Properties {
            receive_maximum: Some(limits.receive_max),
            retain_available: Some(1),
            maximum_packet_size: Some(limits.packet_size_max),
            topic_alias_maximum: Some(limits.topic_alias_max),
            wildcard_subscription_available: Some(1),
            subscription_identifier_available: Some(1),
            shared_subscription_available: Some(1),
            ..Properties::default()
        }
    }

    /// The keep-alive the connection runs with: the client's, unless it exceeds (or turns
    /// off) the configured maximum, which 5.0 then announces as Server Keep Alive
    /// [MQTT-3.2.2-21]. A 3.1.1 client cannot be told, so it keeps its own.
    fn keep_alive(&self, asked: u16, properties: &mut Properties) -> u16 {
        let max = self.shard.limits.keep_alive_max_secs;
        if self.version != Version::V5 || max == 0 || (asked != 0 && asked <= max) {
            return asked;
        }
        properties.server_keep_alive = Some(max);
        max
    }

    /// Sends a 5.0 DISCONNECT with `reason` and a Reason String saying it in words (allowed on
    /// DISCONNECT whatever Request Problem Information says); nothing for 3.1.1. Then closes.
    fn disconnect_with(&mut self, reason: ReasonCode) {
        if self.version == Version::V5 {
            let packet = Packet::Disconnect(Disconnect {
                reason,
                properties: Properties {
                    reason_string: self.reason_string(reason),
                    ..Properties::default()
                }
                .into(),
            });
            self.send(&packet);
        }
        self.outbox.close();
    }

    /// Properties of an acknowledgement that refuses something: a Reason String unless the
    /// client asked for no problem information [MQTT-3.1.2-29].
    fn problem(&self, reason: ReasonCode) -> Properties {
        if !self.has_problem_info || reason.0 < 0x80 {
            return Properties::default();
        }
        Properties {
            reason_string: self.reason_string(reason),
            ..Properties::default()
        }
    }

    /// The Reason String for `reason`, if an acknowledgement carrying it stays within the
    /// client's Maximum Packet Size (fixed header, packet id, reason code and property
    /// framing take at most 16 bytes).
    fn reason_string(&self, reason: ReasonCode) -> Option<MqttString> {
        let text = reason_text(reason);
        let fits = text.len() + 16 <= self.peer_packet_size_max as usize;
        fits.then(|| MqttString::from_str_checked(text)).flatten()
    }

    /// Acts on one packet; returns Some when the connection must end.
    /// Handles a packet that never waits (everything but PUBLISH and SUBSCRIBE).
    fn handle_now(&mut self, packet: Packet) -> Option<End> {
        match packet {
            Packet::PubAck(ack) => self.on_pubacks(ack.pkid),
            Packet::PubRec(ack) => {
                self.session(|s, _, b| s.on_pubrec(ack.pkid, b));
            }
            Packet::PubComp(ack) => {
                self.session(|s, l, b| s.on_pubcomp(ack.pkid, l, b));
            }
            Packet::PubRel(ack) => {
                let pkid = ack.pkid;
                let known = self.session(|s, _, _| s.release_qos2(pkid));
                let reason = match (known, self.version) {
                    (Some(false), Version::V5) => ReasonCode::PACKET_IDENTIFIER_NOT_FOUND,
                    _ => ReasonCode::SUCCESS,
                };
                self.send_ack(Packet::PubComp, pkid, reason);
            }
            Packet::Unsubscribe(unsubscribe) => self.on_unsubscribe(unsubscribe),
            Packet::PingReq => self.send(&Packet::PingResp),
            Packet::Disconnect(d) => {
                if let Some(secs) = d.properties.session_expiry_interval {
                    if self.session_expiry_secs == 0 && secs != 0 {
                        // A session that ends with the connection cannot be revived here
                        // [MQTT-3.14.2-2].
                        self.disconnect_with(ReasonCode::PROTOCOL_ERROR);
                        return Some(End::Abrupt);
                    }
                    self.shard.set_session_expiry(self.key, self.token, secs);
                }
                self.outbox.close();
                if d.reason == ReasonCode::DISCONNECT_WITH_WILL_MESSAGE {
                    return Some(End::Abrupt);
                }
                return Some(End::Graceful);
            }
            // A second CONNECT [MQTT-3.1.0-2], AUTH without an authentication method, and
            // server-to-client packets are protocol errors.
            _ => {
                self.disconnect_with(ReasonCode::PROTOCOL_ERROR);
                return Some(End::Abrupt);
            }
        }
        None
    }

    /// A PUBACK, and the PUBACKs right behind it in the buffer, handled as one batch: one
    /// session lookup and one pump of the queue for a whole read of a subscriber's acks.
    fn on_pubacks(&mut self, first: u16) {
        let mut pkids = [0u16; PUBACK_BATCH_MAX];
        pkids[0] = first;
        let mut len = 1;
        // 0x40 is PUBACK with its only valid flags; a malformed one (which the codec leaves
        // in the buffer) is left for the read loop to report.
        while len < PUBACK_BATCH_MAX && self.buf.first() == Some(&0x40) {
            let Ok(Decoded::Packet(Packet::PubAck(ack))) = self.codec.decode(&mut self.buf) else {
                break;
            };
            pkids[len] = ack.pkid;
            len += 1;
        }
        self.session(|s, l, b| s.on_pubacks(&pkids[..len], l, b));
    }

    fn session<R>(
        &mut self,
        f: impl FnOnce(&mut Session, &crate::config::Limits, &mut crate::shard::encoder::Encoder) -> R,
    ) -> Option<R> {
        self.shard.with_session(self.key, self.token, f)
    }

    fn send(&mut self, packet: &Packet) {
        push_packet(&self.outbox, packet, self.version, &mut self.scratch);
    }

    /// A PUBLISH/PUBACK-shaped acknowledgement with `reason` (and its Reason String when
    /// allowed).
    fn send_ack(&mut self, kind: fn(Ack) -> Packet, pkid: u16, reason: ReasonCode) {
        let properties = self.problem(reason);
        self.send(&kind(Ack {
            pkid,
            reason,
            properties: properties.into(),
        }));
    }

    /// A QoS 0 or 1 PUBLISH with no topic alias or payload format to check, routed at once
    /// when the shard can (see `Shard::publish_now`); otherwise handed back with what is
    /// left to do.
    fn publish_now(&mut self, publish: Publish) -> Result<Option<End>, Deferred> {
        let is_plain = publish.qos != QoS::ExactlyOnce
            && publish.properties.topic_alias.is_none()
            && publish.properties.payload_format_indicator != Some(1);
        if !is_plain {
            return Err(Deferred::Checks(publish));
        }
        if let Some(reason) = self.check_topic(publish.topic.as_str(), false) {
            self.disconnect_with(reason);
            return Ok(Some(End::Abrupt));
        }
        let message = Message::received(publish, self.token);
        let (qos, pkid) = (message.publish.qos, message.publish.pkid);
        let matched = self.shard.publish_now(message).map_err(Deferred::Routing)?;
        self.ack_routed(qos, pkid, matched);
        Ok(None)
    }

    /// Routes a checked QoS 0 or 1 message, waiting as `Shard::publish` may, then acknowledges
    /// it.
    async fn route(&mut self, message: Message) {
        let (qos, pkid) = (message.publish.qos, message.publish.pkid);
        let matched = self.shard.publish(message).await;
        self.ack_routed(qos, pkid, matched);
    }

    /// The PUBACK of a routed QoS 1 message (QoS 0 has none).
    fn ack_routed(&mut self, qos: QoS, pkid: u16, matched: bool) {
        if qos == QoS::AtLeastOnce {
            self.send_ack(Packet::PubAck, pkid, self.matched_reason(matched));
        }
    }

    async fn on_publish(&mut self, mut publish: Publish) -> Option<End> {
        if let Err(reason) = self.resolve_topic_alias(&mut publish) {
            self.disconnect_with(reason);
            return Some(End::Abrupt);
        }
        if let Some(reason) = self.check_topic(publish.topic.as_str(), false) {
            self.disconnect_with(reason);
            return Some(End::Abrupt);
        }
        let pkid = publish.pkid;
        let qos = publish.qos;
        // [MQTT-3.3.2-4]: the server may refuse a payload that is not what its Payload Format
        // Indicator says. QoS 1/2 get the reason in PUBACK/PUBREC and the connection stays;
        // QoS 0 has no acknowledgement to carry it, so the connection ends with it.
        let bad_format = publish.properties.payload_format_indicator == Some(1)
            && std::str::from_utf8(&publish.payload).is_err();
        match (qos, bad_format) {
            (QoS::AtMostOnce, true) => {
                self.disconnect_with(ReasonCode::PAYLOAD_FORMAT_INVALID);
                return Some(End::Abrupt);
            }
            (QoS::AtLeastOnce, true) => {
                self.send_ack(Packet::PubAck, pkid, ReasonCode::PAYLOAD_FORMAT_INVALID)
            }
            (QoS::ExactlyOnce, true) => {
                self.send_ack(Packet::PubRec, pkid, ReasonCode::PAYLOAD_FORMAT_INVALID)
            }
            (QoS::AtMostOnce | QoS::AtLeastOnce, false) => {
                self.route(Message::received(publish, self.token)).await
            }
            (QoS::ExactlyOnce, false) => return self.on_publish_qos2(publish).await,
        }
        None
    }

    /// A QoS 2 PUBLISH: forwarded once, however often the client re-sends it before PUBREL
    /// [MQTT-4.3.3-2]; more unreleased ones than our Receive Maximum end the connection
    /// [MQTT-3.3.4-8].
    async fn on_publish_qos2(&mut self, publish: Publish) -> Option<End> {
        let pkid = publish.pkid;
        let receive_max = self.shard.limits.receive_max as usize;
        let (is_new, pending) = self
            .session(|s, _, _| (s.receive_qos2(pkid), s.incoming_qos2_len()))
            .unwrap_or((false, 0));
        if is_new && pending > receive_max && self.version == Version::V5 {
            self.disconnect_with(ReasonCode::RECEIVE_MAXIMUM_EXCEEDED);
            return Some(End::Abrupt);
        }
        let mut matched = true;
        if is_new {
            let message = Message::received(publish, self.token);
            matched = self.shard.publish(message).await;
        }
        self.send_ack(Packet::PubRec, pkid, self.matched_reason(matched));
        None
    }

    /// Success, or 5.0's 0x10 when nobody subscribes to what was published.
    fn matched_reason(&self, matched: bool) -> ReasonCode {
        match (matched, self.version) {
            (false, Version::V5) => ReasonCode::NO_MATCHING_SUBSCRIBERS,
            _ => ReasonCode::SUCCESS,
        }
    }

    /// Replaces a 5.0 Topic Alias by its topic [MQTT-3.3.2-12]: a PUBLISH with a topic and an
    /// alias sets the alias, one with an empty topic uses it. Aliases above our Topic Alias
    /// Maximum (or 0) are refused [MQTT-3.3.2-9]; an unknown one is a protocol error.
    fn resolve_topic_alias(&mut self, publish: &mut Publish) -> Result<(), ReasonCode> {
        let Some(alias) = publish.properties.topic_alias.take() else {
            return Ok(());
        };
        if alias == 0 || alias > self.shard.limits.topic_alias_max {
            return Err(ReasonCode::TOPIC_ALIAS_INVALID);
        }
        if publish.topic.is_empty() {
            let topic = self.inbound_aliases.get(&alias);
            publish.topic = topic.cloned().ok_or(ReasonCode::PROTOCOL_ERROR)?;
        } else {
            self.inbound_aliases.insert(alias, publish.topic.clone());
        }
        Ok(())
    }

    /// A topic over the configured length or depth; returns the reason to disconnect with.
    fn check_topic(&self, topic: &str, is_filter: bool) -> Option<ReasonCode> {
        let limits = &self.shard.limits;
        let levels = topic.bytes().filter(|&b| b == b'/').count() + 1;
        let too_long = topic.len() > limits.topic_bytes_max || levels > limits.topic_levels_max;
        if topic.is_empty() {
            // Only a PUBLISH with a Topic Alias may have an empty topic, resolved before this.
            return Some(ReasonCode::PROTOCOL_ERROR);
        }
        match (too_long, is_filter) {
            (false, _) => None,
            (true, true) => Some(ReasonCode::TOPIC_FILTER_INVALID),
            (true, false) => Some(ReasonCode::TOPIC_NAME_INVALID),
        }
    }

    async fn on_subscribe(&mut self, subscribe: Subscribe) {
        let failure = match self.version {
            Version::V311 => ReasonCode::UNSPECIFIED_ERROR,
            Version::V5 => ReasonCode::UNSPECIFIED_ERROR,
        };
        let mut reason_codes = Vec::with_capacity(subscribe.filters.len());
        let mut new_filters = Vec::new();
        let mut granted = Vec::new();
        for entry in &subscribe.filters {
            let filter = entry.filter.as_str();
            let count = self.session(|s, _, _| s.subscriptions.len()).unwrap_or(0);
            let refused = if self.check_topic(filter, true).is_some() {
                Some(match self.version {
                    Version::V311 => failure,
                    Version::V5 => ReasonCode::TOPIC_FILTER_INVALID,
                })
            } else if count >= self.shard.limits.subscriptions_max {
                Some(match self.version {
                    Version::V311 => failure,
                    Version::V5 => ReasonCode::QUOTA_EXCEEDED,
                })
            } else {
                None
            };
            if let Some(code) = refused {
                reason_codes.push(code);
                continue;
            }
            let existed = self
                .session(|s, _, _| s.subscriptions.contains_key(filter))
                .unwrap_or(false);
            let sub = Subscription {
                options: entry.options,
                id: subscribe
                    .properties
                    .subscription_identifiers
                    .first()
                    .copied(),
            };
            if self.shard.subscribe(self.key, filter, sub) {
                new_filters.push(filter.to_string());
            }
            reason_codes.push(ReasonCode(entry.options.qos as u8));
            granted.push((filter.to_string(), sub, existed));
        }
        self.shard.announce(self.key, new_filters).await;
        let suback = Packet::SubAck(SubAck {
            pkid: subscribe.pkid,
            reason_codes,
            properties: Props::default(),
        });
        self.send(&suback);
        for (filter, sub, existed) in granted {
            // Retain Handling: 0 send, 1 send only for a new subscription, 2 never. A shared
            // subscription gets none when it is made (3.8.3.1, Retain Handling).
            let options = sub.options;
            if options.retain_handling == 2
                || (options.retain_handling == 1 && existed)
                || filter.starts_with(crate::shard::SHARE_PREFIX)
            {
                continue;
            }
            self.shard.send_retained(self.key, &filter, sub);
        }
        self.shard.feed_retained(self.key, self.token);
    }

    fn on_unsubscribe(&mut self, unsubscribe: Unsubscribe) {
        let mut reason_codes = Vec::with_capacity(unsubscribe.filters.len());
        let mut gone = Vec::new();
        for filter in &unsubscribe.filters {
            let (existed, last) = self.shard.unsubscribe(self.key, filter.as_str());
            if last {
                gone.push(filter.as_str().to_string());
            }
            reason_codes.push(if existed {
                ReasonCode::SUCCESS
            } else {
                ReasonCode::NO_SUBSCRIPTION_EXISTED
            });
        }
        self.shard.withdraw(self.key, gone);
        if self.version == Version::V311 {
            reason_codes.clear();
        }
        let unsuback = Packet::UnsubAck(UnsubAck {
            pkid: unsubscribe.pkid,
            reason_codes,
            properties: Props::default(),
        });
        self.send(&unsuback);
    }
}

/// A Reason String for the reason codes this server sends.
fn reason_text(reason: ReasonCode) -> &'static str {
    match reason {
        ReasonCode::MALFORMED_PACKET => "malformed packet",
        ReasonCode::PROTOCOL_ERROR => "protocol error",
        ReasonCode::KEEP_ALIVE_TIMEOUT => "nothing received within 1.5 times the keep alive",
        ReasonCode::TOPIC_NAME_INVALID => "topic name too long or too deep",
        ReasonCode::TOPIC_FILTER_INVALID => "topic filter too long or too deep",
        ReasonCode::TOPIC_ALIAS_INVALID => "topic alias 0 or above the topic alias maximum",
        ReasonCode::RECEIVE_MAXIMUM_EXCEEDED => {
            "more unacknowledged QoS 2 messages than receive maximum"
        }
        ReasonCode::PACKET_TOO_LARGE => "packet larger than maximum packet size",
        ReasonCode::PAYLOAD_FORMAT_INVALID => "payload format indicator 1 but payload not UTF-8",
        ReasonCode::QUOTA_EXCEEDED => "too many subscriptions",
        ReasonCode::SESSION_TAKEN_OVER => "another connection took the client id over",
        ReasonCode::SERVER_SHUTTING_DOWN => "server shutting down",
        _ => "refused",
    }
}
