//! Request routing: path → handler, with 404/405 answered as problems.
//!
//! [`ROUTES`] is the one route table: the router matches against it, and
//! `GET /__debug/routes` serves it so the end-to-end suite can check that
//! every route is documented in `/openapi.json` (and nothing else is).

use crate::core::config::is_loopback_host;
use crate::core::holder::HolderAction;
use crate::edge::api::ap::mappings::Action;
use crate::edge::api::{ap, debug, operator, peer, public};
use crate::edge::config::GpConfig;
use crate::edge::http::error::{ApiError, ApiResult};
use crate::edge::http::request::Request;
use crate::edge::http::respond::json_ok;
use serde_json::json;
use worker::{Env, Method, Response};

/// Everything the GP serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Healthz,
    GpInfo,
    Peers,
    OpenApi,
    StatementKeys,
    HolderCodes,
    HolderVerify,
    HolderStatus,
    HolderRemove,
    HolderOptOut,
    HolderOptIn,
    PeerHolderClaims,
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
    PeerPreferred,
    DebugQueryStats,
    PublicFilter,
    PeerFilter,
    PeerFilterPartition,
    PeerFilterAdditions,
    PeerFilterSubscriptions,
    PeerFilterUpdates,
    AdminFilterRebuild,
    DebugFilterInsert,
    DebugFilterFill,
    DebugPeerFilters,
    DebugRouting,
    DebugPanic,
    DebugClock,
    DebugApItems,
    DebugFilterSubscribers,
    DebugFaults,
    DebugRoutes,
    DebugBreakdown,
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
    // Beyond GLADOS-00: the keys mapping statements are signed with.
    RouteDef {
        template: "/.well-known/glados-keys",
        route: Route::StatementKeys,
        methods: GET,
        debug_only: false,
    },
    // Beyond GLADOS-00: the SII holder's own removal and opt-out (public).
    RouteDef {
        template: "/v1/holder/codes",
        route: Route::HolderCodes,
        methods: POST,
        debug_only: false,
    },
    RouteDef {
        template: "/v1/holder/verify",
        route: Route::HolderVerify,
        methods: POST,
        debug_only: false,
    },
    RouteDef {
        template: "/v1/holder/status",
        route: Route::HolderStatus,
        methods: POST,
        debug_only: false,
    },
    RouteDef {
        template: "/v1/holder/remove",
        route: Route::HolderRemove,
        methods: POST,
        debug_only: false,
    },
    RouteDef {
        template: "/v1/holder/opt-out",
        route: Route::HolderOptOut,
        methods: POST,
        debug_only: false,
    },
    RouteDef {
        template: "/v1/holder/opt-in",
        route: Route::HolderOptIn,
        methods: POST,
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
    // draft §8.2.1/§8.3: a peer GP's batched check before a bulk upload.
    RouteDef {
        template: "/peer/v1/preferred",
        route: Route::PeerPreferred,
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
    // Beyond GLADOS-00: the SII holder acted at a peer GP.
    RouteDef {
        template: "/peer/v1/holder-claims",
        route: Route::PeerHolderClaims,
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
        template: "/peer/v1/filter/partitions/{index}",
        route: Route::PeerFilterPartition,
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
        template: "/__debug/filter/subscribers",
        route: Route::DebugFilterSubscribers,
        methods: GET,
        debug_only: true,
    },
    RouteDef {
        template: "/__debug/filter/fill",
        route: Route::DebugFilterFill,
        methods: POST,
        debug_only: true,
    },
    RouteDef {
        template: "/__debug/peer-filters",
        route: Route::DebugPeerFilters,
        methods: GET,
        debug_only: true,
    },
    // The isolate's routing view, KV counters and the routing shards'.
    RouteDef {
        template: "/__debug/routing",
        route: Route::DebugRouting,
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
    // Moves this isolate's clock ahead: expiry and due dates under the
    // production settings.
    RouteDef {
        template: "/__debug/clock",
        route: Route::DebugClock,
        methods: POST,
        debug_only: true,
    },
    // The same items handed to an AP's object several times at once (a
    // shard outbox's redelivery): applied once each.
    RouteDef {
        template: "/__debug/ap-items",
        route: Route::DebugApItems,
        methods: POST,
        debug_only: true,
    },
    // Fails the next calls of one Durable Object operation (before or
    // after it took effect): fault injection at the RPC boundary.
    RouteDef {
        template: "/__debug/faults",
        route: Route::DebugFaults,
        methods: POST,
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
    // Where a query's time goes, stage by stage (the query benchmark).
    RouteDef {
        template: "/__debug/breakdown",
        route: Route::DebugBreakdown,
        methods: &[Method::Get, Method::Post],
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

/// Matches `path` against a template; returns the `{…}` segment, if any.
fn match_template<'p>(template: &str, path: &'p str) -> Option<Option<&'p str>> {
    // Most templates are plain paths: one comparison, no splitting.
    if !template.contains('{') {
        return (template == path).then_some(None);
    }
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
/// parameter (test routes only with `DEBUG_ROUTES`; `handle` also wants a
/// local request for them).
fn resolve<'p>(path: &'p str, cfg: &GpConfig) -> Option<(&'static RouteDef, Option<&'p str>)> {
    ROUTES
        .iter()
        .filter(|r| !r.debug_only || cfg.debug_routes)
        .find_map(|r| match_template(r.template, path).map(|param| (r, param)))
}

/// Whether the request was made to a loopback host, i.e. on a local
/// runtime: a deployed GP is reached by its hostnames only, so even a
/// local configuration deployed by mistake serves no test route (issue 14
/// item 13). Read only for test routes: other requests parse no URL.
fn local_request(req: &Request) -> bool {
    req.url()
        .ok()
        .is_some_and(|u| u.host_str().is_some_and(is_loopback_host))
}

/// Handles one API request. `path` is the request's path as the runtime
/// serialized it (workers-rs cuts it from the URL without reparsing).
pub async fn handle(req: Request, path: &str, env: &Env, cfg: &GpConfig) -> ApiResult<Response> {
    let Some((def, param)) =
        resolve(path, cfg).filter(|(def, _)| !def.debug_only || local_request(&req))
    else {
        return Err(ApiError::not_found(path));
    };
    let method = req.method();
    // workers-rs reads any method it has no variant for (QUERY, PROPFIND,
    // a lowercase "patch") as GET; the method as sent decides instead.
    let sent = req.sent_method();
    if sent != method.as_ref() || !def.methods.contains(&method) {
        let allow: Vec<&str> = def.methods.iter().map(|m| m.as_ref()).collect();
        return Err(ApiError::method_not_allowed(sent, path, &allow));
    }
    let id = param.unwrap_or("");
    match def.route {
        // Public pages.
        Route::Healthz => public::info::healthz(cfg),
        Route::GpInfo => public::info::gp_info(env, cfg).await,
        Route::Peers => public::info::peers(cfg).await,
        Route::OpenApi => public::info::openapi(),
        Route::StatementKeys => public::keys::serve(env, cfg),
        Route::HolderCodes => public::holder::codes(req, env, cfg).await,
        Route::HolderVerify => public::holder::verify(req, env, cfg).await,
        Route::HolderStatus => public::holder::status(req, env, cfg).await,
        Route::HolderRemove => public::holder::act(req, env, cfg, HolderAction::Remove).await,
        Route::HolderOptOut => public::holder::act(req, env, cfg, HolderAction::OptOut).await,
        Route::HolderOptIn => public::holder::act(req, env, cfg, HolderAction::OptIn).await,
        Route::PublicFilter => public::filter::get(&req, env, cfg).await,
        // The AP API.
        Route::OAuthToken => ap::oauth::token(req, env, cfg).await,
        Route::Me => ap::me::me(&req, env, cfg).await,
        Route::MappingCreate => ap::mappings::create(req, env, cfg).await,
        Route::Verification => ap::mappings::confirm(req, env, cfg, id).await,
        Route::MappingChoice => ap::mappings::action(req, env, cfg, Action::Choice).await,
        Route::MappingReestablish => ap::mappings::action(req, env, cfg, Action::Reestablish).await,
        Route::MappingPreferBack => ap::mappings::action(req, env, cfg, Action::PreferBack).await,
        Route::MappingReport => ap::mappings::action(req, env, cfg, Action::Report).await,
        Route::MappingDelete => ap::mappings::action(req, env, cfg, Action::Delete).await,
        Route::MappingMine => ap::mappings::action(req, env, cfg, Action::Mine).await,
        Route::MappingBulk => ap::bulk::bulk(req, env, cfg).await,
        Route::Query => ap::query::query(req, env, cfg).await,
        // The operator's API.
        Route::AdminAps if method == Method::Post => operator::aps::enroll(req, env, cfg).await,
        Route::AdminAps => operator::aps::list(req, env).await,
        Route::AdminAp if method == Method::Patch => operator::aps::update(req, env, cfg, id).await,
        Route::AdminAp => operator::aps::show(req, env, id).await,
        Route::AdminApSuspend => operator::aps::suspend(req, env, id).await,
        Route::AdminApReinstate => operator::aps::reinstate(req, env, id).await,
        Route::AdminApRotate => operator::aps::rotate(req, env, id).await,
        Route::AdminApAnalytics => operator::analytics::analytics(req, env, id).await,
        Route::AdminApWebhookReplay => operator::analytics::replay(req, env, id).await,
        Route::AdminFilterRebuild => operator::filter::rebuild(req, env).await,
        // The peer API (signed GP-to-GP requests).
        Route::PeerQuery => peer::query::serve(req, env, cfg).await,
        Route::PeerClaims => peer::claims::serve(req, env, cfg).await,
        Route::PeerStrikes => peer::strikes::serve(req, env, cfg).await,
        Route::PeerHolderClaims => peer::claims::serve_holder(req, env, cfg).await,
        Route::PeerPreferred => peer::preferred::serve(req, env, cfg).await,
        Route::PeerFilter => peer::filter::serve_manifest(req, env, cfg).await,
        Route::PeerFilterPartition => peer::filter::serve_partition(req, env, cfg, id).await,
        Route::PeerFilterAdditions => peer::filter::serve_additions(req, env, cfg).await,
        Route::PeerFilterSubscriptions => peer::filter::subscribe(req, env, cfg).await,
        Route::PeerFilterUpdates => peer::filter::receive_update(req, env, cfg).await,
        // Test-only routes (DEBUG_ROUTES).
        Route::DebugQueryStats => debug::query_stats(),
        Route::DebugFilterInsert => debug::filter_insert(req, env).await,
        Route::DebugFilterFill => debug::filter_fill(req, env).await,
        Route::DebugPeerFilters => debug::peer_filters(req, env, cfg).await,
        Route::DebugBreakdown => {
            let route = || {
                let _ = std::hint::black_box(resolve(std::hint::black_box("/v1/query"), cfg));
            };
            debug::breakdown(req, env, cfg, &route).await
        }
        Route::DebugClock => debug::clock(req).await,
        Route::DebugApItems => debug::ap_items(req, env).await,
        Route::DebugFilterSubscribers => debug::filter_subscribers(env).await,
        Route::DebugFaults => debug::faults(req).await,
        Route::DebugRouting => debug::routing(env, cfg).await,
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
