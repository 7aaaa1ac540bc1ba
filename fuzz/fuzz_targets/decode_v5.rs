//! Decodes arbitrary bytes on a connection fixed to MQTT 5.0.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringcast::protocol::codec::Codec;
use ringcast::protocol::Version;

mod common;

fuzz_target!(|data: &[u8]| {
    common::decode_all(Codec::with_version(Version::V5, 1 << 16), data);
});
