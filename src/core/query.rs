//! The mapping query (draft §8.1, Figure 2): what an AP asks, what a peer
//! answers, and how the home GP combines its own answer with its peers'.
//!
//! draft §8.1: "the mapping query API is not an enumeration API [...] It
//! requires the SII to be provided" and "the mapping query API is not a
//! batch API either; it is one mapping request at a time." So a query body
//! is exactly one SII; a list is refused with its own problem rather than
//! a generic parse error, so an AP learns why.
//!
//! Pure: the glue fetches the local candidate and the peers' answers and
//! hands them to [`combine`], which applies [`select_preferred`].

use core::fmt;

use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use super::mapping::{select_preferred, Candidate, GpId};
use super::sii::{Sii, SiiError};
use super::Problem;

/// The `sii` member of a query body: one string, or (refused) anything
/// list-like.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum SiiField {
    One(String),
    Many(Vec<IgnoredAny>),
}

/// A query body as an AP (or a peer GP) sends it: `{"sii": "+14155550100"}`.
/// Unknown members are refused: a misspelt field must not silently turn
/// into a lookup of something else. A top-level array (which serde's
/// derive would read as the struct's fields in order) is a batch.
#[derive(Debug)]
pub struct QueryBody {
    sii: SiiField,
}

impl<'de> Deserialize<'de> for QueryBody {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = QueryBody;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object {\"sii\": \"...\"} (one SII per query)")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<QueryBody, A::Error> {
                let mut sii = None;
                while let Some(k) = m.next_key::<String>()? {
                    if k != "sii" {
                        return Err(de::Error::unknown_field(&k, &["sii"]));
                    }
                    if sii.is_some() {
                        return Err(de::Error::duplicate_field("sii"));
                    }
                    sii = Some(m.next_value::<SiiField>()?);
                }
                let sii = sii.ok_or_else(|| de::Error::missing_field("sii"))?;
                Ok(QueryBody { sii })
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<QueryBody, A::Error> {
                let mut items = Vec::new();
                while let Some(x) = s.next_element::<IgnoredAny>()? {
                    items.push(x);
                }
                Ok(QueryBody {
                    sii: SiiField::Many(items),
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// Why a query body is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum QueryError {
    /// More than one SII (an array): draft §8.1 "not a batch API".
    Batch { count: usize },
    /// The SII does not parse.
    InvalidSii(SiiError),
}

impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueryError::Batch { count } => write!(
                f,
                "a query names exactly one SII as a string; got a list of {count} \
                 (draft §8.1: the query API \"is not a batch API either; it is one \
                 mapping request at a time\")"
            ),
            QueryError::InvalidSii(e) => write!(f, "the sii is not valid: {e}"),
        }
    }
}

impl Problem for QueryError {
    fn slug(&self) -> &'static str {
        match self {
            QueryError::Batch { .. } => "one-sii-per-query",
            QueryError::InvalidSii(_) => "invalid-sii",
        }
    }
    fn title(&self) -> &'static str {
        match self {
            QueryError::Batch { .. } => "One SII per query",
            QueryError::InvalidSii(_) => "Invalid SII",
        }
    }
    fn status(&self) -> u16 {
        400
    }
}

impl QueryBody {
    /// The one SII asked for, normalized.
    pub fn into_sii(self) -> Result<Sii, QueryError> {
        match self.sii {
            SiiField::One(s) => Sii::parse(&s).map_err(QueryError::InvalidSii),
            SiiField::Many(v) => Err(QueryError::Batch { count: v.len() }),
        }
    }
}

/// A remote GP's answer to a peer query (draft §8.1: remote GPs "consult
/// only their local mappings"): its own preferred mapping or none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerAnswer {
    /// The answering GP.
    pub gp: GpId,
    /// Its preferred mapping for the SII, if it holds one.
    pub candidate: Option<Candidate>,
}

impl PeerAnswer {
    /// Checks an answer from peer `peer`: it must speak for itself only (a
    /// peer reporting another GP's mapping is garbage, not a result).
    pub fn checked(self, peer: &str) -> Result<Option<Candidate>, String> {
        if self.gp != peer {
            return Err(format!("answer names GP {:?}, not {peer:?}", self.gp));
        }
        match self.candidate {
            Some(c) if c.gp != peer => Err(format!(
                "answer carries a mapping of GP {:?}, not its own",
                c.gp
            )),
            other => Ok(other),
        }
    }
}

/// What the home GP learned from one queried peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerOutcome {
    /// A valid answer (with or without a mapping).
    Answered(Option<Candidate>),
    /// Down, slow, refused, or garbage: the reason, for the log and the AP.
    Failed(String),
}

/// The combined result of a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryResult {
    /// draft §8.1: "the most recent result is used".
    pub preferred: Option<Candidate>,
    /// Peers asked (their filters matched).
    pub queried: Vec<GpId>,
    /// Peers that did not answer usably; non-empty means the result may
    /// be incomplete (a newer mapping may exist there).
    pub failed: Vec<(GpId, String)>,
}

impl QueryResult {
    /// True when some peer that may hold the SII could not be asked.
    pub fn incomplete(&self) -> bool {
        !self.failed.is_empty()
    }
}

/// Combines the home GP's own candidate with its peers' outcomes.
///
/// draft §8.1: "In the case of two or more matches [...] the most recent
/// result is used", and where the home GP has the mapping "it compares the
/// timestamp from the remote GP to its own, and uses the most recent." A
/// failed peer never fails the query; it only makes it incomplete.
pub fn combine(local: Option<Candidate>, peers: Vec<(GpId, PeerOutcome)>) -> QueryResult {
    let mut candidates: Vec<Candidate> = local.into_iter().collect();
    let mut queried = Vec::with_capacity(peers.len());
    let mut failed = Vec::new();
    for (gp, outcome) in peers {
        match outcome {
            PeerOutcome::Answered(c) => candidates.extend(c),
            PeerOutcome::Failed(why) => failed.push((gp.clone(), why)),
        }
        queried.push(gp);
    }
    QueryResult {
        preferred: select_preferred(&candidates).cloned(),
        queried,
        failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::mapping::Precedence;
    use crate::core::Ssi;

    fn cand(gp: &str, ssi: &str, created: u64, preferred: Option<u64>) -> Candidate {
        Candidate {
            gp: gp.into(),
            ssi: Ssi::parse(ssi).unwrap(),
            precedence: Precedence {
                preferred_at_ms: preferred,
                created_at_ms: created,
            },
        }
    }

    fn body(json: &str) -> Result<Sii, String> {
        let b: QueryBody = serde_json::from_str(json).map_err(|e| e.to_string())?;
        b.into_sii().map_err(|e| e.slug().to_string())
    }

    #[test]
    fn one_sii_is_accepted_and_normalized() {
        let s = body(r#"{"sii": "Alice@Example.COM"}"#).unwrap();
        assert_eq!(s.as_str(), "alice@example.com");
    }

    #[test]
    fn lists_and_extra_fields_are_refused() {
        assert_eq!(
            body(r#"{"sii": ["+14155550100", "+14155550101"]}"#),
            Err("one-sii-per-query".into())
        );
        assert_eq!(body(r#"{"sii": []}"#), Err("one-sii-per-query".into()));
        assert_eq!(body(r#"["+14155550100"]"#), Err("one-sii-per-query".into()));
        assert!(body(r#"{"sii": "+14155550100", "sii": "+14155550101"}"#).is_err());
        assert!(body(r#""+14155550100""#).is_err());
        assert!(body(r#"{"sii": "+14155550100", "siis": []}"#).is_err());
        assert!(body(r#"{"sii": 5}"#).is_err());
        assert!(body(r#"{}"#).is_err());
        assert_eq!(body(r#"{"sii": "nope"}"#), Err("invalid-sii".into()));
    }

    #[test]
    fn the_most_recent_mapping_wins_across_gps() {
        let local = cand("gp-a", "a:alice", 100, None);
        let r = combine(
            Some(local.clone()),
            vec![
                (
                    "gp-b".into(),
                    PeerOutcome::Answered(Some(cand("gp-b", "b:al", 200, None))),
                ),
                ("gp-c".into(), PeerOutcome::Answered(None)),
            ],
        );
        assert_eq!(r.preferred.as_ref().unwrap().gp, "gp-b");
        assert!(!r.incomplete());
        assert_eq!(r.queried, vec!["gp-b".to_string(), "gp-c".to_string()]);
        // A later preference beats a later creation.
        let r = combine(
            Some(cand("gp-a", "a:alice", 100, Some(300))),
            vec![(
                "gp-b".into(),
                PeerOutcome::Answered(Some(cand("gp-b", "b:al", 200, None))),
            )],
        );
        assert_eq!(r.preferred.unwrap().gp, "gp-a");
    }

    #[test]
    fn a_failed_peer_makes_the_result_incomplete_not_wrong() {
        let r = combine(
            Some(cand("gp-a", "a:alice", 100, None)),
            vec![("gp-b".into(), PeerOutcome::Failed("timeout".into()))],
        );
        assert!(r.incomplete());
        assert_eq!(r.preferred.as_ref().unwrap().gp, "gp-a");
        assert_eq!(r.failed, vec![("gp-b".to_string(), "timeout".to_string())]);
        let none = combine(None, vec![]);
        assert_eq!(none.preferred, None);
        assert!(!none.incomplete());
    }

    #[test]
    fn a_peer_may_only_speak_for_itself() {
        let ok = PeerAnswer {
            gp: "gp-b".into(),
            candidate: Some(cand("gp-b", "b:x", 1, None)),
        };
        assert!(ok.clone().checked("gp-b").unwrap().is_some());
        assert!(ok.checked("gp-c").is_err());
        let forged = PeerAnswer {
            gp: "gp-b".into(),
            candidate: Some(cand("gp-c", "c:x", 1, None)),
        };
        assert!(forged.checked("gp-b").is_err());
    }
}
