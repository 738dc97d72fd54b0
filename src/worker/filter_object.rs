//! The GP's own routing filter, held by one SQLite-backed Durable Object.
//!
//! draft §9: "Each bloom filter has a timestamp, corresponding to the time of
//! creation on the GP" and filters "are versioned". The object keeps the
//! current version's header and bits (in chunks: a DO row holds at most
//! 2 MB) so the filter survives restarts and evictions.

use super::error::{ApiError, ApiResult, OrInternal};
use crate::core::filter::{Filter, FilterHeader, FilterParams, HashScheme, Layout};
use serde::Deserialize;
use serde_json::{json, Value};
use std::cell::RefCell;
use worker::{durable_object, Date, Env, Request, Response, SqlStorage, State};

/// Size of one stored chunk of the serialized filter (below the 2 MB row cap).
const CHUNK_BYTES: usize = 1 << 20;

/// Durable Object holding the GP's own filter (one per GP, named "own").
#[durable_object]
pub struct FilterObject {
    state: State,
    env: Env,
    /// The current filter, loaded lazily from SQLite.
    filter: RefCell<Option<Filter>>,
}

impl worker::DurableObject for FilterObject {
    fn new(state: State, env: Env) -> Self {
        FilterObject {
            state,
            env,
            filter: RefCell::new(None),
        }
    }

    async fn fetch(&self, req: Request) -> worker::Result<Response> {
        let path = req.path();
        let result = match path.as_str() {
            "/info" => self.info().map(|v| Response::from_json(&v)),
            _ => Err(ApiError::not_found(&path)),
        };
        match result {
            Ok(resp) => resp,
            Err(e) => e.into_response(&path),
        }
    }
}

impl FilterObject {
    fn sql(&self) -> SqlStorage {
        self.state.storage().sql()
    }

    fn ensure_schema(&self) -> ApiResult<()> {
        self.sql()
            .exec(
                "CREATE TABLE IF NOT EXISTS filter_version (
                    version INTEGER PRIMARY KEY,
                    created_at_ms INTEGER NOT NULL,
                    current INTEGER NOT NULL DEFAULT 1
                 );
                 CREATE TABLE IF NOT EXISTS filter_chunk (
                    version INTEGER NOT NULL,
                    idx INTEGER NOT NULL,
                    bytes BLOB NOT NULL,
                    PRIMARY KEY (version, idx)
                 );",
                None,
            )
            .internal("filter schema")?;
        Ok(())
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
        // mappings are authoritative), so start a fresh version instead of
        // failing every request; the rebuild repopulates it.
        let filter = match Filter::from_bytes(&bytes) {
            Ok(filter) => filter,
            Err(e) => {
                worker::console_error!(
                    "stored filter v{} cannot be read ({e}); starting v{}",
                    row.version,
                    row.version + 1
                );
                return self
                    .create_version(row.version.saturating_add(1) as u64)
                    .map(Some);
            }
        };
        Ok(Some(filter))
    }

    /// Creates and stores an empty filter version sized from the config.
    fn create_version(&self, version: u64) -> ApiResult<Filter> {
        let cfg = super::config::GpConfig::from_env(&self.env)?;
        let n = cfg.filter_expected_siis;
        let fp = cfg.filter_fp_rate;
        let params = match cfg.filter_layout.as_str() {
            // draft §9 interop: one bit per SII from "the lowest N bits".
            "draft" => FilterParams::draft_for_capacity(n, fp),
            "plain" => FilterParams::for_capacity(n, fp, Layout::Plain),
            _ => FilterParams::for_capacity(n, fp, Layout::Blocked512),
        }
        .map_err(|e| ApiError::Internal(format!("filter config: {e}")))?;
        let now = Date::now().as_millis();
        let header = FilterHeader {
            version,
            created_at_ms: now,
            params,
        };
        let filter = Filter::new(header).map_err(|e| ApiError::Internal(format!("filter: {e}")))?;
        self.store_version(&filter)?;
        Ok(filter)
    }

    fn store_version(&self, filter: &Filter) -> ApiResult<()> {
        let bytes = filter.to_bytes();
        let version = filter.header().version as i64;
        let created = filter.header().created_at_ms as i64;
        let sql = self.sql();
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
        self.with_filter(filter_info)
    }
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

/// Asks the GP's filter object for its current filter's description.
pub async fn current_info(env: &Env) -> ApiResult<Value> {
    let stub = env
        .durable_object("FILTER")
        .internal("FILTER binding")?
        .id_from_name("own")
        .internal("filter object id")?
        .get_stub()
        .internal("filter object stub")?;
    let mut resp = stub
        .fetch_with_str("https://filter-object/info")
        .await
        .internal("filter object fetch")?;
    if resp.status_code() != 200 {
        let text = resp.text().await.unwrap_or_default();
        return Err(ApiError::Internal(format!(
            "filter object answered {}: {text}",
            resp.status_code()
        )));
    }
    resp.json::<Value>().await.internal("filter object body")
}
