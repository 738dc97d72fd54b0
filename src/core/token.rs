//! Self-contained access tokens: checked on every client call by a MAC and
//! an expiry, with no storage round trip (ARCHITECTURE.md, Cost budget:
//! the token check needs no storage).
//!
//! Format (all ASCII, safe in an `Authorization: Bearer` header, RFC 6750
//! §2.1 `b64token`):
//!
//! ```text
//! gla1.<kid>.<b64url(payload)>.<b64url(HMAC-SHA256(key[kid], "gla1.<kid>.<b64url(payload)>"))>
//! payload = "<ap>|<generation>|<issued_at>|<expires_at>|<x5t#S256 or empty>"
//! ```
//!
//! - `kid` names the key in `TOKEN_KEYS` (`kid1:base64key,kid2:base64key`):
//!   the first key signs, all verify, so keys rotate by prepending a new
//!   one and dropping the old one a token lifetime later.
//! - `generation` is the AP's registry generation when the token was
//!   issued; suspending the AP or changing its credentials bumps it, which
//!   revokes older tokens (see `worker::auth`).
//! - `x5t#S256` is the RFC 8705 §3.1 confirmation: the SHA-256 of the
//!   client certificate the token was issued over, base64url.
//!
//! Times are Unix seconds and come in as arguments.

use core::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::credentials::CertFingerprint;
use super::encoding::{b64_decode, b64url_decode, b64url_encode};
use super::ssi::ProviderId;
use super::Problem;

type HmacSha256 = Hmac<Sha256>;

/// Version tag and first segment of every token.
pub const TOKEN_PREFIX: &str = "gla1";
/// Longest token string looked at; longer input is malformed without work.
pub const MAX_TOKEN_LEN: usize = 1024;
/// Shortest accepted MAC key (RFC 2104 §3: keys shorter than the hash
/// output "are strongly discouraged").
pub const MIN_KEY_BYTES: usize = 32;
/// Longest key id.
const MAX_KID_LEN: usize = 32;

/// One MAC key with its id.
#[derive(Clone)]
pub struct TokenKey {
    kid: String,
    key: Vec<u8>,
}

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        write!(f, "TokenKey({}, {} bytes)", self.kid, self.key.len())
    }
}

/// The GP's token keys: the first signs, every one verifies.
#[derive(Debug, Clone)]
pub struct TokenKeys {
    keys: Vec<TokenKey>,
}

/// A bad `TOKEN_KEYS` value (operator configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenKeysError {
    /// No key at all.
    Empty,
    /// An entry is not `kid:base64key`, or its kid is not `[A-Za-z0-9_-]{1,32}`.
    BadEntry(usize),
    /// The key is not base64 or is shorter than 32 bytes.
    BadKey(String),
    /// Two entries share a kid.
    DuplicateKid(String),
}

impl fmt::Display for TokenKeysError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenKeysError::Empty => f.write_str("TOKEN_KEYS has no key"),
            TokenKeysError::BadEntry(i) => write!(
                f,
                "TOKEN_KEYS entry {i} is not kid:base64key with kid of 1-32 of [A-Za-z0-9_-]"
            ),
            TokenKeysError::BadKey(kid) => write!(
                f,
                "TOKEN_KEYS key {kid} is not base64 of at least {MIN_KEY_BYTES} bytes"
            ),
            TokenKeysError::DuplicateKid(kid) => write!(f, "TOKEN_KEYS repeats kid {kid}"),
        }
    }
}

impl TokenKeys {
    /// Parses `kid1:base64key,kid2:base64key` (standard or URL-safe base64;
    /// whitespace around entries ignored).
    pub fn parse(spec: &str) -> Result<TokenKeys, TokenKeysError> {
        let mut keys: Vec<TokenKey> = Vec::new();
        for (i, entry) in spec
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .enumerate()
        {
            let (kid, b64) = entry.split_once(':').ok_or(TokenKeysError::BadEntry(i))?;
            let kid = kid.trim();
            if !valid_kid(kid) {
                return Err(TokenKeysError::BadEntry(i));
            }
            let b64 = b64.trim();
            let key = b64_decode(b64)
                .or_else(|_| b64url_decode(b64))
                .map_err(|_| TokenKeysError::BadKey(kid.into()))?;
            if key.len() < MIN_KEY_BYTES {
                return Err(TokenKeysError::BadKey(kid.into()));
            }
            if keys.iter().any(|k| k.kid == kid) {
                return Err(TokenKeysError::DuplicateKid(kid.into()));
            }
            keys.push(TokenKey {
                kid: kid.into(),
                key,
            });
        }
        if keys.is_empty() {
            return Err(TokenKeysError::Empty);
        }
        Ok(TokenKeys { keys })
    }

    /// The id of the signing key.
    pub fn signing_kid(&self) -> &str {
        self.keys.first().map(|k| k.kid.as_str()).unwrap_or("")
    }

    fn find(&self, kid: &str) -> Option<&TokenKey> {
        self.keys.iter().find(|k| k.kid == kid)
    }

    /// A key for another purpose derived from key `kid` (the signing key
    /// when `None`): HMAC-SHA256(key, `label`), with its kid. Other tokens
    /// (the SII holder's) rotate with these keys without sharing a MAC key.
    pub fn derived(&self, kid: Option<&str>, label: &[u8]) -> Option<(String, [u8; 32])> {
        let k = match kid {
            Some(kid) => self.find(kid)?,
            None => self.keys.first()?,
        };
        let mut m = HmacSha256::new_from_slice(&k.key).ok()?;
        m.update(label);
        Some((k.kid.clone(), m.finalize().into_bytes().into()))
    }
}

fn valid_kid(kid: &str) -> bool {
    !kid.is_empty()
        && kid.len() <= MAX_KID_LEN
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenClaims {
    /// The AP (OAuth client) the token was issued to.
    pub ap: ProviderId,
    /// The AP's registry generation at issue time.
    pub generation: u64,
    /// Issue time, Unix seconds.
    pub issued_at: u64,
    /// Expiry, Unix seconds; the token is refused from this second on.
    pub expires_at: u64,
    /// RFC 8705 `cnf.x5t#S256`: the certificate the token is bound to.
    pub cnf: Option<CertFingerprint>,
}

/// Why a presented token was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenError {
    /// Not a token of this format at all.
    Malformed(&'static str),
    /// Signed with a key this GP does not (or no longer) have.
    UnknownKey,
    /// The MAC does not match: forged or altered.
    BadMac,
    /// Past its expiry.
    Expired { expired_at: u64, now: u64 },
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenError::Malformed(why) => write!(f, "the access token is malformed: {why}"),
            TokenError::UnknownKey => f.write_str(
                "the access token was signed with a key this GP does not know (rotated out?); get a new token",
            ),
            TokenError::BadMac => f.write_str("the access token's signature does not verify"),
            TokenError::Expired { expired_at, now } => write!(
                f,
                "the access token expired {} s ago (at {expired_at}); get a new one from POST /oauth/token",
                now.saturating_sub(*expired_at)
            ),
        }
    }
}

impl Problem for TokenError {
    fn slug(&self) -> &'static str {
        match self {
            TokenError::Expired { .. } => "token-expired",
            _ => "invalid-token",
        }
    }
    fn title(&self) -> &'static str {
        match self {
            TokenError::Expired { .. } => "Access token expired",
            _ => "Invalid access token",
        }
    }
    fn status(&self) -> u16 {
        401
    }
}

/// HMAC over the signed part. HMAC takes keys of any length, so the error
/// case cannot happen; it is still handled rather than unwrapped.
fn mac_over(key: &[u8], signed: &str) -> Option<HmacSha256> {
    let mut mac = HmacSha256::new_from_slice(key).ok()?;
    mac.update(signed.as_bytes());
    Some(mac)
}

/// Issues a token for `claims`, signed with the first key.
pub fn issue(keys: &TokenKeys, claims: &TokenClaims) -> String {
    let Some(key) = keys.keys.first() else {
        return String::new();
    };
    let payload = format!(
        "{}|{}|{}|{}|{}",
        claims.ap,
        claims.generation,
        claims.issued_at,
        claims.expires_at,
        claims
            .cnf
            .as_ref()
            .map(CertFingerprint::to_x5t_s256)
            .unwrap_or_default()
    );
    let signed = format!(
        "{TOKEN_PREFIX}.{}.{}",
        key.kid,
        b64url_encode(payload.as_bytes())
    );
    match mac_over(&key.key, &signed) {
        Some(mac) => format!("{signed}.{}", b64url_encode(&mac.finalize().into_bytes())),
        None => String::new(),
    }
}

/// The four dot-separated parts of a `<prefix>.<kid>.<payload>.<mac>`
/// token (access tokens here, the SII holder's in `core::holder`).
pub fn four_parts(token: &str) -> Option<[&str; 4]> {
    let mut parts = token.split('.');
    let four = [parts.next()?, parts.next()?, parts.next()?, parts.next()?];
    parts.next().is_none().then_some(four)
}

/// Verifies a token's MAC and expiry at `now` (Unix seconds) and returns
/// its claims. The MAC is checked before anything in the payload is
/// believed, and compared in constant time.
pub fn verify(keys: &TokenKeys, token: &str, now: u64) -> Result<TokenClaims, TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Malformed("too long"));
    }
    let Some([prefix, kid, payload_b64, tag_b64]) = four_parts(token) else {
        return Err(TokenError::Malformed("expected gla1.<kid>.<payload>.<mac>"));
    };
    if prefix != TOKEN_PREFIX {
        return Err(TokenError::Malformed("not a gla1 token"));
    }
    let key = keys.find(kid).ok_or(TokenError::UnknownKey)?;
    let tag = b64url_decode(tag_b64).map_err(|_| TokenError::Malformed("MAC is not base64url"))?;
    let signed_len = prefix.len() + kid.len() + payload_b64.len() + 2;
    let signed = token.get(..signed_len).unwrap_or("");
    mac_over(&key.key, signed)
        .ok_or(TokenError::BadMac)?
        .verify_slice(&tag)
        .map_err(|_| TokenError::BadMac)?;
    let claims = parse_payload(payload_b64)?;
    if now >= claims.expires_at {
        return Err(TokenError::Expired {
            expired_at: claims.expires_at,
            now,
        });
    }
    Ok(claims)
}

fn parse_payload(b64: &str) -> Result<TokenClaims, TokenError> {
    const BAD: TokenError = TokenError::Malformed("bad payload");
    let bytes = b64url_decode(b64).map_err(|_| BAD)?;
    let text = core::str::from_utf8(&bytes).map_err(|_| BAD)?;
    let mut f = text.split('|');
    let (Some(ap), Some(gen), Some(iat), Some(exp), Some(cnf), None) =
        (f.next(), f.next(), f.next(), f.next(), f.next(), f.next())
    else {
        return Err(BAD);
    };
    let num = |s: &str| s.parse::<u64>().map_err(|_| BAD);
    Ok(TokenClaims {
        ap: ProviderId::parse(ap).map_err(|_| BAD)?,
        generation: num(gen)?,
        issued_at: num(iat)?,
        expires_at: num(exp)?,
        cnf: if cnf.is_empty() {
            None
        } else {
            Some(CertFingerprint::from_x5t_s256(cnf).ok_or(BAD)?)
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::encoding::b64_encode;

    fn keys(spec: &str) -> TokenKeys {
        TokenKeys::parse(spec).unwrap()
    }

    fn k(n: u8) -> String {
        b64_encode(&[n; 32])
    }

    fn claims(cnf: Option<CertFingerprint>) -> TokenClaims {
        TokenClaims {
            ap: ProviderId::parse("ap-a").unwrap(),
            generation: 3,
            issued_at: 1_000,
            expires_at: 1_300,
            cnf,
        }
    }

    #[test]
    fn issue_then_verify_round_trips() {
        let ks = keys(&format!("k1:{}", k(1)));
        let fp = CertFingerprint::from_bytes([9; 32]);
        for c in [claims(None), claims(Some(fp))] {
            let t = issue(&ks, &c);
            assert!(t.starts_with("gla1.k1."));
            assert_eq!(verify(&ks, &t, 1_000), Ok(c.clone()));
            assert_eq!(verify(&ks, &t, 1_299), Ok(c.clone()));
        }
    }

    #[test]
    fn expiry_is_exclusive() {
        let ks = keys(&format!("k1:{}", k(1)));
        let t = issue(&ks, &claims(None));
        assert_eq!(
            verify(&ks, &t, 1_300),
            Err(TokenError::Expired {
                expired_at: 1_300,
                now: 1_300
            })
        );
        assert_eq!(verify(&ks, &t, 1_300).unwrap_err().slug(), "token-expired");
    }

    #[test]
    fn any_change_breaks_the_mac() {
        let ks = keys(&format!("k1:{}", k(1)));
        let t = issue(&ks, &claims(None));
        // Flip each character of the payload and MAC segments in turn.
        let start = "gla1.k1.".len();
        for i in start..t.len() {
            let mut b = t.clone().into_bytes();
            if b[i] == b'.' {
                continue;
            }
            b[i] = if b[i] == b'A' { b'B' } else { b'A' };
            let forged = String::from_utf8(b).unwrap();
            let err = verify(&ks, &forged, 1_000).unwrap_err();
            assert!(
                matches!(err, TokenError::BadMac | TokenError::Malformed(_)),
                "{i}: {err:?}"
            );
            assert_eq!(err.slug(), "invalid-token");
        }
        // A payload re-signed with another key is refused.
        let other = issue(&keys(&format!("k1:{}", k(2))), &claims(None));
        assert_eq!(verify(&ks, &other, 1_000), Err(TokenError::BadMac));
    }

    #[test]
    fn keys_rotate_first_signs_all_verify() {
        let old = keys(&format!("k1:{}", k(1)));
        let both = keys(&format!("k2:{}, k1:{}", k(2), k(1)));
        let new_only = keys(&format!("k2:{}", k(2)));
        let t_old = issue(&old, &claims(None));
        let t_new = issue(&both, &claims(None));
        assert!(t_new.starts_with("gla1.k2."));
        assert!(verify(&both, &t_old, 1_000).is_ok());
        assert!(verify(&both, &t_new, 1_000).is_ok());
        assert_eq!(
            verify(&new_only, &t_old, 1_000),
            Err(TokenError::UnknownKey)
        );
        assert_eq!(both.signing_kid(), "k2");
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        let ks = keys(&format!("k1:{}", k(1)));
        for t in [
            "",
            "gla1",
            "gla1.k1",
            "gla1.k1.x",
            "gla1.k1.x.y.z",
            "gla2.k1.eA.eA",
            "gla1.k1.eA.!!",
            "....",
            "gla1.k1.é.é",
        ] {
            let e = verify(&ks, t, 0).unwrap_err();
            assert!(
                matches!(e, TokenError::Malformed(_) | TokenError::BadMac),
                "{t:?}: {e:?}"
            );
        }
        assert_eq!(
            verify(&ks, &"a".repeat(5000), 0),
            Err(TokenError::Malformed("too long"))
        );
        assert_eq!(
            verify(&ks, "gla1.nokey.eA.eA", 0),
            Err(TokenError::UnknownKey)
        );
    }

    #[test]
    fn a_correctly_signed_bad_payload_is_malformed() {
        // Only someone with the key could make this; still no panic.
        let ks = keys(&format!("k1:{}", k(1)));
        let signed = format!("gla1.k1.{}", b64url_encode(b"AP|x|1|2|"));
        let tag = mac_over(&[1u8; 32], &signed)
            .unwrap()
            .finalize()
            .into_bytes();
        let t = format!("{signed}.{}", b64url_encode(&tag));
        assert_eq!(
            verify(&ks, &t, 0),
            Err(TokenError::Malformed("bad payload"))
        );
    }

    #[test]
    fn key_spec_errors() {
        assert!(matches!(TokenKeys::parse(""), Err(TokenKeysError::Empty)));
        assert!(matches!(
            TokenKeys::parse(" , "),
            Err(TokenKeysError::Empty)
        ));
        assert!(matches!(
            TokenKeys::parse("nocolon"),
            Err(TokenKeysError::BadEntry(0))
        ));
        assert!(matches!(
            TokenKeys::parse(&format!("bad kid:{}", k(1))),
            Err(TokenKeysError::BadEntry(0))
        ));
        assert!(matches!(
            TokenKeys::parse(&format!("k1:{}", b64_encode(&[1; 16]))),
            Err(TokenKeysError::BadKey(_))
        ));
        assert!(matches!(
            TokenKeys::parse(&format!("k1:{},k1:{}", k(1), k(2))),
            Err(TokenKeysError::DuplicateKid(_))
        ));
        // URL-safe base64 keys are accepted too.
        assert!(TokenKeys::parse(&format!("k1:{}", b64url_encode(&[0xfb; 32]))).is_ok());
        let dbg = format!("{:?}", keys(&format!("k1:{}", k(1))));
        assert!(!dbg.contains(&k(1)), "Debug must not print key material");
    }
}
