//! Public pages: health, GP info, the filter inspector view.

pub mod filter;
pub mod info;
