//! `POST /peer/v1/claims`: a peer GP's claim (draft §10); and
//! `POST /peer/v1/holder-claims`: the SII holder's action taken at a peer
//! GP (beyond GLADOS-00).
use crate::edge::rpc::shard::Shard;

use crate::core::holder::HolderClaim;
use crate::core::mapping::Claim;
use crate::edge::api::peer::query::MAX_PEER_QUERY_BODY;
use crate::edge::auth::peer as peer_auth;
use crate::edge::config::GpConfig;
use crate::edge::http::error::ApiResult;
use crate::edge::http::request::Request;
use serde::de::DeserializeOwned;
use serde_json::json;
use worker::{Env, Response};

/// A signed claim body of type `T` from a peer that names itself as its
/// sender (`from_gp`, read by `sender`).
async fn receive<T: DeserializeOwned>(
    req: &mut Request,
    env: &Env,
    cfg: &GpConfig,
    sender: impl Fn(&T) -> &str,
) -> ApiResult<T> {
    let (peer, body) = peer_auth::verify(req, env, cfg, MAX_PEER_QUERY_BODY).await?;
    let claim: T = super::parse(&body, "invalid-claim", "Invalid claim", "claim")?;
    peer_auth::require_sender(&peer, sender(&claim), "Claim from another GP")?;
    Ok(claim)
}

/// `POST /peer/v1/claims`: a peer GP tells this GP that one of its APs
/// claimed an SII (draft §10: "it sends a webhook callback to those GP,
/// indicating that that particular SII has been claimed"). A local mapping
/// not newer than the claim is deleted (replace) or outranked (prefer), and
/// its AP is told by webhook through the shard's outbox. Idempotent: a
/// repeated claim finds nothing older left to displace.
pub async fn serve(mut req: Request, env: &Env, cfg: &GpConfig) -> ApiResult<Response> {
    let claim: Claim = receive(&mut req, env, cfg, |c: &Claim| &c.from_gp).await?;
    let notified = Shard::of(env, cfg, &claim.sii)
        .apply_claim(claim, crate::edge::clock::now_ms())
        .await?;
    crate::edge::http::respond::json_ok(&json!({ "applied": true, "notified": notified.len() }))
}

/// `POST /peer/v1/holder-claims`: the SII's holder proved control at the
/// sending GP and removed every mapping of it, opted out of discovery or
/// back in (beyond GLADOS-00). Local mappings go (those created up to the
/// claim for a removal, all for an opt-out), each AP told by webhook
/// (`mapping.removed`); an opt-out is kept so this GP answers it too.
/// Idempotent: a repeated claim finds nothing left to remove.
pub async fn serve_holder(mut req: Request, env: &Env, cfg: &GpConfig) -> ApiResult<Response> {
    let claim: HolderClaim = receive(&mut req, env, cfg, |c: &HolderClaim| &c.from_gp).await?;
    let notified = Shard::of(env, cfg, &claim.sii)
        .apply_holder_claim(claim, crate::edge::clock::now_ms())
        .await?;
    crate::edge::http::respond::json_ok(&json!({ "applied": true, "notified": notified.len() }))
}
