//! Bridges (`[[bridge]]`) against real remotes started by the tests: the Debian mosquitto
//! (`/usr/sbin/mosquitto`, its own config on an ephemeral loopback port) and a second ringcast
//! process. Local brokers run in this process; clients are the tests' raw MQTT clients.
//!
//! A missing mosquitto skips its tests with a note, or fails them under
//! `RINGCAST_REQUIRE_INTEROP=1` (CI).

mod common;

use common::{connect_packet, listening_addr, tool_missing, wait_exit, Broker, NoPacket, Raw};
use ringcast::config::{BridgeConfig, Config};
use ringcast::protocol::{
    MqttString, Packet, Props, Publish, QoS, Subscribe, SubscribeFilter, SubscriptionOptions,
    Version,
};
use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long a test waits for a bridge to connect or a message to cross.
const CROSS: Duration = Duration::from_secs(15);

/// The mosquitto broker, or None (after a note) when it is not installed.
fn mosquitto_program() -> Option<PathBuf> {
    let found = ["/usr/sbin/mosquitto", "mosquitto"].into_iter().find(|p| {
        Command::new(p)
            .arg("-h")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    });
    match found {
        Some(p) => Some(PathBuf::from(p)),
        None => {
            tool_missing("mosquitto missing: install with `apt-get install mosquitto`");
            None
        }
    }
}

/// A scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let dir =
        std::env::temp_dir().join(format!("ringcast-bridge-{}-{name}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A loopback port free now.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A mosquitto process on its own port and config, killed when dropped.
struct Mosquitto {
    program: PathBuf,
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Mosquitto {
    /// Starts mosquitto; `persistent` keeps its sessions in `dir` (written on SIGUSR1).
    fn start(program: PathBuf, name: &str, persistent: bool) -> Mosquitto {
        let dir = scratch(name);
        let port = free_port();
        let persistence = match persistent {
            true => format!(
                "persistence true\npersistence_location {}/\n",
                dir.display()
            ),
            false => "persistence false\n".to_string(),
        };
        let conf = format!("listener {port} 127.0.0.1\nallow_anonymous true\n{persistence}");
        // Started as root, mosquitto drops to its own user, which must be able to write here.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        std::fs::write(dir.join("mosquitto.conf"), conf).unwrap();
        let mut m = Mosquitto {
            program,
            dir,
            port,
            child: None,
        };
        m.restart();
        m
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Starts it (again) and waits until it accepts connections.
    fn restart(&mut self) {
        let child = Command::new(&self.program)
            .arg("-c")
            .arg(self.dir.join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto starts");
        self.child = Some(child);
        let deadline = Instant::now() + CROSS;
        while TcpStream::connect(self.addr()).is_err() {
            assert!(Instant::now() < deadline, "mosquitto never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, and waits until it is gone.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            wait_exit(&mut child, CROSS).expect("mosquitto dies");
        }
    }

    /// Asks it to write its sessions to disk and waits until the file is there.
    fn save(&self) {
        let pid = self.child.as_ref().unwrap().id() as libc::pid_t;
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid, libc::SIGUSR1) };
        let deadline = Instant::now() + CROSS;
        while !self.dir.join("mosquitto.db").exists() {
            assert!(Instant::now() < deadline, "mosquitto wrote no database");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A ringcast process (the remote of a ringcast-to-ringcast bridge), killed when dropped.
struct Remote {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Remote {
    /// Starts it with `$SYS` every second.
    fn start() -> Remote {
        let dir = scratch("remote");
        let config = dir.join("remote.toml");
        std::fs::write(&config, "sys_interval_secs = 1\n").unwrap();
        let mut child = common::ringcast_command(1)
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .stderr(Stdio::null())
            .spawn()
            .expect("ringcast starts");
        let stdout = child.stdout.take().unwrap();
        let addr = listening_addr(stdout, CROSS).expect("the remote ringcast listens");
        Remote { child, addr, dir }
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = wait_exit(&mut self.child, CROSS);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One `[[bridge]]` named `name` to `addr`, with the rules and any extra keys.
fn bridge(
    name: &str,
    addr: SocketAddr,
    version: &str,
    rules: &[&str],
    extra: &str,
) -> BridgeConfig {
    let text = format!(
        "[[bridge]]\nname = \"{name}\"\naddress = \"{addr}\"\nprotocol_version = \"{version}\"\n\
         client_id = \"bridge-{name}\"\nreconnect_min_ms = 200\nreconnect_max_ms = 1000\n\
         topic = {rules:?}\n{extra}"
    );
    Config::from_toml(&text)
        .expect("bridge config")
        .bridge
        .remove(0)
}

/// A local broker (in this process) with `bridges`, `$SYS` every second, on two shards: the
/// bridge runs on shard 0 and clients are placed round-robin, so most tests also cross shards.
fn local_broker(bridges: Vec<BridgeConfig>) -> Broker {
    Broker::start_with(2, |c| {
        c.bridge = bridges;
        c.sys_interval_secs = 1;
    })
}

/// Waits until `$SYS/broker/bridges/<name>/<what>` satisfies `check`.
fn wait_sys(addr: SocketAddr, name: &str, what: &str, check: impl Fn(&str) -> bool) {
    wait_topic(addr, &format!("$SYS/broker/bridges/{name}/{what}"), check);
}

/// Waits until the retained value of `topic` satisfies `check`.
fn wait_topic(addr: SocketAddr, topic: &str, check: impl Fn(&str) -> bool) {
    let mut raw = Raw::connect(addr, "");
    // Not `Raw::subscribe`: a broker may send matching messages before the SUBACK
    // [MQTT-3.8.4], and here they often do (the bridge publishes from another shard).
    raw.send(&Packet::Subscribe(Subscribe {
        pkid: 1,
        filters: vec![SubscribeFilter {
            filter: MqttString::from_str_checked(topic).unwrap(),
            options: SubscriptionOptions::default(),
        }],
        properties: Props::default(),
    }));
    let deadline = Instant::now() + CROSS;
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Ok(Packet::Publish(p)) = raw.recv_within(Duration::from_millis(500)) {
            last = String::from_utf8_lossy(&p.payload).into_owned();
            if check(&last) {
                return;
            }
        }
    }
    panic!("{topic} stayed at {last:?}");
}

fn wait_connected(addr: SocketAddr, name: &str) {
    wait_sys(addr, name, "connected", |v| v == "1");
}

/// Publishes `payload` to `topic` through `publisher` until `receiver` gets a message (a
/// bridge subscribes at the remote shortly after a local subscriber appears); returns it.
fn publish_until_received(publisher: &mut Raw, topic: &str, receiver: &mut Raw) -> Publish {
    let deadline = Instant::now() + CROSS;
    while Instant::now() < deadline {
        publisher.publish(topic, b"probe", QoS::AtLeastOnce, false);
        if let Ok(Packet::Publish(p)) = receiver.recv_within(Duration::from_millis(300)) {
            receiver.ack(&p);
            return p;
        }
    }
    panic!("nothing published to {topic} crossed the bridge");
}

/// Takes whatever else arrives within a short while (probes still under way).
fn drain(raw: &mut Raw) {
    while let Ok(packet) = raw.recv_within(Duration::from_millis(500)) {
        if let Packet::Publish(p) = packet {
            raw.ack(&p);
        }
    }
}

fn expect_publish(raw: &mut Raw, topic: &str, payload: &[u8], qos: QoS) {
    let p = raw.recv_publish();
    assert_eq!(
        (p.topic.as_str(), &p.payload[..], p.qos),
        (topic, payload, qos)
    );
}

#[test]
fn mosquitto_remote_gets_out_messages_and_sends_in_messages_with_prefixes_at_qos1() {
    let Some(program) = mosquitto_program() else {
        return;
    };
    let mosquitto = Mosquitto::start(program, "prefixes", false);
    let rules = [
        "sensors/# out 1 local/ remote/",
        "cmd/# in 1 local/ remote/",
    ];
    let broker = local_broker(vec![bridge("up", mosquitto.addr(), "3.1.1", &rules, "")]);
    wait_connected(broker.addr, "up");

    let mut remote_sub = Raw::connect(mosquitto.addr(), "remote-sub");
    remote_sub.subscribe("remote/sensors/#", QoS::AtLeastOnce);
    let mut local_pub = Raw::connect(broker.addr, "local-pub");
    local_pub.publish("local/sensors/t1", b"21.5", QoS::AtLeastOnce, false);
    expect_publish(
        &mut remote_sub,
        "remote/sensors/t1",
        b"21.5",
        QoS::AtLeastOnce,
    );
    local_pub.publish("sensors/t1", b"no prefix", QoS::AtLeastOnce, false);
    remote_sub.expect_nothing();

    let mut local_sub = Raw::connect(broker.addr, "local-sub");
    local_sub.subscribe("local/cmd/#", QoS::AtLeastOnce);
    let mut remote_pub = Raw::connect(mosquitto.addr(), "remote-pub");
    let p = publish_until_received(&mut remote_pub, "remote/cmd/go", &mut local_sub);
    assert_eq!(
        (p.topic.as_str(), p.qos),
        ("local/cmd/go", QoS::AtLeastOnce)
    );
}

/// Retained messages cross as retained: one stored at mosquitto before the bridge asked for
/// it, and one published live afterwards (mosquitto keeps the retain flag toward a bridge),
/// both reach a later local subscriber from ringcast's own retained store.
#[test]
fn mosquitto_retained_messages_stay_retained_across_the_bridge() {
    let Some(program) = mosquitto_program() else {
        return;
    };
    let mosquitto = Mosquitto::start(program, "retained", false);
    let mut remote_pub = Raw::connect(mosquitto.addr(), "retain-pub");
    remote_pub.publish("cfg/old", b"stored", QoS::AtLeastOnce, true);
    let rules = ["cfg/# in 1"];
    let broker = local_broker(vec![bridge("ret", mosquitto.addr(), "3.1.1", &rules, "")]);
    wait_connected(broker.addr, "ret");
    let mut first = Raw::connect(broker.addr, "retain-first");
    first.subscribe("cfg/#", QoS::AtLeastOnce);
    let p = first.recv_publish();
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("cfg/old", &b"stored"[..])
    );
    remote_pub.publish("cfg/new", b"live", QoS::AtLeastOnce, true);
    expect_publish(&mut first, "cfg/new", b"live", QoS::AtLeastOnce);

    let mut later = Raw::connect(broker.addr, "retain-later");
    later.subscribe("cfg/#", QoS::AtLeastOnce);
    let mut got: Vec<(String, bool)> = (0..2)
        .map(|_| {
            let p = later.recv_publish();
            (p.topic.as_str().to_string(), p.retain)
        })
        .collect();
    got.sort();
    let expected = [("cfg/new".to_string(), true), ("cfg/old".to_string(), true)];
    assert_eq!(got, expected);
}

/// `both` with a 3.1.1 remote: mosquitto honours the bridge bit and does not send back what
/// the bridge published; ringcast's No Local keeps what came in from going out again.
#[test]
fn mosquitto_both_rule_carries_each_message_once_each_way() {
    let Some(program) = mosquitto_program() else {
        return;
    };
    let mosquitto = Mosquitto::start(program, "both", false);
    let rules = ["loop/# both 1"];
    let broker = local_broker(vec![bridge("mesh", mosquitto.addr(), "3.1.1", &rules, "")]);
    no_loop_both_ways(broker.addr, mosquitto.addr(), "mesh");
}

/// Two ringcast processes bridged over MQTT 5: `both` without a loop, and a prefixed `out`.
#[test]
fn two_ringcast_brokers_bridged_over_mqtt5_without_a_loop() {
    let remote = Remote::start();
    let rules = ["loop/# both 1", "status out 0 \"\" far/"];
    let broker = local_broker(vec![bridge("pair", remote.addr, "5", &rules, "")]);
    no_loop_both_ways(broker.addr, remote.addr, "pair");

    let mut far = Raw::connect(remote.addr, "far-sub");
    far.subscribe("far/status", QoS::AtMostOnce);
    let mut local_pub = Raw::connect(broker.addr, "status-pub");
    local_pub.publish("status", b"up", QoS::AtMostOnce, false);
    expect_publish(&mut far, "far/status", b"up", QoS::AtMostOnce);
}

/// Two ringcasts over 3.1.1: the bridge connects with mosquitto's bridge level (0x84), which
/// ringcast as the remote honours as mosquitto does (no own messages back), so `both` does not
/// loop there either.
#[test]
fn two_ringcast_brokers_bridged_over_3_1_1_without_a_loop() {
    let remote = Remote::start();
    let rules = ["loop/# both 1"];
    let broker = local_broker(vec![bridge("pair311", remote.addr, "3.1.1", &rules, "")]);
    no_loop_both_ways(broker.addr, remote.addr, "pair311");
}

/// A subscriber on each side of a `loop/# both 1` bridge gets each message exactly once.
fn no_loop_both_ways(local: SocketAddr, remote: SocketAddr, name: &str) {
    wait_connected(local, name);
    let mut local_sub = Raw::connect(local, "loop-local-sub");
    local_sub.subscribe("loop/#", QoS::AtLeastOnce);
    let mut remote_sub = Raw::connect(remote, "loop-remote-sub");
    remote_sub.subscribe("loop/#", QoS::AtLeastOnce);
    let mut remote_pub = Raw::connect(remote, "loop-remote-pub");
    publish_until_received(&mut remote_pub, "loop/probe", &mut local_sub);
    drain(&mut local_sub);
    drain(&mut remote_sub);

    let mut local_pub = Raw::connect(local, "loop-local-pub");
    local_pub.publish("loop/out", b"1", QoS::AtLeastOnce, false);
    expect_publish(&mut local_sub, "loop/out", b"1", QoS::AtLeastOnce);
    expect_publish(&mut remote_sub, "loop/out", b"1", QoS::AtLeastOnce);
    remote_pub.publish("loop/in", b"2", QoS::AtLeastOnce, false);
    expect_publish(&mut remote_sub, "loop/in", b"2", QoS::AtLeastOnce);
    expect_publish(&mut local_sub, "loop/in", b"2", QoS::AtLeastOnce);
    local_sub.expect_nothing();
    remote_sub.expect_nothing();
}

/// An `in` rule is subscribed at the remote only while a local subscription overlaps it:
/// the remote's subscription count (its `$SYS` reader's own one included) goes up when a local
/// client subscribes to `cmd/#` and down when it leaves.
#[test]
fn in_rule_is_asked_of_the_remote_only_while_a_local_subscriber_wants_it() {
    let remote = Remote::start();
    let rules = ["cmd/+/set in 1"];
    let broker = local_broker(vec![bridge("lazy", remote.addr, "5", &rules, "")]);
    wait_connected(broker.addr, "lazy");
    let count = "$SYS/broker/subscriptions/count";
    wait_topic(remote.addr, count, |v| v == "1");
    let mut unrelated = Raw::connect(broker.addr, "unrelated-sub");
    unrelated.subscribe("status/#", QoS::AtLeastOnce);
    let mut local_sub = Raw::connect(broker.addr, "lazy-sub");
    local_sub.subscribe("cmd/#", QoS::AtLeastOnce);
    wait_topic(remote.addr, count, |v| v == "2");
    local_sub.disconnect();
    wait_topic(remote.addr, count, |v| v == "1");
}

/// The remote killed with SIGKILL and started again: every QoS 1 message the local broker
/// acknowledged meanwhile reaches the remote's subscriber once it is back (at least once).
/// mosquitto keeps the subscriber's session on disk (written before the kill, on SIGUSR1),
/// so what the bridge delivers after the restart waits for the subscriber there.
#[test]
fn mqtt_qos1_acknowledged_locally_arrives_after_the_remote_is_killed_and_restarted() {
    let Some(program) = mosquitto_program() else {
        return;
    };
    let mut mosquitto = Mosquitto::start(program, "restart", true);
    let rules = ["data/# out 1"];
    let broker = local_broker(vec![bridge("r", mosquitto.addr(), "3.1.1", &rules, "")]);
    wait_connected(broker.addr, "r");
    let persistent = connect_packet("data-sub", Version::V311, false);
    let (mut sub, _) = Raw::connect_with(mosquitto.addr(), persistent.clone());
    sub.subscribe("data/#", QoS::AtLeastOnce);
    mosquitto.save();

    let mut publisher = Raw::connect(broker.addr, "data-pub");
    let mut received = BTreeSet::new();
    for i in 0..20 {
        publisher.publish(&format!("data/{i}"), b"x", QoS::AtLeastOnce, false);
    }
    while received.len() < 20 {
        received.insert(sub.recv_publish().topic.as_str().to_string());
    }
    mosquitto.kill();
    for i in 20..60 {
        // Each one acknowledged by the local broker while the remote is down.
        publisher.publish(&format!("data/{i}"), b"x", QoS::AtLeastOnce, false);
    }
    // At least: messages the remote acknowledged as it died may be sent again.
    wait_sys(broker.addr, "r", "queued", |v| {
        v.parse::<u32>().is_ok_and(|n| n >= 40)
    });
    mosquitto.restart();
    let (mut sub, _) = Raw::connect_with(mosquitto.addr(), persistent);
    let all: BTreeSet<String> = (0..60).map(|i| format!("data/{i}")).collect();
    let missing = receive_topics(&mut sub, &all, &mut received);
    assert!(missing.is_empty(), "never arrived: {missing:?}");
}

/// Receives (and acknowledges) until every topic of `all` is in `received`, or `CROSS` has
/// passed; returns the topics still missing.
fn receive_topics(
    sub: &mut Raw,
    all: &BTreeSet<String>,
    received: &mut BTreeSet<String>,
) -> Vec<String> {
    let deadline = Instant::now() + CROSS;
    while received != all && Instant::now() < deadline {
        match sub.recv_within(Duration::from_millis(500)) {
            Ok(Packet::Publish(p)) => {
                sub.ack(&p);
                received.insert(p.topic.as_str().to_string());
            }
            Ok(_) | Err(NoPacket::Timeout) => {}
            Err(NoPacket::Closed) => panic!("mosquitto closed the subscriber"),
        }
    }
    all.difference(received).cloned().collect()
}

/// With the remote unreachable, the queue holds `queue_messages_max` messages and counts
/// the rest as dropped; `$SYS` shows both and the connection state 0.
#[test]
fn out_queue_is_bounded_and_counts_drops_while_the_remote_stays_down() {
    let nobody = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let rules = ["q/# out 1"];
    let extra = "queue_messages_max = 5\n";
    let broker = local_broker(vec![bridge("down", nobody, "5", &rules, extra)]);
    // Published once the bridge's session is in place (and has tried to connect).
    wait_sys(broker.addr, "down", "connected", |v| v == "0");
    let mut publisher = Raw::connect(broker.addr, "q-pub");
    for i in 0..12 {
        publisher.publish(&format!("q/{i}"), b"x", QoS::AtLeastOnce, false);
    }
    wait_sys(broker.addr, "down", "dropped", |v| v == "7");
    wait_sys(broker.addr, "down", "queued", |v| v == "5");
    wait_sys(broker.addr, "down", "connected", |v| v == "0");
    let mut raw = Raw::connect(broker.addr, "state-reader");
    raw.subscribe("$SYS/broker/connection/bridge-down/state", QoS::AtMostOnce);
    expect_publish(
        &mut raw,
        "$SYS/broker/connection/bridge-down/state",
        b"0",
        QoS::AtMostOnce,
    );
}

/// A bad topic rule stops the broker at start with one sentence and a non-zero exit.
#[test]
fn bad_bridge_rule_is_refused_at_start_with_one_sentence() {
    let dir = scratch("badrule");
    let path = dir.join("bad.toml");
    std::fs::write(
        &path,
        "[[bridge]]\nname = \"b\"\naddress = \"127.0.0.1:1\"\ntopic = [\"a/# sideways 1\"]\n",
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .arg("--config")
        .arg(&path)
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .expect("ringcast runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr
            .contains("bridge topic rule `a/# sideways 1`: the direction must be in, out or both"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    let _ = std::fs::remove_dir_all(dir);
}

/// Test certificates (made here, never committed): a CA, a server certificate for 127.0.0.1
/// and a client certificate, written into `dir`; returns (ca, server cert, server key, client
/// cert, client key).
fn make_pki(dir: &std::path::Path) -> [PathBuf; 5] {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "bridge test CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let leaf = |names: Vec<String>, cn: &str, usage: ExtendedKeyUsagePurpose| {
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let server = leaf(
        vec!["127.0.0.1".into()],
        "remote",
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let client = leaf(Vec::new(), "edge", ExtendedKeyUsagePurpose::ClientAuth);
    let files = [
        ("ca.pem", ca.pem()),
        ("server.pem", server.0),
        ("server.key", server.1),
        ("client.pem", client.0),
        ("client.key", client.1),
    ];
    files.map(|(name, text)| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    })
}

/// A bridge over TLS with a client certificate, to a ringcast remote whose TLS listener
/// requires one signed by its CA (the remote also listens in plain TCP for the test's client).
#[test]
fn bridge_over_tls_with_a_client_certificate() {
    use ringcast::config::{ListenerConfig, Protocol, TlsSettings};
    let dir = scratch("tls");
    let [ca, server_cert, server_key, client_cert, client_key] = make_pki(&dir);
    let loopback: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let remote = ringcast::server::Server::start(&Config {
        listen: vec![loopback],
        listener: vec![ListenerConfig {
            allow_anonymous: Some(true),
            tls: Some(TlsSettings {
                cert_file: server_cert,
                key_file: server_key,
                ca_file: Some(ca.clone()),
                require_certificate: true,
                ..TlsSettings::default()
            }),
            ..ListenerConfig::new(loopback, Protocol::Mqtt)
        }],
        shards: 1,
        log_level: "warn".into(),
        ..Config::default()
    })
    .expect("the remote starts");
    // [[listener]]s are bound first, then `listen`.
    let (tls_addr, plain_addr) = (remote.local_addrs()[0], remote.local_addrs()[1]);
    let extra = format!(
        "[bridge.tls]\nca_file = {:?}\ncert_file = {:?}\nkey_file = {:?}\n",
        ca, client_cert, client_key
    );
    let rules = ["secure/# out 1"];
    let broker = local_broker(vec![bridge("tls", tls_addr, "5", &rules, &extra)]);
    wait_connected(broker.addr, "tls");
    let mut sub = Raw::connect(plain_addr, "tls-sub");
    sub.subscribe("secure/#", QoS::AtLeastOnce);
    let mut publisher = Raw::connect(broker.addr, "tls-pub");
    publisher.publish("secure/x", b"sealed", QoS::AtLeastOnce, false);
    expect_publish(&mut sub, "secure/x", b"sealed", QoS::AtLeastOnce);
    drop(broker);
    remote.stop();
    remote.join();
    let _ = std::fs::remove_dir_all(dir);
}

/// A remote played by the test, one blocking connection at a time.
struct FakeRemote {
    stream: TcpStream,
    codec: ringcast::protocol::codec::Codec,
    buf: bytes::BytesMut,
}

impl FakeRemote {
    /// Accepts a connection and answers its CONNECT with a CONNACK that accepts.
    fn accept(listener: &TcpListener) -> FakeRemote {
        let mut remote = FakeRemote::connected(listener);
        remote.connack(ringcast::protocol::ReasonCode::SUCCESS);
        remote
    }

    /// Accepts a connection and reads its CONNECT, not yet answered.
    fn connected(listener: &TcpListener) -> FakeRemote {
        let (stream, _) = listener.accept().expect("the bridge connects");
        stream.set_read_timeout(Some(CROSS)).unwrap();
        let mut remote = FakeRemote {
            stream,
            codec: ringcast::protocol::codec::Codec::new(1 << 20),
            buf: bytes::BytesMut::new(),
        };
        let Packet::Connect(_) = remote.recv() else {
            panic!("the bridge did not start with CONNECT");
        };
        remote
    }

    /// Answers the CONNECT with `code`.
    fn connack(&mut self, code: ringcast::protocol::ReasonCode) {
        let connack = ringcast::protocol::ConnAck {
            session_present: false,
            code,
            properties: Props::default(),
        };
        let version = self.codec.version().expect("a CONNECT was read");
        self.send(&Packet::ConnAck(connack), version);
    }

    fn recv(&mut self) -> Packet {
        use ringcast::protocol::codec::Decoded;
        use std::io::Read;
        loop {
            if let Ok(Decoded::Packet(packet)) = self.codec.decode(&mut self.buf) {
                return packet;
            }
            let mut chunk = [0u8; 4096];
            let n = match self.stream.read(&mut chunk) {
                // The broker's threads share this process; their signals interrupt reads.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                result => result.expect("the bridge sends"),
            };
            assert!(n > 0, "the bridge closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn send(&mut self, packet: &Packet, version: Version) {
        use std::io::Write;
        let mut out = bytes::BytesMut::new();
        ringcast::protocol::codec::encode(packet, version, &mut out).unwrap();
        self.stream.write_all(&out).unwrap();
    }
}

/// A QoS 1 message the remote received but never acknowledged is sent again, marked DUP, on
/// the next connection, and leaves the queue only when that one is acknowledged.
#[test]
fn unacknowledged_qos1_message_is_sent_again_after_a_reconnect() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let remote_addr = listener.local_addr().unwrap();
    let rules = ["inflight/# out 1"];
    let broker = local_broker(vec![bridge("fake", remote_addr, "5", &rules, "")]);
    let mut first = FakeRemote::accept(&listener);
    let mut publisher = Raw::connect(broker.addr, "inflight-pub");
    publisher.publish("inflight/a", b"once", QoS::AtLeastOnce, false);
    let Packet::Publish(sent) = first.recv() else {
        panic!("expected the PUBLISH");
    };
    assert_eq!((sent.topic.as_str(), sent.dup), ("inflight/a", false));
    drop(first); // the connection dies without a PUBACK

    let mut second = FakeRemote::accept(&listener);
    let Packet::Publish(again) = second.recv() else {
        panic!("expected the PUBLISH again");
    };
    assert_eq!(
        (
            again.topic.as_str(),
            &again.payload[..],
            again.qos,
            again.dup
        ),
        ("inflight/a", &b"once"[..], QoS::AtLeastOnce, true)
    );
    let ack = ringcast::protocol::Ack {
        pkid: again.pkid,
        ..Default::default()
    };
    second.send(&Packet::PubAck(ack), Version::V5);
    wait_sys(broker.addr, "fake", "messages/out", |v| v == "1");
    wait_sys(broker.addr, "fake", "queued", |v| v == "0");
}

/// A 3.1.1 remote that refuses mosquitto's bridge level (CONNACK 0x01, unacceptable protocol
/// version) gets a plain level 4 CONNECT on the next try, and the bridge connects.
#[test]
fn bridge_level_refused_falls_back_to_plain_3_1_1() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let remote_addr = listener.local_addr().unwrap();
    let rules = ["plain/# out 1"];
    let broker = local_broker(vec![bridge("old", remote_addr, "3.1.1", &rules, "")]);
    let mut first = FakeRemote::connected(&listener);
    assert!(first.codec.is_bridge(), "the first try carries level 0x84");
    first.connack(ringcast::protocol::ReasonCode(1));
    drop(first);
    let mut second = FakeRemote::connected(&listener);
    assert!(!second.codec.is_bridge(), "the next try is plain 3.1.1");
    second.connack(ringcast::protocol::ReasonCode::SUCCESS);
    wait_connected(broker.addr, "old");
}

/// A local ringcast in its own process with persistence on (so it can be killed with
/// SIGKILL and started again on the same data directory), killed when dropped.
struct StoringLocal {
    child: Child,
    addr: SocketAddr,
}

impl StoringLocal {
    fn start(config: &std::path::Path, data: &std::path::Path) -> StoringLocal {
        let mut child = common::ringcast_command(2)
            .arg("--config")
            .arg(config)
            .arg("--data-dir")
            .arg(data)
            .stderr(Stdio::null())
            .spawn()
            .expect("ringcast starts");
        let stdout = child.stdout.take().unwrap();
        let addr = listening_addr(stdout, CROSS).expect("the local ringcast listens");
        StoringLocal { child, addr }
    }
}

impl Drop for StoringLocal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = wait_exit(&mut self.child, CROSS);
    }
}

/// The out queue is stored: QoS 1 messages the local broker acknowledged while the remote
/// was down reach the remote although the local broker was SIGKILLed in between.
#[test]
fn mqtt_qos1_queued_for_a_down_remote_survives_a_kill_9_of_the_local_broker() {
    let Some(program) = mosquitto_program() else {
        return;
    };
    let mut mosquitto = Mosquitto::start(program, "stored", true);
    let persistent = connect_packet("stored-sub", Version::V311, false);
    let (mut sub, _) = Raw::connect_with(mosquitto.addr(), persistent.clone());
    sub.subscribe("data/#", QoS::AtLeastOnce);
    mosquitto.save();
    sub.disconnect();
    mosquitto.kill();

    let dir = scratch("stored-local");
    let config = dir.join("local.toml");
    let text = format!(
        "sys_interval_secs = 1\n\n[limits]\ninflight_max = 100\n\n\
         [persistence]\nfsync = \"interval\"\n\n[[bridge]]\n\
         name = \"keep\"\naddress = \"{}\"\nprotocol_version = \"3.1.1\"\n\
         client_id = \"bridge-keep\"\nreconnect_min_ms = 200\nreconnect_max_ms = 1000\n\
         topic = [\"data/# out 1\"]\n",
        mosquitto.addr()
    );
    std::fs::write(&config, text).unwrap();
    let local = StoringLocal::start(&config, &dir.join("data"));
    // Its session is in place once the bridge reports its state.
    wait_sys(local.addr, "keep", "connected", |v| v == "0");
    let mut publisher = Raw::connect(local.addr, "stored-pub");
    let n = 150; // past the local session's window of 100: some wait in its queue
    for i in 0..n {
        // Each one acknowledged (PUBACK) by the local broker while the remote is down.
        publisher.publish(&format!("data/{i}"), b"x", QoS::AtLeastOnce, false);
    }
    drop(local); // SIGKILL
    let local = StoringLocal::start(&config, &dir.join("data"));
    mosquitto.restart();
    wait_connected(local.addr, "keep");
    let (mut sub, _) = Raw::connect_with(mosquitto.addr(), persistent);
    let all: BTreeSet<String> = (0..n).map(|i| format!("data/{i}")).collect();
    let missing = receive_topics(&mut sub, &all, &mut BTreeSet::new());
    assert!(
        missing.is_empty(),
        "acknowledged, never arrived: {missing:?}"
    );
    wait_sys(local.addr, "keep", "queued", |v| v == "0");
    let _ = std::fs::remove_dir_all(&dir);
}
