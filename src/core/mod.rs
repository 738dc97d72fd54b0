//! The pure GLADOS core: identifiers, the routing filter, mapping rules,
//! verification-code policy and rate-limit formula.
//!
//! Nothing in here touches the Workers runtime, JavaScript, a clock or an
//! entropy source: time and randomness come in as arguments, so the same
//! code runs natively under `cargo test`, in the worker and in the browser.

pub mod bulk;
pub mod config;
pub mod country_codes;
pub mod creation;
pub mod credentials;
pub mod encoding;
pub mod filter;
pub mod holder;
pub mod httpsig;
pub mod mapping;
pub mod outbox;
pub mod problem;
pub mod query;
pub mod ratelimit;
pub mod routing;
pub mod shard;
pub mod sii;
pub mod ssi;
pub mod statement;
pub mod tags;
pub mod token;
pub mod verification;
pub mod webhook;

pub use problem::Problem;
pub use sii::Sii;
pub use ssi::Ssi;
