//! Signed GP-to-GP requests going out (RFC 9421, Ed25519; draft §11.1).

use crate::core::encoding::{b64_decode, b64url_decode, b64url_encode};
use crate::core::httpsig::{self, PlainRequest};
use crate::edge::config::{per_env, GpConfig};
use crate::edge::http::error::{ApiError, ApiResult};
use std::rc::Rc;
use worker::{AbortSignal, Env, Fetch, Headers, Method, Request, RequestInit};

/// Decodes a 32-byte key given in base64 or base64url.
pub fn decode_key(text: &str) -> Option<[u8; 32]> {
    let t = text.trim();
    let bytes = b64_decode(t).or_else(|_| b64url_decode(t)).ok()?;
    bytes.try_into().ok()
}

/// This GP's signing identity: its GP id (the `keyid`) and Ed25519 seed.
pub struct Signer {
    pub keyid: String,
    seed: [u8; 32],
}

impl Signer {
    /// This GP's signer, read once per isolate ([`per_env`]).
    pub fn from_env(env: &Env) -> ApiResult<Rc<Signer>> {
        per_env(env, Signer::read)
    }

    /// Reads `GP_ID` and the secret `GP_SIGNING_KEY` (32-byte seed, base64).
    fn read(env: &Env) -> ApiResult<Signer> {
        let keyid = GpConfig::cached(env)?.id.clone();
        let text = crate::edge::config::secret(env, "GP_SIGNING_KEY").ok_or_else(|| {
            ApiError::Internal(
                "secret GP_SIGNING_KEY (Ed25519 seed, base64) is not set: peers cannot be called"
                    .into(),
            )
        })?;
        let seed = decode_key(&text).ok_or_else(|| {
            ApiError::Internal("secret GP_SIGNING_KEY is not 32 bytes of base64".into())
        })?;
        Ok(Signer { keyid, seed })
    }

    /// The Ed25519 public key (base64) peers must configure for this GP.
    pub fn public_key_b64(&self) -> String {
        crate::core::encoding::b64_encode(&httpsig::public_key(&self.seed))
    }
}

/// What a peer answered.
pub struct PeerResponse {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Most bytes read of most peers' answers: query answers, claim and
/// strike receipts and subscription answers are a few KiB.
pub const MAX_PEER_ANSWER: usize = 1 << 20;

/// Sends one signed request to a peer with a timeout and reads at most
/// `max_body` bytes of the answer, as it streams: the read stops (the
/// stream cancelled) as soon as it would pass the cap, so a broken or
/// hostile peer cannot make this isolate buffer more (issue 14 item 10; an
/// isolate has 128 MB). Errors are strings for logs and "incomplete"
/// reports: a failing peer is never our 5xx.
#[allow(clippy::too_many_arguments)]
pub async fn signed_fetch(
    signer: &Signer,
    method: Method,
    url: &str,
    body: Option<(&[u8], &str)>,
    extra: &[(&str, &str)],
    timeout_ms: u32,
    max_body: usize,
) -> Result<PeerResponse, String> {
    let parsed = worker::Url::parse(url).map_err(|e| format!("bad peer url {url}: {e}"))?;
    let host = parsed.host_str().unwrap_or("").to_ascii_lowercase();
    let authority = match parsed.port() {
        Some(p) => format!("{host}:{p}"),
        None => host,
    };
    let mut msg = PlainRequest {
        method: method.to_string(),
        authority,
        path: parsed.path().to_string(),
        query: parsed.query().map(str::to_string),
        headers: Vec::new(),
    };
    let headers = Headers::new();
    if let Some((bytes, ctype)) = body {
        let digest = httpsig::content_digest(bytes);
        headers
            .set("Content-Type", ctype)
            .map_err(|e| e.to_string())?;
        headers
            .set("Content-Digest", &digest)
            .map_err(|e| e.to_string())?;
        msg.headers.push(("content-digest".into(), digest));
    }
    for (k, v) in extra {
        headers.set(k, v).map_err(|e| e.to_string())?;
    }
    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce).map_err(|e| format!("getrandom: {e}"))?;
    let created = crate::edge::clock::now_ms() / 1000;
    let signed = httpsig::sign(
        &msg,
        &signer.seed,
        &signer.keyid,
        created,
        &b64url_encode(&nonce),
    )
    .map_err(|e| format!("signing: {e}"))?;
    headers
        .set("Signature-Input", &signed.signature_input)
        .map_err(|e| e.to_string())?;
    headers
        .set("Signature", &signed.signature)
        .map_err(|e| e.to_string())?;
    let mut init = RequestInit::new();
    init.with_method(method).with_headers(headers);
    if let Some((bytes, _)) = body {
        init.with_body(Some(js_sys::Uint8Array::from(bytes).into()));
    }
    let req = Request::new_with_init(url, &init).map_err(|e| format!("request {url}: {e}"))?;
    let signal: AbortSignal = web_sys::AbortSignal::timeout_with_u32(timeout_ms).into();
    let mut resp = Fetch::Request(req)
        .send_with_signal(&signal)
        .await
        .map_err(|e| format!("fetch {url}: {e}"))?;
    let status = resp.status_code();
    let body = read_capped_body(&mut resp, max_body)
        .await
        .map_err(|e| format!("reading {url}: {e}"))?;
    Ok(PeerResponse { status, body })
}

/// A response body of at most `max` bytes, read as it streams: refused by
/// its declared `Content-Length` before any byte is read, else when the
/// bytes read pass `max` (the rest is never read: the stream is
/// cancelled when dropped).
pub async fn read_capped_body(resp: &mut worker::Response, max: usize) -> Result<Vec<u8>, String> {
    use futures_util::StreamExt;
    let declared = resp
        .headers()
        .get("Content-Length")
        .ok()
        .flatten()
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(format!(
            "the answer declares {} bytes, more than the {max} accepted",
            declared.unwrap_or(0)
        ));
    }
    let Ok(mut stream) = resp.stream() else {
        // No body.
        return Ok(Vec::new());
    };
    let mut out = Vec::with_capacity(declared.map_or(0, |n| n as usize));
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        if out.len() + chunk.len() > max {
            return Err(format!(
                "the answer is longer than the {max} bytes accepted"
            ));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}
