//! One client connection: read bytes, decode packets, act on them through the shard.
//!
//! Reading and writing are separate tasks: this one reads and handles packets, the writer
//! (`writer::run`) drains the outbox. Keep-alive is a read timeout of 1.5 × the client's
//! keep-alive [MQTT-3.1.2-24].

use super::outbox::Outbox;
use super::writer;
use crate::protocol::codec::{Codec, DecodeError, Decoded};
use crate::protocol::{
    connack_v3, ConnAck, Connect, Disconnect, MqttString, Packet, Properties, Publish, QoS,
    ReasonCode, SubAck, Subscribe, UnsubAck, Unsubscribe, Version,
};
use crate::shard::session::{push_packet, Session};
use crate::shard::{SessionKey, Shard};
use bytes::BytesMut;
use futures_lite::AsyncReadExt;
use glommio::net::TcpStream;
use std::os::unix::io::AsRawFd;
use std::rc::Rc;
use std::time::Duration;

/// Bytes asked of the socket per read.
const READ_CHUNK_BYTES: usize = 16 << 10;
/// How long a closing connection may take to flush what is queued.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the read loop stopped.
enum End {
    /// The client sent DISCONNECT (its will is discarded).
    Graceful,
    /// Anything else: socket closed, keep-alive expired, protocol error (the will is sent).
    Abrupt,
}

/// Serves one accepted connection until it closes.
pub async fn serve(shard: Rc<Shard>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let outbox = Rc::new(Outbox::default());
    // Reading and writing are separate tasks so neither waits on the other. The writer uses
    // the raw fd, which `conn.stream` keeps open until the writer is done or dropped below.
    let writer = glommio::spawn_local(writer::run(stream.as_raw_fd(), outbox.clone()));
    let mut conn = Conn {
        shard: shard.clone(),
        stream,
        buf: BytesMut::new(),
        codec: Codec::new(shard.limits.packet_size_max),
        outbox: outbox.clone(),
        version: Version::V311,
        key: 0,
        token: 0,
        scratch: BytesMut::new(),
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
    codec: Codec,
    outbox: Rc<Outbox>,
    version: Version,
    key: SessionKey,
    token: u64,
    scratch: BytesMut,
}

/// A failed read, with what to tell a 5.0 client.
enum ReadError {
    /// The socket closed or failed, or keep-alive expired.
    Gone,
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
            Err(ReadError::Gone) => return,
        };
        if !self.accept_connect(connect).await {
            return;
        }
        let end = self.read_loop().await;
        let graceful = matches!(end, End::Graceful);
        if let Some(will) = self.shard.disconnect(self.key, self.token, graceful) {
            self.shard.publish_will(will).await;
        }
    }

    /// Reads and handles packets until the connection ends.
    async fn read_loop(&mut self) -> End {
        let mut bytes_this_turn = 0;
        loop {
            let before = self.buf.len();
            let packet = match self.read_packet().await {
                Ok(packet) => packet,
                Err(ReadError::Decode(e)) => {
                    self.disconnect_with(e.reason_code());
                    return End::Abrupt;
                }
                Err(ReadError::Gone) => return End::Abrupt,
            };
            if let Some(end) = self.handle(packet).await {
                return end;
            }
            // Bound the work one connection does per loop turn so a fast publisher cannot
            // starve the other connections of its shard.
            bytes_this_turn += before.saturating_sub(self.buf.len()).max(1);
            if bytes_this_turn >= self.shard.limits.read_bytes_per_turn {
                bytes_this_turn = 0;
                futures_lite::future::yield_now().await;
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
        if self.buf.capacity() - self.buf.len() < READ_CHUNK_BYTES {
            self.buf.reserve(READ_CHUNK_BYTES * 4);
        }
        let start = self.buf.len();
        self.buf.resize(start + READ_CHUNK_BYTES, 0);
        let read = self.stream.read(&mut self.buf[start..]).await;
        let n = read.unwrap_or(0);
        self.buf.truncate(start + n);
        if n == 0 {
            return Err(ReadError::Gone);
        }
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
            properties,
        });
        push_packet(&self.outbox, &packet, version, &mut self.scratch);
    }

    /// Checks the client id, takes it over from any older connection, installs the session
    /// and answers CONNACK. Returns false when the connection was refused.
    async fn accept_connect(&mut self, connect: Connect) -> bool {
        self.version = connect.version;
        let mut properties = Properties::default();
        if self.shard.is_over_connection_limit() {
            let code = match self.version {
                Version::V311 => ReasonCode(connack_v3::SERVER_UNAVAILABLE),
                Version::V5 => ReasonCode::SERVER_BUSY,
            };
            self.send_connack(self.version, false, code, properties);
            self.outbox.close();
            return false;
        }
        let mut client_id = connect.client_id.as_str().to_string();
        if client_id.is_empty() {
            if self.version == Version::V311 && !connect.clean_start {
                // [MQTT-3.1.3-8]: a zero-byte id needs Clean Session = 1.
                let code = ReasonCode(connack_v3::IDENTIFIER_REJECTED);
                self.send_connack(Version::V311, false, code, properties);
                self.outbox.close();
                return false;
            }
            client_id = format!("ringcast-{:x}", self.shard.new_token());
            if self.version == Version::V5 {
                properties.assigned_client_identifier = MqttString::from_str_checked(&client_id);
            }
        }
        let is_persistent = match self.version {
            Version::V311 => !connect.clean_start,
            Version::V5 => connect.properties.session_expiry_interval.unwrap_or(0) > 0,
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
        let (key, new_filters) = self.shard.install(session, state);
        self.key = key;
        self.shard.announce(new_filters).await;
        let connack = Packet::ConnAck(ConnAck {
            session_present,
            code: ReasonCode::SUCCESS,
            properties,
        });
        let outbox = self.outbox.clone();
        let version = self.version;
        // CONNACK and attaching happen together, and only if no newer connection took the
        // session over while the interest announcement was in flight.
        let attached = self
            .shard
            .with_session(key, self.token, |s, limits, scratch| {
                push_packet(&outbox, &connack, version, scratch);
                s.resume(outbox, limits, scratch)
            });
        if attached.is_none() {
            self.outbox.close();
            return false;
        }
        let keep_alive = connect.keep_alive_secs as u64;
        let timeout = (keep_alive > 0).then(|| Duration::from_millis(keep_alive * 1500));
        let _ = self.stream.set_read_timeout(timeout);
        true
    }

    /// Sends a 5.0 DISCONNECT with `reason` (nothing for 3.1.1) and closes.
    fn disconnect_with(&mut self, reason: ReasonCode) {
        if self.version == Version::V5 {
            let packet = Packet::Disconnect(Disconnect {
                reason,
                properties: Properties::default(),
            });
            push_packet(&self.outbox, &packet, Version::V5, &mut self.scratch);
        }
        self.outbox.close();
    }

    /// Acts on one packet; returns Some when the connection must end.
    async fn handle(&mut self, packet: Packet) -> Option<End> {
        match packet {
            Packet::Publish(publish) => return self.on_publish(publish).await,
            Packet::PubAck(ack) => {
                self.session(|s, l, b| s.on_puback(ack.pkid, l, b));
            }
            Packet::PubRec(ack) => {
                self.session(|s, _, b| s.on_pubrec(ack.pkid, b));
            }
            Packet::PubComp(ack) => {
                self.session(|s, l, b| s.on_pubcomp(ack.pkid, l, b));
            }
            Packet::PubRel(ack) => {
                let pkid = ack.pkid;
                self.session(|s, _, _| s.release_qos2(pkid));
                self.send(&Packet::PubComp(crate::shard::session::ack(pkid)));
            }
            Packet::Subscribe(subscribe) => self.on_subscribe(subscribe).await,
            Packet::Unsubscribe(unsubscribe) => self.on_unsubscribe(unsubscribe),
            Packet::PingReq => self.send(&Packet::PingResp),
            Packet::Disconnect(d) => {
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

    fn session<R>(
        &mut self,
        f: impl FnOnce(&mut Session, &crate::config::Limits, &mut BytesMut) -> R,
    ) -> Option<R> {
        self.shard.with_session(self.key, self.token, f)
    }

    fn send(&mut self, packet: &Packet) {
        push_packet(&self.outbox, packet, self.version, &mut self.scratch);
    }

    async fn on_publish(&mut self, publish: Publish) -> Option<End> {
        if let Some(reason) = self.check_topic(publish.topic.as_str(), false) {
            self.disconnect_with(reason);
            return Some(End::Abrupt);
        }
        let pkid = publish.pkid;
        match publish.qos {
            QoS::AtMostOnce => self.shard.publish(publish).await,
            QoS::AtLeastOnce => {
                self.shard.publish(publish).await;
                self.send(&Packet::PubAck(crate::shard::session::ack(pkid)));
            }
            QoS::ExactlyOnce => {
                let is_new = self
                    .session(|s, _, _| s.receive_qos2(pkid))
                    .unwrap_or(false);
                if is_new {
                    self.shard.publish(publish).await;
                }
                self.send(&Packet::PubRec(crate::shard::session::ack(pkid)));
            }
        }
        None
    }

    /// A topic over the configured length or depth; returns the reason to disconnect with.
    fn check_topic(&self, topic: &str, is_filter: bool) -> Option<ReasonCode> {
        let limits = &self.shard.limits;
        let too_long = topic.len() > limits.topic_bytes_max
            || topic.split('/').count() > limits.topic_levels_max;
        if topic.is_empty() {
            // 5.0 Topic Alias is not supported yet, so an empty topic cannot be resolved.
            return Some(ReasonCode::TOPIC_ALIAS_INVALID);
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
            let refused = if filter.starts_with("$share/") {
                Some(match self.version {
                    Version::V311 => failure,
                    Version::V5 => ReasonCode::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED,
                })
            } else if self.check_topic(filter, true).is_some() {
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
            if self.shard.subscribe(self.key, filter, entry.options) {
                new_filters.push(filter.to_string());
            }
            reason_codes.push(ReasonCode(entry.options.qos as u8));
            granted.push((filter.to_string(), entry.options, existed));
        }
        self.shard.announce(new_filters).await;
        let suback = Packet::SubAck(SubAck {
            pkid: subscribe.pkid,
            reason_codes,
            properties: Properties::default(),
        });
        self.send(&suback);
        for (filter, options, existed) in granted {
            // Retain Handling: 0 send, 1 send only for a new subscription, 2 never.
            if options.retain_handling == 2 || (options.retain_handling == 1 && existed) {
                continue;
            }
            self.shard.send_retained(self.key, &filter, options.qos);
        }
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
        self.shard.withdraw(gone);
        if self.version == Version::V311 {
            reason_codes.clear();
        }
        let unsuback = Packet::UnsubAck(UnsubAck {
            pkid: unsubscribe.pkid,
            reason_codes,
            properties: Properties::default(),
        });
        self.send(&unsuback);
    }
}
