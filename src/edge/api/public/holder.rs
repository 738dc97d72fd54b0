//! The SII holder's own removal and opt-out (beyond GLADOS-00;
//! ARCHITECTURE.md, "The holder's removal and opt-out"). Public: a person,
//! not an AP, proves control of their phone number or email address with
//! a code sent to it, then sees every mapping of it across the federation
//! and removes them all, or opts out of discovery (or back in).
//!
//! - `POST /v1/holder/codes {sii}`: a code to the SII (the limits of an
//!   AP's creation: per SII, and one hourly budget for every holder send
//!   of this GP in place of an AP's);
//! - `POST /v1/holder/verify {handle, code}`: a 15-minute holder token;
//! - `POST /v1/holder/{status,remove,opt-out,opt-in} {token}`.
//!
//! The page `assets/holder/` walks a person through it.
use crate::core::creation::Handle;
use crate::core::encoding::hex_encode;
use crate::core::holder::{self, HolderAction, HOLDER};
use crate::core::query::Query;
use crate::core::sii::Sii;
use crate::core::tags::MappingMeta;
use crate::core::webhook::rfc3339_ms;
use crate::edge::api::codes::{self, Start};
use crate::edge::config::{token_keys, GpConfig};
use crate::edge::http::body::read_json;
use crate::edge::http::error::{ApiError, ApiResult};
use crate::edge::http::request::Request;
use crate::edge::http::respond::json_status;
use crate::edge::outbound::codes::channel;
use crate::edge::routing::fanout;
use crate::edge::rpc::registry::Registry;
use crate::edge::rpc::shard::Shard;
use serde::Deserialize;
use serde_json::json;
use worker::{Env, Response};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CodesBody {
    sii: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyBody {
    handle: String,
    code: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    token: String,
}

/// `POST /v1/holder/codes`: a code to the SII, so its holder can prove
/// control. Answers like an AP's creation: a handle and expiry, never the
/// code; a repeat within 30 s sends nothing.
pub async fn codes(mut req: Request, env: &Env, cfg: &GpConfig) -> ApiResult<Response> {
    let b: CodesBody = read_json(&mut req, false).await?;
    let sii = Sii::parse(&b.sii)?;
    let now = crate::edge::clock::now_ms();
    let start = Start {
        sii: &sii,
        ap: HOLDER,
        user: "",
        meta: MappingMeta::default(),
    };
    let started = codes::start(
        env,
        cfg,
        start,
        |code, ttl_ms| holder::code_message(&cfg.name, code, ttl_ms),
        || async { Ok(None) },
    )
    .await?;
    json_status(
        &json!({
            "handle": started.handle.encode(),
            "channel": channel(&sii),
            "expires_at": rfc3339_ms(started.expires_at_ms),
            "expires_in": started.expires_at_ms.saturating_sub(now) / 1000,
            "sent": started.sent,
        }),
        202,
    )
}

/// `POST /v1/holder/verify`: the code the person received; on a match a
/// holder token for the SII (15 minutes).
pub async fn verify(mut req: Request, env: &Env, cfg: &GpConfig) -> ApiResult<Response> {
    let b: VerifyBody = read_json(&mut req, false).await?;
    // A handle naming a shard this GP does not have is not one it issued
    // (and must not make an unauthenticated caller create objects).
    let handle = Handle::parse(&b.handle, cfg.mapping_shards)?;
    let now = crate::edge::clock::now_ms();
    let pepper = hex_encode(&codes::pepper(env)?);
    let sii = Shard::at(env, cfg, handle.shard)
        .holder_confirm(hex_encode(&handle.salt), b.code, pepper, now)
        .await?;
    let (kid, key) = token_keys(env)?
        .derived(None, holder::TOKEN_KEY_LABEL)
        .ok_or_else(|| ApiError::Internal("TOKEN_KEYS holds no key".into()))?;
    json_status(
        &json!({
            "token": holder::issue_token(&kid, &key, &sii, now / 1000),
            "expires_in": holder::TOKEN_TTL_S,
            "sii": sii.as_str(),
        }),
        200,
    )
}

/// The SII a holder token in the body proves control of.
async fn holder_sii(req: &mut Request, env: &Env) -> ApiResult<Sii> {
    let b: TokenBody = read_json(req, false).await?;
    let keys = token_keys(env)?;
    let now_s = crate::edge::clock::now_ms() / 1000;
    let key_for = |kid: &str| {
        keys.derived(Some(kid), holder::TOKEN_KEY_LABEL)
            .map(|(_, k)| k.to_vec())
    };
    Ok(holder::verify_token(&b.token, key_for, now_s)?)
}

/// `POST /v1/holder/status`: every mapping of the holder's SII across the
/// federation (the GPs whose filters match), and whether it is opted out.
pub async fn status(mut req: Request, env: &Env, cfg: &GpConfig) -> ApiResult<Response> {
    let sii = holder_sii(&mut req, env).await?;
    let query = Query {
        all: true,
        ..Query::plain(sii.clone())
    };
    let result = fanout::resolve(env, cfg, &query).await?;
    let preferred = result.preferred.as_ref().map(|r| &r.candidate);
    let registry = Registry::new(env);
    let mut mappings = Vec::with_capacity(result.all.len());
    for r in &result.all {
        let c = &r.candidate;
        let name = if c.gp == cfg.id {
            registry
                .get(c.ssi.provider().as_str())
                .await?
                .map(|ap| ap.record.name)
        } else {
            None
        };
        let mut m = json!({
            "provider": c.ssi.provider(),
            "name": name,
            "gp": c.gp,
            "preferred": Some(c) == preferred,
            "created_at": rfc3339_ms(c.precedence.created_at_ms),
        });
        if let (Some(o), serde_json::Value::Object(meta)) = (m.as_object_mut(), json!(r.meta)) {
            o.extend(meta);
        }
        mappings.push(m);
    }
    let failed: Vec<_> = result.failed.iter().map(|(gp, _)| gp).collect();
    json_status(
        &json!({
            "sii": sii.as_str(),
            "opted_out": result.opted_out,
            "mappings": mappings,
            "incomplete": result.incomplete(),
            "failed_peers": failed,
        }),
        200,
    )
}

/// `POST /v1/holder/{remove,opt-out,opt-in}`: the holder's action, here
/// and, by a signed claim from the durable outbox, at every peer whose
/// filter may hold the SII; each AP that loses a mapping is told by
/// webhook (`mapping.removed`).
pub async fn act(
    mut req: Request,
    env: &Env,
    cfg: &GpConfig,
    action: HolderAction,
) -> ApiResult<Response> {
    let sii = holder_sii(&mut req, env).await?;
    let peers = fanout::matching_peers(env, cfg, &sii)
        .await
        .into_iter()
        .map(|p| p.id.clone())
        .collect();
    let (removed, told) = Shard::of(env, cfg, &sii)
        .holder_act(&sii, action, &cfg.id, peers, crate::edge::clock::now_ms())
        .await?;
    json_status(
        &json!({
            "sii": sii.as_str(),
            "action": action,
            "opted_out": action == HolderAction::OptOut,
            "removed_here": removed.len(),
            "peers_told": told,
        }),
        200,
    )
}
