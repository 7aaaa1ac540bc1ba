//! One bridge's connection to its remote, over and over: connect (backoff with jitter between
//! tries), subscribe for the wanted `in` rules, then until the connection ends: send what is
//! queued, answer what arrives, keep the connection alive and follow local interest.

use super::link::{within, Link};
use super::{wanted_rules, Bridge};
use crate::protocol::{
    Ack, Connect, MqttString, Packet, Props, Publish, QoS, ReasonCode, Subscribe, SubscribeFilter,
    SubscriptionOptions, Unsubscribe, Version,
};
use bytes::Bytes;
use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// How long connecting (TCP, TLS, CONNECT to CONNACK) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// QoS 1 messages sent and not yet acknowledged, at most (mosquitto's
/// `max_inflight_messages` default); less when the remote's Receive Maximum says so.
const INFLIGHT_MAX: u16 = 20;
/// How often a connected bridge looks at local interest and its keep-alive when nothing
/// else happens.
const TICK: Duration = Duration::from_millis(200);
/// How long one packet may take to go out before the remote counts as gone.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// Messages sent from the queue before yielding to the shard's other tasks.
const SENDS_PER_TURN: usize = 64;
/// Packet ids for SUBSCRIBE and UNSUBSCRIBE: above those the queue gives PUBLISHes.
const SUBSCRIBE_PKID_BASE: u16 = super::queue::PKID_MAX + 1;
/// 3.1.1 CONNACK return code 1: unacceptable protocol version.
const UNACCEPTABLE_PROTOCOL: u8 = 1;

/// Why a connection attempt or a connection ended.
enum Failure {
    /// A 3.1.1 remote refused the bridge protocol level: try again as a plain client.
    BridgeBitRefused,
    /// Anything else, in words.
    Other(String),
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Failure {
        Failure::Other(e.to_string())
    }
}

/// Keeps the bridge connected until its task is dropped.
pub(super) async fn run(bridge: Rc<Bridge>) {
    let config = bridge.config();
    let mut backoff = Backoff::new(config.reconnect_min_ms, config.reconnect_max_ms);
    let mut try_private = config.protocol_version == crate::config::BridgeVersion::V311;
    loop {
        let result = match connect(&bridge, try_private).await {
            Ok((link, window, session_present)) => {
                tracing::info!("bridge {}: connected to {}", config.name, config.address);
                backoff.reset();
                bridge.is_connected.set(true);
                bridge.publish_sys().await;
                serve(&bridge, link, window, session_present).await
            }
            Err(e) => Err(e),
        };
        let why = match result {
            Ok(()) => "closed".to_string(),
            Err(Failure::BridgeBitRefused) => {
                tracing::info!(
                    "bridge {}: the remote refused the bridge protocol level; connecting as a plain 3.1.1 client (it may send our own messages back once)",
                    config.name
                );
                try_private = false;
                continue;
            }
            Err(Failure::Other(why)) => why,
        };
        bridge.queue.borrow_mut().connection_lost();
        if bridge.is_connected.replace(false) {
            bridge.publish_sys().await;
        }
        let wait = backoff.next(random());
        tracing::warn!(
            "bridge {}: no connection to {} ({why}); retrying in {wait:?}",
            config.name,
            config.address
        );
        glommio::timer::sleep(wait).await;
    }
}

/// Opens the link and logs in; returns it with the QoS 1 window the remote allows and whether
/// the remote kept the bridge's session.
async fn connect(bridge: &Bridge, try_private: bool) -> Result<(Link, usize, bool), Failure> {
    let config = bridge.config();
    let mut link = Link::open(config, bridge.prepared.tls.as_ref(), CONNECT_TIMEOUT).await?;
    let v5 = link.version() == Version::V5;
    let mut properties = Props::default();
    if v5 && !config.clean_session {
        // The remote keeps the session (and queues for it) as long as it can.
        properties.session_expiry_interval = Some(u32::MAX);
    }
    let connect = Connect {
        version: link.version(),
        client_id: string(&bridge.prepared.client_id)?,
        clean_start: config.clean_session,
        keep_alive_secs: config.keep_alive_secs,
        username: config.username.as_deref().map(string).transpose()?,
        password: config.password.clone().map(Bytes::from),
        will: None,
        properties,
    };
    link.send(&Packet::Connect(Box::new(connect)), try_private)
        .await?;
    let answer = within(CONNECT_TIMEOUT, link.recv())
        .await
        .map_err(|e| Failure::Other(format!("no CONNACK: {e}")))?;
    let Packet::ConnAck(connack) = answer else {
        return Err(Failure::Other(
            "the remote answered CONNECT with another packet".into(),
        ));
    };
    if connack.code != ReasonCode::SUCCESS {
        if try_private && connack.code.0 == UNACCEPTABLE_PROTOCOL {
            return Err(Failure::BridgeBitRefused);
        }
        return Err(Failure::Other(format!(
            "the remote refused the login with code {:#04x}",
            connack.code.0
        )));
    }
    let window = connack
        .properties
        .receive_maximum
        .unwrap_or(u16::MAX)
        .min(INFLIGHT_MAX);
    Ok((link, window as usize, connack.session_present))
}

fn string(text: &str) -> Result<MqttString, Failure> {
    MqttString::from_str_checked(text)
        .ok_or_else(|| Failure::Other(format!("`{text}` is not a valid MQTT string")))
}

/// One connection's state.
struct Session {
    link: Link,
    window: usize,
    /// Per rule: whether the remote was asked for it.
    /// None: not known (a session the remote kept may hold it from an earlier connection).
    subscribed: Vec<Option<bool>>,
    next_pkid: u16,
    last_in: Instant,
    last_out: Instant,
    /// When local interest was last looked at (at most once a `TICK`: the walk is not free).
    interest_at: Option<Instant>,
}

/// What woke the connection.
enum Event {
    Packet(io::Result<Packet>),
    Wake,
}

/// Serves a connection until it ends.
async fn serve(
    bridge: &Bridge,
    link: Link,
    window: usize,
    session_present: bool,
) -> Result<(), Failure> {
    let now = Instant::now();
    let mut s = Session {
        link,
        window,
        subscribed: vec![(!session_present).then_some(false); bridge.config().topic.len()],
        next_pkid: 0,
        last_in: now,
        last_out: now,
        interest_at: None,
    };
    let keep_alive = Duration::from_secs(bridge.config().keep_alive_secs as u64);
    loop {
        follow_interest(bridge, &mut s).await?;
        send_queued(bridge, &mut s).await?;
        if !keep_alive.is_zero() {
            if s.last_in.elapsed() > keep_alive * 3 / 2 {
                return Err(Failure::Other("the remote stopped answering".into()));
            }
            if s.last_out.elapsed() >= keep_alive {
                send(&mut s, &Packet::PingReq).await?;
            }
        }
        let packet = async { Event::Packet(s.link.recv().await) };
        let woken = async {
            futures_lite::future::or(bridge.wake.wait(), glommio::timer::sleep(TICK)).await;
            Event::Wake
        };
        match futures_lite::future::or(packet, woken).await {
            Event::Packet(Ok(packet)) => {
                s.last_in = Instant::now();
                if !handle(bridge, &mut s, packet).await? {
                    return Ok(());
                }
            }
            Event::Packet(Err(e)) => return Err(e.into()),
            Event::Wake => {}
        }
    }
}

/// Sends a packet; a remote that takes nothing for `SEND_TIMEOUT` is given up (the link is
/// then out of step, and dropped).
async fn send(s: &mut Session, packet: &Packet) -> Result<(), Failure> {
    within(SEND_TIMEOUT, s.link.send(packet, false)).await?;
    s.last_out = Instant::now();
    Ok(())
}

/// Handles a packet from the remote; false when the remote disconnected.
async fn handle(bridge: &Bridge, s: &mut Session, packet: Packet) -> Result<bool, Failure> {
    match packet {
        Packet::Publish(publish) => on_publish(bridge, s, publish).await?,
        Packet::PubAck(ack) if bridge.queue.borrow_mut().acknowledged(ack.pkid) => {
            bridge.messages_out.set(bridge.messages_out.get() + 1);
            bridge.settle();
        }
        Packet::PubRel(ack) => send(s, &Packet::PubComp(plain_ack(ack.pkid))).await?,
        Packet::SubAck(suback) if suback.reason_codes.iter().any(|c| c.0 >= 0x80) => {
            tracing::warn!(
                "bridge {}: the remote refused a subscription",
                bridge.config().name
            );
        }
        Packet::Disconnect(d) => {
            tracing::info!(
                "bridge {}: the remote disconnected (reason {:#04x})",
                bridge.config().name,
                d.reason.0
            );
            return Ok(false);
        }
        // PINGRESP, UNSUBACK, granted SUBACKs, PUBACKs of ids no longer in flight: nothing
        // to do beyond having heard from the remote.
        _ => {}
    }
    Ok(true)
}

/// A message from the remote: into the local broker under its local topic, then acknowledged
/// (so a QoS 1 message the remote sees acknowledged has been routed here).
async fn on_publish(bridge: &Bridge, s: &mut Session, mut publish: Publish) -> Result<(), Failure> {
    let (pkid, qos) = (publish.pkid, publish.qos);
    let rule = bridge
        .config()
        .topic
        .iter()
        .filter(|r| r.direction.is_in())
        .find_map(|r| Some((r.qos, r.to_local(publish.topic.as_str())?)));
    if let (Some((cap, topic)), Some(local)) = (rule, bridge.local()) {
        if let Some(topic) = MqttString::from_str_checked(&topic) {
            publish.topic = topic;
            publish.qos = qos.min(cap);
            publish.dup = false;
            if !publish.properties.subscription_identifiers.is_empty() {
                publish.properties.subscription_identifiers.clear();
            }
            local.publish(publish).await;
            bridge.messages_in.set(bridge.messages_in.get() + 1);
        }
    }
    match qos {
        QoS::AtMostOnce => Ok(()),
        QoS::AtLeastOnce => send(s, &Packet::PubAck(plain_ack(pkid))).await,
        QoS::ExactlyOnce => send(s, &Packet::PubRec(plain_ack(pkid))).await,
    }
}

fn plain_ack(pkid: u16) -> Ack {
    Ack {
        pkid,
        ..Ack::default()
    }
}

/// Subscribes at the remote to the `in` rules someone here wants now, and unsubscribes from
/// those nobody wants any more.
async fn follow_interest(bridge: &Bridge, s: &mut Session) -> Result<(), Failure> {
    if s.interest_at.is_some_and(|at| at.elapsed() < TICK) {
        return Ok(());
    }
    s.interest_at = Some(Instant::now());
    let v5 = s.link.version() == Version::V5;
    let wanted_now = wanted_rules(bridge);
    for (index, rule) in bridge.config().topic.iter().enumerate() {
        let wanted = wanted_now[index];
        if !rule.direction.is_in() || s.subscribed[index] == Some(wanted) {
            continue;
        }
        s.subscribed[index] = Some(wanted);
        let filter = string(&rule.remote_filter())?;
        s.next_pkid = (s.next_pkid + 1) % (u16::MAX - SUBSCRIBE_PKID_BASE);
        let pkid = SUBSCRIBE_PKID_BASE + s.next_pkid;
        let packet = if wanted {
            let options = SubscriptionOptions {
                qos: rule.qos,
                no_local: v5,
                retain_as_published: v5,
                // 5.0: retained messages only for a subscription new to the remote, so a
                // kept session does not send them again on every reconnect.
                retain_handling: 1,
            };
            let filters = vec![SubscribeFilter { filter, options }];
            Packet::Subscribe(Subscribe {
                pkid,
                filters,
                properties: Props::default(),
            })
        } else {
            let filters = vec![filter];
            Packet::Unsubscribe(Unsubscribe {
                pkid,
                filters,
                properties: Props::default(),
            })
        };
        send(s, &packet).await?;
    }
    Ok(())
}

/// Sends queued messages while the QoS 1 window has room.
async fn send_queued(bridge: &Bridge, s: &mut Session) -> Result<(), Failure> {
    for sent in 1.. {
        if sent % SENDS_PER_TURN == 0 {
            futures_lite::future::yield_now().await;
        }
        let next = bridge.queue.borrow_mut().next_to_send(s.window);
        let Some(publish) = next else {
            bridge.settle();
            return Ok(());
        };
        let is_qos0 = publish.qos == QoS::AtMostOnce;
        send(s, &Packet::Publish(publish)).await?;
        if is_qos0 {
            bridge.messages_out.set(bridge.messages_out.get() + 1);
        }
    }
    Ok(())
}

/// Waits between connection attempts: doubling from the minimum to the maximum, each wait
/// drawn between half and all of its step (jitter, so bridges of many brokers that lost the
/// same remote do not come back all at once).
pub struct Backoff {
    min_ms: u64,
    max_ms: u64,
    step_ms: u64,
}

impl Backoff {
    /// Starts at `min_ms`.
    pub fn new(min_ms: u64, max_ms: u64) -> Backoff {
        Backoff {
            min_ms,
            max_ms,
            step_ms: min_ms,
        }
    }

    /// A connection succeeded: the next failure waits the minimum again.
    pub fn reset(&mut self) {
        self.step_ms = self.min_ms;
    }

    /// The wait before the next attempt, with `random` choosing the jitter.
    pub fn next(&mut self, random: u64) -> Duration {
        let step = self.step_ms;
        self.step_ms = (step.saturating_mul(2)).min(self.max_ms);
        let half = step / 2;
        Duration::from_millis(step - half + random % (half + 1))
    }
}

/// A random number for jitter.
fn random() -> u64 {
    getrandom::u64().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_maximum_with_jitter_and_resets() {
        let mut b = Backoff::new(100, 1000);
        let waits: Vec<u64> = (0..6)
            .map(|_| b.next(u64::MAX).as_millis() as u64)
            .collect();
        let steps = [100, 200, 400, 800, 1000, 1000];
        for (wait, step) in waits.iter().zip(steps) {
            assert!(*wait >= step / 2 && *wait <= step, "{wait} for step {step}");
        }
        assert_eq!(
            b.next(0).as_millis(),
            500,
            "the lowest draw is half the step"
        );
        b.reset();
        assert!(b.next(7).as_millis() <= 100);
    }
}
