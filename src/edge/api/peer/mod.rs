//! The peer API: signed GP-to-GP requests (draft §9, §10, §8.2.1).

pub mod claims;
pub mod filter;
pub mod query;
pub mod strikes;
