//! The AP's own view: `GET /v1/me`.

use crate::core::ratelimit::allowed_rate;
use crate::edge::auth::ap as auth;
use crate::edge::config::GpConfig;
use crate::edge::http::error::ApiResult;
use crate::edge::http::request::Request;
use crate::edge::http::respond::json_ok;
use serde_json::json;
use worker::{Env, Response};

/// `GET /v1/me`: the authenticated AP as the GP sees it. The first client
/// API route; it proves the whole chain (token, certificate binding,
/// registry state) and shows the AP its current rate limit (draft §11.2:
/// "rate limited based on the number of enrolled users").
pub async fn me(req: &Request, env: &Env, cfg: &GpConfig) -> ApiResult<Response> {
    let ap = auth::authenticate(req, env, cfg).await?;
    let r = &ap.record;
    let rate = allowed_rate(&r.rate_params, r.enrolled_users, r.strikes);
    json_ok(&json!({
        "id": r.id,
        "name": r.name,
        "bulk_allowed": r.bulk_allowed,
        "enrolled_users": r.enrolled_users,
        "strikes": r.strikes,
        "rate": { "per_sec": rate.per_sec, "burst": rate.burst },
        "token": {
            "expires_at": ap.claims.expires_at,
            "generation": ap.claims.generation,
            "cnf": ap.claims.cnf.map(|f| json!({ "x5t#S256": f.to_x5t_s256() })),
        },
        "mtls": {
            "required": cfg.require_mtls,
            "certificate_sha256": ap.cert.map(|f| f.to_hex()),
        },
    }))
}
