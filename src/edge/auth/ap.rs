//! Who is calling: operator (admin token), AP servers (access tokens over
//! mutual TLS), and the secrets and TLS facts those checks need.
//!
//! # How a client call is authenticated ([`authenticate`])
//!
//! 1. `Authorization: Bearer <token>` (RFC 6750 §2.1).
//! 2. `core::token::verify`: MAC and expiry, pure CPU, no storage.
//! 3. RFC 8705 §3: the token's `cnf.x5t#S256` must equal the SHA-256 of the
//!    client certificate of this request, read from Cloudflare's
//!    `request.cf.tlsClientAuth`; with REQUIRE_MTLS a verified certificate
//!    is needed in any case (draft §11.3).
//! 4. The AP's registry entry, from an isolate-level cache: suspended APs
//!    are refused, and a token whose generation is older than the entry's
//!    is revoked.
//!
//! # Suspension takes effect within one token lifetime at most
//!
//! Suspending an AP (a) makes the token endpoint refuse it at once (it
//! reads the registry object directly) and (b) bumps the AP's generation,
//! which every token carries. Client calls compare against the isolate's
//! cached entry, which is refreshed at most AP_CACHE_SECONDS (default 30)
//! after it was fetched, and immediately in the isolate that performed the
//! suspension. So an AP's existing tokens stop working after
//! min(AP_CACHE_SECONDS, TOKEN_TTL_SECONDS) at the latest: with the
//! defaults, 30 s, well inside the 300 s token lifetime. The cache costs
//! one registry request per AP per isolate per AP_CACHE_SECONDS, not per
//! query (ARCHITECTURE.md, Cost budget: no storage for the token check).
use crate::edge::rpc::registry::current_ap;

use crate::edge::clock::now_ms;
use crate::edge::config::token_keys;

use crate::core::credentials::{check_token_binding, CertFingerprint, ClientCert};
use crate::core::token::{self, TokenClaims};
use crate::core::Problem;
use crate::edge::config::GpConfig;
use crate::edge::http::error::{ApiError, ApiResult};
use crate::edge::http::request::Request;
use crate::edge::rpc::registry::ApRecord;
use std::cell::Cell;
use std::rc::Rc;
use wasm_bindgen::JsValue;
use worker::Env;

/// The realm named in `WWW-Authenticate` challenges.
const REALM: &str = "glados";

thread_local! {
    static MTLS_NOTED: Cell<bool> = const { Cell::new(false) };
}

/// Logs once per isolate, at its first authenticated request, that mutual
/// TLS is off, so an operator reading logs cannot miss it.
pub fn note_mtls_mode(cfg: &GpConfig) {
    if !cfg.require_mtls && !MTLS_NOTED.with(|n| n.replace(true)) {
        worker::console_warn!(
            "GP {}: REQUIRE_MTLS is false: AP client certificates are NOT required (draft §11.3 requires mutual TLS in production)",
            cfg.id
        );
    }
}

/// The credential of `Authorization: <scheme> <credential>` if the scheme
/// matches (case-insensitively, RFC 9110 §11.1).
pub fn authorization(req: &Request, scheme: &str) -> Option<String> {
    let value = req.headers().get("Authorization").ok().flatten()?;
    let (s, cred) = value.trim().split_once(' ')?;
    s.eq_ignore_ascii_case(scheme)
        .then(|| cred.trim().to_string())
        .filter(|c| !c.is_empty())
}

/// Reads `request.cf.tlsClientAuth` field by field with `Reflect`: worker
/// 0.8.7's typed getters unwrap internally and panic when a field is
/// missing (absent cf in local runs, partial objects in tests). Anything
/// unexpected reads as "no certificate".
pub fn client_cert(req: &Request) -> ClientCert {
    let get = |obj: &JsValue, key: &str| -> Option<JsValue> {
        js_sys::Reflect::get(obj, &JsValue::from_str(key))
            .ok()
            .filter(|v| !v.is_undefined() && !v.is_null())
    };
    let inner: &JsValue = req.inner().as_ref();
    let Some(tls) = get(inner, "cf").and_then(|cf| get(&cf, "tlsClientAuth")) else {
        return ClientCert::None;
    };
    let field = |key: &str| get(&tls, key).and_then(|v| v.as_string());
    if field("certPresented").as_deref() != Some("1") {
        return ClientCert::None;
    }
    let verified = field("certVerified").unwrap_or_default();
    if verified != "SUCCESS" {
        let mut why: String = verified.chars().take(120).collect();
        if why.is_empty() {
            why = "NONE".into();
        }
        return ClientCert::Unverified(why);
    }
    match field("certFingerprintSHA256").map(|f| CertFingerprint::parse(&f)) {
        Some(Ok(fp)) => ClientCert::Verified(fp),
        _ => ClientCert::Unverified("no usable SHA-256 fingerprint".into()),
    }
}

// ------------------------------------------------------------ client calls

/// An AP whose access token checked out; what client routes work with.
#[derive(Debug, Clone)]
pub struct AuthedAp {
    /// The AP's registry entry (at most AP_CACHE_SECONDS old).
    pub record: Rc<ApRecord>,
    /// The token's claims.
    pub claims: TokenClaims,
    /// The verified client certificate of this request, if any.
    pub cert: Option<CertFingerprint>,
}

/// An RFC 6750 §3 challenge: `Bearer realm="glados", error="invalid_token"`.
fn bearer_challenge(err: Option<&str>) -> String {
    match err {
        None => format!("Bearer realm=\"{REALM}\""),
        Some(code) => format!("Bearer realm=\"{REALM}\", error=\"{code}\""),
    }
}

/// A 401 for a bad token or certificate, with the RFC 6750 §3.1
/// `invalid_token` challenge.
fn invalid_token<P: Problem>(p: P) -> ApiError {
    ApiError::from(p).with_header("WWW-Authenticate", bearer_challenge(Some("invalid_token")))
}

fn token_problem(slug: &'static str, title: &'static str, detail: impl Into<String>) -> ApiError {
    ApiError::client(401, slug, title, detail)
        .with_header("WWW-Authenticate", bearer_challenge(Some("invalid_token")))
}

/// Authenticates a client API call (draft §8.1: "The home GP will authorize
/// the request as coming from a valid AP"). Every client route starts here.
pub async fn authenticate(req: &Request, env: &Env, cfg: &GpConfig) -> ApiResult<AuthedAp> {
    note_mtls_mode(cfg);
    // RFC 6750 §3.1: a request without credentials gets a challenge with
    // no error code.
    let Some(presented) = authorization(req, "Bearer") else {
        return Err(ApiError::client(
            401,
            "missing-token",
            "Authentication required",
            "this endpoint needs Authorization: Bearer <access token> (POST /oauth/token issues one)",
        )
        .with_header("WWW-Authenticate", bearer_challenge(None)));
    };
    let keys = token_keys(env)?;
    let now_secs = now_ms() / 1000;
    let claims = token::verify(&keys, &presented, now_secs).map_err(invalid_token)?;

    let cert = client_cert(req);
    check_token_binding(cfg.require_mtls, &cert, claims.cnf.as_ref()).map_err(invalid_token)?;

    let Some(record) = current_ap(
        env,
        cfg.ap_cache_secs,
        claims.ap.as_str(),
        claims.generation,
    )
    .await?
    else {
        return Err(token_problem(
            "invalid-token",
            "Invalid access token",
            format!(
                "the access token names AP {} which is not enrolled here",
                claims.ap
            ),
        ));
    };
    if record.suspended {
        return Err(ApiError::client(
            403,
            "ap-suspended",
            "AP suspended",
            format!(
                "AP {} is suspended by the GP operator{}",
                record.id,
                record
                    .suspended_reason
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            ),
        ));
    }
    if claims.generation != record.generation {
        return Err(token_problem(
            "token-revoked",
            "Access token revoked",
            "the AP's credentials changed after this token was issued (secret rotated, certificates updated or suspension); get a new token",
        ));
    }
    Ok(AuthedAp {
        record,
        claims,
        cert: cert.verified().copied(),
    })
}
