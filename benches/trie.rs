//! Subscription trie: match throughput with 10k and 100k filters, and insert cost, beside a
//! linear scan with `TopicFilter::matches` as the naive baseline.
//!
//! Filters are a mix over the tree `site/{0..99}/dev/{0..99}/{metric}`: mostly exact, some
//! with `+` at the device or site level, some ending in `#`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringcast::protocol::topic::{TopicFilter, TopicName};
use ringcast::shard::trie::Trie;

const METRICS: [&str; 10] = [
    "temp", "hum", "pres", "co2", "volt", "amp", "rssi", "lux", "noise", "wind",
];

/// Topics matched per iteration batch; cycled so caches see a spread of paths.
const TOPICS: usize = 1024;

/// A xorshift64 generator, so the workload is the same on every run.
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, bound: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % bound as u64) as usize
    }
}

fn random_filter(rng: &mut XorShift) -> String {
    let (site, dev) = (rng.below(100), rng.below(100));
    let metric = METRICS[rng.below(METRICS.len())];
    match rng.below(20) {
        0..=13 => format!("site/{site}/dev/{dev}/{metric}"),
        14..=16 => format!("site/{site}/dev/+/{metric}"),
        17 => format!("site/+/dev/{dev}/{metric}"),
        18 => format!("site/{site}/dev/{dev}/#"),
        _ => format!("site/{site}/#"),
    }
}

fn random_topic(rng: &mut XorShift) -> String {
    let (site, dev) = (rng.below(100), rng.below(100));
    format!(
        "site/{site}/dev/{dev}/{}",
        METRICS[rng.below(METRICS.len())]
    )
}

fn filters(count: usize) -> Vec<String> {
    let mut rng = XorShift(0x2545_F491_4F6C_DD1D);
    (0..count).map(|_| random_filter(&mut rng)).collect()
}

fn topics() -> Vec<String> {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    (0..TOPICS).map(|_| random_topic(&mut rng)).collect()
}

fn build(filters: &[String]) -> Trie<u32, u8> {
    let mut trie = Trie::new();
    for (key, filter) in (0u32..).zip(filters) {
        trie.insert(filter, key, 0);
    }
    trie
}

fn bench_match(c: &mut Criterion) {
    let topics = topics();
    let mut group = c.benchmark_group("trie_match");
    group.throughput(Throughput::Elements(TOPICS as u64));
    for count in [10_000, 100_000] {
        let trie = build(&filters(count));
        group.bench_with_input(
            BenchmarkId::new("for_each_match", count),
            &trie,
            |b, trie| {
                b.iter(|| {
                    let mut matched = 0usize;
                    for topic in &topics {
                        trie.for_each_match(topic, |key, _| matched += *key as usize & 1);
                    }
                    black_box(matched)
                })
            },
        );
        group.bench_with_input(BenchmarkId::new("has_match", count), &trie, |b, trie| {
            b.iter(|| topics.iter().filter(|topic| trie.has_match(topic)).count())
        });
    }
    group.finish();
}

fn bench_linear_baseline(c: &mut Criterion) {
    let parsed: Vec<TopicFilter> = filters(10_000)
        .iter()
        .map(|filter| TopicFilter::parse(filter).expect("generated filters are valid"))
        .collect();
    let topics: Vec<TopicName> = topics()[..64]
        .iter()
        .map(|topic| TopicName::parse(topic).expect("generated topics are valid"))
        .collect();
    let mut group = c.benchmark_group("linear_scan_match");
    group.throughput(Throughput::Elements(topics.len() as u64));
    group.bench_function("10000", |b| {
        b.iter(|| {
            let hits = topics
                .iter()
                .map(|t| parsed.iter().filter(|f| f.matches(t)).count());
            black_box(hits.sum::<usize>())
        })
    });
    group.finish();
}

fn bench_insert(c: &mut Criterion) {
    let mut group = c.benchmark_group("trie_insert");
    for count in [10_000, 100_000] {
        let filters = filters(count);
        group.throughput(Throughput::Elements(count as u64));
        group.bench_with_input(
            BenchmarkId::from_parameter(count),
            &filters,
            |b, filters| b.iter(|| build(filters).len()),
        );
    }
    group.finish();
}

criterion_group!(benches, bench_match, bench_linear_baseline, bench_insert);
criterion_main!(benches);
