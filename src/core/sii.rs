//! Service Independent Identifiers: phone numbers and email addresses.
//!
//! draft §2: "Service Independent Identifier (SII): A type of identifier for
//! a user that is unique ... There are two specific identifiers in this
//! case - a mobile phone number, or an email address."
//!
//! Every SII is normalized to one canonical string before anything else
//! happens to it, because the canonical bytes are what gets hashed into the
//! routing filter (draft §9: "each SII is hashed using a crypto hash") and
//! what keys the mapping store. Two spellings of one number or address must
//! therefore give byte-identical canonical forms, or the same person would be
//! found on one GP and missed on another.
//!
//! Canonical forms (always ASCII):
//! - phone: E.164, `+` then 7..=15 digits, e.g. `+14155550100`;
//! - email: `local@domain`, both lowercased, domain in IDNA ASCII form
//!   (`xn--` labels), e.g. `alice@xn--bcher-kva.de`.
//!
//! Error messages never repeat the whole input (it is personal data and
//! errors get logged); they name the offending character or count instead.

use core::fmt;
use core::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::country_codes::{self, CountryCode};
use super::Problem;

/// Longest raw input looked at. Real inputs are far shorter (an email is at
/// most 254 bytes, a pasted phone number a few dozen); the cap bounds work.
pub const MAX_INPUT_BYTES: usize = 512;

/// E.164 §6: "the maximum number of digits ... is 15" (country code included).
pub const MAX_PHONE_DIGITS: usize = 15;

/// Fewest digits after the country code. The shortest numbers in service
/// are 4-digit subscriber numbers (e.g. Niue +683 xxxx, St Helena +290 xxxx);
/// anything shorter is a typo or a short code, not a person's number.
pub const MIN_SUBSCRIBER_DIGITS: usize = 4;

/// RFC 5321 §4.5.3.1.1: local part at most 64 octets.
pub const MAX_LOCAL_LEN: usize = 64;
/// RFC 1035 §2.3.4 / RFC 5321 §4.5.3.1.2: domain at most 253 characters.
pub const MAX_DOMAIN_LEN: usize = 253;
/// RFC 1035 §2.3.4: a label is at most 63 octets.
pub const MAX_LABEL_LEN: usize = 63;
/// RFC 5321 path limit of 256 minus the angle brackets (RFC 3696 errata).
pub const MAX_EMAIL_LEN: usize = 254;

/// Which of the draft's two SII types a value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SiiKind {
    /// An E.164 phone number; verified by SMS (draft §8.2).
    Phone,
    /// An email address; verified by email (draft §8.2).
    Email,
}

impl SiiKind {
    /// Lowercase name, as used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            SiiKind::Phone => "phone",
            SiiKind::Email => "email",
        }
    }
}

impl fmt::Display for SiiKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated, normalized SII. Only [`Sii::parse`] makes one, so holding a
/// `Sii` proves the string is canonical.
///
/// Serializes as its canonical string; deserializing runs [`Sii::parse`],
/// so a non-canonical spelling in JSON is accepted and normalized.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Sii {
    canonical: String,
    kind: SiiKind,
}

impl Sii {
    /// Parses and normalizes a phone number or email address.
    ///
    /// An input containing `@` is an email address, anything else a phone
    /// number (the two syntaxes do not overlap).
    pub fn parse(input: &str) -> Result<Sii, SiiError> {
        if input.len() > MAX_INPUT_BYTES {
            return Err(SiiError::InputTooLong { bytes: input.len() });
        }
        let s = input.trim();
        if s.is_empty() {
            return Err(SiiError::Empty);
        }
        let (canonical, kind) = if s.contains('@') {
            (parse_email(s)?, SiiKind::Email)
        } else {
            (parse_phone(s)?, SiiKind::Phone)
        };
        Ok(Sii { canonical, kind })
    }

    /// The canonical form (E.164 or normalized email), always ASCII.
    pub fn as_str(&self) -> &str {
        &self.canonical
    }

    /// Phone or email.
    pub fn kind(&self) -> SiiKind {
        self.kind
    }

    /// SHA-256 of the canonical string's bytes.
    ///
    /// draft §9: "each SII is hashed using a crypto hash". This is the one
    /// hash every filter position derives from, so it must never change for
    /// a given SII: it is computed over the canonical form only.
    pub fn hash(&self) -> [u8; 32] {
        Sha256::digest(self.canonical.as_bytes()).into()
    }
}

impl fmt::Display for Sii {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.canonical)
    }
}

impl FromStr for Sii {
    type Err = SiiError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Sii::parse(s)
    }
}

impl TryFrom<String> for Sii {
    type Error = SiiError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Sii::parse(&s)
    }
}

impl TryFrom<&str> for Sii {
    type Error = SiiError;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Sii::parse(s)
    }
}

impl From<Sii> for String {
    fn from(s: Sii) -> String {
        s.canonical
    }
}

impl AsRef<str> for Sii {
    fn as_ref(&self) -> &str {
        &self.canonical
    }
}

/// Why a string is not an SII. Display says what was wrong and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SiiError {
    /// Nothing but whitespace.
    Empty,
    /// Longer than [`MAX_INPUT_BYTES`].
    InputTooLong { bytes: usize },

    /// A character that cannot appear in a phone number.
    PhoneInvalidCharacter { ch: char },
    /// A `+` somewhere other than the start.
    PhoneMisplacedPlus,
    /// No `+`/`00`: a national number, which is ambiguous across countries.
    PhoneMissingCountryCode,
    /// Only separators, no digits.
    PhoneNoDigits,
    /// More than [`MAX_PHONE_DIGITS`] digits.
    PhoneTooLong { digits: usize },
    /// Fewer than [`MIN_SUBSCRIBER_DIGITS`] digits after the country code.
    PhoneTooShort {
        country_code: u16,
        subscriber_digits: usize,
    },
    /// The leading digits are no assigned country code.
    PhoneUnassignedCountryCode { prefix: String },
    /// An assigned global service code that is not a personal number.
    PhoneServiceNumber {
        country_code: u16,
        service: &'static str,
    },
    /// A country whose numbers all have one length, and this one does not.
    PhoneWrongLength {
        country_code: u16,
        expected: usize,
        found: usize,
    },
    /// NANP (+1) area codes and exchange codes cannot start with 0 or 1.
    PhoneInvalidNanp { part: &'static str },

    /// `Name <addr>` form.
    EmailDisplayName,
    /// A `(comment)`.
    EmailComment,
    /// A `"quoted"` local part.
    EmailQuotedLocalPart,
    /// Whitespace inside the address.
    EmailWhitespace,
    /// Not exactly one `@`.
    EmailAtCount { count: usize },
    /// Nothing before the `@`.
    EmailEmptyLocal,
    /// Nothing after the `@`.
    EmailEmptyDomain,
    /// Local part longer than [`MAX_LOCAL_LEN`].
    EmailLocalTooLong { len: usize },
    /// A character outside RFC 5322 `atext` in the local part.
    EmailLocalInvalidCharacter { ch: char },
    /// Non-ASCII local part (RFC 6531 SMTPUTF8), not supported.
    EmailLocalNonAscii,
    /// Leading, trailing or consecutive dots in the local part.
    EmailLocalDots,
    /// `[1.2.3.4]` domain literal.
    EmailDomainLiteral,
    /// Domain without a dot (`user@localhost`).
    EmailDomainNoDot,
    /// A character not allowed in a domain name.
    EmailDomainInvalidCharacter { ch: char },
    /// Empty label: leading, trailing or consecutive dots.
    EmailDomainEmptyLabel,
    /// A label longer than [`MAX_LABEL_LEN`] (after IDNA encoding).
    EmailDomainLabelTooLong { len: usize },
    /// A label starting or ending with `-`.
    EmailDomainLabelHyphen,
    /// Domain longer than [`MAX_DOMAIN_LEN`] (after IDNA encoding).
    EmailDomainTooLong { len: usize },
    /// All-numeric top-level label: an IP address, not a domain name.
    EmailDomainNumericTld,
    /// Whole address longer than [`MAX_EMAIL_LEN`].
    EmailTooLong { len: usize },
}

/// Shows a character from input in an error message: printable ASCII as
/// `'c'`, anything else as `U+XXXX`, so control, invisible or bidi-override
/// characters cannot garble a log line or a UI (and no `{:?}` escaping
/// tables are pulled into the wasm module).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ShowChar(pub(crate) char);

impl fmt::Display for ShowChar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_ascii_graphic() {
            write!(f, "'{}'", self.0)
        } else {
            write!(f, "U+{:04X}", u32::from(self.0))
        }
    }
}

impl fmt::Display for SiiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use SiiError::*;
        match self {
            Empty => f.write_str(
                "SII is empty; give a phone number with its country code (e.g. +14155550100) \
                 or an email address",
            ),
            InputTooLong { bytes } => write!(
                f,
                "SII input is {bytes} bytes long; at most {MAX_INPUT_BYTES} are accepted"
            ),
            PhoneInvalidCharacter { ch } => write!(
                f,
                "phone number contains {}; only digits, a leading '+', spaces and \
                 - . / ( ) are allowed (an email address needs an '@')",
                ShowChar(*ch)
            ),
            PhoneMisplacedPlus => f.write_str(
                "phone number has a '+' after its first digit; '+' may only come first, \
                 before the country code",
            ),
            PhoneMissingCountryCode => f.write_str(
                "phone number has no country code; write it in international form starting \
                 with '+' and the country code, e.g. +44 20 7946 0958 instead of 020 7946 0958",
            ),
            PhoneNoDigits => f.write_str("phone number contains no digits"),
            PhoneTooLong { digits } => write!(
                f,
                "phone number has {digits} digits; E.164 allows at most {MAX_PHONE_DIGITS} \
                 including the country code"
            ),
            PhoneTooShort {
                country_code,
                subscriber_digits,
            } => write!(
                f,
                "phone number has only {subscriber_digits} digits after country code \
                 +{country_code}; at least {MIN_SUBSCRIBER_DIGITS} are needed"
            ),
            PhoneUnassignedCountryCode { prefix } => write!(
                f,
                "phone number starts with +{prefix}, which is not an assigned country code; \
                 check the digits after the '+'"
            ),
            PhoneServiceNumber {
                country_code,
                service,
            } => write!(
                f,
                "+{country_code} is the {service}, not a personal phone number; give a \
                 mobile number"
            ),
            PhoneWrongLength {
                country_code,
                expected,
                found,
            } => write!(
                f,
                "+{country_code} numbers have exactly {expected} digits after the country \
                 code; this one has {found}"
            ),
            PhoneInvalidNanp { part } => write!(
                f,
                "+1 (North American) number has an {part} starting with 0 or 1; it must \
                 start with 2-9"
            ),
            EmailDisplayName => f.write_str(
                "email address has a display name or angle brackets; give only the \
                 address itself, e.g. alice@example.com instead of Alice <alice@example.com>",
            ),
            EmailComment => {
                f.write_str("email address contains a (comment) in parentheses; remove it")
            }
            EmailQuotedLocalPart => f.write_str(
                "email address has a quoted local part (\"...\"); those are not supported, \
                 give an address without quotes",
            ),
            EmailWhitespace => f.write_str("email address contains whitespace; remove it"),
            EmailAtCount { count } => write!(
                f,
                "email address contains {count} '@' characters; it must have exactly one"
            ),
            EmailEmptyLocal => f.write_str("email address has nothing before the '@'"),
            EmailEmptyDomain => f.write_str("email address has nothing after the '@'"),
            EmailLocalTooLong { len } => write!(
                f,
                "email local part (before '@') is {len} characters; at most {MAX_LOCAL_LEN} \
                 are allowed"
            ),
            EmailLocalInvalidCharacter { ch } => write!(
                f,
                "email local part (before '@') contains {}; allowed are letters, digits, \
                 dots and ! # $ % & ' * + - / = ? ^ _ ` {{ | }} ~",
                ShowChar(*ch)
            ),
            EmailLocalNonAscii => f.write_str(
                "email local part (before '@') contains non-ASCII characters; \
                 internationalized local parts are not supported",
            ),
            EmailLocalDots => f.write_str(
                "email local part (before '@') starts or ends with a dot or has two dots in \
                 a row; remove the extra dot",
            ),
            EmailDomainLiteral => f.write_str(
                "email address uses an IP address literal [...] as domain; give a domain name",
            ),
            EmailDomainNoDot => {
                f.write_str("email domain has no dot; give a full domain name such as example.com")
            }
            EmailDomainInvalidCharacter { ch } => write!(
                f,
                "email domain contains {}; domain names allow letters, digits, '-' and \
                 dots between labels",
                ShowChar(*ch)
            ),
            EmailDomainEmptyLabel => f.write_str(
                "email domain starts or ends with a dot or has two dots in a row; remove \
                 the extra dot",
            ),
            EmailDomainLabelTooLong { len } => write!(
                f,
                "email domain has a label of {len} characters; a label (between dots) is \
                 at most {MAX_LABEL_LEN}"
            ),
            EmailDomainLabelHyphen => f.write_str(
                "email domain has a label starting or ending with '-'; that is not a valid \
                 domain name",
            ),
            EmailDomainTooLong { len } => write!(
                f,
                "email domain is {len} characters; at most {MAX_DOMAIN_LEN} are allowed"
            ),
            EmailDomainNumericTld => f.write_str(
                "email domain ends in a numeric label, like an IP address; give a domain name",
            ),
            EmailTooLong { len } => write!(
                f,
                "email address is {len} characters; at most {MAX_EMAIL_LEN} are allowed"
            ),
        }
    }
}

impl std::error::Error for SiiError {}

impl Problem for SiiError {
    fn slug(&self) -> &'static str {
        "invalid-sii"
    }
    fn title(&self) -> &'static str {
        "Invalid SII"
    }
    fn status(&self) -> u16 {
        400
    }
}

// ---------------------------------------------------------------- phones --

/// Maps the digit and plus forms people paste (ASCII and fullwidth, as
/// typed on CJK keyboards) to ASCII.
fn ascii_digit_or_plus(c: char) -> Option<char> {
    match c {
        '0'..='9' | '+' => Some(c),
        '\u{FF10}'..='\u{FF19}' => char::from_u32(u32::from(c) - 0xFF10 + u32::from('0')),
        '\u{FF0B}' => Some('+'),
        _ => None,
    }
}

/// Visual separators: RFC 3966 `visual-separator` (- . ( )), spaces
/// (incl. no-break), '/', and the Unicode dashes word processors substitute.
fn is_phone_separator(c: char) -> bool {
    c.is_whitespace()
        || matches!(
            c,
            '-' | '.' | '/' | '(' | ')' | '\u{2010}'..='\u{2015}' | '\u{2212}' | '\u{FF0D}'
        )
}

/// Normalizes a phone number to E.164 (`+` and digits).
fn parse_phone(s: &str) -> Result<String, SiiError> {
    // RFC 3966: "tel:" (scheme is case-insensitive), parameters after ';'
    // (ext=, isub=, phone-context=) are not part of the number.
    let s = match s.get(..4) {
        Some(p) if p.eq_ignore_ascii_case("tel:") => {
            let rest = s.get(4..).unwrap_or("");
            rest.split(';').next().unwrap_or("").trim()
        }
        _ => s,
    };

    let chars: Vec<char> = s.chars().collect();
    let mut digits = String::new();
    let mut plus = false;
    let mut i = 0;
    while let Some(&c) = chars.get(i) {
        i += 1;
        match ascii_digit_or_plus(c) {
            Some('+') => {
                if plus || !digits.is_empty() {
                    return Err(SiiError::PhoneMisplacedPlus);
                }
                plus = true;
            }
            Some(d) => digits.push(d),
            None if c == '(' => {
                // "+44 (0)20 7946 0958": the bracketed 0 is the national trunk
                // prefix, dialled only from inside the country; drop it.
                if !digits.is_empty()
                    && chars.get(i).copied().and_then(ascii_digit_or_plus) == Some('0')
                    && chars.get(i + 1) == Some(&')')
                {
                    i += 2;
                }
            }
            None if is_phone_separator(c) => {}
            None => return Err(SiiError::PhoneInvalidCharacter { ch: c }),
        }
        if digits.len() > MAX_INPUT_BYTES {
            break; // unreachable given the input cap; bounds work regardless
        }
    }

    if digits.is_empty() {
        return Err(SiiError::PhoneNoDigits);
    }
    let national: &str = if plus {
        &digits
    } else if let Some(rest) = digits.strip_prefix("00") {
        // "00" is the ITU-recommended international prefix (E.164 annex),
        // used in most of the world in place of '+'.
        rest
    } else {
        return Err(SiiError::PhoneMissingCountryCode);
    };
    if national.is_empty() {
        return Err(SiiError::PhoneNoDigits);
    }
    if national.len() > MAX_PHONE_DIGITS {
        return Err(SiiError::PhoneTooLong {
            digits: national.len(),
        });
    }

    let (code, cc_len) = match country_codes::lookup(national) {
        CountryCode::Personal { code, len } => (code, len),
        CountryCode::Service { code, name } => {
            return Err(SiiError::PhoneServiceNumber {
                country_code: code,
                service: name,
            })
        }
        CountryCode::Unassigned => {
            let prefix = national
                .get(..national.len().min(3))
                .unwrap_or("")
                .to_string();
            return Err(SiiError::PhoneUnassignedCountryCode { prefix });
        }
    };
    let subscriber = national.get(cc_len..).unwrap_or("");
    if subscriber.len() < MIN_SUBSCRIBER_DIGITS {
        return Err(SiiError::PhoneTooShort {
            country_code: code,
            subscriber_digits: subscriber.len(),
        });
    }
    // Closed 10-digit numbering plans: +1 NANP and +7 (Russia, Kazakhstan).
    // Cheap to check and catches dropped or doubled digits.
    if code == 1 || code == 7 {
        if subscriber.len() != 10 {
            return Err(SiiError::PhoneWrongLength {
                country_code: code,
                expected: 10,
                found: subscriber.len(),
            });
        }
        if code == 1 {
            // NANP: NXX-NXX-XXXX, N = 2..9 for area code and exchange.
            let b = subscriber.as_bytes();
            if matches!(b.first(), Some(b'0' | b'1')) {
                return Err(SiiError::PhoneInvalidNanp { part: "area code" });
            }
            if matches!(b.get(3), Some(b'0' | b'1')) {
                return Err(SiiError::PhoneInvalidNanp {
                    part: "exchange code",
                });
            }
        }
    }

    let mut out = String::with_capacity(national.len() + 1);
    out.push('+');
    out.push_str(national);
    Ok(out)
}

// ---------------------------------------------------------------- emails --

/// RFC 5322 §3.2.3 `atext` (ASCII), the characters of a dot-atom besides '.'.
fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(
            c,
            '!' | '#'
                | '$'
                | '%'
                | '&'
                | '\''
                | '*'
                | '+'
                | '-'
                | '/'
                | '='
                | '?'
                | '^'
                | '_'
                | '`'
                | '{'
                | '|'
                | '}'
                | '~'
        )
}

/// Normalizes an email address: `local@domain`, lowercased, IDNA domain.
///
/// Local-part case rule: ASCII letters are lowercased. RFC 5321 §2.4 lets
/// a host treat the local part case-sensitively, but virtually no provider
/// does, and keeping case would give one mailbox several SIIs (a person
/// registered as `Alice@x` would not be found as `alice@x`, and could be
/// claimed twice). On the rare case-sensitive host the verification mail
/// (draft §8.2) goes to the lowercased mailbox, so the failure mode is a
/// code that never arrives, not a mapping to the wrong person.
/// Provider-specific aliases (`+tag`, Gmail's dots) are NOT stripped: that
/// is one provider's policy, not a property of email.
fn parse_email(s: &str) -> Result<String, SiiError> {
    // Order matters: these forms contain characters ('@', spaces) that
    // would otherwise produce a less helpful message below.
    if s.contains(['<', '>']) {
        return Err(SiiError::EmailDisplayName);
    }
    if s.contains('"') {
        return Err(SiiError::EmailQuotedLocalPart);
    }
    if s.contains(['(', ')']) {
        return Err(SiiError::EmailComment);
    }
    if s.chars().any(char::is_whitespace) {
        return Err(SiiError::EmailWhitespace);
    }
    let count = s.matches('@').count();
    if count != 1 {
        return Err(SiiError::EmailAtCount { count });
    }
    let (local, domain) = s.split_once('@').unwrap_or((s, ""));

    let local = normalize_local(local)?;
    let domain = normalize_domain(domain)?;
    let len = local.len() + 1 + domain.len();
    if len > MAX_EMAIL_LEN {
        return Err(SiiError::EmailTooLong { len });
    }
    let mut out = local;
    out.push('@');
    out.push_str(&domain);
    Ok(out)
}

/// RFC 5322 dot-atom local part, ASCII only, lowercased.
fn normalize_local(local: &str) -> Result<String, SiiError> {
    if local.is_empty() {
        return Err(SiiError::EmailEmptyLocal);
    }
    // RFC 6531 (SMTPUTF8) local parts are rejected: Unicode case folding and
    // normalization of local parts are undefined, so one mailbox could get
    // several canonical forms, and many MTAs cannot deliver to them.
    if !local.is_ascii() {
        return Err(SiiError::EmailLocalNonAscii);
    }
    if let Some(ch) = local.chars().find(|&c| c != '.' && !is_atext(c)) {
        return Err(SiiError::EmailLocalInvalidCharacter { ch });
    }
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return Err(SiiError::EmailLocalDots);
    }
    if local.len() > MAX_LOCAL_LEN {
        return Err(SiiError::EmailLocalTooLong { len: local.len() });
    }
    Ok(local.to_ascii_lowercase())
}

/// Lowercased LDH domain, Unicode labels converted to `xn--` punycode.
///
/// Not full UTS-46: labels are lowercased with Unicode `to_lowercase` and
/// the ideographic full stops (U+3002, U+FF0E, U+FF61) are read as dots, but
/// there is no NFC normalization, no compatibility mapping and no IDNA2008
/// code-point or bidi validation. Input from ordinary keyboards is already
/// NFC. A domain that IDNA would reject cannot be registered, so such an
/// address fails verification (draft §8.2) rather than matching anyone.
/// The `idna` crate would do it fully but adds ~165 KB to the wasm module.
fn normalize_domain(domain: &str) -> Result<String, SiiError> {
    if domain.is_empty() {
        return Err(SiiError::EmailEmptyDomain);
    }
    if domain.starts_with('[') {
        return Err(SiiError::EmailDomainLiteral);
    }
    let mut out = String::with_capacity(domain.len());
    let mut labels = 0usize;
    let mut last_numeric = false;
    for label in domain.split(['.', '\u{3002}', '\u{FF0E}', '\u{FF61}']) {
        if label.is_empty() {
            return Err(SiiError::EmailDomainEmptyLabel);
        }
        let ascii = if label.is_ascii() {
            if let Some(ch) = label
                .chars()
                .find(|c| !c.is_ascii_alphanumeric() && *c != '-')
            {
                return Err(SiiError::EmailDomainInvalidCharacter { ch });
            }
            label.to_ascii_lowercase()
        } else {
            unicode_label_to_ascii(label)?
        };
        if ascii.len() > MAX_LABEL_LEN {
            return Err(SiiError::EmailDomainLabelTooLong { len: ascii.len() });
        }
        if ascii.starts_with('-') || ascii.ends_with('-') {
            return Err(SiiError::EmailDomainLabelHyphen);
        }
        last_numeric = ascii.bytes().all(|b| b.is_ascii_digit());
        if labels > 0 {
            out.push('.');
        }
        out.push_str(&ascii);
        labels += 1;
        if out.len() > MAX_DOMAIN_LEN {
            return Err(SiiError::EmailDomainTooLong { len: out.len() });
        }
    }
    if labels < 2 {
        return Err(SiiError::EmailDomainNoDot);
    }
    // RFC 3696 §2: "a TLD that is all-numeric" does not exist; it would be
    // an IPv4 address written without brackets.
    if last_numeric {
        return Err(SiiError::EmailDomainNumericTld);
    }
    Ok(out)
}

/// Lowercases a non-ASCII label and encodes it as `xn--` + punycode.
///
/// Two UTS-46 mappings are applied because they turn a label into plain
/// ASCII, which must then NOT be punycoded: fullwidth ASCII (U+FF01..FF5E,
/// typed on CJK keyboards) and characters whose lowercase is ASCII (e.g.
/// KELVIN SIGN U+212A -> `k`).
fn unicode_label_to_ascii(label: &str) -> Result<String, SiiError> {
    let mut cps: Vec<char> = Vec::with_capacity(label.len());
    for c in label.chars() {
        let c = match c {
            '\u{FF01}'..='\u{FF5E}' => char::from_u32(u32::from(c) - 0xFEE0).unwrap_or(c),
            _ => c,
        };
        if c.is_ascii() {
            if !c.is_ascii_alphanumeric() && c != '-' {
                return Err(SiiError::EmailDomainInvalidCharacter { ch: c });
            }
        } else if c.is_whitespace() || c.is_control() || is_disallowed_symbol(c) {
            return Err(SiiError::EmailDomainInvalidCharacter { ch: c });
        }
        cps.extend(c.to_lowercase());
        // A label's ASCII form is at most 63 bytes and every non-ASCII code
        // point costs at least one byte, so longer input can stop early.
        if cps.len() > MAX_LABEL_LEN {
            return Err(SiiError::EmailDomainLabelTooLong {
                len: label.chars().count(),
            });
        }
    }
    if cps.iter().all(char::is_ascii) {
        // Lowercase of a non-ASCII letter is a letter, so LDH still holds.
        return Ok(cps.into_iter().collect());
    }
    match punycode_encode(&cps) {
        Some(p) => Ok(format!("xn--{p}")),
        None => Err(SiiError::EmailDomainLabelTooLong {
            len: label.chars().count(),
        }),
    }
}

/// Non-ASCII characters that are never part of a domain name: the Unicode
/// specials block, private use, and byte-order / zero-width characters.
fn is_disallowed_symbol(c: char) -> bool {
    matches!(
        c,
        '\u{FEFF}' | '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{E000}'..='\u{F8FF}'
            | '\u{FFF0}'..='\u{FFFF}'
    )
}

/// RFC 3492 punycode encoder (§6.3), with overflow checks (§6.4).
/// Returns `None` only on arithmetic overflow, impossible for ≤ 63 chars.
fn punycode_encode(input: &[char]) -> Option<String> {
    const BASE: u32 = 36;
    const TMIN: u32 = 1;
    const TMAX: u32 = 26;
    const INITIAL_BIAS: u32 = 72;
    const INITIAL_N: u32 = 128;

    fn digit(d: u32) -> Option<char> {
        match d {
            0..=25 => char::from_u32(u32::from(b'a') + d),
            26..=35 => char::from_u32(u32::from(b'0') + d - 26),
            _ => None,
        }
    }

    let mut out: String = input.iter().filter(|c| c.is_ascii()).collect();
    let b = u32::try_from(out.len()).ok()?;
    let total = u32::try_from(input.len()).ok()?;
    if b > 0 {
        out.push('-');
    }
    let mut n = INITIAL_N;
    let mut delta: u32 = 0;
    let mut bias = INITIAL_BIAS;
    let mut h = b;
    while h < total {
        let m = input
            .iter()
            .map(|&c| u32::from(c))
            .filter(|&c| c >= n)
            .min()?;
        delta = delta.checked_add((m - n).checked_mul(h + 1)?)?;
        n = m;
        for &c in input {
            let c = u32::from(c);
            if c < n {
                delta = delta.checked_add(1)?;
            }
            if c == n {
                let mut q = delta;
                let mut k = BASE;
                loop {
                    let t = if k <= bias {
                        TMIN
                    } else if k >= bias + TMAX {
                        TMAX
                    } else {
                        k - bias
                    };
                    if q < t {
                        break;
                    }
                    out.push(digit(t + (q - t) % (BASE - t))?);
                    q = (q - t) / (BASE - t);
                    k += BASE;
                }
                out.push(digit(q)?);
                bias = adapt(delta, h + 1, h == b);
                delta = 0;
                h += 1;
            }
        }
        delta = delta.checked_add(1)?;
        n = n.checked_add(1)?;
    }
    Some(out)
}

/// RFC 3492 §6.1 bias adaptation.
fn adapt(delta: u32, numpoints: u32, first: bool) -> u32 {
    const BASE: u32 = 36;
    const TMIN: u32 = 1;
    const TMAX: u32 = 26;
    const SKEW: u32 = 38;
    const DAMP: u32 = 700;
    let mut delta = if first { delta / DAMP } else { delta / 2 };
    delta += delta / numpoints.max(1);
    let mut k = 0;
    while delta > ((BASE - TMIN) * TMAX) / 2 {
        delta /= BASE - TMIN;
        k += BASE;
    }
    k + (BASE - TMIN + 1) * delta / (delta + SKEW)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> String {
        match Sii::parse(s) {
            Ok(v) => v.as_str().to_string(),
            Err(e) => panic!("{s:?} rejected: {e}"),
        }
    }
    fn err(s: &str) -> SiiError {
        match Sii::parse(s) {
            Ok(v) => panic!("{s:?} accepted as {v}"),
            Err(e) => e,
        }
    }

    // ---- phones

    #[test]
    fn phone_pasted_forms_normalize_to_e164() {
        for s in [
            "+14155550100",
            "+1 (415) 555-0100",
            "+1.415.555.0100",
            "+1-415-555-0100",
            "  +1 415 555 0100  ",
            "001 415 555 0100",
            "tel:+1-415-555-0100",
            "TEL:+1-415-555-0100;ext=12",
            "+1\u{00A0}415\u{2013}555\u{2013}0100",
            "\u{FF0B}\u{FF11}4155550100",
        ] {
            assert_eq!(ok(s), "+14155550100", "{s:?}");
        }
        assert_eq!(ok("+44 (0)20 7946 0958"), "+442079460958");
        assert_eq!(ok("0044 20 7946 0958"), "+442079460958");
        assert_eq!(ok("+49 30/1234567"), "+49301234567");
        assert_eq!(ok("+683 4002"), "+6834002"); // Niue: 4-digit numbers
    }

    #[test]
    fn phone_kind_and_display() {
        let s = Sii::parse("+1 415 555 0100").unwrap();
        assert_eq!(s.kind(), SiiKind::Phone);
        assert_eq!(s.to_string(), "+14155550100");
    }

    #[test]
    fn phone_without_country_code_is_rejected_with_hint() {
        let e = err("4155550100");
        assert_eq!(e, SiiError::PhoneMissingCountryCode);
        assert!(e.to_string().contains("country code"));
        assert_eq!(err("020 7946 0958"), SiiError::PhoneMissingCountryCode);
        assert_eq!(
            err("tel:555-0100;phone-context=+1-415"),
            SiiError::PhoneMissingCountryCode
        );
    }

    #[test]
    fn phone_letters_are_rejected() {
        assert_eq!(
            err("+1 415 CALL NOW"),
            SiiError::PhoneInvalidCharacter { ch: 'C' }
        );
        assert_eq!(
            err("+1 415 555 0100 x12"),
            SiiError::PhoneInvalidCharacter { ch: 'x' }
        );
        assert_eq!(err("alice"), SiiError::PhoneInvalidCharacter { ch: 'a' });
    }

    #[test]
    fn phone_too_long_is_rejected_with_count() {
        let e = err("+44 1234 5678 901234");
        assert_eq!(e, SiiError::PhoneTooLong { digits: 16 });
        assert_eq!(
            e.to_string(),
            "phone number has 16 digits; E.164 allows at most 15 including the country code"
        );
        assert_eq!(ok("+44123456789012"), "+44123456789012"); // exactly 15
    }

    #[test]
    fn phone_too_short_is_rejected() {
        assert_eq!(
            err("+44 123"),
            SiiError::PhoneTooShort {
                country_code: 44,
                subscriber_digits: 3
            }
        );
    }

    #[test]
    fn phone_unassigned_country_codes_are_rejected() {
        assert_eq!(
            err("+28 1234 5678"),
            SiiError::PhoneUnassignedCountryCode {
                prefix: "281".into()
            }
        );
        assert!(matches!(
            err("+0 1234 5678"),
            SiiError::PhoneUnassignedCountryCode { .. }
        ));
        assert!(matches!(
            err("+379 1234567"),
            SiiError::PhoneUnassignedCountryCode { .. }
        ));
        assert!(matches!(
            err("+800 1234 5678"),
            SiiError::PhoneServiceNumber {
                country_code: 800,
                ..
            }
        ));
    }

    #[test]
    fn phone_nanp_and_plus7_lengths() {
        assert_eq!(
            err("+1 415 555 010"),
            SiiError::PhoneWrongLength {
                country_code: 1,
                expected: 10,
                found: 9
            }
        );
        assert_eq!(
            err("+1 115 555 0100"),
            SiiError::PhoneInvalidNanp { part: "area code" }
        );
        assert_eq!(
            err("+1 415 155 0100"),
            SiiError::PhoneInvalidNanp {
                part: "exchange code"
            }
        );
        assert_eq!(ok("+7 912 345 67 89"), "+79123456789");
        assert!(matches!(
            err("+7 912 345 67"),
            SiiError::PhoneWrongLength { .. }
        ));
    }

    #[test]
    fn phone_plus_placement_and_empty() {
        assert_eq!(err("+1 415 +555 0100"), SiiError::PhoneMisplacedPlus);
        assert_eq!(err("++14155550100"), SiiError::PhoneMisplacedPlus);
        assert_eq!(err("+"), SiiError::PhoneNoDigits);
        assert_eq!(err("( - )"), SiiError::PhoneNoDigits);
        assert_eq!(err("00"), SiiError::PhoneNoDigits);
        assert_eq!(err("   "), SiiError::Empty);
    }

    // ---- emails

    #[test]
    fn email_normalizes_case_and_whitespace() {
        assert_eq!(ok("  Alice.Smith@Example.COM "), "alice.smith@example.com");
        assert_eq!(ok("a+tag@b.co"), "a+tag@b.co");
        assert_eq!(ok("o'brien@example.ie"), "o'brien@example.ie");
        let s = Sii::parse("bob@example.org").unwrap();
        assert_eq!(s.kind(), SiiKind::Email);
    }

    #[test]
    fn email_idn_domain_becomes_punycode() {
        assert_eq!(ok("max@bücher.de"), "max@xn--bcher-kva.de");
        assert_eq!(ok("max@BÜCHER.de"), "max@xn--bcher-kva.de");
        assert_eq!(ok("max@XN--BCHER-KVA.DE"), "max@xn--bcher-kva.de");
        assert_eq!(ok("a@münchen.de"), "a@xn--mnchen-3ya.de");
        assert_eq!(ok("a@español.com"), "a@xn--espaol-zwa.com");
        assert_eq!(ok("a@例え。テスト"), "a@xn--r8jz45g.xn--zckzah");
        // Labels that map to plain ASCII stay plain ASCII.
        assert_eq!(ok("a@\u{212A}iwi.nz"), "a@kiwi.nz");
        assert_eq!(ok("a@ＥＸＡＭＰＬＥ.com"), "a@example.com");
        assert_eq!(
            err("a@ex＿ample.com"),
            SiiError::EmailDomainInvalidCharacter { ch: '_' }
        );
    }

    #[test]
    fn punycode_rfc3492_vectors() {
        let enc = |s: &str| punycode_encode(&s.chars().collect::<Vec<_>>()).unwrap();
        // RFC 3492 §7.1 (A) Arabic (Egyptian), (B) Chinese (simplified)
        assert_eq!(
            enc("\u{644}\u{64A}\u{647}\u{645}\u{627}\u{628}\u{62A}\u{643}\u{644}\u{645}\u{648}\u{634}\u{639}\u{631}\u{628}\u{64A}\u{61F}"),
            "egbpdaj6bu4bxfgehfvwxn"
        );
        assert_eq!(enc("他们为什么不说中文"), "ihqwcrb4cv8a8dqg056pqjye");
        // (L) mixed ASCII/Japanese
        assert_eq!(enc("3年b組金八先生"), "3b-ww4c5e180e575a65lsy2b");
        assert_eq!(enc("abc"), "abc-");
    }

    #[test]
    fn email_rejects_display_names_comments_quotes_whitespace() {
        assert_eq!(err("Alice <alice@example.com>"), SiiError::EmailDisplayName);
        assert_eq!(err("alice@example.com (Alice)"), SiiError::EmailComment);
        assert_eq!(err("alice(x)@example.com"), SiiError::EmailComment);
        assert_eq!(
            err("\"alice smith\"@example.com"),
            SiiError::EmailQuotedLocalPart
        );
        assert_eq!(err("alice smith@example.com"), SiiError::EmailWhitespace);
        assert_eq!(err("alice@exa\tmple.com"), SiiError::EmailWhitespace);
    }

    #[test]
    fn email_rejects_at_count_and_empty_parts() {
        assert_eq!(err("a@b@c.com"), SiiError::EmailAtCount { count: 2 });
        assert_eq!(err("@example.com"), SiiError::EmailEmptyLocal);
        assert_eq!(err("alice@"), SiiError::EmailEmptyDomain);
    }

    #[test]
    fn email_local_part_rules() {
        assert_eq!(err(".alice@example.com"), SiiError::EmailLocalDots);
        assert_eq!(err("alice.@example.com"), SiiError::EmailLocalDots);
        assert_eq!(err("al..ice@example.com"), SiiError::EmailLocalDots);
        assert_eq!(
            err("al,ice@example.com"),
            SiiError::EmailLocalInvalidCharacter { ch: ',' }
        );
        assert_eq!(err("alïce@example.com"), SiiError::EmailLocalNonAscii);
        let long = format!("{}@example.com", "a".repeat(65));
        assert_eq!(err(&long), SiiError::EmailLocalTooLong { len: 65 });
        assert!(Sii::parse(&format!("{}@example.com", "a".repeat(64))).is_ok());
    }

    #[test]
    fn email_domain_rules() {
        assert_eq!(err("a@localhost"), SiiError::EmailDomainNoDot);
        assert_eq!(err("a@[192.0.2.1]"), SiiError::EmailDomainLiteral);
        assert_eq!(err("a@192.0.2.1"), SiiError::EmailDomainNumericTld);
        assert_eq!(err("a@example..com"), SiiError::EmailDomainEmptyLabel);
        assert_eq!(err("a@example.com."), SiiError::EmailDomainEmptyLabel);
        assert_eq!(err("a@.example.com"), SiiError::EmailDomainEmptyLabel);
        assert_eq!(err("a@-example.com"), SiiError::EmailDomainLabelHyphen);
        assert_eq!(err("a@example-.com"), SiiError::EmailDomainLabelHyphen);
        assert_eq!(
            err("a@exa_mple.com"),
            SiiError::EmailDomainInvalidCharacter { ch: '_' }
        );
        let label64 = format!("a@{}.com", "b".repeat(64));
        assert_eq!(err(&label64), SiiError::EmailDomainLabelTooLong { len: 64 });
        assert!(Sii::parse(&format!("a@{}.com", "b".repeat(63))).is_ok());
        // 4 labels of 63 + 3 dots = 255 > 253
        let l = "c".repeat(63);
        let long = format!("a@{l}.{l}.{l}.{l}");
        assert_eq!(err(&long), SiiError::EmailDomainTooLong { len: 255 });
        assert_eq!(ok("a@x-1.example.com"), "a@x-1.example.com");
    }

    #[test]
    fn email_total_length_limit() {
        // local 64 + '@' + domain 190 = 255 > 254
        let l = "d".repeat(62);
        let domain = format!("{l}.{l}.{l}.ab"); // 62*3+2+3 = 191
        let addr = format!("{}@{domain}", "a".repeat(64));
        assert_eq!(err(&addr), SiiError::EmailTooLong { len: 64 + 1 + 191 });
    }

    // ---- common

    #[test]
    fn hash_is_sha256_of_canonical_form() {
        let a = Sii::parse("+1 (415) 555-0100").unwrap();
        let b = Sii::parse("+14155550100").unwrap();
        assert_eq!(a.hash(), b.hash());
        let expected: [u8; 32] = Sha256::digest(b"+14155550100").into();
        assert_eq!(a.hash(), expected);
        assert_ne!(a.hash(), Sii::parse("+14155550101").unwrap().hash());
    }

    #[test]
    fn error_messages_name_the_character_safely() {
        assert_eq!(
            err("+1 415 555 010x").to_string(),
            "phone number contains 'x'; only digits, a leading '+', spaces and - . / ( ) are \
             allowed (an email address needs an '@')"
        );
        // A bidi override is shown as a code point, never echoed raw.
        let e = err("a@ex\u{202E}ample.com").to_string();
        assert!(e.contains("U+202E") && !e.contains('\u{202E}'), "{e}");
        assert!(err("a@ex\u{7}.com").to_string().contains("U+0007"));
    }

    #[test]
    fn input_cap() {
        let big = "1".repeat(MAX_INPUT_BYTES + 1);
        assert_eq!(
            err(&big),
            SiiError::InputTooLong {
                bytes: MAX_INPUT_BYTES + 1
            }
        );
    }

    #[test]
    fn problem_metadata() {
        let e = err("nope");
        assert_eq!(e.slug(), "invalid-sii");
        assert_eq!(e.title(), "Invalid SII");
        assert_eq!(e.status(), 400);
    }
}
