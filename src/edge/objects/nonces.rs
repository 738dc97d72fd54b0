//! PeerNonces: the replay store of signed peer requests, sharded by nonce hash.
use crate::edge::objects::Schema;
use crate::edge::rpc;
use crate::edge::rpc::nonces::Check;
use crate::edge::rpc::nonces::Fresh;

use crate::edge::http::error::{ApiResult, OrInternal};
use serde::Deserialize;
use worker::{durable_object, Env, Request, Response, SqlStorage, State};

/// One shard of the nonce store: remembers nonce hashes until they expire.
#[durable_object]
pub struct PeerNonces {
    state: State,
    schema: Schema,
}

impl worker::DurableObject for PeerNonces {
    fn new(state: State, _env: Env) -> Self {
        PeerNonces {
            state,
            schema: Schema::new(
                "nonce schema",
                "CREATE TABLE IF NOT EXISTS nonce (k TEXT PRIMARY KEY, exp INTEGER NOT NULL);
                 CREATE INDEX IF NOT EXISTS nonce_exp ON nonce (exp);",
            ),
        }
    }

    async fn fetch(&self, mut req: Request) -> worker::Result<Response> {
        self.serve(req.text().await?).await.into_response()
    }
}

rpc::serve_rpc!(PeerNonces);

impl PeerNonces {
    /// One nonce check, by RPC or by fetch.
    async fn serve(&self, op: String) -> rpc::Answer {
        rpc::serve_with(&op, "/nonces/check", |c: Check| async move {
            self.check(&c.key, c.expires_ms)
                .map(|fresh| Fresh { fresh })
        })
        .await
    }
}

impl PeerNonces {
    fn sql(&self) -> SqlStorage {
        self.state.storage().sql()
    }

    /// Records the nonce; `false` if it was already there. Single-threaded
    /// and without an await between the read and the write, so two
    /// concurrent replays cannot both pass.
    fn check(&self, key: &str, expires_ms: u64) -> ApiResult<bool> {
        let sql = self.sql();
        self.schema.ensure(&sql)?;
        let now = crate::edge::clock::now_ms() as i64;
        sql.exec("DELETE FROM nonce WHERE exp < ?", Some(vec![now.into()]))
            .internal("nonce expiry")?;
        #[derive(Deserialize)]
        struct Row {
            #[allow(dead_code)]
            exp: i64,
        }
        let rows: Vec<Row> = sql
            .exec("SELECT exp FROM nonce WHERE k = ?", Some(vec![key.into()]))
            .internal("nonce read")?
            .to_array()
            .internal("nonce rows")?;
        if !rows.is_empty() {
            return Ok(false);
        }
        sql.exec(
            "INSERT INTO nonce (k, exp) VALUES (?, ?)",
            Some(vec![key.into(), (expires_ms as i64).into()]),
        )
        .internal("nonce insert")?;
        Ok(true)
    }
}
