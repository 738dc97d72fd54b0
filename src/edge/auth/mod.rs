//! Who is calling.

pub mod ap;
pub mod operator;
pub mod peer;
