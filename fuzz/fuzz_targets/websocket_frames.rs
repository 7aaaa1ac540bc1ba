//! Decodes arbitrary bytes as client WebSocket frames (`ringcast::net::websocket::Decoder`),
//! once whole and once in pieces into a small output buffer (the first byte picks the piece
//! size), and checks both give the same control events and the same refusal, and the same
//! MQTT bytes (up to the refusal, where whole input may stop a little earlier): where the
//! socket splits the input must never matter.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringcast::net::websocket::{Decoder, Event, Violation};

/// What a decoder made of a stream: MQTT bytes, events, and the refusal that ended it if any.
type Outcome = (Vec<u8>, Vec<Event>, Option<Violation>);

fn decode(data: &[u8], piece: usize, out_len: usize) -> Outcome {
    let mut decoder = Decoder::new(1 << 12);
    let (mut bytes, mut events, mut pending) = (Vec::new(), Vec::new(), Vec::new());
    let mut out = vec![0u8; out_len];
    for chunk in data.chunks(piece) {
        pending.extend_from_slice(chunk);
        loop {
            let step = match decoder.decode(&pending, &mut out) {
                Ok(step) => step,
                Err(violation) => return (bytes, events, Some(violation)),
            };
            assert!(step.consumed <= pending.len() && step.written <= out.len());
            pending.drain(..step.consumed);
            bytes.extend_from_slice(&out[..step.written]);
            let progressed = step.consumed > 0 || step.event.is_some();
            events.extend(step.event);
            if !progressed {
                break;
            }
        }
    }
    (bytes, events, None)
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let whole = decode(rest, rest.len().max(1), 1 << 16);
    let pieces = decode(rest, usize::from(first % 16) + 1, usize::from(first / 16) + 1);
    assert_eq!((&whole.1, &whole.2), (&pieces.1, &pieces.2));
    match whole.2 {
        None => assert_eq!(whole.0, pieces.0),
        Some(_) => assert!(pieces.0.starts_with(&whole.0)),
    }
});
