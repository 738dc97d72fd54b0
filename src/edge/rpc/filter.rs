//! Messages to the GP's FilterObject (see objects/filter.rs) and its typed
//! client. The object serves binary snapshots and additions by path, so
//! besides its JSON operations the client passes raw requests through.

use crate::edge::http::error::{ApiError, ApiResult};
use crate::edge::rpc::{decode, Object};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use worker::{Env, Method, Response};

/// `POST /subscribe` from the worker: a verified peer's subscription.
#[derive(Debug, Deserialize, Serialize)]
pub struct SubscribeOp {
    pub peer: String,
    pub callback: String,
    pub version: u64,
    pub after: u64,
}

/// One partition of a published filter.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PartitionInfo {
    pub index: u32,
    /// Names the partition's content: same ETag, same bits.
    pub etag: String,
    pub bits_set: u64,
}

/// `GET /peer/v1/filter`: what a subscriber needs to copy the current
/// version partition by partition (ARCHITECTURE.md, "Own filter").
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub gp: String,
    pub version: u64,
    pub created_at_ms: u64,
    /// The cursor every partition served from now on includes.
    pub seq: u64,
    pub params: crate::core::filter::ParamsDoc,
    /// The filter is served as 2^partition_bits partitions.
    pub partition_bits: u8,
    pub partitions: Vec<PartitionInfo>,
    pub bits_set: u64,
    pub estimated_fp_rate: f64,
}

/// The subscriber endpoint every GP serves (callbacks go only to the
/// configured peer URL plus this path: no caller-chosen URLs, no SSRF).
pub const CALLBACK_PATH: &str = "/peer/v1/filter-updates";

/// The typed client of the GP's one filter object ("own").
pub struct FilterClient<'e> {
    env: &'e Env,
    obj: Object,
}

impl<'e> FilterClient<'e> {
    pub fn new(env: &'e Env) -> Self {
        FilterClient {
            env,
            obj: Object::new("FILTER", "own"),
        }
    }

    /// Sends one request and returns the object's response as is
    /// (problems included), for the peer routes to pass on.
    pub async fn request(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<Vec<u8>>,
    ) -> ApiResult<Response> {
        Ok(self
            .obj
            .request(self.env, method, path_and_query, body)
            .await?)
    }

    /// A JSON answer of the object.
    async fn json<R: for<'de> Deserialize<'de>>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> ApiResult<R> {
        let mut resp = self.obj.request(self.env, method, path, body).await?;
        Ok(decode(&format!("{}{path}", self.obj.label()), &mut resp).await?)
    }

    /// The current filter's parameters and fill (`GET /v1/gp`).
    pub async fn info(&self) -> ApiResult<Value> {
        self.json(Method::Get, "/info", None).await
    }

    /// The current version's manifest, naming this GP.
    pub async fn manifest(&self) -> ApiResult<Manifest> {
        let mut m: Manifest = self.json(Method::Get, "/manifest", None).await?;
        m.gp = crate::edge::config::GpConfig::cached(self.env)?.id.clone();
        Ok(m)
    }

    /// The current snapshot (GLF2 bytes); None when the filter is too
    /// large for one (peers copy it by partition).
    pub async fn snapshot_bytes(&self) -> ApiResult<Option<Vec<u8>>> {
        let mut resp = self.request(Method::Get, "/snapshot", None).await?;
        if resp.status_code() == 413 {
            return Ok(None);
        }
        if resp.status_code() != 200 {
            let text = resp.text().await.unwrap_or_default();
            return Err(ApiError::Internal(format!(
                "filter object /snapshot answered {}: {text}",
                resp.status_code()
            )));
        }
        resp.bytes()
            .await
            .map(Some)
            .map_err(|e| ApiError::Internal(format!("filter snapshot body: {e}")))
    }

    /// Inserts SII digests (`Sii::hash()`) into the GP's own filter, in
    /// one batch, and returns the bit indices that flipped 0→1 (already
    /// logged and queued for subscribers). Call it once per created
    /// mapping or once per bulk upload with all its digests — never per
    /// digest in a loop.
    pub async fn insert(&self, digests: &[[u8; 32]]) -> ApiResult<Vec<u64>> {
        if digests.is_empty() {
            return Ok(Vec::new());
        }
        #[derive(Deserialize)]
        struct Reply {
            additions: Vec<u64>,
        }
        let body: Vec<u8> = digests.iter().flatten().copied().collect();
        let reply: Reply = self.json(Method::Post, "/insert", Some(body)).await?;
        Ok(reply.additions)
    }

    /// Inserts `count` pseudo-random digests (test route only): a filter
    /// of many SIIs without carrying them in request bodies.
    pub async fn fill(&self, seed: &str, from: u64, count: u64) -> ApiResult<Value> {
        let body =
            serde_json::to_vec(&serde_json::json!({ "seed": seed, "from": from, "count": count }))
                .map_err(|e| ApiError::Internal(format!("fill op: {e}")))?;
        self.json(Method::Post, "/fill", Some(body)).await
    }

    /// Rebuilds the filter now (draft §9), as the object answers it.
    pub async fn rebuild(&self) -> ApiResult<Response> {
        self.request(Method::Post, "/rebuild", None).await
    }

    /// A verified peer's subscription, as the object answers it.
    pub async fn subscribe(&self, op: &SubscribeOp) -> ApiResult<Response> {
        let body =
            serde_json::to_vec(op).map_err(|e| ApiError::Internal(format!("subscribe op: {e}")))?;
        self.request(Method::Post, "/subscribe", Some(body)).await
    }
}
