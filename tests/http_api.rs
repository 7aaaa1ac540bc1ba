//! The operator endpoints over real sockets: a broker with an MQTT and a WebSocket/HTTP
//! listener on loopback, driven by raw MQTT clients, asked over HTTP/1.1.

mod common;

use common::{Broker, Raw};
use ringcast::config::Config;
use ringcast::protocol::{Packet, QoS, ReasonCode, SubscriptionOptions, Version};
use ringcast::security::password::hash_password;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// How long a test waits for the broker's numbers to agree before failing.
const AGREE_WITHIN: Duration = Duration::from_secs(20);

/// A broker with an MQTT listener and a WebSocket listener that answers HTTP; returns it
/// with its MQTT and HTTP addresses.
fn start(shards: usize, adjust: impl FnOnce(&mut Config)) -> (Broker, SocketAddr, SocketAddr) {
    let broker = Broker::start_with(shards, |config| {
        config.ws_listen = vec!["127.0.0.1:0".parse().unwrap()];
        config.sys_interval_secs = 1;
        adjust(config);
    });
    let addrs = broker.addrs();
    let (mqtt, http) = (addrs[0], addrs[1]);
    (broker, mqtt, http)
}

/// One HTTP/1.1 exchange: status, headers (names lower-cased), body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `method path` with `extra` header lines and reads the whole answer (the request
/// asks the server to close).
fn http(addr: SocketAddr, method: &str, path: &str, extra: &str) -> Answer {
    let mut stream = TcpStream::connect(addr).expect("connect to the HTTP listener");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\n{extra}Connection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("an answer");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Answer {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

fn get(addr: SocketAddr, path: &str) -> Answer {
    http(addr, "GET", path, "")
}

/// The sum over every series of `name` in a Prometheus text (all label values).
fn metric_sum(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// The `$SYS` topics read.
const SYS_KEYS: [&str; 5] = [
    "$SYS/broker/messages/received",
    "$SYS/broker/messages/sent",
    "$SYS/broker/bytes/received",
    "$SYS/broker/clients/connected",
    "$SYS/broker/subscriptions/count",
];

/// The broker's last `$SYS` round, read as the retained messages a new subscriber gets (which
/// are not counted as sent), by a client that leaves at once. None when a live round reached
/// it meanwhile: that round's deliveries were counted after the values it read.
fn sys_round(mqtt: SocketAddr) -> Option<BTreeMap<String, String>> {
    let mut sys = Raw::connect(mqtt, "load-sys");
    sys.subscribe("$SYS/broker/#", QoS::AtMostOnce);
    let mut values = BTreeMap::new();
    let mut clean = true;
    while !SYS_KEYS.iter().all(|k| values.contains_key(*k)) {
        let publish = sys.recv_publish();
        clean &= publish.retain;
        let value = String::from_utf8_lossy(&publish.payload).into_owned();
        values.insert(publish.topic.as_str().to_string(), value);
    }
    sys.disconnect();
    clean.then_some(values)
}

on_1_and_4_shards!(
    metrics_and_stats_agree_with_sys_after_a_bounded_load,
    |shards| {
        const SUBSCRIBERS: usize = 3;
        const MESSAGES: usize = 300;
        let (broker, mqtt, http_addr) = start(shards, |_| {});
        let mut subscribers: Vec<Raw> = (0..SUBSCRIBERS)
            .map(|i| {
                let mut sub = Raw::connect(mqtt, &format!("load-sub-{i}"));
                sub.subscribe("load/#", QoS::AtLeastOnce);
                sub
            })
            .collect();
        let mut publisher = Raw::connect(mqtt, "load-pub");
        for i in 0..MESSAGES {
            let qos = [QoS::AtMostOnce, QoS::AtLeastOnce][i % 2];
            publisher.publish(&format!("load/{}", i % 7), b"0123456789", qos, false);
        }
        for sub in &mut subscribers {
            for _ in 0..MESSAGES {
                sub.recv_publish();
            }
        }
        // $SYS speaks of its last round; the broker's counters move on (our own $SYS reader
        // connects, PUBACKs arrive), so read again until a round and the HTTP side agree.
        let deadline = Instant::now() + AGREE_WITHIN;
        loop {
            let values = sys_round(mqtt);
            let stats = get(http_addr, "/api/v1/stats").json();
            let metrics = String::from_utf8(get(http_addr, "/metrics").body).unwrap();
            let total = &stats["total"];
            // Numbers no observer changes: exact at once.
            assert_eq!(total["messages_received"], MESSAGES);
            assert_eq!(total["received_by_qos"], serde_json::json!([150, 150, 0]));
            assert_eq!(
                metric_sum(&metrics, "ringcast_messages_received_total"),
                MESSAGES as u64
            );
            assert_eq!(stats["shards"].as_array().map(Vec::len), Some(shards));
            let Some(values) = values else { continue };
            let sys = |key: &str| values[key].parse::<u64>().unwrap();
            let api = |key: &str| total[key].as_u64().unwrap();
            let agreed = sys("$SYS/broker/messages/received") == api("messages_received")
                && sys("$SYS/broker/messages/sent") == api("messages_sent")
                && sys("$SYS/broker/clients/connected") == api("clients_connected")
                && sys("$SYS/broker/subscriptions/count") == api("subscriptions")
                && metric_sum(&metrics, "ringcast_messages_sent_total") == api("messages_sent")
                && metric_sum(&metrics, "ringcast_connections") == api("clients_connected");
            if agreed {
                assert!(api("messages_sent") >= (MESSAGES * SUBSCRIBERS) as u64);
                assert_eq!(api("clients_connected"), 1 + SUBSCRIBERS as u64);
                // Bytes: the $SYS round is older than the reader that read it, whose own CONNECT
                // and SUBSCRIBE came after; never fewer, and equal on both HTTP views.
                assert!(api("bytes_received") >= sys("$SYS/broker/bytes/received"));
                assert_eq!(
                    metric_sum(&metrics, "ringcast_bytes_received_total"),
                    api("bytes_received")
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "$SYS {values:?} never agreed with the API {total}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        broker.stop();
    }
);

on_1_and_4_shards!(clients_topics_and_an_administrative_disconnect, |shards| {
    let (broker, mqtt, http_addr) = start(shards, |_| {});
    let connect = common::connect_packet("ops-v5", Version::V5, true);
    let (mut v5, _) = Raw::connect_with(mqtt, connect);
    let options = SubscriptionOptions {
        qos: QoS::AtLeastOnce,
        no_local: true,
        ..Default::default()
    };
    v5.subscribe_with("a/+", options);
    let mut others: Vec<Raw> = (0..5)
        .map(|i| Raw::connect(mqtt, &format!("c{i}")))
        .collect();
    others[0].subscribe("a/b", QoS::AtMostOnce);

    let client = get(http_addr, "/api/v1/clients/ops-v5");
    assert_eq!(client.status, 200);
    let client = client.json();
    assert_eq!(client["connected"], true);
    assert_eq!(client["protocol"], "5.0");
    assert_eq!(client["subscriptions"][0]["filter"], "a/+");
    assert_eq!(client["subscriptions"][0]["qos"], 1);
    assert_eq!(client["subscriptions"][0]["no_local"], true);
    assert_eq!(get(http_addr, "/api/v1/clients/nobody").status, 404);

    // Pages of two, in client-id order, until the cursor runs out.
    let mut ids = Vec::new();
    let mut path = "/api/v1/clients?limit=2".to_string();
    for _ in 0..10 {
        let page = get(http_addr, &path).json();
        let clients = page["clients"].as_array().unwrap();
        assert!(clients.len() <= 2);
        ids.extend(
            clients
                .iter()
                .map(|c| c["client_id"].as_str().unwrap().to_string()),
        );
        match page["next"].as_str() {
            Some(next) => path = format!("/api/v1/clients?limit=2&after={next}"),
            None => break,
        }
    }
    assert_eq!(ids, ["c0", "c1", "c2", "c3", "c4", "ops-v5"]);

    let exact = get(http_addr, "/api/v1/topics?filter=a/%2B").json();
    assert_eq!(exact["subscriptions"], 1);
    let matching = get(http_addr, "/api/v1/topics?topic=a/b").json();
    assert_eq!(matching["subscriptions"], 2);
    assert_eq!(
        get(http_addr, "/api/v1/topics?topic=z").json()["subscriptions"],
        0
    );
    let top = get(http_addr, "/api/v1/topics?top=1").json();
    assert_eq!(top["filters"].as_array().map(Vec::len), Some(1));

    let closed = http(http_addr, "POST", "/api/v1/clients/ops-v5/disconnect", "");
    assert_eq!(closed.status, 200);
    let before_close = v5.expect_closed();
    let reasons: Vec<ReasonCode> = before_close
        .iter()
        .filter_map(|p| match p {
            Packet::Disconnect(d) => Some(d.reason),
            _ => None,
        })
        .collect();
    assert_eq!(reasons, [ReasonCode::ADMINISTRATIVE_ACTION]);
    let again = http(http_addr, "POST", "/api/v1/clients/ops-v5/disconnect", "");
    assert_eq!(again.status, 404);
    drop(others);
    broker.stop();
});

#[test]
fn with_a_password_file_http_needs_a_listed_user() {
    let dir = std::env::temp_dir().join(format!("ringcast-http-api-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("passwd");
    let hash = hash_password(b"secret", 1000).unwrap();
    std::fs::write(&file, format!("admin:{hash}\nreader:{hash}\n")).unwrap();
    let (broker, _, http_addr) = start(1, |config| {
        config.password_file = Some(file.clone());
        config.http_users = vec!["admin".into()];
    });
    // base64 of admin:secret, admin:wrong, reader:secret.
    let admin = "Authorization: Basic YWRtaW46c2VjcmV0\r\n";
    let wrong = "Authorization: Basic YWRtaW46d3Jvbmc=\r\n";
    let reader = "Authorization: Basic cmVhZGVyOnNlY3JldA==\r\n";
    let anonymous = get(http_addr, "/metrics");
    assert_eq!(anonymous.status, 401);
    let challenge = anonymous.header("www-authenticate").unwrap_or_default();
    assert!(challenge.starts_with("Basic realm="), "{challenge}");
    assert_eq!(http(http_addr, "GET", "/metrics", wrong).status, 401);
    assert_eq!(http(http_addr, "GET", "/metrics", reader).status, 401);
    assert_eq!(http(http_addr, "GET", "/metrics", admin).status, 200);
    assert_eq!(http(http_addr, "GET", "/api/v1/stats", admin).status, 200);
    assert_eq!(http(http_addr, "GET", "/", admin).status, 200);
    broker.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
