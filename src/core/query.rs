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

use super::mapping::{select_preferred, Candidate, GpId, Mapping};
use super::sii::{Sii, SiiError};
use super::statement;
use super::tags::MappingMeta;
use super::Problem;

/// The `sii` member of a query body: one string, or (refused) anything
/// list-like.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum SiiField {
    One(String),
    Many(Vec<IgnoredAny>),
}

/// The members a query body may have. `sii` is draft §8.1's; the others
/// are beyond GLADOS-00 and optional, so a plain draft body means what it
/// always meant.
const FIELDS: &[&str] = &["sii", "all", "nonce", "statements"];

/// A query body as an AP (or a peer GP) sends it: `{"sii": "+14155550100"}`,
/// optionally with `all` (every mapping, issue 16), `nonce` (echoed in the
/// signed statements, so the AP can tell a fresh answer from a replayed
/// one) and `statements` (`false`: none wanted). Unknown members are
/// refused: a misspelt field must not silently turn into a lookup of
/// something else. A top-level array (which serde's derive would read as
/// the struct's fields in order) is a batch.
#[derive(Debug)]
pub struct QueryBody {
    sii: SiiField,
    all: bool,
    nonce: Option<String>,
    statements: bool,
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
                let mut all = None;
                let mut nonce = None;
                let mut statements = None;
                while let Some(k) = m.next_key::<String>()? {
                    let dup = match k.as_str() {
                        "sii" => sii.replace(m.next_value::<SiiField>()?).is_some(),
                        "all" => all.replace(m.next_value::<bool>()?).is_some(),
                        "nonce" => nonce.replace(m.next_value::<String>()?).is_some(),
                        "statements" => statements.replace(m.next_value::<bool>()?).is_some(),
                        _ => return Err(de::Error::unknown_field(&k, FIELDS)),
                    };
                    if dup {
                        return Err(de::Error::custom(format_args!("duplicate field `{k}`")));
                    }
                }
                let sii = sii.ok_or_else(|| de::Error::missing_field("sii"))?;
                Ok(QueryBody {
                    sii,
                    all: all.unwrap_or(false),
                    nonce,
                    statements: statements.unwrap_or(true),
                })
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<QueryBody, A::Error> {
                let mut items = Vec::new();
                while let Some(x) = s.next_element::<IgnoredAny>()? {
                    items.push(x);
                }
                Ok(QueryBody {
                    sii: SiiField::Many(items),
                    all: false,
                    nonce: None,
                    statements: true,
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
    /// The nonce is not 16..=64 of `[A-Za-z0-9_-]`.
    InvalidNonce,
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
            QueryError::InvalidNonce => f.write_str(
                "the nonce must be 16 to 64 characters of A-Z, a-z, 0-9, '-' and '_' \
                 (e.g. 16 random bytes, base64url)",
            ),
        }
    }
}

impl Problem for QueryError {
    fn slug(&self) -> &'static str {
        match self {
            QueryError::Batch { .. } => "one-sii-per-query",
            QueryError::InvalidSii(_) => "invalid-sii",
            QueryError::InvalidNonce => "invalid-nonce",
        }
    }
    fn title(&self) -> &'static str {
        match self {
            QueryError::Batch { .. } => "One SII per query",
            QueryError::InvalidSii(_) => "Invalid SII",
            QueryError::InvalidNonce => "Invalid nonce",
        }
    }
    fn status(&self) -> u16 {
        400
    }
}

/// A checked query: one SII and what to answer about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// The SII, normalized.
    pub sii: Sii,
    /// Every mapping, not just the preferred one (issue 16).
    pub all: bool,
    /// The AP's nonce, signed into each statement.
    pub nonce: Option<String>,
    /// Whether the holding GPs sign statements for the answer.
    pub statements: bool,
}

impl Query {
    /// The plain draft §8.1 question: the preferred mapping, no statement
    /// (what a GP asks its peers when it only needs to know the holder).
    pub fn plain(sii: Sii) -> Query {
        Query {
            sii,
            all: false,
            nonce: None,
            statements: false,
        }
    }

    /// The body a home GP sends its peers for this query (members at their
    /// defaults are left out).
    pub fn peer_body(&self) -> PeerQueryBody<'_> {
        PeerQueryBody {
            sii: self.sii.as_str(),
            all: self.all,
            nonce: self.nonce.as_deref(),
            statements: self.statements,
        }
    }
}

/// What a home GP sends a peer (see [`Query::peer_body`]).
#[derive(Debug, Serialize)]
pub struct PeerQueryBody<'a> {
    sii: &'a str,
    #[serde(skip_serializing_if = "is_false")]
    all: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    nonce: Option<&'a str>,
    #[serde(skip_serializing_if = "is_true")]
    statements: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_true(b: &bool) -> bool {
    *b
}

impl QueryBody {
    /// The one SII asked for, normalized, and the options.
    pub fn into_query(self) -> Result<Query, QueryError> {
        let sii = match self.sii {
            SiiField::One(s) => Sii::parse(&s).map_err(QueryError::InvalidSii)?,
            SiiField::Many(v) => return Err(QueryError::Batch { count: v.len() }),
        };
        if let Some(n) = &self.nonce {
            if !statement::nonce_is_valid(n) {
                return Err(QueryError::InvalidNonce);
            }
        }
        Ok(Query {
            sii,
            all: self.all,
            nonce: self.nonce,
            statements: self.statements,
        })
    }
}

/// One mapping as the GP holding it reports it: the §8.1 candidate plus,
/// beyond GLADOS-00, its tags and label and the holder's signed statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reported {
    /// GP, SSI and precedence.
    #[serde(flatten)]
    pub candidate: Candidate,
    /// Tags and the user's label.
    #[serde(default, flatten)]
    pub meta: MappingMeta,
    /// The holder's statement (compact JWS), when one was asked for and
    /// the holder could sign.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statement: Option<String>,
}

impl Reported {
    /// How GP `gp` reports its `mapping`, with `statement` if it signed one.
    pub fn of(gp: &str, mapping: &Mapping, statement: Option<String>) -> Reported {
        Reported {
            candidate: Candidate::of(gp, mapping),
            meta: mapping.meta.clone(),
            statement,
        }
    }

    /// Checks that the statement says what this report says, for `query`
    /// (same GP, SSI, times, tags and label, SII digest and nonce). The
    /// home GP passes statements on unchanged; this makes a peer whose
    /// statement contradicts its own answer a failed peer, not a result.
    /// The signature is the AP's to check against the published keys.
    pub fn check_statement(&self, query: &Query) -> Result<(), String> {
        let Some(s) = &self.statement else {
            return Ok(());
        };
        let c = statement::read(s)
            .map_err(|e| format!("statement: {e}"))?
            .claims;
        let p = &self.candidate.precedence;
        let digest = statement::sii_digest(
            &super::encoding::b64url_decode(&c.sii_salt).unwrap_or_default(),
            &query.sii,
        );
        let same = c.iss == self.candidate.gp
            && c.ssi == self.candidate.ssi
            && c.created_at_ms == p.created_at_ms
            && c.preferred_at_ms == p.preferred_at_ms
            && c.tags == self.meta.tags
            && c.label == self.meta.label
            && c.nonce == query.nonce
            && c.sii_digest == super::encoding::b64url_encode(&digest);
        if same {
            Ok(())
        } else {
            Err("its statement does not say what its answer says".into())
        }
    }
}

/// What one GP (this one, or a peer) says about an SII.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GpAnswer {
    /// Its mappings: the preferred one only, or all of them (`all`).
    pub mappings: Vec<Reported>,
    /// The SII's holder opted out of discovery here (issue 16).
    pub opted_out: bool,
}

/// A remote GP's answer to a peer query (draft §8.1: remote GPs "consult
/// only their local mappings"): its own preferred mapping or none, and,
/// beyond GLADOS-00, its statement, every mapping (`all`) and opt-out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerAnswer {
    /// The answering GP.
    pub gp: GpId,
    /// Its preferred mapping for the SII, if it holds one.
    pub candidate: Option<Candidate>,
    /// The statement of that mapping, if asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statement: Option<String>,
    /// Every mapping it holds, for an `all` query.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mappings: Vec<Reported>,
    /// The SII opted out of discovery there.
    #[serde(default, skip_serializing_if = "is_false")]
    pub opted_out: bool,
}

impl PeerAnswer {
    /// GP `gp`'s answer to a peer, from what it found for `query`.
    pub fn new(gp: &str, query: &Query, found: GpAnswer) -> PeerAnswer {
        let preferred = select_preferred_reported(&found.mappings).cloned();
        PeerAnswer {
            gp: gp.to_owned(),
            candidate: preferred.as_ref().map(|r| r.candidate.clone()),
            statement: preferred.and_then(|r| r.statement),
            mappings: if query.all {
                found.mappings
            } else {
                Vec::new()
            },
            opted_out: found.opted_out,
        }
    }

    /// Checks an answer from peer `peer` to `query`: it must speak for
    /// itself only (a peer reporting another GP's mapping is garbage, not
    /// a result), and its statements must say what it says.
    pub fn checked(self, peer: &str, query: &Query) -> Result<GpAnswer, String> {
        if self.gp != peer {
            return Err(format!("answer names GP {:?}, not {peer:?}", self.gp));
        }
        let mut mappings = if query.all { self.mappings } else { Vec::new() };
        if let Some(c) = self.candidate {
            if !mappings.iter().any(|r| r.candidate == c) {
                // Tags and label of the preferred mapping travel in its
                // statement only; without one they are unknown here.
                let meta = match &self.statement {
                    Some(s) => statement::read(s)
                        .map(|u| MappingMeta {
                            tags: u.claims.tags,
                            label: u.claims.label,
                        })
                        .unwrap_or_default(),
                    None => MappingMeta::default(),
                };
                mappings.push(Reported {
                    candidate: c,
                    meta,
                    statement: self.statement,
                });
            }
        }
        for r in &mappings {
            if r.candidate.gp != peer {
                return Err(format!(
                    "answer carries a mapping of GP {:?}, not its own",
                    r.candidate.gp
                ));
            }
            r.check_statement(query)?;
        }
        Ok(GpAnswer {
            mappings,
            opted_out: self.opted_out,
        })
    }
}

/// The reported mapping [`select_preferred`] picks.
fn select_preferred_reported(all: &[Reported]) -> Option<&Reported> {
    let candidates: Vec<Candidate> = all.iter().map(|r| r.candidate.clone()).collect();
    let best = select_preferred(&candidates)?;
    all.iter().find(|r| &r.candidate == best)
}

/// What the home GP learned from one queried peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerOutcome {
    /// A valid answer (with or without mappings).
    Answered(GpAnswer),
    /// Down, slow, refused, or garbage: the reason, for the log and the AP.
    Failed(String),
    /// Not asked: this GP could not read its routing data for the peer
    /// (the result is incomplete, never silently narrowed).
    NotAsked(String),
}

/// The combined result of a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryResult {
    /// draft §8.1: "the most recent result is used".
    pub preferred: Option<Reported>,
    /// Every mapping found (an `all` query), each GP's in turn.
    pub all: Vec<Reported>,
    /// Some GP said the SII's holder opted out of discovery: nothing is
    /// answered, whatever else was found (issue 16).
    pub opted_out: bool,
    /// Peers asked (their filters matched).
    pub queried: Vec<GpId>,
    /// Peers that did not answer usably, or could not be routed to;
    /// non-empty means the result may be incomplete (a newer mapping may
    /// exist there).
    pub failed: Vec<(GpId, String)>,
    /// Peers asked without a filter verdict (no copy of their filter in
    /// place yet), and why: asked, so the result is complete, but the
    /// fan-out is wider than the filters would make it.
    pub unfiltered: Vec<(GpId, String)>,
}

impl QueryResult {
    /// True when some peer that may hold the SII could not be asked.
    pub fn incomplete(&self) -> bool {
        !self.failed.is_empty()
    }
}

/// Combines the home GP's own answer with its peers' outcomes.
///
/// draft §8.1: "In the case of two or more matches [...] the most recent
/// result is used", and where the home GP has the mapping "it compares the
/// timestamp from the remote GP to its own, and uses the most recent." A
/// failed peer never fails the query; it only makes it incomplete. An
/// opt-out anywhere hides every mapping (R5: "opted out" is an answer).
pub fn combine(local: GpAnswer, peers: Vec<(GpId, PeerOutcome)>) -> QueryResult {
    let mut opted_out = local.opted_out;
    let mut all = local.mappings;
    let mut queried = Vec::with_capacity(peers.len());
    let mut failed = Vec::new();
    for (gp, outcome) in peers {
        match outcome {
            PeerOutcome::Answered(a) => {
                opted_out |= a.opted_out;
                all.extend(a.mappings);
            }
            PeerOutcome::Failed(why) => failed.push((gp.clone(), why)),
            PeerOutcome::NotAsked(why) => {
                failed.push((gp, why));
                continue;
            }
        }
        queried.push(gp);
    }
    if opted_out {
        all.clear();
    }
    QueryResult {
        preferred: select_preferred_reported(&all).cloned(),
        all,
        opted_out,
        queried,
        failed,
        unfiltered: Vec::new(),
    }
}

/// The answer document of `POST /v1/query` (draft §8.1; beyond GLADOS-00
/// its tags, label, statement, opt-out and `mappings`), serialized straight
/// from the result without a JSON tree in between. Members are declared in
/// alphabetical order, the order the answer has always had (it was built
/// as a `serde_json` object, which sorts its keys).
#[derive(Debug, Serialize)]
pub struct Answer<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    created_at_ms: Option<u64>,
    failed_peers: Vec<PeerReason<'a>>,
    found: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    gp: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    home: Option<bool>,
    incomplete: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    label: Option<&'a super::tags::Label>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mappings: Option<Vec<AnsweredMapping<'a>>>,
    /// MIMI R5: "opted out" is an answer of its own, not a miss.
    #[serde(skip_serializing_if = "Option::is_none")]
    opted_out: Option<bool>,
    peers_queried: usize,
    /// Present (possibly `null`) exactly when a mapping was found.
    #[serde(skip_serializing_if = "Option::is_none")]
    preferred_at_ms: Option<Option<u64>>,
    sii: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    ssi: Option<SsiMembers<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    statement: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tags: Option<&'a super::tags::Tags>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timestamp_ms: Option<u64>,
    unfiltered_peers: Vec<PeerReason<'a>>,
}

/// A peer that failed or was asked without a filter verdict, and why.
#[derive(Debug, Serialize)]
struct PeerReason<'a> {
    gp: &'a str,
    reason: &'a str,
}

/// The SSI as an answer shows it.
#[derive(Debug, Serialize)]
struct SsiMembers<'a> {
    provider: &'a str,
    user: &'a str,
}

/// One mapping of an `all` answer's `mappings` (alphabetical, like the
/// answer's own members).
#[derive(Debug, Serialize)]
pub struct AnsweredMapping<'a> {
    created_at_ms: u64,
    gp: &'a str,
    home: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    label: Option<&'a super::tags::Label>,
    preferred: bool,
    preferred_at_ms: Option<u64>,
    ssi: SsiMembers<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    statement: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tags: Option<&'a super::tags::Tags>,
    timestamp_ms: u64,
}

impl<'a> AnsweredMapping<'a> {
    /// The members describing `r`: the draft's (SSI, holding GP,
    /// timestamps) and, beyond GLADOS-00, its tags, label and the holder's
    /// signed statement, passed on exactly as the holder sent it.
    fn of(r: &'a Reported, own_gp: &str, preferred: bool) -> Self {
        let c = &r.candidate;
        let p = &c.precedence;
        AnsweredMapping {
            created_at_ms: p.created_at_ms,
            gp: &c.gp,
            home: c.gp == own_gp,
            label: r.meta.label.as_ref(),
            preferred,
            preferred_at_ms: p.preferred_at_ms,
            ssi: SsiMembers {
                provider: c.ssi.provider().as_str(),
                user: c.ssi.user().as_str(),
            },
            statement: r.statement.as_deref(),
            tags: (!r.meta.tags.is_empty()).then_some(&r.meta.tags),
            // draft §8.1: "Each mapping contains a timestamp, and the most
            // recent result is used": the later of preference and creation.
            timestamp_ms: p.preferred_at_ms.unwrap_or(0).max(p.created_at_ms),
        }
    }
}

/// The answer document for `query` from the combined `result`; `own_gp`
/// is this GP's id.
pub fn answer<'a>(query: &'a Query, result: &'a QueryResult, own_gp: &str) -> Answer<'a> {
    let reasons = |list: &'a [(GpId, String)]| {
        list.iter()
            .map(|(gp, why)| PeerReason { gp, reason: why })
            .collect()
    };
    let found = result
        .preferred
        .as_ref()
        .map(|r| AnsweredMapping::of(r, own_gp, true));
    let preferred = result.preferred.as_ref().map(|r| &r.candidate);
    let mappings = query.all.then(|| {
        result
            .all
            .iter()
            .map(|r| AnsweredMapping::of(r, own_gp, Some(&r.candidate) == preferred))
            .collect()
    });
    Answer {
        created_at_ms: found.as_ref().map(|m| m.created_at_ms),
        failed_peers: reasons(&result.failed),
        found: found.is_some(),
        gp: found.as_ref().map(|m| m.gp),
        home: found.as_ref().map(|m| m.home),
        incomplete: result.incomplete(),
        label: found.as_ref().and_then(|m| m.label),
        mappings,
        opted_out: result.opted_out.then_some(true),
        peers_queried: result.queried.len(),
        preferred_at_ms: found.as_ref().map(|m| m.preferred_at_ms),
        sii: query.sii.as_str(),
        statement: found.as_ref().and_then(|m| m.statement),
        tags: found.as_ref().and_then(|m| m.tags),
        timestamp_ms: found.as_ref().map(|m| m.timestamp_ms),
        unfiltered_peers: reasons(&result.unfiltered),
        ssi: found.map(|m| m.ssi),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::mapping::{Precedence, VerifiedBy};
    use crate::core::statement::{Claims, Issue, StatementKey};
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

    fn rep(c: Candidate) -> Reported {
        Reported {
            candidate: c,
            meta: MappingMeta::default(),
            statement: None,
        }
    }

    fn answered(cs: Vec<Candidate>) -> PeerOutcome {
        PeerOutcome::Answered(GpAnswer {
            mappings: cs.into_iter().map(rep).collect(),
            opted_out: false,
        })
    }

    fn local(c: Option<Candidate>) -> GpAnswer {
        GpAnswer {
            mappings: c.into_iter().map(rep).collect(),
            opted_out: false,
        }
    }

    fn query(json: &str) -> Result<Query, String> {
        let b: QueryBody = serde_json::from_str(json).map_err(|e| e.to_string())?;
        b.into_query().map_err(|e| e.slug().to_string())
    }

    fn body(json: &str) -> Result<Sii, String> {
        query(json).map(|q| q.sii)
    }

    #[test]
    fn one_sii_is_accepted_and_normalized() {
        let s = body(r#"{"sii": "Alice@Example.COM"}"#).unwrap();
        assert_eq!(s.as_str(), "alice@example.com");
        // A plain draft body: the preferred mapping, with its statement.
        let q = query(r#"{"sii": "+14155550100"}"#).unwrap();
        assert_eq!((q.all, q.nonce, q.statements), (false, None, true));
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
        assert!(body(r#"{"sii": "+14155550100", "all": true, "all": true}"#).is_err());
        assert!(body(r#""+14155550100""#).is_err());
        assert!(body(r#"{"sii": "+14155550100", "siis": []}"#).is_err());
        assert!(body(r#"{"sii": 5}"#).is_err());
        assert!(body(r#"{}"#).is_err());
        assert!(body(r#"{"all": true}"#).is_err());
        assert_eq!(body(r#"{"sii": "nope"}"#), Err("invalid-sii".into()));
        // `all` with a list is still a batch.
        assert_eq!(
            body(r#"{"sii": ["+14155550100"], "all": true}"#),
            Err("one-sii-per-query".into())
        );
    }

    #[test]
    fn options_beyond_the_draft_are_checked() {
        let q = query(
            r#"{"sii": "+14155550100", "all": true, "nonce": "abcdefghijklmnop", "statements": false}"#,
        )
        .unwrap();
        assert!(q.all && !q.statements);
        assert_eq!(q.nonce.as_deref(), Some("abcdefghijklmnop"));
        assert_eq!(
            query(r#"{"sii": "+14155550100", "nonce": "short"}"#),
            Err("invalid-nonce".into())
        );
        assert!(query(r#"{"sii": "+14155550100", "all": "yes"}"#).is_err());
        assert!(query(r#"{"sii": "+14155550100", "nonce": 5}"#).is_err());
        // What a home GP sends its peers parses back to the same query.
        let back: QueryBody =
            serde_json::from_value(serde_json::to_value(q.peer_body()).unwrap()).unwrap();
        assert_eq!(back.into_query().unwrap(), q);
        let plain = Query::plain(q.sii.clone());
        assert_eq!(
            serde_json::to_string(&plain.peer_body()).unwrap(),
            r#"{"sii":"+14155550100","statements":false}"#
        );
    }

    #[test]
    fn the_most_recent_mapping_wins_across_gps() {
        let l = cand("gp-a", "a:alice", 100, None);
        let r = combine(
            local(Some(l.clone())),
            vec![
                (
                    "gp-b".into(),
                    answered(vec![cand("gp-b", "b:al", 200, None)]),
                ),
                ("gp-c".into(), answered(vec![])),
            ],
        );
        assert_eq!(r.preferred.as_ref().unwrap().candidate.gp, "gp-b");
        assert!(!r.incomplete());
        assert_eq!(r.queried, vec!["gp-b".to_string(), "gp-c".to_string()]);
        assert_eq!(r.all.len(), 2);
        // A later preference beats a later creation.
        let r = combine(
            local(Some(cand("gp-a", "a:alice", 100, Some(300)))),
            vec![(
                "gp-b".into(),
                answered(vec![cand("gp-b", "b:al", 200, None)]),
            )],
        );
        assert_eq!(r.preferred.unwrap().candidate.gp, "gp-a");
    }

    #[test]
    fn a_failed_peer_makes_the_result_incomplete_not_wrong() {
        let r = combine(
            local(Some(cand("gp-a", "a:alice", 100, None))),
            vec![("gp-b".into(), PeerOutcome::Failed("timeout".into()))],
        );
        assert!(r.incomplete());
        assert_eq!(r.preferred.as_ref().unwrap().candidate.gp, "gp-a");
        assert_eq!(r.failed, vec![("gp-b".to_string(), "timeout".to_string())]);
        let none = combine(GpAnswer::default(), vec![]);
        assert_eq!(none.preferred, None);
        assert!(!none.incomplete());
    }

    #[test]
    fn a_peer_not_routed_to_makes_the_result_incomplete_without_being_queried() {
        let r = combine(
            local(None),
            vec![
                (
                    "gp-b".into(),
                    PeerOutcome::NotAsked("partition unreadable".into()),
                ),
                (
                    "gp-c".into(),
                    PeerOutcome::Answered(GpAnswer {
                        mappings: vec![],
                        opted_out: false,
                    }),
                ),
            ],
        );
        assert!(r.incomplete());
        assert_eq!(r.queried, vec!["gp-c".to_string()]);
        assert_eq!(r.failed[0].0, "gp-b");
        assert_eq!(r.preferred, None);
    }

    #[test]
    fn an_opt_out_anywhere_hides_every_mapping() {
        let r = combine(
            local(Some(cand("gp-a", "a:alice", 100, Some(100)))),
            vec![(
                "gp-b".into(),
                PeerOutcome::Answered(GpAnswer {
                    mappings: vec![],
                    opted_out: true,
                }),
            )],
        );
        assert!(r.opted_out);
        assert_eq!(r.preferred, None);
        assert!(r.all.is_empty());
    }

    fn plain_q() -> Query {
        Query::plain(Sii::parse("+14155550100").unwrap())
    }

    #[test]
    fn a_peer_may_only_speak_for_itself() {
        let ok = PeerAnswer {
            gp: "gp-b".into(),
            candidate: Some(cand("gp-b", "b:x", 1, None)),
            statement: None,
            mappings: vec![],
            opted_out: false,
        };
        assert_eq!(
            ok.clone()
                .checked("gp-b", &plain_q())
                .unwrap()
                .mappings
                .len(),
            1
        );
        assert!(ok.checked("gp-c", &plain_q()).is_err());
        let forged = PeerAnswer {
            gp: "gp-b".into(),
            candidate: Some(cand("gp-c", "c:x", 1, None)),
            statement: None,
            mappings: vec![],
            opted_out: false,
        };
        assert!(forged.checked("gp-b", &plain_q()).is_err());
    }

    #[test]
    fn a_peer_statement_must_say_what_its_answer_says() {
        let key = StatementKey::from_seed(&[3; 32]);
        let q = Query {
            nonce: Some("nonce-of-this-query".into()),
            statements: true,
            all: true,
            ..plain_q()
        };
        let m = Mapping {
            ssi: Ssi::parse("b:x").unwrap(),
            verified_by: VerifiedBy::Sms,
            created_at_ms: 5,
            preferred_at_ms: Some(6),
            meta: MappingMeta::parse(Some(&["business"]), Some("Shop")).unwrap(),
        };
        let sign = |gp: &str, nonce: Option<&str>, sii: &Sii| {
            key.sign(&Claims::issue(Issue {
                gp,
                sii,
                mapping: &m,
                salt: [1; 16],
                now_s: 10,
                ttl_s: 60,
                nonce,
            }))
            .unwrap()
        };
        let answer = |statement: String| {
            let found = GpAnswer {
                mappings: vec![Reported::of("gp-b", &m, Some(statement))],
                opted_out: false,
            };
            PeerAnswer::new("gp-b", &q, found)
        };
        let good = answer(sign("gp-b", q.nonce.as_deref(), &q.sii));
        let json = serde_json::to_string(&good).unwrap();
        let back: PeerAnswer = serde_json::from_str(&json).unwrap();
        let a = back.checked("gp-b", &q).unwrap();
        assert_eq!(a.mappings.len(), 1);
        assert_eq!(a.mappings[0].meta.tags.as_slice().len(), 1);
        // Another GP's statement, another query's nonce, another SII.
        let other = Sii::parse("+14155550199").unwrap();
        for bad in [
            sign("gp-c", q.nonce.as_deref(), &q.sii),
            sign("gp-b", Some("nonce-of-another-query"), &q.sii),
            sign("gp-b", q.nonce.as_deref(), &other),
            "not.a.statement".to_owned(),
        ] {
            assert!(answer(bad).checked("gp-b", &q).is_err());
        }
        // The default query: the preferred mapping's tags come from its
        // statement.
        let q1 = Query {
            all: false,
            ..q.clone()
        };
        let a = answer(sign("gp-b", q.nonce.as_deref(), &q.sii))
            .checked("gp-b", &q1)
            .unwrap();
        assert_eq!(a.mappings[0].meta.label.as_ref().unwrap().as_str(), "Shop");
    }

    /// The answer serializes member for member, in the order (sorted) the
    /// JSON tree it replaced gave: found with everything, found bare, not
    /// found with failed and unfiltered peers, opted out, and `all`.
    #[test]
    fn answer_documents_keep_their_members_and_order() {
        use crate::core::tags::{Label, Tags};
        use serde_json::json;
        let text = |a: &Answer| serde_json::to_string(a).unwrap();
        let sorted = |v: serde_json::Value| serde_json::to_string(&v).unwrap();
        let q = query(r#"{"sii": "+14155550100"}"#).unwrap();
        let mut full = rep(cand("gp-b", "mx.example:u1", 10, Some(20)));
        full.meta = MappingMeta {
            tags: Tags::parse(&["work", "family"]).unwrap(),
            label: Some(Label::parse("Office").unwrap()),
        };
        full.statement = Some("e30.e30.sig".into());
        let tags = serde_json::to_value(&full.meta.tags).unwrap();
        let mut result = QueryResult {
            preferred: Some(full.clone()),
            all: Vec::new(),
            opted_out: false,
            queried: vec!["gp-b".into()],
            failed: Vec::new(),
            unfiltered: Vec::new(),
        };
        assert_eq!(
            text(&answer(&q, &result, "gp-a")),
            sorted(json!({
                "sii": "+14155550100", "found": true, "incomplete": false,
                "peers_queried": 1, "failed_peers": [], "unfiltered_peers": [],
                "ssi": {"provider": "mx.example", "user": "u1"}, "gp": "gp-b",
                "home": false, "timestamp_ms": 20, "created_at_ms": 10,
                "preferred_at_ms": 20, "tags": tags, "label": "Office",
                "statement": "e30.e30.sig",
            }))
        );
        result.preferred = Some(rep(cand("gp-a", "mx.example:u2", 30, None)));
        result.queried.clear();
        assert_eq!(
            text(&answer(&q, &result, "gp-a")),
            sorted(json!({
                "sii": "+14155550100", "found": true, "incomplete": false,
                "peers_queried": 0, "failed_peers": [], "unfiltered_peers": [],
                "ssi": {"provider": "mx.example", "user": "u2"}, "gp": "gp-a",
                "home": true, "timestamp_ms": 30, "created_at_ms": 30,
                "preferred_at_ms": null,
            }))
        );
        result.preferred = None;
        result.failed = vec![("gp-c".into(), "timeout".into())];
        result.unfiltered = vec![("gp-d".into(), "no copy yet".into())];
        let expected_incomplete = result.incomplete();
        assert_eq!(
            text(&answer(&q, &result, "gp-a")),
            sorted(json!({
                "sii": "+14155550100", "found": false, "incomplete": expected_incomplete,
                "peers_queried": 0,
                "failed_peers": [{"gp": "gp-c", "reason": "timeout"}],
                "unfiltered_peers": [{"gp": "gp-d", "reason": "no copy yet"}],
            }))
        );
        result.failed.clear();
        result.unfiltered.clear();
        result.opted_out = true;
        assert_eq!(
            text(&answer(&q, &result, "gp-a")),
            sorted(json!({
                "sii": "+14155550100", "found": false, "incomplete": false,
                "peers_queried": 0, "failed_peers": [], "unfiltered_peers": [],
                "opted_out": true,
            }))
        );
        let all = query(r#"{"sii": "+14155550100", "all": true}"#).unwrap();
        result.opted_out = false;
        result.preferred = Some(full.clone());
        result.all = vec![rep(cand("gp-a", "mx.example:u2", 5, None)), full];
        let found = text(&answer(&all, &result, "gp-a"));
        assert_eq!(
            found,
            sorted(json!({
                "sii": "+14155550100", "found": true, "incomplete": false,
                "peers_queried": 0, "failed_peers": [], "unfiltered_peers": [],
                "ssi": {"provider": "mx.example", "user": "u1"}, "gp": "gp-b",
                "home": false, "timestamp_ms": 20, "created_at_ms": 10,
                "preferred_at_ms": 20, "tags": tags, "label": "Office",
                "statement": "e30.e30.sig",
                "mappings": [
                    {"ssi": {"provider": "mx.example", "user": "u2"}, "gp": "gp-a",
                     "home": true, "timestamp_ms": 5, "created_at_ms": 5,
                     "preferred_at_ms": null, "preferred": false},
                    {"ssi": {"provider": "mx.example", "user": "u1"}, "gp": "gp-b",
                     "home": false, "timestamp_ms": 20, "created_at_ms": 10,
                     "preferred_at_ms": 20, "tags": tags, "label": "Office",
                     "statement": "e30.e30.sig", "preferred": true},
                ],
            }))
        );
    }
}
