//! RouteTable: the routing table's directory and its recent-additions
//! overlay (ARCHITECTURE.md, "Routing table"). One per GP.
//!
//! - Directory: each peer copy's state (status, version, cursor, bits,
//!   errors), pushed by its `PeerCopy`; `/v1/gp` and isolates read it.
//! - Overlay: every addition a `PeerCopy` has applied, kept until KV has it
//!   everywhere: the routing shards that applied it have reported a flush
//!   watermark past it, and [`kv::STALE_MS`] has passed since (KV's edge
//!   cache and propagation). An isolate polls at most once a second for
//!   the entries after its cursor, so an addition reaches queries within
//!   about a second while the KV values are only rewritten once a second
//!   per key. More than [`MAX_OVERLAY_BITS`] bits (a bulk load) become a
//!   *wildcard* entry: queries ask that peer until KV has caught up.
//!
//! Entries are dropped in order; an isolate whose cursor fell below the
//! floor gets all entries with `reset` and starts its cache over.
use crate::core::encoding::{b64_decode, b64_encode};
use crate::core::filter::{decode_additions, encode_additions};
use crate::edge::clock::now_ms;
use crate::edge::http::error::{ApiError, ApiResult, OrInternal};
use crate::edge::objects::{dec, enc};
use crate::edge::routing::kv;
use crate::edge::rpc;
use crate::edge::rpc::routing::{EntryWire, PeerRoute, TableOp, TableReply};
use serde::Deserialize;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use worker::{durable_object, Env, Request, Response, SqlStorage, State};

/// Most bits the overlay holds (2 MiB as u64; the isolate's copy counts
/// against `ROUTING_CACHE_MB`).
pub const MAX_OVERLAY_BITS: u64 = 262_144;
/// Clock skew allowed between objects when comparing a shard's watermark
/// with the time an entry was added.
const SKEW_MS: u64 = 1_000;
/// Flush reports kept per shard (one a second at most: over 8 minutes).
const REPORTS_KEPT: usize = 512;

struct Entry {
    o: u64,
    peer: String,
    version: u64,
    /// None: a wildcard.
    bits: Option<Vec<u64>>,
    added_ms: u64,
    shards: Vec<u32>,
}

#[derive(Default)]
struct Table {
    loaded: bool,
    oseq: u64,
    floor: u64,
    dir_version: u64,
    dir: BTreeMap<String, PeerRoute>,
    entries: VecDeque<Entry>,
    bits: u64,
    /// Per shard: (watermark, received at), oldest first.
    reports: HashMap<u32, VecDeque<(u64, u64)>>,
}

#[durable_object]
pub struct RouteTable {
    state: State,
    table: RefCell<Table>,
}

impl worker::DurableObject for RouteTable {
    fn new(state: State, _env: Env) -> Self {
        RouteTable {
            state,
            table: RefCell::new(Table::default()),
        }
    }

    async fn fetch(&self, mut req: Request) -> worker::Result<Response> {
        self.serve(req.text().await?).await.into_response()
    }
}

rpc::serve_rpc!(RouteTable);

impl RouteTable {
    /// One JSON operation, by RPC or by fetch.
    async fn serve(&self, op: String) -> rpc::Answer {
        rpc::serve_with(
            &op,
            "/route-table",
            |op: TableOp| async move { self.run(op) },
        )
        .await
    }
}

#[derive(Deserialize)]
struct EntryRow {
    o: i64,
    peer: String,
    version: i64,
    added_ms: i64,
    shards: String,
    gla1: Option<serde_bytes::ByteBuf>,
}

#[derive(Deserialize)]
struct PeerRow {
    state: String,
}

#[derive(Deserialize)]
struct MetaRow {
    k: String,
    v: i64,
}

impl RouteTable {
    fn sql(&self) -> SqlStorage {
        self.state.storage().sql()
    }

    fn load(&self) -> ApiResult<()> {
        if self.table.borrow().loaded {
            return Ok(());
        }
        let sql = self.sql();
        sql.exec(
            "CREATE TABLE IF NOT EXISTS overlay (o INTEGER PRIMARY KEY, peer TEXT NOT NULL,
                version INTEGER NOT NULL, added_ms INTEGER NOT NULL, shards TEXT NOT NULL, gla1 BLOB);
             CREATE TABLE IF NOT EXISTS peer (id TEXT PRIMARY KEY, state TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL);",
            None,
        )
        .internal("route table schema")?;
        let mut t = Table::default();
        let metas: Vec<MetaRow> = sql
            .exec("SELECT k, v FROM meta", None)
            .internal("meta")?
            .to_array()
            .internal("meta rows")?;
        for m in metas {
            match m.k.as_str() {
                "oseq" => t.oseq = m.v.max(0) as u64,
                "floor" => t.floor = m.v.max(0) as u64,
                _ => {}
            }
        }
        let peers: Vec<PeerRow> = sql
            .exec("SELECT state FROM peer", None)
            .internal("peers")?
            .to_array()
            .internal("peer rows")?;
        for p in peers {
            let s: PeerRoute = dec(&p.state)?;
            t.dir.insert(s.peer.clone(), s);
        }
        let rows: Vec<EntryRow> = sql
            .exec(
                "SELECT o, peer, version, added_ms, shards, gla1 FROM overlay ORDER BY o",
                None,
            )
            .internal("overlay")?
            .to_array()
            .internal("overlay rows")?;
        for r in rows {
            let bits = match r.gla1 {
                Some(b) => Some(
                    decode_additions(&b)
                        .map_err(|e| ApiError::Internal(format!("stored overlay: {e}")))?
                        .indices,
                ),
                None => None,
            };
            t.bits += bits.as_ref().map_or(0, |b| b.len() as u64);
            t.entries.push_back(Entry {
                o: r.o.max(0) as u64,
                peer: r.peer,
                version: r.version.max(0) as u64,
                bits,
                added_ms: r.added_ms.max(0) as u64,
                shards: dec(&r.shards)?,
            });
        }
        // A fresh directory version per load: pollers re-read it.
        t.dir_version = now_ms();
        t.loaded = true;
        *self.table.borrow_mut() = t;
        Ok(())
    }

    fn set_meta(&self, k: &str, v: u64) -> ApiResult<()> {
        self.sql()
            .exec(
                "INSERT OR REPLACE INTO meta (k, v) VALUES (?, ?)",
                Some(vec![k.into(), (v as i64).into()]),
            )
            .internal("meta")?;
        Ok(())
    }

    /// Stores a peer's state; a change that matters to queries (status,
    /// version, params) moves the directory version.
    fn put_state(&self, state: PeerRoute) -> ApiResult<()> {
        self.sql()
            .exec(
                "INSERT OR REPLACE INTO peer (id, state) VALUES (?, ?)",
                Some(vec![state.peer.clone().into(), enc(&state)?.into()]),
            )
            .internal("peer state")?;
        let mut t = self.table.borrow_mut();
        let changed = t.dir.get(&state.peer).is_none_or(|old| {
            old.status != state.status || old.version != state.version || old.params != state.params
        });
        if changed {
            t.dir_version += 1;
        }
        t.dir.insert(state.peer.clone(), state);
        Ok(())
    }

    fn run(&self, op: TableOp) -> ApiResult<TableReply> {
        self.load()?;
        let now = now_ms();
        match op {
            TableOp::Add {
                version,
                additions,
                shards,
                state,
            } => {
                let bytes = b64_decode(&additions)
                    .map_err(|e| ApiError::Internal(format!("overlay additions: {e}")))?;
                let batch = decode_additions(&bytes)
                    .map_err(|e| ApiError::Internal(format!("overlay additions: {e}")))?;
                let peer = state.peer.clone();
                self.put_state(state)?;
                self.prune(now)?;
                let n = batch.indices.len() as u64;
                let wildcard = self.table.borrow().bits + n > MAX_OVERLAY_BITS;
                let o = self.table.borrow().oseq + 1;
                self.sql()
                    .exec(
                        "INSERT INTO overlay (o, peer, version, added_ms, shards, gla1) VALUES (?, ?, ?, ?, ?, ?)",
                        Some(vec![
                            (o as i64).into(),
                            peer.clone().into(),
                            (version as i64).into(),
                            (now as i64).into(),
                            enc(&shards)?.into(),
                            if wildcard { worker::SqlStorageValue::Null } else { bytes.into() },
                        ]),
                    )
                    .internal("overlay insert")?;
                self.set_meta("oseq", o)?;
                let mut t = self.table.borrow_mut();
                t.oseq = o;
                if !wildcard {
                    t.bits += n;
                }
                t.entries.push_back(Entry {
                    o,
                    peer,
                    version,
                    bits: (!wildcard).then_some(batch.indices),
                    added_ms: now,
                    shards,
                });
                Ok(TableReply::Added { oseq: o })
            }
            TableOp::State { state } => {
                self.put_state(state)?;
                Ok(TableReply::Done)
            }
            TableOp::Flushed {
                shard,
                watermark_ms,
            } => {
                {
                    let mut t = self.table.borrow_mut();
                    let ring = t.reports.entry(shard).or_default();
                    if ring.back().is_none_or(|(w, _)| *w < watermark_ms) {
                        ring.push_back((watermark_ms, now));
                        if ring.len() > REPORTS_KEPT {
                            ring.pop_front();
                        }
                    }
                }
                self.prune(now)?;
                Ok(TableReply::Done)
            }
            TableOp::View { after, dir_version } => {
                self.prune(now)?;
                let t = self.table.borrow();
                let reset = after < t.floor;
                let entries = t
                    .entries
                    .iter()
                    .filter(|e| reset || e.o > after)
                    .map(|e| EntryWire {
                        o: e.o,
                        peer: e.peer.clone(),
                        version: e.version,
                        additions: e
                            .bits
                            .as_ref()
                            .map(|b| b64_encode(&encode_additions(e.version, b))),
                    })
                    .collect();
                Ok(TableReply::View {
                    oseq: t.oseq,
                    floor: t.floor,
                    reset,
                    dir_version: t.dir_version,
                    dir: (dir_version != t.dir_version).then(|| t.dir.values().cloned().collect()),
                    entries,
                    overlay_bits: t.bits,
                })
            }
        }
    }

    /// Drops, in order, the entries KV now has everywhere.
    fn prune(&self, now: u64) -> ApiResult<()> {
        let mut dropped = None;
        {
            let mut t = self.table.borrow_mut();
            while let Some(e) = t.entries.front() {
                let due = e.added_ms + SKEW_MS;
                let safe = |s: &u32| {
                    t.reports.get(s).is_some_and(|ring| {
                        ring.iter()
                            .find(|(w, _)| *w >= due)
                            .is_some_and(|(_, at)| at + kv::STALE_MS <= now)
                    })
                };
                let ok = if e.shards.is_empty() {
                    e.added_ms + kv::STALE_MS <= now
                } else {
                    e.shards.iter().all(safe)
                };
                if !ok {
                    break;
                }
                if let Some(e) = t.entries.pop_front() {
                    t.bits -= e.bits.as_ref().map_or(0, |b| b.len() as u64);
                    t.floor = e.o;
                    dropped = Some(e.o);
                }
            }
        }
        if let Some(floor) = dropped {
            self.sql()
                .exec(
                    "DELETE FROM overlay WHERE o <= ?",
                    Some(vec![(floor as i64).into()]),
                )
                .internal("overlay prune")?;
            self.set_meta("floor", floor)?;
        }
        Ok(())
    }
}
