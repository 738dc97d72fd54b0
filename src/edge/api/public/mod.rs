//! Public pages: health, GP info, the filter inspector view, the
//! statement keys.

pub mod filter;
pub mod info;
pub mod keys;
