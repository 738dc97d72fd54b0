//! JSON responses of the API.

use crate::edge::http::error::{ApiResult, OrInternal};
use serde::Serialize;
use worker::{Response, ResponseBody};

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

/// The runtime's Response for `resp`, as `Entry::fetch` returns it. A
/// body that is UTF-8 text under a declared Content-Type (every JSON answer
/// and problem document) crosses as a JS string: worker's own conversion
/// copies the bytes into a fresh `Uint8Array`, and V8 allocates a typed
/// array of more than 64 bytes outside its heap (~25 µs per local hit's
/// answer in a V8 profile; README, Benchmarks). Bytes and headers stay
/// exactly the same; any other body takes worker's conversion.
pub fn into_js(resp: Response) -> web_sys::Response {
    if let ResponseBody::Body(bytes) = resp.body() {
        let typed = resp.headers().0.has("Content-Type").unwrap_or(false);
        if let (true, Ok(text)) = (typed, std::str::from_utf8(bytes)) {
            let init = web_sys::ResponseInit::new();
            init.set_status(resp.status_code());
            init.set_headers(&resp.headers().0);
            if let Ok(js) = web_sys::Response::new_with_opt_str_and_init(Some(text), &init) {
                return js;
            }
        }
    }
    resp.into()
}
