//! What every decode target asserts: no panic, nothing consumed on Incomplete or error,
//! exactly one frame consumed per packet, and a decoded packet re-encodes to one that decodes
//! to the same packet.

use bytes::BytesMut;
use ringcast::protocol::codec::{encode, Codec, Decoded};
use ringcast::protocol::Version;

/// Decodes packets from `data` until it runs out, checking every step.
pub fn decode_all(mut codec: Codec, data: &[u8]) {
    let mut buf = BytesMut::from(data);
    loop {
        let before = buf.len();
        let snapshot = buf.clone();
        match codec.decode(&mut buf) {
            Ok(Decoded::Packet(packet)) => {
                assert!(buf.len() < before, "a packet consumed its frame");
                let version = codec.version().expect("a packet fixes the version");
                round_trip(&packet, version);
            }
            Ok(Decoded::Incomplete { .. }) | Err(_) => {
                assert_eq!(buf, snapshot, "consumed nothing");
                return;
            }
        }
    }
}

/// Re-encodes `packet` and checks it decodes to itself.
pub fn round_trip(packet: &ringcast::protocol::Packet, version: Version) {
    let mut out = BytesMut::new();
    encode(packet, version, &mut out).expect("a decoded packet encodes");
    let len = out.len();
    match Codec::with_version(version, u32::MAX).decode(&mut out) {
        Ok(Decoded::Packet(again)) => assert_eq!(&again, packet),
        other => panic!("re-encoded packet decoded as {other:?}"),
    }
    assert!(
        out.is_empty(),
        "re-encoded frame of {len} bytes fully consumed"
    );
}
