use super::*;
use crate::core::Problem;
use proptest::prelude::*;
use sha2::{Digest, Sha256};

fn sha(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

/// Deterministic stand-in for SII digests: SHA-256 of a tag and a counter.
fn digest(tag: &str, i: u64) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(tag.as_bytes());
    h.update(i.to_le_bytes());
    h.finalize().into()
}

fn header(params: FilterParams) -> FilterHeader {
    FilterHeader {
        version: 7,
        created_at_ms: 1_700_000_000_000,
        params,
    }
}

/// A blocked filter of 2^log2_bits bits (a power-of-two block count).
fn blocked(log2_bits: u8, k: u8) -> FilterParams {
    FilterParams::blocked(1 << (log2_bits - BLOCK_LOG2), k)
}

fn plain(log2_bits: u8, k: u8) -> FilterParams {
    FilterParams::plain(log2_bits, k)
}

const ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

// ---- draft interop: "the lowest N bits are selected" ----

#[test]
fn interop_abc_low_16_bits_sets_byte_693_bit_5() {
    let d = sha(b"abc");
    assert_eq!(hex(&d), ABC);
    let mut f = Filter::new(header(FilterParams::draft_interop(16))).unwrap();
    // digest ends ...15ad: low 16 bits = 0x15ad = 5549 = 8*693 + 5.
    assert_eq!(f.positions(&d).collect::<Vec<_>>(), vec![5549]);
    assert_eq!(f.insert(&d).as_slice(), &[5549]);
    let bytes = f.bitmap_bytes();
    assert_eq!(bytes.len(), (1 << 16) / 8);
    assert_eq!(bytes[693], 0x20, "LSB-first: bit 5 is mask 0x20");
    assert_eq!(bytes.iter().filter(|b| **b != 0).count(), 1);
    assert!(f.contains(&d));
}

#[test]
fn interop_vectors_at_several_sizes() {
    let abc = sha(b"abc"); // ...f2 00 15 ad
    let empty = sha(b""); // ...78 52 b8 55
    assert_eq!(
        hex(&empty),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    let cases: &[(&[u8; 32], u8, u64)] = &[
        (&abc, 3, 0b101),        // 0xad & 7
        (&abc, 8, 0xad),         //
        (&abc, 26, 0x020_015ad), // 0xf20015ad & (2^26-1)
        (&empty, 9, 0x055),      // 0xb855 & 0x1ff
        (&empty, 13, 0x1855),    // 0xb855 & 0x1fff
        (&empty, 16, 0xb855),    //
        (&empty, 40, 0x1b_7852_b855 & ((1 << 40) - 1)),
    ];
    for &(d, n, want) in cases {
        let p = FilterParams::draft_interop(n);
        assert_eq!(p.positions_of(d).idx[0], want, "N = {n}");
    }
    // Byte/bit placement at N = 26 (8 MiB bitmap).
    let mut f = Filter::new(header(FilterParams::draft_interop(26))).unwrap();
    f.insert(&abc);
    let bytes = f.bitmap_bytes();
    assert_eq!(0x20015ad, 33_559_981);
    assert_eq!(bytes[33_559_981 / 8], 1 << (33_559_981 % 8));
}

#[test]
fn interop_n3_is_one_byte() {
    let mut f = Filter::new(header(FilterParams::draft_interop(3))).unwrap();
    f.insert(&sha(b"abc"));
    assert_eq!(f.bitmap_bytes(), vec![0x20]);
    let back = Filter::from_bytes(&f.to_bytes()).unwrap();
    assert_eq!(back, f);
}

// ---- params ----

#[test]
fn params_validation() {
    assert!(FilterParams::draft_interop(3).validate().is_ok());
    assert_eq!(
        FilterParams::draft_interop(2).validate(),
        Err(FilterError::Log2BitsOutOfRange(2))
    );
    assert_eq!(
        FilterParams::draft_interop(41).validate(),
        Err(FilterError::Log2BitsOutOfRange(41))
    );
    assert_eq!(plain(20, 0).validate(), Err(FilterError::KOutOfRange(0)));
    assert_eq!(plain(20, 17).validate(), Err(FilterError::KOutOfRange(17)));
    assert_eq!(
        FilterParams::blocked(0, 4).validate(),
        Err(FilterError::BlockedBits(0))
    );
    assert!(blocked(9, 16).validate().is_ok());
    assert!(FilterParams::blocked(19_531, 7).validate().is_ok());
    assert_eq!(
        FilterParams::blocked((1 << 31) + 1, 7).validate(),
        Err(FilterError::BlockedBits(((1 << 31) + 1) * 512))
    );
    // Hand-built params whose two size fields disagree.
    let mut odd = FilterParams::blocked(3, 7);
    odd.bits += 8;
    assert_eq!(odd.validate(), Err(FilterError::BlockedBits(3 * 512 + 8)));
    odd.bits = 3 * 512;
    odd.log2_bits = 12;
    assert_eq!(
        odd.validate(),
        Err(FilterError::SizeMismatch {
            log2_bits: 12,
            bits: 1536
        })
    );
    let mut p = plain(20, 3);
    p.bits = 3 << 18;
    assert_eq!(
        p.validate(),
        Err(FilterError::SizeMismatch {
            log2_bits: 20,
            bits: 3 << 18
        })
    );
    let mut low = FilterParams::draft_interop(20);
    low.k = 2;
    assert_eq!(low.validate(), Err(FilterError::LowHashNeedsPlainK1));
    low.k = 1;
    low.layout = Layout::Blocked512;
    assert_eq!(low.validate(), Err(FilterError::LowHashNeedsPlainK1));
}

#[test]
fn for_capacity_plain_picks_power_of_two_and_smallest_k() {
    // 1M items at 1%: plain needs 9.6 Mbit -> 2^24 (16.8 bits/SII), where
    // already k = 4 reaches 1% ((1-e^{-4/16.8})^4 ≈ 0.0024).
    let p = FilterParams::for_capacity(1_000_000, 0.01, Layout::Plain).unwrap();
    assert_eq!((p.log2_bits, p.bits), (24, 1 << 24));
    assert!(p.predicted_fp(1_000_000) <= 0.01);
    assert!(
        FilterParams { k: p.k - 1, ..p }.predicted_fp(1_000_000) > 0.01,
        "k = {} is the smallest that meets the target",
        p.k
    );
    assert!((1..=MAX_K).all(|k| plain(23, k).predicted_fp(1_000_000) > 0.01));
}

#[test]
fn for_capacity_blocked_sizes_by_whole_blocks_near_the_bloom_optimum() {
    let n = 1_000_000;
    let b = FilterParams::for_capacity(n, 0.01, Layout::Blocked512).unwrap();
    assert_eq!(
        (b.layout, b.hash),
        (Layout::Blocked512, HashScheme::Sha256High)
    );
    assert!(b.validate().is_ok());
    assert!(b.predicted_fp(n) <= 0.01);
    // The Bloom optimum is 9.59 bits/SII; blocking costs a little more.
    let per_sii = b.bits as f64 / n as f64;
    assert!((9.6..10.6).contains(&per_sii), "{per_sii} bits/SII");
    // Minimal: 1% fewer blocks miss the target whatever k.
    let fewer = b.blocks() * 99 / 100;
    assert!((1..=MAX_K).all(|k| FilterParams::blocked(fewer, k).predicted_fp(n) > 0.01));
    // Smallest k meeting the target at that size.
    assert!(FilterParams { k: b.k - 1, ..b }.predicted_fp(n) > 0.01);
    // Rounded so it still cuts into 2^(⌊log2 blocks⌋ - 8) partitions.
    let floor_log2 = 63 - b.blocks().leading_zeros() as u8;
    assert!(b.max_partition_bits() >= floor_log2 - PARTITION_SLACK_LOG2);
    // Tiny and huge.
    assert_eq!(
        FilterParams::for_capacity(1, 0.01, Layout::Blocked512).unwrap(),
        FilterParams::blocked(1, 1)
    );
    let big = FilterParams::for_capacity(5_000_000_000, 0.01, Layout::Blocked512).unwrap();
    assert!(big.bits as f64 / 5e9 < 10.6);
    assert!(big.max_partition_bits() >= 15, "{big:?}");
    assert_eq!(
        FilterParams::for_capacity(10, 0.0, Layout::Plain),
        Err(FilterError::InvalidTarget)
    );
    assert_eq!(
        FilterParams::for_capacity(10, f64::NAN, Layout::Plain),
        Err(FilterError::InvalidTarget)
    );
    assert!(FilterParams::for_capacity(u64::MAX, 0.01, Layout::Plain).is_err());
    // Empty filters are still valid filters.
    assert!(FilterParams::for_capacity(0, 0.01, Layout::Blocked512)
        .unwrap()
        .validate()
        .is_ok());
}

#[test]
fn new_refuses_what_cannot_be_allocated_instead_of_aborting() {
    // 2^40 bits = 128 GiB: refused (or, on a huge machine, allocated).
    match Filter::new(header(plain(40, 3))) {
        Err(FilterError::TooLarge { bits }) if bits == 1 << 40 => {}
        Ok(f) => assert_eq!(f.local_bits(), 1 << 40),
        Err(e) => panic!("unexpected {e}"),
    }
}

// ---- insert / contains / positions ----

#[test]
fn inserted_items_are_found_and_positions_match_additions() {
    for params in [
        blocked(16, 7),
        plain(16, 7),
        plain(20, 5),
        FilterParams::draft_interop(16),
    ] {
        let mut f = Filter::new(header(params)).unwrap();
        let d = digest("x", 1);
        assert!(!f.contains(&d));
        let add = f.insert(&d);
        let mut pos: Vec<u64> = f.positions(&d).collect();
        assert_eq!(pos.len(), usize::from(params.k));
        pos.sort_unstable();
        pos.dedup();
        let mut got = add.as_slice().to_vec();
        got.sort_unstable();
        assert_eq!(got, pos, "{params:?}");
        assert_eq!(f.count_ones(), pos.len() as u64);
        assert!(f.contains(&d));
        assert!(f.insert(&d).is_empty(), "second insert flips nothing");
    }
}

#[test]
fn blocked_positions_share_one_block_from_the_top_bits() {
    let p = blocked(20, 8);
    let d = digest("b", 3);
    let block = u64::from(partition_of(&d, 11));
    for pos in Filter::new(header(p)).unwrap().positions(&d) {
        assert_eq!(pos >> 9, block);
    }
}

#[test]
fn blocked_non_power_of_two_places_digests_by_prefix_fraction() {
    // block = ⌊prefix64 · B / 2^64⌋: ordered by prefix, every block used,
    // and blocks p·c..(p+1)·c hold exactly the digests with top P bits p.
    let b = 3 * 16u64;
    let f = Filter::new(header(FilterParams::blocked(b, 6))).unwrap();
    let mut seen = vec![0u32; b as usize];
    for i in 0..5_000 {
        let d = digest("o", i);
        let pos: Vec<u64> = f.positions(&d).collect();
        let block = pos[0] >> 9;
        assert!(pos.iter().all(|p| p >> 9 == block));
        let x = u64::from_be_bytes(d[..8].try_into().unwrap());
        assert_eq!(u128::from(block), (u128::from(x) * u128::from(b)) >> 64);
        assert_eq!(block / 3, u64::from(partition_of(&d, 4)));
        seen[block as usize] += 1;
    }
    // ~104 per block; a block never chosen would show a mapping bug.
    assert!(seen.iter().all(|&c| (50..170).contains(&c)), "{seen:?}");
    assert_eq!(FilterParams::blocked(b, 6).max_partition_bits(), 4);
    assert_eq!(FilterParams::blocked(19_531, 6).max_partition_bits(), 0);
    assert_eq!(f.partition(5, 0).unwrap_err().status(), 422);
}

#[test]
fn plain_positions_share_prefix_region() {
    let p = plain(22, 9);
    let d = digest("p", 3);
    let region = u64::from(partition_of(&d, 6));
    let pos: Vec<u64> = Filter::new(header(p)).unwrap().positions(&d).collect();
    assert!(pos.iter().all(|x| x >> 16 == region));
    let mut uniq = pos.clone();
    uniq.sort_unstable();
    uniq.dedup();
    assert_eq!(
        uniq.len(),
        9,
        "double hashing with odd step gives distinct positions"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn mul_high_is_the_exact_high_word(x in any::<u64>(), n in 1u64..(1 << 32)) {
        let want = ((u128::from(x) * u128::from(n)) >> 64) as u64;
        prop_assert_eq!(params::mul_high(x, n), want);
        prop_assert!(want < n);
    }

    #[test]
    fn no_false_negatives(seeds in proptest::collection::vec(any::<u64>(), 1..200),
                          which in 0usize..4, k in 1u8..=16) {
        let params = match which {
            0 => blocked(12, k),
            1 => plain(12, k),
            2 => FilterParams::blocked(7, k),
            _ => FilterParams::draft_interop(12),
        };
        let mut f = Filter::new(header(params)).unwrap();
        for s in &seeds { f.insert(&digest("m", *s)); }
        for s in &seeds { prop_assert!(f.contains(&digest("m", *s))); }
    }

    #[test]
    fn additions_replayed_on_a_copy_give_identical_bits(
        seeds in proptest::collection::vec(any::<u64>(), 0..300), which in 0usize..4) {
        let params = [blocked(13, 6), plain(17, 4), FilterParams::draft_interop(10),
                      FilterParams::blocked(37, 6)][which];
        let mut owner = Filter::new(header(params)).unwrap();
        // The subscriber got the snapshot when it was half built.
        let half = seeds.len() / 2;
        for s in &seeds[..half] { owner.insert(&digest("a", *s)); }
        let mut peer = Filter::from_bytes(&owner.to_bytes()).unwrap();
        let mut log = Vec::new();
        for s in &seeds[half..] { log.extend_from_slice(owner.insert(&digest("a", *s)).as_slice()); }
        // Ship them as an encoded batch.
        let batch = decode_additions(&encode_additions(7, &log)).unwrap();
        let newly = peer.apply(&batch.indices).unwrap();
        prop_assert_eq!(newly, log.len());
        prop_assert_eq!(&peer, &owner);
        prop_assert!(peer.diff(&owner).unwrap().is_empty());
    }

    #[test]
    fn partition_lookup_equals_whole_lookup(
        seeds in proptest::collection::vec(any::<u64>(), 0..300),
        probes in proptest::collection::vec(any::<u64>(), 1..100),
        which in 0usize..4, p_bits in 0u8..=4) {
        // Power-of-two sizes, and 48 = 3·2^4 / 80 = 5·2^4 blocks.
        let params = [blocked(14, 5), plain(20, 5), FilterParams::blocked(48, 5),
                      FilterParams::blocked(80, 8)][which];
        let mut whole = Filter::new(header(params)).unwrap();
        for s in &seeds { whole.insert(&digest("w", *s)); }
        let parts: Vec<Filter> = (0..1u32 << p_bits)
            .map(|i| whole.partition(p_bits, i).unwrap()).collect();
        prop_assert_eq!(parts.iter().map(|p| p.count_ones()).sum::<u64>(), whole.count_ones());
        for d in seeds.iter().map(|s| digest("w", *s)).chain(probes.iter().map(|s| digest("q", *s))) {
            let p = partition_of(&d, p_bits) as usize;
            prop_assert_eq!(parts[p].contains(&d), whole.contains(&d));
            prop_assert!(parts[p].covers(&d));
        }
        // Inserting into the partition flips the same global bits.
        let mut parts2 = parts.clone();
        for d in probes.iter().map(|s| digest("q", *s)) {
            let p = partition_of(&d, p_bits) as usize;
            let add = whole.insert(&d);
            prop_assert_eq!(parts2[p].insert(&d), add);
            // Additions of the whole route to the partition by index.
            for &i in &add {
                prop_assert_eq!(params.partition_of_bit(i, p_bits), Some(p as u32));
            }
        }
        for (i, p) in parts2.iter().enumerate() {
            prop_assert_eq!(p, &whole.partition(p_bits, i as u32).unwrap());
            // Round-trip through the wire keeps the partition identity.
            prop_assert_eq!(&Filter::from_bytes(&p.to_bytes()).unwrap(), p);
        }
    }
}

#[test]
fn partition_limits() {
    let f = Filter::new(header(blocked(14, 5))).unwrap();
    assert_eq!(f.params().max_partition_bits(), 5);
    assert_eq!(
        f.partition(6, 0),
        Err(FilterError::PartitionUnsupported { bits: 6, max: 5 })
    );
    assert_eq!(
        f.partition(2, 4),
        Err(FilterError::PartitionOutOfRange { bits: 2, index: 4 })
    );
    let p = f.partition(2, 1).unwrap();
    assert_eq!(p.first_bit(), 1 << 12);
    // Sub-partition of a partition: only its own descendants.
    assert!(p.partition(3, 2).is_ok());
    assert!(p.partition(3, 4).is_err());
    assert!(p.partition(1, 0).is_err());
    // The draft's low-bit scheme is cut by bit-index range (≥ 2^16 bits).
    let low = Filter::new(header(FilterParams::draft_interop(20))).unwrap();
    assert_eq!(low.params().max_partition_bits(), 4);
    assert!(low.partition(5, 0).is_err());
    assert!(low.partition(4, 15).is_ok());
    assert_eq!(plain(16, 3).max_partition_bits(), 0);
    assert_eq!(plain(20, 3).max_partition_bits(), 4);
}

#[test]
fn partition_ignores_foreign_digests_and_refuses_foreign_bits() {
    let whole = Filter::new(header(blocked(12, 4))).unwrap();
    let mut part = whole.partition(1, 0).unwrap();
    let foreign = (0..)
        .map(|i| digest("f", i))
        .find(|d| partition_of(d, 1) == 1)
        .unwrap();
    assert!(!part.covers(&foreign));
    assert!(part.insert(&foreign).is_empty());
    assert_eq!(part.count_ones(), 0);
    assert_eq!(
        part.apply(&[1 << 11]),
        Err(FilterError::BitOutOfRange {
            index: 1 << 11,
            first: 0,
            len: 1 << 11
        })
    );
}

// ---- apply / diff ----

#[test]
fn apply_is_bounds_checked_and_all_or_nothing() {
    let mut f = Filter::new(header(plain(10, 2))).unwrap();
    assert_eq!(f.apply(&[1, 2, 2]), Ok(2));
    let err = f.apply(&[5, 1024]).unwrap_err();
    assert_eq!(
        err,
        FilterError::BitOutOfRange {
            index: 1024,
            first: 0,
            len: 1024
        }
    );
    assert_eq!(err.slug(), "invalid-filter");
    assert_eq!(err.status(), 422);
    assert_eq!(f.count_ones(), 2, "bit 5 not set: nothing applied on error");
    assert_eq!(f.apply(&[u64::MAX]).map_err(|e| e.status()), Err(422));
}

#[test]
fn diff_lists_missing_bits_and_requires_same_params() {
    let mut a = Filter::new(header(plain(10, 2))).unwrap();
    let mut b = a.clone();
    a.apply(&[3, 900]).unwrap();
    b.apply(&[3, 64, 1023]).unwrap();
    assert_eq!(a.diff(&b), Ok(vec![64, 1023]));
    assert_eq!(b.diff(&a), Ok(vec![900]));
    let c = Filter::new(header(plain(11, 2))).unwrap();
    assert_eq!(a.diff(&c), Err(FilterError::ParamsMismatch));
}

// ---- inspector views: single bits, fill map, local fp ----

#[test]
fn bit_reads_set_bits_and_refuses_bits_not_held() {
    let mut f = Filter::new(header(plain(10, 2))).unwrap();
    f.apply(&[3, 1023]).unwrap();
    assert_eq!(f.bit(3), Some(true));
    assert_eq!(f.bit(4), Some(false));
    assert_eq!(f.bit(1023), Some(true));
    assert_eq!(f.bit(1024), None, "beyond the filter");
    let mut whole = Filter::new(header(blocked(12, 3))).unwrap();
    whole.apply(&[10, 4000]).unwrap();
    let second_half = whole.partition(1, 1).unwrap();
    assert_eq!(second_half.bit(10), None, "held by the other partition");
    assert_eq!(second_half.bit(4000), Some(true));
}

#[test]
fn fill_map_counts_ones_per_whole_block_group() {
    // 8 blocks of 512 bits.
    let mut f = Filter::new(header(blocked(12, 3))).unwrap();
    f.apply(&[0, 1, 511, 512, 4095]).unwrap();
    let per_block = f.fill_map(100);
    assert_eq!(
        per_block.group_bits, 512,
        "one block per group when room allows"
    );
    assert_eq!(per_block.ones, vec![3, 1, 0, 0, 0, 0, 0, 1]);
    let pairs = f.fill_map(4);
    assert_eq!(pairs.group_bits, 1024);
    assert_eq!(pairs.ones, vec![4, 0, 0, 1]);
    let three = f.fill_map(3);
    assert_eq!(three.group_bits, 1536, "whole blocks, never split");
    assert_eq!(three.ones, vec![4, 0, 1]);
    assert_eq!(f.fill_map(0).ones, vec![5], "0 groups means one");
    assert_eq!(per_block.ones.iter().sum::<u64>(), f.count_ones());
    // A partition's groups start at its first bit.
    let p = f.partition(1, 1).unwrap();
    let pm = p.fill_map(100);
    assert_eq!(pm.first_bit, 2048);
    assert_eq!(pm.ones, vec![0, 0, 0, 1]);
    // Plain: whole words; a tiny filter is one short group.
    let mut tiny = Filter::new(header(FilterParams::draft_interop(3))).unwrap();
    tiny.apply(&[2, 7]).unwrap();
    let tm = tiny.fill_map(10);
    assert_eq!((tm.group_bits, tm.ones), (64, vec![2]));
}

#[test]
fn fp_rate_at_is_the_fill_of_the_digests_block_to_the_k() {
    let mut f = Filter::new(header(blocked(14, 4))).unwrap();
    for i in 0..300 {
        f.insert(&digest("member", i));
    }
    let d = digest("probe", 1);
    let first = f.positions(&d).next().unwrap();
    let block = first / 512;
    let ones = (block * 512..block * 512 + 512)
        .filter(|&i| f.bit(i) == Some(true))
        .count();
    let expected = (ones as f64 / 512.0).powi(4);
    assert!((f.fp_rate_at(&d) - expected).abs() < 1e-15);
    // Averaged over many digests, the local rate is the filter's estimate.
    let n = 20_000;
    let mean: f64 = (0..n).map(|i| f.fp_rate_at(&digest("x", i))).sum::<f64>() / n as f64;
    assert!((mean / f.estimated_fp_rate() - 1.0).abs() < 0.05, "{mean}");
    // Draft interop: one group, the whole filter: fill^1.
    let mut draft = Filter::new(header(FilterParams::draft_interop(12))).unwrap();
    for i in 0..100 {
        draft.insert(&digest("member", i));
    }
    assert!((draft.fp_rate_at(&d) - draft.fill_ratio()).abs() < 1e-15);
    // A partition that does not cover the digest never says "may be".
    let other = (0..2u32).find(|&i| i != partition_of(&d, 1)).unwrap();
    assert_eq!(f.partition(1, other).unwrap().fp_rate_at(&d), 0.0);
}

// ---- estimates and measured false positives ----

/// Measured fp on 100k non-members, for a filter filled to ~1%.
fn measured_fp(f: &Filter) -> f64 {
    let n = 100_000;
    let hits = (0..n)
        .filter(|i| f.contains(&digest("non-member", *i)))
        .count();
    hits as f64 / n as f64
}

#[test]
fn measured_fp_matches_estimates_within_15_percent() {
    // Sizes chosen so each lands near 1% (≈1,000 expected hits of 100k).
    for (params, n) in [
        (plain(17, 7), 13_600u64),
        (blocked(17, 7), 12_000),
        (FilterParams::blocked(200, 7), 9_200),
        (plain(20, 7), 108_000),
        (FilterParams::draft_interop(20), 10_500),
    ] {
        let mut f = Filter::new(header(params)).unwrap();
        for i in 0..n {
            f.insert(&digest("member", i));
        }
        let measured = measured_fp(&f);
        let from_bits = f.estimated_fp_rate();
        let predicted = params.predicted_fp(n);
        assert!(
            (measured / from_bits - 1.0).abs() < 0.15,
            "{params:?}: measured {measured} vs from bits {from_bits}"
        );
        assert!(
            (measured / predicted - 1.0).abs() < 0.15,
            "{params:?}: measured {measured} vs predicted {predicted}"
        );
        let est = f.estimated_items();
        assert!(
            (est / n as f64 - 1.0).abs() < 0.03,
            "{params:?}: estimated {est} items, inserted {n}"
        );
        assert!((f.fill_ratio() - f.count_ones() as f64 / f.local_bits() as f64).abs() < 1e-12);
    }
}

#[test]
fn for_capacity_meets_its_target_when_measured() {
    for layout in [Layout::Plain, Layout::Blocked512] {
        let n = 20_000;
        let p = FilterParams::for_capacity(n, 0.01, layout).unwrap();
        let mut f = Filter::new(header(p)).unwrap();
        for i in 0..n {
            f.insert(&digest("member", i));
        }
        let m = measured_fp(&f);
        assert!(m <= 0.01 * 1.15, "{p:?}: measured {m}");
    }
}

// ---- wire format ----

#[test]
fn wire_round_trip_and_golden_header() {
    let mut f = Filter::new(header(blocked(10, 3))).unwrap();
    f.insert(&digest("g", 0));
    let bytes = f.to_bytes();
    assert_eq!(bytes.len(), 48 + 128 + 8);
    assert_eq!(&bytes[..4], b"GLF2");
    assert_eq!(
        &bytes[4..12],
        &[2, 1, 1, 3, 0, 0, 0, 0],
        "format, layout, hash, k, P, reserved"
    );
    assert_eq!(&bytes[12..20], &7u64.to_be_bytes());
    assert_eq!(&bytes[20..28], &1_700_000_000_000u64.to_be_bytes());
    assert_eq!(&bytes[28..32], &[0, 0, 0, 0]);
    assert_eq!(&bytes[32..40], &1024u64.to_be_bytes(), "m, whole filter");
    assert_eq!(&bytes[40..48], &1024u64.to_be_bytes(), "bits held here");
    assert_eq!(&bytes[48..176], f.bitmap_bytes().as_slice());
    let back = Filter::from_bytes(&bytes).unwrap();
    assert_eq!(back, f);
    assert_eq!(back.count_ones(), f.count_ones());
}

#[test]
fn wire_round_trips_a_non_power_of_two_blocked_partition() {
    // 48 = 3·2^4 blocks: cuts into up to 16 partitions of 3 blocks.
    let mut f = Filter::new(header(FilterParams::blocked(48, 7))).unwrap();
    for i in 0..300 {
        f.insert(&digest("n", i));
    }
    let back = Filter::from_bytes(&f.to_bytes()).unwrap();
    assert_eq!(back, f);
    assert_eq!(back.params().log2_bits, 15, "⌈log2 24576⌉");
    let part = f.partition(4, 13).unwrap();
    let bytes = part.to_bytes();
    assert_eq!(&bytes[32..40], &(48u64 * 512).to_be_bytes());
    assert_eq!(&bytes[40..48], &(3u64 * 512).to_be_bytes());
    assert_eq!(bytes.len(), 48 + 3 * 64 + 8);
    assert_eq!(Filter::from_bytes(&bytes).unwrap(), part);
    assert_eq!(part.first_bit(), 13 * 3 * 512);
}

#[test]
fn wire_refuses_specific_malformations() {
    let mut f = Filter::new(header(plain(12, 3))).unwrap();
    f.insert(&digest("g", 1));
    let good = f.to_bytes();
    let resum = |mut b: Vec<u8>| {
        let n = b.len() - 8;
        let s: [u8; 32] = Sha256::digest(&b[..n]).into();
        b[n..].copy_from_slice(&s[..8]);
        b
    };
    let mutate = |at: usize, v: u8| {
        let mut b = good.clone();
        b[at] = v;
        resum(b)
    };
    let with_u64 = |at: usize, v: u64| {
        let mut b = good.clone();
        b[at..at + 8].copy_from_slice(&v.to_be_bytes());
        resum(b)
    };
    assert_eq!(
        Filter::from_bytes(&[]),
        Err(FilterError::Truncated { needed: 57, got: 0 })
    );
    assert_eq!(
        Filter::from_bytes(&mutate(0, b'X')),
        Err(FilterError::BadMagic)
    );
    assert_eq!(
        Filter::from_bytes(&mutate(3, b'1')),
        Err(FilterError::UnsupportedFormat(1)),
        "GLF1 snapshots (log2 size byte) are refused, not misread"
    );
    assert_eq!(
        Filter::from_bytes(&mutate(4, 4)),
        Err(FilterError::UnsupportedFormat(4))
    );
    assert_eq!(
        Filter::from_bytes(&mutate(5, 9)),
        Err(FilterError::UnknownLayout(9))
    );
    assert_eq!(
        Filter::from_bytes(&mutate(6, 9)),
        Err(FilterError::UnknownHashScheme(9))
    );
    assert_eq!(
        Filter::from_bytes(&mutate(7, 0)),
        Err(FilterError::KOutOfRange(0))
    );
    assert!(matches!(
        Filter::from_bytes(&mutate(8, 1)),
        Err(FilterError::PartitionUnsupported { .. })
    ));
    assert_eq!(
        Filter::from_bytes(&mutate(10, 1)),
        Err(FilterError::ReservedNonZero)
    );
    // m: not a power of two for a plain filter; beyond 2^40; zero.
    assert_eq!(
        Filter::from_bytes(&with_u64(32, 3 << 12)),
        Err(FilterError::SizeMismatch {
            log2_bits: 14,
            bits: 3 << 12
        })
    );
    assert_eq!(
        Filter::from_bytes(&with_u64(32, 1 << 41)),
        Err(FilterError::Log2BitsOutOfRange(41))
    );
    assert_eq!(
        Filter::from_bytes(&with_u64(32, 0)),
        Err(FilterError::Log2BitsOutOfRange(0))
    );
    // Plain 2^12 re-labelled blocked: 4096 = 8 blocks is a valid size,
    // but a larger m claims more bits than the bytes present.
    assert!(Filter::from_bytes(&mutate(5, 1)).is_ok());
    assert!(matches!(
        Filter::from_bytes(&with_u64(32, 1 << 40)),
        Err(FilterError::LengthMismatch { .. })
    ));
    assert_eq!(
        Filter::from_bytes(&resum({
            let mut b = mutate(5, 1);
            b[32..40].copy_from_slice(&4100u64.to_be_bytes());
            b
        })),
        Err(FilterError::BlockedBits(4100))
    );
    // Declared bit count held lies.
    assert!(matches!(
        Filter::from_bytes(&with_u64(40, 2048)),
        Err(FilterError::LengthMismatch { .. })
    ));
    // Extra payload byte.
    let mut long = good[..good.len() - 8].to_vec();
    long.push(0);
    long.extend_from_slice(&[0; 8]);
    assert!(matches!(
        Filter::from_bytes(&resum(long)),
        Err(FilterError::LengthMismatch { .. })
    ));
    // A flipped payload bit without a new checksum.
    let mut flipped = good.clone();
    flipped[60] ^= 1;
    assert_eq!(
        Filter::from_bytes(&flipped),
        Err(FilterError::ChecksumMismatch)
    );
    assert_eq!(FilterError::ChecksumMismatch.status(), 400);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn decoder_never_panics_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = Filter::from_bytes(&bytes);
        let _ = decode_additions(&bytes);
    }

    #[test]
    fn decoder_refuses_every_single_byte_mutation(at in 0usize..184, x in 1u8..=255,
                                                  odd in any::<bool>()) {
        // 2^10 bits, or 3 blocks (1536 bits: 40 more bytes, same header).
        let params = if odd { FilterParams::blocked(3, 3) } else { blocked(10, 3) };
        let mut f = Filter::new(header(params)).unwrap();
        f.insert(&digest("g", 0));
        let mut b = f.to_bytes();
        b[at] ^= x;
        prop_assert!(Filter::from_bytes(&b).is_err());
    }

    #[test]
    fn decoder_refuses_truncation(cut in 0usize..184) {
        let f = Filter::new(header(blocked(10, 3))).unwrap();
        let b = f.to_bytes();
        prop_assert!(Filter::from_bytes(&b[..cut]).is_err());
    }

    #[test]
    fn additions_round_trip(version in any::<u64>(),
                            idx in proptest::collection::vec(0u64..(1 << 40), 0..100)) {
        let batch = decode_additions(&encode_additions(version, &idx)).unwrap();
        let mut want = idx.clone();
        want.sort_unstable();
        want.dedup();
        prop_assert_eq!(batch.version, version);
        prop_assert_eq!(batch.indices, want);
    }

    #[test]
    fn additions_decoder_never_panics_on_mutations(
        idx in proptest::collection::vec(0u64..(1 << 40), 0..20), at in any::<usize>(), x in any::<u8>()) {
        let mut b = encode_additions(1, &idx);
        let n = b.len();
        b[at % n] ^= x;
        if let Ok(batch) = decode_additions(&b) {
            prop_assert!(batch.indices.windows(2).all(|w| w[0] < w[1]));
        }
    }
}

#[test]
fn additions_decoder_refusals() {
    let mut b = encode_additions(1, &[5, 9]);
    assert_eq!(decode_additions(&b).unwrap().indices, vec![5, 9]);
    // Zero gap = duplicate.
    let dup = [b"GLA1".as_slice(), &[1], &1u64.to_be_bytes(), &[2, 5, 0]].concat();
    assert_eq!(
        decode_additions(&dup),
        Err(FilterError::MalformedAdditions(
            "indices not strictly ascending"
        ))
    );
    // Count larger than bytes present (must not allocate it).
    let big = [
        b"GLA1".as_slice(),
        &[1],
        &1u64.to_be_bytes(),
        &[0xff, 0xff, 0xff, 0xff, 0x0f],
    ]
    .concat();
    assert!(matches!(
        decode_additions(&big),
        Err(FilterError::LengthMismatch { .. })
    ));
    // Trailing byte.
    b.push(0);
    assert!(matches!(
        decode_additions(&b),
        Err(FilterError::LengthMismatch { .. })
    ));
    // Overlong varint (0x85 0x00 encodes 5 in two bytes).
    let overlong = [
        b"GLA1".as_slice(),
        &[1],
        &1u64.to_be_bytes(),
        &[1, 0x85, 0x00],
    ]
    .concat();
    assert_eq!(
        decode_additions(&overlong),
        Err(FilterError::MalformedAdditions("overlong varint"))
    );
    // Index beyond 2^40.
    let huge = encode_additions(1, &[1 << 41]);
    assert_eq!(
        decode_additions(&huge),
        Err(FilterError::MalformedAdditions("index beyond 2^40"))
    );
}

#[test]
fn draft_for_capacity_needs_about_n_over_eps_bits() {
    // 1M SIIs at 1%: 1-(1-2^-N)^1e6 <= 0.01 first holds at N = 27 (134 bits/SII).
    let p = FilterParams::draft_for_capacity(1_000_000, 0.01).unwrap();
    assert_eq!(p, FilterParams::draft_interop(27));
    assert!(FilterParams::draft_interop(26).predicted_fp(1_000_000) > 0.01);
    assert!(FilterParams::draft_for_capacity(u64::MAX, 0.01).is_err());
}

/// Vectors computed by an independent (Python) implementation of the
/// documented schemes, for SHA-256("abc") = ba7816bf 8f01cfea 414140de ...
#[test]
fn default_scheme_vectors() {
    let d = sha(b"abc");
    // Blocked512, N = 20: block = top 11 bits of 0xba7816bf = 1491; slots =
    // 9-bit slices of the little-endian u64 at bytes 8..16, then 16..24.
    let b = Filter::new(header(blocked(20, 8))).unwrap();
    assert_eq!(
        b.positions(&d).collect::<Vec<_>>(),
        vec![763713, 763424, 763792, 763835, 763621, 763669, 763532, 763824]
    );
    assert!(b.positions(&d).all(|p| p >> 9 == 1491));
    // Plain, N = 20: region = top 4 bits (11), h1 = 0x2322ae5d,
    // h2 = 0xde404141, offsets (h1 + j·h2) mod 2^16.
    let p = Filter::new(header(plain(20, 4))).unwrap();
    assert_eq!(
        p.positions(&d).collect::<Vec<_>>(),
        vec![765533, 782238, 733407, 750112]
    );
    // Blocked512, 1000 blocks: block = (0xba7816bf8f01cfea · 1000) >> 64
    // = 728; same in-block slots as above.
    let b = Filter::new(header(FilterParams::blocked(1000, 8))).unwrap();
    assert_eq!(
        b.positions(&d).collect::<Vec<_>>(),
        vec![373057, 372768, 373136, 373179, 372965, 373013, 372876, 373168]
    );
    // 19,531 blocks (1M SIIs at ~10 bits): block 14226.
    let b = Filter::new(header(FilterParams::blocked(19_531, 2))).unwrap();
    assert_eq!(b.positions(&d).collect::<Vec<_>>(), vec![7284033, 7283744]);
}

#[test]
fn compact_wire_is_sparse_when_that_is_smaller_and_decodes_to_the_same_filter() {
    // 2^20 bits (128 KiB dense) with a few SIIs: a few bytes sparse.
    let mut f = Filter::new(header(blocked(20, 7))).unwrap();
    for i in 0..10 {
        f.insert(&digest("s", i));
    }
    let compact = f.to_bytes_compact();
    assert_eq!(compact[4], 3, "format 3: sparse");
    assert!(compact.len() < 48 + 8 + 300, "{} bytes", compact.len());
    assert_eq!(Filter::from_bytes(&compact).unwrap(), f);
    // Full enough, the dense form wins and is format 2.
    let mut dense = Filter::new(header(blocked(10, 7))).unwrap();
    for i in 0..200 {
        dense.insert(&digest("d", i));
    }
    assert_eq!(dense.to_bytes_compact(), dense.to_bytes());
    // A partition, and the draft's layout cut by bit-index range.
    let part = f.partition(3, 5).unwrap();
    assert_eq!(Filter::from_bytes(&part.to_bytes_compact()).unwrap(), part);
    let mut low = Filter::new(header(FilterParams::draft_interop(20))).unwrap();
    for i in 0..50 {
        low.insert(&digest("l", i));
    }
    for i in 0..16 {
        let p = low.partition(4, i).unwrap();
        assert_eq!(Filter::from_bytes(&p.to_bytes_compact()).unwrap(), p);
    }
    let parts: Vec<Filter> = (0..16).map(|i| low.partition(4, i).unwrap()).collect();
    for i in 0..200 {
        let d = digest("l", i);
        let holders: Vec<&Filter> = parts.iter().filter(|p| p.covers(&d)).collect();
        assert_eq!(holders.len(), 1, "one partition covers each digest");
        assert_eq!(holders[0].contains(&d), low.contains(&d));
    }
}

#[test]
fn sparse_wire_refuses_oversized_or_malformed_sets() {
    let f = Filter::new(header(blocked(20, 7))).unwrap();
    let good = f.to_bytes_compact();
    assert_eq!(good[4], 3);
    let resum = |mut b: Vec<u8>| {
        let n = b.len() - 8;
        let s: [u8; 32] = Sha256::digest(&b[..n]).into();
        b[n..].copy_from_slice(&s[..8]);
        b
    };
    // Declaring 2^30 bits (beyond MAX_SPARSE_BITS) with an empty set.
    let mut big = good.clone();
    big[32..40].copy_from_slice(&(1u64 << 30).to_be_bytes());
    big[40..48].copy_from_slice(&(1u64 << 30).to_be_bytes());
    assert!(matches!(
        Filter::from_bytes(&resum(big)),
        Err(FilterError::TooLarge { .. })
    ));
    // A set bit beyond the bits held, and a repeated bit.
    let with_payload = |payload: &[u8]| {
        let mut b = good[..48].to_vec();
        b.extend_from_slice(payload);
        b.extend_from_slice(&[0; 8]);
        resum(b)
    };
    assert!(Filter::from_bytes(&with_payload(&[1, 0x80, 0x80, 0x80, 0x01])).is_err());
    assert!(Filter::from_bytes(&with_payload(&[2, 5, 0])).is_err());
    assert!(
        Filter::from_bytes(&with_payload(&[2, 5])).is_err(),
        "truncated"
    );
    assert!(
        Filter::from_bytes(&with_payload(&[1, 5, 0])).is_err(),
        "trailing"
    );
    let ok = Filter::from_bytes(&with_payload(&[2, 5, 3])).unwrap();
    assert_eq!(ok.count_ones(), 2);
    assert_eq!(ok.bit(8), Some(true));
}

#[test]
fn partition_of_digest_and_prefix_ranges_agree_with_the_partitions() {
    for params in [
        blocked(14, 5),
        FilterParams::blocked(48, 5),
        plain(20, 5),
        FilterParams::draft_interop(20),
    ] {
        for p_bits in 0..=params.max_partition_bits().min(4) {
            let whole = Filter::new(header(params)).unwrap();
            let parts: Vec<Filter> = (0..1u32 << p_bits)
                .map(|i| whole.partition(p_bits, i).unwrap())
                .collect();
            for i in 0..300 {
                let d = digest("pd", i);
                let idx = params.partition_of_digest(&d, p_bits).unwrap();
                assert!(parts[idx as usize].covers(&d), "{params:?} P={p_bits}");
                let head = u64::from_be_bytes(d[..8].try_into().unwrap());
                for (first, end) in [(idx, idx + 1), (0, idx + 1), (idx, 1 << p_bits)] {
                    if let Some((lo, hi)) = params.prefix_range(p_bits, first, end) {
                        assert!(
                            lo <= head && head <= hi,
                            "{params:?} P={p_bits} {idx} in {first}..{end}"
                        );
                    }
                }
                if idx > 0 {
                    if let Some((lo, _)) = params.prefix_range(p_bits, 0, idx) {
                        let (_, hi) = params.prefix_range(p_bits, 0, idx).unwrap();
                        assert!(
                            head > hi || lo > head,
                            "{params:?}: digest of {idx} inside 0..{idx}"
                        );
                    }
                }
            }
        }
    }
    assert_eq!(FilterParams::draft_interop(20).prefix_range(2, 0, 1), None);
}

#[test]
fn rebuilt_filters_are_sized_from_the_live_count_with_headroom() {
    assert_eq!(crate::core::filter::capacity_for(0), 10_000);
    assert_eq!(crate::core::filter::capacity_for(1_000_000), 1_500_000);
    let p = crate::core::filter::params_for(
        crate::core::config::FilterLayout::Blocked,
        1_000_000,
        5e-4,
    )
    .unwrap();
    assert!(p.predicted_fp(1_000_000) <= 5e-4);
    assert_eq!(
        crate::core::filter::params_for(crate::core::config::FilterLayout::Draft, 1000, 0.01)
            .unwrap()
            .k,
        1
    );
    assert_eq!(
        crate::core::filter::params_for(crate::core::config::FilterLayout::Plain, 1000, 0.01)
            .unwrap()
            .layout,
        Layout::Plain
    );
}
