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

use crate::core::filter::{decode_additions, Filter};
use crate::edge::http::error::{ApiError, ApiResult, OrInternal};
use crate::edge::stats;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::collections::HashMap;
use worker::Env;

/// KV value size used for snapshot chunks (KV's cap is 25 MiB).
pub const KV_CHUNK: usize = 20 << 20;
/// Largest peer snapshot accepted into one isolate (its memory is 128 MB);
/// bigger filters need the partitioned layout (ARCHITECTURE.md, Scale).
pub const MAX_SNAPSHOT: usize = 32 << 20;
/// Largest additions delivery accepted (200k indices are ~0.8 MB base64).
pub const MAX_UPDATE_BODY: usize = 4 << 20;
/// Batches kept on top of a stored snapshot before it is rewritten.
pub const COMPACT_BATCHES: usize = 32;
/// How long an isolate uses its copy before re-reading the (cheap) meta key.
pub const PEER_CACHE_MS: u64 = 1_000;
/// Timeout of publisher-side calls (snapshot, subscribe).
pub const PEER_TIMEOUT_MS: u32 = 5_000;
/// Media types of the binary filter formats (core::filter::wire).
pub const GLF2_TYPE: &str = "application/vnd.glados.filter";
pub const GLA1_TYPE: &str = "application/vnd.glados.filter-additions";

// ---------------------------------------------------------------- publisher

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
    pub checked_ms: u64,
}

thread_local! {
    static PEER_FILTERS: RefCell<HashMap<String, CachedPeer>> = RefCell::new(HashMap::new());
}

pub fn kv(env: &Env) -> ApiResult<worker::KvStore> {
    env.kv("FILTERS").internal("FILTERS binding")
}

pub fn kv_err<T>(r: Result<T, worker::KvError>, ctx: &str) -> ApiResult<T> {
    r.map_err(|e| ApiError::Internal(format!("{ctx}: {e}")))
}

pub fn meta_key(peer: &str) -> String {
    format!("peer-filter/{peer}/meta")
}

pub fn chunk_key(peer: &str, m: &PeerMeta, i: u32) -> String {
    format!("peer-filter/{peer}/v{}/s{}/{i}", m.version, m.snap_seq)
}

pub fn batch_key(peer: &str, version: u64, seq: u64) -> String {
    format!("peer-filter/{peer}/v{version}/a{seq}")
}

pub async fn read_meta(env: &Env, peer: &str) -> ApiResult<Option<PeerMeta>> {
    stats::count(|s| s.kv_reads += 1);
    let text = kv_err(kv(env)?.get(&meta_key(peer)).text().await, "kv meta")?;
    Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
}

/// Loads a peer's copy from KV (snapshot + batches).
pub async fn load_from_kv(env: &Env, peer: &str, meta: &PeerMeta) -> ApiResult<Filter> {
    let store = kv(env)?;
    let mut bytes = Vec::new();
    for i in 0..meta.chunks {
        stats::count(|s| s.kv_reads += 1);
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
        stats::count(|s| s.kv_reads += 1);
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
    let now = crate::edge::clock::now_ms();
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
    let now = crate::edge::clock::now_ms();
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

pub fn remember(peer: &str, c: CachedPeer) {
    PEER_FILTERS.with(|m| {
        m.borrow_mut().insert(peer.to_string(), c);
    });
}

/// Stores `filter` as the peer's snapshot at cursor `seq`.
pub async fn store_snapshot(
    env: &Env,
    peer: &str,
    filter: &Filter,
    seq: u64,
) -> ApiResult<PeerMeta> {
    let bytes = filter.to_bytes();
    let old = read_meta(env, peer).await?;
    let meta = PeerMeta {
        version: filter.header().version,
        snap_seq: seq,
        seq,
        chunks: bytes.chunks(KV_CHUNK).count() as u32,
        batches: Vec::new(),
        updated_ms: crate::edge::clock::now_ms(),
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
            checked_ms: crate::edge::clock::now_ms(),
        },
    );
    Ok(meta)
}

pub async fn write_meta(env: &Env, peer: &str, meta: &PeerMeta) -> ApiResult<()> {
    let text =
        serde_json::to_string(meta).map_err(|e| ApiError::Internal(format!("meta json: {e}")))?;
    kv_err(
        kv_err(kv(env)?.put(&meta_key(peer), text), "kv put")?
            .execute()
            .await,
        "kv put meta",
    )
}
