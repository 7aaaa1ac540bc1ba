//! Sample packets of every type for both versions, with every 5.0 property used somewhere.
//! Shared by unit tests, the randomized and differential tests, fuzz targets and benches.

use bytes::Bytes;

use crate::protocol::packet::*;

fn s(text: &'static str) -> MqttString {
    MqttString::from(text)
}

/// A PUBLISH at `qos` on `topic` with `payload`, no properties.
pub fn publish(topic: &'static str, qos: QoS, payload: &'static [u8]) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: s(topic),
        pkid: if qos == QoS::AtMostOnce { 0 } else { 7 },
        properties: Props::default(),
        payload: Bytes::from_static(payload),
    }
}

/// Properties a 5.0 PUBLISH may carry, all set.
pub fn publish_properties() -> Properties {
    Properties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(3600),
        content_type: Some(s("application/json")),
        response_topic: Some(s("replies/device-42")),
        correlation_data: Some(Bytes::from_static(b"\x01\x02\x03")),
        subscription_identifiers: vec![1, 268_435_455],
        topic_alias: Some(3),
        user_properties: vec![(s("k"), s("v")), (s("k"), s("v2"))],
        ..Properties::default()
    }
}

/// Properties a 5.0 CONNECT may carry, all set.
pub fn connect_properties() -> Properties {
    Properties {
        session_expiry_interval: Some(60),
        authentication_method: Some(s("SCRAM-SHA-1")),
        authentication_data: Some(Bytes::from_static(b"client-first")),
        request_problem_information: Some(0),
        request_response_information: Some(1),
        receive_maximum: Some(100),
        topic_alias_maximum: Some(10),
        user_properties: vec![(s("region"), s("eu"))],
        maximum_packet_size: Some(1 << 20),
        ..Properties::default()
    }
}

/// Properties a 5.0 CONNACK may carry, all set.
pub fn connack_properties() -> Properties {
    Properties {
        session_expiry_interval: Some(60),
        assigned_client_identifier: Some(s("auto-1")),
        server_keep_alive: Some(30),
        authentication_method: Some(s("SCRAM-SHA-1")),
        authentication_data: Some(Bytes::from_static(b"server-final")),
        response_information: Some(s("resp/")),
        server_reference: Some(s("other:1883")),
        reason_string: Some(s("ok")),
        receive_maximum: Some(20),
        topic_alias_maximum: Some(5),
        maximum_qos: Some(1),
        retain_available: Some(0),
        user_properties: vec![(s("a"), s("b"))],
        maximum_packet_size: Some(65_536),
        wildcard_subscription_available: Some(1),
        subscription_identifier_available: Some(0),
        shared_subscription_available: Some(1),
        ..Properties::default()
    }
}

fn reason_props() -> Properties {
    Properties {
        reason_string: Some(s("because")),
        user_properties: vec![(s("x"), s("y"))],
        ..Properties::default()
    }
}

/// A CONNECT with will and credentials.
pub fn connect(version: Version) -> Connect {
    let v5 = version == Version::V5;
    let will_properties = Properties {
        will_delay_interval: Some(5),
        payload_format_indicator: Some(0),
        message_expiry_interval: Some(10),
        content_type: Some(s("text/plain")),
        response_topic: Some(s("will/replies")),
        correlation_data: Some(Bytes::from_static(b"c")),
        user_properties: vec![(s("w"), s("1"))],
        ..Properties::default()
    };
    Connect {
        version,
        client_id: s("device-42"),
        clean_start: true,
        keep_alive_secs: 60,
        username: Some(s("user")),
        password: Some(Bytes::from_static(b"secret")),
        will: Some(Will {
            topic: s("devices/42/status"),
            payload: Bytes::from_static(b"offline"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: if v5 {
                will_properties.into()
            } else {
                Props::default()
            },
        }),
        properties: if v5 {
            connect_properties().into()
        } else {
            Props::default()
        },
    }
}

/// Every packet type valid in `version`, several shapes each.
pub fn all(version: Version) -> Vec<Packet> {
    let v5 = version == Version::V5;
    let props = |p: Properties| if v5 { p } else { Properties::default() };
    let code = |c: u8| {
        if v5 {
            ReasonCode(c)
        } else {
            ReasonCode::SUCCESS
        }
    };
    let mut minimal_connect = connect(version);
    minimal_connect.will = None;
    minimal_connect.username = None;
    minimal_connect.password = None;
    minimal_connect.client_id = MqttString::default();
    minimal_connect.properties = Props::default();
    let mut publish_v5 = publish("a/b", QoS::ExactlyOnce, b"payload");
    publish_v5.properties = props(publish_properties()).into();
    publish_v5.retain = true;
    publish_v5.dup = true;
    let ack = |reason: u8, p: Properties| Ack {
        pkid: 9,
        reason: code(reason),
        properties: props(p).into(),
    };
    let mut packets = vec![
        Packet::Connect(Box::new(connect(version))),
        Packet::Connect(Box::new(minimal_connect)),
        Packet::ConnAck(ConnAck {
            session_present: true,
            code: ReasonCode::SUCCESS,
            properties: props(connack_properties()).into(),
        }),
        Packet::ConnAck(ConnAck {
            session_present: false,
            code: ReasonCode(if v5 { 0x86 } else { 4 }),
            properties: Props::default(),
        }),
        Packet::Publish(publish("sensors/temp", QoS::AtMostOnce, b"21.5")),
        Packet::Publish(publish("sensors/temp", QoS::AtLeastOnce, b"")),
        Packet::Publish(publish_v5),
        Packet::PubAck(ack(0, Properties::default())),
        Packet::PubAck(ack(0x10, Properties::default())),
        Packet::PubRec(ack(0x80, reason_props())),
        Packet::PubRel(ack(0x92, Properties::default())),
        Packet::PubComp(ack(0, reason_props())),
    ];
    packets.extend(subscription_packets(version));
    packets.extend([
        Packet::PingReq,
        Packet::PingResp,
        Packet::Disconnect(Disconnect::default()),
    ]);
    if v5 {
        packets.extend(v5_only());
    }
    packets
}

/// SUBSCRIBE, SUBACK, UNSUBSCRIBE and UNSUBACK in the shapes `version` allows.
fn subscription_packets(version: Version) -> Vec<Packet> {
    let v5 = version == Version::V5;
    let props = |p: Properties| if v5 { p } else { Properties::default() };
    vec![
        Packet::Subscribe(Subscribe {
            pkid: 10,
            filters: vec![
                SubscribeFilter {
                    filter: s("a/+/c"),
                    options: SubscriptionOptions {
                        qos: QoS::AtLeastOnce,
                        no_local: v5,
                        retain_as_published: v5,
                        retain_handling: if v5 { 2 } else { 0 },
                    },
                },
                SubscribeFilter {
                    filter: s("$share/group/x/#"),
                    options: SubscriptionOptions::default(),
                },
            ],
            properties: props(Properties {
                subscription_identifiers: vec![42],
                user_properties: vec![(s("u"), s("p"))],
                ..Properties::default()
            })
            .into(),
        }),
        Packet::SubAck(SubAck {
            pkid: 10,
            reason_codes: vec![ReasonCode(1), ReasonCode(0x80)],
            properties: props(reason_props()).into(),
        }),
        Packet::Unsubscribe(Unsubscribe {
            pkid: 11,
            filters: vec![s("a/+/c"), s("#")],
            properties: props(Properties {
                user_properties: vec![(s("u"), s("p"))],
                ..Properties::default()
            })
            .into(),
        }),
        Packet::UnsubAck(UnsubAck {
            pkid: 11,
            reason_codes: if v5 {
                vec![ReasonCode(0), ReasonCode(0x11)]
            } else {
                vec![]
            },
            properties: props(reason_props()).into(),
        }),
    ]
}

fn v5_only() -> Vec<Packet> {
    let mut aliased = publish("", QoS::AtLeastOnce, b"x");
    aliased.properties.topic_alias = Some(1);
    vec![
        Packet::Publish(aliased),
        Packet::Disconnect(Disconnect {
            reason: ReasonCode(0x04),
            properties: Props::default(),
        }),
        Packet::Disconnect(Disconnect {
            reason: ReasonCode::SERVER_MOVED,
            properties: Properties {
                session_expiry_interval: Some(0),
                server_reference: Some(s("other:1883")),
                reason_string: Some(s("moved")),
                user_properties: vec![(s("a"), s("b"))],
                ..Properties::default()
            }
            .into(),
        }),
        Packet::Auth(Auth::default()),
        Packet::Auth(Auth {
            reason: ReasonCode::CONTINUE_AUTHENTICATION,
            properties: Properties {
                authentication_method: Some(s("SCRAM-SHA-1")),
                authentication_data: Some(Bytes::from_static(b"challenge")),
                reason_string: Some(s("more")),
                user_properties: vec![(s("a"), s("b"))],
                ..Properties::default()
            }
            .into(),
        }),
    ]
}
