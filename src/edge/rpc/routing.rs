//! Messages to the routing objects and their typed clients
//! (ARCHITECTURE.md, "Routing table"):
//!
//! - `PeerCopy` (`PEER_COPY`, one per peer): the one writer of this GP's
//!   copy of that peer's filter — its sync, its cursor, its additions.
//! - `RoutingShard` (`ROUTING_SHARD`, `ROUTING_SHARDS` of them): owns a
//!   range of routing partitions, every peer's section of each, and is the
//!   one writer of their KV values.
//! - `RouteTable` (`ROUTE_TABLE`, one): the peers' routing states and the
//!   recent-additions overlay that isolates poll at most once a second.

use crate::core::filter::ParamsDoc;
use crate::edge::config::GpConfig;
use crate::edge::http::error::ApiResult;
use crate::edge::rpc::{unexpected, Object};
use serde::{Deserialize, Serialize};
use worker::Env;

/// One call to a routing object, counted apart (`do_requests_routing`).
async fn routing_call<O: Serialize, R: serde::de::DeserializeOwned>(
    obj: &Object,
    env: &Env,
    op: &O,
) -> Result<R, crate::edge::rpc::RpcError> {
    crate::edge::stats::count(|s| s.do_requests_routing += 1);
    obj.call(env, op).await
}

/// How far one peer's copy is, as `/v1/gp` and the isolates see it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PeerRoute {
    pub peer: String,
    /// `never` (no copy yet), `syncing` (first download), `current`,
    /// `rotating` (the peer started a new version, being downloaded: the
    /// one in use misses its additions), `switching` (a new version is
    /// being activated) or `error`.
    pub status: String,
    /// The filter version queries use.
    pub version: Option<u64>,
    pub params: Option<ParamsDoc>,
    /// The subscription cursor of that version.
    pub seq: u64,
    /// Bits set in this GP's copy (exact).
    pub bits_set: u64,
    /// The copy's false-positive rate, from its fill.
    pub estimated_fp_rate: Option<f64>,
    /// When an addition or a new version last changed the copy.
    pub updated_ms: u64,
    /// When the version in use was activated.
    pub activated_ms: u64,
    pub errors: u32,
    pub last_error: Option<String>,
    pub last_error_ms: u64,
    /// A download in progress: version, partitions done of all.
    pub sync: Option<SyncProgress>,
}

/// A download in progress.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SyncProgress {
    pub version: u64,
    /// The size of the filter being downloaded (its params' bits).
    #[serde(default)]
    pub bits: u64,
    pub partitions: u32,
    pub done: u32,
    pub started_ms: u64,
}

// ------------------------------------------------------------- PeerCopy

/// An operation of a peer's `PeerCopy`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum CopyOp {
    /// A publisher's additions delivery (base64 GLA1 of the batches
    /// `after+1 ..= seq` of `version`).
    Additions {
        peer: String,
        version: u64,
        after: u64,
        seq: u64,
        additions: String,
    },
    /// The publisher started `new_version`: download it.
    Rotated { peer: String, new_version: u64 },
    /// The cron: resubscribe from the cursor, or continue / start a
    /// download, working for at most `budget_ms` before answering.
    CatchUp { peer: String, budget_ms: u64 },
    /// The copy's state.
    State { peer: String },
}

/// A `PeerCopy`'s answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum CopyReply {
    /// Applied; the cursor is now `seq`.
    Applied {
        seq: u64,
    },
    /// The delivery starts after our cursor: send from `seq`.
    Gap {
        seq: u64,
    },
    /// A delivery for a version this copy no longer uses: ignored.
    Stale {
        version: u64,
    },
    /// A version this copy does not know: a download started.
    Resyncing,
    /// The delivery is malformed (a 400 to the publisher).
    Refused {
        detail: String,
    },
    State {
        state: PeerRoute,
    },
}

/// The typed client of one peer's copy.
pub struct CopyClient<'e> {
    env: &'e Env,
    obj: Object,
    peer: String,
}

impl<'e> CopyClient<'e> {
    pub fn new(env: &'e Env, cfg: &GpConfig, peer: &str) -> Self {
        CopyClient {
            env,
            obj: Object::new(
                "PEER_COPY",
                format!(
                    "peer/{}/{}/{peer}",
                    cfg.routing_partition_bits, cfg.routing_shards
                ),
            ),
            peer: peer.to_string(),
        }
    }

    pub async fn additions(
        &self,
        version: u64,
        after: u64,
        seq: u64,
        additions: String,
    ) -> ApiResult<CopyReply> {
        let op = CopyOp::Additions {
            peer: self.peer.clone(),
            version,
            after,
            seq,
            additions,
        };
        Ok(routing_call(&self.obj, self.env, &op).await?)
    }

    async fn state_of(&self, op: CopyOp, name: &'static str) -> ApiResult<PeerRoute> {
        match routing_call(&self.obj, self.env, &op).await? {
            CopyReply::State { state } => Ok(state),
            other => Err(unexpected(&self.obj, name, other).into()),
        }
    }

    pub async fn rotated(&self, new_version: u64) -> ApiResult<PeerRoute> {
        let op = CopyOp::Rotated {
            peer: self.peer.clone(),
            new_version,
        };
        self.state_of(op, "rotated").await
    }

    pub async fn catch_up(&self, budget_ms: u64) -> ApiResult<PeerRoute> {
        let op = CopyOp::CatchUp {
            peer: self.peer.clone(),
            budget_ms,
        };
        self.state_of(op, "catch_up").await
    }
}

// --------------------------------------------------------- RoutingShard

/// An operation of a `RoutingShard`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum RtOp {
    /// Sets global bits (base64 GLA1) of `peer`'s filter `version` in
    /// every section of this shard that holds them; a version with no
    /// section here yet is staged. With `stage`, only in staged sections
    /// (a download).
    Apply {
        peer: String,
        version: u64,
        params: ParamsDoc,
        additions: String,
        #[serde(default)]
        stage: bool,
    },
    /// ORs a dense bitmap (base64) of global bits `first_bit ..` into the
    /// staged sections of `version`.
    ApplyBitmap {
        peer: String,
        version: u64,
        params: ParamsDoc,
        first_bit: u64,
        bitmap: String,
    },
    /// Makes `version`'s staged sections the ones queries use (an empty
    /// section where nothing was staged) and drops older ones.
    Activate {
        peer: String,
        version: u64,
        params: ParamsDoc,
    },
    /// Drops `peer`'s staged sections (a download starting over).
    DropStaged { peer: String },
    /// Counters, for the tests.
    Stats,
}

/// What the shard client sends: the operation and which shard it is for
/// (an object does not know its own name).
#[derive(Debug, Serialize, Deserialize)]
pub struct RtCall {
    pub shard: u32,
    pub op: RtOp,
}

/// A `RoutingShard`'s answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum RtReply {
    /// Bits newly set in their canonical partition: in sections in use,
    /// and in staged ones.
    Applied {
        new_active: u64,
        new_staged: u64,
    },
    /// Bits set in the activated version's sections (canonical, exact).
    Activated {
        ones: u64,
    },
    Done,
    Stats {
        stats: serde_json::Value,
    },
}

/// The routing shard that owns routing partition `p`.
pub fn shard_of_partition(cfg: &GpConfig, p: u32) -> u32 {
    let s = cfg.routing_shards.trailing_zeros() as u8;
    let r = cfg.routing_partition_bits;
    if s == 0 {
        0
    } else {
        p >> (r - s)
    }
}

/// The partitions routing shard `i` owns.
pub fn partitions_of_shard(cfg: &GpConfig, i: u32) -> std::ops::Range<u32> {
    let per = ((1u64 << cfg.routing_partition_bits) / u64::from(cfg.routing_shards)) as u32;
    i * per..(i + 1) * per
}

/// The typed client of one routing shard.
pub struct RtClient<'e> {
    env: &'e Env,
    obj: Object,
    index: u32,
}

impl<'e> RtClient<'e> {
    pub fn new(env: &'e Env, cfg: &GpConfig, index: u32) -> Self {
        RtClient {
            env,
            obj: Object::new(
                "ROUTING_SHARD",
                format!(
                    "routing/{}/{}/{index}",
                    cfg.routing_partition_bits, cfg.routing_shards
                ),
            ),
            index,
        }
    }

    pub async fn call(&self, op: RtOp) -> ApiResult<RtReply> {
        let call = RtCall {
            shard: self.index,
            op,
        };
        Ok(routing_call(&self.obj, self.env, &call).await?)
    }

    pub async fn applied(&self, op: RtOp) -> ApiResult<(u64, u64)> {
        match self.call(op).await? {
            RtReply::Applied {
                new_active,
                new_staged,
            } => Ok((new_active, new_staged)),
            other => Err(unexpected(&self.obj, "apply", other).into()),
        }
    }

    pub async fn activate(&self, op: RtOp) -> ApiResult<u64> {
        match self.call(op).await? {
            RtReply::Activated { ones } => Ok(ones),
            other => Err(unexpected(&self.obj, "activate", other).into()),
        }
    }
}

// ----------------------------------------------------------- RouteTable

/// An operation of the `RouteTable`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum TableOp {
    /// Additions a `PeerCopy` has just applied in `shards` (base64 GLA1),
    /// with the copy's new state.
    Add {
        version: u64,
        additions: String,
        shards: Vec<u32>,
        state: PeerRoute,
    },
    /// A copy's new state.
    State { state: PeerRoute },
    /// A routing shard has flushed to KV everything applied to it before
    /// `watermark_ms`.
    Flushed { shard: u32, watermark_ms: u64 },
    /// An isolate's poll: overlay entries after `after`, the directory if
    /// it changed since `dir_version`.
    View { after: u64, dir_version: u64 },
}

/// One overlay entry as isolates get it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EntryWire {
    /// Overlay sequence number.
    pub o: u64,
    pub peer: String,
    pub version: u64,
    /// Base64 GLA1 of the bits, or None for a wildcard ("more additions
    /// than the overlay holds: ask this peer until they are in KV").
    pub additions: Option<String>,
}

/// The `RouteTable`'s answers.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum TableReply {
    Added {
        oseq: u64,
    },
    Done,
    View {
        /// Newest entry.
        oseq: u64,
        /// Entries up to here have been dropped.
        floor: u64,
        /// `after` was below the floor: these are all entries; start over.
        reset: bool,
        dir_version: u64,
        /// The peers' states, when changed since the poller's version.
        dir: Option<Vec<PeerRoute>>,
        entries: Vec<EntryWire>,
        /// Bits held in the overlay.
        overlay_bits: u64,
    },
}

/// The typed client of the route table.
pub struct TableClient<'e> {
    env: &'e Env,
    obj: Object,
}

impl<'e> TableClient<'e> {
    pub fn new(env: &'e Env, cfg: &GpConfig) -> Self {
        TableClient {
            env,
            obj: Object::new(
                "ROUTE_TABLE",
                format!(
                    "table/{}/{}",
                    cfg.routing_partition_bits, cfg.routing_shards
                ),
            ),
        }
    }

    pub async fn call(&self, op: &TableOp) -> ApiResult<TableReply> {
        Ok(routing_call(&self.obj, self.env, op).await?)
    }

    pub async fn done(&self, op: &TableOp, name: &'static str) -> ApiResult<()> {
        match self.call(op).await? {
            TableReply::Done | TableReply::Added { .. } => Ok(()),
            other => Err(unexpected(&self.obj, name, other).into()),
        }
    }
}

/// Base64 GLA1 of bits of `version`, as the routing messages carry them.
pub fn additions_b64(version: u64, bits: &[u64]) -> String {
    crate::core::encoding::b64_encode(&crate::core::filter::encode_additions(version, bits))
}
