//! Service Specific Identifiers: a provider id plus a provider-scoped user id.
//!
//! draft §2: "Service Specific Identifier (SSI): ... composed of two
//! parts - a user part, scoped to a provider of communication services,
//! and a unique identifier for the communication service provider."
//!
//! draft §8.2: "The AP will create its own unique ID for the user, scoped
//! within its own application. This ID need only be unique within the
//! application provider." GLADOS treats the user id as opaque; it only
//! bounds it so it can be stored, logged and compared safely.
//!
//! Canonical string form: `provider:user`, split at the FIRST `:` (a
//! provider id never contains `:`, a user id may).

use core::fmt;
use core::str::FromStr;

use serde::{Deserialize, Serialize};

use super::sii::ShowChar;
use super::Problem;

/// Longest provider id; one DNS label's worth keeps ids short in logs and keys.
pub const MAX_PROVIDER_LEN: usize = 63;
/// Longest user id in bytes; generous for UUIDs, handles and URIs.
pub const MAX_USER_LEN: usize = 256;

/// Names an application provider (AP), e.g. `whatsapp` or `signal.org`.
///
/// Lowercase DNS-like: `[a-z0-9]([a-z0-9.-]*[a-z0-9])?`, 1..=63 chars, no
/// `..`. Uppercase is rejected rather than folded: provider ids come from
/// GP configuration, where a mismatch is a bug worth surfacing.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ProviderId(String);

impl ProviderId {
    /// Validates a provider id.
    pub fn parse(s: &str) -> Result<ProviderId, SsiError> {
        if s.is_empty() {
            return Err(SsiError::ProviderEmpty);
        }
        if s.len() > MAX_PROVIDER_LEN {
            return Err(SsiError::ProviderTooLong { len: s.len() });
        }
        if let Some(ch) = s
            .chars()
            .find(|&c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.'))
        {
            return Err(SsiError::ProviderInvalidCharacter { ch });
        }
        let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
        if !alnum(s.chars().next()) || !alnum(s.chars().next_back()) {
            return Err(SsiError::ProviderBadEdge);
        }
        if s.contains("..") {
            return Err(SsiError::ProviderDoubleDot);
        }
        Ok(ProviderId(s.to_string()))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An AP's opaque id for one of its users (draft §8.2).
///
/// 1..=256 bytes of printable ASCII (0x21..=0x7E): no whitespace or control
/// characters, so it survives logs, headers and the `provider:user` form.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UserId(String);

impl UserId {
    /// Validates a user id.
    pub fn parse(s: &str) -> Result<UserId, SsiError> {
        if s.is_empty() {
            return Err(SsiError::UserEmpty);
        }
        if s.len() > MAX_USER_LEN {
            return Err(SsiError::UserTooLong { len: s.len() });
        }
        if let Some(ch) = s.chars().find(|c| !c.is_ascii_graphic()) {
            return Err(SsiError::UserInvalidCharacter { ch });
        }
        Ok(UserId(s.to_string()))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A provider-scoped user identity. Serializes as
/// `{"provider": "...", "user": "..."}`; each part is validated when
/// deserialized.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Ssi {
    provider: ProviderId,
    user: UserId,
}

impl Ssi {
    /// Combines already-validated parts. draft §8.2: the GP is "able to
    /// construct the SSI by combining the provider userID, with the
    /// providerID implied by the access token."
    pub fn new(provider: ProviderId, user: UserId) -> Ssi {
        Ssi { provider, user }
    }

    /// Parses the canonical `provider:user` form, splitting at the first `:`.
    pub fn parse(s: &str) -> Result<Ssi, SsiError> {
        let (p, u) = s.split_once(':').ok_or(SsiError::MissingColon)?;
        Ok(Ssi {
            provider: ProviderId::parse(p)?,
            user: UserId::parse(u)?,
        })
    }

    /// The application provider part.
    pub fn provider(&self) -> &ProviderId {
        &self.provider
    }

    /// The provider-scoped user part.
    pub fn user(&self) -> &UserId {
        &self.user
    }
}

macro_rules! string_impls {
    ($t:ty) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl FromStr for $t {
            type Err = SsiError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                <$t>::parse(s)
            }
        }
        impl TryFrom<String> for $t {
            type Error = SsiError;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                <$t>::parse(&s)
            }
        }
        impl From<$t> for String {
            fn from(v: $t) -> String {
                v.0
            }
        }
        impl AsRef<str> for $t {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}
string_impls!(ProviderId);
string_impls!(UserId);

impl fmt::Display for Ssi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.provider, self.user)
    }
}

impl FromStr for Ssi {
    type Err = SsiError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ssi::parse(s)
    }
}

/// Why a string is not a valid SSI or SSI part.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SsiError {
    /// `provider:user` form without a `:`.
    MissingColon,
    /// Empty provider id.
    ProviderEmpty,
    /// Provider id over [`MAX_PROVIDER_LEN`].
    ProviderTooLong { len: usize },
    /// Provider id character outside `a-z 0-9 - .`.
    ProviderInvalidCharacter { ch: char },
    /// Provider id starts or ends with `-` or `.`.
    ProviderBadEdge,
    /// Provider id contains `..`.
    ProviderDoubleDot,
    /// Empty user id.
    UserEmpty,
    /// User id over [`MAX_USER_LEN`] bytes.
    UserTooLong { len: usize },
    /// Whitespace, control or non-ASCII character in the user id.
    UserInvalidCharacter { ch: char },
}

impl fmt::Display for SsiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use SsiError::*;
        match self {
            MissingColon => {
                f.write_str("SSI has no ':'; write it as provider:user, e.g. signal.org:8f3a")
            }
            ProviderEmpty => f.write_str("provider id is empty"),
            ProviderTooLong { len } => write!(
                f,
                "provider id is {len} characters; at most {MAX_PROVIDER_LEN} are allowed"
            ),
            ProviderInvalidCharacter { ch } => write!(
                f,
                "provider id contains {}; only lowercase a-z, digits, '-' and '.' are \
                 allowed",
                ShowChar(*ch)
            ),
            ProviderBadEdge => {
                f.write_str("provider id must start and end with a lowercase letter or digit")
            }
            ProviderDoubleDot => f.write_str("provider id contains '..'; remove the extra dot"),
            UserEmpty => f.write_str("user id is empty"),
            UserTooLong { len } => write!(
                f,
                "user id is {len} bytes; at most {MAX_USER_LEN} are allowed"
            ),
            UserInvalidCharacter { ch } => write!(
                f,
                "user id contains {}; only printable ASCII without spaces is allowed",
                ShowChar(*ch)
            ),
        }
    }
}

impl std::error::Error for SsiError {}

impl Problem for SsiError {
    fn slug(&self) -> &'static str {
        "invalid-ssi"
    }
    fn title(&self) -> &'static str {
        "Invalid SSI"
    }
    fn status(&self) -> u16 {
        400
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_ids() {
        for ok in ["whatsapp", "signal.org", "a", "x-1.example", "0"] {
            assert_eq!(ProviderId::parse(ok).unwrap().as_str(), ok);
        }
        assert_eq!(ProviderId::parse(""), Err(SsiError::ProviderEmpty));
        assert_eq!(
            ProviderId::parse("WhatsApp"),
            Err(SsiError::ProviderInvalidCharacter { ch: 'W' })
        );
        assert_eq!(
            ProviderId::parse("a:b"),
            Err(SsiError::ProviderInvalidCharacter { ch: ':' })
        );
        assert_eq!(ProviderId::parse("-abc"), Err(SsiError::ProviderBadEdge));
        assert_eq!(ProviderId::parse("abc."), Err(SsiError::ProviderBadEdge));
        assert_eq!(ProviderId::parse("a..b"), Err(SsiError::ProviderDoubleDot));
        assert!(ProviderId::parse(&"a".repeat(63)).is_ok());
        assert_eq!(
            ProviderId::parse(&"a".repeat(64)),
            Err(SsiError::ProviderTooLong { len: 64 })
        );
    }

    #[test]
    fn user_ids() {
        assert!(UserId::parse("@jdrosen2").is_ok());
        assert!(UserId::parse("urn:uuid:8f3a").is_ok());
        assert!(UserId::parse(&"u".repeat(256)).is_ok());
        assert_eq!(UserId::parse(""), Err(SsiError::UserEmpty));
        assert_eq!(
            UserId::parse(&"u".repeat(257)),
            Err(SsiError::UserTooLong { len: 257 })
        );
        assert_eq!(
            UserId::parse("a b"),
            Err(SsiError::UserInvalidCharacter { ch: ' ' })
        );
        assert_eq!(
            UserId::parse("a\u{7}"),
            Err(SsiError::UserInvalidCharacter { ch: '\u{7}' })
        );
        assert_eq!(
            UserId::parse("jür"),
            Err(SsiError::UserInvalidCharacter { ch: 'ü' })
        );
    }

    #[test]
    fn ssi_string_form_splits_at_first_colon() {
        let s = Ssi::parse("signal.org:urn:uuid:1").unwrap();
        assert_eq!(s.provider().as_str(), "signal.org");
        assert_eq!(s.user().as_str(), "urn:uuid:1");
        assert_eq!(s.to_string(), "signal.org:urn:uuid:1");
        assert_eq!(Ssi::parse("whatsapp"), Err(SsiError::MissingColon));
        assert_eq!(Ssi::parse(":u"), Err(SsiError::ProviderEmpty));
        assert_eq!(Ssi::parse("p:"), Err(SsiError::UserEmpty));
    }

    #[test]
    fn problem_metadata() {
        let e = Ssi::parse("x").unwrap_err();
        assert_eq!(e.slug(), "invalid-ssi");
        assert_eq!(e.status(), 400);
    }
}
