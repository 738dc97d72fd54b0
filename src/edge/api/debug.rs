//! Test-only routes (`DEBUG_ROUTES`, and only for requests to a loopback
//! host: `http::routes`): isolate counters, direct filter inserts, the
//! peers' filter copies, the clock, a deliberate panic.
use crate::core::Sii;
use crate::edge::http::body::read_capped;
use crate::edge::http::error::OrInternal;
use crate::edge::routing::copies::{self, Verdict};
use crate::edge::routing::kv;
use crate::edge::rpc::filter::FilterClient;
use crate::edge::rpc::routing::{RtClient, RtOp, RtReply};

use crate::edge::config::GpConfig;
use crate::edge::http::error::{ApiError, ApiResult};
use crate::edge::http::request::Request;
use serde::Deserialize;
use serde_json::json;
use worker::{Env, Response};

/// `GET /__debug/query-stats`: this isolate's query counters.
pub fn query_stats() -> ApiResult<Response> {
    let s = crate::edge::stats::snapshot();
    crate::edge::http::respond::json_ok(&json!(s))
}

/// `POST /__debug/filter/insert` `{"siis": [...]}`: inserts SIIs into the
/// own filter without the mapping flow (tests of the routing protocol).
pub async fn filter_insert(mut req: Request, env: &Env) -> ApiResult<Response> {
    let body = read_capped(&mut req, 1 << 20).await?;
    #[derive(Deserialize)]
    struct Body {
        siis: Vec<String>,
    }
    let b: Body = serde_json::from_slice(&body)
        .map_err(|e| ApiError::client(400, "invalid-json", "Invalid JSON body", e.to_string()))?;
    let mut digests = Vec::with_capacity(b.siis.len());
    for s in &b.siis {
        digests.push(Sii::parse(s)?.hash());
    }
    let additions = FilterClient::new(env).insert(&digests).await?;
    crate::edge::http::respond::json_ok(&json!({ "additions": additions }))
}

/// `POST /__debug/filter/fill` `{"seed", "from", "count"}`: inserts
/// `count` pseudo-random digests into the own filter (the benchmark's
/// large filters; up to 10M per call).
pub async fn filter_fill(mut req: Request, env: &Env) -> ApiResult<Response> {
    let body = read_capped(&mut req, 4096).await?;
    #[derive(Deserialize)]
    struct Body {
        seed: String,
        #[serde(default)]
        from: u64,
        count: u64,
    }
    let b: Body = serde_json::from_slice(&body)
        .map_err(|e| ApiError::client(400, "invalid-json", "Invalid JSON body", e.to_string()))?;
    if b.count > 10_000_000 {
        return Err(ApiError::client(
            400,
            "invalid-json",
            "Invalid JSON body",
            "count is at most 10,000,000 per call",
        ));
    }
    let info = FilterClient::new(env)
        .fill(&b.seed, b.from, b.count)
        .await?;
    crate::edge::http::respond::json_ok(&info)
}

/// `GET /__debug/peer-filters[?sii=…]`: this GP's copy of each peer's
/// filter (status, version, cursor, exact bits) and, for an SII, what the
/// routing table says (`contains`: true may hold, false certainly not,
/// null no verdict).
pub async fn peer_filters(req: Request, env: &Env, cfg: &GpConfig) -> ApiResult<Response> {
    let url = req.url().internal("url")?;
    let sii = match url.query_pairs().find(|(k, _)| k == "sii") {
        Some((_, v)) => Some(Sii::parse(&v)?),
        None => None,
    };
    let dir = copies::directory(env, cfg).await?;
    let verdicts = match &sii {
        Some(s) => Some(copies::verdicts(env, cfg, &s.hash()).await),
        None => None,
    };
    let out: Vec<_> = dir
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let v = verdicts.as_ref().and_then(|v| v.get(i));
            json!({
                "peer": d.peer,
                "status": d.status,
                "version": d.version,
                "seq": d.seq,
                "bits_set": d.bits_set,
                "updated_ms": d.updated_ms,
                "errors": d.errors,
                "last_error": d.last_error,
                "contains": match v {
                    Some(Verdict::Maybe) => json!(true),
                    Some(Verdict::No) => json!(false),
                    _ => serde_json::Value::Null,
                },
                "verdict": v.map(|v| format!("{v:?}")),
            })
        })
        .collect();
    crate::edge::http::respond::json_ok(&json!({ "gp": cfg.id, "peers": out }))
}

/// `GET /__debug/routing`: this isolate's routing view and KV counters,
/// and each routing shard's (sections, dirty partitions, its isolate's
/// KV counters: the writes per key per second asserted by the tests).
pub async fn routing(env: &Env, cfg: &GpConfig) -> ApiResult<Response> {
    let mut shards = Vec::new();
    for i in 0..cfg.routing_shards {
        match RtClient::new(env, cfg, i).call(RtOp::Stats).await? {
            RtReply::Stats { stats } => shards.push(stats),
            other => {
                return Err(ApiError::Internal(format!(
                    "routing shard {i} answered stats with {other:?}"
                )))
            }
        }
    }
    crate::edge::http::respond::json_ok(&json!({
        "view": copies::stats(),
        "kv": kv::stats(),
        "shards": shards,
    }))
}

/// The stages of a local hit that `POST /__debug/breakdown` can repeat.
const STAGES: &[(&str, &str)] = &[
    ("routing", "routing (route table)"),
    ("config", "configuration (per-isolate cache)"),
    (
        "config_uncached",
        "configuration read and validated from env (every request, before)",
    ),
    ("token", "auth: token MAC and claims"),
    (
        "auth",
        "auth: whole (header, token, mTLS binding, AP cache)",
    ),
    ("lease", "rate-limit lease (local spend)"),
    ("body", "body JSON parse"),
    ("sii", "SII normalization"),
    ("hash", "SII hashing and shard choice"),
    (
        "peers",
        "routing table (one partition, warm: isolate memory)",
    ),
    (
        "shard",
        "shard DO call with the kept statement (both sides: worker and object)",
    ),
    (
        "shard_plain",
        "shard DO call without statements (both sides)",
    ),
    (
        "statement",
        "mapping statement signature (Ed25519; a nonce's, or a kept one's renewal)",
    ),
    ("answer", "answer document (JSON tree and text)"),
    (
        "response",
        "response wrapping (JSON response, headers, to JS)",
    ),
    (
        "request",
        "a fresh request to hand the handler (the handler stage's set-up)",
    ),
    (
        "body_read",
        "a fresh request, its body read (arrayBuffer) and parsed",
    ),
    ("handler", "whole query handler (on a fresh request)"),
];

/// `POST /__debug/breakdown?stage=S&n=N` with a query's headers and body:
/// runs one stage of a local hit N times (0: only the set-up) with the product's own functions
/// against this GP's real bindings (the shard call is a real Durable
/// Object round trip) and answers the wall time. The benchmark
/// (`scripts/bench-query-wrk.sh`) reads the GP process's CPU time around
/// each call, so a stage's cost is CPU per call, comparable with the
/// floors' CPU per request, whatever else the machine runs; the runtime and
/// the workers-rs entry, which cannot be repeated from inside a request,
/// are what the floors measure. Without `stage`: the stages.
/// `route` resolves the query's route once (the route table is the router's).
pub async fn breakdown(
    mut req: Request,
    env: &Env,
    cfg: &GpConfig,
    route: &dyn Fn(),
) -> ApiResult<Response> {
    use crate::core::query::{Query, QueryBody};
    use crate::edge::auth::ap::{authenticate, authorization};
    use crate::edge::http::body::parse_json;
    use crate::edge::routing::fanout;
    use std::hint::black_box;
    let url = req.url().internal("url")?;
    let param = |k: &str| {
        url.query_pairs()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.into_owned())
    };
    let Some(stage) = param("stage") else {
        let list: Vec<_> = STAGES
            .iter()
            .map(|(k, d)| json!({ "stage": k, "what": d }))
            .collect();
        return crate::edge::http::respond::json_ok(&json!({ "stages": list }));
    };
    let n: u32 = param("n")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .min(10_000_000);
    let bytes = read_capped(&mut req, 1 << 16).await?;
    let query = parse_json::<QueryBody>(&bytes, true)?.into_query()?;
    let sii = query.sii.clone();
    let ap = authenticate(&req, env, cfg).await?;
    let token = authorization(&req, "Bearer").unwrap_or_default();
    let keys = crate::edge::config::token_keys(env)?;
    let plain = Query::plain(sii.clone());
    let held = crate::edge::rpc::shard::Shard::of(env, cfg, &sii)
        .lookup(&sii, false, false)
        .await?;
    let result = fanout::resolve(env, cfg, &query).await?;
    let answer = || crate::core::query::answer(&query, &result, &cfg.id);
    let query_url = format!(
        "{}://{}/v1/query",
        url.scheme(),
        url.host_str().unwrap_or("gp")
    );
    let auth_header = format!("Bearer {token}");
    let body_text = String::from_utf8_lossy(&bytes).into_owned();
    // A request as the runtime hands the worker one: the query's URL,
    // headers and body.
    let body_len = body_text.len().to_string();
    let fresh_request = || {
        let mut init = worker::RequestInit::new();
        init.with_method(worker::Method::Post)
            .with_body(Some(wasm_bindgen::JsValue::from_str(&body_text)));
        let headers = worker::Headers::new();
        let _ = headers.set("Authorization", &auth_header);
        let _ = headers.set("Content-Type", "application/json");
        // As wrk and every HTTP/1.1 client send it (the body is then read
        // in one piece, `body::read_capped`).
        let _ = headers.set("Content-Length", &body_len);
        init.with_headers(headers);
        worker::Request::new_with_init(&query_url, &init)
            .map(|r| Request::from(Clone::clone(r.inner())))
    };
    let t0 = crate::edge::clock::now_ms();
    for _ in 0..n {
        match stage.as_str() {
            "routing" => route(),
            "config" => {
                let _ = black_box(GpConfig::cached(env));
            }
            "config_uncached" => {
                let _ = black_box(GpConfig::from_env(env));
            }
            "token" => {
                let _ = black_box(crate::core::token::verify(
                    &keys,
                    &token,
                    crate::edge::clock::now_ms() / 1000,
                ));
            }
            "auth" => {
                let _ = black_box(authenticate(&req, env, cfg).await);
            }
            "lease" => {
                let _ = black_box(crate::edge::ratelimit::admit(env, &ap).await);
            }
            "body" => {
                let _ = black_box(parse_json::<QueryBody>(&bytes, true));
            }
            "sii" => {
                let _ = black_box(Sii::parse(sii.as_str()));
            }
            "hash" => {
                let _ = black_box(crate::core::shard::shard_of(&sii, cfg.mapping_shards));
            }
            "peers" => {
                let _ = black_box(fanout::matching_peers(env, cfg, &sii).await);
            }
            "shard" => {
                let _ = black_box(fanout::lookup(env, cfg, &query).await);
            }
            "shard_plain" => {
                let _ = black_box(fanout::lookup(env, cfg, &plain).await);
            }
            "statement" => {
                if let Some(m) = held.mappings.first() {
                    let _ = black_box(crate::edge::statements::sign(
                        env,
                        cfg,
                        &sii,
                        m,
                        query.nonce.as_deref(),
                    ));
                }
            }
            "answer" => {
                let _ = black_box(serde_json::to_vec(&answer()));
            }
            "response" => {
                if let Ok(mut resp) = crate::edge::http::respond::json_ok(&answer()) {
                    for (k, v) in [("RateLimit-Limit", "1"), ("RateLimit-Remaining", "1")] {
                        let _ = resp.headers_mut().set(k, v);
                    }
                    let _ = black_box(crate::edge::http::respond::into_js(resp));
                }
            }
            "request" => {
                let _ = black_box(fresh_request());
            }
            "body_read" => {
                if let Ok(mut r) = fresh_request() {
                    let _ = black_box(
                        crate::edge::http::body::read_json_allow_array::<QueryBody>(&mut r).await,
                    );
                }
            }
            "handler" => {
                if let Ok(r) = fresh_request() {
                    let _ = black_box(crate::edge::api::ap::query::query(r, env, cfg).await);
                }
            }
            other => {
                return Err(ApiError::client(
                    400,
                    "invalid-request",
                    "Unknown stage",
                    format!("no stage {other:?}; GET the stages without ?stage="),
                ))
            }
        }
    }
    let wall_ms = crate::edge::clock::now_ms() - t0;
    crate::edge::http::respond::json_ok(&json!({ "stage": stage, "n": n, "wall_ms": wall_ms }))
}

/// `POST /__debug/clock` `{"advance_ms": n}`: moves this isolate's clock
/// ahead (`clock::advance`), so a test can let a code expire or a filter
/// version come due with the settings production runs with.
pub async fn clock(mut req: Request) -> ApiResult<Response> {
    let body = read_capped(&mut req, 1 << 10).await?;
    #[derive(Deserialize)]
    struct Body {
        advance_ms: u64,
    }
    let b: Body = serde_json::from_slice(&body)
        .map_err(|e| ApiError::client(400, "invalid-json", "Invalid JSON body", e.to_string()))?;
    let now_ms = crate::edge::clock::advance(b.advance_ms);
    crate::edge::http::respond::json_ok(&json!({ "now_ms": now_ms }))
}

/// `POST /__debug/ap-items` `{"ap", "items": [ApItem], "times": n}`: hands
/// the same items to the AP's object `n` times at once, as a shard's
/// outbox does when it redelivers before the first hand-over answered
/// (each item must still be applied once).
pub async fn ap_items(mut req: Request, env: &Env) -> ApiResult<Response> {
    let body = read_capped(&mut req, 1 << 16).await?;
    #[derive(Deserialize)]
    struct Body {
        ap: String,
        items: Vec<crate::edge::rpc::ap::ApItem>,
        times: u32,
    }
    let b: Body = serde_json::from_slice(&body)
        .map_err(|e| ApiError::client(400, "invalid-json", "Invalid JSON body", e.to_string()))?;
    let client = crate::edge::rpc::ap::ApClient::new(env, &b.ap);
    let takes = (0..b.times.clamp(1, 16)).map(|_| client.take(&b.ap, b.items.clone()));
    let results = futures_util::future::join_all(takes).await;
    let failed = results.iter().filter(|r| r.is_err()).count();
    crate::edge::http::respond::json_ok(&json!({ "takes": results.len(), "failed": failed }))
}

/// `GET /__debug/filter/subscribers`: the own filter's subscribers (peer,
/// version, cursor, failures), to see what a subscription or the cron did.
pub async fn filter_subscribers(env: &Env) -> ApiResult<Response> {
    FilterClient::new(env)
        .request(worker::Method::Get, "/subscribers", None)
        .await
}

/// `POST /__debug/faults` `{"binding", "op", "mode": "lost"|"lost_reply"|"garbled",
/// "times"}`: fails the next calls of that Durable Object operation made
/// from this isolate (`rpc::inject`), so a test can show what a caller
/// does when an object call fails after, or before, it took effect.
pub async fn faults(mut req: Request) -> ApiResult<Response> {
    let body = read_capped(&mut req, 1 << 10).await?;
    let fault: crate::edge::rpc::Fault = serde_json::from_slice(&body)
        .map_err(|e| ApiError::client(400, "invalid-json", "Invalid JSON body", e.to_string()))?;
    crate::edge::rpc::inject(fault.clone());
    crate::edge::http::respond::json_ok(&json!(fault))
}
