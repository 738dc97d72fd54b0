//! `POST /peer/v1/strikes`: a peer GP forwards a strike against one of this
//! GP's APs.
//!
//! draft §8.2.1: "If done malicisously, the user can request their old app
//! to re-establish the mapping, change the preference back, or to report
//! the change as malicious. [...] In the case where the user reports the
//! change as malicious, this would be a strike against the reputation of
//! the new provider. With sufficient strikes, the GP can further rate limit
//! that provider or remove their access entirely."
//!
//! When the old AP is on another GP than the new one, the old AP's GP sends
//! a signed [`StrikeNotice`] (RFC 9421, like every GP-to-GP request) from
//! its durable claim outbox to the new AP's GP. This GP:
//!
//! 1. verifies the signature against the configured peer key (draft §11.1:
//!    GPs are "fully trusted", but authenticated) and that `from_gp` is the
//!    signer;
//! 2. checks that `against` is an AP enrolled here (else `422
//!    strike-unknown-ap`);
//! 3. takes one of that peer's strike slots for the AP (at most
//!    `PEER_STRIKES_PER_AP_PER_DAY`, default 3, per rolling 24 h; else `429
//!    peer-strike-limit` with `Retry-After`, and the sender retries later);
//! 4. has the SII's mapping shard check the notice against the claims this
//!    GP sent that peer (`SiiRecord::accept_peer_strike`: the change being
//!    reported reached the peer only as such a claim) and mark the claim
//!    struck (`422 no-such-claim`, `409 already-reported`);
//! 5. applies the strike through the AP's object exactly like a local one:
//!    the registry's strikes go up (the rate limit shrinks by the AP's
//!    strike factor; at its threshold the AP is suspended) and the AP gets
//!    an `ap.strike` webhook naming the reporting AP and its GP.
//!
//! Idempotent by `(from_gp, id)`: a redelivery (the sender's outbox retries
//! until it gets a 2xx) answers `200 {"applied": false, "duplicate": true}`
//! and changes nothing; a replayed signed request is refused by the nonce
//! check before anything else.
use crate::edge::rpc::ap::ApClient;
use crate::edge::rpc::ap::Limited;
use crate::edge::rpc::registry::Registry;
use crate::edge::rpc::shard::Shard;

use crate::core::mapping::{keep_strike_slot, StrikeNotice, StrikeOutcome};
use crate::edge::auth::peer as peer_auth;
use crate::edge::config::GpConfig;
use crate::edge::http::error::{ApiError, ApiResult};
use crate::edge::http::request::Request;
use serde_json::json;
use worker::{Env, Response};

/// Largest strike notice accepted (a notice is well under 1 KiB).
const MAX_STRIKE_BODY: usize = 4 << 10;
fn invalid(detail: String) -> ApiError {
    ApiError::client(400, "invalid-strike", "Invalid strike notice", detail)
}

/// `POST /peer/v1/strikes` (see the module documentation).
pub async fn serve(mut req: Request, env: &Env, cfg: &GpConfig) -> ApiResult<Response> {
    let (peer, body) = peer_auth::verify(&mut req, env, cfg, MAX_STRIKE_BODY).await?;
    let notice: StrikeNotice = serde_json::from_slice(&body)
        .map_err(|e| invalid(format!("the strike notice was not understood: {e}")))?;
    if !notice.id_is_valid() {
        return Err(invalid(
            "id must be 1 to 64 characters of A-Z, a-z, 0-9, '-' and '_'".into(),
        ));
    }
    peer_auth::require_sender(&peer, &notice.from_gp, "Strike from another GP")?;
    let ap = notice.against.to_string();
    match Registry::new(env).get(&ap).await? {
        Some(_) => {}
        None => {
            return Err(ApiError::client(
                422,
                "strike-unknown-ap",
                "Not an AP of this GP",
                format!(
                    "{ap} is not enrolled at {}; a strike goes to the GP the reported provider is enrolled with",
                    cfg.id
                ),
            ))
        }
    }
    let now = crate::edge::clock::now_ms();
    let objects = ApClient::new(env, &ap);
    let fresh = match objects
        .reserve_peer_strike(&peer, &notice.id, cfg.peer_strikes_per_ap_per_day, now)
        .await?
    {
        Ok(fresh) => fresh,
        Err(Limited { retry_after_ms }) => {
            let secs = retry_after_ms.unwrap_or(3_600_000).div_ceil(1000);
            return Err(ApiError::client(
                429,
                "peer-strike-limit",
                "Too many strikes from this GP",
                format!(
                    "{peer} has delivered {} strikes against {ap} within 24 hours, the most this GP accepts from one GP for one provider; retry in {secs} s",
                    cfg.peer_strikes_per_ap_per_day
                ),
            )
            .with_header("Retry-After", secs.to_string()));
        }
    };
    // The slot stays only with an applied strike (core::mapping::
    // keep_strike_slot): a failed shard call or a refusal gives it back.
    let reply = Shard::of(env, cfg, &notice.sii)
        .apply_peer_strike(notice.clone(), now)
        .await;
    let outcome = match &reply {
        Ok(Ok(true)) => StrikeOutcome::Applied,
        Ok(Ok(false)) => StrikeOutcome::Duplicate,
        Ok(Err(_)) => StrikeOutcome::Refused,
        Err(_) => StrikeOutcome::Failed,
    };
    if !keep_strike_slot(outcome, fresh) {
        objects.release_peer_strike(&peer, &notice.id).await?;
    }
    let applied = reply?.map_err(|r| r.into_api())?;
    crate::edge::http::respond::json_ok(&json!({
        "id": notice.id,
        "applied": applied,
        "duplicate": !applied,
    }))
}
