//! Request routing: path → handler, with 404/405 answered as problems.
//!
//! [`ROUTES`] is the one route table: the router matches against it, and
//! `GET /__debug/routes` serves it so the end-to-end suite can check that
//! every route is documented in `/openapi.json` (and nothing else is).

use crate::core::ratelimit::allowed_rate;
use crate::edge::api::ap::mappings;
use crate::edge::api::ap::mappings::Action;
use crate::edge::api::ap::oauth;
use crate::edge::api::ap::query;
use crate::edge::api::operator::aps as admin;
use crate::edge::api::public::filter as public_filter;
use crate::edge::auth::ap as auth;
use crate::edge::config::GpConfig;
use crate::edge::http::error::{ApiError, ApiResult, OrInternal};
use crate::edge::objects::filter as filter_object;
use crate::edge::outbound::probe as peers;
use crate::edge::routing::copies as federation;
use serde_json::json;
use worker::{Env, Method, Request, Response};

/// Everything the GP serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Healthz,
    GpInfo,
    Peers,
    OpenApi,
    OAuthToken,
    Me,
    AdminAps,
    AdminAp,
    AdminApSuspend,
    AdminApReinstate,
    AdminApRotate,
    AdminApAnalytics,
    AdminApWebhookReplay,
    MappingCreate,
    Verification,
    MappingChoice,
    MappingReestablish,
    MappingPreferBack,
    MappingReport,
    MappingDelete,
    MappingMine,
    MappingBulk,
    Query,
    PeerQuery,
    PeerClaims,
    PeerStrikes,
    DebugQueryStats,
    PublicFilter,
    PeerFilter,
    PeerFilterAdditions,
    PeerFilterSubscriptions,
    PeerFilterUpdates,
    AdminFilterRebuild,
    DebugFilterInsert,
    DebugPeerFilters,
    DebugPanic,
    DebugRoutes,
}

/// One row of the route table: an OpenAPI-style path template (`{id}`
/// matches one non-empty segment), the route, its methods, and whether it
/// exists only with DEBUG_ROUTES.
struct RouteDef {
    template: &'static str,
    route: Route,
    methods: &'static [Method],
    debug_only: bool,
}

const GET: &[Method] = &[Method::Get];
const POST: &[Method] = &[Method::Post];

const ROUTES: &[RouteDef] = &[
    RouteDef {
        template: "/healthz",
        route: Route::Healthz,
        methods: GET,
        debug_only: false,
    },
    RouteDef {
        template: "/v1/gp",
        route: Route::GpInfo,
        methods: GET,
        debug_only: false,
    },
    RouteDef {
        template: "/v1/peers",
        route: Route::Peers,
        methods: GET,
        debug_only: false,
    },
    RouteDef {
        template: "/openapi.json",
        route: Route::OpenApi,
        methods: GET,
        debug_only: false,
    },
    RouteDef {
        template: "/oauth/token",
        route: Route::OAuthToken,
        methods: POST,
        debug_only: false,
    },
    RouteDef {
        template: "/v1/me",
        route: Route::Me,
        methods: GET,
        debug_only: false,
    },
    RouteDef {
        template: "/admin/v1/aps",
        route: Route::AdminAps,
        methods: &[Method::Get, Method::Post],
        debug_only: false,
    },
    RouteDef {
        template: "/admin/v1/aps/{id}",
        route: Route::AdminAp,
        methods: &[Method::Get, Method::Patch],
        debug_only: false,
    },
    RouteDef {
        template: "/admin/v1/aps/{id}/suspend",
        route: Route::AdminApSuspend,
        methods: POST,
        debug_only: false,
    },
    RouteDef {
        template: "/admin/v1/aps/{id}/reinstate",
        route: Route::AdminApReinstate,
        methods: POST,
        debug_only: false,
    },
    RouteDef {
        template: "/admin/v1/aps/{id}/rotate-secret",
        route: Route::AdminApRotate,
        methods: POST,
        debug_only: false,
    },
    RouteDef {
        template: "/admin/v1/aps/{id}/analytics",
        route: Route::AdminApAnalytics,
        methods: GET,
        debug_only: false,
    },
    RouteDef {
        template: "/admin/v1/aps/{id}/webhooks/replay",
        route: Route::AdminApWebhookReplay,
        methods: POST,
        debug_only: false,
    },
    RouteDef {
        template: "/v1/mappings",
        route: Route::MappingCreate,
        methods: POST,
        debug_only: false,
    },
    RouteDef {
        template: "/v1/verifications/{handle}",
        route: Route::Verification,
        methods: POST,
        debug_only: false,
    },
    RouteDef {
        template: "/v1/mappings/choice",
        route: Route::MappingChoice,
        methods: POST,
        debug_only: false,
    },
    RouteDef {
        template: "/v1/mappings/reestablish",
        route: Route::MappingReestablish,
        methods: POST,
        debug_only: false,
    },
    RouteDef {
        template: "/v1/mappings/prefer-back",
        route: Route::MappingPreferBack,
        methods: POST,
        debug_only: false,
    },
    RouteDef {
        template: "/v1/mappings/report",
        route: Route::MappingReport,
        methods: POST,
        debug_only: false,
    },
    RouteDef {
        template: "/v1/mappings/delete",
        route: Route::MappingDelete,
        methods: POST,
        debug_only: false,
    },
    RouteDef {
        template: "/v1/mappings/mine",
        route: Route::MappingMine,
        methods: POST,
        debug_only: false,
    },
    RouteDef {
        template: "/v1/mappings/bulk",
        route: Route::MappingBulk,
        methods: POST,
        debug_only: false,
    },
    // The filter inspector's public view; PUBLIC_FILTER decides how much.
    RouteDef {
        template: "/v1/filter",
        route: Route::PublicFilter,
        methods: GET,
        debug_only: false,
    },
    // draft §8.1 mapping query: one SII per request, AP-authenticated.
    RouteDef {
        template: "/v1/query",
        route: Route::Query,
        methods: POST,
        debug_only: false,
    },
    // draft §8.1: a peer GP's query, answered from local mappings only.
    RouteDef {
        template: "/peer/v1/query",
        route: Route::PeerQuery,
        methods: POST,
        debug_only: false,
    },
    // draft §10: a peer GP's "claimed" notice; signed peer requests only.
    RouteDef {
        template: "/peer/v1/claims",
        route: Route::PeerClaims,
        methods: POST,
        debug_only: false,
    },
    // draft §8.2.1: a peer GP forwards a strike against one of our APs.
    RouteDef {
        template: "/peer/v1/strikes",
        route: Route::PeerStrikes,
        methods: POST,
        debug_only: false,
    },
    // draft §9 GP-to-GP routing protocol; signed peer requests only.
    RouteDef {
        template: "/peer/v1/filter",
        route: Route::PeerFilter,
        methods: GET,
        debug_only: false,
    },
    RouteDef {
        template: "/peer/v1/filter/additions",
        route: Route::PeerFilterAdditions,
        methods: GET,
        debug_only: false,
    },
    RouteDef {
        template: "/peer/v1/filter/subscriptions",
        route: Route::PeerFilterSubscriptions,
        methods: POST,
        debug_only: false,
    },
    RouteDef {
        template: "/peer/v1/filter-updates",
        route: Route::PeerFilterUpdates,
        methods: POST,
        debug_only: false,
    },
    RouteDef {
        template: "/admin/v1/filter/rebuild",
        route: Route::AdminFilterRebuild,
        methods: POST,
        debug_only: false,
    },
    // Inserts SIIs into the own filter without the mapping flow, and shows
    // the copies of the peers' filters: tests of the routing protocol.
    RouteDef {
        template: "/__debug/filter/insert",
        route: Route::DebugFilterInsert,
        methods: POST,
        debug_only: true,
    },
    RouteDef {
        template: "/__debug/peer-filters",
        route: Route::DebugPeerFilters,
        methods: GET,
        debug_only: true,
    },
    // Query counters of this isolate (fan-outs, DO requests, peer queries).
    RouteDef {
        template: "/__debug/query-stats",
        route: Route::DebugQueryStats,
        methods: GET,
        debug_only: true,
    },
    // A deliberate panic, so the suite can prove a panicking handler does
    // not break later requests.
    RouteDef {
        template: "/__debug/panic",
        route: Route::DebugPanic,
        methods: GET,
        debug_only: true,
    },
    // The route table itself, for the OpenAPI completeness test.
    RouteDef {
        template: "/__debug/routes",
        route: Route::DebugRoutes,
        methods: GET,
        debug_only: true,
    },
];

/// The OpenAPI 3.1 description of the client and admin API.
const OPENAPI_JSON: &str = include_str!("openapi.json");

/// Matches `path` against a template; returns the `{…}` segment, if any.
fn match_template<'p>(template: &str, path: &'p str) -> Option<Option<&'p str>> {
    let mut param = None;
    let mut t = template.split('/');
    let mut p = path.split('/');
    loop {
        match (t.next(), p.next()) {
            (None, None) => return Some(param),
            (Some(ts), Some(ps)) if ts.starts_with('{') && ts.ends_with('}') => {
                if ps.is_empty() {
                    return None;
                }
                param = Some(ps);
            }
            (Some(ts), Some(ps)) if ts == ps => {}
            _ => return None,
        }
    }
}

/// Finds the route for a path, with the methods it accepts and its path
/// parameter.
fn resolve<'p>(path: &'p str, cfg: &GpConfig) -> Option<(&'static RouteDef, Option<&'p str>)> {
    ROUTES
        .iter()
        .filter(|r| !r.debug_only || cfg.debug_routes)
        .find_map(|r| match_template(r.template, path).map(|param| (r, param)))
}

/// Handles one API request.
pub async fn handle(req: Request, env: &Env, cfg: &GpConfig) -> ApiResult<Response> {
    let url = req.url().internal("request url")?;
    let path = url.path().to_string();
    let Some((def, param)) = resolve(&path, cfg) else {
        return Err(ApiError::not_found(&path));
    };
    let method = req.method();
    // workers-rs reads any method it has no variant for (QUERY, PROPFIND,
    // a lowercase "patch") as GET; the method as sent decides instead.
    let sent = req.inner().method();
    if sent != method.as_ref() || !def.methods.contains(&method) {
        let allow: Vec<&str> = def.methods.iter().map(|m| m.as_ref()).collect();
        return Err(ApiError::method_not_allowed(&sent, &path, &allow));
    }
    let id = param.unwrap_or("");
    match def.route {
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
                // What peers put into their PEERS entry for this GP (its
                // GP-to-GP requests are signed with the matching seed).
                "public_key": crate::edge::auth::peer::Signer::from_env(env)
                    .ok()
                    .map(|s| s.public_key_b64()),
            }))
        }
        Route::Peers => {
            let report = peers::probe_all(cfg).await;
            json_ok(&json!({ "gp": cfg.id, "peers": report }))
        }
        Route::OpenApi => {
            let mut resp = Response::ok(OPENAPI_JSON).internal("openapi")?;
            resp.headers_mut()
                .set("Content-Type", "application/json")
                .internal("set header")?;
            Ok(resp)
        }
        Route::OAuthToken => oauth::token(req, env, cfg).await,
        Route::Me => me(&req, env, cfg).await,
        Route::AdminAps if method == Method::Post => admin::enroll(req, env, cfg).await,
        Route::AdminAps => admin::list(req, env).await,
        Route::AdminAp if method == Method::Patch => admin::update(req, env, cfg, id).await,
        Route::AdminAp => admin::show(req, env, id).await,
        Route::AdminApSuspend => admin::suspend(req, env, id).await,
        Route::AdminApReinstate => admin::reinstate(req, env, id).await,
        Route::AdminApRotate => admin::rotate(req, env, id).await,
        Route::AdminApAnalytics => mappings::analytics(req, env, id).await,
        Route::AdminApWebhookReplay => mappings::replay(req, env, id).await,
        Route::MappingCreate => mappings::create(req, env, cfg).await,
        Route::Verification => mappings::confirm(req, env, cfg, id).await,
        Route::MappingChoice => mappings::action(req, env, cfg, Action::Choice).await,
        Route::MappingReestablish => mappings::action(req, env, cfg, Action::Reestablish).await,
        Route::MappingPreferBack => mappings::action(req, env, cfg, Action::PreferBack).await,
        Route::MappingReport => mappings::action(req, env, cfg, Action::Report).await,
        Route::MappingDelete => mappings::action(req, env, cfg, Action::Delete).await,
        Route::MappingMine => mappings::action(req, env, cfg, Action::Mine).await,
        Route::MappingBulk => mappings::bulk(req, env, cfg).await,
        Route::PublicFilter => public_filter::get(&req, env, &cfg.id).await,
        Route::Query => query::query(req, env, cfg).await,
        Route::PeerQuery => query::serve_peer(req, env, cfg).await,
        Route::PeerClaims => query::serve_claim(req, env, cfg).await,
        Route::PeerStrikes => crate::edge::api::peer::strikes::serve_strike(req, env, cfg).await,
        Route::DebugQueryStats => query::debug_stats(),
        Route::PeerFilter => federation::serve_snapshot(req, env, cfg).await,
        Route::PeerFilterAdditions => federation::serve_additions(req, env, cfg).await,
        Route::PeerFilterSubscriptions => federation::subscribe(req, env, cfg).await,
        Route::PeerFilterUpdates => federation::receive_update(req, env, cfg).await,
        Route::AdminFilterRebuild => federation::admin_rebuild(req, env).await,
        Route::DebugFilterInsert => federation::debug_insert(req, env).await,
        Route::DebugPeerFilters => federation::debug_peer_filters(req, env, cfg).await,
        Route::DebugRoutes => json_ok(&json!({
            "routes": ROUTES.iter().map(|r| json!({
                "path": r.template,
                "methods": r.methods.iter().map(|m| m.as_ref()).collect::<Vec<_>>(),
                "debug_only": r.debug_only,
            })).collect::<Vec<_>>(),
        })),
        Route::DebugPanic => {
            #[allow(clippy::panic)]
            {
                panic!("deliberate panic from /__debug/panic");
            }
        }
    }
}

/// `GET /v1/me`: the authenticated AP as the GP sees it. The first client
/// API route; it proves the whole chain (token, certificate binding,
/// registry state) and shows the AP its current rate limit (draft §11.2:
/// "rate limited based on the number of enrolled users").
async fn me(req: &Request, env: &Env, cfg: &GpConfig) -> ApiResult<Response> {
    let ap = auth::authenticate(req, env, cfg).await?;
    let r = &ap.record;
    let rate = allowed_rate(&r.rate_params, r.enrolled_users, r.strikes);
    json_ok(&json!({
        "id": r.id,
        "name": r.name,
        "bulk_allowed": r.bulk_allowed,
        "enrolled_users": r.enrolled_users,
        "strikes": r.strikes,
        "rate": { "per_sec": rate.per_sec, "burst": rate.burst },
        "token": {
            "expires_at": ap.claims.expires_at,
            "generation": ap.claims.generation,
            "cnf": ap.claims.cnf.map(|f| json!({ "x5t#S256": f.to_x5t_s256() })),
        },
        "mtls": {
            "required": cfg.require_mtls,
            "certificate_sha256": ap.cert.map(|f| f.to_hex()),
        },
    }))
}

/// A 200 JSON response.
pub fn json_ok(body: &serde_json::Value) -> ApiResult<Response> {
    json_status(body, 200)
}

/// A JSON response with `status`; API answers are never cached.
pub fn json_status(body: &serde_json::Value, status: u16) -> ApiResult<Response> {
    let mut resp = Response::from_json(body)
        .internal("serialize response")?
        .with_status(status);
    resp.headers_mut()
        .set("Cache-Control", "no-store")
        .internal("set header")?;
    Ok(resp)
}
