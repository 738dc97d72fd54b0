//! PeerCopy: the one writer of this GP's copy of one peer's filter
//! (ARCHITECTURE.md, "Routing table"). Everything that changes the copy
//! goes through here, in order:
//!
//! - additions deliveries: a delivery must start at or before the cursor
//!   (else 409 with the cursor, and the publisher resends from there); its
//!   bits are applied in every routing shard that holds them, then handed
//!   to the `RouteTable` overlay, and only then does the cursor move, to
//!   the largest `seq` applied. Re-applying bits is harmless and counts
//!   nothing twice (shards count newly set canonical bits), so a retried
//!   or overlapping delivery loses and doubles nothing;
//! - downloads: a new version is fetched partition by partition (each
//!   checked against the manifest, size-capped while it streams) into
//!   staged sections, resumably (the job and its next partition are
//!   stored; the alarm continues it), then subscribed to from the
//!   manifest's cursor, then activated in every shard at once;
//! - catch-up (cron): resubscribe from the cursor.
//!
//! Queries never call it; its state reaches them through the `RouteTable`.
use crate::core::encoding::{b64_decode, b64_encode};
use crate::core::filter::{decode_additions, FilterParams, ParamsDoc};
use crate::core::routing::{keying, partitions_of_bit, Keying, Shape};
use crate::edge::clock::now_ms;
use crate::edge::config::{GpConfig, Peer};
use crate::edge::http::error::{ApiError, ApiResult, OrInternal};
use crate::edge::objects::{dec, enc, Schema};
use crate::edge::outbound::peer::Signer;
use crate::edge::routing::sync::{self, Fetched, Subscribed};
use crate::edge::rpc;
use crate::edge::rpc::filter::Manifest;
use crate::edge::rpc::routing::{
    additions_b64, partitions_of_shard, shard_of_partition, CopyOp, CopyReply, PeerRoute, RtClient,
    RtOp, SyncProgress, TableClient, TableOp,
};
use serde::{Deserialize, Serialize};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use worker::{durable_object, Env, Request, Response, SqlStorage, State};

/// Shard calls in flight at once (a request's concurrent subrequests).
const PARALLEL: usize = 6;
/// Most partitions one invocation downloads (each costs 1 + shards
/// subrequests; an invocation may make 1,000).
const PARTITIONS_PER_RUN: u32 = 32;
/// How long the alarm works on a download before yielding.
const ALARM_BUDGET_MS: u64 = 20_000;
/// Retry delay after an error: doubling from this, at most 10 minutes.
const RETRY_BASE_MS: u64 = 5_000;

/// A download in progress (stored: the alarm resumes it).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Job {
    manifest: Manifest,
    next: u32,
    started_ms: u64,
    staged_ones: u64,
    /// Subscribed to this version: additions go to its staged sections.
    subscribed: bool,
    /// The staged version's cursor once subscribed.
    seq: u64,
}

/// The copy's state (stored as one JSON row).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Copy {
    peer: String,
    version: Option<u64>,
    params: Option<ParamsDoc>,
    seq: u64,
    ones: u64,
    updated_ms: u64,
    activated_ms: u64,
    errors: u32,
    last_error: Option<String>,
    last_error_ms: u64,
    switching: bool,
    /// The peer started a new version: the one in use no longer gets its
    /// additions, so queries ask the peer until the new one is active.
    #[serde(default)]
    rotating: bool,
    job: Option<Job>,
}

impl Copy {
    fn route(&self) -> PeerRoute {
        let status = if self.switching {
            "switching"
        } else if self.version.is_some() && self.rotating {
            "rotating"
        } else if self.version.is_some() {
            "current"
        } else if self.job.is_some() {
            "syncing"
        } else if self.errors > 0 {
            "error"
        } else {
            "never"
        };
        PeerRoute {
            peer: self.peer.clone(),
            status: status.into(),
            version: self.version,
            params: self.params.clone(),
            seq: self.seq,
            bits_set: self.ones,
            estimated_fp_rate: self
                .params
                .as_ref()
                .and_then(|d| d.params().ok())
                .map(|p| p.fp_from_ones(self.ones)),
            updated_ms: self.updated_ms,
            activated_ms: self.activated_ms,
            errors: self.errors,
            last_error: self.last_error.clone(),
            last_error_ms: self.last_error_ms,
            sync: self.job.as_ref().map(|j| SyncProgress {
                version: j.manifest.version,
                bits: j.manifest.params.bits,
                partitions: j.manifest.partitions.len() as u32,
                done: j.next,
                started_ms: j.started_ms,
            }),
        }
    }
}

#[durable_object]
pub struct PeerCopy {
    state: State,
    env: Env,
    copy: RefCell<Option<Copy>>,
    /// A download step is running (alarm and requests do not overlap one).
    busy: Cell<bool>,
    schema: Schema,
}

impl worker::DurableObject for PeerCopy {
    fn new(state: State, env: Env) -> Self {
        PeerCopy {
            state,
            env,
            copy: RefCell::new(None),
            busy: Cell::new(false),
            schema: Schema::new(
                "copy schema",
                "CREATE TABLE IF NOT EXISTS copy (k INTEGER PRIMARY KEY, state TEXT NOT NULL)",
            ),
        }
    }

    async fn fetch(&self, mut req: Request) -> worker::Result<Response> {
        self.serve(req.text().await?).await.into_response()
    }

    async fn alarm(&self) -> worker::Result<Response> {
        let peer = self.loaded().ok().flatten().map(|c| c.peer);
        if let Some(peer) = peer {
            let result = match self.loaded().ok().flatten().and_then(|c| c.job) {
                Some(_) => self.drive(&peer, ALARM_BUDGET_MS).await,
                None => self.catch_up(&peer, ALARM_BUDGET_MS).await,
            };
            if let Err(e) = result {
                worker::console_error!("peer copy {peer}: {e:?}");
            }
        }
        Response::ok("ok")
    }
}

rpc::serve_rpc!(PeerCopy);

impl PeerCopy {
    /// One JSON operation, by RPC or by fetch.
    async fn serve(&self, op: String) -> rpc::Answer {
        rpc::serve_with(&op, "/peer-copy", |op: CopyOp| self.run(op)).await
    }
}

#[derive(Deserialize)]
struct StateRow {
    state: String,
}

impl PeerCopy {
    fn sql(&self) -> SqlStorage {
        self.state.storage().sql()
    }

    fn cfg(&self) -> ApiResult<std::rc::Rc<GpConfig>> {
        GpConfig::cached(&self.env)
    }

    /// The stored copy, if any.
    fn loaded(&self) -> ApiResult<Option<Copy>> {
        if let Some(c) = self.copy.borrow().as_ref() {
            return Ok(Some(c.clone()));
        }
        self.schema.ensure(&self.sql())?;
        let rows: Vec<StateRow> = self
            .sql()
            .exec("SELECT state FROM copy WHERE k = 1", None)
            .internal("select copy")?
            .to_array()
            .internal("read copy")?;
        let c = match rows.first() {
            Some(r) => Some(dec::<Copy>(&r.state)?),
            None => None,
        };
        *self.copy.borrow_mut() = c.clone();
        Ok(c)
    }

    fn current(&self, peer: &str) -> ApiResult<Copy> {
        Ok(self.loaded()?.unwrap_or_else(|| Copy {
            peer: peer.to_string(),
            ..Copy::default()
        }))
    }

    fn save(&self, c: &Copy) -> ApiResult<()> {
        self.sql()
            .exec(
                "INSERT OR REPLACE INTO copy (k, state) VALUES (1, ?)",
                Some(vec![enc(c)?.into()]),
            )
            .internal("store copy")?;
        *self.copy.borrow_mut() = Some(c.clone());
        Ok(())
    }

    /// Applies `f` to the stored copy, stores it, and returns it.
    fn update(&self, peer: &str, f: impl FnOnce(&mut Copy)) -> ApiResult<Copy> {
        let mut c = self.current(peer)?;
        f(&mut c);
        self.save(&c)?;
        Ok(c)
    }

    /// Lets the alarm run now.
    async fn soon(&self) -> ApiResult<()> {
        self.state
            .storage()
            .set_alarm(0i64)
            .await
            .internal("set alarm")
    }

    async fn publish(&self, c: &Copy) -> ApiResult<()> {
        let cfg = self.cfg()?;
        TableClient::new(&self.env, &cfg)
            .done(&TableOp::State { state: c.route() }, "state")
            .await
    }

    fn peer_cfg(&self, cfg: &GpConfig, peer: &str) -> ApiResult<Peer> {
        cfg.peers
            .iter()
            .find(|p| p.id == peer)
            .cloned()
            .ok_or_else(|| ApiError::Internal(format!("peer {peer} is not configured")))
    }

    async fn run(&self, op: CopyOp) -> ApiResult<CopyReply> {
        match op {
            CopyOp::Additions {
                peer,
                version,
                after,
                seq,
                additions,
            } => self.additions(&peer, version, after, seq, &additions).await,
            CopyOp::Rotated { peer, new_version } => {
                // The alarm's catch-up finds the old version ended and
                // downloads the new one; the publisher is answered at once.
                let mut c = self.current(&peer)?;
                if c.version.is_none_or(|v| v < new_version) {
                    c.rotating = c.version.is_some();
                    self.save(&c)?;
                    self.publish(&c).await?;
                    self.soon().await?;
                }
                Ok(CopyReply::State { state: c.route() })
            }
            CopyOp::CatchUp { peer, budget_ms } => {
                self.catch_up(&peer, budget_ms).await?;
                Ok(CopyReply::State {
                    state: self.current(&peer)?.route(),
                })
            }
            CopyOp::State { peer } => Ok(CopyReply::State {
                state: self.current(&peer)?.route(),
            }),
        }
    }

    /// A delivery of additions (see the module docs).
    async fn additions(
        &self,
        peer: &str,
        version: u64,
        after: u64,
        seq: u64,
        additions: &str,
    ) -> ApiResult<CopyReply> {
        let c = self.current(peer)?;
        let staged = c
            .job
            .as_ref()
            .filter(|j| j.subscribed && j.manifest.version == version);
        let (cursor, params) = match (c.version, staged) {
            (Some(v), _) if v == version => (c.seq, c.params.clone()),
            (_, Some(j)) => (j.seq, Some(j.manifest.params.clone())),
            (Some(v), _) if version < v => return Ok(CopyReply::Stale { version: v }),
            _ => {
                // A version this copy does not know: the alarm downloads it.
                self.save(&c)?;
                self.soon().await?;
                return Ok(CopyReply::Resyncing);
            }
        };
        if after > cursor {
            return Ok(CopyReply::Gap { seq: cursor });
        }
        let doc = params.ok_or_else(|| ApiError::Internal("copy without params".into()))?;
        let fp = doc
            .params()
            .map_err(|e| ApiError::Internal(format!("copy params: {e}")))?;
        let refused = |detail: String| Ok(CopyReply::Refused { detail });
        let Ok(bytes) = b64_decode(additions) else {
            return refused("additions are not base64".into());
        };
        let batch = match decode_additions(&bytes) {
            Ok(b) => b,
            Err(e) => return refused(format!("additions: {e}")),
        };
        if batch.version != version {
            return refused("batch version differs from the message's".into());
        }
        if let Some(&b) = batch.indices.iter().find(|&&b| b >= fp.bits) {
            return refused(format!(
                "additions do not fit the filter: bit {b} of {}",
                fp.bits
            ));
        }
        let cfg = self.cfg()?;
        let by_shard = split_by_shard(&cfg, &fp, &batch.indices);
        let shards: Vec<u32> = by_shard.keys().copied().collect();
        let (new_active, new_staged) =
            apply_everywhere(&self.env, &cfg, peer, version, &doc, by_shard, false).await?;
        let now = now_ms();
        let is_active = c.version == Some(version);
        let c = self.update(peer, |c| {
            if is_active && c.version == Some(version) {
                c.seq = c.seq.max(seq);
                c.ones += new_active;
                c.updated_ms = now;
            } else if let Some(j) = c.job.as_mut().filter(|j| j.manifest.version == version) {
                j.seq = j.seq.max(seq);
                j.staged_ones += new_staged;
            }
        })?;
        TableClient::new(&self.env, &cfg)
            .done(
                &TableOp::Add {
                    version,
                    additions: b64_encode(&bytes),
                    shards,
                    state: c.route(),
                },
                "add",
            )
            .await?;
        let seq = if is_active {
            c.seq
        } else {
            c.job.as_ref().map_or(seq, |j| j.seq)
        };
        Ok(CopyReply::Applied { seq })
    }

    /// Starts a download of the peer's current version (or, when that is
    /// the version in use, resubscribes from the cursor).
    async fn start(&self, peer: &str) -> ApiResult<()> {
        let cfg = self.cfg()?;
        let p = self.peer_cfg(&cfg, peer)?;
        let signer = Signer::from_env(&self.env)?;
        let m = match sync::fetch_manifest(&signer, &p).await {
            Ok(m) => m,
            Err(e) => return self.failed(peer, e).await,
        };
        let c = self.current(peer)?;
        if c.job
            .as_ref()
            .is_some_and(|j| j.manifest.version == m.version)
        {
            return Ok(());
        }
        // Staged sections of an abandoned download go first.
        for_each_shard(&self.env, &cfg, |rt| async move {
            rt.call(RtOp::DropStaged {
                peer: peer.to_string(),
            })
            .await
            .map(|_| ())
        })
        .await?;
        let now = now_ms();
        let c = self.update(peer, |c| {
            c.job = Some(Job {
                manifest: m,
                next: 0,
                started_ms: now,
                staged_ones: 0,
                subscribed: false,
                seq: 0,
            });
        })?;
        self.publish(&c).await
    }

    async fn failed<T: Default>(&self, peer: &str, e: String) -> ApiResult<T> {
        worker::console_error!("peer copy {peer}: {e}");
        let now = now_ms();
        let c = self.update(peer, |c| {
            c.errors = c.errors.saturating_add(1);
            c.last_error = Some(e.clone());
            c.last_error_ms = now;
        })?;
        let wait = RETRY_BASE_MS
            .saturating_mul(1u64 << c.errors.min(8))
            .min(600_000);
        self.state
            .storage()
            .set_alarm(wait as i64)
            .await
            .internal("set alarm")?;
        self.publish(&c).await?;
        Ok(T::default())
    }

    fn cleared(&self, peer: &str) -> ApiResult<Copy> {
        self.update(peer, |c| {
            c.errors = 0;
        })
    }

    /// The cron's catch-up: continue a download, resubscribe from the
    /// cursor, or start a download.
    async fn catch_up(&self, peer: &str, budget_ms: u64) -> ApiResult<()> {
        let c = self.current(peer)?;
        if c.job.is_some() {
            return self.drive(peer, budget_ms).await;
        }
        if let Some(version) = c.version {
            let cfg = self.cfg()?;
            let p = self.peer_cfg(&cfg, peer)?;
            let signer = Signer::from_env(&self.env)?;
            match sync::subscribe(&signer, &p, version, c.seq).await {
                Ok(Subscribed::Yes) => {
                    let c = self.cleared(peer)?;
                    return self.publish(&c).await;
                }
                Ok(Subscribed::VersionEnded) => {
                    let c = self.update(peer, |c| c.rotating = true)?;
                    self.publish(&c).await?;
                }
                Err(e) => return self.failed(peer, e).await,
            }
        }
        self.start(peer).await?;
        self.drive(peer, budget_ms).await
    }

    /// Works on the download for up to `budget_ms`; the alarm continues it.
    async fn drive(&self, peer: &str, budget_ms: u64) -> ApiResult<()> {
        if self.busy.replace(true) {
            return Ok(());
        }
        let result = self.drive_inner(peer, budget_ms).await;
        self.busy.set(false);
        result
    }

    async fn drive_inner(&self, peer: &str, budget_ms: u64) -> ApiResult<()> {
        let started = now_ms();
        let cfg = self.cfg()?;
        let p = self.peer_cfg(&cfg, peer)?;
        let signer = Signer::from_env(&self.env)?;
        let mut fetched = 0u32;
        loop {
            let Some(job) = self.current(peer)?.job else {
                return Ok(());
            };
            let m = &job.manifest;
            let doc = m.params.clone();
            let params = doc
                .params()
                .map_err(|e| ApiError::Internal(format!("manifest params: {e}")))?;
            if job.next < m.partitions.len() as u32 {
                if fetched >= PARTITIONS_PER_RUN || now_ms() - started > budget_ms {
                    return self.soon().await;
                }
                let f = match sync::fetch_partition(&signer, &p, m, job.next).await {
                    Ok(Fetched::Partition(f)) => f,
                    Ok(Fetched::VersionEnded) => {
                        self.update(peer, |c| c.job = None)?;
                        self.start(peer).await?;
                        continue;
                    }
                    Err(e) => return self.failed(peer, e).await,
                };
                // A shard that cannot store the partition (e.g. a section
                // over a row: the capacity check names it) is this copy's
                // error, shown in /v1/gp, not only a log line.
                let staged = match self.stage(&cfg, peer, m.version, &doc, &params, &f).await {
                    Ok(n) => n,
                    Err(e) => return self.failed(peer, format!("{e:?}")).await,
                };
                fetched += 1;
                let c = self.update(peer, |c| {
                    if let Some(j) = c.job.as_mut() {
                        j.next += 1;
                        j.staged_ones += staged;
                    }
                })?;
                if fetched.is_multiple_of(8) {
                    self.publish(&c).await?;
                }
                continue;
            }
            // Every partition is staged: subscribe from the manifest's
            // cursor (deliveries go to the staged version from now on),
            // then activate everywhere at once.
            let c = self.update(peer, |c| {
                c.switching = true;
                if let Some(j) = c.job.as_mut() {
                    j.subscribed = true;
                    j.seq = j.seq.max(j.manifest.seq);
                }
            })?;
            self.publish(&c).await?;
            match sync::subscribe(&signer, &p, m.version, m.seq).await {
                Ok(Subscribed::Yes) => {}
                Ok(Subscribed::VersionEnded) => {
                    self.update(peer, |c| {
                        c.job = None;
                        c.switching = false;
                    })?;
                    self.start(peer).await?;
                    continue;
                }
                Err(e) => {
                    self.update(peer, |c| c.switching = false)?;
                    return self.failed(peer, e).await;
                }
            }
            let version = m.version;
            let ones = activate_everywhere(&self.env, &cfg, peer, version, &doc).await?;
            let now = now_ms();
            let c = self.update(peer, |c| {
                let seq = c.job.as_ref().map_or(0, |j| j.seq);
                c.version = Some(version);
                c.params = Some(doc.clone());
                c.seq = seq;
                c.ones = ones;
                c.updated_ms = now;
                c.activated_ms = now;
                c.switching = false;
                c.rotating = false;
                c.job = None;
                c.errors = 0;
            })?;
            return self.publish(&c).await;
        }
    }

    /// Hands one downloaded partition to the shards whose sections it
    /// touches: as set bits where it is sparse, as a bitmap where dense;
    /// a shard it sets nothing in is not called.
    async fn stage(
        &self,
        cfg: &GpConfig,
        peer: &str,
        version: u64,
        doc: &ParamsDoc,
        params: &FilterParams,
        f: &crate::core::filter::Filter,
    ) -> ApiResult<u64> {
        let bitmap = f.bitmap_bytes();
        let first = f.first_bit();
        let end = first + f.local_bits();
        let r = cfg.routing_partition_bits;
        let mut ops = Vec::new();
        for shard in 0..cfg.routing_shards {
            let range = partitions_of_shard(cfg, shard);
            let (lo, hi) = match keying(params) {
                Keying::Residue => (first, end),
                Keying::Prefix => {
                    let a = Shape::of(params, r, range.start);
                    let b = Shape::of(params, r, range.end - 1);
                    match (a, b) {
                        (
                            Shape::Range { first: af, .. },
                            Shape::Range {
                                first: bf, len: bl, ..
                            },
                        ) => (af.max(first), (bf + bl).min(end)),
                        _ => (first, end),
                    }
                }
            };
            if lo >= hi {
                continue;
            }
            // Shapes and partitions start on whole bytes.
            let slice = bitmap
                .get(((lo - first) / 8) as usize..((hi - first).div_ceil(8)) as usize)
                .unwrap_or(&[]);
            let ones: u64 = slice.iter().map(|b| u64::from(b.count_ones())).sum();
            if ones == 0 {
                continue;
            }
            let op = if ones * 4 < slice.len() as u64 {
                let mut bits = Vec::with_capacity(ones as usize);
                for (i, &byte) in slice.iter().enumerate() {
                    let mut x = byte;
                    while x != 0 {
                        bits.push(lo + i as u64 * 8 + u64::from(x.trailing_zeros()));
                        x &= x - 1;
                    }
                }
                RtOp::Apply {
                    peer: peer.to_string(),
                    version,
                    params: doc.clone(),
                    additions: additions_b64(version, &bits),
                    stage: true,
                }
            } else {
                RtOp::ApplyBitmap {
                    peer: peer.to_string(),
                    version,
                    params: doc.clone(),
                    first_bit: lo,
                    bitmap: b64_encode(slice),
                }
            };
            ops.push((shard, op));
        }
        let mut total = 0;
        let mut ops = ops.into_iter();
        loop {
            let batch: Vec<(u32, RtOp)> = ops.by_ref().take(PARALLEL).collect();
            if batch.is_empty() {
                break;
            }
            let calls = batch.into_iter().map(|(shard, op)| async move {
                RtClient::new(&self.env, cfg, shard).applied(op).await
            });
            for r in futures_util::future::join_all(calls).await {
                total += r?.1;
            }
        }
        Ok(total)
    }
}

/// Which routing shards hold each bit (a small filter's bit is in many).
fn split_by_shard(cfg: &GpConfig, params: &FilterParams, bits: &[u64]) -> BTreeMap<u32, Vec<u64>> {
    let mut out: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for &b in bits {
        let Some(set) = partitions_of_bit(params, cfg.routing_partition_bits, b) else {
            continue;
        };
        let mut last = None;
        for p in set.iter() {
            let s = shard_of_partition(cfg, p);
            if last != Some(s) {
                let v = out.entry(s).or_default();
                if v.last() != Some(&b) {
                    v.push(b);
                }
                last = Some(s);
            }
        }
    }
    out
}

/// Calls `f` for every routing shard, [`PARALLEL`] at a time.
async fn for_each_shard<'e, F, Fut>(env: &'e Env, cfg: &'e GpConfig, f: F) -> ApiResult<()>
where
    F: Fn(RtClient<'e>) -> Fut,
    Fut: std::future::Future<Output = ApiResult<()>>,
{
    let all: Vec<u32> = (0..cfg.routing_shards).collect();
    for group in all.chunks(PARALLEL) {
        let calls = group.iter().map(|&i| f(RtClient::new(env, cfg, i)));
        for r in futures_util::future::join_all(calls).await {
            r?;
        }
    }
    Ok(())
}

/// Applies additions in each shard that holds them; (new in use, new staged).
async fn apply_everywhere(
    env: &Env,
    cfg: &GpConfig,
    peer: &str,
    version: u64,
    doc: &ParamsDoc,
    by_shard: BTreeMap<u32, Vec<u64>>,
    stage: bool,
) -> ApiResult<(u64, u64)> {
    let (mut a, mut s) = (0, 0);
    let items: Vec<(u32, Vec<u64>)> = by_shard.into_iter().collect();
    for group in items.chunks(PARALLEL) {
        let calls = group.iter().map(|(shard, bits)| {
            let op = RtOp::Apply {
                peer: peer.to_string(),
                version,
                params: doc.clone(),
                additions: additions_b64(version, bits),
                stage,
            };
            async move { RtClient::new(env, cfg, *shard).applied(op).await }
        });
        for r in futures_util::future::join_all(calls).await {
            let (x, y) = r?;
            a += x;
            s += y;
        }
    }
    Ok((a, s))
}

/// Activates `version` in every shard; the copy's exact bit count.
async fn activate_everywhere(
    env: &Env,
    cfg: &GpConfig,
    peer: &str,
    version: u64,
    doc: &ParamsDoc,
) -> ApiResult<u64> {
    let all: Vec<u32> = (0..cfg.routing_shards).collect();
    let mut ones = 0;
    for group in all.chunks(PARALLEL) {
        let calls = group.iter().map(|&i| {
            let op = RtOp::Activate {
                peer: peer.to_string(),
                version,
                params: doc.clone(),
            };
            async move { RtClient::new(env, cfg, i).activate(op).await }
        });
        for r in futures_util::future::join_all(calls).await {
            ones += r?;
        }
    }
    Ok(ones)
}
