//! The subscriber's side of the GP-to-GP routing protocol (draft §9): a
//! peer's manifest and partitions, subscribing to its additions, and the
//! cron that keeps every copy current. Each peer's `PeerCopy` object runs
//! these (ARCHITECTURE.md, "Routing table"); this module only talks HTTP.
//!
//! draft §9: "the other GPs need to fetch the newest one and recreate
//! their subscriptions" on rotation, and a subscription "allows a GP to
//! 'catch up' on changes it may have missed when disconnected": the cron
//! resubscribes from each copy's cursor.
use crate::core::filter::Filter;
use crate::edge::config::{GpConfig, Peer};
use crate::edge::outbound::peer::{signed_fetch, Signer, MAX_PEER_ANSWER};
use crate::edge::rpc::filter::{FilterClient, Manifest};
use crate::edge::rpc::routing::CopyClient;
use serde_json::json;
use worker::{Env, Method};

/// Timeout of publisher-side calls (manifest, partition, subscribe).
pub const PEER_TIMEOUT_MS: u32 = 10_000;
/// Most bytes of a manifest (a 1B-SII filter has ~1,200 partitions).
pub const MAX_MANIFEST: usize = 4 << 20;
/// Media types of the binary filter formats (core::filter::wire).
pub const GLF2_TYPE: &str = "application/vnd.glados.filter";
pub const GLA1_TYPE: &str = "application/vnd.glados.filter-additions";
/// Largest additions delivery accepted (200k indices are ~0.8 MB base64).
pub const MAX_UPDATE_BODY: usize = 4 << 20;

fn base(peer: &Peer) -> &str {
    peer.url.trim_end_matches('/')
}

fn answered(url: &str, status: u16, body: &[u8]) -> String {
    format!(
        "{url} answered {status}: {}",
        String::from_utf8_lossy(body.get(..300).unwrap_or(body))
    )
}

/// A peer's current manifest.
pub async fn fetch_manifest(signer: &Signer, peer: &Peer) -> Result<Manifest, String> {
    let url = format!("{}/peer/v1/filter", base(peer));
    let r = signed_fetch(
        signer,
        Method::Get,
        &url,
        None,
        &[],
        PEER_TIMEOUT_MS,
        MAX_MANIFEST,
    )
    .await?;
    if r.status != 200 {
        return Err(answered(&url, r.status, &r.body));
    }
    let m: Manifest =
        serde_json::from_slice(&r.body).map_err(|e| format!("{url}: not a manifest: {e}"))?;
    if m.gp != peer.id {
        return Err(format!("{url}: manifest names GP {:?}", m.gp));
    }
    let params = m
        .params
        .params()
        .map_err(|e| format!("{url}: manifest params: {e}"))?;
    if m.partition_bits > params.max_partition_bits()
        || m.partitions.len() as u64 != 1u64 << m.partition_bits
        || params.bits >> m.partition_bits > crate::core::filter::MAX_SPARSE_BITS
    {
        return Err(format!(
            "{url}: manifest partitions (2^{}) do not fit its filter",
            m.partition_bits
        ));
    }
    Ok(m)
}

/// What fetching a partition gave.
pub enum Fetched {
    Partition(Filter),
    /// The version is no longer current: start over.
    VersionEnded,
}

/// Partition `index` of version `m.version`, size-capped while it streams
/// at its dense size, and checked against the manifest.
pub async fn fetch_partition(
    signer: &Signer,
    peer: &Peer,
    m: &Manifest,
    index: u32,
) -> Result<Fetched, String> {
    let url = format!(
        "{}/peer/v1/filter/partitions/{index}?version={}",
        base(peer),
        m.version
    );
    let bits = m.params.bits >> m.partition_bits;
    let cap = (bits / 8) as usize + 1024;
    let r = signed_fetch(signer, Method::Get, &url, None, &[], PEER_TIMEOUT_MS, cap).await?;
    if r.status == 409 {
        return Ok(Fetched::VersionEnded);
    }
    if r.status != 200 {
        return Err(answered(&url, r.status, &r.body));
    }
    let f = Filter::from_bytes(&r.body).map_err(|e| format!("{url}: not a GLF2 partition: {e}"))?;
    let part = f.partition_id();
    if f.header().version != m.version
        || crate::core::filter::ParamsDoc::from(f.params()) != m.params
        || part.bits != m.partition_bits
        || part.index != index
    {
        return Err(format!(
            "{url}: partition {}/{} of v{} does not match the manifest",
            part.index,
            part.bits,
            f.header().version
        ));
    }
    Ok(Fetched::Partition(f))
}

/// What a subscription request gave.
pub enum Subscribed {
    Yes,
    /// The version is no longer current.
    VersionEnded,
}

/// Subscribes to `peer`'s version `version` after cursor `after`.
pub async fn subscribe(
    signer: &Signer,
    peer: &Peer,
    version: u64,
    after: u64,
) -> Result<Subscribed, String> {
    let url = format!("{}/peer/v1/filter/subscriptions", base(peer));
    let body = json!({ "version": version, "after": after }).to_string();
    let r = signed_fetch(
        signer,
        Method::Post,
        &url,
        Some((body.as_bytes(), "application/json")),
        &[],
        PEER_TIMEOUT_MS,
        MAX_PEER_ANSWER,
    )
    .await?;
    match r.status {
        200..=299 => Ok(Subscribed::Yes),
        409 => Ok(Subscribed::VersionEnded),
        s => Err(answered(&url, s, &r.body)),
    }
}

/// How long the cron lets each copy work before answering.
const CRON_BUDGET_MS: u64 = 20_000;

/// The cron's federation work: rebuild the own filter when it is older
/// than `FILTER_REBUILD_HOURS` (0 = never) or holds more SIIs than it was
/// sized for, and catch up with every peer.
pub async fn cron(env: &Env, cfg: &GpConfig) {
    let hours = cfg.filter_rebuild_hours;
    match FilterClient::new(env).info().await {
        Ok(info) => {
            let num = |k: &str| info.get(k).and_then(|v| v.as_f64());
            let created = num("created_at_ms").unwrap_or(0.0) as u64;
            let old = hours > 0
                && crate::edge::clock::now_ms().saturating_sub(created) >= hours * 3_600_000;
            // More SIIs than it was sized for: its fp rate is past the target.
            let outgrown = num("estimated_siis")
                .zip(num("sized_for"))
                .is_some_and(|(n, cap)| n > cap);
            let running = info.get("rebuild").is_some_and(|r| !r.is_null());
            if (old || outgrown) && !running {
                match FilterClient::new(env).rebuild().await {
                    Ok(r) => worker::console_log!(
                        "filter rebuild ({}): {}",
                        if outgrown { "outgrown" } else { "due" },
                        r.status_code()
                    ),
                    Err(e) => worker::console_error!("filter rebuild failed: {:?}", e),
                }
            }
        }
        Err(e) => worker::console_error!("filter check failed: {:?}", e),
    }
    // Six at a time (a request's concurrent subrequests).
    for group in cfg.peers.chunks(6) {
        let results = futures_util::future::join_all(group.iter().map(|p| async move {
            CopyClient::new(env, cfg, &p.id)
                .catch_up(CRON_BUDGET_MS)
                .await
        }))
        .await;
        for (p, r) in group.iter().zip(results) {
            match r {
                Ok(s) => worker::console_log!(
                    "peer {}: {} v{:?} seq {}",
                    p.id,
                    s.status,
                    s.version,
                    s.seq
                ),
                Err(e) => worker::console_error!("peer {}: catch-up failed: {e:?}", p.id),
            }
        }
    }
    // The routing table's capacity with the copies as they now stand.
    match crate::edge::routing::copies::directory(env, cfg).await {
        Ok(dir) => match crate::edge::routing::copies::capacity(cfg, &dir) {
            (_, "ok") => {}
            (bytes, verdict) => worker::console_error!(
                "routing table {verdict}: a routing value is about {bytes} bytes at \
                 ROUTING_PARTITION_BITS={} (ROUTING_CACHE_MB={}, KV's cap 25 MiB): raise ROUTING_PARTITION_BITS",
                cfg.routing_partition_bits,
                cfg.routing_cache_mb
            ),
        },
        Err(e) => worker::console_error!("routing capacity check: {e:?}"),
    }
}
