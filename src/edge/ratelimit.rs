//! The per-AP query rate limit (draft §11.2): isolate-local leases of the AP's one token bucket, which lives in its ApObject.
use crate::edge::rpc::ap::ApClient;
use crate::edge::rpc::ap::Grant;

use crate::core::ratelimit::{allowed_rate, Lease, Rate, RateLimited};
use crate::edge::auth::ap::AuthedAp;
use crate::edge::http::error::{ApiError, ApiResult};
use crate::edge::stats;
use std::cell::RefCell;
use std::collections::HashMap;
use worker::Env;

/// An isolate leases about this much of the AP's rate at a time.
const LEASE_PERIOD_MS: u64 = 1_000;

/// Unspent leased tokens lapse after this (they are lost, never reused:
/// the limit can only be under-spent). A strike does not wait for it: a
/// lease taken at another rate is dropped as soon as the isolate sees the
/// new rate (registry cache, AP_CACHE_SECONDS).
const LEASE_TTL_MS: u64 = 10_000;

thread_local! {
    static LEASES: RefCell<HashMap<String, Held>> = RefCell::new(HashMap::new());
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
/// this isolate's lease is used up or lapsed. Exact under concurrency: a
/// leased token was already taken from the AP's one bucket.
pub async fn admit(env: &Env, ap: &AuthedAp) -> ApiResult<RateInfo> {
    let r = &ap.record;
    // draft §11.2: "rate limited based on the number of enrolled users".
    let rate = allowed_rate(&r.rate_params, r.enrolled_users, r.strikes);
    let id = r.id.to_string();
    let now = crate::edge::clock::now_ms();
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
    stats::count(|s| s.lease_requests += 1);
    let want = rate.lease_size(LEASE_PERIOD_MS);
    let Grant {
        granted,
        available,
        retry_after_ms,
    } = ApClient::new(env, &id).lease(want, rate).await?;
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
