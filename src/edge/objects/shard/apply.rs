//! The shard's operations: each runs synchronously inside the object (no
//! await between reading and writing), so operations on one SII are
//! serialized and racing requests end in one consistent state.

use super::outbox::PeerNotice;
use super::store::{dec_prev, PendingData, PendingRow, PrevRow};
use super::MappingShard;
use crate::core::bulk::{line_effect, LineEffect};
use crate::core::creation::{repeat_rule, OpenPending, Repeat};
use crate::core::encoding::{b64url_encode, hex_decode, hex_encode};
use crate::core::holder::{HolderAction, HolderClaim, HOLDER};
use crate::core::mapping::{
    Candidate, Choice, Claim, DisplaceAction, MappingError, Notification, Party, PeerStrike,
    SiiRecord, StrikeNotice, VerifiedBy,
};
use crate::core::sii::{Sii, SiiKind};
use crate::core::ssi::{ProviderId, Ssi, UserId};
use crate::core::tags::MappingMeta;
use crate::core::verification::{
    CodePolicy, PendingState, PendingVerification, SendLimit, VerifyError,
};
use crate::edge::config::GpConfig;
use crate::edge::http::error::{ApiError, ApiResult, OrInternal};
use crate::edge::objects::dec;
use crate::edge::objects::enc;
use crate::edge::rpc::ap::ApItem;
use crate::edge::rpc::shard::MappingView;
use crate::edge::rpc::shard::Refusal;
use crate::edge::rpc::shard::Remedy;
use crate::edge::rpc::shard::ShardOp;
use crate::edge::rpc::shard::ShardReply;
use serde::Deserialize;

fn parse_sii(s: &str) -> ApiResult<Sii> {
    Sii::parse(s).map_err(|e| ApiError::Internal(format!("shard got a bad sii: {e}")))
}

fn parse_ap(s: &str) -> ApiResult<ProviderId> {
    ProviderId::parse(s).map_err(|e| ApiError::Internal(format!("shard got a bad ap: {e}")))
}

pub(super) fn random_id() -> ApiResult<String> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| ApiError::Internal(format!("getrandom: {e}")))?;
    Ok(b64url_encode(&b))
}

type Applied = (ShardReply, bool);

/// After a prefer-back or a reestablish: the caller is preferred again as
/// of `now_ms`, so the peers whose filters may hold the SII — and the GP of
/// an AP on another GP that had displaced it, which a `Remedied`
/// notification names — get a claim, as for a choice (draft §10).
/// Whether a change claims the SII to peer GPs (their outbox needs the alarm).
fn has_claims(notes: &[Notification]) -> bool {
    notes.iter().any(|n| {
        matches!(
            n,
            Notification::Claim { .. } | Notification::HolderClaim { .. }
        )
    })
}

fn remedy_claims(
    r: &mut SiiRecord,
    notes: &mut Vec<Notification>,
    caller: &ProviderId,
    gp: &str,
    mut peers: Vec<String>,
    now_ms: u64,
) {
    if gp.is_empty() {
        return;
    }
    for n in notes.iter() {
        if let Notification::Remedied {
            to: Party {
                gp: Some(other), ..
            },
            ..
        } = n
        {
            peers.push(other.clone());
        }
    }
    let claims = r.claims_for(caller, DisplaceAction::Outpreferred, gp, &peers, now_ms);
    notes.extend(claims);
}
impl MappingShard {
    pub(super) fn apply(&self, op: ShardOp) -> ApiResult<Applied> {
        self.ensure_schema()?;
        self.sweep()?;
        match op {
            ShardOp::Begin {
                sii,
                ap,
                user,
                salt,
                code_hash,
                ttl_ms,
                per_sii_per_hour,
                meta,
                now_ms,
            } => self.begin(
                sii,
                ap,
                user,
                (salt, code_hash),
                ttl_ms,
                per_sii_per_hour,
                meta,
                now_ms,
            ),
            ShardOp::Abort {
                sii,
                ap,
                salt,
                previous,
                now_ms,
            } => self.abort(sii, ap, salt, previous, now_ms),
            ShardOp::Confirm {
                salt,
                ap,
                code,
                pepper,
                remote,
                now_ms,
            } => self.confirm(salt, ap, code, pepper, remote, now_ms),
            ShardOp::Verify {
                salt,
                ap,
                code,
                pepper,
                now_ms,
            } => self.verify(salt, ap, code, pepper, now_ms),
            ShardOp::NoteHolder { salt, ap, holder } => self.note_holder(salt, ap, holder),
            ShardOp::Choose {
                sii,
                ap,
                choice,
                gp,
                claim_peers,
                now_ms,
            } => self.choose(sii, ap, choice, gp, claim_peers, now_ms),
            ShardOp::Reestablish {
                sii,
                ap,
                gp,
                claim_peers,
                now_ms,
            } => self.remedy(Remedy::Reestablish, sii, ap, gp, claim_peers, now_ms),
            ShardOp::PreferBack {
                sii,
                ap,
                gp,
                claim_peers,
                now_ms,
            } => self.remedy(Remedy::PreferBack, sii, ap, gp, claim_peers, now_ms),
            ShardOp::Report {
                sii,
                ap,
                gp,
                now_ms,
            } => self.report(sii, ap, gp, now_ms),
            ShardOp::Delete { sii, ap, now_ms } => self.delete(sii, ap, now_ms),
            ShardOp::Status { sii, ap } => self.status(sii, ap),
            ShardOp::Bulk {
                ap,
                lines,
                remote,
                metas,
                now_ms,
            } => self.bulk(ap, lines, remote, metas, now_ms),
            ShardOp::Preferred { siis } => self.preferred(siis),
            ShardOp::ApplyClaim { claim, now_ms } => self.apply_claim(claim, now_ms),
            ShardOp::ApplyPeerStrike { notice, now_ms } => self.apply_peer_strike(notice, now_ms),
            ShardOp::Lookup {
                sii,
                all,
                statements,
            } => self.lookup(sii, all, statements),
            ShardOp::HolderConfirm {
                salt,
                code,
                pepper,
                now_ms,
            } => self.holder_confirm(salt, code, pepper, now_ms),
            ShardOp::HolderAct {
                sii,
                action,
                gp,
                claim_peers,
                now_ms,
            } => self.holder_act(sii, action, gp, claim_peers, now_ms),
            ShardOp::ApplyHolderClaim { claim, now_ms } => self.apply_holder_claim(claim, now_ms),
            ShardOp::Digests { after, limit } => self.digests(after, limit),
            ShardOp::Count => self.count(),
        }
    }

    pub(super) fn abort(
        &self,
        sii: String,
        ap: String,
        salt: String,
        previous: Option<String>,
        now_ms: u64,
    ) -> ApiResult<Applied> {
        if let Some(p) = self.pending_by_salt(&salt)? {
            if p.sii == sii && p.ap == ap {
                self.delete_pending(&salt)?;
                if let Some(prev) = previous {
                    let pv = dec_prev(&prev)?;
                    self.put_pending(&pv.salt, &pv.sii, &pv.ap, &pv.user, &pv.row)?;
                }
                // Give back the send that did not happen.
                let mut c = self.counter(&sii)?;
                if c.window_start_ms <= now_ms {
                    c.current = c.current.saturating_sub(1);
                }
                self.store_counter(&sii, &c)?;
            }
        }
        Ok((ShardReply::Done { notified: vec![] }, false))
    }

    /// Checks the code of `ap`'s verification `salt`; on a match keeps it
    /// as verified (attempts counted as for `confirm`). A verification
    /// already verified is accepted again with its right code (the caller's
    /// retry after a failure between `verify` and `confirm`).
    pub(super) fn verify(
        &self,
        salt: String,
        ap: String,
        code: String,
        pepper: String,
        now_ms: u64,
    ) -> ApiResult<Applied> {
        match self.check_code(&salt, &ap, Some(&code), &pepper, now_ms)? {
            Ok((p, data)) => {
                self.put_pending(&p.salt, &p.sii, &p.ap, &p.user, &enc(&data)?)?;
                Ok((ShardReply::Verified { sii: p.sii }, false))
            }
            Err(refused) => Ok((ShardReply::Refused(refused), false)),
        }
    }

    /// Stores the holder found on a peer GP with `ap`'s verification.
    pub(super) fn note_holder(
        &self,
        salt: String,
        ap: String,
        holder: Party,
    ) -> ApiResult<Applied> {
        if let Some(p) = self.pending_by_salt(&salt)?.filter(|p| p.ap == ap) {
            let mut data: PendingData = dec(&p.row)?;
            data.pv.holder = Some(holder);
            self.put_pending(&p.salt, &p.sii, &p.ap, &p.user, &enc(&data)?)?;
        }
        Ok((ShardReply::Done { notified: vec![] }, false))
    }

    pub(super) fn choose(
        &self,
        sii: String,
        ap: String,
        choice: Choice,
        gp: String,
        claim_peers: Vec<String>,
        now_ms: u64,
    ) -> ApiResult<Applied> {
        let sii = parse_sii(&sii)?;
        let caller = parse_ap(&ap)?;
        let mut r = self.load_record(&sii)?;
        let before = r.clone();
        // One clock for the record's change, its events and claims.
        let now_ms = r.stamp(now_ms);
        match r.choose(&caller, choice, &gp, &claim_peers, now_ms) {
            Ok(notes) => self.commit(&r, &before, &notes, now_ms),
            Err(e) => Ok((ShardReply::Refused(Refusal::mapping(e)), false)),
        }
    }

    /// Stores a changed record and queues what its change tells others,
    /// in one synchronous block (ARCHITECTURE.md, Invariants 3).
    fn commit(
        &self,
        r: &SiiRecord,
        before: &SiiRecord,
        notes: &[Notification],
        now_ms: u64,
    ) -> ApiResult<Applied> {
        self.store_record(r)?;
        let notified = self.push_notifications(before, notes, now_ms)?;
        let wrote = !notified.is_empty() || has_claims(notes);
        Ok((ShardReply::Done { notified }, wrote))
    }

    /// draft §8.2.1 remedies: the displaced mapping comes back
    /// (`Reestablish`, a new user of the AP and a new filter entry) or the
    /// outpreferred one is preferred again (`PreferBack`); both claim the
    /// SII to the peers as a choice does.
    pub(super) fn remedy(
        &self,
        remedy: Remedy,
        sii: String,
        ap: String,
        gp: String,
        claim_peers: Vec<String>,
        now_ms: u64,
    ) -> ApiResult<Applied> {
        let sii = parse_sii(&sii)?;
        let caller = parse_ap(&ap)?;
        let mut r = self.load_record(&sii)?;
        let before = r.clone();
        // One clock for the record's change, its events and claims.
        let now_ms = r.stamp(now_ms);
        let result = match remedy {
            Remedy::Reestablish => r.reestablish(&caller, now_ms),
            Remedy::PreferBack => r.prefer_back(&caller, now_ms),
        };
        let mut notes = match result {
            Ok(notes) => notes,
            Err(e) => return Ok((ShardReply::Refused(Refusal::mapping(e)), false)),
        };
        remedy_claims(&mut r, &mut notes, &caller, &gp, claim_peers, now_ms);
        self.store_record(&r)?;
        let reestablished = remedy == Remedy::Reestablish;
        if reestablished {
            self.queue_filter(&sii)?;
            self.push(
                caller.as_str(),
                &ApItem::Users {
                    id: random_id()?,
                    delta: 1,
                    overlap: 0,
                },
            )?;
        }
        let notified = self.push_notifications(&before, &notes, now_ms)?;
        let wrote = reestablished || !notified.is_empty() || has_claims(&notes);
        Ok((ShardReply::Done { notified }, wrote))
    }

    pub(super) fn report(
        &self,
        sii: String,
        ap: String,
        gp: String,
        now_ms: u64,
    ) -> ApiResult<Applied> {
        let sii = parse_sii(&sii)?;
        let caller = parse_ap(&ap)?;
        let mut r = self.load_record(&sii)?;
        match r.report_malicious(&caller, now_ms) {
            Ok(strike) => {
                self.store_record(&r)?;
                let mut notified = Vec::new();
                // draft §8.2.1: "In the case where the user reports
                // the change as malicious, this would be a strike
                // against the reputation of the new provider." A new
                // provider enrolled at another GP is struck there:
                // a signed notice to exactly that GP, from the same
                // durable outbox as claims, with one id for all its
                // retries (the receiver applies an id once).
                match StrikeNotice::forward(&strike, random_id()?, &gp) {
                    Some((to_gp, notice)) => {
                        self.queue_peer(&to_gp, &PeerNotice::Strike { strike: notice })?
                    }
                    None => {
                        let to = strike.against.ap.to_string();
                        self.push(
                            &to,
                            &ApItem::Strike {
                                id: random_id()?,
                                strike,
                            },
                        )?;
                        notified.push(to);
                    }
                }
                Ok((ShardReply::Done { notified }, true))
            }
            Err(e) => Ok((ShardReply::Refused(Refusal::mapping(e)), false)),
        }
    }

    pub(super) fn delete(&self, sii: String, ap: String, now_ms: u64) -> ApiResult<Applied> {
        let sii = parse_sii(&sii)?;
        let caller = parse_ap(&ap)?;
        let mut r = self.load_record(&sii)?;
        let Some(ssi) = r.mapping_of(&caller).map(|m| m.ssi.clone()) else {
            return Ok((
                ShardReply::Refused(Refusal::mapping(MappingError::NoSuchMapping)),
                false,
            ));
        };
        match r.delete(&caller, &ssi, now_ms) {
            Ok(_) => {
                self.store_record(&r)?;
                self.push(
                    caller.as_str(),
                    &ApItem::Users {
                        id: random_id()?,
                        delta: -1,
                        overlap: 0,
                    },
                )?;
                Ok((ShardReply::Done { notified: vec![] }, true))
            }
            Err(e) => Ok((ShardReply::Refused(Refusal::mapping(e)), false)),
        }
    }

    pub(super) fn status(&self, sii: String, ap: String) -> ApiResult<Applied> {
        let sii = parse_sii(&sii)?;
        let caller = parse_ap(&ap)?;
        let r = self.load_record(&sii)?;
        let preferred = r.preferred().map(|m| m.ap().clone());
        let mapping = r.mapping_of(&caller).map(|m| MappingView {
            sii: sii.to_string(),
            user: m.ssi.user().to_string(),
            verified_by: m.verified_by,
            created_at_ms: m.created_at_ms,
            preferred: preferred.as_ref() == Some(&caller),
            meta: m.meta.clone(),
        });
        // Only an AP that holds a mapping for the SII learns who else
        // is preferred: otherwise this would be an unmetered lookup
        // (ARCHITECTURE.md, Invariants 8: "No enumeration").
        let preferred_elsewhere = preferred
            .filter(|p| p != &caller && mapping.is_some())
            .map(|ap| Party { ap, gp: None });
        Ok((
            ShardReply::Status {
                mapping,
                preferred_elsewhere,
            },
            false,
        ))
    }

    pub(super) fn apply_claim(&self, claim: Claim, now_ms: u64) -> ApiResult<Applied> {
        let mut r = self.load_record(&claim.sii)?;
        let before = r.clone();
        let cfg = GpConfig::cached(&self.env)?;
        match r.apply_claim(&claim, &cfg.id, now_ms) {
            Ok(notes) => self.commit(&r, &before, &notes, now_ms),
            Err(e) => Ok((ShardReply::Refused(Refusal::mapping(e)), false)),
        }
    }

    pub(super) fn apply_peer_strike(
        &self,
        notice: StrikeNotice,
        now_ms: u64,
    ) -> ApiResult<Applied> {
        let mut r = self.load_record(&notice.sii)?;
        match r.accept_peer_strike(&notice, now_ms) {
            Ok(PeerStrike::Apply(strike)) => {
                self.store_record(&r)?;
                // Same path as a local strike: the AP's object bumps
                // the registry's strikes (rate limit, suspension) and
                // queues `ap.strike`, once per item id — which is
                // derived from the sender and its notice id.
                let to = strike.against.ap.to_string();
                let id = format!("peer-{}-{}", notice.from_gp, notice.id);
                self.push(&to, &ApItem::Strike { id, strike })?;
                Ok((ShardReply::PeerStrike { applied: true }, true))
            }
            Ok(PeerStrike::Duplicate) => Ok((ShardReply::PeerStrike { applied: false }, false)),
            Err(e) => Ok((ShardReply::Refused(Refusal::mapping(e)), false)),
        }
    }

    pub(super) fn lookup(&self, sii: String, all: bool, statements: bool) -> ApiResult<Applied> {
        let sii = parse_sii(&sii)?;
        // A missing record is not created; the only write is a statement
        // kept for the next query (statements.rs).
        let (r, kept) = if statements {
            self.load_record_and_kept(&sii)?
        } else {
            (self.load_record(&sii)?, Vec::new())
        };
        let mappings: Vec<_> = if all {
            r.ranked().into_iter().cloned().collect()
        } else {
            r.preferred().cloned().into_iter().collect()
        };
        let statements = if statements && !mappings.is_empty() {
            self.statements_of(&sii, &mappings, &kept)?
        } else {
            Vec::new()
        };
        let reply = ShardReply::Lookup {
            mappings,
            opted_out: r.is_opted_out(),
            statements,
        };
        Ok((reply, false))
    }

    pub(super) fn count(&self) -> ApiResult<Applied> {
        #[derive(Deserialize)]
        struct N {
            n: i64,
        }
        // Only non-empty records are stored: every row is a live SII.
        let rows: Vec<N> = self
            .sql()
            .exec("SELECT COUNT(*) AS n FROM records", None)
            .internal("count records")?
            .to_array()
            .internal("read count")?;
        let n = rows.first().map_or(0, |r| r.n.max(0) as u64);
        Ok((ShardReply::Count { n }, false))
    }

    pub(super) fn digests(&self, after: Option<String>, limit: u32) -> ApiResult<Applied> {
        #[derive(Deserialize)]
        struct SiiRow {
            sii: String,
        }
        let limit = limit.clamp(1, 10_000);
        // Only non-empty records are stored (store_record deletes
        // empty ones), so every row is a live SII.
        let rows: Vec<SiiRow> = self
            .sql()
            .exec(
                "SELECT sii FROM records WHERE sii > ? ORDER BY sii LIMIT ?",
                Some(vec![
                    after.unwrap_or_default().into(),
                    (limit as i64).into(),
                ]),
            )
            .internal("select digests")?
            .to_array()
            .internal("read digests")?;
        let next = (rows.len() == limit as usize)
            .then(|| rows.last().map(|r| r.sii.clone()))
            .flatten();
        let digests = rows
            .iter()
            .filter_map(|r| Sii::parse(&r.sii).ok())
            .map(|sii| hex_encode(&sii.hash()))
            .collect();
        Ok((ShardReply::Digests { digests, next }, false))
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn begin(
        &self,
        sii: String,
        ap: String,
        user: String,
        (salt, code_hash): (String, String),
        ttl_ms: u64,
        per_sii_per_hour: u32,
        meta: MappingMeta,
        now_ms: u64,
    ) -> ApiResult<Applied> {
        let sii_v = parse_sii(&sii)?;
        let record = self.load_record(&sii_v)?;
        // The holder (beyond GLADOS-00) may always prove control, to opt
        // back in too; an AP gets no code for an opted-out SII.
        let existing = if ap == HOLDER {
            None
        } else if record.is_opted_out() {
            let refused = Refusal::mapping(MappingError::OptedOut);
            return Ok((ShardReply::Refused(refused), false));
        } else {
            let caller = parse_ap(&ap)?;
            record
                .preferred()
                .filter(|m| m.ap() != &caller)
                .map(|m| Party {
                    ap: m.ap().clone(),
                    gp: None,
                })
        };
        let open = self.pending_for(&sii, &ap)?;
        let open_pv: Option<PendingVerification> = match &open {
            Some(p) => Some(dec::<PendingData>(&p.row)?.pv),
            None => None,
        };
        let rule = repeat_rule(
            open.as_ref()
                .zip(open_pv.as_ref())
                .map(|(p, pv)| OpenPending {
                    user: &p.user,
                    sent_at_ms: pv.created_at_ms,
                    dead: pv.is_dead(now_ms),
                }),
            &user,
            now_ms,
        );
        if let (Repeat::Reuse, Some(p), Some(pv)) = (rule, &open, &open_pv) {
            // A retry of the same request: its tags and label are the ones
            // the mapping gets.
            let row = enc(&PendingData {
                pv: pv.clone(),
                meta,
            })?;
            self.put_pending(&p.salt, &p.sii, &p.ap, &p.user, &row)?;
            return Ok((
                ShardReply::Begun {
                    reused: true,
                    salt: p.salt.clone(),
                    expires_at_ms: pv.expires_at_ms,
                    // The holder on a peer GP found when the code was sent.
                    existing: existing.or_else(|| pv.holder.clone()),
                    previous: None,
                },
                false,
            ));
        }
        let limit = SendLimit {
            per_sii_per_hour,
            ..SendLimit::default()
        };
        let mut counter = self.counter(&sii)?;
        if let Err(e) = limit.record_sii(&mut counter, now_ms) {
            return Ok((
                ShardReply::Refused(Refusal::TooManyCodes {
                    retry_after_ms: e.retry_after_ms,
                }),
                false,
            ));
        }
        let salt_b: [u8; 16] = hex_decode(&salt)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| ApiError::Internal("bad salt".into()))?;
        let hash_b: [u8; 32] = hex_decode(&code_hash)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| ApiError::Internal("bad code hash".into()))?;
        let policy = CodePolicy::default();
        let attempts = match (rule, &open_pv) {
            // Resends do not reset the attempt budget.
            (Repeat::Resend, Some(pv)) => pv.attempts,
            _ => 0,
        };
        let pv = PendingVerification {
            salt: salt_b,
            code_hash: hash_b,
            created_at_ms: now_ms,
            expires_at_ms: now_ms.saturating_add(ttl_ms),
            attempts,
            max_attempts: policy.max_attempts(),
            state: PendingState::Open,
            holder: None,
        };
        let previous = match &open {
            Some(p) => {
                self.delete_pending(&p.salt)?;
                Some(enc(&PrevRow {
                    salt: p.salt.clone(),
                    sii: p.sii.clone(),
                    ap: p.ap.clone(),
                    user: p.user.clone(),
                    row: p.row.clone(),
                })?)
            }
            None => None,
        };
        let expires_at_ms = pv.expires_at_ms;
        self.put_pending(&salt, &sii, &ap, &user, &enc(&PendingData { pv, meta })?)?;
        self.store_counter(&sii, &counter)?;
        Ok((
            ShardReply::Begun {
                reused: false,
                salt,
                expires_at_ms,
                existing,
                previous,
            },
            false,
        ))
    }

    /// Checks a presented code against `ap`'s pending verification `salt`
    /// (a wrong code counts against its attempts; a verification verified
    /// before passes again with its right code, issue 14 item 7), or, with
    /// no code, that `verify` verified it and it is still current; on a
    /// match the row and its data (state verified, not stored).
    fn check_code(
        &self,
        salt: &str,
        ap: &str,
        code: Option<&str>,
        pepper: &str,
        now_ms: u64,
    ) -> ApiResult<Result<(PendingRow, PendingData), Refusal>> {
        let Some(p) = self.pending_by_salt(salt)? else {
            return Ok(Err(Refusal::NoSuchVerification));
        };
        // Another AP's handle reads as unknown (no probing of others' flows).
        if p.ap != ap {
            return Ok(Err(Refusal::NoSuchVerification));
        }
        let PendingData { mut pv, meta } = dec(&p.row)?;
        let Some(code) = code else {
            return Ok(match pv.state {
                PendingState::Verified if now_ms < pv.expires_at_ms => {
                    Ok((p, PendingData { pv, meta }))
                }
                PendingState::Verified => Err(Refusal::verify(VerifyError::Expired)),
                PendingState::Open => Err(Refusal::NoSuchVerification),
            });
        };
        let pepper = hex_decode(pepper).map_err(|_| ApiError::Internal("bad pepper".into()))?;
        let policy = CodePolicy::default();
        if let Err(e) = pv.attempt_again(&policy, &pepper, code, now_ms) {
            if matches!(e, VerifyError::WrongCode { .. }) {
                let row = enc(&PendingData { pv, meta })?;
                self.put_pending(&p.salt, &p.sii, &p.ap, &p.user, &row)?;
            }
            return Ok(Err(Refusal::verify(e)));
        }
        Ok(Ok((p, PendingData { pv, meta })))
    }

    /// The SII holder's code (beyond GLADOS-00): used up on a match.
    pub(super) fn holder_confirm(
        &self,
        salt: String,
        code: String,
        pepper: String,
        now_ms: u64,
    ) -> ApiResult<Applied> {
        match self.check_code(&salt, HOLDER, Some(&code), &pepper, now_ms)? {
            Ok((p, _)) => {
                self.delete_pending(&p.salt)?;
                Ok((ShardReply::HolderConfirmed { sii: p.sii }, false))
            }
            Err(refused) => Ok((ShardReply::Refused(refused), false)),
        }
    }

    /// The holder's removal, opt-out or opt-in (beyond GLADOS-00), with
    /// the webhooks to the APs whose mappings went and the claims to the
    /// peers, in one synchronous block (ARCHITECTURE.md, Invariants 3).
    pub(super) fn holder_act(
        &self,
        sii: String,
        action: HolderAction,
        gp: String,
        claim_peers: Vec<String>,
        now_ms: u64,
    ) -> ApiResult<Applied> {
        let sii = parse_sii(&sii)?;
        let mut r = self.load_record(&sii)?;
        let before = r.clone();
        let (notes, _) = r.holder_act(action, &gp, &claim_peers, now_ms);
        let (reply, wrote) = self.commit_holder(&r, &before, &notes, action, now_ms)?;
        let peers = notes
            .iter()
            .filter_map(|n| match n {
                Notification::HolderClaim { to_gp, .. } => Some(to_gp.clone()),
                _ => None,
            })
            .collect();
        let removed = match reply {
            ShardReply::Done { notified } => notified,
            _ => Vec::new(),
        };
        Ok((ShardReply::HolderDone { removed, peers }, wrote))
    }

    /// A peer GP's holder claim (beyond GLADOS-00).
    pub(super) fn apply_holder_claim(&self, claim: HolderClaim, now_ms: u64) -> ApiResult<Applied> {
        let mut r = self.load_record(&claim.sii)?;
        let before = r.clone();
        match r.apply_holder_claim(&claim, now_ms) {
            Ok(notes) => self.commit_holder(&r, &before, &notes, claim.action, now_ms),
            Err(e) => Ok((ShardReply::Refused(Refusal::mapping(e)), false)),
        }
    }

    /// Stores a record a holder's action changed. An opt-out also goes
    /// into this GP's routing filter, so every peer asks this GP about the
    /// SII and hears `opted_out` though no mapping is left anywhere.
    fn commit_holder(
        &self,
        r: &SiiRecord,
        before: &SiiRecord,
        notes: &[Notification],
        action: HolderAction,
        now_ms: u64,
    ) -> ApiResult<Applied> {
        let (reply, wrote) = self.commit(r, before, notes, now_ms)?;
        let opted_out = action == HolderAction::OptOut && r.is_opted_out();
        if opted_out {
            self.queue_filter(r.sii())?;
        }
        Ok((reply, wrote || opted_out))
    }

    pub(super) fn confirm(
        &self,
        salt: String,
        ap: String,
        code: Option<String>,
        pepper: String,
        remote: Option<Candidate>,
        now_ms: u64,
    ) -> ApiResult<Applied> {
        let (p, PendingData { meta, .. }) =
            match self.check_code(&salt, &ap, code.as_deref(), &pepper, now_ms)? {
                Ok(found) => found,
                Err(refused) => return Ok((ShardReply::Refused(refused), false)),
            };
        let sii = parse_sii(&p.sii)?;
        let caller = parse_ap(&p.ap)?;
        let user = UserId::parse(&p.user)
            .map_err(|e| ApiError::Internal(format!("stored user id: {e}")))?;
        let by = match sii.kind() {
            SiiKind::Email => VerifiedBy::Email,
            _ => VerifiedBy::Sms,
        };
        let mut r = self.load_record(&sii)?;
        let was_new = r.mapping_of(&caller).is_none();
        let others = r.mappings().iter().any(|m| m.ap() != &caller);
        let created = match r.create_verified_with(
            &caller,
            Ssi::new(caller.clone(), user),
            by,
            meta.clone(),
            remote.as_ref(),
            now_ms,
        ) {
            Ok(c) => c,
            Err(e) => return Ok((ShardReply::Refused(Refusal::mapping(e)), false)),
        };
        self.store_record(&r)?;
        // draft §8.2: "If there is a match, it considers the mapping
        // validated, and stores it." The verification is used up.
        self.delete_pending(&p.salt)?;
        if was_new {
            self.queue_filter(&sii)?;
            self.push(
                caller.as_str(),
                &ApItem::Users {
                    id: random_id()?,
                    delta: 1,
                    overlap: u32::from(others),
                },
            )?;
        }
        let mapping = MappingView {
            sii: sii.to_string(),
            user: p.user.clone(),
            verified_by: by,
            created_at_ms: now_ms,
            preferred: created.preferred,
            meta,
        };
        Ok((
            ShardReply::Confirmed {
                mapping,
                existing: created.existing,
            },
            was_new,
        ))
    }

    /// draft §8.3 bulk lines of one AP, by the §8.2.1 rule of a code
    /// confirmation: a new mapping is preferred only if nobody else holds
    /// the SII, here or (`remote`, found by the caller's batched peer
    /// check) on a peer GP; otherwise it waits for the user's choice and
    /// the line names the holder (issue 14 item 1: it used to outrank a
    /// peer's mapping at once, silently).
    pub(super) fn bulk(
        &self,
        ap: String,
        lines: Vec<(String, String)>,
        remote: Vec<Option<Candidate>>,
        metas: Vec<Option<MappingMeta>>,
        now_ms: u64,
    ) -> ApiResult<Applied> {
        let caller = parse_ap(&ap)?;
        let mut metas = metas.into_iter();
        let mut effects = Vec::with_capacity(lines.len());
        let mut existing = Vec::with_capacity(lines.len());
        let mut created = 0i64;
        let mut overlap = 0u32;
        let mut remote = remote.into_iter();
        for (sii, user) in lines {
            let remote = remote.next().flatten();
            let meta = metas.next().flatten();
            let (Ok(sii), Ok(user)) = (Sii::parse(&sii), UserId::parse(&user)) else {
                effects.push(Err("invalid line".to_owned()));
                existing.push(None);
                continue;
            };
            let ssi = Ssi::new(caller.clone(), user);
            let mut r = self.load_record(&sii)?;
            let mine = r.mapping_of(&caller);
            let effect = line_effect(mine, &ssi, meta.as_ref());
            let mut met = None;
            if effect == LineEffect::Updated && mine.is_some_and(|m| m.ssi == ssi) {
                // Only the tags or label changed: the mapping keeps its
                // verification and its place in precedence.
                r.set_meta(&caller, meta.unwrap_or_default());
                self.store_record(&r)?;
            } else if effect != LineEffect::Unchanged {
                let others = r.mappings().iter().any(|m| m.ap() != &caller);
                let meta = meta.unwrap_or_default();
                match r.create_verified_with(
                    &caller,
                    ssi,
                    VerifiedBy::Bulk,
                    meta,
                    remote.as_ref(),
                    now_ms,
                ) {
                    Ok(c) => met = c.existing,
                    Err(e) => {
                        effects.push(Err(e.to_string()));
                        existing.push(None);
                        continue;
                    }
                }
                self.store_record(&r)?;
                if effect == LineEffect::Created {
                    self.queue_filter(&sii)?;
                    created += 1;
                    overlap += u32::from(others);
                }
            }
            effects.push(Ok(effect));
            existing.push(met);
        }
        let wrote = created > 0;
        if wrote {
            self.push(
                caller.as_str(),
                &ApItem::Users {
                    id: random_id()?,
                    delta: created,
                    overlap,
                },
            )?;
        }
        Ok((ShardReply::Bulk { effects, existing }, wrote))
    }

    /// Each SII's preferred mapping here (read-only).
    pub(super) fn preferred(&self, siis: Vec<String>) -> ApiResult<Applied> {
        let mut mappings = Vec::with_capacity(siis.len());
        for s in siis {
            let sii = parse_sii(&s)?;
            mappings.push(self.load_record(&sii)?.preferred().cloned());
        }
        Ok((ShardReply::Preferred { mappings }, false))
    }
}
