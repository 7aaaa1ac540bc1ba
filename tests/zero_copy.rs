//! One publish to 1,000 subscribers spread over 4 shards allocates its payload once: the
//! broker's allocations during the fan-out stay far below one payload per subscriber.
//!
//! A counting global allocator sees every allocation in this process (broker and test). The
//! subscribers drain their sockets into a stack buffer, so during the measured window the only
//! large allocations would be the broker copying the payload.

mod common;

use common::*;
use ringcast::protocol::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{ErrorKind, Read};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

struct Counting;

static ALLOCATED: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATED.fetch_add(new_size, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const SUBSCRIBERS: usize = 1_000;
const PAYLOAD_BYTES: usize = 16 << 10;

#[test]
fn one_publish_to_1000_subscribers_on_4_shards_allocates_its_payload_once() {
    let broker = Broker::start(4);
    let mut subscribers: Vec<Raw> = (0..SUBSCRIBERS)
        .map(|i| {
            let mut sub = Raw::connect(broker.addr, &format!("zc-{i}"));
            assert_eq!(
                sub.subscribe("fan/out", QoS::AtMostOnce),
                vec![ReasonCode(0)]
            );
            sub
        })
        .collect();
    let mut publisher = Raw::connect(broker.addr, "zc-pub");
    let packet = publish_packet("fan/out", &[0xAB; PAYLOAD_BYTES], QoS::AtMostOnce, false, 0);
    let mut encoded = bytes::BytesMut::new();
    ringcast::protocol::codec::encode(&packet, Version::V311, &mut encoded).unwrap();
    let frame_len = encoded.len();

    let before = ALLOCATED.load(Ordering::Relaxed);
    publisher.send_bytes(&encoded);
    drain_all(&mut subscribers, frame_len);
    let allocated = ALLOCATED.load(Ordering::Relaxed) - before;

    let copy_per_subscriber = SUBSCRIBERS * PAYLOAD_BYTES;
    println!(
        "fan-out of {PAYLOAD_BYTES} B to {SUBSCRIBERS} subscribers allocated {allocated} B \
         (a copy per subscriber would be {copy_per_subscriber} B)"
    );
    // Headers, frames and mesh messages cost a few hundred bytes per subscriber at most.
    assert!(
        allocated < copy_per_subscriber / 8,
        "allocated {allocated} B: the payload was copied"
    );
}

/// Reads `frame_len` bytes from every subscriber into a stack buffer (no allocation), one
/// subscriber after the other: each read blocks until bytes come, and the broker meanwhile
/// writes to the others on its own.
fn drain_all(subscribers: &mut [Raw], frame_len: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut chunk = [0u8; 16 << 10];
    for sub in subscribers.iter_mut() {
        let mut got = 0;
        while got < frame_len {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "not every subscriber got the publish in 30 s"
            );
            sub.stream.set_read_timeout(Some(left)).unwrap();
            match sub.stream.read(&mut chunk) {
                Ok(0) => panic!("a subscriber was disconnected"),
                Ok(read) => got += read,
                // The broker's threads share this process; their signals interrupt reads.
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    panic!("not every subscriber got the publish in 30 s")
                }
                Err(e) => panic!("a subscriber's read failed: {e}"),
            }
        }
    }
}
