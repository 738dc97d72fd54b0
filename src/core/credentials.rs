//! AP credentials: client secrets, webhook signing secrets, client
//! certificate fingerprints and the mutual-TLS binding rules.
//!
//! draft §7: "Once glados has approved the application vendor, they are
//! provided a traditional OAuth ClientID and Secret". draft §11.3: "glados
//! adds a requirement for MTLS between the provider and glados." Client
//! secrets are stored hashed and shown once (SECURITY.md).
//!
//! Pure: randomness comes in as bytes, keys as arguments.

use core::fmt;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::encoding::{b64_encode, b64url_decode, b64url_encode, form_decode, hex_encode};
use super::verification::ct_eq;
use super::Problem;

type HmacSha256 = Hmac<Sha256>;

/// Prefix of a client secret, so leaked secrets are recognisable (secret
/// scanners) and a webhook secret is never mistaken for one.
pub const CLIENT_SECRET_PREFIX: &str = "gcs_";
/// Prefix of a webhook signing secret (Standard Webhooks convention).
pub const WEBHOOK_SECRET_PREFIX: &str = "whsec_";
/// Longest client secret we even hash; real ones are 47 characters.
const MAX_SECRET_LEN: usize = 256;
/// Longest webhook URL accepted at enrollment.
pub const MAX_WEBHOOK_URL_LEN: usize = 2048;
/// Domain separator of the stored client-secret hash.
const SECRET_HASH_DOMAIN: &[u8] = b"glados/client-secret/v1\0";

/// Why an AP credential input was refused (operator or client input).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CredentialError {
    /// A certificate fingerprint that is not 32 bytes of hex.
    InvalidFingerprint(String),
    /// A webhook URL that is not https (or http on loopback in dev).
    InvalidWebhookUrl(String),
    /// An `Authorization: Basic` value that does not decode to `id:secret`.
    InvalidBasicAuth(&'static str),
}

impl fmt::Display for CredentialError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CredentialError::InvalidFingerprint(why) => {
                write!(f, "invalid certificate fingerprint: {why}")
            }
            CredentialError::InvalidWebhookUrl(why) => write!(f, "invalid webhook URL: {why}"),
            CredentialError::InvalidBasicAuth(why) => {
                write!(f, "invalid HTTP Basic credentials: {why}")
            }
        }
    }
}

impl Problem for CredentialError {
    fn slug(&self) -> &'static str {
        match self {
            CredentialError::InvalidFingerprint(_) => "invalid-fingerprint",
            CredentialError::InvalidWebhookUrl(_) => "invalid-webhook-url",
            CredentialError::InvalidBasicAuth(_) => "invalid-basic-auth",
        }
    }
    fn title(&self) -> &'static str {
        match self {
            CredentialError::InvalidFingerprint(_) => "Invalid certificate fingerprint",
            CredentialError::InvalidWebhookUrl(_) => "Invalid webhook URL",
            CredentialError::InvalidBasicAuth(_) => "Invalid Basic credentials",
        }
    }
}

// ------------------------------------------------------------ fingerprints

/// SHA-256 fingerprint of a client certificate (of its DER encoding), as
/// Cloudflare reports it in `tlsClientAuth.certFingerprintSHA256` and as
/// RFC 8705 §3.1 binds tokens to it (`x5t#S256`).
///
/// Canonical text form: 64 lowercase hex digits. Serializes as that.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CertFingerprint([u8; 32]);

impl CertFingerprint {
    /// Parses hex in either case, with or without `:` between bytes
    /// (`AB:CD:…` as `openssl x509 -fingerprint -sha256` prints it).
    pub fn parse(text: &str) -> Result<CertFingerprint, CredentialError> {
        let trimmed = text.trim();
        let hex: String = trimmed.chars().filter(|&c| c != ':').collect();
        if hex.len() != 64 {
            return Err(CredentialError::InvalidFingerprint(format!(
                "expected 64 hex digits (SHA-256), got {} characters",
                hex.chars().count()
            )));
        }
        let bytes = super::encoding::hex_decode(&hex).map_err(|_| {
            CredentialError::InvalidFingerprint("only hex digits and ':' are allowed".into())
        })?;
        let mut out = [0u8; 32];
        out.copy_from_slice(&bytes);
        Ok(CertFingerprint(out))
    }

    /// From the 32 raw digest bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> CertFingerprint {
        CertFingerprint(bytes)
    }

    /// From the RFC 8705 `x5t#S256` form (base64url of the digest).
    pub fn from_x5t_s256(text: &str) -> Option<CertFingerprint> {
        let bytes = b64url_decode(text).ok()?;
        let arr: [u8; 32] = bytes.try_into().ok()?;
        Some(CertFingerprint(arr))
    }

    /// The digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        hex_encode(&self.0)
    }

    /// RFC 8705 §3.1: "x5t#S256 ... base64url-encoded SHA-256 thumbprint
    /// (a.k.a. digest) of the DER encoding of the X.509 certificate".
    pub fn to_x5t_s256(&self) -> String {
        b64url_encode(&self.0)
    }
}

impl fmt::Debug for CertFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CertFingerprint({})", self.to_hex())
    }
}

impl fmt::Display for CertFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl TryFrom<String> for CertFingerprint {
    type Error = CredentialError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        CertFingerprint::parse(&s)
    }
}

impl From<CertFingerprint> for String {
    fn from(f: CertFingerprint) -> String {
        f.to_hex()
    }
}

/// Normalizes a list of fingerprints: each parsed, duplicates removed,
/// sorted (so equal sets compare equal).
pub fn normalize_fingerprints<S: AsRef<str>>(
    list: &[S],
) -> Result<Vec<CertFingerprint>, CredentialError> {
    let mut out = list
        .iter()
        .map(|s| CertFingerprint::parse(s.as_ref()))
        .collect::<Result<Vec<_>, _>>()?;
    out.sort();
    out.dedup();
    Ok(out)
}

// ----------------------------------------------------------- client secret

/// A freshly generated client secret: `gcs_` + base64url of 32 random bytes.
/// Shown once; only [`hash_client_secret`] of it is stored.
pub fn format_client_secret(random: &[u8; 32]) -> String {
    format!("{CLIENT_SECRET_PREFIX}{}", b64url_encode(random))
}

/// What the registry stores instead of the secret. A plain (domain-
/// separated) SHA-256 is enough: the secret has 256 bits of entropy, so
/// there is nothing for a slow password hash to protect against.
pub fn hash_client_secret(secret: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(SECRET_HASH_DOMAIN);
    h.update(secret.as_bytes());
    h.finalize().into()
}

/// Checks a presented secret against the stored hash in constant time.
/// Oversized input is refused before hashing.
pub fn verify_client_secret(presented: &str, stored_hash: &[u8]) -> bool {
    if presented.len() > MAX_SECRET_LEN {
        return false;
    }
    ct_eq(&hash_client_secret(presented), stored_hash)
}

// ---------------------------------------------------------- webhook secret

/// The AP's webhook signing key, derived rather than stored ("sealed by
/// derivation"): HMAC-SHA256(master, "webhook:" + ap_id + ":" + generation).
/// Whoever holds the GP's master key can recompute it to sign; a leaked
/// registry row reveals nothing. Rotating bumps `generation`.
pub fn derive_webhook_secret(master: &[u8], ap_id: &str, generation: u64) -> [u8; 32] {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail.
    let mut mac = match HmacSha256::new_from_slice(master) {
        Ok(m) => m,
        Err(_) => return [0u8; 32],
    };
    mac.update(b"webhook:");
    mac.update(ap_id.as_bytes());
    mac.update(b":");
    mac.update(generation.to_string().as_bytes());
    mac.finalize().into_bytes().into()
}

/// Standard Webhooks form of a signing secret: `whsec_` + base64.
pub fn format_webhook_secret(key: &[u8; 32]) -> String {
    format!("{WEBHOOK_SECRET_PREFIX}{}", b64_encode(key))
}

// ------------------------------------------------------------- webhook URL

/// Checks an AP's webhook URL: an absolute RFC 3986 URI
/// `https://host[:port][/path][?query][#fragment]`, ASCII only (other
/// characters percent-encoded), no credentials in the URL. `http://` only to
/// a loopback host, and only when `allow_http_loopback` (a local GP whose
/// stand-in AP servers run on 127.0.0.1; a production GP never sends
/// webhooks in clear). The URL is stored and shown as given, and the API
/// document promises a `uri`, so anything RFC 3986 would refuse (a stray
/// `[`, `HTTPS://[0]`, a space) is refused here.
pub fn validate_webhook_url(url: &str, allow_http_loopback: bool) -> Result<(), CredentialError> {
    let bad = |why: &str| Err(CredentialError::InvalidWebhookUrl(why.into()));
    if url.len() > MAX_WEBHOOK_URL_LEN {
        return bad("longer than 2048 characters");
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad("contains whitespace or control characters");
    }
    if !url.is_ascii() {
        return bad("contains a non-ASCII character (percent-encode it)");
    }
    let lower = url.to_ascii_lowercase();
    let (https, rest) = if let Some(rest) = lower.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = lower.strip_prefix("http://") {
        (false, rest)
    } else {
        return bad("must start with https://");
    };
    let split = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(split);
    if authority.contains('@') {
        return bad("must not contain credentials (user@)");
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let Some((h, after)) = v6.split_once(']') else {
            return bad("unterminated IPv6 address");
        };
        if h.parse::<core::net::Ipv6Addr>().is_err() {
            return bad("the bracketed host is not an IPv6 address");
        }
        match after.strip_prefix(':') {
            Some(p) => (h, Some(p)),
            None if after.is_empty() => (h, None),
            None => return bad("unexpected characters after the IPv6 address"),
        }
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return bad("has no host");
    }
    if !authority.starts_with('[') && !uri_chars_ok(host, "") {
        return bad("the host has a character not allowed in a URI");
    }
    if port.is_some_and(|p| !p.bytes().all(|b| b.is_ascii_digit())) {
        return bad("the port is not a number");
    }
    // RFC 3986 §3.3-3.5: path, query and fragment are pchars, '/' and '?';
    // the first '#' starts the fragment, which cannot hold another.
    if tail.matches('#').count() > 1 {
        return bad("has more than one '#'");
    }
    if !uri_chars_ok(tail, ":@/?#") {
        return bad("has a character not allowed in a URI (percent-encode it)");
    }
    if !https {
        let loopback = host == "localhost" || host == "127.0.0.1" || host == "::1";
        if !(allow_http_loopback && loopback) {
            return bad(if allow_http_loopback {
                "http:// is allowed only for loopback hosts (localhost, 127.0.0.1, [::1])"
            } else {
                "must use https:// (this GP requires TLS to webhooks)"
            });
        }
    }
    Ok(())
}

/// RFC 3986 unreserved and sub-delims characters, valid percent-escapes,
/// and the `extra` characters allowed where `s` appears.
fn uri_chars_ok(s: &str, extra: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        if c == b'%' {
            let hex = |j: usize| b.get(j).is_some_and(|h| h.is_ascii_hexdigit());
            if !(hex(i + 1) && hex(i + 2)) {
                return false;
            }
            i += 3;
            continue;
        }
        let ok = c.is_ascii_alphanumeric()
            || b"-._~!$&'()*+,;=".contains(&c)
            || extra.as_bytes().contains(&c);
        if !ok {
            return false;
        }
        i += 1;
    }
    true
}

// ----------------------------------------------------- HTTP Basic (RFC 6749)

/// Client id and secret from an `Authorization: Basic …` credential.
/// RFC 6749 §2.3.1: "The client identifier is encoded using the
/// "application/x-www-form-urlencoded" encoding algorithm ..., and the
/// encoded value is used as the username; the client password is encoded
/// using the same algorithm and used as the password."
pub fn parse_basic_credentials(b64: &str) -> Result<(String, String), CredentialError> {
    if b64.len() > 1024 {
        return Err(CredentialError::InvalidBasicAuth("too long"));
    }
    let raw = super::encoding::b64_decode(b64.trim())
        .map_err(|_| CredentialError::InvalidBasicAuth("not base64"))?;
    let text =
        String::from_utf8(raw).map_err(|_| CredentialError::InvalidBasicAuth("not UTF-8"))?;
    let (id, secret) = text
        .split_once(':')
        .ok_or(CredentialError::InvalidBasicAuth(
            "no ':' between id and secret",
        ))?;
    let id = form_decode(id).map_err(|_| CredentialError::InvalidBasicAuth("bad id encoding"))?;
    let secret = form_decode(secret)
        .map_err(|_| CredentialError::InvalidBasicAuth("bad secret encoding"))?;
    Ok((id, secret))
}

// --------------------------------------------------------------- mutual TLS

/// What the TLS layer says about the client certificate of one request
/// (Cloudflare `request.cf.tlsClientAuth`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientCert {
    /// No certificate was presented (or the platform reported nothing).
    None,
    /// A certificate was presented but did not verify; the platform's
    /// reason (e.g. `FAILED:self signed certificate`).
    Unverified(String),
    /// A certificate that verified against the configured CA, by fingerprint.
    Verified(CertFingerprint),
}

impl ClientCert {
    /// The fingerprint, if verified.
    pub fn verified(&self) -> Option<&CertFingerprint> {
        match self {
            ClientCert::Verified(f) => Some(f),
            _ => None,
        }
    }
}

/// Why a request's client certificate was not good enough.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CertError {
    /// mTLS is required (or the token is bound) and no verified certificate came.
    Required { unverified: Option<String> },
    /// The certificate is not enrolled for this AP (token endpoint).
    NotEnrolled(CertFingerprint),
    /// The token is bound to another certificate (RFC 8705 §3).
    Mismatch,
    /// mTLS is required but the token is not bound to any certificate.
    Unbound,
}

impl fmt::Display for CertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CertError::Required { unverified: None } => f.write_str(
                "this GP requires a verified TLS client certificate (mutual TLS, draft §11.3) and none was presented",
            ),
            CertError::Required {
                unverified: Some(why),
            } => write!(
                f,
                "a TLS client certificate was presented but did not verify ({why}); a verified certificate is required"
            ),
            CertError::NotEnrolled(fp) => write!(
                f,
                "the TLS client certificate {fp} is not enrolled for this client"
            ),
            CertError::Mismatch => f.write_str(
                "the access token is bound to a different TLS client certificate (RFC 8705 cnf x5t#S256)",
            ),
            CertError::Unbound => f.write_str(
                "the access token is not bound to a client certificate, but this GP requires mutual TLS; get a new token over mutual TLS",
            ),
        }
    }
}

impl Problem for CertError {
    fn slug(&self) -> &'static str {
        match self {
            CertError::Required { .. } => "certificate-required",
            CertError::NotEnrolled(_) => "certificate-not-enrolled",
            CertError::Mismatch | CertError::Unbound => "certificate-mismatch",
        }
    }
    fn title(&self) -> &'static str {
        match self {
            CertError::Required { .. } => "Client certificate required",
            CertError::NotEnrolled(_) => "Client certificate not enrolled",
            CertError::Mismatch | CertError::Unbound => "Client certificate mismatch",
        }
    }
    fn status(&self) -> u16 {
        401
    }
}

/// At the token endpoint: which certificate (if any) the new token is bound
/// to. With mTLS required, a verified certificate enrolled for the AP must be
/// present. Without, a verified certificate is still checked against the
/// enrolled ones and bound (so dev behaves like production when a test
/// presents one); an unverified one is ignored, as the platform vouches
/// for nothing.
pub fn cert_for_token(
    require_mtls: bool,
    cert: &ClientCert,
    enrolled: &[CertFingerprint],
) -> Result<Option<CertFingerprint>, CertError> {
    match cert {
        ClientCert::Verified(fp) => {
            if enrolled.contains(fp) {
                Ok(Some(*fp))
            } else {
                Err(CertError::NotEnrolled(*fp))
            }
        }
        ClientCert::Unverified(why) if require_mtls => Err(CertError::Required {
            unverified: Some(why.clone()),
        }),
        _ if require_mtls => Err(CertError::Required { unverified: None }),
        _ => Ok(None),
    }
}

/// On a client API call: RFC 8705 §3 "the protected resource MUST obtain the
/// client certificate used for mutual TLS authentication and MUST verify
/// that the certificate matches the certificate associated with the access
/// token". A bound token needs its certificate even where mTLS is optional.
pub fn check_token_binding(
    require_mtls: bool,
    cert: &ClientCert,
    cnf: Option<&CertFingerprint>,
) -> Result<(), CertError> {
    let presented = cert.verified();
    if presented.is_none() && (require_mtls || cnf.is_some()) {
        return Err(CertError::Required {
            unverified: match cert {
                ClientCert::Unverified(why) => Some(why.clone()),
                _ => None,
            },
        });
    }
    match (cnf, presented) {
        (Some(bound), Some(p)) if ct_eq(bound.as_bytes(), p.as_bytes()) => Ok(()),
        (Some(_), _) => Err(CertError::Mismatch),
        (None, _) if require_mtls => Err(CertError::Unbound),
        (None, _) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FP: &str = "AB:CD:EF:01:23:45:67:89:ab:cd:ef:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:ab:cd:ef:01:23:45:67:89";

    fn fp(n: u8) -> CertFingerprint {
        CertFingerprint::from_bytes([n; 32])
    }

    #[test]
    fn fingerprints_normalize_to_lowercase_hex() {
        let f = CertFingerprint::parse(FP).unwrap();
        assert_eq!(f.to_hex(), "abcdef0123456789".repeat(4));
        assert_eq!(
            CertFingerprint::parse(&"ABCDEF0123456789".repeat(4)).unwrap(),
            f
        );
        assert_eq!(CertFingerprint::from_x5t_s256(&f.to_x5t_s256()), Some(f));
        let json = serde_json_like(&f);
        assert_eq!(json, "abcdef0123456789".repeat(4));
    }

    fn serde_json_like(f: &CertFingerprint) -> String {
        String::from(*f)
    }

    #[test]
    fn fingerprints_refuse_wrong_lengths_and_characters() {
        assert!(matches!(
            CertFingerprint::parse("abcd"),
            Err(CredentialError::InvalidFingerprint(_))
        ));
        assert!(CertFingerprint::parse(&"g".repeat(64)).is_err());
        assert!(CertFingerprint::parse(&"é".repeat(32)).is_err());
        // SHA-1 fingerprints (40 hex digits) are a common operator mistake.
        let e = CertFingerprint::parse(&"a".repeat(40)).unwrap_err();
        assert!(e.to_string().contains("64 hex digits"), "{e}");
    }

    #[test]
    fn fingerprint_lists_are_sorted_and_deduplicated() {
        let list = ["bb".repeat(32), "AA".repeat(32), "bb:".repeat(31) + "bb"];
        let out = normalize_fingerprints(&list).unwrap();
        assert_eq!(out, vec![fp(0xaa), fp(0xbb)]);
        assert!(normalize_fingerprints(&["nope"]).is_err());
    }

    #[test]
    fn client_secrets_hash_and_verify() {
        let s = format_client_secret(&[7u8; 32]);
        assert!(s.starts_with("gcs_"));
        assert_eq!(s.len(), 4 + 43);
        let h = hash_client_secret(&s);
        assert!(verify_client_secret(&s, &h));
        assert!(!verify_client_secret(&format_client_secret(&[8u8; 32]), &h));
        assert!(!verify_client_secret("", &h));
        assert!(!verify_client_secret(&"x".repeat(10_000), &h));
        assert!(!verify_client_secret(&s, &h[..31]), "truncated stored hash");
    }

    #[test]
    fn webhook_secrets_are_derived_per_ap_and_generation() {
        let k = b"master key for tests, 32+ bytes!";
        let a1 = derive_webhook_secret(k, "ap-a", 1);
        assert_eq!(a1, derive_webhook_secret(k, "ap-a", 1), "deterministic");
        assert_ne!(
            a1,
            derive_webhook_secret(k, "ap-a", 2),
            "rotation changes it"
        );
        assert_ne!(a1, derive_webhook_secret(k, "ap-b", 1));
        assert_ne!(a1, derive_webhook_secret(b"another master key", "ap-a", 1));
        // Matches HMAC-SHA256(key, "webhook:ap-a:1") computed independently
        // (node: crypto.createHmac('sha256', k).update('webhook:ap-a:1')).
        let mut mac = HmacSha256::new_from_slice(k).unwrap();
        mac.update(b"webhook:ap-a:1");
        assert_eq!(a1.as_slice(), mac.finalize().into_bytes().as_slice());
        let s = format_webhook_secret(&a1);
        assert!(s.starts_with("whsec_"));
        assert_eq!(
            super::super::encoding::b64_decode(&s[6..]).unwrap(),
            a1.to_vec()
        );
    }

    #[test]
    fn webhook_urls() {
        assert!(validate_webhook_url("https://ap.example/hooks/glados", false).is_ok());
        assert!(validate_webhook_url("https://ap.example:8443", false).is_ok());
        assert!(validate_webhook_url("http://127.0.0.1:8791/ap-a", true).is_ok());
        assert!(validate_webhook_url("http://localhost/x", true).is_ok());
        assert!(validate_webhook_url("http://[::1]:9/x", true).is_ok());
        assert!(
            validate_webhook_url("HTTPS://[2001:db8::1]:8443/a%20b?q=1&r=/x?#frag", false).is_ok()
        );
        assert!(validate_webhook_url("https://xn--bcher-kva.example/h~o_o.k-s;v=1", false).is_ok());
        for (url, allow) in [
            ("http://127.0.0.1:8791/ap-a", false),
            ("http://ap.example/x", true),
            ("http://127.0.0.1.evil.example/x", true),
            ("ftp://ap.example/x", true),
            ("https://user:pw@ap.example/x", false),
            ("https:///nohost", false),
            ("https://ap.example/a b", false),
            ("//ap.example", false),
            // Found by schemathesis: stored, then served as a "uri" it is not.
            ("HTTPS://[0]", false),
            ("https://[::1", false),
            ("https://[::1]x/", false),
            ("https://ap.example:80a/", false),
            ("https://ap.example/a[b]", false),
            ("https://ap.example/{x}", false),
            ("https://ap.example/%zz", false),
            ("https://ap.example/a#b#c", false),
            ("https://b\u{fc}cher.example/", false),
            ("https://ap.example/\u{e9}", false),
        ] {
            assert!(
                matches!(
                    validate_webhook_url(url, allow),
                    Err(CredentialError::InvalidWebhookUrl(_))
                ),
                "{url} allow_http_loopback={allow}"
            );
        }
        let long = format!("https://ap.example/{}", "a".repeat(3000));
        assert!(validate_webhook_url(&long, false).is_err());
    }

    #[test]
    fn basic_credentials_are_form_decoded() {
        // base64("ap-a:gcs_x%2By") → secret "gcs_x+y".
        let b64 = super::super::encoding::b64_encode(b"ap-a:gcs_x%2By");
        assert_eq!(
            parse_basic_credentials(&b64).unwrap(),
            ("ap-a".to_string(), "gcs_x+y".to_string())
        );
        let b64 = super::super::encoding::b64_encode(b"no-colon");
        assert!(parse_basic_credentials(&b64).is_err());
        assert!(parse_basic_credentials("!!!").is_err());
    }

    #[test]
    fn token_endpoint_binds_enrolled_verified_certs() {
        let enrolled = [fp(1), fp(2)];
        let v = |n| ClientCert::Verified(fp(n));
        assert_eq!(cert_for_token(true, &v(2), &enrolled), Ok(Some(fp(2))));
        assert_eq!(cert_for_token(false, &v(2), &enrolled), Ok(Some(fp(2))));
        assert_eq!(
            cert_for_token(true, &v(3), &enrolled),
            Err(CertError::NotEnrolled(fp(3)))
        );
        assert_eq!(
            cert_for_token(false, &v(3), &enrolled),
            Err(CertError::NotEnrolled(fp(3)))
        );
        assert_eq!(
            cert_for_token(true, &ClientCert::None, &enrolled),
            Err(CertError::Required { unverified: None })
        );
        let unverified = ClientCert::Unverified("FAILED:expired".into());
        assert_eq!(
            cert_for_token(true, &unverified, &enrolled),
            Err(CertError::Required {
                unverified: Some("FAILED:expired".into())
            })
        );
        assert_eq!(cert_for_token(false, &unverified, &enrolled), Ok(None));
        assert_eq!(cert_for_token(false, &ClientCert::None, &[]), Ok(None));
    }

    #[test]
    fn client_calls_need_the_bound_cert() {
        let v = |n| ClientCert::Verified(fp(n));
        // Bound token: the same cert passes, any other fails, none fails.
        for required in [true, false] {
            assert_eq!(check_token_binding(required, &v(1), Some(&fp(1))), Ok(()));
            assert_eq!(
                check_token_binding(required, &v(2), Some(&fp(1))),
                Err(CertError::Mismatch)
            );
            assert_eq!(
                check_token_binding(required, &ClientCert::None, Some(&fp(1))),
                Err(CertError::Required { unverified: None })
            );
        }
        // Unbound token: fine without mTLS, refused with it.
        assert_eq!(check_token_binding(false, &ClientCert::None, None), Ok(()));
        assert_eq!(check_token_binding(false, &v(1), None), Ok(()));
        assert_eq!(
            check_token_binding(true, &v(1), None),
            Err(CertError::Unbound)
        );
        assert_eq!(
            check_token_binding(true, &ClientCert::Unverified("FAILED:x".into()), None),
            Err(CertError::Required {
                unverified: Some("FAILED:x".into())
            })
        );
        assert_eq!(CertError::Mismatch.slug(), "certificate-mismatch");
        assert_eq!(CertError::Mismatch.status(), 401);
    }
}
