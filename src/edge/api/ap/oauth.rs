//! `POST /oauth/token`: the OAuth 2.0 client credentials grant (RFC 6749
//! §4.4) for AP servers.
//!
//! draft §5: "an OAuth ClientID and secret are generated, and provided to
//! the app provider. The app provider can uses these to obtain access
//! tokens needed for accessing the glados APIs." The client id is the AP's
//! provider id. Tokens are `core::token` MAC'd tokens, bound to the client
//! certificate of the request when one is presented (RFC 8705 §3) and
//! required to be when REQUIRE_MTLS (draft §11.3).
use crate::edge::rpc::registry::Registry;

use crate::core::credentials::{cert_for_token, parse_basic_credentials, verify_client_secret};
use crate::core::encoding::{hex_decode, parse_form};
use crate::core::ssi::ProviderId;
use crate::core::token::{self, TokenClaims};
use crate::edge::auth::ap as auth;
use crate::edge::auth::ap::{authorization, client_cert};
use crate::edge::config::GpConfig;
use crate::edge::http::body::{media_type, read_capped, MAX_BODY_BYTES};
use crate::edge::http::error::{ApiError, ApiResult, OrInternal};
use crate::edge::http::request::Request;
use serde_json::json;
use worker::{Env, Response};

/// How the client authenticated (RFC 6749 §2.3.1), which decides the
/// status of an `invalid_client` error.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ClientAuth {
    Basic,
    Post,
    None,
}

/// RFC 6749 §5.2 `invalid_client`: "the authorization server MAY return an
/// HTTP 401 (Unauthorized) status code to indicate which HTTP
/// authentication schemes are supported. If the client attempted to
/// authenticate via the "Authorization" request header field, the
/// authorization server MUST respond with an HTTP 401 (Unauthorized) status
/// code and include the "WWW-Authenticate" response header field".
fn invalid_client(how: ClientAuth, description: impl Into<String>) -> ApiError {
    match how {
        ClientAuth::Post => ApiError::oauth(400, "invalid_client", description),
        ClientAuth::Basic | ClientAuth::None => ApiError::oauth(401, "invalid_client", description)
            .with_header("WWW-Authenticate", "Basic realm=\"glados\""),
    }
}

fn invalid_request(description: impl Into<String>) -> ApiError {
    ApiError::oauth(400, "invalid_request", description)
}

/// Handles one token request.
pub async fn token(mut req: Request, env: &Env, cfg: &GpConfig) -> ApiResult<Response> {
    auth::note_mtls_mode(cfg);
    // RFC 6749 §4.4.2: "The client makes a request to the token endpoint by
    // adding the following parameters using the
    // "application/x-www-form-urlencoded" format".
    // The body is read (capped) before anything can refuse the request: a
    // response that leaves the body unread makes the runtime close the
    // connection, which a keep-alive client may already be reusing.
    let form_type = media_type(&req).as_deref() == Some("application/x-www-form-urlencoded");
    let bytes = read_capped(&mut req, MAX_BODY_BYTES).await?;
    if !form_type {
        return Err(invalid_request(
            "the body must be application/x-www-form-urlencoded",
        ));
    }
    let cert = client_cert(&req);
    let basic = authorization(&req, "Basic");
    let text = String::from_utf8(bytes).map_err(|_| invalid_request("the body is not UTF-8"))?;
    let form = parse_form(&text).map_err(|e| invalid_request(format!("bad form body: {e}")))?;

    // RFC 6749 §3.2: "Parameters sent without a value MUST be treated as if
    // they were omitted from the request. ... Request and response
    // parameters MUST NOT be included more than once."
    let mut seen: Vec<&str> = Vec::new();
    for (name, _) in &form {
        if seen.contains(&name.as_str()) {
            return Err(invalid_request(format!("parameter {name} is repeated")));
        }
        seen.push(name);
    }
    let param = |name: &str| {
        form.iter()
            .find(|(n, v)| n == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
    };

    let Some(grant_type) = param("grant_type") else {
        return Err(invalid_request("grant_type is missing"));
    };
    if grant_type != "client_credentials" {
        return Err(ApiError::oauth(
            400,
            "unsupported_grant_type",
            format!("grant_type {grant_type:?} is not supported; use client_credentials"),
        ));
    }

    // RFC 6749 §2.3: "The client MUST NOT use more than one authentication
    // method in each request."
    let form_id = param("client_id");
    let form_secret = param("client_secret");
    let (how, client_id, secret) = match (basic, form_secret) {
        (Some(_), Some(_)) => {
            return Err(invalid_request(
                "use either HTTP Basic or client_secret in the body, not both",
            ))
        }
        (Some(b), None) => {
            let (id, secret) = parse_basic_credentials(&b)
                .map_err(|e| invalid_client(ClientAuth::Basic, e.to_string()))?;
            if form_id.is_some_and(|f| f != id) {
                return Err(invalid_request(
                    "client_id in the body differs from the Basic credentials",
                ));
            }
            (ClientAuth::Basic, id, secret)
        }
        (None, Some(secret)) => match form_id {
            Some(id) => (ClientAuth::Post, id.to_string(), secret.to_string()),
            None => return Err(invalid_request("client_secret without client_id")),
        },
        (None, None) => {
            return Err(invalid_client(
                ClientAuth::None,
                "client authentication is required: HTTP Basic or client_id and client_secret in the body",
            ))
        }
    };

    // One description for unknown client and wrong secret, so the endpoint
    // does not tell which client ids exist.
    const FAILED: &str = "client authentication failed (unknown client_id or wrong client_secret)";
    let Ok(ap_id) = ProviderId::parse(&client_id) else {
        return Err(invalid_client(how, FAILED));
    };
    let Some(stored) = Registry::new(env).get(ap_id.as_str()).await? else {
        return Err(invalid_client(how, FAILED));
    };
    let stored_hash = hex_decode(&stored.secret_hash)
        .map_err(|_| ApiError::Internal(format!("AP {ap_id}: stored secret hash is not hex")))?;
    if !verify_client_secret(&secret, &stored_hash) {
        return Err(invalid_client(how, FAILED));
    }
    let record = stored.record;
    crate::edge::rpc::registry::remember(&record);
    if record.suspended {
        // RFC 6749 §5.2 "unauthorized_client: The authenticated client is
        // not authorized to use this authorization grant type."
        return Err(ApiError::oauth(
            400,
            "unauthorized_client",
            "this AP is suspended by the GP operator; no tokens are issued",
        ));
    }
    let cnf = cert_for_token(cfg.require_mtls, &cert, &record.cert_fingerprints)
        .map_err(|e| invalid_client(how, e.to_string()))?;

    let now = crate::edge::clock::now_ms() / 1000;
    let claims = TokenClaims {
        ap: ap_id,
        generation: record.generation,
        issued_at: now,
        expires_at: now + cfg.token_ttl_secs,
        cnf,
    };
    let keys = crate::edge::config::token_keys(env)?;
    let access_token = token::issue(&keys, &claims);
    // RFC 6749 §5.1: "The authorization server MUST include the HTTP
    // "Cache-Control" response header field with a value of "no-store"".
    let mut resp = Response::from_json(&json!({
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": cfg.token_ttl_secs,
    }))
    .internal("token response")?;
    let h = resp.headers_mut();
    h.set("Cache-Control", "no-store").internal("header")?;
    h.set("Pragma", "no-cache").internal("header")?;
    Ok(resp)
}
