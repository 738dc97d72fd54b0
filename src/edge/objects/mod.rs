//! Durable Objects, one module each.

pub mod ap;
pub mod filter;
pub mod registry;
pub mod shard;
