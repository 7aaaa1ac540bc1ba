//! Takes HTTP requests off arbitrary bytes (`ringcast::net::http::take_request`): no panic,
//! a taken request removes exactly its head and body from the buffer, an incomplete or
//! refused one removes nothing, and the limits hold (431 past 8 KiB of head, bodies at most
//! 64 KiB).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringcast::net::http::{take_request, BODY_BYTES_MAX};

fuzz_target!(|data: &[u8]| {
    let mut buf = data.to_vec();
    loop {
        let before = buf.clone();
        match take_request(&mut buf) {
            Ok(Some(taken)) => {
                assert!(buf.len() < before.len(), "a request consumed its bytes");
                assert!(taken.request.body.len() <= BODY_BYTES_MAX);
                assert!(before.ends_with(&buf));
            }
            Ok(None) | Err(_) => {
                assert_eq!(buf, before, "consumed nothing");
                return;
            }
        }
    }
});
