//! Durable Objects, one module each.

pub mod ap;
pub mod filter;
pub mod nonces;
pub mod registry;
pub mod shard;
