//! The conns scenario: open N idle MQTT connections, each subscribed to a topic of its own,
//! hold them, and read the broker's resident memory before and after (given its pid), which
//! gives the connect rate and the memory one idle connection costs.
//!
//! With `--storm` every connection of a generator thread starts at once (a fleet coming back
//! after an outage) instead of `--parallel` at a time; with `--reconnect` every client then
//! closes and at once connects again with the same client id (a network blip), a second wave
//! measured like the first. Failures are counted by kind: refused (reset, refused, a CONNACK or
//! SUBACK that says no) and timed out (nothing within `SETUP_LIMIT`).

use crate::client::{Conn, SETUP_LIMIT};
use crate::options::{parse_cpus, Options};
use crate::transport::Endpoint;
use glommio::{LocalExecutorBuilder, Placement};
use ringcast::protocol::{QoS, Version};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Read buffer of an idle connection: it only ever reads CONNACK and SUBACK.
const IDLE_READ_BYTES: usize = 256;
/// How long the connections are held before memory is read, so the broker settles: ringcast
/// gives the heap a storm left free back to the kernel within two seconds of its end (its
/// once-a-second sweep waits for a calm second).
const SETTLE: Duration = Duration::from_millis(2500);
/// Loopback addresses a wave's connections come from (IPv4 brokers on loopback). From one
/// address, 19,000 connections to one port fill two thirds of the ephemeral port range, and the
/// kernel's search for a free port in `connect` then walks the used ones: the generator spent
/// its CPU there (perf: `__inet_hash_connect`, `__inet_check_established`) and sent its
/// CONNECTs so late that brokers with a CONNECT timeout closed the connections. A fleet comes
/// from many addresses.
const SOURCES: usize = 64;
/// Errors kept for the report, at most.
const ERRORS_KEPT: usize = 5;

/// One wave of connections: how many got in, how long it took, how many failed and why.
#[derive(Clone, Debug, Default)]
pub struct Wave {
    /// Connections that got a CONNACK (and a SUBACK, when subscribing).
    pub opened: u64,
    /// Seconds from the first connect to the last answer.
    pub secs: f64,
    /// Refused: connection refused or reset, or a CONNACK or SUBACK that says no.
    pub refused: u64,
    /// Nothing came within the setup limit (30 s).
    pub timed_out: u64,
}

impl Wave {
    /// Connections per second.
    pub fn per_s(&self) -> f64 {
        if self.secs > 0.0 {
            self.opened as f64 / self.secs
        } else {
            0.0
        }
    }
}

/// What the conns scenario measured.
#[derive(Clone, Debug, Default)]
pub struct ConnsOutcome {
    /// Connections asked for.
    pub asked: u64,
    /// Connections that got a CONNACK (and SUBACK) in the first wave.
    pub opened: u64,
    /// Seconds from the first connect to the last CONNACK.
    pub connect_secs: f64,
    /// The first wave's failures.
    pub refused: u64,
    pub timed_out: u64,
    /// The broker's resident memory before connecting, KiB (with --broker-pid).
    pub rss_before_kib: Option<u64>,
    /// The broker's resident memory with every connection open, KiB.
    pub rss_after_kib: Option<u64>,
    /// With --reconnect: the wave of every client closing and connecting again.
    pub reconnect: Option<Wave>,
    /// The broker's resident memory after the reconnect wave, KiB.
    pub rss_reconnected_kib: Option<u64>,
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

/// Where the run stands; generator threads follow it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
enum Phase {
    /// The first wave connects, then holds.
    Connect,
    /// Every client closes and connects again.
    Reconnect,
    /// Close and finish.
    Release,
}

/// Counters of one wave, shared by the generator threads.
#[derive(Default)]
struct WaveCounters {
    opened: AtomicU64,
    refused: AtomicU64,
    timed_out: AtomicU64,
}

impl WaveCounters {
    fn done(&self) -> u64 {
        self.opened.load(Relaxed) + self.refused.load(Relaxed) + self.timed_out.load(Relaxed)
    }

    fn wave(&self, secs: f64) -> Wave {
        Wave {
            opened: self.opened.load(Relaxed),
            secs,
            refused: self.refused.load(Relaxed),
            timed_out: self.timed_out.load(Relaxed),
        }
    }
}

/// State the generator threads share.
struct Progress {
    waves: [WaveCounters; 2],
    phase: AtomicU8,
    errors: Mutex<Vec<String>>,
}

impl Progress {
    fn phase(&self) -> u8 {
        self.phase.load(Relaxed)
    }

    fn note_error(&self, e: String) {
        let mut errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        if errors.len() < ERRORS_KEPT {
            errors.push(e);
        }
    }
}

/// How each generator thread opens its connections.
#[derive(Clone)]
struct Plan {
    broker: Endpoint,
    version: Version,
    /// Connections a thread has in progress at once.
    at_once: usize,
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
        waves: Default::default(),
        phase: AtomicU8::new(Phase::Connect as u8),
        errors: Mutex::new(Vec::new()),
    });
    let per_thread = n.div_ceil(opts.threads);
    let plan = Plan {
        broker: broker.clone(),
        version,
        at_once: if opts.storm {
            per_thread
        } else {
            opts.parallel
        },
    };
    let rss_before_kib = opts.broker_pid.and_then(rss_kib);
    let started = Instant::now();
    let mut handles = Vec::new();
    for t in 0..opts.threads {
        let ids: Vec<usize> = (t..n).step_by(opts.threads).collect();
        let placement = cpus
            .as_ref()
            .map_or(Placement::Unbound, |c| Placement::Fixed(c[t % c.len()]));
        let (progress, plan) = (progress.clone(), plan.clone());
        let handle = LocalExecutorBuilder::new(placement)
            .name(&format!("conns-{t}"))
            .io_memory(64 << 10)
            .spawn(move || hold(plan, ids, progress))
            .map_err(|e| format!("cannot start generator thread {t}: {e}"))?;
        handles.push(handle);
    }
    let first = wait_wave(&progress.waves[0], n as u64, started);
    std::thread::sleep(SETTLE);
    let rss_after_kib = opts.broker_pid.and_then(rss_kib);
    let (mut reconnect, mut rss_reconnected_kib) = (None, None);
    if opts.reconnect {
        let started = Instant::now();
        progress.phase.store(Phase::Reconnect as u8, Relaxed);
        reconnect = Some(wait_wave(&progress.waves[1], first.opened, started));
        std::thread::sleep(SETTLE);
        rss_reconnected_kib = opts.broker_pid.and_then(rss_kib);
    }
    progress.phase.store(Phase::Release as u8, Relaxed);
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
        opened: first.opened,
        connect_secs: first.secs,
        refused: first.refused,
        timed_out: first.timed_out,
        rss_before_kib,
        rss_after_kib,
        reconnect,
        rss_reconnected_kib,
        errors,
    })
}

/// Waits until `expected` connections of a wave got an answer (or the setup limit passed);
/// the wave as measured.
fn wait_wave(counters: &WaveCounters, expected: u64, started: Instant) -> Wave {
    let mut secs = 0.0;
    // A connection's own limit is SETUP_LIMIT; a second more lets its failure be counted.
    while started.elapsed() < SETUP_LIMIT + Duration::from_secs(1) {
        secs = started.elapsed().as_secs_f64();
        if counters.done() >= expected {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    counters.wave(secs)
}

/// One generator thread: opens its connections (`plan.at_once` at a time), holds them, and on
/// `Phase::Reconnect` closes them all and opens them again; closes them on release.
async fn hold(plan: Plan, ids: Vec<usize>, progress: Arc<Progress>) {
    let pid = std::process::id();
    let names: Vec<String> = ids.iter().map(|i| format!("rcb{pid}-c{i}")).collect();
    let mut conns = open_all(&plan, &names, 0, &progress).await;
    while progress.phase() == Phase::Connect as u8 {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    if progress.phase() == Phase::Reconnect as u8 {
        let (names, old): (Vec<String>, Vec<Conn>) = conns.into_iter().unzip();
        for conn in old {
            conn.disconnect().await;
        }
        conns = open_all(&plan, &names, 1, &progress).await;
    }
    while progress.phase() != Phase::Release as u8 {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    for (_, conn) in conns {
        conn.disconnect().await;
    }
}

/// Opens a connection for each client id in `names`, `plan.at_once` in progress at a time,
/// each subscribed to a topic named after it; counts each outcome in the counters of `wave`.
async fn open_all(
    plan: &Plan,
    names: &[String],
    wave: usize,
    progress: &Progress,
) -> Vec<(String, Conn)> {
    let counters = &progress.waves[wave];
    let mut conns = Vec::with_capacity(names.len());
    for (at, chunk) in names.chunks(plan.at_once.max(1)).enumerate() {
        let first = at * plan.at_once.max(1);
        let tasks: Vec<_> = chunk
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let source = source_for(plan.broker.addr, first + i, wave);
                let broker = plan.broker.from_source(source);
                let (version, id) = (plan.version, id.clone());
                glommio::spawn_local(async move {
                    let opened = open_one(&broker, version, &id).await;
                    (id, opened)
                })
            })
            .collect();
        for task in tasks {
            let (id, opened) = task.await;
            match opened {
                Ok(conn) => {
                    counters.opened.fetch_add(1, Relaxed);
                    conns.push((id, conn));
                }
                Err(e) => {
                    let counter = match e.kind() {
                        io::ErrorKind::TimedOut => &counters.timed_out,
                        _ => &counters.refused,
                    };
                    counter.fetch_add(1, Relaxed);
                    progress.note_error(format!("connect: {e}"));
                }
            }
        }
    }
    conns
}

/// The address connection `i` of `wave` comes from: one of `SOURCES` loopback addresses, a
/// different set in each wave (a client that reconnects comes from a new address, so its old
/// connection's TIME_WAIT never stands in the way). None (the kernel's choice) for a broker
/// not on IPv4 loopback.
fn source_for(broker: SocketAddr, i: usize, wave: usize) -> Option<IpAddr> {
    if !broker.ip().is_loopback() || !broker.is_ipv4() {
        return None;
    }
    let host = 1 + (i % SOURCES) as u8;
    Some(IpAddr::V4(Ipv4Addr::new(127, 0, 1 + wave as u8, host)))
}

/// Connects as `id` and subscribes to `id/state`, within `SETUP_LIMIT` (the kernel's own
/// connect timeout is minutes).
async fn open_one(broker: &Endpoint, version: Version, id: &str) -> io::Result<Conn> {
    let open = async {
        let mut conn = Conn::open_with(broker, version, id, IDLE_READ_BYTES).await?;
        conn.subscribe(&format!("{id}/state"), QoS::AtMostOnce)
            .await?;
        Ok(conn)
    };
    let late = async {
        glommio::timer::sleep(SETUP_LIMIT).await;
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "no CONNACK and SUBACK within the setup limit",
        ))
    };
    futures_lite::future::or(open, late).await
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wave_comes_from_loopback_addresses_of_its_own_and_ipv6_from_the_kernels_choice() {
        let broker: SocketAddr = "127.0.0.1:1883".parse().unwrap();
        let first: Vec<_> = (0..SOURCES * 2).map(|i| source_for(broker, i, 0)).collect();
        let again: Vec<_> = (0..SOURCES * 2).map(|i| source_for(broker, i, 1)).collect();
        assert_eq!(first[0], Some(IpAddr::V4(Ipv4Addr::new(127, 0, 1, 1))));
        assert_eq!(first[SOURCES], first[0], "addresses are taken in turn");
        assert!(
            first.iter().all(|a| !again.contains(a)),
            "a reconnect comes from a new address"
        );
        assert!(first.iter().flatten().all(|a| a.is_loopback()));
        assert_eq!(source_for("[::1]:1883".parse().unwrap(), 0, 0), None);
        assert_eq!(source_for("10.0.0.1:1883".parse().unwrap(), 0, 0), None);
    }
}
