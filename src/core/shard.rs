//! Which mapping shard holds an SII.
//!
//! ARCHITECTURE.md (Invariants 2): mappings, pending verifications and per-SII counters live in
//! SQLite Durable Objects "sharded by hash of the SII (one DO per shard;
//! shard count is config)", because one object serves roughly 1,000
//! requests/s. Everything about one SII lives in exactly one shard, so the
//! shard serializes all transitions of that SII (racing creations end in
//! one consistent state) without any cross-object transaction.
//!
//! The shard is taken from the **high** bits of the SII's SHA-256 (the
//! same hash the filter uses) by multiply-shift: `(h32 × count) >> 32`.
//! That is uniform for any count, costs no second hash, and when the count
//! doubles, shard `i` splits exactly into `2i` and `2i + 1`, so a later
//! resharding moves each row to one of two known children.

use super::sii::Sii;

/// Largest supported shard count (names and arithmetic stay small).
pub const MAX_SHARDS: u32 = 1 << 16;

/// The shard (`0..count`) that owns `sii`. A `count` of 0 is treated as 1
/// and counts above [`MAX_SHARDS`] as [`MAX_SHARDS`], so this never panics.
pub fn shard_of(sii: &Sii, count: u32) -> u32 {
    shard_of_hash(&sii.hash(), count)
}

/// [`shard_of`] for an already computed SII hash.
pub fn shard_of_hash(hash: &[u8; 32], count: u32) -> u32 {
    let count = u64::from(count.clamp(1, MAX_SHARDS));
    let h = u64::from(u32::from_be_bytes([hash[0], hash[1], hash[2], hash[3]]));
    // h < 2^32 and count ≤ 2^16, so the product fits and the result < count.
    ((h * count) >> 32) as u32
}

/// The shard of digests whose first 8 bytes (big-endian) are `prefix64`:
/// shards are prefix ranges, so a range of prefixes is a range of shards.
pub fn shard_of_prefix(prefix64: u64, count: u32) -> u32 {
    let count = u64::from(count.clamp(1, MAX_SHARDS));
    (((prefix64 >> 32) * count) >> 32) as u32
}

/// The Durable Object name of a shard. The count is part of the name: a
/// deployment that changes its shard count addresses new objects and must
/// migrate (split) the old ones, rather than silently reading half-empty
/// shards.
pub fn shard_name(index: u32, count: u32) -> String {
    format!("mappings/{}/{}", count.clamp(1, MAX_SHARDS), index)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sii(i: u32) -> Sii {
        Sii::parse(&format!("+1415555{i:04}")).unwrap()
    }

    #[test]
    fn prefix_ranges_are_shard_ranges() {
        for i in 0..2_000 {
            let h = sii(i).hash();
            let head = u64::from_be_bytes([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]]);
            for count in [1, 4, 16, 1000] {
                assert_eq!(shard_of_prefix(head, count), shard_of_hash(&h, count));
            }
        }
    }

    #[test]
    fn spreads_evenly_over_shards() {
        let count = 16;
        let mut hits = [0u32; 16];
        for i in 0..8_000 {
            hits[shard_of(&sii(i), count) as usize] += 1;
        }
        // Expect 500 each; a uniform hash stays well within ±25 %.
        for (s, &h) in hits.iter().enumerate() {
            assert!((375..=625).contains(&h), "shard {s} got {h}");
        }
    }

    #[test]
    fn same_sii_in_any_spelling_lands_in_the_same_shard() {
        let a = Sii::parse("+1 (415) 555-0100").unwrap();
        let b = Sii::parse("+14155550100").unwrap();
        assert_eq!(shard_of(&a, 64), shard_of(&b, 64));
    }

    #[test]
    fn uses_the_high_bits_and_doubling_splits_each_shard_in_two() {
        let mut h = [0u8; 32];
        h[0] = 0x80; // top bit set, everything else zero
        assert_eq!(shard_of_hash(&h, 2), 1);
        assert_eq!(shard_of_hash(&h, 4), 2);
        h[31] = 0xff; // low bits never matter
        assert_eq!(shard_of_hash(&h, 4), 2);
        for i in 0..2_000 {
            let s = sii(i);
            for c in [1, 3, 7, 16, 100] {
                let parent = shard_of(&s, c);
                assert!(parent < c);
                assert_eq!(shard_of(&s, 2 * c) / 2, parent);
            }
        }
    }

    #[test]
    fn degenerate_counts_do_not_panic() {
        let h = [0xff; 32];
        assert_eq!(shard_of_hash(&h, 0), 0);
        assert_eq!(shard_of_hash(&h, 1), 0);
        assert_eq!(shard_of_hash(&h, u32::MAX), MAX_SHARDS - 1);
        assert_eq!(shard_name(3, 16), "mappings/16/3");
        assert_eq!(shard_name(0, 0), "mappings/1/0");
    }
}
