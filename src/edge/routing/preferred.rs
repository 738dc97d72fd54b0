//! The batched §8.2.1 check of a bulk upload (draft §8.3) across GPs:
//! for each SII, the preferred holder on a peer GP, if any. The peers
//! asked are exactly those whose filter copies may hold the SII (as for a
//! query), each once per [`MAX_PREFERRED_SIIS`] SIIs (`/peer/v1/preferred`),
//! all at once. Best effort, as the holder check of a code confirmation:
//! a peer that is down, slow or answers garbage finds nothing (logged).

use crate::core::mapping::{select_preferred, Candidate};
use crate::core::Sii;
use crate::edge::api::peer::preferred::{
    PreferredAnswer, PreferredAsk, MAX_PREFERRED_SIIS, PREFERRED_PATH,
};
use crate::edge::config::GpConfig;
use crate::edge::outbound::peer::{signed_fetch, Signer};
use crate::edge::routing::fanout::matching_peers;
use crate::edge::stats;
use std::collections::HashMap;
use worker::{Env, Method};

/// A peer has this long to answer one batch.
const PREFERRED_TIMEOUT_MS: u32 = 5_000;
/// Most bytes read of one answer (2,000 mappings of ~300 bytes).
const MAX_PREFERRED_ANSWER: usize = 2 << 20;

/// The preferred holder on a peer GP of each SII that has one.
pub async fn preferred_on_peers(
    env: &Env,
    cfg: &GpConfig,
    siis: &[Sii],
) -> HashMap<String, Candidate> {
    let mut per_peer: HashMap<String, Vec<&Sii>> = HashMap::new();
    for sii in siis {
        for p in matching_peers(env, cfg, sii).await {
            per_peer.entry(p.id.clone()).or_default().push(sii);
        }
    }
    if per_peer.is_empty() {
        return HashMap::new();
    }
    let signer = match Signer::from_env(env) {
        Ok(s) => s,
        Err(e) => {
            worker::console_error!("bulk holder check: {e:?}");
            return HashMap::new();
        }
    };
    let mut batches = Vec::new();
    for (peer, list) in &per_peer {
        for chunk in list.chunks(MAX_PREFERRED_SIIS) {
            batches.push((peer.as_str(), chunk));
        }
    }
    let asks = batches
        .iter()
        .map(|(peer, chunk)| ask(cfg, &signer, peer, chunk));
    let mut found: HashMap<String, Vec<Candidate>> = HashMap::new();
    for (peer, answer) in batches
        .iter()
        .map(|(p, _)| *p)
        .zip(futures_util::future::join_all(asks).await)
    {
        match answer {
            Ok(holders) => {
                for (sii, c) in holders {
                    found.entry(sii).or_default().push(c);
                }
            }
            Err(e) => worker::console_error!("bulk holder check at {peer}: {e}"),
        }
    }
    found
        .into_iter()
        .filter_map(|(sii, cs)| select_preferred(&cs).cloned().map(|c| (sii, c)))
        .collect()
}

/// One signed batch to one peer: the SIIs it holds, each with its
/// candidate, which must be the peer's own (draft §8.1: a GP answers for
/// its local mappings only).
async fn ask(
    cfg: &GpConfig,
    signer: &Signer,
    peer_id: &str,
    siis: &[&Sii],
) -> Result<Vec<(String, Candidate)>, String> {
    let Some(peer) = cfg.peers.iter().find(|p| p.id == peer_id) else {
        return Ok(Vec::new());
    };
    stats::count(|s| s.peer_preferred_batches_sent += 1);
    let body = serde_json::to_vec(&PreferredAsk {
        siis: siis.iter().map(|s| s.to_string()).collect(),
    })
    .map_err(|e| e.to_string())?;
    let url = format!("{}{PREFERRED_PATH}", peer.url.trim_end_matches('/'));
    let r = signed_fetch(
        signer,
        Method::Post,
        &url,
        Some((&body, "application/json")),
        &[],
        PREFERRED_TIMEOUT_MS,
        MAX_PREFERRED_ANSWER,
    )
    .await?;
    if r.status != 200 {
        return Err(format!("HTTP {}", r.status));
    }
    let a: PreferredAnswer =
        serde_json::from_slice(&r.body).map_err(|e| format!("unreadable answer: {e}"))?;
    if a.gp != peer.id {
        return Err(format!("answer names GP {:?}", a.gp));
    }
    let asked: std::collections::HashSet<String> = siis.iter().map(|s| s.to_string()).collect();
    Ok(a.preferred
        .into_iter()
        .filter(|h| h.candidate.gp == peer.id && asked.contains(&h.sii))
        .map(|h| (h.sii, h.candidate))
        .collect())
}
