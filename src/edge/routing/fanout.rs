//! The routed query (draft §8.1): which peers' filters may hold an SII, asking exactly those, signed, in parallel with this GP's own shard, and combining the answers.
use crate::edge::rpc::shard::Shard;

use crate::core::query::{combine, GpAnswer, PeerAnswer, PeerOutcome, Query, Reported};
use crate::core::Sii;
use crate::edge::config::{GpConfig, Peer};
use crate::edge::http::error::ApiResult;
use crate::edge::outbound::peer::Signer;
use crate::edge::routing::copies::{self, Verdict};
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

/// How the routing table routes one SII: the peers to ask (with a note
/// when asked without a filter verdict) and those it cannot route to.
pub struct Routed<'c> {
    pub ask: Vec<(&'c Peer, Option<String>)>,
    pub unreadable: Vec<(&'c Peer, String)>,
}

/// Routes one SII through the routing table (ARCHITECTURE.md, "Routing
/// table"): at most one KV read and no Durable Object request on a warm
/// isolate.
pub async fn route<'c>(env: &Env, cfg: &'c GpConfig, sii: &Sii) -> Routed<'c> {
    let verdicts = copies::verdicts(env, cfg, &sii.hash()).await;
    let mut out = Routed {
        ask: Vec::new(),
        unreadable: Vec::new(),
    };
    for (p, v) in cfg.peers.iter().zip(verdicts) {
        match v {
            Verdict::No => {}
            Verdict::Maybe => out.ask.push((p, None)),
            Verdict::Ask(why) => out.ask.push((p, Some(why))),
            Verdict::Unreadable(why) => {
                worker::console_error!("routing to peer {}: {why}", p.id);
                out.unreadable.push((p, why));
            }
        }
    }
    out
}

/// Peers whose filter copy says they may hold the SII, and peers this GP
/// has no readable routing data for (draft §8.1: without it,
/// "definitively does NOT exist" is unknown): where claims go, so none is
/// missed. Queries use [`route`], which tells the two apart.
pub async fn matching_peers<'c>(env: &Env, cfg: &'c GpConfig, sii: &Sii) -> Vec<&'c Peer> {
    let r = route(env, cfg, sii).await;
    let mut out: Vec<&Peer> = r.ask.into_iter().map(|(p, _)| p).collect();
    out.extend(r.unreadable.into_iter().map(|(p, _)| p));
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
/// parallel (the own shard is asked while the routing table is read).
/// Also used by mapping creation to find a remote holder (a
/// [`Query::plain`]: no statements).
pub async fn resolve(
    env: &Env,
    cfg: &GpConfig,
    query: &Query,
) -> ApiResult<crate::core::query::QueryResult> {
    let body = json!(query.peer_body()).to_string().into_bytes();
    let remote = async {
        let routed = route(env, cfg, &query.sii).await;
        let signer = if routed.ask.is_empty() {
            None
        } else {
            Signer::from_env(env)
                .map_err(|e| worker::console_error!("peer query: {e:?}"))
                .ok()
        };
        let asks = futures_util::future::join_all(
            routed
                .ask
                .iter()
                .map(|(p, _)| ask_peer(signer.as_deref(), p, query, body.as_slice())),
        )
        .await;
        (routed, asks)
    };
    let (local, (routed, outcomes)) =
        futures_util::future::join(lookup(env, cfg, query), remote).await;
    let mut answers = routed
        .ask
        .iter()
        .map(|(p, _)| p.id.clone())
        .zip(outcomes)
        .collect::<Vec<_>>();
    for (gp, o) in &answers {
        if let PeerOutcome::Failed(why) = o {
            worker::console_log!("query: peer {gp} failed: {why}");
        }
    }
    answers.extend(routed.unreadable.iter().map(|(p, why)| {
        (
            p.id.clone(),
            PeerOutcome::NotAsked(format!("routing: {why}")),
        )
    }));
    let mut result = combine(local?, answers);
    result.unfiltered = routed
        .ask
        .iter()
        .filter_map(|(p, why)| why.clone().map(|w| (p.id.clone(), w)))
        .collect();
    if !result.unfiltered.is_empty() {
        stats::count(|s| s.peer_queries_unfiltered += result.unfiltered.len() as u64);
    }
    Ok(result)
}
