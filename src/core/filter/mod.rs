//! The GP-to-GP routing filter (draft §9), generalised to a Bloom filter.
//!
//! draft §9: "each GP [informs] the other GP about what mappings it might
//! hold ... glados makes use of a bloom filter to exchange this information."
//! The draft fixes one hash position per SII (the low N bits of its SHA-256);
//! that needs ~100 bits per SII for 1% false positives. Here the shape is a
//! parameter ([`FilterParams`]): `k = 1, Plain, Sha256Low` reproduces the
//! draft bit for bit (interop), while the default is a cache-line-blocked
//! Bloom filter sized from a target fp rate, positioned by the digest's HIGH
//! bits so that it can be cut into 2^P partitions by hash prefix.
//!
//! Every operation takes the SII's 32-byte SHA-256: one hash per lookup, all
//! positions derive from it. Bit `i` of a bitmap is byte `i / 8`, mask
//! `1 << (i % 8)` (LSB-first), both in memory order of the wire payload and
//! for the draft's "binary object of size 2^N/8 bytes".
//!
//! Blocked filters have any number of blocks B (not only powers of two), so
//! their size follows the target fp closely: a digest's block is
//! ⌊prefix64 · B / 2^64⌋ (multiply-shift), which keeps blocks in prefix
//! order. Plain filters (and the draft's) keep 2^N bits.
//!
//! Positions and additions are always *global* bit indices (0..bits), also
//! in a partition, so an additions stream of the whole filter can be routed
//! to partitions by `index / (bits / 2^P)`
//! ([`FilterParams::partition_of_bit`]).

mod error;
mod params;
mod wire;

pub use error::FilterError;
pub use params::{
    partition_of, FilterParams, HashScheme, Layout, ParamsDoc, BLOCK_BITS, BLOCK_LOG2, MAX_BITS,
    MAX_K, MAX_LOG2_BITS, MIN_LOG2_BITS, PARTITION_SLACK_LOG2, PLAIN_REGION_LOG2,
};
pub use wire::{decode_additions, encode_additions, AdditionsBatch, MAX_SPARSE_BITS};
pub(crate) use wire::{get_ascending, get_varint, put_ascending, put_varint};

use params::{block_masks, block_of, ceil_log2, plain_hashes, prefix, tail_words};

/// The block (0..blocks) of a digest whose first 8 bytes, big-endian, are
/// `prefix64`: ⌊prefix64 · blocks / 2^64⌋ (blocks < 2^32), as the blocked
/// layout places it. The routing table cuts filters by it.
pub fn block_of_prefix(prefix64: u64, blocks: u64) -> u64 {
    params::mul_high(prefix64, blocks)
}

/// A rebuilt filter's capacity: the live SIIs and half again (it lives a
/// rebuild period and a GP grows), at least 10,000.
pub fn capacity_for(live: u64) -> u64 {
    live.saturating_add(live / 2).max(10_000)
}

/// The params of a new version for `layout` (`FILTER_LAYOUT`) sized for
/// `expected` SIIs at `fp`.
pub fn params_for(
    layout: crate::core::config::FilterLayout,
    expected: u64,
    fp: f64,
) -> Result<FilterParams, FilterError> {
    use crate::core::config::FilterLayout;
    match layout {
        // draft §9 interop: one bit per SII from "the lowest N bits".
        FilterLayout::Draft => FilterParams::draft_for_capacity(expected, fp),
        FilterLayout::Plain => FilterParams::for_capacity(expected, fp, Layout::Plain),
        FilterLayout::Blocked => FilterParams::for_capacity(expected, fp, Layout::Blocked512),
    }
}

/// ⌈log2 bits⌉: a filter's `log2_bits` from its size.
pub fn ceil_log2_bits(bits: u64) -> u8 {
    ceil_log2(bits)
}

/// Identity of one filter version (draft §9: "Each bloom filter has a
/// timestamp, corresponding to the time of creation on the GP" and
/// "this is the reason they are versioned").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FilterHeader {
    /// Version id, chosen by the owning GP; subscriptions name it.
    pub version: u64,
    /// Creation time, milliseconds since the Unix epoch (passed in: core has no clock).
    pub created_at_ms: u64,
    /// Shape of the filter.
    pub params: FilterParams,
}

/// Which slice of the logical filter a [`Filter`] holds: partition `index`
/// of `2^bits` (bits = 0: the whole filter).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Partition {
    /// P: the filter is cut into 2^P partitions by digest prefix.
    pub bits: u8,
    /// Which one, 0..2^P.
    pub index: u32,
}

/// The bits a single insert turned from 0 to 1 (global indices).
///
/// draft §9: "If the addition of a new SII causes an entry in the bloom
/// filter to flip from a zero to a one, a notification is sent" — this is
/// what subscribers receive. Fixed capacity [`MAX_K`], no allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Additions {
    idx: [u64; MAX_K as usize],
    len: u8,
}

impl Additions {
    fn new() -> Self {
        Additions {
            idx: [0; MAX_K as usize],
            len: 0,
        }
    }
    fn push(&mut self, i: u64) {
        if let Some(slot) = self.idx.get_mut(usize::from(self.len)) {
            *slot = i;
            self.len += 1;
        }
    }
    /// The flipped bit indices.
    pub fn as_slice(&self) -> &[u64] {
        self.idx.get(..usize::from(self.len)).unwrap_or(&[])
    }
    /// Number of flipped bits.
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }
    /// True when the insert changed nothing (no notification needed).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<'a> IntoIterator for &'a Additions {
    type Item = &'a u64;
    type IntoIter = core::slice::Iter<'a, u64>;
    fn into_iter(self) -> Self::IntoIter {
        self.as_slice().iter()
    }
}

/// Iterator over the k global bit positions of one digest (see
/// [`Filter::positions`]). Blocked positions may repeat.
#[derive(Clone, Debug)]
pub struct Positions {
    pos: params::Pos,
    at: usize,
}

impl Iterator for Positions {
    type Item = u64;
    fn next(&mut self) -> Option<u64> {
        if self.at >= self.pos.len {
            return None;
        }
        let v = self.pos.idx.get(self.at).copied();
        self.at += 1;
        v
    }
}

/// Set bits per group of a filter's bitmap ([`Filter::fill_map`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FillMap {
    /// Global index of group 0's first bit (non-zero for a partition).
    pub first_bit: u64,
    /// Bits per group; the last group may hold fewer.
    pub group_bits: u64,
    /// Number of set bits in each group, in bit order.
    pub ones: Vec<u64>,
}

/// A routing filter (or one partition of it).
///
/// Bits are kept in `u64` words (bit i = word i/64, bit i%64), which
/// compiles for wasm32 too, and measured faster than `bitvec` for the
/// blocked lookup (see benches/filter.rs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    header: FilterHeader,
    part: Partition,
    /// Global index of the first bit held here: index · bits/2^P.
    first: u64,
    /// Number of bits held here: bits/2^P (a whole number of blocks, or a
    /// power of two for Plain).
    len: u64,
    words: Vec<u64>,
    ones: u64,
}

/// Allocates `bits` zero bits (rounded up to whole words) without aborting
/// on failure.
fn alloc_words(bits: u64) -> Result<Vec<u64>, FilterError> {
    let too_large = FilterError::TooLarge { bits };
    let n_words = bits.div_ceil(64);
    let n = usize::try_from(n_words).map_err(|_| too_large.clone())?;
    let mut v: Vec<u64> = Vec::new();
    v.try_reserve_exact(n).map_err(|_| too_large)?;
    v.resize(n, 0);
    Ok(v)
}

impl Filter {
    /// An empty filter for a new version (draft §9: "A bloom filter of size
    /// 2^N is created and initialized as empty"). Fails on invalid params
    /// or if the bits cannot be allocated (never aborts).
    pub fn new(header: FilterHeader) -> Result<Filter, FilterError> {
        header.params.validate()?;
        let len = header.params.bits;
        Ok(Filter {
            header,
            part: Partition::default(),
            first: 0,
            len,
            words: alloc_words(len)?,
            ones: 0,
        })
    }

    /// Version, creation time and params.
    pub fn header(&self) -> &FilterHeader {
        &self.header
    }
    /// Shape of the (whole, logical) filter.
    pub fn params(&self) -> &FilterParams {
        &self.header.params
    }
    /// Which partition this is (bits = 0: whole filter).
    pub fn partition_id(&self) -> Partition {
        self.part
    }
    /// Number of bits held here (bits / 2^P).
    pub fn local_bits(&self) -> u64 {
        self.len
    }
    /// Global index of the first bit held here.
    pub fn first_bit(&self) -> u64 {
        self.first
    }
    /// Whether this filter (partition) is responsible for the digest.
    /// Always true for a whole filter. Prefix-positioned layouts ask the
    /// digest's top bits; the draft's low-bit scheme asks whether its one
    /// position falls in this partition's bit range.
    pub fn covers(&self, digest: &[u8; 32]) -> bool {
        if self.part.bits == 0 {
            return true;
        }
        match self.header.params.hash {
            HashScheme::Sha256High => partition_of(digest, self.part.bits) == self.part.index,
            HashScheme::Sha256Low => {
                let pos = self.header.params.positions_of(digest);
                pos.idx
                    .get(..pos.len)
                    .is_some_and(|p| p.iter().all(|&g| self.local(g).is_some()))
            }
        }
    }

    /// The k global bit indices for a digest (for the inspector).
    pub fn positions(&self, digest: &[u8; 32]) -> Positions {
        Positions {
            pos: self.header.params.positions_of(digest),
            at: 0,
        }
    }

    #[inline]
    fn local(&self, global: u64) -> Option<usize> {
        let off = global.checked_sub(self.first_bit())?;
        if off >= self.local_bits() {
            return None;
        }
        usize::try_from(off).ok()
    }

    #[inline]
    fn get_bit(&self, local: usize) -> bool {
        self.words
            .get(local >> 6)
            .is_some_and(|w| w & (1u64 << (local & 63)) != 0)
    }

    /// Sets a local bit; true if it was 0 before.
    #[inline]
    fn set_bit(&mut self, local: usize) -> bool {
        match self.words.get_mut(local >> 6) {
            Some(w) => {
                let m = 1u64 << (local & 63);
                let was0 = *w & m == 0;
                *w |= m;
                if was0 {
                    self.ones += 1;
                }
                was0
            }
            None => false,
        }
    }

    /// Index into `words` of the 512-bit block number `global_block`, if
    /// that block is held here.
    #[inline(always)]
    fn block_word(&self, global_block: u64) -> Option<usize> {
        let local_block = global_block.checked_sub(self.first >> BLOCK_LOG2)?;
        let w = usize::try_from(local_block).ok()?.checked_mul(8)?;
        (w < self.words.len()).then_some(w)
    }

    /// The block (8 words) starting at word `w`.
    #[inline(always)]
    fn block(&self, w: usize) -> Option<&[u64; 8]> {
        self.words.get(w..)?.first_chunk::<8>()
    }

    /// Might the SII be held by this GP? False means certainly not.
    /// For a partition, a digest it does not cover gives false.
    #[inline]
    pub fn contains(&self, digest: &[u8; 32]) -> bool {
        let p = &self.header.params;
        match (p.layout, p.hash) {
            (Layout::Blocked512, HashScheme::Sha256High) => {
                let global_block = block_of(digest, p.bits >> BLOCK_LOG2);
                let Some(block) = self.block_word(global_block).and_then(|i| self.block(i)) else {
                    return false;
                };
                // Probe slice by slice with early exit: all k probes hit the
                // one cache line already loaded, and most lookups are misses.
                let mut left = p.k;
                for word in tail_words(digest) {
                    let mut x = word;
                    let take = if left < 7 { left } else { 7 };
                    for _ in 0..take {
                        let s = (x & 511) as usize;
                        if block[s >> 6] & (1u64 << (s & 63)) == 0 {
                            return false;
                        }
                        x >>= 9;
                    }
                    left -= take;
                    if left == 0 {
                        break;
                    }
                }
                true
            }
            (Layout::Plain, HashScheme::Sha256High) => {
                if !self.covers(digest) {
                    return false;
                }
                let r = p.log2_bits.min(params::PLAIN_REGION_LOG2);
                // Local index of the region start; the region lies wholly
                // inside this partition because P <= N - r.
                let region = prefix(digest, p.log2_bits - r) << r;
                let Some(base) = self.local(region) else {
                    return false;
                };
                let mask = (1u32 << r) - 1;
                let (mut h, h2) = plain_hashes(digest);
                for _ in 0..p.k {
                    if !self.get_bit(base + (h & mask) as usize) {
                        return false;
                    }
                    h = h.wrapping_add(h2);
                }
                true
            }
            _ => {
                let pos = p.positions_of(digest);
                pos.idx
                    .iter()
                    .take(pos.len)
                    .all(|&g| self.local(g).is_some_and(|l| self.get_bit(l)))
            }
        }
    }

    /// Adds an SII (draft §9: "performs the hash over the SII, takes the
    /// lower N bits and sets the corresponding bit in the bloom filter to a
    /// 1"), returning the bits that flipped 0→1 — what subscribers are sent.
    ///
    /// A partition ignores digests it does not [`cover`](Self::covers)
    /// (returns no additions); route with [`partition_of`] first.
    pub fn insert(&mut self, digest: &[u8; 32]) -> Additions {
        let mut add = Additions::new();
        let p = self.header.params;
        if !self.covers(digest) {
            return add;
        }
        if p.layout == Layout::Blocked512 && p.hash == HashScheme::Sha256High {
            let global_block = block_of(digest, p.bits >> BLOCK_LOG2);
            let Some(wi) = self.block_word(global_block) else {
                return add;
            };
            let masks = block_masks(&tail_words(digest), p.k);
            let base_bit = global_block << BLOCK_LOG2;
            let Some(block) = self
                .words
                .get_mut(wi..)
                .and_then(|b| b.first_chunk_mut::<8>())
            else {
                return add;
            };
            for i in 0..8 {
                let mut new = masks[i] & !block[i];
                block[i] |= masks[i];
                // Bit by bit rather than count_ones: x86-64 baseline has no
                // popcnt, and re-inserts (new = 0) then cost nothing.
                while new != 0 {
                    add.push(base_bit + (i as u64) * 64 + u64::from(new.trailing_zeros()));
                    new &= new - 1;
                }
            }
            self.ones += add.len() as u64;
            return add;
        }
        if p.layout == Layout::Plain && p.hash == HashScheme::Sha256High {
            let r = p.log2_bits.min(PLAIN_REGION_LOG2);
            let region = prefix(digest, p.log2_bits - r) << r;
            let Some(base) = self.local(region) else {
                return add;
            };
            let mask = (1u32 << r) - 1;
            let (mut h, h2) = plain_hashes(digest);
            for _ in 0..p.k {
                let off = (h & mask) as usize;
                if self.set_bit(base + off) {
                    add.push(region + off as u64);
                }
                h = h.wrapping_add(h2);
            }
            return add;
        }
        let pos = p.positions_of(digest);
        for &g in pos.idx.iter().take(pos.len) {
            if let Some(l) = self.local(g) {
                if self.set_bit(l) {
                    add.push(g);
                }
            }
        }
        add
    }

    /// Applies additions received from the owning GP (global indices).
    /// All indices are checked first: on error nothing is changed.
    /// Returns how many bits were newly set.
    pub fn apply(&mut self, indices: &[u64]) -> Result<usize, FilterError> {
        let mut locals = Vec::new();
        locals
            .try_reserve_exact(indices.len())
            .map_err(|_| FilterError::TooLarge { bits: self.len })?;
        for &g in indices {
            match self.local(g) {
                Some(l) => locals.push(l),
                None => {
                    return Err(FilterError::BitOutOfRange {
                        index: g,
                        first: self.first_bit(),
                        len: self.local_bits(),
                    })
                }
            }
        }
        Ok(locals.into_iter().filter(|&l| self.set_bit(l)).count())
    }

    /// Number of bits set.
    pub fn count_ones(&self) -> u64 {
        self.ones
    }

    /// Whether global bit `index` is set; `None` if this filter (partition)
    /// does not hold it. The inspector shows which of an SII's k positions
    /// are set, not only the overall verdict.
    pub fn bit(&self, index: u64) -> Option<bool> {
        self.local(index).map(|l| self.get_bit(l))
    }

    /// How full each part of the bitmap is, in at most `max_groups` groups
    /// of equal size (the last may be shorter): a heat map, or a public
    /// summary that shows load without revealing which bits are set.
    ///
    /// Groups are whole 512-bit blocks for a blocked filter (so a group's
    /// fill is what a lookup landing there sees) and whole 64-bit words for
    /// a plain one; as few bits per group as `max_groups` allows.
    /// `max_groups` = 0 is treated as 1.
    pub fn fill_map(&self, max_groups: u64) -> FillMap {
        let unit: u64 = match self.header.params.layout {
            Layout::Blocked512 => BLOCK_BITS,
            Layout::Plain => 64,
        };
        let units = self.len.div_ceil(unit).max(1);
        let per_group = units.div_ceil(max_groups.max(1));
        let group_bits = per_group * unit;
        // group_bits / 64 ≤ words.len() ≤ usize::MAX, so this cannot fail.
        let words_per_group = usize::try_from(group_bits / 64).unwrap_or(usize::MAX);
        let ones = self
            .words
            .chunks(words_per_group)
            .map(|g| g.iter().map(|w| u64::from(w.count_ones())).sum())
            .collect();
        FillMap {
            first_bit: self.first,
            group_bits,
            ones,
        }
    }

    /// Bits per group over which [`estimated_fp_rate`](Self::estimated_fp_rate)
    /// and [`fp_rate_at`](Self::fp_rate_at) average: the group that holds all
    /// k positions of one SII (block, region, or the whole bitmap).
    fn fp_group_log2(&self) -> u8 {
        let p = &self.header.params;
        let local_log2 = ceil_log2(self.len);
        match p.layout {
            Layout::Blocked512 => BLOCK_LOG2,
            Layout::Plain => match p.hash {
                HashScheme::Sha256Low => local_log2,
                HashScheme::Sha256High => local_log2.min(PLAIN_REGION_LOG2),
            },
        }
    }

    /// False-positive rate for non-members whose positions fall in the same
    /// group (block / region) as this digest's: (ones in group / group
    /// size)^k. Tells the inspector how much a "may be" here is worth,
    /// which varies from block to block. 0 for a digest this partition does
    /// not cover.
    pub fn fp_rate_at(&self, digest: &[u8; 32]) -> f64 {
        let p = &self.header.params;
        let group_log2 = self.fp_group_log2();
        if !self.covers(digest) {
            return 0.0;
        }
        if group_log2 < 6 || group_log2 >= ceil_log2(self.len) {
            return self.fill_ratio().powi(i32::from(p.k));
        }
        let Some(first) = self.positions(digest).next() else {
            return 0.0;
        };
        let start = (first >> group_log2) << group_log2;
        let ones: u64 = match self.local(start).map(|l| l / 64) {
            Some(w) => self
                .words
                .iter()
                .skip(w)
                .take(1usize << (group_log2 - 6))
                .map(|w| u64::from(w.count_ones()))
                .sum(),
            None => return 0.0,
        };
        (ones as f64 / (1u64 << group_log2) as f64).powi(i32::from(p.k))
    }

    /// Fraction of bits set, X/m.
    pub fn fill_ratio(&self) -> f64 {
        self.ones as f64 / self.local_bits() as f64
    }

    /// Estimated number of distinct SIIs inserted (in this partition):
    /// n ≈ -(m/k)·ln(1 - X/m). Infinite once every bit is set.
    pub fn estimated_items(&self) -> f64 {
        let m = self.local_bits() as f64;
        let k = f64::from(self.header.params.k);
        -(m / k) * (1.0 - self.ones as f64 / m).ln()
    }

    /// Estimated false-positive rate for a random non-member, from the bits
    /// actually set: the mean over groups (512-bit blocks, or 2^16-bit
    /// regions for Plain) of (ones_in_group / group_size)^k. For blocked
    /// filters this is exact in expectation (positions are independent
    /// within a block); for Plain it is the classic (X/m)^k approximation,
    /// slightly high because double-hashed positions are distinct.
    pub fn estimated_fp_rate(&self) -> f64 {
        let k = i32::from(self.header.params.k);
        let group_log2 = self.fp_group_log2();
        if group_log2 < 6 {
            return self.fill_ratio().powi(k);
        }
        let words_per_group = 1usize << (group_log2 - 6);
        let size = (1u64 << group_log2) as f64;
        let groups = self.words.chunks(words_per_group);
        let n = groups.len().max(1) as f64;
        let sum: f64 = groups
            .map(|g| {
                let ones: u32 = g.iter().map(|w| w.count_ones()).sum();
                (f64::from(ones) / size).powi(k)
            })
            .sum();
        sum / n
    }

    /// Bits set in `other` but not in `self` (global indices, ascending):
    /// what `self` must apply to catch up. Requires the same params and
    /// partition.
    pub fn diff(&self, other: &Filter) -> Result<Vec<u64>, FilterError> {
        if self.header.params != other.header.params || self.part != other.part {
            return Err(FilterError::ParamsMismatch);
        }
        let first = self.first_bit();
        let mut out = Vec::new();
        for (i, (a, b)) in self.words.iter().zip(&other.words).enumerate() {
            let mut new = b & !a;
            while new != 0 {
                out.push(first + (i as u64) * 64 + u64::from(new.trailing_zeros()));
                new &= new - 1;
            }
        }
        Ok(out)
    }

    /// Cuts out partition `index` of `2^p_bits` (ARCHITECTURE.md, "Scale": a filter
    /// "can be cut into 2^P partitions by hash prefix without rehashing").
    /// A lookup in the partition equals the lookup in the whole for every
    /// digest the partition covers. `self` may itself be a partition that
    /// contains the requested one.
    pub fn partition(&self, p_bits: u8, index: u32) -> Result<Filter, FilterError> {
        let params = self.header.params;
        if p_bits > params.max_partition_bits() {
            return Err(FilterError::PartitionUnsupported {
                bits: p_bits,
                max: params.max_partition_bits(),
            });
        }
        if u64::from(index) >= 1u64 << p_bits || p_bits < self.part.bits {
            return Err(FilterError::PartitionOutOfRange {
                bits: p_bits,
                index,
            });
        }
        // p_bits <= max_partition_bits: whole blocks (blocked) or whole
        // 2^16-bit regions (plain) per partition, so whole words.
        let len = params.bits >> p_bits;
        let out_of_range = FilterError::PartitionOutOfRange {
            bits: p_bits,
            index,
        };
        let first = u64::from(index) * len;
        let start = self.local(first).ok_or(out_of_range.clone())?;
        if self.local(first + len - 1).is_none() {
            return Err(out_of_range);
        }
        let n_words = usize::try_from(len / 64).map_err(|_| out_of_range.clone())?;
        let words = self
            .words
            .get(start / 64..start / 64 + n_words)
            .ok_or(FilterError::PartitionOutOfRange {
                bits: p_bits,
                index,
            })?
            .to_vec();
        let ones = words.iter().map(|w| u64::from(w.count_ones())).sum();
        Ok(Filter {
            header: self.header,
            part: Partition {
                bits: p_bits,
                index,
            },
            first,
            len,
            words,
            ones,
        })
    }

    /// The bitmap held here as bytes: bit i = byte i/8, mask 1 << (i%8)
    /// (draft §9: "encoded as a binary object of size 2^N/8 bytes").
    pub fn bitmap_bytes(&self) -> Vec<u8> {
        let len = (self.local_bits() / 8) as usize;
        let mut out: Vec<u8> = self.words.iter().flat_map(|w| w.to_le_bytes()).collect();
        out.truncate(len);
        out
    }

    /// Sets a local bit (offset from [`first_bit`](Self::first_bit)); out
    /// of range is ignored. For the sparse decoder.
    fn set_local(&mut self, local: u64) {
        if let Ok(l) = usize::try_from(local) {
            if local < self.len {
                self.set_bit(l);
            }
        }
    }

    /// A filter (partition) from its dense bitmap bytes as
    /// [`bitmap_bytes`](Self::bitmap_bytes) gives them: how an object
    /// loads a stored partition. Missing bytes read as zero, extra bytes
    /// are ignored; the partition must be one the params allow.
    pub fn from_bitmap(
        header: FilterHeader,
        part: Partition,
        bitmap: &[u8],
    ) -> Result<Filter, FilterError> {
        header.params.validate()?;
        if part.bits > header.params.max_partition_bits()
            || u64::from(part.index) >= 1u64 << part.bits
        {
            return Err(FilterError::PartitionOutOfRange {
                bits: part.bits,
                index: part.index,
            });
        }
        Filter::from_parts(header, part, bitmap)
    }

    /// Internal constructor used by the decoder.
    fn from_parts(
        header: FilterHeader,
        part: Partition,
        bitmap: &[u8],
    ) -> Result<Filter, FilterError> {
        let len = header.params.bits >> part.bits;
        let first = u64::from(part.index) * len;
        let mut words = alloc_words(len)?;
        let mut ones = 0u64;
        for (w, chunk) in words.iter_mut().zip(bitmap.chunks(8)) {
            let mut b = [0u8; 8];
            for (dst, src) in b.iter_mut().zip(chunk) {
                *dst = *src;
            }
            *w = u64::from_le_bytes(b);
            ones += u64::from(w.count_ones());
        }
        Ok(Filter {
            header,
            part,
            first,
            len,
            words,
            ones,
        })
    }
}

#[cfg(test)]
mod tests;
