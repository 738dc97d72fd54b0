//! MappingShard: the SQLite Durable Object that owns a slice of the SIIs
//! (DESIGN.md: "sharded by hash of the SII"; `core::shard` picks the shard).
//!
//! Everything about one SII lives in its shard: the [`SiiRecord`]
//! (mappings, displacements), open verifications (hashed codes, attempts,
//! expiry) and the per-SII send counter. Every operation below runs
//! synchronously inside the object — no `await` between reading and writing
//! — so operations on one SII are serialized and racing creations end in
//! one consistent state (the object's input gate does the locking).
//!
//! Side effects for other objects (webhooks to displaced APs, user-count
//! changes, strikes) are written to this shard's outbox table *in the same
//! synchronous block* as the state change and forwarded by the alarm to the
//! addressed AP's `ApObject`, which applies each item once (by id). So an
//! acknowledged change never loses its notification, even if the worker
//! dies right after.
use crate::edge::objects::dec;
use crate::edge::objects::enc;
use crate::edge::rpc;
use crate::edge::rpc::ap::ApClient;
use crate::edge::rpc::filter::FilterClient;
use crate::edge::rpc::shard::MappingView;
use crate::edge::rpc::shard::Refusal;
use crate::edge::rpc::shard::ShardOp;
use crate::edge::rpc::shard::ShardReply;

use crate::core::bulk::{line_effect, LineEffect};
use crate::core::creation::{repeat_rule, OpenPending, Repeat};
use crate::core::encoding::{b64url_encode, hex_decode, hex_encode};
use crate::core::mapping::{
    Candidate, Claim, DisplaceAction, MappingError, Notification, Party, PeerStrike, SiiRecord,
    StrikeNotice, VerifiedBy,
};
use crate::core::sii::{Sii, SiiKind};
use crate::core::ssi::{ProviderId, Ssi, UserId};
use crate::core::verification::{
    CodePolicy, PendingVerification, SendLimit, VerifyError, WindowCounter, SEND_WINDOW_MS,
};
use crate::core::webhook::{Event, EventData};
use crate::edge::config::GpConfig;
use crate::edge::http::error::{ApiError, ApiResult, OrInternal};
use crate::edge::outbound::peer::Signer;
use crate::edge::rpc::ap::ApItem;
use serde::{Deserialize, Serialize};
use worker::{durable_object, Env, Method, Request, Response, SqlStorage, State};

#[durable_object]
pub struct MappingShard {
    state: State,
    env: Env,
    /// When this instance last swept dead rows (0: not yet).
    swept_at_ms: std::cell::Cell<u64>,
}

impl worker::DurableObject for MappingShard {
    fn new(state: State, env: Env) -> Self {
        MappingShard {
            state,
            env,
            swept_at_ms: std::cell::Cell::new(0),
        }
    }

    async fn fetch(&self, mut req: Request) -> worker::Result<Response> {
        let result = match rpc::read_op::<ShardOp>(&mut req).await {
            Ok(op) => self.apply(op),
            Err(e) => Err(ApiError::Internal(format!("shard op: {e}"))),
        };
        match result {
            Ok((reply, wrote_outbox)) => {
                if wrote_outbox {
                    // As soon as possible; the alarm forwards the outbox.
                    self.state.storage().set_alarm(0i64).await?;
                }
                Response::from_json(&reply)
            }
            Err(e) => e.into_response("/shard"),
        }
    }

    async fn alarm(&self) -> worker::Result<Response> {
        if let Err(e) = self.forward_outbox().await {
            worker::console_error!("shard outbox: {e:?}");
            self.state.storage().set_alarm(5_000i64).await?;
        }
        Response::ok("")
    }
}

#[derive(Deserialize)]
struct RecordRow {
    record: String,
}

#[derive(Deserialize)]
struct PendingRow {
    salt: String,
    sii: String,
    ap: String,
    user: String,
    row: String,
}

#[derive(Deserialize)]
struct CounterRow {
    counter: String,
}

#[derive(Deserialize)]
struct OutboxRow {
    id: String,
    to_ap: String,
    item: String,
}

fn parse_sii(s: &str) -> ApiResult<Sii> {
    Sii::parse(s).map_err(|e| ApiError::Internal(format!("shard got a bad sii: {e}")))
}

fn parse_ap(s: &str) -> ApiResult<ProviderId> {
    ProviderId::parse(s).map_err(|e| ApiError::Internal(format!("shard got a bad ap: {e}")))
}

fn random_id() -> ApiResult<String> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| ApiError::Internal(format!("getrandom: {e}")))?;
    Ok(b64url_encode(&b))
}

type Applied = (ShardReply, bool);

/// How often a shard sweeps dead verification rows and stale counters.
const SWEEP_EVERY_MS: u64 = 3_600_000;

impl MappingShard {
    fn sql(&self) -> SqlStorage {
        self.state.storage().sql()
    }

    fn ensure_schema(&self) -> ApiResult<()> {
        let sql = self.sql();
        for q in [
            "CREATE TABLE IF NOT EXISTS records (sii TEXT PRIMARY KEY, record TEXT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS pending (salt TEXT PRIMARY KEY, sii TEXT NOT NULL, ap TEXT NOT NULL, user TEXT NOT NULL, row TEXT NOT NULL)",
            "CREATE INDEX IF NOT EXISTS pending_by_pair ON pending (sii, ap)",
            "CREATE TABLE IF NOT EXISTS sends (sii TEXT PRIMARY KEY, counter TEXT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS outbox (id TEXT PRIMARY KEY, to_ap TEXT NOT NULL, item TEXT NOT NULL)",
            // SII digests stored here but not yet in the GP's filter.
            "CREATE TABLE IF NOT EXISTS filter_outbox (digest TEXT PRIMARY KEY)",
            // Claims (draft §10) not yet acknowledged by their peer GP.
            "CREATE TABLE IF NOT EXISTS claim_outbox (id TEXT PRIMARY KEY, to_gp TEXT NOT NULL, claim TEXT NOT NULL)",
        ] {
            sql.exec(q, None).internal("shard schema")?;
        }
        Ok(())
    }

    fn load_record(&self, sii: &Sii) -> ApiResult<SiiRecord> {
        let rows: Vec<RecordRow> = self
            .sql()
            .exec(
                "SELECT record FROM records WHERE sii = ?",
                Some(vec![sii.as_str().into()]),
            )
            .internal("select record")?
            .to_array()
            .internal("read record")?;
        match rows.first() {
            Some(r) => dec(&r.record),
            None => Ok(SiiRecord::new(sii.clone())),
        }
    }

    fn store_record(&self, r: &SiiRecord) -> ApiResult<()> {
        if r.is_empty() {
            self.sql()
                .exec(
                    "DELETE FROM records WHERE sii = ?",
                    Some(vec![r.sii().as_str().into()]),
                )
                .internal("delete record")?;
        } else {
            self.sql()
                .exec(
                    "INSERT OR REPLACE INTO records (sii, record) VALUES (?, ?)",
                    Some(vec![r.sii().as_str().into(), enc(r)?.into()]),
                )
                .internal("store record")?;
        }
        Ok(())
    }

    fn pending_for(&self, sii: &str, ap: &str) -> ApiResult<Option<PendingRow>> {
        let rows: Vec<PendingRow> = self
            .sql()
            .exec(
                "SELECT salt, sii, ap, user, row FROM pending WHERE sii = ? AND ap = ?",
                Some(vec![sii.into(), ap.into()]),
            )
            .internal("select pending")?
            .to_array()
            .internal("read pending")?;
        Ok(rows.into_iter().next())
    }

    fn pending_by_salt(&self, salt: &str) -> ApiResult<Option<PendingRow>> {
        let rows: Vec<PendingRow> = self
            .sql()
            .exec(
                "SELECT salt, sii, ap, user, row FROM pending WHERE salt = ?",
                Some(vec![salt.into()]),
            )
            .internal("select pending")?
            .to_array()
            .internal("read pending")?;
        Ok(rows.into_iter().next())
    }

    fn put_pending(&self, salt: &str, sii: &str, ap: &str, user: &str, row: &str) -> ApiResult<()> {
        self.sql()
            .exec(
                "INSERT OR REPLACE INTO pending (salt, sii, ap, user, row) VALUES (?, ?, ?, ?, ?)",
                Some(vec![
                    salt.into(),
                    sii.into(),
                    ap.into(),
                    user.into(),
                    row.into(),
                ]),
            )
            .internal("store pending")?;
        Ok(())
    }

    fn delete_pending(&self, salt: &str) -> ApiResult<()> {
        self.sql()
            .exec(
                "DELETE FROM pending WHERE salt = ?",
                Some(vec![salt.into()]),
            )
            .internal("delete pending")?;
        Ok(())
    }

    fn counter(&self, sii: &str) -> ApiResult<WindowCounter> {
        let rows: Vec<CounterRow> = self
            .sql()
            .exec(
                "SELECT counter FROM sends WHERE sii = ?",
                Some(vec![sii.into()]),
            )
            .internal("select counter")?
            .to_array()
            .internal("read counter")?;
        match rows.first() {
            Some(r) => dec(&r.counter),
            None => Ok(WindowCounter::default()),
        }
    }

    fn store_counter(&self, sii: &str, c: &WindowCounter) -> ApiResult<()> {
        self.sql()
            .exec(
                "INSERT OR REPLACE INTO sends (sii, counter) VALUES (?, ?)",
                Some(vec![sii.into(), enc(c)?.into()]),
            )
            .internal("store counter")?;
        Ok(())
    }

    fn push(&self, to_ap: &str, item: &ApItem) -> ApiResult<()> {
        self.sql()
            .exec(
                "INSERT INTO outbox (id, to_ap, item) VALUES (?, ?, ?)",
                Some(vec![item.id().into(), to_ap.into(), enc(item)?.into()]),
            )
            .internal("outbox insert")?;
        Ok(())
    }

    /// Queues a newly mapped SII's digest for the GP's routing filter, in
    /// the same synchronous block as the mapping itself: the alarm hands
    /// the queue to the filter object in one batch, so a stored mapping
    /// always reaches the filter (draft §9: "If the addition of a new SII
    /// causes an entry in the bloom filter to flip from a zero to a one, a
    /// notification is sent") even if this request dies right after.
    fn queue_filter(&self, sii: &Sii) -> ApiResult<()> {
        self.sql()
            .exec(
                "INSERT OR IGNORE INTO filter_outbox (digest) VALUES (?)",
                Some(vec![hex_encode(&sii.hash()).into()]),
            )
            .internal("filter outbox insert")?;
        Ok(())
    }

    /// Queues a message for peer GP `to_gp` in the claim outbox (signed and
    /// sent by the alarm, retried until acknowledged), in the same
    /// synchronous block as the state change it reports.
    fn queue_peer(&self, to_gp: &str, notice: &PeerNotice) -> ApiResult<()> {
        self.sql()
            .exec(
                "INSERT INTO claim_outbox (id, to_gp, claim) VALUES (?, ?, ?)",
                Some(vec![
                    random_id()?.into(),
                    to_gp.into(),
                    notice.stored()?.into(),
                ]),
            )
            .internal("claim outbox insert")?;
        Ok(())
    }

    /// Queues the webhooks (and user-count changes) for core notifications.
    fn push_notifications(
        &self,
        before: &SiiRecord,
        notes: &[Notification],
        now_ms: u64,
    ) -> ApiResult<Vec<String>> {
        let mut notified = Vec::new();
        for n in notes {
            let (to_ap, user) = match n {
                Notification::Displaced { to_ap, action, .. } => {
                    if *action == DisplaceAction::Replaced {
                        self.push(
                            to_ap.as_str(),
                            &ApItem::Users {
                                id: random_id()?,
                                delta: -1,
                                overlap: 0,
                            },
                        )?;
                    }
                    let user = before.mapping_of(to_ap).map(|m| m.ssi.user().to_string());
                    (to_ap.to_string(), user)
                }
                Notification::Remedied { to, .. } if to.gp.is_none() => (to.ap.to_string(), None),
                Notification::Claim { to_gp, claim } => {
                    // draft §10: "it sends a webhook callback to those GP,
                    // indicating that that particular SII has been claimed"
                    // — durably, from this shard's claim outbox.
                    self.queue_peer(to_gp, &PeerNotice::Claim(claim.clone()))?;
                    continue;
                }
                // A remedy against an AP of another GP is not sent as its own
                // message: the remedying AP is preferred again as of now, so
                // its GP sends a claim to that GP (added by the caller, see
                // `remedy_claims`), which tells its AP by webhook
                // (`mapping.outpreferred`, `by.gp` = this GP) and lets it
                // act in turn (draft §8.2.1, §10).
                _ => continue,
            };
            if let Some(data) = EventData::from_notification(n, user) {
                let id = format!("evt_{}", random_id()?);
                let event = Event::new(data, id.clone(), now_ms);
                self.push(&to_ap, &ApItem::Event { id, event })?;
                notified.push(to_ap);
            }
        }
        Ok(notified)
    }

    /// Deletes verifications past their expiry (plus a grace hour, so a late
    /// confirmation still gets "expired" rather than "unknown") and send
    /// counters whose windows are over. At most hourly per object instance;
    /// one indexed-less scan of two small tables.
    fn sweep(&self) -> ApiResult<()> {
        let now = worker::Date::now().as_millis();
        if now.saturating_sub(self.swept_at_ms.get()) < SWEEP_EVERY_MS {
            return Ok(());
        }
        self.swept_at_ms.set(now);
        let cutoff = now.saturating_sub(SWEEP_EVERY_MS) as i64;
        self.sql()
            .exec(
                "DELETE FROM pending WHERE json_extract(row, '$.expires_at_ms') < ?",
                Some(vec![cutoff.into()]),
            )
            .internal("sweep pending")?;
        let stale = now.saturating_sub(2 * SEND_WINDOW_MS) as i64;
        self.sql()
            .exec(
                "DELETE FROM sends WHERE json_extract(counter, '$.window_start_ms') < ?",
                Some(vec![stale.into()]),
            )
            .internal("sweep sends")?;
        Ok(())
    }

    fn apply(&self, op: ShardOp) -> ApiResult<Applied> {
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
                now_ms,
            } => self.begin(
                sii,
                ap,
                user,
                (salt, code_hash),
                ttl_ms,
                per_sii_per_hour,
                now_ms,
            ),
            ShardOp::Abort {
                sii,
                ap,
                salt,
                previous,
                now_ms,
            } => {
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
            ShardOp::Confirm {
                salt,
                ap,
                code,
                pepper,
                remote,
                now_ms,
            } => self.confirm(salt, ap, code, pepper, remote, now_ms),
            ShardOp::PendingSii { salt, ap } => {
                let sii = self
                    .pending_by_salt(&salt)?
                    .filter(|p| p.ap == ap)
                    .map(|p| p.sii);
                Ok((ShardReply::PendingSii { sii }, false))
            }
            ShardOp::Choose {
                sii,
                ap,
                choice,
                gp,
                claim_peers,
                now_ms,
            } => {
                let sii = parse_sii(&sii)?;
                let caller = parse_ap(&ap)?;
                let mut r = self.load_record(&sii)?;
                let before = r.clone();
                // One clock for the record's change, its events and claims.
                let now_ms = r.stamp(now_ms);
                match r.choose(&caller, choice, &gp, &claim_peers, now_ms) {
                    Ok(notes) => {
                        self.store_record(&r)?;
                        let notified = self.push_notifications(&before, &notes, now_ms)?;
                        let claims = notes
                            .iter()
                            .any(|n| matches!(n, Notification::Claim { .. }));
                        let wrote = !notified.is_empty() || claims;
                        Ok((ShardReply::Done { notified }, wrote))
                    }
                    Err(e) => Ok((ShardReply::Refused(Refusal::mapping(e)), false)),
                }
            }
            ShardOp::Reestablish {
                sii,
                ap,
                gp,
                claim_peers,
                now_ms,
            } => {
                let sii = parse_sii(&sii)?;
                let caller = parse_ap(&ap)?;
                let mut r = self.load_record(&sii)?;
                let before = r.clone();
                // One clock for the record's change, its events and claims.
                let now_ms = r.stamp(now_ms);
                match r.reestablish(&caller, now_ms) {
                    Ok(mut notes) => {
                        remedy_claims(&mut r, &mut notes, &caller, &gp, claim_peers, now_ms);
                        self.store_record(&r)?;
                        self.queue_filter(&sii)?;
                        self.push(
                            caller.as_str(),
                            &ApItem::Users {
                                id: random_id()?,
                                delta: 1,
                                overlap: 0,
                            },
                        )?;
                        let notified = self.push_notifications(&before, &notes, now_ms)?;
                        Ok((ShardReply::Done { notified }, true))
                    }
                    Err(e) => Ok((ShardReply::Refused(Refusal::mapping(e)), false)),
                }
            }
            ShardOp::PreferBack {
                sii,
                ap,
                gp,
                claim_peers,
                now_ms,
            } => {
                let sii = parse_sii(&sii)?;
                let caller = parse_ap(&ap)?;
                let mut r = self.load_record(&sii)?;
                let before = r.clone();
                // One clock for the record's change, its events and claims.
                let now_ms = r.stamp(now_ms);
                match r.prefer_back(&caller, now_ms) {
                    Ok(mut notes) => {
                        remedy_claims(&mut r, &mut notes, &caller, &gp, claim_peers, now_ms);
                        self.store_record(&r)?;
                        let notified = self.push_notifications(&before, &notes, now_ms)?;
                        let claims = notes
                            .iter()
                            .any(|n| matches!(n, Notification::Claim { .. }));
                        let wrote = !notified.is_empty() || claims;
                        Ok((ShardReply::Done { notified }, wrote))
                    }
                    Err(e) => Ok((ShardReply::Refused(Refusal::mapping(e)), false)),
                }
            }
            ShardOp::Report {
                sii,
                ap,
                gp,
                now_ms,
            } => {
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
            ShardOp::Delete { sii, ap, now_ms } => {
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
            ShardOp::Status { sii, ap } => {
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
                });
                // Only an AP that holds a mapping for the SII learns who else
                // is preferred: otherwise this would be an unmetered lookup
                // (DESIGN.md: "No enumeration").
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
            ShardOp::Bulk { ap, lines, now_ms } => self.bulk(ap, lines, now_ms),
            ShardOp::ApplyClaim { claim, now_ms } => {
                let mut r = self.load_record(&claim.sii)?;
                let before = r.clone();
                match r.apply_claim(&claim, now_ms) {
                    Ok(notes) => {
                        self.store_record(&r)?;
                        let notified = self.push_notifications(&before, &notes, now_ms)?;
                        let wrote = !notified.is_empty();
                        Ok((ShardReply::Done { notified }, wrote))
                    }
                    Err(e) => Ok((ShardReply::Refused(Refusal::mapping(e)), false)),
                }
            }
            ShardOp::ApplyPeerStrike { notice, now_ms } => {
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
                    Ok(PeerStrike::Duplicate) => {
                        Ok((ShardReply::PeerStrike { applied: false }, false))
                    }
                    Err(e) => Ok((ShardReply::Refused(Refusal::mapping(e)), false)),
                }
            }
            ShardOp::Lookup { sii, gp } => {
                let sii = parse_sii(&sii)?;
                // Read-only: a missing record is not created.
                let candidate = self.load_record(&sii)?.candidate(&gp);
                Ok((ShardReply::Lookup { candidate }, false))
            }
            ShardOp::Digests { after, limit } => {
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
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn begin(
        &self,
        sii: String,
        ap: String,
        user: String,
        (salt, code_hash): (String, String),
        ttl_ms: u64,
        per_sii_per_hour: u32,
        now_ms: u64,
    ) -> ApiResult<Applied> {
        let sii_v = parse_sii(&sii)?;
        let caller = parse_ap(&ap)?;
        let record = self.load_record(&sii_v)?;
        let existing = record
            .preferred()
            .filter(|m| m.ap() != &caller)
            .map(|m| Party {
                ap: m.ap().clone(),
                gp: None,
            });
        let open = self.pending_for(&sii, &ap)?;
        let open_pv: Option<PendingVerification> = match &open {
            Some(p) => Some(dec(&p.row)?),
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
            return Ok((
                ShardReply::Begun {
                    reused: true,
                    salt: p.salt.clone(),
                    expires_at_ms: pv.expires_at_ms,
                    existing,
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
            state: crate::core::verification::PendingState::Open,
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
        self.put_pending(&salt, &sii, &ap, &user, &enc(&pv)?)?;
        self.store_counter(&sii, &counter)?;
        Ok((
            ShardReply::Begun {
                reused: false,
                salt,
                expires_at_ms: pv.expires_at_ms,
                existing,
                previous,
            },
            false,
        ))
    }

    fn confirm(
        &self,
        salt: String,
        ap: String,
        code: String,
        pepper: String,
        remote: Option<Candidate>,
        now_ms: u64,
    ) -> ApiResult<Applied> {
        let Some(p) = self.pending_by_salt(&salt)? else {
            return Ok((ShardReply::Refused(Refusal::NoSuchVerification), false));
        };
        // Another AP's handle reads as unknown (no probing of others' flows).
        if p.ap != ap {
            return Ok((ShardReply::Refused(Refusal::NoSuchVerification), false));
        }
        let mut pv: PendingVerification = dec(&p.row)?;
        let pepper = hex_decode(&pepper).map_err(|_| ApiError::Internal("bad pepper".into()))?;
        let policy = CodePolicy::default();
        if let Err(e) = pv.attempt(&policy, &pepper, &code, now_ms) {
            if matches!(e, VerifyError::WrongCode { .. }) {
                self.put_pending(&p.salt, &p.sii, &p.ap, &p.user, &enc(&pv)?)?;
            }
            return Ok((ShardReply::Refused(Refusal::verify(e)), false));
        }
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
        let created = match r.create_verified(
            &caller,
            Ssi::new(caller.clone(), user),
            by,
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
        };
        Ok((
            ShardReply::Confirmed {
                mapping,
                existing: created.existing,
            },
            was_new,
        ))
    }

    fn bulk(&self, ap: String, lines: Vec<(String, String)>, now_ms: u64) -> ApiResult<Applied> {
        let caller = parse_ap(&ap)?;
        let mut effects = Vec::with_capacity(lines.len());
        let mut created = 0i64;
        let mut overlap = 0u32;
        for (sii, user) in lines {
            let (Ok(sii), Ok(user)) = (Sii::parse(&sii), UserId::parse(&user)) else {
                effects.push(Err("invalid line".to_owned()));
                continue;
            };
            let ssi = Ssi::new(caller.clone(), user);
            let mut r = self.load_record(&sii)?;
            let effect = line_effect(r.mapping_of(&caller), &ssi);
            if effect != LineEffect::Unchanged {
                let others = r.mappings().iter().any(|m| m.ap() != &caller);
                if let Err(e) = r.create_verified(&caller, ssi, VerifiedBy::Bulk, None, now_ms) {
                    effects.push(Err(e.to_string()));
                    continue;
                }
                self.store_record(&r)?;
                if effect == LineEffect::Created {
                    self.queue_filter(&sii)?;
                    created += 1;
                    overlap += u32::from(others);
                }
            }
            effects.push(Ok(effect));
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
        Ok((ShardReply::Bulk { effects }, wrote))
    }

    /// Hands queued SII digests to the filter object in one batch (DESIGN:
    /// the filter's single writer gets work "in batches"); deletes them
    /// once the filter has them. Inserting twice is harmless.
    async fn forward_filter(&self) -> ApiResult<()> {
        let rows: Vec<DigestRow> = self
            .sql()
            .exec(
                "SELECT digest FROM filter_outbox LIMIT ?",
                Some(vec![FILTER_BATCH.into()]),
            )
            .internal("filter outbox select")?
            .to_array()
            .internal("filter outbox read")?;
        if rows.is_empty() {
            return Ok(());
        }
        let mut digests = Vec::with_capacity(rows.len());
        for r in &rows {
            let d: [u8; 32] = hex_decode(&r.digest)
                .ok()
                .and_then(|v| v.try_into().ok())
                .ok_or_else(|| ApiError::Internal("filter outbox: bad digest".into()))?;
            digests.push(d);
        }
        FilterClient::new(&self.env).insert(&digests).await?;
        for r in rows {
            self.sql()
                .exec(
                    "DELETE FROM filter_outbox WHERE digest = ?",
                    Some(vec![r.digest.into()]),
                )
                .internal("filter outbox delete")?;
        }
        Ok(())
    }

    /// Sends queued claims to their peer GPs, signed; deletes each claim its
    /// peer acknowledged (2xx). A peer that is down keeps its claims queued
    /// and the alarm retries (every 5 s) until it answers.
    async fn forward_claims(&self) -> ApiResult<()> {
        let rows: Vec<ClaimRow> = self
            .sql()
            .exec("SELECT id, to_gp, claim FROM claim_outbox LIMIT 100", None)
            .internal("claim outbox select")?
            .to_array()
            .internal("claim outbox read")?;
        if rows.is_empty() {
            return Ok(());
        }
        let cfg = GpConfig::from_env(&self.env)?;
        let signer = Signer::from_env(&self.env)?;
        let mut failed = None;
        for r in rows {
            let Some(peer) = cfg.peers.iter().find(|p| p.id == r.to_gp) else {
                // No longer a peer: nobody to tell.
                self.delete_claim(&r.id)?;
                continue;
            };
            let notice = PeerNotice::load(&r.claim)?;
            let (path, body) = notice.wire()?;
            let url = format!("{}{path}", peer.url.trim_end_matches('/'));
            match crate::edge::outbound::peer::signed_fetch(
                &signer,
                Method::Post,
                &url,
                Some((body.as_bytes(), "application/json")),
                &[],
                CLAIM_TIMEOUT_MS,
            )
            .await
            {
                Ok(resp) if (200..300).contains(&resp.status) => self.delete_claim(&r.id)?,
                // A strike the peer judged and refused for good (no claim
                // of its AP to match, already reported, not its AP) is not
                // retried; a refused signature (401), a timeout (408) or
                // its per-day strike limit (429) are retried like any
                // failure.
                Ok(resp)
                    if matches!(notice, PeerNotice::Strike { .. })
                        && (400..500).contains(&resp.status)
                        && !matches!(resp.status, 401 | 408 | 429) =>
                {
                    worker::console_error!(
                        "strike notice to {} refused for good (HTTP {}): {}",
                        r.to_gp,
                        resp.status,
                        String::from_utf8_lossy(&resp.body)
                    );
                    self.delete_claim(&r.id)?
                }
                Ok(resp) => {
                    failed = Some(ApiError::Internal(format!(
                        "{} to {}: HTTP {}",
                        notice.kind(),
                        r.to_gp,
                        resp.status
                    )))
                }
                Err(e) => {
                    failed = Some(ApiError::Internal(format!(
                        "{} to {}: {e}",
                        notice.kind(),
                        r.to_gp
                    )))
                }
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn delete_claim(&self, id: &str) -> ApiResult<()> {
        self.sql()
            .exec(
                "DELETE FROM claim_outbox WHERE id = ?",
                Some(vec![id.into()]),
            )
            .internal("claim outbox delete")?;
        Ok(())
    }

    /// Hands every outbox item to its AP's object; deletes what was taken.
    async fn forward_outbox(&self) -> ApiResult<()> {
        self.ensure_schema()?;
        // The filter first: it is what makes the mapping discoverable from
        // the peers (issue 6: within 2 s).
        let filter_failed = self.forward_filter().await.err();
        let claims_failed = self.forward_claims().await.err();
        let rows: Vec<OutboxRow> = self
            .sql()
            .exec("SELECT id, to_ap, item FROM outbox LIMIT 500", None)
            .internal("outbox select")?
            .to_array()
            .internal("outbox read")?;
        let mut by_ap: std::collections::BTreeMap<String, Vec<(String, ApItem)>> =
            Default::default();
        for r in rows {
            by_ap
                .entry(r.to_ap)
                .or_default()
                .push((r.id, dec(&r.item)?));
        }
        let mut failed = None;
        for (ap, items) in by_ap {
            let (ids, items): (Vec<String>, Vec<ApItem>) = items.into_iter().unzip();
            match ApClient::new(&self.env, &ap).take(&ap, items).await {
                Ok(()) => {
                    for id in ids {
                        self.sql()
                            .exec("DELETE FROM outbox WHERE id = ?", Some(vec![id.into()]))
                            .internal("outbox delete")?;
                    }
                }
                Err(e) => failed = Some(e),
            }
        }
        let left: Vec<CountRow> = self
            .sql()
            .exec(
                "SELECT (SELECT COUNT(*) FROM outbox) + (SELECT COUNT(*) FROM filter_outbox) + (SELECT COUNT(*) FROM claim_outbox) AS n",
                None,
            )
            .internal("outbox count")?
            .to_array()
            .internal("outbox count")?;
        if let Some(e) = failed.or(filter_failed).or(claims_failed) {
            return Err(e);
        }
        if left.first().is_some_and(|c| c.n > 0) {
            self.state
                .storage()
                .set_alarm(0i64)
                .await
                .internal("alarm")?;
        }
        Ok(())
    }
}

#[derive(Deserialize)]
struct CountRow {
    n: i64,
}

#[derive(Deserialize)]
struct ClaimRow {
    id: String,
    to_gp: String,
    claim: String,
}

/// Where peers take claims (draft §10).
pub const CLAIMS_PATH: &str = "/peer/v1/claims";
/// Where peers take strike notices (draft §8.2.1).
pub const STRIKES_PATH: &str = "/peer/v1/strikes";

/// A message in the claim outbox. Claims are stored as the bare claim JSON
/// (as before strikes were forwarded, so queued rows stay readable); other
/// notices carry a `notice` tag.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "notice", rename_all = "snake_case")]
enum PeerNotice {
    /// draft §10 claim, to `CLAIMS_PATH`.
    #[serde(skip)]
    Claim(Claim),
    /// draft §8.2.1 strike, to `STRIKES_PATH`.
    Strike { strike: StrikeNotice },
}

impl PeerNotice {
    fn stored(&self) -> ApiResult<String> {
        match self {
            PeerNotice::Claim(c) => enc(c),
            other => enc(other),
        }
    }

    fn load(s: &str) -> ApiResult<PeerNotice> {
        match serde_json::from_str::<PeerNotice>(s) {
            Ok(n) => Ok(n),
            Err(_) => Ok(PeerNotice::Claim(dec(s)?)),
        }
    }

    /// What it is, for logs.
    fn kind(&self) -> &'static str {
        match self {
            PeerNotice::Claim(_) => "claim",
            PeerNotice::Strike { .. } => "strike notice",
        }
    }

    /// The peer path and the body to sign and send.
    fn wire(&self) -> ApiResult<(&'static str, String)> {
        match self {
            PeerNotice::Claim(c) => Ok((CLAIMS_PATH, enc(c)?)),
            PeerNotice::Strike { strike } => Ok((STRIKES_PATH, enc(strike)?)),
        }
    }
}

/// After a prefer-back or a reestablish: the caller is preferred again as
/// of `now_ms`, so the peers whose filters may hold the SII — and the GP of
/// an AP on another GP that had displaced it, which a `Remedied`
/// notification names — get a claim, as for a choice (draft §10).
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
/// How long one claim delivery may take.
const CLAIM_TIMEOUT_MS: u32 = 5_000;

#[derive(Deserialize)]
struct DigestRow {
    digest: String,
}

/// Most digests handed to the filter object in one insert.
const FILTER_BATCH: i64 = 5_000;

/// A pending row as carried to `Abort` to be put back.
#[derive(Serialize, Deserialize)]
struct PrevRow {
    salt: String,
    sii: String,
    ap: String,
    user: String,
    row: String,
}

fn dec_prev(s: &str) -> ApiResult<PendingRow> {
    let p: PrevRow = dec(s)?;
    Ok(PendingRow {
        salt: p.salt,
        sii: p.sii,
        ap: p.ap,
        user: p.user,
        row: p.row,
    })
}
