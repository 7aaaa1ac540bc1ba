//! Scale test: 10,000 concurrent MQTT 3.1.1 connections with a 1,000-topic subscribe/publish
//! workload against the real `ringcast` binary.
//!
//! The broker runs as a separate process: 10,000 client sockets here plus 10,000 server sockets
//! there would not fit under one process's open-file limit. This process raises its own soft
//! RLIMIT_NOFILE to the hard limit, as a user running a load generator would.
//!
//! Phases, each bounded by a timeout that names the phase and how many clients got through it:
//! 1. connect 10,000 clients in batches of 100, each getting CONNACK 0;
//! 2. each subscribes (QoS 1) to `load/{i % 1000}` and gets SUBACK granting QoS 1;
//! 3. 100 clients publish 10 QoS 1 messages each, one per topic, and get their PUBACKs; every
//!    client receives exactly the one message of its topic (10 per topic, 10,000 in all);
//! 4. every client sends DISCONNECT and waits for the broker to close, failing on any further
//!    PUBLISH (a duplicate delivery).

mod common;

use bytes::{Bytes, BytesMut};
use ringcast::protocol::codec::{encode, Codec, Decoded};
use ringcast::protocol::*;
use std::fs::File;
use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Child;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

const CLIENTS: usize = 10_000;
const TOPICS: usize = 1_000;
const PUBLISHERS: usize = 100;
const PER_PUBLISHER: usize = TOPICS / PUBLISHERS;
/// Connections opened at once. The broker's listener has std's backlog of 128: a larger batch
/// overflows it and the dropped SYNs are only retried after a second (500 at a time measured
/// ~500 connections/s, 100 at a time ~3,800/s).
const CONNECT_BATCH: usize = 100;
/// File descriptors this process needs beyond one per client (runtime, stdio, slack).
const FD_SLACK: libc::rlim_t = 200;

const START_LIMIT: Duration = Duration::from_secs(15);
const CONNECT_LIMIT: Duration = Duration::from_secs(45);
const SUBSCRIBE_LIMIT: Duration = Duration::from_secs(20);
const DELIVER_LIMIT: Duration = Duration::from_secs(20);
const DISCONNECT_LIMIT: Duration = Duration::from_secs(15);

fn topic(i: usize) -> String {
    format!("load/{i}")
}

fn payload(i: usize) -> Bytes {
    Bytes::from(format!("message for topic {i}"))
}

/// Raises the soft open-file limit to the hard limit and returns the new soft limit.
fn raise_fd_limit() -> libc::rlim_t {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to an rlimit.
    unsafe {
        assert_eq!(
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit),
            0,
            "getrlimit(RLIMIT_NOFILE): {}",
            std::io::Error::last_os_error()
        );
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            assert_eq!(
                libc::setrlimit(libc::RLIMIT_NOFILE, &limit),
                0,
                "setrlimit(RLIMIT_NOFILE, {}): {}",
                limit.rlim_max,
                std::io::Error::last_os_error()
            );
        }
    }
    limit.rlim_cur
}

/// The broker process; killed when dropped (also when the test panics).
struct BrokerProcess {
    child: Child,
    addr: SocketAddr,
    stderr_path: PathBuf,
}

impl BrokerProcess {
    /// Starts `ringcast` with 2 shards on a loopback port the OS picks and waits until it logs
    /// where it listens.
    fn start() -> BrokerProcess {
        let stderr_path =
            std::env::temp_dir().join(format!("ringcast-scale-10k-{}.stderr", std::process::id()));
        let stderr = File::create(&stderr_path).expect("create broker stderr file");
        let mut child = common::ringcast_command(2)
            .arg("--data-dir")
            .arg(common::fresh_data_dir())
            .stderr(stderr)
            .spawn()
            .expect("spawn the ringcast binary");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut broker = BrokerProcess {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            stderr_path,
        };
        match common::listening_addr(stdout, START_LIMIT) {
            Some(addr) => broker.addr = addr,
            None => {
                let exited = common::wait_exit(&mut broker.child, Duration::from_secs(1));
                panic!(
                    "start: broker {}; stderr:\n{}",
                    match exited {
                        Some(status) => format!("exited with {status} before listening"),
                        None => format!("not listening within {START_LIMIT:?}"),
                    },
                    broker.stderr()
                );
            }
        }
        broker
    }

    /// What the broker wrote to stderr so far.
    fn stderr(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = File::open(&self.stderr_path) {
            let _ = file.read_to_string(&mut text);
        }
        text
    }

    /// Panics when the broker has exited; called between phases for a clear diagnosis.
    fn assert_alive(&mut self, phase: &str) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{phase}: broker exited with {status}; stderr:\n{}",
                self.stderr()
            );
        }
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let log = self.stderr();
        if !log.trim().is_empty() {
            eprintln!("broker stderr:\n{log}");
        }
        let _ = std::fs::remove_file(&self.stderr_path);
    }
}

/// A minimal async MQTT 3.1.1 client on ringcast's codec.
struct Client {
    id: usize,
    stream: TcpStream,
    codec: Codec,
    buf: BytesMut,
}

impl Client {
    async fn connect(addr: SocketAddr, id: usize) -> Result<Client, String> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("client {id}: TCP connect: {e}"))?;
        stream
            .set_nodelay(true)
            .map_err(|e| format!("client {id}: set_nodelay: {e}"))?;
        let mut client = Client {
            id,
            stream,
            codec: Codec::with_version(Version::V311, 1 << 20),
            buf: BytesMut::with_capacity(1024),
        };
        client
            .send(&Packet::Connect(Box::new(Connect {
                version: Version::V311,
                client_id: MqttString::from_str_checked(&format!("tenk-{id}")).unwrap(),
                clean_start: true,
                keep_alive_secs: 300,
                username: None,
                password: None,
                will: None,
                properties: Props::default(),
            })))
            .await?;
        match client.recv().await? {
            Packet::ConnAck(ack) if ack.code == ReasonCode::SUCCESS => Ok(client),
            other => Err(format!("client {id}: expected CONNACK 0, got {other:?}")),
        }
    }

    async fn send(&mut self, packet: &Packet) -> Result<(), String> {
        let mut out = BytesMut::new();
        encode(packet, Version::V311, &mut out)
            .map_err(|e| format!("client {}: encode {packet:?}: {e:?}", self.id))?;
        self.stream
            .write_all(&out)
            .await
            .map_err(|e| format!("client {}: write: {e}", self.id))
    }

    /// The next packet; an error if the connection closes or a frame is malformed.
    async fn recv(&mut self) -> Result<Packet, String> {
        loop {
            match self.codec.decode(&mut self.buf) {
                Ok(Decoded::Packet(packet)) => return Ok(packet),
                Ok(Decoded::Incomplete { needed }) => self.buf.reserve(needed.max(1024)),
                Err(e) => return Err(format!("client {}: malformed packet: {e:?}", self.id)),
            }
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) => return Err(format!("client {}: broker closed the connection", self.id)),
                Ok(_) => {}
                Err(e) => return Err(format!("client {}: read: {e}", self.id)),
            }
        }
    }

    async fn subscribe(&mut self) -> Result<(), String> {
        let filter = topic(self.id % TOPICS);
        self.send(&Packet::Subscribe(Subscribe {
            pkid: 1,
            filters: vec![SubscribeFilter {
                filter: MqttString::from_str_checked(&filter).unwrap(),
                options: SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    ..Default::default()
                },
            }],
            properties: Props::default(),
        }))
        .await?;
        match self.recv().await? {
            Packet::SubAck(ack) if ack.pkid == 1 && ack.reason_codes == [ReasonCode(1)] => Ok(()),
            other => Err(format!(
                "client {}: expected SUBACK granting QoS 1 on {filter}, got {other:?}",
                self.id
            )),
        }
    }

    /// Publishes the topics in `publish` (QoS 1), then reads until every PUBACK and the one
    /// message of this client's own topic have arrived.
    async fn exchange(&mut self, publish: &[usize], delivered: &AtomicUsize) -> Result<(), String> {
        let mut awaiting: Vec<u16> = Vec::new();
        for (n, &t) in publish.iter().enumerate() {
            let pkid = n as u16 + 1;
            self.send(&Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtLeastOnce,
                retain: false,
                topic: MqttString::from_str_checked(&topic(t)).unwrap(),
                pkid,
                properties: Props::default(),
                payload: payload(t),
            }))
            .await?;
            awaiting.push(pkid);
        }
        let own = self.id % TOPICS;
        let mut received = false;
        while !received || !awaiting.is_empty() {
            match self.recv().await? {
                Packet::PubAck(ack) if awaiting.contains(&ack.pkid) => {
                    awaiting.retain(|&p| p != ack.pkid);
                }
                Packet::Publish(p) => {
                    if received {
                        return Err(format!(
                            "client {}: second PUBLISH {p:?} (already had its message)",
                            self.id
                        ));
                    }
                    if p.topic.as_str() != topic(own) || p.payload != payload(own) {
                        return Err(format!(
                            "client {}: expected the message of {}, got {p:?}",
                            self.id,
                            topic(own)
                        ));
                    }
                    if p.qos != QoS::AtLeastOnce || p.pkid == 0 {
                        return Err(format!("client {}: expected QoS 1, got {p:?}", self.id));
                    }
                    self.send(&Packet::PubAck(Ack {
                        pkid: p.pkid,
                        ..Ack::default()
                    }))
                    .await?;
                    received = true;
                    delivered.fetch_add(1, Ordering::Relaxed);
                }
                other => {
                    return Err(format!(
                        "client {}: unexpected {other:?} (awaiting PUBACKs {awaiting:?})",
                        self.id
                    ))
                }
            }
        }
        Ok(())
    }

    /// Sends DISCONNECT and waits for the broker to close; any PUBLISH before that is an error.
    async fn disconnect(mut self) -> Result<(), String> {
        self.send(&Packet::Disconnect(Disconnect::default()))
            .await?;
        match self.recv().await {
            Ok(packet) => Err(format!(
                "client {}: got {packet:?} after DISCONNECT",
                self.id
            )),
            Err(e) if e.contains("malformed") => Err(e),
            Err(_) => Ok(()), // closed by the broker (EOF or reset)
        }
    }
}

/// Collects a phase's task results, failing on the first errors (with a count) or a timeout.
async fn run_phase<T: 'static>(
    phase: &str,
    mut tasks: JoinSet<Result<T, String>>,
    limit: Duration,
    done: &AtomicUsize,
    expected: usize,
    detail: impl Fn() -> String,
) -> Vec<T> {
    let mut ok = Vec::with_capacity(tasks.len());
    let mut errors = Vec::new();
    let collect = async {
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(Ok(value)) => ok.push(value),
                Ok(Err(e)) => errors.push(e),
                Err(e) => errors.push(format!("task failed: {e}")),
            }
        }
    };
    if tokio::time::timeout(limit, collect).await.is_err() {
        panic!(
            "{phase}: timed out after {limit:?}: {} of {expected} clients done{}, {} errors{}",
            done.load(Ordering::Relaxed),
            detail(),
            errors.len(),
            first_errors(&errors)
        );
    }
    assert!(
        errors.is_empty(),
        "{phase}: {} of {expected} clients failed{}{}",
        errors.len(),
        detail(),
        first_errors(&errors)
    );
    ok
}

fn first_errors(errors: &[String]) -> String {
    errors
        .iter()
        .take(5)
        .map(|e| format!("\n  {e}"))
        .collect::<String>()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_connections_thousand_topics() {
    let fds = raise_fd_limit();
    assert!(
        fds >= CLIENTS as libc::rlim_t + FD_SLACK,
        "the open-file hard limit ({fds}) is below the {} this test needs",
        CLIENTS as libc::rlim_t + FD_SLACK
    );
    let test_start = Instant::now();
    let mut broker = BrokerProcess::start();
    let addr = broker.addr;
    println!("broker up on {addr} in {:.2?}", test_start.elapsed());

    // 1. Connect, a batch at a time so the listen backlog is not overrun (see CONNECT_BATCH).
    let started = Instant::now();
    let connected = Arc::new(AtomicUsize::new(0));
    let mut clients: Vec<Client> = Vec::with_capacity(CLIENTS);
    for batch in (0..CLIENTS).step_by(CONNECT_BATCH) {
        let left = CONNECT_LIMIT.saturating_sub(started.elapsed());
        let mut tasks = JoinSet::new();
        for id in batch..(batch + CONNECT_BATCH).min(CLIENTS) {
            let connected = connected.clone();
            tasks.spawn(async move {
                let client = Client::connect(addr, id).await?;
                connected.fetch_add(1, Ordering::Relaxed);
                Ok(client)
            });
        }
        clients.extend(run_phase("connect", tasks, left, &connected, CLIENTS, String::new).await);
        broker.assert_alive("connect");
    }
    let connect_time = started.elapsed();
    println!(
        "connect: {CLIENTS} clients in {connect_time:.2?} ({:.0} connections/s)",
        CLIENTS as f64 / connect_time.as_secs_f64()
    );

    // 2. Subscribe, all at once.
    let started = Instant::now();
    let subscribed = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    for mut client in clients.drain(..) {
        let subscribed = subscribed.clone();
        tasks.spawn(async move {
            client.subscribe().await?;
            subscribed.fetch_add(1, Ordering::Relaxed);
            Ok(client)
        });
    }
    let mut clients = run_phase(
        "subscribe",
        tasks,
        SUBSCRIBE_LIMIT,
        &subscribed,
        CLIENTS,
        String::new,
    )
    .await;
    broker.assert_alive("subscribe");
    println!(
        "subscribe: {CLIENTS} SUBACKs on {TOPICS} topics in {:.2?}",
        started.elapsed()
    );

    // 3. Publish one message per topic from 100 clients spread over the id range; every client
    //    receives the message of its own topic.
    clients.sort_by_key(|c| c.id);
    let started = Instant::now();
    let delivered = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    for mut client in clients.drain(..) {
        let stride = CLIENTS / PUBLISHERS;
        let publish: Vec<usize> = if client.id % stride == 0 {
            let p = client.id / stride;
            (p * PER_PUBLISHER..(p + 1) * PER_PUBLISHER).collect()
        } else {
            Vec::new()
        };
        let delivered = delivered.clone();
        let finished = finished.clone();
        tasks.spawn(async move {
            client.exchange(&publish, &delivered).await?;
            finished.fetch_add(1, Ordering::Relaxed);
            Ok(client)
        });
    }
    let detail = || {
        format!(
            "; {} of {CLIENTS} messages delivered",
            delivered.load(Ordering::Relaxed)
        )
    };
    let clients = run_phase("deliver", tasks, DELIVER_LIMIT, &finished, CLIENTS, detail).await;
    broker.assert_alive("deliver");
    let deliver_time = started.elapsed();
    assert_eq!(delivered.load(Ordering::Relaxed), CLIENTS);
    println!(
        "deliver: {TOPICS} QoS 1 publishes from {PUBLISHERS} clients, {CLIENTS} deliveries in {deliver_time:.2?} ({:.0} deliveries/s)",
        CLIENTS as f64 / deliver_time.as_secs_f64()
    );

    // 4. Disconnect cleanly.
    let started = Instant::now();
    let closed = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    for client in clients {
        let closed = closed.clone();
        tasks.spawn(async move {
            client.disconnect().await?;
            closed.fetch_add(1, Ordering::Relaxed);
            Ok(())
        });
    }
    run_phase(
        "disconnect",
        tasks,
        DISCONNECT_LIMIT,
        &closed,
        CLIENTS,
        String::new,
    )
    .await;
    broker.assert_alive("disconnect");
    println!(
        "disconnect: {CLIENTS} clients in {:.2?}; whole test {:.2?}",
        started.elapsed(),
        test_start.elapsed()
    );
}
