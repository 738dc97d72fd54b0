//! `POST /peer/v1/preferred`: a peer GP's batched §8.2.1 check before it
//! stores a bulk upload (draft §8.3): which of these SIIs have a preferred
//! mapping here, answered from this GP's own mappings only (draft §8.1:
//! "consult only their local mappings"), one shard request per shard
//! touched. One signed request carries up to [`MAX_PREFERRED_SIIS`] SIIs, so
//! a 100,000-line upload costs a few requests per peer, not one per line.

use crate::core::mapping::Candidate;
use crate::core::shard::shard_of;
use crate::core::Sii;
use crate::edge::auth::peer as peer_auth;
use crate::edge::config::GpConfig;
use crate::edge::http::error::{ApiError, ApiResult};
use crate::edge::http::request::Request;
use crate::edge::rpc::shard::Shard;
use crate::edge::stats;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use worker::{Env, Response};

/// Most SIIs in one request.
pub const MAX_PREFERRED_SIIS: usize = 2_000;
/// Its body: 2,000 SIIs of at most ~256 bytes, quoted.
const MAX_PREFERRED_BODY: usize = 640 << 10;
/// The remote side's path.
pub const PREFERRED_PATH: &str = "/peer/v1/preferred";

/// The request.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreferredAsk {
    pub siis: Vec<String>,
}

/// One SII this GP holds a preferred mapping for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PreferredMapping {
    pub sii: String,
    pub candidate: Candidate,
}

/// The answer: the answering GP and its preferred mapping of each SII it
/// holds one for.
#[derive(Debug, Serialize, Deserialize)]
pub struct PreferredAnswer {
    pub gp: String,
    pub preferred: Vec<PreferredMapping>,
}

/// `POST /peer/v1/preferred`.
pub async fn serve(mut req: Request, env: &Env, cfg: &GpConfig) -> ApiResult<Response> {
    stats::count(|s| s.peer_preferred_batches_received += 1);
    let (_peer, body) = peer_auth::verify(&mut req, env, cfg, MAX_PREFERRED_BODY).await?;
    let ask: PreferredAsk = super::parse(&body, "invalid-json", "Invalid JSON body", "JSON body")?;
    if ask.siis.len() > MAX_PREFERRED_SIIS {
        return Err(ApiError::client(
            413,
            "too-many-siis",
            "Too many SIIs",
            format!(
                "{} SIIs in one request; at most {MAX_PREFERRED_SIIS}",
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
    let mut preferred = Vec::new();
    for found in futures_util::future::join_all(asks).await {
        for (sii, mapping) in found? {
            if let Some(m) = mapping {
                preferred.push(PreferredMapping {
                    sii: sii.to_string(),
                    candidate: Candidate::of(&cfg.id, &m),
                });
            }
        }
    }
    crate::edge::http::respond::json_ok(&PreferredAnswer {
        gp: cfg.id.clone(),
        preferred,
    })
}
