//! Messages to the AP registry (see objects/registry.rs) and its typed client.

use crate::core::credentials::CertFingerprint;
use crate::core::ratelimit::RateParams;
use crate::edge::clock::now_ms;
use crate::edge::http::error::ApiResult;
use crate::edge::rpc::{unexpected, Object};
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use worker::Env;

/// An enrolled AP as the registry keeps it (no secrets in here: this is
/// what admin responses and the isolate cache hold).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApRecord {
    /// Provider id (draft §2's "unique identifier for the communication
    /// service provider"); also the OAuth client_id.
    pub id: String,
    pub name: String,
    pub webhook_url: String,
    /// SHA-256 fingerprints of the AP's client certificates (draft §11.3).
    pub cert_fingerprints: Vec<CertFingerprint>,
    /// draft §11.1: "Glados trusts only a few of them to create bulk mappings".
    pub bulk_allowed: bool,
    pub rate_params: RateParams,
    pub suspended: bool,
    pub suspended_reason: Option<String>,
    /// Bumped whenever tokens issued so far must stop working (suspension,
    /// secret rotation, certificate change). Tokens carry it.
    pub generation: u64,
    /// Input of the webhook-secret derivation; bumped when it is rotated.
    pub webhook_generation: u64,
    /// draft §11.2 "rate limited based on the number of enrolled users";
    /// maintained by the mapping work (0 until then).
    pub enrolled_users: u64,
    /// draft §8.2.1 strikes; maintained by the mapping work.
    pub strikes: u32,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
}

/// A record with its secret hash: only ever between the object and the
/// token endpoint / admin glue, never in a response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredAp {
    pub record: ApRecord,
    /// Hex SHA-256 (`core::credentials::hash_client_secret`).
    pub secret_hash: String,
}

/// Changes an operator may make to an AP (`PATCH /admin/v1/aps/{id}`),
/// already validated by the admin glue.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ApPatch {
    pub name: Option<String>,
    pub webhook_url: Option<String>,
    pub cert_fingerprints: Option<Vec<CertFingerprint>>,
    pub bulk_allowed: Option<bool>,
    pub rate_params: Option<RateParams>,
}

/// What the glue asks of the object.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum RegistryOp {
    Enroll {
        record: ApRecord,
        secret_hash: String,
    },
    Get {
        id: String,
    },
    List,
    Update {
        id: String,
        patch: ApPatch,
        now_ms: u64,
    },
    Suspend {
        id: String,
        reason: Option<String>,
        now_ms: u64,
    },
    Reinstate {
        id: String,
        now_ms: u64,
    },
    Rotate {
        id: String,
        secret_hash: String,
        rotate_webhook: bool,
        now_ms: u64,
    },
    /// Enrolled users changed (mapping lifecycle: creations, bulk uploads,
    /// deletions, replacements).
    /// Applied once per `item` (the `ApItem` id): a redelivered item or a
    /// retry after a lost reply changes nothing.
    AdjustUsers {
        id: String,
        delta: i64,
        item: String,
        now_ms: u64,
    },
    /// One more strike (draft §8.2.1); suspends at the AP's threshold
    /// (draft §11.2, `RateParams::suspend_after_strikes`). Once per `item`.
    Strike {
        id: String,
        item: String,
        now_ms: u64,
    },
}

/// The object's answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum RegistryReply {
    Ap { ap: StoredAp },
    List { aps: Vec<ApRecord> },
    NotFound,
    Exists,
}

/// An operation on one AP that found no such AP, or an enrolment whose id
/// is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    NotFound,
    Exists,
}

/// The typed client of the GP's one registry object.
pub struct Registry<'e> {
    env: &'e Env,
    obj: Object,
}

impl<'e> Registry<'e> {
    pub fn new(env: &'e Env) -> Self {
        Registry {
            env,
            obj: Object::new("AP_REGISTRY", "registry"),
        }
    }

    /// Runs an operation that answers with one AP.
    pub async fn apply(&self, op: &RegistryOp) -> ApiResult<Result<StoredAp, Missing>> {
        match self.obj.call(self.env, op).await? {
            RegistryReply::Ap { ap } => Ok(Ok(ap)),
            RegistryReply::NotFound => Ok(Err(Missing::NotFound)),
            RegistryReply::Exists => Ok(Err(Missing::Exists)),
            other => Err(unexpected(&self.obj, "apply", other).into()),
        }
    }

    /// One AP, if enrolled.
    pub async fn get(&self, id: &str) -> ApiResult<Option<StoredAp>> {
        let op = RegistryOp::Get { id: id.to_owned() };
        Ok(self.apply(&op).await?.ok())
    }

    /// Every enrolled AP.
    pub async fn list(&self) -> ApiResult<Vec<ApRecord>> {
        match self.obj.call(self.env, &RegistryOp::List).await? {
            RegistryReply::List { aps } => Ok(aps),
            other => Err(unexpected(&self.obj, "list", other).into()),
        }
    }
}

thread_local! {
    static AP_CACHE: RefCell<HashMap<String, (Rc<ApRecord>, u64)>> = RefCell::new(HashMap::new());
}

/// Most APs an isolate caches; beyond this the cache starts over.
const MAX_CACHED_APS: usize = 10_000;

/// Puts a fresh registry entry into this isolate's cache (the token
/// endpoint and admin operations call this, so this isolate sees their
/// effect at once).
pub fn remember(record: &ApRecord) {
    let now = now_ms();
    AP_CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() >= MAX_CACHED_APS && !c.contains_key(&record.id) {
            c.clear();
        }
        c.insert(record.id.clone(), (Rc::new(record.clone()), now));
    });
}

/// The AP's registry entry, from this isolate's cache if it is younger
/// than AP_CACHE_SECONDS and not older than the token presented
/// (`min_generation`: a token issued after the cache was filled forces a
/// refresh rather than a false "revoked"). Shared, not copied: every AP
/// call reads it.
pub async fn current_ap(
    env: &Env,
    max_age_secs: u64,
    id: &str,
    min_generation: u64,
) -> ApiResult<Option<Rc<ApRecord>>> {
    let now = now_ms();
    let max_age = max_age_secs.saturating_mul(1000);
    let cached = AP_CACHE.with(|c| {
        c.borrow().get(id).and_then(|(rec, at)| {
            (now.saturating_sub(*at) < max_age && rec.generation >= min_generation)
                .then(|| Rc::clone(rec))
        })
    });
    if cached.is_some() {
        return Ok(cached);
    }
    match Registry::new(env).get(id).await? {
        Some(ap) => {
            remember(&ap.record);
            Ok(Some(Rc::new(ap.record)))
        }
        None => {
            AP_CACHE.with(|c| c.borrow_mut().remove(id));
            Ok(None)
        }
    }
}
