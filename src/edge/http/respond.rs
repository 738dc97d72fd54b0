//! JSON responses of the API.

use crate::edge::http::error::{ApiResult, OrInternal};
use serde::Serialize;
use worker::Response;

/// A 200 JSON response.
pub fn json_ok<T: Serialize>(body: &T) -> ApiResult<Response> {
    json_status(body, 200)
}

/// A JSON response with `status`; API answers are never cached.
pub fn json_status<T: Serialize>(body: &T, status: u16) -> ApiResult<Response> {
    let mut resp = Response::from_json(body)
        .internal("serialize response")?
        .with_status(status);
    resp.headers_mut()
        .set("Cache-Control", "no-store")
        .internal("set header")?;
    Ok(resp)
}
