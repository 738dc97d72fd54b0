//! Counters of this isolate, for the tests ("the peer received no query") and the benchmarks (DO requests and subrequests per query).

use serde::Serialize;
use std::cell::RefCell;

/// Counters of this isolate, for the tests ("the peer received no query")
/// and the benchmark (DO requests and subrequests per query).
#[derive(Debug, Default, Clone, Serialize)]
pub struct Stats {
    pub queries: u64,
    pub shard_lookups: u64,
    pub lease_requests: u64,
    pub peer_queries_sent: u64,
    /// Peers asked without a filter verdict (no copy in place yet).
    pub peer_queries_unfiltered: u64,
    pub peer_queries_received: u64,
    pub peer_queries_answered: u64,
    pub rate_limited: u64,
    pub statements_signed: u64,
    /// Statements a shard answered from those it keeps (no signature).
    pub statements_kept_answered: u64,
    /// Values read and validated from an env object (configuration,
    /// secrets): a handful per isolate, not one per request.
    pub env_reads: u64,
    /// Durable Object requests this isolate made (worker and objects; the
    /// benchmark's DO requests per query).
    pub do_requests: u64,
    /// Of those, the ones to the routing objects (the routing view's
    /// polls, at most one a second, and the copies', shards' and table's
    /// messages to each other: no query waits on those).
    pub do_requests_routing: u64,
    /// `do_requests` by the binding of the object asked (which objects a
    /// test's window counted, when it counts more than it expects).
    pub do_requests_by_binding: std::collections::BTreeMap<&'static str, u64>,
    /// Workers KV reads this isolate made (peers' filter copies).
    pub kv_reads: u64,
    /// `GET /v1/gp` reads of the filter object, `GET /v1/peers` probe rounds.
    pub filter_info_reads: u64,
    /// Route-table reads for `/v1/gp`'s routing section (at most one a
    /// second per isolate).
    pub route_info_reads: u64,
    pub peer_probe_rounds: u64,
    /// Batched §8.2.1 checks of bulk uploads (`/peer/v1/preferred`).
    pub peer_preferred_batches_sent: u64,
    pub peer_preferred_batches_received: u64,
}

pub fn count(f: impl FnOnce(&mut Stats)) {
    STATS.with(|s| f(&mut s.borrow_mut()));
}

thread_local! {
    static STATS: RefCell<Stats> = RefCell::new(Stats::default());
}

/// A copy of this isolate's counters.
pub fn snapshot() -> Stats {
    STATS.with(|s| s.borrow().clone())
}
