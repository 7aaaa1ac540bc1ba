//! Randomized decoding: 200,000 mutated and random byte strings per version. No panic, no
//! desync (nothing consumed on error or Incomplete, exactly one frame on success), and a
//! decoded packet re-encodes to bytes that decode to the same packet.

use bytes::BytesMut;
use ringcast::protocol::codec::{encode, samples, Codec, Decoded};
use ringcast::protocol::{Packet, Version};

const CASES_PER_VERSION: usize = 200_000;
const MAX_PACKET: u32 = 512;

/// xorshift64*: small, deterministic, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

fn corpus(version: Version) -> Vec<Vec<u8>> {
    samples::all(version)
        .iter()
        .map(|packet| {
            let mut out = BytesMut::new();
            encode(packet, version, &mut out).expect("samples encode");
            out.to_vec()
        })
        .collect()
}

/// One mutated or random input.
fn input(rng: &mut Rng, corpus: &[Vec<u8>]) -> Vec<u8> {
    if rng.below(10) == 0 {
        let len = rng.below(40);
        return (0..len).map(|_| rng.byte()).collect();
    }
    let mut bytes = corpus[rng.below(corpus.len())].clone();
    for _ in 0..1 + rng.below(3) {
        mutate(rng, &mut bytes, corpus);
    }
    bytes
}

fn mutate(rng: &mut Rng, bytes: &mut Vec<u8>, corpus: &[Vec<u8>]) {
    let at = rng.below(bytes.len() + 1);
    match rng.below(7) {
        0 if at < bytes.len() => bytes[at] ^= 1 << rng.below(8),
        1 if at < bytes.len() => bytes[at] = rng.byte(),
        2 => bytes.insert(at, rng.byte()),
        3 if at < bytes.len() => {
            bytes.remove(at);
        }
        4 => bytes.truncate(at),
        5 => bytes.extend_from_slice(&corpus[rng.below(corpus.len())]),
        // Fix the remaining length so a body mutation reaches the packet decoder.
        _ => fix_remaining_length(bytes),
    }
}

fn fix_remaining_length(bytes: &mut [u8]) {
    if bytes.len() >= 2 && bytes.len() - 2 < 128 {
        bytes[1] = (bytes.len() - 2) as u8;
    }
}

/// The frame length the fixed header announces, parsed independently of the codec.
fn frame_len(bytes: &[u8]) -> usize {
    let mut value = 0usize;
    for (i, byte) in bytes[1..].iter().enumerate().take(4) {
        value |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return 1 + i + 1 + value;
        }
    }
    panic!("a packet was decoded from a bad fixed header");
}

/// Decodes packets from `bytes` until it runs out, checking every step.
fn run(mut codec: Codec, bytes: &[u8]) -> usize {
    let mut buf = BytesMut::from(bytes);
    let mut packets = 0;
    loop {
        let before = buf.clone();
        match codec.decode(&mut buf) {
            Ok(Decoded::Packet(packet)) => {
                assert_eq!(
                    before.len() - buf.len(),
                    frame_len(&before),
                    "consumed one frame"
                );
                let version = codec.version().expect("a decoded packet fixes the version");
                check_round_trip(&packet, version);
                packets += 1;
            }
            Ok(Decoded::Incomplete { needed }) => {
                assert!(needed > 0);
                assert_eq!(buf, before, "Incomplete consumed nothing");
                return packets;
            }
            Err(_) => {
                assert_eq!(buf, before, "an error consumed nothing");
                return packets;
            }
        }
    }
}

fn check_round_trip(packet: &Packet, version: Version) {
    let mut out = BytesMut::new();
    encode(packet, version, &mut out).expect("a decoded packet encodes");
    let mut codec = Codec::with_version(version, u32::MAX);
    match codec.decode(&mut out) {
        Ok(Decoded::Packet(again)) => assert_eq!(&again, packet),
        other => panic!("re-encoded {packet:?} decoded as {other:?}"),
    }
    assert!(out.is_empty());
}

fn fuzz_version(version: Version, seed: u64) {
    let corpus = corpus(version);
    let mut rng = Rng(seed);
    let mut decoded = 0;
    for case in 0..CASES_PER_VERSION {
        let bytes = input(&mut rng, &corpus);
        // Every eighth case starts a fresh connection, where CONNECT must come first.
        let codec = if case % 8 == 0 {
            Codec::new(MAX_PACKET)
        } else {
            Codec::with_version(version, MAX_PACKET)
        };
        decoded += run(codec, &bytes);
    }
    // Guards against a mutator that only ever produces garbage.
    assert!(
        decoded > CASES_PER_VERSION / 10,
        "only {decoded} packets decoded"
    );
}

#[test]
fn random_inputs_v311() {
    fuzz_version(Version::V311, 0x9E37_79B9_7F4A_7C15);
}

#[test]
fn random_inputs_v5() {
    fuzz_version(Version::V5, 0xD1B5_4A32_D192_ED03);
}
