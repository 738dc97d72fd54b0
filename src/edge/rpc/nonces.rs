//! Messages to the PeerNonces replay store (see objects/nonces.rs) and its
//! typed client.

use crate::edge::http::error::ApiResult;
use crate::edge::rpc::Object;
use serde::{Deserialize, Serialize};
use worker::Env;

/// Nonce-store shards: spreads peers' request rate over this many objects.
pub const NONCE_SHARDS: u32 = 8;

/// Records a nonce (the hash of keyid + nonce, hex) until `expires_ms`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Check {
    pub key: String,
    pub expires_ms: u64,
}

/// Whether the nonce was new.
#[derive(Debug, Serialize, Deserialize)]
pub struct Fresh {
    pub fresh: bool,
}

/// The typed client of the nonce shard a key falls in.
pub struct Nonces<'e> {
    env: &'e Env,
    obj: Object,
}

impl<'e> Nonces<'e> {
    /// The shard of `key` (a SHA-256).
    pub fn of(env: &'e Env, key: &[u8; 32]) -> Self {
        let shard = u32::from_be_bytes([key[0], key[1], key[2], key[3]]) % NONCE_SHARDS;
        Nonces {
            env,
            obj: Object::new("PEER_NONCES", format!("nonces-{shard}")),
        }
    }

    /// Records the nonce; `false` if it was seen before.
    pub async fn check(&self, key_hex: String, expires_ms: u64) -> ApiResult<bool> {
        let op = Check {
            key: key_hex,
            expires_ms,
        };
        let reply: Fresh = self.obj.call(self.env, &op).await?;
        Ok(reply.fresh)
    }
}
