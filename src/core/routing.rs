//! The routing table (draft §8.1: "it next examines the routing tables
//! built from the inter-GP protocols"): every peer's filter cut into 2^r
//! routing partitions, so that everything one query needs from every peer
//! is one stored value (ARCHITECTURE.md, "Routing table").
//!
//! A routing partition `p` holds one *section* per peer: the bits of that
//! peer's filter that a digest keyed to `p` can touch.
//!
//! - Prefix-positioned filters (blocked, plain): `p` is the digest's top r
//!   bits ([`prefix_key`]). Blocks and regions are in prefix order, so the
//!   section is one bit range: about blocks/2^r blocks (plus one where a
//!   block straddles two partitions; a small filter's one block is in many
//!   partitions).
//! - The draft's k = 1 low-bits scheme: its one position is a bit index, so
//!   it is cut by bit index: `p` is the index's low r bits
//!   ([`residue_key`], the digest's low r bits), and the section holds the
//!   bits p, p + 2^r, p + 2·2^r, … A query then reads that partition too.
//!
//! Sections are stored dense or sparse, whichever is smaller; the value
//! format (`GLR1`) is in [`RoutingValue`]. Each bit of a peer's filter
//! has one *canonical* partition (the lowest holding it), so per-partition
//! counts of newly set bits add up to the peer's exact count.

use crate::core::filter::{
    get_ascending, get_varint, put_ascending, put_varint, FilterError, FilterParams, HashScheme,
    Layout, BLOCK_LOG2,
};
use sha2::{Digest, Sha256};

/// Most routing-partition bits: 2^24 values (16M keys).
pub const MAX_PARTITION_BITS: u8 = 24;

/// How a peer's filter is keyed to routing partitions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keying {
    /// By the digest's top bits (blocked and plain filters).
    Prefix,
    /// By the bit index's low bits (the draft's k = 1 low-bits scheme).
    Residue,
}

/// How `params`' filter is keyed.
pub fn keying(params: &FilterParams) -> Keying {
    match params.hash {
        HashScheme::Sha256High => Keying::Prefix,
        HashScheme::Sha256Low => Keying::Residue,
    }
}

/// x's top r bits (0 when r = 0).
fn top(x: u64, r: u8) -> u64 {
    if r == 0 {
        0
    } else {
        x >> (64 - u32::from(r.min(64)))
    }
}

/// The partition of a digest for prefix-keyed sections: its top r bits.
pub fn prefix_key(d: &[u8; 32], r: u8) -> u32 {
    let [a0, a1, a2, a3, a4, a5, a6, a7, ..] = *d;
    top(
        u64::from_be_bytes([a0, a1, a2, a3, a4, a5, a6, a7]),
        r.min(MAX_PARTITION_BITS),
    ) as u32
}

/// The partition of a digest for residue-keyed sections: the low r bits of
/// its last 8 bytes (big-endian), which are the low r bits of the draft's
/// bit index for every N ≥ r.
pub fn residue_key(d: &[u8; 32], r: u8) -> u32 {
    let [.., e0, e1, e2, e3, e4, e5, e6, e7] = *d;
    let low = u64::from_be_bytes([e0, e1, e2, e3, e4, e5, e6, e7]);
    (low & ((1u64 << r.min(MAX_PARTITION_BITS)) - 1)) as u32
}

/// The partition holding a digest's section of a filter keyed `k`.
pub fn key_of(d: &[u8; 32], r: u8, k: Keying) -> u32 {
    match k {
        Keying::Prefix => prefix_key(d, r),
        Keying::Residue => residue_key(d, r),
    }
}

/// A set of routing partitions: `count` of them from `first`, `step` apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartSet {
    pub first: u32,
    pub step: u32,
    pub count: u32,
}

impl PartSet {
    fn one(p: u64) -> PartSet {
        PartSet {
            first: p as u32,
            step: 1,
            count: 1,
        }
    }
    /// The partitions, in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.count).map(move |i| self.first + i * self.step)
    }
    /// Whether `p` is one of them.
    pub fn contains(&self, p: u32) -> bool {
        p >= self.first
            && (p - self.first).is_multiple_of(self.step.max(1))
            && (p - self.first) / self.step.max(1) < self.count
    }
}

/// The partitions whose section of a `params` filter holds global bit
/// `bit` (None if the bit is out of range or r too large). Its first
/// partition is the bit's canonical one.
pub fn partitions_of_bit(params: &FilterParams, r: u8, bit: u64) -> Option<PartSet> {
    if bit >= params.bits || r > MAX_PARTITION_BITS {
        return None;
    }
    let n = params.log2_bits;
    Some(match (params.layout, params.hash) {
        (_, HashScheme::Sha256Low) => {
            if n >= r {
                PartSet::one(bit & ((1u64 << r) - 1))
            } else {
                PartSet {
                    first: bit as u32,
                    step: 1u32 << n,
                    count: 1u32 << (r - n),
                }
            }
        }
        (Layout::Blocked512, HashScheme::Sha256High) => {
            let blocks = u128::from(params.blocks());
            let b = u128::from(bit >> BLOCK_LOG2);
            // Digests in this block: prefix64 in [⌈b·2^64/B⌉, ⌈(b+1)·2^64/B⌉).
            let lo = ((b << 64).div_ceil(blocks)) as u64;
            let hi = (((b + 1) << 64).div_ceil(blocks) - 1).min(u128::from(u64::MAX)) as u64;
            let (plo, phi) = (top(lo, r), top(hi, r));
            PartSet {
                first: plo as u32,
                step: 1,
                count: (phi - plo + 1) as u32,
            }
        }
        (Layout::Plain, HashScheme::Sha256High) => {
            let rr = n.min(crate::core::filter::PLAIN_REGION_LOG2);
            let t = n - rr;
            let g = bit >> rr;
            if t >= r {
                PartSet::one(g >> (t - r))
            } else {
                PartSet {
                    first: (g << (r - t)) as u32,
                    step: 1,
                    count: 1u32 << (r - t),
                }
            }
        }
    })
}

/// Which bits of a peer's filter one section holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// Global bits `first .. first + len`.
    Range { first: u64, len: u64 },
    /// Global bits `residue + j·2^stride_log2` for j in `0..count`.
    Stride {
        residue: u64,
        stride_log2: u8,
        count: u64,
    },
}

impl Shape {
    /// The section of a `params` filter in partition `p` of 2^r.
    pub fn of(params: &FilterParams, r: u8, p: u32) -> Shape {
        let n = params.log2_bits;
        let p = u64::from(p);
        match (params.layout, params.hash) {
            (_, HashScheme::Sha256Low) => {
                let s = n.min(r);
                Shape::Stride {
                    residue: p & ((1u64 << s) - 1),
                    stride_log2: s,
                    count: 1u64 << (n - s),
                }
            }
            (Layout::Blocked512, HashScheme::Sha256High) => {
                let blocks = params.blocks();
                let span = if r == 0 { u64::MAX } else { u64::MAX >> r };
                let lo = if r == 0 { 0 } else { p << (64 - r) };
                let hi = lo.saturating_add(span);
                let (b0, b1) = (
                    crate::core::filter::block_of_prefix(lo, blocks),
                    crate::core::filter::block_of_prefix(hi, blocks),
                );
                Shape::Range {
                    first: b0 << BLOCK_LOG2,
                    len: (b1 - b0 + 1) << BLOCK_LOG2,
                }
            }
            (Layout::Plain, HashScheme::Sha256High) => {
                let rr = n.min(crate::core::filter::PLAIN_REGION_LOG2);
                let t = n - rr;
                if t >= r {
                    Shape::Range {
                        first: (p << (t - r)) << rr,
                        len: (1u64 << (t - r)) << rr,
                    }
                } else {
                    Shape::Range {
                        first: (p >> (r - t)) << rr,
                        len: 1u64 << rr,
                    }
                }
            }
        }
    }

    /// Bits held.
    pub fn len(&self) -> u64 {
        match *self {
            Shape::Range { len, .. } => len,
            Shape::Stride { count, .. } => count,
        }
    }

    /// Whether the section holds no bits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The section-local offset of global bit `bit`, if held here.
    pub fn local(&self, bit: u64) -> Option<u64> {
        match *self {
            Shape::Range { first, len } => bit.checked_sub(first).filter(|o| *o < len),
            Shape::Stride {
                residue,
                stride_log2,
                count,
            } => {
                let off = bit.checked_sub(residue)?;
                let mask = (1u64 << stride_log2) - 1;
                (off & mask == 0 && (off >> stride_log2) < count).then_some(off >> stride_log2)
            }
        }
    }

    /// The global bit of section-local offset `local`.
    pub fn global(&self, local: u64) -> u64 {
        match *self {
            Shape::Range { first, .. } => first + local,
            Shape::Stride {
                residue,
                stride_log2,
                ..
            } => residue + (local << stride_log2),
        }
    }
}

/// A section's bits: dense words, or the sorted set offsets while sparse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bits {
    Dense(Vec<u64>),
    Sparse(Vec<u64>),
}

impl Bits {
    fn words_for(len: u64) -> usize {
        len.div_ceil(64) as usize
    }

    /// Bytes this takes in memory (the isolate's routing budget counts it).
    pub fn heap_bytes(&self) -> usize {
        match self {
            Bits::Dense(w) | Bits::Sparse(w) => w.len() * 8,
        }
    }

    fn get(&self, local: u64) -> bool {
        match self {
            Bits::Dense(w) => w
                .get((local >> 6) as usize)
                .is_some_and(|x| x & (1u64 << (local & 63)) != 0),
            Bits::Sparse(s) => s.binary_search(&local).is_ok(),
        }
    }

    /// Sets a bit; true if it was 0. A sparse set turns dense once it would
    /// be larger than the dense words.
    fn set(&mut self, local: u64, len: u64) -> bool {
        match self {
            Bits::Dense(w) => match w.get_mut((local >> 6) as usize) {
                Some(x) => {
                    let m = 1u64 << (local & 63);
                    let was0 = *x & m == 0;
                    *x |= m;
                    was0
                }
                None => false,
            },
            Bits::Sparse(s) => match s.binary_search(&local) {
                Ok(_) => false,
                Err(at) => {
                    s.insert(at, local);
                    if s.len() * 8 > Self::words_for(len) * 8 / 4 {
                        self.densify(len);
                    }
                    true
                }
            },
        }
    }

    fn densify(&mut self, len: u64) {
        if let Bits::Sparse(s) = self {
            let mut w = vec![0u64; Self::words_for(len)];
            for &b in s.iter() {
                if let Some(x) = w.get_mut((b >> 6) as usize) {
                    *x |= 1u64 << (b & 63);
                }
            }
            *self = Bits::Dense(w);
        }
    }

    /// Number of set bits.
    pub fn count_ones(&self) -> u64 {
        match self {
            Bits::Dense(w) => w.iter().map(|x| u64::from(x.count_ones())).sum(),
            Bits::Sparse(s) => s.len() as u64,
        }
    }

    /// Set offsets in `lo..hi`, counted.
    fn count_in(&self, lo: u64, hi: u64) -> u64 {
        match self {
            Bits::Sparse(s) => s.iter().filter(|&&b| b >= lo && b < hi).count() as u64,
            Bits::Dense(w) => {
                let mut n = 0;
                let mut b = lo;
                while b < hi {
                    let wi = (b >> 6) as usize;
                    let x = w.get(wi).copied().unwrap_or(0);
                    let start = b & 63;
                    let end = (hi - (b - start)).min(64);
                    let mut m = if end == 64 {
                        u64::MAX
                    } else {
                        (1u64 << end) - 1
                    };
                    m &= u64::MAX << start;
                    n += u64::from((x & m).count_ones());
                    b = b - start + 64;
                }
                n
            }
        }
    }
}

/// One peer's bits in one routing partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Section {
    pub peer: String,
    /// The peer's filter version these bits belong to.
    pub version: u64,
    pub params: FilterParams,
    pub shape: Shape,
    pub bits: Bits,
    /// Section-local offsets `canonical.0 .. canonical.1` are the bits
    /// whose canonical partition is this one.
    canonical: (u64, u64),
}

impl Section {
    /// An empty section of `peer`'s filter (version, params) in partition
    /// `p` of 2^r. Params must be valid and r ≤ [`MAX_PARTITION_BITS`].
    pub fn new(peer: &str, version: u64, params: FilterParams, r: u8, p: u32) -> Section {
        let shape = Shape::of(&params, r, p);
        let canonical = canonical_range(&params, r, p, &shape);
        Section {
            peer: peer.to_string(),
            version,
            params,
            shape,
            bits: Bits::Sparse(Vec::new()),
            canonical,
        }
    }

    /// Whether global bit `bit` is set; None if this section does not hold it.
    pub fn get(&self, bit: u64) -> Option<bool> {
        self.shape.local(bit).map(|l| self.bits.get(l))
    }

    /// Sets global bit `bit`: Some(true) if it was 0 and this is its
    /// canonical partition, Some(false) if it was set or is counted
    /// elsewhere, None if this section does not hold it.
    pub fn set(&mut self, bit: u64) -> Option<bool> {
        let l = self.shape.local(bit)?;
        let new = self.bits.set(l, self.shape.len());
        Some(new && l >= self.canonical.0 && l < self.canonical.1)
    }

    /// Sets every listed global bit this section holds; returns how many
    /// were newly set in their canonical partition.
    pub fn set_all(&mut self, bits: &[u64]) -> u64 {
        bits.iter().filter(|&&b| self.set(b) == Some(true)).count() as u64
    }

    /// ORs in a dense bitmap of global bits `first_bit ..` (byte i/8, mask
    /// 1 << i%8, as [`Filter::bitmap_bytes`](crate::core::filter::Filter::bitmap_bytes));
    /// returns how many bits were newly set in their canonical partition.
    pub fn apply_bitmap(&mut self, first_bit: u64, bitmap: &[u8]) -> u64 {
        let end = first_bit.saturating_add(bitmap.len() as u64 * 8);
        let mut new = 0;
        match self.shape {
            Shape::Range { first, len } => {
                let lo = first.max(first_bit);
                let hi = (first + len).min(end);
                // Whole source bytes, set bits only.
                let mut g = lo;
                while g < hi {
                    let byte = bitmap
                        .get(((g - first_bit) / 8) as usize)
                        .copied()
                        .unwrap_or(0);
                    let bit_in = (g - first_bit) % 8;
                    if bit_in == 0 && byte == 0 && g + 8 <= hi {
                        g += 8;
                        continue;
                    }
                    if byte & (1 << bit_in) != 0 && self.set(g) == Some(true) {
                        new += 1;
                    }
                    g += 1;
                }
            }
            Shape::Stride { .. } => {
                for (i, &byte) in bitmap.iter().enumerate() {
                    let mut x = byte;
                    while x != 0 {
                        let g = first_bit + i as u64 * 8 + u64::from(x.trailing_zeros());
                        if self.set(g) == Some(true) {
                            new += 1;
                        }
                        x &= x - 1;
                    }
                }
            }
        }
        new
    }

    /// Set bits whose canonical partition is this one.
    pub fn canonical_ones(&self) -> u64 {
        self.bits.count_in(self.canonical.0, self.canonical.1)
    }

    /// Whether the peer may hold the SII with this digest (all its
    /// positions set); None if the digest's positions are not all in this
    /// section (the wrong partition was read).
    pub fn may_hold(&self, d: &[u8; 32]) -> Option<bool> {
        let pos = self.params.positions_of(d);
        let mut all = true;
        for &g in pos.idx.get(..pos.len)? {
            all &= self.get(g)?;
        }
        Some(all)
    }

    /// Heap bytes (for the isolate's budget).
    pub fn heap_bytes(&self) -> usize {
        self.bits.heap_bytes() + self.peer.len() + core::mem::size_of::<Section>()
    }
}

/// Section-local offsets of the bits whose canonical (lowest) partition
/// is `p`: for ranges, the part not already in partition p-1's section.
fn canonical_range(params: &FilterParams, r: u8, p: u32, shape: &Shape) -> (u64, u64) {
    let len = shape.len();
    match *shape {
        Shape::Stride { .. } => {
            // With N < r a bit is in 2^(r-N) partitions; the lowest is < 2^N.
            if u64::from(p) < 1u64 << params.log2_bits.min(63) {
                (0, len)
            } else {
                (0, 0)
            }
        }
        Shape::Range { first, .. } => {
            if p == 0 {
                return (0, len);
            }
            match Shape::of(params, r, p - 1) {
                Shape::Range { first: pf, len: pl } => {
                    let prev_end = pf + pl;
                    (prev_end.saturating_sub(first).min(len), len)
                }
                Shape::Stride { .. } => (0, len),
            }
        }
    }
}

/// One routing partition's value: every peer's section for it.
///
/// Wire format (`GLR1`), integers big-endian:
///
/// | size | field |
/// |-----:|-------|
/// | 4 | magic `b"GLR1"` |
/// | 1 | format = 1 |
/// | 1 | r |
/// | 2 | reserved, 0 |
/// | 4 | partition p |
/// | 8 | written_ms (when the writer produced it) |
/// | 2 | section count n |
/// | per section | id length (1..=255), id (UTF-8), version u64, filter bits m u64, k u8, layout u8, hash u8, encoding u8 (0 dense words LE, 1 sparse LEB128 offsets), payload length u32 |
/// | … | the payloads, in section order |
/// | 8 | first 8 bytes of SHA-256 of everything before |
///
/// The shape of each section follows from (params, r, p), so it is not
/// sent; the decoder checks each payload against it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutingValue {
    pub r: u8,
    pub p: u32,
    pub written_ms: u64,
    pub sections: Vec<Section>,
}

const MAGIC: &[u8; 4] = b"GLR1";

/// Why a routing value does not decode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ValueError {
    Truncated,
    BadMagic,
    UnsupportedFormat(u8),
    ChecksumMismatch,
    /// Bad section parameters or a malformed set-bit list.
    Params(FilterError),
    BadSection(&'static str),
}

impl core::fmt::Display for ValueError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ValueError::Truncated => write!(f, "routing value truncated"),
            ValueError::BadMagic => write!(f, "not a GLR1 routing value"),
            ValueError::UnsupportedFormat(v) => write!(f, "routing value format {v} unknown"),
            ValueError::ChecksumMismatch => write!(f, "routing value checksum mismatch"),
            ValueError::Params(e) => write!(f, "routing value section params: {e}"),
            ValueError::BadSection(why) => write!(f, "routing value section: {why}"),
        }
    }
}

/// About how many bytes one routing value holds for peers whose filters
/// have `(bits, bits_set)` each, at 2^r partitions: per peer the smaller of
/// its dense section (at least one 512-bit block: a small filter's block
/// is in many partitions) and its sparse one (about 3 bytes a set bit),
/// plus a section header. The capacity check of `/v1/gp` and the cron
/// (ARCHITECTURE.md, "Routing table"): a value must fit KV (25 MiB) and
/// the isolate's budget must hold two of them (the partition a query reads
/// and the one it keeps).
pub fn value_bytes_estimate(peers: impl IntoIterator<Item = (u64, u64)>, r: u8) -> u64 {
    peers
        .into_iter()
        .map(|(bits, set)| section_bytes_estimate(bits, set, r).saturating_add(64))
        .fold(16, u64::saturating_add)
}

/// About how many bytes one peer's section of a routing partition takes
/// (see [`value_bytes_estimate`]; without its header).
pub fn section_bytes_estimate(bits: u64, set: u64, r: u8) -> u64 {
    let r = r.min(MAX_PARTITION_BITS);
    let section = (bits >> r).max(1 << BLOCK_LOG2).min(bits.max(1));
    let section_set = (u128::from(set) * u128::from(section) / u128::from(bits.max(1)))
        .min(u128::from(u64::MAX)) as u64;
    let dense = section.div_ceil(8);
    let sparse = section_set.saturating_mul(3).saturating_add(8);
    dense.min(sparse)
}

/// A section's payload: (encoding, bytes), whichever of dense or sparse is smaller.
pub fn encode_bits(bits: &Bits, len: u64) -> (u8, Vec<u8>) {
    let dense_len = Bits::words_for(len) * 8;
    let n = bits.count_ones();
    // A set bit costs at least a byte sparse: only try when it may win.
    if (n as usize) < dense_len {
        let mut sparse = Vec::new();
        put_varint(&mut sparse, n);
        match bits {
            Bits::Sparse(s) => put_ascending(&mut sparse, s.iter().copied()),
            Bits::Dense(w) => put_ascending(&mut sparse, set_bits(w)),
        }
        if sparse.len() < dense_len {
            return (1, sparse);
        }
    }
    let mut dense = Vec::with_capacity(dense_len);
    match bits {
        Bits::Dense(w) => {
            for x in w {
                dense.extend_from_slice(&x.to_le_bytes());
            }
        }
        Bits::Sparse(_) => {
            let mut d = bits.clone();
            d.densify(len);
            if let Bits::Dense(w) = d {
                for x in w {
                    dense.extend_from_slice(&x.to_le_bytes());
                }
            }
        }
    }
    dense.resize(dense_len, 0);
    (0, dense)
}

/// The set bits of dense words, ascending.
fn set_bits(w: &[u64]) -> impl Iterator<Item = u64> + '_ {
    w.iter().enumerate().flat_map(|(i, word)| {
        let mut x = *word;
        core::iter::from_fn(move || {
            (x != 0).then(|| {
                let b = i as u64 * 64 + u64::from(x.trailing_zeros());
                x &= x - 1;
                b
            })
        })
    })
}

/// Reads a section payload written by [`encode_bits`] for a section of `len` bits.
pub fn decode_bits(enc: u8, payload: &[u8], len: u64) -> Result<Bits, ValueError> {
    match enc {
        0 => {
            if payload.len() != Bits::words_for(len) * 8 {
                return Err(ValueError::BadSection("dense payload length"));
            }
            let w = payload
                .chunks_exact(8)
                .map(|c| {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(c);
                    u64::from_le_bytes(b)
                })
                .collect();
            Ok(Bits::Dense(w))
        }
        1 => {
            let mut at = 0;
            let n = get_varint(payload, &mut at).map_err(ValueError::Params)?;
            if n > len {
                return Err(ValueError::BadSection("sparse count"));
            }
            let out = get_ascending(payload, &mut at, n, len, "bit beyond the section")
                .map_err(ValueError::Params)?;
            if at != payload.len() {
                return Err(ValueError::BadSection("trailing bytes"));
            }
            Ok(Bits::Sparse(out))
        }
        _ => Err(ValueError::BadSection("unknown encoding")),
    }
}

fn checksum(bytes: &[u8]) -> [u8; 8] {
    let h = Sha256::digest(bytes);
    let mut out = [0u8; 8];
    out.copy_from_slice(&h[..8]);
    out
}

impl RoutingValue {
    /// Encodes the value (see the type's docs). Sections whose peer id is
    /// empty or longer than 255 bytes, or beyond 65,535 sections, are left
    /// out (config validation keeps ids to that).
    pub fn encode(&self) -> Vec<u8> {
        let sections: Vec<&Section> = self
            .sections
            .iter()
            .filter(|s| (1..=255).contains(&s.peer.len()))
            .take(usize::from(u16::MAX))
            .collect();
        let payloads: Vec<(u8, Vec<u8>)> = sections
            .iter()
            .map(|s| encode_bits(&s.bits, s.shape.len()))
            .collect();
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.push(1);
        out.push(self.r);
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&self.p.to_be_bytes());
        out.extend_from_slice(&self.written_ms.to_be_bytes());
        out.extend_from_slice(&(sections.len() as u16).to_be_bytes());
        for (s, (enc, payload)) in sections.iter().zip(&payloads) {
            out.push(s.peer.len() as u8);
            out.extend_from_slice(s.peer.as_bytes());
            out.extend_from_slice(&s.version.to_be_bytes());
            out.extend_from_slice(&s.params.bits.to_be_bytes());
            out.push(s.params.k);
            out.push(s.params.layout.to_wire());
            out.push(s.params.hash.to_wire());
            out.push(*enc);
            out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        }
        for (_, payload) in &payloads {
            out.extend_from_slice(payload);
        }
        let sum = checksum(&out);
        out.extend_from_slice(&sum);
        out
    }

    /// Decodes a value, refusing anything malformed; never panics.
    pub fn decode(bytes: &[u8]) -> Result<RoutingValue, ValueError> {
        if bytes.len() < 22 + 8 {
            return Err(ValueError::Truncated);
        }
        let (body, sum) = bytes.split_at(bytes.len() - 8);
        if body.get(..4) != Some(MAGIC.as_slice()) {
            return Err(ValueError::BadMagic);
        }
        if checksum(body) != sum {
            return Err(ValueError::ChecksumMismatch);
        }
        let mut at = 4;
        let mut take = |n: usize| -> Result<&[u8], ValueError> {
            let s = body.get(at..at + n).ok_or(ValueError::Truncated)?;
            at += n;
            Ok(s)
        };
        let be = |s: &[u8]| s.iter().fold(0u64, |a, &b| (a << 8) | u64::from(b));
        let format = take(1)?[0];
        if format != 1 {
            return Err(ValueError::UnsupportedFormat(format));
        }
        let r = take(1)?[0];
        if r > MAX_PARTITION_BITS {
            return Err(ValueError::BadSection("r beyond 24"));
        }
        if take(2)? != [0, 0] {
            return Err(ValueError::BadSection("reserved bytes"));
        }
        let p = be(take(4)?) as u32;
        if u64::from(p) >= 1u64 << r {
            return Err(ValueError::BadSection("partition beyond 2^r"));
        }
        let written_ms = be(take(8)?);
        let n = be(take(2)?) as usize;
        let mut heads = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            let idlen = take(1)?[0] as usize;
            if idlen == 0 {
                return Err(ValueError::BadSection("empty peer id"));
            }
            let peer = core::str::from_utf8(take(idlen)?)
                .map_err(|_| ValueError::BadSection("peer id not UTF-8"))?
                .to_string();
            let version = be(take(8)?);
            let bits = be(take(8)?);
            let k = take(1)?[0];
            let layout = Layout::from_wire(take(1)?[0]).map_err(ValueError::Params)?;
            let hash = HashScheme::from_wire(take(1)?[0]).map_err(ValueError::Params)?;
            let enc = take(1)?[0];
            let plen = be(take(4)?) as usize;
            let params = FilterParams {
                log2_bits: crate::core::filter::ceil_log2_bits(bits),
                bits,
                k,
                layout,
                hash,
            };
            params.validate().map_err(ValueError::Params)?;
            heads.push((peer, version, params, enc, plen));
        }
        let mut sections = Vec::with_capacity(heads.len());
        for (peer, version, params, enc, plen) in heads {
            let payload = take(plen)?;
            let mut s = Section::new(&peer, version, params, r, p);
            s.bits = decode_bits(enc, payload, s.shape.len())?;
            sections.push(s);
        }
        if at != body.len() {
            return Err(ValueError::BadSection("trailing bytes"));
        }
        Ok(RoutingValue {
            r,
            p,
            written_ms,
            sections,
        })
    }

    /// Heap bytes (for the isolate's budget).
    pub fn heap_bytes(&self) -> usize {
        self.sections.iter().map(Section::heap_bytes).sum::<usize>()
            + core::mem::size_of::<RoutingValue>()
    }
}

#[cfg(test)]
mod tests;
