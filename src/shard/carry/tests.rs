//! A session written for another node reads back as the same session: subscriptions with
//! options and identifiers, the window with packet ids and phases, the queue, inbound QoS 2
//! ids, expiry and the will with its delay; damaged bytes read back as nothing.

use super::*;
use crate::protocol::{MqttString, Props, QoS, SubscriptionOptions, Version, Will};
use crate::shard::session::{Grant, Inflight, Outgoing, Phase, SessionState, Subscription};

fn message(topic: &str, qos: QoS, payload: &'static [u8]) -> Arc<Publish> {
    Arc::new(Publish {
        dup: false,
        qos,
        retain: false,
        topic: MqttString::from_str_checked(topic).unwrap(),
        pkid: 0,
        properties: Props::default(),
        payload: Bytes::from_static(payload),
    })
}

fn grant(qos: QoS, ids: Vec<u32>) -> Grant {
    Grant::new(qos, false, ids, None)
}

fn subscription(qos: QoS, id: Option<u32>) -> Subscription {
    Subscription {
        options: SubscriptionOptions {
            qos,
            no_local: true,
            retain_as_published: true,
            retain_handling: 2,
        },
        id,
        is_filtered: false,
    }
}

/// A persistent 5.0 session holding a bit of everything.
fn session() -> Session {
    let mut session = Session::new("dev-7".into(), Version::V5, true);
    session.expiry_secs = 3600;
    let mut properties = Props::default();
    properties.will_delay_interval = Some(30);
    session.will = Some(Box::new(Will {
        topic: MqttString::from_str_checked("dev/7/gone").unwrap(),
        payload: Bytes::from_static(b"bye"),
        qos: QoS::AtLeastOnce,
        retain: true,
        properties,
    }));
    let shared = message("m/shared", QoS::ExactlyOnce, b"both");
    session.restore(SessionState {
        subscriptions: vec![
            ("m/#".into(), subscription(QoS::ExactlyOnce, Some(5))),
            ("$share/g/m/+".into(), subscription(QoS::AtLeastOnce, None)),
        ],
        inflight: vec![
            Inflight {
                out: Outgoing {
                    publish: message("m/1", QoS::AtLeastOnce, b"one"),
                    grant: grant(QoS::AtLeastOnce, vec![5]),
                },
                pkid: 41,
                phase: Phase::Publish,
            },
            Inflight {
                out: Outgoing {
                    publish: shared.clone(),
                    grant: grant(QoS::ExactlyOnce, vec![]),
                },
                pkid: 42,
                phase: Phase::Release,
            },
        ],
        queue: vec![
            Outgoing {
                publish: message("m/3", QoS::ExactlyOnce, b"three"),
                grant: grant(QoS::ExactlyOnce, vec![5]),
            },
            Outgoing {
                publish: shared,
                grant: grant(QoS::AtLeastOnce, vec![]),
            },
            // Not carried: QoS 0 is not stored.
            Outgoing {
                publish: message("m/4", QoS::AtMostOnce, b"zero"),
                grant: grant(QoS::AtMostOnce, vec![]),
            },
        ],
        incoming_qos2: vec![7, 9],
        next_pkid: 43,
        cursors: Vec::new(),
    });
    session
}

fn payloads<'a>(outs: impl Iterator<Item = &'a Outgoing>) -> Vec<(String, QoS, Vec<u32>)> {
    outs.map(|o| {
        let payload = String::from_utf8_lossy(&o.publish.payload).into_owned();
        (payload, o.grant.qos, o.grant.ids().to_vec())
    })
    .collect()
}

#[test]
fn a_carried_session_reads_back_with_everything_it_held() {
    let image = uncarry(&carry(&session())).expect("one whole session");
    assert_eq!(image.client_id, "dev-7");
    assert_eq!(image.version, Version::V5);
    assert_eq!(image.expiry_secs, 3600);
    let will = image.will.expect("the will travels");
    assert_eq!(will.topic.as_str(), "dev/7/gone");
    assert_eq!(&will.payload[..], b"bye");
    assert!(will.retain);
    assert_eq!(will.properties.will_delay_interval, Some(30));
    let mut state = image.state;
    state.subscriptions.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        state.subscriptions,
        vec![
            ("$share/g/m/+".into(), subscription(QoS::AtLeastOnce, None)),
            ("m/#".into(), subscription(QoS::ExactlyOnce, Some(5))),
        ]
    );
    let window: Vec<(u16, Phase)> = state.inflight.iter().map(|i| (i.pkid, i.phase)).collect();
    assert_eq!(window, [(41, Phase::Publish), (42, Phase::Release)]);
    assert_eq!(
        payloads(state.inflight.iter().map(|i| &i.out)),
        [
            ("one".into(), QoS::AtLeastOnce, vec![5]),
            ("both".into(), QoS::ExactlyOnce, vec![])
        ]
    );
    assert_eq!(
        payloads(state.queue.iter()),
        [
            ("three".into(), QoS::ExactlyOnce, vec![5]),
            ("both".into(), QoS::AtLeastOnce, vec![])
        ]
    );
    // One body for the message held twice, shared again on arrival.
    assert!(Arc::ptr_eq(
        &state.inflight[1].out.publish,
        &state.queue[1].publish
    ));
    state.incoming_qos2.sort_unstable();
    assert_eq!(state.incoming_qos2, [7, 9]);
    assert_eq!(state.next_pkid, 43);
}

#[test]
fn an_empty_session_is_carried_too() {
    let session = Session::new("c".into(), Version::V311, true);
    let image = uncarry(&carry(&session)).expect("one whole session");
    assert_eq!(image.client_id, "c");
    assert_eq!(image.version, Version::V311);
    assert!(image.state.subscriptions.is_empty() && image.state.queue.is_empty());
}

#[test]
fn damaged_bytes_read_back_as_nothing_and_never_panic() {
    let bytes = carry(&session());
    assert!(uncarry(&Bytes::new()).is_none(), "no session at all");
    for cut in 0..bytes.len() {
        assert!(uncarry(&bytes.slice(..cut)).is_none(), "cut at {cut}");
    }
    let mut twice = bytes.to_vec();
    twice.extend_from_slice(&bytes);
    assert!(uncarry(&Bytes::from(twice)).is_none(), "two sessions");
    let mut flipped = bytes.to_vec();
    for i in 0..flipped.len() {
        flipped[i] ^= 0xFF;
        let _ = uncarry(&Bytes::from(flipped.clone()));
        flipped[i] ^= 0xFF;
    }
}
