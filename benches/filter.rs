//! Criterion benchmarks of the routing filter against `fastbloom`.
//!
//! Both sides are given the SII's SHA-256 digest (precomputed): ours takes
//! the 32 bytes, fastbloom takes its first 8 bytes as the u64 hash it would
//! otherwise compute (`contains_hash`/`insert_hash`), so neither hashes.
//! `fastbloom-same-m-k` is fastbloom at our blocked filter's size and k.
//! `ours-bitvec` answers the same lookups from the same bits stored in a
//! `BitVec<u32, Lsb0>` (the storage the project first considered).
//! 1M items at 1% target fp; keys are SHA-256 of counters (deterministic).

use bitvec::prelude::{BitVec, Lsb0};
use criterion::{criterion_group, criterion_main, Criterion};
use fastbloom::BloomFilter;
use glados::core::filter::{Filter, FilterHeader, FilterParams, Layout};
use sha2::{Digest, Sha256};
use std::hint::black_box;
use std::time::Duration;

const N: u64 = 1_000_000;
const FP: f64 = 0.01;

fn digest(tag: &str, i: u64) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(tag.as_bytes());
    h.update(i.to_le_bytes());
    h.finalize().into()
}

fn fb_hash(d: &[u8; 32]) -> u64 {
    u64::from_le_bytes(d[..8].try_into().unwrap())
}

fn new_filter(layout: Layout) -> Filter {
    let params = FilterParams::for_capacity(N, FP, layout).unwrap();
    Filter::new(FilterHeader {
        version: 1,
        created_at_ms: 0,
        params,
    })
    .unwrap()
}

fn bench(c: &mut Criterion) {
    let members: Vec<[u8; 32]> = (0..N).map(|i| digest("member", i)).collect();
    let probes: Vec<[u8; 32]> = (0..N).map(|i| digest("probe", i)).collect();
    let len = members.len();

    let mut g = c.benchmark_group("filter");
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);

    for (name, layout) in [("blocked", Layout::Blocked512), ("plain", Layout::Plain)] {
        let mut f = new_filter(layout);
        let mut i = 0usize;
        g.bench_function(format!("insert/ours-{name}"), |b| {
            b.iter(|| {
                i = (i + 1) % len;
                black_box(f.insert(&members[i]))
            })
        });
        for d in &members {
            f.insert(d);
        }
        let mut i = 0usize;
        g.bench_function(format!("lookup-miss/ours-{name}"), |b| {
            b.iter(|| {
                i = (i + 1) % len;
                black_box(f.contains(&probes[i]))
            })
        });
        let mut i = 0usize;
        g.bench_function(format!("lookup-hit/ours-{name}"), |b| {
            b.iter(|| {
                i = (i + 1) % len;
                black_box(f.contains(&members[i]))
            })
        });
        if layout == Layout::Blocked512 {
            let bv: BitVec<u32, Lsb0> = BitVec::from_vec(
                f.bitmap_bytes()
                    .chunks(4)
                    .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
            );
            let mut i = 0usize;
            g.bench_function("lookup-miss/ours-blocked-bitvec", |b| {
                b.iter(|| {
                    i = (i + 1) % len;
                    let d = &probes[i];
                    black_box(f.positions(d).all(|p| bv[p as usize]))
                })
            });
        }
    }

    let mut fb = BloomFilter::with_false_pos(FP)
        .seed(&42)
        .expected_items(N as usize);
    let mut i = 0usize;
    g.bench_function("insert/fastbloom", |b| {
        b.iter(|| {
            i = (i + 1) % len;
            black_box(fb.insert_hash(fb_hash(&members[i])))
        })
    });
    for d in &members {
        fb.insert_hash(fb_hash(d));
    }
    let mut i = 0usize;
    g.bench_function("lookup-miss/fastbloom", |b| {
        b.iter(|| {
            i = (i + 1) % len;
            black_box(fb.contains_hash(fb_hash(&probes[i])))
        })
    });
    let mut i = 0usize;
    g.bench_function("lookup-hit/fastbloom", |b| {
        b.iter(|| {
            i = (i + 1) % len;
            black_box(fb.contains_hash(fb_hash(&members[i])))
        })
    });
    // fastbloom with our blocked filter's size and k (same memory, same
    // number of probes per item).
    let same = FilterParams::for_capacity(N, FP, Layout::Blocked512).unwrap();
    let mut fb2 = BloomFilter::with_num_bits(same.bits as usize)
        .seed(&42)
        .hashes(u32::from(same.k));
    for d in &members {
        fb2.insert_hash(fb_hash(d));
    }
    let mut i = 0usize;
    g.bench_function("lookup-miss/fastbloom-same-m-k", |b| {
        b.iter(|| {
            i = (i + 1) % len;
            black_box(fb2.contains_hash(fb_hash(&probes[i])))
        })
    });
    let mut i = 0usize;
    g.bench_function("lookup-hit/fastbloom-same-m-k", |b| {
        b.iter(|| {
            i = (i + 1) % len;
            black_box(fb2.contains_hash(fb_hash(&members[i])))
        })
    });
    let mut i = 0usize;
    g.bench_function("sha256/one-sii", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            black_box(Sha256::digest(format!("+15551{i:07}").as_bytes()))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
