//! The GP-to-GP routing protocol's serving side (draft §9): the manifest
//! and partitions of this GP's filter, additions, subscriptions; and
//! receiving a peer's filter updates (handed to that peer's `PeerCopy`).
use crate::edge::routing::sync::{GLA1_TYPE, GLF2_TYPE, MAX_UPDATE_BODY};

use crate::edge::auth::peer as peer_auth;
use crate::edge::config::GpConfig;
use crate::edge::http::error::{ApiError, ApiResult, OrInternal};
use crate::edge::http::request::Request;
use crate::edge::rpc::filter::{FilterClient, SubscribeOp, CALLBACK_PATH};
use crate::edge::rpc::routing::{CopyClient, CopyReply};
use serde::Deserialize;
use serde_json::json;
use worker::{Env, Method, Response};

/// Whether `If-None-Match` names `etag`.
fn not_modified(req: &Request, etag: &str) -> bool {
    req.headers()
        .get("If-None-Match")
        .ok()
        .flatten()
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
}

/// `GET /peer/v1/filter`: the current version's manifest (JSON:
/// parameters, cursor, and each partition's ETag and fill), to copy it
/// partition by partition. ETag `"v{version}.{seq}"`; `If-None-Match`
/// with it answers 304.
pub async fn serve_manifest(mut req: Request, env: &Env, cfg: &GpConfig) -> ApiResult<Response> {
    peer_auth::verify(&mut req, env, cfg, 0).await?;
    let m = FilterClient::new(env).manifest().await?;
    let etag = format!("\"v{}.{}\"", m.version, m.seq);
    let mut out = if not_modified(&req, &etag) {
        Response::empty().internal("304")?.with_status(304)
    } else {
        Response::from_json(&m).internal("manifest")?
    };
    let h = out.headers_mut();
    h.set("ETag", &etag).internal("header")?;
    h.set("Cache-Control", "no-cache").internal("header")?;
    Ok(out)
}

/// `GET /peer/v1/filter/partitions/{index}?version=V`: one partition of
/// version V as GLF2 (sparse when that is smaller), with its ETag; 409
/// `filter-version-ended` once V is not current.
pub async fn serve_partition(
    mut req: Request,
    env: &Env,
    cfg: &GpConfig,
    index: &str,
) -> ApiResult<Response> {
    peer_auth::verify(&mut req, env, cfg, 0).await?;
    let bad = |detail: String| {
        ApiError::client(
            400,
            "invalid-partition",
            "Invalid partition request",
            detail,
        )
    };
    let index: u32 = index
        .parse()
        .map_err(|_| bad(format!("partition index {index:?} is not a number")))?;
    let url = req.url().internal("url")?;
    let version: u64 = url
        .query_pairs()
        .find(|(k, _)| k == "version")
        .and_then(|(_, v)| v.parse().ok())
        .ok_or_else(|| bad("version must be given as a non-negative integer".into()))?;
    let mut resp = FilterClient::new(env)
        .request(
            Method::Get,
            &format!("/partition?version={version}&index={index}"),
            None,
        )
        .await?;
    if resp.status_code() != 200 {
        return Ok(resp);
    }
    let header = |name: &str| resp.headers().get(name).ok().flatten().unwrap_or_default();
    let (etag, seq) = (header("ETag"), header("Glados-Filter-Seq"));
    let mut out = if not_modified(&req, &etag) {
        Response::empty().internal("304")?.with_status(304)
    } else {
        // A Durable Object's response headers are immutable: a new one.
        let bytes = resp.bytes().await.internal("partition bytes")?;
        Response::from_bytes(bytes).internal("partition")?
    };
    let h = out.headers_mut();
    for (k, v) in [
        ("Content-Type", GLF2_TYPE.to_string()),
        ("ETag", etag),
        ("Cache-Control", "no-cache".to_string()),
        ("Glados-Filter-Version", version.to_string()),
        ("Glados-Filter-Seq", seq),
    ] {
        h.set(k, &v).internal("header")?;
    }
    Ok(out)
}

/// `GET /peer/v1/filter/additions?version=V&after=SEQ`: the batches after a
/// cursor as one GLA1 body; `Glados-Filter-Seq` is the next cursor.
pub async fn serve_additions(mut req: Request, env: &Env, cfg: &GpConfig) -> ApiResult<Response> {
    peer_auth::verify(&mut req, env, cfg, 0).await?;
    let url = req.url().internal("url")?;
    let query = url.query().map(|q| format!("?{q}")).unwrap_or_default();
    let mut resp = FilterClient::new(env)
        .request(Method::Get, &format!("/additions{query}"), None)
        .await?;
    if resp.status_code() != 200 {
        return Ok(resp);
    }
    // A Durable Object's response headers are immutable: copy into a new one.
    let bytes = resp.bytes().await.internal("additions bytes")?;
    let mut out = Response::from_bytes(bytes).internal("additions")?;
    let h = out.headers_mut();
    h.set("Content-Type", GLA1_TYPE).internal("header")?;
    for name in [
        "Glados-Filter-Version",
        "Glados-Filter-Seq",
        "Glados-Filter-More",
    ] {
        if let Ok(Some(v)) = resp.headers().get(name) {
            h.set(name, &v).internal("header")?;
        }
    }
    Ok(out)
}

/// `POST /peer/v1/filter/subscriptions` `{"version", "after"}`: subscribes
/// the signing peer; deliveries go to its configured URL + [`CALLBACK_PATH`].
pub async fn subscribe(mut req: Request, env: &Env, cfg: &GpConfig) -> ApiResult<Response> {
    let (peer_id, body) = peer_auth::verify(&mut req, env, cfg, 4096).await?;
    #[derive(Deserialize)]
    struct Body {
        version: u64,
        after: u64,
    }
    let b: Body = serde_json::from_slice(&body).map_err(|e| {
        ApiError::client(
            400,
            "invalid-json",
            "Invalid JSON body",
            format!("expected {{\"version\": n, \"after\": n}}: {e}"),
        )
    })?;
    let peer = peer_auth::peer(cfg, &peer_id)
        .ok_or_else(|| ApiError::Internal(format!("verified peer {peer_id} not configured")))?;
    let op = SubscribeOp {
        peer: peer_id,
        callback: format!("{}{CALLBACK_PATH}", peer.url.trim_end_matches('/')),
        version: b.version,
        after: b.after,
    };
    FilterClient::new(env).subscribe(&op).await
}

/// `POST /peer/v1/filter-updates`: a publisher's signed delivery —
/// `{"type": "additions", "gp", "version", "after", "seq", "additions":
/// base64 GLA1}` or `{"type": "rotated", "gp", "version", "new_version"}`
/// — handed to that peer's copy, its one writer.
pub async fn receive_update(mut req: Request, env: &Env, cfg: &GpConfig) -> ApiResult<Response> {
    let (peer_id, body) = peer_auth::verify(&mut req, env, cfg, MAX_UPDATE_BODY).await?;
    #[derive(Deserialize)]
    struct Update {
        #[serde(rename = "type")]
        kind: String,
        gp: String,
        version: u64,
        #[serde(default)]
        new_version: Option<u64>,
        #[serde(default)]
        after: u64,
        #[serde(default)]
        seq: u64,
        #[serde(default)]
        additions: String,
    }
    let bad = |detail: String| {
        ApiError::client(
            400,
            "invalid-filter-update",
            "Invalid filter update",
            detail,
        )
    };
    let u: Update = serde_json::from_slice(&body).map_err(|e| bad(e.to_string()))?;
    peer_auth::require_sender(&peer_id, &u.gp, "Update from another GP")?;
    let copy = CopyClient::new(env, cfg, &peer_id);
    match u.kind.as_str() {
        // draft §9: "the other GPs need to fetch the newest one and
        // recreate their subscriptions to receive changes against it".
        "rotated" => {
            let state = copy.rotated(u.new_version.unwrap_or(u.version + 1)).await?;
            crate::edge::http::respond::json_ok(
                &json!({ "resyncing": true, "status": state.status }),
            )
        }
        "additions" => {
            if u.seq < u.after {
                return Err(bad(format!("seq {} is before after {}", u.seq, u.after)));
            }
            match copy
                .additions(u.version, u.after, u.seq, u.additions)
                .await?
            {
                CopyReply::Applied { seq } => {
                    crate::edge::http::respond::json_ok(&json!({ "seq": seq }))
                }
                // A gap: we lack batches (after, …]; tell the publisher
                // where our copy really is.
                CopyReply::Gap { seq } => Ok(Response::from_json(&json!({ "seq": seq }))
                    .internal("gap response")?
                    .with_status(409)),
                CopyReply::Stale { version } => crate::edge::http::respond::json_ok(
                    &json!({ "stale": true, "version": version }),
                ),
                CopyReply::Resyncing => {
                    crate::edge::http::respond::json_ok(&json!({ "resyncing": true }))
                }
                CopyReply::Refused { detail } => Err(bad(detail)),
                CopyReply::State { .. } => Err(ApiError::Internal(
                    "peer copy answered additions with its state".into(),
                )),
            }
        }
        other => Err(bad(format!("unknown update type {other:?}"))),
    }
}
