//! Shared test helpers: start a broker in-process on an ephemeral loopback port, and a
//! blocking raw-bytes MQTT client built on ringcast's own codec for exact spec checks.
#![allow(dead_code)]

pub mod ws;

use bytes::{Bytes, BytesMut};
use ringcast::config::Config;
use ringcast::protocol::codec::{encode, Codec, Decoded};
use ringcast::protocol::*;
use ringcast::server::Server;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::{Child, ChildStdout, ExitStatus};
use std::time::{Duration, Instant};

/// How long a test waits for a packet that should come.
pub const WAIT: Duration = Duration::from_secs(10);
/// How long a test waits to be sure a packet does not come.
pub const QUIET: Duration = Duration::from_millis(300);

/// A broker running in this process; stopped when dropped.
pub struct Broker {
    server: Option<Server>,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Broker {
    /// Starts a broker with `shards` shards on 127.0.0.1, port chosen by the OS.
    pub fn start(shards: usize) -> Broker {
        Broker::start_with(shards, |_| {})
    }

    /// Same, letting the test adjust the config first.
    pub fn start_with(shards: usize, adjust: impl FnOnce(&mut Config)) -> Broker {
        let mut config = Config {
            listen: vec!["127.0.0.1:0".parse().unwrap()],
            shards,
            log_level: "warn".into(),
            ..Config::default()
        };
        // Many brokers run at once in one test binary: none stores anything unless the test
        // gives it a directory of its own.
        config.persistence.enabled = false;
        adjust(&mut config);
        let server = Server::start(&config).expect("broker starts");
        let addr = server.local_addrs()[0];
        Broker {
            server: Some(server),
            addr,
        }
    }

    /// Every address it listens on, in the order of `Config::listeners` (`[[listener]]`s,
    /// then `listen`, then `ws_listen`).
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.server
            .as_ref()
            .map_or_else(Vec::new, |s| s.local_addrs().to_vec())
    }

    /// Stops the broker and waits for its shards.
    pub fn stop(mut self) {
        self.shut_down();
    }

    /// Stops the shards and waits for them, but never longer than `STOP_LIMIT`: a shard that
    /// does not stop is reported instead of hanging the whole test run.
    fn shut_down(&mut self) {
        let Some(server) = self.server.take() else {
            return;
        };
        server.stop();
        let (done, stopped) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            server.join();
            let _ = done.send(());
        });
        if stopped.recv_timeout(STOP_LIMIT).is_err() {
            eprintln!(
                "broker on {} did not stop within {STOP_LIMIT:?}; left running",
                self.addr
            );
            if !std::thread::panicking() {
                panic!("broker on {} did not stop within {STOP_LIMIT:?}", self.addr);
            }
        }
    }
}

/// How long a stopping broker may take.
const STOP_LIMIT: Duration = Duration::from_secs(20);

impl Drop for Broker {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// Why `Raw::recv_within` gave no packet.
#[derive(Debug, PartialEq, Eq)]
pub enum NoPacket {
    /// Nothing arrived in time.
    Timeout,
    /// The broker closed the connection.
    Closed,
}

/// A data directory of its own for a broker a test starts (`--data-dir`): under the system's
/// temporary directory, named by process and a counter, empty.
pub fn fresh_data_dir() -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("ringcast-test-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A blocking MQTT client speaking raw packets.
pub struct Raw {
    pub stream: TcpStream,
    codec: Codec,
    buf: BytesMut,
    pub version: Version,
}

/// A CONNECT with the usual defaults.
pub fn connect_packet(client_id: &str, version: Version, clean: bool) -> Connect {
    Connect {
        version,
        client_id: MqttString::from_str_checked(client_id).unwrap(),
        clean_start: clean,
        keep_alive_secs: 60,
        username: None,
        password: None,
        will: None,
        properties: Props::default(),
    }
}

impl Raw {
    /// Opens a TCP connection without sending anything.
    pub fn open(addr: SocketAddr, version: Version) -> Raw {
        let stream = TcpStream::connect(addr).expect("connect to broker");
        stream.set_nodelay(true).unwrap();
        Raw {
            stream,
            codec: Codec::with_version(version, 1 << 24),
            buf: BytesMut::new(),
            version,
        }
    }

    /// Connects with a 3.1.1 clean session and checks the CONNACK accepts.
    pub fn connect(addr: SocketAddr, client_id: &str) -> Raw {
        Raw::connect_with(addr, connect_packet(client_id, Version::V311, true)).0
    }

    /// Sends `connect` and returns the CONNACK, which must accept.
    pub fn connect_with(addr: SocketAddr, connect: Connect) -> (Raw, ConnAck) {
        let mut raw = Raw::open(addr, connect.version);
        raw.send(&Packet::Connect(Box::new(connect)));
        match raw.recv() {
            Packet::ConnAck(ack) => {
                assert_eq!(ack.code, ReasonCode::SUCCESS, "CONNACK refused: {ack:?}");
                (raw, ack)
            }
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// Writes one packet.
    pub fn send(&mut self, packet: &Packet) {
        let mut out = BytesMut::new();
        encode(packet, self.version, &mut out).expect("test packet encodes");
        self.send_bytes(&out);
    }

    /// Writes raw bytes.
    pub fn send_bytes(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes);
    }

    /// The next packet, failing the test after `WAIT`.
    pub fn recv(&mut self) -> Packet {
        match self.recv_within(WAIT) {
            Ok(packet) => packet,
            Err(e) => panic!("expected a packet, got {e:?}"),
        }
    }

    /// The next packet within `limit`.
    pub fn recv_within(&mut self, limit: Duration) -> Result<Packet, NoPacket> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Decoded::Packet(packet)) = self.codec.decode(&mut self.buf) {
                return Ok(packet);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(NoPacket::Timeout);
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(NoPacket::Closed),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(NoPacket::Timeout)
                }
                // The broker's threads share this process; their signals interrupt reads.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return Err(NoPacket::Closed),
            }
        }
    }

    /// Asserts nothing arrives for a short while.
    pub fn expect_nothing(&mut self) {
        match self.recv_within(QUIET) {
            Err(NoPacket::Timeout) => {}
            other => panic!("expected silence, got {other:?}"),
        }
    }

    /// Asserts the broker closes the connection (after any packets it sends first, returned).
    pub fn expect_closed(&mut self) -> Vec<Packet> {
        let mut before = Vec::new();
        loop {
            match self.recv_within(WAIT) {
                Ok(packet) => before.push(packet),
                Err(NoPacket::Closed) => return before,
                Err(NoPacket::Timeout) => panic!("connection still open; got {before:?}"),
            }
        }
    }

    /// Subscribes to one filter and returns the SUBACK codes.
    pub fn subscribe(&mut self, filter: &str, qos: QoS) -> Vec<ReasonCode> {
        self.subscribe_with(
            filter,
            SubscriptionOptions {
                qos,
                ..Default::default()
            },
        )
    }

    /// Subscribes with full options.
    pub fn subscribe_with(
        &mut self,
        filter: &str,
        options: SubscriptionOptions,
    ) -> Vec<ReasonCode> {
        let subscribe = Subscribe {
            pkid: 7,
            filters: vec![SubscribeFilter {
                filter: MqttString::from_str_checked(filter).unwrap(),
                options,
            }],
            properties: Props::default(),
        };
        self.send(&Packet::Subscribe(subscribe));
        match self.recv() {
            Packet::SubAck(ack) => {
                assert_eq!(ack.pkid, 7);
                ack.reason_codes
            }
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    /// Publishes; for QoS 1/2 completes the flow with the broker.
    pub fn publish(&mut self, topic: &str, payload: &[u8], qos: QoS, retain: bool) {
        let pkid = if qos == QoS::AtMostOnce { 0 } else { 11 };
        self.send(&publish_packet(topic, payload, qos, retain, pkid));
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => assert!(matches!(self.recv(), Packet::PubAck(a) if a.pkid == pkid)),
            QoS::ExactlyOnce => {
                assert!(matches!(self.recv(), Packet::PubRec(a) if a.pkid == pkid));
                self.send(&Packet::PubRel(Ack {
                    pkid,
                    ..Ack::default()
                }));
                assert!(matches!(self.recv(), Packet::PubComp(a) if a.pkid == pkid));
            }
        }
    }

    /// Receives a PUBLISH, acknowledging it as its QoS asks.
    pub fn recv_publish(&mut self) -> Publish {
        match self.recv() {
            Packet::Publish(p) => {
                self.ack(&p);
                p
            }
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    /// Completes the receiver's side of a QoS 1/2 flow.
    pub fn ack(&mut self, publish: &Publish) {
        let ack = Ack {
            pkid: publish.pkid,
            ..Ack::default()
        };
        match publish.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.send(&Packet::PubAck(ack)),
            QoS::ExactlyOnce => {
                self.send(&Packet::PubRec(ack.clone()));
                assert!(matches!(self.recv(), Packet::PubRel(a) if a.pkid == publish.pkid));
                self.send(&Packet::PubComp(ack));
            }
        }
    }

    /// Sends DISCONNECT, closes our side and waits until the broker closes its side. The
    /// broker takes the session offline before it closes the socket, so once this returns a
    /// publish to the client's subscriptions is queued for the session (or dropped with it).
    pub fn disconnect(mut self) {
        self.send(&Packet::Disconnect(Disconnect::default()));
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
        self.expect_closed();
    }

    /// Closes our side without DISCONNECT, as a client that vanishes, and waits until the
    /// broker closes its side: by then it has ended the connection (its will is due).
    pub fn close_without_disconnect(mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
        self.expect_closed();
    }
}

/// A PUBLISH packet.
pub fn publish_packet(topic: &str, payload: &[u8], qos: QoS, retain: bool, pkid: u16) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain,
        topic: MqttString::from_str_checked(topic).unwrap(),
        pkid,
        properties: Props::default(),
        payload: Bytes::copy_from_slice(payload),
    })
}

/// Waits until `child` exits, at most `limit`; returns its status, or None while it runs.
/// Blocks on the kernel's notice of the exit (a pidfd), so no test polls a process.
pub fn wait_exit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    if let Some(status) = child.try_wait().expect("wait for a child") {
        return Some(status);
    }
    let pid = child.id() as libc::pid_t;
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1. The child
    // is not reaped yet (try_wait said so), so the pid is still its own.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    assert!(
        raw >= 0,
        "pidfd_open({pid}): {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: `raw` is a descriptor just opened for us and owned by nothing else.
    let pidfd = unsafe { OwnedFd::from_raw_fd(raw as RawFd) };
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut ready = libc::pollfd {
            fd: pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let left_ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd that lives across the call.
        match unsafe { libc::poll(&mut ready, 1, left_ms) } {
            0 => return None,
            n if n > 0 => return Some(child.wait().expect("reap an exited child")),
            _ => {
                let error = std::io::Error::last_os_error();
                // The broker's threads share this process; their signals interrupt the wait.
                assert_eq!(
                    error.kind(),
                    std::io::ErrorKind::Interrupted,
                    "poll on a pidfd: {error}"
                );
            }
        }
    }
}

/// The `ringcast` binary cargo built for this test, started on a loopback port the OS picks
/// (`--listen 127.0.0.1:0`) with `shards` shards, logging at info whatever `RUST_LOG` says,
/// its stdout piped for `listening_addr` and nothing on its stdin. Callers add the config,
/// the data folder and where stderr goes.
pub fn ringcast_command(shards: usize) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_ringcast"));
    command
        .args(["--listen", "127.0.0.1:0", "--shards", &shards.to_string()])
        .args(["--log-level", "info"])
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped());
    command
}

/// The address that a `ringcast` binary started with `--log-level info` (and no `RUST_LOG`)
/// reports on `stdout` in its "ringcast listening on ADDR" line, so a test can start it on port
/// 0 and wait for that line instead of probing the port. None when its stdout closed first (it
/// exited) or after `limit`. The rest of its output is read and dropped, so the pipe never fills.
pub fn listening_addr(stdout: ChildStdout, limit: Duration) -> Option<SocketAddr> {
    let (found, addr) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (mut found, mut stdout, mut bytes) = (Some(found), BufReader::new(stdout), Vec::new());
        while stdout.read_until(b'\n', &mut bytes).is_ok_and(|n| n > 0) {
            let line = String::from_utf8_lossy(&bytes).into_owned();
            bytes.clear();
            let Some((_, rest)) = line.split_once("ringcast listening on ") else {
                continue;
            };
            let end = rest
                .find(|c: char| !(c.is_ascii_hexdigit() || ".:[]".contains(c)))
                .unwrap_or(rest.len());
            if let Ok(addr) = rest[..end].parse::<SocketAddr>() {
                if let Some(found) = found.take() {
                    let _ = found.send(addr);
                }
            }
        }
    });
    addr.recv_timeout(limit).ok()
}

/// Runs a test body once with 1 shard and once with 4 shards (publisher and subscribers then
/// usually sit on different shards, since connections are placed round-robin).
#[macro_export]
macro_rules! on_1_and_4_shards {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;
            #[test]
            fn one_shard() {
                ($body)(1)
            }
            #[test]
            fn four_shards() {
                ($body)(4)
            }
        }
    };
}

/// Helpers for tests driving the broker with rumqttc's MQTT 5 client.
pub mod rumqttc_v5 {
    use super::{Broker, WAIT};
    use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Packet};
    use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
    use std::time::Duration;

    /// Polls `events` until `pick` finds something, failing the test after `WAIT`.
    pub async fn until<T>(events: &mut EventLoop, mut pick: impl FnMut(&Event) -> Option<T>) -> T {
        let wait = async {
            loop {
                match events.poll().await {
                    Ok(event) => {
                        if let Some(found) = pick(&event) {
                            return found;
                        }
                    }
                    Err(e) => panic!("v5 connection failed: {e:?}"),
                }
            }
        };
        tokio::time::timeout(WAIT, wait)
            .await
            .expect("v5 client timed out waiting for the broker")
    }

    /// Connects a v5 client and checks that the CONNACK accepts it.
    pub async fn connect(broker: &Broker, id: &str) -> (AsyncClient, EventLoop) {
        let mut options = MqttOptions::new(id, "127.0.0.1", broker.addr.port());
        options.set_keep_alive(Duration::from_secs(30));
        let (client, mut events) = AsyncClient::new(options, 16);
        let code = until(&mut events, |e| match e {
            Event::Incoming(Packet::ConnAck(ack)) => Some(ack.code),
            _ => None,
        })
        .await;
        assert_eq!(code, ConnectReturnCode::Success);
        (client, events)
    }
}

/// A tool an interop test needs is missing: a failure where `RINGCAST_REQUIRE_INTEROP=1` (CI
/// sets it, so these tests run there instead of skipping), else a note. Returns false, for
/// the caller to return early.
pub fn tool_missing(message: &str) -> bool {
    if std::env::var("RINGCAST_REQUIRE_INTEROP").as_deref() == Ok("1") {
        panic!("{message} (RINGCAST_REQUIRE_INTEROP=1, so this is a failure, not a skip)");
    }
    eprintln!("note: skipping: {message}");
    false
}
