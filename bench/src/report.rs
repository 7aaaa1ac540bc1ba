//! The figures of a run, as a table for people and as one JSON object for scripts.

use crate::conns::ConnsOutcome;
use crate::handshakes::HandshakesOutcome;
use crate::options::Options;
use crate::retained::RetainedOutcome;
use crate::run::{Outcome, Sample};
use hdrhistogram::Histogram;
use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;

/// A generator thread busier than this (CPU time ÷ wall time) may have limited the result.
const SATURATED_CPU: f64 = 0.9;
/// A broker result above this share of the --sink ceiling measured the generator, not the broker.
const CEILING_SHARE: f64 = 0.9;

/// The figures of one run.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// Broker address, or "sink".
    pub target: String,
    /// Whether the connections spoke TLS.
    pub is_tls: bool,
    /// QoS, payload bytes, publishers, subscribers.
    pub qos: u8,
    /// Payload bytes.
    pub payload_bytes: usize,
    /// Publishers.
    pub publishers: usize,
    /// Subscribers.
    pub subscribers: usize,
    /// Seconds from the first to the last publish.
    pub publish_secs: f64,
    /// Messages published.
    pub published: u64,
    /// Messages published per second.
    pub published_per_s: f64,
    /// PUBLISHes received by all subscribers (duplicates included).
    pub deliveries: u64,
    /// Deliveries per second, from the first publish to the last delivery.
    pub deliveries_per_s: f64,
    /// Deliveries a lossless broker would have made.
    pub expected: u64,
    /// Messages never received, summed over streams.
    pub lost: u64,
    /// Messages received twice.
    pub duplicated: u64,
    /// Messages received after a later one.
    pub reordered: u64,
    /// End-to-end latency percentiles, microseconds: p50, p90, p99, p99.9, max.
    pub latency_us: [f64; 5],
    /// Busiest generator thread: CPU time ÷ wall time.
    pub generator_cpu: f64,
    /// Whole process CPU time ÷ wall time (includes the sink).
    pub process_cpu: f64,
    /// Whether a generator thread was near 100% CPU.
    pub is_saturated: bool,
    /// Share of the given --ceiling reached, if one was given.
    pub ceiling_share: Option<f64>,
    /// Errors (lost connections, refusals).
    pub errors: Vec<String>,
    /// Open loop: the messages per second asked for; `None` for closed loop.
    pub rate: Option<f64>,
    /// The latency distribution as (percentile, µs) points, for the plot.
    pub percentiles: Vec<(f64, f64)>,
    /// Totals over time, for the plot.
    pub timeline: Vec<Sample>,
    /// The conns scenario's figures.
    pub conns: Option<ConnsOutcome>,
    /// The retained scenario's figures.
    pub retained: Option<RetainedOutcome>,
    /// The handshakes scenario's figures.
    pub handshakes: Option<HandshakesOutcome>,
    /// CPU seconds the broker spent from the first publish to the end (with --broker-pid).
    pub broker_cpu_secs: Option<f64>,
}

impl Report {
    /// Computes the figures from what the run brought back.
    pub fn new(opts: &Options, target: String, mut outcome: Outcome) -> Report {
        let shared = &outcome.shared;
        let secs = |ns: u64| ns as f64 / 1e9;
        let start = shared.publish_start_ns.load(Relaxed);
        let publish_secs = secs(shared.publish_end_ns.load(Relaxed).saturating_sub(start));
        let deliver_secs = secs(shared.last_delivery_ns.load(Relaxed).saturating_sub(start));
        let published: u64 = shared.final_count.iter().map(|c| c.load(Relaxed)).sum();
        let mut r = Report {
            scenario: format!("{:?}", opts.scenario).to_lowercase(),
            target,
            is_tls: opts.tls,
            qos: opts.qos,
            payload_bytes: opts.payload,
            publishers: outcome.plan.publishers(),
            subscribers: outcome.plan.subscribers.len(),
            publish_secs,
            published,
            published_per_s: rate(published, publish_secs),
            rate: opts.rate,
            timeline: std::mem::take(&mut outcome.timeline),
            broker_cpu_secs: outcome.broker_cpu_secs,
            ..Report::default()
        };
        let mut hist = Histogram::<u64>::new(3).expect("3 significant figures is valid");
        for thread in &mut outcome.threads {
            let _ = hist.add(&thread.histogram);
            let share = thread.cpu.as_secs_f64() / thread.wall.as_secs_f64().max(1e-9);
            r.generator_cpu = r.generator_cpu.max(share);
            for sub in &mut thread.subscribers {
                r.deliveries += sub.deliveries;
                for (stream, tracker) in &mut sub.streams {
                    let sent =
                        shared.final_count[outcome.plan.publisher_of_stream[*stream]].load(Relaxed);
                    tracker.finish(sent);
                    r.expected += sent;
                    (r.lost, r.duplicated, r.reordered) = (
                        r.lost + tracker.lost,
                        r.duplicated + tracker.duplicated,
                        r.reordered + tracker.reordered,
                    );
                }
            }
        }
        r.deliveries_per_s = rate(r.deliveries, deliver_secs);
        let us = |q: f64| hist.value_at_quantile(q) as f64 / 1e3;
        r.latency_us = [
            us(0.5),
            us(0.9),
            us(0.99),
            us(0.999),
            hist.max() as f64 / 1e3,
        ];
        r.percentiles = percentile_curve(&hist);
        r.process_cpu = outcome.process_cpu.as_secs_f64() / outcome.wall.as_secs_f64().max(1e-9);
        r.is_saturated = r.generator_cpu >= SATURATED_CPU;
        r.ceiling_share = opts.ceiling.map(|c| r.deliveries_per_s / c);
        r.errors = shared.errors.lock().map(|e| e.clone()).unwrap_or_default();
        r
    }

    /// The figures of the conns scenario.
    pub fn from_conns(opts: &Options, target: String, conns: ConnsOutcome) -> Report {
        Report {
            scenario: "conns".into(),
            target,
            is_tls: opts.tls,
            qos: opts.qos,
            payload_bytes: opts.payload,
            errors: conns.errors.clone(),
            conns: Some(conns),
            ..Report::default()
        }
    }

    /// The figures of the retained scenario.
    pub fn from_retained(opts: &Options, target: String, retained: RetainedOutcome) -> Report {
        Report {
            scenario: "retained".into(),
            target,
            is_tls: opts.tls,
            qos: opts.qos,
            payload_bytes: opts.payload,
            publishers: 1,
            subscribers: retained.subscribers(),
            errors: retained.errors.clone(),
            retained: Some(retained),
            ..Report::default()
        }
    }

    /// The figures of the handshakes scenario.
    pub fn from_handshakes(
        opts: &Options,
        target: String,
        handshakes: HandshakesOutcome,
    ) -> Report {
        Report {
            scenario: "handshakes".into(),
            target,
            is_tls: opts.tls,
            errors: handshakes.errors.clone(),
            handshakes: Some(handshakes),
            ..Report::default()
        }
    }

    /// " over TLS" after the target when the connections spoke TLS.
    fn over(&self) -> &'static str {
        if self.is_tls {
            " over TLS"
        } else {
            ""
        }
    }

    /// The broker's CPU time per delivery, nanoseconds (with --broker-pid).
    pub fn broker_cpu_ns_per_delivery(&self) -> Option<f64> {
        let secs = self.broker_cpu_secs?;
        (self.deliveries > 0).then(|| secs * 1e9 / self.deliveries as f64)
    }

    /// Whether the result is near the generator's own ceiling.
    pub fn is_near_ceiling(&self) -> bool {
        self.ceiling_share.is_some_and(|s| s > CEILING_SHARE)
    }

    /// The human table.
    pub fn table(&self) -> String {
        if let Some(r) = &self.retained {
            return self.retained_table(r);
        }
        if let Some(h) = &self.handshakes {
            return self.handshakes_table(h);
        }
        let mut t = String::new();
        if let Some(c) = &self.conns {
            let _ = writeln!(t, "scenario      conns → {}{}", self.target, self.over());
            let _ = writeln!(
                t,
                "connected     {} of {} in {:.2} s = {:.0} connections/s",
                c.opened,
                c.asked,
                c.connect_secs,
                c.connect_per_s()
            );
            let _ = writeln!(
                t,
                "failed        {} refused, {} timed out",
                c.refused, c.timed_out
            );
            if let (Some(a), Some(b)) = (c.rss_before_kib, c.rss_after_kib) {
                let per = c.rss_per_connection_bytes().unwrap_or(0.0);
                let _ = writeln!(
                    t,
                    "broker rss    {a} KiB → {b} KiB  = {per:.0} bytes per connection"
                );
            }
            if let Some(w) = &c.reconnect {
                let _ = writeln!(
                    t,
                    "reconnected   {} of {} in {:.2} s = {:.0} connections/s; {} refused, {} timed out",
                    w.opened,
                    c.opened,
                    w.secs,
                    w.per_s(),
                    w.refused,
                    w.timed_out
                );
            }
            if let Some(kib) = c.rss_reconnected_kib {
                let _ = writeln!(t, "broker rss    {kib} KiB after reconnecting");
            }
            for e in &self.errors {
                let _ = writeln!(t, "error         {e}");
            }
            return t;
        }
        let [p50, p90, p99, p999, max] = self.latency_us;
        let _ = writeln!(
            t,
            "scenario      {} → {}{}  (QoS {}, {} B payload, {} pub, {} sub)",
            self.scenario,
            self.target,
            self.over(),
            self.qos,
            self.payload_bytes,
            self.publishers,
            self.subscribers
        );
        let _ = writeln!(
            t,
            "published     {:>12} msgs in {:.2} s  = {:>12.0} msgs/s",
            self.published, self.publish_secs, self.published_per_s
        );
        let _ = writeln!(
            t,
            "delivered     {:>12} of {} expected = {:>12.0} deliveries/s",
            self.deliveries, self.expected, self.deliveries_per_s
        );
        let _ = writeln!(
            t,
            "lost/dup/reord {:>11} / {} / {}",
            self.lost, self.duplicated, self.reordered
        );
        if let Some(rate) = self.rate {
            let _ = writeln!(t, "open loop     {rate:.0} msgs/s asked for");
        }
        let _ = writeln!(
            t,
            "latency µs    p50 {p50:.1}  p90 {p90:.1}  p99 {p99:.1}  p99.9 {p999:.1}  max {max:.1}"
        );
        let saturated = if self.is_saturated {
            "  SATURATED: the generator may be the bottleneck"
        } else {
            ""
        };
        let _ = writeln!(
            t,
            "generator cpu {:.0}% busiest thread, {:.0}% process{saturated}",
            self.generator_cpu * 100.0,
            self.process_cpu * 100.0
        );
        if let (Some(secs), Some(ns)) = (self.broker_cpu_secs, self.broker_cpu_ns_per_delivery()) {
            let _ = writeln!(
                t,
                "broker cpu    {secs:.2} s from the first publish = {ns:.0} ns per delivery"
            );
        }
        if let Some(share) = self.ceiling_share {
            let flag = if self.is_near_ceiling() {
                "  NEAR CEILING: this measures the generator"
            } else {
                ""
            };
            let _ = writeln!(
                t,
                "of ceiling    {:.0}% of the --sink deliveries/s{flag}",
                share * 100.0
            );
        }
        for e in &self.errors {
            let _ = writeln!(t, "error         {e}");
        }
        t
    }

    /// The retained scenario's table.
    fn retained_table(&self, r: &RetainedOutcome) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "scenario      retained → {}{}  ({} messages of {} B, publish QoS {}, subscribe QoS {}, {} sub)",
            self.target, self.over(), r.retained, self.payload_bytes, r.publish_qos, r.subscribe_qos, r.subscribers()
        );
        let _ = writeln!(
            t,
            "stored        {} sent, {} acknowledged in {:.2} s = {:.0} msgs/s",
            r.published,
            r.acknowledged,
            r.publish_secs,
            r.published_per_s()
        );
        let _ = writeln!(
            t,
            "received      min {} of {} per subscriber, {} deliveries = {:.0} deliveries/s",
            r.received_min(),
            r.retained,
            r.deliveries,
            r.deliveries_per_s()
        );
        let all = r
            .all_complete_secs()
            .map_or("never".to_string(), |s| format!("{s:.3} s"));
        let spread = r
            .complete_spread()
            .map_or(String::new(), |[min, med, max]| {
                format!("  (per subscriber: min {min:.3} s, median {med:.3} s, max {max:.3} s)")
            });
        let _ = writeln!(
            t,
            "all had all   {all}{spread}, {} of {} complete",
            r.complete_secs.len(),
            r.subscribers()
        );
        if let (Some(a), Some(b), Some(c)) = (r.rss_before_kib, r.rss_published_kib, r.rss_end_kib)
        {
            let per = r.bytes_per_retained().unwrap_or(0.0);
            let _ = writeln!(
                t,
                "broker rss    {a} KiB → {b} KiB stored → {c} KiB at the end  = {per:.0} bytes per retained message"
            );
        }
        for e in &self.errors {
            let _ = writeln!(t, "error         {e}");
        }
        t
    }

    /// The handshakes scenario's table.
    fn handshakes_table(&self, h: &HandshakesOutcome) -> String {
        let mut t = String::new();
        let resume = if h.is_resume {
            "one session store: resumption"
        } else {
            "no session store: full handshakes"
        };
        let _ = writeln!(
            t,
            "scenario      handshakes → {} over TLS  ({resume}, {} at a time per thread)",
            self.target, h.parallel
        );
        let _ = writeln!(
            t,
            "handshakes    {} of {} in {:.2} s = {:.0} handshakes/s  ({} full, {} resumed)",
            h.completed(),
            h.asked,
            h.secs,
            h.handshakes_per_s(),
            h.full,
            h.resumed
        );
        let [p50, p90, p99, max] = h.latency_us;
        let _ = writeln!(
            t,
            "connect µs    p50 {p50:.1}  p90 {p90:.1}  p99 {p99:.1}  max {max:.1}  (TCP connect to CONNACK)"
        );
        let saturated = if h.generator_cpu >= SATURATED_CPU {
            "  SATURATED: the generator may be the bottleneck"
        } else {
            ""
        };
        let _ = writeln!(
            t,
            "generator cpu {:.0}% busiest thread{saturated}",
            h.generator_cpu * 100.0
        );
        if let (Some(secs), Some(us)) = (h.broker_cpu_secs, h.broker_cpu_us_per_handshake()) {
            let _ = writeln!(t, "broker cpu    {secs:.2} s = {us:.0} µs per connection");
        }
        for e in &self.errors {
            let _ = writeln!(t, "error         {e}");
        }
        t
    }

    /// The handshakes scenario's JSON object.
    fn handshakes_json(&self, h: &HandshakesOutcome) -> String {
        let [p50, p90, p99, max] = h.latency_us;
        let errors: Vec<String> = self.errors.iter().map(|e| json_string(e)).collect();
        format!(
            concat!(
                "{{\"scenario\":\"handshakes\",\"target\":{},\"tls\":true,\"resume\":{},\"parallel\":{},\"asked\":{},",
                "\"handshakes\":{},\"full\":{},\"resumed\":{},\"failed\":{},\"handshake_secs\":{:.3},",
                "\"handshakes_per_s\":{:.0},\"generator_cpu\":{:.3},\"saturated\":{},",
                "\"broker_cpu_s\":{},\"broker_cpu_us_per_handshake\":{},",
                "\"connect_us\":{{\"p50\":{:.1},\"p90\":{:.1},\"p99\":{:.1},\"max\":{:.1}}},\"errors\":[{}]}}"
            ),
            json_string(&self.target), h.is_resume, h.parallel, h.asked,
            h.completed(), h.full, h.resumed, h.failed, h.secs,
            h.handshakes_per_s(), h.generator_cpu, h.generator_cpu >= SATURATED_CPU,
            opt_digits(h.broker_cpu_secs, 3), opt_digits(h.broker_cpu_us_per_handshake(), 1),
            p50, p90, p99, max, errors.join(",")
        )
    }

    /// The retained scenario's JSON object.
    fn retained_json(&self, r: &RetainedOutcome) -> String {
        let opt = |v: Option<f64>, digits: usize| {
            v.map_or("null".to_string(), |v| format!("{v:.digits$}"))
        };
        let kib = |v: Option<u64>| opt(v.map(|v| v as f64), 0);
        let spread = r
            .complete_spread()
            .map_or("null".to_string(), |[min, med, max]| {
                format!("{{\"min\":{min:.3},\"median\":{med:.3},\"max\":{max:.3}}}")
            });
        let received: Vec<String> = r.received.iter().map(u64::to_string).collect();
        let errors: Vec<String> = self.errors.iter().map(|e| json_string(e)).collect();
        format!(
            concat!(
                "{{\"scenario\":\"retained\",\"target\":{},\"tls\":{},\"retained\":{},\"subscribers\":{},\"payload_bytes\":{},",
                "\"publish_qos\":{},\"subscribe_qos\":{},\"published\":{},\"acknowledged\":{},\"publish_secs\":{:.3},",
                "\"published_per_s\":{:.0},\"received_min\":{},\"received\":[{}],\"complete\":{},\"all_complete_secs\":{},",
                "\"complete_secs\":{},\"deliveries\":{},\"deliver_secs\":{:.3},\"deliveries_per_s\":{:.0},",
                "\"broker_rss_before_kib\":{},\"broker_rss_published_kib\":{},\"broker_rss_end_kib\":{},",
                "\"bytes_per_retained\":{},\"errors\":[{}]}}"
            ),
            json_string(&self.target), self.is_tls, r.retained, r.subscribers(), self.payload_bytes,
            r.publish_qos, r.subscribe_qos, r.published, r.acknowledged, r.publish_secs,
            r.published_per_s(), r.received_min(), received.join(","), r.complete_secs.len(), opt(r.all_complete_secs(), 3),
            spread, r.deliveries, r.deliver_secs, r.deliveries_per_s(),
            kib(r.rss_before_kib), kib(r.rss_published_kib), kib(r.rss_end_kib),
            opt(r.bytes_per_retained(), 1), errors.join(",")
        )
    }

    /// One JSON object on one line.
    pub fn json(&self) -> String {
        if let Some(r) = &self.retained {
            return self.retained_json(r);
        }
        if let Some(h) = &self.handshakes {
            return self.handshakes_json(h);
        }
        let [p50, p90, p99, p999, max] = self.latency_us;
        let errors: Vec<String> = self.errors.iter().map(|e| json_string(e)).collect();
        let opt = |v: Option<f64>| v.map_or("null".to_string(), |v| format!("{v:.0}"));
        let c = self.conns.clone().unwrap_or_default();
        let reconnect = c.reconnect.as_ref().map_or("null".to_string(), |w| {
            format!(
                "{{\"connections\":{},\"connect_per_s\":{:.0},\"refused\":{},\"timed_out\":{}}}",
                w.opened,
                w.per_s(),
                w.refused,
                w.timed_out
            )
        });
        let conns = format!(
            concat!(
                "\"connections\":{},\"connect_per_s\":{:.0},\"refused\":{},\"timed_out\":{},",
                "\"broker_rss_before_kib\":{},\"broker_rss_after_kib\":{},",
                "\"rss_per_connection_bytes\":{},\"reconnect\":{},\"broker_rss_reconnected_kib\":{}"
            ),
            c.opened,
            c.connect_per_s(),
            c.refused,
            c.timed_out,
            opt(c.rss_before_kib.map(|v| v as f64)),
            opt(c.rss_after_kib.map(|v| v as f64)),
            opt(c.rss_per_connection_bytes()),
            reconnect,
            opt(c.rss_reconnected_kib.map(|v| v as f64))
        );
        format!(
            concat!(
                "{{\"scenario\":{},\"target\":{},\"tls\":{},\"qos\":{},\"payload_bytes\":{},\"publishers\":{},\"subscribers\":{},",
                "\"publish_secs\":{:.3},\"published\":{},\"published_per_s\":{:.0},\"deliveries\":{},\"deliveries_per_s\":{:.0},",
                "\"expected\":{},\"lost\":{},\"duplicated\":{},\"reordered\":{},",
                "\"latency_us\":{{\"p50\":{:.1},\"p90\":{:.1},\"p99\":{:.1},\"p999\":{:.1},\"max\":{:.1}}},",
                "\"generator_cpu\":{:.3},\"process_cpu\":{:.3},\"saturated\":{},\"ceiling_share\":{},\"near_ceiling\":{},\"rate\":{},{},",
                "\"broker_cpu_s\":{},\"broker_cpu_ns_per_delivery\":{},\"errors\":[{}]}}"
            ),
            json_string(&self.scenario), json_string(&self.target), self.is_tls, self.qos, self.payload_bytes, self.publishers, self.subscribers,
            self.publish_secs, self.published, self.published_per_s, self.deliveries, self.deliveries_per_s,
            self.expected, self.lost, self.duplicated, self.reordered,
            p50, p90, p99, p999, max,
            self.generator_cpu, self.process_cpu, self.is_saturated,
            self.ceiling_share.map_or("null".to_string(), |s| format!("{s:.3}")), self.is_near_ceiling(), opt(self.rate), conns,
            opt_digits(self.broker_cpu_secs, 3), opt_digits(self.broker_cpu_ns_per_delivery(), 1), errors.join(",")
        )
    }
}

/// Points of the latency distribution, evenly spaced on a log scale of 1 / (1 − q), from p0
/// to the last percentile the histogram can tell (p99.999 for a million samples).
fn percentile_curve(hist: &Histogram<u64>) -> Vec<(f64, f64)> {
    if hist.is_empty() {
        return Vec::new();
    }
    let deepest = (hist.len() as f64).log10().clamp(1.0, 7.0);
    let steps = 100;
    (0..=steps)
        .map(|i| {
            let nines = deepest * i as f64 / steps as f64;
            let q = 1.0 - 10f64.powf(-nines);
            (q * 100.0, hist.value_at_quantile(q) as f64 / 1e3)
        })
        .collect()
}

/// A number with `digits` decimals, or null.
fn opt_digits(v: Option<f64>, digits: usize) -> String {
    v.map_or("null".to_string(), |v| format!("{v:.digits$}"))
}

fn rate(n: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

/// A JSON string literal; hand-written because the report is flat and serde_json is not a
/// dependency of the broker.
fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_escapes() {
        assert_eq!(json_string("a\"b\\\n"), "\"a\\\"b\\\\\\u000a\"");
    }
}
