//! The real binary's start-up checks and shutdown: one plain sentence and a non-zero exit for
//! each problem, exit 0 on SIGTERM.

mod common;

use std::io::Write;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

fn ringcast() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ringcast"));
    command.arg("--data-dir").arg(common::fresh_data_dir());
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    command
}

/// Runs to completion, killing it after 10 s.
fn run(mut command: Command) -> Output {
    let mut child = command.spawn().expect("binary starts");
    if common::wait_exit(&mut child, Duration::from_secs(10)).is_none() {
        child.kill().unwrap();
        panic!("ringcast did not exit within 10 s");
    }
    child.wait_with_output().unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn address_in_use_is_reported_in_one_sentence() {
    let holder = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = holder.local_addr().unwrap();
    let mut command = ringcast();
    command.args(["--listen", &addr.to_string(), "--shards", "1"]);
    let output = run(command);
    assert!(!output.status.success());
    let text = stderr(&output);
    assert!(text.contains("address is in use"), "{text}");
    assert_eq!(text.trim().lines().count(), 1, "{text}");
}

#[test]
fn address_held_with_so_reuseport_is_reported_too() {
    // A second broker must not silently share the port: the first one's shards each listen
    // with SO_REUSEPORT, and so would the second's with several shards.
    let first = start_broker();
    for shards in ["1", "2"] {
        let mut command = ringcast();
        command.args(["--listen", &first.addr, "--shards", shards]);
        let output = run(command);
        assert!(!output.status.success());
        let text = stderr(&output);
        assert!(text.contains("address is in use"), "{text}");
        assert_eq!(text.trim().lines().count(), 1, "{text}");
    }
}

#[test]
fn unknown_config_key_is_refused() {
    let dir = std::env::temp_dir().join(format!("ringcast-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::File::create(&path)
        .unwrap()
        .write_all(b"[limits]\ninflight_maximum = 3\n")
        .unwrap();
    let mut command = ringcast();
    command.args([
        "--config",
        path.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    let output = run(command);
    assert!(!output.status.success());
    let text = stderr(&output);
    assert!(text.contains("inflight_maximum"), "{text}");
}

#[test]
fn bad_cpu_list_is_refused() {
    let mut command = ringcast();
    command.args(["--cpus", "3-1", "--listen", "127.0.0.1:0"]);
    let output = run(command);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("bad CPU list"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn memlock_too_low_is_reported_with_what_to_do() {
    let mut command = ringcast();
    command.args(["--listen", "127.0.0.1:0", "--shards", "1"]);
    // SAFETY: setrlimit is async-signal-safe and touches only the child.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 64 << 10,
                rlim_max: 64 << 10,
            };
            libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit);
            Ok(())
        });
    }
    let output = run(command);
    assert!(!output.status.success());
    let text = stderr(&output);
    assert!(
        text.contains("RLIMIT_MEMLOCK") && text.contains("ulimit -l"),
        "{text}"
    );
}

struct Running {
    child: Child,
    addr: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the broker on a port the OS picks and waits until it logs where it listens.
fn start_broker() -> Running {
    let mut command = ringcast();
    command.args(["--listen", "127.0.0.1:0", "--shards", "2"]);
    command.args(["--log-level", "info"]).env_remove("RUST_LOG");
    let mut child = command.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut broker = Running {
        child,
        addr: String::new(),
    };
    let addr = common::listening_addr(stdout, Duration::from_secs(10));
    broker.addr = addr.expect("broker did not start listening").to_string();
    broker
}

#[test]
fn sigterm_closes_connections_and_exits_0() {
    let mut broker = start_broker();
    let mut client = std::net::TcpStream::connect(&broker.addr).unwrap();
    // CONNECT, 3.1.1, clean session, client id "s".
    client
        .write_all(&[
            0x10, 0x0d, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 1, b's',
        ])
        .unwrap();
    // SAFETY: sending a signal to our own child.
    unsafe { libc::kill(broker.child.id() as i32, libc::SIGTERM) };
    let status = common::wait_exit(&mut broker.child, Duration::from_secs(10))
        .expect("broker did not stop on SIGTERM");
    assert!(status.success(), "exit status {status:?}");
}
