//! The mapping query (draft §8.1, Figure 2) and its per-AP rate limit
//! (draft §8.1, §11.2).
//!
//! `POST /v1/query {"sii": "..."}` from an authenticated AP: the SII goes
//! in the body, not the URL, so phone numbers and addresses stay out of
//! access logs and caches. The home GP
//! 1. spends one token of the AP's query rate (isolate-local lease; the
//!    AP's `ApObject` is asked only when the lease runs out),
//! 2. reads the one routing partition the SII falls in (every peer's
//!    section of it; one KV read when cold, none when warm) — draft §8.1:
//!    "it next examines the routing tables",
//! 3. asks its own shard (one DO request) and, at the same time, exactly
//!    the peers whose filters match, signed, each with a timeout,
//! 4. returns the most recent mapping (`core::query::combine`).
//!
//! `POST /peer/v1/query` is the remote side: signed peer requests only,
//! answered from local mappings only (draft §8.1: remote GPs "consult only
//! their local mappings when receiving this mapping query").
//!
//! Cost per query (ARCHITECTURE.md, "Cost budget"): local hit or miss without a
//! filter match = 1 DO request, 0 subrequests; remote hit = + 1 signed
//! subrequest per matching peer; the rate limiter adds one DO request per
//! lease (about a second's worth of the AP's rate), not per query.
use crate::edge::routing::fanout::resolve;
use crate::edge::stats;

use crate::core::query::{answer, QueryBody};
use crate::edge::auth::ap as auth;
use crate::edge::config::GpConfig;
use crate::edge::http::body::read_json_allow_array;
use crate::edge::http::error::ApiResult;
use crate::edge::http::request::Request;
use worker::{Env, Response};

/// `POST /v1/query`: the preferred SSI for one SII (draft §8.1); with
/// `"all": true` every mapping of it across the federation (issue 16).
pub async fn query(mut req: Request, env: &Env, cfg: &GpConfig) -> ApiResult<Response> {
    let ap = auth::authenticate(&req, env, cfg).await?;
    let body: QueryBody = read_json_allow_array(&mut req).await?;
    let query = body.into_query()?;
    let mut limit = crate::edge::ratelimit::admit(env, &ap).await?;
    stats::count(|s| s.queries += 1);
    let result = resolve(env, cfg, &query).await?;
    if query.all {
        // An `all` answer reveals as much as one query per mapping in it,
        // so it costs that many (at least the one already spent): listing
        // SIIs' mappings is never cheaper than asking for each (§8.1 "not
        // an enumeration API"). Over the limit, nothing is answered.
        for _ in 1..result.all.len() {
            limit = crate::edge::ratelimit::admit(env, &ap).await?;
        }
    }
    let out = answer(&query, &result, &cfg.id);
    let mut resp = crate::edge::http::respond::json_ok(&out)?;
    for (k, v) in limit.headers() {
        let _ = resp.headers_mut().set(k, &v);
    }
    Ok(resp)
}
