//! The AP API (draft §8): tokens, mapping creation and remedies, the query.

pub mod bulk;
pub mod mappings;
pub mod me;
pub mod oauth;
pub mod query;
