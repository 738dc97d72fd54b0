//! Durable Objects, one module each: what the GP stores and serializes.
//! They reach each other only through the typed clients in `rpc`.

pub mod ap;
pub mod filter;
pub mod nonces;
pub mod peer_copy;
pub mod registry;
pub mod route_table;
pub mod routing_shard;
pub mod shard;

use crate::edge::http::error::{ApiError, ApiResult, OrInternal};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::cell::Cell;
use worker::SqlStorage;

/// An object's SQL tables (`CREATE … IF NOT EXISTS` statements), created
/// once per object instance: run before every operation, they were a
/// measurable share of a shard lookup (README, Benchmarks).
pub struct Schema {
    what: &'static str,
    statements: &'static str,
    ready: Cell<bool>,
}

impl Schema {
    pub const fn new(what: &'static str, statements: &'static str) -> Self {
        Schema {
            what,
            statements,
            ready: Cell::new(false),
        }
    }

    /// Creates the tables unless this instance already did.
    pub fn ensure(&self, sql: &SqlStorage) -> ApiResult<()> {
        if !self.ready.get() {
            sql.exec(self.statements, None).internal(self.what)?;
            self.ready.set(true);
        }
        Ok(())
    }
}

/// Encodes a value for a SQLite row: JSON, so adding a field needs no SQL
/// migration.
pub fn enc<T: Serialize>(v: &T) -> ApiResult<String> {
    serde_json::to_string(v).map_err(|e| ApiError::Internal(format!("encode: {e}")))
}

/// Decodes a value [`enc`] stored.
pub fn dec<T: DeserializeOwned>(s: &str) -> ApiResult<T> {
    serde_json::from_str(s).map_err(|e| ApiError::Internal(format!("stored row is corrupt: {e}")))
}
