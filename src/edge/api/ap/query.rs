//! The mapping query (draft §8.1, Figure 2) and its per-AP rate limit
//! (draft §8.1, §11.2).
//!
//! `POST /v1/query {"sii": "..."}` from an authenticated AP: the SII goes
//! in the body, not the URL, so phone numbers and addresses stay out of
//! access logs and caches. The home GP
//! 1. spends one token of the AP's query rate (isolate-local lease; the
//!    AP's `ApObject` is asked only when the lease runs out),
//! 2. checks every peer's filter copy in isolate memory (no KV read on a
//!    warm isolate) — draft §8.1: "it next examines the routing tables",
//! 3. asks its own shard (one DO request) and, at the same time, exactly
//!    the peers whose filters match, signed, each with a timeout,
//! 4. returns the most recent mapping (`core::query::combine`).
//!
//! `POST /peer/v1/query` is the remote side: signed peer requests only,
//! answered from local mappings only (draft §8.1: remote GPs "consult only
//! their local mappings when receiving this mapping query").
//!
//! Cost per query (DESIGN.md "Cost budget"): local hit or miss without a
//! filter match = 1 DO request, 0 subrequests; remote hit = + 1 signed
//! subrequest per matching peer; the rate limiter adds one DO request per
//! lease (about a second's worth of the AP's rate), not per query.

use crate::core::mapping::{Candidate, Claim};
use crate::core::query::{combine, PeerAnswer, PeerOutcome, QueryBody};
use crate::core::ratelimit::{allowed_rate, Lease, Rate, RateLimited};
use crate::core::shard::shard_of;
use crate::core::Sii;
use crate::edge::auth::ap as auth;
use crate::edge::auth::ap::AuthedAp;
use crate::edge::auth::peer as peer_auth;
use crate::edge::auth::peer::Signer;
use crate::edge::config::{GpConfig, Peer};
use crate::edge::http::body::read_json_allow_array;
use crate::edge::http::error::{ApiError, ApiResult};
use crate::edge::objects::ap as ap_object;
use crate::edge::objects::shard as mapping_shard;
use crate::edge::objects::shard::{ShardOp, ShardReply};
use crate::edge::routing::copies as federation;
use serde::Serialize;
use serde_json::json;
use std::cell::RefCell;
use std::collections::HashMap;
use worker::{Env, Method, Request, Response};

/// Per-peer timeout: a slow peer makes the answer incomplete, not late.
const PEER_QUERY_TIMEOUT_MS: u32 = 1_500;
/// An isolate leases about this much of the AP's rate at a time.
const LEASE_PERIOD_MS: u64 = 1_000;
/// Unspent leased tokens lapse after this (they are lost, never reused:
/// the limit can only be under-spent). A strike does not wait for it: a
/// lease taken at another rate is dropped as soon as the isolate sees the
/// new rate (registry cache, AP_CACHE_SECONDS).
const LEASE_TTL_MS: u64 = 10_000;
/// A peer query body is one small JSON object.
const MAX_PEER_QUERY_BODY: usize = 4 << 10;
/// The remote side's path.
pub const PEER_QUERY_PATH: &str = "/peer/v1/query";

/// Counters of this isolate, for the tests ("the peer received no query")
/// and the benchmark (DO requests and subrequests per query).
#[derive(Debug, Default, Clone, Serialize)]
struct Stats {
    queries: u64,
    shard_lookups: u64,
    lease_requests: u64,
    peer_queries_sent: u64,
    peer_queries_received: u64,
    peer_queries_answered: u64,
    rate_limited: u64,
}

/// A lease and the bucket level the limiter reported with it.
struct Held {
    lease: Lease,
    available: u64,
    /// The rate the lease was taken at.
    rate: Rate,
    /// The limiter last refused this isolate a lease: until then (when
    /// its next token accrues) the AP's queries are refused here, without
    /// asking it again.
    empty_until_ms: u64,
}

thread_local! {
    static LEASES: RefCell<HashMap<String, Held>> = RefCell::new(HashMap::new());
    static STATS: RefCell<Stats> = RefCell::new(Stats::default());
}

fn count(f: impl FnOnce(&mut Stats)) {
    STATS.with(|s| f(&mut s.borrow_mut()));
}

/// What the rate-limit headers report.
struct RateInfo {
    rate: Rate,
    remaining: u64,
}

impl RateInfo {
    /// RateLimit-Limit / -Remaining / -Reset (draft-ietf-httpapi-ratelimit-
    /// headers, the widely deployed three-header form): the bucket depth,
    /// the tokens left (this isolate's lease plus the bucket's last known
    /// level), and seconds until the bucket is full again.
    fn headers(&self) -> [(&'static str, String); 3] {
        let missing = self.rate.burst.saturating_sub(self.remaining) as f64;
        let reset = if self.rate.per_sec > 0.0 {
            (missing / self.rate.per_sec).ceil() as u64
        } else {
            0
        };
        [
            ("RateLimit-Limit", self.rate.burst.to_string()),
            ("RateLimit-Remaining", self.remaining.to_string()),
            ("RateLimit-Reset", reset.to_string()),
        ]
    }
}

/// Spends one query token of the AP, leasing more from its `ApObject` when
/// this isolate's lease is used up or lapsed. Exact under concurrency: a
/// leased token was already taken from the AP's one bucket.
async fn admit(env: &Env, ap: &AuthedAp) -> ApiResult<RateInfo> {
    let r = &ap.record;
    // draft §11.2: "rate limited based on the number of enrolled users".
    let rate = allowed_rate(&r.rate_params, r.enrolled_users, r.strikes);
    let id = r.id.to_string();
    let now = auth::now_ms();
    let spend_local = || {
        LEASES.with(|m| {
            let mut m = m.borrow_mut();
            if m.get(&id).is_some_and(|h| h.rate != rate) {
                m.remove(&id);
            }
            let held = m.get_mut(&id)?;
            held.lease
                .spend(now)
                .then(|| held.lease.remaining() + held.available)
        })
    };
    if let Some(remaining) = spend_local() {
        return Ok(RateInfo { rate, remaining });
    }
    // An AP far over its rate would otherwise cost a limiter request for
    // every refused query, and a flood of them starved the other APs'
    // queries (wasm-tests/concurrency: others' p50 x40). The limiter said
    // when its next token accrues; until then nothing can be granted.
    let refused_until = LEASES.with(|m| {
        m.borrow()
            .get(&id)
            .filter(|h| h.rate == rate && h.empty_until_ms > now)
            .map(|h| h.empty_until_ms)
    });
    if let Some(until) = refused_until {
        return Err(rate_limited(rate, Some(until - now)));
    }
    count(|s| s.lease_requests += 1);
    let want = rate.lease_size(LEASE_PERIOD_MS);
    let reply = ap_object::call(env, &id, &ap_object::ApOp::QueryLease { want, rate }).await?;
    let ap_object::ApReply::Lease {
        granted,
        available,
        retry_after_ms,
    } = reply
    else {
        return Err(ApiError::Internal("limiter gave no lease".into()));
    };
    if granted == 0 {
        // Concurrent requests of this isolate may have leased meanwhile.
        if let Some(remaining) = spend_local() {
            return Ok(RateInfo { rate, remaining });
        }
        if let Some(ms) = retry_after_ms {
            LEASES.with(|m| {
                let mut m = m.borrow_mut();
                let held = m.entry(id).or_insert_with(|| Held {
                    lease: Lease::new(0, now),
                    available: 0,
                    rate,
                    empty_until_ms: 0,
                });
                if held.rate == rate {
                    held.available = 0;
                    held.empty_until_ms =
                        now.saturating_add(rate.refusal_hold_ms(ms, LEASE_PERIOD_MS));
                }
            });
        }
        return Err(rate_limited(rate, retry_after_ms));
    }
    // One token for this request; the rest joins what concurrent requests
    // of this isolate leased at the same time (none of it is wasted).
    let expires = now.saturating_add(LEASE_TTL_MS);
    let remaining = LEASES.with(|m| {
        let mut m = m.borrow_mut();
        let left = granted - 1;
        let held = m.entry(id).or_insert_with(|| Held {
            lease: Lease::new(0, expires),
            available,
            rate,
            empty_until_ms: 0,
        });
        let total = if held.rate == rate {
            held.lease.remaining() + left
        } else {
            left
        };
        *held = Held {
            lease: Lease::new(total, expires),
            available,
            rate,
            empty_until_ms: 0,
        };
        total + available
    });
    Ok(RateInfo { rate, remaining })
}

/// The 429 for a query over the AP's rate (draft §11.2).
fn rate_limited(rate: Rate, retry_after_ms: Option<u64>) -> ApiError {
    count(|s| s.rate_limited += 1);
    let info = RateInfo { rate, remaining: 0 };
    // draft §11.2 gives no number; an hour when the rate is zero.
    let secs = retry_after_ms.map_or(3_600, |ms| ms.div_ceil(1000).max(1));
    let mut e =
        ApiError::from(RateLimited { retry_after_ms }).with_header("Retry-After", secs.to_string());
    for (k, v) in info.headers() {
        e = e.with_header(k, v);
    }
    e
}

/// This GP's own preferred mapping for the SII: one shard request.
async fn lookup(env: &Env, cfg: &GpConfig, sii: &Sii) -> ApiResult<Option<Candidate>> {
    count(|s| s.shard_lookups += 1);
    let op = ShardOp::Lookup {
        sii: sii.to_string(),
        gp: cfg.id.clone(),
    };
    match mapping_shard::call(env, shard_of(sii, mapping_shard::shard_count(env)), &op).await? {
        ShardReply::Lookup { candidate } => Ok(candidate),
        _ => Err(ApiError::Internal("shard gave no lookup answer".into())),
    }
}

/// Peers whose filter copy says they may hold the SII. A peer whose filter
/// this GP has not received yet (or cannot read) is asked too: without its
/// filter "definitively does NOT exist" (draft §8.1) is unknown.
pub async fn matching_peers<'c>(env: &Env, cfg: &'c GpConfig, sii: &Sii) -> Vec<&'c Peer> {
    let digest = sii.hash();
    let mut out = Vec::new();
    for p in &cfg.peers {
        match federation::peer_may_hold(env, &p.id, &digest).await {
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
async fn ask_peer(signer: Option<&Signer>, peer: &Peer, body: &[u8]) -> PeerOutcome {
    let Some(signer) = signer else {
        return PeerOutcome::Failed("this GP has no signing key (GP_SIGNING_KEY)".into());
    };
    count(|s| s.peer_queries_sent += 1);
    let url = format!("{}{PEER_QUERY_PATH}", peer.url.trim_end_matches('/'));
    let resp = match peer_auth::signed_fetch(
        signer,
        Method::Post,
        &url,
        Some((body, "application/json")),
        &[],
        PEER_QUERY_TIMEOUT_MS,
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
        Ok(a) => match a.checked(&peer.id) {
            Ok(c) => PeerOutcome::Answered(c),
            Err(e) => PeerOutcome::Failed(e),
        },
        Err(e) => PeerOutcome::Failed(format!("unreadable answer: {e}")),
    }
}

/// The routed query for one SII: own mapping and the matching peers', in
/// parallel. Also used by mapping creation to find a remote holder.
pub async fn resolve(
    env: &Env,
    cfg: &GpConfig,
    sii: &Sii,
) -> ApiResult<crate::core::query::QueryResult> {
    let peers = matching_peers(env, cfg, sii).await;
    let signer = if peers.is_empty() {
        None
    } else {
        Signer::from_env(env)
            .map_err(|e| worker::console_error!("peer query: {e:?}"))
            .ok()
    };
    let body = json!({ "sii": sii.as_str() }).to_string().into_bytes();
    let asks = futures_util::future::join_all(
        peers
            .iter()
            .map(|p| ask_peer(signer.as_ref(), p, body.as_slice())),
    );
    let (local, outcomes) = futures_util::future::join(lookup(env, cfg, sii), asks).await;
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

/// `POST /v1/query`: the preferred SSI for one SII (draft §8.1).
pub async fn query(mut req: Request, env: &Env, cfg: &GpConfig) -> ApiResult<Response> {
    let ap = auth::authenticate(&req, env, cfg).await?;
    let body: QueryBody = read_json_allow_array(&mut req).await?;
    let sii = body.into_sii()?;
    let limit = admit(env, &ap).await?;
    count(|s| s.queries += 1);
    let result = resolve(env, cfg, &sii).await?;
    let failed: Vec<_> = result
        .failed
        .iter()
        .map(|(gp, why)| json!({ "gp": gp, "reason": why }))
        .collect();
    let mut out = json!({
        "sii": sii.as_str(),
        "found": result.preferred.is_some(),
        "incomplete": result.incomplete(),
        "peers_queried": result.queried.len(),
        "failed_peers": failed,
    });
    if let (Some(c), Some(o)) = (&result.preferred, out.as_object_mut()) {
        let p = &c.precedence;
        o.insert(
            "ssi".into(),
            json!({ "provider": c.ssi.provider(), "user": c.ssi.user() }),
        );
        o.insert("gp".into(), json!(c.gp));
        o.insert("home".into(), json!(c.gp == cfg.id));
        // draft §8.1: "Each mapping contains a timestamp, and the most
        // recent result is used": the later of preference and creation.
        o.insert(
            "timestamp_ms".into(),
            json!(p.preferred_at_ms.unwrap_or(0).max(p.created_at_ms)),
        );
        o.insert("created_at_ms".into(), json!(p.created_at_ms));
        o.insert("preferred_at_ms".into(), json!(p.preferred_at_ms));
    }
    let mut resp = crate::edge::http::routes::json_ok(&out)?;
    for (k, v) in limit.headers() {
        let _ = resp.headers_mut().set(k, &v);
    }
    Ok(resp)
}

/// `POST /peer/v1/query`: a peer GP's query, answered from this GP's own
/// mappings only (draft §8.1: "The remote GP authorize the request as
/// coming from another GP, and consult only their local mappings").
pub async fn serve_peer(mut req: Request, env: &Env, cfg: &GpConfig) -> ApiResult<Response> {
    count(|s| s.peer_queries_received += 1);
    let (_peer, body) = peer_auth::verify(&mut req, env, cfg, MAX_PEER_QUERY_BODY).await?;
    let b: QueryBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::client(
            400,
            "invalid-json",
            "Invalid JSON body",
            format!("the JSON body was not understood: {e}"),
        )
    })?;
    let sii = b.into_sii()?;
    let candidate = lookup(env, cfg, &sii).await?;
    count(|s| s.peer_queries_answered += 1);
    crate::edge::http::routes::json_ok(&json!(PeerAnswer {
        gp: cfg.id.clone(),
        candidate,
    }))
}

/// `POST /peer/v1/claims`: a peer GP tells this GP that one of its APs
/// claimed an SII (draft §10: "it sends a webhook callback to those GP,
/// indicating that that particular SII has been claimed"). A local mapping
/// not newer than the claim is deleted (replace) or outranked (prefer), and
/// its AP is told by webhook through the shard's outbox. Idempotent: a
/// repeated claim finds nothing older left to displace.
pub async fn serve_claim(mut req: Request, env: &Env, cfg: &GpConfig) -> ApiResult<Response> {
    let (peer, body) = peer_auth::verify(&mut req, env, cfg, MAX_PEER_QUERY_BODY).await?;
    let claim: Claim = serde_json::from_slice(&body).map_err(|e| {
        ApiError::client(
            400,
            "invalid-claim",
            "Invalid claim",
            format!("the claim was not understood: {e}"),
        )
    })?;
    peer_auth::require_sender(&peer, &claim.from_gp, "Claim from another GP")?;
    let index = shard_of(&claim.sii, mapping_shard::shard_count(env));
    let op = ShardOp::ApplyClaim {
        claim,
        now_ms: auth::now_ms(),
    };
    match mapping_shard::call(env, index, &op).await? {
        ShardReply::Done { notified } => crate::edge::http::routes::json_ok(
            &json!({ "applied": true, "notified": notified.len() }),
        ),
        ShardReply::Refused(r) => Err(r.into_api()),
        _ => Err(ApiError::Internal("shard gave no claim answer".into())),
    }
}

/// `GET /__debug/query-stats`: this isolate's query counters.
pub fn debug_stats() -> ApiResult<Response> {
    let s = STATS.with(|s| s.borrow().clone());
    crate::edge::http::routes::json_ok(&json!(s))
}
