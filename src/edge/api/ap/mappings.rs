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
use crate::edge::api::codes::{self, Start};
use crate::edge::rpc::ap::ApClient;
use crate::edge::rpc::registry::current_ap;
use crate::edge::rpc::shard::Confirmed;
use crate::edge::rpc::shard::Refusal;
use crate::edge::rpc::shard::Shard;
use crate::edge::rpc::shard::{Remedy, Status};

use crate::core::creation::{code_message, Handle};
use crate::core::mapping::{Candidate, Choice, MappingError, Party};
use crate::core::query::Query;
use crate::core::sii::Sii;
use crate::core::ssi::UserId;
use crate::core::tags::MappingMeta;
use crate::core::webhook::rfc3339_ms;
use crate::edge::auth::ap as auth;
use crate::edge::auth::ap::AuthedAp;
use crate::edge::config::GpConfig;
use crate::edge::http::body::read_json;
use crate::edge::http::error::{ApiError, ApiResult};
use crate::edge::http::request::Request;
use crate::edge::outbound::codes::channel;
use crate::edge::rpc::shard::MappingView;
use serde::Deserialize;
use serde_json::{json, Value};
use worker::{Env, Response};

use crate::edge::http::respond::json_status as respond;

fn parse_sii(s: &str) -> ApiResult<Sii> {
    Sii::parse(s).map_err(ApiError::from)
}

/// What the peer GPs whose filters match say of an SII: their preferred
/// mapping, when it is another GP's, and whether its holder opted out of
/// discovery there. Free unless a peer's filter matches; an unreachable
/// peer finds nothing.
#[derive(Default)]
struct Remote {
    holder: Option<Candidate>,
    opted_out: bool,
}

async fn remote(env: &Env, cfg: &GpConfig, sii: &Sii) -> Remote {
    if crate::edge::routing::fanout::matching_peers(env, cfg, sii)
        .await
        .is_empty()
    {
        return Remote::default();
    }
    match crate::edge::routing::fanout::resolve(env, cfg, &Query::plain(sii.clone())).await {
        Ok(r) => Remote {
            holder: r.preferred.map(|r| r.candidate).filter(|c| c.gp != cfg.id),
            opted_out: r.opted_out,
        },
        Err(e) => {
            worker::console_error!("remote holder lookup: {e:?}");
            Remote::default()
        }
    }
}

/// `{provider, name, gp}` for the holder named in §8.2.1 answers (draft:
/// "include that provider ID and name"). Best effort: it runs after the
/// change was stored, so a failing registry read costs the holder's display
/// name, never the answer (the AP would retry a stored change and find it
/// gone; issue 14 item 2).
async fn party_json(env: &Env, cfg: &GpConfig, p: &Option<Party>) -> Value {
    let Some(p) = p else {
        return Value::Null;
    };
    let name = if p.gp.is_none() {
        match current_ap(env, cfg.ap_cache_secs, p.ap.as_str(), 0).await {
            Ok(ap) => ap.map(|ap| ap.name.clone()),
            Err(e) => {
                worker::console_error!("holder name of {}: {e:?}", p.ap.as_str());
                None
            }
        }
    } else {
        None
    };
    json!({ "provider": p.ap.as_str(), "name": name, "gp": p.gp })
}

fn mapping_json(ap: &str, m: &MappingView) -> Value {
    let mut v = json!({
        "sii": m.sii,
        "user": m.user,
        "ssi": format!("{ap}:{}", m.user),
        "verified_by": m.verified_by,
        "created_at": rfc3339_ms(m.created_at_ms),
        "preferred": m.preferred,
    });
    // Beyond GLADOS-00: tags and label, when the AP attached any.
    if let (Some(o), Value::Object(meta)) = (v.as_object_mut(), json!(m.meta)) {
        o.extend(meta);
    }
    v
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    sii: String,
    user: String,
    /// Registered tags (beyond GLADOS-00).
    #[serde(default)]
    tags: Option<Vec<String>>,
    /// The user's own label (beyond GLADOS-00).
    #[serde(default)]
    label: Option<String>,
}

/// `POST /v1/mappings` (draft §8.2, Figure 3: "create map(userID, SII)").
pub async fn create(mut req: Request, env: &Env, cfg: &GpConfig) -> ApiResult<Response> {
    let ap = auth::authenticate(&req, env, cfg).await?;
    let body: CreateBody = read_json(&mut req, false).await?;
    let sii = parse_sii(&body.sii)?;
    let user = UserId::parse(&body.user)?;
    let meta = MappingMeta::parse(body.tags.as_deref(), body.label.as_deref())?;
    let ap_id = ap.record.id.clone();
    let now = crate::edge::clock::now_ms();
    let app = ap.record.name.clone();
    let started = codes::start(
        env,
        cfg,
        Start {
            sii: &sii,
            ap: &ap_id,
            user: user.as_str(),
            meta,
        },
        |code, ttl_ms| code_message(&app, &cfg.name, code, ttl_ms),
        // draft §8.2.1 "Mapping Exists on Other AP", across GPs: a holder
        // on a peer GP found through the query path; and beyond GLADOS-00,
        // an SII whose holder opted out there gets no code at all. Only
        // once the send limits passed (issue 14 item 7: codes::start).
        || async {
            let remote = remote(env, cfg, &sii).await;
            if remote.opted_out {
                return Err(MappingError::OptedOut.into());
            }
            Ok(remote.holder.map(|c| Party {
                ap: c.ssi.provider().clone(),
                gp: Some(c.gp),
            }))
        },
    )
    .await?;
    let existing = started.existing;
    let expires_at_ms = started.expires_at_ms;
    respond(
        &json!({
            "handle": started.handle.encode(),
            "channel": channel(&sii),
            "expires_at": rfc3339_ms(expires_at_ms),
            "expires_in": expires_at_ms.saturating_sub(now) / 1000,
            "sent": started.sent,
            "existing": party_json(env, cfg, &existing).await,
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
    let handle = Handle::parse(handle, cfg.mapping_shards)?;
    let body: ConfirmBody = read_json(&mut req, false).await?;
    let ap_id = ap.record.id.clone();
    let shard = Shard::at(env, cfg, handle.shard);
    let salt = hex_encode(&handle.salt);
    let pepper = hex_encode(&crate::edge::api::codes::pepper(env)?);
    let now = crate::edge::clock::now_ms();
    let reply = if cfg.peers.is_empty() {
        shard
            .confirm(salt, &ap_id, Some(body.code), pepper, None, now)
            .await?
    } else {
        // draft §8.2.1 across GPs, at confirmation: the preferred holder on
        // a peer GP. With one, the new mapping is stored without preference
        // and the answer names that holder, so the AP renders the user's
        // choice instead of silently taking over; an SII whose holder opted
        // out at a peer meanwhile is refused (beyond GLADOS-00). The peers
        // are asked only after the code proved right (a wrong code or a
        // used-up handle asks nobody: issue 14 item 7); then the verified
        // mapping is stored.
        match shard
            .verify(salt.clone(), &ap_id, body.code, pepper.clone(), now)
            .await?
        {
            Err(r) => Err(r),
            Ok(sii) => {
                let r = remote(env, cfg, &sii).await;
                if r.opted_out {
                    return Err(MappingError::OptedOut.into());
                }
                shard
                    .confirm(salt, &ap_id, None, pepper, r.holder, now)
                    .await?
            }
        }
    };
    match reply {
        Ok(Confirmed { mapping, existing }) => {
            // Stored: from here on nothing may fail the answer (analytics
            // is best effort).
            if let Err(e) = ApClient::new(env, &ap_id).note_verify(true).await {
                worker::console_error!("analytics of {ap_id}: {e:?}");
            }
            respond(
                &json!({
                    "mapping": mapping_json(&ap_id, &mapping),
                    "existing": party_json(env, cfg, &existing).await,
                }),
                201,
            )
        }
        Err(r) => {
            if matches!(r, Refusal::WrongCode { .. }) {
                if let Err(e) = ApClient::new(env, &ap_id).note_verify(false).await {
                    worker::console_error!("analytics of {ap_id}: {e:?}");
                }
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
        let shard = Shard::of(env, cfg, &sii);
        let notified = shard
            .choose(&sii, &ap_id, b.choice, gp, claim_peers, now)
            .await?;
        return done(&sii, notified);
    }
    let b: SiiBody = read_json(&mut req, false).await?;
    let sii = parse_sii(&b.sii)?;
    let shard = Shard::of(env, cfg, &sii);
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
                    "preferred_elsewhere": party_json(env, cfg, &preferred_elsewhere).await,
                }),
                200,
            );
        }
    };
    done(&sii, notified)
}
