//! The routed query (draft §8.1): which peers' filters may hold an SII, asking exactly those, signed, in parallel with this GP's own shard, and combining the answers.
use crate::edge::rpc::shard::Shard;

use crate::core::query::{combine, GpAnswer, PeerAnswer, PeerOutcome, Query, Reported};
use crate::core::Sii;
use crate::edge::config::{GpConfig, Peer};
use crate::edge::http::error::ApiResult;
use crate::edge::outbound::peer::Signer;
use crate::edge::routing::copies;
use crate::edge::stats;
use serde_json::json;
use worker::{Env, Method};

/// Per-peer timeout: a slow peer makes the answer incomplete, not late.
const PEER_QUERY_TIMEOUT_MS: u32 = 1_500;

/// The remote side's path.
pub const PEER_QUERY_PATH: &str = "/peer/v1/query";

/// This GP's own answer to `query`: one shard request and, when the query
/// asks for statements, one per mapping answered: without a nonce the one
/// the shard keeps (signed there when none holds), with a nonce one signed
/// here for this query (ARCHITECTURE.md, "Signed mapping statements").
pub async fn lookup(env: &Env, cfg: &GpConfig, query: &Query) -> ApiResult<GpAnswer> {
    stats::count(|s| s.shard_lookups += 1);
    let sii = &query.sii;
    let kept = query.statements && query.nonce.is_none();
    let held = Shard::of(env, cfg, sii)
        .lookup(sii, query.all, kept)
        .await?;
    let mut mappings = Vec::with_capacity(held.mappings.len());
    for (i, m) in held.mappings.iter().enumerate() {
        let statement = match held.statements.get(i) {
            Some(Some(s)) if kept => Some(s.clone()),
            _ if query.statements => {
                crate::edge::statements::sign(env, cfg, sii, m, query.nonce.as_deref())?
            }
            _ => None,
        };
        mappings.push(Reported::of(&cfg.id, m, statement));
    }
    Ok(GpAnswer {
        mappings,
        opted_out: held.opted_out,
    })
}

/// Peers whose filter copy says they may hold the SII. A peer whose filter
/// this GP has not received yet (or cannot read) is asked too: without its
/// filter "definitively does NOT exist" (draft §8.1) is unknown.
pub async fn matching_peers<'c>(env: &Env, cfg: &'c GpConfig, sii: &Sii) -> Vec<&'c Peer> {
    let digest = sii.hash();
    let mut out = Vec::new();
    for p in &cfg.peers {
        match copies::peer_may_hold(env, &p.id, &digest).await {
            Ok(Some(false)) => {}
            Ok(_) => out.push(p),
            Err(e) => {
                worker::console_error!("filter of peer {}: {e:?}", p.id);
                out.push(p);
            }
        }
    }
    out
}

/// Asks one peer, signed, with a timeout. Never an error: whatever goes
/// wrong becomes a `Failed` outcome (the query is then incomplete).
async fn ask_peer(signer: Option<&Signer>, peer: &Peer, query: &Query, body: &[u8]) -> PeerOutcome {
    let Some(signer) = signer else {
        return PeerOutcome::Failed("this GP has no signing key (GP_SIGNING_KEY)".into());
    };
    stats::count(|s| s.peer_queries_sent += 1);
    let url = format!("{}{PEER_QUERY_PATH}", peer.url.trim_end_matches('/'));
    let resp = match crate::edge::outbound::peer::signed_fetch(
        signer,
        Method::Post,
        &url,
        Some((body, "application/json")),
        &[],
        PEER_QUERY_TIMEOUT_MS,
        crate::edge::outbound::peer::MAX_PEER_ANSWER,
    )
    .await
    {
        Ok(r) => r,
        Err(e) => return PeerOutcome::Failed(e),
    };
    if resp.status != 200 {
        return PeerOutcome::Failed(format!("HTTP {}", resp.status));
    }
    match serde_json::from_slice::<PeerAnswer>(&resp.body) {
        Ok(a) => match a.checked(&peer.id, query) {
            Ok(c) => PeerOutcome::Answered(c),
            Err(e) => PeerOutcome::Failed(e),
        },
        Err(e) => PeerOutcome::Failed(format!("unreadable answer: {e}")),
    }
}

/// The routed query for one SII: own mapping and the matching peers', in
/// parallel. Also used by mapping creation to find a remote holder (a
/// [`Query::plain`]: no statements).
pub async fn resolve(
    env: &Env,
    cfg: &GpConfig,
    query: &Query,
) -> ApiResult<crate::core::query::QueryResult> {
    let peers = matching_peers(env, cfg, &query.sii).await;
    let signer = if peers.is_empty() {
        None
    } else {
        Signer::from_env(env)
            .map_err(|e| worker::console_error!("peer query: {e:?}"))
            .ok()
    };
    let body = json!(query.peer_body()).to_string().into_bytes();
    let asks = futures_util::future::join_all(
        peers
            .iter()
            .map(|p| ask_peer(signer.as_deref(), p, query, body.as_slice())),
    );
    let (local, outcomes) = futures_util::future::join(lookup(env, cfg, query), asks).await;
    let answers = peers
        .iter()
        .map(|p| p.id.clone())
        .zip(outcomes)
        .collect::<Vec<_>>();
    for (gp, o) in &answers {
        if let PeerOutcome::Failed(why) = o {
            worker::console_log!("query: peer {gp} failed: {why}");
        }
    }
    Ok(combine(local?, answers))
}
