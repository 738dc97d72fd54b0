//! This GP's mapping-statement keys: which key signs, which are published,
//! and signing one statement (ARCHITECTURE.md, "Signed mapping
//! statements"; the format is `core::statement`'s).
//!
//! - `STATEMENT_KEYS` (secret, optional): comma-separated Ed25519 seeds
//!   (32 bytes, base64). The first signs; the others are published as
//!   `retired` so statements they signed still verify until they expire.
//! - Unset, the peer-signing key `GP_SIGNING_KEY` signs statements too.
//!   Reusing it is safe (a JWS signing input never starts with `"`, an
//!   RFC 9421 signature base always does, so one can never pass for the
//!   other) and is one secret fewer; a separate key lets the operator
//!   rotate statement keys on its own schedule, while the peer key is
//!   pinned in every peer's `PEERS` and changes only with them.
//! - `STATEMENT_RETIRED_KEYS` (var, optional): public keys (base64) still
//!   published as `retired` whose seeds are gone, e.g. the peer key for
//!   a day after moving to `STATEMENT_KEYS`.
//!
//! The parsed keys are cached per isolate (deriving a key costs a scalar
//! multiplication). A statement without a nonce is kept by the shard that
//! holds its mapping and answered again (`objects/shard/statements.rs`);
//! one with a nonce costs one Ed25519 signature per mapping answered.

use crate::core::mapping::Mapping;
use crate::core::sii::Sii;
use crate::core::statement::{parse_key_list, Claims, Issue, KeyStatus, StatementKey, SALT_BYTES};
use crate::edge::config::{per_env, secret, GpConfig};
use crate::edge::http::error::{ApiError, ApiResult};
use std::rc::Rc;
use worker::Env;

/// The signing key and every published public key.
pub struct Keys {
    /// Signs new statements.
    pub signing: StatementKey,
    /// Published: the signing key first (active), then retired ones.
    pub published: Vec<([u8; 32], KeyStatus)>,
}

/// The keys as read from one env: `None` when this GP has none.
struct Configured(Option<Rc<Keys>>);

/// This GP's statement keys; `None` when it has no key at all (then its
/// answers carry no statements). A malformed key list is the operator's
/// error, answered as an internal error. Read and parsed once per isolate
/// ([`per_env`]): every local hit signs with them.
pub fn keys(env: &Env) -> ApiResult<Option<Rc<Keys>>> {
    per_env(env, |env| read(env).map(Configured)).map(|c| c.0.clone())
}

fn read(env: &Env) -> ApiResult<Option<Rc<Keys>>> {
    let own = secret(env, "STATEMENT_KEYS");
    let peer = secret(env, "GP_SIGNING_KEY");
    let cfg = GpConfig::cached(env)?;
    let (seeds_text, source) = match (own, peer) {
        (Some(s), _) => (s, "STATEMENT_KEYS"),
        (None, Some(p)) => (p, "GP_SIGNING_KEY"),
        (None, None) => return Ok(None),
    };
    let bad = |name: &str, e: crate::core::statement::StatementError| {
        ApiError::Internal(format!("config {name}: {e}"))
    };
    let seeds = parse_key_list(&seeds_text).map_err(|e| bad(source, e))?;
    let Some((first, rest)) = seeds.split_first() else {
        return Err(ApiError::Internal(format!("config {source} holds no key")));
    };
    let signing = StatementKey::from_seed(first);
    let mut published = vec![(signing.public(), KeyStatus::Active)];
    for s in rest {
        published.push((StatementKey::from_seed(s).public(), KeyStatus::Retired));
    }
    for p in &cfg.statement_retired_keys {
        if !published.iter().any(|(k, _)| k == p) {
            published.push((*p, KeyStatus::Retired));
        }
    }
    Ok(Some(Rc::new(Keys { signing, published })))
}

/// Signs the statement of this GP's `mapping` of `sii` for a query with
/// `nonce`; `None` when this GP has no statement key.
pub fn sign(
    env: &Env,
    cfg: &GpConfig,
    sii: &Sii,
    mapping: &Mapping,
    nonce: Option<&str>,
) -> ApiResult<Option<String>> {
    let Some(keys) = keys(env)? else {
        return Ok(None);
    };
    let now_s = crate::edge::clock::now_ms() / 1000;
    sign_with(&keys, cfg, sii, mapping, nonce, now_s).map(Some)
}

/// Signs one statement with `keys`, dated `now_s`: one Ed25519 signature.
pub fn sign_with(
    keys: &Keys,
    cfg: &GpConfig,
    sii: &Sii,
    mapping: &Mapping,
    nonce: Option<&str>,
    now_s: u64,
) -> ApiResult<String> {
    let mut salt = [0u8; SALT_BYTES];
    getrandom::fill(&mut salt).map_err(|e| ApiError::Internal(format!("getrandom: {e}")))?;
    let claims = Claims::issue(Issue {
        gp: &cfg.id,
        sii,
        mapping,
        salt,
        now_s,
        ttl_s: cfg.statement_ttl_secs,
        nonce,
    });
    crate::edge::stats::count(|s| s.statements_signed += 1);
    keys.signing
        .sign(&claims)
        .map_err(|e| ApiError::Internal(format!("statement: {e}")))
}

/// The basis of a statement of `mapping` signed now (`core::statement::basis`):
/// a kept statement with another basis is signed again.
pub fn basis(keys: &Keys, cfg: &GpConfig, sii: &Sii, mapping: &Mapping) -> ApiResult<String> {
    crate::core::statement::basis(
        keys.signing.kid(),
        &cfg.id,
        sii,
        mapping,
        cfg.statement_ttl_secs,
    )
    .map_err(|e| ApiError::Internal(format!("statement: {e}")))
}
