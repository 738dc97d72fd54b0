//! The GP's configuration in the Workers layer: the vars go through
//! [`GpConfig::parse`] (`core::config`, the one place they are read and
//! validated: a typo stops the GP instead of turning into a default), once
//! per isolate and env object ([`per_env`]); secrets are read here.

use crate::core::token::TokenKeys;
use crate::edge::http::error::{ApiError, ApiResult};
use std::any::{Any, TypeId};
use std::cell::RefCell;
use std::rc::Rc;
use wasm_bindgen::JsValue;
use worker::Env;

pub use crate::core::config::{GpConfig, Peer, PublicFilter};

impl GpConfig {
    /// This isolate's configuration, read and validated once per env
    /// object ([`per_env`]) rather than on every request.
    pub fn cached(env: &Env) -> ApiResult<Rc<GpConfig>> {
        per_env(env, GpConfig::from_env)
    }

    /// Reads and validates the vars; a bad value is the operator's bug, so
    /// it is an internal error naming the var (logged; the client gets a
    /// generic 500), never a silent default.
    pub fn from_env(env: &Env) -> ApiResult<Self> {
        let var = |name: &str| binding(env, name);
        // PEERS is a JSON array, so that one string var works the same in
        // wrangler.toml, .dev.vars and the dashboard.
        let peers = match var("PEERS").filter(|s| !s.trim().is_empty()) {
            None => Vec::new(),
            Some(text) => serde_json::from_str(&text).map_err(|e| {
                ApiError::Internal(format!(
                    "config PEERS: not a JSON array of {{id, url, public_key}}: {e}"
                ))
            })?,
        };
        GpConfig::parse(&var, peers).map_err(|e| ApiError::Internal(e.to_string()))
    }
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

/// A secret (`wrangler secret put NAME`, `.dev.vars` locally), if set and
/// non-empty; the names are `core::config::SECRETS`, and none is a var of
/// `wrangler.toml` (wasm-tests/deploy.test.mjs).
pub fn secret(env: &Env, name: &str) -> Option<String> {
    debug_assert!(crate::core::config::SECRETS.contains(&name), "{name}");
    binding(env, name)
}

/// A secret the feature at hand cannot work without.
pub fn required_secret(env: &Env, name: &str) -> ApiResult<String> {
    secret(env, name).ok_or_else(|| {
        ApiError::Internal(format!(
            "secret {name} is not set (wrangler secret put {name})"
        ))
    })
}

/// Shortest operator secret accepted (ADMIN_TOKEN, WEBHOOK_MASTER_KEY).
const MIN_SECRET_CHARS: usize = 32;

/// An operator secret of at least [`MIN_SECRET_CHARS`], read from the env
/// (callers on a hot path keep it with [`per_env`]).
pub fn operator_secret(env: &Env, name: &str) -> ApiResult<String> {
    let value = required_secret(env, name)?;
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
        let spec = required_secret(env, "TOKEN_KEYS")?;
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
