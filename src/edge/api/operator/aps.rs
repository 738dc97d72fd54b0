//! The operator's admin API, `/admin/v1/...`, behind
//! `Authorization: Bearer <ADMIN_TOKEN>`.
//!
//! draft §7: "This enrollment is a manual process, and as part of it, the
//! glados provider will provide a series of audit and validation steps"
//! and then "they are provided a traditional OAuth ClientID and Secret".
//! The audit is the operator's; this API records its outcome: enroll,
//! list, show, update, suspend, reinstate, rotate credentials.
//!
//! Secrets appear in exactly two responses, enrollment and rotation, and
//! nowhere else: the registry keeps only the client secret's hash, and the
//! webhook secret is derived from WEBHOOK_MASTER_KEY, never stored.
use crate::edge::rpc::registry::Missing;
use crate::edge::rpc::registry::Registry;

use crate::core::credentials::{
    derive_webhook_secret, format_client_secret, format_webhook_secret, hash_client_secret,
    normalize_fingerprints, validate_webhook_url, CertFingerprint,
};
use crate::core::encoding::hex_encode;
use crate::core::ratelimit::{allowed_rate, RateParams};
use crate::core::ssi::ProviderId;
use crate::edge::config::GpConfig;
use crate::edge::http::body::{no_null, read_json};
use crate::edge::http::error::{ApiError, ApiResult, OrInternal};
use crate::edge::http::request::Request;
use crate::edge::rpc::registry::{ApPatch, ApRecord, RegistryOp, StoredAp};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use worker::{Env, Response};

/// Longest display name.
const MAX_NAME_CHARS: usize = 200;
/// Longest suspension reason.
const MAX_REASON_CHARS: usize = 500;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnrollRequest {
    id: String,
    name: String,
    webhook_url: String,
    #[serde(default)]
    cert_fingerprints: Vec<String>,
    #[serde(default)]
    bulk_allowed: bool,
    /// Any subset of `RateParams`' fields; the rest from the defaults.
    #[serde(default, deserialize_with = "no_null")]
    rate_params: Option<Map<String, Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateRequest {
    #[serde(default, deserialize_with = "no_null")]
    name: Option<String>,
    #[serde(default, deserialize_with = "no_null")]
    webhook_url: Option<String>,
    #[serde(default, deserialize_with = "no_null")]
    cert_fingerprints: Option<Vec<String>>,
    #[serde(default, deserialize_with = "no_null")]
    bulk_allowed: Option<bool>,
    /// Any subset of `RateParams`' fields, merged over the current ones.
    #[serde(default, deserialize_with = "no_null")]
    rate_params: Option<Map<String, Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SuspendRequest {
    #[serde(default, deserialize_with = "no_null")]
    reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmptyRequest {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateRequest {
    /// Also rotate the webhook signing secret (default: only the client secret).
    #[serde(default)]
    webhook_secret: bool,
}

fn bad(slug: &'static str, title: &'static str, detail: impl Into<String>) -> ApiError {
    ApiError::client(400, slug, title, detail)
}

/// An AP id from the path or body (draft §2: the provider's "unique
/// identifier"), refused with its own problem type.
fn parse_id(id: &str) -> ApiResult<ProviderId> {
    ProviderId::parse(id).map_err(|e| {
        bad(
            "invalid-provider-id",
            "Invalid provider id",
            format!("AP id {:?}: {e}", id.chars().take(80).collect::<String>()),
        )
    })
}

fn check_name(name: &str) -> ApiResult<String> {
    let name = name.trim();
    if name.is_empty()
        || name.chars().count() > MAX_NAME_CHARS
        || name.chars().any(char::is_control)
    {
        return Err(bad(
            "invalid-name",
            "Invalid display name",
            format!("name must be 1-{MAX_NAME_CHARS} characters without control characters"),
        ));
    }
    Ok(name.to_string())
}

/// Merges a partial rate-parameter object over `base` and validates it.
fn merge_rate(base: &RateParams, patch: Option<Map<String, Value>>) -> ApiResult<RateParams> {
    let Some(patch) = patch else {
        return Ok(base.clone());
    };
    let mut merged = match serde_json::to_value(base) {
        Ok(Value::Object(m)) => m,
        _ => return Err(ApiError::Internal("rate params do not serialize".into())),
    };
    merged.extend(patch);
    let params: RateParams = serde_json::from_value(Value::Object(merged)).map_err(|e| {
        bad(
            "invalid-rate-params",
            "Invalid rate-limit parameters",
            format!("rate_params: {e}"),
        )
    })?;
    params.validate()?;
    Ok(params)
}

fn fingerprints(list: &[String], cfg: &GpConfig) -> ApiResult<Vec<CertFingerprint>> {
    let fps = normalize_fingerprints(list)?;
    // draft §11.3 MTLS: with it required, an AP without an enrolled
    // certificate could never obtain a token.
    if fps.is_empty() && cfg.require_mtls {
        return Err(bad(
            "certificate-fingerprints-required",
            "Client certificate fingerprints required",
            "this GP requires mutual TLS, so an AP needs at least one client-certificate SHA-256 fingerprint",
        ));
    }
    Ok(fps)
}

fn check_webhook(url: &str, cfg: &GpConfig) -> ApiResult<String> {
    // http:// to loopback only on a local GP (mTLS off): its stand-in AP
    // servers run on 127.0.0.1.
    validate_webhook_url(url, !cfg.require_mtls)?;
    Ok(url.to_string())
}

/// The public view of an AP (never a secret), with its current rate.
fn ap_json(r: &ApRecord) -> Value {
    let rate = allowed_rate(&r.rate_params, r.enrolled_users, r.strikes);
    json!({
        "id": r.id,
        "name": r.name,
        "webhook_url": r.webhook_url,
        "cert_fingerprints": r.cert_fingerprints,
        "bulk_allowed": r.bulk_allowed,
        "rate_params": r.rate_params,
        "rate": { "per_sec": rate.per_sec, "burst": rate.burst },
        "suspended": r.suspended,
        "suspended_reason": r.suspended_reason,
        "generation": r.generation,
        "webhook_generation": r.webhook_generation,
        "enrolled_users": r.enrolled_users,
        "strikes": r.strikes,
        "created_at_ms": r.created_at_ms,
        "updated_at_ms": r.updated_at_ms,
    })
}

/// 32 bytes from the platform CSPRNG (crypto.getRandomValues).
fn random32() -> ApiResult<[u8; 32]> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| ApiError::Internal(format!("getrandom: {e}")))?;
    Ok(b)
}

/// The credentials shown once: client id and secret, and the webhook
/// signing secret when it is new.
fn credentials_json(
    env: &Env,
    r: &ApRecord,
    client_secret: &str,
    with_webhook: bool,
) -> ApiResult<Value> {
    let mut c = json!({
        "client_id": r.id,
        "client_secret": client_secret,
        "token_endpoint": "/oauth/token",
    });
    if with_webhook {
        let key = derive_webhook_secret(
            &crate::edge::config::webhook_master_key(env)?,
            &r.id,
            r.webhook_generation,
        );
        c["webhook_secret"] = json!(format_webhook_secret(&key));
    }
    Ok(c)
}

use crate::edge::http::respond::json_status;

fn not_found(id: &str) -> ApiError {
    ApiError::client(
        404,
        "ap-not-found",
        "AP not found",
        format!("no AP {id} is enrolled on this GP"),
    )
}

async fn apply(env: &Env, op: RegistryOp, id: &str) -> ApiResult<StoredAp> {
    match Registry::new(env).apply(&op).await? {
        Ok(ap) => {
            crate::edge::rpc::registry::remember(&ap.record);
            Ok(ap)
        }
        Err(Missing::NotFound) => Err(not_found(id)),
        Err(Missing::Exists) => Err(ApiError::client(
            409,
            "ap-exists",
            "AP already enrolled",
            format!("AP {id} is already enrolled; use PATCH or rotate-secret"),
        )),
    }
}

/// `POST /admin/v1/aps`: enroll an AP; answers 201 with its credentials.
pub async fn enroll(mut req: Request, env: &Env, cfg: &GpConfig) -> ApiResult<Response> {
    crate::edge::auth::operator::check_admin(&req, env)?;
    let body: EnrollRequest = read_json(&mut req, false).await?;
    let id = parse_id(&body.id)?;
    let name = check_name(&body.name)?;
    let webhook_url = check_webhook(&body.webhook_url, cfg)?;
    let cert_fingerprints = fingerprints(&body.cert_fingerprints, cfg)?;
    let rate_params = merge_rate(&RateParams::default(), body.rate_params)?;
    // Fail before storing anything if the webhook key is not configured.
    crate::edge::config::webhook_master_key(env)?;
    let secret = format_client_secret(&random32()?);
    let now = crate::edge::clock::now_ms();
    let record = ApRecord {
        id: id.to_string(),
        name,
        webhook_url,
        cert_fingerprints,
        bulk_allowed: body.bulk_allowed,
        rate_params,
        suspended: false,
        suspended_reason: None,
        generation: 1,
        webhook_generation: 1,
        enrolled_users: 0,
        strikes: 0,
        created_at_ms: now,
        updated_at_ms: now,
    };
    let op = RegistryOp::Enroll {
        record,
        secret_hash: hex_encode(&hash_client_secret(&secret)),
    };
    let stored = apply(env, op, id.as_str()).await?;
    let body = json!({
        "ap": ap_json(&stored.record),
        "credentials": credentials_json(env, &stored.record, &secret, true)?,
    });
    let mut resp = json_status(&body, 201)?;
    resp.headers_mut()
        .set("Location", &format!("/admin/v1/aps/{id}"))
        .internal("header")?;
    Ok(resp)
}

/// `GET /admin/v1/aps`.
pub async fn list(req: Request, env: &Env) -> ApiResult<Response> {
    crate::edge::auth::operator::check_admin(&req, env)?;
    let aps = Registry::new(env).list().await?;
    json_status(
        &json!({ "aps": aps.iter().map(ap_json).collect::<Vec<_>>() }),
        200,
    )
}

/// `GET /admin/v1/aps/{id}`.
pub async fn show(req: Request, env: &Env, id: &str) -> ApiResult<Response> {
    crate::edge::auth::operator::check_admin(&req, env)?;
    let id = parse_id(id)?;
    let stored = apply(env, RegistryOp::Get { id: id.to_string() }, id.as_str()).await?;
    json_status(&json!({ "ap": ap_json(&stored.record) }), 200)
}

/// `PATCH /admin/v1/aps/{id}`: change name, webhook, certificates, bulk
/// permission or rate parameters. Changing certificates revokes the AP's
/// tokens (they may be bound to a removed certificate).
pub async fn update(mut req: Request, env: &Env, cfg: &GpConfig, id: &str) -> ApiResult<Response> {
    crate::edge::auth::operator::check_admin(&req, env)?;
    let id = parse_id(id)?;
    let body: UpdateRequest = read_json(&mut req, false).await?;
    let current = apply(env, RegistryOp::Get { id: id.to_string() }, id.as_str()).await?;
    let patch = ApPatch {
        name: body.name.as_deref().map(check_name).transpose()?,
        webhook_url: body
            .webhook_url
            .as_deref()
            .map(|u| check_webhook(u, cfg))
            .transpose()?,
        cert_fingerprints: body
            .cert_fingerprints
            .as_deref()
            .map(|l| fingerprints(l, cfg))
            .transpose()?,
        bulk_allowed: body.bulk_allowed,
        rate_params: match body.rate_params {
            None => None,
            some => Some(merge_rate(&current.record.rate_params, some)?),
        },
    };
    let op = RegistryOp::Update {
        id: id.to_string(),
        patch,
        now_ms: crate::edge::clock::now_ms(),
    };
    let stored = apply(env, op, id.as_str()).await?;
    json_status(&json!({ "ap": ap_json(&stored.record) }), 200)
}

/// `POST /admin/v1/aps/{id}/suspend`: no new tokens, existing ones refused
/// (see `auth` for how fast).
pub async fn suspend(mut req: Request, env: &Env, id: &str) -> ApiResult<Response> {
    crate::edge::auth::operator::check_admin(&req, env)?;
    let id = parse_id(id)?;
    let body: SuspendRequest = read_json(&mut req, true).await?;
    let reason = body
        .reason
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty());
    if reason
        .as_deref()
        .is_some_and(|r| r.chars().count() > MAX_REASON_CHARS || r.chars().any(char::is_control))
    {
        return Err(bad(
            "invalid-reason",
            "Invalid suspension reason",
            format!(
                "reason must be at most {MAX_REASON_CHARS} characters without control characters"
            ),
        ));
    }
    let op = RegistryOp::Suspend {
        id: id.to_string(),
        reason,
        now_ms: crate::edge::clock::now_ms(),
    };
    let stored = apply(env, op, id.as_str()).await?;
    json_status(&json!({ "ap": ap_json(&stored.record) }), 200)
}

/// `POST /admin/v1/aps/{id}/reinstate`.
pub async fn reinstate(mut req: Request, env: &Env, id: &str) -> ApiResult<Response> {
    crate::edge::auth::operator::check_admin(&req, env)?;
    let id = parse_id(id)?;
    let _: EmptyRequest = read_json(&mut req, true).await?;
    let op = RegistryOp::Reinstate {
        id: id.to_string(),
        now_ms: crate::edge::clock::now_ms(),
    };
    let stored = apply(env, op, id.as_str()).await?;
    json_status(&json!({ "ap": ap_json(&stored.record) }), 200)
}

/// `POST /admin/v1/aps/{id}/rotate-secret`: a new client secret (and, on
/// request, a new webhook secret), shown once; the old secret and every
/// token issued so far stop working.
pub async fn rotate(mut req: Request, env: &Env, id: &str) -> ApiResult<Response> {
    crate::edge::auth::operator::check_admin(&req, env)?;
    let id = parse_id(id)?;
    let body: RotateRequest = read_json(&mut req, true).await?;
    if body.webhook_secret {
        crate::edge::config::webhook_master_key(env)?;
    }
    let secret = format_client_secret(&random32()?);
    let op = RegistryOp::Rotate {
        id: id.to_string(),
        secret_hash: hex_encode(&hash_client_secret(&secret)),
        rotate_webhook: body.webhook_secret,
        now_ms: crate::edge::clock::now_ms(),
    };
    let stored = apply(env, op, id.as_str()).await?;
    json_status(
        &json!({
            "ap": ap_json(&stored.record),
            "credentials": credentials_json(env, &stored.record, &secret, body.webhook_secret)?,
        }),
        200,
    )
}
