//! Binary encodings of a filter snapshot and of an additions batch.
//!
//! Snapshot (`GLF2`), all integers big-endian:
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0  | 4 | magic `b"GLF2"` |
//! | 4  | 1 | format version = 2 |
//! | 5  | 1 | layout (0 plain, 1 blocked512) |
//! | 6  | 1 | hash scheme (0 sha256-low, 1 sha256-high) |
//! | 7  | 1 | k |
//! | 8  | 1 | partition bits P |
//! | 9  | 3 | reserved, 0 |
//! | 12 | 8 | filter version |
//! | 20 | 8 | created_at_ms |
//! | 28 | 4 | partition index |
//! | 32 | 8 | m: bits in the whole filter (2^N for plain, 512·blocks for blocked) |
//! | 40 | 8 | bit count held here = m / 2^P |
//! | 48 | (m/2^P)/8 | bitmap: bit i = byte i/8, mask 1 << (i%8) |
//! | end-8 | 8 | first 8 bytes of SHA-256 of everything before |
//!
//! Format 3 is the same header with the bitmap replaced by the set bits:
//! their count (LEB128), then the first local bit offset and the gaps to
//! each next one (LEB128, gaps ≥ 1), as in an additions batch. A sparse
//! filter (a new GP sized for 50M SIIs is 62 MB of zeros) then costs a few
//! bytes on the wire; [`Filter::to_bytes_compact`] picks whichever of the
//! two is smaller. A sparse snapshot may declare at most
//! [`MAX_SPARSE_BITS`] bits, so a few bytes of input never make the
//! decoder allocate more than that.
//!
//! N (`log2_bits`) is not sent: it is ⌈log2 m⌉. Format 1 (`GLF1`, a log2
//! size byte instead of m) is refused with `UnsupportedFormat(1)`: peers
//! re-fetch a snapshot rather than guess at a size it cannot express.
//!
//! The checksum catches corruption in storage and transit (KV chunks);
//! authenticity comes from the signed GP-to-GP transport, not from here.
//!
//! Additions batch (`GLA1`): magic, format version = 1, filter version (u64
//! BE), count (LEB128), then the first index and the gaps to each next
//! index (LEB128, gaps ≥ 1: strictly ascending, no duplicates).

use super::{
    params, Filter, FilterError, FilterHeader, FilterParams, HashScheme, Layout, Partition,
};
use sha2::{Digest, Sha256};

const MAGIC: &[u8; 4] = b"GLF2";
const OLD_MAGIC: &[u8; 4] = b"GLF1";
const ADD_MAGIC: &[u8; 4] = b"GLA1";
const FORMAT: u8 = 2;
const SPARSE_FORMAT: u8 = 3;
/// Most bits a sparse (format 3) snapshot may declare: 2^28 bits (32 MiB),
/// the most of a filter one object may hold (ARCHITECTURE.md, "Own filter").
pub const MAX_SPARSE_BITS: u64 = 1 << 28;
const ADD_FORMAT: u8 = 1;
const HEADER_LEN: usize = 48;
const SUM_LEN: usize = 8;

fn checksum(bytes: &[u8]) -> [u8; SUM_LEN] {
    let h = Sha256::digest(bytes);
    let mut out = [0u8; SUM_LEN];
    for (o, b) in out.iter_mut().zip(h.iter()) {
        *o = *b;
    }
    out
}

/// Fixed-size big-endian readers over a slice already length-checked.
fn arr<const L: usize>(b: &[u8], at: usize) -> Result<[u8; L], FilterError> {
    let got = b.len();
    b.get(at..at + L)
        .and_then(|s| <[u8; L]>::try_from(s).ok())
        .ok_or(FilterError::Truncated {
            needed: at + L,
            got,
        })
}
fn byte(b: &[u8], at: usize) -> Result<u8, FilterError> {
    Ok(arr::<1>(b, at)?[0])
}

impl Filter {
    /// Encodes the snapshot densely, format 2 (see module docs).
    pub fn to_bytes(&self) -> Vec<u8> {
        let bitmap = self.bitmap_bytes();
        self.encode(FORMAT, &bitmap)
    }

    /// Encodes the snapshot as format 2 or 3, whichever is smaller: what
    /// goes over the wire between GPs.
    pub fn to_bytes_compact(&self) -> Vec<u8> {
        let dense_len = self.local_bits() / 8;
        // A set bit costs at least one byte sparse; only count when it may win.
        if self.count_ones() >= dense_len {
            return self.to_bytes();
        }
        let mut payload = Vec::new();
        put_varint(&mut payload, self.count_ones());
        put_ascending(
            &mut payload,
            self.words.iter().enumerate().flat_map(|(w, word)| {
                let mut x = *word;
                core::iter::from_fn(move || {
                    (x != 0).then(|| {
                        let at = (w as u64) * 64 + u64::from(x.trailing_zeros());
                        x &= x - 1;
                        at
                    })
                })
            }),
        );
        if (payload.len() as u64) < dense_len {
            self.encode(SPARSE_FORMAT, &payload)
        } else {
            self.to_bytes()
        }
    }

    fn encode(&self, format: u8, payload: &[u8]) -> Vec<u8> {
        let p = &self.header.params;
        let mut out = Vec::with_capacity(HEADER_LEN + payload.len() + SUM_LEN);
        out.extend_from_slice(MAGIC);
        out.push(format);
        out.push(p.layout.to_wire());
        out.push(p.hash.to_wire());
        out.push(p.k);
        out.push(self.part.bits);
        out.extend_from_slice(&[0, 0, 0]);
        out.extend_from_slice(&self.header.version.to_be_bytes());
        out.extend_from_slice(&self.header.created_at_ms.to_be_bytes());
        out.extend_from_slice(&self.part.index.to_be_bytes());
        out.extend_from_slice(&p.bits.to_be_bytes());
        out.extend_from_slice(&self.local_bits().to_be_bytes());
        out.extend_from_slice(payload);
        let sum = checksum(&out);
        out.extend_from_slice(&sum);
        out
    }

    /// Decodes a snapshot, refusing anything malformed: wrong magic or
    /// format, unknown or invalid params, a partition the params cannot
    /// have, a declared bit count that disagrees with the params or with
    /// the bytes present, a bad checksum. Never allocates more than the
    /// input's size and never panics.
    pub fn from_bytes(bytes: &[u8]) -> Result<Filter, FilterError> {
        let min = HEADER_LEN + 1 + SUM_LEN;
        if bytes.len() < min {
            return Err(FilterError::Truncated {
                needed: min,
                got: bytes.len(),
            });
        }
        let magic = arr::<4>(bytes, 0)?;
        if &magic == OLD_MAGIC {
            return Err(FilterError::UnsupportedFormat(1));
        }
        if &magic != MAGIC {
            return Err(FilterError::BadMagic);
        }
        let format = byte(bytes, 4)?;
        if format != FORMAT && format != SPARSE_FORMAT {
            return Err(FilterError::UnsupportedFormat(format));
        }
        if arr::<3>(bytes, 9)? != [0, 0, 0] {
            return Err(FilterError::ReservedNonZero);
        }
        let bits = u64::from_be_bytes(arr(bytes, 32)?);
        let params = FilterParams {
            layout: Layout::from_wire(byte(bytes, 5)?)?,
            hash: HashScheme::from_wire(byte(bytes, 6)?)?,
            log2_bits: params::ceil_log2(bits),
            bits,
            k: byte(bytes, 7)?,
        };
        params.validate()?;
        let part = Partition {
            bits: byte(bytes, 8)?,
            index: u32::from_be_bytes(arr(bytes, 28)?),
        };
        if part.bits > params.max_partition_bits() {
            return Err(FilterError::PartitionUnsupported {
                bits: part.bits,
                max: params.max_partition_bits(),
            });
        }
        if u64::from(part.index) >= 1u64 << part.bits {
            return Err(FilterError::PartitionOutOfRange {
                bits: part.bits,
                index: part.index,
            });
        }
        let expected_bits = params.bits >> part.bits;
        let declared = u64::from_be_bytes(arr(bytes, 40)?);
        if declared != expected_bits {
            return Err(FilterError::LengthMismatch {
                declared,
                actual: expected_bits,
            });
        }
        let payload_len = (bytes.len() - HEADER_LEN - SUM_LEN) as u64;
        if format == FORMAT && payload_len != declared / 8 {
            return Err(FilterError::LengthMismatch {
                declared: declared / 8,
                actual: payload_len,
            });
        }
        if format == SPARSE_FORMAT && declared > MAX_SPARSE_BITS {
            return Err(FilterError::TooLarge { bits: declared });
        }
        let body_end = bytes.len() - SUM_LEN;
        let (body, sum) = bytes.split_at(body_end);
        if checksum(body) != sum {
            return Err(FilterError::ChecksumMismatch);
        }
        let header = FilterHeader {
            version: u64::from_be_bytes(arr(bytes, 12)?),
            created_at_ms: u64::from_be_bytes(arr(bytes, 20)?),
            params,
        };
        let payload = body.get(HEADER_LEN..).unwrap_or(&[]);
        if format == FORMAT {
            return Filter::from_parts(header, part, payload);
        }
        let mut f = Filter::from_parts(header, part, &[])?;
        let mut at = 0;
        let count = get_varint(payload, &mut at)?;
        if count > payload_len || count > declared {
            return Err(FilterError::LengthMismatch {
                declared: count,
                actual: payload_len,
            });
        }
        for local in get_ascending(
            payload,
            &mut at,
            count,
            declared,
            "set bit beyond the partition",
        )? {
            f.set_local(local);
        }
        if at != payload.len() {
            return Err(FilterError::LengthMismatch {
                declared: at as u64,
                actual: payload.len() as u64,
            });
        }
        Ok(f)
    }
}

/// A decoded additions batch: 0→1 bit flips of one filter version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdditionsBatch {
    /// The filter version the indices belong to (draft §9: "These
    /// subscriptions are to a particular version of the bloom filter").
    pub version: u64,
    /// Global bit indices, strictly ascending.
    pub indices: Vec<u64>,
}

/// Writes strictly ascending values as the first one and the gaps to each
/// next (LEB128): additions batches, sparse snapshots, routing sections.
pub(crate) fn put_ascending(out: &mut Vec<u8>, values: impl Iterator<Item = u64>) {
    let mut prev = None;
    for v in values {
        put_varint(out, prev.map_or(v, |p| v - p));
        prev = Some(v);
    }
}

/// Reads `count` values written by [`put_ascending`], each below `limit`
/// (else the error `beyond`), refusing zero gaps (duplicates) and
/// overflow; `at` moves past them. Allocates at most one slot per
/// remaining input byte.
pub(crate) fn get_ascending(
    b: &[u8],
    at: &mut usize,
    count: u64,
    limit: u64,
    beyond: &'static str,
) -> Result<Vec<u64>, FilterError> {
    let remaining = b.len().saturating_sub(*at) as u64;
    if count > remaining {
        return Err(FilterError::LengthMismatch {
            declared: count,
            actual: remaining,
        });
    }
    let mut out = Vec::with_capacity(count as usize);
    let mut prev: Option<u64> = None;
    for _ in 0..count {
        let v = get_varint(b, at)?;
        let x = match prev {
            None => v,
            Some(_) if v == 0 => {
                return Err(FilterError::MalformedAdditions(
                    "indices not strictly ascending",
                ))
            }
            Some(p) => p
                .checked_add(v)
                .ok_or(FilterError::MalformedAdditions("index overflows"))?,
        };
        if x >= limit {
            return Err(FilterError::MalformedAdditions(beyond));
        }
        out.push(x);
        prev = Some(x);
    }
    Ok(out)
}

pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub(crate) fn get_varint(b: &[u8], at: &mut usize) -> Result<u64, FilterError> {
    let mut v = 0u64;
    for i in 0..10 {
        let byte = *b
            .get(*at)
            .ok_or(FilterError::MalformedAdditions("truncated varint"))?;
        *at += 1;
        let bits = u64::from(byte & 0x7f);
        if i == 9 && byte > 1 {
            return Err(FilterError::MalformedAdditions("varint overflows 64 bits"));
        }
        v |= bits << (7 * i);
        if byte & 0x80 == 0 {
            if i > 0 && byte == 0 {
                return Err(FilterError::MalformedAdditions("overlong varint"));
            }
            return Ok(v);
        }
    }
    Err(FilterError::MalformedAdditions(
        "varint longer than 10 bytes",
    ))
}

/// Encodes bit indices for one filter version; sorts and de-duplicates.
pub fn encode_additions(version: u64, indices: &[u64]) -> Vec<u8> {
    let mut sorted = indices.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out = Vec::with_capacity(16 + sorted.len() * 3);
    out.extend_from_slice(ADD_MAGIC);
    out.push(ADD_FORMAT);
    out.extend_from_slice(&version.to_be_bytes());
    put_varint(&mut out, sorted.len() as u64);
    put_ascending(&mut out, sorted.into_iter());
    out
}

/// Decodes an additions batch, refusing bad magic or format, malformed or
/// overlong varints, a count larger than the bytes can hold, zero gaps
/// (duplicates), indices beyond 2^40 and trailing bytes. Indices are not
/// checked against a particular filter here: [`Filter::apply`] does that.
pub fn decode_additions(bytes: &[u8]) -> Result<AdditionsBatch, FilterError> {
    let fixed = 4 + 1 + 8 + 1;
    if bytes.len() < fixed {
        return Err(FilterError::Truncated {
            needed: fixed,
            got: bytes.len(),
        });
    }
    if &arr::<4>(bytes, 0)? != ADD_MAGIC {
        return Err(FilterError::BadMagic);
    }
    let format = byte(bytes, 4)?;
    if format != ADD_FORMAT {
        return Err(FilterError::UnsupportedFormat(format));
    }
    let version = u64::from_be_bytes(arr(bytes, 5)?);
    let mut at = 13;
    let count = get_varint(bytes, &mut at)?;
    let indices = get_ascending(
        bytes,
        &mut at,
        count,
        1u64 << super::MAX_LOG2_BITS,
        "index beyond 2^40",
    )?;
    if at != bytes.len() {
        return Err(FilterError::LengthMismatch {
            declared: at as u64,
            actual: bytes.len() as u64,
        });
    }
    Ok(AdditionsBatch { version, indices })
}
