//! Keeping the peers' filter copies current (draft §9): subscribing, full resync, catch-up after downtime, and the cron tick.
use crate::edge::routing::copies::PeerMeta;
use crate::edge::routing::copies::{read_meta, store_snapshot, MAX_SNAPSHOT, PEER_TIMEOUT_MS};
use crate::edge::rpc::filter::FilterClient;

use crate::core::filter::Filter;
use crate::edge::config::{GpConfig, Peer};
use crate::edge::outbound::peer::Signer;
use serde_json::json;
use worker::{Env, Method};

/// Fetches the peer's current snapshot, stores it, and subscribes to its
/// additions from the snapshot's cursor (draft §9: "fetch the newest one
/// and recreate their subscriptions").
pub async fn resync(env: &Env, cfg: &GpConfig, peer: &Peer) -> Result<PeerMeta, String> {
    let signer = Signer::from_env(env).map_err(|e| format!("{e:?}"))?;
    let mut last_err = String::new();
    // Twice: a rotation between the fetch and the subscribe means fetch again.
    for _ in 0..2 {
        let url = format!("{}/peer/v1/filter", peer.url.trim_end_matches('/'));
        // Read at most MAX_SNAPSHOT bytes, as they stream (issue 14 item 10).
        let r = crate::edge::outbound::peer::signed_fetch(
            &signer,
            Method::Get,
            &url,
            None,
            &[],
            PEER_TIMEOUT_MS,
            MAX_SNAPSHOT,
        )
        .await?;
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
    let r = crate::edge::outbound::peer::signed_fetch(
        signer,
        Method::Post,
        &url,
        Some((body.as_bytes(), "application/json")),
        &[],
        PEER_TIMEOUT_MS,
        crate::edge::outbound::peer::MAX_PEER_ANSWER,
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

/// The cron's federation work: rebuild the own filter when it is older
/// than `FILTER_REBUILD_HOURS` (0 = never), and catch up with every peer.
pub async fn cron(env: &Env, cfg: &GpConfig) {
    let hours = cfg.filter_rebuild_hours;
    if hours > 0 {
        match FilterClient::new(env).info().await {
            Ok(info) => {
                let created = info
                    .get("created_at_ms")
                    .and_then(|v| v.as_u64())
                    .unwrap_or(0);
                if crate::edge::clock::now_ms().saturating_sub(created) >= hours * 3_600_000 {
                    match FilterClient::new(env).rebuild().await {
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
