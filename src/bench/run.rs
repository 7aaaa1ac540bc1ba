//! Runs a plan: one glommio executor per generator thread, connections spread round-robin,
//! a progress line from a plain thread, results merged at the end.

use super::client::{self, PublisherSpec, SubscriberResult};
use super::options::{parse_cpus, Options};
use super::plan::{Plan, SubscriberPlan};
use super::shared::Shared;
use crate::protocol::{QoS, Version};
use glommio::{LocalExecutorBuilder, Placement};
use hdrhistogram::Histogram;
use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Highest latency the histograms hold, in nanoseconds; above it values are clamped.
const LATENCY_MAX_NS: u64 = 60_000_000_000;

/// What one generator thread brings back.
pub struct ThreadResult {
    /// Latencies of its subscribers, nanoseconds.
    pub histogram: Histogram<u64>,
    /// Its subscribers' counts.
    pub subscribers: Vec<SubscriberResult>,
    /// CPU time (user + system) the thread used.
    pub cpu: Duration,
    /// Wall time the thread ran.
    pub wall: Duration,
}

/// Everything a report is made from.
pub struct Outcome {
    /// The plan that ran.
    pub plan: Plan,
    /// Counters at the end.
    pub shared: Arc<Shared>,
    /// Per generator thread.
    pub threads: Vec<ThreadResult>,
    /// Wall time of the whole run.
    pub wall: Duration,
    /// CPU time of the whole process (includes the --sink forwarder when there is one).
    pub process_cpu: Duration,
}

/// The connections one thread owns.
#[derive(Default)]
struct Share {
    subscribers: Vec<(usize, SubscriberPlan)>,
    publishers: Vec<PublisherSpec>,
}

/// Runs the scenario of `opts` against `addr`.
pub fn run(opts: &Options, addr: SocketAddr) -> Result<Outcome, String> {
    let prefix = format!("rcb/{}", std::process::id());
    let plan = Plan::new(opts.scenario, opts.subscribers, &prefix);
    let shared = Arc::new(Shared::new(
        plan.publisher_of_stream.clone(),
        plan.publishers.len(),
    ));
    let cpus = opts.cpus.as_deref().map(parse_cpus).transpose()?;
    let shares = split(opts, &plan);
    let started = Instant::now();
    let cpu_before = process_cpu();
    let finished = Arc::new(AtomicBool::new(false));
    let progress = (!opts.quiet).then(|| progress_line(shared.clone(), finished.clone()));
    let mut handles = Vec::new();
    for (t, share) in shares.into_iter().enumerate() {
        let placement = cpus
            .as_ref()
            .map_or(Placement::Unbound, |c| Placement::Fixed(c[t % c.len()]));
        let mut builder = LocalExecutorBuilder::new(placement)
            .name(&format!("bench-{t}"))
            .io_memory(64 << 10);
        if opts.spin_us > 0 {
            builder = builder.spin_before_park(Duration::from_micros(opts.spin_us));
        }
        let (shared, opts) = (shared.clone(), opts.clone());
        let subscribers = plan.subscribers.len();
        let handle = builder
            .spawn(move || run_thread(shared, opts, addr, share, subscribers))
            .map_err(|e| format!("cannot start generator thread {t}: {e}"))?;
        handles.push(handle);
    }
    let threads = handles
        .into_iter()
        .map(|h| {
            h.join()
                .map_err(|e| format!("generator thread failed: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    finished.store(true, Relaxed);
    if let Some(p) = progress {
        let _ = p.join();
    }
    Ok(Outcome {
        plan,
        shared,
        threads,
        wall: started.elapsed(),
        process_cpu: process_cpu().saturating_sub(cpu_before),
    })
}

/// Spreads subscribers and publishers over the threads, round-robin.
fn split(opts: &Options, plan: &Plan) -> Vec<Share> {
    let mut shares: Vec<Share> = (0..opts.threads).map(|_| Share::default()).collect();
    for (i, sub) in plan.subscribers.iter().enumerate() {
        shares[i % opts.threads].subscribers.push((i, sub.clone()));
    }
    // --window bounds what one subscriber has outstanding; in fanin N publishers share it, so
    // the broker's per-subscriber queue is not overrun by N windows at once.
    let sharing = plan.subscribers.iter().map(|s| s.topics).max().unwrap_or(1) as u64;
    let window = (opts.window / sharing).max(1);
    let qos = if opts.qos == 1 {
        QoS::AtLeastOnce
    } else {
        QoS::AtMostOnce
    };
    for (i, &topic) in plan.publishers.iter().enumerate() {
        shares[i % opts.threads].publishers.push(PublisherSpec {
            index: i,
            topic: plan.topics[topic].clone(),
            streams: plan.streams_of_publisher[i].clone(),
            qos,
            payload_bytes: opts.payload,
            window,
            inflight: opts.inflight,
            batch: opts.batch,
            count: opts.count.unwrap_or(u64::MAX),
            duration: opts.duration(),
            drain: Duration::from_secs_f64(opts.drain),
            poll_other_threads: opts.threads > 1,
        });
    }
    shares
}

/// One generator thread: its subscribers and publishers as tasks on this executor.
async fn run_thread(
    shared: Arc<Shared>,
    opts: Options,
    addr: SocketAddr,
    share: Share,
    subscribers: usize,
) -> ThreadResult {
    let cpu_before = thread_cpu();
    let started = Instant::now();
    let version = if opts.mqtt_version == 5 {
        Version::V5
    } else {
        Version::V311
    };
    let qos = if opts.qos == 1 {
        QoS::AtLeastOnce
    } else {
        QoS::AtMostOnce
    };
    let drain = Duration::from_secs_f64(opts.drain);
    // Bounds are constants that are valid for hdrhistogram (low ≥ 1, high ≥ 2·low, sigfig ≤ 5).
    let histogram = Rc::new(RefCell::new(
        Histogram::new_with_bounds(1, LATENCY_MAX_NS, 3).expect("valid histogram bounds"),
    ));
    let pid = std::process::id();
    let subs: Vec<_> = share
        .subscribers
        .into_iter()
        .map(|(i, plan)| {
            let spec = client::SubscriberSpec {
                addr,
                version,
                qos,
                plan,
                id: format!("rcb{pid}-s{i}"),
                drain,
            };
            glommio::spawn_local(client::subscriber(shared.clone(), spec, histogram.clone()))
        })
        .collect();
    let pubs: Vec<_> = share
        .publishers
        .into_iter()
        .map(|spec| {
            let id = format!("rcb{pid}-p{}", spec.index);
            glommio::spawn_local(client::publisher(
                shared.clone(),
                addr,
                version,
                spec,
                subscribers,
                id,
            ))
        })
        .collect();
    for p in pubs {
        p.await;
    }
    let mut results = Vec::new();
    for s in subs {
        results.push(s.await);
    }
    let histogram = histogram.borrow().clone();
    ThreadResult {
        histogram,
        subscribers: results,
        cpu: thread_cpu().saturating_sub(cpu_before),
        wall: started.elapsed(),
    }
}

/// Prints one line a second on stderr until `finished`.
fn progress_line(shared: Arc<Shared>, finished: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let (mut published, mut delivered, mut tick) = (0, 0, 0u64);
        while !finished.load(Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
            if shared.start.elapsed() < Duration::from_secs(tick + 1) {
                continue;
            }
            tick += 1;
            let (p, d) = (
                shared.published.load(Relaxed),
                shared.delivered.load(Relaxed),
            );
            let ready = shared.subscribed.load(Relaxed);
            eprintln!(
                "[{tick:>3}s] subscribed {ready}  published {:>10}/s  delivered {:>11}/s",
                p - published,
                d - delivered
            );
            (published, delivered) = (p, d);
        }
    })
}

/// CPU time (user + system) of `who` from getrusage.
fn rusage_cpu(who: libc::c_int) -> Duration {
    // SAFETY: getrusage only writes into the zeroed struct we pass, which outlives the call.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(who, &mut usage) != 0 {
            return Duration::ZERO;
        }
        usage
    };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    rusage_cpu(libc::RUSAGE_THREAD)
}

/// CPU time of the whole process.
fn process_cpu() -> Duration {
    rusage_cpu(libc::RUSAGE_SELF)
}
