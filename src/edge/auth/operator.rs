//! The operator: `Authorization: Bearer <ADMIN_TOKEN>` on the admin API.

use crate::core::verification::ct_eq;
use crate::edge::auth::ap::authorization;
use crate::edge::config::admin_token;
use crate::edge::http::error::{ApiError, ApiResult};
use crate::edge::http::request::Request;
use sha2::{Digest, Sha256};
use worker::Env;

/// The realm named in `WWW-Authenticate` challenges.
const REALM: &str = "glados";

fn digest(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

/// Checks the operator's `Authorization: Bearer <ADMIN_TOKEN>`. Both sides
/// are hashed before the constant-time compare, so neither the content nor
/// the length of the secret leaks through timing.
pub fn check_admin(req: &Request, env: &Env) -> ApiResult<()> {
    let expected = admin_token(env)?;
    let challenge = format!("Bearer realm=\"{REALM}-admin\"");
    let Some(presented) = authorization(req, "Bearer") else {
        return Err(ApiError::client(
            401,
            "missing-token",
            "Authentication required",
            "the admin API needs Authorization: Bearer <ADMIN_TOKEN>",
        )
        .with_header("WWW-Authenticate", challenge));
    };
    if !ct_eq(&digest(&presented), &digest(&expected.0)) {
        return Err(ApiError::client(
            401,
            "invalid-admin-token",
            "Invalid admin token",
            "the bearer token is not this GP's admin token",
        )
        .with_header(
            "WWW-Authenticate",
            format!("{challenge}, error=\"invalid_token\""),
        ));
    }
    Ok(())
}
