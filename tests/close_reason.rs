//! A connection the broker closes with a reason: the client reads the DISCONNECT and then end
//! of stream, not a reset, even while it is still sending (the broker shuts its write side
//! and discards input for a bounded time before closing).

mod common;

use bytes::BytesMut;
use common::{connect_packet, publish_packet, Broker, Raw};
use ringcast::protocol::codec::{encode, Codec, Decoded};
use ringcast::protocol::*;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// Reads packets until end of stream; fails on a reset or when the stream stays open.
fn read_to_end(raw: &mut Raw) -> Vec<Packet> {
    let mut codec = Codec::with_version(Version::V5, 1 << 20);
    let mut buf = BytesMut::new();
    let mut packets = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    raw.stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut chunk = [0u8; 65536];
    loop {
        assert!(Instant::now() < deadline, "the connection stayed open");
        match raw.stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => panic!("read failed instead of end of stream: {e} after {packets:?}"),
        }
        while let Ok(Decoded::Packet(packet)) = codec.decode(&mut buf) {
            packets.push(packet);
        }
    }
    packets
}

#[test]
fn mqtt_3_3_4_8_receive_maximum_exceeded_is_read_by_a_client_that_keeps_sending() {
    let broker = Broker::start(1);
    let mut raw = Raw::connect_with(broker.addr, connect_packet("flood", Version::V5, true)).0;
    let receive_max = ringcast::config::Limits::default().receive_max;
    let mut out = BytesMut::new();
    // More unreleased QoS 2 PUBLISHes than the broker's Receive Maximum, then more traffic
    // behind them that the broker will not read as packets.
    for pkid in 1..=receive_max + 1 {
        let packet = publish_packet("flood", b"x", QoS::ExactlyOnce, false, pkid);
        encode(&packet, Version::V5, &mut out).unwrap();
    }
    let writer = raw.stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let mut writer = writer;
        let _ = writer.write_all(&out);
        // Keep sending for a while, as a client unaware of the close would.
        let tail = [0xc0u8, 0x00].repeat(4096); // PINGREQs
        for _ in 0..20 {
            if writer.write_all(&tail).is_err() {
                break;
            }
        }
    });
    let packets = read_to_end(&mut raw);
    sender.join().unwrap();
    let last = packets.last().expect("packets before the close");
    let Packet::Disconnect(disconnect) = last else {
        panic!("last packet {last:?}, expected DISCONNECT");
    };
    assert_eq!(disconnect.reason, ReasonCode::RECEIVE_MAXIMUM_EXCEEDED);
    let pubrecs = packets
        .iter()
        .filter(|p| matches!(p, Packet::PubRec(_)))
        .count();
    assert_eq!(pubrecs, receive_max as usize);
}

#[test]
fn mqtt_4_13_1_a_protocol_error_is_read_before_end_of_stream() {
    let broker = Broker::start(1);
    let mut raw = Raw::connect_with(broker.addr, connect_packet("bad", Version::V5, true)).0;
    // A second CONNECT is a protocol error [MQTT-3.1.0-2], with more bytes behind it.
    let mut out = BytesMut::new();
    let again = Packet::Connect(Box::new(connect_packet("bad", Version::V5, true)));
    encode(&again, Version::V5, &mut out).unwrap();
    out.extend_from_slice(&[0xc0, 0x00].repeat(20_000));
    raw.send_bytes(&out);
    let packets = read_to_end(&mut raw);
    let Some(Packet::Disconnect(disconnect)) = packets.last() else {
        panic!("expected DISCONNECT, got {packets:?}");
    };
    assert_eq!(disconnect.reason, ReasonCode::PROTOCOL_ERROR);
}
