//! The query benchmark's per-request floor (scripts/bench-query-wrk.sh): a
//! workers-rs worker that authenticates nothing and makes exactly one
//! SQLite Durable Object call per request, built by the same pipeline as
//! the GP, so "a local hit costs X× the floor" is measured side by side.
//!
//! `POST /` (any body): reads nothing, asks one of 16 objects (like the
//! GP's mapping shards) for one row by primary key, answers its JSON.
//! `GET /hello`: no object call, the workers-rs entry alone.
//!
//! The object call is made the cheapest way known in workers-rs — the way
//! the GP makes its own (`src/edge/rpc/mod.rs`): `stub.fetch(url, init)`
//! with a string body, the reply read with `Response.text()` — so the
//! floor is not inflated by a slower idiom than the product uses.
use js_sys::futures::JsFuture;
use std::cell::Cell;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use worker::{durable_object, event, Context, Env, Request, Response, ResponseBody, State};

/// Objects the calls spread over (the GP's default `MAPPING_SHARDS`).
const OBJECTS: u32 = 16;

thread_local! {
    static NEXT: Cell<u32> = const { Cell::new(0) };
}

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(extends = js_sys::Object)]
    type RawStub;

    #[wasm_bindgen(method, catch, js_name = fetch)]
    fn fetch_with_init(
        this: &RawStub,
        url: &str,
        init: &web_sys::RequestInit,
    ) -> Result<js_sys::Promise, JsValue>;
}

#[event(fetch)]
async fn fetch(req: Request, env: Env, _ctx: Context) -> worker::Result<Response> {
    if req.path() == "/hello" {
        return Response::from_body(ResponseBody::Body(b"ok".to_vec()));
    }
    let i = NEXT.with(|n| {
        let i = n.get();
        n.set(i.wrapping_add(1));
        i % OBJECTS
    });
    let stub: RawStub = env
        .durable_object("FLOOR")?
        .id_from_name(&format!("floor/{i}"))?
        .get_stub()?
        .into_rpc();
    let init = web_sys::RequestInit::new();
    init.set_method("POST");
    init.set_body(&JsValue::from_str(&format!("{{\"k\":\"row-{i}\"}}")));
    let resp: web_sys::Response = JsFuture::from(stub.fetch_with_init("https://floor/get", &init)?)
        .await?
        .dyn_into()?;
    let text = JsFuture::from(resp.text()?)
        .await?
        .as_string()
        .unwrap_or_default();
    Response::from_body(ResponseBody::Body(text.into_bytes()))
}

/// One row per object; the table is created and filled once per instance.
#[durable_object]
pub struct FloorObject {
    state: State,
    ready: Cell<bool>,
}

#[derive(serde::Deserialize)]
struct Get {
    k: String,
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
        let sql = self.state.storage().sql();
        if !self.ready.get() {
            sql.exec(
                "CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v TEXT NOT NULL)",
                None,
            )?;
            self.ready.set(true);
        }
        let get: Get = serde_json::from_str(&req.text().await?)?;
        let rows: Vec<Row> = sql
            .exec(
                "SELECT v FROM kv WHERE k = ?",
                Some(vec![get.k.as_str().into()]),
            )?
            .to_array()?;
        let v = match rows.into_iter().next() {
            Some(r) => r.v,
            None => {
                let v = format!("{{\"k\":\"{}\",\"found\":true}}", get.k);
                sql.exec(
                    "INSERT INTO kv (k, v) VALUES (?, ?)",
                    Some(vec![get.k.as_str().into(), v.as_str().into()]),
                )?;
                v
            }
        };
        Response::from_body(ResponseBody::Body(v.into_bytes()))
    }
}
