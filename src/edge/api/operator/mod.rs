//! The operator's API: AP enrolment, analytics, filter rebuild.

pub mod aps;
