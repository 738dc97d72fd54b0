//! The shard's outboxes: side effects for other objects and peer GPs are
//! written here in the same synchronous block as the state change, and the
//! alarm forwards them — to the AP's ApObject, to the FilterObject, and
//! signed to peer GPs (claims, strike notices) — until each is acknowledged.

use super::apply::random_id;
use super::MappingShard;
use crate::core::encoding::{hex_decode, hex_encode};
use crate::core::holder::HolderClaim;
use crate::core::mapping::{Claim, Notification, SiiRecord, StrikeNotice};
use crate::core::sii::Sii;
use crate::core::webhook::{Event, EventData};
use crate::edge::config::GpConfig;
use crate::edge::http::error::{ApiError, ApiResult, OrInternal};
use crate::edge::objects::dec;
use crate::edge::objects::enc;
use crate::edge::outbound::peer::Signer;
use crate::edge::rpc::ap::ApClient;
use crate::edge::rpc::ap::ApItem;
use crate::edge::rpc::filter::FilterClient;
use serde::{Deserialize, Serialize};
use worker::Method;

#[derive(Deserialize)]
struct OutboxRow {
    id: String,
    to_ap: String,
    item: String,
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

/// Where peers take the SII holder's actions (beyond GLADOS-00).
pub const HOLDER_CLAIMS_PATH: &str = "/peer/v1/holder-claims";

/// A message in the claim outbox. Claims are stored as the bare claim JSON
/// (as before strikes were forwarded, so queued rows stay readable); other
/// notices carry a `notice` tag.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "notice", rename_all = "snake_case")]
pub(super) enum PeerNotice {
    /// draft §10 claim, to `CLAIMS_PATH`.
    #[serde(skip)]
    Claim(Claim),
    /// draft §8.2.1 strike, to `STRIKES_PATH`.
    Strike { strike: StrikeNotice },
    /// The SII holder's removal, opt-out or opt-in, to `HOLDER_CLAIMS_PATH`.
    Holder { claim: HolderClaim },
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
            PeerNotice::Holder { .. } => "holder claim",
        }
    }

    /// The peer path and the body to sign and send.
    fn wire(&self) -> ApiResult<(&'static str, String)> {
        match self {
            PeerNotice::Claim(c) => Ok((CLAIMS_PATH, enc(c)?)),
            PeerNotice::Strike { strike } => Ok((STRIKES_PATH, enc(strike)?)),
            PeerNotice::Holder { claim } => Ok((HOLDER_CLAIMS_PATH, enc(claim)?)),
        }
    }
}

/// How long one claim delivery may take.
const CLAIM_TIMEOUT_MS: u32 = 5_000;

#[derive(Deserialize)]
struct DigestRow {
    digest: String,
}

/// Most digests handed to the filter object in one insert.
const FILTER_BATCH: i64 = 5_000;
impl MappingShard {
    pub(super) fn push(&self, to_ap: &str, item: &ApItem) -> ApiResult<()> {
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
    pub(super) fn queue_filter(&self, sii: &Sii) -> ApiResult<()> {
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
    pub(super) fn queue_peer(&self, to_gp: &str, notice: &PeerNotice) -> ApiResult<()> {
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
    pub(super) fn push_notifications(
        &self,
        before: &SiiRecord,
        notes: &[Notification],
        now_ms: u64,
    ) -> ApiResult<Vec<String>> {
        let mut notified = Vec::new();
        for n in notes {
            if let Some(ap) = n.deleted_mapping_of() {
                // One user fewer for that AP.
                self.push(
                    ap.as_str(),
                    &ApItem::Users {
                        id: random_id()?,
                        delta: -1,
                        overlap: 0,
                    },
                )?;
            }
            let (to_ap, user) = match n {
                Notification::Displaced { to_ap, .. } | Notification::Removed { to_ap, .. } => {
                    let user = before.mapping_of(to_ap).map(|m| m.ssi.user().to_string());
                    (to_ap.to_string(), user)
                }
                Notification::Remedied { to, .. } if to.gp.is_none() => (to.ap.to_string(), None),
                Notification::HolderClaim { to_gp, claim } => {
                    self.queue_peer(
                        to_gp,
                        &PeerNotice::Holder {
                            claim: claim.clone(),
                        },
                    )?;
                    continue;
                }
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

    /// Hands queued SII digests to the filter object in one batch (ARCHITECTURE.md, Scale:
    /// the filter's single writer gets work "in batches"); deletes them
    /// once the filter has them. Inserting twice is harmless.
    pub(super) async fn forward_filter(&self) -> ApiResult<()> {
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
    pub(super) async fn forward_claims(&self) -> ApiResult<()> {
        let rows: Vec<ClaimRow> = self
            .sql()
            .exec("SELECT id, to_gp, claim FROM claim_outbox LIMIT 100", None)
            .internal("claim outbox select")?
            .to_array()
            .internal("claim outbox read")?;
        if rows.is_empty() {
            return Ok(());
        }
        let cfg = GpConfig::cached(&self.env)?;
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
                crate::edge::outbound::peer::MAX_PEER_ANSWER,
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

    pub(super) fn delete_claim(&self, id: &str) -> ApiResult<()> {
        self.sql()
            .exec(
                "DELETE FROM claim_outbox WHERE id = ?",
                Some(vec![id.into()]),
            )
            .internal("claim outbox delete")?;
        Ok(())
    }

    /// Hands every outbox item to its AP's object; deletes what was taken.
    pub(super) async fn forward_outbox(&self) -> ApiResult<()> {
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
