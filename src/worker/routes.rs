//! Request routing: path → handler, with 404/405 answered as problems.

use super::config::GpConfig;
use super::error::{ApiError, ApiResult, OrInternal};
use super::{filter_object, peers};
use serde_json::json;
use worker::{Env, Method, Request, Response};

/// The routes this GP serves; also the list checked against `/openapi.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Healthz,
    GpInfo,
    Peers,
    DebugPanic,
}

/// Finds the route for a path, with the methods it accepts.
fn resolve(path: &str, cfg: &GpConfig) -> Option<(Route, &'static [Method])> {
    const GET: &[Method] = &[Method::Get];
    match path {
        "/healthz" => Some((Route::Healthz, GET)),
        "/v1/gp" => Some((Route::GpInfo, GET)),
        "/v1/peers" => Some((Route::Peers, GET)),
        // A deliberate panic, so the suite can prove a panicking handler
        // does not break later requests. Only with DEBUG_ROUTES set.
        "/__debug/panic" if cfg.debug_routes => Some((Route::DebugPanic, GET)),
        _ => None,
    }
}

/// Handles one API request.
pub async fn handle(req: Request, env: &Env, cfg: &GpConfig) -> ApiResult<Response> {
    let url = req.url().internal("request url")?;
    let path = url.path();
    let Some((route, methods)) = resolve(path, cfg) else {
        return Err(ApiError::not_found(path));
    };
    let method = req.method();
    if !methods.contains(&method) {
        let allow: Vec<&str> = methods.iter().map(|m| m.as_ref()).collect();
        return Err(ApiError::method_not_allowed(method.as_ref(), path, &allow));
    }
    match route {
        Route::Healthz => json_ok(&json!({ "status": "ok", "gp": cfg.id })),
        Route::GpInfo => {
            let filter = filter_object::current_info(env).await?;
            json_ok(&json!({
                "id": cfg.id,
                "name": cfg.name,
                "software": {
                    "name": env!("CARGO_PKG_NAME"),
                    "version": env!("CARGO_PKG_VERSION"),
                },
                "protocol": "draft-rosenberg-mimi-glados-00",
                "filter": filter,
                "peers": cfg.peers.iter().map(|p| &p.id).collect::<Vec<_>>(),
            }))
        }
        Route::Peers => {
            let report = peers::probe_all(cfg).await;
            json_ok(&json!({ "gp": cfg.id, "peers": report }))
        }
        Route::DebugPanic => {
            #[allow(clippy::panic)]
            {
                panic!("deliberate panic from /__debug/panic");
            }
        }
    }
}

/// A 200 JSON response.
pub fn json_ok(body: &serde_json::Value) -> ApiResult<Response> {
    let mut resp = Response::from_json(body).internal("serialize response")?;
    resp.headers_mut()
        .set("Cache-Control", "no-store")
        .internal("set header")?;
    Ok(resp)
}
