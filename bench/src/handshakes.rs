//! The handshakes scenario: N connections over TLS, each opened (TCP connect, TLS handshake,
//! CONNECT, CONNACK) and closed (DISCONNECT, close_notify) as fast as the broker allows,
//! --parallel at a time per generator thread: the rate at which a broker takes devices back
//! after an outage, and how long each waits for its CONNACK.
//!
//! Without --resume every handshake is a full one (certificate, its signature, key exchange).
//! With it, all connections share one session store and each resumes a session an earlier one
//! left (TLS 1.3: a ticket read before the CONNACK; no certificate, no signature). An untimed
//! warm-up round of --parallel connections per thread leaves the tickets the first timed ones
//! resume. rustls says which kind each handshake was, and the counts are reported: a broker
//! that does not resume shows full handshakes even under --resume.

use crate::client::Conn;
use crate::conns::cpu_secs;
use crate::options::{parse_cpus, Options};
use crate::run::thread_cpu;
use crate::transport::Endpoint;
use glommio::{LocalExecutorBuilder, Placement};
use hdrhistogram::Histogram;
use ringcast::protocol::Version;
use rustls::HandshakeKind;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// Read buffer of each connection: it only reads the handshake and a CONNACK.
const READ_BYTES: usize = 256;
/// Highest connect time the histogram holds, in nanoseconds; above it values are clamped.
const LATENCY_MAX_NS: u64 = 60_000_000_000;
/// Errors kept, at most; the rest are counted.
const ERRORS_MAX: usize = 5;

/// What the handshakes scenario measured.
#[derive(Clone, Debug, Default)]
pub struct HandshakesOutcome {
    /// Connections asked for.
    pub asked: u64,
    /// Whether the connections shared a session store (--resume).
    pub is_resume: bool,
    /// Connections opened at the same time, per generator thread (--parallel).
    pub parallel: usize,
    /// Connections that got a CONNACK after a full handshake.
    pub full: u64,
    /// Connections that got a CONNACK after resuming a session.
    pub resumed: u64,
    /// Connections that failed.
    pub failed: u64,
    /// Seconds from the first connect to the last close.
    pub secs: f64,
    /// Connect to CONNACK, microseconds: p50, p90, p99, max.
    pub latency_us: [f64; 4],
    /// Busiest generator thread: CPU time ÷ wall time (near 1: the generator set the pace).
    pub generator_cpu: f64,
    /// CPU seconds the broker spent on the timed connections (with --broker-pid).
    pub broker_cpu_secs: Option<f64>,
    /// Errors, at most a few.
    pub errors: Vec<String>,
}

impl HandshakesOutcome {
    /// Connections that got a CONNACK.
    pub fn completed(&self) -> u64 {
        self.full + self.resumed
    }

    /// The broker's CPU time per completed connection, microseconds (with --broker-pid).
    pub fn broker_cpu_us_per_handshake(&self) -> Option<f64> {
        let secs = self.broker_cpu_secs?;
        (self.completed() > 0).then(|| secs * 1e6 / self.completed() as f64)
    }

    /// Completed connections (handshake, CONNECT, CONNACK, close) per second.
    pub fn handshakes_per_s(&self) -> f64 {
        if self.secs > 0.0 {
            self.completed() as f64 / self.secs
        } else {
            0.0
        }
    }
}

/// Counts of one task, one thread, or the whole run.
struct Tally {
    full: u64,
    resumed: u64,
    failed: u64,
    /// Connect to CONNACK, nanoseconds.
    histogram: Histogram<u64>,
    errors: Vec<String>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            full: 0,
            resumed: 0,
            failed: 0,
            // Constant bounds, valid for hdrhistogram (low ≥ 1, high ≥ 2·low, sigfig ≤ 5).
            histogram: Histogram::new_with_bounds(1, LATENCY_MAX_NS, 3)
                .expect("valid histogram bounds"),
            errors: Vec::new(),
        }
    }

    fn add(&mut self, other: Tally) {
        self.full += other.full;
        self.resumed += other.resumed;
        self.failed += other.failed;
        let _ = self.histogram.add(&other.histogram);
        self.errors.extend(other.errors);
        self.errors.truncate(ERRORS_MAX);
    }
}

/// What one generator thread brings back: its counts, when it started and ended, and the CPU
/// time it used.
struct ThreadTally {
    started: Instant,
    ended: Instant,
    cpu: Duration,
    tally: Tally,
}

/// Runs the handshakes scenario of `opts` against `broker` (which must speak TLS).
pub fn run(opts: &Options, broker: &Endpoint) -> Result<HandshakesOutcome, String> {
    if broker.tls.is_none() {
        return Err("handshakes needs --tls".into());
    }
    let n = opts.subscribers as u64;
    let version = if opts.mqtt_version == 5 {
        Version::V5
    } else {
        Version::V311
    };
    let cpus = opts.cpus.as_deref().map(parse_cpus).transpose()?;
    // Connection indexes are handed out from one counter, so a faster thread does more.
    let next = Arc::new(AtomicU64::new(0));
    // The threads start the clock together, after their warm-up, when this thread has read the
    // broker's CPU time.
    let start = Arc::new(Barrier::new(opts.threads + 1));
    let mut handles = Vec::new();
    for t in 0..opts.threads {
        let placement = cpus
            .as_ref()
            .map_or(Placement::Unbound, |c| Placement::Fixed(c[t % c.len()]));
        let (broker, next, start) = (broker.clone(), next.clone(), start.clone());
        let (parallel, resume) = (opts.parallel, opts.resume);
        let handle = LocalExecutorBuilder::new(placement)
            .name(&format!("handshakes-{t}"))
            .io_memory(64 << 10)
            .spawn(move || handshake_thread(broker, version, n, parallel, resume, next, start))
            .map_err(|e| format!("cannot start generator thread {t}: {e}"))?;
        handles.push(handle);
    }
    let broker_cpu_start = opts.broker_pid.and_then(cpu_secs);
    start.wait();
    let mut tallies = Vec::new();
    for h in handles {
        tallies.push(
            h.join()
                .map_err(|e| format!("generator thread failed: {e}"))?,
        );
    }
    let mut outcome = merge(opts, tallies);
    outcome.broker_cpu_secs = broker_cpu_start
        .zip(opts.broker_pid.and_then(cpu_secs))
        .map(|(start, end)| end - start);
    Ok(outcome)
}

/// Sums the threads' counts; the time runs from the first thread's start to the last one's end.
fn merge(opts: &Options, threads: Vec<ThreadTally>) -> HandshakesOutcome {
    let started = threads.iter().map(|t| t.started).min();
    let ended = threads.iter().map(|t| t.ended).max();
    let generator_cpu = threads
        .iter()
        .map(|t| t.cpu.as_secs_f64() / (t.ended - t.started).as_secs_f64().max(1e-9))
        .fold(0.0, f64::max);
    let mut all = Tally::new();
    for t in threads {
        all.add(t.tally);
    }
    let hist = &all.histogram;
    let us = |v: u64| v as f64 / 1e3;
    let mut errors = all.errors;
    if all.failed > errors.len() as u64 {
        errors.push(format!("{} connections failed", all.failed));
    }
    HandshakesOutcome {
        asked: opts.subscribers as u64,
        is_resume: opts.resume,
        parallel: opts.parallel,
        full: all.full,
        resumed: all.resumed,
        failed: all.failed,
        secs: match (started, ended) {
            (Some(s), Some(e)) => e.saturating_duration_since(s).as_secs_f64(),
            _ => 0.0,
        },
        latency_us: [
            us(hist.value_at_quantile(0.5)),
            us(hist.value_at_quantile(0.9)),
            us(hist.value_at_quantile(0.99)),
            us(hist.max()),
        ],
        generator_cpu,
        broker_cpu_secs: None,
        errors,
    }
}

/// One generator thread: `parallel` tasks, each connecting and closing one connection after
/// the other until `n` were started, all threads together; with `resume`, after a warm-up.
/// The clock starts when every thread has reached `start`.
async fn handshake_thread(
    broker: Endpoint,
    version: Version,
    n: u64,
    parallel: usize,
    resume: bool,
    next: Arc<AtomicU64>,
    start: Arc<Barrier>,
) -> ThreadTally {
    if resume {
        warm_up(&broker, version, parallel).await;
    }
    // Blocking is fine: nothing else runs on this executor yet.
    start.wait();
    let (started, cpu_before) = (Instant::now(), thread_cpu());
    let workers: Vec<_> = (0..parallel)
        .map(|_| {
            let (broker, next) = (broker.clone(), next.clone());
            glommio::spawn_local(async move { worker(&broker, version, n, &next).await })
        })
        .collect();
    let mut tally = Tally::new();
    for w in workers {
        tally.add(w.await);
    }
    ThreadTally {
        started,
        ended: Instant::now(),
        cpu: thread_cpu().saturating_sub(cpu_before),
        tally,
    }
}

/// Opens and closes `parallel` connections at once, so the session store holds tickets for as
/// many resumptions when the timed connections start. Failures show in the timed round.
async fn warm_up(broker: &Endpoint, version: Version, parallel: usize) {
    let pid = std::process::id();
    let tasks: Vec<_> = (0..parallel)
        .map(|i| {
            let broker = broker.clone();
            glommio::spawn_local(async move {
                let id = format!("rcb{pid}-w{i}");
                if let Ok(conn) = Conn::open_with(&broker, version, &id, READ_BYTES).await {
                    conn.disconnect().await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await;
    }
}

/// Opens and closes connections one after the other while indexes are left.
async fn worker(broker: &Endpoint, version: Version, n: u64, next: &AtomicU64) -> Tally {
    let mut tally = Tally::new();
    let pid = std::process::id();
    loop {
        let i = next.fetch_add(1, Relaxed);
        if i >= n {
            return tally;
        }
        let id = format!("rcb{pid}-h{i}");
        let start = Instant::now();
        match Conn::open_with(broker, version, &id, READ_BYTES).await {
            Ok(conn) => {
                let ns = start.elapsed().as_nanos() as u64;
                tally.histogram.saturating_record(ns.max(1));
                match conn.handshake_kind() {
                    Some(HandshakeKind::Resumed) => tally.resumed += 1,
                    _ => tally.full += 1,
                }
                conn.disconnect().await;
            }
            Err(e) => {
                tally.failed += 1;
                if tally.errors.len() < ERRORS_MAX {
                    tally.errors.push(format!("connection {i}: {e}"));
                }
            }
        }
    }
}
