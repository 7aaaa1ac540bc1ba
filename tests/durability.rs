//! Durability over the real binary: persistent subscribers (some online, some offline), a
//! publisher sending numbered QoS 1 and QoS 2 messages and recording which were
//! acknowledged, and the broker killed with SIGKILL at random moments, restarted each time.
//! Every acknowledged message must reach every persistent subscriber (QoS 1 at least once,
//! QoS 2 exactly once) and the retained topic must hold its last acknowledged value (or a
//! later one that was stored but whose PUBACK the kill cut off).

mod common;

use common::{connect_packet, listening_addr, publish_packet, Raw};
use ringcast::protocol::{Ack, Packet, QoS, Version};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// SIGKILLs per mode.
const KILLS: usize = 20;
/// Persistent subscribers: (client id, QoS, online during the kills).
const SUBSCRIBERS: [(&str, QoS, bool); 4] = [
    ("sub-q2-online", QoS::ExactlyOnce, true),
    ("sub-q2-offline", QoS::ExactlyOnce, false),
    ("sub-q1-online", QoS::AtLeastOnce, true),
    ("sub-q1-offline", QoS::AtLeastOnce, false),
];

/// A small xorshift generator: random kill moments, reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ringcast-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A broker process, killed when dropped (also when a test fails half way).
struct Running(Child);

impl Running {
    fn kill(&mut self) {
        let _ = (self.0.kill(), self.0.wait());
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts the binary on `dir` with `fsync`; returns it and its address.
fn start(dir: &Path, fsync: &str) -> (Running, SocketAddr) {
    let config = dir.join("ringcast.toml");
    // The offline subscribers must be owed every message: a queue bound reached is a counted
    // drop by policy, not a loss, and a fast run publishes more than the default 1,000.
    let limits = "[limits]\nqueue_messages_max = 1000000\n";
    std::fs::write(
        &config,
        format!("{limits}[persistence]\nfsync = \"{fsync}\"\n"),
    )
    .unwrap();
    let mut child = common::ringcast_command(2)
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .stderr(Stdio::inherit())
        .spawn()
        .expect("ringcast starts");
    let stdout = child.stdout.take().unwrap();
    let mut child = Running(child);
    let Some(addr) = listening_addr(stdout, Duration::from_secs(20)) else {
        // Its reason is on stderr (inherited); the exit status says whether it gave up.
        let status = common::wait_exit(&mut child.0, Duration::from_secs(5));
        panic!(
            "ringcast did not listen within 20 s on {}: {status:?}",
            dir.display()
        );
    };
    (child, addr)
}

/// A subscriber's client side, kept across connections as a client library keeps its
/// session: QoS 2 ids received and not yet released, so a re-sent PUBLISH is not delivered
/// twice; what was delivered, by message number.
#[derive(Default)]
struct Received {
    awaiting_pubrel: HashSet<u16>,
    counts: HashMap<u64, u32>,
    marker: bool,
}

/// Connects subscriber `id` (persistent session) and subscribes to `crash/#`.
fn connect_subscriber(addr: SocketAddr, id: &str, qos: QoS) -> Option<Raw> {
    connect_to(addr, id, qos, "crash/#")
}

/// Connects subscriber `id` (persistent session) and subscribes to `filter`.
fn connect_to(addr: SocketAddr, id: &str, qos: QoS, filter: &str) -> Option<Raw> {
    let mut raw = Raw::open(addr, Version::V311);
    raw.send(&Packet::Connect(Box::new(connect_packet(
        id,
        Version::V311,
        false,
    ))));
    match raw.recv_within(Duration::from_secs(5)) {
        Ok(Packet::ConnAck(_)) => {}
        _ => return None,
    }
    raw.send(&Packet::Subscribe(ringcast::protocol::Subscribe {
        pkid: 1,
        filters: vec![ringcast::protocol::SubscribeFilter {
            filter: ringcast::protocol::MqttString::from_str_checked(filter).unwrap(),
            options: ringcast::protocol::SubscriptionOptions {
                qos,
                ..Default::default()
            },
        }],
        properties: Default::default(),
    }));
    Some(raw)
}

/// Reads and acknowledges until the connection drops or the marker comes (or `stop`).
fn consume(raw: &mut Raw, received: &Mutex<Received>, stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        let packet = match raw.recv_within(Duration::from_millis(200)) {
            Ok(packet) => packet,
            Err(e) if format!("{e:?}").contains("Timeout") => continue,
            Err(_) => return,
        };
        let mut r = received.lock().unwrap();
        match packet {
            Packet::Publish(p) => {
                let ack = Ack {
                    pkid: p.pkid,
                    ..Ack::default()
                };
                let is_new = p.qos != QoS::ExactlyOnce || r.awaiting_pubrel.insert(p.pkid);
                if is_new {
                    let text = String::from_utf8_lossy(&p.payload).to_string();
                    if text == "marker" {
                        r.marker = true;
                    } else if let Ok(n) = text.parse::<u64>() {
                        *r.counts.entry(n).or_default() += 1;
                    }
                }
                match p.qos {
                    QoS::AtMostOnce => {}
                    QoS::AtLeastOnce => raw.send(&Packet::PubAck(ack)),
                    QoS::ExactlyOnce => raw.send(&Packet::PubRec(ack)),
                }
            }
            Packet::PubRel(a) => {
                r.awaiting_pubrel.remove(&a.pkid);
                raw.send(&Packet::PubComp(a));
            }
            _ => {}
        }
        if r.marker {
            return;
        }
    }
}

/// What the publisher knows: each message number with its QoS, whether acknowledged.
#[derive(Default)]
struct Sent {
    acked: Vec<(u64, QoS)>,
    retained_acked: Option<u64>,
    retained_tried: Vec<u64>,
}

/// Publishes numbered messages until the connection drops; every third one also sets the
/// retained topic. Records what was acknowledged (PUBACK, PUBREC).
fn publish_until_killed(addr: SocketAddr, next: &mut u64, sent: &mut Sent) {
    let Some((mut raw, _)) = std::panic::catch_unwind(|| {
        Raw::connect_with(addr, connect_packet("publisher", Version::V311, true))
    })
    .ok() else {
        return;
    };
    loop {
        let n = *next;
        *next += 1;
        let qos = if n % 2 == 0 {
            QoS::AtLeastOnce
        } else {
            QoS::ExactlyOnce
        };
        let retain = n % 3 == 0;
        let topic = if retain { "state/retained" } else { "crash/n" };
        let pkid = (n % 60_000) as u16 + 1;
        if retain {
            sent.retained_tried.push(n);
        }
        raw.send(&publish_packet(
            topic,
            n.to_string().as_bytes(),
            qos,
            retain,
            pkid,
        ));
        let acked = match raw.recv_within(Duration::from_secs(10)) {
            Ok(Packet::PubAck(a)) | Ok(Packet::PubRec(a)) => a.pkid == pkid,
            _ => false,
        };
        if !acked {
            return;
        }
        if retain {
            sent.retained_acked = Some(n);
        } else {
            sent.acked.push((n, qos));
        }
        if qos == QoS::ExactlyOnce {
            raw.send(&Packet::PubRel(Ack {
                pkid,
                ..Ack::default()
            }));
            if !matches!(
                raw.recv_within(Duration::from_secs(10)),
                Ok(Packet::PubComp(_))
            ) {
                return;
            }
        }
    }
}

/// Publishes (`publish_until_killed`) while the broker is SIGKILLed at a random moment;
/// returns once it is dead.
fn publish_until_random_kill(
    child: &mut Running,
    addr: SocketAddr,
    rng: &mut Rng,
    next: &mut u64,
    sent: &mut Sent,
) {
    let pid = child.0.id() as libc::pid_t;
    let after = Duration::from_millis(20 + rng.below(150));
    let killer = std::thread::spawn(move || {
        std::thread::sleep(after);
        // SAFETY: kill on our own child's pid, not reaped yet.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    });
    publish_until_killed(addr, next, sent);
    killer.join().unwrap();
    child.0.wait().unwrap();
}

type Shared = Arc<Mutex<Received>>;

fn crash_run(fsync: &str) {
    let dir = temp_dir(&format!("durability-{fsync}"));
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("{fsync}: seed {seed}");
    let mut rng = Rng(seed | 1);
    let received: Vec<Shared> = SUBSCRIBERS.iter().map(|_| Shared::default()).collect();
    let mut sent = Sent::default();
    let mut next = 1u64;
    // Sessions and subscriptions first, then every subscriber offline but the online ones.
    let (mut child, mut addr) = start(&dir, fsync);
    for (id, qos, _) in SUBSCRIBERS {
        let mut raw = connect_subscriber(addr, id, qos).expect("subscriber connects");
        assert!(matches!(raw.recv(), Packet::SubAck(_)));
        raw.disconnect();
    }
    for _ in 0..KILLS {
        let stop = Arc::new(AtomicBool::new(false));
        let online: Vec<_> = SUBSCRIBERS
            .iter()
            .zip(&received)
            .filter(|((_, _, online), _)| *online)
            .map(|((id, qos, _), r)| {
                let (r, stop, id, qos) = (r.clone(), stop.clone(), *id, *qos);
                std::thread::spawn(move || {
                    if let Some(mut raw) = connect_subscriber(addr, id, qos) {
                        consume(&mut raw, &r, &stop);
                    }
                })
            })
            .collect();
        publish_until_random_kill(&mut child, addr, &mut rng, &mut next, &mut sent);
        stop.store(true, Ordering::SeqCst);
        for t in online {
            t.join().unwrap();
        }
        (child, addr) = start(&dir, fsync);
    }
    child.kill();
    check(&dir, fsync, &received, &sent);
}

fn check(dir: &Path, fsync: &str, received: &[Shared], sent: &Sent) {
    let (mut child, addr) = start(dir, fsync);
    let stop = AtomicBool::new(false);
    // Everything queued reaches each subscriber before the marker published now.
    let mut subs: Vec<Raw> = SUBSCRIBERS
        .iter()
        .map(|(id, qos, _)| connect_subscriber(addr, id, *qos).expect("subscriber reconnects"))
        .collect();
    let mut publisher = Raw::connect_with(addr, connect_packet("publisher", Version::V311, true)).0;
    publisher.publish("crash/marker", b"marker", QoS::AtLeastOnce, false);
    for (raw, r) in subs.iter_mut().zip(received) {
        consume(raw, r, &stop);
        assert!(
            r.lock().unwrap().marker,
            "{fsync}: the marker did not arrive"
        );
    }
    for ((id, sub_qos, _), r) in SUBSCRIBERS.iter().zip(received) {
        let r = r.lock().unwrap();
        for &(n, qos) in &sent.acked {
            let count = r.counts.get(&n).copied().unwrap_or(0);
            assert!(
                count >= 1,
                "{fsync}: {id} never got acknowledged message {n}"
            );
            if qos == QoS::ExactlyOnce && *sub_qos == QoS::ExactlyOnce {
                assert_eq!(
                    count, 1,
                    "{fsync}: {id} got QoS 2 message {n} {count} times"
                );
            }
        }
    }
    let mut reader = Raw::connect(addr, "retained-reader");
    reader.subscribe("state/#", QoS::AtLeastOnce);
    if let Some(last) = sent.retained_acked {
        let got = reader.recv_publish();
        let value: u64 = String::from_utf8_lossy(&got.payload).parse().unwrap();
        assert!(
            value == last || (value > last && sent.retained_tried.contains(&value)),
            "{fsync}: retained holds {value}, last acknowledged {last}"
        );
    }
    eprintln!(
        "{fsync}: {} acknowledged messages, {KILLS} kills, all delivered",
        sent.acked.len()
    );
    child.kill();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn kill_9_loses_nothing_acknowledged_with_fsync_always() {
    crash_run("always");
}

#[test]
fn kill_9_loses_nothing_acknowledged_with_fsync_interval() {
    crash_run("interval");
}

#[test]
fn a_second_broker_on_the_same_directory_is_refused_in_one_sentence() {
    let dir = temp_dir("lock");
    let (mut first, _) = start(&dir, "interval");
    let output = Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args(["--listen", "127.0.0.1:0", "--shards", "1", "--data-dir"])
        .arg(dir.join("data"))
        .output()
        .expect("second broker runs");
    first.kill();
    assert!(!output.status.success());
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(
        text.contains("another broker") && text.contains("data directory"),
        "{text}"
    );
    assert_eq!(text.trim().lines().count(), 1, "{text}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_log_cut_at_random_offsets_recovers_to_the_last_good_record() {
    let dir = temp_dir("torn");
    let (mut child, addr) = start(&dir, "interval");
    let mut publisher = Raw::connect(addr, "writer");
    for n in 0..40 {
        let topic = format!("torn/{n}");
        publisher.publish(&topic, n.to_string().as_bytes(), QoS::AtLeastOnce, true);
    }
    child.kill();
    let logs: Vec<PathBuf> = std::fs::read_dir(dir.join("data"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for _ in 0..5 {
        for log in &logs {
            let len = std::fs::metadata(log).unwrap().len();
            if len > 0 {
                let file = std::fs::OpenOptions::new().write(true).open(log).unwrap();
                file.set_len(rng.below(len)).unwrap();
            }
        }
        // Start-up cuts the torn tail and serves again.
        let (mut child, addr) = start(&dir, "interval");
        let mut reader = Raw::connect(addr, "reader");
        reader.subscribe("torn/#", QoS::AtMostOnce);
        child.kill();
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Payload bytes per message in the full-disk test.
const FULL_PAYLOAD_BYTES: usize = 4096;
/// Messages sent against the full disk: 1.6 MB against a 512 KiB file size limit.
const FULL_MESSAGES: u16 = 400;
/// Messages sent once the disk is known full (all refused).
const REFUSED_MESSAGES: u16 = 20;

fn set_file_size_limit(pid: libc::pid_t, bytes: u64) {
    let limit = libc::rlimit {
        rlim_cur: bytes,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: prlimit reads one rlimit we own; the pid is our child's.
    let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_FSIZE, &limit, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
}

#[test]
fn a_full_disk_refuses_with_quota_exceeded_then_recovers_without_losing() {
    use std::os::unix::process::CommandExt;
    let dir = temp_dir("full");
    let mut command = common::ringcast_command(1);
    command
        .arg("--data-dir")
        .arg(dir.join("data"))
        .stderr(Stdio::inherit());
    // SAFETY: only async-signal-safe calls between fork and exec: a file size limit, as a
    // small disk would set one, and SIGXFSZ ignored so a write past it fails with EFBIG.
    unsafe {
        command.pre_exec(|| {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let limit = libc::rlimit {
                rlim_cur: 512 << 10,
                rlim_max: libc::RLIM_INFINITY,
            };
            libc::setrlimit(libc::RLIMIT_FSIZE, &limit);
            Ok(())
        });
    }
    let mut child = command.spawn().expect("ringcast starts");
    let stdout = child.stdout.take().unwrap();
    let pid = child.id() as libc::pid_t;
    let _child = Running(child);
    // Its log, line by line: the address, then the first failing write.
    let (lines_tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines_tx.send(line);
        }
    });
    let wait_for = |needle: &str| loop {
        let line = lines
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("the broker never logged {needle:?}"));
        if let Some((_, rest)) = line.split_once(needle) {
            return rest.to_string();
        }
    };
    let rest = wait_for("ringcast listening on ");
    let end = rest
        .find(|c: char| !(c.is_ascii_hexdigit() || ".:[]".contains(c)))
        .unwrap_or(rest.len());
    let addr: SocketAddr = rest[..end].parse().unwrap();
    let keeper = || {
        let mut connect = connect_packet("keeper", Version::V5, false);
        connect.properties.session_expiry_interval = Some(3600);
        connect
    };
    let (mut sub, _) = Raw::connect_with(addr, keeper());
    sub.subscribe("full/#", QoS::AtLeastOnce);
    sub.disconnect();
    let (mut publisher, _) = Raw::connect_with(addr, connect_packet("filler", Version::V5, true));
    let padding = "x".repeat(FULL_PAYLOAD_BYTES);
    for pkid in 1..=FULL_MESSAGES {
        let payload = format!("{pkid}:{padding}");
        publisher.send(&publish_packet(
            "full/t",
            payload.as_bytes(),
            QoS::AtLeastOnce,
            false,
            pkid,
        ));
    }
    // Once the broker meets the limit, make room, as an operator freeing space would; a
    // PUBLISH read after that and before the store retries is refused.
    wait_for("store write failed");
    // While the disk refuses, new QoS 1 messages are refused (their PUBACKs leave behind the
    // ones still waiting for the disk).
    for pkid in FULL_MESSAGES + 1..=FULL_MESSAGES + REFUSED_MESSAGES {
        let payload = format!("{pkid}:{padding}");
        publisher.send(&publish_packet(
            "full/t",
            payload.as_bytes(),
            QoS::AtLeastOnce,
            false,
            pkid,
        ));
    }
    std::thread::sleep(Duration::from_millis(200));
    set_file_size_limit(pid, libc::RLIM_INFINITY);
    let (mut stored, mut refused) = (HashSet::new(), HashSet::new());
    for _ in 1..=FULL_MESSAGES + REFUSED_MESSAGES {
        match publisher.recv_within(Duration::from_secs(20)) {
            Ok(Packet::PubAck(a)) if a.reason.0 == 0 => {
                stored.insert(a.pkid);
            }
            Ok(Packet::PubAck(a)) => {
                assert_eq!(a.reason.0, 0x97, "refused as Quota exceeded");
                refused.insert(a.pkid);
            }
            other => panic!("expected a PUBACK, got {other:?}"),
        }
    }
    let late = FULL_MESSAGES + 1..=FULL_MESSAGES + REFUSED_MESSAGES;
    assert!(
        late.clone().all(|pkid| refused.contains(&pkid)),
        "a message sent while the disk refused was not refused"
    );
    assert!(!stored.is_empty(), "nothing was stored before the limit");
    // After recovery new messages are taken again.
    publisher.publish("full/t", b"after:recovery", QoS::AtLeastOnce, false);
    let (mut sub, connack) = Raw::connect_with(addr, keeper());
    assert!(connack.session_present);
    let mut got = HashSet::new();
    while got.len() < stored.len() + 1 {
        let p = sub.recv_publish();
        let text = String::from_utf8_lossy(&p.payload).to_string();
        let head = text.split(':').next().unwrap_or_default().to_string();
        got.insert(head.parse::<u16>().unwrap_or(0));
    }
    for pkid in &stored {
        assert!(got.contains(pkid), "acknowledged message {pkid} was lost");
    }
    eprintln!(
        "full disk: {} stored, {} refused with 0x97",
        stored.len(),
        refused.len()
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// The watcher (`subscribe_watcher`) comes back and gets the device's will.
fn expect_will(addr: SocketAddr, payload: &[u8]) {
    let (mut watcher, connack) =
        Raw::connect_with(addr, connect_packet("watcher", Version::V311, false));
    assert!(connack.session_present);
    let will = watcher.recv_publish();
    assert_eq!(will.topic.as_str(), "wills/device");
    assert_eq!(&will.payload[..], payload);
}

/// A persistent subscriber to `wills/#`, offline.
fn subscribe_watcher(addr: SocketAddr) {
    let mut watcher = Raw::connect_with(addr, connect_packet("watcher", Version::V311, false)).0;
    watcher.subscribe("wills/#", QoS::AtLeastOnce);
    watcher.disconnect();
}

#[test]
fn a_will_cut_off_by_a_crash_is_published_after_the_restart() {
    let dir = temp_dir("will");
    let (mut child, addr) = start(&dir, "interval");
    subscribe_watcher(addr);
    let mut connect = connect_packet("device", Version::V311, false);
    connect.will = Some(ringcast::protocol::Will {
        topic: ringcast::protocol::MqttString::from_str_checked("wills/device").unwrap(),
        payload: bytes::Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Default::default(),
    });
    let (_device, _) = Raw::connect_with(addr, connect);
    child.kill(); // SIGKILL while the device is connected
    let (_child, addr) = start(&dir, "interval");
    expect_will(addr, b"gone");
    let _ = std::fs::remove_dir_all(dir);
}

/// Members of one shared subscription, persistent and offline while the broker is killed;
/// they connect round-robin over the 2 shards, so most messages are stored by a shard other
/// than the publisher's.
const MEMBERS: [&str; 4] = ["member-0", "member-1", "member-2", "member-3"];
const SHARE: &str = "$share/workers/crash/#";

/// A message delivered to a `$share` member on another shard is acknowledged to the
/// publisher only once that shard stored it: after every kill, every acknowledged message
/// reaches one member of the group.
#[test]
fn kill_9_loses_no_acknowledged_message_of_a_shared_subscription_across_shards() {
    let fsync = "interval";
    let dir = temp_dir("durability-share");
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("share: seed {seed}");
    let mut rng = Rng(seed | 1);
    let mut sent = Sent::default();
    let mut next = 1u64;
    let (mut child, mut addr) = start(&dir, fsync);
    for id in MEMBERS {
        let mut raw = connect_to(addr, id, QoS::AtLeastOnce, SHARE).expect("member connects");
        assert!(matches!(raw.recv(), Packet::SubAck(_)));
        raw.disconnect();
    }
    for _ in 0..KILLS {
        publish_until_random_kill(&mut child, addr, &mut rng, &mut next, &mut sent);
        (child, addr) = start(&dir, fsync);
    }
    // Every member reads what its session holds; together they hold every acknowledged one.
    let stop = Arc::new(AtomicBool::new(false));
    let received: Vec<Shared> = MEMBERS.iter().map(|_| Shared::default()).collect();
    let readers: Vec<_> = MEMBERS
        .iter()
        .zip(&received)
        .map(|(id, r)| {
            let (r, stop, id) = (r.clone(), stop.clone(), *id);
            std::thread::spawn(move || {
                let mut raw = connect_to(addr, id, QoS::AtLeastOnce, SHARE).expect("reconnects");
                consume(&mut raw, &r, &stop);
            })
        })
        .collect();
    let missing = |received: &[Shared]| -> Vec<u64> {
        let got: HashSet<u64> = received
            .iter()
            .flat_map(|r| r.lock().unwrap().counts.keys().copied().collect::<Vec<_>>())
            .collect();
        sent.acked
            .iter()
            .map(|(n, _)| *n)
            .filter(|n| !got.contains(n))
            .collect()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !missing(&received).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::SeqCst);
    readers.into_iter().for_each(|t| t.join().unwrap());
    let lost = missing(&received);
    assert!(lost.is_empty(), "acknowledged, reached no member: {lost:?}");
    assert!(!sent.acked.is_empty(), "the publisher got acknowledgements");
    eprintln!(
        "share: {} acknowledged messages, {KILLS} kills, all delivered",
        sent.acked.len()
    );
    child.kill();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A will whose Will Delay Interval was running when the broker was SIGKILLed is stored with
/// its due time and published after the restart.
#[test]
fn a_will_waiting_for_its_delay_survives_a_kill_9() {
    let dir = temp_dir("will-delay");
    let (mut child, addr) = start(&dir, "interval");
    subscribe_watcher(addr);
    let mut connect = connect_packet("device", Version::V5, false);
    connect.properties.session_expiry_interval = Some(300);
    let mut properties = ringcast::protocol::Props::default();
    properties.will_delay_interval = Some(8);
    connect.will = Some(ringcast::protocol::Will {
        topic: ringcast::protocol::MqttString::from_str_checked("wills/device").unwrap(),
        payload: bytes::Bytes::from_static(b"late"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties,
    });
    let (device, _) = Raw::connect_with(addr, connect);
    // The connection ends without DISCONNECT: the will's delay starts.
    device.close_without_disconnect();
    // Records nobody waits for are written every `fsync_interval_ms` (1 s): past that, the
    // store holds that the connection ended.
    std::thread::sleep(Duration::from_millis(2000));
    child.kill(); // SIGKILL during the delay
    let (_child, addr) = start(&dir, "interval");
    expect_will(addr, b"late");
    let _ = std::fs::remove_dir_all(dir);
}
