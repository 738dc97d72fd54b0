//! The mapping lifecycle API (draft §8.2, §8.2.1, §8.3, §10, §11.2).
//!
//! - `POST /v1/mappings` — create: sends a code to the SII, answers a handle
//!   and expiry (never the code) and the existing holder, if any;
//! - `POST /v1/verifications/{handle}` — confirm with the code the user typed;
//! - `POST /v1/mappings/{choice,reestablish,prefer-back,report,delete,mine}`;
//! - `POST /v1/mappings/bulk` — NDJSON bulk registration;
//! - `GET /admin/v1/aps/{id}/analytics` — registration signals.
//!
//! SIIs travel in bodies, never in URLs (they are personal data and URLs
//! end up in logs).
use crate::core::encoding::hex_encode;
use crate::edge::rpc::ap::ApClient;
use crate::edge::rpc::ap::Limited;
use crate::edge::rpc::registry::Registry;
use crate::edge::rpc::shard::shard_count;
use crate::edge::rpc::shard::Begun;
use crate::edge::rpc::shard::Confirmed;
use crate::edge::rpc::shard::Refusal;
use crate::edge::rpc::shard::Shard;
use crate::edge::rpc::shard::{Remedy, Status};

use crate::core::creation::{code_message, Handle};
use crate::core::mapping::{Choice, Party};
use crate::core::query::Query;
use crate::core::shard::shard_of;
use crate::core::sii::{Sii, SiiKind};
use crate::core::ssi::UserId;
use crate::core::verification::{generate_code, hash_code, CodePolicy, SendLimit};
use crate::core::webhook::rfc3339_ms;
use crate::edge::auth::ap as auth;
use crate::edge::auth::ap::AuthedAp;
use crate::edge::config::GpConfig;
use crate::edge::http::body::read_json;
use crate::edge::http::error::{ApiError, ApiResult};
use crate::edge::outbound::codes;
use crate::edge::rpc::shard::MappingView;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use worker::{Env, Request, Response};

use crate::edge::http::respond::json_status as respond;

fn random<const N: usize>() -> ApiResult<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| ApiError::Internal(format!("getrandom: {e}")))?;
    Ok(b)
}

/// The pepper of stored code hashes: `CODE_PEPPER` if set, else derived
/// from `WEBHOOK_MASTER_KEY` under its own label (never stored with the
/// hashes, so a leaked shard does not give codes back).
fn pepper(env: &Env) -> ApiResult<Vec<u8>> {
    if let Ok(s) = env.secret("CODE_PEPPER") {
        let s = s.to_string();
        if !s.is_empty() {
            return Ok(s.into_bytes());
        }
    }
    let master = crate::edge::config::webhook_master_key(env)?;
    let mut h = Sha256::new();
    h.update(b"glados/code-pepper/v1\0");
    h.update(&master);
    Ok(h.finalize().to_vec())
}

fn var_u32(env: &Env, name: &str, default: u32) -> u32 {
    env.var(name)
        .ok()
        .and_then(|v| v.to_string().trim().parse().ok())
        .unwrap_or(default)
}

/// The code policy (6 digits, 5 attempts) and the codes' lifetime from
/// `CODE_TTL_SECONDS` (default 600). The policy bounds the lifetime to
/// 1 min..1 day; a GP with DEBUG_ROUTES (local and test GPs only) may go
/// lower, so the suite can watch a code expire.
fn code_policy(env: &Env, cfg: &GpConfig) -> ApiResult<(CodePolicy, u64)> {
    let d = CodePolicy::default();
    let ttl_ms = u64::from(var_u32(env, "CODE_TTL_SECONDS", (d.ttl_ms() / 1000) as u32)) * 1000;
    if cfg.debug_routes && ttl_ms >= 1000 {
        return Ok((d, ttl_ms));
    }
    let p = CodePolicy::new(d.length(), d.alphabet(), ttl_ms, d.max_attempts())
        .map_err(|e| ApiError::Internal(format!("config CODE_TTL_SECONDS: {e}")))?;
    Ok((p, ttl_ms))
}

fn parse_sii(s: &str) -> ApiResult<Sii> {
    Sii::parse(s).map_err(ApiError::from)
}

/// `{provider, name, gp}` for the holder named in §8.2.1 answers (draft:
/// "include that provider ID and name").
/// The preferred holder of `sii` on a peer GP, if the peers whose filters
/// match say so. Best effort: an unreachable peer just finds nothing.
async fn remote_holder(env: &Env, cfg: &GpConfig, sii: &Sii) -> Option<Party> {
    if crate::edge::routing::fanout::matching_peers(env, cfg, sii)
        .await
        .is_empty()
    {
        return None;
    }
    let query = Query::plain(sii.clone());
    match crate::edge::routing::fanout::resolve(env, cfg, &query).await {
        Ok(r) => r
            .preferred
            .map(|r| r.candidate)
            .filter(|c| c.gp != cfg.id)
            .map(|c| Party {
                ap: c.ssi.provider().clone(),
                gp: Some(c.gp),
            }),
        Err(e) => {
            worker::console_error!("remote holder lookup: {e:?}");
            None
        }
    }
}

/// draft §8.2.1 across GPs, at confirmation: the preferred holder of the
/// pending SII on a peer GP. With one, the new mapping is stored without
/// preference and the answer names that holder, so the AP renders the
/// user's choice instead of silently taking over (a mapping confirmed here
/// must not outrank the peer's before the user chose). Free unless a
/// peer's filter matches the SII; an unreachable peer finds nothing.
async fn remote_candidate(
    env: &Env,
    cfg: &GpConfig,
    handle: &Handle,
    ap: &str,
) -> ApiResult<Option<crate::core::mapping::Candidate>> {
    if cfg.peers.is_empty() {
        return Ok(None);
    }
    let pending = Shard::at(env, handle.shard)
        .pending_sii(hex_encode(&handle.salt), ap)
        .await?;
    // Unknown handle: the confirmation itself answers that.
    let Some(sii) = pending else {
        return Ok(None);
    };
    let sii = parse_sii(&sii)?;
    if crate::edge::routing::fanout::matching_peers(env, cfg, &sii)
        .await
        .is_empty()
    {
        return Ok(None);
    }
    match crate::edge::routing::fanout::resolve(env, cfg, &Query::plain(sii)).await {
        Ok(r) => Ok(r.preferred.map(|r| r.candidate).filter(|c| c.gp != cfg.id)),
        Err(e) => {
            worker::console_error!("remote holder lookup: {e:?}");
            Ok(None)
        }
    }
}

async fn party_json(env: &Env, p: &Option<Party>) -> ApiResult<Value> {
    let Some(p) = p else {
        return Ok(Value::Null);
    };
    let name = if p.gp.is_none() {
        Registry::new(env)
            .get(p.ap.as_str())
            .await?
            .map(|ap| ap.record.name)
    } else {
        None
    };
    Ok(json!({ "provider": p.ap.as_str(), "name": name, "gp": p.gp }))
}

fn mapping_json(ap: &str, m: &MappingView) -> Value {
    json!({
        "sii": m.sii,
        "user": m.user,
        "ssi": format!("{ap}:{}", m.user),
        "verified_by": m.verified_by,
        "created_at": rfc3339_ms(m.created_at_ms),
        "preferred": m.preferred,
    })
}

/// Phone numbers as integers, for the sequential-number signal.
fn phone_number(sii: &Sii) -> Option<u64> {
    (sii.kind() == SiiKind::Phone)
        .then(|| sii.as_str().trim_start_matches('+').parse().ok())
        .flatten()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    sii: String,
    user: String,
}

/// `POST /v1/mappings` (draft §8.2, Figure 3: "create map(userID, SII)").
pub async fn create(mut req: Request, env: &Env, cfg: &GpConfig) -> ApiResult<Response> {
    let ap = auth::authenticate(&req, env, cfg).await?;
    let body: CreateBody = read_json(&mut req, false).await?;
    let sii = parse_sii(&body.sii)?;
    let user = UserId::parse(&body.user)?;
    let ap_id = ap.record.id.clone();
    let now = crate::edge::clock::now_ms();
    let (policy, ttl_ms) = code_policy(env, cfg)?;
    let code = generate_code(&policy, &mut |b: &mut [u8]| {
        let _ = getrandom::fill(b);
    })
    .map_err(|e| ApiError::Internal(e.to_string()))?;
    let salt: [u8; 16] = random()?;
    let pepper = pepper(env)?;
    let limits = SendLimit::default();
    let shard = Shard::of(env, &sii);
    let Begun {
        reused,
        salt: salt_hex,
        expires_at_ms,
        existing,
        previous,
    } = shard
        .begin(
            &sii,
            &ap_id,
            user.as_str(),
            hex_encode(&salt),
            hex_encode(&hash_code(&pepper, &salt, code.as_str())),
            ttl_ms,
            var_u32(env, "CODES_PER_SII_PER_HOUR", limits.per_sii_per_hour),
            now,
        )
        .await?;
    // draft §8.2.1 "Mapping Exists on Other AP", across GPs: with no
    // holder here, a holder on a peer GP found through the query path —
    // free unless a peer's filter matches the SII.
    let existing = match existing {
        Some(e) => Some(e),
        None => remote_holder(env, cfg, &sii).await,
    };
    if !reused {
        let abort = || shard.abort(&sii, &ap_id, salt_hex.clone(), previous.clone(), now);
        // Per-AP limit (SMS pumping through one AP), then the message.
        let per_ap_per_hour = var_u32(env, "CODES_PER_AP_PER_HOUR", limits.per_ap_per_hour);
        let sent = ApClient::new(env, &ap_id)
            .record_send(per_ap_per_hour, phone_number(&sii), now)
            .await?;
        if let Err(Limited { retry_after_ms }) = sent {
            abort().await?;
            let e = ApiError::from(crate::core::verification::SendLimited {
                scope: crate::core::verification::SendScope::Ap,
                retry_after_ms,
            });
            return Err(match retry_after_ms {
                Some(ms) => e.with_header("Retry-After", ms.div_ceil(1000).to_string()),
                None => e,
            });
        }
        let msg = code_message(&ap.record.name, &cfg.name, code.as_str(), ttl_ms);
        if let Err(e) = codes::send(env, &sii, &msg).await {
            // No half-made state: the pending verification and both
            // counters are rolled back before the AP hears of the failure.
            abort().await?;
            ApClient::new(env, &ap_id).refund_send().await?;
            return Err(e);
        }
    }
    let salt_b: [u8; 16] = crate::core::encoding::hex_decode(&salt_hex)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| ApiError::Internal("shard returned a bad salt".into()))?;
    let handle = Handle {
        shard: shard_of(&sii, shard_count(env)),
        salt: salt_b,
    };
    respond(
        &json!({
            "handle": handle.encode(),
            "channel": codes::channel(&sii),
            "expires_at": rfc3339_ms(expires_at_ms),
            "expires_in": expires_at_ms.saturating_sub(now) / 1000,
            "sent": !reused,
            "existing": party_json(env, &existing).await?,
        }),
        202,
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfirmBody {
    code: String,
}

/// `POST /v1/verifications/{handle}` (draft §8.2: "the AP invokes another
/// API on its GP, providing the code").
pub async fn confirm(
    mut req: Request,
    env: &Env,
    cfg: &GpConfig,
    handle: &str,
) -> ApiResult<Response> {
    let ap = auth::authenticate(&req, env, cfg).await?;
    let handle = Handle::parse(handle)?;
    let body: ConfirmBody = read_json(&mut req, false).await?;
    let ap_id = ap.record.id.clone();
    let remote = remote_candidate(env, cfg, &handle, &ap_id).await?;
    let reply = Shard::at(env, handle.shard)
        .confirm(
            hex_encode(&handle.salt),
            &ap_id,
            body.code,
            hex_encode(&pepper(env)?),
            remote,
            crate::edge::clock::now_ms(),
        )
        .await?;
    match reply {
        Ok(Confirmed { mapping, existing }) => {
            ApClient::new(env, &ap_id).note_verify(true).await?;
            respond(
                &json!({
                    "mapping": mapping_json(&ap_id, &mapping),
                    "existing": party_json(env, &existing).await?,
                }),
                201,
            )
        }
        Err(r) => {
            if matches!(r, Refusal::WrongCode { .. }) {
                ApClient::new(env, &ap_id).note_verify(false).await?;
            }
            Err(r.into_api())
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SiiBody {
    sii: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChoiceBody {
    sii: String,
    choice: Choice,
}

/// The mapping actions of the new and the old AP.
#[derive(Debug, Clone, Copy)]
pub enum Action {
    Choice,
    Reestablish,
    PreferBack,
    Report,
    Delete,
    Mine,
}

/// The peers to send a claim to when one of our APs takes the preference:
/// draft §10, "the GP of the new AP looks into its routing filters to see if
/// any other GP might own a mapping for the SII which has changed"
/// (isolate-cached filter copies).
async fn claim_peer_ids(env: &Env, cfg: &GpConfig, sii: &Sii) -> Vec<String> {
    crate::edge::routing::fanout::matching_peers(env, cfg, sii)
        .await
        .into_iter()
        .map(|p| p.id.clone())
        .collect()
}

/// `POST /v1/mappings/{choice|reestablish|prefer-back|report|delete|mine}`.
pub async fn action(
    mut req: Request,
    env: &Env,
    cfg: &GpConfig,
    action: Action,
) -> ApiResult<Response> {
    let ap: AuthedAp = auth::authenticate(&req, env, cfg).await?;
    let ap_id = ap.record.id.clone();
    let now = crate::edge::clock::now_ms();
    let gp = cfg.id.as_str();
    let done = |sii: &Sii, notified: Vec<String>| {
        respond(
            &json!({ "sii": sii.as_str(), "done": true, "notified": notified }),
            200,
        )
    };
    if let Action::Choice = action {
        let b: ChoiceBody = read_json(&mut req, false).await?;
        let sii = parse_sii(&b.sii)?;
        let claim_peers = claim_peer_ids(env, cfg, &sii).await;
        let shard = Shard::of(env, &sii);
        let notified = shard
            .choose(&sii, &ap_id, b.choice, gp, claim_peers, now)
            .await?;
        return done(&sii, notified);
    }
    let b: SiiBody = read_json(&mut req, false).await?;
    let sii = parse_sii(&b.sii)?;
    let shard = Shard::of(env, &sii);
    let notified = match action {
        // Preferred again as of now: told as for a choice.
        Action::Reestablish | Action::PreferBack => {
            let remedy = if let Action::Reestablish = action {
                Remedy::Reestablish
            } else {
                Remedy::PreferBack
            };
            let peers = claim_peer_ids(env, cfg, &sii).await;
            shard.remedy(remedy, &sii, &ap_id, gp, peers, now).await?
        }
        Action::Report => shard.report(&sii, &ap_id, gp, now).await?,
        Action::Delete => shard.delete(&sii, &ap_id, now).await?,
        Action::Choice | Action::Mine => {
            let Status {
                mapping,
                preferred_elsewhere,
            } = shard.status(&sii, &ap_id).await?;
            return respond(
                &json!({
                    "mapping": mapping.as_ref().map(|m| mapping_json(&ap_id, m)),
                    "preferred_elsewhere": party_json(env, &preferred_elsewhere).await?,
                }),
                200,
            );
        }
    };
    done(&sii, notified)
}
