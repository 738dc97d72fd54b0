//! Mappings from an SII to SSIs, and the preference and precedence rules
//! over them (draft §8.1, §8.2.1, §8.2.2, §10).
//!
//! # Model
//!
//! One GP keeps, per SII, a [`SiiRecord`]: at most one [`Mapping`] per AP
//! (the AP is the SSI's provider) plus the recent [`Displacement`]s that let
//! a displaced AP undo or report a change (draft §8.2.1).
//!
//! **Preference is a timestamp, not a flag.** Each mapping carries
//! `preferred_at_ms`: when it was last made the preferred one, or `None` if
//! it never was (the user kept the old app). The preferred mapping is the one
//! with the greatest [`Precedence`] `(preferred_at_ms, created_at_ms)`, with
//! `None` below every time. The *same* rule orders mappings held by different
//! GPs (draft §8.1: "Each mapping contains a timestamp, and the most recent
//! result is used"), so no GP ever needs to know another GP's full state:
//!
//! - first use: the mapping is preferred at creation (draft §10: "When the
//!   user utilizes a first application, that application is automatically
//!   preferred");
//! - a second app's mapping is stored with `preferred_at_ms = None` until the
//!   user chooses (draft §10: "They have the choice to make the new app their
//!   preferred one, or keep the old one"), so it loses everywhere;
//! - [`Choice::Prefer`] stamps the chooser with `now`, which outranks every
//!   older preference on any GP; "prefer back" stamps the old AP with a later
//!   `now` and it wins again. Nothing else has to be rewritten, which is what
//!   makes the scheme work across GPs.
//!
//! Ties (same timestamps) are broken deterministically so every GP picks the
//! same winner: smallest GP id, then smallest canonical SSI string
//! (`provider:user`).
//!
//! # Transitions
//!
//! All transitions are pure methods on [`SiiRecord`] taking `now_ms`; on
//! `Err` the record is unchanged. They return the [`Notification`]s the glue
//! must deliver through its outbox (AP webhooks, GP-to-GP claims), or a
//! [`Strike`] to record. Phone-number moves (draft §8.2.2: "In practice,
//! this case is indistinguishable from the prior one") take exactly the same
//! path: the new owner verifies the number, is told of the old holder and
//! picks [`Choice::Replace`].

use core::cmp::Ordering;
use core::fmt;

use serde::{Deserialize, Serialize};

use super::holder::{HolderAction, HolderClaim};
use super::sii::Sii;
use super::ssi::{ProviderId, Ssi};
use super::tags::MappingMeta;
use super::Problem;

/// A GP's id, as configured for peers and reported at `GET /v1/gp`.
pub type GpId = String;

/// How long a displaced AP may reestablish, prefer back or report (14 days).
pub const DEFAULT_REMEDY_WINDOW_MS: u64 = 14 * 24 * 3_600_000;

/// How much longer than the remedy window a GP keeps the record of a claim
/// it sent ([`SentClaim`]): the peer's displacement starts when the claim
/// arrives (retries may take a while) and the GPs' clocks differ.
pub const CLAIM_EVIDENCE_SLACK_MS: u64 = 24 * 3_600_000;

/// Most [`SentClaim`]s kept per SII (oldest dropped first): an AP flipping
/// preference back and forth cannot grow a record without bound.
pub const MAX_SENT_CLAIMS: usize = 32;

/// How the GP confirmed that the SII belongs to the AP's user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum VerifiedBy {
    /// A code sent by SMS (draft §8.2).
    Sms,
    /// A code sent by email (draft §8.2).
    Email,
    /// Trusted bulk upload by a permitted AP (draft §8.3: "the GP will just
    /// trust them without sending confirmation emails or SMS messages").
    Bulk,
}

/// One SII → SSI mapping held by this GP. The SII is the record's key, the
/// AP is `ssi.provider()` (never stored twice, so they cannot disagree).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mapping {
    /// The AP's user (draft §8.2: "combining the provider userID, with the
    /// providerID implied by the access token").
    pub ssi: Ssi,
    /// How it was verified.
    pub verified_by: VerifiedBy,
    /// When it was (last) verified and stored.
    pub created_at_ms: u64,
    /// When it was last made the preferred mapping; `None` if never.
    pub preferred_at_ms: Option<u64>,
    /// Tags and the user's label the AP attached at creation (beyond
    /// GLADOS-00; empty for a plain creation).
    #[serde(default, skip_serializing_if = "MappingMeta::is_empty")]
    pub meta: MappingMeta,
}

impl Mapping {
    /// The AP that created this mapping.
    pub fn ap(&self) -> &ProviderId {
        self.ssi.provider()
    }

    /// Its rank in precedence comparisons (greater wins).
    pub fn precedence(&self) -> Precedence {
        Precedence {
            preferred_at_ms: self.preferred_at_ms,
            created_at_ms: self.created_at_ms,
        }
    }
}

/// The timestamp that decides between mappings (draft §8.1: "the most
/// recent result is used"). Compared field by field: last time made
/// preferred (`None` lowest), then creation time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Precedence {
    /// When the mapping was last made preferred; `None` if never.
    pub preferred_at_ms: Option<u64>,
    /// When the mapping was created.
    pub created_at_ms: u64,
}

/// A mapping as one GP reports it to the home GP in a query answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    /// The GP that holds the mapping.
    pub gp: GpId,
    /// The mapped SSI.
    pub ssi: Ssi,
    /// The mapping's precedence timestamps.
    pub precedence: Precedence,
}

impl Candidate {
    /// How GP `gp` reports its `mapping` in a query answer.
    pub fn of(gp: &str, mapping: &Mapping) -> Candidate {
        Candidate {
            gp: gp.to_owned(),
            ssi: mapping.ssi.clone(),
            precedence: mapping.precedence(),
        }
    }
}

/// Total order used by every precedence decision: greater precedence wins;
/// on a tie the smaller GP id, then the smaller canonical SSI string wins.
/// Returns `Greater` when `a` beats `b`.
fn beats(a: (&Precedence, &str, &Ssi), b: (&Precedence, &str, &Ssi)) -> Ordering {
    a.0.cmp(b.0)
        .then_with(|| b.1.cmp(a.1))
        .then_with(|| b.2.to_string().cmp(&a.2.to_string()))
}

/// Picks the result the home GP returns from its own and its peers' answers.
///
/// draft §8.1: "In the case of two or more matches [...] Each mapping
/// contains a timestamp, and the most recent result is used." and "it
/// compares the timestamp from the remote GP to its own, and uses the most
/// recent." Deterministic for any input order.
pub fn select_preferred(candidates: &[Candidate]) -> Option<&Candidate> {
    candidates.iter().max_by(|a, b| {
        beats(
            (&a.precedence, &a.gp, &a.ssi),
            (&b.precedence, &b.gp, &b.ssi),
        )
    })
}

/// An AP somewhere in the federation: `gp: None` means on this GP.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Party {
    /// The AP.
    pub ap: ProviderId,
    /// Its home GP if that is another GP.
    pub gp: Option<GpId>,
}

impl Party {
    fn local(ap: ProviderId) -> Party {
        Party { ap, gp: None }
    }
}

/// What the new AP asks for once the user has chosen (draft §8.2.1: "the
/// new provider can then instruct its GP to delete the old mapping or make
/// the new one the preferred choice").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Choice {
    /// Delete every other AP's mapping for this SII and become preferred
    /// (draft §10: "their new AP asks the GP to delete the old mapping").
    Replace,
    /// Keep the other mappings and become the preferred one.
    Prefer,
}

/// What happened to a displaced AP's mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DisplaceAction {
    /// The mapping was deleted by another AP's [`Choice::Replace`].
    Replaced,
    /// The mapping is kept but another AP is now preferred.
    Outpreferred,
}

/// How a displaced AP undid the change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Remedy {
    /// It re-created its deleted mapping (and is preferred again).
    Reestablished,
    /// It made its kept mapping preferred again.
    PreferredBack,
}

/// A record that `ap` (on this GP) was displaced, kept so that it can react
/// (draft §8.2.1: "the user can request their old app to re-establish the
/// mapping, change the preference back, or to report the change as
/// malicious"). At most one per AP (the latest); dropped after the window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Displacement {
    /// The displaced AP on this GP.
    pub ap: ProviderId,
    /// Who displaced it.
    pub by: Party,
    /// Deleted or merely outranked.
    pub action: DisplaceAction,
    /// When.
    pub at_ms: u64,
    /// The displaced mapping as it was, so it can be re-established.
    pub old: Mapping,
    /// Whether it was already reestablished or preferred back.
    pub remedied: bool,
    /// Whether it was already reported as malicious (one strike per event).
    pub reported: bool,
    /// For a displacement by a peer GP's [`Claim`]: the claim's `at_ms`, so
    /// that a report names exactly the claim it is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_at_ms: Option<u64>,
}

/// This GP's record that it sent a [`Claim`] by one of its APs to a peer
/// GP: the evidence a peer's [`StrikeNotice`] is checked against (see
/// [`SiiRecord::accept_peer_strike`]). Kept for the remedy window plus
/// [`CLAIM_EVIDENCE_SLACK_MS`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentClaim {
    /// The AP (on this GP) that made the change.
    pub ap: ProviderId,
    /// The peer GP told.
    pub to_gp: GpId,
    /// The claim's `at_ms`.
    pub at_ms: u64,
    /// Deleted or outranked.
    pub action: DisplaceAction,
    /// The id of the peer's strike notice applied for this claim, if any
    /// (one strike per claim; a redelivery of that notice is a no-op).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub struck_by: Option<String>,
}

/// Tells a peer GP that an SII was claimed by an AP of the sender (draft
/// §10: "it sends a webhook callback to those GP, indicating that that
/// particular SII has been claimed"). The peer applies it with
/// [`SiiRecord::apply_claim`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// The SII concerned.
    pub sii: Sii,
    /// The AP that claimed it.
    pub by_ap: ProviderId,
    /// The GP that AP is enrolled with (the sender).
    pub from_gp: GpId,
    /// Delete the peer's mappings, or just outrank them.
    pub action: DisplaceAction,
    /// When the claim was made; mappings created or preferred later are left
    /// alone, so a late or retried delivery never undoes a newer choice.
    pub at_ms: u64,
    /// When the claimer's mapping was created. With `at_ms` (when it was
    /// made preferred) it is that mapping's [`Precedence`], so a local
    /// mapping made preferred in the very same millisecond is judged as
    /// [`select_preferred`] judges it. Absent from older senders' claims,
    /// taken then as `at_ms` (the latest it can be).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at_ms: Option<u64>,
}

/// Something the glue must deliver (through the durable outbox).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Notification {
    /// Webhook to a local AP (draft §8.2.1: "Through a webhook, the old
    /// provider AP1 will be notified that the mapping has been removed
    /// and/or preference established for the new provider").
    Displaced {
        /// The AP to notify (on this GP).
        to_ap: ProviderId,
        /// The SII concerned.
        sii: Sii,
        /// Who displaced it.
        by: Party,
        /// Deleted or outranked.
        action: DisplaceAction,
    },
    /// To the AP that displaced another: that AP undid it. If `to.gp` is
    /// another GP, the glue forwards this to that GP, which delivers it to
    /// its AP `to.ap`.
    Remedied {
        /// The displacing AP.
        to: Party,
        /// The SII concerned.
        sii: Sii,
        /// The AP (on this GP) that undid the change.
        by_ap: ProviderId,
        /// What it did.
        remedy: Remedy,
    },
    /// A claim for a peer GP whose filter may hold the SII (draft §10).
    Claim {
        /// The peer GP.
        to_gp: GpId,
        /// The claim to send.
        claim: Claim,
    },
    /// Webhook to a local AP: the SII's holder removed its mapping
    /// (beyond GLADOS-00; the user's own removal or opt-out).
    Removed {
        /// The AP to notify (on this GP).
        to_ap: ProviderId,
        /// The SII concerned.
        sii: Sii,
        /// The GP where the holder acted, when it is another GP.
        at_gp: Option<GpId>,
        /// Whether the holder also opted out of discovery.
        opted_out: bool,
    },
    /// The holder's action, for a peer GP whose filter may hold the SII.
    HolderClaim {
        /// The peer GP.
        to_gp: GpId,
        /// The claim to send.
        claim: HolderClaim,
    },
}

impl Notification {
    /// The local AP whose mapping this change deleted (another AP's
    /// replace, or the SII's holder), if any: it has one user fewer.
    pub fn deleted_mapping_of(&self) -> Option<&ProviderId> {
        match self {
            Notification::Displaced {
                to_ap,
                action: DisplaceAction::Replaced,
                ..
            }
            | Notification::Removed { to_ap, .. } => Some(to_ap),
            _ => None,
        }
    }
}

/// A strike against an AP's reputation (draft §8.2.1: "this would be a
/// strike against the reputation of the new provider. With sufficient
/// strikes, the GP can further rate limit that provider or remove their
/// access entirely"). If `against.gp` is another GP, forward it there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Strike {
    /// The AP reported.
    pub against: Party,
    /// The SII whose change was reported.
    pub sii: Sii,
    /// The AP whose user reported it.
    pub reported_by: ProviderId,
    /// That AP's GP, when it is another GP (a strike forwarded by a peer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported_by_gp: Option<GpId>,
    /// When it was reported.
    pub at_ms: u64,
    /// For a change made through a claim across GPs: that claim's `at_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_at_ms: Option<u64>,
}

/// A strike forwarded to the GP of the reported AP (`POST /peer/v1/strikes`).
///
/// draft §8.2.1: "In the case where the user reports the change as
/// malicious, this would be a strike against the reputation of the new
/// provider." When the new provider is enrolled at another GP, the old AP's
/// GP cannot apply the strike itself: it sends this notice, signed, from its
/// durable outbox, to exactly that GP, which checks it against its own
/// [`SentClaim`]s ([`SiiRecord::accept_peer_strike`]) and applies it once.
/// `id` is chosen by the sender once per report and reused on every retry:
/// the receiver applies a given `(from_gp, id)` at most once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StrikeNotice {
    /// The sender's id for this report (1–64 of `[A-Za-z0-9_-]`).
    pub id: String,
    /// The sending GP (must be the signer).
    pub from_gp: GpId,
    /// The reported AP, enrolled at the receiving GP.
    pub against: ProviderId,
    /// The SII whose change was reported.
    pub sii: Sii,
    /// The AP (on the sending GP) whose user reported it.
    pub reported_by: ProviderId,
    /// The `at_ms` of the receiver's claim that made the change, when the
    /// sender knows it (it does for displacements recorded since strikes
    /// are forwarded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_at_ms: Option<u64>,
    /// When the user reported it (sender's clock).
    pub at_ms: u64,
}

impl StrikeNotice {
    /// The notice for a strike against an AP of another GP (`None` if the
    /// strike is against an AP of this GP: that one is applied here).
    pub fn forward(strike: &Strike, id: String, own_gp: &str) -> Option<(GpId, StrikeNotice)> {
        let to_gp = strike.against.gp.clone()?;
        Some((
            to_gp,
            StrikeNotice {
                id,
                from_gp: own_gp.to_owned(),
                against: strike.against.ap.clone(),
                sii: strike.sii.clone(),
                reported_by: strike.reported_by.clone(),
                claim_at_ms: strike.claim_at_ms,
                at_ms: strike.at_ms,
            },
        ))
    }

    /// Whether `id` is an acceptable notice id (1–64 of `[A-Za-z0-9_-]`).
    pub fn id_is_valid(&self) -> bool {
        (1..=64).contains(&self.id.len())
            && self
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    }
}

/// What [`SiiRecord::accept_peer_strike`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerStrike {
    /// New: record this strike against the local AP.
    Apply(Strike),
    /// This notice (same sender, same id) was applied before: acknowledge,
    /// change nothing.
    Duplicate,
}

/// How the shard answered a peer's strike notice, for the notice's daily
/// slot (`PEER_STRIKES_PER_AP_PER_DAY`), which is taken before the shard is
/// asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StrikeOutcome {
    /// Applied now.
    Applied,
    /// Applied by an earlier delivery of the same notice.
    Duplicate,
    /// Refused for good (no such claim, already reported): never applied.
    Refused,
    /// The shard could not be asked or did not answer: unknown whether it
    /// applied; the sender retries the same notice id.
    Failed,
}

/// Whether a notice keeps the daily slot it holds (`fresh`: taken by this
/// delivery, not by an earlier one of the same notice). A slot stays with
/// every applied strike, whichever delivery applied it, and with nothing
/// else: a refused notice gives it back even when an earlier delivery took
/// it, and a failed call gives back the slot it took, since the retry takes
/// it again (and keeps it on `Duplicate` if the lost call did apply). So
/// as long as the sender retries, the slots held equal the strikes applied.
pub fn keep_strike_slot(outcome: StrikeOutcome, fresh: bool) -> bool {
    match outcome {
        StrikeOutcome::Applied | StrikeOutcome::Duplicate => true,
        StrikeOutcome::Refused => false,
        StrikeOutcome::Failed => !fresh,
    }
}

/// Result of [`SiiRecord::create_verified`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    /// The holder on another AP that outranks the caller, if any: the new AP must
    /// show the user the choice (draft §8.2.1: "it will include an
    /// indication that there is already a mapping in the old provider AP1,
    /// and include that provider ID and name"; the glue adds the name).
    pub existing: Option<Party>,
    /// Whether the new mapping is now the preferred one.
    pub preferred: bool,
}

/// Why a mapping operation was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MappingError {
    /// The AP has no mapping for this SII.
    NoSuchMapping,
    /// The AP tried to act on a mapping of another AP.
    NotYourMapping,
    /// No open displacement of the AP allows this remedy.
    NothingToRemedy,
    /// Reestablish asked for, but the AP already has a mapping.
    AlreadyMapped,
    /// This displacement was already reported.
    AlreadyReported,
    /// The SSI's provider is not the calling AP.
    SsiNotOfCaller,
    /// A claim for a different SII was applied to this record.
    WrongSii,
    /// A peer's strike notice matches no claim this GP sent it for that AP
    /// and SII within the remedy window.
    NoSuchClaim,
    /// A peer's claim dated further ahead of this GP's clock than
    /// [`MAX_CLAIM_SKEW_MS`].
    ClaimFromTheFuture,
    /// The SII's holder opted out of discovery: no mapping may be made
    /// until they opt back in (beyond GLADOS-00).
    OptedOut,
}

/// How far a peer's claim may be dated ahead of this GP's clock: the same
/// ±60 s that signatures allow (`httpsig::DEFAULT_WINDOW_S`). A claim dated
/// later would outrank every change made here until that time — with a
/// date years ahead, for good (draft §10: the most recent mapping wins).
pub const MAX_CLAIM_SKEW_MS: u64 = 60_000;

impl fmt::Display for MappingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MappingError::NoSuchMapping => "your provider has no mapping for this identifier",
            MappingError::NotYourMapping => {
                "that mapping belongs to another provider; an AP may only change its own"
            }
            MappingError::NothingToRemedy => {
                "your mapping for this identifier was not recently removed or outranked in a way this action can undo"
            }
            MappingError::AlreadyMapped => {
                "your provider already has a mapping for this identifier; use prefer-back instead"
            }
            MappingError::AlreadyReported => "this change has already been reported",
            MappingError::SsiNotOfCaller => {
                "the SSI's provider is not the provider making the request"
            }
            MappingError::WrongSii => "the claim is for a different identifier",
            MappingError::NoSuchClaim => {
                "this GP sent your GP no claim by that provider for this identifier within the remedy window, so there is no change of theirs to report"
            }
            MappingError::ClaimFromTheFuture => {
                "the claim's at_ms is more than 60 s ahead of this GP's clock; claims are dated when they are made"
            }
            MappingError::OptedOut => {
                "the holder of this identifier opted out of discovery; no mapping can be made for it until they opt back in"
            }
        })
    }
}

impl Problem for MappingError {
    fn slug(&self) -> &'static str {
        match self {
            MappingError::NoSuchMapping => "no-such-mapping",
            MappingError::NotYourMapping => "not-your-mapping",
            MappingError::NothingToRemedy => "nothing-to-remedy",
            MappingError::AlreadyMapped => "already-mapped",
            MappingError::AlreadyReported => "already-reported",
            MappingError::SsiNotOfCaller => "ssi-not-of-caller",
            MappingError::WrongSii => "wrong-sii",
            MappingError::NoSuchClaim => "no-such-claim",
            MappingError::ClaimFromTheFuture => "claim-from-the-future",
            MappingError::OptedOut => "sii-opted-out",
        }
    }
    fn title(&self) -> &'static str {
        match self {
            MappingError::NoSuchMapping => "No such mapping",
            MappingError::NotYourMapping => "Not your mapping",
            MappingError::NothingToRemedy => "Nothing to remedy",
            MappingError::AlreadyMapped => "Mapping already exists",
            MappingError::AlreadyReported => "Already reported",
            MappingError::SsiNotOfCaller => "SSI of another provider",
            MappingError::WrongSii => "Claim for another identifier",
            MappingError::NoSuchClaim => "No such claim",
            MappingError::ClaimFromTheFuture => "Claim dated in the future",
            MappingError::OptedOut => "Opted out of discovery",
        }
    }
    fn status(&self) -> u16 {
        match self {
            MappingError::NoSuchMapping => 404,
            MappingError::NotYourMapping | MappingError::SsiNotOfCaller => 403,
            MappingError::NothingToRemedy
            | MappingError::AlreadyMapped
            | MappingError::AlreadyReported
            | MappingError::OptedOut => 409,
            MappingError::WrongSii => 400,
            MappingError::NoSuchClaim | MappingError::ClaimFromTheFuture => 422,
        }
    }
}

/// Everything one GP knows about one SII. The glue persists it (one row per
/// SII in the SII's shard); an empty record ([`SiiRecord::is_empty`]) may be
/// deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiiRecord {
    sii: Sii,
    mappings: Vec<Mapping>,
    displacements: Vec<Displacement>,
    /// Claims this GP sent to peers for this SII (evidence for strikes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    claims_sent: Vec<SentClaim>,
    /// The latest `at_ms` of a peer GP's claim applied here (0: none): a
    /// local preference change applied after it is stamped later
    /// ([`SiiRecord::stamp`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    claimed_at_ms: u64,
    /// How long displacements can be remedied.
    remedy_window_ms: u64,
    /// Since when the SII's holder opted out of discovery, if they did
    /// (beyond GLADOS-00): queries answer `opted_out`, creations are
    /// refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    opted_out_at_ms: Option<u64>,
    /// The time of the latest opt-out or opt-in applied here (0: none), so
    /// an older one delivered late never undoes a newer one. Kept for the
    /// remedy window after an opt-in, then forgotten.
    #[serde(default, skip_serializing_if = "is_zero")]
    opt_at_ms: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl SiiRecord {
    /// An empty record with the default remedy window.
    pub fn new(sii: Sii) -> Self {
        Self::with_remedy_window(sii, DEFAULT_REMEDY_WINDOW_MS)
    }

    /// An empty record whose displacements stay remediable for `window_ms`.
    pub fn with_remedy_window(sii: Sii, window_ms: u64) -> Self {
        SiiRecord {
            sii,
            mappings: Vec::new(),
            displacements: Vec::new(),
            claims_sent: Vec::new(),
            claimed_at_ms: 0,
            remedy_window_ms: window_ms,
            opted_out_at_ms: None,
            opt_at_ms: 0,
        }
    }

    /// The SII this record is about.
    pub fn sii(&self) -> &Sii {
        &self.sii
    }

    /// All mappings, one per AP, in no particular order.
    pub fn mappings(&self) -> &[Mapping] {
        &self.mappings
    }

    /// Open displacements.
    pub fn displacements(&self) -> &[Displacement] {
        &self.displacements
    }

    /// Claims this GP sent to peers for this SII, still kept as evidence.
    pub fn claims_sent(&self) -> &[SentClaim] {
        &self.claims_sent
    }

    /// True when there is nothing left worth storing.
    pub fn is_empty(&self) -> bool {
        self.mappings.is_empty()
            && self.displacements.is_empty()
            && self.claims_sent.is_empty()
            && self.opted_out_at_ms.is_none()
            && self.opt_at_ms == 0
    }

    /// Whether the SII's holder opted out of discovery (beyond GLADOS-00).
    pub fn is_opted_out(&self) -> bool {
        self.opted_out_at_ms.is_some()
    }

    /// The AP's mapping, if any.
    pub fn mapping_of(&self, ap: &ProviderId) -> Option<&Mapping> {
        self.mappings.iter().find(|m| m.ap() == ap)
    }

    /// Replaces the tags and label of the AP's mapping (a bulk line for the
    /// same user with other tags): its verification and precedence stay as
    /// they are. `false` when the AP has no mapping of this SII.
    pub fn set_meta(&mut self, ap: &ProviderId, meta: MappingMeta) -> bool {
        match self.mappings.iter_mut().find(|m| m.ap() == ap) {
            Some(m) => {
                m.meta = meta;
                true
            }
            None => false,
        }
    }

    /// This GP's preferred mapping (same order as [`select_preferred`]).
    pub fn preferred(&self) -> Option<&Mapping> {
        self.mappings
            .iter()
            .max_by(|a, b| beats((&a.precedence(), "", &a.ssi), (&b.precedence(), "", &b.ssi)))
    }

    /// Every mapping, the preferred one first, then by precedence (the
    /// order an `all` answer lists them in).
    pub fn ranked(&self) -> Vec<&Mapping> {
        let mut v: Vec<&Mapping> = self.mappings.iter().collect();
        v.sort_by(|a, b| beats((&b.precedence(), "", &b.ssi), (&a.precedence(), "", &a.ssi)));
        v
    }

    /// The time a preference change at `now_ms` is stamped with: `now_ms`,
    /// or just after the latest preference in this record if that is not
    /// earlier. The shard applies changes to one record one at a time, but
    /// each request read its clock before it got there, so two racing
    /// changes can arrive out of clock order or in the same millisecond.
    /// Stamped with their own clocks, the one applied last could lose (an
    /// equal stamp goes by GP id and SSI) although it was acknowledged, and
    /// the AP it displaced would be told it lost while it stays preferred.
    /// So the last applied preference wins, here and, because claims and
    /// queries compare these stamps, at every GP. A peer's claim applied
    /// here counts too: a local change applied after it must outrank the
    /// claimer everywhere, or the AP that made it would be told it is
    /// preferred while every query answers the claimer.
    pub fn stamp(&self, now_ms: u64) -> u64 {
        self.mappings
            .iter()
            .filter_map(|m| m.preferred_at_ms)
            .chain((self.claimed_at_ms > 0).then_some(self.claimed_at_ms))
            .max()
            .map_or(now_ms, |latest| now_ms.max(latest.saturating_add(1)))
    }

    /// What this GP answers to a mapping query for the SII (draft §8.1: the
    /// remote GPs "consult only their local mappings").
    pub fn candidate(&self, own_gp: &str) -> Option<Candidate> {
        self.preferred().map(|m| Candidate::of(own_gp, m))
    }

    fn index_of(&self, ap: &ProviderId) -> Option<usize> {
        self.mappings.iter().position(|m| m.ap() == ap)
    }

    fn prune(&mut self, now_ms: u64) {
        let window = self.remedy_window_ms;
        self.displacements
            .retain(|d| now_ms.saturating_sub(d.at_ms) <= window);
        let evidence = window.saturating_add(CLAIM_EVIDENCE_SLACK_MS);
        self.claims_sent
            .retain(|c| now_ms.saturating_sub(c.at_ms) <= evidence);
        let excess = self.claims_sent.len().saturating_sub(MAX_SENT_CLAIMS);
        self.claims_sent.drain(..excess);
        if self.opted_out_at_ms.is_none() && now_ms.saturating_sub(self.opt_at_ms) > evidence {
            self.opt_at_ms = 0;
        }
    }

    fn record_displacement(&mut self, d: Displacement) {
        self.displacements.retain(|x| x.ap != d.ap);
        self.displacements.push(d);
    }

    fn open_displacement(&self, ap: &ProviderId, now_ms: u64) -> Option<usize> {
        self.displacements
            .iter()
            .position(|d| &d.ap == ap && now_ms.saturating_sub(d.at_ms) <= self.remedy_window_ms)
    }

    /// Stores a mapping whose code was just confirmed (or a bulk mapping).
    ///
    /// draft §8.2: "If there is a match, it considers the mapping validated,
    /// and stores it." `caller` is the AP from the access token; `remote` is
    /// the best candidate the glue found at peer GPs (its query path), so
    /// that a first mapping on this GP does not silently outrank a mapping
    /// held elsewhere.
    ///
    /// If the AP already had a mapping (the user re-registered), its SSI and
    /// verification are replaced and its preference standing is kept. A new
    /// mapping is preferred at once only if nobody else holds the SII;
    /// otherwise it waits for the user's [`Choice`] and `existing` names the
    /// current holder. No notification: the old AP is told when a choice is
    /// made.
    pub fn create_verified(
        &mut self,
        caller: &ProviderId,
        ssi: Ssi,
        verified_by: VerifiedBy,
        remote: Option<&Candidate>,
        now_ms: u64,
    ) -> Result<Created, MappingError> {
        let meta = MappingMeta::default();
        self.create_verified_with(caller, ssi, verified_by, meta, remote, now_ms)
    }

    /// [`Self::create_verified`] with the tags and label the AP attached.
    /// A re-registration replaces them with the new ones.
    pub fn create_verified_with(
        &mut self,
        caller: &ProviderId,
        ssi: Ssi,
        verified_by: VerifiedBy,
        meta: MappingMeta,
        remote: Option<&Candidate>,
        now_ms: u64,
    ) -> Result<Created, MappingError> {
        if ssi.provider() != caller {
            return Err(MappingError::SsiNotOfCaller);
        }
        if self.is_opted_out() {
            return Err(MappingError::OptedOut);
        }
        self.prune(now_ms);
        // Who is preferred among everyone else (local others and the remote).
        let local_other = self
            .mappings
            .iter()
            .filter(|m| m.ap() != caller)
            .max_by(|a, b| beats((&a.precedence(), "", &a.ssi), (&b.precedence(), "", &b.ssi)));
        let remote = remote.filter(|c| c.ssi.provider() != caller);
        let existing = match (local_other, remote) {
            (Some(l), Some(r)) if r.precedence > l.precedence() => Some(Party {
                ap: r.ssi.provider().clone(),
                gp: Some(r.gp.clone()),
            }),
            (Some(l), _) => Some(Party::local(l.ap().clone())),
            (None, Some(r)) => Some(Party {
                ap: r.ssi.provider().clone(),
                gp: Some(r.gp.clone()),
            }),
            (None, None) => None,
        };
        let preferred_at_ms = match self.mapping_of(caller) {
            Some(old) => old.preferred_at_ms,
            // draft §10: "When the user utilizes a first application, that
            // application is automatically preferred."
            None if existing.is_none() => Some(now_ms),
            None => None,
        };
        let mapping = Mapping {
            ssi,
            verified_by,
            created_at_ms: now_ms,
            preferred_at_ms,
            meta,
        };
        match self.index_of(caller) {
            Some(i) => {
                if let Some(slot) = self.mappings.get_mut(i) {
                    *slot = mapping;
                }
            }
            None => self.mappings.push(mapping),
        }
        // Preferred if it wins locally and beats the remote holder too.
        let preferred = self.preferred().is_some_and(|m| m.ap() == caller)
            && remote.is_none_or(|r| {
                self.mapping_of(caller)
                    .is_some_and(|m| m.precedence() > r.precedence)
            });
        Ok(Created {
            existing: if preferred { None } else { existing },
            preferred,
        })
    }

    /// Applies the user's choice made in the new AP (draft §8.2.1, §10).
    ///
    /// Both choices make the caller preferred as of `now_ms`. `Replace` also
    /// deletes every other AP's mapping on this GP. Every local AP that loses
    /// (deleted, or previously preferred and now outranked) gets a
    /// [`Notification::Displaced`] and a [`Displacement`] it can remedy, and
    /// each GP in `claim_peers` (those whose filters may hold the SII; the
    /// glue decides) gets a [`Notification::Claim`] (draft §10: "the GP of
    /// the new AP looks into its routing filters to see if any other GP
    /// might own a mapping for the SII which has changed").
    pub fn choose(
        &mut self,
        caller: &ProviderId,
        choice: Choice,
        own_gp: &str,
        claim_peers: &[GpId],
        now_ms: u64,
    ) -> Result<Vec<Notification>, MappingError> {
        if self.mapping_of(caller).is_none() {
            return Err(MappingError::NoSuchMapping);
        }
        let now_ms = self.stamp(now_ms);
        self.prune(now_ms);
        let previously_preferred = self.preferred().map(|m| m.ap().clone());
        let by = Party::local(caller.clone());
        let mut out = Vec::new();
        let action = match choice {
            Choice::Replace => DisplaceAction::Replaced,
            Choice::Prefer => DisplaceAction::Outpreferred,
        };
        match choice {
            Choice::Replace => {
                let (keep, removed): (Vec<Mapping>, Vec<Mapping>) =
                    core::mem::take(&mut self.mappings)
                        .into_iter()
                        .partition(|m| m.ap() == caller);
                self.mappings = keep;
                for old in removed {
                    out.push(self.displace(
                        old,
                        by.clone(),
                        DisplaceAction::Replaced,
                        now_ms,
                        None,
                    ));
                }
            }
            Choice::Prefer => {
                if let Some(prev) = previously_preferred.filter(|p| p != caller) {
                    if let Some(old) = self.mapping_of(&prev).cloned() {
                        out.push(self.displace(
                            old,
                            by.clone(),
                            DisplaceAction::Outpreferred,
                            now_ms,
                            None,
                        ));
                    }
                }
            }
        }
        if let Some(m) = self.mappings.iter_mut().find(|m| m.ap() == caller) {
            m.preferred_at_ms = Some(now_ms);
        }
        out.extend(self.claims_for(caller, action, own_gp, claim_peers, now_ms));
        Ok(out)
    }

    /// The [`Notification::Claim`]s telling `peers` (other than `own_gp`)
    /// that `caller` took the preference as of `now_ms` (draft §10: "If it
    /// finds a match, it sends a webhook callback to those GP, indicating
    /// that that particular SII has been claimed"), each remembered as a
    /// [`SentClaim`] so that a peer's strike for it can be checked. Used by
    /// [`Self::choose`] and, by the glue, after a prefer-back or a
    /// reestablish (the old AP is preferred again as of now, so the peers —
    /// and with them a displacing AP on another GP — are told the same way).
    pub fn claims_for(
        &mut self,
        caller: &ProviderId,
        action: DisplaceAction,
        own_gp: &str,
        peers: &[GpId],
        now_ms: u64,
    ) -> Vec<Notification> {
        let mut out: Vec<Notification> = Vec::new();
        let created_at_ms = self.mapping_of(caller).map(|m| m.created_at_ms);
        for gp in peers.iter().filter(|g| g.as_str() != own_gp) {
            if out
                .iter()
                .any(|n| matches!(n, Notification::Claim { to_gp, .. } if to_gp == gp))
            {
                continue;
            }
            self.claims_sent.push(SentClaim {
                ap: caller.clone(),
                to_gp: gp.clone(),
                at_ms: now_ms,
                action,
                struck_by: None,
            });
            out.push(Notification::Claim {
                to_gp: gp.clone(),
                claim: Claim {
                    sii: self.sii.clone(),
                    by_ap: caller.clone(),
                    from_gp: own_gp.to_owned(),
                    action,
                    at_ms: now_ms,
                    created_at_ms,
                },
            });
        }
        self.prune(now_ms);
        out
    }

    /// Checks and records a peer GP's strike notice against one of this
    /// GP's APs (draft §8.2.1: "In the case where the user reports the
    /// change as malicious, this would be a strike against the reputation
    /// of the new provider").
    ///
    /// What this GP can check, and why this: the change being reported was
    /// made by an AP of this GP and reached the reporting GP only as a claim
    /// *this* GP sent it (draft §10: "If it finds a match, it sends a
    /// webhook callback to those GP, indicating that that particular SII
    /// has been claimed"). So a notice is plausible only if this record
    /// holds a [`SentClaim`] by `against` for this SII to `from_gp`, no
    /// older than the remedy window (plus slack) — whether or not the
    /// mapping still exists here (the AP may have deleted it since; the
    /// claim still happened). With `claim_at_ms` the notice names the claim
    /// exactly; without it the latest claim not yet struck is taken. What
    /// cannot be checked here is whether the peer's user really objected:
    /// GPs are "fully trusted" (draft §11.1), and the glue bounds how many
    /// strikes one peer may deliver per AP and day.
    ///
    /// One strike per claim: the same notice again (same sender, same id) is
    /// [`PeerStrike::Duplicate`]; another notice for an already struck claim
    /// is [`MappingError::AlreadyReported`].
    pub fn accept_peer_strike(
        &mut self,
        n: &StrikeNotice,
        now_ms: u64,
    ) -> Result<PeerStrike, MappingError> {
        if n.sii != self.sii {
            return Err(MappingError::WrongSii);
        }
        let evidence = self
            .remedy_window_ms
            .saturating_add(CLAIM_EVIDENCE_SLACK_MS);
        let matching = |c: &SentClaim| {
            c.ap == n.against
                && c.to_gp == n.from_gp
                && n.claim_at_ms.is_none_or(|t| t == c.at_ms)
                && now_ms.saturating_sub(c.at_ms) <= evidence
        };
        if self
            .claims_sent
            .iter()
            .any(|c| matching(c) && c.struck_by.as_deref() == Some(n.id.as_str()))
        {
            return Ok(PeerStrike::Duplicate);
        }
        if !self.claims_sent.iter().any(&matching) {
            return Err(MappingError::NoSuchClaim);
        }
        let Some(c) = self
            .claims_sent
            .iter_mut()
            .filter(|c| matching(c) && c.struck_by.is_none())
            .max_by_key(|c| c.at_ms)
        else {
            return Err(MappingError::AlreadyReported);
        };
        c.struck_by = Some(n.id.clone());
        let claim_at_ms = Some(c.at_ms);
        self.prune(now_ms);
        Ok(PeerStrike::Apply(Strike {
            against: Party::local(n.against.clone()),
            sii: self.sii.clone(),
            reported_by: n.reported_by.clone(),
            reported_by_gp: Some(n.from_gp.clone()),
            at_ms: now_ms,
            claim_at_ms,
        }))
    }

    fn displace(
        &mut self,
        old: Mapping,
        by: Party,
        action: DisplaceAction,
        now_ms: u64,
        claim_at_ms: Option<u64>,
    ) -> Notification {
        let ap = old.ap().clone();
        self.record_displacement(Displacement {
            ap: ap.clone(),
            by: by.clone(),
            action,
            at_ms: now_ms,
            old,
            remedied: false,
            reported: false,
            claim_at_ms,
        });
        Notification::Displaced {
            to_ap: ap,
            sii: self.sii.clone(),
            by,
            action,
        }
    }

    /// Checks a peer GP's claim (of either kind) before it is applied: for
    /// this SII, and not dated ahead of this GP's clock by more than the
    /// signatures' window (it would outrank every change made here until
    /// then).
    fn admit_claim(&mut self, sii: &Sii, at_ms: u64, now_ms: u64) -> Result<(), MappingError> {
        if *sii != self.sii {
            return Err(MappingError::WrongSii);
        }
        if at_ms > now_ms.saturating_add(MAX_CLAIM_SKEW_MS) {
            return Err(MappingError::ClaimFromTheFuture);
        }
        self.prune(now_ms);
        Ok(())
    }

    /// Applies a peer GP's [`Claim`] (draft §10) to this GP's record.
    ///
    /// `Replaced` deletes the local mappings of other APs that are not newer
    /// than the claim; `Outpreferred` changes nothing here (the claimer's
    /// newer `preferred_at_ms` already wins precedence) but tells the locally
    /// preferred AP, if it is not newer than the claim. Either way the
    /// affected local APs get a [`Notification::Displaced`] and can remedy.
    ///
    /// A local mapping made preferred in the claim's own millisecond is
    /// judged as [`select_preferred`] judges the two: by creation time, then
    /// the smaller GP id (`own_gp` is this GP's). Otherwise an AP could be
    /// told it lost while every query still answers its mapping.
    pub fn apply_claim(
        &mut self,
        claim: &Claim,
        own_gp: &str,
        now_ms: u64,
    ) -> Result<Vec<Notification>, MappingError> {
        self.admit_claim(&claim.sii, claim.at_ms, now_ms)?;
        self.claimed_at_ms = self.claimed_at_ms.max(claim.at_ms);
        let by = Party {
            ap: claim.by_ap.clone(),
            gp: Some(claim.from_gp.clone()),
        };
        let claimed = Precedence {
            preferred_at_ms: Some(claim.at_ms),
            // A mapping is made preferred after it exists: a claim saying
            // otherwise cannot raise its creation past its preference.
            created_at_ms: claim.created_at_ms.unwrap_or(claim.at_ms).min(claim.at_ms),
        };
        let not_newer = |m: &Mapping| {
            m.ap() != &claim.by_ap
                && m.created_at_ms <= claim.at_ms
                && m.preferred_at_ms.is_none_or(|t| t <= claim.at_ms)
                && match claimed.cmp(&m.precedence()) {
                    Ordering::Greater => true,
                    Ordering::Less => false,
                    Ordering::Equal => claim.from_gp.as_str() < own_gp,
                }
        };
        let mut out = Vec::new();
        match claim.action {
            DisplaceAction::Replaced => {
                let (removed, keep): (Vec<Mapping>, Vec<Mapping>) =
                    core::mem::take(&mut self.mappings)
                        .into_iter()
                        .partition(not_newer);
                self.mappings = keep;
                for old in removed {
                    out.push(self.displace(
                        old,
                        by.clone(),
                        DisplaceAction::Replaced,
                        now_ms,
                        Some(claim.at_ms),
                    ));
                }
            }
            DisplaceAction::Outpreferred => {
                if let Some(old) = self.preferred().filter(|m| not_newer(m)).cloned() {
                    out.push(self.displace(
                        old,
                        by,
                        DisplaceAction::Outpreferred,
                        now_ms,
                        Some(claim.at_ms),
                    ));
                }
            }
        }
        Ok(out)
    }

    /// The displaced AP re-creates its deleted mapping, preferred again
    /// (draft §8.2.1: "the user can request their old app to re-establish
    /// the mapping").
    ///
    /// Allowed once per displacement, within the remedy window, only after
    /// a `Replaced` displacement and only while the AP has no mapping. No
    /// new code is sent: the mapping was verified before and only the AP
    /// that lost it can restore it. The displacing AP is notified and may
    /// choose again or report; a recycled phone number (§8.2.2) whose old
    /// AP fights back thus costs it strikes.
    pub fn reestablish(
        &mut self,
        caller: &ProviderId,
        now_ms: u64,
    ) -> Result<Vec<Notification>, MappingError> {
        if self.mapping_of(caller).is_some() {
            return Err(MappingError::AlreadyMapped);
        }
        if self.is_opted_out() {
            return Err(MappingError::OptedOut);
        }
        let now_ms = self.stamp(now_ms);
        let holder = self.preferred().cloned();
        let i = self
            .open_displacement(caller, now_ms)
            .filter(|&i| {
                self.displacements
                    .get(i)
                    .is_some_and(|d| !d.remedied && d.action == DisplaceAction::Replaced)
            })
            .ok_or(MappingError::NothingToRemedy)?;
        let Some(d) = self.displacements.get_mut(i) else {
            return Err(MappingError::NothingToRemedy);
        };
        d.remedied = true;
        let mut m = d.old.clone();
        let to = d.by.clone();
        m.preferred_at_ms = Some(now_ms);
        self.mappings.push(m);
        let mut out = self.outrank_holder(holder, caller, &to, now_ms);
        self.prune(now_ms);
        out.push(Notification::Remedied {
            to,
            sii: self.sii.clone(),
            by_ap: caller.clone(),
            remedy: Remedy::Reestablished,
        });
        Ok(out)
    }

    /// The displaced AP makes its kept mapping preferred again (draft
    /// §8.2.1: "change the preference back"). Allowed once per
    /// displacement, within the remedy window, while the AP still has its
    /// mapping (after a `Replaced` displacement use [`Self::reestablish`]).
    pub fn prefer_back(
        &mut self,
        caller: &ProviderId,
        now_ms: u64,
    ) -> Result<Vec<Notification>, MappingError> {
        let mi = self.index_of(caller).ok_or(MappingError::NoSuchMapping)?;
        let now_ms = self.stamp(now_ms);
        let holder = self.preferred().cloned();
        let di = self
            .open_displacement(caller, now_ms)
            .filter(|&i| self.displacements.get(i).is_some_and(|d| !d.remedied))
            .ok_or(MappingError::NothingToRemedy)?;
        let Some(d) = self.displacements.get_mut(di) else {
            return Err(MappingError::NothingToRemedy);
        };
        d.remedied = true;
        let to = d.by.clone();
        if let Some(m) = self.mappings.get_mut(mi) {
            m.preferred_at_ms = Some(now_ms);
        }
        let mut out = self.outrank_holder(holder, caller, &to, now_ms);
        self.prune(now_ms);
        out.push(Notification::Remedied {
            to,
            sii: self.sii.clone(),
            by_ap: caller.clone(),
            remedy: Remedy::PreferredBack,
        });
        Ok(out)
    }

    /// A remedy makes the caller preferred again. The AP preferred until
    /// then (`holder`) loses the preference; when that is not the AP the
    /// remedy answers (`displacer`, told by `Remedied`) — another AP took
    /// the preference from the displacer meanwhile — it is told as for a
    /// choice: `Outpreferred`, with a displacement it can remedy in turn.
    fn outrank_holder(
        &mut self,
        holder: Option<Mapping>,
        caller: &ProviderId,
        displacer: &Party,
        now_ms: u64,
    ) -> Vec<Notification> {
        match holder {
            Some(h) if h.ap() != caller && !(displacer.gp.is_none() && h.ap() == &displacer.ap) => {
                let by = Party::local(caller.clone());
                vec![self.displace(h, by, DisplaceAction::Outpreferred, now_ms, None)]
            }
            _ => Vec::new(),
        }
    }

    /// The displaced AP reports the change as malicious (draft §8.2.1: "In
    /// the case where the user reports the change as malicious, this would
    /// be a strike against the reputation of the new provider"). One strike
    /// per displacement, within the remedy window; it may be combined with
    /// a remedy in either order.
    pub fn report_malicious(
        &mut self,
        caller: &ProviderId,
        now_ms: u64,
    ) -> Result<Strike, MappingError> {
        let i = self
            .open_displacement(caller, now_ms)
            .ok_or(MappingError::NothingToRemedy)?;
        let Some(d) = self.displacements.get_mut(i) else {
            return Err(MappingError::NothingToRemedy);
        };
        if d.reported {
            return Err(MappingError::AlreadyReported);
        }
        d.reported = true;
        let strike = Strike {
            against: d.by.clone(),
            sii: self.sii.clone(),
            reported_by: caller.clone(),
            reported_by_gp: None,
            at_ms: now_ms,
            claim_at_ms: d.claim_at_ms,
        };
        self.prune(now_ms);
        Ok(strike)
    }

    /// The SII's holder, having proved control of it here, removes every
    /// mapping of it, opts it out of discovery or back in (beyond
    /// GLADOS-00; MIMI R5, R9, R10).
    ///
    /// `Remove` and `OptOut` delete every mapping on this GP and every
    /// open displacement (an AP must not restore what the holder removed),
    /// and tell each AP that lost one ([`Notification::Removed`]); `OptOut`
    /// also marks the SII so that queries answer `opted_out` and creations
    /// are refused; `OptIn` lifts that. Each GP in `peers` (those whose
    /// filters may hold the SII; the glue decides) gets the same action as
    /// a [`HolderClaim`]. Returns the notifications and the time the
    /// action is dated.
    pub fn holder_act(
        &mut self,
        action: HolderAction,
        own_gp: &str,
        peers: &[GpId],
        now_ms: u64,
    ) -> (Vec<Notification>, u64) {
        // Later than any opt-out or opt-in already applied here, so this
        // one wins everywhere.
        let at_ms = match action {
            HolderAction::Remove => now_ms,
            _ => now_ms.max(self.opt_at_ms.saturating_add(1)),
        };
        self.prune(at_ms);
        let mut out = self.holder_apply(action, at_ms, None, true);
        let claim = HolderClaim {
            sii: self.sii.clone(),
            from_gp: own_gp.to_owned(),
            action,
            at_ms,
        };
        let mut told: Vec<&GpId> = Vec::new();
        for gp in peers.iter().filter(|g| g.as_str() != own_gp) {
            if !told.contains(&gp) {
                told.push(gp);
                out.push(Notification::HolderClaim {
                    to_gp: gp.clone(),
                    claim: claim.clone(),
                });
            }
        }
        (out, at_ms)
    }

    /// Applies a peer GP's [`HolderClaim`]: the holder acted there.
    ///
    /// A removal deletes the mappings created up to the claim's time (one
    /// made later here was made after the holder asked). An opt-out
    /// deletes every mapping and marks the SII; an opt-in lifts the mark;
    /// either only if it is newer than the last one applied here, so a
    /// late delivery never undoes a newer choice.
    pub fn apply_holder_claim(
        &mut self,
        claim: &HolderClaim,
        now_ms: u64,
    ) -> Result<Vec<Notification>, MappingError> {
        self.admit_claim(&claim.sii, claim.at_ms, now_ms)?;
        let newest = claim.action == HolderAction::Remove || claim.at_ms > self.opt_at_ms;
        if !newest {
            return Ok(Vec::new());
        }
        let all = claim.action == HolderAction::OptOut;
        Ok(self.holder_apply(claim.action, claim.at_ms, Some(claim.from_gp.clone()), all))
    }

    /// The record change of a holder's action dated `at_ms`: mappings
    /// removed (all of them, or those created up to `at_ms`), the opt-out
    /// mark set or lifted; a [`Notification::Removed`] per AP that lost its
    /// mapping.
    fn holder_apply(
        &mut self,
        action: HolderAction,
        at_ms: u64,
        at_gp: Option<GpId>,
        all: bool,
    ) -> Vec<Notification> {
        if action == HolderAction::OptIn {
            self.opted_out_at_ms = None;
            self.opt_at_ms = self.opt_at_ms.max(at_ms);
            return Vec::new();
        }
        let opted_out = action == HolderAction::OptOut;
        if opted_out {
            self.opted_out_at_ms = Some(at_ms);
            self.opt_at_ms = self.opt_at_ms.max(at_ms);
        }
        let (removed, keep): (Vec<Mapping>, Vec<Mapping>) = core::mem::take(&mut self.mappings)
            .into_iter()
            .partition(|m| all || m.created_at_ms <= at_ms);
        self.mappings = keep;
        // No remedy may bring back what the holder removed (a replaced
        // AP's re-establish included).
        self.displacements.retain(|d| !all && d.at_ms > at_ms);
        removed
            .into_iter()
            .map(|m| Notification::Removed {
                to_ap: m.ap().clone(),
                sii: self.sii.clone(),
                at_gp: at_gp.clone(),
                opted_out,
            })
            .collect()
    }

    /// Deletes a mapping at its own AP's request. An AP may delete only its
    /// own mapping (others' go only through [`Choice::Replace`]). Nobody is
    /// notified; if it was preferred, the next one by precedence takes over.
    pub fn delete(
        &mut self,
        caller: &ProviderId,
        ssi: &Ssi,
        now_ms: u64,
    ) -> Result<Mapping, MappingError> {
        if ssi.provider() != caller {
            return Err(MappingError::NotYourMapping);
        }
        let i = self
            .mappings
            .iter()
            .position(|m| &m.ssi == ssi)
            .ok_or(MappingError::NoSuchMapping)?;
        let removed = self.mappings.remove(i);
        // Remedies for a mapping the AP gave up make no sense any more.
        self.displacements.retain(|d| &d.ap != caller);
        self.prune(now_ms);
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {

    /// Issue 14 item 6: the slot of a notice whose shard call failed, or
    /// which was refused after an earlier delivery took it, used to stay
    /// taken for a day.
    #[test]
    fn a_strike_slot_stays_only_with_an_applied_strike() {
        use StrikeOutcome::*;
        for fresh in [true, false] {
            assert!(keep_strike_slot(Applied, fresh));
            assert!(keep_strike_slot(Duplicate, fresh));
            assert!(!keep_strike_slot(Refused, fresh), "refused, fresh={fresh}");
        }
        assert!(!keep_strike_slot(Failed, true), "failed call: give back");
        assert!(
            keep_strike_slot(Failed, false),
            "an earlier delivery's slot stays"
        );
    }
    use super::*;

    const DAY: u64 = 24 * 3_600_000;

    fn sii() -> Sii {
        Sii::parse("+1 415 555 0100").unwrap()
    }
    fn ap(name: &str) -> ProviderId {
        ProviderId::parse(name).unwrap()
    }
    fn ssi(provider: &str, user: &str) -> Ssi {
        Ssi::parse(&format!("{provider}:{user}")).unwrap()
    }
    fn local(name: &str) -> Party {
        Party::local(ap(name))
    }
    /// Record with `a` created at t=1000 (preferred: first use).
    fn with_a() -> SiiRecord {
        let mut r = SiiRecord::new(sii());
        let c = r
            .create_verified(&ap("a"), ssi("a", "alice"), VerifiedBy::Sms, None, 1_000)
            .unwrap();
        assert!(c.preferred);
        r
    }
    /// `with_a` plus `b` created at t=2000 (kept the old one for now).
    fn with_a_b() -> SiiRecord {
        let mut r = with_a();
        let c = r
            .create_verified(&ap("b"), ssi("b", "bob"), VerifiedBy::Email, None, 2_000)
            .unwrap();
        assert_eq!(
            c,
            Created {
                existing: Some(local("a")),
                preferred: false
            }
        );
        r
    }
    fn preferred_ap(r: &SiiRecord) -> Option<String> {
        r.preferred().map(|m| m.ap().to_string())
    }

    #[test]
    fn first_mapping_is_automatically_preferred() {
        let r = with_a();
        let m = r.preferred().unwrap();
        assert_eq!(m.ssi, ssi("a", "alice"));
        assert_eq!(m.preferred_at_ms, Some(1_000));
        assert_eq!(m.verified_by, VerifiedBy::Sms);
    }

    fn removed_aps(notes: &[Notification]) -> Vec<String> {
        notes
            .iter()
            .filter_map(|n| match n {
                Notification::Removed { to_ap, .. } => Some(to_ap.to_string()),
                _ => None,
            })
            .collect()
    }

    fn holder_claim(action: HolderAction, at_ms: u64) -> HolderClaim {
        HolderClaim {
            sii: sii(),
            from_gp: "gp9".into(),
            action,
            at_ms,
        }
    }

    #[test]
    fn the_holder_removes_every_mapping_and_no_remedy_brings_one_back() {
        let mut r = with_a_b();
        r.choose(&ap("b"), Choice::Replace, "gp1", &[], 3_000)
            .unwrap();
        assert!(
            r.mapping_of(&ap("a")).is_none(),
            "a was replaced and could re-establish"
        );
        let peers = ["gp2".to_string(), "gp1".into(), "gp2".into()];
        let (notes, at) = r.holder_act(HolderAction::Remove, "gp1", &peers, 4_000);
        assert_eq!(at, 4_000);
        assert_eq!(removed_aps(&notes), ["b"]);
        let claims: Vec<_> = notes
            .iter()
            .filter_map(|n| match n {
                Notification::HolderClaim { to_gp, claim } => Some((to_gp.clone(), claim.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(
            claims,
            vec![(
                "gp2".to_string(),
                HolderClaim {
                    sii: sii(),
                    from_gp: "gp1".into(),
                    action: HolderAction::Remove,
                    at_ms: 4_000
                }
            )]
        );
        assert!(r.mappings().is_empty());
        assert_eq!(
            r.reestablish(&ap("a"), 5_000),
            Err(MappingError::NothingToRemedy)
        );
        assert!(!r.is_opted_out());
        // A removal does not stop a later registration.
        let c = r
            .create_verified(&ap("c"), ssi("c", "cy"), VerifiedBy::Sms, None, 6_000)
            .unwrap();
        assert!(c.preferred);
    }

    #[test]
    fn an_opt_out_refuses_creation_until_the_holder_opts_in() {
        let mut r = with_a_b();
        let (notes, _) = r.holder_act(HolderAction::OptOut, "gp1", &[], 3_000);
        assert_eq!(removed_aps(&notes).len(), 2);
        assert!(notes.iter().all(|n| matches!(
            n,
            Notification::Removed {
                opted_out: true,
                at_gp: None,
                ..
            }
        )));
        assert!(r.is_opted_out());
        assert!(!r.is_empty(), "the opt-out itself is kept");
        assert_eq!(r.candidate("gp1"), None);
        let before = r.clone();
        let e = r
            .create_verified(&ap("a"), ssi("a", "alice"), VerifiedBy::Sms, None, 4_000)
            .unwrap_err();
        assert_eq!((e.slug(), e.status()), ("sii-opted-out", 409));
        assert_eq!(r, before);
        let (notes, _) = r.holder_act(HolderAction::OptIn, "gp1", &["gp2".into()], 5_000);
        assert!(matches!(
            notes.as_slice(),
            [Notification::HolderClaim {
                claim: HolderClaim {
                    action: HolderAction::OptIn,
                    ..
                },
                ..
            }]
        ));
        assert!(!r.is_opted_out());
        assert!(r
            .create_verified(&ap("a"), ssi("a", "alice"), VerifiedBy::Sms, None, 6_000)
            .is_ok());
        // The opt-in's time is forgotten after the window; then the record
        // may go once empty.
        let mut empty = SiiRecord::new(sii());
        empty.holder_act(HolderAction::OptOut, "gp1", &[], 1_000);
        empty.holder_act(HolderAction::OptIn, "gp1", &[], 2_000);
        assert!(!empty.is_empty());
        empty.prune(2_000 + DEFAULT_REMEDY_WINDOW_MS + CLAIM_EVIDENCE_SLACK_MS + 1);
        assert!(empty.is_empty());
    }

    #[test]
    fn a_peers_holder_claim_is_applied_in_time_order() {
        let mut r = with_a_b(); // a at 1000, b at 2000
                                // A removal dated between the two creations removes only a.
        let n = r
            .apply_holder_claim(&holder_claim(HolderAction::Remove, 1_500), 3_000)
            .unwrap();
        assert_eq!(removed_aps(&n), ["a"]);
        assert!(
            matches!(&n[0], Notification::Removed { at_gp: Some(g), opted_out: false, .. } if g == "gp9")
        );
        assert_eq!(r.mappings().len(), 1);
        // An opt-out removes everything, whenever it was made.
        let n = r
            .apply_holder_claim(&holder_claim(HolderAction::OptOut, 1_600), 3_000)
            .unwrap();
        assert_eq!(removed_aps(&n), ["b"]);
        assert!(r.is_opted_out());
        // An opt-in newer than it lifts it; an older opt-out arriving late
        // (or again) changes nothing.
        r.apply_holder_claim(&holder_claim(HolderAction::OptIn, 2_500), 3_000)
            .unwrap();
        assert!(!r.is_opted_out());
        let before = r.clone();
        assert_eq!(
            r.apply_holder_claim(&holder_claim(HolderAction::OptOut, 1_600), 3_000),
            Ok(vec![])
        );
        assert_eq!(r, before);
        // A local opt-out after that is dated after the peer's opt-in.
        let (_, at) = r.holder_act(HolderAction::OptOut, "gp1", &[], 2_000);
        assert_eq!(at, 2_501);
        // Refused: another SII, dated past the clock skew.
        let mut other = holder_claim(HolderAction::Remove, 1);
        other.sii = Sii::parse("+1 415 555 0199").unwrap();
        assert_eq!(
            r.apply_holder_claim(&other, 3_000),
            Err(MappingError::WrongSii)
        );
        assert_eq!(
            r.apply_holder_claim(
                &holder_claim(HolderAction::Remove, 3_000 + MAX_CLAIM_SKEW_MS + 1),
                3_000
            ),
            Err(MappingError::ClaimFromTheFuture)
        );
    }

    #[test]
    fn ranked_lists_the_preferred_first() {
        let mut r = with_a_b();
        let names = |r: &SiiRecord| -> Vec<String> {
            r.ranked().iter().map(|m| m.ap().to_string()).collect()
        };
        assert_eq!(names(&r), ["a", "b"]);
        r.choose(&ap("b"), Choice::Prefer, "gp1", &[], 3_000)
            .unwrap();
        assert_eq!(names(&r), ["b", "a"]);
        assert_eq!(r.ranked()[0], r.preferred().unwrap());
    }

    #[test]
    fn second_ap_is_stored_but_old_stays_preferred_until_choice() {
        let r = with_a_b();
        assert_eq!(r.mappings().len(), 2);
        assert_eq!(preferred_ap(&r).as_deref(), Some("a"));
        assert_eq!(r.mapping_of(&ap("b")).unwrap().preferred_at_ms, None);
    }

    #[test]
    fn ssi_of_another_provider_is_refused() {
        let mut r = with_a();
        let before = r.clone();
        let e = r
            .create_verified(&ap("b"), ssi("a", "mallory"), VerifiedBy::Sms, None, 5)
            .unwrap_err();
        assert_eq!(e, MappingError::SsiNotOfCaller);
        assert_eq!((e.slug(), e.status()), ("ssi-not-of-caller", 403));
        assert_eq!(r, before);
    }

    #[test]
    fn re_registration_on_same_ap_keeps_standing() {
        let mut r = with_a_b();
        let c = r
            .create_verified(&ap("a"), ssi("a", "alice2"), VerifiedBy::Email, None, 3_000)
            .unwrap();
        assert_eq!(
            c,
            Created {
                existing: None,
                preferred: true
            }
        );
        assert_eq!(r.mappings().len(), 2);
        let m = r.mapping_of(&ap("a")).unwrap();
        assert_eq!(m.ssi, ssi("a", "alice2"));
        assert_eq!(m.preferred_at_ms, Some(1_000));
        // b re-registering is still not preferred and is told about a again.
        let c = r
            .create_verified(&ap("b"), ssi("b", "bob"), VerifiedBy::Sms, None, 3_500)
            .unwrap();
        assert_eq!(c.existing, Some(local("a")));
    }

    #[test]
    fn prefer_outranks_and_notifies_old_ap() {
        let mut r = with_a_b();
        let n = r
            .choose(&ap("b"), Choice::Prefer, "gp1", &[], 3_000)
            .unwrap();
        assert_eq!(
            n,
            vec![Notification::Displaced {
                to_ap: ap("a"),
                sii: sii(),
                by: local("b"),
                action: DisplaceAction::Outpreferred,
            }]
        );
        assert_eq!(preferred_ap(&r).as_deref(), Some("b"));
        assert!(
            r.mapping_of(&ap("a")).is_some(),
            "Prefer keeps the old mapping"
        );
        let d = &r.displacements()[0];
        assert_eq!(
            (d.ap.as_str(), d.action),
            ("a", DisplaceAction::Outpreferred)
        );
        // Preferring again while already preferred notifies nobody.
        assert!(r
            .choose(&ap("b"), Choice::Prefer, "gp1", &[], 3_100)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn choice_without_mapping_is_refused_and_changes_nothing() {
        let mut r = with_a();
        let before = r.clone();
        let e = r
            .choose(&ap("b"), Choice::Replace, "gp1", &[], 3_000)
            .unwrap_err();
        assert_eq!((e.slug(), e.status()), ("no-such-mapping", 404));
        assert_eq!(r, before);
    }

    #[test]
    fn a_creates_b_prefers_a_prefers_back_a_reports() {
        let mut r = with_a_b();
        r.choose(&ap("b"), Choice::Prefer, "gp1", &[], 3_000)
            .unwrap();
        let n = r.prefer_back(&ap("a"), 4_000).unwrap();
        assert_eq!(
            n,
            vec![Notification::Remedied {
                to: local("b"),
                sii: sii(),
                by_ap: ap("a"),
                remedy: Remedy::PreferredBack,
            }]
        );
        assert_eq!(preferred_ap(&r).as_deref(), Some("a"));
        assert_eq!(r.mapping_of(&ap("a")).unwrap().preferred_at_ms, Some(4_000));
        // Only once per displacement.
        let e = r.prefer_back(&ap("a"), 4_100).unwrap_err();
        assert_eq!((e.slug(), e.status()), ("nothing-to-remedy", 409));
        // Reporting is still possible after the remedy, once.
        let s = r.report_malicious(&ap("a"), 5_000).unwrap();
        assert_eq!(
            s,
            Strike {
                against: local("b"),
                sii: sii(),
                reported_by: ap("a"),
                reported_by_gp: None,
                at_ms: 5_000,
                claim_at_ms: None,
            }
        );
        let e = r.report_malicious(&ap("a"), 5_001).unwrap_err();
        assert_eq!((e.slug(), e.status()), ("already-reported", 409));
        // b was never displaced, so it has nothing to remedy or report.
        assert_eq!(
            r.report_malicious(&ap("b"), 5_002),
            Err(MappingError::NothingToRemedy)
        );
        assert_eq!(
            r.prefer_back(&ap("b"), 5_002),
            Err(MappingError::NothingToRemedy)
        );
        // b can still choose again (and a is told again).
        let n = r
            .choose(&ap("b"), Choice::Prefer, "gp1", &[], 6_000)
            .unwrap();
        assert_eq!(n.len(), 1);
        assert_eq!(preferred_ap(&r).as_deref(), Some("b"));
    }

    #[test]
    fn replace_deletes_all_others_and_each_can_reestablish() {
        let mut r = with_a_b();
        r.create_verified(&ap("c"), ssi("c", "carol"), VerifiedBy::Sms, None, 2_500)
            .unwrap();
        let n = r
            .choose(&ap("c"), Choice::Replace, "gp1", &[], 3_000)
            .unwrap();
        let mut told: Vec<String> = n
            .iter()
            .map(|n| match n {
                Notification::Displaced {
                    to_ap,
                    action: DisplaceAction::Replaced,
                    by,
                    ..
                } if by == &local("c") => to_ap.to_string(),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        told.sort();
        assert_eq!(told, ["a", "b"]);
        assert_eq!(r.mappings().len(), 1);
        assert_eq!(preferred_ap(&r).as_deref(), Some("c"));

        // a restores its mapping and is preferred again; c is told.
        let n = r.reestablish(&ap("a"), 4_000).unwrap();
        assert_eq!(
            n,
            vec![Notification::Remedied {
                to: local("c"),
                sii: sii(),
                by_ap: ap("a"),
                remedy: Remedy::Reestablished,
            }]
        );
        let m = r.mapping_of(&ap("a")).unwrap();
        assert_eq!(m.ssi, ssi("a", "alice"));
        assert_eq!(
            m.created_at_ms, 1_000,
            "the restored mapping is the old one"
        );
        assert_eq!(preferred_ap(&r).as_deref(), Some("a"));
        let e = r.reestablish(&ap("a"), 4_100).unwrap_err();
        assert_eq!((e.slug(), e.status()), ("already-mapped", 409));

        // b has no mapping to prefer back, but may reestablish.
        assert_eq!(
            r.prefer_back(&ap("b"), 4_200),
            Err(MappingError::NoSuchMapping)
        );
        r.reestablish(&ap("b"), 4_300).unwrap();
        assert_eq!(preferred_ap(&r).as_deref(), Some("b"));
        // And may report c too.
        assert_eq!(
            r.report_malicious(&ap("b"), 4_400).unwrap().against,
            local("c")
        );
    }

    #[test]
    fn reestablish_needs_a_replace_displacement() {
        let mut r = with_a_b();
        assert_eq!(
            r.reestablish(&ap("c"), 3_000),
            Err(MappingError::NothingToRemedy)
        );
        r.choose(&ap("b"), Choice::Prefer, "gp1", &[], 3_000)
            .unwrap();
        // a still has its mapping: it must prefer back, not reestablish.
        assert_eq!(
            r.reestablish(&ap("a"), 3_100),
            Err(MappingError::AlreadyMapped)
        );
        // a deletes its own mapping: its remedies are gone with it.
        r.delete(&ap("a"), &ssi("a", "alice"), 3_200).unwrap();
        assert_eq!(
            r.reestablish(&ap("a"), 3_300),
            Err(MappingError::NothingToRemedy)
        );
    }

    #[test]
    fn remedies_expire_after_the_window() {
        let mut r = SiiRecord::with_remedy_window(sii(), DAY);
        r.create_verified(&ap("a"), ssi("a", "alice"), VerifiedBy::Sms, None, 0)
            .unwrap();
        r.create_verified(&ap("b"), ssi("b", "bob"), VerifiedBy::Sms, None, 10)
            .unwrap();
        r.choose(&ap("b"), Choice::Replace, "gp1", &[], 100)
            .unwrap();
        let late = 100 + DAY + 1;
        let before = r.clone();
        assert_eq!(
            r.reestablish(&ap("a"), late),
            Err(MappingError::NothingToRemedy)
        );
        assert_eq!(
            r.report_malicious(&ap("a"), late),
            Err(MappingError::NothingToRemedy)
        );
        assert_eq!(r, before, "failed remedies change nothing");
        // Just inside the window it works.
        let mut r2 = before.clone();
        r2.reestablish(&ap("a"), 100 + DAY).unwrap();
        // Expired displacements are pruned on the next change.
        r.create_verified(&ap("c"), ssi("c", "c"), VerifiedBy::Sms, None, late)
            .unwrap();
        assert!(r.displacements().is_empty());
    }

    #[test]
    fn delete_only_own_mapping() {
        let mut r = with_a_b();
        let before = r.clone();
        let e = r.delete(&ap("b"), &ssi("a", "alice"), 3_000).unwrap_err();
        assert_eq!((e.slug(), e.status()), ("not-your-mapping", 403));
        let e = r.delete(&ap("b"), &ssi("b", "other"), 3_000).unwrap_err();
        assert_eq!(e, MappingError::NoSuchMapping);
        assert_eq!(r, before);
        // Deleting the preferred one hands preference to the next.
        let gone = r.delete(&ap("a"), &ssi("a", "alice"), 3_000).unwrap();
        assert_eq!(gone.ssi, ssi("a", "alice"));
        assert_eq!(preferred_ap(&r).as_deref(), Some("b"));
        r.delete(&ap("b"), &ssi("b", "bob"), 3_001).unwrap();
        assert!(r.is_empty());
    }

    #[test]
    fn phone_number_move_is_a_replace() {
        // draft §8.2.2: user A registered the number with AP a; months later
        // user B gets the number and registers with AP b (or even a).
        let mut r = with_a();
        let later = 1_000 + 200 * DAY;
        let c = r
            .create_verified(
                &ap("b"),
                ssi("b", "new-owner"),
                VerifiedBy::Sms,
                None,
                later,
            )
            .unwrap();
        assert_eq!(c.existing, Some(local("a")));
        r.choose(&ap("b"), Choice::Replace, "gp1", &[], later + 1)
            .unwrap();
        assert_eq!(r.mappings().len(), 1);
        assert_eq!(r.preferred().unwrap().ssi, ssi("b", "new-owner"));
        // Same AP, new owner: re-registration just replaces the user id.
        let mut r = with_a();
        let c = r
            .create_verified(
                &ap("a"),
                ssi("a", "new-owner"),
                VerifiedBy::Sms,
                None,
                later,
            )
            .unwrap();
        assert!(c.preferred);
        assert_eq!(r.preferred().unwrap().ssi, ssi("a", "new-owner"));
    }

    fn cand(gp: &str, s: &str, pref: Option<u64>, created: u64) -> Candidate {
        Candidate {
            gp: gp.into(),
            ssi: Ssi::parse(s).unwrap(),
            precedence: Precedence {
                preferred_at_ms: pref,
                created_at_ms: created,
            },
        }
    }

    #[test]
    fn select_most_recent_preference() {
        assert_eq!(select_preferred(&[]), None);
        let c = [
            cand("gp1", "a:1", Some(10), 1),
            cand("gp2", "b:1", Some(20), 2),
            cand("gp3", "c:1", None, 99),
        ];
        assert_eq!(select_preferred(&c).unwrap().gp, "gp2");
        // Never-preferred mappings lose to any preferred one, whatever their age.
        let c = [cand("gp3", "c:1", None, 99), cand("gp1", "a:1", Some(0), 0)];
        assert_eq!(select_preferred(&c).unwrap().gp, "gp1");
        // Among never-preferred ones the newest wins.
        let c = [cand("gp3", "c:1", None, 5), cand("gp1", "a:1", None, 6)];
        assert_eq!(select_preferred(&c).unwrap().gp, "gp1");
    }

    #[test]
    fn select_ties_are_deterministic() {
        let a = cand("gp2", "z:1", Some(10), 1);
        let b = cand("gp1", "y:1", Some(10), 1);
        let c = cand("gp1", "x:1", Some(10), 1);
        for perm in [
            [&a, &b, &c],
            [&a, &c, &b],
            [&b, &a, &c],
            [&b, &c, &a],
            [&c, &a, &b],
            [&c, &b, &a],
        ] {
            let v: Vec<Candidate> = perm.iter().map(|c| (*c).clone()).collect();
            // Smallest GP id, then smallest canonical SSI string.
            assert_eq!(select_preferred(&v).unwrap(), &c);
        }
        // Canonical string order, not (provider, user) tuple order:
        // "a-b:z" < "a:z" because '-' < ':'.
        let p = cand("gp", "a:z", Some(1), 1);
        let q = cand("gp", "a-b:z", Some(1), 1);
        assert_eq!(select_preferred(&[p, q.clone()]).unwrap(), &q);
    }

    #[test]
    fn new_ap_on_other_gp_waits_for_choice_then_claims() {
        // gp1 holds a (preferred at 1000); b on gp2 verifies at 2000.
        let gp1 = with_a();
        let remote = gp1.candidate("gp1").unwrap();
        let mut gp2 = SiiRecord::new(sii());
        let c = gp2
            .create_verified(
                &ap("b"),
                ssi("b", "bob"),
                VerifiedBy::Sms,
                Some(&remote),
                2_000,
            )
            .unwrap();
        assert_eq!(
            c,
            Created {
                existing: Some(Party {
                    ap: ap("a"),
                    gp: Some("gp1".into())
                }),
                preferred: false,
            }
        );
        // The home GP (either one) still returns a's SSI.
        let both = [remote.clone(), gp2.candidate("gp2").unwrap()];
        assert_eq!(select_preferred(&both).unwrap().ssi, ssi("a", "alice"));

        // b prefers: claims go to the peers (never to itself).
        let n = gp2
            .choose(
                &ap("b"),
                Choice::Prefer,
                "gp2",
                &["gp1".into(), "gp2".into()],
                3_000,
            )
            .unwrap();
        let claim = Claim {
            sii: sii(),
            by_ap: ap("b"),
            from_gp: "gp2".into(),
            action: DisplaceAction::Outpreferred,
            at_ms: 3_000,
            // b's mapping, verified at 2000: its precedence goes along.
            created_at_ms: Some(2_000),
        };
        assert_eq!(
            n,
            vec![Notification::Claim {
                to_gp: "gp1".into(),
                claim: claim.clone()
            }]
        );
        let both = [gp1.candidate("gp1").unwrap(), gp2.candidate("gp2").unwrap()];
        assert_eq!(select_preferred(&both).unwrap().ssi, ssi("b", "bob"));

        // gp1 applies the claim: a is told, by b on gp2, and prefers back.
        let mut gp1 = gp1;
        let n = gp1.apply_claim(&claim, "gp1", 3_100).unwrap();
        let by_b = Party {
            ap: ap("b"),
            gp: Some("gp2".into()),
        };
        assert_eq!(
            n,
            vec![Notification::Displaced {
                to_ap: ap("a"),
                sii: sii(),
                by: by_b.clone(),
                action: DisplaceAction::Outpreferred,
            }]
        );
        assert_eq!(
            gp1.mappings().len(),
            1,
            "an outpreferring claim deletes nothing"
        );
        let n = gp1.prefer_back(&ap("a"), 4_000).unwrap();
        assert!(matches!(&n[..], [Notification::Remedied { to, .. }] if to == &by_b));
        let both = [gp1.candidate("gp1").unwrap(), gp2.candidate("gp2").unwrap()];
        assert_eq!(select_preferred(&both).unwrap().ssi, ssi("a", "alice"));
        // Reporting yields a strike against the remote AP, to be forwarded.
        assert_eq!(gp1.report_malicious(&ap("a"), 4_100).unwrap().against, by_b);
    }

    #[test]
    fn a_claim_in_the_same_millisecond_is_judged_as_queries_judge_it() {
        // a here and b on gp2 were both made preferred at t=5000. A query's
        // select_preferred decides between them by creation time, then the
        // smaller GP id; the claim must displace a exactly when b wins
        // there, else a is told it lost while queries still answer a.
        for action in [DisplaceAction::Replaced, DisplaceAction::Outpreferred] {
            for (a_created, own_gp, b_wins) in [
                (1_000, "gp1", true),  // b created later: b wins
                (3_000, "gp1", false), // a created later: a wins
                (2_000, "gp1", false), // same creation: gp1 < gp2
                (2_000, "gp3", true),  // same creation: gp2 < gp3
            ] {
                let mut here = SiiRecord::new(sii());
                here.create_verified(
                    &ap("a"),
                    ssi("a", "alice"),
                    VerifiedBy::Sms,
                    None,
                    a_created,
                )
                .unwrap();
                here.mappings[0].preferred_at_ms = Some(5_000);
                let claim = Claim {
                    sii: sii(),
                    by_ap: ap("b"),
                    from_gp: "gp2".into(),
                    action,
                    at_ms: 5_000,
                    created_at_ms: Some(2_000),
                };
                let queried = [
                    here.candidate(own_gp).unwrap(),
                    cand("gp2", "b:bob", Some(5_000), 2_000),
                ];
                let winner = select_preferred(&queried).unwrap().gp.clone();
                assert_eq!(winner == "gp2", b_wins, "{a_created} {own_gp}");
                let n = here.apply_claim(&claim, own_gp, 5_100).unwrap();
                assert_eq!(
                    !n.is_empty(),
                    b_wins,
                    "{action:?} {a_created} {own_gp}: {n:?}"
                );
                let kept = here.mapping_of(&ap("a")).is_some();
                assert_eq!(
                    kept,
                    !(b_wins && action == DisplaceAction::Replaced),
                    "{action:?} {a_created} {own_gp}"
                );
            }
        }
        // An older sender's claim carries no creation time: taken as at_ms,
        // so on the tie only the GP ids decide.
        let mut here = SiiRecord::new(sii());
        here.create_verified(&ap("a"), ssi("a", "alice"), VerifiedBy::Sms, None, 5_000)
            .unwrap();
        here.mappings[0].preferred_at_ms = Some(5_000);
        let old = Claim {
            sii: sii(),
            by_ap: ap("b"),
            from_gp: "gp2".into(),
            action: DisplaceAction::Replaced,
            at_ms: 5_000,
            created_at_ms: None,
        };
        assert!(here
            .clone()
            .apply_claim(&old, "gp1", 5_100)
            .unwrap()
            .is_empty());
        // Nor does a claim whose creation is dated after its preference.
        let late = Claim {
            created_at_ms: Some(9_000),
            ..old.clone()
        };
        assert!(here
            .clone()
            .apply_claim(&late, "gp1", 5_100)
            .unwrap()
            .is_empty());
        assert_eq!(here.apply_claim(&old, "gp3", 5_100).unwrap().len(), 1);
        let wire = serde_json::to_value(&old).unwrap();
        assert!(wire.get("created_at_ms").is_none(), "{wire}");
    }

    #[test]
    fn strike_across_gps_is_forwarded_checked_against_the_claim_and_applied_once() {
        // gp1 holds a; b on gp2 verifies and prefers: a claim to gp1.
        let mut gp1 = with_a();
        let remote = gp1.candidate("gp1").unwrap();
        let mut gp2 = SiiRecord::new(sii());
        gp2.create_verified(
            &ap("b"),
            ssi("b", "bob"),
            VerifiedBy::Sms,
            Some(&remote),
            2_000,
        )
        .unwrap();
        let n = gp2
            .choose(&ap("b"), Choice::Prefer, "gp2", &["gp1".into()], 3_000)
            .unwrap();
        let [Notification::Claim { claim, .. }] = &n[..] else {
            panic!("one claim expected: {n:?}")
        };
        assert_eq!(gp2.claims_sent().len(), 1);
        // gp1 applies it (later, by its own clock); a reports it.
        gp1.apply_claim(claim, "gp1", 3_500).unwrap();
        assert_eq!(gp1.displacements()[0].claim_at_ms, Some(3_000));
        let strike = gp1.report_malicious(&ap("a"), 4_000).unwrap();
        assert_eq!(strike.claim_at_ms, Some(3_000));
        let (to_gp, notice) = StrikeNotice::forward(&strike, "n1".into(), "gp1").unwrap();
        assert_eq!(to_gp, "gp2");
        assert!(notice.id_is_valid());
        // A local strike is not forwarded.
        let mut local_strike = strike.clone();
        local_strike.against.gp = None;
        assert_eq!(
            StrikeNotice::forward(&local_strike, "x".into(), "gp1"),
            None
        );

        // gp2 checks the notice against the claim it sent and applies it.
        let before = gp2.clone();
        let got = gp2.accept_peer_strike(&notice, 4_100).unwrap();
        assert_eq!(
            got,
            PeerStrike::Apply(Strike {
                against: local("b"),
                sii: sii(),
                reported_by: ap("a"),
                reported_by_gp: Some("gp1".into()),
                at_ms: 4_100,
                claim_at_ms: Some(3_000),
            })
        );
        assert_ne!(gp2, before, "the claim is marked as struck");
        // Redelivery of the same notice: acknowledged, nothing applied.
        let marked = gp2.clone();
        assert_eq!(
            gp2.accept_peer_strike(&notice, 4_200),
            Ok(PeerStrike::Duplicate)
        );
        assert_eq!(gp2, marked);
        // Another id for the same claim: one strike per claim.
        let again = StrikeNotice {
            id: "n2".into(),
            ..notice.clone()
        };
        assert_eq!(
            gp2.accept_peer_strike(&again, 4_300),
            Err(MappingError::AlreadyReported)
        );
        // Implausible notices change nothing.
        for bad in [
            StrikeNotice {
                from_gp: "gp3".into(),
                ..again.clone()
            },
            StrikeNotice {
                against: ap("c"),
                ..again.clone()
            },
            StrikeNotice {
                claim_at_ms: Some(2_999),
                ..again.clone()
            },
        ] {
            let e = gp2.accept_peer_strike(&bad, 4_400).unwrap_err();
            assert_eq!((e.slug(), e.status()), ("no-such-claim", 422));
        }
        let other = StrikeNotice {
            sii: Sii::parse("someone@example.com").unwrap(),
            ..again.clone()
        };
        assert_eq!(
            gp2.accept_peer_strike(&other, 4_400),
            Err(MappingError::WrongSii)
        );
        assert_eq!(gp2, marked, "refusals change nothing");
    }

    #[test]
    fn claim_evidence_outlives_the_mapping_but_not_the_window() {
        let mut gp2 = SiiRecord::with_remedy_window(sii(), DAY);
        gp2.create_verified(&ap("b"), ssi("b", "bob"), VerifiedBy::Sms, None, 1_000)
            .unwrap();
        gp2.choose(&ap("b"), Choice::Replace, "gp2", &["gp1".into()], 2_000)
            .unwrap();
        // b gives the mapping up; the claim it made still happened.
        gp2.delete(&ap("b"), &ssi("b", "bob"), 3_000).unwrap();
        assert!(!gp2.is_empty(), "the evidence is kept");
        let notice = StrikeNotice {
            id: "n1".into(),
            from_gp: "gp1".into(),
            against: ap("b"),
            sii: sii(),
            reported_by: ap("a"),
            claim_at_ms: None,
            at_ms: 4_000,
        };
        let mut late = gp2.clone();
        assert!(matches!(
            gp2.accept_peer_strike(&notice, 4_000),
            Ok(PeerStrike::Apply(_))
        ));
        // Past the window and its slack there is nothing to check against.
        let t = 2_000 + DAY + CLAIM_EVIDENCE_SLACK_MS + 1;
        assert_eq!(
            late.accept_peer_strike(&notice, t),
            Err(MappingError::NoSuchClaim)
        );
        late.create_verified(&ap("c"), ssi("c", "c"), VerifiedBy::Sms, None, t)
            .unwrap();
        assert!(late.claims_sent().is_empty(), "pruned");
    }

    #[test]
    fn sent_claims_are_bounded_and_each_peer_is_claimed_once() {
        let mut r = with_a();
        let peers: Vec<GpId> = vec!["gp1".into(), "gp2".into(), "gp2".into(), "gp0".into()];
        let n = r.claims_for(&ap("a"), DisplaceAction::Outpreferred, "gp0", &peers, 2_000);
        assert_eq!(n.len(), 2, "not to itself, and once per peer: {n:?}");
        for i in 0..100 {
            r.claims_for(
                &ap("a"),
                DisplaceAction::Outpreferred,
                "gp0",
                &["gp1".into()],
                3_000 + i,
            );
        }
        assert_eq!(r.claims_sent().len(), MAX_SENT_CLAIMS);
        assert_eq!(r.claims_sent().last().map(|c| c.at_ms), Some(3_099));
    }

    #[test]
    fn strike_notice_ids_and_wire_format() {
        let n = StrikeNotice {
            id: "abc_DEF-1".into(),
            from_gp: "gp1".into(),
            against: ap("b"),
            sii: sii(),
            reported_by: ap("a"),
            claim_at_ms: Some(3),
            at_ms: 4,
        };
        assert!(n.id_is_valid());
        for bad in ["", "a b", "x/y", &"z".repeat(65)] {
            let m = StrikeNotice {
                id: bad.to_owned(),
                ..n.clone()
            };
            assert!(!m.id_is_valid(), "{bad:?}");
        }
        let json = serde_json::to_value(&n).unwrap();
        assert_eq!(json["against"], "b");
        assert_eq!(json["sii"], "+14155550100");
        let back: StrikeNotice = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back, n);
        let mut extra = json;
        extra["more"] = 1.into();
        assert!(serde_json::from_value::<StrikeNotice>(extra).is_err());
    }

    #[test]
    fn replace_claim_deletes_only_older_mappings() {
        let mut gp1 = with_a_b(); // a at 1000 (preferred), b at 2000
        let claim = Claim {
            sii: sii(),
            by_ap: ap("z"),
            from_gp: "gp9".into(),
            action: DisplaceAction::Replaced,
            at_ms: 1_500,
            created_at_ms: None,
        };
        let n = gp1.apply_claim(&claim, "gp1", 5_000).unwrap();
        // Only a is older than the claim; b (created later) survives.
        assert_eq!(n.len(), 1);
        assert!(gp1.mapping_of(&ap("a")).is_none());
        assert!(gp1.mapping_of(&ap("b")).is_some());
        // a can reestablish; the notice goes to z on gp9, and b, preferred
        // here until then, is told it was outranked.
        let n = gp1.reestablish(&ap("a"), 5_100).unwrap();
        assert_eq!(n.len(), 2);
        assert!(n
            .iter()
            .any(|x| matches!(x, Notification::Remedied { to, .. }
            if to.gp.as_deref() == Some("gp9"))));
        assert!(n.iter().any(|x| matches!(x, Notification::Displaced {
            to_ap, action: DisplaceAction::Outpreferred, ..
        } if to_ap == &ap("b"))));
        // A claim for another SII is refused.
        let other = Claim {
            sii: Sii::parse("someone@example.com").unwrap(),
            ..claim
        };
        let e = gp1.apply_claim(&other, "gp1", 6_000).unwrap_err();
        assert_eq!((e.slug(), e.status()), ("wrong-sii", 400));
    }

    #[test]
    fn claim_dated_past_the_skew_is_refused_and_changes_nothing() {
        let mut r = with_a_b();
        let before = r.clone();
        let future = Claim {
            sii: sii(),
            by_ap: ap("z"),
            from_gp: "gp9".into(),
            action: DisplaceAction::Replaced,
            at_ms: 5_000 + MAX_CLAIM_SKEW_MS + 1,
            created_at_ms: None,
        };
        let e = r.apply_claim(&future, "gp1", 5_000).unwrap_err();
        assert_eq!((e.slug(), e.status()), ("claim-from-the-future", 422));
        assert_eq!(r, before);
        // Within the skew (a peer's clock a little ahead) it applies.
        let ahead = Claim {
            at_ms: 5_000 + MAX_CLAIM_SKEW_MS,
            created_at_ms: None,
            ..future
        };
        assert_eq!(r.apply_claim(&ahead, "gp1", 5_000).unwrap().len(), 2);
    }

    #[test]
    fn outpreferred_claim_older_than_local_preference_is_ignored() {
        let mut r = with_a(); // a preferred at 1000
        r.create_verified(&ap("b"), ssi("b", "bob"), VerifiedBy::Sms, None, 1_100)
            .unwrap();
        r.choose(&ap("b"), Choice::Prefer, "gp1", &[], 2_000)
            .unwrap();
        let late = Claim {
            sii: sii(),
            by_ap: ap("z"),
            from_gp: "gp9".into(),
            action: DisplaceAction::Outpreferred,
            at_ms: 1_500,
            created_at_ms: None,
        };
        assert!(r.apply_claim(&late, "gp1", 3_000).unwrap().is_empty());
    }

    #[test]
    fn record_candidate_matches_local_preference() {
        let mut r = with_a_b();
        r.choose(&ap("b"), Choice::Prefer, "gp1", &[], 3_000)
            .unwrap();
        let c = r.candidate("gp1").unwrap();
        assert_eq!(c.ssi, ssi("b", "bob"));
        assert_eq!(c.precedence.preferred_at_ms, Some(3_000));
        assert_eq!(SiiRecord::new(sii()).candidate("gp1"), None);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn arb_cand() -> impl Strategy<Value = Candidate> {
            (
                "gp[0-3]",
                "[a-c]:[x-z]",
                proptest::option::of(0u64..5),
                0u64..5,
            )
                .prop_map(|(gp, s, p, c)| cand(&gp, &s, p, c))
        }

        #[derive(Debug, Clone)]
        enum Op {
            Create(u8, bool),
            Choose(u8, bool),
            Claim(bool, u64),
            Reestablish(u8),
            PreferBack(u8),
            Report(u8),
            Delete(u8),
        }

        fn arb_op() -> impl Strategy<Value = Op> {
            let a = 0u8..4;
            prop_oneof![
                (a.clone(), any::<bool>()).prop_map(|(a, r)| Op::Create(a, r)),
                (a.clone(), any::<bool>()).prop_map(|(a, r)| Op::Choose(a, r)),
                (any::<bool>(), 0u64..20_000).prop_map(|(r, t)| Op::Claim(r, t)),
                a.clone().prop_map(Op::Reestablish),
                a.clone().prop_map(Op::PreferBack),
                a.clone().prop_map(Op::Report),
                a.prop_map(Op::Delete),
            ]
        }

        proptest! {
            /// Any sequence of operations keeps the record's invariants, and
            /// a refused operation leaves the record exactly as it was.
            #[test]
            fn transitions_keep_invariants(ops in proptest::collection::vec(arb_op(), 0..40)) {
                let names = ["a", "b", "c", "d"];
                let name = |i: u8| names[usize::from(i) % 4];
                let mut r = SiiRecord::with_remedy_window(sii(), 5_000);
                let remote = cand("gp9", "z:1", Some(500), 1);
                for (step, op) in ops.into_iter().enumerate() {
                    let now = 1_000 + step as u64 * 700;
                    let before = r.clone();
                    let res: Result<(), MappingError> = match op {
                        Op::Create(i, with_remote) => r
                            .create_verified(
                                &ap(name(i)),
                                ssi(name(i), "u"),
                                VerifiedBy::Sms,
                                with_remote.then_some(&remote),
                                now,
                            )
                            .map(|_| ()),
                        Op::Choose(i, replace) => {
                            let c = if replace { Choice::Replace } else { Choice::Prefer };
                            r.choose(&ap(name(i)), c, "gp1", &["gp9".into()], now).map(|n| {
                                // Exactly one claim, to the peer.
                                assert_eq!(
                                    n.iter().filter(|n| matches!(n, Notification::Claim { .. })).count(),
                                    1
                                );
                            })
                        }
                        Op::Claim(replace, at) => r
                            .apply_claim(
                                &Claim {
                                    sii: sii(),
                                    by_ap: ap("z"),
                                    from_gp: "gp9".into(),
                                    action: if replace {
                                        DisplaceAction::Replaced
                                    } else {
                                        DisplaceAction::Outpreferred
                                    },
                                    at_ms: at,
                                    created_at_ms: None,
                                },
                                "gp1",
                                now,
                            )
                            .map(|_| ()),
                        Op::Reestablish(i) => r.reestablish(&ap(name(i)), now).map(|_| ()),
                        Op::PreferBack(i) => r.prefer_back(&ap(name(i)), now).map(|_| ()),
                        Op::Report(i) => r.report_malicious(&ap(name(i)), now).map(|_| ()),
                        Op::Delete(i) => r.delete(&ap(name(i)), &ssi(name(i), "u"), now).map(|_| ()),
                    };
                    if res.is_err() {
                        prop_assert_eq!(&r, &before);
                    }
                    let mut aps: Vec<&ProviderId> = r.mappings().iter().map(Mapping::ap).collect();
                    aps.sort();
                    aps.dedup();
                    prop_assert_eq!(aps.len(), r.mappings().len(), "one mapping per AP");
                    let mut displaced: Vec<&ProviderId> = r.displacements().iter().map(|d| &d.ap).collect();
                    displaced.sort();
                    displaced.dedup();
                    prop_assert_eq!(displaced.len(), r.displacements().len(), "one displacement per AP");
                    prop_assert_eq!(r.preferred().is_some(), !r.mappings().is_empty());
                }
            }

            #[test]
            fn selection_is_order_independent_and_most_recent(
                mut v in proptest::collection::vec(arb_cand(), 1..8),
                rot in 0usize..8,
            ) {
                let best = select_preferred(&v).unwrap().clone();
                for c in &v {
                    prop_assert!(best.precedence >= c.precedence);
                }
                let len = v.len();
                v.rotate_left(rot % len);
                prop_assert_eq!(select_preferred(&v).unwrap(), &best);
                v.reverse();
                prop_assert_eq!(select_preferred(&v).unwrap(), &best);
            }
        }
    }
}

/// Racing changes to one record (issue #8 item 4, wasm-tests/concurrency):
/// the last applied preference wins whatever the callers' clocks said, and
/// whoever loses the preference is told.
#[cfg(test)]
mod race_tests {
    use super::*;

    fn sii() -> Sii {
        Sii::parse("+1 415 555 0199").unwrap()
    }
    fn ap(name: &str) -> ProviderId {
        ProviderId::parse(name).unwrap()
    }
    fn ssi(provider: &str) -> Ssi {
        Ssi::parse(&format!("{provider}:u-{provider}")).unwrap()
    }
    /// `a` (preferred at 1000), `b` (2000) and `c` (3000) hold the SII.
    fn abc() -> SiiRecord {
        let mut r = SiiRecord::new(sii());
        for (i, p) in ["a", "b", "c"].iter().enumerate() {
            r.create_verified(
                &ap(p),
                ssi(p),
                VerifiedBy::Sms,
                None,
                1_000 * (i as u64 + 1),
            )
            .unwrap();
        }
        r
    }
    fn preferred(r: &SiiRecord) -> String {
        r.preferred().unwrap().ap().to_string()
    }
    fn outranked(notes: &[Notification]) -> Vec<(String, String)> {
        notes
            .iter()
            .filter_map(|n| match n {
                Notification::Displaced {
                    to_ap,
                    by,
                    action: DisplaceAction::Outpreferred,
                    ..
                } => Some((to_ap.to_string(), by.ap.to_string())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_preference_applied_later_wins_even_with_an_equal_or_earlier_clock() {
        for second_clock in [5_000, 4_000] {
            let mut r = abc();
            r.choose(&ap("b"), Choice::Prefer, "gp", &[], 5_000)
                .unwrap();
            assert_eq!(preferred(&r), "b");
            // Applied after b's, although its request read the clock no later.
            let notes = r
                .choose(&ap("c"), Choice::Prefer, "gp", &[], second_clock)
                .unwrap();
            assert_eq!(outranked(&notes), vec![("b".into(), "c".into())]);
            assert_eq!(preferred(&r), "c", "the AP told it lost is not preferred");
            assert_eq!(r.mapping_of(&ap("c")).unwrap().preferred_at_ms, Some(5_001));
        }
    }

    #[test]
    fn a_local_preference_applied_after_a_claim_outranks_the_claimer() {
        let mut r = abc();
        let claim = Claim {
            sii: sii(),
            by_ap: ap("z"),
            from_gp: "gp-z".into(),
            action: DisplaceAction::Outpreferred,
            at_ms: 9_000,
            created_at_ms: None,
        };
        r.apply_claim(&claim, "gp1", 9_001).unwrap();
        // b's request read the clock before the claim was made, but is
        // applied after it: b must win at every GP, so it is stamped later.
        r.choose(&ap("b"), Choice::Prefer, "gp", &[], 8_500)
            .unwrap();
        assert_eq!(r.mapping_of(&ap("b")).unwrap().preferred_at_ms, Some(9_001));
        // The high-water survives storage.
        let back: SiiRecord = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back.stamp(0), 9_002);
    }

    #[test]
    fn the_stamp_is_the_clock_when_it_is_later() {
        let r = abc();
        assert_eq!(r.stamp(9_000), 9_000);
        assert_eq!(r.stamp(500), 1_001);
        assert_eq!(SiiRecord::new(sii()).stamp(7), 7);
    }

    #[test]
    fn prefer_back_tells_the_holder_when_it_is_not_the_displacer() {
        let mut r = abc();
        r.choose(&ap("b"), Choice::Prefer, "gp", &[], 4_000)
            .unwrap(); // a outranked by b
        r.choose(&ap("c"), Choice::Prefer, "gp", &[], 5_000)
            .unwrap(); // b outranked by c
        let notes = r.prefer_back(&ap("a"), 6_000).unwrap();
        assert_eq!(preferred(&r), "a");
        // c held the preference and loses it; b (whose change a undid) is told by Remedied.
        assert_eq!(outranked(&notes), vec![("c".into(), "a".into())]);
        assert!(notes
            .iter()
            .any(|n| matches!(n, Notification::Remedied { to, .. } if to.ap == ap("b"))));
        // c may prefer back in turn.
        assert!(r.prefer_back(&ap("c"), 7_000).is_ok());
        assert_eq!(preferred(&r), "c");
    }

    #[test]
    fn prefer_back_from_the_displacer_is_one_remedied_event() {
        let mut r = abc();
        r.choose(&ap("b"), Choice::Prefer, "gp", &[], 4_000)
            .unwrap();
        let notes = r.prefer_back(&ap("a"), 5_000).unwrap();
        assert_eq!(notes.len(), 1);
        assert!(matches!(&notes[0], Notification::Remedied { to, .. } if to.ap == ap("b")));
    }

    #[test]
    fn reestablish_tells_the_holder_when_it_is_not_the_displacer() {
        let mut r = abc();
        r.choose(&ap("b"), Choice::Replace, "gp", &[], 4_000)
            .unwrap(); // a and c deleted by b
        r.create_verified(&ap("c"), ssi("c"), VerifiedBy::Sms, None, 5_000)
            .unwrap();
        r.choose(&ap("c"), Choice::Prefer, "gp", &[], 6_000)
            .unwrap(); // b outranked by c
        let notes = r.reestablish(&ap("a"), 7_000).unwrap();
        assert_eq!(preferred(&r), "a");
        assert_eq!(outranked(&notes), vec![("c".into(), "a".into())]);
        assert!(notes
            .iter()
            .any(|n| matches!(n, Notification::Remedied { to, .. } if to.ap == ap("b"))));
    }
}
