//! `POST /peer/v1/claims`: a peer GP's claim (draft §10).
use crate::edge::rpc::shard::Shard;

use crate::core::mapping::Claim;
use crate::edge::api::peer::query::MAX_PEER_QUERY_BODY;
use crate::edge::auth::peer as peer_auth;
use crate::edge::config::GpConfig;
use crate::edge::http::error::ApiResult;
use serde_json::json;
use worker::{Env, Request, Response};

/// `POST /peer/v1/claims`: a peer GP tells this GP that one of its APs
/// claimed an SII (draft §10: "it sends a webhook callback to those GP,
/// indicating that that particular SII has been claimed"). A local mapping
/// not newer than the claim is deleted (replace) or outranked (prefer), and
/// its AP is told by webhook through the shard's outbox. Idempotent: a
/// repeated claim finds nothing older left to displace.
pub async fn serve(mut req: Request, env: &Env, cfg: &GpConfig) -> ApiResult<Response> {
    let (peer, body) = peer_auth::verify(&mut req, env, cfg, MAX_PEER_QUERY_BODY).await?;
    let claim: Claim = super::parse(&body, "invalid-claim", "Invalid claim", "claim")?;
    peer_auth::require_sender(&peer, &claim.from_gp, "Claim from another GP")?;
    let notified = Shard::of(env, &claim.sii)
        .apply_claim(claim, crate::edge::clock::now_ms())
        .await?;
    crate::edge::http::respond::json_ok(&json!({ "applied": true, "notified": notified.len() }))
}
