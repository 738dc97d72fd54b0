//! `POST /peer/v1/holders`: a peer GP's batched §8.2.1 check before it
//! stores a bulk upload (draft §8.3): which of these SIIs have a preferred
//! mapping here, answered from this GP's own mappings only (draft §8.1:
//! "consult only their local mappings"), one shard request per shard
//! touched. One signed request carries up to [`MAX_HOLDER_SIIS`] SIIs, so
//! a 100,000-line upload costs a few requests per peer, not one per line.

use crate::core::mapping::Candidate;
use crate::core::shard::shard_of;
use crate::core::Sii;
use crate::edge::auth::peer as peer_auth;
use crate::edge::config::GpConfig;
use crate::edge::http::error::{ApiError, ApiResult};
use crate::edge::rpc::shard::Shard;
use crate::edge::stats;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use worker::{Env, Request, Response};

/// Most SIIs in one request.
pub const MAX_HOLDER_SIIS: usize = 2_000;
/// Its body: 2,000 SIIs of at most ~256 bytes, quoted.
const MAX_HOLDERS_BODY: usize = 640 << 10;
/// The remote side's path.
pub const HOLDERS_PATH: &str = "/peer/v1/holders";

/// The request.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HoldersAsk {
    pub siis: Vec<String>,
}

/// One SII this GP holds a preferred mapping for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Holder {
    pub sii: String,
    pub candidate: Candidate,
}

/// The answer: the answering GP and the SIIs it holds.
#[derive(Debug, Serialize, Deserialize)]
pub struct HoldersAnswer {
    pub gp: String,
    pub holders: Vec<Holder>,
}

/// `POST /peer/v1/holders`.
pub async fn serve(mut req: Request, env: &Env, cfg: &GpConfig) -> ApiResult<Response> {
    stats::count(|s| s.peer_holder_batches_received += 1);
    let (_peer, body) = peer_auth::verify(&mut req, env, cfg, MAX_HOLDERS_BODY).await?;
    let ask: HoldersAsk = super::parse(&body, "invalid-json", "Invalid JSON body", "JSON body")?;
    if ask.siis.len() > MAX_HOLDER_SIIS {
        return Err(ApiError::client(
            413,
            "too-many-siis",
            "Too many SIIs",
            format!(
                "{} SIIs in one request; at most {MAX_HOLDER_SIIS}",
                ask.siis.len()
            ),
        ));
    }
    let mut by_shard: BTreeMap<u32, Vec<Sii>> = BTreeMap::new();
    for s in &ask.siis {
        let sii = Sii::parse(s)?;
        by_shard
            .entry(shard_of(&sii, cfg.mapping_shards))
            .or_default()
            .push(sii);
    }
    let asks = by_shard.iter().map(|(shard, siis)| async move {
        let found = Shard::at(env, cfg, *shard).preferred(siis).await?;
        Ok::<_, ApiError>(siis.iter().zip(found).collect::<Vec<_>>())
    });
    let mut holders = Vec::new();
    for found in futures_util::future::join_all(asks).await {
        for (sii, mapping) in found? {
            if let Some(m) = mapping {
                holders.push(Holder {
                    sii: sii.to_string(),
                    candidate: Candidate::of(&cfg.id, &m),
                });
            }
        }
    }
    crate::edge::http::respond::json_ok(&HoldersAnswer {
        gp: cfg.id.clone(),
        holders,
    })
}
