//! Several ringcast nodes on a local 3-server NATS cluster (nats-server with JetStream), every
//! process started and stopped by the test, on loopback ports the OS picked.

mod common;

use common::*;
use ringcast::protocol::{Packet, QoS, ReasonCode, Version};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a test waits for the NATS cluster or a node to come up, or for a route to form.
const SETTLE: Duration = Duration::from_secs(30);
/// How long a node may take to listen and open its buckets: longer than the node's own wait
/// for JetStream (60 s), which a new NATS cluster on a busy host can need before it places a
/// bucket's replicas.
const JOIN_WAIT: Duration = Duration::from_secs(75);

/// One test at a time: each starts three nats-servers and two or three nodes, which on a
/// small machine would starve each other's timeouts if the test harness ran them together.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A child process killed (SIGKILL) and reaped when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = wait_exit(&mut self.0, Duration::from_secs(10));
    }
}

/// A port the OS had free a moment ago (nats-server's routes need ports named in advance).
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().unwrap().port()
}

/// Tries at starting the NATS cluster: a port `free_port` picked can be taken by another
/// process before the server binds it, and that server then exits.
const NATS_TRIES: usize = 3;

/// A 3-server NATS cluster with JetStream.
struct Nats {
    servers: Vec<Option<Proc>>,
    urls: Vec<String>,
    dir: PathBuf,
    binary: String,
}

/// The last `n` lines of `log`.
fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Starts server `i` of the cluster whose configs are in `dir`, logging to `s<i>.log` there.
fn spawn_nats_server(binary: &str, dir: &std::path::Path, i: usize) -> Proc {
    let child = Command::new(binary)
        .arg("-c")
        .arg(dir.join(format!("s{i}.conf")))
        .arg("-l")
        .arg(dir.join(format!("s{i}.log")))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nats-server");
    Proc(child)
}

impl Nats {
    /// The three servers, JetStream able to place 3 replicas; None (after `tool_missing`)
    /// when nats-server is not installed.
    fn start() -> Option<Nats> {
        Nats::start_some(3)
    }

    /// A cluster of three servers of which only the first `up` are started (`start_server`
    /// starts the others); None (after `tool_missing`) when nats-server is not installed.
    fn start_some(up: usize) -> Option<Nats> {
        let binary = ["/usr/bin/nats-server", "/usr/sbin/nats-server"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists());
        let Some(binary) = binary else {
            tool_missing("nats-server is not installed (apt-get install nats-server)");
            return None;
        };
        let started = (0..NATS_TRIES).find_map(|_| Nats::try_start(binary, up));
        Some(started.expect("the NATS servers start (the log of a server that did not is above)"))
    }

    /// Starts server `i` (one not running) and waits until it is ready.
    fn start_server(&mut self, i: usize) {
        self.servers[i] = Some(spawn_nats_server(&self.binary, &self.dir, i));
        assert!(
            self.ready(i, Instant::now() + SETTLE),
            "nats-server s{i} starts"
        );
    }

    /// Writes the configs of three servers on ports free a moment ago and starts the first
    /// `up`; None, with the log of a server that exited or did not get ready, when one did not
    /// come up (or, with all three, when JetStream did not place 3 replicas).
    fn try_start(binary: &str, up: usize) -> Option<Nats> {
        let dir = std::env::temp_dir().join(format!(
            "ringcast-nats-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let clients: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let routes: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let route_list = routes
            .iter()
            .map(|p| format!("\"nats-route://127.0.0.1:{p}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let mut servers = Vec::new();
        for i in 0..3 {
            let conf = format!(
                "server_name: s{i}\nlisten: \"127.0.0.1:{}\"\njetstream {{ store_dir: \"{}\" }}\n\
                 cluster {{ name: rc, listen: \"127.0.0.1:{}\", routes: [{route_list}] }}\n",
                clients[i],
                dir.join(format!("s{i}")).display(),
                routes[i]
            );
            std::fs::write(dir.join(format!("s{i}.conf")), conf).unwrap();
            servers.push((i < up).then(|| spawn_nats_server(binary, &dir, i)));
        }
        let urls = clients
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect();
        let binary = binary.to_string();
        let mut nats = Nats {
            servers,
            urls,
            dir,
            binary,
        };
        let deadline = Instant::now() + SETTLE;
        let ready =
            (0..up).all(|i| nats.ready(i, deadline)) && (up < 3 || nats.places_replicas(deadline));
        ready.then_some(nats)
    }

    /// Whether JetStream places a stream of 3 replicas (as the nodes' buckets are) before
    /// `deadline`, tried with a probe stream made and deleted; false, after showing the
    /// servers' logs, when it did not. A new cluster elects its JetStream leader and then
    /// learns its peers; until it knows all three, placing 3 replicas fails ("no suitable
    /// peers for placement").
    fn places_replicas(&self, deadline: Instant) -> bool {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let url = self.urls[0].clone();
        let result = runtime.block_on(async move {
            let client = async_nats::connect(url).await.map_err(|e| e.to_string())?;
            let js = async_nats::jetstream::new(client);
            let probe = async_nats::jetstream::stream::Config {
                name: "probe".into(),
                subjects: vec!["probe".into()],
                num_replicas: 3,
                ..Default::default()
            };
            loop {
                match js.create_stream(probe.clone()).await {
                    Ok(_) => break,
                    Err(e) if Instant::now() >= deadline => return Err(e.to_string()),
                    Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
                }
            }
            js.delete_stream("probe")
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        });
        if let Err(e) = &result {
            eprintln!("JetStream did not place a stream of 3 replicas: {e}");
            self.show_logs();
        }
        result.is_ok()
    }

    /// Waits until server `i` logged that it is ready (it listens on all its ports); false,
    /// after showing its log, when it exited or `deadline` passed first.
    fn ready(&mut self, i: usize, deadline: Instant) -> bool {
        let path = self.dir.join(format!("s{i}.log"));
        loop {
            let log = std::fs::read_to_string(&path).unwrap_or_default();
            if log.contains("Server is ready") {
                return true;
            }
            let server = self.servers[i].as_mut().map(|p| &mut p.0);
            let exited = server.is_some_and(|s| !matches!(s.try_wait(), Ok(None)));
            if exited || Instant::now() >= deadline {
                eprintln!("nats-server s{i} did not get ready:\n{}", tail(&log, 20));
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Shows the end of every server's log (with a failing test's output).
    fn show_logs(&self) {
        for i in 0..3 {
            let log =
                std::fs::read_to_string(self.dir.join(format!("s{i}.log"))).unwrap_or_default();
            eprintln!("nats-server s{i}, the end of its log:\n{}", tail(&log, 40));
        }
    }

    /// Kills server `i` with SIGKILL.
    fn kill(&mut self, i: usize) {
        self.servers[i] = None;
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.servers.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A ringcast node in its own process (so it can be killed with SIGKILL), with persistence
/// on in a data directory of its own (kept across a restart of the same name).
struct Node {
    proc: Option<Proc>,
    addr: SocketAddr,
}

impl Node {
    /// Starts node `name` with 2 shards, its NATS servers listed from `first` on.
    fn start(nats: &Nats, name: &str, first: usize) -> Node {
        Node::start_with(nats, name, first, "")
    }

    /// `start`, with more top-level config lines.
    fn start_with(nats: &Nats, name: &str, first: usize, extra: &str) -> Node {
        let urls: Vec<String> = (0..3).map(|i| nats.urls[(first + i) % 3].clone()).collect();
        Node::start_on(nats, name, &urls, extra)
    }

    /// Starts node `name` with 2 shards and NATS server URLs `urls`, once it joined.
    fn start_on(nats: &Nats, name: &str, urls: &[String], extra: &str) -> Node {
        Node::launch(nats, name, urls, extra, true).0
    }

    /// Starts node `name` with 2 shards and NATS server URLs `urls`; returns once it listens,
    /// and once it joined too if `joined`, with the lines it writes from then on.
    fn launch(
        nats: &Nats,
        name: &str,
        urls: &[String],
        extra: &str,
        joined: bool,
    ) -> (Node, std::sync::mpsc::Receiver<String>) {
        let urls: Vec<String> = urls.iter().map(|u| format!("{u:?}")).collect();
        let conf = format!(
            "{extra}\n[cluster]\nnats = [{}]\nnode = \"{name}\"\nkv_replicas = 3\n",
            urls.join(", ")
        );
        let path = nats.dir.join(format!("{name}.toml"));
        std::fs::write(&path, conf).unwrap();
        let mut child = ringcast_command(2)
            .arg("--config")
            .arg(&path)
            .arg("--data-dir")
            .arg(nats.dir.join(format!("{name}-data")))
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start ringcast");
        let lines = node_lines(child.stdout.take().unwrap());
        // Killed even when it never gets ready.
        let proc = Proc(child);
        let Some(addr) = ready_addr(&lines, joined) else {
            nats.show_logs();
            panic!("node {name} did not listen (and join the cluster: {joined}) in {JOIN_WAIT:?}");
        };
        let node = Node {
            proc: Some(proc),
            addr,
        };
        (node, lines)
    }

    /// Kills the node with SIGKILL.
    fn kill(&mut self) {
        self.proc = None;
    }
}

/// The lines a node writes to stdout, read on a thread of their own so the pipe never fills;
/// its warnings and errors are shown with a failing test's output.
fn node_lines(stdout: std::process::ChildStdout) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let (send, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if line.contains("WARN") || line.contains("ERROR") {
                eprintln!("{line}");
            }
            let _ = send.send(line);
        }
    });
    lines
}

/// The address a node reports in its "ringcast listening on ADDR" line, once it also reported
/// that it joined the cluster (its buckets are open) if `joined`, in either order (a node that
/// replays its store starts listening after the buckets open); None after `JOIN_WAIT`.
fn ready_addr(lines: &std::sync::mpsc::Receiver<String>, joined: bool) -> Option<SocketAddr> {
    let deadline = Instant::now() + JOIN_WAIT;
    let (mut listening, mut is_joined) = (None, !joined);
    while !is_joined || listening.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines.recv_timeout(left).ok()?;
        if let Some((_, rest)) = line.split_once("ringcast listening on ") {
            let end = rest
                .find(|c: char| c.is_whitespace() || c == '\x1b')
                .unwrap_or(rest.len());
            listening = rest[..end].parse::<SocketAddr>().ok();
        }
        is_joined |= line.contains("buckets open");
    }
    listening
}

/// Waits until a node writes a line containing `text`; false after `JOIN_WAIT`.
fn said(lines: &std::sync::mpsc::Receiver<String>, text: &str) -> bool {
    let deadline = Instant::now() + JOIN_WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(text) => return true,
            Ok(_) => {}
            Err(_) => return false,
        }
    }
}

/// Publishes probes on `topic` from `publisher` until each of `subscribers` got one (NATS
/// spreads a new subscription's interest between its servers a moment after the SUBACK),
/// then drains the probes still on their way.
fn wait_for_route(publisher: &mut Raw, subscribers: &mut [&mut Raw], topic: &str) {
    let deadline = Instant::now() + SETTLE;
    let mut reached = vec![false; subscribers.len()];
    while reached.contains(&false) {
        assert!(
            Instant::now() < deadline,
            "no route from publisher to subscribers on {topic}"
        );
        publisher.publish(topic, b"probe", QoS::AtLeastOnce, false);
        for (i, subscriber) in subscribers.iter_mut().enumerate() {
            if let Ok(Packet::Publish(p)) = subscriber.recv_within(Duration::from_millis(100)) {
                subscriber.ack(&p);
                reached[i] = true;
            }
        }
    }
    for subscriber in subscribers.iter_mut() {
        while let Ok(Packet::Publish(p)) = subscriber.recv_within(QUIET) {
            subscriber.ack(&p);
        }
    }
}

/// The first retained message a new subscriber to `filter` on the node at `addr` gets, asked
/// again by a new subscriber until one arrives (a bucket's change reaches the other nodes a
/// moment after the PUBACK); panics after `SETTLE`.
fn first_retained(addr: SocketAddr, filter: &str) -> ringcast::protocol::Publish {
    let deadline = Instant::now() + SETTLE;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut sub = Raw::connect(addr, &format!("sub{attempt}"));
        sub.subscribe(filter, QoS::AtLeastOnce);
        if let Ok(Packet::Publish(p)) = sub.recv_within(Duration::from_millis(300)) {
            return p;
        }
        assert!(Instant::now() < deadline, "no retained message on {filter}");
    }
}

/// The payloads of the next `n` PUBLISHes.
fn receive(subscriber: &mut Raw, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| String::from_utf8_lossy(&subscriber.recv_publish().payload).into_owned())
        .collect()
}

fn numbered(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("m{i}")).collect()
}

#[test]
fn fan_out_across_nodes_reaches_every_subscriber_once_in_order() {
    let _serial = serial();
    let Some(nats) = Nats::start() else { return };
    let a = Node::start(&nats, "a", 0);
    let b = Node::start(&nats, "b", 1);
    let mut subs: Vec<Raw> = (0..3)
        .map(|i| Raw::connect(b.addr, &format!("sub{i}")))
        .collect();
    for sub in &mut subs {
        assert_eq!(sub.subscribe("fan/x", QoS::AtLeastOnce), [ReasonCode(0x01)]);
    }
    let mut publisher = Raw::connect(a.addr, "pub");
    wait_for_route(
        &mut publisher,
        &mut subs.iter_mut().collect::<Vec<_>>(),
        "fan/x",
    );
    for m in numbered(100) {
        publisher.publish("fan/x", m.as_bytes(), QoS::AtLeastOnce, false);
    }
    for sub in &mut subs {
        assert_eq!(receive(sub, 100), numbered(100));
        sub.expect_nothing();
    }
}

#[test]
fn wildcards_across_three_nodes_and_overlapping_filters_deliver_once() {
    let _serial = serial();
    let Some(nats) = Nats::start() else { return };
    let a = Node::start(&nats, "a", 0);
    let b = Node::start(&nats, "b", 1);
    let c = Node::start(&nats, "c", 2);
    let mut both = Raw::connect(b.addr, "both");
    both.subscribe("w/+/t", QoS::AtLeastOnce);
    both.subscribe("w/#", QoS::AtLeastOnce);
    let mut hash = Raw::connect(c.addr, "hash");
    hash.subscribe("w/#", QoS::AtLeastOnce);
    let mut publisher = Raw::connect(a.addr, "pub");
    wait_for_route(&mut publisher, &mut [&mut both, &mut hash], "w/0/t");
    for i in 0..20 {
        publisher.publish(
            &format!("w/{i}/t"),
            format!("m{i}").as_bytes(),
            QoS::AtLeastOnce,
            false,
        );
    }
    publisher.publish("w", b"parent", QoS::AtLeastOnce, false);
    let mut expected = numbered(20);
    expected.push("parent".into());
    expected.sort();
    // Order holds per topic; these are 21 topics, taken in by the shards in parallel.
    for subscriber in [&mut both, &mut hash] {
        let mut got = receive(subscriber, 21);
        got.sort();
        assert_eq!(got, expected, "each message exactly once");
        subscriber.expect_nothing();
    }
}

#[test]
fn retained_message_of_one_node_is_sent_to_a_new_subscriber_on_another() {
    let _serial = serial();
    let Some(nats) = Nats::start() else { return };
    let a = Node::start(&nats, "a", 0);
    let b = Node::start(&nats, "b", 1);
    let mut publisher = Raw::connect(a.addr, "pub");
    publisher.publish("state/lamp", b"on", QoS::AtLeastOnce, true);
    // The bucket's change reaches node b's replica a moment after the PUBACK.
    let retained = first_retained(b.addr, "state/#");
    assert_eq!(retained.topic.as_str(), "state/lamp");
    assert_eq!(&retained.payload[..], b"on");
    assert!(retained.retain);
}

/// A node started while JetStream cannot place its buckets' 3 replicas (two of the three
/// NATS servers up) says so after its wait, serves its clients alone, and joins once the
/// third server comes: then its retained messages reach the other nodes.
#[test]
fn node_serves_alone_while_its_buckets_cannot_be_placed_and_joins_when_they_can() {
    let _serial = serial();
    let Some(mut nats) = Nats::start_some(2) else {
        return;
    };
    let (late, lines) = Node::launch(&nats, "late", &nats.urls, "", false);
    assert!(
        said(&lines, "serves its clients alone"),
        "node late never said it serves its clients alone"
    );
    // It takes clients meanwhile: their client ids stay claimed on this node alone.
    let mut publisher = Raw::connect(late.addr, "late-pub");
    nats.start_server(2);
    assert!(
        said(&lines, "buckets open"),
        "node late did not join once the third server was up"
    );
    let other = Node::start(&nats, "other", 1);
    publisher.publish("state/lamp", b"on", QoS::AtLeastOnce, true);
    let retained = first_retained(other.addr, "state/#");
    assert_eq!(
        (retained.topic.as_str(), &retained.payload[..]),
        ("state/lamp", &b"on"[..])
    );
}

#[test]
fn killed_node_and_killed_nats_server_leave_the_others_delivering() {
    let _serial = serial();
    let Some(mut nats) = Nats::start() else {
        return;
    };
    let a = Node::start(&nats, "a", 0);
    let b = Node::start(&nats, "b", 1);
    let mut c = Node::start(&nats, "c", 2);
    let mut on_b = Raw::connect(b.addr, "on-b");
    on_b.subscribe("k/t", QoS::AtLeastOnce);
    let mut on_c = Raw::connect(c.addr, "on-c");
    on_c.subscribe("k/t", QoS::AtLeastOnce);
    let mut publisher = Raw::connect(a.addr, "pub");
    wait_for_route(&mut publisher, &mut [&mut on_b, &mut on_c], "k/t");
    c.kill();
    on_c.expect_closed();
    // The client of the dead node comes back on a surviving one.
    let mut moved = Raw::connect(b.addr, "on-c");
    moved.subscribe("k/t", QoS::AtLeastOnce);
    for m in numbered(50) {
        publisher.publish("k/t", m.as_bytes(), QoS::AtLeastOnce, false);
    }
    assert_eq!(receive(&mut on_b, 50), numbered(50));
    assert_eq!(receive(&mut moved, 50), numbered(50));
    // Node a's first NATS server dies: its client moves to another, traffic goes on, and
    // every message acknowledged from now on arrives.
    nats.kill(0);
    let second: Vec<String> = (50..100).map(|i| format!("m{i}")).collect();
    for m in &second {
        publisher.publish("k/t", m.as_bytes(), QoS::AtLeastOnce, false);
    }
    let got = receive(&mut on_b, 50);
    assert_eq!(got, second);
    drop(a);
}

/// A TCP proxy in front of a NATS server that can stop passing what its clients send while
/// still taking it (as a server that died with a full socket buffer would), and cut its
/// connections.
struct NatsProxy {
    url: String,
    swallowing: std::sync::Arc<std::sync::atomic::AtomicBool>,
    open: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl NatsProxy {
    fn start(server: &str) -> NatsProxy {
        use std::sync::atomic::AtomicBool;
        use std::sync::{Arc, Mutex};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("nats://{}", listener.local_addr().unwrap());
        let server = server.trim_start_matches("nats://").to_string();
        let swallowing = Arc::new(AtomicBool::new(false));
        let open = Arc::new(Mutex::new(Vec::new()));
        let (flag, conns) = (swallowing.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(upstream) = std::net::TcpStream::connect(&server) else {
                    continue;
                };
                conns.lock().unwrap().push(client.try_clone().unwrap());
                pass(
                    upstream.try_clone().unwrap(),
                    client.try_clone().unwrap(),
                    None,
                );
                pass(client, upstream, Some(flag.clone()));
            }
        });
        NatsProxy {
            url,
            swallowing,
            open,
        }
    }

    /// From now on what clients send is read and dropped.
    fn swallow(&self) {
        self.swallowing
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Closes every connection so far and passes traffic again.
    fn cut(&self) {
        for conn in self.open.lock().unwrap().drain(..) {
            let _ = conn.shutdown(std::net::Shutdown::Both);
        }
        self.swallowing
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Copies `from` to `to` on a thread of its own until either closes; while `swallowing` is
/// set, drops what it reads instead.
fn pass(
    mut from: std::net::TcpStream,
    mut to: std::net::TcpStream,
    swallowing: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
) {
    use std::io::{Read, Write};
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 << 10];
        loop {
            let n = match from.read(&mut buf) {
                // The broker's threads share this process; their signals interrupt reads.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let drop_it = swallowing
                .as_ref()
                .is_some_and(|s| s.load(std::sync::atomic::Ordering::SeqCst));
            if !drop_it && to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Both);
        let _ = from.shutdown(std::net::Shutdown::Both);
    });
}

/// The NATS client's flush only means the bytes left for the socket: a QoS 1 PUBACK waits for
/// the server's answer to a request sent after the message, and what a server took into its
/// socket and never handled is published again on the next connection.
#[test]
fn qos_1_puback_waits_until_the_nats_server_answered_and_nothing_acknowledged_is_lost() {
    let _serial = serial();
    let Some(nats) = Nats::start() else { return };
    let proxy = NatsProxy::start(&nats.urls[0]);
    let a = Node::start_on(&nats, "a", &[proxy.url.clone(), nats.urls[1].clone()], "");
    let b = Node::start(&nats, "b", 1);
    let mut on_b = Raw::connect(b.addr, "on-b");
    on_b.subscribe("k/t", QoS::AtLeastOnce);
    let mut publisher = Raw::connect(a.addr, "pub");
    wait_for_route(&mut publisher, &mut [&mut on_b], "k/t");
    proxy.swallow();
    publisher.send(&publish_packet("k/t", b"kept", QoS::AtLeastOnce, false, 7));
    // Twice `QUIET`: long enough for a PUBACK sent on the socket write alone.
    publisher.expect_nothing();
    publisher.expect_nothing();
    proxy.cut();
    assert!(matches!(publisher.recv(), Packet::PubAck(ack) if ack.pkid == 7));
    assert_eq!(receive(&mut on_b, 1), ["kept"]);
    on_b.expect_nothing();
}

/// A 5.0 CONNECT that keeps its session for an hour after the connection.
fn lasting_v5(client_id: &str, clean: bool) -> ringcast::protocol::Connect {
    let mut connect = connect_packet(client_id, Version::V5, clean);
    connect.properties.session_expiry_interval = Some(3600);
    connect
}

/// Sends `connect`: the CONNACK, or None when the broker closed the connection instead (a
/// newer connection with the client id took over while this one was being accepted).
fn try_connect(addr: SocketAddr, connect: ringcast::protocol::Connect) -> Option<(Raw, bool)> {
    let mut raw = Raw::open(addr, connect.version);
    raw.send(&Packet::Connect(Box::new(connect)));
    match raw.recv_within(WAIT) {
        Ok(Packet::ConnAck(ack)) if ack.code == ReasonCode::SUCCESS => {
            Some((raw, ack.session_present))
        }
        Ok(other) => panic!("expected CONNACK, got {other:?}"),
        Err(_) => None,
    }
}

/// The payloads of the next `n` PUBLISHes, with their QoS 1/2 flows completed as the broker
/// interleaves them (a PUBLISH may come between a PUBREC and its PUBREL).
fn receive_flows(raw: &mut Raw, n: usize) -> Vec<String> {
    use ringcast::protocol::Ack;
    let mut got = Vec::new();
    let mut releasing = std::collections::HashSet::new();
    while got.len() < n || !releasing.is_empty() {
        match raw.recv() {
            Packet::Publish(p) => {
                got.push(String::from_utf8_lossy(&p.payload).into_owned());
                let ack = Ack {
                    pkid: p.pkid,
                    ..Ack::default()
                };
                match p.qos {
                    QoS::AtMostOnce => {}
                    QoS::AtLeastOnce => raw.send(&Packet::PubAck(ack)),
                    QoS::ExactlyOnce => {
                        releasing.insert(p.pkid);
                        raw.send(&Packet::PubRec(ack));
                    }
                }
            }
            Packet::PubRel(r) => {
                assert!(releasing.remove(&r.pkid), "PUBREL for {} unasked", r.pkid);
                raw.send(&Packet::PubComp(r));
            }
            other => panic!("expected PUBLISH or PUBREL, got {other:?}"),
        }
    }
    got
}

/// The next PUBLISH, not acknowledged.
fn recv_unacked(raw: &mut Raw) -> ringcast::protocol::Publish {
    match raw.recv() {
        Packet::Publish(p) => p,
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}

fn taken_over(closing: &[Packet]) -> bool {
    closing
        .iter()
        .any(|p| matches!(p, Packet::Disconnect(d) if d.reason == ReasonCode::SESSION_TAKEN_OVER))
}

#[test]
fn mqtt_3_1_4_3_client_id_connecting_to_a_second_node_takes_over_the_session_of_the_first() {
    let _serial = serial();
    let Some(nats) = Nats::start() else { return };
    let a = Node::start(&nats, "a", 0);
    let b = Node::start(&nats, "b", 1);
    let (mut first, _) = Raw::connect_with(a.addr, lasting_v5("dev-1", true));
    first.subscribe("dev/1/cmd", QoS::AtLeastOnce);
    let (mut second, ack) = Raw::connect_with(b.addr, lasting_v5("dev-1", false));
    let closing = first.expect_closed();
    assert!(
        taken_over(&closing),
        "the first connection gets DISCONNECT 0x8E, got {closing:?}"
    );
    assert!(ack.session_present, "the session came with the client id");
    // Its subscription came too, and routes on the new node.
    let mut publisher = Raw::connect(a.addr, "pub");
    wait_for_route(&mut publisher, &mut [&mut second], "dev/1/cmd");
    publisher.publish("dev/1/cmd", b"on", QoS::AtLeastOnce, false);
    assert_eq!(receive(&mut second, 1), ["on"]);
}

#[test]
fn persistent_session_moves_to_another_node_with_queued_and_unfinished_qos1_and_qos2() {
    let _serial = serial();
    let Some(nats) = Nats::start() else { return };
    let a = Node::start(&nats, "a", 0);
    let b = Node::start(&nats, "b", 1);
    let (mut mover, _) = Raw::connect_with(a.addr, connect_packet("mover", Version::V311, false));
    mover.subscribe("mv/1", QoS::AtLeastOnce);
    mover.subscribe("mv/2", QoS::ExactlyOnce);
    let mut publisher = Raw::connect(a.addr, "pub");
    // In flight when the client leaves: a QoS 1 PUBLISH not acknowledged, and a QoS 2 one
    // whose PUBREC was sent (PUBREL is next).
    publisher.publish("mv/1", b"unacked", QoS::AtLeastOnce, false);
    let unacked = recv_unacked(&mut mover);
    publisher.publish("mv/2", b"released", QoS::ExactlyOnce, false);
    let released = recv_unacked(&mut mover);
    mover.send(&Packet::PubRec(ringcast::protocol::Ack {
        pkid: released.pkid,
        ..Default::default()
    }));
    assert!(matches!(mover.recv(), Packet::PubRel(r) if r.pkid == released.pkid));
    mover.close_without_disconnect();
    // Queued while it is away.
    for i in 0..5 {
        publisher.publish(
            "mv/1",
            format!("q1-{i}").as_bytes(),
            QoS::AtLeastOnce,
            false,
        );
        publisher.publish(
            "mv/2",
            format!("q2-{i}").as_bytes(),
            QoS::ExactlyOnce,
            false,
        );
    }
    let (mut moved, ack) = Raw::connect_with(b.addr, connect_packet("mover", Version::V311, false));
    assert!(ack.session_present, "Session Present 1 on the new node");
    // The unfinished flows resume with their packet ids [MQTT-4.4.0-1].
    match moved.recv() {
        Packet::Publish(p) => {
            assert_eq!(
                (p.pkid, &p.payload[..], p.dup),
                (unacked.pkid, &b"unacked"[..], true)
            );
            moved.ack(&p);
        }
        other => panic!("expected the unacknowledged PUBLISH again, got {other:?}"),
    }
    match moved.recv() {
        Packet::PubRel(r) => {
            assert_eq!(r.pkid, released.pkid);
            moved.send(&Packet::PubComp(r));
        }
        other => panic!("expected the PUBREL again, got {other:?}"),
    }
    let mut got = receive_flows(&mut moved, 10);
    got.sort();
    let mut expected: Vec<String> = (0..5)
        .flat_map(|i| [format!("q1-{i}"), format!("q2-{i}")])
        .collect();
    expected.sort();
    assert_eq!(got, expected, "every queued message, QoS 2 exactly once");
    moved.expect_nothing();
    // Its subscriptions route to the new node; the old node holds nothing of it.
    wait_for_route(&mut publisher, &mut [&mut moved], "mv/1");
    publisher.publish("mv/2", b"after", QoS::ExactlyOnce, false);
    assert_eq!(receive_flows(&mut moved, 1), ["after"]);
    moved.expect_nothing();
}

#[test]
fn simultaneous_connects_of_one_client_id_on_two_nodes_leave_exactly_one() {
    let _serial = serial();
    let Some(nats) = Nats::start() else { return };
    let a = Node::start(&nats, "a", 0);
    let b = Node::start(&nats, "b", 1);
    let (mut held, _) = Raw::connect_with(a.addr, lasting_v5("twin", true));
    held.subscribe("twin/cmd", QoS::AtLeastOnce);
    held.disconnect();
    let racers: Vec<_> = [a.addr, b.addr]
        .into_iter()
        .map(|addr| std::thread::spawn(move || try_connect(addr, lasting_v5("twin", false))))
        .collect();
    let mut open: Vec<(Raw, bool)> = racers
        .into_iter()
        .filter_map(|racer| racer.join().unwrap())
        .collect();
    // The loser is closed (0x8E) once the winner's claim reaches it; the winner stays.
    let deadline = Instant::now() + SETTLE;
    while open.len() > 1 {
        assert!(Instant::now() < deadline, "both connections stay open");
        open.retain_mut(|(raw, _)| {
            raw.send(&Packet::PingReq);
            loop {
                match raw.recv_within(Duration::from_millis(200)) {
                    Ok(Packet::PingResp) => return true,
                    Ok(_) => continue,
                    Err(NoPacket::Closed) => return false,
                    Err(NoPacket::Timeout) => return true,
                }
            }
        });
    }
    let (mut winner, session_present) = open.pop().expect("one connection stays");
    // Past the backstop's wait, the winner is still connected, with the session.
    std::thread::sleep(Duration::from_secs(6));
    winner.send(&Packet::PingReq);
    assert!(
        matches!(winner.recv(), Packet::PingResp),
        "the winner stays"
    );
    assert!(session_present, "the winner has the session");
}

/// The count of sessions (connected or not) node `addr` reports in `$SYS`, as a client
/// subscribed to it reads them.
fn sessions_reported(sys: &mut Raw) -> u64 {
    loop {
        let p = sys.recv_publish();
        if p.topic.as_str() == "$SYS/broker/clients/total" {
            return String::from_utf8_lossy(&p.payload).trim().parse().unwrap();
        }
    }
}

#[test]
fn node_killed_and_restarted_with_its_data_keeps_sessions_that_stayed_and_drops_one_that_moved() {
    let _serial = serial();
    let Some(nats) = Nats::start() else { return };
    let fast_sys = "sys_interval_secs = 1";
    let mut a = Node::start_with(&nats, "a", 0, fast_sys);
    let b = Node::start(&nats, "b", 1);
    for id in ["stay", "go"] {
        let (mut client, _) = Raw::connect_with(a.addr, connect_packet(id, Version::V311, false));
        client.subscribe(&format!("{id}/x"), QoS::AtLeastOnce);
        client.disconnect();
    }
    let mut publisher = Raw::connect(a.addr, "pub");
    publisher.publish("stay/x", b"kept", QoS::AtLeastOnce, false);
    drop(publisher);
    a.kill();
    // Its node is down: the session cannot be handed over, and starts afresh on b.
    let (gone, ack) = Raw::connect_with(b.addr, connect_packet("go", Version::V311, false));
    assert!(
        !ack.session_present,
        "a fresh session while its node is down"
    );
    gone.disconnect();
    let a = Node::start_with(&nats, "a", 0, fast_sys);
    // The stored copy of "go" is dropped: the owner record names b. ("sys" is the third.)
    let mut sys = Raw::connect(a.addr, "sys");
    sys.subscribe("$SYS/broker/clients/total", QoS::AtMostOnce);
    let deadline = Instant::now() + SETTLE;
    while sessions_reported(&mut sys) != 2 {
        assert!(
            Instant::now() < deadline,
            "node a kept the session that moved"
        );
    }
    // "stay" never moved: its session and its queued message survived the kill.
    let (mut stay, ack) = Raw::connect_with(a.addr, connect_packet("stay", Version::V311, false));
    assert!(ack.session_present, "the stored session is back");
    assert_eq!(receive(&mut stay, 1), ["kept"]);
}

#[test]
fn shared_subscription_spreads_over_nodes_one_member_per_message() {
    let _serial = serial();
    let Some(nats) = Nats::start() else { return };
    let a = Node::start(&nats, "a", 0);
    let b = Node::start(&nats, "b", 1);
    let mut on_a = Raw::connect(a.addr, "member-a");
    on_a.subscribe("$share/g/job", QoS::AtLeastOnce);
    let mut on_b = Raw::connect(b.addr, "member-b");
    on_b.subscribe("$share/g/job", QoS::AtLeastOnce);
    let mut watcher = Raw::connect(b.addr, "watcher");
    watcher.subscribe("job", QoS::AtLeastOnce);
    let mut publisher = Raw::connect(a.addr, "pub");
    wait_for_route(&mut publisher, &mut [&mut watcher], "job");
    // The probes went to the group too: drain both members.
    for member in [&mut on_a, &mut on_b] {
        while let Ok(Packet::Publish(p)) = member.recv_within(QUIET) {
            member.ack(&p);
        }
    }
    let n = 200;
    for m in numbered(n) {
        publisher.publish("job", m.as_bytes(), QoS::AtLeastOnce, false);
    }
    assert_eq!(receive(&mut watcher, n), numbered(n));
    let mut got = Vec::new();
    for member in [&mut on_a, &mut on_b] {
        let mut mine = Vec::new();
        while let Ok(Packet::Publish(p)) = member.recv_within(QUIET) {
            member.ack(&p);
            mine.push(String::from_utf8_lossy(&p.payload).into_owned());
        }
        assert!(!mine.is_empty(), "each node's member gets a share");
        got.extend(mine);
    }
    got.sort();
    let mut expected = numbered(n);
    expected.sort();
    assert_eq!(got, expected, "every message reaches exactly one member");
}

/// The subject mapping against a real nats-server: for a sample of filters and topics (the
/// awkward levels of the property test), a mapped filter receives a mapped topic exactly when
/// the MQTT filter matches the MQTT topic.
#[test]
fn subject_mapping_matches_like_a_real_nats_server() {
    use futures_lite::StreamExt;
    use ringcast::cluster::subject::{filter_subjects, topic_subject};
    use ringcast::protocol::topic::filter_matches;
    let _serial = serial();
    let Some(nats) = Nats::start() else {
        return;
    };
    let filters = [
        "#", "+", "a/#", "a/+", "+/b", "a//b", "a/+/b", "$SYS/#", "+/#", "v1.2/#", "x y/+", "*",
        ">", "=", "é/+", "/#", "a/b/#",
    ];
    let topics = [
        "a", "a/b", "a//b", "a/x/b", "$SYS/up", "$x", "v1.2/q", "v1/2/q", "x y/z", "*", ">", "=",
        "é/1", "/", "/a", "a/b/c", "b",
    ];
    let url = nats.urls[0].clone();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let received = runtime.block_on(async move {
        let client = async_nats::connect(url)
            .await
            .expect("connect to nats-server");
        let (found, mut got) = tokio::sync::mpsc::unbounded_channel();
        for (i, filter) in filters.iter().enumerate() {
            for subject in filter_subjects(filter) {
                let mut subscriber = client.subscribe(subject).await.unwrap();
                let found = found.clone();
                tokio::spawn(async move {
                    while let Some(m) = subscriber.next().await {
                        let _ = found.send((i, m.subject.to_string()));
                    }
                });
            }
        }
        client.flush().await.unwrap();
        for topic in topics {
            client
                .publish(topic_subject(topic), "x".into())
                .await
                .unwrap();
        }
        client.flush().await.unwrap();
        let mut received = std::collections::BTreeSet::new();
        while let Ok(Some((i, subject))) =
            tokio::time::timeout(Duration::from_millis(500), got.recv()).await
        {
            received.insert((i, subject));
        }
        received
    });
    let expected: std::collections::BTreeSet<(usize, String)> = filters
        .iter()
        .enumerate()
        .flat_map(|(i, f)| {
            topics
                .iter()
                .filter(move |t| filter_matches(f, t))
                .map(move |t| (i, topic_subject(t)))
        })
        .collect();
    assert_eq!(received, expected);
    assert!(expected.len() > 20, "the sample has matches");
}

/// MQTT 5.0 properties across nodes, with rumqttc's v5 client on each node.
mod properties {
    use super::*;
    use bytes::Bytes;
    use rumqttc::v5::mqttbytes::v5::{Packet as P, Publish as P5, PublishProperties};
    use rumqttc::v5::mqttbytes::QoS as Q;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    use tokio::sync::mpsc::UnboundedReceiver;

    fn block_on<F: std::future::Future<Output = ()>>(body: F) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
            .block_on(body)
    }

    /// A v5 client whose event loop runs in a task of its own, its events in a channel (so a
    /// wait with a time limit never cuts a poll of the event loop in half).
    struct V5 {
        client: AsyncClient,
        events: UnboundedReceiver<Event>,
    }

    impl V5 {
        /// Connects to `addr`; `persistent`: Clean Start 0 and a session that outlives the
        /// connection.
        async fn connect(addr: SocketAddr, id: &str, persistent: bool) -> V5 {
            let mut options = MqttOptions::new(id, "127.0.0.1", addr.port());
            options.set_keep_alive(Duration::from_secs(30));
            if persistent {
                options.set_clean_start(false);
                options.set_session_expiry_interval(Some(600));
            }
            let (client, mut event_loop) = AsyncClient::new(options, 64);
            let (found, events) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(async move {
                while let Ok(event) = event_loop.poll().await {
                    if found.send(event).is_err() {
                        return;
                    }
                }
            });
            let mut v5 = V5 { client, events };
            v5.until(WAIT, |e| {
                matches!(e, Event::Incoming(P::ConnAck(_))).then_some(())
            })
            .await
            .expect("CONNACK");
            v5
        }

        /// The first event `pick` finds within `limit`.
        async fn until<T>(
            &mut self,
            limit: Duration,
            mut pick: impl FnMut(&Event) -> Option<T>,
        ) -> Option<T> {
            let wait = async {
                while let Some(event) = self.events.recv().await {
                    if let Some(found) = pick(&event) {
                        return Some(found);
                    }
                }
                None
            };
            tokio::time::timeout(limit, wait).await.ok().flatten()
        }

        async fn subscribe(&mut self, filter: &str) {
            self.client.subscribe(filter, Q::AtLeastOnce).await.unwrap();
            let suback = |e: &Event| matches!(e, Event::Incoming(P::SubAck(_))).then_some(());
            self.until(WAIT, suback).await.expect("SUBACK");
        }

        async fn publish(&mut self, topic: &str, payload: &str, properties: PublishProperties) {
            let payload = payload.to_string();
            self.client
                .publish_with_properties(topic, Q::AtLeastOnce, false, payload, properties)
                .await
                .unwrap();
            let puback = |e: &Event| matches!(e, Event::Incoming(P::PubAck(_))).then_some(());
            self.until(WAIT, puback).await.expect("PUBACK");
        }

        async fn next_publish(&mut self, limit: Duration) -> Option<P5> {
            self.until(limit, |e| match e {
                Event::Incoming(P::Publish(p)) => Some(p.clone()),
                _ => None,
            })
            .await
        }

        /// Publishes probes on `topic` until `to` got one (NATS spreads a subscription's
        /// interest between its servers a moment after the SUBACK), then drains the rest.
        async fn warm_route(&mut self, to: &mut V5, topic: &str) {
            let deadline = Instant::now() + SETTLE;
            loop {
                assert!(Instant::now() < deadline, "no route on {topic}");
                self.publish(topic, "probe", PublishProperties::default())
                    .await;
                if to.next_publish(Duration::from_millis(100)).await.is_some() {
                    break;
                }
            }
            while to.next_publish(QUIET).await.is_some() {}
        }

        async fn disconnect(mut self) {
            self.client.disconnect().await.unwrap();
            // The event loop ends once the connection is closed.
            while self.until(WAIT, |_| None::<()>).await.is_some() {}
        }
    }

    fn text(bytes: &Bytes) -> String {
        String::from_utf8_lossy(bytes).into_owned()
    }

    #[test]
    fn mqtt5_properties_cross_nodes_intact_and_request_response_works() {
        let _serial = serial();
        let Some(nats) = Nats::start() else { return };
        let a = Node::start(&nats, "a", 0);
        let b = Node::start(&nats, "b", 1);
        let url = nats.urls[1].clone();
        block_on(async move {
            let mut requester = V5::connect(a.addr, "requester", false).await;
            let mut responder = V5::connect(b.addr, "responder", false).await;
            requester.subscribe("svc/replies/requester").await;
            responder.subscribe("svc/requests").await;
            requester.warm_route(&mut responder, "svc/requests").await;
            responder
                .warm_route(&mut requester, "svc/replies/requester")
                .await;
            let user_properties = vec![
                ("b".to_string(), "1".to_string()),
                ("a".to_string(), "2".to_string()),
                ("b".to_string(), "3".to_string()),
            ];
            let sent = PublishProperties {
                payload_format_indicator: Some(1),
                message_expiry_interval: Some(3600),
                content_type: Some("application/json".into()),
                response_topic: Some("svc/replies/requester".into()),
                correlation_data: Some(Bytes::from_static(b"\x00req-7\xff")),
                user_properties: user_properties.clone(),
                ..Default::default()
            };
            requester
                .publish("svc/requests", "{\"op\":1}", sent.clone())
                .await;
            let request = responder.next_publish(WAIT).await.expect("the request");
            assert_eq!(text(&request.payload), "{\"op\":1}");
            let got = request.properties.expect("properties crossed");
            assert_eq!(got.payload_format_indicator, Some(1));
            assert_eq!(got.content_type, sent.content_type);
            assert_eq!(got.response_topic, sent.response_topic);
            assert_eq!(got.correlation_data, sent.correlation_data);
            assert_eq!(got.user_properties, user_properties, "order kept");
            assert!(got.message_expiry_interval.is_some_and(|s| s <= 3600));
            assert_eq!(got.topic_alias, None);
            assert!(got.subscription_identifiers.is_empty());

            // The responder answers where the request says, with its correlation data.
            let answer = PublishProperties {
                correlation_data: got.correlation_data.clone(),
                ..Default::default()
            };
            let reply_to = got.response_topic.clone().unwrap();
            responder.publish(&reply_to, "done", answer).await;
            let reply = requester.next_publish(WAIT).await.expect("the reply");
            assert_eq!(text(&reply.topic), "svc/replies/requester");
            assert_eq!(text(&reply.payload), "done");
            let reply_props = reply.properties.expect("correlation data crossed back");
            assert_eq!(reply_props.correlation_data, sent.correlation_data);

            // A message node b cannot read is refused and counted; node b carries on.
            let raw = async_nats::connect(url)
                .await
                .expect("connect to nats-server");
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Rc-Flags", "1-");
            headers.insert("Rc-Props", "9:unknown-format");
            let subject = ringcast::cluster::subject::topic_subject("svc/requests");
            raw.publish_with_headers(subject, headers, "bad".into())
                .await
                .unwrap();
            raw.flush().await.unwrap();
            requester
                .publish("svc/requests", "after", PublishProperties::default())
                .await;
            let next = responder.next_publish(WAIT).await.expect("node b delivers");
            assert_eq!(
                text(&next.payload),
                "after",
                "the bad message is not delivered"
            );
            responder
                .subscribe("$SYS/broker/ringcast/cluster/rejected")
                .await;
            let counted = async {
                loop {
                    let p = responder.next_publish(SETTLE).await.expect("$SYS count");
                    if text(&p.payload).parse::<u64>().is_ok_and(|n| n >= 1) {
                        return;
                    }
                }
            };
            tokio::time::timeout(SETTLE, counted)
                .await
                .expect("the refused message is counted on $SYS");
        });
    }

    #[test]
    fn mqtt_3_3_2_6_expiry_keeps_counting_down_across_nodes_and_expired_is_dropped() {
        let _serial = serial();
        let Some(nats) = Nats::start() else { return };
        let a = Node::start(&nats, "a", 0);
        let b = Node::start(&nats, "b", 1);
        block_on(async move {
            let mut subscriber = V5::connect(b.addr, "late", true).await;
            subscriber.subscribe("exp/t").await;
            let mut publisher = V5::connect(a.addr, "pub", false).await;
            publisher.warm_route(&mut subscriber, "exp/t").await;
            subscriber.disconnect().await;
            let expiring = |secs| PublishProperties {
                message_expiry_interval: Some(secs),
                ..Default::default()
            };
            publisher.publish("exp/t", "short", expiring(1)).await;
            publisher.publish("exp/t", "long", expiring(10)).await;
            // Both wait on node b in the offline session; the short one runs out meanwhile.
            tokio::time::sleep(Duration::from_millis(2200)).await;
            let mut subscriber = V5::connect(b.addr, "late", true).await;
            let got = subscriber.next_publish(WAIT).await.expect("the long one");
            assert_eq!(text(&got.payload), "long", "the expired one is not sent");
            let left = got.properties.and_then(|p| p.message_expiry_interval);
            assert!(
                left.is_some_and(|s| (1..=8).contains(&s)),
                "10 s less the 2.2 s it waited, rounded up: {left:?}"
            );
            assert!(subscriber.next_publish(QUIET).await.is_none());
        });
    }
}
