//! Verification codes sent to an SII: for an AP's new mapping (draft §8.2)
//! and for the SII's holder managing their own discovery (beyond
//! GLADOS-00). One flow, so both have the same limits: the repeat rule
//! (same request within 30 s: same handle, nothing sent), the per-SII send
//! limit in the SII's shard, and a per-sender hourly limit — the AP's, or
//! for holders one shared budget under the reserved id `~holder`.
use crate::core::creation::{CodeMessage, Handle};
use crate::core::encoding::{hex_decode, hex_encode};
use crate::core::mapping::Party;
use crate::core::shard::shard_of;
use crate::core::sii::{Sii, SiiKind};
use crate::core::tags::MappingMeta;
use crate::core::verification::{generate_code, hash_code, EntropyFailure, SendLimited, SendScope};
use crate::edge::config::GpConfig;
use crate::edge::http::error::{ApiError, ApiResult};
use crate::edge::outbound::codes;
use crate::edge::rpc::ap::{ApClient, Limited};
use crate::edge::rpc::shard::{Begun, Shard};
use sha2::{Digest, Sha256};
use worker::Env;

/// Secure random bytes, or a retryable 503: nothing is stored or sent
/// without them (issue 14 item 5).
fn entropy(b: &mut [u8]) -> Result<(), EntropyFailure> {
    getrandom::fill(b).map_err(|e| {
        worker::console_error!("getrandom: {e}");
        EntropyFailure
    })
}

/// The 503 of [`EntropyFailure`], with when to retry.
fn no_entropy(e: EntropyFailure) -> ApiError {
    ApiError::from(e).with_header("Retry-After", "1")
}

pub fn random<const N: usize>() -> ApiResult<[u8; N]> {
    let mut b = [0u8; N];
    entropy(&mut b).map_err(no_entropy)?;
    Ok(b)
}

/// The pepper of stored code hashes: `CODE_PEPPER` if set, else derived
/// from `WEBHOOK_MASTER_KEY` under its own label (never stored with the
/// hashes, so a leaked shard does not give codes back).
pub fn pepper(env: &Env) -> ApiResult<Vec<u8>> {
    if let Some(s) = crate::edge::config::secret(env, "CODE_PEPPER") {
        return Ok(s.into_bytes());
    }
    let master = crate::edge::config::webhook_master_key(env)?;
    let mut h = Sha256::new();
    h.update(b"glados/code-pepper/v1\0");
    h.update(&master);
    Ok(h.finalize().to_vec())
}

/// Phone numbers as integers, for the sequential-number signal.
fn phone_number(sii: &Sii) -> Option<u64> {
    (sii.kind() == SiiKind::Phone)
        .then(|| sii.as_str().trim_start_matches('+').parse().ok())
        .flatten()
}

/// A verification to start: whose code, for which SII.
pub struct Start<'a> {
    pub sii: &'a Sii,
    /// The AP (its provider id), or `core::holder::HOLDER`.
    pub ap: &'a str,
    /// The AP's user id ("" for a holder).
    pub user: &'a str,
    /// Tags and label for the mapping (none for a holder).
    pub meta: MappingMeta,
}

/// A started (or repeated) verification.
pub struct Started {
    pub handle: Handle,
    pub expires_at_ms: u64,
    /// Whether a code message went out (false: a repeat within 30 s).
    pub sent: bool,
    /// The holder of the SII other than the caller: on this GP, or the
    /// one `lookup` found on a peer GP.
    pub existing: Option<Party>,
}

/// Starts a verification and sends its code (`message(code, ttl_ms)`),
/// unless the request repeats one whose code went out under 30 s ago.
/// Over a limit, or when the message cannot be sent, nothing is left
/// behind: the pending verification and both counters are rolled back.
///
/// `lookup` runs after both send limits passed and before the message goes
/// out, only for a code that is sent (issue 14 item 7: a lookup of peer
/// GPs is a signed request each, so only a send the sender's hourly limit
/// counted may cause one, and a repeat never does). It names a holder on a
/// peer GP, kept with the verification for repeats, or refuses the send
/// (the sender's send stays counted: it paid for the lookup).
pub async fn start<L, F>(
    env: &Env,
    cfg: &GpConfig,
    s: Start<'_>,
    message: impl FnOnce(&str, u64) -> CodeMessage,
    lookup: L,
) -> ApiResult<Started>
where
    L: FnOnce() -> F,
    F: std::future::Future<Output = ApiResult<Option<Party>>>,
{
    let now = crate::edge::clock::now_ms();
    let policy = &cfg.code_policy;
    let ttl_ms = policy.ttl_ms();
    let code = generate_code(policy, &mut entropy).map_err(no_entropy)?;
    let salt: [u8; 16] = random()?;
    let shard = Shard::of(env, cfg, s.sii);
    let Begun {
        reused,
        salt: salt_hex,
        expires_at_ms,
        existing,
        previous,
    } = shard
        .begin(
            s.sii,
            s.ap,
            s.user,
            hex_encode(&salt),
            hex_encode(&hash_code(&pepper(env)?, &salt, code.as_str())),
            ttl_ms,
            cfg.send_limit.per_sii_per_hour,
            s.meta,
            now,
        )
        .await?;
    let mut existing = existing;
    if !reused {
        let abort = || shard.abort(s.sii, s.ap, salt_hex.clone(), previous.clone(), now);
        // Per-sender limit (SMS pumping through one AP, or through the
        // public holder flow), then the message.
        let per_ap_per_hour = cfg.send_limit.per_ap_per_hour;
        let sent = ApClient::new(env, s.ap)
            .record_send(per_ap_per_hour, phone_number(s.sii), now)
            .await?;
        if let Err(Limited { retry_after_ms }) = sent {
            abort().await?;
            let e = ApiError::from(SendLimited {
                scope: SendScope::Ap,
                retry_after_ms,
            });
            return Err(match retry_after_ms {
                Some(ms) => e.with_header("Retry-After", ms.div_ceil(1000).to_string()),
                None => e,
            });
        }
        let holder = match lookup().await {
            Ok(h) => h,
            Err(e) => {
                abort().await?;
                return Err(e);
            }
        };
        if let Err(e) = codes::send(env, cfg, s.sii, &message(code.as_str(), ttl_ms)).await {
            abort().await?;
            ApClient::new(env, s.ap).refund_send().await?;
            return Err(e);
        }
        if let (None, Some(h)) = (&existing, holder) {
            // For repeats, which answer it without asking again.
            if let Err(e) = shard.note_holder(salt_hex.clone(), s.ap, h.clone()).await {
                worker::console_error!("noting the holder on a peer GP: {e:?}");
            }
            existing = Some(h);
        }
    }
    let salt: [u8; 16] = hex_decode(&salt_hex)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| ApiError::Internal("shard returned a bad salt".into()))?;
    Ok(Started {
        handle: Handle {
            shard: shard_of(s.sii, cfg.mapping_shards),
            salt,
        },
        expires_at_ms,
        sent: !reused,
        existing,
    })
}
