//! Runs a plan: one glommio executor per generator thread, connections spread round-robin,
//! a progress line from a plain thread, results merged at the end.

use crate::client::{self, PublisherSpec, SubscriberResult};
use crate::conns::cpu_secs;
use crate::options::{parse_cpus, Options};
use crate::plan::{Plan, Shape, SubscriberPlan};
use crate::shared::Shared;
use crate::transport::Endpoint;
use glommio::{LocalExecutorBuilder, Placement};
use hdrhistogram::Histogram;
use ringcast::protocol::{QoS, Version};
use std::cell::RefCell;
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

/// Totals at one moment of the run, for the rates-over-time plot.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sample {
    /// Seconds since the start of the run.
    pub secs: f64,
    /// Messages published so far.
    pub published: u64,
    /// Deliveries so far.
    pub delivered: u64,
}

/// How often the timeline is sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// The QoS of `--qos`.
pub fn qos_of(opts: &Options) -> QoS {
    match opts.qos {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

/// The plan of `opts`, its topics under `prefix`.
pub fn plan_of(opts: &Options, prefix: &str) -> Plan {
    let shape = Shape {
        n: opts.subscribers,
        topics: opts.topics,
        publishers: opts.publishers,
    };
    Plan::new(opts.scenario, shape, prefix)
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
    /// Totals sampled every `SAMPLE_EVERY`.
    pub timeline: Vec<Sample>,
    /// CPU seconds the broker spent from the first publish to the end (with --broker-pid).
    pub broker_cpu_secs: Option<f64>,
}

/// The connections one thread owns.
#[derive(Default)]
struct Share {
    subscribers: Vec<(usize, SubscriberPlan)>,
    publishers: Vec<PublisherSpec>,
}

/// Runs the scenario of `opts` against `broker`.
pub fn run(opts: &Options, broker: &Endpoint) -> Result<Outcome, String> {
    let prefix = format!("rcb/{}", std::process::id());
    let plan = plan_of(opts, &prefix);
    let shared = Arc::new(Shared::new(
        plan.publisher_of_stream.clone(),
        plan.publishers(),
    ));
    let cpus = opts.cpus.as_deref().map(parse_cpus).transpose()?;
    let shares = split(opts, &plan);
    let started = Instant::now();
    let cpu_before = process_cpu();
    let finished = Arc::new(AtomicBool::new(false));
    let progress = progress_line(
        shared.clone(),
        finished.clone(),
        opts.quiet,
        opts.broker_pid,
    );
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
        let (shared, opts, broker) = (shared.clone(), opts.clone(), broker.clone());
        let subscribers = plan.subscribers.len();
        let handle = builder
            .spawn(move || run_thread(shared, opts, broker, share, subscribers))
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
    let (timeline, broker_cpu_secs) = progress.join().unwrap_or_default();
    Ok(Outcome {
        plan,
        shared,
        threads,
        wall: started.elapsed(),
        process_cpu: process_cpu().saturating_sub(cpu_before),
        timeline,
        broker_cpu_secs,
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
    let sharing = plan
        .subscribers
        .iter()
        .map(|s| s.publishers)
        .max()
        .unwrap_or(1) as u64;
    let window = (opts.window / sharing).max(1);
    let qos = qos_of(opts);
    let rate_per_s = opts.rate.map(|r| r / plan.publishers().max(1) as f64);
    for (i, topics) in plan.publisher_topics.iter().enumerate() {
        shares[i % opts.threads].publishers.push(PublisherSpec {
            index: i,
            topics: plan.topics[topics.clone()].to_vec(),
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
            rate_per_s,
        });
    }
    shares
}

/// One generator thread: its subscribers and publishers as tasks on this executor.
async fn run_thread(
    shared: Arc<Shared>,
    opts: Options,
    broker: Endpoint,
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
    let qos = qos_of(&opts);
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
                broker: broker.clone(),
                version,
                qos,
                plan,
                id: format!("rcb{pid}-s{i}"),
                drain,
            };
            glommio::spawn_local(client::subscriber(shared.clone(), spec, histogram.clone()))
        })
        .collect();
    // Publishers may use another node of a cluster (--publish-port).
    let mut publish_to = broker.clone();
    if let Some(port) = opts.publish_port {
        publish_to.addr.set_port(port);
    }
    let pubs: Vec<_> = share
        .publishers
        .into_iter()
        .map(|spec| {
            let id = format!("rcb{pid}-p{}", spec.index);
            glommio::spawn_local(client::publisher(
                shared.clone(),
                publish_to.clone(),
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

/// Samples the totals every `SAMPLE_EVERY` and, unless `quiet`, prints one line a second on
/// stderr, until `finished`. Gives back the samples and, given the broker's pid, the CPU time
/// it spent from the first publish (seen within 50 ms) to the end: connecting and subscribing
/// (TLS handshakes among them) are left out.
fn progress_line(
    shared: Arc<Shared>,
    finished: Arc<AtomicBool>,
    quiet: bool,
    broker_pid: Option<u32>,
) -> std::thread::JoinHandle<(Vec<Sample>, Option<f64>)> {
    std::thread::spawn(move || {
        let mut timeline = Vec::new();
        let (mut published, mut delivered, mut tick, mut line) = (0, 0, 0u32, 0u64);
        let mut broker_cpu_start = None;
        while !finished.load(Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
            if broker_cpu_start.is_none() && shared.publish_start_ns.load(Relaxed) != 0 {
                broker_cpu_start = broker_pid.and_then(cpu_secs);
            }
            if shared.start.elapsed() < SAMPLE_EVERY * (tick + 1) {
                continue;
            }
            tick += 1;
            let sample = Sample {
                secs: shared.start.elapsed().as_secs_f64(),
                published: shared.published.load(Relaxed),
                delivered: shared.delivered.load(Relaxed),
            };
            timeline.push(sample);
            if quiet || shared.start.elapsed() < Duration::from_secs(line + 1) {
                continue;
            }
            line += 1;
            let ready = shared.subscribed.load(Relaxed);
            eprintln!(
                "[{line:>3}s] subscribed {ready}  published {:>10}/s  delivered {:>11}/s",
                sample.published - published,
                sample.delivered - delivered
            );
            (published, delivered) = (sample.published, sample.delivered);
        }
        let broker_cpu_end = broker_pid.and_then(cpu_secs);
        let broker_cpu = broker_cpu_start
            .zip(broker_cpu_end)
            .map(|(start, end)| end - start);
        (timeline, broker_cpu)
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
pub fn thread_cpu() -> Duration {
    rusage_cpu(libc::RUSAGE_THREAD)
}

/// CPU time of the whole process.
fn process_cpu() -> Duration {
    rusage_cpu(libc::RUSAGE_SELF)
}
