//! Test-only routes (DEBUG_ROUTES): isolate counters, direct filter inserts, the peers' filter copies, a deliberate panic.
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
