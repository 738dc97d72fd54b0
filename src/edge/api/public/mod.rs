//! Public pages: health, GP info, the filter inspector view, the
//! statement keys, and the SII holder's own removal and opt-out.

pub mod filter;
pub mod holder;
pub mod info;
pub mod keys;
