//! Logins, the ACL and their reload, black-box over real sockets.
//!
//! - Password files written by `mosquitto_passwd` and by `ringcast passwd`: the CONNACK codes
//!   for good and bad passwords, unknown users and anonymous clients are those the real
//!   mosquitto 2.0 broker answers for the same file, in 3.1.1 and 5.0.
//! - The ACL on PUBLISH (5.0 refuses with 0x87, 3.1.1 acknowledges and drops), on SUBSCRIBE,
//!   on wills, and on `$SYS`, which no client writes.
//! - SIGHUP on the real binary: a new user can log in; a broken ACL keeps the old one.
//! - The CONNECT deadline holds against a client that drips its CONNECT byte by byte.
//!
//! A missing mosquitto tool skips its test with a note, unless `RINGCAST_REQUIRE_INTEROP=1`
//! (set by CI), which turns it into a failure. Every read, subprocess and wait is bounded;
//! absence is proven by a later message on the same path arriving first, where there is one.

mod common;

use common::{connect_packet, publish_packet, Broker, NoPacket, Raw, WAIT};
use ringcast::protocol::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long one short-lived subprocess may run.
const PROC_LIMIT: Duration = Duration::from_secs(10);
/// How long a broker process may take to listen, or to log a reload.
const LOG_LIMIT: Duration = Duration::from_secs(10);

const MOSQUITTO: &str = "/usr/sbin/mosquitto";
const MOSQUITTO_PASSWD: &str = "/usr/bin/mosquitto_passwd";

// ---------------------------------------------------------------------------------------------
// Files, subprocesses and their output.

/// A fresh folder under the system's temporary folder, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let unique = format!(
            "ringcast-security-{name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(unique);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the test folder");
        TempDir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Writes `text` to `name` in the folder; returns its path.
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, text).expect("write a test file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// True when mosquitto's broker and `mosquitto_passwd` are here. When they are not: fails the
/// test if `RINGCAST_REQUIRE_INTEROP=1`, else prints a note and the caller returns early.
fn mosquitto_ready() -> bool {
    let missing: Vec<&str> = [MOSQUITTO, MOSQUITTO_PASSWD]
        .into_iter()
        // Some print usage and exit non-zero on --help; only "not found" matters here.
        .filter(|tool| Command::new(tool).arg("--help").output().is_err())
        .collect();
    if missing.is_empty() {
        return true;
    }
    let message = format!(
        "mosquitto tools missing: {}. Install with `apt-get install mosquitto`",
        missing.join(", ")
    );
    common::tool_missing(&message)
}

/// Runs `command` to its end and fails the test, showing its output, unless it exits 0; kills
/// it after `PROC_LIMIT`.
fn run_ok(mut command: Command) -> Output {
    let shown = format!("{command:?}");
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {shown}: {e}"));
    // Small outputs only: the pipes hold them until the child has exited.
    let finished = common::wait_exit(&mut child, PROC_LIMIT).is_some();
    if !finished {
        let _ = child.kill();
    }
    let output = child.wait_with_output().expect("output of a child");
    assert!(
        finished && output.status.success(),
        "{shown} {}:\n{}\n--- stdout ---\n{}--- stderr ---\n{}",
        if finished {
            "failed"
        } else {
            "ran over its time"
        },
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// `ringcast passwd ARGS…`, the binary cargo built for this test.
fn ringcast_passwd(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ringcast"));
    command.arg("passwd").args(args);
    command
}

/// The lines a child writes to one pipe, gathered by a thread as they come.
#[derive(Clone)]
struct Lines(Arc<(Mutex<Gathered>, Condvar)>);

#[derive(Default)]
struct Gathered {
    lines: Vec<String>,
    is_closed: bool,
}

impl Lines {
    fn gather(from: impl Read + Send + 'static) -> Lines {
        let lines = Lines(Arc::default());
        let shared = lines.clone();
        std::thread::spawn(move || {
            let mut from = BufReader::new(from);
            let mut bytes = Vec::new();
            loop {
                bytes.clear();
                let read = from.read_until(b'\n', &mut bytes);
                let (gathered, grew) = &*shared.0;
                let mut gathered = gathered.lock().unwrap();
                match read {
                    Ok(n) if n > 0 => {
                        let line = String::from_utf8_lossy(&bytes);
                        gathered.lines.push(line.trim_end().to_owned());
                    }
                    // The broker's threads share this process; their signals interrupt reads.
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    _ => gathered.is_closed = true,
                }
                let is_closed = gathered.is_closed;
                drop(gathered);
                grew.notify_all();
                if is_closed {
                    return;
                }
            }
        });
        lines
    }

    /// How many lines came so far.
    fn len(&self) -> usize {
        self.0 .0.lock().unwrap().lines.len()
    }

    /// The first line from line `from` on that contains `needle`, waiting up to `limit`; None
    /// if the pipe closed or the time ran out first.
    fn wait_for(&self, needle: &str, from: usize, limit: Duration) -> Option<String> {
        let deadline = Instant::now() + limit;
        let (gathered, grew) = &*self.0;
        let mut gathered = gathered.lock().unwrap();
        loop {
            let found = gathered
                .lines
                .iter()
                .skip(from)
                .find(|l| l.contains(needle));
            if let Some(line) = found {
                return Some(line.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if gathered.is_closed || left.is_zero() {
                return None;
            }
            gathered = grew.wait_timeout(gathered, left).unwrap().0;
        }
    }

    fn text(&self) -> String {
        self.0 .0.lock().unwrap().lines.join("\n")
    }
}

/// A broker process; killed when dropped, panicking or not.
struct Process {
    child: Child,
    output: Lines,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// The brokers and the raw client.

/// A loopback port that was free a moment ago.
fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

/// mosquitto on a loopback port, requiring a password from `password_file`.
fn start_mosquitto(dir: &TempDir, password_file: &Path) -> (Process, SocketAddr) {
    let port = free_port();
    // `user root`: run as root, mosquitto would switch to the `mosquitto` user before it reads
    // the password file, which `ringcast passwd` makes readable by its owner only.
    let conf = dir.write(
        "mosquitto.conf",
        &format!(
            "listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {}\nuser root\n\
             persistence false\nlog_dest stderr\n",
            password_file.display()
        ),
    );
    let mut child = Command::new(MOSQUITTO)
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        // Its log, unbuffered there (stdout to a pipe would hold the lines back).
        .stderr(Stdio::piped())
        .spawn()
        .expect("start mosquitto");
    let output = Lines::gather(child.stderr.take().expect("stderr was piped"));
    let process = Process { child, output };
    // mosquitto says it runs once its listeners are open.
    if process.output.wait_for(" running", 0, LOG_LIMIT).is_none() {
        panic!("mosquitto did not start:\n{}", process.output.text());
    }
    (process, SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
}

/// The `ringcast` binary with `config` (TOML) on a loopback port the OS picks, logging at info.
fn start_ringcast(dir: &TempDir, config: &str) -> (Process, SocketAddr) {
    let path = dir.write("ringcast.toml", config);
    let mut child = common::ringcast_command(1)
        .arg("--data-dir")
        .arg(common::fresh_data_dir())
        .arg("--config")
        .arg(&path)
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ringcast");
    let output = Lines::gather(child.stdout.take().expect("stdout was piped"));
    let errors = Lines::gather(child.stderr.take().expect("stderr was piped"));
    let process = Process { child, output };
    let Some(line) = process
        .output
        .wait_for("ringcast listening on ", 0, LOG_LIMIT)
    else {
        panic!(
            "ringcast did not start:\n{}\n{}",
            process.output.text(),
            errors.text()
        );
    };
    let (_, rest) = line.split_once("ringcast listening on ").unwrap();
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || ".:".contains(c)))
        .unwrap_or(rest.len());
    let addr = rest[..end].parse().expect("the address ringcast logs");
    (process, addr)
}

/// A CONNECT as `username` / `password` (either may be missing).
fn login(client_id: &str, v: Version, username: Option<&str>, password: Option<&str>) -> Connect {
    let mut connect = connect_packet(client_id, v, true);
    connect.username = username.map(|u| MqttString::from_str_checked(u).unwrap());
    connect.password = password.map(|p| bytes::Bytes::copy_from_slice(p.as_bytes()));
    connect
}

/// Sends `connect` on a new connection and returns the CONNACK's code, and the connection
/// when it was accepted.
fn connack(addr: SocketAddr, connect: Connect) -> (ReasonCode, Option<Raw>) {
    let mut raw = Raw::open(addr, connect.version);
    raw.send(&Packet::Connect(Box::new(connect)));
    match raw.recv() {
        Packet::ConnAck(ack) if ack.code == ReasonCode::SUCCESS => (ack.code, Some(raw)),
        Packet::ConnAck(ack) => {
            // A refused client is closed right after its CONNACK.
            assert_eq!(raw.recv_within(WAIT), Err(NoPacket::Closed), "{ack:?}");
            (ack.code, None)
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

/// Connects as `username` with `password`; the CONNACK must accept.
fn log_in(addr: SocketAddr, id: &str, v: Version, user: &str, password: Option<&str>) -> Raw {
    match connack(addr, login(id, v, Some(user), password)) {
        (_, Some(raw)) => raw,
        (code, None) => panic!("{user} was refused: {code:?}"),
    }
}

/// The SUBSCRIBE refusal for a filter the ACL lets the client read nothing of.
fn subscribe_refused(v: Version) -> ReasonCode {
    match v {
        Version::V311 => ReasonCode(0x80),
        Version::V5 => ReasonCode::NOT_AUTHORIZED,
    }
}

/// Publishes at QoS 1 and returns the PUBACK's reason code.
fn publish_qos1(client: &mut Raw, topic: &str, payload: &[u8], pkid: u16) -> ReasonCode {
    client.send(&publish_packet(
        topic,
        payload,
        QoS::AtLeastOnce,
        false,
        pkid,
    ));
    match client.recv() {
        Packet::PubAck(ack) if ack.pkid == pkid => ack.reason,
        other => panic!("expected PUBACK {pkid} for {topic}, got {other:?}"),
    }
}

/// The next PUBLISH `client` receives: its topic and payload.
fn next_message(client: &mut Raw) -> (String, Vec<u8>) {
    let p = client.recv_publish();
    (p.topic.as_str().to_owned(), p.payload.to_vec())
}

fn message(topic: &str, payload: &[u8]) -> (String, Vec<u8>) {
    (topic.to_owned(), payload.to_vec())
}

// ---------------------------------------------------------------------------------------------
// 5. Passwords: ringcast answers what mosquitto answers.

/// The logins tried against both brokers: (case, username, password).
const LOGINS: [(&str, Option<&str>, Option<&str>); 5] = [
    ("the right password", Some("alice"), Some("s3cret pw")),
    ("a wrong password", Some("alice"), Some("s3cret pW")),
    ("no password", Some("alice"), None),
    ("an unknown user", Some("mallory"), Some("s3cret pw")),
    ("no username (anonymous)", None, None),
];

/// Tries every login on ringcast and on mosquitto, both reading `password_file` and refusing
/// anonymous clients, in 3.1.1 and 5.0: the CONNACK codes agree, and are 0x00 for the right
/// password, 0x05 (3.1.1) / 0x87 (5.0) otherwise.
fn same_connack_codes_as_mosquitto(dir: &TempDir, password_file: &Path) {
    let ringcast = Broker::start_with(1, |config| {
        config.password_file = Some(password_file.to_owned());
        config.allow_anonymous = Some(false);
    });
    let (mosquitto, mosquitto_addr) = start_mosquitto(dir, password_file);
    for v in [Version::V311, Version::V5] {
        for (case, user, password) in LOGINS {
            let context = format!("{case}, MQTT {v:?}");
            let theirs = connack(mosquitto_addr, login("cmp", v, user, password)).0;
            let ours = connack(ringcast.addr, login("cmp", v, user, password)).0;
            assert_eq!(
                ours,
                theirs,
                "{context}: ringcast and mosquitto differ\n{}",
                mosquitto.output.text()
            );
            let expected = match (user == Some("alice") && password == Some("s3cret pw"), v) {
                (true, _) => ReasonCode::SUCCESS,
                (false, Version::V311) => ReasonCode(0x05),
                (false, Version::V5) => ReasonCode::NOT_AUTHORIZED,
            };
            assert_eq!(ours, expected, "{context}");
        }
    }
}

#[test]
fn logins_from_a_mosquitto_passwd_file_get_the_connack_codes_mosquitto_gives() {
    if !mosquitto_ready() {
        return;
    }
    let dir = TempDir::new("mosquitto-passwd");
    let file = dir.path("passwd");
    let mut command = Command::new(MOSQUITTO_PASSWD);
    command
        .arg("-c")
        .arg("-b")
        .arg(&file)
        .args(["alice", "s3cret pw"]);
    run_ok(command);
    same_connack_codes_as_mosquitto(&dir, &file);
}

#[test]
fn logins_from_a_ringcast_passwd_file_get_the_connack_codes_mosquitto_gives() {
    if !mosquitto_ready() {
        return;
    }
    let dir = TempDir::new("ringcast-passwd");
    let file = dir.path("passwd");
    let path = file.to_str().expect("a UTF-8 path");
    run_ok(ringcast_passwd(&["-c", "-b", path, "alice", "s3cret pw"]));
    same_connack_codes_as_mosquitto(&dir, &file);
}

// ---------------------------------------------------------------------------------------------
// 6. The ACL.

/// alice may read and write `a/#` but for `a/secret`, and read `r/#`; the watcher reads and
/// writes everything, `$SYS` included as far as the file goes.
const ACL: &str = "\
user alice
topic readwrite a/#
topic read r/#
topic deny a/secret

user watcher
topic readwrite #
topic readwrite $SYS/#
";

/// A broker on one shard (so messages from different connections reach the watcher in the
/// order they were sent, and a later one can prove an earlier one was dropped) with `ACL`,
/// and no `$SYS` reports of its own.
fn acl_broker(dir: &TempDir) -> Broker {
    let acl = dir.write("acl", ACL);
    Broker::start_with(1, |config| {
        config.acl_file = Some(acl);
        config.sys_interval_secs = 0;
    })
}

/// PUBLISH to a topic the ACL does not let the client write: 5.0 answers PUBACK 0x87, 3.1.1
/// acknowledges (0x00) as mosquitto does; either way nobody receives it, not even a subscriber
/// with every right. A PUBLISH to `$SYS/x` is refused even to a client the file lets write it.
#[test]
fn a_denied_publish_is_refused_in_5_acknowledged_in_3_1_1_and_never_delivered() {
    let dir = TempDir::new("acl-publish");
    let broker = acl_broker(&dir);
    for v in [Version::V311, Version::V5] {
        let denied = match v {
            Version::V311 => ReasonCode::SUCCESS,
            Version::V5 => ReasonCode::NOT_AUTHORIZED,
        };
        let mut watcher = log_in(broker.addr, "watcher", v, "watcher", None);
        for filter in ["#", "$SYS/#"] {
            assert_eq!(watcher.subscribe(filter, QoS::AtLeastOnce), [ReasonCode(1)]);
        }
        let mut alice = log_in(broker.addr, "alice", v, "alice", None);
        assert_eq!(
            publish_qos1(&mut alice, "r/x", b"read only", 1),
            denied,
            "{v:?}"
        );
        assert_eq!(
            publish_qos1(&mut alice, "a/secret", b"denied", 2),
            denied,
            "{v:?}"
        );
        alice.send(&publish_packet(
            "r/x",
            b"read only, qos 0",
            QoS::AtMostOnce,
            false,
            0,
        ));
        let allowed = publish_qos1(&mut alice, "a/ok", b"allowed", 3);
        assert_eq!(allowed, ReasonCode::SUCCESS, "{v:?}");
        // Sent after the denied ones on the same connection, so it would come after them.
        assert_eq!(
            next_message(&mut watcher),
            message("a/ok", b"allowed"),
            "{v:?}"
        );

        // The watcher's own publisher, whose file lets it write `$SYS/#`: the broker does not.
        let mut forger = log_in(broker.addr, "forger", v, "watcher", None);
        let sys = publish_qos1(&mut forger, "$SYS/x", b"forged", 4);
        assert_eq!(sys, denied, "{v:?}: $SYS is the broker's");
        forger.send(&publish_packet(
            "$SYS/x",
            b"forged, qos 0",
            QoS::AtMostOnce,
            false,
            0,
        ));
        publish_qos1(&mut forger, "a/after-sys", b"fence", 5);
        assert_eq!(
            next_message(&mut watcher),
            message("a/after-sys", b"fence"),
            "{v:?}"
        );
        watcher.expect_nothing();
        alice.disconnect();
        forger.disconnect();
        watcher.disconnect();
    }
}

/// SUBSCRIBE to a filter the ACL lets the client read nothing of is refused (SUBACK 0x80 in
/// 3.1.1, 0x87 in 5.0); one it may read is granted, alone or beside a refused one.
#[test]
fn a_subscription_the_acl_lets_read_nothing_is_refused_and_a_readable_one_granted() {
    let dir = TempDir::new("acl-subscribe");
    let broker = acl_broker(&dir);
    for v in [Version::V311, Version::V5] {
        let mut alice = log_in(broker.addr, "alice", v, "alice", None);
        assert_eq!(
            alice.subscribe("z/#", QoS::AtLeastOnce),
            [subscribe_refused(v)]
        );
        assert_eq!(alice.subscribe("a/#", QoS::AtLeastOnce), [ReasonCode(1)]);
        assert_eq!(alice.subscribe("r/+", QoS::AtMostOnce), [ReasonCode(0)]);
        alice.send(&Packet::Subscribe(Subscribe {
            pkid: 9,
            filters: ["z/1", "r/1"]
                .iter()
                .map(|f| SubscribeFilter {
                    filter: MqttString::from_str_checked(f).unwrap(),
                    options: SubscriptionOptions {
                        qos: QoS::AtLeastOnce,
                        ..Default::default()
                    },
                })
                .collect(),
            properties: Props::default(),
        }));
        match alice.recv() {
            Packet::SubAck(ack) if ack.pkid == 9 => {
                assert_eq!(
                    ack.reason_codes,
                    [subscribe_refused(v), ReasonCode(1)],
                    "{v:?}"
                )
            }
            other => panic!("{v:?}: expected SUBACK, got {other:?}"),
        }
        let mut watcher = log_in(broker.addr, "watcher", v, "watcher", None);
        publish_qos1(&mut watcher, "z/1", b"not for alice", 1);
        publish_qos1(&mut watcher, "a/1", b"for alice", 2);
        assert_eq!(
            next_message(&mut alice),
            message("a/1", b"for alice"),
            "{v:?}"
        );
        alice.expect_nothing();
        alice.disconnect();
        watcher.disconnect();
    }
}

/// A subscription wider than the client's read rights (alice's `#`, which covers `a/secret`
/// and `z/1`) is granted, as mosquitto grants it, but delivers only the topics the ACL lets the
/// client read. mosquitto 2.0.11, same ACL, alice subscribed to `#`, watcher publishing `z/1`,
/// `a/secret`, `a/1`, `r/2`: alice receives `a/1` and `r/2` only.
#[test]
fn a_wide_subscription_delivers_only_what_the_acl_lets_the_client_read() {
    let dir = TempDir::new("acl-read");
    let broker = acl_broker(&dir);
    for v in [Version::V311, Version::V5] {
        let mut alice = log_in(broker.addr, "alice", v, "alice", None);
        assert_eq!(
            alice.subscribe("#", QoS::AtLeastOnce),
            [ReasonCode(1)],
            "{v:?}"
        );
        let mut watcher = log_in(broker.addr, "watcher", v, "watcher", None);
        publish_qos1(&mut watcher, "z/1", b"unreadable", 1);
        publish_qos1(&mut watcher, "a/secret", b"denied", 2);
        publish_qos1(&mut watcher, "a/1", b"readable", 3);
        publish_qos1(&mut watcher, "r/2", b"readable too", 4);
        assert_eq!(
            next_message(&mut alice),
            message("a/1", b"readable"),
            "{v:?}"
        );
        assert_eq!(
            next_message(&mut alice),
            message("r/2", b"readable too"),
            "{v:?}"
        );
        alice.expect_nothing();
        alice.disconnect();
        watcher.disconnect();
    }
}

/// A will whose topic the ACL does not let the client write is dropped at CONNECT: when the
/// client vanishes, nothing is published. A will on a topic it may write is published.
#[test]
fn a_will_on_a_topic_the_acl_denies_is_not_published() {
    let dir = TempDir::new("acl-will");
    let broker = acl_broker(&dir);
    for v in [Version::V311, Version::V5] {
        let mut watcher = log_in(broker.addr, "watcher", v, "watcher", None);
        assert_eq!(watcher.subscribe("#", QoS::AtLeastOnce), [ReasonCode(1)]);
        for (id, will_topic) in [("denied-will", "r/will"), ("allowed-will", "a/will")] {
            let mut connect = login(id, v, Some("alice"), None);
            connect.will = Some(Will {
                topic: MqttString::from_str_checked(will_topic).unwrap(),
                payload: bytes::Bytes::from_static(b"gone"),
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: Props::default(),
            });
            let (code, client) = connack(broker.addr, connect);
            assert_eq!(
                code,
                ReasonCode::SUCCESS,
                "{v:?}: a denied will refuses nothing"
            );
            // Gone without DISCONNECT: once the broker has closed its side, the will is due.
            client.unwrap().close_without_disconnect();
        }
        // The allowed will comes first: the denied one, due earlier, was never published.
        assert_eq!(
            next_message(&mut watcher),
            message("a/will", b"gone"),
            "{v:?}"
        );
        watcher.expect_nothing();
        watcher.disconnect();
    }
}

// ---------------------------------------------------------------------------------------------
// 7. SIGHUP.

fn sighup(process: &Process) {
    // SAFETY: sending a signal to our own child, which has not been reaped.
    let rc = unsafe { libc::kill(process.child.id() as libc::pid_t, libc::SIGHUP) };
    assert_eq!(rc, 0, "kill -HUP: {}", std::io::Error::last_os_error());
}

/// SIGHUP reads the password file and the ACL again: a user added to the password file can log
/// in (and gets its ACL rights). A broken ACL (an unknown keyword) is logged ("keeping the
/// previous one") and the broker keeps running under the ACL it had.
#[test]
fn sighup_reloads_the_password_file_and_a_broken_acl_keeps_the_previous_one() {
    let dir = TempDir::new("sighup");
    let passwd = dir.path("passwd");
    let passwd_str = passwd.to_str().expect("a UTF-8 path");
    run_ok(ringcast_passwd(&["-c", "-b", passwd_str, "alice", "pw-a"]));
    let acl = dir.write(
        "acl",
        "user alice\ntopic readwrite a/#\n\nuser bob\ntopic readwrite b/#\n",
    );
    let config = format!(
        "password_file = {:?}\nacl_file = {:?}\nallow_anonymous = false\n",
        passwd_str,
        acl.to_str().expect("a UTF-8 path")
    );
    let (mut broker, addr) = start_ringcast(&dir, &config);
    let v = Version::V5;
    let bob = || login("bob", v, Some("bob"), Some("pw-b"));
    log_in(addr, "alice", v, "alice", Some("pw-a")).disconnect();
    assert_eq!(
        connack(addr, bob()).0,
        ReasonCode::NOT_AUTHORIZED,
        "bob is not a user yet"
    );

    run_ok(ringcast_passwd(&["-b", passwd_str, "bob", "pw-b"]));
    let seen = broker.output.len();
    sighup(&broker);
    // The reload is done (every shard sees the new tables at its next CONNECT) once it is logged.
    if broker
        .output
        .wait_for("reloaded", seen, LOG_LIMIT)
        .is_none()
    {
        panic!("no reload logged:\n{}", broker.output.text());
    }
    let mut bob = match connack(addr, bob()) {
        (_, Some(raw)) => raw,
        (code, None) => panic!("bob refused after the reload: {code:?}"),
    };
    assert_eq!(bob.subscribe("b/#", QoS::AtLeastOnce), [ReasonCode(1)]);
    assert_eq!(
        bob.subscribe("a/#", QoS::AtLeastOnce),
        [subscribe_refused(v)]
    );
    bob.disconnect();

    // `frobnicate` is no ACL keyword: the whole file is refused.
    std::fs::write(&acl, "user alice\ntopic readwrite z/#\nfrobnicate z\n").expect("write");
    let seen = broker.output.len();
    sighup(&broker);
    let Some(line) = broker
        .output
        .wait_for("keeping the previous one", seen, LOG_LIMIT)
    else {
        panic!("no refused reload logged:\n{}", broker.output.text());
    };
    assert!(line.contains("reload: "), "{line}");
    let mut alice = log_in(addr, "alice", v, "alice", Some("pw-a"));
    assert_eq!(
        alice.subscribe("a/#", QoS::AtLeastOnce),
        [ReasonCode(1)],
        "the old ACL"
    );
    assert_eq!(
        alice.subscribe("z/#", QoS::AtLeastOnce),
        [subscribe_refused(v)]
    );
    alice.disconnect();
    log_in(addr, "bob", v, "bob", Some("pw-b")).disconnect();

    // SAFETY: sending a signal to our own child, which has not been reaped.
    unsafe { libc::kill(broker.child.id() as libc::pid_t, libc::SIGTERM) };
    let status = common::wait_exit(&mut broker.child, Duration::from_secs(10))
        .expect("ringcast did not stop on SIGTERM");
    assert!(status.success(), "exit status {status:?}");
}

// ---------------------------------------------------------------------------------------------
// 8. The CONNECT deadline.

/// A client that sends its CONNECT one byte every 300 ms is closed when
/// `limits.connect_timeout_secs` (2 s) have passed since it connected, before its CONNECT is
/// complete: bytes trickling in do not extend the deadline.
#[test]
fn a_connect_dripped_byte_by_byte_is_cut_off_by_the_connect_deadline() {
    const DRIP: Duration = Duration::from_millis(300);
    let broker = Broker::start_with(1, |config| config.limits.connect_timeout_secs = 2);
    let mut bytes = bytes::BytesMut::new();
    let connect = connect_packet("a-client-that-takes-its-time", Version::V311, true);
    codec_encode(&Packet::Connect(Box::new(connect)), &mut bytes);
    let started = Instant::now();
    let mut stream = TcpStream::connect(broker.addr).expect("connect");
    stream.set_nodelay(true).unwrap();
    // The 300 ms between bytes is a read that must time out: it also sees the close at once.
    stream.set_read_timeout(Some(DRIP)).unwrap();
    let mut sent = 0;
    let closed_at = loop {
        if sent < bytes.len() {
            if stream.write_all(&bytes[sent..sent + 1]).is_err() {
                break started.elapsed();
            }
            sent += 1;
        }
        let mut answer = [0u8; 64];
        match stream.read(&mut answer) {
            Ok(0) => break started.elapsed(),
            Ok(n) => panic!("the broker answered {:02x?}", &answer[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break started.elapsed(), // reset
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "still open after {sent} of {} bytes",
            bytes.len()
        );
    };
    assert!(sent < bytes.len(), "the whole CONNECT went through");
    assert!(
        closed_at >= Duration::from_millis(1500) && closed_at < Duration::from_secs(4),
        "closed after {closed_at:?} with a 2 s CONNECT deadline ({sent} bytes sent)"
    );
}

fn codec_encode(packet: &Packet, out: &mut bytes::BytesMut) {
    ringcast::protocol::codec::encode(packet, Version::V311, out).expect("CONNECT encodes");
}

// 9. The Eclipse paho interoperability suite's `test_subscribe_failure`, with paho-mqtt.

/// The ACL the paho interop suite's broker runs with: `test/nosubscribe` may not be read.
const PAHO_ACL: &str = "\
topic deny test/nosubscribe
topic readwrite #
";

/// What `test_subscribe_failure` of the Eclipse paho interoperability suite does, with Python
/// paho-mqtt over MQTT 3.1.1: a SUBSCRIBE at QoS 2 to `test/nosubscribe`, which the ACL does
/// not let the client read, is answered with the failure return code 0x80.
#[test]
fn mqtt_3_9_3_paho_test_subscribe_failure_gets_0x80_in_3_1_1() {
    if Command::new("python3")
        .args(["-c", "import paho.mqtt.client"])
        .output()
        .map_or(true, |o| !o.status.success())
    {
        let message = "python3 with paho-mqtt missing: pip install 'paho-mqtt>=2,<3'";
        common::tool_missing(message);
        return;
    }
    let dir = TempDir::new("paho-acl");
    let acl = dir.write("acl", PAHO_ACL);
    let broker = Broker::start_with(1, |config| config.acl_file = Some(acl));
    let script = format!(
        r#"
import threading, paho.mqtt.client as mqtt
got = threading.Event()
result = []
def on_subscribe(client, userdata, mid, reason_codes, properties):
    result.extend(int(getattr(c, "value", c)) for c in reason_codes)
    got.set()
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="myclientid", protocol=mqtt.MQTTv311)
c.on_subscribe = on_subscribe
c.connect("127.0.0.1", {port})
c.loop_start()
c.subscribe([("test/nosubscribe", 2)])
assert got.wait(10), "no SUBACK"
c.disconnect()
c.loop_stop()
print(result[0])
"#,
        port = broker.addr.port()
    );
    let mut command = Command::new("python3");
    command.args(["-c", &script]);
    let output = run_ok(command);
    let code = String::from_utf8_lossy(&output.stdout).trim().to_string();
    assert_eq!(code, "128", "SUBACK return code for test/nosubscribe");
}
