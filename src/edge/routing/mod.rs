//! Peer routing: copies of the peers' filters and the query fan-out.

pub mod copies;
pub mod fanout;
pub mod kv;
pub mod preferred;
pub mod sync;
