//! Who is calling.

pub mod ap;
pub mod peer;
