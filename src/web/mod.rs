//! Browser bindings for the filter inspector (issue 7; `assets/inspector/`).
//!
//! The page runs the very filter code the GP and its peers run, so what it
//! shows is what routing does: the same SII normalization and hash
//! ([`Sii::parse`], [`Sii::hash`]), the same bit positions, the same
//! verdict. This module only converts types for JavaScript; every rule
//! lives in `crate::core`. Numbers that may exceed 32 bits (bit indices,
//! versions, times) cross as `f64`: exact below 2^53, and filters stop at
//! 2^40 bits.

use crate::core::filter::{Filter, HashScheme, Layout};
use crate::core::sii::Sii;
use crate::core::Problem;
use wasm_bindgen::prelude::*;

/// The inspector's result texts, shared with the page and its test.
/// draft §8.1: a GP's routing table says an SII "might exist, or
/// definitively does not exist" on another GP.
pub const VERDICT_NOT: &str = "definitely not on this GP";
/// See [`VERDICT_NOT`]: a Bloom filter can only say "maybe".
pub const VERDICT_MAY: &str = "may be on this GP";
/// A partition's filter does not say anything about SIIs it does not cover.
pub const VERDICT_NOT_COVERED: &str = "not covered by this partition";

/// A decoded filter snapshot (GLF2) and the views the page draws.
#[wasm_bindgen]
pub struct InspectedFilter {
    filter: Filter,
}

#[wasm_bindgen]
impl InspectedFilter {
    /// Decodes a snapshot; a malformed one throws an `Error` whose message
    /// is the core's (the same text the GP's API puts in a problem's
    /// `detail`).
    #[wasm_bindgen(constructor)]
    pub fn new(bytes: &[u8]) -> Result<InspectedFilter, JsError> {
        Filter::from_bytes(bytes)
            .map(|filter| InspectedFilter { filter })
            .map_err(|e| JsError::new(&format!("{}: {e}", e.title())))
    }

    /// Filter version (draft §9: filters "are versioned").
    #[wasm_bindgen(getter)]
    pub fn version(&self) -> f64 {
        self.filter.header().version as f64
    }
    /// Creation time, ms since the Unix epoch (draft §9: "Each bloom filter
    /// has a timestamp, corresponding to the time of creation on the GP").
    #[wasm_bindgen(getter, js_name = createdAtMs)]
    pub fn created_at_ms(&self) -> f64 {
        self.filter.header().created_at_ms as f64
    }
    /// Bits in the whole logical filter.
    #[wasm_bindgen(getter)]
    pub fn bits(&self) -> f64 {
        self.filter.params().bits as f64
    }
    /// N = ⌈log2 bits⌉.
    #[wasm_bindgen(getter, js_name = log2Bits)]
    pub fn log2_bits(&self) -> u8 {
        self.filter.params().log2_bits
    }
    /// Bit positions per SII.
    #[wasm_bindgen(getter)]
    pub fn k(&self) -> u8 {
        self.filter.params().k
    }
    /// "blocked512" or "plain" (the names the GP's `/v1/gp` uses).
    #[wasm_bindgen(getter)]
    pub fn layout(&self) -> String {
        match self.filter.params().layout {
            Layout::Blocked512 => "blocked512",
            Layout::Plain => "plain",
        }
        .into()
    }
    /// "sha256-high" or "sha256-low" (the draft's own scheme).
    #[wasm_bindgen(getter)]
    pub fn hash(&self) -> String {
        match self.filter.params().hash {
            HashScheme::Sha256High => "sha256-high",
            HashScheme::Sha256Low => "sha256-low",
        }
        .into()
    }
    /// True for the draft's exact scheme (k = 1, low N bits).
    #[wasm_bindgen(getter, js_name = draftInterop)]
    pub fn draft_interop(&self) -> bool {
        self.filter.params().hash == HashScheme::Sha256Low
    }
    /// P: this snapshot is partition `partitionIndex` of 2^P (0: whole).
    #[wasm_bindgen(getter, js_name = partitionBits)]
    pub fn partition_bits(&self) -> u8 {
        self.filter.partition_id().bits
    }
    /// Which partition this snapshot holds.
    #[wasm_bindgen(getter, js_name = partitionIndex)]
    pub fn partition_index(&self) -> u32 {
        self.filter.partition_id().index
    }
    /// Global index of the first bit held.
    #[wasm_bindgen(getter, js_name = firstBit)]
    pub fn first_bit(&self) -> f64 {
        self.filter.first_bit() as f64
    }
    /// Number of bits held.
    #[wasm_bindgen(getter, js_name = localBits)]
    pub fn local_bits(&self) -> f64 {
        self.filter.local_bits() as f64
    }
    /// Number of bits set.
    #[wasm_bindgen(getter, js_name = onesCount)]
    pub fn ones_count(&self) -> f64 {
        self.filter.count_ones() as f64
    }
    /// Fraction of bits set.
    #[wasm_bindgen(getter, js_name = fillRatio)]
    pub fn fill_ratio(&self) -> f64 {
        self.filter.fill_ratio()
    }
    /// Estimated number of SIIs inserted (Infinity once every bit is set).
    #[wasm_bindgen(getter, js_name = estimatedSiis)]
    pub fn estimated_siis(&self) -> f64 {
        self.filter.estimated_items()
    }
    /// Estimated false-positive rate for a random non-member.
    #[wasm_bindgen(getter, js_name = estimatedFpRate)]
    pub fn estimated_fp_rate(&self) -> f64 {
        self.filter.estimated_fp_rate()
    }

    /// Set bits per group for a heat map of at most `max_groups` cells
    /// (groups of whole blocks; see core's `Filter::fill_map`).
    #[wasm_bindgen(js_name = heatMap)]
    pub fn heat_map(&self, max_groups: u32) -> HeatMap {
        let map = self.filter.fill_map(u64::from(max_groups));
        HeatMap {
            group_bits: map.group_bits as f64,
            first_bit: map.first_bit as f64,
            // A group holds at most group_bits ≤ 2^40 / max_groups ones;
            // saturate rather than wrap for absurdly coarse maps.
            ones: map
                .ones
                .iter()
                .map(|&n| u32::try_from(n).unwrap_or(u32::MAX))
                .collect(),
        }
    }

    /// Whether global bit `index` is set; `undefined` if not held here
    /// (or not a whole number in range).
    pub fn bit(&self, index: f64) -> Option<bool> {
        to_index(index).and_then(|i| self.filter.bit(i))
    }

    /// Normalizes `text` as an SII exactly as the GP's API does, and looks
    /// it up. Invalid input is a normal outcome (not an exception): the
    /// result carries the API's problem title and detail.
    pub fn check(&self, text: &str) -> Check {
        let sii = match Sii::parse(text) {
            Ok(sii) => sii,
            Err(e) => {
                return Check {
                    error: Some((e.title().into(), e.to_string())),
                    ..Check::default()
                }
            }
        };
        let digest = sii.hash();
        let positions: Vec<u64> = self.filter.positions(&digest).collect();
        let covered = self.filter.covers(&digest);
        let may = self.filter.contains(&digest);
        let verdict = if !covered {
            VERDICT_NOT_COVERED
        } else if may {
            VERDICT_MAY
        } else {
            VERDICT_NOT
        };
        Check {
            error: None,
            normalized: sii.as_str().into(),
            kind: sii.kind().as_str().into(),
            digest_hex: digest.iter().map(|b| format!("{b:02x}")).collect(),
            positions_set: positions
                .iter()
                .map(|&p| u8::from(self.filter.bit(p) == Some(true)))
                .collect(),
            positions: positions.iter().map(|&p| p as f64).collect(),
            may_be_member: may,
            verdict: verdict.into(),
            local_fp_rate: self.filter.fp_rate_at(&digest),
            fp_rate: self.filter.estimated_fp_rate(),
        }
    }

    /// Bits that differ from `before` (this is "after"): set here only
    /// (added) and set there only (removed, which only a new version can
    /// do: draft §9 "removals are not performed incrementally, only
    /// additions"). Throws if the shapes differ.
    pub fn diff(&self, before: &InspectedFilter) -> Result<Diff, JsError> {
        let added = before
            .filter
            .diff(&self.filter)
            .map_err(|e| JsError::new(&e.to_string()))?;
        let removed = self
            .filter
            .diff(&before.filter)
            .map_err(|e| JsError::new(&e.to_string()))?;
        Ok(Diff {
            added: added.into_iter().map(|i| i as f64).collect(),
            removed: removed.into_iter().map(|i| i as f64).collect(),
            same_version: before.filter.header().version == self.filter.header().version,
        })
    }

    /// The snapshot re-encoded (GLF2), e.g. to save what was fetched.
    #[wasm_bindgen(js_name = toBytes)]
    pub fn to_bytes(&self) -> Vec<u8> {
        self.filter.to_bytes()
    }
}

/// A JS number as a bit index, if it is a whole number ≥ 0 below 2^53.
fn to_index(x: f64) -> Option<u64> {
    (x.fract() == 0.0 && (0.0..9_007_199_254_740_992.0).contains(&x)).then_some(x as u64)
}

/// Set bits per group of the bitmap.
#[wasm_bindgen]
pub struct HeatMap {
    group_bits: f64,
    first_bit: f64,
    ones: Vec<u32>,
}

#[wasm_bindgen]
impl HeatMap {
    /// Bits per group (whole 512-bit blocks for a blocked filter).
    #[wasm_bindgen(getter, js_name = groupBits)]
    pub fn group_bits(&self) -> f64 {
        self.group_bits
    }
    /// Global index of group 0's first bit.
    #[wasm_bindgen(getter, js_name = firstBit)]
    pub fn first_bit(&self) -> f64 {
        self.first_bit
    }
    /// Set bits per group (a copy, as a `Uint32Array`).
    #[wasm_bindgen(getter)]
    pub fn ones(&self) -> Vec<u32> {
        self.ones.clone()
    }
}

/// What the filter says about one typed SII.
#[wasm_bindgen]
#[derive(Default)]
pub struct Check {
    error: Option<(String, String)>,
    normalized: String,
    kind: String,
    digest_hex: String,
    positions: Vec<f64>,
    positions_set: Vec<u8>,
    may_be_member: bool,
    verdict: String,
    local_fp_rate: f64,
    fp_rate: f64,
}

#[wasm_bindgen]
impl Check {
    /// False when the input is not an SII; see `errorTitle`/`errorDetail`.
    #[wasm_bindgen(getter)]
    pub fn ok(&self) -> bool {
        self.error.is_none()
    }
    /// The API's problem title for invalid input ("Invalid SII").
    #[wasm_bindgen(getter, js_name = errorTitle)]
    pub fn error_title(&self) -> Option<String> {
        self.error.as_ref().map(|(t, _)| t.clone())
    }
    /// The API's problem detail: what exactly is wrong with the input.
    #[wasm_bindgen(getter, js_name = errorDetail)]
    pub fn error_detail(&self) -> Option<String> {
        self.error.as_ref().map(|(_, d)| d.clone())
    }
    /// Canonical form (E.164 or normalized email): what gets hashed.
    #[wasm_bindgen(getter)]
    pub fn normalized(&self) -> String {
        self.normalized.clone()
    }
    /// "phone" or "email".
    #[wasm_bindgen(getter)]
    pub fn kind(&self) -> String {
        self.kind.clone()
    }
    /// SHA-256 of the canonical form, hex (draft §9: "each SII is hashed
    /// using a crypto hash").
    #[wasm_bindgen(getter, js_name = digestHex)]
    pub fn digest_hex(&self) -> String {
        self.digest_hex.clone()
    }
    /// The k global bit positions (a `Float64Array`; may repeat in a block).
    #[wasm_bindgen(getter)]
    pub fn positions(&self) -> Vec<f64> {
        self.positions.clone()
    }
    /// For each position, 1 if that bit is set (a `Uint8Array`).
    #[wasm_bindgen(getter, js_name = positionsSet)]
    pub fn positions_set(&self) -> Vec<u8> {
        self.positions_set.clone()
    }
    /// True when every position is set.
    #[wasm_bindgen(getter, js_name = mayBeMember)]
    pub fn may_be_member(&self) -> bool {
        self.may_be_member
    }
    /// "definitely not on this GP", "may be on this GP", or "not covered by
    /// this partition".
    #[wasm_bindgen(getter)]
    pub fn verdict(&self) -> String {
        self.verdict.clone()
    }
    /// Chance that a non-member landing in this SII's block also gets
    /// "may be" (block fill^k).
    #[wasm_bindgen(getter, js_name = localFpRate)]
    pub fn local_fp_rate(&self) -> f64 {
        self.local_fp_rate
    }
    /// The filter's overall estimated false-positive rate.
    #[wasm_bindgen(getter, js_name = fpRate)]
    pub fn fp_rate(&self) -> f64 {
        self.fp_rate
    }
}

/// Bits that changed between two snapshots of the same shape.
#[wasm_bindgen]
pub struct Diff {
    added: Vec<f64>,
    removed: Vec<f64>,
    same_version: bool,
}

#[wasm_bindgen]
impl Diff {
    /// Bits set after but not before (0→1, what subscribers were sent).
    #[wasm_bindgen(getter)]
    pub fn added(&self) -> Vec<f64> {
        self.added.clone()
    }
    /// Bits set before but not after (only across a rebuild).
    #[wasm_bindgen(getter)]
    pub fn removed(&self) -> Vec<f64> {
        self.removed.clone()
    }
    /// Whether both snapshots are the same filter version.
    #[wasm_bindgen(getter, js_name = sameVersion)]
    pub fn same_version(&self) -> bool {
        self.same_version
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::filter::{FilterHeader, FilterParams};

    fn filter_with(members: &[&str], version: u64) -> InspectedFilter {
        let mut f = Filter::new(FilterHeader {
            version,
            created_at_ms: 1_700_000_000_000,
            params: FilterParams::blocked(64, 7),
        })
        .unwrap();
        for m in members {
            f.insert(&Sii::parse(m).unwrap().hash());
        }
        InspectedFilter { filter: f }
    }

    #[test]
    fn check_normalizes_and_gives_verdicts() {
        let f = filter_with(&["+1 650 555 0100", "Alice@Example.org"], 3);
        let hit = f.check("+1 (650) 555-0100");
        assert!(hit.ok());
        assert_eq!(hit.normalized(), "+16505550100");
        assert_eq!(hit.kind(), "phone");
        assert_eq!(hit.verdict(), VERDICT_MAY);
        assert_eq!(hit.positions().len(), 7);
        assert!(hit.positions_set().iter().all(|&b| b == 1));
        assert!(hit.local_fp_rate() > 0.0 && hit.local_fp_rate() < 1e-3);
        let miss = f.check("+44 20 7946 0000");
        assert_eq!(miss.verdict(), VERDICT_NOT);
        assert!(!miss.may_be_member());
        assert!(miss.positions_set().contains(&0));
    }

    #[test]
    fn invalid_input_carries_the_api_problem_text() {
        let f = filter_with(&[], 1);
        let bad = f.check("650 555 0100");
        assert!(!bad.ok());
        assert_eq!(bad.error_title().as_deref(), Some("Invalid SII"));
        let expected = Sii::parse("650 555 0100").unwrap_err().to_string();
        assert_eq!(bad.error_detail(), Some(expected));
        assert_eq!(bad.verdict(), "");
    }

    #[test]
    fn diff_lists_added_and_removed_bits() {
        let before = filter_with(&["+16505550100"], 1);
        let after = filter_with(&["+16505550100", "+16505550101"], 1);
        let d = after.diff(&before).map_err(|_| ()).unwrap();
        let pos = after.check("+16505550101").positions();
        assert!(!d.added().is_empty());
        assert!(d.added().iter().all(|p| pos.contains(p)));
        assert!(d.removed().is_empty());
        assert!(d.same_version());
        let rebuilt = filter_with(&["+16505550101"], 2);
        let d2 = rebuilt.diff(&after).map_err(|_| ()).unwrap();
        assert!(!d2.removed().is_empty() && !d2.same_version());
    }

    #[test]
    fn bit_accepts_only_whole_indices_in_range() {
        let f = filter_with(&["+16505550100"], 1);
        let p = f.check("+16505550100").positions()[0];
        assert_eq!(f.bit(p), Some(true));
        assert_eq!(f.bit(p + 0.5), None);
        assert_eq!(f.bit(-1.0), None);
        assert_eq!(f.bit(f64::NAN), None);
        assert_eq!(f.bit(1e300), None);
        let ones: u32 = f.heat_map(16).ones().iter().sum();
        assert_eq!(u64::from(ones), f.filter.count_ones());
    }
}
