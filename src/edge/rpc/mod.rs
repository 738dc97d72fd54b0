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
use std::collections::HashMap;
use std::fmt;
use std::rc::Rc;
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
            .0
            .id_from_name(&self.name)
            .map_err(fail)?
            .get_stub()
            .map_err(fail)
    }

    /// The stub for an RPC call, from this isolate's id of the object
    /// (`idFromName` hashes the name on every call otherwise). Only the id
    /// is kept: a stub is an I/O object of the request that made it.
    fn rpc_stub(&self, env: &Env) -> Result<RawStub, RpcError> {
        let fail = |detail: String| RpcError::Binding {
            object: self.label(),
            detail,
        };
        let ns = namespace(env, self.binding).map_err(|e| fail(e.to_string()))?;
        let raw: &RawNamespace = ns.0.as_ref().unchecked_ref();
        let known = ns.1.borrow().get(&self.name).cloned();
        let id = match known {
            Some(id) => id,
            None => {
                let id = raw
                    .id_from_name(&self.name)
                    .map_err(|e| fail(js_detail(&e)))?;
                let mut ids = ns.1.borrow_mut();
                if ids.len() >= MAX_IDS {
                    ids.clear();
                }
                ids.insert(self.name.clone(), id.clone());
                id
            }
        };
        raw.get(&id).map_err(|e| fail(js_detail(&e)))
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
        stats::count(|s| {
            s.do_requests += 1;
            *s.do_requests_by_binding.entry(self.binding).or_default() += 1;
        });
        self.stub(env)?
            .fetch_with_request(req)
            .await
            .map_err(transport)
    }

    /// Sends one JSON operation and decodes the JSON reply; a refusal (the
    /// object's problem document) is an error. Every query makes one of
    /// these, so it is a JS RPC call of the object's method `op` — a string
    /// in, a string out — and not a `fetch`, which builds a Request and a
    /// Response on both sides (ARCHITECTURE.md, "Calling Durable Objects").
    pub async fn call<O: Serialize, R: DeserializeOwned>(
        &self,
        env: &Env,
        op: &O,
    ) -> Result<R, RpcError> {
        let text = self.call_text(env, op).await?;
        decode_text(|| self.label(), 200, text)
    }

    /// [`Object::call`] up to the reply's JSON text, for a caller that
    /// decodes its common reply with a type of its own (a shard lookup).
    pub async fn call_text<O: Serialize>(&self, env: &Env, op: &O) -> Result<String, RpcError> {
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
        let stub = self.rpc_stub(env)?;
        // A garbled operation the object cannot parse: its refusal (a 500
        // problem) comes back as `[status, problem]`, as a real one would.
        let garbled;
        let sent = if fault == Some(FaultMode::Garbled) {
            garbled = format!("{body}garbled");
            garbled.as_str()
        } else {
            body.as_str()
        };
        let promise = stub.op(sent).map_err(transport)?;
        stats::count(|s| {
            s.do_requests += 1;
            *s.do_requests_by_binding.entry(self.binding).or_default() += 1;
        });
        let answer = JsFuture::from(promise).await.map_err(transport)?;
        let reply = answer.as_string().ok_or_else(|| self.refusal(&answer));
        if fault == Some(FaultMode::LostReply) {
            return Err(self.injected(body.as_bytes()));
        }
        reply
    }

    /// Decodes a reply [`Object::call_text`] returned, naming this object
    /// in the error.
    pub fn decode_reply<R: DeserializeOwned>(&self, text: &str) -> Result<R, RpcError> {
        serde_json::from_str(text).map_err(|e| RpcError::Decode {
            object: self.label(),
            detail: e.to_string(),
        })
    }

    /// The error for an answer that is not a reply: `[status, problem]`
    /// ([`Answer::into_js`]), or something no object sends.
    fn refusal(&self, answer: &JsValue) -> RpcError {
        let pair = answer.dyn_ref::<js_sys::Array>().and_then(|a| {
            let status = a.get(0).as_f64()?;
            Some((status as u16, a.get(1).as_string()?))
        });
        match pair {
            Some((status, body)) => RpcError::Status {
                object: self.label(),
                status,
                body,
            },
            None => RpcError::Decode {
                object: self.label(),
                detail: format!("not an answer: {}", js_detail(answer)),
            },
        }
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
/// (`LostReply`), as when a connection drops at the wrong moment; or the
/// object gets an operation it cannot read and refuses it (`Garbled`), as
/// when a worker and objects of different deploys disagree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultMode {
    Lost,
    LostReply,
    Garbled,
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

    /// `stub.op(body)`: the object's RPC method (see [`serve_rpc`]).
    #[wasm_bindgen(method, catch)]
    fn op(this: &RawStub, body: &str) -> Result<js_sys::Promise, JsValue>;

    /// A Durable Object namespace binding as JS sees it.
    #[wasm_bindgen(extends = js_sys::Object)]
    type RawNamespace;

    /// `namespace.idFromName(name)`.
    #[wasm_bindgen(method, catch, js_name = idFromName)]
    fn id_from_name(this: &RawNamespace, name: &str) -> Result<JsValue, JsValue>;

    /// `namespace.get(id)`: the object's stub.
    #[wasm_bindgen(method, catch)]
    fn get(this: &RawNamespace, id: &JsValue) -> Result<RawStub, JsValue>;
}

/// A thrown JS value, for logs: an `Error`'s message, else its string form.
fn js_detail(e: &JsValue) -> String {
    e.dyn_ref::<js_sys::Error>()
        .map(|err| String::from(err.message()))
        .or_else(|| e.as_string())
        .unwrap_or_else(|| format!("{e:?}"))
}

/// Most object ids one namespace keeps per isolate (then it starts over):
/// the shards, plus one object per AP and a few others.
const MAX_IDS: usize = 1024;

/// One namespace binding and the ids of the objects called in it.
type NamespaceIds = Rc<(ObjectNamespace, RefCell<HashMap<String, JsValue>>)>;

/// The Durable Object namespaces of one env, looked up (and type-checked
/// by workers-rs) once per isolate rather than on every call.
struct Namespaces(RefCell<Vec<(&'static str, NamespaceIds)>>);

fn namespace(env: &Env, binding: &'static str) -> worker::Result<NamespaceIds> {
    let all = per_env(env, |_| Ok(Namespaces(RefCell::new(Vec::new()))))
        .map_err(|_| worker::Error::RustError("namespace cache".into()))?;
    if let Some((_, ns)) = all.0.borrow().iter().find(|(b, _)| *b == binding) {
        return Ok(ns.clone());
    }
    let ns = Rc::new((env.durable_object(binding)?, RefCell::new(HashMap::new())));
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
    decode_text(|| object.to_owned(), status, text)
}

/// [`decode`] of a reply already read; `object` names the object, built
/// only for an error.
fn decode_text<R: DeserializeOwned>(
    object: impl Fn() -> String,
    status: u16,
    text: String,
) -> Result<R, RpcError> {
    if status != 200 {
        return Err(RpcError::Status {
            object: object(),
            status,
            body: text,
        });
    }
    serde_json::from_str(&text).map_err(|e| RpcError::Decode {
        object: object(),
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

/// Parses the JSON operation a worker sent to an object.
pub fn parse_op<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    serde_json::from_str(text).map_err(|e| e.to_string())
}

/// Reads and parses the JSON operation of a request to an object.
pub async fn read_op<T: DeserializeOwned>(req: &mut Request) -> Result<T, String> {
    parse_op(&req.text().await.map_err(|e| e.to_string())?)
}

/// An object's answer to one JSON operation, the same whichever way the
/// operation came: by the RPC method `op` ([`serve_rpc`], how [`Object::call`]
/// sends) or by `fetch` (kept for a worker of an older deploy still
/// running beside the objects of a newer one).
#[derive(Debug)]
pub struct Answer {
    status: u16,
    body: String,
}

impl Answer {
    /// The reply as JSON, or the error as a problem document (which the
    /// caller sees as [`RpcError::Status`]); `instance` names the object.
    pub fn of<R: Serialize>(result: ApiResult<R>, instance: &str) -> Answer {
        let rendered = match result {
            Ok(r) => match serde_json::to_string(&r) {
                Ok(body) => return Answer { status: 200, body },
                Err(e) => ApiError::Internal(format!("encode reply: {e}")).render(instance),
            },
            Err(e) => e.render(instance),
        };
        Answer {
            status: rendered.status,
            body: rendered.body,
        }
    }

    /// The answer as `fetch` returns it.
    pub fn into_response(self) -> worker::Result<Response> {
        Ok(
            Response::from_body(worker::ResponseBody::Body(self.body.into_bytes()))?
                .with_status(self.status),
        )
    }

    /// The answer as the RPC method returns it: a reply as its JSON text, a
    /// refusal as `[status, problem]`.
    pub fn into_js(self) -> JsValue {
        if self.status == 200 {
            JsValue::from_str(&self.body)
        } else {
            js_sys::Array::of2(&JsValue::from(self.status), &JsValue::from_str(&self.body)).into()
        }
    }
}

/// Parses operation `op` and answers it with `run`: the body of every
/// object's `serve`. An operation that does not parse is this GP's own
/// fault (a worker and an object disagreeing), so a 500.
pub async fn serve_with<T, R, F>(op: &str, instance: &str, run: impl FnOnce(T) -> F) -> Answer
where
    T: DeserializeOwned,
    R: Serialize,
    F: std::future::Future<Output = ApiResult<R>>,
{
    let result = match parse_op::<T>(op) {
        Ok(op) => run(op).await,
        Err(e) => Err(ApiError::Internal(format!("{instance} op: {e}"))),
    };
    Answer::of(result, instance)
}

/// Gives an object that answers JSON operations with `async fn
/// serve(&self, op: String) -> Answer` the RPC method `op`, which
/// [`Object::call`] calls. workerd lets a caller reach it only on a class
/// that extends `DurableObject`, which scripts/rpc-entry.mjs makes of each
/// workers-rs object after the build.
macro_rules! serve_rpc {
    ($object:ty) => {
        #[wasm_bindgen::prelude::wasm_bindgen(wasm_bindgen_futures = ::worker::wasm_bindgen_futures)]
        impl $object {
            /// The RPC method `op`: one JSON operation in, its answer out.
            #[wasm_bindgen(js_name = op)]
            pub async fn rpc_op(
                &self,
                op: String,
            ) -> Result<wasm_bindgen::JsValue, wasm_bindgen::JsValue> {
                Ok(self.serve(op).await.into_js())
            }
        }
    };
}
pub(crate) use serve_rpc;
