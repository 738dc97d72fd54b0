//! The GP's configuration, read from `wrangler.toml` vars (and secrets).
//!
//! draft §6: "there is NOT an actual discovery protocol for finding the set
//! of GP in the world. Rather, they are just well known." So the peers are
//! static configuration, not something learned at run time.

use crate::core::token::TokenKeys;

use crate::edge::http::error::{ApiError, ApiResult};
use serde::{Deserialize, Serialize};
use std::any::{Any, TypeId};
use std::cell::RefCell;
use std::rc::Rc;
use wasm_bindgen::JsValue;
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
    /// This isolate's configuration, read and validated once per env
    /// object ([`per_env`]) rather than on every request.
    pub fn cached(env: &Env) -> ApiResult<Rc<GpConfig>> {
        per_env(env, GpConfig::from_env)
    }

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
/// and vars are both plain string properties of the env object, so one
/// property read serves both (an operator may move a value between
/// `wrangler secret` and `[vars]` without a code change), and a missing
/// name is `undefined`, not an error.
pub fn binding(env: &Env, name: &str) -> Option<String> {
    js_sys::Reflect::get(env.as_ref(), &JsValue::from_str(name))
        .ok()?
        .as_string()
        .filter(|s| !s.is_empty())
}

fn optional(env: &Env, name: &str) -> Option<String> {
    binding(env, name)
}

/// What this isolate derived from its env objects, by type: a value is
/// computed once per env object and kept as long as the isolate, because
/// vars and secrets only change with a new deployment, which gets a new
/// env object (and, in practice, a new isolate). The worker and its
/// Durable Objects may see different env objects, so a few are kept.
struct EnvMemo {
    env: JsValue,
    values: Vec<(TypeId, Rc<dyn Any>)>,
}

thread_local! {
    static MEMO: RefCell<Vec<EnvMemo>> = const { RefCell::new(Vec::new()) };
}

/// Env objects remembered at once; a further one evicts the oldest.
const MAX_ENVS: usize = 4;

/// `make(env)`, computed once per env object and type, so request handlers
/// read and validate configuration and secrets once per isolate instead of
/// on every request. Errors are not kept: a bad value is reported (and
/// read again) by every request that needs it.
pub fn per_env<T: 'static>(env: &Env, make: impl FnOnce(&Env) -> ApiResult<T>) -> ApiResult<Rc<T>> {
    let key: &JsValue = env.as_ref();
    let found = MEMO.with(|m| {
        m.borrow()
            .iter()
            .find(|e| js_sys::Object::is(&e.env, key))
            .and_then(|e| e.values.iter().find(|(t, _)| *t == TypeId::of::<T>()))
            .and_then(|(_, v)| v.clone().downcast::<T>().ok())
    });
    if let Some(v) = found {
        return Ok(v);
    }
    let value = Rc::new(make(env)?);
    crate::edge::stats::count(|s| s.env_reads += 1);
    MEMO.with(|m| {
        let mut m = m.borrow_mut();
        let idx = match m.iter().position(|e| js_sys::Object::is(&e.env, key)) {
            Some(i) => i,
            None => {
                if m.len() >= MAX_ENVS {
                    m.remove(0);
                }
                m.push(EnvMemo {
                    env: key.clone(),
                    values: Vec::new(),
                });
                m.len() - 1
            }
        };
        let as_any: Rc<dyn Any> = value.clone();
        m[idx].values.push((TypeId::of::<T>(), as_any));
    });
    Ok(value)
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

/// An operator secret of at least [`MIN_SECRET_CHARS`], read from the env
/// (callers on a hot path keep it with [`per_env`]).
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

/// The token MAC keys (`TOKEN_KEYS` secret: `kid1:base64key,kid2:…`),
/// parsed once per isolate: every AP call verifies a token with them.
pub fn token_keys(env: &Env) -> ApiResult<Rc<TokenKeys>> {
    per_env(env, |env| {
        let spec = binding(env, "TOKEN_KEYS").ok_or_else(|| {
            ApiError::Internal(
                "secret TOKEN_KEYS is not set (wrangler secret put TOKEN_KEYS)".into(),
            )
        })?;
        TokenKeys::parse(&spec).map_err(|e| ApiError::Internal(format!("config: {e}")))
    })
}

/// The operator's `ADMIN_TOKEN`, read once per isolate.
pub struct AdminToken(pub String);

/// The operator's bearer token (`ADMIN_TOKEN`).
pub fn admin_token(env: &Env) -> ApiResult<Rc<AdminToken>> {
    per_env(env, |env| {
        operator_secret(env, "ADMIN_TOKEN").map(AdminToken)
    })
}

/// `WEBHOOK_MASTER_KEY`'s bytes, read once per isolate.
pub struct WebhookMasterKey(pub Vec<u8>);

/// The key webhook signing secrets are derived from (`WEBHOOK_MASTER_KEY`).
pub fn webhook_master_key(env: &Env) -> ApiResult<Vec<u8>> {
    per_env(env, |env| {
        operator_secret(env, "WEBHOOK_MASTER_KEY").map(|s| WebhookMasterKey(s.into_bytes()))
    })
    .map(|k| k.0.clone())
}
