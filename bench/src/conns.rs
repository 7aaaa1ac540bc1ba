//! The conns scenario: open N idle MQTT connections as fast as the broker accepts them, hold
//! them, and read the broker's resident memory before and after (given its pid), which gives
//! the connect rate and the memory one idle connection costs.

use crate::client::{Conn, SETUP_LIMIT};
use crate::options::{parse_cpus, Options};
use crate::transport::Endpoint;
use glommio::{LocalExecutorBuilder, Placement};
use ringcast::protocol::Version;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Connections one generator thread opens at once.
const CONCURRENT_CONNECTS: usize = 64;
/// Read buffer of an idle connection: it only ever reads CONNACK.
const IDLE_READ_BYTES: usize = 256;
/// How long the connections are held before memory is read, so the broker settles.
const SETTLE: Duration = Duration::from_millis(500);

/// What the conns scenario measured.
#[derive(Clone, Debug, Default)]
pub struct ConnsOutcome {
    /// Connections asked for.
    pub asked: u64,
    /// Connections that got a CONNACK.
    pub opened: u64,
    /// Seconds from the first connect to the last CONNACK.
    pub connect_secs: f64,
    /// The broker's resident memory before connecting, KiB (with --broker-pid).
    pub rss_before_kib: Option<u64>,
    /// The broker's resident memory with every connection open, KiB.
    pub rss_after_kib: Option<u64>,
    /// Errors, at most a few.
    pub errors: Vec<String>,
}

impl ConnsOutcome {
    /// Connections per second.
    pub fn connect_per_s(&self) -> f64 {
        if self.connect_secs > 0.0 {
            self.opened as f64 / self.connect_secs
        } else {
            0.0
        }
    }

    /// The broker's memory per open connection, bytes.
    pub fn rss_per_connection_bytes(&self) -> Option<f64> {
        let (before, after) = (self.rss_before_kib?, self.rss_after_kib?);
        (self.opened > 0).then(|| after.saturating_sub(before) as f64 * 1024.0 / self.opened as f64)
    }
}

/// State the generator threads share.
struct Progress {
    opened: AtomicU64,
    failed: AtomicU64,
    release: AtomicBool,
    errors: Mutex<Vec<String>>,
}

/// Runs the conns scenario of `opts` against `broker`.
pub fn run(opts: &Options, broker: &Endpoint) -> Result<ConnsOutcome, String> {
    let n = opts.subscribers;
    let version = if opts.mqtt_version == 5 {
        Version::V5
    } else {
        Version::V311
    };
    let cpus = opts.cpus.as_deref().map(parse_cpus).transpose()?;
    let progress = Arc::new(Progress {
        opened: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        release: AtomicBool::new(false),
        errors: Mutex::new(Vec::new()),
    });
    let rss_before_kib = opts.broker_pid.and_then(rss_kib);
    let started = Instant::now();
    let mut handles = Vec::new();
    for t in 0..opts.threads {
        let ids: Vec<usize> = (t..n).step_by(opts.threads).collect();
        let placement = cpus
            .as_ref()
            .map_or(Placement::Unbound, |c| Placement::Fixed(c[t % c.len()]));
        let (progress, broker) = (progress.clone(), broker.clone());
        let handle = LocalExecutorBuilder::new(placement)
            .name(&format!("conns-{t}"))
            .io_memory(64 << 10)
            .spawn(move || hold(broker, version, ids, progress))
            .map_err(|e| format!("cannot start generator thread {t}: {e}"))?;
        handles.push(handle);
    }
    let mut connect_secs = 0.0;
    while started.elapsed() < SETUP_LIMIT {
        let done = progress.opened.load(Relaxed) + progress.failed.load(Relaxed);
        connect_secs = started.elapsed().as_secs_f64();
        if done >= n as u64 {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(SETTLE);
    let rss_after_kib = opts.broker_pid.and_then(rss_kib);
    progress.release.store(true, Relaxed);
    for h in handles {
        h.join()
            .map_err(|e| format!("generator thread failed: {e}"))?;
    }
    let errors = progress
        .errors
        .lock()
        .map(|e| e.clone())
        .unwrap_or_default();
    Ok(ConnsOutcome {
        asked: n as u64,
        opened: progress.opened.load(Relaxed),
        connect_secs,
        rss_before_kib,
        rss_after_kib,
        errors,
    })
}

/// One generator thread: opens its connections `CONCURRENT_CONNECTS` at a time, then holds
/// them until released.
async fn hold(broker: Endpoint, version: Version, ids: Vec<usize>, progress: Arc<Progress>) {
    let pid = std::process::id();
    let mut conns = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(CONCURRENT_CONNECTS) {
        let tasks: Vec<_> = chunk
            .iter()
            .map(|i| {
                let id = format!("rcb{pid}-c{i}");
                let broker = broker.clone();
                glommio::spawn_local(async move {
                    Conn::open_with(&broker, version, &id, IDLE_READ_BYTES).await
                })
            })
            .collect();
        for task in tasks {
            match task.await {
                Ok(conn) => {
                    progress.opened.fetch_add(1, Relaxed);
                    conns.push(conn);
                }
                Err(e) => {
                    progress.failed.fetch_add(1, Relaxed);
                    let mut errors = progress.errors.lock().unwrap_or_else(|e| e.into_inner());
                    if errors.len() < 5 {
                        errors.push(format!("connect: {e}"));
                    }
                }
            }
        }
    }
    while !progress.release.load(Relaxed) {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    for conn in conns {
        conn.disconnect().await;
    }
}

/// CPU time (user + system) `pid` has used, in seconds, from /proc/PID/stat.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name (in parentheses, perhaps with spaces) come fields 3, 4, …;
    // utime and stime are fields 14 and 15, in clock ticks.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (ticks > 0).then(|| (utime + stime) as f64 / ticks as f64)
}

/// Resident memory of `pid` in KiB, from /proc/PID/status.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
