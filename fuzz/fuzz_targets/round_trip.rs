//! A new connection (version chosen by CONNECT), then every packet decoded is re-encoded and
//! must decode to itself; the first byte also picks a fixed version for the rest of the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringcast::protocol::codec::Codec;
use ringcast::protocol::Version;

mod common;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let codec = match selector % 3 {
        0 => Codec::new(1 << 16),
        1 => Codec::with_version(Version::V311, 1 << 16),
        _ => Codec::with_version(Version::V5, 1 << 16),
    };
    common::decode_all(codec, rest);
});
