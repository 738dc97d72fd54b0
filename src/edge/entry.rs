//! Where the runtime enters: every HTTP request (`Entry::fetch`) and every
//! cron tick (`scheduled`). Whatever happens, the client gets a response.
use crate::edge::rpc::filter::FilterClient;

use super::config;
use super::http::request::Request;
use super::http::{body, error, respond, routes};
use wasm_bindgen::prelude::wasm_bindgen;
use wasm_bindgen::JsValue;
use worker::{event, Env, ScheduleContext, ScheduledEvent};

/// The fetch entry: the worker's JS module (written by
/// `scripts/rpc-entry.mjs`) calls `Entry.fetch(request, env)` for every
/// HTTP request. Not workers-rs's `#[event(fetch)]`, whose glue reads
/// `request.cf` and wraps the worker object and each call in JS proxies
/// before any handler runs (ARCHITECTURE.md, "The entry").
#[wasm_bindgen]
pub struct Entry;

#[wasm_bindgen(wasm_bindgen_futures = ::worker::wasm_bindgen_futures)]
impl Entry {
    /// Every request enters here; whatever happens, the client gets a
    /// response (a problem document on failure), never an exception.
    pub async fn fetch(raw: web_sys::Request, env: Env) -> Result<web_sys::Response, JsValue> {
        // A second handle on the same JS request (not Request.clone(),
        // which would tee the body): whatever the handler leaves of its
        // body is drained before the response goes out.
        let req = Request::from(Clone::clone(&raw));
        let path = req.path();
        let result = match config::GpConfig::cached(&env) {
            Ok(cfg) => routes::handle(req, &path, &env, &cfg).await,
            Err(e) => Err(e),
        };
        let resp = match result {
            Ok(resp) => error::own_instance(resp, &path).await,
            Err(e) => e.respond(&path),
        };
        Ok(respond::into_js(body::finish_request(&raw, resp).await))
    }
}

/// Cron trigger (wrangler.toml `[triggers]`, every 15 min): makes sure the
/// GP's filter object exists (a fresh deployment has a filter to publish),
/// rebuilds the filter when it is older than `FILTER_REBUILD_HOURS` (draft
/// §9: "On a periodic basis, every night or every week perhaps, the GP
/// constructs a fresh bloom filter from its mappings") and resubscribes to
/// every peer from its cursor (`routing::sync::cron`).
#[event(scheduled)]
async fn scheduled(event: ScheduledEvent, env: Env, _ctx: ScheduleContext) {
    match FilterClient::new(&env).info().await {
        Ok(info) => worker::console_log!("cron {}: filter {}", event.cron(), info),
        Err(e) => worker::console_error!("cron {}: filter check failed: {:?}", event.cron(), e),
    }
    // draft §9: periodic rebuild, and catching up with every peer's
    // additions after this GP was down.
    match config::GpConfig::cached(&env) {
        Ok(cfg) => crate::edge::routing::sync::cron(&env, &cfg).await,
        Err(e) => worker::console_error!("cron {}: config: {:?}", event.cron(), e),
    }
}
