//! The GP-to-GP routing protocol's serving side (draft §9): snapshots, additions, subscriptions, and receiving a peer's filter updates.
use crate::edge::routing::copies::peer_filter;
use crate::edge::routing::copies::GLA1_TYPE;
use crate::edge::routing::copies::GLF2_TYPE;
use crate::edge::routing::copies::{
    batch_key, kv, kv_err, remember, store_snapshot, write_meta, COMPACT_BATCHES, MAX_UPDATE_BODY,
};
use crate::edge::routing::sync::resync;

use crate::core::encoding::b64_decode;
use crate::core::filter::decode_additions;
use crate::edge::auth::peer as peer_auth;
use crate::edge::config::GpConfig;
use crate::edge::http::error::{ApiError, ApiResult, OrInternal};
use crate::edge::rpc::filter::{FilterClient, SubscribeOp, CALLBACK_PATH};
use serde::Deserialize;
use serde_json::json;
use worker::{Env, Method, Request, Response};

/// `GET /peer/v1/filter`: the current snapshot (GLF2) with its cursor;
/// `If-None-Match` with the current ETag answers 304.
pub async fn serve_snapshot(mut req: Request, env: &Env, cfg: &GpConfig) -> ApiResult<Response> {
    peer_auth::verify(&mut req, env, cfg, 0).await?;
    let mut resp = FilterClient::new(env)
        .request(Method::Get, "/snapshot", None)
        .await?;
    if resp.status_code() != 200 {
        return Ok(resp);
    }
    let header = |name: &str| resp.headers().get(name).ok().flatten().unwrap_or_default();
    let (version, seq, created) = (
        header("Glados-Filter-Version"),
        header("Glados-Filter-Seq"),
        header("Glados-Filter-Created"),
    );
    // The cursor names the content exactly: same version and seq, same bits.
    let etag = format!("\"v{version}.{seq}\"");
    let matches = req
        .headers()
        .get("If-None-Match")
        .ok()
        .flatten()
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut out = if matches {
        Response::empty().internal("304")?.with_status(304)
    } else {
        let bytes = resp.bytes().await.internal("snapshot bytes")?;
        Response::from_bytes(bytes).internal("snapshot")?
    };
    let h = out.headers_mut();
    for (k, v) in [
        ("Content-Type", GLF2_TYPE.to_string()),
        ("ETag", etag),
        ("Cache-Control", "no-cache".to_string()),
        ("Glados-Filter-Version", version),
        ("Glados-Filter-Seq", seq),
        ("Glados-Filter-Created", created),
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
/// base64 GLA1}` or `{"type": "rotated", "gp", "version", "new_version"}`.
pub async fn receive_update(mut req: Request, env: &Env, cfg: &GpConfig) -> ApiResult<Response> {
    let (peer_id, body) = peer_auth::verify(&mut req, env, cfg, MAX_UPDATE_BODY).await?;
    #[derive(Deserialize)]
    struct Update {
        #[serde(rename = "type")]
        kind: String,
        gp: String,
        version: u64,
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
    let peer = peer_auth::peer(cfg, &peer_id)
        .ok_or_else(|| ApiError::Internal(format!("verified peer {peer_id} not configured")))?
        .clone();
    let current = peer_filter(env, &peer_id).await?;
    match u.kind.as_str() {
        "rotated" => {
            // draft §9: "the other GPs need to fetch the newest one and
            // recreate their subscriptions to receive changes against it".
            match resync(env, cfg, &peer).await {
                Ok(m) => crate::edge::http::respond::json_ok(
                    &json!({ "resynced": m.version, "seq": m.seq }),
                ),
                // Acknowledge anyway: the old subscription is over either
                // way, and the cron's catch-up fetches the snapshot later.
                Err(e) => {
                    worker::console_error!("resync with {peer_id} failed: {e}");
                    crate::edge::http::respond::json_ok(&json!({ "resynced": null, "error": e }))
                }
            }
        }
        "additions" => {
            let Some(mut c) = current.filter(|c| c.meta.version == u.version) else {
                // Not the version we hold (lost state?): start over.
                let r = resync(env, cfg, &peer).await;
                return crate::edge::http::respond::json_ok(&json!({ "resynced": r.is_ok() }));
            };
            if u.after > c.meta.seq {
                // A gap: we lack batches (after, …]; tell the publisher
                // where our copy really is.
                let mut resp =
                    Response::from_json(&json!({ "seq": c.meta.seq })).internal("gap response")?;
                resp = resp.with_status(409);
                return Ok(resp);
            }
            let bytes = b64_decode(&u.additions).map_err(|e| bad(format!("additions: {e}")))?;
            let batch = decode_additions(&bytes).map_err(|e| bad(format!("additions: {e}")))?;
            if batch.version != u.version {
                return Err(bad("batch version differs from the message's".into()));
            }
            c.filter
                .apply(&batch.indices)
                .map_err(|e| bad(format!("additions do not fit the filter: {e}")))?;
            if u.seq > c.meta.seq {
                let store = kv(env)?;
                kv_err(
                    kv_err(
                        store.put_bytes(&batch_key(&peer_id, u.version, u.seq), &bytes),
                        "kv put",
                    )?
                    .execute()
                    .await,
                    "kv put batch",
                )?;
                c.meta.batches.push(u.seq);
                c.meta.seq = u.seq;
                c.meta.updated_ms = crate::edge::clock::now_ms();
                if c.meta.batches.len() >= COMPACT_BATCHES {
                    c.meta = store_snapshot(env, &peer_id, &c.filter, u.seq).await?;
                } else {
                    write_meta(env, &peer_id, &c.meta).await?;
                }
            }
            c.checked_ms = crate::edge::clock::now_ms();
            let seq = c.meta.seq;
            remember(&peer_id, c);
            crate::edge::http::respond::json_ok(
                &json!({ "seq": seq, "applied": batch.indices.len() }),
            )
        }
        other => Err(bad(format!("unknown update type {other:?}"))),
    }
}
