//! Messages to a MappingShard (see objects/shard/) and its typed client.
//!
//! A shard's refusal (a wrong code, "not your mapping", …) travels as
//! `ShardReply::Refused` and is turned into its problem document here, so
//! callers of [`Shard`] see their success reply or an [`ApiError`].

use crate::core::bulk::LineEffect;
use crate::core::holder::{HolderAction, HolderClaim};
use crate::core::mapping::{
    Candidate, Choice, Claim, Mapping, MappingError, Party, StrikeNotice, VerifiedBy,
};
use crate::core::shard::{shard_name, shard_of};
use crate::core::sii::Sii;
use crate::core::tags::MappingMeta;
use crate::core::verification::{SendLimited, SendScope, VerifyError};
use crate::edge::config::GpConfig;
use crate::edge::http::error::{ApiError, ApiResult};
use crate::edge::rpc::{unexpected, Object};
use serde::{Deserialize, Serialize};
use worker::Env;

/// Shard-internal request.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ShardOp {
    /// Start (or repeat) a verification: see `core::creation::repeat_rule`.
    Begin {
        sii: String,
        ap: String,
        user: String,
        /// Fresh random salt (hex) and the code's hash under it (hex).
        salt: String,
        code_hash: String,
        /// Lifetime of the code (from the GP's code policy).
        ttl_ms: u64,
        per_sii_per_hour: u32,
        /// Tags and label for the mapping (beyond GLADOS-00).
        #[serde(default)]
        meta: MappingMeta,
        now_ms: u64,
    },
    /// Undo a `Begin` whose message could not be sent.
    Abort {
        sii: String,
        ap: String,
        salt: String,
        previous: Option<String>,
        now_ms: u64,
    },
    /// Remember the holder on a peer GP found after the code was sent
    /// (`Begin` answers it to repeated requests).
    NoteHolder {
        salt: String,
        ap: String,
        holder: Party,
    },
    /// Check a code and keep the verification as verified, without storing
    /// the mapping yet: the caller looks for a holder on a peer GP only
    /// for a verification whose code was right, then sends `Confirm`
    /// without a code (issue 14 item 7: no peer query for a wrong code or
    /// a used-up handle).
    Verify {
        salt: String,
        ap: String,
        code: String,
        pepper: String,
        now_ms: u64,
    },
    /// Store the mapping of a verification: checks `code` first, or, with
    /// none, requires one that `Verify` verified.
    Confirm {
        salt: String,
        ap: String,
        #[serde(default)]
        code: Option<String>,
        pepper: String,
        /// The preferred holder of the SII on a peer GP, if any: the new
        /// mapping is then not preferred until the AP's choice (§8.2.1).
        #[serde(default)]
        remote: Option<Candidate>,
        now_ms: u64,
    },
    Choose {
        sii: String,
        ap: String,
        choice: Choice,
        gp: String,
        /// Peer GPs whose filters may hold the SII: each gets a claim
        /// (draft §10). Chosen by the caller from its filter copies.
        #[serde(default)]
        claim_peers: Vec<String>,
        now_ms: u64,
    },
    /// A peer GP's claim (draft §10), already signature-checked.
    ApplyClaim { claim: Claim, now_ms: u64 },
    /// A peer GP's strike notice (draft §8.2.1), already signature-checked
    /// and its AP known to be enrolled here: checked against the claims
    /// this shard sent (`SiiRecord::accept_peer_strike`), applied once.
    ApplyPeerStrike { notice: StrikeNotice, now_ms: u64 },
    Reestablish {
        sii: String,
        ap: String,
        /// As for `PreferBack`: the re-established mapping is preferred as
        /// of now, and the peers are told by a claim (draft §10).
        #[serde(default)]
        gp: String,
        #[serde(default)]
        claim_peers: Vec<String>,
        now_ms: u64,
    },
    PreferBack {
        sii: String,
        ap: String,
        /// This GP's id and the peers whose filters may hold the SII: a
        /// preference won back is claimed there too (draft §10).
        #[serde(default)]
        gp: String,
        #[serde(default)]
        claim_peers: Vec<String>,
        now_ms: u64,
    },
    Report {
        sii: String,
        ap: String,
        /// This GP's id: a strike against an AP of another GP is forwarded
        /// there as a notice from this GP.
        #[serde(default)]
        gp: String,
        now_ms: u64,
    },
    Delete {
        sii: String,
        ap: String,
        now_ms: u64,
    },
    /// The caller's own mapping for an SII and who is preferred.
    Status { sii: String, ap: String },
    /// Bulk lines of one AP that fall into this shard.
    Bulk {
        ap: String,
        lines: Vec<(String, String)>,
        /// Per line, the preferred holder on a peer GP (draft §8.2.1 across
        /// GPs): the line's mapping then waits for the user's choice.
        #[serde(default)]
        remote: Vec<Option<Candidate>>,
        /// Per line, its tags and label (`None`: the line has neither and
        /// leaves the mapping's as they are; beyond GLADOS-00). A separate
        /// list so that an object of the previous version reads the op.
        #[serde(default)]
        metas: Vec<Option<MappingMeta>>,
        now_ms: u64,
    },
    /// Each SII's preferred mapping here (a peer GP's batched §8.2.1 check
    /// before a bulk upload, `/peer/v1/preferred`).
    Preferred { siis: Vec<String> },
    /// draft §8.1 query: this GP's preferred mapping for the SII, or
    /// (`all`, beyond GLADOS-00) every mapping, preferred first (no AP
    /// scoping: the caller is a rate-limited query or a signed peer).
    Lookup {
        sii: String,
        #[serde(default)]
        all: bool,
        /// Answer each mapping's kept statement, signing and keeping one
        /// where none holds (a query without a nonce; ARCHITECTURE.md,
        /// "Signed mapping statements").
        #[serde(default)]
        statements: bool,
    },
    /// The SII holder's code (beyond GLADOS-00): on a match the holder's
    /// verification is used up and its SII answered.
    HolderConfirm {
        salt: String,
        code: String,
        pepper: String,
        now_ms: u64,
    },
    /// The holder, having proved control, removes every mapping, opts out
    /// or back in (`SiiRecord::holder_act`); each peer GP in
    /// `claim_peers` is told from the claim outbox.
    HolderAct {
        sii: String,
        action: HolderAction,
        gp: String,
        #[serde(default)]
        claim_peers: Vec<String>,
        now_ms: u64,
    },
    /// A peer GP's holder claim, already signature-checked.
    ApplyHolderClaim { claim: HolderClaim, now_ms: u64 },
    /// One page of the digests of every SII this shard holds a mapping for
    /// (SIIs after `after`, in order): a filter rebuild re-inserts them so
    /// removed SIIs drop out (draft §9).
    Digests { after: Option<String>, limit: u32 },
    /// How many SIIs this shard holds a mapping for: a filter rebuild
    /// sizes the new version from the live count.
    Count,
}

/// A mapping as shown to its own AP.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MappingView {
    pub sii: String,
    pub user: String,
    pub verified_by: VerifiedBy,
    pub created_at_ms: u64,
    pub preferred: bool,
    #[serde(default)]
    pub meta: MappingMeta,
}

/// Shard-internal reply.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum ShardReply {
    Begun {
        reused: bool,
        salt: String,
        expires_at_ms: u64,
        existing: Option<Party>,
        previous: Option<String>,
    },
    Confirmed {
        mapping: MappingView,
        existing: Option<Party>,
    },
    Verified {
        sii: String,
    },
    Done {
        notified: Vec<String>,
    },
    Status {
        mapping: Option<MappingView>,
        /// Another AP (on this GP) whose mapping is preferred.
        preferred_elsewhere: Option<Party>,
    },
    Bulk {
        effects: Vec<Result<LineEffect, String>>,
        /// Per line, another AP's preferred mapping the line met.
        #[serde(default)]
        existing: Vec<Option<Party>>,
    },
    Preferred {
        mappings: Vec<Option<Mapping>>,
    },
    Lookup {
        #[serde(default)]
        mappings: Vec<Mapping>,
        #[serde(default)]
        opted_out: bool,
        /// Per mapping, its kept statement (only when asked for).
        #[serde(default)]
        statements: Vec<Option<String>>,
    },
    Count {
        n: u64,
    },
    Digests {
        /// Hex SHA-256 of each SII (what the filter is keyed by).
        digests: Vec<String>,
        /// Where the next page starts; `None` on the last page.
        next: Option<String>,
    },
    /// The holder's code matched: the SII they proved control of.
    HolderConfirmed {
        sii: String,
    },
    /// A holder's action done: the APs told, the peers claimed to.
    HolderDone {
        removed: Vec<String>,
        peers: Vec<String>,
    },
    /// A peer's strike notice: applied now, or a redelivery of one applied
    /// before (`applied: false`).
    PeerStrike {
        applied: bool,
    },
    Refused(Refusal),
}

/// [`ShardReply::Lookup`] as a plain struct: the same JSON, which serde
/// reads field by field (see [`Shard::lookup`]).
#[derive(Debug, Deserialize)]
struct LookupReply {
    result: LookupTag,
    #[serde(default)]
    mappings: Vec<Mapping>,
    #[serde(default)]
    opted_out: bool,
    #[serde(default)]
    statements: Vec<Option<String>>,
}

/// The `result` tag of a reply: `lookup` or another.
#[derive(Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum LookupTag {
    Lookup,
    #[serde(other)]
    Other,
}

/// A client-caused refusal, carried across the object boundary and turned
/// back into the core error (and thus its problem document) by the caller.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "refusal", rename_all = "kebab-case")]
pub enum Refusal {
    WrongCode { attempts_left: u32 },
    MalformedCode,
    Expired,
    Exhausted,
    AlreadyVerified,
    NoSuchVerification,
    TooManyCodes { retry_after_ms: Option<u64> },
    Mapping { slug: String },
}

impl Refusal {
    pub fn verify(e: VerifyError) -> Refusal {
        match e {
            VerifyError::WrongCode { attempts_left } => Refusal::WrongCode { attempts_left },
            VerifyError::MalformedCode => Refusal::MalformedCode,
            VerifyError::Expired => Refusal::Expired,
            VerifyError::Exhausted => Refusal::Exhausted,
            _ => Refusal::AlreadyVerified,
        }
    }

    pub fn mapping(e: MappingError) -> Refusal {
        Refusal::Mapping {
            slug: crate::core::Problem::slug(&e).to_owned(),
        }
    }

    /// The problem the AP gets.
    pub fn into_api(self) -> ApiError {
        match self {
            Refusal::WrongCode { attempts_left } => {
                let mut e = ApiError::from(VerifyError::WrongCode { attempts_left });
                if let ApiError::Client { extra, .. } = &mut e {
                    extra.insert("attempts_left".into(), attempts_left.into());
                }
                e
            }
            Refusal::MalformedCode => VerifyError::MalformedCode.into(),
            Refusal::Expired => VerifyError::Expired.into(),
            Refusal::Exhausted => VerifyError::Exhausted.into(),
            Refusal::AlreadyVerified => VerifyError::AlreadyVerified.into(),
            Refusal::NoSuchVerification => crate::core::creation::BadHandle.into(),
            Refusal::TooManyCodes { retry_after_ms } => {
                let e = ApiError::from(SendLimited {
                    scope: SendScope::Sii,
                    retry_after_ms,
                });
                match retry_after_ms {
                    Some(ms) => e.with_header("Retry-After", ms.div_ceil(1000).to_string()),
                    None => e,
                }
            }
            Refusal::Mapping { slug } => ApiError::from(match slug.as_str() {
                "no-such-mapping" => MappingError::NoSuchMapping,
                "not-your-mapping" => MappingError::NotYourMapping,
                "nothing-to-remedy" => MappingError::NothingToRemedy,
                "already-mapped" => MappingError::AlreadyMapped,
                "already-reported" => MappingError::AlreadyReported,
                "ssi-not-of-caller" => MappingError::SsiNotOfCaller,
                "no-such-claim" => MappingError::NoSuchClaim,
                "claim-from-the-future" => MappingError::ClaimFromTheFuture,
                "sii-opted-out" => MappingError::OptedOut,
                _ => MappingError::WrongSii,
            }),
        }
    }
}

/// draft §8.2.1's remedies for an AP whose mapping was displaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Remedy {
    /// The replaced mapping comes back, preferred.
    Reestablish,
    /// The outpreferred mapping is preferred again.
    PreferBack,
}

/// A started (or repeated) verification.
#[derive(Debug)]
pub struct Begun {
    pub reused: bool,
    pub salt: String,
    pub expires_at_ms: u64,
    pub existing: Option<Party>,
    pub previous: Option<String>,
}

/// A confirmed mapping and the §8.2.1 holder it met.
#[derive(Debug)]
pub struct Confirmed {
    pub mapping: MappingView,
    pub existing: Option<Party>,
}

/// What this GP holds for an SII, as a query sees it.
#[derive(Debug, Default)]
pub struct Held {
    /// The preferred mapping, or every mapping (preferred first).
    pub mappings: Vec<Mapping>,
    /// The SII's holder opted out of discovery.
    pub opted_out: bool,
    /// Per mapping, the statement the shard keeps of it (when asked for).
    pub statements: Vec<Option<String>>,
}

/// The caller's own mapping of an SII and who else is preferred.
#[derive(Debug)]
pub struct Status {
    pub mapping: Option<MappingView>,
    pub preferred_elsewhere: Option<Party>,
}

/// One bulk line's effect (or why it was refused) and another AP's
/// preferred mapping it met.
pub type BulkLineResult = (Result<LineEffect, String>, Option<Party>);

/// The typed client of one mapping shard.
pub struct Shard<'e> {
    env: &'e Env,
    obj: Object,
}

impl<'e> Shard<'e> {
    /// The shard that owns `sii` (`core::shard`).
    pub fn of(env: &'e Env, cfg: &GpConfig, sii: &Sii) -> Self {
        Self::at(env, cfg, shard_of(sii, cfg.mapping_shards))
    }

    /// Shard number `index` (from a verification handle, which
    /// `Handle::parse` checked against `MAPPING_SHARDS`, or when visiting
    /// every shard).
    pub fn at(env: &'e Env, cfg: &GpConfig, index: u32) -> Self {
        debug_assert!(index < cfg.mapping_shards);
        Shard {
            env,
            obj: Object::new("MAPPING_SHARD", shard_name(index, cfg.mapping_shards)),
        }
    }

    /// Sends `op`; a refusal comes back as its problem.
    async fn send(&self, op: &ShardOp) -> ApiResult<ShardReply> {
        match self.obj.call(self.env, op).await? {
            ShardReply::Refused(r) => Err(r.into_api()),
            reply => Ok(reply),
        }
    }

    /// Starts (or repeats) a verification.
    #[allow(clippy::too_many_arguments)]
    pub async fn begin(
        &self,
        sii: &Sii,
        ap: &str,
        user: &str,
        salt: String,
        code_hash: String,
        ttl_ms: u64,
        per_sii_per_hour: u32,
        meta: MappingMeta,
        now_ms: u64,
    ) -> ApiResult<Begun> {
        let op = ShardOp::Begin {
            sii: sii.to_string(),
            ap: ap.to_owned(),
            user: user.to_owned(),
            salt,
            code_hash,
            ttl_ms,
            per_sii_per_hour,
            meta,
            now_ms,
        };
        match self.send(&op).await? {
            ShardReply::Begun {
                reused,
                salt,
                expires_at_ms,
                existing,
                previous,
            } => Ok(Begun {
                reused,
                salt,
                expires_at_ms,
                existing,
                previous,
            }),
            other => Err(unexpected(&self.obj, "begin", other).into()),
        }
    }

    /// Undoes a `begin` whose message could not be sent.
    pub async fn abort(
        &self,
        sii: &Sii,
        ap: &str,
        salt: String,
        previous: Option<String>,
        now_ms: u64,
    ) -> ApiResult<()> {
        let op = ShardOp::Abort {
            sii: sii.to_string(),
            ap: ap.to_owned(),
            salt,
            previous,
            now_ms,
        };
        self.send(&op).await.map(|_| ())
    }

    /// Checks a code (`Some`: on a match the mapping is stored) or stores
    /// the mapping of a verification `verify` verified (`None`). A refusal
    /// is returned as such (the caller counts wrong codes).
    pub async fn confirm(
        &self,
        salt: String,
        ap: &str,
        code: Option<String>,
        pepper: String,
        remote: Option<Candidate>,
        now_ms: u64,
    ) -> ApiResult<Result<Confirmed, Refusal>> {
        let op = ShardOp::Confirm {
            salt,
            ap: ap.to_owned(),
            code,
            pepper,
            remote,
            now_ms,
        };
        match self.obj.call(self.env, &op).await? {
            ShardReply::Confirmed { mapping, existing } => Ok(Ok(Confirmed { mapping, existing })),
            ShardReply::Refused(r) => Ok(Err(r)),
            other => Err(unexpected(&self.obj, "confirm", other).into()),
        }
    }

    /// Checks a code and keeps the verification verified (the mapping is
    /// stored by a `confirm` without a code): its SII, or the refusal.
    pub async fn verify(
        &self,
        salt: String,
        ap: &str,
        code: String,
        pepper: String,
        now_ms: u64,
    ) -> ApiResult<Result<Sii, Refusal>> {
        let op = ShardOp::Verify {
            salt,
            ap: ap.to_owned(),
            code,
            pepper,
            now_ms,
        };
        match self.obj.call(self.env, &op).await? {
            ShardReply::Verified { sii } => Sii::parse(&sii)
                .map(Ok)
                .map_err(|e| ApiError::Internal(format!("shard verified a bad sii: {e}"))),
            ShardReply::Refused(r) => Ok(Err(r)),
            other => Err(unexpected(&self.obj, "verify", other).into()),
        }
    }

    /// Remembers the holder on a peer GP for a verification (best effort
    /// for the caller: only repeated requests read it).
    pub async fn note_holder(&self, salt: String, ap: &str, holder: Party) -> ApiResult<()> {
        let op = ShardOp::NoteHolder {
            salt,
            ap: ap.to_owned(),
            holder,
        };
        self.send(&op).await.map(|_| ())
    }

    /// A change of one SII's mappings (choice, remedies, report, delete,
    /// claims): the APs told of it.
    async fn change(&self, op: ShardOp, name: &'static str) -> ApiResult<Vec<String>> {
        match self.send(&op).await? {
            ShardReply::Done { notified } => Ok(notified),
            other => Err(unexpected(&self.obj, name, other).into()),
        }
    }

    /// draft §8.2.1: the AP's choice after it met an existing mapping.
    pub async fn choose(
        &self,
        sii: &Sii,
        ap: &str,
        choice: Choice,
        gp: &str,
        claim_peers: Vec<String>,
        now_ms: u64,
    ) -> ApiResult<Vec<String>> {
        let op = ShardOp::Choose {
            sii: sii.to_string(),
            ap: ap.to_owned(),
            choice,
            gp: gp.to_owned(),
            claim_peers,
            now_ms,
        };
        self.change(op, "choose").await
    }

    /// draft §8.2.1 remedies after a displacement (see [`Remedy`]).
    pub async fn remedy(
        &self,
        remedy: Remedy,
        sii: &Sii,
        ap: &str,
        gp: &str,
        claim_peers: Vec<String>,
        now_ms: u64,
    ) -> ApiResult<Vec<String>> {
        let (sii, ap, gp) = (sii.to_string(), ap.to_owned(), gp.to_owned());
        let op = match remedy {
            Remedy::Reestablish => ShardOp::Reestablish {
                sii,
                ap,
                gp,
                claim_peers,
                now_ms,
            },
            Remedy::PreferBack => ShardOp::PreferBack {
                sii,
                ap,
                gp,
                claim_peers,
                now_ms,
            },
        };
        self.change(op, "remedy").await
    }

    /// draft §8.2.1: a strike against the AP that took the SII.
    pub async fn report(
        &self,
        sii: &Sii,
        ap: &str,
        gp: &str,
        now_ms: u64,
    ) -> ApiResult<Vec<String>> {
        let op = ShardOp::Report {
            sii: sii.to_string(),
            ap: ap.to_owned(),
            gp: gp.to_owned(),
            now_ms,
        };
        self.change(op, "report").await
    }

    /// The AP removes its own mapping.
    pub async fn delete(&self, sii: &Sii, ap: &str, now_ms: u64) -> ApiResult<Vec<String>> {
        let op = ShardOp::Delete {
            sii: sii.to_string(),
            ap: ap.to_owned(),
            now_ms,
        };
        self.change(op, "delete").await
    }

    /// draft §10: a peer GP's claim, already signature-checked.
    pub async fn apply_claim(&self, claim: Claim, now_ms: u64) -> ApiResult<Vec<String>> {
        self.change(ShardOp::ApplyClaim { claim, now_ms }, "apply_claim")
            .await
    }

    /// draft §8.2.1: a peer GP's strike notice; `true` when applied now,
    /// `false` for a redelivery of one applied before. A refusal is
    /// returned as such (the caller gives back the strike slot).
    pub async fn apply_peer_strike(
        &self,
        notice: StrikeNotice,
        now_ms: u64,
    ) -> ApiResult<Result<bool, Refusal>> {
        let op = ShardOp::ApplyPeerStrike { notice, now_ms };
        match self.obj.call(self.env, &op).await? {
            ShardReply::PeerStrike { applied } => Ok(Ok(applied)),
            ShardReply::Refused(r) => Ok(Err(r)),
            other => Err(unexpected(&self.obj, "apply_peer_strike", other).into()),
        }
    }

    /// The caller's own mapping of the SII.
    pub async fn status(&self, sii: &Sii, ap: &str) -> ApiResult<Status> {
        let op = ShardOp::Status {
            sii: sii.to_string(),
            ap: ap.to_owned(),
        };
        match self.send(&op).await? {
            ShardReply::Status {
                mapping,
                preferred_elsewhere,
            } => Ok(Status {
                mapping,
                preferred_elsewhere,
            }),
            other => Err(unexpected(&self.obj, "status", other).into()),
        }
    }

    /// draft §8.3: bulk lines of one AP that fall into this shard.
    /// Bulk lines of one AP, each with the holder found on a peer GP:
    /// per line its effect and the other AP's preferred mapping it met.
    pub async fn bulk(
        &self,
        ap: &str,
        lines: Vec<(String, String)>,
        remote: Vec<Option<Candidate>>,
        metas: Vec<Option<MappingMeta>>,
        now_ms: u64,
    ) -> ApiResult<Vec<BulkLineResult>> {
        let n = lines.len();
        let op = ShardOp::Bulk {
            ap: ap.to_owned(),
            lines,
            remote,
            metas,
            now_ms,
        };
        match self.send(&op).await? {
            ShardReply::Bulk {
                effects,
                mut existing,
            } => {
                existing.resize(n, None);
                Ok(effects.into_iter().zip(existing).collect())
            }
            other => Err(unexpected(&self.obj, "bulk", other).into()),
        }
    }

    /// Each SII's preferred mapping on this GP, in order.
    pub async fn preferred(&self, siis: &[Sii]) -> ApiResult<Vec<Option<Mapping>>> {
        let op = ShardOp::Preferred {
            siis: siis.iter().map(|s| s.to_string()).collect(),
        };
        match self.send(&op).await? {
            ShardReply::Preferred { mappings } => Ok(mappings),
            other => Err(unexpected(&self.obj, "preferred", other).into()),
        }
    }

    /// draft §8.1: this GP's preferred mapping of the SII, or every one;
    /// with `statements`, each with the statement the shard keeps of it.
    pub async fn lookup(&self, sii: &Sii, all: bool, statements: bool) -> ApiResult<Held> {
        let op = ShardOp::Lookup {
            sii: sii.to_string(),
            all,
            statements,
        };
        let text = self.obj.call_text(self.env, &op).await?;
        // Every query's reply: read as a plain struct, not through the
        // tagged enum (serde buffers an internally tagged value whole
        // before it reads the tag). Any other reply, a refusal among them,
        // takes the enum's way, errors included.
        if let Ok(LookupReply {
            result: LookupTag::Lookup,
            mappings,
            opted_out,
            statements,
        }) = serde_json::from_str(&text)
        {
            return Ok(Held {
                mappings,
                opted_out,
                statements,
            });
        }
        match self.obj.decode_reply(&text)? {
            ShardReply::Refused(r) => Err(r.into_api()),
            other => Err(unexpected(&self.obj, "lookup", other).into()),
        }
    }

    /// The SII holder's code; a refusal is returned as such (the caller
    /// answers it).
    pub async fn holder_confirm(
        &self,
        salt: String,
        code: String,
        pepper: String,
        now_ms: u64,
    ) -> ApiResult<Sii> {
        let op = ShardOp::HolderConfirm {
            salt,
            code,
            pepper,
            now_ms,
        };
        match self.send(&op).await? {
            ShardReply::HolderConfirmed { sii } => Sii::parse(&sii)
                .map_err(|e| ApiError::Internal(format!("shard answered a bad sii: {e}"))),
            other => Err(unexpected(&self.obj, "holder_confirm", other).into()),
        }
    }

    /// The holder's action on this SII; `(APs told, peers claimed to)`.
    pub async fn holder_act(
        &self,
        sii: &Sii,
        action: HolderAction,
        gp: &str,
        claim_peers: Vec<String>,
        now_ms: u64,
    ) -> ApiResult<(Vec<String>, Vec<String>)> {
        let op = ShardOp::HolderAct {
            sii: sii.to_string(),
            action,
            gp: gp.to_owned(),
            claim_peers,
            now_ms,
        };
        match self.send(&op).await? {
            ShardReply::HolderDone { removed, peers } => Ok((removed, peers)),
            other => Err(unexpected(&self.obj, "holder_act", other).into()),
        }
    }

    /// A peer GP's holder claim, already signature-checked.
    pub async fn apply_holder_claim(
        &self,
        claim: HolderClaim,
        now_ms: u64,
    ) -> ApiResult<Vec<String>> {
        self.change(
            ShardOp::ApplyHolderClaim { claim, now_ms },
            "apply_holder_claim",
        )
        .await
    }

    /// One page of the digests of every SII this shard holds (draft §9
    /// rebuild); the next page's start, if any.
    pub async fn digests(
        &self,
        after: Option<String>,
        limit: u32,
    ) -> ApiResult<(Vec<String>, Option<String>)> {
        match self.send(&ShardOp::Digests { after, limit }).await? {
            ShardReply::Digests { digests, next } => Ok((digests, next)),
            other => Err(unexpected(&self.obj, "digests", other).into()),
        }
    }

    /// How many SIIs this shard holds a mapping for.
    pub async fn count(&self) -> ApiResult<u64> {
        match self.send(&ShardOp::Count).await? {
            ShardReply::Count { n } => Ok(n),
            other => Err(unexpected(&self.obj, "count", other).into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::ssi::Ssi;

    fn mapping() -> Mapping {
        Mapping {
            ssi: Ssi::parse("ap.example:user-1").expect("test ssi"),
            verified_by: VerifiedBy::Sms,
            created_at_ms: 1_700_000_000_000,
            preferred_at_ms: Some(1_700_000_000_500),
            meta: MappingMeta::default(),
        }
    }

    /// The shard's lookup reply, as the object encodes it, reads the same
    /// through [`LookupReply`] as through [`ShardReply`].
    #[test]
    fn lookup_reply_reads_as_the_plain_struct() {
        let sent = ShardReply::Lookup {
            mappings: vec![mapping()],
            opted_out: true,
            statements: vec![Some("jws".into())],
        };
        let text = serde_json::to_string(&sent).expect("encode");
        let fast: LookupReply = serde_json::from_str(&text).expect("plain struct");
        assert_eq!(fast.result, LookupTag::Lookup);
        assert_eq!(fast.mappings, vec![mapping()]);
        assert!(fast.opted_out);
        assert_eq!(fast.statements, vec![Some("jws".to_owned())]);
        match serde_json::from_str::<ShardReply>(&text).expect("enum") {
            ShardReply::Lookup {
                mappings,
                opted_out,
                statements,
            } => {
                assert_eq!(mappings, fast.mappings);
                assert_eq!(opted_out, fast.opted_out);
                assert_eq!(statements, fast.statements);
            }
            other => panic!("not a lookup: {other:?}"),
        }
        // A miss: defaults, as the enum reads them.
        let empty: LookupReply = serde_json::from_str(r#"{"result":"lookup"}"#).expect("miss");
        assert!(empty.mappings.is_empty() && !empty.opted_out && empty.statements.is_empty());
    }

    /// Any other reply, a refusal among them, is not taken for a lookup:
    /// the caller reads it through [`ShardReply`].
    #[test]
    fn other_replies_are_not_lookups() {
        for sent in [
            ShardReply::Refused(Refusal::Mapping {
                slug: "sii-opted-out".into(),
            }),
            ShardReply::Refused(Refusal::WrongCode { attempts_left: 2 }),
            ShardReply::Count { n: 3 },
        ] {
            let text = serde_json::to_string(&sent).expect("encode");
            if let Ok(r) = serde_json::from_str::<LookupReply>(&text) {
                assert_eq!(r.result, LookupTag::Other, "{text}");
            }
            assert!(serde_json::from_str::<ShardReply>(&text).is_ok(), "{text}");
        }
        assert!(serde_json::from_str::<LookupReply>(r#"{"mappings":[]}"#).is_err());
    }
}
