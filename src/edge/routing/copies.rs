//! The GP-to-GP routing protocol (draft §9): this GP's filter served to
//! peers, and peers' filters kept here.
//!
//! Publisher side (routes under `/peer/v1/`, signed peer requests only):
//! the snapshot, additions since a cursor, and subscriptions; the
//! `FilterObject` delivers the additions.
//!
//! Subscriber side: each peer's filter lives in KV (`FILTERS`) as a
//! snapshot (chunks of ≤ [`KV_CHUNK`] bytes, under the 25 MiB value cap)
//! plus the additions batches received since, and in this isolate's memory.
//! draft §9: "the other GPs need to fetch the newest one and recreate
//! their subscriptions" on rotation, and a subscription "allows a GP to
//! 'catch up' on changes it may have missed when disconnected": the cron
//! resubscribes from the cursor kept in KV.
//!
//! KV layout, per peer `{id}`:
//! - `peer-filter/{id}/meta`: JSON [`PeerMeta`] — version, cursor, chunks,
//!   the batches applied on top of the snapshot;
//! - `peer-filter/{id}/v{version}/s{snap_seq}/{i}`: GLF2 snapshot chunks;
//! - `peer-filter/{id}/v{version}/a{seq}`: one GLA1 additions batch.
//!
//! After [`COMPACT_BATCHES`] batches the copy is rewritten as a new
//! snapshot, so loading never reads more than that many batch keys.

use crate::core::encoding::b64_decode;
use crate::core::filter::{decode_additions, Filter};
use crate::core::Sii;
use crate::edge::auth::ap as auth;
use crate::edge::auth::peer as peer_auth;
use crate::edge::auth::peer::Signer;
use crate::edge::config::{GpConfig, Peer};
use crate::edge::http::body::read_capped;
use crate::edge::http::error::{ApiError, ApiResult, OrInternal};
use crate::edge::objects::filter as filter_object;
use crate::edge::objects::filter::{SubscribeOp, CALLBACK_PATH};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::cell::RefCell;
use std::collections::HashMap;
use worker::{Date, Env, Method, Request, Response};

/// KV value size used for snapshot chunks (KV's cap is 25 MiB).
const KV_CHUNK: usize = 20 << 20;
/// Largest peer snapshot accepted into one isolate (its memory is 128 MB);
/// bigger filters need the partitioned layout (DESIGN.md, Scale).
const MAX_SNAPSHOT: usize = 32 << 20;
/// Largest additions delivery accepted (200k indices are ~0.8 MB base64).
const MAX_UPDATE_BODY: usize = 4 << 20;
/// Batches kept on top of a stored snapshot before it is rewritten.
const COMPACT_BATCHES: usize = 32;
/// How long an isolate uses its copy before re-reading the (cheap) meta key.
const PEER_CACHE_MS: u64 = 1_000;
/// Timeout of publisher-side calls (snapshot, subscribe).
const PEER_TIMEOUT_MS: u32 = 5_000;
/// Media types of the binary filter formats (core::filter::wire).
pub const GLF2_TYPE: &str = "application/vnd.glados.filter";
pub const GLA1_TYPE: &str = "application/vnd.glados.filter-additions";

// ---------------------------------------------------------------- publisher

/// `GET /peer/v1/filter`: the current snapshot (GLF2) with its cursor;
/// `If-None-Match` with the current ETag answers 304.
pub async fn serve_snapshot(mut req: Request, env: &Env, cfg: &GpConfig) -> ApiResult<Response> {
    peer_auth::verify(&mut req, env, cfg, 0).await?;
    let mut resp = filter_object::call(env, "/snapshot", Method::Get, None).await?;
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
    let mut resp =
        filter_object::call(env, &format!("/additions{query}"), Method::Get, None).await?;
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
    let body =
        serde_json::to_vec(&op).map_err(|e| ApiError::Internal(format!("subscribe op: {e}")))?;
    filter_object::call(env, "/subscribe", Method::Post, Some(body)).await
}

/// `POST /admin/v1/filter/rebuild`: starts a new filter version now.
pub async fn admin_rebuild(req: Request, env: &Env) -> ApiResult<Response> {
    auth::check_admin(&req, env)?;
    filter_object::call(env, "/rebuild", Method::Post, None).await
}

/// `POST /__debug/filter/insert` `{"siis": [...]}`: inserts SIIs into the
/// own filter without the mapping flow (tests of the routing protocol).
pub async fn debug_insert(mut req: Request, env: &Env) -> ApiResult<Response> {
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
    let additions = filter_object::insert_digests(env, &digests).await?;
    crate::edge::http::routes::json_ok(&json!({ "additions": additions }))
}

/// `GET /__debug/peer-filters[?sii=…]`: this GP's copy of each peer's
/// filter (version, cursor, bits) and whether it matches the SII.
pub async fn debug_peer_filters(req: Request, env: &Env, cfg: &GpConfig) -> ApiResult<Response> {
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
    crate::edge::http::routes::json_ok(&json!({ "gp": cfg.id, "peers": out }))
}

// --------------------------------------------------------------- subscriber

/// What this GP knows about its copy of one peer's filter (KV `meta`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PeerMeta {
    pub version: u64,
    /// The batch the stored snapshot contains.
    pub snap_seq: u64,
    /// The last batch applied (the subscription cursor).
    pub seq: u64,
    pub chunks: u32,
    /// Batches stored on top of the snapshot, in order.
    pub batches: Vec<u64>,
    pub updated_ms: u64,
}

/// A peer's filter as this isolate holds it.
#[derive(Clone)]
pub struct CachedPeer {
    pub meta: PeerMeta,
    pub filter: Filter,
    checked_ms: u64,
}

thread_local! {
    static PEER_FILTERS: RefCell<HashMap<String, CachedPeer>> = RefCell::new(HashMap::new());
}

fn kv(env: &Env) -> ApiResult<worker::KvStore> {
    env.kv("FILTERS").internal("FILTERS binding")
}

fn kv_err<T>(r: Result<T, worker::KvError>, ctx: &str) -> ApiResult<T> {
    r.map_err(|e| ApiError::Internal(format!("{ctx}: {e}")))
}

fn meta_key(peer: &str) -> String {
    format!("peer-filter/{peer}/meta")
}

fn chunk_key(peer: &str, m: &PeerMeta, i: u32) -> String {
    format!("peer-filter/{peer}/v{}/s{}/{i}", m.version, m.snap_seq)
}

fn batch_key(peer: &str, version: u64, seq: u64) -> String {
    format!("peer-filter/{peer}/v{version}/a{seq}")
}

async fn read_meta(env: &Env, peer: &str) -> ApiResult<Option<PeerMeta>> {
    let text = kv_err(kv(env)?.get(&meta_key(peer)).text().await, "kv meta")?;
    Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
}

/// Loads a peer's copy from KV (snapshot + batches).
async fn load_from_kv(env: &Env, peer: &str, meta: &PeerMeta) -> ApiResult<Filter> {
    let store = kv(env)?;
    let mut bytes = Vec::new();
    for i in 0..meta.chunks {
        let chunk = kv_err(
            store.get(&chunk_key(peer, meta, i)).bytes().await,
            "kv chunk",
        )?
        .ok_or_else(|| ApiError::Internal(format!("peer {peer} snapshot chunk {i} missing")))?;
        bytes.extend_from_slice(&chunk);
    }
    let mut filter = Filter::from_bytes(&bytes)
        .map_err(|e| ApiError::Internal(format!("stored filter of {peer}: {e}")))?;
    for seq in &meta.batches {
        if let Some(b) = kv_err(
            store
                .get(&batch_key(peer, meta.version, *seq))
                .bytes()
                .await,
            "kv batch",
        )? {
            if let Ok(batch) = decode_additions(&b) {
                let _ = filter.apply(&batch.indices);
            }
        }
    }
    Ok(filter)
}

/// This isolate's copy of a peer's filter, refreshed from KV when older
/// than [`PEER_CACHE_MS`] (one small KV read; the bits are re-read only
/// when the peer's cursor moved). `None` until the first snapshot arrived.
pub async fn peer_filter(env: &Env, peer: &str) -> ApiResult<Option<CachedPeer>> {
    let now = Date::now().as_millis();
    let cached = PEER_FILTERS.with(|m| m.borrow().get(peer).cloned());
    if let Some(c) = &cached {
        if now.saturating_sub(c.checked_ms) < PEER_CACHE_MS {
            return Ok(cached);
        }
    }
    let Some(meta) = read_meta(env, peer).await? else {
        return Ok(cached);
    };
    let fresh = match cached {
        Some(mut c) if c.meta.version == meta.version && c.meta.seq >= meta.seq => {
            c.checked_ms = now;
            c
        }
        _ => CachedPeer {
            filter: load_from_kv(env, peer, &meta).await?,
            meta,
            checked_ms: now,
        },
    };
    remember(peer, fresh.clone());
    Ok(Some(fresh))
}

/// Whether this GP's copy of `peer`'s filter says the peer may hold the SII
/// with this digest (draft §8.1: "each GP will basically have a boolean
/// value for each SII which says whether that SII might exist, or
/// definitively does not exist, on another GP"). On a warm isolate this is
/// a memory lookup (no KV read, no copy of the bits); `None` while no copy
/// of the peer's filter exists yet.
pub async fn peer_may_hold(env: &Env, peer: &str, digest: &[u8; 32]) -> ApiResult<Option<bool>> {
    let now = Date::now().as_millis();
    let warm = PEER_FILTERS.with(|m| {
        m.borrow()
            .get(peer)
            .filter(|c| now.saturating_sub(c.checked_ms) < PEER_CACHE_MS)
            .map(|c| c.filter.contains(digest))
    });
    if warm.is_some() {
        return Ok(warm);
    }
    Ok(peer_filter(env, peer)
        .await?
        .map(|c| c.filter.contains(digest)))
}

fn remember(peer: &str, c: CachedPeer) {
    PEER_FILTERS.with(|m| {
        m.borrow_mut().insert(peer.to_string(), c);
    });
}

/// Stores `filter` as the peer's snapshot at cursor `seq`.
async fn store_snapshot(env: &Env, peer: &str, filter: &Filter, seq: u64) -> ApiResult<PeerMeta> {
    let bytes = filter.to_bytes();
    let old = read_meta(env, peer).await?;
    let meta = PeerMeta {
        version: filter.header().version,
        snap_seq: seq,
        seq,
        chunks: bytes.chunks(KV_CHUNK).count() as u32,
        batches: Vec::new(),
        updated_ms: Date::now().as_millis(),
    };
    let store = kv(env)?;
    for (i, chunk) in bytes.chunks(KV_CHUNK).enumerate() {
        kv_err(
            kv_err(
                store.put_bytes(&chunk_key(peer, &meta, i as u32), chunk),
                "kv put",
            )?
            .execute()
            .await,
            "kv put chunk",
        )?;
    }
    write_meta(env, peer, &meta).await?;
    // The previous generation's keys are garbage now (best effort).
    if let Some(old) = old {
        if old.version != meta.version || old.snap_seq != meta.snap_seq {
            for i in 0..old.chunks {
                let _ = store.delete(&chunk_key(peer, &old, i)).await;
            }
        }
        for s in &old.batches {
            let _ = store.delete(&batch_key(peer, old.version, *s)).await;
        }
    }
    remember(
        peer,
        CachedPeer {
            meta: meta.clone(),
            filter: filter.clone(),
            checked_ms: Date::now().as_millis(),
        },
    );
    Ok(meta)
}

async fn write_meta(env: &Env, peer: &str, meta: &PeerMeta) -> ApiResult<()> {
    let text =
        serde_json::to_string(meta).map_err(|e| ApiError::Internal(format!("meta json: {e}")))?;
    kv_err(
        kv_err(kv(env)?.put(&meta_key(peer), text), "kv put")?
            .execute()
            .await,
        "kv put meta",
    )
}

/// Fetches the peer's current snapshot, stores it, and subscribes to its
/// additions from the snapshot's cursor (draft §9: "fetch the newest one
/// and recreate their subscriptions").
pub async fn resync(env: &Env, cfg: &GpConfig, peer: &Peer) -> Result<PeerMeta, String> {
    let signer = Signer::from_env(env).map_err(|e| format!("{e:?}"))?;
    let mut last_err = String::new();
    // Twice: a rotation between the fetch and the subscribe means fetch again.
    for _ in 0..2 {
        let url = format!("{}/peer/v1/filter", peer.url.trim_end_matches('/'));
        let r =
            peer_auth::signed_fetch(&signer, Method::Get, &url, None, &[], PEER_TIMEOUT_MS).await?;
        if r.status != 200 {
            return Err(format!(
                "{url} answered {}: {}",
                r.status,
                String::from_utf8_lossy(r.body.get(..300).unwrap_or(&r.body))
            ));
        }
        if r.body.len() > MAX_SNAPSHOT {
            return Err(format!(
                "{url}: snapshot of {} bytes is too large",
                r.body.len()
            ));
        }
        let filter =
            Filter::from_bytes(&r.body).map_err(|e| format!("{url}: not a GLF2 filter: {e}"))?;
        let seq: u64 = r
            .headers
            .get("Glados-Filter-Seq")
            .ok()
            .flatten()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| format!("{url}: no Glados-Filter-Seq header"))?;
        let meta = store_snapshot(env, peer.id.as_str(), &filter, seq)
            .await
            .map_err(|e| format!("{e:?}"))?;
        match subscribe_to(&signer, peer, meta.version, meta.seq).await {
            Ok(()) => return Ok(meta),
            Err(e) => last_err = e,
        }
    }
    let _ = cfg;
    Err(last_err)
}

/// Subscribes to `peer`'s version `version` after cursor `after`.
async fn subscribe_to(
    signer: &Signer,
    peer: &Peer,
    version: u64,
    after: u64,
) -> Result<(), String> {
    let url = format!(
        "{}/peer/v1/filter/subscriptions",
        peer.url.trim_end_matches('/')
    );
    let body = json!({ "version": version, "after": after }).to_string();
    let r = peer_auth::signed_fetch(
        signer,
        Method::Post,
        &url,
        Some((body.as_bytes(), "application/json")),
        &[],
        PEER_TIMEOUT_MS,
    )
    .await?;
    if (200..300).contains(&r.status) {
        Ok(())
    } else {
        Err(format!(
            "{url} answered {}: {}",
            r.status,
            String::from_utf8_lossy(r.body.get(..300).unwrap_or(&r.body))
        ))
    }
}

/// Catch-up after being down (cron): resubscribe from the stored cursor;
/// the publisher then sends everything since. A version that ended (or
/// no copy yet) means a fresh snapshot.
pub async fn catch_up(env: &Env, cfg: &GpConfig, peer: &Peer) -> Result<String, String> {
    let meta = read_meta(env, &peer.id)
        .await
        .map_err(|e| format!("{e:?}"))?;
    if let Some(m) = meta {
        let signer = Signer::from_env(env).map_err(|e| format!("{e:?}"))?;
        if subscribe_to(&signer, peer, m.version, m.seq).await.is_ok() {
            return Ok(format!("resubscribed to v{} after {}", m.version, m.seq));
        }
    }
    let m = resync(env, cfg, peer).await?;
    Ok(format!("fetched v{} at {}", m.version, m.seq))
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
                Ok(m) => crate::edge::http::routes::json_ok(
                    &json!({ "resynced": m.version, "seq": m.seq }),
                ),
                // Acknowledge anyway: the old subscription is over either
                // way, and the cron's catch-up fetches the snapshot later.
                Err(e) => {
                    worker::console_error!("resync with {peer_id} failed: {e}");
                    crate::edge::http::routes::json_ok(&json!({ "resynced": null, "error": e }))
                }
            }
        }
        "additions" => {
            let Some(mut c) = current.filter(|c| c.meta.version == u.version) else {
                // Not the version we hold (lost state?): start over.
                let r = resync(env, cfg, &peer).await;
                return crate::edge::http::routes::json_ok(&json!({ "resynced": r.is_ok() }));
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
                c.meta.updated_ms = Date::now().as_millis();
                if c.meta.batches.len() >= COMPACT_BATCHES {
                    c.meta = store_snapshot(env, &peer_id, &c.filter, u.seq).await?;
                } else {
                    write_meta(env, &peer_id, &c.meta).await?;
                }
            }
            c.checked_ms = Date::now().as_millis();
            let seq = c.meta.seq;
            remember(&peer_id, c);
            crate::edge::http::routes::json_ok(
                &json!({ "seq": seq, "applied": batch.indices.len() }),
            )
        }
        other => Err(bad(format!("unknown update type {other:?}"))),
    }
}

/// The cron's federation work: rebuild the own filter when it is older
/// than `FILTER_REBUILD_HOURS` (0 = never), and catch up with every peer.
pub async fn cron(env: &Env, cfg: &GpConfig) {
    let hours: u64 = env
        .var("FILTER_REBUILD_HOURS")
        .ok()
        .and_then(|v| v.to_string().trim().parse().ok())
        .unwrap_or(168);
    if hours > 0 {
        match filter_object::current_info(env).await {
            Ok(info) => {
                let created = info
                    .get("created_at_ms")
                    .and_then(|v| v.as_u64())
                    .unwrap_or(0);
                if Date::now().as_millis().saturating_sub(created) >= hours * 3_600_000 {
                    match filter_object::call(env, "/rebuild", Method::Post, None).await {
                        Ok(_) => worker::console_log!("filter rebuilt (older than {hours} h)"),
                        Err(e) => worker::console_error!("filter rebuild failed: {:?}", e),
                    }
                }
            }
            Err(e) => worker::console_error!("filter check failed: {:?}", e),
        }
    }
    let results =
        futures_util::future::join_all(cfg.peers.iter().map(|p| catch_up(env, cfg, p))).await;
    for (p, r) in cfg.peers.iter().zip(results) {
        match r {
            Ok(s) => worker::console_log!("peer {}: {s}", p.id),
            Err(e) => worker::console_error!("peer {}: catch-up failed: {e}", p.id),
        }
    }
}
