//! GLADOS provider (draft-rosenberg-mimi-glados-00): a pure protocol core
//! plus thin Cloudflare Workers glue and browser bindings.
//!
//! - [`core`]: identifiers, routing filter, mapping rules; pure Rust.
//! - `edge` (feature `worker`): the GP as a Cloudflare Worker.
//! - `web` (feature `web`): wasm-bindgen wrappers for the filter inspector.
pub mod core;

#[cfg(feature = "worker")]
mod edge;

#[cfg(feature = "web")]
pub mod web;

#[cfg(all(feature = "cli", not(target_arch = "wasm32")))]
pub mod cli;
