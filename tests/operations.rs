//! Operating the `ringcast` binary: SIGHUP applies the limits of new connections and names
//! what needs a restart, `--log-format json` writes one JSON object per line with no colour
//! codes, and refused connections are logged once per address per interval.

mod common;

use bytes::Bytes;
use common::Raw;
use ringcast::protocol::{MqttString, Packet, Version};
use ringcast::security::password::hash_password;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

/// How long a test waits for a log line before failing.
const LOG_WAIT: Duration = Duration::from_secs(15);

/// A broker process with its log lines arriving on a channel.
struct Process {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
    addr: SocketAddr,
}

impl Process {
    fn start(config: &Path) -> Process {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ringcast"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--shards",
                "2",
                "--log-format",
                "json",
            ])
            .arg("--config")
            .arg(config)
            .arg("--data-dir")
            .arg(config.with_extension("data"))
            .env_remove("RUST_LOG")
            .env_remove("NO_COLOR")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the broker starts");
        let stdout = child.stdout.take().expect("stdout");
        let (send, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    return;
                }
            }
        });
        let mut process = Process {
            child,
            lines,
            seen: Vec::new(),
            addr: "0.0.0.0:0".parse().unwrap(),
        };
        let line = process.wait_for(|l| l.contains("ringcast listening on "));
        let message = message(&line);
        let addr = message.rsplit(' ').next().expect("an address");
        process.addr = addr.parse().expect("a socket address");
        process
    }

    /// Waits for a log line that `want` accepts; returns it.
    fn wait_for(&mut self, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + LOG_WAIT;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let Ok(line) = self.lines.recv_timeout(left) else {
                break;
            };
            self.seen.push(line.clone());
            if want(&line) {
                return line;
            }
        }
        panic!("no such log line; seen: {:#?}", self.seen);
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args([signal, &pid]).status();
        assert!(status.is_ok_and(|s| s.success()));
    }

    /// Stops the broker and returns every line it logged.
    fn stop(mut self) -> Vec<String> {
        self.signal("-TERM");
        let exited = common::wait_exit(&mut self.child, Duration::from_secs(20));
        assert!(exited.is_some(), "the broker stops on SIGTERM");
        self.seen.extend(self.lines.try_iter());
        self.seen
    }
}

/// The `fields.message` of a JSON log line.
fn message(line: &str) -> String {
    let value: serde_json::Value = serde_json::from_str(line).expect("a JSON log line");
    value["fields"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ringcast-ops-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// The Receive Maximum a new 5.0 connection is told.
fn receive_maximum(addr: SocketAddr, client_id: &str) -> (Raw, Option<u16>) {
    let connect = common::connect_packet(client_id, Version::V5, true);
    let (raw, connack) = Raw::connect_with(addr, connect);
    (raw, connack.properties.receive_maximum)
}

#[test]
fn sighup_applies_connection_limits_to_new_connections_and_names_what_needs_a_restart() {
    let dir = temp_dir("reload");
    let config = dir.join("ringcast.toml");
    std::fs::write(&config, "[limits]\nreceive_max = 100\n").unwrap();
    let mut broker = Process::start(&config);
    let (before, max) = receive_maximum(broker.addr, "before");
    assert_eq!(max, Some(100));
    std::fs::write(
        &config,
        "[limits]\nreceive_max = 50\nqueue_messages_max = 77\n",
    )
    .unwrap();
    broker.signal("-HUP");
    let applied = broker.wait_for(|l| message(l).contains("limits.receive_max: 100 → 50"));
    assert!(message(&applied).contains("new connections"), "{applied}");
    let restart = broker.wait_for(|l| message(l).contains("limits.queue_messages_max"));
    assert!(message(&restart).contains("needs a restart"), "{restart}");
    let (_after, max) = receive_maximum(broker.addr, "after");
    assert_eq!(max, Some(50));
    drop(before);
    let lines = broker.stop();
    // --log-format json: every line is one JSON object, and no line has colour codes.
    for line in &lines {
        assert!(!line.contains('\u{1b}'), "escape sequence in {line:?}");
        serde_json::from_str::<serde_json::Value>(line).expect("a JSON log line");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn refused_connections_are_logged_with_their_reason_once_per_address_per_interval() {
    let dir = temp_dir("refusals");
    let passwd = dir.join("passwd");
    let hash = hash_password(b"secret", 1000).unwrap();
    std::fs::write(&passwd, format!("admin:{hash}\n")).unwrap();
    let config = dir.join("ringcast.toml");
    let text = format!("password_file = {:?}\n", passwd.display().to_string());
    std::fs::write(&config, text).unwrap();
    let mut broker = Process::start(&config);
    // Connections are placed on the shards in turn: four cover both shards twice.
    for i in 0..4 {
        let mut connect = common::connect_packet(&format!("bad-{i}"), Version::V311, true);
        connect.username = MqttString::from_str_checked("admin");
        connect.password = Some(Bytes::from_static(b"wrong"));
        let mut raw = Raw::open(broker.addr, Version::V311);
        raw.send(&Packet::Connect(Box::new(connect)));
        let answer = raw.expect_closed();
        assert!(matches!(answer.first(), Some(Packet::ConnAck(a)) if a.code.0 == 5));
    }
    broker.wait_for(|l| message(l).contains("refused: login refused"));
    let lines = broker.stop();
    let refusals: Vec<String> = lines
        .iter()
        .map(|l| message(l))
        .filter(|m| m.contains("refused"))
        .collect();
    // One line per shard that refused (each shard keeps its own interval), not one per try.
    assert!(
        (1..=2).contains(&refusals.len()),
        "refusals logged: {refusals:#?}"
    );
    for refusal in &refusals {
        assert!(refusal.starts_with("connection from 127.0.0.1 refused: login refused"));
    }
    let _ = std::fs::remove_dir_all(&dir);
}
