//! Durable Objects, one module each: what the GP stores and serializes.
//! They reach each other only through the typed clients in `rpc`.

pub mod ap;
pub mod filter;
pub mod nonces;
pub mod registry;
pub mod shard;

use crate::edge::http::error::{ApiError, ApiResult};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Encodes a value for a SQLite row: JSON, so adding a field needs no SQL
/// migration.
pub fn enc<T: Serialize>(v: &T) -> ApiResult<String> {
    serde_json::to_string(v).map_err(|e| ApiError::Internal(format!("encode: {e}")))
}

/// Decodes a value [`enc`] stored.
pub fn dec<T: DeserializeOwned>(s: &str) -> ApiResult<T> {
    serde_json::from_str(s).map_err(|e| ApiError::Internal(format!("stored row is corrupt: {e}")))
}
