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
/// How long an isolate answers `/v1/gp`'s routing section from the route
/// table's answer it read last: at most one route-table request a second
/// per isolate, as the query path's overlay poll (ARCHITECTURE.md,
/// "Routing table").
const ROUTE_INFO_CACHE_MS: u64 = 1_000;

thread_local! {
    static FILTER_INFO: RefCell<Option<(u64, Value)>> = const { RefCell::new(None) };
    static PEER_REPORT: RefCell<Option<(u64, Value)>> = const { RefCell::new(None) };
    static ROUTE_INFO: RefCell<Option<(u64, Value)>> = const { RefCell::new(None) };
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
/// [`GP_INFO_CACHE_MS`] per isolate), peers and routing table: each
/// peer's copy (status, version, cursor, age, errors; read at most once
/// per [`ROUTE_INFO_CACHE_MS`]) and the false fan-out a query can expect
/// (ARCHITECTURE.md, "Routing table"; issue 13 items 3 and 4).
pub async fn gp_info(env: &Env, cfg: &GpConfig) -> ApiResult<Response> {
    let now = crate::edge::clock::now_ms();
    let mut filter = match fresh(&FILTER_INFO, now, GP_INFO_CACHE_MS) {
        Some(v) => v,
        None => {
            crate::edge::stats::count(|s| s.filter_info_reads += 1);
            let v = FilterClient::new(env).info().await?;
            FILTER_INFO.with(|c| *c.borrow_mut() = Some((now, v.clone())));
            v
        }
    };
    if let Some(o) = filter.as_object_mut() {
        o.insert("fp_target".into(), json!(cfg.filter_fp_rate));
        o.insert(
            "fp_target_from".into(),
            json!(if cfg.filter_fp_rate_set {
                "FILTER_FP_RATE"
            } else {
                "federation size"
            }),
        );
    }
    let routing = match fresh(&ROUTE_INFO, now, ROUTE_INFO_CACHE_MS) {
        Some(v) => v,
        None => {
            let v = routing_info(env, cfg, now).await?;
            ROUTE_INFO.with(|c| *c.borrow_mut() = Some((now, v.clone())));
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
        "routing": routing,
        // What peers put into their PEERS entry for this GP (its
        // GP-to-GP requests are signed with the matching seed).
        "public_key": Signer::from_env(env)
            .ok()
            .map(|s| s.public_key_b64()),
    }))
}

/// The routing section of `/v1/gp`, read now from the route table (one
/// Durable Object request).
async fn routing_info(env: &Env, cfg: &GpConfig, now: u64) -> ApiResult<Value> {
    crate::edge::stats::count(|s| s.route_info_reads += 1);
    let dir = crate::edge::routing::copies::directory(env, cfg).await?;
    // A peer with a copy is asked for nothing at its fp rate; one without
    // is asked every time.
    let expected: f64 = dir
        .iter()
        .map(|d| match (d.version, d.estimated_fp_rate) {
            (Some(_), Some(fp)) => fp,
            _ => 1.0,
        })
        .sum();
    let peers: Vec<_> = dir
        .iter()
        .map(|d| {
            json!({
                "id": d.peer,
                "status": d.status,
                "version": d.version,
                "seq": d.seq,
                "bits_set": d.bits_set,
                "estimated_fp_rate": d.estimated_fp_rate,
                "age_ms": (d.updated_ms > 0).then(|| now.saturating_sub(d.updated_ms)),
                "activated_ms": d.activated_ms,
                "errors": d.errors,
                "last_error": d.last_error,
                "sync": d.sync,
            })
        })
        .collect();
    let (value_bytes, capacity) = crate::edge::routing::copies::capacity(cfg, &dir);
    Ok(json!({
        "value_bytes_estimate": value_bytes,
        "capacity": capacity,
        "partition_bits": cfg.routing_partition_bits,
        "shards": cfg.routing_shards,
        "cache_mb": cfg.routing_cache_mb,
        "federation_gps": cfg.federation_gps,
        "false_fanout_target": cfg.false_fanout_target,
        "expected_false_fanout": expected,
        "peers": peers,
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
