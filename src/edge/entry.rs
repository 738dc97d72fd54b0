//! Where the runtime enters: every HTTP request (`fetch`) and every cron
//! tick (`scheduled`). Whatever happens, the client gets a response.
use crate::edge::rpc::filter::FilterClient;

use super::config;
use super::http::{body, error, respond, routes};
use worker::{event, Context, Env, Request, ScheduleContext, ScheduledEvent};

/// Every request enters here; whatever happens, the client gets a response
/// (a problem document on failure), never an exception.
#[event(fetch)]
async fn fetch(req: Request, env: Env, _ctx: Context) -> worker::Result<web_sys::Response> {
    let path = req.path();
    // The same JS request (a second handle, not Request.clone(), which
    // would tee the body): whatever the handler leaves of its body is
    // drained before the response goes out.
    let raw = Clone::clone(req.inner());
    let result = match config::GpConfig::cached(&env) {
        Ok(cfg) => routes::handle(req, &path, &env, &cfg).await,
        Err(e) => Err(e),
    };
    let resp = match result {
        Ok(resp) => error::own_instance(resp, &path).await,
        Err(e) => e.into_response(&path)?,
    };
    Ok(respond::into_js(body::finish_request(&raw, resp).await))
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
