//! Subscriptions to the own filter's additions and their delivery (draft
//! §9): each subscriber is a cursor; the alarm sends every due subscriber
//! the batches after its cursor, or the notice that its version ended.
use super::{FilterObject, BATCH_WINDOW_MS};
use crate::core::encoding::b64_encode;
use crate::core::filter::encode_additions;
use crate::core::outbox::RetryPolicy;
use crate::edge::clock::now_ms;
use crate::edge::http::error::{ApiError, ApiResult, OrInternal};
use crate::edge::outbound::peer::Signer;
use crate::edge::rpc::filter::SubscribeOp;
use serde::Deserialize;
use serde_json::{json, Value};
use worker::{Method, Response};

/// Most bit indices in one delivery or one additions response; the rest
/// follows at once in the next one.
pub const MAX_INDICES_PER_MESSAGE: usize = 200_000;
/// How long one delivery to a subscriber may take.
const DELIVERY_TIMEOUT_MS: u32 = 5_000;

#[derive(Deserialize)]
struct SubRow {
    peer: String,
    version: i64,
    callback: String,
    acked: i64,
    failures: i64,
    since_ms: i64,
}

impl FilterObject {
    /// draft §9: "Other GPs can subscribe to additions ... When a
    /// subscription is created, it also includes a timestamp. The GP will
    /// send all changes ... since that timestamp." Here: since a cursor.
    /// One subscription per peer (a new one replaces the old).
    pub(super) async fn subscribe(&self, op: SubscribeOp) -> ApiResult<worker::Result<Response>> {
        let v = self.current()?;
        let current = v.version;
        if op.version != current {
            return Err(version_ended(op.version, current));
        }
        let seq = v.seq;
        let after = op.after.min(seq);
        let now = now_ms() as i64;
        self.sql()
            .exec(
                "INSERT OR REPLACE INTO subscriber (peer, version, callback, acked, failures, next_at, since_ms, last_error)
                 VALUES (?, ?, ?, ?, 0, 0, ?, NULL)",
                Some(vec![
                    op.peer.clone().into(),
                    (current as i64).into(),
                    op.callback.clone().into(),
                    (after as i64).into(),
                    now.into(),
                ]),
            )
            .internal("store subscription")?;
        // "first sends everything since that point": at once.
        self.schedule().await?;
        Ok(Response::from_json(&json!({
            "peer": op.peer,
            "version": current,
            "after": after,
            "seq": seq,
            "callback": op.callback,
        }))
        .map(|r| r.with_status(201)))
    }

    /// Sets the alarm to the earliest subscriber with work due, if any.
    pub(super) async fn schedule(&self) -> ApiResult<()> {
        let v = self.current()?;
        let (version, seq) = (v.version, v.seq);
        #[derive(Deserialize)]
        struct Next {
            t: Option<i64>,
        }
        let rows: Vec<Next> = self
            .sql()
            .exec(
                "SELECT MIN(next_at) AS t FROM subscriber WHERE version != ? OR acked < ?",
                Some(vec![(version as i64).into(), (seq as i64).into()]),
            )
            .internal("next delivery")?
            .to_array()
            .internal("next delivery read")?;
        let Some(t) = rows.first().and_then(|r| r.t) else {
            return Ok(());
        };
        self.set_alarm_at(t).await
    }

    /// After a batch was logged: subscribers that are not backing off get
    /// it within the batch window; later inserts in the window ride along.
    pub(super) async fn schedule_batch(&self) -> ApiResult<()> {
        self.sql()
            .exec(
                "UPDATE subscriber SET next_at = ? WHERE failures = 0 AND next_at = 0",
                Some(vec![(now_ms() as i64 + BATCH_WINDOW_MS).into()]),
            )
            .internal("schedule subscribers")?;
        self.schedule().await
    }

    fn subscriber_rows(&self) -> ApiResult<Vec<SubRow>> {
        self.sql()
            .exec(
                "SELECT peer, version, callback, acked, failures, since_ms FROM subscriber ORDER BY peer",
                None,
            )
            .internal("select subscribers")?
            .to_array()
            .internal("read subscribers")
    }

    pub(super) fn subscribers(&self) -> ApiResult<Value> {
        let v = self.current()?;
        let seq = v.seq;
        let rows = self.subscriber_rows()?;
        Ok(json!({
            "version": v.version,
            "seq": seq,
            "subscribers": rows.iter().map(|r| json!({
                "peer": r.peer,
                "version": r.version,
                "callback": r.callback,
                "acked": r.acked,
                "pending_batches": (seq as i64 - r.acked).max(0),
                "failures": r.failures,
                "since_ms": r.since_ms,
            })).collect::<Vec<_>>(),
        }))
    }

    /// One pass of the outbox: every due subscriber gets its rotation
    /// notice or the batches after its cursor, in parallel, signed.
    pub(super) async fn deliver(&self) -> ApiResult<()> {
        let v = self.current()?;
        let (version, seq) = (v.version, v.seq);
        let now = now_ms() as i64;
        let due: Vec<SubRow> = self
            .sql()
            .exec(
                "SELECT peer, version, callback, acked, failures, since_ms FROM subscriber
                 WHERE next_at <= ? AND (version != ? OR acked < ?)",
                Some(vec![
                    now.into(),
                    (version as i64).into(),
                    (seq as i64).into(),
                ]),
            )
            .internal("due subscribers")?
            .to_array()
            .internal("due subscribers read")?;
        if due.is_empty() {
            return self.schedule().await;
        }
        let signer = Signer::from_env(&self.env)?;
        let gp = signer.keyid.clone();
        // Build every message first (synchronous SQLite reads), then send.
        let mut jobs = Vec::new();
        for d in &due {
            let (body, to) = if d.version as u64 != version {
                (
                    json!({ "type": "rotated", "gp": gp, "version": d.version,
                            "new_version": version }),
                    None,
                )
            } else {
                let after = d.acked.max(0) as u64;
                let (to, indices) = self.log_after(version, after, seq, MAX_INDICES_PER_MESSAGE)?;
                (
                    json!({ "type": "additions", "gp": gp, "version": version,
                            "after": after, "seq": to,
                            "additions": b64_encode(&encode_additions(version, &indices)) }),
                    Some(to),
                )
            };
            jobs.push((d, body.to_string(), to));
        }
        let sends = jobs.iter().map(|(d, body, _)| {
            crate::edge::outbound::peer::signed_fetch(
                &signer,
                Method::Post,
                &d.callback,
                Some((body.as_bytes(), "application/json")),
                &[],
                DELIVERY_TIMEOUT_MS,
                crate::edge::outbound::peer::MAX_PEER_ANSWER,
            )
        });
        let results = futures_util::future::join_all(sends).await;
        let policy = RetryPolicy::default();
        let sql = self.sql();
        let now = now_ms();
        for ((d, _, to), result) in jobs.iter().zip(results) {
            let outcome = match result {
                Ok(r) if (200..300).contains(&r.status) => Ok(()),
                Ok(r) if r.status == 409 => {
                    // The subscriber's copy is behind our cursor for it (its
                    // state was lost): resend from where it says it is.
                    #[derive(Deserialize)]
                    struct Gap {
                        seq: u64,
                    }
                    match serde_json::from_slice::<Gap>(&r.body) {
                        Ok(g) if d.version as u64 == version => {
                            sql.exec(
                                "UPDATE subscriber SET acked = ?, next_at = 0 WHERE peer = ? AND version = ?",
                                Some(vec![(g.seq.min(seq) as i64).into(), d.peer.clone().into(), d.version.into()]),
                            )
                            .internal("rewind subscriber")?;
                            continue;
                        }
                        _ => Err(format!("HTTP 409: {}", String::from_utf8_lossy(&r.body))),
                    }
                }
                Ok(r) => Err(format!(
                    "HTTP {}: {}",
                    r.status,
                    String::from_utf8_lossy(r.body.get(..300).unwrap_or(&r.body))
                )),
                Err(e) => Err(e),
            };
            match (outcome, to) {
                // Rotation notice delivered: the old subscription has ended.
                (Ok(()), None) => {
                    sql.exec(
                        "DELETE FROM subscriber WHERE peer = ? AND version = ?",
                        Some(vec![d.peer.clone().into(), d.version.into()]),
                    )
                    .internal("end subscription")?;
                }
                (Ok(()), Some(to)) => {
                    sql.exec(
                        "UPDATE subscriber SET acked = MAX(acked, ?), failures = 0, next_at = 0, last_error = NULL,
                         since_ms = ? WHERE peer = ? AND version = ?",
                        Some(vec![(*to as i64).into(), (now as i64).into(), d.peer.clone().into(), d.version.into()]),
                    )
                    .internal("advance subscriber")?;
                }
                (Err(err), _) => {
                    let failures = (d.failures.max(0) as u32).saturating_add(1);
                    let mut r = [0u8; 4];
                    let _ = getrandom::fill(&mut r);
                    let created = d.since_ms.max(0) as u64;
                    // since_ms is the last success (or the subscription): the horizon
                    // counts from when the subscriber stopped answering.
                    match policy.after_failure(created, failures, now, u32::from_le_bytes(r)) {
                        crate::core::outbox::Next::RetryAt(t) => {
                            sql.exec(
                                "UPDATE subscriber SET failures = ?, next_at = ?, last_error = ? WHERE peer = ? AND version = ?",
                                Some(vec![
                                    i64::from(failures).into(),
                                    (t as i64).into(),
                                    err.clone().into(),
                                    d.peer.clone().into(),
                                    d.version.into(),
                                ]),
                            )
                            .internal("subscriber backoff")?;
                        }
                        // Unreachable for the whole horizon: the peer
                        // resubscribes from its own cursor when it is back
                        // (its cron catch-up), so the subscription goes.
                        crate::core::outbox::Next::DeadLetter => {
                            worker::console_error!("subscription of {} dropped: {err}", d.peer);
                            sql.exec(
                                "DELETE FROM subscriber WHERE peer = ? AND version = ?",
                                Some(vec![d.peer.clone().into(), d.version.into()]),
                            )
                            .internal("drop subscription")?;
                        }
                    }
                    worker::console_log!("delivery to {} failed ({failures}): {err}", d.peer);
                }
            }
        }
        self.schedule().await
    }
}

/// 409: the subscriber asked about a version that is no longer current.
pub fn version_ended(asked: u64, current: u64) -> ApiError {
    let mut e = ApiError::client(
        409,
        "filter-version-ended",
        "Filter version ended",
        format!(
            "filter version {asked} is not current (current: {current}); fetch the manifest \
             and subscribe to the new version"
        ),
    );
    if let ApiError::Client { extra, .. } = &mut e {
        extra.insert("current_version".into(), json!(current));
    }
    e
}
