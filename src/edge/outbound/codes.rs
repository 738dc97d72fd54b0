//! Sending verification codes: SMS through a Twilio-compatible Messages
//! API, email through the SendGrid v3 Mail Send API.
//!
//! draft §8.2: "Glados will then construct a short lived code, and either
//! email or SMS it to the user." The base URLs are vars (`TWILIO_BASE_URL`,
//! `SENDGRID_BASE_URL`, defaulting to the real providers) and the
//! credentials secrets (`TWILIO_ACCOUNT_SID`, `TWILIO_AUTH_TOKEN`,
//! `TWILIO_FROM`, `SENDGRID_API_KEY`, `EMAIL_FROM`), so a local stand-in
//! receives byte for byte what the real provider would.
//!
//! Any failure (unreachable, timeout, non-2xx) is a retryable 503 problem
//! with `Retry-After`; the caller undoes its reservation, so nothing is
//! left half-made.

use crate::core::creation::CodeMessage;
use crate::core::encoding::b64_encode;
use crate::core::sii::{Sii, SiiKind};
use crate::edge::config::{required_secret, GpConfig};
use crate::edge::http::error::{ApiError, ApiResult};
use serde_json::json;
use worker::{AbortSignal, Env, Fetch, Headers, Method, Request, RequestInit};

/// A provider slower than this counts as failed (the AP is waiting).
const SEND_TIMEOUT_MS: u32 = 5_000;
/// What the AP is told to wait before retrying.
const RETRY_AFTER_S: u32 = 5;

/// Which channel an SII is reached on.
pub fn channel(sii: &Sii) -> &'static str {
    match sii.kind() {
        SiiKind::Email => "email",
        _ => "sms",
    }
}

/// The retryable problem every delivery failure becomes. The cause goes to
/// the log only, and never the recipient (SECURITY.md: SIIs are not logged).
fn unavailable(cause: String) -> ApiError {
    worker::console_error!("code delivery failed: {cause}");
    ApiError::client(
        503,
        "code-delivery-failed",
        "Code delivery failed",
        format!(
            "the verification code could not be sent right now; nothing was stored, retry in {RETRY_AFTER_S} s"
        ),
    )
    .with_header("Retry-After", RETRY_AFTER_S.to_string())
}

/// Sends `msg` to `sii` by SMS or email.
pub async fn send(env: &Env, cfg: &GpConfig, sii: &Sii, msg: &CodeMessage) -> ApiResult<()> {
    match sii.kind() {
        SiiKind::Email => send_email(env, &cfg.sendgrid_base_url, sii.as_str(), msg).await,
        _ => send_sms(env, &cfg.twilio_base_url, sii.as_str(), msg).await,
    }
}

async fn send_sms(env: &Env, base: &str, to: &str, msg: &CodeMessage) -> ApiResult<()> {
    let sid = required_secret(env, "TWILIO_ACCOUNT_SID")?;
    let token = required_secret(env, "TWILIO_AUTH_TOKEN")?;
    let from = required_secret(env, "TWILIO_FROM")?;
    let url = format!(
        "{}/2010-04-01/Accounts/{}/Messages.json",
        base.trim_end_matches('/'),
        form_encode(&sid)
    );
    let body = format!(
        "To={}&From={}&Body={}",
        form_encode(to),
        form_encode(&from),
        form_encode(&msg.sms)
    );
    let headers = Headers::new();
    let auth = format!("Basic {}", b64_encode(format!("{sid}:{token}").as_bytes()));
    headers
        .set("Authorization", &auth)
        .and_then(|_| headers.set("Content-Type", "application/x-www-form-urlencoded"))
        .map_err(|e| ApiError::Internal(format!("headers: {e}")))?;
    post(&url, headers, body).await
}

async fn send_email(env: &Env, base: &str, to: &str, msg: &CodeMessage) -> ApiResult<()> {
    let key = required_secret(env, "SENDGRID_API_KEY")?;
    let from = required_secret(env, "EMAIL_FROM")?;
    let url = format!("{}/v3/mail/send", base.trim_end_matches('/'));
    let body = json!({
        "personalizations": [{ "to": [{ "email": to }] }],
        "from": { "email": from },
        "subject": msg.email_subject,
        "content": [{ "type": "text/plain", "value": msg.email_text }],
        // Codes must not be rewritten into tracking links.
        "tracking_settings": {
            "click_tracking": { "enable": false },
            "open_tracking": { "enable": false }
        }
    })
    .to_string();
    let headers = Headers::new();
    headers
        .set("Authorization", &format!("Bearer {key}"))
        .and_then(|_| headers.set("Content-Type", "application/json"))
        .map_err(|e| ApiError::Internal(format!("headers: {e}")))?;
    post(&url, headers, body).await
}

async fn post(url: &str, headers: Headers, body: String) -> ApiResult<()> {
    let mut init = RequestInit::new();
    init.with_method(Method::Post)
        .with_headers(headers)
        .with_body(Some(wasm_bindgen::JsValue::from_str(&body)));
    let req = Request::new_with_init(url, &init)
        .map_err(|e| ApiError::Internal(format!("code delivery url {url}: {e}")))?;
    let signal: AbortSignal = web_sys::AbortSignal::timeout_with_u32(SEND_TIMEOUT_MS).into();
    let mut resp = Fetch::Request(req)
        .send_with_signal(&signal)
        .await
        .map_err(|e| unavailable(format!("POST {url}: {e}")))?;
    let status = resp.status_code();
    if (200..300).contains(&status) {
        return Ok(());
    }
    // Providers quote the recipient in their messages ("The 'To' number
    // +1… is not a valid phone number"): only the status and their error
    // code are logged.
    let body = resp.bytes().await.unwrap_or_default();
    let code = provider_error_code(&body);
    Err(unavailable(format!(
        "POST {url} answered {status}, provider error code {}",
        code.as_deref().unwrap_or("none")
    )))
}

/// The provider's error code from its error body, never its message:
/// Twilio's numeric `code`; for SendGrid, which has none, the `field`s its
/// errors name (`personalizations.0.to.0.email`), which hold no value.
fn provider_error_code(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Twilio {
        code: u32,
    }
    #[derive(serde::Deserialize)]
    struct SendGrid {
        errors: Vec<SendGridError>,
    }
    #[derive(serde::Deserialize)]
    struct SendGridError {
        field: Option<String>,
    }
    if let Ok(t) = serde_json::from_slice::<Twilio>(body) {
        return Some(t.code.to_string());
    }
    let fields: Vec<String> = serde_json::from_slice::<SendGrid>(body)
        .ok()?
        .errors
        .into_iter()
        .filter_map(|e| e.field)
        // A field name is a path of identifiers and indices, not a value.
        .filter(|f| {
            f.len() <= 64
                && f.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_')
        })
        .collect();
    Some(if fields.is_empty() {
        "sendgrid".into()
    } else {
        format!("sendgrid {}", fields.join(","))
    })
}

/// `application/x-www-form-urlencoded` encoding of one value (and of the
/// account SID in the path, where it is harmless for Twilio's `AC…` ids).
fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' => {
                out.push(char::from(b))
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}
