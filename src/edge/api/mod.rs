//! Request handlers by audience.

pub mod ap;
pub mod codes;
pub mod debug;
pub mod operator;
pub mod peer;
pub mod public;
