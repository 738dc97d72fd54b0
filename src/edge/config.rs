//! The GP's configuration, read from `wrangler.toml` vars (and secrets).
//!
//! draft §6: "there is NOT an actual discovery protocol for finding the set
//! of GP in the world. Rather, they are just well known." So the peers are
//! static configuration, not something learned at run time.

use crate::core::token::TokenKeys;

use crate::edge::http::error::{ApiError, ApiResult};
use serde::{Deserialize, Serialize};
use worker::Env;

/// One configured peer GP.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Peer {
    /// The peer's GP id, as it reports it at `GET /v1/gp`.
    pub id: String,
    /// Base URL the peer serves its API at (no trailing slash needed).
    pub url: String,
    /// The peer's Ed25519 public key (32 bytes, base64 or base64url): its
    /// signed requests verify against it (draft §11.1: GPs are "fully
    /// trusted", ARCHITECTURE.md, Invariants 6: but signed). A peer without one can
    /// be called but every request it sends is refused.
    #[serde(default)]
    pub public_key: Option<String>,
}

/// Everything a request handler needs to know about this GP.
#[derive(Debug, Clone)]
pub struct GpConfig {
    pub id: String,
    pub name: String,
    pub peers: Vec<Peer>,
    /// Expected number of SIIs, used to size the routing filter.
    pub filter_expected_siis: u64,
    /// Target false-positive rate of the routing filter.
    pub filter_fp_rate: f64,
    /// `blocked` (default), `plain`, or `draft` (draft §9 interop: k = 1).
    pub filter_layout: String,
    /// Test-only routes (e.g. a deliberate panic); never set in production.
    pub debug_routes: bool,
    /// draft §11.3: "glados adds a requirement for MTLS between the provider
    /// and glados". `REQUIRE_MTLS`, default true; "false" only for local GPs.
    pub require_mtls: bool,
    /// Lifetime of access tokens (`TOKEN_TTL_SECONDS`, default 300, 1..=3600).
    pub token_ttl_secs: u64,
    /// How long an isolate trusts its cached copy of an AP's registry entry
    /// (`AP_CACHE_SECONDS`, default 30); bounds how late a suspension bites.
    pub ap_cache_secs: u64,
    /// How long a signed mapping statement is valid
    /// (`STATEMENT_TTL_SECONDS`, default a day, a minute to 30 days).
    pub statement_ttl_secs: u64,
}

impl GpConfig {
    /// Reads and validates the configuration; a bad value is the operator's
    /// bug, so it is reported as an internal error naming the variable.
    pub fn from_env(env: &Env) -> ApiResult<Self> {
        let id = required(env, "GP_ID")?;
        let name = optional(env, "GP_NAME").unwrap_or_else(|| id.clone());
        let peers = match optional(env, "PEERS") {
            None => Vec::new(),
            Some(text) => parse_peers(&text)?,
        };
        let filter_expected_siis = parse_num(env, "FILTER_EXPECTED_SIIS", 1_000_000u64)?;
        let filter_fp_rate = parse_num(env, "FILTER_FP_RATE", 0.01f64)?;
        if !(filter_fp_rate > 0.0 && filter_fp_rate < 0.5) {
            return Err(ApiError::Internal(format!(
                "config FILTER_FP_RATE={filter_fp_rate} must be between 0 and 0.5"
            )));
        }
        let filter_layout = optional(env, "FILTER_LAYOUT").unwrap_or_else(|| "blocked".into());
        let debug_routes = optional(env, "DEBUG_ROUTES").is_some_and(|v| v == "1" || v == "true");
        let require_mtls = match optional(env, "REQUIRE_MTLS").as_deref() {
            None | Some("true") | Some("1") => true,
            Some("false") | Some("0") => false,
            Some(other) => {
                return Err(ApiError::Internal(format!(
                    "config REQUIRE_MTLS={other:?} must be \"true\" or \"false\""
                )))
            }
        };
        let token_ttl_secs = parse_num(env, "TOKEN_TTL_SECONDS", 300u64)?;
        if !(1..=3600).contains(&token_ttl_secs) {
            return Err(ApiError::Internal(format!(
                "config TOKEN_TTL_SECONDS={token_ttl_secs} must be between 1 and 3600"
            )));
        }
        let ap_cache_secs = parse_num(env, "AP_CACHE_SECONDS", 30u64)?.min(3600);
        let statement_ttl_secs = parse_num(
            env,
            "STATEMENT_TTL_SECONDS",
            crate::core::statement::DEFAULT_TTL_S,
        )?;
        if !crate::core::statement::TTL_RANGE_S.contains(&statement_ttl_secs) {
            return Err(ApiError::Internal(format!(
                "config STATEMENT_TTL_SECONDS={statement_ttl_secs} must be between 60 and 2592000"
            )));
        }
        Ok(GpConfig {
            id,
            name,
            peers,
            filter_expected_siis,
            filter_fp_rate,
            filter_layout,
            debug_routes,
            require_mtls,
            token_ttl_secs,
            ap_cache_secs,
            statement_ttl_secs,
        })
    }
}

/// `PEERS` is a JSON array so that one string var works the same in
/// `wrangler.toml`, `.dev.vars` and the dashboard.
fn parse_peers(text: &str) -> ApiResult<Vec<Peer>> {
    let peers: Vec<Peer> = serde_json::from_str(text).map_err(|e| {
        ApiError::Internal(format!(
            "config PEERS is not a JSON array of {{id, url, public_key}}: {e}"
        ))
    })?;
    for p in &peers {
        if !(p.url.starts_with("https://") || p.url.starts_with("http://")) {
            return Err(ApiError::Internal(format!(
                "config PEERS: peer {} has url {:?}, which is not http(s)",
                p.id, p.url
            )));
        }
    }
    Ok(peers)
}

/// A secret (or var) binding as a string, if set and non-empty. Secrets
/// and vars are read the same way so an operator may move a value between
/// `wrangler secret` and `[vars]` without a code change.
pub fn binding(env: &Env, name: &str) -> Option<String> {
    env.secret(name)
        .map(|s| s.to_string())
        .or_else(|_| env.var(name).map(|v| v.to_string()))
        .ok()
        .filter(|s| !s.is_empty())
}

fn optional(env: &Env, name: &str) -> Option<String> {
    env.var(name)
        .ok()
        .map(|v| v.to_string())
        .filter(|s| !s.is_empty())
}

fn required(env: &Env, name: &str) -> ApiResult<String> {
    optional(env, name).ok_or_else(|| ApiError::Internal(format!("config {name} is not set")))
}

fn parse_num<T: std::str::FromStr>(env: &Env, name: &str, default: T) -> ApiResult<T> {
    match optional(env, name) {
        None => Ok(default),
        Some(s) => s
            .trim()
            .parse()
            .map_err(|_| ApiError::Internal(format!("config {name}={s:?} is not a number"))),
    }
}

/// Shortest operator secret accepted (ADMIN_TOKEN, WEBHOOK_MASTER_KEY).
const MIN_SECRET_CHARS: usize = 32;

pub fn operator_secret(env: &Env, name: &str) -> ApiResult<String> {
    let value = binding(env, name).ok_or_else(|| {
        ApiError::Internal(format!(
            "secret {name} is not set (wrangler secret put {name})"
        ))
    })?;
    if value.chars().count() < MIN_SECRET_CHARS {
        return Err(ApiError::Internal(format!(
            "secret {name} is shorter than {MIN_SECRET_CHARS} characters"
        )));
    }
    Ok(value)
}

/// The token MAC keys (`TOKEN_KEYS` secret: `kid1:base64key,kid2:…`).
pub fn token_keys(env: &Env) -> ApiResult<TokenKeys> {
    let spec = binding(env, "TOKEN_KEYS").ok_or_else(|| {
        ApiError::Internal("secret TOKEN_KEYS is not set (wrangler secret put TOKEN_KEYS)".into())
    })?;
    TokenKeys::parse(&spec).map_err(|e| ApiError::Internal(format!("config: {e}")))
}

/// The key webhook signing secrets are derived from (`WEBHOOK_MASTER_KEY`).
pub fn webhook_master_key(env: &Env) -> ApiResult<Vec<u8>> {
    operator_secret(env, "WEBHOOK_MASTER_KEY").map(String::into_bytes)
}
