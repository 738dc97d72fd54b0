//! Filter parameters, their validation, sizing from a target false-positive
//! rate, and the mapping from an SII digest to bit positions.

use super::FilterError;

/// Smallest filter: 2^3 bits, so the bitmap is a whole number of bytes
/// (draft §9: "a binary object of size 2^N/8 bytes").
pub const MIN_LOG2_BITS: u8 = 3;
/// Largest logical filter: 2^40 bits (128 GiB). A GP with 10^9 SIIs at ~10
/// bits each needs ~2^33.2; the headroom is for partitioned storage, where
/// no single piece is that large.
pub const MAX_LOG2_BITS: u8 = 40;
/// [`MAX_LOG2_BITS`] as a bit count: no layout may exceed it.
pub const MAX_BITS: u64 = 1 << MAX_LOG2_BITS;
/// Most bit positions per SII; optimum k for 0.1% is 10, 16 covers ~1e-5.
pub const MAX_K: u8 = 16;
/// A block of [`Layout::Blocked512`] is one 64-byte cache line.
pub const BLOCK_LOG2: u8 = 9;
/// Bits per block of [`Layout::Blocked512`].
pub const BLOCK_BITS: u64 = 1 << BLOCK_LOG2;
/// [`Layout::Plain`] with [`HashScheme::Sha256High`] keeps all k positions of
/// one SII inside a 2^16-bit (8 KiB) region chosen by the digest prefix, so
/// the filter can be partitioned by prefix; the region is large enough that
/// the fp cost of this confinement is negligible (~6,500 items per region at
/// 10 bits/item, a ±1.2% spread).
pub const PLAIN_REGION_LOG2: u8 = 16;
/// [`FilterParams::for_capacity`] rounds a blocked filter's block count up
/// to a multiple of 2^(⌊log2 blocks⌋ - 8): at most 1/256 (0.4%) more bits,
/// and the filter can then be cut into up to that many partitions by hash
/// prefix, each at least 256 blocks (16 KiB). See
/// [`FilterParams::max_partition_bits`] for why alignment is needed.
pub const PARTITION_SLACK_LOG2: u8 = 8;

/// How bit positions are grouped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Layout {
    /// Classic Bloom filter over the whole bitmap (or a 2^16-bit region of
    /// it, see [`PLAIN_REGION_LOG2`]); 2^N bits. The draft's scheme is Plain
    /// with k=1.
    Plain,
    /// Blocked Bloom filter: all k positions of an SII lie in one 512-bit,
    /// cache-line-sized block, so a lookup touches one cache line. Any
    /// number of blocks (not only powers of two), so the size can follow
    /// the target fp closely.
    Blocked512,
}

/// Which digest bits choose the positions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HashScheme {
    /// Draft interop: the position is the digest's lowest N bits.
    /// Only valid with `k = 1`, [`Layout::Plain`].
    Sha256Low,
    /// Default: the block / region is chosen by the digest's highest bits,
    /// so a filter can be cut into 2^P partitions by hash prefix.
    Sha256High,
}

impl Layout {
    pub(crate) fn to_wire(self) -> u8 {
        match self {
            Layout::Plain => 0,
            Layout::Blocked512 => 1,
        }
    }
    pub(crate) fn from_wire(b: u8) -> Result<Self, FilterError> {
        match b {
            0 => Ok(Layout::Plain),
            1 => Ok(Layout::Blocked512),
            other => Err(FilterError::UnknownLayout(other)),
        }
    }
}

impl Layout {
    /// The layout's name in JSON (`/v1/gp`, manifests).
    pub fn name(self) -> &'static str {
        match self {
            Layout::Plain => "plain",
            Layout::Blocked512 => "blocked512",
        }
    }
    /// The layout of a [`name`](Self::name).
    pub fn from_name(s: &str) -> Option<Layout> {
        match s {
            "plain" => Some(Layout::Plain),
            "blocked512" => Some(Layout::Blocked512),
            _ => None,
        }
    }
}

impl HashScheme {
    /// The scheme's name in JSON.
    pub fn name(self) -> &'static str {
        match self {
            HashScheme::Sha256Low => "sha256-low",
            HashScheme::Sha256High => "sha256-high",
        }
    }
    /// The scheme of a [`name`](Self::name).
    pub fn from_name(s: &str) -> Option<HashScheme> {
        match s {
            "sha256-low" => Some(HashScheme::Sha256Low),
            "sha256-high" => Some(HashScheme::Sha256High),
            _ => None,
        }
    }
}

/// A filter's parameters as JSON documents carry them (a peer's manifest,
/// routing messages): `{"bits", "k", "layout", "hash"}`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ParamsDoc {
    pub bits: u64,
    pub k: u8,
    pub layout: String,
    pub hash: String,
}

impl From<&FilterParams> for ParamsDoc {
    fn from(p: &FilterParams) -> Self {
        ParamsDoc {
            bits: p.bits,
            k: p.k,
            layout: p.layout.name().to_string(),
            hash: p.hash.name().to_string(),
        }
    }
}

impl ParamsDoc {
    /// The params, validated.
    pub fn params(&self) -> Result<FilterParams, FilterError> {
        let p = FilterParams {
            log2_bits: ceil_log2(self.bits),
            bits: self.bits,
            k: self.k,
            layout: Layout::from_name(&self.layout).ok_or(FilterError::UnknownLayout(255))?,
            hash: HashScheme::from_name(&self.hash).ok_or(FilterError::UnknownHashScheme(255))?,
        };
        p.validate()?;
        Ok(p)
    }
}

impl HashScheme {
    pub(crate) fn to_wire(self) -> u8 {
        match self {
            HashScheme::Sha256Low => 0,
            HashScheme::Sha256High => 1,
        }
    }
    pub(crate) fn from_wire(b: u8) -> Result<Self, FilterError> {
        match b {
            0 => Ok(HashScheme::Sha256Low),
            1 => Ok(HashScheme::Sha256High),
            other => Err(FilterError::UnknownHashScheme(other)),
        }
    }
}

/// ⌈log2 x⌉ (0 for x ≤ 1).
pub(crate) fn ceil_log2(x: u64) -> u8 {
    if x <= 1 {
        0
    } else {
        (64 - (x - 1).leading_zeros()) as u8
    }
}

/// Shape of a filter: what a peer must know to interpret its bits.
///
/// `bits` is the size; `log2_bits` is ⌈log2 bits⌉ and must agree with it
/// ([`validate`](Self::validate) checks). Build with
/// [`draft_interop`](Self::draft_interop), [`plain`](Self::plain),
/// [`blocked`](Self::blocked) or [`for_capacity`](Self::for_capacity)
/// rather than by hand.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FilterParams {
    /// N = ⌈log2 bits⌉. For [`Layout::Plain`] (and so the draft's scheme)
    /// the filter has exactly 2^N bits (draft §9: "A bloom filter of size
    /// 2^N"); for [`Layout::Blocked512`] it is informational only.
    pub log2_bits: u8,
    /// Size of the whole logical filter in bits: 2^N for Plain, any
    /// positive multiple of 512 (whole blocks) for Blocked512.
    pub bits: u64,
    /// Bit positions per SII.
    pub k: u8,
    /// Position grouping.
    pub layout: Layout,
    /// Which digest bits select positions.
    pub hash: HashScheme,
}

impl FilterParams {
    /// The draft's own scheme, bit for bit: 2^N bits, one position per SII
    /// from the low N bits of its SHA-256.
    pub fn draft_interop(log2_bits: u8) -> Self {
        FilterParams {
            log2_bits,
            bits: 1u64 << log2_bits.min(63),
            k: 1,
            layout: Layout::Plain,
            hash: HashScheme::Sha256Low,
        }
    }

    /// A plain (unblocked) filter of 2^N bits with k positions per SII from
    /// the digest's high bits. Not validated.
    pub fn plain(log2_bits: u8, k: u8) -> Self {
        FilterParams {
            log2_bits,
            bits: 1u64 << log2_bits.min(63),
            k,
            layout: Layout::Plain,
            hash: HashScheme::Sha256High,
        }
    }

    /// A blocked filter of `blocks` 512-bit blocks (any count) with k
    /// positions per SII. Not validated.
    pub fn blocked(blocks: u64, k: u8) -> Self {
        let bits = blocks.saturating_mul(BLOCK_BITS);
        FilterParams {
            log2_bits: ceil_log2(bits),
            bits,
            k,
            layout: Layout::Blocked512,
            hash: HashScheme::Sha256High,
        }
    }

    /// Checks the combination is one we can build and interpret.
    ///
    /// Rules: `1 <= k <= 16`; Plain: `3 <= log2_bits <= 40` and `bits =
    /// 2^log2_bits`; Blocked512: `bits` a positive multiple of 512, at most
    /// 2^40, and `log2_bits = ⌈log2 bits⌉`; `Sha256Low` only with `k = 1`
    /// and `Plain` (that is the draft's scheme; low bits cannot be
    /// partitioned by prefix, so we do not extend it).
    pub fn validate(&self) -> Result<(), FilterError> {
        if !(1..=MAX_K).contains(&self.k) {
            return Err(FilterError::KOutOfRange(self.k));
        }
        match self.layout {
            Layout::Plain => {
                if !(MIN_LOG2_BITS..=MAX_LOG2_BITS).contains(&self.log2_bits) {
                    return Err(FilterError::Log2BitsOutOfRange(self.log2_bits));
                }
                if self.bits != 1u64 << self.log2_bits {
                    return Err(FilterError::SizeMismatch {
                        log2_bits: self.log2_bits,
                        bits: self.bits,
                    });
                }
            }
            Layout::Blocked512 => {
                if self.bits == 0 || !self.bits.is_multiple_of(BLOCK_BITS) || self.bits > MAX_BITS {
                    return Err(FilterError::BlockedBits(self.bits));
                }
                if self.log2_bits != ceil_log2(self.bits) {
                    return Err(FilterError::SizeMismatch {
                        log2_bits: self.log2_bits,
                        bits: self.bits,
                    });
                }
            }
        }
        if self.hash == HashScheme::Sha256Low && (self.k != 1 || self.layout != Layout::Plain) {
            return Err(FilterError::LowHashNeedsPlainK1);
        }
        Ok(())
    }

    /// Number of bits in the whole logical filter.
    pub fn bits(&self) -> u64 {
        self.bits
    }

    /// Number of 512-bit blocks (Blocked512; 0 for Plain).
    pub fn blocks(&self) -> u64 {
        match self.layout {
            Layout::Blocked512 => self.bits >> BLOCK_LOG2,
            Layout::Plain => 0,
        }
    }

    /// Largest P such that the filter can be cut into 2^P partitions of
    /// equal bit ranges, every SII's positions falling in one partition.
    ///
    /// Blocked: the block of a digest is ⌊prefix64 · blocks / 2^64⌋, which
    /// keeps blocks in prefix order; partition p of 2^P (prefixes whose top
    /// P bits are p) is then exactly blocks p·c .. (p+1)·c when blocks =
    /// c·2^P. Otherwise some block straddles two partitions, so P is the
    /// number of trailing zero bits of the block count.
    ///
    /// The draft's scheme (k = 1, low bits) has one position per SII, so
    /// any cut by bit-index range keeps an SII in one partition; like plain
    /// regions, partitions are at least 2^16 bits. Its partitions are bit
    /// ranges, not digest-prefix ranges ([`Filter::covers`](super::Filter::covers)
    /// asks the position).
    pub fn max_partition_bits(&self) -> u8 {
        match (self.layout, self.hash) {
            (_, HashScheme::Sha256Low) => self.log2_bits.saturating_sub(PLAIN_REGION_LOG2),
            (Layout::Blocked512, _) => {
                let b = self.blocks();
                if b == 0 {
                    0
                } else {
                    b.trailing_zeros().min(32) as u8
                }
            }
            (Layout::Plain, _) => self.log2_bits.saturating_sub(PLAIN_REGION_LOG2),
        }
    }

    /// Which of 2^p_bits partitions holds global bit `index`, if the filter
    /// can be cut that way and the index is in range: routes a whole
    /// filter's additions stream to partitions.
    pub fn partition_of_bit(&self, index: u64, p_bits: u8) -> Option<u32> {
        if p_bits > self.max_partition_bits() || index >= self.bits {
            return None;
        }
        let per_part = self.bits >> p_bits;
        u32::try_from(index.checked_div(per_part)?).ok()
    }

    /// Bits in the group that all k positions of one SII share: a block
    /// for Blocked512; the region for Plain (the whole filter if small).
    fn group_bits(&self) -> u64 {
        match self.layout {
            Layout::Blocked512 => BLOCK_BITS,
            Layout::Plain => 1u64 << self.log2_bits.min(PLAIN_REGION_LOG2),
        }
    }

    /// Chooses a size and k for `expected_items` at no more than
    /// `target_fp` predicted false positives, with the default
    /// [`HashScheme::Sha256High`].
    ///
    /// The smallest size for which some k reaches the target wins, then the
    /// smallest k that reaches it at that size (fewer bits flipped per
    /// insert: less subscription traffic, faster inserts). Blocked512: any
    /// block count, rounded up by at most 1/256 so that the filter stays
    /// partitionable (see [`PARTITION_SLACK_LOG2`]). Plain: a power of two,
    /// so its fp at `expected_items` is often well below target. The
    /// prediction accounts for blocking (items per block vary, Poisson),
    /// so a blocked filter gets the extra bits it needs instead of missing
    /// the target.
    pub fn for_capacity(
        expected_items: u64,
        target_fp: f64,
        layout: Layout,
    ) -> Result<FilterParams, FilterError> {
        if !(target_fp > 0.0 && target_fp < 1.0) {
            return Err(FilterError::InvalidTarget);
        }
        let too_large = FilterError::TooLarge { bits: MAX_BITS };
        // No Bloom filter beats 2^-(m/n·ln2) at m/n bits per item: sizes
        // below that cannot reach the target at all.
        let ln2sq = core::f64::consts::LN_2 * core::f64::consts::LN_2;
        let hopeless = |bits: u64| {
            let per_item = bits as f64 / expected_items.max(1) as f64;
            (-(per_item * ln2sq)).exp() > target_fp
        };
        let smallest_k = |p: FilterParams| {
            (1..=MAX_K)
                .map(|k| FilterParams { k, ..p })
                .find(|q| q.predicted_fp(expected_items) <= target_fp)
        };
        match layout {
            Layout::Plain => (MIN_LOG2_BITS..=MAX_LOG2_BITS)
                .map(|n| FilterParams::plain(n, 1))
                .filter(|p| !hopeless(p.bits))
                .find_map(smallest_k)
                .ok_or(too_large),
            Layout::Blocked512 => {
                let fits = |blocks: u64| {
                    let p = FilterParams::blocked(blocks, 1);
                    !hopeless(p.bits) && smallest_k(p).is_some()
                };
                let max_blocks = MAX_BITS >> BLOCK_LOG2;
                if !fits(max_blocks) {
                    return Err(too_large);
                }
                // fp falls as blocks grow (for every k): binary search for
                // the first block count that fits. lo never fits, hi does.
                let (mut lo, mut hi) = (0u64, max_blocks);
                while hi - lo > 1 {
                    let mid = lo + (hi - lo) / 2;
                    if fits(mid) {
                        hi = mid;
                    } else {
                        lo = mid;
                    }
                }
                let align =
                    1u64 << (63 - hi.leading_zeros() as u8).saturating_sub(PARTITION_SLACK_LOG2);
                let blocks = hi.div_ceil(align).saturating_mul(align).min(max_blocks);
                smallest_k(FilterParams::blocked(blocks, 1)).ok_or(too_large)
            }
        }
    }

    /// The draft's scheme ([`draft_interop`](Self::draft_interop)) at the
    /// smallest N whose fp after `expected_items`, 1-(1-2^-N)^n, is within
    /// `target_fp` — about n/ε bits, e.g. ~100 bits per SII at 1%.
    pub fn draft_for_capacity(
        expected_items: u64,
        target_fp: f64,
    ) -> Result<FilterParams, FilterError> {
        if !(target_fp > 0.0 && target_fp < 1.0) {
            return Err(FilterError::InvalidTarget);
        }
        (MIN_LOG2_BITS..=MAX_LOG2_BITS)
            .map(FilterParams::draft_interop)
            .find(|p| p.predicted_fp(expected_items) <= target_fp)
            .ok_or(FilterError::TooLarge { bits: MAX_BITS })
    }

    /// Estimated false-positive rate of a filter of these params with
    /// `ones` bits set: the distinct SIIs n ≈ -(m/k)·ln(1 - ones/m), then
    /// [`predicted_fp`](Self::predicted_fp)(n). What a peer's filter costs
    /// a query in fan-out, from its count alone (1 when full).
    pub fn fp_from_ones(&self, ones: u64) -> f64 {
        let m = self.bits as f64;
        if ones as f64 >= m {
            return 1.0;
        }
        let n = -(m / f64::from(self.k)) * (1.0 - ones as f64 / m).ln();
        self.predicted_fp(n.round() as u64)
    }

    /// Which of 2^p_bits bit-range partitions holds a digest's positions
    /// (all k are in one when p_bits ≤ [`max_partition_bits`](Self::max_partition_bits)).
    pub fn partition_of_digest(&self, d: &[u8; 32], p_bits: u8) -> Option<u32> {
        let pos = self.positions_of(d);
        self.partition_of_bit(*pos.idx.first()?, p_bits)
    }

    /// The digest prefixes (first 8 bytes, big-endian, inclusive range)
    /// whose positions fall in partitions `first..end` of 2^p_bits: which
    /// mapping shards a rebuild of those partitions reads. None for the
    /// draft's low-bits scheme (any digest may fall anywhere).
    pub fn prefix_range(&self, p_bits: u8, first: u32, end: u32) -> Option<(u64, u64)> {
        if self.hash == HashScheme::Sha256Low || end <= first || p_bits > self.max_partition_bits()
        {
            return None;
        }
        let per = self.bits >> p_bits;
        let (b0, b1) = (u64::from(first) * per, u64::from(end) * per);
        match self.layout {
            Layout::Blocked512 => {
                let blocks = u128::from(self.blocks());
                let lo = (u128::from(b0 >> BLOCK_LOG2) << 64).div_ceil(blocks);
                let hi = (u128::from(b1 >> BLOCK_LOG2) << 64).div_ceil(blocks) - 1;
                Some((
                    lo.min(u128::from(u64::MAX)) as u64,
                    hi.min(u128::from(u64::MAX)) as u64,
                ))
            }
            Layout::Plain => {
                let rr = self.log2_bits.min(PLAIN_REGION_LOG2);
                let t = self.log2_bits - rr;
                if t == 0 {
                    return Some((0, u64::MAX));
                }
                let (g0, g1) = (b0 >> rr, b1 >> rr);
                let shift = 64 - u32::from(t);
                Some((
                    g0 << shift,
                    ((g1 << shift).wrapping_sub(1)).max(g0 << shift),
                ))
            }
        }
    }

    /// Transfer and storage cut: the smallest P such that each of 2^P
    /// partitions holds at most `max_bytes` of bitmap, within
    /// [`max_partition_bits`](Self::max_partition_bits).
    pub fn partition_bits_for(&self, max_bytes: u64) -> u8 {
        let bytes = self.bits.div_ceil(8);
        let mut p = 0u8;
        while p < self.max_partition_bits() && bytes >> p > max_bytes {
            p += 1;
        }
        p
    }

    /// Predicted false-positive rate after `items` distinct SIIs.
    ///
    /// Items fall into groups (blocks / regions) of s bits, the count per
    /// group is Poisson(λ = items·s/m), and within a group of i items a
    /// non-member hits k independent positions: fp = Σ_i P(i)·(1-(1-1/s)^{ki})^k.
    /// With one group (small filter) the count is exactly `items`.
    pub fn predicted_fp(&self, items: u64) -> f64 {
        let k = f64::from(self.k);
        let group = self.group_bits();
        let s = group as f64;
        let fp_in_group = |i: f64| (1.0 - (1.0 - 1.0 / s).powf(k * i)).powf(k);
        if group >= self.bits {
            return fp_in_group(items as f64);
        }
        let m = self.bits as f64;
        let lambda = items as f64 * s / m;
        poisson_expectation(lambda, fp_in_group)
    }
}

/// E[f(X)] for X ~ Poisson(λ), summed over ±12σ around the mean (the
/// omitted tails weigh < 1e-30). For large λ the pmf is smooth and the sum
/// steps over it in ~σ/16 strides (≤ ~400 terms), so sizing stays cheap.
fn poisson_expectation(lambda: f64, f: impl Fn(f64) -> f64) -> f64 {
    if lambda <= 0.0 {
        return f(0.0);
    }
    let sd = lambda.sqrt();
    let lo = (lambda - 12.0 * sd - 12.0).max(0.0).floor() as u64;
    let hi = (lambda + 12.0 * sd + 12.0).ceil() as u64;
    let step = ((sd / 16.0) as u64).max(1);
    let mut total = 0.0;
    let mut i = lo;
    while i <= hi {
        total += ln_poisson(i, lambda).exp() * f(i as f64) * step as f64;
        i += step;
    }
    total
}

/// ln P(X = i) for X ~ Poisson(λ). Small i: exact sum of logs. Large i:
/// Stirling in the saddle-point form -(i·ln(i/λ) - (i-λ)) - ½ln(2πi) - ...,
/// with ln(i/λ) via ln_1p, so huge λ does not cancel catastrophically.
fn ln_poisson(i: u64, lambda: f64) -> f64 {
    let x = i as f64;
    if i < 32 {
        let ln_fact: f64 = (2..=i).map(|j| (j as f64).ln()).sum();
        return -lambda + x * lambda.ln() - ln_fact;
    }
    let d = x - lambda;
    -(x * (d / lambda).ln_1p() - d)
        - 0.5 * (2.0 * core::f64::consts::PI * x).ln()
        - 1.0 / (12.0 * x)
        + 1.0 / (360.0 * x * x * x)
}

/// The k global bit indices of one digest (at most [`MAX_K`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Pos {
    pub(crate) idx: [u64; MAX_K as usize],
    pub(crate) len: usize,
}

/// The digest's first 4 bytes as a big-endian u32: its top 32 bits, from
/// which block, region and partition numbers come (all need ≤ 31 bits).
#[inline(always)]
pub(crate) fn head(d: &[u8; 32]) -> u32 {
    let [a0, a1, a2, a3, ..] = *d;
    u32::from_be_bytes([a0, a1, a2, a3])
}

/// Bytes 8..32 as three little-endian u64 words, the source of in-block
/// slices and double-hashing seeds. Little-endian because that is a plain
/// load on x86 and wasm (wasm has no byte-swap instruction).
#[inline(always)]
pub(crate) fn tail_words(d: &[u8; 32]) -> [u64; 3] {
    let [_, _, _, _, _, _, _, _, b0, b1, b2, b3, b4, b5, b6, b7, c0, c1, c2, c3, c4, c5, c6, c7, e0, e1, e2, e3, e4, e5, e6, e7] =
        *d;
    [
        u64::from_le_bytes([b0, b1, b2, b3, b4, b5, b6, b7]),
        u64::from_le_bytes([c0, c1, c2, c3, c4, c5, c6, c7]),
        u64::from_le_bytes([e0, e1, e2, e3, e4, e5, e6, e7]),
    ]
}

/// Top `bits` bits of the 32-bit head (0 if bits = 0; bits ≤ 32).
#[inline(always)]
pub(crate) fn top_bits(head: u32, bits: u8) -> u64 {
    if bits == 0 {
        0
    } else {
        u64::from(head >> (32 - u32::from(bits.min(32))))
    }
}

/// Top `bits` bits of the digest read as a big-endian integer (0 if bits
/// = 0; at most 32).
#[inline]
pub(crate) fn prefix(d: &[u8; 32], bits: u8) -> u64 {
    top_bits(head(d), bits)
}

/// The digest's first 8 bytes as a big-endian u64: the fraction
/// prefix64 / 2^64 in [0, 1) that places a digest among the blocks.
#[inline(always)]
pub(crate) fn head64(d: &[u8; 32]) -> u64 {
    let [a0, a1, a2, a3, a4, a5, a6, a7, ..] = *d;
    u64::from_be_bytes([a0, a1, a2, a3, a4, a5, a6, a7])
}

/// ⌊x · n / 2^64⌋ for n < 2^32 (Lemire's multiply-shift range reduction,
/// with a 64-bit fraction), from two 32×32→64-bit products: exact, and
/// cheap in wasm, which has no 64×64→128 multiply. For n = 2^b this is
/// the top b bits of x. Monotone in x, so blocks stay in prefix order.
#[inline(always)]
pub(crate) fn mul_high(x: u64, n: u64) -> u64 {
    let hi = (x >> 32).wrapping_mul(n);
    let lo = (x & 0xffff_ffff).wrapping_mul(n);
    hi.wrapping_add(lo >> 32) >> 32
}

/// The block (0..blocks) of a digest: ⌊prefix64 · blocks / 2^64⌋.
#[inline(always)]
pub(crate) fn block_of(d: &[u8; 32], blocks: u64) -> u64 {
    mul_high(head64(d), blocks)
}

/// The k in-block positions (0..512) as eight 64-bit masks: slice j is
/// bits `9·(j mod 7) .. 9·(j mod 7)+9` (least significant first) of tail
/// word `j / 7` (little-endian u64 at bytes 8+8·(j/7)) — 21 slices ≥ [`MAX_K`].
#[inline(always)]
pub(crate) fn block_masks(t: &[u64; 3], k: u8) -> [u64; 8] {
    // No division or modulo here: at opt-level "z" (the worker's profile)
    // they compile to slow `div` instructions.
    let mut masks = [0u64; 8];
    let mut left = k;
    for &word in t {
        let mut x = word;
        let take = if left < 7 { left } else { 7 };
        for _ in 0..take {
            let s = (x & 511) as usize;
            masks[s >> 6] |= 1u64 << (s & 63);
            x >>= 9;
        }
        left -= take;
        if left == 0 {
            break;
        }
    }
    masks
}

impl FilterParams {
    /// All k positions, as global bit indices in 0..bits. Assumes validated.
    ///
    /// - Plain + Sha256Low (k = 1, the draft): the 256-bit digest as a
    ///   big-endian integer, mod 2^N, i.e. the low N bits of its last bytes.
    /// - Blocked512 + Sha256High: B = bits/512 blocks; block = ⌊x·B/2^64⌋
    ///   where x = digest bytes 0..8 as a big-endian u64 (for B = 2^b: the
    ///   top b bits of the digest); slot j = 9-bit slice j of digest bytes
    ///   8..32 (see [`block_masks`]); position = block·512 + slot.
    /// - Plain + Sha256High: T = N-16 prefix bits (0 if N ≤ 16), R = N-T;
    ///   h1, h2 = high and low half of the little-endian u64 at bytes 8..16,
    ///   h2 forced odd;
    ///   position j = (prefix_T << R) | ((h1 + j·h2) mod 2^R).
    pub(crate) fn positions_of(&self, d: &[u8; 32]) -> Pos {
        let mut out = Pos {
            idx: [0; MAX_K as usize],
            len: 0,
        };
        let n = self.log2_bits;
        match (self.layout, self.hash) {
            (_, HashScheme::Sha256Low) => {
                // draft §9: "each SII is hashed using a crypto hash. Of the
                // results, the lowest N bits are selected."
                let [.., e0, e1, e2, e3, e4, e5, e6, e7] = *d;
                let low_n = (1u64 << n.min(63)) - 1;
                out.idx[0] = u64::from_be_bytes([e0, e1, e2, e3, e4, e5, e6, e7]) & low_n;
                out.len = 1;
            }
            (Layout::Blocked512, HashScheme::Sha256High) => {
                let base = block_of(d, self.blocks()) << BLOCK_LOG2;
                let mut src = tail_words(d);
                let k = usize::from(self.k.min(MAX_K));
                for (j, slot) in out.idx.iter_mut().take(k).enumerate() {
                    let word = &mut src[(j / 7) % 3];
                    *slot = base | (*word & 511);
                    *word >>= 9;
                }
                out.len = k;
            }
            (Layout::Plain, HashScheme::Sha256High) => {
                let r = n.min(PLAIN_REGION_LOG2);
                let base = prefix(d, n - r) << r;
                let mask = (1u32 << r) - 1;
                let (h1, h2) = plain_hashes(d);
                let mut h = h1;
                for j in 0..usize::from(self.k.min(MAX_K)) {
                    if let Some(slot) = out.idx.get_mut(j) {
                        *slot = base | u64::from(h & mask);
                    }
                    h = h.wrapping_add(h2);
                }
                out.len = usize::from(self.k.min(MAX_K));
            }
        }
        out
    }
}

/// Double-hashing seeds for Plain/High: the little-endian u64 at bytes
/// 8..16, high half h1, low half h2 (forced odd, so the k offsets are
/// distinct whenever k ≤ 2^R).
#[inline]
pub(crate) fn plain_hashes(d: &[u8; 32]) -> (u32, u32) {
    let w = tail_words(d)[0];
    ((w >> 32) as u32, (w as u32) | 1)
}

/// Which of 2^p_bits partitions a digest belongs to: its top `p_bits` bits.
/// `p_bits` above 32 is treated as 32.
pub fn partition_of(digest: &[u8; 32], p_bits: u8) -> u32 {
    prefix(digest, p_bits.min(32)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poisson_model_sums_to_one_and_has_mean_lambda() {
        for lambda in [0.5, 20.0, 1_000.0, 1e6, 1e15] {
            let total = poisson_expectation(lambda, |_| 1.0);
            let mean = poisson_expectation(lambda, |x| x);
            assert!((total - 1.0).abs() < 1e-3, "λ={lambda}: Σp = {total}");
            assert!(
                (mean / lambda - 1.0).abs() < 1e-3,
                "λ={lambda}: mean {mean}"
            );
        }
    }
}
