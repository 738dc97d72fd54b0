//! Signed mapping statements (issue 16 item 1, beyond GLADOS-00).
//!
//! GLADOS-00 asks an AP to trust its home GP's answer, including what the
//! home GP relays from a peer. The MIMI discovery requirements (R1, R4)
//! ask for a mapping the sender can verify. So the GP that holds a mapping
//! signs a statement of it when it answers a query, and the home GP
//! passes that statement on unchanged: the AP checks it against the
//! holding GP's published keys and the SII it asked about.
//!
//! # Format: JWS compact serialization, EdDSA (RFC 7515, RFC 8037)
//!
//! `base64url(header) "." base64url(claims) "." base64url(Ed25519 signature)`
//! over the ASCII of the first two parts. JWS rather than COSE_Sign1
//! because an AP checks it with what every platform has: base64url, JSON
//! and WebCrypto's Ed25519 (the README's verifier is 40 lines of plain
//! JavaScript), it travels as one string inside the JSON answers, and the
//! keys publish as a standard JWK Set. COSE would save some bytes but needs
//! a CBOR codec on both sides and in every AP.
//!
//! **Canonical.** The header and claims are JSON with members in
//! lexicographic order, no whitespace, integers only and absent optional
//! members omitted (not `null`) — RFC 8785 (JCS) for these types. The
//! verifier re-encodes what it parsed and refuses anything that differs, so
//! one mapping has one encoding and no parser ambiguity (duplicate members,
//! escapes, unknown members) survives.
//!
//! **Versioned.** `typ` is `glados-mapping+jwt` (RFC 8725 §3.11 explicit
//! typing) and the claims carry `v: 1`; a verifier refuses versions it
//! does not know.
//!
//! **The SII is never in it**: `sii_digest` is SHA-256 over a domain
//! label, a fresh 16-byte `sii_salt` and the normalized SII. The asking AP
//! knows the SII and recomputes it; the salt keeps statements for one SII
//! unlinkable by digest and defeats precomputed tables. It does not stop
//! someone holding a statement from trying every phone number (see
//! SECURITY.md).
//!
//! Pure: keys, salt, clock and nonce come in as arguments.

use core::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::encoding::{b64url_decode, b64url_encode};
use super::mapping::{GpId, Mapping, VerifiedBy};
use super::sii::Sii;
use super::ssi::{ProviderId, Ssi};
use super::tags::{Label, Tags};

/// The JWS `typ` of a mapping statement.
pub const TYP: &str = "glados-mapping+jwt";
/// The JWS `alg`: Ed25519 (RFC 8037).
pub const ALG: &str = "EdDSA";
/// The claims' format version.
pub const VERSION: u32 = 1;
/// Longest statement looked at (a full one is well under 2 KiB).
pub const MAX_STATEMENT_LEN: usize = 4096;
/// How long a statement is valid by default (`STATEMENT_TTL_SECONDS`).
pub const DEFAULT_TTL_S: u64 = 86_400;
/// Bounds of the configurable lifetime: a minute to 30 days.
pub const TTL_RANGE_S: core::ops::RangeInclusive<u64> = 60..=30 * 86_400;
/// How far ahead of the verifier's clock `iat` may be (clocks differ).
pub const CLOCK_SKEW_S: u64 = 60;
/// Bytes of the per-statement salt.
pub const SALT_BYTES: usize = 16;
/// A nonce an AP sends with its query: 16..=64 of `[A-Za-z0-9_-]`.
pub const NONCE_LEN: core::ops::RangeInclusive<usize> = 16..=64;

const DIGEST_DOMAIN: &[u8] = b"glados/statement-sii/v1\0";
const BASIS_DOMAIN: &[u8] = b"glados/statement-basis/v1\0";

/// The SII digest a statement carries: SHA-256(domain ‖ salt ‖ SII).
pub fn sii_digest(salt: &[u8], sii: &Sii) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(DIGEST_DOMAIN);
    h.update(salt);
    h.update(sii.as_str().as_bytes());
    h.finalize().into()
}

/// Whether `s` is an acceptable query nonce (see [`NONCE_LEN`]).
pub fn nonce_is_valid(s: &str) -> bool {
    NONCE_LEN.contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The JWS protected header (members in lexicographic order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    alg: String,
    kid: String,
    typ: String,
}

/// How the holding GP verified the mapping, and for which AP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Verification {
    /// The AP that created the mapping (its SSI's provider; for `bulk`,
    /// the AP whose upload the GP trusted, draft §8.3).
    pub ap: ProviderId,
    /// `sms`, `email` or `bulk`.
    pub method: VerifiedBy,
}

/// What a statement says. Field order is the canonical (lexicographic)
/// member order; do not reorder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    /// When the mapping was created (ms since the Unix epoch).
    pub created_at_ms: u64,
    /// Expiry (JWT NumericDate, seconds).
    pub exp: u64,
    /// When the statement was signed (seconds).
    pub iat: u64,
    /// The holding GP (its id; in production its host name).
    pub iss: GpId,
    /// The user's own label, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<Label>,
    /// The nonce the asking AP sent with its query, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    /// When the mapping was last made preferred (ms); absent if never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_at_ms: Option<u64>,
    /// base64url of [`sii_digest`].
    pub sii_digest: String,
    /// base64url of the salt.
    pub sii_salt: String,
    /// The mapped SSI.
    pub ssi: Ssi,
    /// Registered tags, if any.
    #[serde(default, skip_serializing_if = "Tags::is_empty")]
    pub tags: Tags,
    /// [`VERSION`].
    pub v: u32,
    /// How it was verified.
    pub verified: Verification,
}

/// What the holding GP needs to state one of its mappings.
#[derive(Debug, Clone, Copy)]
pub struct Issue<'a> {
    /// This GP's id.
    pub gp: &'a str,
    /// The SII the mapping is for.
    pub sii: &'a Sii,
    /// The mapping.
    pub mapping: &'a Mapping,
    /// Fresh random salt.
    pub salt: [u8; SALT_BYTES],
    /// Now, in seconds.
    pub now_s: u64,
    /// Lifetime in seconds.
    pub ttl_s: u64,
    /// The asking AP's nonce, passed on by its home GP.
    pub nonce: Option<&'a str>,
}

impl Claims {
    /// The claims for one mapping.
    pub fn issue(i: Issue<'_>) -> Claims {
        let m = i.mapping;
        Claims {
            created_at_ms: m.created_at_ms,
            exp: i.now_s.saturating_add(i.ttl_s),
            iat: i.now_s,
            iss: i.gp.to_owned(),
            label: m.meta.label.clone(),
            nonce: i.nonce.map(str::to_owned),
            preferred_at_ms: m.preferred_at_ms,
            sii_digest: b64url_encode(&sii_digest(&i.salt, i.sii)),
            sii_salt: b64url_encode(&i.salt),
            ssi: m.ssi.clone(),
            tags: m.meta.tags.clone(),
            v: VERSION,
            verified: Verification {
                ap: m.ap().clone(),
                method: m.verified_by,
            },
        }
    }
}

/// One of the GP's statement signing keys. Its key id is the RFC 7638 JWK
/// thumbprint of its public key, so key ids never need naming or repeat.
#[derive(Clone)]
pub struct StatementKey {
    signing: SigningKey,
    kid: String,
}

impl fmt::Debug for StatementKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StatementKey({})", self.kid)
    }
}

impl StatementKey {
    /// The key of an Ed25519 seed.
    pub fn from_seed(seed: &[u8; 32]) -> StatementKey {
        let signing = SigningKey::from_bytes(seed);
        let kid = thumbprint(&signing.verifying_key().to_bytes());
        StatementKey { signing, kid }
    }

    /// The key id (JWK thumbprint).
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The Ed25519 public key.
    pub fn public(&self) -> [u8; 32] {
        self.signing.verifying_key().to_bytes()
    }

    /// Signs `claims`: the compact JWS.
    pub fn sign(&self, claims: &Claims) -> Result<String, StatementError> {
        let header = Header {
            alg: ALG.into(),
            kid: self.kid.clone(),
            typ: TYP.into(),
        };
        let input = format!(
            "{}.{}",
            b64url_encode(&canonical(&header)?),
            b64url_encode(&canonical(claims)?)
        );
        let sig = self.signing.sign(input.as_bytes());
        Ok(format!("{input}.{}", b64url_encode(&sig.to_bytes())))
    }
}

/// What a kept statement was signed over and with: the signing key, the
/// issuer, the lifetime and every claim of the mapping (SSI, how it was
/// verified, times, tags, label) for this SII — everything a statement
/// says but its salt, time and nonce. The holding GP keeps a statement
/// signed without a nonce beside its mapping and answers it again while
/// its basis is the current one and [`reusable`] says it is fresh enough
/// (ARCHITECTURE.md, "Signed mapping statements"): a changed mapping, a
/// rotated key, another lifetime or issuer all change the basis.
pub fn basis(
    kid: &str,
    gp: &str,
    sii: &Sii,
    mapping: &Mapping,
    ttl_s: u64,
) -> Result<String, StatementError> {
    let claims = Claims::issue(Issue {
        gp,
        sii,
        mapping,
        salt: [0; SALT_BYTES],
        now_s: 0,
        ttl_s,
        nonce: None,
    });
    let mut h = Sha256::new();
    h.update(BASIS_DOMAIN);
    h.update(kid.as_bytes());
    h.update([0]);
    h.update(canonical(&claims)?);
    Ok(b64url_encode(&h.finalize()))
}

/// Whether a kept statement signed at `iat_s` with lifetime `ttl_s` may
/// answer a query at `now_s`: only in the first half of its lifetime, so
/// an AP always gets one valid for at least half a lifetime, and never
/// one dated ahead of the clock.
pub fn reusable(iat_s: u64, ttl_s: u64, now_s: u64) -> bool {
    iat_s <= now_s.saturating_add(CLOCK_SKEW_S) && now_s < iat_s.saturating_add(ttl_s / 2)
}

/// RFC 7638 thumbprint of an Ed25519 public key: base64url SHA-256 of
/// `{"crv":"Ed25519","kty":"OKP","x":"…"}`.
pub fn thumbprint(public: &[u8; 32]) -> String {
    let json = format!(
        r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
        b64url_encode(public)
    );
    b64url_encode(&Sha256::digest(json.as_bytes()))
}

/// Whether a published key still signs or only verifies older statements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyStatus {
    /// Signs new statements.
    Active,
    /// Rotated out; statements it signed stay valid until they expire.
    Retired,
}

/// One key of the published JWK Set (RFC 7517), as served and as read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    /// `OKP`.
    pub kty: String,
    /// `Ed25519`.
    pub crv: String,
    /// base64url public key.
    pub x: String,
    /// The RFC 7638 thumbprint.
    pub kid: String,
    /// `EdDSA`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    /// `sig`.
    #[serde(default, rename = "use", skip_serializing_if = "Option::is_none")]
    pub use_: Option<String>,
    /// Active or retired (a GLADOS member; other readers ignore it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<KeyStatus>,
}

impl Jwk {
    /// The published form of a public key.
    pub fn ed25519(public: &[u8; 32], status: KeyStatus) -> Jwk {
        Jwk {
            kty: "OKP".into(),
            crv: "Ed25519".into(),
            x: b64url_encode(public),
            kid: thumbprint(public),
            alg: Some(ALG.into()),
            use_: Some("sig".into()),
            status: Some(status),
        }
    }
}

/// A JWK Set: `{"keys": [...]}` (other members are allowed and ignored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JwkSet {
    /// The keys.
    pub keys: Vec<Jwk>,
}

/// Reads a GP's published JWK Set: its Ed25519 keys as `(kid, public)`.
/// Keys of other types are skipped; an Ed25519 key whose `x` is not 32
/// bytes or whose `kid` is not its thumbprint makes the set unusable.
pub fn parse_jwks(json: &[u8]) -> Result<Vec<(String, [u8; 32])>, StatementError> {
    let set: JwkSet = serde_json::from_slice(json)
        .map_err(|e| StatementError::BadKeySet(format!("not a JWK Set: {e}")))?;
    let mut out = Vec::new();
    for k in set.keys {
        if k.kty != "OKP" || k.crv != "Ed25519" {
            continue;
        }
        let x: [u8; 32] = b64url_decode(&k.x)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| StatementError::BadKeySet("an Ed25519 x is not 32 bytes".into()))?;
        if k.kid != thumbprint(&x) {
            return Err(StatementError::BadKeySet(format!(
                "kid {:?} is not the key's RFC 7638 thumbprint",
                k.kid
            )));
        }
        out.push((k.kid, x));
    }
    Ok(out)
}

/// Reads a comma-separated list of 32-byte keys, each base64 or base64url
/// (`STATEMENT_KEYS` seeds, `STATEMENT_RETIRED_KEYS` public keys).
pub fn parse_key_list(text: &str) -> Result<Vec<[u8; 32]>, StatementError> {
    text.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .enumerate()
        .map(|(i, t)| {
            super::encoding::b64_decode(t)
                .or_else(|_| b64url_decode(t))
                .ok()
                .and_then(|v| v.try_into().ok())
                .ok_or_else(|| {
                    StatementError::BadKeySet(format!("entry {} is not 32 bytes of base64", i + 1))
                })
        })
        .collect()
}

/// What the verifying AP expects of a statement.
#[derive(Debug, Clone, Copy)]
pub struct Expect<'a> {
    /// The SII the AP asked about.
    pub sii: &'a Sii,
    /// The AP's clock, seconds.
    pub now_s: u64,
    /// The nonce it sent with the query, if it sent one.
    pub nonce: Option<&'a str>,
    /// Refuse statements signed longer ago than this, if given.
    pub max_age_s: Option<u64>,
}

/// Why a statement was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StatementError {
    /// Longer than [`MAX_STATEMENT_LEN`].
    TooLong,
    /// Not three base64url parts of JSON of the right shape.
    Malformed(String),
    /// Parsed, but not in the canonical encoding.
    NotCanonical,
    /// `alg` or `typ` is not a GLADOS mapping statement's.
    WrongType,
    /// A claims version this verifier does not know.
    UnsupportedVersion(u32),
    /// No published key of that GP has that key id.
    UnknownKey {
        /// The statement's `iss`.
        iss: String,
        /// Its `kid`.
        kid: String,
    },
    /// The signature does not verify.
    BadSignature,
    /// The statement is about another SII.
    WrongSii,
    /// Past its `exp`.
    Expired,
    /// Signed in the future (beyond the clock skew).
    NotYetValid,
    /// Signed longer ago than the verifier accepts.
    TooOld,
    /// Not signed for the nonce the AP sent (a replay of another answer).
    WrongNonce,
    /// The signing fails (a bug: the types always encode).
    Encoding(String),
    /// A published key set that cannot be used.
    BadKeySet(String),
}

impl fmt::Display for StatementError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StatementError::TooLong => write!(f, "longer than {MAX_STATEMENT_LEN} bytes"),
            StatementError::Malformed(why) => write!(f, "not a mapping statement: {why}"),
            StatementError::NotCanonical => f.write_str("not in the canonical encoding"),
            StatementError::WrongType => write!(f, "not alg {ALG:?} and typ {TYP:?}"),
            StatementError::UnsupportedVersion(v) => write!(f, "claims version {v} is unknown"),
            StatementError::UnknownKey { iss, kid } => {
                write!(f, "GP {iss:?} publishes no key {kid:?}")
            }
            StatementError::BadSignature => f.write_str("the signature does not verify"),
            StatementError::WrongSii => {
                f.write_str("the statement is about another SII than the one asked about")
            }
            StatementError::Expired => f.write_str("the statement has expired"),
            StatementError::NotYetValid => f.write_str("the statement is dated in the future"),
            StatementError::TooOld => f.write_str("the statement was signed too long ago"),
            StatementError::WrongNonce => {
                f.write_str("the statement was not made for this query's nonce")
            }
            StatementError::Encoding(why) => write!(f, "encoding: {why}"),
            StatementError::BadKeySet(why) => write!(f, "key set: {why}"),
        }
    }
}

fn canonical<T: Serialize>(v: &T) -> Result<Vec<u8>, StatementError> {
    serde_json::to_vec(v).map_err(|e| StatementError::Encoding(e.to_string()))
}

/// Decodes one part and checks that it is the canonical encoding of what
/// it parses to.
fn part<T: Serialize + DeserializeOwned>(b64: &str, what: &str) -> Result<T, StatementError> {
    let bytes = b64url_decode(b64)
        .map_err(|_| StatementError::Malformed(format!("the {what} is not base64url")))?;
    let v: T = serde_json::from_slice(&bytes)
        .map_err(|e| StatementError::Malformed(format!("the {what}: {e}")))?;
    if canonical(&v)? != bytes {
        return Err(StatementError::NotCanonical);
    }
    Ok(v)
}

/// A statement taken apart, not yet checked against any key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unverified<'s> {
    /// The key id it names.
    pub kid: String,
    /// What it says.
    pub claims: Claims,
    signed: &'s str,
    signature: [u8; 64],
}

/// Takes a statement apart: three canonical parts, the right `alg`, `typ`
/// and version. The home GP uses this to check that a peer's statement
/// says what the peer's answer says; an AP calls [`verify`].
pub fn read(statement: &str) -> Result<Unverified<'_>, StatementError> {
    if statement.len() > MAX_STATEMENT_LEN {
        return Err(StatementError::TooLong);
    }
    let mut parts = statement.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(StatementError::Malformed(
            "a compact JWS has three parts".into(),
        ));
    };
    let header: Header = part(h, "header")?;
    if header.alg != ALG || header.typ != TYP {
        return Err(StatementError::WrongType);
    }
    let claims: Claims = part(p, "claims")?;
    if claims.v != VERSION {
        return Err(StatementError::UnsupportedVersion(claims.v));
    }
    let signature: [u8; 64] = b64url_decode(s)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| StatementError::Malformed("the signature is not 64 bytes".into()))?;
    Ok(Unverified {
        kid: header.kid,
        claims,
        signed: statement.get(..h.len() + 1 + p.len()).unwrap_or_default(),
        signature,
    })
}

/// Verifies a statement as an AP does: canonical, signed by a key the
/// issuing GP publishes (`key_for(iss, kid)`), about the SII asked about,
/// within its validity, and for the query's nonce if one was sent.
/// Returns what it says.
pub fn verify(
    statement: &str,
    expect: &Expect<'_>,
    key_for: impl Fn(&str, &str) -> Option<[u8; 32]>,
) -> Result<Claims, StatementError> {
    let u = read(statement)?;
    let c = &u.claims;
    let public = key_for(&c.iss, &u.kid).ok_or_else(|| StatementError::UnknownKey {
        iss: c.iss.clone(),
        kid: u.kid.clone(),
    })?;
    let vk = VerifyingKey::from_bytes(&public).map_err(|_| StatementError::BadSignature)?;
    // verify_strict: no small-order keys, no malleable signatures.
    vk.verify_strict(u.signed.as_bytes(), &Signature::from_bytes(&u.signature))
        .map_err(|_| StatementError::BadSignature)?;
    let salt = b64url_decode(&c.sii_salt)
        .map_err(|_| StatementError::Malformed("sii_salt is not base64url".into()))?;
    if b64url_encode(&sii_digest(&salt, expect.sii)) != c.sii_digest {
        return Err(StatementError::WrongSii);
    }
    if expect.now_s >= c.exp {
        return Err(StatementError::Expired);
    }
    if c.iat > expect.now_s.saturating_add(CLOCK_SKEW_S) {
        return Err(StatementError::NotYetValid);
    }
    if expect
        .max_age_s
        .is_some_and(|max| expect.now_s.saturating_sub(c.iat) > max)
    {
        return Err(StatementError::TooOld);
    }
    if let Some(n) = expect.nonce {
        if c.nonce.as_deref() != Some(n) {
            return Err(StatementError::WrongNonce);
        }
    }
    Ok(u.claims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::tags::MappingMeta;

    const NOW: u64 = 1_750_000_000;

    fn sii() -> Sii {
        Sii::parse("+1 415 555 0100").unwrap()
    }
    fn mapping() -> Mapping {
        Mapping {
            ssi: Ssi::parse("ap-b:bob").unwrap(),
            verified_by: VerifiedBy::Bulk,
            created_at_ms: 1_700_000_000_123,
            preferred_at_ms: Some(1_700_000_500_000),
            meta: MappingMeta::parse(Some(&["work", "personal"]), Some("Büro \"1\"")).unwrap(),
        }
    }
    fn key(b: u8) -> StatementKey {
        StatementKey::from_seed(&[b; 32])
    }
    fn issue(nonce: Option<&str>) -> Claims {
        Claims::issue(Issue {
            gp: "gp-b",
            sii: &sii(),
            mapping: &mapping(),
            salt: [7; SALT_BYTES],
            now_s: NOW,
            ttl_s: DEFAULT_TTL_S,
            nonce,
        })
    }
    fn keys_of(k: &StatementKey) -> impl Fn(&str, &str) -> Option<[u8; 32]> + '_ {
        move |iss, kid| (iss == "gp-b" && kid == k.kid()).then(|| k.public())
    }
    fn expect(s: &Sii) -> Expect<'_> {
        Expect {
            sii: s,
            now_s: NOW + 10,
            nonce: None,
            max_age_s: None,
        }
    }

    #[test]
    fn a_kept_statement_is_answered_again_only_while_its_basis_holds_and_it_is_fresh() {
        let s = sii();
        let m = mapping();
        let b = |kid: &str, gp: &str, m: &Mapping, ttl: u64| basis(kid, gp, &s, m, ttl).unwrap();
        let base = b("k1", "gp-b", &m, DEFAULT_TTL_S);
        assert_eq!(base, b("k1", "gp-b", &m, DEFAULT_TTL_S), "deterministic");
        // Another key, issuer or lifetime: signed again.
        assert_ne!(base, b("k2", "gp-b", &m, DEFAULT_TTL_S));
        assert_ne!(base, b("k1", "gp-c", &m, DEFAULT_TTL_S));
        assert_ne!(base, b("k1", "gp-b", &m, 3_600));
        // Any claim of the mapping changed: signed again.
        let mut preferred = m.clone();
        preferred.preferred_at_ms = Some(1_700_000_900_000);
        let mut created = m.clone();
        created.created_at_ms += 1;
        let mut untagged = m.clone();
        untagged.meta = MappingMeta::default();
        let mut sms = m.clone();
        sms.verified_by = VerifiedBy::Sms;
        let mut user = m.clone();
        user.ssi = Ssi::parse("ap-b:bobby").unwrap();
        for changed in [&preferred, &created, &untagged, &sms, &user] {
            assert_ne!(base, b("k1", "gp-b", changed, DEFAULT_TTL_S));
        }
        // Another SII: another basis.
        let other = Sii::parse("+1 415 555 0101").unwrap();
        assert_ne!(
            base,
            basis("k1", "gp-b", &other, &m, DEFAULT_TTL_S).unwrap()
        );
        // Fresh for the first half of its lifetime, never dated ahead.
        assert!(reusable(NOW, 100, NOW));
        assert!(reusable(NOW, 100, NOW + 49));
        assert!(!reusable(NOW, 100, NOW + 50));
        assert!(reusable(NOW + CLOCK_SKEW_S, 100, NOW));
        assert!(!reusable(NOW + CLOCK_SKEW_S + 1, 100, NOW));
        assert!(!reusable(u64::MAX, 100, 0));
    }

    #[test]
    fn a_statement_verifies_and_says_what_the_gp_holds() {
        let k = key(1);
        let jws = k.sign(&issue(None)).unwrap();
        let s = sii();
        let c = verify(&jws, &expect(&s), keys_of(&k)).unwrap();
        assert_eq!(c.iss, "gp-b");
        assert_eq!(c.ssi, Ssi::parse("ap-b:bob").unwrap());
        assert_eq!(c.verified.method, VerifiedBy::Bulk);
        assert_eq!(c.verified.ap.as_str(), "ap-b");
        assert_eq!(c.exp, NOW + DEFAULT_TTL_S);
        assert_eq!(c.preferred_at_ms, Some(1_700_000_500_000));
        assert_eq!(c.tags.as_slice().len(), 2);
        // The SII itself is nowhere in it.
        let payload = b64url_decode(jws.split('.').nth(1).unwrap()).unwrap();
        let text = String::from_utf8(payload).unwrap();
        assert!(!text.contains("14155550100"), "{text}");
    }

    #[test]
    fn the_encoding_is_canonical_jcs() {
        let jws = key(1).sign(&issue(Some("n0nce-n0nce-n0nce"))).unwrap();
        let mut parts = jws.split('.');
        let header = String::from_utf8(b64url_decode(parts.next().unwrap()).unwrap()).unwrap();
        assert_eq!(
            header,
            format!(
                r#"{{"alg":"EdDSA","kid":"{}","typ":"glados-mapping+jwt"}}"#,
                key(1).kid()
            )
        );
        let claims = String::from_utf8(b64url_decode(parts.next().unwrap()).unwrap()).unwrap();
        // Members sorted, no whitespace, integers, absent members omitted.
        let salt = b64url_encode(&[7; 16]);
        let digest = b64url_encode(&sii_digest(&[7; 16], &sii()));
        assert_eq!(
            claims,
            format!(
                concat!(
                    r#"{{"created_at_ms":1700000000123,"exp":{},"iat":{},"iss":"gp-b","#,
                    r#""label":"Büro \"1\"","nonce":"n0nce-n0nce-n0nce","#,
                    r#""preferred_at_ms":1700000500000,"sii_digest":"{}","sii_salt":"{}","#,
                    r#""ssi":{{"provider":"ap-b","user":"bob"}},"tags":["personal","work"],"#,
                    r#""v":1,"verified":{{"ap":"ap-b","method":"bulk"}}}}"#
                ),
                NOW + DEFAULT_TTL_S,
                NOW,
                digest,
                salt
            )
        );
        // Signing is deterministic (Ed25519): same claims, same statement.
        assert_eq!(jws, key(1).sign(&issue(Some("n0nce-n0nce-n0nce"))).unwrap());
    }

    #[test]
    fn forged_statements_are_refused() {
        let (k, other) = (key(1), key(2));
        let s = sii();
        let jws = k.sign(&issue(None)).unwrap();
        // Signed by a key the GP does not publish.
        let forged = other.sign(&issue(None)).unwrap();
        assert!(matches!(
            verify(&forged, &expect(&s), keys_of(&k)),
            Err(StatementError::UnknownKey { .. })
        ));
        // Claiming the GP's kid, with another key's signature.
        let (hp, _) = jws.rsplit_once('.').unwrap();
        let sig = other.signing.sign(hp.as_bytes());
        let swapped = format!("{hp}.{}", b64url_encode(&sig.to_bytes()));
        assert_eq!(
            verify(&swapped, &expect(&s), keys_of(&k)),
            Err(StatementError::BadSignature)
        );
        // Claims changed after signing (another SSI).
        let mut c = issue(None);
        c.ssi = Ssi::parse("ap-evil:mallory").unwrap();
        let p = b64url_encode(&serde_json::to_vec(&c).unwrap());
        let mut parts: Vec<&str> = jws.split('.').collect();
        parts[1] = &p;
        assert_eq!(
            verify(&parts.join("."), &expect(&s), keys_of(&k)),
            Err(StatementError::BadSignature)
        );
        // Anything that is not a statement.
        for junk in ["", "a.b", "a.b.c.d", "!!.??.**", &"x".repeat(5000)] {
            assert!(
                verify(junk, &expect(&s), keys_of(&k)).is_err(),
                "{junk:.20}"
            );
        }
    }

    #[test]
    fn replayed_statements_are_refused() {
        let k = key(1);
        let s = sii();
        // For another SII.
        let jws = k.sign(&issue(None)).unwrap();
        let other = Sii::parse("+1 415 555 0101").unwrap();
        assert_eq!(
            verify(&jws, &expect(&other), keys_of(&k)),
            Err(StatementError::WrongSii)
        );
        // After its expiry.
        let late = Expect {
            now_s: NOW + DEFAULT_TTL_S,
            ..expect(&s)
        };
        assert_eq!(
            verify(&jws, &late, keys_of(&k)),
            Err(StatementError::Expired)
        );
        // Older than the AP accepts.
        let strict = Expect {
            now_s: NOW + 120,
            max_age_s: Some(60),
            ..expect(&s)
        };
        assert_eq!(
            verify(&jws, &strict, keys_of(&k)),
            Err(StatementError::TooOld)
        );
        // Dated ahead of the AP's clock.
        let early = Expect {
            now_s: NOW - 61,
            ..expect(&s)
        };
        assert_eq!(
            verify(&jws, &early, keys_of(&k)),
            Err(StatementError::NotYetValid)
        );
        // Made for another query's nonce, or for none.
        let n1 = "first-query-nonce-0001";
        let with_n1 = k.sign(&issue(Some(n1))).unwrap();
        let want = |n| Expect {
            nonce: Some(n),
            ..expect(&s)
        };
        assert!(verify(&with_n1, &want(n1), keys_of(&k)).is_ok());
        assert_eq!(
            verify(&with_n1, &want("second-query-nonce-002"), keys_of(&k)),
            Err(StatementError::WrongNonce)
        );
        assert_eq!(
            verify(&jws, &want(n1), keys_of(&k)),
            Err(StatementError::WrongNonce)
        );
    }

    #[test]
    fn non_canonical_and_foreign_encodings_are_refused() {
        let k = key(1);
        let s = sii();
        let sign_raw = |header: &str, claims: &str| {
            let input = format!(
                "{}.{}",
                b64url_encode(header.as_bytes()),
                b64url_encode(claims.as_bytes())
            );
            let sig = k.signing.sign(input.as_bytes());
            format!("{input}.{}", b64url_encode(&sig.to_bytes()))
        };
        let good_h = format!(
            r#"{{"alg":"EdDSA","kid":"{}","typ":"glados-mapping+jwt"}}"#,
            k.kid()
        );
        let good_c = String::from_utf8(canonical(&issue(None)).unwrap()).unwrap();
        assert!(verify(&sign_raw(&good_h, &good_c), &expect(&s), keys_of(&k)).is_ok());
        // Whitespace, member order, an explicit null, an unknown member.
        let spaced = good_c.replacen(":", ": ", 1);
        let reordered = good_c
            .replacen(r#"{"created_at_ms""#, r#"{"v":1,"created_at_ms""#, 1)
            .replacen(r#","v":1,"#, ",", 1);
        let nulled = good_c.replacen(
            r#""preferred_at_ms""#,
            r#""nonce":null,"preferred_at_ms""#,
            1,
        );
        let extra = good_c.replacen(r#""iat""#, r#""aud":"x","iat""#, 1);
        for c in [spaced, reordered, nulled] {
            assert_eq!(
                verify(&sign_raw(&good_h, &c), &expect(&s), keys_of(&k)),
                Err(StatementError::NotCanonical),
                "{c}"
            );
        }
        assert!(matches!(
            verify(&sign_raw(&good_h, &extra), &expect(&s), keys_of(&k)),
            Err(StatementError::Malformed(_))
        ));
        // Another typ or alg; another version.
        let jwt = good_h.replace("glados-mapping+jwt", "JWT");
        assert_eq!(
            verify(&sign_raw(&jwt, &good_c), &expect(&s), keys_of(&k)),
            Err(StatementError::WrongType)
        );
        let v2 = good_c.replace(r#""v":1"#, r#""v":2"#);
        assert_eq!(
            verify(&sign_raw(&good_h, &v2), &expect(&s), keys_of(&k)),
            Err(StatementError::UnsupportedVersion(2))
        );
    }

    #[test]
    fn published_keys_round_trip_with_thumbprint_kids() {
        let (a, b) = (key(1), key(2));
        let set = JwkSet {
            keys: vec![
                Jwk::ed25519(&a.public(), KeyStatus::Active),
                Jwk::ed25519(&b.public(), KeyStatus::Retired),
            ],
        };
        let json = serde_json::to_vec(&set).unwrap();
        let keys = parse_jwks(&json).unwrap();
        assert_eq!(
            keys,
            vec![
                (a.kid().to_owned(), a.public()),
                (b.kid().to_owned(), b.public())
            ]
        );
        // RFC 8037 appendix A.3: the thumbprint of its example key.
        let x = b64url_decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo").unwrap();
        assert_eq!(
            thumbprint(&x.try_into().unwrap()),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
        // A kid that is not the thumbprint; other key types are skipped.
        let mut bad = set.clone();
        bad.keys[0].kid = "k1".into();
        assert!(parse_jwks(&serde_json::to_vec(&bad).unwrap()).is_err());
        let rsa = br#"{"keys":[{"kty":"RSA","crv":"","x":"","kid":"r"}]}"#;
        assert_eq!(parse_jwks(rsa).unwrap(), vec![]);
        assert!(parse_jwks(b"[]").is_err());
    }

    #[test]
    fn key_lists_read_base64_and_base64url() {
        let a = b64url_encode(&[0xfb; 32]);
        let b = crate::core::encoding::b64_encode(&[0xfb; 32]);
        assert_eq!(
            parse_key_list(&format!(" {a}, {b} ,")).unwrap(),
            vec![[0xfb; 32]; 2]
        );
        assert_eq!(parse_key_list("").unwrap(), Vec::<[u8; 32]>::new());
        assert!(parse_key_list("abc").is_err());
    }

    #[test]
    fn nonces_are_bounded_base64url() {
        assert!(nonce_is_valid("abcdefghijklmnop"));
        assert!(nonce_is_valid(&"A-_9".repeat(16)));
        assert!(!nonce_is_valid("short"));
        assert!(!nonce_is_valid(&"a".repeat(65)));
        assert!(!nonce_is_valid("abcdefghijklmnop="));
    }
}
