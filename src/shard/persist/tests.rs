//! The schema: every record kind round-trips, damaged bytes decode to nothing (never a
//! panic), replay rebuilds a session's window and queue, and a message fanned out to many
//! persistent sessions of a shard is written once.

use super::*;
use crate::config::Limits;
use crate::protocol::{MqttString, Props};
use crate::shard::encoder::Encoder;
use crate::shard::replay::replay;
use crate::shard::session::{Grant, Phase, Session};
use crate::shard::subscription::Subscription;
use crate::store::{Fsync, Options};
use bytes::Bytes;
use std::rc::Rc;
use std::sync::Arc;

fn publish(topic: &str, qos: QoS, payload: &'static [u8]) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: MqttString::from_str_checked(topic).unwrap(),
        pkid: 0,
        properties: Props::from(crate::protocol::Properties {
            message_expiry_interval: Some(60),
            ..Default::default()
        }),
        payload: Bytes::from_static(payload),
    }
}

fn grant() -> StoredGrant {
    StoredGrant {
        qos: QoS::ExactlyOnce,
        retain: true,
        ids: vec![7, 9],
        expires_ms: Some(1_900_000_000_000),
        share: Some("$share/g/a/#".into()),
    }
}

fn sub() -> Subscription {
    Subscription {
        options: crate::protocol::SubscriptionOptions {
            qos: QoS::AtLeastOnce,
            no_local: true,
            retain_as_published: false,
            retain_handling: 2,
        },
        id: Some(42),
        is_filtered: true,
    }
}

fn every_kind() -> Vec<Record> {
    let opened = Opened {
        sid: 3,
        stamp: 1_700_000_000_000_000_000,
        client_id: "device-1".into(),
        version: Version::V5,
        expiry_secs: 3600,
        will: Some((publish("last/will", QoS::AtLeastOnce, b"bye"), 30)),
        subscriptions: vec![("a/+".into(), sub())],
        incoming_qos2: vec![5, 6],
        next_pkid: 12,
        inflight: vec![(1, grant(), 10, false), (2, grant(), 11, true)],
        queue: vec![(2, grant())],
    };
    vec![
        Record::Retain {
            topic: "a/b".into(),
            message: Some((publish("a/b", QoS::AtLeastOnce, b"on"), Some(123))),
        },
        Record::Retain {
            topic: "a/c".into(),
            message: None,
        },
        Record::Message {
            mid: 1,
            publish: publish("a/b", QoS::ExactlyOnce, b"hello"),
        },
        Record::Open(Box::new(opened)),
        Record::End { sid: 3 },
        Record::WillGone { sid: 3 },
        Record::WillDue {
            sid: 3,
            at_ms: 1_700_000_000_123,
        },
        Record::Subscribe {
            sid: 3,
            filter: "a/#".into(),
            sub: sub(),
        },
        Record::Unsubscribe {
            sid: 3,
            filter: "a/#".into(),
        },
        Record::Expiry { sid: 3, secs: 9 },
        Record::Enqueue {
            sid: 3,
            mid: 1,
            grant: grant(),
        },
        Record::Assign {
            sid: 3,
            pkid: 65_535,
        },
        Record::PubRec { sid: 3, pkid: 1 },
        Record::Done { sid: 3, pkid: 1 },
        Record::Incoming { sid: 3, pkid: 2 },
        Record::Released { sid: 3, pkid: 2 },
    ]
}

/// The PUBLISH as replay gives it back: the packet id is not part of a stored message.
fn normalized(record: &Record) -> Record {
    let mut record = record.clone();
    let fix = |p: &mut Publish| p.pkid = u16::from(p.qos != QoS::AtMostOnce);
    match &mut record {
        Record::Message { publish, .. } => fix(publish),
        Record::Retain {
            message: Some((publish, _)),
            ..
        } => fix(publish),
        Record::Open(opened) => {
            if let Some((will, _)) = &mut opened.will {
                fix(will);
            }
        }
        _ => {}
    }
    record
}

#[test]
fn every_record_kind_round_trips() {
    for record in every_kind() {
        let bytes = encode_record(&record);
        assert_eq!(decode(&bytes), Some(normalized(&record)), "{record:?}");
    }
}

#[test]
fn a_cut_or_damaged_record_decodes_to_nothing_and_never_panics() {
    for record in every_kind() {
        let bytes = encode_record(&record);
        for len in 0..bytes.len() {
            assert_eq!(decode(&bytes[..len]), None, "{record:?} cut at {len}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(decode(&longer), None, "trailing byte after {record:?}");
    }
    assert_eq!(decode(&[0xff, 1, 2, 3]), None, "unknown tag");
}

#[test]
fn replay_rebuilds_the_window_and_the_queue() {
    let records = [
        Record::Message {
            mid: 1,
            publish: publish("t", QoS::ExactlyOnce, b"1"),
        },
        Record::Message {
            mid: 2,
            publish: publish("t", QoS::AtLeastOnce, b"2"),
        },
        Record::Message {
            mid: 3,
            publish: publish("t", QoS::AtLeastOnce, b"3"),
        },
        Record::Open(Box::new(Opened {
            sid: 1,
            stamp: 5,
            client_id: "c".into(),
            version: Version::V311,
            expiry_secs: u32::MAX,
            will: None,
            subscriptions: vec![],
            incoming_qos2: vec![],
            next_pkid: 1,
            inflight: vec![],
            queue: vec![],
        })),
        Record::Subscribe {
            sid: 1,
            filter: "t".into(),
            sub: sub(),
        },
        Record::Enqueue {
            sid: 1,
            mid: 1,
            grant: grant(),
        },
        Record::Enqueue {
            sid: 1,
            mid: 2,
            grant: grant(),
        },
        Record::Enqueue {
            sid: 1,
            mid: 3,
            grant: grant(),
        },
        Record::Assign { sid: 1, pkid: 1 },
        Record::Assign { sid: 1, pkid: 2 },
        Record::PubRec { sid: 1, pkid: 1 },
        Record::Done { sid: 1, pkid: 2 },
        Record::Incoming { sid: 1, pkid: 9 },
    ];
    let bytes: Vec<Bytes> = records
        .iter()
        .map(|r| Bytes::from(encode_record(r)))
        .collect();
    let (replayed, skipped) = replay(&bytes, 0);
    assert_eq!(skipped, 0);
    let [image] = &replayed.sessions[..] else {
        panic!("one session: {:?}", replayed.sessions);
    };
    let state = &image.state;
    let inflight: Vec<_> = state.inflight.iter().map(|i| (i.pkid, i.phase)).collect();
    assert_eq!(inflight, [(1, Phase::Release)], "2 was acknowledged");
    let queued: Vec<_> = state
        .queue
        .iter()
        .map(|o| o.publish.payload.clone())
        .collect();
    assert_eq!(queued, [Bytes::from_static(b"3")]);
    assert_eq!(state.incoming_qos2, [9]);
    assert_eq!(state.next_pkid, 3);
    assert_eq!(state.subscriptions.len(), 1);
    assert_eq!((replayed.next_mid, replayed.next_sid), (4, 2));
}

#[test]
fn an_ended_session_is_not_replayed() {
    let open = Record::Open(Box::new(Opened {
        sid: 4,
        stamp: 1,
        client_id: "gone".into(),
        version: Version::V5,
        expiry_secs: 10,
        will: None,
        subscriptions: vec![],
        incoming_qos2: vec![],
        next_pkid: 1,
        inflight: vec![],
        queue: vec![],
    }));
    let bytes = [open, Record::End { sid: 4 }].map(|r| Bytes::from(encode_record(&r)));
    assert!(replay(&bytes, 0).0.sessions.is_empty());
}

/// Runs `f` on a glommio executor (the store lives on one) with a store in a fresh directory.
fn on_store<F, Fut>(f: F)
where
    F: FnOnce(Options) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let dir = std::env::temp_dir().join(format!(
        "ringcast-persist-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let options = Options {
        dir: dir.clone(),
        fsync: Fsync::Never,
        repair: false,
    };
    glommio::LocalExecutorBuilder::default()
        .io_memory(64 << 10)
        .spawn(move || f(options))
        .unwrap()
        .join()
        .unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_message_fanned_out_to_1000_persistent_sessions_is_written_once() {
    on_store(|options| async move {
        {
            let (store, _) = Store::open(&options, 0).await.unwrap();
            let persist = Rc::new(Persist::new(store, 1, 1));
            let mut sessions: Vec<Session> = (0..1000)
                .map(|n| {
                    let mut s = Session::new(format!("c{n}"), Version::V311, true);
                    s.open_journal(&persist);
                    s
                })
                .collect();
            let message = Arc::new(publish("fan/out", QoS::AtLeastOnce, b"payload"));
            let mut enc = Encoder::default();
            for s in &mut sessions {
                let grant = Grant::as_published(&message);
                s.deliver(&message, grant, &Limits::default(), &mut enc);
            }
            persist.store().close().await.unwrap();
            let recovered = Store::read_only(&options, 0).await.unwrap();
            let mut kinds: Vec<Record> = Vec::new();
            for r in &recovered.records {
                assert!(decode_each(r, |record| kinds.push(record)));
            }
            let bodies = kinds
                .iter()
                .filter(|r| matches!(r, Record::Message { .. }))
                .count();
            let refs = kinds
                .iter()
                .filter(|r| matches!(r, Record::Enqueue { .. }))
                .count();
            assert_eq!((bodies, refs), (1, 1000));
            let (replayed, _) = replay(&recovered.records, 0);
            assert_eq!(replayed.sessions.len(), 1000);
            assert!(replayed.sessions.iter().all(|i| i.state.queue.len() == 1));
        }
    });
}

#[test]
fn clean_sessions_and_qos_0_write_nothing() {
    on_store(|options| async move {
        {
            let (store, _) = Store::open(&options, 0).await.unwrap();
            let persist = Rc::new(Persist::new(store, 1, 1));
            let mut clean = Session::new("clean".into(), Version::V311, false);
            let message = Arc::new(publish("t", QoS::AtLeastOnce, b"x"));
            let mut enc = Encoder::default();
            let grant = Grant::as_published(&message);
            clean.deliver(&message, grant, &Limits::default(), &mut enc);
            let mut stored = Session::new("kept".into(), Version::V311, true);
            stored.open_journal(&persist);
            let before = persist.last();
            let qos0 = Arc::new(publish("t", QoS::AtMostOnce, b"y"));
            let grant = Grant::as_published(&qos0);
            stored.deliver(&qos0, grant, &Limits::default(), &mut enc);
            assert_eq!(persist.last(), before, "QoS 0 wrote a record");
            assert_eq!(before, 1, "only the persistent session's Open");
        }
    });
}

#[test]
fn records_joined_while_open_replay_as_the_records_they_stand_for() {
    on_store(|options| async move {
        let (store, _) = Store::open(&options, 0).await.unwrap();
        let persist = Persist::new(store, 1, 1);
        let message = Arc::new(publish("t", QoS::AtLeastOnce, b"body"));
        let mid = persist.message_id(&message);
        let enqueue = |sid| Record::Enqueue {
            sid,
            mid,
            grant: grant(),
        };
        let first = persist.append_joined(&enqueue(1));
        assert_eq!(
            persist.append_joined(&enqueue(2)),
            first,
            "joins the message"
        );
        let assign = |pkid| Record::Assign { sid: 1, pkid };
        let runs = persist.append_joined(&assign(7));
        assert!(runs > first);
        assert_eq!(persist.append_joined(&assign(8)), runs);
        let done = persist.append_joined(&Record::Done { sid: 1, pkid: 7 });
        assert!(done > runs, "a Done does not join the Assigns");
        // Another session's run starts its own record.
        assert!(persist.append_joined(&Record::Done { sid: 2, pkid: 7 }) > done);
        persist.store().close().await.unwrap();
        let recovered = Store::read_only(&options, 0).await.unwrap();
        assert_eq!(recovered.records.len(), 4);
        let mut got = Vec::new();
        for r in &recovered.records {
            assert!(decode_each(r, |record| got.push(record)));
        }
        let want = [
            Record::Message {
                mid,
                publish: Publish::clone(&message),
            },
            enqueue(1),
            enqueue(2),
            assign(7),
            assign(8),
            Record::Done { sid: 1, pkid: 7 },
            Record::Done { sid: 2, pkid: 7 },
        ];
        assert_eq!(
            got.iter().map(normalized).collect::<Vec<_>>(),
            want.iter().map(normalized).collect::<Vec<_>>()
        );
        // Cut anywhere (the store's checksum catches that first), decoding never panics.
        for r in &recovered.records {
            for len in 0..r.len() {
                decode_each(&r[..len], |_| {});
            }
        }
    });
}
