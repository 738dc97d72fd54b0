//! The query benchmark's per-request floor (scripts/bench-query-wrk.sh): a
//! workers-rs worker that authenticates nothing and makes exactly one
//! SQLite Durable Object call per request, built by the same pipeline as
//! the GP, so "a local hit costs X× the floor" is measured side by side.
//!
//! `POST` (any path; the benchmark sends it the local hit's exact request,
//! `POST /v1/query {"sii": …}` with its headers): reads and parses the
//! body, asks one of 16 objects (like the GP's mapping shards, picked by a
//! hash of the SII) for the row keyed by the SII, answers its JSON.
//! `POST /seed` (SIIs, one per line) stores them beforehand, so measured
//! calls only read.
//! `GET /hello`: no body, no object call: the workers-rs entry alone.
//!
//! The object call is made the cheapest way known in workers-rs — the way
//! the GP makes its own (`src/edge/rpc/mod.rs`): a JS RPC call of the
//! object's method `op`, a string in and a string out, made reachable by
//! the GP's scripts/rpc-entry.mjs — so the floor is not inflated by a
//! slower idiom than the product uses. Its `fetch` stays for comparison.
use js_sys::futures::JsFuture;
use std::cell::Cell;
use wasm_bindgen::prelude::*;
use worker::{durable_object, event, Context, Env, Request, Response, ResponseBody, State};

/// Objects the calls spread over (the GP's default `MAPPING_SHARDS`).
const OBJECTS: u32 = 16;

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(extends = js_sys::Object)]
    type RawStub;

    #[wasm_bindgen(method, catch)]
    fn op(this: &RawStub, body: &str) -> Result<js_sys::Promise, JsValue>;
}

/// FNV-1a: spreads the bodies over the objects without cryptography.
fn fnv(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// The object that holds `sii`.
fn object_of(sii: &str) -> u32 {
    fnv(sii.as_bytes()) % OBJECTS
}

/// One call to object `i` with `body` by the RPC method `op`; its answer.
async fn call(env: &Env, i: u32, body: &str) -> worker::Result<String> {
    let stub: RawStub = env
        .durable_object("FLOOR")?
        .id_from_name(&format!("floor/{i}"))?
        .get_stub()?
        .into_rpc();
    Ok(JsFuture::from(stub.op(body)?)
        .await?
        .as_string()
        .unwrap_or_default())
}

#[event(fetch)]
async fn fetch(mut req: Request, env: Env, _ctx: Context) -> worker::Result<Response> {
    match req.path().as_str() {
        "/hello" => Response::from_body(ResponseBody::Body(b"ok".to_vec())),
        // The benchmark stores its SIIs first (one per line), so the
        // measured calls only read, as a local hit does.
        "/seed" => {
            let text = req.text().await?;
            let mut by_object = vec![Vec::new(); OBJECTS as usize];
            for sii in text.lines().filter(|l| !l.is_empty()) {
                by_object[object_of(sii) as usize].push(sii);
            }
            for (i, put) in by_object.iter().enumerate() {
                if !put.is_empty() {
                    let op = serde_json::json!({ "put": put }).to_string();
                    call(&env, i as u32, &op).await?;
                }
            }
            Response::from_body(ResponseBody::Body(b"seeded".to_vec()))
        }
        _ => {
            let body = req.text().await?;
            let sii = serde_json::from_str::<Op>(&body).unwrap_or_default().sii;
            let text = call(&env, object_of(&sii), &body).await?;
            Response::from_body(ResponseBody::Body(text.into_bytes()))
        }
    }
}

/// Rows keyed by SII; the table is created once per instance.
#[durable_object]
pub struct FloorObject {
    state: State,
    ready: Cell<bool>,
}

/// A query body (`sii`), or SIIs to store (`put`); anything else reads as
/// the empty key.
#[derive(serde::Deserialize, Default)]
struct Op {
    #[serde(default)]
    sii: String,
    #[serde(default)]
    put: Vec<String>,
}

#[derive(serde::Deserialize)]
struct Row {
    v: String,
}

impl worker::DurableObject for FloorObject {
    fn new(state: State, _env: Env) -> Self {
        FloorObject {
            state,
            ready: Cell::new(false),
        }
    }

    async fn fetch(&self, mut req: Request) -> worker::Result<Response> {
        let v = self.lookup(&req.text().await?)?;
        Response::from_body(ResponseBody::Body(v.into_bytes()))
    }
}

#[wasm_bindgen(wasm_bindgen_futures = worker::wasm_bindgen_futures)]
impl FloorObject {
    /// The RPC method: the same lookup without a Request or a Response.
    #[wasm_bindgen(js_name = op)]
    pub async fn op(&self, body: String) -> Result<JsValue, JsValue> {
        self.lookup(&body)
            .map(|v| JsValue::from_str(&v))
            .map_err(JsValue::from)
    }
}

impl FloorObject {
    fn lookup(&self, body: &str) -> worker::Result<String> {
        let sql = self.state.storage().sql();
        if !self.ready.get() {
            sql.exec(
                "CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v TEXT NOT NULL)",
                None,
            )?;
            self.ready.set(true);
        }
        let op: Op = serde_json::from_str(body).unwrap_or_default();
        for sii in &op.put {
            let v = serde_json::json!({ "sii": sii, "found": true }).to_string();
            sql.exec(
                "INSERT OR REPLACE INTO kv (k, v) VALUES (?, ?)",
                Some(vec![sii.as_str().into(), v.as_str().into()]),
            )?;
        }
        let rows: Vec<Row> = sql
            .exec(
                "SELECT v FROM kv WHERE k = ?",
                Some(vec![op.sii.as_str().into()]),
            )?
            .to_array()?;
        let v = match rows.into_iter().next() {
            Some(r) => r.v,
            None => r#"{"found":false}"#.to_owned(),
        };
        Ok(v)
    }
}
