//! The one place where errors become HTTP responses.
//!
//! Every failure a client can cause is an RFC 9457 problem document
//! (`application/problem+json`) with a stable `type`; internal failures are
//! logged with their cause and answered with a generic 500/503 so nothing
//! about the GP's internals leaks to callers.

use crate::core::Problem;
use serde_json::{json, Map, Value};
use worker::{Headers, Response, ResponseBuilder};

/// Prefix of every problem `type`. Relative, so it resolves against the GP
/// that answered: `GET /problems/<slug>` explains each type.
pub const PROBLEM_BASE: &str = "/problems/";

/// Everything a handler can fail with.
#[derive(Debug)]
pub enum ApiError {
    /// A client-caused problem (4xx).
    Client {
        status: u16,
        slug: &'static str,
        title: &'static str,
        detail: String,
        /// Extra members of the problem document (RFC 9457 §3.2).
        extra: Map<String, Value>,
        headers: Vec<(&'static str, String)>,
    },
    /// An OAuth 2.0 token-endpoint error, which RFC 6749 §5.2 shapes as
    /// `{"error", "error_description"}` JSON rather than a problem document
    /// (OAuth clients parse exactly that).
    OAuth {
        status: u16,
        /// RFC 6749 §5.2 error code, e.g. `invalid_client`.
        error: &'static str,
        description: String,
        headers: Vec<(&'static str, String)>,
    },
    /// A bug or misconfiguration: logged in full, reported generically.
    Internal(String),
}

/// Shorthand for handler results.
pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    /// A client problem with no extra members.
    pub fn client(
        status: u16,
        slug: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        ApiError::Client {
            status,
            slug,
            title,
            detail: detail.into(),
            extra: Map::new(),
            headers: Vec::new(),
        }
    }

    /// Adds a response header to a client problem (e.g. `Allow`, `Retry-After`).
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        if let ApiError::Client { headers, .. } | ApiError::OAuth { headers, .. } = &mut self {
            headers.push((name, value.into()));
        }
        self
    }

    /// An RFC 6749 §5.2 error response ("The authorization server responds
    /// with an HTTP 400 (Bad Request) status code (unless specified
    /// otherwise)").
    pub fn oauth(status: u16, error: &'static str, description: impl Into<String>) -> Self {
        ApiError::OAuth {
            status,
            error,
            description: description.into(),
            headers: Vec::new(),
        }
    }

    pub fn not_found(path: &str) -> Self {
        ApiError::client(
            404,
            "not-found",
            "Not Found",
            format!("no resource at {path}; see GET /openapi.json for the API"),
        )
    }

    pub fn method_not_allowed(method: &str, path: &str, allow: &[&str]) -> Self {
        let allow = allow.join(", ");
        ApiError::client(
            405,
            "method-not-allowed",
            "Method Not Allowed",
            format!("{method} is not allowed on {path}; allowed: {allow}"),
        )
        .with_header("Allow", allow)
    }

    /// Turns the error into its response; `instance` is the request path.
    pub fn into_response(self, instance: &str) -> worker::Result<Response> {
        let rendered = self.render(instance);
        let headers = Headers::new();
        for (k, v) in &rendered.headers {
            headers.set(k, v)?;
        }
        Ok(Response::ok(rendered.body)?
            .with_status(rendered.status)
            .with_headers(headers))
    }

    /// The error's response, whatever happens: should the runtime refuse
    /// one of its headers, a 500 problem document without them (logged),
    /// not an exception the client would see as a bare 500.
    pub fn respond(self, instance: &str) -> Response {
        match self.into_response(instance) {
            Ok(resp) => resp,
            Err(e) => {
                worker::console_error!("{instance}: the problem's response was refused: {e}");
                let doc = ApiError::Internal(format!("response refused: {e}")).render(instance);
                let headers = Headers::new();
                let _ = headers.set("Content-Type", "application/problem+json");
                ResponseBuilder::new()
                    .with_status(doc.status)
                    .with_headers(headers)
                    .fixed(doc.body.into_bytes())
            }
        }
    }

    /// The error's status, body and headers, as [`ApiError::into_response`]
    /// sends them; a Durable Object answering by RPC sends the same status
    /// and body without building a response.
    pub fn render(self, instance: &str) -> Rendered {
        match self {
            ApiError::Client {
                status,
                slug,
                title,
                detail,
                extra,
                headers,
            } => {
                let mut doc = Map::new();
                doc.insert("type".into(), json!(format!("{PROBLEM_BASE}{slug}")));
                doc.insert("title".into(), json!(title));
                doc.insert("status".into(), json!(status));
                doc.insert("detail".into(), json!(detail));
                doc.insert("instance".into(), json!(instance));
                for (k, v) in extra {
                    doc.entry(k).or_insert(v);
                }
                Rendered::problem(status, &Value::Object(doc), headers)
            }
            ApiError::OAuth {
                status,
                error,
                description,
                headers,
            } => {
                let body = json!({ "error": error, "error_description": description });
                // RFC 6749 §5.1/§5.2: "Cache-Control: no-store", "Pragma: no-cache".
                let mut all = vec![
                    ("Content-Type", "application/json".to_owned()),
                    ("Cache-Control", "no-store".to_owned()),
                    ("Pragma", "no-cache".to_owned()),
                ];
                all.extend(headers);
                Rendered {
                    status,
                    body: body.to_string(),
                    headers: all,
                }
            }
            ApiError::Internal(cause) => {
                worker::console_error!("500 at {instance}: {cause}");
                let doc = json!({
                    "type": format!("{PROBLEM_BASE}internal-error"),
                    "title": "Internal Server Error",
                    "status": 500,
                    "detail": "the GP failed to handle this request; the operator has the details in the logs",
                    "instance": instance,
                });
                Rendered::problem(500, &doc, Vec::new())
            }
        }
    }
}

/// An error as it goes out: status, body and headers in order.
#[derive(Debug)]
pub struct Rendered {
    pub status: u16,
    pub body: String,
    pub headers: Vec<(&'static str, String)>,
}

impl Rendered {
    /// A problem document with its content type and `no-store`, then any
    /// extra headers.
    fn problem(status: u16, doc: &Value, extra: Vec<(&'static str, String)>) -> Rendered {
        let mut headers = vec![
            ("Content-Type", "application/problem+json".to_owned()),
            ("Cache-Control", "no-store".to_owned()),
        ];
        headers.extend(extra);
        Rendered {
            status,
            body: doc.to_string(),
            headers,
        }
    }
}

/// RFC 9457 §3.1.5: `instance` names "the specific occurrence of the
/// problem" — the client's request. Problems made inside a Durable Object
/// and passed through by a handler carry the object's internal path, so the
/// fetch handler rewrites `instance` of every outgoing problem here. Only
/// error responses are read; anything unreadable goes out as it was.
pub async fn own_instance(mut resp: Response, instance: &str) -> Response {
    let is_problem = resp.status_code() >= 400
        && resp
            .headers()
            .get("Content-Type")
            .ok()
            .flatten()
            .is_some_and(|t| t.starts_with("application/problem+json"));
    if !is_problem {
        return resp;
    }
    let (status, headers) = (resp.status_code(), resp.headers().clone());
    let text = match resp.text().await {
        Ok(t) => t,
        Err(_) => return resp,
    };
    let rebuilt = match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(mut doc)) => {
            doc.insert("instance".into(), json!(instance));
            Value::Object(doc).to_string()
        }
        _ => text,
    };
    match Response::ok(rebuilt) {
        Ok(r) => r.with_status(status).with_headers(headers),
        Err(_) => resp,
    }
}

impl<P: Problem> From<P> for ApiError {
    fn from(p: P) -> Self {
        ApiError::client(p.status(), p.slug(), p.title(), p.to_string())
    }
}

/// `?`-friendly conversion of runtime errors into internal errors.
pub trait OrInternal<T> {
    fn internal(self, ctx: &str) -> ApiResult<T>;
}

impl<T> OrInternal<T> for worker::Result<T> {
    fn internal(self, ctx: &str) -> ApiResult<T> {
        self.map_err(|e| ApiError::Internal(format!("{ctx}: {e}")))
    }
}
