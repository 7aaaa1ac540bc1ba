//! Fan-out of one publish to N subscriber queues: the broker's per-subscriber cost without
//! sockets. Each subscriber gets a `Frame` of its own header and a clone (a reference count)
//! of the one payload `Bytes`, pushed into its `Outbox`; the queues are drained after each
//! publish so they stay bounded.
//!
//! Two ways to build the headers: `encode_each` encodes a PUBLISH header per subscriber;
//! `patch_image` encodes one header image per publish and patches only the packet id, as
//! docs/DESIGN.md asks for subscribers that share protocol, QoS and flags.

use bytes::{Bytes, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringcast::protocol::codec::write_publish_header;
use ringcast::protocol::{MqttString, Properties, Publish, QoS, Version};
use ringcast::shard::outbox::{Frame, Outbox};

const TOPIC: &str = "sensors/building-1/floor-2/temp";

fn publish(qos: QoS, payload: &Bytes) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: MqttString::from(TOPIC),
        pkid: if qos == QoS::AtMostOnce { 0 } else { 1 },
        properties: Properties::default().into(),
        payload: payload.clone(),
    }
}

/// One header encoded per subscriber, each with its own packet id.
fn encode_each(outboxes: &[Outbox], publish: &mut Publish, scratch: &mut BytesMut) {
    for (i, outbox) in outboxes.iter().enumerate() {
        if publish.qos != QoS::AtMostOnce {
            publish.pkid = (i % 65_535 + 1) as u16;
        }
        write_publish_header(publish, Version::V311, scratch).expect("bench header encodes");
        outbox.push(Frame {
            header: scratch.split().freeze(),
            payload: publish.payload.clone(),
            is_droppable: publish.qos == QoS::AtMostOnce,
        });
    }
}

/// One header image per publish; per subscriber only the packet id bytes are patched.
fn patch_image(outboxes: &[Outbox], publish: &Publish, scratch: &mut BytesMut) {
    write_publish_header(publish, Version::V311, scratch).expect("bench header encodes");
    let image = scratch.split();
    // 3.1.1 QoS > 0: fixed header, topic length + topic, then the packet id.
    let pkid_at = image.len() - 2;
    for (i, outbox) in outboxes.iter().enumerate() {
        let header = if publish.qos == QoS::AtMostOnce {
            image.clone().freeze()
        } else {
            scratch.extend_from_slice(&image);
            let pkid = (i % 65_535 + 1) as u16;
            scratch[pkid_at..pkid_at + 2].copy_from_slice(&pkid.to_be_bytes());
            scratch.split().freeze()
        };
        outbox.push(Frame {
            header,
            payload: publish.payload.clone(),
            is_droppable: publish.qos == QoS::AtMostOnce,
        });
    }
}

fn drain(outboxes: &[Outbox]) {
    for outbox in outboxes {
        outbox.consume(outbox.queued_bytes());
    }
}

fn fanout(c: &mut Criterion) {
    let payload = Bytes::from(vec![7u8; 16]);
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
        let mut group = c.benchmark_group(format!("fanout_qos{}", qos as u8));
        for n in [10usize, 100, 1000] {
            let outboxes: Vec<Outbox> = (0..n).map(|_| Outbox::default()).collect();
            let mut scratch = BytesMut::with_capacity(64 * 1024);
            group.throughput(Throughput::Elements(n as u64));
            group.bench_with_input(BenchmarkId::new("encode_each", n), &n, |b, _| {
                let mut p = publish(qos, &payload);
                b.iter(|| {
                    encode_each(&outboxes, &mut p, &mut scratch);
                    drain(black_box(&outboxes));
                })
            });
            group.bench_with_input(BenchmarkId::new("patch_image", n), &n, |b, _| {
                let p = publish(qos, &payload);
                b.iter(|| {
                    patch_image(&outboxes, &p, &mut scratch);
                    drain(black_box(&outboxes));
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, fanout);
criterion_main!(benches);
