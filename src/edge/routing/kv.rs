//! Every KV access of this GP goes through here (ARCHITECTURE.md, "Routing
//! table"). Workers KV allows one write per second per key, which local
//! workerd does not enforce: this module does. A write to a key written
//! less than [`MIN_WRITE_INTERVAL_MS`] ago by this isolate is refused with
//! the time it may go, so the one writer of each key (its routing shard)
//! keeps it dirty and coalesces. Writes and reads are counted per key and
//! second for the tests and benchmarks (`/__debug/kv-stats`).

use crate::edge::clock::now_ms;
use crate::edge::http::error::{ApiError, ApiResult, OrInternal};
use serde::Serialize;
use std::cell::RefCell;
use std::collections::HashMap;
use worker::Env;

/// Workers KV: at most one write per second to a key.
pub const MIN_WRITE_INTERVAL_MS: u64 = 1_000;
/// Workers KV: a value holds at most 25 MiB.
pub const MAX_VALUE_BYTES: usize = 25 << 20;
/// How long KV's edge cache may serve a value read with `cacheTtl`
/// (Workers KV's minimum is 30 s).
pub const CACHE_TTL_SECS: u64 = 60;
/// How stale a KV read may be after a write: the edge cache plus KV's
/// global propagation (about 60 s). The overlay keeps additions this long
/// past their flush (ARCHITECTURE.md, "Routing table").
pub const STALE_MS: u64 = (CACHE_TTL_SECS + 60) * 1_000;

/// This isolate's KV counters.
#[derive(Debug, Default, Clone, Serialize)]
pub struct KvStats {
    pub writes: u64,
    pub reads: u64,
    pub read_bytes: u64,
    pub written_bytes: u64,
    /// Writes refused because the key was written less than 1 s before.
    pub refused: u64,
    /// Most writes to one key within one wall-clock second, ever.
    pub max_writes_per_key_per_s: u32,
    /// The largest value written, and writes refused as over 25 MiB.
    pub value_bytes_max: usize,
    pub too_large: u64,
}

#[derive(Default)]
struct Book {
    stats: KvStats,
    /// key → (last write ms, second of the window, writes in that second).
    keys: HashMap<String, (u64, u64, u32)>,
}

thread_local! {
    static BOOK: RefCell<Book> = RefCell::new(Book::default());
}

/// A counters copy.
pub fn stats() -> KvStats {
    BOOK.with(|b| b.borrow().stats.clone())
}

/// Why a write did not happen.
#[derive(Debug)]
pub enum WriteError {
    /// The key was written less than a second ago: try at `retry_at_ms`.
    TooSoon { retry_at_ms: u64 },
    /// Over KV's 25 MiB per value.
    TooLarge { bytes: usize },
    /// KV refused or failed.
    Kv(String),
}

/// When `key` may next be written.
pub fn next_write_ms(key: &str) -> u64 {
    BOOK.with(|b| {
        b.borrow()
            .keys
            .get(key)
            .map_or(0, |(last, _, _)| last + MIN_WRITE_INTERVAL_MS)
    })
}

fn store(env: &Env) -> ApiResult<worker::KvStore> {
    env.kv("FILTERS").internal("FILTERS binding")
}

/// Writes `bytes` at `key`, at most once per second per key.
pub async fn put(env: &Env, key: &str, bytes: &[u8]) -> Result<(), WriteError> {
    if bytes.len() > MAX_VALUE_BYTES {
        BOOK.with(|b| b.borrow_mut().stats.too_large += 1);
        return Err(WriteError::TooLarge { bytes: bytes.len() });
    }
    let now = now_ms();
    let sec = now / 1_000;
    let refused = BOOK.with(|b| {
        let mut b = b.borrow_mut();
        let retry = b
            .keys
            .get(key)
            .map(|(last, _, _)| last + MIN_WRITE_INTERVAL_MS)
            .filter(|t| *t > now);
        if let Some(t) = retry {
            b.stats.refused += 1;
            return Some(t);
        }
        // Claim the slot before the await: a second writer in this isolate
        // waits its turn instead of racing.
        let count = match b.keys.get(key) {
            Some((_, s, c)) if *s == sec => c + 1,
            _ => 1,
        };
        b.keys.insert(key.to_string(), (now, sec, count));
        b.stats.max_writes_per_key_per_s = b.stats.max_writes_per_key_per_s.max(count);
        b.stats.writes += 1;
        b.stats.written_bytes += bytes.len() as u64;
        b.stats.value_bytes_max = b.stats.value_bytes_max.max(bytes.len());
        if b.keys.len() > 8_192 {
            b.keys
                .retain(|_, (last, _, _)| now.saturating_sub(*last) < 2 * MIN_WRITE_INTERVAL_MS);
        }
        None
    });
    if let Some(retry_at_ms) = refused {
        return Err(WriteError::TooSoon { retry_at_ms });
    }
    let kv = store(env).map_err(|e| WriteError::Kv(format!("{e:?}")))?;
    kv.put_bytes(key, bytes)
        .map_err(|e| WriteError::Kv(e.to_string()))?
        .execute()
        .await
        .map_err(|e| WriteError::Kv(e.to_string()))
}

/// Reads `key` through KV's edge cache ([`CACHE_TTL_SECS`]); None if absent.
pub async fn get(env: &Env, key: &str) -> ApiResult<Option<Vec<u8>>> {
    let kv = store(env)?;
    let got = kv
        .get(key)
        .cache_ttl(CACHE_TTL_SECS)
        .bytes()
        .await
        .map_err(|e| ApiError::Internal(format!("kv get {key}: {e}")))?;
    crate::edge::stats::count(|s| s.kv_reads += 1);
    BOOK.with(|b| {
        let mut b = b.borrow_mut();
        b.stats.reads += 1;
        b.stats.read_bytes += got.as_ref().map_or(0, |v| v.len() as u64);
    });
    Ok(got)
}
