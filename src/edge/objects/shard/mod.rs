//! MappingShard: the SQLite Durable Object that owns a slice of the SIIs
//! (ARCHITECTURE.md, Invariants 2: "one SII, one shard"; `core::shard` picks the shard).
//!
//! Everything about one SII lives in its shard: the [`SiiRecord`]
//! (mappings, displacements), open verifications (hashed codes, attempts,
//! expiry) and the per-SII send counter. Every operation below runs
//! synchronously inside the object — no `await` between reading and writing
//! — so operations on one SII are serialized and racing creations end in
//! one consistent state (the object's input gate does the locking).
//!
//! Side effects for other objects (webhooks to displaced APs, user-count
//! changes, strikes) are written to this shard's outbox table *in the same
//! synchronous block* as the state change and forwarded by the alarm to the
//! addressed AP's `ApObject`, which applies each item once (by id). So an
//! acknowledged change never loses its notification, even if the worker
//! dies right after.
use crate::edge::rpc;
use crate::edge::rpc::shard::ShardOp;

use crate::edge::http::error::ApiError;
use worker::{durable_object, Env, Request, Response, State};

mod apply;
mod outbox;
mod statements;
mod store;

#[durable_object]
pub struct MappingShard {
    state: State,
    env: Env,
    /// When this instance last swept dead rows (0: not yet).
    swept_at_ms: std::cell::Cell<u64>,
    schema: crate::edge::objects::Schema,
}

impl worker::DurableObject for MappingShard {
    fn new(state: State, env: Env) -> Self {
        MappingShard {
            state,
            env,
            swept_at_ms: std::cell::Cell::new(0),
            schema: store::schema(),
        }
    }

    async fn fetch(&self, mut req: Request) -> worker::Result<Response> {
        self.serve(req.text().await?).await.into_response()
    }

    async fn alarm(&self) -> worker::Result<Response> {
        if let Err(e) = self.forward_outbox().await {
            worker::console_error!("shard outbox: {e:?}");
            self.state.storage().set_alarm(5_000i64).await?;
        }
        Response::ok("")
    }
}

rpc::serve_rpc!(MappingShard);

impl MappingShard {
    /// One JSON operation, by RPC or by fetch.
    async fn serve(&self, op: String) -> rpc::Answer {
        let result = match rpc::parse_op::<ShardOp>(&op) {
            Ok(op) => self.apply(op),
            Err(e) => Err(ApiError::Internal(format!("shard op: {e}"))),
        };
        let result = match result {
            Ok((reply, true)) => {
                // As soon as possible; the alarm forwards the outbox.
                match self.state.storage().set_alarm(0i64).await {
                    Ok(()) => Ok(reply),
                    Err(e) => Err(ApiError::Internal(format!("shard outbox alarm: {e}"))),
                }
            }
            Ok((reply, false)) => Ok(reply),
            Err(e) => Err(e),
        };
        rpc::Answer::of(result, "/shard")
    }
}
