//! The operator's API: AP enrolment, analytics, filter rebuild.

pub mod analytics;
pub mod aps;
pub mod filter;
