//! MQTT bridges: this broker as a client of another broker, carrying the messages the topic
//! rules name both ways (mosquitto's `connection` blocks, as `[[bridge]]`).
//!
//! Each bridge runs on shard 0 as two tasks: one takes the `out` messages from the bridge's
//! internal session (`local`) into its bounded queue (`queue`); the other keeps the connection
//! to the remote (`link`): connects with backoff and jitter, subscribes for the `in` rules that
//! some local subscription wants (`interest`), sends what is queued and publishes what arrives
//! into the broker.
//!
//! Loops: MQTT 5 subscriptions at the remote carry No Local; a 3.1.1 bridge announces itself
//! with mosquitto's bridge bit (protocol level 0x84), so a mosquitto remote does not send back
//! what the bridge published; locally, the internal session subscribes with No Local.
//!
//! Module map: `queue` the bounded queue toward the remote; `link` the remote connection (TCP
//! or TLS, our codec); `local` the internal session; `interest` which `in` rules are asked for;
//! `remote` one connection's life.

pub mod interest;
pub mod link;
mod local;
pub mod queue;
mod remote;

use crate::config::BridgeConfig;
use crate::protocol::{MqttString, Props, Publish, QoS};
use crate::shard::{Message, Shard};
use bytes::Bytes;
use local::Local;
use queue::OutQueue;
use rustls::ClientConfig;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Duration;

/// A bridge ready to start: its settings and TLS client configuration (read at start-up, so a
/// bad file stops the broker with a sentence instead of failing on every connect).
#[derive(Clone)]
pub struct Prepared {
    config: BridgeConfig,
    tls: Option<Arc<ClientConfig>>,
    client_id: String,
}

/// Reads every bridge's TLS files; the error names the bridge.
pub fn prepare(bridges: &[BridgeConfig]) -> Result<Vec<Prepared>, String> {
    let host = hostname();
    bridges
        .iter()
        .map(|config| {
            let tls = config
                .tls
                .as_ref()
                .map(link::client_config)
                .transpose()
                .map_err(|e| format!("bridge `{}`: {e}", config.name))?;
            let client_id = config
                .client_id
                .clone()
                .unwrap_or_else(|| format!("{host}.{}", config.name));
            Ok(Prepared {
                config: config.clone(),
                tls,
                client_id,
            })
        })
        .collect()
}

/// Starts every bridge on `shard`; they run until the returned tasks are dropped.
pub fn start(
    shard: &Rc<Shard>,
    bridges: Vec<Prepared>,
    sys_interval: Option<Duration>,
) -> Vec<glommio::task::JoinHandle<()>> {
    bridges
        .into_iter()
        .map(|prepared| {
            let run = run(shard.clone(), prepared, sys_interval);
            glommio::spawn_local(run).detach()
        })
        .collect()
}

/// What one bridge shares between its tasks.
pub(crate) struct Bridge {
    pub(crate) prepared: Prepared,
    pub(crate) shard: Rc<Shard>,
    pub(crate) local: RefCell<Option<Rc<Local>>>,
    pub(crate) queue: RefCell<OutQueue>,
    /// Set when the queue got something to send.
    pub(crate) wake: Signal,
    pub(crate) is_connected: Cell<bool>,
    pub(crate) messages_in: Cell<u64>,
    pub(crate) messages_out: Cell<u64>,
    /// Whether the local session is persistent (the broker stores): its messages are then
    /// acknowledged to it only once settled in the queue (`settle`).
    pub(crate) is_stored: bool,
}

impl Bridge {
    fn config(&self) -> &BridgeConfig {
        &self.prepared.config
    }

    /// The session, once installed.
    pub(crate) fn local(&self) -> Option<Rc<Local>> {
        self.local.borrow().clone()
    }

    /// Acknowledges to the local session the messages the queue is done with, so their
    /// records leave the store.
    pub(crate) fn settle(&self) {
        let settled = self.queue.borrow_mut().take_settled();
        if let (Some(local), false) = (self.local(), settled.is_empty()) {
            settled.into_iter().for_each(|pkid| local.acknowledge(pkid));
        }
    }

    /// Publishes the bridge's `$SYS` topics (retained, QoS 0): mosquitto's connection state
    /// and ringcast's counters.
    pub(crate) async fn publish_sys(&self) {
        let name = &self.config().name;
        let state = u8::from(self.is_connected.get()).to_string();
        let (queued, bytes, dropped) = {
            let q = self.queue.borrow();
            (q.len(), q.bytes(), q.dropped())
        };
        let base = format!("$SYS/broker/bridges/{name}");
        let topics = [
            (
                format!("$SYS/broker/connection/{}/state", self.prepared.client_id),
                state.clone(),
            ),
            (format!("{base}/connected"), state),
            (format!("{base}/queued"), queued.to_string()),
            (format!("{base}/queued_bytes"), bytes.to_string()),
            (format!("{base}/dropped"), dropped.to_string()),
            (
                format!("{base}/messages/in"),
                self.messages_in.get().to_string(),
            ),
            (
                format!("{base}/messages/out"),
                self.messages_out.get().to_string(),
            ),
        ];
        for (topic, value) in topics {
            let Some(topic) = MqttString::from_str_checked(&topic) else {
                continue;
            };
            let publish = Publish {
                dup: false,
                qos: QoS::AtMostOnce,
                retain: true,
                topic,
                pkid: 0,
                properties: Props::default(),
                payload: Bytes::from(value),
            };
            self.shard.route(Message::received(publish, 0)).await;
        }
    }
}

/// Runs one bridge: installs its session, then keeps its two tasks and its `$SYS` going.
async fn run(shard: Rc<Shard>, prepared: Prepared, sys_interval: Option<Duration>) {
    let config = &prepared.config;
    let bridge = Rc::new(Bridge {
        queue: RefCell::new(OutQueue::new(
            config.queue_messages_max,
            config.queue_bytes_max,
        )),
        prepared: prepared.clone(),
        shard: shard.clone(),
        local: RefCell::new(None),
        wake: Signal::default(),
        is_connected: Cell::new(false),
        messages_in: Cell::new(0),
        messages_out: Cell::new(0),
        is_stored: shard.persist.is_some(),
    });
    let filters = config
        .topic
        .iter()
        .filter(|r| r.direction.is_out())
        .map(|r| (r.local_filter(), r.qos))
        .collect();
    // A NUL cannot appear in a client's id, so no client can take this session over.
    let session_id = format!("\0bridge/{}", config.name);
    let is_stored = bridge.is_stored;
    let Some((local, drain)) = Local::install(shard, session_id, filters, is_stored).await else {
        tracing::warn!("bridge {}: could not install its session", config.name);
        return;
    };
    *bridge.local.borrow_mut() = Some(Rc::new(local));
    let pump = glommio::spawn_local(pump_out(bridge.clone(), drain)).detach();
    let sys =
        sys_interval.map(|every| glommio::spawn_local(sys_loop(bridge.clone(), every)).detach());
    remote::run(bridge.clone()).await;
    drop((pump, sys));
}

/// Moves what the internal session receives into the queue toward the remote: each message
/// gets its remote topic and the rule's QoS cap. A QoS 1 one is acknowledged to the local
/// session once queued (from then on the queue answers for it); when the broker stores, only
/// once the remote has it (the session's records keep it across a crash until then).
/// Messages the bound refuses are counted and acknowledged all the same, so the session does
/// not stall.
async fn pump_out(bridge: Rc<Bridge>, mut drain: local::Drain) {
    let Some(local) = bridge.local() else {
        return;
    };
    while let Some(batch) = drain.next_batch().await {
        for publish in batch {
            let pkid = (publish.qos != QoS::AtMostOnce).then_some(publish.pkid);
            let held = pkid.filter(|_| bridge.is_stored);
            let config = bridge.config();
            let queued =
                to_remote(config, publish).map(|out| bridge.queue.borrow_mut().push(out, held));
            // Acknowledged now unless the queue holds it for the store (`settle` does then).
            // A message no rule maps (a past configuration's subscription) is done with.
            if let (Some(pkid), true) = (pkid, held.is_none() || queued.is_none()) {
                local.acknowledge(pkid);
            }
        }
        bridge.settle();
        bridge.wake.notify();
    }
}

/// The message as the remote gets it: the first `out` rule covering its topic maps it.
fn to_remote(config: &BridgeConfig, mut publish: Publish) -> Option<Publish> {
    let (rule, topic) = config
        .topic
        .iter()
        .filter(|r| r.direction.is_out())
        .find_map(|r| Some((r, r.to_remote(publish.topic.as_str())?)))?;
    publish.topic = MqttString::from_str_checked(&topic)?;
    publish.qos = publish.qos.min(rule.qos);
    publish.pkid = 0;
    publish.dup = false;
    // Which subscription matched is the local broker's business, not the remote's.
    if !publish.properties.subscription_identifiers.is_empty() {
        publish.properties.subscription_identifiers.clear();
    }
    Some(publish)
}

/// Publishes the bridge's `$SYS` topics every `every`.
async fn sys_loop(bridge: Rc<Bridge>, every: Duration) {
    loop {
        bridge.publish_sys().await;
        glommio::timer::sleep(every).await;
    }
}

/// For each rule, whether it is an `in` rule someone wants: some subscription on this broker
/// (other than the bridge's own session's) overlaps its local filter. One walk over the
/// broker's filters for all rules.
pub(crate) fn wanted_rules(bridge: &Bridge) -> Vec<bool> {
    let local = bridge.local();
    let rules: Vec<Option<String>> = bridge
        .config()
        .topic
        .iter()
        .map(|r| r.direction.is_in().then(|| r.local_filter()))
        .collect();
    let mut wanted = vec![false; rules.len()];
    bridge.shard.for_each_filter(|filter, count| {
        let own = local.as_ref().is_some_and(|l| l.subscribes(filter));
        if count.is_some_and(|n| n <= usize::from(own)) {
            return;
        }
        for (wanted, rule) in wanted.iter_mut().zip(&rules) {
            if let Some(rule) = rule {
                *wanted |= interest::overlaps(filter, rule);
            }
        }
    });
    wanted
}

/// A flag one task sets and another waits for.
#[derive(Default)]
pub(crate) struct Signal {
    is_set: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Signal {
    /// Sets the flag and wakes the waiter.
    pub(crate) fn notify(&self) {
        self.is_set.set(true);
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }

    /// Waits until the flag is set, and clears it.
    pub(crate) async fn wait(&self) {
        std::future::poll_fn(|cx| {
            if self.is_set.replace(false) {
                return Poll::Ready(());
            }
            *self.waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

/// This machine's host name, for default client ids (mosquitto's `<hostname>.<name>`).
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that much.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    match rc {
        0 if end > 0 => String::from_utf8_lossy(&buf[..end]).into_owned(),
        _ => "ringcast".to_string(),
    }
}
