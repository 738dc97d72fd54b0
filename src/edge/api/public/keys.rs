//! `GET /.well-known/glados-keys`: the keys this GP signs mapping
//! statements with, as a JWK Set (RFC 7517), for any AP to verify a
//! statement it got from whichever home GP (ARCHITECTURE.md, "Signed
//! mapping statements").
use crate::core::statement::{Jwk, TYP};
use crate::edge::config::GpConfig;
use crate::edge::http::error::{ApiResult, OrInternal};
use crate::edge::http::respond::json_ok;
use serde_json::json;
use worker::{Env, Response};

/// How long verifiers may cache the key set. Short next to a statement's
/// lifetime, so a new key is picked up well before anything it signed
/// needs it; a retired key stays listed for a whole statement lifetime.
const MAX_AGE_S: u32 = 300;

/// `GET /.well-known/glados-keys`.
pub fn serve(env: &Env, cfg: &GpConfig) -> ApiResult<Response> {
    let keys: Vec<Jwk> = match crate::edge::statements::keys(env)? {
        Some(k) => k
            .published
            .iter()
            .map(|(public, status)| Jwk::ed25519(public, *status))
            .collect(),
        None => Vec::new(),
    };
    let mut resp = json_ok(&json!({
        "keys": keys,
        "gp": cfg.id,
        "typ": TYP,
        "statement_ttl_s": cfg.statement_ttl_secs,
    }))?;
    resp.headers_mut()
        .set("Cache-Control", &format!("public, max-age={MAX_AGE_S}"))
        .internal("set header")?;
    Ok(resp)
}
