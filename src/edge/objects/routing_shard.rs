//! RoutingShard: one range of the routing table (ARCHITECTURE.md,
//! "Routing table"). It owns routing partitions `i·2^(r-s) ..
//! (i+1)·2^(r-s)` and, in SQLite, every peer's section of each: the
//! sections queries use (`staged = 0`) and those of a version still being
//! downloaded (`staged = 1`). It is the only writer of its partitions' KV
//! values (`rt/{r}/{p}`): a change marks the partition dirty, and the
//! alarm writes each dirty value at most once a second (coalescing every
//! change in between), through `routing::kv`. After each round it tells
//! the `RouteTable` up to when everything applied here is in KV, so the
//! overlay can let go of those additions once KV's caches have them.
//!
//! Memory: one partition's sections at a time.
use crate::core::encoding::b64_decode;
use crate::core::filter::{decode_additions, FilterParams, ParamsDoc};
use crate::core::routing::{
    decode_bits, encode_bits, partitions_of_bit, RoutingValue, Section, Shape,
};
use crate::edge::clock::now_ms;
use crate::edge::config::GpConfig;
use crate::edge::http::error::{ApiError, ApiResult, OrInternal};
use crate::edge::objects::Schema;
use crate::edge::routing::kv;
use crate::edge::rpc;
use crate::edge::rpc::routing::{partitions_of_shard, RtCall, RtOp, RtReply, TableClient, TableOp};
use serde::Deserialize;
use serde_json::json;
use std::cell::Cell;
use std::collections::BTreeMap;
use worker::{durable_object, Env, Request, Response, SqlStorage, State};

/// Largest section row (SQLite rows hold at most 2 MB).
pub const MAX_SECTION_BYTES: usize = 1_900_000;
/// Values written per alarm round (the rest go in the next round).
const WRITES_PER_ROUND: usize = 256;
/// KV writes in flight at once (a request's concurrent subrequests).
const PARALLEL_WRITES: usize = 6;
/// Delay before a flush after a change: changes within it share one write.
const FLUSH_DELAY_MS: i64 = 50;

/// KV key of routing partition `p` of 2^r.
pub fn value_key(r: u8, p: u32) -> String {
    format!("rt/{r}/{p}")
}

#[durable_object]
pub struct RoutingShard {
    state: State,
    env: Env,
    /// Which shard this is (learnt from the first call).
    index: Cell<Option<u32>>,
    schema: Schema,
}

impl worker::DurableObject for RoutingShard {
    fn new(state: State, env: Env) -> Self {
        RoutingShard {
            state,
            env,
            index: Cell::new(None),
            schema: Schema::new(
                "routing shard schema",
                "CREATE TABLE IF NOT EXISTS section (
                    p INTEGER NOT NULL, peer TEXT NOT NULL, staged INTEGER NOT NULL,
                    version INTEGER NOT NULL, params TEXT NOT NULL,
                    enc INTEGER NOT NULL, bits BLOB NOT NULL,
                    PRIMARY KEY (p, peer, staged));
                 CREATE TABLE IF NOT EXISTS dirty (
                    p INTEGER PRIMARY KEY, since_ms INTEGER NOT NULL, gen INTEGER NOT NULL);
                 CREATE TABLE IF NOT EXISTS written (p INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL);
                 CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL);",
            ),
        }
    }

    async fn fetch(&self, mut req: Request) -> worker::Result<Response> {
        self.serve(req.text().await?).await.into_response()
    }

    async fn alarm(&self) -> worker::Result<Response> {
        if let Err(e) = self.flush().await {
            worker::console_error!("routing shard flush: {e:?}");
            self.state.storage().set_alarm(2_000i64).await?;
        }
        Response::ok("ok")
    }
}

rpc::serve_rpc!(RoutingShard);

impl RoutingShard {
    /// One JSON operation, by RPC or by fetch.
    async fn serve(&self, op: String) -> rpc::Answer {
        rpc::serve_with(&op, "/routing-shard", |call: RtCall| self.run(call)).await
    }
}

#[derive(Deserialize)]
struct Row {
    version: i64,
    params: String,
    enc: i64,
    bits: serde_bytes::ByteBuf,
}

impl RoutingShard {
    fn sql(&self) -> SqlStorage {
        self.state.storage().sql()
    }

    fn cfg(&self) -> ApiResult<std::rc::Rc<GpConfig>> {
        GpConfig::cached(&self.env)
    }

    fn ensure_schema(&self) -> ApiResult<()> {
        self.schema.ensure(&self.sql())
    }

    /// This shard's index: from the call, remembered for the alarm.
    fn set_index(&self, i: u32) -> ApiResult<()> {
        if self.index.get() != Some(i) {
            self.sql()
                .exec(
                    "INSERT OR REPLACE INTO meta (k, v) VALUES ('index', ?)",
                    Some(vec![i64::from(i).into()]),
                )
                .internal("shard index")?;
            self.index.set(Some(i));
        }
        Ok(())
    }

    fn get_index(&self) -> ApiResult<u32> {
        if let Some(i) = self.index.get() {
            return Ok(i);
        }
        #[derive(Deserialize)]
        struct V {
            v: i64,
        }
        let rows: Vec<V> = self
            .sql()
            .exec("SELECT v FROM meta WHERE k = 'index'", None)
            .internal("shard index")?
            .to_array()
            .internal("shard index rows")?;
        let i = rows
            .first()
            .map(|r| r.v as u32)
            .ok_or_else(|| ApiError::Internal("routing shard without an index".into()))?;
        self.index.set(Some(i));
        Ok(i)
    }

    async fn run(&self, call: RtCall) -> ApiResult<RtReply> {
        self.ensure_schema()?;
        self.set_index(call.shard)?;
        let cfg = self.cfg()?;
        let mine = partitions_of_shard(&cfg, call.shard);
        let r = cfg.routing_partition_bits;
        let reply = match call.op {
            RtOp::Apply {
                peer,
                version,
                params,
                additions,
                stage,
            } => {
                let params = doc_params(&params)?;
                let batch = decode_additions(&b64(&additions)?)
                    .map_err(|e| ApiError::Internal(format!("apply additions: {e}")))?;
                let mut by_part: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
                for &bit in &batch.indices {
                    if let Some(set) = partitions_of_bit(&params, r, bit) {
                        for p in set.iter().filter(|p| mine.contains(p)) {
                            by_part.entry(p).or_default().push(bit);
                        }
                    }
                }
                let (mut new_active, mut new_staged) = (0, 0);
                for (p, bits) in by_part {
                    let set = |sec: &mut Section| sec.set_all(&bits);
                    let (a, s) = if stage {
                        (0, self.stage_part(r, p, &peer, version, params, set)?)
                    } else {
                        self.apply_part(r, p, &peer, version, params, set)?
                    };
                    new_active += a;
                    new_staged += s;
                }
                if new_active > 0 {
                    self.schedule().await?;
                }
                RtReply::Applied {
                    new_active,
                    new_staged,
                }
            }
            RtOp::ApplyBitmap {
                peer,
                version,
                params,
                first_bit,
                bitmap,
            } => {
                let params = doc_params(&params)?;
                let bitmap = b64(&bitmap)?;
                let end = first_bit.saturating_add(bitmap.len() as u64 * 8);
                let mut new_staged = 0;
                for p in mine.clone() {
                    let overlaps = match Shape::of(&params, r, p) {
                        Shape::Range { first, len } => first < end && first + len > first_bit,
                        Shape::Stride { .. } => true,
                    };
                    if !overlaps {
                        continue;
                    }
                    new_staged += self.stage_part(r, p, &peer, version, params, |sec| {
                        sec.apply_bitmap(first_bit, &bitmap)
                    })?;
                }
                RtReply::Applied {
                    new_active: 0,
                    new_staged,
                }
            }
            RtOp::Activate {
                peer,
                version,
                params,
            } => {
                let params = doc_params(&params)?;
                let ones = self.activate(r, mine, &peer, version, params)?;
                self.schedule().await?;
                RtReply::Activated { ones }
            }
            RtOp::DropStaged { peer } => {
                self.sql()
                    .exec(
                        "DELETE FROM section WHERE peer = ? AND staged = 1",
                        Some(vec![peer.into()]),
                    )
                    .internal("drop staged")?;
                RtReply::Done
            }
            RtOp::Stats => RtReply::Stats {
                stats: self.stats()?,
            },
        };
        Ok(reply)
    }

    fn load(&self, r: u8, p: u32, peer: &str, staged: bool) -> ApiResult<Option<Section>> {
        let rows: Vec<Row> = self
            .sql()
            .exec(
                "SELECT version, params, enc, bits FROM section WHERE p = ? AND peer = ? AND staged = ?",
                Some(vec![
                    i64::from(p).into(),
                    peer.into(),
                    i64::from(staged).into(),
                ]),
            )
            .internal("select section")?
            .to_array()
            .internal("read section")?;
        rows.into_iter()
            .next()
            .map(|row| section_of(row, peer, r, p))
            .transpose()
    }

    fn store(&self, p: u32, s: &Section, staged: bool) -> ApiResult<()> {
        let (enc, bytes) = encode_bits(&s.bits, s.shape.len());
        if bytes.len() > MAX_SECTION_BYTES {
            return Err(ApiError::Internal(format!(
                "peer {}'s section of routing partition {p} is {} bytes, over the {} a row holds: \
                 raise ROUTING_PARTITION_BITS",
                s.peer,
                bytes.len(),
                MAX_SECTION_BYTES
            )));
        }
        let params = serde_json::to_string(&ParamsDoc::from(&s.params))
            .map_err(|e| ApiError::Internal(format!("params: {e}")))?;
        self.sql()
            .exec(
                "INSERT OR REPLACE INTO section (p, peer, staged, version, params, enc, bits)
                 VALUES (?, ?, ?, ?, ?, ?, ?)",
                Some(vec![
                    i64::from(p).into(),
                    s.peer.clone().into(),
                    i64::from(staged).into(),
                    (s.version as i64).into(),
                    params.into(),
                    i64::from(enc).into(),
                    bytes.into(),
                ]),
            )
            .internal("store section")?;
        Ok(())
    }

    fn mark_dirty(&self, p: u32) -> ApiResult<()> {
        self.sql()
            .exec(
                "INSERT INTO dirty (p, since_ms, gen) VALUES (?, ?, 1)
                 ON CONFLICT (p) DO UPDATE SET gen = gen + 1",
                Some(vec![i64::from(p).into(), (now_ms() as i64).into()]),
            )
            .internal("mark dirty")?;
        Ok(())
    }

    /// Applies `f` to every section of `peer`'s `version` in partition `p`
    /// (in use and staged); with neither, to a new staged one. Returns the
    /// newly set canonical bits (in use, staged).
    fn apply_part(
        &self,
        r: u8,
        p: u32,
        peer: &str,
        version: u64,
        params: FilterParams,
        f: impl Fn(&mut Section) -> u64,
    ) -> ApiResult<(u64, u64)> {
        let mut active_new = 0;
        let mut touched = false;
        let active = self.load(r, p, peer, false)?;
        if let Some(mut a) = active.clone().filter(|a| a.version == version) {
            active_new = f(&mut a);
            self.store(p, &a, false)?;
            self.mark_dirty(p)?;
            touched = true;
        }
        let staged = self
            .load(r, p, peer, true)?
            .is_some_and(|s| s.version == version);
        // Staged already, or a version newer than the one in use.
        let newer = !touched && active.as_ref().is_none_or(|a| a.version < version);
        let staged_new = if staged || newer {
            self.stage_part(r, p, peer, version, params, f)?
        } else {
            0
        };
        Ok((active_new, staged_new))
    }

    /// Applies `f` to the staged section of `version` in `p` (created if
    /// missing, replacing a staged section of another version).
    fn stage_part(
        &self,
        r: u8,
        p: u32,
        peer: &str,
        version: u64,
        params: FilterParams,
        f: impl Fn(&mut Section) -> u64,
    ) -> ApiResult<u64> {
        let mut s = match self.load(r, p, peer, true)? {
            Some(s) if s.version == version && s.params == params => s,
            _ => Section::new(peer, version, params, r, p),
        };
        let n = f(&mut s);
        self.store(p, &s, true)?;
        Ok(n)
    }

    /// Makes `version` the one queries use in every partition of this
    /// shard; returns its exact canonical ones here.
    fn activate(
        &self,
        r: u8,
        mine: std::ops::Range<u32>,
        peer: &str,
        version: u64,
        params: FilterParams,
    ) -> ApiResult<u64> {
        let mut ones = 0;
        for p in mine {
            let staged = self.load(r, p, peer, true)?;
            let active = self.load(r, p, peer, false)?;
            let section = match (staged, active) {
                (Some(s), _) if s.version == version => s,
                (_, Some(a)) if a.version == version => a,
                _ => Section::new(peer, version, params, r, p),
            };
            ones += section.canonical_ones();
            self.store(p, &section, false)?;
            self.mark_dirty(p)?;
        }
        self.sql()
            .exec(
                "DELETE FROM section WHERE peer = ? AND staged = 1",
                Some(vec![peer.into()]),
            )
            .internal("drop staged")?;
        Ok(ones)
    }

    /// Sets the alarm soon, unless one is due sooner.
    async fn schedule(&self) -> ApiResult<()> {
        let storage = self.state.storage();
        let now = now_ms() as i64;
        if storage
            .get_alarm()
            .await
            .internal("get alarm")?
            .is_none_or(|t| t > now + FLUSH_DELAY_MS)
        {
            storage
                .set_alarm(FLUSH_DELAY_MS)
                .await
                .internal("set alarm")?;
        }
        Ok(())
    }

    /// One flush round: writes every dirty partition whose key may be
    /// written again (at most once a second), then reports the watermark.
    async fn flush(&self) -> ApiResult<()> {
        self.ensure_schema()?;
        let cfg = self.cfg()?;
        let r = cfg.routing_partition_bits;
        let index = self.get_index()?;
        #[derive(Deserialize)]
        struct Dirty {
            p: i64,
            gen: i64,
            last: Option<i64>,
        }
        let now = now_ms();
        let dirty: Vec<Dirty> = self
            .sql()
            .exec(
                "SELECT d.p AS p, d.gen AS gen, w.at_ms AS last FROM dirty d
                 LEFT JOIN written w ON w.p = d.p ORDER BY d.since_ms",
                None,
            )
            .internal("select dirty")?
            .to_array()
            .internal("read dirty")?;
        let mut due = Vec::new();
        let mut next_at: Option<u64> = None;
        for d in &dirty {
            let p = d.p as u32;
            let key = value_key(r, p);
            let allowed = kv::next_write_ms(&key).max(
                d.last
                    .map_or(0, |l| l.max(0) as u64 + kv::MIN_WRITE_INTERVAL_MS),
            );
            if allowed <= now && due.len() < WRITES_PER_ROUND {
                due.push((p, d.gen, key));
            } else {
                let t = allowed.max(now + 1);
                next_at = Some(next_at.map_or(t, |n| n.min(t)));
            }
        }
        for chunk in due.chunks(PARALLEL_WRITES) {
            let mut writes = Vec::new();
            for (p, gen, key) in chunk {
                let value = self.value(r, *p, now)?;
                writes.push(async move {
                    let res = kv::put(&self.env, key, &value).await;
                    (*p, *gen, res)
                });
            }
            for (p, gen, res) in futures_util::future::join_all(writes).await {
                match res {
                    Ok(()) => {
                        let sql = self.sql();
                        sql.exec(
                            "INSERT OR REPLACE INTO written (p, at_ms) VALUES (?, ?)",
                            Some(vec![i64::from(p).into(), (now as i64).into()]),
                        )
                        .internal("written")?;
                        // Changed while the write was in flight: still dirty,
                        // but only since this round started.
                        sql.exec(
                            "DELETE FROM dirty WHERE p = ? AND gen = ?",
                            Some(vec![i64::from(p).into(), gen.into()]),
                        )
                        .internal("clean")?;
                        sql.exec(
                            "UPDATE dirty SET since_ms = MAX(since_ms, ?) WHERE p = ?",
                            Some(vec![(now as i64).into(), i64::from(p).into()]),
                        )
                        .internal("re-dirty")?;
                    }
                    Err(kv::WriteError::TooSoon { retry_at_ms }) => {
                        next_at = Some(next_at.map_or(retry_at_ms, |n| n.min(retry_at_ms)));
                    }
                    Err(kv::WriteError::TooLarge { bytes }) => {
                        worker::console_error!(
                            "routing value {p} is {bytes} bytes, over KV's 25 MiB: raise ROUTING_PARTITION_BITS"
                        );
                        let t = now + 60_000;
                        next_at = Some(next_at.map_or(t, |n| n.min(t)));
                    }
                    Err(kv::WriteError::Kv(e)) => {
                        worker::console_error!("routing value {p}: {e}");
                        let t = now + 2_000;
                        next_at = Some(next_at.map_or(t, |n| n.min(t)));
                    }
                }
            }
        }
        // Everything applied before the oldest change still dirty is in KV.
        #[derive(Deserialize)]
        struct Min {
            m: Option<i64>,
            n: i64,
        }
        let rows: Vec<Min> = self
            .sql()
            .exec("SELECT MIN(since_ms) AS m, COUNT(*) AS n FROM dirty", None)
            .internal("watermark")?
            .to_array()
            .internal("watermark rows")?;
        let (watermark, left) = rows
            .first()
            .map_or((now, 0), |m| (m.m.map_or(now, |v| v.max(0) as u64), m.n));
        if left > 0 && next_at.is_none() {
            next_at = Some(now);
        }
        if let Some(t) = next_at {
            self.state
                .storage()
                .set_alarm((t.saturating_sub(now_ms())) as i64)
                .await
                .internal("set alarm")?;
        }
        TableClient::new(&self.env, &cfg)
            .done(
                &TableOp::Flushed {
                    shard: index,
                    watermark_ms: watermark,
                },
                "flushed",
            )
            .await
    }

    /// Partition `p`'s value: every peer's section in use.
    fn value(&self, r: u8, p: u32, now: u64) -> ApiResult<Vec<u8>> {
        #[derive(Deserialize)]
        struct PeerRow {
            peer: String,
            version: i64,
            params: String,
            enc: i64,
            bits: serde_bytes::ByteBuf,
        }
        let rows: Vec<PeerRow> = self
            .sql()
            .exec(
                "SELECT peer, version, params, enc, bits FROM section WHERE p = ? AND staged = 0 ORDER BY peer",
                Some(vec![i64::from(p).into()]),
            )
            .internal("select value")?
            .to_array()
            .internal("read value")?;
        let mut sections = Vec::with_capacity(rows.len());
        for row in rows {
            let peer = row.peer.clone();
            sections.push(section_of(
                Row {
                    version: row.version,
                    params: row.params,
                    enc: row.enc,
                    bits: row.bits,
                },
                &peer,
                r,
                p,
            )?);
        }
        Ok(RoutingValue {
            r,
            p,
            written_ms: now,
            sections,
        }
        .encode())
    }

    fn stats(&self) -> ApiResult<serde_json::Value> {
        #[derive(Deserialize)]
        struct C {
            n: i64,
            b: Option<i64>,
        }
        let count = |q: &str| -> ApiResult<(i64, i64)> {
            let rows: Vec<C> = self
                .sql()
                .exec(q, None)
                .internal("stats")?
                .to_array()
                .internal("stats rows")?;
            Ok(rows.first().map_or((0, 0), |c| (c.n, c.b.unwrap_or(0))))
        };
        let (sections, bytes) =
            count("SELECT COUNT(*) AS n, SUM(LENGTH(bits)) AS b FROM section WHERE staged = 0")?;
        let (staged, staged_bytes) =
            count("SELECT COUNT(*) AS n, SUM(LENGTH(bits)) AS b FROM section WHERE staged = 1")?;
        let (dirty, _) = count("SELECT COUNT(*) AS n, 0 AS b FROM dirty")?;
        Ok(json!({
            "sections": sections, "section_bytes": bytes,
            "staged": staged, "staged_bytes": staged_bytes, "dirty": dirty,
            "kv": kv::stats(),
        }))
    }
}

/// A base64 payload of a routing message.
fn b64(text: &str) -> ApiResult<Vec<u8>> {
    b64_decode(text).map_err(|e| ApiError::Internal(format!("routing message payload: {e}")))
}

fn doc_params(d: &ParamsDoc) -> ApiResult<FilterParams> {
    d.params()
        .map_err(|e| ApiError::Internal(format!("routing params: {e}")))
}

fn section_of(row: Row, peer: &str, r: u8, p: u32) -> ApiResult<Section> {
    let doc: ParamsDoc = serde_json::from_str(&row.params)
        .map_err(|e| ApiError::Internal(format!("stored section params: {e}")))?;
    let mut s = Section::new(peer, row.version.max(0) as u64, doc_params(&doc)?, r, p);
    s.bits = decode_bits(row.enc as u8, &row.bits, s.shape.len())
        .map_err(|e| ApiError::Internal(format!("stored section of {peer} in {p}: {e}")))?;
    Ok(s)
}
