//! Differential test: the same valid MQTT 3.1.1 bytes decoded by our codec and by
//! `mqttbytes` 0.6 (its v4 module) give the same packets. Only packets where `mqttbytes` is
//! right are used (see docs: it accepts too much, but decodes valid 3.1.1 correctly).

use bytes::{Bytes, BytesMut};
use mqttbytes::v4;
use ringcast::protocol::codec::{encode, samples, Codec, Decoded};
use ringcast::protocol::*;

/// Our packet, as `mqttbytes` would represent it.
fn from_mqttbytes(packet: v4::Packet) -> Packet {
    match packet {
        v4::Packet::Connect(c) => Packet::Connect(Box::new(connect(c))),
        v4::Packet::ConnAck(c) => Packet::ConnAck(ConnAck {
            session_present: c.session_present,
            code: ReasonCode(c.code as u8),
            properties: Props::default(),
        }),
        v4::Packet::Publish(p) => Packet::Publish(Publish {
            dup: p.dup,
            qos: qos(p.qos),
            retain: p.retain,
            topic: string(p.topic),
            pkid: p.pkid,
            properties: Props::default(),
            payload: p.payload,
        }),
        v4::Packet::PubAck(a) => Packet::PubAck(ack(a.pkid)),
        v4::Packet::PubRec(a) => Packet::PubRec(ack(a.pkid)),
        v4::Packet::PubRel(a) => Packet::PubRel(ack(a.pkid)),
        v4::Packet::PubComp(a) => Packet::PubComp(ack(a.pkid)),
        v4::Packet::Subscribe(s) => Packet::Subscribe(Subscribe {
            pkid: s.pkid,
            filters: s
                .filters
                .into_iter()
                .map(|f| SubscribeFilter {
                    filter: string(f.path),
                    options: SubscriptionOptions {
                        qos: qos(f.qos),
                        ..SubscriptionOptions::default()
                    },
                })
                .collect(),
            properties: Props::default(),
        }),
        v4::Packet::SubAck(s) => Packet::SubAck(SubAck {
            pkid: s.pkid,
            reason_codes: s.return_codes.into_iter().map(suback_code).collect(),
            properties: Props::default(),
        }),
        v4::Packet::Unsubscribe(u) => Packet::Unsubscribe(Unsubscribe {
            pkid: u.pkid,
            filters: u.topics.into_iter().map(string).collect(),
            properties: Props::default(),
        }),
        v4::Packet::UnsubAck(u) => Packet::UnsubAck(UnsubAck {
            pkid: u.pkid,
            reason_codes: vec![],
            properties: Props::default(),
        }),
        v4::Packet::PingReq => Packet::PingReq,
        v4::Packet::PingResp => Packet::PingResp,
        v4::Packet::Disconnect => Packet::Disconnect(Disconnect::default()),
    }
}

fn connect(c: v4::Connect) -> Connect {
    let (username, password) = match c.login {
        None => (None, None),
        Some(login) => (
            Some(string(login.username)),
            Some(login.password)
                .filter(|p| !p.is_empty())
                .map(Bytes::from),
        ),
    };
    Connect {
        version: Version::V311,
        client_id: string(c.client_id),
        clean_start: c.clean_session,
        keep_alive_secs: c.keep_alive,
        username,
        password,
        will: c.last_will.map(|w| Will {
            topic: string(w.topic),
            payload: w.message,
            qos: qos(w.qos),
            retain: w.retain,
            properties: Props::default(),
        }),
        properties: Props::default(),
    }
}

fn string(text: String) -> MqttString {
    MqttString::from_bytes(Bytes::from(text)).expect("mqttbytes gave a valid string")
}

fn qos(q: mqttbytes::QoS) -> QoS {
    QoS::from_bits(q as u8).expect("mqttbytes QoS is 0..=2")
}

fn ack(pkid: u16) -> Ack {
    Ack {
        pkid,
        ..Ack::default()
    }
}

fn suback_code(code: v4::SubscribeReasonCode) -> ReasonCode {
    match code {
        v4::SubscribeReasonCode::Success(q) => ReasonCode(q as u8),
        v4::SubscribeReasonCode::Failure => ReasonCode(0x80),
    }
}

/// xorshift64 for the generated packets.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }

    fn text(&mut self, alphabet: &[&str], max: u64) -> String {
        let len = 1 + self.below(max);
        (0..len)
            .map(|_| alphabet[self.below(alphabet.len() as u64) as usize])
            .collect()
    }
}

/// Valid 3.1.1 packets that `mqttbytes` reads correctly: the samples plus generated ones
/// (user names and passwords non-empty UTF-8, which is all `mqttbytes` can represent).
fn valid_packets() -> Vec<Packet> {
    let mut packets = samples::all(Version::V311);
    let mut rng = Rng(0x1234_5678_9ABC_DEF1);
    for i in 0..2_000u16 {
        let qos = QoS::from_bits(rng.below(3) as u8).expect("0..=2");
        let topic = rng.text(&["a", "b", "/", "$", " ", "é", "\u{1F600}"], 30);
        let payload: Vec<u8> = (0..rng.below(300)).map(|_| rng.below(256) as u8).collect();
        packets.push(Packet::Publish(Publish {
            dup: qos != QoS::AtMostOnce && rng.below(2) == 1,
            qos,
            retain: rng.below(2) == 1,
            topic: MqttString::from_bytes(Bytes::from(topic)).expect("valid UTF-8, no NUL"),
            pkid: if qos == QoS::AtMostOnce { 0 } else { 1 + i },
            properties: Props::default(),
            payload: Bytes::from(payload),
        }));
        let filter = rng.text(&["a", "b", "/", "é"], 20) + ["", "/+", "/#"][rng.below(3) as usize];
        packets.push(Packet::Subscribe(Subscribe {
            pkid: 1 + i,
            filters: vec![SubscribeFilter {
                filter: MqttString::from_bytes(Bytes::from(filter)).expect("valid UTF-8, no NUL"),
                options: SubscriptionOptions {
                    qos,
                    ..SubscriptionOptions::default()
                },
            }],
            properties: Props::default(),
        }));
    }
    packets
}

#[test]
fn our_codec_and_mqttbytes_agree_on_valid_3_1_1() {
    for packet in valid_packets() {
        let mut bytes = BytesMut::new();
        encode(&packet, Version::V311, &mut bytes).expect("valid packet encodes");
        let mut theirs_buf = bytes.clone();
        let theirs = v4::read(&mut theirs_buf, 1 << 20).expect("mqttbytes reads valid 3.1.1");
        let ours = match Codec::with_version(Version::V311, 1 << 20).decode(&mut bytes) {
            Ok(Decoded::Packet(packet)) => packet,
            other => panic!("our codec: {other:?}"),
        };
        assert_eq!(
            ours,
            from_mqttbytes(theirs),
            "both decoders on the same bytes"
        );
        assert_eq!(ours, packet);
        assert!(bytes.is_empty() && theirs_buf.is_empty());
    }
}

#[test]
fn bytes_written_by_mqttbytes_decode_the_same() {
    let mut connect = v4::Connect::new("client-7");
    connect.keep_alive = 30;
    connect.set_login("user", "pass");
    connect.last_will = Some(v4::LastWill::new(
        "will/t",
        "bye",
        mqttbytes::QoS::AtLeastOnce,
        true,
    ));
    let mut publish = v4::Publish::new("a/b", mqttbytes::QoS::ExactlyOnce, "x");
    publish.pkid = 3;
    let mut subscribe = v4::Subscribe::new("a/#", mqttbytes::QoS::AtLeastOnce);
    subscribe.pkid = 4;
    let packets = [
        v4::Packet::Connect(connect),
        v4::Packet::Publish(publish),
        v4::Packet::Subscribe(subscribe),
    ];
    for packet in packets {
        let mut bytes = BytesMut::new();
        match &packet {
            v4::Packet::Connect(c) => c.write(&mut bytes),
            v4::Packet::Publish(p) => p.write(&mut bytes),
            v4::Packet::Subscribe(s) => s.write(&mut bytes),
            _ => unreachable!("only the three above"),
        }
        .expect("mqttbytes writes");
        let mut codec = Codec::new(1 << 20);
        if !matches!(packet, v4::Packet::Connect(_)) {
            codec = Codec::with_version(Version::V311, 1 << 20);
        }
        let ours = match codec.decode(&mut bytes) {
            Ok(Decoded::Packet(p)) => p,
            other => panic!("our codec: {other:?}"),
        };
        assert_eq!(ours, from_mqttbytes(packet));
    }
}
