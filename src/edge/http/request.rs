//! The incoming request as the handlers see it: the runtime's request,
//! its method and path, nothing read that a handler may not need.
//!
//! workers-rs's `Request` reads `request.cf` for every request before the
//! handler runs (~40 µs per request in a V8 profile of gp-a; README,
//! Benchmarks), though only AP authentication needs it, for the client
//! certificate, and reads it itself (`auth::ap::client_cert`). This type
//! offers the part of workers-rs's API the handlers use, with the same
//! names and results, and reads `cf` never (ARCHITECTURE.md, "The entry").
use js_sys::futures::JsFuture;
use worker::{ByteStream, Headers, Method, Url};

/// An incoming HTTP request.
pub struct Request {
    inner: web_sys::Request,
    /// The method as sent (workers-rs's `Method` reads any method it has
    /// no variant for as GET; the route table refuses those by this).
    sent_method: String,
    path: String,
    headers: Headers,
}

impl From<web_sys::Request> for Request {
    fn from(inner: web_sys::Request) -> Self {
        let sent_method = inner.method();
        let path = path_from_url(&inner.url());
        let headers = Headers(inner.headers());
        Request {
            inner,
            sent_method,
            path,
            headers,
        }
    }
}

impl Request {
    /// The method, as workers-rs names it.
    pub fn method(&self) -> Method {
        Method::from(self.sent_method.clone())
    }

    /// The method exactly as the client sent it.
    pub fn sent_method(&self) -> &str {
        &self.sent_method
    }

    /// The URL path, as the runtime serialized it (no query, no fragment).
    pub fn path(&self) -> String {
        self.path.clone()
    }

    /// The request's headers (the runtime's object; reads cross to JS).
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// The whole URL, parsed; only routes that read the query use it.
    pub fn url(&self) -> worker::Result<Url> {
        let url = self.inner.url();
        url.parse()
            .map_err(|e| worker::Error::RustError(format!("failed to parse Url from {e}: {url}")))
    }

    /// The runtime's request.
    pub fn inner(&self) -> &web_sys::Request {
        &self.inner
    }

    /// The body, read whole in one `arrayBuffer()` (no stream reader).
    pub async fn bytes(&mut self) -> worker::Result<Vec<u8>> {
        let buffer = JsFuture::from(self.inner.array_buffer()?).await?;
        Ok(js_sys::Uint8Array::new(&buffer).to_vec())
    }

    /// The body as a stream of chunks; an error when there is none or it
    /// was read (as workers-rs's).
    pub fn stream(&mut self) -> worker::Result<ByteStream> {
        if self.inner.body_used() {
            return Err(worker::Error::BodyUsed);
        }
        let body = self
            .inner
            .body()
            .ok_or_else(|| worker::Error::RustError("no body for request".into()))?;
        Ok(ByteStream::from(body))
    }
}

/// The path of an already-serialized WHATWG URL, as `Request.url` gives
/// it, without reparsing: special-scheme serialization never emits an empty
/// path, so the first `/` after the host begins the path, within which `?`
/// and `#` end it (as workers-rs 0.8.7 cuts it).
fn path_from_url(url: &str) -> String {
    let Some(host_start) = url.find("://").map(|i| i + 3) else {
        return if url.starts_with('/') {
            url.to_string()
        } else {
            format!("/{url}")
        };
    };
    match url[host_start..].find('/') {
        Some(i) => {
            let path = &url[host_start + i..];
            path[..path.find(['?', '#']).unwrap_or(path.len())].to_string()
        }
        None => "/".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::path_from_url;

    #[test]
    fn the_path_is_cut_as_workers_rs_cuts_it() {
        for (url, path) in [
            ("https://gp.example/", "/"),
            ("https://gp.example", "/"),
            ("https://gp.example/v1/query", "/v1/query"),
            ("https://gp.example/v1/query?x=1#f", "/v1/query"),
            (
                "http://127.0.0.1:8787/peer/v1/filter#a?b",
                "/peer/v1/filter",
            ),
            ("/relative", "/relative"),
            ("relative", "/relative"),
        ] {
            assert_eq!(path_from_url(url), path, "{url}");
        }
    }
}
