//! Verifying signed GP-to-GP requests and the replay (nonce) check; the
//! signing side is `outbound::peer`.
//!
//! draft §11.1: GPs are "fully trusted"; ARCHITECTURE.md, Invariants 6:
//! every GP-to-GP request is signed by the sender's key and verified
//! against the configured peer key, with a freshness window. The wire
//! format is RFC 9421 with Ed25519 (`crate::core::httpsig`); this module
//! adds the peers' keys (`public_key` in `PEERS`), the clock, the body and
//! the nonce store.
//!
//! Replay protection: a signature is accepted only within
//! [`httpsig::DEFAULT_WINDOW_S`] of its `created`, and its (keyid, nonce)
//! only once within that window. Nonces are remembered in [`PeerNonces`]
//! Durable Objects sharded by the nonce's hash ([`NONCE_SHARDS`]) — never
//! one object per GP on the peer query path — plus an isolate-local set
//! that refuses a replay to the same isolate without any DO hop. A fresh
//! nonce costs one DO request; the routed query may later fold that write
//! into the mapping-shard call it makes anyway.
use crate::edge::outbound::peer::decode_key;
use crate::edge::rpc::nonces::Nonces;

use crate::core::encoding::hex_encode;
use crate::core::httpsig::{self, PlainRequest};
use crate::edge::config::{GpConfig, Peer};
use crate::edge::http::body::read_capped;
use crate::edge::http::error::{ApiError, ApiResult, OrInternal};
use crate::edge::http::request::Request;
use sha2::{Digest, Sha256};
use std::cell::RefCell;
use std::collections::HashMap;
use worker::Env;

/// Isolate-local nonces kept before the set is pruned.
const LOCAL_NONCES_MAX: usize = 8192;

thread_local! {
    /// (hash of keyid + nonce) → expiry (ms) of nonces this isolate accepted.
    static LOCAL_NONCES: RefCell<HashMap<[u8; 32], u64>> = RefCell::new(HashMap::new());
}

/// The configured peer with this id.
pub fn peer<'a>(cfg: &'a GpConfig, id: &str) -> Option<&'a Peer> {
    cfg.peers.iter().find(|p| p.id == id)
}

/// Verifies a peer request and returns the sending peer's id with the body
/// (read here, capped at `cap`, because `content-digest` covers it).
pub async fn verify(
    req: &mut Request,
    env: &Env,
    cfg: &GpConfig,
    cap: usize,
) -> ApiResult<(String, Vec<u8>)> {
    let body = read_capped(req, cap).await?;
    let url = req.url().internal("request url")?;
    let host = url.host_str().unwrap_or("").to_ascii_lowercase();
    let authority = match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host,
    };
    let mut msg = PlainRequest {
        method: req.method().to_string(),
        authority,
        path: url.path().to_string(),
        query: url.query().map(str::to_string),
        headers: Vec::new(),
    };
    for name in ["signature-input", "signature", "content-digest"] {
        if let Ok(Some(v)) = req.headers().get(name) {
            msg.headers.push((name.into(), v));
        }
    }
    let now_s = crate::edge::clock::now_ms() / 1000;
    let window = httpsig::DEFAULT_WINDOW_S;
    let verified = httpsig::verify_request(&msg, !body.is_empty(), now_s, window, |id| {
        peer(cfg, id)
            .and_then(|p| p.public_key.as_deref())
            .and_then(decode_key)
    })
    .map_err(with_accept_signature)?;
    // A body, or a Content-Digest (which the signature may cover), is
    // checked, also when the body is empty: a signed digest of a body that
    // was stripped on the way must not pass (issue 14 item 6).
    let digest = req.headers().get("content-digest").ok().flatten();
    if !body.is_empty() || digest.is_some() {
        httpsig::check_content_digest(&digest.unwrap_or_default(), &body)
            .map_err(with_accept_signature)?;
    }
    // The nonce is remembered until the signature could no longer be
    // fresh: created + window (plus a second of rounding).
    let expires_ms = (verified.created + window + 1) * 1000;
    check_nonce(env, &verified.keyid, &verified.nonce, expires_ms).await?;
    Ok((verified.keyid, body))
}

/// A peer message names its sender (a claim's `from_gp`, an update's
/// `gp`, a strike notice's `from_gp`); it must be the GP that signed it, or
/// one peer could speak for another (draft §6: GPs talk only to the peers
/// they are configured with, each for itself).
pub fn require_sender(signer: &str, named: &str, title: &'static str) -> ApiResult<()> {
    if named == signer {
        return Ok(());
    }
    Err(ApiError::client(
        403,
        "peer-mismatch",
        title,
        format!("signed by {signer} but names {named}"),
    ))
}

/// RFC 9421 §5.1: a 401 tells the signer what to sign with `Accept-Signature`.
fn with_accept_signature(e: httpsig::SigError) -> ApiError {
    ApiError::from(e).with_header(
        "Accept-Signature",
        format!(
            "{}=(\"@method\" \"@authority\" \"@path\" \"@query\" \"content-digest\");created;keyid;nonce;alg=\"{}\"",
            httpsig::LABEL,
            httpsig::ALG
        ),
    )
}

fn replayed(keyid: &str) -> ApiError {
    ApiError::client(
        401,
        "peer-signature-replayed",
        "Peer request replayed",
        format!(
            "a request from {keyid} with this signature nonce was already accepted; \
             every peer request needs a fresh nonce"
        ),
    )
}

/// Refuses a (keyid, nonce) seen before within its window.
async fn check_nonce(env: &Env, keyid: &str, nonce: &str, expires_ms: u64) -> ApiResult<()> {
    let mut h = Sha256::new();
    h.update(keyid.as_bytes());
    h.update([0u8]);
    h.update(nonce.as_bytes());
    let key: [u8; 32] = h.finalize().into();
    let now = crate::edge::clock::now_ms();
    let seen_here = LOCAL_NONCES.with(|m| m.borrow().get(&key).is_some_and(|&exp| exp > now));
    if seen_here {
        return Err(replayed(keyid));
    }
    let fresh = Nonces::of(env, &key)
        .check(hex_encode(&key), expires_ms)
        .await?;
    if !fresh {
        return Err(replayed(keyid));
    }
    LOCAL_NONCES.with(|m| {
        let mut m = m.borrow_mut();
        if m.len() >= LOCAL_NONCES_MAX {
            m.retain(|_, exp| *exp > now);
            if m.len() >= LOCAL_NONCES_MAX {
                m.clear();
            }
        }
        m.insert(key, expires_ms);
    });
    Ok(())
}
