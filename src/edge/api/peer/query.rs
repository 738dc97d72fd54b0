//! `POST /peer/v1/query`: a peer GP's query, answered from this GP's own mappings only (draft §8.1).
use crate::edge::routing::fanout::lookup;
use crate::edge::stats;

use crate::core::query::{PeerAnswer, QueryBody};
use crate::edge::auth::peer as peer_auth;
use crate::edge::config::GpConfig;
use crate::edge::http::error::ApiResult;
use crate::edge::http::request::Request;
use serde_json::json;
use worker::{Env, Response};

/// A peer query body is one small JSON object.
pub const MAX_PEER_QUERY_BODY: usize = 4 << 10;

/// `POST /peer/v1/query`: a peer GP's query, answered from this GP's own
/// mappings only (draft §8.1: "The remote GP authorize the request as
/// coming from another GP, and consult only their local mappings").
pub async fn serve(mut req: Request, env: &Env, cfg: &GpConfig) -> ApiResult<Response> {
    stats::count(|s| s.peer_queries_received += 1);
    let (_peer, body) = peer_auth::verify(&mut req, env, cfg, MAX_PEER_QUERY_BODY).await?;
    let b: QueryBody = super::parse(&body, "invalid-json", "Invalid JSON body", "JSON body")?;
    let query = b.into_query()?;
    let found = lookup(env, cfg, &query).await?;
    stats::count(|s| s.peer_queries_answered += 1);
    crate::edge::http::respond::json_ok(&json!(PeerAnswer::new(&cfg.id, &query, found)))
}
