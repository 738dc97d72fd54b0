//! Webhook delivery to an AP's receiver (Standard Webhooks).

use crate::core::outbox::delivered;
use crate::core::webhook::{self};
use worker::{AbortSignal, Fetch, Headers, Method, Request, RequestInit};

/// How long one webhook delivery may take.
const WEBHOOK_TIMEOUT_MS: u32 = 5_000;

pub async fn post_webhook(url: &str, key: &[u8], id: &str, body: &str) -> Result<(), String> {
    let ts = crate::edge::clock::now_ms() / 1000;
    let headers = Headers::new();
    for (k, v) in webhook::headers(key, id, ts, body.as_bytes()) {
        headers.set(k, &v).map_err(|e| e.to_string())?;
    }
    headers
        .set("Content-Type", "application/json")
        .map_err(|e| e.to_string())?;
    let mut init = RequestInit::new();
    init.with_method(Method::Post)
        .with_headers(headers)
        .with_body(Some(wasm_bindgen::JsValue::from_str(body)));
    let req = Request::new_with_init(url, &init).map_err(|e| format!("bad url: {e}"))?;
    let signal: AbortSignal = web_sys::AbortSignal::timeout_with_u32(WEBHOOK_TIMEOUT_MS).into();
    let resp = Fetch::Request(req)
        .send_with_signal(&signal)
        .await
        .map_err(|e| format!("fetch: {e}"))?;
    let status = resp.status_code();
    if delivered(status) {
        Ok(())
    } else {
        Err(format!("HTTP {status}"))
    }
}
