//! The retained scenario: one publisher stores N retained messages on `ret/<i/1000>/<i%1000>`,
//! then M subscribers with clean sessions subscribe to `ret/#` at the same moment and read the
//! whole set back as fast as they can. It measures how fast a broker takes a large retained set
//! in, what one retained message costs it in memory (with --broker-pid), and how fast it hands
//! the set to new subscribers.
//!
//! A broker may drop part of the set, on the way in or on the way out (mosquitto queues at most
//! `max_queued_messages` QoS 1/2 messages per client); every phase is bounded by --duration and
//! a subscriber that hears nothing for --drain seconds stops, so such a run reports how much
//! arrived instead of hanging.

use crate::client::{invalid, subscribe_packet, Conn};
use crate::conns::rss_kib;
use crate::options::{parse_cpus, Options};
use crate::transport::Endpoint;
use bytes::Bytes;
use glommio::{LocalExecutorBuilder, Placement};
use ringcast::protocol::*;
use std::io;
use std::time::{Duration, Instant};

/// The filter every subscriber uses; topics are `ret/<i / 1000>/<i % 1000>`.
const FILTER: &str = "ret/#";
/// Topics per second-level group.
const GROUP_TOPICS: usize = 1000;
/// QoS 2 PUBLISHes awaiting PUBCOMP, at most: brokers bound inbound QoS 2 (ringcast's Receive
/// Maximum is 64 by default and it disconnects a 3.1.1 client that goes past it).
const QOS2_INFLIGHT_MAX: u64 = 32;
/// PUBLISHes written in one batch, at most.
const BATCH: u64 = 64;
/// Pause before reading the broker's memory, so it settles after a phase.
const SETTLE: Duration = Duration::from_millis(500);
/// Most errors kept for the report.
const ERRORS_MAX: usize = 5;

/// What the retained scenario measured.
#[derive(Clone, Debug, Default)]
pub struct RetainedOutcome {
    /// Retained messages asked for (N).
    pub retained: u64,
    /// QoS of the retained PUBLISHes.
    pub publish_qos: u8,
    /// QoS of the subscriptions.
    pub subscribe_qos: u8,
    /// PUBLISHes written.
    pub published: u64,
    /// PUBLISHes the broker confirmed: PUBACKs or PUBCOMPs; at QoS 0 all of them once the
    /// PINGRESP after the last one came back.
    pub acknowledged: u64,
    /// Seconds from the first PUBLISH to the last acknowledgement.
    pub publish_secs: f64,
    /// Per subscriber: distinct retained topics received.
    pub received: Vec<u64>,
    /// Per subscriber that got all N: seconds from the start of phase 2 until it had them.
    pub complete_secs: Vec<f64>,
    /// PUBLISHes received by all subscribers (duplicates included).
    pub deliveries: u64,
    /// Seconds from the start of phase 2 to the last PUBLISH any subscriber received.
    pub deliver_secs: f64,
    /// The broker's resident memory before publishing, KiB (with --broker-pid).
    pub rss_before_kib: Option<u64>,
    /// The broker's resident memory with the retained set stored, KiB.
    pub rss_published_kib: Option<u64>,
    /// The broker's resident memory once the subscribers are gone, KiB.
    pub rss_end_kib: Option<u64>,
    /// Errors, at most a few; a subscriber short of N is one.
    pub errors: Vec<String>,
}

impl RetainedOutcome {
    /// Subscribers (M).
    pub fn subscribers(&self) -> usize {
        self.received.len()
    }

    /// The fewest distinct retained topics any subscriber received.
    pub fn received_min(&self) -> u64 {
        self.received.iter().copied().min().unwrap_or(0)
    }

    /// Seconds until every subscriber had all N; `None` if one never did.
    pub fn all_complete_secs(&self) -> Option<f64> {
        let all = !self.received.is_empty() && self.complete_secs.len() == self.received.len();
        all.then(|| self.complete_secs.iter().copied().fold(0.0, f64::max))
    }

    /// Min, median and max of `complete_secs`; `None` if no subscriber got everything.
    pub fn complete_spread(&self) -> Option<[f64; 3]> {
        let mut secs = self.complete_secs.clone();
        secs.sort_by(f64::total_cmp);
        let (first, last) = (*secs.first()?, *secs.last()?);
        Some([first, secs[secs.len() / 2], last])
    }

    /// PUBLISHes written per second in phase 1.
    pub fn published_per_s(&self) -> f64 {
        per_s(self.published, self.publish_secs)
    }

    /// PUBLISHes received per second in phase 2, all subscribers together.
    pub fn deliveries_per_s(&self) -> f64 {
        per_s(self.deliveries, self.deliver_secs)
    }

    /// The broker's memory per retained message acknowledged, bytes.
    pub fn bytes_per_retained(&self) -> Option<f64> {
        let (before, after) = (self.rss_before_kib?, self.rss_published_kib?);
        (self.acknowledged > 0)
            .then(|| after.saturating_sub(before) as f64 * 1024.0 / self.acknowledged as f64)
    }
}

fn per_s(n: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

/// The topic of retained message `i`.
pub fn topic(i: usize) -> String {
    format!("ret/{}/{}", i / GROUP_TOPICS, i % GROUP_TOPICS)
}

/// The index of a topic made by `topic`, if it is one.
pub fn topic_index(topic: &[u8]) -> Option<usize> {
    let rest = topic.strip_prefix(b"ret/")?;
    let slash = rest.iter().position(|&b| b == b'/')?;
    let (group, leaf) = (decimal(&rest[..slash])?, decimal(&rest[slash + 1..])?);
    (leaf < GROUP_TOPICS).then(|| group * GROUP_TOPICS + leaf)
}

fn decimal(digits: &[u8]) -> Option<usize> {
    if digits.is_empty() || digits.len() > 9 {
        return None;
    }
    digits.iter().try_fold(0usize, |n, &d| {
        d.is_ascii_digit().then(|| n * 10 + usize::from(d - b'0'))
    })
}

/// Which of the N topics a subscriber has seen: one bit each.
struct Seen {
    bits: Vec<u64>,
    count: u64,
}

impl Seen {
    fn new(n: usize) -> Seen {
        Seen {
            bits: vec![0; n.div_ceil(64)],
            count: 0,
        }
    }

    /// Marks topic `i` (below N); counts it if it is new.
    fn insert(&mut self, i: usize) {
        let (word, bit) = (i / 64, 1u64 << (i % 64));
        if self.bits[word] & bit == 0 {
            self.bits[word] |= bit;
            self.count += 1;
        }
    }
}

/// The settings both phases share.
#[derive(Clone, Debug)]
struct Setup {
    broker: Endpoint,
    version: Version,
    /// Retained messages (N).
    n: usize,
}

/// Runs the retained scenario of `opts` against `broker`.
pub fn run(opts: &Options, broker: &Endpoint) -> Result<RetainedOutcome, String> {
    let setup = Setup {
        broker: broker.clone(),
        version: if opts.mqtt_version == 5 {
            Version::V5
        } else {
            Version::V311
        },
        n: opts.retained,
    };
    let cpus = opts.cpus.as_deref().map(parse_cpus).transpose()?;
    let placement = |t: usize| {
        cpus.as_ref()
            .map_or(Placement::Unbound, |c| Placement::Fixed(c[t % c.len()]))
    };
    let rss = || opts.broker_pid.and_then(rss_kib);
    let mut outcome = RetainedOutcome {
        retained: setup.n as u64,
        publish_qos: opts.qos,
        subscribe_qos: opts.sub_qos.unwrap_or(opts.qos),
        rss_before_kib: rss(),
        ..RetainedOutcome::default()
    };

    let spec = PublishSpec {
        qos: qos(opts.qos),
        payload: Bytes::from(vec![b'r'; opts.payload]),
        inflight: opts.inflight,
        limit: opts.duration(),
    };
    let publish_setup = setup.clone();
    let phase1 = LocalExecutorBuilder::new(placement(0))
        .name("retained-pub")
        .io_memory(64 << 10)
        .spawn(move || publish_phase(publish_setup, spec))
        .map_err(|e| format!("cannot start the publisher thread: {e}"))?
        .join()
        .map_err(|e| format!("publisher thread failed: {e}"))?;
    outcome.published = phase1.sent;
    outcome.acknowledged = phase1.acknowledged;
    outcome.publish_secs = phase1.secs;
    outcome.errors.extend(phase1.error);
    std::thread::sleep(SETTLE);
    outcome.rss_published_kib = rss();

    let readings = read_phase(opts, &setup, placement)?;
    std::thread::sleep(SETTLE);
    outcome.rss_end_kib = rss();
    for r in readings {
        outcome.received.push(r.distinct);
        outcome
            .complete_secs
            .extend(r.complete_at.map(|d| d.as_secs_f64()));
        outcome.deliveries += r.publishes;
        if let Some(last) = r.last_at {
            outcome.deliver_secs = outcome.deliver_secs.max(last.as_secs_f64());
        }
        outcome.errors.extend(r.error);
    }
    let short = outcome
        .received
        .iter()
        .filter(|&&r| r < setup.n as u64)
        .count();
    if short > 0 {
        outcome.errors.push(format!(
            "{short} of {} subscribers received fewer than {} retained messages (min {})",
            outcome.subscribers(),
            setup.n,
            outcome.received_min()
        ));
    }
    if outcome.errors.len() > ERRORS_MAX {
        let more = outcome.errors.len() - ERRORS_MAX;
        outcome.errors.truncate(ERRORS_MAX);
        outcome.errors.push(format!("and {more} more"));
    }
    Ok(outcome)
}

fn qos(level: u8) -> QoS {
    match level {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

/// Phase 2: M subscribers spread round-robin over --threads pinned threads, all connecting at
/// once; returns what each read, in subscriber order.
fn read_phase(
    opts: &Options,
    setup: &Setup,
    placement: impl Fn(usize) -> Placement,
) -> Result<Vec<Reading>, String> {
    let m = opts.subscribers;
    let started = Instant::now();
    let clock = Clock {
        started,
        deadline: started + opts.duration(),
        idle: Duration::from_secs_f64(opts.drain.max(0.1)),
    };
    let sub_qos = qos(opts.sub_qos.unwrap_or(opts.qos));
    let mut handles = Vec::new();
    for t in 0..opts.threads.min(m) {
        let ids: Vec<usize> = (t..m).step_by(opts.threads).collect();
        let setup = setup.clone();
        let handle = LocalExecutorBuilder::new(placement(t))
            .name(&format!("retained-sub-{t}"))
            .io_memory(64 << 10)
            .spawn(move || read_thread(setup, sub_qos, ids, clock))
            .map_err(|e| format!("cannot start generator thread {t}: {e}"))?;
        handles.push(handle);
    }
    let mut readings: Vec<(usize, Reading)> = Vec::with_capacity(m);
    for h in handles {
        readings.extend(
            h.join()
                .map_err(|e| format!("generator thread failed: {e}"))?,
        );
    }
    readings.sort_by_key(|(i, _)| *i);
    Ok(readings.into_iter().map(|(_, r)| r).collect())
}

/// Phase 2's clock, shared by every subscriber.
#[derive(Clone, Copy, Debug)]
struct Clock {
    started: Instant,
    /// When every subscriber stops, complete or not (--duration after the start).
    deadline: Instant,
    /// A subscriber that received nothing for this long stops (--drain).
    idle: Duration,
}

/// What one subscriber read.
#[derive(Debug, Default)]
struct Reading {
    /// Distinct retained topics (RETAIN set, below N).
    distinct: u64,
    /// PUBLISHes, duplicates and non-retained included.
    publishes: u64,
    /// When it had all N, since the start of phase 2.
    complete_at: Option<Duration>,
    /// When its last PUBLISH arrived, since the start of phase 2.
    last_at: Option<Duration>,
    error: Option<String>,
}

/// One generator thread of phase 2: its subscribers, concurrently.
async fn read_thread(
    setup: Setup,
    qos: QoS,
    ids: Vec<usize>,
    clock: Clock,
) -> Vec<(usize, Reading)> {
    let pid = std::process::id();
    let tasks: Vec<_> = ids
        .into_iter()
        .map(|i| {
            let id = format!("rcb{pid}-r{i}");
            let setup = setup.clone();
            glommio::spawn_local(async move { (i, subscriber(&setup, qos, &id, clock).await) })
        })
        .collect();
    let mut readings = Vec::with_capacity(tasks.len());
    for task in tasks {
        readings.push(task.await);
    }
    readings
}

/// Connects with a clean session, subscribes to `ret/#` and reads until it has all N, until the
/// deadline, or until the broker has been quiet for `clock.idle`.
async fn subscriber(setup: &Setup, qos: QoS, id: &str, clock: Clock) -> Reading {
    let mut reading = Reading::default();
    let result = async {
        let mut conn = Conn::open_until(&setup.broker, setup.version, id, clock.deadline).await?;
        conn.queue(&subscribe_packet(FILTER, qos)?)?;
        conn.flush().await?;
        read_retained(&mut conn, setup.n, clock, &mut reading).await?;
        conn.disconnect().await;
        Ok::<(), io::Error>(())
    }
    .await;
    if let Err(e) = result {
        reading.error = Some(format!("subscriber {id}: {e}"));
    }
    reading
}

/// The subscriber's read loop: counts distinct retained topics and acknowledges as it goes
/// (PUBACK at QoS 1; PUBREC, then PUBCOMP for the broker's PUBREL, at QoS 2). The SUBACK is
/// handled here too, since retained PUBLISHes may follow it in the same read.
async fn read_retained(
    conn: &mut Conn,
    n: usize,
    clock: Clock,
    reading: &mut Reading,
) -> io::Result<()> {
    let mut seen = Seen::new(n);
    let mut heard = Instant::now();
    while seen.count < n as u64 {
        let now = Instant::now();
        if now > clock.deadline || now.duration_since(heard) > clock.idle {
            break;
        }
        if !conn.fill().await? {
            continue;
        }
        heard = Instant::now();
        while let Some(packet) = conn.next_packet()? {
            let answer = match packet {
                Packet::Publish(publish) => {
                    reading.publishes += 1;
                    reading.last_at = Some(heard.duration_since(clock.started));
                    let index = topic_index(publish.topic.as_bytes()).filter(|&i| i < n);
                    if let (true, Some(i)) = (publish.retain, index) {
                        seen.insert(i);
                    }
                    match publish.qos {
                        QoS::AtMostOnce => None,
                        QoS::AtLeastOnce => Some(Packet::PubAck(ack(publish.pkid))),
                        QoS::ExactlyOnce => Some(Packet::PubRec(ack(publish.pkid))),
                    }
                }
                Packet::PubRel(rel) => Some(Packet::PubComp(ack(rel.pkid))),
                Packet::SubAck(suback) if suback.reason_codes.iter().any(|c| c.0 >= 0x80) => {
                    return Err(invalid(&format!("SUBSCRIBE refused: {suback:?}")));
                }
                _ => None,
            };
            if let Some(answer) = answer {
                conn.queue(&answer)?;
            }
        }
        conn.flush().await?;
        if seen.count == n as u64 {
            reading.complete_at = Some(heard.duration_since(clock.started));
        }
    }
    reading.distinct = seen.count;
    Ok(())
}

fn ack(pkid: u16) -> Ack {
    Ack {
        pkid,
        ..Ack::default()
    }
}

/// What the publisher of phase 1 needs.
#[derive(Clone, Debug)]
struct PublishSpec {
    qos: QoS,
    payload: Bytes,
    /// QoS 1/2 PUBLISHes not yet acknowledged, at most (--inflight).
    inflight: u64,
    /// How long the phase may take (--duration).
    limit: Duration,
}

/// What phase 1 did.
#[derive(Debug, Default)]
struct Published {
    sent: u64,
    acknowledged: u64,
    secs: f64,
    error: Option<String>,
}

/// Phase 1: connects one publisher and stores the retained set.
async fn publish_phase(setup: Setup, spec: PublishSpec) -> Published {
    let deadline = Instant::now() + spec.limit;
    let id = format!("rcb{}-rp", std::process::id());
    let mut done = Published::default();
    let result = async {
        let mut conn = Conn::open_until(&setup.broker, setup.version, &id, deadline).await?;
        publish_all(&mut conn, setup.n as u64, &spec, deadline, &mut done).await?;
        conn.disconnect().await;
        Ok::<(), io::Error>(())
    }
    .await;
    if let Err(e) = result {
        done.error = Some(format!("publisher: {e}"));
    } else if done.acknowledged < setup.n as u64 {
        done.error = Some(format!(
            "publisher: {} of {} retained messages acknowledged within --duration",
            done.acknowledged, setup.n
        ));
    }
    done
}

/// Publishes message 0..n with RETAIN set, keeping at most a window of unacknowledged QoS 1/2
/// PUBLISHes (PUBACK, or PUBREC → PUBREL → PUBCOMP). At QoS 0 a PINGREQ follows the last
/// PUBLISH: its PINGRESP says the broker has read them all.
async fn publish_all(
    conn: &mut Conn,
    n: u64,
    spec: &PublishSpec,
    deadline: Instant,
    done: &mut Published,
) -> io::Result<()> {
    let window = match spec.qos {
        QoS::AtMostOnce => u64::MAX,
        QoS::AtLeastOnce => spec.inflight,
        QoS::ExactlyOnce => spec.inflight.min(QOS2_INFLIGHT_MAX),
    }
    .min(conn.receive_maximum.map_or(u64::MAX, u64::from))
    .max(1);
    let started = Instant::now();
    let mut is_pinged = false;
    while done.acknowledged < n && Instant::now() < deadline {
        let room = window
            .saturating_sub(done.sent - done.acknowledged)
            .min(n - done.sent)
            .min(BATCH);
        if room > 0 {
            for i in done.sent..done.sent + room {
                conn.queue(&retained_publish(i, spec)?)?;
            }
            conn.flush().await?;
            done.sent += room;
            continue;
        }
        if spec.qos == QoS::AtMostOnce && !is_pinged {
            conn.queue(&Packet::PingReq)?;
            conn.flush().await?;
            is_pinged = true;
        }
        if !conn.fill().await? {
            continue;
        }
        while let Some(packet) = conn.next_packet()? {
            match packet {
                Packet::PubAck(_) | Packet::PubComp(_) => done.acknowledged += 1,
                Packet::PubRec(rec) => conn.queue(&Packet::PubRel(ack(rec.pkid)))?,
                Packet::PingResp => done.acknowledged = done.sent,
                _ => {}
            }
        }
        conn.flush().await?;
    }
    done.secs = started.elapsed().as_secs_f64();
    Ok(())
}

/// Retained message `i`; packet ids run 1..=65535 in turn, which the window keeps unique.
fn retained_publish(i: u64, spec: &PublishSpec) -> io::Result<Packet> {
    Ok(Packet::Publish(Publish {
        dup: false,
        qos: spec.qos,
        retain: true,
        topic: MqttString::from_str_checked(&topic(i as usize)).ok_or_else(|| invalid("topic"))?,
        pkid: if spec.qos == QoS::AtMostOnce {
            0
        } else {
            (i % 65_535 + 1) as u16
        },
        properties: Props::default(),
        payload: spec.payload.clone(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_round_trip() {
        for i in [0, 1, 999, 1000, 99_999, 999_999] {
            assert_eq!(topic_index(topic(i).as_bytes()), Some(i));
        }
        assert_eq!(topic(12_345), "ret/12/345");
        for bad in [
            "ret/1",
            "ret/1/1000",
            "ret//1",
            "ret/1/x",
            "rot/1/1",
            "ret/1/2/3",
        ] {
            assert_eq!(topic_index(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn seen_counts_each_topic_once() {
        let mut seen = Seen::new(130);
        for i in [0, 64, 129, 64, 0] {
            seen.insert(i);
        }
        assert_eq!(seen.count, 3);
    }

    #[test]
    fn outcome_figures() {
        let mut o = RetainedOutcome {
            acknowledged: 1000,
            received: vec![1000, 400, 1000],
            complete_secs: vec![0.3, 0.1],
            rss_before_kib: Some(1000),
            rss_published_kib: Some(2000),
            ..RetainedOutcome::default()
        };
        assert_eq!(o.received_min(), 400);
        assert_eq!(o.all_complete_secs(), None);
        assert_eq!(o.complete_spread(), Some([0.1, 0.3, 0.3]));
        assert_eq!(o.bytes_per_retained(), Some(1024.0));
        o.received[1] = 1000;
        o.complete_secs.push(0.2);
        assert_eq!(o.all_complete_secs(), Some(0.3));
        assert_eq!(o.complete_spread(), Some([0.1, 0.2, 0.3]));
    }
}
