//! Connection storms: many clients connecting at once all get in, accepted by every shard and
//! spread over the shards, and a wave of all of them reconnecting with the same client ids
//! completes the same way. Also
//! the read path that keeps no buffer between packets: a packet that arrives in pieces.
//!
//! Bounded: 2,000 connections, every phase under a time limit that names it; loopback only.

mod common;

use bytes::BytesMut;
use common::{Broker, Raw};
use ringcast::protocol::codec::{encode, Codec, Decoded};
use ringcast::protocol::*;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

const CLIENTS: usize = 2_000;
const WAVE_LIMIT: Duration = Duration::from_secs(60);
const SYS_LIMIT: Duration = Duration::from_secs(20);

/// A minimal MQTT 3.1.1 client: CONNECT, then SUBSCRIBE to a topic of its own.
struct Client {
    stream: TcpStream,
    codec: Codec,
    buf: BytesMut,
}

impl Client {
    async fn open(addr: SocketAddr, id: usize) -> Result<Client, String> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("client {id}: connect: {e}"))?;
        let mut client = Client {
            stream,
            codec: Codec::with_version(Version::V311, 1 << 20),
            buf: BytesMut::new(),
        };
        let connect = common::connect_packet(&format!("storm-{id}"), Version::V311, true);
        client.send(&Packet::Connect(Box::new(connect))).await?;
        match client.recv().await? {
            Packet::ConnAck(ack) if ack.code == ReasonCode::SUCCESS => {}
            other => return Err(format!("client {id}: expected CONNACK 0, got {other:?}")),
        }
        let subscribe = Packet::Subscribe(Subscribe {
            pkid: 1,
            filters: vec![SubscribeFilter {
                filter: MqttString::from_str_checked(&format!("storm/{id}")).unwrap(),
                options: SubscriptionOptions::default(),
            }],
            properties: Props::default(),
        });
        client.send(&subscribe).await?;
        match client.recv().await? {
            Packet::SubAck(ack) if ack.reason_codes == [ReasonCode(0)] => Ok(client),
            other => Err(format!("client {id}: expected SUBACK 0, got {other:?}")),
        }
    }

    async fn send(&mut self, packet: &Packet) -> Result<(), String> {
        let mut out = BytesMut::new();
        encode(packet, Version::V311, &mut out).map_err(|e| format!("encode: {e:?}"))?;
        self.stream
            .write_all(&out)
            .await
            .map_err(|e| format!("write: {e}"))
    }

    async fn recv(&mut self) -> Result<Packet, String> {
        loop {
            match self.codec.decode(&mut self.buf) {
                Ok(Decoded::Packet(packet)) => return Ok(packet),
                Ok(Decoded::Incomplete { .. }) => {}
                Err(e) => return Err(format!("decode: {e:?}")),
            }
            let n = self
                .stream
                .read_buf(&mut self.buf)
                .await
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("the broker closed the connection".into());
            }
        }
    }
}

/// Opens every client at once; panics naming the phase and what failed.
async fn wave(addr: SocketAddr, phase: &str) -> Vec<Client> {
    let mut tasks = JoinSet::new();
    for id in 0..CLIENTS {
        tasks.spawn(async move { (id, Client::open(addr, id).await) });
    }
    let mut clients = Vec::with_capacity(CLIENTS);
    let mut failures = Vec::new();
    let deadline = tokio::time::Instant::now() + WAVE_LIMIT;
    while let Ok(Some(joined)) = tokio::time::timeout_at(deadline, tasks.join_next()).await {
        match joined.expect("client task") {
            (_, Ok(client)) => clients.push(client),
            (id, Err(e)) => failures.push(format!("{id}: {e}")),
        }
    }
    assert!(
        failures.is_empty() && clients.len() == CLIENTS,
        "{phase}: {} of {CLIENTS} connected within {WAVE_LIMIT:?}; failures: {:?}",
        clients.len(),
        &failures[..failures.len().min(5)]
    );
    clients
}

/// The `$SYS` values once `check` holds; panics after `SYS_LIMIT`.
fn sys_values(
    addr: SocketAddr,
    check: impl Fn(&HashMap<String, u64>) -> bool,
) -> HashMap<String, u64> {
    let deadline = Instant::now() + SYS_LIMIT;
    let mut reader = Raw::connect(addr, "sys-reader");
    // One filter: retained values of a second one could arrive before its SUBACK.
    reader.subscribe("$SYS/broker/ringcast/shard/#", QoS::AtMostOnce);
    let mut values = HashMap::new();
    loop {
        assert!(
            Instant::now() < deadline,
            "$SYS never matched; last: {values:?}"
        );
        if let Ok(Packet::Publish(p)) = reader.recv_within(Duration::from_millis(500)) {
            let value = std::str::from_utf8(&p.payload).unwrap().parse().unwrap();
            values.insert(p.topic.as_str().to_string(), value);
            if check(&values) {
                return values;
            }
        }
    }
}

fn connected_on(values: &HashMap<String, u64>, shard: usize) -> u64 {
    let topic = format!("$SYS/broker/ringcast/shard/{shard}/clients/connected");
    values.get(&topic).copied().unwrap_or(0)
}

/// Connections the listening sockets of `shard` accepted so far.
fn accepted_by(values: &HashMap<String, u64>, shard: usize) -> u64 {
    let topic = format!("$SYS/broker/ringcast/shard/{shard}/connections/accepted");
    values.get(&topic).copied().unwrap_or(0)
}

/// Both shards report their share, and together every client (and the `$SYS` reader), all
/// of whose connections (`waves` of clients and the reader) both shards' listeners accepted.
fn all_in(values: &HashMap<String, u64>, waves: u64) -> bool {
    connected_on(values, 0) + connected_on(values, 1) == CLIENTS as u64 + 1
        // Each wave's clients and the reader (the reader once: `>` rather than `>= ... + 1`).
        && accepted_by(values, 0) + accepted_by(values, 1) > waves * CLIENTS as u64
}

/// Each shard holds and accepted at least a quarter of the clients: every shard's socket
/// accepts (the kernel spreads connections over them), and connections are placed in turn.
fn assert_spread(values: &HashMap<String, u64>, waves: u64) {
    for shard in 0..2 {
        let on = connected_on(values, shard);
        assert!(
            on >= CLIENTS as u64 / 4,
            "shard {shard} holds {on} of {CLIENTS}: {values:?}"
        );
        let accepted = accepted_by(values, shard);
        assert!(
            accepted >= waves * CLIENTS as u64 / 4,
            "shard {shard} accepted {accepted} of {}: {values:?}",
            waves * CLIENTS as u64
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_clients_all_get_in_accepted_by_both_shards_and_all_reconnect() {
    let broker = Broker::start_with(2, |c| c.sys_interval_secs = 1);
    let addr = broker.addr;
    let clients = wave(addr, "storm").await;
    let values = tokio::task::spawn_blocking(move || sys_values(addr, |v| all_in(v, 1)))
        .await
        .unwrap();
    assert_spread(&values, 1);
    // Every client drops its connection (no DISCONNECT, as after a network blip) and all
    // come back at once with the same client ids.
    drop(clients);
    let clients = wave(addr, "reconnect").await;
    let values = tokio::task::spawn_blocking(move || sys_values(addr, |v| all_in(v, 2)))
        .await
        .unwrap();
    assert_spread(&values, 2);
    drop(clients);
    broker.stop();
}

#[test]
fn a_packet_that_arrives_in_pieces_is_read_whole() {
    let broker = Broker::start(1);
    let mut subscriber = Raw::connect(broker.addr, "sub");
    subscriber.subscribe("pieces", QoS::AtMostOnce);
    let mut publisher = Raw::connect(broker.addr, "pub");
    let mut bytes = BytesMut::new();
    let payload = vec![7u8; 3000];
    let publish = common::publish_packet("pieces", &payload, QoS::AtMostOnce, false, 0);
    encode(&publish, Version::V311, &mut bytes).unwrap();
    let (first, rest) = bytes.split_at(10);
    publisher.send_bytes(first);
    // The broker has read the first piece (and holds it) before the rest comes.
    subscriber.expect_nothing();
    publisher.send_bytes(rest);
    let got = subscriber.recv_publish();
    assert_eq!(got.topic.as_str(), "pieces");
    assert_eq!(&got.payload[..], &payload[..]);
}
