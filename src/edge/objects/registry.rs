//! The AP registry: every enrolled application provider, in one SQLite
//! Durable Object per GP (named "registry").
//!
//! draft §7: "This enrollment is a manual process" — so the registry is
//! small (hundreds of APs) and written rarely. One object is enough: it is
//! off the query path, because client calls are checked against an
//! isolate-level cache of the registry (see `auth`) and the token endpoint
//! reaches it once per token, i.e. at most once per AP server every
//! TOKEN_TTL_SECONDS.
//!
//! Stored per AP: the public record (as JSON, so adding a field needs no
//! SQL migration) and the SHA-256 of the client secret. Never the secret
//! itself, never the webhook secret (that one is derived, see
//! `core::credentials::derive_webhook_secret`).

use crate::core::ratelimit::is_suspended;
use crate::edge::http::error::{ApiError, ApiResult, OrInternal};
use crate::edge::objects::Schema;
use crate::edge::rpc;
use crate::edge::rpc::registry::{ApRecord, RegistryOp, RegistryReply, StoredAp};
use serde::Deserialize;
use worker::{durable_object, Env, Request, Response, SqlStorage, State};

#[durable_object]
pub struct ApRegistry {
    state: State,
    schema: Schema,
}

impl worker::DurableObject for ApRegistry {
    fn new(state: State, _env: Env) -> Self {
        ApRegistry {
            state,
            schema: Schema::new(
                "registry schema",
                "CREATE TABLE IF NOT EXISTS aps (
                    id TEXT PRIMARY KEY,
                    record TEXT NOT NULL,
                    secret_hash TEXT NOT NULL
                 );
                 CREATE TABLE IF NOT EXISTS applied_items (
                    item TEXT PRIMARY KEY,
                    at INTEGER NOT NULL
                 );
                 CREATE INDEX IF NOT EXISTS applied_items_at ON applied_items (at);",
            ),
        }
    }

    async fn fetch(&self, mut req: Request) -> worker::Result<Response> {
        self.serve(req.text().await?).await.into_response()
    }
}

rpc::serve_rpc!(ApRegistry);

impl ApRegistry {
    /// One JSON operation, by RPC or by fetch.
    async fn serve(&self, op: String) -> rpc::Answer {
        rpc::serve_with(
            &op,
            "/registry",
            |op: RegistryOp| async move { self.apply(op) },
        )
        .await
    }
}

/// An edit of one stored AP, applied after loading it.
type Change = Box<dyn FnOnce(&mut StoredAp)>;

#[derive(Deserialize)]
struct Row {
    record: String,
    secret_hash: String,
}

impl ApRegistry {
    fn sql(&self) -> SqlStorage {
        self.state.storage().sql()
    }

    fn ensure_schema(&self) -> ApiResult<()> {
        self.schema.ensure(&self.sql())
    }

    /// Records that `item` (an AP's `ApItem` id) is applied now; false if
    /// it was before. The check and the change it guards run in one
    /// synchronous `apply`, so two deliveries of one item (a redelivery
    /// racing the first, or a retry after a lost reply) change the AP
    /// once. Ids are kept as long as an `ApObject` keeps its seen ids:
    /// redeliveries stop long before.
    fn first_application(&self, ap: &str, item: &str, now_ms: u64) -> ApiResult<bool> {
        let key = format!("{ap}/{item}");
        let cutoff = now_ms.saturating_sub(APPLIED_TTL_MS) as i64;
        self.sql()
            .exec(
                "DELETE FROM applied_items WHERE at < ?",
                Some(vec![cutoff.into()]),
            )
            .internal("prune applied items")?;
        #[derive(Deserialize)]
        struct Found {
            n: i64,
        }
        let found: Vec<Found> = self
            .sql()
            .exec(
                "SELECT COUNT(*) AS n FROM applied_items WHERE item = ?",
                Some(vec![key.clone().into()]),
            )
            .internal("select applied item")?
            .to_array()
            .internal("read applied item")?;
        if found.first().is_some_and(|f| f.n > 0) {
            return Ok(false);
        }
        self.sql()
            .exec(
                "INSERT INTO applied_items (item, at) VALUES (?, ?)",
                Some(vec![key.into(), (now_ms as i64).into()]),
            )
            .internal("insert applied item")?;
        Ok(true)
    }

    fn load(&self, id: &str) -> ApiResult<Option<StoredAp>> {
        let rows: Vec<Row> = self
            .sql()
            .exec(
                "SELECT record, secret_hash FROM aps WHERE id = ?",
                Some(vec![id.into()]),
            )
            .internal("select ap")?
            .to_array()
            .internal("read ap")?;
        rows.into_iter().next().map(decode_row).transpose()
    }

    fn store(&self, ap: &StoredAp) -> ApiResult<()> {
        let record = serde_json::to_string(&ap.record)
            .map_err(|e| ApiError::Internal(format!("encode ap: {e}")))?;
        self.sql()
            .exec(
                "INSERT OR REPLACE INTO aps (id, record, secret_hash) VALUES (?, ?, ?)",
                Some(vec![
                    ap.record.id.as_str().into(),
                    record.into(),
                    ap.secret_hash.as_str().into(),
                ]),
            )
            .internal("store ap")?;
        Ok(())
    }

    /// Applies one operation. Each runs without awaiting, so it is atomic
    /// with respect to other requests to this object.
    fn apply(&self, op: RegistryOp) -> ApiResult<RegistryReply> {
        self.ensure_schema()?;
        let (id, change): (String, Change) = match op {
            RegistryOp::Enroll {
                record,
                secret_hash,
            } => {
                if self.load(&record.id)?.is_some() {
                    return Ok(RegistryReply::Exists);
                }
                let ap = StoredAp {
                    record,
                    secret_hash,
                };
                self.store(&ap)?;
                return Ok(RegistryReply::Ap { ap });
            }
            RegistryOp::Get { id } => {
                return Ok(match self.load(&id)? {
                    Some(ap) => RegistryReply::Ap { ap },
                    None => RegistryReply::NotFound,
                });
            }
            RegistryOp::List => {
                let rows: Vec<Row> = self
                    .sql()
                    .exec("SELECT record, secret_hash FROM aps ORDER BY id", None)
                    .internal("list aps")?
                    .to_array()
                    .internal("read aps")?;
                let aps = rows
                    .into_iter()
                    .map(|r| decode_row(r).map(|s| s.record))
                    .collect::<ApiResult<Vec<_>>>()?;
                return Ok(RegistryReply::List { aps });
            }
            RegistryOp::Update { id, patch, now_ms } => (
                id,
                Box::new(move |ap: &mut StoredAp| {
                    let r = &mut ap.record;
                    if let Some(v) = patch.name {
                        r.name = v;
                    }
                    if let Some(v) = patch.webhook_url {
                        r.webhook_url = v;
                    }
                    if let Some(v) = patch.cert_fingerprints {
                        if v != r.cert_fingerprints {
                            // Tokens bound to a removed certificate must die.
                            r.generation += 1;
                        }
                        r.cert_fingerprints = v;
                    }
                    if let Some(v) = patch.bulk_allowed {
                        r.bulk_allowed = v;
                    }
                    if let Some(v) = patch.rate_params {
                        r.rate_params = v;
                    }
                    r.updated_at_ms = now_ms;
                }),
            ),
            RegistryOp::Suspend { id, reason, now_ms } => (
                id,
                Box::new(move |ap: &mut StoredAp| {
                    let r = &mut ap.record;
                    if !r.suspended {
                        r.suspended = true;
                        r.generation += 1;
                    }
                    r.suspended_reason = reason;
                    r.updated_at_ms = now_ms;
                }),
            ),
            RegistryOp::Reinstate { id, now_ms } => (
                id,
                Box::new(move |ap: &mut StoredAp| {
                    let r = &mut ap.record;
                    // Tokens from before the suspension stay dead either way
                    // (their generation is older). The bump makes tokens
                    // issued from now on newer than any isolate's cached
                    // "suspended" entry, which forces a refresh there, so
                    // reinstatement is seen at once, not after the cache age.
                    if r.suspended {
                        r.generation += 1;
                    }
                    r.suspended = false;
                    r.suspended_reason = None;
                    r.updated_at_ms = now_ms;
                }),
            ),
            RegistryOp::Rotate {
                id,
                secret_hash,
                rotate_webhook,
                now_ms,
            } => (
                id,
                Box::new(move |ap: &mut StoredAp| {
                    ap.secret_hash = secret_hash;
                    let r = &mut ap.record;
                    // A rotated secret may have leaked with tokens made from it.
                    r.generation += 1;
                    if rotate_webhook {
                        r.webhook_generation += 1;
                    }
                    r.updated_at_ms = now_ms;
                }),
            ),
            RegistryOp::AdjustUsers {
                id,
                delta,
                item,
                now_ms,
            } => {
                if self.load(&id)?.is_some() && !self.first_application(&id, &item, now_ms)? {
                    return self.current(&id);
                }
                (
                    id,
                    Box::new(move |ap: &mut StoredAp| {
                        let r = &mut ap.record;
                        r.enrolled_users = if delta < 0 {
                            r.enrolled_users.saturating_sub(delta.unsigned_abs())
                        } else {
                            r.enrolled_users.saturating_add(delta.unsigned_abs())
                        };
                        r.updated_at_ms = now_ms;
                    }),
                )
            }
            RegistryOp::Strike { id, item, now_ms } => {
                if self.load(&id)?.is_some() && !self.first_application(&id, &item, now_ms)? {
                    return self.current(&id);
                }
                (
                    id,
                    Box::new(move |ap: &mut StoredAp| {
                        let r = &mut ap.record;
                        r.strikes = r.strikes.saturating_add(1);
                        if !r.suspended && is_suspended(&r.rate_params, r.strikes) {
                            r.suspended = true;
                            r.suspended_reason = Some(format!(
                            "{} strikes: changes reported as malicious by other providers' users",
                            r.strikes
                        ));
                            r.generation += 1;
                        }
                        r.updated_at_ms = now_ms;
                    }),
                )
            }
        };
        let Some(mut ap) = self.load(&id)? else {
            return Ok(RegistryReply::NotFound);
        };
        change(&mut ap);
        self.store(&ap)?;
        Ok(RegistryReply::Ap { ap })
    }
}

/// How long applied item ids are remembered (as long as `ApObject`'s seen ids).
const APPLIED_TTL_MS: u64 = 7 * 24 * 3_600_000;

impl ApRegistry {
    /// The AP as stored, unchanged (an item applied before).
    fn current(&self, id: &str) -> ApiResult<RegistryReply> {
        Ok(match self.load(id)? {
            Some(ap) => RegistryReply::Ap { ap },
            None => RegistryReply::NotFound,
        })
    }
}

fn decode_row(row: Row) -> ApiResult<StoredAp> {
    let record: ApRecord = serde_json::from_str(&row.record)
        .map_err(|e| ApiError::Internal(format!("stored ap record is corrupt: {e}")))?;
    Ok(StoredAp {
        record,
        secret_hash: row.secret_hash,
    })
}
