//! Bulk registration input (draft §8.3): parsing, limits, per-line errors,
//! idempotency rules.
//!
//! draft §8.3: "glados will provide a bulk API that allows selected AP to
//! upload mappings, and the GP will just trust them without sending
//! confirmation emails or SMS messages."
//!
//! # Format: NDJSON, not CSV
//!
//! One JSON object per line, `{"sii": "+14155550100", "user": "u-123"}`,
//! `Content-Type: application/x-ndjson`. Chosen over CSV because
//! - user ids are opaque AP strings (draft §8.2) and may hold commas, quotes
//!   or any Unicode; JSON has exactly one escaping standard, CSV has dialects
//!   (RFC 4180 is only a description of common practice);
//! - every record is exactly one physical line (JSON strings cannot hold a raw
//!   newline; CSV quoted fields can), so a stream can be cut at `\n` without
//!   parser state and "line 1234" in an error means what the AP's editor
//!   shows;
//! - named fields make mistakes fail loudly (`"usr"` is an unknown field,
//!   while swapped CSV columns would pass) and leave room for new fields.
//!
//! The parser here is a small strict one for exactly that object shape
//! (core carries no JSON library): members `sii` and `user` (strings), and,
//! beyond GLADOS-00 (issue 16), optionally `tags` (an array of registered
//! tag names) and `label` (a string), as a code-verified creation takes
//! them; no duplicates, nothing else. Blank lines are skipped; `\r\n` is
//! accepted.
//!
//! A line without `tags` and `label` leaves the tags and label of the AP's
//! existing mapping as they are (an AP re-uploading its user base does not
//! wipe the labels its users typed); a line with either sets both to what
//! it says (`"tags": []` clears them).
//!
//! # Idempotency
//!
//! Every upload carries an `Idempotency-Key` (IETF httpapi idempotency-key
//! draft). The GP remembers, per AP and key, the SHA-256 of the body and
//! the summary it answered. A retry with the same key and body gets the same
//! summary again without re-applying; the same key with another body is
//! refused (422); a key whose first use is still running is refused (409,
//! with the time left on its lease), unless that run's lease lapsed (the
//! worker died: a live run renews its lease every [`IDEMPOTENCY_RENEW_MS`]),
//! in which case the retry runs again — safe, because applying a line is
//! itself idempotent ([`line_effect`]: the same mapping again is
//! `unchanged`).

use core::fmt;

use serde::{Deserialize, Serialize};

use super::mapping::Mapping;
use super::sii::Sii;
use super::ssi::{Ssi, UserId};
use super::tags::MappingMeta;
use super::Problem;

/// Longest accepted line in bytes, newline excluded. An SII is at most 512
/// bytes of input and a user id 256 characters; this leaves room for JSON
/// escapes without letting one line pin megabytes.
pub const MAX_LINE_BYTES: usize = 4096;
/// Most lines (blank ones included) in one upload. Larger sets are sent as
/// several uploads, each with its own idempotency key; this bounds a
/// request's CPU time and the size of its remembered summary.
pub const MAX_LINES_PER_UPLOAD: u32 = 100_000;
/// Most bytes in one upload (≈ 100,000 lines of typical length and slack).
pub const MAX_UPLOAD_BYTES: usize = 16 << 20;
/// Per-line errors listed in a summary; the rest are only counted.
pub const MAX_REPORTED_ERRORS: usize = 100;
/// Longest idempotency key.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;
/// How long a started-but-unfinished upload holds its key after its last
/// renewal. Short, so that a client retrying an upload whose GP died
/// mid-way (it never got an answer) is not refused for long.
pub const IDEMPOTENCY_LEASE_MS: u64 = 20_000;
/// How often a running upload renews its lease (well inside the lease, so
/// a slow renewal does not free the key of a live run).
pub const IDEMPOTENCY_RENEW_MS: u64 = 5_000;
/// How long finished uploads are remembered.
pub const IDEMPOTENCY_TTL_MS: u64 = 24 * 3_600_000;

/// One accepted line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkLine {
    /// The normalized SII.
    pub sii: Sii,
    /// The AP's user id (the SSI is built with the caller's provider id).
    pub user: UserId,
    /// Tags and label, when the line has a `tags` or `label` member.
    pub meta: Option<MappingMeta>,
}

/// Why one line was refused; the others are still applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineError {
    /// 1-based line number in the upload.
    pub line: u32,
    /// Stable problem slug (e.g. `invalid-json`, or the SII error's slug).
    pub problem: String,
    /// What exactly was wrong (never the whole line: it holds personal data).
    pub detail: String,
}

/// Why a line is not a valid bulk record.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LineProblem {
    /// Longer than [`MAX_LINE_BYTES`].
    TooLong,
    /// Not UTF-8.
    NotUtf8,
    /// Not the expected JSON object; the message says where.
    Json(String),
    /// A required member is absent.
    Missing(&'static str),
    /// A member other than `sii`, `user`, `tags` and `label`.
    Unknown(String),
    /// A member given twice.
    Duplicate(&'static str),
    /// The SII or user id is invalid.
    Field {
        /// Slug of the underlying problem.
        slug: &'static str,
        /// Its detail.
        detail: String,
    },
}

impl LineProblem {
    /// Stable slug of this problem.
    pub fn slug(&self) -> &'static str {
        match self {
            LineProblem::TooLong => "line-too-long",
            LineProblem::NotUtf8 => "invalid-utf8",
            LineProblem::Json(_) => "invalid-json",
            LineProblem::Missing(_) => "missing-field",
            LineProblem::Unknown(_) => "unknown-field",
            LineProblem::Duplicate(_) => "duplicate-field",
            LineProblem::Field { slug, .. } => slug,
        }
    }

    /// As a reportable error at `line`.
    pub fn at(&self, line: u32) -> LineError {
        LineError {
            line,
            problem: self.slug().to_owned(),
            detail: self.to_string(),
        }
    }
}

impl fmt::Display for LineProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LineProblem::TooLong => write!(f, "line longer than {MAX_LINE_BYTES} bytes"),
            LineProblem::NotUtf8 => f.write_str("line is not valid UTF-8"),
            LineProblem::Json(m) => write!(f, "not a JSON object {{\"sii\": …, \"user\": …}}: {m}"),
            LineProblem::Missing(k) => write!(f, "member \"{k}\" is missing"),
            LineProblem::Unknown(k) => {
                let shown: String = k.chars().take(32).collect();
                write!(
                    f,
                    "unknown member \"{shown}\"; only \"sii\", \"user\", \"tags\" and \"label\" are allowed"
                )
            }
            LineProblem::Duplicate(k) => write!(f, "member \"{k}\" appears twice"),
            LineProblem::Field { detail, .. } => f.write_str(detail),
        }
    }
}

/// Parses one line (without its `\n`; a trailing `\r` is ignored).
/// `Ok(None)` for a blank line.
pub fn parse_line(line: &[u8]) -> Result<Option<BulkLine>, LineProblem> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.len() > MAX_LINE_BYTES {
        return Err(LineProblem::TooLong);
    }
    let text = core::str::from_utf8(line).map_err(|_| LineProblem::NotUtf8)?;
    if text.trim().is_empty() {
        return Ok(None);
    }
    let Members {
        sii,
        user,
        tags,
        label,
    } = parse_object(text)?;
    let sii = Sii::parse(&sii).map_err(|e| LineProblem::Field {
        slug: e.slug(),
        detail: format!("sii: {e}"),
    })?;
    let user = UserId::parse(&user).map_err(|e| LineProblem::Field {
        slug: e.slug(),
        detail: format!("user: {e}"),
    })?;
    let meta = if tags.is_none() && label.is_none() {
        None
    } else {
        let m = MappingMeta::parse(tags.as_deref(), label.as_deref()).map_err(|e| {
            LineProblem::Field {
                slug: e.slug(),
                detail: e.to_string(),
            }
        })?;
        Some(m)
    };
    Ok(Some(BulkLine { sii, user, meta }))
}

/// The members of one line's object, as strings.
struct Members {
    sii: String,
    user: String,
    tags: Option<Vec<String>>,
    label: Option<String>,
}

/// A strict reader for `{"sii": "<string>", "user": "<string>"}` (plus the
/// optional `"tags": ["<string>", …]` and `"label": "<string>"`) with any
/// JSON whitespace and members in any order.
struct Reader<'a> {
    s: &'a [u8],
    i: usize,
}

impl Reader<'_> {
    fn ws(&mut self) {
        while matches!(self.s.get(self.i), Some(b' ' | b'\t' | b'\r' | b'\n')) {
            self.i += 1;
        }
    }

    fn err<T>(&self, what: &str) -> Result<T, LineProblem> {
        Err(LineProblem::Json(format!(
            "{what} at column {}",
            self.i + 1
        )))
    }

    fn expect(&mut self, c: u8, what: &str) -> Result<(), LineProblem> {
        self.ws();
        if self.s.get(self.i) == Some(&c) {
            self.i += 1;
            Ok(())
        } else {
            self.err(what)
        }
    }

    fn hex4(&mut self) -> Result<u32, LineProblem> {
        let mut v = 0u32;
        for _ in 0..4 {
            let d = match self.s.get(self.i) {
                Some(c) => char::from(*c).to_digit(16),
                None => None,
            };
            let Some(d) = d else {
                return self.err("bad \\u escape");
            };
            v = v * 16 + d;
            self.i += 1;
        }
        Ok(v)
    }

    /// `["<string>", …]`, at most [`MAX_LIST`] items (the tag set is small).
    fn string_array(&mut self) -> Result<Vec<String>, LineProblem> {
        const MAX_LIST: usize = 16;
        self.expect(b'[', "expected '['")?;
        let mut out = Vec::new();
        self.ws();
        if self.s.get(self.i) == Some(&b']') {
            self.i += 1;
            return Ok(out);
        }
        loop {
            self.ws();
            if self.s.get(self.i) != Some(&b'"') {
                return self.err("member \"tags\" must be an array of strings");
            }
            if out.len() == MAX_LIST {
                return self.err("member \"tags\" has too many items");
            }
            out.push(self.string()?);
            self.ws();
            match self.s.get(self.i) {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    return Ok(out);
                }
                _ => return self.err("expected ',' or ']'"),
            }
        }
    }

    fn string(&mut self) -> Result<String, LineProblem> {
        self.expect(b'"', "expected a string")?;
        let mut out = String::new();
        loop {
            // Copy the run up to the next quote, backslash or control char.
            let start = self.i;
            while let Some(&c) = self.s.get(self.i) {
                if c == b'"' || c == b'\\' || c < 0x20 {
                    break;
                }
                self.i += 1;
            }
            if let Some(run) = self.s.get(start..self.i) {
                // The whole line is valid UTF-8 and we split only at ASCII.
                out.push_str(core::str::from_utf8(run).unwrap_or_default());
            }
            match self.s.get(self.i) {
                Some(b'"') => {
                    self.i += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.i += 1;
                    let c = self.s.get(self.i).copied();
                    self.i += 1;
                    match c {
                        Some(b'"') => out.push('"'),
                        Some(b'\\') => out.push('\\'),
                        Some(b'/') => out.push('/'),
                        Some(b'b') => out.push('\u{8}'),
                        Some(b'f') => out.push('\u{c}'),
                        Some(b'n') => out.push('\n'),
                        Some(b'r') => out.push('\r'),
                        Some(b't') => out.push('\t'),
                        Some(b'u') => {
                            let hi = self.hex4()?;
                            let cp = if (0xD800..0xDC00).contains(&hi) {
                                if self.s.get(self.i..self.i + 2) != Some(b"\\u") {
                                    return self.err("lone surrogate");
                                }
                                self.i += 2;
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return self.err("lone surrogate");
                                }
                                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                            } else {
                                hi
                            };
                            match char::from_u32(cp) {
                                Some(ch) => out.push(ch),
                                None => return self.err("lone surrogate"),
                            }
                        }
                        _ => {
                            self.i -= 1;
                            return self.err("bad escape");
                        }
                    }
                }
                Some(_) => return self.err("control character in string"),
                None => return self.err("unterminated string"),
            }
        }
    }
}

fn parse_object(text: &str) -> Result<Members, LineProblem> {
    let mut r = Reader {
        s: text.as_bytes(),
        i: 0,
    };
    let mut sii = None;
    let mut user = None;
    let mut tags: Option<Vec<String>> = None;
    let mut label = None;
    r.expect(b'{', "expected '{'")?;
    r.ws();
    if r.s.get(r.i) == Some(&b'}') {
        r.i += 1;
    } else {
        loop {
            let key = r.string()?;
            r.expect(b':', "expected ':'")?;
            r.ws();
            if key == "tags" {
                if r.s.get(r.i) != Some(&b'[') {
                    return r.err("member \"tags\" must be an array of strings");
                }
                let list = r.string_array()?;
                if tags.replace(list).is_some() {
                    return Err(LineProblem::Duplicate("tags"));
                }
            } else {
                if r.s.get(r.i) != Some(&b'"') {
                    return r.err(&format!(
                        "member \"{}\" must be a string",
                        key.chars().take(32).collect::<String>()
                    ));
                }
                let value = r.string()?;
                let (slot, name) = match key.as_str() {
                    "sii" => (&mut sii, "sii"),
                    "user" => (&mut user, "user"),
                    "label" => (&mut label, "label"),
                    _ => return Err(LineProblem::Unknown(key)),
                };
                if slot.replace(value).is_some() {
                    return Err(LineProblem::Duplicate(name));
                }
            }
            r.ws();
            match r.s.get(r.i) {
                Some(b',') => r.i += 1,
                Some(b'}') => {
                    r.i += 1;
                    break;
                }
                _ => return r.err("expected ',' or '}'"),
            }
        }
    }
    r.ws();
    if r.i != r.s.len() {
        return r.err("trailing characters after the object");
    }
    match (sii, user) {
        (Some(sii), Some(user)) => Ok(Members {
            sii,
            user,
            tags,
            label,
        }),
        (None, _) => Err(LineProblem::Missing("sii")),
        (_, None) => Err(LineProblem::Missing("user")),
    }
}

/// Cuts a byte stream that arrives in arbitrary chunks into lines, without
/// buffering more than one line. An over-long line is reported once (as
/// `Err(TooLong)`) and skipped up to its newline.
#[derive(Debug, Default)]
pub struct LineSplitter {
    buf: Vec<u8>,
    overlong: bool,
    line_no: u32,
}

impl LineSplitter {
    /// A splitter at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds a chunk; calls `f(line_number, line)` for every complete line.
    pub fn push(&mut self, mut chunk: &[u8], f: &mut impl FnMut(u32, Result<&[u8], LineProblem>)) {
        while !chunk.is_empty() {
            match chunk.iter().position(|&b| b == b'\n') {
                Some(nl) => {
                    let (head, rest) = chunk.split_at(nl);
                    chunk = rest.get(1..).unwrap_or_default();
                    self.take(head);
                    self.emit(f);
                }
                None => {
                    self.take(chunk);
                    chunk = &[];
                }
            }
        }
    }

    /// Ends the stream: a last line without newline is emitted too.
    pub fn finish(&mut self, f: &mut impl FnMut(u32, Result<&[u8], LineProblem>)) {
        if !self.buf.is_empty() || self.overlong {
            self.emit(f);
        }
    }

    /// Lines emitted so far.
    pub fn lines(&self) -> u32 {
        self.line_no
    }

    fn take(&mut self, part: &[u8]) {
        if self.overlong {
            return;
        }
        if self.buf.len() + part.len() > MAX_LINE_BYTES + 1 {
            self.overlong = true;
            self.buf.clear();
        } else {
            self.buf.extend_from_slice(part);
        }
    }

    fn emit(&mut self, f: &mut impl FnMut(u32, Result<&[u8], LineProblem>)) {
        self.line_no = self.line_no.saturating_add(1);
        if self.overlong {
            f(self.line_no, Err(LineProblem::TooLong));
        } else {
            f(self.line_no, Ok(&self.buf));
        }
        self.buf.clear();
        self.overlong = false;
    }
}

/// What applying one bulk line did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LineEffect {
    /// A new mapping for this AP (its enrolled-user count grows by one).
    Created,
    /// The AP's mapping now points at another of its users, or has other
    /// tags or another label.
    Updated,
    /// The AP already had exactly this mapping: nothing is written (this is
    /// what makes re-running an upload harmless; a mapping verified by code
    /// is not downgraded to "bulk").
    Unchanged,
}

/// Decides a line's effect from the AP's current mapping for the SII and
/// the line's tags and label (`None`: the line leaves them as they are).
pub fn line_effect(
    existing: Option<&Mapping>,
    ssi: &Ssi,
    meta: Option<&MappingMeta>,
) -> LineEffect {
    match existing {
        None => LineEffect::Created,
        Some(m) if &m.ssi == ssi && meta.is_none_or(|t| t == &m.meta) => LineEffect::Unchanged,
        Some(_) => LineEffect::Updated,
    }
}

/// What an upload answers (and what a retry with its key gets again).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BulkSummary {
    /// Lines read (blank ones included).
    pub lines: u32,
    /// New mappings.
    pub created: u32,
    /// Mappings moved to another user of the AP.
    pub updated: u32,
    /// Lines that matched an existing mapping.
    pub unchanged: u32,
    /// Lines refused.
    pub failed: u32,
    /// The first [`MAX_REPORTED_ERRORS`] refused lines.
    pub errors: Vec<LineError>,
    /// Lines whose SII another AP already held, preferred, on this GP or a
    /// peer GP: stored without preference (draft §8.2.1), as a code
    /// confirmation is, until the user chooses (`/v1/mappings/choice`).
    #[serde(default)]
    pub existing: u32,
    /// The first [`MAX_REPORTED_ERRORS`] of them, with the holder.
    #[serde(default)]
    pub existing_lines: Vec<LineExisting>,
}

/// A bulk line that met a preferred mapping of another AP (draft §8.2.1:
/// "include that provider ID").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineExisting {
    /// 1-based line number.
    pub line: u32,
    /// The AP holding the preferred mapping.
    pub provider: String,
    /// Its GP, when it is another GP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gp: Option<String>,
}

impl BulkSummary {
    /// Counts an applied line.
    pub fn applied(&mut self, e: LineEffect) {
        let slot = match e {
            LineEffect::Created => &mut self.created,
            LineEffect::Updated => &mut self.updated,
            LineEffect::Unchanged => &mut self.unchanged,
        };
        *slot = slot.saturating_add(1);
    }

    /// Counts an applied line that met another AP's preferred mapping,
    /// listing it if there is room.
    pub fn met(&mut self, h: LineExisting) {
        self.existing = self.existing.saturating_add(1);
        if self.existing_lines.len() < MAX_REPORTED_ERRORS {
            self.existing_lines.push(h);
        }
    }

    /// Counts a refused line, listing it if there is room.
    pub fn refused(&mut self, e: LineError) {
        self.failed = self.failed.saturating_add(1);
        if self.errors.len() < MAX_REPORTED_ERRORS {
            self.errors.push(e);
        }
    }
}

/// An `Idempotency-Key` header value: 1–255 visible ASCII characters (no
/// quotes needed; a structured-field string's quotes are stripped).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Checks a header value.
    pub fn parse(header: &str) -> Result<IdempotencyKey, BulkError> {
        let v = header.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|x| x.strip_suffix('"'))
            .unwrap_or(v);
        if v.is_empty()
            || v.len() > MAX_IDEMPOTENCY_KEY_LEN
            || !v.bytes().all(|b| (0x21..0x7f).contains(&b) && b != b'"')
        {
            return Err(BulkError::BadIdempotencyKey);
        }
        Ok(IdempotencyKey(v.to_owned()))
    }

    /// The key text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What the GP remembers about one idempotency key of one AP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// SHA-256 of the upload body.
    pub body_sha256: [u8; 32],
    /// When the first use started.
    pub started_ms: u64,
    /// The answer, once finished.
    pub summary: Option<BulkSummary>,
}

/// What to do with an upload given its key's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyDecision {
    /// Apply it (and record the key as started).
    Run,
    /// Answer this stored summary again, apply nothing.
    Replay(BulkSummary),
}

/// The idempotency rules (see the module docs).
pub fn decide_key(
    record: Option<&KeyRecord>,
    body_sha256: &[u8; 32],
    now_ms: u64,
) -> Result<KeyDecision, BulkError> {
    let Some(r) = record else {
        return Ok(KeyDecision::Run);
    };
    let age = now_ms.saturating_sub(r.started_ms);
    match &r.summary {
        _ if age > IDEMPOTENCY_TTL_MS => Ok(KeyDecision::Run),
        _ if &r.body_sha256 != body_sha256 => Err(BulkError::KeyReused),
        Some(s) => Ok(KeyDecision::Replay(s.clone())),
        None if age > IDEMPOTENCY_LEASE_MS => Ok(KeyDecision::Run),
        None => Err(BulkError::KeyInUse),
    }
}

/// How long until a running upload's key is free (its lease lapses if not
/// renewed): what a 409 `Retry-After` says.
pub fn lease_left_ms(record: &KeyRecord, now_ms: u64) -> u64 {
    IDEMPOTENCY_LEASE_MS.saturating_sub(now_ms.saturating_sub(record.started_ms))
}

/// Why a whole upload was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BulkError {
    /// The AP is not allowed to upload (draft §8.3: "This API would be made
    /// available selectively").
    NotAllowed,
    /// No or a malformed `Idempotency-Key`.
    BadIdempotencyKey,
    /// The key was used before with a different body.
    KeyReused,
    /// The key's first use is still running.
    KeyInUse,
    /// More than [`MAX_LINES_PER_UPLOAD`] lines or [`MAX_UPLOAD_BYTES`] bytes.
    TooLarge,
    /// Not `application/x-ndjson`.
    WrongContentType,
}

impl fmt::Display for BulkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BulkError::NotAllowed => f.write_str(
                "this provider is not allowed to register mappings in bulk; the GP operator grants that",
            ),
            BulkError::BadIdempotencyKey => write!(
                f,
                "an Idempotency-Key header of 1 to {MAX_IDEMPOTENCY_KEY_LEN} visible ASCII characters is required"
            ),
            BulkError::KeyReused => f.write_str(
                "this Idempotency-Key was already used for an upload with a different body",
            ),
            BulkError::KeyInUse => f.write_str(
                "an upload with this Idempotency-Key is still being processed; retry shortly",
            ),
            BulkError::TooLarge => write!(
                f,
                "an upload may hold at most {MAX_LINES_PER_UPLOAD} lines and {MAX_UPLOAD_BYTES} bytes; split it into several uploads"
            ),
            BulkError::WrongContentType => {
                f.write_str("bulk uploads are NDJSON: send Content-Type: application/x-ndjson")
            }
        }
    }
}

impl Problem for BulkError {
    fn slug(&self) -> &'static str {
        match self {
            BulkError::NotAllowed => "bulk-not-allowed",
            BulkError::BadIdempotencyKey => "idempotency-key-required",
            BulkError::KeyReused => "idempotency-key-reused",
            BulkError::KeyInUse => "idempotency-key-in-use",
            BulkError::TooLarge => "upload-too-large",
            BulkError::WrongContentType => "unsupported-media-type",
        }
    }
    fn title(&self) -> &'static str {
        match self {
            BulkError::NotAllowed => "Bulk registration not allowed",
            BulkError::BadIdempotencyKey => "Idempotency key required",
            BulkError::KeyReused => "Idempotency key reused",
            BulkError::KeyInUse => "Idempotency key in use",
            BulkError::TooLarge => "Upload too large",
            BulkError::WrongContentType => "Unsupported media type",
        }
    }
    fn status(&self) -> u16 {
        match self {
            BulkError::NotAllowed => 403,
            BulkError::BadIdempotencyKey => 400,
            BulkError::KeyReused => 422,
            BulkError::KeyInUse => 409,
            BulkError::TooLarge => 413,
            BulkError::WrongContentType => 415,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::mapping::VerifiedBy;

    fn ok(line: &str) -> BulkLine {
        parse_line(line.as_bytes()).unwrap().unwrap()
    }
    fn bad(line: &str) -> LineProblem {
        parse_line(line.as_bytes()).unwrap_err()
    }

    #[test]
    fn parses_lines_in_any_member_order_and_spacing() {
        let a = ok(r#"{"sii":"+1 415 555 0100","user":"u1"}"#);
        assert_eq!(a.sii.as_str(), "+14155550100");
        assert_eq!(a.user.as_str(), "u1");
        let b = ok(" { \"user\" : \"u1\" ,\t\"sii\" : \"+14155550100\" } \r");
        assert_eq!(a, b);
        assert_eq!(parse_line(b"").unwrap(), None);
        assert_eq!(parse_line(b"  \r").unwrap(), None);
    }

    #[test]
    fn json_escapes_decode_like_serde_json() {
        let user = r#"a,b"q"\/{}:"#;
        let line = serde_json::json!({ "sii": "Alice@Example.com", "user": user }).to_string();
        let parsed = ok(&line);
        assert_eq!(parsed.sii.as_str(), "alice@example.com");
        assert_eq!(parsed.user.as_str(), user);
        let esc = ok(r#"{"sii":"\u0041lice@b\u00fccher.de","user":"\u0041\/\"\\"}"#);
        assert_eq!(esc.sii.as_str(), "alice@xn--bcher-kva.de");
        assert_eq!(esc.user.as_str(), r#"A/"\"#);
        // Escapes decode to what serde_json decodes (surrogate pairs too);
        // the user id then refuses non-ASCII, as it would from any API.
        let e = bad(r#"{"sii":"+14155550100","user":"\ud83d\ude00"}"#);
        assert!(e.to_string().contains("U+1F600"), "{e}");
    }

    #[test]
    fn every_malformation_has_its_own_problem() {
        assert_eq!(
            bad(r#"{"sii":"+14155550100"}"#),
            LineProblem::Missing("user")
        );
        assert_eq!(bad(r#"{"user":"u"}"#), LineProblem::Missing("sii"));
        assert_eq!(bad("{}"), LineProblem::Missing("sii"));
        assert_eq!(
            bad(r#"{"sii":"+14155550100","usr":"u"}"#),
            LineProblem::Unknown("usr".into())
        );
        assert_eq!(
            bad(r#"{"sii":"+14155550100","sii":"+14155550101","user":"u"}"#),
            LineProblem::Duplicate("sii")
        );
        for (line, col) in [
            ("+14155550100,u1", 1),
            (r#"{"sii":"+14155550100","user":"u1""#, 34),
            (r#"{"sii":"+14155550100","user":"u1"} x"#, 36),
            (r#"{"sii":14155550100,"user":"u1"}"#, 8),
            (r#"{"sii":"+1415\q","user":"u1"}"#, 15),
            (r#"{"sii":"\ud800","user":"u1"}"#, 15),
            ("{\"sii\":\"+1\t415\",\"user\":\"u\"}", 11),
        ] {
            let e = bad(line);
            assert_eq!(e.slug(), "invalid-json", "{line}");
            assert!(
                e.to_string().contains(&format!("column {col}")),
                "{line}: {e}"
            );
        }
        let e = bad(r#"{"sii":"not a number","user":"u"}"#);
        assert!(
            e.slug().starts_with("invalid-") || e.slug().contains("sii"),
            "{}",
            e.slug()
        );
        assert!(e.to_string().starts_with("sii: "));
        let e = bad(r#"{"sii":"+14155550100","user":""}"#);
        assert!(e.to_string().starts_with("user: "), "{e}");
        assert_eq!(parse_line(&[b'{', 0xff, b'}']), Err(LineProblem::NotUtf8));
        let long = format!(r#"{{"sii":"+14155550100","user":"{}"}}"#, "x".repeat(5000));
        assert_eq!(bad(&long), LineProblem::TooLong);
    }

    #[test]
    fn error_details_never_echo_the_line() {
        let e =
            bad(r#"{"sii":"+14155550100","user":"u1","secret-field-with-pii@example.com":"x"}"#);
        let shown = e.to_string();
        assert!(!shown.contains("+14155550100"));
        assert!(shown.len() < 120, "{shown}");
        let le = e.at(7);
        assert_eq!((le.line, le.problem.as_str()), (7, "unknown-field"));
    }

    fn split(chunks: &[&[u8]]) -> Vec<(u32, Result<Vec<u8>, LineProblem>)> {
        let mut s = LineSplitter::new();
        let mut out = Vec::new();
        let mut f = |n: u32, l: Result<&[u8], LineProblem>| out.push((n, l.map(<[u8]>::to_vec)));
        for c in chunks {
            s.push(c, &mut f);
        }
        s.finish(&mut f);
        out
    }

    #[test]
    fn splitter_handles_lines_across_chunks_and_a_missing_final_newline() {
        let out = split(&[b"ab", b"c\nde", b"f\n\ngh"]);
        assert_eq!(
            out,
            vec![
                (1, Ok(b"abc".to_vec())),
                (2, Ok(b"def".to_vec())),
                (3, Ok(b"".to_vec())),
                (4, Ok(b"gh".to_vec())),
            ]
        );
        assert_eq!(split(&[b"x\n"]), vec![(1, Ok(b"x".to_vec()))]);
    }

    #[test]
    fn splitter_skips_an_overlong_line_and_keeps_counting() {
        let big = vec![b'x'; MAX_LINE_BYTES + 10];
        let out = split(&[b"a\n", &big[..3000], &big[3000..], b"\nb\n"]);
        assert_eq!(
            out,
            vec![
                (1, Ok(b"a".to_vec())),
                (2, Err(LineProblem::TooLong)),
                (3, Ok(b"b".to_vec())),
            ]
        );
    }

    #[test]
    fn effects_make_reruns_harmless() {
        let ssi = |u: &str| Ssi::parse(&format!("big:{u}")).unwrap();
        let m = Mapping {
            ssi: ssi("u1"),
            verified_by: VerifiedBy::Sms,
            created_at_ms: 1,
            preferred_at_ms: Some(1),
            meta: Default::default(),
        };
        assert_eq!(line_effect(None, &ssi("u1"), None), LineEffect::Created);
        assert_eq!(
            line_effect(Some(&m), &ssi("u1"), None),
            LineEffect::Unchanged
        );
        assert_eq!(line_effect(Some(&m), &ssi("u2"), None), LineEffect::Updated);
        // Tags: the same ones again change nothing; other ones update; a
        // line without tags or label leaves the mapping's as they are.
        let work = MappingMeta::parse(Some(&["work"]), None).unwrap();
        let tagged = Mapping {
            meta: work.clone(),
            ..m.clone()
        };
        assert_eq!(
            line_effect(Some(&tagged), &ssi("u1"), Some(&work)),
            LineEffect::Unchanged
        );
        assert_eq!(
            line_effect(Some(&tagged), &ssi("u1"), None),
            LineEffect::Unchanged
        );
        assert_eq!(
            line_effect(Some(&tagged), &ssi("u1"), Some(&MappingMeta::default())),
            LineEffect::Updated
        );
        assert_eq!(
            line_effect(Some(&m), &ssi("u1"), Some(&work)),
            LineEffect::Updated
        );
    }

    #[test]
    fn tags_and_label_are_read_and_checked_like_a_creation() {
        let a =
            ok(r#"{"sii":"+14155550100","user":"u1","tags":["work","personal"],"label":"Büro"}"#);
        let meta = a.meta.unwrap();
        assert_eq!(
            meta,
            MappingMeta::parse(Some(&["personal", "work"]), Some("Büro")).unwrap()
        );
        assert_eq!(ok(r#"{"sii":"+14155550100","user":"u1"}"#).meta, None);
        let cleared = ok(r#"{"sii":"+14155550100","user":"u1","tags":[ ]}"#);
        assert_eq!(cleared.meta, Some(MappingMeta::default()));
        assert_eq!(
            ok(r#"{"label":"x","sii":"+14155550100","user":"u1"}"#).meta,
            Some(MappingMeta::parse::<&str>(None, Some("x")).unwrap())
        );
        // The same problems, slugs and messages as POST /v1/mappings.
        let e = bad(r#"{"sii":"+14155550100","user":"u1","tags":["vip"]}"#);
        let api = MappingMeta::parse(Some(&["vip"]), None).unwrap_err();
        assert_eq!((e.slug(), e.to_string()), (api.slug(), api.to_string()));
        assert_eq!(e.slug(), "invalid-tags");
        let e = bad(r#"{"sii":"+14155550100","user":"u1","label":""}"#);
        assert_eq!(e.slug(), "invalid-label");
        assert_eq!(
            bad(r#"{"sii":"+14155550100","user":"u1","tags":[],"tags":[]}"#),
            LineProblem::Duplicate("tags")
        );
        for line in [
            r#"{"sii":"+14155550100","user":"u1","tags":"work"}"#,
            r#"{"sii":"+14155550100","user":"u1","tags":[1]}"#,
            r#"{"sii":"+14155550100","user":"u1","tags":["work"}"#,
            r#"{"sii":"+14155550100","user":"u1","label":["x"]}"#,
        ] {
            assert_eq!(bad(line).slug(), "invalid-json", "{line}");
        }
        let many = format!(
            r#"{{"sii":"+14155550100","user":"u1","tags":[{}]}}"#,
            vec!["\"work\""; 17].join(",")
        );
        assert_eq!(bad(&many).slug(), "invalid-json");
    }

    #[test]
    fn summary_lists_only_the_first_errors() {
        let mut s = BulkSummary::default();
        for i in 0..150 {
            s.refused(LineProblem::NotUtf8.at(i));
        }
        s.applied(LineEffect::Created);
        assert_eq!(
            (s.failed, s.errors.len(), s.created),
            (150, MAX_REPORTED_ERRORS, 1)
        );
    }

    #[test]
    fn idempotency_keys() {
        assert_eq!(
            IdempotencyKey::parse(" \"abc-1\" ").unwrap().as_str(),
            "abc-1"
        );
        for bad in ["", "a b", "é", &"k".repeat(256)] {
            assert_eq!(
                IdempotencyKey::parse(bad),
                Err(BulkError::BadIdempotencyKey)
            );
        }
        let body = [1u8; 32];
        let other = [2u8; 32];
        let summary = BulkSummary {
            lines: 3,
            created: 3,
            ..Default::default()
        };
        assert_eq!(decide_key(None, &body, 0), Ok(KeyDecision::Run));
        let running = KeyRecord {
            body_sha256: body,
            started_ms: 1_000,
            summary: None,
        };
        assert_eq!(
            decide_key(Some(&running), &body, 2_000),
            Err(BulkError::KeyInUse)
        );
        assert_eq!(
            decide_key(Some(&running), &body, 1_000 + IDEMPOTENCY_LEASE_MS + 1),
            Ok(KeyDecision::Run),
            "an abandoned run may be retried"
        );
        assert_eq!(lease_left_ms(&running, 2_000), IDEMPOTENCY_LEASE_MS - 1_000);
        assert_eq!(lease_left_ms(&running, 1_000 + IDEMPOTENCY_LEASE_MS + 1), 0);
        const { assert!(IDEMPOTENCY_RENEW_MS * 3 <= IDEMPOTENCY_LEASE_MS) };
        let done = KeyRecord {
            summary: Some(summary.clone()),
            ..running
        };
        assert_eq!(
            decide_key(Some(&done), &body, 2_000),
            Ok(KeyDecision::Replay(summary))
        );
        assert_eq!(
            decide_key(Some(&done), &other, 2_000),
            Err(BulkError::KeyReused)
        );
        assert_eq!(
            decide_key(Some(&done), &other, 1_000 + IDEMPOTENCY_TTL_MS + 1),
            Ok(KeyDecision::Run),
            "keys are forgotten after a day"
        );
        let e = BulkError::KeyReused;
        assert_eq!((e.slug(), e.status()), ("idempotency-key-reused", 422));
        assert_eq!(BulkError::NotAllowed.status(), 403);
    }
}
