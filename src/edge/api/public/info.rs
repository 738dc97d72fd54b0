//! Public pages of the GP: health, what this GP is (`GET /v1/gp`), how its
//! peers look from here (`GET /v1/peers`) and the API document.
use crate::edge::rpc::filter::FilterClient;

use crate::edge::config::GpConfig;
use crate::edge::http::error::{ApiResult, OrInternal};
use crate::edge::http::respond::json_ok;
use crate::edge::outbound::{peer::Signer, probe};
use serde_json::{json, Value};
use std::cell::RefCell;
use worker::{Env, Response};

/// How long an isolate answers `GET /v1/gp` from the filter facts it read
/// last, and `GET /v1/peers` from its last probe round. Both are open to
/// anyone: without this every anonymous request cost a filter-object read
/// or a fan-out to every peer (issue 14 item 9).
const GP_INFO_CACHE_MS: u64 = 10_000;
const PEERS_CACHE_MS: u64 = 30_000;

thread_local! {
    static FILTER_INFO: RefCell<Option<(u64, Value)>> = const { RefCell::new(None) };
    static PEER_REPORT: RefCell<Option<(u64, Value)>> = const { RefCell::new(None) };
}

/// The cached value if younger than `max_age_ms`.
fn fresh(
    cell: &'static std::thread::LocalKey<RefCell<Option<(u64, Value)>>>,
    now: u64,
    max_age_ms: u64,
) -> Option<Value> {
    cell.with(|c| {
        c.borrow()
            .as_ref()
            .filter(|(at, _)| now.saturating_sub(*at) < max_age_ms)
            .map(|(_, v)| v.clone())
    })
}

/// The OpenAPI 3.1 description of the client and admin API.
const OPENAPI_JSON: &str = include_str!("../../http/openapi.json");

/// `GET /healthz`.
pub fn healthz(cfg: &GpConfig) -> ApiResult<Response> {
    json_ok(&json!({ "status": "ok", "gp": cfg.id }))
}

/// `GET /v1/gp`: this GP's identity, filter (read at most once per
/// [`GP_INFO_CACHE_MS`] per isolate) and peers.
pub async fn gp_info(env: &Env, cfg: &GpConfig) -> ApiResult<Response> {
    let now = crate::edge::clock::now_ms();
    let filter = match fresh(&FILTER_INFO, now, GP_INFO_CACHE_MS) {
        Some(v) => v,
        None => {
            crate::edge::stats::count(|s| s.filter_info_reads += 1);
            let v = FilterClient::new(env).info().await?;
            FILTER_INFO.with(|c| *c.borrow_mut() = Some((now, v.clone())));
            v
        }
    };
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

/// Drops this isolate's cached filter facts (after the operator's rebuild).
pub fn forget_filter_info() {
    FILTER_INFO.with(|c| *c.borrow_mut() = None);
}

/// `GET /v1/peers`: each configured peer, probed (at most once per
/// [`PEERS_CACHE_MS`] per isolate).
pub async fn peers(cfg: &GpConfig) -> ApiResult<Response> {
    let now = crate::edge::clock::now_ms();
    let report = match fresh(&PEER_REPORT, now, PEERS_CACHE_MS) {
        Some(v) => v,
        None => {
            crate::edge::stats::count(|s| s.peer_probe_rounds += 1);
            let v = json!(probe::probe_all(cfg).await);
            PEER_REPORT.with(|c| *c.borrow_mut() = Some((now, v.clone())));
            v
        }
    };
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
