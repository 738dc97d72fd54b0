//! Outbound clients.

pub mod codes;
pub mod probe;
