//! HTTP plumbing: the route table, request bodies, problem documents.

pub mod body;
pub mod error;
pub mod request;
pub mod respond;
pub mod routes;
