//! HTTP to the GP: TLS (custom roots, a client certificate for mutual TLS),
//! OAuth client-credentials tokens fetched and refreshed as needed, RFC 9457
//! problems turned into [`Failure`]s, and `Retry-After` honoured.

use std::fs;
use std::path::Path;
use std::sync::Mutex;
use std::thread::sleep;
use std::time::{Duration, Instant};

use serde_json::Value;
use ureq::tls::{parse_pem, Certificate, ClientCert, PemItem, PrivateKey, RootCerts, TlsConfig};
use ureq::Agent;

use super::config::Settings;
use super::error::Failure;
use crate::core::encoding::b64_encode;

/// Largest answer read (summaries and problem documents are far smaller).
const MAX_ANSWER_BYTES: u64 = 4 << 20;
/// A token is renewed this long before it expires.
const TOKEN_MARGIN: Duration = Duration::from_secs(30);

/// One request body.
#[derive(Debug, Clone, Copy)]
pub enum Body<'a> {
    /// No body (GET).
    None,
    /// `application/json`.
    Json(&'a Value),
    /// `application/x-ndjson` with an `Idempotency-Key`.
    Ndjson {
        /// The upload.
        bytes: &'a [u8],
        /// Its idempotency key.
        key: &'a str,
    },
}

/// An HTTP answer, whatever its status.
#[derive(Debug, Clone)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// `Retry-After` in seconds, when given as a number.
    pub retry_after: Option<u64>,
    /// `Idempotent-Replayed: true` (a bulk upload answered from memory).
    pub replayed: bool,
    /// The body.
    pub body: Vec<u8>,
}

impl Answer {
    /// Whether the status is 2xx.
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body as JSON, for a 2xx; the problem otherwise.
    pub fn json(&self) -> Result<Value, Failure> {
        if !self.ok() {
            return Err(self.failure());
        }
        serde_json::from_slice(&self.body).map_err(|e| {
            Failure::Network(format!(
                "the GP answered {} with a body that is not JSON ({e})",
                self.status
            ))
        })
    }

    /// The failure this (non-2xx) answer describes: its RFC 9457 problem
    /// document, an RFC 6749 §5.2 error, or the bare status.
    pub fn failure(&self) -> Failure {
        let doc: Option<Value> = serde_json::from_slice(&self.body).ok();
        let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(clean);
        if let Some(doc) = &doc {
            if let Some(ty) = text(doc, "type") {
                return Failure::Remote {
                    status: self.status,
                    slug: ty.rsplit('/').next().unwrap_or_default().to_owned(),
                    title: text(doc, "title").unwrap_or_else(|| "Error".into()),
                    detail: text(doc, "detail").unwrap_or_default(),
                };
            }
            if let Some(error) = text(doc, "error") {
                return Failure::Remote {
                    status: self.status,
                    slug: error.clone(),
                    title: error,
                    detail: text(doc, "error_description").unwrap_or_default(),
                };
            }
        }
        let snippet: String = clean(&String::from_utf8_lossy(&self.body))
            .chars()
            .take(200)
            .collect();
        Failure::Remote {
            status: self.status,
            slug: "http-error".into(),
            title: format!("HTTP {}", self.status),
            detail: snippet,
        }
    }
}

/// Text from the GP with control characters replaced, so it cannot garble
/// a terminal or a log line.
pub fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
        .collect()
}

/// The answer to one request (`what` names it in errors), whatever its status.
fn read_answer(
    result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    what: &str,
) -> Result<Answer, Failure> {
    let mut res = result.map_err(|e| Failure::Network(format!("{what}: {e}")))?;
    let header = |k: &str| {
        res.headers()
            .get(k)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .map(str::to_owned)
    };
    let retry_after = header("retry-after").and_then(|v| v.parse().ok());
    let replayed = header("idempotent-replayed").as_deref() == Some("true");
    let status = res.status().as_u16();
    let body = res
        .body_mut()
        .with_config()
        .limit(MAX_ANSWER_BYTES)
        .read_to_vec()
        .map_err(|e| Failure::Network(format!("{what}: reading the answer: {e}")))?;
    Ok(Answer {
        status,
        retry_after,
        replayed,
        body,
    })
}

struct Token {
    value: String,
    renew_at: Instant,
}

/// A connection to one GP as one AP.
pub struct Client {
    base: String,
    id: String,
    secret: String,
    agent: Agent,
    /// For bulk uploads: a new connection each (see [`Client::new`]).
    upload_agent: Agent,
    token: Mutex<Option<Token>>,
    /// Whether a client certificate is configured.
    mtls: bool,
    /// Longest `Retry-After` waited for before giving up (single commands).
    pub max_wait: Duration,
}

fn read_pem(path: &Path, what: &str) -> Result<Vec<u8>, Failure> {
    fs::read(path)
        .map_err(|e| Failure::Usage(format!("cannot read the {what} {}: {e}", path.display())))
}

fn certificates(path: &Path, what: &str) -> Result<Vec<Certificate<'static>>, Failure> {
    let pem = read_pem(path, what)?;
    let certs: Vec<_> = parse_pem(&pem)
        .filter_map(|item| match item {
            Ok(PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect();
    if certs.is_empty() {
        return Err(Failure::Usage(format!(
            "no PEM certificate in the {what} {}",
            path.display()
        )));
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKey<'static>, Failure> {
    let pem = read_pem(path, "client key")?;
    PrivateKey::from_pem(&pem).map_err(|e| {
        Failure::Usage(format!(
            "no usable PEM private key in {}: {e}",
            path.display()
        ))
    })
}

impl Client {
    /// A client for `settings` (GP URL and credentials required); `timeout`
    /// bounds each request.
    pub fn new(settings: &Settings, timeout: Duration) -> Result<Client, Failure> {
        let base = settings.gp_url()?;
        let (id, secret) = settings.credentials()?;
        let mut tls = TlsConfig::builder();
        let mtls = settings.cert.is_some();
        if let Some(ca) = &settings.ca {
            tls = tls.root_certs(RootCerts::new_with_certs(&certificates(ca, "CA file")?));
        }
        match (&settings.cert, &settings.key) {
            (Some(cert), Some(key)) => {
                let chain = certificates(cert, "client certificate")?;
                tls = tls.client_cert(Some(ClientCert::new_with_certs(&chain, private_key(key)?)));
                if base.starts_with("http://") {
                    eprintln!(
                        "glados: warning: the client certificate is not used: {base} is not https"
                    );
                }
            }
            (None, None) => {}
            _ => {
                return Err(Failure::Usage(
                    "mutual TLS needs both --cert and --key (GLADOS_CERT, GLADOS_KEY)".into(),
                ))
            }
        }
        let tls = tls.build();
        let agent = |pooled: usize| -> Agent {
            Agent::config_builder()
                .tls_config(tls.clone())
                .http_status_as_error(false)
                .timeout_global(Some(timeout))
                .user_agent(format!("glados-cli/{}", env!("CARGO_PKG_VERSION")))
                .max_idle_connections(pooled)
                .build()
                .into()
        };
        Ok(Client {
            base,
            id,
            secret,
            agent: agent(8),
            // An upload is seconds of work: a fresh connection costs little
            // next to it, while a pooled one may have been closed by the
            // server meanwhile (the local GP resets the first reuse after
            // parallel uploads), costing a failed send and a back-off.
            upload_agent: agent(0),
            token: Mutex::new(None),
            mtls,
            max_wait: Duration::from_secs(60),
        })
    }

    /// The AP's client id.
    pub fn client_id(&self) -> &str {
        &self.id
    }

    /// The GP's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// One request, no retries; `bearer` adds `Authorization: Bearer`.
    fn send(
        &self,
        method: &str,
        path: &str,
        body: Body<'_>,
        auth: Option<&str>,
    ) -> Result<Answer, Failure> {
        let url = format!("{}{path}", self.base);
        let result = match body {
            Body::None => {
                let mut r = self.agent.get(&url);
                if let Some(a) = auth {
                    r = r.header("authorization", a);
                }
                r.call()
            }
            body => {
                let mut r = match body {
                    Body::Ndjson { .. } => self.upload_agent.post(&url),
                    _ if method == "PATCH" => self.agent.patch(&url),
                    _ => self.agent.post(&url),
                };
                if let Some(a) = auth {
                    r = r.header("authorization", a);
                }
                match body {
                    Body::Json(v) => r
                        .header("content-type", "application/json")
                        .send(v.to_string()),
                    Body::Ndjson { bytes, key } => r
                        .header("content-type", "application/x-ndjson")
                        .header("idempotency-key", key)
                        .send(bytes),
                    Body::None => r.send_empty(),
                }
            }
        };
        read_answer(result, &format!("{method} {url}")).map_err(|f| self.hint(f))
    }

    /// A refused TLS handshake often shows only as a broken connection:
    /// without a client certificate configured, say that one may be needed.
    fn hint(&self, f: Failure) -> Failure {
        match f {
            Failure::Network(m) if !self.mtls && self.base.starts_with("https://") => {
                let lower = m.to_lowercase();
                let tls_like = ["alert", "broken pipe", "reset"]
                    .iter()
                    .any(|w| lower.contains(w));
                if tls_like {
                    Failure::Network(format!(
                        "{m} (if the GP requires mutual TLS, pass --cert and --key)"
                    ))
                } else {
                    Failure::Network(m)
                }
            }
            f => f,
        }
    }

    /// A fresh access token from `POST /oauth/token` (client credentials,
    /// HTTP Basic), and its lifetime.
    fn fetch_token(&self) -> Result<Token, Failure> {
        let form = |s: &str| -> String {
            // RFC 6749 §2.3.1: id and secret are form-urlencoded first.
            s.bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                        char::from(b).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect()
        };
        let basic = b64_encode(format!("{}:{}", form(&self.id), form(&self.secret)).as_bytes());
        let url = format!("{}/oauth/token", self.base);
        let result = self
            .agent
            .post(&url)
            .header("authorization", format!("Basic {basic}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .send("grant_type=client_credentials");
        let doc = read_answer(result, &format!("POST {url}"))
            .map_err(|f| self.hint(f))?
            .json()?;
        let (Some(value), Some(ttl)) = (
            doc.get("access_token").and_then(Value::as_str),
            doc.get("expires_in").and_then(Value::as_u64),
        ) else {
            return Err(Failure::Network(
                "the token endpoint answered without access_token and expires_in".into(),
            ));
        };
        let ttl = Duration::from_secs(ttl);
        let margin = TOKEN_MARGIN.min(ttl / 5);
        Ok(Token {
            value: value.to_owned(),
            renew_at: Instant::now() + ttl - margin,
        })
    }

    /// A valid access token: the cached one, or a new one when it is about
    /// to expire (or `renew` says the GP refused it).
    pub fn token(&self, renew: bool) -> Result<String, Failure> {
        let mut slot = self
            .token
            .lock()
            .map_err(|_| Failure::Network("token cache poisoned".into()))?;
        match &*slot {
            Some(t) if !renew && Instant::now() < t.renew_at => Ok(t.value.clone()),
            _ => {
                let t = self.fetch_token()?;
                let v = t.value.clone();
                *slot = Some(t);
                Ok(v)
            }
        }
    }

    /// One authenticated request: a 401 gets one retry with a new token
    /// (the old one expired or was revoked).
    pub fn authed(&self, method: &str, path: &str, body: Body<'_>) -> Result<Answer, Failure> {
        let token = self.token(false)?;
        let a = self.send(method, path, body, Some(&format!("Bearer {token}")))?;
        if a.status != 401 {
            return Ok(a);
        }
        let token = self.token(true)?;
        self.send(method, path, body, Some(&format!("Bearer {token}")))
    }

    /// An authenticated request that waits and retries when the GP answers
    /// 429 or 503 with a `Retry-After` of at most [`Client::max_wait`]
    /// (at most 5 times); the JSON of a 2xx answer, or the failure.
    pub fn call(&self, method: &str, path: &str, body: Body<'_>) -> Result<Value, Failure> {
        let mut tries = 0;
        loop {
            let a = self.authed(method, path, body)?;
            tries += 1;
            match (a.status, a.retry_after) {
                (429 | 503, Some(s)) if tries < 5 && Duration::from_secs(s) <= self.max_wait => {
                    eprintln!("glados: {}; retrying in {s} s", a.failure());
                    sleep(Duration::from_secs(s.max(1)));
                }
                _ => return a.json(),
            }
        }
    }

    /// An unauthenticated GET (e.g. `/v1/gp`).
    pub fn get_public(&self, path: &str) -> Result<Value, Failure> {
        self.send("GET", path, Body::None, None)?.json()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str) -> Answer {
        Answer {
            status,
            retry_after: None,
            replayed: false,
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn problems_become_title_and_detail() {
        let a = answer(
            400,
            r#"{"type":"/problems/invalid-sii","title":"Invalid SII","status":400,"detail":"the sii is not valid: x"}"#,
        );
        assert_eq!(
            a.failure(),
            Failure::Remote {
                status: 400,
                slug: "invalid-sii".into(),
                title: "Invalid SII".into(),
                detail: "the sii is not valid: x".into(),
            }
        );
        let oauth = answer(
            401,
            r#"{"error":"invalid_client","error_description":"bad secret"}"#,
        );
        assert_eq!(
            oauth.failure().to_string(),
            "invalid_client: bad secret (401)"
        );
        assert_eq!(oauth.failure().exit_code(), 3);
        let html = answer(502, "<h1>Bad gateway</h1>\u{1b}[2J");
        let f = html.failure();
        assert_eq!(f.exit_code(), 5);
        assert!(!f.to_string().contains('\u{1b}'), "{f}");
        assert!(answer(200, "{}").json().is_ok());
        assert!(answer(200, "nope").json().is_err());
    }
}
