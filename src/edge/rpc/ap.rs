//! Messages to an AP's ApObject (see objects/ap.rs) and its typed client.

use crate::core::bulk::KeyRecord;
use crate::core::mapping::Strike;
use crate::core::ratelimit::Rate;
use crate::core::verification::WindowCounter;
use crate::core::webhook::Event;
use crate::edge::http::error::ApiResult;
use crate::edge::rpc::{unexpected, Object};
use serde::{Deserialize, Serialize};
use worker::Env;

/// Something a mapping shard hands to an AP's object.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ApItem {
    /// A webhook to deliver.
    Event { id: String, event: Event },
    /// Enrolled users changed (draft §11.2: rate limits "based on the
    /// number of enrolled users"); `overlap` counts new mappings of SIIs
    /// other APs already hold (an analytics signal).
    Users {
        id: String,
        delta: i64,
        overlap: u32,
    },
    /// A strike against this AP (draft §8.2.1).
    Strike { id: String, strike: Strike },
}

impl ApItem {
    /// The item's id (applied at most once).
    pub fn id(&self) -> &str {
        match self {
            ApItem::Event { id, .. } | ApItem::Users { id, .. } | ApItem::Strike { id, .. } => id,
        }
    }
}

/// Registration signals per AP (draft §11.2).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Analytics {
    pub codes_sent: u64,
    pub verified: u64,
    pub wrong_codes: u64,
    pub mappings_created: u64,
    pub mappings_removed: u64,
    /// New mappings for SIIs another AP already held.
    pub overlapping: u64,
    /// Phone numbers requested within ±16 of the previous one.
    pub sequential: u64,
    pub peak_codes_per_minute: u32,
    pub minute_start_ms: u64,
    pub this_minute: u32,
    pub last_number: Option<u64>,
    pub send_counter: WindowCounter,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ApOp {
    Take {
        ap: String,
        items: Vec<ApItem>,
    },
    /// Count a code send against the AP's hourly limit (and analytics).
    RecordSend {
        per_ap_per_hour: u32,
        /// The phone number as an integer, for the sequential-number signal.
        number: Option<u64>,
        now_ms: u64,
    },
    RefundSend,
    NoteVerify {
        ok: bool,
    },
    Stats,
    /// Requeue dead-lettered webhooks.
    Replay,
    IdemGet {
        key: String,
    },
    IdemPut {
        key: String,
        record: KeyRecord,
    },
    /// draft §8.1/§11.2 query rate limit: lease up to `want` tokens from
    /// the AP's bucket at `rate` (computed by the caller from the registry
    /// entry), for an isolate to spend locally.
    QueryLease {
        want: u64,
        rate: Rate,
    },
    /// Takes one of peer `from_gp`'s strikes against this AP for the last
    /// 24 h (at most `per_day`), for its notice `id`; a notice already
    /// holding a slot keeps it (`fresh: false`).
    ReservePeerStrike {
        from_gp: String,
        id: String,
        per_day: u32,
        now_ms: u64,
    },
    /// Gives back a slot taken by `ReservePeerStrike` for a notice that was
    /// refused or turned out to be a redelivery.
    ReleasePeerStrike {
        from_gp: String,
        id: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum ApReply {
    Ok,
    Replayed {
        events: u64,
    },
    Limited {
        retry_after_ms: Option<u64>,
    },
    Stats {
        analytics: Analytics,
        outbox: OutboxStats,
    },
    Idem {
        record: Option<KeyRecord>,
    },
    /// A peer strike slot: `fresh` when taken by this call.
    Reserved {
        fresh: bool,
    },
    Lease {
        granted: u64,
        /// Whole tokens left in the bucket after the grant.
        available: u64,
        /// When nothing was granted: ms until one token accrues (`None`:
        /// never at this rate).
        retry_after_ms: Option<u64>,
    },
}

/// What the operator sees of an AP's outbox.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct OutboxStats {
    pub queued: u64,
    pub dead: u64,
    pub delivered: u64,
    pub oldest_queued_ms: Option<u64>,
    pub last_error: Option<String>,
}

/// What the limiter granted (draft §11.2 query rate).
#[derive(Debug, Clone, Copy)]
pub struct Grant {
    pub granted: u64,
    /// Whole tokens left in the bucket after the grant.
    pub available: u64,
    /// When nothing was granted: ms until one token accrues (`None`: never
    /// at this rate).
    pub retry_after_ms: Option<u64>,
}

/// A request the object refused for a limit: retry after this many ms
/// (`None`: not within the window).
#[derive(Debug, Clone, Copy)]
pub struct Limited {
    pub retry_after_ms: Option<u64>,
}

/// The typed client of one AP's object.
pub struct ApClient<'e> {
    env: &'e Env,
    obj: Object,
}

impl<'e> ApClient<'e> {
    /// The object of AP `ap` (its provider id).
    pub fn new(env: &'e Env, ap: &str) -> Self {
        ApClient {
            env,
            obj: Object::new("AP_OBJECT", ap),
        }
    }

    async fn call(&self, op: &ApOp) -> ApiResult<ApReply> {
        Ok(self.obj.call(self.env, op).await?)
    }

    /// Expects `ApReply::Ok`.
    async fn done(&self, op: ApOp, name: &'static str) -> ApiResult<()> {
        match self.call(&op).await? {
            ApReply::Ok => Ok(()),
            other => Err(unexpected(&self.obj, name, other).into()),
        }
    }

    /// Hands items from a mapping shard over (each applied once, by id).
    pub async fn take(&self, ap: &str, items: Vec<ApItem>) -> ApiResult<()> {
        let op = ApOp::Take {
            ap: ap.to_owned(),
            items,
        };
        self.done(op, "take").await
    }

    /// Counts one code send against the AP's hourly limit.
    pub async fn record_send(
        &self,
        per_ap_per_hour: u32,
        number: Option<u64>,
        now_ms: u64,
    ) -> ApiResult<Result<(), Limited>> {
        let op = ApOp::RecordSend {
            per_ap_per_hour,
            number,
            now_ms,
        };
        match self.call(&op).await? {
            ApReply::Ok => Ok(Ok(())),
            ApReply::Limited { retry_after_ms } => Ok(Err(Limited { retry_after_ms })),
            other => Err(unexpected(&self.obj, "record_send", other).into()),
        }
    }

    /// Gives back a send whose message could not be delivered.
    pub async fn refund_send(&self) -> ApiResult<()> {
        self.done(ApOp::RefundSend, "refund_send").await
    }

    /// Counts a code check (analytics).
    pub async fn note_verify(&self, ok: bool) -> ApiResult<()> {
        self.done(ApOp::NoteVerify { ok }, "note_verify").await
    }

    /// The AP's analytics and outbox state.
    pub async fn stats(&self) -> ApiResult<(Analytics, OutboxStats)> {
        match self.call(&ApOp::Stats).await? {
            ApReply::Stats { analytics, outbox } => Ok((analytics, outbox)),
            other => Err(unexpected(&self.obj, "stats", other).into()),
        }
    }

    /// Requeues dead-lettered webhooks; how many.
    pub async fn replay(&self) -> ApiResult<u64> {
        match self.call(&ApOp::Replay).await? {
            ApReply::Replayed { events } => Ok(events),
            other => Err(unexpected(&self.obj, "replay", other).into()),
        }
    }

    /// The record stored under an idempotency key.
    pub async fn idem_get(&self, key: &str) -> ApiResult<Option<KeyRecord>> {
        let op = ApOp::IdemGet {
            key: key.to_owned(),
        };
        match self.call(&op).await? {
            ApReply::Idem { record } => Ok(record),
            other => Err(unexpected(&self.obj, "idem_get", other).into()),
        }
    }

    /// Stores the record of an idempotency key.
    pub async fn idem_put(&self, key: &str, record: KeyRecord) -> ApiResult<()> {
        let op = ApOp::IdemPut {
            key: key.to_owned(),
            record,
        };
        self.done(op, "idem_put").await
    }

    /// Leases up to `want` query tokens at `rate`.
    pub async fn lease(&self, want: u64, rate: Rate) -> ApiResult<Grant> {
        match self.call(&ApOp::QueryLease { want, rate }).await? {
            ApReply::Lease {
                granted,
                available,
                retry_after_ms,
            } => Ok(Grant {
                granted,
                available,
                retry_after_ms,
            }),
            other => Err(unexpected(&self.obj, "lease", other).into()),
        }
    }

    /// Takes one of peer `from_gp`'s daily strike slots for notice `id`:
    /// `Ok(true)` when taken by this call, `Ok(false)` when the notice held
    /// one already, `Err(Limited)` when the peer used up its day.
    pub async fn reserve_peer_strike(
        &self,
        from_gp: &str,
        id: &str,
        per_day: u32,
        now_ms: u64,
    ) -> ApiResult<Result<bool, Limited>> {
        let op = ApOp::ReservePeerStrike {
            from_gp: from_gp.to_owned(),
            id: id.to_owned(),
            per_day,
            now_ms,
        };
        match self.call(&op).await? {
            ApReply::Reserved { fresh } => Ok(Ok(fresh)),
            ApReply::Limited { retry_after_ms } => Ok(Err(Limited { retry_after_ms })),
            other => Err(unexpected(&self.obj, "reserve_peer_strike", other).into()),
        }
    }

    /// Gives back a slot taken by [`Self::reserve_peer_strike`].
    pub async fn release_peer_strike(&self, from_gp: &str, id: &str) -> ApiResult<()> {
        let op = ApOp::ReleasePeerStrike {
            from_gp: from_gp.to_owned(),
            id: id.to_owned(),
        };
        self.done(op, "release_peer_strike").await
    }
}
