use super::*;
use crate::core::filter::{Filter, FilterHeader};
use proptest::prelude::*;

fn digest(tag: &str, i: u64) -> [u8; 32] {
    Sha256::digest(format!("{tag}{i}").as_bytes()).into()
}

fn filter(params: FilterParams, n: u64, tag: &str) -> Filter {
    let mut f = Filter::new(FilterHeader {
        version: 3,
        created_at_ms: 1,
        params,
    })
    .unwrap();
    for i in 0..n {
        f.insert(&digest(tag, i));
    }
    f
}

/// Every layout the routing table must cut, small and large.
fn layouts() -> Vec<FilterParams> {
    vec![
        FilterParams::blocked(64, 7),
        FilterParams::blocked(48, 5),
        FilterParams::blocked(3, 4),
        FilterParams::blocked(1, 2),
        FilterParams::plain(20, 5),
        FilterParams::plain(10, 3),
        FilterParams::plain(4, 2),
        FilterParams::draft_interop(16),
        FilterParams::draft_interop(5),
    ]
}

fn sections(f: &Filter, r: u8) -> Vec<Section> {
    let bitmap = f.bitmap_bytes();
    (0..1u32 << r)
        .map(|p| {
            let mut s = Section::new("peer", 3, *f.params(), r, p);
            s.apply_bitmap(0, &bitmap);
            s
        })
        .collect()
}

#[test]
fn one_section_answers_for_the_whole_filter_for_every_layout_and_r() {
    for params in layouts() {
        let f = filter(params, 40, "m");
        for r in [0u8, 1, 3, 6, 9] {
            let secs = sections(&f, r);
            let k = keying(&params);
            for i in 0..300 {
                let d = if i < 40 {
                    digest("m", i)
                } else {
                    digest("q", i)
                };
                let p = key_of(&d, r, k) as usize;
                assert_eq!(
                    secs[p].may_hold(&d),
                    Some(f.contains(&d)),
                    "{params:?} r={r} digest {i}"
                );
            }
            // Canonical counts add up to the filter's exact ones.
            let total: u64 = secs.iter().map(Section::canonical_ones).sum();
            assert_eq!(total, f.count_ones(), "{params:?} r={r}");
        }
    }
}

#[test]
fn partitions_of_bit_are_exactly_the_sections_holding_it() {
    for params in layouts() {
        for r in [0u8, 2, 5, 8] {
            let shapes: Vec<Shape> = (0..1u32 << r).map(|p| Shape::of(&params, r, p)).collect();
            let step = (params.bits / 700).max(1);
            let mut bit = 0;
            while bit < params.bits {
                let holders: Vec<u32> = (0..1u32 << r)
                    .filter(|&p| shapes[p as usize].local(bit).is_some())
                    .collect();
                let set = partitions_of_bit(&params, r, bit).unwrap();
                assert_eq!(
                    set.iter().collect::<Vec<_>>(),
                    holders,
                    "{params:?} r={r} bit {bit}"
                );
                for &p in &holders {
                    assert!(set.contains(p));
                    let sh = shapes[p as usize];
                    assert_eq!(sh.global(sh.local(bit).unwrap()), bit);
                }
                bit += step;
            }
            assert_eq!(partitions_of_bit(&params, r, params.bits), None);
        }
    }
}

#[test]
fn additions_applied_bit_by_bit_equal_the_bitmap_and_count_once() {
    for params in layouts() {
        let base = filter(params, 20, "a");
        let mut grown = base.clone();
        let mut added = Vec::new();
        for i in 0..30 {
            added.extend_from_slice(grown.insert(&digest("b", i)).as_slice());
        }
        let r = 4;
        let mut secs = sections(&base, r);
        let mut new = 0;
        for &bit in &added {
            for p in partitions_of_bit(&params, r, bit).unwrap().iter() {
                new += u64::from(secs[p as usize].set(bit) == Some(true));
            }
        }
        assert_eq!(base.count_ones() + new, grown.count_ones(), "{params:?}");
        assert_eq!(secs, sections(&grown, r), "{params:?}");
        // Applying the same additions again changes and counts nothing.
        for s in secs.iter_mut() {
            assert_eq!(s.set_all(&added), 0);
        }
    }
}

#[test]
fn values_round_trip_dense_and_sparse() {
    let big = filter(FilterParams::blocked(1 << 12, 7), 20_000, "d");
    let empty = filter(FilterParams::blocked(1 << 14, 7), 0, "e");
    let draft = filter(FilterParams::draft_interop(18), 500, "g");
    let r = 3;
    for p in 0..8u32 {
        let mut v = RoutingValue {
            r,
            p,
            written_ms: 1_700_000_000_123,
            sections: Vec::new(),
        };
        for (id, f) in [("gp-big", &big), ("gp-empty", &empty), ("gp-draft", &draft)] {
            let mut s = Section::new(id, 9, *f.params(), r, p);
            s.apply_bitmap(0, &f.bitmap_bytes());
            v.sections.push(s);
        }
        let bytes = v.encode();
        assert_eq!(&bytes[..4], b"GLR1");
        let back = RoutingValue::decode(&bytes).unwrap();
        assert_eq!(back.r, r);
        assert_eq!(back.p, p);
        assert_eq!(back.written_ms, v.written_ms);
        for (a, b) in back.sections.iter().zip(&v.sections) {
            assert_eq!(a.peer, b.peer);
            assert_eq!(a.version, b.version);
            assert_eq!(a.params, b.params);
            assert_eq!(a.shape, b.shape);
            assert_eq!(a.bits.count_ones(), b.bits.count_ones());
            for l in 0..a.shape.len().min(5000) {
                assert_eq!(a.bits.get(l), b.bits.get(l));
            }
        }
        // The empty filter's section is a few bytes, not 2^14 blocks / 8.
        let empty_only = RoutingValue {
            sections: vec![v.sections[1].clone()],
            ..v.clone()
        };
        assert!(
            empty_only.encode().len() < 100,
            "{}",
            empty_only.encode().len()
        );
    }
}

#[test]
fn decode_refuses_corruption() {
    let f = filter(FilterParams::blocked(64, 7), 30, "c");
    let mut s = Section::new("gp-b", 1, *f.params(), 2, 1);
    s.apply_bitmap(0, &f.bitmap_bytes());
    let good = RoutingValue {
        r: 2,
        p: 1,
        written_ms: 5,
        sections: vec![s],
    }
    .encode();
    assert!(RoutingValue::decode(&good).is_ok());
    let mut flipped = good.clone();
    flipped[30] ^= 1;
    assert_eq!(
        RoutingValue::decode(&flipped),
        Err(ValueError::ChecksumMismatch)
    );
    assert_eq!(
        RoutingValue::decode(&good[..20]),
        Err(ValueError::Truncated)
    );
    let mut magic = good.clone();
    magic[0] = b'X';
    assert_eq!(RoutingValue::decode(&magic), Err(ValueError::BadMagic));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400), fix in any::<bool>()) {
        let mut b = bytes;
        if fix && b.len() > 8 {
            if b.len() > 4 { b[..4].copy_from_slice(b"GLR1"); }
            let n = b.len() - 8;
            let s = checksum(&b[..n]);
            b[n..].copy_from_slice(&s);
        }
        if let Ok(v) = RoutingValue::decode(&b) {
            let again = RoutingValue::decode(&v.encode()).unwrap();
            prop_assert_eq!(again.sections.len(), v.sections.len());
        }
    }

    #[test]
    fn keys_stay_below_two_to_the_r(seed in any::<u64>(), r in 0u8..=24) {
        let d = digest("k", seed);
        prop_assert!(u64::from(prefix_key(&d, r)) < 1u64 << r);
        prop_assert!(u64::from(residue_key(&d, r)) < 1u64 << r);
    }
}

#[test]
fn fuzz_seed_values_decode() {
    for bytes in [
        &include_bytes!("../../../fuzz/corpus/routing/two-sections.bin")[..],
        &include_bytes!("../../../fuzz/corpus/routing/sparse.bin")[..],
        &include_bytes!("../../../fuzz/corpus/routing/empty.bin")[..],
    ] {
        let v = RoutingValue::decode(bytes).unwrap();
        assert_eq!(
            RoutingValue::decode(&v.encode()).unwrap().sections.len(),
            v.sections.len()
        );
    }
}

#[test]
fn value_estimate_takes_the_smaller_encoding_per_peer() {
    // A 1 GB-bit filter at 2^10 partitions: 128 KiB dense; empty, a few bytes.
    let full = value_bytes_estimate([(1 << 30, 1 << 29)], 10);
    assert_eq!(full, 16 + (1 << 17) + 64);
    let empty = value_bytes_estimate([(1 << 30, 0)], 10);
    assert_eq!(empty, 16 + 8 + 64);
    // A small filter's section is at least one block, with that block's
    // share of the set bits.
    assert_eq!(value_bytes_estimate([(1 << 12, 2048)], 10), 16 + 64 + 64);
    assert_eq!(value_bytes_estimate([(1 << 12, 8)], 10), 16 + (3 + 8) + 64);
    // Peers add up.
    assert_eq!(
        value_bytes_estimate([(1 << 30, 1 << 29), (1 << 30, 0)], 10),
        full + empty - 16
    );
}
