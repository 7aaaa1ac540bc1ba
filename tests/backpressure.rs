//! Backpressure: a slow subscriber never grows the broker's memory or slows the others, every
//! drop is counted, and publishers that outrun the broker are slowed instead of losing messages.
//!
//! The memory tests run the real `ringcast` binary as a separate process and sample its VmRSS;
//! the policy tests run the broker in-process. Counters are read from `$SYS`.

mod common;

use common::{Broker, Raw};
use ringcast::protocol::QoS;
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Bytes of every payload in the stuck-subscriber load.
const PAYLOAD_BYTES: usize = 1024;
/// How long a reader waits for the next message before giving up.
const READ_QUIET: Duration = Duration::from_secs(5);
/// How long a test waits for `$SYS` counters to settle.
const SYS_SETTLE: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------------
// A minimal wire client: fast enough in a debug build for 2 million deliveries.

/// One packet as read: the first header byte and the body.
struct Wire {
    reader: BufReader<TcpStream>,
    body: Vec<u8>,
}

/// A PUBLISH as the tests encode it: payload starts with publisher id (u32) and sequence (u64).
#[derive(Debug, Clone, Copy)]
struct Msg {
    qos: u8,
    pkid: u16,
    publisher: u32,
    seq: u64,
}

impl Wire {
    fn new(stream: TcpStream) -> Wire {
        Wire {
            reader: BufReader::with_capacity(256 << 10, stream),
            body: Vec::new(),
        }
    }

    /// The next packet's first byte, or None when the socket closed or went quiet.
    fn next(&mut self) -> Option<u8> {
        let mut b0 = [0u8; 1];
        self.reader.read_exact(&mut b0).ok()?;
        let mut len = 0usize;
        for shift in 0..4 {
            let mut b = [0u8; 1];
            self.reader.read_exact(&mut b).ok()?;
            len |= ((b[0] & 0x7f) as usize) << (7 * shift);
            if b[0] & 0x80 == 0 {
                break;
            }
        }
        self.body.resize(len, 0);
        self.reader.read_exact(&mut self.body).ok()?;
        Some(b0[0])
    }

    /// The next PUBLISH (other packets are skipped).
    fn next_publish(&mut self) -> Option<Msg> {
        loop {
            let b0 = self.next()?;
            if b0 >> 4 != 3 {
                continue;
            }
            let qos = (b0 >> 1) & 3;
            let topic_len = u16::from_be_bytes([self.body[0], self.body[1]]) as usize;
            let mut at = 2 + topic_len;
            let mut pkid = 0;
            if qos > 0 {
                pkid = u16::from_be_bytes([self.body[at], self.body[at + 1]]);
                at += 2;
            }
            let p = &self.body[at..];
            if p.len() < 12 {
                continue; // not one of ours ($SYS)
            }
            return Some(Msg {
                qos,
                pkid,
                publisher: u32::from_be_bytes(p[0..4].try_into().unwrap()),
                seq: u64::from_be_bytes(p[4..12].try_into().unwrap()),
            });
        }
    }

    fn puback(&mut self, pkid: u16) {
        let [hi, lo] = pkid.to_be_bytes();
        let _ = self.reader.get_mut().write_all(&[0x40, 2, hi, lo]);
    }
}

/// Encodes a PUBLISH of `bytes` payload bytes carrying `publisher` and `seq`.
fn encode_publish(
    topic: &str,
    qos: u8,
    pkid: u16,
    publisher: u32,
    seq: u64,
    bytes: usize,
) -> Vec<u8> {
    let mut body = Vec::with_capacity(bytes + topic.len() + 8);
    body.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    body.extend_from_slice(topic.as_bytes());
    if qos > 0 {
        body.extend_from_slice(&pkid.to_be_bytes());
    }
    body.extend_from_slice(&publisher.to_be_bytes());
    body.extend_from_slice(&seq.to_be_bytes());
    body.resize(body.len() + bytes.saturating_sub(12), b'x');
    let mut out = vec![0x30 | (qos << 1)];
    let mut len = body.len();
    loop {
        let mut b = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        out.push(b);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(&body);
    out
}

/// Connects (3.1.1, clean session), subscribes to `filter` and returns the bare stream.
fn subscriber(addr: SocketAddr, id: &str, filter: &str, qos: QoS) -> TcpStream {
    let mut raw = Raw::connect(addr, id);
    raw.subscribe(filter, qos);
    raw.stream
}

// ---------------------------------------------------------------------------------------------
// The broker as a separate process, and its resident memory.

struct BrokerProcess {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl BrokerProcess {
    /// Starts `ringcast --shards 2` with `config` (TOML) on a loopback port the OS picks and
    /// waits until it logs where it listens.
    fn start(name: &str, config: &str) -> BrokerProcess {
        let dir = std::env::temp_dir().join(format!("ringcast-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.toml"), config).unwrap();
        let mut child = common::ringcast_command(2)
            .arg("--data-dir")
            .arg(common::fresh_data_dir())
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stderr(File::create(dir.join("stderr")).unwrap())
            .spawn()
            .expect("spawn the ringcast binary");
        let stdout = child.stdout.take().unwrap();
        let mut broker = BrokerProcess {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            dir,
        };
        match common::listening_addr(stdout, Duration::from_secs(15)) {
            Some(addr) => broker.addr = addr,
            None => {
                let exited = common::wait_exit(&mut broker.child, Duration::from_secs(1));
                let log = std::fs::read_to_string(broker.dir.join("stderr")).unwrap_or_default();
                match exited {
                    Some(status) => panic!("broker exited {status}: {log}"),
                    None => panic!("broker did not start listening within 15 s: {log}"),
                }
            }
        }
        broker
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let log = std::fs::read_to_string(self.dir.join("stderr")).unwrap_or_default();
        if !log.trim().is_empty() {
            eprintln!("broker stderr:\n{log}");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// VmRSS of process `pid`, in bytes.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Samples a process's VmRSS every 10 ms until stopped; keeps the peak.
struct RssSampler {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let peak = Arc::new(AtomicU64::new(rss_bytes(pid)));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        let handle = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(rss_bytes(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        RssSampler {
            peak,
            stop,
            handle: Some(handle),
        }
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        self.peak.load(Ordering::Relaxed)
    }
}

// ---------------------------------------------------------------------------------------------
// $SYS

/// The retained value of `$SYS` topic `topic`, as a number.
fn sys_value(addr: SocketAddr, topic: &str) -> Option<u64> {
    let mut raw = Raw::connect(addr, "");
    raw.subscribe(topic, QoS::AtMostOnce);
    let value = match raw.recv_within(Duration::from_secs(3)) {
        Ok(ringcast::protocol::Packet::Publish(p)) => {
            std::str::from_utf8(&p.payload).ok()?.parse().ok()
        }
        _ => None,
    };
    raw.disconnect();
    value
}

/// Waits until `topic` reads the same in two `$SYS` rounds in a row and returns it. Every round
/// publishes every `$SYS` topic, retained: a subscriber gets the last round's value at once and
/// each later one as it is published, so this waits on the broker's rounds, not on a clock.
fn settled_sys_value(addr: SocketAddr, topic: &str) -> u64 {
    let deadline = Instant::now() + SYS_SETTLE;
    let mut raw = Raw::connect(addr, "");
    raw.subscribe(topic, QoS::AtMostOnce);
    let mut last = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let now = match raw.recv_within(left) {
            Ok(ringcast::protocol::Packet::Publish(p)) => std::str::from_utf8(&p.payload)
                .ok()
                .and_then(|value| value.parse::<u64>().ok()),
            other => panic!("{topic} did not settle: last {last:?}, then {other:?}"),
        };
        if let Some(value) = now.filter(|_| now == last) {
            raw.disconnect();
            return value;
        }
        last = now;
    }
}

// ---------------------------------------------------------------------------------------------
// The stuck-subscriber load: one QoS 0 publisher, `readers` subscribers that read everything,
// one that never reads.

struct StuckReport {
    baseline_rss: u64,
    peak_rss: u64,
    /// Per reader: messages received and whether they came in order.
    readers: Vec<(u64, bool)>,
    stuck: TcpStream,
    elapsed: Duration,
}

fn stuck_load(addr: SocketAddr, pid: u32, messages: u64, readers: usize) -> StuckReport {
    let topic = "load/stuck";
    let stuck = subscriber(addr, "stuck", topic, QoS::AtMostOnce);
    let streams: Vec<TcpStream> = (0..readers)
        .map(|i| subscriber(addr, &format!("reader-{i}"), topic, QoS::AtMostOnce))
        .collect();
    // Every CONNACK and SUBACK is in: the broker holds what it keeps for these connections.
    let publisher = Raw::connect(addr, "publisher").stream;
    let baseline_rss = rss_bytes(pid);
    let sampler = RssSampler::start(pid);
    let started = Instant::now();
    let reader_threads: Vec<JoinHandle<(u64, bool)>> = streams
        .into_iter()
        .map(|stream| {
            std::thread::spawn(move || {
                stream.set_read_timeout(Some(READ_QUIET)).unwrap();
                let mut wire = Wire::new(stream);
                let (mut count, mut in_order) = (0u64, true);
                while count < messages {
                    let Some(msg) = wire.next_publish() else {
                        break;
                    };
                    in_order &= msg.seq == count;
                    count += 1;
                }
                (count, in_order)
            })
        })
        .collect();
    let mut out = BufWriter::with_capacity(64 << 10, publisher);
    for seq in 0..messages {
        out.write_all(&encode_publish(topic, 0, 0, 0, seq, PAYLOAD_BYTES))
            .unwrap();
    }
    out.flush().unwrap();
    let results: Vec<(u64, bool)> = reader_threads
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    let elapsed = started.elapsed();
    let peak_rss = sampler.finish();
    StuckReport {
        baseline_rss,
        peak_rss,
        readers: results,
        stuck,
        elapsed,
    }
}

/// Reads what a stuck subscriber's socket finally delivers; returns the sequence numbers.
fn drain(stream: TcpStream, quiet: Duration) -> Vec<u64> {
    stream.set_read_timeout(Some(quiet)).unwrap();
    let mut wire = Wire::new(stream);
    let mut seqs = Vec::new();
    while let Some(msg) = wire.next_publish() {
        seqs.push(msg.seq);
    }
    seqs
}

const STUCK_MESSAGES: u64 = 100_000;
const STUCK_READERS: usize = 20;
const CEILING_BYTES: u64 = 8 << 20;
const WRITE_BUFFER_BYTES: u64 = 1 << 20;
/// Binary, executors, allocator slack: what the broker may use beyond what its limits bound.
const RSS_ALLOWANCE_BYTES: u64 = 24 << 20;
/// A read chunk (conn.rs) that a queued payload can keep alive, per connection.
const READ_CHUNK_BYTES: u64 = 64 << 10;

fn stuck_config() -> String {
    format!(
        "sys_interval_secs = 1\n\
         [limits]\n\
         write_buffer_bytes_max = {WRITE_BUFFER_BYTES}\n\
         write_buffer_pause_bytes = 131072\n\
         subscriber_stall_ms = 300\n\
         [backpressure]\n\
         memory_ceiling_bytes = {CEILING_BYTES}\n\
         memory_resume_bytes = {}\n",
        CEILING_BYTES * 3 / 4
    )
}

#[test]
fn stuck_subscriber_keeps_memory_bounded_readers_get_everything_in_order_and_drops_are_counted() {
    let broker = BrokerProcess::start("stuck", &stuck_config());
    let report = stuck_load(broker.addr, broker.pid(), STUCK_MESSAGES, STUCK_READERS);
    // Queued bytes never exceed the ceiling (the stuck subscriber's write buffer is part of
    // it); on top: a read chunk per connection and a fixed allowance.
    let connections = STUCK_READERS as u64 + 2;
    let bound =
        report.baseline_rss + CEILING_BYTES + connections * READ_CHUNK_BYTES + RSS_ALLOWANCE_BYTES;
    eprintln!(
        "stuck subscriber load: {} messages in {:?}, baseline RSS {} KiB, peak RSS {} KiB, bound {} KiB",
        STUCK_MESSAGES,
        report.elapsed,
        report.baseline_rss >> 10,
        report.peak_rss >> 10,
        bound >> 10
    );
    for (i, (count, in_order)) in report.readers.iter().enumerate() {
        assert_eq!(*count, STUCK_MESSAGES, "reader {i} missed messages");
        assert!(in_order, "reader {i} got messages out of order");
    }
    assert!(
        report.peak_rss <= bound,
        "peak RSS {} over bound {bound}",
        report.peak_rss
    );
    let dropped = settled_sys_value(broker.addr, "$SYS/broker/ringcast/dropped");
    let received = drain(report.stuck, Duration::from_secs(2)).len() as u64;
    assert!(
        dropped > 0,
        "the stuck subscriber lost nothing: the test did not fill its bound"
    );
    assert_eq!(
        dropped,
        STUCK_MESSAGES - received,
        "drops counted {dropped}, stuck received {received}"
    );
    let by_reason = sys_value(
        broker.addr,
        "$SYS/broker/ringcast/dropped/write_buffer_full/qos0",
    );
    assert_eq!(by_reason, Some(dropped));
    let pauses = sys_value(broker.addr, "$SYS/broker/ringcast/publishers/pauses");
    eprintln!("stuck subscriber load: {dropped} dropped, {pauses:?} publisher pauses");
}

/// The same load against any broker already running (`STUCK_BROKER_ADDR`, `STUCK_BROKER_PID`),
/// for the comparison with mosquitto: `scripts/stuck-subscriber.sh`.
#[test]
#[ignore]
fn stuck_subscriber_load_against_external_broker() {
    let addr: SocketAddr = std::env::var("STUCK_BROKER_ADDR")
        .expect("STUCK_BROKER_ADDR")
        .parse()
        .unwrap();
    let pid: u32 = std::env::var("STUCK_BROKER_PID")
        .expect("STUCK_BROKER_PID")
        .parse()
        .unwrap();
    let report = stuck_load(addr, pid, STUCK_MESSAGES, STUCK_READERS);
    let complete = report
        .readers
        .iter()
        .filter(|(c, o)| *c == STUCK_MESSAGES && *o)
        .count();
    let stuck = drain(report.stuck, Duration::from_secs(2)).len();
    println!(
        "RESULT peak_rss_kib={} baseline_rss_kib={} elapsed_ms={} readers_complete={complete}/{} stuck_received={stuck}",
        report.peak_rss >> 10,
        report.baseline_rss >> 10,
        report.elapsed.as_millis(),
        STUCK_READERS
    );
}

// ---------------------------------------------------------------------------------------------
// Policies, in-process.

/// A broker with small bounds so a stuck subscriber fills them quickly.
fn small_broker(adjust: impl FnOnce(&mut ringcast::config::Config)) -> Broker {
    Broker::start_with(1, |c| {
        c.sys_interval_secs = 1;
        c.limits.write_buffer_bytes_max = 64 << 10;
        c.limits.write_buffer_pause_bytes = 16 << 10;
        c.limits.subscriber_stall_ms = 200;
        c.limits.queue_messages_max = 100;
        c.limits.queue_bytes_max = 1 << 20;
        c.limits.inflight_max = 32;
        c.backpressure.memory_ceiling_bytes = 4 << 20;
        c.backpressure.memory_resume_bytes = 3 << 20;
        adjust(c);
    })
}

/// Publishes `n` QoS 0 messages of 1 KiB on `topic`.
fn publish_qos0(addr: SocketAddr, topic: &str, n: u64) {
    let mut out = BufWriter::new(Raw::connect(addr, "pub0").stream);
    for seq in 0..n {
        out.write_all(&encode_publish(topic, 0, 0, 0, seq, 1024))
            .unwrap();
    }
    out.flush().unwrap();
}

/// Enough 1 KiB messages to fill the kernel's socket buffers and then the broker's bound.
const POLICY_MESSAGES: u64 = 30_000;

#[test]
fn qos0_drop_newest_keeps_the_oldest_messages_and_counts_the_rest() {
    let broker = small_broker(|_| {});
    let stuck = subscriber(broker.addr, "stuck", "p/newest", QoS::AtMostOnce);
    publish_qos0(broker.addr, "p/newest", POLICY_MESSAGES);
    let dropped = settled_sys_value(broker.addr, "$SYS/broker/ringcast/dropped");
    let seqs = drain(stuck, Duration::from_secs(1));
    assert!(dropped > 0);
    assert_eq!(dropped, POLICY_MESSAGES - seqs.len() as u64);
    let prefix: Vec<u64> = (0..seqs.len() as u64).collect();
    assert_eq!(seqs, prefix, "drop newest keeps an unbroken prefix");
}

#[test]
fn qos0_drop_oldest_keeps_the_newest_messages_and_counts_the_rest() {
    let broker =
        small_broker(|c| c.limits.qos0_overflow = ringcast::config::Qos0Overflow::DropOldest);
    let stuck = subscriber(broker.addr, "stuck", "p/oldest", QoS::AtMostOnce);
    publish_qos0(broker.addr, "p/oldest", POLICY_MESSAGES);
    let dropped = settled_sys_value(broker.addr, "$SYS/broker/ringcast/dropped");
    let seqs = drain(stuck, Duration::from_secs(1));
    assert!(dropped > 0);
    assert_eq!(dropped, POLICY_MESSAGES - seqs.len() as u64);
    assert_eq!(
        seqs.last(),
        Some(&(POLICY_MESSAGES - 1)),
        "the newest message is kept"
    );
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "order is kept");
    assert!(
        seqs.windows(2).any(|w| w[1] > w[0] + 1),
        "older messages were dropped"
    );
}

/// PUBACKs counted by a publisher's reading thread; the writing side waits on it for room in
/// its window.
#[derive(Default)]
struct Acked {
    count: Mutex<u64>,
    grew: Condvar,
}

impl Acked {
    fn add(&self) {
        *self.count.lock().unwrap() += 1;
        self.grew.notify_all();
    }

    fn count(&self) -> u64 {
        *self.count.lock().unwrap()
    }

    /// Waits until fewer than `window` of the first `sent` are unacknowledged; false if that
    /// did not happen by `deadline`.
    fn wait_for_room(&self, sent: u64, window: u64, deadline: Instant) -> bool {
        let left = deadline.saturating_duration_since(Instant::now());
        let count = self.count.lock().unwrap();
        let (count, waited) = self
            .grew
            .wait_timeout_while(count, left, |acked| sent - *acked >= window)
            .unwrap();
        drop(count);
        !waited.timed_out()
    }
}

/// Publishes `n` QoS 1 messages with at most `window` unacknowledged; returns how many were
/// PUBACKed.
fn publish_qos1(
    addr: SocketAddr,
    id: &str,
    publisher: u32,
    topic: &str,
    n: u64,
    window: u64,
) -> u64 {
    let stream = Raw::connect(addr, id).stream;
    stream.set_read_timeout(Some(READ_QUIET)).unwrap();
    let acked = Arc::new(Acked::default());
    let acks = {
        let (acked, stream) = (acked.clone(), stream.try_clone().unwrap());
        std::thread::spawn(move || {
            let mut wire = Wire::new(stream);
            while acked.count() < n {
                match wire.next() {
                    Some(b0) if b0 >> 4 == 4 => acked.add(),
                    Some(_) => {}
                    None => break,
                }
            }
        })
    };
    let mut out = BufWriter::new(stream);
    let deadline = Instant::now() + Duration::from_secs(60);
    for seq in 0..n {
        if seq - acked.count() >= window {
            out.flush().unwrap();
            assert!(
                acked.wait_for_room(seq, window, deadline),
                "publisher {id} stalled at {seq}"
            );
        }
        let pkid = (seq % 60_000 + 1) as u16;
        out.write_all(&encode_publish(topic, 1, pkid, publisher, seq, 256))
            .unwrap();
    }
    out.flush().unwrap();
    acks.join().unwrap();
    acked.count()
}

/// Reads QoS 1 messages, acknowledging each, until `expected` distinct ones came or it went
/// quiet; `pace` sleeps after every 100 to make a slow (but reading) subscriber.
fn read_qos1(stream: TcpStream, expected: u64, pace: Duration) -> HashMap<u32, Vec<u64>> {
    stream.set_read_timeout(Some(READ_QUIET)).unwrap();
    let mut wire = Wire::new(stream);
    let mut got: HashMap<u32, Vec<u64>> = HashMap::new();
    let mut distinct = 0;
    while distinct < expected {
        let Some(msg) = wire.next_publish() else {
            break;
        };
        if msg.qos > 0 {
            wire.puback(msg.pkid);
        }
        let seqs = got.entry(msg.publisher).or_default();
        if seqs.last().is_none_or(|&l| msg.seq > l) {
            seqs.push(msg.seq);
            distinct += 1;
        }
        if distinct % 100 == 0 && !pace.is_zero() {
            std::thread::sleep(pace);
        }
    }
    got
}

#[test]
fn qos1_stuck_subscriber_drops_are_counted_and_a_reading_one_loses_nothing() {
    let broker = small_broker(|_| {});
    let n = 3_000;
    let stuck = subscriber(broker.addr, "stuck", "q/drop", QoS::AtLeastOnce);
    let reading = subscriber(broker.addr, "reading", "q/drop", QoS::AtLeastOnce);
    let reader = std::thread::spawn(move || read_qos1(reading, n, Duration::ZERO));
    let acked = publish_qos1(broker.addr, "pub1", 1, "q/drop", n, 64);
    assert_eq!(acked, n);
    let got = reader.join().unwrap();
    assert_eq!(
        got[&1],
        (0..n).collect::<Vec<_>>(),
        "the reading subscriber got every message"
    );
    // The stuck one holds the inflight window and a full queue; the rest is dropped.
    let expected = n - 32 - 100;
    let dropped = settled_sys_value(broker.addr, "$SYS/broker/ringcast/dropped/queue_full/qos1");
    assert_eq!(dropped, expected);
    let seqs = drain(stuck, Duration::from_millis(500));
    assert_eq!(
        seqs,
        (0..32).collect::<Vec<_>>(),
        "the stuck subscriber got its window, in order"
    );
}

#[test]
fn qos1_subscriber_over_its_bound_is_disconnected_after_slow_subscriber_secs() {
    let broker = small_broker(|c| {
        c.limits.qos12_overflow = ringcast::config::Qos12Overflow::Disconnect;
        c.limits.slow_subscriber_secs = 1;
    });
    let stuck = subscriber(broker.addr, "stuck", "q/slow", QoS::AtLeastOnce);
    let mut publisher = Raw::connect(broker.addr, "pub");
    let started = Instant::now();
    // Fill its window and queue, then keep it over its bound for more than a second.
    for i in 0..400u32 {
        publisher.publish("q/slow", &i.to_be_bytes(), QoS::AtLeastOnce, false);
        if i >= 200 {
            std::thread::sleep(Duration::from_millis(8));
        }
    }
    assert!(started.elapsed() > Duration::from_secs(1));
    let disconnects = settled_sys_value(broker.addr, "$SYS/broker/ringcast/slow_disconnects");
    assert_eq!(disconnects, 1);
    // The broker closed the socket: reading ends (after whatever the socket still held).
    stuck
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut rest = Vec::new();
    let closed = (&stuck).read_to_end(&mut rest).is_ok();
    assert!(closed, "the slow subscriber's connection is closed");
}

// ---------------------------------------------------------------------------------------------
// The broker-wide ceiling.

#[test]
fn publishers_outrunning_the_ceiling_are_slowed_and_lose_no_acked_qos1_message() {
    let ceiling: u64 = 1 << 20;
    let config = format!(
        "sys_interval_secs = 1\n\
         [limits]\n\
         write_buffer_bytes_max = 524288\n\
         write_buffer_pause_bytes = 262144\n\
         queue_bytes_max = 1048576\n\
         queue_messages_max = 4000\n\
         inflight_max = 1000\n\
         [backpressure]\n\
         memory_ceiling_bytes = {ceiling}\n\
         memory_resume_bytes = {}\n",
        ceiling / 2
    );
    let broker = BrokerProcess::start("ceiling", &config);
    let (publishers, per_publisher, subscribers) = (4u32, 2_000u64, 8);
    let readers: Vec<JoinHandle<HashMap<u32, Vec<u64>>>> = (0..subscribers)
        .map(|i| {
            let stream = subscriber(broker.addr, &format!("slow-{i}"), "c/all", QoS::AtLeastOnce);
            let total = publishers as u64 * per_publisher;
            std::thread::spawn(move || read_qos1(stream, total, Duration::from_millis(5)))
        })
        .collect();
    let baseline = rss_bytes(broker.pid());
    let sampler = RssSampler::start(broker.pid());
    let addr = broker.addr;
    let pubs: Vec<JoinHandle<u64>> = (0..publishers)
        .map(|p| {
            std::thread::spawn(move || {
                publish_qos1(addr, &format!("pub-{p}"), p, "c/all", per_publisher, 500)
            })
        })
        .collect();
    let acked: Vec<u64> = pubs.into_iter().map(|p| p.join().unwrap()).collect();
    for (i, r) in readers.into_iter().enumerate() {
        let got = r.join().unwrap();
        for p in 0..publishers {
            assert_eq!(
                got.get(&p).map_or(0, |s| s.len() as u64),
                acked[p as usize],
                "subscriber {i} lost PUBACKed messages of publisher {p}"
            );
        }
    }
    let peak = sampler.finish();
    let bound = baseline + ceiling + 12 * READ_CHUNK_BYTES + RSS_ALLOWANCE_BYTES;
    eprintln!(
        "ceiling test: baseline {} KiB, peak {} KiB, bound {} KiB",
        baseline >> 10,
        peak >> 10,
        bound >> 10
    );
    assert!(peak <= bound, "peak RSS {peak} over bound {bound}");
    assert_eq!(
        settled_sys_value(broker.addr, "$SYS/broker/ringcast/dropped"),
        0
    );
    let pauses = settled_sys_value(broker.addr, "$SYS/broker/ringcast/publishers/pauses");
    let hits = settled_sys_value(broker.addr, "$SYS/broker/ringcast/ceiling/hits");
    eprintln!("ceiling test: {pauses} pauses, ceiling share reached {hits} times");
    assert!(pauses > 0, "the publishers were never slowed");
    assert!(hits > 0, "the load never reached the ceiling");
}

// ---------------------------------------------------------------------------------------------
// Fairness.

/// Flood bytes written before the round trips start: more than loopback's socket buffers hold
/// (a few MiB), so by then the broker is busy reading the flood.
const FLOOD_ON_BYTES: usize = 16 << 20;

#[test]
fn a_flooding_publisher_does_not_starve_another_client_of_its_shard() {
    let broker = Broker::start_with(1, |c| c.limits.read_bytes_per_turn = 16 << 10);
    let mut listener = Raw::connect(broker.addr, "listener");
    listener.subscribe("flood/other", QoS::AtMostOnce);
    let stop = Arc::new(AtomicBool::new(false));
    let (flood_on, flooding) = std::sync::mpsc::channel();
    let flooder = {
        let (stop, addr) = (stop.clone(), broker.addr);
        std::thread::spawn(move || {
            let mut out = BufWriter::new(Raw::connect(addr, "flooder").stream);
            let packet = encode_publish("flood/nobody", 0, 0, 0, 0, 1024);
            let deadline = Instant::now() + Duration::from_secs(20);
            let (mut written, mut flood_on) = (0, Some(flood_on));
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                out.write_all(&packet).unwrap();
                written += packet.len();
                if written >= FLOOD_ON_BYTES {
                    if let Some(on) = flood_on.take() {
                        let _ = on.send(());
                    }
                }
            }
        })
    };
    flooding
        .recv_timeout(Duration::from_secs(20))
        .expect("the flood starts");
    let mut other = Raw::connect(broker.addr, "other");
    let mut worst = Duration::ZERO;
    for i in 0..20u8 {
        let started = Instant::now();
        other.publish("flood/other", &[i], QoS::AtLeastOnce, false);
        assert_eq!(listener.recv_publish().payload[0], i);
        worst = worst.max(started.elapsed());
    }
    stop.store(true, Ordering::Relaxed);
    flooder.join().unwrap();
    assert!(
        worst < Duration::from_secs(1),
        "a round trip took {worst:?} beside the flood"
    );
}

// ---------------------------------------------------------------------------------------------
// QoS 2 and offline sessions.

#[test]
fn qos2_stuck_subscriber_gets_its_window_and_the_queue_bound_drops_are_counted_as_qos2() {
    let broker = small_broker(|_| {});
    let stuck = subscriber(broker.addr, "stuck", "q/two", QoS::ExactlyOnce);
    let mut publisher = Raw::connect(broker.addr, "pub2");
    let n = 300u64;
    for seq in 0..n {
        publisher.publish("q/two", &encode_payload(seq), QoS::ExactlyOnce, false);
    }
    let dropped = settled_sys_value(broker.addr, "$SYS/broker/ringcast/dropped/queue_full/qos2");
    assert_eq!(
        dropped,
        n - 32 - 100,
        "window 32 and queue 100 kept, the rest counted"
    );
    let seqs = drain(stuck, Duration::from_millis(500));
    assert_eq!(seqs, (0..32).collect::<Vec<_>>());
}

#[test]
fn an_offline_session_keeps_its_queue_bound_and_counts_what_it_drops() {
    let broker = small_broker(|_| {});
    let connect = common::connect_packet("sleeper", ringcast::protocol::Version::V311, false);
    let (mut sleeper, _) = Raw::connect_with(broker.addr, connect);
    sleeper.subscribe("q/offline", QoS::AtLeastOnce);
    sleeper.disconnect();
    let mut publisher = Raw::connect(broker.addr, "pub-off");
    for seq in 0..150u64 {
        publisher.publish("q/offline", &encode_payload(seq), QoS::AtLeastOnce, false);
        publisher.publish("q/offline", &encode_payload(seq), QoS::AtMostOnce, false);
    }
    let queued = settled_sys_value(broker.addr, "$SYS/broker/ringcast/dropped/queue_full/qos1");
    assert_eq!(queued, 50, "queue_messages_max = 100 of 150 kept");
    let offline = sys_value(broker.addr, "$SYS/broker/ringcast/dropped/offline/qos0");
    assert_eq!(
        offline,
        Some(150),
        "QoS 0 to an offline client is dropped and counted"
    );
    let connect = common::connect_packet("sleeper", ringcast::protocol::Version::V311, false);
    // The queued messages may arrive with the CONNACK: read them through the same client.
    let (mut raw, _) = Raw::connect_with(broker.addr, connect);
    let seqs: Vec<u64> = (0..100)
        .map(|_| u64::from_be_bytes(raw.recv_publish().payload[4..12].try_into().unwrap()))
        .collect();
    assert_eq!(
        seqs,
        (0..100).collect::<Vec<_>>(),
        "the first 100 come after reconnecting"
    );
    raw.expect_nothing();
}

/// A payload as `encode_publish` writes it: publisher 0, `seq`.
fn encode_payload(seq: u64) -> Vec<u8> {
    let mut p = 0u32.to_be_bytes().to_vec();
    p.extend_from_slice(&seq.to_be_bytes());
    p
}
