//! Micro-benchmarks of the hot pure functions: the value envelope codec and routing.
//! `cargo bench --bench micro`

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use shardbox::engine::{codec, router};

fn envelope(c: &mut Criterion) {
    let mut g = c.benchmark_group("envelope");
    for size in [100usize, 4096, 65536] {
        let payload = vec![7u8; size];
        let encoded = codec::encode(
            42,
            Some(1_700_000_000_000),
            Some("application/json"),
            &payload,
        );
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::new("encode", size), &payload, |b, p| {
            b.iter(|| {
                codec::encode(
                    black_box(42),
                    Some(1),
                    Some("application/json"),
                    black_box(p),
                )
            })
        });
        g.bench_with_input(BenchmarkId::new("decode+crc", size), &encoded, |b, e| {
            b.iter(|| codec::decode(black_box(e)).map(|(h, p)| (h.revision, p.len())))
        });
        g.bench_with_input(BenchmarkId::new("decode_header", size), &encoded, |b, e| {
            b.iter(|| codec::decode_header(black_box(e)).map(|h| h.revision))
        });
    }
    g.finish();
}

fn routing(c: &mut Criterion) {
    let mut g = c.benchmark_group("routing");
    for len in [16usize, 64, 1024] {
        let key = vec![b'k'; len];
        g.bench_with_input(BenchmarkId::new("shard_for", len), &key, |b, k| {
            b.iter(|| router::shard_for(black_box(k), 0x5eed, 8))
        });
    }
    g.finish();
}

criterion_group!(benches, envelope, routing);
criterion_main!(benches);
