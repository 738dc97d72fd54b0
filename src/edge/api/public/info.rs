//! Public pages of the GP: health, what this GP is (`GET /v1/gp`), how its
//! peers look from here (`GET /v1/peers`) and the API document.
use crate::edge::rpc::filter::FilterClient;

use crate::edge::config::GpConfig;
use crate::edge::http::error::{ApiResult, OrInternal};
use crate::edge::http::respond::json_ok;
use crate::edge::outbound::{peer::Signer, probe};
use serde_json::json;
use worker::{Env, Response};

/// The OpenAPI 3.1 description of the client and admin API.
const OPENAPI_JSON: &str = include_str!("../../http/openapi.json");

/// `GET /healthz`.
pub fn healthz(cfg: &GpConfig) -> ApiResult<Response> {
    json_ok(&json!({ "status": "ok", "gp": cfg.id }))
}

/// `GET /v1/gp`: this GP's identity, filter and peers.
pub async fn gp_info(env: &Env, cfg: &GpConfig) -> ApiResult<Response> {
    let filter = FilterClient::new(env).info().await?;
    json_ok(&json!({
        "id": cfg.id,
        "name": cfg.name,
        "software": {
            "name": env!("CARGO_PKG_NAME"),
            "version": env!("CARGO_PKG_VERSION"),
        },
        "protocol": "draft-rosenberg-mimi-glados-00",
        "filter": filter,
        "peers": cfg.peers.iter().map(|p| &p.id).collect::<Vec<_>>(),
        // What peers put into their PEERS entry for this GP (its
        // GP-to-GP requests are signed with the matching seed).
        "public_key": Signer::from_env(env)
            .ok()
            .map(|s| s.public_key_b64()),
    }))
}

/// `GET /v1/peers`: each configured peer, probed.
pub async fn peers(cfg: &GpConfig) -> ApiResult<Response> {
    let report = probe::probe_all(cfg).await;
    json_ok(&json!({ "gp": cfg.id, "peers": report }))
}

/// `GET /openapi.json`.
pub fn openapi() -> ApiResult<Response> {
    let mut resp = Response::ok(OPENAPI_JSON).internal("openapi")?;
    resp.headers_mut()
        .set("Content-Type", "application/json")
        .internal("set header")?;
    Ok(resp)
}
