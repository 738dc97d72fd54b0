//! Everything that can be wrong with a filter, its params or its encoding.

use crate::core::Problem;
use core::fmt;

/// A filter, its parameters, an additions list or an encoding was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FilterError {
    /// Plain layout: log2_bits outside 3..=40.
    Log2BitsOutOfRange(u8),
    /// k outside 1..=16.
    KOutOfRange(u8),
    /// Blocked layout: bits must be a positive multiple of 512, at most 2^40.
    BlockedBits(u64),
    /// log2_bits and bits disagree (Plain: bits = 2^log2_bits; Blocked512:
    /// log2_bits = ⌈log2 bits⌉).
    SizeMismatch { log2_bits: u8, bits: u64 },
    /// The draft's low-bits hash is only defined for k = 1, Plain.
    LowHashNeedsPlainK1,
    /// The bits cannot be held in memory here.
    TooLarge { bits: u64 },
    /// Target false-positive rate not strictly between 0 and 1.
    InvalidTarget,
    /// A bit index outside the bits this filter (partition) holds.
    BitOutOfRange { index: u64, first: u64, len: u64 },
    /// Two filters of different params or partitions were compared.
    ParamsMismatch,
    /// This filter cannot be cut into 2^bits partitions.
    PartitionUnsupported { bits: u8, max: u8 },
    /// Partition index not in 0..2^bits, or not inside this filter.
    PartitionOutOfRange { bits: u8, index: u32 },
    /// Encoding shorter than its fixed parts.
    Truncated { needed: usize, got: usize },
    /// Encoding does not start with the expected magic.
    BadMagic,
    /// Encoding format version we do not know.
    UnsupportedFormat(u8),
    /// Reserved header bits not zero.
    ReservedNonZero,
    /// Layout byte we do not know.
    UnknownLayout(u8),
    /// Hash scheme byte we do not know.
    UnknownHashScheme(u8),
    /// Declared size disagrees with the params or the bytes present.
    LengthMismatch { declared: u64, actual: u64 },
    /// Checksum does not match the content.
    ChecksumMismatch,
    /// An additions list is not strictly ascending or a varint is malformed.
    MalformedAdditions(&'static str),
}

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use FilterError::*;
        match self {
            Log2BitsOutOfRange(n) => write!(f, "filter size 2^{n} bits is outside 2^3..=2^40"),
            KOutOfRange(k) => write!(f, "k = {k} hash positions is outside 1..=16"),
            BlockedBits(b) => write!(
                f,
                "a blocked filter's size must be a positive multiple of 512 bits \
                 (whole blocks) up to 2^40, got {b} bits"
            ),
            SizeMismatch { log2_bits, bits } => write!(
                f,
                "filter size {bits} bits does not match log2 size {log2_bits}"
            ),
            LowHashNeedsPlainK1 => write!(
                f,
                "the draft's low-bits hash scheme is only defined for k = 1 and the plain layout"
            ),
            TooLarge { bits } => {
                write!(f, "a filter of {bits} bits cannot be allocated here")
            }
            InvalidTarget => write!(
                f,
                "target false-positive rate must be strictly between 0 and 1"
            ),
            BitOutOfRange { index, first, len } => write!(
                f,
                "bit index {index} is outside this filter's bits {first}..{}",
                first.saturating_add(*len)
            ),
            ParamsMismatch => write!(f, "filters have different parameters or partitions"),
            PartitionUnsupported { bits, max } => write!(
                f,
                "this filter can be cut into at most 2^{max} partitions, not 2^{bits}"
            ),
            PartitionOutOfRange { bits, index } => write!(
                f,
                "partition {index} of 2^{bits} is out of range or not held by this filter"
            ),
            Truncated { needed, got } => {
                write!(f, "encoding too short: need {needed} bytes, got {got}")
            }
            BadMagic => write!(f, "encoding does not start with the expected magic bytes"),
            UnsupportedFormat(v) => write!(f, "encoding format version {v} is not supported"),
            ReservedNonZero => write!(f, "reserved header bytes are not zero"),
            UnknownLayout(b) => write!(f, "unknown filter layout {b}"),
            UnknownHashScheme(b) => write!(f, "unknown filter hash scheme {b}"),
            LengthMismatch { declared, actual } => write!(
                f,
                "declared size {declared} disagrees with the actual size {actual}"
            ),
            ChecksumMismatch => write!(f, "checksum does not match the filter's content"),
            MalformedAdditions(why) => write!(f, "malformed additions list: {why}"),
        }
    }
}

impl std::error::Error for FilterError {}

impl Problem for FilterError {
    fn slug(&self) -> &'static str {
        "invalid-filter"
    }
    fn title(&self) -> &'static str {
        "Invalid routing filter"
    }
    /// Unreadable bytes are a bad request (400); well-formed input that does
    /// not fit this filter is unprocessable (422).
    fn status(&self) -> u16 {
        use FilterError::*;
        match self {
            Truncated { .. }
            | BadMagic
            | UnsupportedFormat(_)
            | ReservedNonZero
            | UnknownLayout(_)
            | UnknownHashScheme(_)
            | LengthMismatch { .. }
            | ChecksumMismatch
            | MalformedAdditions(_) => 400,
            _ => 422,
        }
    }
}
