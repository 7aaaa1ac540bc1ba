//! Builds the fuzz targets' shared checks on stable (cargo-fuzz itself needs nightly) and runs
//! them over the encoded samples, so the fuzz code cannot rot unnoticed.

#[path = "../fuzz/fuzz_targets/common.rs"]
mod common;

use bytes::BytesMut;
use ringcast::protocol::codec::{encode, samples, Codec};
use ringcast::protocol::Version;

#[test]
fn fuzz_checks_pass_on_every_sample_stream() {
    for version in [Version::V311, Version::V5] {
        let mut stream = BytesMut::new();
        for packet in samples::all(version) {
            encode(&packet, version, &mut stream).expect("samples encode");
        }
        common::decode_all(Codec::with_version(version, 1 << 16), &stream);
        // A fresh connection reads the leading CONNECT and then the rest.
        common::decode_all(Codec::new(1 << 16), &stream);
    }
}
