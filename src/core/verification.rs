//! Verification codes: how they are made, stored, checked and rate limited.
//!
//! draft §8.2: "Glados will then construct a short lived code, and either
//! email or SMS it to the user. [...] It is important for the security of
//! this solution that the AP - who is only partially trusted here - does not
//! know this prior to the user entering it. [...] The GP matches the code
//! with what it had previously sent. If there is a match, it considers the
//! mapping validated, and stores it."
//!
//! So: codes come from the caller's CSPRNG by rejection sampling (uniform,
//! no modulo bias); only a domain-separated SHA-256 of the code is stored;
//! the presented code is compared in constant time; a pending verification
//! expires and allows a bounded number of attempts. Sends are limited per
//! SII and per AP so that the code API cannot be used for SMS pumping.
//! Everything is pure: time (`now_ms`) and entropy are arguments.

use core::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::Problem;

/// Domain separator for [`hash_code`]; bump the suffix if the input layout changes.
const CODE_HASH_DOMAIN: &[u8] = b"glados/verification-code/v1\0";
/// Largest code length we accept in a policy (and the most characters we
/// look at in a presented code before calling it malformed).
const MAX_LENGTH: u8 = 16;
/// Smallest brute-force work factor: `alphabet^length ≥ max_attempts × this`,
/// i.e. an attacker who uses every attempt guesses right with p ≤ 1/100,000.
const MIN_GUESS_SPACE_PER_ATTEMPT: u128 = 100_000;
/// Bound on entropy rounds, so a broken entropy source (e.g. all 0xFF) ends
/// in an error instead of a hang.
const MAX_ENTROPY_ROUNDS: usize = 64;

/// How verification codes look and how long they live.
///
/// Built with [`CodePolicy::new`] or [`Default`]; deserialization validates too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "CodePolicyFields")]
pub struct CodePolicy {
    length: u8,
    alphabet: String,
    ttl_ms: u64,
    max_attempts: u32,
}

/// Unvalidated shape of [`CodePolicy`] (what config files contain).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CodePolicyFields {
    length: u8,
    alphabet: String,
    ttl_ms: u64,
    max_attempts: u32,
}

impl TryFrom<CodePolicyFields> for CodePolicy {
    type Error = CodePolicyError;
    fn try_from(f: CodePolicyFields) -> Result<Self, Self::Error> {
        CodePolicy::new(f.length, &f.alphabet, f.ttl_ms, f.max_attempts)
    }
}

impl Default for CodePolicy {
    /// Six decimal digits, valid ten minutes, five attempts (guess chance
    /// 5 in 1,000,000) — what users already know from other services.
    fn default() -> Self {
        CodePolicy {
            length: 6,
            alphabet: "0123456789".to_owned(),
            ttl_ms: 10 * 60 * 1000,
            max_attempts: 5,
        }
    }
}

/// Why a [`CodePolicy`] was refused (operator configuration error).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CodePolicyError {
    /// Length outside 4..=16.
    Length(u8),
    /// Alphabet has fewer than 2 or more than 64 characters, repeats a
    /// character, or holds anything but ASCII letters and digits.
    Alphabet,
    /// TTL outside 1 minute ..= 1 day.
    Ttl(u64),
    /// `max_attempts` is 0.
    NoAttempts,
    /// The code space is too small for the number of attempts allowed.
    TooGuessable,
}

impl fmt::Display for CodePolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CodePolicyError::Length(n) => write!(f, "code length {n} is outside 4..=16"),
            CodePolicyError::Alphabet => write!(
                f,
                "code alphabet must be 2..=64 distinct ASCII letters or digits"
            ),
            CodePolicyError::Ttl(ms) => {
                write!(f, "code lifetime {ms} ms is outside 1 minute ..= 1 day")
            }
            CodePolicyError::NoAttempts => write!(f, "max_attempts must be at least 1"),
            CodePolicyError::TooGuessable => {
                write!(f, "alphabet^length must be at least 100,000 × max_attempts")
            }
        }
    }
}

impl Problem for CodePolicyError {
    fn slug(&self) -> &'static str {
        "invalid-code-policy"
    }
    fn title(&self) -> &'static str {
        "Invalid verification-code policy"
    }
}

impl CodePolicy {
    /// Validates and builds a policy.
    pub fn new(
        length: u8,
        alphabet: &str,
        ttl_ms: u64,
        max_attempts: u32,
    ) -> Result<Self, CodePolicyError> {
        if !(4..=MAX_LENGTH).contains(&length) {
            return Err(CodePolicyError::Length(length));
        }
        let bytes = alphabet.as_bytes();
        let distinct = bytes
            .iter()
            .enumerate()
            .all(|(i, b)| !bytes.get(..i).unwrap_or_default().contains(b));
        if !(2..=64).contains(&bytes.len())
            || !bytes.iter().all(u8::is_ascii_alphanumeric)
            || !distinct
        {
            return Err(CodePolicyError::Alphabet);
        }
        if !(60_000..=86_400_000).contains(&ttl_ms) {
            return Err(CodePolicyError::Ttl(ttl_ms));
        }
        if max_attempts == 0 {
            return Err(CodePolicyError::NoAttempts);
        }
        // 64^16 = 2^96 fits in u128.
        let space = (bytes.len() as u128).pow(u32::from(length));
        if space < u128::from(max_attempts) * MIN_GUESS_SPACE_PER_ATTEMPT {
            return Err(CodePolicyError::TooGuessable);
        }
        Ok(CodePolicy {
            length,
            alphabet: alphabet.to_owned(),
            ttl_ms,
            max_attempts,
        })
    }

    /// Number of characters in a code.
    pub fn length(&self) -> u8 {
        self.length
    }
    /// Characters a code is drawn from.
    pub fn alphabet(&self) -> &str {
        &self.alphabet
    }
    /// How long a code stays valid after it was sent.
    pub fn ttl_ms(&self) -> u64 {
        self.ttl_ms
    }
    /// How many codes may be presented for one pending verification.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// True if the alphabet has no lower-case letters, so presented codes
    /// may be upper-cased (users type "ab12" for "AB12").
    fn case_insensitive(&self) -> bool {
        !self.alphabet.bytes().any(|b| b.is_ascii_lowercase())
    }
}

/// A freshly generated code. Its Debug output is redacted so it does not
/// end up in logs; send it, hash it, drop it.
#[derive(Clone, PartialEq, Eq)]
pub struct Code(String);

impl Code {
    /// The code's characters, to put into the SMS or email.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Code(<redacted>)")
    }
}

/// The entropy source failed, or kept returning bytes that rejection
/// sampling refuses. Never papered over: a zero buffer would read as the
/// code "000000".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntropyFailure;

impl fmt::Display for EntropyFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("no secure random bytes are available right now; nothing was stored or sent")
    }
}

impl Problem for EntropyFailure {
    fn slug(&self) -> &'static str {
        "entropy-unavailable"
    }
    fn title(&self) -> &'static str {
        "Randomness unavailable"
    }
    /// The GP's fault and passing: retry.
    fn status(&self) -> u16 {
        503
    }
}

/// Draws a uniformly random code.
///
/// `entropy` must fill the buffer with cryptographically secure random bytes
/// (getrandom in the worker) or fail; its failure is the result. Each character takes one byte; bytes at or
/// above the largest multiple of the alphabet size are rejected, so every
/// character is exactly uniform (no modulo bias).
pub fn generate_code(
    policy: &CodePolicy,
    entropy: &mut impl FnMut(&mut [u8]) -> Result<(), EntropyFailure>,
) -> Result<Code, EntropyFailure> {
    let alphabet = policy.alphabet.as_bytes();
    let m = alphabet.len();
    let want = usize::from(policy.length);
    let mut out = String::with_capacity(want);
    let mut buf = [0u8; 32];
    for _ in 0..MAX_ENTROPY_ROUNDS {
        entropy(&mut buf)?;
        for &b in &buf {
            if out.len() == want {
                return Ok(Code(out));
            }
            if let Some(&c) = accept(b, m).and_then(|i| alphabet.get(i)) {
                out.push(char::from(c));
            }
        }
        if out.len() == want {
            return Ok(Code(out));
        }
    }
    Err(EntropyFailure)
}

/// Rejection sampling step: maps a random byte to a symbol index in `0..m`,
/// or rejects it. Bytes at or above the largest multiple of `m` that fits in
/// 256 are rejected, so each index is hit by exactly `256 / m` byte values.
fn accept(b: u8, m: usize) -> Option<usize> {
    if m == 0 || m > 256 {
        return None;
    }
    let limit = 256 - (256 % m);
    let b = usize::from(b);
    (b < limit).then_some(b % m)
}

/// Normalizes what a user typed: drops surrounding and inner whitespace and
/// dashes ("123 456", "123-456"), upper-cases if the alphabet is upper-case.
/// Returns `None` if anything else is not in the alphabet or the length is
/// wrong — such input can never match and does not cost an attempt.
pub fn normalize_presented(policy: &CodePolicy, presented: &str) -> Option<String> {
    let mut out = String::with_capacity(usize::from(policy.length));
    for ch in presented.chars() {
        if ch.is_whitespace() || ch == '-' {
            continue;
        }
        let ch = if policy.case_insensitive() {
            ch.to_ascii_uppercase()
        } else {
            ch
        };
        if !ch.is_ascii() || !policy.alphabet.as_bytes().contains(&(ch as u8)) {
            return None;
        }
        if out.len() >= usize::from(policy.length) {
            return None;
        }
        out.push(ch);
    }
    (out.len() == usize::from(policy.length)).then_some(out)
}

/// What is stored instead of the code: SHA-256 over a domain separator, the
/// length-prefixed `pepper` and `salt`, then the code.
///
/// `salt` should be the pending verification's random id, so equal codes
/// hash differently. `pepper` should be a worker secret (not stored next to
/// the hashes): a 6-digit code has only 10^6 values, so without a pepper a
/// leaked row would give the code back in a million hashes.
pub fn hash_code(pepper: &[u8], salt: &[u8], code: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(CODE_HASH_DOMAIN);
    h.update((pepper.len() as u64).to_be_bytes());
    h.update(pepper);
    h.update((salt.len() as u64).to_be_bytes());
    h.update(salt);
    h.update(code.as_bytes());
    h.finalize().into()
}

/// Compares two equal-length byte strings without data-dependent branches or
/// early exit, so timing does not reveal how many leading bytes matched.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    // black_box keeps the optimiser from turning the fold into an early exit.
    core::hint::black_box(diff) == 0
}

/// Checks a presented code against a stored hash (constant-time compare).
/// The presented code is normalized first; malformed input is `false`.
pub fn verify_code(
    policy: &CodePolicy,
    stored_hash: &[u8; 32],
    pepper: &[u8],
    salt: &[u8],
    presented: &str,
) -> bool {
    match normalize_presented(policy, presented) {
        Some(code) => ct_eq(&hash_code(pepper, salt, &code), stored_hash),
        None => false,
    }
}

/// Why a presented code was not accepted.
///
/// Statuses: a wrong code is 422 (well-formed request, content refused; the
/// client may retry); expired and exhausted are both 410 Gone because this
/// pending verification is dead and only a new send helps — 429 would
/// suggest that waiting and retrying works, which it does not.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum VerifyError {
    /// The code did not match; `attempts_left` more may be tried.
    WrongCode {
        /// Attempts remaining for this pending verification.
        attempts_left: u32,
    },
    /// The input cannot be a code of this policy (wrong length or characters);
    /// no attempt was used.
    MalformedCode,
    /// The code's lifetime is over.
    Expired,
    /// All attempts are used up.
    Exhausted,
    /// This pending verification already succeeded.
    AlreadyVerified,
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VerifyError::WrongCode { attempts_left } => write!(
                f,
                "the verification code does not match; {attempts_left} attempt(s) left"
            ),
            VerifyError::MalformedCode => write!(
                f,
                "the verification code has the wrong length or characters outside its alphabet"
            ),
            VerifyError::Expired => {
                write!(f, "the verification code has expired; request a new one")
            }
            VerifyError::Exhausted => {
                write!(f, "too many wrong codes were presented; request a new one")
            }
            VerifyError::AlreadyVerified => {
                write!(f, "this verification has already been completed")
            }
        }
    }
}

impl Problem for VerifyError {
    fn slug(&self) -> &'static str {
        match self {
            VerifyError::WrongCode { .. } => "wrong-code",
            VerifyError::MalformedCode => "malformed-code",
            VerifyError::Expired => "verification-expired",
            VerifyError::Exhausted => "verification-exhausted",
            VerifyError::AlreadyVerified => "verification-already-completed",
        }
    }
    fn title(&self) -> &'static str {
        match self {
            VerifyError::WrongCode { .. } => "Wrong verification code",
            VerifyError::MalformedCode => "Malformed verification code",
            VerifyError::Expired => "Verification code expired",
            VerifyError::Exhausted => "Verification attempts exhausted",
            VerifyError::AlreadyVerified => "Verification already completed",
        }
    }
    fn status(&self) -> u16 {
        match self {
            VerifyError::WrongCode { .. } => 422,
            VerifyError::MalformedCode => 400,
            VerifyError::Expired | VerifyError::Exhausted => 410,
            VerifyError::AlreadyVerified => 409,
        }
    }
}

/// Lifecycle of a pending verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PendingState {
    /// Waiting for the user's code.
    Open,
    /// The right code was presented; the mapping may be stored.
    Verified,
}

/// A code that was sent and not yet confirmed, as the SII's shard stores it.
///
/// The plain code is never kept: only its [`hash_code`] under `salt`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingVerification {
    /// Random per-verification salt (also a fine id for the row).
    pub salt: [u8; 16],
    /// `hash_code(pepper, salt, code)`.
    pub code_hash: [u8; 32],
    /// When the code was sent.
    pub created_at_ms: u64,
    /// First instant at which the code is no longer accepted.
    pub expires_at_ms: u64,
    /// Codes presented so far (malformed input not counted).
    pub attempts: u32,
    /// Copied from the policy at creation, so a policy change does not alter
    /// codes already out.
    pub max_attempts: u32,
    /// Where in its lifecycle this verification is.
    pub state: PendingState,
    /// draft §8.2.1 across GPs: the preferred holder on a peer GP found
    /// when the code was sent, so a repeated request answers it again
    /// without asking the peers again (issue 14 item 7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<crate::core::mapping::Party>,
}

impl PendingVerification {
    /// Records a code just generated (and about to be sent) at `now_ms`.
    pub fn new(
        policy: &CodePolicy,
        pepper: &[u8],
        salt: [u8; 16],
        code: &Code,
        now_ms: u64,
    ) -> Self {
        PendingVerification {
            salt,
            code_hash: hash_code(pepper, &salt, code.as_str()),
            created_at_ms: now_ms,
            expires_at_ms: now_ms.saturating_add(policy.ttl_ms),
            attempts: 0,
            max_attempts: policy.max_attempts,
            state: PendingState::Open,
            holder: None,
        }
    }

    /// True once the glue may delete this row (expired, used up or done).
    pub fn is_dead(&self, now_ms: u64) -> bool {
        self.state == PendingState::Verified
            || now_ms >= self.expires_at_ms
            || self.attempts >= self.max_attempts
    }

    /// Checks a presented code at `now_ms`. Order: already verified, expired,
    /// exhausted, malformed, then the constant-time comparison; a wrong code
    /// uses one attempt. On `Ok` the state is `Verified` and the glue stores
    /// the mapping (draft §8.2: "If there is a match, it considers the
    /// mapping validated, and stores it").
    pub fn attempt(
        &mut self,
        policy: &CodePolicy,
        pepper: &[u8],
        presented: &str,
        now_ms: u64,
    ) -> Result<(), VerifyError> {
        if self.state == PendingState::Verified {
            return Err(VerifyError::AlreadyVerified);
        }
        if now_ms >= self.expires_at_ms {
            return Err(VerifyError::Expired);
        }
        if self.attempts >= self.max_attempts {
            return Err(VerifyError::Exhausted);
        }
        let Some(code) = normalize_presented(policy, presented) else {
            return Err(VerifyError::MalformedCode);
        };
        self.attempts = self.attempts.saturating_add(1);
        if ct_eq(&hash_code(pepper, &self.salt, &code), &self.code_hash) {
            self.state = PendingState::Verified;
            Ok(())
        } else {
            Err(VerifyError::WrongCode {
                attempts_left: self.max_attempts.saturating_sub(self.attempts),
            })
        }
    }
}

impl PendingVerification {
    /// As [`Self::attempt`], except that a verification already verified
    /// passes again with its right code until it expires (no attempt
    /// counted): a caller that verified a code and failed before storing
    /// the mapping retries with the same code (issue 14 item 7 splits
    /// verifying from storing).
    pub fn attempt_again(
        &mut self,
        policy: &CodePolicy,
        pepper: &[u8],
        presented: &str,
        now_ms: u64,
    ) -> Result<(), VerifyError> {
        if self.state != PendingState::Verified {
            return self.attempt(policy, pepper, presented, now_ms);
        }
        if now_ms >= self.expires_at_ms {
            return Err(VerifyError::Expired);
        }
        let right = normalize_presented(policy, presented)
            .is_some_and(|c| ct_eq(&hash_code(pepper, &self.salt, &c), &self.code_hash));
        if right {
            Ok(())
        } else {
            Err(VerifyError::AlreadyVerified)
        }
    }
}

/// Counts events in a sliding window, approximated from two fixed windows
/// (the previous window's count weighted by how much of it still overlaps).
/// Small enough to persist per SII and per AP.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowCounter {
    /// Start of the current fixed window (a multiple of the window length).
    pub window_start_ms: u64,
    /// Events in the current fixed window.
    pub current: u32,
    /// Events in the fixed window just before it.
    pub previous: u32,
}

impl WindowCounter {
    /// Rolls the fixed windows forward to the one containing `now_ms`.
    fn roll(&mut self, window_ms: u64, now_ms: u64) {
        let window_ms = window_ms.max(1);
        let start = now_ms - now_ms % window_ms;
        if start <= self.window_start_ms {
            return; // same window, or the clock stepped back
        }
        self.previous = if start - self.window_start_ms == window_ms {
            self.current
        } else {
            0
        };
        self.current = 0;
        self.window_start_ms = start;
    }

    /// Estimated events in the last `window_ms` at `now_ms`.
    pub fn estimate(&self, window_ms: u64, now_ms: u64) -> f64 {
        let mut c = self.clone();
        c.roll(window_ms, now_ms);
        let into = now_ms.saturating_sub(c.window_start_ms) as f64;
        let overlap = 1.0 - (into / window_ms.max(1) as f64).min(1.0);
        f64::from(c.previous) * overlap + f64::from(c.current)
    }

    /// Records one event if fewer than `limit` are estimated in the window;
    /// otherwise says roughly when one would fit.
    pub fn try_record(
        &mut self,
        limit: u32,
        window_ms: u64,
        now_ms: u64,
    ) -> Result<(), Option<u64>> {
        self.roll(window_ms, now_ms);
        if self.estimate(window_ms, now_ms) + 1.0 <= f64::from(limit) {
            self.current = self.current.saturating_add(1);
            return Ok(());
        }
        if limit == 0 {
            return Err(None);
        }
        // Until the current window ends the estimate only falls as the
        // previous window slides out; by the next boundary it is `current`.
        let next = self.window_start_ms.saturating_add(window_ms.max(1));
        Err(Some(next.saturating_sub(now_ms).max(1)))
    }
}

/// Which send limit refused a code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendScope {
    /// Too many codes to this SII (one victim's phone being flooded).
    Sii,
    /// Too many codes requested by this AP (SMS pumping through an AP).
    Ap,
}

/// A code send was refused by [`SendLimit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendLimited {
    /// Which counter was full.
    pub scope: SendScope,
    /// Milliseconds until a send may be admitted; `None` if never (limit 0).
    pub retry_after_ms: Option<u64>,
}

impl fmt::Display for SendLimited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let who = match self.scope {
            SendScope::Sii => "this identifier",
            SendScope::Ap => "this provider",
        };
        match self.retry_after_ms {
            Some(ms) => write!(
                f,
                "too many verification codes sent to {who}; retry in {ms} ms"
            ),
            None => write!(f, "verification codes to {who} are not allowed"),
        }
    }
}

impl Problem for SendLimited {
    fn slug(&self) -> &'static str {
        "too-many-codes"
    }
    fn title(&self) -> &'static str {
        "Too many verification codes"
    }
    fn status(&self) -> u16 {
        429
    }
}

/// Hourly limits on sending codes (SMS-pumping and flooding protection).
///
/// The per-SII counter lives in the SII's shard and the per-AP counter in
/// the AP registry, so the glue checks them one after the other; a send
/// refused by the second has still counted against the first, which errs on
/// the side of sending less.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendLimit {
    /// Codes to one SII per hour, whichever AP asks.
    pub per_sii_per_hour: u32,
    /// Codes one AP may trigger per hour.
    pub per_ap_per_hour: u32,
}

impl Default for SendLimit {
    /// 5 per SII per hour (enough for typos and resends); 1,000 per AP per
    /// hour (operators should raise this for large APs).
    fn default() -> Self {
        SendLimit {
            per_sii_per_hour: 5,
            per_ap_per_hour: 1_000,
        }
    }
}

/// One hour, the window of [`SendLimit`].
pub const SEND_WINDOW_MS: u64 = 3_600_000;

impl SendLimit {
    /// Counts a send to one SII, or refuses it.
    pub fn record_sii(&self, counter: &mut WindowCounter, now_ms: u64) -> Result<(), SendLimited> {
        counter
            .try_record(self.per_sii_per_hour, SEND_WINDOW_MS, now_ms)
            .map_err(|retry_after_ms| SendLimited {
                scope: SendScope::Sii,
                retry_after_ms,
            })
    }

    /// Counts a send triggered by one AP, or refuses it.
    pub fn record_ap(&self, counter: &mut WindowCounter, now_ms: u64) -> Result<(), SendLimited> {
        counter
            .try_record(self.per_ap_per_hour, SEND_WINDOW_MS, now_ms)
            .map_err(|retry_after_ms| SendLimited {
                scope: SendScope::Ap,
                retry_after_ms,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Deterministic byte stream for tests (not for production use).
    fn counter_entropy(seed: u8) -> impl FnMut(&mut [u8]) -> Result<(), EntropyFailure> {
        let mut x = seed;
        move |buf: &mut [u8]| {
            for b in buf {
                x = x.wrapping_mul(37).wrapping_add(11);
                *b = x;
            }
            Ok(())
        }
    }

    #[test]
    fn default_policy_is_valid() {
        let p = CodePolicy::default();
        assert_eq!(
            CodePolicy::new(p.length(), p.alphabet(), p.ttl_ms(), p.max_attempts()).unwrap(),
            p
        );
    }

    #[test]
    fn policy_validation() {
        assert_eq!(
            CodePolicy::new(3, "0123456789", 600_000, 5),
            Err(CodePolicyError::Length(3))
        );
        assert_eq!(
            CodePolicy::new(6, "0012345678", 600_000, 5),
            Err(CodePolicyError::Alphabet)
        );
        assert_eq!(
            CodePolicy::new(6, "01234-6789", 600_000, 5),
            Err(CodePolicyError::Alphabet)
        );
        assert_eq!(
            CodePolicy::new(6, "0123456789", 1_000, 5),
            Err(CodePolicyError::Ttl(1_000))
        );
        assert_eq!(
            CodePolicy::new(6, "0123456789", 600_000, 0),
            Err(CodePolicyError::NoAttempts)
        );
        // 10^6 < 100,000 × 11.
        assert_eq!(
            CodePolicy::new(6, "0123456789", 600_000, 11),
            Err(CodePolicyError::TooGuessable)
        );
        assert!(CodePolicy::new(8, "ABCDEFGHJKLMNPQRSTUVWXYZ23456789", 600_000, 10).is_ok());
        assert_eq!(CodePolicyError::TooGuessable.slug(), "invalid-code-policy");
    }

    #[test]
    fn policy_deserialization_validates() {
        // serde_json is not a core dependency; exercise try_from directly.
        let bad = CodePolicyFields {
            length: 2,
            alphabet: "01".into(),
            ttl_ms: 600_000,
            max_attempts: 1,
        };
        assert!(CodePolicy::try_from(bad).is_err());
    }

    #[test]
    fn generated_codes_match_policy() {
        let p = CodePolicy::default();
        let mut e = counter_entropy(1);
        for _ in 0..100 {
            let c = generate_code(&p, &mut e).unwrap();
            assert_eq!(c.as_str().len(), 6);
            assert!(c.as_str().bytes().all(|b| b.is_ascii_digit()));
        }
        assert_eq!(format!("{:?}", Code("123456".into())), "Code(<redacted>)");
    }

    #[test]
    fn rejection_sampling_skips_biased_bytes() {
        let p = CodePolicy::default();
        // 250..=255 are rejected for a 10-symbol alphabet; 9 → '9', 19 → '9'.
        let mut e = |buf: &mut [u8]| {
            for (i, b) in buf.iter_mut().enumerate() {
                *b = if i % 2 == 0 { 255 } else { 19 };
            }
            Ok(())
        };
        assert_eq!(generate_code(&p, &mut e).unwrap().as_str(), "999999");
        // A source that only ever yields rejected bytes fails instead of hanging.
        let mut stuck = |buf: &mut [u8]| {
            buf.fill(0xFF);
            Ok(())
        };
        assert_eq!(generate_code(&p, &mut stuck), Err(EntropyFailure));
    }

    /// Issue 14 item 5: a failing source is a failure, not "000000" (the
    /// worker used to drop getrandom's error and hand on a zero buffer).
    #[test]
    fn a_failing_entropy_source_is_an_error_never_a_code() {
        let p = CodePolicy::default();
        let mut calls = 0;
        let mut failing = |buf: &mut [u8]| {
            calls += 1;
            buf.fill(0);
            Err(EntropyFailure)
        };
        assert_eq!(generate_code(&p, &mut failing), Err(EntropyFailure));
        assert_eq!(calls, 1, "no retry on a failed source");
        assert_eq!(
            (EntropyFailure.status(), EntropyFailure.slug()),
            (503, "entropy-unavailable")
        );
    }

    #[test]
    fn every_symbol_is_hit_by_equally_many_bytes() {
        for m in [2usize, 10, 26, 32, 36, 62, 64] {
            let mut counts = vec![0u32; m];
            for b in 0..=255u8 {
                if let Some(i) = accept(b, m) {
                    counts[i] += 1;
                }
            }
            assert!(
                counts.iter().all(|&c| c == 256 / m as u32),
                "m={m}: {counts:?}"
            );
        }
        assert_eq!(accept(249, 10), Some(9));
        assert_eq!(accept(250, 10), None);
    }

    #[test]
    fn normalization() {
        let p = CodePolicy::default();
        assert_eq!(
            normalize_presented(&p, " 123-456 ").as_deref(),
            Some("123456")
        );
        assert_eq!(
            normalize_presented(&p, "123 456").as_deref(),
            Some("123456")
        );
        assert_eq!(normalize_presented(&p, "12345"), None);
        assert_eq!(normalize_presented(&p, "1234567"), None);
        assert_eq!(normalize_presented(&p, "12345a"), None);
        assert_eq!(normalize_presented(&p, "١٢٣٤٥٦"), None);
        let up = CodePolicy::new(6, "ABCDEFGH23456789", 600_000, 5).unwrap();
        assert_eq!(
            normalize_presented(&up, "ab-cd23").as_deref(),
            Some("ABCD23")
        );
    }

    #[test]
    fn hash_is_domain_separated_and_salted() {
        let a = hash_code(b"pep", b"salt1", "123456");
        assert_eq!(a, hash_code(b"pep", b"salt1", "123456"));
        assert_ne!(a, hash_code(b"pep", b"salt2", "123456"));
        assert_ne!(a, hash_code(b"pe", b"psalt1", "123456"), "length prefixes");
        assert_ne!(a, hash_code(b"pep", b"salt1", "123457"));
        let p = CodePolicy::default();
        assert!(verify_code(&p, &a, b"pep", b"salt1", "123 456"));
        assert!(!verify_code(&p, &a, b"other", b"salt1", "123456"));
    }

    #[test]
    fn ct_eq_basics() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
        assert!(ct_eq(b"", b""));
    }

    fn pending(now: u64) -> (CodePolicy, PendingVerification) {
        let p = CodePolicy::default();
        let code = Code("424242".into());
        (
            p.clone(),
            PendingVerification::new(&p, b"pepper", [7; 16], &code, now),
        )
    }

    /// Issue 14 item 7: verifying and storing are two steps; between them a
    /// verified code passes again (a retry), nothing else does.
    #[test]
    fn a_verified_code_passes_again_until_it_expires() {
        let (p, mut v) = pending(1_000);
        assert!(matches!(
            v.attempt_again(&p, b"pepper", "000000", 1_500),
            Err(VerifyError::WrongCode { attempts_left: 4 })
        ));
        assert_eq!(v.attempt_again(&p, b"pepper", "424242", 2_000), Ok(()));
        assert_eq!(v.state, PendingState::Verified);
        assert_eq!(v.attempt_again(&p, b"pepper", "424 242", 2_001), Ok(()));
        assert_eq!(v.attempts, 2, "a retry counts no attempt");
        assert_eq!(
            v.attempt_again(&p, b"pepper", "000000", 2_002),
            Err(VerifyError::AlreadyVerified)
        );
        assert_eq!(
            v.attempt_again(&p, b"pepper", "424242", v.expires_at_ms),
            Err(VerifyError::Expired)
        );
    }

    #[test]
    fn right_code_verifies_once() {
        let (p, mut v) = pending(1_000);
        assert_eq!(v.attempt(&p, b"pepper", "424-242", 2_000), Ok(()));
        assert_eq!(v.state, PendingState::Verified);
        assert!(v.is_dead(2_000));
        let again = v.attempt(&p, b"pepper", "424242", 2_001).unwrap_err();
        assert_eq!(again, VerifyError::AlreadyVerified);
        assert_eq!(again.status(), 409);
    }

    #[test]
    fn wrong_codes_count_down_then_exhaust() {
        let (p, mut v) = pending(0);
        for left in (0..5).rev() {
            let e = v.attempt(&p, b"pepper", "000000", 10).unwrap_err();
            assert_eq!(
                e,
                VerifyError::WrongCode {
                    attempts_left: left
                }
            );
            assert_eq!((e.slug(), e.status()), ("wrong-code", 422));
        }
        // Even the right code is refused now.
        let e = v.attempt(&p, b"pepper", "424242", 10).unwrap_err();
        assert_eq!(e, VerifyError::Exhausted);
        assert_eq!((e.slug(), e.status()), ("verification-exhausted", 410));
        assert!(v.is_dead(10));
    }

    #[test]
    fn malformed_codes_cost_no_attempt() {
        let (p, mut v) = pending(0);
        for _ in 0..20 {
            assert_eq!(
                v.attempt(&p, b"pepper", "abc", 10),
                Err(VerifyError::MalformedCode)
            );
        }
        assert_eq!(v.attempts, 0);
        assert_eq!(v.attempt(&p, b"pepper", "424242", 10), Ok(()));
    }

    #[test]
    fn expiry_beats_a_right_code() {
        let (p, mut v) = pending(1_000);
        assert_eq!(v.expires_at_ms, 601_000);
        let e = v.attempt(&p, b"pepper", "424242", 601_000).unwrap_err();
        assert_eq!(e, VerifyError::Expired);
        assert_eq!((e.slug(), e.status()), ("verification-expired", 410));
        assert_eq!(v.attempt(&p, b"pepper", "424242", 600_999), Ok(()));
    }

    #[test]
    fn pending_with_huge_now_does_not_overflow() {
        let (_, v) = pending(u64::MAX - 5);
        assert_eq!(v.expires_at_ms, u64::MAX);
    }

    #[test]
    fn send_limit_per_sii() {
        let l = SendLimit::default();
        let mut c = WindowCounter::default();
        let t0 = 10 * SEND_WINDOW_MS;
        for i in 0..5 {
            l.record_sii(&mut c, t0 + i).unwrap();
        }
        let e = l.record_sii(&mut c, t0 + 10).unwrap_err();
        assert_eq!(e.scope, SendScope::Sii);
        assert_eq!(e.retry_after_ms, Some(SEND_WINDOW_MS - 10));
        assert_eq!((e.slug(), e.status()), ("too-many-codes", 429));
        // Just after the boundary the previous window still weighs ~fully.
        assert!(l.record_sii(&mut c, t0 + SEND_WINDOW_MS + 1).is_err());
        // Halfway into the next window, half the old count has slid out.
        for _ in 0..2 {
            l.record_sii(&mut c, t0 + SEND_WINDOW_MS * 3 / 2).unwrap();
        }
        assert!(l.record_sii(&mut c, t0 + SEND_WINDOW_MS * 3 / 2).is_err());
        // Two windows later everything is forgotten.
        for _ in 0..5 {
            l.record_sii(&mut c, t0 + SEND_WINDOW_MS * 4).unwrap();
        }
    }

    #[test]
    fn send_limit_per_ap_and_zero() {
        let l = SendLimit {
            per_sii_per_hour: 0,
            per_ap_per_hour: 2,
        };
        let mut c = WindowCounter::default();
        let e = l.record_sii(&mut c, 5).unwrap_err();
        assert_eq!(e.retry_after_ms, None);
        let mut a = WindowCounter::default();
        l.record_ap(&mut a, 5).unwrap();
        l.record_ap(&mut a, 6).unwrap();
        assert_eq!(l.record_ap(&mut a, 7).unwrap_err().scope, SendScope::Ap);
    }

    proptest! {
        #[test]
        fn sliding_window_never_admits_more_than_twice_limit_per_window(
            limit in 1u32..20,
            gaps in proptest::collection::vec(0u64..600_000, 1..300),
        ) {
            // The two-window approximation admits at most `limit` per fixed
            // window, hence at most 2 × limit in any window-long interval.
            let mut c = WindowCounter::default();
            let mut now = 0u64;
            let mut admitted: Vec<u64> = Vec::new();
            for g in gaps {
                now += g;
                if c.try_record(limit, SEND_WINDOW_MS, now).is_ok() {
                    admitted.push(now);
                }
            }
            for (i, &t) in admitted.iter().enumerate() {
                let in_window = admitted[i..].iter().take_while(|&&u| u < t + SEND_WINDOW_MS).count();
                prop_assert!(in_window as u32 <= 2 * limit);
            }
            for w in admitted.chunk_by(|a, b| a / SEND_WINDOW_MS == b / SEND_WINDOW_MS) {
                prop_assert!(w.len() as u32 <= limit);
            }
        }

        #[test]
        fn wrong_code_never_verifies(code in "[0-9]{6}", other in "[0-9]{6}") {
            prop_assume!(code != other);
            let p = CodePolicy::default();
            let mut v = PendingVerification::new(&p, b"k", [1; 16], &Code(code), 0);
            prop_assert!(v.attempt(&p, b"k", &other, 1).is_err());
        }
    }
}
