//! Test-only routes (`DEBUG_ROUTES`, and only for requests to a loopback
//! host: `http::routes`): isolate counters, direct filter inserts, the
//! peers' filter copies, the clock, a deliberate panic.
use crate::core::Sii;
use crate::edge::http::body::read_capped;
use crate::edge::http::error::OrInternal;
use crate::edge::routing::copies::peer_filter;
use crate::edge::rpc::filter::FilterClient;

use crate::edge::config::GpConfig;
use crate::edge::http::error::{ApiError, ApiResult};
use serde::Deserialize;
use serde_json::json;
use worker::{Env, Request, Response};

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

/// `GET /__debug/peer-filters[?sii=…]`: this GP's copy of each peer's
/// filter (version, cursor, bits) and whether it matches the SII.
pub async fn peer_filters(req: Request, env: &Env, cfg: &GpConfig) -> ApiResult<Response> {
    let url = req.url().internal("url")?;
    let sii = match url.query_pairs().find(|(k, _)| k == "sii") {
        Some((_, v)) => Some(Sii::parse(&v)?),
        None => None,
    };
    let mut out = Vec::new();
    for p in &cfg.peers {
        let entry = match peer_filter(env, &p.id).await {
            Ok(Some(c)) => json!({
                "peer": p.id,
                "version": c.meta.version,
                "seq": c.meta.seq,
                "bits_set": c.filter.count_ones(),
                "updated_ms": c.meta.updated_ms,
                "contains": sii.as_ref().map(|s| c.filter.contains(&s.hash())),
            }),
            Ok(None) => json!({ "peer": p.id, "version": null }),
            Err(e) => json!({ "peer": p.id, "error": format!("{e:?}") }),
        };
        out.push(entry);
    }
    crate::edge::http::respond::json_ok(&json!({ "gp": cfg.id, "peers": out }))
}

/// One stage of the query path and its cost in this isolate.
#[derive(serde::Serialize)]
struct Stage {
    stage: &'static str,
    /// Median over 3 rounds of the wall time per call, in µs.
    us: f64,
    /// Calls per round.
    calls: u32,
}

/// Median µs per call of `f` over 3 rounds; each round repeats it until
/// it took at least [`ROUND_MS`] (`Date.now()` counts whole ms; local
/// workerd advances it during computation, production does not).
async fn time<F, Fut>(mut f: F) -> (f64, u32)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    const ROUND_MS: u64 = 40;
    let mut n = 1u32;
    // Size the round: double until one takes ROUND_MS (or n is large).
    loop {
        let t0 = crate::edge::clock::now_ms();
        for _ in 0..n {
            f().await;
        }
        if crate::edge::clock::now_ms() - t0 >= ROUND_MS || n >= 1 << 20 {
            break;
        }
        n *= 2;
    }
    let mut rounds = Vec::with_capacity(3);
    for _ in 0..3 {
        let t0 = crate::edge::clock::now_ms();
        for _ in 0..n {
            f().await;
        }
        rounds.push((crate::edge::clock::now_ms() - t0) as f64 * 1000.0 / f64::from(n));
    }
    rounds.sort_by(f64::total_cmp);
    (rounds[1], n)
}

/// `POST /__debug/breakdown` with a query's headers and body: where a
/// local hit's time goes inside the worker, stage by stage, each stage run
/// repeatedly with the product's own functions against this GP's real
/// bindings (the shard call is a real Durable Object round trip, so it
/// includes the object's work). The benchmark (`scripts/bench-query-wrk.sh`)
/// prints it beside the floors' CPU per request, which cover what cannot
/// be repeated from inside a request: the runtime and the workers-rs entry.
/// `route` resolves the query's route once (the route table is the router's).
pub async fn breakdown(
    mut req: Request,
    env: &Env,
    cfg: &GpConfig,
    route: &dyn Fn(),
) -> ApiResult<Response> {
    use crate::core::query::QueryBody;
    use crate::edge::auth::ap::authenticate;
    use crate::edge::http::body::parse_json;
    use crate::edge::routing::fanout;
    let url = req.url().internal("url")?;
    let bytes = read_capped(&mut req, 1 << 16).await?;
    let query = parse_json::<QueryBody>(&bytes, true)?.into_query()?;
    let sii = query.sii.clone();
    let raw_sii = sii.as_str().to_owned();
    let ap = authenticate(&req, env, cfg).await?;
    let token = crate::edge::auth::ap::authorization(&req, "Bearer").unwrap_or_default();
    let keys = crate::edge::config::token_keys(env)?;
    let mut stages = Vec::new();
    let mut push = |stage, (us, calls)| stages.push(Stage { stage, us, calls });

    push("routing (route table)", time(|| async { route() }).await);
    push(
        "config (per-isolate cache)",
        time(|| async {
            let _ = GpConfig::cached(env);
        })
        .await,
    );
    push(
        "config (read and validated from env: every request, before)",
        time(|| async {
            let _ = GpConfig::from_env(env);
        })
        .await,
    );
    push(
        "auth: token MAC and claims",
        time(|| async {
            let _ = crate::core::token::verify(&keys, &token, crate::edge::clock::now_ms() / 1000);
        })
        .await,
    );
    push(
        "auth: whole (header, token, mTLS binding, AP cache)",
        time(|| async {
            let _ = authenticate(&req, env, cfg).await;
        })
        .await,
    );
    push(
        "rate-limit lease (local spend)",
        time(|| async {
            let _ = crate::edge::ratelimit::admit(env, &ap).await;
        })
        .await,
    );
    push(
        "body JSON parse",
        time(|| async {
            let _ = parse_json::<QueryBody>(&bytes, true);
        })
        .await,
    );
    push(
        "SII normalization",
        time(|| async {
            let _ = Sii::parse(&raw_sii);
        })
        .await,
    );
    push(
        "SII hashing and shard choice",
        time(|| async {
            let _ = crate::core::shard::shard_of(&sii, cfg.mapping_shards);
        })
        .await,
    );
    push(
        "peer filter check (isolate memory)",
        time(|| async {
            let _ = fanout::matching_peers(env, cfg, &sii).await;
        })
        .await,
    );
    let plain = crate::core::query::Query::plain(sii.clone());
    push(
        "shard DO call (round trip with the object's work)",
        time(|| async {
            let _ = fanout::lookup(env, cfg, &plain).await;
        })
        .await,
    );
    let held = crate::edge::rpc::shard::Shard::of(env, cfg, &sii)
        .lookup(&sii, false)
        .await?;
    if let Some(m) = held.mappings.first() {
        push(
            "mapping statement (Ed25519 signature)",
            time(|| async {
                let _ = crate::edge::statements::sign(env, cfg, &sii, m, query.nonce.as_deref());
            })
            .await,
        );
    }
    let result = fanout::resolve(env, cfg, &query).await?;
    let answer = || crate::edge::api::ap::query::answer(&query, &result, &cfg.id);
    push(
        "answer document (JSON tree and text)",
        time(|| async {
            let _ = serde_json::to_vec(&answer());
        })
        .await,
    );
    push(
        "response wrapping (JSON response, headers, to JS)",
        time(|| async {
            if let Ok(mut resp) = crate::edge::http::respond::json_ok(&answer()) {
                for (k, v) in [("RateLimit-Limit", "1"), ("RateLimit-Remaining", "1")] {
                    let _ = resp.headers_mut().set(k, v);
                }
                let _ = web_sys::Response::from(resp);
            }
        })
        .await,
    );
    // The whole handler, on a fresh request each time (building that
    // request is included; the runtime's entry and the workers-rs
    // conversions are not).
    let auth_header = format!("Bearer {token}");
    let body_text = String::from_utf8_lossy(&bytes).into_owned();
    let query_url = format!(
        "{}://{}/v1/query",
        url.scheme(),
        url.host_str().unwrap_or("gp")
    );
    push(
        "whole query handler (fresh request each time)",
        time(|| async {
            let mut init = worker::RequestInit::new();
            init.with_method(worker::Method::Post)
                .with_body(Some(wasm_bindgen::JsValue::from_str(&body_text)));
            let headers = worker::Headers::new();
            let _ = headers.set("Authorization", &auth_header);
            let _ = headers.set("Content-Type", "application/json");
            init.with_headers(headers);
            if let Ok(r) = Request::new_with_init(&query_url, &init) {
                let _ = crate::edge::api::ap::query::query(r, env, cfg).await;
            }
        })
        .await,
    );
    crate::edge::http::respond::json_ok(&json!({ "gp": cfg.id, "stages": stages }))
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

/// `POST /__debug/faults` `{"binding", "op", "mode": "lost"|"lost_reply",
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
