//! Decodes arbitrary bytes on a connection fixed to MQTT 3.1.1.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringcast::protocol::codec::Codec;
use ringcast::protocol::Version;

mod common;

fuzz_target!(|data: &[u8]| {
    common::decode_all(Codec::with_version(Version::V311, 1 << 16), data);
});
