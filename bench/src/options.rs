//! The generator's command line.

use clap::{Parser, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

/// Which clients talk to which.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// 1 publisher → N subscribers on one topic.
    Fanout,
    /// N publishers, each on its own topic → 1 subscriber to all of them.
    Fanin,
    /// N publisher/subscriber pairs, each pair on its own topic.
    Pairs,
    /// --publishers publishers over a tree of --topics topics → N subscribers on `+` and `#`
    /// filters, each following one publisher's subtree.
    Wildcard,
    /// N idle connections: connect rate and, with --broker-pid, the broker's memory per
    /// connection.
    Conns,
    /// One publisher stores --retained retained messages, then N subscribers to `ret/#` read
    /// them all back: store and delivery rates and, with --broker-pid, memory per message.
    Retained,
    /// N connections over TLS opened (handshake, CONNECT, CONNACK) and closed as fast as the
    /// broker allows: handshakes per second, full ones or, with --resume, resumed ones.
    Handshakes,
}

/// Most retained messages one run may store: 10 M is a few GiB in any broker.
const RETAINED_MAX: usize = 10_000_000;
/// Most connections one generator thread opens at once in handshakes (file descriptors).
const PARALLEL_MAX: usize = 10_000;

/// ringcast-bench: MQTT load generator (closed loop, end-to-end latency, loss accounting).
#[derive(Parser, Debug, Clone)]
#[command(version, about)]
pub struct Options {
    /// Scenario to run.
    #[arg(value_enum, default_value = "fanout")]
    pub scenario: Scenario,
    /// Broker host (loopback only: the generator refuses other addresses).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Broker port.
    #[arg(long, default_value_t = 1883)]
    pub port: u16,
    /// Port the publishers connect to instead of --port (same host): publishers on one
    /// cluster node, subscribers on another.
    #[arg(long, value_name = "PORT")]
    pub publish_port: Option<u16>,
    /// MQTT version: 3 (3.1.1) or 5.
    #[arg(long = "mqtt-version", default_value_t = 3, value_parser = clap::value_parser!(u8).range(3..=5))]
    pub mqtt_version: u8,
    /// QoS of publishes and subscriptions: 0, 1 or 2.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,
    /// Payload size in bytes (at least 16: sequence number and send time).
    #[arg(long, default_value_t = 16)]
    pub payload: usize,
    /// N: subscribers in fanout, wildcard and retained, publishers in fanin, pairs in pairs,
    /// connections in conns and handshakes.
    #[arg(long, short = 'n', default_value_t = 100)]
    pub subscribers: usize,
    /// Wildcard: topics in the tree.
    #[arg(long, default_value_t = 10_000)]
    pub topics: usize,
    /// Wildcard: publishers, each owning an equal share of the topics.
    #[arg(long, default_value_t = 10)]
    pub publishers: usize,
    /// Open loop: messages per second, all publishers together, sent on a fixed schedule.
    /// Latency counts from each message's scheduled time, so a stalled broker cannot hide
    /// behind a slowed-down generator. Without it the run is closed loop (--window).
    #[arg(long, value_name = "PER_S")]
    pub rate: Option<f64>,
    /// The broker's pid: conns and retained read its resident memory before and after; the
    /// other scenarios read the CPU time it spends while loaded (per delivery, per handshake).
    #[arg(long, value_name = "PID")]
    pub broker_pid: Option<u32>,
    /// Seconds to publish for; in retained, the most each of its two phases may take.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Messages per publisher; stops earlier than --duration when reached.
    #[arg(long)]
    pub count: Option<u64>,
    /// Most messages sent and not yet received by the slowest subscriber (in fanin, shared by
    /// the publishers of that subscriber).
    #[arg(long, default_value_t = 1000)]
    pub window: u64,
    /// QoS 1/2: most PUBLISHes a publisher may have without a PUBACK or PUBCOMP (at most 32 at
    /// QoS 2 in retained, below brokers' inbound QoS 2 limits).
    #[arg(long, default_value_t = 1000)]
    pub inflight: u64,
    /// Messages a publisher writes in one batch, at most.
    #[arg(long, default_value_t = 64)]
    pub batch: u64,
    /// Generator threads (glommio executors); connections are spread round-robin.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// CPUs to pin generator threads to, e.g. `1` or `0-3`; default: unpinned.
    #[arg(long, value_name = "LIST")]
    pub cpus: Option<String>,
    /// Spin this many microseconds before an idle thread sleeps (cuts wake-up latency, burns CPU).
    #[arg(long, default_value_t = 0)]
    pub spin_us: u64,
    /// Seconds to wait for the last messages once publishing stops; in retained, a subscriber
    /// that receives nothing for this long stops.
    #[arg(long, default_value_t = 2.0)]
    pub drain: f64,
    /// Retained: messages stored, on topics `ret/<i/1000>/<i%1000>`.
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    pub retained: usize,
    /// Retained: QoS of the subscriptions; default --qos.
    #[arg(long = "sub-qos", value_parser = clap::value_parser!(u8).range(0..=2))]
    pub sub_qos: Option<u8>,
    /// Run against an in-process forwarder instead of a broker (fanout, fanin and pairs; QoS 0
    /// or 1): the generator's own ceiling.
    #[arg(long)]
    pub sink: bool,
    /// CPU to pin the --sink forwarder to.
    #[arg(long, value_name = "CPU")]
    pub sink_cpu: Option<usize>,
    /// Deliveries/s the generator reached against --sink; results above 90% of it are flagged.
    #[arg(long, value_name = "PER_S")]
    pub ceiling: Option<f64>,
    /// Every client keeps a persistent session (what a broker with persistence stores).
    #[arg(long)]
    pub persistent: bool,
    /// Print one JSON object on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Also write a self-contained HTML page: latency percentile plot and rates over time.
    #[arg(long, value_name = "FILE")]
    pub html: Option<std::path::PathBuf>,
    /// No progress line on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// Every connection speaks MQTT over TLS (1.3 or 1.2); needs --cafile.
    #[arg(long)]
    pub tls: bool,
    /// With --tls: the CA certificates (PEM) that sign the broker's certificate.
    #[arg(long, value_name = "FILE")]
    pub cafile: Option<PathBuf>,
    /// With --tls: a client certificate chain (PEM) to present; needs --key.
    #[arg(long, value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// With --tls: the private key (PEM) of --cert.
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// With --tls: the name the broker's certificate must carry (a DNS name or an IP address).
    #[arg(long, value_name = "NAME", default_value = "localhost")]
    pub tls_server_name: String,
    /// Handshakes and conns: connections being opened (and in handshakes closed) at the same
    /// time, per generator thread: enough that the rate measures the broker's work, not one
    /// connection's round trips.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub parallel: usize,
    /// Conns: every connection of a generator thread starts at once (a connection storm)
    /// instead of --parallel at a time.
    #[arg(long)]
    pub storm: bool,
    /// Conns: once all are connected, every client closes and connects again at once with the
    /// same client id (a reconnect wave), measured like the first.
    #[arg(long)]
    pub reconnect: bool,
    /// Every connection speaks MQTT over WebSocket (ws://, or wss:// with --tls): masked
    /// binary frames out, the broker's frames unwrapped in.
    #[arg(long)]
    pub websocket: bool,
    /// With --websocket: the path the broker serves MQTT over WebSocket on.
    #[arg(long, value_name = "PATH", default_value = "/mqtt")]
    pub ws_path: String,
    /// With --tls: one session store for all connections, so each resumes a session an earlier
    /// one began (TLS 1.3 tickets, TLS 1.2 session ids); without it every handshake is full.
    #[arg(long)]
    pub resume: bool,
}

impl Options {
    /// How long publishers run at most.
    pub fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.duration.max(0.0))
    }

    /// Checks the combinations clap cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.payload < crate::payload::PAYLOAD_MIN_BYTES {
            return Err("--payload must be at least 16 bytes".into());
        }
        if self.mqtt_version == 4 {
            return Err("--mqtt-version is 3 (3.1.1) or 5".into());
        }
        if self.subscribers == 0 || self.threads == 0 || self.window == 0 || self.batch == 0 {
            return Err("--subscribers, --threads, --window and --batch must be positive".into());
        }
        if self.parallel == 0 || self.parallel > PARALLEL_MAX {
            return Err(format!("--parallel must be 1..={PARALLEL_MAX}"));
        }
        if self.inflight == 0 || self.inflight > 65_535 {
            return Err("--inflight must be 1..=65535".into());
        }
        if !(self.duration > 0.0 && self.duration <= 3600.0) {
            return Err("--duration must be in (0, 3600] seconds".into());
        }
        if self.topics == 0 || self.publishers == 0 || self.publishers > self.topics {
            return Err("--topics and --publishers must be positive, publishers ≤ topics".into());
        }
        if let Some(rate) = self.rate {
            if !(rate > 0.0 && rate <= 1e9) {
                return Err("--rate must be in (0, 1e9] messages per second".into());
            }
        }
        if self.retained == 0 || self.retained > RETAINED_MAX {
            return Err(format!("--retained must be 1..={RETAINED_MAX}"));
        }
        let is_plain = !self.tls && !self.websocket;
        let is_routed = matches!(
            self.scenario,
            Scenario::Fanout | Scenario::Fanin | Scenario::Pairs
        );
        if self.sink && (!is_routed || self.qos > 1 || !is_plain) {
            return Err(
                "--sink supports fanout, fanin and pairs at QoS 0 or 1 over plain TCP".into(),
            );
        }
        self.validate_tls()
    }

    fn validate_tls(&self) -> Result<(), String> {
        if !self.tls {
            if self.cafile.is_some() || self.cert.is_some() || self.key.is_some() || self.resume {
                return Err("--cafile, --cert, --key and --resume need --tls".into());
            }
            if self.scenario == Scenario::Handshakes {
                return Err("handshakes measures TLS handshakes: give --tls --cafile FILE".into());
            }
            return Ok(());
        }
        if self.cafile.is_none() {
            return Err(
                "--tls needs --cafile FILE: the CA that signs the broker's certificate".into(),
            );
        }
        if self.cert.is_some() != self.key.is_some() {
            return Err("--cert and --key go together".into());
        }
        Ok(())
    }
}

/// Parses a CPU list such as `1`, `0,2` or `0-3`.
pub fn parse_cpus(list: &str) -> Result<Vec<usize>, String> {
    let mut cpus = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || format!("bad CPU list {list:?}");
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) =
                    (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
                if a > b {
                    return Err(bad());
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.parse().map_err(|_| bad())?),
        }
    }
    if cpus.is_empty() {
        return Err(format!("empty CPU list {list:?}"));
    }
    Ok(cpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &str) -> Options {
        Options::parse_from(std::iter::once("ringcast-bench").chain(args.split_whitespace()))
    }

    #[test]
    fn tls_flags() {
        assert!(parse("fanout").validate().is_ok());
        assert!(parse("fanout --tls --cafile ca.pem").validate().is_ok());
        assert!(parse("handshakes --tls --cafile ca.pem --resume")
            .validate()
            .is_ok());
        assert!(
            parse("fanout --tls --cafile ca.pem --cert c.pem --key k.pem")
                .validate()
                .is_ok()
        );
        assert!(parse("fanout --tls").validate().is_err());
        assert!(parse("fanout --cafile ca.pem").validate().is_err());
        assert!(parse("fanout --resume").validate().is_err());
        assert!(parse("handshakes").validate().is_err());
        assert!(parse("fanout --tls --cafile ca.pem --cert c.pem")
            .validate()
            .is_err());
        assert!(parse("fanout --sink --tls --cafile ca.pem")
            .validate()
            .is_err());
        assert!(parse("handshakes --tls --cafile ca.pem --parallel 0")
            .validate()
            .is_err());
        assert_eq!(parse("fanout").tls_server_name, "localhost");
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpus("1").unwrap(), vec![1]);
        assert_eq!(parse_cpus("0,2-3").unwrap(), vec![0, 2, 3]);
        assert!(parse_cpus("3-1").is_err());
        assert!(parse_cpus("x").is_err());
    }
}
