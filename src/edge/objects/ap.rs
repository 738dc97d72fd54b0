//! ApObject: one SQLite Durable Object per enrolled AP (named by its id).
//!
//! It holds what is per AP and written on the creation path, so that no
//! single object per GP sees every creation:
//! - the AP's webhook **outbox** (signed, Standard Webhooks; retried with
//!   `core::outbox` backoff from the object's alarm until the horizon, then
//!   dead-lettered and visible to the operator) — one outbox per AP, so a
//!   receiver that is down delays only its own events;
//! - the per-AP code-send counter (SMS-pumping limit);
//! - registration analytics (draft §11.2: "analytics to look for odd
//!   patterns in registrations");
//! - bulk-upload idempotency keys.
//!
//! Items from mapping shards ([`ApItem`]) are applied once each, by id:
//! webhook events are queued, user-count changes and strikes are applied
//! to the AP registry (strikes also queue an `ap.strike` event).
use crate::edge::objects::dec;
use crate::edge::objects::enc;
use crate::edge::objects::Schema;
use crate::edge::rpc;
use crate::edge::rpc::ap::Analytics;
use crate::edge::rpc::ap::ApItem;
use crate::edge::rpc::ap::ApOp;
use crate::edge::rpc::ap::ApReply;
use crate::edge::rpc::ap::OutboxStats;
use crate::edge::rpc::registry::Registry;

use crate::core::credentials::derive_webhook_secret;
use crate::core::outbox::Delivery;
use crate::core::ratelimit::{is_suspended, TokenBucket};
use crate::core::verification::SendLimit;
use crate::core::webhook::{Event, EventData};
use crate::edge::http::error::{ApiError, ApiResult, OrInternal};
use crate::edge::outbound::webhooks::post_webhook;
use crate::edge::rpc::registry::RegistryOp;
use serde::{Deserialize, Serialize};
use worker::{durable_object, Env, Request, Response, SqlStorage, State};

#[durable_object]
pub struct ApObject {
    state: State,
    env: Env,
    schema: Schema,
}

impl worker::DurableObject for ApObject {
    fn new(state: State, env: Env) -> Self {
        ApObject {
            state,
            env,
            schema: Schema::new(
                "ap schema",
                // peer_strikes: strike notices of peer GPs against this AP, last 24 h.
                "CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v TEXT NOT NULL);
                 CREATE TABLE IF NOT EXISTS seen_ids (id TEXT PRIMARY KEY, at INTEGER NOT NULL);
                 CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, body TEXT NOT NULL, delivery TEXT NOT NULL, next_at INTEGER, dead INTEGER NOT NULL DEFAULT 0);
                 CREATE TABLE IF NOT EXISTS idem (k TEXT PRIMARY KEY, record TEXT NOT NULL);
                 CREATE TABLE IF NOT EXISTS peer_strikes (gp TEXT NOT NULL, id TEXT NOT NULL, at INTEGER NOT NULL, PRIMARY KEY (gp, id));",
            ),
        }
    }

    async fn fetch(&self, mut req: Request) -> worker::Result<Response> {
        self.serve(req.text().await?).await.into_response()
    }

    async fn alarm(&self) -> worker::Result<Response> {
        match self.deliver_due().await {
            Ok(Some(next)) => {
                let wait = next.saturating_sub(crate::edge::clock::now_ms()) as i64;
                self.state.storage().set_alarm(wait.max(0)).await?;
            }
            Ok(None) => {}
            Err(e) => {
                worker::console_error!("webhook outbox: {e:?}");
                self.state.storage().set_alarm(5_000i64).await?;
            }
        }
        Response::ok("")
    }
}

rpc::serve_rpc!(ApObject);

impl ApObject {
    /// One JSON operation, by RPC or by fetch.
    async fn serve(&self, op: String) -> rpc::Answer {
        rpc::serve_with(&op, "/ap-object", |op: ApOp| self.apply(op)).await
    }
}

#[derive(Deserialize)]
struct KvRow {
    v: String,
}

#[derive(Deserialize)]
struct EventRow {
    id: String,
    body: String,
    delivery: String,
}

const SEEN_TTL_MS: u64 = 7 * 24 * 3_600_000;
const MAX_PER_ALARM: usize = 50;

impl ApObject {
    fn sql(&self) -> SqlStorage {
        self.state.storage().sql()
    }

    fn ensure_schema(&self) -> ApiResult<()> {
        self.schema.ensure(&self.sql())
    }

    fn get_kv<T: serde::de::DeserializeOwned + Default>(&self, k: &str) -> ApiResult<T> {
        let rows: Vec<KvRow> = self
            .sql()
            .exec("SELECT v FROM kv WHERE k = ?", Some(vec![k.into()]))
            .internal("kv select")?
            .to_array()
            .internal("kv read")?;
        match rows.first() {
            Some(r) => dec(&r.v),
            None => Ok(T::default()),
        }
    }

    fn put_kv<T: Serialize>(&self, k: &str, v: &T) -> ApiResult<()> {
        self.sql()
            .exec(
                "INSERT OR REPLACE INTO kv (k, v) VALUES (?, ?)",
                Some(vec![k.into(), enc(v)?.into()]),
            )
            .internal("kv write")?;
        Ok(())
    }

    fn seen(&self, id: &str) -> ApiResult<bool> {
        let rows: Vec<KvRow> = self
            .sql()
            .exec(
                "SELECT id AS v FROM seen_ids WHERE id = ?",
                Some(vec![id.into()]),
            )
            .internal("seen select")?
            .to_array()
            .internal("seen read")?;
        Ok(!rows.is_empty())
    }

    fn mark_seen(&self, id: &str, now_ms: u64) -> ApiResult<()> {
        self.sql()
            .exec(
                "INSERT OR IGNORE INTO seen_ids (id, at) VALUES (?, ?)",
                Some(vec![id.into(), (now_ms as i64).into()]),
            )
            .internal("seen insert")?;
        Ok(())
    }

    /// Shards retry an item only until it was taken once (minutes at most),
    /// so ids older than a week can be forgotten.
    fn prune_seen(&self, now_ms: u64) -> ApiResult<()> {
        self.sql()
            .exec(
                "DELETE FROM seen_ids WHERE at < ?",
                Some(vec![(now_ms.saturating_sub(SEEN_TTL_MS) as i64).into()]),
            )
            .internal("seen prune")?;
        Ok(())
    }

    /// Puts every dead-lettered event back in the queue (operator replay).
    fn revive_dead(&self, now_ms: u64) -> ApiResult<u64> {
        let rows: Vec<EventRow> = self
            .sql()
            .exec("SELECT id, body, delivery FROM events WHERE dead = 1", None)
            .internal("dead select")?
            .to_array()
            .internal("dead read")?;
        let n = rows.len() as u64;
        for row in rows {
            let mut d: Delivery = dec(&row.delivery)?;
            d.revive(now_ms);
            self.sql()
                .exec(
                    "UPDATE events SET delivery = ?, next_at = ?, dead = 0 WHERE id = ?",
                    Some(vec![enc(&d)?.into(), (now_ms as i64).into(), row.id.into()]),
                )
                .internal("revive")?;
        }
        Ok(n)
    }

    fn enqueue(&self, id: &str, event: &Event, now_ms: u64) -> ApiResult<()> {
        let delivery = Delivery::new(now_ms);
        self.sql()
            .exec(
                "INSERT OR IGNORE INTO events (id, body, delivery, next_at) VALUES (?, ?, ?, ?)",
                Some(vec![
                    id.into(),
                    enc(event)?.into(),
                    enc(&delivery)?.into(),
                    (now_ms as i64).into(),
                ]),
            )
            .internal("event insert")?;
        Ok(())
    }

    async fn apply(&self, op: ApOp) -> ApiResult<ApReply> {
        self.ensure_schema()?;
        let now = crate::edge::clock::now_ms();
        match op {
            ApOp::Take { ap, items } => {
                // Remembered for the alarm, which has no request to read it from.
                self.put_kv("ap_id", &ap)?;
                self.prune_seen(now)?;
                let mut queued = false;
                for item in items {
                    if self.seen(item.id())? {
                        continue;
                    }
                    // Issue 14 item 3: an item may arrive twice (a
                    // redelivery racing this one, or a retry after a lost
                    // reply). The registry applies it once by its id; what
                    // this object does itself runs after checking `seen`
                    // again past the registry's await, with no await until
                    // `mark_seen`.
                    match &item {
                        ApItem::Event { id, event } => {
                            self.enqueue(id, event, now)?;
                            queued = true;
                        }
                        ApItem::Users { delta, overlap, .. } => {
                            let op = RegistryOp::AdjustUsers {
                                id: ap.clone(),
                                delta: *delta,
                                item: item.id().to_owned(),
                                now_ms: now,
                            };
                            if let Ok(stored) = Registry::new(&self.env).apply(&op).await? {
                                crate::edge::rpc::registry::remember(&stored.record);
                            }
                            if self.seen(item.id())? {
                                continue;
                            }
                            let mut a: Analytics = self.get_kv("analytics")?;
                            if *delta > 0 {
                                a.mappings_created += delta.unsigned_abs();
                            } else {
                                a.mappings_removed += delta.unsigned_abs();
                            }
                            a.overlapping += u64::from(*overlap);
                            self.put_kv("analytics", &a)?;
                        }
                        ApItem::Strike { strike, .. } => {
                            let op = RegistryOp::Strike {
                                id: ap.clone(),
                                item: item.id().to_owned(),
                                now_ms: now,
                            };
                            let applied = Registry::new(&self.env).apply(&op).await?;
                            if self.seen(item.id())? {
                                continue;
                            }
                            if let Ok(stored) = applied {
                                let r = &stored.record;
                                crate::edge::rpc::registry::remember(r);
                                let data = EventData::from_strike(
                                    strike,
                                    r.strikes,
                                    is_suspended(&r.rate_params, r.strikes),
                                );
                                let id = format!("evt_{}", item.id());
                                self.enqueue(&id, &Event::new(data, id.clone(), now), now)?;
                                queued = true;
                            }
                        }
                    }
                    self.mark_seen(item.id(), now)?;
                }
                if queued {
                    self.state
                        .storage()
                        .set_alarm(0i64)
                        .await
                        .internal("alarm")?;
                }
                Ok(ApReply::Ok)
            }
            ApOp::RecordSend {
                per_ap_per_hour,
                number,
                now_ms,
            } => {
                let mut a: Analytics = self.get_kv("analytics")?;
                let limit = SendLimit {
                    per_ap_per_hour,
                    ..SendLimit::default()
                };
                if let Err(e) = limit.record_ap(&mut a.send_counter, now_ms) {
                    return Ok(ApReply::Limited {
                        retry_after_ms: e.retry_after_ms,
                    });
                }
                a.codes_sent += 1;
                let minute = now_ms - now_ms % 60_000;
                if minute != a.minute_start_ms {
                    a.minute_start_ms = minute;
                    a.this_minute = 0;
                }
                a.this_minute = a.this_minute.saturating_add(1);
                a.peak_codes_per_minute = a.peak_codes_per_minute.max(a.this_minute);
                if let Some(n) = number {
                    if a.last_number.is_some_and(|l| l != n && l.abs_diff(n) <= 16) {
                        a.sequential += 1;
                    }
                    a.last_number = Some(n);
                }
                self.put_kv("analytics", &a)?;
                Ok(ApReply::Ok)
            }
            ApOp::RefundSend => {
                let mut a: Analytics = self.get_kv("analytics")?;
                a.send_counter.current = a.send_counter.current.saturating_sub(1);
                a.codes_sent = a.codes_sent.saturating_sub(1);
                self.put_kv("analytics", &a)?;
                Ok(ApReply::Ok)
            }
            ApOp::NoteVerify { ok } => {
                let mut a: Analytics = self.get_kv("analytics")?;
                if ok {
                    a.verified += 1;
                } else {
                    a.wrong_codes += 1;
                }
                self.put_kv("analytics", &a)?;
                Ok(ApReply::Ok)
            }
            ApOp::Stats => {
                let analytics: Analytics = self.get_kv("analytics")?;
                let mut outbox: OutboxStats = self.get_kv("outbox_stats")?;
                #[derive(Deserialize)]
                struct Agg {
                    queued: Option<i64>,
                    dead: Option<i64>,
                }
                let agg: Vec<Agg> = self
                    .sql()
                    .exec(
                        "SELECT SUM(dead = 0) AS queued, SUM(dead = 1) AS dead FROM events",
                        None,
                    )
                    .internal("outbox stats")?
                    .to_array()
                    .internal("outbox stats read")?;
                if let Some(a) = agg.first() {
                    outbox.queued = a.queued.unwrap_or(0).max(0) as u64;
                    outbox.dead = a.dead.unwrap_or(0).max(0) as u64;
                }
                outbox.oldest_queued_ms = self.oldest_queued()?;
                Ok(ApReply::Stats { analytics, outbox })
            }
            ApOp::Replay => {
                let events = self.revive_dead(now)?;
                if events > 0 {
                    self.state
                        .storage()
                        .set_alarm(0i64)
                        .await
                        .internal("alarm")?;
                }
                Ok(ApReply::Replayed { events })
            }
            ApOp::QueryLease { want, rate } => {
                // The authoritative bucket: every token any isolate spends
                // was taken from here first, so the AP never exceeds its
                // rate however many isolates serve it (ARCHITECTURE.md, Cost budget).
                let mut bucket = self
                    .get_kv::<Option<TokenBucket>>("query_bucket")?
                    .unwrap_or_else(|| TokenBucket::new(rate, now));
                let g = bucket.grant(want, now, rate);
                self.put_kv("query_bucket", &Some(bucket))?;
                Ok(ApReply::Lease {
                    granted: g.granted,
                    available: g.available,
                    retry_after_ms: g.retry_after_ms,
                })
            }
            ApOp::ReservePeerStrike {
                from_gp,
                id,
                per_day,
                now_ms,
            } => self.reserve_peer_strike(&from_gp, &id, per_day, now_ms),
            ApOp::ReleasePeerStrike { from_gp, id } => {
                self.sql()
                    .exec(
                        "DELETE FROM peer_strikes WHERE gp = ? AND id = ?",
                        Some(vec![from_gp.into(), id.into()]),
                    )
                    .internal("peer strike release")?;
                Ok(ApReply::Ok)
            }
            ApOp::IdemGet { key } => {
                let rows: Vec<KvRow> = self
                    .sql()
                    .exec(
                        "SELECT record AS v FROM idem WHERE k = ?",
                        Some(vec![key.into()]),
                    )
                    .internal("idem select")?
                    .to_array()
                    .internal("idem read")?;
                let record = match rows.first() {
                    Some(r) => Some(dec(&r.v)?),
                    None => None,
                };
                Ok(ApReply::Idem { record })
            }
            ApOp::IdemPut { key, record } => {
                self.sql()
                    .exec(
                        "INSERT OR REPLACE INTO idem (k, record) VALUES (?, ?)",
                        Some(vec![key.into(), enc(&record)?.into()]),
                    )
                    .internal("idem write")?;
                Ok(ApReply::Ok)
            }
        }
    }

    /// The per-peer, per-AP daily bound on forwarded strikes. GPs are
    /// "fully trusted" (draft §11.1), and every strike must match a claim
    /// this AP really made to that peer; still, one peer's users (or a bug
    /// there) should not be able to take an AP from full rate to suspended
    /// within minutes: draft §8.2.1 "With sufficient strikes, the GP can
    /// further rate limit that provider or remove their access entirely" is
    /// this GP's decision, taken at a pace it controls. A rolling 24 h
    /// window: the (`per_day` + 1)-th notice within 24 h is refused with a
    /// retry time, and the sender's outbox delivers it once a slot frees.
    fn reserve_peer_strike(
        &self,
        gp: &str,
        id: &str,
        per_day: u32,
        now_ms: u64,
    ) -> ApiResult<ApReply> {
        const DAY_MS: u64 = 24 * 3_600_000;
        let since = now_ms.saturating_sub(DAY_MS) as i64;
        self.sql()
            .exec(
                "DELETE FROM peer_strikes WHERE at <= ?",
                Some(vec![since.into()]),
            )
            .internal("peer strike prune")?;
        #[derive(Deserialize)]
        struct Held {
            n: i64,
            oldest: Option<i64>,
            mine: i64,
        }
        let rows: Vec<Held> = self
            .sql()
            .exec(
                "SELECT COUNT(*) AS n, MIN(at) AS oldest, COALESCE(SUM(id = ?), 0) AS mine FROM peer_strikes WHERE gp = ?",
                Some(vec![id.into(), gp.into()]),
            )
            .internal("peer strike count")?
            .to_array()
            .internal("peer strike count read")?;
        let (n, oldest, mine) = rows
            .first()
            .map(|h| (h.n, h.oldest, h.mine))
            .unwrap_or((0, None, 0));
        if mine > 0 {
            return Ok(ApReply::Reserved { fresh: false });
        }
        if n >= i64::from(per_day) {
            let retry_after_ms = oldest.map(|t| {
                (t.max(0) as u64)
                    .saturating_add(DAY_MS)
                    .saturating_sub(now_ms)
                    .max(1_000)
            });
            return Ok(ApReply::Limited { retry_after_ms });
        }
        self.sql()
            .exec(
                "INSERT INTO peer_strikes (gp, id, at) VALUES (?, ?, ?)",
                Some(vec![gp.into(), id.into(), (now_ms as i64).into()]),
            )
            .internal("peer strike insert")?;
        Ok(ApReply::Reserved { fresh: true })
    }

    fn oldest_queued(&self) -> ApiResult<Option<u64>> {
        let rows: Vec<KvRow> = self
            .sql()
            .exec(
                "SELECT delivery AS v FROM events WHERE dead = 0 ORDER BY seq LIMIT 1",
                None,
            )
            .internal("oldest")?
            .to_array()
            .internal("oldest read")?;
        match rows.first() {
            Some(r) => Ok(Some(dec::<Delivery>(&r.v)?.created_ms)),
            None => Ok(None),
        }
    }

    /// Delivers due events in order; returns when the next one is due.
    async fn deliver_due(&self) -> ApiResult<Option<u64>> {
        self.ensure_schema()?;
        let now = crate::edge::clock::now_ms();
        let rows: Vec<EventRow> = self
            .sql()
            .exec(
                "SELECT id, body, delivery FROM events WHERE dead = 0 AND next_at <= ? ORDER BY seq LIMIT ?",
                Some(vec![(now as i64).into(), (MAX_PER_ALARM as i64).into()]),
            )
            .internal("due events")?
            .to_array()
            .internal("due events read")?;
        if !rows.is_empty() {
            let policy = crate::edge::config::GpConfig::cached(&self.env)?.webhook_retry;
            let target = self.target().await;
            let mut stats: OutboxStats = self.get_kv("outbox_stats")?;
            for row in rows {
                let mut d: Delivery = dec(&row.delivery)?;
                let outcome = match &target {
                    Ok((url, key)) => post_webhook(url, key, &row.id, &row.body).await,
                    Err(e) => Err(format!("{e:?}")),
                };
                match outcome {
                    Ok(()) => {
                        self.sql()
                            .exec("DELETE FROM events WHERE id = ?", Some(vec![row.id.into()]))
                            .internal("event delete")?;
                        stats.delivered += 1;
                    }
                    Err(err) => {
                        let mut r = [0u8; 4];
                        let _ = getrandom::fill(&mut r);
                        d.failed(
                            &policy,
                            err.clone(),
                            crate::edge::clock::now_ms(),
                            u32::from_le_bytes(r),
                        );
                        stats.last_error = Some(err);
                        if d.dead {
                            worker::console_error!(
                                "webhook {} dead-lettered after {} attempts",
                                row.id,
                                d.failures
                            );
                        }
                        self.sql()
                            .exec(
                                "UPDATE events SET delivery = ?, next_at = ?, dead = ? WHERE id = ?",
                                Some(vec![
                                    enc(&d)?.into(),
                                    d.next_at_ms.map(|t| t as i64).unwrap_or(0).into(),
                                    i64::from(d.dead).into(),
                                    row.id.into(),
                                ]),
                            )
                            .internal("event update")?;
                        // The receiver is failing: later events wait for
                        // the head's retry instead of hammering it.
                        break;
                    }
                }
            }
            self.put_kv("outbox_stats", &stats)?;
        }
        #[derive(Deserialize)]
        struct Next {
            t: Option<i64>,
        }
        let next: Vec<Next> = self
            .sql()
            .exec("SELECT MIN(next_at) AS t FROM events WHERE dead = 0", None)
            .internal("next due")?
            .to_array()
            .internal("next due read")?;
        Ok(next.first().and_then(|n| n.t).map(|t| t.max(0) as u64))
    }

    /// The AP's webhook URL and signing key (registry + derivation).
    async fn target(&self) -> ApiResult<(String, Vec<u8>)> {
        let id: String = self.get_kv("ap_id")?;
        let Some(record) = Registry::new(&self.env).get(&id).await?.map(|ap| ap.record) else {
            return Err(ApiError::Internal(format!("AP {id} is not enrolled")));
        };
        let master = crate::edge::config::webhook_master_key(&self.env)?;
        let key = derive_webhook_secret(&master, &record.id, record.webhook_generation);
        Ok((record.webhook_url, key.to_vec()))
    }
}
