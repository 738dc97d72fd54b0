//! The GP's own routing filter, held by one SQLite-backed Durable Object
//! (ARCHITECTURE.md, "Own filter").
//!
//! draft §9: "Each bloom filter has a timestamp, corresponding to the time of
//! creation on the GP" and filters "are versioned". A version is stored
//! and served as 2^P partitions of at most [`PARTITION_MAX_BYTES`]
//! (`store.rs`: stored as finer pages, rows of compact GLF2 plus, per
//! page, the log of additions since its row was written). Memory holds at
//! most [`store::CACHE_BYTES`] of pages (an LRU), so no filter size makes
//! the object hold more than 32 MiB of it, during a rebuild included
//! (`rebuild.rs` builds a few pages at a time).
//!
//! It also keeps, per version, the ordered log of 0→1 additions — each
//! inserted batch numbered by a sequence `seq` — and the peers subscribed
//! to it (`deliver.rs`). draft §9: "If the addition of a new SII causes an
//! entry in the bloom filter to flip from a zero to a one, a notification
//! is sent via webhook to any GP that has subscribed." A subscription is a
//! cursor (the last `seq` the peer acknowledged): the durable outbox *is*
//! that cursor, so nothing acknowledged is ever lost, a peer that was down
//! gets everything since its cursor, and repeated deliveries are harmless
//! (setting a bit twice changes nothing).
//!
//! Cursor, not the draft's timestamp ("When a subscription is created, it
//! also includes a timestamp"): a sequence number is exact — two batches in
//! the same millisecond are still ordered, clocks do not matter, and
//! "everything after 41" has exactly one meaning.
//!
//! Writers reach this single object in batches (`/insert` takes many
//! digests), as ARCHITECTURE.md (Invariants 10) asks of the filter's writer.
mod deliver;
mod rebuild;
mod store;

use crate::core::filter::{encode_additions, Filter, FilterHeader, ParamsDoc};
use crate::edge::clock::now_ms;
use crate::edge::http::error::{ApiError, ApiResult, OrInternal};
use crate::edge::objects::Schema;
use crate::edge::rpc;
use crate::edge::rpc::filter::{Manifest, PartitionInfo, SubscribeOp};
use serde_json::{json, Value};
use std::cell::{Cell, RefCell};
use store::{Pages, Version};
use worker::{durable_object, Env, Request, Response, SqlStorage, State};

/// Largest partition (dense): how a version is stored, cached and served.
pub const PARTITION_MAX_BYTES: u64 = 1 << 20;
/// draft §9 subscriptions: additions are sent at most this long after they
/// happen; inserts within the window go out as one batch.
pub const BATCH_WINDOW_MS: i64 = 100;
/// Most bytes of filter one `/snapshot` (the public inspector's whole
/// filter) assembles; larger filters are served by partition only.
const SNAPSHOT_MAX_BYTES: u64 = 16 << 20;

/// Durable Object holding the GP's own filter (one per GP, named "own").
#[durable_object]
pub struct FilterObject {
    state: State,
    env: Env,
    /// The current version, loaded lazily from SQLite.
    version: RefCell<Option<Version>>,
    /// Its pages in memory (an LRU).
    pages: RefCell<Pages>,
    /// A rebuild step is running (alarm and requests do not overlap one).
    rebuilding: Cell<bool>,
    schema: Schema,
}

impl worker::DurableObject for FilterObject {
    fn new(state: State, env: Env) -> Self {
        FilterObject {
            state,
            env,
            version: RefCell::new(None),
            pages: RefCell::new(Pages::default()),
            rebuilding: Cell::new(false),
            schema: Schema::new("filter schema", store::SCHEMA),
        }
    }

    async fn fetch(&self, mut req: Request) -> worker::Result<Response> {
        let path = req.path();
        let loaded = self.ensure_version().await;
        // Stored bytes found unreadable (at the load, or by the request
        // before): the rebuild starts at once, by the alarm.
        if loaded.is_ok() {
            if let Err(e) = self.schedule_recovery().await {
                worker::console_error!("filter recovery: {e:?}");
            }
        }
        let result = match loaded {
            Err(e) => Err(e),
            Ok(()) => match path.as_str() {
                "/info" => self.info().map(|v| Response::from_json(&v)),
                "/insert" => match req.bytes().await {
                    Ok(body) => self.insert(&body).await.map(|v| Response::from_json(&v)),
                    Err(e) => Err(ApiError::Internal(format!("insert body: {e}"))),
                },
                "/fill" => match rpc::read_op::<FillOp>(&mut req).await {
                    Ok(op) => self.fill(op).await.map(|v| Response::from_json(&v)),
                    Err(e) => Err(ApiError::Internal(format!("fill body: {e}"))),
                },
                "/snapshot" => self.snapshot(),
                "/manifest" => self.manifest().map(|m| Response::from_json(&m)),
                "/partition" => self.partition(&req),
                "/additions" => self.additions(&req),
                "/subscribe" => match rpc::read_op::<SubscribeOp>(&mut req).await {
                    Ok(op) => self.subscribe(op).await,
                    Err(e) => Err(ApiError::Internal(format!("subscribe body: {e}"))),
                },
                "/rebuild" => self.rebuild_now().await,
                "/subscribers" => self.subscribers().map(|v| Response::from_json(&v)),
                _ => Err(ApiError::not_found(&path)),
            },
        };
        match result {
            Ok(resp) => resp,
            Err(e) => e.into_response(&path),
        }
    }

    /// Continues a rebuild, then delivers pending additions and rotation
    /// notices to subscribers.
    async fn alarm(&self) -> worker::Result<Response> {
        let mut retry = false;
        if let Err(e) = self.ensure_version().await {
            worker::console_error!("filter: {:?}", e);
            retry = true;
        }
        if let Err(e) = self.schedule_recovery().await {
            worker::console_error!("filter recovery: {:?}", e);
            retry = true;
        }
        if let Err(e) = self.rebuild_step(rebuild::ALARM_BUDGET_MS).await {
            worker::console_error!("filter rebuild step failed: {:?}", e);
            retry = true;
        }
        if let Err(e) = self.deliver().await {
            worker::console_error!("filter deliveries failed: {:?}", e);
            retry = true;
        }
        if retry {
            // Try again later rather than never.
            self.state.storage().set_alarm(5_000i64).await?;
        }
        Response::ok("ok")
    }
}

/// `POST /fill` (test route `/__debug/filter/fill`): inserts `count`
/// pseudo-random digests (SHA-256 of the seed and a counter), as many
/// SIIs would, without the bodies that carrying them would take.
#[derive(Debug, serde::Deserialize)]
pub struct FillOp {
    pub seed: String,
    pub from: u64,
    pub count: u64,
}

impl FilterObject {
    fn sql(&self) -> SqlStorage {
        self.state.storage().sql()
    }

    /// The current version's description (no bits).
    fn info(&self) -> ApiResult<Value> {
        let v = self.current()?;
        let p = &v.params;
        let m = p.bits as f64;
        let estimated = if v.ones as f64 >= m {
            Value::Null
        } else {
            json!(-(m / f64::from(p.k)) * (1.0 - v.ones as f64 / m).ln())
        };
        let recovery = self.recovery()?;
        let pages = self.pages.borrow();
        let mut info = json!({
            "version": v.version,
            "created_at_ms": v.created_at_ms,
            "bits": p.bits,
            "log2_bits": p.log2_bits,
            "k": p.k,
            "layout": p.layout.name(),
            "hash": p.hash.name(),
            "bits_set": v.ones,
            "fill_ratio": v.ones as f64 / m,
            "estimated_siis": estimated,
            "estimated_fp_rate": p.fp_from_ones(v.ones),
            "seq": v.seq,
            "sized_for": v.sized_for,
            "partition_bits": v.pbits,
            "partition_bytes": (p.bits >> v.pbits) / 8,
            "page_bits": v.spbits,
            "memory": pages.stats(),
            "rebuild": self.rebuild_progress()?,
            // Stored bytes found unreadable: a fresh version serves while
            // it is rebuilt from the mappings (issue 14 item 4).
            "state": if recovery.as_ref().is_some_and(|r| r.done_ms.is_none()) {
                "rebuilding"
            } else {
                "ok"
            },
        });
        if let (Some(r), Some(o)) = (recovery, info.as_object_mut()) {
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
        Ok(info)
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
        let digests: Vec<[u8; 32]> = body
            .chunks_exact(32)
            .map(|c| {
                let mut d = [0u8; 32];
                d.copy_from_slice(c);
                d
            })
            .collect();
        let (version, seq, flipped) = self.insert_digests(&digests)?;
        if !flipped.is_empty() {
            self.schedule_batch().await?;
        }
        Ok(json!({ "version": version, "seq": seq, "additions": flipped }))
    }

    /// `/fill`: [`FillOp`], 250,000 digests at a time, each lot sorted by
    /// page and inserted in batches of 50,000 (a batch then touches a run
    /// of pages, so each page is loaded once per lot whatever the filter's
    /// size, and a batch's flipped bits stay a few MB).
    async fn fill(&self, op: FillOp) -> ApiResult<Value> {
        use sha2::{Digest, Sha256};
        let mut added = 0usize;
        let mut at = op.from;
        let end = op.from.saturating_add(op.count);
        while at < end {
            let n = (end - at).min(250_000);
            let v = self.current()?;
            let mut lot: Vec<(u32, [u8; 32])> = (at..at + n)
                .map(|i| {
                    let d: [u8; 32] = Sha256::digest(format!("{}:{i}", op.seed).as_bytes()).into();
                    (v.params.partition_of_digest(&d, v.spbits).unwrap_or(0), d)
                })
                .collect();
            lot.sort_unstable_by_key(|(page, _)| *page);
            for batch in lot.chunks(50_000) {
                let digests: Vec<[u8; 32]> = batch.iter().map(|(_, d)| *d).collect();
                added += self.insert_digests(&digests)?.2.len();
            }
            at += n;
        }
        self.schedule_batch().await?;
        let mut info = self.info()?;
        if let Some(o) = info.as_object_mut() {
            o.insert("bits_added".into(), json!(added));
        }
        Ok(info)
    }

    /// The current version's manifest (routing::sync::Manifest).
    fn manifest(&self) -> ApiResult<Manifest> {
        let v = self.current()?;
        let partitions = self
            .partition_states(&v)?
            .into_iter()
            .enumerate()
            .map(|(i, (touched, ones))| PartitionInfo {
                index: i as u32,
                etag: format!("\"v{}.p{i}.{touched}\"", v.version),
                bits_set: ones,
            })
            .collect();
        Ok(Manifest {
            gp: String::new(),
            version: v.version,
            created_at_ms: v.created_at_ms,
            seq: v.seq,
            params: ParamsDoc::from(&v.params),
            partition_bits: v.pbits,
            partitions,
            bits_set: v.ones,
            estimated_fp_rate: v.params.fp_from_ones(v.ones),
        })
    }

    /// `GET /partition?version=V&index=I`: partition I of version V as
    /// GLF2, sparse when smaller, with its ETag.
    fn partition(&self, req: &Request) -> ApiResult<worker::Result<Response>> {
        let q = query_u64(req)?;
        let (Some(version), Some(index)) = (q("version"), q("index")) else {
            return Err(ApiError::client(
                400,
                "invalid-partition",
                "Invalid partition request",
                "version and index must both be given as non-negative integers",
            ));
        };
        let v = self.current()?;
        if version != v.version {
            return Err(deliver::version_ended(version, v.version));
        }
        let count = 1u64 << v.pbits;
        let Some(index) = u32::try_from(index).ok().filter(|i| u64::from(*i) < count) else {
            return Err(ApiError::client(
                404,
                "no-such-partition",
                "No such partition",
                format!("this filter version has partitions 0..{count}"),
            ));
        };
        let bytes = self.partition_bytes(&v, index)?;
        let touched = self.partition_touched(&v, index)?;
        let mut resp = Response::from_bytes(bytes).internal("partition response")?;
        let h = resp.headers_mut();
        h.set("ETag", &format!("\"v{version}.p{index}.{touched}\""))
            .internal("header")?;
        h.set("Glados-Filter-Seq", &v.seq.to_string())
            .internal("header")?;
        Ok(Ok(resp))
    }

    /// `GET /snapshot`: the whole current version as GLF2 (the public
    /// inspector's view), for filters up to [`SNAPSHOT_MAX_BYTES`].
    fn snapshot(&self) -> ApiResult<worker::Result<Response>> {
        let v = self.current()?;
        let bytes = v.params.bits.div_ceil(8);
        if bytes > SNAPSHOT_MAX_BYTES {
            return Err(ApiError::client(
                413,
                "filter-too-large",
                "Filter too large for one snapshot",
                format!(
                    "this GP's filter is {bytes} bytes; whole snapshots are served up to \
                     {SNAPSHOT_MAX_BYTES}: peers copy it partition by partition"
                ),
            ));
        }
        let mut bitmap = Vec::with_capacity(bytes as usize);
        for i in 0..1u32 << v.pbits {
            bitmap.extend_from_slice(&self.partition_bitmap(&v, i)?);
        }
        self.pages.borrow_mut().note(2 * bitmap.len());
        let header = FilterHeader {
            version: v.version,
            created_at_ms: v.created_at_ms,
            params: v.params,
        };
        let whole = Filter::from_bitmap(header, Default::default(), &bitmap)
            .map_err(|e| ApiError::Internal(format!("snapshot: {e}")))?;
        drop(bitmap);
        let mut resp = Response::from_bytes(whole.to_bytes()).internal("snapshot response")?;
        let h = resp.headers_mut();
        h.set("Glados-Filter-Version", &v.version.to_string())
            .internal("header")?;
        h.set("Glados-Filter-Seq", &v.seq.to_string())
            .internal("header")?;
        h.set("Glados-Filter-Created", &v.created_at_ms.to_string())
            .internal("header")?;
        Ok(Ok(resp))
    }

    /// `GET /additions?version=V&after=S`: the batches after S as one GLA1.
    fn additions(&self, req: &Request) -> ApiResult<worker::Result<Response>> {
        let q = query_u64(req)?;
        let (Some(version), Some(after)) = (q("version"), q("after")) else {
            return Err(ApiError::client(
                400,
                "invalid-cursor",
                "Invalid additions cursor",
                "version and after must both be given as non-negative integers",
            ));
        };
        let v = self.current()?;
        if version != v.version {
            return Err(deliver::version_ended(version, v.version));
        }
        if after > v.seq {
            return Err(ApiError::client(
                400,
                "invalid-cursor",
                "Invalid additions cursor",
                format!(
                    "after={after} is beyond this version's last batch {}",
                    v.seq
                ),
            ));
        }
        let (next, indices) =
            self.log_after(version, after, v.seq, deliver::MAX_INDICES_PER_MESSAGE)?;
        let mut resp = Response::from_bytes(encode_additions(version, &indices))
            .internal("additions response")?;
        let h = resp.headers_mut();
        h.set("Glados-Filter-Version", &version.to_string())
            .internal("header")?;
        h.set("Glados-Filter-Seq", &next.to_string())
            .internal("header")?;
        h.set("Glados-Filter-More", if next < v.seq { "1" } else { "0" })
            .internal("header")?;
        Ok(Ok(resp))
    }

    /// When something is due: now for a rebuild step, else the earliest
    /// subscriber delivery.
    async fn set_alarm_at(&self, t: i64) -> ApiResult<()> {
        let storage = self.state.storage();
        let current = storage.get_alarm().await.internal("get alarm")?;
        if current.is_none_or(|c| c > t) {
            storage
                .set_alarm((t - now_ms() as i64).max(0))
                .await
                .internal("set alarm")?;
        }
        Ok(())
    }
}

/// The request's non-negative integer query parameters.
fn query_u64(req: &Request) -> ApiResult<impl Fn(&str) -> Option<u64>> {
    let url = req.url().internal("url")?;
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    Ok(move |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.parse::<u64>().ok())
    })
}
