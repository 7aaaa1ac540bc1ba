//! ringcast between independent MQTT implementations: mosquitto_pub / mosquitto_sub (Debian's
//! mosquitto-clients) and Python paho-mqtt 2.x (`tests/interop/paho_client.py`), run as
//! subprocesses, in both directions, with MQTT 3.1.1 and MQTT 5, on 1 and on 4 shards.
//!
//! A missing tool skips the test with a note, unless `RINGCAST_REQUIRE_INTEROP=1` (set by CI),
//! which turns it into a failure. Every subprocess runs under a deadline and is killed if it
//! overstays, and killed too if the test panics first.

mod common;

use common::Broker;
use std::io::{Read, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long any one subprocess may run.
const PROC_LIMIT: Duration = Duration::from_secs(20);
/// How long a subscriber may take to get its SUBACK.
const READY_LIMIT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------------
// Tools: present, or skip / fail as the environment asks.

/// Which external clients are installed, checked once per test binary.
struct Tools {
    missing: Vec<&'static str>,
}

fn tools() -> &'static Tools {
    static TOOLS: OnceLock<Tools> = OnceLock::new();
    TOOLS.get_or_init(|| {
        let mut missing = Vec::new();
        for tool in ["mosquitto_pub", "mosquitto_sub", "stdbuf"] {
            // Some print usage and exit non-zero on --help; only "not found" matters here.
            if Command::new(tool).arg("--help").output().is_err() {
                missing.push(tool);
            }
        }
        let paho = Command::new("python3")
            .args([
                "-c",
                "import sys, paho.mqtt; sys.exit(int(paho.mqtt.__version__.split('.')[0]) < 2)",
            ])
            .output();
        if !matches!(paho, Ok(out) if out.status.success()) {
            missing.push("python3 with paho-mqtt>=2");
        }
        Tools { missing }
    })
}

/// True when the external clients are here. When they are not: fails the test if
/// `RINGCAST_REQUIRE_INTEROP=1`, else prints a note and the caller returns early.
fn interop_ready() -> bool {
    let missing = &tools().missing;
    if missing.is_empty() {
        return true;
    }
    let message = format!(
        "interop clients missing: {}. Install with `apt-get install mosquitto-clients` and \
         `python3 -m pip install 'paho-mqtt>=2,<3'`",
        missing.join(", ")
    );
    common::tool_missing(&message)
}

// ---------------------------------------------------------------------------------------------
// Subprocesses with deadlines.

/// A running subprocess whose output is collected as it comes; killed when dropped.
struct Proc {
    name: String,
    child: Option<Child>,
    stdout: Arc<Captured>,
    stderr: Arc<Captured>,
    readers: Vec<JoinHandle<()>>,
}

/// What a subprocess wrote to one pipe so far; `grew` is signalled on every read and at the end.
#[derive(Default)]
struct Captured {
    text: Mutex<Text>,
    grew: Condvar,
}

#[derive(Default)]
struct Text {
    so_far: String,
    /// The pipe reached its end: the process closed it (it exited).
    is_closed: bool,
}

impl Captured {
    fn so_far(&self) -> String {
        self.text.lock().unwrap().so_far.clone()
    }
}

/// How a subprocess ended.
struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Copies everything from `from` into `into` on a thread, so a full pipe never stalls the child.
fn collect(mut from: impl Read + Send + 'static, into: Arc<Captured>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        loop {
            let n = match from.read(&mut chunk) {
                // The broker's threads share this process; their signals interrupt reads.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                result => result.unwrap_or(0),
            };
            let mut text = into.text.lock().unwrap();
            if n == 0 {
                text.is_closed = true;
            } else {
                text.so_far.push_str(&String::from_utf8_lossy(&chunk[..n]));
            }
            drop(text);
            into.grew.notify_all();
            if n == 0 {
                break;
            }
        }
    })
}

impl Proc {
    /// Starts `command`, feeding it `stdin` (then closing it).
    fn spawn(name: &str, mut command: Command, stdin: &[u8]) -> Proc {
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: cannot start {command:?}: {e}"));
        let mut input = child.stdin.take().unwrap();
        // Small inputs only: the pipe buffer holds them without a reader on the other side yet.
        let _ = input.write_all(stdin);
        drop(input);
        let stdout = Arc::new(Captured::default());
        let stderr = Arc::new(Captured::default());
        let readers = vec![
            collect(child.stdout.take().unwrap(), stdout.clone()),
            collect(child.stderr.take().unwrap(), stderr.clone()),
        ];
        Proc {
            name: name.to_owned(),
            child: Some(child),
            stdout,
            stderr,
            readers,
        }
    }

    fn output_so_far(&self) -> String {
        format!(
            "--- stdout ---\n{}--- stderr ---\n{}",
            self.stdout.so_far(),
            self.stderr.so_far()
        )
    }

    /// Waits until a stdout line contains `needle`; kills the process and fails if it exits
    /// first or after `limit`.
    fn wait_for(&mut self, needle: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        let mut text = self.stdout.text.lock().unwrap();
        loop {
            if text.so_far.lines().any(|l| l.contains(needle)) {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if text.is_closed || left.is_zero() {
                break;
            }
            text = self.stdout.grew.wait_timeout(text, left).unwrap().0;
        }
        let is_closed = text.is_closed;
        drop(text);
        // A closed stdout means the process is exiting: give it a moment to say how.
        let exited = if is_closed {
            common::wait_exit(self.child.as_mut().unwrap(), Duration::from_secs(1))
        } else {
            None
        };
        self.kill();
        panic!(
            "{}: no {needle:?} ({}):\n{}",
            self.name,
            match exited {
                Some(status) => format!("exited with {status}"),
                None if is_closed => "closed its stdout, killed".to_owned(),
                None => format!("killed after {limit:?}"),
            },
            self.output_so_far()
        );
    }

    /// Waits for the process to exit; kills it and fails the test after `limit`.
    fn finish(mut self, limit: Duration) -> Finished {
        let Some(status) = common::wait_exit(self.child.as_mut().unwrap(), limit) else {
            self.kill();
            panic!(
                "{}: still running after {limit:?}, killed:\n{}",
                self.name,
                self.output_so_far()
            );
        };
        self.child = None;
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        Finished {
            status,
            stdout: self.stdout.so_far(),
            stderr: self.stderr.so_far(),
        }
    }

    /// Waits for a successful exit, failing the test with the output otherwise.
    fn succeed(self) -> Finished {
        let name = self.name.clone();
        let done = self.finish(PROC_LIMIT);
        assert!(
            done.status.success(),
            "{name}: {}\n--- stdout ---\n{}--- stderr ---\n{}",
            done.status,
            done.stdout,
            done.stderr
        );
        done
    }

    /// Kills the process (SIGKILL: no DISCONNECT reaches the broker) and reaps it.
    fn kill(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.child = None;
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------------------------
// The clients.

/// MQTT protocol version, as each tool spells it.
#[derive(Clone, Copy, Debug)]
enum V {
    V311,
    V5,
}

impl V {
    fn mosquitto(self) -> &'static str {
        match self {
            V::V311 => "mqttv311",
            V::V5 => "mqttv5",
        }
    }
    fn paho(self) -> &'static str {
        match self {
            V::V311 => "311",
            V::V5 => "5",
        }
    }
}

/// One message as a subscriber printed it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Msg {
    topic: String,
    qos: u8,
    retain: bool,
    payload: Vec<u8>,
}

fn from_hex(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex payload"))
        .collect()
}

/// Parses `MSG <topic> <qos> <retain> <hex>` lines, which both subscribers print.
fn messages(stdout: &str) -> Vec<Msg> {
    stdout
        .lines()
        .filter_map(|line| line.strip_prefix("MSG "))
        .map(|rest| {
            let fields: Vec<&str> = rest.split(' ').collect();
            assert_eq!(fields.len(), 4, "bad MSG line: {rest:?}");
            Msg {
                topic: fields[0].to_owned(),
                qos: fields[1].parse().unwrap(),
                retain: fields[2] == "1",
                payload: from_hex(fields[3]),
            }
        })
        .collect()
}

fn msg(topic: &str, qos: u8, retain: bool, payload: &[u8]) -> Msg {
    Msg {
        topic: topic.to_owned(),
        qos,
        retain,
        payload: payload.to_vec(),
    }
}

fn paho(mode: &str, broker: &Broker, v: V, id: &str, topic: &str, qos: u8) -> Command {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/paho_client.py");
    let mut command = Command::new("python3");
    command.args([script, mode]).args([
        "--port",
        &broker.addr.port().to_string(),
        "--version",
        v.paho(),
        "--id",
        id,
        "--topic",
        topic,
        "--qos",
        &qos.to_string(),
        "--timeout",
        "15",
    ]);
    command
}

/// A paho subscriber that has its SUBACK and will exit after `count` messages.
fn paho_sub(broker: &Broker, v: V, id: &str, filter: &str, qos: u8, count: usize) -> Proc {
    let mut command = paho("sub", broker, v, id, filter, qos);
    command.args(["--count", &count.to_string(), "--linger", "0.3"]);
    let mut sub = Proc::spawn(&format!("paho sub {id}"), command, b"");
    sub.wait_for("SUBSCRIBED", READY_LIMIT);
    sub
}

/// Publishes `payloads` in order from one paho client and waits for it to finish.
fn paho_pub(
    broker: &Broker,
    v: V,
    id: &str,
    topic: &str,
    qos: u8,
    retain: bool,
    payloads: &[&str],
) {
    let mut command = paho("pub", broker, v, id, topic, qos);
    if retain {
        command.arg("--retain");
    }
    for payload in payloads {
        command.args(["--payload", payload]);
    }
    Proc::spawn(&format!("paho pub {id}"), command, b"").succeed();
}

fn mosquitto(tool: &str, broker: &Broker, v: V, id: &str, topic: &str, qos: u8) -> Command {
    // stdout is a pipe, so without stdbuf the client's stdio would hold its lines back.
    let mut command = Command::new("stdbuf");
    command.args(["-oL", tool]).args([
        "-h",
        "127.0.0.1",
        "-p",
        &broker.addr.port().to_string(),
        "-V",
        v.mosquitto(),
        "-i",
        id,
        "-t",
        topic,
        "-q",
        &qos.to_string(),
    ]);
    command
}

/// A mosquitto_sub that has its SUBACK (seen in its `-d` debug output) and exits after `count`
/// messages or 6 s.
fn mosquitto_sub(broker: &Broker, v: V, id: &str, filter: &str, qos: u8, count: usize) -> Proc {
    let mut command = mosquitto("mosquitto_sub", broker, v, id, filter, qos);
    command.args([
        "-d",
        "-C",
        &count.to_string(),
        "-W",
        "6",
        "-F",
        "MSG %t %q %r %x",
    ]);
    let mut sub = Proc::spawn(&format!("mosquitto_sub {id}"), command, b"");
    sub.wait_for("received SUBACK", READY_LIMIT);
    sub
}

/// Publishes one message (read from stdin, so any bytes go) with mosquitto_pub.
fn mosquitto_pub(
    broker: &Broker,
    v: V,
    id: &str,
    topic: &str,
    qos: u8,
    retain: bool,
    payload: &[u8],
) {
    let mut command = mosquitto("mosquitto_pub", broker, v, id, topic, qos);
    command.arg("-s");
    if retain {
        command.arg("-r");
    }
    Proc::spawn(&format!("mosquitto_pub {id}"), command, payload).succeed();
}

/// A payload with every byte value (zero included), tagged so each message is recognisable.
fn binary_payload(tag: u8) -> Vec<u8> {
    let mut payload = vec![b'#', tag];
    payload.extend(0..=255u8);
    payload
}

// ---------------------------------------------------------------------------------------------
// The tests.

/// mosquitto_pub sends one message at each QoS; a paho subscriber at QoS 2 gets each once,
/// byte for byte, at the publisher's QoS.
fn mosquitto_pub_to_paho_sub(shards: usize, pub_v: V, sub_v: V) {
    if !interop_ready() {
        return;
    }
    let broker = Broker::start(shards);
    let sub = paho_sub(&broker, sub_v, "paho-sub", "interop/+/data", 2, 3);
    let mut expected = Vec::new();
    for qos in 0..=2u8 {
        let topic = format!("interop/q{qos}/data");
        let payload = binary_payload(qos);
        mosquitto_pub(
            &broker,
            pub_v,
            &format!("mpub{qos}"),
            &topic,
            qos,
            false,
            &payload,
        );
        expected.push(msg(&topic, qos, false, &payload));
    }
    let done = sub.succeed();
    // Separate publisher connections may be routed in any order; compare as sets.
    let mut got = messages(&done.stdout);
    got.sort();
    assert_eq!(got, expected, "stdout:\n{}", done.stdout);
}

/// One paho client publishes at QoS 0, 1 and 2; mosquitto_sub at QoS 2 gets them in order.
fn paho_pub_to_mosquitto_sub(shards: usize, pub_v: V, sub_v: V) {
    if !interop_ready() {
        return;
    }
    let broker = Broker::start(shards);
    let sub = mosquitto_sub(&broker, sub_v, "msub", "interop/#", 2, 3);
    for qos in 0..=2u8 {
        // A fresh connection per QoS, so each flow is checked alone.
        let payload = format!("qos {qos} from paho ✓");
        paho_pub(
            &broker,
            pub_v,
            &format!("ppub{qos}"),
            &format!("interop/q{qos}"),
            qos,
            false,
            &[&payload],
        );
    }
    let done = sub.succeed();
    let mut got = messages(&done.stdout);
    got.sort();
    let expected: Vec<Msg> = (0..=2u8)
        .map(|qos| {
            let payload = format!("qos {qos} from paho ✓");
            msg(&format!("interop/q{qos}"), qos, false, payload.as_bytes())
        })
        .collect();
    assert_eq!(got, expected, "stdout:\n{}", done.stdout);
}

/// Messages from one publisher arrive in the order sent, at every QoS [MQTT-4.6.0-6].
fn paho_pub_order_kept(shards: usize, v: V) {
    if !interop_ready() {
        return;
    }
    let broker = Broker::start(shards);
    for qos in 0..=2u8 {
        let sub = mosquitto_sub(&broker, v, &format!("msub{qos}"), "order/t", 2, 5);
        let payloads = ["m1", "m2", "m3", "m4", "m5"];
        paho_pub(
            &broker,
            v,
            &format!("ppub{qos}"),
            "order/t",
            qos,
            false,
            &payloads,
        );
        let done = sub.succeed();
        let got: Vec<Vec<u8>> = messages(&done.stdout)
            .into_iter()
            .map(|m| m.payload)
            .collect();
        let expected: Vec<Vec<u8>> = payloads.iter().map(|p| p.as_bytes().to_vec()).collect();
        assert_eq!(got, expected, "QoS {qos}; stdout:\n{}", done.stdout);
    }
}

/// A retained message from mosquitto_pub reaches a paho subscriber that comes later, with the
/// retain flag set [MQTT-3.3.1-6, MQTT-3.3.1-8].
fn retained_mosquitto_pub_to_later_paho_sub(shards: usize, v: V) {
    if !interop_ready() {
        return;
    }
    let broker = Broker::start(shards);
    mosquitto_pub(
        &broker,
        v,
        "mpub",
        "retained/m",
        1,
        true,
        b"kept by ringcast",
    );
    let done = paho_sub(&broker, v, "paho-late", "retained/#", 1, 1).succeed();
    assert_eq!(
        messages(&done.stdout),
        vec![msg("retained/m", 1, true, b"kept by ringcast")],
        "stdout:\n{}",
        done.stdout
    );
}

/// A retained message from paho reaches a later mosquitto_sub with the retain flag set, at the
/// subscription's lower QoS; a second retained message replaces it [MQTT-3.3.1-5].
fn retained_paho_pub_to_later_mosquitto_sub(shards: usize, v: V) {
    if !interop_ready() {
        return;
    }
    let broker = Broker::start(shards);
    paho_pub(
        &broker,
        v,
        "ppub",
        "retained/p",
        2,
        true,
        &["first", "second"],
    );
    let done = mosquitto_sub(&broker, v, "msub-late", "retained/+", 1, 1).succeed();
    assert_eq!(
        messages(&done.stdout),
        vec![msg("retained/p", 1, true, b"second")],
        "stdout:\n{}",
        done.stdout
    );
}

/// A paho client killed with SIGKILL (no DISCONNECT) has its will delivered to mosquitto_sub
/// [MQTT-3.1.2-8].
fn paho_will_reaches_mosquitto_sub(shards: usize, v: V) {
    if !interop_ready() {
        return;
    }
    let broker = Broker::start(shards);
    let sub = mosquitto_sub(&broker, v, "watcher", "wills/#", 1, 1);
    let mut command = paho("will", &broker, v, "doomed", "wills/doomed", 1);
    command.args(["--payload", "doomed went away"]);
    let mut doomed = Proc::spawn("paho will", command, b"");
    doomed.wait_for("CONNECTED", READY_LIMIT);
    doomed.kill();
    let done = sub.succeed();
    assert_eq!(
        messages(&done.stdout),
        vec![msg("wills/doomed", 1, false, b"doomed went away")],
        "stdout:\n{}",
        done.stdout
    );
}

on_1_and_4_shards!(mqtt311_mosquitto_pub_to_paho_sub_qos_0_1_2, |shards| {
    mosquitto_pub_to_paho_sub(shards, V::V311, V::V311)
});
on_1_and_4_shards!(mqtt5_mosquitto_pub_to_paho_sub_qos_0_1_2, |shards| {
    mosquitto_pub_to_paho_sub(shards, V::V5, V::V5)
});
on_1_and_4_shards!(mqtt5_mosquitto_pub_to_mqtt311_paho_sub, |shards| {
    mosquitto_pub_to_paho_sub(shards, V::V5, V::V311)
});
on_1_and_4_shards!(mqtt311_paho_pub_to_mosquitto_sub_qos_0_1_2, |shards| {
    paho_pub_to_mosquitto_sub(shards, V::V311, V::V311)
});
on_1_and_4_shards!(mqtt5_paho_pub_to_mosquitto_sub_qos_0_1_2, |shards| {
    paho_pub_to_mosquitto_sub(shards, V::V5, V::V5)
});
on_1_and_4_shards!(mqtt311_paho_pub_to_mqtt5_mosquitto_sub, |shards| {
    paho_pub_to_mosquitto_sub(shards, V::V311, V::V5)
});
on_1_and_4_shards!(
    mqtt311_4_6_order_from_one_paho_publisher_is_kept,
    |shards| { paho_pub_order_kept(shards, V::V311) }
);
on_1_and_4_shards!(mqtt5_4_6_order_from_one_paho_publisher_is_kept, |shards| {
    paho_pub_order_kept(shards, V::V5)
});
on_1_and_4_shards!(mqtt311_retained_mosquitto_pub_to_later_paho_sub, |shards| {
    retained_mosquitto_pub_to_later_paho_sub(shards, V::V311)
});
on_1_and_4_shards!(mqtt5_retained_mosquitto_pub_to_later_paho_sub, |shards| {
    retained_mosquitto_pub_to_later_paho_sub(shards, V::V5)
});
on_1_and_4_shards!(mqtt311_retained_paho_pub_to_later_mosquitto_sub, |shards| {
    retained_paho_pub_to_later_mosquitto_sub(shards, V::V311)
});
on_1_and_4_shards!(mqtt5_retained_paho_pub_to_later_mosquitto_sub, |shards| {
    retained_paho_pub_to_later_mosquitto_sub(shards, V::V5)
});
on_1_and_4_shards!(mqtt311_paho_will_reaches_mosquitto_sub, |shards| {
    paho_will_reaches_mosquitto_sub(shards, V::V311)
});
on_1_and_4_shards!(mqtt5_paho_will_reaches_mosquitto_sub, |shards| {
    paho_will_reaches_mosquitto_sub(shards, V::V5)
});

// ---------------------------------------------------------------------------------------------
// MQTT 5 features end to end with paho (MQTTv5).

/// PUBLISH properties set by a paho publisher reach a paho subscriber unchanged: User
/// Properties (order kept), Content Type, Response Topic, Correlation Data, Payload Format
/// Indicator and Message Expiry Interval [MQTT-3.3.2-16..-20], [MQTT-3.3.2-6].
fn paho_v5_properties_pass_through(shards: usize) {
    if !interop_ready() {
        return;
    }
    let broker = Broker::start(shards);
    let mut command = paho("sub", &broker, V::V5, "props-sub", "p5/props", 1);
    command.args(["--count", "1", "--linger", "0.3", "--props"]);
    let mut sub = Proc::spawn("paho sub props", command, b"");
    sub.wait_for("SUBSCRIBED", READY_LIMIT);
    let mut command = paho("pub", &broker, V::V5, "props-pub", "p5/props", 1);
    command.args([
        "--payload",
        "with properties",
        "--user-prop",
        "a=1",
        "--user-prop",
        "b=2",
        "--content-type",
        "text/plain",
        "--response-topic",
        "p5/reply",
        "--correlation",
        "00ff10",
        "--format",
        "1",
        "--expiry",
        "60",
    ]);
    Proc::spawn("paho pub props", command, b"").succeed();
    let done = sub.succeed();
    assert!(
        done.stdout
            .contains("PROPS pfi=1 ct=text/plain rt=p5/reply cd=00ff10 up=a=1,b=2 mei=1"),
        "stdout:\n{}",
        done.stdout
    );
}

/// Two paho members of one shared subscription split a paho publisher's messages: each
/// message reaches exactly one of them, and both get their turn [MQTT-4.8.2].
fn paho_v5_shared_subscription(shards: usize) {
    if !interop_ready() {
        return;
    }
    let broker = Broker::start(shards);
    let members: Vec<Proc> = ["m1", "m2"]
        .iter()
        .map(|id| paho_sub(&broker, V::V5, id, "$share/grp/p5/shared", 1, 3))
        .collect();
    let payloads: Vec<String> = (0..6).map(|i| format!("job-{i}")).collect();
    let refs: Vec<&str> = payloads.iter().map(String::as_str).collect();
    paho_pub(&broker, V::V5, "shared-pub", "p5/shared", 1, false, &refs);
    let mut got: Vec<Vec<u8>> = Vec::new();
    for member in members {
        let done = member.succeed();
        let mine = messages(&done.stdout);
        assert_eq!(mine.len(), 3, "an even spread; stdout:\n{}", done.stdout);
        got.extend(mine.into_iter().map(|m| m.payload));
    }
    got.sort();
    let mut want: Vec<Vec<u8>> = payloads.iter().map(|p| p.as_bytes().to_vec()).collect();
    want.sort();
    assert_eq!(got, want, "each message to exactly one member");
}

/// A paho session with Session Expiry Interval 2 is kept across a disconnect (messages
/// published meanwhile are queued for it), and is gone once 2 s pass offline
/// [MQTT-3.1.2-23].
fn paho_v5_session_expiry(shards: usize) {
    if !interop_ready() {
        return;
    }
    let broker = Broker::start(shards);
    let session = |count: usize, subscribe: bool| {
        let mut command = paho("session", &broker, V::V5, "expiring", "p5/exp", 1);
        command.args(["--session-expiry", "2", "--count", &count.to_string()]);
        if subscribe {
            command.arg("--subscribe");
        }
        Proc::spawn("paho session", command, b"").succeed()
    };
    let first = session(0, true);
    assert!(
        first.stdout.contains("SESSION-PRESENT 0"),
        "{}",
        first.stdout
    );
    paho_pub(
        &broker,
        V::V5,
        "exp-pub",
        "p5/exp",
        1,
        false,
        &["while away"],
    );
    let back = session(1, false);
    assert!(back.stdout.contains("SESSION-PRESENT 1"), "{}", back.stdout);
    assert_eq!(
        messages(&back.stdout),
        vec![msg("p5/exp", 1, false, b"while away")],
        "stdout:\n{}",
        back.stdout
    );
    std::thread::sleep(Duration::from_millis(2600));
    let later = session(0, false);
    assert!(
        later.stdout.contains("SESSION-PRESENT 0"),
        "{}",
        later.stdout
    );
}

on_1_and_4_shards!(mqtt5_3_3_2_paho_properties_pass_through, |shards| {
    paho_v5_properties_pass_through(shards)
});
on_1_and_4_shards!(mqtt5_4_8_2_paho_shared_subscription, |shards| {
    paho_v5_shared_subscription(shards)
});
on_1_and_4_shards!(mqtt5_3_1_2_11_paho_session_expiry, |shards| {
    paho_v5_session_expiry(shards)
});

// ---------------------------------------------------------------------------------------------
// $SYS, read the way operators read it.

/// `mosquitto_sub -t '$SYS/#'` reads the broker's counters under mosquitto's names, so existing
/// dashboards work: here the connected-clients count, which includes the reader itself.
fn sys_counters_read_by_mosquitto_sub(shards: usize) {
    if !interop_ready() {
        return;
    }
    let broker = Broker::start_with(shards, |c| c.sys_interval_secs = 1);
    let _a = common::Raw::connect(broker.addr, "sys-a");
    let _b = common::Raw::connect(broker.addr, "sys-b");
    // Retained values from before the reader connected come first; take a few and use the
    // last, which is published after it connected.
    let done = mosquitto_sub(
        &broker,
        V::V311,
        "sys-reader",
        "$SYS/broker/clients/connected",
        0,
        2,
    )
    .succeed();
    let got = messages(&done.stdout);
    let last = got.last().expect("a $SYS message");
    let connected: u64 = String::from_utf8_lossy(&last.payload)
        .trim()
        .parse()
        .expect("a number");
    assert!(
        connected >= 2,
        "clients/connected = {connected}; stdout:\n{}",
        done.stdout
    );
}

on_1_and_4_shards!(sys_counters_are_readable_with_mosquitto_sub, |shards| {
    sys_counters_read_by_mosquitto_sub(shards)
});
