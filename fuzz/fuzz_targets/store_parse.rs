//! Parses arbitrary bytes as the records of a store file, read in chunks of a size the first
//! byte picks.
#![no_main]

use libfuzzer_sys::fuzz_target;

mod store_common;

fuzz_target!(|data: &[u8]| {
    if let Some((&chunk, image)) = data.split_first() {
        store_common::parse_checked(image, chunk as usize);
    }
});
