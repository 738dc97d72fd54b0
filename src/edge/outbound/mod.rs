//! Outbound clients.

pub mod codes;
pub mod peer;
pub mod probe;
pub mod webhooks;
