//! Codec benchmarks beside `mqttbytes` 0.6 decoding the same bytes: QoS 1 PUBLISH (3.1.1, and
//! 5.0 with properties), PUBLISH header encoding, CONNECT decoding.

use bytes::{Bytes, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion};
use ringcast::protocol::codec::{encode, samples, write_publish_header, Codec, Decoded};
use ringcast::protocol::{MqttString, Packet, Properties, Publish, QoS, Version};

const MAX: u32 = 1 << 20;

fn publish(version: Version) -> Publish {
    let mut p = samples::publish(
        "sensors/building-1/floor-2/temp",
        QoS::AtLeastOnce,
        &[7; 64],
    );
    if version == Version::V5 {
        p.properties = Properties {
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(3600),
            content_type: Some(MqttString::from("application/json")),
            response_topic: Some(MqttString::from("replies/device-42")),
            correlation_data: Some(Bytes::from_static(b"\x01\x02\x03")),
            user_properties: vec![(MqttString::from("k"), MqttString::from("v"))],
            ..Properties::default()
        }
        .into();
    }
    p
}

fn bytes_of(packet: &Packet, version: Version) -> BytesMut {
    let mut out = BytesMut::new();
    encode(packet, version, &mut out).expect("bench packet encodes");
    out
}

fn ours(codec: Codec, input: &BytesMut) -> impl FnMut(&mut criterion::Bencher) + '_ {
    move |b| {
        b.iter_batched_ref(
            || (codec.clone(), input.clone()),
            |(codec, buf)| match codec.decode(buf) {
                Ok(Decoded::Packet(p)) => black_box(p),
                other => panic!("bench input must decode: {other:?}"),
            },
            BatchSize::SmallInput,
        )
    }
}

fn decode_publish(c: &mut Criterion) {
    let v311 = bytes_of(&Packet::Publish(publish(Version::V311)), Version::V311);
    let mut group = c.benchmark_group("decode_publish_qos1_v311");
    group.bench_function(
        "ringcast",
        ours(Codec::with_version(Version::V311, MAX), &v311),
    );
    group.bench_function("mqttbytes", |b| {
        b.iter_batched_ref(
            || v311.clone(),
            |buf| black_box(mqttbytes::v4::read(buf, MAX as usize).expect("mqttbytes reads it")),
            BatchSize::SmallInput,
        )
    });
    group.finish();

    let v5 = bytes_of(&Packet::Publish(publish(Version::V5)), Version::V5);
    let mut group = c.benchmark_group("decode_publish_qos1_v5_properties");
    group.bench_function("ringcast", ours(Codec::with_version(Version::V5, MAX), &v5));
    group.bench_function("mqttbytes", |b| {
        b.iter_batched_ref(
            || v5.clone(),
            |buf| black_box(mqttbytes::v5::read(buf, MAX as usize).expect("mqttbytes reads it")),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn encode_publish_header(c: &mut Criterion) {
    let ours = publish(Version::V311);
    let mut theirs = mqttbytes::v4::Publish::from_bytes(
        "sensors/building-1/floor-2/temp",
        mqttbytes::QoS::AtLeastOnce,
        ours.payload.clone(),
    );
    theirs.pkid = ours.pkid;
    let mut group = c.benchmark_group("encode_publish_header_v311");
    let mut out = BytesMut::with_capacity(4096);
    group.bench_function("ringcast", |b| {
        b.iter(|| {
            out.clear();
            write_publish_header(black_box(&ours), Version::V311, &mut out).expect("encodes");
        })
    });
    // mqttbytes has no header-only writer: it always copies the payload too.
    group.bench_function("mqttbytes (header + payload copy)", |b| {
        b.iter(|| {
            out.clear();
            black_box(&theirs).write(&mut out).expect("encodes");
        })
    });
    group.finish();
}

fn decode_connect(c: &mut Criterion) {
    let input = bytes_of(
        &Packet::Connect(Box::new(samples::connect(Version::V311))),
        Version::V311,
    );
    let mut group = c.benchmark_group("decode_connect_v311");
    group.bench_function("ringcast", ours(Codec::new(MAX), &input));
    group.bench_function("mqttbytes", |b| {
        b.iter_batched_ref(
            || input.clone(),
            |buf| black_box(mqttbytes::v4::read(buf, MAX as usize).expect("mqttbytes reads it")),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(
    benches,
    decode_publish,
    encode_publish_header,
    decode_connect
);
criterion_main!(benches);
