//! A cross-shard ring hop: `Bytes` sent from one glommio executor to another over a
//! `shared_channel` (the SPSC ring `channel_mesh` is built from), one per channel message
//! versus batches of 32 per message, as `src/mesh.rs` sends them. The producer uses `try_send`
//! and awaits `send` only when the ring is full. Each executor is pinned to its own CPU when
//! there are two.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use glommio::channels::shared_channel;
use glommio::{LocalExecutorBuilder, Placement, ResourceType};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// Slots in the ring: the fewest a ring between shards holds by default (`config::MeshConfig`).
const RING_CAPACITY: usize = 1024;

fn placement(cpu: usize) -> Placement {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus >= 2 {
        Placement::Fixed(cpu)
    } else {
        Placement::Unbound
    }
}

/// Time for `messages` `Bytes` to cross from one executor to the other in batches of `batch`.
fn hop(messages: u64, batch: usize) -> Duration {
    let (tx, rx) = shared_channel::new_bounded::<Vec<Bytes>>(RING_CAPACITY);
    let ready = Arc::new(Barrier::new(2));
    let payload = Bytes::from(vec![7u8; 64]);
    let batches = messages.div_ceil(batch as u64);
    let ready_tx = ready.clone();
    let producer = LocalExecutorBuilder::new(placement(0))
        .io_memory(64 << 10)
        .spawn(move || async move {
            let tx = tx.connect().await;
            ready_tx.wait();
            let start = Instant::now();
            for _ in 0..batches {
                let msg: Vec<Bytes> = (0..batch).map(|_| payload.clone()).collect();
                if let Err(glommio::GlommioError::WouldBlock(ResourceType::Channel(msg))) =
                    tx.try_send(msg)
                {
                    tx.send(msg).await.expect("consumer alive");
                }
            }
            start
        })
        .expect("producer executor starts");
    let consumer = LocalExecutorBuilder::new(placement(1))
        .io_memory(64 << 10)
        .spawn(move || async move {
            let rx = rx.connect().await;
            ready.wait();
            let mut got = 0u64;
            while got < batches {
                let msg = rx.recv().await.expect("producer alive");
                std::hint::black_box(&msg);
                got += 1;
            }
            Instant::now()
        })
        .expect("consumer executor starts");
    let start = producer.join().expect("producer runs");
    let end = consumer.join().expect("consumer runs");
    end.saturating_duration_since(start)
}

fn ring(c: &mut Criterion) {
    let mut group = c.benchmark_group("ring_hop");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(3));
    for batch in [1usize, 32] {
        group.throughput(Throughput::Elements(1));
        group.bench_with_input(
            BenchmarkId::new("bytes_per_msg", batch),
            &batch,
            |b, &batch| b.iter_custom(|iters| hop(iters, batch)),
        );
    }
    group.finish();
}

criterion_group!(benches, ring);
criterion_main!(benches);
