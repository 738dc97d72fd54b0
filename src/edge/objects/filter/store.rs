//! How the own filter is stored: per version, *pages* of at most
//! [`PAGE_MAX_BYTES`] (a power-of-two cut finer than the partitions served
//! to peers) as rows of compact GLF2 (`own_page`), and the additions log by
//! batch and page (`own_log`). A page is its row plus its log rows after
//! the row's `seq`, so an insert writes one small log row per page it
//! changes; a page's row is rewritten only once its log has grown past
//! [`FLUSH_ROWS`] batches or a sixteenth of its bits, which bounds what a
//! load replays. Memory holds at most [`CACHE_BYTES`] of pages (an LRU that
//! drops pages without writing them: their log has every change).
use super::FilterObject;
use crate::core::filter::{
    decode_additions, encode_additions, Filter, FilterHeader, FilterParams, ParamsDoc, Partition,
};
use crate::edge::clock::now_ms;
use crate::edge::http::error::{ApiError, ApiResult, OrInternal};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};

/// Largest stored page (dense): what one cache miss reads.
pub const PAGE_MAX_BYTES: u64 = 64 << 10;
/// Pages held in memory at most (with a rebuild's group and a partition
/// being served, the object holds at most 32 MiB of filter).
pub const CACHE_BYTES: usize = 16 << 20;
/// A page with this many batches logged since its row is written back.
pub const FLUSH_ROWS: u64 = 256;

/// The object's tables. `own_*` replace the single-snapshot tables of
/// earlier versions (`filter_*`), which a first load drops.
pub const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS own_version (
    version INTEGER PRIMARY KEY, created_at_ms INTEGER NOT NULL, current INTEGER NOT NULL,
    params TEXT NOT NULL, pbits INTEGER NOT NULL, spbits INTEGER NOT NULL, ones INTEGER NOT NULL,
    sized_for INTEGER NOT NULL, seq INTEGER NOT NULL);
    CREATE TABLE IF NOT EXISTS own_page (
    version INTEGER NOT NULL, idx INTEGER NOT NULL, glf BLOB NOT NULL,
    seq INTEGER NOT NULL, ones INTEGER NOT NULL, PRIMARY KEY (version, idx));
    CREATE TABLE IF NOT EXISTS own_log (
    version INTEGER NOT NULL, seq INTEGER NOT NULL, page INTEGER NOT NULL,
    n INTEGER NOT NULL, at_ms INTEGER NOT NULL, gla1 BLOB NOT NULL,
    PRIMARY KEY (version, seq, page));
    CREATE INDEX IF NOT EXISTS own_log_page ON own_log (version, page, seq);
    CREATE TABLE IF NOT EXISTS subscriber (
    peer TEXT PRIMARY KEY, version INTEGER NOT NULL, callback TEXT NOT NULL,
    acked INTEGER NOT NULL, failures INTEGER NOT NULL DEFAULT 0,
    next_at INTEGER NOT NULL DEFAULT 0, since_ms INTEGER NOT NULL, last_error TEXT);
    CREATE TABLE IF NOT EXISTS rebuild_job (k INTEGER PRIMARY KEY, job TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS filter_recovery (
    id INTEGER PRIMARY KEY CHECK (id = 1), unreadable_version INTEGER NOT NULL,
    since_ms INTEGER NOT NULL, reason TEXT NOT NULL, done_ms INTEGER);
    CREATE TABLE IF NOT EXISTS rebuild_buffer (digest BLOB PRIMARY KEY);";

/// A version (a row of `own_version`).
#[derive(Debug, Clone)]
pub struct Version {
    pub version: u64,
    pub created_at_ms: u64,
    pub params: FilterParams,
    /// Served to peers as 2^pbits partitions.
    pub pbits: u8,
    /// Stored as 2^spbits pages (spbits ≥ pbits).
    pub spbits: u8,
    /// Bits set (exact: each batch adds the bits it flipped).
    pub ones: u64,
    /// The SIIs it was sized for.
    pub sized_for: u64,
    /// Its last additions batch.
    pub seq: u64,
}

impl Version {
    /// A new, empty version's shape.
    pub fn new(version: u64, created_at_ms: u64, params: FilterParams, sized_for: u64) -> Self {
        let pbits = params.partition_bits_for(super::PARTITION_MAX_BYTES);
        Version {
            version,
            created_at_ms,
            params,
            pbits,
            spbits: params.partition_bits_for(PAGE_MAX_BYTES).max(pbits),
            ones: 0,
            sized_for,
            seq: 0,
        }
    }
    pub fn header(&self) -> FilterHeader {
        FilterHeader {
            version: self.version,
            created_at_ms: self.created_at_ms,
            params: self.params,
        }
    }
    pub fn page(&self, idx: u32) -> Partition {
        Partition {
            bits: self.spbits,
            index: idx,
        }
    }
    pub fn pages(&self) -> u32 {
        1u32 << self.spbits
    }
    /// Bytes of one page.
    pub fn page_bytes(&self) -> u64 {
        ((self.params.bits >> self.spbits) / 8).max(1)
    }
    /// The pages of served partition `i`.
    pub fn pages_of(&self, i: u32) -> std::ops::Range<u32> {
        let per = 1u32 << (self.spbits - self.pbits);
        i * per..(i + 1) * per
    }
}

struct Page {
    filter: Filter,
    /// Changed since its row was written.
    dirty: bool,
    /// The last batch that changed it.
    touched: u64,
    /// Batches and bits logged for it since its row was written.
    pending_rows: u64,
    pending_bits: u64,
    used: u64,
}

/// The pages in memory, and how much filter the object has held.
#[derive(Default)]
pub struct Pages {
    map: HashMap<u32, Page>,
    bytes: usize,
    peak: usize,
    largest: usize,
    tick: u64,
    loads: u64,
}

impl Pages {
    /// For `/v1/gp` and the benchmark.
    pub fn stats(&self) -> serde_json::Value {
        serde_json::json!({
            "pages_held": self.map.len(),
            "bytes_held": self.bytes,
            "bytes_held_peak": self.peak,
            "page_bytes_max": self.largest,
            "page_loads": self.loads,
        })
    }

    /// Records `extra` bytes of filter held beside the cache for a while.
    pub fn note(&mut self, extra: usize) {
        self.peak = self.peak.max(self.bytes + extra);
    }

    pub fn clear(&mut self) {
        self.map.clear();
        self.bytes = 0;
    }
}

#[derive(Deserialize)]
struct VersionRow {
    version: i64,
    created_at_ms: i64,
    params: String,
    pbits: i64,
    spbits: i64,
    ones: i64,
    sized_for: i64,
    seq: i64,
}

#[derive(Deserialize)]
struct PageRow {
    glf: serde_bytes::ByteBuf,
    seq: i64,
}

/// A recovery from unreadable stored bytes (`filter_recovery`).
#[derive(Deserialize)]
pub(super) struct RecoveryRow {
    pub unreadable_version: i64,
    pub since_ms: i64,
    pub reason: String,
    pub done_ms: Option<i64>,
}

/// Why a page could not be read: storage failed, or its bytes are bad.
enum Unreadable {
    Sql(ApiError),
    Bytes(String),
}

impl From<ApiError> for Unreadable {
    fn from(e: ApiError) -> Self {
        Unreadable::Sql(e)
    }
}

#[derive(Deserialize)]
struct LogRow {
    seq: i64,
    gla1: serde_bytes::ByteBuf,
}

impl FilterObject {
    /// Loads the current version, or creates the first one (sized from
    /// the config) and, when mappings may exist already (an older storage
    /// format), rebuilds it from them at once.
    pub(super) async fn ensure_version(&self) -> ApiResult<()> {
        if self.version.borrow().is_some() {
            return Ok(());
        }
        self.schema.ensure(&self.sql())?;
        if let Some(v) = self.load_version()? {
            *self.version.borrow_mut() = Some(v.clone());
            self.probe(&v)?;
            return Ok(());
        }
        // Numbering goes on from an older store (the `filter_version`
        // table of the single-snapshot format), so peers see a new version.
        #[derive(Deserialize)]
        struct Max {
            v: Option<i64>,
        }
        let legacy = self
            .sql()
            .exec("SELECT MAX(version) AS v FROM filter_version", None)
            .ok()
            .and_then(|c| c.to_array::<Max>().ok())
            .and_then(|rows| rows.into_iter().next())
            .and_then(|m| m.v);
        let cfg = crate::edge::config::GpConfig::cached(&self.env)?;
        let params = crate::core::filter::params_for(
            cfg.filter_layout,
            cfg.filter_expected_siis,
            cfg.filter_fp_rate,
        )
        .map_err(|e| ApiError::Internal(format!("filter config: {e}")))?;
        let first = legacy.map_or(1, |v| v.max(0) as u64 + 1);
        let v = Version::new(first, now_ms(), params, cfg.filter_expected_siis);
        self.store_version(&v, true)?;
        *self.version.borrow_mut() = Some(v);
        if legacy.is_some() {
            self.sql()
                .exec(
                    "DROP TABLE IF EXISTS filter_chunk; DROP TABLE IF EXISTS filter_addition;
                     DROP TABLE IF EXISTS filter_snapshot_seq; DROP TABLE IF EXISTS filter_version;",
                    None,
                )
                .internal("drop legacy tables")?;
            self.start_rebuild("the filter was stored in an older format")
                .await?;
            self.set_alarm_at(now_ms() as i64).await?;
        }
        Ok(())
    }

    fn load_version(&self) -> ApiResult<Option<Version>> {
        let rows: Vec<VersionRow> = self
            .sql()
            .exec(
                "SELECT version, created_at_ms, params, pbits, spbits, ones, sized_for, seq
                 FROM own_version WHERE current = 1 ORDER BY version DESC LIMIT 1",
                None,
            )
            .internal("select version")?
            .to_array()
            .internal("read version")?;
        let Some(r) = rows.into_iter().next() else {
            return Ok(None);
        };
        let doc: ParamsDoc = serde_json::from_str(&r.params)
            .map_err(|e| ApiError::Internal(format!("stored params: {e}")))?;
        Ok(Some(Version {
            version: r.version.max(0) as u64,
            created_at_ms: r.created_at_ms.max(0) as u64,
            params: doc
                .params()
                .map_err(|e| ApiError::Internal(format!("stored params: {e}")))?,
            pbits: r.pbits.clamp(0, 32) as u8,
            spbits: r.spbits.clamp(0, 32) as u8,
            ones: r.ones.max(0) as u64,
            sized_for: r.sized_for.max(0) as u64,
            seq: r.seq.max(0) as u64,
        }))
    }

    pub(super) fn store_version(&self, v: &Version, current: bool) -> ApiResult<()> {
        let params = serde_json::to_string(&ParamsDoc::from(&v.params))
            .map_err(|e| ApiError::Internal(format!("params: {e}")))?;
        self.sql()
            .exec(
                "INSERT OR REPLACE INTO own_version
                 (version, created_at_ms, current, params, pbits, spbits, ones, sized_for, seq)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                Some(vec![
                    (v.version as i64).into(),
                    (v.created_at_ms as i64).into(),
                    i64::from(current).into(),
                    params.into(),
                    i64::from(v.pbits).into(),
                    i64::from(v.spbits).into(),
                    (v.ones as i64).into(),
                    (v.sized_for as i64).into(),
                    (v.seq as i64).into(),
                ]),
            )
            .internal("store version")?;
        Ok(())
    }

    /// The current version (after [`ensure_version`](Self::ensure_version)).
    pub(super) fn current(&self) -> ApiResult<Version> {
        self.version
            .borrow()
            .clone()
            .ok_or_else(|| ApiError::Internal("filter version not loaded".into()))
    }

    /// Page `idx` of version `v` from its row and its log rows after it
    /// (not cached): the page, the last batch that changed it, and the
    /// batches and bits logged past its row.
    pub(super) fn read_page(&self, v: &Version, idx: u32) -> ApiResult<(Filter, u64, u64, u64)> {
        self.read_page_inner(v, idx).map_err(|e| match e {
            Unreadable::Sql(e) => e,
            Unreadable::Bytes(reason) => {
                if let Err(e) = self.found_unreadable(v, &reason) {
                    worker::console_error!("filter recovery: {e:?}");
                }
                ApiError::Internal(reason)
            }
        })
    }

    fn read_page_inner(
        &self,
        v: &Version,
        idx: u32,
    ) -> Result<(Filter, u64, u64, u64), Unreadable> {
        let rows: Vec<PageRow> = self
            .sql()
            .exec(
                "SELECT glf, seq FROM own_page WHERE version = ? AND idx = ?",
                Some(vec![(v.version as i64).into(), i64::from(idx).into()]),
            )
            .internal("select page")?
            .to_array()
            .internal("read page")?;
        let (mut f, flushed) = match rows.into_iter().next() {
            Some(r) => {
                let f = Filter::from_bytes(&r.glf).map_err(|e| {
                    Unreadable::Bytes(format!(
                        "stored page {idx} of filter v{} is unreadable: {e}",
                        v.version
                    ))
                })?;
                if f.header().version != v.version || f.partition_id() != v.page(idx) {
                    return Err(Unreadable::Bytes(format!(
                        "stored page {idx} of filter v{} holds another page",
                        v.version
                    )));
                }
                (f, r.seq.max(0) as u64)
            }
            None => (
                Filter::from_bitmap(v.header(), v.page(idx), &[])
                    .map_err(|e| ApiError::Internal(format!("page {idx}: {e}")))?,
                0,
            ),
        };
        let logs: Vec<LogRow> = self
            .sql()
            .exec(
                "SELECT seq, gla1 FROM own_log WHERE version = ? AND page = ? AND seq > ? ORDER BY seq",
                Some(vec![
                    (v.version as i64).into(),
                    i64::from(idx).into(),
                    (flushed as i64).into(),
                ]),
            )
            .internal("select page log")?
            .to_array()
            .internal("read page log")?;
        let (mut touched, rows, mut bits) = (flushed, logs.len() as u64, 0u64);
        for l in logs {
            let batch = decode_additions(&l.gla1).map_err(|e| {
                Unreadable::Bytes(format!(
                    "stored additions {} of filter v{} are unreadable: {e}",
                    l.seq, v.version
                ))
            })?;
            f.apply(&batch.indices).map_err(|e| {
                Unreadable::Bytes(format!(
                    "stored additions {} of filter v{} do not fit it: {e}",
                    l.seq, v.version
                ))
            })?;
            bits += batch.indices.len() as u64;
            touched = l.seq.max(0) as u64;
        }
        Ok((f, touched, rows, bits))
    }

    /// Runs `f` on page `idx` of the current version, loading it into the
    /// cache and dropping the least recently used beyond [`CACHE_BYTES`].
    fn with_page<T>(&self, v: &Version, idx: u32, f: impl FnOnce(&mut Page) -> T) -> ApiResult<T> {
        if !self.pages.borrow().map.contains_key(&idx) {
            let (filter, touched, pending_rows, pending_bits) = self.read_page(v, idx)?;
            let bytes = (filter.local_bits() / 8) as usize;
            let mut pages = self.pages.borrow_mut();
            pages.loads += 1;
            pages.bytes += bytes;
            pages.largest = pages.largest.max(bytes);
            pages.map.insert(
                idx,
                Page {
                    filter,
                    dirty: false,
                    touched,
                    pending_rows,
                    pending_bits,
                    used: 0,
                },
            );
            let held = pages.bytes;
            pages.peak = pages.peak.max(held);
        }
        let mut pages = self.pages.borrow_mut();
        pages.tick += 1;
        let tick = pages.tick;
        let out = match pages.map.get_mut(&idx) {
            Some(page) => {
                page.used = tick;
                f(page)
            }
            None => return Err(ApiError::Internal("page not cached".into())),
        };
        while pages.bytes > CACHE_BYTES {
            let Some(victim) = pages
                .map
                .iter()
                .filter(|(&k, _)| k != idx)
                .min_by_key(|(_, p)| p.used)
                .map(|(&k, _)| k)
            else {
                break;
            };
            // Its changes are in the log: a later load replays them.
            if let Some(p) = pages.map.remove(&victim) {
                pages.bytes -= (p.filter.local_bits() / 8) as usize;
            }
        }
        Ok(out)
    }

    /// Writes a cached page's row (its log so far included).
    fn write_back(&self, v: &Version, idx: u32) -> ApiResult<()> {
        let row = {
            let pages = self.pages.borrow();
            match pages.map.get(&idx) {
                Some(p) if p.dirty => Some((
                    p.filter.to_bytes_compact(),
                    p.touched,
                    p.filter.count_ones(),
                )),
                _ => None,
            }
        };
        if let Some((glf, touched, ones)) = row {
            self.put_page(v.version, idx, glf, touched, ones)?;
            if let Some(p) = self.pages.borrow_mut().map.get_mut(&idx) {
                p.dirty = false;
                p.pending_rows = 0;
                p.pending_bits = 0;
            }
        }
        Ok(())
    }

    pub(super) fn put_page(
        &self,
        version: u64,
        idx: u32,
        glf: Vec<u8>,
        seq: u64,
        ones: u64,
    ) -> ApiResult<()> {
        self.sql()
            .exec(
                "INSERT OR REPLACE INTO own_page (version, idx, glf, seq, ones) VALUES (?, ?, ?, ?, ?)",
                Some(vec![
                    (version as i64).into(),
                    i64::from(idx).into(),
                    glf.into(),
                    (seq as i64).into(),
                    (ones as i64).into(),
                ]),
            )
            .internal("store page")?;
        Ok(())
    }

    /// Inserts digests into the current version: one log row per page
    /// changed, one batch `seq` for all of them (synchronous: the object's
    /// input gate keeps batches in order). During a rebuild the digests are
    /// also buffered for the new version. Returns (version, seq, flipped bits).
    pub(super) fn insert_digests(&self, digests: &[[u8; 32]]) -> ApiResult<(u64, u64, Vec<u64>)> {
        let mut v = self.current()?;
        let mut by_page: BTreeMap<u32, Vec<&[u8; 32]>> = BTreeMap::new();
        for d in digests {
            let idx = v
                .params
                .partition_of_digest(d, v.spbits)
                .ok_or_else(|| ApiError::Internal("digest outside the filter".into()))?;
            by_page.entry(idx).or_default().push(d);
        }
        if self.rebuild_active()? {
            for d in digests {
                self.sql()
                    .exec(
                        "INSERT OR IGNORE INTO rebuild_buffer (digest) VALUES (?)",
                        Some(vec![d.to_vec().into()]),
                    )
                    .internal("rebuild buffer")?;
            }
        }
        let seq = v.seq + 1;
        let now = now_ms();
        let flush_bits = (v.params.bits >> v.spbits) / 16;
        let mut flipped = Vec::new();
        for (idx, ds) in by_page {
            let (added, flush) = self.with_page(&v, idx, |p| {
                let mut added = Vec::new();
                for d in ds {
                    added.extend_from_slice(p.filter.insert(d).as_slice());
                }
                if !added.is_empty() {
                    p.dirty = true;
                    p.touched = seq;
                    p.pending_rows += 1;
                    p.pending_bits += added.len() as u64;
                }
                let flush = p.pending_rows >= FLUSH_ROWS || p.pending_bits >= flush_bits;
                (added, flush)
            })?;
            if added.is_empty() {
                continue;
            }
            self.sql()
                .exec(
                    "INSERT INTO own_log (version, seq, page, n, at_ms, gla1) VALUES (?, ?, ?, ?, ?, ?)",
                    Some(vec![
                        (v.version as i64).into(),
                        (seq as i64).into(),
                        i64::from(idx).into(),
                        (added.len() as i64).into(),
                        (now as i64).into(),
                        encode_additions(v.version, &added).into(),
                    ]),
                )
                .internal("log additions")?;
            if flush {
                self.write_back(&v, idx)?;
            }
            flipped.extend(added);
        }
        if flipped.is_empty() {
            return Ok((v.version, v.seq, flipped));
        }
        v.seq = seq;
        v.ones += flipped.len() as u64;
        self.store_version(&v, true)?;
        let out = (v.version, seq, flipped);
        *self.version.borrow_mut() = Some(v);
        Ok(out)
    }

    /// Per served partition of `v`: the last batch that changed it and its
    /// bits set (from the pages' rows and logs, nothing loaded).
    pub(super) fn partition_states(&self, v: &Version) -> ApiResult<Vec<(u64, u64)>> {
        let mut out = vec![(0u64, 0u64); 1usize << v.pbits];
        let shift = v.spbits - v.pbits;
        let mut add = |page: i64, seq: i64, ones: i64| {
            if let Some(o) = out.get_mut((page.max(0) as usize) >> shift) {
                o.0 = o.0.max(seq.max(0) as u64);
                o.1 += ones.max(0) as u64;
            }
        };
        #[derive(Deserialize)]
        struct Row {
            idx: i64,
            seq: i64,
            ones: i64,
        }
        let rows: Vec<Row> = self
            .sql()
            .exec(
                "SELECT idx, seq, ones FROM own_page WHERE version = ?",
                Some(vec![(v.version as i64).into()]),
            )
            .internal("select pages")?
            .to_array()
            .internal("read pages")?;
        for r in rows {
            add(r.idx, r.seq, r.ones);
        }
        let logs: Vec<Row> = self
            .sql()
            .exec(
                "SELECT l.page AS idx, MAX(l.seq) AS seq, SUM(l.n) AS ones FROM own_log l
                 LEFT JOIN own_page p ON p.version = l.version AND p.idx = l.page
                 WHERE l.version = ? AND l.seq > COALESCE(p.seq, 0) GROUP BY l.page",
                Some(vec![(v.version as i64).into()]),
            )
            .internal("select page logs")?
            .to_array()
            .internal("read page logs")?;
        for l in logs {
            add(l.idx, l.seq, l.ones);
        }
        Ok(out)
    }

    /// Page `idx`'s dense bitmap (cached, or read without caching it).
    fn page_bitmap(&self, v: &Version, idx: u32) -> ApiResult<Vec<u8>> {
        if let Some(p) = self.pages.borrow().map.get(&idx) {
            return Ok(p.filter.bitmap_bytes());
        }
        Ok(self.read_page(v, idx)?.0.bitmap_bytes())
    }

    /// Served partition `i`'s dense bitmap.
    pub(super) fn partition_bitmap(&self, v: &Version, i: u32) -> ApiResult<Vec<u8>> {
        let mut bitmap = Vec::new();
        for page in v.pages_of(i) {
            bitmap.extend_from_slice(&self.page_bitmap(v, page)?);
        }
        Ok(bitmap)
    }

    /// Served partition `i` as compact GLF2.
    pub(super) fn partition_bytes(&self, v: &Version, i: u32) -> ApiResult<Vec<u8>> {
        let bitmap = self.partition_bitmap(v, i)?;
        self.pages.borrow_mut().note(2 * bitmap.len());
        let part = Partition {
            bits: v.pbits,
            index: i,
        };
        Filter::from_bitmap(v.header(), part, &bitmap)
            .map(|f| f.to_bytes_compact())
            .map_err(|e| ApiError::Internal(format!("partition {i}: {e}")))
    }

    /// Logged batches of `version` after `after` up to `upto`, in order,
    /// until about `max_indices` indices (whole batches, at least one if
    /// any): the last batch included and the bits, ascending. One indexed
    /// read per batch, so a long log is never read at once.
    pub(super) fn log_after(
        &self,
        version: u64,
        after: u64,
        upto: u64,
        max_indices: usize,
    ) -> ApiResult<(u64, Vec<u64>)> {
        let mut out = Vec::new();
        let mut last = after;
        while last < upto && (last == after || out.len() < max_indices) {
            let seq = last + 1;
            let rows: Vec<LogRow> = self
                .sql()
                .exec(
                    "SELECT seq, gla1 FROM own_log WHERE version = ? AND seq = ?",
                    Some(vec![(version as i64).into(), (seq as i64).into()]),
                )
                .internal("select additions")?
                .to_array()
                .internal("read additions")?;
            for r in rows {
                let batch = decode_additions(&r.gla1)
                    .map_err(|e| ApiError::Internal(format!("stored additions {seq}: {e}")))?;
                out.extend(batch.indices);
            }
            last = seq;
        }
        out.sort_unstable();
        Ok((last, out))
    }

    /// The last batch that changed served partition `i`.
    pub(super) fn partition_touched(&self, v: &Version, i: u32) -> ApiResult<u64> {
        #[derive(Deserialize)]
        struct Max {
            m: Option<i64>,
        }
        let pages = v.pages_of(i);
        let mut touched = 0u64;
        for q in [
            "SELECT MAX(seq) AS m FROM own_page WHERE version = ? AND idx >= ? AND idx < ?",
            "SELECT MAX(seq) AS m FROM own_log WHERE version = ? AND page >= ? AND page < ?",
        ] {
            let rows: Vec<Max> = self
                .sql()
                .exec(
                    q,
                    Some(vec![
                        (v.version as i64).into(),
                        i64::from(pages.start).into(),
                        i64::from(pages.end).into(),
                    ]),
                )
                .internal("partition seq")?
                .to_array()
                .internal("partition seq rows")?;
            touched = touched.max(rows.first().and_then(|r| r.m).unwrap_or(0).max(0) as u64);
        }
        Ok(touched)
    }

    /// Reads the lowest stored page and the lowest logged one of `v` (a
    /// load: at most two pages), so stored bytes this build cannot read
    /// are found at once, not at the first insert into them
    /// ([`found_unreadable`](Self::found_unreadable)).
    fn probe(&self, v: &Version) -> ApiResult<()> {
        #[derive(Deserialize)]
        struct Min {
            m: Option<i64>,
        }
        for q in [
            "SELECT MIN(idx) AS m FROM own_page WHERE version = ?",
            "SELECT MIN(page) AS m FROM own_log WHERE version = ?",
        ] {
            let rows: Vec<Min> = self
                .sql()
                .exec(q, Some(vec![(v.version as i64).into()]))
                .internal("probe page")?
                .to_array()
                .internal("probe page rows")?;
            if let Some(idx) = rows.first().and_then(|r| r.m) {
                let idx = u32::try_from(idx).unwrap_or(0);
                if self.read_page(v, idx).is_err() {
                    // found_unreadable has replaced the version.
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// The current version `v` holds bytes that cannot be read (disk
    /// corruption, or a wire format this build does not know). The filter
    /// is derived data (the mappings are authoritative), so a fresh, empty
    /// version is served at once and rebuilt from the shards right away
    /// (`schedule_recovery`), not at the next scheduled rebuild days
    /// later: until then peers would miss this GP's mappings. Subscribers
    /// are told of the new version; `/v1/gp` shows the recovery.
    fn found_unreadable(&self, v: &Version, reason: &str) -> ApiResult<()> {
        if self
            .version
            .borrow()
            .as_ref()
            .is_none_or(|c| c.version != v.version)
        {
            // Not the current version (a rebuild's): the rebuild fails and
            // is retried.
            return Ok(());
        }
        let fresh = Version::new(v.version + 1, now_ms(), v.params, v.sized_for);
        worker::console_error!(
            "stored filter v{} cannot be read ({reason}); serving v{} and rebuilding it from the mappings",
            v.version,
            fresh.version
        );
        let sql = self.sql();
        sql.exec(
            "INSERT OR REPLACE INTO filter_recovery (id, unreadable_version, since_ms, reason, done_ms)
             VALUES (1, ?, ?, ?, NULL)",
            Some(vec![
                (v.version as i64).into(),
                (now_ms() as i64).into(),
                reason.into(),
            ]),
        )
        .internal("record filter recovery")?;
        sql.exec("UPDATE own_version SET current = 0", None)
            .internal("retire versions")?;
        self.store_version(&fresh, true)?;
        let upto = Some(vec![(fresh.version as i64).into()]);
        for q in [
            "DELETE FROM own_page WHERE version >= ?",
            "DELETE FROM own_log WHERE version >= ?",
        ] {
            // Rows of an abandoned rebuild that would collide.
            sql.exec(q, upto.clone()).internal("drop stale rows")?;
        }
        for q in [
            "DELETE FROM own_page WHERE version < ?",
            "DELETE FROM own_log WHERE version < ?",
            "DELETE FROM own_version WHERE version < ?",
        ] {
            sql.exec(q, upto.clone())
                .internal("drop unreadable version")?;
        }
        sql.exec("DELETE FROM rebuild_job", None)
            .internal("end rebuild")?;
        sql.exec("DELETE FROM rebuild_buffer", None)
            .internal("clear rebuild buffer")?;
        // Every subscriber is due a rotation notice.
        sql.exec("UPDATE subscriber SET next_at = 0, failures = 0", None)
            .internal("notify subscribers")?;
        self.drop_cache();
        *self.version.borrow_mut() = Some(fresh);
        Ok(())
    }

    /// The last recovery from unreadable stored bytes, if any.
    pub(super) fn recovery(&self) -> ApiResult<Option<RecoveryRow>> {
        let rows: Vec<RecoveryRow> = self
            .sql()
            .exec(
                "SELECT unreadable_version, since_ms, reason, done_ms FROM filter_recovery WHERE id = 1",
                None,
            )
            .internal("select filter recovery")?
            .to_array()
            .internal("read filter recovery")?;
        Ok(rows.into_iter().next())
    }

    /// Starts the rebuild a recovery waits for (at once, by the alarm).
    pub(super) async fn schedule_recovery(&self) -> ApiResult<()> {
        let Some(r) = self.recovery()? else {
            return Ok(());
        };
        if r.done_ms.is_some() || self.rebuild_active()? {
            return Ok(());
        }
        self.start_rebuild(&format!(
            "stored filter v{} could not be read: {}",
            r.unreadable_version, r.reason
        ))
        .await?;
        self.set_alarm_at(now_ms() as i64).await
    }

    /// A finished rebuild ends a pending recovery.
    pub(super) fn recovery_done(&self) -> ApiResult<()> {
        self.sql()
            .exec(
                "UPDATE filter_recovery SET done_ms = ? WHERE id = 1 AND done_ms IS NULL",
                Some(vec![(now_ms() as i64).into()]),
            )
            .internal("filter recovery done")?;
        Ok(())
    }

    /// Forgets the cached pages (a new version).
    pub(super) fn drop_cache(&self) {
        self.pages.borrow_mut().clear();
    }
}
