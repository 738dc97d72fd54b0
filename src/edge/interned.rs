//! Strings that cross from Rust to JS on every query, handed to
//! wasm-bindgen's intern cache once per isolate (its `enable-interning`
//! feature, Cargo.toml). A string passed to JS is otherwise copied out of
//! wasm memory and decoded by the runtime's `TextDecoder` at each crossing:
//! header names and values, `request.cf` keys, the shard's SQL — ~38 µs of
//! a local hit in a V8 profile of gp-a (README, Benchmarks). An interned
//! string crosses as a reference to the JS string made the first time.
//!
//! Only a hint: a string missing from this list costs its decode, never a
//! different result. Dynamic strings (header values, bodies) are not here:
//! every interned string stays in the isolate for its lifetime.
use std::cell::Cell;

/// Per local hit or miss: the request's headers read, the client
/// certificate's `cf` keys (`auth::ap::client_cert`), the JSON response's
/// headers (workers-rs names `content-type` in lower case) and the rate
/// limit's header names.
const EVERY_QUERY: &[&str] = &[
    "Authorization",
    "Content-Length",
    "Content-Type",
    "cf",
    "tlsClientAuth",
    "certPresented",
    "certVerified",
    "certFingerprintSHA256",
    "content-type",
    "application/json",
    "Cache-Control",
    "no-store",
    "RateLimit-Limit",
    "RateLimit-Remaining",
    "RateLimit-Reset",
    crate::edge::objects::shard::LOOKUP_SQL,
];

thread_local! {
    static DONE: Cell<bool> = const { Cell::new(false) };
}

/// Interns [`EVERY_QUERY`] the first time this isolate asks; after that, a
/// thread-local read. Called where a request enters: the fetch entry and
/// the mapping shard's constructor (production may run the object in
/// another isolate than the worker).
pub fn ensure() {
    if !DONE.with(|d| d.replace(true)) {
        for s in EVERY_QUERY {
            wasm_bindgen::intern(s);
        }
    }
}
