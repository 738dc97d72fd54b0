//! Routing-filter speed and accuracy, ours against `fastbloom`, runnable
//! natively and under WASI (Node's `node:wasi`) — see scripts/bench-filter.sh.
//!
//! `filter_bench speed [items]` prints ns/op medians; `filter_bench fp
//! [items]` prints bits per element and measured false-positive rates;
//! `filter_bench sizing [items]` prints, for each k, the fewest bits per
//! SII at which a blocked filter meets the target (the k trade-off).
//!
//! What is compared (the same work for both):
//! - `*-digest` rows: given the SII's SHA-256 (precomputed). Ours takes the
//!   32-byte digest; fastbloom gets its first 8 bytes as the u64 it would
//!   otherwise compute (`contains_hash` / `insert_hash`), so neither hashes.
//! - `*-string` rows: given the SII string. Ours = SHA-256 + lookup (what the
//!   worker does); fastbloom = its default SipHash-1-3 over the string. Not
//!   the same hash — it shows what a cryptographic hash costs end to end.
//!
//! Keys are SHA-256 of counters: deterministic, no entropy, no clock input.

use fastbloom::BloomFilter;
use glados::core::filter::{Filter, FilterHeader, FilterParams, Layout};
use sha2::{Digest, Sha256};
use std::hint::black_box;
use std::time::Instant;

fn digest(tag: &str, i: u64) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(tag.as_bytes());
    h.update(i.to_le_bytes());
    h.finalize().into()
}

fn sii(tag: &str, i: u64) -> String {
    format!("+1555{tag}{i:07}")
}

fn fb_hash(d: &[u8; 32]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_le_bytes(b)
}

fn ours(params: FilterParams) -> Filter {
    Filter::new(FilterHeader {
        version: 1,
        created_at_ms: 0,
        params,
    })
    .expect("valid params")
}

fn fastbloom(fp: f64, n: u64) -> BloomFilter {
    BloomFilter::with_false_pos(fp)
        .seed(&42)
        .expected_items(n as usize)
}

/// Median of `rounds` timings of `f` over `ops` operations, in ns/op.
fn median_ns(rounds: usize, ops: usize, mut f: impl FnMut() -> usize) -> f64 {
    let mut v: Vec<f64> = (0..rounds)
        .map(|_| {
            let t = Instant::now();
            black_box(f());
            t.elapsed().as_nanos() as f64 / ops as f64
        })
        .collect();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn speed(n: u64) {
    let fp = 0.01;
    let rounds = 7;
    let members: Vec<[u8; 32]> = (0..n).map(|i| digest("member", i)).collect();
    let probes: Vec<[u8; 32]> = (0..n).map(|i| digest("probe", i)).collect();
    let probe_strings: Vec<String> = (0..n.min(200_000)).map(|i| sii("p", i)).collect();
    let member_strings: Vec<String> = (0..n).map(|i| sii("m", i)).collect();
    let ops = members.len();
    let sops = probe_strings.len();

    let mut rows: Vec<(String, f64)> = Vec::new();
    for layout in [Layout::Blocked512, Layout::Plain] {
        let p = FilterParams::for_capacity(n, fp, layout).expect("sizing");
        let name = match layout {
            Layout::Blocked512 => "ours-blocked",
            _ => "ours-plain",
        };
        let mut f = ours(p);
        rows.push((
            format!("insert {name}-digest ({} bits, k={})", p.bits, p.k),
            median_ns(rounds, ops, || {
                let mut c = 0;
                for d in &members {
                    c += f.insert(d).len();
                }
                c
            }),
        ));
        rows.push((
            format!("lookup-miss {name}-digest"),
            median_ns(rounds, ops, || {
                probes.iter().filter(|d| f.contains(d)).count()
            }),
        ));
        rows.push((
            format!("lookup-hit {name}-digest"),
            median_ns(rounds, ops, || {
                members.iter().filter(|d| f.contains(d)).count()
            }),
        ));
        let mut fs = ours(p);
        for s in &member_strings {
            fs.insert(&Sha256::digest(s.as_bytes()).into());
        }
        rows.push((
            format!("lookup-miss {name}-string (sha256)"),
            median_ns(rounds, sops, || {
                probe_strings
                    .iter()
                    .filter(|s| fs.contains(&Sha256::digest(s.as_bytes()).into()))
                    .count()
            }),
        ));
    }

    // fastbloom with our blocked filter's size and k: the same memory and
    // the same number of probes per item.
    let same = FilterParams::for_capacity(n, fp, Layout::Blocked512).expect("sizing");
    let mut b = BloomFilter::with_num_bits(same.bits as usize)
        .seed(&42)
        .hashes(u32::from(same.k));
    rows.push((
        format!("insert fastbloom-digest ({} bits, k={})", same.bits, same.k),
        median_ns(rounds, ops, || {
            let mut c = 0;
            for d in &members {
                c += usize::from(b.insert_hash(fb_hash(d)));
            }
            c
        }),
    ));
    rows.push((
        "lookup-miss fastbloom-digest (same m, k)".into(),
        median_ns(rounds, ops, || {
            probes
                .iter()
                .filter(|d| b.contains_hash(fb_hash(d)))
                .count()
        }),
    ));
    rows.push((
        "lookup-hit fastbloom-digest (same m, k)".into(),
        median_ns(rounds, ops, || {
            members
                .iter()
                .filter(|d| b.contains_hash(fb_hash(d)))
                .count()
        }),
    ));

    let mut b = fastbloom(fp, n);
    rows.push((
        format!(
            "insert fastbloom-digest ({} bits, k={})",
            b.num_bits(),
            b.num_hashes()
        ),
        median_ns(rounds, ops, || {
            let mut c = 0;
            for d in &members {
                c += usize::from(b.insert_hash(fb_hash(d)));
            }
            c
        }),
    ));
    rows.push((
        "lookup-miss fastbloom-digest".into(),
        median_ns(rounds, ops, || {
            probes
                .iter()
                .filter(|d| b.contains_hash(fb_hash(d)))
                .count()
        }),
    ));
    rows.push((
        "lookup-hit fastbloom-digest".into(),
        median_ns(rounds, ops, || {
            members
                .iter()
                .filter(|d| b.contains_hash(fb_hash(d)))
                .count()
        }),
    ));
    let mut bs = fastbloom(fp, n);
    for s in &member_strings {
        bs.insert(s.as_str());
    }
    rows.push((
        "lookup-miss fastbloom-string (sip13)".into(),
        median_ns(rounds, sops, || {
            probe_strings
                .iter()
                .filter(|s| bs.contains(s.as_str()))
                .count()
        }),
    ));

    println!("# speed: {n} items, target fp {fp}, median of {rounds} rounds");
    println!("{:<52} {:>10}", "operation", "ns/op");
    for (name, ns) in rows {
        println!("{name:<52} {ns:>10.1}");
    }
}

fn fp_table(n: u64) {
    let non_members: Vec<[u8; 32]> = (0..1_000_000).map(|i| digest("non-member", i)).collect();
    let members: Vec<[u8; 32]> = (0..n).map(|i| digest("member", i)).collect();
    let measure = |f: &Filter| {
        non_members.iter().filter(|d| f.contains(d)).count() as f64 / non_members.len() as f64
    };
    println!(
        "# accuracy: {n} items inserted, fp measured on {} non-members",
        non_members.len()
    );
    println!(
        "{:<9} {:<22} {:>11} {:>3} {:>9} {:>11} {:>11} {:>9}",
        "target", "scheme", "m (bits)", "k", "bits/el", "predicted", "measured", "meas/tgt"
    );
    for target in [0.01f64, 0.001] {
        let optimum = 1.44 * (1.0 / target).log2();
        println!(
            "{target:<9} {:<22} {:>11} {:>3} {optimum:>9.2} {:>11} {:>11} {:>9}",
            "bloom optimum 1.44lg", "-", "-", "-", "-", "-"
        );
        let mut schemes: Vec<(&str, FilterParams)> = Vec::new();
        for (name, layout) in [
            ("ours blocked512", Layout::Blocked512),
            ("ours plain", Layout::Plain),
        ] {
            schemes.push((
                name,
                FilterParams::for_capacity(n, target, layout).expect("sizing"),
            ));
        }
        schemes.push((
            "draft k=1 (low bits)",
            FilterParams::draft_for_capacity(n, target).expect("sizing"),
        ));
        for (name, p) in schemes {
            let mut f = ours(p);
            for d in &members {
                f.insert(d);
            }
            let m = measure(&f);
            println!(
                "{target:<9} {name:<22} {:>11} {:>3} {:>9.2} {:>11.6} {m:>11.6} {:>9.3}",
                p.bits,
                p.k,
                p.bits as f64 / n as f64,
                p.predicted_fp(n),
                m / target
            );
        }
        let mut b = fastbloom(target, n);
        for d in &members {
            b.insert_hash(fb_hash(d));
        }
        let m = non_members
            .iter()
            .filter(|d| b.contains_hash(fb_hash(d)))
            .count() as f64
            / non_members.len() as f64;
        println!(
            "{target:<9} {:<22} {:>11} {:>3} {:>9.2} {:>11.6} {m:>11.6} {:>9.3}",
            "fastbloom",
            b.num_bits(),
            b.num_hashes(),
            b.num_bits() as f64 / n as f64,
            b.expected_false_pos(n as usize),
            m / target
        );
    }
}

/// For each k: the fewest 512-bit blocks whose predicted fp meets the
/// target, as bits per SII — what a smaller k costs in memory.
fn sizing(n: u64) {
    println!("# sizing: {n} items, blocked512, fewest bits per SII for each k");
    for target in [0.01f64, 0.001] {
        let chosen = FilterParams::for_capacity(n, target, Layout::Blocked512).expect("sizing");
        println!(
            "target {target}: for_capacity -> {} blocks, {:.3} bits/SII, k={}, \
             max partitions 2^{}; bloom optimum {:.3}",
            chosen.blocks(),
            chosen.bits as f64 / n as f64,
            chosen.k,
            chosen.max_partition_bits(),
            1.44 * (1.0 / target).log2()
        );
        println!("{:>3} {:>10} {:>9}", "k", "blocks", "bits/SII");
        for k in 1..=16u8 {
            let fits = |b: u64| FilterParams::blocked(b, k).predicted_fp(n) <= target;
            let (mut lo, mut hi) = (0u64, 1u64 << 31);
            if !fits(hi) {
                continue;
            }
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                if fits(mid) {
                    hi = mid
                } else {
                    lo = mid
                }
            }
            println!("{k:>3} {hi:>10} {:>9.3}", (hi * 512) as f64 / n as f64);
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let what = args.get(1).map(String::as_str).unwrap_or("all");
    let n: u64 = args
        .get(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    if what == "speed" || what == "all" {
        speed(n);
    }
    if what == "fp" || what == "all" {
        fp_table(n);
    }
    if what == "sizing" || what == "all" {
        sizing(n);
    }
}
