//! Rebuilding the own filter (draft §9: "the old bloom filter is
//! considered sufficiently dirty and is invalidated. A new bloom filter is
//! constructed"): from the mappings, so removed SIIs drop out, sized from
//! the live SII count with headroom ([`capacity_for`]) at the configured
//! false-positive target, and built a group of pages at a time
//! (at most [`BUILD_BYTES`] of filter: a group of pages) by scanning the mapping shards that
//! hold SIIs of that group, resumably (the job and its next page are
//! stored; the alarm goes on). Inserts arriving meanwhile go into the
//! current version and into a buffer, which goes into the new version in
//! the same synchronous block that makes it current; then subscribers are
//! told of the rotation.
use super::store::Version;
use super::FilterObject;
use crate::core::encoding::hex_decode;
use crate::core::filter::{capacity_for, params_for, Filter, ParamsDoc};
use crate::edge::clock::now_ms;
use crate::edge::http::error::{ApiError, ApiResult, OrInternal};
use crate::edge::rpc::shard::Shard;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use worker::Response;

/// How long the alarm, or the operator's request, works on a rebuild.
pub const ALARM_BUDGET_MS: u64 = 20_000;
/// Filter bytes being built at once (with the cache: under 32 MiB).
const BUILD_BYTES: u64 = 8 << 20;
/// Digests per page read from a mapping shard.
const PAGE: u32 = 5_000;

/// A rebuild in progress (stored: the alarm resumes it).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Job {
    version: u64,
    previous: u64,
    created_at_ms: u64,
    params: ParamsDoc,
    live: u64,
    sized_for: u64,
    /// The next page to build.
    next: u32,
    reinserted: u64,
    reason: String,
    started_ms: u64,
}

#[derive(Deserialize)]
struct JobRow {
    job: String,
}

impl Job {
    fn version(&self) -> ApiResult<Version> {
        let params = self
            .params
            .params()
            .map_err(|e| ApiError::Internal(format!("rebuild params: {e}")))?;
        Ok(Version::new(
            self.version,
            self.created_at_ms,
            params,
            self.sized_for,
        ))
    }
}

impl FilterObject {
    fn load_job(&self) -> ApiResult<Option<Job>> {
        let rows: Vec<JobRow> = self
            .sql()
            .exec("SELECT job FROM rebuild_job WHERE k = 1", None)
            .internal("select rebuild")?
            .to_array()
            .internal("read rebuild")?;
        rows.first()
            .map(|r| crate::edge::objects::dec(&r.job))
            .transpose()
    }

    fn save_job(&self, j: &Job) -> ApiResult<()> {
        self.sql()
            .exec(
                "INSERT OR REPLACE INTO rebuild_job (k, job) VALUES (1, ?)",
                Some(vec![crate::edge::objects::enc(j)?.into()]),
            )
            .internal("store rebuild")?;
        Ok(())
    }

    /// Whether inserts must also go into the rebuild buffer.
    pub(super) fn rebuild_active(&self) -> ApiResult<bool> {
        Ok(self.load_job()?.is_some())
    }

    /// The rebuild in progress, for `/v1/gp` (null when none).
    pub(super) fn rebuild_progress(&self) -> ApiResult<Value> {
        Ok(match self.load_job()? {
            None => Value::Null,
            Some(j) => json!({
                "version": j.version,
                "reason": j.reason,
                "live_siis": j.live,
                "sized_for": j.sized_for,
                "pages": j.version()?.pages(),
                "done": j.next,
                "started_ms": j.started_ms,
            }),
        })
    }

    /// Starts a rebuild: counts the live SIIs and sizes the new version.
    pub(super) async fn start_rebuild(&self, reason: &str) -> ApiResult<()> {
        if self.load_job()?.is_some() {
            return Ok(());
        }
        let cfg = crate::edge::config::GpConfig::cached(&self.env)?;
        let mut live = 0u64;
        for i in 0..cfg.mapping_shards {
            live += Shard::at(&self.env, &cfg, i).count().await?;
        }
        let sized_for = capacity_for(live);
        let params = params_for(cfg.filter_layout, sized_for, cfg.filter_fp_rate)
            .map_err(|e| ApiError::Internal(format!("filter config: {e}")))?;
        let current = self.current()?;
        let job = Job {
            version: current.version + 1,
            previous: current.version,
            created_at_ms: now_ms(),
            params: ParamsDoc::from(&params),
            live,
            sized_for,
            next: 0,
            reinserted: 0,
            reason: reason.to_string(),
            started_ms: now_ms(),
        };
        let sql = self.sql();
        // A fresh start: no rows of an abandoned attempt, an empty buffer
        // (inserts from now on go into it).
        sql.exec(
            "DELETE FROM own_page WHERE version = ?",
            Some(vec![(job.version as i64).into()]),
        )
        .internal("drop partial rebuild")?;
        sql.exec("DELETE FROM rebuild_buffer", None)
            .internal("clear rebuild buffer")?;
        self.save_job(&job)?;
        worker::console_log!(
            "filter rebuild to v{} ({reason}): {live} live SIIs, sized for {sized_for}",
            job.version
        );
        Ok(())
    }

    /// Builds pages for up to `budget_ms`; the alarm continues.
    /// Returns the finished job's (previous version, SIIs re-inserted)
    /// when this step finished it.
    pub(super) async fn rebuild_step(&self, budget_ms: u64) -> ApiResult<Option<(u64, u64)>> {
        if self.rebuilding.replace(true) {
            return Ok(None);
        }
        let result = self.rebuild_inner(budget_ms).await;
        self.rebuilding.set(false);
        result
    }

    async fn rebuild_inner(&self, budget_ms: u64) -> ApiResult<Option<(u64, u64)>> {
        let started = now_ms();
        loop {
            let Some(mut job) = self.load_job()? else {
                return Ok(None);
            };
            let v = job.version()?;
            let total = u64::from(v.pages());
            if u64::from(job.next) >= total {
                return self.finish(job).await.map(Some);
            }
            if now_ms().saturating_sub(started) > budget_ms {
                self.set_alarm_at(now_ms() as i64).await?;
                return Ok(None);
            }
            let page_bytes = v.page_bytes();
            let group = (BUILD_BYTES / page_bytes).clamp(1, total - u64::from(job.next)) as u32;
            let (first, end) = (job.next, job.next + group);
            let mut pages = Vec::with_capacity(group as usize);
            for idx in first..end {
                pages.push(
                    Filter::from_bitmap(v.header(), v.page(idx), &[])
                        .map_err(|e| ApiError::Internal(format!("rebuild page: {e}")))?,
                );
            }
            self.pages
                .borrow_mut()
                .note((u64::from(group) * page_bytes) as usize);
            let cfg = crate::edge::config::GpConfig::cached(&self.env)?;
            let count = cfg.mapping_shards;
            let shards = match v.params.prefix_range(v.spbits, first, end) {
                Some((lo, hi)) => {
                    crate::core::shard::shard_of_prefix(lo, count)
                        ..crate::core::shard::shard_of_prefix(hi, count) + 1
                }
                None => 0..count,
            };
            let mut reinserted = 0u64;
            for s in shards {
                let shard = Shard::at(&self.env, &cfg, s);
                let mut after = None;
                loop {
                    let (digests, next) = shard.digests(after, PAGE).await?;
                    for hex in &digests {
                        let d: [u8; 32] = hex_decode(hex)
                            .ok()
                            .and_then(|b| b.try_into().ok())
                            .ok_or_else(|| {
                                ApiError::Internal("shard digest is not 32 bytes".into())
                            })?;
                        let Some(idx) = v.params.partition_of_digest(&d, v.spbits) else {
                            continue;
                        };
                        if let Some(p) = idx
                            .checked_sub(first)
                            .and_then(|i| pages.get_mut(i as usize))
                        {
                            p.insert(&d);
                            reinserted += 1;
                        }
                    }
                    match next {
                        Some(n) => after = Some(n),
                        None => break,
                    }
                }
            }
            for (i, f) in pages.iter().enumerate() {
                self.put_page(
                    v.version,
                    first + i as u32,
                    f.to_bytes_compact(),
                    0,
                    f.count_ones(),
                )?;
            }
            job.next = end;
            job.reinserted += reinserted;
            self.save_job(&job)?;
        }
    }

    /// The buffered inserts go into the new version, which becomes current
    /// in the same synchronous block; subscribers are then told.
    async fn finish(&self, job: Job) -> ApiResult<(u64, u64)> {
        let mut v = job.version()?;
        #[derive(Deserialize)]
        struct Buffered {
            digest: serde_bytes::ByteBuf,
        }
        let rows: Vec<Buffered> = self
            .sql()
            .exec("SELECT digest FROM rebuild_buffer", None)
            .internal("select rebuild buffer")?
            .to_array()
            .internal("read rebuild buffer")?;
        let buffered = rows.len() as u64;
        let mut by_page: BTreeMap<u32, Vec<[u8; 32]>> = BTreeMap::new();
        for r in rows {
            let Ok(d) = <[u8; 32]>::try_from(r.digest.as_slice()) else {
                continue;
            };
            if let Some(idx) = v.params.partition_of_digest(&d, v.spbits) {
                by_page.entry(idx).or_default().push(d);
            }
        }
        for (idx, ds) in by_page {
            let (mut f, _, _, _) = self.read_page(&v, idx)?;
            for d in &ds {
                f.insert(d);
            }
            self.put_page(v.version, idx, f.to_bytes_compact(), 0, f.count_ones())?;
        }
        #[derive(Deserialize)]
        struct Sum {
            n: Option<i64>,
        }
        let sum: Vec<Sum> = self
            .sql()
            .exec(
                "SELECT SUM(ones) AS n FROM own_page WHERE version = ?",
                Some(vec![(v.version as i64).into()]),
            )
            .internal("rebuild ones")?
            .to_array()
            .internal("rebuild ones rows")?;
        v.ones = sum.first().and_then(|s| s.n).unwrap_or(0).max(0) as u64;
        let sql = self.sql();
        sql.exec("UPDATE own_version SET current = 0", None)
            .internal("retire versions")?;
        self.store_version(&v, true)?;
        let newer = Some(vec![(v.version as i64).into()]);
        for q in [
            "DELETE FROM own_page WHERE version < ?",
            "DELETE FROM own_log WHERE version < ?",
            "DELETE FROM own_version WHERE version < ?",
        ] {
            sql.exec(q, newer.clone()).internal("drop old version")?;
        }
        sql.exec("DELETE FROM rebuild_buffer", None)
            .internal("clear rebuild buffer")?;
        sql.exec("DELETE FROM rebuild_job", None)
            .internal("end rebuild")?;
        self.drop_cache();
        *self.version.borrow_mut() = Some(v);
        self.recovery_done()?;
        // Every subscriber of the old version is now due a rotation notice.
        sql.exec("UPDATE subscriber SET next_at = 0, failures = 0", None)
            .internal("notify subscribers")?;
        self.schedule().await?;
        Ok((job.previous, job.reinserted + buffered))
    }

    /// `POST /rebuild` (the operator, the cron): starts a rebuild and works
    /// on it for up to [`ALARM_BUDGET_MS`]: 200 with the new version when
    /// done by then, else 202 with the progress (the alarm goes on).
    pub(super) async fn rebuild_now(&self) -> ApiResult<worker::Result<Response>> {
        if self.load_job()?.is_some() {
            let mut e = ApiError::client(
                409,
                "rebuild-in-progress",
                "Rebuild in progress",
                "a filter rebuild is already running; try again when it has finished",
            );
            if let ApiError::Client { extra, .. } = &mut e {
                extra.insert("rebuild".into(), self.rebuild_progress()?);
            }
            return Err(e);
        }
        self.start_rebuild("requested").await?;
        match self.rebuild_step(ALARM_BUDGET_MS).await? {
            Some((previous, reinserted)) => {
                let mut info = self.info()?;
                if let Some(o) = info.as_object_mut() {
                    o.insert("previous_version".into(), json!(previous));
                    o.insert("reinserted_siis".into(), json!(reinserted));
                }
                Ok(Response::from_json(&info))
            }
            None => Ok(
                Response::from_json(&json!({ "rebuilding": self.rebuild_progress()? }))
                    .map(|r| r.with_status(202)),
            ),
        }
    }
}
