//! `ringcast::security::acl::Acl` against the real mosquitto 2.0 broker: a table of
//! (ACL file, username, client id, topic, read or write) cases, each run on its own mosquitto
//! (`/usr/sbin/mosquitto`, an ephemeral loopback port, the case's `acl_file`, a `password_file`
//! made with `mosquitto_passwd`), all cases in parallel threads.
//!
//! - A write case: a privileged subscriber (user `admin`, given `topic readwrite #` in every
//!   file) subscribes to the topic; the case's client publishes to it with `mosquitto_pub -l`,
//!   one line every 100 ms. Allowed iff the subscriber receives a message.
//! - A read case: the case's client subscribes with `mosquitto_sub -C 1 -W 3`; `admin`
//!   publishes. Allowed iff it receives a message before the timeout.
//!
//! Each case also states the expected verdict, checked against `Acl` first, without mosquitto.
//! A missing mosquitto skips the comparison with a note, unless `RINGCAST_REQUIRE_INTEROP=1`
//! (set by CI), which makes it a failure. Every process is killed when its guard drops.

use ringcast::security::acl::Acl;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long a subscriber waits for a message; a denied case costs this much.
const WAIT_SECS: u64 = 3;
/// How long mosquitto may take to accept connections.
const START_LIMIT: Duration = Duration::from_secs(5);
/// Every user's password in the password file.
const PASSWORD: &str = "pw";
/// The privileged user's rules, appended to every file: it may read and write everything the
/// cases touch, `$` topics included (only reads of `$SYS` work: writes there are refused).
const ADMIN_BLOCK: &str = "\nuser admin\ntopic readwrite #\ntopic readwrite $SYS/#\n\
                           topic readwrite $app/#\n";

const GENERAL: AclFile = AclFile::new(
    "general",
    "\
# Anonymous clients: the lines before any `user`.
topic read public/#
topic deny public/secret

user alice
topic readwrite alice/#
topic read shared/+/status
topic deny shared/locked/status
topic write inbox/#

user bob
topic deny bob/private
topic bob/#
topic readwrite $SYS/#
topic readwrite $app/#

user eve+
topic read eve/#

pattern readwrite clients/%c/#
pattern deny clients/%c/blocked
pattern read users/%u/#
pattern read feed/#
",
);

const QUIRKS: AclFile = AclFile::new(
    "quirks",
    "\
# Leading spaces are fine; `topic read` names topic `read` (readwrite); blocks add up.
   topic write lead/spaces
user frank
topic read
user carol
topic read carol/#
user frank
topic write frank/#
",
);

const DOLLAR: AclFile = AclFile::new("dollar", "topic readwrite #\npattern readwrite #\n");

/// Only the admin block: no rule for anyone else.
const NOTHING: AclFile = AclFile::new("nothing", "# no rules\n");

/// An ACL file of the table, named in failure messages.
#[derive(Clone, Copy)]
struct AclFile {
    name: &'static str,
    text: &'static str,
}

impl AclFile {
    const fn new(name: &'static str, text: &'static str) -> AclFile {
        AclFile { name, text }
    }

    /// The file as mosquitto gets it: the case's rules, then the admin's.
    fn full_text(&self) -> String {
        format!("{}{ADMIN_BLOCK}", self.text)
    }
}

impl std::fmt::Debug for AclFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    Read,
    Write,
}

use Access::{Read, Write};

/// One row of the table.
#[derive(Clone, Copy, Debug)]
struct Case {
    acl: AclFile,
    username: Option<&'static str>,
    client_id: &'static str,
    topic: &'static str,
    access: Access,
    is_allowed: bool,
}

const fn case(
    acl: AclFile,
    username: Option<&'static str>,
    client_id: &'static str,
    topic: &'static str,
    access: Access,
    is_allowed: bool,
) -> Case {
    Case {
        acl,
        username,
        client_id,
        topic,
        access,
        is_allowed,
    }
}

const ALICE: Option<&str> = Some("alice");
const BOB: Option<&str> = Some("bob");
const CAROL: Option<&str> = Some("carol");

static CASES: [Case; 30] = [
    // Anonymous rules; deny before allow; read is not write.
    case(GENERAL, None, "anon-1", "public/news", Read, true),
    case(GENERAL, None, "anon-1", "public/news", Write, false),
    case(GENERAL, None, "anon-1", "public/secret", Read, false),
    // A user's block, and only that block.
    case(GENERAL, ALICE, "alice-1", "alice/notes", Write, true),
    case(GENERAL, ALICE, "alice-1", "shared/x/status", Read, true),
    case(
        GENERAL,
        ALICE,
        "alice-1",
        "shared/locked/status",
        Read,
        false,
    ),
    case(GENERAL, ALICE, "alice-1", "public/news", Read, false),
    case(GENERAL, ALICE, "alice-1", "inbox/a", Write, true),
    case(GENERAL, ALICE, "alice-1", "inbox/a", Read, false),
    case(GENERAL, BOB, "bob-1", "bob/private", Write, false),
    case(GENERAL, BOB, "bob-1", "bob/other", Read, true),
    // `$` topics: only `$` rules; `$SYS` never written, except a bridge's state.
    case(GENERAL, BOB, "bob-1", "$SYS/broker/version", Read, true),
    case(
        GENERAL,
        ALICE,
        "alice-1",
        "$SYS/broker/version",
        Read,
        false,
    ),
    case(GENERAL, BOB, "bob-1", "$SYS/test", Write, false),
    case(
        GENERAL,
        BOB,
        "bob-1",
        "$SYS/broker/connection/b1/state",
        Write,
        true,
    ),
    case(GENERAL, BOB, "bob-1", "$app/x", Write, true),
    // Patterns: everyone's, after their own rules; `%c`, `%u`, and deny first.
    case(GENERAL, CAROL, "c1", "clients/c1/data", Write, true),
    case(GENERAL, CAROL, "c1", "clients/c2/data", Write, false),
    case(GENERAL, CAROL, "c1", "clients/c1/blocked", Write, false),
    case(GENERAL, ALICE, "alice-2", "users/alice/inbox", Read, true),
    case(GENERAL, None, "a1", "clients/a1/x", Read, true),
    // `+`/`#` in a name turns patterns off; `/` does not; own rules stay.
    case(GENERAL, None, "e+1", "feed/a", Read, false),
    case(GENERAL, CAROL, "d/1", "clients/d/1/data", Write, true),
    case(GENERAL, Some("eve+"), "eve-1", "eve/x", Read, true),
    case(GENERAL, Some("eve+"), "eve-1", "feed/a", Read, false),
    // Parser quirks: leading spaces, `topic read` naming topic `read`, repeated blocks.
    case(QUIRKS, None, "q1", "lead/spaces", Write, true),
    case(QUIRKS, Some("frank"), "f1", "read", Write, true),
    case(QUIRKS, Some("frank"), "f1", "frank/x", Write, true),
    // `#` matches no `$` topic, as a topic rule or as a pattern.
    case(DOLLAR, None, "z1", "$app/x", Read, false),
    // A file without rules for a client refuses it everything.
    case(NOTHING, None, "n1", "any/topic", Read, false),
];

/// The users in the password file (`admin` is added first).
const USERS: [&str; 5] = ["alice", "bob", "carol", "eve+", "frank"];

/// The two comparisons each start a broker per case; run together on a small machine, 60
/// brokers and 120 clients at once starve each other's CONNACKs. One runs at a time.
static ONE_TABLE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Cases run at once against ringcast, whose debug build spends milliseconds per login.
const RINGCAST_CASES_AT_ONCE: usize = 10;

#[test]
fn acl_agrees_with_mosquitto() {
    let _one = ONE_TABLE_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let acls: Vec<Acl> = CASES.iter().map(|c| parse(c.acl)).collect();
    for (case, acl) in CASES.iter().zip(&acls) {
        assert_eq!(
            verdict(acl, case),
            case.is_allowed,
            "Acl disagrees with the table: {case:?}"
        );
    }
    let Some(tools) = tools() else { return };
    let dir = TempDir::new();
    let passwords = make_password_file(&dir.0);
    let ports = free_ports(CASES.len());
    let started = Instant::now();
    let runs: Vec<_> = CASES
        .iter()
        .zip(ports)
        .enumerate()
        .map(|(index, (&case, port))| {
            let (tools, dir, passwords) = (tools.clone(), dir.0.clone(), passwords.clone());
            std::thread::spawn(move || run_case(&tools, &dir, &passwords, index, port, case))
        })
        .collect();
    let mut disagreements = Vec::new();
    for ((run, case), acl) in runs.into_iter().zip(&CASES).zip(&acls) {
        let mosquitto = run.join().expect("a case thread panicked");
        if mosquitto != verdict(acl, case) {
            disagreements.push(format!("mosquitto says {mosquitto}: {case:?}"));
        }
    }
    eprintln!(
        "{} cases against mosquitto in {:?}",
        CASES.len(),
        started.elapsed()
    );
    assert!(disagreements.is_empty(), "{}", disagreements.join("\n"));
}

/// The same table against ringcast's broker, driven by the same mosquitto clients: each case
/// on its own ringcast process (as each ran on its own mosquitto), all in parallel, and each
/// verdict compared with the table's, which the test above holds against mosquitto's.
#[test]
fn ringcast_gives_the_same_verdicts_as_mosquitto_on_the_table() {
    let Some(_tools) = tools() else { return };
    let _one = ONE_TABLE_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let dir = TempDir::new();
    let passwords = make_password_file(&dir.0);
    let mut disagreements = Vec::new();
    for (batch, cases) in CASES.chunks(RINGCAST_CASES_AT_ONCE).enumerate() {
        let ports = free_ports(cases.len());
        let runs: Vec<_> = cases
            .iter()
            .zip(ports)
            .enumerate()
            .map(|(index, (&case, port))| {
                let index = batch * RINGCAST_CASES_AT_ONCE + index;
                let (dir, passwords) = (dir.0.clone(), passwords.clone());
                let run = std::thread::spawn(move || {
                    run_case_on_ringcast(&dir, &passwords, index, port, case)
                });
                (case, run)
            })
            .collect();
        for (case, run) in runs {
            let ringcast = run.join().expect("a case thread panicked");
            if ringcast != case.is_allowed {
                disagreements.push(format!("ringcast says {ringcast}: {case:?}"));
            }
        }
    }
    assert!(disagreements.is_empty(), "{}", disagreements.join("\n"));
}

/// ringcast's verdict on `case`, on a broker process of its own.
fn run_case_on_ringcast(dir: &Path, passwords: &Path, index: usize, port: u16, case: Case) -> bool {
    let acl_path = dir.join(format!("ringcast-acl-{index}"));
    std::fs::write(&acl_path, case.acl.full_text()).expect("write the ACL");
    let config = format!(
        "listen = [\"127.0.0.1:{port}\"]\nshards = 1\nallow_anonymous = true\n\
         sys_interval_secs = 1\npassword_file = {:?}\nacl_file = {:?}\n\
         [persistence]\nenabled = false\n",
        passwords.display().to_string(),
        acl_path.display().to_string()
    );
    let config_path = dir.join(format!("ringcast-{index}.toml"));
    std::fs::write(&config_path, config).expect("write the config");
    let ringcast = Path::new(env!("CARGO_BIN_EXE_ringcast"));
    let _broker = Guard::start(ringcast, &["--config"], &config_path, port);
    observe(port, case)
}

fn parse(file: AclFile) -> Acl {
    Acl::parse(&file.full_text()).expect("the table's ACL files parse")
}

fn verdict(acl: &Acl, case: &Case) -> bool {
    match case.access {
        Read => acl.can_read(case.username, case.client_id, case.topic),
        Write => acl.can_write(case.username, case.client_id, case.topic),
    }
}

// ---------------------------------------------------------------------------------------------
// Tools: present, or skip / fail as the environment asks.

/// Where the mosquitto programs are.
#[derive(Clone)]
struct Tools {
    broker: PathBuf,
}

/// The tools, or None (after a note) when one is missing and interop is not required.
fn tools() -> Option<Tools> {
    // The broker lives in /usr/sbin, often not on a user's PATH.
    let broker = ["mosquitto", "/usr/sbin/mosquitto"]
        .into_iter()
        .map(PathBuf::from)
        .find(|path| runs(path));
    let mut missing: Vec<&str> = ["mosquitto_pub", "mosquitto_sub", "mosquitto_passwd"]
        .into_iter()
        .filter(|tool| !runs(Path::new(tool)))
        .collect();
    if broker.is_none() {
        missing.push("mosquitto");
    }
    if missing.is_empty() {
        return broker.map(|broker| Tools { broker });
    }
    let message = format!(
        "mosquitto missing ({}): install with `apt-get install mosquitto mosquitto-clients`",
        missing.join(", ")
    );
    if std::env::var("RINGCAST_REQUIRE_INTEROP").as_deref() == Ok("1") {
        panic!("{message} (RINGCAST_REQUIRE_INTEROP=1, so this is a failure, not a skip)");
    }
    eprintln!("note: skipping the mosquitto comparison: {message}");
    None
}

/// Whether `program` starts at all (some print usage and exit non-zero on --help).
fn runs(program: &Path) -> bool {
    let quiet = |mut c: Command| c.stdout(Stdio::null()).stderr(Stdio::null()).status();
    let mut command = Command::new(program);
    command.arg("--help");
    quiet(command).is_ok()
}

fn make_password_file(dir: &Path) -> PathBuf {
    let path = dir.join("passwords");
    for (index, user) in std::iter::once("admin").chain(USERS).enumerate() {
        let mut command = Command::new("mosquitto_passwd");
        if index == 0 {
            command.arg("-c");
        }
        command.arg("-b").arg(&path).args([user, PASSWORD]);
        let status = command.status().expect("mosquitto_passwd starts");
        assert!(status.success(), "mosquitto_passwd for {user}: {status}");
    }
    path
}

/// `count` loopback ports free at once (all held until all are chosen, so none repeats).
fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("bound").port())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// One case.

/// mosquitto's verdict on `case`: was the message delivered?
fn run_case(
    tools: &Tools,
    dir: &Path,
    passwords: &Path,
    index: usize,
    port: u16,
    case: Case,
) -> bool {
    let acl_path = dir.join(format!("acl-{index}"));
    std::fs::write(&acl_path, case.acl.full_text()).expect("write the ACL");
    let config = format!(
        "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
         password_file {}\nacl_file {}\n",
        passwords.display(),
        acl_path.display()
    );
    let config_path = dir.join(format!("mosquitto-{index}.conf"));
    std::fs::write(&config_path, config).expect("write the config");
    let _broker = Guard::start(&tools.broker, &["-c"], &config_path, port);
    observe(port, case)
}

/// The verdict of the broker on `port` on `case`: was the message delivered?
fn observe(port: u16, case: Case) -> bool {
    let subject = Client {
        username: case.username,
        client_id: case.client_id,
    };
    let (reader, writer) = match case.access {
        Read => (subject, Client::admin("acl-admin-pub")),
        Write => (Client::admin("acl-admin-sub"), subject),
    };
    let subscriber = reader.command("mosquitto_sub", port, case.topic);
    let mut subscriber = Proc::spawn(subscriber, &["-C", "1", "-W", &WAIT_SECS.to_string()]);
    let mut publisher = Proc::spawn(writer.command("mosquitto_pub", port, case.topic), &["-l"]);
    let received = feed_until_exit(&mut publisher, &mut subscriber);
    let sent = publisher.finish();
    let context = || format!("{case:?}\nsubscriber: {received:?}\npublisher: {sent:?}");
    assert!(
        text(&received).contains("received SUBACK"),
        "no SUBACK: {}",
        context()
    );
    assert!(
        text(&sent).contains("received CONNACK (0)"),
        "no CONNACK: {}",
        context()
    );
    received.status.success() && text(&received).contains("received PUBLISH")
}

/// Writes a line to the publisher every 100 ms until the subscriber exits; its output.
fn feed_until_exit(publisher: &mut Proc, subscriber: &mut Proc) -> Output {
    let deadline = Instant::now() + Duration::from_secs(WAIT_SECS + 3);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = subscriber.child().try_wait() {
            return subscriber.finish();
        }
        if let Some(stdin) = publisher.child().stdin.as_mut() {
            // A publisher that already gave up shows in its output; keep waiting either way.
            let written = std::io::Write::write_all(stdin, b"x\n");
            let _ = written.and_then(|()| std::io::Write::flush(stdin));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    subscriber.finish()
}

fn text(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr)
}

/// Who a mosquitto client connects as.
#[derive(Clone, Copy, Debug)]
struct Client {
    username: Option<&'static str>,
    client_id: &'static str,
}

impl Client {
    fn admin(client_id: &'static str) -> Client {
        Client {
            username: Some("admin"),
            client_id,
        }
    }

    /// `mosquitto_pub` or `mosquitto_sub` as this client, at QoS 1, printing its packets (`-d`).
    fn command(&self, program: &str, port: u16, topic: &str) -> Command {
        let mut command = Command::new(program);
        command.args(["-d", "-h", "127.0.0.1", "-p", &port.to_string()]);
        command.args(["-i", self.client_id, "-t", topic, "-q", "1"]);
        if let Some(username) = self.username {
            command.args(["-u", username, "-P", PASSWORD]);
        }
        command
    }
}

// ---------------------------------------------------------------------------------------------
// Processes that cannot outlive the test.

/// A client process; killed when dropped.
struct Proc(Option<Child>);

impl Proc {
    fn spawn(mut command: Command, args: &[&str]) -> Proc {
        command.args(args);
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        Proc(Some(
            command
                .spawn()
                .unwrap_or_else(|e| panic!("{command:?}: {e}")),
        ))
    }

    fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("not finished")
    }

    /// Closes its input and collects its output, killing it if it lingers.
    fn finish(&mut self) -> Output {
        let mut child = self.0.take().expect("finished once");
        drop(child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        child.wait_with_output().expect("collect the output")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A running mosquitto; killed when dropped.
struct Guard(Child);

impl Guard {
    /// Starts a broker (`broker FLAG config`) and waits until it accepts connections on
    /// `port`.
    fn start(broker: &Path, flag: &[&str], config: &Path, port: u16) -> Guard {
        let child = Command::new(broker)
            .args(flag)
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the broker starts");
        let mut guard = Guard(child);
        let deadline = Instant::now() + START_LIMIT;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if matches!(guard.0.try_wait(), Ok(Some(_))) || Instant::now() > deadline {
                let _ = guard.0.kill();
                let mut log = String::new();
                if let Some(mut stderr) = guard.0.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut stderr, &mut log);
                }
                panic!("{} did not start on port {port}:\n{log}", broker.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        guard
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A scratch directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let path =
            std::env::temp_dir().join(format!("ringcast-acl-mosquitto-{}", std::process::id()));
        std::fs::create_dir_all(&path).expect("create a scratch directory");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
