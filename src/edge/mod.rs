//! The Workers layer: everything that needs the runtime (requests, Durable
//! Objects, KV, fetch). Kept thin on purpose: decisions live in
//! `crate::core`; this layer reads requests, calls core, persists, and turns
//! errors into responses in one place (`http::error`). ARCHITECTURE.md maps
//! the folders below.

/// The only clock.
mod clock;
/// Entry points: the fetch and scheduled events.
mod entry;

/// Request handlers, one folder per audience.
mod api;
/// Who is calling: APs (tokens over mTLS), the operator, peer GPs.
mod auth;
/// The GP's configuration (vars and secrets).
mod config;
/// HTTP plumbing: route table, bodies, problems, JSON responses.
mod http;
/// Durable Objects, one module each.
mod objects;
/// Calls this GP makes to others: peers, SMS/email providers, webhooks.
mod outbound;
/// The per-AP query rate limit.
mod ratelimit;
/// The peer routing layer: peers' filter copies and the fan-out.
mod routing;
/// Calling Durable Objects: messages and typed clients.
mod rpc;
/// This GP's mapping-statement keys and signing (beyond GLADOS-00).
mod statements;
/// Counters of this isolate (tests, benchmarks).
mod stats;
