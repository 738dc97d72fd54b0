//! How core errors describe themselves to clients.
//!
//! Every error that can be caused by outside input implements [`Problem`];
//! the worker's single error module turns it into an RFC 9457
//! `application/problem+json` response. Core stays HTTP-agnostic apart from
//! naming the status class it belongs to.

/// An error a client caused and can be told about (RFC 9457 problem details).
pub trait Problem: core::fmt::Display {
    /// Stable, kebab-case identifier; the response's `type` is derived from it
    /// and clients may match on it, so never rename one.
    fn slug(&self) -> &'static str;
    /// Short human summary that does not change between occurrences.
    fn title(&self) -> &'static str;
    /// HTTP status code (always 4xx for errors caused by input).
    fn status(&self) -> u16 {
        400
    }
}
