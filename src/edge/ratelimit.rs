//! The per-AP query rate limit (draft §11.2): isolate-local leases of the AP's one token bucket, which lives in its ApObject.
use crate::edge::rpc::ap::ApClient;
use crate::edge::rpc::ap::Grant;

use crate::core::ratelimit::{allowed_rate, Admission, Granted, LeaseHolder, Rate, RateLimited};
use crate::edge::auth::ap::AuthedAp;
use crate::edge::http::error::{ApiError, ApiResult};
use crate::edge::stats;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use worker::Env;

/// An isolate leases about this much of the AP's rate at a time; a lease
/// lives as long as the bucket takes to earn it (`Rate::lease_ttl_ms`),
/// so all isolates together stay within `burst + rate × window + one
/// lease` (`core::ratelimit`'s property tests). A strike does not wait for
/// it: a lease taken at another rate is dropped as soon as the isolate
/// sees the new rate (registry cache, AP_CACHE_SECONDS).
const LEASE_PERIOD_MS: u64 = 1_000;

/// How long a query waits, in polls of [`WAIT_POLL_MS`], for another
/// query's lease request before it asks the bucket itself.
const MAX_WAIT_POLLS: u32 = 50;
/// A waiting query looks again this often. A timer, not a waker: the
/// Workers runtime cancels a request that waits on an event of another
/// request ("your Worker's code had hung"), so each waiter keeps its own.
const WAIT_POLL_MS: u64 = 2;

thread_local! {
    /// This isolate's hold on each AP's bucket.
    static LEASES: RefCell<HashMap<String, LeaseHolder>> = RefCell::new(HashMap::new());
    /// Each AP's lease request in flight from this isolate (its
    /// generation): concurrent queries that find the lease used up wait
    /// for it instead of each asking the AP's object (one limiter request
    /// per lease, not one per query in flight).
    static ASKING: RefCell<HashMap<String, u64>> = RefCell::new(HashMap::new());
    static GENERATION: Cell<u64> = const { Cell::new(0) };
}

/// Marks the AP's lease request in flight while held; dropped when the
/// grant is applied, on an error, or when the request is cancelled.
struct AskGuard {
    id: String,
    generation: u64,
}

impl AskGuard {
    fn new(id: &str) -> AskGuard {
        let generation = GENERATION.with(|g| {
            g.set(g.get().wrapping_add(1));
            g.get()
        });
        ASKING.with(|m| m.borrow_mut().insert(id.to_owned(), generation));
        AskGuard {
            id: id.to_owned(),
            generation,
        }
    }
}

impl Drop for AskGuard {
    fn drop(&mut self) {
        ASKING.with(|m| {
            let mut m = m.borrow_mut();
            if m.get(&self.id) == Some(&self.generation) {
                m.remove(&self.id);
            }
        });
    }
}

/// What the rate-limit headers report.
pub struct RateInfo {
    rate: Rate,
    remaining: u64,
}

impl RateInfo {
    /// RateLimit-Limit / -Remaining / -Reset (draft-ietf-httpapi-ratelimit-
    /// headers, the widely deployed three-header form): the bucket depth,
    /// the tokens left (this isolate's lease plus the bucket's last known
    /// level), and seconds until the bucket is full again.
    pub fn headers(&self) -> [(&'static str, String); 3] {
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
/// this isolate's lease is used up or lapsed (the decisions are
/// `core::ratelimit::LeaseHolder`'s). Exact under concurrency: a leased
/// token was already taken from the AP's one bucket.
pub async fn admit(env: &Env, ap: &AuthedAp) -> ApiResult<RateInfo> {
    let r = &ap.record;
    // draft §11.2: "rate limited based on the number of enrolled users".
    let rate = allowed_rate(&r.rate_params, r.enrolled_users, r.strikes);
    let id = r.id.to_string();
    let mut polls = 0;
    let (started, want) = loop {
        let started = crate::edge::clock::now_ms();
        let decision = LEASES.with(|m| {
            m.borrow_mut()
                .entry(id.clone())
                .or_insert_with(|| LeaseHolder::new(rate))
                .admit(rate, started, LEASE_PERIOD_MS)
        });
        match decision {
            Admission::Spent { remaining } => return Ok(RateInfo { rate, remaining }),
            // An AP far over its rate would otherwise cost a limiter request
            // for every refused query, and a flood of them starved the other
            // APs' queries (wasm-tests/concurrency: others' p50 x40).
            Admission::Refused { retry_after_ms } => {
                return Err(rate_limited(rate, Some(retry_after_ms)))
            }
            Admission::Lease { want } => {
                let asking = ASKING.with(|m| m.borrow().contains_key(&id));
                if asking && polls < MAX_WAIT_POLLS {
                    // Another query of this isolate is asking; its grant
                    // (or refusal) is applied before it stops asking.
                    polls += 1;
                    worker::Delay::from(std::time::Duration::from_millis(WAIT_POLL_MS)).await;
                } else {
                    break (started, want);
                }
            }
        }
    };
    let _asking = AskGuard::new(&id);
    stats::count(|s| s.lease_requests += 1);
    let Grant {
        granted,
        available,
        retry_after_ms,
    } = ApClient::new(env, &id).lease(want, rate).await?;
    let g = Granted {
        granted,
        available,
        retry_after_ms,
    };
    let now = crate::edge::clock::now_ms();
    let outcome = LEASES.with(|m| {
        m.borrow_mut()
            .entry(id)
            .or_insert_with(|| LeaseHolder::new(rate))
            .granted(rate, g, started, now, LEASE_PERIOD_MS)
    });
    match outcome {
        Ok(remaining) => Ok(RateInfo { rate, remaining }),
        Err(retry_after_ms) => Err(rate_limited(rate, retry_after_ms)),
    }
}

/// The 429 for a query over the AP's rate (draft §11.2).
fn rate_limited(rate: Rate, retry_after_ms: Option<u64>) -> ApiError {
    stats::count(|s| s.rate_limited += 1);
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
