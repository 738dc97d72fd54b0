//! What can go wrong, and the exit code each class of failure gets.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | done |
//! | 1 | a bulk upload finished, but some lines were refused (see the report) |
//! | 2 | usage or bad input, refused locally before anything was sent |
//! | 3 | authentication or authorization: bad credentials, no or a wrong client certificate, suspended, not allowed |
//! | 4 | any other 4xx from the GP (no such verification, wrong code, conflict, rate limited, …) |
//! | 5 | the GP failed (5xx) or could not be reached (network, TLS) |

use std::fmt;
use std::process::ExitCode;

use serde_json::{json, Value};

use crate::core::Problem;

/// One failure, as the user is told about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Wrong arguments, a missing setting or an unreadable file.
    Usage(String),
    /// Input the GP would refuse, refused here with the GP's own problem
    /// (the same core code decides it, so title and detail are the API's).
    Local {
        /// The status the GP would answer.
        status: u16,
        /// The problem slug (`type` is `/problems/<slug>`).
        slug: String,
        /// The problem title.
        title: String,
        /// What exactly was wrong.
        detail: String,
    },
    /// An RFC 9457 problem document from the GP (or an RFC 6749 §5.2 error
    /// from the token endpoint, shaped the same way).
    Remote {
        /// HTTP status.
        status: u16,
        /// The problem slug, or the OAuth `error` code.
        slug: String,
        /// The title (or the OAuth error code).
        title: String,
        /// The detail (or `error_description`).
        detail: String,
    },
    /// No answer: connection, TLS handshake, timeout, or an answer that is
    /// not HTTP.
    Network(String),
}

impl Failure {
    /// The GP's problem for input `p`, found locally.
    pub fn local<P: Problem>(p: &P) -> Failure {
        Failure::Local {
            status: p.status(),
            slug: p.slug().to_owned(),
            title: p.title().to_owned(),
            detail: p.to_string(),
        }
    }

    /// The process exit code of this class of failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Usage(_) | Failure::Local { .. } => 2,
            Failure::Remote { status, .. } => match status {
                401 | 403 => 3,
                // The token endpoint's errors are all about the client's
                // credentials (RFC 6749 §5.2: invalid_client,
                // unauthorized_client, ...), whatever their status.
                400 if self.is_oauth() => 3,
                400..=499 => 4,
                _ => 5,
            },
            Failure::Network(_) => 5,
        }
    }

    fn is_oauth(&self) -> bool {
        matches!(self, Failure::Remote { slug, .. } if slug.contains('_'))
    }

    /// The problem document (`--json` output): what the GP sent, or what it
    /// would have sent, or a `client-error`/`network-error` of our own.
    pub fn to_json(&self) -> Value {
        match self {
            Failure::Usage(detail) => json!({
                "type": "/problems/usage", "title": "Usage", "status": 0, "detail": detail,
            }),
            Failure::Local {
                status,
                slug,
                title,
                detail,
            }
            | Failure::Remote {
                status,
                slug,
                title,
                detail,
            } => json!({
                "type": format!("/problems/{slug}"), "title": title, "status": status,
                "detail": detail, "local": matches!(self, Failure::Local { .. }),
            }),
            Failure::Network(detail) => json!({
                "type": "/problems/network", "title": "GP unreachable", "status": 0, "detail": detail,
            }),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Usage(m) => write!(f, "{m}"),
            Failure::Local { title, detail, .. } => write!(f, "{title}: {detail}"),
            Failure::Remote {
                status,
                title,
                detail,
                ..
            } => {
                if detail.is_empty() {
                    write!(f, "{title} ({status})")
                } else {
                    write!(f, "{title}: {detail} ({status})")
                }
            }
            Failure::Network(m) => write!(f, "GP unreachable: {m}"),
        }
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::Usage(e.to_string())
    }
}

/// Prints a failure to stderr (and as JSON to stdout with `--json`) and
/// gives its exit code.
pub fn report(f: &Failure, json: bool) -> ExitCode {
    if json {
        println!("{}", f.to_json());
    }
    eprintln!("glados: {f}");
    ExitCode::from(f.exit_code())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::sii::Sii;

    fn remote(status: u16, slug: &str) -> Failure {
        Failure::Remote {
            status,
            slug: slug.into(),
            title: "t".into(),
            detail: "d".into(),
        }
    }

    #[test]
    fn exit_codes_by_class() {
        assert_eq!(Failure::Usage("x".into()).exit_code(), 2);
        let Err(e) = Sii::parse("12") else {
            panic!("12 is no SII")
        };
        assert_eq!(Failure::local(&e).exit_code(), 2);
        assert_eq!(remote(401, "unauthorized").exit_code(), 3);
        assert_eq!(remote(403, "ap-suspended").exit_code(), 3);
        assert_eq!(remote(400, "invalid_client").exit_code(), 3);
        assert_eq!(remote(400, "invalid-sii").exit_code(), 4);
        assert_eq!(remote(429, "rate-limited").exit_code(), 4);
        assert_eq!(remote(500, "internal-error").exit_code(), 5);
        assert_eq!(remote(503, "code-delivery-failed").exit_code(), 5);
        assert_eq!(Failure::Network("refused".into()).exit_code(), 5);
    }

    #[test]
    fn local_problems_read_like_the_gps() {
        let Err(e) = Sii::parse("0207 946 0958") else {
            panic!("a national number is no SII")
        };
        let f = Failure::local(&e);
        assert_eq!(
            f.to_string(),
            format!("Invalid SII: {e}"),
            "title: detail, as the GP's problem document has them"
        );
        assert_eq!(f.to_json()["type"], "/problems/invalid-sii");
        assert_eq!(f.to_json()["status"], 400);
    }
}
