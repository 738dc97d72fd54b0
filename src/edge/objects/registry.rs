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

use crate::core::credentials::CertFingerprint;
use crate::core::ratelimit::{is_suspended, RateParams};
use crate::edge::http::error::{ApiError, ApiResult, OrInternal};
use serde::{Deserialize, Serialize};
use worker::{durable_object, Env, Method, Request, RequestInit, Response, SqlStorage, State};

/// An enrolled AP as the registry keeps it (no secrets in here: this is
/// what admin responses and the isolate cache hold).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApRecord {
    /// Provider id (draft §2's "unique identifier for the communication
    /// service provider"); also the OAuth client_id.
    pub id: String,
    pub name: String,
    pub webhook_url: String,
    /// SHA-256 fingerprints of the AP's client certificates (draft §11.3).
    pub cert_fingerprints: Vec<CertFingerprint>,
    /// draft §11.1: "Glados trusts only a few of them to create bulk mappings".
    pub bulk_allowed: bool,
    pub rate_params: RateParams,
    pub suspended: bool,
    pub suspended_reason: Option<String>,
    /// Bumped whenever tokens issued so far must stop working (suspension,
    /// secret rotation, certificate change). Tokens carry it.
    pub generation: u64,
    /// Input of the webhook-secret derivation; bumped when it is rotated.
    pub webhook_generation: u64,
    /// draft §11.2 "rate limited based on the number of enrolled users";
    /// maintained by the mapping work (0 until then).
    pub enrolled_users: u64,
    /// draft §8.2.1 strikes; maintained by the mapping work.
    pub strikes: u32,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
}

/// A record with its secret hash: only ever between the object and the
/// token endpoint / admin glue, never in a response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredAp {
    pub record: ApRecord,
    /// Hex SHA-256 (`core::credentials::hash_client_secret`).
    pub secret_hash: String,
}

/// Changes an operator may make to an AP (`PATCH /admin/v1/aps/{id}`),
/// already validated by the admin glue.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ApPatch {
    pub name: Option<String>,
    pub webhook_url: Option<String>,
    pub cert_fingerprints: Option<Vec<CertFingerprint>>,
    pub bulk_allowed: Option<bool>,
    pub rate_params: Option<RateParams>,
}

/// What the glue asks of the object.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum RegistryOp {
    Enroll {
        record: ApRecord,
        secret_hash: String,
    },
    Get {
        id: String,
    },
    List,
    Update {
        id: String,
        patch: ApPatch,
        now_ms: u64,
    },
    Suspend {
        id: String,
        reason: Option<String>,
        now_ms: u64,
    },
    Reinstate {
        id: String,
        now_ms: u64,
    },
    Rotate {
        id: String,
        secret_hash: String,
        rotate_webhook: bool,
        now_ms: u64,
    },
    /// Enrolled users changed (mapping lifecycle: creations, bulk uploads,
    /// deletions, replacements).
    AdjustUsers {
        id: String,
        delta: i64,
        now_ms: u64,
    },
    /// One more strike (draft §8.2.1); suspends at the AP's threshold
    /// (draft §11.2, `RateParams::suspend_after_strikes`).
    Strike {
        id: String,
        now_ms: u64,
    },
}

/// The object's answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum RegistryReply {
    Ap { ap: StoredAp },
    List { aps: Vec<ApRecord> },
    NotFound,
    Exists,
}

#[durable_object]
pub struct ApRegistry {
    state: State,
}

impl worker::DurableObject for ApRegistry {
    fn new(state: State, _env: Env) -> Self {
        ApRegistry { state }
    }

    async fn fetch(&self, mut req: Request) -> worker::Result<Response> {
        let result = match crate::edge::http::body::read_op::<RegistryOp>(&mut req).await {
            Ok(op) => self.apply(op),
            Err(e) => Err(ApiError::Internal(format!("registry op: {e}"))),
        };
        match result {
            Ok(reply) => Response::from_json(&reply),
            Err(e) => e.into_response("/registry"),
        }
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
        self.sql()
            .exec(
                "CREATE TABLE IF NOT EXISTS aps (
                    id TEXT PRIMARY KEY,
                    record TEXT NOT NULL,
                    secret_hash TEXT NOT NULL
                 )",
                None,
            )
            .internal("registry schema")?;
        Ok(())
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
            RegistryOp::AdjustUsers { id, delta, now_ms } => (
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
            ),
            RegistryOp::Strike { id, now_ms } => (
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
            ),
        };
        let Some(mut ap) = self.load(&id)? else {
            return Ok(RegistryReply::NotFound);
        };
        change(&mut ap);
        self.store(&ap)?;
        Ok(RegistryReply::Ap { ap })
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

/// Sends one operation to the GP's registry object.
pub async fn call(env: &Env, op: &RegistryOp) -> ApiResult<RegistryReply> {
    let stub = env
        .durable_object("AP_REGISTRY")
        .internal("AP_REGISTRY binding")?
        .id_from_name("registry")
        .internal("registry id")?
        .get_stub()
        .internal("registry stub")?;
    let body =
        serde_json::to_string(op).map_err(|e| ApiError::Internal(format!("encode op: {e}")))?;
    let mut init = RequestInit::new();
    init.with_method(Method::Post)
        .with_body(Some(wasm_bindgen::JsValue::from_str(&body)));
    let req = Request::new_with_init("https://registry/op", &init).internal("registry request")?;
    let mut resp = stub
        .fetch_with_request(req)
        .await
        .internal("registry fetch")?;
    if resp.status_code() != 200 {
        let text = resp.text().await.unwrap_or_default();
        return Err(ApiError::Internal(format!(
            "registry answered {}: {text}",
            resp.status_code()
        )));
    }
    crate::edge::http::body::read_reply::<RegistryReply>(&mut resp)
        .await
        .map_err(|e| ApiError::Internal(format!("registry reply: {e}")))
}
