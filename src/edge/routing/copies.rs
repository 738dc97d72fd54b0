//! This isolate's view of the routing table (ARCHITECTURE.md, "Routing
//! table"): whether each peer may hold an SII, from one KV value per query
//! at most, in memory bounded by `ROUTING_CACHE_MB` whatever the number of
//! peers or the size of their filters.
//!
//! - Routing partitions (`rt/{r}/{p}`, every peer's section of partition
//!   p) are read through KV's edge cache and kept in an LRU.
//! - The `RouteTable` is polled at most once a second, only when a query
//!   needs the view: the peers' states when they changed, and the overlay
//!   entries (additions newer than KV may be) after this isolate's cursor.
//!   New entries are set in the cached partitions at once; a partition
//!   read later gets every entry the view holds. So an addition is seen
//!   here about a second after its `PeerCopy` applied it, and a cached
//!   partition never misses one (a poll whose cursor fell behind the
//!   overlay's floor empties the cache).
//! - A peer whose routing data cannot be read is never skipped silently:
//!   it is asked (with the reason, when its copy is not in place yet or is
//!   being replaced) or the answer is incomplete (with the reason, when the
//!   table cannot be read).
use crate::core::encoding::b64_decode;
use crate::core::filter::{decode_additions, HashScheme};
use crate::core::routing::{key_of, keying, Keying, RoutingValue, Shape};
use crate::edge::clock::now_ms;
use crate::edge::config::GpConfig;
use crate::edge::http::error::{ApiError, ApiResult};
use crate::edge::objects::routing_shard::value_key;
use crate::edge::routing::kv;
use crate::edge::rpc::routing::{PeerRoute, TableClient, TableOp, TableReply};
use serde::Serialize;
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use worker::Env;

/// How long a view is used before the next poll.
pub const POLL_MS: u64 = 1_000;
/// A view older than this (polls failing) is not trusted: answers are
/// incomplete rather than missing additions silently.
pub const VIEW_TRUST_MS: u64 = 10_000;

/// What the routing table says about one peer for one SII.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Its filter says the SII is certainly not there.
    No,
    /// Its filter may hold the SII: ask it.
    Maybe,
    /// No usable filter copy yet (or a new version being activated): ask
    /// it anyway, and say why.
    Ask(String),
    /// The routing data cannot be read: not asked, the answer is
    /// incomplete, with the reason.
    Unreadable(String),
}

struct Entry {
    o: u64,
    peer: String,
    version: u64,
    /// Sorted; None for a wildcard.
    bits: Option<Rc<Vec<u64>>>,
}

struct Cached {
    /// Shared with the queries reading it: a query keeps its partition
    /// even if a concurrent request evicts it meanwhile.
    value: Rc<RefCell<RoutingValue>>,
    bytes: usize,
    used: u64,
    /// When it was read from KV.
    read_ms: u64,
}

/// Counters of this isolate's routing view (tests, benchmarks).
#[derive(Debug, Default, Clone, Serialize)]
pub struct ViewStats {
    pub polls: u64,
    pub poll_errors: u64,
    pub partition_reads: u64,
    pub partition_hits: u64,
    pub resets: u64,
    /// Cache emptied because a peer switched versions or a wildcard ended.
    pub switches: u64,
    /// Routing state held now, and the most ever (bytes).
    pub bytes: usize,
    pub bytes_peak: usize,
    pub cached_partitions: usize,
    pub overlay_entries: usize,
    pub overlay_bits: u64,
}

#[derive(Default)]
struct View {
    config: (u8, u32),
    polled_ms: u64,
    ok_ms: u64,
    polling: bool,
    oseq: u64,
    dir_version: u64,
    dir: HashMap<String, PeerRoute>,
    entries: VecDeque<Entry>,
    entry_bytes: usize,
    values: HashMap<u32, Cached>,
    value_bytes: usize,
    tick: u64,
    last_error: Option<String>,
    stats: ViewStats,
}

thread_local! {
    static VIEW: RefCell<View> = RefCell::new(View::default());
}

/// A copy of the counters.
pub fn stats() -> ViewStats {
    VIEW.with(|v| {
        let v = v.borrow();
        let mut s = v.stats.clone();
        s.bytes = v.entry_bytes + v.value_bytes + dir_bytes(&v.dir);
        s.cached_partitions = v.values.len();
        s.overlay_entries = v.entries.len();
        s.overlay_bits = v
            .entries
            .iter()
            .map(|e| e.bits.as_ref().map_or(0, |b| b.len() as u64))
            .sum();
        s
    })
}

fn dir_bytes(dir: &HashMap<String, PeerRoute>) -> usize {
    dir.len() * 512
}

/// Sets an entry's bits in a value's matching sections.
fn apply_entry(value: &mut RoutingValue, e: &Entry) {
    let Some(bits) = &e.bits else { return };
    for s in value
        .sections
        .iter_mut()
        .filter(|s| s.peer == e.peer && s.version == e.version)
    {
        match s.shape {
            Shape::Range { first, len } => {
                let lo = bits.partition_point(|&b| b < first);
                let hi = bits.partition_point(|&b| b < first + len);
                if let Some(range) = bits.get(lo..hi) {
                    s.set_all(range);
                }
            }
            Shape::Stride { .. } => {
                s.set_all(bits);
            }
        }
    }
}

impl View {
    fn reset_values(&mut self) {
        self.values.clear();
        self.value_bytes = 0;
    }

    fn budget(&self, cfg: &GpConfig) -> usize {
        (cfg.routing_cache_mb as usize) << 20
    }

    fn note_peak(&mut self) {
        let now = self.entry_bytes + self.value_bytes + dir_bytes(&self.dir);
        self.stats.bytes_peak = self.stats.bytes_peak.max(now);
    }

    /// Takes a poll's answer.
    fn take(&mut self, reply: TableReply) -> Result<(), String> {
        let TableReply::View {
            oseq,
            floor,
            reset,
            dir_version,
            dir,
            entries,
            ..
        } = reply
        else {
            return Err("route table answered a view with something else".into());
        };
        if reset {
            self.stats.resets += 1;
            self.entries.clear();
            self.entry_bytes = 0;
            self.reset_values();
            self.oseq = 0;
        }
        while self.entries.front().is_some_and(|e| e.o <= floor) {
            if let Some(e) = self.entries.pop_front() {
                self.entry_bytes -= entry_bytes(&e);
                if e.bits.is_none() {
                    // A wildcard's additions are in KV now, but maybe not
                    // in partitions cached before: read them again.
                    self.stats.switches += 1;
                    self.reset_values();
                }
            }
        }
        for w in entries {
            if w.o <= self.oseq {
                continue;
            }
            let bits = match &w.additions {
                Some(b64) => {
                    let bytes = b64_decode(b64).map_err(|e| format!("overlay entry: {e}"))?;
                    let batch =
                        decode_additions(&bytes).map_err(|e| format!("overlay entry: {e}"))?;
                    Some(Rc::new(batch.indices))
                }
                None => None,
            };
            let e = Entry {
                o: w.o,
                peer: w.peer,
                version: w.version,
                bits,
            };
            for c in self.values.values() {
                apply_entry(&mut c.value.borrow_mut(), &e);
            }
            self.entry_bytes += entry_bytes(&e);
            self.entries.push_back(e);
        }
        self.oseq = oseq.max(self.oseq);
        if let Some(list) = dir {
            let moved = list.iter().any(|p| {
                self.dir
                    .get(&p.peer)
                    .is_some_and(|old| old.version != p.version)
            });
            if moved {
                // A peer switched versions: cached sections are of the old one.
                self.stats.switches += 1;
                self.reset_values();
            }
            self.dir = list.into_iter().map(|p| (p.peer.clone(), p)).collect();
        }
        self.dir_version = dir_version;
        self.note_peak();
        Ok(())
    }

    /// Keeps a partition (and `keep`, another one this query needs),
    /// evicting the least recently used others down to the budget.
    fn insert(
        &mut self,
        cfg: &GpConfig,
        p: u32,
        keep: Option<u32>,
        mut value: RoutingValue,
    ) -> Rc<RefCell<RoutingValue>> {
        for e in &self.entries {
            apply_entry(&mut value, e);
        }
        let bytes = value.heap_bytes();
        if let Some(old) = self.values.remove(&p) {
            self.value_bytes -= old.bytes;
        }
        // Room first, then the new value: the state never passes the
        // budget on the way (only when `keep` and this value alone do:
        // the capacity check's over-cache).
        let budget = self
            .budget(cfg)
            .saturating_sub(self.entry_bytes + dir_bytes(&self.dir));
        while self.value_bytes + bytes > budget {
            let Some((&victim, _)) = self
                .values
                .iter()
                .filter(|(&k, _)| Some(k) != keep)
                .min_by_key(|(_, c)| c.used)
            else {
                break;
            };
            if let Some(c) = self.values.remove(&victim) {
                self.value_bytes -= c.bytes;
            }
        }
        self.tick += 1;
        let used = self.tick;
        let value = Rc::new(RefCell::new(value));
        let shared = value.clone();
        self.values.insert(
            p,
            Cached {
                value,
                bytes,
                used,
                read_ms: now_ms(),
            },
        );
        self.value_bytes += bytes;
        self.note_peak();
        shared
    }
}

fn entry_bytes(e: &Entry) -> usize {
    e.bits.as_ref().map_or(0, |b| b.len() * 8) + e.peer.len() + 64
}

/// Polls the route table if the view is a second old (one poll in flight
/// per isolate).
async fn refresh(env: &Env, cfg: &GpConfig) {
    let now = now_ms();
    let (after, dir_version) = match VIEW.with(|v| {
        let mut v = v.borrow_mut();
        let config = (cfg.routing_partition_bits, cfg.routing_shards);
        if v.config != config {
            *v = View {
                config,
                ..View::default()
            };
        }
        // Until a first poll has answered, every query polls.
        let fresh = v.ok_ms > 0 && (v.polling || now.saturating_sub(v.polled_ms) < POLL_MS);
        if fresh {
            return None;
        }
        v.polling = true;
        v.polled_ms = now;
        Some((v.oseq, v.dir_version))
    }) {
        Some(x) => x,
        None => return,
    };
    let reply = TableClient::new(env, cfg)
        .call(&TableOp::View { after, dir_version })
        .await;
    VIEW.with(|v| {
        let mut v = v.borrow_mut();
        v.polling = false;
        v.stats.polls += 1;
        let taken = match reply {
            Ok(r) => v.take(r),
            Err(e) => Err(format!("{e:?}")),
        };
        match taken {
            Ok(()) => {
                v.ok_ms = now;
                v.last_error = None;
            }
            Err(e) => {
                v.stats.poll_errors += 1;
                worker::console_error!("routing view: {e}");
                v.last_error = Some(e);
            }
        }
    });
}

/// A routing partition a query reads.
type Part = Result<Rc<RefCell<RoutingValue>>, String>;

/// Routing partition `p`: from the LRU, or read from KV (not evicting `keep`).
async fn partition(env: &Env, cfg: &GpConfig, p: u32, keep: Option<u32>) -> Part {
    let hit = VIEW.with(|v| {
        let mut v = v.borrow_mut();
        v.tick += 1;
        let t = v.tick;
        let hit = v.values.get_mut(&p).map(|c| {
            c.used = t;
            c.value.clone()
        });
        if hit.is_some() {
            v.stats.partition_hits += 1;
        }
        hit
    });
    if let Some(value) = hit {
        return Ok(value);
    }
    let r = cfg.routing_partition_bits;
    let bytes = kv::get(env, &value_key(r, p))
        .await
        .map_err(|e| format!("{e:?}"))?;
    let value = match bytes {
        Some(b) => RoutingValue::decode(&b).map_err(|e| format!("routing partition {p}: {e}"))?,
        // Never written: no peer has a section yet.
        None => RoutingValue {
            r,
            p,
            written_ms: 0,
            sections: Vec::new(),
        },
    };
    if value.r != r || value.p != p {
        return Err(format!("routing partition {p} holds partition {}", value.p));
    }
    Ok(VIEW.with(|v| {
        let mut v = v.borrow_mut();
        v.stats.partition_reads += 1;
        v.insert(cfg, p, keep, value)
    }))
}

/// What the routing table says about every configured peer for the SII
/// with this digest, in `cfg.peers` order. No Durable Object request on
/// the query's path but the view's poll (at most one a second); at most
/// one KV read (two when some peer uses the draft's low-bits filter).
pub async fn verdicts(env: &Env, cfg: &GpConfig, digest: &[u8; 32]) -> Vec<Verdict> {
    let r = cfg.routing_partition_bits;
    // Some peer uses the draft's low-bits filter (known once polled).
    let residue_needed = || {
        VIEW.with(|v| {
            v.borrow().dir.values().any(|p| {
                p.params
                    .as_ref()
                    .is_some_and(|d| d.hash == HashScheme::Sha256Low.name())
            })
        })
    };
    let prefix_p = key_of(digest, r, Keying::Prefix);
    let residue_p = key_of(digest, r, Keying::Residue);
    // A poll that empties the cache (a peer switched versions, or the
    // overlay moved past this isolate) while a partition is read leaves
    // that partition without the poll's entries: read it again.
    let resets = || VIEW.with(|v| v.borrow().stats.resets + v.borrow().stats.switches);
    let mut prefix: Part = Err("not read".into());
    let mut residue: Option<Part> = None;
    for _ in 0..2 {
        let before = resets();
        let (_, got) =
            futures_util::future::join(refresh(env, cfg), partition(env, cfg, prefix_p, None))
                .await;
        prefix = got;
        residue = if residue_needed() {
            Some(partition(env, cfg, residue_p, Some(prefix_p)).await)
        } else {
            None
        };
        if resets() == before {
            break;
        }
    }
    let now = now_ms();
    // Partitions read before KV had a peer's new copy: read again by a
    // later query (at most once a second each), not kept until evicted.
    let behind: RefCell<Vec<u32>> = RefCell::new(Vec::new());
    let out = VIEW.with(|v| {
        let v = v.borrow();
        let stale = now.saturating_sub(v.ok_ms) > VIEW_TRUST_MS;
        cfg.peers
            .iter()
            .map(|peer| {
                if stale {
                    return Verdict::Unreadable(format!(
                        "routing overlay not read for {} s: {}",
                        now.saturating_sub(v.ok_ms) / 1000,
                        v.last_error.as_deref().unwrap_or("no answer yet")
                    ));
                }
                let Some(state) = v.dir.get(&peer.id) else {
                    return Verdict::Ask("no filter copy of this peer yet".into());
                };
                let Some(version) = state.version else {
                    let why = match &state.sync {
                        Some(s) => format!(
                            "no filter copy of this peer yet (downloading v{}: {}/{} partitions)",
                            s.version, s.done, s.partitions
                        ),
                        None => format!(
                            "no filter copy of this peer yet ({})",
                            state.last_error.as_deref().unwrap_or(&state.status)
                        ),
                    };
                    return Verdict::Ask(why);
                };
                if state.status == "switching" {
                    return Verdict::Ask("a new filter version of this peer is being activated".into());
                }
                if state.status == "rotating" {
                    return Verdict::Ask(
                        "this peer started a new filter version; this GP is downloading it".into(),
                    );
                }
                if v
                    .entries
                    .iter()
                    .any(|e| e.bits.is_none() && e.peer == peer.id && e.version == version)
                {
                    return Verdict::Ask(
                        "a bulk of this peer's additions is still reaching the routing table".into(),
                    );
                }
                let Some(params) = state.params.as_ref().and_then(|d| d.params().ok()) else {
                    return Verdict::Unreadable("this peer's filter parameters are unreadable".into());
                };
                let (p, read) = match keying(&params) {
                    Keying::Prefix => (prefix_p, &prefix),
                    Keying::Residue => match &residue {
                        Some(r) => (residue_p, r),
                        None => {
                            return Verdict::Unreadable(
                                "the low-bits routing partition was not read".into(),
                            )
                        }
                    },
                };
                let value = match read {
                    Ok(value) => value.borrow(),
                    Err(e) => {
                        return Verdict::Unreadable(format!("routing partition unreadable: {e}"))
                    }
                };
                let Some(section) = value.sections.iter().find(|s| s.peer == peer.id) else {
                    behind.borrow_mut().push(p);
                    if now.saturating_sub(state.activated_ms) < kv::STALE_MS {
                        return Verdict::Ask("this peer's filter copy is still reaching KV".into());
                    }
                    return Verdict::Unreadable(format!(
                        "routing partition {p} has no section for this peer"
                    ));
                };
                if section.version < version {
                    behind.borrow_mut().push(p);
                    return Verdict::Ask(format!(
                        "routing partition {p} still holds v{} of this peer's filter (copy at v{version})",
                        section.version
                    ));
                }
                match section.may_hold(digest) {
                    Some(true) => Verdict::Maybe,
                    Some(false) => Verdict::No,
                    None => Verdict::Unreadable(format!(
                        "routing partition {p} does not cover this SII for this peer"
                    )),
                }
            })
            .collect()
    });
    let behind = behind.into_inner();
    if !behind.is_empty() {
        VIEW.with(|v| {
            let mut v = v.borrow_mut();
            for p in behind {
                if v.values
                    .get(&p)
                    .is_some_and(|c| now.saturating_sub(c.read_ms) >= POLL_MS)
                {
                    if let Some(c) = v.values.remove(&p) {
                        v.value_bytes -= c.bytes;
                    }
                }
            }
        });
    }
    out
}

/// The routing table's capacity check (`/v1/gp`, the cron): about how big
/// one routing value is with every peer's copy as it stands
/// ([`value_bytes_estimate`](crate::core::routing::value_bytes_estimate);
/// a peer still being downloaded counts at its dense size), and `ok`,
/// `over-kv` (a value passes KV's 25 MiB: it cannot be written),
/// `over-row` (a peer's section passes what a routing shard's SQLite row
/// holds: that copy cannot be stored) or `over-cache` (the isolate's
/// `ROUTING_CACHE_MB` cannot hold the two values a query may keep: its
/// routing state passes the budget). Each is fixed by a larger
/// `ROUTING_PARTITION_BITS`.
pub fn capacity(cfg: &GpConfig, dir: &[PeerRoute]) -> (u64, &'static str) {
    let r = cfg.routing_partition_bits;
    let peers: Vec<(u64, u64)> = dir
        .iter()
        .filter_map(|d| match (&d.params, d.version, &d.sync) {
            (Some(p), Some(_), _) => Some((p.bits, d.bits_set)),
            (_, None, Some(s)) if s.bits > 0 => Some((s.bits, s.bits)),
            (Some(p), None, _) => Some((p.bits, p.bits)),
            _ => None,
        })
        .collect();
    let bytes = crate::core::routing::value_bytes_estimate(peers.iter().copied(), r);
    let section_max = peers
        .iter()
        .map(|&(bits, set)| crate::core::routing::section_bytes_estimate(bits, set, r))
        .max()
        .unwrap_or(0);
    let budget = (u64::from(cfg.routing_cache_mb)) << 20;
    let verdict = if bytes > kv::MAX_VALUE_BYTES as u64 {
        "over-kv"
    } else if section_max > crate::edge::objects::routing_shard::MAX_SECTION_BYTES as u64 {
        "over-row"
    } else if bytes > budget / 2 {
        "over-cache"
    } else {
        "ok"
    };
    (bytes, verdict)
}

/// Every configured peer's routing state, read now from the route table
/// (one Durable Object request): `/v1/gp`, the debug routes.
pub async fn directory(env: &Env, cfg: &GpConfig) -> ApiResult<Vec<PeerRoute>> {
    let op = TableOp::View {
        after: u64::MAX,
        dir_version: u64::MAX,
    };
    let dir = match TableClient::new(env, cfg).call(&op).await? {
        TableReply::View { dir, .. } => dir.unwrap_or_default(),
        other => {
            return Err(ApiError::Internal(format!(
                "route table answered a view with {other:?}"
            )))
        }
    };
    let mut by_id: HashMap<String, PeerRoute> =
        dir.into_iter().map(|p| (p.peer.clone(), p)).collect();
    Ok(cfg
        .peers
        .iter()
        .map(|p| {
            by_id.remove(&p.id).unwrap_or_else(|| PeerRoute {
                peer: p.id.clone(),
                status: "never".into(),
                ..PeerRoute::default()
            })
        })
        .collect())
}
