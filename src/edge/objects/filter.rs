//! The GP's own routing filter, held by one SQLite-backed Durable Object.
//!
//! draft §9: "Each bloom filter has a timestamp, corresponding to the time of
//! creation on the GP" and filters "are versioned". The object keeps the
//! current version's header and bits (in chunks: a DO row holds at most
//! 2 MB) so the filter survives restarts and evictions.
//!
//! It also keeps, per version, the ordered log of 0→1 additions — one row
//! per inserted batch, numbered by a sequence `seq` — and the peers
//! subscribed to it. draft §9: "If the addition of a new SII causes an
//! entry in the bloom filter to flip from a zero to a one, a notification
//! is sent via webhook to any GP that has subscribed." A subscription is a
//! cursor (the last `seq` the peer acknowledged): the durable outbox *is*
//! that cursor, so nothing acknowledged is ever lost, a peer that was down
//! gets everything since its cursor in one batch, and repeated deliveries
//! are harmless (setting a bit twice changes nothing).
//!
//! Cursor, not the draft's timestamp ("When a subscription is created, it
//! also includes a timestamp"): a sequence number is exact — two batches in
//! the same millisecond are still ordered, clocks do not matter, and
//! "everything after 41" has exactly one meaning.
//!
//! The bits are persisted as the snapshot chunks plus the additions log
//! (the log rows are what a restart re-applies); the chunks are rewritten
//! only every [`COMPACT_EVERY`] batches, so an insert writes one small row,
//! not the whole filter. Writers reach this single object in batches
//! ([`insert_digests`] takes many digests), as ARCHITECTURE.md (Invariants 10) asks of the
//! filter's writer.
use crate::edge::objects::Schema;
use crate::edge::rpc;
use crate::edge::rpc::filter::SubscribeOp;
use crate::edge::rpc::shard::Shard;

use crate::core::encoding::b64_encode;
use crate::core::filter::{
    decode_additions, encode_additions, Filter, FilterHeader, FilterParams, HashScheme, Layout,
    ParamsDoc,
};
use crate::core::outbox::RetryPolicy;
use crate::edge::config::{FilterLayout, GpConfig};
use crate::edge::http::error::{ApiError, ApiResult, OrInternal};
use crate::edge::outbound::peer::Signer;
use crate::edge::rpc::filter::{Manifest, PartitionInfo};
use serde::Deserialize;
use serde_json::{json, Value};
use std::cell::{Cell, RefCell};
use worker::{durable_object, Env, Method, Request, Response, SqlStorage, State};

/// Batches after which the stored snapshot chunks are rewritten.
const COMPACT_EVERY: u64 = 256;
/// draft §9 subscriptions: additions are sent at most this long after they
/// happen; inserts within the window go out as one batch.
pub const BATCH_WINDOW_MS: i64 = 100;
/// Most bit indices in one delivery or one additions response; the rest
/// follows at once in the next one.
const MAX_INDICES_PER_MESSAGE: usize = 200_000;
/// How long one delivery to a subscriber may take.
const DELIVERY_TIMEOUT_MS: u32 = 5_000;
/// Size of one stored chunk of the serialized filter (below the 2 MB row cap).
const CHUNK_BYTES: usize = 1 << 20;
/// Largest partition served to peers (dense): a filter is served as the
/// fewest power-of-two partitions of at most this size.
pub const PARTITION_MAX_BYTES: u64 = 1 << 20;

/// Durable Object holding the GP's own filter (one per GP, named "own").
#[durable_object]
pub struct FilterObject {
    state: State,
    env: Env,
    /// The current filter, loaded lazily from SQLite.
    filter: RefCell<Option<Filter>>,
    /// The current version's last additions batch (`seq`), valid once loaded.
    seq: Cell<u64>,
    /// Digests inserted while a rebuild collects the shards' SIIs; they go
    /// into the new version too, so no insert is lost across the swap.
    rebuild_buffer: RefCell<Option<Vec<[u8; 32]>>>,
    schema: Schema,
}

impl worker::DurableObject for FilterObject {
    fn new(state: State, env: Env) -> Self {
        FilterObject {
            state,
            env,
            filter: RefCell::new(None),
            seq: Cell::new(0),
            rebuild_buffer: RefCell::new(None),
            schema: Schema::new("filter schema", FILTER_SCHEMA),
        }
    }

    async fn fetch(&self, mut req: Request) -> worker::Result<Response> {
        let path = req.path();
        // A snapshot found unreadable while loading is rebuilt at once,
        // by the alarm (the load itself cannot wait for the shards).
        if let Err(e) = self.schedule_recovery().await {
            worker::console_error!("filter recovery: {e:?}");
        }
        let result = match path.as_str() {
            "/info" => self.info().map(|v| Response::from_json(&v)),
            "/insert" => match req.bytes().await {
                Ok(body) => self.insert(&body).await.map(|v| Response::from_json(&v)),
                Err(e) => Err(ApiError::Internal(format!("insert body: {e}"))),
            },
            "/snapshot" => self.snapshot(),
            "/manifest" => self.manifest().map(|m| Response::from_json(&m)),
            "/partition" => self.partition(&req),
            "/additions" => self.additions(&req),
            "/subscribe" => match rpc::read_op::<SubscribeOp>(&mut req).await {
                Ok(op) => self.subscribe(op).await,
                Err(e) => Err(ApiError::Internal(format!("subscribe body: {e}"))),
            },
            "/rebuild" => self.rebuild().await.map(|v| Response::from_json(&v)),
            "/subscribers" => self.subscribers().map(|v| Response::from_json(&v)),
            _ => Err(ApiError::not_found(&path)),
        };
        match result {
            Ok(resp) => resp,
            Err(e) => e.into_response(&path),
        }
    }

    /// Delivers pending additions and rotation notices to subscribers.
    async fn alarm(&self) -> worker::Result<Response> {
        if let Err(e) = self.recover().await {
            worker::console_error!("filter rebuild after an unreadable snapshot failed: {e:?}");
            self.state.storage().set_alarm(5_000i64).await?;
            return Response::ok("ok");
        }
        if let Err(e) = self.deliver().await {
            worker::console_error!("filter deliveries failed: {:?}", e);
            // Try again later rather than never.
            self.state.storage().set_alarm(5_000i64).await?;
        }
        Response::ok("ok")
    }
}

#[derive(Deserialize)]
struct RecoveryRow {
    unreadable_version: i64,
    since_ms: i64,
    reason: String,
    done_ms: Option<i64>,
}

#[derive(Deserialize)]
struct SubRow {
    peer: String,
    version: i64,
    callback: String,
    acked: i64,
    failures: i64,
    since_ms: i64,
}

/// The filter object's tables.
const FILTER_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS filter_version (
    version INTEGER PRIMARY KEY,
    created_at_ms INTEGER NOT NULL,
    current INTEGER NOT NULL DEFAULT 1
    );
    CREATE TABLE IF NOT EXISTS filter_chunk (
    version INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    bytes BLOB NOT NULL,
    PRIMARY KEY (version, idx)
    );
    CREATE TABLE IF NOT EXISTS filter_addition (
    version INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    gla1 BLOB NOT NULL,
    PRIMARY KEY (version, seq)
    );
    CREATE TABLE IF NOT EXISTS filter_snapshot_seq (
    version INTEGER PRIMARY KEY,
    seq INTEGER NOT NULL
    );
    CREATE TABLE IF NOT EXISTS filter_recovery (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    unreadable_version INTEGER NOT NULL,
    since_ms INTEGER NOT NULL,
    reason TEXT NOT NULL,
    done_ms INTEGER
    );
    CREATE TABLE IF NOT EXISTS subscriber (
    peer TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    callback TEXT NOT NULL,
    acked INTEGER NOT NULL,
    failures INTEGER NOT NULL DEFAULT 0,
    next_at INTEGER NOT NULL DEFAULT 0,
    since_ms INTEGER NOT NULL,
    last_error TEXT
    );";

impl FilterObject {
    fn sql(&self) -> SqlStorage {
        self.state.storage().sql()
    }

    fn ensure_schema(&self) -> ApiResult<()> {
        self.schema.ensure(&self.sql())
    }

    /// Loads the current filter, creating version 1 on first use.
    fn with_filter<T>(&self, f: impl FnOnce(&Filter) -> T) -> ApiResult<T> {
        if self.filter.borrow().is_none() {
            let loaded = match self.load_current()? {
                Some(filter) => filter,
                None => self.create_version(1)?,
            };
            *self.filter.borrow_mut() = Some(loaded);
        }
        let guard = self.filter.borrow();
        match guard.as_ref() {
            Some(filter) => Ok(f(filter)),
            None => Err(ApiError::Internal("filter not loaded".into())),
        }
    }

    fn load_current(&self) -> ApiResult<Option<Filter>> {
        self.ensure_schema()?;
        #[derive(Deserialize)]
        struct Row {
            version: i64,
        }
        let rows: Vec<Row> = self
            .sql()
            .exec("SELECT version FROM filter_version WHERE current = 1 ORDER BY version DESC LIMIT 1", None)
            .internal("select filter version")?
            .to_array()
            .internal("read filter version")?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        #[derive(Deserialize)]
        struct Chunk {
            bytes: serde_bytes::ByteBuf,
        }
        let chunks: Vec<Chunk> = self
            .sql()
            .exec(
                "SELECT bytes FROM filter_chunk WHERE version = ? ORDER BY idx",
                Some(vec![row.version.into()]),
            )
            .internal("select filter chunks")?
            .to_array()
            .internal("read filter chunks")?;
        let bytes: Vec<u8> = chunks
            .into_iter()
            .flat_map(|c| c.bytes.into_vec())
            .collect();
        // Our own bytes failing to decode means corruption or a snapshot
        // written in an older wire format. The filter is derived data (the
        // mappings are authoritative), so a fresh version serves at once
        // and is rebuilt from the shards right away (the alarm, see
        // `recover`), not at the next scheduled rebuild days later: until
        // then peers would miss this GP's mappings. `/v1/gp` shows it.
        let filter = match Filter::from_bytes(&bytes) {
            Ok(filter) => filter,
            Err(e) => {
                worker::console_error!(
                    "stored filter v{} cannot be read ({e}); starting v{} and rebuilding it from the mappings",
                    row.version,
                    row.version + 1
                );
                self.sql()
                    .exec(
                        "INSERT OR REPLACE INTO filter_recovery (id, unreadable_version, since_ms, reason, done_ms) VALUES (1, ?, ?, ?, NULL)",
                        Some(vec![
                            row.version.into(),
                            (crate::edge::clock::now_ms() as i64).into(),
                            e.to_string().into(),
                        ]),
                    )
                    .internal("record filter recovery")?;
                return self
                    .create_version(row.version.saturating_add(1) as u64)
                    .map(Some);
            }
        };
        let mut filter = filter;
        let snap_seq = self.snapshot_seq(row.version)?;
        let mut seq = snap_seq;
        for (s, indices) in self.log_after(row.version as u64, snap_seq, usize::MAX)? {
            filter
                .apply(&indices)
                .map_err(|e| ApiError::Internal(format!("replaying additions {s}: {e}")))?;
            seq = s;
        }
        self.seq.set(seq);
        Ok(Some(filter))
    }

    /// The additions batch the stored chunks of `version` already contain.
    fn snapshot_seq(&self, version: i64) -> ApiResult<u64> {
        #[derive(Deserialize)]
        struct Row {
            seq: i64,
        }
        let rows: Vec<Row> = self
            .sql()
            .exec(
                "SELECT seq FROM filter_snapshot_seq WHERE version = ?",
                Some(vec![version.into()]),
            )
            .internal("select snapshot seq")?
            .to_array()
            .internal("read snapshot seq")?;
        Ok(rows.first().map(|r| r.seq.max(0) as u64).unwrap_or(0))
    }

    /// Logged batches of `version` after `after`, in order, up to about
    /// `max_indices` indices (always at least one batch if any): (seq, bits).
    fn log_after(
        &self,
        version: u64,
        after: u64,
        max_indices: usize,
    ) -> ApiResult<Vec<(u64, Vec<u64>)>> {
        #[derive(Deserialize)]
        struct Row {
            seq: i64,
            gla1: serde_bytes::ByteBuf,
        }
        let rows: Vec<Row> = self
            .sql()
            .exec(
                "SELECT seq, gla1 FROM filter_addition WHERE version = ? AND seq > ? ORDER BY seq",
                Some(vec![(version as i64).into(), (after as i64).into()]),
            )
            .internal("select additions")?
            .to_array()
            .internal("read additions")?;
        let mut out = Vec::new();
        let mut total = 0usize;
        for r in rows {
            let batch = decode_additions(&r.gla1)
                .map_err(|e| ApiError::Internal(format!("stored additions {}: {e}", r.seq)))?;
            total += batch.indices.len();
            out.push((r.seq.max(0) as u64, batch.indices));
            if total >= max_indices {
                break;
            }
        }
        Ok(out)
    }

    /// Creates and stores an empty filter version sized from the config.
    fn create_version(&self, version: u64) -> ApiResult<Filter> {
        let filter = self.empty_version(version)?;
        self.store_version(&filter, 0)?;
        self.seq.set(0);
        Ok(filter)
    }

    /// An empty filter of `version`, sized from the config; not stored.
    fn empty_version(&self, version: u64) -> ApiResult<Filter> {
        let cfg = crate::edge::config::GpConfig::cached(&self.env)?;
        let n = cfg.filter_expected_siis;
        let fp = cfg.filter_fp_rate;
        let params = match cfg.filter_layout {
            // draft §9 interop: one bit per SII from "the lowest N bits".
            FilterLayout::Draft => FilterParams::draft_for_capacity(n, fp),
            FilterLayout::Plain => FilterParams::for_capacity(n, fp, Layout::Plain),
            FilterLayout::Blocked => FilterParams::for_capacity(n, fp, Layout::Blocked512),
        }
        .map_err(|e| ApiError::Internal(format!("filter config: {e}")))?;
        let now = crate::edge::clock::now_ms();
        let header = FilterHeader {
            version,
            created_at_ms: now,
            params,
        };
        Filter::new(header).map_err(|e| ApiError::Internal(format!("filter: {e}")))
    }

    /// Stores `filter` as the current version's snapshot, containing the
    /// additions up to batch `seq`.
    fn store_version(&self, filter: &Filter, seq: u64) -> ApiResult<()> {
        let bytes = filter.to_bytes();
        let version = filter.header().version as i64;
        let created = filter.header().created_at_ms as i64;
        let sql = self.sql();
        sql.exec(
            "DELETE FROM filter_chunk WHERE version = ?",
            Some(vec![version.into()]),
        )
        .internal("clear chunks")?;
        sql.exec(
            "INSERT OR REPLACE INTO filter_snapshot_seq (version, seq) VALUES (?, ?)",
            Some(vec![version.into(), (seq as i64).into()]),
        )
        .internal("snapshot seq")?;
        sql.exec("UPDATE filter_version SET current = 0", None)
            .internal("retire versions")?;
        sql.exec(
            "INSERT OR REPLACE INTO filter_version (version, created_at_ms, current) VALUES (?, ?, 1)",
            Some(vec![version.into(), created.into()]),
        )
        .internal("insert filter version")?;
        for (idx, chunk) in bytes.chunks(CHUNK_BYTES).enumerate() {
            sql.exec(
                "INSERT OR REPLACE INTO filter_chunk (version, idx, bytes) VALUES (?, ?, ?)",
                Some(vec![
                    version.into(),
                    (idx as i64).into(),
                    chunk.to_vec().into(),
                ]),
            )
            .internal("insert filter chunk")?;
        }
        Ok(())
    }

    fn info(&self) -> ApiResult<Value> {
        let mut v = self.with_filter(filter_info)?;
        let recovery = self.recovery()?;
        if let Some(o) = v.as_object_mut() {
            o.insert("seq".into(), json!(self.seq.get()));
            let rebuilding = recovery.as_ref().is_some_and(|r| r.done_ms.is_none());
            o.insert(
                "state".into(),
                json!(if rebuilding { "rebuilding" } else { "ok" }),
            );
            if let Some(r) = recovery {
                o.insert(
                    "recovery".into(),
                    json!({
                        "unreadable_version": r.unreadable_version,
                        "since_ms": r.since_ms,
                        "reason": r.reason,
                        "done_ms": r.done_ms,
                    }),
                );
            }
        }
        Ok(v)
    }

    /// The last recovery from an unreadable snapshot, if any.
    fn recovery(&self) -> ApiResult<Option<RecoveryRow>> {
        self.ensure_schema()?;
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

    /// Whether the filter was found unreadable and not rebuilt since (the
    /// filter is loaded first: loading is where that is found).
    fn recovery_pending(&self) -> ApiResult<bool> {
        self.with_filter(|_| ())?;
        Ok(self.recovery()?.is_some_and(|r| r.done_ms.is_none()))
    }

    /// Sets the alarm at once when a recovery waits for its rebuild.
    async fn schedule_recovery(&self) -> ApiResult<()> {
        if self.recovery_pending()? {
            self.state
                .storage()
                .set_alarm(0i64)
                .await
                .internal("recovery alarm")?;
        }
        Ok(())
    }

    /// Rebuilds the filter from the shards when a recovery waits for it.
    async fn recover(&self) -> ApiResult<()> {
        if !self.recovery_pending()? {
            return Ok(());
        }
        let info = self.rebuild().await?;
        self.sql()
            .exec(
                "UPDATE filter_recovery SET done_ms = ? WHERE id = 1",
                Some(vec![(crate::edge::clock::now_ms() as i64).into()]),
            )
            .internal("filter recovery done")?;
        worker::console_log!("filter rebuilt after an unreadable snapshot: {info}");
        Ok(())
    }

    /// Inserts a batch of SII digests (concatenated 32-byte SHA-256s);
    /// logs the 0→1 flips as one additions batch and schedules delivery.
    async fn insert(&self, body: &[u8]) -> ApiResult<Value> {
        if !body.len().is_multiple_of(32) {
            return Err(ApiError::Internal(format!(
                "insert body of {} bytes is not a list of 32-byte digests",
                body.len()
            )));
        }
        let (version, flipped) = self.with_filter_mut(|f| {
            let mut flipped = Vec::new();
            let mut buffer = self.rebuild_buffer.borrow_mut();
            for chunk in body.chunks_exact(32) {
                let mut d = [0u8; 32];
                d.copy_from_slice(chunk);
                flipped.extend_from_slice(f.insert(&d).as_slice());
                if let Some(b) = buffer.as_mut() {
                    b.push(d);
                }
            }
            (f.header().version, flipped)
        })?;
        if flipped.is_empty() {
            return Ok(json!({ "version": version, "seq": self.seq.get(), "additions": [] }));
        }
        let seq = self.seq.get() + 1;
        let now = crate::edge::clock::now_ms();
        self.sql()
            .exec(
                "INSERT INTO filter_addition (version, seq, at_ms, gla1) VALUES (?, ?, ?, ?)",
                Some(vec![
                    (version as i64).into(),
                    (seq as i64).into(),
                    (now as i64).into(),
                    encode_additions(version, &flipped).into(),
                ]),
            )
            .internal("log additions")?;
        self.seq.set(seq);
        if seq - self.snapshot_seq(version as i64)? >= COMPACT_EVERY {
            let filter = self.with_filter(|f| f.clone())?;
            self.store_version(&filter, seq)?;
        }
        // Subscribers that are not backing off get this batch within the
        // batch window; later inserts in the window ride along.
        self.sql()
            .exec(
                "UPDATE subscriber SET next_at = ? WHERE failures = 0 AND next_at = 0",
                Some(vec![(now as i64 + BATCH_WINDOW_MS).into()]),
            )
            .internal("schedule subscribers")?;
        self.schedule().await?;
        Ok(json!({ "version": version, "seq": seq, "additions": flipped }))
    }

    fn with_filter_mut<T>(&self, f: impl FnOnce(&mut Filter) -> T) -> ApiResult<T> {
        self.with_filter(|_| ())?;
        let mut guard = self.filter.borrow_mut();
        match guard.as_mut() {
            Some(filter) => Ok(f(filter)),
            None => Err(ApiError::Internal("filter not loaded".into())),
        }
    }

    /// Sets the alarm to the earliest subscriber with work due, if any.
    async fn schedule(&self) -> ApiResult<()> {
        let (version, seq) = (self.current_version()?, self.seq.get());
        #[derive(Deserialize)]
        struct Next {
            t: Option<i64>,
        }
        let rows: Vec<Next> = self
            .sql()
            .exec(
                "SELECT MIN(next_at) AS t FROM subscriber WHERE version != ? OR acked < ?",
                Some(vec![(version as i64).into(), (seq as i64).into()]),
            )
            .internal("next delivery")?
            .to_array()
            .internal("next delivery read")?;
        let Some(t) = rows.first().and_then(|r| r.t) else {
            return Ok(());
        };
        let storage = self.state.storage();
        let current = storage.get_alarm().await.internal("get alarm")?;
        if current.is_none_or(|c| c > t) {
            let now = crate::edge::clock::now_ms() as i64;
            storage
                .set_alarm((t - now).max(0))
                .await
                .internal("set alarm")?;
        }
        Ok(())
    }

    fn current_version(&self) -> ApiResult<u64> {
        self.with_filter(|f| f.header().version)
    }

    /// `GET /snapshot`: the current version as GLF2 with its cursor.
    fn snapshot(&self) -> ApiResult<worker::Result<Response>> {
        let (bytes, version, created) =
            self.with_filter(|f| (f.to_bytes(), f.header().version, f.header().created_at_ms))?;
        let mut resp = Response::from_bytes(bytes).internal("snapshot response")?;
        let h = resp.headers_mut();
        h.set("Glados-Filter-Version", &version.to_string())
            .internal("header")?;
        h.set("Glados-Filter-Seq", &self.seq.get().to_string())
            .internal("header")?;
        h.set("Glados-Filter-Created", &created.to_string())
            .internal("header")?;
        Ok(Ok(resp))
    }

    /// `GET /manifest`: what a peer needs to copy the current version
    /// partition by partition (routing::sync::Manifest).
    fn manifest(&self) -> ApiResult<Manifest> {
        let seq = self.seq.get();
        self.with_filter(|f| {
            let h = f.header();
            let bits = h.params.partition_bits_for(PARTITION_MAX_BYTES);
            let partitions = (0..1u32 << bits)
                .map(|i| PartitionInfo {
                    index: i,
                    etag: format!("\"v{}.p{i}.{seq}\"", h.version),
                    bits_set: f.partition(bits, i).map_or(0, |p| p.count_ones()),
                })
                .collect();
            Manifest {
                gp: String::new(),
                version: h.version,
                created_at_ms: h.created_at_ms,
                seq,
                params: ParamsDoc::from(&h.params),
                partition_bits: bits,
                partitions,
                bits_set: f.count_ones(),
                estimated_fp_rate: f.estimated_fp_rate(),
            }
        })
    }

    /// `GET /partition?version=V&index=I`: partition I of version V as
    /// GLF2, sparse when smaller, with its ETag.
    fn partition(&self, req: &Request) -> ApiResult<worker::Result<Response>> {
        let url = req.url().internal("url")?;
        let q = |name: &str| {
            url.query_pairs()
                .find(|(k, _)| k == name)
                .and_then(|(_, v)| v.parse::<u64>().ok())
        };
        let (Some(version), Some(index)) = (q("version"), q("index")) else {
            return Err(ApiError::client(
                400,
                "invalid-partition",
                "Invalid partition request",
                "version and index must both be given as non-negative integers",
            ));
        };
        let current = self.current_version()?;
        if version != current {
            return Err(version_ended(version, current));
        }
        let seq = self.seq.get();
        let found = self.with_filter(|f| {
            let bits = f.params().partition_bits_for(PARTITION_MAX_BYTES);
            u32::try_from(index)
                .ok()
                .filter(|i| u64::from(*i) < 1u64 << bits)
                .and_then(|i| f.partition(bits, i).ok())
                .map(|p| (p.to_bytes_compact(), bits))
        })?;
        let Some((bytes, bits)) = found else {
            return Err(ApiError::client(
                404,
                "no-such-partition",
                "No such partition",
                format!(
                    "this filter version has partitions 0..{}",
                    1u64 << self
                        .with_filter(|f| f.params().partition_bits_for(PARTITION_MAX_BYTES))?
                ),
            ));
        };
        let _ = bits;
        let mut resp = Response::from_bytes(bytes).internal("partition response")?;
        let h = resp.headers_mut();
        h.set("ETag", &format!("\"v{version}.p{index}.{seq}\""))
            .internal("header")?;
        h.set("Glados-Filter-Seq", &seq.to_string())
            .internal("header")?;
        Ok(Ok(resp))
    }

    /// `GET /additions?version=V&after=S`: the batches after S as one GLA1.
    fn additions(&self, req: &Request) -> ApiResult<worker::Result<Response>> {
        let url = req.url().internal("url")?;
        let mut version = None;
        let mut after = None;
        for (k, v) in url.query_pairs() {
            match k.as_ref() {
                "version" => version = v.parse::<u64>().ok(),
                "after" => after = v.parse::<u64>().ok(),
                _ => {}
            }
        }
        let (Some(version), Some(after)) = (version, after) else {
            return Err(ApiError::client(
                400,
                "invalid-cursor",
                "Invalid additions cursor",
                "version and after must both be given as non-negative integers",
            ));
        };
        let current = self.current_version()?;
        if version != current {
            return Err(version_ended(version, current));
        }
        let seq = self.seq.get();
        if after > seq {
            return Err(ApiError::client(
                400,
                "invalid-cursor",
                "Invalid additions cursor",
                format!("after={after} is beyond this version's last batch {seq}"),
            ));
        }
        let batches = self.log_after(version, after, MAX_INDICES_PER_MESSAGE)?;
        let next = batches.last().map(|(s, _)| *s).unwrap_or(after);
        let indices: Vec<u64> = batches.into_iter().flat_map(|(_, b)| b).collect();
        let mut resp = Response::from_bytes(encode_additions(version, &indices))
            .internal("additions response")?;
        let h = resp.headers_mut();
        h.set("Glados-Filter-Version", &version.to_string())
            .internal("header")?;
        h.set("Glados-Filter-Seq", &next.to_string())
            .internal("header")?;
        h.set("Glados-Filter-More", if next < seq { "1" } else { "0" })
            .internal("header")?;
        Ok(Ok(resp))
    }

    /// draft §9: "Other GPs can subscribe to additions ... When a
    /// subscription is created, it also includes a timestamp. The GP will
    /// send all changes ... since that timestamp." Here: since a cursor.
    /// One subscription per peer (a new one replaces the old).
    async fn subscribe(&self, op: SubscribeOp) -> ApiResult<worker::Result<Response>> {
        let current = self.current_version()?;
        if op.version != current {
            return Err(version_ended(op.version, current));
        }
        let seq = self.seq.get();
        let after = op.after.min(seq);
        let now = crate::edge::clock::now_ms() as i64;
        self.sql()
            .exec(
                "INSERT OR REPLACE INTO subscriber (peer, version, callback, acked, failures, next_at, since_ms, last_error)
                 VALUES (?, ?, ?, ?, 0, 0, ?, NULL)",
                Some(vec![
                    op.peer.clone().into(),
                    (current as i64).into(),
                    op.callback.clone().into(),
                    (after as i64).into(),
                    now.into(),
                ]),
            )
            .internal("store subscription")?;
        // "first sends everything since that point": at once.
        self.schedule().await?;
        Ok(Response::from_json(&json!({
            "peer": op.peer,
            "version": current,
            "after": after,
            "seq": seq,
            "callback": op.callback,
        }))
        .map(|r| r.with_status(201)))
    }

    /// Starts a new version (draft §9: "the old bloom filter is considered
    /// sufficiently dirty and is invalidated. A new bloom filter is
    /// constructed. Any subscriptions to the old one are terminated").
    ///
    /// draft §9: "A new bloom filter is constructed" — from the mappings, so
    /// removed SIIs drop out: the new version is built beside the current
    /// one from every mapping shard's live SII digests (paged), while the
    /// current version keeps serving and taking inserts; those inserts are
    /// also buffered and go into the new version before it replaces the
    /// old one. Only then are subscribers told of the rotation.
    async fn rebuild(&self) -> ApiResult<Value> {
        if self.rebuild_buffer.borrow().is_some() {
            return Err(ApiError::client(
                409,
                "rebuild-in-progress",
                "Rebuild in progress",
                "a filter rebuild is already running; try again when it has finished",
            ));
        }
        let old_version = self.current_version()?;
        let mut fresh = self.empty_version(old_version + 1)?;
        *self.rebuild_buffer.borrow_mut() = Some(Vec::new());
        let collected = self.collect_shard_digests(&mut fresh).await;
        let buffered = self.rebuild_buffer.borrow_mut().take().unwrap_or_default();
        let reinserted = collected?;
        for d in &buffered {
            fresh.insert(d);
        }
        self.store_version(&fresh, 0)?;
        self.seq.set(0);
        let sql = self.sql();
        for table in ["filter_chunk", "filter_addition", "filter_snapshot_seq"] {
            sql.exec(
                &format!("DELETE FROM {table} WHERE version < ?"),
                Some(vec![(fresh.header().version as i64).into()]),
            )
            .internal("drop old version")?;
        }
        sql.exec("DELETE FROM filter_version WHERE current = 0", None)
            .internal("drop old versions")?;
        *self.filter.borrow_mut() = Some(fresh);
        // Every subscriber of the old version is now due a rotation notice.
        sql.exec("UPDATE subscriber SET next_at = 0, failures = 0", None)
            .internal("notify subscribers")?;
        self.schedule().await?;
        let mut info = self.info()?;
        if let Some(o) = info.as_object_mut() {
            o.insert("previous_version".into(), json!(old_version));
            o.insert("reinserted_siis".into(), json!(reinserted + buffered.len()));
        }
        Ok(info)
    }

    /// Inserts every shard's live SII digests into `fresh`; returns how many.
    async fn collect_shard_digests(&self, fresh: &mut Filter) -> ApiResult<usize> {
        let mut count = 0;
        let cfg = GpConfig::cached(&self.env)?;
        for index in 0..cfg.mapping_shards {
            let shard = Shard::at(&self.env, &cfg, index);
            let mut after = None;
            loop {
                let (digests, next) = shard.digests(after, 5_000).await?;
                for hex in &digests {
                    let bytes = crate::core::encoding::hex_decode(hex)
                        .map_err(|e| ApiError::Internal(format!("shard digest: {e}")))?;
                    let d: [u8; 32] = bytes
                        .try_into()
                        .map_err(|_| ApiError::Internal("shard digest is not 32 bytes".into()))?;
                    fresh.insert(&d);
                    count += 1;
                }
                match next {
                    Some(n) => after = Some(n),
                    None => break,
                }
            }
        }
        Ok(count)
    }

    fn subscriber_rows(&self) -> ApiResult<Vec<SubRow>> {
        self.sql()
            .exec(
                "SELECT peer, version, callback, acked, failures, since_ms FROM subscriber ORDER BY peer",
                None,
            )
            .internal("select subscribers")?
            .to_array()
            .internal("read subscribers")
    }

    fn subscribers(&self) -> ApiResult<Value> {
        let seq = self.seq.get();
        let rows = self.subscriber_rows()?;
        Ok(json!({
            "version": self.current_version()?,
            "seq": seq,
            "subscribers": rows.iter().map(|r| json!({
                "peer": r.peer,
                "version": r.version,
                "callback": r.callback,
                "acked": r.acked,
                "pending_batches": (seq as i64 - r.acked).max(0),
                "failures": r.failures,
                "since_ms": r.since_ms,
            })).collect::<Vec<_>>(),
        }))
    }

    /// One pass of the outbox: every due subscriber gets its rotation
    /// notice or the batches after its cursor, in parallel, signed.
    async fn deliver(&self) -> ApiResult<()> {
        let version = self.current_version()?;
        let seq = self.seq.get();
        let now = crate::edge::clock::now_ms() as i64;
        #[derive(Deserialize)]
        struct Due {
            peer: String,
            version: i64,
            callback: String,
            acked: i64,
            failures: i64,
            since_ms: i64,
        }
        let due: Vec<Due> = self
            .sql()
            .exec(
                "SELECT peer, version, callback, acked, failures, since_ms FROM subscriber
                 WHERE next_at <= ? AND (version != ? OR acked < ?)",
                Some(vec![
                    now.into(),
                    (version as i64).into(),
                    (seq as i64).into(),
                ]),
            )
            .internal("due subscribers")?
            .to_array()
            .internal("due subscribers read")?;
        if due.is_empty() {
            return self.schedule().await;
        }
        let signer = Signer::from_env(&self.env)?;
        let gp = signer.keyid.clone();
        // Build every message first (synchronous SQLite reads), then send.
        let mut jobs = Vec::new();
        for d in &due {
            let (body, to) = if d.version as u64 != version {
                (
                    json!({ "type": "rotated", "gp": gp, "version": d.version,
                            "new_version": version }),
                    None,
                )
            } else {
                let after = d.acked.max(0) as u64;
                let batches = self.log_after(version, after, MAX_INDICES_PER_MESSAGE)?;
                let to = batches.last().map(|(s, _)| *s).unwrap_or(after);
                let indices: Vec<u64> = batches.into_iter().flat_map(|(_, b)| b).collect();
                (
                    json!({ "type": "additions", "gp": gp, "version": version,
                            "after": after, "seq": to,
                            "additions": b64_encode(&encode_additions(version, &indices)) }),
                    Some(to),
                )
            };
            jobs.push((d, body.to_string(), to));
        }
        let sends = jobs.iter().map(|(d, body, _)| {
            crate::edge::outbound::peer::signed_fetch(
                &signer,
                Method::Post,
                &d.callback,
                Some((body.as_bytes(), "application/json")),
                &[],
                DELIVERY_TIMEOUT_MS,
                crate::edge::outbound::peer::MAX_PEER_ANSWER,
            )
        });
        let results = futures_util::future::join_all(sends).await;
        let policy = RetryPolicy::default();
        let sql = self.sql();
        let now = crate::edge::clock::now_ms();
        for ((d, _, to), result) in jobs.iter().zip(results) {
            let outcome = match result {
                Ok(r) if (200..300).contains(&r.status) => Ok(()),
                Ok(r) if r.status == 409 => {
                    // The subscriber's copy is behind our cursor for it (its
                    // state was lost): resend from where it says it is.
                    #[derive(Deserialize)]
                    struct Gap {
                        seq: u64,
                    }
                    match serde_json::from_slice::<Gap>(&r.body) {
                        Ok(g) if d.version as u64 == version => {
                            sql.exec(
                                "UPDATE subscriber SET acked = ?, next_at = 0 WHERE peer = ? AND version = ?",
                                Some(vec![(g.seq.min(seq) as i64).into(), d.peer.clone().into(), d.version.into()]),
                            )
                            .internal("rewind subscriber")?;
                            continue;
                        }
                        _ => Err(format!("HTTP 409: {}", String::from_utf8_lossy(&r.body))),
                    }
                }
                Ok(r) => Err(format!(
                    "HTTP {}: {}",
                    r.status,
                    String::from_utf8_lossy(r.body.get(..300).unwrap_or(&r.body))
                )),
                Err(e) => Err(e),
            };
            match (outcome, to) {
                // Rotation notice delivered: the old subscription has ended.
                (Ok(()), None) => {
                    sql.exec(
                        "DELETE FROM subscriber WHERE peer = ? AND version = ?",
                        Some(vec![d.peer.clone().into(), d.version.into()]),
                    )
                    .internal("end subscription")?;
                }
                (Ok(()), Some(to)) => {
                    sql.exec(
                        "UPDATE subscriber SET acked = MAX(acked, ?), failures = 0, next_at = 0, last_error = NULL,
                         since_ms = ? WHERE peer = ? AND version = ?",
                        Some(vec![(*to as i64).into(), (now as i64).into(), d.peer.clone().into(), d.version.into()]),
                    )
                    .internal("advance subscriber")?;
                }
                (Err(err), _) => {
                    let failures = (d.failures.max(0) as u32).saturating_add(1);
                    let mut r = [0u8; 4];
                    let _ = getrandom::fill(&mut r);
                    let created = d.since_ms.max(0) as u64;
                    // since_ms is the last success (or the subscription): the horizon
                    // counts from when the subscriber stopped answering.
                    match policy.after_failure(created, failures, now, u32::from_le_bytes(r)) {
                        crate::core::outbox::Next::RetryAt(t) => {
                            sql.exec(
                                "UPDATE subscriber SET failures = ?, next_at = ?, last_error = ? WHERE peer = ? AND version = ?",
                                Some(vec![
                                    i64::from(failures).into(),
                                    (t as i64).into(),
                                    err.clone().into(),
                                    d.peer.clone().into(),
                                    d.version.into(),
                                ]),
                            )
                            .internal("subscriber backoff")?;
                        }
                        // Unreachable for the whole horizon: the peer
                        // resubscribes from its own cursor when it is back
                        // (its cron catch-up), so the subscription goes.
                        crate::core::outbox::Next::DeadLetter => {
                            worker::console_error!("subscription of {} dropped: {err}", d.peer);
                            sql.exec(
                                "DELETE FROM subscriber WHERE peer = ? AND version = ?",
                                Some(vec![d.peer.clone().into(), d.version.into()]),
                            )
                            .internal("drop subscription")?;
                        }
                    }
                    worker::console_log!("delivery to {} failed ({failures}): {err}", d.peer);
                }
            }
        }
        self.schedule().await
    }
}

/// 409: the subscriber asked about a version that is no longer current.
fn version_ended(asked: u64, current: u64) -> ApiError {
    let mut e = ApiError::client(
        409,
        "filter-version-ended",
        "Filter version ended",
        format!(
            "filter version {asked} is not current (current: {current}); fetch the snapshot \
             and subscribe to the new version"
        ),
    );
    if let ApiError::Client { extra, .. } = &mut e {
        extra.insert("current_version".into(), json!(current));
    }
    e
}

/// Stable names for the filter's layout and hash scheme in JSON.
fn layout_name(l: Layout) -> &'static str {
    match l {
        Layout::Plain => "plain",
        Layout::Blocked512 => "blocked512",
    }
}

fn hash_name(h: HashScheme) -> &'static str {
    match h {
        HashScheme::Sha256Low => "sha256-low",
        HashScheme::Sha256High => "sha256-high",
    }
}

/// The public description of a filter (no bits).
fn filter_info(f: &Filter) -> Value {
    let h = f.header();
    json!({
        "version": h.version,
        "created_at_ms": h.created_at_ms,
        "bits": h.params.bits,
        "log2_bits": h.params.log2_bits,
        "k": h.params.k,
        "layout": layout_name(h.params.layout),
        "hash": hash_name(h.params.hash),
        "bits_set": f.count_ones(),
        "fill_ratio": f.fill_ratio(),
        "estimated_siis": f.estimated_items(),
        "estimated_fp_rate": f.estimated_fp_rate(),
    })
}
