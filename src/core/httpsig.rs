//! GP-to-GP request signing: HTTP Message Signatures (RFC 9421) with
//! Ed25519, and `Content-Digest` (RFC 9530).
//!
//! draft §6 and §11.1: GPs "are fully trusted" — which only holds if a GP
//! can tell that a request really comes from a configured peer. ARCHITECTURE.md,
//! Invariants 6: every GP-to-GP request is signed by the sender's key and
//! verified against the configured peer key, with a freshness window.
//!
//! What a GLADOS signature covers (label [`LABEL`]):
//! `("@method" "@authority" "@path" "@query" ["content-digest"])` with
//! parameters `created`, `keyid` (the sender's GP id), `nonce` and
//! `alg="ed25519"`. `@authority` binds the request to the receiving GP, so
//! a request signed for one peer cannot be replayed at another;
//! `content-digest` binds the body; `created` + `nonce` let the receiver
//! refuse stale and replayed requests (the nonce store lives in the worker).
//!
//! The Structured Fields (RFC 8941) parsing here is the subset these two
//! headers need: dictionaries of inner lists / byte sequences with
//! parameters whose values are integers, strings, tokens or booleans.
//! Everything is defensive: any input yields `Ok` or an error, never a panic.
//! Pure: time comes in as an argument, keys as bytes.

use core::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use super::encoding::{b64_decode, b64_encode};
use super::Problem;

/// The signature label GLADOS uses in `Signature-Input` / `Signature`.
pub const LABEL: &str = "glados";
/// RFC 9421 §6.2 algorithm name for Ed25519.
pub const ALG: &str = "ed25519";
/// Default freshness window: a signature is accepted if `created` is at most
/// this many seconds in the past (or in the future, for clock skew). The
/// receiver must remember nonces for the same window.
pub const DEFAULT_WINDOW_S: u64 = 60;
/// Longest header value we parse; real ones are ~200 bytes.
const MAX_HEADER_LEN: usize = 4096;
/// Longest accepted nonce / keyid.
const MAX_PARAM_LEN: usize = 128;

/// A Structured Field bare item (RFC 8941 §3.3), the kinds we accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Integer(i64),
    String(String),
    Token(String),
    Bytes(Vec<u8>),
    Boolean(bool),
}

impl Item {
    /// RFC 8941 §4.1 serialization.
    fn serialize(&self, out: &mut String) {
        match self {
            Item::Integer(i) => out.push_str(&i.to_string()),
            Item::String(s) => {
                out.push('"');
                for c in s.chars() {
                    if c == '"' || c == '\\' {
                        out.push('\\');
                    }
                    out.push(c);
                }
                out.push('"');
            }
            Item::Token(t) => out.push_str(t),
            Item::Bytes(b) => {
                out.push(':');
                out.push_str(&b64_encode(b));
                out.push(':');
            }
            Item::Boolean(true) => out.push_str("?1"),
            Item::Boolean(false) => out.push_str("?0"),
        }
    }
}

/// The signature parameters of one signature (RFC 9421 §2.3): the covered
/// component identifiers, in order, and the parameters, in received order
/// (the signature base uses them exactly as serialized).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigParams {
    pub components: Vec<String>,
    pub params: Vec<(String, Item)>,
}

impl SigParams {
    /// The GLADOS parameters for a new signature.
    pub fn new(components: &[&str], created: u64, keyid: &str, nonce: &str) -> SigParams {
        SigParams {
            components: components.iter().map(|c| c.to_string()).collect(),
            params: vec![
                (
                    "created".into(),
                    Item::Integer(i64::try_from(created).unwrap_or(i64::MAX)),
                ),
                ("keyid".into(), Item::String(keyid.into())),
                ("nonce".into(), Item::String(nonce.into())),
                ("alg".into(), Item::String(ALG.into())),
            ],
        }
    }

    fn param(&self, name: &str) -> Option<&Item> {
        self.params.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    pub fn created(&self) -> Option<u64> {
        match self.param("created") {
            Some(Item::Integer(i)) => u64::try_from(*i).ok(),
            _ => None,
        }
    }

    pub fn expires(&self) -> Option<u64> {
        match self.param("expires") {
            Some(Item::Integer(i)) => u64::try_from(*i).ok(),
            _ => None,
        }
    }

    fn string_param(&self, name: &str) -> Option<&str> {
        match self.param(name) {
            Some(Item::String(s)) => Some(s),
            _ => None,
        }
    }

    pub fn keyid(&self) -> Option<&str> {
        self.string_param("keyid")
    }

    pub fn nonce(&self) -> Option<&str> {
        self.string_param("nonce")
    }

    pub fn alg(&self) -> Option<&str> {
        self.string_param("alg")
    }

    /// RFC 9421 §2.3: the serialized inner list with its parameters — the
    /// value of `@signature-params` and of the `Signature-Input` member.
    pub fn serialize(&self) -> String {
        let mut out = String::from("(");
        for (i, c) in self.components.iter().enumerate() {
            if i > 0 {
                out.push(' ');
            }
            Item::String(c.clone()).serialize(&mut out);
        }
        out.push(')');
        for (k, v) in &self.params {
            out.push(';');
            out.push_str(k);
            if *v != Item::Boolean(true) {
                out.push('=');
                v.serialize(&mut out);
            }
        }
        out
    }
}

/// Why a signed request was refused. Every variant is a 401 with its own
/// slug, so a peer operator can tell at once what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SigError {
    /// No `Signature-Input` / `Signature` (or none with our label).
    Missing,
    /// A header is not the Structured Field RFC 9421 §4 defines.
    Malformed(String),
    /// The signature does not cover what GLADOS requires, or lacks a
    /// required parameter.
    Incomplete(String),
    /// `keyid` names no configured peer.
    UnknownKey(String),
    /// `created` is outside the freshness window (or `expires` has passed).
    Stale { created: u64, now: u64, window: u64 },
    /// The Ed25519 signature does not verify with the peer's key.
    Invalid,
    /// The body does not match `Content-Digest`.
    DigestMismatch,
}

impl fmt::Display for SigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SigError::Missing => write!(
                f,
                "peer requests must carry an RFC 9421 signature labelled {LABEL:?} \
                 (Signature-Input and Signature headers)"
            ),
            SigError::Malformed(why) => write!(f, "the signature headers cannot be parsed: {why}"),
            SigError::Incomplete(why) => write!(f, "the signature is incomplete: {why}"),
            SigError::UnknownKey(k) => {
                write!(f, "keyid {k:?} is not a peer configured at this GP")
            }
            SigError::Stale {
                created,
                now,
                window,
            } => write!(
                f,
                "the signature was created at {created}, the GP's clock says {now}; \
                 only signatures within {window} s are accepted"
            ),
            SigError::Invalid => write!(
                f,
                "the signature does not verify with the key configured for this peer"
            ),
            SigError::DigestMismatch => write!(
                f,
                "the body does not match its Content-Digest (RFC 9530, sha-256)"
            ),
        }
    }
}

impl Problem for SigError {
    fn slug(&self) -> &'static str {
        match self {
            SigError::Missing => "peer-signature-missing",
            SigError::Malformed(_) => "peer-signature-malformed",
            SigError::Incomplete(_) => "peer-signature-incomplete",
            SigError::UnknownKey(_) => "peer-unknown-key",
            SigError::Stale { .. } => "peer-signature-stale",
            SigError::Invalid => "peer-signature-invalid",
            SigError::DigestMismatch => "content-digest-mismatch",
        }
    }

    fn title(&self) -> &'static str {
        match self {
            SigError::Missing => "Peer request not signed",
            SigError::Malformed(_) => "Peer signature malformed",
            SigError::Incomplete(_) => "Peer signature incomplete",
            SigError::UnknownKey(_) => "Unknown peer key",
            SigError::Stale { .. } => "Peer signature stale",
            SigError::Invalid => "Peer signature invalid",
            SigError::DigestMismatch => "Content-Digest mismatch",
        }
    }

    fn status(&self) -> u16 {
        401
    }
}

// ------------------------------------------------------------------ parser

/// A tiny RFC 8941 cursor over ASCII bytes.
struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

type PResult<T> = Result<T, String>;

impl<'a> Parser<'a> {
    fn new(s: &'a str) -> Self {
        Parser {
            s: s.as_bytes(),
            i: 0,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn skip_sp(&mut self) {
        while self.peek() == Some(b' ') {
            self.i += 1;
        }
    }

    fn skip_ows(&mut self) {
        while matches!(self.peek(), Some(b' ') | Some(b'\t')) {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    /// RFC 8941 §4.2.3.3 key: lcalpha / "*" then lcalpha / DIGIT / "_-.*".
    fn key(&mut self) -> PResult<String> {
        let start = self.i;
        match self.peek() {
            Some(c) if c.is_ascii_lowercase() || c == b'*' => self.i += 1,
            _ => return Err(format!("expected a key at offset {start}")),
        }
        while let Some(c) = self.peek() {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || b"_-.*".contains(&c) {
                self.i += 1;
            } else {
                break;
            }
        }
        Ok(String::from_utf8_lossy(self.s.get(start..self.i).unwrap_or_default()).into_owned())
    }

    fn bare_item(&mut self) -> PResult<Item> {
        match self.peek() {
            Some(b'"') => self.string().map(Item::String),
            Some(b':') => self.bytes().map(Item::Bytes),
            Some(b'?') => {
                self.i += 1;
                match self.peek() {
                    Some(b'1') => {
                        self.i += 1;
                        Ok(Item::Boolean(true))
                    }
                    Some(b'0') => {
                        self.i += 1;
                        Ok(Item::Boolean(false))
                    }
                    _ => Err(format!("bad boolean at offset {}", self.i)),
                }
            }
            Some(c) if c == b'-' || c.is_ascii_digit() => self.integer().map(Item::Integer),
            Some(c) if c.is_ascii_alphabetic() || c == b'*' => self.token().map(Item::Token),
            _ => Err(format!("expected an item at offset {}", self.i)),
        }
    }

    /// RFC 8941 §4.2.4: at most 15 digits; decimals are not accepted here.
    fn integer(&mut self) -> PResult<i64> {
        let neg = self.eat(b'-');
        let start = self.i;
        while matches!(self.peek(), Some(c) if c.is_ascii_digit()) {
            self.i += 1;
        }
        let digits = self.s.get(start..self.i).unwrap_or_default();
        if digits.is_empty() || digits.len() > 15 {
            return Err(format!("bad integer at offset {start}"));
        }
        if self.peek() == Some(b'.') {
            return Err(format!("decimals are not accepted (offset {})", self.i));
        }
        let mut v: i64 = 0;
        for d in digits {
            v = v * 10 + i64::from(d - b'0');
        }
        Ok(if neg { -v } else { v })
    }

    /// RFC 8941 §4.2.5: printable ASCII, `\"` and `\\` escapes only.
    fn string(&mut self) -> PResult<String> {
        let start = self.i;
        if !self.eat(b'"') {
            return Err(format!("expected a string at offset {start}"));
        }
        let mut out = String::new();
        loop {
            match self.peek() {
                None => return Err(format!("unterminated string from offset {start}")),
                Some(b'\\') => {
                    self.i += 1;
                    match self.peek() {
                        Some(c @ (b'"' | b'\\')) => {
                            out.push(char::from(c));
                            self.i += 1;
                        }
                        _ => return Err(format!("bad escape at offset {}", self.i)),
                    }
                }
                Some(b'"') => {
                    self.i += 1;
                    return Ok(out);
                }
                Some(c) if (0x20..0x7f).contains(&c) => {
                    out.push(char::from(c));
                    self.i += 1;
                }
                Some(_) => {
                    return Err(format!("non-printable byte in string at offset {}", self.i))
                }
            }
        }
    }

    fn token(&mut self) -> PResult<String> {
        let start = self.i;
        while let Some(c) = self.peek() {
            if c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(&c) {
                self.i += 1;
            } else {
                break;
            }
        }
        Ok(String::from_utf8_lossy(self.s.get(start..self.i).unwrap_or_default()).into_owned())
    }

    fn bytes(&mut self) -> PResult<Vec<u8>> {
        let start = self.i;
        self.eat(b':');
        let body_start = self.i;
        while matches!(self.peek(), Some(c) if c != b':') {
            self.i += 1;
        }
        let body = self.s.get(body_start..self.i).unwrap_or_default();
        if !self.eat(b':') {
            return Err(format!("unterminated byte sequence from offset {start}"));
        }
        let text = core::str::from_utf8(body).map_err(|_| "non-ASCII byte sequence".to_string())?;
        b64_decode(text).map_err(|e| format!("byte sequence at offset {start}: {e}"))
    }

    fn parameters(&mut self) -> PResult<Vec<(String, Item)>> {
        let mut out: Vec<(String, Item)> = Vec::new();
        while self.eat(b';') {
            self.skip_sp();
            let k = self.key()?;
            let v = if self.eat(b'=') {
                self.bare_item()?
            } else {
                Item::Boolean(true)
            };
            // RFC 8941 §4.2.3.2: a repeated key overwrites the earlier value.
            if let Some(slot) = out.iter_mut().find(|(ek, _)| *ek == k) {
                slot.1 = v;
            } else {
                out.push((k, v));
            }
        }
        Ok(out)
    }
}

/// A dictionary member value: an item or an inner list, with parameters.
enum Member {
    Item(Item),
    Inner(Vec<(Item, Vec<(String, Item)>)>, Vec<(String, Item)>),
}

/// RFC 8941 §4.2.2 dictionary.
fn parse_dictionary(text: &str) -> PResult<Vec<(String, Member)>> {
    if text.len() > MAX_HEADER_LEN {
        return Err(format!("header longer than {MAX_HEADER_LEN} bytes"));
    }
    let mut p = Parser::new(text);
    let mut out: Vec<(String, Member)> = Vec::new();
    p.skip_sp();
    if p.peek().is_none() {
        return Ok(out);
    }
    loop {
        let key = p.key()?;
        let member = if p.eat(b'=') {
            if p.eat(b'(') {
                let mut items = Vec::new();
                loop {
                    p.skip_sp();
                    if p.eat(b')') {
                        break;
                    }
                    let item = p.bare_item()?;
                    let params = p.parameters()?;
                    items.push((item, params));
                    match p.peek() {
                        Some(b' ') | Some(b')') => {}
                        _ => return Err(format!("bad inner list at offset {}", p.i)),
                    }
                }
                let params = p.parameters()?;
                Member::Inner(items, params)
            } else {
                let item = p.bare_item()?;
                let _ = p.parameters()?;
                Member::Item(item)
            }
        } else {
            let _ = p.parameters()?;
            Member::Item(Item::Boolean(true))
        };
        if let Some(slot) = out.iter_mut().find(|(k, _)| *k == key) {
            slot.1 = member;
        } else {
            out.push((key, member));
        }
        p.skip_ows();
        if p.peek().is_none() {
            return Ok(out);
        }
        if !p.eat(b',') {
            return Err(format!("expected ',' at offset {}", p.i));
        }
        p.skip_ows();
        if p.peek().is_none() {
            return Err("trailing comma".into());
        }
    }
}

/// Reads the signature parameters labelled `label` from a
/// `Signature-Input` value. `Ok(None)` if there is no such label.
pub fn parse_signature_input(text: &str, label: &str) -> Result<Option<SigParams>, SigError> {
    let dict = parse_dictionary(text).map_err(SigError::Malformed)?;
    let Some((_, member)) = dict.into_iter().find(|(k, _)| k == label) else {
        return Ok(None);
    };
    let Member::Inner(items, params) = member else {
        return Err(SigError::Malformed(format!(
            "Signature-Input member {label:?} is not an inner list"
        )));
    };
    let mut components = Vec::with_capacity(items.len());
    for (item, cparams) in items {
        let Item::String(name) = item else {
            return Err(SigError::Malformed(
                "component identifiers must be strings".into(),
            ));
        };
        // RFC 9421 §2.1 component parameters (sf, key, bs, req, tr, name)
        // are not used by GLADOS; refusing them keeps the base unambiguous.
        if !cparams.is_empty() {
            return Err(SigError::Incomplete(format!(
                "component parameters on {name:?} are not supported"
            )));
        }
        if components.contains(&name) {
            // RFC 9421 §2.5: "the signer MUST NOT include a component more than once".
            return Err(SigError::Malformed(format!(
                "component {name:?} listed twice"
            )));
        }
        components.push(name);
    }
    Ok(Some(SigParams { components, params }))
}

/// Reads the signature bytes labelled `label` from a `Signature` value.
pub fn parse_signature(text: &str, label: &str) -> Result<Option<Vec<u8>>, SigError> {
    let dict = parse_dictionary(text).map_err(SigError::Malformed)?;
    match dict.into_iter().find(|(k, _)| k == label) {
        None => Ok(None),
        Some((_, Member::Item(Item::Bytes(b)))) => Ok(Some(b)),
        Some(_) => Err(SigError::Malformed(format!(
            "Signature member {label:?} is not a byte sequence"
        ))),
    }
}

// ---------------------------------------------------------- signature base

/// The parts of a request a signature can cover.
pub trait Message {
    /// The value of a derived component (`@method`, …) or of a header field
    /// (lowercase name), or `None` if the request has no such component.
    fn component(&self, name: &str) -> Option<String>;
}

/// A request as plain data, for signing, tests and the worker glue.
#[derive(Debug, Clone, Default)]
pub struct PlainRequest {
    pub method: String,
    /// Host (lowercase) with the port unless it is the scheme's default.
    pub authority: String,
    pub path: String,
    /// The query without `?`; `None` when there is none.
    pub query: Option<String>,
    /// Header fields: (lowercase name, value).
    pub headers: Vec<(String, String)>,
}

impl Message for PlainRequest {
    fn component(&self, name: &str) -> Option<String> {
        match name {
            // RFC 9421 §2.2.1: the method "as it appears" (case-sensitive).
            "@method" => Some(self.method.clone()),
            "@authority" => Some(self.authority.to_ascii_lowercase()),
            // §2.2.6: "An empty path string is normalized as a single slash".
            "@path" => Some(if self.path.is_empty() {
                "/".into()
            } else {
                self.path.clone()
            }),
            // §2.2.7: "?" + query; "?" alone when there is none.
            "@query" => Some(format!("?{}", self.query.as_deref().unwrap_or(""))),
            n if n.starts_with('@') => None,
            n => {
                // §2.1: values of repeated fields are joined with ", ",
                // each with leading/trailing whitespace removed.
                let values: Vec<&str> = self
                    .headers
                    .iter()
                    .filter(|(k, _)| k.eq_ignore_ascii_case(n))
                    .map(|(_, v)| v.trim())
                    .collect();
                (!values.is_empty()).then(|| values.join(", "))
            }
        }
    }
}

/// RFC 9421 §2.5: the signature base — one line per covered component,
/// `"name": value`, then `"@signature-params": <params>`.
pub fn signature_base(msg: &dyn Message, params: &SigParams) -> Result<String, SigError> {
    let mut base = String::new();
    for name in &params.components {
        if name == "@signature-params" {
            return Err(SigError::Malformed(
                "@signature-params cannot be covered".into(),
            ));
        }
        let value = msg.component(name).ok_or_else(|| {
            SigError::Incomplete(format!("covered component {name:?} is not in the request"))
        })?;
        // §2.5: a value with a newline would forge extra lines.
        if value.contains('\n') || value.contains('\r') {
            return Err(SigError::Malformed(format!(
                "component {name:?} contains a line break"
            )));
        }
        base.push('"');
        base.push_str(name);
        base.push_str("\": ");
        base.push_str(&value);
        base.push('\n');
    }
    base.push_str("\"@signature-params\": ");
    base.push_str(&params.serialize());
    Ok(base)
}

// ------------------------------------------------------------- digest

/// RFC 9530 `Content-Digest` value for a body: `sha-256=:<base64>:`.
pub fn content_digest(body: &[u8]) -> String {
    format!("sha-256=:{}:", b64_encode(&Sha256::digest(body)))
}

/// Checks a `Content-Digest` header against the body. Only `sha-256` is
/// accepted (RFC 9530 §5: the receiver picks the algorithms it trusts).
pub fn check_content_digest(header: &str, body: &[u8]) -> Result<(), SigError> {
    let dict = parse_dictionary(header).map_err(SigError::Malformed)?;
    match dict.into_iter().find(|(k, _)| k == "sha-256") {
        Some((_, Member::Item(Item::Bytes(d)))) => {
            if d.as_slice() == Sha256::digest(body).as_slice() {
                Ok(())
            } else {
                Err(SigError::DigestMismatch)
            }
        }
        Some(_) => Err(SigError::Malformed(
            "Content-Digest sha-256 is not a byte sequence".into(),
        )),
        None => Err(SigError::Incomplete(
            "Content-Digest has no sha-256 member".into(),
        )),
    }
}

// --------------------------------------------------------- sign / verify

/// The components every GLADOS peer request signs; `content-digest` is
/// added when there is a body.
pub const REQUIRED: [&str; 4] = ["@method", "@authority", "@path", "@query"];

/// Header values to add to an outgoing request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHeaders {
    pub signature_input: String,
    pub signature: String,
}

/// Signs `msg` with the Ed25519 seed `key` as GP `keyid`. If the message
/// has a body its `content-digest` header must already be set (see
/// [`content_digest`]) — it is covered whenever present.
pub fn sign(
    msg: &dyn Message,
    key: &[u8; 32],
    keyid: &str,
    created: u64,
    nonce: &str,
) -> Result<SignedHeaders, SigError> {
    let mut components: Vec<&str> = REQUIRED.to_vec();
    if msg.component("content-digest").is_some() {
        components.push("content-digest");
    }
    let params = SigParams::new(&components, created, keyid, nonce);
    let base = signature_base(msg, &params)?;
    let sig = SigningKey::from_bytes(key).sign(base.as_bytes());
    let mut signature = format!("{LABEL}=");
    Item::Bytes(sig.to_bytes().to_vec()).serialize(&mut signature);
    Ok(SignedHeaders {
        signature_input: format!("{LABEL}={}", params.serialize()),
        signature,
    })
}

/// The Ed25519 public key of a seed (what peers configure for this GP).
pub fn public_key(seed: &[u8; 32]) -> [u8; 32] {
    SigningKey::from_bytes(seed).verifying_key().to_bytes()
}

/// What a verified signature established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The sending GP (the signature's keyid).
    pub keyid: String,
    pub nonce: String,
    pub created: u64,
}

/// Low-level RFC 9421 §3.2 verification of one signature with a known key;
/// no GLADOS policy (used for the RFC's own test vectors).
pub fn verify_raw(
    msg: &dyn Message,
    params: &SigParams,
    signature: &[u8],
    public_key: &[u8; 32],
) -> Result<(), SigError> {
    let base = signature_base(msg, params)?;
    let sig_bytes: [u8; 64] = signature.try_into().map_err(|_| {
        SigError::Malformed(format!(
            "an Ed25519 signature is 64 bytes, got {}",
            signature.len()
        ))
    })?;
    let vk = VerifyingKey::from_bytes(public_key).map_err(|_| SigError::Invalid)?;
    // verify_strict: refuses small-order keys and non-canonical signatures,
    // so one message has one valid signature per key.
    vk.verify_strict(base.as_bytes(), &Signature::from_bytes(&sig_bytes))
        .map_err(|_| SigError::Invalid)?;
    Ok(())
}

/// Verifies a GLADOS peer request: the signature labelled [`LABEL`] must
/// cover [`REQUIRED`] (and `content-digest` when `has_body`), carry
/// `created` within `window_s` of `now_s`, a `nonce` and a `keyid` that
/// `key_for` knows, and verify with that key. The body itself is checked
/// against `Content-Digest` by the caller ([`check_content_digest`]), since
/// the caller holds the bytes. Replays (a nonce seen before) are the
/// caller's check too: it needs storage.
pub fn verify_request(
    msg: &dyn Message,
    has_body: bool,
    now_s: u64,
    window_s: u64,
    key_for: impl Fn(&str) -> Option<[u8; 32]>,
) -> Result<Verified, SigError> {
    let (Some(input), Some(sig)) = (msg.component("signature-input"), msg.component("signature"))
    else {
        return Err(SigError::Missing);
    };
    let Some(params) = parse_signature_input(&input, LABEL)? else {
        return Err(SigError::Missing);
    };
    let Some(sig) = parse_signature(&sig, LABEL)? else {
        return Err(SigError::Missing);
    };
    for c in REQUIRED {
        if !params.components.iter().any(|x| x == c) {
            return Err(SigError::Incomplete(format!("{c:?} is not covered")));
        }
    }
    if has_body && !params.components.iter().any(|x| x == "content-digest") {
        return Err(SigError::Incomplete(
            "the request has a body but \"content-digest\" is not covered".into(),
        ));
    }
    if let Some(alg) = params.alg() {
        if alg != ALG {
            return Err(SigError::Incomplete(format!(
                "alg {alg:?} is not accepted; peers sign with {ALG:?}"
            )));
        }
    }
    let created = params
        .created()
        .ok_or_else(|| SigError::Incomplete("no created parameter".into()))?;
    let nonce = params
        .nonce()
        .filter(|n| !n.is_empty() && n.len() <= MAX_PARAM_LEN)
        .ok_or_else(|| SigError::Incomplete("no usable nonce parameter".into()))?
        .to_string();
    let keyid = params
        .keyid()
        .filter(|k| !k.is_empty() && k.len() <= MAX_PARAM_LEN)
        .ok_or_else(|| SigError::Incomplete("no keyid parameter".into()))?
        .to_string();
    // RFC 9421 §3.2.1: the verifier may reject signatures that are too old
    // or from the future; both sides of the window bound the nonce store.
    if created.saturating_add(window_s) < now_s || created > now_s.saturating_add(window_s) {
        return Err(SigError::Stale {
            created,
            now: now_s,
            window: window_s,
        });
    }
    if let Some(exp) = params.expires() {
        if exp < now_s {
            return Err(SigError::Stale {
                created,
                now: now_s,
                window: window_s,
            });
        }
    }
    let key = key_for(&keyid).ok_or_else(|| SigError::UnknownKey(keyid.clone()))?;
    verify_raw(msg, &params, &sig, &key)?;
    Ok(Verified {
        keyid,
        nonce,
        created,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::encoding::b64url_decode;

    fn key(b64url: &str) -> [u8; 32] {
        b64url_decode(b64url).unwrap().try_into().unwrap()
    }

    /// RFC 9421 Appendix B.1.4 test-key-ed25519 (JWK `d` and `x`).
    const TEST_D: &str = "n4Ni-HpISpVObnQMW0wOhCKROaIKqKtW_2ZYb2p9KcU";
    const TEST_X: &str = "JrQLj5P_89iXES9-vFgrIy29clF9CC_oPPsw3c5D0bs";

    fn b26_request() -> PlainRequest {
        PlainRequest {
            method: "POST".into(),
            authority: "example.com".into(),
            path: "/foo".into(),
            query: Some("param=Value&Pet=dog".into()),
            headers: vec![
                ("date".into(), "Tue, 20 Apr 2021 02:07:55 GMT".into()),
                ("content-type".into(), "application/json".into()),
                ("content-length".into(), "18".into()),
            ],
        }
    }

    #[test]
    fn rfc9421_b26_ed25519_vector() {
        let input = r#"sig-b26=("date" "@method" "@path" "@authority" "content-type" "content-length");created=1618884473;keyid="test-key-ed25519""#;
        let params = parse_signature_input(input, "sig-b26").unwrap().unwrap();
        let base = signature_base(&b26_request(), &params).unwrap();
        assert_eq!(
            base,
            "\"date\": Tue, 20 Apr 2021 02:07:55 GMT\n\"@method\": POST\n\"@path\": /foo\n\
             \"@authority\": example.com\n\"content-type\": application/json\n\
             \"content-length\": 18\n\"@signature-params\": (\"date\" \"@method\" \"@path\" \
             \"@authority\" \"content-type\" \"content-length\");created=1618884473;\
             keyid=\"test-key-ed25519\""
        );
        // The public key is the one the RFC publishes for the private key.
        assert_eq!(public_key(&key(TEST_D)), key(TEST_X));
        // Ed25519 is deterministic: signing the base gives the RFC's value.
        let sig = SigningKey::from_bytes(&key(TEST_D)).sign(base.as_bytes());
        let expected = "wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw==";
        assert_eq!(b64_encode(&sig.to_bytes()), expected);
        let sig = parse_signature(&format!("sig-b26=:{expected}:"), "sig-b26")
            .unwrap()
            .unwrap();
        verify_raw(&b26_request(), &params, &sig, &key(TEST_X)).unwrap();
        // One changed header and it no longer verifies.
        let mut other = b26_request();
        other.headers[2].1 = "19".into();
        assert_eq!(
            verify_raw(&other, &params, &sig, &key(TEST_X)),
            Err(SigError::Invalid)
        );
    }

    const SEED_A: [u8; 32] = [7u8; 32];
    const SEED_B: [u8; 32] = [9u8; 32];

    fn peer_request(body: Option<&[u8]>) -> PlainRequest {
        let mut r = PlainRequest {
            method: "POST".into(),
            authority: "gp-b.example:8788".into(),
            path: "/peer/v1/query".into(),
            query: None,
            headers: vec![],
        };
        if let Some(b) = body {
            r.headers.push(("content-digest".into(), content_digest(b)));
        }
        r
    }

    fn signed(mut r: PlainRequest, seed: &[u8; 32], created: u64, nonce: &str) -> PlainRequest {
        let h = sign(&r, seed, "gp-a", created, nonce).unwrap();
        r.headers
            .push(("signature-input".into(), h.signature_input));
        r.headers.push(("signature".into(), h.signature));
        r
    }

    fn keys(id: &str) -> Option<[u8; 32]> {
        (id == "gp-a").then(|| public_key(&SEED_A))
    }

    #[test]
    fn round_trip_and_refusals() {
        let body = br#"{"sii":"tel:+15551234567"}"#;
        let r = signed(peer_request(Some(body)), &SEED_A, 1_000, "n1");
        let v = verify_request(&r, true, 1_030, 60, keys).unwrap();
        assert_eq!(v.keyid, "gp-a");
        assert_eq!(v.nonce, "n1");
        check_content_digest(&r.component("content-digest").unwrap(), body).unwrap();
        assert_eq!(
            check_content_digest(&r.component("content-digest").unwrap(), b"{}"),
            Err(SigError::DigestMismatch)
        );
        // Stale on both sides of the window.
        assert!(matches!(
            verify_request(&r, true, 1_061, 60, keys),
            Err(SigError::Stale { .. })
        ));
        assert!(matches!(
            verify_request(&r, true, 939, 60, keys),
            Err(SigError::Stale { .. })
        ));
        // Forged: signed with another key under gp-a's keyid.
        let forged = signed(peer_request(Some(body)), &SEED_B, 1_000, "n2");
        assert_eq!(
            verify_request(&forged, true, 1_000, 60, keys),
            Err(SigError::Invalid)
        );
        // Another receiver (authority) or path: invalid.
        let mut moved = r.clone();
        moved.authority = "gp-c.example:8789".into();
        assert_eq!(
            verify_request(&moved, true, 1_000, 60, keys),
            Err(SigError::Invalid)
        );
        // Unsigned.
        assert_eq!(
            verify_request(&peer_request(None), false, 1_000, 60, keys),
            Err(SigError::Missing)
        );
        // Unknown keyid.
        let unknown = |_: &str| None;
        assert_eq!(
            verify_request(&r, true, 1_000, 60, unknown),
            Err(SigError::UnknownKey("gp-a".into()))
        );
        // Body present but the signature did not cover a digest.
        let no_digest = signed(peer_request(None), &SEED_A, 1_000, "n3");
        assert!(matches!(
            verify_request(&no_digest, true, 1_000, 60, keys),
            Err(SigError::Incomplete(_))
        ));
        // Problem slugs are distinct.
        let slugs = [
            SigError::Missing.slug(),
            SigError::Malformed(String::new()).slug(),
            SigError::Incomplete(String::new()).slug(),
            SigError::UnknownKey(String::new()).slug(),
            SigError::Stale {
                created: 0,
                now: 0,
                window: 0,
            }
            .slug(),
            SigError::Invalid.slug(),
            SigError::DigestMismatch.slug(),
        ];
        let mut sorted = slugs.to_vec();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), slugs.len());
    }

    #[test]
    fn params_serialize_round_trip() {
        let p = SigParams::new(&["@method", "@path"], 5, "gp \"x\"", "abc");
        let text = format!("glados={}", p.serialize());
        assert_eq!(
            text,
            r#"glados=("@method" "@path");created=5;keyid="gp \"x\"";nonce="abc";alg="ed25519""#
        );
        assert_eq!(parse_signature_input(&text, LABEL).unwrap(), Some(p));
        // Other labels are ignored; a missing label is None.
        assert_eq!(
            parse_signature_input(r#"x=("@path")"#, LABEL).unwrap(),
            None
        );
    }

    #[test]
    fn malformed_inputs_are_errors() {
        for bad in [
            "glados=(\"@method\"",
            "glados=(\"@method\" \"@method\");created=1",
            "glados=(\"@method\";sf);created=1",
            "glados=(@method);created=1",
            "glados=(\"a\");created=1.5",
            "glados=(\"a\");created=9999999999999999",
            "glados=(\"a\"),",
            "GLADOS=(\"a\")",
            "glados=(\"\x01\")",
        ] {
            assert!(
                parse_signature_input(bad, LABEL).is_err(),
                "{bad:?} should fail"
            );
        }
        assert!(parse_signature("glados=:not base64!:", LABEL).is_err());
        assert!(parse_signature("glados=\"text\"", LABEL).is_err());
        assert!(parse_signature(&"a".repeat(5000), LABEL).is_err());
    }

    proptest::proptest! {
        /// Arbitrary header text never panics the parsers.
        #[test]
        fn parsers_never_panic(s in ".{0,300}") {
            let _ = parse_signature_input(&s, LABEL);
            let _ = parse_signature(&s, LABEL);
            let _ = check_content_digest(&s, b"x");
        }

        /// Arbitrary bytes in the signature headers never verify or panic.
        #[test]
        fn garbage_signature_never_verifies(input in "[ -~]{0,200}", sig in "[ -~]{0,200}") {
            let mut r = peer_request(None);
            r.headers.push(("signature-input".into(), input));
            r.headers.push(("signature".into(), sig));
            proptest::prop_assert!(verify_request(&r, false, 1_000, 60, keys).is_err());
        }
    }
}
