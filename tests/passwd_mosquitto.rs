//! Password files shared with mosquitto, both ways: files that the real `mosquitto_passwd`
//! writes are read by `PasswordFile`, and files that `ringcast passwd` writes are accepted by
//! a real mosquitto broker (`mosquitto_pub` logs in with the right password and is refused
//! with a wrong one). Needs Debian's `mosquitto` (the broker and `mosquitto_passwd`) and
//! `mosquitto-clients` (`mosquitto_pub`).
//!
//! A missing tool skips the test with a note, unless `RINGCAST_REQUIRE_INTEROP=1` (set by CI),
//! which turns it into a failure. Every subprocess runs under a deadline, and the broker is
//! killed when the test ends, panicking or not.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ringcast::security::password::PasswordFile;
use sha2::{Digest, Sha512};
use std::fs::File;
use std::io::Write as _;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long any one short-lived subprocess may run.
const PROC_LIMIT: Duration = Duration::from_secs(10);
/// How long mosquitto may take to listen.
const LISTEN_LIMIT: Duration = Duration::from_secs(5);

const MOSQUITTO_PASSWD: &str = "/usr/bin/mosquitto_passwd";
const MOSQUITTO: &str = "/usr/sbin/mosquitto";
const MOSQUITTO_PUB: &str = "mosquitto_pub";

// ---------------------------------------------------------------------------------------------
// Tools: present, or skip / fail as the environment asks.

/// True when mosquitto's tools are here. When they are not: fails the test if
/// `RINGCAST_REQUIRE_INTEROP=1`, else prints a note and the caller returns early.
fn tools_ready() -> bool {
    let missing: Vec<&str> = [MOSQUITTO_PASSWD, MOSQUITTO, MOSQUITTO_PUB]
        .into_iter()
        // Some print usage and exit non-zero on --help; only "not found" matters here.
        .filter(|tool| Command::new(tool).arg("--help").output().is_err())
        .collect();
    if missing.is_empty() {
        return true;
    }
    let message = format!(
        "mosquitto tools missing: {}. Install with `apt-get install mosquitto mosquitto-clients`",
        missing.join(", ")
    );
    if std::env::var("RINGCAST_REQUIRE_INTEROP").as_deref() == Ok("1") {
        panic!("{message} (RINGCAST_REQUIRE_INTEROP=1, so this is a failure, not a skip)");
    }
    eprintln!("note: skipping password-file interop test: {message}");
    false
}

// ---------------------------------------------------------------------------------------------
// Subprocesses, files and the broker.

/// Runs `command` to the end with `stdin` as its input; kills it and fails after `PROC_LIMIT`.
fn run(mut command: Command, stdin: &[u8]) -> Output {
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
    // Small inputs only: the pipe buffer holds them before the child reads.
    let mut input = child.stdin.take().expect("stdin was piped");
    let _ = input.write_all(stdin);
    drop(input);
    let deadline = Instant::now() + PROC_LIMIT;
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} ran over {PROC_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child
        .wait_with_output()
        .expect("output of a finished child")
}

/// Runs `command` and fails, showing its output, unless it exits 0.
fn run_ok(command: Command, stdin: &[u8]) -> Output {
    let shown = format!("{command:?}");
    let output = run(command, stdin);
    assert!(output.status.success(), "{shown}: {}", describe(&output));
    output
}

fn describe(output: &Output) -> String {
    format!(
        "{}\n--- stdout ---\n{}--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `ringcast passwd ARGS…`, the binary cargo built for this test.
fn ringcast_passwd(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ringcast"));
    command.arg("passwd").args(args);
    command
}

fn mosquitto_passwd(args: &[&str]) -> Command {
    let mut command = Command::new(MOSQUITTO_PASSWD);
    command.args(args);
    command
}

/// A fresh folder under the system's temporary folder, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("ringcast-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the test folder");
        TempDir(dir)
    }

    fn path(&self, name: &str) -> String {
        self.0.join(name).to_str().expect("UTF-8 path").to_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A mosquitto broker on a loopback port that requires a password from `password_file`;
/// killed when dropped.
struct Mosquitto {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Mosquitto {
    fn start(dir: &TempDir, password_file: &str) -> Mosquitto {
        let port = free_port();
        let conf = dir.0.join("mosquitto.conf");
        // `user root`: run as root, mosquitto would switch to the `mosquitto` user before it
        // reads the password file, which ringcast creates readable by its owner only (0600).
        // Run as anyone else, mosquitto ignores the line.
        let text = format!(
            "listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {password_file}\n\
             user root\npersistence false\n"
        );
        std::fs::write(&conf, text).expect("write mosquitto.conf");
        let log = dir.0.join("mosquitto.log");
        let out = File::create(&log).expect("create mosquitto.log");
        let err = out.try_clone().expect("clone the log file");
        let child = Command::new(MOSQUITTO)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("start mosquitto");
        let mut broker = Mosquitto { child, port, log };
        broker.wait_until_listening();
        broker
    }

    fn wait_until_listening(&mut self) {
        let deadline = Instant::now() + LISTEN_LIMIT;
        while TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).is_err() {
            let exited = self.child.try_wait().expect("try_wait");
            if exited.is_some() || Instant::now() > deadline {
                panic!(
                    "mosquitto did not listen ({exited:?}):\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// True if `mosquitto_pub` logs in as `user` with `password` and publishes.
    fn accepts(&self, user: &str, password: &str) -> bool {
        let mut command = Command::new(MOSQUITTO_PUB);
        let port = self.port.to_string();
        command.args(["-h", "127.0.0.1", "-p", &port, "-u", user, "-P", password]);
        command.args(["-t", "t", "-m", "x"]);
        run(command, b"").status.success()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port that was free a moment ago.
fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

/// A `$6$` line built by hand from mosquitto's rule: SHA-512 of the password followed by a
/// 12-byte salt, both base64.
fn sha512_line(user: &str, password: &str) -> String {
    let salt: [u8; 12] = *b"ringcast-six";
    let hash = Sha512::new()
        .chain_update(password)
        .chain_update(salt)
        .finalize();
    let (salt, hash) = (BASE64.encode(salt), BASE64.encode(hash));
    format!("{user}:$6${salt}${hash}\n")
}

fn append(path: &str, text: &str) {
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .expect("open for append");
    file.write_all(text.as_bytes()).expect("append");
}

fn load(path: &str) -> PasswordFile {
    let file = PasswordFile::load(Path::new(path)).expect("load the password file");
    assert!(file.skipped().is_empty(), "{:?}", file.skipped());
    file
}

// ---------------------------------------------------------------------------------------------
// Tests.

#[test]
fn ringcast_reads_what_mosquitto_passwd_writes() {
    if !tools_ready() {
        return;
    }
    let dir = TempDir::new("passwd-from-mosquitto");
    let path = dir.path("passwd");
    run_ok(
        mosquitto_passwd(&["-c", "-b", &path, "alice", "correct horse"]),
        b"",
    );
    run_ok(
        mosquitto_passwd(&["-b", "-I", "1000", &path, "bob", "b0b!"]),
        b"",
    );
    let text = std::fs::read_to_string(&path).expect("read the file");
    assert!(text.contains("alice:$7$101$"), "{text}");
    assert!(text.contains("bob:$7$1000$"), "{text}");
    // A `$6$` entry: from mosquitto_passwd where it still writes them, and by hand.
    let sha512 = run(
        mosquitto_passwd(&["-H", "sha512", "-b", &path, "carol", "c"]),
        b"",
    );
    if !sha512.status.success() {
        eprintln!("note: this mosquitto_passwd does not write $6$ hashes any more");
    }
    append(&path, &sha512_line("dave", "d4ve"));

    let file = load(&path);
    assert!(file.check("alice", b"correct horse"));
    assert!(!file.check("alice", b"correct horse "));
    assert!(!file.check("alice", b"b0b!"));
    assert!(file.check("bob", b"b0b!"));
    assert_eq!(file.hash("bob").and_then(|h| h.iterations()), Some(1000));
    if sha512.status.success() {
        assert!(file.check("carol", b"c") && !file.check("carol", b"C"));
    }
    assert!(file.check("dave", b"d4ve"));
    assert!(!file.check("dave", b"d4v3"));
    assert!(!file.check("nobody", b"correct horse"));
}

#[test]
fn mosquitto_accepts_what_ringcast_passwd_writes() {
    if !tools_ready() {
        return;
    }
    let dir = TempDir::new("passwd-to-mosquitto");
    let path = dir.path("passwd");
    run_ok(
        ringcast_passwd(&["-c", "-b", &path, "alice", "s3cret"]),
        b"",
    );
    run_ok(ringcast_passwd(&["-b", &path, "bob", "hunter2"]), b"");
    run_ok(
        ringcast_passwd(&["-b", "-I", "1000", &path, "carol", "c"]),
        b"",
    );
    // Without -b the password is read from standard input, twice, as mosquitto_passwd does.
    run_ok(
        ringcast_passwd(&[&path, "erin"]),
        b"from stdin\nfrom stdin\n",
    );
    run_ok(ringcast_passwd(&["-D", &path, "carol"]), b"");
    append(&path, &sha512_line("dave", "d4ve"));
    run_ok(ringcast_passwd(&["-b", &path, "bob", "changed"]), b"");

    let file = load(&path);
    assert_eq!(file.len(), 4);
    assert!(file.check("alice", b"s3cret") && file.check("erin", b"from stdin"));
    assert!(file.check("bob", b"changed") && !file.contains("carol"));

    let broker = Mosquitto::start(&dir, &path);
    let log = || broker.log_text();
    assert!(broker.accepts("alice", "s3cret"), "{}", log());
    assert!(!broker.accepts("alice", "s3cre"), "{}", log());
    assert!(broker.accepts("bob", "changed"), "{}", log());
    assert!(!broker.accepts("bob", "hunter2"), "{}", log());
    assert!(broker.accepts("erin", "from stdin"), "{}", log());
    assert!(broker.accepts("dave", "d4ve"), "{}", log());
    assert!(
        !broker.accepts("carol", "c"),
        "carol was deleted\n{}",
        log()
    );
    assert!(!broker.accepts("nobody", "s3cret"), "{}", log());
    let skipped = log()
        .lines()
        .filter(|l| l.contains("removing entry"))
        .count();
    assert_eq!(
        skipped,
        0,
        "mosquitto dropped entries ringcast wrote:\n{}",
        log()
    );
}

#[test]
fn ringcast_passwd_refuses_bad_requests() {
    let dir = TempDir::new("passwd-refusals");
    let path = dir.path("passwd");
    let refused = |args: &[&str], stdin: &[u8], says: &str| {
        let output = run(ringcast_passwd(args), stdin);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    };
    refused(
        &["-b", &path, "alice", "pw"],
        b"",
        "does not exist (-c creates it)",
    );
    refused(&["-c", "-b", &path, "alice"], b"", "-b needs the password");
    refused(&["-c", &path, "alice", "pw"], b"", "--help"); // a password needs -b
    refused(&["-c", "-D", &path, "alice"], b"", "cannot be used with");
    refused(&["-c", "-b", &path, "a:b", "pw"], b"", "contains ':'");
    refused(
        &["-c", "-b", "-I", "0", &path, "alice", "pw"],
        b"",
        "is not in 1..=",
    );
    refused(&["-c", &path, "alice"], b"one\ntwo\n", "do not match");
    refused(
        &["-c", &path, "alice"],
        b"",
        "no password on standard input",
    );
    assert!(!Path::new(&path).exists(), "nothing was written");

    run_ok(ringcast_passwd(&["-c", &path, "alice"]), b"only once\n");
    assert!(load(&path).check("alice", b"only once"));
    refused(&["-D", &path, "bob"], b"", "\"bob\" is not in the file");
}
