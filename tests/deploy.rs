//! The files in `deploy/` hold what the broker needs: the seccomp profile allows io_uring and
//! every system call a running broker makes (checked under `strace`), the systemd unit raises
//! the limits io_uring and many connections need.

mod common;

use common::{tool_missing, Raw};
use ringcast::protocol::{QoS, Version};
use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::Duration;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The system calls the seccomp profile allows.
fn allowed_syscalls() -> BTreeSet<String> {
    let text = std::fs::read_to_string(format!("{ROOT}/deploy/seccomp.json")).expect("profile");
    let profile: serde_json::Value = serde_json::from_str(&text).expect("the profile is JSON");
    assert_eq!(profile["defaultAction"], "SCMP_ACT_ERRNO");
    let groups = profile["syscalls"].as_array().expect("a syscalls list");
    groups
        .iter()
        .filter(|g| g["action"] == "SCMP_ACT_ALLOW")
        .flat_map(|g| g["names"].as_array().cloned().unwrap_or_default())
        .filter_map(|n| n.as_str().map(str::to_string))
        .collect()
}

#[test]
fn the_seccomp_profile_allows_io_uring() {
    let allowed = allowed_syscalls();
    for call in ["io_uring_setup", "io_uring_enter", "io_uring_register"] {
        assert!(
            allowed.contains(call),
            "{call} missing from deploy/seccomp.json"
        );
    }
}

#[test]
fn the_systemd_unit_raises_memlock_and_open_files() {
    let unit = std::fs::read_to_string(format!("{ROOT}/deploy/ringcast.service")).expect("unit");
    assert!(unit.lines().any(|l| l.starts_with("LimitMEMLOCK=")));
    assert!(unit.lines().any(|l| l.starts_with("LimitNOFILE=")));
    assert!(unit.contains("ExecReload=/bin/kill -HUP $MAINPID"));
}

#[test]
fn the_example_config_is_valid_and_listens_for_mqtt_and_websocket() {
    let path = std::path::PathBuf::from(format!("{ROOT}/deploy/ringcast.toml"));
    let config = ringcast::config::load_layers(&[&path]).expect("the example parses");
    config.validate().expect("the example is valid");
    let listeners = config.listeners();
    let ports: Vec<u16> = listeners.iter().map(|l| l.address.port()).collect();
    assert_eq!(ports, [1883, 8083]);
    assert_eq!(config.http_users, ["admin"]);
}

/// Names of the system calls in an `strace -f -o` file.
fn traced_calls(trace: &str) -> BTreeSet<String> {
    trace
        .lines()
        .filter_map(|line| {
            let call = line.split_once(' ')?.1.trim_start();
            let name = &call[..call.find('(')?];
            name.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                .then(|| name.to_string())
        })
        .filter(|name| !name.is_empty())
        .collect()
}

#[test]
fn every_system_call_of_a_running_broker_is_in_the_seccomp_profile() {
    if Command::new("strace").arg("-V").output().is_err() {
        tool_missing("strace is not installed");
        return;
    }
    let dir = std::env::temp_dir().join(format!("ringcast-deploy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let trace_file = dir.join("trace");
    let mut broker = Command::new("strace")
        .args(["-f", "-qq", "-o"])
        .arg(&trace_file)
        .arg(env!("CARGO_BIN_EXE_ringcast"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--shards",
            "2",
            "--log-level",
            "info",
        ])
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("strace starts");
    let stdout = broker.stdout.take().expect("stdout");
    let addr = common::listening_addr(stdout, Duration::from_secs(20)).expect("broker listens");
    // Connections on both shards, QoS 0, 1 and 2 both ways, a retained message, both versions.
    let mut sub = Raw::connect(addr, "deploy-sub");
    sub.subscribe("deploy/#", QoS::ExactlyOnce);
    let connect = common::connect_packet("deploy-pub", Version::V5, true);
    let (mut publisher, _) = Raw::connect_with(addr, connect);
    // A connection refused for a CONNECT that does not decode (the refusal is logged).
    let mut refused = Raw::open(addr, Version::V311);
    refused.send_bytes(&[0x10, 0x02, 0xff, 0xff]);
    refused.expect_closed();
    for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        publisher.publish(&format!("deploy/{i}"), b"payload", qos, i == 1);
        sub.recv_publish();
    }
    // A reload, then a shutdown with connections open.
    // Signals go to the broker itself, strace's child (strace does not pass them on).
    let children = format!("/proc/{0}/task/{0}/children", broker.id());
    let children = std::fs::read_to_string(children).expect("strace's children");
    let pid = children
        .split_whitespace()
        .next()
        .expect("the broker")
        .to_string();
    let _ = Command::new("kill").args(["-HUP", &pid]).status();
    std::thread::sleep(Duration::from_millis(300));
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    sub.expect_closed();
    publisher.expect_closed();
    drop((sub, publisher));
    let status = common::wait_exit(&mut broker, Duration::from_secs(20));
    assert!(status.is_some(), "the broker stopped on SIGTERM");
    let trace = std::fs::read_to_string(&trace_file).expect("trace written");
    let _ = std::fs::remove_dir_all(&dir);
    let used = traced_calls(&trace);
    assert!(
        used.contains("io_uring_enter"),
        "the trace holds the broker's calls"
    );
    let allowed = allowed_syscalls();
    let missing: Vec<&String> = used.difference(&allowed).collect();
    assert!(
        missing.is_empty(),
        "deploy/seccomp.json does not allow {missing:?}, which the broker made"
    );
}

#[test]
fn traced_calls_are_read_from_strace_lines() {
    let trace = "123 read(3, \"x\", 1) = 1\n124 +++ exited with 0 +++\n\
                 125 <... futex resumed>) = 0\n126 io_uring_enter(5, 1, 0, 0, NULL, 8) = 1\n";
    let calls: Vec<String> = traced_calls(trace).into_iter().collect();
    assert_eq!(calls, ["io_uring_enter", "read"]);
}
