//! The peer API: signed GP-to-GP requests (draft §9, §10, §8.2.1).

pub mod claims;
pub mod filter;
pub mod preferred;
pub mod query;
pub mod strikes;

use crate::edge::http::error::{ApiError, ApiResult};
use serde::de::DeserializeOwned;

/// Parses a signed peer message's JSON body; a 400 `slug` naming `what`.
fn parse<T: DeserializeOwned>(
    body: &[u8],
    slug: &'static str,
    title: &'static str,
    what: &str,
) -> ApiResult<T> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::client(
            400,
            slug,
            title,
            format!("the {what} was not understood: {e}"),
        )
    })
}
