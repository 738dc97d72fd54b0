//! Reading request bodies safely: capped in size (a 413 problem, never an
//! out-of-memory isolate), typed by Content-Type (415), parsed into 400s.

use crate::edge::http::error::{ApiError, ApiResult};
use crate::edge::http::request::Request;
use futures_util::StreamExt;
use serde::de::{Deserialize, DeserializeOwned, Deserializer};
use worker::Response;

/// Largest admin or token-endpoint body. Real ones are well under 4 KiB.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

fn too_large(cap: usize) -> ApiError {
    ApiError::client(
        413,
        "body-too-large",
        "Request body too large",
        format!("the request body exceeds {cap} bytes"),
    )
}

/// A refused or ignored body up to this size is still read (and dropped)
/// before the answer goes out: a client that is still sending when the
/// server answers and closes sees a connection reset instead of the problem
/// document. Larger bodies are refused at once; nothing is buffered either
/// way.
const DRAIN_LIMIT: u64 = 1024 * 1024;

/// Reads the whole body, refusing more than `cap` bytes: first by the
/// declared Content-Length, then while streaming (a chunked body declares
/// nothing), so at most `cap` bytes are ever buffered. No body reads as empty.
pub async fn read_capped(req: &mut Request, cap: usize) -> ApiResult<Vec<u8>> {
    if let Ok(Some(len)) = req.headers().get("Content-Length") {
        match len.trim().parse::<u64>() {
            // Left unread: finish_request drains it (up to DRAIN_LIMIT).
            Ok(n) if n > cap as u64 => return Err(too_large(cap)),
            // The runtime frames the body by the declared length, so the
            // whole of it is at most `cap`: one read, without the stream
            // reader, whose per-chunk promises and lock release cost more
            // than the rest of a small request (README, Benchmarks).
            Ok(_) => {
                let bytes = req
                    .bytes()
                    .await
                    .map_err(|e| unreadable("the request body", e))?;
                if bytes.len() > cap {
                    return Err(too_large(cap));
                }
                return Ok(bytes);
            }
            Err(_) => {
                return Err(ApiError::client(
                    400,
                    "invalid-content-length",
                    "Invalid Content-Length",
                    format!("Content-Length {len:?} is not a number"),
                ))
            }
        }
    }
    let Ok(mut stream) = req.stream() else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| unreadable("the request body", e))?;
        if out.len() + chunk.len() > cap {
            let mut seen = (out.len() + chunk.len()) as u64;
            while seen <= DRAIN_LIMIT {
                match stream.next().await {
                    Some(Ok(more)) => seen += more.len() as u64,
                    _ => break,
                }
            }
            return Err(too_large(cap));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// The 400 for a body the client stopped sending or sent broken.
pub fn unreadable(what: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::client(
        400,
        "body-unreadable",
        "Request body unreadable",
        format!("{what} could not be read: {e}"),
    )
}

/// Called with every response before it goes out: a request body the
/// handler left unread (a 401/404/405 refused early, a GET that was sent a
/// body) is read and dropped up to [`DRAIN_LIMIT`], because workerd resets
/// the connection of a response that leaves the body unread, and a
/// keep-alive client that is still sending or already reusing it then sees
/// a reset instead of its answer. A larger body is left unread and the
/// runtime closes the connection: that is its decision alone (a
/// `Connection: close` from the worker is dropped as hop-by-hop).
pub async fn finish_request(raw: &web_sys::Request, resp: Response) -> Response {
    // Read by the handler (all of it, or up to the drain limit): asked
    // first, as it is the usual case and `body` makes a stream object.
    if raw.body_used() {
        return resp;
    }
    let Some(body) = raw.body() else {
        return resp;
    };
    if body.locked() {
        return resp;
    }
    let declared = raw
        .headers()
        .get("Content-Length")
        .ok()
        .flatten()
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_none_or(|n| n <= DRAIN_LIMIT) {
        drain_up_to(Request::from(Clone::clone(raw)), DRAIN_LIMIT).await;
    }
    resp
}

/// Reads and drops a body, stopping after `limit` bytes (a chunked body
/// declares no length) or at a read error.
async fn drain_up_to(mut req: Request, limit: u64) {
    let Ok(mut stream) = req.stream() else {
        return;
    };
    let mut seen = 0u64;
    while let Some(Ok(chunk)) = stream.next().await {
        seen += chunk.len() as u64;
        if seen > limit {
            return;
        }
    }
}

/// The media type of the request, lowercased, without parameters.
pub fn media_type(req: &Request) -> Option<String> {
    let ct = req.headers().get("Content-Type").ok().flatten()?;
    let mt = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    (!mt.is_empty()).then_some(mt)
}

/// Parses a JSON body. An empty body with no Content-Type reads as `{}`
/// when `empty_ok` (for action endpoints whose body is optional).
pub async fn read_json<T: DeserializeOwned>(req: &mut Request, empty_ok: bool) -> ApiResult<T> {
    read_json_body(req, empty_ok, false).await
}

/// [`read_json`] for a body type that reads a top-level array itself, to
/// refuse it with a specific problem (`POST /v1/query`: a list of SIIs is
/// `one-sii-per-query`, not just invalid JSON).
pub async fn read_json_allow_array<T: DeserializeOwned>(req: &mut Request) -> ApiResult<T> {
    read_json_body(req, false, true).await
}

async fn read_json_body<T: DeserializeOwned>(
    req: &mut Request,
    empty_ok: bool,
    allow_array: bool,
) -> ApiResult<T> {
    let mt = media_type(req);
    let bytes = read_capped(req, MAX_BODY_BYTES).await?;
    if bytes.is_empty() && empty_ok && mt.is_none() {
        return parse_json(b"{}", false);
    }
    if mt.as_deref() != Some("application/json") {
        return Err(ApiError::client(
            415,
            "unsupported-media-type",
            "Unsupported Media Type",
            format!(
                "the body must be application/json, got {}",
                mt.as_deref().unwrap_or("no Content-Type")
            ),
        )
        .with_header("Accept-Post", "application/json"));
    }
    parse_json(&bytes, allow_array)
}

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8], allow_array: bool) -> ApiResult<T> {
    // Every JSON body of the API is an object; serde would also fill a
    // struct from an array (`[]` read as a PATCH changing nothing).
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') && !(allow_array && first == Some(&b'[')) {
        return Err(ApiError::client(
            400,
            "invalid-json",
            "Invalid JSON body",
            "the JSON body must be an object",
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::client(
            400,
            "invalid-json",
            "Invalid JSON body",
            format!("the JSON body was not understood: {e}"),
        )
    })
}

/// For an optional member of a request body: absent reads as `None`, but an
/// explicit `null` is a 400 like any other wrong type (the API document types
/// these members without null, and a `null` that silently meant "unchanged"
/// would surprise a client that meant "remove"). Use with
/// `#[serde(default, deserialize_with = "no_null")]`.
pub fn no_null<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}
