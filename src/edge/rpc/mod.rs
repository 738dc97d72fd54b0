//! Calling Durable Objects: the one place that encodes an operation, sends
//! it to an object, decodes the reply and names what went wrong.
//!
//! Each object has a module here with its messages and a typed client
//! (`Shard::of(env, cfg, &sii).lookup(…)`, `ApClient::new(env, ap).lease(…)`),
//! so callers never build messages or match replies themselves. Objects
//! talk to each other only through these clients, never by importing one
//! another (ARCHITECTURE.md, "Layers").
//!
//! Messages are JSON read with serde_json on both sides: `Request::json`
//! goes through JSON.parse, which turns a u64 above 2^53 (a peer's `at_ms`,
//! a filter cursor) into a float that no longer reads as u64 (found by
//! schemathesis as a 500).

pub mod ap;
pub mod filter;
pub mod nonces;
pub mod registry;
pub mod routing;
pub mod shard;

use crate::edge::config::per_env;
use crate::edge::http::error::{ApiError, ApiResult};
use crate::edge::stats;
use js_sys::futures::JsFuture;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::fmt;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use worker::{Env, Method, ObjectNamespace, Request, RequestInit, Response};

/// Why a call to a Durable Object failed. Every variant is this GP's own
/// fault (a missing binding, an object that broke, a worker and an object
/// of different deploys disagreeing), so all of them become a 500 problem
/// ([`ApiError::Internal`]); client refusals travel inside the replies.
#[derive(Debug)]
pub enum RpcError {
    /// The binding is missing from the environment, or no stub was had.
    Binding { object: String, detail: String },
    /// The operation could not be encoded.
    Encode { object: String, detail: String },
    /// The request did not reach the object or its answer did not return.
    Transport { object: String, detail: String },
    /// The object answered with a non-200 status (its problem document).
    Status {
        object: String,
        status: u16,
        body: String,
    },
    /// The reply did not decode as the object's reply type.
    Decode { object: String, detail: String },
    /// The reply decoded, but as a variant this operation never returns.
    Unexpected {
        object: String,
        op: &'static str,
        got: String,
    },
    /// A fault the local-only test route `POST /__debug/faults` injected.
    Injected { object: String, op: String },
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RpcError::Binding { object, detail } => write!(f, "{object}: no object: {detail}"),
            RpcError::Encode { object, detail } => write!(f, "{object}: encode: {detail}"),
            RpcError::Transport { object, detail } => write!(f, "{object}: fetch: {detail}"),
            RpcError::Status {
                object,
                status,
                body,
            } => write!(f, "{object} answered {status}: {body}"),
            RpcError::Decode { object, detail } => write!(f, "{object} reply: {detail}"),
            RpcError::Unexpected { object, op, got } => {
                write!(f, "{object} answered {op} with an unexpected reply: {got}")
            }
            RpcError::Injected { object, op } => write!(f, "{object}: {op}: injected fault"),
        }
    }
}

impl From<RpcError> for ApiError {
    fn from(e: RpcError) -> Self {
        ApiError::Internal(e.to_string())
    }
}

/// One Durable Object: its binding and its name.
#[derive(Debug, Clone)]
pub struct Object {
    binding: &'static str,
    name: String,
}

impl Object {
    pub fn new(binding: &'static str, name: impl Into<String>) -> Self {
        Object {
            binding,
            name: name.into(),
        }
    }

    /// `BINDING/name`, for errors and logs.
    pub fn label(&self) -> String {
        format!("{}/{}", self.binding, self.name)
    }

    fn stub(&self, env: &Env) -> Result<worker::Stub, RpcError> {
        let fail = |e: worker::Error| RpcError::Binding {
            object: self.label(),
            detail: e.to_string(),
        };
        namespace(env, self.binding)
            .map_err(fail)?
            .id_from_name(&self.name)
            .map_err(fail)?
            .get_stub()
            .map_err(fail)
    }

    /// Sends a raw request (`path_and_query` inside the object) and returns
    /// the object's response as it is, problems included: for objects that
    /// serve binary bodies (the filter object's snapshots).
    pub async fn request(
        &self,
        env: &Env,
        method: Method,
        path_and_query: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Response, RpcError> {
        let mut init = RequestInit::new();
        init.with_method(method);
        if let Some(b) = body {
            init.with_body(Some(js_sys::Uint8Array::from(b.as_slice()).into()));
        }
        let transport = |e: worker::Error| RpcError::Transport {
            object: self.label(),
            detail: e.to_string(),
        };
        let req = Request::new_with_init(&format!("https://object{path_and_query}"), &init)
            .map_err(transport)?;
        stats::count(|s| s.do_requests += 1);
        self.stub(env)?
            .fetch_with_request(req)
            .await
            .map_err(transport)
    }

    /// Sends one JSON operation and decodes the JSON reply; a non-200
    /// answer is an error. Every query makes one of these, so it talks to
    /// the stub in JS terms: the operation goes as a string body, the
    /// reply comes back with `Response.text()`; no workers-rs `Request`
    /// (which reads back URL, method, headers and `cf`) and no body stream.
    pub async fn call<O: Serialize, R: DeserializeOwned>(
        &self,
        env: &Env,
        op: &O,
    ) -> Result<R, RpcError> {
        let body = serde_json::to_string(op).map_err(|e| RpcError::Encode {
            object: self.label(),
            detail: e.to_string(),
        })?;
        let fault = injected(self.binding, body.as_bytes());
        if fault == Some(FaultMode::Lost) {
            return Err(self.injected(body.as_bytes()));
        }
        let transport = |e: JsValue| RpcError::Transport {
            object: self.label(),
            detail: js_detail(&e),
        };
        let init = web_sys::RequestInit::new();
        init.set_method("POST");
        init.set_body(&JsValue::from_str(&body));
        let stub: RawStub = self.stub(env)?.into_rpc();
        let promise = stub
            .fetch_with_init("https://object/op", &init)
            .map_err(transport)?;
        stats::count(|s| s.do_requests += 1);
        let resp: web_sys::Response = JsFuture::from(promise)
            .await
            .map_err(transport)?
            .dyn_into()
            .map_err(transport)?;
        let text = JsFuture::from(resp.text().map_err(transport)?)
            .await
            .map_err(transport)?
            .as_string()
            .unwrap_or_default();
        let reply = decode_text(&self.label(), resp.status(), text);
        if fault == Some(FaultMode::LostReply) {
            return Err(self.injected(body.as_bytes()));
        }
        reply
    }

    fn injected(&self, body: &[u8]) -> RpcError {
        RpcError::Injected {
            object: self.label(),
            op: op_name(body),
        }
    }
}

// ------------------------------------------------------- fault injection

/// How an injected fault fails a call: the request never reaches the
/// object (`Lost`), or the object applies it and its answer is lost
/// (`LostReply`), as when a connection drops at the wrong moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultMode {
    Lost,
    LostReply,
}

/// A fault for `times` calls of operation `op` to objects of `binding`,
/// made from this isolate, after letting the next `after` through (`POST
/// /__debug/faults`, local runs only). Nothing sets one on a deployed GP:
/// the list stays empty and each call checks only that.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fault {
    pub binding: String,
    pub op: String,
    pub mode: FaultMode,
    pub times: u32,
    #[serde(default)]
    pub after: u32,
}

thread_local! {
    static FAULTS: RefCell<Vec<Fault>> = const { RefCell::new(Vec::new()) };
}

/// Arms a fault in this isolate.
pub fn inject(fault: Fault) {
    FAULTS.with(|f| f.borrow_mut().push(fault));
}

/// The `op` tag of an encoded operation.
fn op_name(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Tag {
        op: Option<String>,
    }
    serde_json::from_slice::<Tag>(body)
        .ok()
        .and_then(|t| t.op)
        .unwrap_or_default()
}

/// Takes one armed fault matching this call, if any.
fn injected(binding: &str, body: &[u8]) -> Option<FaultMode> {
    if FAULTS.with(|f| f.borrow().is_empty()) {
        return None;
    }
    let op = op_name(body);
    FAULTS.with(|f| {
        let mut f = f.borrow_mut();
        let i = f
            .iter()
            .position(|x| x.binding == binding && x.op == op && x.times > 0)?;
        if f[i].after > 0 {
            f[i].after -= 1;
            return None;
        }
        let mode = f[i].mode;
        f[i].times -= 1;
        if f[i].times == 0 {
            f.remove(i);
        }
        Some(mode)
    })
}

#[wasm_bindgen]
extern "C" {
    /// A Durable Object stub as JS sees it.
    #[wasm_bindgen(extends = js_sys::Object)]
    type RawStub;

    /// `stub.fetch(url, init)`.
    #[wasm_bindgen(method, catch, js_name = fetch)]
    fn fetch_with_init(
        this: &RawStub,
        url: &str,
        init: &web_sys::RequestInit,
    ) -> Result<js_sys::Promise, JsValue>;
}

/// A thrown JS value, for logs: an `Error`'s message, else its string form.
fn js_detail(e: &JsValue) -> String {
    e.dyn_ref::<js_sys::Error>()
        .map(|err| String::from(err.message()))
        .or_else(|| e.as_string())
        .unwrap_or_else(|| format!("{e:?}"))
}

/// The Durable Object namespaces of one env, looked up (and type-checked
/// by workers-rs) once per isolate rather than on every call.
struct Namespaces(RefCell<Vec<(&'static str, ObjectNamespace)>>);

fn namespace(env: &Env, binding: &'static str) -> worker::Result<ObjectNamespace> {
    let all = per_env(env, |_| Ok(Namespaces(RefCell::new(Vec::new()))))
        .map_err(|_| worker::Error::RustError("namespace cache".into()))?;
    if let Some((_, ns)) = all.0.borrow().iter().find(|(b, _)| *b == binding) {
        return Ok(ns.clone());
    }
    let ns = env.durable_object(binding)?;
    all.0.borrow_mut().push((binding, ns.clone()));
    Ok(ns)
}

/// Decodes an object's 200 JSON reply (anything else is an error).
pub async fn decode<R: DeserializeOwned>(object: &str, resp: &mut Response) -> Result<R, RpcError> {
    let status = resp.status_code();
    let text = resp.text().await.map_err(|e| RpcError::Transport {
        object: object.to_owned(),
        detail: e.to_string(),
    })?;
    decode_text(object, status, text)
}

/// [`decode`] of a reply already read.
fn decode_text<R: DeserializeOwned>(
    object: &str,
    status: u16,
    text: String,
) -> Result<R, RpcError> {
    if status != 200 {
        return Err(RpcError::Status {
            object: object.to_owned(),
            status,
            body: text,
        });
    }
    serde_json::from_str(&text).map_err(|e| RpcError::Decode {
        object: object.to_owned(),
        detail: e.to_string(),
    })
}

/// The error for a reply of the wrong variant.
pub fn unexpected(object: &Object, op: &'static str, got: impl fmt::Debug) -> RpcError {
    let mut got = format!("{got:?}");
    got.truncate(200);
    RpcError::Unexpected {
        object: object.label(),
        op,
        got,
    }
}

// ------------------------------------------------------------ object side

/// Reads the JSON operation a worker sent to an object.
pub async fn read_op<T: DeserializeOwned>(req: &mut Request) -> Result<T, String> {
    let text = req.text().await.map_err(|e| e.to_string())?;
    serde_json::from_str(&text).map_err(|e| e.to_string())
}

/// An object's answer to one operation: the reply as JSON, or the error as
/// a problem document (which the caller sees as [`RpcError::Status`]).
pub fn answer<R: Serialize>(result: ApiResult<R>, instance: &str) -> worker::Result<Response> {
    match result {
        Ok(r) => reply(&r),
        Err(e) => e.into_response(instance),
    }
}

/// An object's 200 reply: the JSON body alone (the caller reads it as
/// text, so no Content-Type header is set on every lookup).
pub fn reply<R: Serialize>(r: &R) -> worker::Result<Response> {
    let body = serde_json::to_vec(r).map_err(|e| worker::Error::RustError(e.to_string()))?;
    Response::from_body(worker::ResponseBody::Body(body))
}
